//! One overlay node: sets up the TUN device, the socket and the table, runs the workers, and
//! takes everything down again when asked to stop.
//!
//! Setup follows flanneld's `udp` backend: find the underlay interface (given, or the one
//! holding the public IP) and its MTU, open the TUN device, give it the first address of this
//! node's subnet as a host address (/32), set the MTU (underlay − overhead unless given), bring
//! it up and route the whole network into it, then bind the UDP socket to the public IP and
//! port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::{BackendConfig, NodeConfig, load_or_create_vtep_mac};
use crate::datapath::Forwarding;
use crate::error::Error;
use crate::event::{self, Worker};
use crate::metrics::Metrics;
use crate::offload::Offloads;
use crate::table::{Snapshot, Table};
use crate::tun::link::Netlink;
use crate::tun::{Tun, TunError, if_index};
use crate::udp::UdpSocket;
use crate::wire::MacAddress;

/// Renders extra metrics for the stats file.
pub type ExtraMetrics = Arc<dyn Fn() -> String + Send + Sync>;

/// Options of a running node that are not part of the overlay configuration.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Write the counters here (Prometheus text format) every 250 ms and on exit.
    pub stats_file: Option<PathBuf>,
    /// Publish this many synthetic table updates per second (adding and removing peers that
    /// carry no traffic), to show that updates do not disturb forwarding. 0: off.
    pub table_churn: u32,
    /// io_uring: use multishot receive with a provided-buffer ring where the kernel has it.
    pub multishot: bool,
    /// Reload the peers from the config file when this flag is set (by SIGHUP).
    pub reload: Option<Reload>,
    /// After setup, switch to this user; otherwise drop every capability (unless
    /// `keep_privileges`).
    pub user: Option<String>,
    /// Keep root's capabilities after setup.
    pub keep_privileges: bool,
    /// More metrics for the stats file (the etcd agent's), in Prometheus text format.
    pub extra_metrics: Option<ExtraMetrics>,
    /// The HTTP endpoint's status, when one is serving (started before the node, so it
    /// answers while the node waits for etcd): the node sets its renderers and marks it ready
    /// once set up.
    pub status: Option<Arc<crate::http::Status>>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("stats_file", &self.stats_file)
            .field("table_churn", &self.table_churn)
            .field("multishot", &self.multishot)
            .field("reload", &self.reload)
            .field("user", &self.user)
            .field("keep_privileges", &self.keep_privileges)
            .field("extra_metrics", &self.extra_metrics.is_some())
            .field("status", &self.status)
            .finish()
    }
}

/// Where a reload reads from: the config file, under the same flags as at start.
#[derive(Debug, Clone)]
pub struct Reload {
    /// The config file.
    pub path: PathBuf,
    /// The flags given at start (they still win over the file).
    pub flags: crate::config::RawNode,
    /// Set by the signal handler; cleared when the reload is done.
    pub requested: Arc<AtomicBool>,
}

/// A control plane that keeps the table up to date: run on its own thread with the table and
/// the stop flag once the node is set up (the etcd agent is one).
pub type ControlPlane = Box<dyn FnOnce(Arc<Table>, Arc<AtomicBool>) + Send>;

/// Writes flanneld's subnet file: the network, this node's subnet (its first address and
/// length), the TUN MTU and whether this node masquerades (`FLANNEL_IPMASQ`), atomically,
/// creating the directory.
///
/// # Errors
///
/// The directory, write or rename error.
pub fn write_subnet_file(
    path: &std::path::Path,
    network: ipnet::IpNet,
    subnet: ipnet::IpNet,
    mtu: u32,
    ipmasq: bool,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let first = match subnet {
        ipnet::IpNet::V4(n) => std::net::IpAddr::V4(std::net::Ipv4Addr::from(
            u32::from(n.network()).saturating_add(1),
        )),
        ipnet::IpNet::V6(n) => std::net::IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(n.network()).saturating_add(1),
        )),
    };
    let text = format!(
        "FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={first}/{}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={ipmasq}\n",
        subnet.prefix_len()
    );
    write_atomically(path, text.as_bytes())
}

/// Sets up the node described by `config` and forwards until `stop` is set.
///
/// # Errors
///
/// Any setup failure, or a worker's event loop failing.
pub fn run(
    config: &NodeConfig,
    opts: &RunOptions,
    stop: &Arc<AtomicBool>,
    control: Option<ControlPlane>,
) -> Result<(), Error> {
    let mut nl = Netlink::open().map_err(|source| Error::Io {
        what: "open a route netlink socket".into(),
        source,
    })?;
    let (iface, underlay_index) = match &config.iface {
        Some(name) => (
            name.clone(),
            if_index(name).ok_or_else(|| Error::Underlay(format!("no interface named {name}")))?,
        ),
        None => {
            let index = nl
                .index_holding(config.public_ip)
                .map_err(|e| Error::Underlay(format!("cannot list addresses: {e}")))?
                .ok_or_else(|| {
                    Error::Underlay(format!(
                        "no interface holds {}; add the address or give --iface",
                        config.public_ip
                    ))
                })?;
            (format!("ifindex {index}"), index)
        }
    };
    let underlay_mtu = nl
        .mtu(underlay_index)
        .map_err(|e| Error::Underlay(format!("cannot read the MTU of {iface}: {e}")))?;
    let overhead = config.overhead();
    let mtu = match config.mtu {
        Some(m) => m,
        None => underlay_mtu.saturating_sub(u32::try_from(overhead).unwrap_or(u32::MAX)),
    };
    // The largest inner packet the path carries: the TUN MTU, unless it was set larger than
    // the underlay allows, in which case bigger packets get "fragmentation needed".
    let path_mtu = underlay_mtu.saturating_sub(u32::try_from(overhead).unwrap_or(u32::MAX));
    let max_inner = mtu.min(path_mtu) as usize;
    if mtu < 68 {
        return Err(Error::Underlay(format!(
            "underlay MTU {underlay_mtu} of {iface} leaves {mtu} bytes after {overhead} bytes of \
             encapsulation; give --mtu"
        )));
    }

    let (mut backend, mut why) = event::choose(config.io).map_err(Error::Underlay)?;
    let want = config
        .threads
        .unwrap_or_else(crate::sys::available_cpus)
        .max(1);
    let (queues, tun_offload) = Tun::open_queues(&config.tun, want, config.offload)?;
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
    // As flanneld's udp backend (`udp_network_amd64.go`): the lease's first address as a host
    // address, so the kernel makes no connected or broadcast route for it, then an explicit
    // route for the whole network once the link is up.
    let tun_addr = config.subnet.network();
    let host_len = if tun_addr.is_ipv4() { 32 } else { 128 };
    nl.add_address(index, tun_addr, host_len)
        .map_err(|e| netlink_err(format!("add address {tun_addr}/{host_len}"), e))?;
    nl.set_mtu_up(index, mtu)
        .map_err(|e| netlink_err(format!("set MTU {mtu} and bring the link up"), e))?;
    nl.add_route(index, config.network.trunc())
        .map_err(|e| netlink_err(format!("add the route {}", config.network.trunc()), e))?;

    let listen = SocketAddr::new(config.public_ip, config.port);
    let sockets = UdpSocket::bind_group(listen, queues.len())?;
    let offloads = if config.offload {
        let gro = sockets.iter().all(|s| s.enable_gro().is_ok());
        Offloads {
            tun: tun_offload.tso,
            tun_uso: tun_offload.uso,
            gso: sockets[0].gso_supported(),
            gro,
        }
    } else {
        Offloads::default()
    };
    // With super-packets a system call moves up to 64 KiB and the ring's batching of small
    // packets matters little; the epoll loop measured ahead there, in throughput and in CPU
    // per Gbit (BENCHMARKS.md), so `auto` takes it.
    if config.io == crate::config::IoChoice::Auto && offloads.tun {
        backend = event::Backend::Epoll;
        why = "auto: offloads in use, where the epoll loop measured ahead".to_owned();
    }
    let (encap, tx_pool) = match config.backend {
        BackendConfig::Udp => (config.encap(MacAddress([0; 6])), Vec::new()),
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
            tracing::info!(
                vtep_mac = %mac,
                source_ports = ?pool.iter().map(|s| s.local_addr().port()).collect::<Vec<_>>(),
                "vxlan endpoint"
            );
            (config.encap(mac), pool)
        }
    };
    let tx_pool = Arc::new(tx_pool);
    let table = Arc::new(Table::new(Snapshot::new(
        vec![config.subnet],
        config.peers.clone(),
    )?));
    let workers = queues.len();
    let metrics = Arc::new(Metrics::new(workers));
    tracing::info!(
        tun = %name,
        created,
        mtu,
        subnet = %config.subnet,
        network = %config.network,
        %listen,
        backend = encap.name(),
        io = backend.name(),
        io_reason = %why,
        offload = %offloads.describe(),
        workers,
        peers = config.peers.len(),
        "node up"
    );

    // flanneld's masquerade and forward rules, kept by a thread that is set up to keep
    // CAP_NET_ADMIN before the privileges are dropped below; removed when `masq` drops.
    let mut masq = match config.traffic {
        t if t.any() => Some(crate::masq::Keeper::start(
            crate::masq::Plan {
                network: config.network,
                subnet: config.subnet,
                masquerade: t.ip_masq,
                random_fully: t.random_fully,
                forward: t.forward_rules,
            },
            t.resync,
        )?),
        _ => None,
    };

    // The node is ready: tell the pods' network plugin, as flanneld does.
    let must_write = control.is_some();
    if let Err(e) = write_subnet_file(
        &config.subnet_file,
        config.network,
        config.subnet,
        mtu,
        config.traffic.ip_masq,
    ) {
        let what = format!("write the subnet file {}", config.subnet_file.display());
        if must_write {
            return Err(Error::Io { what, source: e });
        }
        tracing::warn!("cannot {what}: {e}");
    }
    let reloads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reload_errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let file_checks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let render: Arc<dyn Fn() -> String + Send + Sync> = {
        let (metrics, table) = (Arc::clone(&metrics), Arc::clone(&table));
        let (reloads, reload_errors) = (Arc::clone(&reloads), Arc::clone(&reload_errors));
        let file_checks = Arc::clone(&file_checks);
        let extra = opts.extra_metrics.clone();
        let masq_metrics = masq.as_ref().map(crate::masq::Keeper::renderer);
        let info = format!(
            "# TYPE fustian_info gauge\nfustian_info{{backend=\"{}\",io=\"{}\",offload=\"{}\",\
             tun=\"{name}\",subnet=\"{}\"}} 1\n",
            encap.name(),
            backend.name(),
            offloads.describe(),
            config.subnet,
        );
        Arc::new(move || {
            let snap = table.load();
            let mut text = format!(
                "{}# TYPE fustian_table_generation gauge\nfustian_table_generation {}\n\
                 # TYPE fustian_table_peers gauge\nfustian_table_peers {}\n\
                 # TYPE fustian_config_reloads counter\nfustian_config_reloads {}\n\
                 # TYPE fustian_config_reload_errors counter\nfustian_config_reload_errors {}\n\
                 # TYPE fustian_config_file_checks counter\nfustian_config_file_checks {}\n{info}",
                metrics.render_prometheus(),
                snap.generation(),
                snap.peers().len(),
                reloads.load(Ordering::Relaxed),
                reload_errors.load(Ordering::Relaxed),
                file_checks.load(Ordering::Relaxed),
            );
            for (name, what) in [
                ("peer_tx_packets", 0),
                ("peer_tx_bytes", 1),
                ("peer_rx_packets", 2),
                ("peer_rx_bytes", 3),
            ] {
                text.push_str(&format!("# TYPE fustian_{name} counter\n"));
                for (i, p) in snap.peers().iter().enumerate() {
                    let Some(st) = u32::try_from(i).ok().and_then(|i| snap.peer_stats(i)) else {
                        continue;
                    };
                    let v = [&st.tx_packets, &st.tx_bytes, &st.rx_packets, &st.rx_bytes][what]
                        .load(Ordering::Relaxed);
                    text.push_str(&format!(
                        "fustian_{name}{{subnet=\"{}\",endpoint=\"{}\"}} {v}\n",
                        p.subnet, p.endpoint
                    ));
                }
            }
            if let Some(extra) = &extra {
                text.push_str(&extra());
            }
            if let Some(masq) = &masq_metrics {
                text.push_str(&masq());
            }
            text
        })
    };
    if let Some(status) = &opts.status {
        status.set_renderers(
        {
            let render = Arc::clone(&render);
            Box::new(move || render())
        },
        {
            let render = Arc::clone(&render);
            let table = Arc::clone(&table);
            let head = serde_json::json!({
                "tun": name,
                "mtu": mtu,
                "network": config.network.to_string(),
                "subnet": config.subnet.to_string(),
                "listen": listen.to_string(),
                "backend": encap.name(),
                "vni": match encap { crate::wire::Encap::Vxlan(p) => Some(p.vni), crate::wire::Encap::Flannel => None },
                "vtep_mac": match encap { crate::wire::Encap::Vxlan(p) => Some(p.local_mac.to_string()), crate::wire::Encap::Flannel => None },
                "io": backend.name(),
                "io_reason": why,
                "offloads": offloads.describe(),
                "workers": workers,
            });
            Box::new(move || {
                let snap = table.load();
                let peers: Vec<serde_json::Value> = snap
                    .peers()
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let st = u32::try_from(i).ok().and_then(|i| snap.peer_stats(i));
                        let get =
                            |f: fn(&crate::table::PeerStats) -> &std::sync::atomic::AtomicU64| {
                                st.map_or(0, |s| f(s).load(Ordering::Relaxed))
                            };
                        serde_json::json!({
                            "subnet": p.subnet.to_string(),
                            "endpoint": p.endpoint.to_string(),
                            "vtep_mac": p.vtep_mac.map(|m| m.to_string()),
                            "tx_packets": get(|s| &s.tx_packets),
                            "tx_bytes": get(|s| &s.tx_bytes),
                            "rx_packets": get(|s| &s.rx_packets),
                            "rx_bytes": get(|s| &s.rx_bytes),
                        })
                    })
                    .collect();
                let counters: serde_json::Map<String, serde_json::Value> =
                    crate::metrics::parse_prometheus(&render())
                        .into_iter()
                        .filter(|(k, _)| !k.starts_with("peer_"))
                        .map(|(k, v)| (k, v.into()))
                        .collect();
                let mut v = head.clone();
                v["table"] = serde_json::json!({"generation": snap.generation(), "peers": peers});
                v["counters"] = counters.into();
                v
            })
        },
    );
        status.set_ready();
    }

    // Setup is done: nothing from here on needs a privilege. Drop them before any worker
    // exists, so every thread runs without them.
    if let Some(user) = &opts.user {
        crate::sys::switch_user(user).map_err(|source| Error::Io {
            what: format!("switch to user {user}"),
            source,
        })?;
        tracing::info!(user = %user, "running as an unprivileged user");
    } else if !opts.keep_privileges {
        crate::sys::drop_capabilities().map_err(|source| Error::Io {
            what: "drop capabilities".into(),
            source,
        })?;
        tracing::info!("all capabilities dropped after setup");
    }
    if let Some(status) = &opts.status {
        status.privileges_settled();
    }
    if let Some(masq) = &mut masq {
        masq.settled();
    }
    let control_thread = match control {
        Some(run_control) => {
            let (table, stop) = (Arc::clone(&table), Arc::clone(stop));
            Some(
                std::thread::Builder::new()
                    .name("fustian-control".into())
                    .spawn(move || run_control(table, stop))
                    .map_err(|source| Error::Io {
                        what: "spawn the control thread".into(),
                        source,
                    })?,
            )
        }
        None => None,
    };

    let mut handles = Vec::with_capacity(workers);
    for (id, (tun, udp)) in queues.into_iter().zip(sockets).enumerate() {
        let worker = Worker {
            id,
            tun,
            udp,
            tx_pool: Arc::clone(&tx_pool),
            table: Arc::clone(&table),
            metrics: Arc::clone(&metrics),
            fwd: Forwarding {
                encap,
                network: config.network,
                max_inner_len: max_inner,
                icmp: true,
                strict_source_port: config.strict_source_port,
            },
            stop: Arc::clone(stop),
            multishot: opts.multishot,
            offloads,
            tun_mtu: mtu as usize,
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

    let write_stats = || {
        if let Some(path) = &opts.stats_file
            && let Err(e) = write_atomically(path, render().as_bytes())
        {
            tracing::warn!("cannot write stats file {}: {e}", path.display());
        }
    };
    let churn = Churn::new(config, opts.table_churn);
    let tick = churn
        .as_ref()
        .map_or(Duration::from_millis(250), |c| c.period);
    let mut last_stats = std::time::Instant::now() - Duration::from_secs(1);
    let watch_every = (Duration::from_secs(1).as_millis() / tick.as_millis().max(1)).max(1);
    let mut round_watch = 0u128;
    let mut last_stamp = opts.reload.as_ref().and_then(|r| file_stamp(&r.path));
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) && !handles.iter().any(|h| h.is_finished()) {
        if last_stats.elapsed() >= Duration::from_millis(250) {
            write_stats();
            last_stats = std::time::Instant::now();
        }
        if let Some(churn) = &churn {
            round += 1;
            table.publish(churn.snapshot(config, round));
        }
        // SIGHUP, or an edit of the file (looked at about once a second).
        let file_changed = opts.reload.as_ref().is_some_and(|reload| {
            round_watch += 1;
            if !round_watch.is_multiple_of(watch_every) {
                return false;
            }
            let now = file_stamp(&reload.path);
            file_checks.fetch_add(1, Ordering::Relaxed);
            let changed = now != last_stamp;
            last_stamp = now;
            changed
        });
        if let Some(reload) = &opts.reload
            && (reload.requested.swap(false, Ordering::Relaxed) || file_changed)
        {
            match reload_peers(config, reload) {
                Ok(snapshot) => {
                    let peers = snapshot.peers().len();
                    let generation = table.publish(snapshot);
                    reloads.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        generation,
                        peers,
                        "reloaded the peers from {}",
                        reload.path.display()
                    );
                }
                Err(e) => {
                    reload_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("reload rejected, the last good table keeps forwarding: {e}");
                }
            }
            write_stats();
        }
        std::thread::sleep(tick);
    }
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
    if let Some(t) = control_thread {
        let _ = t.join();
    }
    write_stats();
    drop(masq);
    tracing::info!(
        removed = created,
        "node down; the TUN device goes away with its last fd when this process created it"
    );
    result
}

/// Returns what tells one version of a file from the next: its modification time and length.
fn file_stamp(path: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Writes `data` to `path` through a temporary file and a rename, so readers never see half.
///
/// # Errors
///
/// The write or rename error.
pub fn write_atomically(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

/// Synthetic table updates: the real peers plus a varying set of peers in subnets of the
/// network that nobody uses, published at a fixed rate.
struct Churn {
    period: Duration,
    spare: Vec<crate::table::Peer>,
}

impl Churn {
    fn new(config: &NodeConfig, rate: u32) -> Option<Self> {
        if rate == 0 {
            return None;
        }
        let ipnet::IpNet::V4(net) = config.network else {
            return None;
        };
        let taken = |n: &ipnet::IpNet| {
            config.subnet.contains(n)
                || n.contains(&config.subnet)
                || config
                    .peers
                    .iter()
                    .any(|p| p.subnet.contains(n) || n.contains(&p.subnet))
        };
        // The highest /24s (or the network's own length, if longer) of the network.
        let len = net.prefix_len().max(24);
        let spare: Vec<_> = net
            .subnets(len)
            .ok()?
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .map(ipnet::IpNet::V4)
            .filter(|n| !taken(n))
            .take(32)
            .zip(0u8..)
            .map(|(subnet, i)| crate::table::Peer {
                subnet,
                endpoint: SocketAddr::new(
                    std::net::Ipv4Addr::new(192, 0, 2, 200u8.wrapping_add(i)).into(),
                    config.port,
                ),
                vtep_mac: Some(MacAddress([0x02, 0xff, 0, 0, 0, i])),
            })
            .collect();
        tracing::warn!(
            rate,
            spare = spare.len(),
            "publishing synthetic table updates"
        );
        Some(Self {
            period: Duration::from_secs_f64(1.0 / f64::from(rate)),
            spare,
        })
    }

    fn snapshot(&self, config: &NodeConfig, round: u64) -> Snapshot {
        let mut peers = config.peers.clone();
        let extra = usize::try_from(round % (self.spare.len() as u64 + 1)).unwrap_or(0);
        peers.extend(self.spare.iter().take(extra).copied());
        // The real peers are valid (checked at start) and the spares overlap none of them.
        Snapshot::new(vec![config.subnet], peers).unwrap_or_default()
    }
}

/// Reads the config file again and returns the table for its peers. Only the peers change
/// live; any other setting that differs from the running one is reported and needs a restart.
fn reload_peers(running: &NodeConfig, reload: &Reload) -> Result<Snapshot, Error> {
    let file = crate::config::RawNode::from_file(&reload.path)?;
    let new = NodeConfig::resolve(&reload.flags, Some((&reload.path, &file)))?;
    let mut same = new.clone();
    same.peers.clone_from(&running.peers);
    if &same != running {
        tracing::warn!(
            "{}: only the peers are applied live; the other changes need a restart",
            reload.path.display()
        );
    }
    Ok(Snapshot::new(vec![running.subnet], new.peers)?)
}
