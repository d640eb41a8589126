//! The io_uring backend: TUN reads and UDP receives stay in flight on one ring per worker.
//!
//! Each worker keeps [`SLOTS`] TUN reads and [`SLOTS`] UDP receives in flight at all times. A
//! slot's buffer moves through a fixed cycle and is referenced by at most one operation at a
//! time, so no slab is needed: the `user_data` of an operation names its kind and its slot
//! ([`ring::Kind`]).
//!
//! ```text
//!  TX slot: Read(TUN) --CQE--> Core::tun_read --> queued datagram ... sendmmsg at round end
//!                                                     \--> Read(TUN) re-armed after the send
//!  RX slot: RecvMsg(UDP) --CQE--> Core::udp_read --> Writev(TUN)... --last CQE--> RecvMsg(UDP)
//!                                                \--> merged packets written directly
//! ```
//!
//! One `io_uring_enter` submits everything queued since the last one and waits for at least
//! one completion; then every completion is handled with the table snapshot loaded once for
//! them, each read handed to the datapath core ([`crate::datapath::Core`]) and its plan
//! carried out:
//!
//! - UDP sends go through the socket layer's `sendmmsg` batch ([`super::exec::Sender`]) at the
//!   end of the round, and before the segments of a super-packet, so a flow's datagrams leave
//!   in the order they were read by construction (a ring send that met a full socket buffer
//!   would be parked by the kernel and could be overtaken by a later one). A TUN read slot is
//!   read into again once its datagram is sent.
//! - TUN writes go through the ring ([`writes`]): each planned write whose bytes stay put until
//!   its completion (ranges of the receive buffer, which is given back when its last write
//!   completes; a segment's header block and the virtio-net header copied into the write's
//!   entry) is a ring `WRITEV`, submitted with the next `io_uring_enter`, the one that waits.
//!   A merged super-packet, in the core's own buffer until its next call, is written directly
//!   by [`super::exec::TunWriter`], after the ring writes queued before it are submitted (a TUN
//!   write never waits: it completes during the submission, so the order holds).
//!
//! The TUN fd is non-blocking, so a read with no packet waiting arms io_uring's internal poll
//! (`IORING_FEAT_FAST_POLL`, Linux 5.7) instead of tying up a kernel worker thread. Receives
//! pass `MSG_TRUNC`, so the result is the datagram's real length and an oversize datagram is
//! recognised and dropped, never delivered truncated.
//!
//! Ownership: a buffer referenced by an in-flight operation is touched again only after that
//! operation's completion has been reaped. On shutdown every in-flight operation is cancelled
//! and its completion awaited before the loop returns; the ring is declared before the slots
//! so it is dropped first. Should the drain not finish, the slots and the ring writes' entries
//! are leaked, never freed under the kernel.
//!
//! Receive, where the kernel has it (buffer rings 5.19, multishot `RECVMSG` 6.0): one
//! multishot receive fills buffers from a provided-buffer ring, so a burst of datagrams costs
//! one submission instead of one per datagram. A buffer goes back to the ring once its plan is
//! carried out (or its ring write completed). Without that support, or with
//! `--no-multishot`, the loop keeps [`SLOTS`] single-shot receives in flight instead; a kernel
//! that rejects the multishot receive at run time (`EINVAL`) switches the loop to that
//! fallback by itself.
//!
//! TUN reads, likewise: on kernels where multishot reads are trusted (the opcode exists, 6.7,
//! and the kernel is 6.12 or later, with the TUN fixes), one multishot read fills buffers from
//! a second buffer ring, each with headroom kept in front for the encapsulation header; the
//! buffer returns to the ring once its datagram is sent. Otherwise, or with `--no-multishot`,
//! [`SLOTS`] single-shot poll-armed reads stay in flight.
//!
//! Not used: registered buffers and zero-copy sends (they only pay off on real NICs with large
//! sends; over veth and TUN the kernel copies anyway), and registered files: a multishot
//! operation holds its file for as long as it stays armed, so only the ring TUN writes look
//! their file up, one reference count taken and dropped per write.
#![allow(unsafe_code)]

mod ring;
mod writes;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use io_uring::{opcode, types};

use self::ring::{Armed, BufRing, Completion, Kind, Multishot, Ring};
use self::writes::{Owner, RingWrites};
use super::buf::SlotBuf;
use super::exec::{Sender, TunRead};
use super::spin::Spin;
use super::{RateLimitedLog, Worker};
use crate::datapath::{Core, HEADROOM};
use crate::metrics::Counters;
use crate::table::Snapshot;
use crate::udp::{RecvSlot, decode_multishot, multishot_msghdr};

/// Operations in flight per direction.
pub const SLOTS: usize = 64;

/// Ring TUN writes in flight at most per worker; a plan's further writes are made directly.
const WRITE_ENTRIES: usize = 1024;

/// Buffer group of the multishot receive.
const RX_GROUP: u16 = 0;
/// Buffer group of the multishot TUN read.
const TX_GROUP: u16 = 1;
/// Control-message space in each multishot receive buffer (the `UDP_GRO` size).
const MULTI_CONTROL: usize = 32;
/// Bytes in front of the payload in a multishot receive buffer: `io_uring_recvmsg_out` (16),
/// the fixed-size name field (a `sockaddr_storage`, 128) and the control space.
const MULTI_HEADER: usize = 16 + std::mem::size_of::<libc::sockaddr_storage>() + MULTI_CONTROL;

/// Checks that the kernel has what this loop needs.
///
/// # Errors
///
/// A sentence saying what is missing.
pub fn probe() -> Result<(), String> {
    ring::probe()
}

/// A receive slot: its buffer and the message header of the receive in flight on it.
struct RxSlot {
    buf: Box<[u8]>,
    msg: Box<RecvSlot>,
    /// The `user_data` of the receive in flight on this slot, 0 when none.
    inflight: u64,
    /// Ring writes in flight from this slot; it receives again when the last completes.
    writes: usize,
}

/// Multishot receive: the message template the kernel reads the name length from, and the
/// provided-buffer ring.
struct Multi {
    msg: Box<libc::msghdr>,
    ring: BufRing,
    armed: Armed,
    /// Ring writes in flight from each buffer (it goes back to the kernel when its last write
    /// completes).
    bid_writes: Vec<usize>,
}

/// Multishot TUN reads (`IORING_OP_READ_MULTISHOT`, Linux 6.7): the kernel fills buffers from
/// a provided-buffer ring, each after the headroom kept for the encapsulation header.
struct TxMulti {
    ring: BufRing,
    armed: Armed,
}

/// Where the datagrams queued in the sender live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxSource {
    Slots,
    Ring,
}

/// The loop state. Field order matters: the ring is dropped before the buffers.
struct Loop {
    ring: Ring,
    tx: SlotBuf,
    /// The `user_data` in flight on each TUN read slot, 0 when none.
    tx_inflight: Vec<u64>,
    rx: Box<[RxSlot]>,
    /// Multishot receive state, when in use (declared after the ring, dropped after it).
    multi: Option<Multi>,
    /// A buffer ring given up at run time; kept until the ring is gone.
    retired: Vec<Multi>,
    /// Multishot TUN read state, when in use.
    tx_multi: Option<TxMulti>,
    /// A TUN read ring given up at run time; kept until the ring is gone.
    tx_retired: Vec<TxMulti>,
    /// TUN read slots to read into again, and ring buffers to give back, once the queued
    /// datagrams are sent.
    tx_done: Vec<usize>,
    tx_done_bids: Vec<u16>,
    queued_from: TxSource,
    /// TUN writes through the ring.
    writes: RingWrites,
    stopping: bool,
    tun_fd: RawFd,
    core: Core,
    sender: Sender,
    w: Worker,
    tun_read_log: RateLimitedLog,
    recv_log: RateLimitedLog,
}

/// Runs the worker until its stop flag is set.
///
/// # Errors
///
/// When the ring cannot be created or `io_uring_enter` fails for a reason other than `EINTR`.
pub fn run(w: Worker) -> io::Result<()> {
    // A second underlay socket (IPv6 beside IPv4) has its own single-shot receive slots.
    let rx_slots = if w.udp6.is_some() { 2 * SLOTS } else { SLOTS };
    let entries = u32::try_from(4 * SLOTS + rx_slots - SLOTS).unwrap_or(256);
    let ring = Ring::new(entries)?;
    let core = w.core();
    // One byte more than the largest accepted datagram lets `MSG_TRUNC` tell a longer one
    // apart.
    let rx_len = core.rx_payload() + 1;
    let mut l = Loop {
        ring,
        tx: SlotBuf::new(SLOTS, HEADROOM, core.tun_slot_len() - HEADROOM),
        tx_inflight: vec![0; SLOTS],
        rx: (0..rx_slots)
            .map(|_| RxSlot {
                buf: vec![0u8; rx_len].into_boxed_slice(),
                msg: RecvSlot::new(),
                inflight: 0,
                writes: 0,
            })
            .collect(),
        multi: None,
        retired: Vec::new(),
        tx_multi: None,
        tx_retired: Vec::new(),
        tx_done: Vec::with_capacity(4 * SLOTS),
        tx_done_bids: Vec::with_capacity(4 * SLOTS),
        queued_from: TxSource::Slots,
        writes: RingWrites::new(WRITE_ENTRIES, core.vnet_len() > 0),
        stopping: false,
        tun_fd: w.tun.as_raw_fd(),
        core,
        sender: Sender::new(),
        tun_read_log: RateLimitedLog::new("TUN read failed"),
        recv_log: RateLimitedLog::new("UDP receive failed"),
        w,
    };
    tracing::debug!(worker = l.w.id, "io_uring worker started");
    let result = l.run();
    if !l.drain() {
        tracing::error!("io_uring operations still in flight at exit; leaking their buffers");
        let rx = std::mem::take(&mut l.rx);
        let tx = std::mem::replace(&mut l.tx, SlotBuf::new(0, 0, 0));
        std::mem::forget(l.ring);
        std::mem::forget(l.multi.take());
        std::mem::forget(std::mem::take(&mut l.retired));
        std::mem::forget(l.tx_multi.take());
        std::mem::forget(std::mem::replace(&mut l.writes, RingWrites::new(0, false)));
        std::mem::forget(std::mem::take(&mut l.tx_retired));
        std::mem::forget(rx);
        std::mem::forget(tx);
    }
    tracing::debug!("io_uring worker stopped");
    result
}

impl Loop {
    fn run(&mut self) -> io::Result<()> {
        if self.w.multishot {
            self.multi = self.new_multi();
            if ring::read_multishot_reliable(&self.ring.ring) {
                self.tx_multi = self.new_tx_multi();
            }
        }
        for i in 0..SLOTS {
            if self.tx_multi.is_none() {
                self.arm_read(i)?;
            }
            if self.multi.is_none() {
                self.arm_recv(i)?;
            }
        }
        // The IPv6 underlay socket's receives are single-shot, always.
        for j in SLOTS..self.rx.len() {
            self.arm_recv(j)?;
        }
        self.arm_multi()?;
        self.arm_tx_multi()?;
        tracing::info!(
            worker = self.w.id,
            multishot = self.tx_multi.is_some(),
            "io_uring TUN read path"
        );
        tracing::info!(
            worker = self.w.id,
            multishot = self.multi.is_some(),
            "io_uring receive path"
        );
        let mut spin = Spin::new(self.w.busy_poll);
        while !self.w.stop.load(Ordering::Relaxed) {
            let since = spin.enabled().then(Instant::now);
            let found = self.look_ahead(&spin)?;
            if !found {
                // The timer wakes the loop to look at the stop flag when no traffic does.
                self.ring.arm_timer()?;
                self.ring.submit_and_wait()?;
            }
            // Whatever the enter did not take (`EBUSY`) is still queued.
            self.writes.queued = self.ring.has_queued();
            let completions = self.ring.reap();
            if let (false, Some(since)) = (found, since) {
                let woken = completions
                    .iter()
                    .any(|c| Kind::of(c.user_data).map(|(k, _)| k) != Some(Kind::Timer));
                spin.blocked(since.elapsed(), woken);
            }
            let r = self.handle(&completions);
            self.ring.recycle(completions);
            r?;
        }
        Ok(())
    }

    /// Looks for completions without blocking for as long as the busy-poll window says,
    /// yielding the CPU between looks; returns whether some are ready.
    fn look_ahead(&mut self, spin: &Spin) -> io::Result<bool> {
        let window = spin.window();
        if window.is_zero() {
            return Ok(false);
        }
        let until = Instant::now() + window;
        let counters = self.w.metrics.worker(self.w.id);
        loop {
            if self.ring.peek()? {
                Counters::add(&counters.busy_poll_hits, 1);
                return Ok(true);
            }
            if Instant::now() >= until || self.w.stop.load(Ordering::Relaxed) {
                Counters::add(&counters.busy_poll_misses, 1);
                return Ok(false);
            }
            std::thread::yield_now();
        }
    }

    fn new_multi(&self) -> Option<Multi> {
        // Small buffers for `udp`, 64 KiB ones (fewer) for VXLAN super-frames and GRO reads.
        let payload = self.core.rx_payload() + 1;
        let entries: u16 = if payload > 4096 { 64 } else { 256 };
        match BufRing::register(
            &self.ring.ring,
            entries,
            MULTI_HEADER + payload,
            0,
            RX_GROUP,
        ) {
            Ok(ring) => Some(Multi {
                msg: multishot_msghdr(MULTI_CONTROL),
                ring,
                armed: Armed::default(),
                bid_writes: vec![0; usize::from(entries)],
            }),
            Err(e) => {
                tracing::info!("no provided-buffer ring ({e}); using single-shot receives");
                None
            }
        }
    }

    fn new_tx_multi(&self) -> Option<TxMulti> {
        // Super-packets take 64 KiB each: fewer of them.
        let entries = if self.core.vnet_len() > 0 { 64 } else { 256 };
        let len = self.core.tun_slot_len();
        let offset = self.core.tun_read_offset();
        match BufRing::register(&self.ring.ring, entries, len, offset, TX_GROUP) {
            Ok(ring) => Some(TxMulti {
                ring,
                armed: Armed::default(),
            }),
            Err(e) => {
                tracing::info!("no provided-buffer ring for TUN reads ({e})");
                None
            }
        }
    }

    fn handle(&mut self, completions: &[Completion]) -> io::Result<()> {
        let snap = self.w.table.load();
        self.core.begin_batch();
        let now = Instant::now();
        for c in completions {
            let Some((kind, index)) = Kind::of(c.user_data) else {
                continue;
            };
            match kind {
                Kind::TxRead => self.on_read(&snap, index, c.result, now)?,
                Kind::RxRecv => self.on_recv(&snap, index, c.result)?,
                Kind::RxWrite => self.on_write(index, c.result)?,
                Kind::RxMulti => self.on_multi(&snap, c)?,
                Kind::TxMulti => self.on_tx_multi(&snap, c, now)?,
                Kind::Timer | Kind::Cancel => {}
            }
        }
        self.flush_sends()?;
        self.core.rx_flush();
        if !self.core.rx_ops().is_empty() {
            self.writes
                .carry_out(&mut self.ring, &self.w, &self.core, &[], Owner::Nobody)?;
        }
        if let Some(m) = &mut self.multi {
            m.ring.publish();
            if m.armed.rearm && !self.stopping {
                m.armed.rearm = false;
                self.arm_multi()?;
            }
        }
        if let Some(t) = &mut self.tx_multi {
            t.ring.publish();
            if t.armed.rearm && !self.stopping {
                t.armed.rearm = false;
                self.arm_tx_multi()?;
            }
        }
        Ok(())
    }

    /// Sends the queued datagrams, then reads into their slots again and gives their ring
    /// buffers back.
    fn flush_sends(&mut self) -> io::Result<()> {
        match self.queued_from {
            TxSource::Slots => self.sender.flush(&self.w, self.tx.data()),
            TxSource::Ring => {
                let data = self.tx_multi.as_ref().map(|t| t.ring.data());
                self.sender.flush(&self.w, data.unwrap_or_default());
            }
        }
        let done = std::mem::take(&mut self.tx_done);
        for &i in &done {
            self.arm_read(i)?;
        }
        self.tx_done = done;
        self.tx_done.clear();
        if let Some(t) = &mut self.tx_multi {
            for &bid in &self.tx_done_bids {
                t.ring.provide(bid);
            }
        }
        self.tx_done_bids.clear();
        Ok(())
    }

    /// Makes the datagrams queued in the sender come from `source`, sending what came from
    /// the other one first.
    fn switch_source(&mut self, source: TxSource) -> io::Result<()> {
        if self.queued_from != source {
            if self.sender.pending() {
                self.flush_sends()?;
            }
            self.queued_from = source;
        }
        Ok(())
    }

    fn on_read(
        &mut self,
        snap: &Arc<Snapshot>,
        i: usize,
        result: i32,
        now: Instant,
    ) -> io::Result<()> {
        if let Some(f) = self.tx_inflight.get_mut(i) {
            *f = 0;
        }
        let Ok(n) = usize::try_from(result) else {
            if !matches!(-result, libc::EAGAIN | libc::EINTR | libc::ECANCELED) {
                self.tun_read_log
                    .error(&io::Error::from_raw_os_error(-result));
            }
            if let Some(gone) = crate::tun::device_gone(-result) {
                return Err(gone);
            }
            return self.arm_read(i);
        };
        if i >= self.tx.count() {
            return Ok(());
        }
        self.switch_source(TxSource::Slots)?;
        let read = TunRead {
            slot: self.tx.range(i),
            n,
        };
        self.sender
            .transmit(&self.w, &mut self.core, snap, now, self.tx.data_mut(), read);
        self.tx_done.push(i);
        Ok(())
    }

    fn on_tx_multi(
        &mut self,
        snap: &Arc<Snapshot>,
        c: &Completion,
        now: Instant,
    ) -> io::Result<()> {
        let Some(t) = &mut self.tx_multi else {
            return Ok(());
        };
        let quiet = [libc::ENOBUFS, libc::ECANCELED, libc::EAGAIN, libc::EINTR];
        let bid = match t
            .armed
            .complete(c, &[libc::EINVAL, libc::EOPNOTSUPP], &quiet)
        {
            Multishot::Buffer(bid) => bid,
            Multishot::Refused => {
                tracing::info!("multishot TUN read refused; using single-shot reads");
                // The ring must outlive the io_uring instance that knows it.
                self.tx_retired.extend(self.tx_multi.take());
                return (0..SLOTS).try_for_each(|i| self.arm_read(i));
            }
            Multishot::Quiet => return Ok(()),
            Multishot::Failed(e) => {
                if let Some(gone) = e.raw_os_error().and_then(crate::tun::device_gone) {
                    return Err(gone);
                }
                self.tun_read_log.error(&e);
                return Ok(());
            }
        };
        self.switch_source(TxSource::Ring)?;
        let Some(t) = &mut self.tx_multi else {
            return Ok(());
        };
        let read = TunRead {
            slot: t.ring.range(bid),
            n: usize::try_from(c.result).unwrap_or(0),
        };
        self.sender
            .transmit(&self.w, &mut self.core, snap, now, t.ring.data_mut(), read);
        self.tx_done_bids.push(bid);
        Ok(())
    }

    fn on_recv(&mut self, snap: &Snapshot, j: usize, result: i32) -> io::Result<()> {
        let Some(slot) = self.rx.get_mut(j) else {
            return Ok(());
        };
        slot.inflight = 0;
        let Ok(len) = usize::try_from(result) else {
            if !matches!(-result, libc::EAGAIN | libc::EINTR | libc::ECANCELED) {
                self.recv_log.error(&io::Error::from_raw_os_error(-result));
            }
            return self.arm_recv(j);
        };
        let r = slot.msg.decode(len, slot.buf.len());
        self.core.udp_read(snap, &mut slot.buf, &r);
        self.sender.answer_probe(&self.w, &self.core);
        let slot = &self.rx[j];
        // SAFETY (of the ring writes): the slot's boxed buffer is not touched again, no
        // receive is armed on it, until its last write's completion is reaped (`on_write`).
        let queued = self.writes.carry_out(
            &mut self.ring,
            &self.w,
            &self.core,
            &slot.buf,
            Owner::Slot(j),
        )?;
        if queued > 0 {
            self.rx[j].writes = queued;
            return Ok(());
        }
        self.arm_recv(j)
    }

    /// Counts a ring write's completion and, when it was the last one from its receive
    /// buffer, gives the buffer back.
    fn on_write(&mut self, entry: usize, result: i32) -> io::Result<()> {
        let Some(owner) = self.writes.finish(&self.w, entry, result) else {
            return Ok(());
        };
        match owner {
            Owner::Nobody => Ok(()),
            Owner::Slot(j) => {
                if self
                    .rx
                    .get_mut(j)
                    .is_some_and(|s| last_write(&mut s.writes))
                {
                    return self.arm_recv(j);
                }
                Ok(())
            }
            Owner::Bid(bid) => {
                if let Some(m) = &mut self.multi
                    && m.bid_writes
                        .get_mut(usize::from(bid))
                        .is_some_and(last_write)
                {
                    m.ring.provide(bid);
                }
                Ok(())
            }
        }
    }

    fn on_multi(&mut self, snap: &Snapshot, c: &Completion) -> io::Result<()> {
        // Moved out while in use so the ring can be pushed to; its buffers live on the heap
        // and do not move with it.
        let Some(mut m) = self.multi.take() else {
            return Ok(());
        };
        // ENOBUFS: the ring ran dry; buffers come back as writes complete and it re-arms.
        let quiet = [libc::ENOBUFS, libc::ECANCELED];
        // EINVAL: the kernel has buffer rings but not multishot RECVMSG (before 6.0).
        let r = match m.armed.complete(c, &[libc::EINVAL], &quiet) {
            Multishot::Buffer(bid) => self.on_multi_datagram(&mut m, snap, bid, c.result),
            Multishot::Refused => {
                tracing::info!("multishot receive refused; using single-shot receives");
                // The ring must outlive the io_uring instance that knows it.
                self.retired.push(m);
                return (0..SLOTS).try_for_each(|j| self.arm_recv(j));
            }
            Multishot::Quiet => Ok(()),
            Multishot::Failed(e) => {
                self.recv_log.error(&e);
                Ok(())
            }
        };
        self.multi = Some(m);
        r
    }

    fn on_multi_datagram(
        &mut self,
        m: &mut Multi,
        snap: &Snapshot,
        bid: u16,
        result: i32,
    ) -> io::Result<()> {
        let used = usize::try_from(result).unwrap_or(0);
        let buf = m.ring.buf(bid);
        let Ok(out) = types::RecvMsgOut::parse(&buf[..used.min(buf.len())], &m.msg) else {
            m.ring.provide(bid);
            return Ok(());
        };
        let r = decode_multishot(
            out.name_data(),
            out.control_data(),
            out.payload_data().len(),
            out.is_payload_truncated(),
        );
        let payload = &mut m.ring.buf(bid)[MULTI_HEADER..];
        self.core.udp_read(snap, payload, &r);
        self.sender.answer_probe(&self.w, &self.core);
        // SAFETY (of the ring writes): the buffer is not given back to the kernel until its
        // last write's completion is reaped (`on_write`), and the ring's memory lives as long
        // as the ring.
        let queued = self.writes.carry_out(
            &mut self.ring,
            &self.w,
            &self.core,
            &m.ring.buf(bid)[MULTI_HEADER..],
            Owner::Bid(bid),
        )?;
        if queued == 0 {
            m.ring.provide(bid);
            return Ok(());
        }
        if let Some(n) = m.bid_writes.get_mut(usize::from(bid)) {
            *n = queued;
        }
        Ok(())
    }

    fn arm_read(&mut self, i: usize) -> io::Result<()> {
        if self.stopping || i >= self.tx.count() {
            return Ok(());
        }
        let at = self.core.tun_read_offset();
        let room = &mut self.tx.slot_mut(i)[at..];
        let ud = Kind::TxRead.user_data(i);
        let entry = opcode::Read::new(
            types::Fd(self.tun_fd),
            room.as_mut_ptr(),
            len_u32(room.len()),
        )
        .build()
        .user_data(ud);
        self.tx_inflight[i] = ud;
        // SAFETY: the slot is part of the loop's slot buffer, which does not move, and is not
        // touched again until this read's completion is reaped.
        unsafe { self.ring.push(&entry) }
    }

    fn arm_recv(&mut self, j: usize) -> io::Result<()> {
        if self.stopping {
            return Ok(());
        }
        // Slots past the first `SLOTS` receive on the IPv6 underlay socket.
        let fd = match &self.w.udp6 {
            Some(udp6) if j >= SLOTS => udp6.as_raw_fd(),
            _ => self.w.udp.as_raw_fd(),
        };
        let Some(slot) = self.rx.get_mut(j) else {
            return Ok(());
        };
        let msg = slot.msg.prepare(&mut slot.buf);
        let ud = Kind::RxRecv.user_data(j);
        let flags = u32::try_from(libc::MSG_TRUNC).unwrap_or(0);
        let entry = opcode::RecvMsg::new(types::Fd(fd), msg)
            .flags(flags)
            .build()
            .user_data(ud);
        slot.inflight = ud;
        // SAFETY: the header, its iovec, address and control space are boxed in the slot, and
        // the iovec points at the slot's boxed buffer; none is touched again until this
        // receive's completion is reaped.
        unsafe { self.ring.push(&entry) }
    }

    fn arm_multi(&mut self) -> io::Result<()> {
        let fd = self.w.udp.as_raw_fd();
        let Some(m) = &self.multi else { return Ok(()) };
        let entry = opcode::RecvMsgMulti::new(types::Fd(fd), &raw const *m.msg, RX_GROUP)
            .build()
            .user_data(Kind::RxMulti.user_data(0));
        // SAFETY: the template header is boxed in `Multi`, which lives until after the ring.
        unsafe { self.ring.push(&entry) }
    }

    fn arm_tx_multi(&mut self) -> io::Result<()> {
        if self.tx_multi.is_none() {
            return Ok(());
        }
        // The length must be 0 with a buffer group: the buffer's own length applies.
        let entry = opcode::ReadMulti::new(types::Fd(self.tun_fd), 0, TX_GROUP)
            .build()
            .user_data(Kind::TxMulti.user_data(0));
        // SAFETY: the operation refers to no memory of ours but the registered buffer ring.
        unsafe { self.ring.push(&entry) }
    }

    /// Cancels every operation in flight and waits for all completions, counting the TUN
    /// writes among them. Returns false when some did not arrive within about two seconds.
    fn drain(&mut self) -> bool {
        self.stopping = true;
        let pending: Vec<u64> = self
            .tx_inflight
            .iter()
            .copied()
            .chain(self.rx.iter().map(|s| s.inflight))
            .chain(self.multi.as_ref().map(|_| Kind::RxMulti.user_data(0)))
            .chain(self.tx_multi.as_ref().map(|_| Kind::TxMulti.user_data(0)))
            .filter(|&ud| ud != 0)
            .collect();
        let (writes, w) = (&mut self.writes, &self.w);
        self.ring.cancel_all(&pending, |c| {
            if let Some((Kind::RxWrite, i)) = Kind::of(c.user_data) {
                // The buffer it read from is freed with the loop; only the count matters here.
                let _ = writes.finish(w, i, c.result);
            }
        })
    }
}

/// Counts one completed write off `outstanding`; returns true when it was the last, so the
/// buffer goes back exactly once.
fn last_write(outstanding: &mut usize) -> bool {
    let last = *outstanding == 1;
    *outstanding = outstanding.saturating_sub(1);
    last
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}
