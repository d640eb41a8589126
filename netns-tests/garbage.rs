//! Garbage from the underlay and from TUN is counted by reason and dropped; nothing reaches
//! the pod, the node keeps forwarding good traffic, nothing panics.
#![allow(unsafe_code)]
// libc constants (ETH_P_IP, AF_PACKET) and struct sizes fit the narrower kernel ABI types.
#![allow(clippy::cast_possible_truncation)]

use std::net::UdpSocket;
use std::time::Duration;

use etherparse::PacketBuilder;
use fustian::lab::host_addr;

use crate::common::{EXE, for_each_loop, serial, skip, topology, wait_for};

fn udp_packet(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ipv4(src, dst, 64).udp(9000, 9001);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, payload).expect("build");
    out
}

/// Sends `frames` out of the TUN device `flannel0` with an AF_PACKET socket, which is how a
/// test gets arbitrary bytes to the TUN reader (the kernel itself only routes valid IP).
fn inject_into_tun(frames: &[Vec<u8>]) -> std::io::Result<()> {
    let name = c"flannel0";
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error());
    }
    let proto = (libc::ETH_P_IP as u16).to_be();
    // SAFETY: plain socket call with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = i32::try_from(index).expect("ifindex fits");
    let mut result = Ok(());
    for frame in frames {
        // SAFETY: `frame` and `addr` are valid for the sizes given for the whole call.
        let n = unsafe {
            libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            result = Err(std::io::Error::last_os_error());
            break;
        }
    }
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    result
}

#[test]
fn garbage_is_counted_and_dropped() {
    if skip("garbage_is_counted_and_dropped") {
        return;
    }
    let _serial = serial();
    for_each_loop("garbage_is_counted_and_dropped", check);
}

fn check(extra: &[&str]) {
    let mut topo = topology();
    let args = topo.node_args(0, extra);
    topo.start_node(0, EXE, &args)
        .unwrap_or_else(|e| panic!("{e}"));
    topo.hosts[1]
        .ip(&["addr", "add", "192.0.2.9/24", "dev", "ul0"])
        .expect("second address");
    let (peer, stranger) = topo.hosts[1]
        .run(|| {
            (
                UdpSocket::bind("192.0.2.2:8285"),
                UdpSocket::bind("192.0.2.9:8285"),
            )
        })
        .expect("enter node b");
    let (peer, stranger) = (peer.expect("bind peer"), stranger.expect("bind stranger"));
    let pod = topo.pods[0]
        .run(|| UdpSocket::bind("10.244.1.2:9001"))
        .expect("enter pod a")
        .expect("bind pod socket");
    pod.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");

    let to = host_addr(0, 8285);
    let evil = b"evil";
    let good = udp_packet([10, 244, 2, 5], [10, 244, 1, 2], evil);
    let mut trailing = good.clone();
    trailing.push(0);
    let mut claims_more = good.clone();
    claims_more[2..4].copy_from_slice(&200u16.to_be_bytes());
    let mut bad_checksum = good.clone();
    bad_checksum[10] ^= 0xff;
    let underlay: Vec<Vec<u8>> = vec![
        vec![],                                               // rx_truncated
        vec![0x45],                                           // rx_truncated
        vec![0x45; 19],                                       // rx_truncated
        claims_more,                                          // rx_truncated
        vec![0; 40],                                          // rx_bad_version
        trailing,                                             // rx_bad_length
        bad_checksum,                                         // rx_bad_checksum
        vec![0x45; 2000],                                     // oversize
        udp_packet([10, 244, 3, 5], [10, 244, 1, 2], evil),   // spoofed_source
        udp_packet([198, 51, 100, 7], [10, 244, 1, 2], evil), // spoofed_source
        udp_packet([10, 244, 2, 5], [10, 244, 2, 9], evil),   // not_local
    ];
    for d in &underlay {
        peer.send_to(d, to).expect("send garbage");
    }
    stranger.send_to(&good, to).expect("send from stranger"); // unknown_sender
    let other_port = topo.hosts[1]
        .run(|| UdpSocket::bind("192.0.2.2:40000"))
        .expect("enter node b")
        .expect("bind");
    other_port
        .send_to(&good, to)
        .expect("send from another port"); // wrong_source_port

    let tun_garbage: Vec<Vec<u8>> = vec![
        vec![0x45],     // tun_truncated
        vec![0x60; 10], // tun_truncated
        vec![0; 40],    // tun_bad_version
        {
            let mut p = udp_packet([10, 244, 1, 2], [10, 244, 2, 2], b"x");
            p.push(0);
            p
        }, // tun_bad_length
    ];
    topo.hosts[0]
        .run(move || inject_into_tun(&tun_garbage))
        .expect("enter node a")
        .expect("inject");

    // Good traffic still flows, and it is the only thing the pod sees.
    let mut hello = udp_packet([10, 244, 2, 5], [10, 244, 1, 2], b"good");
    peer.send_to(&hello, to).expect("send good");
    let mut buf = [0u8; 2048];
    let (n, _) = pod.recv_from(&mut buf).expect("the good packet arrives");
    assert_eq!(&buf[..n], b"good");
    assert!(
        pod.recv_from(&mut buf).is_err(),
        "a hostile packet reached the pod"
    );
    hello.clear();

    let expected = [
        ("drop_rx_truncated", 4),
        ("drop_rx_bad_version", 1),
        ("drop_rx_bad_length", 1),
        ("drop_rx_bad_checksum", 1),
        ("drop_oversize", 1),
        ("drop_spoofed_source", 2),
        ("drop_not_local", 1),
        ("drop_unknown_sender", 1),
        ("drop_wrong_source_port", 1),
        ("drop_tun_truncated", 2),
        ("drop_tun_bad_version", 1),
        ("drop_tun_bad_length", 1),
        ("tun_tx_packets", 1),
    ];
    let settled = wait_for(Duration::from_secs(3), || {
        expected
            .iter()
            .all(|(name, want)| topo.counter(0, name) == *want)
    });
    assert!(settled, "counters: {:?}", topo.stats(0));

    // The node survived all of it and exits cleanly.
    let status = topo.processes[0]
        .stop(Duration::from_secs(5))
        .expect("running");
    assert!(
        status.success(),
        "exit {status}:\n{}",
        topo.processes[0].log()
    );
}

#[test]
fn gro_read_is_judged_datagram_by_datagram() {
    if skip("gro_read_is_judged_datagram_by_datagram") {
        return;
    }
    let _serial = serial();
    for_each_loop("gro_read_is_judged_datagram_by_datagram", gro_read);
}

/// Datagrams in the batch, and the size of each.
const GSO_COUNT: usize = 8;
const GSO_SIZE: usize = 1000;

/// Node B sends one `UDP_SEGMENT` batch whose first datagram is garbage; with `UDP_GRO` node A
/// reads the batch in one go. The garbage costs only itself: every other datagram reaches the
/// pod, and each is counted.
fn gro_read(extra: &[&str]) {
    let mut topo = topology();
    let args = topo.node_args(0, extra);
    topo.start_node(0, EXE, &args)
        .unwrap_or_else(|e| panic!("{e}"));
    let peer = topo.hosts[1]
        .run(|| UdpSocket::bind("192.0.2.2:8285"))
        .expect("enter node b")
        .expect("bind peer");
    let pod = topo.pods[0]
        .run(|| UdpSocket::bind("10.244.1.2:9001"))
        .expect("enter pod a")
        .expect("bind pod socket");
    pod.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");

    set_udp_segment(&peer, GSO_SIZE);
    // Datagram 0: zeros (no IP version). Datagrams 1..: good packets for the pod, numbered.
    let mut batch = vec![0u8; GSO_SIZE];
    for i in 1..GSO_COUNT {
        let mut payload = vec![0u8; GSO_SIZE - 28];
        payload[0] = u8::try_from(i).expect("small");
        batch.extend(udp_packet([10, 244, 2, 5], [10, 244, 1, 2], &payload));
    }
    assert_eq!(batch.len(), GSO_COUNT * GSO_SIZE);
    peer.send_to(&batch, host_addr(0, 8285))
        .expect("send the batch");

    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    for _ in 1..GSO_COUNT {
        match pod.recv_from(&mut buf) {
            Ok((n, _)) => {
                assert_eq!(n, GSO_SIZE - 28);
                got.push(buf[0]);
            }
            Err(e) => panic!("{e}: received {got:?}; {:?}", topo.stats(0)),
        }
    }
    got.sort_unstable();
    assert_eq!(got, (1..GSO_COUNT).map(|i| i as u8).collect::<Vec<_>>());
    let expected = [
        ("rx_packets", GSO_COUNT as u64),
        ("rx_bytes", (GSO_COUNT * GSO_SIZE) as u64),
        ("drop_rx_bad_version", 1),
        ("tun_tx_packets", GSO_COUNT as u64 - 1),
    ];
    let settled = wait_for(Duration::from_secs(3), || {
        expected
            .iter()
            .all(|(name, want)| topo.counter(0, name) == *want)
    });
    assert!(settled, "want {expected:?}: {:?}", topo.stats(0));
    // With offloads the batch was one read (else this test would prove nothing about GRO).
    if !extra.contains(&"off") {
        assert_eq!(topo.counter(0, "rx_gro_reads"), 1, "{:?}", topo.stats(0));
    }
}

/// Makes every send on `sock` longer than `size` bytes a `UDP_SEGMENT` batch of `size`-byte
/// datagrams (Linux 4.18).
pub(crate) fn set_udp_segment(sock: &UdpSocket, size: usize) {
    let size = libc::c_int::try_from(size).expect("small");
    // SAFETY: `size` is a c_int valid for the duration of the call.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(sock),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&raw const size).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    assert_eq!(r, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
}
