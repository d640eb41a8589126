//! The lab's topology: two node namespaces joined by an underlay veth pair, a pod namespace
//! behind each node, the addresses they use, and the fustian processes started in them.
//!
//! [`Topology`] owns everything it creates; dropping it stops the processes, deletes the
//! namespaces (and with them every link and route) and removes the scratch directory, in that
//! order. The netns tests build on the same type.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::netns::{self, Netns, Process, check_prerequisites, veth};
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
        self.start_node_with(i, exe, args, |_| {})
    }

    /// Starts node `i` as [`Self::start_node`] does, after `prepare` has adjusted the command
    /// (see [`Netns::start_with`]).
    ///
    /// # Errors
    ///
    /// As [`Self::start_node`].
    pub fn start_node_with(
        &mut self,
        i: usize,
        exe: &str,
        args: &[String],
        prepare: impl FnOnce(&mut std::process::Command),
    ) -> Result<usize, Error> {
        let _ = std::fs::remove_file(self.stats_path(i));
        let log = self.dir.path().join(format!("node-{i}.log"));
        let mut process = self.hosts[i].start_with(exe, args, log, prepare)?;
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
