//! The lab's measurements: what one scenario runs (TCP bulk transfers per stream count and
//! direction, UDP round trips, a 64-byte UDP flood), repeated, with the machine's CPU time per
//! transferred gigabit; the TCP transfers come from the lab's own traffic or from iperf3.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::netns::{Netns, Process};
use super::report::Metric;
use super::traffic::{Amount, BulkResult, tcp_bulk, udp_flood, udp_ping_pong};
use crate::error::Error;

/// What each scenario runs.
pub(super) struct Plan {
    /// How long (or how much) each bulk transfer and flood runs.
    pub(super) amount: Amount,
    /// UDP round trips per repetition.
    pub(super) pings: u32,
    /// Rounds: each round measures every scenario once, in order.
    pub(super) repeat: u32,
    /// TCP stream counts to run, each in both directions.
    pub(super) streams: Vec<u16>,
    /// Whether the TCP transfers run through iperf3 instead of the lab's own traffic.
    pub(super) iperf3: bool,
}

/// Returns the busy CPU time of the whole machine so far, in seconds (from `/proc/stat`).
fn busy_cpu_seconds() -> f64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: everything but idle and iowait.
    let busy: f64 = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .sum();
    // USER_HZ is 100 on Linux (proc(5)).
    busy / 100.0
}

/// Returns the CPU time process `pid` has used so far (all its threads, user and system), in
/// seconds (from `/proc/PID/stat`); `None` when it cannot be read.
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: the fields after it start behind the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of proc(5), 12 and 13 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on Linux (proc(5)).
    Some(ticks / 100.0)
}

/// Returns the CPU time the processes `pids` have used so far, in seconds; `None` when one
/// cannot be read.
fn nodes_cpu_seconds(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|&p| process_cpu_seconds(p)).sum()
}

/// Adds `new`'s samples to `all`: to the metric of the same scenario and name, or as a new
/// metric at the end (so the first round sets the order).
pub(super) fn merge(all: &mut Vec<Metric>, new: Vec<Metric>) {
    for m in new {
        match all
            .iter_mut()
            .find(|a| a.scenario == m.scenario && a.name == m.name)
        {
            Some(a) => a.samples.extend(m.samples),
            None => all.push(m),
        }
    }
}

/// Runs one round (`round` of `plan.repeat`, counted from 0) of one scenario's measurements.
/// `nodes` are the fustian node processes carrying the traffic (none for the kernel's
/// scenarios): their own CPU time per transferred byte is recorded as well.
pub(super) fn measure(
    scenario: &str,
    ns: &[Netns; 2],
    addr: fn(usize, u16) -> SocketAddr,
    plan: &Plan,
    round: u32,
    nodes: &[u32],
    stop: &Arc<AtomicBool>,
) -> Result<Vec<Metric>, Error> {
    let mut out: Vec<Metric> = Vec::new();
    let mut record = |name: String, unit: &'static str, v: f64| {
        out.push(Metric {
            scenario: scenario.to_owned(),
            name,
            unit,
            samples: vec![v],
        });
    };
    for &n in &plan.streams {
        for (from, to, dir) in [(0, 1, "a->b"), (1, 0, "b->a")] {
            eprintln!(
                "lab: {scenario} [{}/{}] TCP x{n} {dir}",
                round + 1,
                plan.repeat
            );
            let cpu0 = busy_cpu_seconds();
            let node_cpu0 = nodes_cpu_seconds(nodes);
            let (bytes, secs) = if plan.iperf3 {
                iperf3(&ns[from], &ns[to], addr(to, 5201), n, plan.amount)?
            } else {
                tcp_streams(&ns[from], &ns[to], addr, to, n, plan.amount, stop)?
            };
            let cpu = busy_cpu_seconds() - cpu0;
            let node_cpu = nodes_cpu_seconds(nodes)
                .zip(node_cpu0)
                .map(|(after, before)| after - before);
            let gbits = bytes as f64 * 8.0 / 1e9;
            record(
                format!("tcp x{n} {dir}"),
                "Gbit/s",
                if secs > 0.0 { gbits / secs } else { 0.0 },
            );
            if n == plan.streams[0] && from == 0 && gbits > 0.0 {
                record(format!("cpu/Gbit x{n}"), "CPU s", cpu / gbits);
                if let Some(node_cpu) = node_cpu.filter(|_| !nodes.is_empty()) {
                    // Both nodes' own threads, per payload byte carried.
                    record(
                        format!("node ns/B x{n}"),
                        "ns/B",
                        node_cpu * 1e9 / bytes as f64,
                    );
                }
            }
        }
    }
    eprintln!(
        "lab: {scenario} [{}/{}] {} UDP round trips",
        round + 1,
        plan.repeat,
        plan.pings
    );
    let lat = udp_ping_pong(&ns[0], &ns[1], addr(1, 7), plan.pings, stop)?;
    record("rtt p50".into(), "us", lat.p50.as_secs_f64() * 1e6);
    record("rtt p99".into(), "us", lat.p99.as_secs_f64() * 1e6);
    eprintln!(
        "lab: {scenario} [{}/{}] 64-byte UDP flood",
        round + 1,
        plan.repeat
    );
    let secs = match plan.amount {
        Amount::Duration(d) => d,
        Amount::Bytes(_) => Duration::from_secs(1),
    };
    let flood = udp_flood(&ns[0], &ns[1], addr(1, 9), 64, secs, stop)?;
    record("udp64 rate".into(), "kpps", flood.pps() / 1e3);
    record("udp64 loss".into(), "%", flood.loss() * 100.0);
    Ok(out)
}

/// Runs `n` TCP bulk transfers in parallel from `from` to node `to`'s address; returns the
/// bytes received and the longest receiver time.
fn tcp_streams(
    from: &Netns,
    to_ns: &Netns,
    addr: fn(usize, u16) -> SocketAddr,
    to: usize,
    n: u16,
    amount: Amount,
    stop: &Arc<AtomicBool>,
) -> Result<(u64, f64), Error> {
    let results: Vec<Result<BulkResult, Error>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|k| {
                scope.spawn(move || tcp_bulk(from, to_ns, addr(to, 5201 + k), amount, false, stop))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Lab("a stream panicked".into())))
            })
            .collect()
    });
    let mut bytes = 0;
    let mut secs: f64 = 0.0;
    for r in results {
        let r = r?;
        if r.sent != r.received {
            return Err(Error::Lab(format!(
                "sent {} bytes but {} arrived",
                r.sent, r.received
            )));
        }
        bytes += r.received;
        secs = secs.max(r.elapsed.as_secs_f64());
    }
    Ok((bytes, secs))
}

/// Runs one iperf3 TCP test with `n` streams from `from` to an iperf3 server on `to_addr` in
/// `to`; returns the bytes received and the seconds it took, from iperf3's JSON report.
fn iperf3(
    from: &Netns,
    to: &Netns,
    to_addr: SocketAddr,
    n: u16,
    amount: Amount,
) -> Result<(u64, f64), Error> {
    let secs = match amount {
        Amount::Duration(d) => d.as_secs_f64().ceil().max(1.0),
        Amount::Bytes(_) => 3.0,
    };
    let ip = to_addr.ip().to_string();
    let port = to_addr.port().to_string();
    let log = std::env::temp_dir().join(format!("fustian-iperf3-{}.log", std::process::id()));
    let server_args: Vec<String> = ["-s", "-1", "-B", &ip, "-p", &port]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
    let mut server = to.start("iperf3", &server_args, log.clone())?;
    if let Err(e) = wait_listening(to, to_addr, &mut server) {
        server.stop(Duration::from_secs(2));
        let _ = std::fs::remove_file(&log);
        return Err(e);
    }
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            from.name(),
            "iperf3",
            "-c",
            &ip,
            "-p",
            &port,
            "-J",
        ])
        .args(["-t", &format!("{secs}"), "-P", &n.to_string()])
        .output()
        .map_err(|e| Error::Lab(format!("cannot run iperf3: {e}")))?;
    server.stop(Duration::from_secs(2));
    let _ = std::fs::remove_file(&log);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::Lab(format!("iperf3 gave no JSON report ({e})")))?;
    if let Some(err) = report["error"].as_str() {
        return Err(Error::Lab(format!("iperf3: {err}")));
    }
    let sum = &report["end"]["sum_received"];
    let bytes = sum["bytes"].as_u64().unwrap_or(0);
    let seconds = sum["seconds"].as_f64().unwrap_or(0.0);
    Ok((bytes, seconds))
}

/// Waits until a TCP socket in `ns` listens on `addr` (as iproute2's `ss` sees it), so the
/// client does not race the server's start.
///
/// # Errors
///
/// [`Error::Lab`] with the server's output when it exits first or is not listening within 5 s.
fn wait_listening(ns: &Netns, addr: SocketAddr, server: &mut Process) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let filter = format!("src {addr}");
    loop {
        let out = Command::new("ip")
            .args(["netns", "exec", ns.name(), "ss", "-Hltn"])
            .args(filter.split(' '))
            .output()
            .map_err(|e| Error::Lab(format!("cannot run ss: {e}")))?;
        if out.status.success() && !out.stdout.is_empty() {
            return Ok(());
        }
        if let Some(status) = server.exited() {
            return Err(Error::Lab(format!(
                "iperf3 server exited ({status}):\n{}",
                server.log()
            )));
        }
        if Instant::now() > deadline {
            return Err(Error::Lab(format!(
                "iperf3 server not listening on {addr} within 5 s:\n{}",
                server.log()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
