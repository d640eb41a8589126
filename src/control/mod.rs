//! The control plane: where the table of peers comes from.
//!
//! - [`file`]: the static source, flags and the config file (`crate::config`), whose peers
//!   are read again when the file changes or on SIGHUP;
//! - [`lease`]: flannel's etcd lease values and their keys, parsed and written exactly as
//!   flanneld does, so fustian nodes and flanneld nodes can share one etcd;
//! - [`netconf`]: flannel's network config, read as flanneld's Go decoder reads it
//!   ([`gojson`]: field names in any case, later duplicates winning, Go's type rules);
//! - `etcd` (feature `etcd`): the agent that acquires this node's subnet, keeps its lease and
//!   watches the others into the table, on its own thread;
//! - [`churn`]: synthetic updates at a fixed rate (`--table-churn`), for tests and
//!   measurements only.
//!
//! Each source is handed to the node as a [`ControlPlane`]: the node runs it on its own thread
//! once set up, with the table and the stop flag, and shows its [`SourceMetrics`].
//!
//! Nothing here runs on a packet worker: the control plane builds a new table snapshot and
//! publishes it; workers only load it.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::table::Table;

pub mod churn;
pub mod dotenv;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod file;
pub mod gojson;
pub mod lease;
pub mod netconf;

/// Why a control source stopped the node, when it did (see [`stop_node`]).
static FATAL: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Stops the node for a reason it cannot go on with (its subnet now belongs to another node,
/// say): records `why` for [`fatal`] (the first reason wins) and sets the stop flag, so the
/// node tears down as on SIGTERM and the process then exits with an error.
pub fn stop_node(why: String, stop: &AtomicBool) {
    if let Ok(mut slot) = FATAL.lock() {
        slot.get_or_insert(why);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Returns the reason a control source stopped the node, if one did.
pub fn fatal() -> Option<String> {
    FATAL.lock().ok().and_then(|slot| slot.clone())
}

/// Counters a control source keeps while it runs, read from any thread.
pub trait SourceMetrics: Send + Sync {
    /// Returns `(name, value)` pairs, names without the `fustian_` prefix (for `/status`).
    fn totals(&self) -> Vec<(String, u64)>;

    /// Renders the same counters in the Prometheus text format (`fustian_` names, with their
    /// `# TYPE` lines), for `/metrics` and the stats file.
    fn render_prometheus(&self) -> String;

    /// Returns why the node is not ready as far as this source can tell (its lease expired,
    /// say), for `/readyz`.
    fn not_ready(&self) -> Option<String> {
        None
    }
}

/// The loop of a control source: run once with the table and the stop flag; it returns when
/// the flag is set.
pub type RunSource = Box<dyn FnOnce(Arc<Table>, Arc<AtomicBool>) + Send>;

/// A source of table updates, as the node runs it.
pub struct ControlPlane {
    /// A short name, for the thread (`fustian-<name>`) and the logs.
    pub name: &'static str,
    /// Its counters, shown beside the node's.
    pub metrics: Option<Arc<dyn SourceMetrics>>,
    /// The loop that publishes into the table.
    pub run: RunSource,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("name", &self.name)
            .field("metrics", &self.metrics.is_some())
            .finish_non_exhaustive()
    }
}
