//! flannel's network config, the JSON value of `<prefix>/config`, read exactly as flanneld
//! reads it (`pkg/subnet/config.go`, `pkg/backend/udp`, `pkg/backend/vxlan`), so a config
//! that brings up flanneld nodes brings up fustian nodes with the same settings, and one that
//! flanneld refuses is refused.
//!
//! ```text
//! {"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}
//! ```
//!
//! flanneld decodes it with Go's `encoding/json` ([`super::gojson`]): keys match fields in any
//! case (`"network"`, `"vni"`), the later of two keys naming one field wins, unknown keys are
//! ignored, `null` leaves a field as it was (but sets the pointers `IPv6SubnetMin` and
//! `IPv6SubnetMax` back to unset, even after an earlier address), and a value of the wrong type (a string for a
//! number, `1.0` for an integer) fails the whole config. flannel's IP and CIDR fields take
//! the raw text with its quotes trimmed, so `null` or an escaped character there is an error.
//!
//! Then flannel's rules: `Network` is required and not `0.0.0.0/0`; `SubnetLen` defaults to 24,
//! or to the network's prefix plus 2 when the network is smaller than a /22 (refused below a
//! /28), and when given must lie between the prefix plus 2 and 30; `SubnetMin` and `SubnetMax`
//! (`0.0.0.0` meaning unset) default to the second and the last subnet and must lie in the
//! network on a subnet boundary. Without a `Backend` key the backend is `udp`; a `Backend`
//! without `Type` (or `null`) is refused, as flanneld refuses it ("unknown backend type");
//! `Type` matches without case.
//!
//! With `EnableIPv6: true` the same rules hold for the IPv6 half: `IPv6Network` is required
//! (not `::/0`); `IPv6SubnetLen` defaults to 64, or to the prefix plus 2 when the network is
//! smaller than a /62 (refused below a /124), and when given must lie between the prefix plus
//! 2 and 126; `IPv6SubnetMin` and `IPv6SubnetMax` default to the second and the last subnet
//! and must lie in the network on a subnet boundary. Without `EnableIPv6` the IPv6 fields are
//! only decoded, as flanneld decodes them.
//!
//! Where fustian differs, it refuses what flanneld would run in a way that cannot work or
//! would silently reinterpret: IPv6-only (`EnableIPv4: false`) networks (flanneld's etcd
//! subnet manager still allocates an IPv4 subnet for every lease, so such a network has no
//! lease layout to follow), any backend but `udp` and `vxlan`, `GBP` and `DirectRouting` set, a `udp` `Port`
//! of 0 (flanneld would bind a random port), a port or VNI that flanneld would wrap into
//! another one, an `MTU` that leaves the device below 68 bytes, and `SubnetMin` above
//! `SubnetMax` (or `IPv6SubnetMin` above `IPv6SubnetMax`). All of it is untrusted input: every error names the field, nothing panics,
//! and the parser is fuzzed (`fuzz/fuzz_targets/etcd_config.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use super::gojson::{self, SyntaxError, TypeError};

/// What flannel's `vxlan` backend takes off `Backend.MTU` for the device and `FLANNEL_MTU`
/// (`encapOverhead`: outer IPv4, UDP, VXLAN and inner Ethernet headers).
pub const VXLAN_MTU_OVERHEAD: u32 = 50;

/// Why a network config was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetConfigError {
    /// Not JSON at all.
    #[error("not valid JSON: {0}")]
    Json(#[from] SyntaxError),
    /// A field has a value flannel would refuse, or fustian cannot run.
    #[error("{field}: {detail}")]
    Field {
        /// The JSON field (`Backend.VNI` for a backend option).
        field: &'static str,
        /// What is wrong.
        detail: String,
    },
}

/// The backend a network config asks for, with the options flannel's backend reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// flannel's `udp` backend.
    Udp {
        /// `Backend.Port`; `None` means flannel's 8285.
        port: Option<u16>,
    },
    /// `vxlan`.
    Vxlan {
        /// `Backend.VNI` (default 1).
        vni: u32,
        /// `Backend.Port`; `None` (absent or 0) means the kernel's default, 8472.
        port: Option<u16>,
        /// `Backend.MTU`: the underlay MTU the device MTU is computed from; `None` means the
        /// underlay interface's own.
        mtu: Option<u32>,
    },
}

impl Backend {
    /// Returns the backend type as flannel writes it.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Udp { .. } => "udp",
            Self::Vxlan { .. } => "vxlan",
        }
    }

    /// Returns the UDP port the backend listens on and sends to.
    pub const fn port(&self) -> u16 {
        match *self {
            Self::Udp { port } => match port {
                Some(p) => p,
                None => crate::wire::flannel::DEFAULT_PORT,
            },
            Self::Vxlan { port, .. } => match port {
                Some(p) => p,
                None => crate::wire::vxlan::DEFAULT_PORT,
            },
        }
    }

    /// Returns the device MTU (and `FLANNEL_MTU`) the config sets, as flanneld computes it:
    /// `Backend.MTU` − 50 for `vxlan`; `None` when it is left to the underlay.
    pub const fn tun_mtu(&self) -> Option<u32> {
        match *self {
            Self::Vxlan { mtu: Some(m), .. } => Some(m - VXLAN_MTU_OVERHEAD),
            _ => None,
        }
    }
}

/// `<prefix>/config`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// `Network`.
    pub network: Ipv4Net,
    /// `SubnetLen`.
    pub subnet_len: u8,
    /// `SubnetMin`: the first subnet that may be leased.
    pub subnet_min: Ipv4Addr,
    /// `SubnetMax`: the last subnet that may be leased.
    pub subnet_max: Ipv4Addr,
    /// `EnableNFTables`: masquerade rules go through nftables rather than iptables.
    pub enable_nftables: bool,
    /// The IPv6 half of a dual-stack network (`EnableIPv6: true`).
    pub ipv6: Option<Ipv6Config>,
    /// `Backend`.
    pub backend: Backend,
}

/// The IPv6 half of a dual-stack network config, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Config {
    /// `IPv6Network`.
    pub network: Ipv6Net,
    /// `IPv6SubnetLen`.
    pub subnet_len: u8,
    /// `IPv6SubnetMin`: the first subnet that may be leased.
    pub subnet_min: Ipv6Addr,
    /// `IPv6SubnetMax`: the last subnet that may be leased.
    pub subnet_max: Ipv6Addr,
}

impl Ipv6Config {
    /// Returns the subnets that may be leased, in address order (lazily: a /48 holds 65 536
    /// /64s).
    pub fn subnets(&self) -> impl Iterator<Item = Ipv6Net> + '_ {
        let size = 1u128 << (128 - u32::from(self.subnet_len));
        let (min, max) = (u128::from(self.subnet_min), u128::from(self.subnet_max));
        (0..=(max - min) / size)
            .filter_map(move |i| Ipv6Net::new(Ipv6Addr::from(min + i * size), self.subnet_len).ok())
    }

    /// Returns true when `subnet` is one this config allows to be leased.
    pub fn allows(&self, subnet: Ipv6Net) -> bool {
        let v = u128::from(subnet.network());
        subnet.prefix_len() == self.subnet_len
            && subnet.trunc() == subnet
            && v >= u128::from(self.subnet_min)
            && v <= u128::from(self.subnet_max)
    }
}

impl NetworkConfig {
    /// Parses and validates the JSON value of `<prefix>/config`.
    ///
    /// # Errors
    ///
    /// [`NetConfigError`] naming the field flanneld would also refuse, or that fustian cannot
    /// honour (see the module docs).
    pub fn parse(json: &[u8]) -> Result<Self, NetConfigError> {
        gojson::check(json)?;
        let raw = Raw::decode(json)?;
        if !raw.enable_ipv4 {
            return Err(field(
                "EnableIPv4",
                "false (an IPv6-only network) is not supported by fustian: flanneld's etcd subnet \
                 manager allocates an IPv4 subnet for every lease; run a dual-stack network \
                 (EnableIPv6 beside IPv4) instead",
            ));
        }
        let ipv6 = if raw.enable_ipv6 {
            Some(parse_ipv6(&raw)?)
        } else {
            None
        };
        let network = match raw.network {
            None => return Err(field("Network", "missing")),
            Some(n) if n.prefix_len() == 0 && n.network().is_unspecified() => {
                return Err(field("Network", "0.0.0.0/0 is not a pod network"));
            }
            Some(n) => n,
        };
        let prefix = network.prefix_len();
        let subnet_len = match raw.subnet_len {
            0 if prefix > 28 => {
                return Err(field(
                    "Network",
                    format!("/{prefix} is too small: the smallest network is a /28"),
                ));
            }
            0 if prefix <= 22 => 24,
            0 => prefix + 2,
            n if n > 30 => return Err(field("SubnetLen", format!("{n} is above 30"))),
            n if n < u64::from(prefix) + 2 => {
                return Err(field(
                    "SubnetLen",
                    format!("{n} leaves fewer than four subnets in /{prefix}"),
                ));
            }
            n => u8::try_from(n).unwrap_or(30),
        };
        let size = 1u64 << (32 - u32::from(subnet_len));
        let base = u64::from(u32::from(network.network()));
        let last = base + (1u64 << (32 - u32::from(prefix))) - size;
        let bound = |name: &'static str, ip: Ipv4Addr, default: u64| {
            let v = u64::from(u32::from(ip));
            if v == 0 {
                return Ok(default);
            }
            if !network.contains(&ip) {
                return Err(field(name, format!("{ip} is outside {network}")));
            }
            if (v - base) % size != 0 {
                return Err(field(
                    name,
                    format!("{ip} is not on a /{subnet_len} boundary"),
                ));
            }
            Ok(v)
        };
        let min = bound("SubnetMin", raw.subnet_min, base + size)?;
        let max = bound("SubnetMax", raw.subnet_max, last)?;
        if min > max {
            return Err(field(
                "SubnetMin",
                format!(
                    "above SubnetMax {}",
                    Ipv4Addr::from(u32::try_from(max).unwrap_or(0))
                ),
            ));
        }
        let backend = parse_backend(raw.backend)?;
        Ok(Self {
            network,
            subnet_len,
            subnet_min: Ipv4Addr::from(u32::try_from(min).unwrap_or(0)),
            subnet_max: Ipv4Addr::from(u32::try_from(max).unwrap_or(0)),
            enable_nftables: raw.enable_nftables,
            ipv6,
            backend,
        })
    }

    /// Returns the subnets that may be leased, in address order.
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        let size = 1u32 << (32 - u32::from(self.subnet_len));
        let (min, max) = (u32::from(self.subnet_min), u32::from(self.subnet_max));
        (0..=(max - min) / size)
            .filter_map(move |i| Ipv4Net::new(Ipv4Addr::from(min + i * size), self.subnet_len).ok())
    }

    /// Returns true when `subnet` is one this config allows to be leased.
    pub fn allows(&self, subnet: Ipv4Net) -> bool {
        let v = u32::from(subnet.network());
        subnet.prefix_len() == self.subnet_len
            && v >= u32::from(self.subnet_min)
            && v <= u32::from(self.subnet_max)
    }
}

/// The config as Go's decoder leaves flannel's `Config` struct, before flannel's checks.
struct Raw<'a> {
    enable_ipv4: bool,
    enable_ipv6: bool,
    enable_nftables: bool,
    network: Option<Ipv4Net>,
    subnet_min: Ipv4Addr,
    subnet_max: Ipv4Addr,
    subnet_len: u64,
    ipv6_network: Option<(Ipv6Addr, u8)>,
    ipv6_subnet_min: Option<Ipv6Addr>,
    ipv6_subnet_max: Option<Ipv6Addr>,
    ipv6_subnet_len: u64,
    /// The raw text of the last `Backend` member (`null` included), if any.
    backend: Option<&'a [u8]>,
}

impl<'a> Raw<'a> {
    fn decode(json: &'a [u8]) -> Result<Self, NetConfigError> {
        let mut raw = Raw {
            enable_ipv4: true,
            enable_ipv6: false,
            enable_nftables: false,
            network: None,
            subnet_min: Ipv4Addr::UNSPECIFIED,
            subnet_max: Ipv4Addr::UNSPECIFIED,
            subnet_len: 0,
            ipv6_network: None,
            ipv6_subnet_min: None,
            ipv6_subnet_max: None,
            ipv6_subnet_len: 0,
            backend: None,
        };
        let Some(members) = gojson::members(json) else {
            // `null` decodes to nothing at all, which then has no Network.
            if json.trim_ascii() == b"null" {
                return Ok(raw);
            }
            return Err(field("config", "not a JSON object"));
        };
        for (key, value) in members {
            let is = |name| gojson::names(&key, name);
            if is("EnableIPv4") {
                set(
                    &mut raw.enable_ipv4,
                    typed("EnableIPv4", gojson::boolean(value))?,
                );
            } else if is("EnableIPv6") {
                set(
                    &mut raw.enable_ipv6,
                    typed("EnableIPv6", gojson::boolean(value))?,
                );
            } else if is("EnableNFTables") {
                set(
                    &mut raw.enable_nftables,
                    typed("EnableNFTables", gojson::boolean(value))?,
                );
            } else if is("Network") {
                raw.network = Some(ipv4_cidr(value)?);
            } else if is("IPv6Network") {
                let (ip, len) = go_cidr(gojson::trimmed_quotes(value))
                    .ok_or_else(|| not_a(("IPv6Network", value), "CIDR"))?;
                // flannel's `IP6Net` keeps the 16-byte form; an IPv4 CIDR there is no IPv6
                // network (and is refused once IPv6 is on).
                raw.ipv6_network = match ip {
                    IpAddr::V6(ip) => Some((ip, len)),
                    IpAddr::V4(_) => None,
                };
            } else if is("SubnetMin") {
                raw.subnet_min = ipv4("SubnetMin", value)?;
            } else if is("SubnetMax") {
                raw.subnet_max = ipv4("SubnetMax", value)?;
            } else if is("IPv6SubnetMin") || is("IPv6SubnetMax") {
                // Pointers: `null` sets them back to unset (as Go's decoder sets a pointer to nil,
                // even after an earlier address); anything else must be an IP address.
                let name = if is("IPv6SubnetMin") {
                    "IPv6SubnetMin"
                } else {
                    "IPv6SubnetMax"
                };
                let ip = if value == b"null" {
                    None
                } else {
                    let ip = go_ip(gojson::trimmed_quotes(value))
                        .ok_or_else(|| not_a((name, value), "IP address"))?;
                    Some(match ip {
                        IpAddr::V6(ip) => ip,
                        IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                    })
                };
                if name == "IPv6SubnetMin" {
                    raw.ipv6_subnet_min = ip;
                } else {
                    raw.ipv6_subnet_max = ip;
                }
            } else if is("SubnetLen") {
                set(
                    &mut raw.subnet_len,
                    typed("SubnetLen", gojson::unsigned(value))?,
                );
            } else if is("IPv6SubnetLen") {
                set(
                    &mut raw.ipv6_subnet_len,
                    typed("IPv6SubnetLen", gojson::unsigned(value))?,
                );
            } else if is("Backend") {
                raw.backend = Some(value);
            }
        }
        Ok(raw)
    }
}

/// flannel's checks of the IPv6 half (`CheckNetworkConfig`), on 128-bit integers.
fn parse_ipv6(raw: &Raw<'_>) -> Result<Ipv6Config, NetConfigError> {
    let network = match raw.ipv6_network {
        None => return Err(field("IPv6Network", "missing (EnableIPv6 is true)")),
        Some((_, 0)) => return Err(field("IPv6Network", "::/0 is not a pod network")),
        Some((ip, len)) => Ipv6Net::new(ip, len)
            .map(|n| n.trunc())
            .map_err(|_| field("IPv6Network", format!("{ip}/{len} is not an IPv6 CIDR")))?,
    };
    let prefix = network.prefix_len();
    let subnet_len = match raw.ipv6_subnet_len {
        0 if prefix > 124 => {
            return Err(field(
                "IPv6Network",
                format!("/{prefix} is too small: the smallest IPv6 network is a /124"),
            ));
        }
        0 if prefix <= 62 => 64,
        0 => prefix + 2,
        n if n > 126 => return Err(field("IPv6SubnetLen", format!("{n} is above 126"))),
        n if n < u64::from(prefix) + 2 => {
            return Err(field(
                "IPv6SubnetLen",
                format!("{n} leaves fewer than four subnets in /{prefix}"),
            ));
        }
        n => u8::try_from(n).unwrap_or(126),
    };
    // prefix >= 1 and subnet_len >= prefix + 2, so neither shift reaches 128.
    let size = 1u128 << (128 - u32::from(subnet_len));
    let base = u128::from(network.network());
    let last = base + ((1u128 << (128 - u32::from(prefix))) - size);
    let bound = |name: &'static str, ip: Option<Ipv6Addr>, default: u128| {
        let Some(ip) = ip.filter(|ip| !ip.is_unspecified()) else {
            return Ok(default);
        };
        if !network.contains(&ip) {
            return Err(field(name, format!("{ip} is outside {network}")));
        }
        if (u128::from(ip) - base) % size != 0 {
            return Err(field(
                name,
                format!("{ip} is not on a /{subnet_len} boundary"),
            ));
        }
        Ok(u128::from(ip))
    };
    let min = bound("IPv6SubnetMin", raw.ipv6_subnet_min, base + size)?;
    let max = bound("IPv6SubnetMax", raw.ipv6_subnet_max, last)?;
    if min > max {
        return Err(field(
            "IPv6SubnetMin",
            format!("above IPv6SubnetMax {}", Ipv6Addr::from(max)),
        ));
    }
    Ok(Ipv6Config {
        network,
        subnet_len,
        subnet_min: Ipv6Addr::from(min),
        subnet_max: Ipv6Addr::from(max),
    })
}

/// The fields of flanneld's network config (`pkg/subnet/config.go`).
const CONFIG_FIELDS: [&str; 13] = [
    "EnableIPv4",
    "EnableIPv6",
    "EnableNFTables",
    "Network",
    "IPv6Network",
    "SubnetMin",
    "SubnetMax",
    "IPv6SubnetMin",
    "IPv6SubnetMax",
    "SubnetLen",
    "IPv6SubnetLen",
    "BackendType",
    "Backend",
];

/// The options flanneld's `vxlan` backend reads (`pkg/backend/vxlan`), `Type` included.
const VXLAN_FIELDS: [&str; 7] = [
    "Type",
    "VNI",
    "Port",
    "MTU",
    "GBP",
    "Learning",
    "DirectRouting",
];

/// The options flanneld's `udp` backend reads (`pkg/backend/udp`), `Type` included.
const UDP_FIELDS: [&str; 2] = ["Type", "Port"];

/// Returns the keys of a network config (`Backend.X` for a backend option) that neither
/// flanneld nor fustian reads: flanneld ignores them silently, as Go's JSON decoder does, and
/// so does the config's parse, but a misspelt option (`"VIN": 2`) is then worth a warning. At
/// most `limit` are returned, each as written (the caller escapes it for the log).
pub fn unread_keys(json: &[u8], limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    // Only well-formed JSON is walked (the members iterator expects it).
    if gojson::check(json).is_err() {
        return out;
    }
    let Some(members) = gojson::members(json) else {
        return out;
    };
    let mut backend = None;
    for (key, value) in members {
        if gojson::names(&key, "Backend") {
            backend = Some(value);
        } else if !CONFIG_FIELDS.iter().any(|f| gojson::names(&key, f)) {
            out.push(key.into_owned());
        }
    }
    if let Some(backend) = backend
        && let Some(members) = gojson::members(backend)
    {
        let kind = gojson::members(backend)
            .into_iter()
            .flatten()
            .filter(|(k, _)| gojson::names(k, "Type"))
            .filter_map(|(_, v)| gojson::string(v).ok().flatten())
            .last()
            .unwrap_or_default();
        let fields: &[&str] = if kind.eq_ignore_ascii_case("vxlan") {
            &VXLAN_FIELDS
        } else if kind.eq_ignore_ascii_case("udp") {
            &UDP_FIELDS
        } else {
            &[]
        };
        if !fields.is_empty() {
            out.extend(
                members
                    .filter(|(k, _)| !fields.iter().any(|f| gojson::names(k, f)))
                    .map(|(k, _)| format!("Backend.{k}")),
            );
        }
    }
    out.truncate(limit);
    out
}

fn parse_backend(raw: Option<&[u8]>) -> Result<Backend, NetConfigError> {
    let Some(raw) = raw else {
        // flannel's code: no Backend means udp.
        return Ok(Backend::Udp { port: None });
    };
    let members = || gojson::members(raw).into_iter().flatten();
    if raw != b"null" && gojson::members(raw).is_none() {
        return Err(not_a(("Backend", raw), "JSON object"));
    }
    let mut kind = String::new();
    for (key, value) in members() {
        if gojson::names(&key, "Type")
            && let Some(t) = typed("Backend.Type", gojson::string(value))?
        {
            kind = t.into_owned();
        }
    }
    // flanneld looks the type up in lower case.
    if kind.eq_ignore_ascii_case("udp") {
        let mut port = 8285;
        for (key, value) in members() {
            if gojson::names(&key, "Port") {
                set(&mut port, typed("Backend.Port", gojson::signed(value))?);
            }
        }
        if port == 0 {
            return Err(field(
                "Backend.Port",
                "0: flanneld would listen on a random port no peer sends to",
            ));
        }
        let port = u16::try_from(port)
            .map_err(|_| field("Backend.Port", format!("{port} is not a port (1..=65535)")))?;
        return Ok(Backend::Udp {
            port: (port != crate::wire::flannel::DEFAULT_PORT).then_some(port),
        });
    }
    if kind.eq_ignore_ascii_case("vxlan") {
        return parse_vxlan(members());
    }
    if kind.is_empty() {
        return Err(field(
            "Backend.Type",
            "missing: flanneld refuses a Backend without a Type (unknown backend type)",
        ));
    }
    Err(field(
        "Backend.Type",
        format!(
            "`{}` is not a backend fustian speaks (udp, vxlan)",
            kind.escape_debug()
        ),
    ))
}

fn parse_vxlan<'a>(
    members: impl Iterator<Item = (std::borrow::Cow<'a, str>, &'a [u8])>,
) -> Result<Backend, NetConfigError> {
    let (mut vni, mut port, mut mtu) = (1i64, 0i64, None);
    let (mut gbp, mut learning, mut direct) = (false, false, false);
    for (key, value) in members {
        let is = |name| gojson::names(&key, name);
        if is("VNI") {
            set(&mut vni, typed("Backend.VNI", gojson::signed(value))?);
        } else if is("Port") {
            set(&mut port, typed("Backend.Port", gojson::signed(value))?);
        } else if is("MTU") {
            if let Some(m) = typed("Backend.MTU", gojson::signed(value))? {
                mtu = Some(m);
            }
        } else if is("GBP") {
            set(&mut gbp, typed("Backend.GBP", gojson::boolean(value))?);
        } else if is("Learning") {
            set(
                &mut learning,
                typed("Backend.Learning", gojson::boolean(value))?,
            );
        } else if is("DirectRouting") {
            set(
                &mut direct,
                typed("Backend.DirectRouting", gojson::boolean(value))?,
            );
        }
    }
    // Learning only lets the kernel add forwarding entries from received frames; with every
    // peer known from its lease it changes nothing on the wire, so it is accepted as is.
    let _ = learning;
    if gbp {
        return Err(field(
            "Backend.GBP",
            "true: fustian does not carry VXLAN group policy",
        ));
    }
    if direct {
        return Err(field(
            "Backend.DirectRouting",
            "true: fustian always encapsulates, even to peers on the same underlay subnet",
        ));
    }
    let vni = u32::try_from(vni)
        .ok()
        .filter(|&v| v < 1 << 24)
        .ok_or_else(|| field("Backend.VNI", format!("{vni} is not a VNI (0..=16777215)")))?;
    let port = u16::try_from(port)
        .map_err(|_| field("Backend.Port", format!("{port} is not a port (0..=65535)")))?;
    let device_min = 68 + i64::from(VXLAN_MTU_OVERHEAD);
    let device_max = 65_000 + i64::from(VXLAN_MTU_OVERHEAD);
    let mtu = match mtu {
        None => None,
        Some(m) if (device_min..=device_max).contains(&m) => u32::try_from(m).ok(),
        Some(m) => {
            return Err(field(
                "Backend.MTU",
                format!(
                    "{m} leaves a device MTU outside 68..=65000 after {VXLAN_MTU_OVERHEAD} bytes \
                     of VXLAN (give {device_min}..={device_max})"
                ),
            ));
        }
    };
    Ok(Backend::Vxlan {
        vni,
        port: (port != 0 && port != crate::wire::vxlan::DEFAULT_PORT).then_some(port),
        mtu,
    })
}

fn field(field: &'static str, detail: impl Into<String>) -> NetConfigError {
    NetConfigError::Field {
        field,
        detail: detail.into(),
    }
}

fn not_a((name, raw): (&'static str, &[u8]), what: &str) -> NetConfigError {
    field(name, format!("`{}` is not {what}", gojson::show(raw)))
}

fn typed<T>(name: &'static str, r: Result<T, TypeError>) -> Result<T, NetConfigError> {
    r.map_err(|e| field(name, e.to_string()))
}

/// Go's decoder: a value sets the field, `null` leaves it.
fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

/// `Network`: flannel's `IP4Net` decoder (Go's `net.ParseCIDR` on the quote-trimmed text,
/// IPv4 only; host bits are cleared).
fn ipv4_cidr(raw: &[u8]) -> Result<Ipv4Net, NetConfigError> {
    match go_cidr(gojson::trimmed_quotes(raw)) {
        Some((IpAddr::V4(ip), len)) => Ipv4Net::new(ip, len)
            .map(|n| n.trunc())
            .map_err(|_| not_a(("Network", raw), "an IPv4 CIDR")),
        _ => Err(not_a(("Network", raw), "an IPv4 CIDR")),
    }
}

/// `SubnetMin`/`SubnetMax`: flannel's `IP4` decoder (Go's `net.ParseIP` on the quote-trimmed
/// text, then its IPv4 form, which an IPv4-mapped IPv6 address also has).
fn ipv4(name: &'static str, raw: &[u8]) -> Result<Ipv4Addr, NetConfigError> {
    match go_ip(gojson::trimmed_quotes(raw)) {
        Some(IpAddr::V4(ip)) => Ok(ip),
        Some(IpAddr::V6(ip)) if ip.to_ipv4_mapped().is_some() => {
            Ok(ip.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED))
        }
        _ => Err(not_a((name, raw), "an IPv4 address")),
    }
}

/// Go's `net.ParseIP`: dotted-quad IPv4 without leading zeros, or IPv6 without a zone.
fn go_ip(text: &[u8]) -> Option<IpAddr> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// Go's `net.ParseCIDR`: an address, `/`, and a decimal prefix length (leading zeros
/// allowed) no longer than the address.
fn go_cidr(text: &[u8]) -> Option<(IpAddr, u8)> {
    let text = std::str::from_utf8(text).ok()?;
    let (addr, len) = text.split_once('/')?;
    let ip: IpAddr = addr.parse().ok()?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = len.trim_start_matches('0');
    let len: u8 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    (len <= bits).then_some((ip, len))
}

#[cfg(test)]
mod tests;
