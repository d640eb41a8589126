//! UDP → TUN: one socket read in (one datagram, or several with `UDP_GRO`), the TUN writes
//! out.

use std::net::SocketAddr;

use super::{Core, RX_HEADER_STRIDE, forward};
use crate::metrics::{Counters, DropReason};
use crate::offload::coalesce::{Emit, super_packet_header};
use crate::offload::{VnetHdr, datagrams_in, gro_stride};
use crate::table::Snapshot;
use crate::trace::Verdict as TraceVerdict;
use crate::udp::Received;
use crate::wire::ip::complete_partial_checksum;
use crate::wire::{Encap, Segment, WireError};

/// One write to the TUN device, in the order they must happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxOp {
    /// Write `slot[start..start + len]` as it is (behind a plain virtio-net header when the
    /// device takes them).
    Write {
        /// Offset of the inner packet in the slot.
        start: usize,
        /// Its length.
        len: usize,
    },
    /// Write `slot[start..start + len]` behind the virtio-net header `hdr`: a received
    /// super-packet the kernel cuts into segments itself.
    WriteVnet {
        /// Offset of the inner packet in the slot.
        start: usize,
        /// Its length.
        len: usize,
        /// Its virtio-net header.
        hdr: VnetHdr,
    },
    /// Write the merged packet in buffer `buf` ([`Core::merged`]) behind its header.
    Merged {
        /// The coalescer's buffer.
        buf: usize,
    },
    /// Write segments `first..first + count` ([`Core::rx_segment`]) one by one: each is its
    /// header slot followed by its payload range of the inner packet at `slot[packet..]`.
    Segments {
        /// Offset of the inner packet the segments were cut from.
        packet: usize,
        /// The first segment.
        first: usize,
        /// How many.
        count: usize,
    },
}

/// One TUN write resolved to its bytes ([`Core::rx_writes`]): the packet is `head` followed
/// by `body` (a segment gathered from its header slot and its payload; `body` is empty for a
/// whole packet).
#[derive(Debug, Clone, Copy)]
pub struct TunWrite<'a> {
    /// The virtio-net header of a super-packet the kernel cuts (merged, or a kernel peer's);
    /// `None` for a plain packet (behind a plain header when the device takes them).
    pub hdr: Option<&'a VnetHdr>,
    /// The packet, or its headers.
    pub head: &'a [u8],
    /// The rest of the packet.
    pub body: &'a [u8],
}

impl TunWrite<'_> {
    /// Returns the packet's length.
    pub const fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    /// Returns true for an empty packet.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Core {
    /// Decides what to do with one socket read `r` whose bytes are `slot[..r.len]`: dropped
    /// whole when it did not fit (`oversize`) or has no sender address, else cut into
    /// datagrams ([`gro_stride`]), each checked by [`forward::inbound`] and counted on its
    /// own, and the inner packets planned for TUN (merged when the device takes virtio-net
    /// headers). Inner packets are left in place in `slot` (their partial checksums
    /// completed). Plans the writes, in order ([`Core::rx_ops`]); the caller executes them
    /// before calling the core again, and calls [`Core::rx_flush`] at the end of its batch.
    pub fn udp_read(&mut self, snap: &Snapshot, slot: &mut [u8], r: &Received) {
        self.ops.clear();
        self.coalescer.release();
        self.clear_probe_reply();
        // MSG_TRUNC makes the length the datagram's real one: anything longer than the largest
        // accepted payload, or than the slot, was not received whole and is never delivered.
        if r.truncated || r.len > self.rx_payload() || r.len > slot.len() {
            self.drop_read(r, slot, DropReason::Oversize);
            return;
        }
        let Some(from) = r.from else {
            self.drop_read(r, slot, DropReason::UnknownSender);
            return;
        };
        let len = r.len;
        let encap = self.cfg.fwd.encap;
        let vxlan = matches!(encap, Encap::Vxlan(_));
        let stride = gro_stride(&slot[..len], r.segment, encap.header_len(), vxlan).max(1);
        // Every inner TCP or UDP checksum is verified before a packet merges, whether the datagram
        // came alone or in a `UDP_GRO` read: the outer checksum Linux verified before
        // coalescing was computed by the peer over whatever inner bytes it sent, so it
        // vouches for the underlay hop, not for the segment.
        if stride < len {
            Counters::add(&self.counters().rx_gro_reads, 1);
        }
        let mut acc = ReadCounts::default();
        let mut at = 0;
        // An empty datagram is one (malformed) datagram too.
        loop {
            let end = len.min(at + stride);
            self.datagram(snap, from, slot, at, end - at, &mut acc);
            at = end;
            if at >= len {
                break;
            }
        }
        let counters = self.metrics.worker(self.cfg.worker);
        Counters::add(&counters.rx_packets, acc.packets);
        Counters::add(&counters.rx_bytes, acc.bytes);
        acc.flush_peer(snap, self.cfg.worker);
        self.count_merges();
    }

    /// Ends a batch: plans the writes of every merged packet still open ([`Core::rx_ops`]).
    pub fn rx_flush(&mut self) {
        self.ops.clear();
        self.coalescer.release();
        if self.coalescer.pending() {
            let ops = &mut self.ops;
            self.coalescer.flush(&mut |e| ops.push(op_of(e, 0, 0)));
        }
        self.count_merges();
    }

    /// Returns the writes planned by the last [`Core::udp_read`] or [`Core::rx_flush`].
    pub fn rx_ops(&self) -> &[RxOp] {
        &self.ops
    }

    /// Resolves the planned writes ([`Core::rx_ops`]) to their bytes and hands them to `f`, in
    /// order: packets in `slot` (the buffer the read was passed in, left as
    /// [`Core::udp_read`] made it) and in the core's own buffers.
    pub fn rx_writes<'a>(&'a self, slot: &'a [u8], mut f: impl FnMut(TunWrite<'a>)) {
        let bytes = |start: usize, len: usize| slot.get(start..start + len).unwrap_or_default();
        for op in &self.ops {
            match op {
                RxOp::Write { start, len } => f(TunWrite {
                    hdr: None,
                    head: bytes(*start, *len),
                    body: &[],
                }),
                RxOp::WriteVnet { start, len, hdr } => f(TunWrite {
                    hdr: Some(hdr),
                    head: bytes(*start, *len),
                    body: &[],
                }),
                RxOp::Merged { buf } => {
                    let (hdr, packet) = self.merged(*buf);
                    f(TunWrite {
                        hdr: Some(hdr),
                        head: packet,
                        body: &[],
                    });
                }
                RxOp::Segments {
                    packet,
                    first,
                    count,
                } => {
                    for i in *first..first + count {
                        let (head, seg) = self.rx_segment(i);
                        f(TunWrite {
                            hdr: None,
                            head,
                            body: bytes(packet + seg.payload_start, seg.payload_len),
                        });
                    }
                }
            }
        }
    }

    /// Returns the merged packet of an [`RxOp::Merged`] and its virtio-net header.
    pub fn merged(&self, buf: usize) -> (&VnetHdr, &[u8]) {
        self.coalescer.buffer(buf)
    }

    /// Returns segment `i` of an [`RxOp::Segments`]: its header bytes and where its payload
    /// lies in the inner packet.
    pub fn rx_segment(&self, i: usize) -> (&[u8], Segment) {
        let seg = self.rx_segs.get(i).copied().unwrap_or_default();
        let at = i * RX_HEADER_STRIDE;
        let header = self
            .rx_headers
            .get(at..at + seg.header_len)
            .unwrap_or_default();
        (header, seg)
    }

    /// Checks and plans the datagram `slot[at..at + len]`, and records the verdict for a trace
    /// or, for a drop, the recent drops.
    fn datagram(
        &mut self,
        snap: &Snapshot,
        from: SocketAddr,
        slot: &mut [u8],
        at: usize,
        len: usize,
        acc: &mut ReadCounts,
    ) {
        let (dropped, ops, probes) = (self.tally.rx_dropped, self.ops.len(), self.tally.probes);
        self.check_datagram(snap, from, slot, at, len, acc);
        // An answered peer probe is no packet of the overlay: counted, never traced.
        if self.tally.probes != probes {
            return;
        }
        if self.tap.armed() || self.tally.rx_dropped != dropped {
            self.trace_datagram(from, &slot[at..at + len], dropped, ops);
        }
    }

    /// Records the verdict on `datagram`, given the drop tally and plan length before it.
    #[cold]
    fn trace_datagram(&mut self, from: SocketAddr, datagram: &[u8], dropped: u64, ops: usize) {
        let verdict = if self.tally.rx_dropped != dropped {
            TraceVerdict::Drop(self.tap.take_drop())
        } else {
            let (merged, segments) = match self.ops.get(ops..).and_then(<[RxOp]>::last) {
                Some(RxOp::Write { .. } | RxOp::WriteVnet { .. }) => (false, 1),
                Some(RxOp::Segments { count, .. }) => (false, *count),
                _ => (true, 1),
            };
            TraceVerdict::Deliver {
                merged,
                segments: u32::try_from(segments).unwrap_or(u32::MAX),
            }
        };
        let inner = datagram
            .get(self.cfg.fwd.encap.header_len()..)
            .unwrap_or_default();
        self.tap.datagram(inner, Some(from), verdict);
    }

    /// Checks and plans the datagram `slot[at..at + len]`.
    fn check_datagram(
        &mut self,
        snap: &Snapshot,
        from: SocketAddr,
        slot: &mut [u8],
        at: usize,
        len: usize,
        acc: &mut ReadCounts,
    ) {
        acc.packets += 1;
        acc.bytes += len as u64;
        self.tally.datagrams += 1;
        let max = self.cfg.fwd.max_inner_len;
        // `udp` peers never send more than their MTU; only VXLAN super-frames from a kernel
        // peer on the same host are longer, and only after the checks below.
        if matches!(self.cfg.fwd.encap, Encap::Flannel) && len > max {
            return self.drop_rx(DropReason::Oversize);
        }
        // One test tells a peer probe apart: a first nibble (udp) or an inner EtherType
        // (vxlan) no deliverable packet has.
        let d = &slot[at..at + len];
        let probe = match self.cfg.fwd.encap {
            Encap::Flannel => crate::doctor::probe::is_flannel_probe(d),
            Encap::Vxlan(_) => crate::doctor::probe::is_vxlan_probe(d),
        };
        if probe && self.probe(snap, from, d) {
            return;
        }
        let counters = self.metrics.worker(self.cfg.worker);
        // The peer's datagram is counted where it is delivered, not here: the checks below
        // may still drop it.
        let (start, inner_len, peer) =
            match forward::inbound(snap, &self.cfg.fwd, from, &slot[at..at + len]) {
                forward::Inbound::Deliver {
                    start,
                    len: inner,
                    peer,
                } => (at + start, inner, peer),
                forward::Inbound::Drop(reason) => return self.drop_rx(reason),
            };
        let inner = &mut slot[start..start + inner_len];
        if inner_len <= max {
            if complete_partial_checksum(inner) {
                Counters::add(&counters.tun_tx_csum_completed, 1);
            }
            if self.cfg.vnet {
                let ops = &mut self.ops;
                let out = &mut |e| ops.push(op_of(e, start, inner_len));
                self.coalescer.push(inner, out);
            } else {
                self.ops.push(RxOp::Write {
                    start,
                    len: inner_len,
                });
            }
            self.tally.delivered += 1;
            acc.peer(snap, self.cfg.worker, peer, len);
            return;
        }
        // A super-packet from a kernel peer on this host: after anything of its flow that is
        // waiting, whole when the device takes virtio-net headers, else cut into segments.
        if self.cfg.vnet && self.coalescer.pending() {
            let ops = &mut self.ops;
            self.coalescer.flush(&mut |e| ops.push(op_of(e, 0, 0)));
        }
        if let Some(hdr) = super_packet_header(inner, max).filter(|_| self.cfg.vnet) {
            Counters::add(&counters.tun_tx_merged, 1);
            self.ops.push(RxOp::WriteVnet {
                start,
                len: inner_len,
                hdr,
            });
            self.tally.delivered += 1;
            acc.peer(snap, self.cfg.worker, peer, len);
            return;
        }
        let first = acc.rx_segs_used;
        let free = self.rx_segs.get_mut(first..).unwrap_or_default();
        let headers = self
            .rx_headers
            .get_mut(first * RX_HEADER_STRIDE..)
            .unwrap_or_default();
        match crate::wire::tcp::cut(inner, max, headers, RX_HEADER_STRIDE, free) {
            Ok(count) => {
                Counters::add(&counters.tun_tx_segmented, 1);
                acc.rx_segs_used += count;
                self.ops.push(RxOp::Segments {
                    packet: start,
                    first,
                    count,
                });
                self.tally.delivered += 1;
                acc.peer(snap, self.cfg.worker, peer, len);
            }
            Err(WireError::BadChecksum) => self.drop_rx(DropReason::RxBadTcpChecksum),
            Err(_) => self.drop_rx(DropReason::RxTooBig),
        }
    }

    fn drop_rx(&mut self, reason: DropReason) {
        self.tap.dropped(reason);
        self.counters().drop_packet(reason);
        self.tally.rx_dropped += 1;
    }

    /// Counts a read of `len` bytes dropped whole with `reason`, once per datagram it holds: a
    /// `UDP_GRO` read (segment size `segment`, 0 for none) is several datagrams.
    fn drop_read(&mut self, r: &Received, slot: &[u8], reason: DropReason) {
        let (len, segment) = (r.len, r.segment);
        let held = slot.get(self.cfg.fwd.encap.header_len()..len.min(slot.len()));
        self.tap
            .datagram(held.unwrap_or_default(), r.from, TraceVerdict::Drop(reason));
        let n = datagrams_in(len, segment) as u64;
        let counters = self.counters();
        Counters::add(&counters.rx_packets, n);
        Counters::add(&counters.rx_bytes, len as u64);
        counters.drop_packets(reason, n);
        self.tally.datagrams += n;
        self.tally.rx_dropped += n;
    }

    fn count_merges(&mut self) {
        let written = self.coalescer.take_written();
        if written.merged > 0 {
            let counters = self.counters();
            Counters::add(&counters.tun_tx_merged, written.merged);
            Counters::add(&counters.tun_tx_merged_segments, written.merged_segments);
        }
    }
}

/// What one socket read adds to the counters, added once per read rather than once per
/// datagram of a `UDP_GRO` read.
#[derive(Debug, Default)]
struct ReadCounts {
    packets: u64,
    bytes: u64,
    /// The peer whose datagrams are being counted: index, datagrams, bytes.
    peer: Option<(u32, u64, u64)>,
    /// Segments of [`Core::rx_segment`] used so far by this read.
    rx_segs_used: usize,
}

impl ReadCounts {
    /// Counts a datagram of `len` bytes from `peer` that passed every check.
    fn peer(&mut self, snap: &Snapshot, worker: usize, peer: u32, len: usize) {
        match &mut self.peer {
            Some((p, n, b)) if *p == peer => {
                *n += 1;
                *b += len as u64;
            }
            _ => {
                self.flush_peer(snap, worker);
                self.peer = Some((peer, 1, len as u64));
            }
        }
    }

    fn flush_peer(&mut self, snap: &Snapshot, worker: usize) {
        if let Some((peer, n, b)) = self.peer.take()
            && let Some(stats) = snap.peer_stats(peer)
        {
            stats.add_rx(worker, n, b);
        }
    }
}

/// The write for what the coalescer hands out; `start`/`len` locate the packet just pushed.
const fn op_of(e: Emit, start: usize, len: usize) -> RxOp {
    match e {
        Emit::Input => RxOp::Write { start, len },
        Emit::Buffer(buf) => RxOp::Merged { buf },
    }
}
