//! Synthetic table updates (`--table-churn`): the real peers plus a varying set of peers in
//! subnets of the network that nobody uses, published at a fixed rate. The extra peers carry
//! no traffic; the updates show that publishing never disturbs forwarding. For tests and
//! measurements, never part of a production setup.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::ControlPlane;
use crate::config::NodeConfig;
use crate::table::{Peer, Snapshot, Table};
use crate::wire::MacAddress;

/// The generator: the node's configuration, the spare peers and the publishing period.
#[derive(Debug)]
struct Churn {
    config: NodeConfig,
    period: Duration,
    spare: Vec<Peer>,
}

/// Returns a source publishing `rate` synthetic updates a second, or `None` when `rate` is 0
/// or the network is not IPv4.
pub fn source(config: NodeConfig, rate: u32) -> Option<ControlPlane> {
    let churn = Churn::new(config, rate)?;
    Some(ControlPlane {
        name: "churn",
        metrics: None,
        run: Box::new(move |table, stop| churn.run(&table, &stop)),
    })
}

impl Churn {
    fn new(config: NodeConfig, rate: u32) -> Option<Self> {
        if rate == 0 {
            return None;
        }
        let ipnet::IpNet::V4(net) = config.network else {
            return None;
        };
        let taken = |n: &ipnet::IpNet| {
            config.subnet.contains(n)
                || n.contains(&config.subnet)
                || config
                    .peers
                    .iter()
                    .any(|p| p.subnet.contains(n) || n.contains(&p.subnet))
        };
        // The highest /24s (or the network's own length, if longer) of the network.
        let len = net.prefix_len().max(24);
        let spare: Vec<_> = net
            .subnets(len)
            .ok()?
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .map(ipnet::IpNet::V4)
            .filter(|n| !taken(n))
            .take(32)
            .zip(0u8..)
            .map(|(subnet, i)| Peer {
                subnet,
                endpoint: SocketAddr::new(
                    Ipv4Addr::new(192, 0, 2, 200u8.wrapping_add(i)).into(),
                    config.port,
                ),
                vtep_mac: Some(MacAddress([0x02, 0xff, 0, 0, 0, i])),
            })
            .collect();
        tracing::warn!(
            rate,
            spare = spare.len(),
            "publishing synthetic table updates"
        );
        Some(Self {
            period: Duration::from_secs_f64(1.0 / f64::from(rate)),
            spare,
            config,
        })
    }

    /// The table of update `round`: the real peers and the first `round mod (spares + 1)`
    /// spares.
    fn snapshot(&self, round: u64) -> Snapshot {
        let mut peers = self.config.peers.clone();
        let extra = usize::try_from(round % (self.spare.len() as u64 + 1)).unwrap_or(0);
        peers.extend(self.spare.iter().take(extra).copied());
        // The real peers are valid (checked at start) and the spares overlap none of them.
        Snapshot::new(self.config.local_subnets(), peers).unwrap_or_default()
    }

    fn run(&self, table: &Table, stop: &AtomicBool) {
        let mut round = 0u64;
        while !stop.load(Ordering::Relaxed) {
            round += 1;
            table.publish(self.snapshot(round));
            std::thread::sleep(self.period);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NodeConfig {
        let raw = crate::config::RawNode {
            network: Some("10.244.0.0/16".to_owned()),
            subnet: Some("10.244.1.0/24".to_owned()),
            public_ip: Some("192.0.2.1".to_owned()),
            ..crate::config::RawNode::default()
        };
        NodeConfig::resolve(&raw, None).expect("valid flags")
    }

    #[test]
    fn off_at_rate_zero_and_spares_avoid_the_real_subnets() {
        assert!(source(config(), 0).is_none());
        let churn = Churn::new(config(), 100).expect("on");
        assert_eq!(churn.spare.len(), 32);
        assert_eq!(churn.period, Duration::from_millis(10));
        let local: ipnet::IpNet = "10.244.1.0/24".parse().expect("literal");
        assert!(churn.spare.iter().all(|p| !p.subnet.contains(&local)));
        // Every round makes a valid table, the real peers always in it.
        for round in 0..40 {
            let snap = churn.snapshot(round);
            assert_eq!(
                snap.peers().len(),
                usize::try_from(round % 33).expect("small")
            );
        }
    }
}
