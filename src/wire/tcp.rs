//! Splitting one oversized inner TCP packet into segments that fit the TUN MTU.
//!
//! A kernel `vxlan` peer on the same host (its node joined to ours by a veth pair or a bridge)
//! hands its TSO super-packets to the underlay unsegmented: veth keeps the GSO metadata, and
//! the receiving kernel gives a plain UDP socket a `SKB_GSO_UDP_TUNNEL` skb as one datagram of
//! up to 64 KiB (`udp_unexpected_gso`, net/ipv4/udp.c, lets tunnel GSO through). A real NIC
//! would have cut it into MSS-sized frames. [`segment`] does that cut in userspace: every
//! segment gets the headers of the original, its own sequence number, IP length and id, FIN
//! and PSH only on the last segment, CWR only on the first (as the kernel's `tcp_gso_segment`
//! does), and freshly computed IP and TCP checksums, since a super-packet's TCP checksum is
//! only the partial pseudo-header sum.
//!
//! Fresh checksums would also make corrupted bytes look good, so [`segment`] first checks the
//! packet's own: a complete checksum must verify over the whole packet; a checksum field that
//! holds the partial pseudo-header sum (`CHECKSUM_PARTIAL`, what a sender offloading its
//! checksum leaves) is cut as such, as the kernel's `tcp_gso_segment` would; anything else is
//! refused (`BadChecksum`) rather than given valid checksums.

use super::WireError;
use super::ip::{HEADER_LEN, V6_HEADER_LEN, fold, ones_sum, pseudo_sum};

const TCP_MIN_LEN: usize = 20;
const FIN: u8 = 0x01;
const PSH: u8 = 0x08;
const CWR: u8 = 0x80;

/// How a super-packet is cut: its layout and the payload bytes per segment. The one place
/// where a segment's headers are derived from the original's, for [`segment`] here and for
/// the TUN offload split (`crate::offload::split`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// IP version, 4 or 6.
    pub version: u8,
    /// IP header bytes.
    pub ip_len: usize,
    /// IP and transport header bytes together.
    pub headers: usize,
    /// TCP (else UDP: each segment is a datagram with its own length and checksum).
    pub tcp: bool,
    /// Payload bytes per segment (the last may carry fewer).
    pub mss: usize,
    /// Number of segments.
    pub count: usize,
}

impl Cut {
    /// Turns `h`, a copy of the original's IP and transport headers (`self.headers` bytes),
    /// into the headers of segment `i`, which carries `payload`: IPv4 total length, id (the
    /// original's plus `i`) and header checksum, or IPv6 payload length; TCP sequence number
    /// (plus `i * mss`), FIN and PSH only on the last segment, CWR only on the first, and the
    /// checksum; UDP length and checksum (zero sent as all ones).
    ///
    /// # Errors
    ///
    /// `BadLength` when a length does not fit its field.
    pub fn fill(&self, h: &mut [u8], i: usize, payload: &[u8]) -> Result<(), WireError> {
        let (ip_len, hl) = (self.ip_len, self.headers);
        let seg_len = hl + payload.len();
        let l4_len = seg_len - ip_len;
        if self.version == 4 {
            let total = u16::try_from(seg_len).map_err(|_| WireError::BadLength)?;
            h[2..4].copy_from_slice(&total.to_be_bytes());
            let id = u16::from_be_bytes([h[4], h[5]]);
            let seg_id = id.wrapping_add(u16::try_from(i & 0xffff).unwrap_or(0));
            h[4..6].copy_from_slice(&seg_id.to_be_bytes());
            h[10..12].fill(0);
            let sum = !fold(ones_sum(&h[..ip_len]));
            h[10..12].copy_from_slice(&sum.to_be_bytes());
        } else {
            let plen = u16::try_from(l4_len).map_err(|_| WireError::BadLength)?;
            h[4..6].copy_from_slice(&plen.to_be_bytes());
        }
        let check_at = if self.tcp {
            let seq =
                u32::from_be_bytes([h[ip_len + 4], h[ip_len + 5], h[ip_len + 6], h[ip_len + 7]]);
            let offset = u32::try_from(i * self.mss).unwrap_or(u32::MAX);
            h[ip_len + 4..ip_len + 8].copy_from_slice(&seq.wrapping_add(offset).to_be_bytes());
            let mut f = h[ip_len + 13];
            if i + 1 != self.count {
                f &= !(FIN | PSH);
            }
            if i != 0 {
                f &= !CWR;
            }
            h[ip_len + 13] = f;
            ip_len + 16
        } else {
            let ulen = u16::try_from(l4_len).map_err(|_| WireError::BadLength)?;
            h[ip_len + 4..ip_len + 6].copy_from_slice(&ulen.to_be_bytes());
            ip_len + 6
        };
        h[check_at..check_at + 2].fill(0);
        let proto = if self.tcp { 6 } else { 17 };
        let sum = pseudo_sum(h, self.version, proto, l4_len)
            + ones_sum(&h[ip_len..hl])
            + ones_sum(payload);
        let mut check = !fold(sum);
        if !self.tcp && check == 0 {
            check = 0xffff;
        }
        h[check_at..check_at + 2].copy_from_slice(&check.to_be_bytes());
        Ok(())
    }
}

/// Cuts the IPv4 or IPv6 TCP packet `packet` into segments of at most `max_len` bytes, builds
/// each in `scratch` (which must hold `max_len` bytes) and passes it to `emit`. Returns the
/// number of segments. The packet's TCP checksum must be complete and valid, or hold the
/// partial pseudo-header sum ([`checksum_state`]); nothing is emitted otherwise.
///
/// # Errors
///
/// `BadVersion` for anything but TCP directly over IPv4/IPv6 (extension headers, fragments,
/// other protocols), `BadHeaderLen` for a TCP header that does not fit, `Truncated` when
/// `scratch` or `max_len` cannot hold the headers and at least one payload byte,
/// `BadChecksum` when the TCP checksum is neither complete and valid nor partial.
pub fn segment(
    packet: &[u8],
    max_len: usize,
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, WireError> {
    let cut = plan(packet, max_len.min(scratch.len()))?;
    let headers = cut.headers;
    let payload = &packet[headers..];
    for (i, chunk) in payload
        .chunks(cut.mss)
        .chain((payload.is_empty()).then_some(&[][..]))
        .enumerate()
    {
        let seg = &mut scratch[..headers + chunk.len()];
        let (h, body) = seg.split_at_mut(headers);
        h.copy_from_slice(&packet[..headers]);
        body.copy_from_slice(chunk);
        cut.fill(h, i, chunk)?;
        emit(seg);
    }
    Ok(cut.count)
}

/// Cuts `packet` as [`segment`] does, without copying its payload: segment `i`'s headers go
/// into `headers[i * stride..]` and `segs[i]` says where they end and where its payload lies
/// in `packet`, so each segment can be written by gathering the two. Returns the number of
/// segments.
///
/// # Errors
///
/// Those of [`segment`], and `Truncated` when `segs` or `headers` cannot hold every segment.
pub fn cut(
    packet: &[u8],
    max_len: usize,
    headers: &mut [u8],
    stride: usize,
    segs: &mut [super::Segment],
) -> Result<usize, WireError> {
    let cut = plan(packet, max_len)?;
    let hl = cut.headers;
    if cut.count > segs.len() || hl > stride || cut.count.saturating_mul(stride) > headers.len() {
        return Err(WireError::Truncated);
    }
    for (i, seg) in segs.iter_mut().enumerate().take(cut.count) {
        let payload_start = hl + i * cut.mss;
        let payload_start = payload_start.min(packet.len());
        let payload = &packet[payload_start..packet.len().min(payload_start + cut.mss)];
        let h = &mut headers[i * stride..i * stride + hl];
        h.copy_from_slice(&packet[..hl]);
        cut.fill(h, i, payload)?;
        *seg = super::Segment {
            header_len: hl,
            payload_start,
            payload_len: payload.len(),
        };
    }
    Ok(cut.count)
}

/// Checks `packet` for [`segment`] and [`cut`] and returns how it is cut into segments of at
/// most `max_len` bytes.
fn plan(packet: &[u8], max_len: usize) -> Result<Cut, WireError> {
    let version = packet.first().ok_or(WireError::Truncated)? >> 4;
    let ip_len = match version {
        4 if packet.len() >= HEADER_LEN => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            let fragment = packet[6] & 0x3f != 0 || packet[7] != 0;
            if packet[9] != 6 || fragment {
                return Err(WireError::BadVersion);
            }
            if ihl < HEADER_LEN {
                return Err(WireError::BadHeaderLen);
            }
            ihl
        }
        6 if packet.len() >= V6_HEADER_LEN => {
            if packet[6] != 6 {
                return Err(WireError::BadVersion);
            }
            V6_HEADER_LEN
        }
        _ => return Err(WireError::BadVersion),
    };
    let tcp = packet.get(ip_len..).ok_or(WireError::Truncated)?;
    if tcp.len() < TCP_MIN_LEN {
        return Err(WireError::BadHeaderLen);
    }
    let tcp_len = usize::from(tcp[12] >> 4) * 4;
    if tcp_len < TCP_MIN_LEN || tcp.len() < tcp_len {
        return Err(WireError::BadHeaderLen);
    }
    if checksum_state(packet, version, ip_len) == Checksum::Bad {
        return Err(WireError::BadChecksum);
    }
    let headers = ip_len + tcp_len;
    if max_len <= headers {
        return Err(WireError::Truncated);
    }
    let mss = max_len - headers;
    let count = (packet.len() - headers).div_ceil(mss).max(1);
    Ok(Cut {
        version,
        ip_len,
        headers,
        tcp: true,
        mss,
        count,
    })
}

/// What the TCP checksum field of a packet holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// A complete checksum that verifies over the pseudo-header and the whole segment.
    Valid,
    /// The folded pseudo-header sum alone (`CHECKSUM_PARTIAL`: the sender left the rest to
    /// the device, `tcp_v4_send_check`, `tcp_v6_send_check`).
    Partial,
    /// Neither: the packet was corrupted on the way, or built wrong.
    Bad,
}

/// Returns what the checksum of the TCP segment after the `ip_len`-byte IPv`version` header of
/// `packet` holds (RFC 793 section 3.1, RFC 8200 section 8.1). A valid one is told first: a
/// field holding the partial sum that also verifies over the whole packet counts as valid. The
/// caller has checked that `packet` holds the IP header and the checksum field.
pub fn checksum_state(packet: &[u8], version: u8, ip_len: usize) -> Checksum {
    if cfg!(fuzzing) {
        return Checksum::Valid;
    }
    let l4 = &packet[ip_len..];
    let pseudo = pseudo_sum(packet, version, 6, l4.len());
    if fold(pseudo + ones_sum(l4)) == 0xffff {
        return Checksum::Valid;
    }
    if u16::from_be_bytes([l4[16], l4[17]]) == fold(pseudo) {
        return Checksum::Partial;
    }
    Checksum::Bad
}

#[cfg(test)]
mod tests {
    use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
    use proptest::prelude::*;

    use super::*;
    use crate::wire::ip::checksum;

    fn super_packet(v6: bool, payload: &[u8], fin: bool, options: bool) -> Vec<u8> {
        let b = if v6 {
            PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], 64)
        } else {
            PacketBuilder::ipv4([10, 244, 2, 2], [10, 244, 1, 2], 64)
        };
        let mut b = b.tcp(5201, 40000, 1_000_000, 512).ack(77).psh().cwr();
        if fin {
            b = b.fin();
        }
        if options {
            b = b
                .options_raw(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])
                .expect("12 bytes");
        }
        let mut out = Vec::with_capacity(b.size(payload.len()));
        b.write(&mut out, payload).expect("build");
        out
    }

    fn split(packet: &[u8], max_len: usize) -> Vec<Vec<u8>> {
        let mut scratch = vec![0u8; max_len];
        let mut out = Vec::new();
        segment(packet, max_len, &mut scratch, |s| out.push(s.to_vec())).expect("segments");
        out
    }

    proptest! {
        #[test]
        fn segments_reassemble_with_valid_checksums(
            len in 0usize..6000, max_len in 100usize..1500, v6 in any::<bool>(),
            fin in any::<bool>(), options in any::<bool>(),
        ) {
            let payload: Vec<u8> = (0..len).map(|i| u8::try_from(i * 7 % 251).expect("below 251")).collect();
            let original = super_packet(v6, &payload, fin, options);
            let segs = split(&original, max_len);
            let mut stream = Vec::new();
            let mut expected_seq = 1_000_000u32;
            for (i, s) in segs.iter().enumerate() {
                prop_assert!(s.len() <= max_len);
                let p = SlicedPacket::from_ip(s).expect("parses");
                match &p.net {
                    Some(NetSlice::Ipv4(ip)) => {
                        prop_assert_eq!(usize::from(ip.header().total_len()), s.len());
                        prop_assert_eq!(checksum(&s[..20]), 0);
                    }
                    Some(NetSlice::Ipv6(ip)) => {
                        prop_assert_eq!(usize::from(ip.header().payload_length()) + 40, s.len());
                    }
                    _ => prop_assert!(false, "not IP"),
                }
                let Some(TransportSlice::Tcp(t)) = &p.transport else {
                    return Err(TestCaseError::fail("not TCP"));
                };
                let sum = match &p.net {
                    Some(NetSlice::Ipv4(ip)) => t.calc_checksum_ipv4(ip.header().source(), ip.header().destination()),
                    Some(NetSlice::Ipv6(ip)) => t.calc_checksum_ipv6(ip.header().source(), ip.header().destination()),
                    _ => unreachable!(),
                }.expect("checksum");
                prop_assert_eq!(sum, t.checksum());
                prop_assert_eq!(t.sequence_number(), expected_seq);
                expected_seq = expected_seq.wrapping_add(u32::try_from(t.payload().len()).expect("small"));
                let last = i + 1 == segs.len();
                prop_assert_eq!(t.fin(), fin && last);
                prop_assert_eq!(t.psh(), last);
                prop_assert_eq!(t.cwr(), i == 0);
                prop_assert!(t.ack());
                prop_assert_eq!(t.options().len(), if options { 12 } else { 0 });
                stream.extend_from_slice(t.payload());
            }
            prop_assert_eq!(stream, payload);
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..200), max_len in 0usize..300) {
            let mut scratch = vec![0u8; 300];
            let _ = segment(&data, max_len, &mut scratch, |_| {});
        }
    }

    /// Replaces the TCP checksum of `packet` with the partial pseudo-header sum, as a sender
    /// offloading its checksum leaves it.
    fn make_partial(packet: &mut [u8], v6: bool) {
        let (version, ip_len) = if v6 { (6, 40) } else { (4, 20) };
        let partial = fold(pseudo_sum(packet, version, 6, packet.len() - ip_len));
        packet[ip_len + 16..ip_len + 18].copy_from_slice(&partial.to_be_bytes());
    }

    proptest! {
        #[test]
        fn corrupted_packets_are_never_cut(
            len in 1usize..6000, max_len in 100usize..1500, v6 in any::<bool>(),
            partial in any::<bool>(), at in any::<prop::sample::Index>(), flip in 1u8..=255,
        ) {
            let payload: Vec<u8> = (0..len).map(|i| u8::try_from(i % 251).expect("below 251")).collect();
            let mut packet = super_packet(v6, &payload, false, false);
            if partial {
                make_partial(&mut packet, v6);
            }
            let hl = if v6 { 60 } else { 40 };
            // One payload byte changed on the way, after the checksum was computed.
            let i = hl + at.index(len);
            packet[i] ^= flip;
            let mut scratch = vec![0u8; max_len];
            let mut emitted = 0;
            let r = segment(&packet, max_len, &mut scratch, |_| emitted += 1);
            if partial {
                // A partial checksum covers no payload: the packet is cut as it is, and the
                // receiver's stack is no worse off than with the kernel's own GSO.
                prop_assert!(r.is_ok());
            } else {
                prop_assert_eq!(r, Err(WireError::BadChecksum));
                prop_assert_eq!(emitted, 0);
            }
        }
    }

    #[test]
    fn checksum_states() {
        for v6 in [false, true] {
            let ip_len = if v6 { 40 } else { 20 };
            let version = if v6 { 6 } else { 4 };
            let mut p = super_packet(v6, &[1, 2, 3, 4, 5], false, false);
            assert_eq!(checksum_state(&p, version, ip_len), Checksum::Valid);
            make_partial(&mut p, v6);
            assert_eq!(checksum_state(&p, version, ip_len), Checksum::Partial);
            p[ip_len + 16] ^= 1;
            assert_eq!(checksum_state(&p, version, ip_len), Checksum::Bad);
        }
    }

    #[test]
    fn cuts_a_partial_checksum_packet_into_valid_segments() {
        for v6 in [false, true] {
            let payload: Vec<u8> = (0..4000u32)
                .map(|i| u8::try_from(i % 253).expect("below 253"))
                .collect();
            let mut packet = super_packet(v6, &payload, false, false);
            make_partial(&mut packet, v6);
            let segs = split(&packet, 1400);
            assert!(segs.len() > 2);
            let mut stream = Vec::new();
            for s in &segs {
                let p = SlicedPacket::from_ip(s).expect("parses");
                let Some(TransportSlice::Tcp(t)) = &p.transport else {
                    panic!("not TCP")
                };
                let want = match &p.net {
                    Some(NetSlice::Ipv4(ip)) => {
                        t.calc_checksum_ipv4(ip.header().source(), ip.header().destination())
                    }
                    Some(NetSlice::Ipv6(ip)) => {
                        t.calc_checksum_ipv6(ip.header().source(), ip.header().destination())
                    }
                    _ => panic!("not IP"),
                }
                .expect("checksum");
                assert_eq!(t.checksum(), want);
                stream.extend_from_slice(t.payload());
            }
            assert_eq!(stream, payload);
        }
    }

    #[test]
    fn refuses_what_it_cannot_cut() {
        let mut scratch = [0u8; 100];
        let udp = {
            let b = PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(1, 2);
            let mut out = Vec::new();
            b.write(&mut out, &[0u8; 300]).expect("build");
            out
        };
        assert_eq!(
            segment(&udp, 100, &mut scratch, |_| {}),
            Err(WireError::BadVersion)
        );
        let tcp = super_packet(false, &[0u8; 300], false, false);
        assert_eq!(
            segment(&tcp, 40, &mut scratch, |_| {}),
            Err(WireError::Truncated)
        );
        assert_eq!(
            segment(&[], 100, &mut scratch, |_| {}),
            Err(WireError::Truncated)
        );
        let mut corrupted = super_packet(false, &[0u8; 300], false, false);
        corrupted[100] = 1;
        assert_eq!(
            segment(&corrupted, 100, &mut scratch, |_| {}),
            Err(WireError::BadChecksum)
        );
    }
}
