//! `fustian trace` against a running node: a spoofed datagram shows as dropped
//! `spoofed_source` (in the trace, its pcapng file and `show`'s recent drops), a filtered trace
//! of a TCP transfer shows that flow only, a bad filter is a clear error, and a paused reader
//! loses events (and says how many) while forwarding goes on.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etherparse::PacketBuilder;
use fustian::lab::traffic::{Amount, tcp_bulk, udp_ping_pong};
use fustian::lab::{Topology, host_addr, pod_addr};
use fustian::trace::Line;

use crate::common::{EXE, serial, skip, topology, wait_for};

/// The HTTP endpoint of node 0, inside its namespace.
const HTTP_PORT: u16 = 9116;

fn udp_packet(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ipv4(src, dst, 64).udp(9000, 9001);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, payload).expect("build");
    out
}

fn socket_path(topo: &Topology) -> PathBuf {
    topo.dir.path().join("trace-0.sock")
}

/// Starts node 0 (tracing on its own socket, HTTP on loopback) with `extra`, and node 1 if
/// `both`.
fn start(topo: &mut Topology, extra: &[&str], both: bool) -> PathBuf {
    let sock = socket_path(topo);
    let (sock_arg, port) = (sock.to_string_lossy().into_owned(), HTTP_PORT.to_string());
    let mut flags = vec!["--trace-socket", &sock_arg, "--healthz-port", &port];
    flags.extend_from_slice(extra);
    let a = topo.node_args(0, &flags);
    topo.start_node(0, EXE, &a)
        .unwrap_or_else(|e| panic!("{e}"));
    if both {
        let b = topo.node_args(1, &["--threads", "1"]);
        topo.start_node(1, EXE, &b)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    sock
}

/// A `fustian trace` process whose stdout and stderr are collected by threads (unless
/// `paused`, where stdout is left unread until [`Tracer::resume`]).
struct Tracer {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    stdout: Option<std::process::ChildStdout>,
}

impl Tracer {
    fn start(args: &[&str], paused: bool) -> Self {
        let mut child = Command::new(EXE)
            .arg("trace")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fustian trace starts");
        let err = Arc::new(Mutex::new(Vec::new()));
        collect(child.stderr.take().expect("piped"), &err);
        let mut t = Self {
            child,
            out: Arc::new(Mutex::new(Vec::new())),
            err,
            stdout: None,
        };
        t.stdout = t.child.stdout.take();
        if !paused {
            t.resume();
        }
        t
    }

    fn resume(&mut self) {
        if let Some(s) = self.stdout.take() {
            collect(s, &self.out);
        }
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().expect("lock")).into_owned()
    }

    fn lines(&self) -> Vec<Line> {
        let out = self.out.lock().expect("lock");
        String::from_utf8_lossy(&out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Waits until the node accepted the trace.
    fn attached(&mut self) {
        let ok = wait_for(Duration::from_secs(5), || {
            self.stderr().contains("tracing on")
        });
        assert!(ok, "trace did not attach: {}", self.stderr());
    }

    /// Stops it as Ctrl-C would and returns its exit status's success.
    fn interrupt(&mut self) -> bool {
        let pid = self.child.id();
        let _ = fustian::sys::terminate(pid);
        self.wait()
    }

    fn wait(&mut self) -> bool {
        let done = wait_for(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !done {
            let _ = self.child.kill();
        }
        let status = self.child.wait().expect("reaped");
        // Let the collecting threads read to the end.
        wait_for(Duration::from_secs(2), || {
            self.stderr().contains(" events, ")
        });
        status.success()
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn collect(mut from: impl Read + Send + 'static, into: &Arc<Mutex<Vec<u8>>>) {
    let into = Arc::clone(into);
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().expect("lock").extend_from_slice(&buf[..n]);
        }
    });
}

fn status(topo: &Topology) -> serde_json::Value {
    let text = topo.hosts[0]
        .run(|| fustian::http::get(SocketAddr::from(([127, 0, 0, 1], HTTP_PORT)), "/status"))
        .expect("enter node a")
        .expect("/status answers");
    serde_json::from_str(&text).expect("JSON")
}

#[test]
fn trace_shows_a_spoofed_datagram() {
    if skip("trace_shows_a_spoofed_datagram") {
        return;
    }
    let _serial = serial();
    let mut topo = topology();
    let sock = start(&mut topo, &["--threads", "1"], false);
    let pcap = topo.dir.path().join("spoofed.pcapng");
    let mut tracer = Tracer::start(
        &[
            "--socket",
            &sock.to_string_lossy(),
            "--json",
            "--count",
            "2",
            "--pcap",
            &pcap.to_string_lossy(),
            "reason",
            "spoofed_source",
        ],
        false,
    );
    tracer.attached();
    let peer = topo.hosts[1]
        .run(|| UdpSocket::bind("192.0.2.2:8285"))
        .expect("enter node b")
        .expect("bind the peer's port");
    // Something the filter leaves out (delivered), then two spoofed datagrams.
    let good = udp_packet([10, 244, 2, 5], [10, 244, 1, 2], b"good");
    let spoofed = udp_packet([10, 244, 3, 5], [10, 244, 1, 2], b"evil");
    peer.send_to(&good, host_addr(0, 8285)).expect("send");
    peer.send_to(&spoofed, host_addr(0, 8285)).expect("send");
    peer.send_to(&spoofed, host_addr(0, 8285)).expect("send");
    assert!(tracer.wait(), "trace fails: {}", tracer.stderr());
    let lines = tracer.lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for l in &lines {
        assert_eq!(l.verdict.as_deref(), Some("drop"));
        assert_eq!(l.reason.as_deref(), Some("spoofed_source"));
        assert_eq!(l.src, Some([10, 244, 3, 5].into()));
        assert_eq!(l.outer, Some(SocketAddr::from(([192, 0, 2, 2], 8285))));
        assert_eq!(
            (l.proto, l.sport, l.dport),
            (Some(17), Some(9000), Some(9001))
        );
    }
    assert!(
        tracer.stderr().contains("2 events, 0 lost"),
        "{}",
        tracer.stderr()
    );

    // The pcapng file holds both packets with their verdicts, and tcpdump reads it.
    let bytes = std::fs::read(&pcap).expect("pcapng written");
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(
        text.matches("drop spoofed_source from 192.0.2.2:8285")
            .count(),
        2
    );
    let dump = Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(&pcap)
        .output()
        .expect("tcpdump runs (apt-get install tcpdump)");
    let dumped = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    assert_eq!(
        dumped
            .matches("10.244.3.5.9000 > 10.244.1.2.9001: UDP")
            .count(),
        2,
        "{dumped}"
    );

    // `show` lists it among the recent drops.
    let v = status(&topo);
    let recent = v["recent_drops"].as_array().expect("recent drops");
    assert!(
        recent
            .iter()
            .any(|d| d["reason"] == "spoofed_source" && d["src"] == "10.244.3.5"),
        "{recent:?}"
    );
    let shown = fustian::show::render(&v);
    assert!(
        shown.contains(
            "10.244.3.5:9000 > 10.244.1.2:9001 udp drop spoofed_source from 192.0.2.2:8285"
        ),
        "{shown}"
    );

    // A bad filter is refused by the node too, naming the token.
    let mut raw = UnixStream::connect(&sock).expect("connect");
    raw.write_all(b"port banana\n").expect("send");
    let mut reply = String::new();
    BufReader::new(&raw).read_line(&mut reply).expect("reply");
    assert!(reply.contains("`banana`"), "{reply}");
}

#[test]
fn bad_filter_is_a_clear_error() {
    if skip("bad_filter_is_a_clear_error") {
        return;
    }
    for (filter, token) in [
        (&["port", "banana"][..], "`banana`"),
        (&["reason", "cosmic_rays"][..], "`cosmic_rays`"),
        (&["host", "10.244.1.2", "and"][..], "expected a primitive"),
    ] {
        let out = Command::new(EXE)
            .args(["trace", "--socket", "/nonexistent/fustian.sock"])
            .args(filter)
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(token), "{filter:?}: {err}");
        assert!(
            !err.contains("cannot attach"),
            "checked before connecting: {err}"
        );
    }
}

#[test]
fn filtered_trace_shows_one_flow() {
    if skip("filtered_trace_shows_one_flow") {
        return;
    }
    let _serial = serial();
    let mut topo = topology();
    let sock = start(&mut topo, &["--threads", "2"], true);
    let mut tracer = Tracer::start(
        &[
            "--socket",
            &sock.to_string_lossy(),
            "--json",
            "tcp",
            "and",
            "port",
            "5201",
        ],
        false,
    );
    tracer.attached();
    let stop = Arc::new(AtomicBool::new(false));
    // Other traffic while the traced flow runs: UDP echo.
    let echo =
        udp_ping_pong(&topo.pods[0], &topo.pods[1], pod_addr(1, 7), 20, &stop).expect("echo runs");
    assert_eq!(echo.replies, 20);
    let r = tcp_bulk(
        &topo.pods[0],
        &topo.pods[1],
        pod_addr(1, 5201),
        Amount::Bytes(1 << 20),
        true,
        &stop,
    )
    .expect("transfer runs");
    assert!(r.intact(), "{r:?}");
    // The last ACKs come after the receiver's last read: wait until the trace shows both
    // directions, then detach.
    let both = wait_for(Duration::from_secs(5), || {
        let l = tracer.lines_so_far();
        l.iter().any(|l| l.verdict.as_deref() == Some("send"))
            && l.iter()
                .any(|l| matches!(l.verdict.as_deref(), Some("deliver" | "merge")))
    });
    assert!(both, "{}", tracer.stderr());
    assert!(
        tracer.interrupt(),
        "Ctrl-C ends the trace cleanly: {}",
        tracer.stderr()
    );
    let lines = tracer.lines();
    for l in &lines {
        assert_eq!(l.proto, Some(6), "{l:?}");
        assert!(l.sport == Some(5201) || l.dport == Some(5201), "{l:?}");
        let (pa, pb) = (pod_addr(0, 0).ip(), pod_addr(1, 0).ip());
        assert!(
            (l.src == Some(pa) && l.dst == Some(pb)) || (l.src == Some(pb) && l.dst == Some(pa)),
            "{l:?}"
        );
        match l.verdict.as_deref() {
            Some("send") => {
                assert_eq!(l.dst, Some(pb));
                assert_eq!(
                    l.peer_subnet,
                    Some("10.244.2.0/24".parse().expect("literal"))
                );
            }
            Some("deliver" | "merge") => assert_eq!(l.dst, Some(pa)),
            other => panic!("unexpected verdict {other:?}: {l:?}"),
        }
    }
    assert!(tracer.stderr().contains(" events, "), "{}", tracer.stderr());
}

#[test]
fn paused_reader_loses_events_and_forwarding_goes_on() {
    if skip("paused_reader_loses_events_and_forwarding_goes_on") {
        return;
    }
    let _serial = serial();
    let mut topo = topology();
    // Without offloads every packet is an event.
    let sock = start(&mut topo, &["--threads", "1", "--offload", "off"], true);
    let stop = Arc::new(AtomicBool::new(false));
    let transfer = || {
        tcp_bulk(
            &topo.pods[0],
            &topo.pods[1],
            pod_addr(1, 5201),
            Amount::Bytes(32 << 20),
            true,
            &stop,
        )
        .expect("transfer runs")
    };
    let baseline = transfer();
    assert!(baseline.intact(), "{baseline:?}");
    let mut tracer = Tracer::start(&["--socket", &sock.to_string_lossy(), "--json"], true);
    tracer.attached();
    let r = transfer();
    assert!(r.intact(), "forwarding went on: {r:?}");
    eprintln!(
        "without a trace {:.2} Gbit/s, with a paused trace reader {:.2} Gbit/s",
        baseline.gbps(),
        r.gbps()
    );
    // Loose on purpose (a shared machine's run-to-run spread): a reader that held the workers
    // back would stall the transfer far below this.
    assert!(
        r.gbps() >= 0.4 * baseline.gbps(),
        "a paused reader slowed forwarding: {:.2} vs {:.2} Gbit/s",
        r.gbps(),
        baseline.gbps()
    );
    tracer.resume();
    let said = wait_for(Duration::from_secs(10), || {
        tracer.stderr().contains("events so far")
    });
    assert!(said, "the trace says it lost events: {}", tracer.stderr());
    assert!(tracer.interrupt(), "{}", tracer.stderr());
    let err = tracer.stderr();
    let summary = err
        .lines()
        .find(|l| l.contains(" events, "))
        .unwrap_or_else(|| panic!("{err}"));
    let lost: u64 = summary
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(lost > 0, "{summary}");
    // The node is still forwarding and still serves traces.
    let echo =
        udp_ping_pong(&topo.pods[0], &topo.pods[1], pod_addr(1, 7), 5, &stop).expect("echo runs");
    assert_eq!(echo.replies, 5);
    assert!(Path::new(&sock).exists());
}

impl Tracer {
    /// The complete lines printed so far.
    fn lines_so_far(&self) -> Vec<Line> {
        let out = self.out.lock().expect("lock");
        let text = String::from_utf8_lossy(&out);
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}
