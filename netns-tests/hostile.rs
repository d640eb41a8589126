//! A third host on the underlay (no peer) and a peer spoofing inner sources flood both ports
//! with garbage, truncated, oversize and spoofed datagrams while a legitimate TCP transfer
//! runs: the transfer completes intact, nothing hostile reaches the pod network, and the
//! counters account for the flood.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use etherparse::PacketBuilder;
use fustian::lab::netns::{Netns, veth};
use fustian::lab::pod_addr;
use fustian::lab::traffic::{Amount, tcp_bulk};

use crate::common::{BULK, for_each_loop, serial, skip, start_both, topology, wait_for};

const MARK: &[u8] = b"HOSTILE-PAYLOAD";

fn packet(src: [u8; 4], dst: [u8; 4], dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src, dst, 64).udp(6666, dport);
    let mut out = Vec::new();
    b.write(&mut out, MARK).expect("build");
    out
}

/// The datagrams a hostile sender cycles through (aimed at node A, pod port 9999).
fn hostile_set() -> Vec<Vec<u8>> {
    let mut trailing = packet([10, 244, 2, 5], [10, 244, 1, 2], 9999);
    trailing.push(0);
    let mut vxlan = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    vxlan.extend([
        0x02, 0x66, 0x75, 0, 0, 1, 0x02, 0x66, 0x75, 0, 0, 2, 0x08, 0x00,
    ]);
    vxlan.extend(packet([10, 244, 2, 5], [10, 244, 1, 2], 9999));
    vec![
        vec![],
        vec![0x45],
        vec![0x45; 19],
        vec![0u8; 40],
        trailing,
        vec![0x45; 3000],
        packet([10, 244, 2, 5], [10, 244, 1, 2], 9999), // good shape, wrong sender or spoofed
        packet([10, 244, 3, 5], [10, 244, 1, 2], 9999), // inner source of a third subnet
        packet([198, 51, 100, 7], [10, 244, 1, 2], 9999), // inner source outside the network
        vxlan,
    ]
}

fn flood(from: &Netns, bind: &'static str, stop: &Arc<AtomicBool>, sent: &Arc<AtomicU64>) {
    let (stop, sent) = (Arc::clone(stop), Arc::clone(sent));
    from.spawn(move || {
        let sock = UdpSocket::bind(bind).expect("bind hostile socket");
        let set = hostile_set();
        while !stop.load(Ordering::Relaxed) {
            for d in &set {
                for port in [8285, 8472] {
                    if sock.send_to(d, ("192.0.2.1", port)).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    })
    .expect("enter namespace");
}

#[test]
fn hostile_flood_during_a_transfer() {
    if skip("hostile_flood_during_a_transfer") {
        return;
    }
    let _serial = serial();
    for_each_loop("hostile_flood_during_a_transfer", |extra| {
        let mut topo = topology();
        // The third host: on the underlay through its own veth to node B's namespace, which
        // forwards between its two links.
        let third = Netns::add(&format!("{}x", topo.hosts[0].name())).expect("third namespace");
        veth(&topo.hosts[1], "ul1", &third, "ul0").expect("veth");
        topo.hosts[1]
            .ip(&["addr", "add", "198.51.100.1/24", "dev", "ul1"])
            .expect("addr");
        topo.hosts[1].ip(&["link", "set", "ul1", "up"]).expect("up");
        third
            .ip(&["addr", "add", "198.51.100.9/24", "dev", "ul0"])
            .expect("addr");
        third.ip(&["link", "set", "ul0", "up"]).expect("up");
        third
            .ip(&["route", "add", "default", "via", "198.51.100.1"])
            .expect("route");
        topo.hosts[0]
            .ip(&["route", "add", "198.51.100.0/24", "via", "192.0.2.2"])
            .expect("route");
        start_both(&mut topo, extra);

        // The pod listens where the hostile datagrams aim and must see none of them.
        let catcher = topo.pods[0]
            .run(|| UdpSocket::bind("10.244.1.2:9999"))
            .expect("enter pod")
            .expect("bind");
        catcher
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");

        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        flood(&third, "198.51.100.9:8285", &stop, &sent);
        // The peer itself spoofing: same address, flannel's port, forged inner sources.
        flood(&topo.hosts[1], "192.0.2.2:40001", &stop, &sent);

        let r = tcp_bulk(
            &topo.pods[1],
            &topo.pods[0],
            pod_addr(0, 5201),
            Amount::Bytes(BULK),
            true,
            &Arc::new(AtomicBool::new(false)),
        )
        .expect("the transfer runs");
        stop.store(true, Ordering::Relaxed);
        assert!(r.intact(), "transfer under flood: {r:?}");

        let mut buf = [0u8; 4096];
        let mut reached = 0;
        while let Ok(n) = catcher.recv(&mut buf) {
            if buf[..n].windows(MARK.len()).any(|w| w == MARK) {
                reached += 1;
            }
        }
        assert_eq!(reached, 0, "hostile datagrams reached the pod");

        let flooded = sent.load(Ordering::Relaxed);
        assert!(flooded > 1000, "only {flooded} hostile datagrams sent");
        let accounted = |t: &fustian::lab::Topology| -> u64 {
            [
                "drop_unknown_sender",
                "drop_wrong_source_port",
                "drop_spoofed_source",
                "drop_rx_truncated",
                "drop_rx_bad_version",
                "drop_rx_bad_length",
                "drop_oversize",
            ]
            .iter()
            .map(|n| t.counter(0, n))
            .sum()
        };
        // Datagrams to 8472 find no socket (node A speaks udp) and die in the kernel; the
        // ones to 8285 are all counted by reason.
        let counted = wait_for(Duration::from_secs(3), || {
            accounted(&topo) * 2 >= flooded * 9 / 10
        });
        assert!(
            counted,
            "{flooded} sent, {} counted: {:?}",
            accounted(&topo),
            topo.stats(0)
        );
        drop(third);
    });
}

/// A forged ICMP "fragmentation needed" (next-hop MTU 552) quoting a datagram of the node's
/// own tunnel port, sent by another host of the underlay: the tunnel sockets ignore it
/// (`IP_PMTUDISC_OMIT`), so the kernel keeps no smaller path MTU to the peer and the node's
/// super-packets still leave as `UDP_SEGMENT` sends instead of fragments.
#[test]
fn a_forged_fragmentation_needed_leaves_the_path_mtu_alone() {
    if crate::common::skip("a_forged_fragmentation_needed_leaves_the_path_mtu_alone") {
        return;
    }
    let _serial = crate::common::serial();
    let mut topo = crate::common::topology();
    crate::common::start_both(&mut topo, &["--io", "epoll"]);
    let (me, peer) = (
        fustian::lab::host_addr(0, 8285),
        fustian::lab::host_addr(1, 8285),
    );
    let (std::net::IpAddr::V4(me_ip), std::net::IpAddr::V4(peer_ip)) = (me.ip(), peer.ip()) else {
        panic!("IPv4 underlay");
    };
    // ICMP type 3 code 4, next-hop MTU 552, quoting an IPv4/UDP header me:8285 -> peer:8285.
    let mut quoted = vec![0x45, 0, 0x05, 0xdc, 0, 0, 0x40, 0, 64, 17, 0, 0];
    quoted.extend_from_slice(&me_ip.octets());
    quoted.extend_from_slice(&peer_ip.octets());
    quoted.extend_from_slice(&[0x20, 0x5d, 0x20, 0x5d, 0x05, 0xc8, 0, 0]);
    let mut icmp = vec![3, 4, 0, 0, 0, 0, 0x02, 0x28];
    icmp.extend_from_slice(&quoted);
    let sum = !fustian::wire::ip::fold(fustian::wire::ip::ones_sum(&icmp));
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let to = std::net::SocketAddr::new(me.ip(), 0);
    topo.hosts[1]
        .run(move || {
            use socket2::{Domain, Protocol, Socket, Type};
            let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
            for _ in 0..3 {
                raw.send_to(&icmp, &to.into())?;
            }
            Ok::<_, std::io::Error>(())
        })
        .expect("enter host 1")
        .expect("send the forged ICMP");
    let route = || {
        let out = std::process::Command::new("ip")
            .args([
                "-n",
                topo.hosts[0].name(),
                "route",
                "get",
                &peer_ip.to_string(),
            ])
            .output()
            .expect("ip route get");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The ICMP is handled as it arrives; a transfer after it shows what the node then sends.
    let before = topo.counter(0, "tx_gso_sends");
    crate::common::exchange_both_ways_at(&topo, fustian::lab::pod_addr, 8 << 20);
    let shown = route();
    assert!(
        !shown.contains("mtu 552"),
        "the forged MTU was taken: {shown}"
    );
    let sent = crate::common::wait_for(Duration::from_secs(5), || {
        topo.counter(0, "tx_gso_sends") > before
    });
    assert!(
        sent,
        "no UDP_SEGMENT send after the ICMP: {:?}",
        topo.stats(0)
    );
}
