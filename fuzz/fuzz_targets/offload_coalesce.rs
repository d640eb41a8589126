//! Merging received segments: any sequence of packets is written out whole, never lost or
//! duplicated, and merged packets only claim GSO when their bytes add up.
#![no_main]

use fustian::offload::{Coalescer, VnetHdr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|packets: Vec<Vec<u8>>| {
    let mut c = Coalescer::new();
    let mut bytes_in = 0usize;
    let mut bytes_out = 0usize;
    let mut sink = |h: &VnetHdr, p: &[u8]| -> Result<(), ()> {
        bytes_out += p.len();
        if *h != VnetHdr::NONE {
            assert!(usize::from(h.hdr_len) < p.len());
            assert!(h.gso_size > 0);
        }
        Ok(())
    };
    for p in &packets {
        bytes_in += p.len();
        let _ = c.push(p, &mut sink);
    }
    let _ = c.flush(&mut sink);
    // Merging drops the repeated headers, never payload: at most what came in.
    assert!(bytes_out <= bytes_in);
    let w = c.take_written();
    assert!(w.merged_segments >= 2 * w.merged);
});
