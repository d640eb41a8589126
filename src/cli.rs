//! Command-line types (clap derive). They turn flags into [`crate::config`] values and stop
//! there.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{PeerEntry, RawNode, parse_peer_flag};

/// fustian: a userspace overlay dataplane for flannel-style pod networks.
#[derive(Debug, Parser)]
#[command(name = "fustian", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (tracing `EnvFilter` syntax: error, warn, info, debug, trace).
    #[arg(long, global = true, env = "FUSTIAN_LOG", default_value = "info")]
    pub log: String,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one node of the overlay.
    Run(Box<RunArgs>),
    /// Build two nodes in network namespaces, send traffic through the overlay, print results.
    Lab(Box<LabArgs>),
    /// Print a running node's table, counters and I/O path (from its HTTP endpoint).
    Show(ShowArgs),
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
    /// This node's underlay address; the UDP socket binds to it and peers send to it.
    #[arg(long, value_name = "IP", env = "FLANNELD_PUBLIC_IP")]
    pub public_ip: Option<String>,
    /// Underlay interface whose MTU sizes the tunnel [default: the one holding --public-ip].
    #[arg(long, value_name = "DEV", env = "FLANNELD_IFACE")]
    pub iface: Option<String>,
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
    #[arg(long, value_name = "FILE", env = "FLANNELD_SUBNET_FILE")]
    pub subnet_file: Option<String>,
    /// etcd endpoints, comma separated; with them the network, this node's subnet and the
    /// peers come from etcd in flannel's layout (needs the `etcd` feature).
    #[arg(long, value_name = "URLS", env = "FLANNELD_ETCD_ENDPOINTS")]
    pub etcd_endpoints: Option<String>,
    /// etcd key prefix [default: /coreos.com/network].
    #[arg(long, value_name = "PATH", env = "FLANNELD_ETCD_PREFIX")]
    pub etcd_prefix: Option<String>,
    /// etcd client key (TLS with --etcd-certfile).
    #[arg(long, value_name = "FILE", env = "FLANNELD_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,
    /// etcd client certificate.
    #[arg(long, value_name = "FILE", env = "FLANNELD_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,
    /// etcd CA certificate.
    #[arg(long, value_name = "FILE", env = "FLANNELD_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// Renew the subnet lease this long before it expires, in minutes [default: 60].
    #[arg(
        long,
        value_name = "MINUTES",
        env = "FLANNELD_SUBNET_LEASE_RENEW_MARGIN"
    )]
    pub subnet_lease_renew_margin: Option<u64>,
    /// Address of the HTTP endpoint (`/healthz`, `/readyz`, `/metrics`, `/status`).
    #[arg(
        long,
        value_name = "IP",
        default_value = "0.0.0.0",
        env = "FLANNELD_HEALTHZ_IP"
    )]
    pub healthz_ip: std::net::IpAddr,
    /// Port of the HTTP endpoint; 0 turns it off [default: 0].
    #[arg(
        long,
        value_name = "PORT",
        default_value_t = 0,
        env = "FLANNELD_HEALTHZ_PORT"
    )]
    pub healthz_port: u16,
    /// Testing: the subnet lease TTL in seconds instead of flannel's 24 hours.
    #[arg(long, value_name = "SECS", hide = true)]
    pub subnet_lease_ttl: Option<u64>,
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
    /// Testing: publish this many synthetic table updates per second, adding and removing
    /// peers in unused subnets of the network, while forwarding goes on.
    #[arg(long, value_name = "PER_SEC", default_value_t = 0)]
    pub table_churn: u32,
    /// After setup, run as this user (and its group); without it every capability is dropped
    /// after setup instead.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Keep root's capabilities after setup.
    #[arg(long)]
    pub keep_privileges: bool,
    /// io_uring: keep single-shot receives in flight instead of one multishot receive with a
    /// provided-buffer ring (what kernels before 6.0 get).
    #[arg(long)]
    pub no_multishot: bool,
    // flanneld's iptables flags; a bare flag means true, `=false` turns it off.
    /// Masquerade what the pods send outside the network, with flanneld's rules (`iptables`).
    #[arg(long, value_name = "BOOL", env = "FLANNELD_IP_MASQ", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub ip_masq: Option<bool>,
    /// Masquerade without `--random-fully`.
    #[arg(long, value_name = "BOOL", env = "FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE",
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub ip_masq_fully_random_disable: Option<bool>,
    /// Seconds between checks (and repairs) of the iptables rules [default: 5].
    #[arg(long, value_name = "SECS", env = "FLANNELD_IPTABLES_RESYNC")]
    pub iptables_resync: Option<u64>,
    /// Accept forwarded traffic from and to the network (FLANNEL-FWD) [default: as --ip-masq].
    #[arg(long, value_name = "BOOL", env = "FLANNELD_IPTABLES_FORWARD_RULES",
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub iptables_forward_rules: Option<bool>,
}

impl RunArgs {
    /// Returns the overlay settings given as flags.
    pub fn raw(&self) -> RawNode {
        RawNode {
            network: self.network.clone(),
            subnet: self.subnet.clone(),
            public_ip: self.public_ip.clone(),
            iface: self.iface.clone(),
            backend: self.backend.clone(),
            port: self.port,
            tun: self.tun.clone(),
            mtu: self.mtu,
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
        }
    }
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

/// Flags of `fustian lab`.
#[derive(Debug, Args)]
pub struct LabArgs {
    /// Seconds of each TCP bulk transfer and of each 64-byte UDP flood.
    #[arg(long, default_value_t = 3.0, value_name = "SECS")]
    pub duration: f64,
    /// Round trips in the ping-pong latency test.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub pings: u32,
    /// Repetitions of every measurement; the table shows the median (and min-max).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub repeat: u32,
    /// Event loops to measure fustian with, comma separated: auto, uring, epoll.
    #[arg(long, default_value = "auto", value_name = "LOOPS")]
    pub io: String,
    /// Worker threads per node [default: one per CPU].
    #[arg(long, value_name = "N")]
    pub threads: Option<u32>,
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
