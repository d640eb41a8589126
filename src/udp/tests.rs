//! Real loopback sockets: batching, sender addresses and truncation.

use std::net::UdpSocket as StdUdp;

use super::*;

fn pair() -> (UdpSocket, StdUdp) {
    let ours = UdpSocket::bind("127.0.0.1:0".parse().expect("literal")).expect("bind");
    let theirs = StdUdp::bind("127.0.0.1:0").expect("bind");
    (ours, theirs)
}

fn recv_all(sock: &UdpSocket, slot: usize, want: usize) -> (Vec<u8>, Vec<Received>) {
    let mut scratch = MmsgScratch::new(16);
    let mut data = vec![0u8; 16 * slot];
    let empty = Received {
        len: 0,
        from: None,
        truncated: false,
    };
    let mut out = vec![empty; 16];
    let mut got = Vec::new();
    for _ in 0..200 {
        let n = sock
            .recv_batch(&mut scratch, &mut data, slot, &mut out)
            .expect("recv");
        got.extend_from_slice(&out[..n]);
        if got.len() >= want {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    (data, got)
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
        // Only the first batch's bytes are still in `data`; check the ones that are.
        if i < 10 && got.len() <= 16 {
            assert!(
                data[i * 2048..i * 2048 + 100]
                    .iter()
                    .all(|&b| usize::from(b) == i)
            );
        }
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
        },
        Transmit {
            dst: b.local_addr().expect("addr"),
            start: 10,
            len: 20,
            socket: 0,
        },
        Transmit {
            dst: a.local_addr().expect("addr"),
            start: 30,
            len: 5,
            socket: 0,
        },
    ];
    let mut scratch = MmsgScratch::new(8);
    assert_eq!(
        ours.send_batch(&mut scratch, &data, &batch).expect("send"),
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
            truncated: false
        };
        4
    ];
    assert_eq!(
        ours.recv_batch(&mut scratch, &mut data, 64, &mut out)
            .expect("recv"),
        0
    );
}
