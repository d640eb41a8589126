//! The epoll backend (through mio): edge-triggered readiness, `recvmmsg`/`sendmmsg` batches.
//!
//! One `Poll` per worker with two registrations, the TUN queue and the UDP socket (three with
//! a second socket on an IPv6 underlay address). On a
//! wakeup the worker alternates one batch from each ready source until each would block, so
//! neither direction starves the other under load (flannel's proxy reads one packet per
//! syscall and starves its control socket under load); a source without an event is not
//! probed.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::buf::SlotBuf;
use super::exec::{Sender, TunRead, TunWriter};
use super::spin::Spin;
use super::{BATCH, RateLimitedLog, STOP_POLL, Worker};
use crate::datapath::{Core, HEADROOM};
use crate::udp::{MmsgScratch, Received};

const TUN: Token = Token(0);
const UDP: Token = Token(1);
const UDP6: Token = Token(2);

struct Loop {
    w: Worker,
    core: Core,
    tun_bufs: SlotBuf,
    rx_bufs: SlotBuf,
    received: Vec<Received>,
    recv_scratch: MmsgScratch,
    sender: Sender,
    writer: TunWriter,
    tun_read_log: RateLimitedLog,
    recv_log: RateLimitedLog,
}

/// Runs the worker until its stop flag is set.
///
/// # Errors
///
/// When epoll cannot be created or the fds cannot be registered.
pub fn run(worker: Worker) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let tun_fd = worker.tun.as_raw_fd();
    let udp_fd = worker.udp.as_raw_fd();
    poll.registry()
        .register(&mut SourceFd(&tun_fd), TUN, Interest::READABLE)?;
    poll.registry()
        .register(&mut SourceFd(&udp_fd), UDP, Interest::READABLE)?;
    if let Some(udp6) = &worker.udp6 {
        poll.registry()
            .register(&mut SourceFd(&udp6.as_raw_fd()), UDP6, Interest::READABLE)?;
    }
    let core = worker.core();
    // One byte more than the largest accepted datagram lets `MSG_TRUNC` tell a longer one
    // apart; the slots round that up.
    let mut l = Loop {
        tun_bufs: SlotBuf::new(BATCH, HEADROOM, core.tun_slot_len() - HEADROOM),
        rx_bufs: SlotBuf::new(BATCH, 0, core.rx_payload() + 1),
        core,
        received: vec![Received::default(); BATCH],
        recv_scratch: MmsgScratch::new(BATCH),
        sender: Sender::new(),
        writer: TunWriter::new(),
        tun_read_log: RateLimitedLog::new("TUN read failed"),
        recv_log: RateLimitedLog::new("UDP receive failed"),
        w: worker,
    };
    let mut events = Events::with_capacity(8);
    // Both are drained once at start: packets may have queued before the registration.
    let (mut tun_ready, mut udp_ready, mut udp6_ready) = (true, true, worker_has_udp6(&l));
    let mut spin = Spin::new(l.w.busy_poll);
    tracing::debug!(worker = l.w.id, "epoll worker started");
    while !l.w.stop.load(Ordering::Relaxed) {
        let since = spin.enabled().then(Instant::now);
        if !l.look_ahead(&mut poll, &mut events, &spin)? {
            if let Err(e) = poll.poll(&mut events, Some(STOP_POLL)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if let Some(since) = since {
                spin.blocked(since.elapsed(), !events.is_empty());
            }
        }
        // Edge-triggered: drain every source that said it is ready until it would block,
        // alternating one batch each so neither direction starves the other. A source that
        // stopped short of a full batch is drained and is not probed again (an `EAGAIN` system
        // call) until its next event.
        for event in &events {
            match event.token() {
                TUN => tun_ready = true,
                UDP => udp_ready = true,
                UDP6 => udp6_ready = true,
                _ => {}
            }
        }
        while (tun_ready || udp_ready || udp6_ready) && !l.w.stop.load(Ordering::Relaxed) {
            if tun_ready {
                tun_ready = l.tun_to_udp()? == l.tun_bufs.count();
            }
            if udp_ready {
                udp_ready = l.udp_to_tun(false) == BATCH;
            }
            if udp6_ready {
                udp6_ready = l.udp_to_tun(true) == BATCH;
            }
        }
    }
    tracing::debug!(worker = l.w.id, "epoll worker stopped");
    Ok(())
}

fn worker_has_udp6(l: &Loop) -> bool {
    l.w.udp6.is_some()
}

impl Loop {
    /// Looks for events without blocking for as long as the busy-poll window says, yielding
    /// the CPU between looks; returns whether some arrived (they are in `events`).
    fn look_ahead(&self, poll: &mut Poll, events: &mut Events, spin: &Spin) -> io::Result<bool> {
        let window = spin.window();
        if window.is_zero() {
            return Ok(false);
        }
        let until = Instant::now() + window;
        loop {
            match poll.poll(events, Some(Duration::ZERO)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if !events.is_empty() {
                crate::metrics::Counters::add(&self.w.metrics.worker(self.w.id).busy_poll_hits, 1);
                return Ok(true);
            }
            if Instant::now() >= until || self.w.stop.load(Ordering::Relaxed) {
                crate::metrics::Counters::add(
                    &self.w.metrics.worker(self.w.id).busy_poll_misses,
                    1,
                );
                return Ok(false);
            }
            std::thread::yield_now();
        }
    }

    /// Reads one batch from TUN and carries out each read's plan; returns the packets read.
    ///
    /// # Errors
    ///
    /// The device is gone ([`crate::tun::device_gone`]).
    fn tun_to_udp(&mut self) -> io::Result<usize> {
        let snap = self.w.table.load();
        self.core.begin_batch();
        let now = Instant::now();
        let at = self.core.tun_read_offset();
        let mut read = 0;
        while read < self.tun_bufs.count() {
            let slot = self.tun_bufs.slot_mut(read);
            let n = match self.w.tun.read(&mut slot[at..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    if let Some(gone) = e.raw_os_error().and_then(crate::tun::device_gone) {
                        return Err(gone);
                    }
                    self.tun_read_log.error(&e);
                    break;
                }
            };
            let read_at = TunRead {
                slot: self.tun_bufs.range(read),
                n,
            };
            self.sender.transmit(
                &self.w,
                &mut self.core,
                &snap,
                now,
                self.tun_bufs.data_mut(),
                read_at,
            );
            read += 1;
        }
        drop(snap);
        self.sender.flush(&self.w, self.tun_bufs.data());
        Ok(read)
    }

    /// Receives one batch from the socket (the IPv6 underlay's with `v6`) and carries out
    /// each read's plan; returns the reads.
    fn udp_to_tun(&mut self, v6: bool) -> usize {
        let slot = self.rx_bufs.slot();
        let socket = match (&self.w.udp6, v6) {
            (Some(s), true) => s,
            (None, true) => return 0,
            _ => &self.w.udp,
        };
        let n = match socket.recv_batch(
            &mut self.recv_scratch,
            self.rx_bufs.data_mut(),
            slot,
            &mut self.received,
        ) {
            Ok(n) => n,
            Err(e) => {
                self.recv_log.error(&e);
                return 0;
            }
        };
        if n == 0 {
            return 0;
        }
        let snap = self.w.table.load();
        self.core.begin_batch();
        for i in 0..n {
            let r = self.received[i];
            let buf = self.rx_bufs.slot_mut(i);
            self.core.udp_read(&snap, buf, &r);
            self.sender.answer_probe(&self.w, &self.core);
            self.writer
                .execute(&self.w, &self.core, self.rx_bufs.slot_mut(i));
        }
        self.core.rx_flush();
        self.writer.execute(&self.w, &self.core, &[]);
        n
    }
}
