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

/// The most IPv6 extension headers a received packet may carry ([`ipv6_ext_headers_ok`]).
pub const MAX_EXT_HEADERS: usize = 8;

/// Returns whether the extension headers of the IPv6 packet `packet` (whose length fields were
/// checked) may be passed on: the chain ends inside the packet after at most
/// [`MAX_EXT_HEADERS`] headers, a hop-by-hop header comes only first and holds no jumbo payload
/// option (RFC 2675; the length check already refuses a real jumbogram), and no routing header
/// has segments left (RFC 8200 section 4.4: the packet would be forwarded on to the next
/// address in it, one the receive checks never saw). Walks only what it must: a packet whose
/// next header is TCP, UDP or ICMPv6 costs one comparison. Never panics on any input.
pub fn ipv6_ext_headers_ok(packet: &[u8]) -> bool {
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const FRAGMENT: u8 = 44;
    const AH: u8 = 51;
    const DEST_OPTS: u8 = 60;
    const MOBILITY: u8 = 135;
    const HIP: u8 = 139;
    const SHIM6: u8 = 140;
    const JUMBO: u8 = 0xC2;
    let Some(&first) = packet.get(6) else {
        return false;
    };
    let mut next = first;
    let mut at = 40usize;
    for index in 0..=MAX_EXT_HEADERS {
        let len = match next {
            HOP_BY_HOP | ROUTING | DEST_OPTS | MOBILITY | HIP | SHIM6 => {
                let Some(&ext_len) = packet.get(at + 1) else {
                    return false;
                };
                (usize::from(ext_len) + 1) * 8
            }
            FRAGMENT => 8,
            AH => {
                let Some(&ext_len) = packet.get(at + 1) else {
                    return false;
                };
                (usize::from(ext_len) + 2) * 4
            }
            // An upper-layer header, or no next header (59).
            _ => return true,
        };
        if index == MAX_EXT_HEADERS {
            return false;
        }
        let Some(header) = packet.get(at..at.saturating_add(len)) else {
            return false;
        };
        match next {
            HOP_BY_HOP if index != 0 => return false,
            HOP_BY_HOP if has_option(&header[2..], JUMBO) => return false,
            ROUTING if header.get(3).is_some_and(|&left| left != 0) => return false,
            // A later fragment holds no headers to look at.
            FRAGMENT if u16::from_be_bytes([header[2], header[3]]) & 0xfff8 != 0 => return true,
            _ => {}
        }
        next = header[0];
        at += len;
    }
    false
}

/// The upper-layer protocol of the IPv6 packet `packet` and the offset of its header, behind
/// at most [`MAX_EXT_HEADERS`] extension headers; `None` when the chain runs past the packet or
/// past the limit, or when the packet is a later fragment (its upper-layer header is in the
/// first one). Never panics on any input.
pub fn ipv6_upper_layer(packet: &[u8]) -> Option<(u8, usize)> {
    let mut next = *packet.get(6)?;
    let mut at = 40usize;
    for _ in 0..=MAX_EXT_HEADERS {
        let len = match next {
            0 | 43 | 60 | 135 | 139 | 140 => (usize::from(*packet.get(at + 1)?) + 1) * 8,
            44 => {
                let off = packet.get(at + 2..at + 4)?;
                if u16::from_be_bytes([off[0], off[1]]) & 0xfff8 != 0 {
                    return None;
                }
                8
            }
            51 => (usize::from(*packet.get(at + 1)?) + 2) * 4,
            upper => return (at <= packet.len()).then_some((upper, at)),
        };
        next = *packet.get(at)?;
        at = at.checked_add(len)?;
    }
    None
}

/// Returns whether the options of the IPv4 packet `packet` (whose header length was checked)
/// may be passed on: the list parses (every option but end-of-list and no-operation has a
/// length of at least 2 that fits the header), and no loose or strict source route (RFC 791:
/// types 0x83, 0x89) has addresses left, since the receiving kernel would forward the packet
/// on to the next one, an address the receive checks never saw (the IPv4 twin of an IPv6
/// routing header with segments left). A header without options costs one comparison. Never
/// panics on any input.
pub fn ipv4_options_ok(packet: &[u8]) -> bool {
    const EOL: u8 = 0;
    const NOP: u8 = 1;
    const LSRR: u8 = 0x83;
    const SSRR: u8 = 0x89;
    let Some(&first) = packet.first() else {
        return false;
    };
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl <= 20 {
        return true;
    }
    let Some(options) = packet.get(20..ihl) else {
        return false;
    };
    let mut at = 0;
    while let Some(&kind) = options.get(at) {
        match kind {
            EOL => return true,
            NOP => at += 1,
            _ => {
                let Some(&len) = options.get(at + 1) else {
                    return false;
                };
                let len = usize::from(len);
                if len < 2 || at + len > options.len() {
                    return false;
                }
                // The pointer counts from the option's first byte, starting at 4; a route
                // is used up when it points past the option.
                if matches!(kind, LSRR | SSRR) && (len < 3 || usize::from(options[at + 2]) <= len) {
                    return false;
                }
                at += len;
            }
        }
    }
    true
}

/// Returns whether the TLV-encoded options `options` (of a hop-by-hop or destination options
/// header) hold one of type `kind`; a malformed list counts as holding it.
fn has_option(options: &[u8], kind: u8) -> bool {
    let mut at = 0;
    while let Some(&t) = options.get(at) {
        if t == kind {
            return true;
        }
        if t == 0 {
            // Pad1: one byte, no length.
            at += 1;
            continue;
        }
        let Some(&len) = options.get(at + 1) else {
            return true;
        };
        at += 2 + usize::from(len);
    }
    at != options.len()
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

        #[test]
        fn ipv6_upper_layer_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Some((_, at)) = ipv6_upper_layer(&data) {
                prop_assert!(at <= data.len());
            }
        }

        /// The walk finds the upper layer behind any chain within the limit that
        /// `ipv6_ext_headers_ok` passes.
        #[test]
        fn ipv6_upper_layer_behind_chains(count in 0..=MAX_EXT_HEADERS + 1) {
            let packet = with_ext_headers(&vec![60; count], 17, |_| {});
            let found = ipv6_upper_layer(&packet);
            if count <= MAX_EXT_HEADERS {
                prop_assert_eq!(found, Some((17, 40 + 8 * count)));
            } else {
                prop_assert_eq!(found, None);
            }
        }

        #[test]
        fn ipv4_options_never_panic(data in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = ipv4_options_ok(&data);
        }

        /// Options made only of no-operations and record routes (any fill) always pass; one
        /// loose or strict source route with its pointer inside the option never does.
        #[test]
        fn ipv4_source_routes_refused(
            nops in 0usize..8,
            route in prop_oneof![Just(0x83u8), Just(0x89u8)],
            addrs in 1u8..4,
            used in 0u8..4,
        ) {
            let len = 3 + 4 * addrs;
            let ptr = 4 + 4 * used.min(addrs);
            let mut opts = vec![1u8; nops];
            opts.extend([route, len, ptr]);
            opts.extend(std::iter::repeat_n(7u8, usize::from(4 * addrs)));
            let packet = with_ipv4_options(&opts);
            prop_assert_eq!(ipv4_options_ok(&packet), used >= addrs, "{:?}", opts);
            let mut record = vec![1u8; nops];
            record.extend([7u8, len, ptr]);
            record.extend(std::iter::repeat_n(7u8, usize::from(4 * addrs)));
            prop_assert!(ipv4_options_ok(&with_ipv4_options(&record)));
        }

        #[test]
        fn ipv6_ext_headers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = ipv6_ext_headers_ok(&data);
        }

        /// Any chain of well-formed option headers within the limit passes; one header more
        /// does not.
        #[test]
        fn ipv6_ext_header_chains_up_to_the_limit(count in 0..=MAX_EXT_HEADERS + 1) {
            let packet = with_ext_headers(&vec![60; count], 17, |_| {});
            prop_assert_eq!(ipv6_ext_headers_ok(&packet), count <= MAX_EXT_HEADERS);
        }
    }

    /// The UDP_V6 packet with 8-byte extension headers of the kinds `kinds` in front of its
    /// UDP header (the last one's next header `upper`), each edited by `edit(header)`.
    fn with_ext_headers(kinds: &[u8], upper: u8, edit: impl Fn(&mut [u8])) -> Vec<u8> {
        let mut p = UDP_V6[..40].to_vec();
        p[6] = kinds.first().copied().unwrap_or(upper);
        for (i, _) in kinds.iter().enumerate() {
            let mut h = [0u8; 8];
            h[0] = kinds.get(i + 1).copied().unwrap_or(upper);
            // Options: one PadN covering the six bytes after the two-byte header.
            h[2] = 1;
            h[3] = 4;
            edit(&mut h);
            p.extend_from_slice(&h);
        }
        p.extend_from_slice(&UDP_V6[40..]);
        let payload = u16::try_from(p.len() - 40).expect("small");
        p[4..6].copy_from_slice(&payload.to_be_bytes());
        p
    }

    /// An IPv4 header carrying `options` (padded with end-of-list to a multiple of 4).
    fn with_ipv4_options(options: &[u8]) -> Vec<u8> {
        let mut p = UDP_V4[..20].to_vec();
        p.extend_from_slice(options);
        while !p.len().is_multiple_of(4) {
            p.push(0);
        }
        p[0] = 0x40 | u8::try_from(p.len() / 4).expect("short");
        p.extend_from_slice(&UDP_V4[20..]);
        p
    }

    #[test]
    fn ipv4_options_judged() {
        assert!(ipv4_options_ok(&UDP_V4));
        // Router alert (RFC 2113), then end of list.
        assert!(ipv4_options_ok(&with_ipv4_options(&[0x94, 4, 0, 0])));
        // LSRR with one address left; the same route used up.
        assert!(!ipv4_options_ok(&with_ipv4_options(&[
            1, 0x83, 7, 4, 192, 0, 2, 66
        ])));
        assert!(ipv4_options_ok(&with_ipv4_options(&[
            1, 0x83, 7, 8, 192, 0, 2, 66
        ])));
        // SSRR whose pointer is below 4, and a route too short to hold one.
        assert!(!ipv4_options_ok(&with_ipv4_options(&[
            0x89, 7, 3, 192, 0, 2, 66
        ])));
        assert!(!ipv4_options_ok(&with_ipv4_options(&[0x89, 2])));
        // Lengths below 2 or past the header.
        assert!(!ipv4_options_ok(&with_ipv4_options(&[7, 1])));
        assert!(!ipv4_options_ok(&with_ipv4_options(&[7, 40, 4, 0])));
        // Nothing after end of list is read.
        assert!(ipv4_options_ok(&with_ipv4_options(&[0, 0x83, 7, 4])));
    }

    #[test]
    fn ipv6_ext_headers_judged() {
        // Plain UDP, and ordinary chains.
        assert!(ipv6_ext_headers_ok(&UDP_V6));
        assert!(ipv6_ext_headers_ok(&with_ext_headers(&[0, 60], 17, |_| {})));
        // A routing header whose segments are used up is fine; one with segments left is not.
        assert!(ipv6_ext_headers_ok(&with_ext_headers(&[43], 17, |h| {
            h[2] = 4;
            h[3] = 0;
        })));
        assert!(!ipv6_ext_headers_ok(&with_ext_headers(&[43], 17, |h| {
            h[2] = 4;
            h[3] = 1;
        })));
        // ESP (50), no next header (59) and unknown upper layers end the walk and pass.
        assert!(ipv6_ext_headers_ok(&with_ext_headers(&[60], 50, |_| {})));
        assert!(ipv6_ext_headers_ok(&with_ext_headers(&[0, 60], 59, |_| {})));
        assert!(ipv6_ext_headers_ok(&with_ext_headers(&[60], 253, |_| {})));
        // AH counts its length in 4-byte words, less 2: length 0 is these 8 bytes; length 1
        // (12 bytes) would put the next header inside the UDP header, still a walk that ends.
        assert!(ipv6_ext_headers_ok(&with_ext_headers(&[51], 17, |h| h
            [1] =
            0)));
        // Hop-by-hop only first.
        assert!(!ipv6_ext_headers_ok(&with_ext_headers(
            &[60, 0],
            17,
            |_| {}
        )));
        // A jumbo payload option.
        assert!(!ipv6_ext_headers_ok(&with_ext_headers(&[0], 17, |h| {
            h[2] = 0xC2;
            h[3] = 4;
        })));
        // Options that run past their header.
        assert!(!ipv6_ext_headers_ok(&with_ext_headers(&[0], 17, |h| {
            h[3] = 9;
        })));
        // A header that runs past the packet.
        let mut long = with_ext_headers(&[60], 17, |h| h[1] = 200);
        long.truncate(60);
        assert!(!ipv6_ext_headers_ok(&long));
        // A later fragment ends the walk.
        assert!(ipv6_ext_headers_ok(&with_ext_headers(&[44, 43], 17, |h| {
            if h[0] == 43 {
                h[2] = 0;
                h[3] = 8;
            }
        })));
    }
}
