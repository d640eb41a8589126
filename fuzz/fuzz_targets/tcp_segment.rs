//! Cutting oversized inner TCP packets: any bytes give a typed result; every segment fits.
#![no_main]

use fustian::wire::tcp::segment;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u16, Vec<u8>)| {
    let (max_len, packet) = input;
    let max_len = usize::from(max_len % 2048);
    let mut scratch = vec![0u8; 2048];
    let _ = segment(&packet, max_len, &mut scratch, |seg| assert!(seg.len() <= max_len));
});
