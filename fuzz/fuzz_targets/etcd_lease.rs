//! flannel's lease values and keys from etcd: any bytes give a typed result; an accepted lease
//! written back parses to the same value.
#![no_main]

use fustian::control::lease::{DEFAULT_PREFIX, LeaseValue, parse_subnet_key, subnet_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(lease) = LeaseValue::parse(data) {
        let again = LeaseValue::parse(lease.to_json().as_bytes()).expect("own JSON parses");
        assert_eq!(again.public_ip, lease.public_ip);
        assert_eq!(again.public_ipv6, lease.public_ipv6);
        assert_eq!(again.backend_type, lease.backend_type);
    }
    if let Ok(key) = std::str::from_utf8(data)
        && let Some(net) = parse_subnet_key(DEFAULT_PREFIX, key)
    {
        assert_eq!(parse_subnet_key(DEFAULT_PREFIX, &subnet_key(DEFAULT_PREFIX, net)), Some(net));
    }
});
