//! `fustian lab`: the table, JSON and an SVG with one bar per scenario and metric, and nothing
//! left behind, also when interrupted.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{EXE, serial, signal, skip};

fn leftovers(prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip runs");
    for line in String::from_utf8_lossy(&netns.stdout).lines() {
        if line.starts_with(prefix) {
            found.push(format!("namespace {line}"));
        }
    }
    let marker = format!("fustian-{prefix}");
    for entry in std::fs::read_dir("/proc").expect("procfs").flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&marker) {
            found.push(format!("process {}", entry.file_name().to_string_lossy()));
        }
    }
    if std::env::temp_dir().join(&marker).exists() {
        found.push(format!("directory {marker}"));
    }
    found
}

#[test]
fn lab_reports_table_json_svg_and_cleans_up() {
    if skip("lab_reports_table_json_svg_and_cleans_up") {
        return;
    }
    let _serial = serial();
    let prefix = format!("lb{}", std::process::id() % 100_000);
    let dir = std::env::temp_dir().join(format!("lab-out-{prefix}"));
    std::fs::create_dir_all(&dir).expect("out dir");
    let (json, svg) = (dir.join("lab.json"), dir.join("lab.svg"));
    let out = Command::new(EXE)
        .args([
            "lab",
            "--duration",
            "0.3",
            "--pings",
            "20",
            "--streams",
            "1,2",
        ])
        .args([
            "--backend",
            "udp,vxlan",
            "--io",
            "uring,epoll",
            "--prefix",
            &prefix,
        ])
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .output()
        .expect("lab runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lab failed:\n{stdout}\n{stderr}");
    assert_eq!(leftovers(&prefix), Vec::<String>::new());

    let scenarios = [
        "fustian-udp/uring",
        "fustian-udp/epoll",
        "fustian-vxlan/uring",
        "fustian-vxlan/epoll",
        "kernel-vxlan",
        "underlay",
    ];
    for s in scenarios {
        assert!(
            stdout.lines().any(|l| l.starts_with(s)),
            "no row {s}:\n{stdout}"
        );
    }
    assert!(stdout.contains("ratio to kernel VXLAN"), "{stdout}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).expect("json");
    let metrics = report["metrics"].as_array().expect("metrics");
    let names: std::collections::BTreeSet<&str> =
        metrics.iter().filter_map(|m| m["name"].as_str()).collect();
    for want in [
        "tcp x1 a->b",
        "tcp x2 b->a",
        "rtt p50",
        "udp64 rate",
        "cpu/Gbit x1",
    ] {
        assert!(names.contains(want), "no metric {want}: {names:?}");
    }
    for s in scenarios {
        let tcp = metrics
            .iter()
            .find(|m| m["scenario"] == s && m["name"] == "tcp x1 a->b")
            .and_then(|m| m["samples"][0].as_f64())
            .expect("tcp x1 a->b measured");
        assert!(tcp > 0.0, "{s}: {tcp}");
    }

    // The nodes' own CPU per byte: measured for fustian's scenarios only.
    let node_cost = |s: &str| {
        metrics
            .iter()
            .find(|m| m["scenario"] == s && m["name"] == "node ns/B x1")
            .and_then(|m| m["samples"][0].as_f64())
    };
    let costs: Vec<f64> = scenarios[..4]
        .iter()
        .map(|s| node_cost(s).unwrap_or_else(|| panic!("{s}: no node ns/B x1")))
        .collect();
    assert!(
        costs.iter().all(|c| c.is_finite() && *c >= 0.0),
        "{costs:?}"
    );
    assert!(
        costs.iter().any(|c| *c > 0.0),
        "the nodes used no CPU: {costs:?}"
    );
    assert_eq!(node_cost("kernel-vxlan"), None);
    assert_eq!(node_cost("underlay"), None);
    // One bar per measured (scenario, metric) pair.
    let pairs: std::collections::BTreeSet<(&str, &str)> = metrics
        .iter()
        .filter_map(|m| Some((m["scenario"].as_str()?, m["name"].as_str()?)))
        .collect();

    let text = std::fs::read_to_string(&svg).expect("svg written");
    let doc = roxmltree::Document::parse(&text).expect("the SVG parses as XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let bars: Vec<_> = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "rect" && n.attribute("class") == Some("bar"))
        .collect();
    assert_eq!(bars.len(), pairs.len(), "one bar per scenario and metric");
    for s in scenarios {
        let n = bars
            .iter()
            .filter(|b| b.attribute("data-scenario") == Some(s))
            .count();
        assert_eq!(n, pairs.iter().filter(|(sc, _)| *sc == s).count(), "{s}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_interrupted_lab_leaves_nothing_behind() {
    if skip("an_interrupted_lab_leaves_nothing_behind") {
        return;
    }
    let _serial = serial();
    let prefix = format!("li{}", std::process::id() % 100_000);
    let mut child = Command::new(EXE)
        .args(["lab", "--duration", "5", "--prefix", &prefix])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("lab starts");
    // Wait until the lab is measuring through the overlay (its progress line for the first TCP
    // transfer), so the interrupt lands while nodes, pods and traffic all exist.
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().expect("piped");
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("TCP x") {
                let _ = tx.send(());
            }
        }
    });
    let measuring = rx.recv_timeout(Duration::from_secs(30)).is_ok();
    let nodes = leftovers(&prefix)
        .iter()
        .filter(|l| l.starts_with("process"))
        .count();
    signal(child.id(), libc::SIGINT);
    // Interrupted either way (so nothing is left behind), then judged.
    assert!(measuring, "the lab did not start measuring within 30 s");
    assert!(
        nodes >= 2,
        "the lab measured with {nodes} node processes running"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the lab did not stop after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "an interrupted lab reports failure");
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
}

#[test]
fn lab_runs_iperf3_when_asked() {
    if skip("lab_runs_iperf3_when_asked") {
        return;
    }
    let _serial = serial();
    let prefix = format!("lp{}", std::process::id() % 100_000);
    let json = std::env::temp_dir().join(format!("lab-iperf3-{prefix}.json"));
    let out = Command::new(EXE)
        .args([
            "lab",
            "--iperf3",
            "--duration",
            "1",
            "--streams",
            "1",
            "--pings",
            "10",
        ])
        .args(["--scenarios", "fustian", "--prefix", &prefix, "--json"])
        .arg(&json)
        .output()
        .expect("lab runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "lab --iperf3 failed (is iperf3 installed?):\n{stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("json");
    let _ = std::fs::remove_file(&json);
    let tcp = report["metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .find(|m| m["name"] == "tcp x1 a->b")
        .and_then(|m| m["samples"][0].as_f64())
        .expect("measured");
    assert!(tcp > 0.0);
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
}

#[test]
fn lab_measures_ipv6_families() {
    if skip("lab_measures_ipv6_families") {
        return;
    }
    let _serial = serial();
    let prefix = format!("l6{}", std::process::id() % 100_000);
    let out = Command::new(EXE)
        .args([
            "lab",
            "--duration",
            "0.3",
            "--pings",
            "20",
            "--streams",
            "1",
        ])
        .args(["--backend", "vxlan", "--io", "epoll", "--family", "6,6/4"])
        .args(["--prefix", &prefix])
        .output()
        .expect("lab runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lab failed:\n{stdout}\n{stderr}");
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
    for s in [
        "fustian-vxlan/epoll@6 ",
        "fustian-vxlan/epoll@6/4",
        "kernel-vxlan@6",
        "underlay@6",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(s)),
            "no row {s}:\n{stdout}"
        );
    }
    // The IPv6 pods' traffic went to the peer's IPv6 address, and over IPv4 for 6/4.
    for endpoint in ["[2001:db8::2]:8472", "192.0.2.2:8472"] {
        assert!(
            stdout.contains(&format!(
                "subnet=\"fd00:10:244:2::/64\",endpoint=\"{endpoint}\""
            )),
            "{endpoint}:\n{stdout}"
        );
    }
    // No IPv4 scenario ran.
    assert!(
        !stdout.lines().any(|l| l.starts_with("kernel-vxlan ")),
        "{stdout}"
    );
}

#[test]
fn lab_repetitions_run_round_robin() {
    if skip("lab_repetitions_run_round_robin") {
        return;
    }
    let _serial = serial();
    let prefix = format!("lr{}", std::process::id() % 100_000);
    let json = std::env::temp_dir().join(format!("lab-rr-{prefix}.json"));
    let out = Command::new(EXE)
        .args([
            "lab",
            "--duration",
            "0.3",
            "--pings",
            "20",
            "--streams",
            "1",
        ])
        .args([
            "--backend",
            "vxlan",
            "--io",
            "uring",
            "--offload",
            "auto,off",
        ])
        // Passed to the nodes, which refuse to start on a flag they do not take.
        .args(["--tun-txqueuelen", "2000"])
        .args(["--repeat", "2", "--prefix", &prefix, "--json"])
        .arg(&json)
        .output()
        .expect("lab runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lab failed:\n{stdout}\n{stderr}");
    assert_eq!(leftovers(&prefix), Vec::<String>::new());

    // Every row's first round ran before any row's second.
    let rows = [
        "fustian-vxlan/uring ",
        "fustian-vxlan/uring/off ",
        "kernel-vxlan ",
        "kernel-vxlan/off ",
        "underlay ",
    ];
    let lines: Vec<&str> = stderr.lines().collect();
    let at = |row: &str, round: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(&format!("lab: {row}{round}")))
            .unwrap_or_else(|| panic!("no {row}{round} line:\n{stderr}"))
    };
    let last_first = rows.iter().map(|r| at(r, "[1/2]")).max().expect("rows");
    let first_second = rows.iter().map(|r| at(r, "[2/2]")).min().expect("rows");
    assert!(last_first < first_second, "not round-robin:\n{stderr}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).expect("json");
    let _ = std::fs::remove_file(&json);
    let metrics = report["metrics"].as_array().expect("metrics");
    for m in metrics {
        // Two samples each: the kernel's device was programmed again in the second round.
        assert_eq!(m["samples"].as_array().map(Vec::len), Some(2), "{m}");
    }
    // The second round's nodes carried the traffic (not a kernel device left from the first):
    // their own CPU per byte is that of a fustian node in both rounds.
    for row in ["fustian-vxlan/uring", "fustian-vxlan/uring/off"] {
        let m = metrics
            .iter()
            .find(|m| m["scenario"] == row && m["name"] == "node ns/B x1")
            .unwrap_or_else(|| panic!("{row}: no node ns/B x1"));
        for s in m["samples"].as_array().expect("samples") {
            let v = s.as_f64().expect("number");
            assert!(
                v >= 0.3,
                "{row}: {v} ns/B: the nodes did not carry the traffic"
            );
        }
    }
    // Gauges keep the last round's value (that counters add up is a unit test of the lab).
    let counters = report["counters"].as_array().expect("counters");
    let node_a = counters
        .iter()
        .find(|c| c[0] == "fustian-vxlan/uring")
        .map(|c| &c[1][0])
        .expect("counters of fustian-vxlan/uring");
    let get = |name: &str| {
        node_a
            .as_array()
            .and_then(|kv| kv.iter().find(|p| p[0] == name))
            .and_then(|p| p[1].as_u64())
    };
    assert_eq!(get("table_peers"), Some(1), "{node_a}");
    assert!(get("tx_packets").is_some_and(|n| n > 0), "{node_a}");
}
