//! Merging received segments back into super-packets for one TUN write each (the userspace
//! half of GRO).
//!
//! A batch of datagrams from the underlay (a `UDP_GRO` read is already up to 64 KiB of
//! segments of one flow) turns into inner packets; [`Coalescer::push`] merges consecutive
//! segments of one TCP flow, or consecutive datagrams of one UDP flow when the device takes
//! UDP super-packets (USO, Linux 6.2), into super-packets and [`Coalescer::flush`] writes
//! each with a [`VnetHdr`] saying `GSO_TCPV4`/`GSO_TCPV6`/`GSO_UDP_L4`, so the kernel sees one
//! 64 KiB packet where it would have seen forty.
//!
//! The rules follow the kernel's `tcp_gro_receive`, made stricter where a userspace merge
//! cannot check as much:
//!
//! - only plain segments merge: IPv4 without options or fragmentation, IPv6 without extension
//!   headers, TCP with ACK (and PSH) set and nothing else, at least one payload byte;
//! - the segment's own TCP checksum must verify first. A merged packet goes to the kernel with
//!   `NEEDS_CSUM`, which makes the kernel compute a fresh checksum, so a segment corrupted on
//!   the way would otherwise be delivered as good; one that fails is written alone, unchanged,
//!   for the receiving stack to drop. This holds for the datagrams of a `UDP_GRO` read too: the
//!   outer checksum the kernel verified was computed by the peer over the inner bytes as it
//!   had them;
//! - a segment joins only the open packet of its own flow, only at the next sequence number,
//!   with the same acknowledgement number, TCP options, header lengths, TOS/traffic class, TTL
//!   and DF bit, and no larger than the first segment; a shorter segment or one with PSH closes
//!   the packet (nothing may follow a short segment in a GSO packet);
//! - anything else of that flow (FIN, SYN, RST, a gap) first flushes the open packet, so a
//!   flow's packets reach TUN in the order they arrived. Other flows are not held back.
//!
//! UDP datagrams merge under the same rules where they apply (checksum verified, and a zero
//! "no checksum" IPv4 datagram never merges; same addresses, ports, TOS, TTL and DF; no larger
//! than the first; a shorter one closes the packet), at most [`MAX_UDP_SEGMENTS`] to a packet,
//! and over IPv4 only when each datagram's identification is the one before plus one, which
//! is what the kernel gives the datagrams it cuts the packet into. So the receiving host
//! segments the packet back into exactly the datagrams that arrived, byte for byte (a socket
//! with `UDP_GRO` gets it whole); a datagram that breaks a rule is written as it is, after the
//! open packet of its flow.
//!
//! At most [`MAX_OPEN`] packets are open at once; one more flow flushes the oldest. A packet
//! made of a single segment is written exactly as it arrived.

use super::vnet::{F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VnetHdr};
use crate::wire::ip::{checksum, fold, ones_sum, pseudo_sum};

/// Packets open for merging at once.
pub const MAX_OPEN: usize = 8;
/// The largest merged IP packet (the IPv4 total length field's limit).
pub const MAX_MERGED: usize = 65_535;

/// The most datagrams in one UDP super-packet: Linux refuses a TUN write of more than its
/// `UDP_MAX_SEGMENTS` (64 in older kernels, 128 in newer ones).
pub const MAX_UDP_SEGMENTS: usize = 64;

const ACK: u8 = 0x10;
const PSH: u8 = 0x08;
const TCP: u8 = 6;
const UDP: u8 = 17;

/// A TCP segment that may be merged.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    v6: bool,
    udp: bool,
    ip_len: usize,
    hl: usize,
    payload: usize,
    /// TCP: the sequence number; UDP over IPv4: the identification; UDP over IPv6: 0.
    seq: u32,
    psh: bool,
}

/// Where the headers of a packet end: `v6`, the IP header's length, and the IP and transport
/// headers' length.
#[derive(Debug, Clone, Copy)]
struct Layout {
    v6: bool,
    udp: bool,
    ip_len: usize,
    hl: usize,
}

/// Returns the layout of a TCP or UDP packet over IPv4 (unfragmented) or IPv6 (no extension
/// headers) whose transport header fits, else `None`.
fn layout(p: &[u8]) -> Option<Layout> {
    let (v6, ip_len, proto) = match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if ihl < 20 || p[6] & 0x3f != 0 || p[7] != 0 {
                return None;
            }
            (false, ihl, p[9])
        }
        6 if p.len() >= 40 => (true, 40, p[6]),
        _ => return None,
    };
    let hl = match proto {
        TCP => {
            let doff = usize::from(*p.get(ip_len + 12)? >> 4) * 4;
            if doff < 20 {
                return None;
            }
            ip_len + doff
        }
        UDP => ip_len + 8,
        _ => return None,
    };
    (hl <= p.len()).then_some(Layout {
        v6,
        udp: proto == UDP,
        ip_len,
        hl,
    })
}

/// [`layout`] of a TCP packet: its version, IP header length and header length.
fn tcp_layout(p: &[u8]) -> Option<(bool, usize, usize)> {
    layout(p).filter(|l| !l.udp).map(|l| (l.v6, l.ip_len, l.hl))
}

/// Returns the packet as a merge candidate: a plain TCP segment, or a UDP datagram when `udp`,
/// whose checksum verifies.
fn candidate(p: &[u8], udp: bool) -> Option<Candidate> {
    let Layout {
        v6,
        udp: is_udp,
        ip_len,
        hl,
    } = layout(p)?;
    if !v6 && (ip_len != 20 || usize::from(u16::from_be_bytes([p[2], p[3]])) != p.len()) {
        return None;
    }
    if v6 && usize::from(u16::from_be_bytes([p[4], p[5]])) + 40 != p.len() {
        return None;
    }
    // A header checksum that fails must reach the receiving stack as it is: the merged
    // packet's header, and those the kernel cuts from it, get fresh ones.
    if p.len() == hl || p.len() > MAX_MERGED || (!v6 && checksum(&p[..20]) != 0) {
        return None;
    }
    let t = &p[ip_len..];
    let (proto, seq, psh) = if is_udp {
        // The length field must say what the IP header says; a zero checksum (IPv4's "none")
        // cannot be verified, so such a datagram is written as it came.
        if !udp || usize::from(u16::from_be_bytes([t[4], t[5]])) != t.len() || t[6..8] == [0, 0] {
            return None;
        }
        let id = if v6 {
            0
        } else {
            u16::from_be_bytes([p[4], p[5]])
        };
        (UDP, u32::from(id), false)
    } else {
        let flags = t[13];
        if flags & !(ACK | PSH) != 0 || flags & ACK == 0 {
            return None;
        }
        let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
        (TCP, seq, flags & PSH != 0)
    };
    let sum = pseudo_sum(p, if v6 { 6 } else { 4 }, proto, t.len()) + ones_sum(t);
    if fold(sum) != 0xffff {
        return None;
    }
    Some(Candidate {
        v6,
        udp: is_udp,
        ip_len,
        hl,
        payload: p.len() - hl,
        seq,
        psh,
    })
}

/// True when `a` and `b` (both passed [`layout`]) carry the same protocol, addresses and
/// ports.
fn same_flow(a: &[u8], a_ip: usize, b: &[u8], b_ip: usize) -> bool {
    // The protocol (or next header) byte of a version's header.
    let protocol = |p: &[u8]| if p[0] >> 4 == 6 { p[6] } else { p[9] };
    let hosts = addresses(a);
    // Address lists of different lengths are of different versions.
    hosts.is_some()
        && hosts == addresses(b)
        && protocol(a) == protocol(b)
        && a[a_ip..a_ip + 4] == b[b_ip..b_ip + 4]
}

/// The source and destination addresses of an IPv4 or IPv6 packet (their lengths tell the
/// versions apart).
fn addresses(p: &[u8]) -> Option<&[u8]> {
    match p.first()? >> 4 {
        4 => p.get(12..20),
        6 => p.get(8..40),
        _ => None,
    }
}

/// What the segment after `c` must carry: TCP, the sequence number after its payload; UDP
/// over IPv4, the next identification.
fn next_seq(c: &Candidate) -> u32 {
    if c.udp {
        u32::from(u16::try_from(c.seq).unwrap_or(0).wrapping_add(1))
    } else {
        c.seq.wrapping_add(u32::try_from(c.payload).unwrap_or(0))
    }
}

/// One open super-packet.
#[derive(Debug)]
struct Open {
    buf: Box<[u8]>,
    len: usize,
    v6: bool,
    udp: bool,
    ip_len: usize,
    hl: usize,
    gso_size: usize,
    segments: usize,
    next_seq: u32,
    closed: bool,
    psh: bool,
}

impl Open {
    fn can_take(&self, p: &[u8], c: &Candidate) -> bool {
        let h = &self.buf[..self.hl];
        let ip = self.ip_len;
        !self.closed
            && c.v6 == self.v6
            && c.udp == self.udp
            && c.hl == self.hl
            && c.payload <= self.gso_size
            && self.len + c.payload <= MAX_MERGED
            // TOS/traffic class and flow label, TTL/hop limit, DF.
            && if self.v6 {
                h[..4] == p[..4] && h[7] == p[7]
            } else {
                h[1] == p[1] && h[8] == p[8] && h[6] == p[6]
            }
            && if self.udp {
                // The identification the kernel will give it when it cuts the packet.
                self.segments < MAX_UDP_SEGMENTS && (self.v6 || c.seq == self.next_seq)
            } else {
                // The next sequence number, the acknowledgement number, then the options.
                c.seq == self.next_seq
                    && h[ip + 8..ip + 12] == p[ip + 8..ip + 12]
                    && h[ip + 20..self.hl] == p[ip + 20..c.hl]
            }
    }

    /// Makes the headers describe the whole packet and returns its virtio header.
    fn finish(&mut self) -> VnetHdr {
        if self.segments == 1 {
            return VnetHdr::NONE;
        }
        let ip = self.ip_len;
        let len = self.len;
        let b = &mut self.buf;
        if self.v6 {
            let plen = u16::try_from(len - 40).unwrap_or(u16::MAX);
            b[4..6].copy_from_slice(&plen.to_be_bytes());
        } else {
            let total = u16::try_from(len).unwrap_or(u16::MAX);
            b[2..4].copy_from_slice(&total.to_be_bytes());
            b[10..12].fill(0);
            let sum = !fold(ones_sum(&b[..ip]));
            b[10..12].copy_from_slice(&sum.to_be_bytes());
        }
        let version = if self.v6 { 6 } else { 4 };
        let (proto, csum_offset, gso_type) = if self.udp {
            let ulen = u16::try_from(len - ip).unwrap_or(u16::MAX);
            b[ip + 4..ip + 6].copy_from_slice(&ulen.to_be_bytes());
            (UDP, 6, GSO_UDP_L4)
        } else {
            if self.psh {
                b[ip + 13] |= PSH;
            }
            (TCP, 16, if self.v6 { GSO_TCPV6 } else { GSO_TCPV4 })
        };
        let partial = fold(pseudo_sum(b, version, proto, len - ip));
        let field = ip + usize::from(csum_offset);
        b[field..field + 2].copy_from_slice(&partial.to_be_bytes());
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: u16::try_from(self.hl).unwrap_or(0),
            gso_size: u16::try_from(self.gso_size).unwrap_or(0),
            csum_start: u16::try_from(ip).unwrap_or(0),
            csum_offset,
        }
    }
}

/// What [`Coalescer`] did, for the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Packets written (merged or not).
    pub packets: u64,
    /// Bytes written (IP packet bytes, without the virtio header).
    pub bytes: u64,
    /// Of the packets, super-packets made of more than one segment.
    pub merged: u64,
    /// Segments that went into those super-packets.
    pub merged_segments: u64,
}

/// A packet the coalescer hands out, in the order the TUN device must get them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    /// The packet just passed to [`Coalescer::push`], as it is (no virtio-net offload).
    Input,
    /// The finished packet in buffer `k`: [`Coalescer::buffer`] returns it and its header until
    /// [`Coalescer::release`].
    Buffer(usize),
}

/// Buffers in the pool: room for [`MAX_OPEN`] open packets and as many finished ones waiting
/// to be written.
pub const POOL: usize = 2 * MAX_OPEN;

/// The merge state of one worker: a pool of [`POOL`] buffers of [`MAX_MERGED`] bytes,
/// allocated once. An open packet holds one; a finished packet keeps its buffer, untouched,
/// until the caller has written it and calls [`Coalescer::release`]. When no buffer is free, a
/// packet that would start a new merge is handed out as it is instead ([`Emit::Input`]), which
/// costs the merge, never the order.
#[derive(Debug)]
pub struct Coalescer {
    bufs: Vec<Open>,
    /// Headers of finished packets, by buffer.
    hdrs: Vec<VnetHdr>,
    /// Open packets, oldest first, as buffer indices.
    open: [usize; MAX_OPEN],
    active: usize,
    free: Vec<usize>,
    finished: Vec<usize>,
    /// Running totals since the last [`Coalescer::take_written`].
    written: Written,
    /// UDP datagrams merge too (the device takes `GSO_UDP_L4` writes).
    udp: bool,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new()
    }
}

impl Coalescer {
    /// Allocates the buffers.
    pub fn new() -> Self {
        Self {
            bufs: (0..POOL)
                .map(|_| Open {
                    buf: vec![0u8; MAX_MERGED].into_boxed_slice(),
                    len: 0,
                    v6: false,
                    udp: false,
                    ip_len: 0,
                    hl: 0,
                    gso_size: 0,
                    segments: 0,
                    next_seq: 0,
                    closed: false,
                    psh: false,
                })
                .collect(),
            hdrs: vec![VnetHdr::NONE; POOL],
            open: [0; MAX_OPEN],
            active: 0,
            free: (0..POOL).rev().collect(),
            finished: Vec::with_capacity(POOL),
            written: Written::default(),
            udp: false,
        }
    }

    /// Merges UDP datagrams too when `on`: only for a device that took USO, since the kernel
    /// accepts `GSO_UDP_L4` writes from the version that has it.
    #[must_use]
    pub const fn with_udp(mut self, on: bool) -> Self {
        self.udp = on;
        self
    }

    /// Returns and resets what was handed out since the last call.
    pub fn take_written(&mut self) -> Written {
        std::mem::take(&mut self.written)
    }

    /// Takes one inner packet; hands out through `out`, in order, whatever must be written now
    /// (a packet that cannot merge, or an open packet it ends). A TCP segment or UDP datagram
    /// merges only when its own checksum verifies.
    pub fn push(&mut self, packet: &[u8], out: &mut impl FnMut(Emit)) {
        let Some(c) = candidate(packet, self.udp) else {
            match layout(packet) {
                Some(l) => {
                    if let Some(k) = self.find(packet, l.ip_len) {
                        self.finish_one(k, out);
                    }
                }
                // A fragment, an IPv6 packet with extension headers, another protocol: its
                // ports are not known, so every open packet between the same addresses goes
                // first (a fragmented datagram must not overtake the ones before it).
                None => self.finish_hosts(packet, out),
            }
            self.count(packet.len(), 1);
            out(Emit::Input);
            return;
        };
        if let Some(k) = self.find(packet, c.ip_len) {
            let o = &mut self.bufs[self.open[k]];
            if o.can_take(packet, &c) {
                o.buf[o.len..o.len + c.payload].copy_from_slice(&packet[c.hl..]);
                o.len += c.payload;
                o.segments += 1;
                o.next_seq = next_seq(&c);
                if !c.udp {
                    // Keep the newest window.
                    o.buf[c.ip_len + 14..c.ip_len + 16]
                        .copy_from_slice(&packet[c.ip_len + 14..c.ip_len + 16]);
                }
                o.psh |= c.psh;
                o.closed = c.psh || c.payload < o.gso_size;
                return;
            }
            self.finish_one(k, out);
        }
        if self.active == MAX_OPEN {
            self.finish_one(0, out);
        }
        let Some(b) = self.free.pop() else {
            self.count(packet.len(), 1);
            out(Emit::Input);
            return;
        };
        let o = &mut self.bufs[b];
        o.buf[..packet.len()].copy_from_slice(packet);
        o.len = packet.len();
        o.v6 = c.v6;
        o.udp = c.udp;
        o.ip_len = c.ip_len;
        o.hl = c.hl;
        o.gso_size = c.payload;
        o.segments = 1;
        o.next_seq = next_seq(&c);
        o.closed = c.psh;
        o.psh = c.psh;
        self.open[self.active] = b;
        self.active += 1;
    }

    /// Finishes every open packet, oldest first, handing each out through `out`.
    pub fn flush(&mut self, out: &mut impl FnMut(Emit)) {
        while self.active > 0 {
            self.finish_one(0, out);
        }
    }

    /// Returns true when packets are waiting for [`Self::flush`].
    pub const fn pending(&self) -> bool {
        self.active > 0
    }

    /// Returns the finished packet in buffer `k` and its virtio-net header (empty for a buffer
    /// that holds none).
    pub fn buffer(&self, k: usize) -> (&VnetHdr, &[u8]) {
        match (self.hdrs.get(k), self.bufs.get(k)) {
            (Some(h), Some(o)) if self.finished.contains(&k) => (h, &o.buf[..o.len]),
            _ => (&VnetHdr::NONE, &[]),
        }
    }

    /// Gives the buffers of every finished packet back to the pool: the caller has written
    /// them.
    pub fn release(&mut self) {
        self.free.append(&mut self.finished);
    }

    fn find(&self, packet: &[u8], ip: usize) -> Option<usize> {
        self.open[..self.active].iter().position(|&b| {
            let o = &self.bufs[b];
            same_flow(&o.buf[..o.hl], o.ip_len, packet, ip)
        })
    }

    /// Finishes every open packet between the addresses of `packet`, oldest first.
    fn finish_hosts(&mut self, packet: &[u8], out: &mut impl FnMut(Emit)) {
        let Some(hosts) = addresses(packet) else {
            return;
        };
        let mut k = 0;
        while k < self.active {
            let o = &self.bufs[self.open[k]];
            if addresses(&o.buf[..o.hl]) == Some(hosts) {
                self.finish_one(k, out);
            } else {
                k += 1;
            }
        }
    }

    fn count(&mut self, len: usize, segments: usize) {
        self.written.packets += 1;
        self.written.bytes += len as u64;
        if segments > 1 {
            self.written.merged += 1;
            self.written.merged_segments += segments as u64;
        }
    }

    /// Finishes open packet `k` (an index into the open list) and hands it out.
    fn finish_one(&mut self, k: usize, out: &mut impl FnMut(Emit)) {
        let b = self.open[k];
        self.hdrs[b] = self.bufs[b].finish();
        let (len, segments) = (self.bufs[b].len, self.bufs[b].segments);
        self.count(len, segments);
        self.open[k..self.active].rotate_left(1);
        self.active -= 1;
        self.finished.push(b);
        out(Emit::Buffer(b));
    }
}

/// Returns the virtio header that lets a received TCP super-packet (a kernel `vxlan` peer on
/// the same host hands these over, see `wire::tcp`) go to TUN whole: its checksum field must
/// hold the partial pseudo-header sum, as such packets carry, and the kernel then cuts it into
/// segments of at most `max_len` bytes. `None` when it is not such a packet.
pub fn super_packet_header(packet: &[u8], max_len: usize) -> Option<VnetHdr> {
    let (v6, ip_len, hl) = tcp_layout(packet)?;
    let field = u16::from_be_bytes([packet[ip_len + 16], packet[ip_len + 17]]);
    let version = if v6 { 6 } else { 4 };
    if field != fold(pseudo_sum(packet, version, 6, packet.len() - ip_len)) || max_len <= hl {
        return None;
    }
    Some(VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
        hdr_len: u16::try_from(hl).ok()?,
        gso_size: u16::try_from(max_len - hl).ok()?,
        csum_start: u16::try_from(ip_len).ok()?,
        csum_offset: 16,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::split::tests::{assemble, super_packet};
    use super::super::split::{HEADER_STRIDE, MAX_SEGMENTS, Segment, split};
    use super::super::vnet::Gso;
    use super::*;

    /// Cuts a super-packet into wire segments (as the sending node does).
    fn segments(packet: &[u8], v6: bool, mss: u16, max_len: usize) -> Vec<Vec<u8>> {
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            gso_size: mss,
            ..VnetHdr::NONE
        };
        let mut headers = vec![0u8; MAX_SEGMENTS * HEADER_STRIDE];
        let mut segs = [Segment::default(); MAX_SEGMENTS];
        let n = split(&hdr, packet, max_len, &[], &mut headers, &mut segs).expect("splits");
        assemble(packet, &headers, &segs[..n], 0)
    }

    /// What the kernel does with a packet written to TUN: a GSO packet is cut again (its
    /// checksum completed), a plain one is taken as it is. Returns the wire packets.
    fn kernel_view(hdr: &VnetHdr, packet: &[u8]) -> Vec<Vec<u8>> {
        match hdr.gso().expect("valid type") {
            Gso::None => vec![packet.to_vec()],
            Gso::TcpV4 | Gso::TcpV6 => {
                assert_eq!(hdr.flags, F_NEEDS_CSUM);
                let ip = usize::from(hdr.csum_start);
                let field = u16::from_be_bytes([packet[ip + 16], packet[ip + 17]]);
                let v = packet[0] >> 4;
                assert_eq!(field, fold(pseudo_sum(packet, v, 6, packet.len() - ip)));
                segments(packet, v == 6, hdr.gso_size, 65_535)
            }
            Gso::UdpL4 => {
                assert_eq!(hdr.flags, F_NEEDS_CSUM);
                assert_eq!(hdr.csum_offset, 6);
                let ip = usize::from(hdr.csum_start);
                let field = u16::from_be_bytes([packet[ip + 6], packet[ip + 7]]);
                // The kernel adjusts that sum from the length field to each datagram's.
                let ulen = u16::from_be_bytes([packet[ip + 4], packet[ip + 5]]);
                assert_eq!(usize::from(ulen), packet.len() - ip);
                let v = packet[0] >> 4;
                assert_eq!(field, fold(pseudo_sum(packet, v, 17, packet.len() - ip)));
                assert!(
                    packet.len() - usize::from(hdr.hdr_len)
                        <= usize::from(hdr.gso_size) * MAX_UDP_SEGMENTS
                );
                udp_datagrams(packet, hdr.gso_size)
            }
        }
    }

    /// Cuts a UDP super-packet into datagrams of `gso_size` payload bytes as the kernel does
    /// (as the sending node does too): IPv4 identifications counting up from the packet's own.
    fn udp_datagrams(packet: &[u8], gso_size: u16) -> Vec<Vec<u8>> {
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_UDP_L4,
            gso_size,
            ..VnetHdr::NONE
        };
        let mut headers = vec![0u8; MAX_SEGMENTS * HEADER_STRIDE];
        let mut segs = [Segment::default(); MAX_SEGMENTS];
        let n = split(&hdr, packet, 65_535, &[], &mut headers, &mut segs).expect("splits");
        assemble(packet, &headers, &segs[..n], 0)
    }

    fn payload_of(p: &[u8]) -> &[u8] {
        let (_, _, hl) = tcp_layout(p).expect("tcp");
        &p[hl..]
    }

    /// Pushes `packets` one at a time, resolving what each hands out before releasing the
    /// buffers (as the datapath core does with every read), then flushes.
    fn run(c: &mut Coalescer, packets: &[Vec<u8>]) -> Vec<(VnetHdr, Vec<u8>)> {
        let mut out = Vec::new();
        let mut emits = Vec::new();
        let mut take = |c: &mut Coalescer, emits: &mut Vec<Emit>, input: &[u8]| {
            for e in emits.drain(..) {
                match e {
                    Emit::Input => out.push((VnetHdr::NONE, input.to_vec())),
                    Emit::Buffer(k) => {
                        let (h, p) = c.buffer(k);
                        assert!(!p.is_empty(), "a handed-out buffer holds its packet");
                        out.push((*h, p.to_vec()));
                    }
                }
            }
            c.release();
        };
        for p in packets {
            c.push(p, &mut |e| emits.push(e));
            take(c, &mut emits, p);
        }
        c.flush(&mut |e| emits.push(e));
        take(c, &mut emits, &[]);
        out
    }

    #[test]
    fn a_full_pool_writes_packets_unmerged_and_in_order() {
        // Finished packets hold their buffers until released: with none released, the pool
        // runs dry and further packets come out as they are, still in order.
        let flows: Vec<Vec<Vec<u8>>> = (0..POOL + 4)
            .map(|f| {
                let mut p = super_packet(
                    false,
                    true,
                    &[u8::try_from(f).expect("small"); 3000],
                    false,
                    false,
                );
                // Another source address per flow (`split` writes fresh checksums), no CWR.
                p[15] = u8::try_from(f).expect("small");
                p[33] &= !0x80;
                segments(&p, false, 1000, 1500)
            })
            .collect();
        let mut c = Coalescer::new();
        let mut emits = Vec::new();
        for f in &flows {
            for seg in f {
                c.push(seg, &mut |e| emits.push(e));
            }
        }
        c.flush(&mut |e| emits.push(e));
        let buffers = emits
            .iter()
            .filter(|e| matches!(e, Emit::Buffer(_)))
            .count();
        let inputs = emits.iter().filter(|e| **e == Emit::Input).count();
        assert_eq!(
            buffers, POOL,
            "every buffer used once, none reused before release"
        );
        assert!(inputs > 0);
        let mut seen = std::collections::HashSet::new();
        for e in &emits {
            if let Emit::Buffer(k) = e {
                assert!(seen.insert(*k), "buffer {k} handed out twice");
            }
        }
        c.release();
        assert_eq!(c.free.len(), POOL);
    }

    proptest! {
        #[test]
        fn split_then_merge_gives_the_stream_back(
            len in 1usize..60_000, mss in 500u16..1448, v6 in any::<bool>(),
            options in any::<bool>(), fin in any::<bool>(),
        ) {
            let payload: Vec<u8> = (0..len).map(|i| u8::try_from(i * 31 % 253).expect("small")).collect();
            let original = super_packet(v6, true, &payload, fin, options);
            let wire = segments(&original, v6, mss, 1500);
            let mut c = Coalescer::new();
            let written = run(&mut c, &wire);
            // The first segment carries CWR and goes alone (as in the kernel's GRO); without
            // FIN the rest merges into one packet.
            if !fin {
                prop_assert!(written.len() <= 2, "{} packets", written.len());
            }
            let mut stream = Vec::new();
            for (h, p) in &written {
                for seg in kernel_view(h, p) {
                    let (v, ip, _) = tcp_layout(&seg).expect("tcp");
                    let sum = pseudo_sum(&seg, if v { 6 } else { 4 }, 6, seg.len() - ip) + ones_sum(&seg[ip..]);
                    prop_assert_eq!(fold(sum), 0xffff, "valid TCP checksum");
                    if !v {
                        prop_assert_eq!(crate::wire::ip::checksum(&seg[..20]), 0);
                    }
                    stream.extend_from_slice(payload_of(&seg));
                }
            }
            prop_assert_eq!(stream, payload);
            let w = c.take_written();
            prop_assert_eq!(w.packets, written.len() as u64);
        }

        #[test]
        fn never_panics_and_keeps_every_byte(packets in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..200), 0..20)) {
            let mut c = Coalescer::new();
            let out = run(&mut c, &packets);
            // Garbage never merges: each packet comes out once, unchanged.
            prop_assert_eq!(out.len(), packets.len());
            for ((h, p), q) in out.iter().zip(&packets) {
                prop_assert_eq!(*h, VnetHdr::NONE);
                prop_assert_eq!(p, q);
            }
        }
    }

    #[test]
    fn keeps_flow_order_and_rejects_bad_checksums() {
        let a = super_packet(false, true, &[1u8; 5000], false, false);
        let mut b = super_packet(true, true, &[2u8; 5000], false, false);
        // Another flow: change the IPv6 source. No CWR, which would go alone.
        b[8] = 0x11;
        b[40 + 13] &= !0x80;
        let mut a = a;
        a[20 + 13] &= !0x80;
        let wa = segments(&a, false, 1000, 1500);
        let mut wb = segments(&b, true, 1000, 1500);
        // Corrupt one payload byte of flow b's third segment.
        let last = wb[2].len() - 1;
        wb[2][last] ^= 0xff;
        let mut mixed = Vec::new();
        for (x, y) in wa.iter().zip(&wb) {
            mixed.push(x.clone());
            mixed.push(y.clone());
        }
        let mut c = Coalescer::new();
        let out = run(&mut c, &mixed);
        // Flow a: one merged packet. Flow b: segments 0-1 merged, 2 alone (bad checksum),
        // 3-4 merged.
        let v4: Vec<_> = out.iter().filter(|(_, p)| p[0] >> 4 == 4).collect();
        let v6: Vec<_> = out.iter().filter(|(_, p)| p[0] >> 4 == 6).collect();
        assert_eq!(v4.len(), 1);
        assert_eq!(v4[0].0.gso_size, 1000);
        assert_eq!(v6.len(), 3);
        assert_eq!(v6[1].0, VnetHdr::NONE);
        assert_eq!(v6[1].1, wb[2]);
        let seqs: Vec<u32> = v6
            .iter()
            .map(|(_, p)| u32::from_be_bytes([p[44], p[45], p[46], p[47]]))
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
        let w = c.take_written();
        assert_eq!(w.merged, 3);
        assert_eq!(w.merged_segments, 9);
    }

    #[test]
    fn super_packet_from_a_kernel_peer_goes_whole() {
        let mut p = super_packet(false, true, &[7u8; 20_000], false, false);
        assert_eq!(
            super_packet_header(&p, 1450),
            None,
            "a complete checksum is not partial"
        );
        let partial = fold(pseudo_sum(&p, 4, 6, p.len() - 20));
        p[36..38].copy_from_slice(&partial.to_be_bytes());
        let h = super_packet_header(&p, 1450).expect("partial");
        assert_eq!(h.gso_size, 1450 - 40);
        assert_eq!(h.gso_type, GSO_TCPV4);
        let stream: Vec<u8> = kernel_view(&h, &p)
            .iter()
            .flat_map(|s| payload_of(s).to_vec())
            .collect();
        assert_eq!(stream, vec![7u8; 20_000]);
    }

    /// The datagrams a pod sent: `sizes` payload lengths, consecutive IPv4 identifications
    /// from `id`, payload bytes that tell them apart.
    fn pod_datagrams(v6: bool, sizes: &[usize], id: u16) -> Vec<Vec<u8>> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let payload: Vec<u8> = (0..n)
                    .map(|j| u8::try_from((i * 7 + j) % 251).expect("small"))
                    .collect();
                let mut d = super_packet(v6, false, &payload, false, false);
                if !v6 {
                    let want = id.wrapping_add(u16::try_from(i).expect("small"));
                    d[4..6].copy_from_slice(&want.to_be_bytes());
                    d[10..12].fill(0);
                    let sum = crate::wire::ip::checksum(&d[..20]);
                    d[10..12].copy_from_slice(&sum.to_be_bytes());
                }
                d
            })
            .collect()
    }

    /// Every packet written, as the kernel turns it back into datagrams.
    fn delivered(written: &[(VnetHdr, Vec<u8>)]) -> Vec<Vec<u8>> {
        written
            .iter()
            .flat_map(|(h, p)| kernel_view(h, p))
            .collect()
    }

    proptest! {
        #[test]
        fn udp_datagrams_merge_and_come_back_byte_for_byte(
            size in 1usize..1472, count in 1usize..150, last in 1usize..1472,
            v6 in any::<bool>(), id in any::<u16>(),
        ) {
            let size = if v6 { size.min(1452) } else { size };
            let mut sizes = vec![size; count];
            sizes.push(last.min(size));
            let sent = pod_datagrams(v6, &sizes, id);
            let mut c = Coalescer::new().with_udp(true);
            let written = run(&mut c, &sent);
            let merged = written.iter().filter(|(h, _)| h.gso_type == GSO_UDP_L4).count();
            prop_assert!(written.len() < sent.len() || sent.len() == 1 || merged == 0);
            prop_assert!(written.len() <= sent.len().div_ceil(MAX_UDP_SEGMENTS).max(
                (sent.len() * size).div_ceil(MAX_MERGED - 48)) + 1,
                "{} packets for {} datagrams", written.len(), sent.len());
            prop_assert_eq!(delivered(&written), sent);
        }

        #[test]
        fn udp_merging_off_writes_every_datagram_as_it_is(
            size in 1usize..1400, count in 1usize..40, v6 in any::<bool>(),
        ) {
            let sent = pod_datagrams(v6, &vec![size; count], 7);
            let written = run(&mut Coalescer::new(), &sent);
            prop_assert!(written.iter().all(|(h, _)| *h == VnetHdr::NONE));
            prop_assert_eq!(written.into_iter().map(|(_, p)| p).collect::<Vec<_>>(), sent);
        }
    }

    /// Makes an IPv4 datagram's header and UDP checksums valid again after an edit.
    fn reseal(d: &mut [u8]) {
        let ip = if d[0] >> 4 == 4 {
            d[10..12].fill(0);
            let sum = crate::wire::ip::checksum(&d[..20]);
            d[10..12].copy_from_slice(&sum.to_be_bytes());
            20
        } else {
            40
        };
        d[ip + 6..ip + 8].fill(0);
        let v = d[0] >> 4;
        let sum = !fold(pseudo_sum(d, v, 17, d.len() - ip) + ones_sum(&d[ip..]));
        let sum = if sum == 0 { 0xffff } else { sum };
        d[ip + 6..ip + 8].copy_from_slice(&sum.to_be_bytes());
    }

    #[test]
    fn udp_datagrams_that_break_a_rule_go_alone_and_in_order() {
        type Edit = fn(&mut Vec<u8>);
        // Six datagrams of 800 bytes; datagram 3 edited. Identifications from 65533, so the
        // merge crosses their wrap to 0. `first`: how many datagrams the first packet holds.
        let cases: [(&str, bool, Edit, bool, usize); 13] = [
            ("as sent", false, |_| {}, true, 6),
            ("as sent, IPv6", true, |_| {}, true, 6),
            (
                "identification out of sequence",
                false,
                |d| d[4..6].copy_from_slice(&7u16.to_be_bytes()),
                true,
                3,
            ),
            ("no checksum", false, |d| d[26..28].fill(0), false, 3),
            ("bad UDP checksum", false, |d| d[100] ^= 0x55, false, 3),
            ("bad header checksum", false, |d| d[10] ^= 0x01, false, 3),
            ("another TTL", false, |d| d[8] = 63, true, 3),
            ("another TOS", false, |d| d[1] = 0x10, true, 3),
            ("DF cleared", false, |d| d[6] = 0, true, 3),
            (
                "larger",
                false,
                |d| {
                    d.push(9);
                    let n = u16::try_from(d.len()).expect("small");
                    d[2..4].copy_from_slice(&n.to_be_bytes());
                    d[24..26].copy_from_slice(&(n - 20).to_be_bytes());
                },
                true,
                3,
            ),
            (
                "shorter, which ends the packet",
                false,
                |d| {
                    d.pop();
                    let n = u16::try_from(d.len()).expect("small");
                    d[2..4].copy_from_slice(&n.to_be_bytes());
                    d[24..26].copy_from_slice(&(n - 20).to_be_bytes());
                },
                true,
                4,
            ),
            ("another hop limit", true, |d| d[7] = 63, true, 3),
            ("another flow label", true, |d| d[3] ^= 1, true, 3),
        ];
        for (name, v6, edit, reseal_it, first) in cases {
            let mut sent = pod_datagrams(v6, &[800; 6], 65_533);
            if !v6 {
                for d in &mut sent {
                    d[6] = 0x40;
                    reseal(d);
                }
            }
            edit(&mut sent[3]);
            if reseal_it {
                reseal(&mut sent[3]);
            }
            let mut c = Coalescer::new().with_udp(true);
            let written = run(&mut c, &sent);
            assert_eq!(
                delivered(&written),
                sent,
                "{name}: every datagram as sent, in order"
            );
            let held = |(h, p): &(VnetHdr, Vec<u8>)| {
                if h.gso_type == GSO_UDP_L4 {
                    kernel_view(h, p).len()
                } else {
                    1
                }
            };
            assert_eq!(held(&written[0]), first, "{name}: {written:?}");
        }
    }

    #[test]
    fn a_fragment_goes_after_the_open_datagrams_between_its_addresses() {
        let mut sent = pod_datagrams(false, &[800; 3], 10);
        // A first fragment (MF) of another datagram between the same addresses, then one of
        // another pair of addresses.
        let mut frag = sent[0].clone();
        frag[6] = 0x20;
        frag[4..6].copy_from_slice(&99u16.to_be_bytes());
        reseal(&mut frag);
        let mut other = frag.clone();
        other[15] = 77;
        reseal(&mut other);
        let mut c = Coalescer::new().with_udp(true);
        let mut packets = sent.clone();
        packets.push(other.clone());
        packets.push(frag.clone());
        let written = run(&mut c, &packets);
        // `other` shares no addresses: the open packet stays open past it.
        assert_eq!(written.len(), 3);
        assert_eq!(written[0].1, other);
        assert_eq!(written[1].0.gso_type, GSO_UDP_L4);
        assert_eq!(written[2].1, frag);
        sent.truncate(3);
        assert_eq!(kernel_view(&written[1].0, &written[1].1), sent);
    }

    #[test]
    fn tcp_and_udp_of_the_same_addresses_and_ports_stay_apart() {
        let mut a = super_packet(false, true, &[1u8; 4000], false, false);
        a[20 + 13] &= !0x80;
        let tcp = segments(&a, false, 1000, 1500);
        let udp = pod_datagrams(false, &[1000; 4], 0);
        let mut mixed = Vec::new();
        for (t, u) in tcp.iter().zip(&udp) {
            mixed.push(t.clone());
            mixed.push(u.clone());
        }
        let mut c = Coalescer::new().with_udp(true);
        let written = run(&mut c, &mixed);
        assert_eq!(written.len(), 2, "one TCP and one UDP super-packet");
        assert_eq!(written[0].0.gso_type, GSO_TCPV4);
        assert_eq!(written[1].0.gso_type, GSO_UDP_L4);
        let back = delivered(&written);
        assert_eq!(back[4..], udp[..]);
    }
}
