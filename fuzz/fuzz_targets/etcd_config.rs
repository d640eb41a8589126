//! flannel's network config from etcd, read as flanneld's Go decoder reads it: any bytes give
//! a typed result; an accepted config's subnets lie inside its network and are ones it allows,
//! and its backend settings are ones a node can run with.
#![no_main]

use fustian::control::gojson;
use fustian::control::netconf::{Backend, NetworkConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = NetworkConfig::parse(data);
    // The keys left unread of any config are bounded, whatever it holds.
    assert!(fustian::control::netconf::unread_keys(data, 16).len() <= 16);
    if let Ok(c) = parsed {
        assert!(gojson::check(data).is_ok());
        assert!(c.subnet_len <= 30 && c.subnet_len >= c.network.prefix_len() + 2);
        for s in c.subnets().take(64) {
            assert!(c.network.contains(&s));
            assert!(c.allows(s));
        }
        if let Some(c6) = c.ipv6 {
            assert!(c6.subnet_len <= 126 && c6.subnet_len >= c6.network.prefix_len() + 2);
            for s in c6.subnets().take(64) {
                assert!(c6.network.contains(&s));
                assert!(c6.allows(s));
            }
        }
        assert_ne!(c.backend.port(), 0);
        if let Backend::Vxlan { vni, .. } = c.backend {
            assert!(vni < 1 << 24);
        }
        if let Some(mtu) = c.backend.tun_mtu() {
            assert!((68..=65_000).contains(&mtu));
        }
    }
    if gojson::check(data).is_ok() {
        for (key, value) in gojson::members(data).into_iter().flatten() {
            let _ = gojson::names(&key, "Network");
            assert!(gojson::check(value).is_ok());
        }
    }
});
