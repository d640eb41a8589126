//! Cutting a TUN super-packet into segments that fit the overlay MTU (the userspace half of
//! TSO/USO), without copying the payload.
//!
//! The kernel hands a TUN device with TSO/USO enabled one packet of up to 64 KiB with a
//! [`VnetHdr`] naming the segment size. [`split`] writes, for each segment, the encapsulation
//! prefix and that segment's own IP and TCP/UDP headers into a header area (one
//! [`HEADER_STRIDE`]-byte slot per segment) and returns where each segment's payload lies in
//! the original packet. The caller sends header slot `i` followed by payload `i` as one
//! datagram, gathering both with an iovec, so the payload is read by the kernel straight from
//! the buffer TUN filled.
//!
//! The headers of each segment are derived by [`Cut::fill`] (shared with `wire::tcp`, which
//! cuts a kernel peer's super-frames when the device has no offloads).
//! Each TCP segment gets the original headers with its own sequence number, IPv4 total length
//! and identification (incremented per segment, as the kernel's TSO does), IPv6 payload
//! length, FIN and PSH only on the last segment and CWR only on the first (`tcp_gso_segment`),
//! and complete IPv4 header and TCP checksums. A UDP segment gets its own UDP length and
//! checksum (`__udp_gso_segment`). The header length hint in the virtio header is not trusted:
//! the headers are measured from the packet, as wireguard-go also does.

use super::vnet::{F_NEEDS_CSUM, Gso, VnetHdr};
use crate::metrics::DropReason;
use crate::wire::WireError;
use crate::wire::ip::{fold, ones_sum};
use crate::wire::tcp::Cut;

/// Bytes of header room per segment: the encapsulation prefix (VXLAN: 22) and IPv4 with
/// options (60) or IPv6 (40), plus TCP with options (60).
pub const HEADER_STRIDE: usize = 160;
/// The most segments one super-packet is cut into (64 KiB at an MSS of 256).
pub const MAX_SEGMENTS: usize = 256;

pub use crate::wire::Segment;

fn bad() -> DropReason {
    DropReason::TunMalformed(WireError::BadFlags)
}

/// Completes the checksum of a single packet read with `F_NEEDS_CSUM`: the field at
/// `csum_start + csum_offset` holds the pseudo-header sum, so the checksum of everything from
/// `csum_start` on, complemented, is the full one (a UDP result of 0 is sent as 0xffff).
///
/// # Errors
///
/// `tun_bad_flags` when the offsets do not lie inside the packet.
pub fn complete_checksum(hdr: &VnetHdr, packet: &mut [u8]) -> Result<(), DropReason> {
    if hdr.flags & F_NEEDS_CSUM == 0 {
        return Ok(());
    }
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if at + 2 > packet.len() || start > packet.len() {
        return Err(bad());
    }
    let mut sum = !fold(ones_sum(&packet[start..]));
    if sum == 0 && hdr.csum_offset == 6 {
        sum = 0xffff;
    }
    packet[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// The layout of a super-packet: IP header length, transport header length, protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// IP version, 4 or 6.
    pub version: u8,
    /// IP header bytes.
    pub ip_len: usize,
    /// TCP or UDP header bytes.
    pub l4_len: usize,
    /// True for TCP, false for UDP.
    pub tcp: bool,
}

impl Layout {
    /// Measures `packet` for the GSO kind `gso`.
    ///
    /// # Errors
    ///
    /// `tun_bad_flags` for a kind that does not match the packet (wrong version or protocol,
    /// IPv6 extension headers, fragments); `tun_truncated`/`tun_bad_header_len` for headers
    /// that do not fit.
    pub fn of(gso: Gso, packet: &[u8]) -> Result<Self, DropReason> {
        let version = packet
            .first()
            .ok_or(DropReason::TunMalformed(WireError::Truncated))?
            >> 4;
        let (ip_len, proto) = match version {
            4 if packet.len() >= 20 => {
                let ihl = usize::from(packet[0] & 0x0f) * 4;
                if ihl < 20 || ihl > packet.len() {
                    return Err(DropReason::TunMalformed(WireError::BadHeaderLen));
                }
                if packet[6] & 0x3f != 0 || packet[7] != 0 {
                    return Err(bad());
                }
                (ihl, packet[9])
            }
            6 if packet.len() >= 40 => (40, packet[6]),
            4 | 6 => return Err(DropReason::TunMalformed(WireError::Truncated)),
            _ => return Err(DropReason::TunMalformed(WireError::BadVersion)),
        };
        let tcp = match (gso, version, proto) {
            (Gso::TcpV4, 4, 6) | (Gso::TcpV6, 6, 6) => true,
            (Gso::UdpL4, _, 17) => false,
            _ => return Err(bad()),
        };
        let l4 = &packet[ip_len..];
        let l4_len = if tcp {
            let off = usize::from(
                *l4.get(12)
                    .ok_or(DropReason::TunMalformed(WireError::Truncated))?
                    >> 4,
            ) * 4;
            if off < 20 || off > l4.len() {
                return Err(DropReason::TunMalformed(WireError::BadHeaderLen));
            }
            off
        } else {
            if l4.len() < 8 {
                return Err(DropReason::TunMalformed(WireError::Truncated));
            }
            8
        };
        Ok(Self {
            version,
            ip_len,
            l4_len,
            tcp,
        })
    }

    /// Returns the IP and transport header bytes together.
    pub const fn headers(&self) -> usize {
        self.ip_len + self.l4_len
    }
}

/// Cuts the super-packet `packet` described by `hdr` into segments whose IP packets are at
/// most `max_len` bytes, writing `prefix` and the segment's headers into slot `i` of `headers`
/// and the segment's place into `segs[i]`. Returns the number of segments.
///
/// # Errors
///
/// A [`DropReason`] for a header or packet that cannot be cut (see [`Layout::of`]), a zero
/// segment size, more segments than `segs` or `headers` hold, or a `max_len` that leaves no
/// room for payload.
pub fn split(
    hdr: &VnetHdr,
    packet: &[u8],
    max_len: usize,
    prefix: &[u8],
    headers: &mut [u8],
    segs: &mut [Segment],
) -> Result<usize, DropReason> {
    let gso = hdr.gso().map_err(DropReason::TunMalformed)?;
    let layout = Layout::of(gso, packet)?;
    let hl = layout.headers();
    let header_len = prefix.len() + hl;
    if header_len > HEADER_STRIDE || max_len <= hl || hdr.gso_size == 0 {
        return Err(bad());
    }
    let mss = usize::from(hdr.gso_size).min(max_len - hl);
    let payload_len = packet.len() - hl;
    let count = payload_len.div_ceil(mss).max(1);
    if count > segs.len() || count * HEADER_STRIDE > headers.len() {
        return Err(bad());
    }
    let cut = Cut {
        version: layout.version,
        ip_len: layout.ip_len,
        headers: hl,
        tcp: layout.tcp,
        mss,
        count,
    };
    for (i, seg) in segs.iter_mut().enumerate().take(count) {
        let payload_start = hl + i * mss;
        let payload = &packet[payload_start..packet.len().min(payload_start + mss)];
        let slot = &mut headers[i * HEADER_STRIDE..i * HEADER_STRIDE + header_len];
        let (pre, h) = slot.split_at_mut(prefix.len());
        pre.copy_from_slice(prefix);
        h.copy_from_slice(&packet[..hl]);
        cut.fill(h, i, payload).map_err(|_| bad())?;
        *seg = Segment {
            header_len,
            payload_start,
            payload_len: payload.len(),
        };
    }
    Ok(count)
}

#[cfg(test)]
pub(crate) mod tests {
    use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
    use proptest::prelude::*;

    use super::super::vnet::{GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4};
    use super::*;
    use crate::wire::ip::pseudo_sum;

    /// Builds a TCP or UDP super-packet as the kernel hands it to TUN: full-length IP header,
    /// transport checksum holding the pseudo-header sum.
    pub(crate) fn super_packet(
        v6: bool,
        tcp: bool,
        payload: &[u8],
        fin: bool,
        options: bool,
    ) -> Vec<u8> {
        let b = if v6 {
            PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], 64)
        } else {
            PacketBuilder::ipv4([10, 244, 1, 2], [10, 244, 2, 2], 64)
        };
        let mut out = Vec::new();
        if tcp {
            let mut b = b.tcp(40000, 5201, 1_000_000, 512).ack(77).psh().cwr();
            if fin {
                b = b.fin();
            }
            if options {
                b = b
                    .options_raw(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])
                    .expect("12 bytes");
            }
            b.write(&mut out, payload).expect("build");
        } else {
            b.udp(40000, 5201).write(&mut out, payload).expect("build");
        }
        out
    }

    pub(crate) fn assemble(
        packet: &[u8],
        headers: &[u8],
        segs: &[Segment],
        prefix_len: usize,
    ) -> Vec<Vec<u8>> {
        segs.iter()
            .enumerate()
            .map(|(i, s)| {
                let mut v = headers
                    [i * HEADER_STRIDE + prefix_len..i * HEADER_STRIDE + s.header_len]
                    .to_vec();
                v.extend_from_slice(&packet[s.payload_start..s.payload_start + s.payload_len]);
                v
            })
            .collect()
    }

    fn hdr(v6: bool, tcp: bool, gso_size: u16) -> VnetHdr {
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: match (tcp, v6) {
                (true, false) => GSO_TCPV4,
                (true, true) => GSO_TCPV6,
                (false, _) => GSO_UDP_L4,
            },
            hdr_len: 0,
            gso_size,
            csum_start: 0,
            csum_offset: 0,
        }
    }

    proptest! {
        #[test]
        fn segments_are_valid_and_carry_the_stream(
            len in 1usize..20_000, gso_size in 200u16..1500, max_len in 300usize..1500,
            v6 in any::<bool>(), tcp in any::<bool>(), fin in any::<bool>(),
            options in any::<bool>(), prefix_len in 0usize..23,
        ) {
            let payload: Vec<u8> = (0..len).map(|i| u8::try_from(i * 13 % 251).expect("small")).collect();
            let packet = super_packet(v6, tcp, &payload, fin, options);
            let prefix = vec![0xa5u8; prefix_len];
            let mut headers = vec![0u8; MAX_SEGMENTS * HEADER_STRIDE];
            let mut segs = [Segment::default(); MAX_SEGMENTS];
            let n = split(&hdr(v6, tcp, gso_size), &packet, max_len, &prefix, &mut headers, &mut segs)
                .expect("splits");
            for (i, s) in segs[..n].iter().enumerate() {
                prop_assert!(headers[i * HEADER_STRIDE..i * HEADER_STRIDE + prefix_len].iter().all(|&b| b == 0xa5));
                prop_assert!(s.len() - prefix_len <= max_len);
                prop_assert!(s.payload_len <= usize::from(gso_size));
                if i + 1 < n {
                    prop_assert_eq!(s.len(), segs[0].len(), "only the last segment is shorter");
                }
            }
            let mut stream = Vec::new();
            let mut seq = 1_000_000u32;
            for (i, seg) in assemble(&packet, &headers, &segs[..n], prefix_len).iter().enumerate() {
                let p = SlicedPacket::from_ip(seg).expect("parses");
                let (src, dst): (Vec<u8>, Vec<u8>) = match &p.net {
                    Some(NetSlice::Ipv4(ip)) => {
                        prop_assert_eq!(usize::from(ip.header().total_len()), seg.len());
                        prop_assert_eq!(crate::wire::ip::checksum(&seg[..20]), 0);
                        prop_assert_eq!(ip.header().identification(), u16::try_from(i).expect("small"));
                        (ip.header().source().to_vec(), ip.header().destination().to_vec())
                    }
                    Some(NetSlice::Ipv6(ip)) => {
                        prop_assert_eq!(usize::from(ip.header().payload_length()) + 40, seg.len());
                        (ip.header().source().to_vec(), ip.header().destination().to_vec())
                    }
                    _ => return Err(TestCaseError::fail("not IP")),
                };
                let last = i + 1 == n;
                match &p.transport {
                    Some(TransportSlice::Tcp(t)) => {
                        let sum = if v6 {
                            t.calc_checksum_ipv6(src[..].try_into().expect("16"), dst[..].try_into().expect("16"))
                        } else {
                            t.calc_checksum_ipv4(src[..].try_into().expect("4"), dst[..].try_into().expect("4"))
                        }.expect("checksum");
                        prop_assert_eq!(sum, t.checksum());
                        prop_assert_eq!(t.sequence_number(), seq);
                        seq = seq.wrapping_add(u32::try_from(t.payload().len()).expect("small"));
                        prop_assert_eq!(t.fin(), fin && last);
                        prop_assert_eq!(t.psh(), last);
                        prop_assert_eq!(t.cwr(), i == 0);
                        prop_assert_eq!(t.options().len(), if options { 12 } else { 0 });
                        stream.extend_from_slice(t.payload());
                    }
                    Some(TransportSlice::Udp(u)) => {
                        prop_assert_eq!(usize::from(u.length()), u.slice().len());
                        let sum = if v6 {
                            u.to_header().calc_checksum_ipv6_raw(src[..].try_into().expect("16"), dst[..].try_into().expect("16"), u.payload())
                        } else {
                            u.to_header().calc_checksum_ipv4_raw(src[..].try_into().expect("4"), dst[..].try_into().expect("4"), u.payload())
                        }.expect("checksum");
                        prop_assert_eq!(sum, u.checksum());
                        stream.extend_from_slice(u.payload());
                    }
                    _ => return Err(TestCaseError::fail("no transport")),
                }
            }
            prop_assert_eq!(stream, payload);
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..400),
                        vnet in any::<[u8; 10]>(), max_len in 0usize..2000) {
            let h = VnetHdr::parse(&vnet).expect("10 bytes");
            let mut headers = vec![0u8; 8 * HEADER_STRIDE];
            let mut segs = [Segment::default(); 8];
            let _ = split(&h, &data, max_len, &[0u8; 22], &mut headers, &mut segs);
            let mut copy = data.clone();
            let _ = complete_checksum(&h, &mut copy);
        }
    }

    #[test]
    fn completes_a_partial_checksum() {
        let mut full = super_packet(false, true, b"hello, partial checksum", false, false);
        let want = u16::from_be_bytes([full[36], full[37]]);
        let pseudo = fold(pseudo_sum(&full, 4, 6, full.len() - 20));
        full[36..38].copy_from_slice(&pseudo.to_be_bytes());
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..VnetHdr::NONE
        };
        complete_checksum(&h, &mut full).expect("inside");
        assert_eq!(u16::from_be_bytes([full[36], full[37]]), want);
        let outside = VnetHdr {
            csum_start: 60,
            ..h
        };
        assert!(complete_checksum(&outside, &mut full).is_err());
    }

    #[test]
    fn refuses_mismatched_kinds() {
        let udp = super_packet(false, false, &[0u8; 3000], false, false);
        let mut headers = vec![0u8; 8 * HEADER_STRIDE];
        let mut segs = [Segment::default(); 8];
        assert!(
            split(
                &hdr(false, true, 1000),
                &udp,
                1400,
                &[],
                &mut headers,
                &mut segs
            )
            .is_err()
        );
        let tcp = super_packet(false, true, &[0u8; 30_000], false, false);
        // 30 000 bytes at 1000 a segment need more than 8 slots.
        assert!(
            split(
                &hdr(false, true, 1000),
                &tcp,
                1400,
                &[],
                &mut headers,
                &mut segs
            )
            .is_err()
        );
        assert!(
            split(
                &hdr(false, true, 0),
                &tcp,
                1400,
                &[],
                &mut headers,
                &mut segs
            )
            .is_err()
        );
    }
}
