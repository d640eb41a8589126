//! The datapath core: every per-packet decision of a worker, in both directions, with no I/O.
//!
//! A worker's event loop owns the buffers and the system calls; everything between "bytes
//! arrived" and "bytes to emit" happens here, once, for both loops:
//!
//! ```text
//!  TUN read ──▶ Core::tun_read ──▶ TxPlan: Datagram | Segments | Icmp | Dropped
//!               virtio-net header, super-packet split, route, size,
//!               encapsulation in place, ICMP errors (rate limited)
//!
//!  UDP read ──▶ Core::udp_read ──▶ [RxOp]: Write | WriteVnet | Merged | Segments
//!               oversize, GRO cut, sender, decapsulation, the receive checks,
//!               checksum completion, TCP merging (coalescing), super-frame cut;
//!               a peer probe (`crate::doctor::probe`) answered: Core::probe_reply
//!  end of batch ▶ Core::rx_flush ▶ [RxOp]: Merged (what is still open)
//! ```
//!
//! The checks themselves are in [`forward`]; the offload algorithms (split, coalesce, the
//! virtio-net header) in [`crate::offload`]; the wire formats in [`crate::wire`]. This module
//! is where they are put together and where every packet is counted exactly once: as sent (one
//! datagram, or the segments of a super-packet), as delivered, or as dropped with its reason.
//! [`Tally`] keeps that balance for tests and fuzzing.
//!
//! Each direction has its own result type, so no loop has an arm that cannot happen. A plan
//! refers to bytes in two places: the loop's slot that was passed in (a range of it), or the
//! core's own buffers (segment headers, merged packets, the ICMP reply). The core's buffers
//! stay untouched until the next call into the core, so a loop executes a plan (or at least
//! everything in it that refers to the core's buffers) before the next call. Ranges of the
//! loop's slot stay valid for as long as the loop keeps the slot.
//!
//! Order within a flow is kept by construction: a plan lists its outputs in the order they
//! must leave, and a loop executes them in that order (see `crate::event`).
//!
//! Nothing here allocates per packet, blocks, makes a system call, or panics on any input;
//! time comes in from the loop (once per batch). Counters are the worker's own relaxed atomics.

pub mod forward;
mod icmp;
mod probe;
mod rx;
#[cfg(test)]
mod tests;
mod tx;

use std::sync::Arc;

pub use forward::Forwarding;
pub use rx::{RxOp, TunWrite};
pub use tx::TxPlan;

use crate::metrics::{Counters, Metrics};
use crate::offload::{Coalescer, HEADER_STRIDE, MAX_SEGMENTS, VNET_HDR_LEN};
use crate::trace::{Hub, Tap};
use crate::wire::{Encap, Segment};

/// Bytes kept free in front of each packet read from TUN, for the encapsulation header
/// (written in place, so the packet is never moved) and the virtio-net header.
pub const HEADROOM: usize = 64;
/// The largest UDP payload over IPv4 (65535 − 20 − 8).
pub const MAX_UDP_PAYLOAD: usize = 65_507;
/// The largest TUN read with offloads: a super-packet of up to 64 KiB.
pub const MAX_SUPER_PACKET: usize = 65_535;
/// Segments a received super-frame may be cut into for a device without offloads.
const MAX_RX_SEGMENTS: usize = 1024;
/// Header room per segment of a received super-frame (IPv4 with options and TCP with options).
const RX_HEADER_STRIDE: usize = 128;
/// Receive operations one call plans without growing its list: a `UDP_GRO` read holds at
/// most 64 datagrams (`UDP_GRO_CNT_MAX`) and each turns into at most three operations.
const OPS_CAPACITY: usize = 3 * 64 + crate::offload::coalesce::MAX_OPEN;

/// What a worker's core is set up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreConfig {
    /// The worker's number: the index of its counters.
    pub worker: usize,
    /// Forwarding parameters.
    pub fwd: Forwarding,
    /// The TUN device carries virtio-net headers (TSO/USO offloads): reads may be
    /// super-packets and every write carries a header. The one source of truth for it.
    pub vnet: bool,
    /// The device also takes UDP super-packets (USO): received datagrams of one UDP flow are
    /// merged for TUN as TCP segments are.
    pub uso: bool,
    /// The socket has `UDP_GRO`: a read may hold several datagrams.
    pub gro: bool,
    /// Source sockets a flow's hash chooses between (VXLAN source ports; 0 or 1: one).
    pub sockets: usize,
    /// The TUN device's MTU.
    pub tun_mtu: usize,
}

/// How many packets went which way through one core, since it was made. For every input,
/// exactly one outcome is counted, which is what tests and the fuzz target check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Packets read from TUN (a super-packet is one).
    pub tun_reads: u64,
    /// Of those, sent: as one datagram or as the segments of a super-packet.
    pub sent: u64,
    /// Datagrams planned for those (one per plain packet, one per segment).
    pub sent_datagrams: u64,
    /// Of the TUN reads, dropped.
    pub tun_dropped: u64,
    /// ICMP errors planned for TUN.
    pub icmp: u64,
    /// Datagrams received (each datagram of a `UDP_GRO` read is one).
    pub datagrams: u64,
    /// Of those, delivered to TUN (as they are, merged, or cut into segments).
    pub delivered: u64,
    /// Of those, dropped.
    pub rx_dropped: u64,
    /// Of those, peer probes taken off the path to TUN (answered or rate limited).
    pub probes: u64,
}

/// One worker's datapath: its per-packet state and scratch space, allocated once.
#[derive(Debug)]
pub struct Core {
    cfg: CoreConfig,
    metrics: Arc<Metrics>,
    /// Transmit: header slots of the segments of the last super-packet.
    headers: Box<[u8]>,
    segs: Box<[Segment]>,
    icmp: icmp::Limiter,
    /// Receive: the plan of the last call.
    ops: Vec<RxOp>,
    coalescer: Coalescer,
    rx_headers: Box<[u8]>,
    rx_segs: Box<[Segment]>,
    probe: probe::Responder,
    tally: Tally,
    /// Where verdicts go when a trace is attached, and drops always (see `crate::trace`).
    tap: Tap,
}

impl Core {
    /// Makes a core for worker `cfg.worker`, counting into `metrics`.
    pub fn new(cfg: CoreConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            cfg,
            metrics,
            headers: vec![0u8; MAX_SEGMENTS * HEADER_STRIDE].into_boxed_slice(),
            segs: vec![Segment::default(); MAX_SEGMENTS].into_boxed_slice(),
            icmp: icmp::Limiter::new(),
            ops: Vec::with_capacity(OPS_CAPACITY),
            coalescer: Coalescer::new().with_udp(cfg.vnet && cfg.uso),
            rx_headers: vec![0u8; MAX_RX_SEGMENTS * RX_HEADER_STRIDE].into_boxed_slice(),
            rx_segs: vec![Segment::default(); MAX_RX_SEGMENTS].into_boxed_slice(),
            probe: probe::Responder::new(),
            tally: Tally::default(),
            tap: Tap::new(Arc::new(Hub::new(cfg.worker + 1)), cfg.worker),
        }
    }

    /// Sends this worker's verdicts to `hub` (traces, recent drops) instead of its own.
    #[must_use]
    pub fn with_trace(mut self, hub: Arc<Hub>) -> Self {
        self.tap = Tap::new(hub, self.cfg.worker);
        self
    }

    /// Starts a batch of reads: one relaxed atomic load says whether a trace is attached, and
    /// the calls of the batch record verdicts for it or not. The loops call it once per batch,
    /// where they load the table snapshot; a trace attached meanwhile starts with the next.
    #[inline]
    pub fn begin_batch(&mut self) {
        self.tap.begin();
    }

    /// Returns the configuration.
    pub const fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// Returns what went which way so far.
    pub const fn tally(&self) -> Tally {
        self.tally
    }

    /// Returns the bytes of virtio-net header in front of every TUN read and write.
    pub const fn vnet_len(&self) -> usize {
        if self.cfg.vnet { VNET_HDR_LEN } else { 0 }
    }

    /// Returns where in its slot a TUN read must be placed: [`HEADROOM`] minus the virtio-net
    /// header, so the packet itself starts at [`HEADROOM`].
    pub const fn tun_read_offset(&self) -> usize {
        HEADROOM - self.vnet_len()
    }

    /// Returns the slot size a TUN read needs (headroom included).
    pub fn tun_slot_len(&self) -> usize {
        let packet = if self.cfg.vnet {
            MAX_SUPER_PACKET
        } else {
            self.cfg.tun_mtu.max(self.cfg.fwd.max_inner_len)
        };
        HEADROOM + packet
    }

    /// Returns the largest datagram (or `UDP_GRO` read) that is accepted; a longer one is
    /// dropped as `oversize`. A slot must hold at least one byte more, so the kernel's
    /// `MSG_TRUNC` can tell a longer one apart.
    ///
    /// VXLAN: a kernel peer on the same host can hand over a whole TSO super-frame (see
    /// `wire::tcp`), so up to the largest UDP payload is taken and such frames are cut or
    /// passed on whole. `udp`: flanneld's proxy never sends more than its MTU, so anything
    /// longer than the inner MTU is `oversize`. With `UDP_GRO`, one read holds up to 64 KiB of
    /// datagrams whatever the encapsulation.
    pub const fn rx_payload(&self) -> usize {
        match self.cfg.fwd.encap {
            Encap::Flannel if !self.cfg.gro => self.cfg.fwd.max_inner_len,
            _ => MAX_UDP_PAYLOAD,
        }
    }

    fn counters(&self) -> &Counters {
        self.metrics.worker(self.cfg.worker)
    }
}
