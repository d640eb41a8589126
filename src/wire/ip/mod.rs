//! Inner IPv4 and IPv6 headers: the fields the dataplane reads and writes.
//!
//! The forwarding core needs the version, the addresses and the length fields of the packet it
//! carries. A packet is accepted only when its length fields agree exactly with the bytes that
//! arrived: trailing bytes or a short packet are both [`WireError::BadLength`] /
//! [`WireError::Truncated`], because a tunnel endpoint that forwards disagreeing lengths lets a
//! sender smuggle bytes past the receiver's view of the packet.
//!
//! The module is split by concern: [`Packet`] and [`Repr`] (IPv4) in `v4.rs`, [`V6Packet`] and
//! [`V6Repr`] in `v6.rs`, the RFC 1071 sums and [`complete_partial_checksum`] in
//! `checksum.rs`; this file holds what both families share ([`IpProtocol`]) and
//! [`parse_inner`], which picks the family by the version nibble.

mod checksum;
mod v4;
mod v6;

pub(crate) use self::checksum::lane_sum;
pub use self::checksum::{
    checksum, complete_partial_checksum, fold, ones_sum, ones_sum_portable, pseudo_sum,
};
pub use self::v4::{HEADER_LEN, Packet, Repr};
pub use self::v6::{V6_HEADER_LEN, V6Packet, V6Repr};

use std::net::IpAddr;

use super::WireError;

/// The IP protocol / IPv6 next-header numbers the dataplane names (IANA "Assigned Internet
/// Protocol Numbers").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpProtocol {
    /// ICMP, 1.
    Icmp,
    /// ICMPv6, 58.
    Icmpv6,
    /// TCP, 6.
    Tcp,
    /// UDP, 17.
    Udp,
    /// Any other number.
    Unknown(u8),
}

impl From<u8> for IpProtocol {
    fn from(value: u8) -> Self {
        match value {
            1 => Self::Icmp,
            6 => Self::Tcp,
            17 => Self::Udp,
            58 => Self::Icmpv6,
            other => Self::Unknown(other),
        }
    }
}

impl From<IpProtocol> for u8 {
    fn from(value: IpProtocol) -> Self {
        match value {
            IpProtocol::Icmp => 1,
            IpProtocol::Tcp => 6,
            IpProtocol::Udp => 17,
            IpProtocol::Icmpv6 => 58,
            IpProtocol::Unknown(other) => other,
        }
    }
}

/// What the forwarding core needs to know about an inner packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerIp {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
}

/// Checks an inner IPv4 or IPv6 packet that fills `buf` exactly and returns its addresses.
///
/// # Errors
///
/// Any [`WireError`]: the version decides which header is checked; IPv4 also needs a valid
/// header checksum, since the receiving stack would drop it anyway and counting it here names
/// the reason.
pub fn parse_inner(buf: &[u8]) -> Result<InnerIp, WireError> {
    let first = *buf.first().ok_or(WireError::Truncated)?;
    match first >> 4 {
        4 => {
            let packet = Packet::new_checked(buf)?;
            if !packet.verify_checksum() {
                return Err(WireError::BadChecksum);
            }
            Ok(InnerIp {
                src: packet.src_addr().into(),
                dst: packet.dst_addr().into(),
            })
        }
        6 => {
            let packet = V6Packet::new_checked(buf)?;
            Ok(InnerIp {
                src: packet.src_addr().into(),
                dst: packet.dst_addr().into(),
            })
        }
        _ => Err(WireError::BadVersion),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;
    use rstest::rstest;

    use super::*;

    /// UDP 10.244.1.2:40000 -> 10.244.2.2:5201, payload "fustian capture!", TTL 64, read from a
    /// TUN device the kernel routed it into (Linux 6.18), 44 bytes.
    pub(crate) const UDP_V4: [u8; 44] = [
        0x45, 0x00, 0x00, 0x2c, 0x92, 0xde, 0x40, 0x00, 0x40, 0x11, 0x8e, 0xf7, 0x0a, 0xf4, 0x01,
        0x02, 0x0a, 0xf4, 0x02, 0x02, 0x9c, 0x40, 0x14, 0x51, 0x00, 0x18, 0xd6, 0x6b, 0x66, 0x75,
        0x73, 0x74, 0x69, 0x61, 0x6e, 0x20, 0x63, 0x61, 0x70, 0x74, 0x75, 0x72, 0x65, 0x21,
    ];

    /// UDP [fd00::1]:40000 -> [fd00::2]:5201, payload "fustian v6", hop limit 64, read from the
    /// same TUN device, 58 bytes.
    pub(crate) const UDP_V6: [u8; 58] = [
        0x60, 0x01, 0x6e, 0x77, 0x00, 0x12, 0x11, 0x40, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x9c, 0x40, 0x14, 0x51, 0x00,
        0x12, 0x2d, 0x92, 0x66, 0x75, 0x73, 0x74, 0x69, 0x61, 0x6e, 0x20, 0x76, 0x36,
    ];

    #[test]
    fn parse_inner_reads_both_families() {
        let v4 = parse_inner(&UDP_V4).expect("valid");
        assert_eq!(v4.dst, IpAddr::from([10, 244, 2, 2]));
        let v6 = parse_inner(&UDP_V6).expect("valid");
        assert_eq!(v6.src, "fd00::1".parse::<IpAddr>().expect("literal"));
    }

    #[rstest]
    #[case::empty(0, WireError::Truncated)]
    #[case::one_byte(1, WireError::Truncated)]
    #[case::nineteen(19, WireError::Truncated)]
    #[case::header_only(20, WireError::Truncated)]
    #[case::one_short(43, WireError::Truncated)]
    fn ipv4_truncations(#[case] len: usize, #[case] err: WireError) {
        assert_eq!(parse_inner(&UDP_V4[..len]), Err(err));
    }

    #[rstest]
    #[case::thirty_nine(39)]
    #[case::header_only(40)]
    #[case::one_short(57)]
    fn ipv6_truncations(#[case] len: usize) {
        assert_eq!(parse_inner(&UDP_V6[..len]), Err(WireError::Truncated));
    }

    #[test]
    fn trailing_bytes_are_bad_length() {
        let mut long = UDP_V4.to_vec();
        long.push(0);
        assert_eq!(parse_inner(&long), Err(WireError::BadLength));
        let mut long6 = UDP_V6.to_vec();
        long6.push(0);
        assert_eq!(parse_inner(&long6), Err(WireError::BadLength));
    }

    #[test]
    fn bad_version_header_len_and_checksum() {
        let mut p = UDP_V4;
        p[0] = 0x55;
        assert_eq!(parse_inner(&p), Err(WireError::BadVersion));
        p[0] = 0x44;
        assert_eq!(parse_inner(&p), Err(WireError::BadHeaderLen));
        let mut q = UDP_V4;
        q[8] = 65; // TTL changed without fixing the checksum
        assert_eq!(parse_inner(&q), Err(WireError::BadChecksum));
        let mut r = UDP_V4;
        r[2..4].copy_from_slice(&10u16.to_be_bytes()); // total length below the header
        assert_eq!(parse_inner(&r), Err(WireError::BadLength));
    }

    proptest! {
        #[test]
        fn parse_inner_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_inner(&data);
        }
    }
}
