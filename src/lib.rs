//! fustian: a userspace overlay dataplane for flannel-style pod networks.
//!
//! It reads IP packets from a TUN device, finds the node that owns the destination pod subnet
//! in a lock-free table, and sends each packet to that node over UDP in flannel's `udp` backend
//! format; the receiving node checks the datagram and writes the inner packet into its own TUN
//! device. The pure parts (`wire`, `table`, `datapath`, `offload`, `config`) make no syscalls:
//! `datapath` holds every per-packet decision of a worker, in both directions; `tun`, `udp` and
//! `event` do the I/O, the event loops only carrying out the datapath's plans; `node` and `lab`
//! put them together.

pub mod cli;
pub mod config;
pub mod control;
pub mod datapath;
pub mod doctor;
pub mod error;
pub mod event;
pub mod http;
pub mod iface;
pub mod lab;
pub mod logging;
pub mod masq;
pub mod metrics;
pub mod node;
pub mod offload;
pub mod paths;
pub mod show;
pub mod sys;
pub mod table;
pub mod trace;
pub mod tun;
pub mod udp;
pub mod wire;

pub use error::Error;
