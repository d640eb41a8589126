//! The subnet-to-peer table and how it is shared between the control plane and the workers.
//!
//! A [`Snapshot`] is immutable: it maps pod subnets (IPv4 and IPv6) to [`Peer`]s, knows this
//! node's own subnets, and the set of peer public addresses that may send to this node. The
//! control plane builds a new snapshot and publishes it with [`Table::publish`], an atomic
//! pointer swap (`arc-swap`). Packet threads call [`Table::load`] once per batch: no lock, no
//! allocation, and a publish never stalls them. A snapshot is released when the last batch that
//! loaded it ends, so packets for subnets that did not change are never lost across an update.
//!
//! What this module does not do: decide what happens to a packet (that is [`crate::forward`]),
//! or know where leases come from (that is [`crate::control`]).

pub mod lpm;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use crossbeam_utils::CachePadded;
use ipnet::IpNet;
use rustc_hash::{FxHashMap, FxHashSet};

use self::lpm::Lpm;
use crate::wire::MacAddress;

/// A remote node: the pod subnet it owns and where its dataplane listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The pod subnet the peer owns (its lease).
    pub subnet: IpNet,
    /// The peer's public address and UDP port.
    pub endpoint: SocketAddr,
    /// The peer's VTEP MAC (VXLAN only): the inner Ethernet destination of frames to it.
    pub vtep_mac: Option<MacAddress>,
}

/// A table that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// Two peers claim the same subnet.
    #[error("subnet {subnet} is claimed by both {first} and {second}")]
    DuplicateSubnet {
        /// The subnet.
        subnet: IpNet,
        /// The first claimant.
        first: SocketAddr,
        /// The second claimant.
        second: SocketAddr,
    },
    /// A peer claims a subnet that overlaps this node's own.
    #[error("peer {endpoint} claims {subnet}, which overlaps this node's subnet {local}")]
    OverlapsLocal {
        /// The peer's subnet.
        subnet: IpNet,
        /// The peer.
        endpoint: SocketAddr,
        /// The local subnet it overlaps.
        local: IpNet,
    },
}

/// One worker's traffic to and from one peer. Only that worker writes it.
#[derive(Debug, Default)]
struct PeerBlock {
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
}

/// Traffic to and from one peer, kept per worker: one cache-padded block per worker, written
/// only by that worker (relaxed atomics, no shared line between workers), summed when read.
///
/// The bytes are the UDP payload bytes of the datagrams, the same bytes as the node's
/// `tx_bytes`/`rx_bytes`: the encapsulated packet with its encapsulation (the VXLAN header
/// and inner Ethernet header with `vxlan`; the bare inner packet with `udp`). Sent: datagrams
/// handed to the socket for the peer (each segment of a super-packet counts as one).
/// Received: datagrams from the peer that passed every check.
///
/// Kept across table updates for as long as the peer keeps its subnet and endpoint
/// ([`Table::publish`] carries it over), so a counter is not reset by an unrelated change; a
/// peer removed and put back with the same subnet and endpoint within [`RETIRED_FOR`] (a lease
/// deleted and written again) gets its counters back.
#[derive(Debug)]
pub struct PeerStats {
    blocks: Box<[CachePadded<PeerBlock>]>,
}

/// The sum of a peer's counters over every worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerTotals {
    /// Datagrams handed to the socket for this peer (segments, with offloads).
    pub tx_packets: u64,
    /// Their UDP payload bytes (encapsulation included).
    pub tx_bytes: u64,
    /// Datagrams from this peer that passed every check.
    pub rx_packets: u64,
    /// Their UDP payload bytes (encapsulation included).
    pub rx_bytes: u64,
}

impl PeerStats {
    /// Creates zeroed counters for `workers` workers (at least one).
    pub fn new(workers: usize) -> Self {
        Self {
            blocks: (0..workers.max(1))
                .map(|_| CachePadded::new(PeerBlock::default()))
                .collect(),
        }
    }

    /// Returns worker `worker`'s block; an index out of range folds onto block 0, as
    /// [`crate::metrics::Metrics::worker`] does.
    #[inline]
    fn block(&self, worker: usize) -> &PeerBlock {
        // `blocks` is never empty: `new` makes at least one.
        self.blocks.get(worker).unwrap_or(&self.blocks[0])
    }

    /// Counts `packets` datagrams of `bytes` UDP payload bytes sent to the peer by `worker`.
    #[inline]
    pub fn add_tx(&self, worker: usize, packets: u64, bytes: u64) {
        let b = self.block(worker);
        b.tx_packets.fetch_add(packets, Ordering::Relaxed);
        b.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts `packets` datagrams of `bytes` UDP payload bytes received from the peer by
    /// `worker`.
    #[inline]
    pub fn add_rx(&self, worker: usize, packets: u64, bytes: u64) {
        let b = self.block(worker);
        b.rx_packets.fetch_add(packets, Ordering::Relaxed);
        b.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Sums every worker's block.
    pub fn totals(&self) -> PeerTotals {
        let mut t = PeerTotals::default();
        for b in &*self.blocks {
            t.tx_packets = t
                .tx_packets
                .wrapping_add(b.tx_packets.load(Ordering::Relaxed));
            t.tx_bytes = t.tx_bytes.wrapping_add(b.tx_bytes.load(Ordering::Relaxed));
            t.rx_packets = t
                .rx_packets
                .wrapping_add(b.rx_packets.load(Ordering::Relaxed));
            t.rx_bytes = t.rx_bytes.wrapping_add(b.rx_bytes.load(Ordering::Relaxed));
        }
        t
    }

    /// Returns the number of worker blocks.
    pub fn workers(&self) -> usize {
        self.blocks.len()
    }
}

/// An immutable view of the overlay: local subnets and peers.
#[derive(Debug, Default)]
pub struct Snapshot {
    generation: u64,
    local: Vec<IpNet>,
    peers: Vec<Peer>,
    stats: Vec<Arc<PeerStats>>,
    v4: Lpm<u32, u32>,
    v6: Lpm<u128, u32>,
    senders: FxHashSet<IpAddr>,
}

impl Snapshot {
    /// Builds a snapshot for a node owning `local` subnets with the given peers.
    ///
    /// # Errors
    ///
    /// [`TableError`] when two peers claim the same subnet or a peer overlaps a local subnet.
    pub fn new(local: Vec<IpNet>, peers: Vec<Peer>) -> Result<Self, TableError> {
        let mut snap = Self {
            local,
            ..Self::default()
        };
        for peer in peers {
            let subnet = peer.subnet.trunc();
            if let Some(l) = snap
                .local
                .iter()
                .find(|l| l.contains(&subnet) || subnet.contains(*l))
            {
                return Err(TableError::OverlapsLocal {
                    subnet,
                    endpoint: peer.endpoint,
                    local: *l,
                });
            }
            let index = u32::try_from(snap.peers.len()).unwrap_or(u32::MAX);
            let previous = match subnet {
                IpNet::V4(n) => snap
                    .v4
                    .insert(u32::from(n.network()), n.prefix_len(), index),
                IpNet::V6(n) => snap
                    .v6
                    .insert(u128::from(n.network()), n.prefix_len(), index),
            };
            if let Some(prev) = previous {
                return Err(TableError::DuplicateSubnet {
                    subnet,
                    first: snap.peers[prev as usize].endpoint,
                    second: peer.endpoint,
                });
            }
            snap.senders.insert(peer.endpoint.ip());
            snap.peers.push(Peer { subnet, ..peer });
        }
        Ok(snap)
    }

    /// Returns the peer owning the longest prefix that contains `addr`, with its index.
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<(u32, &Peer)> {
        let index = match addr {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a)),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a)),
        }?;
        self.peers.get(index as usize).map(|p| (index, p))
    }

    /// Returns true when `addr` lies in one of this node's own subnets.
    #[inline]
    pub fn is_local(&self, addr: IpAddr) -> bool {
        self.local.iter().any(|n| n.contains(&addr))
    }

    /// Returns true when `addr` is the public address of some peer.
    #[inline]
    pub fn is_known_sender(&self, addr: IpAddr) -> bool {
        self.senders.contains(&addr)
    }

    /// Returns the peers in insertion order.
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// Returns the traffic counters of peer `index` (as [`Self::lookup`] returns it). A
    /// snapshot has counters once a [`Table`] holds it (none before).
    #[inline]
    pub fn peer_stats(&self, index: u32) -> Option<&PeerStats> {
        self.stats.get(index as usize).map(|s| &**s)
    }

    /// Returns this node's own subnets.
    pub fn local(&self) -> &[IpNet] {
        &self.local
    }

    /// Returns the generation number assigned when the snapshot was published.
    pub const fn generation(&self) -> u64 {
        self.generation
    }
}

/// How long the counters of a peer removed from the table are kept for its return.
pub const RETIRED_FOR: Duration = Duration::from_secs(5 * 60);

/// At most this many removed peers' counters are kept; beyond it the longest removed go first.
pub const RETIRED_MAX: usize = 4096;

/// The shared handle: the current snapshot behind an atomic pointer.
#[derive(Debug)]
pub struct Table {
    current: ArcSwap<Snapshot>,
    next_generation: AtomicU64,
    workers: usize,
    /// Counters of removed peers; held for the whole of a publish, so publishes are serial.
    retired: Mutex<Retired>,
}

/// A peer's identity for its counters: its subnet and endpoint.
type PeerKey = (IpNet, SocketAddr);

/// Counters of peers that left the table, by subnet and endpoint, kept for [`RETIRED_FOR`]
/// (at most [`RETIRED_MAX`] of them) so a peer that comes back continues its series rather
/// than restarting it at zero, which a scraper would take for a counter reset. Touched only by
/// [`Table::publish`], never on the packet path.
#[derive(Debug, Default)]
struct Retired {
    /// The counters and when they were retired.
    by_peer: FxHashMap<PeerKey, (Instant, Arc<PeerStats>)>,
    /// Retirements, oldest first; one whose peer came back (or was retired again since) is
    /// stale and skipped when it reaches the front.
    order: VecDeque<(Instant, PeerKey)>,
}

impl Retired {
    /// Takes back the counters of `key`, if kept.
    fn take(&mut self, key: &PeerKey) -> Option<Arc<PeerStats>> {
        self.by_peer.remove(key).map(|(_, stats)| stats)
    }

    /// Keeps the counters of `key`, removed at `now`.
    fn put(&mut self, key: PeerKey, stats: Arc<PeerStats>, now: Instant) {
        self.by_peer.insert(key, (now, stats));
        self.order.push_back((now, key));
    }

    /// Drops what was retired [`RETIRED_FOR`] ago or longer, then the oldest beyond
    /// [`RETIRED_MAX`] (stale retirements count towards twice that, so churn cannot grow them).
    fn expire(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.order.front() {
            let over = self.by_peer.len() > RETIRED_MAX || self.order.len() > 2 * RETIRED_MAX;
            if !over && now.saturating_duration_since(at) < RETIRED_FOR {
                break;
            }
            self.order.pop_front();
            if self.by_peer.get(&key).is_some_and(|&(t, _)| t == at) {
                self.by_peer.remove(&key);
            }
        }
    }
}

impl Table {
    /// Creates a table holding `snapshot` as generation 1, whose peer counters have one block
    /// for each of `workers` workers (at least one).
    pub fn new(mut snapshot: Snapshot, workers: usize) -> Self {
        let workers = workers.max(1);
        snapshot.generation = 1;
        snapshot.stats = (0..snapshot.peers.len())
            .map(|_| Arc::new(PeerStats::new(workers)))
            .collect();
        Self {
            current: ArcSwap::from_pointee(snapshot),
            next_generation: AtomicU64::new(2),
            workers,
            retired: Mutex::new(Retired::default()),
        }
    }

    /// Returns the number of workers the peer counters have blocks for.
    pub const fn workers(&self) -> usize {
        self.workers
    }

    /// Returns the current snapshot. Lock-free; hold the guard for one batch at most.
    #[inline]
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Replaces the current snapshot; returns the generation it was given. Peers that keep
    /// their subnet and endpoint keep their [`PeerStats`]; a peer removed within
    /// [`RETIRED_FOR`] and back with the same subnet and endpoint gets its counters back; the
    /// others get fresh ones with a block per worker. Removed peers' counters are kept aside
    /// (not in the snapshot, so not shown) for that time, at most [`RETIRED_MAX`] of them.
    pub fn publish(&self, snapshot: Snapshot) -> u64 {
        self.publish_at(snapshot, Instant::now())
    }

    /// [`Self::publish`] at time `now`.
    fn publish_at(&self, mut snapshot: Snapshot, now: Instant) -> u64 {
        let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        // What was kept too long is dropped before a peer back may take it, and what this
        // publish retires counts towards the bound after.
        retired.expire(now);
        let old = self.current.load();
        let kept: FxHashMap<PeerKey, &Arc<PeerStats>> = old
            .peers
            .iter()
            .zip(&old.stats)
            .map(|(p, s)| ((p.subnet, p.endpoint), s))
            .collect();
        snapshot.stats = snapshot
            .peers
            .iter()
            .map(|p| {
                let key = (p.subnet, p.endpoint);
                kept.get(&key)
                    .map(|&o| Arc::clone(o))
                    .or_else(|| retired.take(&key))
                    .unwrap_or_else(|| Arc::new(PeerStats::new(self.workers)))
            })
            .collect();
        let present: FxHashSet<PeerKey> = snapshot
            .peers
            .iter()
            .map(|p| (p.subnet, p.endpoint))
            .collect();
        for (key, stats) in kept {
            if !present.contains(&key) {
                retired.put(key, Arc::clone(stats), now);
            }
        }
        retired.expire(now);
        drop(old);
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        snapshot.generation = generation;
        self.current.store(Arc::new(snapshot));
        drop(retired);
        generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_stats_survive_unrelated_updates() {
        let local: Vec<IpNet> = vec!["10.244.1.0/24".parse().expect("literal")];
        let b = peer("10.244.2.0/24", "192.0.2.2");
        let c = peer("10.244.3.0/24", "192.0.2.3");
        let table = Table::new(Snapshot::new(local.clone(), vec![b]).expect("valid"), 2);
        table
            .load()
            .peer_stats(0)
            .expect("peer 0")
            .add_tx(0, 2, 200);
        table
            .load()
            .peer_stats(0)
            .expect("peer 0")
            .add_tx(1, 1, 100);
        // Adding c keeps b's counters; c starts at zero with a block per worker.
        table.publish(Snapshot::new(local.clone(), vec![c, b]).expect("valid"));
        let snap = table.load();
        let b_totals = snap.peer_stats(1).expect("b").totals();
        assert_eq!((b_totals.tx_packets, b_totals.tx_bytes), (3, 300));
        let c_stats = snap.peer_stats(0).expect("c");
        assert_eq!(c_stats.totals(), PeerTotals::default());
        assert_eq!(c_stats.workers(), 2);
        drop(snap);
        // b moving to another endpoint is another peer: fresh counters.
        let moved = peer("10.244.2.0/24", "192.0.2.9");
        table.publish(Snapshot::new(local, vec![moved]).expect("valid"));
        assert_eq!(
            table.load().peer_stats(0).expect("b").totals(),
            PeerTotals::default()
        );
        assert!(table.load().peer_stats(1).is_none());
    }

    #[test]
    fn a_peer_removed_and_put_back_continues_its_counters() {
        let local: Vec<IpNet> = vec!["10.244.1.0/24".parse().expect("literal")];
        let b = peer("10.244.2.0/24", "192.0.2.2");
        let c = peer("10.244.3.0/24", "192.0.2.3");
        let table = Table::new(Snapshot::new(local.clone(), vec![b, c]).expect("valid"), 2);
        let snap = table.load();
        snap.peer_stats(0).expect("b").add_tx(1, 5, 500);
        snap.peer_stats(1).expect("c").add_rx(0, 7, 700);
        drop(snap);
        let t0 = Instant::now();
        // b's lease deleted, then written back: b continues where it was.
        table.publish_at(Snapshot::new(local.clone(), vec![c]).expect("valid"), t0);
        assert_eq!(table.load().peers().len(), 1, "a removed peer is not shown");
        table.publish_at(Snapshot::new(local.clone(), vec![c, b]).expect("valid"), t0);
        let back = table.load().peer_stats(1).expect("b").totals();
        assert_eq!((back.tx_packets, back.tx_bytes), (5, 500));
        // Every peer removed at once, then back: both continue.
        table.publish_at(Snapshot::new(local.clone(), vec![]).expect("valid"), t0);
        table.publish_at(Snapshot::new(local.clone(), vec![b, c]).expect("valid"), t0);
        let snap = table.load();
        assert_eq!(snap.peer_stats(0).expect("b").totals().tx_packets, 5);
        assert_eq!(snap.peer_stats(1).expect("c").totals().rx_bytes, 700);
        drop(snap);
        // Back after the grace period: a new series.
        table.publish_at(Snapshot::new(local.clone(), vec![c]).expect("valid"), t0);
        let later = t0 + RETIRED_FOR;
        table.publish_at(
            Snapshot::new(local.clone(), vec![c, b]).expect("valid"),
            later,
        );
        assert_eq!(
            table.load().peer_stats(1).expect("b").totals(),
            PeerTotals::default()
        );
        // Bounded: the longest removed are dropped first.
        let many: Vec<Peer> = (0..=RETIRED_MAX)
            .map(|i| {
                let [_, _, hi, lo] = u32::try_from(i).expect("small").to_be_bytes();
                Peer {
                    subnet: IpNet::new(IpAddr::from([10, 100, hi, lo]), 32).expect("prefix"),
                    ..peer("10.244.9.0/24", "192.0.2.9")
                }
            })
            .collect();
        table.publish_at(Snapshot::new(local.clone(), many).expect("valid"), later);
        table.publish_at(Snapshot::new(local, vec![]).expect("valid"), later);
        let retired = table.retired.lock().expect("not poisoned");
        assert_eq!(retired.by_peer.len(), RETIRED_MAX);
        for gone in [b, c] {
            let key = (gone.subnet, gone.endpoint);
            assert!(!retired.by_peer.contains_key(&key), "the oldest go first");
        }
    }

    #[test]
    fn peer_stats_sum_every_worker() {
        let stats = PeerStats::new(3);
        for w in 0..3 {
            stats.add_tx(w, 1, 10);
            stats.add_rx(w, 2, 20);
        }
        assert_eq!(
            stats.totals(),
            PeerTotals {
                tx_packets: 3,
                tx_bytes: 30,
                rx_packets: 6,
                rx_bytes: 60
            }
        );
    }

    #[test]
    fn peer_stats_fold_out_of_range_workers() {
        let stats = PeerStats::new(2);
        stats.add_tx(2, 1, 1);
        stats.add_rx(usize::MAX, 1, 7);
        let t = stats.totals();
        assert_eq!((t.tx_packets, t.rx_bytes), (1, 7));
        // No workers asked for still gives one block.
        let one = PeerStats::new(0);
        assert_eq!(one.workers(), 1);
        one.add_tx(5, 4, 4);
        assert_eq!(one.totals().tx_packets, 4);
    }

    #[test]
    fn peer_stats_with_the_table_s_worker_count() {
        let local: Vec<IpNet> = vec!["10.244.1.0/24".parse().expect("literal")];
        let bare =
            Snapshot::new(local.clone(), vec![peer("10.244.2.0/24", "192.0.2.2")]).expect("valid");
        assert!(
            bare.peer_stats(0).is_none(),
            "no counters before a table holds it"
        );
        let table = Table::new(bare, 4);
        assert_eq!(table.workers(), 4);
        assert_eq!(table.load().peer_stats(0).expect("peer").workers(), 4);
        table.publish(
            Snapshot::new(local, vec![peer("10.244.3.0/24", "192.0.2.3")]).expect("valid"),
        );
        assert_eq!(table.load().peer_stats(0).expect("peer").workers(), 4);
    }

    fn peer(subnet: &str, ip: &str) -> Peer {
        Peer {
            subnet: subnet.parse().expect("subnet literal"),
            endpoint: SocketAddr::new(ip.parse().expect("ip literal"), 8285),
            vtep_mac: None,
        }
    }

    #[test]
    fn lookups_and_senders() {
        let local = vec!["10.244.1.0/24".parse().expect("literal")];
        let snap = Snapshot::new(
            local,
            vec![
                peer("10.244.2.0/24", "192.0.2.2"),
                peer("fd00:2::/64", "192.0.2.3"),
            ],
        )
        .expect("valid");
        let (index, p) = snap
            .lookup("10.244.2.9".parse().expect("literal"))
            .expect("route");
        assert_eq!(index, 0);
        assert_eq!(
            p.endpoint.ip(),
            "192.0.2.2".parse::<IpAddr>().expect("literal")
        );
        assert!(
            snap.lookup("10.244.3.1".parse().expect("literal"))
                .is_none()
        );
        assert_eq!(
            snap.lookup("fd00:2::5".parse().expect("literal"))
                .map(|x| x.0),
            Some(1)
        );
        assert!(snap.is_local("10.244.1.7".parse().expect("literal")));
        assert!(!snap.is_local("10.244.2.7".parse().expect("literal")));
        assert!(snap.is_known_sender("192.0.2.3".parse().expect("literal")));
        assert!(!snap.is_known_sender("192.0.2.9".parse().expect("literal")));
    }

    #[test]
    fn rejects_duplicates_and_overlap_with_local() {
        let local: Vec<IpNet> = vec!["10.244.1.0/24".parse().expect("literal")];
        let dup = Snapshot::new(
            local.clone(),
            vec![
                peer("10.244.2.0/24", "192.0.2.2"),
                peer("10.244.2.0/24", "192.0.2.3"),
            ],
        );
        assert!(matches!(dup, Err(TableError::DuplicateSubnet { .. })));
        let overlap = Snapshot::new(local, vec![peer("10.244.0.0/16", "192.0.2.2")]);
        assert!(matches!(overlap, Err(TableError::OverlapsLocal { .. })));
    }

    #[test]
    fn publish_swaps_and_counts_generations() {
        let table = Table::new(Snapshot::default(), 1);
        let old = table.load();
        assert_eq!(old.generation(), 1);
        let snap = Snapshot::new(vec![], vec![peer("10.244.2.0/24", "192.0.2.2")]).expect("ok");
        assert_eq!(table.publish(snap), 2);
        // The guard taken before the swap still sees the old snapshot.
        assert!(old.peers().is_empty());
        assert_eq!(table.load().peers().len(), 1);
    }
}
