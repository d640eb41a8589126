//! Inner IP parsing: any bytes give a typed result; a parsed IPv4 header re-emits and re-parses
//! to the same fields.
#![no_main]

use fustian::wire::ip::{Packet, Repr, parse_inner};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_inner(data);
    if let Ok(packet) = Packet::new_checked(data)
        && let Ok(repr) = Repr::parse(&packet)
    {
        let mut out = vec![0u8; repr.header_len() + repr.payload_len];
        repr.emit(&mut Packet::new_unchecked(&mut out[..])).expect("a parsed header re-emits");
        let again = Packet::new_checked(&out[..]).expect("an emitted header checks");
        assert_eq!(Repr::parse(&again), Ok(repr));
    }
});
