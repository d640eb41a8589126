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
/// The IPv6 overlay network (unique local addresses, RFC 4193), set up by
/// [`Topology::add_ipv6`].
pub const IPV6_NETWORK: &str = "fd00:10:244::/56";
/// Node IPv6 pod subnets.
pub const IPV6_SUBNETS: [&str; 2] = ["fd00:10:244:1::/64", "fd00:10:244:2::/64"];
/// Node-side bridge IPv6 addresses.
pub const IPV6_GATEWAYS: [&str; 2] = ["fd00:10:244:1::1", "fd00:10:244:2::1"];
/// Pod IPv6 addresses.
pub const IPV6_POD_IPS: [&str; 2] = ["fd00:10:244:1::2", "fd00:10:244:2::2"];
/// Node IPv6 underlay addresses (RFC 3849 documentation range).
pub const HOST_IPS6: [&str; 2] = ["2001:db8::1", "2001:db8::2"];
/// VTEP MACs of kernel nodes' IPv6 VXLAN devices (flannel gives `flannel-v6.1` its own).
pub const VTEP_MACS6: [&str; 2] = ["02:66:75:00:06:01", "02:66:75:00:06:02"];

/// Which address families a part of the topology (the overlay or the underlay) uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
    /// Both.
    Dual,
}

impl Family {
    /// Parses `4`, `6` or `dual`.
    ///
    /// # Errors
    ///
    /// [`Error::Lab`] for anything else.
    pub fn parse(name: &str) -> Result<Self, Error> {
        match name {
            "4" => Ok(Self::V4),
            "6" => Ok(Self::V6),
            "dual" => Ok(Self::Dual),
            other => Err(Error::Lab(format!(
                "unknown family `{other}`: 4, 6 or dual"
            ))),
        }
    }

    /// Returns the name `parse` takes.
    pub const fn name(self) -> &'static str {
        match self {
            Self::V4 => "4",
            Self::V6 => "6",
            Self::Dual => "dual",
        }
    }

    /// Returns true when IPv4 is in use.
    pub const fn has_v4(self) -> bool {
        matches!(self, Self::V4 | Self::Dual)
    }

    /// Returns true when IPv6 is in use.
    pub const fn has_v6(self) -> bool {
        matches!(self, Self::V6 | Self::Dual)
    }
}

/// The families of the overlay (pods) and of the underlay (nodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stack {
    /// The pods' families.
    pub overlay: Family,
    /// The nodes' underlay families.
    pub underlay: Family,
}

impl Stack {
    /// IPv4 pods over an IPv4 underlay.
    pub const V4: Self = Self {
        overlay: Family::V4,
        underlay: Family::V4,
    };

    /// IPv6 pods over an IPv6 underlay.
    pub const V6: Self = Self {
        overlay: Family::V6,
        underlay: Family::V6,
    };

    /// Both families of pods over both underlays.
    pub const DUAL: Self = Self {
        overlay: Family::Dual,
        underlay: Family::Dual,
    };

    /// Parses `4`, `6`, `dual`, or `POD/UNDERLAY` (each `4`, `6` or `dual`), e.g. `6/4`.
    ///
    /// # Errors
    ///
    /// [`Error::Lab`] for anything else.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let (overlay, underlay) = text.split_once('/').unwrap_or((text, text));
        Ok(Self {
            overlay: Family::parse(overlay)?,
            underlay: Family::parse(underlay)?,
        })
    }

    /// Returns the name [`Self::parse`] takes: `4`, `6`, `dual`, or `POD/UNDERLAY`.
    pub fn name(self) -> String {
        if self.overlay == self.underlay {
            self.overlay.name().to_owned()
        } else {
            format!("{}/{}", self.overlay.name(), self.underlay.name())
        }
    }

    /// Returns the underlay address of node `i` that carries pod traffic of `v6` (the same
    /// family when the underlay has it, else the one it has).
    pub fn endpoint(self, i: usize, v6: bool) -> &'static str {
        let over_v6 = match self.underlay {
            Family::V4 => false,
            Family::V6 => true,
            Family::Dual => v6,
        };
        if over_v6 { HOST_IPS6[i] } else { HOST_IPS[i] }
    }
}

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

    /// Adds IPv6 to the topology: the underlay addresses [`HOST_IPS6`] on the veth pair, the
    /// bridge and pod addresses of [`IPV6_SUBNETS`] with the pods' default route, and IPv6
    /// forwarding in the nodes. Addresses skip duplicate address detection, so they are
    /// usable at once.
    ///
    /// # Errors
    ///
    /// [`Error::Lab`] when a step fails.
    pub fn add_ipv6(&self) -> Result<(), Error> {
        // Link-local addresses made when the links came up are still in duplicate address
        // detection (a second), and neighbour discovery waits for them: turn detection off and
        // bring the links up again so they come back usable at once.
        for i in 0..2 {
            for (ns, dev) in [
                (&self.hosts[i], "ul0"),
                (&self.hosts[i], "pod0"),
                (&self.pods[i], "eth0"),
            ] {
                for conf in ["all", "default", dev] {
                    ns.sysctl(&format!("net/ipv6/conf/{conf}/accept_dad"), "0")?;
                }
                ns.ip(&["link", "set", dev, "down"])?;
            }
        }
        for ((host, pod), gateway) in self.hosts.iter().zip(&self.pods).zip(GATEWAYS) {
            for (ns, dev) in [(host, "ul0"), (host, "pod0"), (pod, "eth0")] {
                ns.ip(&["link", "set", dev, "up"])?;
            }
            // The pod's IPv4 default route went with its link.
            pod.ip(&["route", "replace", "default", "via", gateway])?;
        }
        for i in 0..2 {
            let (host, pod) = (&self.hosts[i], &self.pods[i]);
            host.ip(&[
                "addr",
                "add",
                &format!("{}/64", HOST_IPS6[i]),
                "dev",
                "ul0",
                "nodad",
            ])?;
            host.ip(&[
                "addr",
                "add",
                &format!("{}/64", IPV6_GATEWAYS[i]),
                "dev",
                "pod0",
                "nodad",
            ])?;
            pod.ip(&[
                "addr",
                "add",
                &format!("{}/64", IPV6_POD_IPS[i]),
                "dev",
                "eth0",
                "nodad",
            ])?;
            pod.ip(&["-6", "route", "add", "default", "via", IPV6_GATEWAYS[i]])?;
            host.sysctl("net/ipv6/conf/all/forwarding", "1")?;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for ns in self.hosts.iter().chain(&self.pods) {
            loop {
                let out = std::process::Command::new("ip")
                    .args(["-n", ns.name(), "-6", "addr", "show", "tentative"])
                    .output()
                    .map_err(|e| Error::Lab(format!("cannot run ip: {e}")))?;
                if out.stdout.is_empty() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(Error::Lab(format!(
                        "IPv6 addresses in {} still tentative after 5 s",
                        ns.name()
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Programs node `i` as flannel's `vxlan` backend programs a kernel node's IPv6 VTEP:
    /// device `flannel-v6.1` with VNI 1, port 8472, `nolearning`, local address
    /// [`HOST_IPS6`], MTU underlay − 70, the MAC of [`VTEP_MACS6`], address
    /// `fd00:10:244:X::/128`; for the other node (whose VTEP MAC is `peer_mac`) a permanent
    /// neighbour entry, an FDB entry and an `onlink` route. Needs [`Self::add_ipv6`] first.
    ///
    /// # Errors
    ///
    /// [`Error::Lab`] when a step fails.
    pub fn program_kernel_vxlan6(&self, i: usize, peer_mac: &str) -> Result<(), Error> {
        let (host, other) = (&self.hosts[i], 1 - i);
        let own_net = IPV6_SUBNETS[i].split('/').next().unwrap_or_default();
        let peer_net = IPV6_SUBNETS[other].split('/').next().unwrap_or_default();
        host.ip(&[
            "link",
            "add",
            "flannel-v6.1",
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            HOST_IPS6[i],
            "dev",
            "ul0",
            "dstport",
            "8472",
            "nolearning",
        ])?;
        host.ip(&[
            "link",
            "set",
            "flannel-v6.1",
            "address",
            VTEP_MACS6[i],
            "mtu",
            "1430",
            "up",
        ])?;
        host.ip(&[
            "addr",
            "add",
            &format!("{own_net}/128"),
            "dev",
            "flannel-v6.1",
            "nodad",
        ])?;
        host.ip(&[
            "-6",
            "neigh",
            "add",
            peer_net,
            "lladdr",
            peer_mac,
            "dev",
            "flannel-v6.1",
            "nud",
            "permanent",
        ])?;
        netns::bridge(&[
            "-n",
            host.name(),
            "fdb",
            "append",
            peer_mac,
            "dev",
            "flannel-v6.1",
            "dst",
            HOST_IPS6[other],
            "self",
            "permanent",
        ])?;
        host.ip(&[
            "-6",
            "route",
            "add",
            IPV6_SUBNETS[other],
            "via",
            peer_net,
            "dev",
            "flannel-v6.1",
            "onlink",
        ])
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

    /// Returns the `fustian run` arguments for node `i` with `backend` on the families of
    /// `stack` (the topology needs [`Self::add_ipv6`] for any IPv6), plus `extra`: the
    /// overlay's networks and subnets (`--ipv6-network`/`--ipv6-subnet` beside IPv4 for a dual
    /// stack), the underlay's addresses (`--public-ipv6` beside IPv4 for a dual underlay), and
    /// a `--peer` per subnet of the other node, reached over the underlay of its family when
    /// there is one.
    pub fn node_args_stack(
        &self,
        i: usize,
        backend: LabBackend,
        stack: Stack,
        extra: &[&str],
    ) -> Vec<String> {
        let other = 1 - i;
        let subnet_file = self.dir.path().join(format!("node-{i}")).join("subnet.env");
        let mut args: Vec<String> = vec!["run".to_owned()];
        let mut push = |a: &str, b: &str| {
            args.push(a.to_owned());
            args.push(b.to_owned());
        };
        match stack.overlay {
            Family::V4 | Family::Dual => {
                push("--network", NETWORK);
                push("--subnet", SUBNETS[i]);
            }
            Family::V6 => {
                push("--network", IPV6_NETWORK);
                push("--subnet", IPV6_SUBNETS[i]);
            }
        }
        if stack.overlay == Family::Dual {
            push("--ipv6-network", IPV6_NETWORK);
            push("--ipv6-subnet", IPV6_SUBNETS[i]);
        }
        match stack.underlay {
            Family::V4 => push("--public-ip", HOST_IPS[i]),
            Family::V6 => push("--public-ip", HOST_IPS6[i]),
            Family::Dual => {
                push("--public-ip", HOST_IPS[i]);
                push("--public-ipv6", HOST_IPS6[i]);
            }
        }
        let mut peer_subnets = Vec::new();
        if stack.overlay.has_v4() {
            peer_subnets.push((SUBNETS[other], false));
        }
        if stack.overlay.has_v6() {
            peer_subnets.push((IPV6_SUBNETS[other], true));
        }
        for (subnet, v6) in peer_subnets {
            let mut peer = format!("{subnet}={}", stack.endpoint(other, v6));
            if backend == LabBackend::Vxlan {
                peer = format!("{peer}@{}", VTEP_MACS[other]);
            }
            push("--peer", &peer);
        }
        if backend == LabBackend::Vxlan {
            push("--backend", "vxlan");
            push("--vtep-mac", VTEP_MACS[i]);
        }
        push("--subnet-file", &subnet_file.to_string_lossy());
        push("--stats-file", &self.stats_path(i).to_string_lossy());
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
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

    /// Returns the names node `i`'s stats file declares as counters (the others are gauges).
    pub fn counter_names(&self, i: usize) -> std::collections::HashSet<String> {
        std::fs::read_to_string(self.stats_path(i))
            .map(|t| crate::metrics::prometheus_counters(&t))
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

/// Returns the IPv6 pod address of node `i` with `port`.
pub fn pod_addr6(i: usize, port: u16) -> SocketAddr {
    SocketAddr::new(
        IPV6_POD_IPS[i]
            .parse()
            .unwrap_or(std::net::Ipv6Addr::UNSPECIFIED.into()),
        port,
    )
}

/// Returns the IPv6 underlay address of node `i` with `port`.
pub fn host_addr6(i: usize, port: u16) -> SocketAddr {
    SocketAddr::new(
        HOST_IPS6[i]
            .parse()
            .unwrap_or(std::net::Ipv6Addr::UNSPECIFIED.into()),
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn stacks_parse_and_name_themselves() {
        for (text, stack) in [
            ("4", Stack::V4),
            ("6", Stack::V6),
            ("dual", Stack::DUAL),
            (
                "6/4",
                Stack {
                    overlay: Family::V6,
                    underlay: Family::V4,
                },
            ),
        ] {
            assert_eq!(Stack::parse(text).expect("valid"), stack);
            assert_eq!(stack.name(), text);
        }
        for bad in ["", "5", "4/", "/6", "6/4/4", "ipv6"] {
            assert!(Stack::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        /// Any text is a stack or an error, and a stack's name parses back to it.
        #[test]
        fn stack_parse_takes_any_text(text in ".{0,12}") {
            if let Ok(stack) = Stack::parse(&text) {
                prop_assert_eq!(Stack::parse(&stack.name()).expect("its own name"), stack);
            }
        }
    }
}
