//! The node's own kernel state: the TUN device (exists, up, address, MTU, drops at its
//! transmit queue), the overlay route,
//! the subnet file, `ip_forward`, `rp_filter`, and kernel VXLAN devices on the node's port.
//!
//! Reads `ip -j` output (iproute2's JSON) and `/proc/sys`; the parsers are pure and tested on
//! their own.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::{Backend, Check, Intent};

/// What `ip -j addr show dev <tun>` says of the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// `UP` is among its flags (administratively up).
    pub up: bool,
    /// Its MTU.
    pub mtu: u32,
    /// Its IPv4 and IPv6 addresses, with prefix lengths.
    pub addrs: Vec<(IpAddr, u8)>,
}

/// The fields of a flannel subnet file (`KEY=VALUE` lines).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK`.
    pub network: Option<String>,
    /// `FLANNEL_SUBNET`.
    pub subnet: Option<String>,
    /// `FLANNEL_MTU`, when it is a number.
    pub mtu: Option<u32>,
    /// `FLANNEL_IPV6_NETWORK`.
    pub ipv6_network: Option<String>,
    /// `FLANNEL_IPV6_SUBNET`.
    pub ipv6_subnet: Option<String>,
}

/// Runs the local checks.
pub fn checks(intent: &Intent) -> Vec<Check> {
    let mut out = Vec::new();
    let tun = &intent.tun;
    let link = ip_json(&["-j", "addr", "show", "dev", tun])
        .ok()
        .and_then(|v| parse_link(&v));
    let actual_mtu = link.as_ref().map(|l| l.mtu);
    match &link {
        None => out.push(Check::fail(
            "tun.exists",
            format!("TUN device {tun} does not exist in this network namespace"),
            Some("restart fustian run (it creates the device)".to_owned()),
        )),
        Some(l) => {
            out.push(Check::ok("tun.exists", format!("{tun} exists")));
            out.push(if l.up {
                Check::ok("tun.up", format!("{tun} is up"))
            } else {
                Check::fail(
                    "tun.up",
                    format!("{tun} is down"),
                    Some(format!("ip link set dev {tun} up")),
                )
            });
            for (_, subnet) in intent.overlays() {
                let want = subnet.network();
                out.push(if l.addrs.iter().any(|(a, _)| *a == want) {
                    Check::ok("tun.address", format!("{tun} has {want}"))
                } else {
                    let len = if want.is_ipv4() { 32 } else { 128 };
                    Check::fail(
                        "tun.address",
                        format!("{tun} lacks the node address {want}"),
                        Some(format!("ip addr add {want}/{len} dev {tun}")),
                    )
                });
            }
            out.push(if l.mtu == intent.mtu {
                Check::ok("tun.mtu", format!("{tun} MTU {}", l.mtu))
            } else {
                Check::fail(
                    "tun.mtu",
                    format!(
                        "{tun} MTU is {}, the node sized it {} for its underlay",
                        l.mtu, intent.mtu
                    ),
                    Some(format!("ip link set dev {tun} mtu {}", intent.mtu)),
                )
            });
        }
    }
    for (network, _) in intent.overlays() {
        out.push(route_check(tun, network.trunc()));
    }
    if let Some(path) = &intent.subnet_file {
        out.push(subnet_file_check(
            path,
            intent,
            actual_mtu.unwrap_or(intent.mtu),
        ));
    }
    if intent.overlays().iter().any(|(n, _)| n.addr().is_ipv4()) {
        out.push(ip_forward_check(read_sysctl("net/ipv4/ip_forward")));
    }
    if intent.overlays().iter().any(|(n, _)| n.addr().is_ipv6()) {
        out.push(ipv6_forwarding_check(read_sysctl(
            "net/ipv6/conf/all/forwarding",
        )));
    }
    for (family, name) in [(4, "iptables"), (6, "ip6tables")] {
        if intent.overlays().iter().any(|(n, _)| {
            if family == 4 {
                n.addr().is_ipv4()
            } else {
                n.addr().is_ipv6()
            }
        }) {
            let key = format!("net/bridge/bridge-nf-call-{name}");
            out.push(br_netfilter_check(
                &key,
                Path::new("/proc/sys").join(&key).exists(),
            ));
        }
    }
    out.push(rp_filter_check(
        tun,
        read_sysctl("net/ipv4/conf/all/rp_filter"),
        read_sysctl(&format!("net/ipv4/conf/{tun}/rp_filter")),
    ));
    vxlan_check(intent, &mut out);
    out
}

/// The share of the packets sent into the TUN device that its transmit queue may drop while
/// doctor watches before the check warns: 1 in 1000.
const QUEUE_DROP_WARN: f64 = 1e-3;

/// The TUN device's transmit queue between two readings of the node's counters, `before`
/// and `after`, each `(read, dropped)`: packets the workers read from the device, and
/// packets the device dropped because its queue (`txqlen` packets) was full, pods sending
/// faster than the workers read. Warns when more than [`QUEUE_DROP_WARN`] of the packets sent
/// into the device in that window were dropped (a burst fills any queue: the fix is a longer
/// one); a drop long ago, counted since the node started, is only reported. `after` is why
/// when the node could not be read again, and says whether the node restarted in between (a
/// count that went back means so too); then the window starts with the restart.
pub fn tun_queue_check(
    tun: &str,
    txqlen: Option<u32>,
    before: (u64, u64),
    after: Result<((u64, u64), bool), String>,
) -> Check {
    let (after, restarted) = match after {
        Ok(after) => after,
        Err(why) => {
            return Check::warn(
                "tun.queue",
                format!("{tun}: the node's counters could not be read a second time: {why}"),
                None,
            );
        }
    };
    let (read, dropped) = if restarted || after.0 < before.0 || after.1 < before.1 {
        after
    } else {
        (after.0 - before.0, after.1 - before.1)
    };
    let queue = txqlen.map_or_else(
        || "its transmit queue".to_owned(),
        |q| format!("its {q}-packet transmit queue"),
    );
    let sent = read.saturating_add(dropped);
    #[allow(clippy::cast_precision_loss)] // a share, to 0.1 %
    let share = if sent == 0 {
        0.0
    } else {
        dropped as f64 / sent as f64
    };
    let detail = format!(
        "{tun} dropped {dropped} of {sent} packets at {queue} while doctor ran ({} since the \
         node started)",
        after.1
    );
    if share <= QUEUE_DROP_WARN {
        return Check::ok("tun.queue", detail);
    }
    let max = crate::config::MAX_TUN_TXQUEUELEN;
    let fix = match txqlen {
        Some(q) if q >= max => format!(
            "the queue is at fustian's limit ({max}): more workers read faster (fustian run \
             --threads N, one per CPU by default)"
        ),
        q => {
            let longer = q.unwrap_or(500).saturating_mul(4).clamp(1000, max);
            format!(
                "fustian run --tun-txqueuelen {longer} (or now: ip link set dev {tun} \
                 txqueuelen {longer})"
            )
        }
    };
    Check::warn(
        "tun.queue",
        format!(
            "{detail}: {:.1} %, pods send faster than the workers read",
            share * 100.0
        ),
        Some(fix),
    )
}

/// Reads the TUN device's queue length and checks its drops between `before` and the node's
/// counters read again by `again` (see [`tun_queue_check`]); a different process id or start
/// time in the second reading than in `intent` is a restart.
pub fn tun_queue(
    intent: &Intent,
    before: (u64, u64),
    again: impl FnOnce() -> Result<Intent, String>,
) -> Check {
    let tun = intent.tun.as_str();
    let after = again().and_then(|now| {
        let restarted = now.instance.is_some() && now.instance != intent.instance;
        now.tun_queue
            .map(|q| (q, restarted))
            .ok_or_else(|| "its /status no longer has the TUN queue counters".to_owned())
    });
    let txqlen = ip_json(&["-j", "link", "show", "dev", tun])
        .ok()
        .and_then(|v| parse_link_txqlen(&v));
    tun_queue_check(tun, txqlen, before, after)
}

/// Returns the `txqlen` of `ip -j link show dev X` output.
fn parse_link_txqlen(v: &Value) -> Option<u32> {
    u32::try_from(v.as_array()?.first()?["txqlen"].as_u64()?).ok()
}

/// Whether `net` is routed into `tun`.
fn route_check(tun: &str, net: ipnet::IpNet) -> Check {
    let family = if net.addr().is_ipv6() { "-6" } else { "-4" };
    let routes = ip_json(&[family, "-j", "route", "show", "exact", &net.to_string()]);
    match routes.as_ref().map(route_devices) {
        Ok(devs) if devs.iter().any(|d| d == tun) => {
            Check::ok("route.overlay", format!("{net} dev {tun}"))
        }
        Ok(devs) => Check::fail(
            "route.overlay",
            match devs.first() {
                Some(d) => format!("{net} is routed to {d}, not into {tun}"),
                None => format!("no route for {net} into {tun}"),
            },
            Some(format!("ip route replace {net} dev {tun}")),
        ),
        Err(e) => Check::warn("route.overlay", format!("cannot list routes: {e}"), None),
    }
}

/// A kernel VXLAN device on the node's port would take its datagrams.
fn vxlan_check(intent: &Intent, out: &mut Vec<Check>) {
    if let Backend::Vxlan { .. } = intent.backend
        && let Ok(v) = ip_json(&["-j", "-d", "link", "show", "type", "vxlan"])
    {
        let port = intent.listen.port();
        let clash: Vec<String> = vxlan_devices(&v)
            .into_iter()
            .filter(|(_, p)| *p == Some(port))
            .map(|(n, _)| n)
            .collect();
        out.push(if clash.is_empty() {
            Check::ok(
                "vxlan.kernel",
                format!("no kernel VXLAN device on port {port}"),
            )
        } else {
            Check::warn(
                "vxlan.kernel",
                format!(
                    "kernel VXLAN device {} also uses port {port} on this host",
                    clash.join(", ")
                ),
                Some(format!("ip link del {}", super::shell_quote(&clash[0]))),
            )
        });
    }
}

/// Judges whether the bridge netfilter sysctl `key` (under `/proc/sys`) `exists`: without
/// the `br_netfilter` module, traffic between pods on one bridge bypasses iptables (Services,
/// NetworkPolicy). A warning, not a failure: the overlay works without it, though flanneld
/// refuses to start.
pub fn br_netfilter_check(key: &str, exists: bool) -> Check {
    let name = key.replace('/', ".");
    if exists {
        Check::ok("sysctl.br_netfilter", format!("{name} exists"))
    } else {
        Check::warn(
            "sysctl.br_netfilter",
            format!(
                "{name} is missing (br_netfilter not loaded): traffic between pods on one \
                 bridge bypasses iptables, so Services and NetworkPolicy miss it"
            ),
            Some("modprobe br_netfilter".to_owned()),
        )
    }
}

/// Judges `net.ipv4.ip_forward` (the file's text, or why it could not be read).
pub fn ip_forward_check(value: Result<String, String>) -> Check {
    match value.as_deref().map(str::trim) {
        Ok("1") => Check::ok("sysctl.ip_forward", "net.ipv4.ip_forward = 1"),
        Ok(v) => Check::fail(
            "sysctl.ip_forward",
            format!("net.ipv4.ip_forward = {v}: the kernel does not forward between TUN and pods"),
            Some("sysctl -w net.ipv4.ip_forward=1".to_owned()),
        ),
        Err(e) => Check::warn("sysctl.ip_forward", e.clone(), None),
    }
}

/// Judges `net.ipv6.conf.all.forwarding` (the file's text, or why it could not be read).
pub fn ipv6_forwarding_check(value: Result<String, String>) -> Check {
    match value.as_deref().map(str::trim) {
        Ok("1") => Check::ok("sysctl.ipv6_forwarding", "net.ipv6.conf.all.forwarding = 1"),
        Ok(v) => Check::fail(
            "sysctl.ipv6_forwarding",
            format!(
                "net.ipv6.conf.all.forwarding = {v}: the kernel does not forward IPv6 between \
                 TUN and pods"
            ),
            Some("sysctl -w net.ipv6.conf.all.forwarding=1".to_owned()),
        ),
        Err(e) => Check::warn("sysctl.ipv6_forwarding", e.clone(), None),
    }
}

/// Judges reverse-path filtering on the TUN device: the kernel applies the larger of
/// `conf/all/rp_filter` and `conf/<dev>/rp_filter` (ip-sysctl.rst). Strict mode (1) drops any
/// overlay packet whose source is not routed back through the device it came in on, which
/// breaks as soon as a pod's route is more specific elsewhere; loose (2) and off (0) pass.
pub fn rp_filter_check(
    tun: &str,
    all: Result<String, String>,
    dev: Result<String, String>,
) -> Check {
    let num =
        |r: &Result<String, String>| r.as_ref().ok().and_then(|s| s.trim().parse::<u8>().ok());
    let (Some(a), Some(d)) = (num(&all), num(&dev)) else {
        return Check::warn(
            "sysctl.rp_filter",
            format!("cannot read rp_filter for all and {tun}"),
            None,
        );
    };
    if a.max(d) == 1 {
        let mut fix = Vec::new();
        if a == 1 {
            fix.push("sysctl -w net.ipv4.conf.all.rp_filter=2".to_owned());
        }
        if d == 1 {
            fix.push(format!("sysctl -w net.ipv4.conf.{tun}.rp_filter=2"));
        }
        Check::fail(
            "sysctl.rp_filter",
            format!(
                "strict reverse-path filtering on {tun} (all={a}, {tun}={d}): a pod packet is \
                 dropped whenever the route back to its source does not leave through {tun}"
            ),
            Some(fix.join("; ")),
        )
    } else {
        Check::ok("sysctl.rp_filter", format!("all={a}, {tun}={d}"))
    }
}

/// Compares the subnet file at `path` with the node: network, subnet and `FLANNEL_MTU`
/// against the device's MTU `mtu`.
fn subnet_file_check(path: &Path, intent: &Intent, mtu: u32) -> Check {
    let shown = path.display();
    let text = match read_bounded(path) {
        Ok(t) => t,
        Err(e) => {
            return Check::fail(
                "subnet_file",
                format!("cannot read {shown}: {e}"),
                Some("restart fustian run (it writes the file once ready)".to_owned()),
            );
        }
    };
    let env = parse_subnet_env(&text);
    // flanneld's names: FLANNEL_NETWORK for IPv4, FLANNEL_IPV6_NETWORK for IPv6.
    for (network, _) in intent.overlays() {
        let (name, found) = if network.addr().is_ipv6() {
            ("FLANNEL_IPV6_NETWORK", &env.ipv6_network)
        } else {
            ("FLANNEL_NETWORK", &env.network)
        };
        let want_net = network.to_string();
        if found.as_deref() != Some(want_net.as_str()) {
            return Check::fail(
                "subnet_file",
                format!(
                    "{shown}: {name} is {:?}, the node's network is {want_net}",
                    found.clone().unwrap_or_default()
                ),
                Some("restart fustian run (it rewrites the file)".to_owned()),
            );
        }
    }
    match env.mtu {
        Some(m) if m == mtu => Check::ok("subnet_file.mtu", format!("{shown}: FLANNEL_MTU={m}")),
        other => Check::fail(
            "subnet_file.mtu",
            format!(
                "{shown}: FLANNEL_MTU={} but {} has MTU {mtu}: pods get the wrong MTU",
                other.map_or("(missing)".to_owned(), |m| m.to_string()),
                intent.tun
            ),
            Some(if mtu == intent.mtu {
                format!(
                    "sed -i 's/^FLANNEL_MTU=.*/FLANNEL_MTU={mtu}/' {}",
                    super::shell_quote(&path.to_string_lossy())
                )
            } else {
                format!("ip link set dev {} mtu {}", intent.tun, intent.mtu)
            }),
        ),
    }
}

/// Parses a subnet file as flanneld's readers do ([`crate::control::dotenv::value`]: quotes,
/// `export`, comments, the later of two lines); unknown and malformed lines are ignored.
pub fn parse_subnet_env(text: &str) -> SubnetEnv {
    let get = |key| crate::control::dotenv::value(text, key);
    SubnetEnv {
        network: get("FLANNEL_NETWORK"),
        subnet: get("FLANNEL_SUBNET"),
        mtu: get("FLANNEL_MTU").and_then(|v| v.parse().ok()),
        ipv6_network: get("FLANNEL_IPV6_NETWORK"),
        ipv6_subnet: get("FLANNEL_IPV6_SUBNET"),
    }
}

/// Parses `ip -j addr show dev X` (a one-element array); `None` when the device is missing.
pub fn parse_link(v: &Value) -> Option<LinkState> {
    let link = v.as_array()?.first()?;
    let up = link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"));
    let mtu = u32::try_from(link["mtu"].as_u64()?).ok()?;
    let addrs = link["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| {
                    let ip = x["local"].as_str()?.parse().ok()?;
                    let len = u8::try_from(x["prefixlen"].as_u64()?).ok()?;
                    Some((ip, len))
                })
                .collect()
        })
        .unwrap_or_default();
    Some(LinkState { up, mtu, addrs })
}

/// Returns the devices of the routes in `ip -j route show` output.
pub fn route_devices(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["dev"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Returns each VXLAN device of `ip -j -d link show type vxlan` with its UDP port.
pub fn vxlan_devices(v: &Value) -> Vec<(String, Option<u16>)> {
    crate::iface::kernel_vteps(v)
        .into_iter()
        .map(|d| (d.name, d.port.and_then(|p| u16::try_from(p).ok())))
        .collect()
}

/// The largest file or command output read (a large ruleset's JSON included).
const READ_LIMIT: u64 = 16 << 20;

/// Reads a regular file, at most [`READ_LIMIT`] bytes ([`crate::sys::read_config_file`]). The
/// path may come from a node's answer, so nothing else is read: the open never blocks (a FIFO),
/// and the file opened must be a regular one.
fn read_bounded(path: &Path) -> std::io::Result<String> {
    crate::sys::read_config_file(path, usize::try_from(READ_LIMIT).unwrap_or(usize::MAX))
}

fn read_sysctl(key: &str) -> Result<String, String> {
    let path = Path::new("/proc/sys").join(key);
    read_bounded(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Runs `ip ARGS` and parses its JSON output.
fn ip_json(args: &[&str]) -> Result<Value, String> {
    let out = run_tool("ip", args)?;
    // A missing device: `ip` fails; an empty answer is an empty list.
    if out.trim().is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_str(&out).map_err(|e| format!("ip {}: {e}", args.join(" ")))
}

/// Runs a read-only tool and returns its standard output (bounded).
pub(crate) fn run_tool(tool: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {tool}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{tool} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let n = out
        .stdout
        .len()
        .min(usize::try_from(READ_LIMIT).unwrap_or(usize::MAX));
    Ok(String::from_utf8_lossy(&out.stdout[..n]).into_owned())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::doctor::Outcome;

    #[test]
    fn link_from_ip_json() {
        let v: Value = serde_json::from_str(
            r#"[{"ifindex":5,"ifname":"flannel0","flags":["POINTOPOINT","NOARP","UP","LOWER_UP"],
            "mtu":1472,"operstate":"UNKNOWN","txqlen":500,"addr_info":[{"family":"inet","local":"10.244.1.0",
            "prefixlen":32,"scope":"global"}]}]"#,
        )
        .unwrap();
        let l = parse_link(&v).unwrap();
        assert!(l.up);
        assert_eq!(l.mtu, 1472);
        assert_eq!(l.addrs, vec![("10.244.1.0".parse().unwrap(), 32)]);
        assert_eq!(parse_link_txqlen(&v), Some(500));
        assert_eq!(parse_link(&serde_json::json!([])), None);
        let down = serde_json::json!([{"flags": ["POINTOPOINT"], "mtu": 1400}]);
        assert!(!parse_link(&down).unwrap().up);
        assert_eq!(parse_link_txqlen(&down), None);
    }

    #[test]
    fn tun_queue_drops_while_doctor_watches_warn_above_one_in_a_thousand() {
        let q = |txqlen, before, after: Option<(u64, u64)>| {
            tun_queue_check(
                "flannel0",
                txqlen,
                before,
                after.map(|a| (a, false)).ok_or_else(|| "gone".into()),
            )
        };
        let c = q(Some(500), (0, 0), Some((0, 0)));
        assert_eq!(c.outcome, Outcome::Ok, "{c:?}");
        // Drops before doctor looked are reported, not warned of.
        let c = q(Some(500), (100, 7000), Some((1100, 7000)));
        assert_eq!(c.outcome, Outcome::Ok, "{c:?}");
        assert!(c.detail.contains("dropped 0 of 1000"), "{c:?}");
        assert!(c.detail.contains("7000 since the node started"), "{c:?}");
        let c = q(Some(500), (0, 0), Some((999_000, 1000)));
        assert_eq!(c.outcome, Outcome::Ok, "1 in 1000 is the limit: {c:?}");
        let c = q(Some(500), (1, 1), Some((999_000, 1002)));
        assert_eq!(c.outcome, Outcome::Warn, "{c:?}");
        assert!(c.detail.contains("500-packet transmit queue"), "{c:?}");
        let fix = c.fix.expect("a fix");
        assert!(fix.contains("--tun-txqueuelen 2000"), "{fix}");
        assert!(
            fix.contains("ip link set dev flannel0 txqueuelen 2000"),
            "{fix}"
        );
        // A restarted node (counts went back): its counts are the window.
        let c = q(Some(500), (5000, 10), Some((10, 5)));
        assert_eq!(c.outcome, Outcome::Warn, "{c:?}");
        // One that restarted and has counted past the first reading already: the same.
        let restarted = |after| tun_queue_check("flannel0", Some(500), (100, 0), Ok((after, true)));
        let c = restarted((150, 10));
        assert_eq!(c.outcome, Outcome::Warn, "{c:?}");
        assert!(c.detail.contains("dropped 10 of 160"), "{c:?}");
        let c = restarted((150, 0));
        assert_eq!(c.outcome, Outcome::Ok, "{c:?}");
        // No second reading: cannot be checked, and says why.
        let c = q(Some(500), (0, 0), None);
        assert_eq!(c.outcome, Outcome::Warn);
        assert!(c.detail.contains("gone"), "{c:?}");
        // A queue the kernel did not list, and the largest queue: the fix stays in range.
        let c = q(None, (0, 0), Some((0, 5)));
        assert!(c.fix.expect("a fix").contains("--tun-txqueuelen 2000"));
        let c = q(Some(9_000), (0, 0), Some((10, u64::MAX)));
        assert!(c.fix.expect("a fix").contains("--tun-txqueuelen 10000"));
        // At the limit, a longer queue is no fix.
        let c = q(Some(10_000), (0, 0), Some((10, 10)));
        let fix = c.fix.expect("a fix");
        assert!(
            fix.contains("at fustian's limit") && fix.contains("--threads"),
            "{fix}"
        );
    }

    #[test]
    fn routes_and_vxlan() {
        let v = serde_json::json!([{"dst": "10.244.0.0/16", "dev": "flannel0", "scope": "link"}]);
        assert_eq!(route_devices(&v), vec!["flannel0"]);
        let v = serde_json::json!([{"ifname": "flannel.1", "linkinfo": {"info_kind": "vxlan",
            "info_data": {"id": 1, "port": 8472}}}]);
        assert_eq!(
            vxlan_devices(&v),
            vec![("flannel.1".to_owned(), Some(8472))]
        );
    }

    #[test]
    fn subnet_env() {
        let env = parse_subnet_env(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1472\n\
             FLANNEL_IPMASQ=false\n",
        );
        assert_eq!(env.network.as_deref(), Some("10.244.0.0/16"));
        assert_eq!(env.subnet.as_deref(), Some("10.244.1.1/24"));
        assert_eq!(env.mtu, Some(1472));
        assert_eq!(parse_subnet_env("FLANNEL_MTU=x").mtu, None);
        // Read as flanneld's readers read it: quotes, `export`, comments, the later line.
        let quoted = parse_subnet_env(
            "export FLANNEL_NETWORK=\"10.244.0.0/16\"\nFLANNEL_MTU=1400 # lowered\n\
             # FLANNEL_SUBNET=10.244.9.1/24\nFLANNEL_SUBNET='10.244.1.1/24'\nFLANNEL_MTU=1472\n",
        );
        assert_eq!(quoted.network.as_deref(), Some("10.244.0.0/16"));
        assert_eq!(quoted.subnet.as_deref(), Some("10.244.1.1/24"));
        assert_eq!(quoted.mtu, Some(1472));
        assert_eq!(parse_subnet_env("FLANNEL_MTU=1400 # x\n").mtu, Some(1400));
        let dual = parse_subnet_env(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n\
             FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n",
        );
        assert_eq!(dual.ipv6_network.as_deref(), Some("fd00:10:244::/56"));
        assert_eq!(dual.ipv6_subnet.as_deref(), Some("fd00:10:244:1::1/64"));
        assert_eq!(dual.network.as_deref(), Some("10.244.0.0/16"));
    }

    #[test]
    fn br_netfilter_is_a_warning_when_missing() {
        let key = "net/bridge/bridge-nf-call-iptables";
        let there = br_netfilter_check(key, true);
        assert_eq!(there.outcome, super::super::Outcome::Ok);
        let missing = br_netfilter_check(key, false);
        assert_eq!(missing.outcome, super::super::Outcome::Warn);
        assert!(
            missing
                .detail
                .contains("net.bridge.bridge-nf-call-iptables")
        );
        assert_eq!(missing.fix.as_deref(), Some("modprobe br_netfilter"));
    }

    #[test]
    fn sysctls() {
        assert_eq!(
            ip_forward_check(Ok("1\n".into())).outcome,
            super::super::Outcome::Ok
        );
        let off = ip_forward_check(Ok("0\n".into()));
        assert_eq!(off.outcome, super::super::Outcome::Fail);
        assert_eq!(off.fix.as_deref(), Some("sysctl -w net.ipv4.ip_forward=1"));
        let strict = rp_filter_check("flannel0", Ok("0".into()), Ok("1".into()));
        assert_eq!(strict.outcome, super::super::Outcome::Fail);
        assert_eq!(
            strict.fix.as_deref(),
            Some("sysctl -w net.ipv4.conf.flannel0.rp_filter=2")
        );
        // The larger of the two applies.
        let all = rp_filter_check("flannel0", Ok("1".into()), Ok("0".into()));
        assert_eq!(all.outcome, super::super::Outcome::Fail);
        let loose = rp_filter_check("flannel0", Ok("1".into()), Ok("2".into()));
        assert_eq!(loose.outcome, super::super::Outcome::Ok);
        let unknown = rp_filter_check("flannel0", Err("no".into()), Ok("2".into()));
        assert_eq!(unknown.outcome, super::super::Outcome::Warn);
    }

    proptest! {
        #[test]
        fn parsers_take_any_text(text in ".{0,400}") {
            let _ = parse_subnet_env(&text);
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                let _ = parse_link(&v);
                let _ = parse_link_txqlen(&v);
                let _ = route_devices(&v);
                let _ = vxlan_devices(&v);
            }
        }

        #[test]
        fn subnet_env_reads_back_its_mtu(
            mtu in any::<u32>(),
            form in 0usize..6,
            junk in "[A-Z_]{0,12}=[ -~]{0,20}",
        ) {
            // Every way flanneld's readers accept a value: bare, quoted, exported, commented.
            let line = match form {
                0 => format!("FLANNEL_MTU={mtu}"),
                1 => format!("FLANNEL_MTU=\"{mtu}\""),
                2 => format!("FLANNEL_MTU='{mtu}'"),
                3 => format!("export FLANNEL_MTU={mtu}"),
                4 => format!("FLANNEL_MTU = {mtu} # set by the node"),
                _ => format!("FLANNEL_MTU: {mtu}\r"),
            };
            // Junk before the line never wins (the later line does); junk after it wins only
            // when it names the key itself.
            let before = format!("{junk}\n{line}\n");
            prop_assert_eq!(parse_subnet_env(&before).mtu, Some(mtu));
            let after = format!("{line}\n{junk}\n");
            let names_key = junk.split(['=', ':']).next().is_some_and(|k| k.trim() == "FLANNEL_MTU");
            if !names_key {
                prop_assert_eq!(parse_subnet_env(&after).mtu, Some(mtu));
            }
        }
    }
}
