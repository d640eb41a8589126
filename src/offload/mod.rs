//! Offloads: moving 64 KiB super-packets across both kernel boundaries instead of MTU-sized
//! packets.
//!
//! | where | what fustian asks for | kernel | what fustian does in userspace |
//! |---|---|---|---|
//! | TUN read | `IFF_VNET_HDR`, `TUNSETOFFLOAD` CSUM+TSO4+TSO6 (+USO4/6) | 2.6.27 (USO 6.2) | [`split`]: one super-packet into MTU-sized segments, headers rebuilt, payload untouched |
//! | UDP send | `UDP_SEGMENT` (GSO) | 4.18 | all segments of a super-packet (up to 64, 64 KiB) in one `sendmsg` |
//! | UDP receive | `UDP_GRO` | 5.0 (probe 5.12) | [`gro_stride`]: a coalesced read cut back into datagrams, each judged on its own |
//! | TUN write | `IFF_VNET_HDR` | 2.6.27 | [`coalesce`]: a flow's consecutive TCP segments merged into one super-packet |
//!
//! Each is probed at start and can be turned off (`--offload off`); a send that fails with
//! `EIO` (the egress device cannot checksum) turns GSO off for the rest of the run.

pub mod coalesce;
pub mod split;
pub mod vnet;

pub use coalesce::Coalescer;
pub use split::{HEADER_STRIDE, MAX_SEGMENTS, Segment};
pub use vnet::{VNET_HDR_LEN, VnetHdr};

/// The offloads one worker uses, decided at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offloads {
    /// The TUN device has `IFF_VNET_HDR` and TSO: reads may be super-packets and every read and
    /// write carries a [`VnetHdr`].
    pub tun: bool,
    /// The TUN device also has USO (UDP super-packets).
    pub tun_uso: bool,
    /// Sends may carry `UDP_SEGMENT`.
    pub gso: bool,
    /// The socket has `UDP_GRO`: a read may hold several datagrams of one size.
    pub gro: bool,
}

impl Offloads {
    /// Returns a short description for logs and `fustian show`: `tso,uso,gso,gro` or `off`.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = [
            (self.tun, "tso"),
            (self.tun_uso, "uso"),
            (self.gso, "gso"),
            (self.gro, "gro"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if names.is_empty() {
            "off".to_owned()
        } else {
            names.join(",")
        }
    }
}

/// Returns how to cut a datagram read with a `UDP_GRO` segment size of `gso_size`: every
/// `stride` bytes is one datagram, the last may be shorter (the kernel's GRO only merges
/// datagrams of one size, and a shorter one ends the run: `udp_gro_receive_segment`,
/// net/ipv4/udp_offload.c). Every such read is cut at `gso_size`, whatever its datagrams hold,
/// so each is judged on its own and a malformed one costs only itself.
///
/// The one read kept whole is a kernel `vxlan` peer's super-frame (`super_frame`, VXLAN only):
/// a single frame whose inner packet spans the whole read, which carries its inner MSS as the
/// segment size (see `wire::tcp`). A `udp` peer never sends one, so in `udp` mode
/// (`super_frame` false) every read longer than `gso_size` is cut.
pub fn gro_stride(datagram: &[u8], gso_size: usize, encap_len: usize, super_frame: bool) -> usize {
    if gso_size == 0 || datagram.len() <= gso_size {
        return datagram.len();
    }
    if super_frame && spans(datagram, encap_len) {
        return datagram.len();
    }
    gso_size
}

/// Returns how many datagrams a socket read of `len` bytes with `UDP_GRO` segment size
/// `gso_size` (0: none) holds, as [`gro_stride`] would cut it without looking inside: for
/// counting a read that is dropped whole (oversize, no sender address) once per datagram.
pub const fn datagrams_in(len: usize, gso_size: usize) -> usize {
    if gso_size == 0 || len <= gso_size {
        1
    } else {
        len.div_ceil(gso_size)
    }
}

/// True when the inner IP packet after `encap_len` bytes says it ends exactly where the
/// datagram ends.
fn spans(datagram: &[u8], encap_len: usize) -> bool {
    let Some(inner) = datagram.get(encap_len..) else {
        return false;
    };
    let inner_len = match inner.first().map(|b| b >> 4) {
        Some(4) if inner.len() >= 4 => usize::from(u16::from_be_bytes([inner[2], inner[3]])),
        Some(6) if inner.len() >= 6 => 40 + usize::from(u16::from_be_bytes([inner[4], inner[5]])),
        _ => return false,
    };
    inner_len == inner.len()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn stride_cuts_every_gro_read_but_a_super_frame() {
        // Three 1000-byte `udp` datagrams: inner IPv4 total length 1000.
        let mut d = vec![0u8; 2600];
        for at in [0, 1000, 2000] {
            d[at] = 0x45;
            d[at + 2..at + 4].copy_from_slice(&1000u16.to_be_bytes());
        }
        assert_eq!(gro_stride(&d, 1000, 0, false), 1000);
        // The first datagram is garbage: the read is cut all the same.
        d[..1000].fill(0);
        assert_eq!(gro_stride(&d, 1000, 0, false), 1000);
        // Even one that claims to span the read: a `udp` peer sends no super-frames.
        d[0] = 0x45;
        d[2..4].copy_from_slice(&2600u16.to_be_bytes());
        assert_eq!(gro_stride(&d, 1000, 0, false), 1000);
        // A VXLAN frame: 22 bytes of encapsulation then the inner packet.
        let mut v = vec![0u8; 3000];
        v[22] = 0x45;
        v[24..26].copy_from_slice(&978u16.to_be_bytes());
        assert_eq!(gro_stride(&v, 1000, 22, true), 1000);
        v[22] = 0;
        assert_eq!(
            gro_stride(&v, 1000, 22, true),
            1000,
            "malformed first frame"
        );
        v[..22].fill(0xff);
        assert_eq!(gro_stride(&v, 1000, 22, true), 1000, "malformed header");
        // A super-frame: the inner packet is the whole datagram, the size is its MSS.
        v[22] = 0x45;
        v[24..26].copy_from_slice(&2978u16.to_be_bytes());
        assert_eq!(gro_stride(&v, 1398, 22, true), 3000);
        v[22] = 0x60;
        v[26..28].copy_from_slice(&2938u16.to_be_bytes());
        assert_eq!(gro_stride(&v, 1398, 22, true), 3000, "IPv6 super-frame");
        assert_eq!(gro_stride(&v, 0, 22, true), 3000);
        assert_eq!(gro_stride(&v[..500], 1000, 22, true), 500);
        assert_eq!(gro_stride(&v[..10], 4, 22, true), 4);
    }

    #[test]
    fn counts_the_datagrams_of_a_read() {
        assert_eq!(datagrams_in(0, 0), 1);
        assert_eq!(datagrams_in(0, 1000), 1);
        assert_eq!(datagrams_in(2600, 0), 1);
        assert_eq!(datagrams_in(1000, 1000), 1);
        assert_eq!(datagrams_in(2600, 1000), 3);
        assert_eq!(datagrams_in(3000, 1000), 3);
    }

    #[test]
    fn describes_itself() {
        assert_eq!(Offloads::default().describe(), "off");
        let all = Offloads {
            tun: true,
            tun_uso: false,
            gso: true,
            gro: true,
        };
        assert_eq!(all.describe(), "tso,gso,gro");
    }

    proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300),
                               size in 0usize..400, encap in 0usize..30) {
            for super_frame in [false, true] {
                let s = gro_stride(&data, size, encap, super_frame);
                prop_assert!(s == data.len() || s == size);
                prop_assert!(s > 0 || data.is_empty());
                if !super_frame && size > 0 {
                    prop_assert!(s <= size, "a `udp` read is always cut");
                }
                prop_assert_eq!(
                    data.chunks(s.max(1)).count().max(1),
                    if s == data.len() { 1 } else { datagrams_in(data.len(), size) }
                );
            }
        }
    }
}
