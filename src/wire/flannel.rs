//! flannel's `udp` backend format.
//!
//! flanneld's C proxy (`pkg/backend/udp/proxy_amd64.c`) sends the inner IP packet unchanged as
//! the UDP payload, to the peer's public IP and the backend port (8285 by default), and adds no
//! header of its own. The outer IPv4 header (20 bytes) and UDP header (8 bytes) are the whole
//! overhead, which is why flannel sets the TUN MTU to the underlay MTU minus 28
//! (`udp_network_amd64.go`, `encapOverhead = 28`).
//!
//! Encapsulation is therefore the identity; decapsulation is a check that the payload is one
//! complete inner IP packet. flannel's proxy checks only that the datagram has 20 bytes; this
//! module checks the version, the header length, the length fields and the IPv4 checksum.

use super::WireError;
use super::ip::{InnerIp, parse_inner};

/// Bytes flannel's format adds in front of the inner packet: none.
pub const HEADER_LEN: usize = 0;

/// Default UDP port of flannel's `udp` backend (`udp_amd64.go`, `defaultPort = 8285`).
pub const DEFAULT_PORT: u16 = 8285;

/// Checks that `datagram` is exactly one inner IP packet and returns its addresses.
///
/// # Errors
///
/// Any [`WireError`] from [`parse_inner`].
pub fn decapsulate(datagram: &[u8]) -> Result<InnerIp, WireError> {
    parse_inner(datagram)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ip::tests::{UDP_V4, UDP_V6};

    #[test]
    fn a_flannel_datagram_is_the_inner_packet() {
        let inner = decapsulate(&UDP_V4).expect("valid");
        assert_eq!(inner.dst, std::net::IpAddr::from([10, 244, 2, 2]));
        assert!(decapsulate(&UDP_V6).is_ok());
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(decapsulate(&[]), Err(WireError::Truncated));
        assert_eq!(decapsulate(&[0x45]), Err(WireError::Truncated));
        assert_eq!(decapsulate(&[0x45; 19]), Err(WireError::Truncated));
        assert_eq!(decapsulate(&[0u8; 40]), Err(WireError::BadVersion));
    }
}
