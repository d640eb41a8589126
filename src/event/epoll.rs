//! The epoll backend (through mio): edge-triggered readiness, `recvmmsg`/`sendmmsg` batches.
//!
//! One `Poll` per worker with two registrations, the TUN queue and the UDP socket. On any
//! wakeup the worker alternates one batch from TUN and one batch from the socket until both
//! would block, so neither direction starves the other under load (flannel's proxy reads one
//! packet per syscall and starves its control socket under load).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::buf::SlotBuf;
use super::offload::{OffloadIo, TunRead};
use super::{BATCH, RateLimitedLog, STOP_POLL, Worker};
use crate::forward::{self, Verdict};
use crate::metrics::{Counters, DropReason};
use crate::offload::VNET_HDR_LEN;
use crate::udp::{MmsgScratch, Received, Transmit};
use crate::wire::Encap;

/// The largest UDP payload over IPv4 (65535 − 20 − 8).
const MAX_UDP_PAYLOAD: usize = 65_507;

const TUN: Token = Token(0);
const UDP: Token = Token(1);

/// Headroom kept in front of each packet read from TUN, enough for any encapsulation header.
const HEADROOM: usize = 64;

struct Loop {
    w: Worker,
    off: OffloadIo,
    /// Bytes of virtio-net header in front of each TUN read (0 without offloads).
    vnet: usize,
    tun_bufs: SlotBuf,
    rx_bufs: SlotBuf,
    tx: Vec<Transmit>,
    seg_scratch: Vec<u8>,
    icmp: super::IcmpSender,
    received: Vec<Received>,
    send_scratch: MmsgScratch,
    recv_scratch: MmsgScratch,
    tun_read_log: RateLimitedLog,
    tun_write_log: RateLimitedLog,
    send_log: RateLimitedLog,
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
    let max = worker.fwd.max_inner_len;
    // A received datagram is the encapsulation header plus at most `max` inner bytes; one
    // byte more than that is what `MSG_TRUNC` needs to tell an oversize datagram apart.
    // VXLAN: a kernel peer on the same host can hand over a whole TSO super-frame (see
    // `wire::tcp`), so the slots take the largest UDP payload and such frames are cut into
    // segments. `udp`: flanneld's proxy never sends more than its MTU, so the slots are sized
    // to the inner MTU and anything longer is `oversize`.
    // With UDP_GRO, one read holds up to 64 KiB of datagrams whatever the encapsulation.
    let rx_payload = match worker.fwd.encap {
        Encap::Flannel if !worker.offloads.gro => max,
        _ => MAX_UDP_PAYLOAD,
    };
    // With TUN offloads a read is a super-packet of up to 64 KiB behind its virtio header.
    let (vnet, tun_payload) = if worker.tun.vnet() {
        (VNET_HDR_LEN, 65_535)
    } else {
        (0, worker.tun_mtu.max(max))
    };
    let mut l = Loop {
        off: OffloadIo::new(&worker),
        vnet,
        tun_bufs: SlotBuf::new(BATCH, HEADROOM, tun_payload),
        rx_bufs: SlotBuf::new(BATCH, 0, rx_payload),
        tx: Vec::with_capacity(BATCH),
        seg_scratch: vec![0u8; max],
        icmp: super::IcmpSender::new(),
        received: vec![
            Received {
                len: 0,
                from: None,
                truncated: false,
                segment: 0
            };
            BATCH
        ],
        send_scratch: MmsgScratch::new(BATCH),
        recv_scratch: MmsgScratch::new(BATCH),
        tun_read_log: RateLimitedLog::new("TUN read failed"),
        tun_write_log: RateLimitedLog::new("TUN write failed"),
        send_log: RateLimitedLog::new("UDP send failed"),
        recv_log: RateLimitedLog::new("UDP receive failed"),
        w: worker,
    };
    let mut events = Events::with_capacity(8);
    tracing::debug!(worker = l.w.id, "epoll worker started");
    while !l.w.stop.load(Ordering::Relaxed) {
        if let Err(e) = poll.poll(&mut events, Some(STOP_POLL)) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // Edge-triggered: drain both sources until both would block, whatever woke us.
        loop {
            let from_tun = l.tun_to_udp();
            let from_udp = l.udp_to_tun(rx_payload);
            if from_tun == 0 && from_udp == 0 {
                break;
            }
            if l.w.stop.load(Ordering::Relaxed) {
                break;
            }
        }
    }
    tracing::debug!(worker = l.w.id, "epoll worker stopped");
    Ok(())
}

impl Loop {
    /// Reads one batch from TUN, forwards it; returns the packets read.
    fn tun_to_udp(&mut self) -> usize {
        let metrics = std::sync::Arc::clone(&self.w.metrics);
        let counters = metrics.worker(self.w.id);
        let snap = self.w.table.load();
        let headroom = self.tun_bufs.headroom();
        self.tx.clear();
        let mut read = 0;
        while read < self.tun_bufs.count() {
            let slot = self.tun_bufs.slot_mut(read);
            let n = match self.w.tun.read(&mut slot[headroom - self.vnet..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.tun_read_log.error(&e);
                    break;
                }
            };
            let mut len = n.saturating_sub(self.vnet);
            Counters::add(&counters.tun_rx_packets, 1);
            Counters::add(&counters.tun_rx_bytes, len as u64);
            if self.vnet > 0 {
                match self
                    .off
                    .tun_read(&self.w, &snap, slot, headroom, n, &mut self.icmp)
                {
                    TunRead::Plain(plain) => len = plain,
                    TunRead::Dropped => {
                        read += 1;
                        continue;
                    }
                    TunRead::Segments { socket, dst, count } => {
                        // Whatever is queued goes first, so a flow keeps its order.
                        self.flush();
                        let start = self.tun_bufs.offset(read) + headroom;
                        let packet = &self.tun_bufs.data()[start..start + len];
                        self.off.send_segments(&self.w, socket, dst, packet, count);
                        read += 1;
                        continue;
                    }
                }
            }
            let slot = self.tun_bufs.slot_mut(read);
            match forward::outbound(&snap, &self.w.fwd, slot, headroom, len) {
                Verdict::Send {
                    dst,
                    start,
                    len,
                    flow,
                    peer,
                } => {
                    if let Some(stats) = snap.peer_stats(peer) {
                        stats.add_tx(self.w.id, 1, len as u64);
                    }
                    let base = self.tun_bufs.offset(read);
                    let socket =
                        u16::try_from(super::pick_socket(flow, self.w.tx_pool.len())).unwrap_or(0);
                    self.tx.push(Transmit {
                        dst,
                        start: base + start,
                        len,
                        socket,
                    });
                }
                Verdict::Drop(reason) => {
                    counters.drop_packet(reason);
                    let packet = &slot[headroom..headroom + len];
                    self.icmp
                        .on_drop(&snap, &self.w.fwd, reason, packet, &self.w.tun, counters);
                }
                Verdict::Deliver { .. } => counters.drop_packet(DropReason::LocalDestination),
            }
            read += 1;
        }
        drop(snap);
        self.flush();
        read
    }

    /// Sends the queued batch: one `sendmmsg` per source socket in use (one in `udp` mode;
    /// in `vxlan` mode one per distinct source port, i.e. per group of flows).
    fn flush(&mut self) {
        if self.w.tx_pool.len() > 1 {
            // Stable: packets of one flow keep their order.
            self.tx.sort_by_key(|t| t.socket);
        }
        let mut from = 0;
        while from < self.tx.len() {
            let socket = self.tx[from].socket;
            let to = from
                + self.tx[from..]
                    .iter()
                    .take_while(|t| t.socket == socket)
                    .count();
            self.flush_run(usize::from(socket), from, to);
            from = to;
        }
        self.tx.clear();
    }

    /// Sends `tx[from..to]` through one socket, waiting briefly for buffer room; drops what
    /// cannot go.
    fn flush_run(&mut self, socket: usize, from: usize, to: usize) {
        let counters = self.w.metrics.worker(self.w.id);
        let sock = self.w.tx_pool.get(socket).unwrap_or(&self.w.udp);
        let data = self.tun_bufs.data();
        let mut off = from;
        while off < to {
            match sock.send_batch(&mut self.send_scratch, data, &self.tx[off..to]) {
                Ok(0) => {
                    counters.drop_packet(DropReason::TxError);
                    off += 1;
                }
                Ok(n) => {
                    let bytes: usize = self.tx[off..off + n].iter().map(|t| t.len).sum();
                    Counters::add(&counters.tx_packets, n as u64);
                    Counters::add(&counters.tx_bytes, bytes as u64);
                    off += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The send buffer is full: give the kernel a moment, then drop the rest.
                    if !matches!(sock.wait_writable(10), Ok(true)) {
                        for _ in off..to {
                            counters.drop_packet(DropReason::TxError);
                        }
                        break;
                    }
                }
                Err(e) => {
                    // The first message failed (EMSGSIZE, ENETUNREACH, ...): drop it, go on.
                    self.send_log.error(&e);
                    counters.drop_packet(DropReason::TxError);
                    off += 1;
                }
            }
        }
    }

    /// Receives one batch from the socket, delivers it; returns the datagrams received.
    fn udp_to_tun(&mut self, rx_payload: usize) -> usize {
        let counters = self.w.metrics.worker(self.w.id);
        let slot = self.rx_bufs.slot();
        let n = match self.w.udp.recv_batch(
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
        for i in 0..n {
            let r = self.received[i];
            // The slot is rounded up past `rx_payload`; anything longer did not fit the
            // buffer the inner MTU allows and is dropped whole, never truncated.
            // A read dropped whole counts once per datagram it holds.
            if r.truncated || r.len > rx_payload {
                super::drop_read(counters, r.len, r.segment, DropReason::Oversize);
                continue;
            }
            let Some(from) = r.from else {
                super::drop_read(counters, r.len, r.segment, DropReason::UnknownSender);
                continue;
            };
            let base = self.rx_bufs.offset(i);
            let datagram = &mut self.rx_bufs.data_mut()[base..base + r.len];
            self.off.deliver(
                &self.w,
                &snap,
                from,
                datagram,
                r.segment,
                &mut self.seg_scratch,
                &mut self.tun_write_log,
            );
        }
        self.off.flush(&self.w, &mut self.tun_write_log);
        n
    }
}
