//! The inner Ethernet II header that VXLAN carries (IEEE 802.3, 14 bytes, no VLAN tag).

use super::WireError;

/// Header length: destination 6 + source 6 + EtherType 2.
pub const HEADER_LEN: usize = 14;

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(pub [u8; 6]);

impl Address {
    /// The broadcast address.
    pub const BROADCAST: Self = Self([0xff; 6]);

    /// Returns true for group (multicast and broadcast) addresses: the I/G bit is set.
    pub const fn is_multicast(self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// Returns true for locally administered addresses: the U/L bit is set.
    pub const fn is_local(self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// Returns a random locally administered unicast address built from `random` bytes, as
    /// flannel's `pkg/mac` does: clear the group bit, set the local bit.
    pub const fn local_unicast(mut random: [u8; 6]) -> Self {
        random[0] = (random[0] & 0xfe) | 0x02;
        Self(random)
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl std::str::FromStr for Address {
    type Err = String;

    /// Parses the six-byte forms Go's `net.ParseMAC` reads (flanneld decodes `VtepMAC` with
    /// it): `02:aa:bb:cc:dd:ee`, `02-aa-bb-cc-dd-ee` (one separator throughout) and
    /// `02aa.bbcc.ddee`, hex digits of either case and nothing else (no sign, no blanks).
    /// Go's 8- and 20-byte link-layer addresses are not Ethernet addresses and are refused.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const FORMS: &str =
            "expected six hex bytes like 02:aa:bb:cc:dd:ee, 02-aa-bb-cc-dd-ee or 02aa.bbcc.ddee";
        let b = s.as_bytes();
        let (digits, width, sep) = match (b.len(), b.get(2), b.get(4)) {
            (17, Some(&sep @ (b':' | b'-')), _) => (6, 2, sep),
            (14, _, Some(b'.')) => (3, 4, b'.'),
            _ => return Err(FORMS.into()),
        };
        let mut out = [0u8; 6];
        for (i, group) in b.split(|&c| c == sep).enumerate() {
            if i >= digits || group.len() != width || !group.iter().all(u8::is_ascii_hexdigit) {
                return Err(FORMS.into());
            }
            for (j, pair) in group.chunks_exact(2).enumerate() {
                let text = std::str::from_utf8(pair).map_err(|_| FORMS.to_owned())?;
                out[i * width / 2 + j] =
                    u8::from_str_radix(text, 16).map_err(|_| format!("`{text}` is not hex"))?;
            }
        }
        Ok(Self(out))
    }
}

/// EtherType values the dataplane names (IEEE 802 numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EtherType {
    /// ARP, 0x0806.
    Arp,
    /// IPv4, 0x0800.
    Ipv4,
    /// IPv6, 0x86dd.
    Ipv6,
    /// Anything else.
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(v: u16) -> Self {
        match v {
            0x0800 => Self::Ipv4,
            0x0806 => Self::Arp,
            0x86dd => Self::Ipv6,
            other => Self::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(v: EtherType) -> Self {
        match v {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Unknown(other) => other,
        }
    }
}

mod field {
    use std::ops::Range;
    pub(super) const DESTINATION: Range<usize> = 0..6;
    pub(super) const SOURCE: Range<usize> = 6..12;
    pub(super) const ETHERTYPE: Range<usize> = 12..14;
}

/// A view of an Ethernet II frame.
#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer of at least [`HEADER_LEN`] bytes.
    ///
    /// # Errors
    ///
    /// `Truncated` when it is shorter.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let f = Self::new_unchecked(buffer);
        f.check_len()?;
        Ok(f)
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

    /// Returns the destination address.
    pub fn dst_addr(&self) -> Address {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::DESTINATION]);
        Address(a)
    }

    /// Returns the source address.
    pub fn src_addr(&self) -> Address {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::SOURCE]);
        Address(a)
    }

    /// Returns the EtherType.
    pub fn ethertype(&self) -> EtherType {
        let d = &self.buffer.as_ref()[field::ETHERTYPE];
        EtherType::from(u16::from_be_bytes([d[0], d[1]]))
    }

    /// Returns the bytes after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

/// The validated form of an Ethernet II header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Destination.
    pub dst_addr: Address,
    /// Source.
    pub src_addr: Address,
    /// EtherType.
    pub ethertype: EtherType,
}

impl Repr {
    /// Reads a checked frame's header.
    pub fn parse<T: AsRef<[u8]>>(frame: &Frame<T>) -> Self {
        Self {
            dst_addr: frame.dst_addr(),
            src_addr: frame.src_addr(),
            ethertype: frame.ethertype(),
        }
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `buf`.
    ///
    /// # Errors
    ///
    /// `Truncated` when `buf` is shorter.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), WireError> {
        let h = buf.get_mut(..HEADER_LEN).ok_or(WireError::Truncated)?;
        h[field::DESTINATION].copy_from_slice(&self.dst_addr.0);
        h[field::SOURCE].copy_from_slice(&self.src_addr.0);
        h[field::ETHERTYPE].copy_from_slice(&u16::from(self.ethertype).to_be_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_and_prints_macs() {
        let a: Address = "02:aa:0b:cc:dd:ee".parse().expect("valid");
        assert_eq!(a.to_string(), "02:aa:0b:cc:dd:ee");
        assert!(a.is_local() && !a.is_multicast());
        assert!(Address::BROADCAST.is_multicast());
        for bad in [
            "",
            "02:aa",
            "02:aa:bb:cc:dd:ee:ff",
            "0g:aa:bb:cc:dd:ee",
            "2:aa:bb:cc:dd:ee",
            // What Go's net.ParseMAC refuses too: a sign, blanks, mixed separators, a missing
            // or extra group, and its 8- and 20-byte addresses, which are not Ethernet's.
            "+2:aa:bb:cc:dd:ee",
            "02:aa:bb:cc:dd:+e",
            " 2:aa:bb:cc:dd:ee",
            "02:aa:bb:cc:dd:e ",
            "02:aa-bb:cc:dd:ee",
            "02-aa-bb-cc-dd:ee",
            "02aa.bbcc.ddee.",
            "02aa.bbcc:ddee",
            "02a.abbcc.ddee",
            "02aa.bbcc.dd+e",
            "02:aa:bb:cc:dd:ee:ff:00",
            "0200.5e10.0000.0001",
        ] {
            assert!(bad.parse::<Address>().is_err(), "{bad}");
        }
        // Go's other six-byte forms, either case.
        for same in ["02-AA-0b-cc-dd-EE", "02aa.0bcc.ddee", "02AA.0BCC.DDEE"] {
            assert_eq!(same.parse::<Address>(), Ok(a), "{same}");
        }
        let m = Address::local_unicast([0xff; 6]);
        assert!(m.is_local() && !m.is_multicast());
    }

    #[test]
    fn truncated_frames() {
        assert_eq!(
            Frame::new_checked(&[0u8; 13][..]).err(),
            Some(WireError::Truncated)
        );
        assert!(Frame::new_checked(&[0u8; 14][..]).is_ok());
    }

    proptest! {
        /// Any text parses to an address or is refused, and every address reads back from
        /// each of its three printed forms.
        #[test]
        fn mac_text_is_judged(text in "\\PC{0,20}", mac in any::<[u8; 6]>()) {
            let _ = text.parse::<Address>();
            let a = Address(mac);
            let colon = a.to_string();
            prop_assert_eq!(colon.parse::<Address>(), Ok(a));
            prop_assert_eq!(colon.replace(':', "-").parse::<Address>(), Ok(a));
            let hex = colon.replace(':', "");
            let dotted = format!("{}.{}.{}", &hex[..4], &hex[4..8], &hex[8..]);
            prop_assert_eq!(dotted.to_uppercase().parse::<Address>(), Ok(a));
        }

        #[test]
        fn roundtrip(d in any::<[u8; 6]>(), s in any::<[u8; 6]>(), t in any::<u16>()) {
            let repr = Repr { dst_addr: Address(d), src_addr: Address(s), ethertype: t.into() };
            let mut buf = [0u8; HEADER_LEN];
            repr.emit(&mut buf).expect("fits");
            prop_assert_eq!(Repr::parse(&Frame::new_checked(&buf[..]).expect("fits")), repr);
        }
    }
}
