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
//! the scenarios in order.

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

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use self::measure::{Plan, measure};
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

    let mut topo = Topology::build(&prefix)?;
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
    let mut metrics = Vec::new();
    let mut counters = Vec::new();
    if scenarios.contains(&"fustian") {
        for (stack, backend) in stacks
            .iter()
            .flat_map(|s| backends.iter().map(move |b| (*s, b)))
        {
            for (io, offload) in loops
                .iter()
                .flat_map(|io| offloads.iter().map(move |o| (io, o)))
            {
                let name = match *offload {
                    "off" => format!("fustian-{}/{io}/off", backend.name()),
                    _ => format!("fustian-{}/{io}", backend.name()),
                };
                let name = family_name(name, stack);
                eprintln!("lab: {name}: starting two nodes");
                let threads = args.threads.map(|n| n.to_string());
                let busy_poll = args.busy_poll.to_string();
                let mut extra = vec!["--io", io, "--offload", offload];
                if let Some(n) = &threads {
                    extra.extend(["--threads", n.as_str()]);
                }
                if args.busy_poll > 0 {
                    extra.extend(["--busy-poll", busy_poll.as_str()]);
                }
                for i in 0..2 {
                    let node_args = topo.node_args_stack(i, *backend, stack, &extra);
                    topo.start_node(i, &exe, &node_args)?;
                }
                let pids: Vec<u32> = topo.processes.iter().filter_map(|p| p.pid()).collect();
                let pods = if stack.overlay.has_v6() {
                    pod_addr6
                } else {
                    pod_addr
                };
                metrics.extend(measure(&name, &topo.pods, pods, &cfg, &pids, stop)?);
                // Stop the nodes: their TUN devices and routes go with them.
                for (i, mut p) in std::mem::take(&mut topo.processes).into_iter().enumerate() {
                    match p.stop(Duration::from_secs(3)) {
                        Some(status) if status.success() => {}
                        other => {
                            return Err(Error::Lab(format!(
                                "node {i} ended with {other:?}:\n{}",
                                p.log()
                            )));
                        }
                    }
                }
                let nodes = (0..2)
                    .map(|i| topo.stats(i).into_iter().filter(|(_, v)| *v != 0).collect())
                    .collect();
                counters.push((name, nodes));
            }
        }
    }
    // The kernel's VXLAN and the bare underlay, for each family measured in one piece.
    let same: Vec<Stack> = stacks
        .iter()
        .copied()
        .filter(|s| s.overlay == s.underlay)
        .collect();
    for stack in &same {
        let v6 = stack.overlay == Family::V6;
        if scenarios.contains(&"kernel") {
            let (device, programmed) = if v6 {
                let r = (0..2).try_for_each(|i| topo.program_kernel_vxlan6(i, VTEP_MACS6[1 - i]));
                ("flannel-v6.1", r)
            } else {
                (
                    "flannel.1",
                    (0..2).try_for_each(|i| topo.program_kernel_vxlan(i)),
                )
            };
            let pods = if v6 { pod_addr6 } else { pod_addr };
            match programmed {
                Ok(()) => {
                    if offloads.contains(&"auto") {
                        let name = family_name("kernel-vxlan".to_owned(), *stack);
                        metrics.extend(measure(&name, &topo.pods, pods, &cfg, &[], stop)?);
                    }
                    if offloads.contains(&"off") {
                        // One segment per packet through the VXLAN device: the kernel
                        // segments before encapsulating, as a device without TSO/GSO would.
                        for h in &topo.hosts {
                            h.ip(&["link", "set", device, "gso_max_segs", "1"])?;
                        }
                        let name = family_name("kernel-vxlan/off".to_owned(), *stack);
                        metrics.extend(measure(&name, &topo.pods, pods, &cfg, &[], stop)?);
                    }
                }
                Err(e) => eprintln!("lab: kernel vxlan ({device}) skipped: {e}"),
            }
        }
        if scenarios.contains(&"underlay") {
            let hosts = if v6 { host_addr6 } else { host_addr };
            let name = family_name("underlay".to_owned(), *stack);
            metrics.extend(measure(&name, &topo.hosts, hosts, &cfg, &[], stop)?);
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
