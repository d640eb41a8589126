//! Executing the datapath core's plans with direct system calls: UDP sends through the socket
//! layer's `sendmmsg` batches, TUN writes with `write`/`writev`. Both loops use these, so a
//! plan is carried out the same way whichever loop produced it, and in its order: datagrams
//! are queued and sent in batches, and whatever is queued goes out before the segments of a
//! super-packet (one socket sends a flow's datagrams in the order it was handed them).

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use super::{BATCH, RateLimitedLog, Worker};
use crate::datapath::{Core, TunWrite, TxPlan};
use crate::metrics::{Counters, DropReason};
use crate::table::{PeerStats, Snapshot};
use crate::udp::{Gathered, MmsgScratch, NO_PEER, SegmentScratch, Transmit, UdpSocket};

/// How long a send waits for room in a full socket buffer before the rest of its batch is
/// dropped.
const SEND_WAIT_MS: i32 = 10;

/// The UDP side: a queue of datagrams and the scratch space to send them.
pub(crate) struct Sender {
    queue: Vec<Transmit>,
    /// The table snapshot the queued datagrams' peers (`Transmit::peer`) index: their
    /// counters count what was sent, when it is known.
    snap: Option<Arc<Snapshot>>,
    mm: MmsgScratch,
    seg: SegmentScratch,
    log: RateLimitedLog,
    icmp_log: RateLimitedLog,
}

/// Counts the write of an ICMP error into TUN: `tun_tx_icmp` when it went, else logged under
/// `log`'s limit and dropped as `tun_write_error`, as a data packet whose write fails.
fn count_icmp_write(counters: &Counters, log: &mut RateLimitedLog, result: io::Result<usize>) {
    match result {
        Ok(_) => Counters::add(&counters.tun_tx_icmp, 1),
        Err(e) => {
            log.error(&e);
            counters.drop_packet(DropReason::TunWriteError);
        }
    }
}

/// Where a TUN read lies: its slot in the loop's buffer, and the bytes the read returned.
#[derive(Debug, Clone)]
pub(crate) struct TunRead {
    /// The slot, as a range of the buffer.
    pub(crate) slot: Range<usize>,
    /// Bytes read into it (at [`Core::tun_read_offset`]).
    pub(crate) n: usize,
}

impl Sender {
    pub(crate) fn new() -> Self {
        Self {
            queue: Vec::with_capacity(BATCH),
            snap: None,
            mm: MmsgScratch::new(BATCH),
            seg: SegmentScratch::new(crate::offload::MAX_SEGMENTS),
            log: RateLimitedLog::new("UDP send failed"),
            icmp_log: RateLimitedLog::new("ICMP write to TUN failed"),
        }
    }

    /// Returns true when datagrams are queued.
    pub(crate) fn pending(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Hands the TUN `read` in `data` to `core` and carries out its plan: a datagram is
    /// queued (sent by [`Self::flush`] with `data`, which must still hold it, or right away
    /// when the queue is full); segments go right away, after the queue; an ICMP error is
    /// written into TUN. The peer's counters (`peer_tx_*`) count what the socket took.
    pub(crate) fn transmit(
        &mut self,
        w: &Worker,
        core: &mut Core,
        snap: &Arc<Snapshot>,
        now: Instant,
        data: &mut [u8],
        read: TunRead,
    ) {
        let base = read.slot.start;
        let Some(slot) = data.get_mut(read.slot) else {
            return;
        };
        match core.tun_read(snap, slot, read.n, now) {
            TxPlan::Datagram {
                peer,
                socket,
                dst,
                start,
                len,
            } => {
                // One queue, one snapshot: the peers' indices are that snapshot's.
                if !self.snap.as_ref().is_some_and(|s| Arc::ptr_eq(s, snap)) {
                    self.flush(w, data);
                    self.snap = Some(Arc::clone(snap));
                }
                self.queue.push(Transmit {
                    dst,
                    start: base + start,
                    len,
                    socket: socket_id(w, socket, dst),
                    peer,
                });
                if self.queue.len() >= BATCH {
                    self.flush(w, data);
                }
            }
            TxPlan::Segments {
                peer,
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
                self.send_segments(
                    w,
                    core,
                    usize::from(socket_id(w, socket, dst)),
                    (dst, snap.peer_stats(peer)),
                    packet,
                    count,
                );
            }
            TxPlan::Icmp { len } => count_icmp_write(
                w.metrics.worker(w.id),
                &mut self.icmp_log,
                w.tun.write(core.icmp_reply(len)),
            ),
            TxPlan::Dropped => {}
        }
    }

    /// Sends the answer to a peer probe that `core` planned for its last read, if any, from
    /// the worker's own socket, and counts it as `probe_tx`. Not waited for nor retried: the
    /// prober tries again.
    pub(crate) fn answer_probe(&mut self, w: &Worker, core: &Core) {
        let Some((dst, bytes)) = core.probe_reply() else {
            return;
        };
        let t = [Transmit {
            dst,
            start: 0,
            len: bytes.len(),
            socket: 0,
            peer: NO_PEER,
        }];
        let sock = match &w.udp6 {
            Some(s) if dst.is_ipv6() => s,
            _ => &w.udp,
        };
        if matches!(sock.send_batch(&mut self.mm, bytes, &t), Ok(s) if s.segments == 1) {
            Counters::add(&w.metrics.worker(w.id).probe_tx, 1);
        }
    }

    /// Sends the queued datagrams (ranges of `data`): one `sendmmsg` per source socket in use,
    /// in queue order within each (in `vxlan` mode a flow always uses the same socket).
    pub(crate) fn flush(&mut self, w: &Worker, data: &[u8]) {
        if self.queue.is_empty() {
            return;
        }
        if w.tx_pool.len() > 1 || w.udp6.is_some() {
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
        self.snap = None;
    }

    /// Sends `queue[from..to]` through one socket, waiting briefly for buffer room; drops what
    /// cannot go, never reorders.
    fn flush_run(&mut self, w: &Worker, socket: usize, data: &[u8], from: usize, to: usize) {
        let counters = w.metrics.worker(w.id);
        let sock = socket_of(w, socket);
        let queue = &self.queue[from..to];
        let (mm, log, snap) = (&mut self.mm, &mut self.log, self.snap.as_deref());
        send_in_order(
            queue.len(),
            |at| {
                let sent = sock.send_batch(mm, data, &queue[at..])?;
                Counters::add(&counters.tx_gso_sends, sent.gso_messages as u64);
                Ok(sent.segments)
            },
            || matches!(sock.wait_writable(SEND_WAIT_MS), Ok(true)),
            Stalls::WaitEachTime,
            |report| {
                if let (Report::Sent { at, n }, Some(snap)) = (&report, snap) {
                    count_peers(w.id, snap, &queue[*at..at + n]);
                }
                count_sends(counters, log, report, |at, n| {
                    queue[at..at + n].iter().map(|t| t.len).sum()
                });
            },
        );
    }

    /// Sends the `count` segments `core` cut from `packet` to `dst`; counts what went (also
    /// in the peer's counters `stats`) and what did not.
    fn send_segments(
        &mut self,
        w: &Worker,
        core: &Core,
        socket: usize,
        (dst, stats): (SocketAddr, Option<&PeerStats>),
        packet: &[u8],
        count: usize,
    ) {
        let counters = w.metrics.worker(w.id);
        let sock = socket_of(w, socket);
        let segs = core.segments(count);
        let stride = core.segment_stride();
        let headers = core.segment_headers();
        let (scratch, log) = (&mut self.seg, &mut self.log);
        send_in_order(
            segs.len(),
            |at| {
                let batch = Gathered {
                    dst,
                    headers: headers.get(at * stride..).unwrap_or_default(),
                    stride,
                    packet,
                    segs: &segs[at..],
                };
                let sent = sock.send_segments(scratch, &batch)?;
                Counters::add(&counters.tx_gso_sends, sent.gso_messages as u64);
                Ok(sent.segments)
            },
            || {
                let _ = sock.wait_writable(SEND_WAIT_MS);
                true
            },
            Stalls::WaitOnce,
            |report| {
                let len = |at: usize, n: usize| -> usize {
                    segs[at..at + n].iter().map(crate::wire::Segment::len).sum()
                };
                if let (Report::Sent { at, n }, Some(stats)) = (&report, stats) {
                    stats.add_tx(w.id, *n as u64, len(*at, *n) as u64);
                }
                count_sends(counters, log, report, len);
            },
        );
    }
}

/// Counts `sent` (datagrams the socket took) in their peers' counters: one update per run of
/// one peer.
fn count_peers(worker: usize, snap: &Snapshot, sent: &[Transmit]) {
    let mut rest = sent;
    while let Some(first) = rest.first() {
        let run = rest.iter().take_while(|t| t.peer == first.peer).count();
        if let Some(stats) = snap.peer_stats(first.peer) {
            let bytes: usize = rest[..run].iter().map(|t| t.len).sum();
            stats.add_tx(worker, run as u64, bytes as u64);
        }
        rest = &rest[run..];
    }
}

/// Counts what [`send_in_order`] reports: datagrams sent (`bytes(at, n)` of them) or
/// dropped as `tx_error`, logging the error that dropped them.
fn count_sends(
    counters: &Counters,
    log: &mut RateLimitedLog,
    report: Report<'_>,
    bytes: impl FnOnce(usize, usize) -> usize,
) {
    match report {
        Report::Sent { at, n } => {
            Counters::add(&counters.tx_packets, n as u64);
            Counters::add(&counters.tx_bytes, bytes(at, n) as u64);
        }
        Report::Dropped { n, error } => {
            if let Some(e) = error {
                log.error(e);
            }
            counters.drop_packets(DropReason::TxError, n as u64);
        }
    }
}

/// How [`send_in_order`] treats a full socket buffer (`WouldBlock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stalls {
    /// Wait for room each time; when the wait runs out, drop the rest. After any other error,
    /// drop the datagram that failed and go on (datagrams to one peer are independent).
    WaitEachTime,
    /// Wait for room once; a second stall, or any other error, drops the rest (the segments of
    /// one super-packet).
    WaitOnce,
}

/// What [`send_in_order`] reports.
#[derive(Debug)]
enum Report<'a> {
    /// Datagrams `at..at + n` went.
    Sent { at: usize, n: usize },
    /// The next `n` datagrams were dropped (with the error that made it so, if any).
    Dropped {
        n: usize,
        error: Option<&'a io::Error>,
    },
}

/// Hands `count` datagrams to `send` strictly front to back: `send(at)` sends from datagram
/// `at` on and returns how many went, from the front (`Ok(0)` drops the one at `at`). A
/// `WouldBlock` calls `wait` (true: there is room again) and tries the same datagram again, as
/// `stalls` allows. No datagram is ever handed over after one behind it, and none twice: a
/// flow keeps its order whatever the socket answers, and what cannot go is dropped, counted,
/// never sent late.
fn send_in_order(
    count: usize,
    mut send: impl FnMut(usize) -> io::Result<usize>,
    mut wait: impl FnMut() -> bool,
    stalls: Stalls,
    mut report: impl FnMut(Report<'_>),
) {
    let mut at = 0;
    let mut waited = false;
    while at < count {
        match send(at) {
            Ok(0) => {
                report(Report::Dropped { n: 1, error: None });
                at += 1;
            }
            Ok(n) => {
                let n = n.min(count - at);
                report(Report::Sent { at, n });
                at += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let again = match stalls {
                    Stalls::WaitEachTime => wait(),
                    Stalls::WaitOnce => !waited && wait(),
                };
                waited = true;
                if !again {
                    report(Report::Dropped {
                        n: count - at,
                        error: None,
                    });
                    return;
                }
            }
            Err(e) => {
                let n = match stalls {
                    Stalls::WaitEachTime => 1,
                    Stalls::WaitOnce => count - at,
                };
                report(Report::Dropped { n, error: Some(&e) });
                at += n;
            }
        }
    }
}

/// Marks a socket id as one of the IPv6 underlay's sockets.
const IPV6_SOCKET: u16 = 0x8000;

/// The id of the socket that sends to `dst` for the core's source socket index `socket`: the
/// index, with [`IPV6_SOCKET`] set when `dst` is reached over the IPv6 underlay of a node that
/// has one beside its IPv4 one.
fn socket_id(w: &Worker, socket: usize, dst: SocketAddr) -> u16 {
    let index = u16::try_from(socket).unwrap_or(0) & !IPV6_SOCKET;
    if dst.is_ipv6() && w.udp6.is_some() {
        index | IPV6_SOCKET
    } else {
        index
    }
}

/// The socket that sends for socket id `id` ([`socket_id`]): one of a VXLAN source pool, or
/// the worker's own socket of that family without a pool.
fn socket_of(w: &Worker, id: usize) -> &UdpSocket {
    let index = id & usize::from(!IPV6_SOCKET);
    match &w.udp6 {
        Some(udp6) if id & usize::from(IPV6_SOCKET) != 0 => w.tx_pool6.get(index).unwrap_or(udp6),
        _ => w.tx_pool.get(index).unwrap_or(&w.udp),
    }
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

    /// Carries out the writes `core` planned for the read in `slot` (the buffer it was passed),
    /// in order.
    pub(crate) fn execute(&mut self, w: &Worker, core: &Core, slot: &[u8]) {
        core.rx_writes(slot, |write| self.write(w, &write));
    }

    /// Writes one planned packet now, and counts it.
    pub(crate) fn write(&mut self, w: &Worker, write: &TunWrite<'_>) {
        let result = match write.hdr {
            Some(hdr) => w.tun.write_vnet(hdr, write.head),
            None => w.tun.write_parts(write.head, write.body),
        };
        self.count(w, result.map(|_| write.len()));
    }

    /// Counts the outcome of a TUN write, made here or elsewhere (a ring write): `Ok(packet
    /// bytes)` or its error, logged under this writer's limit.
    pub(crate) fn count(&mut self, w: &Worker, result: io::Result<usize>) {
        let counters = w.metrics.worker(w.id);
        match result {
            Ok(len) => {
                Counters::add(&counters.tun_tx_packets, 1);
                Counters::add(&counters.tun_tx_bytes, len as u64);
            }
            Err(e) => {
                if e.raw_os_error() != Some(libc::ECANCELED) {
                    self.log.error(&e);
                }
                counters.drop_packet(DropReason::TunWriteError);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A socket that answers from a script: `Some(k)` takes up to `k` datagrams, `None` says
    /// its buffer is full, `Some(0)` refuses the first; after the script it takes everything.
    /// Returns the datagrams in the order the socket took them, and the drops reported.
    fn run(
        count: usize,
        script: &[Option<usize>],
        room: &[bool],
        stalls: Stalls,
    ) -> (Vec<usize>, usize) {
        let mut taken = Vec::new();
        let mut answers = script.iter();
        let mut rooms = room.iter();
        let mut dropped = 0;
        let mut sent = 0;
        send_in_order(
            count,
            |at| match answers.next() {
                Some(Some(k)) => {
                    let n = (*k).min(count - at);
                    taken.extend(at..at + n);
                    Ok(n)
                }
                Some(None) => Err(io::Error::from(io::ErrorKind::WouldBlock)),
                None => {
                    taken.extend(at..count);
                    Ok(count - at)
                }
            },
            || rooms.next().copied().unwrap_or(true),
            stalls,
            |r| match r {
                Report::Sent { n, .. } => sent += n,
                Report::Dropped { n, .. } => dropped += n,
            },
        );
        assert_eq!(sent, taken.len());
        (taken, dropped)
    }

    #[test]
    fn a_failed_icmp_write_is_a_tun_write_error() {
        let metrics = crate::metrics::Metrics::new(1);
        let mut log = RateLimitedLog::new("ICMP write to TUN failed");
        count_icmp_write(metrics.worker(0), &mut log, Ok(56));
        count_icmp_write(
            metrics.worker(0),
            &mut log,
            Err(io::Error::from_raw_os_error(libc::EIO)),
        );
        let totals = metrics.totals();
        assert_eq!(totals.tun_tx_icmp, 1);
        assert_eq!(totals.dropped(DropReason::TunWriteError), 1);
    }

    #[test]
    fn a_flow_whose_first_send_stalls_keeps_its_order() {
        // The socket buffer is full at the first datagram, then has room.
        let (taken, dropped) = run(
            5,
            &[None, Some(2), None, Some(9)],
            &[true, true],
            Stalls::WaitEachTime,
        );
        assert_eq!(taken, vec![0, 1, 2, 3, 4]);
        assert_eq!(dropped, 0);
        // It stays full: the rest is dropped, nothing is sent late.
        let (taken, dropped) = run(5, &[Some(1), None], &[false], Stalls::WaitEachTime);
        assert_eq!((taken, dropped), (vec![0], 4));
        // Segments wait once, then give up.
        let (taken, dropped) = run(4, &[None, None, Some(4)], &[true, true], Stalls::WaitOnce);
        assert_eq!((taken, dropped), (vec![], 4));
    }

    proptest! {
        #[test]
        fn datagrams_go_front_to_back_once(
            count in 0usize..40,
            script in proptest::collection::vec(proptest::option::of(0usize..5), 0..30),
            room in proptest::collection::vec(any::<bool>(), 0..30),
            once in any::<bool>(),
        ) {
            let stalls = if once { Stalls::WaitOnce } else { Stalls::WaitEachTime };
            let (taken, dropped) = run(count, &script, &room, stalls);
            prop_assert!(taken.windows(2).all(|w| w[0] < w[1]), "in order, once: {:?}", taken);
            prop_assert_eq!(taken.len() + dropped, count, "every datagram sent or dropped");
        }
    }
}
