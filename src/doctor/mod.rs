//! `fustian doctor`: checks, on the node it runs on, everything pod traffic needs besides the
//! running node itself, and says for each failure what is wrong and the command that fixes it.
//!
//! The node's intended state comes from its own HTTP endpoint (`/status`): TUN name and MTU,
//! network, subnet, listen address, encapsulation, peers and subnet file. The checks then read
//! what the kernel has ([`local`]: the TUN device, its address, MTU and route, `ip_forward`,
//! `rp_filter`, the subnet file; [`firewall`]: the `FORWARD` chain of iptables, legacy and
//! nf_tables, and of native nftables) and ask every peer with a probe datagram ([`probe`]).
//! With etcd (feature `etcd`), `etcd` compares the leases in etcd with the node's table.
//!
//! Every command it runs only reads (`ip -j ... show`, `iptables-save`, `nft -j list`); it
//! changes nothing. A check that cannot be made (a tool missing) is a warning, never a pass.

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod firewall;
pub mod local;
pub mod probe;

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;
use serde_json::Value;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Pod traffic is broken, or will be, until it is fixed.
    Fail,
    /// Passed.
    Ok,
    /// Could not be checked, or is suspicious without being certain to break traffic.
    Warn,
}

impl Outcome {
    /// Returns the word printed for it.
    pub const fn word(self) -> &'static str {
        match self {
            Self::Fail => "FAIL",
            Self::Ok => "ok",
            Self::Warn => "warn",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// A short stable name (`tun.mtu`, `sysctl.ip_forward`, `peer.192.0.2.2`, ...).
    pub name: String,
    /// Its outcome.
    pub outcome: Outcome,
    /// What was found (for a failure: what is wrong).
    pub detail: String,
    /// The command that fixes it, for a failure or a warning that has one.
    pub fix: Option<String>,
}

impl Check {
    /// Returns a passed check.
    pub fn ok(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            outcome: Outcome::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    /// Returns a failed check with the command that fixes it.
    pub fn fail(name: impl Into<String>, detail: impl Into<String>, fix: Option<String>) -> Self {
        Self {
            name: name.into(),
            outcome: Outcome::Fail,
            detail: detail.into(),
            fix,
        }
    }

    /// Returns a warning.
    pub fn warn(name: impl Into<String>, detail: impl Into<String>, fix: Option<String>) -> Self {
        Self {
            name: name.into(),
            outcome: Outcome::Warn,
            detail: detail.into(),
            fix,
        }
    }
}

/// Every check's result, in the order they ran.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    /// Returns true when no check failed or warned: the exit status is 0 only then.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.outcome == Outcome::Ok)
    }

    /// Renders one line per check (and an indented `fix:` line under a failure or warning),
    /// then a summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let _ = writeln!(out, "{:<4} {:<28} {}", c.outcome.word(), c.name, c.detail);
            if let Some(fix) = &c.fix {
                let _ = writeln!(out, "     {:<28} fix: {fix}", "");
            }
        }
        let count = |o| self.checks.iter().filter(|c| c.outcome == o).count();
        let _ = writeln!(
            out,
            "{} checks: {} ok, {} warnings, {} failures",
            self.checks.len(),
            count(Outcome::Ok),
            count(Outcome::Warn),
            count(Outcome::Fail)
        );
        out
    }

    /// Renders the report as JSON: `{"passed": bool, "checks": [{name, outcome, detail,
    /// fix}]}`.
    pub fn json(&self) -> Value {
        serde_json::json!({"passed": self.passed(), "checks": self.checks})
    }
}

/// The node's encapsulation, as `/status` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// flannel's `udp` format.
    Udp,
    /// VXLAN with this VNI.
    Vxlan {
        /// The VNI.
        vni: u32,
    },
}

/// A peer of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIntent {
    /// Its pod subnet.
    pub subnet: IpNet,
    /// Where its datagrams go.
    pub endpoint: SocketAddr,
    /// Its VTEP MAC (`vxlan`).
    pub vtep_mac: Option<[u8; 6]>,
}

/// What the running node means to have: read from its `/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    /// The TUN device's name.
    pub tun: String,
    /// The TUN device's MTU.
    pub mtu: u32,
    /// The overlay network.
    pub network: IpNet,
    /// This node's subnet.
    pub subnet: IpNet,
    /// The IPv6 network and subnet of a dual-stack node.
    pub ipv6: Option<(IpNet, IpNet)>,
    /// The underlay address and port the node listens on.
    pub listen: SocketAddr,
    /// The IPv6 underlay address and port it also listens on, beside an IPv4 `listen`.
    pub listen6: Option<SocketAddr>,
    /// The encapsulation.
    pub backend: Backend,
    /// This node's VTEP MAC (`vxlan`).
    pub vtep_mac: Option<[u8; 6]>,
    /// The subnet file, when the node says where it is.
    pub subnet_file: Option<PathBuf>,
    /// The table's peers.
    pub peers: Vec<PeerIntent>,
    /// The node's counts of packets it read from its TUN device and of those the device
    /// dropped at its transmit queue before a worker read them (`tun_rx_packets`,
    /// `tun_device_tx_dropped`), when `/status` has both.
    pub tun_queue: Option<(u64, u64)>,
    /// Which run of the node answered: its process id and start time (seconds since the
    /// epoch), when `/status` has them. A restart changes it.
    pub instance: Option<(u64, u64)>,
}

/// Why the intended state could not be learnt.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// The node's endpoint did not answer.
    #[error("cannot read the node's /status at {addr}: {reason}")]
    Fetch {
        /// The endpoint.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// `/status` lacks a field or holds a value of the wrong form.
    #[error("the node's /status has no valid `{0}`")]
    Field(&'static str),
}

impl Intent {
    /// Reads the intended state from `/status` JSON.
    ///
    /// # Errors
    ///
    /// [`DoctorError::Field`] naming the first missing or malformed field.
    pub fn from_status(v: &Value) -> Result<Self, DoctorError> {
        let text = |k: &'static str| v[k].as_str().ok_or(DoctorError::Field(k));
        let parse = |k: &'static str| -> Result<IpNet, DoctorError> {
            text(k)?.parse().map_err(|_| DoctorError::Field(k))
        };
        let backend = match text("backend")? {
            "udp" => Backend::Udp,
            "vxlan" => Backend::Vxlan {
                vni: v["vni"]
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or(DoctorError::Field("vni"))?,
            },
            _ => return Err(DoctorError::Field("backend")),
        };
        let mac = |x: &Value| x.as_str().and_then(parse_mac);
        let peers = v["table"]["peers"]
            .as_array()
            .ok_or(DoctorError::Field("table.peers"))?
            .iter()
            .map(|p| {
                Ok(PeerIntent {
                    subnet: p["subnet"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or(DoctorError::Field("table.peers.subnet"))?,
                    endpoint: p["endpoint"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or(DoctorError::Field("table.peers.endpoint"))?,
                    vtep_mac: mac(&p["vtep_mac"]),
                })
            })
            .collect::<Result<Vec<_>, DoctorError>>()?;
        // Both end up in the commands doctor prints as fixes and in paths it reads: a name
        // the kernel could have given a device, a path without control characters.
        let tun = text("tun")?;
        if !is_plain_ifname(tun) {
            return Err(DoctorError::Field("tun"));
        }
        let subnet_file = match &v["subnet_file"] {
            Value::Null => None,
            // As the node was given it (relative to where it started, when relative).
            Value::String(p) if !p.is_empty() && !p.chars().any(char::is_control) => {
                Some(PathBuf::from(p))
            }
            _ => return Err(DoctorError::Field("subnet_file")),
        };
        Ok(Self {
            tun: tun.to_owned(),
            mtu: v["mtu"]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or(DoctorError::Field("mtu"))?,
            network: parse("network")?,
            subnet: parse("subnet")?,
            ipv6: match (&v["ipv6_network"], &v["ipv6_subnet"]) {
                (Value::Null, Value::Null) => None,
                _ => Some((parse("ipv6_network")?, parse("ipv6_subnet")?)),
            },
            listen: text("listen")?
                .parse()
                .map_err(|_| DoctorError::Field("listen"))?,
            listen6: match &v["listen6"] {
                Value::Null => None,
                x => Some(
                    x.as_str()
                        .and_then(|t| t.parse().ok())
                        .ok_or(DoctorError::Field("listen6"))?,
                ),
            },
            backend,
            vtep_mac: mac(&v["vtep_mac"]),
            subnet_file,
            peers,
            tun_queue: v["counters"]["tun_rx_packets"]
                .as_u64()
                .zip(v["counters"]["tun_device_tx_dropped"].as_u64()),
            instance: v["pid"].as_u64().zip(v["started"].as_u64()),
        })
    }

    /// Returns the address the node gives its TUN device: the subnet's first address.
    pub fn tun_addr(&self) -> IpAddr {
        self.subnet.network()
    }

    /// Returns the node's overlays as `(network, subnet)`: the first one, and the IPv6 one of
    /// a dual-stack node.
    pub fn overlays(&self) -> Vec<(IpNet, IpNet)> {
        std::iter::once((self.network, self.subnet))
            .chain(self.ipv6)
            .collect()
    }
}

/// True for an interface name doctor takes from a node's answer: 1 to 15 bytes of letters,
/// digits and `_ . - @ +`, not `.` or `..` (what fustian and flanneld name their devices;
/// nothing a shell or a path would read specially).
pub fn is_plain_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'@' | b'+'))
}

/// Quotes `word` for a POSIX shell when it holds anything but letters, digits and
/// `_ . / - + = : , @ %`, so a printed fix runs as shown whatever a path holds.
pub fn shell_quote(word: &str) -> std::borrow::Cow<'_, str> {
    let plain = !word.is_empty()
        && word.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'_' | b'.' | b'/' | b'-' | b'+' | b'=' | b':' | b',' | b'@' | b'%'
                )
        });
    if plain {
        std::borrow::Cow::Borrowed(word)
    } else {
        std::borrow::Cow::Owned(format!("'{}'", word.replace('\'', "'\\''")))
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// How `doctor` probes the peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeOptions {
    /// How long to wait for each answer.
    pub timeout: Duration,
    /// The largest underlay datagram tried when searching the path MTU.
    pub max_mtu: u32,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(500),
            max_mtu: 1500,
        }
    }
}

/// Learns the intended state from the node whose endpoint is `addr`.
///
/// # Errors
///
/// [`DoctorError`] when the node's `/status` cannot be read or lacks a field.
pub fn intent(addr: SocketAddr) -> Result<Intent, DoctorError> {
    let text =
        crate::http::get(addr, "/status").map_err(|reason| DoctorError::Fetch { addr, reason })?;
    let v: Value = serde_json::from_str(&text).map_err(|_| DoctorError::Field("(JSON)"))?;
    // Whatever holds the port wrote it: no string of it may become a line of the report.
    Intent::from_status(&crate::show::one_line_strings(v))
}

/// Runs the local, firewall and peer checks for `intent`; then, when the node reports its TUN
/// queue counters, checks the drops at that queue between `intent`'s reading and `again`'s
/// (the node's `/status` read again), taken at least [`QUEUE_WINDOW`] later.
pub fn run(
    intent: &Intent,
    opts: &ProbeOptions,
    again: impl FnOnce() -> Result<Intent, String>,
) -> Report {
    let started = std::time::Instant::now();
    let mut report = Report::default();
    report.checks.extend(local::checks(intent));
    report.checks.extend(firewall::checks(intent));
    report.checks.extend(probe::checks(intent, opts));
    if let Some(before) = intent.tun_queue {
        // Drops at the TUN queue while doctor watched, at least QUEUE_WINDOW long.
        std::thread::sleep(QUEUE_WINDOW.saturating_sub(started.elapsed()));
        report.checks.push(local::tun_queue(intent, before, again));
    }
    report
}

/// The shortest time between doctor's two readings of the node's TUN queue counters.
pub const QUEUE_WINDOW: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Value {
        serde_json::json!({
            "tun": "flannel0", "mtu": 1472, "network": "10.244.0.0/16",
            "subnet": "10.244.1.0/24", "listen": "192.0.2.1:8285", "backend": "udp",
            "vni": null, "vtep_mac": null, "subnet_file": "/run/flannel/subnet.env",
            "table": {"generation": 1, "peers": [
                {"subnet": "10.244.2.0/24", "endpoint": "192.0.2.2:8285", "vtep_mac": null}
            ]}
        })
    }

    proptest::proptest! {
        /// Any JSON the endpoint answers is read or refused with a typed error, never a
        /// panic; the run's identity is read exactly when both of its fields are counts.
        #[test]
        fn any_status_is_read_or_refused(
            text in "\\PC{0,200}",
            pid in proptest::prelude::any::<i64>(),
            started in proptest::prelude::any::<i64>(),
        ) {
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                let _ = Intent::from_status(&v);
            }
            let mut v = status();
            v["pid"] = pid.into();
            v["started"] = started.into();
            let i = Intent::from_status(&v).expect("the rest is valid");
            let want = u64::try_from(pid).ok().zip(u64::try_from(started).ok());
            proptest::prop_assert_eq!(i.instance, want);
        }
    }

    #[test]
    fn names_and_paths_from_the_answer_cannot_reach_a_shell_or_a_device() {
        for tun in [
            "fl0;curl${IFS}x|sh;#",
            "fl0 up",
            "../../x",
            "..",
            "",
            "sixteen-bytes-xx",
            "fl\u{1b}[2K",
            "a/b",
        ] {
            let mut v = status();
            v["tun"] = tun.into();
            assert!(
                matches!(Intent::from_status(&v), Err(DoctorError::Field("tun"))),
                "{tun:?}"
            );
        }
        for name in ["flannel0", "flannel.1", "fl-a_0", "veth@x", "f+1"] {
            assert!(is_plain_ifname(name), "{name}");
        }
        for file in ["", "/run/x\u{1b}]0;t\u{7}", "/run/a\nb"] {
            let mut v = status();
            v["subnet_file"] = file.into();
            assert!(
                matches!(
                    Intent::from_status(&v),
                    Err(DoctorError::Field("subnet_file"))
                ),
                "{file:?}"
            );
        }
        let mut v = status();
        v["subnet_file"] = Value::Null;
        assert_eq!(Intent::from_status(&v).expect("valid").subnet_file, None);
        assert_eq!(
            shell_quote("/run/flannel/subnet.env"),
            "/run/flannel/subnet.env"
        );
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("/tmp/it's;rm"), "'/tmp/it'\\''s;rm'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn intent_from_status() {
        let i = Intent::from_status(&status()).unwrap();
        assert_eq!(i.tun, "flannel0");
        assert_eq!(i.mtu, 1472);
        assert_eq!(i.backend, Backend::Udp);
        assert_eq!(i.peers.len(), 1);
        assert_eq!(i.tun_addr(), "10.244.1.0".parse::<IpAddr>().unwrap());
        let mut v = status();
        v["backend"] = "vxlan".into();
        assert!(matches!(
            Intent::from_status(&v),
            Err(DoctorError::Field("vni"))
        ));
        v["vni"] = 1.into();
        v["vtep_mac"] = "02:66:75:00:00:01".into();
        let i = Intent::from_status(&v).unwrap();
        assert_eq!(i.backend, Backend::Vxlan { vni: 1 });
        assert_eq!(i.vtep_mac, Some([2, 0x66, 0x75, 0, 0, 1]));
        assert!(Intent::from_status(&serde_json::json!([1])).is_err());
        // The TUN queue counters, only when both are there.
        assert_eq!(i.tun_queue, None);
        v["counters"] = serde_json::json!({"tun_rx_packets": 10, "tun_device_tx_dropped": 2});
        assert_eq!(Intent::from_status(&v).unwrap().tun_queue, Some((10, 2)));
        v["counters"] = serde_json::json!({"tun_rx_packets": 10});
        assert_eq!(Intent::from_status(&v).unwrap().tun_queue, None);
        v["counters"] = serde_json::json!({"tun_rx_packets": 10, "tun_device_tx_dropped": "x"});
        assert_eq!(Intent::from_status(&v).unwrap().tun_queue, None);
        // Which run of the node answered, only when both are there.
        assert_eq!(i.instance, None);
        v["pid"] = 4242.into();
        assert_eq!(Intent::from_status(&v).unwrap().instance, None);
        v["started"] = 1_790_000_000u64.into();
        assert_eq!(
            Intent::from_status(&v).unwrap().instance,
            Some((4242, 1_790_000_000))
        );
    }

    #[test]
    fn report_renders_and_exits() {
        let mut r = Report::default();
        r.checks.push(Check::ok("a", "fine"));
        assert!(r.passed());
        r.checks.push(Check::fail(
            "sysctl.ip_forward",
            "off",
            Some("sysctl -w net.ipv4.ip_forward=1".into()),
        ));
        assert!(!r.passed());
        let text = r.render();
        assert!(text.contains("FAIL sysctl.ip_forward"), "{text}");
        assert!(
            text.contains("fix: sysctl -w net.ipv4.ip_forward=1"),
            "{text}"
        );
        assert_eq!(r.json()["checks"][1]["outcome"], "fail");
        assert_eq!(r.json()["passed"], false);
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("02:00:00:00:00:0a"), Some([2, 0, 0, 0, 0, 10]));
        assert_eq!(parse_mac("02:00:00:00:00"), None);
        assert_eq!(parse_mac("02:00:00:00:00:00:00"), None);
        assert_eq!(parse_mac("2:00:00:00:00:00"), None);
    }
}
