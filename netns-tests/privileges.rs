//! After setup a node keeps no privilege: every capability dropped, or an unprivileged user.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use fustian::lab::pod_addr;
use fustian::lab::traffic::udp_ping_pong;

use crate::common::{EXE, MASQ_JUMP, iptables, serial, skip, topology, wait_for};

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
    // As another user too, no thread has a way back to a capability.
    let threads = thread_creds(pid_b);
    assert!(privileged(&threads).is_empty(), "{threads:#?}");
    let log = topo.processes[b].log();
    assert!(!log.contains("CAP_SETPCAP"), "{log}");
}

/// `CAP_NET_ADMIN` and `CAP_NET_RAW` (12 and 13), what the masquerade thread keeps for its
/// tools.
const NET_CAPS: u64 = (1 << 12) | (1 << 13);

/// One thread's name and the lines of /proc/<pid>/task/<tid>/status that say what it may do.
#[derive(Debug)]
pub(crate) struct Creds {
    tid: String,
    pub(crate) name: String,
    inheritable: u64,
    permitted: u64,
    effective: u64,
    bounding: u64,
    ambient: u64,
    no_new_privs: u64,
}

/// Returns the credentials of every thread of `pid`.
pub(crate) fn thread_creds(pid: u32) -> Vec<Creds> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("procfs")
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        // A thread that ended since the directory was read has no status.
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let field = |name: &str, radix: u32| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| u64::from_str_radix(v.trim(), radix).ok())
                .unwrap_or(u64::MAX)
        };
        out.push(Creds {
            tid: task.file_name().to_string_lossy().into_owned(),
            name: comm.trim().to_owned(),
            inheritable: field("CapInh:", 16),
            permitted: field("CapPrm:", 16),
            effective: field("CapEff:", 16),
            bounding: field("CapBnd:", 16),
            ambient: field("CapAmb:", 16),
            no_new_privs: field("NoNewPrivs:", 10),
        });
    }
    out
}

/// Returns what is wrong with `threads` for a node running as root without `--user`: a thread
/// holding or able to regain a capability (the masquerade thread: more than `CAP_NET_ADMIN` and
/// `CAP_NET_RAW`), or able to gain privileges through `execve`.
pub(crate) fn privileged(threads: &[Creds]) -> Vec<String> {
    let mut wrong = Vec::new();
    for t in threads {
        let allowed = if t.name == "fustian-masq" {
            NET_CAPS
        } else {
            0
        };
        let sets = [
            ("CapInh", t.inheritable),
            ("CapPrm", t.permitted),
            ("CapEff", t.effective),
            ("CapBnd", t.bounding),
            ("CapAmb", t.ambient),
        ];
        for (set, caps) in sets {
            if caps & !allowed != 0 {
                wrong.push(format!("{} ({}): {set} {caps:016x}", t.name, t.tid));
            }
        }
        if t.no_new_privs != 1 {
            wrong.push(format!(
                "{} ({}): NoNewPrivs {}",
                t.name, t.tid, t.no_new_privs
            ));
        }
    }
    wrong
}

#[test]
fn a_root_node_without_user_keeps_no_capability_on_any_thread() {
    if skip("a_root_node_without_user_keeps_no_capability_on_any_thread") {
        return;
    }
    let _serial = serial();
    let mut topo = topology();
    // Every thread a node may have when it drops its privileges: the log writer, the HTTP
    // endpoint (both started before setup), the masquerade keeper, the trace server, workers.
    let args = topo.node_args(
        0,
        &[
            "--threads",
            "2",
            "--ip-masq",
            "--iptables-resync",
            "1",
            "--healthz-port",
            "9117",
        ],
    );
    let node = topo
        .start_node(0, EXE, &args)
        .unwrap_or_else(|e| panic!("{e}"));
    let pid = topo.processes[node].pid().expect("running");
    let log = || topo.processes[node].log();
    let settled = wait_for(Duration::from_secs(5), || {
        privileged(&thread_creds(pid)).is_empty()
    });
    let threads = thread_creds(pid);
    assert!(
        settled,
        "{:#?}\n{threads:#?}\n{}",
        privileged(&threads),
        log()
    );
    let names: Vec<&str> = threads.iter().map(|t| t.name.as_str()).collect();
    for name in [
        "fustian",
        "fustian-log",
        "fustian-http",
        "fustian-masq",
        "fustian-w0",
        "fustian-w1",
    ] {
        assert!(names.contains(&name), "no thread {name}: {names:?}");
    }
    let masq = threads
        .iter()
        .find(|t| t.name == "fustian-masq")
        .expect("listed");
    assert_eq!(masq.effective, NET_CAPS, "{masq:?}");
    assert_eq!(masq.ambient, NET_CAPS, "{masq:?}");

    // The masquerade thread still runs its tools: a jump deleted by hand comes back.
    let from = topo.counter(0, "iptables_repairs");
    assert!(iptables(&topo.hosts[0], &MASQ_JUMP).0, "delete the jump");
    let mut check = MASQ_JUMP;
    check[2] = "-C";
    assert!(
        wait_for(Duration::from_secs(8), || iptables(&topo.hosts[0], &check)
            .0),
        "jump not restored:\n{}",
        log()
    );
    assert!(
        wait_for(Duration::from_secs(5), || topo
            .counter(0, "iptables_repairs")
            > from),
        "{:?}",
        topo.stats(0)
    );
    assert_eq!(topo.counter(0, "iptables_errors"), 0, "{:?}", topo.stats(0));

    // Root without capabilities still owns root's files: the node says so, once. Holding
    // CAP_SETPCAP, it has nothing to say about one.
    let said = log().matches("--user").count();
    assert_eq!(said, 1, "{}", log());
    assert!(!log().contains("CAP_SETPCAP"), "{}", log());
    let status = topo.processes[node].stop(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}:\n{}",
        topo.processes[node].log()
    );
    let (_, nat) = iptables(&topo.hosts[0], &["-t", "nat", "-S"]);
    assert!(!nat.contains("FLANNEL"), "rules left behind: {nat}");
}
