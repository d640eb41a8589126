//! Two fustian `udp` nodes: echo both ways, 100 MiB TCP both ways with matching hashes, clean
//! exit that removes the TUN device.

use std::time::Duration;

use crate::common::{
    BULK, exchange_both_ways, exchange_both_ways_at, for_each_loop, serial, signal, skip,
    start_both, topology, wait_for,
};

#[test]
fn echo_and_bulk_transfer_both_ways() {
    if skip("echo_and_bulk_transfer_both_ways") {
        return;
    }
    let _serial = serial();
    for_each_loop("echo_and_bulk_transfer_both_ways", |extra| {
        let mut topo = topology();
        start_both(&mut topo, extra);
        exchange_both_ways(&topo);
        wait_for_stats(&topo);
        check_offloads(&topo, extra);
        check_counters_and_exit(&mut topo);
    });
}

/// Waits until each node's stats file shows the bulk transfers (it is rewritten every 250 ms),
/// so no counter is read before the node wrote it for this traffic.
fn wait_for_stats(topo: &fustian::lab::Topology) {
    for i in 0..2 {
        let done = wait_for(Duration::from_secs(5), || {
            topo.counter(i, "tx_bytes") > BULK && topo.counter(i, "rx_bytes") > BULK
        });
        assert!(done, "node {i}: {:?}", topo.stats(i));
    }
}

/// With offloads (the default) the bulk transfers went as super-packets: TSO reads cut and
/// sent with GSO, GRO reads merged for TUN; with `--offload off` none of that happened.
fn check_offloads(topo: &fustian::lab::Topology, extra: &[&str]) {
    let off = extra.contains(&"off");
    for i in 0..2 {
        for name in [
            "tun_rx_super",
            "tx_gso_sends",
            "rx_gro_reads",
            "tun_tx_merged",
        ] {
            let n = topo.counter(i, name);
            if off {
                assert_eq!(n, 0, "node {i}: {name} with --offload off");
            } else {
                assert!(
                    n > 0,
                    "node {i}: {name} is 0 with offloads on: {:?}",
                    topo.stats(i)
                );
            }
        }
        assert_eq!(topo.counter(i, "drop_tun_bad_flags"), 0);
    }
}

fn check_counters_and_exit(topo: &mut fustian::lab::Topology) {
    // The traffic went through fustian: each node sent and received > 100 MiB of datagrams
    // (waited for in `wait_for_stats`).
    for i in 0..2 {
        assert_eq!(topo.counter(i, "drop_oversize"), 0);
        assert_eq!(topo.counter(i, "drop_spoofed_source"), 0);
    }

    // SIGTERM: exit 0 and the TUN device this process created is gone.
    for i in 0..2 {
        let status = topo.processes[i]
            .stop(Duration::from_secs(5))
            .expect("was running");
        assert!(
            status.success(),
            "node {i} exited with {status}:\n{}",
            topo.processes[i].log()
        );
        assert!(
            topo.hosts[i].ip(&["link", "show", "flannel0"]).is_err(),
            "flannel0 still exists in node {i} after exit"
        );
    }
}

/// A route to the peer whose MTU is below the interface's: a run of equal datagrams sent as one
/// `UDP_SEGMENT` message has segments larger than the route allows, which the kernel refuses
/// (`EMSGSIZE`), where each datagram sent alone is fragmented. The node sends such a run again
/// one datagram per message: every datagram arrives, none is counted as a send error.
#[test]
fn runs_of_datagrams_reach_a_peer_behind_a_smaller_route_mtu() {
    if skip("runs_of_datagrams_reach_a_peer_behind_a_smaller_route_mtu") {
        return;
    }
    let _serial = serial();
    let mut topo = topology();
    start_both(&mut topo, &[]);
    exchange_both_ways_at(&topo, fustian::lab::pod_addr, 1024 * 1024);
    let peer = fustian::lab::host_addr(1, 0).ip().to_string();
    topo.hosts[0]
        .ip(&[
            "route",
            "add",
            &format!("{peer}/32"),
            "dev",
            "ul0",
            "mtu",
            "1000",
        ])
        .expect("a route with a smaller MTU");
    let before = topo.counter(0, "tx_packets");

    const COUNT: usize = 64;
    let receiver = topo.pods[1]
        .run(|| {
            let s = std::net::UdpSocket::bind("0.0.0.0:9100")?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            Ok::<_, std::io::Error>(s)
        })
        .expect("enter pod 1")
        .expect("bind the receiver");
    let to = fustian::lab::pod_addr(1, 9100);
    // Several bursts, so that the node reads several of them in one round and sends them as
    // runs.
    for burst in 0..4u8 {
        topo.pods[0]
            .run(move || {
                let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
                for i in 0..COUNT / 4 {
                    let tag = u8::try_from(i).unwrap_or(0) + burst * 16;
                    s.send_to(&[tag; 1200], to)?;
                }
                Ok::<_, std::io::Error>(())
            })
            .expect("enter pod 0")
            .expect("send a burst");
    }
    let mut seen = [false; COUNT];
    let mut buf = [0u8; 2048];
    while let Ok(n) = receiver.recv(&mut buf) {
        assert_eq!(n, 1200, "a whole datagram");
        assert!(buf[..n].iter().all(|&b| b == buf[0]), "its own bytes");
        if let Some(s) = seen.get_mut(usize::from(buf[0])) {
            *s = true;
        }
        if seen.iter().all(|&s| s) {
            break;
        }
    }
    let missing: Vec<usize> = (0..COUNT).filter(|&i| !seen[i]).collect();
    let sent = wait_for(Duration::from_secs(3), || {
        topo.counter(0, "tx_packets") >= before + COUNT as u64
    });
    assert!(
        missing.is_empty() && sent,
        "missing datagrams {missing:?}: {:?}\n{}",
        topo.stats(0),
        topo.processes[0].log()
    );
    assert_eq!(topo.counter(0, "drop_tx_error"), 0, "{:?}", topo.stats(0));
}

/// Datagrams of one UDP flow that reach a node together go to its TUN device as one UDP
/// super-packet (USO), and the pod gets exactly the datagrams that were sent, in order
/// ([`udp_burst_is_merged_and_delivered_as_sent`]). IPv6 pods: `dual_stack`.
#[test]
fn a_burst_of_udp_datagrams_is_merged_and_arrives_whole_and_in_order() {
    if skip("a_burst_of_udp_datagrams_is_merged_and_arrives_whole_and_in_order") {
        return;
    }
    let _serial = serial();
    on_each_loop_with_one_worker(|topo| {
        udp_burst_is_merged_and_delivered_as_sent(topo, fustian::lab::pod_addr);
    });
}

/// Runs `test` on two fresh nodes of one worker each, on io_uring and then on epoll.
fn on_each_loop_with_one_worker(mut test: impl FnMut(&mut fustian::lab::Topology)) {
    for extra in [
        &["--io", "uring", "--threads", "1"][..],
        &["--io", "epoll", "--threads", "1"][..],
    ] {
        eprintln!("== with {}", extra.join(" "));
        let mut topo = topology();
        start_both(&mut topo, extra);
        test(&mut topo);
    }
}

/// Node 0 is stopped while its pod sends a burst of datagrams on one connected socket to pod
/// 1 (`pod_addr(1, port)`), so they leave the node in runs and arrive together; the last one is
/// shorter, which ends a super-packet. Pod 1 must get every datagram as sent, in order, and
/// node 1 must have merged some.
pub(crate) fn udp_burst_is_merged_and_delivered_as_sent(
    topo: &fustian::lab::Topology,
    pod_addr: fn(usize, u16) -> std::net::SocketAddr,
) {
    const COUNT: usize = 100;
    let datagram = |i: usize| -> Vec<u8> {
        let len = if i + 1 == COUNT { 100 } else { 300 };
        (0..len)
            .map(|j| u8::try_from((i * 7 + j) % 251).unwrap_or(0))
            .collect()
    };
    let info = |topo: &fustian::lab::Topology| {
        topo.stats(1)
            .into_iter()
            .find(|(k, _)| k.starts_with("info{"))
            .map(|(k, _)| k)
    };
    assert!(
        wait_for(Duration::from_secs(5), || info(topo).is_some()),
        "node 1 wrote no stats: {}",
        topo.processes[1].log()
    );
    let offloads = info(topo).unwrap_or_default();
    assert!(
        offloads.contains("uso"),
        "node 1's TUN device did not take USO (UDP segmentation, Linux 6.2), which this test \
         needs: {offloads}"
    );
    let before = topo.counter(1, "tun_tx_merged_segments");
    let to = pod_addr(1, 9101);
    let any: std::net::SocketAddr = if to.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let receiver = topo.pods[1]
        .run(move || {
            let s = std::net::UdpSocket::bind(std::net::SocketAddr::new(any.ip(), 9101))?;
            socket2::SockRef::from(&s).set_recv_buffer_size(1 << 20)?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            Ok::<_, std::io::Error>(s)
        })
        .expect("enter pod 1")
        .expect("bind the receiver");
    let pid = topo.processes[0].pid().expect("running");
    signal(pid, libc::SIGSTOP);
    let sent = topo.pods[0].run(move || {
        let s = std::net::UdpSocket::bind(any)?;
        s.connect(to)?;
        for i in 0..COUNT {
            s.send(&datagram(i))?;
        }
        Ok::<_, std::io::Error>(())
    });
    signal(pid, libc::SIGCONT);
    sent.expect("enter pod 0").expect("send the burst");
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while got.len() < COUNT {
        match receiver.recv(&mut buf) {
            Ok(n) => got.push(buf[..n].to_vec()),
            Err(_) => break,
        }
    }
    let want: Vec<Vec<u8>> = (0..COUNT).map(datagram).collect();
    assert!(
        got == want,
        "{} of {COUNT} datagrams, {} as sent and in order: {:?}\n{}",
        got.len(),
        got.iter().zip(&want).take_while(|(a, b)| a == b).count(),
        topo.stats(1),
        topo.processes[1].log()
    );
    assert!(
        wait_for(Duration::from_secs(5), || {
            topo.counter(1, "tun_tx_merged_segments") >= before + 2
        }),
        "node 1 merged no datagrams: {:?}",
        topo.stats(1)
    );
}

/// Packets the kernel drops at the TUN device before a worker reads them (its transmit queue
/// full) never reach fustian; the node reports the device's own counter beside its own. With
/// the node stopped, a pod sends more datagrams than the device's queue holds.
#[test]
fn drops_at_the_tun_device_are_reported() {
    if skip("drops_at_the_tun_device_are_reported") {
        return;
    }
    let _serial = serial();
    let mut topo = topology();
    start_both(&mut topo, &["--threads", "1"]);
    exchange_and_wait_for_the_device_counter(&topo);
    let before = topo.counter(0, "tun_device_tx_dropped");
    burst_into_a_stopped_node(&topo);
    // The device's queue holds 500 packets; the rest were dropped.
    let counted = wait_for(Duration::from_secs(5), || {
        topo.counter(0, "tun_device_tx_dropped") >= before + SENT - 600
    });
    assert!(
        counted,
        "tun_device_tx_dropped {} -> {}: {:?}",
        before,
        topo.counter(0, "tun_device_tx_dropped"),
        topo.stats(0)
    );
}

#[test]
fn a_longer_tun_queue_holds_a_burst() {
    if skip("a_longer_tun_queue_holds_a_burst") {
        return;
    }
    let _serial = serial();
    let mut topo = topology();
    start_both(&mut topo, &["--threads", "1", "--tun-txqueuelen", "3000"]);
    let out = std::process::Command::new("ip")
        .args([
            "-n",
            topo.hosts[0].name(),
            "-j",
            "link",
            "show",
            "dev",
            "flannel0",
        ])
        .output()
        .expect("ip runs");
    let link: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j");
    assert_eq!(link[0]["txqlen"], 3000, "{link}");
    exchange_and_wait_for_the_device_counter(&topo);
    let (read, dropped) = (
        topo.counter(0, "tun_rx_packets"),
        topo.counter(0, "tun_device_tx_dropped"),
    );
    // The same burst as `drops_at_the_tun_device_are_reported`, into a 3000-packet queue.
    burst_into_a_stopped_node(&topo);
    let all_read = wait_for(Duration::from_secs(5), || {
        topo.counter(0, "tun_rx_packets") >= read + SENT
    });
    assert!(
        all_read,
        "tun_rx_packets {read} -> {}: {:?}",
        topo.counter(0, "tun_rx_packets"),
        topo.stats(0)
    );
    // A 500-packet queue loses 1400 or more of the burst; the baseline may miss a few drops
    // of the exchange that the stats file had not shown yet.
    let now = topo.counter(0, "tun_device_tx_dropped");
    assert!(
        now < dropped + 100,
        "tun_device_tx_dropped {dropped} -> {now}"
    );
}

/// Exchanges traffic both ways, then waits until node 0's stats file lists the TUN device's
/// own drop counter.
fn exchange_and_wait_for_the_device_counter(topo: &fustian::lab::Topology) {
    exchange_both_ways_at(topo, fustian::lab::pod_addr, 1024 * 1024);
    let listed = wait_for(Duration::from_secs(3), || {
        topo.stats(0)
            .iter()
            .any(|(name, _)| name == "tun_device_tx_dropped")
    });
    assert!(listed, "no device counter: {:?}", topo.stats(0));
}

/// Datagrams sent from pod 0 in one burst while node 0 is stopped (`SIGSTOP`).
const SENT: u64 = 2000;

/// Stops node 0, sends [`SENT`] datagrams from pod 0 to pod 1 into its TUN queue, and lets
/// the node run again.
fn burst_into_a_stopped_node(topo: &fustian::lab::Topology) {
    let pid = topo.processes[0].pid().expect("running");
    signal(pid, libc::SIGSTOP);
    let to = fustian::lab::pod_addr(1, 9);
    let sent = topo.pods[0].run(move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        for _ in 0..SENT {
            // A full queue drops without telling the sender.
            let _ = s.send_to(&[7u8; 100], to);
        }
        Ok::<_, std::io::Error>(())
    });
    signal(pid, libc::SIGCONT);
    sent.expect("enter pod 0").expect("send");
}

/// The TUN device deleted under a running node (an operator's `ip link del`): no later read of
/// it can succeed, so the node stops with an error naming it (status 1, for a supervisor to
/// restart it), in each loop, instead of reporting itself healthy while forwarding nothing from
/// its pods (or spinning on a read that fails at once).
#[test]
fn a_deleted_tun_device_stops_the_node_with_an_error() {
    if skip("a_deleted_tun_device_stops_the_node_with_an_error") {
        return;
    }
    let _serial = serial();
    for extra in [
        &["--io", "uring", "--threads", "2"][..],
        &["--io", "uring", "--threads", "1", "--no-multishot"][..],
        &["--io", "epoll", "--threads", "2"][..],
    ] {
        eprintln!("== with {}", extra.join(" "));
        let mut topo = topology();
        start_both(&mut topo, extra);
        exchange_both_ways(&topo);
        topo.hosts[0]
            .ip(&["link", "del", "flannel0"])
            .expect("delete flannel0");
        let mut status = None;
        let exited = wait_for(Duration::from_secs(10), || {
            status = topo.processes[0].exited();
            status.is_some()
        });
        let log = topo.processes[0].log();
        assert!(
            exited,
            "{extra:?}: the node runs on without its device:\n{log}"
        );
        assert!(
            status.is_some_and(|s| s.code() == Some(1)),
            "{extra:?}: {status:?}\n{log}"
        );
        assert!(log.contains("the TUN device is gone"), "{extra:?}: {log}");
    }
}

/// A TCP stream with a small MSS (200 bytes): its TSO super-packets of 64 KiB would carry
/// about 330 segments, more than a node cuts one into. The node limits the TUN device's
/// `gso_max_segs`, so the kernel segments such packets before the device; every byte arrives
/// and nothing is dropped as malformed.
#[test]
fn a_stream_with_a_small_mss_passes_whole() {
    if skip("a_stream_with_a_small_mss_passes_whole") {
        return;
    }
    let _serial = serial();
    let mut topo = topology();
    start_both(&mut topo, &["--io", "uring"]);
    let shown = std::process::Command::new("ip")
        .args(["-n", topo.hosts[0].name(), "-d", "link", "show", "flannel0"])
        .output()
        .expect("ip -d link show");
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("gso_max_segs 256 "), "{shown}");
    const BYTES: usize = 8 << 20;
    let listener = topo.pods[1]
        .run(|| std::net::TcpListener::bind("0.0.0.0:5300"))
        .expect("enter pod 1")
        .expect("listen");
    let to = fustian::lab::pod_addr(1, 5300);
    let received = std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            conn.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0usize;
            while let Ok(n) = std::io::Read::read(&mut conn, &mut buf) {
                if n == 0 {
                    break;
                }
                total += n;
            }
            total
        });
        topo.pods[0]
            .run(move || {
                use socket2::{Domain, Socket, Type};
                let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                sock.set_tcp_mss(200)?;
                sock.set_write_timeout(Some(Duration::from_secs(20)))?;
                sock.connect(&to.into())?;
                let mut conn: std::net::TcpStream = sock.into();
                std::io::Write::write_all(&mut conn, &vec![7u8; BYTES])?;
                conn.shutdown(std::net::Shutdown::Write)
            })
            .expect("enter pod 0")
            .expect("send with MSS 200");
        reader.join().expect("reader")
    });
    assert_eq!(
        received,
        BYTES,
        "node 0: {:?}\nnode 1: {:?}",
        topo.stats(0),
        topo.stats(1)
    );
    for i in 0..2 {
        assert_eq!(
            topo.counter(i, "drop_tun_bad_flags"),
            0,
            "node {i}: {:?}",
            topo.stats(i)
        );
    }
}

/// A persistent TUN device given to a user (`ip tuntap add ... user N`): that user's processes
/// could attach a queue of their own without privileges and read or inject pod traffic, so the
/// node refuses the device, naming the owner, and leaves it as it was.
#[test]
fn a_tun_device_owned_by_a_user_is_refused() {
    if skip("a_tun_device_owned_by_a_user_is_refused") {
        return;
    }
    let _serial = serial();
    let mut topo = topology();
    let host = &topo.hosts[0];
    host.ip(&[
        "tuntap",
        "add",
        "flannel0",
        "mode",
        "tun",
        "multi_queue",
        "user",
        "4242",
    ])
    .expect("a persistent device owned by uid 4242");
    let args = topo.node_args(0, &[]);
    let refused = topo.start_node(0, crate::common::EXE, &args);
    let still = topo.hosts[0].ip(&["link", "show", "flannel0"]).is_ok();
    let _ = topo.hosts[0].ip(&["tuntap", "del", "flannel0", "mode", "tun", "multi_queue"]);
    let Err(e) = refused else {
        panic!("the node started on a device owned by uid 4242");
    };
    assert!(e.to_string().contains("belongs to user 4242"), "{e}");
    assert!(still, "the device was removed");
}

/// The sum of node `i`'s `peer_tx_{what}` counters (one per peer).
fn peer_tx(topo: &fustian::lab::Topology, i: usize, what: &str) -> u64 {
    let prefix = format!("peer_tx_{what}{{");
    topo.stats(i)
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(_, v)| v)
        .sum()
}

/// Pod 0 sends `count` datagrams of 200 bytes to pod 1.
fn pod_sends(topo: &fustian::lab::Topology, count: usize) {
    let to = fustian::lab::pod_addr(1, 9300);
    topo.pods[0]
        .run(move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
            for _ in 0..count {
                s.send_to(&[7u8; 200], to)?;
            }
            Ok::<_, std::io::Error>(())
        })
        .expect("enter pod 0")
        .expect("send");
}

/// A peer's `peer_tx_*` counters count what the socket took, not what was planned: with the
/// underlay route to the peer prohibited every send fails and is a `tx_error`, and neither
/// `tx_packets` nor the peer's counters move; once the route is back they count what goes.
/// Both single datagrams (the send queue) and the segments of a TCP super-packet.
#[test]
fn peer_counters_count_only_what_was_sent() {
    if skip("peer_counters_count_only_what_was_sent") {
        return;
    }
    let _serial = serial();
    on_each_loop_with_one_worker(|topo| {
        let listener = topo.pods[1]
            .run(|| std::net::TcpListener::bind("0.0.0.0:9301"))
            .expect("enter pod 1")
            .expect("listen");
        let to = fustian::lab::pod_addr(1, 9301);
        let mut stream = topo.pods[0]
            .run(move || std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5)))
            .expect("enter pod 0")
            .expect("connect through the tunnel");
        let (_peer_side, _) = listener.accept().expect("accept");
        // The handshake's datagrams are in the stats file before the baseline is taken.
        let settled = wait_for(Duration::from_secs(5), || {
            let tx = topo.counter(0, "tx_packets");
            tx >= 2 && peer_tx(topo, 0, "packets") == tx
        });
        assert!(settled, "handshake not counted: {:?}", topo.stats(0));
        let (tx, peer, errors, supers) = (
            topo.counter(0, "tx_packets"),
            peer_tx(topo, 0, "packets"),
            topo.counter(0, "drop_tx_error"),
            topo.counter(0, "tun_rx_super"),
        );

        let blocked = format!("{}/32", fustian::lab::host_addr(1, 0).ip());
        topo.hosts[0]
            .ip(&["route", "add", "prohibit", &blocked])
            .expect("prohibit the route to the peer");
        pod_sends(topo, 20);
        // What the socket buffer takes: the stack sends it as TSO super-packets it will
        // retransmit until acknowledged.
        stream.set_nonblocking(true).expect("nonblocking");
        let queued = std::io::Write::write(&mut stream, &vec![1u8; 256 * 1024]).expect("write");
        assert!(queued > 0);
        let failed = wait_for(Duration::from_secs(5), || {
            topo.counter(0, "drop_tx_error") >= errors + 21
                && topo.counter(0, "tun_rx_super") > supers
        });
        assert!(failed, "no failed sends of both kinds: {:?}", topo.stats(0));
        assert_eq!(topo.counter(0, "tx_packets"), tx, "{:?}", topo.stats(0));
        assert_eq!(peer_tx(topo, 0, "packets"), peer, "{:?}", topo.stats(0));

        topo.hosts[0]
            .ip(&["route", "del", "prohibit", &blocked])
            .expect("allow the route again");
        pod_sends(topo, 20);
        let counted = wait_for(Duration::from_secs(10), || {
            let sent = topo.counter(0, "tx_packets") - tx;
            sent >= 40 && peer_tx(topo, 0, "packets") - peer == sent
        });
        assert!(counted, "sends not counted per peer: {:?}", topo.stats(0));
    });
}
