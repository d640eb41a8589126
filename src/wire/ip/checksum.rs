//! Internet checksums (RFC 1071): the one's-complement sum, the TCP/UDP pseudo-header sum,
//! and the completion of a checksum a local sender left partial.

use super::{HEADER_LEN, V6_HEADER_LEN};

/// Completes a TCP or UDP checksum that was left partial, and returns true if it did.
///
/// A Linux sender that offloads checksumming (`CHECKSUM_PARTIAL`) stores only the folded
/// pseudo-header sum in the checksum field and leaves the rest to the device
/// (`tcp_v4_send_check`, `udp4_hwcsum`). Between network namespaces a veth pair hands such a
/// packet on as it is, so a kernel `vxlan` peer on the same host delivers inner packets whose
/// checksum field holds exactly that value; a receiving kernel stack would trust it, but once
/// the bytes went through a userspace socket the receiving TUN device must see a complete
/// checksum. Only a field equal to the partial value is rewritten: a complete checksum or a
/// corrupted one is left for the receiving stack to judge. Fragments and packets whose
/// transport header does not fit are left alone.
pub fn complete_partial_checksum(packet: &mut [u8]) -> bool {
    let Some((proto, l4, pseudo)) = pseudo_header_sum(packet) else {
        return false;
    };
    let check_at = match proto {
        6 => l4 + 16,
        17 => l4 + 6,
        _ => return false,
    };
    let Some(field) = packet.get(check_at..check_at + 2) else {
        return false;
    };
    let current = u16::from_be_bytes([field[0], field[1]]);
    if current != fold(pseudo) {
        return false;
    }
    packet[check_at..check_at + 2].fill(0);
    let mut sum = pseudo;
    sum += u64::from(!checksum(&packet[l4..]));
    let mut full = !fold(sum);
    if proto == 17 && full == 0 {
        // RFC 768: a computed UDP checksum of zero is sent as all ones.
        full = 0xffff;
    }
    packet[check_at..check_at + 2].copy_from_slice(&full.to_be_bytes());
    true
}

/// Returns the protocol, the transport header offset and the (unfolded) pseudo-header sum of
/// an unfragmented IPv4 or IPv6 TCP/UDP packet (RFC 793 section 3.1, RFC 768, RFC 8200
/// section 8.1).
fn pseudo_header_sum(packet: &[u8]) -> Option<(u8, usize, u64)> {
    match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            if packet.len() < ihl.max(HEADER_LEN) || packet[6] & 0x3f != 0 || packet[7] != 0 {
                return None;
            }
            let proto = packet[9];
            Some((proto, ihl, pseudo_sum(packet, 4, proto, packet.len() - ihl)))
        }
        6 => {
            if packet.len() < V6_HEADER_LEN {
                return None;
            }
            let proto = packet[6];
            Some((
                proto,
                V6_HEADER_LEN,
                pseudo_sum(packet, 6, proto, packet.len() - V6_HEADER_LEN),
            ))
        }
        _ => None,
    }
}

/// Returns the unfolded pseudo-header sum (RFC 793 section 3.1, RFC 768, RFC 8200 section
/// 8.1) of the IP packet whose header starts `ip` (at least 20 bytes for version 4, 40 for
/// version 6), for a transport segment of `l4_len` bytes of protocol `proto`.
pub fn pseudo_sum(ip: &[u8], version: u8, proto: u8, l4_len: usize) -> u64 {
    let addrs = if version == 4 {
        &ip[12..20]
    } else {
        &ip[8..40]
    };
    ones_sum(addrs) + u64::from(proto) + l4_len as u64
}

/// Folds a one's-complement accumulator (from [`ones_sum`]) into 16 bits, not complemented.
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    u16::try_from(sum).unwrap_or(0xffff)
}

/// Returns the one's-complement sum of `data` read as big-endian 16-bit words (a trailing odd
/// byte is padded with zero, RFC 1071), folded to 16 bits. Sums of several slices may be added
/// (and folded again, [`fold`]) when every slice but the last has an even length.
///
/// The bytes are summed as native-endian 32-bit words into eight 64-bit lanes (which cannot
/// overflow below 16 GiB of input and which the compiler turns into wide vector adds), and only
/// the folded result is byte-swapped: the one's-complement sum commutes with swapping the bytes
/// of every word (RFC 1071, section 2(B)), so nothing is swapped per word (`ones_sum` bench in
/// `benches/wire.rs`).
///
/// On x86-64 CPUs with AVX2 the same loop runs compiled for AVX2, chosen at run time
/// ([`crate::sys::lane_sum`]); [`ones_sum_portable`] is the baseline build of it.
#[inline]
pub fn ones_sum(data: &[u8]) -> u64 {
    finish(crate::sys::lane_sum(data))
}

/// [`ones_sum`] as the baseline target builds it, whatever the CPU offers (for comparison in
/// benches and tests).
#[doc(hidden)]
pub fn ones_sum_portable(data: &[u8]) -> u64 {
    finish(lane_sum(data))
}

/// Byte-swaps the folded native-endian sum into network order.
#[inline]
fn finish(sum: u64) -> u64 {
    let folded = fold(sum);
    u64::from(if cfg!(target_endian = "little") {
        folded.swap_bytes()
    } else {
        folded
    })
}

/// Sums `data` as native-endian 32-bit words into eight 64-bit lanes (a trailing half word and
/// odd byte padded as RFC 1071 says), unfolded. Inlined into each caller so that a caller
/// compiled for wider vectors gets them.
#[inline(always)]
pub(crate) fn lane_sum(data: &[u8]) -> u64 {
    let mut wide = data.chunks_exact(32);
    let mut lanes = [0u64; 8];
    for block in &mut wide {
        for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(4)) {
            *lane += u64::from(u32::from_ne_bytes([word[0], word[1], word[2], word[3]]));
        }
    }
    let mut sum: u64 = lanes.iter().sum();
    let rest = wide.remainder();
    let mut words = rest.chunks_exact(2);
    for pair in &mut words {
        sum += u64::from(u16::from_ne_bytes([pair[0], pair[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    sum
}

/// Computes the RFC 1071 Internet checksum of `data` (the complemented one's-complement sum).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(ones_sum(data))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::wire::ip::tests::{UDP_V4, UDP_V6};
    use crate::wire::ip::{IpProtocol, Packet, Repr};

    #[test]
    fn completes_a_partial_udp_checksum() {
        // The captured packet has a complete checksum (0xd66b): left alone.
        let mut p = UDP_V4;
        assert!(!complete_partial_checksum(&mut p));
        assert_eq!(p, UDP_V4);
        // Put the pseudo-header sum in the field, as a CHECKSUM_PARTIAL sender does.
        let (_, _, pseudo) = pseudo_header_sum(&p).expect("udp");
        p[26..28].copy_from_slice(&fold(pseudo).to_be_bytes());
        assert!(complete_partial_checksum(&mut p));
        assert_eq!(p, UDP_V4);
        let mut q = UDP_V6;
        let (_, _, pseudo) = pseudo_header_sum(&q).expect("udp");
        q[46..48].copy_from_slice(&fold(pseudo).to_be_bytes());
        assert!(complete_partial_checksum(&mut q));
        assert_eq!(q, UDP_V6);
        // A corrupted checksum is not "fixed".
        let mut r = UDP_V4;
        r[27] ^= 1;
        assert!(!complete_partial_checksum(&mut r));
    }

    /// RFC 1071 byte-pair reference for [`checksum`].
    fn reference_checksum(data: &[u8]) -> u16 {
        let mut sum: u64 = 0;
        for (i, b) in data.iter().enumerate() {
            sum += if i % 2 == 0 {
                u64::from(*b) << 8
            } else {
                u64::from(*b)
            };
        }
        !fold(sum)
    }

    proptest! {
        #[test]
        fn checksum_matches_reference(data in proptest::collection::vec(any::<u8>(), 0..3000),
                                      split in 0usize..1500) {
            prop_assert_eq!(checksum(&data), reference_checksum(&data));
            prop_assert_eq!(fold(ones_sum(&data)), !reference_checksum(&data));
            // The run-time chosen build (AVX2 where the CPU has it) and the baseline agree.
            prop_assert_eq!(ones_sum(&data), ones_sum_portable(&data));
            // Sums of an even-length prefix and the rest add up to the whole.
            let cut = (split.min(data.len())) & !1;
            let parts = ones_sum(&data[..cut]) + ones_sum(&data[cut..]);
            prop_assert_eq!(!fold(parts), checksum(&data));
        }

        #[test]
        fn partial_checksums_complete_to_the_full_one(payload in proptest::collection::vec(any::<u8>(), 8..300),
                                                      tcp in any::<bool>()) {
            let repr = Repr { src_addr: [10, 244, 1, 2].into(), dst_addr: [10, 244, 2, 2].into(),
                              protocol: if tcp { IpProtocol::Tcp } else { IpProtocol::Udp },
                              ttl: 64, payload_len: payload.len().max(20) };
            let mut p = vec![0u8; 20 + repr.payload_len];
            p[20..20 + payload.len()].copy_from_slice(&payload);
            repr.emit(&mut Packet::new_unchecked(&mut p[..])).expect("fits");
            let at = if tcp { 36 } else { 26 };
            // The full checksum, computed independently over pseudo-header and segment.
            p[at..at + 2].fill(0);
            let mut pseudo = vec![];
            pseudo.extend_from_slice(&p[12..20]);
            pseudo.extend_from_slice(&[0, if tcp { 6 } else { 17 }]);
            pseudo.extend_from_slice(&u16::try_from(p.len() - 20).expect("small").to_be_bytes());
            pseudo.extend_from_slice(&p[20..]);
            let mut full = checksum(&pseudo);
            if !tcp && full == 0 { full = 0xffff; }
            let (_, _, ps) = pseudo_header_sum(&p).expect("tcp/udp");
            p[at..at + 2].copy_from_slice(&fold(ps).to_be_bytes());
            prop_assert!(complete_partial_checksum(&mut p));
            prop_assert_eq!(u16::from_be_bytes([p[at], p[at + 1]]), full);
            prop_assert!(!complete_partial_checksum(&mut p) || full == fold(ps));
        }

        #[test]
        fn checksum_completion_never_panics(mut data in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = complete_partial_checksum(&mut data);
        }
    }
}
