//! The datapath core driven without any I/O: plans, counters, order and the balance of every
//! input.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use etherparse::PacketBuilder;
use ipnet::IpNet;
use proptest::prelude::*;

use super::*;
use crate::metrics::DropReason;
use crate::offload::VnetHdr;
use crate::offload::vnet::{F_NEEDS_CSUM, GSO_TCPV4};
use crate::table::{Peer, Snapshot};
use crate::udp::Received;
use crate::wire::{MacAddress, VxlanParams};

const NETWORK: IpNet = IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(10, 244, 0, 0)), 16);
const MAC_A: MacAddress = MacAddress([0x2a, 0x89, 0x75, 0x16, 0x96, 0xaa]);
const MAC_B: MacAddress = MacAddress([0xee, 0x58, 0x53, 0xba, 0x43, 0xf5]);
const A: &str = "192.0.2.1:8285";
const B: &str = "192.0.2.2:8285";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("literal")
}

fn fwd(vxlan: bool, local_mac: MacAddress) -> Forwarding {
    Forwarding {
        encap: if vxlan {
            Encap::Vxlan(VxlanParams { vni: 1, local_mac })
        } else {
            Encap::Flannel
        },
        network: NETWORK,
        max_inner_len: if vxlan { 1450 } else { 1472 },
        icmp: true,
        strict_source_port: false,
    }
}

/// Node `own` (1 or 2) of a two-node overlay: 10.244.own.0/24 here, the other one's subnet at
/// the other one's address.
fn snapshot(own: u8) -> Snapshot {
    let (other, at, mac) = if own == 1 {
        (2, B, MAC_B)
    } else {
        (1, A, MAC_A)
    };
    Snapshot::new(
        vec![format!("10.244.{own}.0/24").parse().expect("literal")],
        vec![Peer {
            subnet: format!("10.244.{other}.0/24").parse().expect("literal"),
            endpoint: addr(at),
            vtep_mac: Some(mac),
        }],
    )
    .expect("valid")
}

fn core(own: u8, vxlan: bool, vnet: bool, gro: bool) -> Core {
    let mac = if own == 1 { MAC_A } else { MAC_B };
    Core::new(
        CoreConfig {
            worker: 0,
            fwd: fwd(vxlan, mac),
            vnet,
            uso: vnet,
            gro,
            sockets: 0,
            tun_mtu: 1472,
        },
        Arc::new(Metrics::new(1)),
    )
}

/// A TCP segment of the flow 10.244.1.2:40000 → 10.244.2.2:5201 with a valid checksum.
fn tcp(seq: u32, payload: &[u8], psh: bool) -> Vec<u8> {
    let mut b = PacketBuilder::ipv4([10, 244, 1, 2], [10, 244, 2, 2], 64)
        .tcp(40000, 5201, seq, 512)
        .ack(77);
    if psh {
        b = b.psh();
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).expect("build");
    out
}

fn udp(src: [u8; 4], dst: [u8; 4], len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(src, dst, 64)
        .udp(1000, 2000)
        .write(&mut out, &vec![7u8; len])
        .expect("build");
    out
}

/// A TUN slot holding `packet` where a read puts it, with the virtio-net header `hdr` in front
/// when the core takes them. Returns the slot and the read's length.
fn tun_slot(c: &Core, hdr: Option<VnetHdr>, packet: &[u8]) -> (Vec<u8>, usize) {
    let mut slot = vec![0u8; c.tun_slot_len()];
    slot[HEADROOM..HEADROOM + packet.len()].copy_from_slice(packet);
    if c.vnet_len() > 0 {
        let h = hdr.unwrap_or(VnetHdr::NONE).to_bytes();
        slot[HEADROOM - VNET_HDR_LEN..HEADROOM].copy_from_slice(&h);
    }
    (slot, packet.len() + c.vnet_len())
}

/// Sends `packet` from A's TUN through A's core; returns the datagram it plans.
fn send(a: &mut Core, packet: &[u8]) -> Vec<u8> {
    let (mut slot, n) = tun_slot(a, None, packet);
    match a.tun_read(&snapshot(1), &mut slot, n, Instant::now()) {
        TxPlan::Datagram { start, len, .. } => slot[start..start + len].to_vec(),
        other => panic!("not sent: {other:?}"),
    }
}

/// Resolves the writes the core planned for `slot` into packets and their headers.
fn writes(c: &Core, slot: &[u8]) -> Vec<(VnetHdr, Vec<u8>)> {
    let mut out = Vec::new();
    c.rx_writes(slot, |w| {
        let mut p = w.head.to_vec();
        p.extend_from_slice(w.body);
        out.push((w.hdr.copied().unwrap_or(VnetHdr::NONE), p));
    });
    out
}

/// Receives one read at B from `from`.
fn receive(b: &mut Core, read: &[u8], segment: usize, from: &str) -> Vec<(VnetHdr, Vec<u8>)> {
    receive_in(b, &snapshot(2), read, segment, from)
}

/// Receives one read at B from `from` with the table `snap` (whose peer counters a test reads).
fn receive_in(
    b: &mut Core,
    snap: &Snapshot,
    read: &[u8],
    segment: usize,
    from: &str,
) -> Vec<(VnetHdr, Vec<u8>)> {
    let mut slot = vec![0u8; b.rx_payload() + 1];
    let len = read.len();
    let n = len.min(slot.len());
    slot[..n].copy_from_slice(&read[..n]);
    let r = Received {
        len,
        from: Some(addr(from)),
        truncated: len > slot.len(),
        segment,
    };
    b.udp_read(snap, &mut slot, &r);
    writes(b, &slot)
}

fn flush(c: &mut Core) -> Vec<(VnetHdr, Vec<u8>)> {
    c.rx_flush();
    writes(c, &[])
}

fn balanced(t: Tally) -> bool {
    t.tun_reads == t.sent + t.tun_dropped && t.datagrams == t.delivered + t.rx_dropped + t.probes
}

fn drops(c: &Core, reason: DropReason) -> u64 {
    c.metrics.totals().dropped(reason)
}

#[test]
fn a_packet_crosses_both_cores_unchanged() {
    for vxlan in [false, true] {
        let (mut a, mut b) = (core(1, vxlan, false, false), core(2, vxlan, false, false));
        let packet = udp([10, 244, 1, 2], [10, 244, 2, 2], 100);
        let datagram = send(&mut a, &packet);
        assert_eq!(datagram.len(), packet.len() + if vxlan { 22 } else { 0 });
        let out = receive(&mut b, &datagram, 0, A);
        assert_eq!(out, vec![(VnetHdr::NONE, packet)]);
        assert!(balanced(a.tally()) && balanced(b.tally()));
        assert_eq!((a.tally().sent, b.tally().delivered), (1, 1));
    }
}

#[test]
fn unroutable_packets_earn_a_rate_limited_icmp_error() {
    let mut a = core(1, false, false, false);
    let now = Instant::now();
    let mut icmp = 0;
    for _ in 0..150 {
        let (mut slot, n) = tun_slot(&a, None, &udp([10, 244, 1, 2], [10, 244, 9, 9], 10));
        match a.tun_read(&snapshot(1), &mut slot, n, now) {
            TxPlan::Icmp { len } => {
                icmp += 1;
                assert_eq!(a.icmp_reply(len)[20], 3, "destination unreachable");
            }
            TxPlan::Dropped => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(icmp, 100, "a burst of 100, then the bucket is empty");
    assert_eq!(drops(&a, DropReason::NoRoute), 150);
    assert_eq!(a.tally().tun_dropped, 150);
    assert!(balanced(a.tally()));
}

#[test]
fn a_super_packet_is_cut_into_segments_that_fit() {
    let mut a = core(1, true, true, false);
    let payload = vec![9u8; 10_000];
    let mut packet = tcp(1, &payload, false);
    // As the kernel hands it over: the checksum is left to the device.
    packet[36..38].fill(0);
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 40,
        gso_size: 1400,
        csum_start: 20,
        csum_offset: 16,
    };
    let (mut slot, n) = tun_slot(&a, Some(hdr), &packet);
    let plan = a.tun_read(&snapshot(1), &mut slot, n, Instant::now());
    let TxPlan::Segments {
        count,
        packet: at,
        packet_len,
        ..
    } = plan
    else {
        panic!("{plan:?}");
    };
    assert_eq!((at, packet_len), (HEADROOM, packet.len()));
    // The path allows 1450 bytes of inner packet: 1410 of payload per segment.
    assert_eq!(count, 10_000usize.div_ceil(1400));
    let mut b = core(2, true, false, false);
    let mut stream = Vec::new();
    for (i, seg) in a.segments(count).iter().enumerate() {
        let mut datagram = a.segment_headers()[i * a.segment_stride()..][..seg.header_len].to_vec();
        datagram.extend_from_slice(&slot[at + seg.payload_start..][..seg.payload_len]);
        assert!(datagram.len() - 22 <= 1450);
        for (_, p) in receive(&mut b, &datagram, 0, "192.0.2.1:40000") {
            stream.extend_from_slice(&p[40..]);
        }
    }
    assert_eq!(stream, payload, "every segment valid and delivered");
    assert_eq!(a.tally().sent_datagrams, count as u64);
    assert_eq!(b.tally().delivered, count as u64);
}

#[test]
fn a_gro_read_is_cut_and_merged_again() {
    let mut b = core(2, false, true, true);
    let mut read = Vec::new();
    let mut seq = 1;
    for _ in 0..10 {
        read.extend(tcp(seq, &[5u8; 1000], false));
        seq += 1000;
    }
    let mut out = receive(&mut b, &read, 1040, A);
    out.extend(flush(&mut b));
    assert_eq!(out.len(), 1, "one merged packet");
    let (hdr, merged) = &out[0];
    assert_eq!((hdr.gso_type, hdr.gso_size), (GSO_TCPV4, 1000));
    assert_eq!(merged.len(), 40 + 10_000);
    assert_eq!(b.tally().delivered, 10);
    assert!(balanced(b.tally()));
}

/// The segments 1..=4 of one flow, the third with a payload byte changed after its checksum
/// was written (as a corruption on the way would leave it).
fn segments_one_corrupted() -> Vec<Vec<u8>> {
    let mut segs: Vec<Vec<u8>> = (0..4u32)
        .map(|i| tcp(1 + i * 1000, &[5u8; 1000], false))
        .collect();
    segs[2][100] ^= 0x40;
    segs
}

#[test]
fn a_datagram_read_alone_has_its_inner_checksum_verified() {
    // A datagram read alone may have carried a zero outer UDP checksum (a kernel `vxlan` peer's
    // default), which nothing verified: the corrupted segment must not be merged into a packet
    // the kernel would then checksum afresh. It is written alone, unchanged, for the receiving
    // TCP stack to drop.
    let mut b = core(2, false, true, true);
    let segs = segments_one_corrupted();
    let mut out = Vec::new();
    for seg in &segs {
        out.extend(receive(&mut b, seg, 0, A));
    }
    out.extend(flush(&mut b));
    let corrupted = out.iter().position(|(_, p)| *p == segs[2]);
    assert!(
        corrupted.is_some(),
        "the corrupted segment is written as it came: {out:?}"
    );
    assert_eq!(out.len(), 3, "segments 0-1 merged, 2 alone, 3 alone");
    assert!(balanced(b.tally()));
}

#[test]
fn a_gro_read_has_every_inner_checksum_verified() {
    // A peer computes the outer UDP checksum over whatever inner bytes it sends, so a valid
    // outer checksum (the only kind Linux coalesces into one `UDP_GRO` read) says nothing about
    // the inner segment: the corrupted one must not be merged into a packet the kernel would
    // then checksum afresh. It is written alone, unchanged, for the receiving TCP stack to drop.
    let mut b = core(2, false, true, true);
    let segs = segments_one_corrupted();
    let read: Vec<u8> = segs.concat();
    let mut out = receive(&mut b, &read, 1040, A);
    out.extend(flush(&mut b));
    assert!(
        out.iter().any(|(_, p)| *p == segs[2]),
        "the corrupted segment is written as it came: {out:?}"
    );
    assert_eq!(out.len(), 3, "segments 0-1 merged, 2 alone, 3 alone");
    assert_eq!(b.tally().delivered, 4);
    assert!(balanced(b.tally()));
}

/// `packet` (IPv4 without options) with `options` put into its header, lengths and header
/// checksum fixed.
fn with_options(packet: &[u8], options: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let mut p = packet[..20].to_vec();
    p.extend_from_slice(options);
    p.extend_from_slice(&packet[20..]);
    p[0] = 0x40 | u8::try_from((20 + options.len()) / 4).expect("short");
    let total = u16::try_from(p.len()).expect("short");
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[10..12].fill(0);
    let sum = crate::wire::ip::checksum(&p[..20 + options.len()]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p
}

#[test]
fn a_source_route_with_addresses_left_is_not_delivered() {
    // LSRR naming 192.0.2.66: the receiving kernel would send the packet on there.
    let mut b = core(2, false, false, false);
    let plain = udp([10, 244, 1, 2], [10, 244, 2, 2], 10);
    let routed = with_options(&plain, &[1, 0x83, 7, 4, 192, 0, 2, 66]);
    assert!(receive(&mut b, &routed, 0, A).is_empty());
    assert_eq!(drops(&b, DropReason::RxIpv4Options), 1);
    // The same route used up, and a record route, are delivered as they came.
    let used = with_options(&plain, &[1, 0x83, 7, 8, 192, 0, 2, 66]);
    assert_eq!(receive(&mut b, &used, 0, A)[0].1, used);
    let record = with_options(&plain, &[1, 7, 7, 4, 0, 0, 0, 0]);
    assert_eq!(receive(&mut b, &record, 0, A)[0].1, record);
    assert_eq!(b.tally().delivered, 2);
    assert!(balanced(b.tally()));
}

#[test]
fn reads_that_cannot_be_taken_are_dropped_whole_once_per_datagram() {
    let mut b = core(2, false, false, true);
    let big = vec![0x45u8; MAX_UDP_PAYLOAD + 1];
    assert!(receive(&mut b, &big, 1000, A).is_empty());
    assert_eq!(drops(&b, DropReason::Oversize), 66);
    let mut slot = vec![0u8; 100];
    b.udp_read(
        &snapshot(2),
        &mut slot,
        &Received {
            len: 30,
            from: None,
            truncated: false,
            segment: 10,
        },
    );
    assert!(b.rx_ops().is_empty());
    assert_eq!(drops(&b, DropReason::UnknownSender), 3);
    let packet = udp([10, 244, 1, 2], [10, 244, 2, 2], 10);
    assert!(receive(&mut b, &packet, 0, "192.0.2.99:8285").is_empty());
    assert_eq!(drops(&b, DropReason::UnknownSender), 4);
    assert_eq!(b.tally().rx_dropped, 70);
    assert!(balanced(b.tally()));
}

#[test]
fn a_kernel_super_frame_is_cut_for_a_device_without_offloads() {
    let payload: Vec<u8> = (0..5000u32)
        .map(|i| u8::try_from(i % 251).expect("small"))
        .collect();
    let mut inner = PacketBuilder::ipv4([10, 244, 1, 2], [10, 244, 2, 2], 64)
        .tcp(40000, 5201, 1, 512)
        .ack(1);
    inner = inner.psh();
    let mut packet = Vec::new();
    inner.write(&mut packet, &payload).expect("build");
    let mut a = core(1, true, false, false);
    // A's core would never send this much in one datagram; build the frame by hand.
    let mut frame = send(&mut a, &udp([10, 244, 1, 2], [10, 244, 2, 2], 10))[..22].to_vec();
    frame.extend_from_slice(&packet);
    for vnet in [false, true] {
        let mut b = core(2, true, vnet, false);
        let out = receive(&mut b, &frame, 0, "192.0.2.1:40000");
        if vnet {
            // A complete checksum: not a partial super-packet the kernel could cut, so it is cut
            // here too, behind plain headers.
            assert!(out.iter().all(|(h, _)| *h == VnetHdr::NONE));
        }
        let stream: Vec<u8> = out.iter().flat_map(|(_, p)| p[40..].to_vec()).collect();
        assert_eq!(stream, payload);
        assert!(out.iter().all(|(_, p)| p.len() <= 1450));
        assert_eq!(b.tally().delivered, 1);
    }
}

#[test]
fn a_peer_is_counted_only_for_what_is_delivered() {
    // Kernel super-frames from A pass the receive checks but cannot all be written: one whose
    // inner UDP packet is too long to cut, one whose TCP checksum is wrong. Neither counts as
    // received from A; the frame that is delivered does, once with its length.
    let mut a = core(1, true, false, false);
    let head = send(&mut a, &udp([10, 244, 1, 2], [10, 244, 2, 2], 10))[..22].to_vec();
    let frame = |inner: &[u8]| [head.as_slice(), inner].concat();
    let payload = vec![9u8; 3000];
    let too_big = frame(&udp([10, 244, 1, 2], [10, 244, 2, 2], 3000));
    let mut bad = tcp(1, &payload, true);
    bad[2000] ^= 0x40;
    let bad = frame(&bad);
    let good = frame(&tcp(1, &payload, true));
    let table = crate::table::Table::new(snapshot(2), 1);
    let snap = table.load();
    let mut b = core(2, true, false, false);
    assert!(receive_in(&mut b, &snap, &too_big, 0, A).is_empty());
    assert!(receive_in(&mut b, &snap, &bad, 0, A).is_empty());
    assert_eq!(drops(&b, DropReason::RxTooBig), 1);
    assert_eq!(drops(&b, DropReason::RxBadTcpChecksum), 1);
    let peer = snap.peer_stats(0).expect("A's counters");
    assert_eq!((peer.totals().rx_packets, peer.totals().rx_bytes), (0, 0));
    assert!(!receive_in(&mut b, &snap, &good, 0, A).is_empty());
    let t = peer.totals();
    assert_eq!((t.rx_packets, t.rx_bytes), (1, good.len() as u64));
    assert_eq!(b.tally().delivered, 1);
    assert!(balanced(b.tally()));
}

/// What the receiving kernel sees of `writes`: each packet, a merged one cut back at its
/// segment size; returns each TCP segment's sequence number and payload length.
fn segments_seen(writes: &[(VnetHdr, Vec<u8>)]) -> Vec<(u32, usize)> {
    let mut out = Vec::new();
    let mut scratch = vec![0u8; 65_536];
    for (h, p) in writes {
        let mut take = |s: &[u8]| {
            out.push((
                u32::from_be_bytes([s[24], s[25], s[26], s[27]]),
                s.len() - 40,
            ));
        };
        if h.gso_type == GSO_TCPV4 {
            let max = 40 + usize::from(h.gso_size);
            crate::wire::tcp::segment(p, max, &mut scratch, take).expect("cuts");
        } else {
            take(p);
        }
    }
    out
}

proptest! {
    /// A flow's segments, read in any grouping into `UDP_GRO` reads and batches, reach TUN in
    /// the order they came, each exactly once, merged or not.
    #[test]
    fn a_flow_keeps_its_order(
        sizes in proptest::collection::vec((1usize..4, any::<bool>(), any::<bool>()), 1..60),
        groups in proptest::collection::vec(1usize..8, 1..60),
        flushes in proptest::collection::vec(any::<bool>(), 1..60),
        vnet in any::<bool>(),
    ) {
        let mut b = core(2, false, vnet, true);
        let mut seq = 1u32;
        let mut sent = Vec::new();
        for &(size, psh, corrupt) in &sizes {
            let len = size * 300;
            let mut p = tcp(seq, &vec![1u8; len], psh);
            if corrupt {
                let last = p.len() - 1;
                p[last] ^= 0xff;
            }
            sent.push((seq, len, p));
            seq = seq.wrapping_add(u32::try_from(len).expect("small"));
        }
        let mut written = Vec::new();
        let mut i = 0;
        let mut g = groups.iter().cycle();
        let mut f = flushes.iter().cycle();
        while i < sent.len() {
            // A GRO read: datagrams of one size, the last may be shorter.
            let size = sent[i].2.len();
            let mut n = 1;
            let want = *g.next().expect("cycle");
            while i + n < sent.len() && n < want && sent[i + n - 1].2.len() == size
                && sent[i + n].2.len() <= size
            {
                n += 1;
            }
            let read: Vec<u8> = sent[i..i + n].iter().flat_map(|s| s.2.clone()).collect();
            written.extend(receive(&mut b, &read, if n > 1 { size } else { 0 }, A));
            if *f.next().expect("cycle") {
                written.extend(flush(&mut b));
            }
            i += n;
        }
        written.extend(flush(&mut b));
        let want: Vec<(u32, usize)> = sent.iter().map(|s| (s.0, s.1)).collect();
        prop_assert_eq!(segments_seen(&written), want);
        prop_assert_eq!(b.tally().delivered, sent.len() as u64);
        prop_assert!(balanced(b.tally()));
    }

    /// Whatever arrives, in either direction, is accounted for exactly once, and every planned
    /// range lies inside the slot it refers to.
    #[test]
    fn every_input_is_accounted_for_once(
        reads in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..1472), any::<[u8; 10]>(), 0usize..2000, any::<bool>()),
            1..20),
        vxlan in any::<bool>(), vnet in any::<bool>(), gro in any::<bool>(),
    ) {
        let mut a = core(1, vxlan, vnet, gro);
        let mut b = core(2, vxlan, vnet, gro);
        for (bytes, hdr, segment, known) in &reads {
            let (mut slot, n) = tun_slot(&a, None, bytes);
            if a.vnet_len() > 0 {
                slot[HEADROOM - VNET_HDR_LEN..HEADROOM].copy_from_slice(hdr);
            }
            match a.tun_read(&snapshot(1), &mut slot, n, Instant::now()) {
                TxPlan::Datagram { start, len, .. } => prop_assert!(start + len <= slot.len()),
                TxPlan::Segments { packet, packet_len, count, .. } => {
                    prop_assert!(packet + packet_len <= slot.len());
                    for s in a.segments(count) {
                        prop_assert!(s.payload_start + s.payload_len <= packet_len);
                    }
                }
                TxPlan::Icmp { len } => prop_assert!(!a.icmp_reply(len).is_empty()),
                TxPlan::Dropped => {}
            }
            let from = if *known { A } else { "192.0.2.77:8285" };
            let out = receive(&mut b, bytes, *segment, from);
            prop_assert!(out.iter().all(|(_, p)| p.len() <= 65_535));
        }
        let _ = flush(&mut b);
        prop_assert!(balanced(a.tally()), "{:?}", a.tally());
        prop_assert!(balanced(b.tally()), "{:?}", b.tally());
        prop_assert_eq!(a.tally().tun_reads, reads.len() as u64);
    }
}

/// A peer's probe is answered (never delivered), at most the bucket's worth, from any port of
/// the peer's address; a non-peer's gets no answer and is dropped as before; a probe reply
/// sent to the node is dropped.
#[test]
fn probes_are_answered_only_to_peers() {
    use crate::doctor::probe::{self, ANSWER_RATE, Kind, Probe};
    for vxlan in [false, true] {
        let mut b = core(2, vxlan, false, false);
        let mut req = Vec::new();
        let v = vxlan.then_some((1, MAC_B.0, MAC_A.0));
        probe::request(&mut req, 300, 42, v);
        let prefix = if vxlan { probe::VXLAN_PREFIX } else { 0 };
        assert!(receive(&mut b, &req, 0, "192.0.2.1:40000").is_empty());
        let (dst, reply) = b
            .probe_reply()
            .map(|(d, r)| (d, r.to_vec()))
            .expect("answered");
        assert_eq!(dst, addr("192.0.2.1:40000"));
        assert!(reply.len() <= req.len());
        assert_eq!(
            Probe::parse(&reply[prefix..]),
            Ok(Probe {
                kind: Kind::Reply { len: 300 },
                token: 42
            })
        );
        // Not from a peer: no answer, dropped as an unknown sender.
        assert!(receive(&mut b, &req, 0, "198.51.100.7:8285").is_empty());
        assert!(b.probe_reply().is_none());
        let totals = b.metrics.totals();
        assert_eq!(totals.dropped(DropReason::UnknownSender), 1);
        // A reply is no request: dropped by the receive checks.
        assert!(receive(&mut b, &reply, 0, A).is_empty());
        assert!(b.probe_reply().is_none());
        // The bucket: after the first answer, a burst gets the rest of the burst allowance
        // (plus the little that refills while it runs), no more.
        let mut answered = 0;
        for _ in 0..200 {
            receive(&mut b, &req, 0, A);
            answered += usize::from(b.probe_reply().is_some());
        }
        assert!(
            answered as f64 <= ANSWER_RATE && answered >= 45,
            "{answered}"
        );
        let t = b.tally();
        assert_eq!(t.probes, 201);
        assert_eq!(t.delivered, 0);
        assert!(balanced(t), "{t:?}");
        let totals = b.metrics.totals();
        assert_eq!(totals.probe_rx, 201);
        assert_eq!(totals.probe_rate_limited, 201 - 1 - answered as u64);
    }
}

#[test]
fn a_gro_read_of_probes_gets_one_answer_for_one_token() {
    use crate::doctor::probe::{self, Kind, Probe};
    for vxlan in [false, true] {
        let mut b = core(2, vxlan, false, false);
        let v = vxlan.then_some((1, MAC_B.0, MAC_A.0));
        let prefix = if vxlan { probe::VXLAN_PREFIX } else { 0 };
        let requests: Vec<Vec<u8>> = (1..=3)
            .map(|token| {
                let mut req = Vec::new();
                probe::request(&mut req, 300, token, v);
                req
            })
            .collect();
        let read = requests.concat();
        assert!(receive(&mut b, &read, requests[0].len(), A).is_empty());
        // The first request is answered, and its answer is not overwritten by the others.
        let reply = b.probe_reply().map(|(_, r)| r.to_vec()).expect("answered");
        assert_eq!(
            Probe::parse(&reply[prefix..]),
            Ok(Probe {
                kind: Kind::Reply { len: 300 },
                token: 1
            })
        );
        let totals = b.metrics.totals();
        assert_eq!((totals.probe_rx, totals.probe_rate_limited), (3, 2));
        assert_eq!(b.tally().probes, 3);
        assert!(balanced(b.tally()));
        // One token spent: the 49 left of the burst answer the next 49 single requests.
        let mut answered = 0;
        for _ in 0..49 {
            receive(&mut b, &requests[0], 0, A);
            answered += usize::from(b.probe_reply().is_some());
        }
        assert_eq!(answered, 49);
    }
}
