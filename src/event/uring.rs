//! The io_uring backend: reads, sends, receives and writes all go through one ring per worker.
//!
//! Each worker keeps [`SLOTS`] TUN reads and [`SLOTS`] UDP receives in flight at all times.
//! A slot's buffer moves through a fixed cycle and is referenced by exactly one operation at a
//! time, so no slab is needed: the `user_data` of an operation names its kind and its slot.
//!
//! ```text
//!  TX slot: Read(TUN) --CQE--> forward::outbound --> SendMsg(UDP) --CQE--> Read(TUN) ...
//!                                          \--drop--> Read(TUN)
//!  RX slot: RecvMsg(UDP) --CQE--> forward::inbound --> Write(TUN) --CQE--> RecvMsg(UDP) ...
//!                                          \--drop--> RecvMsg(UDP)
//! ```
//!
//! The TUN fd is non-blocking, so a read with no packet waiting arms io_uring's internal poll
//! (`IORING_FEAT_FAST_POLL`, Linux 5.7) instead of tying up a kernel worker thread. One
//! `io_uring_enter` submits everything queued since the last one and waits for at least one
//! completion; then every completion is handled and the table snapshot is loaded once for
//! them. Receives pass `MSG_TRUNC`, so the result is the datagram's real length and an
//! oversize datagram is recognised and dropped, never delivered truncated.
//!
//! Ownership: a buffer referenced by an in-flight operation is touched again only after that
//! operation's completion has been reaped. On shutdown every in-flight operation is cancelled
//! and its completion awaited before the loop returns; the ring is declared before the slots
//! so it is dropped first. Should the drain not finish, the slots are leaked, never freed
//! under the kernel.
//!
//! Receive, where the kernel has it (buffer rings 5.19, multishot `RECVMSG` 6.0): one
//! multishot receive fills buffers from a provided-buffer ring, so a burst of datagrams costs
//! one submission instead of one per datagram. A buffer goes back to the ring once its packet
//! is dropped or its TUN write completed. Without that support, or with `--no-multishot`, the
//! loop keeps [`SLOTS`] single-shot receives in flight instead; a kernel that rejects the
//! multishot receive at run time (`EINVAL`) switches the loop to that fallback by itself.
//!
//! TUN reads, likewise: on kernels where multishot reads are trusted (the opcode exists, 6.7,
//! and the kernel is 6.12 or later, with the TUN fixes), one multishot read fills buffers from
//! a second buffer ring, each with headroom kept in front for the encapsulation header; the
//! buffer returns to the ring when its send completes. Otherwise, or with `--no-multishot`,
//! [`SLOTS`] single-shot poll-armed reads stay in flight.
//!
//! Not used yet: registered buffers and files, zero-copy sends (they only pay off on real NICs
//! with large sends; over veth and TUN the kernel copies anyway).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;

use std::alloc::Layout;
use std::sync::atomic::AtomicU16;

use io_uring::{IoUring, Probe, cqueue, opcode, squeue, types};

use super::offload::TunRead;
use super::{RateLimitedLog, Worker};
use crate::forward::{self, Verdict};
use crate::metrics::{Counters, DropReason};
use crate::offload::VNET_HDR_LEN;
use crate::udp::{control_bytes, from_storage, socklen_of, to_storage};
use crate::wire::Encap;
use crate::wire::ip::complete_partial_checksum;

/// Operations in flight per direction.
pub const SLOTS: usize = 64;

/// Headroom in front of each packet read from TUN, enough for any encapsulation header.
const HEADROOM: usize = 64;
/// The largest UDP payload over IPv4 (65535 − 20 − 8).
const MAX_UDP_PAYLOAD: usize = 65_507;

const TX_READ: u64 = 1 << 32;
const TX_SEND: u64 = 2 << 32;
const RX_RECV: u64 = 3 << 32;
const RX_WRITE: u64 = 4 << 32;
const TIMER: u64 = 5 << 32;
const CANCEL: u64 = 6 << 32;
const RX_MULTI: u64 = 7 << 32;
const RX_MULTI_WRITE: u64 = 8 << 32;
const TX_MULTI: u64 = 9 << 32;
const TX_MULTI_SEND: u64 = 10 << 32;
const KIND_MASK: u64 = 0xffff_ffff << 32;

/// Checks that the kernel has what this loop needs: a ring, fast poll (Linux 5.7), and the
/// READ, WRITE, SENDMSG, RECVMSG, TIMEOUT and ASYNC_CANCEL opcodes.
///
/// # Errors
///
/// A sentence saying what is missing (io_uring disabled by `kernel.io_uring_disabled` or a
/// seccomp filter shows up here as the setup error).
pub fn probe() -> Result<(), String> {
    let ring = IoUring::new(8).map_err(|e| format!("io_uring_setup failed: {e}"))?;
    if !ring.params().is_feature_fast_poll() {
        return Err("the kernel lacks IORING_FEAT_FAST_POLL (Linux 5.7)".into());
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("IORING_REGISTER_PROBE failed: {e}"))?;
    let needed = [
        (opcode::Read::CODE, "READ"),
        (opcode::Write::CODE, "WRITE"),
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::RecvMsg::CODE, "RECVMSG"),
        (opcode::Timeout::CODE, "TIMEOUT"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    ];
    for (code, name) in needed {
        if !probe.is_supported(code) {
            return Err(format!("the kernel lacks the io_uring opcode {name}"));
        }
    }
    Ok(())
}

/// A buffer and the message header that describes it to the kernel.
struct Slot {
    buf: Box<[u8]>,
    iov: libc::iovec,
    /// Control messages of a receive (the `UDP_GRO` size).
    ctrl: [u64; 4],
    addr: libc::sockaddr_storage,
    msg: libc::msghdr,
    /// The `user_data` of the operation in flight on this slot, 0 when none.
    inflight: u64,
}

fn slots(count: usize, len: usize) -> Box<[Slot]> {
    let mut all: Box<[Slot]> = (0..count)
        .map(|_| Slot {
            buf: vec![0u8; len].into_boxed_slice(),
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            ctrl: [0; 4],
            // SAFETY: sockaddr_storage and msghdr are plain C structs; all-zero is valid.
            addr: unsafe { std::mem::zeroed() },
            // SAFETY: as above.
            msg: unsafe { std::mem::zeroed() },
            inflight: 0,
        })
        .collect();
    // The boxed slice never moves or grows from here on, so these self-pointers stay valid.
    for s in all.iter_mut() {
        s.msg.msg_iov = &raw mut s.iov;
        s.msg.msg_iovlen = 1;
        s.msg.msg_name = (&raw mut s.addr).cast();
    }
    all
}

/// The loop state. Field order matters: the ring is dropped before the buffers.
struct Loop {
    ring: IoUring,
    tx: Box<[Slot]>,
    rx: Box<[Slot]>,
    timespec: Box<types::Timespec>,
    completions: Vec<(u64, i32, u32)>,
    /// Multishot receive state, when in use (declared after the ring, dropped after it).
    multi: Option<Multi>,
    /// A buffer ring given up at run time; kept until the ring is gone.
    retired: Vec<Multi>,
    /// Multishot TUN read state, when in use.
    tx_multi: Option<TxMulti>,
    /// A TUN read ring given up at run time; kept until the ring is gone.
    tx_retired: Vec<TxMulti>,
    inflight: usize,
    timer_armed: bool,
    stopping: bool,
    tun_fd: RawFd,
    rx_payload: usize,
    /// Bytes of virtio-net header in front of each TUN read (0 without offloads).
    vnet: usize,
    /// Offloads in use: receives go through `off.deliver` and are merged.
    offloaded_rx: bool,
    off: super::offload::OffloadIo,
    seg_scratch: Vec<u8>,
    icmp: super::IcmpSender,
    w: Worker,
    tun_read_log: RateLimitedLog,
    tun_write_log: RateLimitedLog,
    send_log: RateLimitedLog,
    recv_log: RateLimitedLog,
}

/// Runs the worker until its stop flag is set.
///
/// # Errors
///
/// When the ring cannot be created or `io_uring_enter` fails for a reason other than `EINTR`.
pub fn run(w: Worker) -> io::Result<()> {
    let entries = u32::try_from(4 * SLOTS).unwrap_or(256);
    let ring = IoUring::builder()
        .setup_coop_taskrun()
        .build(entries)
        .or_else(|_| {
            // COOP_TASKRUN needs 5.19; a plain ring is enough.
            IoUring::new(entries)
        })?;
    let max = w.fwd.max_inner_len;
    // With UDP_GRO, one read holds up to 64 KiB of datagrams whatever the encapsulation.
    let rx_payload = match w.fwd.encap {
        Encap::Flannel if !w.offloads.gro => max,
        _ => MAX_UDP_PAYLOAD,
    };
    // With TUN offloads a read is a super-packet of up to 64 KiB behind its virtio header.
    let (vnet, tun_payload) = if w.tun.vnet() {
        (VNET_HDR_LEN, 65_535)
    } else {
        (0, w.tun_mtu.max(max))
    };
    let mut l = Loop {
        ring,
        tx: slots(SLOTS, HEADROOM + tun_payload),
        rx: slots(SLOTS, rx_payload),
        timespec: Box::new(types::Timespec::new().sec(0).nsec(200_000_000)),
        completions: Vec::with_capacity(8 * SLOTS),
        multi: None,
        retired: Vec::new(),
        tx_multi: None,
        tx_retired: Vec::new(),
        inflight: 0,
        timer_armed: false,
        stopping: false,
        tun_fd: w.tun.as_raw_fd(),
        rx_payload,
        vnet,
        offloaded_rx: w.offloads.gro || w.tun.vnet(),
        off: super::offload::OffloadIo::new(&w),
        seg_scratch: vec![0u8; max],
        icmp: super::IcmpSender::new(),
        tun_read_log: RateLimitedLog::new("TUN read failed"),
        tun_write_log: RateLimitedLog::new("TUN write failed"),
        send_log: RateLimitedLog::new("UDP send failed"),
        recv_log: RateLimitedLog::new("UDP receive failed"),
        w,
    };
    tracing::debug!(worker = l.w.id, "io_uring worker started");
    let result = l.run();
    let drained = l.drain();
    if !drained {
        tracing::error!("io_uring operations still in flight at exit; leaking their buffers");
        let rx = std::mem::take(&mut l.rx);
        let tx = std::mem::take(&mut l.tx);
        std::mem::forget(l.ring);
        std::mem::forget(l.multi.take());
        std::mem::forget(std::mem::take(&mut l.retired));
        std::mem::forget(l.tx_multi.take());
        std::mem::forget(std::mem::take(&mut l.tx_retired));
        std::mem::forget(rx);
        std::mem::forget(tx);
        std::mem::forget(l.timespec);
    }
    tracing::debug!("io_uring worker stopped");
    result
}

impl Loop {
    fn run(&mut self) -> io::Result<()> {
        if self.w.multishot {
            self.multi = Multi::new(&self.ring, self.rx_payload);
            if read_multishot_reliable(&self.ring) {
                let packet_len = self.tx[0].buf.len() - HEADROOM;
                self.tx_multi = TxMulti::new(&self.ring, packet_len, self.vnet);
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
        if self.multi.is_some() {
            self.arm_multi()?;
        }
        if self.tx_multi.is_some() {
            self.arm_tx_multi()?;
        }
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
        while !self.w.stop.load(Ordering::Relaxed) {
            if !self.timer_armed {
                // Wakes the loop to look at the stop flag when no traffic does.
                let timer = opcode::Timeout::new(&raw const *self.timespec)
                    .build()
                    .user_data(TIMER);
                self.push(timer)?;
                self.timer_armed = true;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(e) => return Err(e),
            }
            self.reap();
            self.handle_completions()?;
        }
        Ok(())
    }

    /// Moves all completions out of the ring, so handlers may push new entries.
    fn reap(&mut self) {
        self.completions.clear();
        let mut finished = 0;
        for cqe in self.ring.completion() {
            // A multishot operation stays in flight while its completions carry MORE.
            if !cqueue::more(cqe.flags()) {
                finished += 1;
            }
            self.completions
                .push((cqe.user_data(), cqe.result(), cqe.flags()));
        }
        self.inflight = self.inflight.saturating_sub(finished);
    }

    fn handle_completions(&mut self) -> io::Result<()> {
        let snap = self.w.table.load();
        let completions = std::mem::take(&mut self.completions);
        for &(user_data, result, flags) in &completions {
            let index = (user_data & !KIND_MASK) as usize;
            match user_data & KIND_MASK {
                TX_READ => self.on_read(&snap, index, result)?,
                TX_SEND => self.on_send(index, result)?,
                RX_RECV => self.on_recv(&snap, index, result)?,
                RX_WRITE => self.on_write(index, result)?,
                RX_MULTI => self.on_multi(&snap, result, flags)?,
                RX_MULTI_WRITE => self.on_multi_write(index, result),
                TX_MULTI => self.on_tx_multi(&snap, result, flags)?,
                TX_MULTI_SEND => self.on_tx_multi_send(index, result),
                TIMER => self.timer_armed = false,
                _ => {}
            }
        }
        self.completions = completions;
        if self.offloaded_rx {
            self.off.flush(&self.w, &mut self.tun_write_log);
        }
        if let Some(m) = &mut self.multi {
            m.ring.publish();
            if m.rearm && !self.stopping {
                m.rearm = false;
                self.arm_multi()?;
            }
        }
        if let Some(t) = &mut self.tx_multi {
            t.ring.publish();
            if t.rearm && !self.stopping {
                t.rearm = false;
                self.arm_tx_multi()?;
            }
        }
        Ok(())
    }

    /// Counts the completion of a UDP send: the datagram, or a `tx_error` drop.
    fn count_send(&mut self, result: i32) {
        let counters = self.w.metrics.worker(self.w.id);
        match u64::try_from(result) {
            Ok(bytes) => {
                Counters::add(&counters.tx_packets, 1);
                Counters::add(&counters.tx_bytes, bytes);
            }
            Err(_) => {
                counters.drop_packet(DropReason::TxError);
                if -result != libc::ECANCELED {
                    self.send_log.error(&io::Error::from_raw_os_error(-result));
                }
            }
        }
    }

    /// Counts the completion of a TUN write: the packet, or a `tun_write_error` drop.
    fn count_tun_write(&mut self, result: i32) {
        let counters = self.w.metrics.worker(self.w.id);
        match u64::try_from(result) {
            Ok(bytes) => {
                Counters::add(&counters.tun_tx_packets, 1);
                Counters::add(&counters.tun_tx_bytes, bytes);
            }
            Err(_) => {
                counters.drop_packet(DropReason::TunWriteError);
                if -result != libc::ECANCELED {
                    self.tun_write_log
                        .error(&io::Error::from_raw_os_error(-result));
                }
            }
        }
    }

    fn on_read(&mut self, snap: &crate::table::Snapshot, i: usize, result: i32) -> io::Result<()> {
        self.tx[i].inflight = 0;
        let Ok(len) = usize::try_from(result) else {
            if !matches!(-result, libc::EAGAIN | libc::EINTR | libc::ECANCELED) {
                let err = io::Error::from_raw_os_error(-result);
                self.tun_read_log.error(&err);
            }
            if matches!(-result, libc::EBADF | libc::EBADFD) {
                return Ok(());
            }
            return self.arm_read(i);
        };
        let metrics = std::sync::Arc::clone(&self.w.metrics);
        let counters = metrics.worker(self.w.id);
        let mut len = len.saturating_sub(self.vnet);
        Counters::add(&counters.tun_rx_packets, 1);
        Counters::add(&counters.tun_rx_bytes, len as u64);
        if self.vnet > 0 {
            let n = usize::try_from(result).unwrap_or(0);
            match self.off.tun_read(
                &self.w,
                snap,
                &mut self.tx[i].buf,
                HEADROOM,
                n,
                &mut self.icmp,
            ) {
                TunRead::Plain(plain) => len = plain,
                TunRead::Dropped => return self.arm_read(i),
                TunRead::Segments { socket, dst, count } => {
                    // Sends queued on the ring go first, so a flow keeps its order.
                    self.submit_queued()?;
                    let packet = &self.tx[i].buf[HEADROOM..HEADROOM + len];
                    self.off.send_segments(&self.w, socket, dst, packet, count);
                    return self.arm_read(i);
                }
            }
        }
        let verdict = forward::outbound(snap, &self.w.fwd, &mut self.tx[i].buf, HEADROOM, len);
        match verdict {
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
                let fd = match self.w.tx_pool.len() {
                    0 => self.w.udp.as_raw_fd(),
                    n => self.w.tx_pool[super::pick_socket(flow, n)].as_raw_fd(),
                };
                let slot = &mut self.tx[i];
                slot.iov.iov_base = slot.buf[start..].as_mut_ptr().cast();
                slot.iov.iov_len = len;
                slot.msg.msg_namelen = to_storage(dst, &mut slot.addr);
                slot.msg.msg_control = std::ptr::null_mut();
                slot.msg.msg_controllen = 0;
                slot.msg.msg_flags = 0;
                let ud = TX_SEND | i as u64;
                let entry = opcode::SendMsg::new(types::Fd(fd), &raw const slot.msg)
                    .build()
                    .user_data(ud);
                slot.inflight = ud;
                self.push(entry)
            }
            Verdict::Drop(reason) => {
                counters.drop_packet(reason);
                let packet = &self.tx[i].buf[HEADROOM..HEADROOM + len];
                self.icmp
                    .on_drop(snap, &self.w.fwd, reason, packet, &self.w.tun, counters);
                self.arm_read(i)
            }
            Verdict::Deliver { .. } => {
                counters.drop_packet(DropReason::LocalDestination);
                self.arm_read(i)
            }
        }
    }

    fn on_send(&mut self, i: usize, result: i32) -> io::Result<()> {
        self.tx[i].inflight = 0;
        self.count_send(result);
        self.arm_read(i)
    }

    fn on_recv(&mut self, snap: &crate::table::Snapshot, j: usize, result: i32) -> io::Result<()> {
        self.rx[j].inflight = 0;
        let Ok(len) = usize::try_from(result) else {
            if !matches!(-result, libc::EAGAIN | libc::EINTR | libc::ECANCELED) {
                self.recv_log.error(&io::Error::from_raw_os_error(-result));
            }
            return self.arm_recv(j);
        };
        let metrics = std::sync::Arc::clone(&self.w.metrics);
        let counters = metrics.worker(self.w.id);
        // MSG_TRUNC makes the result the datagram's real length.
        let oversize = len > self.rx_payload || len > self.rx[j].buf.len();
        let from = from_storage(&self.rx[j].addr);
        let segment = {
            let slot = &self.rx[j];
            let control = control_bytes(&slot.ctrl, slot.msg.msg_controllen);
            crate::offload::gro_segment_size(&control).unwrap_or(0)
        };
        // A read dropped whole counts once per datagram it holds.
        if oversize {
            super::drop_read(counters, len, segment, DropReason::Oversize);
            return self.arm_recv(j);
        }
        let Some(from) = from else {
            super::drop_read(counters, len, segment, DropReason::UnknownSender);
            return self.arm_recv(j);
        };
        if self.offloaded_rx {
            // `deliver` counts each datagram the read holds.
            let slot = &mut self.rx[j];
            self.off.deliver(
                &self.w,
                snap,
                from,
                &mut slot.buf[..len],
                segment,
                &mut self.seg_scratch,
                &mut self.tun_write_log,
            );
            return self.arm_recv(j);
        }
        Counters::add(&counters.rx_packets, 1);
        Counters::add(&counters.rx_bytes, len as u64);
        let datagram = &mut self.rx[j].buf[..len];
        match forward::inbound(snap, &self.w.fwd, from, datagram) {
            Verdict::Deliver { start, len, peer } if len <= self.w.fwd.max_inner_len => {
                if let Some(stats) = snap.peer_stats(peer) {
                    stats.add_rx(self.w.id, 1, datagram.len() as u64);
                }
                let inner = &mut datagram[start..start + len];
                if complete_partial_checksum(inner) {
                    Counters::add(&counters.tun_tx_csum_completed, 1);
                }
                let ud = RX_WRITE | j as u64;
                let len32 = u32::try_from(len).unwrap_or(u32::MAX);
                let entry = opcode::Write::new(types::Fd(self.tun_fd), inner.as_ptr(), len32)
                    .build()
                    .user_data(ud);
                self.rx[j].inflight = ud;
                self.push(entry)
            }
            Verdict::Deliver { start, len, peer } => {
                if let Some(stats) = snap.peer_stats(peer) {
                    stats.add_rx(self.w.id, 1, datagram.len() as u64);
                }
                // A super-packet from a kernel peer on this host: cut it and write the pieces
                // right away; this path is rare and needs several writes anyway.
                super::write_segmented(
                    &self.w.tun,
                    &datagram[start..start + len],
                    self.w.fwd.max_inner_len,
                    &mut self.seg_scratch,
                    counters,
                    &mut self.tun_write_log,
                );
                self.arm_recv(j)
            }
            Verdict::Drop(reason) => {
                counters.drop_packet(reason);
                self.arm_recv(j)
            }
            Verdict::Send { .. } => {
                counters.drop_packet(DropReason::NotLocal);
                self.arm_recv(j)
            }
        }
    }

    fn on_write(&mut self, j: usize, result: i32) -> io::Result<()> {
        self.rx[j].inflight = 0;
        self.count_tun_write(result);
        self.arm_recv(j)
    }

    fn arm_read(&mut self, i: usize) -> io::Result<()> {
        if self.stopping {
            return Ok(());
        }
        let slot = &mut self.tx[i];
        let room = &mut slot.buf[HEADROOM - self.vnet..];
        let len = u32::try_from(room.len()).unwrap_or(u32::MAX);
        let ud = TX_READ | i as u64;
        let entry = opcode::Read::new(types::Fd(self.tun_fd), room.as_mut_ptr(), len)
            .build()
            .user_data(ud);
        slot.inflight = ud;
        self.push(entry)
    }

    fn arm_recv(&mut self, j: usize) -> io::Result<()> {
        if self.stopping {
            return Ok(());
        }
        let fd = self.w.udp.as_raw_fd();
        let slot = &mut self.rx[j];
        slot.iov.iov_base = slot.buf.as_mut_ptr().cast();
        slot.iov.iov_len = slot.buf.len();
        slot.msg.msg_namelen = socklen_of::<libc::sockaddr_storage>();
        slot.msg.msg_control = slot.ctrl.as_mut_ptr().cast();
        slot.msg.msg_controllen = std::mem::size_of::<[u64; 4]>();
        slot.msg.msg_flags = 0;
        let ud = RX_RECV | j as u64;
        let flags = u32::try_from(libc::MSG_TRUNC).unwrap_or(0);
        let entry = opcode::RecvMsg::new(types::Fd(fd), &raw mut slot.msg)
            .flags(flags)
            .build()
            .user_data(ud);
        slot.inflight = ud;
        self.push(entry)
    }

    fn arm_multi(&mut self) -> io::Result<()> {
        let fd = self.w.udp.as_raw_fd();
        let Some(m) = &self.multi else { return Ok(()) };
        let entry = opcode::RecvMsgMulti::new(types::Fd(fd), &raw const *m.msg, BUF_GROUP)
            .build()
            .user_data(RX_MULTI);
        self.push(entry)
    }

    fn on_multi(
        &mut self,
        snap: &crate::table::Snapshot,
        result: i32,
        flags: u32,
    ) -> io::Result<()> {
        // Moved out while in use so the ring can be pushed to; its buffers live on the heap
        // and do not move with it.
        let Some(mut m) = self.multi.take() else {
            return Ok(());
        };
        if !cqueue::more(flags) {
            m.rearm = true;
        }
        if result < 0 {
            match -result {
                libc::EINVAL if !m.worked && m.writes == 0 => {
                    // The kernel has buffer rings but not multishot RECVMSG (before 6.0).
                    tracing::info!("multishot receive refused; using single-shot receives");
                    // The ring must outlive the io_uring instance that knows it.
                    self.retired.push(m);
                    for j in 0..SLOTS {
                        self.arm_recv(j)?;
                    }
                    return Ok(());
                }
                // The ring ran dry; buffers come back as writes complete and it re-arms.
                libc::ENOBUFS | libc::ECANCELED => {}
                e => self.recv_log.error(&io::Error::from_raw_os_error(e)),
            }
            self.multi = Some(m);
            return Ok(());
        }
        let r = self.on_multi_datagram(&mut m, snap, result, flags);
        self.multi = Some(m);
        r
    }

    fn on_multi_datagram(
        &mut self,
        m: &mut Multi,
        snap: &crate::table::Snapshot,
        result: i32,
        flags: u32,
    ) -> io::Result<()> {
        m.worked = true;
        let Some(bid) = cqueue::buffer_select(flags) else {
            return Ok(());
        };
        let counters = self.w.metrics.worker(self.w.id);
        let used = usize::try_from(result).unwrap_or(0);
        let buf = m.ring.buf(bid);
        let Ok(out) = types::RecvMsgOut::parse(&buf[..used.min(buf.len())], &m.msg) else {
            m.ring.provide(bid);
            return Ok(());
        };
        let len = out.payload_data().len();
        let truncated = out.is_payload_truncated();
        let segment = crate::offload::gro_segment_size(out.control_data()).unwrap_or(0);
        let mut addr: libc::sockaddr_storage =
            // SAFETY: sockaddr_storage is a plain C struct; all-zero is valid.
            unsafe { std::mem::zeroed() };
        let name = out.name_data();
        // SAFETY: `addr` is a sockaddr_storage (128 bytes) and at most that many bytes of
        // `name` are copied into it; the regions do not overlap.
        unsafe {
            let n = name
                .len()
                .min(std::mem::size_of::<libc::sockaddr_storage>());
            std::ptr::copy_nonoverlapping(name.as_ptr(), (&raw mut addr).cast::<u8>(), n);
        }
        let oversize = truncated || len > self.rx_payload;
        let from = from_storage(&addr);
        // A read dropped whole counts once per datagram it holds.
        if oversize {
            super::drop_read(counters, len, segment, DropReason::Oversize);
            m.ring.provide(bid);
            return Ok(());
        }
        let Some(from) = from else {
            super::drop_read(counters, len, segment, DropReason::UnknownSender);
            m.ring.provide(bid);
            return Ok(());
        };
        if !self.offloaded_rx {
            // With offloads, `deliver` counts each datagram the read holds.
            Counters::add(&counters.rx_packets, 1);
            Counters::add(&counters.rx_bytes, len as u64);
        }
        let start_of_payload = MULTI_HEADER;
        let datagram = &mut m.ring.buf(bid)[start_of_payload..start_of_payload + len];
        if self.offloaded_rx {
            // `deliver` copies what it keeps, so the buffer goes back right away.
            self.off.deliver(
                &self.w,
                snap,
                from,
                datagram,
                segment,
                &mut self.seg_scratch,
                &mut self.tun_write_log,
            );
            m.ring.provide(bid);
            return Ok(());
        }
        match forward::inbound(snap, &self.w.fwd, from, datagram) {
            Verdict::Deliver { start, len, peer } if len <= self.w.fwd.max_inner_len => {
                if let Some(stats) = snap.peer_stats(peer) {
                    stats.add_rx(self.w.id, 1, datagram.len() as u64);
                }
                let inner = &mut datagram[start..start + len];
                if complete_partial_checksum(inner) {
                    Counters::add(&counters.tun_tx_csum_completed, 1);
                }
                let len32 = u32::try_from(len).unwrap_or(u32::MAX);
                let entry = opcode::Write::new(types::Fd(self.tun_fd), inner.as_ptr(), len32)
                    .build()
                    .user_data(RX_MULTI_WRITE | u64::from(bid));
                m.writes += 1;
                self.push(entry)
            }
            Verdict::Deliver { start, len, peer } => {
                if let Some(stats) = snap.peer_stats(peer) {
                    stats.add_rx(self.w.id, 1, datagram.len() as u64);
                }
                super::write_segmented(
                    &self.w.tun,
                    &datagram[start..start + len],
                    self.w.fwd.max_inner_len,
                    &mut self.seg_scratch,
                    counters,
                    &mut self.tun_write_log,
                );
                m.ring.provide(bid);
                Ok(())
            }
            Verdict::Drop(reason) => {
                counters.drop_packet(reason);
                m.ring.provide(bid);
                Ok(())
            }
            Verdict::Send { .. } => {
                counters.drop_packet(DropReason::NotLocal);
                m.ring.provide(bid);
                Ok(())
            }
        }
    }

    fn arm_tx_multi(&mut self) -> io::Result<()> {
        if self.tx_multi.is_none() {
            return Ok(());
        }
        // The length must be 0 with a buffer group: the buffer's own length applies.
        let entry = opcode::ReadMulti::new(types::Fd(self.tun_fd), 0, TX_GROUP)
            .build()
            .user_data(TX_MULTI);
        self.push(entry)
    }

    fn on_tx_multi(
        &mut self,
        snap: &crate::table::Snapshot,
        result: i32,
        flags: u32,
    ) -> io::Result<()> {
        let Some(mut t) = self.tx_multi.take() else {
            return Ok(());
        };
        if !cqueue::more(flags) {
            t.rearm = true;
        }
        if result < 0 {
            match -result {
                libc::EINVAL | libc::EOPNOTSUPP if !t.worked => {
                    tracing::info!("multishot TUN read refused; using single-shot reads");
                    self.tx_retired.push(t);
                    for i in 0..SLOTS {
                        self.arm_read(i)?;
                    }
                    return Ok(());
                }
                libc::ENOBUFS | libc::ECANCELED | libc::EAGAIN | libc::EINTR => {}
                e => self.tun_read_log.error(&io::Error::from_raw_os_error(e)),
            }
            self.tx_multi = Some(t);
            return Ok(());
        }
        t.worked = true;
        let r = match cqueue::buffer_select(flags) {
            Some(bid) => self.on_tx_packet(&mut t, snap, bid, result),
            None => Ok(()),
        };
        self.tx_multi = Some(t);
        r
    }

    fn on_tx_packet(
        &mut self,
        t: &mut TxMulti,
        snap: &crate::table::Snapshot,
        bid: u16,
        result: i32,
    ) -> io::Result<()> {
        let metrics = std::sync::Arc::clone(&self.w.metrics);
        let counters = metrics.worker(self.w.id);
        let n = usize::try_from(result).unwrap_or(0);
        let mut len = n.saturating_sub(self.vnet);
        Counters::add(&counters.tun_rx_packets, 1);
        Counters::add(&counters.tun_rx_bytes, len as u64);
        if self.vnet > 0 {
            let buf = t.ring.buf(bid);
            match self
                .off
                .tun_read(&self.w, snap, buf, HEADROOM, n, &mut self.icmp)
            {
                TunRead::Plain(plain) => len = plain,
                TunRead::Dropped => {
                    t.ring.provide(bid);
                    return Ok(());
                }
                TunRead::Segments { socket, dst, count } => {
                    // Sends queued on the ring go first, so a flow keeps its order.
                    self.submit_queued()?;
                    let packet = &t.ring.buf(bid)[HEADROOM..HEADROOM + len];
                    self.off.send_segments(&self.w, socket, dst, packet, count);
                    t.ring.provide(bid);
                    return Ok(());
                }
            }
        }
        let buf = t.ring.buf(bid);
        match forward::outbound(snap, &self.w.fwd, buf, HEADROOM, len) {
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
                let fd = match self.w.tx_pool.len() {
                    0 => self.w.udp.as_raw_fd(),
                    n => self.w.tx_pool[super::pick_socket(flow, n)].as_raw_fd(),
                };
                let data = buf[start..start + len].as_mut_ptr();
                let send = &mut t.sends[usize::from(bid & t.ring.mask)];
                send.iov.iov_base = data.cast();
                send.iov.iov_len = len;
                send.msg.msg_namelen = to_storage(dst, &mut send.addr);
                send.msg.msg_control = std::ptr::null_mut();
                send.msg.msg_controllen = 0;
                send.msg.msg_flags = 0;
                let entry = opcode::SendMsg::new(types::Fd(fd), &raw const send.msg)
                    .build()
                    .user_data(TX_MULTI_SEND | u64::from(bid));
                self.push(entry)
            }
            Verdict::Drop(reason) => {
                counters.drop_packet(reason);
                let packet = &t.ring.buf(bid)[HEADROOM..HEADROOM + len];
                self.icmp
                    .on_drop(snap, &self.w.fwd, reason, packet, &self.w.tun, counters);
                t.ring.provide(bid);
                Ok(())
            }
            Verdict::Deliver { .. } => {
                counters.drop_packet(DropReason::LocalDestination);
                t.ring.provide(bid);
                Ok(())
            }
        }
    }

    fn on_tx_multi_send(&mut self, bid: usize, result: i32) {
        self.count_send(result);
        let bid = u16::try_from(bid).unwrap_or(0);
        if let Some(t) = &mut self.tx_multi {
            t.ring.provide(bid);
        }
    }

    fn on_multi_write(&mut self, bid: usize, result: i32) {
        self.count_tun_write(result);
        if let Some(m) = &mut self.multi {
            m.writes = m.writes.saturating_sub(1);
            m.ring.provide(u16::try_from(bid).unwrap_or(0));
        }
    }

    /// Submits what is queued, if anything (an empty submission would still cost a system
    /// call).
    fn submit_queued(&mut self) -> io::Result<()> {
        if !self.ring.submission().is_empty() {
            self.ring.submit()?;
        }
        Ok(())
    }

    /// Queues one entry, submitting first when the submission queue is full.
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every pointer in `entry` refers to a buffer, iovec, msghdr, address or
            // timespec owned by `self` in a boxed allocation that does not move, and that is
            // not touched again until this entry's completion is reaped (the slot cycle in the
            // module docs); `drain` waits for all completions before anything is freed.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                self.inflight += 1;
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    /// Cancels every operation in flight and waits for all completions. Returns false when
    /// some did not arrive within about two seconds.
    fn drain(&mut self) -> bool {
        self.stopping = true;
        let pending: Vec<u64> = self
            .tx
            .iter()
            .chain(self.rx.iter())
            .map(|s| s.inflight)
            .chain(self.multi.as_ref().map(|_| RX_MULTI))
            .chain(self.tx_multi.as_ref().map(|_| TX_MULTI))
            .filter(|&ud| ud != 0)
            .collect();
        for ud in pending {
            let cancel = opcode::AsyncCancel::new(ud).build().user_data(CANCEL);
            if self.push(cancel).is_err() {
                return false;
            }
        }
        let mut rounds = 0;
        while self.inflight > 0 && rounds < 20 {
            rounds += 1;
            if !self.timer_armed {
                let timer = opcode::Timeout::new(&raw const *self.timespec)
                    .build()
                    .user_data(TIMER);
                if self.push(timer).is_err() {
                    return false;
                }
                self.timer_armed = true;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(_) => return false,
            }
            self.reap();
            for &(ud, _, _) in &self.completions {
                match ud & KIND_MASK {
                    TIMER => self.timer_armed = false,
                    TX_READ | TX_SEND => self.tx[(ud & !KIND_MASK) as usize].inflight = 0,
                    RX_RECV | RX_WRITE => self.rx[(ud & !KIND_MASK) as usize].inflight = 0,
                    _ => {}
                }
            }
        }
        self.inflight == 0
    }
}

/// Buffer group of the multishot receive.
const BUF_GROUP: u16 = 0;
/// Bytes in front of the payload in a multishot receive buffer: `io_uring_recvmsg_out` (16)
/// and the fixed-size name field (a `sockaddr_storage`, 128); no control data is asked for.
const MULTI_HEADER: usize = 16 + std::mem::size_of::<libc::sockaddr_storage>() + MULTI_CONTROL;
/// Control-message space in each multishot receive buffer (the `UDP_GRO` size).
const MULTI_CONTROL: usize = 32;

/// Multishot receive: the message template the kernel reads the name length from, and the
/// provided-buffer ring.
struct Multi {
    msg: Box<libc::msghdr>,
    ring: BufRing,
    /// Set when the multishot operation ended and must be submitted again.
    rearm: bool,
    /// Set once a completion succeeded (an early `EINVAL` means no multishot support).
    worked: bool,
    /// TUN writes in flight from ring buffers.
    writes: usize,
}

impl Multi {
    /// Registers a buffer ring on `ring`; `None` when the kernel cannot (before 5.19).
    fn new(ring: &IoUring, payload: usize) -> Option<Self> {
        // Small buffers for `udp`, 64 KiB ones (fewer) for VXLAN super-frames.
        let entries: u16 = if payload > 4096 { 64 } else { 256 };
        let buf_ring = BufRing::new(entries, MULTI_HEADER + payload, 0)?;
        // SAFETY: the ring memory is page aligned, holds `entries` entries and lives in
        // `Multi`, which the loop keeps until the ring is dropped (field order in `Loop`, and
        // `run` leaks both together if a drain fails).
        let registered = unsafe {
            ring.submitter().register_buf_ring_with_flags(
                buf_ring.base as u64,
                entries,
                BUF_GROUP,
                0,
            )
        };
        if let Err(e) = registered {
            tracing::info!("no provided-buffer ring ({e}); using single-shot receives");
            return None;
        }
        // SAFETY: msghdr is a plain C struct; all-zero is valid.
        let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msg.msg_namelen = socklen_of::<libc::sockaddr_storage>();
        msg.msg_controllen = MULTI_CONTROL;
        let mut m = Self {
            msg,
            ring: buf_ring,
            rearm: false,
            worked: false,
            writes: 0,
        };
        for bid in 0..entries {
            m.ring.provide(bid);
        }
        m.ring.publish();
        Some(m)
    }
}

/// A provided-buffer ring (`io_uring_register_buf_ring(3)`): a page-aligned array of
/// entries that hand buffers to the kernel, and the buffers themselves.
struct BufRing {
    base: *mut types::BufRingEntry,
    layout: Layout,
    mask: u16,
    tail: u16,
    bufs: Box<[u8]>,
    buf_len: usize,
    /// Bytes at the start of each buffer kept from the kernel (headroom for encapsulation).
    offset: usize,
}

impl BufRing {
    fn new(entries: u16, buf_len: usize, offset: usize) -> Option<Self> {
        let size = usize::from(entries) * std::mem::size_of::<types::BufRingEntry>();
        let layout = Layout::from_size_align(size, 4096).ok()?;
        // SAFETY: the layout has a non-zero size.
        let base = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<types::BufRingEntry>();
        if base.is_null() {
            return None;
        }
        Some(Self {
            base,
            layout,
            mask: entries - 1,
            tail: 0,
            bufs: vec![0u8; usize::from(entries) * buf_len].into_boxed_slice(),
            buf_len,
            offset,
        })
    }

    /// Returns buffer `bid`.
    fn buf(&mut self, bid: u16) -> &mut [u8] {
        let start = usize::from(bid & self.mask) * self.buf_len;
        &mut self.bufs[start..start + self.buf_len]
    }

    /// Puts buffer `bid` back at the tail (made visible by [`Self::publish`]).
    fn provide(&mut self, bid: u16) {
        let bid = bid & self.mask;
        let offset = self.offset;
        let addr = self.buf(bid)[offset..].as_mut_ptr() as u64;
        let len = u32::try_from(self.buf_len - offset).unwrap_or(u32::MAX);
        let index = usize::from(self.tail & self.mask);
        // SAFETY: `index` is below the number of entries the allocation holds.
        let ptr = unsafe { self.base.add(index) };
        // SAFETY: `ptr` points at an initialised entry inside the allocation; the kernel only
        // reads entries between its head and the published tail, and this one is past it.
        let entry = unsafe { &mut *ptr };
        entry.set_addr(addr);
        entry.set_len(len);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the tail to the kernel (a release store, as liburing's `io_uring_buf_ring_advance`).
    fn publish(&self) {
        // SAFETY: `base` is the first entry of an initialised ring.
        let ptr = unsafe { types::BufRingEntry::tail(self.base) }.cast::<AtomicU16>();
        // SAFETY: `ptr` is the ring's 16-bit tail field, aligned for an AtomicU16, valid for
        // the ring's lifetime and written only by this thread.
        let tail = unsafe { &*ptr };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: `base` came from `alloc_zeroed` with this layout and is freed once.
        unsafe { std::alloc::dealloc(self.base.cast(), self.layout) };
    }
}

/// Buffer group of the multishot TUN read.
const TX_GROUP: u16 = 1;
/// Buffers in the TUN read ring.
const TX_ENTRIES: u16 = 256;

/// Multishot TUN reads (`IORING_OP_READ_MULTISHOT`, Linux 6.7): the kernel fills buffers from
/// a provided-buffer ring, each after [`HEADROOM`] bytes kept for the encapsulation header; a
/// buffer goes back to the ring when its packet is dropped or its send completed. Each buffer
/// has its own message header for the send.
struct TxMulti {
    ring: BufRing,
    sends: Box<[Slot]>,
    rearm: bool,
    worked: bool,
}

impl TxMulti {
    fn new(uring: &IoUring, packet_len: usize, vnet: usize) -> Option<Self> {
        // Super-packets take 64 KiB each: fewer of them.
        let entries = if vnet > 0 { 64 } else { TX_ENTRIES };
        let buf_ring = BufRing::new(entries, HEADROOM + packet_len, HEADROOM - vnet)?;
        // SAFETY: as in `Multi::new`: page-aligned memory for the entries that lives
        // until after the ring is dropped.
        let registered = unsafe {
            uring.submitter().register_buf_ring_with_flags(
                buf_ring.base as u64,
                entries,
                TX_GROUP,
                0,
            )
        };
        if let Err(e) = registered {
            tracing::info!("no provided-buffer ring for TUN reads ({e})");
            return None;
        }
        // The send headers need no buffers of their own: their iovecs point into the ring.
        let mut m = Self {
            ring: buf_ring,
            sends: slots(usize::from(entries), 0),
            rearm: false,
            worked: false,
        };
        for bid in 0..entries {
            m.ring.provide(bid);
        }
        m.ring.publish();
        Some(m)
    }
}

/// Returns true when this kernel's multishot TUN read is trusted: the opcode exists (6.7) and
/// the kernel is 6.12 or later, which has the fixes for TUN (liburing issues #1041 and #1257;
/// io_uring-6.12 commit c9d952b9103b).
fn read_multishot_reliable(ring: &IoUring) -> bool {
    let mut probe = Probe::new();
    if ring.submitter().register_probe(&mut probe).is_err()
        || !probe.is_supported(opcode::ReadMulti::CODE)
    {
        return false;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (6, 12)
}
