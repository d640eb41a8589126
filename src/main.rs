//! The `fustian` binary: parse flags, load the configuration, run, map errors to exit codes.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::Parser;
use fustian::cli::{Cli, Command};
use fustian::config::{NodeConfig, RawNode};
use fustian::control::ControlPlane;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let argv = match fustian::cli::go_style_args(std::env::args_os(), &|k| std::env::var_os(k)) {
        Ok(argv) => argv,
        Err(e) => {
            // As clap reports a bad command line, with the same exit code.
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => {
            if e.kind() == clap::error::ErrorKind::DisplayVersion
                && argv
                    .first()
                    .is_some_and(|a| fustian::cli::called_as_flanneld(a))
            {
                eprintln!("{}", fustian::cli::flanneld_version());
                return ExitCode::SUCCESS;
            }
            if e.kind() == clap::error::ErrorKind::DisplayVersion {
                // The same line for `fustian --version` and flanneld's `fustian -version`
                // (which reaches the `run` subcommand, whose own name clap would print).
                println!("fustian {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            let _ = e.print();
            if let Some(note) = env_origin(&e).or_else(|| bool_hint(&e)) {
                eprintln!("{note}");
            }
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_new(cli.log_filter()).unwrap_or_else(|_| EnvFilter::new("info")),
        )
        // Queued for a thread of its own: a standard error nobody reads (or whose reader is
        // gone) drops and counts lines instead of stalling or killing the thread that logs.
        .with_writer(fustian::logging::writer())
        .log_internal_errors(false)
        // journald, `kubectl logs` and log files get plain text, as from flanneld.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    fustian::logging::log_panics();
    let result = run(cli);
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Through the log's queue: neither `eprintln!` (which panics on a closed pipe) nor
            // a direct write (which waits on a full one) may hold the exit.
            fustian::logging::line(&format!(
                "fustian: {}",
                fustian::sys::printable(&error_chain(&e))
            ));
            ExitCode::from(exit_status(&e))
        }
    };
    fustian::logging::flush(std::time::Duration::from_secs(1));
    code
}

/// A flag value refused after the command line was read: the node exits with status 2, as
/// for a value clap refuses, so a unit's `RestartPreventExitStatus=2` covers every refused
/// flag.
#[derive(Debug)]
struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// The exit status for an error `run` returned: 2 for a refused flag value (a [`Usage`]
/// error, a flag's [`fustian::config::ConfigError::Invalid`], a pattern of `--iface-regex`
/// that does not compile), 1 for anything else.
fn exit_status(e: &anyhow::Error) -> u8 {
    use fustian::config::{ConfigError, Origin};
    let refused_flag = e.chain().any(|cause| {
        cause.is::<Usage>()
            || matches!(
                cause.downcast_ref::<ConfigError>(),
                Some(ConfigError::Invalid {
                    origin: Origin::Flag(_),
                    ..
                })
            )
            || matches!(
                cause.downcast_ref::<fustian::iface::IfaceError>(),
                Some(fustian::iface::IfaceError::Regex { .. })
            )
    });
    if refused_flag { 2 } else { 1 }
}

/// Says which `FLANNELD_*` variable gave the value clap refused, when it came from the
/// environment (not the command line): the message names the flag, which the operator will
/// not find on the command line.
fn env_origin(e: &clap::Error) -> Option<String> {
    let clap::error::ContextValue::String(arg) = e.get(clap::error::ContextKind::InvalidArg)?
    else {
        return None;
    };
    // `--ip-masq[=<BOOL>]` for a flag whose value is optional.
    let name = arg.strip_prefix("--")?.split([' ', '=', '[']).next()?;
    let on_command_line = std::env::args_os().skip(1).any(|a| {
        let a = a.to_string_lossy();
        let a = a.trim_start_matches('-');
        a == name
            || a.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('='))
    });
    if on_command_line {
        return None;
    }
    let key = fustian::cli::env_name(name);
    let value = std::env::var_os(&key)?;
    Some(format!(
        "note: the value comes from the environment: {key}={}",
        fustian::sys::printable(&value.to_string_lossy())
    ))
}

/// Says how Go's boolean flags take a value, when clap refused a bare `true`/`false` after
/// one (`-ip-masq false`, which Go's flag package also stops at, ignoring the rest).
fn bool_hint(e: &clap::Error) -> Option<String> {
    if e.kind() != clap::error::ErrorKind::UnknownArgument {
        return None;
    }
    let clap::error::ContextValue::String(arg) = e.get(clap::error::ContextKind::InvalidArg)?
    else {
        return None;
    };
    fustian::cli::parse_go_bool(arg).ok()?;
    Some(format!(
        "note: a boolean flag takes its value with `=` (-ip-masq={arg}), as in Go's flag package"
    ))
}

/// The error and its causes, joined by `: ` as anyhow's `{:#}` joins them, leaving out a cause
/// whose text its parent's message already ends with (many errors name their source in their
/// own message too), so no reason is printed twice.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut last = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !last.is_empty() && last.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
        last = text;
    }
    out
}

/// The subnet file a node writes: `--subnet-file`, else (without etcd) the config file's
/// `subnet_file`, else flanneld's default. One answer for the etcd join, the lock and the
/// static config alike. A given path that names no file (empty, or ending in `/`) is refused,
/// naming the flag or field ([`fustian::config::check_subnet_file`]).
fn subnet_file_of(
    args: &fustian::cli::RunArgs,
    file: Option<&(std::path::PathBuf, RawNode)>,
    etcd: bool,
) -> Result<String, fustian::config::ConfigError> {
    use fustian::config::Origin;
    let given = args
        .raw()
        .subnet_file
        .map(|text| (text, Origin::Flag("subnet-file")))
        .or_else(|| {
            file.filter(|_| !etcd).and_then(|(path, r)| {
                r.subnet_file.clone().map(|text| {
                    let field = "subnet_file".to_owned();
                    (
                        text,
                        Origin::File {
                            path: path.clone(),
                            field,
                        },
                    )
                })
            })
        });
    match given {
        None => Ok(fustian::config::DEFAULT_SUBNET_FILE.to_owned()),
        Some((text, origin)) => {
            fustian::config::check_subnet_file(&text, origin)?;
            Ok(text)
        }
    }
}

/// The configuration of a static node from `flags` and the config file. On a vxlan network
/// without a VTEP MAC given, the one kept beside the subnet file (from an earlier run) is this
/// node's as much as one given with `--vtep-mac`: it goes into `flags`, so that a peer with
/// the same MAC is refused (every frame from it would be taken for the node's own), at start
/// and at each reload alike.
fn resolve_static(
    flags: &mut RawNode,
    file: Option<&(std::path::PathBuf, RawNode)>,
) -> anyhow::Result<NodeConfig> {
    use anyhow::Context as _;
    let file = file.map(|(p, r)| (p.as_path(), r));
    let config = NodeConfig::resolve(flags, file)?;
    let fustian::config::BackendConfig::Vxlan { vtep_mac: None, .. } = config.backend else {
        return Ok(config);
    };
    let path = config.vtep_mac_path();
    let Some(kept) = fustian::config::load_vtep_mac(&path)? else {
        return Ok(config);
    };
    flags.vtep_mac = Some(kept.to_string());
    NodeConfig::resolve(flags, file).with_context(|| {
        format!(
            "this node's VTEP MAC {kept} is the one kept in {}",
            fustian::sys::printable(&path.display().to_string())
        )
    })
}

/// Refuses a node two of whose files name the same file (one of them written, locked or
/// removed), before anything is written: the subnet file, the lock and the temporary file
/// beside it, the VTEP MAC file beside it, the stats file and its temporary file, the trace
/// socket (given, or the default for the device), the config file and etcd's TLS files.
/// Otherwise the node would overwrite its config with counters, replace its trace socket,
/// delete its subnet file at exit or lock its lock file away.
fn check_own_files(
    args: &fustian::cli::RunArgs,
    file: Option<&(std::path::PathBuf, RawNode)>,
    subnet_file: &str,
) -> Result<(), Usage> {
    use fustian::paths::{OwnFile, find_clash};
    let raw = args.raw();
    let subnet = std::path::Path::new(subnet_file);
    let named = if raw.subnet_file.is_some() {
        "--subnet-file".to_owned()
    } else if subnet_file != fustian::config::DEFAULT_SUBNET_FILE {
        "the config file's subnet_file".to_owned()
    } else {
        "the subnet file".to_owned()
    };
    let mut files = vec![
        OwnFile::written(named.clone(), subnet),
        OwnFile::written(
            format!("the lock beside {named}"),
            fustian::sys::lock_path(subnet),
        ),
        OwnFile::written(
            format!("the temporary file beside {named}"),
            fustian::sys::temporary_path(subnet),
        ),
        OwnFile::written(
            format!("the VTEP MAC file beside {named}"),
            fustian::config::vtep_mac_path(subnet),
        ),
    ];
    if let Some(stats) = &args.stats_file {
        files.push(OwnFile::written("--stats-file", stats));
        files.push(OwnFile::written(
            "the temporary file beside --stats-file",
            fustian::sys::temporary_path(stats),
        ));
    }
    match &args.trace_socket {
        Some(socket) => files.push(OwnFile::written("--trace-socket", socket)),
        None => {
            let tun = raw
                .tun
                .clone()
                .or_else(|| file.and_then(|(_, r)| r.tun.clone()))
                .unwrap_or_else(|| fustian::config::DEFAULT_TUN.to_owned());
            files.push(OwnFile::written(
                "the trace socket",
                fustian::trace::server::default_path(&tun),
            ));
        }
    }
    if let Some(config) = &args.config {
        files.push(OwnFile::read("--config", config));
    }
    for (flag, path) in [
        ("--etcd-keyfile", &args.etcd.etcd_keyfile),
        ("--etcd-certfile", &args.etcd.etcd_certfile),
        ("--etcd-cafile", &args.etcd.etcd_cafile),
    ] {
        if let Some(path) = path {
            files.push(OwnFile::read(flag, path));
        }
    }
    match find_clash(&files) {
        Some(clash) => Err(Usage(clash.to_string())),
        None => Ok(()),
    }
}

/// A node configuration, the control source that keeps its table current, and the claim on
/// its device and port taken before it joined.
type Joined = (NodeConfig, ControlPlane, Option<fustian::node::HostClaim>);

/// Joins the network through etcd: reads flannel's config, acquires a subnet and lists the
/// peers, then returns the node configuration and the agent that keeps the table current.
#[cfg(feature = "etcd")]
use fustian::control::netconf::NetworkConfig;

#[cfg(feature = "etcd")]
fn join_etcd(
    args: &fustian::cli::RunArgs,
    endpoints: &str,
    file: Option<&(std::path::PathBuf, RawNode)>,
    stop: &AtomicBool,
    status: Option<&fustian::http::Status>,
) -> anyhow::Result<Option<Joined>> {
    use anyhow::Context as _;
    use fustian::control::etcd::{Agent, EtcdOptions, previous_subnet, previous_subnet6};
    use fustian::control::lease::DEFAULT_PREFIX;
    let raw = args.raw();
    // Flag values first: a refused one names its flag before any other check speaks.
    let endpoints = etcd_endpoints(endpoints)?;
    let prefix = etcd_prefix(args.etcd_prefix.as_deref().unwrap_or(DEFAULT_PREFIX))?;
    for (given, flag) in [
        (&raw.ipv6_network, "--ipv6-network"),
        (&raw.ipv6_subnet, "--ipv6-subnet"),
    ] {
        if given.is_some() {
            return Err(Usage(format!(
                "{flag} is for a static node: with etcd the IPv6 network comes from the network \
                 config (EnableIPv6, IPv6Network) and the IPv6 subnet from this node's lease"
            ))
            .into());
        }
    }
    let public_ipv6: Option<std::net::Ipv6Addr> = match raw.public_ipv6.as_deref() {
        None => None,
        Some(text) => {
            let ip: std::net::Ipv6Addr = text.parse().map_err(|e| {
                Usage(format!(
                    "--public-ipv6 `{text}` is not an IPv6 address: {e}"
                ))
            })?;
            // Every peer would refuse a lease carrying such an address, IPv4 half and all.
            if fustian::control::lease::judge_public_ipv6(ip, None).is_some() {
                return Err(Usage(format!(
                    "--public-ipv6 `{text}` cannot be a node's underlay address (loopback, \
                     link-local, multicast, unspecified or IPv4-mapped): peers would refuse \
                     its lease"
                ))
                .into());
            }
            Some(ip)
        }
    };
    let public_ip: std::net::Ipv4Addr = raw
        .public_ip
        .as_deref()
        .context("--public-ip (or FLANNELD_PUBLIC_IP) is required with --etcd-endpoints")?
        .parse()
        .map_err(|e| {
            Usage(format!(
                "--public-ip must be an IPv4 address with etcd: {e}"
            ))
        })?;
    // Every peer, this node included, refuses a lease naming such an address.
    // (An unspecified address is judged as such before it could be taken for the own one.)
    if let Some(why) =
        fustian::control::lease::judge_public_ip(public_ip, std::net::Ipv4Addr::UNSPECIFIED)
    {
        return Err(Usage(format!(
            "--public-ip {public_ip} cannot be a node's underlay address with etcd ({}): \
             every peer would refuse its lease",
            why.reason()
        ))
        .into());
    }
    // A node that cannot bind its port takes no lease, nor another node's lease that names
    // the same address.
    fustian::node::check_underlay_addresses(public_ip, public_ipv6)?;
    let subnet_file = std::path::PathBuf::from(subnet_file_of(args, file, true)?);
    let opts = EtcdOptions {
        endpoints,
        prefix,
        access: fustian::control::etcd::EtcdAccess::from(&args.etcd),
        renew_margin: std::time::Duration::from_secs(
            60 * args.subnet_lease_renew_margin.unwrap_or(60),
        ),
        ttl: args.subnet_lease_ttl.map_or(
            fustian::control::etcd::LEASE_TTL,
            std::time::Duration::from_secs,
        ),
    };
    // The VTEP MAC goes into the lease, so it is settled before joining; a new one is kept
    // beside the subnet file only once the network turns out to be vxlan, before the lease
    // carrying it is written (a udp node, as flanneld's, keeps none).
    let mac_path = fustian::config::vtep_mac_path(&subnet_file);
    let (mac, mut unsaved) = match &raw.vtep_mac {
        Some(text) => (
            text.parse()
                .map_err(|e| Usage(format!("invalid --vtep-mac `{text}`: {e}")))?,
            false,
        ),
        None => match fustian::config::load_vtep_mac(&mac_path)? {
            Some(kept) => (kept, false),
            None => (fustian::config::new_vtep_mac()?, true),
        },
    };
    let mac = Some(mac);
    let mut agent = Agent::new(opts, public_ip, public_ipv6, mac)?.with_ipv6_default(
        public_ipv6
            .is_none()
            .then_some(args.underlay_ipv6)
            .flatten(),
    );
    // Waits for etcd and the network config as flanneld does, saying why on /readyz.
    let waiting = |reason: &str| {
        if let Some(status) = status {
            status.set_not_ready(reason);
        }
    };
    if let Some(status) = status {
        status.set_not_ready(format!(
            "joining the network through etcd at {}",
            agent.endpoint_list()
        ));
    }
    // The checks of this host that may refuse the node (its device, its port, its routes) and
    // the flags that must agree with the network config run before the join writes anything
    // to etcd, with the node's config as it will be but for its subnet (the network stands in
    // for it); the claim they take is the node's from then on.
    let mut host: Option<fustian::node::HostClaim> = None;
    let mut before_write = |network: &NetworkConfig,
                            ipv6: Option<std::net::Ipv6Addr>|
     -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let (config, _) = node_config(
            &raw,
            file,
            network,
            (network.network, network.ipv6.map(|c6| c6.network)),
            ipv6,
            mac,
            &subnet_file,
        )?;
        if !host.as_ref().is_some_and(|h| h.fits(&config)) {
            // Released first: this process holds the names a new claim takes.
            host = None;
            host = Some(fustian::node::HostClaim::take(&config)?);
        }
        if unsaved
            && let (fustian::control::lease::Backend::Vxlan { .. }, Some(mac)) =
                (network.backend, mac)
        {
            fustian::config::keep_vtep_mac(&mac_path, mac)?;
            unsaved = false;
        }
        Ok(())
    };
    let joined = match agent.join_when_ready(
        previous_subnet(&subnet_file),
        previous_subnet6(&subnet_file),
        stop,
        &waiting,
        &mut before_write,
    ) {
        Ok(Some(joined)) => joined,
        Ok(None) => return Ok(None),
        Err(fustian::control::etcd::EtcdError::Refused(e)) => {
            return Err(anyhow::Error::from_boxed(e));
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot join the network through etcd at {}",
                agent.endpoint_list()
            )));
        }
    };
    // Told to stop as the join ended: nothing more is set up (a lease this run wrote is
    // given back as the agent goes, since the node never started).
    if stop.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(None);
    }
    if let Some(status) = status {
        status.set_not_ready("starting: subnet lease acquired");
    }
    let (mut config, ignored) = node_config(
        &raw,
        file,
        &joined.config,
        (joined.subnet, joined.subnet6),
        joined.public_ipv6,
        mac,
        &subnet_file,
    )?;
    if let Some(ip) = ignored {
        tracing::warn!(
            public_ipv6 = %ip,
            "--public-ipv6 is for a dual-stack network (EnableIPv6 in the network config); \
             ignored on this IPv4-only one"
        );
    }
    config.peers = joined.peers;
    Ok(Some((config, agent.into_source(), host)))
}

/// The configuration of a node joined through etcd: the flags and the config file over the
/// network config, with `subnets` as this node's and `public_ipv6` (the interface's address
/// taken on a dual-stack network) unless `--public-ipv6` is given. Refuses a flag that
/// disagrees with the network config, which sets the wire for every node. Also returns an
/// IPv6 underlay address given for an IPv4-only network, which is left out.
#[cfg(feature = "etcd")]
fn node_config(
    raw: &RawNode,
    file: Option<&(std::path::PathBuf, RawNode)>,
    network: &NetworkConfig,
    (subnet, subnet6): (ipnet::Ipv4Net, Option<ipnet::Ipv6Net>),
    public_ipv6: Option<std::net::Ipv6Addr>,
    mac: Option<fustian::wire::MacAddress>,
    subnet_file: &std::path::Path,
) -> anyhow::Result<(NodeConfig, Option<std::net::Ipv6Addr>)> {
    use fustian::config::{Managed, ManagedBackend};
    use fustian::control::lease::Backend;
    // A flag may repeat the network config, never change it.
    let backend = network.backend;
    let agree = |flag: &str, given: Option<String>, config: String| match given {
        Some(g) if g != config => anyhow::bail!(
            "{flag} {g} disagrees with the network config in etcd, which says {config}"
        ),
        _ => Ok(()),
    };
    agree("--backend", raw.backend.clone(), backend.name().to_owned())?;
    agree(
        "--port",
        raw.port.map(|p| p.to_string()),
        backend.port().to_string(),
    )?;
    let managed_backend = match backend {
        Backend::Vxlan { vni, .. } => {
            agree("--vni", raw.vni.map(|v| v.to_string()), vni.to_string())?;
            ManagedBackend::Vxlan { vni, vtep_mac: mac }
        }
        Backend::Udp { .. } => ManagedBackend::Udp,
    };
    let managed = Managed {
        network: network.network.into(),
        subnet: subnet.into(),
        ipv6: network
            .ipv6
            .zip(subnet6)
            .map(|(c6, subnet)| fustian::config::Overlay6 {
                network: c6.network.into(),
                subnet: subnet.into(),
            }),
        backend: managed_backend,
        port: backend.port(),
        // Backend.MTU sizes the device and FLANNEL_MTU as in flanneld; --mtu still wins.
        mtu: backend.tun_mtu(),
        subnet_file: subnet_file.to_path_buf(),
        // flanneld programs its masquerade and forward rules through nftables when the
        // config asks.
        nftables: network.enable_nftables,
    };
    let mut config =
        NodeConfig::resolve_managed(raw, file.map(|(p, r)| (p.as_path(), r)), &managed)?;
    // The interface's IPv6 address taken on a dual-stack network: the node binds to it too.
    if config.public_ipv6.is_none() {
        config.public_ipv6 = public_ipv6;
    }
    // On an IPv4-only network no lease carries an IPv6 address (this node's says null, as
    // flanneld's does), so no peer would send to one: no IPv6 socket, and the device keeps
    // the MTU of an IPv4 underlay, as flanneld ignores -public-ipv6 there.
    let ignored = if network.ipv6.is_none() {
        config.public_ipv6.take()
    } else {
        None
    };
    Ok((config, ignored))
}

#[cfg(not(feature = "etcd"))]
fn join_etcd(
    _args: &fustian::cli::RunArgs,
    _endpoints: &str,
    _file: Option<&(std::path::PathBuf, RawNode)>,
    _stop: &AtomicBool,
    _status: Option<&fustian::http::Status>,
) -> anyhow::Result<Option<Joined>> {
    anyhow::bail!(
        "--etcd-endpoints needs fustian built with the `etcd` feature (cargo build --features etcd)"
    )
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    // Set by SIGTERM and SIGINT only (`stop` is also set by the node itself as it ends).
    let signalled = Arc::new(AtomicBool::new(false));
    // Only the commands that watch the flag take SIGTERM and SIGINT over; `show` and `doctor`
    // keep the default action, so Ctrl-C ends them wherever they are.
    if matches!(
        cli.command,
        Command::Run(_) | Command::Trace(_) | Command::Lab(_)
    ) {
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(signal, Arc::clone(&stop))?;
            signal_hook::flag::register(signal, Arc::clone(&signalled))?;
        }
    }
    // A node reloads its config file on SIGHUP (see `run_node`); one with nothing to reload
    // says so rather than dying untidily, rules left in place, by the default action.
    let hup = Arc::new(AtomicBool::new(false));
    if matches!(cli.command, Command::Run(_)) {
        signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup))?;
        // Caught and left without effect, as Go's runtime leaves them for flanneld: by their
        // default action a stray `kill -USR1` would end the node without its teardown, its
        // rules and trace socket left behind.
        let ignored = Arc::new(AtomicBool::new(false));
        for signal in [
            signal_hook::consts::SIGUSR1,
            signal_hook::consts::SIGUSR2,
            signal_hook::consts::SIGALRM,
        ] {
            signal_hook::flag::register(signal, Arc::clone(&ignored))?;
        }
    }
    match cli.command {
        Command::Run(mut args) => {
            let file = match &args.config {
                Some(path) => Some((path.clone(), RawNode::from_file(path)?)),
                None => None,
            };
            args.select_underlay(file.as_ref().map(|(_, r)| r))?;
            // The HTTP endpoint serves from the start, so /readyz can say what the node waits
            // for.
            let http = match args.healthz_port {
                0 => None,
                port => {
                    let addr = std::net::SocketAddr::new(args.healthz_ip, port);
                    let listener = fustian::http::bind(addr)
                        .map_err(|e| anyhow::anyhow!("open the HTTP endpoint on {addr}: {e}"))?;
                    let status = Arc::new(
                        fustian::http::Status::new().with_allowed_hosts(&args.healthz_allowed_host),
                    );
                    let thread =
                        fustian::http::serve(listener, Arc::clone(&status), Arc::clone(&stop))?;
                    Some((status, thread))
                }
            };
            let status = http.as_ref().map(|(s, _)| Arc::clone(s));
            let result = run_node(&args, file.as_ref(), &stop, &hup, status);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some((_, thread)) = http {
                let _ = thread.join();
            }
            match result {
                // Asked to stop while starting (a unit stopped, its whole group signalled): a
                // setup step cut short by it (an `iptables` child killed by the same SIGTERM)
                // is the stop, not a failure. What was set up is torn down either way.
                Err(e)
                    if signalled.load(std::sync::atomic::Ordering::Relaxed)
                        && !fustian::node::started()
                        && fustian::control::fatal().is_none() =>
                {
                    tracing::info!("stopped while starting: {}", error_chain(&e));
                }
                r => r?,
            }
        }
        Command::Show(args) => {
            let text = fustian::http::get(args.addr, "/status").map_err(anyhow::Error::msg)?;
            let value: serde_json::Value = serde_json::from_str(&text)?;
            if args.json {
                let json = serde_json::to_string_pretty(&value)?;
                println!("{}", fustian::sys::printable_json(&json));
            } else {
                let value = fustian::show::one_line_strings(value);
                print!(
                    "{}",
                    fustian::sys::printable(&fustian::show::render(&value))
                );
            }
        }
        Command::Doctor(args) => {
            let opts = fustian::doctor::ProbeOptions {
                timeout: std::time::Duration::from_millis(args.probe_timeout),
                ..Default::default()
            };
            let intent = fustian::doctor::intent(args.addr)?;
            let again = || fustian::doctor::intent(args.addr).map_err(|e| e.to_string());
            let mut report = fustian::doctor::run(&intent, &opts, again);
            if let Some(endpoints) = &args.etcd_endpoints {
                report
                    .checks
                    .extend(doctor_etcd(&args, endpoints, &intent)?);
            }
            if args.json {
                let json = serde_json::to_string_pretty(&report.json())?;
                println!("{}", fustian::sys::printable_json(&json));
            } else {
                print!("{}", fustian::sys::printable(&report.render()));
            }
            if !report.passed() {
                fustian::logging::flush(std::time::Duration::from_secs(1));
                std::process::exit(1);
            }
        }
        Command::Trace(args) => trace(&args, &stop)?,
        Command::Lab(args) => {
            let report = fustian::lab::run(&args, &stop)?;
            println!("{report}");
        }
    }
    Ok(())
}

/// `--etcd-endpoints` as a list: comma separated, blanks around each ignored, as flanneld
/// splits it. Refused at start: an empty list (the node would wait for nothing forever), and
/// an endpoint other than `http://`, `https://` or a bare `host:port`, such as `unix://`, which
/// this client cannot reach (it would be looked up as a host name, forever).
#[cfg(feature = "etcd")]
fn etcd_endpoints(text: &str) -> anyhow::Result<Vec<String>> {
    let list: Vec<String> = text
        .split(',')
        .map(|e| e.trim().to_owned())
        .filter(|e| !e.is_empty())
        .collect();
    if list.is_empty() {
        return Err(Usage(
            "--etcd-endpoints is empty: give etcd's client URLs, comma separated".into(),
        )
        .into());
    }
    list.iter().map(|e| etcd_endpoint(e)).collect()
}

/// One `--etcd-endpoints` entry checked and written as the etcd client reads it: an
/// `http://` or `https://` scheme (in any case, as Go's URL parser takes it; lower-cased here,
/// since the client would otherwise take the whole URL for a host name) or none, then a host
/// (an IPv4 address, an IPv6 address in brackets, or a DNS name) and an optional port in
/// 1..=65535, and no path. Anything else could never connect, so it is refused at start
/// rather than waited on forever: a blank or a `;` between two URLs (the list is comma
/// separated), a port out of range, an empty host, a user name.
#[cfg(feature = "etcd")]
fn etcd_endpoint(e: &str) -> anyhow::Result<String> {
    let shown = || fustian::sys::printable(e);
    let (scheme, rest) = match e.split_once("://") {
        Some((scheme, rest)) => {
            let lower = scheme.to_ascii_lowercase();
            if lower != "http" && lower != "https" {
                return Err(Usage(format!(
                    "--etcd-endpoints: {} is a {}:// endpoint; only http:// and https:// \
                     endpoints are supported",
                    shown(),
                    fustian::sys::printable(scheme)
                ))
                .into());
            }
            (Some(lower), rest)
        }
        None => (None, e),
    };
    let bad = |why: &str| {
        anyhow::Error::from(Usage(format!(
            "--etcd-endpoints: {} is not an etcd client URL ({why}); give them comma \
             separated, as http://192.0.2.1:2379",
            shown()
        )))
    };
    if e.contains(|c: char| c.is_whitespace() || c == ';') {
        return Err(bad("a blank or a `;` inside: the list is comma separated"));
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') {
        return Err(bad("a path after the address"));
    }
    if authority.contains('@') {
        return Err(bad("a user name; give credentials with --etcd-username"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 address without its closing bracket"))?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("not an IPv6 address in the brackets"));
        }
        match after {
            "" => (addr, None),
            _ => (
                addr,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad("text after the IPv6 address"))?,
                ),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let name_ok = |h: &str| {
        !h.is_empty()
            && h.len() <= 253
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    };
    if !authority.starts_with('[') && !name_ok(host) {
        return Err(if host.is_empty() {
            bad("no host")
        } else {
            bad("a host that is neither an address nor a name")
        });
    }
    if let Some(port) = port
        && !(port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p)))
    {
        return Err(bad("a port that is not a number in 1..=65535"));
    }
    Ok(match scheme {
        Some(scheme) => format!("{scheme}://{authority}"),
        None => authority.to_owned(),
    })
}

/// `--etcd-prefix` cleaned as flanneld's `path.Join` cleans it, so both make the same keys
/// from the same flag; refused when longer than any prefix a lease key could be made under.
#[cfg(feature = "etcd")]
fn etcd_prefix(raw: &str) -> anyhow::Result<String> {
    use fustian::control::lease::{MAX_PREFIX, clean_prefix};
    let prefix = clean_prefix(raw);
    if prefix.len() > MAX_PREFIX {
        return Err(Usage(format!(
            "--etcd-prefix is {} bytes long; at most {MAX_PREFIX} are taken",
            prefix.len()
        ))
        .into());
    }
    if prefix != raw {
        tracing::info!(
            given = %fustian::sys::printable(raw),
            prefix = %fustian::sys::printable(&prefix),
            "--etcd-prefix cleaned as flanneld cleans it"
        );
    }
    Ok(prefix)
}

/// The etcd checks of `fustian doctor`.
#[cfg(feature = "etcd")]
fn doctor_etcd(
    args: &fustian::cli::DoctorArgs,
    endpoints: &str,
    intent: &fustian::doctor::Intent,
) -> anyhow::Result<Vec<fustian::doctor::Check>> {
    let target = fustian::doctor::etcd::EtcdTarget {
        endpoints: etcd_endpoints(endpoints)?,
        prefix: etcd_prefix(&args.etcd_prefix)?,
        access: fustian::control::etcd::EtcdAccess::from(&args.etcd.with_flanneld_env()),
    };
    Ok(fustian::doctor::etcd::checks(intent, &target))
}

#[cfg(not(feature = "etcd"))]
fn doctor_etcd(
    _args: &fustian::cli::DoctorArgs,
    _endpoints: &str,
    _intent: &fustian::doctor::Intent,
) -> anyhow::Result<Vec<fustian::doctor::Check>> {
    anyhow::bail!(
        "--etcd-endpoints needs fustian built with the `etcd` feature (cargo build --features etcd)"
    )
}

/// Attaches to a node's trace socket and prints until Ctrl-C, `--count` or `--duration`.
fn trace(args: &fustian::cli::TraceArgs, stop: &AtomicBool) -> anyhow::Result<()> {
    let opts = fustian::trace::client::TraceOptions {
        socket: args.socket.clone(),
        filter: args.filter.join(" "),
        json: args.json,
        pcap: args.pcap.clone(),
        count: args.count,
        duration: args.duration.map(std::time::Duration::from_secs),
    };
    let mut out = std::io::stdout().lock();
    // The message already names the cause; the chain would repeat it.
    let summary = fustian::trace::client::run(&opts, &mut out, &mut std::io::stderr(), stop)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!("{} events, {} lost", summary.events, summary.lost);
    Ok(())
}

/// Runs a node: joins the network (through etcd, waiting for it, or from flags and the file)
/// and forwards until `stop` is set.
fn run_node(
    args: &fustian::cli::RunArgs,
    file: Option<&(std::path::PathBuf, RawNode)>,
    stop: &Arc<AtomicBool>,
    hup: &Arc<AtomicBool>,
    status: Option<Arc<fustian::http::Status>>,
) -> anyhow::Result<()> {
    // An unknown --user is refused before anything is set up (a lease taken, a subnet file
    // written for a node that would then stop).
    if let Some(user) = &args.user {
        fustian::sys::lookup_user(user).map_err(|e| Usage(format!("--user {user}: {e}")))?;
    }
    // Process limits too small for the workers, or a missing io_uring asked for, are refused
    // before a lease is taken.
    let (workers, io) = RawNode::early_workers_io(&args.raw(), file.map(|(_, r)| r));
    fustian::node::check_limits(workers, io, args.user.is_some(), args.keep_privileges)?;
    // One node per subnet file, before anything is set up: a second node writing it would
    // point the pods' network plugin at a subnet the first one routes.
    let etcd = args.etcd_endpoints_or_default().is_some();
    let subnet_file = subnet_file_of(args, file, etcd)?;
    check_own_files(args, file, &subnet_file)?;
    let lock = (!subnet_file.is_empty())
        .then(|| fustian::sys::lock_beside(std::path::Path::new(&subnet_file)));
    let _subnet_lock = match lock {
        None => None,
        Some(Ok(lock)) => Some(lock),
        Some(Err(e @ fustian::sys::LockError::Held { .. })) => {
            anyhow::bail!("the subnet file {e}: give each node on this host its own --subnet-file")
        }
        // Without etcd the subnet file is optional (a failed write is a warning), and so is
        // its lock, unless someone else's file sits at its name.
        Some(Err(e @ fustian::sys::LockError::Io { .. })) if !etcd => {
            tracing::warn!("the subnet file is not locked: {e}");
            None
        }
        Some(Err(e)) => anyhow::bail!("the subnet file's lock: {e}"),
    };
    // The flags as a static node reads them again on a reload (with its kept VTEP MAC).
    let mut flags = args.raw();
    let (config, mut controls, host) = match &args.etcd_endpoints_or_default() {
        Some(endpoints) => match join_etcd(args, endpoints, file, stop, status.as_deref())? {
            Some((config, etcd, host)) => (config, vec![etcd], host),
            // Stopped while waiting for etcd.
            None => return Ok(()),
        },
        // A static node writes nothing before it sets up: `node::run` takes its claim.
        None => (resolve_static(&mut flags, file)?, Vec::new(), None),
    };
    let managed = etcd;
    // Without etcd, the config file is the source of the peers: read again when it changes
    // or on SIGHUP.
    if let (false, Some(path)) = (managed, &args.config) {
        let reload = fustian::control::file::Reload {
            path: path.clone(),
            flags,
            requested: Arc::clone(hup),
        };
        controls.push(fustian::control::file::source(config.clone(), reload));
    }
    // Synthetic updates, for tests and measurements.
    controls.extend(fustian::control::churn::source(
        config.clone(),
        args.table_churn,
    ));
    let opts = fustian::node::RunOptions {
        stats_file: args.stats_file.clone(),
        multishot: !args.no_multishot,
        busy_poll: std::time::Duration::from_micros(args.busy_poll),
        user: args.user.clone(),
        keep_privileges: args.keep_privileges,
        subnet_file_required: managed,
        status,
        trace_socket: args.trace_socket.clone(),
        // Without a watched file SIGHUP has nothing to reload: the node says so.
        sighup: (managed || args.config.is_none()).then(|| Arc::clone(hup)),
    };
    fustian::node::run(&config, &opts, stop, controls, host)?;
    if let Some(why) = fustian::control::fatal() {
        anyhow::bail!("{why}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[cfg(feature = "etcd")]
    #[test]
    fn etcd_endpoints_read_as_flanneld_splits_them() {
        use super::etcd_endpoints;
        assert_eq!(
            etcd_endpoints(" http://192.0.2.1:2379 ,,https://[fd00::1]:2379,192.0.2.2:2379,")
                .expect("valid"),
            [
                "http://192.0.2.1:2379",
                "https://[fd00::1]:2379",
                "192.0.2.2:2379"
            ]
        );
        assert!(etcd_endpoints(" , ").is_err_and(|e| e.to_string().contains("empty")));
        let e = etcd_endpoints("http://192.0.2.1:2379,unix:///run/etcd.sock").expect_err("unix");
        assert!(e.to_string().contains("unix:// endpoint"), "{e}");
        assert_eq!(
            etcd_endpoints("HTTPS://etcd:2379,Http://192.0.2.1:2379/").expect("any case"),
            ["https://etcd:2379", "http://192.0.2.1:2379"]
        );
        for (never, why) in [
            (
                "http://192.0.2.1:2379 http://192.0.2.9:1",
                "comma separated",
            ),
            (
                "http://192.0.2.1:2379;http://192.0.2.9:1",
                "comma separated",
            ),
            (
                "http://192.0.2.1:2379\thttp://192.0.2.9:1",
                "comma separated",
            ),
            ("http://192.0.2.1:99999", "port that is not"),
            ("http://192.0.2.1:0", "port that is not"),
            ("http://192.0.2.1:", "port that is not"),
            ("http://:2379", "no host"),
            ("http://[fd00::1:2379", "closing bracket"),
            ("http://[192.0.2.1]:2379", "IPv6 address in the brackets"),
            ("http://[fd00::1]2379", "after the IPv6"),
            ("http://192.0.2.1:2379/v3", "path"),
            ("http://root:pw@192.0.2.1:2379", "user name"),
        ] {
            let e = etcd_endpoints(never).expect_err(never);
            assert!(e.to_string().contains(why), "{never}: {e}");
        }
        assert_eq!(
            etcd_endpoints("http://[fd00::1]:2379,http://[fd00::2],etcd-0.etcd:2379")
                .expect("valid"),
            [
                "http://[fd00::1]:2379",
                "http://[fd00::2]",
                "etcd-0.etcd:2379"
            ]
        );
    }

    #[cfg(feature = "etcd")]
    proptest::proptest! {
        /// Any text gives a list without empty or padded entries, or an error; never a panic.
        #[test]
        fn any_etcd_endpoints_text_is_judged(text in ".{0,120}") {
            if let Ok(list) = super::etcd_endpoints(&text) {
                proptest::prop_assert!(!list.is_empty());
                proptest::prop_assert!(list.iter().all(|e| !e.is_empty() && e.trim() == e));
            }
        }
    }

    #[test]
    fn a_cause_named_in_its_parent_is_printed_once() {
        let os = std::io::Error::from_raw_os_error(22);
        let tun = fustian::tun::TunError::SetIff {
            name: "flannel0".into(),
            source: os,
        };
        let e = anyhow::Error::new(tun).context("cannot open the TUN device");
        let text = error_chain(&e);
        assert_eq!(text.matches("os error 22").count(), 1, "{text}");
        assert!(
            text.starts_with("cannot open the TUN device: cannot attach to TUN device flannel0: ")
        );
        // A cause its parent does not name is kept.
        let e = anyhow::anyhow!("inner reason").context("outer");
        assert_eq!(error_chain(&e), "outer: inner reason");
    }
}
