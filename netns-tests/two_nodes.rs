//! Two fustian `udp` nodes: echo both ways, 100 MiB TCP both ways with matching hashes, clean
//! exit that removes the TUN device.

use std::time::Duration;

use crate::common::{
    BULK, exchange_both_ways, for_each_loop, serial, skip, start_both, topology, wait_for,
};

#[test]
fn echo_and_bulk_transfer_both_ways() {
    if skip("echo_and_bulk_transfer_both_ways") {
        return;
    }
    let _serial = serial();
    for_each_loop("echo_and_bulk_transfer_both_ways", |extra| {
        let mut topo = topology();
        start_both(&mut topo, extra);
        exchange_both_ways(&topo);
        wait_for_stats(&topo);
        check_offloads(&topo, extra);
        check_counters_and_exit(&mut topo);
    });
}

/// Waits until each node's stats file shows the bulk transfers (it is rewritten every 250 ms),
/// so no counter is read before the node wrote it for this traffic.
fn wait_for_stats(topo: &fustian::lab::Topology) {
    for i in 0..2 {
        let done = wait_for(Duration::from_secs(5), || {
            topo.counter(i, "tx_bytes") > BULK && topo.counter(i, "rx_bytes") > BULK
        });
        assert!(done, "node {i}: {:?}", topo.stats(i));
    }
}

/// With offloads (the default) the bulk transfers went as super-packets: TSO reads cut and
/// sent with GSO, GRO reads merged for TUN; with `--offload off` none of that happened.
fn check_offloads(topo: &fustian::lab::Topology, extra: &[&str]) {
    let off = extra.contains(&"off");
    for i in 0..2 {
        for name in [
            "tun_rx_super",
            "tx_gso_sends",
            "rx_gro_reads",
            "tun_tx_merged",
        ] {
            let n = topo.counter(i, name);
            if off {
                assert_eq!(n, 0, "node {i}: {name} with --offload off");
            } else {
                assert!(
                    n > 0,
                    "node {i}: {name} is 0 with offloads on: {:?}",
                    topo.stats(i)
                );
            }
        }
        assert_eq!(topo.counter(i, "drop_tun_bad_flags"), 0);
    }
}

fn check_counters_and_exit(topo: &mut fustian::lab::Topology) {
    // The traffic went through fustian: each node sent and received > 100 MiB of datagrams
    // (waited for in `wait_for_stats`).
    for i in 0..2 {
        assert_eq!(topo.counter(i, "drop_oversize"), 0);
        assert_eq!(topo.counter(i, "drop_spoofed_source"), 0);
    }

    // SIGTERM: exit 0 and the TUN device this process created is gone.
    for i in 0..2 {
        let status = topo.processes[i]
            .stop(Duration::from_secs(5))
            .expect("was running");
        assert!(
            status.success(),
            "node {i} exited with {status}:\n{}",
            topo.processes[i].log()
        );
        assert!(
            topo.hosts[i].ip(&["link", "show", "flannel0"]).is_err(),
            "flannel0 still exists in node {i} after exit"
        );
    }
}
