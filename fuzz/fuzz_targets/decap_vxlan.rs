//! VXLAN decapsulation and the receive checks on arbitrary datagrams.
#![no_main]

use std::net::SocketAddr;

use fustian::datapath::forward::{Forwarding, Inbound, inbound};
use fustian::table::{Peer, Snapshot};
use fustian::wire::{Encap, MacAddress, VxlanParams};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let snap = Snapshot::new(
        vec!["10.244.2.0/24".parse().expect("literal")],
        vec![Peer {
            subnet: "10.244.1.0/24".parse().expect("literal"),
            endpoint: "192.0.2.1:8472".parse().expect("literal"),
            vtep_mac: Some(MacAddress([2, 0, 0, 0, 0, 1])),
        }],
    )
    .expect("valid");
    let local_mac = MacAddress([0xee, 0x58, 0x53, 0xba, 0x43, 0xf5]);
    let fwd = Forwarding { encap: Encap::Vxlan(VxlanParams { vni: 1, local_mac }), network: "10.244.0.0/16".parse().expect("literal"), max_inner_len: 1450, icmp: false, strict_source_port: false };
    let from = SocketAddr::from(([192, 0, 2, 1], 40000));
    if let Inbound::Deliver { start, len, .. } = inbound(&snap, &fwd, from, data) {
        assert_eq!(start, 22);
        assert_eq!(start + len, data.len());
        assert_eq!(data[0], 0x08);
    }
});
