//! The HTTP endpoint attacked from inside the node's namespace while the node forwards: huge
//! `Content-Length` values, a 192 MiB header line, 300 idle half-open connections, and 20,000
//! pipelined requests from a client that never reads. After (and during) each one the node is
//! alive, `/healthz` answers 200 within 2 s, its thread count and RSS stay bounded, and pod
//! traffic still flows.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fustian::lab::Topology;
use fustian::lab::pod_addr;
use fustian::lab::traffic::udp_ping_pong;

use crate::common::{EXE, serial, skip, topology, wait_for};

/// The endpoint's port on node 0 (on 127.0.0.1, the default address).
const PORT: u16 = 9102;
/// How long `/healthz` may take to answer while the endpoint is under attack.
const PROBE_DEADLINE: Duration = Duration::from_secs(2);
/// Threads the node may gain over its baseline.
const THREAD_SLACK: u64 = 2;
/// RSS the node may gain over its baseline, in KiB.
const RSS_SLACK_KB: u64 = 32 * 1024;

/// Node 0 serving the endpoint, node 1 plain, and node 0's baseline.
struct Lab {
    topo: Topology,
    node: usize,
    pid: u32,
    threads: u64,
    rss_kb: u64,
}

impl Lab {
    fn start() -> Self {
        let mut topo = topology();
        let port = PORT.to_string();
        // The node keeps its capabilities: the endpoint's thread must drop its own.
        let a = topo.node_args(
            0,
            &[
                "--threads",
                "1",
                "--healthz-port",
                &port,
                "--keep-privileges",
            ],
        );
        let node = topo
            .start_node(0, EXE, &a)
            .unwrap_or_else(|e| panic!("{e}"));
        let b = topo.node_args(1, &["--threads", "1"]);
        topo.start_node(1, EXE, &b)
            .unwrap_or_else(|e| panic!("{e}"));
        let pid = topo.processes[node].pid().expect("node 0 runs");
        let mut lab = Self {
            topo,
            node,
            pid,
            threads: 0,
            rss_kb: 0,
        };
        assert!(
            wait_for(Duration::from_secs(5), || lab.healthz().is_ok()),
            "the endpoint never answered: {:?}\n{}",
            lab.healthz(),
            lab.log()
        );
        // The endpoint's thread drops its last two capabilities (kept for a user switch)
        // once the node has settled its privileges.
        let http_caps_gone = wait_for(Duration::from_secs(3), || {
            let caps = thread_caps(pid);
            let mut http = caps.iter().filter(|(name, _)| name == "fustian-http");
            http.clone().count() == 1 && http.all(|(_, cap)| *cap == 0)
        });
        let caps = thread_caps(pid);
        assert!(
            http_caps_gone,
            "the endpoint's thread keeps capabilities: {caps:?}"
        );
        assert!(
            caps.iter().any(|(_, cap)| *cap != 0),
            "with --keep-privileges other threads keep theirs: {caps:?}"
        );
        lab.threads = proc_field(pid, "Threads:");
        lab.rss_kb = proc_field(pid, "VmRSS:");
        lab
    }

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], PORT))
    }

    fn log(&self) -> String {
        self.topo.processes[self.node].log()
    }

    /// Fetches `/healthz` from inside node 0, failing unless it answers 200 within the deadline.
    fn healthz(&self) -> Result<Duration, String> {
        let start = Instant::now();
        let body = self.topo.hosts[0]
            .run(|| fustian::http::get(Self::addr(), "/healthz"))
            .map_err(|e| e.to_string())??;
        let took = start.elapsed();
        if body != "fustian is running\n" {
            return Err(format!("/healthz answered {body:?}"));
        }
        if took > PROBE_DEADLINE {
            return Err(format!("/healthz took {took:?}"));
        }
        Ok(took)
    }

    /// Asserts the node is alive, answers `/healthz` in time, kept its thread count and RSS,
    /// and forwards pod traffic (`when` names the moment in messages).
    fn check(&mut self, when: &str) {
        assert!(
            self.topo.processes[self.node].exited().is_none(),
            "{when}: the node exited:\n{}",
            self.log()
        );
        if let Err(e) = self.healthz() {
            panic!("{when}: {e}\n{}", self.log());
        }
        let threads = proc_field(self.pid, "Threads:");
        assert!(
            threads <= self.threads + THREAD_SLACK,
            "{when}: {threads} threads, {} at start",
            self.threads
        );
        let rss = proc_field(self.pid, "VmRSS:");
        assert!(
            rss <= self.rss_kb + RSS_SLACK_KB,
            "{when}: RSS {rss} kB, {} kB at start",
            self.rss_kb
        );
        let stop = Arc::new(AtomicBool::new(false));
        let lat = udp_ping_pong(
            &self.topo.pods[0],
            &self.topo.pods[1],
            pod_addr(1, 7),
            10,
            &stop,
        )
        .expect("ping-pong runs");
        assert_eq!(lat.replies, 10, "{when}: pod traffic: {lat:?}");
    }

    /// Runs `f` on a thread inside node 0's namespace (its sockets reach 127.0.0.1 there).
    fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        self.topo.hosts[0]
            .spawn(f)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Reads a numeric field (`Threads:`, `VmRSS:` in kB) from /proc/<pid>/status; any failure
/// fails the test.
fn proc_field(pid: u32, field: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let line = text
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in {path}"));
    line[field.len()..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad {field} line in {path}: {line}"))
}

/// Returns each thread's name and effective capabilities; any failure fails the test.
fn thread_caps(pid: u32) -> Vec<(String, u64)> {
    let dir = format!("/proc/{pid}/task");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
        .map(|task| {
            let path = task.expect("task entry").path();
            let name = std::fs::read_to_string(path.join("comm"))
                .unwrap_or_else(|e| panic!("cannot read {}/comm: {e}", path.display()));
            let status = std::fs::read_to_string(path.join("status"))
                .unwrap_or_else(|e| panic!("cannot read {}/status: {e}", path.display()));
            let cap = status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or_else(|| panic!("no CapEff in {}/status", path.display()));
            (name.trim().to_owned(), cap)
        })
        .collect()
}

/// Connects to the endpoint with read and write timeouts.
fn connect() -> TcpStream {
    let s = TcpStream::connect_timeout(&Lab::addr(), Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s
}

/// Reads what the server answers until it closes (or 64 KiB, or the read timeout).
fn answer(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.take(64 << 10).read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A page served from a name that rebinds to the node sends that name: the node's state is
/// refused to it (421) and shown to a request naming the node by its address.
#[test]
fn http_state_only_for_requests_naming_the_node() {
    if skip("http_state_only_for_requests_naming_the_node") {
        return;
    }
    let _serial = serial();
    let mut lab = Lab::start();
    let ask = |lab: &mut Lab, path: &'static str, host: &'static str| {
        lab.spawn(move || {
            let mut s = connect();
            let req =
                format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\n\r\n");
            s.write_all(req.as_bytes()).expect("send");
            answer(&mut s)
        })
        .join()
        .expect("client")
    };
    for path in ["/status", "/metrics"] {
        let refused = ask(&mut lab, path, "rebind.example:8080");
        assert!(refused.starts_with("HTTP/1.1 421 "), "{path}: {refused:?}");
        assert!(
            !refused.contains("10.244."),
            "{path} leaked state: {refused:?}"
        );
        let shown = ask(&mut lab, path, "127.0.0.1:8080");
        assert!(shown.starts_with("HTTP/1.1 200 "), "{path}: {shown:?}");
        assert!(
            shown.contains("X-Content-Type-Options: nosniff\r\n"),
            "{shown:?}"
        );
    }
    assert!(ask(&mut lab, "/healthz", "rebind.example").starts_with("HTTP/1.1 200 "));
    lab.check("after requests naming another host");
}

#[test]
fn http_huge_content_length() {
    if skip("http_huge_content_length") {
        return;
    }
    let _serial = serial();
    let mut lab = Lab::start();
    for value in ["9000000000000000000", "18446744073709551615"] {
        for method in ["GET", "POST"] {
            let reply = lab
                .spawn(move || {
                    let mut s = connect();
                    let req = format!(
                        "{method} /healthz HTTP/1.1\r\nHost: n\r\nContent-Length: {value}\r\n\r\n"
                    );
                    s.write_all(req.as_bytes()).expect("send");
                    answer(&mut s)
                })
                .join()
                .expect("client");
            assert!(
                reply.starts_with("HTTP/1.1 "),
                "{method} with Content-Length {value}: {reply:?}"
            );
            lab.check(&format!("after {method} with Content-Length {value}"));
        }
    }
}

#[test]
fn http_192_mib_header_line() {
    if skip("http_192_mib_header_line") {
        return;
    }
    let _serial = serial();
    let mut lab = Lab::start();
    const TOTAL: u64 = 192 << 20;
    let sent = Arc::new(AtomicU64::new(0));
    let sent_c = Arc::clone(&sent);
    let client = lab.spawn(move || {
        let mut s = connect();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: n\r\nX-Long: ")
            .expect("send head");
        let chunk = vec![b'a'; 64 << 10];
        while sent_c.load(Ordering::Relaxed) < TOTAL {
            if s.write_all(&chunk).is_err() {
                break;
            }
            sent_c.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        answer(&mut s)
    });
    // During: once a few MiB went out (or the server already closed).
    assert!(wait_for(Duration::from_secs(10), || {
        sent.load(Ordering::Relaxed) > 4 << 20 || client.is_finished()
    }));
    lab.check("while a 192 MiB header line streams");
    let reply = client.join().expect("client");
    let sent = sent.load(Ordering::Relaxed);
    assert!(
        sent < TOTAL,
        "the server read the whole 192 MiB header line (answer {reply:?})"
    );
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 431 "),
        "answer to an over-long head: {reply:?}"
    );
    lab.check("after a 192 MiB header line");
}

#[test]
fn http_300_half_open_connections() {
    if skip("http_300_half_open_connections") {
        return;
    }
    let _serial = serial();
    let mut lab = Lab::start();
    // Each sends half a request head and then nothing.
    let held = lab
        .spawn(|| {
            (0..300)
                .map(|_| {
                    let mut s = connect();
                    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: n\r\n")
                        .expect("send");
                    s
                })
                .collect::<Vec<_>>()
        })
        .join()
        .expect("client");
    lab.check("with 300 half-open connections");
    lab.check("with 300 half-open connections, again");
    drop(held);
    lab.check("after 300 half-open connections");
}

#[test]
fn http_20000_pipelined_requests_never_read() {
    if skip("http_20000_pipelined_requests_never_read") {
        return;
    }
    let _serial = serial();
    let mut lab = Lab::start();
    let release = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let (release_c, written_c) = (Arc::clone(&release), Arc::clone(&written));
    let client = lab.spawn(move || {
        let mut s = connect();
        let one = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        let all: Vec<u8> = one.repeat(20_000);
        // Written in pieces so progress shows; stops when the server closes or stops reading.
        for piece in all.chunks(16 << 10) {
            if s.write_all(piece).is_err() {
                break;
            }
            written_c.fetch_add(piece.len() as u64, Ordering::Relaxed);
        }
        // Hold the connection, never reading, until the test is done looking.
        while !release_c.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(s);
    });
    assert!(wait_for(Duration::from_secs(10), || written
        .load(Ordering::Relaxed)
        > 0));
    lab.check("while a client pipelines 20,000 requests and never reads");
    lab.check("while a client pipelines 20,000 requests and never reads, again");
    release.store(true, Ordering::Relaxed);
    client.join().expect("client");
    lab.check("after 20,000 pipelined requests");
}

/// `/readyz` says what holds now, not what held at start: the TUN device set down (which also
/// takes the kernel's route), the route deleted, the subnet file deleted or rewritten with
/// another network each make the node not ready with the reason, and putting each back makes it ready again, while `/healthz` stays
/// 200 throughout (the node lives; a supervisor should not restart it for an operator's edit).
#[test]
fn readyz_follows_the_device_the_route_the_subnet_file_and_the_underlay() {
    if skip("readyz_follows_the_device_the_route_the_subnet_file_and_the_underlay") {
        return;
    }
    let _serial = serial();
    let mut lab = Lab::start();
    let readyz = |lab: &Lab| {
        lab.topo.hosts[0]
            .run(|| {
                let mut s = TcpStream::connect_timeout(&Lab::addr(), Duration::from_secs(2))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
                Ok::<_, std::io::Error>(answer(&mut s))
            })
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .unwrap_or_default()
    };
    let becomes = |lab: &Lab, code: &str, text: &str| {
        let mut last = String::new();
        let seen = wait_for(Duration::from_secs(5), || {
            last = readyz(lab);
            last.starts_with(&format!("HTTP/1.1 {code} ")) && last.contains(text)
        });
        assert!(
            seen,
            "/readyz never answered {code} with {text:?}: {last:?}\n{}",
            lab.log()
        );
    };
    becomes(&lab, "200", "fustian is ready");
    let host = &lab.topo.hosts[0];
    host.ip(&["link", "set", "flannel0", "down"]).expect("down");
    becomes(&lab, "503", "TUN device flannel0 is down");
    assert!(lab.healthz().is_ok(), "{:?}", lab.healthz());
    host.ip(&["link", "set", "flannel0", "up"]).expect("up");
    // The kernel took the route with the device: still not ready, for that.
    becomes(
        &lab,
        "503",
        "the route to 10.244.0.0/16 through flannel0 is gone",
    );
    host.ip(&["route", "add", "10.244.0.0/16", "dev", "flannel0"])
        .expect("route");
    becomes(&lab, "200", "fustian is ready");
    let subnet_file = lab.topo.dir.path().join("node-0").join("subnet.env");
    let kept = std::fs::read(&subnet_file).expect("the node wrote its subnet file");
    std::fs::remove_file(&subnet_file).expect("remove");
    becomes(&lab, "503", "subnet file");
    std::fs::write(&subnet_file, &kept).expect("put back");
    becomes(&lab, "200", "fustian is ready");
    // A file that says another network is not the node's, though it is in place.
    std::fs::write(&subnet_file, "FLANNEL_NETWORK=1.2.3.0/24\n").expect("rewrite");
    becomes(
        &lab,
        "503",
        "says FLANNEL_NETWORK=1.2.3.0/24, but the node wrote FLANNEL_NETWORK=10.244.0.0/16",
    );
    std::fs::write(&subnet_file, &kept).expect("put back");
    becomes(&lab, "200", "fustian is ready");
    // The address the node's sockets are bound to, then the underlay link.
    let underlay = format!("{}/24", fustian::lab::HOST_IPS[0]);
    host.ip(&["addr", "del", &underlay, "dev", "ul0"])
        .expect("addr del");
    becomes(&lab, "503", "the underlay address 192.0.2.1 is gone");
    host.ip(&["addr", "add", &underlay, "dev", "ul0"])
        .expect("addr add");
    becomes(&lab, "200", "fustian is ready");
    host.ip(&["link", "set", "ul0", "down"]).expect("down");
    becomes(
        &lab,
        "503",
        "the underlay interface holding 192.0.2.1 is down",
    );
    host.ip(&["link", "set", "ul0", "up"]).expect("up");
    becomes(&lab, "200", "fustian is ready");
    assert!(
        lab.log().contains("not ready: TUN device flannel0 is down"),
        "{}",
        lab.log()
    );
    lab.check("after the device, route and subnet file came back");
}
