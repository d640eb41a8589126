//! fustian nodes coordinating through a real etcd (Debian's `etcd-server`) in flannel's key
//! layout: nodes on a bridge in a hub namespace that also runs etcd on 192.0.2.254:2379.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use fustian::lab::ScratchDir;
use fustian::lab::netns::{Netns, Process, veth};
use fustian::lab::traffic::{Amount, tcp_bulk};

use crate::common::{EXE, iptables, nft, prefix, serial, skip, wait_for};

const ETCD: &str = "http://192.0.2.254:2379";
const PREFIX: &str = "/coreos.com/network";

/// A hub namespace with a bridge and etcd, and `n` nodes with a pod each. Fields drop in order:
/// fustian processes, etcd, namespaces, files.
struct Cluster {
    processes: Vec<Option<Process>>,
    /// `--etcd-endpoints` of each node.
    endpoints: Vec<String>,
    etcd: Option<Process>,
    pods: Vec<Netns>,
    nodes: Vec<Netns>,
    hub: Netns,
    dir: ScratchDir,
}

fn node_ip(i: usize) -> String {
    format!("192.0.2.{}", i + 1)
}

impl Cluster {
    fn new(n: usize) -> Self {
        let mut c = Self::without_etcd(n);
        c.start_etcd();
        c
    }

    /// The namespaces and nodes, with etcd not started yet.
    fn without_etcd(n: usize) -> Self {
        let which = std::process::Command::new("sh")
            .args(["-c", "command -v etcd"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            which,
            "the etcd server is missing: apt-get install etcd-server (the etcd tests need it)"
        );
        let p = prefix();
        let dir = ScratchDir::new(&p).expect("scratch dir");
        let hub = Netns::add(&format!("{p}h")).expect("hub namespace");
        hub.ip(&["link", "set", "lo", "up"]).expect("lo");
        hub.ip(&["link", "add", "br0", "type", "bridge"])
            .expect("bridge");
        hub.ip(&["addr", "add", "192.0.2.254/24", "dev", "br0"])
            .expect("addr");
        hub.ip(&["link", "set", "br0", "up"]).expect("up");
        let mut nodes = Vec::new();
        let mut pods = Vec::new();
        for i in 0..n {
            let node = Netns::add(&format!("{p}n{i}")).expect("node namespace");
            let port = format!("p{i}");
            veth(&node, "ul0", &hub, &port).expect("veth");
            hub.ip(&["link", "set", &port, "master", "br0", "up"])
                .expect("enslave");
            node.ip(&["addr", "add", &format!("{}/24", node_ip(i)), "dev", "ul0"])
                .expect("addr");
            node.ip(&["link", "set", "ul0", "up"]).expect("up");
            node.sysctl("net/ipv4/ip_forward", "1").expect("forwarding");
            let pod = Netns::add(&format!("{p}q{i}")).expect("pod namespace");
            veth(&node, "pod0", &pod, "eth0").expect("veth");
            nodes.push(node);
            pods.push(pod);
        }
        Self {
            processes: (0..n).map(|_| None).collect(),
            endpoints: vec![ETCD.to_owned(); n],
            etcd: None,
            pods,
            nodes,
            hub,
            dir,
        }
    }

    fn start_etcd(&mut self) {
        self.etcd = Some(launch_etcd(&self.hub, self.dir.path()));
    }

    fn put(&self, key: &str, value: &str) {
        let (key, value) = (key.to_owned(), value.to_owned());
        let done = with_etcd(&self.hub, move |c, rt| {
            rt.block_on(c.put(key, value, None)).is_ok()
        });
        assert_eq!(done, Some(true), "etcd put");
    }

    fn delete(&self, key: &str) {
        let key = key.to_owned();
        let done = with_etcd(&self.hub, move |c, rt| {
            rt.block_on(c.delete(key, None)).is_ok()
        });
        assert_eq!(done, Some(true), "etcd delete");
    }

    /// Puts each `(key, Some(value))` and deletes each `(key, None)`, in order, over one
    /// connection: a writer's burst.
    fn burst(&self, ops: Vec<(String, Option<String>)>) {
        let done = with_etcd(&self.hub, move |c, rt| {
            ops.into_iter().all(|(key, value)| match value {
                Some(v) => rt.block_on(c.put(key, v, None)).is_ok(),
                None => rt.block_on(c.delete(key, None)).is_ok(),
            })
        });
        assert_eq!(done, Some(true), "etcd burst");
    }

    fn keys(&self, prefix: &str) -> Vec<(String, String)> {
        let prefix = prefix.to_owned();
        with_etcd(&self.hub, move |c, rt| {
            let resp = rt
                .block_on(c.get(prefix, Some(etcd_client::GetOptions::new().with_prefix())))
                .ok()?;
            Some(
                resp.kvs()
                    .iter()
                    .map(|kv| {
                        (
                            kv.key_str().unwrap_or_default().to_owned(),
                            kv.value_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect::<Vec<_>>(),
            )
        })
        .flatten()
        .expect("etcd get")
    }

    /// Returns how many etcd leases (grants) exist.
    fn etcd_leases(&self) -> usize {
        with_etcd(&self.hub, |c, rt| {
            rt.block_on(c.leases()).ok().map(|r| r.leases().len())
        })
        .flatten()
        .expect("etcd lease list")
    }

    fn set_network(&self, backend: &str) {
        self.put(
            &format!("{PREFIX}/config"),
            &format!(r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"{backend}"}}}}"#),
        );
    }

    fn subnet_file(&self, i: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("node-{i}")).join("subnet.env")
    }

    fn stats_path(&self, i: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("stats-{i}.prom"))
    }

    fn args(&self, i: usize, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "run",
            "--etcd-endpoints",
            &self.endpoints[i],
            "--public-ip",
            &node_ip(i),
            "--subnet-file",
            &self.subnet_file(i).to_string_lossy(),
            "--stats-file",
            &self.stats_path(i).to_string_lossy(),
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }

    /// Starts node `i` without waiting for it.
    fn spawn_node(&mut self, i: usize, extra: &[&str]) {
        let _ = std::fs::remove_file(self.stats_path(i));
        let log = self.dir.path().join(format!("node-{i}.log"));
        let args = self.args(i, extra);
        let p = self.nodes[i].start(EXE, &args, log).expect("start fustian");
        self.processes[i] = Some(p);
    }

    /// Waits for node `i` to come up, then addresses its pod from the subnet it got.
    fn wait_node(&mut self, i: usize) -> ipnet::Ipv4Net {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.stats_path(i).exists() {
            if let Some(status) = self.processes[i].as_mut().and_then(Process::exited) {
                panic!("node {i} exited ({status}):\n{}", self.log(i));
            }
            assert!(
                Instant::now() < deadline,
                "node {i} did not come up:\n{}",
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let subnet = self
            .subnet(i)
            .unwrap_or_else(|| panic!("node {i}: no subnet file"));
        let gateway = std::net::Ipv4Addr::from(u32::from(subnet.network()) + 1);
        let pod = std::net::Ipv4Addr::from(u32::from(subnet.network()) + 2);
        let (node, podns) = (&self.nodes[i], &self.pods[i]);
        let _ = node.ip(&["addr", "flush", "dev", "pod0"]);
        node.ip(&["addr", "add", &format!("{gateway}/24"), "dev", "pod0"])
            .expect("gw");
        node.ip(&["link", "set", "pod0", "up"]).expect("up");
        let _ = podns.ip(&["addr", "flush", "dev", "eth0"]);
        podns
            .ip(&["addr", "add", &format!("{pod}/24"), "dev", "eth0"])
            .expect("pod addr");
        podns.ip(&["link", "set", "eth0", "up"]).expect("up");
        let _ = podns.ip(&["route", "del", "default"]);
        podns
            .ip(&["route", "add", "default", "via", &gateway.to_string()])
            .expect("route");
        subnet
    }

    /// Starts node `i` configured through flanneld's environment variables only.
    fn start_node_from_env(&mut self, i: usize) -> ipnet::Ipv4Net {
        let _ = std::fs::remove_file(self.stats_path(i));
        let log = self.dir.path().join(format!("node-{i}.log"));
        let args: Vec<String> = vec![
            format!("FLANNELD_ETCD_ENDPOINTS={ETCD}"),
            format!("FLANNELD_ETCD_PREFIX={PREFIX}"),
            format!("FLANNELD_PUBLIC_IP={}", node_ip(i)),
            format!("FLANNELD_SUBNET_FILE={}", self.subnet_file(i).display()),
            EXE.to_owned(),
            "run".to_owned(),
            "--stats-file".to_owned(),
            self.stats_path(i).to_string_lossy().into_owned(),
        ];
        let p = self.nodes[i]
            .start("env", &args, log)
            .expect("start fustian");
        self.processes[i] = Some(p);
        self.wait_node(i)
    }

    fn start_node(&mut self, i: usize, extra: &[&str]) -> ipnet::Ipv4Net {
        self.spawn_node(i, extra);
        self.wait_node(i)
    }

    fn stop_node(&mut self, i: usize) {
        if let Some(mut p) = self.processes[i].take() {
            let status = p.stop(Duration::from_secs(5));
            assert!(
                status.is_some_and(|s| s.success()),
                "node {i}: {status:?}:\n{}",
                p.log()
            );
        }
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node-{i}.log"))).unwrap_or_default()
    }

    fn subnet(&self, i: usize) -> Option<ipnet::Ipv4Net> {
        fustian::control::etcd::previous_subnet(&self.subnet_file(i))
    }

    /// Returns `etcd_leases_rejected{reason="..."}` of node `i`.
    fn rejected(&self, i: usize, reason: &str) -> u64 {
        self.counter(i, &format!("etcd_leases_rejected{{reason=\"{reason}\"}}"))
    }

    /// Returns the value at `key`, if any.
    fn value(&self, key: &str) -> Option<String> {
        self.keys(key)
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    fn counter(&self, i: usize, name: &str) -> u64 {
        self.written(i, name).unwrap_or(0)
    }

    /// Returns one counter of node `i` as its stats file has it, `None` while the file or the
    /// counter is missing.
    fn written(&self, i: usize, name: &str) -> Option<u64> {
        let text = std::fs::read_to_string(self.stats_path(i)).ok()?;
        fustian::metrics::parse_prometheus(&text)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    fn pod_addr(&self, i: usize, port: u16) -> SocketAddr {
        let subnet = self.subnet(i).expect("subnet");
        SocketAddr::from((
            std::net::Ipv4Addr::from(u32::from(subnet.network()) + 2),
            port,
        ))
    }

    fn transfer(&self, from: usize, to: usize, bytes: u64) {
        let stop = Arc::new(AtomicBool::new(false));
        let r = tcp_bulk(
            &self.pods[from],
            &self.pods[to],
            self.pod_addr(to, 5201),
            Amount::Bytes(bytes),
            true,
            &stop,
        )
        .expect("bulk transfer runs");
        assert!(r.intact(), "{from}->{to}: {r:?}");
    }
}

/// Runs `op` with an etcd client made inside the hub namespace, where etcd listens. `None`
/// when etcd cannot be reached.
fn with_etcd<T: Send + 'static>(
    hub: &Netns,
    op: impl FnOnce(&mut etcd_client::Client, &tokio::runtime::Runtime) -> T + Send + 'static,
) -> Option<T> {
    crate::common::with_etcd_in(hub, ETCD, op)
}

/// Starts etcd in `hub` with its data in `dir`, and waits until it answers.
fn launch_etcd(hub: &Netns, dir: &std::path::Path) -> Process {
    launch_etcd_at(hub, dir, ETCD)
}

/// Starts etcd in `hub` with its data in `dir`, serving clients at `url` only.
fn launch_etcd_at(hub: &Netns, dir: &std::path::Path, url: &str) -> Process {
    launch_etcd_with(hub, dir, url, &[])
}

/// Starts etcd in `hub` with its data in `dir`, serving clients at `urls` (comma separated;
/// the first, plain HTTP, is the one waited on), with `extra` arguments.
fn launch_etcd_with(hub: &Netns, dir: &std::path::Path, urls: &str, extra: &[&str]) -> Process {
    let url = urls.split(',').next().unwrap_or(urls);
    let data = dir.join("etcd-data");
    let mut args: Vec<String> = [
        "--name",
        "fustian-test",
        "--data-dir",
        &data.to_string_lossy(),
        "--listen-client-urls",
        urls,
        "--advertise-client-urls",
        urls,
        "--listen-peer-urls",
        "http://127.0.0.1:2380",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:2380",
        "--initial-cluster",
        "fustian-test=http://127.0.0.1:2380",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let log = dir.join("etcd.log");
    let process = hub.start("etcd", &args, log.clone()).expect("start etcd");
    let up = wait_for(Duration::from_secs(20), || {
        crate::common::with_etcd_in(hub, url, |c, rt| rt.block_on(c.get("probe", None)).is_ok())
            == Some(true)
    });
    assert!(
        up,
        "etcd did not come up:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    process
}

#[test]
fn three_nodes_get_distinct_subnets_and_reach_each_other() {
    if skip("three_nodes_get_distinct_subnets_and_reach_each_other") {
        return;
    }
    let _serial = serial();
    for backend in ["vxlan", "udp"] {
        eprintln!("== three nodes, {backend}");
        let mut c = Cluster::new(3);
        c.set_network(backend);
        // Node 0 serves its HTTP endpoint on its underlay address.
        let http = ["--healthz-ip", "192.0.2.1", "--healthz-port", "8471"];
        let subnets: Vec<_> = (0..3)
            .map(|i| c.start_node(i, if i == 0 { &http[..] } else { &[] }))
            .collect();
        assert_ne!(subnets[0], subnets[1]);
        assert_ne!(subnets[1], subnets[2]);
        assert_ne!(subnets[0], subnets[2]);
        for i in 0..3 {
            let seen = wait_for(Duration::from_secs(5), || c.counter(i, "table_peers") == 2);
            assert!(
                seen,
                "node {i} does not see both peers: ignored {} peers {} keys {:?}",
                c.counter(i, "etcd_leases_ignored"),
                c.counter(i, "table_peers"),
                c.keys(PREFIX)
            );
            let env = std::fs::read_to_string(c.subnet_file(i)).expect("subnet file");
            assert!(env.contains("FLANNEL_NETWORK=10.244.0.0/16"), "{env}");
            let mtu = if backend == "udp" { 1472 } else { 1450 };
            assert!(env.contains(&format!("FLANNEL_MTU={mtu}")), "{env}");
            assert!(env.contains("FLANNEL_IPMASQ=false"), "{env}");
        }
        // flanneld's exact lease values are in etcd.
        let leases = c.keys(&format!("{PREFIX}/subnets/"));
        assert_eq!(leases.len(), 3, "{leases:?}");
        for (key, value) in &leases {
            assert!(
                value.starts_with(r#"{"PublicIP":"192.0.2."#),
                "{key}: {value}"
            );
            if backend == "vxlan" {
                assert!(
                    value.contains(r#""BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":""#),
                    "{value}"
                );
            } else {
                assert!(value.ends_with(r#","PublicIPv6":null}"#), "{value}");
            }
        }
        for (from, to) in [(0, 1), (1, 2), (2, 0), (1, 0), (2, 1), (0, 2)] {
            c.transfer(from, to, 8 << 20);
        }
        check_http(&c, backend, subnets[0]);
        for i in 0..3 {
            assert_eq!(c.counter(i, "etcd_connected"), 1, "node {i}");
            c.stop_node(i);
        }
    }
}

/// Node 0's `/healthz`, `/readyz`, `/metrics` and `/status`, and `fustian show`, report what
/// the test did: both peers, the transfers, etcd connected.
fn check_http(c: &Cluster, backend: &'static str, subnet: ipnet::Ipv4Net) {
    let addr: SocketAddr = "192.0.2.1:8471".parse().expect("literal");
    let get = move |path: &'static str| {
        c.nodes[0]
            .run(move || fustian::http::get(addr, path))
            .expect("enter node 0")
    };
    assert_eq!(get("/healthz").as_deref(), Ok("fustian is running\n"));
    assert_eq!(get("/readyz").as_deref(), Ok("fustian is ready\n"));
    let metrics = fustian::metrics::parse_prometheus(&get("/metrics").expect("metrics"));
    let m = |name: &str| metrics.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
    assert_eq!(m("table_peers"), Some(2));
    assert_eq!(m("etcd_connected"), Some(1));
    assert!(m("tx_bytes").is_some_and(|b| b > 16 << 20), "{metrics:?}");
    assert!(m("drop_tun_bad_flags").is_some());
    // Per peer: node 0 sent to and received from both.
    for name in ["peer_tx_bytes{", "peer_rx_bytes{"] {
        let per_peer: Vec<u64> = metrics
            .iter()
            .filter(|(k, _)| k.starts_with(name))
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(per_peer.len(), 2, "{name}: {metrics:?}");
        assert!(
            per_peer.iter().all(|&v| v > 1 << 20),
            "{name}: {per_peer:?}"
        );
    }
    let status: serde_json::Value =
        serde_json::from_str(&get("/status").expect("status")).expect("JSON");
    assert_eq!(
        status["backend"],
        if backend == "udp" { "udp" } else { "vxlan" }
    );
    assert_eq!(status["subnet"], subnet.to_string());
    assert_eq!(status["table"]["peers"].as_array().map(Vec::len), Some(2));
    // `fustian show` prints the same for a person.
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            c.nodes[0].name(),
            EXE,
            "show",
            "--addr",
            "192.0.2.1:8471",
        ])
        .output()
        .expect("run fustian show");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("node {subnet} in 10.244.0.0/16")),
        "{text}"
    );
    assert!(text.contains("2 peers"), "{text}");
    assert!(text.contains("tx bytes"), "{text}");
    assert!(text.contains("etcd connected"), "{text}");
    assert!(text.contains("tx_packets"), "{text}");
}

#[test]
fn a_flanneld_lease_becomes_a_route_and_goes_away() {
    if skip("a_flanneld_lease_becomes_a_route_and_goes_away") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::new(2);
    c.set_network("udp");
    let own = c.start_node(0, &[]);
    // Its own lease deleted (by an operator, or expired): written again, same subnet.
    let own_key = format!("{PREFIX}/subnets/{}-{}", own.network(), own.prefix_len());
    c.delete(&own_key);
    let rewritten = wait_for(Duration::from_secs(3), || {
        c.keys(&own_key)
            .iter()
            .any(|(_, v)| v.contains(r#""PublicIP":"192.0.2.1""#))
    });
    assert!(rewritten, "own lease not written again:\n{}", c.log(0));
    // On the etcd lease it had, still alive: no new grant, no orphaned lease per deletion.
    assert!(wait_for(Duration::from_secs(2), || c
        .counter(0, "etcd_own_lease_restored")
        == 1));
    assert_eq!(c.counter(0, "etcd_lease_regrants"), 0, "{}", c.log(0));
    assert_eq!(c.etcd_leases(), 1, "one etcd lease, the node's");
    // A writer's burst of 200 overwrites and deletions: at most one rewrite a second, a
    // bounded number of lines, and the key written again after the last deletion.
    let lines = |c: &Cluster| c.log(0).matches("own lease").count();
    let before = lines(&c);
    let started = Instant::now();
    c.burst(
        (0..100)
            .flat_map(|i| {
                [
                    // Junk, a value no node holds: written back, never a reservation.
                    (own_key.clone(), Some(format!("junk {i}"))),
                    (own_key.clone(), None),
                ]
            })
            .collect(),
    );
    let rewritten = wait_for(Duration::from_secs(5), || {
        c.keys(&own_key)
            .iter()
            .any(|(_, v)| v.contains(r#""PublicIP":"192.0.2.1""#))
    });
    assert!(rewritten, "own lease not written again:\n{}", c.log(0));
    // The node counts a write-back once etcd has answered it: read after it has.
    let counted = wait_for(Duration::from_secs(3), || {
        c.counter(0, "etcd_own_lease_restored") >= 2
    });
    assert!(counted, "the write-back was not counted:\n{}", c.log(0));
    let restored = c.counter(0, "etcd_own_lease_restored") - 1;
    let secs = started.elapsed().as_secs() + 2;
    assert!(
        (1..=secs).contains(&restored),
        "{restored} rewrites in {secs} s:\n{}",
        c.log(0)
    );
    assert!(lines(&c) - before <= 34, "{}", c.log(0));
    assert_eq!(c.etcd_leases(), 1, "one etcd lease, the node's");
    // Two subnets other than the one this node drew at random.
    let own_octet = own.network().octets()[2];
    let mut free = (77u8..).filter(|o| *o != own_octet);
    let (theirs, other) = (free.next().unwrap_or(77), free.next().unwrap_or(78));
    // A lease exactly as flanneld's udp backend writes it, for node 1's address, where a plain
    // socket stands in for flanneld's proxy.
    let key = format!("{PREFIX}/subnets/10.244.{theirs}.0-24");
    let written = Instant::now();
    c.put(&key, r#"{"PublicIP":"192.0.2.2","PublicIPv6":null}"#);
    let routed = wait_for(Duration::from_secs(1), || c.counter(0, "table_peers") == 1);
    assert!(
        routed,
        "no route {:?} after the lease:\n{}",
        written.elapsed(),
        c.log(0)
    );
    let proxy = c.nodes[1]
        .run(|| std::net::UdpSocket::bind("192.0.2.2:8285"))
        .expect("enter node 1")
        .expect("bind the stand-in proxy");
    proxy
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let to = format!("10.244.{theirs}.5:9");
    c.pods[0]
        .run(move || {
            std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| s.send_to(b"via etcd", to))
        })
        .expect("enter pod 0")
        .expect("send");
    let mut buf = [0u8; 256];
    let (n, from) = proxy
        .recv_from(&mut buf)
        .expect("the packet reaches the lease's node");
    assert_eq!(from, "192.0.2.1:8285".parse().expect("literal"));
    assert!(
        buf[..n].ends_with(b"via etcd"),
        "inner packet: {:?}",
        &buf[..n]
    );
    c.delete(&key);
    let removed = wait_for(Duration::from_secs(1), || c.counter(0, "table_peers") == 0);
    assert!(removed, "the peer stayed after its lease was deleted");
    // A lease of a backend this node cannot speak is ignored and counted.
    c.put(
        &format!("{PREFIX}/subnets/10.244.{other}.0-24"),
        r#"{"PublicIP":"192.0.2.2","PublicIPv6":null,"BackendType":"host-gw"}"#,
    );
    let ignored = wait_for(Duration::from_secs(2), || {
        c.counter(0, "etcd_leases_ignored") == 1
    });
    assert!(ignored, "host-gw lease not counted");
    assert_eq!(c.counter(0, "table_peers"), 0);
    c.stop_node(0);
}

#[test]
fn a_restarted_node_gets_its_subnet_back() {
    if skip("a_restarted_node_gets_its_subnet_back") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::new(1);
    c.set_network("vxlan");
    let first = c.start_node(0, &[]);
    // The VTEP MAC in the lease is the one kept beside the subnet file, and stays.
    let mac_file = c
        .subnet_file(0)
        .with_file_name(fustian::config::VTEP_MAC_FILE);
    let kept_mac = || {
        std::fs::read_to_string(&mac_file)
            .unwrap_or_else(|e| panic!("{}: {e}", mac_file.display()))
            .trim()
            .to_owned()
    };
    let leased = |c: &Cluster| c.keys(&format!("{PREFIX}/subnets/"));
    let mac = kept_mac();
    let in_lease = format!(r#""VtepMAC":"{mac}""#);
    let leases = leased(&c);
    assert!(
        leases.iter().any(|(_, v)| v.contains(&in_lease)),
        "{mac}: {leases:?}"
    );
    c.stop_node(0);
    assert_eq!(c.start_node(0, &[]), first, "after a restart");
    assert_eq!(kept_mac(), mac);
    let leases = leased(&c);
    assert!(
        leases.iter().any(|(_, v)| v.contains(&in_lease)),
        "{mac}: {leases:?}"
    );
    c.stop_node(0);
    // Without the subnet file too: the lease carrying this node's address is reused.
    std::fs::remove_file(c.subnet_file(0)).expect("remove subnet file");
    assert_eq!(c.start_node(0, &[]), first, "without the subnet file");
    c.stop_node(0);
    // Configured through FLANNELD_* variables alone, as flanneld's deployments do.
    assert_eq!(c.start_node_from_env(0), first, "from the environment");
    c.stop_node(0);
    assert_eq!(c.keys(&format!("{PREFIX}/subnets/")).len(), 1);
}

/// Removes a namespace's `/etc/netns/<name>` directory on drop, and `/etc/netns` when that
/// leaves it empty.
struct EtcNetns(std::path::PathBuf);

impl Drop for EtcNetns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// A node that joined through etcd keeps no capability on any thread: neither the threads made
/// before the privileges are dropped (its client's runtime is made on the main thread, and the
/// endpoint's host name is looked up on one of the runtime's blocking threads, idle for 10 s
/// after) nor those made after.
#[test]
fn a_node_joined_through_etcd_keeps_no_capability_on_any_thread() {
    if skip("a_node_joined_through_etcd_keeps_no_capability_on_any_thread") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::new(1);
    c.set_network("udp");
    // `ip netns exec` puts /etc/netns/<name>/hosts in place of /etc/hosts.
    let etc = EtcNetns(std::path::Path::new("/etc/netns").join(c.nodes[0].name()));
    std::fs::create_dir_all(&etc.0).expect("/etc/netns/<name>");
    std::fs::write(
        etc.0.join("hosts"),
        "127.0.0.1 localhost\n192.0.2.254 etcd-hub\n",
    )
    .expect("hosts");
    c.endpoints[0] = "http://etcd-hub:2379".to_owned();
    c.start_node(0, &[]);
    let pid = c.processes[0]
        .as_ref()
        .and_then(Process::pid)
        .expect("running");
    let threads = crate::privileges::thread_creds(pid);
    for name in ["fustian-etcd", "tokio-rt-worker"] {
        assert!(
            threads.iter().any(|t| t.name == name),
            "{name}: {threads:#?}"
        );
    }
    let wrong = crate::privileges::privileged(&threads);
    assert!(wrong.is_empty(), "{wrong:#?}\n{threads:#?}\n{}", c.log(0));
    c.stop_node(0);
}

/// A node away past its lease (SIGSTOP stands in for a long pause or a partition) whose
/// subnet another node took meanwhile stops with an error naming it, instead of routing a
/// subnet it no longer holds (flanneld exits when its lease is lost, too).
#[test]
fn a_node_whose_subnet_was_taken_while_away_stops_with_an_error() {
    if skip("a_node_whose_subnet_was_taken_while_away_stops_with_an_error") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::new(1);
    c.set_network("udp");
    let subnet = c.start_node(0, &["--subnet-lease-ttl", "5"]);
    let key = format!(
        "{PREFIX}/subnets/{}-{}",
        subnet.network(),
        subnet.prefix_len()
    );
    let pid = c.processes[0].as_ref().and_then(Process::pid).expect("pid");
    crate::common::signal(pid, libc::SIGSTOP);
    let expired = wait_for(Duration::from_secs(20), || c.value(&key).is_none());
    if !expired {
        crate::common::signal(pid, libc::SIGCONT);
        panic!("the stopped node's lease did not expire:\n{}", c.log(0));
    }
    // Taken by another node, on its etcd lease.
    put_on_new_lease(&c, &key, r#"{"PublicIP":"192.0.2.9","PublicIPv6":null}"#);
    crate::common::signal(pid, libc::SIGCONT);
    let mut status = None;
    let exited = wait_for(Duration::from_secs(30), || {
        status = c.processes[0].as_mut().and_then(Process::exited);
        status.is_some()
    });
    assert!(
        exited,
        "the node goes on with a subnet it lost:\n{}",
        c.log(0)
    );
    assert!(status.is_some_and(|s| !s.success()), "{status:?}");
    let log = c.log(0);
    assert!(
        log.contains(&format!(
            "this node's subnet {subnet} was leased to another node after this node's etcd \
             lease expired"
        )),
        "{log}"
    );
    // The other node's lease stays as it wrote it.
    assert!(
        c.value(&key)
            .is_some_and(|v| v.contains(r#""PublicIP":"192.0.2.9""#)),
        "{:?}",
        c.value(&key)
    );
    c.processes[0] = None;
}

/// A node's key overwritten in place with this node's `PublicIP` on another live etcd lease (a
/// second node with the same address took it as its own) is left to that writer, not written
/// back (two nodes would otherwise rewrite it in turn for good); once the other's etcd lease
/// is gone and the key with it, the node writes it back.
#[test]
fn a_key_put_on_another_etcd_lease_with_this_node_s_address_is_left_to_it() {
    if skip("a_key_put_on_another_etcd_lease_with_this_node_s_address_is_left_to_it") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::new(1);
    c.set_network("udp");
    let subnet = c.start_node(0, &[]);
    let key = format!(
        "{PREFIX}/subnets/{}-{}",
        subnet.network(),
        subnet.prefix_len()
    );
    let lease_of = |c: &Cluster, key: &str| {
        let key = key.to_owned();
        with_etcd(&c.hub, move |client, rt| {
            rt.block_on(client.get(key, None))
                .ok()
                .and_then(|r| r.kvs().first().map(etcd_client::KeyValue::lease))
        })
        .flatten()
    };
    let own = lease_of(&c, &key).expect("the node's key");
    let (k, v) = (
        key.clone(),
        r#"{"PublicIP":"192.0.2.1","PublicIPv6":null}"#.to_owned(),
    );
    let other = with_etcd(&c.hub, move |client, rt| {
        let id = rt.block_on(client.lease_grant(300, None)).ok()?.id();
        let put = etcd_client::PutOptions::new().with_lease(id);
        rt.block_on(client.put(k, v, Some(put))).ok()?;
        Some(id)
    })
    .flatten()
    .expect("etcd lease and put");
    assert_ne!(own, other);
    assert!(
        wait_for(Duration::from_secs(10), || c
            .counter(0, "etcd_own_lease_shared")
            >= 1),
        "the shared key was not noticed:\n{}",
        c.log(0)
    );
    assert_eq!(c.counter(0, "etcd_own_lease_restored"), 0, "{}", c.log(0));
    assert_eq!(lease_of(&c, &key), Some(other), "{}", c.log(0));
    // The other writer gone (its etcd lease revoked, the key with it): written back.
    let revoked = with_etcd(&c.hub, move |client, rt| {
        rt.block_on(client.lease_revoke(other)).is_ok()
    });
    assert_eq!(revoked, Some(true));
    let back = wait_for(Duration::from_secs(10), || {
        c.counter(0, "etcd_own_lease_restored") >= 1
            && lease_of(&c, &key).is_some_and(|l| l != other && l != 0)
    });
    assert!(back, "the key was not written back:\n{}", c.log(0));
    assert_eq!(c.counter(0, "etcd_own_lease_shared"), 1, "{}", c.log(0));
    let status = c.processes[0].as_mut().and_then(Process::exited);
    assert!(status.is_none(), "{status:?}\n{}", c.log(0));
}

/// A node's key deleted and created again by another writer while the node did not look, as
/// a reservation (a valid value of another address without an etcd lease, which flannel keeps
/// for that address), is the reservation's now, although this node's etcd lease lives: the
/// node stops with an error saying so instead of writing it back, and the reservation stays.
/// An overwrite in place (same create revision) is still written back.
#[test]
fn a_key_created_again_by_another_writer_is_not_written_back() {
    if skip("a_key_created_again_by_another_writer_is_not_written_back") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::new(1);
    c.set_network("udp");
    let subnet = c.start_node(0, &[]);
    let key = format!(
        "{PREFIX}/subnets/{}-{}",
        subnet.network(),
        subnet.prefix_len()
    );
    // Overwritten in place: written back.
    c.put(&key, r#"{"PublicIP":"192.0.2.8","PublicIPv6":null}"#);
    let restored = wait_for(Duration::from_secs(10), || {
        c.counter(0, "etcd_own_lease_restored") >= 1
            && c.value(&key).is_some_and(|v| v.contains("192.0.2.1"))
    });
    assert!(restored, "an overwrite was not written back:\n{}", c.log(0));
    let pid = c.processes[0].as_ref().and_then(Process::pid).expect("pid");
    // Deleted and created again with this node's address (an operator's put, a restored
    // snapshot): still this node's, written back.
    let restores = c.counter(0, "etcd_own_lease_restored");
    crate::common::signal(pid, libc::SIGSTOP);
    c.delete(&key);
    c.put(&key, r#"{"PublicIP":"192.0.2.1"}"#);
    crate::common::signal(pid, libc::SIGCONT);
    let restored = wait_for(Duration::from_secs(10), || {
        c.counter(0, "etcd_own_lease_restored") > restores
            && c.value(&key)
                .is_some_and(|v| v.contains(r#""PublicIPv6":null"#))
    });
    assert!(
        restored,
        "a key put back with this node's address was not taken:\n{}",
        c.log(0)
    );
    assert!(
        c.processes[0].as_mut().and_then(Process::exited).is_none(),
        "{}",
        c.log(0)
    );
    // Deleted and created again by another writer while the node is stopped: not written
    // back.
    crate::common::signal(pid, libc::SIGSTOP);
    c.delete(&key);
    c.put(&key, r#"{"PublicIP":"192.0.2.9","PublicIPv6":null}"#);
    crate::common::signal(pid, libc::SIGCONT);
    let mut status = None;
    let exited = wait_for(Duration::from_secs(20), || {
        status = c.processes[0].as_mut().and_then(Process::exited);
        status.is_some()
    });
    assert!(
        exited,
        "the node goes on with a key another writer created:\n{}",
        c.log(0)
    );
    assert!(status.is_some_and(|s| !s.success()), "{status:?}");
    let log = c.log(0);
    assert!(log.contains("created again by another writer"), "{log}");
    assert!(
        log.contains(&format!(
            "this node's subnet {subnet} is reserved for 192.0.2.9"
        )),
        "{log}"
    );
    assert!(
        c.value(&key)
            .is_some_and(|v| v.contains(r#""PublicIP":"192.0.2.9""#)),
        "{:?}\n{log}",
        c.value(&key)
    );
    c.processes[0] = None;
}

/// Returns the etcd lease `key` is on, if the key exists.
fn lease_of(c: &Cluster, key: &str) -> Option<i64> {
    let key = key.to_owned();
    with_etcd(&c.hub, move |client, rt| {
        rt.block_on(client.get(key, None))
            .ok()
            .and_then(|r| r.kvs().first().map(etcd_client::KeyValue::lease))
    })
    .flatten()
}

/// Puts `value` at `key` on a new etcd lease of 300 s and returns its id.
fn put_on_new_lease(c: &Cluster, key: &str, value: &str) -> i64 {
    let (k, v) = (key.to_owned(), value.to_owned());
    with_etcd(&c.hub, move |client, rt| {
        let id = rt.block_on(client.lease_grant(300, None)).ok()?.id();
        let put = etcd_client::PutOptions::new().with_lease(id);
        rt.block_on(client.put(k, v, Some(put))).ok()?;
        Some(id)
    })
    .flatten()
    .expect("etcd lease and put")
}

/// Waits until node 0 has written its key back (`etcd_own_lease_restored` above `before`),
/// holding `value` on the etcd lease `own` again.
fn written_back(c: &Cluster, key: &str, value: &str, own: i64, before: u64) -> bool {
    wait_for(Duration::from_secs(10), || {
        c.counter(0, "etcd_own_lease_restored") > before
            && c.value(key).as_deref() == Some(value)
            && lease_of(c, key) == Some(own)
    })
}

/// A node's key overwritten on another live etcd lease with this node's `PublicIP` but
/// another route to it (another VTEP MAC, another backend type or VNI) is no second node with
/// the same address: the peers would send this node's traffic where it does not arrive. The
/// node writes it back; only an exact twin of its value is left to the other writer.
#[test]
fn a_key_with_this_node_s_address_but_another_route_is_written_back() {
    if skip("a_key_with_this_node_s_address_but_another_route_is_written_back") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::new(1);
    c.set_network("vxlan");
    let subnet = c.start_node(0, &[]);
    let key = format!(
        "{PREFIX}/subnets/{}-{}",
        subnet.network(),
        subnet.prefix_len()
    );
    let own_value = c.value(&key).expect("the node's key");
    let own = lease_of(&c, &key).expect("the node's etcd lease");
    let mac = own_value
        .split(r#""VtepMAC":""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a VtepMAC")
        .to_owned();
    assert!(own_value.contains(r#""VNI":1,"#), "{own_value}");
    for (what, forged) in [
        (
            "another VTEP MAC",
            own_value.replace(&mac, "0e:00:00:00:00:99"),
        ),
        (
            "another VNI",
            own_value.replace(r#""VNI":1,"#, r#""VNI":2,"#),
        ),
        (
            "another backend",
            r#"{"PublicIP":"192.0.2.1","PublicIPv6":null}"#.to_owned(),
        ),
        (
            "a PublicIPv6",
            own_value.replace(r#""PublicIPv6":null"#, r#""PublicIPv6":"2001:db8::1""#),
        ),
    ] {
        assert_ne!(forged, own_value, "{what}");
        let before = c.counter(0, "etcd_own_lease_restored");
        put_on_new_lease(&c, &key, &forged);
        assert!(
            written_back(&c, &key, &own_value, own, before),
            "{what}: not written back ({:?}):\n{}",
            c.value(&key),
            c.log(0)
        );
    }
    assert_eq!(c.counter(0, "etcd_own_lease_shared"), 0, "{}", c.log(0));
    // An exact twin is a second node with this address: left to it.
    let other = put_on_new_lease(&c, &key, &own_value);
    assert!(
        wait_for(Duration::from_secs(10), || c
            .counter(0, "etcd_own_lease_shared")
            == 1),
        "the twin was not left to its writer:\n{}",
        c.log(0)
    );
    assert_eq!(lease_of(&c, &key), Some(other));
    let status = c.processes[0].as_mut().and_then(Process::exited);
    assert!(status.is_none(), "{status:?}\n{}", c.log(0));
    c.stop_node(0);
}

/// A node's key deleted and created again while the node holds its etcd lease, with junk, with
/// a value no node can hold (no reservation), or with junk on another etcd lease, is not
/// another node taking the subnet: the node writes its value back (taking the key's new
/// create revision as its own) and goes on. Created again on another etcd lease with a lease
/// its peers take, it is another node's: the node stops and says so.
#[test]
fn a_key_created_again_with_junk_is_written_back_and_by_another_node_stops_the_node() {
    if skip("a_key_created_again_with_junk_is_written_back_and_by_another_node_stops_the_node") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::new(1);
    c.set_network("udp");
    let subnet = c.start_node(0, &[]);
    let key = format!(
        "{PREFIX}/subnets/{}-{}",
        subnet.network(),
        subnet.prefix_len()
    );
    let own_value = c.value(&key).expect("the node's key");
    let own = lease_of(&c, &key).expect("the node's etcd lease");
    let pid = c.processes[0].as_ref().and_then(Process::pid).expect("pid");
    // As an operator's etcdctl would: deleted, then put, while the node runs.
    let before = c.counter(0, "etcd_own_lease_restored");
    c.delete(&key);
    c.put(&key, "junk");
    assert!(
        written_back(&c, &key, &own_value, own, before),
        "junk put after a deletion was not written back ({:?}):\n{}",
        c.value(&key),
        c.log(0)
    );
    // The same with the node stopped between the two, so that it finds the key created again.
    for (what, value, on_lease) in [
        ("junk", "junk", false),
        (
            "no reservation",
            r#"{"PublicIP":"127.0.0.1","PublicIPv6":null}"#,
            false,
        ),
        ("junk on another etcd lease", "junk", true),
    ] {
        let before = c.counter(0, "etcd_own_lease_restored");
        crate::common::signal(pid, libc::SIGSTOP);
        c.delete(&key);
        if on_lease {
            put_on_new_lease(&c, &key, value);
        } else {
            c.put(&key, value);
        }
        crate::common::signal(pid, libc::SIGCONT);
        assert!(
            written_back(&c, &key, &own_value, own, before),
            "{what}: not written back ({:?}):\n{}",
            c.value(&key),
            c.log(0)
        );
        let status = c.processes[0].as_mut().and_then(Process::exited);
        assert!(status.is_none(), "{what}: {status:?}\n{}", c.log(0));
    }
    // Another node's lease on its etcd lease: the node gives the subnet up.
    crate::common::signal(pid, libc::SIGSTOP);
    c.delete(&key);
    let other = put_on_new_lease(&c, &key, r#"{"PublicIP":"192.0.2.9","PublicIPv6":null}"#);
    crate::common::signal(pid, libc::SIGCONT);
    let mut status = None;
    let exited = wait_for(Duration::from_secs(20), || {
        status = c.processes[0].as_mut().and_then(Process::exited);
        status.is_some()
    });
    assert!(
        exited,
        "the node goes on with a key another node created:\n{}",
        c.log(0)
    );
    assert!(status.is_some_and(|s| !s.success()), "{status:?}");
    let log = c.log(0);
    assert!(
        log.contains(&format!(
            "this node's subnet {subnet} was leased to another node (PublicIP 192.0.2.9, etcd \
             lease {other:x})"
        )),
        "{log}"
    );
    assert_eq!(lease_of(&c, &key), Some(other), "{log}");
    c.processes[0] = None;
}

/// The network config changed or deleted while nodes run: each node reports it (log and
/// `etcd_config_changes`) and keeps the config it joined with, so forwarding goes on.
#[test]
fn a_config_changed_or_deleted_while_running_is_reported_and_kept() {
    if skip("a_config_changed_or_deleted_while_running_is_reported_and_kept") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::new(2);
    c.set_network("udp");
    c.start_node(0, &[]);
    c.start_node(1, &[]);
    assert!(wait_for(Duration::from_secs(5), || c
        .counter(0, "table_peers")
        == 1));
    // Rewritten unchanged: nothing to report. A junk key written after it shows when node 0
    // has read that far.
    c.set_network("udp");
    c.put(&format!("{PREFIX}/subnets/marker-1"), "x");
    assert!(wait_for(Duration::from_secs(5), || c
        .rejected(0, "bad_key")
        == 1));
    assert_eq!(c.counter(0, "etcd_config_changes"), 0, "{}", c.log(0));
    c.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.244.0.0/16","SubnetLen":26,"Backend":{"Type":"vxlan"}}"#,
    );
    let reported = wait_for(Duration::from_secs(5), || {
        c.counter(0, "etcd_config_changes") >= 1 && c.counter(1, "etcd_config_changes") >= 1
    });
    assert!(reported, "{}", c.log(0));
    c.put(&format!("{PREFIX}/subnets/marker-2"), "x");
    assert!(wait_for(Duration::from_secs(5), || c
        .rejected(0, "bad_key")
        == 2));
    assert_eq!(c.counter(0, "etcd_config_changes"), 1, "{}", c.log(0));
    assert!(c.log(0).contains("network config changed"), "{}", c.log(0));
    c.transfer(0, 1, 1 << 20);
    c.delete(&format!("{PREFIX}/config"));
    let reported = wait_for(Duration::from_secs(5), || {
        c.counter(0, "etcd_config_changes") >= 2
    });
    assert!(reported, "{}", c.log(0));
    assert!(c.log(0).contains("network config deleted"), "{}", c.log(0));
    // Put back as the nodes joined with it: logged as such, not counted as a change.
    c.set_network("udp");
    assert!(wait_for(Duration::from_secs(5), || c
        .log(0)
        .contains("network config is back to the one this node runs")));
    c.put(&format!("{PREFIX}/subnets/marker-3"), "x");
    assert!(wait_for(Duration::from_secs(5), || c
        .rejected(0, "bad_key")
        == 3));
    assert_eq!(c.counter(0, "etcd_config_changes"), 2, "{}", c.log(0));
    assert_eq!(c.counter(0, "table_peers"), 1);
    // A writer's burst of 300 puts: every change counted, a bounded number of lines logged.
    let changed = |c: &Cluster| c.log(0).matches("network config changed").count();
    let before = changed(&c);
    c.burst(
        (0..300)
            .map(|i| {
                let len = 25 + i % 2;
                let config = format!(
                    r#"{{"Network":"10.244.0.0/16","SubnetLen":{len},"Backend":{{"Type":"udp"}}}}"#
                );
                (format!("{PREFIX}/config"), Some(config))
            })
            .collect(),
    );
    let counted = wait_for(Duration::from_secs(10), || {
        c.counter(0, "etcd_config_changes") == 302
    });
    assert!(
        counted,
        "{} changes counted",
        c.counter(0, "etcd_config_changes")
    );
    assert!(changed(&c) - before <= 32, "{}", c.log(0));
    assert!(
        c.log(0).contains("network config changes to log in 60 s"),
        "{}",
        c.log(0)
    );
    c.transfer(1, 0, 1 << 20);
    c.stop_node(1);
    c.stop_node(0);
}

#[test]
fn a_lease_of_this_node_the_config_no_longer_allows_is_deleted() {
    if skip("a_lease_of_this_node_the_config_no_longer_allows_is_deleted") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::new(1);
    c.set_network("udp");
    // Leases of a subnet length the config no longer has: one carrying this node's address,
    // one another node's.
    let mine = format!("{PREFIX}/subnets/10.244.200.0-25");
    let theirs = format!("{PREFIX}/subnets/10.244.201.0-25");
    c.put(&mine, r#"{"PublicIP":"192.0.2.1","PublicIPv6":null}"#);
    c.put(&theirs, r#"{"PublicIP":"192.0.2.9","PublicIPv6":null}"#);
    let subnet = c.start_node(0, &[]);
    assert_eq!(subnet.prefix_len(), 24, "{subnet}");
    assert!(
        c.keys(&mine).is_empty(),
        "this node's misfit lease stayed:\n{}",
        c.log(0)
    );
    assert_eq!(c.keys(&theirs).len(), 1, "another node's lease was deleted");
    let own = format!("{PREFIX}/subnets/{}-24", subnet.network());
    assert_eq!(c.keys(&own).len(), 1, "no lease of its own");
    c.stop_node(0);
}

#[test]
fn ten_nodes_started_at_once_never_share_a_subnet() {
    if skip("ten_nodes_started_at_once_never_share_a_subnet") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::new(10);
    // A network with only twelve subnets makes collisions likely if the transaction were
    // not there.
    c.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.244.0.0/20","SubnetLen":24,"SubnetMin":"10.244.1.0","SubnetMax":"10.244.12.0"}"#,
    );
    for i in 0..10 {
        c.spawn_node(i, &["--threads", "1"]);
    }
    let subnets: Vec<_> = (0..10).map(|i| c.wait_node(i)).collect();
    let distinct: std::collections::HashSet<_> = subnets.iter().collect();
    assert_eq!(distinct.len(), 10, "{subnets:?}");
    let keys = c.keys(&format!("{PREFIX}/subnets/"));
    assert_eq!(keys.len(), 10, "{keys:?}");
    for i in 0..10 {
        c.stop_node(i);
    }
}

/// etcd stops during a TCP transfer and stays away until node 0 has gone longer than its
/// lease's TTL without reaching it; the transfer completes intact, the node reconnects and
/// still holds its lease.
/// The network config changed, then deleted, while a node was away from etcd: no watch event
/// tells it, so the node compares the config when it lists again on reconnecting, and reports
/// each (log and `etcd_config_changes`) as it reports a change seen while watching.
#[test]
fn a_config_changed_while_away_from_etcd_is_reported_on_reconnecting() {
    if skip("a_config_changed_while_away_from_etcd_is_reported_on_reconnecting") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::new(2);
    c.set_network("udp");
    c.start_node(0, &[]);
    c.start_node(1, &[]);
    assert!(wait_for(Duration::from_secs(5), || c
        .counter(0, "table_peers")
        == 1));
    // etcd goes away, and comes back for a while where no node reaches it (loopback in the
    // hub), holding the same data: the config is changed there.
    let private = "http://127.0.0.1:2379";
    let away =
        |c: &mut Cluster,
         change: fn(&mut etcd_client::Client, &tokio::runtime::Runtime) -> bool| {
            let reconnects = c.counter(0, "etcd_reconnects");
            c.etcd
                .take()
                .expect("etcd runs")
                .stop(Duration::from_secs(5));
            let lost = wait_for(Duration::from_secs(15), || {
                c.written(0, "etcd_connected") == Some(0)
            });
            assert!(lost, "node 0 did not notice etcd going away:\n{}", c.log(0));
            let mut hidden = launch_etcd_at(&c.hub, c.dir.path(), private);
            let done = crate::common::with_etcd_in(&c.hub, private, change);
            assert_eq!(done, Some(true), "etcd change while the nodes are away");
            hidden.stop(Duration::from_secs(5));
            c.start_etcd();
            let back = wait_for(Duration::from_secs(30), || {
                c.counter(0, "etcd_connected") == 1 && c.counter(0, "etcd_reconnects") > reconnects
            });
            assert!(back, "node 0 did not reconnect:\n{}", c.log(0));
        };
    assert_eq!(c.counter(0, "etcd_config_changes"), 0, "{}", c.log(0));
    away(&mut c, |e, rt| {
        let config = r#"{"Network":"10.244.0.0/16","SubnetLen":26,"Backend":{"Type":"udp"}}"#;
        rt.block_on(e.put(format!("{PREFIX}/config"), config, None))
            .is_ok()
    });
    let reported = wait_for(Duration::from_secs(10), || {
        c.counter(0, "etcd_config_changes") == 1
    });
    assert!(reported, "{}", c.log(0));
    assert!(c.log(0).contains("network config changed"), "{}", c.log(0));
    // Reported once: a later list (after a junk key shows the node has read past it) does
    // not count it again.
    c.put(&format!("{PREFIX}/subnets/marker-1"), "x");
    assert!(wait_for(Duration::from_secs(5), || c
        .rejected(0, "bad_key")
        == 1));
    assert_eq!(c.counter(0, "etcd_config_changes"), 1, "{}", c.log(0));
    away(&mut c, |e, rt| {
        rt.block_on(e.delete(format!("{PREFIX}/config"), None))
            .is_ok()
    });
    let reported = wait_for(Duration::from_secs(10), || {
        c.counter(0, "etcd_config_changes") == 2
    });
    assert!(reported, "{}", c.log(0));
    assert!(c.log(0).contains("network config deleted"), "{}", c.log(0));
    // Forwarding went on with the config the nodes joined with.
    assert_eq!(c.counter(0, "table_peers"), 1);
    c.transfer(0, 1, 1 << 20);
    c.stop_node(1);
    c.stop_node(0);
}

/// An etcd with authentication on: a node with a wrong password waits and says why, one with
/// the right login (flags) joins, and `doctor` logs in with the node's environment variables
/// (`FLANNELD_ETCD_USERNAME`, `FLANNELD_ETCD_PASSWORD`) and reads the node's lease.
#[test]
fn a_node_and_doctor_log_in_to_an_etcd_with_authentication() {
    if skip("a_node_and_doctor_log_in_to_an_etcd_with_authentication") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::new(1);
    c.set_network("udp");
    let enabled = with_etcd(&c.hub, |e, rt| {
        rt.block_on(async {
            e.user_add("root", "s3cret", None).await?;
            e.user_grant_role("root", "root").await?;
            e.auth_enable().await
        })
        .map_err(|e| e.to_string())
    });
    assert!(matches!(enabled, Some(Ok(_))), "etcd auth: {enabled:?}");
    c.spawn_node(0, &["--etcd-username", "root", "--etcd-password", "wrong"]);
    let refused = wait_for(Duration::from_secs(15), || {
        let log = c.log(0);
        log.contains("refused the login") && log.contains("authentication failed")
    });
    assert!(refused, "no login failure logged:\n{}", c.log(0));
    assert!(c.subnet(0).is_none(), "joined with a wrong password");
    c.stop_node(0);
    let subnet = c.start_node(
        0,
        &[
            "--etcd-username",
            "root",
            "--etcd-password",
            "s3cret",
            "--healthz-ip",
            "127.0.0.1",
            "--healthz-port",
            "9108",
        ],
    );
    let doctor = |password: &str| {
        std::process::Command::new("ip")
            .args(["netns", "exec", c.nodes[0].name(), EXE, "doctor"])
            .args([
                "--addr",
                "127.0.0.1:9108",
                "--json",
                "--etcd-endpoints",
                ETCD,
            ])
            .env("FLANNELD_ETCD_USERNAME", "root")
            .env("FLANNELD_ETCD_PASSWORD", password)
            .output()
            .expect("ip netns exec runs")
    };
    let out = doctor("s3cret");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let own = v["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|k| k["name"] == "etcd.own_lease")
        .cloned();
    assert!(
        own.as_ref().is_some_and(
            |k| k["outcome"] == "ok" && k.to_string().contains(&subnet.network().to_string())
        ),
        "doctor did not read the node's lease: {v:#}"
    );
    // The wrong password: doctor says it could not read etcd, and passes no etcd check.
    let out = doctor("wrong");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains("authentication failed"),
        "{text}"
    );
    c.stop_node(0);
}

/// An unknown `--user` is refused before the node joins: no lease in etcd, no subnet file.
#[test]
fn an_unknown_user_is_refused_before_a_lease_is_taken() {
    if skip("an_unknown_user_is_refused_before_a_lease_is_taken") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::new(1);
    c.set_network("udp");
    c.spawn_node(0, &["--user", "no-such-user-fustian"]);
    let mut status = None;
    let exited = wait_for(Duration::from_secs(10), || {
        status = c.processes[0].as_mut().and_then(Process::exited);
        status.is_some()
    });
    assert!(exited, "{}", c.log(0));
    assert!(status.is_some_and(|s| !s.success()), "{status:?}");
    assert!(
        c.log(0).contains("no user named no-such-user-fustian"),
        "{}",
        c.log(0)
    );
    assert!(c.keys(&format!("{PREFIX}/subnets/")).is_empty());
    assert!(!c.subnet_file(0).exists());
    c.processes[0] = None;
}

/// A node that took a new lease and then fails to start gives the lease back (no subnet routed
/// to a node that is not there for 24 hours); a node whose public IP no interface holds is
/// refused before it joins.
#[test]
fn a_node_that_fails_to_start_leaves_no_lease() {
    if skip("a_node_that_fails_to_start_leaves_no_lease") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::new(1);
    c.set_network("udp");
    let wait_exit = |c: &mut Cluster| {
        let mut status = None;
        let exited = wait_for(Duration::from_secs(15), || {
            status = c.processes[0].as_mut().and_then(Process::exited);
            status.is_some()
        });
        assert!(exited, "{}", c.log(0));
        assert!(status.is_some_and(|s| !s.success()), "{status:?}");
        c.processes[0] = None;
    };
    // Fails after the join: the trace socket cannot be made.
    c.spawn_node(0, &["--trace-socket", "/proc/no-such-dir/trace.sock"]);
    wait_exit(&mut c);
    let log = c.log(0);
    assert!(log.contains("subnet lease acquired"), "{log}");
    assert!(log.contains("given back"), "{log}");
    assert!(c.keys(&format!("{PREFIX}/subnets/")).is_empty(), "{log}");
    let leases = with_etcd(&c.hub, |client, rt| {
        rt.block_on(client.leases()).map(|r| r.leases().len()).ok()
    })
    .flatten();
    assert_eq!(leases, Some(0), "{log}");
    // A public IP the host does not hold: refused before the join.
    c.spawn_node(0, &["--public-ip", "192.0.2.77"]);
    wait_exit(&mut c);
    let log = c.log(0);
    assert!(log.contains("no interface holds 192.0.2.77"), "{log}");
    assert!(!log.contains("subnet lease acquired"), "{log}");
    assert!(c.keys(&format!("{PREFIX}/subnets/")).is_empty(), "{log}");
    // Too few open files for the workers (the soft limit cannot pass the hard one): refused
    // before the join too.
    let found = std::process::Command::new("prlimit")
        .arg("--version")
        .output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "prlimit (util-linux) is needed by this test"
    );
    let mut args = vec!["--nofile=40:40".to_owned(), EXE.to_owned()];
    args.extend(c.args(0, &[]));
    let log_path = c.dir.path().join("node-0.log");
    let p = c.nodes[0]
        .start("prlimit", &args, log_path)
        .expect("start fustian under prlimit");
    c.processes[0] = Some(p);
    wait_exit(&mut c);
    let log = c.log(0);
    assert!(log.contains("RLIMIT_NOFILE is 40"), "{log}");
    assert!(!log.contains("subnet lease acquired"), "{log}");
    assert!(c.keys(&format!("{PREFIX}/subnets/")).is_empty(), "{log}");
    // A lease reused from an earlier run, then a failure after the join: the key goes back
    // to the value and etcd lease it had, and the etcd lease granted for it is revoked.
    let subnet = c.start_node(0, &[]);
    c.stop_node(0);
    let key = format!(
        "{PREFIX}/subnets/{}-{}",
        subnet.network(),
        subnet.prefix_len()
    );
    let (value, lease, _) = stored(&c, &key).expect("the earlier run's key");
    let leases = c.etcd_leases();
    c.spawn_node(0, &["--trace-socket", "/proc/no-such-dir/trace.sock"]);
    wait_exit(&mut c);
    let log = c.log(0);
    assert!(log.contains("reused=true"), "{log}");
    assert!(log.contains("back on its earlier etcd lease"), "{log}");
    let (after, after_lease, _) = stored(&c, &key).expect("the key");
    assert_eq!(after, value, "{log}");
    assert_eq!(after_lease, lease, "{log}");
    assert_eq!(c.etcd_leases(), leases, "{log}");
}

/// Returns `key`'s value, etcd lease and last modification revision, if the key exists.
fn stored(c: &Cluster, key: &str) -> Option<(Vec<u8>, i64, i64)> {
    let key = key.to_owned();
    with_etcd(&c.hub, move |client, rt| {
        rt.block_on(client.get(key, None)).ok().and_then(|r| {
            r.kvs()
                .first()
                .map(|kv| (kv.value().to_vec(), kv.lease(), kv.mod_revision()))
        })
    })
    .flatten()
}

/// A second node on the host of a running one (the same public IP, another subnet file) that
/// its TUN device or its UDP port refuses is refused before it joins: the running node's key
/// stays as it wrote it, on its etcd lease, the second node grants no etcd lease and writes
/// no subnet file.
#[test]
fn a_second_node_on_the_same_host_changes_nothing_in_etcd() {
    if skip("a_second_node_on_the_same_host_changes_nothing_in_etcd") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::new(1);
    c.set_network("udp");
    let subnet = c.start_node(0, &["--threads", "2"]);
    let key = format!(
        "{PREFIX}/subnets/{}-{}",
        subnet.network(),
        subnet.prefix_len()
    );
    let before = stored(&c, &key).expect("the first node's key");
    let leases = c.etcd_leases();
    let first = c.processes[0].as_ref().and_then(Process::pid).expect("pid");
    for (case, extra, expect) in [
        (
            "same-tun",
            &[][..],
            format!(
                "TUN device flannel0 is in use by another process (another fustian node: \
                 already served by pid {first} (fustian))"
            ),
        ),
        (
            "same-port",
            &["--tun", "flannel1"][..],
            format!("UDP 192.0.2.1:8285 is already served by pid {first} (fustian)"),
        ),
    ] {
        let subnet_file = c.dir.path().join(case).join("subnet.env");
        let mut args: Vec<String> = [
            "run",
            "--etcd-endpoints",
            ETCD,
            "--public-ip",
            &node_ip(0),
            "--subnet-file",
            &subnet_file.to_string_lossy(),
            "--threads",
            "2",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let log = c.dir.path().join(format!("{case}.log"));
        let mut second = c.nodes[0].start(EXE, &args, log).expect("start fustian");
        let exited = wait_for(Duration::from_secs(20), || second.exited().is_some());
        let text = second.log();
        assert!(exited, "{case}: the second node is still running:\n{text}");
        let status = second.exited().expect("exited");
        assert!(!status.success(), "{case}: {status}:\n{text}");
        assert!(text.contains(&expect), "{case}: no {expect:?} in:\n{text}");
        assert!(!text.contains("subnet lease acquired"), "{case}:\n{text}");
        assert!(!subnet_file.exists(), "{case}: a subnet file was written");
        let after = stored(&c, &key);
        assert_eq!(
            after.as_ref(),
            Some(&before),
            "{case}: the first node's key changed:\n{text}\nfirst node:\n{}",
            c.log(0)
        );
        assert_eq!(
            c.etcd_leases(),
            leases,
            "{case}: an etcd lease was granted:\n{text}"
        );
    }
    assert!(
        c.processes[0].as_mut().and_then(Process::exited).is_none(),
        "{}",
        c.log(0)
    );
    let log = c.log(0);
    assert!(!log.contains("another etcd lease"), "{log}");
    assert_eq!(c.counter(0, "etcd_own_lease_restored"), 0, "{log}");
    c.stop_node(0);
}

#[test]
fn etcd_down_past_the_lease_ttl_during_a_transfer() {
    if skip("etcd_down_past_the_lease_ttl_during_a_transfer") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::new(2);
    c.set_network("udp");
    // A short lease, renewed every second while etcd is up (the TTL is shorter than the renew
    // margin), so the outage outlasts it: whatever etcd makes of the lease meanwhile (kept, or
    // expired and granted again), the node must hold it afterwards.
    const TTL: Duration = Duration::from_secs(20);
    let ttl_secs = TTL.as_secs().to_string();
    let ttl = ["--subnet-lease-ttl", ttl_secs.as_str()];
    // Node 0 serves /readyz, so it looks at its readiness (the lease's expiry among it).
    let http = ["--healthz-ip", "192.0.2.1", "--healthz-port", "8471"];
    let s0 = c.start_node(0, &[&ttl[..], &http[..]].concat());
    c.start_node(1, &ttl);
    assert!(wait_for(Duration::from_secs(5), || c
        .counter(0, "table_peers")
        == 1));
    let stop = Arc::new(AtomicBool::new(false));
    let addr = c.pod_addr(1, 5201);
    let mut etcd = c.etcd.take().expect("etcd runs");
    let (r, restarted, seen) = std::thread::scope(|s| {
        let transfer = s.spawn(|| {
            tcp_bulk(
                &c.pods[0],
                &c.pods[1],
                addr,
                Amount::Duration(Duration::from_secs(40)),
                true,
                &stop,
            )
        });
        // The transfer is under way (node 1 has received a few MiB of it), then etcd goes
        // away.
        let flowing = wait_for(Duration::from_secs(10), || {
            c.counter(1, "rx_bytes") > 4 << 20
        });
        etcd.stop(Duration::from_secs(5));
        // etcd stays away until node 0's own counters show it went past the TTL without etcd:
        // it saw the connection go (`etcd_connected` 0), and a later attempt to reach etcd
        // failed (a new `etcd_reconnects`) more than the TTL after that. The extra second
        // covers the stats file's period, so the failed attempt itself lies past the TTL.
        let lost = wait_for(Duration::from_secs(15), || {
            c.written(0, "etcd_connected") == Some(0)
        });
        let since = Instant::now();
        let mut failures = c.counter(0, "etcd_reconnects");
        // Reconnect backoff is at most 10 s, and one attempt at most 8 s of timeouts.
        let outlasted = lost
            && wait_for(TTL + Duration::from_secs(40), || {
                let now = c.counter(0, "etcd_reconnects");
                let failed_again = now > failures;
                failures = now;
                failed_again && since.elapsed() > TTL + Duration::from_secs(1)
            });
        let outage = since.elapsed();
        let restarted = launch_etcd(&c.hub, c.dir.path());
        (
            transfer.join().expect("transfer thread"),
            restarted,
            (flowing, lost, outlasted, outage),
        )
    });
    c.etcd = Some(restarted);
    let (flowing, lost, outlasted, outage) = seen;
    eprintln!("etcd was away for {outage:?} after node 0 lost it (lease TTL {TTL:?})");
    assert!(flowing, "the transfer did not start:\n{}", c.log(1));
    assert!(lost, "node 0 did not notice etcd going away:\n{}", c.log(0));
    assert!(
        outlasted,
        "node 0 made no failed attempt past the TTL ({outage:?} without etcd):\n{}",
        c.log(0)
    );
    let r = r.expect("transfer runs");
    assert!(r.intact() && r.sent > 0, "{r:?}");
    let back = wait_for(Duration::from_secs(20), || {
        c.counter(0, "etcd_connected") == 1 && c.counter(0, "etcd_reconnects") > 0
    });
    assert!(back, "node 0 did not reconnect:\n{}", c.log(0));
    let key = format!("{PREFIX}/subnets/{}-{}", s0.network(), s0.prefix_len());
    let held = wait_for(Duration::from_secs(10), || {
        c.keys(&key).iter().any(|(_, v)| v.contains("192.0.2.1"))
    });
    assert!(held, "the lease of node 0 is gone:\n{}", c.log(0));
    // Past the TTL without etcd the node said once that it is not ready, not once a second
    // while the lease's age counted up.
    let log = c.log(0);
    let said = log.matches("not ready: the subnet lease expired").count();
    assert_eq!(said, 1, "{log}");
    c.stop_node(0);
    c.stop_node(1);
}

/// Runs 4 MiB transfers from pod `from` to pod `to` one after the other until `done` is set,
/// each checked intact, and returns how many completed.
fn transfers_until(c: &Cluster, from: usize, to: usize, done: &AtomicBool) -> usize {
    let stop = Arc::new(AtomicBool::new(false));
    let addr = c.pod_addr(to, 5201);
    let mut n = 0;
    while !done.load(std::sync::atomic::Ordering::Relaxed) || n == 0 {
        let r = tcp_bulk(
            &c.pods[from],
            &c.pods[to],
            addr,
            Amount::Bytes(4 << 20),
            true,
            &stop,
        )
        .expect("bulk transfer runs");
        assert!(r.intact(), "{from}->{to} transfer {n}: {r:?}");
        n += 1;
    }
    n
}

/// Every lease flanneld's allocator could not have handed out, or naming an address no peer can
/// have, written by hand while the two nodes carry transfers both ways: each is counted under
/// its reason and left out, the transfers complete, the good peer stays. A node restarted with
/// all of them (the whole network's `10.244.0.0-16` among them) in etcd comes up. A node's own
/// lease overwritten is written back.
#[test]
fn bad_leases_are_counted_and_ignored_during_transfers() {
    if skip("bad_leases_are_counted_and_ignored_during_transfers") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::new(2);
    c.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.244.0.0/16","SubnetMax":"10.244.100.0","Backend":{"Type":"udp"}}"#,
    );
    let s0 = c.start_node(0, &[]);
    let s1 = c.start_node(1, &[]);
    for i in 0..2 {
        assert!(
            wait_for(Duration::from_secs(5), || c.counter(i, "table_peers") == 1),
            "node {i} does not see its peer:\n{}",
            c.log(i)
        );
    }
    // Subnets in range that no node holds, for the leases judged by their PublicIP.
    let mut free = (1..=100u8).map(|b| format!("10.244.{b}.0-24")).filter(|k| {
        ![s0, s1]
            .iter()
            .any(|s| *k == format!("{}-{}", s.network(), s.prefix_len()))
    });
    let b = format!("{}-{}", s1.network(), s1.prefix_len());
    let inner = format!(
        "{}-25",
        std::net::Ipv4Addr::from(u32::from(s1.network()) + 128)
    );
    let other = r#"{"PublicIP":"192.0.2.9","PublicIPv6":null}"#;
    let looping = free.next().expect("free");
    let bad: Vec<(String, String, &str)> = vec![
        (format!("{b}&anything"), other.into(), "bad_key"),
        (format!("{b}&fd00::-64"), other.into(), "overlap"),
        (inner, other.into(), "subnet_len"),
        ("198.51.100.0-24".into(), other.into(), "outside_network"),
        ("10.244.0.0-16".into(), other.into(), "subnet_len"),
        ("10.244.200.0-24".into(), other.into(), "subnet_range"),
        (free.next().expect("free"), "{".into(), "bad_value"),
        (
            free.next().expect("free"),
            r#"{"PublicIP":"127.0.0.1","PublicIPv6":null}"#.into(),
            "public_ip_loopback",
        ),
        (
            free.next().expect("free"),
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":null}"#.into(),
            "public_ip_unspecified",
        ),
        (
            free.next().expect("free"),
            r#"{"PublicIP":"224.0.0.1","PublicIPv6":null}"#.into(),
            "public_ip_multicast",
        ),
        (
            free.next().expect("free"),
            r#"{"PublicIP":"255.255.255.255","PublicIPv6":null}"#.into(),
            "public_ip_broadcast",
        ),
        (
            free.next().expect("free"),
            r#"{"PublicIP":"192.0.2.1","PublicIPv6":null}"#.into(),
            "public_ip_own",
        ),
        // Inside its own pod subnet: datagrams to it would come back through the TUN device
        // and be encapsulated again, a loop.
        (
            looping.clone(),
            format!(
                r#"{{"PublicIP":"{}","PublicIPv6":null}}"#,
                looping.replace(".0-24", ".1")
            ),
            "public_ip_in_network",
        ),
        (
            free.next().expect("free"),
            r#"{"PublicIP":"240.0.0.1","PublicIPv6":null}"#.into(),
            "public_ip_reserved",
        ),
        (
            free.next().expect("free"),
            r#"{"PublicIP":"192.0.2.9","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"}}"#.into(),
            "bad_value",
        ),
    ];
    let done = AtomicBool::new(false);
    let expect = |reason: &str| bad.iter().filter(|(_, _, r)| *r == reason).count() as u64;
    let (n01, n10) = std::thread::scope(|s| {
        let forward = s.spawn(|| transfers_until(&c, 0, 1, &done));
        let backward = s.spawn(|| transfers_until(&c, 1, 0, &done));
        // A failed assertion below ends the transfers too, so the scope can end and report it.
        let _stop = crate::common::SetOnDrop(&done);
        let mut written: Vec<&str> = Vec::new();
        for (key, value, reason) in &bad {
            c.put(&format!("{PREFIX}/subnets/{key}"), value);
            written.push(reason);
            let want = written.iter().filter(|r| *r == reason).count() as u64;
            let counted = wait_for(Duration::from_secs(5), || c.rejected(0, reason) == want);
            assert!(
                counted,
                "{key}: {reason} is {} on node 0, not {want}:\n{}",
                c.rejected(0, reason),
                c.log(0)
            );
            assert_eq!(c.counter(0, "table_peers"), 1, "after {key}");
        }
        // A lease of another backend: left out of the table, counted, logged once by key.
        let vxlan_key = format!("{PREFIX}/subnets/{}", free.next().expect("free"));
        c.put(
            &vxlan_key,
            r#"{"PublicIP":"192.0.2.9","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:09"}}"#,
        );
        assert!(
            wait_for(Duration::from_secs(5), || c
                .counter(0, "etcd_leases_ignored")
                == 1),
            "{}",
            c.log(0)
        );
        assert_eq!(c.counter(0, "table_peers"), 1);
        let logged = |c: &Cluster| {
            c.log(0)
                .matches(r#"lease ignored: backend "vxlan", not udp"#)
                .count()
        };
        assert!(
            wait_for(Duration::from_secs(2), || logged(&c) == 1),
            "{}",
            c.log(0)
        );
        // Node 1's own lease overwritten with another address: written back.
        let own = format!("{PREFIX}/subnets/{b}");
        c.put(&own, other);
        let restored = wait_for(Duration::from_secs(5), || {
            c.counter(1, "etcd_own_lease_restored") >= 1
                && c.value(&own)
                    .is_some_and(|v| v.contains(r#""PublicIP":"192.0.2.2""#))
        });
        assert!(restored, "own lease not written back:\n{}", c.log(1));
        // The suffixed key deleted: node 1 stays, it was never replaced.
        c.delete(&format!("{PREFIX}/subnets/{b}&anything"));
        assert!(wait_for(Duration::from_secs(5), || c
            .rejected(0, "bad_key")
            == 0));
        // Node 1's own key deleted: written again at once, so created after the `&fd00::-64`
        // squatter, which still takes nothing from it (a key of another form never wins).
        let restored = c.counter(1, "etcd_own_lease_restored");
        c.delete(&own);
        let rewritten = wait_for(Duration::from_secs(5), || {
            c.counter(1, "etcd_own_lease_restored") > restored
                && c.value(&own)
                    .is_some_and(|v| v.contains(r#""PublicIP":"192.0.2.2""#))
        });
        assert!(rewritten, "own lease not written again:\n{}", c.log(1));
        // A junk key put after the write-back shows when node 0 has read that far.
        c.put(&format!("{PREFIX}/subnets/marker-squat"), "x");
        assert!(wait_for(Duration::from_secs(5), || c
            .rejected(0, "bad_key")
            == 1));
        assert_eq!(c.rejected(0, "overlap"), expect("overlap"), "{}", c.log(0));
        assert!(
            !c.log(0)
                .contains(&format!("already leased at {PREFIX}/subnets/{b}&fd00::-64")),
            "{}",
            c.log(0)
        );
        assert_eq!(c.counter(0, "table_peers"), 1);
        c.delete(&format!("{PREFIX}/subnets/marker-squat"));
        assert!(wait_for(Duration::from_secs(5), || c
            .rejected(0, "bad_key")
            == 0));
        // The ignored lease was logged once, not again at each table built since.
        assert_eq!(logged(&c), 1, "{}", c.log(0));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (
            forward.join().expect("forward transfers"),
            backward.join().expect("backward transfers"),
        )
    });
    assert!(n01 >= 1 && n10 >= 1, "{n01} {n10}");
    assert_eq!(c.counter(0, "table_peers"), 1);
    // Each rejection is logged once, not at every list or event.
    let log = c.log(0);
    assert_eq!(log.matches("PublicIP 127.0.0.1").count(), 1, "{log}");
    // A restart with every bad lease (the whole network's among them) still in etcd, and
    // junk under the prefix larger in all than the etcd client's 4 MiB message: the list is
    // read in pages, the junk kept only as far as it takes to refuse it.
    c.stop_node(0);
    let junk = "x".repeat(1_200_000);
    for i in 0..4 {
        c.put(&format!("{PREFIX}/subnets/junk-{i}"), &junk);
    }
    assert_eq!(c.start_node(0, &[]), s0, "after a restart:\n{}", c.log(0));
    assert!(
        wait_for(Duration::from_secs(5), || c.counter(0, "table_peers") == 1
            && c.rejected(0, "subnet_len") == expect("subnet_len")
            && c.rejected(0, "public_ip_in_network") == 1
            && c.rejected(0, "bad_key") == 4),
        "after a restart:\n{}",
        c.log(0)
    );
    c.transfer(0, 1, 4 << 20);
    c.transfer(1, 0, 4 << 20);
    c.stop_node(1);
    c.stop_node(0);
}

/// A node started before etcd waits for it, then for the network config, saying why on
/// `/readyz`, and comes up when both are there; SIGTERM during the wait ends it cleanly.
#[test]
fn a_node_started_before_etcd_waits_for_it_and_for_the_config() {
    if skip("a_node_started_before_etcd_waits_for_it_and_for_the_config") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::without_etcd(2);
    let addr: SocketAddr = "192.0.2.1:8471".parse().expect("literal");
    c.spawn_node(0, &["--healthz-ip", "192.0.2.1", "--healthz-port", "8471"]);
    let readyz = |c: &Cluster| {
        c.nodes[0]
            .run(move || fustian::http::get(addr, "/readyz"))
            .expect("enter node 0")
    };
    let waiting_etcd = wait_for(Duration::from_secs(10), || {
        readyz(&c)
            .is_err_and(|e| e.contains("503") && e.contains(&format!("waiting for etcd at {ETCD}")))
    });
    assert!(waiting_etcd, "{:?}\n{}", readyz(&c), c.log(0));
    // Node 1 waits too, and stops promptly and cleanly when asked.
    c.spawn_node(1, &[]);
    assert!(wait_for(Duration::from_secs(10), || c
        .log(1)
        .contains("waiting for etcd at")));
    let asked = Instant::now();
    c.stop_node(1);
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    c.start_etcd();
    let key = format!("{PREFIX}/config");
    let waiting_config = wait_for(Duration::from_secs(10), || {
        readyz(&c).is_err_and(|e| e.contains(&format!("waiting for {key}")))
    });
    assert!(waiting_config, "{:?}\n{}", readyz(&c), c.log(0));
    c.set_network("udp");
    c.wait_node(0);
    assert!(
        wait_for(Duration::from_secs(5), || readyz(&c).as_deref()
            == Ok("fustian is ready\n")),
        "{:?}",
        readyz(&c)
    );
    // Each wait is logged once, however long it lasts.
    let log = c.log(0);
    assert_eq!(log.matches("waiting for etcd at").count(), 1, "{log}");
    assert_eq!(
        log.matches(&format!("waiting for {key}")).count(),
        1,
        "{log}"
    );
    c.stop_node(0);
}

/// flanneld's default endpoint list has a dead member (4001): a node comes up with the dead
/// endpoint first or last, and the two reach each other.
#[test]
fn a_dead_endpoint_first_or_last_does_not_stop_a_node() {
    if skip("a_dead_endpoint_first_or_last_does_not_stop_a_node") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::new(2);
    c.set_network("vxlan");
    let dead = "http://192.0.2.254:4001";
    c.endpoints[0] = format!("{dead},{ETCD}");
    c.endpoints[1] = format!("{ETCD},{dead}");
    c.start_node(0, &[]);
    c.start_node(1, &[]);
    for i in 0..2 {
        assert!(
            wait_for(Duration::from_secs(5), || c.counter(i, "table_peers") == 1
                && c.counter(i, "etcd_connected") == 1),
            "node {i}:\n{}",
            c.log(i)
        );
    }
    c.transfer(0, 1, 4 << 20);
    c.transfer(1, 0, 4 << 20);
    c.stop_node(0);
    c.stop_node(1);
}

/// A TCP relay in the hub from `listen` to etcd, standing for an etcd member that can go away:
/// dropping it closes the listener and every relayed connection.
struct Relay {
    stop: Arc<AtomicBool>,
    streams: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(hub: &Netns, listen: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop2, streams2) = (Arc::clone(&stop), Arc::clone(&streams));
        let thread = hub
            .spawn(move || {
                let listener = std::net::TcpListener::bind(listen).expect("relay bind");
                listener.set_nonblocking(true).expect("nonblocking");
                while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok((client, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    let _ = client.set_nonblocking(false);
                    let Ok(server) = std::net::TcpStream::connect("192.0.2.254:2379") else {
                        continue;
                    };
                    let mut list = streams2.lock().expect("relay list");
                    for (mut from, mut to) in [
                        (
                            client.try_clone().expect("clone"),
                            server.try_clone().expect("clone"),
                        ),
                        (
                            server.try_clone().expect("clone"),
                            client.try_clone().expect("clone"),
                        ),
                    ] {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(std::net::Shutdown::Both);
                        });
                    }
                    list.push(client);
                    list.push(server);
                }
            })
            .expect("enter the hub");
        Self {
            stop,
            streams,
            thread: Some(thread),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Ok(list) = self.streams.lock() {
            for s in list.iter() {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// The endpoint a node uses goes away: the node moves on to the next one, keeps its lease and
/// goes on following the leases.
#[test]
fn a_node_survives_its_etcd_endpoint_going_away() {
    if skip("a_node_survives_its_etcd_endpoint_going_away") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::new(1);
    c.set_network("udp");
    let relay = Relay::start(&c.hub, "192.0.2.254:2381");
    c.endpoints[0] = format!("http://192.0.2.254:2381,{ETCD}");
    let own = c.start_node(0, &[]);
    // A subnet other than the one this node drew at random.
    let theirs = if own.network().octets()[2] == 250 {
        251
    } else {
        250
    };
    assert!(wait_for(Duration::from_secs(5), || c
        .counter(0, "etcd_connected")
        == 1));
    drop(relay);
    let moved = wait_for(Duration::from_secs(20), || {
        c.counter(0, "etcd_reconnects") >= 1 && c.counter(0, "etcd_connected") == 1
    });
    assert!(moved, "node 0 did not move on:\n{}", c.log(0));
    c.put(
        &format!("{PREFIX}/subnets/10.244.{theirs}.0-24"),
        r#"{"PublicIP":"192.0.2.2","PublicIPv6":null}"#,
    );
    assert!(
        wait_for(Duration::from_secs(5), || c.counter(0, "table_peers") == 1),
        "{}",
        c.log(0)
    );
    c.stop_node(0);
}

/// A network config written with the key spellings Go's decoder accepts (lower case, a
/// Kelvin sign for the k of `Backend`, a later duplicate that wins) brings nodes up with its
/// VNI, port and MTU, as flanneld would.
#[test]
fn a_config_in_any_key_case_sets_vni_port_mtu_and_nftables() {
    if skip("a_config_in_any_key_case_sets_vni_port_mtu_and_nftables") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::new(2);
    c.put(
        &format!("{PREFIX}/config"),
        "{\"network\":\"10.244.0.0/16\",\"enablenftables\":true,\"BAC\u{212A}END\":{\"type\":\
         \"VXLAN\",\"VNI\":7,\"vni\":42,\"port\":4789,\"mtu\":1400}}",
    );
    // EnableNFTables: node 0's --ip-masq rules go into flanneld's nftables table; node 1
    // asked for no rules and writes none.
    c.start_node(0, &["--ip-masq"]);
    c.start_node(1, &[]);
    for i in 0..2 {
        let seen = wait_for(Duration::from_secs(5), || c.counter(i, "table_peers") == 1);
        assert!(seen, "node {i} does not see its peer:\n{}", c.log(i));
        let env = std::fs::read_to_string(c.subnet_file(i)).expect("subnet file");
        assert!(env.contains("FLANNEL_MTU=1350"), "{env}");
        // The node holds UDP 4789 on its address, and not the default 8472.
        let addr = node_ip(i);
        let (busy, free) = c.nodes[i]
            .run(move || {
                (
                    std::net::UdpSocket::bind(format!("{addr}:4789")).is_err(),
                    std::net::UdpSocket::bind(format!("{addr}:8472")).is_ok(),
                )
            })
            .expect("run in the node namespace");
        assert!(
            busy && free,
            "node {i}: 4789 bound {busy}, 8472 free {free}"
        );
    }
    let leases = c.keys(&format!("{PREFIX}/subnets/"));
    assert_eq!(leases.len(), 2, "{leases:?}");
    for (key, value) in &leases {
        assert!(
            value.contains(r#""BackendData":{"VNI":42,"#),
            "{key}: {value}"
        );
    }
    let (ok, table) = nft(&c.nodes[0], &["list", "table", "ip", "flannel-ipv4"]);
    assert!(
        ok && table.contains("chain postrtg") && table.contains("chain forward"),
        "node 0's nftables table:\n{table}\n{}",
        c.log(0)
    );
    let (_, nat) = iptables(&c.nodes[0], &["-t", "nat", "-S"]);
    assert!(!nat.contains("FLANNEL"), "{nat}");
    let (ok, ruleset) = nft(&c.nodes[1], &["list", "ruleset"]);
    assert!(ok && !ruleset.contains("flannel"), "node 1: {ruleset}");
    c.transfer(0, 1, 1 << 20);
    c.transfer(1, 0, 1 << 20);
    c.stop_node(0);
    c.stop_node(1);
    let (ok, ruleset) = nft(&c.nodes[0], &["list", "ruleset"]);
    assert!(
        ok && !ruleset.contains("flannel"),
        "node 0 after its stop: {ruleset}"
    );
}

/// The IPv6 underlay address of node `i` on the hub's bridge.
fn node_ip6(i: usize) -> String {
    format!("2001:db8::{}", i + 1)
}

/// Gives node `i`'s underlay link its IPv6 address (usable at once: no duplicate address
/// detection).
fn add_underlay6(c: &Cluster, i: usize) {
    let node = &c.nodes[i];
    for conf in ["all", "default", "ul0"] {
        node.sysctl(&format!("net/ipv6/conf/{conf}/accept_dad"), "0")
            .expect("sysctl");
    }
    node.ip(&["link", "set", "ul0", "down"]).expect("down");
    node.ip(&["link", "set", "ul0", "up"]).expect("up");
    node.ip(&[
        "addr",
        "add",
        &format!("{}/64", node_ip6(i)),
        "dev",
        "ul0",
        "nodad",
    ])
    .expect("addr");
    node.sysctl("net/ipv6/conf/all/forwarding", "1")
        .expect("forwarding");
}

/// Addresses node `i`'s pod link in its IPv6 subnet: gateway `::1` on the node, pod `::2`
/// with its default route through it.
fn add_pod6(c: &Cluster, i: usize, subnet: ipnet::Ipv6Net, gateway4: std::net::Ipv4Addr) {
    let (node, pod) = (&c.nodes[i], &c.pods[i]);
    for (ns, dev) in [(node, "pod0"), (pod, "eth0")] {
        for conf in ["all", "default", dev] {
            ns.sysctl(&format!("net/ipv6/conf/{conf}/accept_dad"), "0")
                .expect("sysctl");
        }
        // Up again, so the link-local address comes back without detection.
        ns.ip(&["link", "set", dev, "down"]).expect("down");
        ns.ip(&["link", "set", dev, "up"]).expect("up");
    }
    // The pod's IPv4 default route went with its link.
    pod.ip(&["route", "replace", "default", "via", &gateway4.to_string()])
        .expect("route");
    let host = |n: u128| std::net::Ipv6Addr::from(u128::from(subnet.network()) + n);
    node.ip(&[
        "addr",
        "add",
        &format!("{}/64", host(1)),
        "dev",
        "pod0",
        "nodad",
    ])
    .expect("gateway6");
    pod.ip(&[
        "addr",
        "add",
        &format!("{}/64", host(2)),
        "dev",
        "eth0",
        "nodad",
    ])
    .expect("pod6");
    pod.ip(&[
        "-6",
        "route",
        "replace",
        "default",
        "via",
        &host(1).to_string(),
    ])
    .expect("route6");
}

#[test]
fn a_dual_stack_network_carries_both_families_with_a_flanneld_lease() {
    if skip("a_dual_stack_network_carries_both_families_with_a_flanneld_lease") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::new(2);
    c.put(
        &format!("{PREFIX}/config"),
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","EnableNFTables":true,"Backend":{"Type":"vxlan"}}"#,
    );
    // A dual-stack flanneld node (not running; its lease is all the nodes see), exactly as
    // flanneld writes it.
    let flanneld_key = format!("{PREFIX}/subnets/10.244.3.0-24&fd00:10:244:3::-64");
    c.put(
        &flanneld_key,
        r#"{"PublicIP":"192.0.2.3","PublicIPv6":"2001:db8::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:03"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:06:03"}}"#,
    );
    // Node 0's lease from before the network was dual stack: it goes when node 0 joins.
    let stale = format!("{PREFIX}/subnets/10.244.5.0-24");
    c.put(&stale, r#"{"PublicIP":"192.0.2.1","PublicIPv6":null}"#);
    // Without an IPv6 underlay address (none given, none global on its interface) a node of
    // this network stops, naming the flag.
    c.spawn_node(1, &[]);
    let exited = wait_for(Duration::from_secs(15), || {
        c.processes[1].as_mut().and_then(Process::exited).is_some()
    });
    assert!(exited, "node 1 runs without --public-ipv6:\n{}", c.log(1));
    assert!(c.log(1).contains("--public-ipv6"), "{}", c.log(1));
    c.processes[1] = None;
    for i in 0..2 {
        add_underlay6(&c, i);
    }

    let http = ["--healthz-ip", "192.0.2.1", "--healthz-port", "8471"];
    let mut subnets = Vec::new();
    for i in 0..2 {
        let ip6 = node_ip6(i);
        // Node 1 as flanneld runs: its interface's global IPv6 address is its PublicIPv6.
        let mut extra = if i == 0 {
            vec!["--public-ipv6", ip6.as_str()]
        } else {
            Vec::new()
        };
        if i == 0 {
            // With EnableNFTables, both families' tables.
            extra.extend(http);
            extra.push("--ip-masq");
        }
        let v4 = c.start_node(i, &extra);
        let v6 = fustian::control::etcd::previous_subnet6(&c.subnet_file(i))
            .unwrap_or_else(|| panic!("node {i}: no FLANNEL_IPV6_SUBNET"));
        add_pod6(
            &c,
            i,
            v6,
            std::net::Ipv4Addr::from(u32::from(v4.network()) + 1),
        );
        subnets.push((v4, v6));
    }
    assert_eq!(c.value(&stale), None, "{:?}", c.keys(PREFIX));
    let (a, b) = (subnets[0], subnets[1]);
    assert!(a.0 != b.0 && a.1 != b.1, "{subnets:?}");
    for (i, (v4, v6)) in subnets.iter().enumerate() {
        assert!(v4.to_string() != "10.244.3.0/24" && v6.to_string() != "fd00:10:244:3::/64");
        assert_eq!(v6.prefix_len(), 64);
        let env = std::fs::read_to_string(c.subnet_file(i)).expect("subnet file");
        let first6 = std::net::Ipv6Addr::from(u128::from(v6.network()) + 1);
        for line in [
            "FLANNEL_NETWORK=10.244.0.0/16".to_owned(),
            "FLANNEL_IPV6_NETWORK=fd00:10:244::/56".to_owned(),
            format!("FLANNEL_IPV6_SUBNET={first6}/64"),
        ] {
            assert!(env.lines().any(|l| l == line), "{line} in\n{env}");
        }
        // One key for both subnets; flanneld's value with both VTEPs.
        let key = format!("{PREFIX}/subnets/{}-24&{}-64", v4.network(), v6.network());
        let value = c
            .value(&key)
            .unwrap_or_else(|| panic!("no {key} in {:?}", c.keys(PREFIX)));
        let lease = fustian::control::lease::LeaseValue::parse(value.as_bytes()).expect("lease");
        assert_eq!(lease.to_json(), value);
        assert_eq!(lease.public_ip.to_string(), node_ip(i));
        assert_eq!(
            lease.public_ipv6.map(|ip| ip.to_string()),
            Some(node_ip6(i))
        );
        assert_eq!((lease.vni, lease.vni6), (Some(1), Some(1)));
        assert!(
            lease.vtep_mac.is_some() && lease.vtep_mac6 == lease.vtep_mac,
            "{value}"
        );
    }
    // Every other lease is two peers: IPv4 over IPv4, IPv6 over IPv6.
    let peer_line = |subnet: &str, endpoint: &str| {
        format!("peer_tx_bytes{{subnet=\"{subnet}\",endpoint=\"{endpoint}\"}}")
    };
    for i in 0..2 {
        let other = 1 - i;
        let (v4, v6) = subnets[other];
        let want = [
            peer_line("10.244.3.0/24", "192.0.2.3:8472"),
            peer_line("fd00:10:244:3::/64", "[2001:db8::3]:8472"),
            peer_line(&v4.to_string(), &format!("{}:8472", node_ip(other))),
            peer_line(&v6.to_string(), &format!("[{}]:8472", node_ip6(other))),
        ];
        let seen = wait_for(Duration::from_secs(5), || {
            c.counter(i, "table_peers") == 4 && want.iter().all(|w| c.written(i, w).is_some())
        });
        assert!(
            seen,
            "node {i}: peers {}, want {want:?}:\n{}",
            c.counter(i, "table_peers"),
            std::fs::read_to_string(c.stats_path(i)).unwrap_or_default()
        );
    }
    // The IPv6 peer of the flanneld lease has its IPv6 VTEP's MAC.
    let addr: SocketAddr = "192.0.2.1:8471".parse().expect("literal");
    let status = c.nodes[0]
        .run(move || fustian::http::get(addr, "/status"))
        .expect("enter node 0")
        .expect("status");
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    let peers = status["table"]["peers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        peers.iter().any(|p| p["subnet"] == "fd00:10:244:3::/64"
            && p["endpoint"] == "[2001:db8::3]:8472"
            && p["vtep_mac"] == "0e:00:00:00:06:03"),
        "{peers:?}"
    );
    // TCP both ways over both families.
    let pod6 = |i: usize, port: u16| {
        SocketAddr::new(
            std::net::Ipv6Addr::from(u128::from(subnets[i].1.network()) + 2).into(),
            port,
        )
    };
    for (from, to) in [(0, 1), (1, 0)] {
        c.transfer(from, to, 4 << 20);
        let stop = Arc::new(AtomicBool::new(false));
        let r = tcp_bulk(
            &c.pods[from],
            &c.pods[to],
            pod6(to, 5202),
            Amount::Bytes(4 << 20),
            true,
            &stop,
        )
        .expect("bulk transfer runs");
        assert!(r.intact(), "IPv6 {from}->{to}: {r:?}");
    }
    // The IPv6 traffic went over the IPv6 underlay to the other node.
    let v6_peer = peer_line(
        &subnets[1].1.to_string(),
        &format!("[{}]:8472", node_ip6(1)),
    );
    let sent = wait_for(Duration::from_secs(3), || {
        c.written(0, &v6_peer).is_some_and(|b| b > 4 << 20)
    });
    assert!(sent, "{v6_peer}: {:?}", c.written(0, &v6_peer));
    // doctor, reading etcd, expects exactly the four peers node 0 made of the two other
    // leases: each an IPv4 peer and an IPv6 one over the IPv6 underlay.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", c.nodes[0].name(), EXE, "doctor"])
        .args([
            "--addr",
            "192.0.2.1:8471",
            "--json",
            "--etcd-endpoints",
            ETCD,
        ])
        .output()
        .expect("ip netns exec runs");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let table = report["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["name"] == "etcd.table"))
        .cloned();
    assert!(
        table.as_ref().is_some_and(|t| t["outcome"] == "ok"
            && t["detail"] == "the table holds exactly the 4 peers of the leases in etcd"),
        "{report:#}"
    );
    // Node 0 masquerades each family in its own nftables table, with that family's subnet.
    for (family, table, subnet, outside) in [
        (
            "ip",
            "flannel-ipv4",
            subnets[0].0.to_string(),
            "224.0.0.0/4",
        ),
        ("ip6", "flannel-ipv6", subnets[0].1.to_string(), "ff00::/8"),
    ] {
        let (ok, listing) = nft(&c.nodes[0], &["list", "table", family, table]);
        let net = if family == "ip" {
            "10.244.0.0/16"
        } else {
            "fd00:10:244::/56"
        };
        for want in [
            format!("{family} saddr {subnet} {family} daddr {net} return"),
            format!("{family} saddr {net} {family} daddr != {outside} masquerade"),
            format!("{family} daddr {net} accept"),
        ] {
            assert!(
                ok && listing.contains(&want),
                "{want} in {family} {table}:\n{listing}"
            );
        }
    }
    // Restarted after its lease went away, node 1 asks for both subnets of its subnet file.
    c.stop_node(1);
    let key1 = format!(
        "{PREFIX}/subnets/{}-24&{}-64",
        subnets[1].0.network(),
        subnets[1].1.network()
    );
    c.delete(&key1);
    let ip6 = node_ip6(1);
    let again = c.start_node(1, &["--public-ipv6", ip6.as_str()]);
    assert_eq!(again, subnets[1].0);
    assert_eq!(
        fustian::control::etcd::previous_subnet6(&c.subnet_file(1)),
        Some(subnets[1].1)
    );
    assert!(c.value(&key1).is_some(), "{:?}", c.keys(PREFIX));
    // Restarted without its subnet file, it finds its lease by its public IP.
    c.stop_node(1);
    std::fs::remove_file(c.subnet_file(1)).expect("remove the subnet file");
    let again = c.start_node(1, &["--public-ipv6", ip6.as_str()]);
    assert_eq!(again, subnets[1].0);
    assert_eq!(
        fustian::control::etcd::previous_subnet6(&c.subnet_file(1)),
        Some(subnets[1].1)
    );
    let leases = c.keys(&format!("{PREFIX}/subnets/"));
    assert_eq!(leases.len(), 3, "{leases:?}");
    for i in 0..2 {
        c.stop_node(i);
    }
    let (ok, ruleset) = nft(&c.nodes[0], &["list", "ruleset"]);
    assert!(
        ok && !ruleset.contains("flannel"),
        "node 0 after its stop: {ruleset}"
    );
}

/// Runs `openssl args` in `dir`, failing the test with its output when it fails.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is missing: apt-get install openssl (the TLS etcd test needs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An `https://` etcd whose certificate chains to a CA the node has only among the system's
/// trusted roots (`SSL_CERT_FILE`), with no `--etcd-cafile`, as flanneld trusts it: the node
/// takes a lease. Without that CA it is refused (the server's certificate is checked) and
/// waits, joining nothing.
#[test]
fn a_node_trusts_an_https_etcd_through_the_system_roots() {
    if skip("a_node_trusts_an_https_etcd_through_the_system_roots") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::without_etcd(1);
    let dir = c.dir.path().to_path_buf();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=fustian test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(&dir, &ca);
    let mut csr = vec!["req", "-subj", "/CN=etcd"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(&dir, &csr);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:192.0.2.254\n").expect("ext");
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    c.etcd = Some(launch_etcd_with(
        &c.hub,
        &dir,
        &format!("{ETCD},https://192.0.2.254:2479"),
        &[
            "--cert-file",
            &cert.to_string_lossy(),
            "--key-file",
            &key.to_string_lossy(),
        ],
    ));
    c.set_network("udp");
    c.endpoints[0] = "https://192.0.2.254:2479".to_owned();
    // An empty trust file: the CA is unknown, the server refused, no lease.
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "").expect("empty trust file");
    let start = |c: &mut Cluster, trust: &std::path::Path| {
        let _ = std::fs::remove_file(c.stats_path(0));
        let mut args = vec![format!("SSL_CERT_FILE={}", trust.display()), EXE.to_owned()];
        args.extend(c.args(0, &[]));
        let log = c.dir.path().join("node-0.log");
        c.processes[0] = Some(c.nodes[0].start("env", &args, log).expect("start fustian"));
    };
    start(&mut c, &empty);
    let refused = wait_for(Duration::from_secs(15), || {
        let log = c.log(0);
        log.contains("waiting for etcd") && log.contains("UnknownIssuer")
    });
    assert!(refused, "no refusal logged:\n{}", c.log(0));
    assert!(c.subnet(0).is_none(), "joined an etcd it cannot trust");
    assert_eq!(c.etcd_leases(), 0);
    c.stop_node(0);
    start(&mut c, &dir.join("ca.pem"));
    let subnet = c.wait_node(0);
    assert!(
        c.keys(&format!("{PREFIX}/subnets/"))
            .iter()
            .any(|(k, _)| k.contains(&subnet.network().to_string())),
        "no lease for {subnet}"
    );
    c.stop_node(0);
}

/// Churn among many junk keys does not hold up the table: with 20 000 junk keys under
/// `subnets/`, 2 000 more puts and deletes in quick succession (each its own watch event),
/// then a peer's lease, the peer is in the node's table within 10 s. The table is judged from
/// every entry, so it is published when the watch has nothing more ready (and at most every
/// 100 ms under a stream that never pauses), not once per event, which took minutes.
#[test]
fn churn_among_junk_keys_does_not_hold_up_a_new_lease() {
    if skip("churn_among_junk_keys_does_not_hold_up_a_new_lease") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::new(1);
    c.set_network("udp");
    c.start_node(0, &[]);
    let junk = with_etcd(&c.hub, |e, rt| {
        rt.block_on(async {
            for chunk in 0..200 {
                let ops: Vec<etcd_client::TxnOp> = (0..100)
                    .map(|i| {
                        etcd_client::TxnOp::put(
                            format!("{PREFIX}/subnets/junk-{chunk}-{i}"),
                            "x",
                            None,
                        )
                    })
                    .collect();
                e.txn(etcd_client::Txn::new().and_then(ops)).await?;
            }
            for i in 0..1000 {
                let key = format!("{PREFIX}/subnets/churn-{i}");
                e.put(key.clone(), "x", None).await?;
                e.delete(key, None).await?;
            }
            Ok::<_, etcd_client::Error>(())
        })
        .map_err(|e| e.to_string())
    });
    assert!(matches!(junk, Some(Ok(()))), "junk writes: {junk:?}");
    let written = Instant::now();
    c.put(
        &format!("{PREFIX}/subnets/10.244.200.0-24"),
        r#"{"PublicIP":"192.0.2.200"}"#,
    );
    let seen = wait_for(Duration::from_secs(10), || c.counter(0, "table_peers") == 1);
    assert!(
        seen,
        "the new lease was not in the table {:?} after it was written:\n{}",
        written.elapsed(),
        c.log(0)
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    c.stop_node(0);
}

/// Puts `n` keys named by `name` with `value`, 100 to a transaction.
fn put_many(c: &Cluster, n: usize, name: fn(usize) -> String, value: &'static str) {
    let done = with_etcd(&c.hub, move |e, rt| {
        rt.block_on(async {
            for start in (0..n).step_by(100) {
                let ops: Vec<etcd_client::TxnOp> = (start..n.min(start + 100))
                    .map(|i| etcd_client::TxnOp::put(name(i), value, None))
                    .collect();
                e.txn(etcd_client::Txn::new().and_then(ops)).await?;
            }
            Ok::<_, etcd_client::Error>(())
        })
        .map_err(|e| e.to_string())
    });
    assert!(matches!(done, Some(Ok(()))), "etcd puts: {done:?}");
}

/// The `i`th of a flood of keys in flannel's form outside the network (10.244.0.0/16).
fn outside_key(i: usize) -> String {
    format!("{PREFIX}/subnets/10.{}.{}.0-24", 100 + i / 256, i % 256)
}

/// Any etcd writer can put unlimited keys under `<prefix>/subnets/`. Keys that are not lease
/// keys are counted (`bad_key`), not kept, and logged a line at a time, not one per key;
/// keys in flannel's form past a node's budget (16 384 outside the network) are counted in
/// `etcd_keys_untracked` and picked up by a new list once deletions make room; and the
/// network's own leases, with their own budget, still reach the table. The same holds for a
/// node that lists the flood at start.
#[test]
fn a_flood_of_keys_is_counted_not_kept() {
    if skip("a_flood_of_keys_is_counted_not_kept") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::new(1);
    c.set_network("udp");
    c.start_node(0, &[]);
    const JUNK: usize = 20_000;
    const BUDGET: usize = fustian::control::etcd::MAX_OTHER_KEYS;
    let outside = BUDGET + 10;
    put_many(&c, JUNK, |i| format!("{PREFIX}/subnets/junk-{i}"), "x");
    put_many(&c, outside, outside_key, r#"{"PublicIP":"192.0.2.77"}"#);
    c.put(
        &format!("{PREFIX}/subnets/10.244.200.0-24"),
        r#"{"PublicIP":"192.0.2.200"}"#,
    );
    let expect = |c: &Cluster, untracked: u64, outside: u64| {
        c.counter(0, "table_peers") == 1
            && c.counter(0, "etcd_keys_untracked") == untracked
            && c.rejected(0, "bad_key") == JUNK as u64
            && c.rejected(0, "outside_network") == outside
    };
    let tail = |c: &Cluster| {
        let log = c.log(0);
        let lines: Vec<&str> = log.lines().rev().take(20).collect();
        lines.join("\n")
    };
    let seen = wait_for(Duration::from_secs(30), || expect(&c, 10, BUDGET as u64));
    assert!(
        seen,
        "watched flood: untracked {}, bad_key {}, outside_network {}, peers {}:\n{}",
        c.counter(0, "etcd_keys_untracked"),
        c.rejected(0, "bad_key"),
        c.rejected(0, "outside_network"),
        c.counter(0, "table_peers"),
        tail(&c)
    );
    let junk_lines = |c: &Cluster| c.log(0).lines().filter(|l| l.contains("junk-")).count();
    assert!(junk_lines(&c) <= 2, "junk logged per key:\n{}", tail(&c));
    // The outside leases are logged a few dozen a minute, not one line each.
    let lines = c.log(0).lines().count();
    assert!(lines < 200, "{lines} log lines:\n{}", tail(&c));
    // Room made: the untracked keys are listed in.
    let deleted = with_etcd(&c.hub, |e, rt| {
        rt.block_on(async {
            for i in 0..20 {
                e.delete(outside_key(i), None).await?;
            }
            Ok::<_, etcd_client::Error>(())
        })
        .is_ok()
    });
    assert_eq!(deleted, Some(true));
    let relisted = wait_for(Duration::from_secs(30), || {
        expect(&c, 0, (outside - 20) as u64)
    });
    assert!(
        relisted,
        "after deletions: untracked {}, outside_network {}:\n{}",
        c.counter(0, "etcd_keys_untracked"),
        c.rejected(0, "outside_network"),
        tail(&c)
    );
    // Listed at start: the same counts, the same single log line.
    put_many(&c, 20, outside_key, r#"{"PublicIP":"192.0.2.77"}"#);
    c.stop_node(0);
    c.start_node(0, &[]);
    let listed = wait_for(Duration::from_secs(30), || expect(&c, 10, BUDGET as u64));
    assert!(
        listed,
        "listed flood: untracked {}, bad_key {}, outside_network {}, peers {}:\n{}",
        c.counter(0, "etcd_keys_untracked"),
        c.rejected(0, "bad_key"),
        c.rejected(0, "outside_network"),
        c.counter(0, "table_peers"),
        tail(&c)
    );
    assert!(junk_lines(&c) <= 1, "junk logged per key:\n{}", tail(&c));
    c.stop_node(0);
}

/// `--public-ipv6` on an IPv4-only network (no `EnableIPv6`) is ignored with a warning, as
/// flanneld ignores it there: no lease would carry the address, so the node binds no IPv6
/// socket and the device keeps the MTU of an IPv4 underlay (1500 - 28 for udp).
#[test]
fn public_ipv6_on_an_ipv4_only_network_is_ignored() {
    if skip("public_ipv6_on_an_ipv4_only_network_is_ignored") {
        return;
    }
    let _serial = serial();
    let mut c = Cluster::new(1);
    c.set_network("udp");
    add_underlay6(&c, 0);
    let ip6 = node_ip6(0);
    c.start_node(0, &["--public-ipv6", ip6.as_str()]);
    let file = std::fs::read_to_string(c.subnet_file(0)).expect("subnet file");
    assert!(file.contains("FLANNEL_MTU=1472\n"), "{file}");
    let log = c.log(0);
    assert!(
        log.contains("--public-ipv6 is for a dual-stack network") && log.contains("listen6=None"),
        "{log}"
    );
    let own = c.keys(&format!("{PREFIX}/subnets/"));
    assert!(
        own.iter().all(|(_, v)| v.contains(r#""PublicIPv6":null"#)),
        "{own:?}"
    );
    // A udp node keeps no VTEP MAC, as flanneld's udp backend keeps none.
    let mac_file = c
        .subnet_file(0)
        .with_file_name(fustian::config::VTEP_MAC_FILE);
    assert!(!mac_file.exists(), "{}", mac_file.display());
    c.stop_node(0);
}
