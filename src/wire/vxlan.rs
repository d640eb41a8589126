//! The 8-byte VXLAN header (RFC 7348, section 5).
//!
//! ```text
//!  0               1               2               3
//! |R|R|R|R|I|R|R|R|            Reserved (24 bits)                 |
//! |                VXLAN Network Identifier (VNI)  |   Reserved     |
//! ```
//!
//! RFC 7348 says receivers ignore the reserved bits. The Linux kernel does not: `vxlan_rcv`
//! (drivers/net/vxlan/vxlan_core.c) drops a frame without the I flag and, on a device without
//! extensions (as flannel creates it), a frame with any other flag bit or reserved byte set.
//! fustian accepts exactly what the kernel accepts, so a mixed cluster behaves the same on
//! every node: [`Packet::check_header`] requires flags `0x08` and zero reserved bytes.

use super::WireError;

/// Header length.
pub const HEADER_LEN: usize = 8;

/// The I flag: the VNI field is valid.
pub const FLAG_I: u8 = 0x08;

/// Default UDP port: the Linux kernel's (`vxlan_port = 8472` in vxlan_core.c); IANA assigned
/// 4789 (RFC 7348, section 5).
pub const DEFAULT_PORT: u16 = 8472;

/// Largest VNI: 24 bits.
pub const MAX_VNI: u32 = 0x00ff_ffff;

/// A view of a VXLAN header and what follows.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer after [`Self::check_len`].
    ///
    /// # Errors
    ///
    /// `Truncated` when it is shorter than 8 bytes.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the header fits.
    ///
    /// # Errors
    ///
    /// `Truncated` when it does not.
    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(WireError::Truncated)
        } else {
            Ok(())
        }
    }

    /// Checks flags and reserved fields as the kernel does (see the module docs).
    ///
    /// # Errors
    ///
    /// `BadFlags` when the flags are not exactly `0x08` or a reserved byte is not zero.
    pub fn check_header(&self) -> Result<(), WireError> {
        let d = self.buffer.as_ref();
        if d[0] != FLAG_I || d[1] != 0 || d[2] != 0 || d[3] != 0 || d[7] != 0 {
            return Err(WireError::BadFlags);
        }
        Ok(())
    }

    /// Returns the flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[0]
    }

    /// Returns the 24-bit VNI.
    pub fn vni(&self) -> u32 {
        let d = self.buffer.as_ref();
        u32::from_be_bytes([0, d[4], d[5], d[6]])
    }

    /// Returns the bytes after the header (the inner Ethernet frame).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

/// The validated form of a VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// The VNI (24 bits).
    pub vni: u32,
}

impl Repr {
    /// Parses a checked header.
    ///
    /// # Errors
    ///
    /// `BadFlags` as [`Packet::check_header`].
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self, WireError> {
        packet.check_header()?;
        Ok(Self { vni: packet.vni() })
    }

    /// Writes the header into the first 8 bytes of `buf`: flags `0x08`, the VNI, zeros.
    ///
    /// # Errors
    ///
    /// `Truncated` when `buf` is shorter than 8 bytes.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), WireError> {
        let h = buf.get_mut(..HEADER_LEN).ok_or(WireError::Truncated)?;
        let vni = (self.vni & MAX_VNI).to_be_bytes();
        h.copy_from_slice(&[FLAG_I, 0, 0, 0, vni[1], vni[2], vni[3], 0]);
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::wire::ethernet::{self, Address, EtherType, Frame};
    use crate::wire::ip::parse_inner;

    /// UDP 10.244.1.0:40000 -> 10.244.2.2:5201, payload "fustian vxlan", as the UDP payload a
    /// kernel `vxlan` device (VNI 1, dstport 8472, nolearning, programmed as flannel does, MAC
    /// 2a:89:75:16:96:aa) sent to the peer VTEP ee:58:53:ba:43:f5 at 192.0.2.2 (Linux 6.18,
    /// received with a UDP socket on 192.0.2.2:8472), 63 bytes.
    pub(crate) const KERNEL_FRAME: [u8; 63] = [
        0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0xee, 0x58, 0x53, 0xba, 0x43, 0xf5, 0x2a,
        0x89, 0x75, 0x16, 0x96, 0xaa, 0x08, 0x00, 0x45, 0x00, 0x00, 0x29, 0x5e, 0xa8, 0x40, 0x00,
        0x40, 0x11, 0xc3, 0x32, 0x0a, 0xf4, 0x01, 0x00, 0x0a, 0xf4, 0x02, 0x02, 0x9c, 0x40, 0x14,
        0x51, 0x00, 0x15, 0x19, 0x10, 0x66, 0x75, 0x73, 0x74, 0x69, 0x61, 0x6e, 0x20, 0x76, 0x78,
        0x6c, 0x61, 0x6e,
    ];

    #[test]
    fn decodes_a_kernel_frame() {
        let p = Packet::new_checked(&KERNEL_FRAME[..]).expect("fits");
        assert_eq!(Repr::parse(&p), Ok(Repr { vni: 1 }));
        assert_eq!(p.flags(), FLAG_I);
        let eth = Frame::new_checked(p.payload()).expect("fits");
        assert_eq!(
            eth.dst_addr(),
            "ee:58:53:ba:43:f5".parse::<Address>().expect("mac")
        );
        assert_eq!(
            eth.src_addr(),
            "2a:89:75:16:96:aa".parse::<Address>().expect("mac")
        );
        assert_eq!(eth.ethertype(), EtherType::Ipv4);
        let inner = parse_inner(eth.payload()).expect("valid inner packet");
        assert_eq!(inner.dst, std::net::IpAddr::from([10, 244, 2, 2]));
    }

    #[test]
    fn emits_the_kernel_header() {
        let mut out = [0u8; 22];
        Repr { vni: 1 }.emit(&mut out).expect("fits");
        let eth = ethernet::Repr {
            dst_addr: "ee:58:53:ba:43:f5".parse().expect("mac"),
            src_addr: "2a:89:75:16:96:aa".parse().expect("mac"),
            ethertype: EtherType::Ipv4,
        };
        eth.emit(&mut out[8..]).expect("fits");
        assert_eq!(out, KERNEL_FRAME[..22]);
    }

    #[test]
    fn rejects_what_the_kernel_rejects() {
        for (at, value) in [(0, 0x00), (0, 0x0c), (0, 0x88), (1, 1), (3, 1), (7, 1)] {
            let mut f = KERNEL_FRAME;
            f[at] = value;
            let p = Packet::new_checked(&f[..]).expect("fits");
            assert_eq!(
                Repr::parse(&p),
                Err(WireError::BadFlags),
                "byte {at} = {value:#x}"
            );
        }
        assert_eq!(
            Packet::new_checked(&KERNEL_FRAME[..7]).err(),
            Some(WireError::Truncated)
        );
    }

    proptest! {
        #[test]
        fn roundtrip(vni in 0u32..=MAX_VNI) {
            let mut buf = [0u8; HEADER_LEN];
            Repr { vni }.emit(&mut buf).expect("fits");
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&buf[..]).expect("fits")), Ok(Repr { vni }));
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(p) = Packet::new_checked(&data[..]) {
                let _ = Repr::parse(&p);
                let _ = p.payload();
            }
        }
    }
}
