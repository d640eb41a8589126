//! Soak: traffic both ways while the table changes many times a second; flows whose peers did
//! not change lose nothing; resident memory and open descriptors stay flat. Bounded to about
//! 100 seconds; `FUSTIAN_SOAK_SECS` makes it longer (or shorter).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use fustian::lab::pod_addr;
use fustian::lab::traffic::{Amount, tcp_bulk};

use crate::common::{serial, skip, start_both, topology};

/// Resident memory of `pid` in KiB. A node that is gone (or a /proc without the field) fails
/// the test: a dead node must never pass the "flat" checks with zeros.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("node {pid} is gone: cannot read its /proc status: {e}"));
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("node {pid}: no VmRSS in /proc status:\n{status}"))
}

/// Open descriptors of `pid`; fails the test when they cannot be listed.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(Iterator::count)
        .unwrap_or_else(|e| panic!("node {pid} is gone: cannot list its descriptors: {e}"))
}

#[test]
fn soak_with_table_churn() {
    if skip("soak_with_table_churn") {
        return;
    }
    let _serial = serial();
    let secs: u64 = std::env::var("FUSTIAN_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let mut topo = topology();
    start_both(&mut topo, &["--table-churn", "200"]);
    let pids: Vec<u32> = topo.processes.iter().filter_map(|p| p.pid()).collect();
    assert_eq!(pids.len(), 2, "both nodes run");
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let warmup = Duration::from_secs(secs.min(100) / 10).max(Duration::from_secs(2));
    let mut first: Option<Vec<(u64, usize)>> = None;
    let mut rounds = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        // Both directions at once, 3 s each round, every byte hashed.
        let (ab, ba) = std::thread::scope(|s| {
            let ab = s.spawn(|| {
                tcp_bulk(
                    &topo.pods[0],
                    &topo.pods[1],
                    pod_addr(1, 5201),
                    Amount::Duration(Duration::from_secs(3)),
                    true,
                    &stop,
                )
            });
            let ba = s.spawn(|| {
                tcp_bulk(
                    &topo.pods[1],
                    &topo.pods[0],
                    pod_addr(0, 5202),
                    Amount::Duration(Duration::from_secs(3)),
                    true,
                    &stop,
                )
            });
            (
                ab.join().expect("a->b thread"),
                ba.join().expect("b->a thread"),
            )
        });
        let (ab, ba) = (ab.expect("a->b runs"), ba.expect("b->a runs"));
        assert!(ab.intact() && ba.intact(), "round {rounds}: {ab:?} {ba:?}");
        rounds += 1;
        if first.is_none() && start.elapsed() >= warmup {
            first = Some(pids.iter().map(|&p| (rss_kib(p), fds(p))).collect());
        }
    }
    let first = first.expect("sampled after warm-up");
    let last: Vec<(u64, usize)> = pids.iter().map(|&p| (rss_kib(p), fds(p))).collect();
    for (i, ((rss0, fd0), (rss1, fd1))) in first.iter().zip(&last).enumerate() {
        assert_eq!(fd0, fd1, "node {i}: open descriptors {fd0} -> {fd1}");
        // Flat: allow 10 % and 2 MiB of allocator noise, not growth per packet or update.
        assert!(
            *rss1 <= rss0 + rss0 / 10 + 2048,
            "node {i}: RSS {rss0} KiB -> {rss1} KiB"
        );
        eprintln!("soak node {i}: RSS {rss0} -> {rss1} KiB, fds {fd0} -> {fd1}");
    }
    for i in 0..2 {
        assert!(
            topo.counter(i, "table_generation") > 1000,
            "{:?}",
            topo.stats(i)
        );
        let no_route = topo.counter(i, "drop_no_route");
        assert!(
            no_route <= 16,
            "node {i}: {no_route} no_route drops: {:?}",
            topo.stats(i)
        );
    }
    eprintln!("soak: {rounds} rounds in {:?}", start.elapsed());
}
