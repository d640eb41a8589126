//! The virtio-net header a TUN device opened with `IFF_VNET_HDR` puts in front of every packet
//! (`struct virtio_net_hdr`, include/uapi/linux/virtio_net.h): 10 bytes saying whether the
//! packet is a GSO super-packet (and its segment size) and where a checksum left for the device
//! starts. The legacy header is in the host's byte order (TUN uses native order unless
//! `TUNSETVNETBE`/`TUNSETVNETLE` say otherwise, and fustian never sets them).

use crate::wire::WireError;

/// Length of the header.
pub const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` holds only the
/// pseudo-header sum and must be completed over `csum_start..`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4` (USO, Linux 6.2).
pub const GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_ECN`, or-ed into the type when the segments carry ECN (CWR).
pub const GSO_ECN: u8 = 0x80;

/// What kind of packet a header describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gso {
    /// One packet.
    None,
    /// A TCP over IPv4 super-packet.
    TcpV4,
    /// A TCP over IPv6 super-packet.
    TcpV6,
    /// A UDP super-packet (each segment its own datagram).
    UdpL4,
}

/// `struct virtio_net_hdr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    /// `F_NEEDS_CSUM` (and `DATA_VALID`, ignored).
    pub flags: u8,
    /// One of the `GSO_*` values.
    pub gso_type: u8,
    /// Length of the headers (a hint; never trusted).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// The header of a plain packet whose checksums are complete.
    pub const NONE: Self = Self {
        flags: 0,
        gso_type: 0,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Reads a header from the first [`VNET_HDR_LEN`] bytes of `b`.
    ///
    /// # Errors
    ///
    /// `Truncated` when `b` is shorter than the header.
    pub fn parse(b: &[u8]) -> Result<Self, WireError> {
        let b = b.get(..VNET_HDR_LEN).ok_or(WireError::Truncated)?;
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Ok(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// Returns the header's bytes.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }

    /// Returns the kind of packet.
    ///
    /// # Errors
    ///
    /// `BadFlags` for a GSO type fustian does not split (UFO, unknown values).
    pub const fn gso(&self) -> Result<Gso, WireError> {
        match self.gso_type & !GSO_ECN {
            0 => Ok(Gso::None),
            GSO_TCPV4 => Ok(Gso::TcpV4),
            GSO_TCPV6 => Ok(Gso::TcpV6),
            GSO_UDP_L4 => Ok(Gso::UdpL4),
            _ => Err(WireError::BadFlags),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn known_bytes() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 52,
            gso_size: 1398,
            csum_start: 20,
            csum_offset: 16,
        };
        let b = h.to_bytes();
        assert_eq!(b[0], 1);
        assert_eq!(b[1], 1);
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 1398);
        assert_eq!(VnetHdr::parse(&b), Ok(h));
        assert_eq!(h.gso(), Ok(Gso::TcpV4));
        assert_eq!(VnetHdr::parse(&b[..9]), Err(WireError::Truncated));
        let ufo = VnetHdr {
            gso_type: 3,
            ..VnetHdr::NONE
        };
        assert_eq!(ufo.gso(), Err(WireError::BadFlags));
    }

    proptest! {
        #[test]
        fn roundtrip(b in any::<[u8; 10]>()) {
            let h = VnetHdr::parse(&b).expect("10 bytes");
            prop_assert_eq!(h.to_bytes(), b);
        }
    }
}
