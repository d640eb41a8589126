//! HTTP request heads: any bytes give a verdict without panicking; fed in two pieces, the
//! parser reaches the verdict of one whole parse; a parsed head lies within the input and the
//! head limit, and its target is a path unless its method is neither GET nor HEAD (`OPTIONS *`,
//! `CONNECT host:port`).
#![no_main]

use fustian::http::{HEAD_LIMIT, HeadParser, Method, parse_head};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let whole = parse_head(data);
    if let Ok(Some(h)) = &whole {
        assert!(h.head_len <= data.len().min(HEAD_LIMIT));
        assert!(h.target.starts_with('/') || h.method == Method::Other);
    }
    let cut = usize::from(cut) * data.len() / 255;
    let mut parser = HeadParser::new();
    let first = parser.advance(&data[..cut]);
    if first == Ok(None) {
        assert_eq!(parser.advance(data), whole);
    } else {
        assert_eq!(first, whole);
    }
});
