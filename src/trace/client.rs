//! `fustian trace`: attaches to a running node's trace socket and prints its verdicts.
//!
//! The filter is compiled here first, so a bad one is an error before anything connects, and
//! again by the node, which is what selects the events (only matching ones cross the socket,
//! and only they reach `--pcap`).
//!
//! The node is checked before it is believed: a socket served by a user other than root or the
//! one running the client is refused (a shared `--trace-socket` directory, a stale path another
//! user re-bound). And nothing it sends reaches the terminal or the pcapng comments raw: every
//! string is escaped as log text is ([`crate::sys::one_line`]), and a verdict or reason that is
//! not one fustian knows is shown escaped rather than as sent.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read as _, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::pcap::PcapWriter;
use super::server::{Request, SOCKET_DIR};
use super::{Direction, Filter, FilterError, Line, proto_name, unhex};
use crate::metrics::DropReason;

/// How often the client looks at Ctrl-C and the deadline while no line arrives.
const POLL: Duration = Duration::from_millis(100);
/// The longest line read from the node.
const MAX_LINE: usize = 64 * 1024;
/// The verdict names a node sends ([`super::Verdict::name`]).
const VERDICTS: [&str; 5] = ["send", "deliver", "merge", "icmp", "drop"];

/// What `fustian trace` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct TraceOptions {
    /// The node's socket; `None`: the only one in `/run/fustian`.
    pub socket: Option<PathBuf>,
    /// The filter text.
    pub filter: String,
    /// Print JSON lines instead of text.
    pub json: bool,
    /// Also write the packets as pcapng here.
    pub pcap: Option<PathBuf>,
    /// Stop after this many events.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

/// Why a trace could not run.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The filter does not compile.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// No socket was given and none, or several, are in `/run/fustian`.
    #[error("{0}")]
    NoSocket(String),
    /// Connecting failed.
    #[error("cannot attach to {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The socket is served by a user other than root or the one running the client.
    #[error(
        "refusing to attach to {path}: it is served by uid {uid}, neither root nor this user \
         (another user may have bound a socket at that path)"
    )]
    Untrusted {
        /// The socket.
        path: PathBuf,
        /// Who serves it.
        uid: u32,
    },
    /// The node refused the trace (its reason, escaped).
    #[error("the node refused the trace: {0}")]
    Refused(String),
    /// Reading from the node, or writing the output or the pcapng file, failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
}

/// How a trace ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events received.
    pub events: u64,
    /// Events the node lost (its rings were full).
    pub lost: u64,
}

/// Returns the socket to attach to: `given`, or the only socket in `/run/fustian`.
///
/// # Errors
///
/// [`TraceError::NoSocket`] when none or several are there.
pub fn find_socket(given: Option<&Path>) -> Result<PathBuf, TraceError> {
    if let Some(p) = given {
        return Ok(p.to_owned());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(SOCKET_DIR)
        .map(|dir| {
            dir.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(TraceError::NoSocket(format!(
            "no node serves traces in {SOCKET_DIR} (is one running on this host, and are you \
             root?); give --socket"
        ))),
        _ => Err(TraceError::NoSocket(format!(
            "several nodes serve traces ({}); choose one with --socket",
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Attaches, prints events to `out` until `stop` is set, the node goes away, or `--count` /
/// `--duration` is reached, and returns what was seen. Notes for the person watching go to
/// `notes`: that the node accepted the trace, and the lost count whenever it grows (at most
/// once a second).
///
/// # Errors
///
/// [`TraceError`].
pub fn run(
    opts: &TraceOptions,
    out: &mut dyn Write,
    notes: &mut dyn Write,
    stop: &AtomicBool,
) -> Result<Summary, TraceError> {
    Filter::parse(&opts.filter)?;
    let path = find_socket(opts.socket.as_deref())?;
    let stream = UnixStream::connect(&path).map_err(|source| TraceError::Connect {
        path: path.clone(),
        source,
    })?;
    let owner = crate::sys::peer_uid(&stream).map_err(|source| TraceError::Connect {
        path: path.clone(),
        source,
    })?;
    if !server_trusted(owner, crate::sys::euid()) {
        return Err(TraceError::Untrusted { path, uid: owner });
    }
    let io_err = |what| move |source| TraceError::Io { what, source };
    let request = Request {
        filter: opts.filter.clone(),
        packets: opts.pcap.is_some(),
    };
    let mut line = serde_json::to_vec(&request)
        .map_err(|e| io_err("encode the request")(io::Error::other(e)))?;
    line.push(b'\n');
    if let Err(e) = (&stream).write_all(&line) {
        // A node refusing the connection (too many open) may have said why and closed first.
        return Err(refusal_left(&stream).unwrap_or_else(|| io_err("send the filter")(e)));
    }
    stream
        .set_read_timeout(Some(POLL))
        .map_err(io_err("set a read timeout"))?;
    let mut pcap = match &opts.pcap {
        Some(p) => {
            let file = std::fs::File::create(p).map_err(io_err("create the pcapng file"))?;
            Some(
                PcapWriter::new(io::BufWriter::new(file))
                    .map_err(io_err("write the pcapng file"))?,
            )
        }
        None => None,
    };
    let deadline = opts.duration.map(|d| Instant::now() + d);
    let mut reader = BufReader::new(&stream);
    let mut buf = Vec::new();
    let mut summary = Summary::default();
    let mut attached = false;
    let mut noted_lost = (0, Instant::now());
    loop {
        if stop.load(Ordering::Relaxed)
            || deadline.is_some_and(|d| Instant::now() >= d)
            || opts.count.is_some_and(|n| summary.events >= n)
        {
            break;
        }
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) if buf.ends_with(b"\n") => {
                let parsed = serde_json::from_slice::<Line>(&buf);
                buf.clear();
                let Ok(mut l) = parsed else { continue };
                if let Some(e) = l.error {
                    return Err(TraceError::Refused(crate::sys::one_line(&e).into_owned()));
                }
                if !attached {
                    attached = true;
                    let _ = writeln!(notes, "tracing on {} (Ctrl-C to stop)", path.display());
                }
                if let Some(lost) = l.lost {
                    summary.lost = lost;
                    if lost > noted_lost.0 && noted_lost.1.elapsed() >= Duration::from_secs(1) {
                        let _ = writeln!(notes, "lost {lost} events so far (the reader is slow)");
                        noted_lost = (lost, Instant::now());
                    }
                    continue;
                }
                summary.events += 1;
                if let Some(w) = &mut pcap {
                    let bytes = l.packet.as_deref().and_then(unhex).unwrap_or_default();
                    w.packet(
                        l.time_ns.unwrap_or(0),
                        l.len.unwrap_or(0),
                        &bytes,
                        &verdict_text(&l),
                    )
                    .map_err(io_err("write the pcapng file"))?;
                }
                l.packet = None;
                let text = if opts.json {
                    crate::sys::printable_json(&serde_json::to_string(&l).unwrap_or_default())
                        .into_owned()
                } else {
                    render(&l)
                };
                writeln!(out, "{text}").map_err(io_err("write the output"))?;
            }
            Ok(_) if buf.len() > MAX_LINE => buf.clear(),
            Ok(_) => {}
            Err(e) if super::try_again(&e) => {
                if buf.len() > MAX_LINE {
                    buf.clear();
                }
            }
            Err(e) => return Err(io_err("read from the node")(e)),
        }
    }
    out.flush().map_err(io_err("write the output"))?;
    if let Some(w) = pcap {
        w.finish().map_err(io_err("write the pcapng file"))?;
    }
    Ok(summary)
}

/// Whether a trace socket served by `peer_uid` may be believed by a client running as
/// `my_euid`: only root's, or the client's own user's, can be a node's.
pub const fn server_trusted(peer_uid: u32, my_euid: u32) -> bool {
    peer_uid == 0 || peer_uid == my_euid
}

/// `text` from the node as shown: as sent when `known`, else with every control character and
/// bidirectional override escaped, so it cannot end the line, move the cursor or hide text.
fn shown(text: &str, known: bool) -> std::borrow::Cow<'_, str> {
    if known {
        std::borrow::Cow::Borrowed(text)
    } else {
        crate::sys::one_line(text)
    }
}

/// The verdict part of a line: `send peer 10.244.2.0/24 (3 segments)`, `drop spoofed_source`,
/// `deliver`, `merge`, `icmp no_route`. Also the pcapng packet comment. A verdict or reason
/// that is not a known name is shown escaped.
pub fn verdict_text(l: &Line) -> String {
    let mut s = l.verdict.as_deref().map_or_else(
        || "?".to_owned(),
        |v| shown(v, VERDICTS.contains(&v)).into_owned(),
    );
    if let Some(r) = &l.reason {
        let known = DropReason::all().any(|k| k.name() == r);
        let _ = write!(s, " {}", shown(r, known));
    }
    if let Some(net) = &l.peer_subnet {
        let _ = write!(s, " peer {net}");
    }
    if let Some(n) = l.segments {
        let _ = write!(s, " ({n} segments)");
    }
    if let Some(o) = l.outer {
        let way = if l.dir == Some(Direction::TunToUdp) {
            "to"
        } else {
            "from"
        };
        let _ = write!(s, " {way} {o}");
    }
    s
}

/// One event as a line of text:
/// `12:00:01.000123 w0 udp>tun 10.244.9.9:1000 > 10.244.1.2:80 tcp len 60 drop spoofed_source from 192.0.2.2:8285`.
pub fn render(l: &Line) -> String {
    let mut s = String::new();
    if let Some(t) = l.time_ns {
        let secs = t / 1_000_000_000;
        let day = secs % 86_400;
        let _ = write!(
            s,
            "{:02}:{:02}:{:02}.{:06} ",
            day / 3600,
            day / 60 % 60,
            day % 60,
            t % 1_000_000_000 / 1000
        );
    }
    if let Some(w) = l.worker {
        let _ = write!(s, "w{w} ");
    }
    let _ = write!(
        s,
        "{} ",
        match l.dir {
            Some(Direction::TunToUdp) => "tun>udp",
            Some(Direction::UdpToTun) => "udp>tun",
            None => "?",
        }
    );
    let end = |ip: Option<std::net::IpAddr>, port: Option<u16>| match (ip, port) {
        (Some(std::net::IpAddr::V6(a)), Some(p)) => format!("[{a}]:{p}"),
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (Some(a), None) => a.to_string(),
        (None, _) => "?".into(),
    };
    let proto = l
        .proto
        .map(|p| proto_name(p).map_or_else(|| format!("proto {p}"), str::to_owned))
        .unwrap_or_else(|| "unparsed".into());
    let _ = write!(
        s,
        "{} > {} {proto} ",
        end(l.src, l.sport),
        end(l.dst, l.dport)
    );
    if let Some(len) = l.len {
        let _ = write!(s, "len {len} ");
    }
    s.push_str(&verdict_text(l));
    s
}

/// The refusal a node wrote before it closed the connection, when there is one to read.
fn refusal_left(stream: &UnixStream) -> Option<TraceError> {
    stream.set_read_timeout(Some(POLL)).ok()?;
    let mut buf = Vec::new();
    BufReader::new(stream)
        .take(4096)
        .read_until(b'\n', &mut buf)
        .ok()?;
    let line: Line = serde_json::from_slice(&buf).ok()?;
    Some(TraceError::Refused(
        crate::sys::one_line(&line.error?).into_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_drop_and_a_send() {
        let drop = Line {
            time_ns: Some(3_600_000_000_000 + 61_000_123_000),
            worker: Some(1),
            dir: Some(Direction::UdpToTun),
            src: Some([10, 244, 9, 9].into()),
            dst: Some([10, 244, 1, 2].into()),
            proto: Some(6),
            sport: Some(1000),
            dport: Some(80),
            len: Some(60),
            outer: Some(([192, 0, 2, 2], 8285).into()),
            verdict: Some("drop".into()),
            reason: Some("spoofed_source".into()),
            ..Line::default()
        };
        assert_eq!(
            render(&drop),
            "01:01:01.000123 w1 udp>tun 10.244.9.9:1000 > 10.244.1.2:80 tcp len 60 drop \
             spoofed_source from 192.0.2.2:8285"
        );
        let send = Line {
            dir: Some(Direction::TunToUdp),
            verdict: Some("send".into()),
            peer_subnet: Some("10.244.2.0/24".parse().expect("literal")),
            segments: Some(3),
            outer: Some(([192, 0, 2, 2], 8285).into()),
            ..Line::default()
        };
        assert_eq!(
            verdict_text(&send),
            "send peer 10.244.2.0/24 (3 segments) to 192.0.2.2:8285"
        );
        assert!(render(&send).contains("? > ? unparsed send"));
    }

    #[test]
    fn bad_filter_fails_before_connecting() {
        let opts = TraceOptions {
            socket: Some("/nonexistent/fustian.sock".into()),
            filter: "port banana".into(),
            ..TraceOptions::default()
        };
        let err = run(
            &opts,
            &mut Vec::new(),
            &mut Vec::new(),
            &AtomicBool::new(false),
        )
        .expect_err("bad");
        assert!(err.to_string().contains("`banana`"), "{err}");
    }

    #[test]
    fn traces_through_a_server() {
        use std::sync::Arc;
        let dir = std::env::temp_dir().join(format!("fustian-client-{}", std::process::id()));
        let path = dir.join("t.sock");
        let hub = Arc::new(super::super::Hub::new(1));
        let _server =
            super::super::server::TraceServer::start(&path, Arc::clone(&hub)).expect("bind");
        let opts = TraceOptions {
            socket: Some(path.clone()),
            filter: "verdict drop".into(),
            duration: Some(Duration::from_millis(300)),
            ..TraceOptions::default()
        };
        let (mut out, mut notes) = (Vec::new(), Vec::new());
        let summary = run(&opts, &mut out, &mut notes, &AtomicBool::new(false)).expect("runs");
        assert_eq!(summary, Summary::default(), "nothing happened");
        assert!(String::from_utf8_lossy(&notes).starts_with("tracing on"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A stand-in for a node, run by the test (so served by this user): answers the first
    /// request with `reply` and hangs up. Returns the socket's path and its directory.
    fn fake_node(name: &str, reply: &'static str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("fustian-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("t.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        std::thread::spawn(move || {
            if let Ok((stream, _)) = listener.accept() {
                let mut request = String::new();
                let _ = BufReader::new(&stream).read_line(&mut request);
                let _ = (&stream).write_all(reply.as_bytes());
            }
        });
        (path, dir)
    }

    /// Whether `text` holds anything a terminal would obey (ESC, CR, LF, C1 controls, BEL,
    /// bidirectional overrides).
    fn obeyed(text: &str) -> bool {
        text.chars().any(|c| {
            c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
    }

    #[test]
    fn only_root_s_or_one_s_own_server_is_trusted() {
        assert!(server_trusted(0, 0));
        assert!(server_trusted(0, 1000));
        assert!(server_trusted(1000, 1000));
        assert!(
            !server_trusted(1000, 0),
            "root does not believe a user's socket"
        );
        assert!(!server_trusted(1001, 1000));
        assert!(!server_trusted(65534, 1000));
    }

    #[test]
    fn a_server_of_one_s_own_user_is_attached_to() {
        let (path, dir) = fake_node("own", "{\"lost\":0}\n");
        let opts = TraceOptions {
            socket: Some(path),
            duration: Some(Duration::from_secs(5)),
            ..TraceOptions::default()
        };
        let (mut out, mut notes) = (Vec::new(), Vec::new());
        let summary = run(&opts, &mut out, &mut notes, &AtomicBool::new(false)).expect("trusted");
        assert_eq!(summary, Summary::default());
        assert!(String::from_utf8_lossy(&notes).starts_with("tracing on"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_hostile_refusal_is_shown_escaped() {
        let (path, dir) = fake_node(
            "refusal",
            "{\"error\":\"busy\\u001b[2K\\rFAKE\\nroot# \\u009b31m\\u202e\"}\n",
        );
        let opts = TraceOptions {
            socket: Some(path),
            duration: Some(Duration::from_secs(5)),
            ..TraceOptions::default()
        };
        let err = run(
            &opts,
            &mut Vec::new(),
            &mut Vec::new(),
            &AtomicBool::new(false),
        )
        .expect_err("refused");
        let text = err.to_string();
        assert!(matches!(err, TraceError::Refused(_)), "{text}");
        assert!(!obeyed(&text), "{text:?}");
        assert!(text.contains("busy\\u{1b}[2K\\rFAKE\\nroot#"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    const HOSTILE_EVENT: &str = "{\"dir\":\"udp>tun\",\"verdict\":\"deliver\\u001b[2K\\rFAKE \
                                 drop\\nroot# \\u009b\",\"reason\":\"no_route\\u0007\\u202e\\r\"}\n";

    #[test]
    fn a_hostile_verdict_and_reason_are_shown_escaped() {
        let line: Line = serde_json::from_str(HOSTILE_EVENT).expect("json");
        let text = render(&line);
        assert!(!obeyed(&text), "{text:?}");
        assert!(
            text.ends_with(
                "deliver\\u{1b}[2K\\rFAKE drop\\nroot# \\u{9b} no_route\\u{7}\\u{202e}\\r"
            ),
            "{text}"
        );
        // Known names pass as they are.
        let known = Line {
            verdict: Some("icmp".into()),
            reason: Some("no_route".into()),
            ..Line::default()
        };
        assert_eq!(verdict_text(&known), "icmp no_route");

        for json in [false, true] {
            let (path, dir) = fake_node(if json { "event-json" } else { "event" }, HOSTILE_EVENT);
            let pcap = dir.join("t.pcapng");
            let opts = TraceOptions {
                socket: Some(path),
                json,
                pcap: Some(pcap.clone()),
                duration: Some(Duration::from_secs(5)),
                ..TraceOptions::default()
            };
            let mut out = Vec::new();
            let summary =
                run(&opts, &mut out, &mut Vec::new(), &AtomicBool::new(false)).expect("runs");
            assert_eq!(summary.events, 1);
            let out = String::from_utf8(out).expect("utf-8");
            let body = out.strip_suffix('\n').expect("one line");
            assert!(!obeyed(body), "{out:?}");
            let comment = std::fs::read(&pcap).expect("pcapng");
            for raw in [&b"\x1b["[..], b"\rFAKE", b"\nroot", b"\xc2\x9b", b"\x07"] {
                assert!(
                    !comment.windows(raw.len()).any(|w| w == raw),
                    "{raw:?} in the pcapng file"
                );
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
