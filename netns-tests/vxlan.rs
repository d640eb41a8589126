//! VXLAN mode: fustian with fustian, fustian with a kernel `vxlan` device programmed as
//! flannel programs it, outer source ports per flow, and every kind of bad frame.

use std::collections::{HashMap, HashSet};
use std::net::UdpSocket;
use std::time::Duration;

use etherparse::PacketBuilder;
use fustian::lab::{LabBackend, Topology, VTEP_MACS, host_addr};

use crate::common::{
    BULK, EXE, exchange_both_ways, for_each_loop, serial, skip, topology, wait_for,
};

fn start_vxlan(topo: &mut Topology, nodes: &[usize], extra: &[&str]) {
    for &i in nodes {
        let args = topo.node_args_for(i, LabBackend::Vxlan, extra);
        topo.start_node(i, EXE, &args)
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

fn mac(i: usize) -> [u8; 6] {
    let mut out = [0u8; 6];
    for (o, part) in out.iter_mut().zip(VTEP_MACS[i].split(':')) {
        *o = u8::from_str_radix(part, 16).expect("hex");
    }
    out
}

/// A VXLAN frame built by hand: header, inner Ethernet, an IPv4/UDP packet to pod A.
fn frame(flags: u8, vni: u32, dst: [u8; 6], src: [u8; 6], ethertype: u16, ip: &[u8]) -> Vec<u8> {
    let v = vni.to_be_bytes();
    let mut f = vec![flags, 0, 0, 0, v[1], v[2], v[3], 0];
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(ip);
    f
}

fn ip_packet(src: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ipv4(src, [10, 244, 1, 2], 64).udp(9000, 9001);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, payload).expect("build");
    out
}

#[test]
fn fustian_vxlan_pair() {
    if skip("fustian_vxlan_pair") {
        return;
    }
    let _serial = serial();
    for_each_loop("fustian_vxlan_pair", |extra| {
        let mut topo = topology();
        start_vxlan(&mut topo, &[0, 1], extra);
        exchange_both_ways(&topo);
        for i in 0..2 {
            let done = wait_for(Duration::from_secs(3), || {
                topo.counter(i, "rx_bytes") > BULK
            });
            assert!(done, "node {i}: {:?}", topo.stats(i));
        }
    });
}

#[test]
fn interoperates_with_kernel_vxlan_as_flannel_programs_it() {
    if skip("interoperates_with_kernel_vxlan_as_flannel_programs_it") {
        return;
    }
    let _serial = serial();
    for_each_loop("interoperates_with_kernel_vxlan", interop);
}

fn interop(extra: &[&str]) {
    let mut topo = topology();
    let programmed = topo.program_kernel_vxlan(1);
    programmed.unwrap_or_else(|e| panic!("kernel vxlan: {e}"));
    start_vxlan(&mut topo, &[0], extra);
    exchange_both_ways(&topo);
    let done = wait_for(Duration::from_secs(3), || {
        topo.counter(0, "rx_bytes") > BULK && topo.counter(0, "tx_bytes") > BULK
    });
    assert!(done, "{:?}", topo.stats(0));
    for reason in [
        "wrong_vni",
        "wrong_dst_mac",
        "own_src_mac",
        "rx_bad_flags",
        "non_ip",
        "vxlan_not_host",
        "rx_bad_tcp_checksum",
        "rx_too_big",
    ] {
        assert_eq!(topo.counter(0, &format!("drop_{reason}")), 0, "{reason}");
    }
    // With offloads, fustian's super-packets went to the kernel as GSO sends, and the kernel
    // peer's super-frames (or GRO reads) reached TUN whole.
    if !extra.contains(&"off") {
        for name in ["tun_rx_super", "tx_gso_sends", "tun_tx_merged"] {
            assert!(topo.counter(0, name) > 0, "{name}: {:?}", topo.stats(0));
        }
    }
}

#[test]
fn outer_source_port_follows_the_flow() {
    if skip("outer_source_port_follows_the_flow") {
        return;
    }
    let _serial = serial();
    for_each_loop("outer_source_port_follows_the_flow", source_ports);
}

fn source_ports(extra: &[&str]) {
    let mut topo = topology();
    start_vxlan(&mut topo, &[0], extra);
    // Node B is a socket on the VXLAN port that records what arrives.
    let vtep = topo.hosts[1]
        .run(|| UdpSocket::bind("192.0.2.2:8472"))
        .expect("enter b")
        .expect("bind 8472");
    vtep.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let pod = topo.pods[0]
        .run(|| UdpSocket::bind("10.244.1.2:0"))
        .expect("enter pod")
        .expect("bind");
    let flows: Vec<u16> = (0..16).map(|i| 20_000 + i).collect();
    for round in 0..3 {
        for &port in &flows {
            pod.send_to(&[round], ("10.244.2.2", port)).expect("send");
        }
    }
    let mut by_flow: HashMap<u16, HashSet<u16>> = HashMap::new();
    let mut buf = [0u8; 2048];
    for _ in 0..flows.len() * 3 {
        let (n, from) = vtep.recv_from(&mut buf).expect("frame arrives");
        assert!(n >= 22 + 28, "short frame");
        assert_eq!(
            &buf[..8],
            &[0x08, 0, 0, 0, 0, 0, 1, 0],
            "VXLAN header, VNI 1"
        );
        assert_eq!(
            &buf[8..14],
            &mac(1),
            "inner destination is the peer's VTEP MAC"
        );
        assert_eq!(&buf[14..20], &mac(0), "inner source is the own VTEP MAC");
        assert_eq!(&buf[20..22], &[0x08, 0x00], "EtherType IPv4");
        assert_eq!(from.ip(), host_addr(0, 0).ip());
        assert!(
            (32768..=60999).contains(&from.port()),
            "port {} outside range",
            from.port()
        );
        let inner_dport = u16::from_be_bytes([buf[22 + 22], buf[22 + 23]]);
        by_flow.entry(inner_dport).or_default().insert(from.port());
    }
    assert_eq!(by_flow.len(), flows.len());
    for (flow, ports) in &by_flow {
        assert_eq!(
            ports.len(),
            1,
            "flow to port {flow} left from ports {ports:?}"
        );
    }
    let distinct: HashSet<u16> = by_flow.values().flatten().copied().collect();
    assert!(
        distinct.len() >= 4,
        "16 flows used only {} source ports",
        distinct.len()
    );
}

#[test]
fn bad_frames_are_counted_while_good_traffic_flows() {
    if skip("bad_frames_are_counted_while_good_traffic_flows") {
        return;
    }
    let _serial = serial();
    for_each_loop("bad_frames_are_counted", bad_frames);
}

fn bad_frames(extra: &[&str]) {
    let mut topo = topology();
    start_vxlan(&mut topo, &[0], extra);
    let peer = topo.hosts[1]
        .run(|| UdpSocket::bind("192.0.2.2:40000"))
        .expect("enter b")
        .expect("bind");
    let pod = topo.pods[0]
        .run(|| UdpSocket::bind("10.244.1.2:9001"))
        .expect("enter pod")
        .expect("bind pod socket");
    pod.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let (a, b) = (mac(0), mac(1));
    let evil = ip_packet([10, 244, 2, 5], b"evil");
    let good = |n: u8| {
        frame(
            0x08,
            1,
            a,
            b,
            0x0800,
            &ip_packet([10, 244, 2, 5], &[b'g', n]),
        )
    };
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (frame(0x08, 2, a, b, 0x0800, &evil), "drop_wrong_vni"),
        (frame(0x0c, 1, a, b, 0x0800, &evil), "drop_rx_bad_flags"),
        (frame(0x00, 1, a, b, 0x0800, &evil), "drop_rx_bad_flags"),
        (
            {
                let mut f = frame(0x08, 1, a, b, 0x0800, &evil);
                f[7] = 1;
                f
            },
            "drop_rx_bad_flags",
        ),
        (
            frame(0x08, 1, [0x02, 0, 0, 0, 0, 9], b, 0x0800, &evil),
            "drop_wrong_dst_mac",
        ),
        (frame(0x08, 1, a, a, 0x0800, &evil), "drop_own_src_mac"),
        // A unicast packet for the pod in a broadcast or multicast frame: the kernel's IP
        // forwarding refuses what its vxlan device marked broadcast or multicast.
        (
            frame(0x08, 1, [0xff; 6], b, 0x0800, &evil),
            "drop_vxlan_not_host",
        ),
        (
            frame(0x08, 1, [0x01, 0x00, 0x5e, 0, 0, 5], b, 0x0800, &evil),
            "drop_vxlan_not_host",
        ),
        (frame(0x08, 1, a, b, 0x0806, &[0u8; 28]), "drop_non_ip"),
        (
            frame(0x08, 1, a, b, 0x0800, &evil[..30]),
            "drop_rx_truncated",
        ),
    ];
    let addr = host_addr(0, 8472);
    for (i, (f, _)) in bad.iter().enumerate() {
        peer.send_to(&good(u8::try_from(i).expect("small")), addr)
            .expect("send good");
        peer.send_to(f, addr).expect("send bad");
    }
    let mut buf = [0u8; 2048];
    for i in 0..bad.len() {
        let (n, _) = pod.recv_from(&mut buf).expect("good frames keep arriving");
        assert_eq!(&buf[..n], &[b'g', u8::try_from(i).expect("small")]);
    }
    assert!(
        pod.recv_from(&mut buf).is_err(),
        "a bad frame reached the pod"
    );
    let mut want: HashMap<&str, u64> = HashMap::new();
    for (_, counter) in &bad {
        *want.entry(counter).or_default() += 1;
    }
    let settled = wait_for(Duration::from_secs(3), || {
        want.iter().all(|(name, n)| topo.counter(0, name) == *n)
    });
    assert!(settled, "want {want:?}, have {:?}", topo.stats(0));
}

#[test]
fn super_frames_are_cut_only_with_a_sound_checksum() {
    if skip("super_frames_are_cut_only_with_a_sound_checksum") {
        return;
    }
    let _serial = serial();
    for_each_loop(
        "super_frames_are_cut_only_with_a_sound_checksum",
        super_frames,
    );
}

/// A TCP packet from pod B to pod A, larger than the path (as a kernel peer on the same host
/// hands over a TSO super-frame), with a valid complete checksum.
fn tcp_super_packet(payload_len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..payload_len)
        .map(|i| u8::try_from(i % 251).expect("below 251"))
        .collect();
    let builder = PacketBuilder::ipv4([10, 244, 2, 5], [10, 244, 1, 2], 64)
        .tcp(5201, 40000, 1_000_000, 512)
        .ack(1);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, &payload).expect("build");
    out
}

/// One corrupted super-frame is dropped and counted, never cut into segments with fresh
/// checksums; then the same packet intact is cut and delivered.
fn super_frames(extra: &[&str]) {
    let mut topo = topology();
    start_vxlan(&mut topo, &[0], extra);
    let peer = topo.hosts[1]
        .run(|| UdpSocket::bind("192.0.2.2:40000"))
        .expect("enter b")
        .expect("bind");
    let (a, b) = (mac(0), mac(1));
    let good = tcp_super_packet(4000);
    let mut corrupted = good.clone();
    // One payload byte changed after the sender computed the checksum.
    corrupted[1000] ^= 0x20;
    let addr = host_addr(0, 8472);
    peer.send_to(&frame(0x08, 1, a, b, 0x0800, &corrupted), addr)
        .expect("send corrupted");
    let dropped = wait_for(Duration::from_secs(3), || {
        topo.counter(0, "drop_rx_bad_tcp_checksum") == 1
    });
    assert!(dropped, "{:?}", topo.stats(0));
    assert_eq!(topo.counter(0, "tun_tx_segmented"), 0);
    assert_eq!(topo.counter(0, "tun_tx_packets"), 0);

    peer.send_to(&frame(0x08, 1, a, b, 0x0800, &good), addr)
        .expect("send intact");
    let cut = wait_for(Duration::from_secs(3), || {
        topo.counter(0, "tun_tx_segmented") == 1 && topo.counter(0, "tun_tx_packets") >= 3
    });
    assert!(cut, "{:?}", topo.stats(0));
    assert_eq!(topo.counter(0, "drop_rx_bad_tcp_checksum"), 1);
}

#[test]
fn gro_read_of_frames_is_judged_frame_by_frame() {
    if skip("gro_read_of_frames_is_judged_frame_by_frame") {
        return;
    }
    let _serial = serial();
    for_each_loop("gro_read_of_frames_is_judged_frame_by_frame", gro_frames);
}

/// One `UDP_SEGMENT` batch of eight 1000-byte VXLAN frames whose first is garbage: the batch
/// is still cut into frames, and the seven good ones reach the pod.
fn gro_frames(extra: &[&str]) {
    const COUNT: usize = 8;
    const SIZE: usize = 1000;
    let mut topo = topology();
    start_vxlan(&mut topo, &[0], extra);
    let peer = topo.hosts[1]
        .run(|| UdpSocket::bind("192.0.2.2:40000"))
        .expect("enter b")
        .expect("bind");
    let pod = topo.pods[0]
        .run(|| UdpSocket::bind("10.244.1.2:9001"))
        .expect("enter pod")
        .expect("bind pod socket");
    pod.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    crate::garbage::set_udp_segment(&peer, SIZE);
    let (a, b) = (mac(0), mac(1));
    let inner_len = SIZE - 22;
    // Zeros: no VXLAN I flag, no IP version.
    let mut batch = vec![0u8; SIZE];
    for i in 1..COUNT {
        let mut payload = vec![0u8; inner_len - 28];
        payload[0] = u8::try_from(i).expect("small");
        batch.extend(frame(
            0x08,
            1,
            a,
            b,
            0x0800,
            &ip_packet([10, 244, 2, 5], &payload),
        ));
    }
    assert_eq!(batch.len(), COUNT * SIZE);
    peer.send_to(&batch, host_addr(0, 8472))
        .expect("send the batch");
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    for _ in 1..COUNT {
        match pod.recv_from(&mut buf) {
            Ok((n, _)) => {
                assert_eq!(n, inner_len - 28);
                got.push(buf[0]);
            }
            Err(e) => panic!("{e}: received {got:?}; {:?}", topo.stats(0)),
        }
    }
    got.sort_unstable();
    let want: Vec<u8> = (1..COUNT)
        .map(|i| u8::try_from(i).expect("small"))
        .collect();
    assert_eq!(got, want);
    let settled = wait_for(Duration::from_secs(3), || {
        topo.counter(0, "rx_packets") == COUNT as u64
            && topo.counter(0, "drop_rx_bad_flags") == 1
            && topo.counter(0, "tun_tx_packets") == COUNT as u64 - 1
    });
    assert!(settled, "{:?}", topo.stats(0));
    if !extra.contains(&"off") {
        assert_eq!(topo.counter(0, "rx_gro_reads"), 1, "{:?}", topo.stats(0));
    }
}
