//! Answers to `doctor`'s peer probes ([`crate::doctor::probe`]): off the hot path, through a
//! token bucket, only to peers.

use std::net::SocketAddr;
use std::time::Instant;

use super::Core;
use crate::doctor::probe::{ANSWER_RATE, REPLY_LEN, VXLAN_PREFIX, answer};
use crate::metrics::Counters;
use crate::table::Snapshot;
use crate::wire::Encap;

/// The answer planned by the last receive, and the bucket that bounds them.
#[derive(Debug)]
pub(super) struct Responder {
    buf: [u8; VXLAN_PREFIX + REPLY_LEN],
    reply: Option<(SocketAddr, usize)>,
    tokens: f64,
    last: Option<Instant>,
}

impl Responder {
    pub(super) const fn new() -> Self {
        Self {
            buf: [0; VXLAN_PREFIX + REPLY_LEN],
            reply: None,
            tokens: ANSWER_RATE,
            last: None,
        }
    }

    fn take_token(&mut self, now: Instant) -> bool {
        let elapsed = self
            .last
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        self.tokens = (self.tokens + elapsed * ANSWER_RATE).min(ANSWER_RATE);
        self.last = Some(now);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

impl Core {
    /// Takes the probe `datagram` from `from` off the path to TUN when it is a well-formed
    /// request from a peer: plans its answer ([`Core::probe_reply`]) if it is the read's first
    /// and the bucket allows, else counts it `probe_rate_limited`, and returns true. Anything else returns false and goes through the receive checks as any
    /// datagram, which drop it (its first nibble or EtherType is no IP version).
    #[cold]
    pub(super) fn probe(&mut self, snap: &Snapshot, from: SocketAddr, datagram: &[u8]) -> bool {
        if !snap.is_known_sender(from.ip()) {
            return false;
        }
        let vxlan = match self.cfg.fwd.encap {
            Encap::Flannel => None,
            Encap::Vxlan(p) => Some((p.vni, p.local_mac.0)),
        };
        // One answer per read: a later request of the same `UDP_GRO` read is checked in a
        // scratch buffer, so the planned answer stays as it is, and left unanswered without
        // spending a token.
        let answered = self.probe.reply.is_some();
        let mut scratch = [0u8; VXLAN_PREFIX + REPLY_LEN];
        let buf = if answered {
            &mut scratch
        } else {
            &mut self.probe.buf
        };
        let Some(len) = answer(datagram, vxlan, buf) else {
            return false;
        };
        let counters = self.metrics.worker(self.cfg.worker);
        Counters::add(&counters.probe_rx, 1);
        self.tally.probes += 1;
        // Time is read here rather than passed in: this is off the per-packet path.
        if !answered && self.probe.take_token(Instant::now()) {
            self.probe.reply = Some((from, len));
        } else {
            Counters::add(&counters.probe_rate_limited, 1);
        }
        true
    }

    /// Returns the probe answer the last [`Core::udp_read`] planned, if any: the loop sends it
    /// from the worker's socket to the address given (and counts `probe_tx`).
    #[inline]
    pub fn probe_reply(&self) -> Option<(SocketAddr, &[u8])> {
        self.probe
            .reply
            .map(|(dst, len)| (dst, self.probe.buf.get(..len).unwrap_or_default()))
    }

    /// Forgets the planned answer (at the start of every read).
    #[inline]
    pub(super) fn clear_probe_reply(&mut self) {
        self.probe.reply = None;
    }
}
