//! Real loopback sockets: batching, sender addresses and truncation.

use std::net::UdpSocket as StdUdp;

use super::*;

fn pair() -> (UdpSocket, StdUdp) {
    let ours = UdpSocket::bind("127.0.0.1:0".parse().expect("literal")).expect("bind");
    let theirs = StdUdp::bind("127.0.0.1:0").expect("bind");
    (ours, theirs)
}

/// Receives until `want` datagrams (or GRO reads) arrived, returning each one's bytes (copied
/// out of its batch before the next batch reuses the buffer) and metadata.
fn recv_all(sock: &UdpSocket, slot: usize, want: usize) -> (Vec<Vec<u8>>, Vec<Received>) {
    let mut scratch = MmsgScratch::new(16);
    let mut data = vec![0u8; 16 * slot];
    let empty = Received {
        len: 0,
        from: None,
        truncated: false,
        segment: 0,
    };
    let mut out = vec![empty; 16];
    let mut got = Vec::new();
    let mut bytes = Vec::new();
    for _ in 0..200 {
        let n = sock
            .recv_batch(&mut scratch, &mut data, slot, &mut out)
            .expect("recv");
        for (k, r) in out[..n].iter().enumerate() {
            bytes.push(data[k * slot..k * slot + r.len.min(slot)].to_vec());
        }
        got.extend_from_slice(&out[..n]);
        if got.len() >= want {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    (bytes, got)
}

#[test]
fn receives_a_batch_with_senders() {
    let (ours, theirs) = pair();
    for i in 0..10u8 {
        theirs.send_to(&[i; 100], ours.local_addr()).expect("send");
    }
    let (data, got) = recv_all(&ours, 2048, 10);
    assert_eq!(got.len(), 10);
    let from = theirs.local_addr().expect("addr");
    for (i, r) in got.iter().enumerate().take(10) {
        assert_eq!(r.from, Some(from));
        assert_eq!(r.len, 100);
        assert!(!r.truncated);
        assert!(data[i].iter().all(|&b| usize::from(b) == i), "datagram {i}");
    }
}

#[test]
fn an_oversize_datagram_is_flagged_truncated() {
    let (ours, theirs) = pair();
    theirs
        .send_to(&[7u8; 1500], ours.local_addr())
        .expect("send");
    theirs
        .send_to(&[8u8; 100], ours.local_addr())
        .expect("send");
    let (_, got) = recv_all(&ours, 1024, 2);
    assert_eq!(got.len(), 2);
    assert!(got[0].truncated);
    assert!(!got[1].truncated);
}

#[test]
fn sends_a_batch_to_several_destinations() {
    let ours = UdpSocket::bind("127.0.0.1:0".parse().expect("literal")).expect("bind");
    let a = StdUdp::bind("127.0.0.1:0").expect("bind");
    let b = StdUdp::bind("127.0.0.1:0").expect("bind");
    let data: Vec<u8> = (0..=255u8).collect();
    let batch = [
        Transmit {
            dst: a.local_addr().expect("addr"),
            start: 0,
            len: 10,
            socket: 0,
            peer: 0,
        },
        Transmit {
            dst: b.local_addr().expect("addr"),
            start: 10,
            len: 20,
            socket: 0,
            peer: 0,
        },
        Transmit {
            dst: a.local_addr().expect("addr"),
            start: 30,
            len: 5,
            socket: 0,
            peer: 0,
        },
    ];
    let mut scratch = MmsgScratch::new(8);
    assert_eq!(
        ours.send_batch(&mut scratch, &data, &batch)
            .expect("send")
            .segments,
        3
    );
    let mut buf = [0u8; 64];
    let (n, from) = a.recv_from(&mut buf).expect("recv");
    assert_eq!((&buf[..n], from), (&data[0..10], ours.local_addr()));
    let (n, _) = b.recv_from(&mut buf).expect("recv");
    assert_eq!(&buf[..n], &data[10..30]);
    let (n, _) = a.recv_from(&mut buf).expect("recv");
    assert_eq!(&buf[..n], &data[30..35]);
}

#[test]
fn an_empty_queue_is_not_an_error() {
    let (ours, _theirs) = pair();
    let mut scratch = MmsgScratch::new(4);
    let mut data = vec![0u8; 4 * 64];
    let mut out = vec![
        Received {
            len: 0,
            from: None,
            truncated: false,
            segment: 0
        };
        4
    ];
    assert_eq!(
        ours.recv_batch(&mut scratch, &mut data, 64, &mut out)
            .expect("recv"),
        0
    );
}

/// Segments sent with `UDP_SEGMENT` to a socket with `UDP_GRO` come back as one read with the
/// segment size, and cut at that size they are the segments sent; without GSO each segment is
/// its own datagram.
#[test]
#[allow(clippy::cast_possible_truncation)]
fn gso_send_and_gro_receive_over_loopback() {
    use crate::wire::Segment;
    const HEADER_STRIDE: usize = 160;
    let sender = UdpSocket::bind("127.0.0.1:0".parse().expect("literal")).expect("bind");
    let receiver = UdpSocket::bind("127.0.0.1:0".parse().expect("literal")).expect("bind");
    assert!(
        sender.gso_supported(),
        "UDP_SEGMENT (Linux 4.18) is missing"
    );
    receiver.enable_gro().expect("UDP_GRO (Linux 5.0)");
    let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let mut headers = vec![0u8; 8 * HEADER_STRIDE];
    let mut segs = Vec::new();
    for (i, start) in (0..payload.len()).step_by(1400).enumerate() {
        headers[i * HEADER_STRIDE..i * HEADER_STRIDE + 4].copy_from_slice(&[0xee, 0, 0, i as u8]);
        segs.push(Segment {
            header_len: 4,
            payload_start: start,
            payload_len: 1400.min(payload.len() - start),
        });
    }
    let mut scratch = SegmentScratch::new(16);
    for gso in [true, false] {
        sender.set_gso(gso);
        let sent = sender
            .send_segments(
                &mut scratch,
                &Gathered {
                    dst: receiver.local_addr(),
                    headers: &headers,
                    stride: HEADER_STRIDE,
                    packet: &payload,
                    segs: &segs,
                },
            )
            .expect("send");
        assert_eq!(sent.segments, segs.len());
        assert_eq!(sent.gso_messages, usize::from(gso));
        let (data, got) = recv_all(&receiver, 65_536, 1);
        let mut bytes = Vec::new();
        let mut seen = 0;
        for (k, r) in got.iter().enumerate() {
            let read = &data[k][..];
            let stride = if r.segment > 0 { r.segment } else { r.len };
            for (i, datagram) in read.chunks(stride).enumerate() {
                assert_eq!(datagram[..4], [0xee, 0, 0, (seen + i) as u8]);
                bytes.extend_from_slice(&datagram[4..]);
            }
            seen += read.chunks(stride).count();
            if gso {
                assert_eq!(r.segment, 1404, "one GRO read with the segment size");
            }
        }
        if gso {
            assert_eq!(seen, segs.len());
            assert_eq!(bytes, payload);
        }
        // Drain what is left for the next round.
        while seen < segs.len() {
            let (_, more) = recv_all(&receiver, 65_536, 1);
            seen += more.len().max(1);
        }
    }
}

#[test]
fn runs_of_equal_datagrams_to_one_peer_go_as_one_gso_message() {
    let ours = UdpSocket::bind("127.0.0.1:0".parse().expect("literal")).expect("bind");
    assert!(
        ours.gso_supported(),
        "this kernel lacks UDP_SEGMENT (Linux 4.18)"
    );
    ours.set_gso(true);
    let a = StdUdp::bind("127.0.0.1:0").expect("bind");
    let b = StdUdp::bind("127.0.0.1:0").expect("bind");
    for s in [&a, &b] {
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
    }
    let data: Vec<u8> = (0..2000u32).map(|i| (i % 251) as u8).collect();
    let to = |sock: &StdUdp, start: usize, len: usize| Transmit {
        dst: sock.local_addr().expect("addr"),
        start,
        len,
        socket: 0,
        peer: 0,
    };
    // Five of 100 bytes and a shorter last one to a, two to b, one more to a.
    let batch = [
        to(&a, 0, 100),
        to(&a, 100, 100),
        to(&a, 200, 100),
        to(&a, 300, 100),
        to(&a, 400, 100),
        to(&a, 500, 60),
        to(&b, 600, 100),
        to(&b, 700, 100),
        to(&a, 800, 100),
    ];
    let mut scratch = MmsgScratch::new(16);
    let sent = ours.send_batch(&mut scratch, &data, &batch).expect("send");
    assert_eq!(sent.segments, 9);
    assert_eq!(sent.gso_messages, 2, "a's first six and b's two");
    let mut buf = [0u8; 256];
    for t in &batch {
        let sock = if t.dst == a.local_addr().expect("addr") {
            &a
        } else {
            &b
        };
        let (n, _) = sock.recv_from(&mut buf).expect("each datagram arrives");
        assert_eq!(
            &buf[..n],
            &data[t.start..t.start + t.len],
            "in order, whole"
        );
    }
}

#[test]
fn gso_runs_keep_to_one_peer_one_size_and_the_limits() {
    let a: SocketAddr = "192.0.2.1:8285".parse().expect("literal");
    let b: SocketAddr = "192.0.2.2:8285".parse().expect("literal");
    let t = |dst, len| Transmit {
        dst,
        start: 0,
        len,
        socket: 0,
        peer: 0,
    };
    assert_eq!(sys::gso_run(&[]), 0);
    assert_eq!(sys::gso_run(&[t(a, 100)]), 1);
    assert_eq!(sys::gso_run(&[t(a, 100), t(a, 100), t(b, 100)]), 2);
    // A shorter one ends the run, a longer one is not taken.
    assert_eq!(sys::gso_run(&[t(a, 100), t(a, 50), t(a, 50)]), 2);
    assert_eq!(sys::gso_run(&[t(a, 100), t(a, 150)]), 1);
    // The segment count and byte limits.
    assert_eq!(sys::gso_run(&vec![t(a, 10); 100]), GSO_MAX_SEGMENTS);
    assert_eq!(sys::gso_run(&vec![t(a, 1400); 64]), GSO_MAX_BYTES / 1400);
}

#[test]
fn only_a_message_of_several_datagrams_can_turn_gso_off() {
    let (ours, _) = pair();
    ours.set_gso(true);
    let err = |errno| Err::<usize, _>(io::Error::from_raw_os_error(errno));
    let mut calls = Vec::new();

    // A one-datagram message carried no UDP_SEGMENT: its error is returned, nothing retried,
    // GSO stays on.
    for errno in [libc::EIO, libc::EMSGSIZE, libc::EINVAL] {
        calls.clear();
        let r = ours.with_gso(|_, gso| {
            calls.push(gso);
            (err(errno), false)
        });
        assert_eq!(r.expect_err("fails").raw_os_error(), Some(errno));
        assert_eq!(calls, [true]);
        assert!(ours.gso());
    }

    // A message of several datagrams too big for the route: sent again one datagram per
    // message, GSO stays on for the next send.
    calls.clear();
    let r = ours.with_gso(|_, gso| {
        calls.push(gso);
        if gso {
            (err(libc::EMSGSIZE), true)
        } else {
            (Ok(7), false)
        }
    });
    assert_eq!(r.expect("retried"), 7);
    assert_eq!(calls, [true, false]);
    assert!(ours.gso());

    // A device that cannot checksum: sent again without, and GSO off for good.
    calls.clear();
    let r = ours.with_gso(|_, gso| {
        calls.push(gso);
        if gso {
            (err(libc::EIO), true)
        } else {
            (Ok(3), false)
        }
    });
    assert_eq!(r.expect("retried"), 3);
    assert_eq!(calls, [true, false]);
    assert!(!ours.gso());

    // Without GSO an error is the send's own.
    calls.clear();
    let r = ours.with_gso(|_, gso| {
        calls.push(gso);
        (err(libc::EIO), false)
    });
    assert!(r.is_err());
    assert_eq!(calls, [false]);
}

#[test]
fn the_kernel_s_drops_at_a_socket_are_read_back() {
    // A socket whose small receive buffer is never read: the kernel drops what does not fit,
    // and the drops column of /proc/net/udp counts it for this socket alone.
    let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket2::SockRef::from(&rx)
        .set_recv_buffer_size(4096)
        .expect("rcvbuf");
    let inode = super::claim::inode_of(std::os::fd::AsRawFd::as_raw_fd(&rx)).expect("inode");
    assert_eq!(UdpSocket::drops(&[inode]), 0);
    let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    for _ in 0..200 {
        tx.send_to(&[7u8; 1000], rx.local_addr().expect("addr"))
            .expect("send");
    }
    // Loopback delivery may be deferred to the softirq thread on a busy machine: wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut drops = UdpSocket::drops(&[inode]);
    while drops == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
        drops = UdpSocket::drops(&[inode]);
    }
    assert!(drops > 0 && drops < 200, "{drops}");
    assert_eq!(UdpSocket::drops(&[]), 0, "no socket, no drops");
}
