//! Masquerade and forward rules, as flanneld programs them for `--ip-masq` and
//! `--iptables-forward-rules` (flannel `pkg/trafficmngr/iptables`).
//!
//! In the `nat` table, `POSTROUTING` jumps to the chain `FLANNEL-POSTRTG`, which, in order:
//! leaves alone what kube-proxy marked for masquerading itself (mark `0x4000/0x4000`),
//! pod-to-pod traffic inside the network in both directions, and traffic from outside the
//! network to this node's pods; masquerades what the network's pods send outside (except to
//! multicast), and what the host sends into the network. In the `filter` table, `FORWARD`
//! jumps to `FLANNEL-FWD`, which accepts everything from and to the network. Every rule carries
//! flanneld's comment (`flanneld masq`, `flanneld forward`), so the rules read the same in
//! `iptables -S` as a flanneld node's.
//!
//! The rules are written with the `iptables` tools (`ip6tables` for an IPv6 network):
//! `iptables-restore --noflush` writes a chain's whole contents in one transaction (declaring
//! the chain empties it), and `iptables -C` checks each rule. A thread ([`Keeper`]) checks
//! every rule every `--iptables-resync` seconds and writes the chains again when one is
//! missing or changed, and removes them when the node stops.
//!
//! Privileges: the node drops every capability after setup. The keeper thread is started
//! before that and narrows itself to `CAP_NET_ADMIN` and `CAP_NET_RAW` (plus `CAP_SETUID` and
//! `CAP_SETGID` until [`Keeper::settled`], so that a switch of user, which glibc applies to
//! every thread, succeeds on it too), which it keeps across the drop and across `--user`, and
//! raises as ambient capabilities for the tools it runs (see [`crate::sys`]). No other thread
//! keeps a privilege.
//!
//! With `EnableNFTables` in the network config (or `--nftables`) the same rules go into
//! flanneld's nftables table instead ([`nft`]), kept and removed by the same thread.
//!
//! A keeper keeps one family's rules: the network's family picks the tools (`ip6tables`, the
//! `ip6` table), and a dual-stack node runs one keeper per family.

pub mod nft;

use nft::Nft;

use std::io;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipnet::IpNet;

/// flanneld's `nat` chain.
pub const POSTROUTING_CHAIN: &str = "FLANNEL-POSTRTG";
/// flanneld's `filter` chain.
pub const FORWARD_CHAIN: &str = "FLANNEL-FWD";
/// The mark kube-proxy sets on packets it masquerades itself (flannel
/// `trafficmngr.KubeProxyMark`).
pub const KUBE_PROXY_MARK: &str = "0x4000/0x4000";

/// Errors while installing the rules.
#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    /// The tool is not installed.
    #[error(
        "the rules of --ip-masq and --iptables-forward-rules need `{tool}`, which is not \
         installed (apt-get install {package}){}",
        if *tool == "nft" {
            "; they go through nftables because the network config sets EnableNFTables or \
             --nftables is given"
        } else {
            ""
        }
    )]
    Missing {
        /// The tool.
        tool: &'static str,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// The tool ran and failed.
    #[error("`{command}` failed: {message}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status and stderr.
        message: String,
    },
    /// The tool cannot be started or waited for.
    #[error("cannot run {tool}: {source}")]
    Run {
        /// The tool.
        tool: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The keeper thread cannot be started.
    #[error("cannot start the thread that keeps the masquerade and forward rules: {0}")]
    Thread(#[source] io::Error),
}

impl MasqError {
    /// Whether the tool ran past [`TOOL_DEADLINE`] and was killed.
    #[must_use]
    pub fn timed_out(&self) -> bool {
        matches!(self, Self::Run { source, .. } if source.kind() == io::ErrorKind::TimedOut)
    }
}

/// What to program: the network, this node's subnet, and which rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The whole overlay network.
    pub network: IpNet,
    /// This node's pod subnet.
    pub subnet: IpNet,
    /// Program the masquerade rules (`--ip-masq`).
    pub masquerade: bool,
    /// Masquerade with `--random-fully` (unless `--ip-masq-fully-random-disable`, or the
    /// tool is older than 1.6.2).
    pub random_fully: bool,
    /// Program the forward rules (`--iptables-forward-rules`).
    pub forward: bool,
    /// Write them into flanneld's nftables table rather than with `iptables`
    /// (`EnableNFTables`, `--nftables`).
    pub nftables: bool,
}

/// One rule: its table, chain and match/target arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `nat` or `filter`.
    pub table: &'static str,
    /// The chain it is appended to.
    pub chain: &'static str,
    /// Everything after the chain name.
    pub args: Vec<String>,
}

impl Plan {
    /// Returns every rule in order: per table, the jump from the built-in chain first, then the
    /// chain's rules in the order they must be evaluated.
    pub fn rules(&self) -> Vec<Rule> {
        let (net, sub) = (
            self.network.trunc().to_string(),
            self.subnet.trunc().to_string(),
        );
        let multicast = if self.network.addr().is_ipv4() {
            "224.0.0.0/4"
        } else {
            "ff00::/8"
        };
        let mut rules = Vec::new();
        let nat = |chain, args: &[&str], comment: &str| Rule {
            table: "nat",
            chain,
            args: with_comment(args, comment),
        };
        if self.masquerade {
            const C: &str = "flanneld masq";
            let masq: &[&str] = if self.random_fully {
                &["-j", "MASQUERADE", "--random-fully"]
            } else {
                &["-j", "MASQUERADE"]
            };
            let p = POSTROUTING_CHAIN;
            rules.push(nat("POSTROUTING", &["-j", p], C));
            rules.push(nat(
                p,
                &["-m", "mark", "--mark", KUBE_PROXY_MARK, "-j", "RETURN"],
                C,
            ));
            rules.push(nat(p, &["-s", &sub, "-d", &net, "-j", "RETURN"], C));
            rules.push(nat(p, &["-s", &net, "-d", &sub, "-j", "RETURN"], C));
            rules.push(nat(p, &["!", "-s", &net, "-d", &sub, "-j", "RETURN"], C));
            rules.push(nat(
                p,
                &[&["-s", &net, "!", "-d", multicast][..], masq].concat(),
                C,
            ));
            rules.push(nat(
                p,
                &[&["!", "-s", &net, "-d", &net][..], masq].concat(),
                C,
            ));
        }
        if self.forward {
            const C: &str = "flanneld forward";
            let filter = |chain, args: &[&str]| Rule {
                table: "filter",
                chain,
                args: with_comment(args, C),
            };
            rules.push(filter("FORWARD", &["-j", FORWARD_CHAIN]));
            rules.push(filter(FORWARD_CHAIN, &["-s", &net, "-j", "ACCEPT"]));
            rules.push(filter(FORWARD_CHAIN, &["-d", &net, "-j", "ACCEPT"]));
        }
        rules
    }

    /// Returns the input of `iptables-restore --noflush` that writes both chains from scratch:
    /// each chain declared (which empties it) and refilled, and a jump from the built-in
    /// chain only where `jump_missing` says it is missing (so it is never doubled).
    pub fn restore_input(&self, jump_missing: impl Fn(&Rule) -> bool) -> String {
        let mut text = String::new();
        for (table, own) in [("nat", POSTROUTING_CHAIN), ("filter", FORWARD_CHAIN)] {
            let rules: Vec<Rule> = self
                .rules()
                .into_iter()
                .filter(|r| r.table == table)
                .collect();
            if rules.is_empty() {
                continue;
            }
            text.push_str(&format!("*{table}\n:{own} - [0:0]\n"));
            for rule in &rules {
                if rule.chain != own && !jump_missing(rule) {
                    continue;
                }
                text.push_str(&format!("-A {} {}\n", rule.chain, quote_args(&rule.args)));
            }
            text.push_str("COMMIT\n");
        }
        text
    }

    /// Returns the chains this plan owns, with their tables.
    fn chains(&self) -> Vec<(&'static str, &'static str, &'static str)> {
        let mut chains = Vec::new();
        if self.masquerade {
            chains.push(("nat", "POSTROUTING", POSTROUTING_CHAIN));
        }
        if self.forward {
            chains.push(("filter", "FORWARD", FORWARD_CHAIN));
        }
        chains
    }
}

/// The `iptables` tools of one address family.
#[derive(Debug, Clone, Copy)]
pub struct Iptables {
    tool: &'static str,
    restore: &'static str,
}

impl Iptables {
    /// Returns the tools for `network`'s family after checking that they run, and whether they
    /// know `--random-fully` (iptables 1.6.2, as flannel's iptables library checks).
    ///
    /// # Errors
    ///
    /// [`MasqError::Missing`] naming the tool, or the tool's failure.
    pub fn probe(network: IpNet) -> Result<(Self, bool), MasqError> {
        let this = if network.addr().is_ipv4() {
            Self {
                tool: "iptables",
                restore: "iptables-restore",
            }
        } else {
            Self {
                tool: "ip6tables",
                restore: "ip6tables-restore",
            }
        };
        let out = this.run(this.tool, &["--version"], None)?;
        let version = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(this.failed(&["--version"], &out));
        }
        this.run(this.restore, &["--version"], None)?;
        Ok((this, version_at_least(&version, (1, 6, 2))))
    }

    /// Writes the rules of `plan` (both chains from scratch, the jumps where missing).
    ///
    /// # Errors
    ///
    /// The tool's failure.
    pub fn install(&self, plan: &Plan) -> Result<(), MasqError> {
        let mut missing = Vec::new();
        for rule in plan.rules() {
            if plan.chains().iter().any(|(_, from, _)| *from == rule.chain) && !self.check(&rule)? {
                missing.push(rule);
            }
        }
        let input = plan.restore_input(|r| missing.contains(r));
        let args = ["-w", "5", "--noflush"];
        let out = self.run(self.restore, &args, Some(input.as_bytes()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(MasqError::Failed {
                command: format!("{} {}", self.restore, args.join(" ")),
                message: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            })
        }
    }

    /// Checks every rule of `plan`; writes them again when one is missing. Returns true when
    /// it had to.
    ///
    /// # Errors
    ///
    /// The tool's failure.
    pub fn ensure(&self, plan: &Plan) -> Result<bool, MasqError> {
        for rule in plan.rules() {
            if !self.check(&rule)? {
                self.install(plan)?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Removes the jumps (every copy) and the chains of `plan`. Every step is tried; the first
    /// error is returned.
    ///
    /// # Errors
    ///
    /// The tool's failure.
    pub fn remove(&self, plan: &Plan) -> Result<(), MasqError> {
        let mut first = Ok(());
        for rule in plan.rules() {
            // A tool that ran out of time once will again: the rest is left, not waited for.
            if first.as_ref().is_err_and(MasqError::timed_out) {
                return first;
            }
            if !plan.chains().iter().any(|(_, from, _)| *from == rule.chain) {
                continue;
            }
            // At most a few copies; bounded in case the tool misreports.
            for _ in 0..16 {
                match self.check(&rule) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        first = first.and(Err(e));
                        break;
                    }
                }
                let args = rule_args("-D", &rule);
                if let Err(e) = self.tool_ok(&args) {
                    first = first.and(Err(e));
                    break;
                }
            }
        }
        for (table, _, chain) in plan.chains() {
            if first.as_ref().is_err_and(MasqError::timed_out) {
                return first;
            }
            first = first.and(self.delete_chain(table, chain));
        }
        first
    }

    /// Flushes and deletes `chain` of `table`; one already gone is what removal wants. Both
    /// steps are tried; the first error is returned.
    fn delete_chain(&self, table: &str, chain: &str) -> Result<(), MasqError> {
        let mut first = Ok(());
        for op in ["-F", "-X"] {
            let args = ["-w", "5", "-t", table, op, chain];
            match self.run(self.tool, &args, None) {
                Ok(out) if out.status.success() || out.status.code() == Some(1) => {}
                Ok(out) => first = first.and(Err(self.failed(&args, &out))),
                Err(e) => first = first.and(Err(e)),
            }
        }
        first
    }

    /// Removes the chains of `plan` and every jump to them, whatever its matches (a jump
    /// another version wrote, without flanneld's comment, say). Every step is tried; the
    /// first error is returned.
    ///
    /// # Errors
    ///
    /// The tool's failure.
    fn remove_chains(&self, plan: &Plan) -> Result<(), MasqError> {
        let mut first = Ok(());
        for (table, from, chain) in plan.chains() {
            let args = ["-w", "5", "-t", table, "-S", from];
            let listed = match self.run(self.tool, &args, None) {
                Ok(out) if out.status.success() => {
                    String::from_utf8_lossy(&out.stdout).into_owned()
                }
                Ok(out) => {
                    first = first.and(Err(self.failed(&args, &out)));
                    continue;
                }
                Err(e) => {
                    first = first.and(Err(e));
                    continue;
                }
            };
            // Each jump deleted by its own spec (`-S`'s `-A` line turned into `-D`), so a rule
            // another program inserts meanwhile cannot shift a number onto the wrong rule.
            for line in listed.lines() {
                let Some(spec) = line.strip_prefix("-A ").map(split_rule) else {
                    continue;
                };
                let jumps = spec
                    .windows(2)
                    .any(|w| matches!(w[0].as_str(), "-j" | "-g") && w[1] == chain);
                if !jumps {
                    continue;
                }
                let mut args: Vec<&str> = vec!["-w", "5", "-t", table, "-D"];
                args.extend(spec.iter().map(String::as_str));
                match self.run(self.tool, &args, None) {
                    Ok(out) if out.status.success() => {}
                    Ok(out) => first = first.and(Err(self.failed(&args, &out))),
                    Err(e) => first = first.and(Err(e)),
                }
            }
            first = first.and(self.delete_chain(table, chain));
        }
        first
    }

    /// Returns whether any chain of `plan` exists (`-S CHAIN` succeeds).
    fn has_chains(&self, plan: &Plan) -> bool {
        plan.chains().iter().any(|(table, _, chain)| {
            let args = ["-w", "5", "-t", table, "-S", chain];
            self.run(self.tool, &args, None)
                .is_ok_and(|out| out.status.success())
        })
    }

    /// Returns whether `rule` is in place (`iptables -C`: 0 present, 1 absent). A jump to one
    /// of the plan's chains is absent when the chain is (`-C` fails otherwise, with 2).
    fn check(&self, rule: &Rule) -> Result<bool, MasqError> {
        if let Some(target) = rule
            .args
            .last()
            .filter(|t| *t == POSTROUTING_CHAIN || *t == FORWARD_CHAIN)
        {
            let args = ["-w", "5", "-t", rule.table, "-S", target.as_str()];
            let out = self.run(self.tool, &args, None)?;
            match out.status.code() {
                Some(0) => {}
                Some(1) => return Ok(false),
                _ => return Err(self.failed(&args, &out)),
            }
        }
        let args = rule_args("-C", rule);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.run(self.tool, &refs, None)?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(self.failed(&refs, &out)),
        }
    }

    fn tool_ok(&self, args: &[String]) -> Result<(), MasqError> {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.run(self.tool, &refs, None)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(self.failed(&refs, &out))
        }
    }

    fn failed<S: AsRef<str>>(&self, args: &[S], out: &Output) -> MasqError {
        MasqError::Failed {
            command: format!(
                "{} {}",
                self.tool,
                args.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(" ")
            ),
            message: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
    }

    fn run(
        &self,
        tool: &'static str,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Result<Output, MasqError> {
        run_tool(tool, args, input)
    }
}

/// Runs `tool` with `args`, feeding it `input`; a tool that is not installed is
/// [`MasqError::Missing`], naming its package.
fn run_tool(tool: &'static str, args: &[&str], input: Option<&[u8]>) -> Result<Output, MasqError> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                let package = if tool == "nft" {
                    "nftables"
                } else {
                    "iptables"
                };
                MasqError::Missing { tool, package }
            } else {
                MasqError::Run { tool, source }
            }
        })?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write as _;
        match stdin.write_all(data) {
            // A tool that exits before reading all of its input says why in its status.
            Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
                return Err(MasqError::Run { tool, source: e });
            }
            _ => {}
        }
    }
    wait_with_deadline(child, TOOL_DEADLINE).map_err(|source| MasqError::Run { tool, source })
}

/// The longest one `iptables`/`nft` call may take (a stuck tool, a lock held elsewhere), after
/// which it is killed and the call fails: neither the start, the stop nor the keeper waits
/// forever on it.
pub const TOOL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(15);

/// Waits for `child`, reading its standard output and error meanwhile (so a tool writing more
/// than a pipe holds is not blocked), for at most `deadline`; then kills it.
///
/// # Errors
///
/// `TimedOut` when the deadline passed (the child is killed and reaped), or the error of
/// waiting.
fn wait_with_deadline(
    mut child: std::process::Child,
    deadline: std::time::Duration,
) -> io::Result<Output> {
    fn drain<R: std::io::Read + Send + 'static>(
        pipe: Option<R>,
    ) -> Option<std::thread::JoinHandle<Vec<u8>>> {
        pipe.map(|mut p| {
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let _ = std::io::Read::read_to_end(&mut p, &mut out);
                out
            })
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    // One thread waits for the child and says when it has; this one waits for that word with
    // the deadline, and kills the child if it does not come (the waiter is then still in
    // `wait`, so the pid is still the child's).
    let pid = child.id();
    let (done, exited) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = done.send(());
        status
    });
    if exited.recv_timeout(deadline).is_err() {
        let _ = crate::sys::kill(pid, libc::SIGKILL);
        let _ = waiter.join();
        // The readers are left to end with the pipes (a process the tool started may
        // still hold them).
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("it did not finish within {deadline:?} and was killed"),
        ));
    }
    let status = waiter
        .join()
        .map_err(|_| io::Error::other("the thread waiting for the tool panicked"))??;
    let collect = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    Ok(Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    })
}

/// The tools that write a plan's rules: `iptables` or `nft`.
#[derive(Debug)]
enum Tools {
    Iptables(Iptables),
    Nft(Nft),
}

impl Tools {
    /// The tools `plan` asks for, checked, and whether they can masquerade with random ports.
    fn probe(plan: &Plan) -> Result<(Self, bool), MasqError> {
        if plan.nftables {
            let (nft, random_fully) = Nft::probe(plan.network)?;
            Ok((Self::Nft(nft), random_fully))
        } else {
            let (ipt, random_fully) = Iptables::probe(plan.network)?;
            Ok((Self::Iptables(ipt), random_fully))
        }
    }

    /// The tool's name, for errors.
    const fn tool(&self) -> &'static str {
        match self {
            Self::Iptables(ipt) => ipt.tool,
            Self::Nft(_) => "nft",
        }
    }

    /// What the log calls the rules.
    const fn what(&self) -> &'static str {
        match self {
            Self::Iptables(_) => "iptables rules",
            Self::Nft(_) => "nftables table",
        }
    }

    fn install(&mut self, plan: &Plan) -> Result<(), MasqError> {
        match self {
            Self::Iptables(ipt) => ipt.install(plan),
            Self::Nft(nft) => nft.install(plan),
        }
    }

    fn ensure(&mut self, plan: &Plan) -> Result<bool, MasqError> {
        match self {
            Self::Iptables(ipt) => ipt.ensure(plan),
            Self::Nft(nft) => nft.ensure(plan),
        }
    }

    fn remove(&self, plan: &Plan) -> Result<(), MasqError> {
        match self {
            Self::Iptables(ipt) => ipt.remove(plan),
            Self::Nft(nft) => nft.remove(),
        }
    }
}

/// Splits one rule of `iptables -S` into its words as the shell would: a word in double
/// quotes (a comment with spaces) is one word, `\"` and `\\` inside it stand for `"` and `\`.
pub(crate) fn split_rule(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(&first) = chars.peek() else {
            return words;
        };
        let mut word = String::new();
        if first == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => word.extend(chars.next()),
                    c => word.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                word.push(c);
            }
        }
        words.push(word);
    }
}

/// Removes what flanneld (or an earlier node) left in the other firewall mode than `plan`'s, as
/// flanneld does at every start: in iptables mode its nftables table (`ip flannel-ipv4`, `ip6
/// flannel-ipv6`); in nftables mode its iptables chains (`FLANNEL-POSTRTG`, `FLANNEL-FWD`)
/// and their jumps. Left in place, those rules would go on masquerading pod traffic the
/// node's own rules exempt. Best effort: a missing tool means nothing was written with it.
fn clean_other_mode(plan: &Plan) {
    if plan.nftables {
        let Ok((ipt, _)) = Iptables::probe(plan.network) else {
            return;
        };
        let all = Plan {
            masquerade: true,
            forward: true,
            nftables: false,
            ..*plan
        };
        if !ipt.has_chains(&all) {
            return;
        }
        match ipt.remove_chains(&all) {
            Ok(()) => tracing::info!(
                tool = ipt.tool,
                "removed the iptables chains left by flanneld or an earlier node in iptables mode"
            ),
            Err(e) => tracing::warn!("cannot remove iptables chains of iptables mode: {e}"),
        }
    } else {
        let nft = nft::Nft::new(plan.network);
        if !matches!(nft.exists(), Ok(true)) {
            return;
        }
        match nft.remove() {
            Ok(()) => tracing::info!(
                table = nft.name(),
                "removed the nftables table left by flanneld or an earlier node in nftables mode"
            ),
            Err(e) => tracing::warn!("cannot remove {}: {e}", nft.name()),
        }
    }
}

/// Keeps the rules of a plan in place on its own thread and removes them when dropped.
#[derive(Debug)]
pub struct Keeper {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    settled: Option<std::sync::mpsc::Sender<std::sync::mpsc::Sender<()>>>,
}

/// What the keeper counts.
#[derive(Debug, Default)]
struct Counters {
    checks: AtomicU64,
    repairs: AtomicU64,
    errors: AtomicU64,
}

impl Keeper {
    /// Installs `plan`'s rules on the calling thread (which must hold `CAP_NET_ADMIN`), then
    /// starts the thread that checks them every `resync` and removes them when the keeper is
    /// dropped. Call it before the process drops its privileges.
    ///
    /// # Errors
    ///
    /// [`MasqError`] when a tool is missing or fails, or the thread cannot start.
    pub fn start(mut plan: Plan, resync: Duration) -> Result<Self, MasqError> {
        let (mut tools, random_fully) = Tools::probe(&plan)?;
        clean_other_mode(&plan);
        if plan.random_fully && !random_fully {
            if plan.nftables {
                tracing::warn!(
                    "nft or the kernel refuses `masquerade fully-random`: masquerading without it"
                );
            } else {
                tracing::warn!("iptables is older than 1.6.2: masquerading without --random-fully");
            }
            plan.random_fully = false;
        }
        if let Err(e) = tools.install(&plan) {
            // Nothing would remove what a failed install wrote in part.
            let _ = tools.remove(&plan);
            return Err(e);
        }
        tracing::info!(
            masquerade = plan.masquerade,
            forward = plan.forward,
            random_fully = plan.random_fully,
            resync_secs = resync.as_secs_f64(),
            table = match &tools {
                Tools::Nft(nft) => nft.name(),
                Tools::Iptables(_) => "nat, filter".to_owned(),
            },
            "{} in place",
            tools.what()
        );
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (settled_tx, settled_rx) = std::sync::mpsc::channel::<std::sync::mpsc::Sender<()>>();
        let thread = {
            let (stop, counters) = (Arc::clone(&stop), Arc::clone(&counters));
            std::thread::Builder::new()
                .name("fustian-masq".into())
                .spawn(move || {
                    let kept = crate::sys::keep_net_caps();
                    let _ = ready_tx.send(());
                    if let Err(e) = kept {
                        tracing::warn!(
                            "cannot keep CAP_NET_ADMIN for the masquerade rules after setup: {e}"
                        );
                    }
                    // Once the process has dropped its privileges, keep only what the tools
                    // need.
                    if let Ok(ack) = settled_rx.recv() {
                        if let Err(e) = crate::sys::narrow_to_net_caps() {
                            tracing::warn!(
                                "cannot narrow the masquerade thread's capabilities: {e}"
                            );
                        }
                        let _ = ack.send(());
                    }
                    keep(&mut tools, &plan, resync, &stop, &counters);
                })
                .map_err(MasqError::Thread)?
        };
        // The process must not drop its privileges (or switch user) before the thread has
        // set itself up to keep its own.
        let _ = ready_rx.recv_timeout(Duration::from_secs(5));
        Ok(Self {
            stop,
            thread: Some(thread),
            counters,
            settled: Some(settled_tx),
        })
    }

    /// Tells the thread that the process has dropped its privileges (or switched user), so it
    /// gives up `CAP_SETUID` and `CAP_SETGID` (kept until now because glibc switches the user
    /// of every thread); returns once it has.
    pub fn settled(&mut self) {
        if let Some(tx) = self.settled.take() {
            let (ack_tx, ack_rx) = std::sync::mpsc::channel();
            if tx.send(ack_tx).is_ok() {
                let _ = ack_rx.recv_timeout(Duration::from_secs(5));
            }
        }
    }

    /// Returns a function that reads the counters as `(name, value)` pairs (names without
    /// `fustian_`), for `/status` on another thread.
    pub fn counters(&self) -> impl Fn() -> Vec<(String, u64)> + Send + Sync + 'static {
        let counters = Arc::clone(&self.counters);
        move || {
            vec![
                (
                    "iptables_checks".to_owned(),
                    counters.checks.load(Ordering::Acquire),
                ),
                (
                    "iptables_repairs".to_owned(),
                    counters.repairs.load(Ordering::Relaxed),
                ),
                (
                    "iptables_errors".to_owned(),
                    counters.errors.load(Ordering::Relaxed),
                ),
            ]
        }
    }

    /// Returns a function that renders the counters, for a stats writer on another thread.
    pub fn renderer(&self) -> impl Fn() -> String + Send + Sync + 'static {
        let counters = Arc::clone(&self.counters);
        move || {
            format!(
                "# TYPE fustian_iptables_checks counter\nfustian_iptables_checks {}\n\
                 # TYPE fustian_iptables_repairs counter\nfustian_iptables_repairs {}\n\
                 # TYPE fustian_iptables_errors counter\nfustian_iptables_errors {}\n",
                counters.checks.load(Ordering::Acquire),
                counters.repairs.load(Ordering::Relaxed),
                counters.errors.load(Ordering::Relaxed),
            )
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Lets the thread past its wait for `settled`, if it is still there.
        self.settled = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The keeper thread: check every `resync`, repair, and remove the rules once `stop` is set.
fn keep(tools: &mut Tools, plan: &Plan, resync: Duration, stop: &AtomicBool, counters: &Counters) {
    let mut failing = false;
    let mut next = Instant::now() + resync;
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(50).min(resync));
            continue;
        }
        next = Instant::now() + resync;
        let result = crate::sys::raise_net_caps_for_children()
            .map_err(|source| MasqError::Run {
                tool: tools.tool(),
                source,
            })
            .and_then(|()| tools.ensure(plan));
        match result {
            Ok(repaired) => {
                // The repair is counted before the check, so a reader that sees a check
                // also sees the repair it made.
                if repaired {
                    counters.repairs.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("{} missing or changed; written again", tools.what());
                }
                counters.checks.fetch_add(1, Ordering::Release);
                if failing {
                    tracing::info!("{} checked again", tools.what());
                }
                failing = false;
            }
            Err(e) => {
                counters.checks.fetch_add(1, Ordering::Release);
                counters.errors.fetch_add(1, Ordering::Relaxed);
                // Said once per failing stretch, not every round.
                if !failing {
                    tracing::error!("cannot keep the {}: {e}", tools.what());
                }
                failing = true;
            }
        }
    }
    let _ = crate::sys::raise_net_caps_for_children();
    match tools.remove(plan) {
        Ok(()) => tracing::info!("{} removed", tools.what()),
        Err(e) => tracing::error!("cannot remove the {}: {e}", tools.what()),
    }
}

/// Returns `args` followed by flanneld's comment match.
fn with_comment(args: &[&str], comment: &str) -> Vec<String> {
    // flanneld puts the comment before the target: `... -m comment --comment C -j TARGET`.
    let target = args.iter().position(|a| *a == "-j").unwrap_or(args.len());
    let mut out: Vec<String> = args[..target].iter().map(|a| (*a).to_owned()).collect();
    out.extend(["-m", "comment", "--comment", comment].map(str::to_owned));
    out.extend(args[target..].iter().map(|a| (*a).to_owned()));
    out
}

/// Returns `-w 5 -t TABLE OP CHAIN ARGS...` for the `iptables` command line.
fn rule_args(op: &str, rule: &Rule) -> Vec<String> {
    let mut args: Vec<String> = ["-w", "5", "-t", rule.table, op, rule.chain]
        .map(str::to_owned)
        .to_vec();
    args.extend(rule.args.iter().cloned());
    args
}

/// Joins arguments for `iptables-restore`, quoting those with spaces (the comments).
fn quote_args(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.contains(' ') {
                format!("\"{a}\"")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Returns whether `iptables --version` output (`iptables v1.8.9 (nf_tables)`) names at least
/// version `min`.
fn version_at_least(text: &str, min: (u32, u32, u32)) -> bool {
    let Some(v) = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('v'))
        .map(|v| {
            v.split('.')
                .map(|n| n.parse::<u32>().unwrap_or(0))
                .collect::<Vec<_>>()
        })
    else {
        return false;
    };
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    (get(0), get(1), get(2)) >= min
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_past_its_deadline_is_killed_and_a_chatty_one_is_read_whole() {
        let slow = Command::new("sleep")
            .arg("30")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sleep");
        let began = std::time::Instant::now();
        let e =
            wait_with_deadline(slow, std::time::Duration::from_millis(200)).expect_err("timed out");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(began.elapsed() < std::time::Duration::from_secs(5));
        let err = MasqError::Run {
            tool: "iptables",
            source: e,
        };
        assert!(err.timed_out(), "{err}");
        // More than a pipe holds, on both outputs: read while waiting, nothing lost.
        let chatty = Command::new("sh")
            .args([
                "-c",
                "head -c 300000 /dev/zero; head -c 200000 /dev/zero >&2",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh");
        let out = wait_with_deadline(chatty, std::time::Duration::from_secs(20)).expect("finished");
        assert!(out.status.success());
        assert_eq!((out.stdout.len(), out.stderr.len()), (300_000, 200_000));
    }

    pub(super) fn plan(masquerade: bool, random_fully: bool, forward: bool) -> Plan {
        Plan {
            network: "10.244.0.0/16".parse().expect("net"),
            subnet: "10.244.1.0/24".parse().expect("net"),
            masquerade,
            random_fully,
            forward,
            nftables: false,
        }
    }

    fn lines(rules: &[Rule]) -> Vec<String> {
        rules
            .iter()
            .map(|r| format!("-t {} -A {} {}", r.table, r.chain, quote_args(&r.args)))
            .collect()
    }

    #[test]
    fn masquerade_rules_are_flanneld_s() {
        let got = lines(&plan(true, true, true).rules());
        let want = [
            r#"-t nat -A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#,
            r#"-t nat -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN"#,
            r#"-t nat -A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN"#,
            r#"-t nat -A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN"#,
            r#"-t nat -A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN"#,
            r#"-t nat -A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#,
            r#"-t nat -A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#,
            r#"-t filter -A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD"#,
            r#"-t filter -A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#,
            r#"-t filter -A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#,
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn options_change_only_their_rules() {
        let plain = lines(&plan(true, false, false).rules());
        assert_eq!(plain.len(), 7);
        assert!(plain.iter().all(|l| !l.contains("random-fully")));
        assert!(plain[5].ends_with("-j MASQUERADE"), "{}", plain[5]);
        assert_eq!(plan(false, true, true).rules().len(), 3);
        assert!(plan(false, false, false).rules().is_empty());
        let v6 = Plan {
            network: "fd00:10::/48".parse().expect("net"),
            subnet: "fd00:10:0:1::/64".parse().expect("net"),
            ..plan(true, false, false)
        };
        assert!(lines(&v6.rules())[5].contains("! -d ff00::/8"));
    }

    #[test]
    fn restore_input_declares_chains_and_adds_only_missing_jumps() {
        let p = plan(true, false, true);
        let all = p.restore_input(|_| true);
        assert!(all.starts_with("*nat\n:FLANNEL-POSTRTG - [0:0]\n-A POSTROUTING -m comment"));
        assert!(all.contains("COMMIT\n*filter\n:FLANNEL-FWD - [0:0]\n-A FORWARD "));
        assert!(all.ends_with("-j ACCEPT\nCOMMIT\n"));
        assert_eq!(all.matches("-A ").count(), 10);
        let none = p.restore_input(|_| false);
        assert!(!none.contains("-A POSTROUTING") && !none.contains("-A FORWARD"));
        assert_eq!(none.matches("-A ").count(), 8);
    }

    #[test]
    fn a_missing_tool_is_named() {
        let tools = Iptables {
            tool: "fustian-test-no-such-iptables",
            restore: "fustian-test-no-such-iptables-restore",
        };
        let e = tools
            .run(tools.tool, &["--version"], None)
            .expect_err("missing");
        assert!(matches!(e, MasqError::Missing { .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains("need `fustian-test-no-such-iptables`, which is not installed"),
            "{e}"
        );
    }

    #[test]
    fn rules_split_as_the_shell_splits_them() {
        assert_eq!(
            split_rule(r#"POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#),
            [
                "POSTROUTING",
                "-m",
                "comment",
                "--comment",
                "flanneld masq",
                "-j",
                "FLANNEL-POSTRTG"
            ]
        );
        assert_eq!(split_rule(r#"X "a \"b\" \\ c""#), ["X", r#"a "b" \ c"#]);
        assert_eq!(split_rule("  "), Vec::<String>::new());
    }

    proptest::proptest! {
        #[test]
        fn any_rule_line_splits_without_panicking(line in "\\PC{0,120}") {
            let words = split_rule(&line);
            proptest::prop_assert!(words.len() <= line.len());
        }
    }

    #[test]
    fn reads_iptables_versions() {
        assert!(version_at_least("iptables v1.8.9 (nf_tables)", (1, 6, 2)));
        assert!(version_at_least("iptables v1.6.2", (1, 6, 2)));
        assert!(!version_at_least("iptables v1.6.1", (1, 6, 2)));
        assert!(!version_at_least("iptables v1.4.21", (1, 6, 2)));
        assert!(!version_at_least("no version here", (1, 6, 2)));
    }

    proptest::proptest! {
        /// Any tool output is judged without a panic, and a well-formed version compares as
        /// the tuple it names.
        #[test]
        fn versions_compare_as_tuples(
            text in "\\PC{0,60}",
            v in (0u32..20, 0u32..20, 0u32..40),
            min in (0u32..20, 0u32..20, 0u32..40),
        ) {
            let _ = version_at_least(&text, min);
            let out = format!("iptables v{}.{}.{} (nf_tables)", v.0, v.1, v.2);
            proptest::prop_assert_eq!(version_at_least(&out, min), v >= min);
        }
    }
}
