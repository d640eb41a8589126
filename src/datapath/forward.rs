//! The checks and the routing of one packet, with no I/O.
//!
//! The datapath core ([`super::Core`]) calls [`route`] (or [`outbound`]) for every packet read
//! from TUN and [`inbound`] for every datagram received from the underlay. Each direction has
//! its own result type: [`Outbound`] sends to a peer or drops, [`Inbound`] delivers to TUN or
//! drops, with a [`DropReason`]. Nothing here allocates, blocks or panics on any input, which is
//! what the unit tests, property tests, fuzz targets and benches rely on.
//!
//! Receive checks, in order (each failure is its own counter):
//! 1. the sender's address is the public address of a known peer (`unknown_sender`);
//! 2. the datagram holds exactly one valid inner IP packet (`rx_*`; VXLAN: the header and
//!    inner Ethernet checks of the kernel's `vxlan_rcv`, see [`inbound`]);
//! 3. VXLAN: the inner destination MAC is this VTEP's unicast address, not a group address
//!    (`vxlan_not_host`), since IP forwarding refuses link-layer broadcast and multicast;
//! 4. the inner destination lies in this node's subnet (`not_local`);
//! 5. the inner source lies in a subnet owned by that same sender (`spoofed_source`).
//!
//! ICMP errors go back into TUN only about unicast: never about a packet whose destination is
//! a broadcast (limited, or the directed broadcast of the overlay network or of a subnet in the
//! table) or multicast address, or whose source does not name a single host (RFC 1812 section
//! 4.3.2.7, RFC 4443 section 2.4 (e)); see [`icmp_reply`].
//!
//! The inner TTL is left alone in both directions: the kernel already decremented it when it
//! routed the packet into TUN, so the tunnel counts as one hop (flannel's proxy decrements it
//! again on both sides).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::IpNet;

use crate::metrics::DropReason;
use crate::table::Snapshot;
use crate::wire::encap::{VXLAN_HEADER_LEN, vxlan_encapsulate};
use crate::wire::ethernet::{EtherType, Frame};
use crate::wire::{Encap, InnerIp, VxlanParams, WireError, flannel, icmp, vxlan};

/// Fixed per-node forwarding parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarding {
    /// The wire format.
    pub encap: Encap,
    /// The whole overlay network (flannel's `Network`): its directed broadcast address is never
    /// answered with ICMP.
    pub network: IpNet,
    /// The largest inner packet that fits the underlay path after encapsulation.
    pub max_inner_len: usize,
    /// Send ICMP errors back into TUN for packets that cannot be forwarded.
    pub icmp: bool,
    /// Accept a datagram only from the sending peer's own port (flannel's `udp` nodes send
    /// from the port they listen on); kernel VXLAN peers send from any port.
    pub strict_source_port: bool,
}

/// What to do with a packet read from TUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound {
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
        /// Hash of the inner flow (VXLAN: picks the outer source port; 0 for `udp`).
        flow: u32,
    },
}

/// What to do with a datagram received from the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// Write `buf[start..start + len]` to the TUN device.
    Deliver {
        /// Offset of the inner packet.
        start: usize,
        /// Its length.
        len: usize,
        /// Index of the sending peer in the snapshot (for its counters).
        peer: u32,
    },
    /// Drop the datagram and count the reason.
    Drop(DropReason),
}

/// Where a packet read from TUN goes: the peer, its endpoint, the flow hash and the
/// encapsulation prefix every datagram to it carries (empty for `udp`, the VXLAN and inner
/// Ethernet headers for `vxlan`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Index of the peer in the snapshot.
    pub peer: u32,
    /// The peer's endpoint.
    pub dst: SocketAddr,
    /// Hash of the inner flow (VXLAN: picks the outer source port; 0 for `udp`).
    pub flow: u32,
    /// The prefix bytes, `prefix[..prefix_len]`.
    pub prefix: [u8; VXLAN_HEADER_LEN],
    /// How many of them are used.
    pub prefix_len: usize,
}

impl Route {
    /// Returns the encapsulation prefix.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix[..self.prefix_len]
    }
}

/// Routes a packet read from TUN, whatever its size: it must be a valid IP packet, not for
/// this node's own subnet, for a subnet some peer owns, and (VXLAN) that peer must have a VTEP
/// MAC. This is the one place these checks are made; [`outbound`] adds the size check for a
/// single packet, and a super-packet's segments are cut to size afterwards.
///
/// # Errors
///
/// `tun_*` for a malformed packet, `local_destination`, `no_route` or `no_peer_mac`.
pub fn route(snap: &Snapshot, fwd: &Forwarding, packet: &[u8]) -> Result<Route, DropReason> {
    let inner = crate::wire::parse_inner(packet).map_err(DropReason::TunMalformed)?;
    if snap.is_local(inner.dst) {
        return Err(DropReason::LocalDestination);
    }
    let (peer, p) = snap.lookup(inner.dst).ok_or(DropReason::NoRoute)?;
    let mut route = Route {
        peer,
        dst: p.endpoint,
        flow: 0,
        prefix: [0; VXLAN_HEADER_LEN],
        prefix_len: 0,
    };
    if let Encap::Vxlan(params) = fwd.encap {
        let mac = p.vtep_mac.ok_or(DropReason::NoPeerMac)?;
        route.flow = flow_hash(packet);
        vxlan_encapsulate(
            &mut route.prefix,
            VXLAN_HEADER_LEN,
            &params,
            mac,
            packet[0] >> 4,
        )
        .map_err(DropReason::TunMalformed)?;
        route.prefix_len = VXLAN_HEADER_LEN;
    }
    Ok(route)
}

/// Decides what to do with the packet at `buf[headroom..headroom + len]`, read from TUN:
/// [`route`], then the size check, then the encapsulation prefix is written into the
/// `headroom` bytes in front of the packet, so the inner packet is never copied.
#[inline]
pub fn outbound(
    snap: &Snapshot,
    fwd: &Forwarding,
    buf: &mut [u8],
    headroom: usize,
    len: usize,
) -> Outbound {
    let Some(packet) = buf.get(headroom..headroom.saturating_add(len)) else {
        return Outbound::Drop(DropReason::TunMalformed(WireError::Truncated));
    };
    let r = match route(snap, fwd, packet) {
        Ok(r) => r,
        Err(reason) => return Outbound::Drop(reason),
    };
    if len > fwd.max_inner_len {
        return Outbound::Drop(DropReason::TooBig);
    }
    let prefix = r.prefix();
    let Some(start) = headroom.checked_sub(prefix.len()) else {
        return Outbound::Drop(DropReason::TunMalformed(WireError::Truncated));
    };
    buf[start..headroom].copy_from_slice(prefix);
    Outbound::Send {
        peer: r.peer,
        dst: r.dst,
        start,
        len: len + prefix.len(),
        flow: r.flow,
    }
}

/// Decides what to do with `datagram`, received from `sender`.
#[inline]
pub fn inbound(snap: &Snapshot, fwd: &Forwarding, sender: SocketAddr, datagram: &[u8]) -> Inbound {
    if !snap.is_known_sender(sender.ip()) {
        return Inbound::Drop(DropReason::UnknownSender);
    }
    let decapsulated = match fwd.encap {
        Encap::Flannel => flannel::decapsulate(datagram)
            .map(|inner| (inner, 0))
            .map_err(DropReason::RxMalformed),
        Encap::Vxlan(params) => vxlan_decapsulate(&params, datagram),
    };
    let (inner, start) = match decapsulated {
        Ok(x) => x,
        Err(reason) => return Inbound::Drop(reason),
    };
    if !snap.is_local(inner.dst) {
        return Inbound::Drop(DropReason::NotLocal);
    }
    if inner.dst.is_ipv6()
        && !crate::wire::ip::ipv6_ext_headers_ok(datagram.get(start..).unwrap_or_default())
    {
        return Inbound::Drop(DropReason::RxIpv6ExtHeaders);
    }
    if inner.dst.is_ipv4()
        && !crate::wire::ip::ipv4_options_ok(datagram.get(start..).unwrap_or_default())
    {
        return Inbound::Drop(DropReason::RxIpv4Options);
    }
    match snap.lookup(inner.src) {
        Some((peer, owner)) if owner.endpoint.ip() == sender.ip() => {
            if fwd.strict_source_port && owner.endpoint.port() != sender.port() {
                return Inbound::Drop(DropReason::WrongSourcePort);
            }
            Inbound::Deliver {
                start,
                len: datagram.len() - start,
                peer,
            }
        }
        _ => Inbound::Drop(DropReason::SpoofedSource),
    }
}

/// Builds in `out` the ICMP error to send back into TUN for a packet from TUN dropped with
/// `reason`, and returns its length: net unreachable (IPv6: no route) for `NoRoute`,
/// fragmentation needed with the path MTU for `TooBig` with DF set (IPv6: packet too big).
///
/// `None` for other reasons, with `fwd.icmp` off, and for packets that must not be answered:
/// ICMP errors, non-first fragments, and anything not between two unicast addresses. An error
/// is never sent about a packet to a broadcast or multicast destination, nor about one whose
/// source does not name a single host (RFC 1812 section 4.3.2.7, RFC 1122 section 3.2.2,
/// RFC 4443 section 2.4 (e)); besides what [`icmp::may_answer`] and [`icmp::may_answer_v6`]
/// see in the packet alone, the directed broadcast addresses of the overlay network
/// (`fwd.network`), of this node's subnets and of the peer subnet holding the address count as
/// broadcast. Since the reply is sourced from the offender's destination, this also means an
/// error is never sourced from a broadcast or multicast address (RFC 1812 section 4.3.2.4,
/// RFC 4443 section 2.2). RFC 4443 would allow packet too big about a multicast destination,
/// but only from a unicast address of the node, which fustian does not have (see below).
pub fn icmp_reply(
    snap: &Snapshot,
    fwd: &Forwarding,
    reason: DropReason,
    packet: &[u8],
    out: &mut [u8],
) -> Option<usize> {
    if !fwd.icmp {
        return None;
    }
    let kind = icmp_kind(fwd, reason, packet)?;
    // Sourced from the unreachable destination, not from this node: the node's own overlay
    // addresses are local to the kernel that reads the reply from TUN, and it drops a packet
    // arriving from outside with a local source as a martian (`fib_validate_source`).
    match packet.first().map(|b| b >> 4) {
        Some(4) if icmp::may_answer(packet) => {
            let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
            let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
            if is_directed_broadcast(snap, fwd, src) || is_directed_broadcast(snap, fwd, dst) {
                return None;
            }
            icmp::unreachable(out, dst, packet, kind).ok()
        }
        Some(6) if icmp::may_answer_v6(packet) => {
            let mut dst = [0u8; 16];
            dst.copy_from_slice(&packet[24..40]);
            icmp::unreachable_v6(out, dst.into(), packet, kind).ok()
        }
        _ => None,
    }
}

/// Returns the ICMP error a packet from TUN dropped with `reason` earns, before the checks on
/// its addresses: net unreachable (IPv6: no route) for `NoRoute`, fragmentation needed with
/// the path MTU for `TooBig` with DF set (IPv6: packet too big, always). `None` for every other
/// reason. This is the one place that decides which drops are answered.
fn icmp_kind(fwd: &Forwarding, reason: DropReason, packet: &[u8]) -> Option<icmp::Unreachable> {
    let version = packet.first().map(|b| b >> 4);
    match reason {
        DropReason::NoRoute => Some(icmp::Unreachable::Net),
        // IPv6 routers never fragment (RFC 8200, section 5): every IPv6 packet counts as DF.
        DropReason::TooBig if version == Some(6) || icmp::dont_fragment(packet) => {
            Some(icmp::Unreachable::FragmentationNeeded {
                mtu: u16::try_from(fwd.max_inner_len).unwrap_or(u16::MAX),
            })
        }
        _ => None,
    }
}

/// Returns true when `addr` is the directed broadcast address (all host bits set, RFC 919,
/// RFC 1812 section 4.2.3.1) of the overlay network, of one of this node's subnets, or of the
/// peer subnet that holds it. Prefixes of 31 and 32 bits have no broadcast address (RFC 3021).
fn is_directed_broadcast(snap: &Snapshot, fwd: &Forwarding, addr: Ipv4Addr) -> bool {
    let broadcast_of = |net: &IpNet| match net {
        IpNet::V4(n) => n.prefix_len() <= 30 && n.broadcast() == addr,
        IpNet::V6(_) => false,
    };
    broadcast_of(&fwd.network)
        || snap.local().iter().any(broadcast_of)
        || snap
            .lookup(IpAddr::V4(addr))
            .is_some_and(|(_, p)| broadcast_of(&p.subnet))
}

/// Checks a VXLAN frame as the kernel's `vxlan_rcv` and IP forwarding do, and returns the
/// inner packet's addresses and offset. Accepted: flags exactly 0x08, reserved zero, this
/// node's VNI, inner destination MAC this VTEP's unicast address, inner source MAC not this
/// VTEP's, EtherType IPv4 or IPv6 agreeing with the inner version, a valid inner packet.
fn vxlan_decapsulate(
    params: &VxlanParams,
    datagram: &[u8],
) -> Result<(InnerIp, usize), DropReason> {
    let vx = vxlan::Packet::new_checked(datagram).map_err(DropReason::RxMalformed)?;
    let repr = vxlan::Repr::parse(&vx).map_err(DropReason::RxMalformed)?;
    if repr.vni != params.vni {
        return Err(DropReason::WrongVni);
    }
    let eth = Frame::new_checked(vx.payload()).map_err(DropReason::RxMalformed)?;
    let dst = eth.dst_addr();
    if dst != params.local_mac && !dst.is_multicast() {
        return Err(DropReason::WrongDstMac);
    }
    if eth.src_addr() == params.local_mac {
        return Err(DropReason::OwnSrcMac);
    }
    let want_version = match eth.ethertype() {
        EtherType::Ipv4 => 4,
        EtherType::Ipv6 => 6,
        EtherType::Arp | EtherType::Unknown(_) => return Err(DropReason::NonIp),
    };
    let packet = eth.payload();
    if packet.first().map(|b| b >> 4) != Some(want_version) && !packet.is_empty() {
        return Err(DropReason::RxMalformed(WireError::BadVersion));
    }
    let inner = crate::wire::parse_inner(packet).map_err(DropReason::RxMalformed)?;
    // A group destination MAC passes the VXLAN layer: the kernel's `vxlan_rcv`
    // (drivers/net/vxlan/vxlan_core.c) checks only that the source MAC is not its own, and
    // `eth_type_trans` marks the packet PACKET_BROADCAST or PACKET_MULTICAST. IP then refuses
    // to forward it: `ip_forward` (net/ipv4/ip_forward.c) and `ip6_forward`
    // (net/ipv6/ip6_output.c) drop every packet whose `pkt_type` is not PACKET_HOST, so a
    // kernel node never hands such a frame on to a pod. A packet written to TUN arrives as
    // PACKET_HOST and would be forwarded, so the mark is lost at the TUN boundary and the
    // frame is dropped here instead. The kernel would still deliver it locally when it is
    // addressed to one of the node's own addresses (unless `drop_unicast_in_l2_multicast` is
    // set); fustian drops those too, as flannel's kernel peers never send one (they address
    // every frame to the VTEP MAC of their permanent neighbour entry).
    if dst.is_multicast() {
        return Err(DropReason::VxlanNotHost);
    }
    Ok((inner, VXLAN_HEADER_LEN))
}

/// Returns a hash of the inner flow that is the same in both directions: addresses, protocol
/// and, for TCP and UDP (first fragments only), ports. Like the kernel's `skb_get_hash` it
/// keeps one flow on one outer source port, so ECMP and RSS keep its packets in order.
// Truncating casts are the point here: halves of the hash are folded together.
#[allow(clippy::cast_possible_truncation)]
#[inline]
pub fn flow_hash(packet: &[u8]) -> u32 {
    let (a, b, proto, l4) = match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= 20 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            // Fragment offset zero and MF clear or set: ports are only in the first fragment.
            let first_fragment = packet[6] & 0x1f == 0 && packet[7] == 0;
            let a = u128::from(u32::from_be_bytes([
                packet[12], packet[13], packet[14], packet[15],
            ]));
            let b = u128::from(u32::from_be_bytes([
                packet[16], packet[17], packet[18], packet[19],
            ]));
            (a, b, packet[9], first_fragment.then_some(ihl))
        }
        Some(6) if packet.len() >= 40 => {
            let mut a = [0u8; 16];
            let mut b = [0u8; 16];
            a.copy_from_slice(&packet[8..24]);
            b.copy_from_slice(&packet[24..40]);
            (
                u128::from_be_bytes(a),
                u128::from_be_bytes(b),
                packet[6],
                Some(40),
            )
        }
        _ => (0, 0, 0, None),
    };
    let ports = match (proto, l4) {
        (6 | 17, Some(off)) => packet.get(off..off + 4).map(|p| {
            (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            )
        }),
        _ => None,
    };
    let (sp, dp) = ports.unwrap_or((0, 0));
    // Order the two endpoints so both directions hash alike.
    let (lo, hi) = if (a, sp) <= (b, dp) {
        ((a, sp), (b, dp))
    } else {
        ((b, dp), (a, sp))
    };
    let mut h = fold(lo.0) ^ fold(hi.0).rotate_left(17);
    h ^= (u64::from(lo.1) << 32) | (u64::from(hi.1) << 16) | u64::from(proto);
    // fmix64 from MurmurHash3: every input bit affects every output bit.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h >> 32) as u32 ^ (h as u32)
}

#[allow(clippy::cast_possible_truncation)]
const fn fold(x: u128) -> u64 {
    (x >> 64) as u64 ^ (x as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::table::Peer;
    use crate::wire::MacAddress;
    use crate::wire::ip::{IpProtocol, Packet, Repr};
    use crate::wire::vxlan::tests::KERNEL_FRAME;

    const NETWORK: IpNet = IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(10, 244, 0, 0)), 16);
    const FWD: Forwarding = Forwarding {
        encap: Encap::Flannel,
        network: NETWORK,
        max_inner_len: 1472,
        icmp: false,
        strict_source_port: false,
    };
    const MAC_A: MacAddress = MacAddress([0x2a, 0x89, 0x75, 0x16, 0x96, 0xaa]);
    const MAC_B: MacAddress = MacAddress([0xee, 0x58, 0x53, 0xba, 0x43, 0xf5]);

    fn vxlan_fwd(local_mac: MacAddress) -> Forwarding {
        Forwarding {
            encap: Encap::Vxlan(VxlanParams { vni: 1, local_mac }),
            network: NETWORK,
            max_inner_len: 1450,
            icmp: false,
            strict_source_port: false,
        }
    }

    fn peer(subnet: &str, endpoint: &str, mac: Option<MacAddress>) -> Peer {
        Peer {
            subnet: subnet.parse().expect("literal"),
            endpoint: endpoint.parse().expect("literal"),
            vtep_mac: mac,
        }
    }

    fn node_a() -> Snapshot {
        Snapshot::new(
            vec!["10.244.1.0/24".parse().expect("literal")],
            vec![
                peer("10.244.2.0/24", "192.0.2.2:8285", Some(MAC_B)),
                peer("10.244.3.0/24", "192.0.2.3:8285", None),
            ],
        )
        .expect("valid")
    }

    fn node_b() -> Snapshot {
        Snapshot::new(
            vec!["10.244.2.0/24".parse().expect("literal")],
            vec![peer("10.244.1.0/24", "192.0.2.1:8285", Some(MAC_A))],
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

    fn with_ports(mut p: Vec<u8>, sport: u16, dport: u16) -> Vec<u8> {
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p
    }

    #[test]
    fn outbound_sends_to_the_owner() {
        let mut buf = packet([10, 244, 1, 2], [10, 244, 2, 9], 100);
        let len = buf.len();
        let v = outbound(&node_a(), &FWD, &mut buf, 0, len);
        let dst = "192.0.2.2:8285".parse().expect("literal");
        assert_eq!(
            v,
            Outbound::Send {
                peer: 0,
                dst,
                start: 0,
                len,
                flow: 0
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
            Outbound::Drop(DropReason::NoRoute)
        );
        let mut local = packet([10, 244, 1, 2], [10, 244, 1, 3], 10);
        assert_eq!(
            outbound(&snap, &FWD, &mut local, 0, n),
            Outbound::Drop(DropReason::LocalDestination)
        );
        let mut big = packet([10, 244, 1, 2], [10, 244, 2, 3], 1460);
        let n = big.len();
        assert_eq!(
            outbound(&snap, &FWD, &mut big, 0, n),
            Outbound::Drop(DropReason::TooBig)
        );
        let mut junk = vec![0u8; 10];
        assert_eq!(
            outbound(&snap, &FWD, &mut junk, 0, 10),
            Outbound::Drop(DropReason::TunMalformed(WireError::BadVersion))
        );
        let mut short = vec![0x45u8; 10];
        assert_eq!(
            outbound(&snap, &FWD, &mut short, 0, 10),
            Outbound::Drop(DropReason::TunMalformed(WireError::Truncated))
        );
        assert_eq!(
            outbound(&snap, &FWD, &mut junk, 8, 10),
            Outbound::Drop(DropReason::TunMalformed(WireError::Truncated))
        );
    }

    #[test]
    fn inbound_checks_sender_source_and_destination() {
        let snap = node_a();
        let from_b: SocketAddr = "192.0.2.2:8285".parse().expect("literal");
        let good = packet([10, 244, 2, 5], [10, 244, 1, 2], 30);
        assert_eq!(
            inbound(&snap, &FWD, from_b, &good),
            Inbound::Deliver {
                start: 0,
                len: good.len(),
                peer: 0,
            }
        );
        let stranger: SocketAddr = "192.0.2.99:8285".parse().expect("literal");
        assert_eq!(
            inbound(&snap, &FWD, stranger, &good),
            Inbound::Drop(DropReason::UnknownSender)
        );
        // B claims to carry a packet from C's subnet.
        let spoofed = packet([10, 244, 3, 5], [10, 244, 1, 2], 30);
        assert_eq!(
            inbound(&snap, &FWD, from_b, &spoofed),
            Inbound::Drop(DropReason::SpoofedSource)
        );
        let outside = packet([198, 51, 100, 7], [10, 244, 1, 2], 30);
        assert_eq!(
            inbound(&snap, &FWD, from_b, &outside),
            Inbound::Drop(DropReason::SpoofedSource)
        );
        let elsewhere = packet([10, 244, 2, 5], [10, 244, 3, 2], 30);
        assert_eq!(
            inbound(&snap, &FWD, from_b, &elsewhere),
            Inbound::Drop(DropReason::NotLocal)
        );
        for junk in [&[][..], &[0x45][..], &[0x45; 19][..], &[0u8; 40][..]] {
            assert!(matches!(
                inbound(&snap, &FWD, from_b, junk),
                Inbound::Drop(DropReason::RxMalformed(_))
            ));
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            inbound(&snap, &FWD, from_b, &trailing),
            Inbound::Drop(DropReason::RxMalformed(WireError::BadLength))
        );
    }

    #[test]
    fn icmp_replies_for_no_route_and_too_big() {
        let fwd = Forwarding { icmp: true, ..FWD };
        let mut out = [0u8; crate::wire::icmp::V6_MIN_MTU];
        let unroutable = packet([10, 244, 1, 2], [10, 244, 9, 9], 10);
        let n = icmp_reply(&node_a(), &fwd, DropReason::NoRoute, &unroutable, &mut out)
            .expect("a reply");
        assert_eq!(
            (out[9], out[20], out[21]),
            (1, 3, 0),
            "ICMP net unreachable"
        );
        assert_eq!(
            &out[12..16],
            &[10, 244, 9, 9],
            "from the unreachable destination"
        );
        assert_eq!(&out[16..20], &[10, 244, 1, 2], "to the sender");
        assert!(n > 48);
        let mut big = packet([10, 244, 1, 2], [10, 244, 2, 2], 1500);
        big[6] |= 0x40; // DF
        let ip_len = big[0] & 0x0f;
        assert_eq!(ip_len, 5);
        let mut p = crate::wire::ip::Packet::new_unchecked(&mut big[..]);
        p.fill_checksum();
        icmp_reply(&node_a(), &fwd, DropReason::TooBig, &big, &mut out).expect("a reply");
        assert_eq!((out[20], out[21]), (3, 4), "fragmentation needed");
        assert_eq!(
            u16::from_be_bytes([out[26], out[27]]),
            1472,
            "with the path MTU"
        );
        assert_eq!(
            icmp_reply(&node_a(), &FWD, DropReason::NoRoute, &unroutable, &mut out),
            None
        );
        assert_eq!(
            icmp_reply(&node_a(), &fwd, DropReason::NotLocal, &unroutable, &mut out),
            None
        );
        let v6 = crate::wire::ip::tests::UDP_V6;
        icmp_reply(&node_a(), &fwd, DropReason::NoRoute, &v6, &mut out).expect("an ICMPv6 reply");
        assert_eq!((out[6], out[40], out[41]), (58, 1, 0), "ICMPv6 no route");
        icmp_reply(&node_a(), &fwd, DropReason::TooBig, &v6, &mut out).expect("an ICMPv6 reply");
        assert_eq!(out[40], 2, "ICMPv6 packet too big");
    }

    #[test]
    fn strict_source_port_wants_the_peers_own_port() {
        let snap = node_a();
        let strict = Forwarding {
            strict_source_port: true,
            ..FWD
        };
        let good = packet([10, 244, 2, 5], [10, 244, 1, 2], 30);
        let from_b: SocketAddr = "192.0.2.2:8285".parse().expect("literal");
        let other_port: SocketAddr = "192.0.2.2:40000".parse().expect("literal");
        assert!(matches!(
            inbound(&snap, &strict, from_b, &good),
            Inbound::Deliver { .. }
        ));
        assert_eq!(
            inbound(&snap, &strict, other_port, &good),
            Inbound::Drop(DropReason::WrongSourcePort)
        );
        assert!(matches!(
            inbound(&snap, &FWD, other_port, &good),
            Inbound::Deliver { .. }
        ));
    }

    #[test]
    fn vxlan_outbound_builds_the_kernel_frame() {
        // The captured kernel frame, rebuilt from its inner packet by node A's side.
        let snap = Snapshot::new(
            vec!["10.244.1.0/24".parse().expect("literal")],
            vec![peer("10.244.2.0/24", "192.0.2.2:8472", Some(MAC_B))],
        )
        .expect("valid");
        let mut buf = vec![0u8; 64];
        buf.extend_from_slice(&KERNEL_FRAME[22..]);
        let len = buf.len() - 64;
        let Outbound::Send {
            start,
            len: out,
            flow,
            ..
        } = outbound(&snap, &vxlan_fwd(MAC_A), &mut buf, 64, len)
        else {
            panic!("not sent");
        };
        assert_eq!(&buf[start..start + out], &KERNEL_FRAME[..]);
        assert_eq!(flow, flow_hash(&KERNEL_FRAME[22..]));
        // A peer without a VTEP MAC cannot be addressed.
        let mut to_c = vec![0u8; 64];
        to_c.extend(packet([10, 244, 1, 2], [10, 244, 3, 2], 10));
        assert_eq!(
            outbound(&node_a(), &vxlan_fwd(MAC_A), &mut to_c, 64, 30),
            Outbound::Drop(DropReason::NoPeerMac)
        );
    }

    #[test]
    fn vxlan_inbound_accepts_what_the_kernel_accepts() {
        // Node B receives the kernel frame that A sent.
        let fwd = vxlan_fwd(MAC_B);
        let from_a: SocketAddr = "192.0.2.1:35588".parse().expect("literal");
        let snap = node_b();
        let ok = Inbound::Deliver {
            start: 22,
            len: KERNEL_FRAME.len() - 22,
            peer: 0,
        };
        assert_eq!(inbound(&snap, &fwd, from_a, &KERNEL_FRAME), ok);
        let mut other_src = KERNEL_FRAME;
        other_src[14] = 0x02;
        assert_eq!(inbound(&snap, &fwd, from_a, &other_src), ok);

        let cases: [(usize, u8, DropReason); 8] = [
            (0, 0x00, DropReason::RxMalformed(WireError::BadFlags)),
            (0, 0x0c, DropReason::RxMalformed(WireError::BadFlags)),
            (7, 0x01, DropReason::RxMalformed(WireError::BadFlags)),
            (6, 0x02, DropReason::WrongVni),
            (13, 0x00, DropReason::WrongDstMac),
            (21, 0x06, DropReason::NonIp),
            (20, 0x86, DropReason::NonIp),
            (22, 0x65, DropReason::RxMalformed(WireError::BadVersion)),
        ];
        for (at, value, reason) in cases {
            let mut f = KERNEL_FRAME;
            f[at] = value;
            assert_eq!(
                inbound(&snap, &fwd, from_a, &f),
                Inbound::Drop(reason),
                "byte {at}"
            );
        }
        let mut own_src = KERNEL_FRAME;
        own_src[14..20].copy_from_slice(&MAC_B.0);
        assert_eq!(
            inbound(&snap, &fwd, from_a, &own_src),
            Inbound::Drop(DropReason::OwnSrcMac)
        );
        for len in [0, 7, 8, 21] {
            assert_eq!(
                inbound(&snap, &fwd, from_a, &KERNEL_FRAME[..len]),
                Inbound::Drop(DropReason::RxMalformed(WireError::Truncated)),
                "length {len}"
            );
        }
    }

    #[test]
    fn vxlan_inbound_refuses_group_destination_macs() {
        // The kernel's IP forwarding drops what its vxlan device marked broadcast or multicast.
        let fwd = vxlan_fwd(MAC_B);
        let from_a: SocketAddr = "192.0.2.1:35588".parse().expect("literal");
        for dst in [
            [0xff; 6],
            [0x01, 0x00, 0x5e, 0x00, 0x00, 0x05],
            [0x33, 0x33, 0x00, 0x00, 0x00, 0x02],
            [0x03, 0, 0, 0, 0, 1],
        ] {
            let mut f = KERNEL_FRAME;
            f[8..14].copy_from_slice(&dst);
            assert_eq!(
                inbound(&node_b(), &fwd, from_a, &f),
                Inbound::Drop(DropReason::VxlanNotHost),
                "{dst:02x?}"
            );
        }
        // Malformed inner packets still count as malformed, whatever the destination MAC.
        let mut f = KERNEL_FRAME;
        f[8..14].fill(0xff);
        f[22] = 0x65;
        assert_eq!(
            inbound(&node_b(), &fwd, from_a, &f),
            Inbound::Drop(DropReason::RxMalformed(WireError::BadVersion))
        );
    }

    #[test]
    fn icmp_only_about_unicast() {
        let fwd = Forwarding { icmp: true, ..FWD };
        let snap = node_a();
        let mut out = [0u8; crate::wire::icmp::V6_MIN_MTU];
        let no_route = |src: [u8; 4], dst: [u8; 4]| {
            let p = packet(src, dst, 10);
            icmp_reply(&snap, &fwd, DropReason::NoRoute, &p, &mut [0u8; 1280])
        };
        assert!(no_route([10, 244, 1, 2], [10, 244, 9, 9]).is_some());
        assert!(
            no_route([10, 244, 1, 2], [10, 244, 9, 0]).is_some(),
            "a /24's first address"
        );
        for dst in [
            [10, 244, 255, 255], // the overlay network's directed broadcast
            [255, 255, 255, 255],
            [224, 0, 0, 5],
            [239, 255, 255, 250],
        ] {
            assert_eq!(no_route([10, 244, 1, 2], dst), None, "to {dst:?}");
        }
        for src in [
            [0, 0, 0, 0],
            [255, 255, 255, 255],
            [224, 0, 0, 1],
            [10, 244, 1, 255], // this node's subnet's directed broadcast
            [10, 244, 255, 255],
        ] {
            assert_eq!(no_route(src, [10, 244, 9, 9]), None, "from {src:?}");
        }
        // Too big for the path, to a peer subnet's directed broadcast: no reply either.
        let mut big = packet([10, 244, 1, 2], [10, 244, 2, 255], 1500);
        big[6] |= 0x40;
        crate::wire::ip::Packet::new_unchecked(&mut big[..]).fill_checksum();
        assert_eq!(
            icmp_reply(&snap, &fwd, DropReason::TooBig, &big, &mut out),
            None
        );
        big[19] = 254;
        crate::wire::ip::Packet::new_unchecked(&mut big[..]).fill_checksum();
        assert!(icmp_reply(&snap, &fwd, DropReason::TooBig, &big, &mut out).is_some());
        // A network whose directed broadcast is another address.
        let wide = Forwarding {
            network: "10.0.0.0/8".parse().expect("literal"),
            ..fwd
        };
        let p = packet([10, 244, 1, 2], [10, 244, 255, 255], 10);
        assert!(icmp_reply(&snap, &wide, DropReason::NoRoute, &p, &mut out).is_some());
        let p = packet([10, 244, 1, 2], [10, 255, 255, 255], 10);
        assert_eq!(
            icmp_reply(&snap, &wide, DropReason::NoRoute, &p, &mut out),
            None
        );
        // The kernel's router solicitation to all routers on the device.
        let mut rs = crate::wire::ip::tests::UDP_V6;
        rs[24..40].copy_from_slice(
            &"ff02::2"
                .parse::<std::net::Ipv6Addr>()
                .expect("ff02::2")
                .octets(),
        );
        assert_eq!(
            icmp_reply(&snap, &fwd, DropReason::NoRoute, &rs, &mut out),
            None
        );
        // Only no route and too big are answered.
        let p = packet([10, 244, 1, 2], [10, 244, 9, 9], 10);
        for reason in DropReason::all() {
            let answered = icmp_reply(&snap, &fwd, reason, &p, &mut out).is_some();
            assert_eq!(answered, reason == DropReason::NoRoute, "{reason:?}");
        }
    }

    #[test]
    fn flow_hash_is_symmetric_and_separates_flows() {
        let ab = with_ports(packet([10, 244, 1, 2], [10, 244, 2, 2], 30), 40000, 5201);
        let ba = with_ports(packet([10, 244, 2, 2], [10, 244, 1, 2], 30), 5201, 40000);
        assert_eq!(flow_hash(&ab), flow_hash(&ba));
        let other = with_ports(packet([10, 244, 1, 2], [10, 244, 2, 2], 30), 40001, 5201);
        assert_ne!(flow_hash(&ab), flow_hash(&other));
        assert_eq!(flow_hash(&[]), flow_hash(&[0x45]));
    }

    proptest! {
        #[test]
        fn encap_then_decap_is_identity(host in 1u8..255, payload_len in 0usize..1400,
                                        vxlan in any::<bool>()) {
            // Node A sends to B; B's view of the same overlay decapsulates what A sent.
            let (fa, fb) = if vxlan { (vxlan_fwd(MAC_A), vxlan_fwd(MAC_B)) } else { (FWD, FWD) };
            let mut buf = vec![0u8; 64];
            buf.extend(packet([10, 244, 1, host], [10, 244, 2, host], payload_len));
            let len = buf.len() - 64;
            let original = buf[64..].to_vec();
            let Outbound::Send { start, len: out_len, .. } = outbound(&node_a(), &fa, &mut buf, 64, len)
            else { return Err(TestCaseError::fail("not sent")) };
            let datagram = &buf[start..start + out_len];
            let from_a: SocketAddr = "192.0.2.1:8285".parse().expect("literal");
            let Inbound::Deliver { start: s, len: l, .. } = inbound(&node_b(), &fb, from_a, datagram)
            else { return Err(TestCaseError::fail("not delivered")) };
            prop_assert_eq!(&datagram[s..s + l], &original[..]);
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..1600),
                        headroom in 0usize..80, vxlan in any::<bool>()) {
            let snap = node_a();
            let fwd = if vxlan { vxlan_fwd(MAC_A) } else { FWD };
            let mut buf = data.clone();
            let _ = outbound(&snap, &fwd, &mut buf, headroom, data.len());
            let _ = inbound(&snap, &fwd, "192.0.2.2:8285".parse().expect("literal"), &data);
            let _ = flow_hash(&data);
            let mut out = [0u8; crate::wire::icmp::V6_MIN_MTU];
            let answering = Forwarding { icmp: true, ..fwd };
            for reason in [DropReason::NoRoute, DropReason::TooBig] {
                if let Some(n) = icmp_reply(&snap, &answering, reason, &data, &mut out) {
                    prop_assert!(n <= out.len());
                }
            }
        }
    }
}
