//! ICMP back into TUN: net unreachable when no peer owns the destination, fragmentation needed
//! with the path MTU when a DF packet does not fit, both rate limited.
#![allow(unsafe_code)]

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::common::{EXE, for_each_loop, serial, skip, topology, wait_for};

fn ip_mtu(sock: &UdpSocket) -> i32 {
    let mut mtu: libc::c_int = 0;
    let mut len = libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("small");
    // SAFETY: `mtu` and `len` are valid for writes for the duration of the call.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU,
            (&raw mut mtu).cast(),
            &raw mut len,
        )
    };
    assert_eq!(
        r,
        0,
        "getsockopt(IP_MTU): {}",
        std::io::Error::last_os_error()
    );
    mtu
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
        let on: libc::c_int = 1;
        let len = libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("small");
        let fd = unroutable.as_raw_fd();
        // SAFETY: `on` is a c_int valid for the duration of the call.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_RECVERR,
                (&raw const on).cast(),
                len,
            )
        };
        assert_eq!(r, 0);

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
