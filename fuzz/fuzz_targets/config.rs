//! Config files: any text gives a typed result, never a panic.
#![no_main]

use std::path::Path;

use fustian::config::{NodeConfig, RawNode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("fuzz.toml");
    if let Ok(raw) = RawNode::from_toml(path, text) {
        let _ = NodeConfig::resolve(&RawNode::default(), Some((path, &raw)));
    }
});
