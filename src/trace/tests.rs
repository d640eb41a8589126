//! The tap through a real datapath core: verdicts, the lost count, the recent drops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::datapath::{Core, CoreConfig, Forwarding, HEADROOM, TxPlan};
use crate::metrics::Metrics;
use crate::table::Peer;
use crate::udp::Received;
use crate::wire::Encap;

const PEER: [u8; 4] = [192, 0, 2, 2];

fn snapshot() -> Snapshot {
    Snapshot::new(
        vec!["10.244.1.0/24".parse().expect("literal")],
        vec![Peer {
            subnet: "10.244.2.0/24".parse().expect("literal"),
            endpoint: SocketAddr::from((PEER, 8285)),
            vtep_mac: None,
        }],
    )
    .expect("valid table")
}

fn core(hub: &Arc<Hub>) -> Core {
    core_with(hub, Encap::Flannel)
}

fn core_with(hub: &Arc<Hub>, encap: Encap) -> Core {
    let fwd = Forwarding {
        encap,
        network: "10.244.0.0/16".parse().expect("literal"),
        max_inner_len: 1400,
        icmp: true,
        strict_source_port: false,
    };
    Core::new(
        CoreConfig {
            worker: 0,
            fwd,
            vnet: false,
            uso: false,
            gro: false,
            sockets: 0,
            tun_mtu: 1400,
        },
        Arc::new(Metrics::new(1)),
    )
    .with_trace(Arc::clone(hub))
}

/// A valid UDP/IPv4 packet from `src` to `dst`, ports 40000 -> 5201.
fn packet(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = crate::wire::ip::tests::UDP_V4.to_vec();
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[10..12].copy_from_slice(&[0, 0]);
    let sum = crate::wire::ip::checksum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p
}

fn send(core: &mut Core, snap: &Snapshot, p: &[u8]) -> TxPlan {
    let mut slot = vec![0u8; HEADROOM + 2000];
    slot[HEADROOM..HEADROOM + p.len()].copy_from_slice(p);
    core.begin_batch();
    core.tun_read(snap, &mut slot, p.len(), Instant::now())
}

fn receive(core: &mut Core, snap: &Snapshot, p: &[u8], from: [u8; 4]) {
    let mut slot = vec![0u8; 2000];
    slot[..p.len()].copy_from_slice(p);
    let r = Received {
        len: p.len(),
        from: Some(SocketAddr::from((from, 8285))),
        truncated: false,
        segment: 0,
    };
    core.begin_batch();
    core.udp_read(snap, &mut slot, &r);
}

#[test]
fn nothing_attached_keeps_only_drops() {
    let hub = Arc::new(Hub::new(1));
    let snap = snapshot();
    let mut c = core(&hub);
    let sent = send(&mut c, &snap, &packet([10, 244, 1, 2], [10, 244, 2, 2]));
    assert!(matches!(sent, TxPlan::Datagram { .. }));
    receive(
        &mut c,
        &snap,
        &packet([10, 244, 9, 9], [10, 244, 1, 2]),
        PEER,
    );
    let recent = hub.recent();
    assert_eq!(recent.len(), 1, "{recent:?}");
    assert_eq!(recent[0].reason, DropReason::SpoofedSource);
    assert_eq!(
        recent[0].flow.map(|f| f.src),
        Some(IpAddr::from([10, 244, 9, 9]))
    );
    assert_eq!(recent[0].outer, Some(SocketAddr::from((PEER, 8285))));
}

#[test]
fn attached_trace_sees_matching_verdicts() {
    let hub = Arc::new(Hub::new(1));
    let snap = snapshot();
    let mut c = core(&hub);
    let attached = hub
        .attach(Filter::parse("host 10.244.2.2 or verdict drop").expect("valid"))
        .expect("room");
    send(&mut c, &snap, &packet([10, 244, 1, 2], [10, 244, 2, 2]));
    // No route: dropped with an ICMP error.
    send(&mut c, &snap, &packet([10, 244, 1, 2], [10, 244, 7, 7]));
    receive(
        &mut c,
        &snap,
        &packet([10, 244, 2, 2], [10, 244, 1, 3]),
        PEER,
    );
    receive(
        &mut c,
        &snap,
        &packet([10, 244, 9, 9], [10, 244, 1, 2]),
        PEER,
    );
    // Not matched by the filter: delivered, from another host.
    receive(
        &mut c,
        &snap,
        &packet([10, 244, 2, 3], [10, 244, 1, 3]),
        PEER,
    );
    let mut events = Vec::new();
    attached.drain(&mut events);
    let got: Vec<_> = events.iter().map(|e| (e.dir, e.verdict)).collect();
    let subnet = Some("10.244.2.0/24".parse().expect("literal"));
    assert_eq!(
        got,
        [
            (
                Direction::TunToUdp,
                Verdict::Send {
                    subnet,
                    segments: 1
                }
            ),
            (Direction::TunToUdp, Verdict::Icmp(DropReason::NoRoute)),
            (
                Direction::UdpToTun,
                Verdict::Deliver {
                    merged: false,
                    segments: 1
                }
            ),
            (
                Direction::UdpToTun,
                Verdict::Drop(DropReason::SpoofedSource)
            ),
        ]
    );
    assert_eq!(events[0].outer, Some(SocketAddr::from((PEER, 8285))));
    assert_eq!(
        events[0].captured(),
        &packet([10, 244, 1, 2], [10, 244, 2, 2])[..]
    );
    let line = Line::from_event(&events[3], false);
    assert_eq!(line.reason.as_deref(), Some("spoofed_source"));
    assert_eq!(line.sport, Some(40000));
    hub.detach(&attached);
    assert_eq!(hub.attached(), 0);
    send(&mut c, &snap, &packet([10, 244, 1, 2], [10, 244, 2, 2]));
    assert_eq!(attached.drain(&mut events), 0, "detached: no more events");
}

#[test]
fn full_ring_counts_lost_and_never_blocks() {
    let hub = Arc::new(Hub::new(1));
    let snap = snapshot();
    let mut c = core(&hub);
    let attached = hub.attach(Filter::default()).expect("room");
    let p = packet([10, 244, 1, 2], [10, 244, 2, 2]);
    for _ in 0..RING_EVENTS + 10 {
        assert!(matches!(send(&mut c, &snap, &p), TxPlan::Datagram { .. }));
    }
    assert_eq!(attached.session.lost(), 10);
    let mut events = Vec::new();
    assert_eq!(attached.drain(&mut events), RING_EVENTS);
}

#[test]
fn rings_shrink_with_many_workers() {
    assert_eq!(ring_events(1), RING_EVENTS);
    assert_eq!(ring_events(8), RING_EVENTS);
    assert_eq!(ring_events(16), 1024);
    assert_eq!(ring_events(1024), 256);
    assert_eq!(ring_events(0), RING_EVENTS);
}

#[test]
fn sessions_are_bounded() {
    let hub = Hub::new(2);
    let held: Vec<_> = (0..MAX_SESSIONS)
        .map(|_| hub.attach(Filter::default()).expect("room"))
        .collect();
    assert!(hub.attach(Filter::default()).is_none());
    hub.detach(&held[0]);
    assert!(hub.attach(Filter::default()).is_some());
}

#[test]
fn recent_drops_keep_the_last_ones() {
    let hub = Arc::new(Hub::new(1));
    let snap = snapshot();
    let mut c = core(&hub);
    for i in 0..RECENT_DROPS + 5 {
        let last = u8::try_from(i % 200).expect("small");
        send(&mut c, &snap, &packet([10, 244, 1, 2], [10, 244, 7, last]));
    }
    let recent = hub.recent();
    assert_eq!(recent.len(), RECENT_DROPS);
    let newest = recent.last().and_then(|d| d.flow).map(|f| f.dst);
    let want = u8::try_from(RECENT_DROPS + 4).expect("small");
    assert_eq!(newest, Some(IpAddr::from([10, 244, 7, want])));
}

#[test]
fn a_flood_of_one_reason_leaves_the_others_their_last_drops() {
    let hub = Arc::new(Hub::new(1));
    let snap = snapshot();
    let mut c = core(&hub);
    // A few drops of another kind, then a long flood of unroutable packets.
    for _ in 0..3 {
        receive(
            &mut c,
            &snap,
            &packet([10, 244, 9, 9], [10, 244, 1, 2]),
            PEER,
        );
    }
    for i in 0..10 * RECENT_DROPS {
        let last = u8::try_from(i % 200).expect("small");
        send(&mut c, &snap, &packet([10, 244, 1, 2], [10, 244, 7, last]));
    }
    let recent = hub.recent();
    assert_eq!(recent.len(), RECENT_DROPS);
    let spoofed = recent
        .iter()
        .filter(|d| d.reason == DropReason::SpoofedSource)
        .count();
    assert_eq!(spoofed, 3, "{recent:?}");
    // The flood keeps its newest.
    let newest = recent.last().and_then(|d| d.flow).map(|f| f.dst);
    let want = u8::try_from((10 * RECENT_DROPS - 1) % 200).expect("small");
    assert_eq!(newest, Some(IpAddr::from([10, 244, 7, want])));
}

#[test]
fn flow_parse_is_lenient_and_bounded() {
    let p = packet([10, 244, 1, 2], [10, 244, 2, 2]);
    let f = Flow::parse(&p).expect("ipv4");
    assert_eq!((f.proto, f.sport, f.dport), (17, 40000, 5201));
    assert_eq!(
        Flow::parse(&p[..22]).map(|f| f.sport),
        Some(0),
        "ports cut off"
    );
    assert!(Flow::parse(&p[..19]).is_none());
    assert!(Flow::parse(&[]).is_none());
    let v6 = Flow::parse(&crate::wire::ip::tests::UDP_V6).expect("ipv6");
    assert_eq!(v6.dport, 5201);
}

#[test]
fn hex_round_trips() {
    assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    assert_eq!(unhex("00ab10"), Some(vec![0, 0xab, 0x10]));
    assert_eq!(unhex("0"), None);
    assert_eq!(unhex("zz"), None);
}

proptest::proptest! {
    /// Any bytes parse to a flow or to nothing, never a panic.
    #[test]
    fn flow_parse_takes_any_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
        let _ = Flow::parse(&bytes);
    }
}

#[test]
fn reads_dropped_whole_are_remembered_with_their_sender() {
    let hub = Arc::new(Hub::new(1));
    let snap = snapshot();
    let mut c = core(&hub);
    let p = packet([10, 244, 2, 2], [10, 244, 1, 2]);
    let mut slot = vec![0u8; 2000];
    slot[..p.len()].copy_from_slice(&p);
    let r = Received {
        len: 5000,
        from: Some(SocketAddr::from((PEER, 8285))),
        truncated: true,
        segment: 0,
    };
    c.begin_batch();
    c.udp_read(&snap, &mut slot, &r);
    let recent = hub.recent();
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].reason, DropReason::Oversize);
    assert_eq!(recent[0].dir, Direction::UdpToTun);
    assert_eq!(recent[0].outer, r.from);
    assert_eq!(
        recent[0].flow.map(|f| f.dst),
        Some(IpAddr::from([10, 244, 1, 2]))
    );
    let json = recent_json(&recent);
    assert_eq!(json[0]["reason"], "oversize");
    assert_eq!(json[0]["outer"], "192.0.2.2:8285");
}

#[test]
fn vxlan_verdicts_name_the_inner_flow() {
    use crate::wire::{MacAddress, VxlanParams};
    let hub = Arc::new(Hub::new(1));
    let snap = Snapshot::new(
        vec!["10.244.1.0/24".parse().expect("literal")],
        vec![Peer {
            subnet: "10.244.2.0/24".parse().expect("literal"),
            endpoint: SocketAddr::from((PEER, 8472)),
            vtep_mac: Some(MacAddress([2, 0, 0, 0, 0, 2])),
        }],
    )
    .expect("valid table");
    let mut c = core_with(
        &hub,
        Encap::Vxlan(VxlanParams {
            vni: 1,
            local_mac: MacAddress([2, 0, 0, 0, 0, 1]),
        }),
    );
    let attached = hub.attach(Filter::default()).expect("room");
    let p = packet([10, 244, 1, 2], [10, 244, 2, 2]);
    let mut slot = vec![0u8; HEADROOM + 2000];
    slot[HEADROOM..HEADROOM + p.len()].copy_from_slice(&p);
    c.begin_batch();
    let TxPlan::Datagram { start, len, .. } = c.tun_read(&snap, &mut slot, p.len(), Instant::now())
    else {
        panic!("sent");
    };
    // The frame is addressed to the peer's VTEP: received here, it is another host's.
    let frame = slot[start..start + len].to_vec();
    receive(&mut c, &snap, &frame, PEER);
    let mut events = Vec::new();
    attached.drain(&mut events);
    assert_eq!(events.len(), 2);
    for e in &events {
        assert_eq!(
            e.flow.map(|f| (f.src, f.sport)),
            Some((IpAddr::from([10, 244, 1, 2]), 40000))
        );
        assert_eq!(
            e.captured(),
            &p[..],
            "the inner packet, without the VXLAN headers"
        );
    }
    assert_eq!(events[1].verdict, Verdict::Drop(DropReason::WrongDstMac));
}
