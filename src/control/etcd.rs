//! The etcd agent (feature `etcd`): a node's subnet lease in flannel's key layout, and the
//! other nodes' leases watched into the table.
//!
//! Everything here runs on one control thread with its own single-threaded tokio runtime
//! (the etcd client is asynchronous); packet workers never wait on it, they only load the
//! table snapshots it publishes.
//!
//! What it does, as flanneld does (`pkg/subnet/etcd`, `local_manager.go`):
//!
//! 1. reach etcd and read `<prefix>/config` ([`NetworkConfig`]), waiting for both: an
//!    unreachable etcd is tried again about once a second, a missing or invalid config is
//!    read again until it is there (flanneld's `getConfig` loop). The endpoints are tried one
//!    by one and the first that answers is used, because the etcd client refuses a whole list
//!    when one member of it is down; a broken connection moves on to the next;
//! 2. acquire a subnet: the lease that already carries this node's public IP, else the subnet
//!    recorded in the subnet file when it is free, else a random free one, created by a
//!    transaction that only succeeds if the key does not exist (a lost race tries again, up to
//!    ten times), attached to an etcd lease with flannel's TTL (24 h). Without a lease to
//!    reuse, the leases carrying this node's public IP at keys the config does not allow are
//!    deleted first, as flanneld deletes its incompatible lease. Reusing, rewriting or
//!    deleting a key listed as this node's goes ahead only while the key keeps the
//!    `create_revision` listed, so a lease another node wrote meanwhile is never touched;
//! 3. list the other leases and watch the prefix from the listed revision; every change
//!    publishes a new table. Each lease is judged on its own
//!    ([`judge_leases`](super::lease::judge_leases)): one that flanneld's allocator could not
//!    have handed out, or that names an address no peer can have, is left out and counted by
//!    reason, and never keeps the good ones out of the table. Leases of a backend this node
//!    cannot speak are ignored and counted. A compacted watch or a broken connection lists
//!    again, with backoff; meanwhile forwarding goes on with the last table;
//! 4. renew the lease `--subnet-lease-renew-margin` before it expires; a lease that expired
//!    while etcd was unreachable is granted again and the value written back;
//! 5. on a dual-stack network (`EnableIPv6`) one key holds both of the node's subnets
//!    (`10.244.1.0-24&fd00:10:244:1::-64`), the value its `PublicIPv6` and the IPv6 VTEP in
//!    `BackendV6Data`, and every lease with an IPv6 subnet is two peers: its IPv4 subnet at its
//!    `PublicIP`, its IPv6 subnet at its `PublicIPv6` (with `BackendV6Data`'s MAC) when both
//!    nodes have an IPv6 underlay, else at its `PublicIP` too. As flanneld, a node of such a
//!    network must have an IPv6 underlay address (`--public-ipv6`);
//! 6. keep its own lease: deleted, it is written again; overwritten by someone else while it
//!    is still this node's (its etcd lease alive), it is written back at once (either at most
//!    once a second), unless the value is this node's exact twin on another etcd lease (a second
//!    node with the same address). Deleted and created again by someone else, it is judged as
//!    peers judge a lease: another node's lease or a reservation for another address makes
//!    the node stop; junk is written back. flanneld shuts down when its lease goes away;
//!    fustian keeps forwarding for its subnet and restores the key, so other nodes go on
//!    routing to it;
//! 7. bound what any etcd writer can put under the prefix ([`Entries`]): keys that are not in
//!    flannel's key form are counted, not kept; the others are kept up to a budget
//!    ([`MAX_NETWORK_KEYS`], [`MAX_OTHER_KEYS`]), the rest counted (`etcd_keys_untracked`)
//!    and listed in once deletions make room; log lines about leases, about changes of the
//!    network config and of this node's own key are rate limited ([`LineBudget`]).

use std::collections::HashSet;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::lease::{
    Accepted, Backend, LeaseValue, NetworkConfig, OwnNode, Rejection, StoredLease, SubnetKey,
    allocator_form, flannel_subnet_key, judge_leases_dual, lease_vni, parse_subnet_key,
};
use crate::table::{Peer, Snapshot, Table};
use crate::wire::MacAddress;

/// flannel's lease TTL (`local_manager.go`, `subnetTTL`).
pub const LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// The shortest time between two publishes of the table while lease changes keep coming.
const PUBLISH_GAP: Duration = Duration::from_millis(100);
/// How many times a lost race for a subnet is retried (`raceRetries`).
const RACE_RETRIES: usize = 10;

/// Keys per page when listing the leases: a flanneld lease is a few hundred bytes, so a page
/// is well under the client's 4 MiB message limit unless values are oversized (then the page
/// shrinks, see `list`).
const LIST_PAGE: i64 = 1000;

/// The longest key kept as it is, past `<prefix>/subnets/` (the prefix itself is bounded at
/// start, [`super::lease::MAX_PREFIX`]); a longer one (or one that is not UTF-8) is kept under
/// a short stand-in of the same meaning, "not a lease key" (see [`entry_key`]).
pub const MAX_ENTRY_KEY: usize = 512;

pub use super::lease::MAX_LEASE_VALUE;

/// Returns the name a key listed under a prefix of `under` bytes is kept under: the key itself
/// when it is UTF-8 and at most [`MAX_ENTRY_KEY`] bytes longer than the prefix, else its first 64 bytes (lossy), its length and a 64-bit FNV-1a
/// hash of all of it. The stand-in holds characters (`#`, a space) no lease key has, so it
/// is refused as a bad key, and two different raw keys keep two entries (up to the hash).
pub fn entry_key(raw: &[u8], under: usize) -> String {
    match std::str::from_utf8(raw) {
        Ok(text) if raw.len() <= under.saturating_add(MAX_ENTRY_KEY) => text.to_owned(),
        _ => {
            let hash = raw.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
            });
            format!(
                "{}# {} bytes, fnv {hash:016x}",
                String::from_utf8_lossy(&raw[..raw.len().min(64)]),
                raw.len()
            )
        }
    }
}

/// Returns the end of etcd's range for every key starting with `prefix` (the prefix with its
/// last byte below 0xff incremented, the rest dropped; `\0` when it is all 0xff: to the end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
/// The most keys of the form this network's allocator writes ([`KeyClass::Network`]) a node
/// tracks at once: every /24 of a /8 (65 535 subnets), far above any cluster flannel runs
/// (Kubernetes supports 5 000 nodes). Only a dual-stack network, whose keys pair any IPv4
/// subnet with any IPv6 one, lets a writer put more.
pub const MAX_NETWORK_KEYS: usize = 65_536;
/// The most other keys in flannel's key form ([`KeyClass::Other`]) a node tracks at once:
/// the leases of a cluster that large left over from an earlier network config (which the
/// node deletes when they carry its address) fit; a writer's flood of them does not crowd
/// out the network's own leases, which have their own budget.
pub const MAX_OTHER_KEYS: usize = 16_384;
/// The shortest time between two lists of every key made to pick up keys left untracked
/// (the budget full when they came) once deletions have made room: a list reads every key
/// under the prefix, junk included.
const RELIST_GAP: Duration = Duration::from_secs(10);
/// What the lines about this node's own key are called in [`LineBudget::take`].
const OWN_LINES: &str = "changes of this node's own lease";
/// The counters that still count what the lines about this node's own key report.
const OWN_COUNTERS: &str = "etcd_own_lease_restored and etcd_own_lease_shared";
/// The shortest time between two log lines about keys that are not lease keys.
const BAD_KEY_LOG_GAP: Duration = Duration::from_secs(60);
/// The most leases newly left out of the table (or ignored) logged one by one a minute: each
/// lease is logged once, and a writer's flood of leases would otherwise be as many lines.
const MAX_LEASE_LINES: usize = 32;
/// The period [`MAX_LEASE_LINES`] counts over.
const LEASE_LINES_PERIOD: Duration = Duration::from_secs(60);

/// A budget of [`MAX_LEASE_LINES`] log lines per [`LEASE_LINES_PERIOD`] for one kind of line
/// (lines an etcd writer causes, one per put or delete of a key, say).
#[derive(Debug)]
struct LineBudget {
    since: Instant,
    said: usize,
}

/// What [`LineBudget::admit`] allows for one more line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    /// Log it; `quiet` lines of the period before were not logged (0: none).
    Line {
        /// Lines left unlogged in the period before.
        quiet: usize,
    },
    /// The first line past the budget of the period: say that the rest are only counted.
    Cap,
    /// Not logged.
    Quiet,
}

impl LineBudget {
    fn new() -> Self {
        Self {
            since: Instant::now(),
            said: 0,
        }
    }

    /// Counts one more line at `now` and returns whether it may be logged. A period starts
    /// at the first line after the one before has passed.
    fn admit(&mut self, now: Instant) -> Admit {
        let mut quiet = 0;
        if now.saturating_duration_since(self.since) >= LEASE_LINES_PERIOD {
            quiet = self.said.saturating_sub(MAX_LEASE_LINES);
            (self.since, self.said) = (now, 0);
        }
        self.said = self.said.saturating_add(1);
        match self.said {
            n if n <= MAX_LEASE_LINES => Admit::Line { quiet },
            n if n == MAX_LEASE_LINES + 1 => Admit::Cap,
            _ => Admit::Quiet,
        }
    }

    /// Returns true when one more line about `what` may be logged; the first time it may
    /// not in a period, says so, naming the `counter` that still counts them, and the first
    /// line logged after such a period says how many were left out.
    fn take(&mut self, what: &str, counter: &str) -> bool {
        match self.admit(Instant::now()) {
            Admit::Line { quiet } => {
                if quiet > 0 {
                    tracing::warn!(
                        "{quiet} more {what} were not logged one by one in the last {} s                          period (counted in {counter})",
                        LEASE_LINES_PERIOD.as_secs()
                    );
                }
                true
            }
            Admit::Cap => {
                tracing::warn!(
                    "more than {MAX_LEASE_LINES} {what} to log in {} s: the rest are counted \
                     in {counter}, not logged one by one, for the rest of the period",
                    LEASE_LINES_PERIOD.as_secs()
                );
                false
            }
            Admit::Quiet => false,
        }
    }
}

/// The name and entry a key-value listed under a prefix of `under` bytes is kept as: at most
/// [`MAX_ENTRY_KEY`] bytes of key past the prefix ([`entry_key`]) and [`MAX_LEASE_VALUE`]` + 1`
/// of value (enough for the judge to refuse it as too long).
fn entry(kv: &etcd_client::KeyValue, under: usize, class: KeyClass) -> (String, Entry) {
    let value = kv.value();
    let key = entry_key(kv.key(), under);
    // Read from the whole key: the name kept for a long one does not end as the key does.
    let loose = (class == KeyClass::Other)
        .then(|| flannel_subnet_key(kv.key()))
        .flatten();
    (
        key,
        Entry {
            create_revision: kv.create_revision(),
            lease: kv.lease(),
            value: value[..value.len().min(MAX_LEASE_VALUE + 1)].to_vec(),
            class,
            loose,
        },
    )
}

/// Which budget a key in flannel's key form counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyClass {
    /// A key this network's allocator could write: its IPv4 subnet allowed by the config, with
    /// an allowed IPv6 subnet on a dual-stack network and none on an IPv4 one.
    Network,
    /// Any other key in flannel's form (another network's, another length, a missing or
    /// extra IPv6 half).
    Other,
}

impl KeyClass {
    const fn index(self) -> usize {
        match self {
            Self::Network => 0,
            Self::Other => 1,
        }
    }
}

/// Returns the class of the key `raw` under `prefix` on a network with `config`, `None` when
/// it is not in flannel's key form (not UTF-8, not `<prefix>/subnets/A.B.C.D-LEN[&IPV6-LEN]`)
/// and flanneld would not read it as a lease either ([`flannel_subnet_key`]): such a key is
/// never a lease, and is counted, not kept. A key flanneld reads as a lease though it is not
/// in flannel's form (`10.244.3.0-024`, `x10.244.3.0-24`) is [`KeyClass::Other`]: kept, within
/// that budget, to hold its subnet for allocation, never routed.
fn classify(prefix: &str, config: Option<&NetworkConfig>, raw: &[u8]) -> Option<KeyClass> {
    let canonical = std::str::from_utf8(raw)
        .ok()
        .and_then(|k| parse_subnet_key(prefix, k));
    let Some(key) = canonical else {
        return flannel_subnet_key(raw).map(|_| KeyClass::Other);
    };
    let Some(config) = config else {
        return Some(KeyClass::Network);
    };
    Some(if allocator_form(config, &key) {
        KeyClass::Network
    } else {
        KeyClass::Other
    })
}

/// The keys under `<prefix>/subnets/` a node tracks, bounded whatever an etcd writer puts
/// there: keys in flannel's key form up to a budget per [`KeyClass`] ([`MAX_NETWORK_KEYS`],
/// [`MAX_OTHER_KEYS`]; this node's own key always), and for the rest only counts. A key put
/// while its budget is full is left untracked and counted; once deletions make room, the
/// agent lists again to pick such keys up ([`RELIST_GAP`]). Keys not in flannel's form are
/// never leases: they are only counted (`bad_key`), not kept, so a flood of them costs a
/// node a counter, not memory or a table rebuild per key.
///
/// The counts stay exact without keeping the names: a put that created its key (etcd's
/// `version` 1) adds one, a delete (only ever of a key that exists) takes one away, and a put
/// of an untracked key that finds room moves it from untracked to tracked.
#[derive(Debug, Clone)]
struct Entries {
    map: BTreeMap<String, Entry>,
    /// Keys tracked, per [`KeyClass::index`].
    tracked: [usize; 2],
    /// Keys in flannel's form in etcd but not tracked (their budget was full), per class.
    untracked: [u64; 2],
    /// The budget of each class.
    limits: [usize; 2],
    /// Keys under the prefix that are not in flannel's key form.
    bad_keys: u64,
}

impl Default for Entries {
    fn default() -> Self {
        Self::with_limits([MAX_NETWORK_KEYS, MAX_OTHER_KEYS])
    }
}

impl std::ops::Deref for Entries {
    type Target = BTreeMap<String, Entry>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl Entries {
    fn with_limits(limits: [usize; 2]) -> Self {
        Self {
            map: BTreeMap::new(),
            tracked: [0; 2],
            untracked: [0; 2],
            limits,
            bad_keys: 0,
        }
    }

    /// Applies a put of `key` (`created`: the put created it, or it is listed anew), kept
    /// even over its budget when `keep` (this node's key). Returns true when the tracked
    /// entries changed.
    fn put(&mut self, key: String, entry: Entry, created: bool, keep: bool) -> bool {
        if let Some(old) = self.map.get_mut(&key) {
            let changed = *old != entry;
            *old = entry;
            return changed;
        }
        let c = entry.class.index();
        if keep || self.tracked[c] < self.limits[c] {
            if !created {
                // Not new to etcd, not tracked: it was an untracked key.
                self.untracked[c] = self.untracked[c].saturating_sub(1);
            }
            self.tracked[c] += 1;
            self.map.insert(key, entry);
            true
        } else {
            if created {
                self.untracked[c] += 1;
            }
            false
        }
    }

    /// Applies the deletion of `key` of class `class` from etcd. Returns true when the
    /// tracked entries changed.
    fn delete(&mut self, key: &str, class: KeyClass) -> bool {
        if self.forget(key) {
            return true;
        }
        let c = class.index();
        self.untracked[c] = self.untracked[c].saturating_sub(1);
        false
    }

    /// Stops tracking `key` (this node deleted it itself). Returns true when it was tracked.
    fn forget(&mut self, key: &str) -> bool {
        match self.map.remove(key) {
            Some(e) => {
                self.tracked[e.class.index()] -= 1;
                true
            }
            None => false,
        }
    }

    /// Returns the keys in flannel's form in etcd that are not tracked.
    fn untracked(&self) -> u64 {
        self.untracked.iter().sum()
    }

    /// Returns true when some class has untracked keys and room for them.
    fn room_for_untracked(&self) -> bool {
        (0..2).any(|c| self.untracked[c] > 0 && self.tracked[c] < self.limits[c])
    }
}

/// Reads every key under `prefix` at one revision and hands each to `each`; returns that
/// revision. The keys are read in pages of [`LIST_PAGE`], each small enough for the client's
/// 4 MiB message limit: a page that outgrows it (a few oversized values) is read again at half
/// the size, so whatever sits under the prefix cannot keep a node (or doctor) from listing.
///
/// # Errors
///
/// The client's error.
pub async fn list_pages(
    client: &mut Client,
    prefix: &str,
    mut each: impl FnMut(&etcd_client::KeyValue),
) -> Result<i64, etcd_client::Error> {
    let end = prefix_end(prefix.as_bytes());
    let mut from = prefix.as_bytes().to_vec();
    let mut revision = 0;
    let mut page = LIST_PAGE;
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(page);
        if revision != 0 {
            options = options.with_revision(revision);
        }
        let resp = match client.get(from.clone(), Some(options)).await {
            Ok(resp) => resp,
            Err(e) if page > 1 && e.to_string().contains("message length too large") => {
                page = (page / 2).max(1);
                continue;
            }
            Err(e) => return Err(e),
        };
        if revision == 0 {
            revision = resp.header().map_or(0, |h| h.revision());
        }
        for kv in resp.kvs() {
            each(kv);
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    Ok(revision)
}

/// How long to wait between two attempts to reach etcd or read the config at start
/// (flanneld's `getConfig` retries every second).
const WAIT_RETRY: Duration = Duration::from_secs(1);
/// The shortest time between two restorations of this node's overwritten lease, so two
/// writers that both claim one key do not rewrite it as fast as etcd allows.
const RESTORE_SPACING: Duration = Duration::from_secs(1);

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
    /// The network is dual stack and this node has no IPv6 underlay address.
    #[error(
        "the network config enables IPv6 (EnableIPv6, IPv6Network {0}) and the underlay \
         interface has no global IPv6 address: add one, or give this node's IPv6 address with \
         --public-ipv6 (or FLANNELD_PUBLIC_IPV6)"
    )]
    NeedsIpv6(Ipv6Net),
    /// This node's subnet was leased to another node after this node's etcd lease expired
    /// (etcd out of reach past the TTL, or the node paused).
    #[error(
        "this node's subnet {0} was leased to another node after this node's etcd lease \
         expired; restart the node to acquire another subnet"
    )]
    SubnetTaken(Ipv4Net),
    /// This node's key was deleted and created again by another node, on that node's etcd
    /// lease, with a lease value its peers take.
    #[error(
        "this node's subnet {subnet} was leased to another node (PublicIP {public_ip}, etcd \
         lease {lease:x}): its key was deleted and created again by that node; restart the \
         node to acquire another subnet"
    )]
    SubnetLeasedAgain {
        /// This node's subnet.
        subnet: Ipv4Net,
        /// The other node's address.
        public_ip: Ipv4Addr,
        /// The other node's etcd lease.
        lease: i64,
    },
    /// This node's key was deleted and created again without an etcd lease, with a lease
    /// value of another address: a flannel reservation of the subnet for that address.
    #[error(
        "this node's subnet {subnet} is reserved for {public_ip}: its key was deleted and \
         created again without an etcd lease, which flannel takes as a reservation; restart \
         the node to acquire another subnet"
    )]
    SubnetReserved {
        /// This node's subnet.
        subnet: Ipv4Net,
        /// The address it is reserved for.
        public_ip: Ipv4Addr,
    },
    /// etcd cancelled the watch for another reason than a compaction (the member lost its
    /// leader): the next endpoint is tried.
    #[error("etcd cancelled the watch ({0}); trying the next endpoint")]
    WatchLost(String),
    /// etcd cancelled the watch (its start revision compacted away): the connection is fine,
    /// the leases are listed again.
    #[error("watch cancelled (compacted to revision {0}); listing again")]
    WatchCancelled(i64),
    /// No endpoint answered.
    #[error("no etcd endpoint answers ({0})")]
    Unreachable(String),
    /// Every endpoint that answered refused the user name and password.
    #[error("etcd refused the login ({0})")]
    LoginRefused(String),
    /// The node was told to stop while it was joining.
    #[error("stopped while joining")]
    Stopped,
    /// The checks of this host that run before the node writes its lease refused the node
    /// (its TUN device or UDP port held by another node, say): nothing was written.
    #[error(transparent)]
    Refused(Box<dyn std::error::Error + Send + Sync>),
    /// The runtime or a file could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// The files and login of flanneld's `--etcd-*` flags, shared by the node and `doctor`.
#[derive(Debug, Clone, Default)]
pub struct EtcdAccess {
    /// Client key (`--etcd-keyfile`, with `certfile`).
    pub keyfile: Option<PathBuf>,
    /// Client certificate (`--etcd-certfile`, with `keyfile`).
    pub certfile: Option<PathBuf>,
    /// CA certificate (`--etcd-cafile`) the servers' certificates must chain to; without
    /// it, the system's trusted roots.
    pub cafile: Option<PathBuf>,
    /// User name for etcd's authentication (with `password`); empty is no login.
    pub username: Option<String>,
    /// Password for etcd's authentication.
    pub password: Option<String>,
}

impl From<&crate::cli::EtcdAccessArgs> for EtcdAccess {
    fn from(args: &crate::cli::EtcdAccessArgs) -> Self {
        Self {
            keyfile: args.etcd_keyfile.clone(),
            certfile: args.etcd_certfile.clone(),
            cafile: args.etcd_cafile.clone(),
            username: args.etcd_username.clone(),
            password: args.etcd_password.clone(),
        }
    }
}

/// The longest TLS file read (a PEM chain is a few KiB).
const MAX_TLS_FILE: usize = 1 << 20;

impl EtcdAccess {
    /// Returns the client's connect options for `endpoint`: timeouts, the login, and for an
    /// `https://` endpoint TLS (a client certificate when key and certificate are given, a CA
    /// when given). An `http://` (or bare `host:port`) endpoint gets no TLS, as Go's client
    /// leaves the credentials out for it (etcd's client here would refuse the endpoint). The
    /// files are read and checked either way.
    ///
    /// # Errors
    ///
    /// [`EtcdError::Config`] for a key without its certificate or the reverse (flanneld
    /// refuses either); [`EtcdError::Io`] when a file cannot be read (each is read bounded,
    /// only a regular file, without blocking on a FIFO).
    pub fn connect_options(&self, endpoint: &str) -> Result<ConnectOptions, EtcdError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            // As flanneld's watch (`WithRequireLeader`): a member cut off from the others'
            // majority cancels the watch instead of serving a stale one silently, and the
            // node goes on to the next endpoint.
            .with_require_leader(true)
            // An expired login token (etcd's --auth-token-ttl) is renewed on the request that
            // finds it, as Go's client does, rather than failing it and reconnecting.
            .with_auto_token_refresh(true);
        // An empty user name is no login, as flanneld reads it (its default is the empty string).
        if let (Some(user), Some(password)) = (&self.username, &self.password)
            && !user.is_empty()
        {
            options = options.with_user(user.clone(), password.clone());
        }
        let read = |p: &PathBuf| {
            crate::sys::read_config_file(p, MAX_TLS_FILE).map_err(|source| EtcdError::Io {
                what: format!("read {}", p.display()),
                source,
            })
        };
        let identity = match (&self.keyfile, &self.certfile) {
            (Some(key), Some(cert)) => {
                let (cert_pem, key_pem) = (read(cert)?, read(key)?);
                check_certificates(cert, &cert_pem, true)?;
                check_private_key(key, &key_pem)?;
                Some(etcd_client::Identity::from_pem(cert_pem, key_pem))
            }
            (None, None) => None,
            // flanneld, given only one of the pair, presents no client certificate and goes
            // on; so does fustian, saying which half is missing.
            (Some(_), None) | (None, Some(_)) => {
                tracing::warn!(
                    "--etcd-certfile and --etcd-keyfile go together and only {} was given: no \
                     client certificate is presented to etcd",
                    if self.keyfile.is_some() {
                        "--etcd-keyfile"
                    } else {
                        "--etcd-certfile"
                    }
                );
                None
            }
        };
        let ca = match &self.cafile {
            Some(path) => {
                let pem = read(path)?;
                check_certificates(path, &pem, false)?;
                Some(pem)
            }
            None => None,
        };
        if endpoint.starts_with("https://") {
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(identity) = identity {
                tls = tls.identity(identity);
            }
            // The server's certificate chains to `--etcd-cafile` when given, else to the
            // system's trusted roots (`SSL_CERT_FILE`, `SSL_CERT_DIR` or the distribution's
            // store), as flanneld's Go client does.
            tls = match ca {
                Some(ca) => tls.ca_certificate(etcd_client::Certificate::from_pem(ca)),
                None => tls.with_native_roots(),
            };
            options = options.with_tls(tls);
        }
        Ok(options)
    }
}

/// Checks that `pem` (read from `path`) holds PEM certificates and nothing else that claims
/// to be one; with `client`, that the first (this node's) is not X.509 version 1, which the TLS
/// library refuses at the first connection with nothing but "transport error".
fn check_certificates(path: &std::path::Path, pem: &str, client: bool) -> Result<(), EtcdError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let mut first = None;
    for (i, cert) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
        let cert = cert.map_err(|e| {
            EtcdError::Config(format!(
                "{}: certificate {} is not valid PEM ({e})",
                path.display(),
                i + 1
            ))
        })?;
        if x509_version_given(&cert).is_none() {
            return Err(EtcdError::Config(format!(
                "{}: certificate {} is not an X.509 certificate (its DER does not parse)",
                path.display(),
                i + 1
            )));
        }
        first.get_or_insert(cert);
    }
    let Some(first) = first else {
        return Err(EtcdError::Config(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    };
    if client && x509_version_given(&first) == Some(false) {
        return Err(EtcdError::Config(format!(
            "{}: an X.509 version 1 certificate (made without extensions), which this etcd \
             client's TLS library refuses: issue it as version 3 (with extensions, e.g. \
             extendedKeyUsage = clientAuth)",
            path.display()
        )));
    }
    Ok(())
}

/// Checks that `pem` (read from `path`) holds a PEM private key.
fn check_private_key(path: &std::path::Path, pem: &str) -> Result<(), EtcdError> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject as _;
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
        EtcdError::Config(format!("{} holds no PEM private key ({e})", path.display()))
    })?;
    // PKCS #8, PKCS #1 and SEC 1 keys are each one DER SEQUENCE filling the block.
    let der = key.secret_der();
    match der_header(der) {
        Some((0x30, body)) if body.end == der.len() => Ok(()),
        _ => Err(EtcdError::Config(format!(
            "{}: the private key is not DER (its PEM block does not decode to a key)",
            path.display()
        ))),
    }
}

/// Reads one DER tag-length header at the start of `der`: the tag and the content's range.
fn der_header(der: &[u8]) -> Option<(u8, std::ops::Range<usize>)> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, skip) = match first {
        0..=0x7f => (usize::from(first), 0),
        0x81..=0x84 => {
            let n = usize::from(first & 0x7f);
            let bytes = rest.get(..n)?;
            (
                bytes.iter().fold(0usize, |a, &b| (a << 8) | usize::from(b)),
                n,
            )
        }
        _ => return None,
    };
    let start = 2 + skip;
    Some((tag, start..start.checked_add(len)?))
}

/// Returns whether an X.509 certificate's DER names its version (`[0] EXPLICIT`, present for
/// versions 2 and 3, absent for version 1); `None` when it is not a certificate's shape.
pub fn x509_version_given(der: &[u8]) -> Option<bool> {
    let (tag, body) = der_header(der)?;
    let cert = der.get(body).filter(|_| tag == 0x30)?;
    let (tag, tbs) = der_header(cert)?;
    if tag != 0x30 {
        return None;
    }
    Some(*cert.get(tbs.start)? == 0xa0)
}

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Endpoints, e.g. `http://127.0.0.1:2379`, tried one by one.
    pub endpoints: Vec<String>,
    /// Key prefix, `/coreos.com/network` by default.
    pub prefix: String,
    /// TLS files and login.
    pub access: EtcdAccess,
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
    /// Leases left out of the table, by [`Rejection`] (indexed as [`Rejection::ALL`]).
    pub leases_rejected: [AtomicU64; Rejection::ALL.len()],
    /// Times the own lease was granted again after it expired.
    pub lease_regrants: AtomicU64,
    /// Times the own lease was found overwritten by someone else and written back.
    pub own_lease_restored: AtomicU64,
    /// Times the own key was found put on another etcd lease with this node's `PublicIP` (a
    /// second node with the same address) and left to it.
    pub own_lease_shared: AtomicU64,
    /// When this node's etcd lease expires unless renewed, in milliseconds of
    /// [`crate::sys::monotonic_ms`] (0: no lease yet).
    pub lease_expires_ms: AtomicU64,
    /// Keys in flannel's key form under `<prefix>/subnets/` left untracked because the
    /// node's budget for them ([`MAX_NETWORK_KEYS`], [`MAX_OTHER_KEYS`]) was full.
    pub keys_untracked: AtomicU64,
    /// Watch events applied.
    pub events: AtomicU64,
    /// Times the network config was changed or deleted while the node ran (it keeps the one
    /// it joined with until it restarts).
    pub config_changes: AtomicU64,
}

impl EtcdState {
    /// Notes that this node's etcd lease lives `ttl_secs` seconds from now (granted, or renewed
    /// by a keep-alive).
    fn lease_lives(&self, ttl_secs: i64) {
        let ms = u64::try_from(ttl_secs).unwrap_or(0).saturating_mul(1000);
        self.lease_expires_ms.store(
            crate::sys::monotonic_ms().saturating_add(ms),
            Ordering::Relaxed,
        );
    }

    /// Renders the state in the Prometheus text format (`fustian_etcd_*`).
    pub fn render_prometheus(&self) -> String {
        let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let mut text = format!(
            "# TYPE fustian_etcd_connected gauge\nfustian_etcd_connected {}\n\
             # TYPE fustian_etcd_reconnects counter\nfustian_etcd_reconnects {}\n\
             # TYPE fustian_etcd_leases_ignored gauge\nfustian_etcd_leases_ignored {}\n\
             # TYPE fustian_etcd_lease_regrants counter\nfustian_etcd_lease_regrants {}\n\
             # TYPE fustian_etcd_own_lease_restored counter\nfustian_etcd_own_lease_restored {}\n\
             # TYPE fustian_etcd_own_lease_shared counter\nfustian_etcd_own_lease_shared {}\n\
             # TYPE fustian_etcd_keys_untracked gauge\nfustian_etcd_keys_untracked {}\n\
             # TYPE fustian_etcd_events counter\nfustian_etcd_events {}\n\
             # TYPE fustian_etcd_config_changes counter\nfustian_etcd_config_changes {}\n\
             # TYPE fustian_etcd_leases_rejected gauge\n",
            g(&self.connected),
            g(&self.reconnects),
            g(&self.leases_ignored),
            g(&self.lease_regrants),
            g(&self.own_lease_restored),
            g(&self.own_lease_shared),
            g(&self.keys_untracked),
            g(&self.events),
            g(&self.config_changes),
        );
        for (reason, count) in Rejection::ALL.iter().zip(&self.leases_rejected) {
            text.push_str(&format!(
                "fustian_etcd_leases_rejected{{reason=\"{}\"}} {}\n",
                reason.reason(),
                g(count)
            ));
        }
        text
    }
}

impl crate::control::SourceMetrics for EtcdState {
    fn totals(&self) -> Vec<(String, u64)> {
        let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let mut out: Vec<(String, u64)> = [
            ("etcd_connected", &self.connected),
            ("etcd_reconnects", &self.reconnects),
            ("etcd_leases_ignored", &self.leases_ignored),
            ("etcd_lease_regrants", &self.lease_regrants),
            ("etcd_own_lease_restored", &self.own_lease_restored),
            ("etcd_own_lease_shared", &self.own_lease_shared),
            ("etcd_keys_untracked", &self.keys_untracked),
            ("etcd_events", &self.events),
            ("etcd_config_changes", &self.config_changes),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_owned(), g(v)))
        .collect();
        for (reason, count) in Rejection::ALL.iter().zip(&self.leases_rejected) {
            out.push((
                format!("etcd_leases_rejected_{}", reason.reason()),
                g(count),
            ));
        }
        out
    }

    fn render_prometheus(&self) -> String {
        Self::render_prometheus(self)
    }

    fn not_ready(&self) -> Option<String> {
        let expires = self.lease_expires_ms.load(Ordering::Relaxed);
        let now = crate::sys::monotonic_ms();
        (expires != 0 && now >= expires).then(|| {
            format!(
                "the subnet lease expired {} s ago without a renewal (etcd out of reach): \
                 another node may lease this subnet",
                (now - expires) / 1000
            )
        })
    }
}

/// What joining the network gave this node.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The network config.
    pub config: NetworkConfig,
    /// This node's subnet.
    pub subnet: Ipv4Net,
    /// This node's IPv6 subnet, on a dual-stack network.
    pub subnet6: Option<Ipv6Net>,
    /// The other nodes, as the table wants them (a dual-stack node is two peers).
    pub peers: Vec<Peer>,
    /// This node's IPv6 underlay address on a dual-stack network: `--public-ipv6`, or the
    /// underlay interface's (see [`Agent::with_ipv6_default`]).
    pub public_ipv6: Option<Ipv6Addr>,
}

/// One key under `<prefix>/subnets/` as last read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    create_revision: i64,
    lease: i64,
    value: Vec<u8>,
    class: KeyClass,
    /// The subnets flanneld reads from a key not in flannel's exact form
    /// ([`flannel_subnet_key`]): never a lease here, but held for allocation.
    loose: Option<SubnetKey>,
}

/// Who holds this node's key, as [`Agent::holder`] judges it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Holder {
    /// Nobody: the value is no lease a node of this network holds (why).
    Nobody(String),
    /// Another node, on its etcd lease (its `PublicIP`).
    Node(Ipv4Addr),
    /// A flannel reservation (no etcd lease) for another address.
    Reserved(Ipv4Addr),
    /// This node (its `PublicIP`).
    ThisNode,
}

/// Returns true when peers route to a node with lease value `a` exactly as to one with `b`:
/// every field a lease value has the same, the backend type as peers read it (absent is
/// `udp`) and the VNIs on the 16 bits every flanneld writes ([`lease_vni`]).
fn twins(a: &LeaseValue, b: &LeaseValue) -> bool {
    let vni = |v: Option<u32>| v.map(lease_vni);
    a.public_ip == b.public_ip
        && a.public_ipv6 == b.public_ipv6
        && a.backend() == b.backend()
        && vni(a.vni) == vni(b.vni)
        && a.vtep_mac == b.vtep_mac
        && vni(a.vni6) == vni(b.vni6)
        && a.vtep_mac6 == b.vtep_mac6
}

/// Where a start-up attempt got to.
enum Step {
    Joined(Joined),
    Stopped,
    /// Not yet: the reason for `/readyz`, and what failed, for the log.
    Wait(String, String),
}

/// The checks [`Agent::join_when_ready`] runs before it writes to etcd: given the network
/// config and this node's IPv6 underlay address on it, they pass or refuse the node.
pub type BeforeWrite<'a> = dyn FnMut(&NetworkConfig, Option<Ipv6Addr>) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
    + 'a;

/// The agent: a runtime, a client and this node's lease.
pub struct Agent {
    rt: Rt,
    client: Option<Client>,
    /// The endpoint in use (or the next to try), an index into `opts.endpoints`.
    endpoint: usize,
    opts: EtcdOptions,
    config: Option<NetworkConfig>,
    /// True while etcd's config differs from the one the node joined with.
    config_changed: bool,
    /// The IPv6 underlay address taken on a dual-stack network when none is given.
    ipv6_default: Option<Ipv6Addr>,
    /// The network config's bytes as the node joined with them, to tell a change.
    config_raw: Option<Vec<u8>>,
    /// The network config's bytes as last seen in etcd (`None`: deleted), to tell a change
    /// made while the node was away from etcd, which no watch event reports.
    config_seen: Option<Vec<u8>>,
    public_ip: Ipv4Addr,
    public_ipv6: Option<Ipv6Addr>,
    vtep_mac: Option<MacAddress>,
    subnet: Option<Ipv4Net>,
    subnet6: Option<Ipv6Net>,
    lease_id: i64,
    /// The keys under `<prefix>/subnets/` in flannel's key form, bounded ([`Entries`]).
    entries: Entries,
    revision: i64,
    /// The revision of the last list: watch events at or before it are in the list already.
    listed_revision: i64,
    /// When the keys were last listed.
    listed_at: Instant,
    /// When a key that is not a lease key was last logged, and how many came since.
    bad_key_logged: Option<Instant>,
    bad_keys_quiet: u64,
    /// True while the log says keys are left untracked (said once per change).
    untracked_said: bool,
    /// The rejections already logged, so each is logged once, not at every list.
    logged: HashMap<String, Rejection>,
    /// The leases ignored (a backend this node cannot speak), logged once each likewise.
    logged_ignored: HashSet<String>,
    /// The budgets of log lines about leases left out of the table, and ignored.
    rejection_lines: LineBudget,
    ignored_lines: LineBudget,
    /// The budgets of log lines about changes of the network config, and of this node's own
    /// key (each put or delete by an etcd writer would otherwise be a line).
    config_lines: LineBudget,
    own_lines: LineBudget,
    /// The create revision of this node's key as this node last saw it holding its own value
    /// on its own etcd lease: a key at that name with another create revision was deleted and
    /// created again by someone else, and is not this node's to write back.
    own_created: Option<i64>,
    /// True when this run created this node's key (no lease of its own was there to reuse):
    /// given back if the node never starts ([`Agent::give_back`]).
    created_here: bool,
    /// The value and etcd lease of the key this run reused (a lease with this node's address
    /// it found and wrote again on an etcd lease of its own): put back as they were if the
    /// node never starts ([`Agent::give_back`]).
    reused_from: Option<(Vec<u8>, i64)>,
    /// When this node's overwritten lease is to be written back.
    restore_at: Option<Instant>,
    /// When this node's deleted lease is to be written again ([`Agent::ensure_lease`]).
    ensure_at: Option<Instant>,
    last_restore: Option<Instant>,
    state: Arc<EtcdState>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("subnet", &self.subnet)
            .field("subnet6", &self.subnet6)
            .field("lease_id", &self.lease_id)
            .finish_non_exhaustive()
    }
}

/// A node that never started gives back the lease this run wrote.
impl Drop for Agent {
    fn drop(&mut self) {
        if self.gives_back() {
            self.give_back();
        }
    }
}

impl Agent {
    /// Returns whether the lease this run wrote goes back as the agent goes: the node never
    /// started, and the run created its key or wrote it again on an etcd lease of its own.
    fn gives_back(&self) -> bool {
        (self.created_here || self.reused_from.is_some()) && !crate::node::started()
    }

    /// Takes back what this run wrote, for a node that wrote its lease and then failed to
    /// start (or was stopped before it started): left behind, a new lease would route its
    /// subnet to a node that is not there until it expires (24 hours), and a reused one would
    /// stay on an etcd lease nobody renews. A key this run created is deleted; a key it reused
    /// gets back the value and etcd lease it had (deleted instead when that etcd lease is gone,
    /// which would have taken the key with it). Either only while the key is still the one this
    /// run wrote, on this run's etcd lease, which is then revoked. Bounded to 3 s; on failure
    /// the lease is left to expire, and the log says so.
    fn give_back(&mut self) {
        let (Some(key), Some(created), Some(subnet)) =
            (self.own_key(), self.own_created, self.subnet)
        else {
            return;
        };
        let lease = self.lease_id;
        let still_ours = || {
            Txn::new().when(vec![
                Compare::create_revision(key.as_str(), CompareOp::Equal, created),
                Compare::lease(key.as_str(), CompareOp::Equal, lease),
            ])
        };
        let undo = still_ours().and_then(vec![TxnOp::delete(key.as_str(), None)]);
        let restore = self.reused_from.clone().map(|(value, earlier)| {
            let options = (earlier != 0).then(|| PutOptions::new().with_lease(earlier));
            still_ours().and_then(vec![TxnOp::put(key.as_str(), value, options)])
        });
        let Ok(mut client) = self.client() else {
            tracing::warn!(%subnet, %key, "the node did not start and is not connected to etcd: the subnet lease it wrote expires with its TTL");
            return;
        };
        let done = self.rt.block_on(async move {
            tokio::time::timeout(Duration::from_secs(3), async move {
                // etcd refuses the put of a restore whose etcd lease is gone (its TTL ran out,
                // or it was revoked): the key is deleted then, as that lease would have.
                let restored = match restore {
                    Some(txn) => client.txn(txn).await.ok().map(|r| r.succeeded()),
                    None => None,
                };
                let result = match restored {
                    Some(done) => Back::Restored(done),
                    None => Back::Deleted(client.txn(undo).await?.succeeded()),
                };
                client.lease_revoke(lease).await.map(|_| result)
            })
            .await
        });
        match done {
            Ok(Ok(Back::Restored(true))) => {
                tracing::info!(%subnet, %key, "the node did not start: the lease it wrote again is back on its earlier etcd lease, as it was");
            }
            Ok(Ok(Back::Deleted(true))) => {
                tracing::info!(%subnet, %key, "the node did not start: the subnet lease it took is given back");
            }
            Ok(Ok(Back::Restored(false) | Back::Deleted(false))) => {
                tracing::info!(%subnet, %key, "the node did not start: its etcd lease is revoked (the key is no longer the one it wrote, and is left)");
            }
            Ok(Err(e)) => {
                tracing::warn!(%subnet, %key, "the node did not start, and its new subnet lease could not be given back ({e}); it expires with its TTL");
            }
            Err(_) => {
                tracing::warn!(%subnet, %key, "the node did not start, and etcd did not answer in time to take back its new subnet lease; it expires with its TTL");
            }
        }
    }
}

/// What [`Agent::give_back`] did with this node's key (`true`: done; `false`: the key was no
/// longer the one this run wrote, and is left).
enum Back {
    /// Put back as it was before this run wrote it again.
    Restored(bool),
    /// Deleted.
    Deleted(bool),
}

/// The agent's runtime, shut down without waiting when the agent goes: a host name lookup
/// for an endpoint runs on a blocking thread that cannot be cancelled, and an unreachable
/// resolver would otherwise hold the node's exit for as long as it takes to give up.
struct Rt(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for Rt {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &Self::Target {
        // Taken only by `drop`.
        self.0
            .as_ref()
            .expect("the runtime lives as long as the agent")
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
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

/// Runs `fut` to completion unless `stop` is set first (looked at every 100 ms).
fn until_stopped<F: Future>(
    rt: &tokio::runtime::Runtime,
    stop: &AtomicBool,
    fut: F,
) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    loop {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        // The timer is made inside the runtime, which it needs.
        let step = rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(100), fut.as_mut()).await
        });
        if let Ok(out) = step {
            return Some(out);
        }
    }
}

/// Sleeps for `d` unless `stop` is set first.
fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Connects to one endpoint and checks that it answers a read.
async fn connect_one(
    endpoint: &str,
    options: ConnectOptions,
    probe: &str,
) -> Result<Client, etcd_client::Error> {
    let mut client = Client::connect([endpoint], Some(options)).await?;
    client.get(probe, None).await?;
    Ok(client)
}

/// Returns `text` with the user information of every endpoint URL in `endpoints` (the
/// `user:password@` of `http://user:password@host:2379`) written as `***@`: the reasons on
/// `/readyz`, which any local client may read, and the log name endpoints, never credentials.
pub fn hide_userinfo(text: &str, endpoints: &[String]) -> String {
    let mut out = text.to_owned();
    for endpoint in endpoints {
        let rest = endpoint
            .split_once("://")
            .map_or(endpoint.as_str(), |(_, r)| r);
        // Everything before the last `@`, a `/` in a password included (which would end the
        // authority by the letter of RFC 3986): hiding a path's text too is the safe mistake.
        if let Some((userinfo, _)) = rest.rsplit_once('@')
            && !userinfo.is_empty()
        {
            out = out.replace(&format!("{userinfo}@"), "***@");
        }
    }
    out
}

/// A transaction that goes ahead only while `key` is the one created at revision `created`
/// (not deleted, expired or written anew since).
fn unchanged_since(key: &str, created: i64) -> Txn {
    Txn::new().when(vec![Compare::create_revision(
        key,
        CompareOp::Equal,
        created,
    )])
}

/// Returns an error with its causes (`transport error: ... : invalid peer certificate`), each
/// once: the client's own message for a TLS or connection failure names none of them.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// Shortens an untrusted key for a log line.
pub fn for_log(key: &str) -> String {
    let mut short: String = key.chars().take(120).collect();
    if short.len() < key.len() {
        short.push('…');
    }
    short
}

impl Agent {
    /// Sets the IPv6 underlay address this node advertises on a dual-stack network when it
    /// was given none (`public_ipv6` of [`Self::new`] is `None`): flanneld takes the underlay
    /// interface's global IPv6 address. One peers would refuse (see
    /// [`crate::control::lease::judge_public_ipv6`]) is not taken.
    #[must_use]
    pub fn with_ipv6_default(mut self, ip: Option<Ipv6Addr>) -> Self {
        self.ipv6_default = ip.filter(|ip| super::lease::judge_public_ipv6(*ip, None).is_none());
        self
    }

    /// Makes an agent that has not reached etcd yet (see [`Self::join_when_ready`]).
    /// `public_ipv6` is the node's IPv6 underlay address, which a dual-stack network needs.
    ///
    /// # Errors
    ///
    /// [`EtcdError::Io`] when the runtime cannot start.
    pub fn new(
        opts: EtcdOptions,
        public_ip: Ipv4Addr,
        public_ipv6: Option<Ipv6Addr>,
        vtep_mac: Option<MacAddress>,
    ) -> Result<Self, EtcdError> {
        // The TLS files and login are settled at start, as flanneld settles them: a bad file
        // is an error naming it, not an endless wait for an etcd that never answers.
        opts.access.connect_options("https://")?;
        let files = [
            &opts.access.keyfile,
            &opts.access.certfile,
            &opts.access.cafile,
        ];
        if files.iter().any(|f| f.is_some())
            && !opts.endpoints.iter().any(|e| e.starts_with("https://"))
        {
            tracing::warn!(
                "--etcd-keyfile/--etcd-certfile/--etcd-cafile are given but no endpoint is \
                 https://: connecting without TLS"
            );
        }
        Ok(Self {
            rt: Rt(Some(runtime()?)),
            client: None,
            endpoint: 0,
            opts,
            config: None,
            ipv6_default: None,
            config_changed: false,
            config_raw: None,
            config_seen: None,
            public_ip,
            public_ipv6,
            vtep_mac,
            subnet: None,
            subnet6: None,
            lease_id: 0,
            entries: Entries::default(),
            revision: 0,
            listed_revision: 0,
            listed_at: Instant::now(),
            bad_key_logged: None,
            bad_keys_quiet: 0,
            untracked_said: false,
            logged: HashMap::new(),
            logged_ignored: HashSet::new(),
            rejection_lines: LineBudget::new(),
            ignored_lines: LineBudget::new(),
            config_lines: LineBudget::new(),
            own_lines: LineBudget::new(),
            own_created: None,
            created_here: false,
            reused_from: None,
            restore_at: None,
            ensure_at: None,
            last_restore: None,
            state: Arc::new(EtcdState::default()),
        })
    }

    /// Returns the shared state counters.
    pub fn state(&self) -> Arc<EtcdState> {
        Arc::clone(&self.state)
    }

    /// Returns the endpoints as given, comma separated, for messages.
    pub fn endpoint_list(&self) -> String {
        hide_userinfo(&self.opts.endpoints.join(","), &self.opts.endpoints)
    }

    fn config_key(&self) -> String {
        super::lease::key_under(&self.opts.prefix, "config")
    }

    /// Connects to the first endpoint that answers, starting with the one in use (or the next
    /// after a failure) and going round the list once. `Ok(false)`: stopped.
    fn connect(&mut self, stop: &AtomicBool) -> Result<bool, EtcdError> {
        self.client = None;
        let probe = self.config_key();
        let n = self.opts.endpoints.len();
        let mut failures = Vec::new();
        for i in 0..n {
            let index = (self.endpoint + i) % n;
            let endpoint = self.opts.endpoints[index].clone();
            let options = self.opts.access.connect_options(&endpoint)?;
            let attempt = until_stopped(&self.rt, stop, connect_one(&endpoint, options, &probe));
            match attempt {
                None => return Ok(false),
                Some(Ok(client)) => {
                    if index != self.endpoint || n > 1 {
                        let endpoint = hide_userinfo(&endpoint, &self.opts.endpoints);
                        tracing::info!(%endpoint, "etcd: connected");
                    }
                    self.endpoint = index;
                    self.client = Some(client);
                    return Ok(true);
                }
                Some(Err(e)) => failures.push(hide_userinfo(
                    &format!("{endpoint}: {}", with_causes(&e)),
                    &self.opts.endpoints,
                )),
            }
        }
        if n == 0 {
            failures.push("no endpoints given".into());
        }
        // etcd's answer to a wrong user name or password (`ErrGRPCAuthFailed`).
        if let Some(refused) = failures
            .iter()
            .find(|f| f.contains("authentication failed"))
        {
            return Err(EtcdError::LoginRefused(refused.clone()));
        }
        Err(EtcdError::Unreachable(failures.join("; ")))
    }

    /// Forgets the connection, so the next attempt starts with the next endpoint.
    fn disconnect(&mut self) {
        self.client = None;
        self.endpoint = (self.endpoint + 1) % self.opts.endpoints.len().max(1);
    }

    /// Returns the client (connecting is [`Self::connect`]'s job).
    fn client(&self) -> Result<Client, EtcdError> {
        self.client
            .clone()
            .ok_or_else(|| EtcdError::Unreachable("not connected".into()))
    }

    /// Reads and validates `<prefix>/config`; `Ok(None)` when the key does not exist.
    ///
    /// # Errors
    ///
    /// [`EtcdError::Config`] when it is invalid (the message names the field),
    /// [`EtcdError::Client`] when etcd fails.
    fn network_config(&mut self, stop: &AtomicBool) -> Result<Option<NetworkConfig>, EtcdError> {
        let key = self.config_key();
        let mut client = self.client()?;
        let Some(resp) = until_stopped(&self.rt, stop, client.get(key.as_str(), None)) else {
            return Ok(None);
        };
        let resp = resp?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        let config = NetworkConfig::parse(kv.value())
            .map_err(|e| EtcdError::Config(format!("{key}: {e}")))?;
        if self.config_raw.as_deref() != Some(kv.value()) {
            // A misspelt option is ignored by flanneld and here alike: said, not refused.
            for unread in crate::control::netconf::unread_keys(kv.value(), 16) {
                tracing::warn!(
                    %key,
                    "network config: {} is not a setting flanneld or fustian reads; ignored",
                    crate::sys::printable(&unread)
                );
            }
        }
        self.config = Some(config.clone());
        self.config_raw = Some(kv.value().to_vec());
        self.config_seen.clone_from(&self.config_raw);
        Ok(Some(config))
    }

    /// Reaches etcd, waits for the network config, acquires a subnet and lists the peers;
    /// waits (trying again about once a second) while etcd is unreachable or the config is
    /// missing or invalid, calling `waiting` with the reason each time it changes (and logging
    /// it once). `Ok(None)` when `stop` was set first. `previous` and `previous6` are the
    /// subnets recorded in the subnet file (`FLANNEL_SUBNET`, `FLANNEL_IPV6_SUBNET`).
    ///
    /// `before_write` runs with the network config and this node's IPv6 underlay address on
    /// it (`None` on an IPv4 network) before each attempt writes anything to etcd: the checks
    /// that may refuse the node on this host (its device, its port) run there, so a refused
    /// node changes nothing in etcd. It runs again for each attempt and is to keep what it
    /// took while the config stays the same.
    ///
    /// # Errors
    ///
    /// [`EtcdError::Refused`] with `before_write`'s error, or [`EtcdError`] when no subnet
    /// can be acquired (every subnet leased, races lost), the network is dual stack and this
    /// node has no IPv6 address, or a TLS file cannot be read.
    pub fn join_when_ready(
        &mut self,
        previous: Option<Ipv4Net>,
        previous6: Option<Ipv6Net>,
        stop: &AtomicBool,
        waiting: &dyn Fn(&str),
        before_write: &mut BeforeWrite<'_>,
    ) -> Result<Option<Joined>, EtcdError> {
        let mut said = String::new();
        loop {
            match self.try_join((previous, previous6), stop, before_write)? {
                Step::Joined(joined) => return Ok(Some(joined)),
                Step::Stopped => return Ok(None),
                Step::Wait(reason, detail) => {
                    if reason != said {
                        if detail.is_empty() || reason.contains(&detail) {
                            tracing::warn!("{reason}; trying again every second");
                        } else {
                            tracing::warn!("{reason} ({detail}); trying again every second");
                        }
                        waiting(&reason);
                        said = reason;
                    }
                }
            }
            sleep_unless_stopped(WAIT_RETRY, stop);
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
        }
    }

    fn try_join(
        &mut self,
        previous: (Option<Ipv4Net>, Option<Ipv6Net>),
        stop: &AtomicBool,
        before_write: &mut BeforeWrite<'_>,
    ) -> Result<Step, EtcdError> {
        let unreachable = format!("waiting for etcd at {}", self.endpoint_list());
        if self.client.is_none() {
            match self.connect(stop) {
                Ok(true) => {}
                Ok(false) => return Ok(Step::Stopped),
                Err(e @ EtcdError::Io { .. }) => return Err(e),
                Err(e @ EtcdError::LoginRefused(_)) => {
                    return Ok(Step::Wait(
                        format!(
                            "etcd at {} refused the login: check --etcd-username and \
                             --etcd-password",
                            self.endpoint_list()
                        ),
                        e.to_string(),
                    ));
                }
                Err(e) => return Ok(Step::Wait(unreachable, e.to_string())),
            }
        }
        let key = self.config_key();
        match self.network_config(stop) {
            _ if stop.load(Ordering::Relaxed) => return Ok(Step::Stopped),
            Ok(Some(_)) => {}
            Ok(None) => return Ok(Step::Wait(format!("waiting for {key}"), "not found".into())),
            Err(EtcdError::Config(e)) => {
                return Ok(Step::Wait(
                    format!("waiting for a valid network config: {e}"),
                    e,
                ));
            }
            Err(e) => {
                self.disconnect();
                return Ok(Step::Wait(unreachable, e.to_string()));
            }
        }
        if let Some(config) = &self.config {
            let ipv6 = config.ipv6.and(self.public_ipv6.or(self.ipv6_default));
            before_write(config, ipv6).map_err(EtcdError::Refused)?;
        }
        match self.join(previous, stop) {
            Ok(joined) => Ok(Step::Joined(joined)),
            Err(EtcdError::Stopped) => Ok(Step::Stopped),
            Err(e @ EtcdError::Unreachable(_)) => {
                self.disconnect();
                Ok(Step::Wait(unreachable, e.to_string()))
            }
            // etcd answered, but not as asked: say so, not "unreachable".
            Err(e @ EtcdError::Client(_)) => {
                self.disconnect();
                let reason = format!(
                    "etcd at {} answered the join with an error",
                    self.endpoint_list()
                );
                Ok(Step::Wait(reason, e.to_string()))
            }
            Err(e) => Err(e),
        }
    }

    /// The lease value this node writes.
    fn own_value(&self) -> LeaseValue {
        let vni = match self.config.as_ref().map(|c| &c.backend) {
            Some(Backend::Vxlan { vni, .. }) => Some(*vni),
            _ => None,
        };
        let vxlan = vni.is_some();
        // flanneld writes PublicIPv6 and the IPv6 VTEP only on a dual-stack network. fustian
        // has one VTEP for both families, so its MAC goes into both.
        let dual = self.config.as_ref().is_some_and(|c| c.ipv6.is_some());
        let public_ipv6 = self.public_ipv6.filter(|_| dual);
        let v6_vtep = vxlan && public_ipv6.is_some();
        LeaseValue {
            public_ip: self.public_ip,
            public_ipv6,
            backend_type: vxlan.then(|| "vxlan".to_owned()),
            vni,
            vtep_mac: if vxlan { self.vtep_mac } else { None },
            vni6: if v6_vtep { vni } else { None },
            vtep_mac6: if v6_vtep { self.vtep_mac } else { None },
        }
    }

    /// Returns the subnets some key names (whatever its value): the create transaction of a
    /// key with one of them beside the same other half would fail, and flanneld treats them
    /// as taken; so are the subnets flanneld reads from a key not in flannel's exact form
    /// (`Entry::loose`).
    fn held(&self) -> (HashSet<Ipv4Net>, HashSet<Ipv6Net>) {
        let keys = self.entries.iter().flat_map(|(k, e)| {
            std::iter::once(parse_subnet_key(&self.opts.prefix, k))
                .chain(std::iter::once(e.loose))
                .flatten()
        });
        let mut v4 = HashSet::new();
        let mut v6 = HashSet::new();
        for k in keys {
            v4.insert(k.ipv4);
            v6.extend(k.ipv6);
        }
        (v4, v6)
    }

    /// Returns the subnets of a lease that already carries this node's public IP at a key in
    /// the form this node writes (with an IPv6 subnet exactly on a dual-stack network), if the
    /// config allows them: `previous` (the subnet file's) when it is one of them, else the
    /// first.
    fn own_existing(&self, config: &NetworkConfig, previous: Option<Ipv4Net>) -> Option<SubnetKey> {
        let mut ours = self.entries.iter().filter_map(|(key, entry)| {
            let k = parse_subnet_key(&self.opts.prefix, key)?;
            let canonical = allocator_form(config, &k);
            let mine = LeaseValue::parse(&entry.value).is_ok_and(|v| v.public_ip == self.public_ip);
            (canonical && mine).then_some(k)
        });
        let first = ours.next()?;
        if previous == Some(first.ipv4) {
            return Some(first);
        }
        Some(ours.find(|k| Some(k.ipv4) == previous).unwrap_or(first))
    }

    /// Returns the create revision of the stored key `key` when another stored key in the
    /// form this network's allocator writes ([`KeyClass::Network`]), created before it, names
    /// its IPv4 or its IPv6 subnet (`candidate`): the other node holds that half, and `key`
    /// must go. A key of another form holds nothing against it, whatever its age: the peers
    /// judge it so ([`judge_leases_dual`]).
    fn first_claim_elsewhere(&self, key: &str, candidate: SubnetKey) -> Option<i64> {
        let ours = self.entries.get(key)?.create_revision;
        let clash = self.entries.iter().any(|(k, e)| {
            k != key
                && e.class == KeyClass::Network
                && e.create_revision < ours
                && parse_subnet_key(&self.opts.prefix, k).is_some_and(|o| {
                    o.ipv4 == candidate.ipv4 || (o.ipv6.is_some() && o.ipv6 == candidate.ipv6)
                })
        });
        clash.then_some(ours)
    }

    /// Deletes the leases that carry this node's public IP at a key the config does not allow
    /// (an IPv4-only lease once the network is dual stack, say), as flanneld deletes its
    /// incompatible lease before taking a new one, so the node does not stay announced twice.
    /// The deleted keys leave the stored entries too.
    fn delete_misfits(&mut self, config: &NetworkConfig) -> Result<(), EtcdError> {
        let misfits: Vec<(String, i64)> = self
            .entries
            .iter()
            .filter(|(key, entry)| {
                parse_subnet_key(&self.opts.prefix, key).is_some()
                    && LeaseValue::parse(&entry.value).is_ok_and(|v| v.public_ip == self.public_ip)
            })
            .map(|(key, entry)| (key.clone(), entry.create_revision))
            .collect();
        if misfits.is_empty() {
            return Ok(());
        }
        let mut client = self.client()?;
        for (key, created) in misfits {
            tracing::warn!(
                key = ?for_log(&key),
                network = %config.network,
                "deleting this node's lease that the network config no longer allows"
            );
            // Only the lease as listed: had it expired and another node written the key since,
            // that lease stays.
            self.rt.block_on(client.txn(
                unchanged_since(&key, created).and_then(vec![TxnOp::delete(key.as_str(), None)]),
            ))?;
            self.entries.forget(&key);
        }
        Ok(())
    }

    /// Returns the subnets recorded in the subnet file when the config allows them and they
    /// are free (on a dual-stack network both halves, as flanneld's `isIPv6SubnetConfigCompat`
    /// asks).
    fn previous_free(
        &self,
        config: &NetworkConfig,
        (previous, previous6): (Option<Ipv4Net>, Option<Ipv6Net>),
        accepted: &[Accepted],
        held: &(HashSet<Ipv4Net>, HashSet<Ipv6Net>),
    ) -> Option<SubnetKey> {
        let v4 = previous.filter(|p| config.allows(*p) && free4(*p, accepted, &held.0))?;
        let ipv6 = match config.ipv6 {
            None => None,
            Some(c6) => Some(previous6.filter(|p| c6.allows(*p) && free6(*p, accepted, &held.1))?),
        };
        Some(SubnetKey { ipv4: v4, ipv6 })
    }

    /// Acquires this node's subnet and writes its lease (see the module docs for the order of
    /// preference), then lists every lease. `previous` holds the subnets recorded in the subnet
    /// file, if any.
    ///
    /// # Errors
    ///
    /// [`EtcdError`] when etcd fails or every subnet is taken;
    /// [`EtcdError::NeedsIpv6`] on a dual-stack network when this node has no IPv6 address.
    fn join(
        &mut self,
        previous: (Option<Ipv4Net>, Option<Ipv6Net>),
        stop: &AtomicBool,
    ) -> Result<Joined, EtcdError> {
        let stopped = || {
            if stop.load(Ordering::Relaxed) {
                Err(EtcdError::Stopped)
            } else {
                Ok(())
            }
        };
        let Some(config) = self.config.clone() else {
            return Err(EtcdError::Config(
                "the network config is not read yet".into(),
            ));
        };
        if let Some(c6) = config.ipv6
            && self.public_ipv6.is_none()
        {
            // As flanneld: the underlay interface's global IPv6 address.
            let Some(ip) = self.ipv6_default else {
                return Err(EtcdError::NeedsIpv6(c6.network));
            };
            tracing::info!(
                public_ipv6 = %ip,
                "dual-stack network: the underlay interface's IPv6 address is this node's \
                 PublicIPv6 (--public-ipv6 sets another)"
            );
            self.public_ipv6 = Some(ip);
        }
        let mut client = self.client()?;
        let value = self.own_value().to_json();
        let ttl = self.ttl_secs();
        for _ in 0..RACE_RETRIES {
            stopped()?;
            self.list()?;
            stopped()?;
            let (accepted, _) = self.judge();
            let mine = self.own_existing(&config, previous.0);
            if mine.is_none() {
                self.delete_misfits(&config)?;
            }
            let held = self.held();
            let candidate = mine
                .or_else(|| self.previous_free(&config, previous, &accepted, &held))
                .map_or_else(|| random_free(&config, &accepted, &held), Ok)?;
            let subnet = candidate.ipv4;
            let key = candidate.key(&self.opts.prefix);
            stopped()?;
            // The grant and the write are each left to finish (the client bounds them): cut
            // short, the server may still carry them out, and nobody would know what it did.
            let grant = self.rt.block_on(client.lease_grant(ttl, None))?;
            if stop.load(Ordering::Relaxed) {
                // A grant that holds nothing yet is not left for its 24 hours.
                let _ = self.rt.block_on(client.lease_revoke(grant.id()));
                return Err(EtcdError::Stopped);
            }
            let put = TxnOp::put(
                key.as_str(),
                value.as_str(),
                Some(PutOptions::new().with_lease(grant.id())),
            );
            // Reusing our own lease overwrites it, as long as it is still the one listed (had
            // it expired and another node written the key since, this is a lost race); a new
            // one must not exist yet.
            let reused_entry = self.entries.get(&key).filter(|_| mine == Some(candidate));
            let reused = reused_entry.map(|e| e.create_revision);
            let reused_from = reused_entry.map(|e| (e.value.clone(), e.lease));
            let txn = if let Some(created) = reused {
                unchanged_since(&key, created).and_then(vec![put])
            } else {
                Txn::new()
                    .when(vec![Compare::version(key.as_str(), CompareOp::Equal, 0)])
                    .and_then(vec![put])
            };
            let resp = match self.rt.block_on(client.txn(txn)) {
                Ok(resp) => resp,
                Err(e) => {
                    // Best effort: a grant that holds nothing is not left for its 24 hours.
                    let _ = self.rt.block_on(client.lease_revoke(grant.id()));
                    return Err(e.into());
                }
            };
            if stop.load(Ordering::Relaxed) {
                // Written: the lease stays, as after any stop, for the next start to take
                // again. Not written: the grant holds nothing.
                if !resp.succeeded() {
                    let _ = self.rt.block_on(client.lease_revoke(grant.id()));
                }
                return Err(EtcdError::Stopped);
            }
            if resp.succeeded() && mine != Some(candidate) && config.ipv6.is_some() {
                // Two nodes that picked the same IPv4 subnet beside different IPv6 ones (or
                // the reverse) both win their create: the keys differ. The key created first
                // keeps the subnet; a later one gives it up and tries again.
                self.list()?;
                if let Some(ours) = self.first_claim_elsewhere(&key, candidate) {
                    let undo = unchanged_since(&key, ours)
                        .and_then(vec![TxnOp::delete(key.as_str(), None)]);
                    self.rt.block_on(client.txn(undo))?;
                    let _ = self.rt.block_on(client.lease_revoke(grant.id()));
                    self.entries.forget(&key);
                    tracing::info!(%subnet, %key, "another node took half of this subnet pair first; trying another");
                    continue;
                }
            }
            if resp.succeeded() {
                self.lease_id = grant.id();
                self.state.lease_lives(grant.ttl());
                self.created_here = reused.is_none();
                self.reused_from = reused_from;
                self.subnet = Some(subnet);
                self.subnet6 = candidate.ipv6;
                tracing::info!(%subnet, subnet6 = ?candidate.ipv6, %key, reused = mine.is_some(), "subnet lease acquired");
                self.list()?;
                self.note_own_created();
                return Ok(Joined {
                    public_ipv6: self.public_ipv6.filter(|_| config.ipv6.is_some()),
                    config,
                    subnet,
                    subnet6: candidate.ipv6,
                    peers: self.peers(),
                });
            }
            let _ = self.rt.block_on(client.lease_revoke(grant.id()));
            tracing::info!(%subnet, "lost the race for a subnet; trying another");
        }
        Err(EtcdError::Acquire(format!(
            "lost the race for a subnet {RACE_RETRIES} times"
        )))
    }

    /// Returns `<prefix>/subnets/`, under which the leases live.
    fn subnets_prefix(&self) -> String {
        super::lease::key_under(&self.opts.prefix, "subnets/")
    }

    /// Returns this node's lease key, once it has a subnet.
    fn own_key(&self) -> Option<String> {
        self.subnet.map(|ipv4| {
            SubnetKey {
                ipv4,
                ipv6: self.subnet6,
            }
            .key(&self.opts.prefix)
        })
    }

    /// Returns the lease TTL in seconds as etcd takes it (at least 5).
    fn ttl_secs(&self) -> i64 {
        i64::try_from(self.opts.ttl.as_secs())
            .unwrap_or(i64::MAX)
            .max(5)
    }

    /// Lists every key under the prefix into the entries ([`Entries`]: bounded, keys that
    /// are not lease keys counted only) and remembers the revision ([`list_pages`]).
    fn list(&mut self) -> Result<(), EtcdError> {
        let prefix = self.subnets_prefix();
        let mut client = self.client()?;
        // Each entry bounded as it arrives (see `entry`), never the whole value held, and
        // only as many as the budgets take.
        let under = prefix.len();
        let own_key = self.own_key();
        let mut got = Entries::with_limits(self.entries.limits);
        let mut bad = None;
        let (net_prefix, config) = (&self.opts.prefix, self.config.as_ref());
        let revision = self.rt.block_on(list_pages(&mut client, &prefix, |kv| {
            match classify(net_prefix, config, kv.key()) {
                Some(class) => {
                    let (key, e) = entry(kv, under, class);
                    let own = own_key.as_ref() == Some(&key);
                    got.put(key, e, true, own);
                }
                None => {
                    got.bad_keys += 1;
                    bad.get_or_insert_with(|| entry_key(kv.key(), under));
                }
            }
        }))?;
        self.entries = got;
        self.revision = revision;
        self.listed_revision = revision;
        self.listed_at = Instant::now();
        if let Some(key) = bad {
            self.note_bad_key(&key, self.entries.bad_keys);
        }
        self.note_untracked(None);
        Ok(())
    }

    /// Logs keys that are not lease keys, at most once per [`BAD_KEY_LOG_GAP`]: `key` is one
    /// of them, `seen` how many came with it.
    fn note_bad_key(&mut self, key: &str, seen: u64) {
        self.bad_keys_quiet += seen;
        if self
            .bad_key_logged
            .is_some_and(|at| at.elapsed() < BAD_KEY_LOG_GAP)
        {
            return;
        }
        tracing::warn!(
            key = ?for_log(key),
            count = self.bad_keys_quiet,
            under = %self.subnets_prefix(),
            "key not in flannel's A.B.C.D-LEN form: not a lease, not tracked, counted in \
             leases_rejected{{reason=\"bad_key\"}} ({} now under the prefix; `count` of them \
             since the last such line)",
            self.entries.bad_keys
        );
        self.bad_key_logged = Some(Instant::now());
        self.bad_keys_quiet = 0;
    }

    /// Updates `etcd_keys_untracked` and says once when keys start being left untracked (with
    /// `key`, one of them, when a watch event brought it) and once when none is any more.
    fn note_untracked(&mut self, key: Option<&str>) {
        let untracked = self.entries.untracked();
        self.state
            .keys_untracked
            .store(untracked, Ordering::Relaxed);
        if untracked > 0 && !self.untracked_said {
            tracing::warn!(
                key = ?key.map(for_log),
                untracked,
                "more keys in flannel's key form under {} than a node tracks ({} of this \
                 network's, {} others): the rest are left out of the table and counted in \
                 etcd_keys_untracked until deletions make room",
                self.subnets_prefix(),
                self.entries.limits[KeyClass::Network.index()],
                self.entries.limits[KeyClass::Other.index()],
            );
            self.untracked_said = true;
        } else if untracked == 0 && self.untracked_said {
            tracing::info!("every key in flannel's key form is tracked again");
            self.untracked_said = false;
        }
    }

    /// Judges every stored lease but this node's own.
    fn judge(&self) -> (Vec<Accepted>, Vec<super::lease::Rejected>) {
        let Some(config) = &self.config else {
            return (Vec::new(), Vec::new());
        };
        let own_key = self.own_key();
        let own = OwnNode {
            ip: Some(self.public_ip),
            ipv6: self.public_ipv6,
            key: own_key.as_deref(),
            subnet: self.subnet,
            subnet6: self.subnet6,
        };
        judge_leases_dual(
            config,
            &own,
            &self.opts.prefix,
            self.entries.iter().map(|(key, e)| StoredLease {
                key,
                create_revision: e.create_revision,
                value: &e.value,
            }),
        )
    }

    /// Turns the accepted leases into peers this node can reach; counts and logs (once each)
    /// the rejected ones.
    fn peers(&mut self) -> Vec<Peer> {
        let (accepted, rejected) = self.judge();
        let mut counts = [0u64; Rejection::ALL.len()];
        // Keys not in flannel's form are counted, not kept (see `Entries`).
        counts[Rejection::BadKey.index()] = self.entries.bad_keys;
        let mut logged = HashMap::with_capacity(rejected.len());
        for r in rejected {
            counts[r.reason.index()] += 1;
            if self.logged.get(&r.key) != Some(&r.reason)
                && self
                    .rejection_lines
                    .take("leases left out of the table", "leases_rejected")
            {
                tracing::warn!(
                    key = ?for_log(&r.key),
                    reason = r.reason.reason(),
                    "lease left out of the table: {}",
                    r.detail
                );
            }
            logged.insert(r.key, r.reason);
        }
        self.logged = logged;
        for (gauge, count) in self.state.leases_rejected.iter().zip(counts) {
            gauge.store(count, Ordering::Relaxed);
        }
        let Some(config) = &self.config else {
            return Vec::new();
        };
        let (peers, ignored) = lease_peers(&config.backend, self.public_ipv6, accepted);
        let mut logged = HashSet::new();
        for (key, why) in ignored {
            if !self.logged_ignored.contains(&key)
                && self.ignored_lines.take("leases ignored", "leases_ignored")
            {
                tracing::info!(key = ?for_log(&key), "lease ignored: {why}");
            }
            logged.insert(key);
        }
        self.state
            .leases_ignored
            .store(logged.len() as u64, Ordering::Relaxed);
        self.logged_ignored = logged;
        peers
    }

    /// Returns the agent as the node runs it: on its own thread, its [`EtcdState`] shown
    /// beside the node's counters.
    pub fn into_source(self) -> crate::control::ControlPlane {
        let state: Arc<dyn crate::control::SourceMetrics> = self.state();
        crate::control::ControlPlane {
            name: "etcd",
            metrics: Some(state),
            run: Box::new(move |table, stop| self.run(&table, &stop)),
        }
    }

    /// Runs the agent until `stop` is set: watches the leases into `table`, renews this node's
    /// lease, reconnects with backoff (going round the endpoints).
    pub fn run(mut self, table: &Table, stop: &AtomicBool) {
        let mut backoff = Duration::from_millis(500);
        let mut renew_at = Instant::now() + self.renew_interval();
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            match self.session(table, stop, &mut renew_at) {
                Ok(()) => break,
                // Not a lost connection: going on would route a subnet another node holds.
                // flanneld exits when its lease is lost; so does this node, and a restart
                // acquires another subnet.
                Err(
                    e @ (EtcdError::SubnetTaken(_)
                    | EtcdError::SubnetLeasedAgain { .. }
                    | EtcdError::SubnetReserved { .. }),
                ) => {
                    tracing::error!("etcd: {e}; stopping the node");
                    super::stop_node(e.to_string(), stop);
                    break;
                }
                // Not a lost connection either: list again on the same one, at once.
                Err(e @ EtcdError::WatchCancelled(_)) => {
                    self.state.connected.store(0, Ordering::Relaxed);
                    tracing::info!("etcd: {e}");
                    // A short pause, so a server that cancels every watch is not hammered.
                    sleep_unless_stopped(Duration::from_millis(200), stop);
                    continue;
                }
                Err(e) => {
                    self.state.connected.store(0, Ordering::Relaxed);
                    self.state.reconnects.fetch_add(1, Ordering::Relaxed);
                    self.disconnect();
                    tracing::warn!("etcd: {e}; forwarding goes on with the last table");
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(500);
            }
            sleep_unless_stopped(backoff, stop);
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        if let Some(subnet) = self.subnet
            && !self.gives_back()
        {
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
        if self.client.is_none() && !self.connect(stop)? {
            return Ok(());
        }
        let mut client = self.client()?;
        self.ensure_lease()?;
        self.list()?;
        self.config_since_away()?;
        self.check_own_entry()?;
        self.publish(table);
        // The leases, and on the same stream the config, whose changes are reported.
        let subnets = self.subnets_prefix();
        let config_key = self.config_key();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.revision + 1);
        let mut stream = self
            .rt
            .block_on(client.watch(subnets.as_str(), Some(options)))?;
        let config_options = WatchOptions::new().with_start_revision(self.revision + 1);
        self.rt
            .block_on(stream.watch(config_key.as_str(), Some(config_options)))?;
        self.state.connected.store(1, Ordering::Relaxed);
        tracing::info!(revision = self.revision, "etcd: watching leases");
        // Changes are published once the watch has nothing more ready, and under a stream
        // that never pauses at most every `gap`: a table is judged from every entry, so one
        // publish per event would let a writer's churn (among many junk keys, say) hold the
        // thread for minutes, its own lease and new leases waiting behind.
        let mut dirty = false;
        let mut published = Instant::now();
        let mut gap = PUBLISH_GAP;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if Instant::now() >= *renew_at {
                self.renew()?;
                *renew_at = Instant::now() + self.renew_interval();
            }
            if self.restore_at.is_some_and(|at| Instant::now() >= at) {
                self.restore_at = None;
                self.restore_own_lease()?;
            }
            if self.ensure_at.is_some_and(|at| Instant::now() >= at) {
                self.ensure_at = None;
                self.ensure_lease()?;
            }
            // Keys left untracked while their budget was full, and room for them now: a new
            // list picks them up (the watch goes on; the events the list already holds are
            // skipped by their revision).
            if self.entries.room_for_untracked() && self.listed_at.elapsed() >= RELIST_GAP {
                tracing::info!("room for keys left untracked: listing again");
                self.list()?;
                self.check_own_entry()?;
                dirty = true;
            }
            // With changes to publish, only what is ready now is taken (the timeout polls once).
            let wait = if dirty {
                Duration::ZERO
            } else {
                Duration::from_millis(200)
            };
            let next = self
                .rt
                .block_on(async { tokio::time::timeout(wait, stream.message()).await });
            let resp = match next {
                Err(_) => {
                    if dirty {
                        gap = self.publish_timed(table);
                        (dirty, published) = (false, Instant::now());
                    }
                    continue;
                }
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(None)) => return Err(EtcdError::Config("the watch ended".into())),
                Ok(Ok(Some(resp))) => resp,
            };
            if resp.compact_revision() > 0 {
                return Err(EtcdError::WatchCancelled(resp.compact_revision()));
            }
            if resp.canceled() {
                // Not a compaction: the member cannot serve it (no leader, say); another may.
                return Err(EtcdError::WatchLost(for_log(&crate::sys::printable(
                    resp.cancel_reason(),
                ))));
            }
            let own_key = self.own_key();
            let mut changed = false;
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                if kv.key() == config_key.as_bytes() {
                    self.config_event(&config_key, ev.event_type(), kv.value());
                    continue;
                }
                if !kv.key().starts_with(subnets.as_bytes()) {
                    continue;
                }
                self.state.events.fetch_add(1, Ordering::Relaxed);
                // Already in a list made after the watch started (see `relist` below).
                if kv.mod_revision() <= self.listed_revision {
                    continue;
                }
                let Some(class) = classify(&self.opts.prefix, self.config.as_ref(), kv.key())
                else {
                    // Not a lease key: counted, never kept or judged.
                    match ev.event_type() {
                        EventType::Put if kv.version() == 1 => {
                            self.entries.bad_keys += 1;
                            let key = entry_key(kv.key(), subnets.len());
                            self.note_bad_key(&key, 1);
                        }
                        EventType::Put => {}
                        EventType::Delete => {
                            self.entries.bad_keys = self.entries.bad_keys.saturating_sub(1);
                        }
                    }
                    self.state.leases_rejected[Rejection::BadKey.index()]
                        .store(self.entries.bad_keys, Ordering::Relaxed);
                    continue;
                };
                let (key, entry) = entry(kv, subnets.len(), class);
                let own = Some(&key) == own_key.as_ref();
                match ev.event_type() {
                    EventType::Put => {
                        changed |= self.entries.put(key.clone(), entry, kv.version() == 1, own);
                        self.note_untracked(Some(&key));
                        if own {
                            self.check_own_entry()?;
                        }
                    }
                    EventType::Delete => {
                        changed |= self.entries.delete(&key, class);
                        self.note_untracked(None);
                        if own {
                            self.own_deleted(&key)?;
                        }
                    }
                }
            }
            if let Some(h) = resp.header() {
                self.revision = h.revision();
            }
            dirty |= changed;
            if dirty && published.elapsed() >= gap {
                gap = self.publish_timed(table);
                (dirty, published) = (false, Instant::now());
            }
        }
    }

    /// Publishes the table and returns the gap to keep before the next publish under a
    /// stream of changes: [`PUBLISH_GAP`], or twice what this one took when longer, so
    /// judging the leases takes at most about a third of the thread.
    fn publish_timed(&mut self, table: &Table) -> Duration {
        let started = Instant::now();
        self.publish(table);
        PUBLISH_GAP.max(started.elapsed() * 2)
    }

    /// Reads the network config as of the list's revision and reports it if it differs from
    /// the one last seen: a change made while the node was away from etcd (or between the
    /// join and the first list) comes with no watch event, since the watch starts after it.
    fn config_since_away(&mut self) -> Result<(), EtcdError> {
        let key = self.config_key();
        let mut client = self.client()?;
        let options = GetOptions::new().with_revision(self.revision);
        let resp = self.rt.block_on(client.get(key.as_str(), Some(options)))?;
        let now = resp.kvs().first().map(etcd_client::KeyValue::value);
        if now == self.config_seen.as_deref() {
            return Ok(());
        }
        if self
            .config_lines
            .take("network config changes", "etcd_config_changes")
        {
            tracing::info!(%key, "network config differs from the one last seen (changed while away from etcd)");
        }
        match now {
            Some(value) => self.config_event(&key, EventType::Put, value),
            None => self.config_event(&key, EventType::Delete, &[]),
        }
        Ok(())
    }

    /// Reports a change of the network config while the node runs: the node goes on with the
    /// config it joined with (its subnet, backend and port were settled by it), and a restart
    /// applies the new one, as with flanneld, which reads the config once. Every change is
    /// counted (`etcd_config_changes`); the lines saying so are rate limited ([`LineBudget`]),
    /// since any etcd writer can put the config as often as it likes.
    fn config_event(&mut self, key: &str, kind: EventType, value: &[u8]) {
        self.config_seen = match kind {
            EventType::Put => Some(value.to_vec()),
            EventType::Delete => None,
        };
        match kind {
            // Back to what the node runs (after a change or a deletion): nothing to apply.
            EventType::Put if self.config_raw.as_deref() == Some(value) => {
                if self.config_changed {
                    if self
                        .config_lines
                        .take("network config changes", "etcd_config_changes")
                    {
                        tracing::info!(%key, "network config is back to the one this node runs");
                    }
                    self.config_changed = false;
                }
                return;
            }
            EventType::Put => {
                if self
                    .config_lines
                    .take("network config changes", "etcd_config_changes")
                {
                    let verdict = NetworkConfig::parse(value).map_or_else(
                        |e| format!("the new one is invalid ({e})"),
                        |_| "a restart applies the new one".to_owned(),
                    );
                    tracing::warn!(
                        %key,
                        "network config changed; this node keeps the config it joined with; \
                         {verdict}"
                    );
                }
            }
            EventType::Delete => {
                if self
                    .config_lines
                    .take("network config changes", "etcd_config_changes")
                {
                    tracing::warn!(
                        %key,
                        "network config deleted; this node keeps the config it joined with (a \
                         restart would wait for a new one)"
                    );
                }
            }
        }
        self.config_changed = true;
        self.state.config_changes.fetch_add(1, Ordering::Relaxed);
    }

    /// Returns true when this node's key, as listed, holds its own value on its own etcd lease.
    fn own_entry_intact(&self, entry: &Entry) -> bool {
        entry.value == self.own_value().to_json().as_bytes() && entry.lease == self.lease_id
    }

    /// Remembers the create revision of this node's key when the listed entry is intact.
    fn note_own_created(&mut self) {
        let Some(key) = self.own_key() else { return };
        if let Some(entry) = self.entries.get(&key)
            && self.own_entry_intact(entry)
        {
            self.own_created = Some(entry.create_revision);
        }
    }

    /// Returns who holds this node's key as found (created at `create_revision`, on etcd
    /// lease `lease`, holding `value`), judged as the node's peers judge a lease: a value
    /// with this node's `PublicIP` is this node's; one of another address that the judge
    /// takes ([`judge_leases_dual`]: a lease value, its `PublicIP` and `PublicIPv6` ones a
    /// peer can have) is a flannel reservation for that address when it has no etcd lease
    /// (flannel's leases without expiry), and another node's when it has one and the
    /// node's peers speak its backend ([`lease_peers`]); anything else (junk, an address no
    /// node can have, another backend) is nobody's: no node's traffic goes there.
    fn holder(&self, key: &str, create_revision: i64, lease: i64, value: &[u8]) -> Holder {
        if LeaseValue::parse(value).is_ok_and(|v| v.public_ip == self.public_ip) {
            return Holder::ThisNode;
        }
        let Some(config) = &self.config else {
            return Holder::Nobody("no network config".into());
        };
        let own = OwnNode {
            ip: Some(self.public_ip),
            ipv6: self.public_ipv6,
            ..OwnNode::default()
        };
        let stored = StoredLease {
            key,
            create_revision,
            value,
        };
        let (mut accepted, rejected) = judge_leases_dual(config, &own, &self.opts.prefix, [stored]);
        if let Some(r) = rejected.into_iter().next() {
            return Holder::Nobody(format!("{}: {}", r.reason.reason(), r.detail));
        }
        let Some(found) = accepted.pop() else {
            return Holder::Nobody("not judged".into());
        };
        let public_ip = found.value.public_ip;
        if lease == 0 {
            return Holder::Reserved(public_ip);
        }
        let (_, ignored) = lease_peers(&config.backend, self.public_ipv6, vec![found]);
        match ignored.into_iter().next() {
            Some((_, why)) => Holder::Nobody(why),
            None => Holder::Node(public_ip),
        }
    }

    /// Judges the key at this node's name as found (created at `create_revision`, on etcd
    /// lease `lease`, holding `value`) when it is not the key this node created: deleted and
    /// created again. By [`Self::holder`]:
    ///
    /// - this node's (an operator's `etcdctl put` with its address, etcd restored from a
    ///   snapshot): its create revision is taken as this node's and it is written back;
    /// - a reservation for another address, or another node's lease: the subnet is theirs,
    ///   and writing it back would take it from them;
    /// - nobody's (junk, a value no peer routes to): no other node holds the subnet, and this
    ///   node's etcd lease was not found gone (that is [`Self::ensure_lease`]'s case), so the
    ///   subnet is still this node's: the create revision is taken as this node's, so the
    ///   write-back (which holds only while the key keeps it) goes ahead.
    ///
    /// # Errors
    ///
    /// [`EtcdError::SubnetReserved`] and [`EtcdError::SubnetLeasedAgain`] in the second case.
    fn judge_recreated(
        &mut self,
        key: &str,
        create_revision: i64,
        lease: i64,
        value: &[u8],
    ) -> Result<(), EtcdError> {
        let recreated = self
            .own_created
            .is_some_and(|ours| ours != create_revision && lease != self.lease_id);
        let Some(subnet) = self.subnet.filter(|_| recreated) else {
            return Ok(());
        };
        match self.holder(key, create_revision, lease, value) {
            Holder::ThisNode => {
                if self.own_lines.take(OWN_LINES, OWN_COUNTERS) {
                    tracing::warn!(%key, "own lease created again with this node's address; taking it as this node's");
                }
                self.own_created = Some(create_revision);
                Ok(())
            }
            Holder::Reserved(public_ip) => {
                tracing::error!(%key, "own lease deleted and created again by another writer without an etcd lease: a reservation for {public_ip}");
                Err(EtcdError::SubnetReserved { subnet, public_ip })
            }
            Holder::Node(public_ip) => {
                tracing::error!(%key, etcd_lease = format!("{lease:x}"), "own lease deleted and created again by another writer: another node's lease (PublicIP {public_ip})");
                Err(EtcdError::SubnetLeasedAgain {
                    subnet,
                    public_ip,
                    lease,
                })
            }
            Holder::Nobody(why) => {
                if self.own_lines.take(OWN_LINES, OWN_COUNTERS) {
                    tracing::warn!(%key, etcd_lease = format!("{lease:x}"), "own lease deleted and created again by another writer with a value no node of this network holds ({why}); taking it as this node's to write back");
                }
                self.own_created = Some(create_revision);
                Ok(())
            }
        }
    }

    /// Returns true when this node's key, overwritten in place, holds this node's twin on
    /// another live etcd lease: another node with the same address that took the key as its
    /// own when it started (a node reuses the lease that names its address, as flanneld
    /// does). Writing it back would make the two nodes rewrite the key in turn for as long
    /// as both run; flanneld takes such a put as its lease's new expiry, and so does this
    /// node: it leaves the key to the other writer and writes it back only once deleted (the
    /// other's etcd lease expired).
    ///
    /// A twin is a value the peers route exactly as this node's own ([`twins`]): the same
    /// `PublicIP`, backend type, VNI, VTEP MAC and IPv6 fields. Peers read nothing else from
    /// a lease value, so they take it (into the table, with the backend they speak) exactly
    /// when they take this node's. Any other value on another etcd lease, however much of
    /// it is this node's (its `PublicIP` beside another backend, VNI or MAC, say), would make
    /// the peers send this node's traffic where it does not arrive, and is written back as
    /// an ordinary overwrite; so is a value put without an etcd lease (an operator's
    /// `etcdctl put`).
    fn shared_address(&self, lease: i64, value: Option<&LeaseValue>) -> bool {
        lease != 0 && lease != self.lease_id && value.is_some_and(|v| twins(v, &self.own_value()))
    }

    /// Schedules writing this node's lease back when its key holds anything but what this
    /// node wrote, on its etcd lease, as long as it is still the key this node created (an
    /// overwrite keeps the create revision).
    ///
    /// # Errors
    ///
    /// [`EtcdError::SubnetLeasedAgain`] or [`EtcdError::SubnetReserved`] when the key was
    /// deleted and created again as another node's lease or a reservation for another address
    /// ([`Self::judge_recreated`]): the subnet is theirs now, and this node stops, as flanneld
    /// does when its lease is lost, rather than fight over the key.
    fn check_own_entry(&mut self) -> Result<(), EtcdError> {
        let Some(key) = self.own_key() else {
            return Ok(());
        };
        let Some(entry) = self.entries.get(&key) else {
            return Ok(());
        };
        if self.own_entry_intact(entry) {
            self.own_created = Some(entry.create_revision);
            return Ok(());
        }
        let (created, lease, value) = (entry.create_revision, entry.lease, entry.value.clone());
        self.judge_recreated(&key, created, lease, &value)?;
        let parsed = LeaseValue::parse(&value);
        if self.shared_address(lease, parsed.as_ref().ok()) {
            if self.own_lines.take(OWN_LINES, OWN_COUNTERS) {
                tracing::warn!(
                    %key,
                    etcd_lease = format!("{lease:x}"),
                    "own lease put on another etcd lease with this node's value (PublicIP {}: \
                     a second node with this address?); left to it, as flanneld does: written \
                     back only if it is deleted",
                    self.public_ip
                );
            }
            self.state.own_lease_shared.fetch_add(1, Ordering::Relaxed);
            self.restore_at = None;
            return Ok(());
        }
        if self.own_lines.take(OWN_LINES, OWN_COUNTERS) {
            let who = parsed.map_or_else(
                |e| format!("an invalid value ({e})"),
                |v| format!("PublicIP {}", v.public_ip),
            );
            tracing::warn!(%key, "own lease overwritten with {who}; writing it back");
        }
        let earliest = self
            .last_restore
            .map_or_else(Instant::now, |t| t + RESTORE_SPACING);
        self.restore_at = Some(earliest.max(Instant::now()));
        Ok(())
    }

    /// Writes this node's lease value back at its key, on its etcd lease (granted again if
    /// it is gone), in a transaction that holds only while the key is still the one this node
    /// created (its create revision unchanged): never over a key another node created.
    ///
    /// # Errors
    ///
    /// [`EtcdError::SubnetLeasedAgain`] or [`EtcdError::SubnetReserved`] when the key was
    /// created again by another writer for another node ([`Self::judge_recreated`]); an etcd
    /// error otherwise. A key deleted meanwhile is left to the deletion's watch event.
    fn restore_own_lease(&mut self) -> Result<(), EtcdError> {
        let Some(key) = self.own_key() else {
            return Ok(());
        };
        let mut client = self.client()?;
        let current = self.rt.block_on(client.get(key.as_str(), None))?;
        let Some(kv) = current.kvs().first() else {
            return Ok(());
        };
        if kv.value() == self.own_value().to_json().as_bytes() && kv.lease() == self.lease_id {
            // Written back already (an event older than the write-back brought this here).
            self.own_created = Some(kv.create_revision());
            return Ok(());
        }
        self.judge_recreated(&key, kv.create_revision(), kv.lease(), kv.value())?;
        if self.shared_address(kv.lease(), LeaseValue::parse(kv.value()).ok().as_ref()) {
            // Another node with this node's address holds it (see `check_own_entry`).
            self.restore_at = None;
            return Ok(());
        }
        let created = self.own_created.unwrap_or(kv.create_revision());
        if !self.lease_alive()? {
            let grant = self
                .rt
                .block_on(client.lease_grant(self.ttl_secs(), None))?;
            self.lease_id = grant.id();
            self.state.lease_lives(grant.ttl());
            self.state.lease_regrants.fetch_add(1, Ordering::Relaxed);
        }
        let value = self.own_value().to_json();
        let txn = unchanged_since(&key, created).and_then(vec![TxnOp::put(
            key.as_str(),
            value.as_str(),
            Some(PutOptions::new().with_lease(self.lease_id)),
        )]);
        if !self.rt.block_on(client.txn(txn))?.succeeded() {
            // Changed hands between the read and the write: judged again at its watch event.
            if self.own_lines.take(OWN_LINES, OWN_COUNTERS) {
                tracing::warn!(%key, "own lease changed while being written back; looking again");
            }
            return Ok(());
        }
        self.own_created = Some(created);
        self.last_restore = Some(Instant::now());
        self.state
            .own_lease_restored
            .fetch_add(1, Ordering::Relaxed);
        if self.own_lines.take(OWN_LINES, OWN_COUNTERS) {
            tracing::warn!(%key, "own lease written back");
        }
        Ok(())
    }

    /// Returns true when this node's etcd lease still has time to live.
    fn lease_alive(&self) -> Result<bool, EtcdError> {
        if self.lease_id == 0 {
            return Ok(false);
        }
        let mut client = self.client()?;
        Ok(self
            .rt
            .block_on(client.lease_time_to_live(self.lease_id, None))?
            .ttl()
            > 0)
    }

    /// Handles the deletion (or expiry) of this node's key seen on the watch: it is written
    /// again ([`Self::ensure_lease`]) at once, or, within [`RESTORE_SPACING`] of the last
    /// write-back, once that has passed, as an overwrite is: a writer deleting the key in a
    /// loop gets at most one rewrite a second, and the last deletion is always answered (the
    /// rewrite reads the key as it is then).
    ///
    /// # Errors
    ///
    /// As [`Self::ensure_lease`].
    fn own_deleted(&mut self, key: &str) -> Result<(), EtcdError> {
        if self.own_lines.take(OWN_LINES, OWN_COUNTERS) {
            tracing::warn!(%key, "own lease deleted or expired; writing it again");
        }
        let now = Instant::now();
        let earliest = self.last_restore.map_or(now, |t| t + RESTORE_SPACING);
        if earliest <= now {
            self.ensure_at = None;
            self.ensure_lease()
        } else {
            self.ensure_at = Some(earliest);
            Ok(())
        }
    }

    /// Grants the lease again and rewrites the value when the lease is gone (expired while
    /// etcd was unreachable, or deleted); writes the value back when someone overwrote it
    /// while the lease was alive.
    fn ensure_lease(&mut self) -> Result<(), EtcdError> {
        let Some(subnet) = self.subnet else {
            return Ok(());
        };
        let mut client = self.client()?;
        let alive = self.lease_alive()?;
        let Some(key) = self.own_key() else {
            return Ok(());
        };
        let current = self.rt.block_on(client.get(key.as_str(), None))?;
        let kv = current.kvs().first();
        let holder = kv.map(|kv| self.holder(&key, kv.create_revision(), kv.lease(), kv.value()));
        // This node's value, or one no node of this network holds (junk): no other node has
        // the subnet, and the key is rewritten.
        let present = matches!(holder, Some(Holder::ThisNode | Holder::Nobody(_)));
        if alive && let Some(kv) = kv {
            let intact =
                kv.value() == self.own_value().to_json().as_bytes() && kv.lease() == self.lease_id;
            if intact {
                self.own_created = Some(kv.create_revision());
            } else {
                self.judge_recreated(&key, kv.create_revision(), kv.lease(), kv.value())?;
                self.restore_own_lease()?;
            }
            return Ok(());
        }
        // A key deleted while its etcd lease lives is written again on that lease: a new
        // grant per deletion would leave one orphaned etcd lease each time.
        let fresh = !alive;
        let lease_id = if fresh {
            let ttl = self.ttl_secs();
            self.rt.block_on(client.lease_grant(ttl, None))?.id()
        } else {
            self.lease_id
        };
        let value = self.own_value().to_json();
        // Only if nobody else took the subnet meanwhile.
        let txn = Txn::new()
            .when(vec![Compare::version(key.as_str(), CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(
                key.as_str(),
                value.as_str(),
                Some(PutOptions::new().with_lease(lease_id)),
            )]);
        let ok = if let Some(created) = kv.filter(|_| present).map(|kv| kv.create_revision()) {
            // Ours, as just read: rewritten on the new lease unless it changed hands since.
            let rewrite = unchanged_since(&key, created).and_then(vec![TxnOp::put(
                key.as_str(),
                value.as_str(),
                Some(PutOptions::new().with_lease(lease_id)),
            )]);
            let ok = self.rt.block_on(client.txn(rewrite))?.succeeded();
            if ok {
                self.own_created = Some(created);
            }
            ok
        } else {
            let resp = self.rt.block_on(client.txn(txn))?;
            if resp.succeeded() {
                // Created by this transaction: its revision is the key's create revision.
                self.own_created = resp.header().map(|h| h.revision());
            }
            resp.succeeded()
        };
        if ok && fresh {
            self.lease_id = lease_id;
            self.state.lease_lives(self.ttl_secs());
            self.state.lease_regrants.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%subnet, "subnet lease granted again");
            Ok(())
        } else if ok {
            self.last_restore = Some(Instant::now());
            self.state
                .own_lease_restored
                .fetch_add(1, Ordering::Relaxed);
            if self.own_lines.take(OWN_LINES, OWN_COUNTERS) {
                tracing::warn!(%subnet, %key, "own lease deleted; written again on its etcd lease");
            }
            Ok(())
        } else if !fresh {
            // The etcd lease is still this node's, so the subnet is too: someone wrote the key
            // between the read and the write. Written back, as an overwrite is.
            self.restore_own_lease()
        } else {
            // A fresh grant holds nothing: give it back rather than leave one orphaned etcd
            // lease per attempt. The old lease expired and another node has the subnet.
            let _ = self.rt.block_on(client.lease_revoke(lease_id));
            match holder {
                Some(Holder::Reserved(public_ip)) => {
                    Err(EtcdError::SubnetReserved { subnet, public_ip })
                }
                _ => Err(EtcdError::SubnetTaken(subnet)),
            }
        }
    }

    /// Renews the lease once (a keep-alive resets its TTL).
    fn renew(&mut self) -> Result<(), EtcdError> {
        let mut client = self.client()?;
        let (mut keeper, mut stream) = self.rt.block_on(client.lease_keep_alive(self.lease_id))?;
        self.rt.block_on(keeper.keep_alive())?;
        let resp = self.rt.block_on(stream.message())?;
        match resp {
            Some(r) if r.ttl() > 0 => {
                self.state.lease_lives(r.ttl());
                tracing::info!(ttl = r.ttl(), "subnet lease renewed");
                Ok(())
            }
            _ => self.ensure_lease(),
        }
    }

    /// Publishes a table made of this node's subnets and the accepted peers.
    fn publish(&mut self, table: &Table) {
        let Some(subnet) = self.subnet else { return };
        let mut own = vec![IpNet::V4(subnet)];
        own.extend(self.subnet6.map(IpNet::V6));
        match Snapshot::new(own, self.peers()) {
            Ok(snap) => {
                table.publish(snap);
            }
            // Judged leases never overlap each other or this node's subnet.
            Err(e) => tracing::warn!("etcd leases do not make a table: {e}"),
        }
    }
}

/// Reads `FLANNEL_SUBNET` from a subnet file written earlier (flanneld's way of asking for the
/// same subnet after a restart).
pub fn previous_subnet(path: &std::path::Path) -> Option<Ipv4Net> {
    subnet_file_value(path, "FLANNEL_SUBNET=")?
        .parse::<Ipv4Net>()
        .ok()
        .map(|n| n.trunc())
}

/// Reads `FLANNEL_IPV6_SUBNET` from a subnet file written earlier, as [`previous_subnet`].
pub fn previous_subnet6(path: &std::path::Path) -> Option<Ipv6Net> {
    subnet_file_value(path, "FLANNEL_IPV6_SUBNET=")?
        .parse::<Ipv6Net>()
        .ok()
        .map(|n| n.trunc())
}

/// Returns the value of `name` (which ends in `=`) in the subnet file at `path`, read as
/// flanneld reads it ([`super::dotenv::value`]).
fn subnet_file_value(path: &std::path::Path, name: &str) -> Option<String> {
    // The file this node wrote (a few hundred bytes); anything else there is no hint.
    let text = crate::sys::read_own_small_file(path, 4096).ok()?;
    super::dotenv::value(&text, name.strip_suffix('=').unwrap_or(name))
}

/// Returns true when `subnet` may be taken: no key names it (the create transaction would
/// fail) and no accepted lease overlaps it. A rejected lease of another length (the whole
/// network, say) does not hold anything.
fn free4(subnet: Ipv4Net, accepted: &[Accepted], held: &HashSet<Ipv4Net>) -> bool {
    !held.contains(&subnet)
        && !accepted
            .iter()
            .any(|a| a.subnet.contains(&subnet) || subnet.contains(&a.subnet))
}

/// [`free4`] for an IPv6 subnet.
fn free6(subnet: Ipv6Net, accepted: &[Accepted], held: &HashSet<Ipv6Net>) -> bool {
    !held.contains(&subnet)
        && !accepted
            .iter()
            .filter_map(|a| a.subnet6)
            .any(|o| o.contains(&subnet) || subnet.contains(&o))
}

/// Picks a random free subnet (and on a dual-stack network a random free IPv6 subnet) among
/// the first 100 free ones of each family, as flannel's `allocateSubnet` does.
fn random_free(
    config: &NetworkConfig,
    accepted: &[Accepted],
    held: &(HashSet<Ipv4Net>, HashSet<Ipv6Net>),
) -> Result<SubnetKey, EtcdError> {
    let free: Vec<Ipv4Net> = config
        .subnets()
        .filter(|s| free4(*s, accepted, &held.0))
        .take(100)
        .collect();
    let ipv4 = pick(&free).ok_or_else(|| {
        EtcdError::Acquire(format!(
            "every /{} in {} from SubnetMin {} to SubnetMax {} is leased",
            config.subnet_len, config.network, config.subnet_min, config.subnet_max
        ))
    })?;
    let ipv6 = match &config.ipv6 {
        None => None,
        Some(c6) => {
            // Lazy: at most 100 + (held subnets) candidates are looked at.
            let free: Vec<Ipv6Net> = c6
                .subnets()
                .filter(|s| free6(*s, accepted, &held.1))
                .take(100)
                .collect();
            Some(pick(&free).ok_or_else(|| {
                EtcdError::Acquire(format!(
                    "every /{} in {} from IPv6SubnetMin {} to IPv6SubnetMax {} is leased",
                    c6.subnet_len, c6.network, c6.subnet_min, c6.subnet_max
                ))
            })?)
        }
    };
    Ok(SubnetKey { ipv4, ipv6 })
}

/// Returns a random element.
fn pick<T: Copy>(items: &[T]) -> Option<T> {
    if items.is_empty() {
        return None;
    }
    let mut seed = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
        .is_err()
    {
        seed = u64::from(std::process::id()).to_ne_bytes();
    }
    let i = usize::try_from(u64::from_ne_bytes(seed) % items.len() as u64).unwrap_or(0);
    items.get(i).copied()
}

/// Returns whether a lease's VNI (none: the network's) is the network's `vni`, on the 16 bits
/// every flanneld writes ([`lease_vni`]).
fn same_vni(lease: Option<u32>, vni: Option<u32>) -> bool {
    lease.or(vni).map(lease_vni) == vni.map(lease_vni)
}

/// The peers a node makes of the leases `accepted` on a network with `backend`, with
/// `public_ipv6` its IPv6 underlay address (if any), and the leases it ignores, each key with
/// why (a backend it cannot speak: another type, or for `vxlan` no VTEP MAC or another VNI). Each lease is a
/// peer for its IPv4 subnet; on a dual-stack network its IPv6 subnet is a second peer, over the
/// IPv6 underlay when both nodes have one. The agent and `fustian doctor` both use it, so
/// doctor expects exactly the table the node builds.
pub fn lease_peers(
    backend: &Backend,
    public_ipv6: Option<Ipv6Addr>,
    accepted: Vec<Accepted>,
) -> (Vec<Peer>, Vec<(String, String)>) {
    let (kind, port, vni) = match backend {
        Backend::Udp { port } => (
            "udp",
            port.unwrap_or(crate::wire::flannel::DEFAULT_PORT),
            None,
        ),
        Backend::Vxlan { vni, port, .. } => (
            "vxlan",
            port.unwrap_or(crate::wire::vxlan::DEFAULT_PORT),
            Some(*vni),
        ),
    };
    let mut ignored = Vec::new();
    let mut peers = Vec::new();
    for Accepted {
        key,
        subnet,
        subnet6,
        value,
    } in accepted
    {
        let speaks = value.backend() == kind
            && (kind == "udp" || (value.vtep_mac.is_some() && same_vni(value.vni, vni)));
        if !speaks {
            let why = match (value.backend(), value.vni, value.vtep_mac) {
                // The type is the lease's text: written escaped, so it cannot forge a log line.
                (b, ..) if b != kind => format!("backend {b:?}, not {kind}"),
                (_, _, None) => "no VtepMAC".to_owned(),
                (_, v, _) => format!("VNI {}, not {}", v.unwrap_or(0), vni.unwrap_or(0)),
            };
            ignored.push((key, why));
            continue;
        }
        let v4 = SocketAddr::new(IpAddr::V4(value.public_ip), port);
        peers.push(Peer {
            subnet: IpNet::V4(subnet),
            endpoint: v4,
            vtep_mac: value.vtep_mac,
        });
        let Some(subnet6) = subnet6 else { continue };
        // The IPv6 half goes over the IPv6 underlay when both nodes have one (and, for
        // vxlan, the lease names its IPv6 VTEP); else over IPv4 to the IPv4 VTEP, which
        // takes IPv6 frames as well.
        let over_v6 = public_ipv6
            .and(value.public_ipv6)
            .filter(|_| kind == "udp" || (value.vtep_mac6.is_some() && same_vni(value.vni6, vni)));
        let (endpoint, vtep_mac) = match over_v6 {
            Some(ip6) => (SocketAddr::new(IpAddr::V6(ip6), port), value.vtep_mac6),
            None => (v4, value.vtep_mac),
        };
        peers.push(Peer {
            subnet: IpNet::V6(subnet6),
            endpoint,
            vtep_mac,
        });
    }
    (peers, ignored)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MAC: MacAddress = MacAddress([0x0e, 0, 0, 0, 0, 1]);

    #[test]
    fn a_lease_s_text_cannot_forge_a_log_line() {
        // A BackendType with a newline, a forged log line after it and a NUL (a JSON string
        // holds them escaped, decoded into the value).
        let json = br#"{"PublicIP":"192.0.2.2","BackendType":"udp\n2026-01-01T00:00:00Z ERROR forged\u0000"}"#;
        let value = LeaseValue::parse(json).expect("a lease");
        assert!(value.backend().contains('\n'), "the test holds a newline");
        let accepted = vec![Accepted {
            key: "/coreos.com/network/subnets/10.244.2.0-24".to_owned(),
            subnet: "10.244.2.0/24".parse().expect("literal"),
            subnet6: None,
            value,
        }];
        let (peers, ignored) = lease_peers(&Backend::Udp { port: None }, None, accepted);
        assert!(peers.is_empty());
        let [(_, why)] = ignored.as_slice() else {
            panic!("one lease ignored: {ignored:?}");
        };
        assert!(!why.chars().any(char::is_control), "{why:?}");
        assert!(why.contains("\\n2026") && why.contains("\\0"), "{why}");
        // A raw value shown in a refusal is one line too.
        let bad = LeaseValue::parse(b"{\"PublicIP\":{\"a\":\n1}}").expect_err("refused");
        assert!(!bad.to_string().chars().any(char::is_control), "{bad}");
    }

    #[test]
    fn an_x509_version_is_read_from_the_der() {
        // SEQUENCE { SEQUENCE { [0] { INTEGER 2 } ... } }: version 3.
        let v3 = [0x30, 0x08, 0x30, 0x06, 0xa0, 0x03, 0x02, 0x01, 0x02, 0x00];
        assert_eq!(x509_version_given(&v3), Some(true));
        // Version 1: the serial number (INTEGER) comes first; long-form lengths.
        let v1 = [0x30, 0x81, 0x05, 0x30, 0x81, 0x02, 0x02, 0x01, 0x07];
        assert_eq!(x509_version_given(&v1), Some(false));
        assert_eq!(x509_version_given(&[0x31, 0x02, 0x30, 0x00]), None);
        assert_eq!(x509_version_given(&[0x30, 0x85, 0, 0, 0, 0, 1]), None);
        assert_eq!(x509_version_given(&[]), None);
    }

    #[test]
    fn tls_files_that_hold_no_pem_are_named_at_start() {
        let dir = std::env::temp_dir().join(format!("fustian-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").expect("write");
        let access = EtcdAccess {
            cafile: Some(junk.clone()),
            ..EtcdAccess::default()
        };
        let e = access
            .connect_options("https://")
            .expect_err("junk CA")
            .to_string();
        assert!(
            e.contains("junk.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let access = EtcdAccess {
            keyfile: Some(junk.clone()),
            certfile: Some(junk.clone()),
            ..EtcdAccess::default()
        };
        let e = access
            .connect_options("https://")
            .expect_err("junk pair")
            .to_string();
        assert!(e.contains("junk.pem"), "{e}");
        let access = EtcdAccess {
            keyfile: Some(junk),
            ..EtcdAccess::default()
        };
        // Half a pair is no client certificate, as flanneld takes it: the junk file is not
        // even read.
        assert!(access.connect_options("https://").is_ok(), "half a pair");
        let _ = std::fs::remove_dir_all(&dir);
    }

    proptest! {
        #[test]
        fn any_der_gives_a_version_answer_or_none(der in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = x509_version_given(&der);
        }
    }

    /// A burst of lines gets the budget, one line saying the rest are counted, then nothing
    /// for the rest of the period; the first line of a later period says how many were left
    /// out, and a period without a burst reports none.
    #[test]
    fn a_line_budget_caps_a_burst_and_counts_what_it_left_out() {
        let start = Instant::now();
        let mut b = LineBudget {
            since: start,
            said: 0,
        };
        let burst: Vec<Admit> = (0..500).map(|_| b.admit(start)).collect();
        assert!(
            burst[..MAX_LEASE_LINES]
                .iter()
                .all(|a| *a == Admit::Line { quiet: 0 })
        );
        assert_eq!(burst[MAX_LEASE_LINES], Admit::Cap);
        assert!(
            burst[MAX_LEASE_LINES + 1..]
                .iter()
                .all(|a| *a == Admit::Quiet)
        );
        // Still in the period.
        let almost = start + LEASE_LINES_PERIOD - Duration::from_millis(1);
        assert_eq!(b.admit(almost), Admit::Quiet);
        let later = start + LEASE_LINES_PERIOD;
        assert_eq!(
            b.admit(later),
            Admit::Line {
                quiet: 501 - MAX_LEASE_LINES
            }
        );
        assert_eq!(b.admit(later), Admit::Line { quiet: 0 });
        let quiet_period = later + LEASE_LINES_PERIOD * 3;
        assert_eq!(b.admit(quiet_period), Admit::Line { quiet: 0 });
        // A clock read before the period began (another thread's `now`) does not reset it.
        assert_eq!(b.admit(start), Admit::Line { quiet: 0 });
    }

    #[test]
    fn entries_are_kept_under_bounded_distinct_names() {
        let key = "/coreos.com/network/subnets/10.244.2.0-24";
        let under = "/coreos.com/network/subnets/".len();
        assert_eq!(entry_key(key.as_bytes(), under), key);
        // Too long, or not UTF-8: a stand-in no lease key can equal, one per raw key.
        let long = format!("{key}{}", "x".repeat(2 * MAX_ENTRY_KEY));
        let a = entry_key(long.as_bytes(), under);
        assert!(a.len() < 200 && a.contains('#'), "{a}");
        assert!(parse_subnet_key("/coreos.com/network", &a).is_none());
        let b = entry_key(format!("{long}y").as_bytes(), under);
        assert_ne!(a, b);
        let c = entry_key(b"/coreos.com/network/subnets/\xff", under);
        let d = entry_key(b"/coreos.com/network/subnets/\xfe", under);
        assert_ne!(c, d);
        assert!(c.contains('#'));
        // The bound counts past the prefix only: a lease under the longest prefix is kept.
        let prefix = format!("/{}", "p".repeat(crate::control::lease::MAX_PREFIX - 1));
        let subnets = format!("{prefix}/subnets/");
        let key = format!("{subnets}10.244.2.0-24&fd00:10:244:2::-64");
        assert_eq!(entry_key(key.as_bytes(), subnets.len()), key);
        assert!(parse_subnet_key(&prefix, &key).is_some());
    }

    #[test]
    fn prefixes_are_cleaned_as_flanneld_joins_them() {
        use crate::control::lease::{clean_prefix, key_under};
        for (given, clean, config) in [
            (
                "/coreos.com/network",
                "/coreos.com/network",
                "/coreos.com/network/config",
            ),
            (
                "/coreos.com/network/",
                "/coreos.com/network",
                "/coreos.com/network/config",
            ),
            ("//cfx//pp/", "/cfx/pp", "/cfx/pp/config"),
            ("/cfx/./pp", "/cfx/pp", "/cfx/pp/config"),
            ("/a/b/../c", "/a/c", "/a/c/config"),
            ("/../a", "/a", "/a/config"),
            ("a/../../b", "../b", "../b/config"),
            ("/", "/", "/config"),
            ("", "", "config"),
            (".", "", "config"),
            ("net", "net", "net/config"),
        ] {
            assert_eq!(clean_prefix(given), clean, "{given:?}");
            assert_eq!(
                key_under(&clean_prefix(given), "config"),
                config,
                "{given:?}"
            );
        }
        assert_eq!(
            crate::control::lease::subnet_key("", "10.244.1.0/24".parse().expect("literal")),
            "subnets/10.244.1.0-24"
        );
        assert!(parse_subnet_key("", "subnets/10.244.1.0-24").is_some());
        assert!(parse_subnet_key("/", "/subnets/10.244.1.0-24").is_some());
    }

    #[test]
    fn a_prefix_range_ends_past_every_key_under_it() {
        assert_eq!(prefix_end(b"/a/subnets/"), b"/a/subnets0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    /// A dual-stack `vxlan` node at 192.0.2.1 (and `ipv6`) holding 10.244.1.0/24 and
    /// fd00:10:244:1::/64, with `leases` stored as listed.
    fn dual_agent(ipv6: Option<&str>, leases: &[(&str, &str)]) -> Agent {
        let opts = EtcdOptions {
            endpoints: vec![],
            prefix: super::super::lease::DEFAULT_PREFIX.to_owned(),
            access: EtcdAccess::default(),
            renew_margin: Duration::from_secs(60),
            ttl: LEASE_TTL,
        };
        let ipv6 = ipv6.map(|t| t.parse().expect("literal"));
        let mut a = Agent::new(opts, Ipv4Addr::new(192, 0, 2, 1), ipv6, Some(MAC)).expect("agent");
        a.config = Some(
            NetworkConfig::parse(
                br#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
            )
            .expect("valid"),
        );
        a.subnet = Some("10.244.1.0/24".parse().expect("literal"));
        a.subnet6 = Some("fd00:10:244:1::/64".parse().expect("literal"));
        for (i, (key, value)) in leases.iter().enumerate() {
            let key = format!("/coreos.com/network/subnets/{key}");
            let class =
                classify(&a.opts.prefix, a.config.as_ref(), key.as_bytes()).expect("a lease key");
            let loose = (class == KeyClass::Other)
                .then(|| flannel_subnet_key(key.as_bytes()))
                .flatten();
            a.entries.put(
                key,
                Entry {
                    create_revision: i64::try_from(i).expect("small") + 2,
                    lease: 0,
                    value: value.as_bytes().to_vec(),
                    class,
                    loose,
                },
                true,
                false,
            );
        }
        a
    }

    const DUAL: &str = r#"{"PublicIP":"192.0.2.2","PublicIPv6":"2001:db8::2","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:02"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:06:02"}}"#;
    const NO_V6_VTEP: &str = r#"{"PublicIP":"192.0.2.3","PublicIPv6":"2001:db8::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:03"}}"#;
    const V4_ONLY: &str = r#"{"PublicIP":"192.0.2.4","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:04"}}"#;

    fn peer_list(a: &mut Agent) -> Vec<(String, String, String)> {
        let mut peers: Vec<_> = a
            .peers()
            .iter()
            .map(|p| {
                (
                    p.subnet.to_string(),
                    p.endpoint.to_string(),
                    p.vtep_mac.map(|m| m.to_string()).unwrap_or_default(),
                )
            })
            .collect();
        peers.sort();
        peers
    }

    /// Two nodes that created keys with one half in common: the later key gives way, the
    /// earlier stays; keys with nothing in common do not clash.
    #[test]
    fn the_later_of_two_keys_sharing_a_half_gives_way() {
        let first = "10.244.2.0-24&fd00:10:244:2::-64";
        let v4_shared = "10.244.2.0-24&fd00:10:244:7::-64";
        let v6_shared = "10.244.8.0-24&fd00:10:244:2::-64";
        let apart = "10.244.9.0-24&fd00:10:244:9::-64";
        // Created in the order listed (revisions 2, 3, 4, 5).
        let a = dual_agent(
            Some("2001:db8::1"),
            &[
                (first, DUAL),
                (v4_shared, DUAL),
                (v6_shared, DUAL),
                (apart, DUAL),
            ],
        );
        let key = |k: &str| format!("/coreos.com/network/subnets/{k}");
        let pair = |k: &str| parse_subnet_key(DEFAULT_PREFIX_FOR_TESTS, &key(k)).expect("key");
        assert_eq!(a.first_claim_elsewhere(&key(first), pair(first)), None);
        assert_eq!(
            a.first_claim_elsewhere(&key(v4_shared), pair(v4_shared)),
            Some(3)
        );
        assert_eq!(
            a.first_claim_elsewhere(&key(v6_shared), pair(v6_shared)),
            Some(4)
        );
        assert_eq!(a.first_claim_elsewhere(&key(apart), pair(apart)), None);
    }

    /// A key of another form than the allocator's (an IPv4-only key, or one with an IPv6
    /// subnet outside the network, on a dual-stack network) holds nothing against a node's key
    /// created after it: the node keeps its subnet, and the peers route it to the node.
    #[test]
    fn an_older_key_of_another_form_takes_no_subnet_from_a_node() {
        let squat_v4 = "10.244.3.0-24";
        let squat_v6 = "10.244.4.0-24&fd00:99::-64";
        let mine = "10.244.3.0-24&fd00:10:244:3::-64";
        let mine2 = "10.244.4.0-24&fd00:10:244:4::-64";
        // The squatters first (revisions 2, 3), the allocator's keys after (4, 5).
        let mut a = dual_agent(
            Some("2001:db8::1"),
            &[
                (squat_v4, V4_ONLY),
                (squat_v6, NO_V6_VTEP),
                (mine, DUAL),
                (mine2, NO_V6_VTEP),
            ],
        );
        let key = |k: &str| format!("/coreos.com/network/subnets/{k}");
        let pair = |k: &str| parse_subnet_key(DEFAULT_PREFIX_FOR_TESTS, &key(k)).expect("key");
        assert_eq!(a.first_claim_elsewhere(&key(mine), pair(mine)), None);
        assert_eq!(a.first_claim_elsewhere(&key(mine2), pair(mine2)), None);
        let peers = peer_list(&mut a);
        assert!(
            peers
                .iter()
                .any(|p| p.0 == "10.244.3.0/24" && p.1.starts_with("192.0.2.2")),
            "{peers:?}"
        );
        assert!(
            peers.iter().all(|p| !p.1.starts_with("192.0.2.4")),
            "{peers:?}"
        );
    }

    const DEFAULT_PREFIX_FOR_TESTS: &str = super::super::lease::DEFAULT_PREFIX;

    #[test]
    fn a_dual_stack_lease_is_two_peers_over_the_matching_underlay() {
        let leases = [
            ("10.244.2.0-24&fd00:10:244:2::-64", DUAL),
            ("10.244.3.0-24&fd00:10:244:3::-64", NO_V6_VTEP),
            ("10.244.4.0-24", V4_ONLY),
        ];
        let row = |s: &str, e: &str, m: &str| (s.to_owned(), e.to_owned(), m.to_owned());
        let mut a = dual_agent(Some("2001:db8::1"), &leases);
        assert_eq!(
            peer_list(&mut a),
            vec![
                row("10.244.2.0/24", "192.0.2.2:8472", "0e:00:00:00:00:02"),
                row("10.244.3.0/24", "192.0.2.3:8472", "0e:00:00:00:00:03"),
                row("10.244.4.0/24", "192.0.2.4:8472", "0e:00:00:00:00:04"),
                row(
                    "fd00:10:244:2::/64",
                    "[2001:db8::2]:8472",
                    "0e:00:00:00:06:02"
                ),
                // No IPv6 VTEP in the lease: the IPv6 subnet goes to the IPv4 one.
                row("fd00:10:244:3::/64", "192.0.2.3:8472", "0e:00:00:00:00:03"),
            ]
        );
        // A node without an IPv6 underlay sends both families over IPv4.
        let mut a = dual_agent(None, &leases);
        let peers = peer_list(&mut a);
        assert!(
            peers.contains(&row(
                "fd00:10:244:2::/64",
                "192.0.2.2:8472",
                "0e:00:00:00:00:02"
            )),
            "{peers:?}"
        );
    }

    #[test]
    fn a_dual_stack_node_writes_flanneld_s_value_at_one_key() {
        let a = dual_agent(Some("2001:db8::1"), &[]);
        assert_eq!(
            a.own_key().as_deref(),
            Some("/coreos.com/network/subnets/10.244.1.0-24&fd00:10:244:1::-64")
        );
        assert_eq!(
            a.own_value().to_json(),
            r#"{"PublicIP":"192.0.2.1","PublicIPv6":"2001:db8::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}}"#
        );
        // Both halves are picked free: neither subnet of a held key, nor this node's.
        let a = dual_agent(
            Some("2001:db8::1"),
            &[
                (
                    "10.244.1.0-24&fd00:10:244:1::-64",
                    r#"{"PublicIP":"192.0.2.1"}"#,
                ),
                ("10.244.2.0-24&fd00:10:244:2::-64", DUAL),
            ],
        );
        let (accepted, _) = a.judge();
        let held = a.held();
        let config = a.config.clone().expect("config");
        for _ in 0..50 {
            let k = random_free(&config, &accepted, &held).expect("free");
            let v6 = k.ipv6.expect("dual");
            assert!(config.allows(k.ipv4) && config.ipv6.is_some_and(|c| c.allows(v6)));
            assert!(!["10.244.1.0/24", "10.244.2.0/24"].contains(&k.ipv4.to_string().as_str()));
            assert!(
                !["fd00:10:244:1::/64", "fd00:10:244:2::/64"].contains(&v6.to_string().as_str())
            );
        }
        // The subnet file's pair is taken only when both halves fit and are free.
        let prev = |v4: &str, v6: Option<&str>| {
            a.previous_free(
                &config,
                (
                    Some(v4.parse().expect("literal")),
                    v6.map(|t| t.parse().expect("literal")),
                ),
                &accepted,
                &held,
            )
        };
        assert!(prev("10.244.9.0/24", Some("fd00:10:244:9::/64")).is_some());
        assert!(prev("10.244.9.0/24", None).is_none());
        assert!(prev("10.244.9.0/24", Some("fd00:10:244:2::/64")).is_none());
        assert!(prev("10.244.2.0/24", Some("fd00:10:244:9::/64")).is_none());
    }

    /// Only a twin of this node's value (everything peers route by equal) on another live
    /// etcd lease is left to its writer; any other value with this node's address is an
    /// overwrite, written back.
    #[test]
    fn only_a_twin_on_another_etcd_lease_is_left_to_it() {
        let mut a = dual_agent(Some("2001:db8::1"), &[]);
        a.lease_id = 7;
        let own = a.own_value();
        assert!(a.shared_address(9, Some(&own)));
        // On this node's own etcd lease, or on none: an overwrite.
        assert!(!a.shared_address(7, Some(&own)));
        assert!(!a.shared_address(0, Some(&own)));
        assert!(!a.shared_address(9, None));
        // The VNI is compared on the 16 bits every flanneld writes: 65537 (an older flanneld
        // writes it 1) agrees with 1.
        let mut wide = own.clone();
        wide.vni = Some(65_537);
        assert!(a.shared_address(9, Some(&wide)));
        const OTHER_MAC: Option<MacAddress> = Some(MacAddress([0x0e, 0, 0, 0, 0, 0x99]));
        type Change = fn(&mut LeaseValue);
        let variants: [(&str, Change); 8] = [
            ("backend udp", |v| v.backend_type = None),
            ("backend host-gw", |v| {
                v.backend_type = Some("host-gw".into());
            }),
            ("VNI", |v| v.vni = Some(2)),
            ("VtepMAC", |v| v.vtep_mac = OTHER_MAC),
            ("PublicIPv6", |v| {
                v.public_ipv6 = Some("2001:db8::9".parse().expect("literal"));
            }),
            ("no PublicIPv6", |v| v.public_ipv6 = None),
            ("IPv6 VNI", |v| v.vni6 = Some(2)),
            ("IPv6 VtepMAC", |v| v.vtep_mac6 = OTHER_MAC),
        ];
        for (what, change) in variants {
            let mut v = own.clone();
            change(&mut v);
            assert!(!a.shared_address(9, Some(&v)), "{what}");
            // Read back from its JSON, as the watch brings it.
            let parsed = LeaseValue::parse(v.to_json().as_bytes()).expect("a lease");
            assert!(!a.shared_address(9, Some(&parsed)), "{what} parsed");
        }
        let parsed = LeaseValue::parse(own.to_json().as_bytes()).expect("a lease");
        assert!(a.shared_address(9, Some(&parsed)));
    }

    /// A key at this node's name deleted and created again is given up only to another node
    /// (a lease its peers take, on an etcd lease) or to a reservation (a valid value of
    /// another address without an etcd lease); junk, or a value no peer routes to, is written
    /// back with its new create revision taken as this node's.
    #[test]
    fn a_key_created_again_is_given_up_only_to_another_node_or_a_reservation() {
        let mut a = dual_agent(Some("2001:db8::1"), &[]);
        a.lease_id = 7;
        let key = a.own_key().expect("a key");
        let udp = r#"{"PublicIP":"192.0.2.2","PublicIPv6":"2001:db8::2"}"#;
        let loopback = DUAL.replace("192.0.2.2", "127.0.0.1");
        let own_ip = DUAL.replace("192.0.2.2", "192.0.2.1");
        let cases: [(&str, &[u8], i64); 7] = [
            ("junk", b"junk", 0),
            ("junk on an etcd lease", b"junk", 9),
            (
                "an address no node has, without an etcd lease",
                loopback.as_bytes(),
                0,
            ),
            (
                "an address no node has, on an etcd lease",
                loopback.as_bytes(),
                9,
            ),
            (
                "a backend the peers do not speak, on an etcd lease",
                udp.as_bytes(),
                9,
            ),
            ("this node's address", own_ip.as_bytes(), 0),
            ("this node's address on an etcd lease", own_ip.as_bytes(), 9),
        ];
        for (what, value, lease) in cases {
            a.own_created = Some(2);
            assert!(
                a.judge_recreated(&key, 3, lease, value).is_ok(),
                "{what}: given up"
            );
            assert_eq!(
                a.own_created,
                Some(3),
                "{what}: the new create revision is taken"
            );
        }
        a.own_created = Some(2);
        let e = a
            .judge_recreated(&key, 3, 0, DUAL.as_bytes())
            .expect_err("a reservation");
        assert!(
            matches!(e, EtcdError::SubnetReserved { public_ip, .. } if public_ip == Ipv4Addr::new(192, 0, 2, 2)),
            "{e:?}"
        );
        assert!(e.to_string().contains("reserved for 192.0.2.2"), "{e}");
        assert_eq!(a.own_created, Some(2));
        // A reservation need not speak the backend: the node with that address rewrites it.
        let e = a
            .judge_recreated(&key, 3, 0, udp.as_bytes())
            .expect_err("a reservation");
        assert!(matches!(e, EtcdError::SubnetReserved { .. }), "{e:?}");
        let e = a
            .judge_recreated(&key, 3, 9, DUAL.as_bytes())
            .expect_err("another node");
        assert!(
            matches!(e, EtcdError::SubnetLeasedAgain { lease: 9, .. }),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("was leased to another node (PublicIP 192.0.2.2, etcd lease 9)"),
            "{e}"
        );
        // The key this node created, or one on its own etcd lease: nothing to judge.
        assert!(a.judge_recreated(&key, 2, 9, DUAL.as_bytes()).is_ok());
        assert!(a.judge_recreated(&key, 3, 7, DUAL.as_bytes()).is_ok());
    }

    #[test]
    fn only_keys_in_flannel_s_form_are_classed_and_kept() {
        let a = dual_agent(Some("2001:db8::1"), &[]);
        let class = |key: &[u8]| {
            let mut raw = b"/coreos.com/network/subnets/".to_vec();
            raw.extend_from_slice(key);
            classify(&a.opts.prefix, a.config.as_ref(), &raw)
        };
        assert_eq!(
            class(b"10.244.2.0-24&fd00:10:244:2::-64"),
            Some(KeyClass::Network)
        );
        for other in [
            "10.244.2.0-24",
            "10.245.2.0-24&fd00:10:244:2::-64",
            "10.244.2.0-25&fd00:10:244:2::-64",
            "10.244.2.0-24&fd00:10:245:2::-64",
        ] {
            assert_eq!(class(other.as_bytes()), Some(KeyClass::Other), "{other}");
        }
        for bad in [
            &b"junk-1"[..],
            b"10.244.2.0-24&anything",
            b"10.244.2.0-24\xff",
            b"10.244.2.0-024&fd00::-64&x",
            b"",
        ] {
            assert_eq!(class(bad), None, "{bad:?}");
        }
        // Read by flanneld as leases: kept as other keys, to hold their subnets.
        for loose in [
            &b"10.244.2.1-24"[..],
            b"10.244.3.0-024",
            b"x10.244.3.0-24",
            b"\xff10.244.3.0-24",
        ] {
            assert_eq!(class(loose), Some(KeyClass::Other), "{loose:?}");
        }
    }

    /// Keys flanneld reads as leases, though not in flannel's form, are never routed but hold
    /// their subnets (as flanneld reads them) against this node's allocation.
    #[test]
    fn keys_flanneld_reads_as_leases_hold_their_subnets() {
        let mut a = dual_agent(
            Some("2001:db8::1"),
            &[
                ("10.244.3.0-024", V4_ONLY),
                ("x10.244.4.0-24&fd00:10:244:4::-064", DUAL),
                ("10.244.5.7-24", NO_V6_VTEP),
            ],
        );
        let (v4, v6) = a.held();
        for net in ["10.244.3.0/24", "10.244.4.0/24", "10.244.5.0/24"] {
            assert!(v4.contains(&net.parse().expect("literal")), "{net} {v4:?}");
        }
        assert!(
            v6.contains(&"fd00:10:244:4::/64".parse().expect("literal")),
            "{v6:?}"
        );
        assert!(peer_list(&mut a).is_empty());
        let (_, rejected) = a.judge();
        assert_eq!(rejected.len(), 3, "{rejected:?}");
        assert!(rejected.iter().all(|r| r.reason == Rejection::BadKey));
        assert!(
            rejected
                .iter()
                .all(|r| r.detail.contains("held for allocation"))
        );
    }

    #[test]
    fn keys_past_a_budget_are_counted_and_taken_when_room_frees() {
        let e = |class| Entry {
            create_revision: 2,
            lease: 0,
            value: b"{}".to_vec(),
            class,
            loose: None,
        };
        let mut t = Entries::with_limits([2, 1]);
        assert!(t.put("a".into(), e(KeyClass::Network), true, false));
        assert!(t.put("b".into(), e(KeyClass::Network), true, false));
        assert!(!t.put("c".into(), e(KeyClass::Network), true, false));
        assert_eq!((t.len(), t.untracked()), (2, 1));
        // Overwritten while untracked: still one.
        assert!(!t.put("c".into(), e(KeyClass::Network), false, false));
        assert_eq!(t.untracked(), 1);
        // This node's key is kept over the budget.
        assert!(t.put("own".into(), e(KeyClass::Network), true, true));
        // The other class has its own budget.
        assert!(t.put("x".into(), e(KeyClass::Other), true, false));
        assert!(!t.put("y".into(), e(KeyClass::Other), true, false));
        assert_eq!((t.len(), t.untracked()), (4, 2));
        // An overwrite of a tracked key changes it only when the entry differs.
        assert!(!t.put("a".into(), e(KeyClass::Network), false, false));
        let mut changed = e(KeyClass::Network);
        changed.lease = 5;
        assert!(t.put("a".into(), changed, false, false));
        // A deletion of an untracked key counts it out.
        assert!(!t.delete("y", KeyClass::Other));
        assert_eq!(t.untracked(), 1);
        assert!(!t.room_for_untracked());
        assert!(t.delete("a", KeyClass::Network));
        assert!(t.delete("b", KeyClass::Network));
        assert!(t.room_for_untracked());
        // The untracked key's next put (or a list) takes it.
        assert!(t.put("c".into(), e(KeyClass::Network), false, false));
        assert_eq!((t.untracked(), t.room_for_untracked()), (0, false));
        assert!(t.forget("c"));
        assert!(!t.forget("c"));
        assert_eq!(t.tracked, [1, 1]);
    }

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
        assert_eq!(previous_subnet6(&path), None);
        std::fs::write(
            &path,
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\n\
             FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:7::1/64\n",
        )
        .expect("write");
        assert_eq!(
            previous_subnet6(&path),
            Some("fd00:10:244:7::/64".parse().expect("literal"))
        );
        std::fs::write(
            &path,
            "FLANNEL_SUBNET=not-a-subnet\nFLANNEL_IPV6_SUBNET=10.0.0.0/8\n",
        )
        .expect("write");
        assert_eq!(previous_subnet(&path), None);
        assert_eq!(previous_subnet6(&path), None);
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
            if let Some(net) = previous_subnet6(&path) {
                prop_assert_eq!(net, net.trunc());
            }
        }
    }
}

#[cfg(test)]
mod vni_tests {
    use super::{Backend, lease_peers};
    use crate::control::lease::{Accepted, LeaseValue};

    fn accepted(vni: u32) -> Vec<Accepted> {
        let text = format!(
            r#"{{"PublicIP":"192.0.2.2","BackendType":"vxlan","BackendData":{{"VNI":{vni},"VtepMAC":"0e:00:00:00:00:02"}}}}"#
        );
        vec![Accepted {
            key: "10.244.50.0-24".to_owned(),
            subnet: "10.244.50.0/24".parse().unwrap(),
            subnet6: None,
            value: LeaseValue::parse(text.as_bytes()).unwrap(),
        }]
    }

    fn vxlan(vni: u32) -> Backend {
        Backend::Vxlan {
            vni,
            port: None,
            mtu: None,
        }
    }

    #[test]
    fn a_vni_above_16_bits_is_compared_as_flanneld_writes_it() {
        // flanneld before v0.24.0 on VNI 70000 writes 4464; later ones and fustian, 70000.
        for written in [4464, 70000] {
            let (peers, ignored) = lease_peers(&vxlan(70000), None, accepted(written));
            assert_eq!((peers.len(), ignored.len()), (1, 0), "VNI {written}");
        }
        let (peers, ignored) = lease_peers(&vxlan(70000), None, accepted(4465));
        assert_eq!((peers.len(), ignored.len()), (0, 1));
        assert_eq!(ignored[0].1, "VNI 4465, not 70000");
        let (peers, _) = lease_peers(&vxlan(1), None, accepted(1));
        assert_eq!(peers.len(), 1);
    }

    #[test]
    fn a_lease_carries_the_whole_vni() {
        let mut value = accepted(1).remove(0).value;
        value.vni = Some(70000);
        assert!(
            value.to_json().contains(r#""VNI":70000,"#),
            "{}",
            value.to_json()
        );
        value.vni = Some(65535);
        assert!(value.to_json().contains(r#""VNI":65535,"#));
    }
}

#[cfg(test)]
mod userinfo_tests {
    use super::hide_userinfo;

    #[test]
    fn credentials_in_endpoint_urls_are_not_shown() {
        let endpoints = [
            "http://alice:s3cr3t@192.0.2.254:1".to_owned(),
            "https://192.0.2.254:2379".to_owned(),
            "bob@192.0.2.9:2379".to_owned(),
            "http://u:pa/ss@192.0.2.8:2379".to_owned(),
        ];
        let text = format!("waiting for etcd at {}", endpoints.join(","));
        assert_eq!(
            hide_userinfo(&text, &endpoints),
            "waiting for etcd at http://***@192.0.2.254:1,https://192.0.2.254:2379,***@192.0.2.9:2379,http://***@192.0.2.8:2379"
        );
        assert_eq!(hide_userinfo("no url", &endpoints), "no url");
    }

    proptest::proptest! {
        /// Whatever the endpoint, its user information does not survive in the text.
        #[test]
        fn no_userinfo_survives(user in "[a-z0-9:%]{1,12}", host in "[a-z0-9.]{1,12}") {
            let endpoint = format!("http://{user}@{host}:2379");
            let shown = hide_userinfo(&format!("at {endpoint}: refused"), &[endpoint]);
            let expected = format!("at http://***@{host}:2379: refused");
            proptest::prop_assert_eq!(shown, expected);
        }
    }
}

#[cfg(test)]
mod expiry_tests {
    use super::EtcdState;
    use crate::control::SourceMetrics;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_lease_past_its_ttl_without_a_renewal_makes_the_node_not_ready() {
        let state = EtcdState::default();
        assert_eq!(state.not_ready(), None, "no lease yet: nothing to say");
        state.lease_lives(60);
        assert_eq!(state.not_ready(), None);
        state.lease_lives(0);
        let why = state.not_ready().expect("expired");
        assert!(why.contains("the subnet lease expired"), "{why}");
        // Renewed: ready again.
        state.lease_lives(60);
        assert_eq!(state.not_ready(), None);
        assert!(state.lease_expires_ms.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn untracked_keys_are_reported_in_both_renderings() {
        let state = EtcdState::default();
        state.keys_untracked.store(3, Ordering::Relaxed);
        assert!(
            state.render_prometheus().contains(
                "# TYPE fustian_etcd_keys_untracked gauge\nfustian_etcd_keys_untracked 3\n"
            )
        );
        assert!(
            state
                .totals()
                .contains(&("etcd_keys_untracked".to_owned(), 3))
        );
    }
}
