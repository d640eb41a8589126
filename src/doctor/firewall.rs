//! Does the `FORWARD` hook let overlay traffic through? Reads the filter table of iptables
//! (`iptables-legacy-save` and `iptables-nft-save`, or `iptables-save`) and the base chains of
//! nftables hooked at `forward` (`nft -j list ruleset`), and walks them for two packets: one
//! from a remote pod arriving on the TUN device for a local pod, one from a local pod leaving
//! through it.
//!
//! The walk is deliberately simple: a rule takes part when all it matches on is the source or
//! destination network, the input or output interface and the protocol `all`; a rule with any
//! other match (connection state, ports, marks) never decides (new connections are what must
//! pass). A rule that names the interface the packet's other side uses (the pods' bridge, not
//! known here) cannot be judged: if such an `ACCEPT` is skipped before a drop, the verdict is
//! uncertain (a warning), not a failure.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use super::local::run_tool;
use super::{Check, Intent};

/// One rule in the form the walk understands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    /// `-s`: the network and whether it is negated.
    pub src: Option<(bool, IpNet)>,
    /// `-d`.
    pub dst: Option<(bool, IpNet)>,
    /// `-i`: the interface (a trailing `+` is a prefix) and whether it is negated.
    pub in_if: Option<(bool, String)>,
    /// `-o`.
    pub out_if: Option<(bool, String)>,
    /// The rule matches on something the walk does not model.
    pub conditional: bool,
    /// `-j`/`-g` target, or the nftables verdict (`ACCEPT`, `DROP`, `RETURN`, a chain).
    pub target: Option<String>,
    /// `-g` (goto) rather than `-j` (jump).
    pub goto: bool,
}

/// A chain: its policy (base chains) and rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    /// Its name.
    pub name: String,
    /// `ACCEPT` or `DROP` for a base chain.
    pub policy: Option<String>,
    /// Its rules, in order.
    pub rules: Vec<Rule>,
}

/// The packet the walk follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow<'a> {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// The input interface, when known.
    pub in_if: Option<&'a str>,
    /// The output interface, when known.
    pub out_if: Option<&'a str>,
}

/// What the walk concludes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted: by a rule, or by the policy.
    Accepted,
    /// Dropped: by the named rule (chain and 1-based position), or by the policy.
    Dropped(String),
    /// Dropped by what the walk reached, but an `ACCEPT` it could not judge came first.
    Uncertain(String),
}

/// Parses the `*filter` table of `iptables-save` output into its chains (other tables are
/// skipped). Lines it does not understand are skipped; a rule with options it does not model
/// is conditional.
pub fn parse_iptables_save(text: &str) -> Vec<Chain> {
    let mut chains: Vec<Chain> = Vec::new();
    let mut in_filter = false;
    for line in text.lines() {
        let line = line.trim();
        if let Some(table) = line.strip_prefix('*') {
            in_filter = table == "filter";
            continue;
        }
        if !in_filter {
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            let mut parts = decl.split_whitespace();
            let (Some(name), Some(policy)) = (parts.next(), parts.next()) else {
                continue;
            };
            if chains.iter().all(|c| c.name != name) {
                chains.push(Chain {
                    name: name.to_owned(),
                    policy: (policy != "-").then(|| policy.to_owned()),
                    rules: Vec::new(),
                });
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let words = split_words(rest);
            let Some((chain, args)) = words.split_first() else {
                continue;
            };
            let rule = parse_rule(args);
            match chains.iter_mut().find(|c| &c.name == chain) {
                Some(c) => c.rules.push(rule),
                None => chains.push(Chain {
                    name: chain.clone(),
                    policy: None,
                    rules: vec![rule],
                }),
            }
        }
    }
    chains
}

/// Walks `chains` from `start` for `flow`.
pub fn walk(chains: &[Chain], start: &str, flow: &Flow<'_>) -> Verdict {
    let Some(chain) = chains.iter().find(|c| c.name == start) else {
        return Verdict::Accepted;
    };
    let mut skipped_accept = false;
    match walk_chain(chains, chain, flow, 0, &mut skipped_accept) {
        Step::Accept => Verdict::Accepted,
        Step::Drop(by) if skipped_accept => Verdict::Uncertain(by),
        Step::Drop(by) => Verdict::Dropped(by),
        Step::Continue => match chain.policy.as_deref() {
            Some("DROP") if skipped_accept => Verdict::Uncertain(format!("{start} policy DROP")),
            Some("DROP") => Verdict::Dropped(format!("{start} policy DROP")),
            _ => Verdict::Accepted,
        },
    }
}

/// Reads the base chains hooked at `forward` and the chains they jump to from `nft -j list
/// ruleset` output, one list per base chain (table family and name, then chains with the base
/// chain first). `skip` names tables (family, name) already read another way.
pub fn parse_nft_json(v: &Value, skip: &[(&str, &str)]) -> Vec<(String, Vec<Chain>)> {
    let Some(items) = v["nftables"].as_array() else {
        return Vec::new();
    };
    let mut chains: Vec<(String, String, Chain, bool)> = Vec::new();
    for item in items {
        let c = &item["chain"];
        if let (Some(family), Some(table), Some(name)) = (
            c["family"].as_str(),
            c["table"].as_str(),
            c["name"].as_str(),
        ) {
            let base = c["hook"] == "forward" && c["type"] == "filter";
            chains.push((
                family.to_owned(),
                table.to_owned(),
                Chain {
                    name: name.to_owned(),
                    policy: c["policy"].as_str().map(str::to_ascii_uppercase),
                    rules: Vec::new(),
                },
                base,
            ));
        }
    }
    for item in items {
        let r = &item["rule"];
        if let (Some(family), Some(table), Some(chain), Some(expr)) = (
            r["family"].as_str(),
            r["table"].as_str(),
            r["chain"].as_str(),
            r["expr"].as_array(),
        ) && let Some((.., c, _)) = chains
            .iter_mut()
            .find(|(f, t, c, _)| f == family && t == table && c.name == chain)
        {
            c.rules.push(nft_rule(expr));
        }
    }
    let mut out = Vec::new();
    for (family, table, base, is_base) in &chains {
        if !is_base || skip.contains(&(family.as_str(), table.as_str())) {
            continue;
        }
        let mut list = vec![base.clone()];
        list.extend(
            chains
                .iter()
                .filter(|(f, t, c, _)| f == family && t == table && c.name != base.name)
                .map(|(.., c, _)| c.clone()),
        );
        out.push((format!("nft {family} {table} {}", base.name), list));
    }
    out
}

/// Runs the firewall checks.
pub fn checks(intent: &Intent) -> Vec<Check> {
    let flows = flows(intent);
    let mut out = Vec::new();
    let mut read_any = false;
    let mut nft_compat = false;
    for tool in ["iptables-legacy-save", "iptables-nft-save"] {
        // Naming a legacy table that is not there would load the kernel module that makes
        // it: ask only for a table the kernel already lists.
        if tool == "iptables-legacy-save"
            && !std::fs::read_to_string("/proc/net/ip_tables_names")
                .is_ok_and(|names| names.lines().any(|n| n == "filter"))
        {
            continue;
        }
        let Ok(text) = run_tool(tool, &["-t", "filter"]) else {
            continue;
        };
        read_any = true;
        nft_compat |= tool == "iptables-nft-save";
        let chains = parse_iptables_save(&text);
        let what = if tool.contains("legacy") {
            "iptables-legacy"
        } else {
            "iptables-nft"
        };
        out.push(judge(
            &format!("firewall.{what}"),
            &chains,
            "FORWARD",
            &flows,
            intent,
            what,
        ));
    }
    if !read_any && let Ok(text) = run_tool("iptables-save", &["-t", "filter"]) {
        read_any = true;
        let chains = parse_iptables_save(&text);
        out.push(judge(
            "firewall.iptables",
            &chains,
            "FORWARD",
            &flows,
            intent,
            "iptables",
        ));
    }
    let skip: &[(&str, &str)] = if nft_compat {
        &[("ip", "filter"), ("ip6", "filter")]
    } else {
        &[]
    };
    match run_tool("nft", &["-j", "list", "ruleset"]).map(|t| serde_json::from_str::<Value>(&t)) {
        Ok(Ok(v)) => {
            read_any = true;
            for (name, chains) in parse_nft_json(&v, skip) {
                let start = chains[0].name.clone();
                out.push(judge(
                    &format!("firewall.{name}"),
                    &chains,
                    &start,
                    &flows,
                    intent,
                    "nft",
                ));
            }
        }
        Ok(Err(e)) => out.push(Check::warn(
            "firewall.nft",
            format!("cannot read `nft -j list ruleset`: {e}"),
            None,
        )),
        // No nft, or no permission: iptables above is what there is.
        Err(_) => {}
    }
    if !read_any {
        out.push(Check::warn(
            "firewall",
            "neither iptables-save nor nft could be run: the FORWARD hook was not checked",
            None,
        ));
    }
    out
}

fn judge(
    name: &str,
    chains: &[Chain],
    start: &str,
    flows: &[(&str, Flow<'_>)],
    intent: &Intent,
    tool: &str,
) -> Check {
    let net = intent.network.trunc();
    let fix = if tool == "nft" {
        let mut words = name.trim_start_matches("firewall.nft ").split(' ');
        let (f, t, c) = (
            words.next().unwrap_or("ip"),
            words.next().unwrap_or("filter"),
            words.next().unwrap_or("forward"),
        );
        format!(
            "nft insert rule {f} {t} {c} ip saddr {net} accept; nft insert rule {f} {t} {c} ip daddr {net} accept"
        )
    } else {
        let bin = match tool {
            "iptables-legacy" => "iptables-legacy",
            "iptables-nft" => "iptables-nft",
            _ => "iptables",
        };
        format!("{bin} -I FORWARD -s {net} -j ACCEPT; {bin} -I FORWARD -d {net} -j ACCEPT")
    };
    for (dir, flow) in flows {
        match walk(chains, start, flow) {
            Verdict::Accepted => {}
            Verdict::Dropped(by) => {
                return Check::fail(
                    name,
                    format!(
                        "{dir} overlay traffic ({} -> {}) is dropped by {by}",
                        flow.src, flow.dst
                    ),
                    Some(fix),
                );
            }
            Verdict::Uncertain(by) => {
                return Check::warn(
                    name,
                    format!(
                        "{dir} overlay traffic ({} -> {}) reaches {by} unless an interface-specific ACCEPT before it applies",
                        flow.src, flow.dst
                    ),
                    Some(fix),
                );
            }
        }
    }
    Check::ok(name, format!("FORWARD lets {net} through both ways"))
}

/// The two packets: a remote pod to a local one in through TUN, and back out.
fn flows(intent: &Intent) -> Vec<(&'static str, Flow<'_>)> {
    let local = nth_host(&intent.subnet, 2);
    let remote = intent
        .peers
        .first()
        .map_or_else(|| other_host(intent), |p| nth_host(&p.subnet, 2));
    vec![
        (
            "incoming",
            Flow {
                src: remote,
                dst: local,
                in_if: Some(&intent.tun),
                out_if: None,
            },
        ),
        (
            "outgoing",
            Flow {
                src: local,
                dst: remote,
                in_if: None,
                out_if: Some(&intent.tun),
            },
        ),
    ]
}

/// An address of the network outside the node's subnet.
fn other_host(intent: &Intent) -> IpAddr {
    intent
        .network
        .subnets(intent.subnet.prefix_len())
        .ok()
        .and_then(|mut s| s.find(|n| *n != intent.subnet.trunc()))
        .map_or(intent.network.network(), |n| nth_host(&n, 2))
}

fn nth_host(net: &IpNet, n: u32) -> IpAddr {
    match net {
        IpNet::V4(v4) => IpAddr::V4((u32::from(v4.network()).wrapping_add(n)).into()),
        IpNet::V6(v6) => IpAddr::V6((u128::from(v6.network()).wrapping_add(u128::from(n))).into()),
    }
}

/// Chains deeper than this are not followed (iptables itself limits jumps by loops only).
const MAX_DEPTH: usize = 16;

enum Step {
    Accept,
    Continue,
    Drop(String),
}

fn walk_chain(
    chains: &[Chain],
    chain: &Chain,
    flow: &Flow<'_>,
    depth: usize,
    skipped_accept: &mut bool,
) -> Step {
    if depth > MAX_DEPTH {
        return Step::Continue;
    }
    for (i, rule) in chain.rules.iter().enumerate() {
        let Some(target) = rule.target.as_deref() else {
            continue;
        };
        match rule_matches(rule, flow) {
            Some(true) => {}
            Some(false) => continue,
            None => {
                if target == "ACCEPT" {
                    *skipped_accept = true;
                }
                continue;
            }
        }
        match target {
            "ACCEPT" => return Step::Accept,
            "DROP" | "REJECT" => return Step::Drop(format!("{} rule {}", chain.name, i + 1)),
            "RETURN" => return Step::Continue,
            other => {
                if let Some(next) = chains.iter().find(|c| c.name == other) {
                    match walk_chain(chains, next, flow, depth + 1, skipped_accept) {
                        Step::Continue if rule.goto => return Step::Continue,
                        Step::Continue => {}
                        decided => return decided,
                    }
                }
            }
        }
    }
    Step::Continue
}

/// Whether `rule` matches `flow`: `None` when it cannot be judged (it names an interface the
/// flow leaves unknown) or it matches on more than the walk models.
fn rule_matches(rule: &Rule, flow: &Flow<'_>) -> Option<bool> {
    if rule.conditional {
        return Some(false);
    }
    let net_ok = |m: &Option<(bool, IpNet)>, ip: IpAddr| {
        m.as_ref()
            .is_none_or(|(neg, net)| net.contains(&ip) != *neg)
    };
    if !net_ok(&rule.src, flow.src) || !net_ok(&rule.dst, flow.dst) {
        return Some(false);
    }
    let mut unknown = false;
    for (m, actual) in [(&rule.in_if, flow.in_if), (&rule.out_if, flow.out_if)] {
        if let Some((neg, name)) = m {
            match actual {
                Some(a) => {
                    if if_matches(name, a) == *neg {
                        return Some(false);
                    }
                }
                None => unknown = true,
            }
        }
    }
    if unknown { None } else { Some(true) }
}

fn if_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('+') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Parses the options of one `-A` line.
fn parse_rule(args: &[String]) -> Rule {
    let mut rule = Rule::default();
    let mut i = 0;
    let mut negate = false;
    while i < args.len() {
        let a = args[i].as_str();
        let value = args.get(i + 1).map(String::as_str);
        i += 1;
        match a {
            "!" => {
                negate = true;
                continue;
            }
            "-s" | "--source" | "-d" | "--destination" => {
                let net = value.and_then(parse_net);
                i += 1;
                match net {
                    Some(n) if a.starts_with("-s") || a == "--source" => {
                        rule.src = Some((negate, n))
                    }
                    Some(n) => rule.dst = Some((negate, n)),
                    None => rule.conditional = true,
                }
            }
            "-i" | "--in-interface" | "-o" | "--out-interface" => {
                let m = value.map(|v| (negate, v.to_owned()));
                i += 1;
                if a.starts_with("-i") || a == "--in-interface" {
                    rule.in_if = m;
                } else {
                    rule.out_if = m;
                }
            }
            "-p" | "--protocol" => {
                if negate || value != Some("all") {
                    rule.conditional = true;
                }
                i += 1;
            }
            "-j" | "--jump" | "-g" | "--goto" => {
                rule.target = value.map(str::to_owned);
                rule.goto = a == "-g" || a == "--goto";
                i += 1;
            }
            "-m" | "--match" => {
                if value != Some("comment") {
                    rule.conditional = true;
                }
                i += 1;
            }
            "--comment" => i += 1,
            // Options of a target (`--reject-with ...`) or of a match already marked.
            _ => {
                if rule.target.is_none() {
                    rule.conditional = true;
                }
                if value.is_some_and(|v| !v.starts_with('-')) {
                    i += 1;
                }
            }
        }
        negate = false;
    }
    rule
}

fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Splits an `iptables-save` line into words, honouring double quotes (comments).
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut has = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                has = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if has {
                    words.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            c => {
                cur.push(c);
                has = true;
            }
        }
    }
    if has {
        words.push(cur);
    }
    words
}

/// Turns one nftables rule's expressions into a [`Rule`].
fn nft_rule(expr: &[Value]) -> Rule {
    let mut rule = Rule::default();
    for e in expr {
        if let Some(m) = e.get("match") {
            let negate = match m["op"].as_str() {
                Some("==" | "in") => false,
                Some("!=") => true,
                _ => {
                    rule.conditional = true;
                    continue;
                }
            };
            let left = &m["left"];
            let right = &m["right"];
            if left["payload"]["protocol"] == "ip" || left["payload"]["protocol"] == "ip6" {
                let net = match right {
                    Value::String(s) => parse_net(s),
                    v => v["prefix"]["addr"].as_str().and_then(|a| {
                        parse_net(&format!("{a}/{}", v["prefix"]["len"].as_u64().unwrap_or(0)))
                    }),
                };
                match (left["payload"]["field"].as_str(), net) {
                    (Some("saddr"), Some(n)) => rule.src = Some((negate, n)),
                    (Some("daddr"), Some(n)) => rule.dst = Some((negate, n)),
                    _ => rule.conditional = true,
                }
            } else if let (Some(key), Some(name)) = (left["meta"]["key"].as_str(), right.as_str()) {
                let m = Some((negate, name.replace('*', "+")));
                match key {
                    "iifname" => rule.in_if = m,
                    "oifname" => rule.out_if = m,
                    _ => rule.conditional = true,
                }
            } else {
                rule.conditional = true;
            }
        } else if e.get("accept").is_some() {
            rule.target = Some("ACCEPT".to_owned());
        } else if e.get("drop").is_some() || e.get("reject").is_some() {
            rule.target = Some("DROP".to_owned());
        } else if e.get("return").is_some() {
            rule.target = Some("RETURN".to_owned());
        } else if let Some(t) = e["jump"]["target"].as_str() {
            rule.target = Some(t.to_owned());
        } else if let Some(t) = e["goto"]["target"].as_str() {
            rule.target = Some(t.to_owned());
            rule.goto = true;
        } else if e.get("counter").is_none() && e.get("comment").is_none() {
            // log, limit, ct state, xt (an iptables-nft match), ...: not modelled.
            if e.get("log").is_none() {
                rule.conditional = true;
            }
        }
    }
    rule
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const FLANNEL_SAVE: &str = r#"# Generated by iptables-nft-save v1.8.9
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [10:600]
:OUTPUT ACCEPT [0:0]
:FLANNEL-FWD - [0:0]
-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
COMMIT
"#;

    fn flow_in() -> Flow<'static> {
        Flow {
            src: "10.244.2.2".parse().unwrap(),
            dst: "10.244.1.2".parse().unwrap(),
            in_if: Some("flannel0"),
            out_if: None,
        }
    }

    #[test]
    fn flannel_rules_accept_under_a_drop_policy() {
        let chains = parse_iptables_save(FLANNEL_SAVE);
        assert_eq!(chains.len(), 4);
        assert_eq!(chains[1].policy.as_deref(), Some("DROP"));
        assert!(chains[1].rules[0].conditional);
        assert_eq!(walk(&chains, "FORWARD", &flow_in()), Verdict::Accepted);
    }

    #[test]
    fn drop_policy_and_drop_rules_are_named() {
        let policy = "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -m conntrack --ctstate ESTABLISHED -j ACCEPT\nCOMMIT\n";
        assert_eq!(
            walk(&parse_iptables_save(policy), "FORWARD", &flow_in()),
            Verdict::Dropped("FORWARD policy DROP".into())
        );
        let rule = "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -s 192.0.2.0/24 -j DROP\n-A FORWARD -d 10.244.0.0/16 -j DROP\nCOMMIT\n";
        assert_eq!(
            walk(&parse_iptables_save(rule), "FORWARD", &flow_in()),
            Verdict::Dropped("FORWARD rule 2".into())
        );
        let negated = "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD ! -s 10.244.0.0/16 -j DROP\n-A FORWARD -i eth0 -j DROP\n-A FORWARD -p tcp --dport 22 -j DROP\nCOMMIT\n";
        assert_eq!(
            walk(&parse_iptables_save(negated), "FORWARD", &flow_in()),
            Verdict::Accepted
        );
        let reject = "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -i flannel+ -j REJECT --reject-with icmp-port-unreachable\nCOMMIT\n";
        assert!(matches!(
            walk(&parse_iptables_save(reject), "FORWARD", &flow_in()),
            Verdict::Dropped(_)
        ));
    }

    #[test]
    fn an_accept_on_the_unknown_side_is_uncertain() {
        let t = "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -o cni0 -j ACCEPT\nCOMMIT\n";
        assert!(matches!(
            walk(&parse_iptables_save(t), "FORWARD", &flow_in()),
            Verdict::Uncertain(_)
        ));
    }

    #[test]
    fn other_tables_are_skipped() {
        let t = "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -j DROP\nCOMMIT\n*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n";
        let chains = parse_iptables_save(t);
        assert_eq!(chains.len(), 1);
        assert_eq!(walk(&chains, "FORWARD", &flow_in()), Verdict::Accepted);
    }

    #[test]
    fn nft_forward_chains() {
        let v: Value = serde_json::from_str(
            r#"{"nftables":[{"metainfo":{"json_schema_version":1}},
            {"table":{"family":"inet","name":"fw","handle":1}},
            {"chain":{"family":"inet","table":"fw","name":"fwd","handle":1,"type":"filter","hook":"forward","prio":0,"policy":"drop"}},
            {"chain":{"family":"inet","table":"fw","name":"pods","handle":2}},
            {"rule":{"family":"inet","table":"fw","chain":"fwd","handle":3,"expr":[{"jump":{"target":"pods"}}]}},
            {"rule":{"family":"inet","table":"fw","chain":"pods","handle":4,"expr":[
              {"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"saddr"}},"right":{"prefix":{"addr":"10.244.0.0","len":16}}}},
              {"counter":{"packets":0,"bytes":0}},{"accept":null}]}}]}"#,
        )
        .unwrap();
        let found = parse_nft_json(&v, &[]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "nft inet fw fwd");
        let chains = &found[0].1;
        assert_eq!(walk(chains, "fwd", &flow_in()), Verdict::Accepted);
        let out = Flow {
            src: "192.0.2.9".parse().unwrap(),
            dst: "10.244.2.2".parse().unwrap(),
            in_if: None,
            out_if: Some("flannel0"),
        };
        assert_eq!(
            walk(chains, "fwd", &out),
            Verdict::Dropped("fwd policy DROP".into())
        );
        assert!(parse_nft_json(&v, &[("inet", "fw")]).is_empty());
    }

    #[test]
    fn words() {
        assert_eq!(
            split_words(r#"FORWARD -m comment --comment "a \"b\" c" -j X"#),
            vec![
                "FORWARD",
                "-m",
                "comment",
                "--comment",
                "a \"b\" c",
                "-j",
                "X"
            ]
        );
    }

    fn arb_rule() -> impl Strategy<Value = String> {
        let net = prop_oneof![
            Just("10.244.0.0/16".to_owned()),
            Just("10.244.1.0/24".to_owned()),
            Just("192.0.2.0/24".to_owned()),
            Just("0.0.0.0/0".to_owned()),
        ];
        let target = prop_oneof![
            Just("ACCEPT"),
            Just("DROP"),
            Just("REJECT"),
            Just("RETURN"),
            Just("LOG"),
            Just("C1"),
        ];
        (
            prop::option::of((any::<bool>(), net.clone())),
            prop::option::of((any::<bool>(), net)),
            prop::option::of(prop_oneof![
                Just("flannel0"),
                Just("eth0"),
                Just("flannel+")
            ]),
            any::<bool>(),
            target,
        )
            .prop_map(|(s, d, i, ct, t)| {
                let mut r = String::new();
                if let Some((neg, n)) = s {
                    r += &format!("{}-s {n} ", if neg { "! " } else { "" });
                }
                if let Some((neg, n)) = d {
                    r += &format!("{}-d {n} ", if neg { "! " } else { "" });
                }
                if let Some(i) = i {
                    r += &format!("-i {i} ");
                }
                if ct {
                    r += "-m conntrack --ctstate ESTABLISHED ";
                }
                r + "-j " + t
            })
    }

    proptest! {
        #[test]
        fn any_text_parses_without_panic(text in "(\\PC{0,60}\n){0,8}") {
            let chains = parse_iptables_save(&format!("*filter\n{text}"));
            let _ = walk(&chains, "FORWARD", &flow_in());
        }

        #[test]
        fn any_json_parses_without_panic(text in "\\PC{0,300}") {
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                let _ = parse_nft_json(&v, &[]);
            }
        }

        /// A drop rule for the whole overlay network put first always wins, whatever follows,
        /// and an accept for it put first always lets the packet through.
        #[test]
        fn first_unconditional_rule_decides(
            rules in prop::collection::vec(arb_rule(), 0..8),
            policy in prop_oneof![Just("ACCEPT"), Just("DROP")],
            first in prop_oneof![Just("ACCEPT"), Just("DROP")],
        ) {
            let mut text = format!("*filter\n:FORWARD {policy} [0:0]\n:C1 - [0:0]\n-A FORWARD -d 10.244.0.0/16 -j {first}\n");
            for r in &rules {
                text += &format!("-A FORWARD {r}\n-A C1 {r}\n");
            }
            text += "COMMIT\n";
            let chains = parse_iptables_save(&text);
            let v = walk(&chains, "FORWARD", &flow_in());
            if first == "ACCEPT" {
                prop_assert_eq!(v, Verdict::Accepted);
            } else {
                prop_assert_eq!(v, Verdict::Dropped("FORWARD rule 1".into()));
            }
        }

        /// Without a policy, the walk matches a naive model of the rules it generates.
        #[test]
        fn walk_agrees_with_a_flat_model(rules in prop::collection::vec(arb_rule(), 0..8)) {
            let mut text = "*filter\n:FORWARD ACCEPT [0:0]\n".to_owned();
            for r in &rules {
                text += &format!("-A FORWARD {r}\n");
            }
            let chains = parse_iptables_save(&text);
            prop_assert_eq!(chains[0].rules.len(), rules.len());
            // Model: the first rule whose networks and input interface match, without the
            // conntrack match and with a terminal target, decides.
            let flow = flow_in();
            let mut want = Verdict::Accepted;
            for (i, r) in chains[0].rules.iter().enumerate() {
                let t = r.target.as_deref().unwrap_or("");
                if r.conditional || rule_matches(r, &flow) != Some(true) {
                    continue;
                }
                match t {
                    "ACCEPT" | "RETURN" => break,
                    "DROP" | "REJECT" => {
                        want = Verdict::Dropped(format!("FORWARD rule {}", i + 1));
                        break;
                    }
                    _ => {}
                }
            }
            prop_assert_eq!(walk(&chains, "FORWARD", &flow), want);
        }
    }
}
