//! `fustian doctor` on a healthy two-node topology (`udp` and `vxlan`), then with one fault at
//! a time, each applied and reverted in turn: `ip_forward` off, the `FORWARD` chain dropping
//! the overlay, strict `rp_filter`, the peer's port blocked by a firewall in the peer's
//! namespace, the peer's underlay MTU lowered, and the TUN MTU disagreeing with the subnet
//! file; `vxlan`: the port blocked (a warning) and a kernel VXLAN device on the node's port; with etcd, a lease written by hand that the node leaves out. Each fault must make
//! doctor exit non-zero and name the failing check with the command that fixes it; after it
//! is reverted, doctor passes again.

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use fustian::doctor::probe;
use fustian::lab::{LabBackend, Topology};
use serde_json::Value;

use crate::common::{EXE, serial, skip, topology, wait_for};

/// Node 0's HTTP endpoint, inside its namespace.
const ADDR: &str = "127.0.0.1:9107";

/// Starts both nodes with `backend` and `flags`, node 0 with its HTTP endpoint.
fn start(backend: LabBackend, flags: &[&str]) -> Topology {
    let mut topo = topology();
    for i in 0..2 {
        let mut extra = vec!["--threads", "1"];
        extra.extend(flags);
        if i == 0 {
            extra.extend(["--healthz-port", "9107"]);
        }
        let args = topo.node_args_for(i, backend, &extra);
        topo.start_node(i, EXE, &args)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    topo
}

/// Runs `cmd args` inside node `i`'s namespace; panics when it fails.
fn sh(topo: &Topology, i: usize, cmd: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", topo.hosts[i].name(), cmd])
        .args(args)
        .output()
        .expect("ip netns exec runs");
    assert!(
        out.status.success(),
        "{cmd} {args:?} in node {i}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `fustian doctor --json` in node 0's namespace: its exit success and its checks.
fn doctor(topo: &Topology) -> (bool, Vec<Value>) {
    let out = Command::new("ip")
        .args(["netns", "exec", topo.hosts[0].name(), EXE, "doctor"])
        .args(["--addr", ADDR, "--json"])
        .output()
        .expect("ip netns exec runs");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let checks = v["checks"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        v["passed"].as_bool(),
        Some(out.status.success()),
        "exit status and `passed` agree"
    );
    (out.status.success(), checks)
}

/// Asserts doctor passes, every check `ok`.
fn assert_healthy(topo: &Topology, when: &str) {
    let (passed, checks) = doctor(topo);
    let bad: Vec<&Value> = checks.iter().filter(|c| c["outcome"] != "ok").collect();
    assert!(passed && bad.is_empty(), "{when}: not healthy: {bad:#?}");
    assert!(
        checks
            .iter()
            .any(|c| c["name"].as_str().is_some_and(|n| n.starts_with("peer."))),
        "{when}: no peer was probed: {checks:#?}"
    );
    assert!(
        checks.iter().any(|c| c["name"] == "tun.queue"),
        "{when}: the TUN queue was not checked: {checks:#?}"
    );
}

/// Asserts doctor fails, and that check `name` (a prefix) has `outcome` with a detail
/// containing `detail` and a fix containing `fix`.
fn assert_named(topo: &Topology, fault: &str, name: &str, outcome: &str, detail: &str, fix: &str) {
    let (passed, checks) = doctor(topo);
    assert!(!passed, "{fault}: doctor passed: {checks:#?}");
    let found = checks.iter().find(|c| {
        c["name"].as_str().is_some_and(|n| n.starts_with(name)) && c["outcome"] == outcome
    });
    let Some(c) = found else {
        panic!("{fault}: no {outcome} check {name}: {checks:#?}");
    };
    let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    assert!(text("detail").contains(detail), "{fault}: {c:#}");
    assert!(text("fix").contains(fix), "{fault}: {c:#}");
}

#[test]
fn doctor_names_each_fault_udp() {
    if skip("doctor_names_each_fault_udp") {
        return;
    }
    let _serial = serial();
    let mut topo = start(LabBackend::Udp, &["--io", "epoll"]);
    assert_healthy(&topo, "udp, healthy");

    sh(&topo, 0, "sysctl", &["-qw", "net.ipv4.ip_forward=0"]);
    assert_named(
        &topo,
        "ip_forward off",
        "sysctl.ip_forward",
        "fail",
        "ip_forward = 0",
        "sysctl -w net.ipv4.ip_forward=1",
    );
    sh(&topo, 0, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);

    sh(
        &topo,
        0,
        "iptables",
        &["-A", "FORWARD", "-d", "10.244.0.0/16", "-j", "DROP"],
    );
    assert_named(
        &topo,
        "FORWARD drops",
        "firewall.",
        "fail",
        "FORWARD rule 1",
        "-I FORWARD -d 10.244.0.0/16 -j ACCEPT",
    );
    sh(
        &topo,
        0,
        "iptables",
        &["-D", "FORWARD", "-d", "10.244.0.0/16", "-j", "DROP"],
    );
    sh(&topo, 0, "iptables", &["-P", "FORWARD", "DROP"]);
    assert_named(
        &topo,
        "FORWARD policy DROP",
        "firewall.",
        "fail",
        "FORWARD policy DROP",
        "-I FORWARD -s 10.244.0.0/16 -j ACCEPT",
    );
    sh(&topo, 0, "iptables", &["-P", "FORWARD", "ACCEPT"]);
    // The same through the legacy backend, and a native nftables base chain.
    sh(&topo, 0, "iptables-legacy", &["-P", "FORWARD", "DROP"]);
    assert_named(
        &topo,
        "legacy FORWARD policy DROP",
        "firewall.iptables-legacy",
        "fail",
        "FORWARD policy DROP",
        "iptables-legacy -I FORWARD -s 10.244.0.0/16 -j ACCEPT",
    );
    sh(&topo, 0, "iptables-legacy", &["-P", "FORWARD", "ACCEPT"]);
    sh(
        &topo,
        0,
        "nft",
        &[
            "add table inet dtest; add chain inet dtest dchain { type filter hook forward priority 0; policy accept; }; add rule inet dtest dchain ip daddr 10.244.0.0/16 counter drop",
        ],
    );
    assert_named(
        &topo,
        "nftables rule drops",
        "firewall.nft inet dtest dchain",
        "fail",
        "dchain rule 1",
        "nft insert rule inet dtest dchain ip saddr 10.244.0.0/16 accept",
    );
    sh(&topo, 0, "nft", &["delete table inet dtest"]);

    sh(
        &topo,
        0,
        "sysctl",
        &["-qw", "net.ipv4.conf.flannel0.rp_filter=1"],
    );
    assert_named(
        &topo,
        "rp_filter strict",
        "sysctl.rp_filter",
        "fail",
        "strict",
        "sysctl -w net.ipv4.conf.flannel0.rp_filter=2",
    );
    sh(
        &topo,
        0,
        "sysctl",
        &["-qw", "net.ipv4.conf.flannel0.rp_filter=0"],
    );

    let block = ["INPUT", "-p", "udp", "--dport", "8285", "-j", "DROP"];
    sh(&topo, 1, "iptables", &[&["-I"][..], &block].concat());
    assert_named(
        &topo,
        "peer port blocked",
        "peer.192.0.2.2:8285",
        "fail",
        "UDP port 8285 blocked",
        "iptables -I INPUT -p udp --dport 8285 -j ACCEPT",
    );
    sh(&topo, 1, "iptables", &[&["-D"][..], &block].concat());

    sh(
        &topo,
        1,
        "ip",
        &["link", "set", "dev", "ul0", "mtu", "1400"],
    );
    assert_named(
        &topo,
        "peer underlay MTU lowered",
        "peer.192.0.2.2:8285",
        "fail",
        // veth takes a VLAN header's worth above its MTU (`is_skb_forwardable`): 1400-1404.
        "MTU mismatch: 192.0.2.2:8285 answers up to 140",
        "ip link set dev flannel0 mtu 137",
    );
    sh(
        &topo,
        1,
        "ip",
        &["link", "set", "dev", "ul0", "mtu", "1500"],
    );

    sh(
        &topo,
        0,
        "ip",
        &["link", "set", "dev", "flannel0", "mtu", "1400"],
    );
    assert_named(
        &topo,
        "TUN MTU changed",
        "subnet_file.mtu",
        "fail",
        "FLANNEL_MTU=1472 but flannel0 has MTU 1400",
        "ip link set dev flannel0 mtu 1472",
    );
    sh(
        &topo,
        0,
        "ip",
        &["link", "set", "dev", "flannel0", "mtu", "1472"],
    );

    assert_healthy(&topo, "udp, every fault reverted");
    // The probes were answered by node 1 and counted there.
    assert!(
        wait_for(Duration::from_secs(5), || topo.counter(1, "probe_tx") > 0),
        "probe_tx never counted"
    );
    assert!(topo.counter(1, "probe_rx") >= topo.counter(1, "probe_tx"));

    // A probe from an address that is no peer gets no answer, and is dropped as an unknown
    // sender.
    topo.hosts[0]
        .ip(&["addr", "add", "192.0.2.50/24", "dev", "ul0"])
        .unwrap_or_else(|e| panic!("{e}"));
    let before = topo.counter(1, "drop_unknown_sender");
    let answered = topo.hosts[0]
        .run(|| {
            let sock = UdpSocket::bind("192.0.2.50:0").expect("bind");
            sock.set_read_timeout(Some(Duration::from_millis(500)))
                .expect("timeout");
            let mut req = Vec::new();
            probe::request(&mut req, 100, 1, None);
            let mut buf = [0u8; 64];
            (0..3).any(|_| {
                sock.send_to(&req, "192.0.2.2:8285").expect("send");
                sock.recv_from(&mut buf).is_ok()
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!answered, "a non-peer's probe was answered");
    assert!(
        wait_for(Duration::from_secs(5), || {
            topo.counter(1, "drop_unknown_sender") >= before + 3
        }),
        "the non-peer's probes were not counted as dropped"
    );

    // The answering node on io_uring without multishot receives (the vxlan test covers
    // multishot): node 1 restarted, its probes answered.
    let extra = ["--io", "uring", "--no-multishot", "--threads", "1"];
    topo.processes[1].stop(Duration::from_secs(5));
    let args = topo.node_args(1, &extra);
    topo.start_node(1, EXE, &args)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_healthy(&topo, "udp, node 1 on single-shot io_uring");
}

#[test]
fn doctor_vxlan_healthy_blocked_port_and_kernel_device_warn() {
    if skip("doctor_vxlan_healthy_blocked_port_and_kernel_device_warn") {
        return;
    }
    let _serial = serial();
    let topo = start(LabBackend::Vxlan, &["--io", "uring"]);
    assert_healthy(&topo, "vxlan, healthy");
    let block = ["INPUT", "-p", "udp", "--dport", "8472", "-j", "DROP"];
    sh(&topo, 1, "iptables", &[&["-I"][..], &block].concat());
    assert_named(
        &topo,
        "vxlan peer port blocked",
        "peer.192.0.2.2:8472",
        "warn",
        "no fustian answer",
        "iptables -I INPUT -p udp --dport 8472 -j ACCEPT",
    );
    sh(&topo, 1, "iptables", &[&["-D"][..], &block].concat());

    // A kernel VXLAN device on the node's port on the same host (left down, so it binds
    // nothing).
    sh(
        &topo,
        0,
        "ip",
        &[
            "link",
            "add",
            "vxk0",
            "type",
            "vxlan",
            "id",
            "7",
            "dstport",
            "8472",
            "nolearning",
        ],
    );
    assert_named(
        &topo,
        "kernel VXLAN device on the port",
        "vxlan.kernel",
        "warn",
        "kernel VXLAN device vxk0 also uses port 8472",
        "ip link del vxk0",
    );
    sh(&topo, 0, "ip", &["link", "del", "vxk0"]);
    assert_healthy(&topo, "vxlan, reverted");
}

/// etcd on node 0's underlay address, reachable from both nodes.
#[cfg(feature = "etcd")]
const ETCD: &str = "http://192.0.2.1:2379";
/// The same etcd on loopback: the nodes use [`ETCD`], the test and doctor this one, so that a
/// filter on [`ETCD`] cuts the nodes off and leaves doctor its view.
#[cfg(feature = "etcd")]
const ETCD_LOCAL: &str = "http://127.0.0.1:2379";

/// Runs `op` with an etcd client inside node 0's namespace.
#[cfg(feature = "etcd")]
fn with_etcd<T: Send + 'static>(
    topo: &Topology,
    op: impl FnOnce(&mut etcd_client::Client, &tokio::runtime::Runtime) -> T + Send + 'static,
) -> Option<T> {
    crate::common::with_etcd_in(&topo.hosts[0], ETCD_LOCAL, op)
}

#[cfg(feature = "etcd")]
#[test]
fn doctor_with_etcd_names_a_stray_lease_and_a_deleted_own_lease() {
    if skip("doctor_with_etcd_names_a_stray_lease_and_a_deleted_own_lease") {
        return;
    }
    let _serial = serial();
    let mut topo = topology();
    let dir = topo.dir.path().to_owned();
    let data = dir.join("etcd-data").to_string_lossy().into_owned();
    let etcd_args: Vec<String> = [
        "--name",
        "doctor",
        "--data-dir",
        &data,
        "--listen-client-urls",
        "http://192.0.2.1:2379,http://127.0.0.1:2379",
        "--advertise-client-urls",
        ETCD,
        "--listen-peer-urls",
        "http://192.0.2.1:2380",
        "--initial-advertise-peer-urls",
        "http://192.0.2.1:2380",
        "--initial-cluster",
        "doctor=http://192.0.2.1:2380",
    ]
    .map(str::to_owned)
    .to_vec();
    let etcd = topo.hosts[0]
        .start("etcd", &etcd_args, dir.join("etcd.log"))
        .expect("start etcd");
    topo.processes.push(etcd);
    assert!(
        wait_for(Duration::from_secs(20), || {
            with_etcd(&topo, |c, rt| rt.block_on(c.get("probe", None)).is_ok()) == Some(true)
        }),
        "etcd did not come up"
    );
    let put = |topo: &Topology, k: &str, v: &str| {
        let (k, v) = (k.to_owned(), v.to_owned());
        assert_eq!(
            with_etcd(topo, move |c, rt| rt.block_on(c.put(k, v, None)).is_ok()),
            Some(true),
            "etcd put"
        );
    };
    put(
        &topo,
        "/coreos.com/network/config",
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#,
    );
    for i in 0..2 {
        let ip = format!("192.0.2.{}", i + 1);
        let subnet_file = dir.join(format!("node-{i}")).join("subnet.env");
        let mut args: Vec<String> = [
            "run",
            "--etcd-endpoints",
            ETCD,
            "--public-ip",
            &ip,
            "--subnet-file",
            &subnet_file.to_string_lossy(),
            "--stats-file",
            &topo.stats_path(i).to_string_lossy(),
            "--threads",
            "1",
        ]
        .map(str::to_owned)
        .to_vec();
        if i == 0 {
            args.extend(["--healthz-port", "9107"].map(str::to_owned));
        }
        topo.start_node(i, EXE, &args)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let run = |topo: &Topology| {
        let out = Command::new("ip")
            .args(["netns", "exec", topo.hosts[0].name(), EXE, "doctor"])
            .args(["--addr", ADDR, "--json", "--etcd-endpoints", ETCD_LOCAL])
            .output()
            .expect("ip netns exec runs");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "doctor printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (
            out.status.success(),
            v["checks"].as_array().cloned().unwrap_or_default(),
        )
    };
    // Each node sees the other's lease once its watch has it.
    let mut last = (false, Vec::new());
    let healthy = wait_for(Duration::from_secs(10), || {
        last = run(&topo);
        last.0
    });
    assert!(healthy, "with etcd, not healthy: {:#?}", last.1);
    for name in ["etcd.config", "etcd.own_lease", "etcd.table"] {
        assert!(
            last.1
                .iter()
                .any(|c| c["name"] == name && c["outcome"] == "ok"),
            "{name} missing: {:#?}",
            last.1
        );
    }

    assert!(
        last.1.iter().any(|c| c["name"] == "etcd.table"
            && c["detail"] == "the table holds exactly the 1 peers of the leases in etcd"),
        "{:#?}",
        last.1
    );

    // A lease written by hand over a leased subnet with another length (flanneld's allocator
    // never makes one): both the node and doctor leave it out, and doctor names it with the
    // command that removes it.
    let keys = with_etcd(&topo, |c, rt| {
        let resp = rt
            .block_on(c.get(
                "/coreos.com/network/subnets/",
                Some(etcd_client::GetOptions::new().with_prefix()),
            ))
            .ok()?;
        Some(
            resp.kvs()
                .iter()
                .map(|kv| kv.key_str().unwrap_or_default().to_owned())
                .collect::<Vec<_>>(),
        )
    })
    .flatten()
    .expect("etcd get");
    assert_eq!(keys.len(), 2, "{keys:?}");
    let taken = keys[1].rsplit('/').next().expect("key").to_owned();
    let (net, _) = taken.split_once('-').expect("A.B.C.D-LEN");
    let stray = format!("/coreos.com/network/subnets/{net}-25");
    put(
        &topo,
        &stray,
        r#"{"PublicIP":"192.0.2.77","PublicIPv6":null}"#,
    );
    let named = wait_for(Duration::from_secs(5), || {
        last = run(&topo);
        !last.0
            && last.1.iter().any(|c| {
                c["outcome"] != "ok"
                    && c["detail"].as_str().is_some_and(|d| d.contains(&stray))
                    && c["fix"].as_str().is_some_and(|f| f.contains("etcdctl del"))
            })
    });
    assert!(named, "the hand-written lease was not named: {:#?}", last.1);

    // Node A's lease deleted behind its back while it cannot reach etcd (its endpoint is
    // filtered, so it cannot write the lease again): doctor, reading etcd over loopback, names
    // the missing lease and what restores it.
    let own = with_etcd(&topo, |c, rt| {
        let resp = rt
            .block_on(c.get(
                "/coreos.com/network/subnets/",
                Some(etcd_client::GetOptions::new().with_prefix()),
            ))
            .ok()?;
        resp.kvs()
            .iter()
            .find(|kv| {
                kv.value_str()
                    .is_ok_and(|v| v.contains(r#""PublicIP":"192.0.2.1""#))
            })
            .map(|kv| kv.key_str().unwrap_or_default().to_owned())
    })
    .flatten()
    .expect("node A's lease");
    let filtered = Command::new("ip")
        .args([
            "netns",
            "exec",
            topo.hosts[0].name(),
            "iptables",
            "-I",
            "INPUT",
        ])
        .args([
            "-p",
            "tcp",
            "-d",
            "192.0.2.1",
            "--dport",
            "2379",
            "-j",
            "DROP",
        ])
        .status()
        .expect("iptables runs (it must be installed)");
    assert!(filtered.success(), "iptables could not filter etcd");
    let key = own.clone();
    assert_eq!(
        with_etcd(&topo, move |c, rt| rt.block_on(c.delete(key, None)).is_ok()),
        Some(true),
        "etcd delete"
    );
    let missing = wait_for(Duration::from_secs(10), || {
        last = run(&topo);
        !last.0
            && last.1.iter().any(|c| {
                c["name"] == "etcd.own_lease"
                    && c["outcome"] == "fail"
                    && c["detail"].as_str().is_some_and(|d| d.contains(&own))
                    && c["fix"].as_str().is_some_and(|f| f.contains("restart"))
            })
    });
    assert!(missing, "the deleted lease was not named: {:#?}", last.1);
}

/// A dual-stack node (IPv4 and IPv6 pods, both underlays): every check passes, the IPv6 half
/// included (its address, route, subnet file lines, forwarding, and the IPv6 peer probed over
/// the IPv6 underlay with its path MTU); IPv6 forwarding off and the IPv6 route removed are
/// named with their fixes.
#[test]
fn doctor_checks_both_halves_of_a_dual_stack_node() {
    if skip("doctor_checks_both_halves_of_a_dual_stack_node") {
        return;
    }
    let _serial = serial();
    let dual = fustian::lab::Stack::DUAL;
    let mut topo = topology();
    topo.add_ipv6()
        .unwrap_or_else(|e| panic!("netns test prerequisite missing or setup failed: {e}"));
    for i in 0..2 {
        let mut extra = vec!["--threads", "1"];
        if i == 0 {
            extra.extend(["--healthz-port", "9107"]);
        }
        let args = topo.node_args_stack(i, LabBackend::Udp, dual, &extra);
        topo.start_node(i, EXE, &args)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert_healthy(&topo, "dual stack");
    let (_, checks) = doctor(&topo);
    let ok = |name: &str, detail: &str| {
        checks.iter().any(|c| {
            c["name"] == name
                && c["outcome"] == "ok"
                && c["detail"].as_str().is_some_and(|d| d.contains(detail))
        })
    };
    assert!(ok("tun.address", "fd00:10:244:1::"), "{checks:#?}");
    assert!(ok("route.overlay", "fd00:10:244::/56"), "{checks:#?}");
    assert!(ok("sysctl.ipv6_forwarding", "= 1"), "{checks:#?}");
    assert!(
        ok("peer.[2001:db8::2]:8285", "path MTU >= 1500"),
        "{checks:#?}"
    );
    // The TUN MTU is sized for the IPv6 underlay (1452): the IPv4 path needs 1452 + 28.
    assert!(ok("peer.192.0.2.2:8285", "path MTU >= 1480"), "{checks:#?}");

    sh(
        &topo,
        0,
        "sysctl",
        &["-qw", "net.ipv6.conf.all.forwarding=0"],
    );
    assert_named(
        &topo,
        "IPv6 forwarding off",
        "sysctl.ipv6_forwarding",
        "fail",
        "= 0",
        "sysctl -w net.ipv6.conf.all.forwarding=1",
    );
    sh(
        &topo,
        0,
        "sysctl",
        &["-qw", "net.ipv6.conf.all.forwarding=1"],
    );
    sh(&topo, 0, "ip", &["-6", "route", "del", "fd00:10:244::/56"]);
    assert_named(
        &topo,
        "IPv6 route removed",
        "route.overlay",
        "fail",
        "fd00:10:244::/56",
        "ip route replace fd00:10:244::/56 dev flannel0",
    );
    sh(
        &topo,
        0,
        "ip",
        &["-6", "route", "add", "fd00:10:244::/56", "dev", "flannel0"],
    );
    assert_healthy(&topo, "after the faults were reverted");
}

#[test]
fn doctor_warns_of_drops_at_a_full_tun_queue() {
    if skip("doctor_warns_of_drops_at_a_full_tun_queue") {
        return;
    }
    let _serial = serial();
    let topo = start(LabBackend::Udp, &["--io", "uring"]);
    assert_healthy(&topo, "udp, healthy");
    // A one-packet queue overflows under a flood from a pod while doctor watches.
    sh(
        &topo,
        0,
        "ip",
        &["link", "set", "flannel0", "txqueuelen", "1"],
    );
    /// Ends the flood when dropped, also when an assertion panics first.
    struct Stop(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let stop = Stop(std::sync::Arc::new(std::sync::atomic::AtomicBool::new(
        false,
    )));
    let flag = std::sync::Arc::clone(&stop.0);
    let to = fustian::lab::pod_addr(1, 9);
    let flood = topo.pods[0]
        .spawn(move || {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                // A full queue drops without telling the sender.
                let _ = s.send_to(&[7u8; 64], to);
            }
            Ok::<_, std::io::Error>(())
        })
        .expect("enter pod 0");
    let (passed, checks) = doctor(&topo);
    drop(stop);
    flood.join().expect("flood thread").expect("flood");
    assert!(!passed, "a full queue passed: {checks:#?}");
    let c = checks
        .iter()
        .find(|c| c["name"] == "tun.queue")
        .unwrap_or_else(|| panic!("no tun.queue check: {checks:#?}"));
    assert_eq!(c["outcome"], "warn", "{c:#}");
    let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    assert!(text("detail").contains("1-packet transmit queue"), "{c:#}");
    assert!(text("fix").contains("--tun-txqueuelen 1000"), "{c:#}");
    assert!(
        text("fix").contains("ip link set dev flannel0 txqueuelen 1000"),
        "{c:#}"
    );
    // The flood over and the queue back: the drops are history, reported but not warned of.
    sh(
        &topo,
        0,
        "ip",
        &["link", "set", "flannel0", "txqueuelen", "500"],
    );
    assert_healthy(&topo, "queue restored");
}
