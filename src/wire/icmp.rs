//! ICMPv4 error messages fustian sends back into the TUN device (RFC 792, RFC 1191, RFC 1812).
//!
//! Two are sent, both to the source of a packet read from TUN (the caller picks the source
//! address; see `forward::icmp_reply`): destination unreachable, net unreachable (type 3 code 0) when no peer owns the
//! destination, and fragmentation needed (type 3 code 4, with the next-hop MTU of RFC 1191)
//! when a packet with DF set does not fit the path. They quote the offending packet's IP header
//! and as much of its payload as keeps the whole message within 576 bytes (RFC 1812, section
//! 4.3.2.3). None is sent about an ICMP error message, a non-first fragment, or a packet from
//! a multicast, broadcast or unspecified source (RFC 1122, section 3.2.2). IPv6 packets get no
//! ICMPv6 reply yet; they are counted as dropped.

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

/// Returns true when an error message may be sent about `offender` (see the module docs).
pub fn may_answer(offender: &[u8]) -> bool {
    let Ok(packet) = Packet::new_checked(offender) else {
        return false;
    };
    let src = packet.src_addr();
    if src.is_multicast() || src.is_broadcast() || src.is_unspecified() {
        return false;
    }
    // Fragment offset must be zero: only the first fragment carries the transport header.
    if offender[6] & 0x1f != 0 || offender[7] != 0 {
        return false;
    }
    if packet.protocol() == IpProtocol::Icmp {
        let icmp_type = offender.get(packet.header_len()).copied().unwrap_or(0);
        // Only queries (echo, timestamp, ...) may be answered with errors, never errors.
        if matches!(icmp_type, 3 | 4 | 5 | 11 | 12) {
            return false;
        }
    }
    true
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

    proptest! {
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
