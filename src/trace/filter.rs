//! The trace filter: a small tcpdump-like language, compiled once when a trace attaches.
//!
//! ```text
//! expr    := and ( ("or" | "||") and )*
//! and     := unary ( ("and" | "&&") unary )*
//! unary   := ("not" | "!") unary | "(" expr ")" | primary
//! primary := "host" IP | ("src" | "dst") ["host"] IP | ["src" | "dst"] "net" CIDR
//!          | ["src" | "dst"] "port" N | "proto" (tcp | udp | icmp | N) | tcp | udp | icmp
//!          | "peer" IP | "verdict" (send | deliver | merge | icmp | drop) | "reason" NAME
//! ```
//!
//! `host`, `net` and `port` without `src`/`dst` match either end of the inner packet; `peer`
//! matches the underlay endpoint (the peer sent to, or the sender); `proto icmp` matches ICMP
//! and ICMPv6; `verdict drop` matches every drop, including those answered with ICMP;
//! `verdict deliver` includes packets merged into a super-packet; `reason` takes a `drop_*`
//! counter name without its prefix. An empty filter matches everything. Input is bounded
//! ([`MAX_FILTER_LEN`] bytes, [`MAX_DEPTH`] levels of nesting), so no filter text makes the
//! parser recurse or allocate without bound.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{Event, Verdict};
use crate::metrics::DropReason;

/// The longest filter text accepted.
pub const MAX_FILTER_LEN: usize = 4096;
/// The deepest nesting of `not` and parentheses accepted.
pub const MAX_DEPTH: usize = 64;

/// A filter that cannot be compiled. Each names the token (and its 1-based position among
/// the tokens) where it went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The text ended where more was needed.
    #[error("filter ends after token {position}: expected {expected}")]
    End {
        /// Tokens read.
        position: usize,
        /// What was expected.
        expected: &'static str,
    },
    /// A token is not what the grammar allows there.
    #[error("bad filter token {position} `{token}`: expected {expected}")]
    Token {
        /// The token.
        token: String,
        /// Its position, from 1.
        position: usize,
        /// What was expected.
        expected: &'static str,
    },
    /// The text is longer than [`MAX_FILTER_LEN`] or nests deeper than [`MAX_DEPTH`].
    #[error("filter too long or nested too deeply")]
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Either,
    Src,
    Dst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Deliver,
    Drop,
    Icmp,
    Merge,
    Send,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    All,
    And(Box<Self>, Box<Self>),
    Host(Side, IpAddr),
    Net(Side, IpNet),
    Not(Box<Self>),
    Or(Box<Self>, Box<Self>),
    Peer(IpAddr),
    Port(Side, u16),
    Proto(u8),
    Reason(DropReason),
    Verdict(Kind),
}

/// A compiled filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    expr: Expr,
}

impl Default for Filter {
    fn default() -> Self {
        Self { expr: Expr::All }
    }
}

impl Filter {
    /// Compiles `text`.
    ///
    /// # Errors
    ///
    /// [`FilterError`] naming the offending token.
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        if text.len() > MAX_FILTER_LEN {
            return Err(FilterError::TooLarge);
        }
        let tokens = tokenize(text);
        if tokens.is_empty() {
            return Ok(Self::default());
        }
        let mut p = Parser { tokens, at: 0 };
        let expr = p.or(0)?;
        if let Some(t) = p.peek() {
            return Err(p.bad(t, "`and`, `or` or the end"));
        }
        Ok(Self { expr })
    }

    /// Returns whether `event` matches.
    pub fn matches(&self, event: &Event) -> bool {
        eval(&self.expr, event)
    }
}

fn eval(e: &Expr, ev: &Event) -> bool {
    let flow = ev.flow;
    let addr = |side: Side, f: &dyn Fn(IpAddr) -> bool| {
        flow.is_some_and(|fl| match side {
            Side::Either => f(fl.src) || f(fl.dst),
            Side::Src => f(fl.src),
            Side::Dst => f(fl.dst),
        })
    };
    match e {
        Expr::All => true,
        Expr::And(a, b) => eval(a, ev) && eval(b, ev),
        Expr::Or(a, b) => eval(a, ev) || eval(b, ev),
        Expr::Not(a) => !eval(a, ev),
        Expr::Host(side, ip) => addr(*side, &|a| a == *ip),
        Expr::Net(side, net) => addr(*side, &|a| net.contains(&a)),
        Expr::Port(side, port) => flow.is_some_and(|f| {
            matches!(f.proto, 6 | 17)
                && match side {
                    Side::Either => f.sport == *port || f.dport == *port,
                    Side::Src => f.sport == *port,
                    Side::Dst => f.dport == *port,
                }
        }),
        Expr::Proto(p) => flow.is_some_and(|f| f.proto == *p || (*p == 1 && f.proto == 58)),
        Expr::Peer(ip) => ev.outer.is_some_and(|o| o.ip() == *ip),
        Expr::Reason(r) => ev.verdict.reason() == Some(*r),
        Expr::Verdict(k) => matches!(
            (k, ev.verdict),
            (Kind::Deliver, Verdict::Deliver { .. })
                | (Kind::Merge, Verdict::Deliver { merged: true, .. })
                | (Kind::Drop, Verdict::Drop(_) | Verdict::Icmp(_))
                | (Kind::Icmp, Verdict::Icmp(_))
                | (Kind::Send, Verdict::Send { .. })
        ),
    }
}

/// Splits on white space; parentheses and `!` are tokens of their own.
fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        if c.is_whitespace() || c == '(' || c == ')' || c == '!' {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
        } else {
            word.push(c);
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

struct Parser {
    tokens: Vec<String>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<String> {
        self.tokens.get(self.at).cloned()
    }

    fn next(&mut self, expected: &'static str) -> Result<String, FilterError> {
        let t = self.tokens.get(self.at).cloned().ok_or(FilterError::End {
            position: self.at,
            expected,
        })?;
        self.at += 1;
        Ok(t)
    }

    /// The error for token `t`, which was just peeked (at `self.at`) or taken (before it).
    fn bad(&self, t: String, expected: &'static str) -> FilterError {
        let position = if self.tokens.get(self.at) == Some(&t) {
            self.at + 1
        } else {
            self.at
        };
        FilterError::Token {
            token: t,
            position,
            expected,
        }
    }

    fn or(&mut self, depth: usize) -> Result<Expr, FilterError> {
        let mut left = self.and(depth)?;
        while matches!(self.peek().as_deref(), Some("or" | "||")) {
            self.at += 1;
            let right = self.and(depth)?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Expr, FilterError> {
        let mut left = self.unary(depth)?;
        while matches!(self.peek().as_deref(), Some("and" | "&&")) {
            self.at += 1;
            let right = self.unary(depth)?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, FilterError> {
        if depth >= MAX_DEPTH {
            return Err(FilterError::TooLarge);
        }
        const PRIMARY: &str = "a primitive (host, src, dst, net, port, proto, tcp, udp, icmp, \
                               peer, verdict, reason), `not` or `(`";
        match self.peek().as_deref() {
            Some("not" | "!") => {
                self.at += 1;
                Ok(Expr::Not(Box::new(self.unary(depth + 1)?)))
            }
            Some("(") => {
                self.at += 1;
                let inner = self.or(depth + 1)?;
                let close = self.next("`)`")?;
                if close != ")" {
                    return Err(self.bad(close, "`)`"));
                }
                Ok(inner)
            }
            _ => {
                let t = self.next(PRIMARY)?;
                self.primary(t, PRIMARY)
            }
        }
    }

    fn primary(&mut self, t: String, expected: &'static str) -> Result<Expr, FilterError> {
        Ok(match t.to_ascii_lowercase().as_str() {
            "host" => Expr::Host(Side::Either, self.ip()?),
            "net" => Expr::Net(Side::Either, self.net()?),
            "port" => Expr::Port(Side::Either, self.port()?),
            "src" | "dst" => {
                let side = if t.eq_ignore_ascii_case("src") {
                    Side::Src
                } else {
                    Side::Dst
                };
                match self.peek().as_deref() {
                    Some("host") => {
                        self.at += 1;
                        Expr::Host(side, self.ip()?)
                    }
                    Some("net") => {
                        self.at += 1;
                        Expr::Net(side, self.net()?)
                    }
                    Some("port") => {
                        self.at += 1;
                        Expr::Port(side, self.port()?)
                    }
                    _ => Expr::Host(side, self.ip()?),
                }
            }
            "proto" => {
                let p = self.next("a protocol: tcp, udp, icmp or a number")?;
                match proto(&p) {
                    Some(n) => Expr::Proto(n),
                    None => return Err(self.bad(p, "a protocol: tcp, udp, icmp or a number")),
                }
            }
            "tcp" | "udp" | "icmp" => Expr::Proto(proto(&t).unwrap_or(0)),
            "peer" => Expr::Peer(self.ip()?),
            "verdict" => {
                const KINDS: &str = "a verdict: send, deliver, merge, icmp or drop";
                let k = self.next(KINDS)?;
                Expr::Verdict(match k.to_ascii_lowercase().as_str() {
                    "send" | "sent" => Kind::Send,
                    "deliver" | "delivered" => Kind::Deliver,
                    "merge" | "merged" => Kind::Merge,
                    "icmp" => Kind::Icmp,
                    "drop" | "dropped" => Kind::Drop,
                    _ => return Err(self.bad(k, KINDS)),
                })
            }
            "reason" => {
                const NAME: &str = "a drop reason (a drop_* counter name without `drop_`)";
                let r = self.next(NAME)?;
                let name = r.strip_prefix("drop_").unwrap_or(&r);
                match DropReason::all().find(|d| d.name() == name) {
                    Some(d) => Expr::Reason(d),
                    None => return Err(self.bad(r, NAME)),
                }
            }
            _ => return Err(self.bad(t, expected)),
        })
    }

    fn ip(&mut self) -> Result<IpAddr, FilterError> {
        let t = self.next("an IP address")?;
        t.parse().map_err(|_| self.bad(t, "an IP address"))
    }

    fn net(&mut self) -> Result<IpNet, FilterError> {
        let t = self.next("a CIDR network")?;
        match t.parse::<IpNet>() {
            Ok(n) => Ok(n.trunc()),
            Err(_) => Err(self.bad(t, "a CIDR network")),
        }
    }

    fn port(&mut self) -> Result<u16, FilterError> {
        let t = self.next("a port number")?;
        t.parse().map_err(|_| self.bad(t, "a port number"))
    }
}

fn proto(name: &str) -> Option<u8> {
    match name.to_ascii_lowercase().as_str() {
        "tcp" => Some(6),
        "udp" => Some(17),
        "icmp" => Some(1),
        "icmp6" => Some(58),
        n => n.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use proptest::prelude::*;

    use super::*;
    use crate::trace::{Direction, Flow, SNAPLEN};

    fn event(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, verdict: Verdict) -> Event {
        Event {
            time_ns: 1,
            worker: 0,
            dir: Direction::UdpToTun,
            flow: Some(Flow {
                src: IpAddr::from(src),
                dst: IpAddr::from(dst),
                proto: 6,
                sport,
                dport,
            }),
            len: 60,
            outer: Some(SocketAddr::from(([192, 0, 2, 2], 8285))),
            verdict,
            cap_len: 0,
            bytes: [0; SNAPLEN],
        }
    }

    fn spoofed() -> Event {
        event(
            [10, 244, 9, 9],
            1000,
            [10, 244, 1, 2],
            80,
            Verdict::Drop(DropReason::SpoofedSource),
        )
    }

    #[test]
    fn primitives_match_what_they_name() {
        let e = spoofed();
        for yes in [
            "",
            "host 10.244.9.9",
            "src 10.244.9.9",
            "dst host 10.244.1.2",
            "net 10.244.1.0/24",
            "src net 10.244.9.0/24",
            "port 80",
            "src port 1000",
            "proto tcp",
            "tcp",
            "peer 192.0.2.2",
            "verdict drop",
            "reason spoofed_source",
            "reason drop_spoofed_source",
            "not udp",
            "udp or (tcp and port 80)",
            "!(verdict send) && port 80",
        ] {
            assert!(Filter::parse(yes).expect(yes).matches(&e), "{yes}");
        }
        for no in [
            "host 10.244.1.3",
            "dst 10.244.9.9",
            "dst net 10.244.9.0/24",
            "dst port 1000",
            "udp",
            "icmp",
            "peer 192.0.2.3",
            "verdict send",
            "verdict deliver",
            "reason no_route",
            "tcp and not port 80",
        ] {
            assert!(!Filter::parse(no).expect(no).matches(&e), "{no}");
        }
        let merged = event(
            [10, 244, 2, 2],
            1,
            [10, 244, 1, 2],
            2,
            Verdict::Deliver {
                merged: true,
                segments: 1,
            },
        );
        assert!(
            Filter::parse("verdict deliver")
                .expect("ok")
                .matches(&merged)
        );
        assert!(Filter::parse("verdict merge").expect("ok").matches(&merged));
    }

    #[test]
    fn errors_name_the_token() {
        let cases = [
            ("host nowhere", "`nowhere`"),
            ("port 70000", "`70000`"),
            ("proto sctpx", "`sctpx`"),
            ("reason cosmic_rays", "`cosmic_rays`"),
            ("verdict maybe", "`maybe`"),
            ("tcp udp", "`udp`"),
            ("frobnicate", "`frobnicate`"),
            ("(tcp", "expected `)`"),
            ("tcp and", "ends after token 2"),
            ("net 10.0.0.0/33", "`10.0.0.0/33`"),
        ];
        for (text, want) in cases {
            let err = Filter::parse(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
        assert_eq!(
            Filter::parse(&"(".repeat(100)),
            Err(FilterError::TooLarge),
            "nesting is bounded"
        );
        assert_eq!(
            Filter::parse(&"tcp or ".repeat(1000)),
            Err(FilterError::TooLarge)
        );
    }

    proptest! {
        /// Any text compiles or fails with an error; a compiled filter evaluates.
        #[test]
        fn any_text_parses_or_errors(text in "[a-z0-9./:() !&|_]{0,80}") {
            if let Ok(f) = Filter::parse(&text) {
                let _ = f.matches(&spoofed());
            }
        }

        /// Words of the language in any order never panic, and `not F` is the negation of F.
        #[test]
        fn not_negates(words in proptest::collection::vec(prop_oneof![
            Just("host"), Just("10.244.9.9"), Just("and"), Just("or"), Just("not"),
            Just("("), Just(")"), Just("port"), Just("80"), Just("tcp"), Just("verdict"),
            Just("drop"), Just("src"), Just("net"), Just("10.244.0.0/16"),
        ], 0..12)) {
            let text = words.join(" ");
            if let Ok(f) = Filter::parse(&text) {
                let e = spoofed();
                let not = Filter::parse(&format!("not ({text})"));
                if !text.is_empty() {
                    prop_assert_eq!(not.expect("negation compiles").matches(&e), !f.matches(&e));
                }
            }
        }

        /// A host filter matches exactly the events with that address at either end.
        #[test]
        fn host_matches_either_end(a in any::<[u8; 4]>(), b in any::<[u8; 4]>(), h in any::<[u8; 4]>()) {
            let e = event(a, 1, b, 2, Verdict::Drop(DropReason::NoRoute));
            let f = Filter::parse(&format!("host {}", IpAddr::from(h))).expect("valid");
            prop_assert_eq!(f.matches(&e), h == a || h == b);
        }
    }
}
