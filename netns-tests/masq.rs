//! flanneld's node set-up around the tunnel: `--ip-masq` (a pod reaches an outside host only
//! with it, seen there as the node; the rules come back when deleted and go when the node
//! stops), the TUN address and route, and one node per address and port.

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use fustian::lab::netns::{Netns, veth};
use fustian::lab::traffic::udp_ping_pong;
use fustian::lab::{POD_IPS, Topology, pod_addr};

use crate::common::{
    EXE, MASQ_JUMP, iptables, nft, prefix, serial, skip, start_both, topology, wait_for,
};

/// The outside host, on a link from node A only; it has no route to the pods.
const OUTSIDE: &str = "198.51.100.2";
/// Node A's address on that link.
const NODE_OUTSIDE: &str = "198.51.100.1";

/// Sends one datagram from the pod of node A to the outside host, which records the source
/// address it sees and answers. Returns (source seen outside, whether the pod got the answer).
fn probe(pod: &Netns, outside: &Netns) -> (Option<SocketAddr>, bool) {
    let listen: SocketAddr = format!("{OUTSIDE}:9000").parse().expect("addr");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = outside
        .spawn(move || {
            let sock = UdpSocket::bind(listen).expect("outside bind");
            sock.set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            let _ = ready_tx.send(());
            let mut buf = [0u8; 64];
            let (n, from) = sock.recv_from(&mut buf).ok()?;
            // Without a route back to the pods this fails (ENETUNREACH); that is the point.
            let _ = sock.send_to(&buf[..n], from);
            Some(from)
        })
        .expect("outside thread");
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("outside listens");
    let answered = pod
        .run(move || {
            let sock = UdpSocket::bind("0.0.0.0:0").expect("pod bind");
            sock.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            sock.send_to(b"hello", listen).expect("pod send");
            let mut buf = [0u8; 64];
            matches!(sock.recv_from(&mut buf), Ok((5, _)))
        })
        .expect("pod thread");
    (server.join().expect("outside thread ends"), answered)
}

/// Builds the outside namespace and its link from node A.
fn outside_world(topo: &Topology, name: &str) -> Netns {
    let outside = Netns::add(name).expect("outside namespace");
    veth(&topo.hosts[0], "out0", &outside, "eth0").expect("veth to the outside");
    let a = &topo.hosts[0];
    a.ip(&["addr", "add", &format!("{NODE_OUTSIDE}/24"), "dev", "out0"])
        .expect("addr");
    a.ip(&["link", "set", "out0", "up"]).expect("up");
    outside
        .ip(&["addr", "add", &format!("{OUTSIDE}/24"), "dev", "eth0"])
        .expect("addr");
    outside.ip(&["link", "set", "eth0", "up"]).expect("up");
    outside
}

/// A two-node topology with the outside host on a link from node A.
fn with_outside_world() -> (Topology, Netns) {
    let p = prefix();
    let topo = Topology::build(&p)
        .unwrap_or_else(|e| panic!("netns test prerequisite missing or setup failed: {e}"));
    let outside = outside_world(&topo, &format!("{p}o"));
    (topo, outside)
}

/// CapEff of every thread of `pid`, by thread name.
fn thread_caps(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("procfs")
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        if let Some(caps) = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        {
            out.push((comm.trim().to_owned(), caps));
        }
    }
    out
}

const MASQ_RULE: [&str; 14] = [
    "-t",
    "nat",
    "-D",
    "FLANNEL-POSTRTG",
    "-s",
    "10.244.0.0/16",
    "!",
    "-d",
    "224.0.0.0/4",
    "-m",
    "comment",
    "--comment",
    "flanneld masq",
    "-j",
];

/// Starts node 0 with `--ip-masq`, `extra`, a 1 s resync and as `nobody` (the hardest case for
/// keeping the rules), and checks that its pod reaches the outside host as the node and gets
/// the answer. Returns the node's process index.
fn start_masquerading(topo: &mut Topology, outside: &Netns, extra: &[&str]) -> usize {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(topo.dir.path(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod scratch dir");
    let mut flags = vec![
        "--threads",
        "2",
        "--ip-masq",
        "--iptables-resync",
        "1",
        "--user",
        "nobody",
    ];
    flags.extend_from_slice(extra);
    let args = topo.node_args(0, &flags);
    let node = topo
        .start_node(0, EXE, &args)
        .unwrap_or_else(|e| panic!("{e}"));
    let log = || topo.processes[node].log();
    let (seen, answered) = probe(&topo.pods[0], outside);
    assert_eq!(
        seen.map(|s| s.ip().to_string()),
        Some(NODE_OUTSIDE.to_owned()),
        "source seen outside with --ip-masq {extra:?}:\n{}",
        log()
    );
    assert!(answered, "the answer reaches the pod:\n{}", log());
    // Rules just written check as they are: checking them again rewrites nothing.
    checks_pass(topo, 2);
    assert_eq!(
        topo.counter(0, "iptables_repairs"),
        0,
        "{:?}",
        topo.stats(0)
    );
    node
}

/// Waits for node 0's keeper to finish `n` more checks of its rules.
fn checks_pass(topo: &Topology, n: u64) {
    let from = topo.counter(0, "iptables_checks");
    assert!(
        wait_for(Duration::from_secs(3 + 2 * n), || {
            topo.counter(0, "iptables_checks") >= from + n
        }),
        "the keeper checked {from} times and no more: {:?}",
        topo.stats(0)
    );
}

/// Waits for node 0 (process `node`) to count `repairs` repairs of its rules and none failed,
/// and for the rules then to stay as they are (no repair in two more checks), checks that the
/// pod reaches the outside as the node again, and stops the node, which must exit cleanly.
fn repaired_then_stopped(topo: &mut Topology, outside: &Netns, node: usize, repairs: u64) {
    assert!(
        wait_for(Duration::from_secs(3), || {
            topo.counter(0, "iptables_repairs") >= repairs
        }),
        "{:?}",
        topo.stats(0)
    );
    // The check under way may still count its repair; after it, nothing more to repair.
    checks_pass(topo, 1);
    let repaired = topo.counter(0, "iptables_repairs");
    checks_pass(topo, 2);
    assert_eq!(
        topo.counter(0, "iptables_repairs"),
        repaired,
        "rules rewritten with nothing changed: {:?}",
        topo.stats(0)
    );
    assert_eq!(topo.counter(0, "iptables_errors"), 0, "{:?}", topo.stats(0));
    let (seen, answered) = probe(&topo.pods[0], outside);
    assert!(
        answered && seen.is_some_and(|s| s.ip().to_string() == NODE_OUTSIDE),
        "after the repair: {seen:?}"
    );
    let status = topo.processes[node].stop(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}:\n{}",
        topo.processes[node].log()
    );
}

#[test]
fn ip_masq_lets_pods_reach_the_outside_as_the_node() {
    if skip("ip_masq_lets_pods_reach_the_outside_as_the_node") {
        return;
    }
    let _serial = serial();
    let (mut topo, outside) = with_outside_world();
    let pod_ip: std::net::IpAddr = POD_IPS[0].parse().expect("pod ip");
    let subnet_env = topo.dir.path().join("node-0").join("subnet.env");

    // Without --ip-masq the outside host sees the pod's own address and cannot answer.
    let args = topo.node_args(0, &["--threads", "2"]);
    let plain = topo
        .start_node(0, EXE, &args)
        .unwrap_or_else(|e| panic!("{e}"));
    let (seen, answered) = probe(&topo.pods[0], &outside);
    assert_eq!(seen.map(|s| s.ip()), Some(pod_ip), "source seen outside");
    assert!(!answered, "the outside host has no route back to the pods");
    assert!(!iptables(&topo.hosts[0], &["-t", "nat", "-S", "FLANNEL-POSTRTG"]).0);
    let env = std::fs::read_to_string(&subnet_env).expect("subnet.env");
    assert!(env.contains("FLANNEL_IPMASQ=false"), "{env}");
    let status = topo.processes[plain].stop(Duration::from_secs(5));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");

    // With it (and as an unprivileged user, the hardest case for keeping the rules): the
    // outside host sees node A and the answer comes back.
    let masq = start_masquerading(&mut topo, &outside, &[]);
    let log = || topo.processes[masq].log();
    let env = std::fs::read_to_string(&subnet_env).expect("subnet.env");
    assert!(env.contains("FLANNEL_IPMASQ=true"), "{env}");
    let (ok, fwd) = iptables(&topo.hosts[0], &["-S", "FLANNEL-FWD"]);
    assert!(
        ok && fwd.contains("-d 10.244.0.0/16") && fwd.contains("ACCEPT"),
        "{fwd}"
    );

    // Only the thread that keeps the rules holds a capability, and only CAP_NET_ADMIN and
    // CAP_NET_RAW.
    let pid = topo.processes[masq].pid().expect("running");
    let caps = thread_caps(pid);
    for (name, cap) in &caps {
        let want = if name == "fustian-masq" { 0x3000 } else { 0 };
        assert_eq!(*cap, want, "thread {name}: {caps:?}");
    }
    assert!(caps.iter().any(|(n, _)| n == "fustian-masq"), "{caps:?}");

    // A rule and the jump deleted by hand come back within a few resync periods.
    let mut rule: Vec<&str> = MASQ_RULE.to_vec();
    rule.extend(["MASQUERADE", "--random-fully"]);
    assert!(
        iptables(&topo.hosts[0], &rule).0,
        "delete the masquerade rule"
    );
    let jump = MASQ_JUMP;
    assert!(iptables(&topo.hosts[0], &jump).0, "delete the jump");
    let check = |args: &[&str]| {
        let mut c: Vec<&str> = args.to_vec();
        c[2] = "-C";
        iptables(&topo.hosts[0], &c).0
    };
    let back = wait_for(Duration::from_secs(8), || check(&rule) && check(&jump));
    assert!(back, "rules not restored:\n{}", log());

    // Counted, masquerading again, and on SIGTERM the rules go with the node.
    repaired_then_stopped(&mut topo, &outside, masq, 1);
    let (_, nat) = iptables(&topo.hosts[0], &["-t", "nat", "-S"]);
    let (_, filter) = iptables(&topo.hosts[0], &["-S"]);
    assert!(
        !nat.contains("FLANNEL") && !filter.contains("FLANNEL"),
        "{nat}{filter}"
    );
}

#[test]
fn ip_masq_through_nftables_writes_flanneld_s_table() {
    if skip("ip_masq_through_nftables_writes_flanneld_s_table") {
        return;
    }
    let _serial = serial();
    let (mut topo, outside) = with_outside_world();
    let host = &topo.hosts[0];
    assert!(
        nft(host, &["--version"]).0,
        "netns test prerequisite missing: nft (apt-get install nftables)"
    );

    // As an unprivileged user, so the thread that keeps the table must keep its capability.
    let node = start_masquerading(&mut topo, &outside, &["--nftables"]);
    let log = || topo.processes[node].log();

    // flanneld's table, chains and rules; nothing through iptables.
    let host = &topo.hosts[0];
    let (ok, table) = nft(host, &["list", "table", "ip", "flannel-ipv4"]);
    assert!(ok, "no table ip flannel-ipv4:\n{}", log());
    for want in [
        "comment \"rules for flannel-ipv4\"",
        "comment \"chain to manage traffic masquerading by flannel\"",
        "chain postrtg",
        "type nat hook postrouting priority srcnat",
        "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
        "chain forward",
        "type filter hook forward priority filter",
        "ip daddr 10.244.0.0/16 accept",
    ] {
        assert!(table.contains(want), "{want:?} missing from:\n{table}");
    }
    let (_, nat) = iptables(host, &["-t", "nat", "-S"]);
    assert!(!nat.contains("FLANNEL"), "{nat}");

    // A flushed chain comes back, and so does the whole table once deleted; each is one repair.
    assert!(nft(host, &["flush", "chain", "ip", "flannel-ipv4", "postrtg"]).0);
    let restored = || nft(host, &["list", "table", "ip", "flannel-ipv4"]).1 == table;
    assert!(
        wait_for(Duration::from_secs(8), restored),
        "chain not restored:\n{}",
        log()
    );
    assert!(
        wait_for(Duration::from_secs(3), || {
            topo.counter(0, "iptables_repairs") >= 1
        }),
        "{:?}",
        topo.stats(0)
    );
    assert!(nft(host, &["delete", "table", "ip", "flannel-ipv4"]).0);
    assert!(
        wait_for(Duration::from_secs(8), restored),
        "table not restored:\n{}",
        log()
    );
    repaired_then_stopped(&mut topo, &outside, node, 2);
    let (ok, ruleset) = nft(&topo.hosts[0], &["list", "ruleset"]);
    assert!(ok && !ruleset.contains("flannel"), "{ruleset}");
}

#[test]
fn a_second_node_on_the_same_port_fails_to_start() {
    if skip("a_second_node_on_the_same_port_fails_to_start") {
        return;
    }
    let _serial = serial();
    let mut topo = topology();
    start_both(&mut topo, &["--threads", "2"]);
    let first = topo.processes[0].pid().expect("running");

    // The TUN device as flanneld's udp backend sets it: a host address and the network route.
    let show = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["-n", topo.hosts[0].name()])
            .args(args)
            .output()
            .expect("ip runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let addr = show(&["-4", "addr", "show", "dev", "flannel0"]);
    assert!(addr.contains("inet 10.244.1.0/32"), "{addr}");
    assert!(!addr.contains(" brd "), "{addr}");
    let route = show(&["route", "show", "10.244.0.0/16"]);
    assert!(route.contains("dev flannel0"), "{route}");

    // A second node beside the first, with `extra` and its own stats file (and its own subnet
    // file unless `extra` names one): it must exit with an error containing `expect`, having
    // changed nothing of the first node's.
    let subnet_file = topo.dir.path().join("node-0").join("subnet.env");
    let written = std::fs::read_to_string(&subnet_file).expect("first node's subnet file");
    let refused = |topo: &Topology, case: &str, extra: &[&str], expect: &str| {
        // `extra` in flag-value pairs, each replacing the first node's value or added.
        let mut args = topo.node_args(0, &[]);
        let set = |args: &mut Vec<String>, flag: &str, value: String| match args
            .iter()
            .position(|a| a == flag)
        {
            Some(at) => args[at + 1] = value,
            None => args.extend([flag.to_owned(), value]),
        };
        for pair in extra.chunks(2) {
            set(&mut args, pair[0], pair[1].to_owned());
        }
        set(
            &mut args,
            "--stats-file",
            topo.dir
                .path()
                .join(format!("{case}.prom"))
                .display()
                .to_string(),
        );
        if !extra.contains(&"--subnet-file") {
            let own = topo
                .dir
                .path()
                .join(format!("{case}.env"))
                .display()
                .to_string();
            set(&mut args, "--subnet-file", own);
        }
        let log = topo.dir.path().join(format!("{case}.log"));
        let mut second = topo.hosts[0]
            .start(EXE, &args, log)
            .unwrap_or_else(|e| panic!("{e}"));
        let exited = wait_for(Duration::from_secs(10), || second.exited().is_some());
        let text = second.log();
        assert!(exited, "{case}: the second node is still running:\n{text}");
        let status = second.exited().expect("exited");
        assert!(!status.success(), "{case}: {status}:\n{text}");
        assert!(text.contains(expect), "{case}: no {expect:?} in:\n{text}");
    };
    // The same address and port with two workers (SO_REUSEPORT): refused, naming the first.
    refused(
        &topo,
        "same-port",
        // (A narrower network, /17, whose route the first node's does not hold.)
        &[
            "--threads",
            "2",
            "--tun",
            "flannel1",
            "--network",
            "10.244.0.0/17",
        ],
        &format!("UDP 192.0.2.1:8285 is already served by pid {first} (fustian)"),
    );
    // Another port and device, the same subnet file: refused before anything is set up.
    let same_file = subnet_file.display().to_string();
    refused(
        &topo,
        "same-file",
        &[
            "--tun",
            "flannel1",
            "--port",
            "8299",
            "--subnet-file",
            &same_file,
        ],
        &format!("{same_file} is in use by another node (pid {first})"),
    );
    // Another port, the first node's multi-queue device: the kernel would let it add queues
    // beside the first node's and take part of its flows. The device's claim names the node.
    refused(
        &topo,
        "same-tun",
        &["--threads", "2", "--port", "8299"],
        &format!(
            "TUN device flannel0 is in use by another process (another fustian node: already \
             served by pid {first} (fustian))"
        ),
    );
    // Another port and device: the network's route already leads to the first node's device.
    refused(
        &topo,
        "same-route",
        &["--tun", "flannel1", "--port", "8299"],
        "10.244.0.0/16 is already routed to flannel0",
    );
    assert_eq!(
        std::fs::read_to_string(&subnet_file).expect("subnet file"),
        written,
        "the first node's subnet file changed"
    );
    let addr = show(&["-4", "addr", "show", "dev", "flannel0"]);
    assert_eq!(addr.matches("inet ").count(), 1, "{addr}");

    // The first node still carries the traffic, both ways.
    let stop = Arc::new(AtomicBool::new(false));
    for (from, to) in [(0, 1), (1, 0)] {
        let lat = udp_ping_pong(&topo.pods[from], &topo.pods[to], pod_addr(to, 7), 20, &stop)
            .expect("ping-pong runs");
        assert_eq!(
            lat.replies, 20,
            "{from}->{to} after the second node was refused"
        );
    }
}

/// What flanneld (or an earlier node) left in the other firewall mode is removed at start, as
/// flanneld's own start removes it: its iptables chains and jump before a node in nftables
/// mode, its nftables table before a node in iptables mode. Left in place, they would go on
/// masquerading traffic the node's own rules exempt.
#[test]
fn the_other_mode_s_leftover_rules_are_removed_at_start() {
    if skip("the_other_mode_s_leftover_rules_are_removed_at_start") {
        return;
    }
    let _serial = serial();
    let mut topo = topology();
    assert!(
        nft(&topo.hosts[0], &["--version"]).0,
        "netns test prerequisite missing: nft (apt-get install nftables)"
    );
    // flanneld's iptables chain for an old subnet, and its jump.
    for args in [
        &["-t", "nat", "-N", "FLANNEL-POSTRTG"][..],
        &[
            "-t",
            "nat",
            "-A",
            "FLANNEL-POSTRTG",
            "!",
            "-s",
            "10.244.0.0/16",
            "-d",
            "10.244.0.0/16",
            "-j",
            "MASQUERADE",
        ],
        &["-t", "nat", "-A", "POSTROUTING", "-j", "FLANNEL-POSTRTG"],
    ] {
        assert!(iptables(&topo.hosts[0], args).0, "seed iptables {args:?}");
    }
    let args = topo.node_args(0, &["--threads", "1", "--ip-masq", "--nftables"]);
    let node = topo
        .start_node(0, EXE, &args)
        .unwrap_or_else(|e| panic!("{e}"));
    let (_, nat) = iptables(&topo.hosts[0], &["-t", "nat", "-S"]);
    assert!(
        !nat.contains("FLANNEL"),
        "{nat}\n{}",
        topo.processes[node].log()
    );
    assert!(nft(&topo.hosts[0], &["list", "table", "ip", "flannel-ipv4"]).0);
    assert!(
        topo.processes[node]
            .log()
            .contains("removed the iptables chains left by flanneld"),
        "{}",
        topo.processes[node].log()
    );
    let status = topo.processes[node].stop(Duration::from_secs(5));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    // flanneld's nftables table, before a node in iptables mode.
    for args in [
        &["add", "table", "ip", "flannel-ipv4"][..],
        &[
            "add",
            "chain",
            "ip",
            "flannel-ipv4",
            "postrtg",
            "{",
            "type",
            "nat",
            "hook",
            "postrouting",
            "priority",
            "100",
            ";",
            "}",
        ],
        &[
            "add",
            "rule",
            "ip",
            "flannel-ipv4",
            "postrtg",
            "ip",
            "daddr",
            "10.244.0.0/16",
            "masquerade",
        ],
    ] {
        assert!(nft(&topo.hosts[0], args).0, "seed nft {args:?}");
    }
    let args = topo.node_args(0, &["--threads", "1", "--ip-masq"]);
    let node = topo
        .start_node(0, EXE, &args)
        .unwrap_or_else(|e| panic!("{e}"));
    let log = topo.processes[node].log();
    assert!(
        !nft(&topo.hosts[0], &["list", "table", "ip", "flannel-ipv4"]).0,
        "{log}"
    );
    assert!(
        log.contains("removed the nftables table left by flanneld"),
        "{log}"
    );
    let (_, nat) = iptables(&topo.hosts[0], &["-t", "nat", "-S", "FLANNEL-POSTRTG"]);
    assert!(nat.contains("MASQUERADE"), "{nat}");
}

/// A persistent TUN device that holds an earlier node's address from another subnet: the node
/// removes it (the kernel would use it as the source of the host's own packets into the
/// overlay, which the peer drops as spoofed), keeps only its own, and the host reaches the
/// peer's pod network with its own address.
#[test]
fn an_earlier_subnet_s_address_on_a_kept_device_is_removed() {
    if skip("an_earlier_subnet_s_address_on_a_kept_device_is_removed") {
        return;
    }
    let _serial = serial();
    let mut topo = topology();
    topo.hosts[0]
        .ip(&["tuntap", "add", "flannel0", "mode", "tun", "multi_queue"])
        .expect("persistent device");
    topo.hosts[0]
        .ip(&["addr", "add", "10.244.9.0/32", "dev", "flannel0"])
        .expect("stale address");
    start_both(&mut topo, &["--threads", "2"]);
    let host = &topo.hosts[0];
    let out = Command::new("ip")
        .args(["-n", host.name(), "-4", "addr", "show", "dev", "flannel0"])
        .output()
        .expect("ip runs");
    let addrs = String::from_utf8_lossy(&out.stdout);
    assert!(addrs.contains("inet 10.244.1.0/32"), "{addrs}");
    assert!(
        !addrs.contains("10.244.9.0"),
        "{addrs}\n{}",
        topo.processes[0].log()
    );
    assert!(
        topo.processes[0]
            .log()
            .contains("removed an address of an earlier subnet"),
        "{}",
        topo.processes[0].log()
    );
    // The host's own packet into the overlay leaves with the node's address, and the peer
    // answers it.
    let out = Command::new("ip")
        .args(["-n", host.name(), "route", "get", "10.244.2.1"])
        .output()
        .expect("ip runs");
    let route = String::from_utf8_lossy(&out.stdout);
    assert!(route.contains("src 10.244.1.0"), "{route}");
    crate::common::exchange_both_ways(&topo);
    let _ = host.ip(&["tuntap", "del", "flannel0", "mode", "tun", "multi_queue"]);
}

/// A node killed with SIGKILL and started again at once (a supervisor with no restart delay):
/// the dead node's io_uring instance releases its sockets and TUN queues some milliseconds after
/// the process is reaped, and the new node waits for them rather than fail. Five times over.
#[test]
fn a_node_restarted_at_once_after_sigkill_starts() {
    if skip("a_node_restarted_at_once_after_sigkill_starts") {
        return;
    }
    let _serial = serial();
    let mut topo = topology();
    start_both(&mut topo, &["--io", "uring", "--threads", "2"]);
    for round in 0..5 {
        let last = topo.processes.len() - 1;
        let node = if round == 0 { 0 } else { last };
        crate::common::signal(topo.processes[node].pid().expect("running"), libc::SIGKILL);
        let reaped = wait_for(Duration::from_secs(5), || {
            topo.processes[node].exited().is_some()
        });
        assert!(reaped, "round {round}: the killed node was not reaped");
        let args = topo.node_args(0, &["--io", "uring", "--threads", "2"]);
        if let Err(e) = topo.start_node(0, EXE, &args) {
            panic!("round {round}: {e}");
        }
    }
    crate::common::exchange_both_ways(&topo);
}
