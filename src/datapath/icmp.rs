//! The ICMP errors a worker writes back into TUN, through a token bucket.

use std::time::Instant;

use super::forward::{Forwarding, icmp_reply};
use crate::metrics::DropReason;
use crate::table::Snapshot;

/// ICMP errors for packets that cannot be forwarded, through a token bucket (100 per second,
/// bursts of 100, per worker) so a flood of unroutable packets cannot turn into a flood of
/// replies. Which drops earn an error, and about which packets, is [`icmp_reply`]'s decision.
#[derive(Debug)]
pub(super) struct Limiter {
    buf: Box<[u8]>,
    tokens: f64,
    last: Option<Instant>,
}

/// What became of a dropped packet's ICMP error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reply {
    /// None is due.
    None,
    /// Due, but the bucket was empty.
    Limited,
    /// Built: the first `len` bytes of [`Limiter::reply`].
    Ready(usize),
}

impl Limiter {
    const RATE: f64 = 100.0;
    const BURST: f64 = 100.0;

    pub(super) fn new() -> Self {
        Self {
            buf: vec![0u8; crate::wire::icmp::V6_MIN_MTU].into_boxed_slice(),
            tokens: Self::BURST,
            last: None,
        }
    }

    /// Builds the ICMP error due for `packet`, dropped from TUN with `reason`, if any is due
    /// and the bucket allows at `now`. A packet that earns no error takes no token.
    pub(super) fn on_drop(
        &mut self,
        snap: &Snapshot,
        fwd: &Forwarding,
        reason: DropReason,
        packet: &[u8],
        now: Instant,
    ) -> Reply {
        let Some(len) = icmp_reply(snap, fwd, reason, packet, &mut self.buf) else {
            return Reply::None;
        };
        let elapsed = self
            .last
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        self.tokens = (self.tokens + elapsed * Self::RATE).min(Self::BURST);
        self.last = Some(now);
        if self.tokens < 1.0 {
            return Reply::Limited;
        }
        self.tokens -= 1.0;
        Reply::Ready(len)
    }

    /// Returns the reply buffer.
    pub(super) fn reply(&self, len: usize) -> &[u8] {
        &self.buf[..len.min(self.buf.len())]
    }
}
