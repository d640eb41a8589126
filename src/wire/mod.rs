//! Zero-copy views over packet bytes, with parse and emit.
//!
//! Each format has a `Packet<T: AsRef<[u8]>>` view with `new_unchecked`, `new_checked` and
//! `check_len`, accessors named after the RFC fields, and a `Repr` that is the validated,
//! owned form (used to build packets in tests, ICMP replies and benches). The views never copy
//! and never allocate; a failed check returns a [`WireError`] whose variant lines up with a
//! drop counter in [`crate::metrics`].
//!
//! What is here:
//!
//! - [`ip`]: the inner IPv4 (RFC 791) and IPv6 (RFC 8200) headers, only the fields the dataplane
//!   reads: version, lengths, addresses, protocol and TTL.
//! - [`flannel`]: flannel's `udp` backend format: the inner IP packet is the whole UDP payload.
//! - [`vxlan`] and [`ethernet`]: RFC 7348 VXLAN as the Linux kernel's `vxlan` device speaks it,
//!   an 8-byte VXLAN header and a 14-byte inner Ethernet header in front of the inner packet.
//! - [`encap`]: the [`Encap`] enum that the forwarding core dispatches on, with its overhead.
//!
//! What is deliberately not here: IP options, fragments reassembly and extension-header
//! walking. The dataplane forwards packets by destination; it does not terminate them.

pub mod encap;
pub mod ethernet;
pub mod flannel;
pub mod icmp;
pub mod ip;
pub mod tcp;
pub mod vxlan;

pub use encap::{Encap, VxlanParams};
pub use ethernet::{Address as MacAddress, EtherType};
pub use ip::{
    InnerIp, IpProtocol, Packet as Ipv4Packet, Repr as Ipv4Repr, V6Packet as Ipv6Packet,
    V6Repr as Ipv6Repr, parse_inner,
};

/// One packet built from two pieces gathered by an iovec: `header_len` bytes of its own header
/// slot (an encapsulation prefix and the packet's rebuilt headers), then
/// `payload[payload_start..payload_start + payload_len]` of the packet it was cut from. What a
/// super-packet is cut into ([`tcp::cut`], `crate::offload::split`) and what the socket and TUN
/// layers gather into one datagram or write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segment {
    /// Bytes used in the segment's header slot.
    pub header_len: usize,
    /// Offset of the payload in the packet it was cut from.
    pub payload_start: usize,
    /// Payload bytes.
    pub payload_len: usize,
}

impl Segment {
    /// Returns the segment's size (header and payload).
    pub const fn len(&self) -> usize {
        self.header_len + self.payload_len
    }

    /// Returns true for a segment with nothing in it.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a packet failed a wire check. Each variant maps onto a drop counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum WireError {
    /// VXLAN flags other than exactly the I flag, or a reserved byte set.
    #[error("bad VXLAN flags or reserved bits")]
    BadFlags,
    /// The IPv4 header checksum does not match (RFC 791, section 3.1).
    #[error("bad IPv4 header checksum")]
    BadChecksum,
    /// The IPv4 IHL field is below 5 words.
    #[error("bad IPv4 header length")]
    BadHeaderLen,
    /// The length field in the header disagrees with the bytes received.
    #[error("length field disagrees with the packet")]
    BadLength,
    /// The IP version nibble is neither 4 nor 6.
    #[error("not an IPv4 or IPv6 packet")]
    BadVersion,
    /// Fewer bytes than the header needs.
    #[error("truncated packet")]
    Truncated,
}
