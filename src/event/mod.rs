//! Event loops: moving bytes between the TUN queue and the UDP socket.
//!
//! # The contract every backend provides
//!
//! A backend runs one worker. It receives a [`Worker`]: one TUN queue, one UDP socket, the
//! shared [`Table`], this worker's counters, the [`Forwarding`] parameters and a stop flag. It
//! must:
//!
//! - read packets from TUN in batches, load the table snapshot once per batch, call
//!   [`crate::forward::outbound`] for each, and send the `Send` verdicts as one batch;
//! - receive datagrams in batches, drop (as `oversize`) any that did not fit the buffer, call
//!   [`crate::forward::inbound`] for the rest, and write the `Deliver` verdicts to TUN;
//! - drain both directions until both would block before it waits again;
//! - count every packet in and out and every drop by reason, never panic on packet contents,
//!   never allocate per packet, and log I/O errors through a rate limiter;
//! - check the stop flag at least every [`STOP_POLL`] and return when it is set.
//!
//! With offloads (`crate::offload`) both loops hand super-packets and `UDP_GRO` reads to the
//! shared `offload` path, which sends and writes them with direct system calls.
//!
//! The backend is chosen once at start by the [`Backend`] enum ([`choose`]); nothing is
//! dispatched through a trait object per packet.
//!
//! | backend | needs | how it batches |
//! |---|---|---|
//! | [`epoll`] (mio) | Linux 3.0 (`sendmmsg`) | `recvmmsg`/`sendmmsg` of 64, one `read`/`write` per TUN packet |
//! | `uring` (feature `uring`) | Linux 5.7 (fast poll) | 64 reads and 64 receives in flight; one `io_uring_enter` per round of completions |

pub(crate) mod buf;
pub mod epoll;
mod offload;
#[cfg(feature = "uring")]
pub mod uring;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::config::IoChoice;
use crate::forward::Forwarding;
use crate::metrics::Metrics;
use crate::table::Table;
use crate::tun::Tun;
use crate::udp::UdpSocket;

/// Packets per batch in each direction.
pub const BATCH: usize = 64;

/// How often a waiting worker looks at its stop flag.
pub const STOP_POLL: Duration = Duration::from_millis(200);

/// The event-loop implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// epoll through mio, with `recvmmsg`/`sendmmsg` batches.
    Epoll,
    /// io_uring.
    #[cfg(feature = "uring")]
    Uring,
}

impl Backend {
    /// Returns the backend's name as shown in logs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Epoll => "epoll",
            #[cfg(feature = "uring")]
            Self::Uring => "uring",
        }
    }
}

/// Returns why io_uring cannot be used here, or `None` when it can.
pub fn uring_unavailable() -> Option<String> {
    #[cfg(feature = "uring")]
    {
        uring::probe().err()
    }
    #[cfg(not(feature = "uring"))]
    {
        Some("built without the `uring` feature".to_owned())
    }
}

/// Picks the backend for `choice`, with the reason, probing io_uring where it matters.
///
/// # Errors
///
/// A message when `uring` was asked for and cannot be used.
pub fn choose(choice: IoChoice) -> Result<(Backend, String), String> {
    match choice {
        IoChoice::Epoll => Ok((Backend::Epoll, "asked for with --io epoll".to_owned())),
        IoChoice::Uring => match uring_unavailable() {
            None => Ok((uring_backend(), "asked for with --io uring".to_owned())),
            Some(why) => Err(format!("--io uring: {why}")),
        },
        IoChoice::Auto => match uring_unavailable() {
            None => Ok((
                uring_backend(),
                "auto: io_uring has what the loop needs".to_owned(),
            )),
            Some(why) => Ok((Backend::Epoll, format!("auto: io_uring unusable ({why})"))),
        },
    }
}

#[cfg(feature = "uring")]
const fn uring_backend() -> Backend {
    Backend::Uring
}

#[cfg(not(feature = "uring"))]
const fn uring_backend() -> Backend {
    Backend::Epoll
}

/// Everything one worker owns or shares.
#[derive(Debug)]
pub struct Worker {
    /// Worker number, also the index of its counters.
    pub id: usize,
    /// The TUN queue.
    pub tun: Tun,
    /// The UDP socket bound to the backend port: receives everything, sends for `udp`.
    pub udp: UdpSocket,
    /// VXLAN: sockets bound to distinct source ports; a flow's hash picks one (empty: send
    /// from `udp`).
    pub tx_pool: Arc<Vec<UdpSocket>>,
    /// The shared table.
    pub table: Arc<Table>,
    /// The shared counters.
    pub metrics: Arc<Metrics>,
    /// Forwarding parameters.
    pub fwd: Forwarding,
    /// The TUN device's MTU: the largest packet a TUN read returns.
    pub tun_mtu: usize,
    /// Set to stop the worker.
    pub stop: Arc<AtomicBool>,
    /// io_uring: use a multishot receive with a provided-buffer ring where the kernel has it.
    pub multishot: bool,
    /// The offloads in use.
    pub offloads: crate::offload::Offloads,
}

/// Runs `worker` on `backend` until its stop flag is set.
///
/// # Errors
///
/// A setup error of the event loop (for example epoll cannot be created).
pub fn run(backend: Backend, worker: Worker) -> std::io::Result<()> {
    match backend {
        Backend::Epoll => epoll::run(worker),
        #[cfg(feature = "uring")]
        Backend::Uring => uring::run(worker),
    }
}

/// Logs at most once per interval per instance, counting what it suppressed.
#[derive(Debug)]
pub(crate) struct RateLimitedLog {
    last: Option<Instant>,
    suppressed: u64,
    what: &'static str,
}

impl RateLimitedLog {
    pub(crate) const fn new(what: &'static str) -> Self {
        Self {
            last: None,
            suppressed: 0,
            what,
        }
    }

    pub(crate) fn error(&mut self, err: &std::io::Error) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(suppressed = self.suppressed, "{}: {err}", self.what);
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// ICMP errors back into TUN for packets that cannot be forwarded, through a token bucket
/// (100 per second, bursts of 100, per worker) so a flood of unroutable packets cannot turn
/// into a flood of replies.
#[derive(Debug)]
pub(crate) struct IcmpSender {
    buf: Box<[u8]>,
    tokens: f64,
    last: Instant,
}

impl IcmpSender {
    const RATE: f64 = 100.0;
    const BURST: f64 = 100.0;

    pub(crate) fn new() -> Self {
        Self {
            buf: vec![0u8; crate::wire::icmp::V6_MIN_MTU].into_boxed_slice(),
            tokens: Self::BURST,
            last: Instant::now(),
        }
    }

    /// Sends the ICMP error due for `packet`, dropped from TUN with `reason`, if any
    /// ([`crate::forward::icmp_reply`] decides) and if the bucket allows; counts what it did.
    /// A packet that earns no error takes no token.
    pub(crate) fn on_drop(
        &mut self,
        snap: &crate::table::Snapshot,
        fwd: &Forwarding,
        reason: crate::metrics::DropReason,
        packet: &[u8],
        tun: &Tun,
        counters: &crate::metrics::Counters,
    ) {
        use crate::metrics::Counters;
        let Some(len) = crate::forward::icmp_reply(snap, fwd, reason, packet, &mut self.buf) else {
            return;
        };
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * Self::RATE;
        self.tokens = (self.tokens + refill).min(Self::BURST);
        self.last = now;
        if self.tokens < 1.0 {
            Counters::add(&counters.icmp_rate_limited, 1);
            return;
        }
        self.tokens -= 1.0;
        if tun.write(&self.buf[..len]).is_ok() {
            Counters::add(&counters.tun_tx_icmp, 1);
        }
    }
}

/// Writes one packet to TUN right away, counting it or its failure.
pub(crate) fn write_tun(
    tun: &Tun,
    packet: &[u8],
    counters: &crate::metrics::Counters,
    log: &mut RateLimitedLog,
) {
    count_tun_write(tun.write(packet), packet.len(), counters, log);
}

/// Counts a socket read of `len` bytes that is dropped whole with `reason` (it did not fit
/// the buffer, or it has no sender address) once per datagram it holds: a `UDP_GRO` read
/// (segment size `segment`, 0 for none) is several datagrams.
pub(crate) fn drop_read(
    counters: &crate::metrics::Counters,
    len: usize,
    segment: usize,
    reason: crate::metrics::DropReason,
) {
    use crate::metrics::Counters;
    let n = crate::offload::datagrams_in(len, segment) as u64;
    Counters::add(&counters.rx_packets, n);
    Counters::add(&counters.rx_bytes, len as u64);
    counters.drop_packets(reason, n);
}

/// Counts the outcome of a synchronous TUN write of a `len`-byte packet.
pub(crate) fn count_tun_write(
    result: std::io::Result<usize>,
    len: usize,
    counters: &crate::metrics::Counters,
    log: &mut RateLimitedLog,
) {
    use crate::metrics::{Counters, DropReason};
    match result {
        Ok(_) => {
            Counters::add(&counters.tun_tx_packets, 1);
            Counters::add(&counters.tun_tx_bytes, len as u64);
        }
        Err(e) => {
            log.error(&e);
            counters.drop_packet(DropReason::TunWriteError);
        }
    }
}

/// Cuts an inner TCP super-packet (from a kernel VXLAN peer on the same host) into segments of
/// at most `max` bytes and writes each to TUN. One whose checksum is neither complete and valid
/// nor partial is `rx_bad_tcp_checksum` (the cut would give corrupted bytes valid checksums);
/// anything else that cannot be cut is `rx_too_big`.
pub(crate) fn write_segmented(
    tun: &Tun,
    inner: &[u8],
    max: usize,
    scratch: &mut [u8],
    counters: &crate::metrics::Counters,
    log: &mut RateLimitedLog,
) {
    use crate::metrics::{Counters, DropReason};
    match crate::wire::tcp::segment(inner, max, scratch, |seg| {
        write_tun(tun, seg, counters, log)
    }) {
        Ok(_) => Counters::add(&counters.tun_tx_segmented, 1),
        Err(crate::wire::WireError::BadChecksum) => {
            counters.drop_packet(DropReason::RxBadTcpChecksum);
        }
        Err(_) => counters.drop_packet(DropReason::RxTooBig),
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn every_socket_gets_flows() {
        let mut seen = [0u32; 16];
        for flow in (0..u32::MAX).step_by(1 << 20) {
            seen[pick_socket(flow, 16)] += 1;
        }
        assert!(seen.iter().all(|&n| n == 256), "{seen:?}");
        assert_eq!(pick_socket(u32::MAX, 0), 0);
        assert_eq!(pick_socket(u32::MAX, 1), 0);
    }

    proptest! {
        #[test]
        fn always_in_range(flow in any::<u32>(), n in 1usize..300) {
            prop_assert!(pick_socket(flow, n) < n);
        }
    }
}
