//! Typed node configuration, from flags and an optional TOML file.
//!
//! Every setting can be given as a flag or in the file given by `--config`; a flag wins over
//! the file. Values are parsed here into types that cannot hold invalid values, and every error
//! names where the bad value came from: the flag (`--subnet`) or the file and field
//! (`node.toml: subnet`). Nothing outside this module reads settings from files or the
//! environment.
//!
//! The file holds the same settings as the flags:
//!
//! ```toml
//! network = "10.244.0.0/16"
//! subnet = "10.244.1.0/24"
//! public_ip = "192.0.2.1"
//! backend = "udp"          # optional, default udp
//! port = 8285              # optional, default per backend (udp 8285, vxlan 8472)
//! vni = 1                  # vxlan: optional, default 1
//! vtep_mac = "02:..."      # vxlan: optional, default generated and kept next to subnet_file
//! port_range = "32768-60999" # vxlan: outer source ports, optional
//! source_ports = 16        # vxlan: sockets (distinct source ports) flows spread over
//! subnet_file = "/run/flannel/subnet.env" # optional
//! tun = "flannel0"         # optional
//! mtu = 1472               # optional, default underlay MTU - overhead
//! tun_txqueuelen = 2000    # optional, default the kernel's (500 for a TUN device)
//! iface = "eth0"           # optional, default: the interface holding public_ip
//! ipv6_network = "fd00:10:244::/56"  # optional: dual stack, IPv6 beside an IPv4 network
//! ipv6_subnet = "fd00:10:244:1::/64" # with ipv6_network: this node's IPv6 subnet
//! public_ipv6 = "2001:db8::1"        # optional: an IPv6 underlay address beside public_ip
//!
//! [[peer]]
//! subnet = "10.244.2.0/24"
//! public_ip = "192.0.2.2"  # or "192.0.2.2:8285"
//! vtep_mac = "02:aa:bb:cc:dd:ee" # vxlan only, required there
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use crate::table::Peer;
use crate::wire::{Encap, MacAddress, VxlanParams};

/// Default TUN device name, as flannel's `udp` backend names it.
pub const DEFAULT_TUN: &str = "flannel0";
/// Default subnet file, as flanneld's `--subnet-file`.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";

/// The largest config file read (`--config`): a node with thousands of static peers fits in
/// well under it; anything larger is refused rather than read whole at every change.
pub const MAX_CONFIG_FILE: usize = 1 << 20;
/// File name, next to the subnet file, that keeps a generated VTEP MAC across restarts.
pub const VTEP_MAC_FILE: &str = "fustian-vtep.mac";
/// Default outer source port range for VXLAN: Linux's default `ip_local_port_range`, which
/// the kernel's `vxlan` device uses when no range is configured (`udp_flow_src_port`).
pub const DEFAULT_PORT_RANGE: (u16, u16) = (32768, 60999);
/// Default number of VXLAN source sockets (distinct outer source ports).
pub const DEFAULT_SOURCE_PORTS: usize = 16;
/// The longest TUN transmit queue `tun_txqueuelen` takes, in packets. The TUN driver detaches
/// a queued packet from its sender's socket, so the queue, not the pod's socket buffer, bounds
/// its memory: up to 64 KiB a packet with offloads, so 10000 × 64 KiB, about 650 MiB per
/// worker queue (computed, not measured).
pub const MAX_TUN_TXQUEUELEN: u32 = 10_000;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value failed to parse or validate.
    #[error("invalid {origin} `{value}`: {reason}")]
    Invalid {
        /// Where it came from.
        origin: Origin,
        /// The value as given.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A required setting is missing.
    #[error("missing --{flag} (or `{field}` in the config file)")]
    Missing {
        /// The flag name.
        flag: &'static str,
        /// The file field name.
        field: &'static str,
    },
    /// The config file cannot be parsed as TOML of the expected shape.
    #[error("cannot parse config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the field and line).
        message: String,
    },
    /// The config file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Where a setting came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag.
    Flag(&'static str),
    /// A field of the config file.
    File {
        /// The file.
        path: PathBuf,
        /// The field.
        field: String,
    },
    /// The managed network's config (etcd), through [`Managed`].
    Network(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flag(name) => write!(f, "--{name}"),
            Self::File { path, field } => write!(f, "{}: {field}", path.display()),
            Self::Network(field) => write!(f, "the network config's {field}"),
        }
    }
}

/// One peer as written in a flag (`SUBNET=IP[:PORT]`) or a `[[peer]]` table.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    /// The peer's pod subnet.
    pub subnet: String,
    /// The peer's public IP, optionally with a port.
    pub public_ip: String,
    /// The peer's VTEP MAC (VXLAN).
    pub vtep_mac: Option<String>,
}

/// Settings as given, before validation: all optional, all strings where a parse can fail.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    /// Overlay network.
    pub network: Option<String>,
    /// This node's subnet.
    pub subnet: Option<String>,
    /// This node's public IP.
    pub public_ip: Option<String>,
    /// The IPv6 overlay network of a dual-stack node.
    pub ipv6_network: Option<String>,
    /// This node's IPv6 subnet in it.
    pub ipv6_subnet: Option<String>,
    /// This node's IPv6 underlay address, beside an IPv4 public IP.
    pub public_ipv6: Option<String>,
    /// Underlay interface.
    pub iface: Option<String>,
    /// Backend name.
    pub backend: Option<String>,
    /// UDP port.
    pub port: Option<u32>,
    /// TUN device name.
    pub tun: Option<String>,
    /// TUN MTU.
    pub mtu: Option<u32>,
    /// The TUN device's transmit queue length, in packets.
    pub tun_txqueuelen: Option<u32>,
    /// VXLAN VNI.
    pub vni: Option<u32>,
    /// This node's VTEP MAC.
    pub vtep_mac: Option<String>,
    /// VXLAN outer source port range, `MIN-MAX`.
    pub port_range: Option<String>,
    /// Number of VXLAN source sockets.
    pub source_ports: Option<u32>,
    /// The subnet file path (the VTEP MAC is kept next to it).
    pub subnet_file: Option<String>,
    /// Worker threads.
    pub threads: Option<u32>,
    /// Event loop: auto, uring or epoll.
    pub io: Option<String>,
    /// Offloads: auto or off.
    pub offload: Option<String>,
    /// Source-port policy for datagrams from peers: any or exact.
    pub peer_source_port: Option<String>,
    /// Peers.
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerEntry>,
    // flanneld's iptables settings (see [`TrafficConfig`]).
    /// Masquerade what the pods send outside the network.
    pub ip_masq: Option<bool>,
    /// Masquerade without `--random-fully`.
    pub ip_masq_fully_random_disable: Option<bool>,
    /// Seconds between checks of the rules.
    pub iptables_resync: Option<u64>,
    /// Accept forwarded traffic from and to the network.
    pub iptables_forward_rules: Option<bool>,
    /// Write those rules into flanneld's nftables table instead of with `iptables`.
    pub nftables: Option<bool>,
}

impl RawNode {
    /// Parses the TOML text of a config file.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Parse`] naming the file, the field and the line.
    pub fn from_toml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim().replace('\n', " "),
        })
    }

    /// Reads and parses a config file.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`] or [`ConfigError::Parse`].
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = crate::sys::read_config_file(path, MAX_CONFIG_FILE).map_err(|source| {
            ConfigError::Read {
                path: path.to_owned(),
                source,
            }
        })?;
        Self::from_toml(path, &text)
    }
}

/// The encapsulation and its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendConfig {
    /// flannel's `udp` backend format.
    Udp,
    /// VXLAN.
    Vxlan {
        /// The VNI.
        vni: u32,
        /// This node's VTEP MAC, when given; otherwise kept in [`NodeConfig::vtep_mac_path`].
        vtep_mac: Option<MacAddress>,
        /// Outer source ports are chosen inside this range (inclusive).
        port_range: (u16, u16),
        /// How many source sockets (distinct source ports) flows are spread over.
        source_ports: usize,
    },
}

impl RawNode {
    /// The worker count and event loop that `cli` over `file` ask for, read before the node
    /// joins its network, so that the process limits they need are checked before a lease is
    /// taken. A value that [`NodeConfig::resolve`] refuses counts as unset here (the refusal
    /// follows from `resolve`).
    #[must_use]
    pub fn early_workers_io(cli: &Self, file: Option<&Self>) -> (usize, IoChoice) {
        let threads = cli
            .threads
            .or_else(|| file.and_then(|f| f.threads))
            .filter(|n| (1..=256).contains(n));
        let workers = threads.map_or_else(crate::sys::available_cpus, |n| n as usize);
        let io = match cli
            .io
            .as_deref()
            .or_else(|| file.and_then(|f| f.io.as_deref()))
        {
            Some("uring") => IoChoice::Uring,
            Some("epoll") => IoChoice::Epoll,
            _ => IoChoice::Auto,
        };
        (workers.max(1), io)
    }
}

/// The event loop asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoChoice {
    /// Probe at start: io_uring where the kernel has what the loop needs, else epoll.
    Auto,
    /// epoll (mio).
    Epoll,
    /// io_uring; fails at start when the kernel lacks it.
    Uring,
}

/// The packet-filter rules a node keeps, as flanneld's `--ip-masq`,
/// `--ip-masq-fully-random-disable`, `--iptables-resync` and `--iptables-forward-rules` set
/// them (see [`crate::masq`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrafficConfig {
    /// Masquerade what the pods send outside the network (`FLANNEL-POSTRTG`).
    pub ip_masq: bool,
    /// Masquerade with `--random-fully`.
    pub random_fully: bool,
    /// Accept forwarded traffic from and to the network (`FLANNEL-FWD`). Defaults to
    /// `ip_masq`: flanneld installs these rules on every node unless told not to, fustian only
    /// with `--ip-masq` or when asked, so a node without either needs no `iptables`.
    pub forward_rules: bool,
    /// How often the rules are checked and repaired.
    pub resync: std::time::Duration,
    /// Write the rules into flanneld's nftables table (`ip flannel-ipv4`, `ip6 flannel-ipv6`)
    /// rather than with `iptables`: the network config's `EnableNFTables`, or `--nftables`.
    pub nftables: bool,
}

impl TrafficConfig {
    /// Returns true when any rule is to be kept.
    pub const fn any(&self) -> bool {
        self.ip_masq || self.forward_rules
    }
}

/// Default of `--iptables-resync`, as flanneld's: 5 seconds.
pub const DEFAULT_IPTABLES_RESYNC: u64 = 5;

/// A validated node configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// The whole overlay network (routed into the TUN device).
    pub network: IpNet,
    /// This node's pod subnet.
    pub subnet: IpNet,
    /// This node's public (underlay) address; the UDP socket binds to it.
    pub public_ip: IpAddr,
    /// The IPv6 overlay of a dual-stack node, beside the IPv4 `network` and `subnet`.
    pub ipv6: Option<Overlay6>,
    /// A second underlay address, IPv6, beside an IPv4 `public_ip`: sockets bind to it too,
    /// and peers with IPv6 endpoints are reached through them.
    pub public_ipv6: Option<Ipv6Addr>,
    /// The underlay interface, when given; otherwise the one holding `public_ip`.
    pub iface: Option<String>,
    /// The wire format and its settings.
    pub backend: BackendConfig,
    /// The subnet file path.
    pub subnet_file: PathBuf,
    /// Worker threads; `None` means one per CPU this process may run on.
    pub threads: Option<usize>,
    /// Which event loop to run.
    pub io: IoChoice,
    /// Use the kernel's offloads (TUN TSO/USO, UDP GSO/GRO) where it has them.
    pub offload: bool,
    /// Accept datagrams only from the peer's own port.
    pub strict_source_port: bool,
    /// The UDP port to bind and to send to.
    pub port: u16,
    /// The TUN device name.
    pub tun: String,
    /// The TUN MTU, when given; otherwise underlay MTU minus the encapsulation overhead.
    pub mtu: Option<u32>,
    /// The TUN device's transmit queue length (packets the kernel holds for the workers to
    /// read), when given; otherwise the kernel's.
    pub tun_txqueuelen: Option<u32>,
    /// The peers.
    pub peers: Vec<Peer>,
    /// The masquerade and forward rules to keep.
    pub traffic: TrafficConfig,
}

/// The IPv6 half of a dual-stack node's overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overlay6 {
    /// The IPv6 overlay network (flannel's `IPv6Network`), routed into the TUN device.
    pub network: IpNet,
    /// This node's IPv6 pod subnet in it.
    pub subnet: IpNet,
}

/// What a managed network (joined through etcd) settles for this node: typed values that
/// take the place of the flags and the file for these settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Managed {
    /// The overlay network.
    pub network: IpNet,
    /// This node's subnet (its lease).
    pub subnet: IpNet,
    /// The IPv6 network and this node's IPv6 subnet (its lease's), on a dual-stack network.
    pub ipv6: Option<Overlay6>,
    /// The encapsulation every node of the network uses.
    pub backend: ManagedBackend,
    /// The UDP port every node of the network listens on.
    pub port: u16,
    /// The TUN MTU the network config asks for; `--mtu` still wins, and without either the
    /// underlay decides.
    pub mtu: Option<u32>,
    /// Where the subnet file goes.
    pub subnet_file: PathBuf,
    /// The network config's `EnableNFTables`: the rules go through nftables.
    pub nftables: bool,
}

/// The encapsulation of a managed network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagedBackend {
    /// flannel's `udp` format.
    Udp,
    /// VXLAN.
    Vxlan {
        /// The network's VNI.
        vni: u32,
        /// This node's VTEP MAC, as written into its lease.
        vtep_mac: Option<MacAddress>,
    },
}

impl NodeConfig {
    /// Returns how many workers the node runs: `threads`, or one per CPU this process may
    /// run on.
    pub fn workers(&self) -> usize {
        self.threads
            .unwrap_or_else(crate::sys::available_cpus)
            .max(1)
    }

    /// Validates settings from flags (`cli`) over settings from a file (`file`, with its path).
    ///
    /// # Errors
    ///
    /// The first [`ConfigError`] found, naming the flag or the file and field.
    pub fn resolve(cli: &RawNode, file: Option<(&Path, &RawNode)>) -> Result<Self, ConfigError> {
        Self::resolve_with(cli, file, None)
    }

    /// As [`Self::resolve`], for a node of a managed network: the network, subnet, backend,
    /// port, VNI, VTEP MAC and subnet file come from `managed`, and its MTU unless `--mtu` is
    /// given. Checking that flags agree with it is the caller's business.
    ///
    /// # Errors
    ///
    /// The first [`ConfigError`] found, naming the flag, the file and field, or the network
    /// config's field.
    pub fn resolve_managed(
        cli: &RawNode,
        file: Option<(&Path, &RawNode)>,
        managed: &Managed,
    ) -> Result<Self, ConfigError> {
        Self::resolve_with(cli, file, Some(managed))
    }

    fn resolve_with(
        cli: &RawNode,
        file: Option<(&Path, &RawNode)>,
        managed: Option<&Managed>,
    ) -> Result<Self, ConfigError> {
        let empty = RawNode::default();
        let (path, file_raw) = match file {
            Some((p, r)) => (Some(p), r),
            None => (None, &empty),
        };
        let origin = |flag: &'static str, field: &str, from_cli: bool| {
            if from_cli {
                Origin::Flag(flag)
            } else {
                Origin::File {
                    path: path.map(Path::to_path_buf).unwrap_or_default(),
                    field: field.to_owned(),
                }
            }
        };
        macro_rules! pick {
            ($field:ident, $flag:literal) => {
                match (&cli.$field, &file_raw.$field) {
                    (Some(v), _) => Some((v.clone(), origin($flag, stringify!($field), true))),
                    (None, Some(v)) => Some((v.clone(), origin($flag, stringify!($field), false))),
                    (None, None) => None,
                }
            };
        }
        let required = |v: Option<(String, Origin)>, flag, field| {
            v.ok_or(ConfigError::Missing { flag, field })
        };

        let (network, subnet, subnet_s, o) = match managed {
            Some(m) => (
                m.network,
                m.subnet,
                m.subnet.to_string(),
                Origin::Network("subnet"),
            ),
            None => {
                let (network, o) = required(pick!(network, "network"), "network", "network")?;
                let network = parse_net(&network, o)?;
                let (subnet_s, o) = required(pick!(subnet, "subnet"), "subnet", "subnet")?;
                (network, parse_net(&subnet_s, o.clone())?, subnet_s, o)
            }
        };
        if !network.contains(&subnet) {
            return Err(invalid(
                o,
                &subnet_s,
                format!("not inside the network {network}"),
            ));
        }
        let ipv6 = match managed {
            Some(m) => m.ipv6,
            None => resolve_overlay6(
                network,
                pick!(ipv6_network, "ipv6-network"),
                pick!(ipv6_subnet, "ipv6-subnet"),
            )?,
        };
        let public_ipv6 = match pick!(public_ipv6, "public-ipv6") {
            None => None,
            Some((text, o)) => match parse_unicast_ip(&text, o.clone())? {
                IpAddr::V6(ip) => Some((ip, o)),
                IpAddr::V4(_) => {
                    return Err(invalid(o, &text, "not an IPv6 address".into()));
                }
            },
        };
        // An IPv6-only underlay may be given as --public-ipv6 alone.
        let (public_ip, public_ipv6) = match (pick!(public_ip, "public-ip"), public_ipv6) {
            (None, Some((v6, _))) => (IpAddr::V6(v6), None),
            (given, v6) => {
                let (text, o) = required(given, "public-ip", "public_ip")?;
                let ip = parse_unicast_ip(&text, o)?;
                match (ip, v6) {
                    (IpAddr::V6(a), Some((b, o))) if a != b => {
                        return Err(invalid(
                            o,
                            &b.to_string(),
                            format!(
                                "the public IP {a} is already IPv6; --public-ipv6 adds an IPv6 \
                                 underlay beside an IPv4 one"
                            ),
                        ));
                    }
                    (IpAddr::V6(_), Some(_)) => (ip, None),
                    (_, v6) => (ip, v6.map(|(v6, _)| v6)),
                }
            }
        };

        let vxlan = match (managed, pick!(backend, "backend")) {
            (Some(m), _) => matches!(m.backend, ManagedBackend::Vxlan { .. }),
            (None, None) => false,
            (None, Some((name, o))) => match name.as_str() {
                "udp" => false,
                "vxlan" => true,
                _ => return Err(invalid(o, &name, "supported backends: udp, vxlan".into())),
            },
        };
        let managed_vxlan = match managed.map(|m| m.backend) {
            Some(ManagedBackend::Vxlan { vni, vtep_mac }) => Some((vni, vtep_mac)),
            _ => None,
        };
        let vni = match (managed_vxlan, pick!(vni, "vni")) {
            (Some((vni, _)), _) if vni > crate::wire::vxlan::MAX_VNI => {
                return Err(invalid(
                    Origin::Network("VNI"),
                    &vni.to_string(),
                    "a VNI has 24 bits".into(),
                ));
            }
            (Some((vni, _)), _) => vni,
            (None, None) => 1,
            (None, Some((v, o))) if v > crate::wire::vxlan::MAX_VNI => {
                return Err(invalid(o, &v.to_string(), "a VNI has 24 bits".into()));
            }
            (None, Some((v, _))) => v,
        };
        let vtep_mac = match (managed_vxlan, pick!(vtep_mac, "vtep-mac")) {
            (Some((_, Some(mac))), _) if mac.is_multicast() || mac == MacAddress([0; 6]) => {
                return Err(invalid(
                    Origin::Network("VTEP MAC"),
                    &mac.to_string(),
                    "a VTEP MAC must be a unicast address".into(),
                ));
            }
            (Some((_, mac)), _) => mac,
            (None, None) => None,
            (None, Some((text, o))) => {
                Some(parse_unicast_mac(&text).map_err(|r| invalid(o, &text, r))?)
            }
        };
        let port_range = match pick!(port_range, "port-range") {
            None => DEFAULT_PORT_RANGE,
            Some((text, o)) => parse_port_range(&text).map_err(|r| invalid(o, &text, r))?,
        };
        let source_ports = match pick!(source_ports, "source-ports") {
            None => DEFAULT_SOURCE_PORTS,
            Some((n, o)) if !(1..=256).contains(&n) => {
                return Err(invalid(o, &n.to_string(), "must be 1..=256".into()));
            }
            Some((n, _)) => n as usize,
        };
        let subnet_file = match (managed, pick!(subnet_file, "subnet-file")) {
            (Some(m), _) => m.subnet_file.clone(),
            (None, None) => PathBuf::from(DEFAULT_SUBNET_FILE),
            (None, Some((text, o))) => {
                check_subnet_file(&text, o)?;
                PathBuf::from(text)
            }
        };
        let threads = match pick!(threads, "threads") {
            None => None,
            Some((n, o)) if !(1..=256).contains(&n) => {
                return Err(invalid(o, &n.to_string(), "must be 1..=256".into()));
            }
            Some((n, _)) => Some(n as usize),
        };
        let io = match pick!(io, "io") {
            None => IoChoice::Auto,
            Some((name, o)) => match name.as_str() {
                "auto" => IoChoice::Auto,
                "epoll" => IoChoice::Epoll,
                "uring" => IoChoice::Uring,
                _ => return Err(invalid(o, &name, "one of auto, uring, epoll".into())),
            },
        };
        let offload = match pick!(offload, "offload") {
            None => true,
            Some((name, o)) => match name.as_str() {
                "auto" => true,
                "off" => false,
                _ => return Err(invalid(o, &name, "one of auto, off".into())),
            },
        };
        // flannel's udp nodes send from the port they listen on, so `udp` checks it by
        // default; kernel VXLAN picks a source port per flow, so `vxlan` cannot.
        let strict_source_port = match pick!(peer_source_port, "peer-source-port") {
            None => !vxlan,
            Some((p, o)) => match p.as_str() {
                "any" => false,
                "exact" if vxlan => {
                    return Err(invalid(o, &p, "vxlan peers send from any port".into()));
                }
                "exact" => true,
                _ => return Err(invalid(o, &p, "one of any, exact".into())),
            },
        };
        let backend = if vxlan {
            BackendConfig::Vxlan {
                vni,
                vtep_mac,
                port_range,
                source_ports,
            }
        } else {
            BackendConfig::Udp
        };
        let port = match (managed, pick!(port, "port")) {
            (Some(m), _) if m.port == 0 => {
                return Err(invalid(
                    Origin::Network("port"),
                    "0",
                    "must be 1..=65535".into(),
                ));
            }
            (Some(m), _) => m.port,
            (None, None) => {
                if vxlan {
                    crate::wire::vxlan::DEFAULT_PORT
                } else {
                    crate::wire::flannel::DEFAULT_PORT
                }
            }
            (None, Some((p, o))) => match u16::try_from(p) {
                Ok(p) if p != 0 => p,
                _ => return Err(invalid(o, &p.to_string(), "must be 1..=65535".into())),
            },
        };
        let tun = match pick!(tun, "tun") {
            None => DEFAULT_TUN.to_owned(),
            Some((name, o)) => {
                // Shown with anything but printable ASCII escaped: a zero-width space would
                // otherwise print as a name that looks valid.
                check_tun_name(&name)
                    .map_err(|r| invalid(o, &name.escape_default().to_string(), r))?;
                name
            }
        };
        let iface = match pick!(iface, "iface") {
            None => None,
            Some((name, o)) => {
                check_ifname(&name).map_err(|r| invalid(o, &name, r))?;
                Some(name)
            }
        };
        // --mtu, then the network config's, then the file's.
        let mtu_given = match (&cli.mtu, managed.and_then(|m| m.mtu)) {
            (None, Some(m)) => Some((m, Origin::Network("MTU"))),
            _ => pick!(mtu, "mtu"),
        };
        let mtu = match mtu_given {
            None => None,
            // 68 is the smallest IPv4 MTU (RFC 791); the top keeps outer IP + UDP in 65535.
            Some((m, o)) if !(68..=65_000).contains(&m) => {
                return Err(invalid(o, &m.to_string(), "must be 68..=65000".into()));
            }
            Some((m, _)) => Some(m),
        };
        let tun_txqueuelen = match pick!(tun_txqueuelen, "tun-txqueuelen") {
            None => None,
            Some((n, o)) if !(1..=MAX_TUN_TXQUEUELEN).contains(&n) => {
                return Err(invalid(
                    o,
                    &n.to_string(),
                    format!("must be 1..={MAX_TUN_TXQUEUELEN} packets"),
                ));
            }
            Some((n, _)) => Some(n),
        };

        let ip_masq = pick!(ip_masq, "ip-masq").is_some_and(|(v, _)| v);
        let traffic = TrafficConfig {
            ip_masq,
            random_fully: !pick!(ip_masq_fully_random_disable, "ip-masq-fully-random-disable")
                .is_some_and(|(v, _)| v),
            forward_rules: pick!(iptables_forward_rules, "iptables-forward-rules")
                .map_or(ip_masq, |(v, _)| v),
            resync: match pick!(iptables_resync, "iptables-resync") {
                None => std::time::Duration::from_secs(DEFAULT_IPTABLES_RESYNC),
                Some((n, o)) if !(1..=86_400).contains(&n) => {
                    return Err(invalid(
                        o,
                        &n.to_string(),
                        "must be 1..=86400 seconds".into(),
                    ));
                }
                Some((n, _)) => std::time::Duration::from_secs(n),
            },
            nftables: match (pick!(nftables, "nftables"), managed) {
                // The network config decides, as for flanneld; the flag may only repeat it.
                (Some((v, o)), Some(m)) if v != m.nftables => {
                    return Err(invalid(
                        o,
                        &v.to_string(),
                        format!(
                            "the network config in etcd says EnableNFTables {}",
                            m.nftables
                        ),
                    ));
                }
                (_, Some(m)) => m.nftables,
                (v, None) => v.is_some_and(|(v, _)| v),
            },
        };

        // Peers from flags replace peers from the file, as any other setting does.
        let (entries, from_cli) = if cli.peers.is_empty() {
            (&file_raw.peers, false)
        } else {
            (&cli.peers, true)
        };
        let mut peers = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let o = origin("peer", &format!("peer[{i}]"), from_cli);
            let sn = parse_net(&entry.subnet, o.clone())?;
            let networks: Vec<IpNet> = std::iter::once(network)
                .chain(ipv6.map(|v6| v6.network))
                .collect();
            if let Some(why) = subnet_misfit(sn, &networks) {
                return Err(invalid(o, &entry.subnet, why));
            }
            let endpoint = parse_endpoint(&entry.public_ip, port)
                .map_err(|r| invalid(o.clone(), &entry.public_ip, r))?;
            if let Some(why) = endpoint_misfit(endpoint, public_ip, public_ipv6) {
                return Err(invalid(o, &entry.public_ip, why.into()));
            }
            if let Some(why) = endpoint_unusable(endpoint, &networks, public_ip, public_ipv6, port)
            {
                return Err(invalid(o, &entry.public_ip, why));
            }
            let peer_mac = match &entry.vtep_mac {
                Some(text) => {
                    let mac = parse_unicast_mac(text).map_err(|r| invalid(o.clone(), text, r))?;
                    if Some(mac) == vtep_mac {
                        return Err(invalid(o, text, "is this node's own VTEP MAC".into()));
                    }
                    Some(mac)
                }
                None if vxlan => {
                    return Err(invalid(
                        o,
                        &entry.public_ip,
                        "a vxlan peer needs its VTEP MAC: SUBNET=IP@MAC (or vtep_mac)".into(),
                    ));
                }
                None => None,
            };
            peers.push(Peer {
                subnet: sn,
                endpoint,
                vtep_mac: peer_mac,
            });
        }
        // Let the table report duplicates and overlaps with the same words it uses at run time.
        let mut local = vec![subnet];
        local.extend(ipv6.map(|v6| v6.subnet));
        crate::table::Snapshot::new(local, peers.clone()).map_err(|e| {
            let subnet = match &e {
                crate::table::TableError::DuplicateSubnet { subnet, .. }
                | crate::table::TableError::OverlapsLocal { subnet, .. } => subnet.to_string(),
            };
            invalid(origin("peer", "peer", from_cli), &subnet, e.to_string())
        })?;

        Ok(Self {
            network,
            subnet,
            public_ip,
            ipv6,
            public_ipv6,
            iface,
            backend,
            subnet_file,
            threads,
            io,
            offload,
            strict_source_port,
            port,
            tun,
            mtu,
            tun_txqueuelen,
            peers,
            traffic,
        })
    }

    /// Returns the wire format, given this node's VTEP MAC (ignored for `udp`).
    pub const fn encap(&self, local_mac: MacAddress) -> Encap {
        match self.backend {
            BackendConfig::Udp => Encap::Flannel,
            BackendConfig::Vxlan { vni, .. } => Encap::Vxlan(VxlanParams { vni, local_mac }),
        }
    }

    /// Returns the encapsulation overhead over the inner packet on this node's underlay: the
    /// larger one (IPv6's outer header) when any underlay address is IPv6, so one TUN MTU
    /// fits both.
    pub const fn overhead(&self) -> usize {
        self.encap(MacAddress([0; 6]))
            .overhead(self.public_ip.is_ipv6() || self.public_ipv6.is_some())
    }

    /// Returns this node's own subnets: the subnet, and the IPv6 subnet of a dual-stack node.
    pub fn local_subnets(&self) -> Vec<IpNet> {
        let mut local = vec![self.subnet];
        local.extend(self.ipv6.map(|v6| v6.subnet));
        local
    }

    /// Returns the overlay networks routed into the TUN device.
    pub fn networks(&self) -> Vec<IpNet> {
        let mut nets = vec![self.network];
        nets.extend(self.ipv6.map(|v6| v6.network));
        nets
    }

    /// Returns where a generated VTEP MAC is kept: next to the subnet file.
    pub fn vtep_mac_path(&self) -> PathBuf {
        vtep_mac_path(&self.subnet_file)
    }
}

/// Checks a subnet file path as given (`--subnet-file`, the config file's `subnet_file`): it
/// names a file, so it is neither empty nor ends in `/` (a directory). Such a path is refused
/// when the flags are read, before a lease is taken: else the node would join, fail at the
/// first write and leave the VTEP MAC and the temporary file in the working directory.
///
/// # Errors
///
/// [`ConfigError::Invalid`] naming `origin`.
pub fn check_subnet_file(text: &str, origin: Origin) -> Result<(), ConfigError> {
    if text.is_empty() {
        return Err(invalid(origin, text, "must not be empty".into()));
    }
    if text.ends_with('/') {
        return Err(invalid(
            origin,
            text,
            "names a directory: give the file's path".into(),
        ));
    }
    Ok(())
}

/// Returns where the generated VTEP MAC is kept: [`VTEP_MAC_FILE`] beside `subnet_file`.
pub fn vtep_mac_path(subnet_file: &Path) -> PathBuf {
    subnet_file
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(VTEP_MAC_FILE)
}

/// Returns the VTEP MAC kept in `path`, or creates a random locally administered unicast one
/// (as flannel's `pkg/mac` does) and keeps it there, so peers' neighbour entries stay valid
/// across restarts.
///
/// # Errors
///
/// [`ConfigError::Invalid`] when the file holds something else than a unicast MAC,
/// [`ConfigError::Read`] when it cannot be read, created or written.
pub fn load_or_create_vtep_mac(path: &Path) -> Result<MacAddress, ConfigError> {
    if let Some(mac) = load_vtep_mac(path)? {
        return Ok(mac);
    }
    let mac = new_vtep_mac()?;
    keep_vtep_mac(path, mac)?;
    Ok(mac)
}

/// Returns the VTEP MAC kept in `path`, `None` when there is no such file.
///
/// # Errors
///
/// [`ConfigError::Invalid`] when the file holds something else than a unicast MAC,
/// [`ConfigError::Read`] when it cannot be read.
pub fn load_vtep_mac(path: &Path) -> Result<Option<MacAddress>, ConfigError> {
    // A MAC and a line feed; the file is never echoed back (it could be a link to another).
    match crate::sys::read_own_small_file(path, 64) {
        Ok(text) => {
            let text = text.trim();
            parse_unicast_mac(text)
                .map(Some)
                .map_err(|reason| ConfigError::Invalid {
                    origin: Origin::File {
                        path: path.to_owned(),
                        field: "VTEP MAC".into(),
                    },
                    value: format!("{} bytes", text.len()),
                    reason,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// A random locally administered unicast MAC, as flannel's `pkg/mac` makes one.
///
/// # Errors
///
/// [`ConfigError::Read`] when `/dev/urandom` cannot be read.
pub fn new_vtep_mac() -> Result<MacAddress, ConfigError> {
    let urandom = Path::new("/dev/urandom");
    let io_err = |source| ConfigError::Read {
        path: urandom.to_owned(),
        source,
    };
    let mut random = [0u8; 6];
    let mut file = std::fs::File::open(urandom).map_err(io_err)?;
    std::io::Read::read_exact(&mut file, &mut random).map_err(io_err)?;
    Ok(MacAddress::local_unicast(random))
}

/// Keeps `mac` in `path` (its directory created if needed), written atomically.
///
/// # Errors
///
/// [`ConfigError::Read`] when the directory or the file cannot be written.
pub fn keep_vtep_mac(path: &Path, mac: MacAddress) -> Result<(), ConfigError> {
    let io_err = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    crate::sys::write_atomically(path, format!("{mac}\n").as_bytes()).map_err(io_err)
}

fn parse_unicast_mac(text: &str) -> Result<MacAddress, String> {
    let mac: MacAddress = text.parse()?;
    if mac.is_multicast() || mac == MacAddress([0; 6]) {
        return Err("a VTEP MAC must be a unicast address".into());
    }
    Ok(mac)
}

fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = text
        .split_once('-')
        .ok_or("expected MIN-MAX, e.g. 32768-60999")?;
    let lo: u16 = lo
        .trim()
        .parse()
        .map_err(|_| format!("`{lo}` is not a port"))?;
    let hi: u16 = hi
        .trim()
        .parse()
        .map_err(|_| format!("`{hi}` is not a port"))?;
    if lo == 0 || lo > hi {
        return Err("need 1 <= MIN <= MAX".into());
    }
    Ok((lo, hi))
}

/// Returns why a peer's `subnet` lies outside the overlay `networks` of the node, if it does.
pub(crate) fn subnet_misfit(subnet: IpNet, networks: &[IpNet]) -> Option<String> {
    if networks.iter().any(|n| n.contains(&subnet)) {
        return None;
    }
    let names: Vec<String> = networks.iter().map(ToString::to_string).collect();
    Some(match names.as_slice() {
        [one] => format!("not inside the network {one}"),
        _ => format!("not inside the networks {}", names.join(" and ")),
    })
}

/// Returns why a node with the underlay address `public_ip` (and `public_ipv6` beside it)
/// cannot reach a peer at `endpoint`, if it cannot: it has no socket of that family.
pub(crate) fn endpoint_misfit(
    endpoint: SocketAddr,
    public_ip: IpAddr,
    public_ipv6: Option<Ipv6Addr>,
) -> Option<&'static str> {
    if endpoint.is_ipv4() == public_ip.is_ipv4() || (endpoint.is_ipv6() && public_ipv6.is_some()) {
        None
    } else if endpoint.is_ipv6() {
        Some("an IPv6 endpoint needs an IPv6 underlay: give --public-ipv6")
    } else {
        Some("an IPv4 endpoint needs an IPv4 --public-ip")
    }
}

/// Returns why a static peer at `endpoint` cannot be sent to, judged as a lease's `PublicIP`
/// is (see [`crate::control::lease::judge_public_ip`]): an address that reaches no host or many
/// (unspecified, multicast, broadcast, 240.0.0.0/4; for IPv6 also link-local and IPv4-mapped),
/// one inside the overlay `networks` (its datagrams would be routed into the TUN device and
/// encapsulated again, a loop), or this node's own socket (`public_ip`/`public_ipv6` at its
/// `port`). A loopback address, or this node's address at another port, stays allowed: the
/// operator wrote it, and two nodes on one host (tests, the lab) are reached that way.
pub(crate) fn endpoint_unusable(
    endpoint: SocketAddr,
    networks: &[IpNet],
    public_ip: IpAddr,
    public_ipv6: Option<Ipv6Addr>,
    port: u16,
) -> Option<String> {
    use crate::control::lease::{Rejection, judge_public_ip, judge_public_ipv6};
    let ip = endpoint.ip();
    if let Some(net) = networks.iter().find(|n| n.contains(&ip)) {
        return Some(format!(
            "lies inside the overlay network {net}: datagrams to it would be routed into the \
             TUN device and encapsulated again"
        ));
    }
    let own = ip == public_ip || public_ipv6.is_some_and(|v6| IpAddr::V6(v6) == ip);
    if own && endpoint.port() == port {
        return Some(format!(
            "is this node's own socket ({endpoint}): a node does not send to itself"
        ));
    }
    // The node's own address and loopback are settled above and allowed.
    let verdict = match ip {
        IpAddr::V4(v4) => judge_public_ip(v4, Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(v6) => judge_public_ipv6(v6, None).filter(|_| !v6.is_loopback()),
    };
    let why = match verdict? {
        Rejection::PublicIpLoopback | Rejection::PublicIpOwn | Rejection::PublicIpv6Own => {
            return None;
        }
        Rejection::PublicIpUnspecified => "is the unspecified address",
        Rejection::PublicIpMulticast => "is a multicast address",
        Rejection::PublicIpBroadcast => "is the broadcast address",
        Rejection::PublicIpReserved => "lies in 240.0.0.0/4, reserved: no host is there",
        _ => {
            "cannot be a peer's underlay address (unspecified, multicast, link-local with no \
              interface to send on, or IPv4-mapped)"
        }
    };
    Some(why.to_owned())
}

/// Settles the IPv6 half of a dual-stack overlay from `--ipv6-network` and `--ipv6-subnet`:
/// both or neither, both IPv6, the subnet inside the network, beside an IPv4 `network`.
fn resolve_overlay6(
    network: IpNet,
    net6: Option<(String, Origin)>,
    sub6: Option<(String, Origin)>,
) -> Result<Option<Overlay6>, ConfigError> {
    let (net_text, net_o, sub_text, sub_o) = match (net6, sub6) {
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(ConfigError::Missing {
                flag: "ipv6-subnet",
                field: "ipv6_subnet",
            });
        }
        (None, Some(_)) => {
            return Err(ConfigError::Missing {
                flag: "ipv6-network",
                field: "ipv6_network",
            });
        }
        (Some((n, no)), Some((s, so))) => (n, no, s, so),
    };
    let net = parse_net(&net_text, net_o.clone())?;
    if !matches!(net, IpNet::V6(_)) {
        return Err(invalid(net_o, &net_text, "not an IPv6 network".into()));
    }
    if matches!(network, IpNet::V6(_)) {
        return Err(invalid(
            net_o,
            &net_text,
            format!(
                "the network {network} is already IPv6; --ipv6-network adds IPv6 beside an \
                 IPv4 network"
            ),
        ));
    }
    let sub = parse_net(&sub_text, sub_o.clone())?;
    if !net.contains(&sub) {
        return Err(invalid(
            sub_o,
            &sub_text,
            format!("not inside the IPv6 network {net}"),
        ));
    }
    if sub.prefix_len() > 126 {
        return Err(invalid(
            sub_o,
            &sub_text,
            "an IPv6 subnet needs room for pods: /126 or shorter".into(),
        ));
    }
    Ok(Some(Overlay6 {
        network: net,
        subnet: sub,
    }))
}

/// Parses a unicast IP address (public IPs).
fn parse_unicast_ip(text: &str, origin: Origin) -> Result<IpAddr, ConfigError> {
    let ip: IpAddr = text
        .parse()
        .map_err(|e| invalid(origin.clone(), text, format!("{e}")))?;
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(invalid(origin, text, "must be a unicast address".into()));
    }
    Ok(ip)
}

/// Parses `SUBNET=IP[:PORT][@MAC]` as written after `--peer`.
///
/// # Errors
///
/// A message saying what is wrong with the text.
pub fn parse_peer_flag(text: &str) -> Result<PeerEntry, String> {
    let (subnet, rest) = text.split_once('=').ok_or_else(|| {
        format!("`{text}` is not SUBNET=PUBLIC_IP[@VTEP_MAC], e.g. 10.244.2.0/24=192.0.2.2")
    })?;
    let (ip, mac) = match rest.split_once('@') {
        Some((ip, mac)) => (ip, Some(mac.trim().to_owned())),
        None => (rest, None),
    };
    Ok(PeerEntry {
        subnet: subnet.trim().to_owned(),
        public_ip: ip.trim().to_owned(),
        vtep_mac: mac,
    })
}

fn invalid(origin: Origin, value: &str, reason: String) -> ConfigError {
    ConfigError::Invalid {
        origin,
        // The value may come from a file or the network config, and reaches the log.
        value: crate::sys::one_line(value).into_owned(),
        reason,
    }
}

fn parse_net(text: &str, origin: Origin) -> Result<IpNet, ConfigError> {
    let net: IpNet = text.parse().map_err(|_| {
        invalid(
            origin.clone(),
            text,
            "expected a prefix like 10.244.0.0/16".into(),
        )
    })?;
    if net.trunc() != net {
        return Err(invalid(
            origin,
            text,
            format!("host bits are set; did you mean {}", net.trunc()),
        ));
    }
    Ok(net)
}

fn parse_endpoint(text: &str, default_port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    match text.parse::<SocketAddr>() {
        Ok(sa) if sa.port() != 0 => Ok(sa),
        Ok(_) => Err("port must not be 0".into()),
        Err(_) => Err("expected an IP address, optionally with :PORT".into()),
    }
}

fn check_ifname(name: &str) -> Result<(), String> {
    // IFNAMSIZ is 16 including the NUL (include/uapi/linux/if.h).
    if name.is_empty() || name.len() > 15 {
        return Err("interface names are 1 to 15 bytes".into());
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
    {
        return Err("interface names cannot hold '/', ':' or whitespace".into());
    }
    Ok(())
}

/// Checks a TUN device name (`--tun`, `tun`): what [`check_ifname`] takes, and only printable
/// ASCII, not `.` or `..`. The kernel takes other bytes in a name it creates, but a name that
/// cannot be typed or shown as it is (`flannel\u{200b}0`) only leaves a device nobody finds
/// by its name; `.` and `..` it refuses itself (`dev_valid_name`).
fn check_tun_name(name: &str) -> Result<(), String> {
    check_ifname(name)?;
    if !name.bytes().all(|b| b.is_ascii_graphic()) || name == "." || name == ".." {
        return Err(
            "TUN device names are printable ASCII without '/', ':' or whitespace, and not \
             `.` or `..`"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    pub(super) fn managed() -> Managed {
        Managed {
            network: "10.244.0.0/16".parse().expect("literal"),
            subnet: "10.244.9.0/24".parse().expect("literal"),
            ipv6: None,
            backend: ManagedBackend::Vxlan {
                vni: 7,
                vtep_mac: Some("02:00:00:00:00:09".parse().expect("literal")),
            },
            port: 8472,
            mtu: Some(1400),
            subnet_file: PathBuf::from("/run/test/subnet.env"),
            nftables: false,
        }
    }

    #[test]
    fn early_workers_and_loop_follow_flags_over_the_file() {
        let flags = RawNode {
            threads: Some(3),
            ..RawNode::default()
        };
        let file = RawNode {
            threads: Some(5),
            io: Some("uring".into()),
            ..RawNode::default()
        };
        assert_eq!(
            RawNode::early_workers_io(&flags, Some(&file)),
            (3, IoChoice::Uring)
        );
        let epoll = RawNode {
            io: Some("epoll".into()),
            ..RawNode::default()
        };
        assert_eq!(
            RawNode::early_workers_io(&epoll, Some(&file)),
            (5, IoChoice::Epoll)
        );
        // What resolve refuses counts as unset: one worker per CPU, auto.
        let bad = RawNode {
            threads: Some(0),
            io: Some("kqueue".into()),
            ..RawNode::default()
        };
        assert_eq!(
            RawNode::early_workers_io(&bad, None),
            (crate::sys::available_cpus().max(1), IoChoice::Auto)
        );
    }

    #[test]
    fn a_managed_network_settles_its_fields_typed() {
        let raw = RawNode {
            public_ip: Some("192.0.2.1".into()),
            ..RawNode::default()
        };
        let c = NodeConfig::resolve_managed(&raw, None, &managed()).expect("valid");
        assert_eq!(c.network, managed().network);
        assert_eq!(c.subnet, managed().subnet);
        assert_eq!(c.port, 8472);
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.subnet_file, PathBuf::from("/run/test/subnet.env"));
        assert!(!c.strict_source_port, "vxlan peers send from any port");
        match c.backend {
            BackendConfig::Vxlan { vni, vtep_mac, .. } => {
                assert_eq!(vni, 7);
                assert_eq!(
                    vtep_mac,
                    Some("02:00:00:00:00:09".parse().expect("literal"))
                );
            }
            BackendConfig::Udp => panic!("the network says vxlan"),
        }
        // --mtu still wins over the network's; the file's subnet settings do not count.
        let file = RawNode {
            network: Some("10.99.0.0/16".into()),
            subnet: Some("10.99.1.0/24".into()),
            mtu: Some(1200),
            ..RawNode::default()
        };
        let flags = RawNode {
            mtu: Some(1300),
            ..raw.clone()
        };
        let path = Path::new("node.toml");
        let c =
            NodeConfig::resolve_managed(&flags, Some((path, &file)), &managed()).expect("valid");
        assert_eq!((c.mtu, c.network), (Some(1300), managed().network));
        // The network's MTU wins over the file's.
        let c = NodeConfig::resolve_managed(&raw, Some((path, &file)), &managed()).expect("valid");
        assert_eq!(c.mtu, Some(1400));
        // udp: the flag's port rules are not consulted, the source port is checked.
        let udp = Managed {
            backend: ManagedBackend::Udp,
            port: 8285,
            mtu: None,
            ..managed()
        };
        let c = NodeConfig::resolve_managed(&raw, None, &udp).expect("valid");
        assert_eq!((c.backend, c.port, c.mtu), (BackendConfig::Udp, 8285, None));
        assert!(c.strict_source_port);
    }

    #[test]
    fn a_managed_network_s_bad_values_are_named() {
        let raw = RawNode {
            public_ip: Some("192.0.2.1".into()),
            ..RawNode::default()
        };
        let bad_vni = Managed {
            backend: ManagedBackend::Vxlan {
                vni: crate::wire::vxlan::MAX_VNI + 1,
                vtep_mac: None,
            },
            ..managed()
        };
        let e = NodeConfig::resolve_managed(&raw, None, &bad_vni).expect_err("24 bits");
        assert!(e.to_string().contains("the network config's VNI"), "{e}");
        let outside = Managed {
            subnet: "10.245.0.0/24".parse().expect("literal"),
            ..managed()
        };
        let e = NodeConfig::resolve_managed(&raw, None, &outside).expect_err("outside");
        assert!(e.to_string().contains("not inside the network"), "{e}");
        let small = Managed {
            mtu: Some(20),
            ..managed()
        };
        let e = NodeConfig::resolve_managed(&raw, None, &small).expect_err("too small");
        assert!(e.to_string().contains("the network config's MTU"), "{e}");
    }

    fn cli() -> RawNode {
        RawNode {
            network: Some("10.244.0.0/16".into()),
            subnet: Some("10.244.1.0/24".into()),
            public_ip: Some("192.0.2.1".into()),
            peers: vec![parse_peer_flag("10.244.2.0/24=192.0.2.2").expect("valid")],
            ..RawNode::default()
        }
    }

    #[test]
    fn flags_resolve_with_defaults() {
        let c = NodeConfig::resolve(&cli(), None).expect("valid");
        assert_eq!(c.port, 8285);
        assert_eq!(c.tun, "flannel0");
        assert_eq!(c.backend, BackendConfig::Udp);
        assert_eq!(c.overhead(), 28);
        assert_eq!(
            c.peers[0].endpoint,
            "192.0.2.2:8285".parse().expect("literal")
        );
    }

    #[test]
    fn errors_name_the_flag() {
        let mut raw = cli();
        raw.subnet = Some("10.245.1.0/24".into());
        let e = NodeConfig::resolve(&raw, None)
            .expect_err("outside")
            .to_string();
        assert!(e.starts_with("invalid --subnet `10.245.1.0/24`"), "{e}");
        let mut raw = cli();
        raw.backend = Some("ipip".into());
        let e = NodeConfig::resolve(&raw, None)
            .expect_err("backend")
            .to_string();
        assert!(e.contains("--backend"), "{e}");
        let mut raw = cli();
        raw.network = None;
        let e = NodeConfig::resolve(&raw, None)
            .expect_err("missing")
            .to_string();
        assert_eq!(e, "missing --network (or `network` in the config file)");
        let mut raw = cli();
        raw.subnet = Some("10.244.1.7/24".into());
        let e = NodeConfig::resolve(&raw, None)
            .expect_err("host bits")
            .to_string();
        assert!(e.contains("did you mean 10.244.1.0/24"), "{e}");
    }

    #[test]
    fn file_values_and_errors_name_the_file_and_field() {
        let path = Path::new("node.toml");
        let text = r#"
            network = "10.244.0.0/16"
            subnet = "10.244.1.0/24"
            public_ip = "192.0.2.1"
            port = 9000
            [[peer]]
            subnet = "10.244.2.0/24"
            public_ip = "192.0.2.2"
            [[peer]]
            subnet = "10.244.3.0/24"
            public_ip = "192.0.2.3:9999"
        "#;
        let file = RawNode::from_toml(path, text).expect("parses");
        let c = NodeConfig::resolve(&RawNode::default(), Some((path, &file))).expect("valid");
        assert_eq!(c.port, 9000);
        assert_eq!(
            c.peers[0].endpoint,
            "192.0.2.2:9000".parse().expect("literal")
        );
        assert_eq!(
            c.peers[1].endpoint,
            "192.0.2.3:9999".parse().expect("literal")
        );
        // A flag overrides the file.
        let over = RawNode {
            port: Some(8285),
            ..RawNode::default()
        };
        assert_eq!(
            NodeConfig::resolve(&over, Some((path, &file)))
                .expect("ok")
                .port,
            8285
        );

        let bad = RawNode::from_toml(path, &text.replace("10.244.3.0/24", "10.250.3.0/24"))
            .expect("parses");
        let e = NodeConfig::resolve(&RawNode::default(), Some((path, &bad)))
            .expect_err("outside")
            .to_string();
        assert!(
            e.starts_with("invalid node.toml: peer[1] `10.250.3.0/24`"),
            "{e}"
        );

        let e = RawNode::from_toml(path, "netwrok = \"x\"")
            .expect_err("unknown")
            .to_string();
        assert!(e.contains("node.toml") && e.contains("netwrok"), "{e}");
    }

    #[test]
    fn duplicate_peers_are_rejected() {
        let mut raw = cli();
        raw.peers
            .push(parse_peer_flag("10.244.2.0/24=192.0.2.3").expect("valid"));
        let e = NodeConfig::resolve(&raw, None)
            .expect_err("dup")
            .to_string();
        assert!(e.contains("claimed by both"), "{e}");
    }

    #[rstest::rstest]
    #[case::unspecified("0.0.0.0", "unspecified")]
    #[case::multicast("224.0.0.1", "multicast")]
    #[case::broadcast("255.255.255.255", "broadcast")]
    #[case::reserved("240.0.0.1", "reserved")]
    #[case::inside_the_network("10.244.9.1", "inside the overlay network 10.244.0.0/16")]
    #[case::inside_its_own_subnet("10.244.2.1", "inside the overlay network")]
    #[case::own_socket("192.0.2.1", "own socket")]
    #[case::own_socket_with_port("192.0.2.1:8285", "own socket")]
    fn a_static_peer_s_unusable_endpoint_is_named(#[case] endpoint: &str, #[case] why: &str) {
        let mut raw = cli();
        raw.peers = vec![parse_peer_flag(&format!("10.244.2.0/24={endpoint}")).expect("parses")];
        let e = NodeConfig::resolve(&raw, None)
            .expect_err("unusable")
            .to_string();
        assert!(e.contains(endpoint) && e.contains(why), "{e}");
    }

    #[rstest::rstest]
    #[case::loopback("127.0.0.1:8286")]
    #[case::own_address_at_another_port("192.0.2.1:8286")]
    #[case::a_plain_address("198.51.100.7")]
    fn a_static_peer_on_this_host_stays_allowed(#[case] endpoint: &str) {
        let mut raw = cli();
        raw.peers = vec![parse_peer_flag(&format!("10.244.2.0/24={endpoint}")).expect("parses")];
        NodeConfig::resolve(&raw, None).expect("allowed");
    }

    #[test]
    fn ipv6_static_peers_are_judged_alike() {
        let six = |endpoint: &str| {
            let raw = RawNode {
                network: Some("fd00:10:244::/48".into()),
                subnet: Some("fd00:10:244:1::/64".into()),
                public_ip: Some("2001:db8::1".into()),
                peers: vec![
                    parse_peer_flag(&format!("fd00:10:244:2::/64={endpoint}")).expect("parses"),
                ],
                ..RawNode::default()
            };
            NodeConfig::resolve(&raw, None).map(|_| ())
        };
        for bad in [
            "::",
            "ff02::1",
            "fe80::1",
            "::ffff:192.0.2.2",
            "fd00:10:244:9::1",
            "2001:db8::1",
        ] {
            assert!(six(bad).is_err(), "{bad} accepted");
        }
        for good in ["2001:db8::2", "[::1]:8286", "[2001:db8::1]:8286"] {
            six(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }

    proptest! {
        #[test]
        fn arbitrary_files_never_panic(text in "\\PC{0,200}") {
            if let Ok(raw) = RawNode::from_toml(Path::new("f.toml"), &text) {
                let _ = NodeConfig::resolve(&RawNode::default(), Some((Path::new("f.toml"), &raw)));
            }
        }

        #[test]
        fn arbitrary_flag_values_never_panic(net in "\\PC{0,30}", sub in "\\PC{0,30}",
                                             ip in "\\PC{0,30}", peer in "\\PC{0,40}") {
            let raw = RawNode {
                network: Some(net), subnet: Some(sub), public_ip: Some(ip),
                peers: parse_peer_flag(&peer).into_iter().collect(),
                ..RawNode::default()
            };
            let _ = NodeConfig::resolve(&raw, None);
        }
    }
}

#[cfg(test)]
mod traffic_tests {
    use proptest::prelude::*;

    use super::*;

    fn raw() -> RawNode {
        RawNode {
            network: Some("10.244.0.0/16".into()),
            subnet: Some("10.244.1.0/24".into()),
            public_ip: Some("192.0.2.1".into()),
            ..RawNode::default()
        }
    }

    /// The error `resolve` gives for `raw`, which it must refuse.
    fn refusal(raw: &RawNode) -> String {
        NodeConfig::resolve(raw, None)
            .expect_err("refused")
            .to_string()
    }

    proptest! {
        #[test]
        fn tun_names_and_subnet_file_paths_are_judged_on_any_text(text in "\\PC{0,20}|.{0,20}") {
            if check_tun_name(&text).is_ok() {
                prop_assert!((1..=15).contains(&text.len()), "{text:?}");
                prop_assert!(
                    text.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':'),
                    "{text:?}"
                );
            }
            let taken = check_subnet_file(&text, Origin::Flag("subnet-file")).is_ok();
            prop_assert_eq!(taken, !text.is_empty() && !text.ends_with('/'));
        }
    }

    #[test]
    fn a_tun_name_is_printable_ascii() {
        for (name, shown) in [
            ("flannel\u{200b}0", "flannel\\u{200b}0"),
            ("fl\u{e9}nnel", "fl\\u{e9}nnel"),
            ("tun\u{7f}", "tun\\u{7f}"),
            ("..", ".."),
        ] {
            let e = refusal(&RawNode {
                tun: Some(name.into()),
                ..raw()
            });
            assert_eq!(
                e,
                format!(
                    "invalid --tun `{shown}`: TUN device names are printable ASCII without \
                     '/', ':' or whitespace, and not `.` or `..`"
                )
            );
        }
        for (name, words) in [
            ("flannel\n0", "cannot hold"),
            ("a/b", "cannot hold"),
            ("flannel-0123456789", "1 to 15 bytes"),
            // 15 bytes in 5 characters: too long for IFNAMSIZ, counted in bytes.
            (
                "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}",
                "1 to 15 bytes",
            ),
        ] {
            let e = refusal(&RawNode {
                tun: Some(name.into()),
                ..raw()
            });
            assert!(e.contains(words), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        for name in ["flannel0", "flannel.1", "a", "fl-_@+%0123456x"] {
            let r = RawNode {
                tun: Some(name.into()),
                ..raw()
            };
            assert_eq!(NodeConfig::resolve(&r, None).expect("valid").tun, name);
        }
    }

    #[test]
    fn a_subnet_file_path_naming_no_file_is_refused() {
        for (text, words) in [
            ("", "must not be empty"),
            ("/run/flannel/", "names a directory"),
        ] {
            let e = refusal(&RawNode {
                subnet_file: Some(text.into()),
                ..raw()
            });
            assert!(e.starts_with("invalid --subnet-file"), "{e}");
            assert!(e.contains(words), "{e}");
            let e = check_subnet_file(text, Origin::Flag("subnet-file")).expect_err("refused");
            assert!(e.to_string().contains(words), "{e}");
        }
        let file = Origin::File {
            path: "/etc/fustian.toml".into(),
            field: "subnet_file".into(),
        };
        let e = check_subnet_file("", file).expect_err("refused");
        assert!(
            e.to_string()
                .starts_with("invalid /etc/fustian.toml: subnet_file ``"),
            "{e}"
        );
        assert!(check_subnet_file("subnet.env", Origin::Flag("subnet-file")).is_ok());
        assert!(check_subnet_file("/run/flannel/subnet.env", Origin::Flag("subnet-file")).is_ok());
    }

    #[test]
    fn iptables_settings_default_as_documented() {
        let off = NodeConfig::resolve(&raw(), None).expect("valid").traffic;
        assert!(!off.ip_masq && !off.forward_rules && !off.any());
        assert!(off.random_fully);
        assert_eq!(off.resync, std::time::Duration::from_secs(5));
        let on = RawNode {
            ip_masq: Some(true),
            ..raw()
        };
        let on = NodeConfig::resolve(&on, None).expect("valid").traffic;
        assert!(on.ip_masq && on.forward_rules && on.random_fully);
        let custom = RawNode {
            ip_masq: Some(true),
            ip_masq_fully_random_disable: Some(true),
            iptables_forward_rules: Some(false),
            iptables_resync: Some(60),
            ..raw()
        };
        let custom = NodeConfig::resolve(&custom, None).expect("valid").traffic;
        assert!(custom.ip_masq && !custom.random_fully && !custom.forward_rules);
        assert_eq!(custom.resync, std::time::Duration::from_secs(60));
        let forward_only = RawNode {
            iptables_forward_rules: Some(true),
            ..raw()
        };
        let forward_only = NodeConfig::resolve(&forward_only, None)
            .expect("valid")
            .traffic;
        assert!(!forward_only.ip_masq && forward_only.forward_rules);
    }

    #[test]
    fn nftables_comes_from_the_flag_or_the_network_config_alone() {
        let with = |v: Option<bool>| RawNode {
            ip_masq: Some(true),
            nftables: v,
            ..raw()
        };
        let traffic = |r: &RawNode| NodeConfig::resolve(r, None).expect("valid").traffic;
        assert!(!traffic(&with(None)).nftables, "iptables by default");
        assert!(traffic(&with(Some(true))).nftables);
        assert!(!traffic(&with(Some(false))).nftables);
        // From etcd the network config decides; the flag may repeat it, not change it.
        let managed_cli = |v: Option<bool>| RawNode {
            public_ip: Some("192.0.2.1".into()),
            nftables: v,
            ..RawNode::default()
        };
        for config in [false, true] {
            let m = Managed {
                nftables: config,
                ..super::tests::managed()
            };
            let got = |v| NodeConfig::resolve_managed(&managed_cli(v), None, &m);
            assert_eq!(got(None).expect("valid").traffic.nftables, config);
            assert_eq!(got(Some(config)).expect("valid").traffic.nftables, config);
            let e = got(Some(!config)).expect_err("the flag disagrees");
            assert!(
                e.to_string().contains("--nftables")
                    && e.to_string().contains(&format!("EnableNFTables {config}")),
                "{e}"
            );
        }
        let file = RawNode::from_toml(Path::new("node.toml"), "nftables = true\n").expect("ok");
        assert_eq!(file.nftables, Some(true));
    }

    #[test]
    fn resync_zero_or_huge_is_refused() {
        for n in [0, 86_401, u64::MAX] {
            let bad = RawNode {
                iptables_resync: Some(n),
                ..raw()
            };
            let e = NodeConfig::resolve(&bad, None).expect_err("refused");
            assert!(e.to_string().contains("--iptables-resync"), "{e}");
        }
    }

    #[test]
    fn flags_parse_as_go_bool_flags() {
        use clap::Parser as _;
        let parse = |args: &[&str]| {
            let mut full = vec!["fustian", "run"];
            full.extend_from_slice(args);
            match crate::cli::Cli::try_parse_from(full).map(|c| c.command) {
                Ok(crate::cli::Command::Run(run)) => Some(run.raw()),
                _ => None,
            }
        };
        let raw = parse(&["--ip-masq", "--iptables-forward-rules=false"]).expect("parses");
        assert_eq!(raw.ip_masq, Some(true));
        assert_eq!(raw.iptables_forward_rules, Some(false));
        assert_eq!(raw.ip_masq_fully_random_disable, None);
        let raw = parse(&["--ip-masq=false", "--ip-masq-fully-random-disable"]).expect("parses");
        assert_eq!(raw.ip_masq, Some(false));
        assert_eq!(raw.ip_masq_fully_random_disable, Some(true));
        assert!(parse(&["--ip-masq=maybe"]).is_none());
        assert!(parse(&["--iptables-resync", "-1"]).is_none());
    }

    #[test]
    fn file_fields_are_read() {
        let path = Path::new("node.toml");
        let file = RawNode::from_toml(path, "ip_masq = true\niptables_resync = 2\n").expect("ok");
        assert_eq!(file.ip_masq, Some(true));
        assert_eq!(file.iptables_resync, Some(2));
    }

    #[test]
    fn the_tun_queue_length_is_bounded_and_named() {
        let base = || RawNode {
            network: Some("10.244.0.0/16".into()),
            subnet: Some("10.244.1.0/24".into()),
            public_ip: Some("192.0.2.1".into()),
            ..RawNode::default()
        };
        let c = NodeConfig::resolve(&base(), None).expect("valid");
        assert_eq!(c.tun_txqueuelen, None, "the kernel's by default");
        for n in [1, 2000, MAX_TUN_TXQUEUELEN] {
            let raw = RawNode {
                tun_txqueuelen: Some(n),
                ..base()
            };
            let c = NodeConfig::resolve(&raw, None).expect("in range");
            assert_eq!(c.tun_txqueuelen, Some(n));
        }
        for n in [0, MAX_TUN_TXQUEUELEN + 1, u32::MAX] {
            let raw = RawNode {
                tun_txqueuelen: Some(n),
                ..base()
            };
            let e = NodeConfig::resolve(&raw, None).expect_err("out of range");
            assert!(
                e.to_string().contains(&format!(
                    "invalid --tun-txqueuelen `{n}`: must be 1..=10000"
                )),
                "{e}"
            );
        }
        // From the file, named by its field; a flag wins over it.
        let path = Path::new("node.toml");
        let file = RawNode::from_toml(path, "tun_txqueuelen = 0\n").expect("parses");
        let e = NodeConfig::resolve(&base(), Some((path, &file))).expect_err("zero");
        assert!(e.to_string().contains("node.toml: tun_txqueuelen"), "{e}");
        let flag = RawNode {
            tun_txqueuelen: Some(3000),
            ..base()
        };
        let c = NodeConfig::resolve(&flag, Some((path, &file))).expect("the flag wins");
        assert_eq!(c.tun_txqueuelen, Some(3000));
        assert!(RawNode::from_toml(path, "tun_txqueuelen = -1\n").is_err());
        assert!(RawNode::from_toml(path, "tun_txqueuelen = \"big\"\n").is_err());
    }
}

#[cfg(test)]
mod vxlan_tests {
    use super::*;

    fn raw(peer: &str) -> RawNode {
        RawNode {
            network: Some("10.244.0.0/16".into()),
            subnet: Some("10.244.1.0/24".into()),
            public_ip: Some("192.0.2.1".into()),
            backend: Some("vxlan".into()),
            peers: vec![parse_peer_flag(peer).expect("valid")],
            ..RawNode::default()
        }
    }

    #[test]
    fn vxlan_defaults_and_peer_macs() {
        let c = NodeConfig::resolve(&raw("10.244.2.0/24=192.0.2.2@ee:58:53:ba:43:f5"), None)
            .expect("valid");
        assert_eq!(c.port, 8472);
        assert_eq!(c.overhead(), 50);
        assert_eq!(
            c.backend,
            BackendConfig::Vxlan {
                vni: 1,
                vtep_mac: None,
                port_range: DEFAULT_PORT_RANGE,
                source_ports: DEFAULT_SOURCE_PORTS
            }
        );
        assert_eq!(
            c.peers[0].vtep_mac,
            Some("ee:58:53:ba:43:f5".parse().expect("mac"))
        );
        assert_eq!(
            c.vtep_mac_path(),
            Path::new("/run/flannel/fustian-vtep.mac")
        );
    }

    #[test]
    fn vxlan_errors_name_the_setting() {
        let e = NodeConfig::resolve(&raw("10.244.2.0/24=192.0.2.2"), None).expect_err("no mac");
        assert!(e.to_string().contains("needs its VTEP MAC"), "{e}");
        let e = NodeConfig::resolve(&raw("10.244.2.0/24=192.0.2.2@01:00:5e:00:00:01"), None)
            .expect_err("multicast");
        assert!(e.to_string().contains("unicast"), "{e}");
        let mut r = raw("10.244.2.0/24=192.0.2.2@02:00:00:00:00:02");
        r.vni = Some(1 << 24);
        let e = NodeConfig::resolve(&r, None).expect_err("vni");
        assert!(e.to_string().starts_with("invalid --vni"), "{e}");
        let mut r = raw("10.244.2.0/24=192.0.2.2@02:00:00:00:00:02");
        r.vtep_mac = Some("02:00:00:00:00:02".into());
        let e = NodeConfig::resolve(&r, None).expect_err("own mac");
        assert!(e.to_string().contains("own VTEP MAC"), "{e}");
        let mut r = raw("10.244.2.0/24=192.0.2.2@02:00:00:00:00:02");
        r.port_range = Some("60999-32768".into());
        let e = NodeConfig::resolve(&r, None).expect_err("range");
        assert!(e.to_string().starts_with("invalid --port-range"), "{e}");
    }

    #[test]
    fn a_generated_mac_is_kept() {
        let dir = std::env::temp_dir().join(format!("fustian-mac-{}", std::process::id()));
        let path = dir.join(VTEP_MAC_FILE);
        let _ = std::fs::remove_dir_all(&dir);
        let first = load_or_create_vtep_mac(&path).expect("created");
        assert!(first.is_local() && !first.is_multicast());
        assert_eq!(load_or_create_vtep_mac(&path).expect("read back"), first);
        std::fs::write(&path, "garbage").expect("write");
        assert!(load_or_create_vtep_mac(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod dual_stack_tests {
    use super::*;

    fn raw() -> RawNode {
        RawNode {
            network: Some("10.244.0.0/16".into()),
            subnet: Some("10.244.1.0/24".into()),
            ipv6_network: Some("fd00:10:244::/56".into()),
            ipv6_subnet: Some("fd00:10:244:1::/64".into()),
            public_ip: Some("192.0.2.1".into()),
            public_ipv6: Some("2001:db8::1".into()),
            peers: vec![
                parse_peer_flag("10.244.2.0/24=192.0.2.2").expect("peer"),
                parse_peer_flag("fd00:10:244:2::/64=[2001:db8::2]:8285").expect("peer"),
            ],
            ..RawNode::default()
        }
    }

    fn refused(r: &RawNode, words: &str) {
        let e = NodeConfig::resolve(r, None).expect_err("refused");
        assert!(e.to_string().contains(words), "{e}");
    }

    #[test]
    fn a_dual_stack_node_resolves() {
        let c = NodeConfig::resolve(&raw(), None).expect("valid");
        let v6 = c.ipv6.expect("dual stack");
        assert_eq!(v6.subnet.to_string(), "fd00:10:244:1::/64");
        assert_eq!(c.public_ipv6, Some("2001:db8::1".parse().expect("literal")));
        assert_eq!(c.local_subnets().len(), 2);
        assert_eq!(c.networks().len(), 2);
        // The IPv6 outer header sizes the device: 48 bytes for udp.
        assert_eq!(c.overhead(), 48);
        assert_eq!(c.peers[1].endpoint.to_string(), "[2001:db8::2]:8285");
    }

    #[test]
    fn ipv6_only_nodes_resolve_from_either_flag() {
        let v6_only = RawNode {
            network: Some("fd00:10:244::/56".into()),
            subnet: Some("fd00:10:244:1::/64".into()),
            public_ip: None,
            public_ipv6: Some("2001:db8::1".into()),
            ipv6_network: None,
            ipv6_subnet: None,
            peers: vec![parse_peer_flag("fd00:10:244:2::/64=2001:db8::2").expect("peer")],
            ..raw()
        };
        let c = NodeConfig::resolve(&v6_only, None).expect("valid");
        assert_eq!(
            c.public_ip,
            "2001:db8::1".parse::<IpAddr>().expect("literal")
        );
        assert_eq!((c.ipv6, c.public_ipv6), (None, None));
        // The same address given twice is one underlay.
        let both = RawNode {
            public_ip: Some("2001:db8::1".into()),
            ..v6_only
        };
        assert_eq!(
            NodeConfig::resolve(&both, None).expect("valid").public_ipv6,
            None
        );
    }

    #[test]
    fn invalid_combinations_name_the_flag() {
        refused(
            &RawNode {
                ipv6_subnet: None,
                ..raw()
            },
            "missing --ipv6-subnet",
        );
        refused(
            &RawNode {
                ipv6_network: None,
                ..raw()
            },
            "missing --ipv6-network",
        );
        refused(
            &RawNode {
                ipv6_network: Some("10.245.0.0/16".into()),
                ..raw()
            },
            "invalid --ipv6-network `10.245.0.0/16`: not an IPv6 network",
        );
        refused(
            &RawNode {
                ipv6_subnet: Some("fd00:10:245:1::/64".into()),
                ..raw()
            },
            "invalid --ipv6-subnet `fd00:10:245:1::/64`: not inside the IPv6 network",
        );
        refused(
            &RawNode {
                ipv6_subnet: Some("fd00:10:244:1::/127".into()),
                ..raw()
            },
            "/126 or shorter",
        );
        refused(
            &RawNode {
                network: Some("fd00:10:240::/48".into()),
                subnet: Some("fd00:10:240:1::/64".into()),
                peers: Vec::new(),
                ..raw()
            },
            "is already IPv6",
        );
        refused(
            &RawNode {
                public_ipv6: Some("192.0.2.9".into()),
                ..raw()
            },
            "invalid --public-ipv6 `192.0.2.9`: not an IPv6 address",
        );
        refused(
            &RawNode {
                public_ipv6: Some("ff02::1".into()),
                ..raw()
            },
            "invalid --public-ipv6 `ff02::1`: must be a unicast address",
        );
        refused(
            &RawNode {
                public_ip: Some("2001:db8::7".into()),
                ..raw()
            },
            "already IPv6",
        );
        // An IPv6 endpoint needs an IPv6 underlay; an IPv6 subnet needs an IPv6 network.
        refused(
            &RawNode {
                public_ipv6: None,
                ..raw()
            },
            "give --public-ipv6",
        );
        refused(
            &RawNode {
                ipv6_network: None,
                ipv6_subnet: None,
                ..raw()
            },
            "not inside the network 10.244.0.0/16",
        );
        // A peer may not claim this node's IPv6 subnet.
        let mut claims = raw();
        claims.peers[1] = parse_peer_flag("fd00:10:244:1::/64=2001:db8::2").expect("peer");
        refused(&claims, "overlaps this node's subnet fd00:10:244:1::/64");
    }
}
