//! The encapsulation a node speaks, its header sizes and the MTU arithmetic.
//!
//! MTU arithmetic (outer IPv4 underlay):
//!
//! | encapsulation | outer IP | outer UDP | own header | inner MTU on a 1500 link |
//! |---|---|---|---|---|
//! | `udp` (flannel) | 20 | 8 | 0 | 1500 − 28 = 1472 |
//!
//! An IPv6 underlay has a 40-byte outer header instead of 20, so 20 more bytes come off.

use super::flannel;

/// Outer IPv4 header without options (RFC 791).
pub const OUTER_IPV4_LEN: usize = 20;
/// Outer IPv6 fixed header (RFC 8200).
pub const OUTER_IPV6_LEN: usize = 40;
/// Outer UDP header (RFC 768).
pub const OUTER_UDP_LEN: usize = 8;

/// The wire format spoken to peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    /// flannel's `udp` backend: the inner IP packet is the UDP payload.
    Flannel,
}

impl Encap {
    /// Returns the bytes this format puts in front of the inner packet inside the UDP payload.
    pub const fn header_len(self) -> usize {
        match self {
            Self::Flannel => flannel::HEADER_LEN,
        }
    }

    /// Returns the default UDP port.
    pub const fn default_port(self) -> u16 {
        match self {
            Self::Flannel => flannel::DEFAULT_PORT,
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flannel_overhead_matches_flanneld() {
        // flannel: encapOverhead = 28, TUN MTU 1472 on a 1500-byte underlay.
        assert_eq!(1500 - Encap::Flannel.overhead(false), 1472);
        assert_eq!(Encap::Flannel.overhead(true), 48);
        assert_eq!(Encap::Flannel.default_port(), 8285);
    }
}
