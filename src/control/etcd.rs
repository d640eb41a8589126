//! The etcd agent (feature `etcd`): a node's subnet lease in flannel's key layout, and the
//! other nodes' leases watched into the table.
//!
//! Everything here runs on one control thread with its own single-threaded tokio runtime
//! (the etcd client is asynchronous); packet workers never wait on it, they only load the
//! table snapshots it publishes.
//!
//! What it does, as flanneld does (`pkg/subnet/etcd`, `local_manager.go`):
//!
//! 1. read `<prefix>/config` ([`NetworkConfig`]);
//! 2. acquire a subnet: the lease that already carries this node's public IP, else the subnet
//!    recorded in the subnet file when it is free, else a random free one, created by a
//!    transaction that only succeeds if the key does not exist (a lost race tries again, up to
//!    ten times), attached to an etcd lease with flannel's TTL (24 h);
//! 3. list the other leases and watch the prefix from the listed revision; every change
//!    publishes a new table. Leases of a backend this node cannot speak are ignored and
//!    counted. A compacted watch or a broken connection lists again, with backoff; meanwhile
//!    forwarding goes on with the last table;
//! 4. renew the lease `--subnet-lease-renew-margin` before it expires; a lease that expired
//!    while etcd was unreachable is granted again and the value written back.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use ipnet::{IpNet, Ipv4Net};

use super::lease::{Backend, LeaseValue, NetworkConfig, parse_subnet_key, subnet_key};
use crate::table::{Peer, Snapshot, Table};
use crate::wire::MacAddress;

/// flannel's lease TTL (`local_manager.go`, `subnetTTL`).
pub const LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// How many times a lost race for a subnet is retried (`raceRetries`).
const RACE_RETRIES: usize = 10;

/// Errors of the etcd agent.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The etcd client failed.
    #[error("etcd: {0}")]
    Client(#[from] etcd_client::Error),
    /// The network config is missing or invalid.
    #[error("{0}")]
    Config(String),
    /// No subnet could be acquired.
    #[error("cannot acquire a subnet: {0}")]
    Acquire(String),
    /// The runtime or a file could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Endpoints, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix, `/coreos.com/network` by default.
    pub prefix: String,
    /// Client key, certificate and CA files (TLS when key and certificate are given).
    pub keyfile: Option<PathBuf>,
    /// Client certificate file.
    pub certfile: Option<PathBuf>,
    /// CA certificate file.
    pub cafile: Option<PathBuf>,
    /// User name for etcd's authentication (with `password`).
    pub username: Option<String>,
    /// Password for etcd's authentication.
    pub password: Option<String>,
    /// Renew the lease this long before it expires.
    pub renew_margin: Duration,
    /// The lease TTL (flannel's 24 h; shorter only for tests).
    pub ttl: Duration,
}

/// The agent's state as the metrics and `fustian show` report it.
#[derive(Debug, Default)]
pub struct EtcdState {
    /// 1 while connected and watching, 0 otherwise.
    pub connected: AtomicU64,
    /// Connections lost (or refused) since start.
    pub reconnects: AtomicU64,
    /// Leases seen that this node cannot speak (another backend type, or no VTEP MAC).
    pub leases_ignored: AtomicU64,
    /// Times the own lease was granted again after it expired.
    pub lease_regrants: AtomicU64,
    /// Watch events applied.
    pub events: AtomicU64,
}

impl EtcdState {
    /// Renders the state in the Prometheus text format (`fustian_etcd_*`).
    pub fn render_prometheus(&self) -> String {
        let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
        format!(
            "# TYPE fustian_etcd_connected gauge\nfustian_etcd_connected {}\n\
             # TYPE fustian_etcd_reconnects counter\nfustian_etcd_reconnects {}\n\
             # TYPE fustian_etcd_leases_ignored gauge\nfustian_etcd_leases_ignored {}\n\
             # TYPE fustian_etcd_lease_regrants counter\nfustian_etcd_lease_regrants {}\n\
             # TYPE fustian_etcd_events counter\nfustian_etcd_events {}\n",
            g(&self.connected),
            g(&self.reconnects),
            g(&self.leases_ignored),
            g(&self.lease_regrants),
            g(&self.events),
        )
    }
}

/// What joining the network gave this node.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The network config.
    pub config: NetworkConfig,
    /// This node's subnet.
    pub subnet: Ipv4Net,
    /// The other nodes, as the table wants them.
    pub peers: Vec<Peer>,
}

/// The agent: a runtime, a client and this node's lease.
pub struct Agent {
    rt: tokio::runtime::Runtime,
    client: Client,
    opts: EtcdOptions,
    config: Option<NetworkConfig>,
    public_ip: Ipv4Addr,
    vtep_mac: Option<MacAddress>,
    subnet: Option<Ipv4Net>,
    lease_id: i64,
    leases: BTreeMap<Ipv4Net, LeaseValue>,
    revision: i64,
    state: Arc<EtcdState>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("subnet", &self.subnet)
            .field("lease_id", &self.lease_id)
            .finish_non_exhaustive()
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, EtcdError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| EtcdError::Io {
            what: "start the etcd runtime".into(),
            source,
        })
}

async fn connect(opts: &EtcdOptions) -> Result<Client, EtcdError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    if let (Some(key), Some(cert)) = (&opts.keyfile, &opts.certfile) {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|source| EtcdError::Io {
                what: format!("read {}", p.display()),
                source,
            })
        };
        let mut tls = etcd_client::TlsOptions::new()
            .identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        if let Some(ca) = &opts.cafile {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        }
        options = options.with_tls(tls);
    }
    Ok(Client::connect(&opts.endpoints, Some(options)).await?)
}

impl Agent {
    /// Connects to etcd (waiting up to a few seconds per endpoint).
    ///
    /// # Errors
    ///
    /// [`EtcdError`] when no endpoint answers or a TLS file cannot be read.
    pub fn connect(
        opts: EtcdOptions,
        public_ip: Ipv4Addr,
        vtep_mac: Option<MacAddress>,
    ) -> Result<Self, EtcdError> {
        let rt = runtime()?;
        let client = rt.block_on(connect(&opts))?;
        Ok(Self {
            rt,
            client,
            opts,
            config: None,
            public_ip,
            vtep_mac,
            subnet: None,
            lease_id: 0,
            leases: BTreeMap::new(),
            revision: 0,
            state: Arc::new(EtcdState::default()),
        })
    }

    /// Returns the shared state counters.
    pub fn state(&self) -> Arc<EtcdState> {
        Arc::clone(&self.state)
    }

    /// Reads and validates `<prefix>/config`.
    ///
    /// # Errors
    ///
    /// [`EtcdError::Config`] when it is missing or invalid (the message names the field).
    pub fn network_config(&mut self) -> Result<NetworkConfig, EtcdError> {
        let key = format!("{}/config", self.opts.prefix.trim_end_matches('/'));
        let resp = self.rt.block_on(self.client.get(key.as_str(), None))?;
        let Some(kv) = resp.kvs().first() else {
            return Err(EtcdError::Config(format!(
                "flannel config not found in etcd at {key}"
            )));
        };
        let config = NetworkConfig::parse(kv.value())
            .map_err(|e| EtcdError::Config(format!("{key}: {e}")))?;
        self.config = Some(config.clone());
        Ok(config)
    }

    /// The lease value this node writes.
    fn own_value(&self) -> LeaseValue {
        let vxlan = matches!(
            self.config.as_ref().map(|c| &c.backend),
            Some(Backend::Vxlan { .. })
        );
        let vni = match self.config.as_ref().map(|c| &c.backend) {
            Some(Backend::Vxlan { vni, .. }) => Some(*vni),
            _ => None,
        };
        LeaseValue {
            public_ip: self.public_ip,
            public_ipv6: None,
            backend_type: vxlan.then(|| "vxlan".to_owned()),
            vni,
            vtep_mac: if vxlan { self.vtep_mac } else { None },
        }
    }

    /// Acquires this node's subnet and writes its lease (see the module docs for the order of
    /// preference), then lists every lease. `previous` is the subnet recorded in the subnet
    /// file, if any.
    ///
    /// # Errors
    ///
    /// [`EtcdError`] when etcd fails or every subnet is taken.
    pub fn join(&mut self, previous: Option<Ipv4Net>) -> Result<Joined, EtcdError> {
        let config = match &self.config {
            Some(c) => c.clone(),
            None => self.network_config()?,
        };
        let value = self.own_value().to_json();
        let ttl = self.ttl_secs();
        for _ in 0..RACE_RETRIES {
            self.list()?;
            let mine = self
                .leases
                .iter()
                .find(|(net, l)| l.public_ip == self.public_ip && config.allows(**net))
                .map(|(net, _)| *net);
            let candidate = mine
                .or_else(|| previous.filter(|p| config.allows(*p) && !self.leases.contains_key(p)))
                .or_else(|| self.random_free(&config));
            let Some(subnet) = candidate else {
                return Err(EtcdError::Acquire(format!(
                    "every /{} in {} is leased",
                    config.subnet_len, config.network
                )));
            };
            let key = subnet_key(&self.opts.prefix, subnet);
            let grant = self.rt.block_on(self.client.lease_grant(ttl, None))?;
            let put = TxnOp::put(
                key.as_str(),
                value.as_str(),
                Some(PutOptions::new().with_lease(grant.id())),
            );
            // Reusing our own lease overwrites it; a new one must not exist yet.
            let txn = if mine == Some(subnet) {
                Txn::new().and_then(vec![put])
            } else {
                Txn::new()
                    .when(vec![Compare::version(key.as_str(), CompareOp::Equal, 0)])
                    .and_then(vec![put])
            };
            let resp = self.rt.block_on(self.client.txn(txn))?;
            if resp.succeeded() {
                self.lease_id = grant.id();
                self.subnet = Some(subnet);
                tracing::info!(%subnet, %key, reused = mine.is_some(), "subnet lease acquired");
                self.list()?;
                return Ok(Joined {
                    config,
                    subnet,
                    peers: self.peers(),
                });
            }
            let _ = self.rt.block_on(self.client.lease_revoke(grant.id()));
            tracing::info!(%subnet, "lost the race for a subnet; trying another");
        }
        Err(EtcdError::Acquire(format!(
            "lost the race for a subnet {RACE_RETRIES} times"
        )))
    }

    /// Picks a random free subnet among the first 100 free ones, as flannel does.
    fn random_free(&self, config: &NetworkConfig) -> Option<Ipv4Net> {
        let free: Vec<Ipv4Net> = config
            .subnets()
            .filter(|s| !self.leases.contains_key(s))
            .take(100)
            .collect();
        if free.is_empty() {
            return None;
        }
        let mut seed = [0u8; 8];
        if std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
            .is_err()
        {
            seed = u64::from(std::process::id()).to_ne_bytes();
        }
        let pick = usize::try_from(u64::from_ne_bytes(seed) % free.len() as u64).unwrap_or(0);
        free.get(pick).copied()
    }

    /// Returns `<prefix>/subnets/`, under which the leases live.
    fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.opts.prefix.trim_end_matches('/'))
    }

    /// Returns the lease TTL in seconds as etcd takes it (at least 5).
    fn ttl_secs(&self) -> i64 {
        i64::try_from(self.opts.ttl.as_secs())
            .unwrap_or(i64::MAX)
            .max(5)
    }

    /// Returns the subnet a key-value's key names, `None` for another key.
    fn subnet_of(&self, kv: &etcd_client::KeyValue) -> Option<Ipv4Net> {
        kv.key_str()
            .ok()
            .and_then(|k| parse_subnet_key(&self.opts.prefix, k))
    }

    /// Lists every lease under the prefix and remembers the revision.
    fn list(&mut self) -> Result<(), EtcdError> {
        let prefix = self.subnets_prefix();
        let resp = self.rt.block_on(
            self.client
                .get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )?;
        self.revision = resp.header().map_or(0, |h| h.revision());
        self.leases.clear();
        for kv in resp.kvs() {
            let Some(net) = self.subnet_of(kv) else {
                continue;
            };
            match LeaseValue::parse(kv.value()) {
                Ok(v) => {
                    self.leases.insert(net, v);
                }
                Err(e) => tracing::warn!(subnet = %net, "ignoring a lease: {e}"),
            }
        }
        Ok(())
    }

    /// Turns the leases other than this node's into peers this node can reach.
    fn peers(&self) -> Vec<Peer> {
        let Some(config) = &self.config else {
            return Vec::new();
        };
        let (kind, port, vni) = match &config.backend {
            Backend::Udp { port } => (
                "udp",
                port.unwrap_or(crate::wire::flannel::DEFAULT_PORT),
                None,
            ),
            Backend::Vxlan { vni, port } => (
                "vxlan",
                port.unwrap_or(crate::wire::vxlan::DEFAULT_PORT),
                Some(*vni),
            ),
            Backend::Other(_) => return Vec::new(),
        };
        let mut ignored = 0;
        let mut peers = Vec::new();
        for (net, lease) in &self.leases {
            if Some(*net) == self.subnet {
                continue;
            }
            let speaks = lease.backend() == kind
                && (kind == "udp" || (lease.vtep_mac.is_some() && lease.vni.or(vni) == vni));
            if !speaks {
                ignored += 1;
                continue;
            }
            peers.push(Peer {
                subnet: IpNet::V4(*net),
                endpoint: SocketAddr::new(IpAddr::V4(lease.public_ip), port),
                vtep_mac: lease.vtep_mac,
            });
        }
        self.state.leases_ignored.store(ignored, Ordering::Relaxed);
        peers
    }

    /// Runs the agent until `stop` is set: watches the leases into `table`, renews this node's
    /// lease, reconnects with backoff.
    pub fn run(mut self, table: &Table, stop: &AtomicBool) {
        let mut backoff = Duration::from_millis(500);
        let mut renew_at = Instant::now() + self.renew_interval();
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            match self.session(table, stop, &mut renew_at) {
                Ok(()) => break,
                Err(e) => {
                    self.state.connected.store(0, Ordering::Relaxed);
                    self.state.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("etcd: {e}; forwarding goes on with the last table");
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(500);
            }
            let until = Instant::now() + backoff;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        if let Some(subnet) = self.subnet {
            tracing::info!(%subnet, "etcd agent stopped; the lease stays until it expires");
        }
    }

    fn renew_interval(&self) -> Duration {
        self.opts
            .ttl
            .saturating_sub(self.opts.renew_margin)
            .max(Duration::from_secs(1))
    }

    /// One connected period: make sure the lease exists, list, publish, watch.
    fn session(
        &mut self,
        table: &Table,
        stop: &AtomicBool,
        renew_at: &mut Instant,
    ) -> Result<(), EtcdError> {
        if self.state.reconnects.load(Ordering::Relaxed) > 0 {
            self.client = self.rt.block_on(connect(&self.opts))?;
        }
        self.ensure_lease()?;
        self.list()?;
        self.publish(table);
        let prefix = self.subnets_prefix();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.revision + 1);
        let rt = &self.rt;
        let mut stream = rt.block_on(self.client.watch(prefix.as_str(), Some(options)))?;
        self.state.connected.store(1, Ordering::Relaxed);
        tracing::info!(revision = self.revision, "etcd: watching leases");
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if Instant::now() >= *renew_at {
                self.renew()?;
                *renew_at = Instant::now() + self.renew_interval();
            }
            let next = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(200), stream.message()).await
            });
            let resp = match next {
                Err(_) => continue,
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(None)) => return Err(EtcdError::Config("the watch ended".into())),
                Ok(Ok(Some(resp))) => resp,
            };
            if resp.compact_revision() > 0 || resp.canceled() {
                return Err(EtcdError::Config(format!(
                    "watch cancelled (compacted to {}): listing again",
                    resp.compact_revision()
                )));
            }
            let mut changed = false;
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let Some(net) = self.subnet_of(kv) else {
                    continue;
                };
                self.state.events.fetch_add(1, Ordering::Relaxed);
                match ev.event_type() {
                    EventType::Put => match LeaseValue::parse(kv.value()) {
                        Ok(v) => {
                            changed |= self.leases.insert(net, v.clone()) != Some(v);
                        }
                        Err(e) => tracing::warn!(subnet = %net, "ignoring a lease: {e}"),
                    },
                    EventType::Delete => {
                        changed |= self.leases.remove(&net).is_some();
                        if Some(net) == self.subnet {
                            tracing::warn!(subnet = %net, "own lease deleted or expired; writing it again");
                            self.ensure_lease()?;
                        }
                    }
                }
            }
            if let Some(h) = resp.header() {
                self.revision = h.revision();
            }
            if changed {
                self.publish(table);
            }
        }
    }

    /// Grants the lease again and rewrites the value when the lease is gone (expired while
    /// etcd was unreachable, or deleted).
    fn ensure_lease(&mut self) -> Result<(), EtcdError> {
        let Some(subnet) = self.subnet else {
            return Ok(());
        };
        let alive = self.lease_id != 0
            && self
                .rt
                .block_on(self.client.lease_time_to_live(self.lease_id, None))?
                .ttl()
                > 0;
        let key = subnet_key(&self.opts.prefix, subnet);
        let current = self.rt.block_on(self.client.get(key.as_str(), None))?;
        let present = current.kvs().first().is_some_and(|kv| {
            LeaseValue::parse(kv.value()).is_ok_and(|v| v.public_ip == self.public_ip)
        });
        if alive && present {
            return Ok(());
        }
        let ttl = self.ttl_secs();
        let grant = self.rt.block_on(self.client.lease_grant(ttl, None))?;
        let value = self.own_value().to_json();
        // Only if nobody else took the subnet meanwhile.
        let txn = Txn::new()
            .when(vec![Compare::version(key.as_str(), CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(
                key.as_str(),
                value.as_str(),
                Some(PutOptions::new().with_lease(grant.id())),
            )]);
        let ok = if present {
            self.rt
                .block_on(self.client.put(
                    key.as_str(),
                    value.as_str(),
                    Some(PutOptions::new().with_lease(grant.id())),
                ))
                .map(|_| true)?
        } else {
            self.rt.block_on(self.client.txn(txn))?.succeeded()
        };
        if ok {
            self.lease_id = grant.id();
            self.state.lease_regrants.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%subnet, "subnet lease granted again");
            Ok(())
        } else {
            Err(EtcdError::Acquire(format!(
                "{subnet} was taken by another node while this one was away"
            )))
        }
    }

    /// Renews the lease once (a keep-alive resets its TTL).
    fn renew(&mut self) -> Result<(), EtcdError> {
        let (mut keeper, mut stream) = self
            .rt
            .block_on(self.client.lease_keep_alive(self.lease_id))?;
        self.rt.block_on(keeper.keep_alive())?;
        let resp = self.rt.block_on(stream.message())?;
        match resp {
            Some(r) if r.ttl() > 0 => {
                tracing::info!(ttl = r.ttl(), "subnet lease renewed");
                Ok(())
            }
            _ => self.ensure_lease(),
        }
    }

    /// Publishes a table made of this node's subnet and the current peers.
    fn publish(&self, table: &Table) {
        let Some(subnet) = self.subnet else { return };
        match Snapshot::new(vec![IpNet::V4(subnet)], self.peers()) {
            Ok(snap) => {
                table.publish(snap);
            }
            Err(e) => tracing::warn!("etcd leases do not make a table: {e}"),
        }
    }
}

/// Reads `FLANNEL_SUBNET` from a subnet file written earlier (flanneld's way of asking for the
/// same subnet after a restart).
pub fn previous_subnet(path: &std::path::Path) -> Option<Ipv4Net> {
    let text = std::fs::read_to_string(path).ok()?;
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))?;
    let net: Ipv4Net = value.trim().parse().ok()?;
    Some(net.trunc())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn reads_the_subnet_back_from_a_subnet_file() {
        let dir = std::env::temp_dir().join(format!("fustian-subnet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("subnet.env");
        std::fs::write(
            &path,
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\n",
        )
        .expect("write");
        assert_eq!(
            previous_subnet(&path),
            Some("10.244.7.0/24".parse().expect("literal"))
        );
        std::fs::write(&path, "FLANNEL_SUBNET=not-a-subnet\n").expect("write");
        assert_eq!(previous_subnet(&path), None);
        assert_eq!(previous_subnet(&dir.join("missing")), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    proptest! {
        #[test]
        fn any_subnet_file_gives_a_subnet_or_none(text in ".{0,200}") {
            let dir = std::env::temp_dir().join(format!("fustian-subnet-p{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("dir");
            let path = dir.join("subnet.env");
            std::fs::write(&path, &text).expect("write");
            if let Some(net) = previous_subnet(&path) {
                prop_assert_eq!(net, net.trunc());
            }
        }
    }
}
