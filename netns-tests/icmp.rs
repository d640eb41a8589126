//! ICMP back into TUN: net unreachable when no peer owns the destination, fragmentation needed
//! with the path MTU when a DF packet does not fit, both rate limited, and never about a
//! broadcast or multicast destination.
#![allow(unsafe_code)]
// libc constants (ETH_P_ALL, AF_PACKET) and struct sizes fit the narrower kernel ABI types.
#![allow(clippy::cast_possible_truncation)]

use std::net::{Ipv6Addr, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::common::{
    EXE, LOOPS, for_each_loop, int_sockopt, serial, set_int_sockopt, skip, topology, wait_for,
};

fn ip_mtu(sock: &UdpSocket) -> i32 {
    int_sockopt(sock, libc::IPPROTO_IP, libc::IP_MTU)
}

#[test]
fn unreachable_and_fragmentation_needed() {
    if skip("unreachable_and_fragmentation_needed") {
        return;
    }
    let _serial = serial();
    for_each_loop("unreachable_and_fragmentation_needed", |extra| {
        let mut topo = topology();
        let mut args = extra.to_vec();
        // A TUN MTU above what the 1500-byte underlay carries (1472): bigger DF packets
        // reach fustian, which answers with the path MTU.
        args.extend(["--mtu", "2000"]);
        let node_args = topo.node_args(0, &args);
        topo.start_node(0, EXE, &node_args)
            .unwrap_or_else(|e| panic!("{e}"));

        let (unroutable, big) = topo.hosts[0]
            .run(|| {
                let a = UdpSocket::bind("0.0.0.0:0").and_then(|s| {
                    s.connect("10.244.9.9:9")?;
                    Ok(s)
                });
                let b = UdpSocket::bind("0.0.0.0:0").and_then(|s| {
                    s.connect("10.244.2.2:9")?;
                    Ok(s)
                });
                (a, b)
            })
            .expect("enter node a");
        let (unroutable, big) = (unroutable.expect("socket"), big.expect("socket"));
        unroutable
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        // Net unreachable is a soft error for UDP (RFC 1122, 4.1.3.3): only a socket that asks
        // for errors with IP_RECVERR hears of it.
        set_int_sockopt(&unroutable, libc::IPPROTO_IP, libc::IP_RECVERR, 1);

        unroutable.send(b"anyone?").expect("send");
        let err = unroutable
            .recv(&mut [0u8; 64])
            .expect_err("an ICMP error comes back");
        assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH), "{err}");

        assert_eq!(ip_mtu(&big), 2000, "the route MTU before");
        big.send(&[0u8; 1800]).expect("send");
        let lowered = wait_for(Duration::from_secs(2), || ip_mtu(&big) == 1472);
        assert!(
            lowered,
            "path MTU is {} after fragmentation needed",
            ip_mtu(&big)
        );

        // A burst of unroutable packets gets at most the bucket's worth of replies.
        for _ in 0..400 {
            let _ = unroutable.send(b"anyone?");
            let _ = unroutable.take_error();
        }
        let settled = wait_for(Duration::from_secs(2), || {
            topo.counter(0, "icmp_rate_limited") > 0
        });
        assert!(settled, "{:?}", topo.stats(0));
        let sent = topo.counter(0, "tun_tx_icmp");
        assert!(
            (2..=260).contains(&sent),
            "{sent} ICMP errors for ~400 packets in a burst"
        );
        assert!(topo.counter(0, "drop_too_big") >= 1);
    });
}

/// An AF_PACKET socket on one device that sees every packet crossing it, both ways.
struct Capture {
    fd: OwnedFd,
}

/// A packet seen by [`Capture`]: the IP packet and whether the kernel sent it into the device
/// (`PACKET_OUTGOING`) or received it from there (what fustian wrote into TUN).
struct Seen {
    outgoing: bool,
    packet: Vec<u8>,
}

impl Capture {
    /// Opens the capture on `dev` in the calling thread's namespace.
    fn open(dev: &std::ffi::CStr) -> std::io::Result<Self> {
        // SAFETY: `dev` is a valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(dev.as_ptr()) };
        if index == 0 {
            return Err(std::io::Error::last_os_error());
        }
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket call with constant arguments.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = i32::try_from(index).expect("ifindex fits");
        // SAFETY: `addr` is a valid sockaddr_ll for the size given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Returns the next packet captured, if one is waiting.
    fn next(&self) -> Option<Seen> {
        let mut buf = vec![0u8; 65_536];
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: `buf` and `from` are valid for writes of the sizes given.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut from).cast(),
                &raw mut len,
            )
        };
        let n = usize::try_from(n).ok()?;
        buf.truncate(n);
        Some(Seen {
            outgoing: from.sll_pkttype == libc::PACKET_OUTGOING,
            packet: buf,
        })
    }
}

/// True when `p` is an ICMPv4 or ICMPv6 error message (IPv6: directly after the fixed header).
fn is_icmp_error(p: &[u8]) -> bool {
    match p.first().map(|b| b >> 4) {
        Some(4) if p.len() >= 21 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            p[9] == 1 && p.get(ihl).is_some_and(|t| matches!(t, 3 | 4 | 5 | 11 | 12))
        }
        Some(6) if p.len() >= 41 => p[6] == 58 && p[40] < 128,
        _ => false,
    }
}

#[test]
fn no_icmp_about_broadcast_or_multicast() {
    if skip("no_icmp_about_broadcast_or_multicast") {
        return;
    }
    let _serial = serial();
    // One worker and one TUN queue: packets are handled in the order the kernel sent them, so
    // the reply to the last one shows that every earlier one was handled.
    let one_worker = LOOPS
        .iter()
        .filter(|l| l.windows(2).any(|w| w == ["--threads", "1"]));
    for extra in one_worker {
        eprintln!(
            "== no_icmp_about_broadcast_or_multicast with {}",
            extra.join(" ")
        );
        broadcast_and_multicast(extra);
    }
}

fn broadcast_and_multicast(extra: &[&str]) {
    let mut topo = topology();
    let node_args = topo.node_args(0, extra);
    topo.start_node(0, EXE, &node_args)
        .unwrap_or_else(|e| panic!("{e}"));
    topo.hosts[0]
        .ip(&["route", "add", "224.0.0.0/4", "dev", "flannel0"])
        .expect("multicast route");
    let (capture, v4, v6, index) = topo.hosts[0]
        .run(|| {
            let capture = Capture::open(c"flannel0");
            let v4 = UdpSocket::bind("0.0.0.0:0");
            let v6 = UdpSocket::bind("[::]:0");
            // SAFETY: the literal is a valid NUL-terminated string.
            let index = unsafe { libc::if_nametoindex(c"flannel0".as_ptr()) };
            (capture, v4, v6, index)
        })
        .expect("enter node a");
    let (capture, v4, v6) = (
        capture.expect("capture on flannel0"),
        v4.expect("socket"),
        v6.expect("socket"),
    );
    v4.set_broadcast(true).expect("SO_BROADCAST");
    // The overlay network's directed broadcast, and OSPF's all-routers group.
    v4.send_to(b"bcast", "10.244.255.255:9")
        .expect("send to 10.244.255.255");
    v4.send_to(b"mcast", "224.0.0.5:9")
        .expect("send to 224.0.0.5");
    // All routers on the link, once the device has its link-local address to send from.
    let all_routers = SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2), 9, 0, index);
    let sent = wait_for(Duration::from_secs(5), || {
        v6.send_to(b"routers", all_routers).is_ok()
    });
    assert!(sent, "no IPv6 source address on flannel0");
    // Last, a unicast destination no peer owns: this one is answered.
    v4.send_to(b"unicast", "10.244.9.9:9")
        .expect("send to 10.244.9.9");

    let deadline = Instant::now() + Duration::from_secs(5);
    let mut errors = Vec::new();
    let mut sent_into_tun = Vec::new();
    while Instant::now() < deadline {
        let Some(seen) = capture.next() else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        if seen.outgoing {
            sent_into_tun.push(seen.packet);
        } else if is_icmp_error(&seen.packet) {
            let about_probe = seen.packet.get(12..16) == Some(&[10, 244, 9, 9][..]);
            errors.push(seen.packet);
            if about_probe {
                break;
            }
        }
    }
    let dsts: Vec<String> = sent_into_tun
        .iter()
        .map(|p| match p[0] >> 4 {
            4 => std::net::Ipv4Addr::new(p[16], p[17], p[18], p[19]).to_string(),
            _ => Ipv6Addr::from(<[u8; 16]>::try_from(&p[24..40]).expect("16 bytes")).to_string(),
        })
        .collect();
    for want in ["10.244.255.255", "224.0.0.5", "ff02::2", "10.244.9.9"] {
        assert!(
            dsts.iter().any(|d| d == want),
            "{want} never went into TUN: {dsts:?}"
        );
    }
    // Exactly one error came back: net unreachable about the unicast packet, from it.
    let summary: Vec<String> = errors
        .iter()
        .map(|p| format!("{:02x?}", &p[..p.len().min(48)]))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "ICMP errors written into TUN: {summary:#?}"
    );
    let reply = &errors[0];
    assert_eq!(
        &reply[12..16],
        &[10, 244, 9, 9],
        "sourced from the unreachable address"
    );
    assert_eq!((reply[20], reply[21]), (3, 0), "net unreachable");
    let counted = wait_for(Duration::from_secs(3), || {
        topo.counter(0, "tun_tx_icmp") == 1 && topo.counter(0, "drop_no_route") >= 4
    });
    assert!(counted, "{:?}", topo.stats(0));
    assert_eq!(topo.counter(0, "icmp_rate_limited"), 0);
}
