//! The encapsulation a node speaks, its header sizes and the MTU arithmetic.
//!
//! MTU arithmetic (outer IPv4 underlay; an IPv6 underlay's outer header is 40 bytes, 20 more):
//!
//! | encapsulation | outer IP | outer UDP | own header | inner MTU on a 1500 link |
//! |---|---|---|---|---|
//! | `udp` (flannel) | 20 | 8 | 0 | 1500 − 28 = 1472 |
//! | `vxlan` | 20 | 8 | 8 VXLAN + 14 inner Ethernet | 1500 − 50 = 1450 |
//!
//! Both match what flannel configures: `encapOverhead = 28` in `udp_network_amd64.go`, and
//! `MTU: devAttrs.MTU - 50` for the `flannel.<VNI>` device in `pkg/backend/vxlan/device.go`.

use super::ethernet::{self, Address, EtherType};
use super::{WireError, flannel, vxlan};

/// Outer IPv4 header without options (RFC 791).
pub const OUTER_IPV4_LEN: usize = 20;
/// Outer IPv6 fixed header (RFC 8200).
pub const OUTER_IPV6_LEN: usize = 40;
/// Outer UDP header (RFC 768).
pub const OUTER_UDP_LEN: usize = 8;
/// Bytes VXLAN puts in front of the inner IP packet: VXLAN header and inner Ethernet header.
pub const VXLAN_HEADER_LEN: usize = vxlan::HEADER_LEN + ethernet::HEADER_LEN;

/// What a VXLAN endpoint needs to build and check frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanParams {
    /// The VNI (flannel's default is 1).
    pub vni: u32,
    /// This node's VTEP MAC: the source of frames it sends, the destination of frames it takes.
    pub local_mac: Address,
}

/// The wire format spoken to peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    /// flannel's `udp` backend: the inner IP packet is the UDP payload.
    Flannel,
    /// RFC 7348 VXLAN as the Linux `vxlan` device speaks it.
    Vxlan(VxlanParams),
}

impl Encap {
    /// Returns the bytes this format puts in front of the inner packet inside the UDP payload.
    pub const fn header_len(self) -> usize {
        match self {
            Self::Flannel => flannel::HEADER_LEN,
            Self::Vxlan(_) => VXLAN_HEADER_LEN,
        }
    }

    /// Returns the default UDP port.
    pub const fn default_port(self) -> u16 {
        match self {
            Self::Flannel => flannel::DEFAULT_PORT,
            Self::Vxlan(_) => vxlan::DEFAULT_PORT,
        }
    }

    /// Returns the total overhead over the inner packet: outer IP + UDP + own header.
    pub const fn overhead(self, ipv6_underlay: bool) -> usize {
        let outer_ip = if ipv6_underlay {
            OUTER_IPV6_LEN
        } else {
            OUTER_IPV4_LEN
        };
        outer_ip + OUTER_UDP_LEN + self.header_len()
    }

    /// Returns the name used in flags, config files and flannel's `Backend.Type`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Flannel => "udp",
            Self::Vxlan(_) => "vxlan",
        }
    }
}

/// Writes the VXLAN and inner Ethernet headers into the [`VXLAN_HEADER_LEN`] bytes of `buf`
/// that end at `packet_start`, in front of an inner packet of IP version `version`. Returns
/// the offset where the frame starts.
///
/// # Errors
///
/// `Truncated` when there is not enough headroom before `packet_start`.
pub fn vxlan_encapsulate(
    buf: &mut [u8],
    packet_start: usize,
    params: &VxlanParams,
    peer_mac: Address,
    version: u8,
) -> Result<usize, WireError> {
    let start = packet_start
        .checked_sub(VXLAN_HEADER_LEN)
        .ok_or(WireError::Truncated)?;
    let header = buf
        .get_mut(start..packet_start)
        .ok_or(WireError::Truncated)?;
    vxlan::Repr { vni: params.vni }.emit(header)?;
    let ethertype = if version == 6 {
        EtherType::Ipv6
    } else {
        EtherType::Ipv4
    };
    ethernet::Repr {
        dst_addr: peer_mac,
        src_addr: params.local_mac,
        ethertype,
    }
    .emit(&mut header[vxlan::HEADER_LEN..])?;
    Ok(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::vxlan::tests::KERNEL_FRAME;

    #[test]
    fn overheads_match_flanneld() {
        // flannel: encapOverhead = 28 (udp) and 50 (vxlan).
        assert_eq!(1500 - Encap::Flannel.overhead(false), 1472);
        assert_eq!(Encap::Flannel.overhead(true), 48);
        assert_eq!(Encap::Flannel.default_port(), 8285);
        let v = Encap::Vxlan(VxlanParams {
            vni: 1,
            local_mac: Address([2, 0, 0, 0, 0, 1]),
        });
        assert_eq!(1500 - v.overhead(false), 1450);
        assert_eq!(v.default_port(), 8472);
    }

    #[test]
    fn encapsulates_as_the_kernel_does() {
        let params = VxlanParams {
            vni: 1,
            local_mac: "2a:89:75:16:96:aa".parse().expect("mac"),
        };
        let mut buf = vec![0u8; 64];
        buf.extend_from_slice(&KERNEL_FRAME[22..]);
        let start = vxlan_encapsulate(
            &mut buf,
            64,
            &params,
            "ee:58:53:ba:43:f5".parse().expect("mac"),
            4,
        )
        .expect("headroom");
        assert_eq!(start, 64 - 22);
        assert_eq!(&buf[start..], &KERNEL_FRAME[..]);
        assert_eq!(
            vxlan_encapsulate(&mut buf, 21, &params, Address::BROADCAST, 4),
            Err(WireError::Truncated)
        );
    }
}
