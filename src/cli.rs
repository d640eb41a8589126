//! Command-line types (clap derive). They turn flags into [`crate::config`] values and stop
//! there.
//!
//! `fustian run` takes flanneld's flags with the syntax of Go's `flag` package as well as the GNU
//! one: `-public-ip=IP`, `-public-ip IP`, `--public-ip=IP` and `--public-ip IP` are the same,
//! and a boolean flag is `-name`, `-name=true` or `-name=false` (any of Go's `strconv.ParseBool`
//! spellings), never `-name true`. [`go_style_args`] rewrites the arguments of `run` into the
//! one form clap parses (`--name=value`) before clap sees them, and applies flanneld's
//! `FLANNELD_<NAME>` environment variables to the flags not given on the command line. Every
//! flag of flanneld is either a flag of `fustian run` with the same meaning or refused with
//! "fustian does not support ..." ([`FLANNELD_FLAGS`]); none is ignored.
//!
//! A boolean flag of `run` is declared so that it takes an optional `=VALUE`:
//! `#[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
//! default_value = "false", value_parser = parse_go_bool)]`.

use std::ffi::{OsStr, OsString};
use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::config::{PeerEntry, RawNode, parse_peer_flag};
use crate::iface::{External, IfaceError, Selector};

/// fustian: a userspace overlay dataplane for flannel-style pod networks.
#[derive(Debug, Parser)]
#[command(name = "fustian", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (tracing `EnvFilter` syntax: error, warn, info, debug, trace) [default: info,
    /// or what `run -v` says].
    #[arg(long, global = true, env = "FUSTIAN_LOG")]
    pub log: Option<String>,
}

impl Cli {
    /// Returns the log filter: `--log` (or `FUSTIAN_LOG`) as given, else what `run -v` maps to
    /// (klog's 0 is `info`, 1 to 3 `debug`, 4 and more `trace`), else `info`. `-v` raises only
    /// fustian's own targets (`fustian` and `fustian::*`, the binary's and the library's): the
    /// libraries it uses (the etcd client's HTTP/2 frames, say) stay at `info`.
    pub fn log_filter(&self) -> String {
        if let Some(filter) = &self.log {
            return filter.clone();
        }
        match &self.command {
            Command::Run(args) => match args.v {
                Some(v) if v >= 4 => "info,fustian=trace",
                Some(v) if v >= 1 => "info,fustian=debug",
                _ => "info",
            },
            _ => "info",
        }
        .to_owned()
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one node of the overlay.
    #[command(
        args_override_self = true,
        after_help = "Every flanneld flag is also read from FLANNELD_<NAME> (upper case, dashes \
                      to underscores) when not given on the command line; flags also take Go's \
                      -name=value and -name value forms."
    )]
    Run(Box<RunArgs>),
    /// Build two nodes in network namespaces, send traffic through the overlay, print results.
    Lab(Box<LabArgs>),
    /// Print a running node's table, counters and I/O path (from its HTTP endpoint).
    Show(ShowArgs),
    /// Check this node's TUN device, route, sysctls, firewall and peers; say what is wrong and
    /// the command that fixes it (exit status 0 only when every check passes).
    Doctor(DoctorArgs),
    /// Print a running node's verdicts as it makes them (root only, through its Unix socket).
    Trace(TraceArgs),
}

/// Flags of `fustian run`. Each can also be set in the `--config` file; a flag wins.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML file with the same settings as the flags (see README, "Configuration").
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The whole overlay network; routed into the TUN device. Example: 10.244.0.0/16.
    #[arg(long, value_name = "CIDR")]
    pub network: Option<String>,
    /// This node's pod subnet, inside the network. Example: 10.244.1.0/24.
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<String>,
    /// This node's underlay address; the UDP socket binds to it and peers send to it
    /// [default: the address of the interface --iface, --iface-regex or --iface-can-reach
    /// choose, else of the interface holding the IPv4 default route].
    #[arg(long, value_name = "IP")]
    pub public_ip: Option<String>,
    /// This node's IPv6 underlay address, beside an IPv4 --public-ip: a second socket binds to
    /// it and IPv6 peers are reached through it; alone, the node's only underlay address.
    #[arg(long, value_name = "IPV6")]
    pub public_ipv6: Option<String>,
    /// Dual stack: the IPv6 overlay network beside the IPv4 --network, routed into the TUN
    /// device too. Example: fd00:10:244::/56.
    #[arg(long, value_name = "CIDR")]
    pub ipv6_network: Option<String>,
    /// Dual stack: this node's IPv6 pod subnet, inside --ipv6-network. Example:
    /// fd00:10:244:1::/64.
    #[arg(long, value_name = "CIDR")]
    pub ipv6_subnet: Option<String>,
    /// Underlay interface, by name or by one of its addresses; its MTU sizes the tunnel.
    /// Repeatable: the first that exists wins [default: the one holding --public-ip, else the
    /// one holding the default route].
    #[arg(long, value_name = "NAME|IP")]
    pub iface: Vec<String>,
    /// Underlay interface by pattern (Go/RE2-style regex, unanchored), matched against each
    /// interface's IPv4 addresses, then names; repeatable, tried after --iface.
    #[arg(long, value_name = "REGEX")]
    pub iface_regex: Vec<String>,
    /// Underlay interface: the one the route to this address leaves by; tried after
    /// --iface-regex.
    #[arg(long, value_name = "IP")]
    pub iface_can_reach: Option<IpAddr>,
    /// The interface chosen by [`RunArgs::select_underlay`].
    #[arg(skip)]
    pub underlay: Option<String>,
    /// Encapsulation: `udp` (flannel's udp backend format) or `vxlan` (RFC 7348, as the
    /// kernel's vxlan device) [default: udp].
    #[arg(long, value_name = "NAME")]
    pub backend: Option<String>,
    /// UDP port to bind and to send to [default: 8285 for udp, 8472 for vxlan].
    #[arg(long, value_name = "PORT")]
    pub port: Option<u32>,
    /// TUN device name; created if missing [default: flannel0].
    #[arg(long, value_name = "NAME")]
    pub tun: Option<String>,
    /// TUN MTU [default: underlay MTU - 28 for udp, - 50 for vxlan, over IPv4].
    #[arg(long, value_name = "BYTES")]
    pub mtu: Option<u32>,
    /// The TUN device's transmit queue, in packets (1..=10000) [default: the kernel's, 500];
    /// a longer one absorbs the bursts a pod sends faster than the workers read.
    #[arg(long, value_name = "PACKETS")]
    pub tun_txqueuelen: Option<u32>,
    /// VXLAN network identifier [default: 1].
    #[arg(long, value_name = "VNI")]
    pub vni: Option<u32>,
    /// This node's VTEP MAC [default: generated once, kept next to the subnet file].
    #[arg(long, value_name = "MAC")]
    pub vtep_mac: Option<String>,
    /// VXLAN outer source port range, as the kernel's flow-hashed ports [default: 32768-60999].
    #[arg(long, value_name = "MIN-MAX")]
    pub port_range: Option<String>,
    /// VXLAN source sockets (distinct outer source ports) flows are spread over [default: 16].
    #[arg(long, value_name = "N")]
    pub source_ports: Option<u32>,
    /// flanneld's subnet file; the generated VTEP MAC is kept in the same directory
    /// [default: /run/flannel/subnet.env].
    #[arg(long, value_name = "FILE")]
    pub subnet_file: Option<String>,
    /// etcd endpoints, comma separated; with them the network, this node's subnet and the
    /// peers come from etcd in flannel's layout (needs the `etcd` feature) [default, when none
    /// of --config, --network, --subnet and --peer is given either: flanneld's
    /// http://127.0.0.1:4001,http://127.0.0.1:2379].
    #[arg(long, value_name = "URLS")]
    pub etcd_endpoints: Option<String>,
    /// etcd key prefix [default: /coreos.com/network].
    #[arg(long, value_name = "PATH")]
    pub etcd_prefix: Option<String>,
    /// TLS files and login for etcd.
    #[command(flatten)]
    pub etcd: EtcdAccessArgs,
    /// Renew the subnet lease this long before it expires, in minutes, 1 to 1439 as flanneld
    /// takes it [default: 60].
    #[arg(long, value_name = "MINUTES", value_parser = parse_renew_margin)]
    pub subnet_lease_renew_margin: Option<u64>,
    /// Address of the HTTP endpoint (`/healthz`, `/readyz`, `/metrics`, `/status`); an IP
    /// address or `localhost`.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1", value_parser = parse_healthz_ip)]
    pub healthz_ip: std::net::IpAddr,
    /// Port of the HTTP endpoint, a Go integer as flanneld reads it; 0 or less turns it off.
    #[arg(
        long,
        value_name = "PORT",
        default_value_t = 0,
        value_parser = parse_healthz_port,
        allow_negative_numbers = true
    )]
    pub healthz_port: u16,
    /// A host name `/status` and `/metrics` also answer to (repeatable), besides IP addresses,
    /// `localhost` and the host's own name: the name a Prometheus target or a load balancer
    /// uses for the node. Any other name gets 421 (a guard against DNS rebinding).
    #[arg(long = "healthz-allowed-host", value_name = "NAME", value_parser = parse_allowed_host)]
    pub healthz_allowed_host: Vec<String>,
    /// Log verbosity as klog's (flanneld's) `-v`: 0 is info, 1 to 3 debug, 4 and more trace,
    /// for fustian's own logs (other libraries stay at info); --log wins.
    #[arg(long = "v", value_name = "LEVEL", allow_negative_numbers = true)]
    pub v: Option<i32>,
    /// Testing: the subnet lease TTL in seconds instead of flannel's 24 hours.
    #[arg(long, value_name = "SECS", hide = true)]
    pub subnet_lease_ttl: Option<u64>,
    /// Not a flag: the chosen underlay interface's global IPv6 address, which a node joining
    /// a dual-stack network through etcd advertises when `--public-ipv6` is not given (as
    /// flanneld does). Set by [`Self::select_underlay`].
    #[arg(skip)]
    pub underlay_ipv6: Option<std::net::Ipv6Addr>,
    /// Source port of datagrams from peers: `exact` (the peer's own port, as flannel's udp
    /// nodes send) or `any` [default: exact for udp, any for vxlan].
    #[arg(long, value_name = "POLICY")]
    pub peer_source_port: Option<String>,
    /// Worker threads, each with its own TUN queue and UDP socket [default: one per CPU].
    #[arg(long, value_name = "N")]
    pub threads: Option<u32>,
    /// Event loop: `auto` (io_uring where the kernel has what it needs, else epoll), `uring`,
    /// or `epoll` [default: auto].
    #[arg(long, value_name = "LOOP")]
    pub io: Option<String>,
    /// Offloads: `auto` (TUN TSO/USO with virtio-net headers, UDP GSO and GRO, each where the
    /// kernel has it) or `off` (one packet per read, send, receive and write) [default: auto].
    #[arg(long, value_name = "MODE")]
    pub offload: Option<String>,
    /// A peer: its pod subnet, public IP (optionally :PORT), and for vxlan @VTEP_MAC.
    /// Repeatable.
    #[arg(long = "peer", value_name = "SUBNET=IP[@MAC]", value_parser = parse_peer_flag)]
    pub peers: Vec<PeerEntry>,
    /// Write counters in Prometheus text format to this file every 250 ms and on exit.
    #[arg(long, value_name = "FILE")]
    pub stats_file: Option<PathBuf>,
    /// Serve `fustian trace` on this Unix socket (mode 0600) [default:
    /// /run/fustian/<tun>.sock, skipped with a warning when it cannot be made].
    #[arg(long, value_name = "PATH")]
    pub trace_socket: Option<PathBuf>,
    /// Testing: publish this many synthetic table updates per second, adding and removing
    /// peers in unused subnets of the network, while forwarding goes on.
    #[arg(long, value_name = "PER_SEC", default_value_t = 0)]
    pub table_churn: u32,
    /// After setup, run as this user (and its group); without it every capability is dropped
    /// after setup instead.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Keep root's capabilities after setup.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", value_parser = parse_go_bool, value_name = "BOOL")]
    pub keep_privileges: bool,
    /// io_uring: keep single-shot receives in flight instead of one multishot receive with a
    /// provided-buffer ring (what kernels before 6.0 get).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", value_parser = parse_go_bool, value_name = "BOOL")]
    pub no_multishot: bool,
    /// Let each worker look for packets for up to this many microseconds before it blocks,
    /// adaptively: only while its waits are that short, never when idle (0: block at once).
    /// Trades CPU for latency; see README, "Busy-polling".
    #[arg(long, default_value_t = 0, value_name = "USECS",
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub busy_poll: u64,
    // flanneld's iptables flags; a bare flag means true, `=false` turns it off.
    /// Masquerade what the pods send outside the network, with flanneld's rules (`iptables`).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_go_bool)]
    pub ip_masq: Option<bool>,
    /// Masquerade without `--random-fully`.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_go_bool)]
    pub ip_masq_fully_random_disable: Option<bool>,
    /// Seconds between checks (and repairs) of the masquerade and forward rules, iptables or
    /// nftables (1..=86400) [default: 5].
    #[arg(long, value_name = "SECS", value_parser = parse_resync)]
    pub iptables_resync: Option<u64>,
    /// Accept forwarded traffic from and to the network (FLANNEL-FWD) [default: as --ip-masq].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_go_bool)]
    pub iptables_forward_rules: Option<bool>,
    /// Write the --ip-masq and --iptables-forward-rules rules into flanneld's nftables table
    /// (`ip flannel-ipv4`) rather than with iptables [default: the network config's
    /// EnableNFTables with etcd, which this flag or the file key may only repeat; else false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_go_bool)]
    pub nftables: Option<bool>,
}

impl RunArgs {
    /// Returns the overlay settings given as flags.
    pub fn raw(&self) -> RawNode {
        RawNode {
            network: self.network.clone(),
            subnet: self.subnet.clone(),
            public_ip: self.public_ip.clone(),
            ipv6_network: self.ipv6_network.clone(),
            ipv6_subnet: self.ipv6_subnet.clone(),
            public_ipv6: self.public_ipv6.clone(),
            iface: self.underlay.clone(),
            backend: self.backend.clone(),
            port: self.port,
            tun: self.tun.clone(),
            mtu: self.mtu,
            tun_txqueuelen: self.tun_txqueuelen,
            vni: self.vni,
            vtep_mac: self.vtep_mac.clone(),
            port_range: self.port_range.clone(),
            source_ports: self.source_ports,
            subnet_file: self.subnet_file.clone(),
            threads: self.threads,
            peer_source_port: self.peer_source_port.clone(),
            io: self.io.clone(),
            offload: self.offload.clone(),
            peers: self.peers.clone(),
            ip_masq: self.ip_masq,
            ip_masq_fully_random_disable: self.ip_masq_fully_random_disable,
            iptables_resync: self.iptables_resync,
            iptables_forward_rules: self.iptables_forward_rules,
            nftables: self.nftables,
        }
    }

    /// Chooses the underlay interface and, when neither `--public-ip` nor the `--config` file
    /// (`file`) gives one, this node's public IP, as flanneld does (see [`crate::iface`]); the
    /// result goes into [`Self::underlay`] and [`Self::public_ip`]. With a public IP and none of
    /// `--iface`, `--iface-regex`, `--iface-can-reach`, nothing is looked up here: the node
    /// takes the interface holding that address.
    ///
    /// # Errors
    ///
    /// [`IfaceError`] when no interface can be chosen.
    pub fn select_underlay(
        &mut self,
        file: Option<&RawNode>,
    ) -> Result<Option<External>, IfaceError> {
        let mut sel = Selector {
            ifaces: self.iface.clone(),
            regexes: self.iface_regex.clone(),
            can_reach: self.iface_can_reach,
            public_ip: self
                .public_ip
                .as_deref()
                .or(file.and_then(|f| f.public_ip.as_deref()))
                .and_then(|ip| ip.parse().ok()),
        };
        if sel.ifaces.is_empty() {
            sel.ifaces.extend(file.and_then(|f| f.iface.clone()));
        }
        let public_ip_given =
            self.public_ip.is_some() || file.is_some_and(|f| f.public_ip.is_some());
        let public_ipv6_given =
            self.public_ipv6.is_some() || file.is_some_and(|f| f.public_ipv6.is_some());
        if sel.is_empty() && public_ip_given {
            if !public_ipv6_given {
                self.underlay_ipv6 = sel.public_ip.and_then(crate::iface::global_v6_beside);
            }
            return Ok(None);
        }
        let external = match crate::iface::select(&sel) {
            Ok(external) => external,
            // A host with no IPv4 underlay runs on --public-ipv6 alone.
            Err(e) if public_ipv6_given && !public_ip_given && sel.is_empty() => {
                tracing::info!("no IPv4 underlay ({e}); the IPv6 underlay address is the only one");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        tracing::info!(
            "underlay interface {} (index {}), address {}, from {}",
            external.name,
            external.index,
            external.addr,
            external.how
        );
        self.underlay = Some(external.name.clone());
        if !public_ipv6_given {
            self.underlay_ipv6 = crate::iface::global_v6(external.index);
        }
        if !public_ip_given {
            self.public_ip = Some(external.addr.to_string());
        }
        Ok(Some(external))
    }

    /// Returns the etcd endpoints to join: `--etcd-endpoints`, else, when nothing describes a
    /// static node (no `--config`, `--network`, `--subnet` or `--peer`) and fustian has the
    /// `etcd` feature, flanneld's default list [`DEFAULT_ETCD_ENDPOINTS`], as a bare `flanneld`
    /// would use it.
    pub fn etcd_endpoints_or_default(&self) -> Option<String> {
        if self.etcd_endpoints.is_some() {
            return self.etcd_endpoints.clone();
        }
        let static_node = self.config.is_some()
            || self.network.is_some()
            || self.subnet.is_some()
            || !self.peers.is_empty();
        (!static_node && cfg!(feature = "etcd")).then(|| DEFAULT_ETCD_ENDPOINTS.to_owned())
    }
}

/// flanneld's default `--etcd-endpoints`.
pub const DEFAULT_ETCD_ENDPOINTS: &str = "http://127.0.0.1:4001,http://127.0.0.1:2379";

/// How a flag takes its value on the command line, as Go's `flag` package sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    /// `-name` alone means true; a value only as `-name=value`.
    Bool,
    /// `-name=value` or `-name value`.
    Value,
}

/// What fustian does with one of flanneld's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// A flag of `fustian run` with the same name and meaning.
    Flag,
    /// Refused, unless given with one of the values listed (flanneld's defaults, which mean
    /// what fustian does anyway); the text says why.
    Refused {
        /// Values accepted (and then without effect).
        unless: &'static [&'static str],
        /// What the flag is for and what to use instead.
        why: &'static str,
    },
}

/// One of flanneld's flags (`main.go`, plus klog's `-v`, `-vmodule`, `-log_backtrace_at` that
/// flanneld copies into its flag set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlanneldFlag {
    /// Its name, without dashes.
    pub name: &'static str,
    /// Whether it is boolean.
    pub kind: FlagKind,
    /// What fustian does with it.
    pub support: Support,
}

const KUBE: &str = "the Kubernetes subnet manager is not supported; leases come from etcd \
                    (--etcd-endpoints) or a static configuration";

/// Every flag of flanneld and what fustian does with it. Each is also read from
/// `FLANNELD_<NAME>` (except `version` and `help`, which flanneld handles before reading the
/// environment).
pub const FLANNELD_FLAGS: &[FlanneldFlag] = &[
    flag("etcd-endpoints", FlagKind::Value),
    flag("etcd-prefix", FlagKind::Value),
    flag("etcd-keyfile", FlagKind::Value),
    flag("etcd-certfile", FlagKind::Value),
    flag("etcd-cafile", FlagKind::Value),
    flag("etcd-username", FlagKind::Value),
    flag("etcd-password", FlagKind::Value),
    flag("iface", FlagKind::Value),
    flag("iface-regex", FlagKind::Value),
    flag("iface-can-reach", FlagKind::Value),
    flag("subnet-file", FlagKind::Value),
    flag("public-ip", FlagKind::Value),
    flag("public-ipv6", FlagKind::Value),
    flag("subnet-lease-renew-margin", FlagKind::Value),
    flag("ip-masq", FlagKind::Bool),
    flag("ip-masq-fully-random-disable", FlagKind::Bool),
    refused("kube-subnet-mgr", FlagKind::Bool, &["false"], KUBE),
    refused("kube-api-url", FlagKind::Value, &[""], KUBE),
    refused(
        "kube-annotation-prefix",
        FlagKind::Value,
        &["flannel.alpha.coreos.com"],
        KUBE,
    ),
    refused("kubeconfig-file", FlagKind::Value, &[""], KUBE),
    flag("version", FlagKind::Bool),
    flag("healthz-ip", FlagKind::Value),
    flag("healthz-port", FlagKind::Value),
    flag("iptables-resync", FlagKind::Value),
    flag("iptables-forward-rules", FlagKind::Bool),
    refused(
        "ip-blackhole-route",
        FlagKind::Bool,
        &["false"],
        "the blackhole route for the local subnet is not supported yet",
    ),
    refused(
        "net-config-path",
        FlagKind::Value,
        &["/etc/kube-flannel/net-conf.json"],
        KUBE,
    ),
    refused(
        "set-node-network-unavailable",
        FlagKind::Bool,
        &["true"],
        KUBE,
    ),
    flag("v", FlagKind::Value),
    refused(
        "vmodule",
        FlagKind::Value,
        &[""],
        "klog's per-file levels; use --log with a tracing filter such as \
         `info,fustian::control=debug`",
    ),
    refused(
        "log_backtrace_at",
        FlagKind::Value,
        &["", ":0"],
        "klog's stack traces at a source line",
    ),
    flag("help", FlagKind::Bool),
];

const fn flag(name: &'static str, kind: FlagKind) -> FlanneldFlag {
    FlanneldFlag {
        name,
        kind,
        support: Support::Flag,
    }
}

const fn refused(
    name: &'static str,
    kind: FlagKind,
    unless: &'static [&'static str],
    why: &'static str,
) -> FlanneldFlag {
    FlanneldFlag {
        name,
        kind,
        support: Support::Refused { unless, why },
    }
}

/// A flag or `FLANNELD_*` variable fustian refuses before clap parses anything.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    /// One of flanneld's flags that fustian does not implement, given with an effect.
    #[error("fustian does not support {given} ({why})")]
    Unsupported {
        /// The flag or variable as given (`--kube-subnet-mgr`, `FLANNELD_KUBE_SUBNET_MGR=true`).
        given: String,
        /// Why, and what to use instead.
        why: &'static str,
    },
    /// A boolean flag with a value Go's `strconv.ParseBool` does not take.
    #[error("invalid boolean value `{value}` for {given}: use true or false")]
    BadBool {
        /// The flag or variable.
        given: String,
        /// The value.
        value: String,
    },
    /// A flag that takes a value, last on the command line without one.
    #[error("flag needs an argument: {given}")]
    MissingValue {
        /// The flag.
        given: String,
    },
}

/// Returns the environment variable flanneld reads flag `name` from: `FLANNELD_` and the name
/// in upper case with dashes as underscores.
pub fn env_name(name: &str) -> String {
    format!("FLANNELD_{}", name.to_ascii_uppercase().replace('-', "_"))
}

/// flanneld's flags whose default is the empty string, or an empty list: given empty
/// (`-etcd-cafile=`, `-public-ip ""`), each means what flanneld makes of it, "not set".
/// `healthz-ip` too: flanneld's empty value listens on every address, fustian's unset one on
/// 127.0.0.1 (the endpoint shows the peer table; see the README).
pub const EMPTY_IS_UNSET: &[&str] = &[
    "etcd-keyfile",
    "etcd-certfile",
    "etcd-cafile",
    "etcd-username",
    "etcd-password",
    "iface",
    "iface-regex",
    "iface-can-reach",
    "public-ip",
    "public-ipv6",
    "healthz-ip",
    "kube-api-url",
    "kubeconfig-file",
    "vmodule",
    "log_backtrace_at",
];

/// True when the program was called `flanneld` (`argv0` names a symlink or a renamed binary).
pub fn called_as_flanneld(argv0: &std::ffi::OsStr) -> bool {
    std::path::Path::new(argv0)
        .file_name()
        .is_some_and(|n| n == "flanneld")
}

/// What `flanneld -version` prints, on standard error as flanneld prints it: the version
/// with a leading `v` (flanneld's own look, `v0.26.1`), so scripts that check a flanneld's
/// version read fustian's.
pub fn flanneld_version() -> String {
    format!("v{}", env!("CARGO_PKG_VERSION"))
}

/// Inserts `run` where flanneld's command line is given as is: when the program is called
/// `flanneld` (a symlink or a renamed binary) and no subcommand is named, or when the first
/// argument is a flag only `run` knows (`fustian -etcd-endpoints=...`). `-h`, `--help`,
/// `-V`, `--version` and `--log` keep their top-level meaning.
fn implicit_run(mut argv: Vec<OsString>) -> Vec<OsString> {
    const SUBCOMMANDS: &[&str] = &["run", "lab", "show", "doctor", "trace", "help"];
    let as_flanneld = argv.first().is_some_and(|a| called_as_flanneld(a));
    // Past the top-level `--log` (`--log X`, `--log=X`), which may come first.
    let mut at = 1;
    while let Some(a) = argv.get(at).and_then(|a| a.to_str()) {
        match a {
            "--log" | "-log" => at += 2,
            _ if a.starts_with("--log=") || a.starts_with("-log=") => at += 1,
            _ => break,
        }
    }
    let first = argv.get(at).and_then(|a| a.to_str());
    let insert = match first {
        Some(s) if SUBCOMMANDS.contains(&s) => false,
        Some("-h" | "--help" | "-V" | "--version") => as_flanneld,
        Some(t) if t.starts_with('-') => {
            let body = t.trim_start_matches('-');
            let name = body.split_once('=').map_or(body, |(n, _)| n);
            as_flanneld
                || (name != "log"
                    && (FLANNELD_FLAGS.iter().any(|f| f.name == name)
                        || run_flag_kinds().iter().any(|(n, _)| n == name)))
        }
        Some(_) => false,
        None => as_flanneld,
    };
    // `--log` with no value after it: clap says so; `run` would become the value.
    if insert && at <= argv.len() {
        argv.insert(at, OsString::from("run"));
    }
    argv
}

/// Rewrites `argv` (the program name first) so clap parses Go's flag forms as flanneld would,
/// and applies `FLANNELD_*` variables (read through `env`). Only the arguments of `run` are
/// touched: each `-name`/`--name` of a known flag becomes `--name=value` (a flag that takes a
/// value takes the next argument as Go does, even one starting with `-`); a boolean flag keeps
/// its optional `=value`. Then each of flanneld's flags not given on the command line and with
/// a non-empty `FLANNELD_<NAME>` is appended as `--name=value`. Unknown flags are passed on for
/// clap to report.
///
/// # Errors
///
/// [`CliError::Unsupported`] for one of flanneld's flags fustian does not implement, given
/// (on the command line or in the environment) with a value that would have an effect.
pub fn go_style_args(
    argv: impl IntoIterator<Item = OsString>,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Vec<OsString>, CliError> {
    let mut argv = implicit_run(argv.into_iter().collect()).into_iter();
    let mut out: Vec<OsString> = argv.next().into_iter().collect();
    // Top level: options (only `--log VALUE` takes a separate value), then the subcommand.
    let mut in_run = false;
    while let Some(arg) = argv.next() {
        let text = arg.to_str().map(str::to_owned);
        out.push(arg);
        match text.as_deref() {
            Some("run") => {
                in_run = true;
                break;
            }
            Some("--log") => out.extend(argv.next()),
            Some(t) if t.starts_with('-') => {}
            _ => break,
        }
    }
    if !in_run {
        out.extend(argv);
        return Ok(out);
    }

    let kinds = run_flag_kinds();
    let mut given: Vec<String> = Vec::new();
    while let Some(arg) = argv.next() {
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            out.push(arg);
            out.extend(argv.by_ref());
            break;
        }
        let body = match text.strip_prefix("--").or_else(|| text.strip_prefix('-')) {
            Some(b) if !b.is_empty() && !b.starts_with(['-', '=']) => b,
            _ => {
                out.push(arg);
                continue;
            }
        };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(OsString::from(v))),
            None => (body, None),
        };
        let single_dash = !text.starts_with("--");
        let known = kinds.iter().find(|(n, _)| n == name).map(|(_, k)| *k);
        let flanneld = FLANNELD_FLAGS.iter().find(|f| f.name == name);
        if single_dash && name.chars().count() == 1 && known.is_none() && flanneld.is_none() {
            // A short flag of clap's (`-h`, `-V`).
            out.push(arg);
            continue;
        }
        let kind = match (known, flanneld) {
            (Some(k), _) => Some(k),
            (None, Some(f)) => Some(match f.kind {
                FlagKind::Bool => ClapKind::NoValue,
                FlagKind::Value => ClapKind::Value,
            }),
            (None, None) => None,
        };
        let value = match (kind, value) {
            (Some(ClapKind::Value), None) => match argv.next() {
                Some(v) => Some(v),
                None if flanneld.is_some_and(|f| f.support != Support::Flag) || known.is_none() => {
                    return Err(CliError::MissingValue {
                        given: format!("-{name}"),
                    });
                }
                None => None,
            },
            (_, v) => v,
        };
        if let Some(f) = flanneld {
            given.push(f.name.to_owned());
            // `-etcd-cafile=` from a template with an empty variable: flanneld's default is the
            // empty string, so the flag is given (the environment is not read for it) but unset.
            if EMPTY_IS_UNSET.contains(&f.name) && value.as_ref().is_some_and(|v| v.is_empty()) {
                continue;
            }
            if let Support::Refused { unless, why } = f.support {
                check_refused(f, &format!("--{name}"), value.as_deref(), unless, why)?;
                continue;
            }
            if known.is_none() {
                return Err(CliError::Unsupported {
                    given: format!("--{name}"),
                    why: "not built into this fustian",
                });
            }
        }
        push_flag(&mut out, name, kind, value, &format!("--{name}"))?;
    }

    // FLANNELD_<NAME> for each of flanneld's flags not on the command line; empty is unset.
    for f in FLANNELD_FLAGS {
        if matches!(f.name, "version" | "help") || given.iter().any(|g| g == f.name) {
            continue;
        }
        let key = env_name(f.name);
        let Some(value) = env(&key).filter(|v| !v.is_empty()) else {
            continue;
        };
        let shown = format!("{key}={}", value.to_string_lossy());
        if let Support::Refused { unless, why } = f.support {
            check_refused(f, &shown, Some(&value), unless, why)?;
            continue;
        }
        let Some(kind) = kinds.iter().find(|(n, _)| *n == f.name).map(|(_, k)| *k) else {
            return Err(CliError::Unsupported {
                given: shown,
                why: "not built into this fustian",
            });
        };
        push_flag(&mut out, f.name, Some(kind), Some(value), &shown)?;
    }
    Ok(out)
}

/// Parses `--healthz-port` as flanneld's Go flag reads it (any Go integer form); a value of
/// 0 or less turns the endpoint off (flanneld serves only a port above 0).
///
/// # Errors
///
/// Not an integer, or above 65535.
pub fn parse_healthz_port(text: &str) -> Result<u16, String> {
    let n = parse_go_int(text)?;
    if n <= 0 {
        return Ok(0);
    }
    u16::try_from(n).map_err(|_| format!("{n} is not a port (1 to 65535, or 0 for off)"))
}

/// Parses `--healthz-ip`: an IP address, or `localhost` (127.0.0.1), which flanneld's
/// listener also resolves.
///
/// # Errors
///
/// Anything else, and an address no client can connect to: a multicast address (224.0.0.0/4,
/// ff00::/8; TCP is unicast), the broadcast address 255.255.255.255, or one of the reserved
/// 240.0.0.0/4 (RFC 1112 section 4), an IPv4-mapped IPv6 form of these included.
pub fn parse_healthz_ip(text: &str) -> Result<std::net::IpAddr, String> {
    if text.eq_ignore_ascii_case("localhost") {
        return Ok(std::net::IpAddr::from([127, 0, 0, 1]));
    }
    let ip: std::net::IpAddr = text
        .parse()
        .map_err(|_| format!("`{text}` is not an IP address (or localhost)"))?;
    let unusable = match ip.to_canonical() {
        std::net::IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        std::net::IpAddr::V4(v4) if v4.octets()[0] >= 240 => {
            Some("a reserved address (240.0.0.0/4)")
        }
        a if a.is_multicast() => Some("a multicast address"),
        _ => None,
    };
    match unusable {
        Some(what) => Err(format!(
            "`{text}` is {what}, which no client can connect to: give a unicast address, \
             0.0.0.0 or :: for every address, or 127.0.0.1"
        )),
        None => Ok(ip),
    }
}

/// Parses `--healthz-allowed-host`: a DNS host name (RFC 1123 section 2.1), the only form a
/// `Host` value that names it can take: dot-separated labels of 1 to 63 letters, digits and
/// `-`, none starting or ending with `-`, at most 253 characters in all, an optional final dot
/// not counted.
///
/// # Errors
///
/// Anything else (empty, a port, a scheme, a path, user information, whitespace): such a name
/// could never match a request.
pub fn parse_allowed_host(text: &str) -> Result<String, String> {
    let name = text.strip_suffix('.').unwrap_or(text);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "`{}` is not a host name: expected dot-separated labels of 1 to 63 letters, digits \
             and `-` (not first or last), at most 253 characters, without a port, scheme, path \
             or `@`, e.g. node-1.example.com",
            text.escape_debug()
        ))
    }
}

/// Parses a boolean as Go's `strconv.ParseBool`: 1, t, T, TRUE, true, True, 0, f, F, FALSE,
/// false, False.
///
/// # Errors
///
/// Any other text.
pub fn parse_go_bool(text: &str) -> Result<bool, String> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!(
            "`{text}` is not a boolean (Go's spellings: 1, t, T, TRUE, true, True, 0, f, F, \
             FALSE, false, False)"
        )),
    }
}

/// Parses an integer as Go's `strconv.ParseInt(text, 0, 64)`, which Go's `flag.Int` uses: an
/// optional sign, then decimal, `0x` hex, `0o` or leading-`0` octal, or `0b` binary, with `_`
/// between digits.
///
/// # Errors
///
/// Anything else, or a value out of `i64`.
pub fn parse_go_int(text: &str) -> Result<i64, String> {
    let bad = || format!("`{text}` is not an integer");
    let (negative, body) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d, true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d, true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d, true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..], true)
    } else {
        (10, lower.as_str(), false)
    };
    if digits.contains('_') && !underscores_ok(digits, prefixed) {
        return Err(bad());
    }
    let digits: String = digits.chars().filter(|&c| c != '_').collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(bad());
    }
    let magnitude = i128::from_str_radix(&digits, radix).map_err(|_| bad())?;
    let value = if negative { -magnitude } else { magnitude };
    i64::try_from(value).map_err(|_| format!("`{text}` is out of range"))
}

/// Parses `--subnet-lease-renew-margin`: a Go integer of minutes, 1 to 1439 (flanneld refuses
/// anything else: a margin of a day or more would renew a 24 h lease continuously).
///
/// # Errors
///
/// Not an integer, or outside 1..=1439.
pub fn parse_renew_margin(text: &str) -> Result<u64, String> {
    let minutes = parse_go_int(text)?;
    if !(1..24 * 60).contains(&minutes) {
        return Err(format!(
            "{minutes} minutes is outside 1..1439 (less than the 24 h lease), as flanneld requires"
        ));
    }
    u64::try_from(minutes).map_err(|e| e.to_string())
}

/// Parses `--iptables-resync`: seconds in Go's integer forms, 1..=86400.
///
/// # Errors
///
/// Not an integer, or out of range.
pub fn parse_resync(text: &str) -> Result<u64, String> {
    let secs = parse_go_int(text)?;
    if !(1..=86_400).contains(&secs) {
        return Err(format!("{secs} seconds is outside 1..=86400"));
    }
    u64::try_from(secs).map_err(|e| e.to_string())
}

/// How clap takes a long flag of `run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClapKind {
    /// No value at all (`SetTrue`, help, version).
    NoValue,
    /// An optional `=value` (the Go-style booleans).
    OptionalValue,
    /// A required value.
    Value,
}

/// Returns the long flags of `run` (global ones included) and how clap takes each.
fn run_flag_kinds() -> Vec<(String, ClapKind)> {
    let mut cmd = Cli::command();
    cmd.build();
    let Some(run) = cmd.find_subcommand("run") else {
        return Vec::new();
    };
    run.get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?;
            let kind = if !a.get_action().takes_values() {
                ClapKind::NoValue
            } else if a.get_num_args().is_some_and(|r| r.min_values() == 0) {
                ClapKind::OptionalValue
            } else {
                ClapKind::Value
            };
            Some((long.to_owned(), kind))
        })
        .collect()
}

/// Appends flag `name` with `value` in the form clap takes for `kind`. For a flag clap takes
/// without any value, Go's `=true` becomes the bare flag and `=false` removes every earlier
/// occurrence (Go's last one wins).
fn push_flag(
    out: &mut Vec<OsString>,
    name: &str,
    kind: Option<ClapKind>,
    value: Option<OsString>,
    shown: &str,
) -> Result<(), CliError> {
    let bare = OsString::from(format!("--{name}"));
    match (kind, value) {
        (Some(ClapKind::NoValue), Some(v)) => {
            let text = v.to_string_lossy();
            match parse_go_bool(&text) {
                Ok(true) => out.push(bare),
                Ok(false) => out.retain(|a| *a != bare),
                Err(_) => {
                    return Err(CliError::BadBool {
                        given: shown.to_owned(),
                        value: text.into_owned(),
                    });
                }
            }
        }
        (_, Some(v)) => {
            let mut joined = bare;
            joined.push("=");
            joined.push(v);
            out.push(joined);
        }
        (_, None) => out.push(bare),
    }
    Ok(())
}

/// Accepts a refused flag only with a value that has no effect (flanneld's default).
fn check_refused(
    f: &FlanneldFlag,
    shown: &str,
    value: Option<&OsStr>,
    unless: &[&str],
    why: &'static str,
) -> Result<(), CliError> {
    let harmless = match f.kind {
        FlagKind::Bool => {
            let v = value.map_or(Ok(true), |v| parse_go_bool(&v.to_string_lossy()));
            match v {
                Ok(v) => unless.iter().any(|u| parse_go_bool(u) == Ok(v)),
                Err(_) => false,
            }
        }
        FlagKind::Value => value.is_some_and(|v| unless.iter().any(|u| OsStr::new(u) == v)),
    };
    if harmless {
        return Ok(());
    }
    let given = match value {
        Some(v) if !shown.contains('=') => format!("{shown}={}", v.to_string_lossy()),
        _ => shown.to_owned(),
    };
    Err(CliError::Unsupported { given, why })
}

/// Go's rule for `_` in an integer literal: only between digits, or right after a base prefix.
fn underscores_ok(digits: &str, prefixed: bool) -> bool {
    // `saw` is what came last: '0' a digit (or the prefix), '_' an underscore.
    let mut saw = if prefixed { '0' } else { '^' };
    for c in digits.chars() {
        if c == '_' {
            if saw != '0' {
                return false;
            }
            saw = '_';
        } else {
            saw = '0';
        }
    }
    saw != '_'
}

/// Flags of `fustian show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The node's HTTP endpoint (`--healthz-ip`/`--healthz-port` of `fustian run`).
    #[arg(long, value_name = "IP:PORT", env = "FUSTIAN_SHOW_ADDR")]
    pub addr: std::net::SocketAddr,
    /// Print the JSON the node returns instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `fustian doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The node's HTTP endpoint (`--healthz-ip`/`--healthz-port` of `fustian run`).
    #[arg(long, value_name = "IP:PORT", env = "FUSTIAN_DOCTOR_ADDR")]
    pub addr: std::net::SocketAddr,
    /// Print the checks as JSON (`{"passed": bool, "checks": [...]}`).
    #[arg(long)]
    pub json: bool,
    /// Milliseconds to wait for each probe answer.
    #[arg(long, default_value_t = 300, value_name = "MS")]
    pub probe_timeout: u64,
    /// etcd endpoints, comma separated: also compare the leases in etcd with the node's table
    /// (needs the `etcd` feature).
    #[arg(long, value_name = "URLS")]
    pub etcd_endpoints: Option<String>,
    /// etcd key prefix.
    #[arg(long, value_name = "PATH", default_value = "/coreos.com/network")]
    pub etcd_prefix: String,
    /// TLS files and login for etcd, as the node takes them.
    #[command(flatten)]
    pub etcd: EtcdAccessArgs,
}

/// The `--etcd-*` flags of TLS and login, as `run` and `doctor` both take them.
#[derive(Debug, Clone, Default, Args)]
pub struct EtcdAccessArgs {
    /// etcd client key (TLS with --etcd-certfile).
    #[arg(long, value_name = "FILE")]
    pub etcd_keyfile: Option<PathBuf>,
    /// etcd client certificate.
    #[arg(long, value_name = "FILE")]
    pub etcd_certfile: Option<PathBuf>,
    /// etcd CA certificate.
    #[arg(long, value_name = "FILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// etcd user name (with --etcd-password); `doctor` also reads FLANNELD_ETCD_USERNAME, as
    /// `run` reads every flanneld flag.
    #[arg(long, value_name = "NAME")]
    pub etcd_username: Option<String>,
    /// etcd password; FLANNELD_ETCD_PASSWORD keeps it out of `ps`.
    #[arg(long, value_name = "PASSWORD")]
    pub etcd_password: Option<String>,
}

impl EtcdAccessArgs {
    /// Returns the flags with the login taken from the node's `FLANNELD_ETCD_USERNAME` and
    /// `FLANNELD_ETCD_PASSWORD` where not given (an empty variable is unset, as for `run`), so
    /// `doctor` logs in as the node does.
    #[must_use]
    pub fn with_flanneld_env(&self) -> Self {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self {
            etcd_username: self
                .etcd_username
                .clone()
                .or_else(|| env("FLANNELD_ETCD_USERNAME")),
            etcd_password: self
                .etcd_password
                .clone()
                .or_else(|| env("FLANNELD_ETCD_PASSWORD")),
            ..self.clone()
        }
    }
}

/// Flags of `fustian trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The node's trace socket (`--trace-socket` of `fustian run`) [default: the only socket
    /// in /run/fustian].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print one JSON object per event instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also write the matching inner packets (first 160 bytes) as pcapng, the verdict in each
    /// packet's comment.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<u64>,
    /// Which packets: host, src, dst, net CIDR, port N, proto tcp|udp|icmp, peer IP,
    /// verdict send|deliver|merge|icmp|drop, reason NAME, with and, or, not and parentheses
    /// (see README, "Debugging with trace").
    #[arg(value_name = "FILTER")]
    pub filter: Vec<String>,
}

/// Flags of `fustian lab`.
#[derive(Debug, Args)]
pub struct LabArgs {
    /// Seconds of each TCP bulk transfer and of each 64-byte UDP flood.
    #[arg(long, default_value_t = 3.0, value_name = "SECS")]
    pub duration: f64,
    /// Round trips in the ping-pong latency test.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub pings: u32,
    /// Rounds: each measures every row once, round-robin; the table shows the median (and
    /// min-max).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub repeat: u32,
    /// Event loops to measure fustian with, comma separated: auto, uring, epoll.
    #[arg(long, default_value = "auto", value_name = "LOOPS")]
    pub io: String,
    /// Worker threads per node [default: one per CPU].
    #[arg(long, value_name = "N")]
    pub threads: Option<u32>,
    /// Pass `--busy-poll USECS` to the fustian nodes (0: none).
    #[arg(long, default_value_t = 0, value_name = "USECS",
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub busy_poll: u64,
    /// Pass `--tun-txqueuelen PACKETS` to the fustian nodes [default: the kernel's queue].
    #[arg(long, value_name = "PACKETS",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::config::MAX_TUN_TXQUEUELEN)))]
    pub tun_txqueuelen: Option<u32>,
    /// Offload modes to measure, comma separated: auto (fustian with TUN TSO, UDP GSO/GRO;
    /// the kernel's VXLAN as configured), off (fustian with `--offload off`, and the kernel's
    /// VXLAN device limited to one segment per packet, so it segments before encapsulating).
    #[arg(long, default_value = "auto", value_name = "MODES")]
    pub offload: String,
    /// Encapsulations to measure fustian with, comma separated: udp, vxlan.
    #[arg(long, default_value = "udp", value_name = "NAMES")]
    pub backend: String,
    /// Scenarios, comma separated: fustian, kernel (kernel VXLAN as flannel programs it),
    /// underlay (the bare veth between the nodes).
    #[arg(long, default_value = "fustian,kernel,underlay", value_name = "NAMES")]
    pub scenarios: String,
    /// Address families, comma separated: `4`, `6` (pods and underlay in that family), or
    /// `POD/UNDERLAY` such as `6/4` (IPv6 pods over an IPv4 underlay) and `4/6`. Each runs
    /// every fustian scenario; the kernel's VXLAN and the bare underlay run for `4` and `6`.
    #[arg(long, default_value = "4", value_name = "LIST")]
    pub family: String,
    /// Parallel TCP streams, comma separated, e.g. 1,4.
    #[arg(long, default_value = "1,4", value_name = "N,...")]
    pub streams: String,
    /// Underlay (veth) MTU.
    #[arg(long, default_value_t = 1500, value_name = "BYTES")]
    pub mtu: u32,
    /// Run the TCP transfers with iperf3 (which must be installed) instead of the built-in
    /// generator.
    #[arg(long)]
    pub iperf3: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also draw the results as an SVG bar chart in this file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Prefix of the namespace names [default: fl<pid>]; at most 8 characters.
    #[arg(long, value_name = "NAME")]
    pub prefix: Option<String>,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    fn rewrite(
        args: &[&str],
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Vec<String>, CliError> {
        let argv = std::iter::once("fustian")
            .chain(args.iter().copied())
            .map(OsString::from);
        go_style_args(argv, env).map(|v| {
            v.into_iter()
                .map(|a| a.into_string().expect("utf-8"))
                .collect()
        })
    }

    fn parse_with(args: &[&str], env: &dyn Fn(&str) -> Option<OsString>) -> Result<Cli, String> {
        let argv = rewrite(args, env).map_err(|e| e.to_string())?;
        Cli::try_parse_from(argv).map_err(|e| e.to_string())
    }

    fn run_args(args: &[&str]) -> RunArgs {
        match parse_with(args, &no_env).expect("parses").command {
            Command::Run(r) => *r,
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn flanneld_s_command_line_runs_without_the_subcommand() {
        // A unit written for flanneld, with only the binary's path changed.
        let r = run_args(&["-etcd-endpoints=http://192.0.2.10:2379", "-ip-masq"]);
        assert_eq!(r.etcd_endpoints.as_deref(), Some("http://192.0.2.10:2379"));
        assert_eq!(r.ip_masq, Some(true));
        let r = run_args(&["--public-ip", "192.0.2.1", "--network", "10.244.0.0/16"]);
        assert_eq!(r.public_ip.as_deref(), Some("192.0.2.1"));
        // After the top-level --log too, in either form.
        for log in [&["--log=debug"][..], &["--log", "debug"]] {
            let args: Vec<&str> = log
                .iter()
                .copied()
                .chain(["-ip-masq", "-network=10.244.0.0/16"])
                .collect();
            let cli = parse_with(&args, &no_env).expect("parses");
            assert_eq!(cli.log_filter(), "debug");
            let Command::Run(r) = cli.command else {
                panic!("not run")
            };
            assert_eq!(r.ip_masq, Some(true));
        }
        // Called `flanneld` (a symlink), with no flags at all: a node at flanneld's defaults.
        let as_flanneld = |args: &[&str]| {
            let argv = std::iter::once("/usr/local/bin/flanneld")
                .chain(args.iter().copied())
                .map(OsString::from);
            go_style_args(argv, &no_env).expect("rewrites")
        };
        assert_eq!(as_flanneld(&[]), ["/usr/local/bin/flanneld", "run"]);
        assert_eq!(as_flanneld(&["-version"])[1], "run");
        assert_eq!(as_flanneld(&["lab"])[1], "lab");
        // The top level keeps its own: subcommands, help, version, --log.
        for top in [
            &["lab"][..],
            &["--help"],
            &["-h"],
            &["--version"],
            &["-V"],
            &["--log", "debug", "run"],
            &["show"],
        ] {
            let out = rewrite(top, &no_env).expect("rewrites");
            assert_eq!(
                out[1..].iter().map(String::as_str).collect::<Vec<_>>(),
                top.to_vec(),
                "{top:?}"
            );
        }
        // Not a flag of `run`: left for clap to refuse.
        assert_eq!(
            rewrite(&["--nonsense"], &no_env).expect("rewrites")[1],
            "--nonsense"
        );
    }

    #[test]
    fn healthz_port_and_ip_are_read_as_flanneld_reads_them() {
        for (given, port) in [
            ("8471", 8471),
            ("0x1F90", 8080),
            ("0", 0),
            ("-1", 0),
            ("017", 15),
        ] {
            let r = run_args(&["run", &format!("-healthz-port={given}")]);
            assert_eq!(r.healthz_port, port, "{given}");
        }
        assert!(parse_with(&["run", "-healthz-port=65536"], &no_env).is_err());
        assert!(parse_with(&["run", "-healthz-port=x"], &no_env).is_err());
        let r = run_args(&["run", "-healthz-ip=localhost"]);
        assert_eq!(r.healthz_ip, IpAddr::from([127, 0, 0, 1]));
        assert!(parse_with(&["run", "-healthz-ip=example.org"], &no_env).is_err());
    }

    #[test]
    fn healthz_ip_is_an_address_a_client_can_connect_to() {
        for usable in [
            "0.0.0.0",
            "::",
            "127.0.0.1",
            "::1",
            "192.0.2.1",
            "2001:db8::1",
        ] {
            let r = run_args(&["run", &format!("-healthz-ip={usable}")]);
            assert_eq!(r.healthz_ip.to_string(), usable);
        }
        for unusable in [
            "255.255.255.255",
            "224.0.0.1",
            "239.1.2.3",
            "240.0.0.1",
            "254.1.2.3",
            "ff02::1",
            "ff0e::1",
            "::ffff:224.0.0.1",
            "::ffff:255.255.255.255",
        ] {
            let e = parse_healthz_ip(unusable).expect_err(unusable);
            assert!(e.contains("no client can connect to"), "{unusable}: {e}");
            let args = ["run", "-healthz-ip", unusable];
            assert!(parse_with(&args, &no_env).is_err(), "{unusable}");
        }
    }

    #[test]
    fn healthz_allowed_host_is_a_host_name() {
        let label = "a".repeat(63);
        let longest = [&label[..], &label, &label, &label[..61]].join(".");
        assert_eq!(longest.len(), 253);
        for name in [
            "node-1",
            "node-1.example.com",
            "NODE-1.Example.",
            "1.2.3.4",
            "x",
            &label,
            &longest,
            &format!("{longest}."),
        ] {
            let r = run_args(&["run", "--healthz-allowed-host", name]);
            assert_eq!(r.healthz_allowed_host, [name], "{name}");
        }
        let too_long_label = format!("{label}a.example");
        let too_long = format!("{longest}a");
        for name in [
            "",
            ".",
            "node1.example:8080",
            "a b/c",
            "http://x/",
            "user@node1",
            "node_1",
            "-node",
            "node-",
            "a..b",
            ".a",
            "[::1]",
            " node",
            "nöde",
            &too_long_label,
            &too_long,
        ] {
            let e = parse_allowed_host(name).expect_err(name);
            assert!(e.contains("not a host name"), "{name}: {e}");
            let args = ["run", "--healthz-allowed-host", name];
            let e = parse_with(&args, &no_env).expect_err(name);
            assert!(e.contains("--healthz-allowed-host"), "{name}: {e}");
            assert!(e.contains("expected dot-separated labels"), "{name}: {e}");
        }
    }

    #[test]
    fn an_empty_value_of_a_flag_whose_default_is_empty_is_unset() {
        // `-etcd-cafile=${CAFILE}` with CAFILE unset, as templated units write it.
        let r = run_args(&[
            "run",
            "-etcd-cafile=",
            "-etcd-certfile=",
            "-etcd-keyfile",
            "",
            "-etcd-username=",
            "-etcd-password=",
            "-public-ip=",
            "-public-ipv6=",
            "-iface=",
            "-iface-regex=",
            "-iface-can-reach=",
            "-healthz-ip=",
        ]);
        assert_eq!(r.etcd.etcd_cafile, None);
        assert_eq!(r.etcd.etcd_certfile, None);
        assert_eq!(r.etcd.etcd_keyfile, None);
        assert_eq!(r.etcd.etcd_username, None);
        assert_eq!(r.public_ip, None);
        assert_eq!(r.public_ipv6, None);
        assert!(r.iface.is_empty() && r.iface_regex.is_empty());
        assert_eq!(r.iface_can_reach, None);
        assert_eq!(r.healthz_ip, IpAddr::from([127, 0, 0, 1]));
        // Given empty, the flag is still given: the environment does not fill it in, as with
        // flanneld's flag set from the command line.
        let env = |k: &str| (k == "FLANNELD_PUBLIC_IP").then(|| OsString::from("192.0.2.7"));
        let argv = rewrite(&["run", "-public-ip="], &env).expect("rewrites");
        assert!(!argv.iter().any(|a| a.contains("192.0.2.7")), "{argv:?}");
        // A flag whose default is not empty keeps refusing an empty value.
        assert!(parse_with(&["run", "-subnet-lease-renew-margin="], &no_env).is_err());
    }

    /// Flags with a value (some values start with `-`, which Go takes as the value).
    const VALUES: &[(&str, &str)] = &[
        ("network", "10.244.0.0/16"),
        ("subnet", "10.244.1.0/24"),
        ("public-ip", "192.0.2.1"),
        ("iface", "eth0"),
        ("iface-regex", "-^en"),
        ("iface-can-reach", "192.0.2.9"),
        ("etcd-prefix", "/coreos.com/network"),
        ("etcd-username", "-user"),
        ("subnet-lease-renew-margin", "30"),
        ("threads", "2"),
        ("peer", "10.244.2.0/24=192.0.2.2"),
        ("v", "2"),
        ("log", "debug"),
    ];
    const BOOLS: &[&str] = &["keep-privileges", "no-multishot"];

    fn spell_value(name: &str, value: &str, form: u8) -> Vec<String> {
        match form % 4 {
            0 => vec![format!("-{name}={value}")],
            1 => vec![format!("-{name}"), value.to_owned()],
            2 => vec![format!("--{name}={value}")],
            _ => vec![format!("--{name}"), value.to_owned()],
        }
    }

    fn spell_bool(name: &str, form: u8) -> String {
        match form % 6 {
            0 => format!("-{name}"),
            1 => format!("--{name}"),
            2 => format!("-{name}=true"),
            3 => format!("--{name}=1"),
            4 => format!("-{name}=T"),
            _ => format!("--{name}=True"),
        }
    }

    proptest! {
        /// Any text gets a name or an error, never a panic; a name accepted has no port,
        /// scheme, path, user part or blank.
        #[test]
        fn any_allowed_host_is_a_name_or_an_error(text in any::<String>()) {
            if let Ok(name) = parse_allowed_host(&text) {
                prop_assert!(!name.is_empty() && name.len() <= 254);
                prop_assert!(!name.contains([':', '/', '@', ' ', '\t', '\n']), "{name:?}");
            }
        }
    }

    proptest! {
        #[test]
        fn go_and_gnu_spellings_parse_the_same(
            picks in proptest::collection::vec((any::<bool>(), any::<u8>()), VALUES.len() + BOOLS.len()),
            order in Just((0..VALUES.len() + BOOLS.len()).collect::<Vec<usize>>()).prop_shuffle(),
        ) {
            let mut spelled = vec!["run".to_owned()];
            let mut canonical = vec!["run".to_owned()];
            for (i, &(name, value)) in VALUES.iter().enumerate() {
                if picks[i].0 {
                    canonical.push(format!("--{name}={value}"));
                }
            }
            for (j, name) in BOOLS.iter().enumerate() {
                if picks[VALUES.len() + j].0 {
                    canonical.push(format!("--{name}"));
                }
            }
            for &i in &order {
                let (on, form) = picks[i];
                if !on {
                    continue;
                }
                if let Some(&(name, value)) = VALUES.get(i) {
                    spelled.extend(spell_value(name, value, form));
                } else {
                    spelled.push(spell_bool(BOOLS[i - VALUES.len()], form));
                }
            }
            let a = parse_with(&spelled.iter().map(String::as_str).collect::<Vec<_>>(), &no_env);
            let b = parse_with(&canonical.iter().map(String::as_str).collect::<Vec<_>>(), &no_env);
            prop_assert_eq!(format!("{a:?}"), format!("{b:?}"));
            prop_assert!(a.is_ok(), "{:?}", a);
        }

        #[test]
        fn arbitrary_arguments_never_panic(args in proptest::collection::vec("-{0,2}[a-z=_-]{0,12}", 0..8)) {
            let mut all = vec!["run".to_owned()];
            all.extend(args);
            let _ = parse_with(&all.iter().map(String::as_str).collect::<Vec<_>>(), &no_env);
        }

        #[test]
        fn healthz_values_are_a_port_off_or_an_error(n in any::<i64>(), text in "\\PC{0,24}") {
            let want = if n <= 0 { Ok(0) } else { u16::try_from(n).map_err(|_| ()) };
            prop_assert_eq!(parse_healthz_port(&n.to_string()).map_err(|_| ()), want);
            let _ = parse_healthz_port(&text);
            let _ = parse_healthz_ip(&text);
        }

        #[test]
        fn go_ints_match_decimal(n in any::<i64>()) {
            prop_assert_eq!(parse_go_int(&n.to_string()), Ok(n));
            let sign = if n < 0 { "-" } else { "" };
            let m = n.unsigned_abs();
            for text in [format!("{sign}{m:#x}"), format!("{sign}0{m:o}"), format!("{sign}{m:#o}"), format!("{sign}{m:#b}")] {
                prop_assert_eq!(parse_go_int(&text), Ok(n), "{}", text);
            }
        }
    }

    #[test]
    fn single_dash_public_ip_and_go_booleans() {
        for args in [
            &["run", "-public-ip=192.0.2.1"][..],
            &["run", "-public-ip", "192.0.2.1"],
            &["run", "--public-ip=192.0.2.1"],
            &["run", "--public-ip", "192.0.2.1"],
        ] {
            assert_eq!(
                run_args(args).public_ip.as_deref(),
                Some("192.0.2.1"),
                "{args:?}"
            );
        }
        // The last one wins, as in Go.
        assert!(!run_args(&["run", "-keep-privileges", "-keep-privileges=false"]).keep_privileges);
        assert!(run_args(&["run", "-keep-privileges=f", "--keep-privileges"]).keep_privileges);
        assert_eq!(
            run_args(&["run", "-public-ip=192.0.2.1", "-public-ip=192.0.2.2"])
                .public_ip
                .as_deref(),
            Some("192.0.2.2")
        );
        // Repeatable flags keep every value, in order.
        assert_eq!(
            run_args(&["run", "-iface", "eth9", "--iface=eth0", "-iface=192.0.2.1"]).iface,
            ["eth9", "eth0", "192.0.2.1"]
        );
        // Go does not take `-flag true` for a boolean; neither does fustian (clap says why).
        let e = parse_with(&["run", "-keep-privileges", "true"], &no_env).expect_err("positional");
        assert!(e.contains("'true'"), "{e}");
        let e = parse_with(&["run", "-keep-privileges=yes"], &no_env).expect_err("bad bool");
        assert!(e.contains("yes"), "{e}");
        // Unknown flags keep clap's error, named as the long flag.
        let e = parse_with(&["run", "-no-such-flag=1"], &no_env).expect_err("unknown");
        assert!(e.contains("--no-such-flag"), "{e}");
        // Values after `--` are left alone.
        assert_eq!(
            rewrite(&["run", "--", "-public-ip"], &no_env).expect("rewrites"),
            ["fustian", "run", "--", "-public-ip"]
        );
        // Other subcommands are not rewritten.
        assert_eq!(
            rewrite(&["show", "-addr", "x"], &no_env).expect("rewrites"),
            ["fustian", "show", "-addr", "x"]
        );
    }

    #[test]
    fn a_binary_called_flanneld_prints_a_version_in_flanneld_s_look() {
        for name in ["flanneld", "/usr/bin/flanneld", "./flanneld"] {
            assert!(called_as_flanneld(std::ffi::OsStr::new(name)), "{name}");
        }
        for name in ["fustian", "flanneld-old", "/opt/flanneld/fustian"] {
            assert!(!called_as_flanneld(std::ffi::OsStr::new(name)), "{name}");
        }
        let v = flanneld_version();
        assert!(
            v.starts_with('v') && v[1..] == *env!("CARGO_PKG_VERSION"),
            "{v}"
        );
    }

    #[test]
    fn short_help_and_version_still_work() {
        use clap::error::ErrorKind;
        for (args, kind) in [
            (&["-h"][..], ErrorKind::DisplayHelp),
            (&["-V"], ErrorKind::DisplayVersion),
            (&["--version"], ErrorKind::DisplayVersion),
            (&["run", "-h"], ErrorKind::DisplayHelp),
            (&["run", "-help"], ErrorKind::DisplayHelp),
            (&["run", "--help"], ErrorKind::DisplayHelp),
            (&["run", "-version"], ErrorKind::DisplayVersion),
            (&["run", "--version=true"], ErrorKind::DisplayVersion),
            (&["run", "-V"], ErrorKind::DisplayVersion),
        ] {
            let argv = rewrite(args, &no_env).expect("rewrites");
            let e = Cli::try_parse_from(argv).expect_err("help or version");
            assert_eq!(e.kind(), kind, "{args:?}");
        }
        // `-version=false` is no request for the version.
        assert!(parse_with(&["run", "-version=false"], &no_env).is_ok());
    }

    #[test]
    fn every_refused_flag_is_refused_on_the_command_line_and_in_the_environment() {
        for f in FLANNELD_FLAGS {
            let Support::Refused { unless, .. } = f.support else {
                continue;
            };
            let effect = match f.kind {
                FlagKind::Bool if unless == ["false"] => "true",
                FlagKind::Bool => "false",
                FlagKind::Value => "/some/value",
            };
            let name = f.name;
            let expect = format!("fustian does not support --{name}");
            let mut forms = vec![format!("-{name}={effect}"), format!("--{name}={effect}")];
            if f.kind == FlagKind::Bool && effect == "true" {
                forms.push(format!("-{name}"));
            }
            for form in &forms {
                let e = rewrite(&["run", form], &no_env).expect_err(form);
                assert!(e.to_string().starts_with(&expect), "{form}: {e}");
            }
            if f.kind == FlagKind::Value {
                let e = rewrite(&["run", &format!("-{name}"), effect], &no_env).expect_err(name);
                assert!(e.to_string().starts_with(&expect), "{e}");
            }
            let key = env_name(name);
            let env = |k: &str| (k == key).then(|| OsString::from(effect));
            let e = rewrite(&["run"], &env).expect_err(&key);
            assert!(
                e.to_string()
                    .starts_with(&format!("fustian does not support {key}={effect}")),
                "{e}"
            );
            // flanneld's default means what fustian does: accepted, on both sides.
            for value in unless {
                let form = format!("--{name}={value}");
                assert!(parse_with(&["run", &form], &no_env).is_ok(), "{form}");
                let env = |k: &str| (k == key).then(|| OsString::from(*value));
                assert!(parse_with(&["run"], &env).is_ok(), "{key}={value}");
            }
            // The command line wins over the environment.
            if let Some(value) = unless.iter().find(|v| !v.is_empty()) {
                let form = format!("--{name}={value}");
                assert!(
                    parse_with(&["run", &form], &env).is_ok(),
                    "{form} over {key}"
                );
            }
            // Only `run` reads flanneld's variables.
            assert!(rewrite(&["show"], &env).is_ok());
        }
    }

    #[test]
    fn every_flanneld_flag_is_a_run_flag_or_refused() {
        let kinds = run_flag_kinds();
        // The masquerade flags may be absent from a build; they are then refused.
        let optional = [
            "ip-masq",
            "ip-masq-fully-random-disable",
            "iptables-resync",
            "iptables-forward-rules",
        ];
        for f in FLANNELD_FLAGS {
            let clap = kinds.iter().find(|(n, _)| n == f.name).map(|(_, k)| *k);
            match (f.support, clap) {
                (Support::Flag, Some(k)) => assert_eq!(
                    f.kind == FlagKind::Bool,
                    k != ClapKind::Value,
                    "{}: Go kind {:?}, clap {k:?}",
                    f.name,
                    f.kind
                ),
                (Support::Flag, None) => {
                    assert!(
                        optional.contains(&f.name),
                        "--{} is not a flag of run",
                        f.name
                    );
                    let e =
                        rewrite(&["run", &format!("--{}=1", f.name)], &no_env).expect_err(f.name);
                    assert!(e.to_string().contains("does not support"), "{e}");
                }
                (Support::Refused { .. }, Some(_)) => panic!("--{} is refused and a flag", f.name),
                (Support::Refused { .. }, None) => {}
            }
            // Never silently dropped from the environment: applied as a flag, or refused.
            if matches!(f.name, "version" | "help") {
                continue;
            }
            let key = env_name(f.name);
            let value = if f.kind == FlagKind::Bool {
                "true"
            } else {
                "7"
            };
            let env = |k: &str| (k == key).then(|| OsString::from(value));
            match rewrite(&["run"], &env) {
                Ok(argv) => assert!(
                    argv.iter()
                        .any(|a| a == &format!("--{}={value}", f.name)
                            || a == &format!("--{}", f.name))
                        || f.support != Support::Flag,
                    "{key}: {argv:?}"
                ),
                Err(e) => assert!(e.to_string().contains("does not support"), "{key}: {e}"),
            }
        }
    }

    #[test]
    fn environment_fills_flags_not_given() {
        let env = |k: &str| match k {
            "FLANNELD_PUBLIC_IP" => Some(OsString::from("192.0.2.7")),
            "FLANNELD_IFACE" => Some(OsString::from("eth1")),
            "FLANNELD_ETCD_PREFIX" => Some(OsString::new()),
            "FLANNELD_SUBNET_LEASE_RENEW_MARGIN" => Some(OsString::from("0x10")),
            "FLANNELD_ETCD_PASSWORD" => Some(OsString::from("-secret")),
            _ => None,
        };
        let cli = parse_with(&["run", "-public-ip", "192.0.2.1"], &env).expect("parses");
        let Command::Run(r) = cli.command else {
            panic!("run")
        };
        // The command line wins; empty variables are unset, as in flanneld.
        assert_eq!(r.public_ip.as_deref(), Some("192.0.2.1"));
        assert_eq!(r.iface, ["eth1"]);
        assert_eq!(r.etcd_prefix, None);
        assert_eq!(r.subnet_lease_renew_margin, Some(16));
        assert_eq!(r.etcd.etcd_password.as_deref(), Some("-secret"));
        let env =
            |k: &str| (k == "FLANNELD_SUBNET_LEASE_RENEW_MARGIN").then(|| OsString::from("0"));
        let e = parse_with(&["run"], &env).expect_err("0 minutes");
        assert!(e.contains("1..1439"), "{e}");
    }

    #[test]
    fn renew_margin_is_flanneld_range() {
        for bad in ["0", "1440", "-1", "100000", "abc", "", "1.5", "_1", "1__0"] {
            let e = parse_with(
                &["run", &format!("-subnet-lease-renew-margin={bad}")],
                &no_env,
            );
            assert!(e.is_err(), "{bad}");
        }
        for (text, minutes) in [
            ("1", 1),
            ("1439", 1439),
            ("60", 60),
            ("010", 8),
            ("0x10", 16),
            ("1_0", 10),
            ("+5", 5),
        ] {
            assert_eq!(
                run_args(&["run", "-subnet-lease-renew-margin", text]).subnet_lease_renew_margin,
                Some(minutes),
                "{text}"
            );
        }
        let e =
            parse_with(&["run", "--subnet-lease-renew-margin=1440"], &no_env).expect_err("1440");
        assert!(e.contains("outside 1..1439"), "{e}");
    }

    #[test]
    fn go_parsers() {
        for (t, v) in [
            ("0", 0),
            ("-0x1F", -31),
            ("0b101", 5),
            ("0o17", 15),
            ("017", 15),
            ("0_17", 15),
            ("0x_1f", 31),
        ] {
            assert_eq!(parse_go_int(t), Ok(v), "{t}");
        }
        for t in ["08", "0x", "1_", "9223372036854775808", "--1", " 1"] {
            assert!(parse_go_int(t).is_err(), "{t}");
        }
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_go_bool(t), Ok(true));
        }
        for t in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_go_bool(t), Ok(false));
        }
        for t in ["yes", "tRUE", "", "2"] {
            assert!(parse_go_bool(t).is_err(), "{t}");
        }
    }

    #[test]
    fn klog_verbosity_sets_the_log_filter_unless_log_does() {
        let filter = |args: &[&str]| parse_with(args, &no_env).expect("parses").log_filter();
        assert_eq!(filter(&["run"]), "info");
        assert_eq!(filter(&["run", "-v", "0"]), "info");
        assert_eq!(filter(&["run", "-v=1"]), "info,fustian=debug");
        assert_eq!(filter(&["run", "-v=2"]), "info,fustian=debug");
        assert_eq!(filter(&["run", "-v", "3"]), "info,fustian=debug");
        assert_eq!(filter(&["run", "-v", "4"]), "info,fustian=trace");
        assert_eq!(filter(&["run", "--v", "5"]), "info,fustian=trace");
        assert_eq!(filter(&["--log", "debug", "run", "-v", "1"]), "debug");
        assert_eq!(filter(&["run", "-v", "-1"]), "info");
        assert_eq!(filter(&["--log", "warn", "run", "-v", "5"]), "warn");
        assert_eq!(filter(&["run", "-v", "5", "-log", "error"]), "error");
    }

    #[test]
    fn klog_verbosity_raises_only_fustians_own_logs() {
        use tracing::Level;
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::{EnvFilter, Registry};

        // What a subscriber with the filter of these arguments lets through: fustian's debug
        // and trace events (the binary's target and a library module's), and a dependency's
        // debug and info events.
        let enabled = |args: &[&str]| {
            let filter = parse_with(args, &no_env).expect("parses").log_filter();
            let filter = EnvFilter::try_new(filter).expect("valid filter");
            let subscriber = Registry::default().with(filter);
            tracing::subscriber::with_default(subscriber, || {
                [
                    tracing::enabled!(target: "fustian", Level::DEBUG),
                    tracing::enabled!(target: "fustian::control::etcd", Level::DEBUG),
                    tracing::enabled!(target: "fustian::control::etcd", Level::TRACE),
                    tracing::enabled!(target: "h2::codec", Level::DEBUG),
                    tracing::enabled!(target: "h2::codec", Level::INFO),
                ]
            })
        };
        assert_eq!(enabled(&["run"]), [false, false, false, false, true]);
        assert_eq!(
            enabled(&["run", "-v", "2"]),
            [true, true, false, false, true]
        );
        assert_eq!(
            enabled(&["run", "-v", "4"]),
            [true, true, true, false, true]
        );
        assert_eq!(
            enabled(&["--log", "debug", "run"]),
            [true, true, false, true, true]
        );
    }

    #[test]
    fn etcd_is_the_default_only_without_a_static_node() {
        let with = |args: &[&str]| run_args(args).etcd_endpoints_or_default();
        let default = cfg!(feature = "etcd").then(|| DEFAULT_ETCD_ENDPOINTS.to_owned());
        assert_eq!(with(&["run"]), default);
        assert_eq!(with(&["run", "-public-ip", "192.0.2.1"]), default);
        assert_eq!(with(&["run", "-network", "10.244.0.0/16"]), None);
        assert_eq!(with(&["run", "-config", "/x.toml"]), None);
        assert_eq!(
            with(&[
                "run",
                "-network",
                "10.244.0.0/16",
                "-etcd-endpoints=http://192.0.2.5:2379"
            ]),
            Some("http://192.0.2.5:2379".to_owned())
        );
    }
}
