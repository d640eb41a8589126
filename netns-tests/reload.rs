//! An edit of the config file (watched) or SIGHUP reloads the peers; a bad edit is rejected,
//! once, while the last good table keeps forwarding; a restart resumes forwarding within a
//! second.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use fustian::lab::pod_addr;
use fustian::lab::traffic::udp_ping_pong;

use crate::common::{EXE, serial, signal, skip, topology, wait_for};

fn config(peer_ip: &str, subnet_file: &str) -> String {
    format!(
        "network = \"10.244.0.0/16\"\nsubnet = \"10.244.1.0/24\"\npublic_ip = \"192.0.2.1\"\n\
         subnet_file = \"{subnet_file}\"\n\n[[peer]]\nsubnet = \"10.244.2.0/24\"\n\
         public_ip = \"{peer_ip}\"\n"
    )
}

#[test]
fn sighup_reloads_peers_and_a_restart_resumes_quickly() {
    if skip("sighup_reloads_peers_and_a_restart_resumes_quickly") {
        return;
    }
    let _serial = serial();
    let mut topo = topology();
    let b_args = topo.node_args(1, &[]);
    topo.start_node(1, EXE, &b_args)
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = topo.dir.path().to_path_buf();
    let file = dir.join("a.toml");
    let subnet_file = dir.join("node-0").join("subnet.env");
    let subnet_file = subnet_file.to_string_lossy().into_owned();
    std::fs::write(&file, config("192.0.2.2", &subnet_file)).expect("write config");
    let a_args: Vec<String> = [
        "run".to_owned(),
        "--config".to_owned(),
        file.to_string_lossy().into_owned(),
        "--stats-file".to_owned(),
        topo.stats_path(0).to_string_lossy().into_owned(),
    ]
    .to_vec();
    let a = topo
        .start_node(0, EXE, &a_args)
        .unwrap_or_else(|e| panic!("{e}"));
    let pid = topo.processes[a].pid().expect("running");
    let stop = Arc::new(AtomicBool::new(false));
    let echo = |topo: &fustian::lab::Topology, n| {
        udp_ping_pong(&topo.pods[0], &topo.pods[1], pod_addr(1, 7), n, &stop).expect("runs")
    };
    assert_eq!(echo(&topo, 5).replies, 5, "forwarding before any reload");

    // A peer that moved elsewhere: the edit alone (the file is watched) moves the table, and
    // B's pods are no longer reachable.
    std::fs::write(&file, config("192.0.2.77", &subnet_file)).expect("write config");
    assert!(wait_for(Duration::from_secs(3), || topo
        .counter(0, "config_reloads")
        == 1));
    assert_eq!(
        echo(&topo, 3).replies,
        0,
        "still forwarding to the old peer after the reload"
    );

    // Back again.
    std::fs::write(&file, config("192.0.2.2", &subnet_file)).expect("write config");
    assert!(wait_for(Duration::from_secs(3), || topo
        .counter(0, "config_reloads")
        == 2));
    assert_eq!(
        echo(&topo, 5).replies,
        5,
        "forwarding after the second reload"
    );

    // A bad edit is rejected (once, not on every look at the unchanged file) and the last
    // good table keeps forwarding.
    std::fs::write(&file, config("not-an-ip", &subnet_file)).expect("write config");
    let rejected = wait_for(Duration::from_secs(3), || {
        topo.counter(0, "config_reload_errors") == 1
    });
    assert!(rejected, "{:?}", topo.stats(0));
    assert_eq!(topo.counter(0, "config_reloads"), 2);
    assert_eq!(
        echo(&topo, 5).replies,
        5,
        "forwarding after a rejected edit"
    );
    // Two more looks at the unchanged bad file (the file is looked at about once a second).
    let checks = topo.counter(0, "config_file_checks");
    assert!(
        wait_for(Duration::from_secs(5), || topo
            .counter(0, "config_file_checks")
            >= checks + 2),
        "the file is no longer watched: {:?}",
        topo.stats(0)
    );
    assert_eq!(
        topo.counter(0, "config_reload_errors"),
        1,
        "the bad file was tried again"
    );

    // A good file again, then SIGHUP with the file unchanged: SIGHUP alone reloads too.
    std::fs::write(&file, config("192.0.2.2", &subnet_file)).expect("write config");
    assert!(wait_for(Duration::from_secs(3), || topo
        .counter(0, "config_reloads")
        == 3));
    signal(pid, libc::SIGHUP);
    assert!(
        wait_for(Duration::from_secs(3), || topo.counter(0, "config_reloads")
            == 4),
        "SIGHUP did not reload: {:?}",
        topo.stats(0)
    );
    let log = topo.processes[a].log();
    assert!(
        log.contains("a.toml: peer[0] `not-an-ip`"),
        "the error names the field:\n{log}"
    );

    // Restart: forwarding resumes within a second of the new process starting.
    std::fs::write(&file, config("192.0.2.2", &subnet_file)).expect("write config");
    let status = topo.processes[a]
        .stop(Duration::from_secs(5))
        .expect("was running");
    assert!(status.success());
    let started = Instant::now();
    topo.start_node(0, EXE, &a_args)
        .unwrap_or_else(|e| panic!("{e}"));
    while echo(&topo, 1).replies == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no forwarding after restart"
        );
    }
    // How long a restart interrupts forwarding, reported rather than bounded tightly: on a
    // busy two-CPU machine the figure varies; the 5 s deadline above is the failure bound.
    eprintln!(
        "forwarding resumed {:?} after the restart",
        started.elapsed()
    );
}
