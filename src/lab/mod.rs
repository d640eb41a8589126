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

pub mod netns;
pub mod traffic;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use self::netns::{Netns, Process, check_prerequisites, veth};
use self::traffic::{Amount, BulkResult, Flood, Latency, tcp_bulk, udp_flood, udp_ping_pong};
use crate::cli::LabArgs;
use crate::error::Error;

/// The overlay network of the lab.
pub const NETWORK: &str = "10.244.0.0/16";
/// Node underlay addresses (RFC 5737 documentation range).
pub const HOST_IPS: [&str; 2] = ["192.0.2.1", "192.0.2.2"];
/// Node pod subnets.
pub const SUBNETS: [&str; 2] = ["10.244.1.0/24", "10.244.2.0/24"];
/// Node-side bridge addresses (what flannel's CNI puts on cni0).
pub const GATEWAYS: [&str; 2] = ["10.244.1.1", "10.244.2.1"];
/// Pod addresses.
pub const POD_IPS: [&str; 2] = ["10.244.1.2", "10.244.2.2"];
/// VTEP MACs of the nodes in `vxlan` mode (locally administered).
pub const VTEP_MACS: [&str; 2] = ["02:66:75:00:00:01", "02:66:75:00:00:02"];

/// The encapsulation the lab's nodes speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabBackend {
    /// flannel's `udp` format.
    Udp,
    /// VXLAN.
    Vxlan,
}

impl LabBackend {
    /// Parses `udp` or `vxlan`.
    ///
    /// # Errors
    ///
    /// [`Error::Lab`] for anything else.
    pub fn parse(name: &str) -> Result<Self, Error> {
        match name {
            "udp" => Ok(Self::Udp),
            "vxlan" => Ok(Self::Vxlan),
            other => Err(Error::Lab(format!(
                "unknown backend `{other}`: udp or vxlan"
            ))),
        }
    }

    /// Returns the name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Vxlan => "vxlan",
        }
    }
}

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Creates `/tmp/fustian-<name>` (emptied first).
    ///
    /// # Errors
    ///
    /// [`Error::Lab`] when it cannot be created.
    pub fn new(name: &str) -> Result<Self, Error> {
        let path = std::env::temp_dir().join(format!("fustian-{name}"));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .map_err(|e| Error::Lab(format!("cannot create {}: {e}", path.display())))?;
        Ok(Self(path))
    }

    /// Returns the path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Two nodes with a pod each. Fields drop in order: processes, then namespaces, then files.
#[derive(Debug)]
pub struct Topology {
    /// fustian processes (or anything else started in the nodes), stopped first on drop.
    pub processes: Vec<Process>,
    /// Pod namespaces `<p>pa`, `<p>pb`.
    pub pods: [Netns; 2],
    /// Node namespaces `<p>a`, `<p>b`.
    pub hosts: [Netns; 2],
    /// Logs and stats files.
    pub dir: ScratchDir,
}

impl Topology {
    /// Builds the namespaces and links, with forwarding on in the nodes. Starts nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Lab`] naming the missing prerequisite or the failing step.
    pub fn build(prefix: &str) -> Result<Self, Error> {
        check_prerequisites()?;
        if prefix.is_empty()
            || prefix.len() > 8
            || !prefix.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(Error::Lab(format!(
                "prefix `{prefix}` must be 1-8 letters or digits"
            )));
        }
        let dir = ScratchDir::new(prefix)?;
        let hosts = [
            Netns::add(&format!("{prefix}a"))?,
            Netns::add(&format!("{prefix}b"))?,
        ];
        let pods = [
            Netns::add(&format!("{prefix}pa"))?,
            Netns::add(&format!("{prefix}pb"))?,
        ];
        let topo = Self {
            processes: Vec::new(),
            pods,
            hosts,
            dir,
        };
        veth(&topo.hosts[0], "ul0", &topo.hosts[1], "ul0")?;
        for i in 0..2 {
            let (host, pod) = (&topo.hosts[i], &topo.pods[i]);
            host.ip(&["addr", "add", &format!("{}/24", HOST_IPS[i]), "dev", "ul0"])?;
            host.ip(&["link", "set", "ul0", "up"])?;
            veth(host, "pod0", pod, "eth0")?;
            host.ip(&["addr", "add", &format!("{}/24", GATEWAYS[i]), "dev", "pod0"])?;
            host.ip(&["link", "set", "pod0", "up"])?;
            pod.ip(&["addr", "add", &format!("{}/24", POD_IPS[i]), "dev", "eth0"])?;
            pod.ip(&["link", "set", "eth0", "up"])?;
            pod.ip(&["route", "add", "default", "via", GATEWAYS[i]])?;
            host.sysctl("net/ipv4/ip_forward", "1")?;
        }
        Ok(topo)
    }

    /// Programs node `i` as flannel's `vxlan` backend programs a kernel node
    /// (`pkg/backend/vxlan/device.go`, `vxlan_network.go`): device `flannel.1` with VNI 1, port
    /// 8472, `nolearning`, MTU underlay − 50, the VTEP MAC of [`VTEP_MACS`], address
    /// `10.244.X.0/32`; for the other node a permanent neighbour entry, an FDB entry and an
    /// `onlink` route.
    ///
    /// # Errors
    ///
    /// [`Error::Lab`] when a step fails (for example the kernel has no `vxlan` support).
    pub fn program_kernel_vxlan(&self, i: usize) -> Result<(), Error> {
        let (host, other) = (&self.hosts[i], 1 - i);
        let own_net = SUBNETS[i].split('/').next().unwrap_or_default();
        let peer_net = SUBNETS[other].split('/').next().unwrap_or_default();
        host.ip(&[
            "link",
            "add",
            "flannel.1",
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            HOST_IPS[i],
            "dev",
            "ul0",
            "dstport",
            "8472",
            "nolearning",
        ])?;
        host.ip(&[
            "link",
            "set",
            "flannel.1",
            "address",
            VTEP_MACS[i],
            "mtu",
            "1450",
            "up",
        ])?;
        host.ip(&["addr", "add", &format!("{own_net}/32"), "dev", "flannel.1"])?;
        host.ip(&[
            "neigh",
            "add",
            peer_net,
            "lladdr",
            VTEP_MACS[other],
            "dev",
            "flannel.1",
            "nud",
            "permanent",
        ])?;
        netns::bridge(&[
            "-n",
            host.name(),
            "fdb",
            "append",
            VTEP_MACS[other],
            "dev",
            "flannel.1",
            "dst",
            HOST_IPS[other],
            "self",
            "permanent",
        ])?;
        host.ip(&[
            "route",
            "add",
            SUBNETS[other],
            "via",
            peer_net,
            "dev",
            "flannel.1",
            "onlink",
        ])
    }

    /// Returns the stats file path of node `i`.
    pub fn stats_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("stats-{i}.prom"))
    }

    /// Returns the `fustian run` arguments for node `i` in `udp` mode (peer: the other node),
    /// plus `extra`.
    pub fn node_args(&self, i: usize, extra: &[&str]) -> Vec<String> {
        self.node_args_for(i, LabBackend::Udp, extra)
    }

    /// Returns the `fustian run` arguments for node `i` with `backend`, plus `extra`. VXLAN
    /// nodes get the fixed VTEP MACs of [`VTEP_MACS`].
    pub fn node_args_for(&self, i: usize, backend: LabBackend, extra: &[&str]) -> Vec<String> {
        let other = 1 - i;
        let subnet_file = self.dir.path().join(format!("node-{i}")).join("subnet.env");
        let mut peer = format!("{}={}", SUBNETS[other], HOST_IPS[other]);
        let mut args: Vec<String> = Vec::new();
        if backend == LabBackend::Vxlan {
            peer = format!("{peer}@{}", VTEP_MACS[other]);
            args.extend(["--backend", "vxlan", "--vtep-mac", VTEP_MACS[i]].map(str::to_owned));
        }
        let common = [
            "--network",
            NETWORK,
            "--subnet",
            SUBNETS[i],
            "--public-ip",
            HOST_IPS[i],
            "--peer",
            &peer,
            "--subnet-file",
            &subnet_file.to_string_lossy(),
            "--stats-file",
            &self.stats_path(i).to_string_lossy(),
        ]
        .map(str::to_owned);
        let mut all = vec!["run".to_owned()];
        all.extend(common);
        all.extend(args);
        all.extend(extra.iter().map(|s| (*s).to_owned()));
        all
    }

    /// Starts `fustian` (`exe`) on node `i` with `args` and waits until it is forwarding
    /// (its stats file appears). Returns the index into [`Self::processes`].
    ///
    /// # Errors
    ///
    /// [`Error::Lab`] with the node's log when it exits or does not come up within 10 s.
    pub fn start_node(&mut self, i: usize, exe: &str, args: &[String]) -> Result<usize, Error> {
        let _ = std::fs::remove_file(self.stats_path(i));
        let log = self.dir.path().join(format!("node-{i}.log"));
        let mut process = self.hosts[i].start(exe, args, log)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.stats_path(i).exists() {
            if let Some(status) = process.exited() {
                return Err(Error::Lab(format!(
                    "node {i} exited ({status}) during setup:\n{}",
                    process.log()
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::Lab(format!(
                    "node {i} did not come up:\n{}",
                    process.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.processes.push(process);
        Ok(self.processes.len() - 1)
    }

    /// Returns node `i`'s counters from its stats file.
    pub fn stats(&self, i: usize) -> Vec<(String, u64)> {
        std::fs::read_to_string(self.stats_path(i))
            .map(|t| crate::metrics::parse_prometheus(&t))
            .unwrap_or_default()
    }

    /// Returns one counter of node `i` (0 when absent).
    pub fn counter(&self, i: usize, name: &str) -> u64 {
        self.stats(i)
            .into_iter()
            .find(|(k, _)| k == name)
            .map_or(0, |(_, v)| v)
    }
}

/// Returns the pod address of node `i` with `port`.
pub fn pod_addr(i: usize, port: u16) -> SocketAddr {
    SocketAddr::new(
        POD_IPS[i]
            .parse()
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
        port,
    )
}

/// Returns the underlay address of node `i` with `port`.
pub fn host_addr(i: usize, port: u16) -> SocketAddr {
    SocketAddr::new(
        HOST_IPS[i]
            .parse()
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
        port,
    )
}

/// One line of the result table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub scenario: String,
    /// Direction.
    pub direction: &'static str,
    /// Bulk transfer result.
    pub bulk: BulkResult,
    /// Ping-pong result (measured once per scenario, on the first row).
    pub latency: Option<Latency>,
    /// 64-byte UDP flood result (measured once per scenario, on the first row).
    pub flood: Option<Flood>,
}

/// The lab's result.
#[derive(Debug, Clone)]
pub struct Report {
    /// Rows in run order.
    pub rows: Vec<Row>,
    /// Per node, the non-zero counters after the run.
    pub counters: Vec<Vec<(String, u64)>>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<16} {:<6} {:>12} {:>9} {:>10} {:>10} {:>10} {:>8}",
            "scenario", "dir", "throughput", "vs kernel", "sent", "rtt p50", "rtt p99", "lost"
        )?;
        for r in &self.rows {
            let kernel = self
                .rows
                .iter()
                .find(|k| k.scenario == "kernel vxlan" && k.direction == r.direction);
            let ratio = match kernel {
                Some(k) if k.bulk.gbps() > 0.0 => format!("{:.2}", r.bulk.gbps() / k.bulk.gbps()),
                _ => "-".to_owned(),
            };
            let (p50, p99, lost) = match &r.latency {
                Some(l) => (
                    format!("{:.0} us", l.p50.as_secs_f64() * 1e6),
                    format!("{:.0} us", l.p99.as_secs_f64() * 1e6),
                    l.lost.to_string(),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            let (pps, loss) = match &r.flood {
                Some(f) => (
                    format!("{:.0}", f.pps()),
                    format!("{:.1}%", f.loss() * 100.0),
                ),
                None => ("-".into(), "-".into()),
            };
            writeln!(
                f,
                "{:<16} {:<6} {:>7.2} Gb/s {:>9} {:>7} MB {:>10} {:>10} {:>8} {:>10} {:>7}",
                r.scenario,
                r.direction,
                r.bulk.gbps(),
                ratio,
                r.bulk.received / 1_000_000,
                p50,
                p99,
                lost,
                pps,
                loss
            )?;
        }
        for (i, counters) in self.counters.iter().enumerate() {
            let text: Vec<String> = counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(f, "node {}: {}", ["a", "b"][i], text.join(" "))?;
        }
        Ok(())
    }
}

/// Runs the lab: builds the topology, measures two fustian nodes, then the kernel's VXLAN
/// programmed as flannel does in the same namespaces, then the bare underlay; cleans up.
///
/// # Errors
///
/// [`Error::Lab`] for a missing prerequisite, a failed step, or an interruption.
pub fn run(args: &LabArgs, stop: &Arc<AtomicBool>) -> Result<Report, Error> {
    let prefix = args
        .prefix
        .clone()
        .unwrap_or_else(|| format!("fl{}", std::process::id() % 100_000));
    let exe = std::env::current_exe()
        .map_err(|e| Error::Lab(format!("cannot find the fustian binary: {e}")))?;
    let exe = exe.to_string_lossy().into_owned();
    let backend = LabBackend::parse(&args.backend)?;
    let mut topo = Topology::build(&prefix)?;
    eprintln!("lab: namespaces {prefix}a {prefix}b {prefix}pa {prefix}pb; starting two nodes");
    for i in 0..2 {
        let threads = args.threads.map(|n| n.to_string());
        let mut extra = vec!["--io", args.io.as_str()];
        if let Some(n) = &threads {
            extra.extend(["--threads", n.as_str()]);
        }
        let node_args = topo.node_args_for(i, backend, &extra);
        topo.start_node(i, &exe, &node_args)?;
    }
    let amount = Amount::Duration(Duration::from_secs_f64(args.duration.clamp(0.1, 600.0)));
    let mut rows = Vec::new();
    let overlay = format!("fustian {}", backend.name());
    measure(
        &mut rows, &overlay, &topo.pods, pod_addr, amount, args.pings, stop,
    )?;

    // The same pods over the kernel's own VXLAN: stop fustian (its TUN devices and their
    // routes go with it) and program both nodes as flannel's vxlan backend would.
    for (i, p) in topo.processes.iter_mut().enumerate() {
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
    let counters = (0..2)
        .map(|i| topo.stats(i).into_iter().filter(|(_, v)| *v != 0).collect())
        .collect();
    match (0..2).try_for_each(|i| topo.program_kernel_vxlan(i)) {
        Ok(()) => measure(
            &mut rows,
            "kernel vxlan",
            &topo.pods,
            pod_addr,
            amount,
            args.pings,
            stop,
        )?,
        Err(e) => eprintln!("lab: kernel vxlan skipped: {e}"),
    }
    measure(
        &mut rows,
        "bare underlay",
        &topo.hosts,
        host_addr,
        amount,
        args.pings,
        stop,
    )?;
    Ok(Report { rows, counters })
}

/// Runs the bulk transfer both ways and the ping-pong a->b for one scenario.
fn measure(
    rows: &mut Vec<Row>,
    name: &str,
    ns: &[Netns; 2],
    addr: fn(usize, u16) -> SocketAddr,
    amount: Amount,
    pings: u32,
    stop: &Arc<AtomicBool>,
) -> Result<(), Error> {
    for (from, to, dir) in [(0, 1, "a->b"), (1, 0, "b->a")] {
        eprintln!("lab: {name} {dir}: TCP bulk");
        let bulk = tcp_bulk(&ns[from], &ns[to], addr(to, 5201), amount, false, stop)?;
        if bulk.sent != bulk.received {
            return Err(Error::Lab(format!(
                "{name} {dir}: sent {} bytes but {} arrived",
                bulk.sent, bulk.received
            )));
        }
        let (latency, flood) = if from == 0 {
            eprintln!("lab: {name} {dir}: {pings} UDP round trips");
            let latency = udp_ping_pong(&ns[from], &ns[to], addr(to, 7), pings, stop)?;
            eprintln!("lab: {name} {dir}: 64-byte UDP flood");
            let secs = match amount {
                Amount::Duration(d) => d,
                Amount::Bytes(_) => Duration::from_secs(1),
            };
            let flood = udp_flood(&ns[from], &ns[to], addr(to, 9), 64, secs, stop)?;
            (Some(latency), Some(flood))
        } else {
            (None, None)
        };
        rows.push(Row {
            scenario: name.to_owned(),
            direction: dir,
            bulk,
            latency,
            flood,
        });
    }
    Ok(())
}
