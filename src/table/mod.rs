//! The subnet-to-peer table and how it is shared between the control plane and the workers.
//!
//! A [`Snapshot`] is immutable: it maps pod subnets (IPv4 and IPv6) to [`Peer`]s, knows this
//! node's own subnets, and the set of peer public addresses that may send to this node. The
//! control plane builds a new snapshot and publishes it with [`Table::publish`], an atomic
//! pointer swap (`arc-swap`). Packet threads call [`Table::load`] once per batch: no lock, no
//! allocation, and a publish never stalls them. A snapshot is released when the last batch that
//! loaded it ends, so packets for subnets that did not change are never lost across an update.
//!
//! What this module does not do: decide what happens to a packet (that is [`crate::datapath`]),
//! or know where leases come from (that is [`crate::control`]).

pub mod lpm;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::{ArcSwap, Guard};
use ipnet::IpNet;
use rustc_hash::FxHashSet;

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

/// Traffic to and from one peer. Kept across table updates for as long as the peer keeps its
/// subnet and endpoint ([`Table::publish`] carries it over), so a counter is not reset by an
/// unrelated change.
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Packets handed to the socket for this peer (segments, with offloads).
    pub tx_packets: AtomicU64,
    /// Their inner bytes.
    pub tx_bytes: AtomicU64,
    /// Packets from this peer that passed every check.
    pub rx_packets: AtomicU64,
    /// Their inner bytes.
    pub rx_bytes: AtomicU64,
}

impl PeerStats {
    /// Counts packets sent to the peer (relaxed).
    #[inline]
    pub fn add_tx(&self, _worker: usize, packets: u64, bytes: u64) {
        self.tx_packets.fetch_add(packets, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts packets received from the peer (relaxed).
    #[inline]
    pub fn add_rx(&self, _worker: usize, packets: u64, bytes: u64) {
        self.rx_packets.fetch_add(packets, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
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
            snap.stats.push(Arc::default());
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

    /// Returns the traffic counters of peer `index` (as [`Self::lookup`] returns it).
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

/// The shared handle: the current snapshot behind an atomic pointer.
#[derive(Debug)]
pub struct Table {
    current: ArcSwap<Snapshot>,
    next_generation: AtomicU64,
}

impl Table {
    /// Creates a table holding `snapshot` as generation 1.
    pub fn new(mut snapshot: Snapshot) -> Self {
        snapshot.generation = 1;
        Self {
            current: ArcSwap::from_pointee(snapshot),
            next_generation: AtomicU64::new(2),
        }
    }

    /// Returns the current snapshot. Lock-free; hold the guard for one batch at most.
    #[inline]
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Replaces the current snapshot; returns the generation it was given. Peers that keep
    /// their subnet and endpoint keep their [`PeerStats`].
    pub fn publish(&self, mut snapshot: Snapshot) -> u64 {
        let old = self.current.load();
        if !old.peers.is_empty() && !snapshot.peers.is_empty() {
            let kept: rustc_hash::FxHashMap<(IpNet, SocketAddr), &Arc<PeerStats>> = old
                .peers
                .iter()
                .zip(&old.stats)
                .map(|(p, s)| ((p.subnet, p.endpoint), s))
                .collect();
            for (p, s) in snapshot.peers.iter().zip(snapshot.stats.iter_mut()) {
                if let Some(o) = kept.get(&(p.subnet, p.endpoint)) {
                    *s = Arc::clone(o);
                }
            }
        }
        drop(old);
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        snapshot.generation = generation;
        self.current.store(Arc::new(snapshot));
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
        let table = Table::new(Snapshot::new(local.clone(), vec![b]).expect("valid"));
        table
            .load()
            .peer_stats(0)
            .expect("peer 0")
            .add_tx(0, 3, 300);
        // Adding c keeps b's counters; c starts at zero.
        table.publish(Snapshot::new(local.clone(), vec![c, b]).expect("valid"));
        let snap = table.load();
        assert_eq!(
            snap.peer_stats(1)
                .expect("b")
                .tx_packets
                .load(Ordering::Relaxed),
            3
        );
        assert_eq!(
            snap.peer_stats(0)
                .expect("c")
                .tx_bytes
                .load(Ordering::Relaxed),
            0
        );
        drop(snap);
        // b moving to another endpoint is another peer: fresh counters.
        let moved = peer("10.244.2.0/24", "192.0.2.9");
        table.publish(Snapshot::new(local, vec![moved]).expect("valid"));
        assert_eq!(
            table
                .load()
                .peer_stats(0)
                .expect("b")
                .tx_packets
                .load(Ordering::Relaxed),
            0
        );
        assert!(table.load().peer_stats(1).is_none());
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
        let table = Table::new(Snapshot::default());
        let old = table.load();
        assert_eq!(old.generation(), 1);
        let snap = Snapshot::new(vec![], vec![peer("10.244.2.0/24", "192.0.2.2")]).expect("ok");
        assert_eq!(table.publish(snap), 2);
        // The guard taken before the swap still sees the old snapshot.
        assert!(old.peers().is_empty());
        assert_eq!(table.load().peers().len(), 1);
    }
}
