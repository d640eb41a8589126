//! flannel's network config from etcd: any bytes give a typed result; an accepted config's
//! subnets lie inside its network and are ones it allows.
#![no_main]

use fustian::control::lease::NetworkConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = NetworkConfig::parse(data) {
        for s in c.subnets().take(64) {
            assert!(c.network.contains(&s));
            assert!(c.allows(s));
        }
    }
});
