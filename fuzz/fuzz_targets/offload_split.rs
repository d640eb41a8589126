//! Cutting TUN super-packets: any virtio header and packet bytes give a typed result; every
//! segment's header fits its slot and its payload lies inside the packet.
#![no_main]

use fustian::offload::split::{complete_checksum, split};
use fustian::offload::{HEADER_STRIDE, MAX_SEGMENTS, Segment, VnetHdr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: ([u8; 10], u16, u8, Vec<u8>)| {
    let (vnet, max_len, prefix_len, mut packet) = input;
    let hdr = VnetHdr::parse(&vnet).expect("10 bytes");
    let prefix = vec![0x5a; usize::from(prefix_len % 40)];
    let mut headers = vec![0u8; MAX_SEGMENTS * HEADER_STRIDE];
    let mut segs = vec![Segment::default(); MAX_SEGMENTS];
    if let Ok(n) = split(&hdr, &packet, usize::from(max_len), &prefix, &mut headers, &mut segs) {
        for s in &segs[..n] {
            assert!(s.header_len <= HEADER_STRIDE);
            assert!(s.payload_start + s.payload_len <= packet.len());
            assert!(s.len() - prefix.len() <= usize::from(max_len));
        }
    }
    let _ = complete_checksum(&hdr, &mut packet);
});
