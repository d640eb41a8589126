//! Invalid settings fail at start with a message naming the flag or the file and field;
//! flanneld's flag syntax and interface selection work on a real node.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use fustian::lab::traffic::udp_ping_pong;
use fustian::lab::{HOST_IPS, Topology, pod_addr};

use crate::common::{EXE, serial, skip, topology, wait_for};

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(EXE).args(args).output().expect("binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_and_files_are_named() {
    let base = [
        "run",
        "--network",
        "10.244.0.0/16",
        "--public-ip",
        "192.0.2.1",
    ];
    let (ok, err) = run(&[&base[..], &["--subnet", "10.99.1.0/24"]].concat());
    assert!(!ok);
    assert!(err.contains("invalid --subnet `10.99.1.0/24`"), "{err}");

    let (ok, err) = run(&[
        &base[..],
        &["--subnet", "10.244.1.0/24", "--peer", "nonsense"],
    ]
    .concat());
    assert!(!ok);
    assert!(
        err.contains("--peer") && err.contains("SUBNET=PUBLIC_IP"),
        "{err}"
    );

    let dir = std::env::temp_dir().join(format!("fustian-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("node.toml");
    std::fs::write(
        &file,
        "network = \"10.244.0.0/16\"\nsubnet = \"10.244.1.0/24\"\npublic_ip = \"192.0.2.1\"\n\
         [[peer]]\nsubnet = \"10.244.2.0/24\"\npublic_ip = \"not-an-ip\"\n",
    )
    .expect("write");
    let (ok, err) = run(&["run", "--config", file.to_str().expect("utf8")]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok);
    assert!(err.contains("node.toml: peer[0] `not-an-ip`"), "{err}");
}

/// Runs the binary with `envs` and returns whether it succeeded and its stderr.
fn run_env(args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let (code, err) = status_env(args, envs);
    (code == Some(0), err)
}

#[test]
fn renew_margin_and_unsupported_flags_are_refused() {
    let base = ["run", "--etcd-endpoints", "http://192.0.2.1:2379"];
    for (flag, value) in [
        ("--subnet-lease-renew-margin", "0"),
        ("-subnet-lease-renew-margin", "1440"),
    ] {
        let (ok, err) = run_env(&[&base[..], &[flag, value]].concat(), &[]);
        assert!(!ok);
        assert!(
            err.contains("subnet-lease-renew-margin") && err.contains("outside 1..1439"),
            "{err}"
        );
    }
    let (ok, err) = run_env(&base, &[("FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "1440")]);
    assert!(!ok);
    assert!(err.contains("outside 1..1439"), "{err}");

    let (ok, err) = run_env(&[&base[..], &["-kube-subnet-mgr"]].concat(), &[]);
    assert!(!ok);
    assert!(
        err.contains("fustian does not support --kube-subnet-mgr"),
        "{err}"
    );
    let (ok, err) = run_env(&base, &[("FLANNELD_IP_BLACKHOLE_ROUTE", "true")]);
    assert!(!ok);
    assert!(
        err.contains("fustian does not support FLANNELD_IP_BLACKHOLE_ROUTE=true"),
        "{err}"
    );
}

/// Runs the binary with `envs` and returns its exit status and stderr.
fn status_env(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(EXE)
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every refused flag value exits with status 2 (a unit's `RestartPreventExitStatus=2`), named,
/// before anything else is looked at (the underlay address below is on no interface here):
/// what clap refuses and what is judged after it alike. Endpoints that could never connect are
/// refused rather than waited on; an upper-case scheme is taken, as Go's URL parser takes it.
#[test]
fn every_refused_flag_value_exits_with_status_2() {
    let etcd = |endpoints: &str| -> Vec<String> {
        [
            "run",
            "--public-ip",
            "192.0.2.77",
            "--etcd-endpoints",
            endpoints,
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (etcd(""), "--etcd-endpoints is empty"),
        (
            etcd("http://192.0.2.1:2379 http://192.0.2.2:2379"),
            "comma separated",
        ),
        (etcd("http://192.0.2.1:99999"), "1..=65535"),
        (etcd("http://:2379"), "no host"),
        (etcd("unix:///run/etcd.sock"), "unix:// endpoint"),
        (
            [
                "run",
                "--public-ip",
                "notip",
                "--etcd-endpoints",
                "http://192.0.2.1:2379",
            ]
            .map(str::to_owned)
            .to_vec(),
            "--public-ip must be an IPv4 address",
        ),
        (
            [
                "run",
                "--public-ip",
                "127.0.0.1",
                "--etcd-endpoints",
                "http://192.0.2.1:2379",
            ]
            .map(str::to_owned)
            .to_vec(),
            "public_ip_loopback",
        ),
        (
            [
                "run",
                "--iface-regex",
                "[",
                "--etcd-endpoints",
                "http://192.0.2.1:2379",
            ]
            .map(str::to_owned)
            .to_vec(),
            "--iface-regex",
        ),
        (
            [
                "run",
                "--subnet-lease-renew-margin",
                "0",
                "--etcd-endpoints",
                "http://192.0.2.1:2379",
            ]
            .map(str::to_owned)
            .to_vec(),
            "outside 1..1439",
        ),
    ];
    for (args, says) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, err) = status_env(&args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // A boolean from the environment is named as such, with Go's spellings.
    let (code, err) = status_env(
        &["run", "--etcd-endpoints", "http://192.0.2.1:2379"],
        &[("FLANNELD_IP_MASQ", "bogus")],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("note: the value comes from the environment: FLANNELD_IP_MASQ=bogus"),
        "{err}"
    );
    assert!(err.contains("TRUE"), "{err}");
}

/// A node two of whose files name one file is refused with status 2, naming both, before it
/// writes, locks or removes anything (the underlay address is on no interface here, so a
/// node not refused would stop at its sockets): the subnet file is neither filled with
/// counters nor replaced by the trace socket, the config file is not overwritten, and the lock
/// beside the subnet file stays a lock. Other names of the same file (`./`, `..`, a linked
/// directory) are seen through.
#[test]
fn a_node_s_own_files_naming_one_file_are_refused() {
    let dir = std::env::temp_dir().join(format!("fustian-own-files-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).expect("temp dir");
    std::os::unix::fs::symlink(dir.join("sub"), dir.join("link")).expect("symlink");
    let path = |name: &str| dir.join(name).to_str().expect("utf8").to_owned();
    let subnet = path("sub/subnet.env");
    let kept = "FLANNEL_NETWORK=10.244.0.0/16\n";
    std::fs::write(&subnet, kept).expect("subnet file");
    let config = path("node.toml");
    let toml = "[[peer]]\nsubnet = \"10.244.3.0/24\"\npublic_ip = \"192.0.2.3\"\n";
    std::fs::write(&config, toml).expect("config");
    let base = [
        "run",
        "--network",
        "10.244.0.0/16",
        "--subnet",
        "10.244.1.0/24",
        "--public-ip",
        "192.0.2.77",
        "--peer",
        "10.244.2.0/24=192.0.2.2",
        "--threads",
        "1",
        "--healthz-port",
        "0",
    ];
    let cases: Vec<(Vec<String>, [&str; 2])> = vec![
        (
            vec![
                "--subnet-file".into(),
                subnet.clone(),
                "--stats-file".into(),
                path("sub/./x/../subnet.env"),
            ],
            ["--subnet-file", "--stats-file"],
        ),
        (
            vec![
                "--subnet-file".into(),
                subnet.clone(),
                "--stats-file".into(),
                path("link/.subnet.env.lock"),
            ],
            ["the lock beside --subnet-file", "--stats-file"],
        ),
        (
            vec![
                "--subnet-file".into(),
                path("other.env"),
                "--trace-socket".into(),
                path("sock"),
                "--stats-file".into(),
                path("sock"),
            ],
            ["--stats-file", "--trace-socket"],
        ),
        (
            vec![
                "--subnet-file".into(),
                subnet.clone(),
                "--trace-socket".into(),
                path("link/subnet.env"),
            ],
            ["--subnet-file", "--trace-socket"],
        ),
        (
            vec![
                "--subnet-file".into(),
                path("other.env"),
                "--config".into(),
                config.clone(),
                "--stats-file".into(),
                config.clone(),
            ],
            ["--stats-file", "--config"],
        ),
    ];
    for (extra, names) in cases {
        let args: Vec<&str> = base
            .iter()
            .copied()
            .chain(extra.iter().map(String::as_str))
            .collect();
        let (code, err) = status_env(&args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(
            err.contains("name the same file") && names.iter().all(|n| err.contains(n)),
            "{args:?}: {err}"
        );
    }
    assert_eq!(std::fs::read_to_string(&subnet).expect("subnet file"), kept);
    assert_eq!(std::fs::read_to_string(&config).expect("config"), toml);
    assert!(
        !dir.join("sock").exists(),
        "nothing made at the socket's path"
    );
    assert!(
        !dir.join("sub/.subnet.env.lock").exists(),
        "no lock taken by a refused node"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A VTEP MAC kept beside the subnet file (from an earlier run) is the node's own as much as
/// one given with `--vtep-mac`: a static peer with that MAC is refused at start, naming the
/// peer and the file, with the status of the `--vtep-mac` refusal (every frame from the peer
/// would be dropped as the node's own).
#[test]
fn a_peer_with_the_kept_vtep_mac_is_refused() {
    let dir = std::env::temp_dir().join(format!("fustian-kept-mac-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mac = "0a:58:0a:f4:01:01";
    std::fs::write(dir.join("fustian-vtep.mac"), format!("{mac}\n")).expect("mac file");
    let subnet = dir.join("subnet.env");
    let peer = format!("10.244.2.0/24=192.0.2.2@{mac}");
    let args = [
        "run",
        "--backend",
        "vxlan",
        "--network",
        "10.244.0.0/16",
        "--subnet",
        "10.244.1.0/24",
        "--public-ip",
        "192.0.2.77",
        "--peer",
        &peer,
        "--threads",
        "1",
        "--healthz-port",
        "0",
        "--subnet-file",
        subnet.to_str().expect("utf8"),
    ];
    let (code, err) = status_env(&args, &[]);
    let (given, given_err) = status_env(&[&args[..], &["--vtep-mac", mac]].concat(), &[]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("is this node's own VTEP MAC")
            && err.contains("fustian-vtep.mac")
            && err.contains("--peer"),
        "{err}"
    );
    assert_eq!(given, code, "{given_err}");
    assert!(!subnet.exists(), "no subnet file written by a refused node");
}

/// Node 0's `run` arguments without `--public-ip`, plus `extra`.
fn args_without_public_ip(topo: &Topology, extra: &[&str]) -> Vec<String> {
    let mut args = topo.node_args(0, &[]);
    let at = args
        .iter()
        .position(|a| a == "--public-ip")
        .expect("node args have --public-ip");
    args.drain(at..at + 2);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// Starts node 0 with `args`, returns its log once it is forwarding, and stops it.
fn start_and_log(topo: &mut Topology, args: &[String]) -> String {
    let index = match topo.start_node(0, EXE, args) {
        Ok(i) => i,
        Err(e) => panic!("{args:?}: {e}"),
    };
    let mut process = topo.processes.remove(index);
    let log = process.log();
    let status = process.stop(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "{args:?}: {status:?}\n{log}"
    );
    log
}

/// Gives node 0 a second interface, `d0` (a veth pair with `d1`, both up), holding
/// 198.51.100.1/24.
fn second_interface(topo: &Topology) {
    let host = &topo.hosts[0];
    host.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"])
        .expect("second link");
    host.ip(&["addr", "add", "198.51.100.1/24", "dev", "d0"])
        .expect("second address");
    host.ip(&["link", "set", "d1", "up"]).expect("d1 up");
    host.ip(&["link", "set", "d0", "up"]).expect("d0 up");
}

fn echo(topo: &Topology) {
    let stop = Arc::new(AtomicBool::new(false));
    for (from, to) in [(0, 1), (1, 0)] {
        let lat = udp_ping_pong(&topo.pods[from], &topo.pods[to], pod_addr(to, 7), 20, &stop)
            .expect("ping-pong runs");
        assert_eq!(lat.replies, 20, "echo {from}->{to}: {lat:?}");
    }
}

#[test]
fn without_public_ip_the_default_route_interface_is_used() {
    if skip("without_public_ip_the_default_route_interface_is_used") {
        return;
    }
    let _serial = serial();
    let mut topo = topology();
    // A second interface that holds an address but not the default route.
    second_interface(&topo);

    // No default route and no --public-ip: a clear error.
    let args = args_without_public_ip(&topo, &[]);
    let err = topo
        .start_node(0, EXE, &args)
        .expect_err("no default route");
    assert!(err.to_string().contains("no IPv4 default route"), "{err}");

    topo.hosts[0]
        .ip(&["route", "add", "default", "via", HOST_IPS[1], "dev", "ul0"])
        .expect("default route");
    let args = args_without_public_ip(&topo, &[]);
    if let Err(e) = topo.start_node(0, EXE, &args) {
        panic!("{e}");
    }
    let log = topo.processes[0].log();
    assert!(
        log.contains("underlay interface ul0")
            && log.contains(&format!("address {}, from the default route", HOST_IPS[0])),
        "{log}"
    );
    let peer = topo.node_args(1, &[]);
    if let Err(e) = topo.start_node(1, EXE, &peer) {
        panic!("{e}");
    }
    // Node 1 accepts node 0's datagrams only from 192.0.2.1:8285: the echo proves the node
    // bound the default-route interface's address.
    echo(&topo);
}

#[test]
fn iface_by_name_address_pattern_and_route() {
    if skip("iface_by_name_address_pattern_and_route") {
        return;
    }
    let _serial = serial();
    let mut topo = topology();
    // A second interface that holds an address but not the default route.
    second_interface(&topo);
    for (extra, iface, addr) in [
        (&["--iface", "ul0"][..], "ul0", HOST_IPS[0]),
        (&["-iface=192.0.2.1"], "ul0", HOST_IPS[0]),
        (
            &["-iface", "nosuch0", "-iface", "d0", "--iface", "ul0"],
            "d0",
            "198.51.100.1",
        ),
        (
            &["-iface", "192.0.2.99", "-iface", "ul0"],
            "ul0",
            HOST_IPS[0],
        ),
        (&["-iface-regex", "^198\\.51\\."], "d0", "198.51.100.1"),
        (
            &[
                "--iface=nosuch0",
                "--iface-regex=^nomatch",
                "--iface-regex=^ul",
            ],
            "ul0",
            HOST_IPS[0],
        ),
        (&["-iface-can-reach", "198.51.100.9"], "d0", "198.51.100.1"),
    ] {
        let args = args_without_public_ip(&topo, extra);
        let log = start_and_log(&mut topo, &args);
        assert!(
            log.contains(&format!("underlay interface {iface} "))
                && log.contains(&format!("address {addr}, from")),
            "{extra:?}: {log}"
        );
    }
    // Nothing matches: the error names every candidate.
    let args = args_without_public_ip(&topo, &["--iface", "nosuch0", "--iface-regex", "^zz"]);
    let err = topo.start_node(0, EXE, &args).expect_err("no match");
    let err = err.to_string();
    assert!(
        err.contains("--iface nosuch0 (no such interface)") && err.contains("--iface-regex ^zz"),
        "{err}"
    );
}

#[test]
fn single_dash_go_flags_start_a_node() {
    if skip("single_dash_go_flags_start_a_node") {
        return;
    }
    let _serial = serial();
    let mut topo = topology();
    for i in 0..2 {
        // `--name value` -> `-name=value` and `-name value`, alternately.
        let gnu = topo.node_args(i, &["--keep-privileges"]);
        let mut go = vec![gnu[0].clone()];
        let mut rest = gnu[1..].iter();
        let mut joined = true;
        while let Some(flag) = rest.next() {
            let name = flag.trim_start_matches('-');
            if name == "keep-privileges" {
                go.push("-keep-privileges=true".into());
                continue;
            }
            let value = rest.next().expect("a value");
            if joined {
                go.push(format!("-{name}={value}"));
            } else {
                go.extend([format!("-{name}"), value.clone()]);
            }
            joined = !joined;
        }
        assert!(go.iter().any(|a| a.starts_with("-public-ip")), "{go:?}");
        if let Err(e) = topo.start_node(i, EXE, &go) {
            panic!("{go:?}: {e}");
        }
    }
    echo(&topo);
    assert!(wait_for(Duration::from_secs(3), || topo
        .counter(0, "rx_packets")
        >= 20));
}

/// flanneld's command line as a unit written for it has it: no `run`, and template variables
/// that expanded to nothing.
#[test]
fn flanneld_s_command_line_without_run_and_with_empty_values_starts_a_node() {
    if skip("flanneld_s_command_line_without_run_and_with_empty_values_starts_a_node") {
        return;
    }
    let _serial = serial();
    let mut topo = topology();
    let mut args = topo.node_args(0, &[]);
    assert_eq!(args.remove(0), "run");
    args.extend(
        [
            "-etcd-cafile=",
            "-etcd-certfile=",
            "-etcd-keyfile=",
            "-iface-can-reach=",
            "-public-ipv6=",
            "-healthz-ip=",
        ]
        .map(str::to_owned),
    );
    if let Err(e) = topo.start_node(0, EXE, &args) {
        panic!("{args:?}: {e}");
    }
    let peer = topo.node_args(1, &[]);
    if let Err(e) = topo.start_node(1, EXE, &peer) {
        panic!("{e}");
    }
    echo(&topo);
}

/// Under systemd (`Type=notify`): READY=1 once the node forwards, STOPPING=1 on the way out;
/// SIGHUP with nothing to reload is logged, not fatal; SIGUSR1, SIGUSR2 and SIGALRM change
/// nothing.
#[test]
fn a_node_tells_systemd_it_is_ready_and_outlives_sighup() {
    if skip("a_node_tells_systemd_it_is_ready_and_outlives_sighup") {
        return;
    }
    let _serial = serial();
    let mut topo = topology();
    let socket_path = topo.dir.path().join("notify");
    let systemd = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("notify socket");
    systemd
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let args = topo.node_args(0, &[]);
    let index = topo
        .start_node_with(0, EXE, &args, |c| {
            c.env("NOTIFY_SOCKET", &socket_path);
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let mut buf = [0u8; 256];
    let n = systemd.recv(&mut buf).expect("READY=1 within 10 s");
    assert_eq!(&buf[..n], b"READY=1");
    let pid = topo.processes[index].pid().expect("pid");
    crate::common::signal(pid, libc::SIGHUP);
    let logged = wait_for(Duration::from_secs(5), || {
        topo.processes[index]
            .log()
            .contains("SIGHUP: nothing to reload")
    });
    assert!(logged, "{}", topo.processes[index].log());
    assert!(
        topo.processes[index].exited().is_none(),
        "SIGHUP ended the node:\n{}",
        topo.processes[index].log()
    );
    // Signals Go's runtime leaves without effect for flanneld: by their default action each
    // would end the node without its teardown.
    for sig in [libc::SIGUSR1, libc::SIGUSR2, libc::SIGALRM] {
        crate::common::signal(pid, sig);
    }
    let peer = topo.node_args(1, &[]);
    if let Err(e) = topo.start_node(1, EXE, &peer) {
        panic!("{e}");
    }
    echo(&topo);
    assert!(
        topo.processes[index].exited().is_none(),
        "SIGUSR1, SIGUSR2 or SIGALRM ended the node:\n{}",
        topo.processes[index].log()
    );
    let mut process = topo.processes.remove(index);
    let status = process.stop(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        process.log()
    );
    let n = systemd.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
}

/// A locked-memory limit too small for io_uring's rings (the kernel's old default of 64 KiB),
/// which binds the workers once the node drops its privileges: `--io auto` takes epoll and says
/// why, `--io uring` is refused at start naming the limit, and so is an open-file limit too
/// small for the node; none fails after the node is up.
#[test]
fn process_limits_too_small_are_named_at_start() {
    if skip("process_limits_too_small_are_named_at_start") {
        return;
    }
    for tool in ["prlimit", "setpriv"] {
        let found = Command::new(tool).arg("--version").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "{tool} (util-linux) is needed by this test"
        );
    }
    let _serial = serial();
    let mut topo = topology();
    // Without CAP_SYS_RESOURCE the node cannot raise the limits itself.
    let limited = |limit: &str, extra: &[&str], topo: &Topology| {
        let mut args: Vec<String> = [
            limit,
            "setpriv",
            "--bounding-set=-sys_resource",
            "--inh-caps=-sys_resource",
            "--",
            EXE,
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(topo.node_args(0, extra));
        args
    };
    let args = limited("--memlock=65536:65536", &["--io", "auto"], &topo);
    let index = topo
        .start_node_with(0, "prlimit", &args, |_| {})
        .unwrap_or_else(|e| panic!("{e}"));
    let log = topo.processes[index].log();
    assert!(
        log.contains("io_uring left out: RLIMIT_MEMLOCK is 64 KiB"),
        "{log}"
    );
    let peer = topo.node_args(1, &[]);
    if let Err(e) = topo.start_node(1, EXE, &peer) {
        panic!("{e}");
    }
    echo(&topo);
    let mut process = topo.processes.remove(index);
    let status = process.stop(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        process.log()
    );
    for (limit, extra, says) in [
        (
            "--memlock=65536:65536",
            ["--io", "uring"],
            "--io uring: RLIMIT_MEMLOCK is 64 KiB",
        ),
        ("--nofile=40:40", ["--io", "auto"], "RLIMIT_NOFILE is 40"),
    ] {
        let args = limited(limit, &extra, &topo);
        let Err(e) = topo.start_node_with(0, "prlimit", &args, |_| {}) else {
            panic!("{limit} {extra:?}: the node started");
        };
        assert!(e.to_string().contains(says), "{limit}: {e}");
        assert!(!e.to_string().contains("node up"), "{limit}: {e}");
    }
}

/// A standard error nobody reads (a stuck log shipper): once its pipe is full, the node's log
/// lines are queued and then dropped, and neither forwarding nor the stop waits on the pipe.
#[test]
fn a_log_pipe_nobody_reads_stalls_neither_forwarding_nor_the_stop() {
    if skip("a_log_pipe_nobody_reads_stalls_neither_forwarding_nor_the_stop") {
        return;
    }
    let _serial = serial();
    let mut topo = topology();
    let (read, write) = crate::common::small_pipe(4096);
    let queued = || crate::common::pipe_queued(&read);
    let args = topo.node_args(0, &[]);
    let stderr = write.try_clone().expect("dup");
    let index = topo
        .start_node_with(0, EXE, &args, move |c| {
            c.stderr(std::process::Stdio::from(stderr));
        })
        .unwrap_or_else(|e| panic!("{e}"));
    drop(write);
    let pid = topo.processes[index].pid().expect("pid");
    // Each SIGHUP logs a line ("nothing to reload"): fill the pipe until a line no longer fits.
    let mut full = false;
    for _ in 0..400 {
        let before = queued();
        crate::common::signal(pid, libc::SIGHUP);
        if !wait_for(Duration::from_secs(2), || queued() > before) {
            full = true;
            break;
        }
    }
    assert!(full, "the pipe did not fill: {} bytes", queued());
    assert!(queued() > 3000, "{} bytes", queued());
    for _ in 0..20 {
        crate::common::signal(pid, libc::SIGHUP);
    }
    let peer = topo.node_args(1, &[]);
    if let Err(e) = topo.start_node(1, EXE, &peer) {
        panic!("{e}");
    }
    echo(&topo);
    let mut process = topo.processes.remove(index);
    let status = process.stop(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// flanneld's VTEP, left behind when flanneld stopped, holds the VXLAN port and routes the
/// peers' subnets past the TUN device: a `vxlan` node retires it. Any other kernel VXLAN device
/// on the port is named with the command that removes it, never deleted.
#[test]
fn flanneld_s_leftover_vtep_is_retired_and_another_device_is_named() {
    if skip("flanneld_s_leftover_vtep_is_retired_and_another_device_is_named") {
        return;
    }
    let _serial = serial();
    let mut topo = topology();
    let host = &topo.hosts[0];
    host.ip(&[
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "dstport",
        "8472",
        "nolearning",
    ])
    .expect("flanneld's VTEP");
    host.ip(&["link", "set", "flannel.1", "up"]).expect("up");
    host.ip(&[
        "route",
        "add",
        "10.244.2.0/24",
        "via",
        "10.244.2.0",
        "dev",
        "flannel.1",
        "onlink",
    ])
    .expect("flanneld's route");
    let args = topo.node_args_for(0, fustian::lab::LabBackend::Vxlan, &[]);
    let index = topo
        .start_node(0, EXE, &args)
        .unwrap_or_else(|e| panic!("{e}"));
    let log = topo.processes[index].log();
    assert!(log.contains("deleted flanneld's VXLAN device"), "{log}");
    assert!(
        topo.hosts[0].ip(&["link", "show", "flannel.1"]).is_err(),
        "flannel.1 is still there"
    );
    let peer = topo.node_args_for(1, fustian::lab::LabBackend::Vxlan, &[]);
    if let Err(e) = topo.start_node(1, EXE, &peer) {
        panic!("{e}");
    }
    // The route through the old device went with it: pods reach each other through fustian.
    echo(&topo);
    let mut process = topo.processes.remove(index);
    assert!(
        process
            .stop(Duration::from_secs(5))
            .is_some_and(|s| s.success())
    );

    // Someone else's VXLAN device on the port: named, left alone.
    topo.hosts[0]
        .ip(&[
            "link", "add", "vx9", "type", "vxlan", "id", "9", "dstport", "8472",
        ])
        .expect("another device");
    topo.hosts[0].ip(&["link", "set", "vx9", "up"]).expect("up");
    let e = topo
        .start_node(0, EXE, &args)
        .expect_err("a node must not start beside another VXLAN device on its port");
    let e = e.to_string();
    assert!(e.contains("vx9") && e.contains("ip link del vx9"), "{e}");
    assert!(
        topo.hosts[0].ip(&["link", "show", "vx9"]).is_ok(),
        "vx9 was deleted"
    );
}

/// A SIGTERM to the node alone (not its process group) while an `iptables` call hangs at
/// start: the call is killed at its deadline, the start ends as a stop (exit 0), and the
/// subnet file, which would tell the pods' network plugin the node is up, is never written.
#[test]
fn a_stop_during_a_hung_rule_tool_ends_the_start_without_the_subnet_file() {
    if skip("a_stop_during_a_hung_rule_tool_ends_the_start_without_the_subnet_file") {
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let _serial = serial();
    let topo = topology();
    let bin = topo.dir.path().join("fake-bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let marker = topo.dir.path().join("iptables-started");
    for tool in ["iptables", "ip6tables"] {
        let script = bin.join(tool);
        std::fs::write(
            &script,
            format!("#!/bin/sh\ntouch {}\nexec sleep 60\n", marker.display()),
        )
        .expect("script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("mode");
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let args = topo.node_args(0, &["--ip-masq"]);
    let subnet_file = topo.dir.path().join("node-0").join("subnet.env");
    let log = topo.dir.path().join("node-0.log");
    let mut node = topo.hosts[0]
        .start_with(EXE, &args, log, |c| {
            c.env("PATH", &path);
        })
        .expect("start the node");
    assert!(
        wait_for(Duration::from_secs(10), || marker.exists()),
        "the node never ran iptables:\n{}",
        node.log()
    );
    let pid = node.pid().expect("pid");
    crate::common::signal(pid, libc::SIGTERM);
    let mut status = None;
    let ended = wait_for(Duration::from_secs(40), || {
        status = node.exited();
        status.is_some()
    });
    assert!(ended, "no exit 40 s after SIGTERM:\n{}", node.log());
    let log = node.log();
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{log}");
    assert!(log.contains("did not finish within"), "{log}");
    assert!(!subnet_file.exists(), "the subnet file was written:\n{log}");
}
