//! The fixed IPv6 header (RFC 8200, section 3): a view and a validated form. Extension
//! headers are not walked.

use std::net::Ipv6Addr;

use super::IpProtocol;
use crate::wire::WireError;

/// Length of the fixed IPv6 header (RFC 8200, section 3).
pub const V6_HEADER_LEN: usize = 40;

mod field {
    use std::ops::Range;

    pub(super) const V6_PAYLOAD_LEN: Range<usize> = 4..6;
    pub(super) const V6_NEXT_HEADER: usize = 6;
    pub(super) const V6_HOP_LIMIT: usize = 7;
    pub(super) const V6_SRC_ADDR: Range<usize> = 8..24;
    pub(super) const V6_DST_ADDR: Range<usize> = 24..40;
}

/// A read view of the fixed IPv6 header.
#[derive(Debug, Clone)]
pub struct V6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> V6Packet<T> {
    /// Wraps a buffer without checking it. Accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer after [`Self::check_len`].
    ///
    /// # Errors
    ///
    /// Returns the first failed check of [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the version and that 40 + payload length equals the buffer length.
    ///
    /// # Errors
    ///
    /// `Truncated`, `BadVersion`, or `BadLength` (a jumbogram's zero payload length included,
    /// RFC 2675, since a tunnel MTU never allows one).
    pub fn check_len(&self) -> Result<(), WireError> {
        let data = self.buffer.as_ref();
        if data.len() < V6_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if self.version() != 6 {
            return Err(WireError::BadVersion);
        }
        let total = V6_HEADER_LEN + usize::from(self.payload_len());
        if total > data.len() {
            return Err(WireError::Truncated);
        }
        if total < data.len() {
            return Err(WireError::BadLength);
        }
        Ok(())
    }

    /// Returns the version nibble.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    /// Returns the payload length field.
    pub fn payload_len(&self) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([
            d[field::V6_PAYLOAD_LEN.start],
            d[field::V6_PAYLOAD_LEN.start + 1],
        ])
    }

    /// Returns the next-header field.
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol::from(self.buffer.as_ref()[field::V6_NEXT_HEADER])
    }

    /// Returns the hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::V6_HOP_LIMIT]
    }

    /// Returns the source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&self.buffer.as_ref()[field::V6_SRC_ADDR]);
        Ipv6Addr::from(octets)
    }

    /// Returns the destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&self.buffer.as_ref()[field::V6_DST_ADDR]);
        Ipv6Addr::from(octets)
    }
}

/// The validated form of a fixed IPv6 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V6Repr {
    /// Source address.
    pub src_addr: Ipv6Addr,
    /// Destination address.
    pub dst_addr: Ipv6Addr,
    /// Next header.
    pub next_header: IpProtocol,
    /// Hop limit.
    pub hop_limit: u8,
    /// Payload length.
    pub payload_len: usize,
}

impl V6Repr {
    /// Parses a checked packet.
    pub fn parse<T: AsRef<[u8]>>(packet: &V6Packet<T>) -> Self {
        Self {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            hop_limit: packet.hop_limit(),
            payload_len: usize::from(packet.payload_len()),
        }
    }

    /// Writes the fixed header into the first 40 bytes of `buffer`.
    ///
    /// # Errors
    ///
    /// `Truncated` when `buffer` is shorter than 40 bytes, `BadLength` when the payload length
    /// does not fit 16 bits.
    pub fn emit(&self, buffer: &mut [u8]) -> Result<(), WireError> {
        let header = buffer
            .get_mut(..V6_HEADER_LEN)
            .ok_or(WireError::Truncated)?;
        let payload_len = u16::try_from(self.payload_len).map_err(|_| WireError::BadLength)?;
        header.fill(0);
        header[0] = 0x60;
        header[field::V6_PAYLOAD_LEN].copy_from_slice(&payload_len.to_be_bytes());
        header[field::V6_NEXT_HEADER] = self.next_header.into();
        header[field::V6_HOP_LIMIT] = self.hop_limit;
        header[field::V6_SRC_ADDR].copy_from_slice(&self.src_addr.octets());
        header[field::V6_DST_ADDR].copy_from_slice(&self.dst_addr.octets());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::wire::ip::tests::UDP_V6;

    #[test]
    fn reads_ipv6_fields() {
        let packet = V6Packet::new_checked(&UDP_V6[..]).expect("capture is valid");
        assert_eq!(packet.payload_len(), 18);
        assert_eq!(packet.next_header(), IpProtocol::Udp);
        assert_eq!(packet.hop_limit(), 64);
        assert_eq!(
            packet.src_addr(),
            "fd00::1".parse::<Ipv6Addr>().expect("literal")
        );
        assert_eq!(
            packet.dst_addr(),
            "fd00::2".parse::<Ipv6Addr>().expect("literal")
        );
    }

    proptest! {
        #[test]
        fn ipv6_repr_roundtrip(s in any::<[u8; 16]>(), d in any::<[u8; 16]>(), n in any::<u8>(),
                               h in any::<u8>(), payload_len in 0usize..1400) {
            let repr = V6Repr { src_addr: s.into(), dst_addr: d.into(),
                                next_header: n.into(), hop_limit: h, payload_len };
            let mut buf = vec![0u8; V6_HEADER_LEN + payload_len];
            repr.emit(&mut buf).expect("fits");
            let packet = V6Packet::new_checked(&buf[..]).expect("checks");
            prop_assert_eq!(V6Repr::parse(&packet), repr);
        }
    }
}
