//! `fustian lab`: two overlay nodes in network namespaces, real traffic, a result table.
//!
//! Topology (all inside namespaces the lab creates and deletes; names start with the prefix):
//!
//! ```text
//!  <p>pa: pod 10.244.1.2 --veth-- <p>a: node A, 10.244.1.1, flannel0, ul0 192.0.2.1
//!                                      |  veth underlay (MTU 1500)
//!  <p>pb: pod 10.244.2.2 --veth-- <p>b: node B, 10.244.2.1, flannel0, ul0 192.0.2.2
//! ```
//!
//! Each node runs `fustian run` with the other as its peer. The pods are what flannel's CNI
//! bridge would attach: traffic between them is routed by the node's kernel into the TUN
//! device, through fustian, across the underlay, and out of the other node's TUN device. The
//! lab measures that path and, side by side in the same run, the bare underlay between the two
//! node namespaces. Everything is removed when the lab ends, fails or is interrupted.

//!
//! The parts: `topology.rs` builds the namespaces, links and node processes ([`Topology`]);
//! `measure.rs` runs one scenario's traffic and collects its samples; `report.rs` holds the
//! result ([`Report`]) and renders it as a table, SVG or JSON. [`netns`] and [`traffic`] are
//! the building blocks the netns tests use as well. This file parses the lab's options and runs
//! the rows round-robin: each round sets up every row (fustian nodes, or the kernel's VXLAN
//! device), measures it once and takes it down, so `--repeat` spreads a slow stretch of a
//! shared machine over all rows instead of landing it on one row's repetitions.

mod measure;
pub mod netns;
mod report;
mod topology;
pub mod traffic;

pub use self::report::{Metric, NodeCounters, Report};
pub use self::topology::{
    Family, GATEWAYS, HOST_IPS, HOST_IPS6, IPV6_GATEWAYS, IPV6_NETWORK, IPV6_POD_IPS, IPV6_SUBNETS,
    LabBackend, NETWORK, POD_IPS, SUBNETS, ScratchDir, Stack, Topology, VTEP_MACS, VTEP_MACS6,
    host_addr, host_addr6, pod_addr, pod_addr6,
};

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use self::measure::{Plan, measure, merge};
use self::traffic::Amount;
use crate::cli::LabArgs;
use crate::error::Error;

/// Names a scenario run on `stack`: unchanged for IPv4, `@6`, `@6/4`, ... otherwise.
fn family_name(name: String, stack: Stack) -> String {
    if stack == Stack::V4 {
        name
    } else {
        format!("{name}@{}", stack.name())
    }
}

/// Parses a comma-separated list.
fn list(text: &str) -> Vec<&str> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Runs the lab: builds the topology; measures fustian for each asked backend and event loop,
/// then the kernel's VXLAN programmed as flannel does in the same namespaces, then the bare
/// underlay; cleans up whatever happens.
///
/// # Errors
///
/// [`Error::Lab`] for a missing prerequisite, a bad option, a failed step, or an interruption.
pub fn run(args: &LabArgs, stop: &Arc<AtomicBool>) -> Result<Report, Error> {
    let prefix = args
        .prefix
        .clone()
        .unwrap_or_else(|| format!("fl{}", std::process::id() % 100_000));
    let exe = std::env::current_exe()
        .map_err(|e| Error::Lab(format!("cannot find the fustian binary: {e}")))?;
    let exe = exe.to_string_lossy().into_owned();
    let backends = list(&args.backend)
        .into_iter()
        .map(LabBackend::parse)
        .collect::<Result<Vec<_>, _>>()?;
    let loops = list(&args.io);
    if let Some(bad) = loops
        .iter()
        .find(|l| !matches!(**l, "auto" | "uring" | "epoll"))
    {
        return Err(Error::Lab(format!(
            "unknown event loop `{bad}`: auto, uring or epoll"
        )));
    }
    let offloads = list(&args.offload);
    if let Some(bad) = offloads.iter().find(|o| !matches!(**o, "auto" | "off")) {
        return Err(Error::Lab(format!(
            "unknown offload mode `{bad}`: auto or off"
        )));
    }
    let scenarios = list(&args.scenarios);
    if let Some(bad) = scenarios
        .iter()
        .find(|s| !matches!(**s, "fustian" | "kernel" | "underlay"))
    {
        return Err(Error::Lab(format!(
            "unknown scenario `{bad}`: fustian, kernel or underlay"
        )));
    }
    let stacks = list(&args.family)
        .into_iter()
        .map(Stack::parse)
        .collect::<Result<Vec<_>, _>>()?;
    if stacks.iter().any(|s| s.overlay == Family::Dual) {
        return Err(Error::Lab(
            "--family measures one pod family at a time: 4, 6, 6/4, 4/6 or 6/dual".into(),
        ));
    }
    let streams = list(&args.streams)
        .into_iter()
        .map(|s| s.parse::<u16>().ok().filter(|n| (1..=64).contains(n)))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            Error::Lab(format!(
                "bad --streams `{}`: 1..=64, comma separated",
                args.streams
            ))
        })?;
    let cfg = Plan {
        amount: Amount::Duration(Duration::from_secs_f64(args.duration.clamp(0.1, 600.0))),
        pings: args.pings,
        repeat: args.repeat.clamp(1, 100),
        streams,
        iperf3: args.iperf3,
    };
    if cfg.iperf3 {
        let found = std::process::Command::new("iperf3")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(Error::Lab(
                "--iperf3 needs the iperf3 command: apt-get install iperf3".into(),
            ));
        }
    }

    let topo = Topology::build(&prefix)?;
    if stacks
        .iter()
        .any(|s| s.overlay.has_v6() || s.underlay.has_v6())
    {
        topo.add_ipv6()?;
    }
    if args.mtu != 1500 {
        for h in &topo.hosts {
            h.ip(&["link", "set", "ul0", "mtu", &args.mtu.to_string()])?;
        }
    }
    eprintln!("lab: namespaces {prefix}a {prefix}b {prefix}pa {prefix}pb");
    let rows = rows(&scenarios, &stacks, &backends, &loops, &offloads);
    let mut lab = Lab {
        topo,
        args,
        exe,
        cfg,
        stop,
        metrics: Vec::new(),
        counters: Vec::new(),
    };
    // Kernel VXLAN rows whose device could not be programmed: skipped in every later round.
    let mut no_kernel: Vec<Stack> = Vec::new();
    // Round-robin: every row once per round, so a slow stretch of a shared machine is spread
    // over the rows instead of landing on one row's repetitions.
    for round in 0..lab.cfg.repeat {
        for row in &rows {
            match row {
                Row::Fustian(f) => lab.fustian(round, f)?,
                Row::Kernel { stack, auto, off } => {
                    if !no_kernel.contains(stack) && !lab.kernel(round, *stack, *auto, *off)? {
                        no_kernel.push(*stack);
                    }
                }
                Row::Underlay(stack) => lab.underlay(round, *stack)?,
            }
        }
    }
    let Lab {
        metrics,
        mut counters,
        cfg,
        ..
    } = lab;
    for (_, nodes) in &mut counters {
        for node in nodes {
            node.retain(|(_, v)| *v != 0);
        }
    }
    let report = Report {
        metrics,
        counters,
        repeat: cfg.repeat,
        duration: args.duration,
    };
    if let Some(path) = &args.json {
        report.write_json(path)?;
    }
    if let Some(path) = &args.svg {
        report.write_svg(path)?;
    }
    Ok(report)
}

/// One fustian row: a backend, event loop and offload mode on one stack.
struct FustianRow<'a> {
    /// The row's name in the table.
    name: String,
    stack: Stack,
    backend: LabBackend,
    io: &'a str,
    offload: &'a str,
}

/// One row of the table, or the kernel's pair of rows; each round sets it up, measures it
/// once and takes it down.
enum Row<'a> {
    Fustian(FustianRow<'a>),
    /// The kernel's VXLAN device on `stack`, measured as configured (`auto`) and limited to
    /// one segment per packet (`off`).
    Kernel {
        stack: Stack,
        auto: bool,
        off: bool,
    },
    /// The bare underlay between the two node namespaces.
    Underlay(Stack),
}

/// Lists the rows in the order of a round: fustian for each stack, backend, event loop and
/// offload mode; then, for each stack whose pods and underlay share a family, the kernel's
/// VXLAN and the underlay.
fn rows<'a>(
    scenarios: &[&str],
    stacks: &[Stack],
    backends: &[LabBackend],
    loops: &[&'a str],
    offloads: &[&'a str],
) -> Vec<Row<'a>> {
    let mut rows = Vec::new();
    if scenarios.contains(&"fustian") {
        for &stack in stacks {
            for &backend in backends {
                for &io in loops {
                    for &offload in offloads {
                        let name = match offload {
                            "off" => format!("fustian-{}/{io}/off", backend.name()),
                            _ => format!("fustian-{}/{io}", backend.name()),
                        };
                        rows.push(Row::Fustian(FustianRow {
                            name: family_name(name, stack),
                            stack,
                            backend,
                            io,
                            offload,
                        }));
                    }
                }
            }
        }
    }
    for &stack in stacks.iter().filter(|s| s.overlay == s.underlay) {
        if scenarios.contains(&"kernel") {
            rows.push(Row::Kernel {
                stack,
                auto: offloads.contains(&"auto"),
                off: offloads.contains(&"off"),
            });
        }
        if scenarios.contains(&"underlay") {
            rows.push(Row::Underlay(stack));
        }
    }
    rows
}

/// Adds one round's node values to the row's: a counter (it starts at zero with the node) is
/// summed over the rounds, a gauge (`kinds` says which is which) keeps the last round's value.
fn add_counters(
    all: &mut Vec<(String, Vec<NodeCounters>)>,
    name: &str,
    nodes: Vec<(NodeCounters, HashSet<String>)>,
) {
    let Some((_, totals)) = all.iter_mut().find(|(n, _)| n == name) else {
        all.push((name.to_owned(), nodes.into_iter().map(|(n, _)| n).collect()));
        return;
    };
    for (total, (node, kinds)) in totals.iter_mut().zip(nodes) {
        for (key, value) in node {
            let counter = kinds.contains(key.split('{').next().unwrap_or_default());
            match total.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) if counter => *v += value,
                Some((_, v)) => *v = value,
                None => total.push((key, value)),
            }
        }
    }
}

/// Deletes link `device` in `ns` and waits until it is gone (its sockets, such as a VXLAN
/// device's UDP port, go with it), asking again while it is still listed, for up to 5 s.
///
/// # Errors
///
/// [`Error::Lab`] with the last refusal when the link is still there.
fn delete_link(ns: &netns::Netns, device: &str) -> Result<(), Error> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let refused = ns.ip(&["link", "del", device]).err();
        if ns.ip(&["link", "show", "dev", device]).is_err() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(refused.unwrap_or_else(|| {
                Error::Lab(format!("{device} in {} outlived its deletion", ns.name()))
            }));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running lab: its namespaces, options and what it has measured so far.
struct Lab<'a> {
    topo: Topology,
    args: &'a LabArgs,
    exe: String,
    cfg: Plan,
    stop: &'a Arc<AtomicBool>,
    metrics: Vec<Metric>,
    counters: Vec<(String, Vec<NodeCounters>)>,
}

impl Lab<'_> {
    /// Starts two fustian nodes for `row`, measures one round, stops them and adds their
    /// counters.
    fn fustian(&mut self, round: u32, row: &FustianRow<'_>) -> Result<(), Error> {
        let name = &row.name;
        eprintln!("lab: {name}: starting two nodes");
        let threads = self.args.threads.map(|n| n.to_string());
        let busy_poll = self.args.busy_poll.to_string();
        let queue = self.args.tun_txqueuelen.map(|n| n.to_string());
        let mut extra = vec!["--io", row.io, "--offload", row.offload];
        if let Some(n) = &threads {
            extra.extend(["--threads", n.as_str()]);
        }
        if self.args.busy_poll > 0 {
            extra.extend(["--busy-poll", busy_poll.as_str()]);
        }
        if let Some(n) = &queue {
            extra.extend(["--tun-txqueuelen", n.as_str()]);
        }
        for i in 0..2 {
            let node_args = self.topo.node_args_stack(i, row.backend, row.stack, &extra);
            self.topo.start_node(i, &self.exe, &node_args)?;
        }
        let pids: Vec<u32> = self.topo.processes.iter().filter_map(|p| p.pid()).collect();
        let measured = measure(
            name,
            &self.topo.pods,
            pods_of(row.stack),
            &self.cfg,
            round,
            &pids,
            self.stop,
        );
        // Stop the nodes whatever the measurement gave: their TUN devices and routes go with
        // them. A failed measurement is the error to report; a node that then ended badly is
        // said beside it.
        let mut ended = Ok(());
        for (i, mut p) in std::mem::take(&mut self.topo.processes)
            .into_iter()
            .enumerate()
        {
            match p.stop(Duration::from_secs(3)) {
                Some(status) if status.success() => {}
                other if ended.is_ok() => {
                    ended = Err(format!("node {i} ended with {other:?}:\n{}", p.log()));
                }
                _ => {}
            }
        }
        let measured = match (measured, ended) {
            (Ok(m), Ok(())) => m,
            (Ok(_), Err(node)) => return Err(Error::Lab(node)),
            (Err(e), Ok(())) => return Err(e),
            (Err(e), Err(node)) => return Err(Error::Lab(format!("{e}; then {node}"))),
        };
        merge(&mut self.metrics, measured);
        let nodes = (0..2)
            .map(|i| (self.topo.stats(i), self.topo.counter_names(i)))
            .collect();
        add_counters(&mut self.counters, name, nodes);
        Ok(())
    }

    /// Programs the kernel's VXLAN device on both nodes as flannel does, measures one round
    /// with it as configured (`auto`) and limited to one segment per packet (`off`), and
    /// deletes it (its address, neighbours, FDB entries and routes go with it). Returns false,
    /// having said why, when the device cannot be programmed.
    fn kernel(&mut self, round: u32, stack: Stack, auto: bool, off: bool) -> Result<bool, Error> {
        let v6 = stack.overlay == Family::V6;
        let topo = &self.topo;
        let (device, programmed) = if v6 {
            let r = (0..2).try_for_each(|i| topo.program_kernel_vxlan6(i, VTEP_MACS6[1 - i]));
            ("flannel-v6.1", r)
        } else {
            (
                "flannel.1",
                (0..2).try_for_each(|i| topo.program_kernel_vxlan(i)),
            )
        };
        let measured = match programmed {
            Ok(()) => Some(self.kernel_rows(round, stack, device, auto, off)),
            Err(e) => {
                eprintln!("lab: kernel vxlan ({device}) skipped: {e}");
                None
            }
        };
        // Absent when programming failed before creating it; a device left behind would hold
        // the VXLAN port and carry the next rounds' traffic, so its deletion must succeed.
        let deleted: Vec<Result<(), Error>> = self
            .topo
            .hosts
            .iter()
            .map(|h| delete_link(h, device))
            .collect();
        deleted.into_iter().collect::<Result<(), Error>>()?;
        measured.transpose().map(|m| m.is_some())
    }

    /// Measures one round of the kernel's rows through `device`, programmed on both nodes.
    fn kernel_rows(
        &mut self,
        round: u32,
        stack: Stack,
        device: &str,
        auto: bool,
        off: bool,
    ) -> Result<(), Error> {
        let pods = pods_of(stack);
        if auto {
            let name = family_name("kernel-vxlan".to_owned(), stack);
            self.measure_between(&name, false, pods, round)?;
        }
        if off {
            // One segment per packet through the VXLAN device: the kernel segments before
            // encapsulating, as a device without TSO/GSO would.
            for h in &self.topo.hosts {
                h.ip(&["link", "set", device, "gso_max_segs", "1"])?;
            }
            let name = family_name("kernel-vxlan/off".to_owned(), stack);
            self.measure_between(&name, false, pods, round)?;
        }
        Ok(())
    }

    /// Measures one round of the bare underlay between the two node namespaces.
    fn underlay(&mut self, round: u32, stack: Stack) -> Result<(), Error> {
        let hosts = if stack.overlay.has_v6() {
            host_addr6
        } else {
            host_addr
        };
        let name = family_name("underlay".to_owned(), stack);
        self.measure_between(&name, true, hosts, round)
    }

    /// Measures one round of scenario `name` between the pods, or the node namespaces when
    /// `hosts` (no fustian nodes carrying it), and adds its samples.
    fn measure_between(
        &mut self,
        name: &str,
        hosts: bool,
        addr: Addr,
        round: u32,
    ) -> Result<(), Error> {
        let ns = if hosts {
            &self.topo.hosts
        } else {
            &self.topo.pods
        };
        let m = measure(name, ns, addr, &self.cfg, round, &[], self.stop)?;
        merge(&mut self.metrics, m);
        Ok(())
    }
}

/// The address of node `i`'s pod, or of node `i`, on a port.
type Addr = fn(usize, u16) -> std::net::SocketAddr;

/// Returns the pods' addresses for `stack`'s pod family.
fn pods_of(stack: Stack) -> Addr {
    if stack.overlay.has_v6() {
        pod_addr6
    } else {
        pod_addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(values: &[(&str, u64)], counters: &[&str]) -> (NodeCounters, HashSet<String>) {
        (
            values.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            counters.iter().map(|k| (*k).to_owned()).collect(),
        )
    }

    #[test]
    fn rounds_sum_counters_and_keep_the_last_gauge() {
        let mut all = Vec::new();
        let kinds = ["rx_packets", "peer_rx_bytes"];
        let round = |rx, peers, bytes| {
            vec![
                node(
                    &[
                        ("rx_packets", rx),
                        ("table_peers", peers),
                        ("peer_rx_bytes{subnet=\"10.244.2.0/24\"}", bytes),
                    ],
                    &kinds,
                ),
                node(&[("rx_packets", rx + 1)], &kinds),
            ]
        };
        add_counters(&mut all, "row", round(10, 1, 100));
        add_counters(&mut all, "other", round(5, 5, 5));
        add_counters(&mut all, "row", round(7, 3, 50));
        assert_eq!(all.len(), 2);
        let (name, nodes) = &all[0];
        assert_eq!(name, "row");
        let get = |n: usize, k: &str| nodes[n].iter().find(|(key, _)| key == k).map(|(_, v)| *v);
        assert_eq!(get(0, "rx_packets"), Some(17));
        assert_eq!(
            get(0, "table_peers"),
            Some(3),
            "a gauge keeps its last value"
        );
        assert_eq!(get(0, "peer_rx_bytes{subnet=\"10.244.2.0/24\"}"), Some(150));
        assert_eq!(get(1, "rx_packets"), Some(19));
    }

    #[test]
    fn a_round_lists_fustian_rows_then_kernel_and_underlay_per_stack() {
        let v4 = Stack::parse("4").expect("stack");
        let vx = LabBackend::parse("vxlan").expect("backend");
        let rows = rows(
            &["underlay", "kernel", "fustian"],
            &[v4],
            &[vx],
            &["uring", "epoll"],
            &["auto", "off"],
        );
        let names: Vec<String> = rows
            .iter()
            .map(|r| match r {
                Row::Fustian(f) => f.name.clone(),
                Row::Kernel { auto, off, .. } => format!("kernel {auto} {off}"),
                Row::Underlay(_) => "underlay".to_owned(),
            })
            .collect();
        assert_eq!(
            names,
            [
                "fustian-vxlan/uring",
                "fustian-vxlan/uring/off",
                "fustian-vxlan/epoll",
                "fustian-vxlan/epoll/off",
                "kernel true true",
                "underlay",
            ]
        );
    }
}
