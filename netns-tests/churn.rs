//! Table updates published while traffic flows: every worker sees them, no packet of the
//! flows whose peers did not change is lost.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use fustian::lab::pod_addr;
use fustian::lab::traffic::{Amount, tcp_bulk};

use crate::common::{BULK, for_each_loop, serial, skip, start_both, topology, wait_for};

#[test]
fn table_swaps_during_a_bulk_transfer() {
    if skip("table_swaps_during_a_bulk_transfer") {
        return;
    }
    let _serial = serial();
    for_each_loop("table_swaps_during_a_bulk_transfer", |extra| {
        let mut topo = topology();
        let mut args = extra.to_vec();
        args.extend(["--table-churn", "500"]);
        start_both(&mut topo, &args);
        let before = topo.counter(0, "table_generation");
        let stop = Arc::new(AtomicBool::new(false));
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
            assert!(r.intact(), "{from}->{to}: {r:?}");
        }
        // Read the counters only once the stats files show the transfers.
        for i in 0..2 {
            let caught_up = wait_for(Duration::from_secs(5), || {
                topo.counter(i, "tx_bytes") > BULK && topo.counter(i, "rx_bytes") > BULK
            });
            assert!(caught_up, "node {i}: {:?}", topo.stats(i));
        }
        let after = topo.counter(0, "table_generation");
        assert!(
            after > before + 100,
            "only {} table updates during the transfer",
            after - before
        );
        for i in 0..2 {
            // A snapshot that lost the real peer would show up here as no_route drops; the
            // few expected come from the kernel's own IPv6 router solicitations on the TUN.
            let no_route = topo.counter(i, "drop_no_route");
            assert!(
                no_route <= 8,
                "node {i}: {no_route} no_route drops: {:?}",
                topo.stats(i)
            );
            assert_eq!(
                topo.counter(i, "drop_unknown_sender"),
                0,
                "{:?}",
                topo.stats(i)
            );
            assert_eq!(
                topo.counter(i, "drop_spoofed_source"),
                0,
                "{:?}",
                topo.stats(i)
            );
        }
    });
}
