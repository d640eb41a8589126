//! The static control source: the peers of the config file, read again when the file changes
//! (its modification time and length are looked at about once a second) or on SIGHUP.
//!
//! Only the peers change live; a reload that changes another setting is applied for its peers
//! and warns that the rest needs a restart. A file that does not parse, or whose peers do not
//! make a valid table, is rejected once (counted, logged) and the last good table keeps
//! forwarding; the unchanged bad file is not tried again until it changes or SIGHUP asks.
//!
//! Counters (`fustian_` in the Prometheus text): `config_reloads` (tables published from the
//! file), `config_reload_errors` (reloads rejected), `config_file_checks` (looks at the file's
//! stamp).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use super::{ControlPlane, SourceMetrics};
use crate::config::{NodeConfig, RawNode};
use crate::error::Error;
use crate::table::{Snapshot, Table};

/// How often the loop wakes up to look for SIGHUP (and for the stop flag).
const TICK: Duration = Duration::from_millis(100);

/// How often the file's stamp is looked at.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Where a reload reads from: the config file, under the same flags as at start.
#[derive(Debug, Clone)]
pub struct Reload {
    /// The config file.
    pub path: PathBuf,
    /// The flags given at start (they still win over the file).
    pub flags: RawNode,
    /// Set by the signal handler; cleared when the reload is done.
    pub requested: Arc<AtomicBool>,
}

/// The file source's counters.
#[derive(Debug, Default)]
pub struct FileCounters {
    /// Tables published from the file.
    pub reloads: AtomicU64,
    /// Reloads rejected (the file did not parse or its peers make no valid table).
    pub reload_errors: AtomicU64,
    /// Looks at the file's stamp.
    pub file_checks: AtomicU64,
}

impl SourceMetrics for FileCounters {
    fn totals(&self) -> Vec<(String, u64)> {
        [
            ("config_reloads", &self.reloads),
            ("config_reload_errors", &self.reload_errors),
            ("config_file_checks", &self.file_checks),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v.load(Ordering::Relaxed)))
        .collect()
    }

    fn render_prometheus(&self) -> String {
        self.totals()
            .into_iter()
            .map(|(n, v)| format!("# TYPE fustian_{n} counter\nfustian_{n} {v}\n"))
            .collect()
    }
}

/// What tells one version of a file from the next: its modification time and length, and
/// which file it is (device, inode) and when that changed (ctime, seconds and nanoseconds), so
/// a file replaced by one of the same size with the old modification time kept (`cp -p`,
/// `rsync -t`, `install -p`, a ConfigMap's symlink swap) still counts as changed.
pub type Stamp = (SystemTime, u64, (u64, u64, i64, i64));

/// Returns the stamp of `path`, or `None` when it cannot be read.
pub fn file_stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).ok()?;
    Some((
        meta.modified().ok()?,
        meta.len(),
        (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec()),
    ))
}

/// The reload decision: SIGHUP, or a stamp that differs from the last one seen, looked at no
/// more often than `every`.
#[derive(Debug, Clone)]
pub struct Watch {
    every: Duration,
    last_check: Instant,
    last_stamp: Option<Stamp>,
}

/// What one look decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The stamp was looked at.
    pub checked: bool,
    /// The peers are to be read again.
    pub reload: bool,
}

impl Watch {
    /// Starts watching at `now`, with the stamp the file had when the node read it.
    pub const fn new(every: Duration, now: Instant, stamp: Option<Stamp>) -> Self {
        Self {
            every,
            last_check: now,
            last_stamp: stamp,
        }
    }

    /// Decides at `now`: reload when `requested` (SIGHUP), or when the stamp is due to be
    /// looked at and `stamp()` gives another one than the last look (a file that vanishes or
    /// comes back counts as a change). `stamp` is called only when due.
    pub fn decide(
        &mut self,
        now: Instant,
        requested: bool,
        stamp: impl FnOnce() -> Option<Stamp>,
    ) -> Decision {
        let due = now.saturating_duration_since(self.last_check) >= self.every;
        let mut changed = false;
        if due {
            self.last_check = now;
            let current = stamp();
            changed = current != self.last_stamp;
            self.last_stamp = current;
        }
        Decision {
            checked: due,
            reload: requested || changed,
        }
    }
}

/// Returns the file source for a node started with `config`: its loop reloads the peers
/// from `reload.path` on SIGHUP or when the file changes.
pub fn source(config: NodeConfig, reload: Reload) -> ControlPlane {
    let counters = Arc::new(FileCounters::default());
    let metrics: Arc<dyn SourceMetrics> = Arc::clone(&counters) as Arc<dyn SourceMetrics>;
    ControlPlane {
        name: "file",
        metrics: Some(metrics),
        run: Box::new(move |table, stop| run(&config, &reload, &counters, &table, &stop)),
    }
}

/// The loop: until `stop` is set, reloads when [`Watch::decide`] says so.
fn run(
    config: &NodeConfig,
    reload: &Reload,
    counters: &FileCounters,
    table: &Table,
    stop: &AtomicBool,
) {
    let mut watch = Watch::new(WATCH_EVERY, Instant::now(), file_stamp(&reload.path));
    while !stop.load(Ordering::Relaxed) {
        let requested = reload.requested.swap(false, Ordering::Relaxed);
        let decision = watch.decide(Instant::now(), requested, || file_stamp(&reload.path));
        if decision.checked {
            counters.file_checks.fetch_add(1, Ordering::Relaxed);
        }
        if decision.reload {
            match reload_peers(config, reload) {
                Ok(snapshot) => {
                    let peers = snapshot.peers().len();
                    let generation = table.publish(snapshot);
                    counters.reloads.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        generation,
                        peers,
                        "reloaded the peers from {}",
                        reload.path.display()
                    );
                }
                Err(e) => {
                    counters.reload_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("reload rejected, the last good table keeps forwarding: {e}");
                }
            }
        }
        std::thread::sleep(TICK);
    }
}

/// Reads the config file again and returns the table for its peers. Only the peers change
/// live; any other setting that differs from the running one is reported and needs a restart.
///
/// # Errors
///
/// The file does not read or parse, or its peers do not make a valid table.
pub fn reload_peers(running: &NodeConfig, reload: &Reload) -> Result<Snapshot, Error> {
    let file = RawNode::from_file(&reload.path)?;
    let new = NodeConfig::resolve(&reload.flags, Some((&reload.path, &file)))?;
    // The wire is the running node's: peers read under another backend, port or VNI would be
    // sent datagrams they do not expect (or lack the VTEP MAC the running backend needs).
    let wire = |c: &NodeConfig| match c.backend {
        crate::config::BackendConfig::Udp => format!("udp on port {}", c.port),
        crate::config::BackendConfig::Vxlan { vni, .. } => {
            format!("vxlan VNI {vni} on port {}", c.port)
        }
    };
    if wire(&new) != wire(running) {
        return Err(crate::config::ConfigError::Invalid {
            origin: crate::config::Origin::File {
                path: reload.path.clone(),
                field: "backend".into(),
            },
            value: wire(&new),
            reason: format!(
                "the running node speaks {}; the backend, its VNI and the port change only with \
                 a restart, so the peers are not reloaded",
                wire(running)
            ),
        }
        .into());
    }
    let mut same = new.clone();
    same.peers.clone_from(&running.peers);
    if &same != running {
        tracing::warn!(
            "{}: only the peers are applied live; the other changes need a restart",
            reload.path.display()
        );
    }
    // The peers go live on the running node: each must fit its networks and underlays, not
    // only the file's (which may add an IPv6 network or underlay that needs a restart).
    for (i, p) in new.peers.iter().enumerate() {
        let misfit = crate::config::subnet_misfit(p.subnet, &running.networks()).or_else(|| {
            crate::config::endpoint_misfit(p.endpoint, running.public_ip, running.public_ipv6)
                .map(str::to_owned)
        });
        if let Some(why) = misfit {
            return Err(crate::config::ConfigError::Invalid {
                origin: crate::config::Origin::File {
                    path: reload.path.clone(),
                    field: format!("peer[{i}]"),
                },
                value: format!("{}={}", p.subnet, p.endpoint),
                reason: format!("{why} on the running node; restart to apply it"),
            }
            .into());
        }
    }
    Ok(Snapshot::new(running.local_subnets(), new.peers)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(secs: u64, len: u64) -> Option<Stamp> {
        Some((
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            len,
            (1, 1, 0, 0),
        ))
    }

    #[test]
    fn looks_at_the_file_once_a_period_and_reloads_on_change() {
        let t0 = Instant::now();
        let mut w = Watch::new(Duration::from_secs(1), t0, stamp(1, 10));
        // Not due: the stamp is not read, nothing to do.
        let d = w.decide(t0 + Duration::from_millis(500), false, || {
            panic!("read before it was due")
        });
        assert_eq!(
            d,
            Decision {
                checked: false,
                reload: false
            }
        );
        // Due, unchanged.
        let d = w.decide(t0 + Duration::from_secs(1), false, || stamp(1, 10));
        assert_eq!(
            d,
            Decision {
                checked: true,
                reload: false
            }
        );
        // Due again a period later, changed: one reload, not repeated for the same stamp.
        assert!(
            w.decide(t0 + Duration::from_secs(2), false, || stamp(2, 10))
                .reload
        );
        assert!(
            !w.decide(t0 + Duration::from_secs(3), false, || stamp(2, 10))
                .reload
        );
        // The length alone, or the file vanishing, is a change too.
        assert!(
            w.decide(t0 + Duration::from_secs(4), false, || stamp(2, 11))
                .reload
        );
        assert!(w.decide(t0 + Duration::from_secs(5), false, || None).reload);
        assert!(!w.decide(t0 + Duration::from_secs(6), false, || None).reload);
    }

    #[test]
    fn sighup_reloads_whether_or_not_the_file_changed() {
        let t0 = Instant::now();
        let mut w = Watch::new(Duration::from_secs(1), t0, stamp(1, 10));
        let d = w.decide(t0, true, || panic!("not due"));
        assert_eq!(
            d,
            Decision {
                checked: false,
                reload: true
            }
        );
        assert!(
            w.decide(t0 + Duration::from_secs(1), true, || stamp(1, 10))
                .reload
        );
    }

    /// A node started from the config file `path` holding `text`, and its reload of that file.
    fn started(path: &Path, text: &str) -> (NodeConfig, Reload) {
        std::fs::write(path, text).expect("write");
        let flags = RawNode::default();
        let file = RawNode::from_file(path).expect("parses");
        let running = NodeConfig::resolve(&flags, Some((path, &file))).expect("valid");
        let reload = Reload {
            path: path.to_owned(),
            flags,
            requested: Arc::new(AtomicBool::new(false)),
        };
        (running, reload)
    }

    /// A reload keeps both of a dual-stack node's subnets local: a peer may not claim the IPv6
    /// one, and the new table still delivers to it.
    #[test]
    fn reload_keeps_a_dual_stack_node_s_subnets() {
        let dir = std::env::temp_dir().join(format!("fustian-reload6-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("node.toml");
        let text = |peer: &str| {
            format!(
                "network = \"10.244.0.0/16\"\nsubnet = \"10.244.1.0/24\"\n\
                 ipv6_network = \"fd00:10:244::/56\"\nipv6_subnet = \"fd00:10:244:1::/64\"\n\
                 public_ip = \"192.0.2.1\"\npublic_ipv6 = \"2001:db8::1\"\n\
                 [[peer]]\nsubnet = \"{peer}\"\npublic_ip = \"2001:db8::2\"\n"
            )
        };
        let (running, reload) = started(&path, &text("fd00:10:244:2::/64"));
        let snap = reload_peers(&running, &reload).expect("reloads");
        assert!(snap.is_local("fd00:10:244:1::5".parse().expect("literal")));
        assert!(snap.is_local("10.244.1.5".parse().expect("literal")));
        // A peer claiming this node's IPv6 subnet is refused, as at start.
        std::fs::write(&path, text("fd00:10:244:1::/64")).expect("write");
        assert!(reload_peers(&running, &reload).is_err());
        // A file that adds IPv6 to an IPv4-only node: its IPv6 peers wait for a restart.
        let v4_file = "network = \"10.244.0.0/16\"\nsubnet = \"10.244.1.0/24\"\n\
                       public_ip = \"192.0.2.1\"\n";
        std::fs::write(&path, v4_file).expect("write");
        let file = RawNode::from_file(&path).expect("parses");
        let v4_node = NodeConfig::resolve(&reload.flags, Some((&path, &file))).expect("valid");
        std::fs::write(&path, text("fd00:10:244:2::/64")).expect("write");
        let e = reload_peers(&v4_node, &reload).expect_err("refused");
        assert!(e.to_string().contains("restart to apply it"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A reload that changes the wire (backend, VNI, port) is refused: the running node would
    /// send its datagrams to peers read as speaking another one.
    #[test]
    fn reload_refuses_another_wire() {
        let dir = std::env::temp_dir().join(format!("fustian-reloadw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("node.toml");
        let text = |extra: &str| {
            format!(
                "network = \"10.244.0.0/16\"\nsubnet = \"10.244.1.0/24\"\n\
                 public_ip = \"192.0.2.1\"\n{extra}\n\
                 [[peer]]\nsubnet = \"10.244.2.0/24\"\npublic_ip = \"192.0.2.2\"\n\
                 vtep_mac = \"0e:00:00:00:00:02\"\n"
            )
        };
        let (running, reload) = started(&path, &text(""));
        assert!(reload_peers(&running, &reload).is_ok());
        for (extra, says) in [
            (
                "backend = \"vxlan\"\nvtep_mac = \"0e:00:00:00:00:01\"",
                "vxlan VNI 1 on port 8472",
            ),
            ("port = 9999", "udp on port 9999"),
        ] {
            std::fs::write(&path, text(extra)).expect("write");
            let e = reload_peers(&running, &reload)
                .expect_err("refused")
                .to_string();
            assert!(
                e.contains(says) && e.contains("speaks udp on port 8285"),
                "{e}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn counters_render_under_their_names() {
        let c = FileCounters::default();
        c.reloads.fetch_add(2, Ordering::Relaxed);
        c.file_checks.fetch_add(5, Ordering::Relaxed);
        let parsed = crate::metrics::parse_prometheus(&c.render_prometheus());
        assert_eq!(parsed, c.totals());
        assert_eq!(
            c.totals(),
            vec![
                ("config_reloads".to_owned(), 2),
                ("config_reload_errors".to_owned(), 0),
                ("config_file_checks".to_owned(), 5),
            ]
        );
    }
}
