//! The whole per-packet decision, both directions, on arbitrary bytes and offsets.
#![no_main]

use std::net::SocketAddr;

use fustian::datapath::forward::{Forwarding, Inbound, Outbound, icmp_reply, inbound, outbound};
use fustian::table::{Peer, Snapshot};
use fustian::wire::Encap;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, u8, Vec<u8>)| {
    let (headroom, sender, mut data) = input;
    let snap = Snapshot::new(
        vec!["10.244.1.0/24".parse().expect("literal")],
        vec![Peer {
            subnet: "10.244.2.0/24".parse().expect("literal"),
            endpoint: "192.0.2.2:8285".parse().expect("literal"),
            vtep_mac: None,
        }],
    )
    .expect("valid");
    let fwd = Forwarding {
        encap: Encap::Flannel,
        network: "10.244.0.0/16".parse().expect("literal"),
        max_inner_len: 1472,
        icmp: true,
        strict_source_port: false,
    };
    let len = data.len().saturating_sub(usize::from(headroom));
    let original = data.clone();
    match outbound(&snap, &fwd, &mut data, headroom.into(), len) {
        Outbound::Send { start, len, .. } => assert!(start + len <= data.len()),
        Outbound::Drop(reason) => {
            // The ICMP error about the dropped packet, as the event loops build it.
            let packet = original.get(usize::from(headroom)..).unwrap_or_default();
            let mut out = [0u8; 1280];
            if let Some(n) = icmp_reply(&snap, &fwd, reason, packet, &mut out) {
                assert!(n <= out.len());
            }
        }
    }
    let from = SocketAddr::from(([192, 0, 2, sender], 8285));
    if let Inbound::Deliver { start, len, .. } = inbound(&snap, &fwd, from, &data) {
        assert!(start + len <= data.len());
        assert_eq!(sender, 2);
    }
});
