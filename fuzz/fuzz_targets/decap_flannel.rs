//! flannel `udp` decapsulation of arbitrary datagrams.
#![no_main]

use fustian::wire::flannel::decapsulate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(inner) = decapsulate(data) {
        assert_eq!(inner.src.is_ipv4(), data[0] >> 4 == 4);
    }
});
