//! `fustian trace`: attaches to a running node's trace socket and prints its verdicts.
//!
//! The filter is compiled here first, so a bad one is an error before anything connects, and
//! again by the node, which is what selects the events (only matching ones cross the socket,
//! and only they reach `--pcap`).

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::pcap::PcapWriter;
use super::server::{Request, SOCKET_DIR};
use super::{Direction, Filter, FilterError, Line, proto_name, unhex};

/// How often the client looks at Ctrl-C and the deadline while no line arrives.
const POLL: Duration = Duration::from_millis(100);
/// The longest line read from the node.
const MAX_LINE: usize = 64 * 1024;

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
    /// The node refused the trace.
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
    let io_err = |what| move |source| TraceError::Io { what, source };
    let request = Request {
        filter: opts.filter.clone(),
        packets: opts.pcap.is_some(),
    };
    let mut line = serde_json::to_vec(&request)
        .map_err(|e| io_err("encode the request")(io::Error::other(e)))?;
    line.push(b'\n');
    (&stream)
        .write_all(&line)
        .map_err(io_err("send the filter"))?;
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
                    return Err(TraceError::Refused(e));
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
                    serde_json::to_string(&l).unwrap_or_default()
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

/// The verdict part of a line: `send peer 10.244.2.0/24 (3 segments)`, `drop spoofed_source`,
/// `deliver`, `merge`, `icmp no_route`. Also the pcapng packet comment.
pub fn verdict_text(l: &Line) -> String {
    let mut s = l.verdict.clone().unwrap_or_else(|| "?".into());
    if let Some(r) = &l.reason {
        let _ = write!(s, " {r}");
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
}
