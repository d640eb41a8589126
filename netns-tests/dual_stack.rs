//! IPv6: IPv6 pods over an IPv4 underlay, IPv4 pods over an IPv6 underlay, IPv6 over IPv6, and
//! dual-stack nodes with both underlays; fustian `vxlan` over IPv6 against a kernel `vxlan`
//! device programmed as flannel's IPv6 VTEP; hostile IPv6 inner packets.
//!
//! Addresses (inside the test's namespaces only): underlay 192.0.2.0/24 and 2001:db8::/64
//! (RFC 3849), pods 10.244.0.0/16 and fd00:10:244::/56 (RFC 4193).

use std::time::Duration;

use fustian::lab::{Family, LabBackend, Stack, Topology, pod_addr, pod_addr6};

use crate::common::{
    BULK, EXE, LOOPS, exchange_both_ways_at, for_each_loop, serial, skip, topology, wait_for,
};

/// Builds a topology with IPv6 and starts both nodes on `stack`.
fn start_stack(backend: LabBackend, stack: Stack, extra: &[&str]) -> Topology {
    let mut topo = topology();
    if let Err(e) = topo.add_ipv6() {
        panic!("netns test prerequisite missing or setup failed: {e}");
    }
    for i in 0..2 {
        let args = topo.node_args_stack(i, backend, stack, extra);
        if let Err(e) = topo.start_node(i, EXE, &args) {
            panic!("{e}");
        }
    }
    topo
}

/// Echo and a TCP transfer of `bulk` bytes each way with matching hashes, for each family of
/// the overlay; then the counters show the traffic and nothing dropped as spoofed.
fn exchange(topo: &Topology, stack: Stack, bulk: u64) {
    if stack.overlay.has_v4() {
        exchange_both_ways_at(topo, pod_addr, bulk);
    }
    if stack.overlay.has_v6() {
        exchange_both_ways_at(topo, pod_addr6, bulk);
    }
    let families = u64::from(stack.overlay.has_v4()) + u64::from(stack.overlay.has_v6());
    for i in 0..2 {
        let done = wait_for(Duration::from_secs(5), || {
            topo.counter(i, "tx_bytes") > families * bulk
                && topo.counter(i, "rx_bytes") > families * bulk
        });
        assert!(done, "node {i}: {:?}", topo.stats(i));
        // Each family went to the endpoint of its own underlay family, when there is one.
        let other = 1 - i;
        let mut subnets = Vec::new();
        if stack.overlay.has_v4() {
            subnets.push((fustian::lab::SUBNETS[other], false));
        }
        if stack.overlay.has_v6() {
            subnets.push((fustian::lab::IPV6_SUBNETS[other], true));
        }
        for (subnet, v6) in subnets {
            let ip: std::net::IpAddr = stack.endpoint(other, v6).parse().expect("literal");
            let endpoint = std::net::SocketAddr::new(ip, 8285);
            for dir in ["tx", "rx"] {
                let name =
                    format!("peer_{dir}_bytes{{subnet=\"{subnet}\",endpoint=\"{endpoint}\"}}");
                // The stats file is rewritten every 250 ms: wait for the one that holds the
                // whole transfer, rather than read one written before it ended.
                let done = wait_for(Duration::from_secs(5), || topo.counter(i, &name) > bulk);
                let n = topo.counter(i, &name);
                assert!(done, "node {i}: {name} = {n}: {:?}", topo.stats(i));
            }
        }
        for reason in [
            "drop_spoofed_source",
            "drop_not_local",
            "drop_unknown_sender",
            "drop_oversize",
        ] {
            assert_eq!(topo.counter(i, reason), 0, "node {i}: {reason}");
        }
    }
}

/// The subnet file says what flanneld's says for the stack.
fn check_subnet_file(topo: &Topology, stack: Stack) {
    let text = std::fs::read_to_string(topo.dir.path().join("node-0").join("subnet.env"))
        .expect("node 0 wrote its subnet file");
    let v4 = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n";
    let v6 = "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n";
    let want = match stack.overlay {
        Family::V4 => v4.to_owned(),
        Family::V6 => v6.to_owned(),
        Family::Dual => format!("{v4}{v6}"),
    };
    assert!(
        text.starts_with(&want),
        "subnet file:\n{text}\nwant first:\n{want}"
    );
    // udp: outer IP + UDP; the larger IPv6 header when any underlay address is IPv6.
    let overhead = if stack.underlay.has_v6() { 48 } else { 28 };
    assert!(
        text.contains(&format!("FLANNEL_MTU={}\n", 1500 - overhead)),
        "subnet file:\n{text}"
    );
}

/// A burst of IPv6 datagrams (IPv6 pods over an IPv6 underlay) is merged for TUN as an IPv6
/// UDP super-packet and reaches the pod as sent.
#[test]
fn a_burst_of_ipv6_udp_datagrams_is_merged_and_arrives_as_sent() {
    if skip("a_burst_of_ipv6_udp_datagrams_is_merged_and_arrives_as_sent") {
        return;
    }
    let _serial = serial();
    let topo = start_stack(
        LabBackend::Udp,
        Stack::V6,
        &["--io", "uring", "--threads", "1"],
    );
    crate::two_nodes::udp_burst_is_merged_and_delivered_as_sent(&topo, pod_addr6);
}

/// Each stack over the loops and offloads that matter for it: IPv6 over IPv6 in the whole
/// matrix, the mixed ones on io_uring with offloads and on epoll without.
#[test]
fn ipv6_stacks_carry_traffic() {
    if skip("ipv6_stacks_carry_traffic") {
        return;
    }
    let _serial = serial();
    let v6 = Stack::V6;
    for_each_loop("ipv6_stacks_carry_traffic (6 over 6)", |extra| {
        let topo = start_stack(LabBackend::Udp, v6, extra);
        exchange(&topo, v6, BULK);
        check_subnet_file(&topo, v6);
    });
    let mixed = [
        Stack {
            overlay: Family::V6,
            underlay: Family::V4,
        },
        Stack {
            overlay: Family::V4,
            underlay: Family::V6,
        },
        Stack::DUAL,
    ];
    for stack in mixed {
        // Both underlays: also with every receive single-shot (128 slots on two sockets).
        let loops: &[&[&str]] = if stack.underlay == Family::Dual {
            &[LOOPS[1], LOOPS[2], LOOPS[6]]
        } else {
            &[LOOPS[1], LOOPS[6]]
        };
        for &extra in loops {
            eprintln!(
                "== ipv6_stacks_carry_traffic ({} over {}) with {}",
                stack.overlay.name(),
                stack.underlay.name(),
                extra.join(" ")
            );
            let topo = start_stack(LabBackend::Udp, stack, extra);
            exchange(&topo, stack, BULK);
            check_subnet_file(&topo, stack);
        }
    }
}

/// fustian `vxlan` on a dual-stack node against a kernel node programmed as flanneld programs a
/// dual-stack VXLAN node: `flannel.1` over IPv4 for the IPv4 pods, `flannel-v6.1` (its own
/// VTEP MAC) over IPv6 for the IPv6 pods. Both families both ways, with matching hashes.
#[test]
fn vxlan_over_ipv6_interoperates_with_kernel_vxlan() {
    if skip("vxlan_over_ipv6_interoperates_with_kernel_vxlan") {
        return;
    }
    let _serial = serial();
    let dual = Stack::DUAL;
    for extra in [LOOPS[1], LOOPS[4], LOOPS[6]] {
        eprintln!(
            "== vxlan_over_ipv6_interoperates_with_kernel_vxlan with {}",
            extra.join(" ")
        );
        let mut topo = topology();
        topo.add_ipv6()
            .unwrap_or_else(|e| panic!("netns test prerequisite missing or setup failed: {e}"));
        topo.program_kernel_vxlan(1)
            .unwrap_or_else(|e| panic!("kernel vxlan: {e}"));
        topo.program_kernel_vxlan6(1, fustian::lab::VTEP_MACS[0])
            .unwrap_or_else(|e| panic!("kernel vxlan over IPv6: {e}"));
        // The kernel node's IPv6 VTEP has a MAC of its own.
        let v6_peer = format!("{}=", fustian::lab::IPV6_SUBNETS[1]);
        let args: Vec<String> = topo
            .node_args_stack(0, LabBackend::Vxlan, dual, extra)
            .into_iter()
            .map(|a| match a.strip_prefix(&v6_peer) {
                Some(rest) => format!(
                    "{v6_peer}{}@{}",
                    rest.split('@').next().unwrap_or_default(),
                    fustian::lab::VTEP_MACS6[1]
                ),
                None => a,
            })
            .collect();
        assert!(
            args.iter()
                .any(|a| a.ends_with(fustian::lab::VTEP_MACS6[1])),
            "{args:?}"
        );
        if let Err(e) = topo.start_node(0, EXE, &args) {
            panic!("{e}");
        }
        exchange_both_ways_at(&topo, pod_addr, BULK);
        exchange_both_ways_at(&topo, pod_addr6, BULK);
        let v6_endpoint = "[2001:db8::2]:8472";
        for dir in ["tx", "rx"] {
            let name = format!(
                "peer_{dir}_bytes{{subnet=\"fd00:10:244:2::/64\",endpoint=\"{v6_endpoint}\"}}"
            );
            let done = wait_for(Duration::from_secs(5), || topo.counter(0, &name) > BULK);
            assert!(done, "{name}: {:?}", topo.stats(0));
        }
        for reason in [
            "wrong_vni",
            "wrong_dst_mac",
            "own_src_mac",
            "rx_bad_flags",
            "non_ip",
            "spoofed_source",
            "not_local",
            "rx_bad_tcp_checksum",
        ] {
            assert_eq!(topo.counter(0, &format!("drop_{reason}")), 0, "{reason}");
        }
    }
}

/// An IPv6 UDP packet `src` -> `dst` (port 9001) with a valid checksum, carrying `payload`,
/// with the extension headers `ext` (whole headers, first byte = the header's own type, which
/// moves into the previous header's next-header field) in front of the UDP header.
fn v6_packet(src: &str, dst: &str, ext: &[Vec<u8>], payload: &[u8]) -> Vec<u8> {
    let src: std::net::Ipv6Addr = src.parse().expect("literal");
    let dst: std::net::Ipv6Addr = dst.parse().expect("literal");
    let mut udp = Vec::new();
    udp.extend_from_slice(&40000u16.to_be_bytes());
    udp.extend_from_slice(&9001u16.to_be_bytes());
    udp.extend_from_slice(
        &u16::try_from(8 + payload.len())
            .expect("small")
            .to_be_bytes(),
    );
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    // The UDP checksum over the pseudo-header (RFC 8200 section 8.1).
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&u32::try_from(udp.len()).expect("small").to_be_bytes());
    add(&[0, 0, 0, 17]);
    add(&udp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let csum = !(u16::try_from(sum).expect("folded"));
    udp[6..8].copy_from_slice(&csum.to_be_bytes());

    let mut body = Vec::new();
    let mut next_of_previous = None;
    for h in ext {
        if let Some(at) = next_of_previous {
            body[at] = h[0];
        }
        next_of_previous = Some(body.len());
        body.extend_from_slice(h);
    }
    let first = ext.first().map_or(17, |h| h[0]);
    if let Some(at) = next_of_previous {
        body[at] = 17;
    }
    body.extend_from_slice(&udp);
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&u16::try_from(body.len()).expect("small").to_be_bytes());
    p.push(first);
    p.push(64);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&body);
    p
}

/// An 8-byte extension header of kind `kind` (written over its first byte by
/// [`v6_packet`], which chains them), with `edit` applied.
fn ext(kind: u8, edit: impl Fn(&mut [u8; 8])) -> Vec<u8> {
    // Next header (rewritten), length 0 (8 bytes), then a PadN option over the rest.
    let mut h = [kind, 0, 1, 4, 0, 0, 0, 0];
    edit(&mut h);
    h.to_vec()
}

/// Hostile IPv6 inner packets from the peer's own IPv6 address reach no pod and are counted
/// by reason, while a good one is delivered.
#[test]
fn hostile_ipv6_inner_packets_are_dropped_and_counted() {
    if skip("hostile_ipv6_inner_packets_are_dropped_and_counted") {
        return;
    }
    let _serial = serial();
    let v6 = Stack::V6;
    let mut topo = topology();
    topo.add_ipv6()
        .unwrap_or_else(|e| panic!("netns test prerequisite missing or setup failed: {e}"));
    let args = topo.node_args_stack(0, LabBackend::Udp, v6, &[]);
    topo.start_node(0, EXE, &args)
        .unwrap_or_else(|e| panic!("{e}"));
    let peer = topo.hosts[1]
        .run(|| std::net::UdpSocket::bind("[2001:db8::2]:8285"))
        .expect("enter node b")
        .expect("bind peer");
    let pod = topo.pods[0]
        .run(|| std::net::UdpSocket::bind("[fd00:10:244:1::2]:9001"))
        .expect("enter pod a")
        .expect("bind pod socket");
    pod.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let to: std::net::SocketAddr = "[2001:db8::1]:8285".parse().expect("literal");
    let (from, me) = ("fd00:10:244:2::5", "fd00:10:244:1::2");
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        (
            "spoofed_source",
            v6_packet("fd00:10:244:3::5", me, &[], b"evil"),
        ),
        (
            "spoofed_source",
            v6_packet("2001:db8::99", me, &[], b"evil"),
        ),
        (
            "not_local",
            v6_packet(from, "fd00:10:244:2::9", &[], b"evil"),
        ),
        (
            "rx_ipv6_ext_headers",
            v6_packet(from, me, &[ext(43, |h| h[3] = 1)], b"evil"),
        ),
        (
            "rx_ipv6_ext_headers",
            v6_packet(from, me, &vec![ext(60, |_| {}); 9], b"evil"),
        ),
        (
            "rx_ipv6_ext_headers",
            v6_packet(from, me, &[ext(60, |_| {}), ext(0, |_| {})], b"evil"),
        ),
        (
            "rx_ipv6_ext_headers",
            v6_packet(
                from,
                me,
                &[ext(0, |h| {
                    h[2] = 0xC2;
                    h[3] = 4;
                })],
                b"evil",
            ),
        ),
        ("rx_bad_length", {
            // A jumbogram: payload length 0.
            let mut p = v6_packet(from, me, &[], b"evil");
            p[4..6].copy_from_slice(&[0, 0]);
            p
        }),
        ("rx_ipv6_ext_headers", {
            // An extension header that claims more than the packet holds.
            let mut p = v6_packet(from, me, &[ext(60, |_| {})], b"evil");
            p[41] = 200;
            p.truncate(60);
            let len = u16::try_from(p.len() - 40).expect("small");
            p[4..6].copy_from_slice(&len.to_be_bytes());
            p
        }),
    ];
    for (_, d) in &hostile {
        peer.send_to(d, to).expect("send hostile");
    }
    let good = v6_packet(from, me, &[ext(60, |_| {})], b"good");
    peer.send_to(&good, to).expect("send good");
    let mut buf = [0u8; 64];
    let (n, _) = pod.recv_from(&mut buf).expect("the good packet arrives");
    assert_eq!(
        &buf[..n],
        b"good",
        "the first thing the pod gets is the good packet"
    );
    let mut want: Vec<(&str, u64)> = Vec::new();
    for (reason, _) in &hostile {
        match want.iter_mut().find(|(r, _)| r == reason) {
            Some((_, n)) => *n += 1,
            None => want.push((reason, 1)),
        }
    }
    let counted = wait_for(Duration::from_secs(3), || {
        want.iter()
            .all(|(r, n)| topo.counter(0, &format!("drop_{r}")) == *n)
            && topo.counter(0, "tun_tx_packets") >= 1
    });
    assert!(counted, "want {want:?}: {:?}", topo.stats(0));
    assert!(
        pod.recv_from(&mut buf).is_err(),
        "nothing else reached the pod"
    );
}

/// The IPv6 path MTU of a connected socket.
fn ipv6_mtu(sock: &std::net::UdpSocket) -> i32 {
    crate::common::int_sockopt(sock, libc::IPPROTO_IPV6, libc::IPV6_MTU)
}

/// Over an IPv6 underlay the path carries 1500 − 48 bytes of inner packet (`udp`): an IPv6
/// packet larger than that gets ICMPv6 packet too big with 1452, and the sender's path MTU
/// drops to it; an unroutable IPv6 destination gets ICMPv6 no route.
#[test]
fn ipv6_packet_too_big_carries_the_ipv6_path_mtu() {
    if skip("ipv6_packet_too_big_carries_the_ipv6_path_mtu") {
        return;
    }
    let _serial = serial();
    let v6 = Stack::V6;
    for extra in [LOOPS[1], LOOPS[6]] {
        let mut topo = topology();
        topo.add_ipv6()
            .unwrap_or_else(|e| panic!("netns test prerequisite missing or setup failed: {e}"));
        let mut flags = extra.to_vec();
        // A TUN MTU above what the path carries, so big packets reach fustian.
        flags.extend(["--mtu", "2000"]);
        let args = topo.node_args_stack(0, LabBackend::Udp, v6, &flags);
        topo.start_node(0, EXE, &args)
            .unwrap_or_else(|e| panic!("{e}"));
        let (big, unroutable) = topo.hosts[0]
            .run(|| {
                let b = std::net::UdpSocket::bind("[::]:0").and_then(|s| {
                    s.connect("[fd00:10:244:2::2]:9")?;
                    Ok(s)
                });
                let u = std::net::UdpSocket::bind("[::]:0").and_then(|s| {
                    s.connect("[fd00:10:244:9::9]:9")?;
                    Ok(s)
                });
                (b, u)
            })
            .expect("enter node a");
        let (big, unroutable) = (big.expect("socket"), unroutable.expect("socket"));
        assert_eq!(ipv6_mtu(&big), 2000, "the route MTU before");
        big.send(&[0u8; 1800]).expect("send");
        let lowered = wait_for(Duration::from_secs(2), || ipv6_mtu(&big) == 1452);
        assert!(
            lowered,
            "path MTU is {} after packet too big",
            ipv6_mtu(&big)
        );

        // No route: a soft error, heard with IPV6_RECVERR.
        crate::common::set_int_sockopt(&unroutable, libc::IPPROTO_IPV6, libc::IPV6_RECVERR, 1);
        unroutable
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        unroutable.send(b"anyone?").expect("send");
        let err = unroutable
            .recv(&mut [0u8; 64])
            .expect_err("an ICMPv6 error comes back");
        assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH), "{err}");
        let counted = wait_for(Duration::from_secs(3), || {
            topo.counter(0, "tun_tx_icmp") >= 2 && topo.counter(0, "drop_too_big") >= 1
        });
        assert!(counted, "{:?}", topo.stats(0));
    }
}
