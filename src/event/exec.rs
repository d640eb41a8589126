//! Executing the datapath core's plans with direct system calls: UDP sends through the socket
//! layer's `sendmmsg` batches, TUN writes with `write`/`writev`. Both loops use these, so a
//! plan is carried out the same way whichever loop produced it, and in its order: datagrams
//! are queued and sent in batches, and whatever is queued goes out before the segments of a
//! super-packet (one socket sends a flow's datagrams in the order it was handed them).

use std::io;
use std::net::SocketAddr;

use super::{BATCH, RateLimitedLog, Worker};
use crate::datapath::{Core, RxOp, TxPlan};
use crate::metrics::{Counters, DropReason};
use crate::tun::Tun;
use crate::udp::{MmsgScratch, SegmentScratch, Transmit, UdpSocket};

/// How long a send waits for room in a full socket buffer before the rest of its batch is
/// dropped.
const SEND_WAIT_MS: i32 = 10;

/// The UDP side: a queue of datagrams and the scratch space to send them.
pub(crate) struct Sender {
    queue: Vec<Transmit>,
    mm: MmsgScratch,
    seg: SegmentScratch,
    log: RateLimitedLog,
}

impl Sender {
    pub(crate) fn new() -> Self {
        Self {
            queue: Vec::with_capacity(BATCH),
            mm: MmsgScratch::new(BATCH),
            seg: SegmentScratch::new(crate::offload::MAX_SEGMENTS),
            log: RateLimitedLog::new("UDP send failed"),
        }
    }

    /// Returns true when datagrams are queued.
    pub(crate) fn pending(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Carries out `plan`, made by `core` for the TUN read in the slot that starts at `base` in
    /// `data`. A datagram is queued (sent by [`Self::flush`] with `data`, which must still hold
    /// it, or right away when the queue is full); segments go right away, after the queue.
    pub(crate) fn execute(
        &mut self,
        w: &Worker,
        core: &Core,
        plan: TxPlan,
        data: &[u8],
        base: usize,
        tun: &mut TunWriter,
    ) {
        match plan {
            TxPlan::Datagram {
                socket,
                dst,
                start,
                len,
            } => {
                self.queue.push(Transmit {
                    dst,
                    start: base + start,
                    len,
                    socket: u16::try_from(socket).unwrap_or(0),
                });
                if self.queue.len() >= BATCH {
                    self.flush(w, data);
                }
            }
            TxPlan::Segments {
                socket,
                dst,
                packet,
                packet_len,
                count,
            } => {
                self.flush(w, data);
                let packet = data
                    .get(base + packet..base + packet + packet_len)
                    .unwrap_or_default();
                self.send_segments(w, core, socket, dst, packet, count);
            }
            TxPlan::Icmp { len } => tun.write_icmp(&w.tun, core.icmp_reply(len), w),
            TxPlan::Dropped => {}
        }
    }

    /// Sends the queued datagrams (ranges of `data`): one `sendmmsg` per source socket in use,
    /// in queue order within each (in `vxlan` mode a flow always uses the same socket).
    pub(crate) fn flush(&mut self, w: &Worker, data: &[u8]) {
        if self.queue.is_empty() {
            return;
        }
        if w.tx_pool.len() > 1 {
            // Stable: datagrams of one socket keep their order.
            self.queue.sort_by_key(|t| t.socket);
        }
        let mut from = 0;
        while from < self.queue.len() {
            let socket = self.queue[from].socket;
            let to = from
                + self.queue[from..]
                    .iter()
                    .take_while(|t| t.socket == socket)
                    .count();
            self.flush_run(w, usize::from(socket), data, from, to);
            from = to;
        }
        self.queue.clear();
    }

    /// Sends `queue[from..to]` through one socket, waiting briefly for buffer room; drops what
    /// cannot go, never reorders.
    fn flush_run(&mut self, w: &Worker, socket: usize, data: &[u8], from: usize, to: usize) {
        let counters = w.metrics.worker(w.id);
        let sock = socket_of(w, socket);
        let mut off = from;
        while off < to {
            match sock.send_batch(&mut self.mm, data, &self.queue[off..to]) {
                Ok(0) => {
                    counters.drop_packet(DropReason::TxError);
                    off += 1;
                }
                Ok(n) => {
                    let bytes: usize = self.queue[off..off + n].iter().map(|t| t.len).sum();
                    Counters::add(&counters.tx_packets, n as u64);
                    Counters::add(&counters.tx_bytes, bytes as u64);
                    off += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The send buffer is full: give the kernel a moment, then drop the rest.
                    if !matches!(sock.wait_writable(SEND_WAIT_MS), Ok(true)) {
                        counters.drop_packets(DropReason::TxError, (to - off) as u64);
                        break;
                    }
                }
                Err(e) => {
                    // The first message failed (EMSGSIZE, ENETUNREACH, ...): drop it, go on.
                    self.log.error(&e);
                    counters.drop_packet(DropReason::TxError);
                    off += 1;
                }
            }
        }
    }

    /// Sends the `count` segments `core` cut from `packet`; counts what went and what did not.
    fn send_segments(
        &mut self,
        w: &Worker,
        core: &Core,
        socket: usize,
        dst: SocketAddr,
        packet: &[u8],
        count: usize,
    ) {
        let counters = w.metrics.worker(w.id);
        let sock = socket_of(w, socket);
        let segs = core.segments(count);
        let stride = core.segment_stride();
        let headers = core.segment_headers();
        let mut off = 0;
        let mut waited = false;
        while off < segs.len() {
            let r = sock.send_segments(
                &mut self.seg,
                dst,
                headers.get(off * stride..).unwrap_or_default(),
                stride,
                packet,
                &segs[off..],
            );
            match r {
                Ok(sent) if sent.segments > 0 => {
                    let bytes: usize = segs[off..off + sent.segments]
                        .iter()
                        .map(crate::wire::Segment::len)
                        .sum();
                    Counters::add(&counters.tx_packets, sent.segments as u64);
                    Counters::add(&counters.tx_bytes, bytes as u64);
                    Counters::add(&counters.tx_gso_sends, sent.gso_messages as u64);
                    off += sent.segments;
                }
                Ok(_) => {
                    counters.drop_packet(DropReason::TxError);
                    off += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !waited => {
                    waited = true;
                    let _ = sock.wait_writable(SEND_WAIT_MS);
                }
                Err(e) => {
                    self.log.error(&e);
                    counters.drop_packets(DropReason::TxError, (segs.len() - off) as u64);
                    break;
                }
            }
        }
    }
}

/// The socket that sends for source socket index `socket`: one of the VXLAN source pool, or
/// the worker's own socket without a pool.
fn socket_of(w: &Worker, socket: usize) -> &UdpSocket {
    w.tx_pool.get(socket).unwrap_or(&w.udp)
}

/// The TUN side: writes, counted.
pub(crate) struct TunWriter {
    log: RateLimitedLog,
}

impl TunWriter {
    pub(crate) fn new() -> Self {
        Self {
            log: RateLimitedLog::new("TUN write failed"),
        }
    }

    /// Carries out `ops` (made by `core` for the read in `slot`) in order.
    pub(crate) fn execute(&mut self, w: &Worker, core: &Core, ops: &[RxOp], slot: &[u8]) {
        for op in ops {
            self.execute_one(w, core, *op, slot);
        }
    }

    /// Carries out one write.
    pub(crate) fn execute_one(&mut self, w: &Worker, core: &Core, op: RxOp, slot: &[u8]) {
        let tun = &w.tun;
        let bytes = |start: usize, len: usize| slot.get(start..start + len).unwrap_or_default();
        match op {
            RxOp::Write { start, len } => self.count(w, tun.write(bytes(start, len)), len),
            RxOp::WriteVnet { start, len, hdr } => {
                self.count(w, tun.write_vnet(&hdr, bytes(start, len)), len);
            }
            RxOp::Merged { buf } => {
                let (hdr, packet) = core.merged(buf);
                self.count(w, tun.write_vnet(hdr, packet), packet.len());
            }
            RxOp::Segments {
                packet,
                first,
                count,
            } => {
                for i in first..first + count {
                    let (head, seg) = core.rx_segment(i);
                    let body = bytes(packet + seg.payload_start, seg.payload_len);
                    self.count(w, tun.write_parts(head, body), seg.len());
                }
            }
        }
    }

    /// Writes an ICMP error into TUN, counting it.
    pub(crate) fn write_icmp(&mut self, tun: &Tun, reply: &[u8], w: &Worker) {
        match tun.write(reply) {
            Ok(_) => Counters::add(&w.metrics.worker(w.id).tun_tx_icmp, 1),
            Err(e) => self.log.error(&e),
        }
    }

    /// Counts the outcome of a TUN write of a `len`-byte packet.
    fn count(&mut self, w: &Worker, result: io::Result<usize>, len: usize) {
        count_tun_write(w.metrics.worker(w.id), result.map(|_| len), &mut self.log);
    }
}

/// Counts the outcome of a TUN write: `Ok(bytes)` or its error.
pub(crate) fn count_tun_write(
    counters: &Counters,
    result: io::Result<usize>,
    log: &mut RateLimitedLog,
) {
    match result {
        Ok(len) => {
            Counters::add(&counters.tun_tx_packets, 1);
            Counters::add(&counters.tun_tx_bytes, len as u64);
        }
        Err(e) => {
            if e.raw_os_error() != Some(libc::ECANCELED) {
                log.error(&e);
            }
            counters.drop_packet(DropReason::TunWriteError);
        }
    }
}
