//! The crate-level error for fatal setup failures; each module's own error is wrapped here.

use std::io;

/// A failure that stops `fustian run` or `fustian lab` before or outside the packet path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The TUN device cannot be set up.
    #[error(transparent)]
    Tun(#[from] crate::tun::TunError),
    /// The UDP socket cannot be set up.
    #[error(transparent)]
    Udp(#[from] crate::udp::UdpError),
    /// The masquerade or forward rules cannot be installed.
    #[error(transparent)]
    Masq(#[from] crate::masq::MasqError),
    /// The table cannot be built.
    #[error("invalid peer table: {0}")]
    Table(#[from] crate::table::TableError),
    /// The underlay interface cannot be found or read.
    #[error("underlay: {0}")]
    Underlay(String),
    /// A process limit (`RLIMIT_*`) leaves too little for the node.
    #[error("{0}")]
    Limit(String),
    /// A stop was asked for while the node was starting: the step named was not taken.
    #[error("asked to stop before {0}")]
    Stopped(&'static str),
    /// A worker's event loop failed.
    #[error("worker {id} failed: {source}")]
    Worker {
        /// The worker.
        id: usize,
        /// The error.
        source: io::Error,
    },
    /// The lab could not build or run its nodes.
    #[error("lab: {0}")]
    Lab(String),
    /// Another I/O failure during setup, with what was being done.
    #[error("cannot {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
}
