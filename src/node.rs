//! One overlay node: sets up the TUN device, the socket and the table, runs the workers and
//! the control sources, and takes everything down again when asked to stop.
//!
//! Setup follows flanneld's `udp` backend: find the underlay interface (given, or the one
//! holding the public IP) and its MTU, open the TUN device, give it the first address of this
//! node's subnet as a host address (/32), set the MTU (underlay − overhead unless given), bring
//! it up and route the whole network into it, with the UDP sockets bound to the public IP and
//! port. [`run`] is that list of steps, one function each.
//!
//! What can refuse a second node on the same host (the claim on the TUN device's name and the
//! check for other readers of it, the UDP port with its claim, the routes of the networks) is
//! taken first, as a [`HostClaim`], before the node writes anything: a node joining through
//! etcd takes it after reading the network config (which sets the port) and before it writes
//! its lease, so that a refused node leaves etcd and the subnet file as it found them. The
//! device is configured once the subnet is known.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{BackendConfig, NodeConfig, load_or_create_vtep_mac};
use crate::control::{ControlPlane, SourceMetrics};
use crate::datapath::Forwarding;
use crate::error::Error;
use crate::event::{self, Backend, Worker};
use crate::metrics::Metrics;
use crate::offload::Offloads;
use crate::table::{PeerTotals, Snapshot, Table};
use crate::tun::link::Netlink;
use crate::tun::{Tun, TunError, TunOffload, if_index, if_index_checked};
use crate::udp::UdpSocket;
use crate::wire::{Encap, MacAddress};

/// How often the stats file is written.
const STATS_EVERY: Duration = Duration::from_millis(250);

/// Options of a running node that are not part of the overlay configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Write the counters here (Prometheus text format) every 250 ms and on exit.
    pub stats_file: Option<PathBuf>,
    /// io_uring: use multishot receive with a provided-buffer ring where the kernel has it.
    pub multishot: bool,
    /// The longest adaptive busy-poll window of a worker before it blocks (zero: none; see
    /// `event::spin`).
    pub busy_poll: Duration,
    /// After setup, switch to this user; otherwise drop every capability (unless
    /// `keep_privileges`).
    pub user: Option<String>,
    /// Keep root's capabilities after setup.
    pub keep_privileges: bool,
    /// A failure to write the subnet file stops the node (it joined a managed network, whose
    /// pods depend on the file); otherwise it is a warning.
    pub subnet_file_required: bool,
    /// The HTTP endpoint's status, when one is serving (started before the node, so it
    /// answers while the node waits for etcd): the node sets its renderers and marks it ready
    /// once set up.
    pub status: Option<Arc<crate::http::Status>>,
    /// Serve `fustian trace` on this Unix socket (a failure stops the node); `None`: on
    /// `/run/fustian/<tun>.sock` (a failure is a warning).
    pub trace_socket: Option<PathBuf>,
    /// Set by SIGHUP when the node has nothing to reload (no watched config file): the
    /// supervising loop logs that and goes on.
    pub sighup: Option<Arc<AtomicBool>>,
}

/// Writes flanneld's subnet file atomically, creating the directory: for each family the
/// network and this node's subnet (its first address and length), as `FLANNEL_NETWORK` and
/// `FLANNEL_SUBNET` for IPv4 and `FLANNEL_IPV6_NETWORK` and `FLANNEL_IPV6_SUBNET` for IPv6, then
/// the TUN MTU and whether this node masquerades (`FLANNEL_IPMASQ`). `overlays` are
/// `(network, subnet)` pairs, IPv4 first as flanneld writes them.
///
/// # Errors
///
/// The directory, write or rename error.
pub fn write_subnet_file(
    path: &std::path::Path,
    overlays: &[(ipnet::IpNet, ipnet::IpNet)],
    mtu: u32,
    ipmasq: bool,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    write_atomically(path, subnet_file_text(overlays, mtu, ipmasq).as_bytes())
}

/// The text of the subnet file [`write_subnet_file`] writes: a `KEY=VALUE` line each.
pub fn subnet_file_text(
    overlays: &[(ipnet::IpNet, ipnet::IpNet)],
    mtu: u32,
    ipmasq: bool,
) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    let mut ordered: Vec<_> = overlays.to_vec();
    ordered.sort_by_key(|(n, _)| n.addr().is_ipv6());
    for (network, subnet) in ordered {
        let (first, family) = match subnet {
            ipnet::IpNet::V4(n) => (
                std::net::IpAddr::V4(std::net::Ipv4Addr::from(
                    u32::from(n.network()).saturating_add(1),
                )),
                "",
            ),
            ipnet::IpNet::V6(n) => (
                std::net::IpAddr::V6(std::net::Ipv6Addr::from(
                    u128::from(n.network()).saturating_add(1),
                )),
                "IPV6_",
            ),
        };
        let _ = write!(
            text,
            "FLANNEL_{family}NETWORK={network}\nFLANNEL_{family}SUBNET={first}/{}\n",
            subnet.prefix_len()
        );
    }
    let _ = write!(text, "FLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={ipmasq}\n");
    text
}

/// Set once a node of this process has finished its start (its workers run).
static STARTED: AtomicBool = AtomicBool::new(false);

/// Returns whether a node of this process finished its start: a failure before that, with a
/// stop asked for meanwhile, is the stop cutting the start short.
pub fn started() -> bool {
    STARTED.load(Ordering::Relaxed)
}

/// What keeps a second node off this host's TUN device and UDP port: the claim on the
/// device's name, checked free of other readers, and the node's UDP sockets, bound (with the
/// port's claim) and checked for other sockets on the port. Taken before the node writes
/// anything anywhere (a lease into etcd, the subnet file), so that a node refused here leaves
/// everything as it found it; held for the node's lifetime.
#[derive(Debug)]
pub struct HostClaim {
    /// The claim on the device's name (`fustian-tun-<name>`); `None` when it was passed over
    /// (see [`HostClaim::take`]).
    tun: Option<crate::udp::claim::PortClaim>,
    tun_name: String,
    /// One socket per worker asked for, on the public IP and port.
    sockets: Vec<UdpSocket>,
    /// The same on the IPv6 underlay address, when there is one.
    sockets6: Vec<UdpSocket>,
    /// The networks whose routes were found free.
    networks: Vec<ipnet::IpNet>,
}

impl HostClaim {
    /// Claims the TUN device's name and checks that no process reads the device, binds the
    /// UDP sockets (one per worker, after retiring flanneld's VXLAN device on the port, which
    /// the node replaces) and checks that the networks' routes lead to no other device. The
    /// device is neither opened nor configured here: its address needs the node's subnet.
    ///
    /// # Errors
    ///
    /// [`TunError::InUse`] when another node (or another process) holds the device,
    /// [`crate::udp::UdpError::Taken`] when another process holds the port, or the error of
    /// the step that failed.
    pub fn take(config: &NodeConfig) -> Result<Self, Error> {
        retire_flanneld_vtep(config)?;
        let tun = claim_tun_name(&config.tun)?;
        crate::tun::check_free(&config.tun)?;
        let workers = config.workers();
        let sockets =
            UdpSocket::bind_group(SocketAddr::new(config.public_ip, config.port), workers)?;
        let sockets6 = match config.public_ipv6 {
            Some(ip) => UdpSocket::bind_group(SocketAddr::new(ip.into(), config.port), workers)?,
            None => Vec::new(),
        };
        let mut nl = Netlink::open().map_err(|source| Error::Io {
            what: "open a route netlink socket".into(),
            source,
        })?;
        check_routes(&mut nl, config)?;
        Ok(Self {
            tun,
            tun_name: config.tun.clone(),
            sockets,
            sockets6,
            networks: config.networks(),
        })
    }

    /// Returns whether this claim covers the device, addresses, port, worker count and
    /// networks of `config`.
    #[must_use]
    pub fn fits(&self, config: &NodeConfig) -> bool {
        let on = |sockets: &[UdpSocket], ip: Option<IpAddr>| match (sockets.first(), ip) {
            (None, None) => true,
            (Some(s), Some(ip)) => s.local_addr() == SocketAddr::new(ip, config.port),
            _ => false,
        };
        self.tun_name == config.tun
            && self.sockets.len() == config.workers()
            && on(&self.sockets, Some(config.public_ip))
            && on(&self.sockets6, config.public_ipv6.map(IpAddr::V6))
            && self.networks == config.networks()
    }
}

/// Sets up the node described by `config`, runs the control sources (each on its own thread)
/// and the workers, and forwards until `stop` is set or a worker stops. `host` is the claim
/// taken before the node joined its network ([`HostClaim::take`]); without one, or with one
/// that does not fit `config`, it is taken here, before anything is set up.
///
/// # Errors
///
/// Any setup failure, or a worker's event loop failing.
pub fn run(
    config: &NodeConfig,
    opts: &RunOptions,
    stop: &Arc<AtomicBool>,
    controls: Vec<ControlPlane>,
    host: Option<HostClaim>,
) -> Result<(), Error> {
    check_open_files(config.workers())?;
    warn_without_br_netfilter(config);
    let mut nl = Netlink::open().map_err(|source| Error::Io {
        what: "open a route netlink socket".into(),
        source,
    })?;
    let underlay = Underlay::find(&mut nl, config)?;
    let host = match host {
        Some(host) if host.fits(config) => host,
        other => {
            // Released first: this process holds the names a new claim takes.
            drop(other);
            HostClaim::take(config)?
        }
    };
    let (mut backend, mut why) = event::choose(config.io).map_err(Error::Underlay)?;
    if backend == event::Backend::Uring
        && locked_memory_bound(opts.user.is_some(), opts.keep_privileges)
        && let Err(limit) = event::uring_memlock(config.workers())
    {
        if config.io == crate::config::IoChoice::Auto {
            tracing::warn!("io_uring left out: {limit}");
            (backend, why) = (event::Backend::Epoll, format!("auto: {limit}"));
        } else {
            return Err(Error::Limit(format!("--io uring: {limit}")));
        }
    }
    let HostClaim {
        tun: tun_claim,
        sockets,
        sockets6,
        ..
    } = host;
    let device = Device::open(&mut nl, config, &underlay, tun_claim)?;
    let (sockets, offloads) = open_sockets(config, &device, sockets);
    let sockets6 = open_sockets6(config, &device, offloads, sockets6)?;
    let socket_inodes: Vec<u64> = sockets
        .iter()
        .chain(&sockets6)
        .filter_map(|s| s.inode().ok())
        .collect();
    let (encap, tx_pool, tx_pool6) = encapsulation(config)?;
    let workers = device.queues.len();
    let table = Arc::new(Table::new(
        Snapshot::new(config.local_subnets(), config.peers.clone())?,
        workers,
    ));
    let metrics = Arc::new(Metrics::new(workers));
    let trace = Arc::new(crate::trace::Hub::new(workers));
    let facts = Facts {
        config,
        device: &device,
        encap,
        backend,
        why: &why,
        offloads,
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    // Before the rules and the subnet file, which tell the world this node is up: a socket
    // that cannot be made stops the start with nothing to take back.
    let mut tracer = bind_trace_socket(opts, &device.name)?;
    let mut masq = start_masquerade(config, config.network, config.subnet)?;
    // A dual-stack node keeps the IPv6 overlay's rules too (ip6tables, or nftables' ip6 table).
    let mut masq6 = match config.ipv6 {
        Some(v6) => start_masquerade(config, v6.network, v6.subnet)?,
        None => None,
    };
    // The rules may have taken a while (a tool waiting on a lock): a stop asked for meanwhile
    // is taken before the subnet file tells the pods' network plugin the node is up.
    if stop.load(Ordering::Relaxed) {
        return Err(Error::Stopped("writing the subnet file"));
    }
    let subnet_written = write_subnet_file_step(config, device.mtu, opts.subnet_file_required)?;
    let view = Arc::new(NodeView {
        head: facts.status_head(),
        info: facts.info_gauge(),
        metrics: Arc::clone(&metrics),
        table: Arc::clone(&table),
        sources: controls.iter().filter_map(|c| c.metrics.clone()).collect(),
        masq: masq_counters(masq.as_ref(), masq6.as_ref()),
        trace: Arc::clone(&trace),
        tun: device.name.clone(),
        sockets: socket_inodes,
    });
    if let Some(status) = &opts.status {
        serve_status(status, &view);
    }
    settle_privileges(opts)?;
    if let Some(t) = &mut tracer
        && let Err(e) = t.serve(Arc::clone(&trace))
    {
        tracing::warn!("cannot serve fustian trace: {e}");
    }
    for keeper in [&mut masq, &mut masq6].into_iter().flatten() {
        keeper.settled();
    }
    let control_threads = spawn_controls(controls, &table, stop)?;
    let max_inner_len = underlay.max_inner(device.mtu);
    if (device.mtu as usize) > max_inner_len {
        tracing::warn!(
            tun_mtu = device.mtu,
            path = max_inner_len,
            "the TUN MTU is above what the underlay carries: bigger packets are dropped \
             (counted as too_big), with \"fragmentation needed\" sent back for those with DF \
             set or IPv6; without DF they are lost silently, as fustian does not fragment"
        );
    }
    let fwd = Forwarding {
        encap,
        network: config.network,
        max_inner_len,
        icmp: true,
        strict_source_port: config.strict_source_port,
    };
    let shared = WorkerShared {
        tx_pool: Arc::new(tx_pool),
        tx_pool6: Arc::new(tx_pool6),
        table: Arc::clone(&table),
        metrics,
        fwd,
        stop: Arc::clone(stop),
        multishot: opts.multishot,
        busy_poll: opts.busy_poll,
        offloads,
        tun_mtu: device.mtu as usize,
        trace: Arc::clone(&trace),
    };
    // Said once the steps that may still fail the start have succeeded (the trace socket,
    // the rules, the subnet file, the privilege drop), before the workers.
    facts.log_node_up();
    let handles = match spawn_workers(backend, device.queues, sockets, sockets6, &shared) {
        Ok(handles) => handles,
        Err(e) => {
            // The workers already started and the control sources stop with the flag.
            stop.store(true, Ordering::Relaxed);
            for t in control_threads {
                let _ = t.join();
            }
            return Err(e);
        }
    };
    // A unit of `Type=notify` (flanneld's) starts what is ordered after it now: the subnet
    // file is written and packets flow.
    STARTED.store(true, Ordering::Relaxed);
    notify_systemd("READY=1");
    let mut readiness = Readiness::new(config, &view.tun, subnet_written, view.sources.clone());
    let mut control_threads = control_threads;
    supervise(
        opts,
        stop,
        &handles,
        &mut control_threads,
        &view,
        &mut readiness,
    );
    notify_systemd("STOPPING=1");
    let result = teardown(
        opts,
        stop,
        handles,
        control_threads,
        &view,
        masq,
        device.created,
    );
    drop(masq6);
    result
}

/// Open files a node needs besides its workers': the HTTP endpoint's connections (128 waiting
/// and those served), the trace socket's clients, netlink sockets, the tools it runs, files.
const FILES_BESIDE_WORKERS: u64 = 256;

/// Open files one worker needs at most: its TUN queue, UDP sockets of both families, its
/// ring or epoll instance and what they register.
const FILES_PER_WORKER: u64 = 8;

/// Whether `RLIMIT_MEMLOCK` binds the io_uring rings: kept privileges keep CAP_IPC_LOCK, and
/// then it does not.
const fn locked_memory_bound(user: bool, keep_privileges: bool) -> bool {
    user || !keep_privileges
}

/// Checks, before the node joins its network, what [`run`] would refuse at start for the
/// process limits or the event loop: the open files `workers` workers need, and for
/// `--io uring` that the kernel has io_uring and the locked memory its rings take. So a node
/// that cannot start takes no lease. `--io auto` never fails here (it takes epoll instead).
///
/// # Errors
///
/// [`Error::Limit`] naming the limit, or [`Error::Underlay`] when io_uring is missing.
pub fn check_limits(
    workers: usize,
    io: crate::config::IoChoice,
    user: bool,
    keep_privileges: bool,
) -> Result<(), Error> {
    check_open_files(workers)?;
    if io == crate::config::IoChoice::Uring {
        event::choose(io).map_err(Error::Underlay)?;
        if locked_memory_bound(user, keep_privileges) {
            event::uring_memlock(workers)
                .map_err(|limit| Error::Limit(format!("--io uring: {limit}")))?;
        }
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard one (as Go does for flanneld), then checks
/// that it holds what `workers` workers need: a node short of descriptors would otherwise
/// fail after "node up" (a worker's socket), or have the HTTP endpoint refuse probes.
///
/// # Errors
///
/// [`Error::Limit`] naming the limit and what the node needs.
fn check_open_files(workers: usize) -> Result<(), Error> {
    let need = FILES_BESIDE_WORKERS + FILES_PER_WORKER * workers as u64;
    match crate::sys::raise_open_files() {
        Ok(crate::sys::Limit {
            soft: Some(soft), ..
        }) if soft < need => Err(Error::Limit(format!(
            "RLIMIT_NOFILE is {soft}, and a node with {workers} workers needs at least {need} \
             open files (raise LimitNOFILE= in the unit or ulimit -n)"
        ))),
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!("cannot read RLIMIT_NOFILE: {e}");
            Ok(())
        }
    }
}

/// Returns the interface that holds `ip` (`what` names it in the error).
fn index_holding(nl: &mut Netlink, ip: std::net::IpAddr, what: &str) -> Result<u32, Error> {
    nl.index_holding(ip)
        .map_err(|e| Error::Underlay(format!("cannot list addresses: {e}")))?
        .ok_or_else(|| {
            Error::Underlay(format!(
                "no interface holds {ip} ({what}, which the node binds its port to); add the \
                 address to the underlay interface"
            ))
        })
}

/// Checks that interfaces of this host hold the node's underlay addresses, which it binds its
/// port to: done before a node joins through etcd, so a node that cannot start takes no lease
/// (and does not take over the lease of the node that does hold the address).
///
/// # Errors
///
/// [`Error::Underlay`] naming the address no interface holds.
pub fn check_underlay_addresses(
    public_ip: std::net::Ipv4Addr,
    public_ipv6: Option<std::net::Ipv6Addr>,
) -> Result<(), Error> {
    let mut nl = Netlink::open().map_err(|source| Error::Io {
        what: "open a route netlink socket".into(),
        source,
    })?;
    index_holding(&mut nl, public_ip.into(), "the public IP")?;
    if let Some(ip6) = public_ipv6 {
        index_holding(&mut nl, ip6.into(), "--public-ipv6")?;
    }
    Ok(())
}

/// The underlay interface and what its MTU leaves for the overlay.
struct Underlay {
    /// The interface's MTU.
    mtu: u32,
    /// Bytes of encapsulation per packet.
    overhead: u32,
}

impl Underlay {
    /// Finds the underlay interface (given, or the one holding the public IP) and reads its
    /// MTU.
    fn find(nl: &mut Netlink, config: &NodeConfig) -> Result<Self, Error> {
        let (iface, index) = match &config.iface {
            Some(name) => (
                name.clone(),
                if_index_checked(name)
                    .map_err(|e| Error::Underlay(format!("cannot look up interface {name}: {e}")))?
                    .ok_or_else(|| Error::Underlay(format!("no interface named {name}")))?,
            ),
            None => {
                let index = index_holding(nl, config.public_ip, "the public IP")?;
                (format!("ifindex {index}"), index)
            }
        };
        let mut mtu = nl
            .mtu(index)
            .map_err(|e| Error::Underlay(format!("cannot read the MTU of {iface}: {e}")))?;
        // The IPv6 underlay address of a dual underlay may sit on another interface (a tunnel,
        // say): the smaller MTU of the two sizes the device, so neither family's datagrams
        // outgrow their path.
        if let (None, Some(ip6)) = (&config.iface, config.public_ipv6) {
            let index6 = index_holding(nl, ip6.into(), "--public-ipv6")?;
            if index6 != index {
                let mtu6 = nl.mtu(index6).map_err(|e| {
                    Error::Underlay(format!("cannot read the MTU of ifindex {index6}: {e}"))
                })?;
                mtu = mtu.min(mtu6);
            }
        }
        let overhead = config.overhead();
        let underlay = Self {
            mtu,
            overhead: u32::try_from(overhead).unwrap_or(u32::MAX),
        };
        let tun_mtu = underlay.tun_mtu(config);
        if tun_mtu < 68 {
            return Err(Error::Underlay(format!(
                "underlay MTU {mtu} of {iface} leaves {tun_mtu} bytes after {overhead} bytes of \
                 encapsulation; give --mtu"
            )));
        }
        // IPv6 needs links of 1280 bytes or more (RFC 8200 section 5); below that the kernel
        // takes IPv6 off the device.
        let v6_overlay = config.networks().iter().any(|n| n.addr().is_ipv6());
        if v6_overlay && tun_mtu < 1280 {
            return Err(Error::Underlay(format!(
                "a TUN MTU of {tun_mtu} (underlay MTU {mtu} of {iface} less {overhead} bytes of \
                 encapsulation, or --mtu) is below IPv6's minimum of 1280; an IPv6 overlay needs \
                 an underlay MTU of at least {}",
                1280 + overhead
            )));
        }
        Ok(underlay)
    }

    /// The TUN MTU: as given, or the underlay's less the encapsulation.
    fn tun_mtu(&self, config: &NodeConfig) -> u32 {
        config
            .mtu
            .unwrap_or_else(|| self.mtu.saturating_sub(self.overhead))
    }

    /// The largest inner packet the path carries: the TUN MTU, unless it was set larger than
    /// the underlay allows, in which case bigger packets get "fragmentation needed".
    fn max_inner(&self, tun_mtu: u32) -> usize {
        tun_mtu.min(self.mtu.saturating_sub(self.overhead)) as usize
    }
}

/// The TUN device, configured: its queues (one per worker), address, MTU and route.
struct Device {
    /// The claim on the device's name (`fustian-tun-<name>`), held for the node's lifetime:
    /// two nodes started at once cannot both pass the check for attached queues.
    _claim: Option<crate::udp::claim::PortClaim>,
    queues: Vec<Tun>,
    offload: TunOffload,
    name: String,
    created: bool,
    mtu: u32,
}

impl Device {
    /// Opens one queue per worker, gives the device its address and MTU, brings it up and
    /// routes the network into it. `claim` is the claim on its name ([`HostClaim`]).
    fn open(
        nl: &mut Netlink,
        config: &NodeConfig,
        underlay: &Underlay,
        claim: Option<crate::udp::claim::PortClaim>,
    ) -> Result<Self, Error> {
        let mtu = underlay.tun_mtu(config);
        // Checked again as the device is touched: a route may have come since the claim.
        check_routes(nl, config)?;
        let want = config.workers();
        let (queues, offload) = Tun::open_queues(&config.tun, want, config.offload)?;
        let (name, index, created) = (
            queues[0].name().to_owned(),
            queues[0].index(),
            queues[0].created(),
        );
        let netlink_err = |what: String, source| TunError::Netlink {
            what,
            name: name.clone(),
            source,
        };
        // A device that outlived an earlier node may hold that node's address from another
        // subnet (a lease lost, a static subnet changed): the kernel would pick it as the
        // source of this host's own packets into the overlay, which the peers refuse as
        // spoofed, and answer for another node's address. Addresses inside the overlay that
        // are not this node's go, as flannel's vxlan backend removes them from its device.
        // A persistent device with an owner or group lets that user's processes attach a
        // queue of their own, unprivileged, and read or write part of the pod traffic.
        if !created {
            match nl.tun_owner(index) {
                Ok((None, None)) => {}
                Ok((owner, group)) => {
                    let who = |what: &str, id: Option<u32>| id.map(|id| format!("{what} {id}"));
                    let named: Vec<String> = [who("user", owner), who("group", group)]
                        .into_iter()
                        .flatten()
                        .collect();
                    return Err(TunError::Owned {
                        name,
                        who: named.join(" and "),
                    }
                    .into());
                }
                Err(e) => tracing::warn!("cannot read the owner of the existing {name}: {e}"),
            }
        }
        if !created {
            let own: Vec<IpAddr> = config
                .local_subnets()
                .iter()
                .map(ipnet::IpNet::network)
                .collect();
            let networks = config.networks();
            let stale: Vec<_> = nl
                .addresses()
                .map_err(|e| netlink_err("list its addresses".into(), e))?
                .into_iter()
                .filter(|a| {
                    a.index == index
                        && !own.contains(&a.ip)
                        && networks.iter().any(|n| n.contains(&a.ip))
                })
                .collect();
            for a in stale {
                match nl.delete_address(index, a.ip, a.prefix_len) {
                    Ok(()) => {}
                    // Gone meanwhile: what removal wants.
                    Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => continue,
                    Err(e) => {
                        return Err(netlink_err(
                            format!("remove the stale address {}/{}", a.ip, a.prefix_len),
                            e,
                        )
                        .into());
                    }
                }
                tracing::info!(address = %a.ip, "removed an address of an earlier subnet from {name}");
            }
        }
        // As flanneld's udp backend (`udp_network_amd64.go`) and its IPv6 VTEP: each lease's
        // first address as a host address, so the kernel makes no connected or broadcast route
        // for it, then an explicit route for each whole network once the link is up.
        for subnet in config.local_subnets() {
            let tun_addr = subnet.network();
            let host_len = if tun_addr.is_ipv4() { 32 } else { 128 };
            nl.add_address(index, tun_addr, host_len)
                .map_err(|e| netlink_err(format!("add address {tun_addr}/{host_len}"), e))?;
        }
        if let Some(packets) = config.tun_txqueuelen {
            nl.set_txqueuelen(index, packets)
                .map_err(|e| netlink_err(format!("set txqueuelen {packets}"), e))?;
        }
        nl.set_mtu_up(index, mtu)
            .map_err(|e| netlink_err(format!("set MTU {mtu} and bring the link up"), e))?;
        if offload.tso || offload.uso {
            // A super-packet is cut into at most MAX_SEGMENTS segments. The kernel's default
            // (65535) lets a flow with a small MSS (under about 256 bytes) hand bigger ones, which
            // would be dropped; with the limit the kernel segments those in software before the
            // device. Ordinary super-packets (64 KiB at MSS 1400: about 46 segments) stay whole.
            let segs = u32::try_from(crate::offload::MAX_SEGMENTS).unwrap_or(u32::MAX);
            if let Err(e) = nl.set_gso_max_segs(index, segs) {
                tracing::warn!(
                    "cannot set gso_max_segs {segs} on {name}: super-packets of more segments \
                     are dropped ({e})"
                );
            }
        }
        for network in config.networks() {
            let network = network.trunc();
            nl.add_route(index, network)
                .map_err(|e| netlink_err(format!("add the route {network}"), e))?;
        }
        Ok(Self {
            _claim: claim,
            queues,
            offload,
            name,
            created,
            mtu,
        })
    }
}

/// Claims the name of TUN device `tun` for this node (`fustian-tun-<name>`): two nodes started
/// at once cannot both pass the check for attached queues that follows.
fn claim_tun_name(tun: &str) -> Result<Option<crate::udp::claim::PortClaim>, Error> {
    let claim = match crate::udp::claim::PortClaim::take_named(&format!("fustian-tun-{}", tun)) {
        Ok(claim) => Some(claim),
        // Held by a process of this user (root, for a node): another node. Any local user
        // can bind an abstract name, and one who cannot attach to the device must not keep
        // the node from starting: such a claim is passed over, and the check of attached
        // queues still stands.
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let name = format!("fustian-tun-{}", tun);
            let euid = crate::sys::euid();
            let holders = crate::udp::claim::named_holders(&name);
            if holders.is_empty()
                || holders
                    .iter()
                    .any(|(pid, _)| crate::udp::claim::uid_of(*pid) == Some(euid))
            {
                return Err(TunError::InUse {
                    name: tun.to_owned(),
                    detail: format!("another fustian node: {e}"),
                }
                .into());
            }
            tracing::warn!(
                "the claim on {} is held by {} of another user: passed over",
                tun,
                crate::udp::claim::describe(&holders)
            );
            None
        }
        Err(e) => {
            tracing::warn!("cannot claim the name of {}: {e}", tun);
            None
        }
    };
    Ok(claim)
}

/// Refuses a network whose route leads to another device than the node's: another node (or
/// something else) routes it on this host, and this node would run without its route. Through
/// a device of the node's name it is the route of a persistent device the node restarts on.
fn check_routes(nl: &mut Netlink, config: &NodeConfig) -> Result<(), Error> {
    for network in config.networks() {
        let network = network.trunc();
        let oifs = nl.route_oifs(network).map_err(|source| TunError::Netlink {
            what: format!("list the routes to {network}"),
            name: config.tun.clone(),
            source,
        })?;
        let own = if_index(&config.tun);
        // A route through a device that no longer exists is a node's that has just
        // exited, which the kernel is about to flush: `add_route` waits for it.
        let live = |nl: &mut Netlink, o: Option<u32>| o.is_none_or(|i| nl.link_exists(i));
        let others: Vec<Option<u32>> = oifs
            .into_iter()
            .filter(|o| own.is_none() || *o != own)
            .collect();
        if let Some(other) = others.into_iter().find(|&o| live(nl, o)) {
            return Err(Error::Underlay(nl.route_conflict(network, other)));
        }
    }
    Ok(())
}

/// Keeps one of the claimed UDP sockets per queue, and settles which offloads are in use.
fn open_sockets(
    config: &NodeConfig,
    device: &Device,
    mut sockets: Vec<UdpSocket>,
) -> (Vec<UdpSocket>, Offloads) {
    // Bound for every worker asked for; an existing single-queue device runs fewer. A socket
    // left in the `SO_REUSEPORT` group would take its share of the flows with no worker to
    // read it, so those go.
    sockets.truncate(device.queues.len());
    let offloads = if config.offload {
        let gro = sockets.iter().all(|s| s.enable_gro().is_ok());
        Offloads {
            tun: device.offload.tso,
            tun_uso: device.offload.uso,
            gso: sockets[0].gso_supported(),
            gro,
        }
    } else {
        Offloads::default()
    };
    (sockets, offloads)
}

/// Keeps the second group of claimed sockets, one per queue, on the IPv6 underlay address of
/// a node that has one beside its IPv4 public IP (none otherwise); with `UDP_GRO` exactly when
/// the first group has it (the workers size their receive buffers for it).
fn open_sockets6(
    config: &NodeConfig,
    device: &Device,
    offloads: Offloads,
    mut sockets: Vec<UdpSocket>,
) -> Result<Vec<UdpSocket>, Error> {
    if config.public_ipv6.is_none() {
        return Ok(Vec::new());
    }
    sockets.truncate(device.queues.len());
    if offloads.gro {
        for s in &sockets {
            s.enable_gro().map_err(|e| {
                Error::Underlay(format!(
                    "UDP_GRO works on the IPv4 underlay socket but not on the IPv6 one ({e}); \
                     give --offload off"
                ))
            })?;
        }
    }
    Ok(sockets)
}

/// The encapsulation, and with VXLAN the pools of sockets whose source ports spread flows (the
/// second one on the IPv6 underlay address, when there is one).
fn encapsulation(config: &NodeConfig) -> Result<(Encap, Vec<UdpSocket>, Vec<UdpSocket>), Error> {
    Ok(match config.backend {
        BackendConfig::Udp => (config.encap(MacAddress([0; 6])), Vec::new(), Vec::new()),
        BackendConfig::Vxlan {
            vtep_mac,
            port_range,
            source_ports,
            ..
        } => {
            let mac = match vtep_mac {
                Some(mac) => mac,
                None => load_or_create_vtep_mac(&config.vtep_mac_path())?,
            };
            let pool = UdpSocket::bind_source_pool(config.public_ip, port_range, source_ports)?;
            let pool6 = match config.public_ipv6 {
                Some(ip) => UdpSocket::bind_source_pool(ip.into(), port_range, source_ports)?,
                None => Vec::new(),
            };
            tracing::info!(
                vtep_mac = %mac,
                source_ports = ?pool.iter().map(|s| s.local_addr().port()).collect::<Vec<_>>(),
                ipv6_source_ports = ?pool6.iter().map(|s| s.local_addr().port()).collect::<Vec<_>>(),
                "vxlan endpoint"
            );
            (config.encap(mac), pool, pool6)
        }
    })
}

/// flanneld's masquerade and forward rules, kept by a thread that is set up to keep
/// `CAP_NET_ADMIN` before the privileges are dropped; removed when the keeper drops.
fn start_masquerade(
    config: &NodeConfig,
    network: ipnet::IpNet,
    subnet: ipnet::IpNet,
) -> Result<Option<crate::masq::Keeper>, Error> {
    let t = config.traffic;
    if !t.any() {
        return Ok(None);
    }
    Ok(Some(crate::masq::Keeper::start(
        crate::masq::Plan {
            network,
            subnet,
            masquerade: t.ip_masq,
            random_fully: t.random_fully,
            forward: t.forward_rules,
            nftables: t.nftables,
        },
        t.resync,
    )?))
}

/// The node is ready: tells the pods' network plugin, as flanneld does. A failure stops the
/// node when `required`, and is a warning otherwise.
/// Writes the subnet file; returns the text written, `None` when it was not (a failure is an
/// error when `required`, a warning otherwise).
fn write_subnet_file_step(
    config: &NodeConfig,
    mtu: u32,
    required: bool,
) -> Result<Option<String>, Error> {
    let mut overlays = vec![(config.network, config.subnet)];
    overlays.extend(config.ipv6.map(|v6| (v6.network, v6.subnet)));
    if let Err(e) = write_subnet_file(&config.subnet_file, &overlays, mtu, config.traffic.ip_masq) {
        let what = format!("write the subnet file {}", config.subnet_file.display());
        if required {
            return Err(Error::Io { what, source: e });
        }
        tracing::warn!("cannot {what}: {e}");
        return Ok(None);
    }
    Ok(Some(subnet_file_text(
        &overlays,
        mtu,
        config.traffic.ip_masq,
    )))
}

/// What the node runs, settled by setup: logged once, shown by `/status` and the
/// `fustian_info` gauge.
struct Facts<'a> {
    config: &'a NodeConfig,
    device: &'a Device,
    encap: Encap,
    backend: Backend,
    why: &'a str,
    offloads: Offloads,
    /// When the node started, in seconds since the Unix epoch.
    started: u64,
}

impl Facts<'_> {
    fn listen(&self) -> SocketAddr {
        SocketAddr::new(self.config.public_ip, self.config.port)
    }

    /// The IPv6 underlay address and port beside an IPv4 one, when there is one.
    fn listen6(&self) -> Option<SocketAddr> {
        self.config
            .public_ipv6
            .map(|ip| SocketAddr::new(ip.into(), self.config.port))
    }

    /// Logs the "node up" line.
    fn log_node_up(&self) {
        tracing::info!(
            tun = %self.device.name,
            created = self.device.created,
            mtu = self.device.mtu,
            subnet = %self.config.subnet,
            network = %self.config.network,
            ipv6_subnet = ?self.config.ipv6.map(|v6| v6.subnet),
            listen = %self.listen(),
            listen6 = ?self.listen6(),
            backend = self.encap.name(),
            io = self.backend.name(),
            io_reason = %self.why,
            offload = %self.offloads.describe(),
            workers = self.device.queues.len(),
            peers = self.config.peers.len(),
            "node up"
        );
    }

    /// `/status`'s fixed fields.
    fn status_head(&self) -> serde_json::Value {
        let vxlan = match self.encap {
            Encap::Vxlan(p) => Some(p),
            Encap::Flannel => None,
        };
        serde_json::json!({
            "tun": self.device.name,
            "mtu": self.device.mtu,
            "network": self.config.network.to_string(),
            "subnet": self.config.subnet.to_string(),
            "ipv6_network": self.config.ipv6.map(|v6| v6.network.to_string()),
            "ipv6_subnet": self.config.ipv6.map(|v6| v6.subnet.to_string()),
            "listen": self.listen().to_string(),
            "listen6": self.listen6().map(|a| a.to_string()),
            "backend": self.encap.name(),
            "vni": vxlan.map(|p| p.vni),
            "vtep_mac": vxlan.map(|p| p.local_mac.to_string()),
            "io": self.backend.name(),
            "io_reason": self.why,
            "offloads": self.offloads.describe(),
            "workers": self.device.queues.len(),
            "subnet_file": self.config.subnet_file.to_string_lossy(),
            // Which run of the node this is: a restart changes both.
            "pid": std::process::id(),
            "started": self.started,
        })
    }

    /// The `fustian_info` and `fustian_start_time_seconds` gauges, in the Prometheus text
    /// format.
    fn info_gauge(&self) -> String {
        let ipv6 = self
            .config
            .ipv6
            .map(|v6| format!(",ipv6_subnet=\"{}\"", v6.subnet))
            .unwrap_or_default();
        format!(
            "# TYPE fustian_info gauge\nfustian_info{{backend=\"{}\",io=\"{}\",offload=\"{}\",\
             tun=\"{}\",subnet=\"{}\"{ipv6}}} 1\n\
             # TYPE fustian_start_time_seconds gauge\nfustian_start_time_seconds {}\n",
            self.encap.name(),
            self.backend.name(),
            self.offloads.describe(),
            crate::metrics::label_value(&self.device.name),
            self.config.subnet,
            self.started,
        )
    }
}

/// The masquerade keeper's counters, as `(name, value)` pairs.
type MasqCounters = dyn Fn() -> Vec<(String, u64)> + Send + Sync;

/// The masquerade keepers' counters (IPv4's and, on a dual-stack node, IPv6's), summed by
/// name.
fn masq_counters(
    v4: Option<&crate::masq::Keeper>,
    v6: Option<&crate::masq::Keeper>,
) -> Option<Box<MasqCounters>> {
    let parts: Vec<_> = [v4, v6]
        .into_iter()
        .flatten()
        .map(|k| k.counters())
        .collect();
    if parts.is_empty() {
        return None;
    }
    Some(Box::new(move || {
        let mut sum: Vec<(String, u64)> = Vec::new();
        for (name, v) in parts.iter().flat_map(|f| f()) {
            match sum.iter_mut().find(|(n, _)| *n == name) {
                Some((_, total)) => *total = total.wrapping_add(v),
                None => sum.push((name, v)),
            }
        }
        sum
    }))
}

/// What the node shows of itself: everything `/metrics`, `/status` and the stats file are
/// built from, read on whichever thread renders.
struct NodeView {
    /// `/status`'s fixed fields.
    head: serde_json::Value,
    /// The `fustian_info` gauge.
    info: String,
    metrics: Arc<Metrics>,
    table: Arc<Table>,
    /// The control sources' counters.
    sources: Vec<Arc<dyn SourceMetrics>>,
    masq: Option<Box<MasqCounters>>,
    /// The workers' recent drops.
    trace: Arc<crate::trace::Hub>,
    /// The TUN device's name, for its own drop counters.
    tun: String,
    /// The workers' sockets (their inodes), for the kernel's drops at them.
    sockets: Vec<u64>,
}

impl NodeView {
    /// The TUN device's own drop counters (none when they cannot be read: the device is
    /// gone, say, during shutdown).
    fn device_drops(&self) -> impl Iterator<Item = (&'static str, u64)> {
        crate::tun::stats::device_drops(&self.tun)
            .ok()
            .into_iter()
            .flat_map(crate::tun::stats::DeviceDrops::named)
            .chain([
                ("udp_socket_drops", UdpSocket::drops(&self.sockets)),
                ("log_lines_dropped", crate::logging::dropped()),
            ])
    }

    /// The counters in the Prometheus text format: the workers' totals, the table, the
    /// control sources', the masquerade keeper's, and the per-peer counters.
    fn render_prometheus(&self) -> String {
        use std::fmt::Write as _;
        let snap = self.table.load();
        let mut text = self.metrics.render_prometheus();
        let _ = write!(
            text,
            "# TYPE fustian_table_generation gauge\nfustian_table_generation {}\n\
             # TYPE fustian_table_peers gauge\nfustian_table_peers {}\n",
            snap.generation(),
            snap.peers().len(),
        );
        for source in &self.sources {
            text.push_str(&source.render_prometheus());
        }
        for (name, v) in self.device_drops() {
            let _ = write!(text, "# TYPE fustian_{name} counter\nfustian_{name} {v}\n");
        }
        text.push_str(&self.info);
        let totals = peer_totals(&snap);
        let rows: [(&str, PeerField); 4] = [
            ("peer_tx_packets", |t| t.tx_packets),
            ("peer_tx_bytes", |t| t.tx_bytes),
            ("peer_rx_packets", |t| t.rx_packets),
            ("peer_rx_bytes", |t| t.rx_bytes),
        ];
        for (name, get) in rows {
            let _ = writeln!(text, "# TYPE fustian_{name} counter");
            for (p, t) in snap.peers().iter().zip(&totals) {
                let _ = writeln!(
                    text,
                    "fustian_{name}{{subnet=\"{}\",endpoint=\"{}\"}} {}",
                    p.subnet,
                    p.endpoint,
                    get(t)
                );
            }
        }
        if let Some(masq) = &self.masq {
            for (name, v) in masq() {
                let _ = write!(text, "# TYPE fustian_{name} counter\nfustian_{name} {v}\n");
            }
        }
        text
    }

    /// `/status`: the fixed fields, the table with each peer's counters, and every counter
    /// by name (the workers' totals, the table's, the control sources' and the masquerade
    /// keeper's).
    fn status_json(&self) -> serde_json::Value {
        let snap = self.table.load();
        let totals = peer_totals(&snap);
        let peers: Vec<serde_json::Value> = snap
            .peers()
            .iter()
            .zip(&totals)
            .map(|(p, t)| {
                serde_json::json!({
                    "subnet": p.subnet.to_string(),
                    "endpoint": p.endpoint.to_string(),
                    "vtep_mac": p.vtep_mac.map(|m| m.to_string()),
                    "tx_packets": t.tx_packets,
                    "tx_bytes": t.tx_bytes,
                    "rx_packets": t.rx_packets,
                    "rx_bytes": t.rx_bytes,
                })
            })
            .collect();
        let mut counters = serde_json::Map::new();
        let table = [
            ("table_generation".to_owned(), snap.generation()),
            ("table_peers".to_owned(), snap.peers().len() as u64),
        ];
        let sources = self.sources.iter().flat_map(|s| s.totals());
        let masq = self.masq.iter().flat_map(|m| m());
        let device = self.device_drops().map(|(name, v)| (name.to_owned(), v));
        for (name, value) in self
            .metrics
            .totals()
            .named()
            .into_iter()
            .chain(table)
            .chain(device)
            .chain(sources)
            .chain(masq)
        {
            counters.insert(name, value.into());
        }
        let mut v = self.head.clone();
        v["table"] = serde_json::json!({"generation": snap.generation(), "peers": peers});
        v["counters"] = counters.into();
        v["recent_drops"] = crate::trace::recent_json(&self.trace.recent());
        v
    }
}

/// Reads one of a peer's summed counters.
type PeerField = fn(&PeerTotals) -> u64;

/// Every peer's counters, summed over the workers, in the snapshot's order.
fn peer_totals(snap: &Snapshot) -> Vec<PeerTotals> {
    (0..snap.peers().len())
        .map(|i| {
            u32::try_from(i)
                .ok()
                .and_then(|i| snap.peer_stats(i))
                .map(crate::table::PeerStats::totals)
                .unwrap_or_default()
        })
        .collect()
}

/// Gives the HTTP endpoint its `/metrics` and `/status` renderers (it is marked ready once the
/// workers run, by [`Readiness`]).
fn serve_status(status: &crate::http::Status, view: &Arc<NodeView>) {
    let (metrics, json) = (Arc::clone(view), Arc::clone(view));
    status.set_renderers(
        Box::new(move || metrics.render_prometheus()),
        Box::new(move || json.status_json()),
    );
}

/// How often [`Readiness`] looks again.
const READY_CHECK_EVERY: Duration = Duration::from_secs(1);

/// What `/readyz` promises, looked at again while the node runs: the TUN device is there and
/// up, the network routes into it, and the subnet file (which the CNI plugin reads for every
/// new pod) is in place. An operator's `ip link set flannel0 down` (which also takes the
/// kernel's route), a deleted route or subnet file makes the node not ready, with the reason,
/// until it is back; the node does not put them back itself (its privileges are dropped).
struct Readiness {
    nl: Option<Netlink>,
    tun: String,
    index: Option<u32>,
    networks: Vec<ipnet::IpNet>,
    /// The subnet file and the text written to it, when this node wrote one.
    subnet_file: Option<(std::path::PathBuf, String)>,
    /// The underlay addresses the node's sockets are bound to.
    underlay: Vec<std::net::IpAddr>,
    /// The control sources, which may know why the node is not ready (a lease expired).
    sources: Vec<Arc<dyn SourceMetrics>>,
    last: Option<Instant>,
    /// What the problem last reported is about (logged once per change of subject, not each
    /// time its text changes: a lease's "expired N s ago" counts up every second).
    said: Option<String>,
}

/// Why the node is not ready: `about` names the check that failed (stable while the same
/// problem lasts), `why` is the text `/readyz` shows (it may change, a time counting up).
struct Problem {
    about: String,
    why: String,
}

impl Problem {
    /// A problem whose text does not change while it lasts.
    fn fixed(why: String) -> Self {
        Self {
            about: why.clone(),
            why,
        }
    }
}

impl Readiness {
    fn new(
        config: &NodeConfig,
        tun: &str,
        subnet_file: Option<String>,
        sources: Vec<Arc<dyn SourceMetrics>>,
    ) -> Self {
        Self {
            nl: Netlink::open().ok(),
            tun: tun.to_owned(),
            index: if_index(tun),
            networks: config.networks().iter().map(ipnet::IpNet::trunc).collect(),
            subnet_file: subnet_file.map(|text| (config.subnet_file.clone(), text)),
            underlay: std::iter::once(config.public_ip)
                .chain(config.public_ipv6.map(std::net::IpAddr::V6))
                .collect(),
            sources,
            last: None,
            said: None,
        }
    }

    /// Returns what is wrong, if anything (a netlink error is not held against the node).
    fn problem(&mut self) -> Option<Problem> {
        self.check()
            .map(Problem::fixed)
            .or_else(|| self.source_problem())
    }

    /// The control sources' reason, if one has any (a lease expired): named by its source.
    fn source_problem(&self) -> Option<Problem> {
        self.sources.iter().enumerate().find_map(|(i, s)| {
            s.not_ready().map(|why| Problem {
                about: format!("control source {i}"),
                why,
            })
        })
    }

    /// The device, route, underlay and subnet file checks.
    fn check(&mut self) -> Option<String> {
        let nl = self.nl.as_mut()?;
        let index = self.index?;
        match nl.link_up(index) {
            Ok(None) => return Some(format!("TUN device {} is gone", self.tun)),
            Ok(Some(false)) => {
                return Some(format!(
                    "TUN device {} is down (ip link set {} up, then restore the route or \
                     restart the node)",
                    self.tun, self.tun
                ));
            }
            Ok(Some(true)) | Err(_) => {}
        }
        for &network in &self.networks {
            if let Ok(oifs) = nl.route_oifs(network)
                && !oifs.contains(&Some(index))
            {
                return Some(format!(
                    "the route to {network} through {} is gone (a restart of the node adds it)",
                    self.tun
                ));
            }
        }
        for &ip in &self.underlay {
            match nl.index_holding(ip) {
                Ok(None) => {
                    return Some(format!(
                        "the underlay address {ip} is gone from this host (the node's sockets \
                         are bound to it)"
                    ));
                }
                Ok(Some(i)) if nl.link_up(i).is_ok_and(|up| up == Some(false)) => {
                    return Some(format!("the underlay interface holding {ip} is down"));
                }
                Ok(Some(_)) | Err(_) => {}
            }
        }
        if let Some((path, written)) = &self.subnet_file {
            // Only what the node can tell: a file it may no longer look at (`--user`, a
            // directory only root reads) is not held against it.
            match std::fs::metadata(path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Some(format!(
                        "the subnet file {} is gone (a restart of the node writes it)",
                        path.display()
                    ));
                }
                Ok(meta) if !meta.is_file() => {
                    return Some(format!(
                        "the subnet file {} is not a regular file (a restart of the node \
                         writes it)",
                        path.display()
                    ));
                }
                Ok(_) => return subnet_file_mismatch(path, written),
                Err(_) => {}
            }
        }
        None
    }

    /// Looks again when due and marks `status` ready or not, logging each change.
    fn update(&mut self, status: &crate::http::Status) {
        if self.last.is_some_and(|t| t.elapsed() < READY_CHECK_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let problem = self.problem();
        match announce(&mut self.said, problem.as_ref()) {
            Some(Ok(line)) => tracing::warn!("{line}"),
            Some(Err(line)) => tracing::info!("{line}"),
            None => {}
        }
        match problem {
            Some(p) => status.set_not_ready(p.why),
            None => status.set_ready(),
        }
    }
}

/// The longest subnet file readiness reads: far more than any the node writes.
const SUBNET_FILE_MAX: u64 = 64 << 10;

/// Says how the subnet file at `path` departs from the `written` text (its `KEY=VALUE`
/// lines), read as the pods' network plugin reads it ([`crate::control::dotenv::value`]): a
/// key gone or holding another value, or a file grown past [`SUBNET_FILE_MAX`]. A file that
/// cannot be read (`--user`, a directory only root reads) is not held against the node, and
/// the file is never rewritten (a restart of the node writes it).
fn subnet_file_mismatch(path: &std::path::Path, written: &str) -> Option<String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let shown = || crate::sys::printable(&path.display().to_string()).into_owned();
    // Not blocking on a FIFO swapped in since the look at its type.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .ok()?;
    let mut bytes = Vec::new();
    file.take(SUBNET_FILE_MAX + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    if bytes.len() as u64 > SUBNET_FILE_MAX {
        return Some(format!(
            "the subnet file {} is longer than {SUBNET_FILE_MAX} bytes, not what the node \
             wrote (a restart of the node writes it)",
            shown()
        ));
    }
    let text = String::from_utf8_lossy(&bytes);
    for line in written.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match crate::control::dotenv::value(&text, key) {
            Some(found) if found == value => {}
            Some(found) => {
                return Some(format!(
                    "the subnet file {} says {key}={}, but the node wrote {key}={value} (a \
                     restart of the node writes it)",
                    shown(),
                    crate::sys::printable(&found)
                ));
            }
            None => {
                return Some(format!(
                    "the subnet file {} has no {key}; the node wrote {key}={value} (a restart \
                     of the node writes it)",
                    shown()
                ));
            }
        }
    }
    None
}

/// Returns the line to log for `problem` given what was `said` last (a problem as `Ok`, a
/// recovery as `Err`), and remembers it: a line per change of subject, none while the same
/// problem lasts with a changing text.
fn announce(
    said: &mut Option<String>,
    problem: Option<&Problem>,
) -> Option<Result<String, String>> {
    let about = problem.map(|p| p.about.clone());
    if about == *said {
        return None;
    }
    let line = match problem {
        Some(p) => Some(Ok(format!("not ready: {}", p.why))),
        None => Some(Err("ready again".to_owned())),
    };
    *said = about;
    line
}

/// Creates the trace socket while the node still holds its privileges (it lives in a
/// root-only directory); it is served once they are dropped.
fn bind_trace_socket(
    opts: &RunOptions,
    tun: &str,
) -> Result<Option<crate::trace::server::TraceServer>, Error> {
    use crate::trace::server::{TraceServer, default_path};
    let path = opts
        .trace_socket
        .clone()
        .unwrap_or_else(|| default_path(tun));
    match TraceServer::bind(&path) {
        Ok(server) => {
            tracing::info!(socket = %path.display(), "serving fustian trace");
            Ok(Some(server))
        }
        Err(e) if opts.trace_socket.is_none() => {
            tracing::warn!("no trace socket: {e}");
            Ok(None)
        }
        Err(e) => Err(Error::Io {
            what: "create the trace socket".into(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

/// Warns when the bridge netfilter sysctls are missing (the `br_netfilter` module is not
/// loaded) for a family the overlay carries: pods on one bridge (`cni0`) then talk past
/// iptables, so Services and NetworkPolicy rules never see that traffic. flanneld refuses to
/// start there; fustian says so and runs on, since the overlay itself does not need it, and
/// `fustian doctor` reports the same (`sysctl.br_netfilter`).
fn warn_without_br_netfilter(config: &NodeConfig) {
    let v4 = config.network.addr().is_ipv4();
    let v6 = config.network.addr().is_ipv6() || config.ipv6.is_some();
    for (carried, key) in [
        (v4, "net/bridge/bridge-nf-call-iptables"),
        (v6, "net/bridge/bridge-nf-call-ip6tables"),
    ] {
        let path = std::path::Path::new("/proc/sys").join(key);
        if carried && !path.exists() {
            tracing::warn!(
                "{} is missing (the br_netfilter module is not loaded): traffic between pods on \
                 one bridge bypasses iptables, so Services and NetworkPolicy miss it; \
                 `modprobe br_netfilter` loads it (flanneld refuses to start without it)",
                path.display()
            );
        }
    }
}

/// Setup is done: nothing from here on needs a privilege. Drops them before any worker
/// exists, so every thread runs without them.
///
/// Threads already running (the log writer, the HTTP endpoint, an etcd client's resolver
/// threads) each drop their own, as credentials are per thread: see
/// [`crate::sys::restrict_all_threads`]. Each thread also loses every way back: the bounding
/// set, `SECBIT_NOROOT` (locked) and `no_new_privs`, so a program run as uid 0 without
/// capabilities does not get them back at `execve`. The masquerade threads keep their network
/// capabilities and restrict themselves ([`crate::sys::keep_net_caps`]). With `--user` the
/// sets stay until the switch of user clears them, which the locked securebits keep in force.
fn settle_privileges(opts: &RunOptions) -> Result<(), Error> {
    use crate::sys::Keep;
    let restrict = |keep: Keep| {
        let short = crate::sys::restrict_all_threads(keep).map_err(|source| Error::Io {
            what: "drop privileges on every thread".into(),
            source,
        })?;
        if !short.is_none() {
            tracing::warn!(
                securebits = !short.securebits,
                bounding_set_emptied = !short.bounding,
                "without CAP_SETPCAP the securebits or the bounding set stay as they are; \
                 no_new_privs still keeps a program the node runs from gaining privileges"
            );
        }
        Ok::<_, Error>(())
    };
    if let Some(user) = &opts.user {
        restrict(Keep::Sets)?;
        crate::sys::switch_user(user).map_err(|source| Error::Io {
            what: format!("switch to user {user}"),
            source,
        })?;
        tracing::info!(user = %user, "running as an unprivileged user");
    } else if !opts.keep_privileges {
        restrict(Keep::Nothing)?;
        tracing::info!("all capabilities dropped after setup");
        if crate::sys::euid() == 0 {
            tracing::warn!(
                "running as root without capabilities: the node can still write any file \
                 root owns; --user runs it as an unprivileged user"
            );
        }
    }
    crate::logging::privileges_settled();
    if let Some(status) = &opts.status {
        status.privileges_settled();
    }
    Ok(())
}

/// Starts each control source on its own thread (`fustian-<name>`).
fn spawn_controls(
    controls: Vec<ControlPlane>,
    table: &Arc<Table>,
    stop: &Arc<AtomicBool>,
) -> Result<Vec<JoinHandle<()>>, Error> {
    controls
        .into_iter()
        .map(|control| {
            let (table, stop) = (Arc::clone(table), Arc::clone(stop));
            let run = control.run;
            std::thread::Builder::new()
                .name(format!("fustian-{}", control.name))
                .spawn(move || run(table, stop))
                .map_err(|source| Error::Io {
                    what: format!("spawn the {} control thread", control.name),
                    source,
                })
        })
        .collect()
}

/// What every worker shares.
struct WorkerShared {
    tx_pool: Arc<Vec<UdpSocket>>,
    tx_pool6: Arc<Vec<UdpSocket>>,
    table: Arc<Table>,
    metrics: Arc<Metrics>,
    fwd: Forwarding,
    stop: Arc<AtomicBool>,
    multishot: bool,
    busy_poll: Duration,
    offloads: Offloads,
    tun_mtu: usize,
    trace: Arc<crate::trace::Hub>,
}

/// Starts one worker per TUN queue and socket (and IPv6 underlay socket, when there are any).
fn spawn_workers(
    backend: Backend,
    queues: Vec<Tun>,
    sockets: Vec<UdpSocket>,
    sockets6: Vec<UdpSocket>,
    shared: &WorkerShared,
) -> Result<Vec<JoinHandle<std::io::Result<()>>>, Error> {
    let mut handles = Vec::with_capacity(queues.len());
    let mut sockets6 = sockets6.into_iter();
    for (id, (tun, udp)) in queues.into_iter().zip(sockets).enumerate() {
        let worker = Worker {
            id,
            tun,
            udp,
            udp6: sockets6.next(),
            tx_pool: Arc::clone(&shared.tx_pool),
            tx_pool6: Arc::clone(&shared.tx_pool6),
            table: Arc::clone(&shared.table),
            metrics: Arc::clone(&shared.metrics),
            fwd: shared.fwd,
            stop: Arc::clone(&shared.stop),
            multishot: shared.multishot,
            offloads: shared.offloads,
            busy_poll: shared.busy_poll,
            tun_mtu: shared.tun_mtu,
            trace: Arc::clone(&shared.trace),
        };
        let handle = std::thread::Builder::new()
            .name(format!("fustian-w{id}"))
            .spawn(move || event::run(backend, worker))
            .map_err(|source| Error::Io {
                what: "spawn worker thread".into(),
                source,
            })?;
        handles.push(handle);
    }
    Ok(handles)
}

/// Before a `vxlan` node binds its port: flanneld's own VTEPs (`flannel.<VNI>`, and
/// `flannel-v6.<VNI>` of a dual-stack flanneld: kernel VXLAN devices with this network's VNI
/// on this port), which flanneld leaves behind when it stops, holds the port and routes every peer's subnet past the TUN device. The node takes
/// flanneld's place, so it deletes that device (its routes and neighbour entries go with it)
/// and says so. Another kernel VXLAN device on the port is left alone and named in the error,
/// with the command that removes it.
fn retire_flanneld_vtep(config: &NodeConfig) -> Result<(), Error> {
    let BackendConfig::Vxlan { vni, .. } = config.backend else {
        return Ok(());
    };
    let listed = std::process::Command::new("ip")
        .args(["-d", "-j", "link", "show", "type", "vxlan"])
        .stderr(std::process::Stdio::null())
        .output();
    // Without `ip` (or its JSON), the bind below reports a taken port as before.
    let Some(listed) = listed.ok().filter(|o| o.status.success()) else {
        return Ok(());
    };
    let port = u64::from(config.port);
    let listed: serde_json::Value =
        serde_json::from_slice(&listed.stdout).unwrap_or(serde_json::Value::Null);
    let retired = [format!("flannel.{vni}"), format!("flannel-v6.{vni}")];
    for vtep in crate::iface::kernel_vteps(&listed) {
        if vtep.port != Some(port) {
            continue;
        }
        if !retired.contains(&vtep.name) || vtep.vni != Some(u64::from(vni)) {
            return Err(Error::Underlay(format!(
                "the kernel VXLAN device {} holds UDP port {port}; remove it (`ip link del {}`) \
                 or give this node another port",
                vtep.name, vtep.name
            )));
        }
        let deleted = std::process::Command::new("ip")
            .args(["link", "del", vtep.name.as_str()])
            .status();
        match deleted {
            Ok(s) if s.success() => tracing::warn!(
                device = %vtep.name,
                vni,
                port,
                "deleted flanneld's VXLAN device, which held this node's port; fustian now \
                 carries its traffic"
            ),
            _ => {
                return Err(Error::Underlay(format!(
                    "flanneld's VXLAN device {} holds UDP port {port} and could not be deleted; \
                     run `ip link del {}`",
                    vtep.name, vtep.name
                )));
            }
        }
    }
    Ok(())
}

/// Tells systemd the node's state (`sd_notify`) when it runs the node as a service with
/// `NOTIFY_SOCKET` set: one datagram to that socket (a path, or an abstract name after `@`).
/// Nothing happens without the variable; a failure is logged, never fatal.
pub fn notify_systemd(state: &str) {
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET").filter(|p| !p.is_empty()) else {
        return;
    };
    let bytes = path.as_bytes();
    let sent = (|| {
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(&path)?,
        };
        UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)
    })();
    match sent {
        Ok(_) => tracing::debug!(state, "told systemd"),
        Err(e) => tracing::warn!(
            state,
            socket = %path.to_string_lossy(),
            "cannot tell systemd the node's state: {e}"
        ),
    }
}

/// Writes the stats file, when there is one. A failure is logged when it starts or changes,
/// and the recovery once (`failing` holds the last error), not every 250 ms.
fn write_stats(opts: &RunOptions, view: &NodeView, failing: &mut Option<String>) {
    let Some(path) = &opts.stats_file else {
        return;
    };
    match write_atomically(path, view.render_prometheus().as_bytes()) {
        Err(e) => {
            let e = e.to_string();
            if failing.as_deref() != Some(e.as_str()) {
                tracing::warn!("cannot write stats file {}: {e}", path.display());
                *failing = Some(e);
            }
        }
        Ok(()) => {
            if failing.take().is_some() {
                tracing::info!("stats file {} written again", path.display());
            }
        }
    }
}

/// Waits until `stop` is set or a worker stops, writing the stats file every 250 ms.
fn supervise<T>(
    opts: &RunOptions,
    stop: &AtomicBool,
    handles: &[JoinHandle<T>],
    control_threads: &mut Vec<JoinHandle<()>>,
    view: &NodeView,
    readiness: &mut Readiness,
) {
    let mut last_stats: Option<Instant> = None;
    let mut failing: Option<String> = None;
    while !stop.load(Ordering::Relaxed) && !handles.iter().any(JoinHandle::is_finished) {
        if let Some(why) = control_failed(control_threads) {
            tracing::error!("{why}; stopping the node");
            crate::control::stop_node(why, stop);
            break;
        }
        if let Some(status) = &opts.status {
            readiness.update(status);
        }
        if let Some(hup) = &opts.sighup
            && hup.swap(false, Ordering::Relaxed)
        {
            tracing::info!(
                "SIGHUP: nothing to reload (no --config file; the peers come from the flags or etcd)"
            );
        }
        if last_stats.is_none_or(|t| t.elapsed() >= STATS_EVERY) {
            write_stats(opts, view, &mut failing);
            last_stats = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Joins the control threads that ended, and returns why the node must stop when one ended
/// by a panic: a control source that is gone leaves the node forwarding on a table nobody
/// updates, while `/readyz` would still say ready. One that returned (a source with nothing
/// more to do) is let go.
fn control_failed(control_threads: &mut Vec<JoinHandle<()>>) -> Option<String> {
    let mut why = None;
    let mut running = Vec::with_capacity(control_threads.len());
    for t in control_threads.drain(..) {
        if !t.is_finished() {
            running.push(t);
            continue;
        }
        let name = t.thread().name().unwrap_or("control").to_owned();
        if let Err(panic) = t.join() {
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            why.get_or_insert(format!(
                "the {name} thread stopped: {}",
                crate::sys::one_line(&text)
            ));
        }
    }
    *control_threads = running;
    why
}

/// Stops and joins the workers (the first failure is the result), marks the endpoint not
/// ready, joins the control sources, writes the last stats and removes the masquerade rules.
fn teardown(
    opts: &RunOptions,
    stop: &AtomicBool,
    handles: Vec<JoinHandle<std::io::Result<()>>>,
    control_threads: Vec<JoinHandle<()>>,
    view: &NodeView,
    masq: Option<crate::masq::Keeper>,
    created: bool,
) -> Result<(), Error> {
    stop.store(true, Ordering::Relaxed);
    let mut result = Ok(());
    for (id, handle) in handles.into_iter().enumerate() {
        let r = match handle.join() {
            Ok(r) => r.map_err(|source| Error::Worker { id, source }),
            Err(_) => Err(Error::Worker {
                id,
                source: std::io::Error::other("worker panicked"),
            }),
        };
        if result.is_ok() {
            result = r;
        }
    }
    if let Some(status) = &opts.status {
        status.set_not_ready("stopping");
        status.healthy.store(false, Ordering::Relaxed);
    }
    for t in control_threads {
        let _ = t.join();
    }
    write_stats(opts, view, &mut None);
    drop(masq);
    tracing::info!(
        removed = created,
        "node down; the TUN device goes away with its last fd when this process created it"
    );
    result
}

pub use crate::sys::write_atomically;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::file::FileCounters;

    /// A problem is logged when it starts and when it ends, not each time its text changes
    /// (an expired lease's age counts up every second); another problem is logged anew.
    #[test]
    fn readiness_logs_a_line_per_change_of_problem() {
        let expired = |secs: u32| Problem {
            about: "control source 0".into(),
            why: format!("the subnet lease expired {secs} s ago"),
        };
        let mut said = None;
        assert_eq!(announce(&mut said, None), None, "ready from the start");
        assert_eq!(
            announce(&mut said, Some(&expired(0))),
            Some(Ok("not ready: the subnet lease expired 0 s ago".into()))
        );
        for secs in 1..5 {
            assert_eq!(announce(&mut said, Some(&expired(secs))), None, "{secs} s");
        }
        let down = Problem::fixed("TUN device flannel0 is down".into());
        assert_eq!(
            announce(&mut said, Some(&down)),
            Some(Ok("not ready: TUN device flannel0 is down".into()))
        );
        assert_eq!(announce(&mut said, Some(&down)), None);
        assert_eq!(announce(&mut said, None), Some(Err("ready again".into())));
        assert_eq!(announce(&mut said, None), None);
        assert!(
            announce(&mut said, Some(&expired(9))).is_some(),
            "expired again"
        );
    }

    /// Readiness holds a subnet file that no longer says what the node wrote against it:
    /// another network, a key gone; comments and quotes the plugin reads alike are fine.
    #[test]
    fn a_subnet_file_saying_otherwise_is_a_problem() {
        let dir = std::env::temp_dir().join(format!("fustian-readiness-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("subnet.env");
        let net: ipnet::IpNet = "10.244.0.0/16".parse().expect("net");
        let sub: ipnet::IpNet = "10.244.1.0/24".parse().expect("subnet");
        let written = subnet_file_text(&[(net, sub)], 1472, false);
        std::fs::write(&path, &written).expect("write");
        assert_eq!(subnet_file_mismatch(&path, &written), None);
        std::fs::write(
            &path,
            format!(
                "# kept by hand\n{}",
                written.replace("=10.244.0.0/16", "=\"10.244.0.0/16\"")
            ),
        )
        .expect("write");
        assert_eq!(subnet_file_mismatch(&path, &written), None);
        std::fs::write(&path, "FLANNEL_NETWORK=1.2.3.0/24\n").expect("write");
        let why = subnet_file_mismatch(&path, &written).expect("another network");
        assert!(
            why.contains("says FLANNEL_NETWORK=1.2.3.0/24")
                && why.contains("wrote FLANNEL_NETWORK=10.244.0.0/16")
                && why.contains("subnet.env"),
            "{why}"
        );
        std::fs::write(&path, written.replace("FLANNEL_MTU=1472\n", "")).expect("write");
        let why = subnet_file_mismatch(&path, &written).expect("a key gone");
        assert!(why.contains("has no FLANNEL_MTU"), "{why}");
        let long = "#".repeat(usize::try_from(SUBNET_FILE_MAX).expect("size") + 1);
        std::fs::write(&path, long).expect("write");
        let why = subnet_file_mismatch(&path, &written).expect("too long");
        assert!(why.contains("longer than"), "{why}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn kernel_vteps_are_read_from_ip_s_json() {
        let json = br#"[{"ifindex":7,"ifname":"flannel.1","flags":["UP"],"linkinfo":{"info_kind":"vxlan","info_data":{"id":1,"local":"192.0.2.1","port":8472,"learning":false}}},
                        {"ifindex":8,"ifname":"vx0","linkinfo":{"info_kind":"vxlan","info_data":{"id":42}}}]"#;
        let parse = |b: &[u8]| {
            crate::iface::kernel_vteps(
                &serde_json::from_slice(b).unwrap_or(serde_json::Value::Null),
            )
        };
        assert_eq!(
            parse(json),
            [
                crate::iface::KernelVtep {
                    name: "flannel.1".into(),
                    vni: Some(1),
                    port: Some(8472)
                },
                crate::iface::KernelVtep {
                    name: "vx0".into(),
                    vni: Some(42),
                    port: None
                },
            ]
        );
        for junk in [&b""[..], b"{}", b"[1,2]", b"[{\"ifname\":3}]", b"\xff"] {
            assert!(parse(junk).is_empty());
        }
    }

    fn view() -> NodeView {
        let local = "10.244.1.0/24".parse().expect("literal");
        let peer = crate::table::Peer {
            subnet: "10.244.2.0/24".parse().expect("literal"),
            endpoint: "192.0.2.2:8285".parse().expect("literal"),
            vtep_mac: None,
        };
        let table = Arc::new(Table::new(
            Snapshot::new(vec![local], vec![peer]).expect("valid"),
            2,
        ));
        let metrics = Arc::new(Metrics::new(2));
        crate::metrics::Counters::add(&metrics.worker(1).tx_packets, 5);
        let stats = table.load();
        let stats = stats.peer_stats(0).expect("peer");
        stats.add_tx(0, 2, 200);
        stats.add_tx(1, 3, 300);
        stats.add_rx(1, 1, 50);
        let file = FileCounters::default();
        file.reloads.fetch_add(4, Ordering::Relaxed);
        NodeView {
            head: serde_json::json!({"subnet": "10.244.1.0/24"}),
            info: "# TYPE fustian_info gauge\nfustian_info{backend=\"udp\"} 1\n".to_owned(),
            metrics,
            table,
            sources: vec![Arc::new(file)],
            masq: Some(Box::new(|| vec![("iptables_repairs".to_owned(), 1)])),
            trace: Arc::new(crate::trace::Hub::new(2)),
            // Loopback is in every namespace: its counters stand in for the TUN device's.
            tun: "lo".to_owned(),
            sockets: Vec::new(),
        }
    }

    #[test]
    fn status_is_built_from_the_typed_counters() {
        let v = view().status_json();
        assert_eq!(v["subnet"], "10.244.1.0/24");
        let peer = &v["table"]["peers"][0];
        assert_eq!(peer["endpoint"], "192.0.2.2:8285");
        assert_eq!(
            (&peer["tx_packets"], &peer["tx_bytes"], &peer["rx_bytes"]),
            (&5.into(), &500.into(), &50.into())
        );
        let c = &v["counters"];
        assert_eq!(c["tx_packets"], 5);
        assert_eq!(c["drop_no_route"], 0);
        assert_eq!(c["table_generation"], 1);
        assert_eq!(c["table_peers"], 1);
        assert_eq!(c["config_reloads"], 4);
        assert_eq!(c["iptables_repairs"], 1);
        assert!(c["tun_device_tx_dropped"].is_u64(), "{c}");
        assert!(c["tun_device_rx_dropped"].is_u64(), "{c}");
        let names = c.as_object().expect("object");
        assert!(
            names
                .keys()
                .all(|k| !k.contains('{') && !k.starts_with("peer_")),
            "{names:?}"
        );
    }

    #[test]
    fn the_text_carries_every_part_and_the_same_numbers() {
        let view = view();
        let text = view.render_prometheus();
        assert!(text.contains(
            "fustian_peer_tx_bytes{subnet=\"10.244.2.0/24\",endpoint=\"192.0.2.2:8285\"} 500"
        ));
        assert!(text.contains("fustian_info{backend=\"udp\"} 1"));
        // Every counter of /status is in the text under the same name with the same value.
        let parsed = crate::metrics::parse_prometheus(&text);
        let status = view.status_json();
        for (name, value) in status["counters"].as_object().expect("object") {
            assert!(
                parsed
                    .iter()
                    .any(|(k, v)| k == name && Some(*v) == value.as_u64()),
                "{name} {value}"
            );
        }
        // The lab sums counters over rounds and keeps gauges: the text says which is which.
        let counters = crate::metrics::prometheus_counters(&text);
        for name in ["tx_packets", "tun_device_tx_dropped", "peer_tx_bytes"] {
            assert!(counters.contains(name), "{name}: {counters:?}");
        }
        for name in ["table_peers", "table_generation", "info"] {
            assert!(!counters.contains(name), "{name}: {counters:?}");
        }
    }
}
