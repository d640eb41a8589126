//! ICMPv4 error messages fustian sends back into the TUN device (RFC 792, RFC 1191, RFC 1812).
//!
//! Two are sent, both to the source of a packet read from TUN (the caller picks the source
//! address; see `datapath::forward::icmp_reply`): destination unreachable, net unreachable (type 3 code 0) when no peer owns the
//! destination, and fragmentation needed (type 3 code 4, with the next-hop MTU of RFC 1191)
//! when a packet with DF set does not fit the path. They quote the offending packet's IP header
//! and as much of its payload as keeps the whole message within 576 bytes (RFC 1812, section
//! 4.3.2.3). None is sent about an ICMP error message, a non-first fragment, a packet to a
//! broadcast or multicast destination, or a packet whose source does not name a single host
//! (RFC 1812 section 4.3.2.7, RFC 1122 section 3.2.2); as the reply is sourced from the
//! offender's destination, none is ever sourced from a broadcast or multicast address either.
//! IPv6 packets get the ICMPv6 equivalents (RFC 4443): destination unreachable, no route
//! (type 1 code 0), and packet too big (type 2) with the MTU, within the 1280-byte minimum MTU;
//! none about a multicast destination or a source that is not one node (RFC 4443 section
//! 2.4 (e)). Directed broadcast addresses depend on the network's layout and are the caller's
//! to check (`datapath::forward::icmp_reply`).

use std::net::Ipv4Addr;

use super::WireError;
use super::ip::{HEADER_LEN, IpProtocol, Packet, Repr, checksum};

/// The largest ICMP error message, IP header included (RFC 1812, section 4.3.2.3).
pub const MAX_LEN: usize = 576;

/// ICMP header: type, code, checksum, and 4 bytes of unused / next-hop MTU.
const ICMP_HEADER_LEN: usize = 8;

/// Which error to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// Fragmentation needed and DF set, with the MTU that fits (type 3 code 4).
    FragmentationNeeded {
        /// The next-hop MTU.
        mtu: u16,
    },
    /// Net unreachable (type 3 code 0).
    Net,
}

/// Returns true when an error message may be sent about `offender` (see the module docs): a
/// whole IPv4 packet between two addresses that each name one host ([`is_one_host`]), not an
/// ICMP error, not a non-first fragment.
pub fn may_answer(offender: &[u8]) -> bool {
    let Ok(packet) = Packet::new_checked(offender) else {
        return false;
    };
    if !is_one_host(packet.src_addr()) || !is_one_host(packet.dst_addr()) {
        return false;
    }
    // Fragment offset must be zero: only the first fragment carries the transport header.
    if offender[6] & 0x1f != 0 || offender[7] != 0 {
        return false;
    }
    if packet.protocol() == IpProtocol::Icmp {
        // Only the queries and informational messages Linux also answers (`icmp_send`: type at
        // most 18 and not an error): echo and echo reply, router advertisement and
        // solicitation, timestamp, information and address mask requests and replies. Errors,
        // unassigned, deprecated and unknown types are never answered, nor is a packet too
        // short to show its type.
        return offender
            .get(packet.header_len())
            .is_some_and(|&t| matches!(t, 0 | 8 | 9 | 10 | 13..=18));
    }
    true
}

/// Returns true when the IPv4 address `addr` can name a single host, whatever the network's
/// layout: not in 0.0.0.0/8 ("this network"), 127.0.0.0/8 (loopback), 224.0.0.0/4 (multicast)
/// or 240.0.0.0/4 (reserved, which holds the limited broadcast 255.255.255.255). These are the
/// source addresses RFC 1812 (sections 4.3.2.7 and 5.3.7) refuses to answer, and the
/// destinations no ICMP error may be about or be sourced from.
pub const fn is_one_host(addr: Ipv4Addr) -> bool {
    !matches!(addr.octets()[0], 0 | 127 | 224..=255)
}

/// Writes an ICMP destination-unreachable message about `offender` from `from` into `out`
/// and returns its length.
///
/// # Errors
///
/// `Truncated` when `out` is shorter than [`MAX_LEN`] or `offender` is not a whole IPv4 packet.
pub fn unreachable(
    out: &mut [u8],
    from: Ipv4Addr,
    offender: &[u8],
    kind: Unreachable,
) -> Result<usize, WireError> {
    let packet = Packet::new_checked(offender)?;
    if out.len() < MAX_LEN {
        return Err(WireError::Truncated);
    }
    let quoted = offender.len().min(MAX_LEN - HEADER_LEN - ICMP_HEADER_LEN);
    let icmp_len = ICMP_HEADER_LEN + quoted;
    let repr = Repr {
        src_addr: from,
        dst_addr: packet.src_addr(),
        protocol: IpProtocol::Icmp,
        ttl: 64,
        payload_len: icmp_len,
    };
    repr.emit(&mut Packet::new_unchecked(
        &mut out[..HEADER_LEN + icmp_len],
    ))?;
    let icmp = &mut out[HEADER_LEN..HEADER_LEN + icmp_len];
    let (code, mtu) = match kind {
        Unreachable::Net => (0, 0),
        Unreachable::FragmentationNeeded { mtu } => (4, mtu),
    };
    icmp[..ICMP_HEADER_LEN].copy_from_slice(&[3, code, 0, 0, 0, 0, 0, 0]);
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    icmp[ICMP_HEADER_LEN..].copy_from_slice(&offender[..quoted]);
    let sum = checksum(icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    Ok(HEADER_LEN + icmp_len)
}

/// The smallest IPv6 MTU (RFC 8200, section 5); an ICMPv6 error must fit it (RFC 4443, 2.4).
pub const V6_MIN_MTU: usize = 1280;

/// Returns true when an ICMPv6 error may be sent about `offender` (RFC 4443, section 2.4 (e)):
/// not about an ICMPv6 error message, nor a packet to a multicast destination (such as the
/// kernel's own router solicitations to ff02::2), nor a packet from a source that is not one
/// node; unspecified, loopback and multicast addresses are neither a valid source nor a valid
/// destination of the reply.
pub fn may_answer_v6(offender: &[u8]) -> bool {
    let Ok(packet) = super::ip::V6Packet::new_checked(offender) else {
        return false;
    };
    let one_node =
        |a: std::net::Ipv6Addr| !(a.is_multicast() || a.is_unspecified() || a.is_loopback());
    if !one_node(packet.src_addr()) || !one_node(packet.dst_addr()) {
        return false;
    }
    // The upper layer behind any extension headers: an error is never sent about an ICMPv6
    // error however many headers stand in front of it, nor about a packet whose chain does not
    // parse or a later fragment, where the upper layer cannot be seen.
    match super::ip::ipv6_upper_layer(offender) {
        Some((58, at)) => {
            // Types below 128 are errors (RFC 4443, section 2.1).
            offender.get(at).is_some_and(|&t| t >= 128)
        }
        Some(_) => true,
        None => false,
    }
}

/// Writes an ICMPv6 error about `offender` from `from` into `out` (at least [`V6_MIN_MTU`]
/// bytes) and returns its length: destination unreachable, no route (type 1 code 0), for
/// [`Unreachable::Net`]; packet too big (type 2) with the MTU, for
/// [`Unreachable::FragmentationNeeded`] (RFC 4443, sections 3.1 and 3.2).
///
/// # Errors
///
/// `Truncated` when `out` is too short or `offender` is not a whole IPv6 packet.
pub fn unreachable_v6(
    out: &mut [u8],
    from: std::net::Ipv6Addr,
    offender: &[u8],
    kind: Unreachable,
) -> Result<usize, WireError> {
    use super::ip::{V6_HEADER_LEN, V6Packet, V6Repr};
    let packet = V6Packet::new_checked(offender)?;
    if out.len() < V6_MIN_MTU {
        return Err(WireError::Truncated);
    }
    let quoted = offender
        .len()
        .min(V6_MIN_MTU - V6_HEADER_LEN - ICMP_HEADER_LEN);
    let icmp_len = ICMP_HEADER_LEN + quoted;
    let to = packet.src_addr();
    V6Repr {
        src_addr: from,
        dst_addr: to,
        next_header: IpProtocol::Icmpv6,
        hop_limit: 64,
        payload_len: icmp_len,
    }
    .emit(out)?;
    let (icmp_type, code, mtu) = match kind {
        Unreachable::Net => (1u8, 0u8, 0u32),
        Unreachable::FragmentationNeeded { mtu } => (2, 0, u32::from(mtu)),
    };
    let icmp = &mut out[V6_HEADER_LEN..V6_HEADER_LEN + icmp_len];
    icmp[..4].copy_from_slice(&[icmp_type, code, 0, 0]);
    icmp[4..8].copy_from_slice(&mtu.to_be_bytes());
    icmp[ICMP_HEADER_LEN..].copy_from_slice(&offender[..quoted]);
    // Checksum over the pseudo-header (RFC 8200, section 8.1) and the message.
    let mut sum: u64 = from
        .octets()
        .chunks_exact(2)
        .chain(to.octets().chunks_exact(2))
        .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    sum += u64::try_from(icmp_len).unwrap_or(0) + 58;
    sum += u64::from(!checksum(icmp));
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let csum = !u16::try_from(sum).unwrap_or(0xffff);
    icmp[2..4].copy_from_slice(&csum.to_be_bytes());
    Ok(V6_HEADER_LEN + icmp_len)
}

/// Returns true when the IPv4 packet has DF set.
pub fn dont_fragment(packet: &[u8]) -> bool {
    packet.get(6).is_some_and(|b| b & 0x40 != 0)
}

#[cfg(test)]
mod tests {
    use etherparse::{Icmpv4Type, PacketBuilder, SlicedPacket, TransportSlice};
    use proptest::prelude::*;

    use super::*;

    fn udp(len: usize) -> Vec<u8> {
        let b = PacketBuilder::ipv4([10, 244, 1, 2], [10, 244, 9, 9], 64).udp(4000, 9);
        let mut out = Vec::new();
        b.write(&mut out, &vec![7u8; len]).expect("build");
        out
    }

    #[test]
    fn builds_a_frag_needed_that_etherparse_reads() {
        let offender = udp(1800);
        let mut out = [0u8; MAX_LEN];
        let from = Ipv4Addr::new(10, 244, 1, 0);
        let kind = Unreachable::FragmentationNeeded { mtu: 1472 };
        let n = unreachable(&mut out, from, &offender, kind).expect("fits");
        assert_eq!(n, MAX_LEN);
        let p = SlicedPacket::from_ip(&out[..n]).expect("parses");
        let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else {
            panic!("not ICMP")
        };
        match icmp.icmp_type() {
            Icmpv4Type::DestinationUnreachable(h) => {
                assert_eq!(
                    h,
                    etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                        next_hop_mtu: 1472
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(checksum(&out[20..n]), 0);
        assert_eq!(
            &out[28..48],
            &offender[..20],
            "quotes the offender's header"
        );
    }

    #[test]
    fn never_answers_errors_fragments_or_broadcasts() {
        assert!(may_answer(&udp(10)));
        let mut frag = udp(10);
        frag[7] = 1;
        assert!(!may_answer(&frag));
        let mut bcast = udp(10);
        bcast[12..16].copy_from_slice(&[255; 4]);
        assert!(!may_answer(&bcast));
        let mut out = [0u8; MAX_LEN];
        let from = Ipv4Addr::new(10, 244, 1, 0);
        let n = unreachable(&mut out, from, &udp(10), Unreachable::Net).expect("fits");
        assert!(!may_answer(&out[..n]), "an ICMP error is never answered");
        assert!(!may_answer(&[0x45; 10]));
    }

    #[rstest::rstest]
    #[case::unicast([10, 244, 1, 2], [10, 244, 9, 9], true)]
    #[case::limited_broadcast_destination([10, 244, 1, 2], [255, 255, 255, 255], false)]
    #[case::ospf_multicast_destination([10, 244, 1, 2], [224, 0, 0, 5], false)]
    #[case::other_multicast_destination([10, 244, 1, 2], [239, 1, 2, 3], false)]
    #[case::reserved_destination([10, 244, 1, 2], [240, 0, 0, 1], false)]
    #[case::zero_destination([10, 244, 1, 2], [0, 0, 0, 0], false)]
    #[case::loopback_destination([10, 244, 1, 2], [127, 0, 0, 1], false)]
    #[case::unspecified_source([0, 0, 0, 0], [10, 244, 9, 9], false)]
    #[case::this_network_source([0, 1, 2, 3], [10, 244, 9, 9], false)]
    #[case::broadcast_source([255, 255, 255, 255], [10, 244, 9, 9], false)]
    #[case::multicast_source([224, 0, 0, 1], [10, 244, 9, 9], false)]
    #[case::loopback_source([127, 0, 0, 1], [10, 244, 9, 9], false)]
    #[case::reserved_source([250, 0, 0, 1], [10, 244, 9, 9], false)]
    fn answers_only_between_single_hosts(
        #[case] src: [u8; 4],
        #[case] dst: [u8; 4],
        #[case] answered: bool,
    ) {
        let b = PacketBuilder::ipv4(src, dst, 64).udp(4000, 9);
        let mut p = Vec::new();
        b.write(&mut p, &[7u8; 10]).expect("build");
        assert_eq!(may_answer(&p), answered);
    }

    #[rstest::rstest]
    #[case::echo_request(8, true)]
    #[case::echo_reply(0, true)]
    #[case::timestamp(13, true)]
    #[case::address_mask_reply(18, true)]
    #[case::unreachable(3, false)]
    #[case::source_quench(4, false)]
    #[case::redirect(5, false)]
    #[case::time_exceeded(11, false)]
    #[case::parameter_problem(12, false)]
    #[case::unassigned(1, false)]
    #[case::obsolete_conversion_error(31, false)]
    #[case::photuris(40, false)]
    #[case::unknown(200, false)]
    fn answers_only_icmp_queries(#[case] icmp_type: u8, #[case] answered: bool) {
        let b = PacketBuilder::ipv4([10, 244, 1, 2], [10, 244, 9, 9], 64)
            .icmpv4_raw(icmp_type, 0, [0; 4]);
        let mut p = Vec::new();
        b.write(&mut p, &[7u8; 10]).expect("build");
        assert_eq!(may_answer(&p), answered);
        // Cut before the type: not answered.
        let header = usize::from(p[0] & 0x0f) * 4;
        let mut short = p[..header].to_vec();
        short[2..4].copy_from_slice(&u16::try_from(header).expect("short").to_be_bytes());
        short[10..12].fill(0);
        let sum = crate::wire::ip::checksum(&short);
        short[10..12].copy_from_slice(&sum.to_be_bytes());
        assert!(!may_answer(&short));
    }

    /// An IPv6 packet from fd00::2 to fd00::9 whose upper layer `upper` (first byte `first`)
    /// sits behind 8-byte extension headers of the kinds `kinds`.
    fn v6_behind(kinds: &[u8], upper: u8, first: u8) -> Vec<u8> {
        let src: std::net::Ipv6Addr = "fd00::2".parse().expect("literal");
        let dst: std::net::Ipv6Addr = "fd00::9".parse().expect("literal");
        let mut p = vec![
            0x60,
            0,
            0,
            0,
            0,
            0,
            kinds.first().copied().unwrap_or(upper),
            64,
        ];
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        for (i, _) in kinds.iter().enumerate() {
            let mut h = [0u8; 8];
            h[0] = kinds.get(i + 1).copied().unwrap_or(upper);
            if kinds[i] != 44 {
                h[2] = 1;
                h[3] = 4;
            }
            p.extend_from_slice(&h);
        }
        p.extend_from_slice(&[first, 0, 0, 0, 0, 0, 0, 0]);
        let payload = u16::try_from(p.len() - 40).expect("short");
        p[4..6].copy_from_slice(&payload.to_be_bytes());
        p
    }

    #[rstest::rstest]
    #[case::plain_error(&[], 58, 1, false)]
    #[case::error_behind_destination_options(&[60], 58, 1, false)]
    #[case::error_behind_hop_by_hop(&[0], 58, 4, false)]
    #[case::error_behind_first_fragment(&[44], 58, 2, false)]
    #[case::error_behind_two_headers(&[0, 60], 58, 3, false)]
    #[case::echo_behind_destination_options(&[60], 58, 128, true)]
    #[case::udp_behind_destination_options(&[60], 17, 0, true)]
    #[case::chain_over_the_limit(&[60, 60, 60, 60, 60, 60, 60, 60, 60], 58, 128, false)]
    fn never_answers_an_icmpv6_error_behind_extension_headers(
        #[case] kinds: &[u8],
        #[case] upper: u8,
        #[case] first: u8,
        #[case] answered: bool,
    ) {
        assert_eq!(may_answer_v6(&v6_behind(kinds, upper, first)), answered);
    }

    #[test]
    fn never_answers_a_later_v6_fragment() {
        let mut p = v6_behind(&[44], 17, 0);
        p[42] = 0x05; // offset 40 bytes: a later fragment
        p[43] = 0x00;
        assert!(!may_answer_v6(&p));
    }

    #[rstest::rstest]
    #[case::unicast("fd00::2", "fd00::9", true)]
    #[case::router_solicitation_to_all_routers("fe80::1", "ff02::2", false)]
    #[case::other_multicast_destination("fd00::2", "ff0e::1", false)]
    #[case::unspecified_destination("fd00::2", "::", false)]
    #[case::loopback_destination("fd00::2", "::1", false)]
    #[case::unspecified_source("::", "fd00::9", false)]
    #[case::multicast_source("ff02::1", "fd00::9", false)]
    #[case::loopback_source("::1", "fd00::9", false)]
    fn answers_v6_only_between_single_nodes(
        #[case] src: &str,
        #[case] dst: &str,
        #[case] answered: bool,
    ) {
        let src: std::net::Ipv6Addr = src.parse().expect("literal");
        let dst: std::net::Ipv6Addr = dst.parse().expect("literal");
        let b = PacketBuilder::ipv6(src.octets(), dst.octets(), 255).udp(4000, 9);
        let mut p = Vec::new();
        b.write(&mut p, &[7u8; 10]).expect("build");
        assert_eq!(may_answer_v6(&p), answered);
    }

    #[test]
    fn builds_icmpv6_errors_that_etherparse_verifies() {
        let b = PacketBuilder::ipv6(
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            [0xfd; 16],
            64,
        )
        .udp(4000, 9);
        let mut offender = Vec::new();
        b.write(&mut offender, &[7u8; 1400]).expect("build");
        assert!(may_answer_v6(&offender));
        let mut out = [0u8; V6_MIN_MTU];
        let from: std::net::Ipv6Addr = [0xfd; 16].into();
        for kind in [
            Unreachable::Net,
            Unreachable::FragmentationNeeded { mtu: 1430 },
        ] {
            let n = unreachable_v6(&mut out, from, &offender, kind).expect("fits");
            assert_eq!(n, V6_MIN_MTU);
            let p = SlicedPacket::from_ip(&out[..n]).expect("parses");
            let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else {
                panic!("not ICMPv6")
            };
            let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else {
                panic!("not IPv6")
            };
            let want = icmp
                .icmp_type()
                .calc_checksum(
                    ip.header().source(),
                    ip.header().destination(),
                    icmp.payload(),
                )
                .expect("checksum");
            assert_eq!(icmp.checksum(), want);
            match (kind, icmp.icmp_type()) {
                (Unreachable::Net, etherparse::Icmpv6Type::DestinationUnreachable(_)) => {}
                (
                    Unreachable::FragmentationNeeded { .. },
                    etherparse::Icmpv6Type::PacketTooBig { mtu },
                ) => {
                    assert_eq!(mtu, 1430);
                }
                other => panic!("{other:?}"),
            }
            assert!(
                !may_answer_v6(&out[..n]),
                "an ICMPv6 error is never answered"
            );
        }
    }

    proptest! {
        #[test]
        fn never_panics_v6(data in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let mut out = [0u8; V6_MIN_MTU];
            if may_answer_v6(&data) {
                let n = unreachable_v6(&mut out, std::net::Ipv6Addr::LOCALHOST, &data, Unreachable::Net)
                    .expect("a packet that may be answered can be quoted");
                prop_assert!(n <= V6_MIN_MTU);
            }
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..700)) {
            let mut out = [0u8; MAX_LEN];
            if may_answer(&data) {
                let n = unreachable(&mut out, Ipv4Addr::LOCALHOST, &data, Unreachable::Net)
                    .expect("a packet that may be answered can be quoted");
                prop_assert!(n <= MAX_LEN);
            }
        }
    }
}
