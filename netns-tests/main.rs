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
mod doctor;
mod dual_stack;
#[cfg(feature = "etcd")]
mod etcd;
mod flannel_compat;
mod garbage;
mod hostile;
mod http;
mod icmp;
mod kernels;
mod kprofile;
mod lab;
mod masq;
mod privileges;
mod reload;
mod soak;
mod trace;
mod two_nodes;
mod vxlan;

/// The etcd tests are part of the suite: a build without the feature fails here, saying how to
/// run them, instead of passing without them.
#[cfg(not(feature = "etcd"))]
#[test]
fn etcd_tests_need_the_etcd_feature() {
    panic!(
        "the etcd tests need the `etcd` feature: run `cargo test --all-features` (with \
         protobuf-compiler and etcd-server installed, see README)"
    );
}
