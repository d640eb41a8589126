//! flannel's lease values and keys from etcd: any bytes give a typed result; an accepted lease
//! written back parses to the same value; a key that parses is exactly the key fustian would
//! write for it; judging any set of leases never panics and accepts only leases that make a
//! table.
#![no_main]

use std::net::Ipv4Addr;

use fustian::control::lease::{
    DEFAULT_PREFIX, LeaseValue, NetworkConfig, StoredLease, judge_leases, parse_subnet_key,
    subnet_key,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(lease) = LeaseValue::parse(data) {
        let again = LeaseValue::parse(lease.to_json().as_bytes()).expect("own JSON parses");
        assert_eq!(again.public_ip, lease.public_ip);
        assert_eq!(again.public_ipv6, lease.public_ipv6);
        assert_eq!(again.backend_type, lease.backend_type);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(key) = parse_subnet_key(DEFAULT_PREFIX, text) {
        let mut again = subnet_key(DEFAULT_PREFIX, key.ipv4);
        if let Some(v6) = key.ipv6 {
            again.push_str(&format!("&{}-{}", v6.network(), v6.prefix_len()));
        }
        assert_eq!(again, text);
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
    }
});
