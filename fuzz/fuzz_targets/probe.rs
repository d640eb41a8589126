//! The peer probe exchange: any datagram offered to the answer of either format. An answer is
//! never longer than the request, always a well-formed reply echoing the request's token and
//! length, and nothing recognised as a `udp` probe ever decapsulates to a deliverable packet.
#![no_main]

use fustian::doctor::probe::{
    Kind, Probe, REPLY_LEN, VXLAN_PREFIX, answer, is_flannel_probe, is_vxlan_probe,
};
use fustian::wire::flannel::decapsulate;
use libfuzzer_sys::fuzz_target;

const MAC: [u8; 6] = [0x02, 0x66, 0x75, 0, 0, 2];

fuzz_target!(|data: &[u8]| {
    if is_flannel_probe(data) {
        assert!(decapsulate(data).is_err(), "a probe decapsulated");
    }
    let mut out = [0u8; VXLAN_PREFIX + REPLY_LEN];
    for vxlan in [None, Some((1, MAC))] {
        let prefix = if vxlan.is_some() { VXLAN_PREFIX } else { 0 };
        let Some(n) = answer(data, vxlan, &mut out) else {
            continue;
        };
        assert!(n <= data.len());
        assert_eq!(n, prefix + REPLY_LEN);
        if vxlan.is_some() {
            assert!(is_vxlan_probe(data));
            assert!(is_vxlan_probe(&out[..n]));
            assert_eq!(&out[14..20], &MAC);
        }
        let request = Probe::parse(&data[prefix..]).expect("answered requests parse");
        let reply = Probe::parse(&out[prefix..n]).expect("replies parse");
        assert_eq!(request.kind, Kind::Request);
        assert_eq!(reply.token, request.token);
        assert_eq!(
            reply.kind,
            Kind::Reply {
                len: data.len() as u32
            }
        );
        // A reply is never answered: no ping-pong between two nodes.
        assert!(answer(&out[..n], vxlan, &mut [0u8; VXLAN_PREFIX + REPLY_LEN]).is_none());
    }
});
