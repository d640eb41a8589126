//! Root-only end-to-end tests: real fustian processes in network namespaces, real traffic.
//!
//! Each test builds its own namespaces (unique names from the test process id) with
//! [`fustian::lab::Topology`], whose guards stop the processes and delete the namespaces on
//! drop, also when an assertion fails. Addresses: 192.0.2.0/24 underlay, 10.244.0.0/16 pods,
//! inside the namespaces only.
//!
//! Without root, iproute2 or `/dev/net/tun` every test fails with a message naming what is
//! missing. Set `FUSTIAN_SKIP_NETNS=1` to skip them instead (each prints that it skipped).

mod churn;
mod cli;
mod common;
mod flannel_compat;
mod garbage;
mod hostile;
mod icmp;
mod lab;
mod privileges;
mod reload;
mod soak;
mod two_nodes;
mod vxlan;
