//! Per-packet decisions, with no I/O.
//!
//! Both event loops call [`outbound`] for every packet read from TUN and [`inbound`] for every
//! datagram received from the underlay. Each returns a [`Verdict`]: send to a peer, deliver to
//! TUN, or drop with a [`DropReason`]. Nothing here allocates, blocks or panics on any input,
//! which is what the unit tests, property tests, fuzz targets and benches rely on.
//!
//! Receive checks, in order (each failure is its own counter):
//! 1. the sender's address is the public address of a known peer (`unknown_sender`);
//! 2. the datagram holds exactly one valid inner IP packet (`rx_*`);
//! 3. the inner destination lies in this node's subnet (`not_local`);
//! 4. the inner source lies in a subnet owned by that same sender (`spoofed_source`).
//!
//! The inner TTL is left alone in both directions: the kernel already decremented it when it
//! routed the packet into TUN, so the tunnel counts as one hop (flannel's proxy decrements it
//! again on both sides).

use std::net::SocketAddr;

use crate::metrics::DropReason;
use crate::table::Snapshot;
use crate::wire::{Encap, flannel};

/// Fixed per-node forwarding parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarding {
    /// The wire format.
    pub encap: Encap,
    /// The largest inner packet that fits the underlay path after encapsulation.
    pub max_inner_len: usize,
}

/// What to do with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write `buf[start..start + len]` to the TUN device.
    Deliver {
        /// Offset of the inner packet.
        start: usize,
        /// Its length.
        len: usize,
    },
    /// Drop the packet and count the reason.
    Drop(DropReason),
    /// Send `buf[start..start + len]` as one UDP datagram to `dst`.
    Send {
        /// Index of the peer in the snapshot.
        peer: u32,
        /// The peer's endpoint.
        dst: SocketAddr,
        /// Offset of the encapsulated payload.
        start: usize,
        /// Its length.
        len: usize,
    },
}

/// Decides what to do with the packet at `buf[headroom..headroom + len]`, read from TUN.
///
/// `headroom` bytes before the packet are free for the encapsulation header, which is written
/// in place, so the inner packet is never copied.
#[inline]
pub fn outbound(
    snap: &Snapshot,
    fwd: &Forwarding,
    buf: &mut [u8],
    headroom: usize,
    len: usize,
) -> Verdict {
    let Some(packet) = buf.get(headroom..headroom.saturating_add(len)) else {
        return Verdict::Drop(DropReason::TunMalformed(crate::wire::WireError::Truncated));
    };
    let inner = match crate::wire::parse_inner(packet) {
        Ok(inner) => inner,
        Err(e) => return Verdict::Drop(DropReason::TunMalformed(e)),
    };
    if snap.is_local(inner.dst) {
        return Verdict::Drop(DropReason::LocalDestination);
    }
    let Some((peer, p)) = snap.lookup(inner.dst) else {
        return Verdict::Drop(DropReason::NoRoute);
    };
    if len > fwd.max_inner_len {
        return Verdict::Drop(DropReason::TooBig);
    }
    match fwd.encap {
        Encap::Flannel => Verdict::Send {
            peer,
            dst: p.endpoint,
            start: headroom,
            len,
        },
    }
}

/// Decides what to do with `datagram`, received from `sender`.
#[inline]
pub fn inbound(snap: &Snapshot, fwd: &Forwarding, sender: SocketAddr, datagram: &[u8]) -> Verdict {
    if !snap.is_known_sender(sender.ip()) {
        return Verdict::Drop(DropReason::UnknownSender);
    }
    let (inner, start, len) = match fwd.encap {
        Encap::Flannel => match flannel::decapsulate(datagram) {
            Ok(inner) => (inner, 0, datagram.len()),
            Err(e) => return Verdict::Drop(DropReason::RxMalformed(e)),
        },
    };
    if !snap.is_local(inner.dst) {
        return Verdict::Drop(DropReason::NotLocal);
    }
    match snap.lookup(inner.src) {
        Some((_, owner)) if owner.endpoint.ip() == sender.ip() => Verdict::Deliver { start, len },
        _ => Verdict::Drop(DropReason::SpoofedSource),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;
    use crate::table::Peer;
    use crate::wire::WireError;
    use crate::wire::ip::{IpProtocol, Packet, Repr};

    const FWD: Forwarding = Forwarding {
        encap: Encap::Flannel,
        max_inner_len: 1472,
    };

    fn node_a() -> Snapshot {
        Snapshot::new(
            vec!["10.244.1.0/24".parse().expect("literal")],
            vec![
                Peer {
                    subnet: "10.244.2.0/24".parse().expect("literal"),
                    endpoint: "192.0.2.2:8285".parse().expect("literal"),
                },
                Peer {
                    subnet: "10.244.3.0/24".parse().expect("literal"),
                    endpoint: "192.0.2.3:8285".parse().expect("literal"),
                },
            ],
        )
        .expect("valid")
    }

    fn packet(src: [u8; 4], dst: [u8; 4], payload_len: usize) -> Vec<u8> {
        let repr = Repr {
            src_addr: Ipv4Addr::from(src),
            dst_addr: Ipv4Addr::from(dst),
            protocol: IpProtocol::Udp,
            ttl: 64,
            payload_len,
        };
        let mut buf = vec![0u8; 20 + payload_len];
        repr.emit(&mut Packet::new_unchecked(&mut buf[..]))
            .expect("fits");
        buf
    }

    #[test]
    fn outbound_sends_to_the_owner() {
        let mut buf = packet([10, 244, 1, 2], [10, 244, 2, 9], 100);
        let len = buf.len();
        let v = outbound(&node_a(), &FWD, &mut buf, 0, len);
        assert_eq!(
            v,
            Verdict::Send {
                peer: 0,
                dst: "192.0.2.2:8285".parse().expect("literal"),
                start: 0,
                len
            }
        );
    }

    #[test]
    fn outbound_drops() {
        let snap = node_a();
        let mut no_route = packet([10, 244, 1, 2], [10, 244, 9, 9], 10);
        let n = no_route.len();
        assert_eq!(
            outbound(&snap, &FWD, &mut no_route, 0, n),
            Verdict::Drop(DropReason::NoRoute)
        );
        let mut local = packet([10, 244, 1, 2], [10, 244, 1, 3], 10);
        assert_eq!(
            outbound(&snap, &FWD, &mut local, 0, n),
            Verdict::Drop(DropReason::LocalDestination)
        );
        let mut big = packet([10, 244, 1, 2], [10, 244, 2, 3], 1460);
        let n = big.len();
        assert_eq!(
            outbound(&snap, &FWD, &mut big, 0, n),
            Verdict::Drop(DropReason::TooBig)
        );
        let mut junk = vec![0u8; 10];
        assert_eq!(
            outbound(&snap, &FWD, &mut junk, 0, 10),
            Verdict::Drop(DropReason::TunMalformed(WireError::BadVersion))
        );
        let mut short = vec![0x45u8; 10];
        assert_eq!(
            outbound(&snap, &FWD, &mut short, 0, 10),
            Verdict::Drop(DropReason::TunMalformed(WireError::Truncated))
        );
        assert_eq!(
            outbound(&snap, &FWD, &mut junk, 8, 10),
            Verdict::Drop(DropReason::TunMalformed(WireError::Truncated))
        );
    }

    #[test]
    fn inbound_checks_sender_source_and_destination() {
        let snap = node_a();
        let from_b: SocketAddr = "192.0.2.2:8285".parse().expect("literal");
        let good = packet([10, 244, 2, 5], [10, 244, 1, 2], 30);
        assert_eq!(
            inbound(&snap, &FWD, from_b, &good),
            Verdict::Deliver {
                start: 0,
                len: good.len()
            }
        );
        let stranger: SocketAddr = "192.0.2.99:8285".parse().expect("literal");
        assert_eq!(
            inbound(&snap, &FWD, stranger, &good),
            Verdict::Drop(DropReason::UnknownSender)
        );
        // B claims to carry a packet from C's subnet.
        let spoofed = packet([10, 244, 3, 5], [10, 244, 1, 2], 30);
        assert_eq!(
            inbound(&snap, &FWD, from_b, &spoofed),
            Verdict::Drop(DropReason::SpoofedSource)
        );
        let outside = packet([198, 51, 100, 7], [10, 244, 1, 2], 30);
        assert_eq!(
            inbound(&snap, &FWD, from_b, &outside),
            Verdict::Drop(DropReason::SpoofedSource)
        );
        let elsewhere = packet([10, 244, 2, 5], [10, 244, 3, 2], 30);
        assert_eq!(
            inbound(&snap, &FWD, from_b, &elsewhere),
            Verdict::Drop(DropReason::NotLocal)
        );
        for junk in [&[][..], &[0x45][..], &[0x45; 19][..], &[0u8; 40][..]] {
            assert!(matches!(
                inbound(&snap, &FWD, from_b, junk),
                Verdict::Drop(DropReason::RxMalformed(_))
            ));
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            inbound(&snap, &FWD, from_b, &trailing),
            Verdict::Drop(DropReason::RxMalformed(WireError::BadLength))
        );
    }

    proptest! {
        #[test]
        fn encap_then_decap_is_identity(host in 1u8..255, payload_len in 0usize..1400) {
            // Node A sends to B; B's view of the same overlay decapsulates what A sent.
            let mut buf = vec![0u8; 64];
            buf.extend(packet([10, 244, 1, host], [10, 244, 2, host], payload_len));
            let len = buf.len() - 64;
            let original = buf[64..].to_vec();
            let Verdict::Send { start, len: out_len, .. } = outbound(&node_a(), &FWD, &mut buf, 64, len)
            else { return Err(TestCaseError::fail("not sent")) };
            let node_b = Snapshot::new(
                vec!["10.244.2.0/24".parse().expect("literal")],
                vec![Peer { subnet: "10.244.1.0/24".parse().expect("literal"),
                            endpoint: "192.0.2.1:8285".parse().expect("literal") }],
            ).expect("valid");
            let datagram = &buf[start..start + out_len];
            let from_a: SocketAddr = "192.0.2.1:8285".parse().expect("literal");
            let Verdict::Deliver { start: s, len: l } = inbound(&node_b, &FWD, from_a, datagram)
            else { return Err(TestCaseError::fail("not delivered")) };
            prop_assert_eq!(&datagram[s..s + l], &original[..]);
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..1600), headroom in 0usize..80) {
            let snap = node_a();
            let mut buf = data.clone();
            let _ = outbound(&snap, &FWD, &mut buf, headroom, data.len());
            let _ = inbound(&snap, &FWD, "192.0.2.2:8285".parse().expect("literal"), &data);
        }
    }
}
