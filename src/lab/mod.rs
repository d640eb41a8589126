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
use self::traffic::{Amount, BulkResult, tcp_bulk, udp_flood, udp_ping_pong};
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

/// One measured quantity of one scenario, with every repetition's sample.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Metric {
    /// The scenario, e.g. `fustian-udp/uring`, `kernel-vxlan`, `underlay`.
    pub scenario: String,
    /// The quantity, e.g. `tcp x1 a->b`.
    pub name: String,
    /// Its unit.
    pub unit: &'static str,
    /// One sample per repetition.
    pub samples: Vec<f64>,
}

impl Metric {
    /// Returns the median sample.
    pub fn median(&self) -> f64 {
        let mut v = self.samples.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }

    /// Returns the smallest sample.
    pub fn min(&self) -> f64 {
        self.samples.iter().copied().fold(f64::INFINITY, f64::min)
    }

    /// Returns the largest sample.
    pub fn max(&self) -> f64 {
        self.samples
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

/// One node's counters, as `(name, value)` pairs.
pub type NodeCounters = Vec<(String, u64)>;

/// The lab's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Every metric of every scenario, in run order.
    pub metrics: Vec<Metric>,
    /// For each fustian scenario, each node's non-zero counters after its run.
    pub counters: Vec<(String, Vec<NodeCounters>)>,
    /// Repetitions per metric.
    pub repeat: u32,
    /// Seconds of each bulk transfer and flood.
    pub duration: f64,
}

impl Report {
    /// Returns the scenarios in run order.
    pub fn scenarios(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for m in &self.metrics {
            if !out.contains(&m.scenario.as_str()) {
                out.push(&m.scenario);
            }
        }
        out
    }

    /// Returns the metric names in run order.
    pub fn names(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for m in &self.metrics {
            if !out.contains(&m.name.as_str()) {
                out.push(&m.name);
            }
        }
        out
    }

    /// Returns one metric.
    pub fn get(&self, scenario: &str, name: &str) -> Option<&Metric> {
        self.metrics
            .iter()
            .find(|m| m.scenario == scenario && m.name == name)
    }

    /// Renders the report as a bar chart: one panel per metric, one bar per scenario.
    pub fn svg(&self) -> String {
        use std::fmt::Write as _;
        let scenarios = self.scenarios();
        let names = self.names();
        let (panel_w, panel_h, bar_w, gap) = (260.0_f64, 180.0_f64, 28.0_f64, 8.0_f64);
        let cols = 3usize;
        let rows = names.len().div_ceil(cols).max(1);
        let width = (panel_w * cols as f64).max(160.0 * scenarios.len() as f64) + 20.0;
        let height = (panel_h + 60.0) * rows as f64 + 60.0;
        let colors = [
            "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
        ];
        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
        for (k, s) in scenarios.iter().enumerate() {
            let x = 10.0 + 160.0 * k as f64;
            let _ = writeln!(
                out,
                r#"<rect x="{x:.0}" y="12" width="10" height="10" fill="{}"/><text x="{:.0}" y="21">{}</text>"#,
                colors[k % colors.len()],
                x + 14.0,
                xml_escape(s)
            );
        }
        for (p, name) in names.iter().enumerate() {
            let px = 10.0 + panel_w * (p % cols) as f64;
            let py = 50.0 + (panel_h + 60.0) * (p / cols) as f64;
            let unit = self
                .metrics
                .iter()
                .find(|m| m.name == *name)
                .map_or("", |m| m.unit);
            let top = scenarios
                .iter()
                .filter_map(|s| self.get(s, name))
                .map(Metric::median)
                .fold(0.0_f64, f64::max)
                .max(f64::MIN_POSITIVE);
            let _ = writeln!(
                out,
                r#"<text x="{px:.0}" y="{:.0}" font-weight="bold">{} ({})</text>"#,
                py + 12.0,
                xml_escape(name),
                xml_escape(unit)
            );
            for (k, s) in scenarios.iter().enumerate() {
                let Some(m) = self.get(s, name) else { continue };
                let v = m.median();
                let h = (v / top * (panel_h - 40.0)).max(0.0);
                let x = px + 10.0 + (bar_w + gap) * k as f64;
                let y = py + panel_h - h;
                let _ = writeln!(
                    out,
                    r#"<rect class="bar" data-scenario="{}" data-metric="{}" x="{x:.1}" y="{y:.1}" width="{bar_w:.0}" height="{h:.1}" fill="{}"><title>{}: {v:.3}</title></rect>"#,
                    xml_escape(s),
                    xml_escape(name),
                    colors[k % colors.len()],
                    xml_escape(s)
                );
                let _ = writeln!(
                    out,
                    r#"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">{}</text>"#,
                    x + bar_w / 2.0,
                    y - 3.0,
                    short(v)
                );
            }
            let _ = writeln!(
                out,
                r##"<line x1="{px:.0}" y1="{:.0}" x2="{:.0}" y2="{:.0}" stroke="#444"/>"##,
                py + panel_h,
                px + panel_w - 20.0,
                py + panel_h
            );
        }
        out.push_str("</svg>\n");
        out
    }
}

fn short(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.names();
        let scenarios = self.scenarios();
        let cell = |s: &str, n: &str| match self.get(s, n) {
            Some(m) if self.repeat > 1 => {
                format!(
                    "{} ({}-{})",
                    short(m.median()),
                    short(m.min()),
                    short(m.max())
                )
            }
            Some(m) => short(m.median()),
            None => "-".into(),
        };
        let unit = |n: &str| {
            self.metrics
                .iter()
                .find(|m| m.name == n)
                .map_or("", |m| m.unit)
        };
        let widths: Vec<usize> = names
            .iter()
            .map(|n| {
                scenarios
                    .iter()
                    .map(|s| cell(s, n).len())
                    .chain([n.len()])
                    .max()
                    .unwrap_or(8)
            })
            .collect();
        write!(f, "{:<24}", "scenario")?;
        for (n, w) in names.iter().zip(&widths) {
            write!(f, "  {n:>w$}")?;
        }
        writeln!(f)?;
        write!(f, "{:<24}", "")?;
        for (n, w) in names.iter().zip(&widths) {
            write!(f, "  {:>w$}", unit(n))?;
        }
        writeln!(f)?;
        for s in &scenarios {
            write!(f, "{s:<24}")?;
            for (n, w) in names.iter().zip(&widths) {
                write!(f, "  {:>w$}", cell(s, n))?;
            }
            writeln!(f)?;
        }
        let all = self.scenarios();
        let kernels = ["kernel-vxlan", "kernel-vxlan/off"];
        if kernels.iter().any(|k| all.contains(k)) {
            writeln!(
                f,
                "\nratio to kernel VXLAN (median against median, same metric; `/off` rows \
                 against kernel-vxlan/off when measured):"
            )?;
            for s in all.iter().filter(|s| !kernels.contains(s)) {
                let kernel = if s.ends_with("/off") && all.contains(&kernels[1]) {
                    kernels[1]
                } else {
                    kernels[0]
                };
                let mut parts = Vec::new();
                for n in names
                    .iter()
                    .filter(|n| n.starts_with("tcp") || n.starts_with("udp64 rate"))
                {
                    if let (Some(a), Some(k)) = (self.get(s, n), self.get(kernel, n))
                        && k.median() > 0.0
                    {
                        parts.push(format!("{n} {:.2}", a.median() / k.median()));
                    }
                }
                writeln!(f, "  {s:<23} {}", parts.join(", "))?;
            }
        }
        for (scenario, nodes) in &self.counters {
            for (i, counters) in nodes.iter().enumerate() {
                let text: Vec<String> = counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
                writeln!(f, "{scenario} node {}: {}", ["a", "b"][i], text.join(" "))?;
            }
        }
        Ok(())
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
    if args.mtu != 1500 {
        for h in &topo.hosts {
            h.ip(&["link", "set", "ul0", "mtu", &args.mtu.to_string()])?;
        }
    }
    eprintln!("lab: namespaces {prefix}a {prefix}b {prefix}pa {prefix}pb");
    let mut metrics = Vec::new();
    let mut counters = Vec::new();
    if scenarios.contains(&"fustian") {
        for backend in &backends {
            for (io, offload) in loops
                .iter()
                .flat_map(|io| offloads.iter().map(move |o| (io, o)))
            {
                let name = match *offload {
                    "off" => format!("fustian-{}/{io}/off", backend.name()),
                    _ => format!("fustian-{}/{io}", backend.name()),
                };
                eprintln!("lab: {name}: starting two nodes");
                let threads = args.threads.map(|n| n.to_string());
                let mut extra = vec!["--io", io, "--offload", offload];
                if let Some(n) = &threads {
                    extra.extend(["--threads", n.as_str()]);
                }
                for i in 0..2 {
                    let node_args = topo.node_args_for(i, *backend, &extra);
                    topo.start_node(i, &exe, &node_args)?;
                }
                metrics.extend(measure(&name, &topo.pods, pod_addr, &cfg, stop)?);
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
    if scenarios.contains(&"kernel") {
        match (0..2).try_for_each(|i| topo.program_kernel_vxlan(i)) {
            Ok(()) => {
                if offloads.contains(&"auto") {
                    metrics.extend(measure("kernel-vxlan", &topo.pods, pod_addr, &cfg, stop)?);
                }
                if offloads.contains(&"off") {
                    // One segment per packet through the VXLAN device: the kernel segments
                    // before encapsulating, as a device without TSO/GSO would.
                    for h in &topo.hosts {
                        h.ip(&["link", "set", "flannel.1", "gso_max_segs", "1"])?;
                    }
                    metrics.extend(measure(
                        "kernel-vxlan/off",
                        &topo.pods,
                        pod_addr,
                        &cfg,
                        stop,
                    )?);
                }
            }
            Err(e) => eprintln!("lab: kernel vxlan skipped: {e}"),
        }
    }
    if scenarios.contains(&"underlay") {
        metrics.extend(measure("underlay", &topo.hosts, host_addr, &cfg, stop)?);
    }
    let report = Report {
        metrics,
        counters,
        repeat: cfg.repeat,
        duration: args.duration,
    };
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::Lab(format!("cannot encode JSON: {e}")))?;
        std::fs::write(path, text)
            .map_err(|e| Error::Lab(format!("cannot write {}: {e}", path.display())))?;
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, report.svg())
            .map_err(|e| Error::Lab(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(report)
}

/// What each scenario runs.
struct Plan {
    amount: Amount,
    pings: u32,
    repeat: u32,
    streams: Vec<u16>,
    iperf3: bool,
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

/// Runs one scenario's measurements `plan.repeat` times.
fn measure(
    scenario: &str,
    ns: &[Netns; 2],
    addr: fn(usize, u16) -> SocketAddr,
    plan: &Plan,
    stop: &Arc<AtomicBool>,
) -> Result<Vec<Metric>, Error> {
    let mut out: Vec<Metric> = Vec::new();
    let mut record =
        |name: String, unit: &'static str, v: f64| match out.iter_mut().find(|m| m.name == name) {
            Some(m) => m.samples.push(v),
            None => out.push(Metric {
                scenario: scenario.to_owned(),
                name,
                unit,
                samples: vec![v],
            }),
        };
    for rep in 0..plan.repeat {
        for &n in &plan.streams {
            for (from, to, dir) in [(0, 1, "a->b"), (1, 0, "b->a")] {
                eprintln!(
                    "lab: {scenario} [{}/{}] TCP x{n} {dir}",
                    rep + 1,
                    plan.repeat
                );
                let cpu0 = busy_cpu_seconds();
                let (bytes, secs) = if plan.iperf3 {
                    iperf3(&ns[from], &ns[to], addr(to, 5201), n, plan.amount)?
                } else {
                    tcp_streams(&ns[from], &ns[to], addr, to, n, plan.amount, stop)?
                };
                let cpu = busy_cpu_seconds() - cpu0;
                let gbits = bytes as f64 * 8.0 / 1e9;
                record(
                    format!("tcp x{n} {dir}"),
                    "Gbit/s",
                    if secs > 0.0 { gbits / secs } else { 0.0 },
                );
                if n == plan.streams[0] && from == 0 && gbits > 0.0 {
                    record(format!("cpu/Gbit x{n}"), "CPU s", cpu / gbits);
                }
            }
        }
        eprintln!(
            "lab: {scenario} [{}/{}] {} UDP round trips",
            rep + 1,
            plan.repeat,
            plan.pings
        );
        let lat = udp_ping_pong(&ns[0], &ns[1], addr(1, 7), plan.pings, stop)?;
        record("rtt p50".into(), "us", lat.p50.as_secs_f64() * 1e6);
        record("rtt p99".into(), "us", lat.p99.as_secs_f64() * 1e6);
        eprintln!(
            "lab: {scenario} [{}/{}] 64-byte UDP flood",
            rep + 1,
            plan.repeat
        );
        let secs = match plan.amount {
            Amount::Duration(d) => d,
            Amount::Bytes(_) => Duration::from_secs(1),
        };
        let flood = udp_flood(&ns[0], &ns[1], addr(1, 9), 64, secs, stop)?;
        record("udp64 rate".into(), "kpps", flood.pps() / 1e3);
        record("udp64 loss".into(), "%", flood.loss() * 100.0);
    }
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
    // Give the server a moment to listen.
    std::thread::sleep(Duration::from_millis(300));
    let out = std::process::Command::new("ip")
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
