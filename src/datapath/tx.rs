//! TUN → UDP: one TUN read in, one transmit plan out.

use std::net::SocketAddr;
use std::time::Instant;

use super::icmp::Reply;
use super::{Core, HEADROOM, forward};
use crate::metrics::{Counters, DropReason};
use crate::offload::split::{complete_checksum, split};
use crate::offload::vnet::Gso;
use crate::offload::{HEADER_STRIDE, VnetHdr};
use crate::table::Snapshot;
use crate::trace::Verdict as TraceVerdict;
use crate::wire::{Segment, WireError};

/// What to emit for one TUN read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxPlan {
    /// Send `slot[start..start + len]` as one datagram to `dst` from source socket `socket`.
    Datagram {
        /// The peer's index in the table snapshot the plan was made with (for its counters,
        /// which count the datagram once it is sent).
        peer: u32,
        /// Which source socket (0 without a pool).
        socket: usize,
        /// The peer's endpoint.
        dst: SocketAddr,
        /// Offset of the encapsulated packet in the slot.
        start: usize,
        /// Its length.
        len: usize,
    },
    /// Send the `count` segments of a super-packet to `dst`: segment `i` is header slot `i` of
    /// [`Core::segment_headers`] followed by its payload range of
    /// `slot[packet..packet + packet_len]`, as [`Core::segments`] describes. Runs of equal
    /// segments may go as one `UDP_SEGMENT` send.
    Segments {
        /// The peer's index in the table snapshot the plan was made with (for its counters,
        /// which count the segments once they are sent).
        peer: u32,
        /// Which source socket (0 without a pool).
        socket: usize,
        /// The peer's endpoint.
        dst: SocketAddr,
        /// Offset of the super-packet in the slot.
        packet: usize,
        /// Its length.
        packet_len: usize,
        /// How many segments.
        count: usize,
    },
    /// The packet was dropped (and counted); write the ICMP error [`Core::icmp_reply`] holds
    /// into TUN.
    Icmp {
        /// Its length.
        len: usize,
    },
    /// The packet was dropped and counted; nothing to emit.
    Dropped,
}

impl Core {
    /// Decides what to do with one TUN read of `n` bytes, placed in `slot` at
    /// [`Core::tun_read_offset`] (so the packet itself starts at [`HEADROOM`]). The
    /// encapsulation header is written into the headroom in place. `now` is the batch's time,
    /// for the ICMP rate limit.
    pub fn tun_read(&mut self, snap: &Snapshot, slot: &mut [u8], n: usize, now: Instant) -> TxPlan {
        let plan = self.plan_tun_read(snap, slot, n, now);
        if self.tap.armed() || matches!(plan, TxPlan::Dropped | TxPlan::Icmp { .. }) {
            self.trace_tun_read(snap, slot, n, plan);
        }
        plan
    }

    /// Records `plan` for a trace or, for a drop, the recent drops.
    #[cold]
    fn trace_tun_read(&mut self, snap: &Snapshot, slot: &[u8], n: usize, plan: TxPlan) {
        let end = (HEADROOM + n.saturating_sub(self.vnet_len())).min(slot.len());
        let packet = slot.get(HEADROOM..end).unwrap_or_default();
        let (outer, verdict) = match plan {
            TxPlan::Datagram { dst, .. } => (
                Some(dst),
                TraceVerdict::Send {
                    subnet: None,
                    segments: 1,
                },
            ),
            TxPlan::Segments { dst, count, .. } => (
                Some(dst),
                TraceVerdict::Send {
                    subnet: None,
                    segments: u32::try_from(count).unwrap_or(u32::MAX),
                },
            ),
            TxPlan::Icmp { .. } => (None, TraceVerdict::Icmp(self.tap.take_drop())),
            TxPlan::Dropped => (None, TraceVerdict::Drop(self.tap.take_drop())),
        };
        self.tap.tun_read(snap, packet, outer, verdict);
    }

    /// [`Core::tun_read`] without the trace.
    fn plan_tun_read(
        &mut self,
        snap: &Snapshot,
        slot: &mut [u8],
        n: usize,
        now: Instant,
    ) -> TxPlan {
        let vnet = self.vnet_len();
        let len = n.saturating_sub(vnet);
        let counters = self.metrics.worker(self.cfg.worker);
        Counters::add(&counters.tun_rx_packets, 1);
        Counters::add(&counters.tun_rx_bytes, len as u64);
        self.tally.tun_reads += 1;
        let hdr = if self.cfg.vnet {
            let parsed = slot
                .get(HEADROOM - vnet..HEADROOM)
                .ok_or(WireError::Truncated)
                .and_then(VnetHdr::parse);
            match parsed {
                Ok(hdr) if n >= vnet => hdr,
                _ => return self.drop_tun(DropReason::TunMalformed(WireError::Truncated)),
            }
        } else {
            VnetHdr::NONE
        };
        if slot.len() < HEADROOM + len {
            return self.drop_tun(DropReason::TunMalformed(WireError::Truncated));
        }
        match hdr.gso() {
            Err(e) => self.drop_tun(DropReason::TunMalformed(e)),
            Ok(Gso::None) => {
                if let Err(reason) = complete_checksum(&hdr, &mut slot[HEADROOM..HEADROOM + len]) {
                    return self.drop_tun(reason);
                }
                match forward::outbound(snap, &self.cfg.fwd, slot, HEADROOM, len) {
                    forward::Outbound::Send {
                        peer,
                        dst,
                        start,
                        len,
                        flow,
                    } => {
                        self.tally.sent += 1;
                        self.tally.sent_datagrams += 1;
                        TxPlan::Datagram {
                            peer,
                            socket: pick_socket(flow, self.cfg.sockets),
                            dst,
                            start,
                            len,
                        }
                    }
                    forward::Outbound::Drop(reason) => {
                        self.drop_with_icmp(snap, reason, &slot[HEADROOM..HEADROOM + len], now)
                    }
                }
            }
            Ok(_) => self.super_packet(snap, &hdr, &slot[HEADROOM..HEADROOM + len], now),
        }
    }

    /// Routes a TSO/USO super-packet and cuts it into segments that fit the path.
    fn super_packet(
        &mut self,
        snap: &Snapshot,
        hdr: &VnetHdr,
        packet: &[u8],
        now: Instant,
    ) -> TxPlan {
        Counters::add(&self.counters().tun_rx_super, 1);
        let route = match forward::route(snap, &self.cfg.fwd, packet) {
            Ok(route) => route,
            Err(reason) => return self.drop_with_icmp(snap, reason, packet, now),
        };
        let count = match split(
            hdr,
            packet,
            self.cfg.fwd.max_inner_len,
            route.prefix(),
            &mut self.headers,
            &mut self.segs,
        ) {
            Ok(count) => count,
            Err(reason) => return self.drop_tun(reason),
        };
        let counters = self.metrics.worker(self.cfg.worker);
        Counters::add(&counters.tun_rx_super_segments, count as u64);
        self.tally.sent += 1;
        self.tally.sent_datagrams += count as u64;
        TxPlan::Segments {
            peer: route.peer,
            socket: pick_socket(route.flow, self.cfg.sockets),
            dst: route.dst,
            packet: HEADROOM,
            packet_len: packet.len(),
            count,
        }
    }

    /// Returns the header slots of the segments of the last [`TxPlan::Segments`] (segment `i`
    /// at `i * HEADER_STRIDE`).
    pub fn segment_headers(&self) -> &[u8] {
        &self.headers
    }

    /// Returns the first `count` segments of the last [`TxPlan::Segments`].
    pub fn segments(&self, count: usize) -> &[Segment] {
        &self.segs[..count.min(self.segs.len())]
    }

    /// Returns the stride of [`Core::segment_headers`].
    pub const fn segment_stride(&self) -> usize {
        HEADER_STRIDE
    }

    /// Returns the ICMP error of the last [`TxPlan::Icmp`].
    pub fn icmp_reply(&self, len: usize) -> &[u8] {
        self.icmp.reply(len)
    }

    fn drop_tun(&mut self, reason: DropReason) -> TxPlan {
        self.tap.dropped(reason);
        self.counters().drop_packet(reason);
        self.tally.tun_dropped += 1;
        TxPlan::Dropped
    }

    /// Drops `packet` and plans the ICMP error it earns, if any and if the rate allows.
    fn drop_with_icmp(
        &mut self,
        snap: &Snapshot,
        reason: DropReason,
        packet: &[u8],
        now: Instant,
    ) -> TxPlan {
        self.drop_tun(reason);
        match self.icmp.on_drop(snap, &self.cfg.fwd, reason, packet, now) {
            Reply::None => TxPlan::Dropped,
            Reply::Limited => {
                Counters::add(&self.counters().icmp_rate_limited, 1);
                TxPlan::Dropped
            }
            Reply::Ready(len) => {
                self.tally.icmp += 1;
                TxPlan::Icmp { len }
            }
        }
    }
}

/// Maps a flow hash onto one of `n` source sockets as the kernel maps its hash onto the port
/// range (`udp_flow_src_port`: multiply and keep the high half), so every socket gets an equal
/// share. Returns 0 when there are no more than one.
pub(crate) fn pick_socket(flow: u32, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let n64 = u64::try_from(n).unwrap_or(1);
    usize::try_from((u64::from(flow) * n64) >> 32)
        .unwrap_or(0)
        .min(n - 1)
}
