//! `fustian lab` prints its table and leaves nothing behind.

use std::process::Command;

use crate::common::{EXE, skip};

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
fn lab_prints_results_and_cleans_up() {
    if skip("lab_prints_results_and_cleans_up") {
        return;
    }
    let prefix = format!("lb{}", std::process::id() % 100_000);
    let out = Command::new(EXE)
        .args([
            "lab",
            "--duration",
            "0.5",
            "--pings",
            "20",
            "--prefix",
            &prefix,
        ])
        .output()
        .expect("lab runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lab failed:\n{stdout}\n{stderr}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("fustian udp"))
        .expect("a fustian row");
    let gbps: f64 = row
        .split_whitespace()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .expect("a figure");
    assert!(gbps > 0.0, "{row}");
    assert!(
        stdout.lines().any(|l| l.starts_with("bare underlay")),
        "{stdout}"
    );
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
}
