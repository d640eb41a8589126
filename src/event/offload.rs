//! The offload path shared by both event loops: TUN super-packets cut and sent with
//! `UDP_SEGMENT`, `UDP_GRO` reads cut into datagrams and their TCP segments merged for TUN.
//!
//! Both directions move up to 64 KiB per system call here, so the calls are made directly,
//! also from the io_uring loop (which keeps its reads and receives on the ring): one
//! `sendmmsg` per super-packet, one `writev` per merged packet. Ordering within a flow is kept:
//! a loop sends whatever plain packets it has queued before the segments of a super-packet,
//! and merged packets are written before the next read.

use std::io;
use std::net::SocketAddr;

use super::{IcmpSender, RateLimitedLog, Worker};
use crate::forward::{self, Verdict};
use crate::metrics::{Counters, DropReason};
use crate::offload::coalesce::super_packet_header;
use crate::offload::split::{complete_checksum, split};
use crate::offload::vnet::Gso;
use crate::offload::{
    Coalescer, HEADER_STRIDE, MAX_SEGMENTS, Segment, VNET_HDR_LEN, VnetHdr, gro_stride,
};
use crate::table::Snapshot;
use crate::tun::Tun;
use crate::udp::SegmentScratch;
use crate::wire::Encap;
use crate::wire::ip::complete_partial_checksum;

/// What a TUN read with a virtio-net header turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TunRead {
    /// A plain packet of this length, now at the usual place after the headroom: the loop
    /// forwards it as any other.
    Plain(usize),
    /// A super-packet cut into segments, ready for [`OffloadIo::send_segments`].
    Segments {
        /// Which socket of the pool sends them (0 without a pool).
        socket: usize,
        /// The peer.
        dst: SocketAddr,
        /// How many.
        count: usize,
    },
    /// Dropped and counted.
    Dropped,
}

/// Per-worker offload state.
pub(crate) struct OffloadIo {
    headers: Box<[u8]>,
    segs: Vec<Segment>,
    scratch: SegmentScratch,
    /// `UDP_SEGMENT` still in use (turned off for good by `EIO`).
    gso: bool,
    coalescer: Coalescer,
    send_log: RateLimitedLog,
}

impl OffloadIo {
    pub(crate) fn new(w: &Worker) -> Self {
        Self {
            headers: vec![0u8; MAX_SEGMENTS * HEADER_STRIDE].into_boxed_slice(),
            segs: vec![Segment::default(); MAX_SEGMENTS],
            scratch: SegmentScratch::new(MAX_SEGMENTS),
            gso: w.offloads.gso,
            coalescer: Coalescer::new(),
            send_log: RateLimitedLog::new("UDP segment send failed"),
        }
    }

    /// Handles a TUN read of `n` bytes that starts `VNET_HDR_LEN` bytes before `headroom` in
    /// `slot` (so the packet itself starts at `headroom`). The caller has counted the read.
    pub(crate) fn tun_read(
        &mut self,
        w: &Worker,
        snap: &Snapshot,
        slot: &mut [u8],
        headroom: usize,
        n: usize,
        icmp: &mut IcmpSender,
    ) -> TunRead {
        let counters = w.metrics.worker(w.id);
        let drop = |reason| {
            counters.drop_packet(reason);
            TunRead::Dropped
        };
        let (Some(len), Some(at)) = (
            n.checked_sub(VNET_HDR_LEN),
            headroom.checked_sub(VNET_HDR_LEN),
        ) else {
            return drop(DropReason::TunMalformed(crate::wire::WireError::Truncated));
        };
        let Ok(hdr) = VnetHdr::parse(&slot[at..]) else {
            return drop(DropReason::TunMalformed(crate::wire::WireError::Truncated));
        };
        let Some(packet) = slot.get_mut(headroom..headroom + len) else {
            return drop(DropReason::TunMalformed(crate::wire::WireError::Truncated));
        };
        match hdr.gso() {
            Err(e) => drop(DropReason::TunMalformed(e)),
            Ok(Gso::None) => match complete_checksum(&hdr, packet) {
                Ok(()) => TunRead::Plain(len),
                Err(reason) => drop(reason),
            },
            Ok(_) => {
                Counters::add(&counters.tun_rx_super, 1);
                let route = match forward::route_super(snap, &w.fwd, packet) {
                    Ok(route) => route,
                    Err(reason) => {
                        counters.drop_packet(reason);
                        icmp.on_drop(snap, &w.fwd, reason, packet, &w.tun, counters);
                        return TunRead::Dropped;
                    }
                };
                let prefix = &route.prefix[..route.prefix_len];
                match split(
                    &hdr,
                    packet,
                    w.fwd.max_inner_len,
                    prefix,
                    &mut self.headers,
                    &mut self.segs,
                ) {
                    Ok(count) => {
                        Counters::add(&counters.tun_rx_super_segments, count as u64);
                        if let Some(stats) = snap.peer_stats(route.peer) {
                            let bytes: usize = self.segs[..count].iter().map(Segment::len).sum();
                            stats.add_tx(w.id, count as u64, bytes as u64);
                        }
                        TunRead::Segments {
                            socket: super::pick_socket(route.flow, w.tx_pool.len()),
                            dst: route.dst,
                            count,
                        }
                    }
                    Err(reason) => drop(reason),
                }
            }
        }
    }

    /// Sends the `count` segments [`Self::tun_read`] prepared from `packet` (the super-packet
    /// bytes after the headroom): with `UDP_SEGMENT` while it works, one datagram each
    /// otherwise. Counts what went and what did not.
    pub(crate) fn send_segments(
        &mut self,
        w: &Worker,
        socket: usize,
        dst: SocketAddr,
        packet: &[u8],
        count: usize,
    ) {
        let counters = w.metrics.worker(w.id);
        let sock = w.tx_pool.get(socket).unwrap_or(&w.udp);
        let mut off = 0;
        let mut waited = false;
        while off < count {
            let r = sock.send_segments(
                &mut self.scratch,
                dst,
                &self.headers[off * HEADER_STRIDE..],
                HEADER_STRIDE,
                packet,
                &self.segs[off..count],
                self.gso,
            );
            match r {
                Ok(sent) if sent.segments > 0 => {
                    let bytes: usize = self.segs[off..off + sent.segments]
                        .iter()
                        .map(Segment::len)
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
                Err(e) if e.raw_os_error() == Some(libc::EIO) && self.gso => {
                    tracing::warn!(
                        worker = w.id,
                        "UDP GSO failed with EIO (the egress device cannot checksum); sending \
                         segments one datagram each from now on"
                    );
                    self.gso = false;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !waited => {
                    waited = true;
                    let _ = sock.wait_writable(10);
                }
                Err(e) => {
                    self.send_log.error(&e);
                    for _ in off..count {
                        counters.drop_packet(DropReason::TxError);
                    }
                    break;
                }
            }
        }
    }

    /// Delivers one socket read `datagram` from `from`: cut into datagrams when it holds
    /// several (`segment`, the `UDP_GRO` size, 0 for none; see [`gro_stride`]), each checked
    /// by [`forward::inbound`] and counted on its own, and the inner packets written to TUN
    /// (merged when the device takes virtio-net headers). The caller has dropped truncated
    /// reads and must call [`Self::flush`] at the end of its batch.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn deliver(
        &mut self,
        w: &Worker,
        snap: &Snapshot,
        from: SocketAddr,
        datagram: &mut [u8],
        segment: usize,
        seg_scratch: &mut [u8],
        log: &mut RateLimitedLog,
    ) {
        let counters = w.metrics.worker(w.id);
        let vxlan = matches!(w.fwd.encap, Encap::Vxlan(_));
        let stride = gro_stride(datagram, segment, w.fwd.encap.header_len(), vxlan).max(1);
        if stride < datagram.len() {
            Counters::add(&counters.rx_gro_reads, 1);
        }
        let max = w.fwd.max_inner_len;
        let empty: &mut [u8] = &mut [];
        let whole = datagram.is_empty();
        // An empty datagram is one (malformed) datagram too.
        for chunk in datagram.chunks_mut(stride).chain(whole.then_some(empty)) {
            Counters::add(&counters.rx_packets, 1);
            Counters::add(&counters.rx_bytes, chunk.len() as u64);
            // `udp` peers never send more than their MTU; only VXLAN super-frames from a kernel
            // peer on the same host are longer, and only after the checks below.
            if matches!(w.fwd.encap, Encap::Flannel) && chunk.len() > max {
                counters.drop_packet(DropReason::Oversize);
                continue;
            }
            let (start, len) = match forward::inbound(snap, &w.fwd, from, chunk) {
                Verdict::Deliver { start, len, peer } => {
                    if let Some(stats) = snap.peer_stats(peer) {
                        stats.add_rx(w.id, 1, chunk.len() as u64);
                    }
                    (start, len)
                }
                Verdict::Drop(reason) => {
                    counters.drop_packet(reason);
                    continue;
                }
                Verdict::Send { .. } => {
                    counters.drop_packet(DropReason::NotLocal);
                    continue;
                }
            };
            let inner = &mut chunk[start..start + len];
            if len <= max {
                if complete_partial_checksum(inner) {
                    Counters::add(&counters.tun_tx_csum_completed, 1);
                }
                if w.tun.vnet() {
                    let mut out = writer(&w.tun, counters, log);
                    let _ = self.coalescer.push(inner, &mut out);
                } else {
                    super::write_tun(&w.tun, inner, counters, log);
                }
            } else if let Some(hdr) = super_packet_header(inner, max).filter(|_| w.tun.vnet()) {
                // Whole, after anything of its flow that is waiting.
                self.flush(w, log);
                let mut out = writer(&w.tun, counters, log);
                let _ = out(&hdr, inner);
                Counters::add(&counters.tun_tx_merged, 1);
            } else {
                super::write_segmented(&w.tun, inner, max, seg_scratch, counters, log);
            }
        }
    }

    /// Writes every merged packet still open.
    pub(crate) fn flush(&mut self, w: &Worker, log: &mut RateLimitedLog) {
        let counters = w.metrics.worker(w.id);
        if self.coalescer.pending() {
            let mut out = writer(&w.tun, counters, log);
            let _ = self.coalescer.flush(&mut out);
        }
        let written = self.coalescer.take_written();
        Counters::add(&counters.tun_tx_merged, written.merged);
        Counters::add(&counters.tun_tx_merged_segments, written.merged_segments);
    }
}

/// Returns the sink that writes one packet behind its virtio-net header and counts it.
fn writer<'a>(
    tun: &'a Tun,
    counters: &'a Counters,
    log: &'a mut RateLimitedLog,
) -> impl FnMut(&VnetHdr, &[u8]) -> Result<(), ()> + 'a {
    move |hdr, packet| {
        super::count_tun_write(tun.write_vnet(hdr, packet), packet.len(), counters, log);
        Ok(())
    }
}
