//! With etcd (feature `etcd`): the node's own lease exists, carries its address and has a TTL;
//! every lease the node should take from etcd is in its table and nothing else is; no two
//! leases overlap; the network config's backend, port and VNI are the node's.
//!
//! Reads `<prefix>/config` and `<prefix>/subnets/` once, judges the leases with the node's own
//! rules ([`crate::control::lease::judge_leases`]) and compares. [`judge`] is pure.
//!
//! On a dual-stack network the node's lease is found by its IPv4 subnet (whatever IPv6 subnet
//! its key holds beside it), and the table is compared for both halves: the peers expected are
//! the ones the node's own agent makes of the leases ([`lease_peers`]), with the IPv6 underlay
//! `/status` names (`listen6`).

use std::net::{IpAddr, SocketAddr};

use etcd_client::Client;
use ipnet::{IpNet, Ipv4Net};

use super::{Backend, Check, Intent};
use crate::control::etcd::lease_peers;
use crate::control::lease::{Rejection, StoredLease, judge_leases, parse_subnet_key, subnet_key};
use crate::control::netconf::{self, NetworkConfig};

/// Where etcd is.
#[derive(Debug, Clone, Default)]
pub struct EtcdTarget {
    /// Endpoints, tried one by one.
    pub endpoints: Vec<String>,
    /// Key prefix.
    pub prefix: String,
    /// TLS files and login, as the node's.
    pub access: crate::control::etcd::EtcdAccess,
}

/// One lease as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// Its key.
    pub key: String,
    /// Its creation revision.
    pub create_revision: i64,
    /// Its value.
    pub value: Vec<u8>,
    /// The etcd lease it is attached to (0: none).
    pub lease: i64,
}

/// What was read from etcd.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdView {
    /// `<prefix>/config`, if present.
    pub config: Option<Vec<u8>>,
    /// Every key under `<prefix>/subnets/`.
    pub leases: Vec<Read>,
    /// Seconds left on the node's own lease (`None`: not read or none attached).
    pub own_ttl: Option<i64>,
    /// Keys listed past the [`MAX_READ_KEYS`] kept (a flood of keys under the prefix).
    pub unread: u64,
}

/// The most keys under `<prefix>/subnets/` the doctor keeps, as many as a node tracks (the
/// node's own key is kept whatever the count), so a flood of keys costs it bounded memory.
pub const MAX_READ_KEYS: usize = 81_920;

/// Reads etcd and runs the checks.
pub fn checks(intent: &Intent, target: &EtcdTarget) -> Vec<Check> {
    match read(intent, target) {
        Ok(view) => judge(intent, &target.prefix, &view),
        Err(e) => vec![Check::fail(
            "etcd.reach",
            format!("cannot read etcd at {}: {e}", target.endpoints.join(",")),
            None,
        )],
    }
}

fn own_subnet(intent: &Intent) -> Option<Ipv4Net> {
    match intent.subnet {
        IpNet::V4(n) => Some(n.trunc()),
        IpNet::V6(_) => None,
    }
}

/// Returns the key of the node's lease: the one whose IPv4 subnet is `own`, with or without an
/// IPv6 subnet beside it (the key that names `own` alone first).
fn own_lease_key(prefix: &str, own: Ipv4Net, leases: &[Read]) -> Option<String> {
    let plain = subnet_key(prefix, own);
    if leases.iter().any(|l| l.key == plain) {
        return Some(plain);
    }
    leases
        .iter()
        .find(|l| parse_subnet_key(prefix, &l.key).is_some_and(|k| k.ipv4 == own))
        .map(|l| l.key.clone())
}

fn read(intent: &Intent, target: &EtcdTarget) -> Result<EtcdView, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    // One client over every endpoint: TLS when the first is https://.
    let first = target.endpoints.first().map_or("", String::as_str);
    let options = target
        .access
        .connect_options(first)
        .map_err(|e| e.to_string())?;
    let (config_key, subnets) = (
        crate::control::lease::key_under(&target.prefix, "config"),
        crate::control::lease::key_under(&target.prefix, "subnets/"),
    );
    let own = own_subnet(intent);
    rt.block_on(async move {
        let mut client = Client::connect(target.endpoints.clone(), Some(options))
            .await
            .map_err(|e| e.to_string())?;
        let config = client
            .get(config_key, None)
            .await
            .map_err(|e| e.to_string())?
            .kvs()
            .first()
            .map(|kv| kv.value().to_vec());
        // Paged, as the node lists, with each key and value bounded as the node keeps them.
        let under = subnets.len();
        let mut leases: Vec<Read> = Vec::new();
        let mut unread = 0u64;
        crate::control::etcd::list_pages(&mut client, &subnets, |kv| {
            let value = kv.value();
            let key = crate::control::etcd::entry_key(kv.key(), under);
            let mine =
                || parse_subnet_key(&target.prefix, &key).is_some_and(|k| Some(k.ipv4) == own);
            if leases.len() >= MAX_READ_KEYS && !mine() {
                unread += 1;
                return;
            }
            leases.push(Read {
                key,
                create_revision: kv.create_revision(),
                value: value[..value.len().min(crate::control::lease::MAX_LEASE_VALUE + 1)]
                    .to_vec(),
                lease: kv.lease(),
            });
        })
        .await
        .map_err(|e| e.to_string())?;
        let own_lease = own
            .and_then(|own| own_lease_key(&target.prefix, own, &leases))
            .and_then(|key| leases.iter().find(|l| l.key == key))
            .map(|l| l.lease)
            .filter(|id| *id != 0);
        let own_ttl = match own_lease {
            Some(id) => client
                .lease_time_to_live(id, None)
                .await
                .ok()
                .map(|r| r.ttl()),
            None => None,
        };
        Ok(EtcdView {
            config,
            leases,
            own_ttl,
            unread,
        })
    })
}

/// The command that deletes the key `key`, for a fix: the key shell-quoted after `--` (so a key
/// that reads as an option, ` --prefix` say, or holds `$(...)` stays one literal argument), and
/// only for a key of printable ASCII: any other (control or bidi characters, bytes that were not
/// UTF-8) would be printed escaped or replaced, and the command would name another key.
fn delete_fix(key: &str) -> Option<String> {
    key.bytes()
        .all(|b| (0x20..0x7f).contains(&b))
        .then(|| format!("etcdctl del -- {}", super::shell_quote(key)))
}

/// The most rejected leases named one by one in a report.
const MAX_NAMED_REJECTIONS: usize = 64;

/// Judges what was read against the node's intent.
pub fn judge(intent: &Intent, prefix: &str, view: &EtcdView) -> Vec<Check> {
    let mut out = Vec::new();
    let config_key = crate::control::lease::key_under(prefix, "config");
    let config = match view.config.as_deref().map(NetworkConfig::parse) {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            out.push(Check::fail(
                "etcd.config",
                format!("{config_key} is invalid: {e}"),
                None,
            ));
            return out;
        }
        None => {
            out.push(Check::fail(
                "etcd.config",
                format!("{config_key} is missing"),
                None,
            ));
            return out;
        }
    };
    out.push(config_check(intent, &config));
    if view.unread > 0 {
        out.push(Check::warn(
            "etcd.keys",
            format!(
                "{} keys under {} past the first {MAX_READ_KEYS} were not read (a flood of \
                 keys under the prefix?): the checks below saw only those",
                view.unread,
                crate::control::lease::key_under(prefix, "subnets/")
            ),
            None,
        ));
    }
    let Some(own) = own_subnet(intent) else {
        return out;
    };
    let own_key =
        own_lease_key(prefix, own, &view.leases).unwrap_or_else(|| subnet_key(prefix, own));
    let own_ip = match intent.listen.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(_) => return out,
    };
    match view.leases.iter().find(|l| l.key == own_key) {
        None => out.push(Check::fail(
            "etcd.own_lease",
            format!("{own_key} is missing: another node can take {own}"),
            Some("restart fustian run on this node (it writes its lease again)".to_owned()),
        )),
        Some(l) => {
            let value = crate::control::lease::LeaseValue::parse(&l.value);
            out.push(match (value, view.own_ttl) {
                (Ok(v), _) if v.public_ip != own_ip => Check::fail(
                    "etcd.own_lease",
                    format!("{own_key} names {}, not this node's {own_ip}", v.public_ip),
                    Some("restart fustian run on this node (it writes its lease again)".into()),
                ),
                (Err(e), _) => Check::fail(
                    "etcd.own_lease",
                    format!("{own_key} is invalid: {e}"),
                    Some("restart fustian run on this node (it writes its lease again)".into()),
                ),
                (Ok(_), Some(ttl)) if ttl > 0 => {
                    Check::ok("etcd.own_lease", format!("{own_key}, TTL {ttl} s left"))
                }
                (Ok(_), _) => Check::warn(
                    "etcd.own_lease",
                    format!("{own_key} has no live etcd lease (TTL unknown or expired)"),
                    None,
                ),
            });
        }
    }
    let stored = view.leases.iter().map(|l| StoredLease {
        key: &l.key,
        create_revision: l.create_revision,
        value: &l.value,
    });
    let (accepted, rejected) =
        judge_leases(&config, own_ip, Some(&own_key), Some(own), prefix, stored);
    // Each rejected lease is named, up to a bound; the rest are counted by reason in one line,
    // so whoever can write under the prefix cannot make the report as long as they like.
    for r in rejected.iter().skip(MAX_NAMED_REJECTIONS).take(1) {
        let mut by_reason: Vec<(&str, usize)> = Vec::new();
        for r in &rejected[MAX_NAMED_REJECTIONS..] {
            match by_reason.iter_mut().find(|(n, _)| *n == r.reason.reason()) {
                Some((_, c)) => *c += 1,
                None => by_reason.push((r.reason.reason(), 1)),
            }
        }
        let counts: Vec<String> = by_reason.iter().map(|(n, c)| format!("{n} {c}")).collect();
        out.push(Check::warn(
            "etcd.rejected",
            format!(
                "{} more leases left out of the table ({}), first {}; only the first \
                 {MAX_NAMED_REJECTIONS} are named",
                rejected.len() - MAX_NAMED_REJECTIONS,
                counts.join(", "),
                crate::control::etcd::for_log(&r.key)
            ),
            None,
        ));
    }
    for r in rejected.iter().take(MAX_NAMED_REJECTIONS) {
        let name = if r.reason == Rejection::Overlap {
            "etcd.overlap"
        } else {
            "etcd.rejected"
        };
        let outcome = if r.reason == Rejection::Overlap {
            Check::fail
        } else {
            Check::warn
        };
        out.push(outcome(
            name,
            format!(
                "{}: {} ({}); left out of the table",
                r.key,
                r.reason.reason(),
                r.detail
            ),
            delete_fix(&r.key),
        ));
    }
    // The peers the node itself makes of these leases, both halves of a dual-stack network.
    let public_ipv6 = match intent.listen6.map(|a| a.ip()) {
        Some(IpAddr::V6(ip)) => Some(ip),
        _ => None,
    };
    let (peers, _) = lease_peers(&config.backend, public_ipv6, accepted);
    let want: Vec<(IpNet, SocketAddr)> = peers.iter().map(|p| (p.subnet, p.endpoint)).collect();
    let have: Vec<(IpNet, SocketAddr)> = intent
        .peers
        .iter()
        .map(|p| (p.subnet, p.endpoint))
        .collect();
    let missing: Vec<String> = want
        .iter()
        .filter(|w| !have.contains(w))
        .map(|(s, e)| format!("{s} at {e}"))
        .collect();
    let extra: Vec<String> = have
        .iter()
        .filter(|h| !want.contains(h))
        .map(|(s, e)| format!("{s} at {e}"))
        .collect();
    out.push(if missing.is_empty() && extra.is_empty() {
        Check::ok(
            "etcd.table",
            format!(
                "the table holds exactly the {} peers of the leases in etcd",
                want.len()
            ),
        )
    } else {
        let mut what = Vec::new();
        if !missing.is_empty() {
            what.push(format!("in etcd, not in the table: {}", missing.join(", ")));
        }
        if !extra.is_empty() {
            what.push(format!("in the table, not in etcd: {}", extra.join(", ")));
        }
        Check::fail(
            "etcd.table",
            what.join("; "),
            Some("restart fustian run on this node (it lists etcd again)".to_owned()),
        )
    });
    out
}

fn config_check(intent: &Intent, config: &NetworkConfig) -> Check {
    let mut wrong = Vec::new();
    if IpNet::V4(config.network) != intent.network {
        wrong.push(format!(
            "Network {} (node: {})",
            config.network, intent.network
        ));
    }
    let node_backend = match intent.backend {
        Backend::Udp => "udp",
        Backend::Vxlan { .. } => "vxlan",
    };
    if config.backend.name() != node_backend {
        wrong.push(format!(
            "Backend.Type {} (node: {node_backend})",
            config.backend.name()
        ));
    }
    if config.backend.port() != intent.listen.port() {
        wrong.push(format!(
            "Backend.Port {} (node: {})",
            config.backend.port(),
            intent.listen.port()
        ));
    }
    if let (netconf::Backend::Vxlan { vni, .. }, Backend::Vxlan { vni: node }) =
        (config.backend, intent.backend)
        && vni != node
    {
        wrong.push(format!("Backend.VNI {vni} (node: {node})"));
    }
    if wrong.is_empty() {
        Check::ok(
            "etcd.config",
            format!(
                "{} {} port {} as the node",
                config.network,
                config.backend.name(),
                config.backend.port()
            ),
        )
    } else {
        Check::fail(
            "etcd.config",
            format!("the network config disagrees: {}", wrong.join(", ")),
            Some("restart fustian run on this node (it follows the config)".to_owned()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::{Outcome, PeerIntent};

    const P: &str = "/coreos.com/network";

    fn intent() -> Intent {
        Intent {
            tun: "flannel0".into(),
            mtu: 1472,
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.1.0/24".parse().unwrap(),
            listen: "192.0.2.1:8285".parse().unwrap(),
            listen6: None,
            ipv6: None,
            backend: Backend::Udp,
            vtep_mac: None,
            subnet_file: None,
            peers: vec![PeerIntent {
                subnet: "10.244.2.0/24".parse().unwrap(),
                endpoint: "192.0.2.2:8285".parse().unwrap(),
                vtep_mac: None,
            }],
            tun_queue: None,
            instance: None,
        }
    }

    fn lease(subnet: &str, ip: &str, rev: i64) -> Read {
        Read {
            key: format!("{P}/subnets/{subnet}"),
            create_revision: rev,
            value: format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null}}"#).into_bytes(),
            lease: 7,
        }
    }

    fn view() -> EtcdView {
        EtcdView {
            config: Some(br#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#.to_vec()),
            leases: vec![
                lease("10.244.1.0-24", "192.0.2.1", 2),
                lease("10.244.2.0-24", "192.0.2.2", 3),
            ],
            own_ttl: Some(86_000),
            unread: 0,
        }
    }

    fn outcome(checks: &[Check], name: &str) -> Option<Outcome> {
        checks.iter().find(|c| c.name == name).map(|c| c.outcome)
    }

    #[test]
    fn delete_fixes_never_run_what_a_key_holds() {
        assert_eq!(
            delete_fix("/coreos.com/network/subnets/10.244.9.0-24").as_deref(),
            Some("etcdctl del -- /coreos.com/network/subnets/10.244.9.0-24")
        );
        assert_eq!(
            delete_fix("/coreos.com/network/subnets/ --prefix").as_deref(),
            Some("etcdctl del -- '/coreos.com/network/subnets/ --prefix'")
        );
        assert_eq!(
            delete_fix("/p/subnets/x$(touch /tmp/p)'y").as_deref(),
            Some("etcdctl del -- '/p/subnets/x$(touch /tmp/p)'\\''y'")
        );
        for key in [
            "/p/subnets/\u{202e}x",
            "/p/subnets/\x1b[2J",
            "/p/subnets/\u{fffd}",
            "/p/subnets/é",
        ] {
            assert_eq!(delete_fix(key), None, "{key:?}");
        }
    }

    #[test]
    fn rejected_leases_are_named_up_to_a_bound() {
        let mut v = view();
        for i in 0..100 {
            v.leases.push(Read {
                key: format!("{P}/subnets/junk-{i}"),
                create_revision: 10 + i,
                value: b"{}".to_vec(),
                lease: 0,
            });
        }
        let checks = judge(&intent(), P, &v);
        let rejected: Vec<_> = checks
            .iter()
            .filter(|c| c.name == "etcd.rejected")
            .collect();
        assert_eq!(rejected.len(), MAX_NAMED_REJECTIONS + 1, "{rejected:?}");
        let summary = &rejected[0].detail;
        assert!(
            summary.starts_with("36 more leases left out of the table (bad_key 36)"),
            "{summary}"
        );
    }

    #[test]
    fn consistent_state_passes() {
        let checks = judge(&intent(), P, &view());
        assert!(
            checks.iter().all(|c| c.outcome == Outcome::Ok),
            "{checks:#?}"
        );
        assert_eq!(checks.len(), 3);
    }

    #[test]
    fn keys_past_the_bound_are_named_in_a_warning() {
        let mut view = view();
        view.unread = 12;
        let checks = judge(&intent(), P, &view);
        let keys = checks
            .iter()
            .find(|c| c.name == "etcd.keys")
            .expect("a check for the keys left unread");
        assert_eq!(keys.outcome, Outcome::Warn, "{keys:?}");
        assert!(keys.detail.starts_with("12 keys under"), "{keys:?}");
        // The rest is judged as before.
        assert_eq!(checks.len(), 4, "{checks:#?}");
    }

    #[test]
    fn a_dual_stack_node_is_judged_on_both_halves() {
        let dual = |listen6: Option<&str>, peer6: Option<&str>| {
            let mut intent = intent();
            intent.listen6 = listen6.map(|a| a.parse().unwrap());
            if let Some(endpoint) = peer6 {
                intent.peers.push(PeerIntent {
                    subnet: "fd00:10:244:2::/64".parse().unwrap(),
                    endpoint: endpoint.parse().unwrap(),
                    vtep_mac: None,
                });
            }
            let lease6 = |subnet: &str, ip: &str, ip6: &str, rev| Read {
                value: format!(r#"{{"PublicIP":"{ip}","PublicIPv6":"{ip6}"}}"#).into_bytes(),
                ..lease(subnet, ip, rev)
            };
            let view = EtcdView {
                config: Some(
                    br#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"udp"}}"#
                        .to_vec(),
                ),
                leases: vec![
                    lease6("10.244.1.0-24&fd00:10:244:1::-64", "192.0.2.1", "2001:db8::1", 2),
                    lease6("10.244.2.0-24&fd00:10:244:2::-64", "192.0.2.2", "2001:db8::2", 3),
                ],
                own_ttl: Some(86_000),
                unread: 0,
            };
            judge(&intent, P, &view)
        };
        // The IPv6 peer over the IPv6 underlay, as the node makes it.
        let checks = dual(Some("[2001:db8::1]:8285"), Some("[2001:db8::2]:8285"));
        assert!(
            checks.iter().all(|c| c.outcome == Outcome::Ok),
            "{checks:#?}"
        );
        assert_eq!(checks.len(), 3);
        // Without an IPv6 underlay the node reaches the IPv6 subnet over IPv4.
        let checks = dual(None, Some("192.0.2.2:8285"));
        assert!(
            checks.iter().all(|c| c.outcome == Outcome::Ok),
            "{checks:#?}"
        );
        // The IPv6 half missing from the table, or at the wrong endpoint, is named.
        for (peer6, want) in [
            (
                None,
                "in etcd, not in the table: fd00:10:244:2::/64 at [2001:db8::2]:8285",
            ),
            (
                Some("192.0.2.2:8285"),
                "in the table, not in etcd: fd00:10:244:2::/64 at 192.0.2.2:8285",
            ),
        ] {
            let checks = dual(Some("[2001:db8::1]:8285"), peer6);
            let table = checks.iter().find(|c| c.name == "etcd.table").unwrap();
            assert_eq!(table.outcome, Outcome::Fail, "{table:?}");
            assert!(table.detail.contains(want), "{want}: {table:?}");
        }
    }

    #[test]
    fn faults_are_named() {
        // The own lease deleted.
        let mut v = view();
        v.leases.remove(0);
        let checks = judge(&intent(), P, &v);
        assert_eq!(outcome(&checks, "etcd.own_lease"), Some(Outcome::Fail));
        // A peer's lease deleted: the table holds one etcd has not.
        let mut v = view();
        v.leases.remove(1);
        let checks = judge(&intent(), P, &v);
        let table = checks.iter().find(|c| c.name == "etcd.table").unwrap();
        assert_eq!(table.outcome, Outcome::Fail);
        assert!(
            table
                .detail
                .contains("in the table, not in etcd: 10.244.2.0/24"),
            "{table:?}"
        );
        // A lease the table lacks.
        let mut v = view();
        v.leases.push(lease("10.244.3.0-24", "192.0.2.3", 4));
        let checks = judge(&intent(), P, &v);
        let table = checks.iter().find(|c| c.name == "etcd.table").unwrap();
        assert!(
            table
                .detail
                .contains("in etcd, not in the table: 10.244.3.0/24"),
            "{table:?}"
        );
        // An overlapping lease.
        let mut v = view();
        v.leases.push(lease("10.244.2.0-23", "192.0.2.3", 5));
        let checks = judge(&intent(), P, &v);
        assert!(
            checks
                .iter()
                .any(|c| c.outcome != Outcome::Ok && c.name.starts_with("etcd.")),
            "{checks:#?}"
        );
        // Another backend in the config.
        let mut v = view();
        v.config = Some(br#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#.to_vec());
        let checks = judge(&intent(), P, &v);
        assert_eq!(outcome(&checks, "etcd.config"), Some(Outcome::Fail));
        // No config.
        let mut v = view();
        v.config = None;
        assert_eq!(
            outcome(&judge(&intent(), P, &v), "etcd.config"),
            Some(Outcome::Fail)
        );
        // No TTL.
        let mut v = view();
        v.own_ttl = None;
        let checks = judge(&intent(), P, &v);
        assert_eq!(outcome(&checks, "etcd.own_lease"), Some(Outcome::Warn));
    }
}
