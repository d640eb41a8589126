//! Two fustian nodes: echo both ways, 100 MB TCP both ways with matching hashes, clean exit.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use fustian::lab::pod_addr;
use fustian::lab::traffic::{Amount, tcp_bulk, udp_ping_pong};

use crate::common::{skip, start_both, topology, wait_for};

const BULK: u64 = 100 * 1024 * 1024;

#[test]
fn echo_and_bulk_transfer_both_ways() {
    if skip("echo_and_bulk_transfer_both_ways") {
        return;
    }
    let mut topo = topology();
    start_both(&mut topo, &[]);
    let stop = Arc::new(AtomicBool::new(false));

    for (from, to) in [(0, 1), (1, 0)] {
        let lat = udp_ping_pong(&topo.pods[from], &topo.pods[to], pod_addr(to, 7), 50, &stop)
            .expect("ping-pong runs");
        assert_eq!(lat.replies, 50, "echo {from}->{to}: {lat:?}");
    }
    for (from, to) in [(0, 1), (1, 0)] {
        let r = tcp_bulk(
            &topo.pods[from],
            &topo.pods[to],
            pod_addr(to, 5201),
            Amount::Bytes(BULK),
            true,
            &stop,
        )
        .expect("bulk transfer runs");
        assert_eq!(r.sent, BULK);
        assert!(r.sent_hash.is_some());
        assert!(r.intact(), "{from}->{to}: {r:?}");
    }

    // The traffic went through fustian: each node sent and received > 100 MB of datagrams.
    // The stats file is rewritten every 250 ms; wait for the last write.
    for i in 0..2 {
        let done = wait_for(Duration::from_secs(3), || {
            topo.counter(i, "tx_bytes") > BULK && topo.counter(i, "rx_bytes") > BULK
        });
        assert!(done, "node {i}: {:?}", topo.stats(i));
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
