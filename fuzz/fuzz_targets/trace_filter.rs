//! Trace filters: any text compiles or gives an error naming a token, never a panic or
//! unbounded recursion; a compiled filter evaluates any event, and `not` negates it.
//!
//! Input: the filter text, a NUL byte, then the bytes the event's flow is read from.
#![no_main]

use fustian::metrics::DropReason;
use fustian::trace::{Direction, Event, Filter, Flow, SNAPLEN, Verdict};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cut = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let (text, packet) = data.split_at(cut);
    let Ok(text) = std::str::from_utf8(text) else { return };
    let Ok(filter) = Filter::parse(text) else { return };
    let verdicts = [
        Verdict::Send { subnet: None, segments: 2 },
        Verdict::Deliver { merged: true, segments: 1 },
        Verdict::Drop(DropReason::SpoofedSource),
        Verdict::Icmp(DropReason::NoRoute),
    ];
    for verdict in verdicts {
        let event = Event {
            time_ns: 0,
            worker: 0,
            dir: Direction::UdpToTun,
            flow: Flow::parse(packet),
            len: 0,
            outer: Some(([192, 0, 2, 2], 8285).into()),
            verdict,
            cap_len: 0,
            bytes: [0; SNAPLEN],
        };
        let matched = filter.matches(&event);
        if !text.trim().is_empty()
            && let Ok(not) = Filter::parse(&format!("not ({text})"))
        {
            assert_eq!(not.matches(&event), !matched, "{text}");
        }
    }
});
