//! The nftables variant of the rules, as flanneld writes them when the network config sets
//! `EnableNFTables` (flannel `pkg/trafficmngr/nftables`): one table per family,
//! `ip flannel-ipv4` or `ip6 flannel-ipv6`, holding a `postrtg` chain (type nat, hook
//! postrouting, priority srcnat) for `--ip-masq` and a `forward` chain (type filter, hook
//! forward, priority filter) for `--iptables-forward-rules`, with flanneld's comments.
//!
//! The table is fustian's own, so it is written whole: one `nft -f` transaction deletes it
//! and declares it again with its chains and rules, atomically (no packet sees a half-written
//! table), whatever was left in it before. The listing `nft list table` prints right after is
//! what the keeper compares against each resync; any difference (a rule deleted, changed or
//! added, the table gone) writes the table again. Removal deletes the table.

use std::process::Output;

use super::{MasqError, Plan, run_tool};

/// flanneld's table for IPv4 rules.
pub const TABLE_V4: &str = "flannel-ipv4";
/// flanneld's table for IPv6 rules.
pub const TABLE_V6: &str = "flannel-ipv6";
/// flanneld's masquerade chain.
pub const POSTROUTING_CHAIN: &str = "postrtg";
/// flanneld's forward chain.
pub const FORWARD_CHAIN: &str = "forward";

/// The `nft` tool and one family's table.
#[derive(Debug, Clone)]
pub struct Nft {
    /// `ip` or `ip6`.
    family: &'static str,
    /// [`TABLE_V4`] or [`TABLE_V6`].
    table: &'static str,
    /// Whether this `nft` and kernel take comments on tables and chains (nft 0.9.7, Linux
    /// 5.10); without them the rules are written bare.
    comments: bool,
    /// The table as `nft list table` printed it right after it was written.
    expected: Option<String>,
}

impl Nft {
    /// The table for `network`'s family, before anything is checked.
    pub fn new(network: ipnet::IpNet) -> Self {
        let (family, table) = if network.addr().is_ipv4() {
            ("ip", TABLE_V4)
        } else {
            ("ip6", TABLE_V6)
        };
        Self {
            family,
            table,
            comments: true,
            expected: None,
        }
    }

    /// Returns the table for `network`'s family after checking that `nft` runs, and whether
    /// the kernel takes `masquerade fully-random` (checked as flanneld does, with a rule that
    /// is never committed).
    ///
    /// # Errors
    ///
    /// [`MasqError::Missing`] when `nft` is not installed, or its failure.
    pub fn probe(network: ipnet::IpNet) -> Result<(Self, bool), MasqError> {
        let mut this = Self::new(network);
        let out = run_tool("nft", &["--version"], None)?;
        if !out.status.success() {
            return Err(failed(&["--version"], &out));
        }
        let probe = "fustian-probe";
        // A bare table must pass: otherwise nft or the kernel cannot do nftables at all (no
        // permission, no nf_tables), which is an error, not a missing feature.
        let bare = format!("add table {} {probe}\n", this.family);
        let out = run_tool("nft", &["--check", "-f", "-"], Some(bare.as_bytes()))?;
        if !out.status.success() {
            return Err(failed(&["--check", "-f", "-"], &out));
        }
        this.comments = this.check(&format!(
            "add table {} {probe} {{ comment \"probe\"; }}\n",
            this.family
        ))?;
        let random_fully = this.check(&format!(
            "add table {f} {probe}\nadd chain {f} {probe} c {{ type nat hook postrouting \
             priority 100; }}\nadd rule {f} {probe} c masquerade fully-random\n",
            f = this.family
        ))?;
        Ok((this, random_fully))
    }

    /// The table's name, with its family (`ip flannel-ipv4`).
    pub fn name(&self) -> String {
        format!("{} {}", self.family, self.table)
    }

    /// Returns the `nft -f` input that replaces the table with `plan`'s: the table declared
    /// (so that the delete never fails), deleted, and declared again with its chains and
    /// rules, all in one transaction.
    pub fn script(&self, plan: &Plan) -> String {
        let (f, t) = (self.family, self.table);
        let comment = |text: &str| {
            if self.comments {
                format!(" comment \"{text}\";")
            } else {
                String::new()
            }
        };
        let (net, sub) = (
            plan.network.trunc().to_string(),
            plan.subnet.trunc().to_string(),
        );
        let multicast = if self.family == "ip" {
            "224.0.0.0/4"
        } else {
            "ff00::/8"
        };
        let mut s = format!(
            "add table {f} {t}\ndelete table {f} {t}\nadd table {f} {t} {{{} }}\n",
            comment(&format!("rules for {t}"))
        );
        if plan.masquerade {
            let c = POSTROUTING_CHAIN;
            let masq = if plan.random_fully {
                "masquerade fully-random"
            } else {
                "masquerade"
            };
            s.push_str(&format!(
                "add chain {f} {t} {c} {{ type nat hook postrouting priority 100;{} }}\n",
                comment("chain to manage traffic masquerading by flannel")
            ));
            // flanneld's rules, in its order. The fourth is flanneld's nftables form, which
            // differs from its iptables form (`! -s NETWORK -d SUBNET`): it returns everything
            // bound for the network from outside this node's subnet, so the sixth never
            // matches. Kept as flanneld writes it.
            for rule in [
                "meta mark 0x4000 return".to_owned(),
                format!("{f} saddr {sub} {f} daddr {net} return"),
                format!("{f} saddr {net} {f} daddr {sub} return"),
                format!("{f} saddr != {sub} {f} daddr {net} return"),
                format!("{f} saddr {net} {f} daddr != {multicast} {masq}"),
                format!("{f} saddr != {net} {f} daddr {net} {masq}"),
            ] {
                s.push_str(&format!("add rule {f} {t} {c} {rule}\n"));
            }
        }
        if plan.forward {
            let c = FORWARD_CHAIN;
            s.push_str(&format!(
                "add chain {f} {t} {c} {{ type filter hook forward priority 0;{} }}\n",
                comment("chain to accept flannel traffic")
            ));
            for rule in [
                format!("{f} saddr {net} accept"),
                format!("{f} daddr {net} accept"),
            ] {
                s.push_str(&format!("add rule {f} {t} {c} {rule}\n"));
            }
        }
        s
    }

    /// Writes `plan`'s table (replacing whatever table of that name there was) and remembers
    /// how `nft` lists it.
    ///
    /// # Errors
    ///
    /// The tool's failure.
    pub fn install(&mut self, plan: &Plan) -> Result<(), MasqError> {
        let script = self.script(plan);
        let out = run_tool("nft", &["-f", "-"], Some(script.as_bytes()))?;
        if !out.status.success() {
            return Err(failed(&["-f", "-"], &out));
        }
        self.expected = self.list()?;
        if self.expected.is_none() {
            return Err(MasqError::Failed {
                command: format!("nft list table {}", self.name()),
                message: "the table written a moment ago is not there".into(),
            });
        }
        Ok(())
    }

    /// Lists the table; writes it again when it is missing or differs from what was written.
    /// Returns true when it had to.
    ///
    /// # Errors
    ///
    /// The tool's failure.
    pub fn ensure(&mut self, plan: &Plan) -> Result<bool, MasqError> {
        let now = self.list()?;
        if now.is_some() && now == self.expected {
            return Ok(false);
        }
        self.install(plan)?;
        Ok(true)
    }

    /// Deletes the table; one that is already gone is what removal wants.
    ///
    /// # Errors
    ///
    /// The tool's failure.
    pub fn remove(&self) -> Result<(), MasqError> {
        let args = ["delete", "table", self.family, self.table];
        let out = run_tool("nft", &args, None)?;
        if out.status.success() || matches!(self.list(), Ok(None)) {
            Ok(())
        } else {
            Err(failed(&args, &out))
        }
    }

    /// Returns whether the table exists.
    ///
    /// # Errors
    ///
    /// [`MasqError::Missing`] when `nft` is not installed, or its failure.
    pub fn exists(&self) -> Result<bool, MasqError> {
        self.list().map(|t| t.is_some())
    }

    /// The table as `nft list table` prints it, or `None` when there is no such table.
    fn list(&self) -> Result<Option<String>, MasqError> {
        let args = ["list", "table", self.family, self.table];
        let out = run_tool("nft", &args, None)?;
        if out.status.success() {
            return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
        }
        if absent(&out) {
            return Ok(None);
        }
        Err(failed(&args, &out))
    }

    /// Whether `nft --check` accepts `script` (nothing is committed).
    fn check(&self, script: &str) -> Result<bool, MasqError> {
        let out = run_tool("nft", &["--check", "-f", "-"], Some(script.as_bytes()))?;
        Ok(out.status.success())
    }
}

/// Whether a failed `nft` said the object does not exist.
fn absent(out: &Output) -> bool {
    String::from_utf8_lossy(&out.stderr).contains("No such file or directory")
}

fn failed(args: &[&str], out: &Output) -> MasqError {
    MasqError::Failed {
        command: format!("nft {}", args.join(" ")),
        message: format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(masquerade: bool, random_fully: bool, forward: bool) -> Plan {
        Plan {
            nftables: true,
            ..crate::masq::tests::plan(masquerade, random_fully, forward)
        }
    }

    #[test]
    fn the_table_is_flanneld_s_and_replaced_whole() {
        let nft = Nft::new("10.244.0.0/16".parse().expect("net"));
        let got = nft.script(&plan(true, true, true));
        let want = "add table ip flannel-ipv4
delete table ip flannel-ipv4
add table ip flannel-ipv4 { comment \"rules for flannel-ipv4\"; }
add chain ip flannel-ipv4 postrtg { type nat hook postrouting priority 100; comment \"chain to manage traffic masquerading by flannel\"; }
add rule ip flannel-ipv4 postrtg meta mark 0x4000 return
add rule ip flannel-ipv4 postrtg ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return
add rule ip flannel-ipv4 postrtg ip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return
add rule ip flannel-ipv4 postrtg ip saddr != 10.244.1.0/24 ip daddr 10.244.0.0/16 return
add rule ip flannel-ipv4 postrtg ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
add rule ip flannel-ipv4 postrtg ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random
add chain ip flannel-ipv4 forward { type filter hook forward priority 0; comment \"chain to accept flannel traffic\"; }
add rule ip flannel-ipv4 forward ip saddr 10.244.0.0/16 accept
add rule ip flannel-ipv4 forward ip daddr 10.244.0.0/16 accept
";
        assert_eq!(got, want);
    }

    #[test]
    fn options_and_families_change_only_their_parts() {
        let v4 = Nft::new("10.244.0.0/16".parse().expect("net"));
        let plain = v4.script(&plan(true, false, false));
        assert!(!plain.contains("fully-random") && plain.contains(" masquerade\n"));
        assert!(!plain.contains("forward"));
        let fwd = v4.script(&plan(false, true, true));
        assert!(!fwd.contains("postrtg") && fwd.contains("chain ip flannel-ipv4 forward"));
        let bare = Nft {
            comments: false,
            ..v4.clone()
        };
        assert!(!bare.script(&plan(true, true, true)).contains("comment"));
        let v6 = Nft::new("fd00:10::/48".parse().expect("net"));
        let p6 = Plan {
            network: "fd00:10::/48".parse().expect("net"),
            subnet: "fd00:10:0:1::/64".parse().expect("net"),
            ..plan(true, true, true)
        };
        let s = v6.script(&p6);
        assert!(s.starts_with("add table ip6 flannel-ipv6\ndelete table ip6 flannel-ipv6\n"));
        assert!(s.contains(
            "postrtg ip6 saddr fd00:10::/48 ip6 daddr != ff00::/8 masquerade fully-random\n"
        ));
        assert!(s.contains("forward ip6 daddr fd00:10::/48 accept\n"));
        assert_eq!(v6.name(), "ip6 flannel-ipv6");
        // Host bits of the network and subnet are not written.
        let loose = Plan {
            network: "10.244.3.4/16".parse().expect("net"),
            subnet: "10.244.1.9/24".parse().expect("net"),
            ..plan(true, true, false)
        };
        assert!(
            v4.script(&loose)
                .contains("ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16")
        );
    }
}
