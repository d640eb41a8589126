//! `fustian show`: a running node's `/status` JSON rendered for a person.

use std::fmt::Write as _;

use serde_json::Value;

/// `3d 4h`, `2h 5m`, `7m 3s` or `12s`: the two largest units of `secs`.
fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// Returns `v` with every string in it, object keys included, made one printable line
/// ([`crate::sys::one_line`]: newline, tab and every other control character escaped).
/// `/status` comes from whatever holds the port, so no text in it may start a line of its own
/// in what `show` and `doctor` print.
#[must_use]
pub fn one_line_strings(v: Value) -> Value {
    match v {
        Value::String(t) => Value::String(crate::sys::one_line(&t).into_owned()),
        Value::Array(items) => Value::Array(items.into_iter().map(one_line_strings).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (crate::sys::one_line(&k).into_owned(), one_line_strings(v)))
                .collect(),
        ),
        other => other,
    }
}

/// Renders the node's state: what it is, its peers, and its non-zero counters (drops apart).
/// Strings of `v` are shown as they are: pass an answer through [`one_line_strings`] first.
pub fn render(v: &Value) -> String {
    let s = |key: &str| match &v[key] {
        Value::String(t) => t.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {} in {} on {}, {} (VNI {}, VTEP {}), TUN {} MTU {}",
        s("subnet"),
        s("network"),
        s("listen"),
        s("backend"),
        s("vni"),
        s("vtep_mac"),
        s("tun"),
        s("mtu"),
    );
    if let Some(v6) = v["ipv6_subnet"].as_str() {
        let _ = writeln!(out, "     {v6} in {}", s("ipv6_network"));
    }
    if let Some(listen6) = v["listen6"].as_str() {
        let _ = writeln!(out, "     also on {listen6}");
    }
    let _ = writeln!(
        out,
        "io {} ({}), offloads {}, {} workers",
        s("io"),
        s("io_reason"),
        s("offloads"),
        s("workers"),
    );
    if let (Some(pid), Some(started)) = (v["pid"].as_u64(), v["started"].as_u64()) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let _ = writeln!(out, "pid {pid}, up {}", uptime(now.saturating_sub(started)));
    }
    let counters = v["counters"].as_object();
    let counter = |name: &str| counters.and_then(|c| c.get(name)).and_then(Value::as_u64);
    if let Some(connected) = counter("etcd_connected") {
        let untracked = match counter("etcd_keys_untracked") {
            Some(n) if n > 0 => format!(", {n} keys untracked (past the node's budget)"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "etcd {}, {} reconnects, {} leases ignored{untracked}",
            if connected == 1 {
                "connected"
            } else {
                "unreachable"
            },
            counter("etcd_reconnects").unwrap_or(0),
            counter("etcd_leases_ignored").unwrap_or(0),
        );
    }
    let peers = v["table"]["peers"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(
        out,
        "\ntable generation {}, {} peers:",
        v["table"]["generation"],
        peers.len()
    );
    let _ = writeln!(
        out,
        "  {:<20} {:<24} {:<18} {:>12} {:>14} {:>12} {:>14}",
        "subnet", "endpoint", "vtep mac", "tx packets", "tx bytes", "rx packets", "rx bytes"
    );
    for p in &peers {
        let text = |k: &str| p[k].as_str().unwrap_or("-").to_owned();
        let n = |k: &str| p[k].as_u64().unwrap_or(0);
        let _ = writeln!(
            out,
            "  {:<20} {:<24} {:<18} {:>12} {:>14} {:>12} {:>14}",
            text("subnet"),
            text("endpoint"),
            text("vtep_mac"),
            n("tx_packets"),
            n("tx_bytes"),
            n("rx_packets"),
            n("rx_bytes"),
        );
    }
    if let Some(c) = counters {
        let (drops, rest): (Vec<_>, Vec<_>) = c
            .iter()
            .filter(|(_, n)| n.as_u64().is_some_and(|n| n > 0))
            .partition(|(k, _)| k.starts_with("drop_"));
        let _ = writeln!(out, "\ncounters:");
        for (k, n) in rest {
            let _ = writeln!(out, "  {k:<28} {n}");
        }
        let _ = writeln!(out, "drops:{}", if drops.is_empty() { " none" } else { "" });
        for (k, n) in drops {
            let _ = writeln!(out, "  {:<28} {n}", k.trim_start_matches("drop_"));
        }
    }
    render_recent_drops(&mut out, v);
    out
}

/// The last drops the workers remember, newest last: time (UTC), reason, flow, peer.
fn render_recent_drops(out: &mut String, v: &Value) {
    let Some(drops) = v["recent_drops"].as_array().filter(|d| !d.is_empty()) else {
        return;
    };
    let _ = writeln!(out, "recent drops:");
    for d in drops {
        let line: crate::trace::Line = serde_json::from_value(d.clone()).unwrap_or_default();
        let line = crate::trace::Line {
            verdict: Some("drop".into()),
            len: None,
            ..line
        };
        let _ = writeln!(out, "  {}", crate::trace::client::render(&line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_string_of_an_answer_starts_a_line() {
        let v = serde_json::json!({
            "subnet": "10.244.1.0/24\nok   fake.check  everything is fine",
            "io_reason": "x\r\ty",
            "counters": {"rx_packets\nFORGED 1": 3},
            "table": {"generation": 1, "peers": [
                {"subnet": "10.244.2.0/24", "endpoint": "192.0.2.2:8285\nFORGED", "vtep_mac": "-"}
            ]},
        });
        let shown = render(&one_line_strings(v));
        assert!(
            !shown
                .lines()
                .any(|l| l.contains("FORGED") && !l.contains("\\n")),
            "{shown}"
        );
        assert!(!shown.lines().any(|l| l.starts_with("ok ")), "{shown}");
        assert!(shown.contains("10.244.1.0/24\\nok"), "{shown}");
        assert!(!shown.contains('\r') && !shown.contains('\t'), "{shown}");
    }

    #[test]
    fn renders_peers_counters_and_drops() {
        let v = serde_json::json!({
            "subnet": "10.244.1.0/24", "network": "10.244.0.0/16", "listen": "192.0.2.1:8472",
            "backend": "vxlan", "vni": 1, "vtep_mac": "02:66:75:00:00:01", "tun": "flannel0",
            "mtu": 1450, "io": "epoll", "io_reason": "auto", "offloads": "tso,gso,gro",
            "workers": 2,
            "table": {"generation": 3, "peers": [
                {"subnet": "10.244.2.0/24", "endpoint": "192.0.2.2:8472", "vtep_mac": "02:66:75:00:00:02",
                 "tx_packets": 7, "tx_bytes": 9000, "rx_packets": 5, "rx_bytes": 700}
            ]},
            "counters": {"tx_packets": 10, "rx_packets": 0, "drop_no_route": 2, "etcd_connected": 1},
            "recent_drops": [{"time_ns": 3_661_000_000_000_u64, "worker": 0, "dir": "udp>tun",
                "reason": "spoofed_source", "src": "10.244.9.9", "dst": "10.244.1.2", "proto": 6,
                "sport": 1000, "dport": 80, "outer": "192.0.2.2:8285"}]
        });
        let mut with_pid = v.clone();
        with_pid["pid"] = 4242.into();
        with_pid["started"] = 0.into();
        assert!(
            render(&with_pid).contains("\npid 4242, up "),
            "{}",
            render(&with_pid)
        );
        let text = render(&v);
        assert!(
            text.contains("node 10.244.1.0/24 in 10.244.0.0/16 on 192.0.2.1:8472, vxlan (VNI 1")
        );
        assert!(text.contains("10.244.2.0/24        192.0.2.2:8472"));
        assert!(text.contains("9000"), "{text}");
        assert!(text.contains("tx_packets"));
        assert!(!text.contains("rx_packets"), "zero counters are left out");
        assert!(text.contains("no_route"));
        assert!(text.contains("etcd connected"));
        assert!(
            text.contains(
                "recent drops:\n  01:01:01.000000 w0 udp>tun 10.244.9.9:1000 > 10.244.1.2:80 tcp \
                 drop spoofed_source from 192.0.2.2:8285"
            ),
            "{text}"
        );
        // Garbage renders without panicking.
        let _ = render(&serde_json::json!([1, 2]));
    }

    #[test]
    fn uptime_names_the_two_largest_units() {
        assert_eq!(uptime(0), "0s");
        assert_eq!(uptime(59), "59s");
        assert_eq!(uptime(7 * 60 + 3), "7m 3s");
        assert_eq!(uptime(2 * 3600 + 5 * 60 + 9), "2h 5m");
        assert_eq!(uptime(3 * 86_400 + 4 * 3600 + 1), "3d 4h");
        assert_eq!(
            uptime(u64::MAX),
            format!("{}d {}h", u64::MAX / 86_400, u64::MAX / 3600 % 24)
        );
    }

    #[test]
    fn renders_a_dual_stack_node() {
        let v = serde_json::json!({
            "subnet": "10.244.1.0/24", "network": "10.244.0.0/16", "listen": "192.0.2.1:8285",
            "ipv6_subnet": "fd00:10:244:1::/64", "ipv6_network": "fd00:10:244::/56",
            "listen6": "[2001:db8::1]:8285", "backend": "udp",
            "table": {"generation": 1, "peers": [
                {"subnet": "fd00:10:244:2::/64", "endpoint": "[2001:db8::2]:8285",
                 "tx_packets": 1, "tx_bytes": 2, "rx_packets": 3, "rx_bytes": 4}
            ]},
        });
        let text = render(&v);
        assert!(
            text.contains("fd00:10:244:1::/64 in fd00:10:244::/56"),
            "{text}"
        );
        assert!(text.contains("also on [2001:db8::1]:8285"), "{text}");
        assert!(!text.contains("pid"), "no pid line without one: {text}");
        assert!(text.contains("fd00:10:244:2::/64"), "{text}");
        assert!(text.contains("[2001:db8::2]:8285"), "{text}");
        // A single-stack node says nothing of IPv6.
        let v4 = serde_json::json!({"subnet": "10.244.1.0/24"});
        assert!(!render(&v4).contains("also on"));
    }
}
