//! `fustian trace`: every verdict of a running node, as it is made, and the last drops of each
//! worker.
//!
//! The datapath core ([`crate::datapath::Core`]) holds a [`Tap`] per worker. With nothing
//! attached, a core pays one relaxed atomic load per batch of reads
//! ([`crate::datapath::Core::begin_batch`], [`Hub`]'s `armed` flag) plus, on a drop only, a write into the worker's small ring of recent drops
//! ([`Hub::recent`], shown by `fustian show`). With a trace attached ([`Hub::attach`]), each
//! verdict becomes a fixed-size [`Event`] (no allocation): it is matched against each attached
//! session's compiled [`Filter`] and, when it matches, offered to that session's bounded
//! per-worker ring with a non-blocking send; a full ring counts the event as lost instead of
//! waiting, so a slow reader never slows forwarding.
//!
//! The node serves attached traces over a Unix socket ([`server`]); the `fustian trace` command
//! is the client ([`client`]); `--pcap` writes pcapng ([`pcap`]). Events cross the socket as
//! JSON lines ([`Line`]).
//!
//! What this does not do: it sees only what the core decides (a packet the kernel drops before
//! fustian reads it never shows), and it captures at most [`SNAPLEN`] bytes of each inner
//! packet.

pub mod client;
pub mod filter;
pub mod pcap;
pub mod server;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use self::filter::{Filter, FilterError};
use crate::metrics::DropReason;
use crate::table::Snapshot;

/// Bytes of each inner packet an event carries (and `--pcap` writes): enough for IPv6 with TCP
/// options and the first bytes of payload.
pub const SNAPLEN: usize = 160;
/// Events one worker's ring holds for one session before further ones are lost, at most: with
/// many workers each ring is smaller ([`ring_events`]), so a trace holds at most about
/// [`SESSION_EVENTS`] events (a few MB) however many workers there are.
pub const RING_EVENTS: usize = 2048;
/// Events all rings of one session hold together, at most (but each ring holds at least 256).
pub const SESSION_EVENTS: usize = 16_384;

/// Returns the ring size per worker for `workers` workers.
pub const fn ring_events(workers: usize) -> usize {
    let share = SESSION_EVENTS / if workers == 0 { 1 } else { workers };
    if share > RING_EVENTS {
        RING_EVENTS
    } else if share < 256 {
        256
    } else {
        share
    }
}
/// Drops each worker remembers for `fustian show`.
pub const RECENT_DROPS: usize = 32;
/// Traces a node serves at once; one more is refused.
pub const MAX_SESSIONS: usize = 4;

/// Which way a packet was going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    /// Read from TUN, for a peer.
    #[serde(rename = "tun>udp")]
    TunToUdp,
    /// Received from the underlay, for TUN.
    #[serde(rename = "udp>tun")]
    UdpToTun,
}

/// The inner packet's addresses, protocol and ports (0 where it has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number (IPv6: the first next-header).
    pub proto: u8,
    /// TCP/UDP source port, else 0.
    pub sport: u16,
    /// TCP/UDP destination port, else 0.
    pub dport: u16,
}

impl Flow {
    /// Reads the flow of the IP packet at the start of `packet`, leniently (length fields are
    /// not checked against the bytes, so a malformed or cut packet still names its addresses).
    /// Returns `None` when the fixed header is not all there or the version is neither 4 nor 6.
    pub fn parse(packet: &[u8]) -> Option<Self> {
        let (src, dst, proto, l4) = match packet.first()? >> 4 {
            4 => {
                let h = packet.get(..20)?;
                let ihl = usize::from(h[0] & 0x0f) * 4;
                // Ports are only in the first fragment (RFC 791: fragment offset zero).
                let first = h[6] & 0x1f == 0 && h[7] == 0;
                let src = IpAddr::from([h[12], h[13], h[14], h[15]]);
                let dst = IpAddr::from([h[16], h[17], h[18], h[19]]);
                (src, dst, h[9], first.then_some(ihl))
            }
            6 => {
                let h = packet.get(..40)?;
                let mut a = [0u8; 16];
                let mut b = [0u8; 16];
                a.copy_from_slice(&h[8..24]);
                b.copy_from_slice(&h[24..40]);
                (IpAddr::from(a), IpAddr::from(b), h[6], Some(40))
            }
            _ => return None,
        };
        let (sport, dport) = match (proto, l4) {
            (6 | 17, Some(off)) => packet.get(off..off + 4).map_or((0, 0), |p| {
                (
                    u16::from_be_bytes([p[0], p[1]]),
                    u16::from_be_bytes([p[2], p[3]]),
                )
            }),
            _ => (0, 0),
        };
        Some(Self {
            src,
            dst,
            proto,
            sport,
            dport,
        })
    }
}

/// What the core decided for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered into TUN: `segments` packets (more than one for a received super-frame cut
    /// into segments); `merged` when it went into a coalesced super-packet.
    Deliver {
        /// Written as part of a merged super-packet.
        merged: bool,
        /// Packets it was cut into (1 when it was not).
        segments: u32,
    },
    /// Dropped with this reason.
    Drop(DropReason),
    /// Dropped with this reason, and an ICMP error sent back into TUN.
    Icmp(DropReason),
    /// Sent to the peer owning `subnet`, as `segments` datagrams (more than one for a
    /// super-packet).
    Send {
        /// The peer's subnet (`None` if the table changed under the lookup).
        subnet: Option<IpNet>,
        /// Datagrams it went out as.
        segments: u32,
    },
}

impl Verdict {
    /// Returns the verdict's name: `deliver`, `merge`, `drop`, `icmp` or `send`.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Deliver { merged: true, .. } => "merge",
            Self::Deliver { .. } => "deliver",
            Self::Drop(_) => "drop",
            Self::Icmp(_) => "icmp",
            Self::Send { .. } => "send",
        }
    }

    /// Returns the drop reason, for a drop or an ICMP error.
    pub const fn reason(&self) -> Option<DropReason> {
        match self {
            Self::Drop(r) | Self::Icmp(r) => Some(*r),
            _ => None,
        }
    }
}

/// One verdict, as a fixed-size value (no allocation to make, copy or queue it).
#[derive(Debug, Clone, Copy)]
pub struct Event {
    /// When, in nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// The worker that decided.
    pub worker: u16,
    /// Which way the packet was going.
    pub dir: Direction,
    /// The inner packet's flow, when its header could be read.
    pub flow: Option<Flow>,
    /// The inner packet's length (the whole datagram's for a read dropped before it was cut).
    pub len: u32,
    /// The underlay endpoint: the peer sent to, or the sender received from.
    pub outer: Option<SocketAddr>,
    /// What was decided.
    pub verdict: Verdict,
    /// Bytes of the inner packet in `bytes`.
    pub cap_len: u16,
    /// The first [`SNAPLEN`] bytes of the inner packet.
    pub bytes: [u8; SNAPLEN],
}

impl Event {
    /// Makes an event now for `packet` (the inner packet, or what is known of it).
    fn new(
        worker: usize,
        dir: Direction,
        packet: &[u8],
        outer: Option<SocketAddr>,
        verdict: Verdict,
    ) -> Self {
        let cap = packet.len().min(SNAPLEN);
        let mut bytes = [0u8; SNAPLEN];
        bytes[..cap].copy_from_slice(&packet[..cap]);
        Self {
            time_ns: now_ns(),
            worker: u16::try_from(worker).unwrap_or(u16::MAX),
            dir,
            flow: Flow::parse(packet),
            len: u32::try_from(packet.len()).unwrap_or(u32::MAX),
            outer,
            verdict,
            cap_len: u16::try_from(cap).unwrap_or(0),
            bytes,
        }
    }

    /// Returns the captured bytes of the inner packet.
    pub fn captured(&self) -> &[u8] {
        &self.bytes[..usize::from(self.cap_len).min(SNAPLEN)]
    }
}

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// One attached trace: its filter, a bounded ring per worker, and what did not fit.
#[derive(Debug)]
pub struct Session {
    filter: Filter,
    rings: Box<[SyncSender<Event>]>,
    lost: AtomicU64,
}

impl Session {
    /// Returns how many matching events did not fit a ring so far.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    fn offer(&self, worker: usize, event: &Event) {
        if !self.filter.matches(event) {
            return;
        }
        // The error hands the event back; only whether it was queued matters here.
        let queued = self.rings.get(worker).is_some_and(|ring| {
            matches!(
                ring.try_send(*event),
                Ok(()) | Err(TrySendError::Disconnected(_))
            )
        });
        if !queued {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The reading end of an attached trace; dropping it (or calling [`Hub::detach`]) detaches.
#[derive(Debug)]
pub struct Attached {
    /// The session, for its lost count.
    pub session: Arc<Session>,
    /// One receiver per worker.
    pub rings: Vec<Receiver<Event>>,
}

impl Attached {
    /// Moves every waiting event into `out`, worker by worker. Returns how many.
    pub fn drain(&self, out: &mut Vec<Event>) -> usize {
        let before = out.len();
        for ring in &self.rings {
            out.extend(ring.try_iter());
        }
        out.len() - before
    }
}

/// A drop remembered for `fustian show`.
#[derive(Debug, Clone, Copy)]
pub struct RecentDrop {
    /// When, in nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// The worker that dropped it.
    pub worker: u16,
    /// Which way it was going.
    pub dir: Direction,
    /// Why.
    pub reason: DropReason,
    /// Its inner flow, when readable.
    pub flow: Option<Flow>,
    /// The underlay endpoint (the sender, or the peer it was for).
    pub outer: Option<SocketAddr>,
}

/// A worker's recent drops, at most [`RECENT_DROPS`]: a new one takes a free slot; when all
/// are taken, it replaces the oldest drop of a reason that holds at least
/// [`RECENT_PER_REASON`] slots (its own, if its reason does), else the oldest of all. A flood
/// of one kind (datagrams from anyone, say) thus fills the ring only while nothing else
/// happens, and cannot push out the last drops of every other kind.
#[derive(Debug)]
struct RecentRing {
    drops: [Option<RecentDrop>; RECENT_DROPS],
    /// Each slot's place in the order of arrival (the wall clock may step back).
    order: [u64; RECENT_DROPS],
    /// The next drop's place.
    next: u64,
}

/// The slots of a worker's recent drops that any one reason is sure to keep.
pub const RECENT_PER_REASON: usize = RECENT_DROPS / 4;

impl RecentRing {
    /// Where `reason`'s next drop goes (one pass to count, one to choose: a drop costs the
    /// same whatever mix of reasons fills the ring).
    fn slot_for(&self, reason: DropReason) -> usize {
        if let Some(free) = self.drops.iter().position(Option::is_none) {
            return free;
        }
        let mut count = [0u8; crate::metrics::DROP_REASONS];
        for d in self.drops.iter().flatten() {
            count[d.reason.index()] = count[d.reason.index()].saturating_add(1);
        }
        let crowded = |r: DropReason| usize::from(count[r.index()]) >= RECENT_PER_REASON;
        let own = crowded(reason);
        let mut victim: Option<usize> = None;
        let mut any = 0;
        for (i, d) in self.drops.iter().enumerate() {
            let Some(d) = d else { continue };
            if self.order[i] < self.order[any] {
                any = i;
            }
            let eligible = if own {
                d.reason == reason
            } else {
                crowded(d.reason)
            };
            if eligible && victim.is_none_or(|v| self.order[i] < self.order[v]) {
                victim = Some(i);
            }
        }
        victim.unwrap_or(any)
    }
}

/// What every worker's [`Tap`] and the trace server share: the attached sessions and the
/// recent drops.
#[derive(Debug)]
pub struct Hub {
    armed: AtomicBool,
    sessions: ArcSwap<Vec<Arc<Session>>>,
    attach: Mutex<()>,
    recent: Box<[Mutex<RecentRing>]>,
}

impl Hub {
    /// Makes a hub for `workers` workers, with nothing attached.
    pub fn new(workers: usize) -> Self {
        Self {
            armed: AtomicBool::new(false),
            sessions: ArcSwap::from_pointee(Vec::new()),
            attach: Mutex::new(()),
            recent: (0..workers.max(1))
                .map(|_| {
                    Mutex::new(RecentRing {
                        drops: [None; RECENT_DROPS],
                        order: [0; RECENT_DROPS],
                        next: 0,
                    })
                })
                .collect(),
        }
    }

    /// Attaches a trace with `filter`: every worker offers it matching events from its next
    /// call on. Returns `None` when [`MAX_SESSIONS`] are attached already.
    pub fn attach(&self, filter: Filter) -> Option<Attached> {
        let _guard = self
            .attach
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = self.sessions.load_full();
        if current.len() >= MAX_SESSIONS {
            return None;
        }
        let workers = self.recent.len();
        let (senders, rings): (Vec<_>, Vec<_>) = (0..workers)
            .map(|_| sync_channel(ring_events(workers)))
            .unzip();
        let session = Arc::new(Session {
            filter,
            rings: senders.into_boxed_slice(),
            lost: AtomicU64::new(0),
        });
        let mut next = (*current).clone();
        next.push(Arc::clone(&session));
        self.sessions.store(Arc::new(next));
        self.armed.store(true, Ordering::Relaxed);
        Some(Attached { session, rings })
    }

    /// Detaches `attached`'s session; with none left, the workers stop building events.
    pub fn detach(&self, attached: &Attached) {
        let _guard = self
            .attach
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let next: Vec<_> = self
            .sessions
            .load()
            .iter()
            .filter(|s| !Arc::ptr_eq(s, &attached.session))
            .cloned()
            .collect();
        self.armed.store(!next.is_empty(), Ordering::Relaxed);
        self.sessions.store(Arc::new(next));
    }

    /// Returns how many traces are attached.
    pub fn attached(&self) -> usize {
        self.sessions.load().len()
    }

    /// Returns every worker's remembered drops, oldest first.
    pub fn recent(&self) -> Vec<RecentDrop> {
        let mut all: Vec<RecentDrop> = self
            .recent
            .iter()
            .flat_map(|ring| {
                let ring = ring
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                ring.drops.iter().flatten().copied().collect::<Vec<_>>()
            })
            .collect();
        all.sort_by_key(|d| d.time_ns);
        all
    }

    fn remember(&self, event: &Event, reason: DropReason) {
        // A reader holding the lock costs this drop its entry, never the worker a wait.
        let Some(Ok(mut ring)) = self
            .recent
            .get(usize::from(event.worker))
            .map(Mutex::try_lock)
        else {
            return;
        };
        let at = ring.slot_for(reason);
        ring.drops[at] = Some(RecentDrop {
            time_ns: event.time_ns,
            worker: event.worker,
            dir: event.dir,
            reason,
            flow: event.flow,
            outer: event.outer,
        });
        ring.order[at] = ring.next;
        ring.next = ring.next.wrapping_add(1);
    }
}

/// Whether `e` only says "not now" (a non-blocking or timed-out read or write, a signal): the
/// trace socket's readers and writers try again.
pub(crate) fn try_again(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

/// A worker's end of the [`Hub`], held by its datapath core.
#[derive(Debug)]
pub struct Tap {
    hub: Arc<Hub>,
    worker: usize,
    /// Whether a trace was attached at the start of this batch.
    armed: bool,
    sessions: Option<Arc<Vec<Arc<Session>>>>,
    /// The reason of the last drop the core counted.
    last_drop: Option<DropReason>,
}

impl Tap {
    /// Makes worker `worker`'s tap into `hub`.
    pub const fn new(hub: Arc<Hub>, worker: usize) -> Self {
        Self {
            hub,
            worker,
            armed: false,
            sessions: None,
            last_drop: None,
        }
    }

    /// Starts a batch of core calls ([`crate::datapath::Core::begin_batch`]): one relaxed load
    /// tells whether anything is attached.
    #[inline]
    pub fn begin(&mut self) {
        self.armed = self.hub.armed.load(Ordering::Relaxed);
        if self.armed {
            self.sessions = Some(self.hub.sessions.load_full());
        } else if self.sessions.is_some() {
            self.sessions = None;
        }
    }

    /// Returns whether a trace was attached at the start of this batch.
    #[inline]
    pub const fn armed(&self) -> bool {
        self.armed
    }

    /// Notes the reason of a drop the core just counted.
    #[inline]
    pub const fn dropped(&mut self, reason: DropReason) {
        self.last_drop = Some(reason);
    }

    /// Takes the reason noted by [`Tap::dropped`] (`tx_error` if none was: not reached).
    pub const fn take_drop(&mut self) -> DropReason {
        match self.last_drop.take() {
            Some(r) => r,
            None => DropReason::TxError,
        }
    }

    /// Records the verdict on a packet read from TUN (`packet`: the inner packet).
    pub fn tun_read(
        &mut self,
        snap: &Snapshot,
        packet: &[u8],
        outer: Option<SocketAddr>,
        verdict: Verdict,
    ) {
        let verdict = match verdict {
            Verdict::Send { segments, .. } => Verdict::Send {
                subnet: Flow::parse(packet)
                    .and_then(|f| snap.lookup(f.dst))
                    .map(|(_, p)| p.subnet),
                segments,
            },
            other => other,
        };
        self.record(Direction::TunToUdp, packet, outer, verdict);
    }

    /// Records the verdict on a datagram from `from` whose inner packet is `packet`.
    pub fn datagram(&mut self, packet: &[u8], from: Option<SocketAddr>, verdict: Verdict) {
        self.record(Direction::UdpToTun, packet, from, verdict);
    }

    fn record(
        &mut self,
        dir: Direction,
        packet: &[u8],
        outer: Option<SocketAddr>,
        verdict: Verdict,
    ) {
        let reason = verdict.reason();
        if !self.armed && reason.is_none() {
            return;
        }
        let event = Event::new(self.worker, dir, packet, outer, verdict);
        if let Some(reason) = reason {
            self.hub.remember(&event, reason);
        }
        if let Some(sessions) = &self.sessions {
            for s in sessions.iter() {
                s.offer(self.worker, &event);
            }
        }
    }
}

/// One line of the trace stream: an event, a lost count, or an error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// Event time, nanoseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_ns: Option<u64>,
    /// The worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<u16>,
    /// `tun>udp` or `udp>tun`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<Direction>,
    /// Inner source address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<IpAddr>,
    /// Inner destination address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<IpAddr>,
    /// Inner protocol number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<u8>,
    /// Inner source port (TCP/UDP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    /// Inner destination port (TCP/UDP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    /// Inner packet length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub len: Option<u32>,
    /// Underlay endpoint: the peer sent to, or the sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outer: Option<SocketAddr>,
    /// `send`, `deliver`, `merge`, `icmp` or `drop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// Drop reason (the `drop_*` counter name without its prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Sends: the peer's subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_subnet: Option<IpNet>,
    /// Segments or datagrams, when more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<u32>,
    /// The captured inner bytes, hex, when the client asked for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet: Option<String>,
    /// Events of this trace lost so far (a full ring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    /// The node refused the trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Line {
    /// Converts an event; `packet` adds its captured bytes.
    pub fn from_event(e: &Event, packet: bool) -> Self {
        let (segments, subnet) = match e.verdict {
            Verdict::Send { subnet, segments } => (segments, subnet),
            Verdict::Deliver { segments, .. } => (segments, None),
            _ => (1, None),
        };
        Self {
            time_ns: Some(e.time_ns),
            worker: Some(e.worker),
            dir: Some(e.dir),
            src: e.flow.map(|f| f.src),
            dst: e.flow.map(|f| f.dst),
            proto: e.flow.map(|f| f.proto),
            sport: e.flow.map(|f| f.sport).filter(|p| *p != 0),
            dport: e.flow.map(|f| f.dport).filter(|p| *p != 0),
            len: Some(e.len),
            outer: e.outer,
            verdict: Some(e.verdict.name().to_owned()),
            reason: e.verdict.reason().map(|r| r.name().to_owned()),
            peer_subnet: subnet,
            segments: (segments > 1).then_some(segments),
            packet: packet.then(|| hex(e.captured())),
            ..Self::default()
        }
    }
}

/// Returns the recent drops as `/status` lists them: oldest first, each with its time
/// (nanoseconds since the Unix epoch), worker, direction, reason, flow and underlay endpoint.
pub fn recent_json(drops: &[RecentDrop]) -> serde_json::Value {
    drops
        .iter()
        .map(|d| {
            serde_json::json!({
                "time_ns": d.time_ns,
                "worker": d.worker,
                "dir": d.dir,
                "reason": d.reason.name(),
                "src": d.flow.map(|f| f.src),
                "dst": d.flow.map(|f| f.dst),
                "proto": d.flow.map(|f| f.proto),
                "sport": d.flow.map(|f| f.sport).filter(|p| *p != 0),
                "dport": d.flow.map(|f| f.dport).filter(|p| *p != 0),
                "outer": d.outer,
            })
        })
        .collect()
}

/// Returns `bytes` as lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Reads lower-case or upper-case hex; `None` on an odd length or another character.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(s, 16).ok()
        })
        .collect()
}

/// Returns the name of an IP protocol number as the filter and the text output spell it.
pub const fn proto_name(proto: u8) -> Option<&'static str> {
    match proto {
        1 => Some("icmp"),
        6 => Some("tcp"),
        17 => Some("udp"),
        58 => Some("icmp6"),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
