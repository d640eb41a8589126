//! Merging received segments: any sequence of packets is written out whole, never lost or
//! duplicated, merged packets only claim GSO when their bytes add up, and a handed-out buffer
//! is never handed out again before it is released.
#![no_main]

use fustian::offload::coalesce::Emit;
use fustian::offload::{Coalescer, VnetHdr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<Vec<u8>>, Vec<bool>)| {
    let (packets, releases) = input;
    let mut c = Coalescer::new();
    let mut bytes_in = 0usize;
    let mut bytes_out = 0usize;
    let mut emits = Vec::new();
    let mut held: Vec<usize> = Vec::new();
    let mut releases = releases.into_iter().cycle();
    let mut take = |c: &mut Coalescer, emits: &mut Vec<Emit>, input: &[u8], held: &mut Vec<usize>| {
        for e in emits.drain(..) {
            match e {
                Emit::Input => bytes_out += input.len(),
                Emit::Buffer(k) => {
                    assert!(!held.contains(&k), "buffer {k} handed out twice");
                    held.push(k);
                    let (h, p) = c.buffer(k);
                    assert!(!p.is_empty());
                    bytes_out += p.len();
                    if *h != VnetHdr::NONE {
                        assert!(usize::from(h.hdr_len) < p.len());
                        assert!(h.gso_size > 0);
                    }
                }
            }
        }
    };
    for p in &packets {
        bytes_in += p.len();
        c.push(p, &mut |e| emits.push(e));
        take(&mut c, &mut emits, p, &mut held);
        if releases.next().unwrap_or(true) {
            c.release();
            held.clear();
        }
    }
    c.flush(&mut |e| emits.push(e));
    take(&mut c, &mut emits, &[], &mut held);
    // Merging drops the repeated headers, never payload: at most what came in.
    assert!(bytes_out <= bytes_in);
    let w = c.take_written();
    assert!(w.merged_segments >= 2 * w.merged);
});
