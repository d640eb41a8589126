//! After setup a node keeps no privilege: every capability dropped, or an unprivileged user.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use fustian::lab::pod_addr;
use fustian::lab::traffic::udp_ping_pong;

use crate::common::{EXE, serial, skip, topology};

/// Returns the value of `field` in /proc/<pid>/task/<tid>/status for every thread.
fn task_field(pid: u32, field: &str) -> Vec<String> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("procfs")
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        if let Some(line) = status.lines().find(|l| l.starts_with(field)) {
            out.push(line[field.len()..].trim().to_owned());
        }
    }
    out
}

#[test]
fn nodes_run_without_privileges() {
    if skip("nodes_run_without_privileges") {
        return;
    }
    let _serial = serial();
    let mut topo = topology();
    let a_args = topo.node_args(0, &["--threads", "2"]);
    let a = topo
        .start_node(0, EXE, &a_args)
        .unwrap_or_else(|e| panic!("{e}"));
    // Node B switches to `nobody`, which must still be able to write its stats file.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(topo.dir.path(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod scratch dir");
    let b_args = topo.node_args(1, &["--threads", "2", "--user", "nobody"]);
    let b = topo
        .start_node(1, EXE, &b_args)
        .unwrap_or_else(|e| panic!("{e}"));

    let stop = Arc::new(AtomicBool::new(false));
    for (from, to) in [(0, 1), (1, 0)] {
        let lat = udp_ping_pong(&topo.pods[from], &topo.pods[to], pod_addr(to, 7), 20, &stop)
            .expect("ping-pong runs");
        assert_eq!(lat.replies, 20, "{from}->{to} without privileges");
    }
    let pid_a = topo.processes[a].pid().expect("running");
    let caps = task_field(pid_a, "CapEff:");
    assert!(caps.len() >= 3, "main thread and two workers: {caps:?}");
    assert!(
        caps.iter().all(|c| c.trim_start_matches('0').is_empty()),
        "CapEff {caps:?}"
    );
    let pid_b = topo.processes[b].pid().expect("running");
    let uids = task_field(pid_b, "Uid:");
    assert!(
        uids.iter()
            .all(|u| u.split_whitespace().all(|id| id == "65534")),
        "Uid {uids:?}"
    );
}
