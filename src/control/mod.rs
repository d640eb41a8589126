//! The control plane: where the table of peers comes from.
//!
//! - static: flags and the config file (`crate::config`), reloaded on SIGHUP;
//! - [`lease`]: flannel's etcd lease values and their keys, parsed and written exactly as
//!   flanneld does, so fustian nodes and flanneld nodes can share one etcd;
//! - [`netconf`]: flannel's network config, read as flanneld's Go decoder reads it
//!   ([`gojson`]: field names in any case, later duplicates winning, Go's type rules);
//! - `etcd` (feature `etcd`): the agent that acquires this node's subnet, keeps its lease and
//!   watches the others into the table, on its own thread.
//!
//! Nothing here runs on a packet worker: the control plane builds a new table snapshot and
//! publishes it; workers only load it.

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod gojson;
pub mod lease;
pub mod netconf;
