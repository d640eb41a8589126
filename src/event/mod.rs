//! Event loops: moving bytes between the TUN queue and the UDP socket.
//!
//! # The contract every backend provides
//!
//! A backend runs one worker. It receives a [`Worker`]: one TUN queue, one UDP socket, the
//! shared [`Table`], the counters, the [`Forwarding`] parameters and a stop flag, and makes
//! the worker's [`Core`] ([`Worker::core`]). It owns the buffers and the system calls, and
//! makes no forwarding decision of its own. It must:
//!
//! - read packets from TUN in batches into slots laid out as the core says
//!   ([`Core::tun_read_offset`], [`Core::tun_slot_len`]), load the table snapshot once per
//!   batch, hand each read to [`Core::tun_read`] and carry out the [`crate::datapath::TxPlan`];
//! - receive datagrams in batches (with `MSG_TRUNC`, into slots larger than
//!   [`Core::rx_payload`]), hand each read, decoded by the socket layer, to
//!   [`Core::udp_read`], carry out its [`crate::datapath::RxOp`]s in order, send the peer
//!   probe answer it may have planned ([`Core::probe_reply`], `exec::Sender::answer_probe`),
//!   and call [`Core::rx_flush`] at the end of the batch;
//! - carry out a plan before the next call into the core (the core's buffers are reused);
//! - keep a flow's order: outputs leave in plan order (the shared executors in `exec` queue
//!   datagrams and send whatever is queued before a super-packet's segments);
//! - drain both directions until both would block before it waits again;
//! - count what its system calls did (sent, written, `tx_error`, `tun_write_error`), never
//!   panic, never allocate per packet, and log I/O errors through a rate limiter;
//! - check the stop flag at least every [`STOP_POLL`] and return when it is set.
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
mod exec;
pub mod spin;
#[cfg(feature = "uring")]
pub mod uring;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::config::IoChoice;
use crate::datapath::{Core, CoreConfig, Forwarding};
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

/// Locked memory one io_uring worker needs at most (its rings and provided-buffer rings),
/// with room to spare: charged to the user's `RLIMIT_MEMLOCK` once the
/// node has dropped `CAP_IPC_LOCK` with its other privileges.
pub const URING_MEMLOCK_PER_WORKER: u64 = 512 * 1024;

/// Makes room for `workers` io_uring workers under `RLIMIT_MEMLOCK`, which binds them once the
/// privileges are dropped (the kernel's default, 64 KiB before Linux 5.16 and in many
/// containers, holds none): raised to unlimited where the process may, else up to its hard
/// value.
///
/// # Errors
///
/// A sentence naming the limit when it stays below what the workers need.
pub fn uring_memlock(workers: usize) -> Result<(), String> {
    let need = URING_MEMLOCK_PER_WORKER.saturating_mul(workers as u64);
    let lim = crate::sys::raise_limit(libc::RLIMIT_MEMLOCK, None)
        .map_err(|e| format!("cannot read RLIMIT_MEMLOCK: {e}"))?;
    match lim.soft {
        Some(soft) if soft < need => Err(format!(
            "RLIMIT_MEMLOCK is {} KiB, and {workers} io_uring workers need about {} KiB of locked \
             memory once privileges are dropped (raise LimitMEMLOCK= in the unit, ulimit -l, or \
             give CAP_SYS_RESOURCE)",
            soft / 1024,
            need / 1024
        )),
        _ => Ok(()),
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
    /// The socket bound to the IPv6 underlay address and the backend port, on a node with one
    /// beside an IPv4 public IP: receives too, and sends to peers with IPv6 endpoints.
    pub udp6: Option<UdpSocket>,
    /// VXLAN: sockets bound to distinct source ports; a flow's hash picks one (empty: send
    /// from `udp`).
    pub tx_pool: Arc<Vec<UdpSocket>>,
    /// VXLAN: the same on the IPv6 underlay address (empty: send from `udp6`).
    pub tx_pool6: Arc<Vec<UdpSocket>>,
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
    /// The longest busy-poll window before blocking (zero: block at once; see [`spin`]).
    pub busy_poll: Duration,
    /// Where verdicts go for `fustian trace` and the recent drops.
    pub trace: Arc<crate::trace::Hub>,
}

impl Worker {
    /// Makes this worker's datapath core, and lets its sockets use `UDP_SEGMENT` when the
    /// offloads say so.
    pub fn core(&self) -> Core {
        let gso = self.offloads.gso;
        self.udp.set_gso(gso);
        for s in self
            .tx_pool
            .iter()
            .chain(self.tx_pool6.iter())
            .chain(self.udp6.as_ref())
        {
            s.set_gso(gso);
        }
        Core::new(
            CoreConfig {
                worker: self.id,
                fwd: self.fwd,
                vnet: self.tun.vnet(),
                uso: self.offloads.tun_uso,
                gro: self.offloads.gro,
                sockets: self.tx_pool.len(),
                tun_mtu: self.tun_mtu,
            },
            Arc::clone(&self.metrics),
        )
        .with_trace(Arc::clone(&self.trace))
    }
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
