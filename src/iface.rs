//! Choosing the underlay interface and this node's address, in the order flanneld uses
//! (`main.go` and `pkg/ipmatch`):
//!
//! 1. each `--iface` in turn, an interface name or an address held by an interface; the first
//!    that exists (and, given by name, has an IPv4 address) wins;
//! 2. then each `--iface-regex` in turn: the first interface (in index order) with an IPv4
//!    address the pattern matches, else the first whose name it matches;
//! 3. then `--iface-can-reach IP`: the interface the kernel's route to that IP leaves by
//!    (`ip route get`), with the route's preferred source address;
//! 4. none of them given: the interface of the main table's IPv4 default route.
//!
//! Where the interface was found by name, pattern or route without an address, the address is
//! the interface's first IPv4 address ranked as flanneld ranks them: global before link-local,
//! permanent before autoconfigured, primary before secondary; deprecated ones are skipped.
//!
//! The choice itself ([`select_in`]) is pure, over a [`Host`] snapshot, so it is unit tested
//! without root; [`select`] reads the snapshot through rtnetlink. IPv6 addresses are matched
//! only where given literally to `--iface`; fustian does not pick IPv6 addresses itself.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use regex::Regex;

use crate::tun::link::{AddrInfo, LinkInfo, Netlink};

/// What the operator asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// `--iface` values: names or addresses, tried in order.
    pub ifaces: Vec<String>,
    /// `--iface-regex` patterns, tried in order after `ifaces`.
    pub regexes: Vec<String>,
    /// `--iface-can-reach`: tried after the patterns.
    pub can_reach: Option<IpAddr>,
    /// `--public-ip`, when given: an interface found by name, pattern or route then needs no
    /// IPv4 address of its own (an IPv6 underlay in a static configuration).
    pub public_ip: Option<IpAddr>,
}

impl Selector {
    /// Returns true when nothing was asked for (the default-route interface is used).
    pub fn is_empty(&self) -> bool {
        self.ifaces.is_empty() && self.regexes.is_empty() && self.can_reach.is_none()
    }
}

/// The chosen interface and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct External {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// The interface's address this node uses (and advertises unless `--public-ip` says
    /// otherwise).
    pub addr: IpAddr,
    /// How it was chosen, for the log (`--iface eth0`, `the default route`, ...).
    pub how: String,
}

impl External {
    /// Returns `link` with `addr`, chosen `how`.
    fn on(link: &LinkInfo, addr: IpAddr, how: String) -> Self {
        Self {
            name: link.name.clone(),
            index: link.index,
            addr,
            how,
        }
    }
}

/// The links, addresses and default route of a host, as interface selection sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    /// Links in index order.
    pub links: Vec<LinkInfo>,
    /// Every address of every link.
    pub addrs: Vec<AddrInfo>,
    /// The output interface of the IPv4 default route, if any.
    pub default_route: Option<u32>,
}

/// No interface could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    /// An rtnetlink request failed.
    #[error("cannot {what}: {source}")]
    Netlink {
        /// What was being read.
        what: &'static str,
        /// The kernel's error.
        source: io::Error,
    },
    /// An `--iface-regex` pattern does not compile.
    #[error("invalid --iface-regex `{pattern}`: {reason}")]
    Regex {
        /// The pattern.
        pattern: String,
        /// The compiler's message.
        reason: String,
    },
    /// Nothing given and no IPv4 default route.
    #[error(
        "no IPv4 default route to take the interface from; give --iface, --iface-regex, \
         --iface-can-reach or --public-ip"
    )]
    NoDefaultRoute,
    /// The default-route interface has no usable IPv4 address.
    #[error(
        "the default route's interface {name} has no IPv4 address; give --public-ip or --iface"
    )]
    NoAddress {
        /// The interface.
        name: String,
    },
    /// None of the given interfaces, patterns or routes led to an interface.
    #[error("no interface matches {tried}")]
    NoMatch {
        /// Each candidate with why it failed.
        tried: String,
    },
}

/// Chooses the interface and address as [`select_in`] does, on this network namespace.
///
/// # Errors
///
/// [`IfaceError`]: a netlink failure, a bad pattern, or no match.
pub fn select(sel: &Selector) -> Result<External, IfaceError> {
    let nl_err = |what| move |source| IfaceError::Netlink { what, source };
    let mut nl = Netlink::open().map_err(nl_err("open a route netlink socket"))?;
    let host = Host {
        links: nl.links().map_err(nl_err("list links"))?,
        addrs: nl.addresses().map_err(nl_err("list addresses"))?,
        default_route: if sel.is_empty() {
            nl.default_route_v4().map_err(nl_err("list routes"))?
        } else {
            None
        },
    };
    select_in(sel, &host, |dst| {
        nl.route_get(dst).map_err(|e| e.to_string())
    })
}

/// Chooses the interface and address from `host` (see the module documentation for the
/// order). `route_get` answers `--iface-can-reach` with the output interface and preferred
/// source of the route to an address.
///
/// # Errors
///
/// [`IfaceError::Regex`] for a pattern that does not compile (checked before anything else),
/// [`IfaceError::NoMatch`] naming every candidate and why it failed, or, with nothing asked
/// for, [`IfaceError::NoDefaultRoute`] / [`IfaceError::NoAddress`].
pub fn select_in(
    sel: &Selector,
    host: &Host,
    mut route_get: impl FnMut(IpAddr) -> Result<Option<(u32, Option<IpAddr>)>, String>,
) -> Result<External, IfaceError> {
    let regexes = sel
        .regexes
        .iter()
        .map(|p| {
            Regex::new(p)
                .map(|r| (p, r))
                .map_err(|e| IfaceError::Regex {
                    pattern: p.clone(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let name_of = |index: u32| host.links.iter().find(|l| l.index == index);

    if sel.is_empty() {
        let index = host.default_route.ok_or(IfaceError::NoDefaultRoute)?;
        let link = name_of(index).ok_or(IfaceError::NoDefaultRoute)?;
        let addr = first_v4(host, index).ok_or_else(|| IfaceError::NoAddress {
            name: link.name.clone(),
        })?;
        return Ok(External::on(
            link,
            IpAddr::V4(addr),
            "the default route".into(),
        ));
    }

    let mut tried = Vec::new();
    for given in &sel.ifaces {
        let how = format!("--iface {given}");
        if let Ok(ip) = given.parse::<IpAddr>() {
            match host.addrs.iter().find(|a| a.ip == ip) {
                Some(a) => match name_of(a.index) {
                    Some(link) => {
                        return Ok(External::on(link, ip, how));
                    }
                    None => tried.push(format!("{how} (its link is gone)")),
                },
                None => tried.push(format!("{how} (no interface holds it)")),
            }
            continue;
        }
        match host.links.iter().find(|l| l.name == *given) {
            Some(link) => match usable(host, link.index, sel.public_ip) {
                Some(addr) => {
                    return Ok(External::on(link, addr, how));
                }
                None => tried.push(format!("{how} (no IPv4 address)")),
            },
            None => tried.push(format!("{how} (no such interface)")),
        }
    }

    for (pattern, re) in &regexes {
        let how = format!("--iface-regex {pattern}");
        // Addresses first, over every interface; then names.
        let by_addr = host.links.iter().find_map(|link| {
            ranked_v4(host, link.index)
                .into_iter()
                .find(|a| re.is_match(&a.to_string()))
                .map(|a| (link, a))
        });
        if let Some((link, addr)) = by_addr {
            return Ok(External::on(link, IpAddr::V4(addr), how));
        }
        match host.links.iter().find(|l| re.is_match(&l.name)) {
            Some(link) => match usable(host, link.index, sel.public_ip) {
                Some(addr) => {
                    return Ok(External::on(link, addr, how));
                }
                None => tried.push(format!("{how} (matches {}, no IPv4 address)", link.name)),
            },
            None => tried.push(format!("{how} (matches no address or name)")),
        }
    }

    if let Some(dst) = sel.can_reach {
        let how = format!("--iface-can-reach {dst}");
        match route_get(dst) {
            Ok(Some((index, src))) => match name_of(index) {
                Some(link) => {
                    let addr = src
                        .filter(IpAddr::is_ipv4)
                        .or_else(|| usable(host, index, sel.public_ip));
                    match addr {
                        Some(addr) => {
                            return Ok(External::on(link, addr, how));
                        }
                        None => tried.push(format!("{how} (via {}, no IPv4 address)", link.name)),
                    }
                }
                None => tried.push(format!("{how} (route via unknown ifindex {index})")),
            },
            Ok(None) => tried.push(format!("{how} (the route has no output interface)")),
            Err(e) => tried.push(format!("{how} ({e})")),
        }
    }

    Err(IfaceError::NoMatch {
        tried: tried.join(", "),
    })
}

/// Returns link `index`'s first IPv4 address, else `public_ip` (given, so none is needed).
fn usable(host: &Host, index: u32, public_ip: Option<IpAddr>) -> Option<IpAddr> {
    first_v4(host, index).map(IpAddr::V4).or(public_ip)
}

/// Returns the first usable IPv4 address of link `index` (see [`ranked_v4`]).
pub fn first_v4(host: &Host, index: u32) -> Option<Ipv4Addr> {
    ranked_v4(host, index).into_iter().next()
}

/// Returns link `index`'s IPv4 addresses that flanneld would use (global or link-local
/// unicast, not deprecated), best first: global before link-local, permanent before not,
/// primary before secondary; otherwise in the kernel's order.
pub fn ranked_v4(host: &Host, index: u32) -> Vec<Ipv4Addr> {
    let mut found: Vec<(Ipv4Addr, &AddrInfo)> = host
        .addrs
        .iter()
        .filter(|a| a.index == index && !a.deprecated)
        .filter_map(|a| match a.ip {
            IpAddr::V4(ip) if is_global_unicast(ip) || ip.is_link_local() => Some((ip, a)),
            _ => None,
        })
        .collect();
    // A stable sort keeps the kernel's order among equals, as Go's sort over the same list.
    found.sort_by_key(|(ip, a)| (ip.is_link_local(), !a.permanent, a.secondary));
    found.into_iter().map(|(ip, _)| ip).collect()
}

/// Returns link `index`'s IPv6 addresses a dual-stack node could advertise as its
/// `PublicIPv6` when none is given (flanneld takes the chosen interface's global unicast IPv6
/// address): global unicast (unique-local included, as Go's `IsGlobalUnicast`), neither
/// link-local, IPv4-mapped nor deprecated, permanent before autoconfigured, then in the
/// kernel's order.
pub fn ranked_v6(host: &Host, index: u32) -> Vec<Ipv6Addr> {
    let mut found: Vec<(Ipv6Addr, &AddrInfo)> = host
        .addrs
        .iter()
        .filter(|a| a.index == index && !a.deprecated)
        .filter_map(|a| match a.ip {
            IpAddr::V6(ip)
                if !(ip.is_unspecified()
                    || ip.is_loopback()
                    || ip.is_multicast()
                    || ip.segments()[0] & 0xffc0 == 0xfe80
                    || ip.to_ipv4_mapped().is_some()) =>
            {
                Some((ip, a))
            }
            _ => None,
        })
        .collect();
    found.sort_by_key(|(_, a)| (!a.permanent, a.secondary));
    found.into_iter().map(|(ip, _)| ip).collect()
}

/// Returns the first of [`ranked_v6`] for link `index` on this network namespace (`None`
/// when it has none or the addresses cannot be listed).
pub fn global_v6(index: u32) -> Option<Ipv6Addr> {
    let mut nl = Netlink::open().ok()?;
    let host = Host {
        links: Vec::new(),
        addrs: nl.addresses().ok()?,
        default_route: None,
    };
    ranked_v6(&host, index).into_iter().next()
}

/// Returns the first of [`ranked_v6`] on the link holding `ip` (the given `--public-ip`),
/// on this network namespace.
pub fn global_v6_beside(ip: IpAddr) -> Option<Ipv6Addr> {
    let mut nl = Netlink::open().ok()?;
    let host = Host {
        links: Vec::new(),
        addrs: nl.addresses().ok()?,
        default_route: None,
    };
    let index = host.addrs.iter().find(|a| a.ip == ip)?.index;
    ranked_v6(&host, index).into_iter().next()
}

/// A kernel VXLAN device as `ip -d -j link show type vxlan` describes it.
#[derive(Debug, PartialEq, Eq)]
pub struct KernelVtep {
    /// Its name.
    pub name: String,
    /// Its VNI.
    pub vni: Option<u64>,
    /// Its UDP port.
    pub port: Option<u64>,
}

/// Reads the kernel VXLAN devices of `ip -d -j link show type vxlan` output; anything else
/// reads as none.
pub fn kernel_vteps(v: &serde_json::Value) -> Vec<KernelVtep> {
    let Some(links) = v.as_array() else {
        return Vec::new();
    };
    links
        .iter()
        .filter_map(|l| {
            let data = &l["linkinfo"]["info_data"];
            Some(KernelVtep {
                name: l["ifname"].as_str()?.to_owned(),
                vni: data["id"].as_u64(),
                port: data["port"].as_u64(),
            })
        })
        .collect()
}

/// Go's `net.IP.IsGlobalUnicast` for IPv4: anything but unspecified, loopback, multicast,
/// link-local and the limited broadcast address (private ranges included).
fn is_global_unicast(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_link_local()
        || ip.is_broadcast())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(index: u32, ip: &str) -> AddrInfo {
        AddrInfo {
            index,
            ip: ip.parse().expect("test address"),
            prefix_len: 24,
            permanent: true,
            deprecated: false,
            secondary: false,
        }
    }

    fn host() -> Host {
        let links = [
            (1, "lo"),
            (2, "eth0"),
            (3, "ens5"),
            (4, "cni0"),
            (5, "empty0"),
        ]
        .map(|(index, name)| LinkInfo {
            index,
            name: name.into(),
        })
        .to_vec();
        Host {
            links,
            addrs: vec![
                addr(1, "127.0.0.1"),
                addr(2, "169.254.0.9"),
                addr(2, "192.0.2.10"),
                addr(3, "198.51.100.7"),
                addr(3, "2001:db8::7"),
                addr(4, "10.244.1.1"),
            ],
            default_route: Some(3),
        }
    }

    fn no_route(_: IpAddr) -> Result<Option<(u32, Option<IpAddr>)>, String> {
        Err("no route".into())
    }

    fn pick(ifaces: &[&str], regexes: &[&str]) -> Result<External, IfaceError> {
        let sel = Selector {
            ifaces: ifaces.iter().map(|s| (*s).to_owned()).collect(),
            regexes: regexes.iter().map(|s| (*s).to_owned()).collect(),
            can_reach: None,
            public_ip: None,
        };
        select_in(&sel, &host(), no_route)
    }

    fn chosen(r: Result<External, IfaceError>) -> (String, String) {
        let e = r.expect("an interface is chosen");
        (e.name, e.addr.to_string())
    }

    #[test]
    fn nothing_given_takes_the_default_route() {
        assert_eq!(
            chosen(pick(&[], &[])),
            ("ens5".into(), "198.51.100.7".into())
        );
        let mut h = host();
        h.default_route = None;
        let e = select_in(&Selector::default(), &h, no_route).expect_err("no default route");
        assert!(matches!(e, IfaceError::NoDefaultRoute), "{e}");
        h.default_route = Some(5);
        let e = select_in(&Selector::default(), &h, no_route).expect_err("no address");
        assert!(e.to_string().contains("empty0 has no IPv4 address"), "{e}");
    }

    #[test]
    fn iface_by_name_or_address_first_that_exists_wins() {
        // Global addresses rank before link-local ones.
        assert_eq!(
            chosen(pick(&["eth0"], &[])),
            ("eth0".into(), "192.0.2.10".into())
        );
        assert_eq!(
            chosen(pick(
                &["missing0", "192.0.2.99", "198.51.100.7", "eth0"],
                &[]
            )),
            ("ens5".into(), "198.51.100.7".into())
        );
        // An IPv6 address given literally is used as is.
        assert_eq!(
            chosen(pick(&["2001:db8::7"], &[])),
            ("ens5".into(), "2001:db8::7".into())
        );
        // By name without an IPv4 address: skipped, the next one wins.
        assert_eq!(chosen(pick(&["empty0", "cni0"], &[])).0, "cni0");
        // Unless the public IP is given (an IPv6 underlay): then it needs none.
        let sel = Selector {
            ifaces: vec!["empty0".into()],
            public_ip: Some("2001:db8::9".parse().expect("ip")),
            ..Selector::default()
        };
        assert_eq!(
            chosen(select_in(&sel, &host(), no_route)),
            ("empty0".into(), "2001:db8::9".into())
        );
        let e = pick(&["missing0", "192.0.2.99", "empty0"], &[]).expect_err("no match");
        let msg = e.to_string();
        for part in [
            "--iface missing0 (no such interface)",
            "--iface 192.0.2.99 (no interface holds it)",
            "--iface empty0 (no IPv4 address)",
        ] {
            assert!(msg.contains(part), "{msg}");
        }
    }

    #[test]
    fn regexes_match_addresses_before_names_and_come_after_ifaces() {
        // `^e` matches no address, so the first name: eth0 (index 2) before ens5.
        assert_eq!(chosen(pick(&[], &["^e"])).0, "eth0");
        // Addresses are matched over all interfaces before any name.
        assert_eq!(
            chosen(pick(&[], &["^e", "198\\.51"])).0,
            "eth0",
            "the first pattern that matches wins"
        );
        assert_eq!(
            chosen(pick(&[], &["51\\.100"])),
            ("ens5".into(), "198.51.100.7".into())
        );
        // Unanchored, as Go's MatchString: `ns` is inside `ens5`.
        assert_eq!(chosen(pick(&[], &["ns"])).0, "ens5");
        // The link-local address of eth0 is a candidate too.
        assert_eq!(
            chosen(pick(&[], &["^169\\.254"])),
            ("eth0".into(), "169.254.0.9".into())
        );
        // --iface is tried first.
        assert_eq!(chosen(pick(&["cni0"], &["^e"])).0, "cni0");
        // Loopback addresses are never candidates.
        assert!(pick(&[], &["^127\\."]).is_err());
        let e = pick(&[], &["("]).expect_err("bad pattern");
        assert!(matches!(e, IfaceError::Regex { .. }), "{e}");
    }

    #[test]
    fn can_reach_uses_the_route_and_its_source() {
        let sel = Selector {
            can_reach: Some("203.0.113.1".parse().expect("ip")),
            ..Selector::default()
        };
        let e = select_in(&sel, &host(), |_| {
            Ok(Some((2, Some("192.0.2.10".parse().expect("ip")))))
        })
        .expect("route");
        assert_eq!(
            (e.name.as_str(), e.addr.to_string()),
            ("eth0", "192.0.2.10".into())
        );
        let e = select_in(&sel, &host(), |_| Ok(Some((3, None)))).expect("route");
        assert_eq!(e.addr.to_string(), "198.51.100.7");
        let e = select_in(&sel, &host(), no_route).expect_err("no route");
        assert!(
            e.to_string()
                .contains("--iface-can-reach 203.0.113.1 (no route)"),
            "{e}"
        );
    }

    #[test]
    fn the_ipv6_default_is_a_global_unicast_address_of_the_link() {
        let mut h = host();
        h.addrs = vec![
            addr(2, "fe80::1"),
            addr(2, "::ffff:192.0.2.9"),
            AddrInfo {
                deprecated: true,
                ..addr(2, "2001:db8::9")
            },
            AddrInfo {
                permanent: false,
                ..addr(2, "2001:db8::a")
            },
            addr(3, "2001:db8::3"),
            addr(2, "192.0.2.1"),
            addr(2, "fd00::5"),
            addr(2, "ff02::1"),
        ];
        let got: Vec<String> = ranked_v6(&h, 2).iter().map(ToString::to_string).collect();
        assert_eq!(got, ["fd00::5", "2001:db8::a"]);
        h.addrs.retain(|a| a.ip.to_string().starts_with("fe80"));
        assert!(
            ranked_v6(&h, 2).is_empty(),
            "a link-local address is no underlay"
        );
    }

    #[test]
    fn ranking_follows_flanneld() {
        let mut h = host();
        h.addrs = vec![
            AddrInfo {
                secondary: true,
                ..addr(2, "192.0.2.1")
            },
            AddrInfo {
                permanent: false,
                ..addr(2, "192.0.2.2")
            },
            AddrInfo {
                deprecated: true,
                ..addr(2, "192.0.2.3")
            },
            addr(2, "169.254.1.1"),
            addr(2, "192.0.2.4"),
            addr(2, "255.255.255.255"),
        ];
        let got: Vec<String> = ranked_v4(&h, 2).iter().map(ToString::to_string).collect();
        assert_eq!(got, ["192.0.2.4", "192.0.2.1", "192.0.2.2", "169.254.1.1"]);
    }
}
