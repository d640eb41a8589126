//! flannel's lease values and keys from etcd: any bytes give a typed result; an accepted lease
//! written back parses to the same value; a key that parses is exactly the key fustian would
//! write for it; judging any set of leases never panics and accepts only leases that make a
//! table.
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr};

use fustian::control::lease::{
    DEFAULT_PREFIX, LeaseValue, NetworkConfig, OwnNode, StoredLease, judge_leases,
    judge_leases_dual, judge_public_ipv6, parse_subnet_key,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(lease) = LeaseValue::parse(data) {
        let again = LeaseValue::parse(lease.to_json().as_bytes()).expect("own JSON parses");
        assert_eq!(again.public_ip, lease.public_ip);
        assert_eq!(again.public_ipv6, lease.public_ipv6);
        assert_eq!(again.backend_type, lease.backend_type);
        if lease.backend_type.is_some() {
            assert_eq!(again.vni6.zip(again.vtep_mac6), lease.vni6.zip(lease.vtep_mac6));
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(key) = parse_subnet_key(DEFAULT_PREFIX, text) {
        assert_eq!(key.key(DEFAULT_PREFIX), text);
    }
    // Lines of `key value` judged against a /16 network.
    let config = NetworkConfig::parse(br#"{"Network":"10.244.0.0/16"}"#).expect("valid");
    let leases: Vec<StoredLease<'_>> = text
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            StoredLease {
                key,
                create_revision: i64::try_from(i % 3).unwrap_or(0),
                value: value.as_bytes(),
            }
        })
        .collect();
    let own = Ipv4Addr::new(192, 0, 2, 1);
    let (accepted, rejected) = judge_leases(&config, own, None, None, DEFAULT_PREFIX, leases.clone());
    assert_eq!(accepted.len() + rejected.len(), leases.len());
    for (i, a) in accepted.iter().enumerate() {
        assert!(config.allows(a.subnet));
        assert!(accepted[..i].iter().all(|b| b.subnet != a.subnet));
        assert!(!a.value.public_ip.is_loopback() && a.value.public_ip != own);
        assert_eq!(a.subnet6, None);
    }
    // The same lines judged by a dual-stack node.
    let dual = NetworkConfig::parse(
        br#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}"#,
    )
    .expect("valid");
    let own6: Ipv6Addr = "2001:db8::1".parse().expect("literal");
    let me = OwnNode {
        ip: Some(own),
        ipv6: Some(own6),
        key: None,
        subnet: None,
        subnet6: Some("fd00:10:244:1::/64".parse().expect("literal")),
    };
    let (accepted, rejected) = judge_leases_dual(&dual, &me, DEFAULT_PREFIX, leases.clone());
    assert_eq!(accepted.len() + rejected.len(), leases.len());
    let c6 = dual.ipv6.expect("dual");
    for (i, a) in accepted.iter().enumerate() {
        assert!(dual.allows(a.subnet));
        if let Some(v6) = a.subnet6 {
            assert!(c6.allows(v6) && v6 != "fd00:10:244:1::/64".parse().expect("literal"));
            assert!(accepted[..i].iter().all(|b| b.subnet6 != Some(v6)));
        }
        if let Some(ip6) = a.value.public_ipv6 {
            assert_eq!(judge_public_ipv6(ip6, Some(own6)), None);
        }
    }
});
