//! The kernel-profile matrix: a node started under each emulated kernel ([`crate::kprofile`])
//! comes up with the event loop and offloads that kernel gives it, says so in its log and in
//! `fustian_info`, and carries TCP both ways with matching hashes, first (`udp`, with
//! `--ip-masq`) to a node on the full kernel, then (`vxlan`) to a node on the same profile.
//! Each profile's rules are also checked on their own, by calls made directly under it.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use fustian::lab::LabBackend::{self, Udp, Vxlan};
use fustian::lab::{Topology, pod_addr};
use proptest::prelude::*;

use crate::common::{EXE, MASQ_JUMP, serial, skip, topology, wait_for};
use crate::kprofile::{Profile, Version, expected_probes, probe_calls, syscalls};

/// Bytes of each transfer: enough for super-packets and many batches, small enough that the
/// whole matrix stays well under a minute.
const BULK: u64 = 4 * 1024 * 1024;
/// The `/metrics` port of both nodes (each in its own namespace).
const HTTP_PORT: u16 = 9401;

/// What a node under a profile must come up with.
struct Expect {
    /// The emulated release.
    version: Version,
    /// `offload=` with `--offload auto`: TUN TSO (2.6.27), `UDP_SEGMENT` (4.18), `UDP_GRO`
    /// (5.0); USO (6.2) on none of these.
    offload: &'static str,
    /// The loop `--io auto` picks, with offloads and without: io_uring needs its calls (5.1),
    /// the probe (5.6) and fast poll (5.7).
    io: &'static str,
    /// A part of `io_reason` saying why.
    reason: &'static str,
    /// io_uring: whether the receive is multishot (buffer rings 5.19, multishot `RECVMSG` 6.0).
    multishot_receive: bool,
    /// io_uring: whether TUN reads are multishot (the opcode 6.7, trusted from 6.12 by the
    /// release the node reads; before 5.19 the buffer ring is refused already).
    multishot_tun_read: bool,
}

/// The matrix. The full kernel (the other node of the first half) is not listed: its offloads
/// are whatever the machine running the tests has.
const MATRIX: [Expect; 6] = [
    Expect {
        version: Version(3, 10, 0),
        offload: "tso",
        io: "epoll",
        reason: "io_uring_setup failed",
        multishot_receive: false,
        multishot_tun_read: false,
    },
    Expect {
        version: Version(4, 19, 0),
        offload: "tso,gso",
        io: "epoll",
        reason: "io_uring_setup failed",
        multishot_receive: false,
        multishot_tun_read: false,
    },
    Expect {
        version: Version(5, 4, 0),
        offload: "tso,gso,gro",
        io: "epoll",
        reason: "IORING_REGISTER_PROBE failed",
        multishot_receive: false,
        multishot_tun_read: false,
    },
    Expect {
        version: Version(5, 10, 0),
        offload: "tso,gso,gro",
        io: "uring",
        reason: "io_uring has what the loop needs",
        multishot_receive: false,
        multishot_tun_read: false,
    },
    Expect {
        version: Version(5, 15, 0),
        offload: "tso,gso,gro",
        io: "uring",
        reason: "io_uring has what the loop needs",
        multishot_receive: false,
        multishot_tun_read: false,
    },
    Expect {
        version: Version(6, 1, 0),
        offload: "tso,gso,gro",
        io: "uring",
        reason: "io_uring has what the loop needs",
        multishot_receive: true,
        multishot_tun_read: false,
    },
];

/// Each profile of [`MATRIX`]: `udp` against the full kernel with `--ip-masq`, then `vxlan`
/// against the same profile.
#[test]
fn kernel_profiles() {
    if skip("kernel_profiles") {
        return;
    }
    let _serial = serial();
    for expect in &MATRIX {
        eprintln!("== kernel profile {}", expect.version);
        let profile = Profile::new(expect.version).unwrap_or_else(|e| panic!("{e}"));
        let mut topo = topology();

        // `udp`: node 0 under the profile with offloads and `--ip-masq`, node 1 on the full
        // kernel.
        let masq = ["--ip-masq", "--iptables-resync", "1"];
        start(&mut topo, 0, Some(&profile), Udp, &masq);
        start(&mut topo, 1, None, Udp, &[]);
        check_node(&topo, 0, Udp, expect.offload, expect.io, expect.reason);
        transfers_both_ways(&topo, &format!("{} with the full kernel", expect.version));
        check_masquerade_kept(&topo);

        // Node 0 exits cleanly and takes its iptables rules with it.
        assert!(topo.processes[1].exited().is_none(), "{}", log(&topo, 1));
        let status = topo.processes[0].stop(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "node 0: {status:?}\n{}",
            log(&topo, 0)
        );
        let (_, nat) = iptables(&topo, &["-t", "nat", "-S"]);
        let (_, filter) = iptables(&topo, &["-S"]);
        assert!(
            !nat.contains("FLANNEL") && !filter.contains("FLANNEL"),
            "{} left rules behind:\n{nat}{filter}\n{}",
            expect.version,
            log(&topo, 0)
        );
        topo.processes.clear();

        // `vxlan`: both nodes under the profile, node 0 with offloads and as `nobody` (it
        // writes its stats file there), node 1 without offloads; `--io auto` picks the loop by
        // what io_uring offers for both.
        let open = std::fs::Permissions::from_mode(0o777);
        std::fs::set_permissions(topo.dir.path(), open).expect("open the scratch directory");
        start(&mut topo, 0, Some(&profile), Vxlan, &["--user", "nobody"]);
        start(&mut topo, 1, Some(&profile), Vxlan, &["--offload", "off"]);
        check_node(&topo, 0, Vxlan, expect.offload, expect.io, expect.reason);
        let dropped = wait_for(Duration::from_secs(5), || {
            log(&topo, 0).contains("running as an unprivileged user")
        });
        assert!(dropped, "node 0 is not `nobody`:\n{}", log(&topo, 0));
        check_node(&topo, 1, Vxlan, "off", expect.io, expect.reason);
        if expect.io == "uring" {
            let paths = [
                ("io_uring receive path", expect.multishot_receive),
                ("io_uring TUN read path", expect.multishot_tun_read),
            ];
            for (node, (path, multishot)) in [0, 1].into_iter().flat_map(|n| paths.map(|p| (n, p)))
            {
                let want = format!("multishot={multishot}");
                let seen = wait_for(Duration::from_secs(5), || {
                    log(&topo, node)
                        .lines()
                        .any(|l| l.contains(path) && l.contains(&want))
                });
                assert!(
                    seen,
                    "node {node}: no `{path} {want}`:\n{}",
                    log(&topo, node)
                );
            }
        }
        transfers_both_ways(&topo, &format!("{} with itself", expect.version));
        for i in 0..2 {
            let status = topo.processes[i].stop(Duration::from_secs(10));
            assert!(
                status.is_some_and(|s| s.success()),
                "node {i}: {status:?}\n{}",
                log(&topo, i)
            );
        }
    }
}

/// Node 0 keeps its `--ip-masq` rules under the profile: its iptables runs keep their
/// capabilities (no ambient set before 4.3), so a jump deleted by hand comes back.
fn check_masquerade_kept(topo: &Topology) {
    let text = log(topo, 0);
    assert!(text.contains("iptables rules in place"), "node 0:\n{text}");
    assert!(iptables(topo, &MASQ_JUMP).0, "delete the jump by hand");
    let mut check = MASQ_JUMP;
    check[2] = "-C";
    let back = wait_for(Duration::from_secs(8), || iptables(topo, &check).0);
    assert!(back, "node 0 did not restore the jump:\n{}", log(topo, 0));
    let counted = wait_for(Duration::from_secs(3), || {
        topo.counter(0, "iptables_repairs") >= 1
    });
    assert!(counted, "node 0: {:?}", topo.stats(0));
    let text = log(topo, 0);
    assert!(
        !text.contains("cannot keep") && !text.contains("cannot narrow"),
        "node 0:\n{text}"
    );
    // Only the thread that keeps the rules holds capabilities, CAP_NET_ADMIN and CAP_NET_RAW,
    // and its bounding set is cut to them: what bounds a root child without `SECBIT_NOROOT`.
    let pid = topo.processes[0].pid().expect("node 0 runs");
    let threads = thread_caps(pid);
    assert!(
        threads.iter().any(|(n, ..)| n == "fustian-masq"),
        "{threads:?}"
    );
    for (name, eff, bnd) in &threads {
        if name == "fustian-masq" {
            assert_eq!((*eff, *bnd), (0x3000, 0x3000), "{threads:?}");
        } else {
            assert_eq!(*eff, 0, "thread {name}: {threads:?}");
        }
    }
}

/// `(name, CapEff, CapBnd)` of every thread of `pid`.
fn thread_caps(pid: u32) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("procfs");
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        };
        if let (Some(eff), Some(bnd)) = (field("CapEff:"), field("CapBnd:")) {
            out.push((comm.trim().to_owned(), eff, bnd));
        }
    }
    out
}

/// Runs `iptables -w 5 args` in node 0's namespace (outside any profile); returns (success,
/// stdout).
fn iptables(topo: &Topology, args: &[&str]) -> (bool, String) {
    crate::common::iptables(&topo.hosts[0], args)
}

/// Set in the environment of the process [`kernel_profile_rules`] starts under a profile: that
/// process runs the same test, which then makes the calls and prints what they answered.
const PROBE_CHILD: &str = "FUSTIAN_KPROFILE_PROBE";

/// Each rule of each profile, seen directly: this test binary runs itself under the profile
/// and makes the refused calls with the C library out of the way (`getrandom`, `statx` and
/// `close_range` by number; UDP options, `TUNSETOFFLOAD`, ambient capabilities, io_uring).
#[test]
fn kernel_profile_rules() {
    if std::env::var_os(PROBE_CHILD).is_some() {
        for (name, errno) in probe_calls() {
            println!("kprobe {name} {errno}");
        }
        return;
    }
    if skip("kernel_profile_rules") {
        return;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    // First without a profile: the host (from 6.2 on, as the other netns tests assume) answers
    // every probe unlike the profiles that refuse it, so a refusal seen below is the filter's.
    let host = Version(u32::MAX, 0, 0);
    let versions = std::iter::once(host).chain(MATRIX.iter().map(|e| e.version));
    for version in versions {
        let label = if version == host {
            "the host".to_owned()
        } else {
            version.to_string()
        };
        let mut cmd = std::process::Command::new(&exe);
        cmd.args([
            "kernels::kernel_profile_rules",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PROBE_CHILD, "1")
        .stdin(std::process::Stdio::null());
        if version != host {
            Profile::new(version)
                .unwrap_or_else(|e| panic!("{e}"))
                .confine(&mut cmd);
        }
        let out = cmd
            .output()
            .expect("the test binary runs under the profile");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{label}: {}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let seen: Vec<(String, i32)> = stdout
            .lines()
            // libtest may have written `test <name> ... ` on the line before the first.
            .filter_map(|l| l.split_once("kprobe ").map(|(_, rest)| rest))
            .filter_map(|l| {
                let (name, errno) = l.split_once(' ')?;
                Some((name.to_owned(), errno.parse().ok()?))
            })
            .collect();
        let want: Vec<(String, i32)> = expected_probes(version)
            .into_iter()
            .map(|(name, errno)| (name.to_owned(), errno))
            .collect();
        assert_eq!(seen, want, "{label} (errno per call)");
    }
}

/// The table the profiles are built from is well formed: numbers unique and in order, every
/// call the rules name present, and every profile compiles.
#[test]
fn kernel_profiles_compile() {
    let table = syscalls().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        table.windows(2).all(|w| w[0].nr < w[1].nr),
        "numbers in order"
    );
    for name in [
        "setsockopt",
        "getsockopt",
        "ioctl",
        "prctl",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
    ] {
        assert!(table.iter().any(|s| s.name == name), "{name} missing");
    }
    for expect in &MATRIX {
        Profile::new(expect.version).unwrap_or_else(|e| panic!("{e}"));
    }
}

proptest! {
    /// Version parsing (of the table's third column) never panics on any text, and reads back
    /// what it writes.
    #[test]
    fn kernel_versions_parse(text in "\\PC{0,16}", a in 0u32..1000, b in 0u32..1000,
                             c in 0u32..1000) {
        let _ = Version::parse(&text);
        let v = Version(a, b, c);
        prop_assert_eq!(Version::parse(&v.to_string()), Some(v));
    }
}

/// Starts node `i` (under `profile` when given) with `backend`, its HTTP endpoint and `extra`
/// flags.
fn start(
    topo: &mut Topology,
    i: usize,
    profile: Option<&Profile>,
    backend: LabBackend,
    extra: &[&str],
) {
    let port = HTTP_PORT.to_string();
    let mut flags = vec!["--healthz-port", &port];
    flags.extend_from_slice(extra);
    let args = topo.node_args_for(i, backend, &flags);
    let started = match profile {
        Some(p) => start_under(topo, i, p, &args),
        None => topo.start_node(i, EXE, &args),
    };
    if let Err(e) = started {
        panic!("node {i} under {profile:?}: {e}");
    }
}

/// Starts fustian with `args` as node `i` under `profile`, with the profile's release in
/// `/proc/sys/kernel/osrelease` (where fustian reads it): `unshare` gives the node a mount
/// namespace of its own, in which `mount --bind` puts a file with that release over the
/// host's, and the shell then execs fustian, so the process started is the node itself.
fn start_under(
    topo: &mut Topology,
    i: usize,
    profile: &Profile,
    args: &[String],
) -> Result<usize, fustian::error::Error> {
    let release = topo.dir.path().join(format!("osrelease-{i}"));
    std::fs::write(&release, format!("{}.0-kprofile\n", profile.version))
        .expect("write the release file");
    let mut wrapped: Vec<String> = [
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount --bind \"$0\" /proc/sys/kernel/osrelease && exec \"$@\"",
        &release.to_string_lossy(),
        EXE,
    ]
    .map(str::to_owned)
    .to_vec();
    wrapped.extend_from_slice(args);
    topo.start_node_with(i, "unshare", &wrapped, |cmd| profile.confine(cmd))
}

/// Checks node `i`'s "node up" line and its `fustian_info` gauge.
fn check_node(
    topo: &Topology,
    i: usize,
    backend: LabBackend,
    offload: &str,
    io: &str,
    reason: &str,
) {
    let log = log(topo, i);
    let up = log
        .lines()
        .find(|l| l.contains("node up"))
        .unwrap_or_else(|| panic!("node {i}: no `node up` line:\n{log}"));
    for want in [
        format!("io=\"{io}\""),
        format!("offload={offload} "),
        reason.to_owned(),
    ] {
        assert!(up.contains(&want), "node {i}: `{want}` missing in {up}");
    }
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], HTTP_PORT));
    let mut metrics = String::new();
    let answered = wait_for(Duration::from_secs(5), || {
        metrics = topo.hosts[i]
            .run(move || fustian::http::get(addr, "/metrics"))
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        !metrics.is_empty()
    });
    assert!(answered, "node {i}: /metrics never answered:\n{log}");
    let info = format!(
        "fustian_info{{backend=\"{}\",io=\"{io}\",offload=\"{offload}\",",
        backend.name()
    );
    assert!(
        metrics.lines().any(|l| l.starts_with(&info)),
        "node {i}: no `{info}` in /metrics:\n{metrics}"
    );
}

/// Echo, then one TCP transfer each way between the pods, hashes compared; `what` names the
/// pair in the output, so a failure says which profile it was.
fn transfers_both_ways(topo: &Topology, what: &str) {
    eprintln!("== transfers both ways: {what}");
    crate::common::exchange_both_ways_at(topo, pod_addr, BULK);
}

/// Node `i`'s log without terminal colour sequences (`ESC [ ... m`).
fn log(topo: &Topology, i: usize) -> String {
    let raw = topo.processes[i].log();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The etcd agent (tokio, gRPC, its client's TLS stack) under each profile: node 0, started
/// under it, reaches etcd (in node 1's namespace), leases a subnet and writes the subnet file.
#[cfg(feature = "etcd")]
#[test]
fn kernel_profiles_etcd() {
    if skip("kernel_profiles_etcd") {
        return;
    }
    let _serial = serial();
    let mut topo = topology();
    let endpoint = format!("http://{}:2379", fustian::lab::HOST_IPS[1]);
    let data = topo.dir.path().join("etcd-data");
    let etcd_args: Vec<String> = [
        "--name",
        "kprofile",
        "--data-dir",
        &data.to_string_lossy(),
        "--listen-client-urls",
        &endpoint,
        "--advertise-client-urls",
        &endpoint,
        "--listen-peer-urls",
        "http://127.0.0.1:2380",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:2380",
        "--initial-cluster",
        "kprofile=http://127.0.0.1:2380",
    ]
    .map(str::to_owned)
    .to_vec();
    let etcd_log = topo.dir.path().join("etcd.log");
    let etcd = topo.hosts[1]
        .start("etcd", &etcd_args, etcd_log.clone())
        .unwrap_or_else(|e| panic!("etcd (apt-get install etcd-server): {e}"));
    topo.processes.push(etcd);
    let config = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#;
    let put = wait_for(Duration::from_secs(20), || {
        etcd_put(&topo, &endpoint, "/coreos.com/network/config", config)
    });
    let etcd_text = std::fs::read_to_string(&etcd_log).unwrap_or_default();
    assert!(put, "etcd did not take the network config:\n{etcd_text}");

    let subnet_file = topo.dir.path().join("node-0").join("subnet.env");
    let stats = topo.stats_path(0).to_string_lossy().into_owned();
    let args: Vec<String> = [
        "run",
        "--etcd-endpoints",
        &endpoint,
        "--public-ip",
        fustian::lab::HOST_IPS[0],
        "--subnet-file",
        &subnet_file.to_string_lossy(),
        "--stats-file",
        &stats,
    ]
    .map(str::to_owned)
    .to_vec();
    for expect in &MATRIX {
        let profile = Profile::new(expect.version).unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::remove_file(&subnet_file);
        let node = start_under(&mut topo, 0, &profile, &args)
            .unwrap_or_else(|e| panic!("{} with etcd: {e}", expect.version));
        let leased = wait_for(Duration::from_secs(10), || {
            fustian::control::etcd::previous_subnet(&subnet_file).is_some()
        });
        let mut process = topo.processes.remove(node);
        assert!(
            leased,
            "{}: no subnet from etcd:\n{}",
            expect.version,
            process.log()
        );
        let status = process.stop(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "{}: {status:?}\n{}",
            expect.version,
            process.log()
        );
    }
}

/// Puts `key` = `value` into etcd at `endpoint`, from node 1's namespace; false on any failure.
#[cfg(feature = "etcd")]
fn etcd_put(topo: &Topology, endpoint: &str, key: &str, value: &str) -> bool {
    let (key, value) = (key.to_owned(), value.to_owned());
    crate::common::with_etcd_in(&topo.hosts[1], endpoint, move |c, rt| {
        rt.block_on(c.put(key, value, None)).is_ok()
    }) == Some(true)
}
