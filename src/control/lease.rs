//! flannel's etcd values, parsed and written exactly as flanneld does (etcd v3 API, flannel
//! 0.18 and later): the network configuration at `<prefix>/config` and one lease per node at
//! `<prefix>/subnets/<ip>-<len>`, on a dual-stack network `<prefix>/subnets/<ip>-<len>&<ipv6>-<len>`
//! (one key holds both of a node's subnets).
//!
//! ```text
//! /coreos.com/network/config
//!   {"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}
//! /coreos.com/network/subnets/10.244.1.0-24
//!   {"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan",
//!    "BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}
//! /coreos.com/network/subnets/10.244.2.0-24&fd00:10:244:2::-64
//!   {"PublicIP":"192.0.2.2","PublicIPv6":"2001:db8::2","BackendType":"vxlan",
//!    "BackendData":{"VNI":1,"VtepMAC":"..."},"BackendV6Data":{"VNI":1,"VtepMAC":"..."}}
//! ```
//!
//! The network config is parsed in [`super::netconf`] (as Go's decoder reads it; re-exported
//! here). This module has the lease side (`pkg/lease/lease.go`, `pkg/subnet/subnet.go`): lease
//! keys in flannel's exact format, lease values (a `udp` lease carries no backend type or
//! data), and the judgement of each lease against the network config. All of it is untrusted
//! input: every parser returns a [`LeaseError`] or `None`, never panics, and is fuzzed
//! (`fuzz/fuzz_targets/etcd_lease.rs`; the config in `etcd_config.rs`).

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::gojson;
pub use super::netconf::{Backend, Ipv6Config, NetConfigError, NetworkConfig};
use crate::wire::MacAddress;

/// The key prefix flanneld uses by default.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";

/// Why an etcd value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// Not JSON of the expected shape.
    #[error("not valid JSON for {what}: {detail}")]
    Json {
        /// Which value.
        what: &'static str,
        /// The decoder's message.
        detail: String,
    },
    /// A field has a value flannel would refuse.
    #[error("{field}: {detail}")]
    Field {
        /// The JSON field.
        field: &'static str,
        /// What is wrong.
        detail: String,
    },
}

fn field(field: &'static str, detail: impl Into<String>) -> LeaseError {
    LeaseError::Field {
        field,
        detail: detail.into(),
    }
}

/// The longest lease value taken: flanneld's longest (a dual-stack `vxlan` lease) is under
/// 300 bytes, so anything past this is refused unread, and the agent keeps no more of it
/// (which bounds what a writer filling the tracked keys can make a node hold).
pub const MAX_LEASE_VALUE: usize = 1024;

/// The value of one lease, as flanneld writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseValue {
    /// `PublicIP`.
    pub public_ip: Ipv4Addr,
    /// `PublicIPv6` (`null` when absent).
    pub public_ipv6: Option<Ipv6Addr>,
    /// `BackendType` (absent in a `udp` lease).
    pub backend_type: Option<String>,
    /// `BackendData.VNI`.
    pub vni: Option<u32>,
    /// `BackendData.VtepMAC`.
    pub vtep_mac: Option<MacAddress>,
    /// `BackendV6Data.VNI` (the IPv6 VTEP of a dual-stack `vxlan` lease).
    pub vni6: Option<u32>,
    /// `BackendV6Data.VtepMAC`.
    pub vtep_mac6: Option<MacAddress>,
}

impl LeaseValue {
    /// Parses a lease value as flanneld's Go decoder reads it into its `LeaseAttrs`
    /// ([`super::gojson`]): field names in any case, a field given twice taking the later
    /// value (each occurrence must still decode), `PublicIP` through flannel's own IPv4 type
    /// (so `"::ffff:192.0.2.1"` is 192.0.2.1, and `null` is refused), `PublicIPv6` a pointer
    /// (`null` is none), `BackendData`/`BackendV6Data` raw values read as the `vxlan`
    /// backend reads them (`VNI`, `VtepMAC` a quoted unicast MAC).
    ///
    /// # Errors
    ///
    /// [`LeaseError`] naming the field.
    pub fn parse(json: &[u8]) -> Result<Self, LeaseError> {
        gojson::check(json).map_err(|e| LeaseError::Json {
            what: "a lease",
            detail: e.to_string(),
        })?;
        let Some(members) = gojson::members(json) else {
            return Err(field("lease", "not a JSON object"));
        };
        let mut public_ip = None;
        let mut public_ipv6 = None;
        let mut backend_type: Option<String> = None;
        let mut backend_data: Option<&[u8]> = None;
        let mut backend_v6_data: Option<&[u8]> = None;
        for (key, value) in members {
            let is = |name| gojson::names(&key, name);
            if is("PublicIP") {
                public_ip = Some(go_ip4(value).ok_or_else(|| {
                    field(
                        "PublicIP",
                        format!("`{}` is not an IPv4 address", gojson::show(value)),
                    )
                })?);
            } else if is("PublicIPv6") {
                public_ipv6 = if value == b"null" {
                    None
                } else {
                    Some(go_ip6(value).ok_or_else(|| {
                        field(
                            "PublicIPv6",
                            format!("`{}` is not an IPv6 address", gojson::show(value)),
                        )
                    })?)
                };
            } else if is("BackendType") {
                if let Some(t) =
                    gojson::string(value).map_err(|e| field("BackendType", e.to_string()))?
                {
                    backend_type = Some(t.into_owned());
                }
            } else if is("BackendData") {
                backend_data = Some(value);
            } else if is("BackendV6Data") {
                backend_v6_data = Some(value);
            }
        }
        let public_ip = public_ip.ok_or_else(|| field("PublicIP", "missing"))?;
        // Only the `vxlan` backend reads the backend data; flanneld's others ignore it.
        let vxlan = backend_type.as_deref() == Some("vxlan");
        let (vni, vtep_mac) = vxlan_data(backend_data.filter(|_| vxlan), "BackendData")?;
        let (vni6, vtep_mac6) = vxlan_data(backend_v6_data.filter(|_| vxlan), "BackendV6Data")?;
        Ok(Self {
            public_ip,
            public_ipv6,
            backend_type: backend_type.filter(|s| !s.is_empty()),
            vni,
            vtep_mac,
            vni6,
            vtep_mac6,
        })
    }

    /// Returns the backend this lease speaks: its `BackendType`, `udp` when absent.
    pub fn backend(&self) -> &str {
        self.backend_type.as_deref().unwrap_or("udp")
    }

    /// Writes the value in flanneld's exact JSON: `PublicIP`, `PublicIPv6` (`null`), and for
    /// `vxlan` `BackendType` and `BackendData` with `VNI` and `VtepMAC`, then on a dual-stack
    /// node `BackendV6Data` of the same form; a `udp` lease has only the first two.
    pub fn to_json(&self) -> String {
        let v6 = self
            .public_ipv6
            .map_or_else(|| "null".to_owned(), |ip| format!("\"{ip}\""));
        let mut out = format!("{{\"PublicIP\":\"{}\",\"PublicIPv6\":{v6}", self.public_ip);
        if let Some(kind) = &self.backend_type {
            out.push_str(&format!(
                ",\"BackendType\":{}",
                serde_json::Value::from(kind.as_str())
            ));
            if let (Some(vni), Some(mac)) = (self.vni, self.vtep_mac) {
                out.push_str(&format!(
                    ",\"BackendData\":{{\"VNI\":{vni},\"VtepMAC\":\"{mac}\"}}"
                ));
            }
            if let (Some(vni), Some(mac)) = (self.vni6, self.vtep_mac6) {
                out.push_str(&format!(
                    ",\"BackendV6Data\":{{\"VNI\":{vni},\"VtepMAC\":\"{mac}\"}}"
                ));
            }
        }
        out.push('}');
        out
    }
}

/// Returns the bits of a lease's VNI that every flanneld agrees on: flanneld v0.24.0 and later
/// (and fustian) write the network's whole VNI in `BackendData.VNI` (a 32-bit field), while
/// earlier flanneld declared it a 16-bit field and wrote the VNI cut to its low 16 bits (VNI
/// 70000 as 4464). A lease's VNI is compared with the network's on these low 16 bits, so the
/// leases of either take each other's; the VNI on the wire is the network's whole 24-bit VNI,
/// as the kernel device's.
pub fn lease_vni(vni: u32) -> u32 {
    vni & 0xffff
}

/// Reads `BackendData` or `BackendV6Data` as the `vxlan` backend decodes it: `VNI` and
/// `VtepMAC` of an object (field names in any case, the later of two winning); anything but
/// an object (`null`, another backend's data) holds neither.
fn vxlan_data(
    data: Option<&[u8]>,
    what: &'static str,
) -> Result<(Option<u32>, Option<MacAddress>), LeaseError> {
    let Some(members) = data.and_then(gojson::members) else {
        return Ok((None, None));
    };
    let (vni_field, mac_field) = if what == "BackendData" {
        ("BackendData.VNI", "BackendData.VtepMAC")
    } else {
        ("BackendV6Data.VNI", "BackendV6Data.VtepMAC")
    };
    let (mut vni, mut mac) = (None, None);
    for (key, value) in members {
        if gojson::names(&key, "VNI") {
            if let Some(n) = gojson::unsigned(value).map_err(|e| field(vni_field, e.to_string()))? {
                vni = Some(
                    u32::try_from(n)
                        .map_err(|_| field(vni_field, format!("{n} is out of range")))?,
                );
            }
        } else if gojson::names(&key, "VtepMAC") {
            // flannel's hardwareAddr: a quoted MAC, `null` included in what it refuses.
            let text = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .and_then(|v| std::str::from_utf8(v).ok())
                .ok_or_else(|| {
                    field(mac_field, format!("`{}` is not a MAC", gojson::show(value)))
                })?;
            let parsed = text
                .parse::<MacAddress>()
                .map_err(|e| field(mac_field, format!("`{text}`: {e}")))?;
            // Frames to a group or all-zero MAC are never taken in by a peer's VTEP.
            if parsed.is_multicast() || parsed.0 == [0; 6] {
                return Err(field(mac_field, format!("`{text}` is not a unicast MAC")));
            }
            mac = Some(parsed);
        }
    }
    Ok((vni, mac))
}

/// flannel's `ip.IP4` decoder: the value with its quotes trimmed, an IPv4 address or an
/// IPv4-mapped IPv6 one (Go's `ParseIP` then `To4`).
fn go_ip4(raw: &[u8]) -> Option<Ipv4Addr> {
    let text = std::str::from_utf8(gojson::trimmed_quotes(raw)).ok()?;
    match text.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(ip) => Some(ip),
        std::net::IpAddr::V6(ip) => ip.to_ipv4_mapped(),
    }
}

/// flannel's `ip.IP6` decoder: the value with its quotes trimmed, any address Go's `ParseIP`
/// reads (an IPv4 one as its IPv4-mapped form, which the lease's judge then refuses).
fn go_ip6(raw: &[u8]) -> Option<Ipv6Addr> {
    let text = std::str::from_utf8(gojson::trimmed_quotes(raw)).ok()?;
    match text.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(ip) => Some(ip.to_ipv6_mapped()),
        std::net::IpAddr::V6(ip) => Some(ip),
    }
}

/// Returns the etcd key of the lease for `subnet`: `<prefix>/subnets/10.244.1.0-24`.
pub fn subnet_key(prefix: &str, subnet: Ipv4Net) -> String {
    key_under(
        prefix,
        &format!("subnets/{}-{}", subnet.network(), subnet.prefix_len()),
    )
}

/// The longest `--etcd-prefix` taken (after [`clean_prefix`]): a lease key is the prefix and
/// at most a few dozen bytes more, and etcd refuses keys past its request size.
pub const MAX_PREFIX: usize = 1024;

/// Cleans an etcd key prefix as flanneld's `path.Join` does when it makes every key
/// (Go's `path.Clean`): repeated slashes become one, `.` elements go, `..` removes the element
/// before it (and is dropped at the root), and a trailing slash goes. An empty or `.` prefix
/// cleans to the empty string, under which the keys are `config` and `subnets/...`, relative as
/// flanneld makes them.
pub fn clean_prefix(prefix: &str) -> String {
    let rooted = prefix.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in prefix.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(".."),
            },
            part => parts.push(part),
        }
    }
    let joined = parts.join("/");
    if rooted { format!("/{joined}") } else { joined }
}

/// The key `rest` under the cleaned prefix `prefix` (flanneld's `path.Join(prefix, rest)`):
/// `/coreos.com/network` and `config` make `/coreos.com/network/config`, `/` makes `/config`
/// and the empty prefix `config`.
pub fn key_under(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_owned()
    } else {
        format!("{}/{rest}", prefix.trim_end_matches('/'))
    }
}

impl SubnetKey {
    /// Returns the etcd key for these subnets as flanneld writes it (`MakeSubnetKey`):
    /// `<prefix>/subnets/10.244.1.0-24`, or with the IPv6 subnet
    /// `<prefix>/subnets/10.244.1.0-24&fd00:10:244:1::-64` (RFC 5952 text, as Go writes it).
    pub fn key(&self, prefix: &str) -> String {
        let mut key = subnet_key(prefix, self.ipv4);
        if let Some(v6) = self.ipv6 {
            key.push_str(&format!("&{}-{}", v6.network(), v6.prefix_len()));
        }
        key
    }
}

/// The subnets a lease key names: flannel's `<prefix>/subnets/A.B.C.D-LEN`, and on a
/// dual-stack node `<prefix>/subnets/A.B.C.D-LEN&<IPv6>-<LEN>` (`pkg/subnet/subnet.go`,
/// `MakeSubnetKey`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubnetKey {
    /// The IPv4 subnet.
    pub ipv4: Ipv4Net,
    /// The IPv6 subnet of a dual-stack lease.
    pub ipv6: Option<Ipv6Net>,
}

/// Parses a lease key. Only flannel's exact form is accepted: the dotted quad canonical (no
/// leading zeros, no other notation), the address the network address of its prefix, the
/// length plain decimal digits with no sign or leading zero; a dual-stack IPv6 part, when
/// present, in the canonical text form (RFC 5952, lower case, as Go writes it), also a network
/// address. Anything else is `None`, so a key such as `10.244.2.0-24&anything` never stands
/// for `10.244.2.0/24`.
pub fn parse_subnet_key(prefix: &str, key: &str) -> Option<SubnetKey> {
    let rest = key.strip_prefix(key_under(prefix, "subnets/").as_str())?;
    let (v4, v6) = match rest.split_once('&') {
        Some((v4, v6)) => (v4, Some(v6)),
        None => (rest, None),
    };
    let (ip, len) = split_len(v4)?;
    let addr: Ipv4Addr = ip.parse().ok()?;
    if addr.to_string() != ip {
        return None;
    }
    let ipv4 = Ipv4Net::new(addr, len).ok()?;
    if ipv4.trunc() != ipv4 {
        return None;
    }
    let ipv6 = match v6 {
        None => None,
        Some(text) => {
            let (ip, len) = split_len(text)?;
            // Go's text form: hex digits and colons only (no embedded dotted quad).
            if !ip
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b':')
            {
                return None;
            }
            let addr: Ipv6Addr = ip.parse().ok()?;
            if addr.to_string() != ip {
                return None;
            }
            let net = Ipv6Net::new(addr, len).ok()?;
            if net.trunc() != net {
                return None;
            }
            Some(net)
        }
    };
    Some(SubnetKey { ipv4, ipv6 })
}

/// flannel's `subnetRegex` (`pkg/subnet/subnet.go`), over bytes: unanchored at the start, its
/// second and third `.` any character but a newline (as Go's, which reads an invalid UTF-8
/// byte as one character), and ASCII digits for Go's `\d`.
static FLANNEL_KEY: std::sync::LazyLock<Option<regex::bytes::Regex>> =
    std::sync::LazyLock::new(|| {
        regex::bytes::Regex::new(
            r"(?-u)([0-9]+\.[0-9]+.[0-9]+.[0-9]+)-([0-9]+)(?:&([a-f0-9:]+)-([0-9]+))?$",
        )
        .ok()
    });

/// Returns the subnets flanneld reads from the etcd key `key` (its `ParseSubnetKey`, run on the
/// whole key): the `A.B.C.D-LEN[&IPV6-LEN]` that ends it, wherever that starts, the address
/// read by Go's `net.ParseIP` (std's `Ipv4Addr` parser has its rules: four fields of at most
/// 255, no leading zeros) and the lengths by `strconv.ParseUint` with 5
/// and 7 bits (leading zeros taken, so `10.244.3.0-024` is 10.244.3.0/24; at most /31 and
/// /127), each subnet truncated to its network address, as flanneld's `Overlaps` compares
/// them. Wider than [`parse_subnet_key`]: `<prefix>/subnets/x10.244.3.0-24` is a lease to
/// flanneld, not to this node, but flanneld's allocator takes its subnet as leased, and so
/// must this node's.
pub fn flannel_subnet_key(key: &[u8]) -> Option<SubnetKey> {
    let caps = FLANNEL_KEY.as_ref()?.captures(key)?;
    let text = |i| std::str::from_utf8(caps.get(i)?.as_bytes()).ok();
    let ipv4 = Ipv4Net::new(
        text(1)?.parse::<Ipv4Addr>().ok()?,
        go_parse_len(text(2)?, 31)?,
    )
    .ok()?
    .trunc();
    let ipv6 = match text(3) {
        None => None,
        Some(ip) => {
            let addr: Ipv6Addr = ip.parse().ok()?;
            Some(
                Ipv6Net::new(addr, go_parse_len(text(4)?, 127)?)
                    .ok()?
                    .trunc(),
            )
        }
    };
    Some(SubnetKey { ipv4, ipv6 })
}

/// Go's `strconv.ParseUint(text, 10, bits)` on decimal digits, for a result of at most `max`
/// (`1 << bits - 1`): leading zeros are taken.
fn go_parse_len(text: &str, max: u8) -> Option<u8> {
    if !text.bytes().all(|b| b.is_ascii_digit()) || text.is_empty() {
        return None;
    }
    let significant = text.trim_start_matches('0');
    if significant.len() > 3 {
        return None;
    }
    let len: u16 = if significant.is_empty() {
        0
    } else {
        significant.parse().ok()?
    };
    u8::try_from(len).ok().filter(|l| *l <= max)
}

/// Splits `ADDR-LEN`, where LEN is one to three decimal digits without a leading zero.
fn split_len(text: &str) -> Option<(&str, u8)> {
    let (ip, len) = text.rsplit_once('-')?;
    let digits = len.len() <= 3 && !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit());
    if !digits || (len.len() > 1 && len.starts_with('0')) {
        return None;
    }
    Some((ip, len.parse().ok()?))
}

/// Why a lease is left out of the table. Each reason is one series of
/// `fustian_etcd_leases_rejected{reason="..."}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rejection {
    /// The key is not flannel's exact `A.B.C.D-LEN` form.
    BadKey,
    /// The value is not a lease flannel would write (JSON, `PublicIP`, `VtepMAC`).
    BadValue,
    /// The IPv6 subnet is not inside the network's `IPv6Network`.
    Ipv6OutsideNetwork,
    /// The IPv6 subnet overlaps this node's own or one created before it.
    Ipv6Overlap,
    /// The IPv6 prefix length is not the network's `IPv6SubnetLen`.
    Ipv6SubnetLen,
    /// The IPv6 subnet lies outside `IPv6SubnetMin`..`IPv6SubnetMax`.
    Ipv6SubnetRange,
    /// The subnet is not inside the network's `Network`.
    OutsideNetwork,
    /// The subnet overlaps this node's own or one created before it.
    Overlap,
    /// `PublicIP` is 255.255.255.255.
    PublicIpBroadcast,
    /// `PublicIP` lies inside a pod subnet of the table (the lease's own, another lease's,
    /// this node's): datagrams to it would be routed back into the overlay and encapsulated
    /// again, a loop.
    PublicIpInNetwork,
    /// `PublicIP` is a loopback address.
    PublicIpLoopback,
    /// `PublicIP` is a multicast address.
    PublicIpMulticast,
    /// `PublicIP` is this node's own address (at a key other than this node's lease).
    PublicIpOwn,
    /// `PublicIP` is in 240.0.0.0/4, reserved: no host can be reached there.
    PublicIpReserved,
    /// `PublicIP` is 0.0.0.0.
    PublicIpUnspecified,
    /// `PublicIPv6` lies inside an IPv6 pod subnet of the table (a loop, as for IPv4).
    PublicIpv6InNetwork,
    /// `PublicIPv6` is this node's own IPv6 address (at a key other than this node's lease).
    PublicIpv6Own,
    /// `PublicIPv6` cannot be a peer's underlay address: unspecified, loopback, multicast,
    /// link-local (no interface to send on) or IPv4-mapped.
    PublicIpv6Unusable,
    /// The prefix length is not the network's `SubnetLen`.
    SubnetLen,
    /// The subnet lies outside `SubnetMin`..`SubnetMax`.
    SubnetRange,
}

impl Rejection {
    /// Every reason, in the order of the metric's series.
    pub const ALL: [Self; 20] = [
        Self::BadKey,
        Self::BadValue,
        Self::Ipv6OutsideNetwork,
        Self::Ipv6Overlap,
        Self::Ipv6SubnetLen,
        Self::Ipv6SubnetRange,
        Self::OutsideNetwork,
        Self::Overlap,
        Self::PublicIpBroadcast,
        Self::PublicIpInNetwork,
        Self::PublicIpLoopback,
        Self::PublicIpMulticast,
        Self::PublicIpOwn,
        Self::PublicIpReserved,
        Self::PublicIpUnspecified,
        Self::PublicIpv6InNetwork,
        Self::PublicIpv6Own,
        Self::PublicIpv6Unusable,
        Self::SubnetLen,
        Self::SubnetRange,
    ];

    /// Returns the `reason` label.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::BadKey => "bad_key",
            Self::BadValue => "bad_value",
            Self::Ipv6OutsideNetwork => "ipv6_outside_network",
            Self::Ipv6Overlap => "ipv6_overlap",
            Self::Ipv6SubnetLen => "ipv6_subnet_len",
            Self::Ipv6SubnetRange => "ipv6_subnet_range",
            Self::OutsideNetwork => "outside_network",
            Self::Overlap => "overlap",
            Self::PublicIpBroadcast => "public_ip_broadcast",
            Self::PublicIpInNetwork => "public_ip_in_network",
            Self::PublicIpLoopback => "public_ip_loopback",
            Self::PublicIpMulticast => "public_ip_multicast",
            Self::PublicIpOwn => "public_ip_own",
            Self::PublicIpReserved => "public_ip_reserved",
            Self::PublicIpUnspecified => "public_ip_unspecified",
            Self::PublicIpv6InNetwork => "public_ipv6_in_network",
            Self::PublicIpv6Own => "public_ipv6_own",
            Self::PublicIpv6Unusable => "public_ipv6_unusable",
            Self::SubnetLen => "subnet_len",
            Self::SubnetRange => "subnet_range",
        }
    }

    /// Returns the index of this reason in [`Self::ALL`].
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// One key-value under `<prefix>/subnets/` as etcd holds it.
#[derive(Debug, Clone, Copy)]
pub struct StoredLease<'a> {
    /// The whole key.
    pub key: &'a str,
    /// The revision that created the key (etcd's `create_revision`): the older lease wins an
    /// overlap.
    pub create_revision: i64,
    /// The value.
    pub value: &'a [u8],
}

/// A lease taken into the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Its key.
    pub key: String,
    /// Its subnet.
    pub subnet: Ipv4Net,
    /// Its IPv6 subnet, on a dual-stack network (`None` for a lease that has none, and on an
    /// IPv4 network, where the IPv6 half of a key is not used).
    pub subnet6: Option<Ipv6Net>,
    /// Its value.
    pub value: LeaseValue,
}

/// A lease left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Its key.
    pub key: String,
    /// The reason.
    pub reason: Rejection,
    /// What exactly is wrong, for the log.
    pub detail: String,
}

/// This node, as [`judge_leases_dual`] needs it.
#[derive(Debug, Clone, Copy, Default)]
pub struct OwnNode<'a> {
    /// `PublicIP`.
    pub ip: Option<Ipv4Addr>,
    /// `PublicIPv6`, on a dual-stack node.
    pub ipv6: Option<Ipv6Addr>,
    /// The key of this node's lease, skipped.
    pub key: Option<&'a str>,
    /// This node's subnet.
    pub subnet: Option<Ipv4Net>,
    /// This node's IPv6 subnet.
    pub subnet6: Option<Ipv6Net>,
}

/// Returns true when `key` is in the form this network's allocator writes: its IPv4 subnet
/// allowed by the config, with an allowed IPv6 subnet on a dual-stack network and none on an
/// IPv4 one. Such a key wins an overlap against a key of any other form (see
/// [`judge_leases`]).
pub fn allocator_form(config: &NetworkConfig, key: &SubnetKey) -> bool {
    let v6_fits = match (config.ipv6, key.ipv6) {
        (None, None) => true,
        (Some(c6), Some(v6)) => c6.allows(v6),
        _ => false,
    };
    v6_fits && config.allows(key.ipv4)
}

/// Judges every lease on its own, as flanneld's allocator would have allowed it
/// (`pkg/subnet/config.go`, `local_manager.go`): its key in flannel's exact form, its subnet
/// inside `Network`, of length `SubnetLen` and inside `SubnetMin`..`SubnetMax`, overlapping
/// neither `own_subnet` nor a lease that goes first, and its `PublicIP` a unicast address other
/// than `own_ip`. A key in the form this network's allocator writes ([`allocator_form`]: plain
/// `A.B.C.D-LEN` on an IPv4 network, `A.B.C.D-LEN&V6-LEN` on a dual-stack one) goes before
/// every key of another form, whatever their create revisions: a key of another form
/// (`10.244.2.0-24&fd00::-64` on an IPv4 network) is never the allocator's, and must not take
/// a subnet from the node holding it when that node's key is created again (written back after
/// a deletion, granted again after an expiry). Among keys of one form the lower
/// `create_revision` goes first; equal revisions, which only one transaction can produce, go by
/// key. The lease at `own_key` is this node's and is skipped. Nothing
/// here fails: every lease is either accepted or rejected with its reason. An IPv4 node's
/// view of [`judge_leases_dual`].
pub fn judge_leases<'a>(
    config: &NetworkConfig,
    own_ip: Ipv4Addr,
    own_key: Option<&str>,
    own_subnet: Option<Ipv4Net>,
    prefix: &str,
    leases: impl IntoIterator<Item = StoredLease<'a>>,
) -> (Vec<Accepted>, Vec<Rejected>) {
    let own = OwnNode {
        ip: Some(own_ip),
        key: own_key,
        subnet: own_subnet,
        ..OwnNode::default()
    };
    judge_leases_dual(config, &own, prefix, leases)
}

/// [`judge_leases`] for both families: on a dual-stack network (the config's `ipv6`) the
/// IPv6 half of a lease is judged as the IPv4 half is (inside `IPv6Network`, of length
/// `IPv6SubnetLen`, inside `IPv6SubnetMin`..`IPv6SubnetMax`, overlapping neither this node's
/// IPv6 subnet nor an earlier lease's) and its `PublicIPv6`, when given, must be a unicast
/// global or unique-local address other than this node's. A lease failing either half is
/// left out whole: it is not one flanneld's allocator wrote. A lease without an IPv6 subnet
/// is an IPv4-only peer. On an IPv4 network the IPv6 half of a key is not looked at.
pub fn judge_leases_dual<'a>(
    config: &NetworkConfig,
    own: &OwnNode<'_>,
    prefix: &str,
    leases: impl IntoIterator<Item = StoredLease<'a>>,
) -> (Vec<Accepted>, Vec<Rejected>) {
    // Each lease with its parsed key and whether that key is of another form than the
    // allocator's (`false` sorts first).
    let mut leases: Vec<(bool, Option<SubnetKey>, StoredLease<'a>)> = leases
        .into_iter()
        .filter(|l| Some(l.key) != own.key)
        .map(|l| {
            let key = parse_subnet_key(prefix, l.key);
            let other = !key.is_some_and(|k| allocator_form(config, &k));
            (other, key, l)
        })
        .collect();
    leases.sort_by(|(oa, _, a), (ob, _, b)| {
        (*oa, a.create_revision, a.key).cmp(&(*ob, b.create_revision, b.key))
    });
    let mut accepted: Vec<Accepted> = Vec::new();
    // Accepted subnets of both families, each with the index of its lease in `accepted`.
    let mut taken: HashMap<IpNet, usize> = HashMap::new();
    let mut rejected = Vec::new();
    for (_, key, lease) in leases {
        let mut reject = |reason, detail: String| {
            rejected.push(Rejected {
                key: lease.key.to_owned(),
                reason,
                detail,
            });
        };
        let Some(key) = key else {
            let detail = match flannel_subnet_key(lease.key.as_bytes()) {
                Some(k) => format!(
                    "not flannel's A.B.C.D-LEN key form (flanneld reads it as {}: held for \
                     allocation, never routed)",
                    k.ipv4
                ),
                None => "not flannel's A.B.C.D-LEN key form".into(),
            };
            reject(Rejection::BadKey, detail);
            continue;
        };
        let subnet = key.ipv4;
        let subnet6 = config.ipv6.and(key.ipv6);
        if lease.value.len() > MAX_LEASE_VALUE {
            reject(
                Rejection::BadValue,
                format!("more than {MAX_LEASE_VALUE} bytes: no lease is that long"),
            );
            continue;
        }
        let value = match LeaseValue::parse(lease.value) {
            Ok(v) => v,
            Err(e) => {
                reject(Rejection::BadValue, e.to_string());
                continue;
            }
        };
        if let Some(reason) = judge_subnet(config, subnet) {
            reject(reason, format!("{subnet} in {}", config.network));
            continue;
        }
        if let (Some(v6), Some(c6)) = (subnet6, config.ipv6)
            && let Some(reason) = judge_subnet6(&c6, v6)
        {
            reject(reason, format!("{v6} in {}", c6.network));
            continue;
        }
        // Without an own address, 0.0.0.0 stands in: it is refused as unspecified first.
        let own_ip = own.ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        if let Some(reason) = judge_public_ip(value.public_ip, own_ip) {
            reject(reason, format!("PublicIP {}", value.public_ip));
            continue;
        }
        if config.ipv6.is_some()
            && let Some(ip6) = value.public_ipv6
            && let Some(reason) = judge_public_ipv6(ip6, own.ipv6)
        {
            reject(reason, format!("PublicIPv6 {ip6}"));
            continue;
        }
        let halves = std::iter::once((
            IpNet::V4(subnet),
            own.subnet.map(IpNet::V4),
            Rejection::Overlap,
        ))
        .chain(subnet6.map(|v6| {
            (
                IpNet::V6(v6),
                own.subnet6.map(IpNet::V6),
                Rejection::Ipv6Overlap,
            )
        }));
        let found = halves
            .clone()
            .find_map(|(net, mine, reason)| Some((reason, clash(net, mine, &taken, &accepted)?)));
        if let Some((reason, detail)) = found {
            reject(reason, detail);
            continue;
        }
        for (net, _, _) in halves {
            taken.insert(net, accepted.len());
        }
        accepted.push(Accepted {
            key: lease.key.to_owned(),
            subnet,
            subnet6,
            value,
        });
    }
    // A peer whose underlay address lies in a pod subnet the table routes (its own, another
    // peer's, this node's) would be reached through the TUN device: its datagrams would be
    // read back and encapsulated again, a loop. An underlay inside `Network` but outside
    // every leased subnet (hosts on 10.1.1.0/24 of a 10.0.0.0/8 network, with their own
    // more specific route) is left alone.
    let pods: Vec<IpNet> = accepted
        .iter()
        .flat_map(|a| std::iter::once(IpNet::V4(a.subnet)).chain(a.subnet6.map(IpNet::V6)))
        .chain(own.subnet.map(IpNet::V4))
        .chain(own.subnet6.map(IpNet::V6))
        .collect();
    let inside = |ip: std::net::IpAddr| pods.iter().find(|n| n.contains(&ip)).copied();
    accepted.retain(|a| {
        let v4 = inside(a.value.public_ip.into()).map(|n| {
            (
                Rejection::PublicIpInNetwork,
                a.value.public_ip.to_string(),
                n,
            )
        });
        let v6 = || {
            a.subnet6.and(a.value.public_ipv6).and_then(|ip| {
                inside(ip.into()).map(|n| (Rejection::PublicIpv6InNetwork, ip.to_string(), n))
            })
        };
        match v4.or_else(v6) {
            Some((reason, ip, net)) => {
                rejected.push(Rejected {
                    key: a.key.clone(),
                    reason,
                    detail: format!("underlay address {ip} is in the pod subnet {net}"),
                });
                false
            }
            None => true,
        }
    });
    (accepted, rejected)
}

/// Returns why `subnet` (one half of a lease) may not be accepted: it overlaps this node's
/// subnet of its family (`mine`) or a subnet accepted before (`taken`, with the index of its
/// lease in `accepted`). Every accepted subnet of a family has that family's length, so
/// overlapping an accepted one means being equal to it.
fn clash(
    subnet: IpNet,
    mine: Option<IpNet>,
    taken: &HashMap<IpNet, usize>,
    accepted: &[Accepted],
) -> Option<String> {
    if let Some(mine) = mine.filter(|m| m.contains(&subnet) || subnet.contains(m)) {
        return Some(format!("{subnet} is this node's {mine}"));
    }
    let first = taken.get(&subnet)?;
    let key = accepted.get(*first).map_or("", |a| a.key.as_str());
    Some(format!("{subnet} is already leased at {key}"))
}

/// Returns why `subnet` is not one the IPv6 half of the network's allocator could have
/// handed out.
pub fn judge_subnet6(config: &Ipv6Config, subnet: Ipv6Net) -> Option<Rejection> {
    if !config.network.contains(&subnet) {
        Some(Rejection::Ipv6OutsideNetwork)
    } else if subnet.prefix_len() != config.subnet_len {
        Some(Rejection::Ipv6SubnetLen)
    } else if !config.allows(subnet) {
        Some(Rejection::Ipv6SubnetRange)
    } else {
        None
    }
}

/// Returns why a lease's `PublicIPv6` cannot be a peer's underlay address (see
/// [`judge_public_ip`]); a link-local address names no interface to send on, and an
/// IPv4-mapped one is an IPv4 address in disguise.
pub fn judge_public_ipv6(ip: Ipv6Addr, own: Option<Ipv6Addr>) -> Option<Rejection> {
    let link_local = ip.segments()[0] & 0xffc0 == 0xfe80;
    if ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || link_local
        || ip.to_ipv4_mapped().is_some()
    {
        Some(Rejection::PublicIpv6Unusable)
    } else if Some(ip) == own {
        Some(Rejection::PublicIpv6Own)
    } else {
        None
    }
}

/// Returns why `subnet` is not one the network's allocator could have handed out.
pub fn judge_subnet(config: &NetworkConfig, subnet: Ipv4Net) -> Option<Rejection> {
    if !config.network.contains(&subnet) {
        Some(Rejection::OutsideNetwork)
    } else if subnet.prefix_len() != config.subnet_len {
        Some(Rejection::SubnetLen)
    } else if !config.allows(subnet) {
        Some(Rejection::SubnetRange)
    } else {
        None
    }
}

/// Returns why a lease's `PublicIP` cannot be a peer's underlay address: datagrams to or from
/// it would be local, go nowhere, or reach many hosts, and a peer at a local address lets any
/// local user speak for its pods.
pub fn judge_public_ip(ip: Ipv4Addr, own_ip: Ipv4Addr) -> Option<Rejection> {
    if ip.is_unspecified() {
        Some(Rejection::PublicIpUnspecified)
    } else if ip.is_loopback() {
        Some(Rejection::PublicIpLoopback)
    } else if ip.is_multicast() {
        Some(Rejection::PublicIpMulticast)
    } else if ip.is_broadcast() {
        Some(Rejection::PublicIpBroadcast)
    } else if ip.octets()[0] >= 240 {
        Some(Rejection::PublicIpReserved)
    } else if ip == own_ip {
        Some(Rejection::PublicIpOwn)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn flannels_example_lease() {
        // Documentation/reservations.md in flannel's repository.
        let text = br#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
        let lease = LeaseValue::parse(text).expect("valid");
        assert_eq!(lease.public_ip, Ipv4Addr::new(192, 168, 64, 3));
        assert_eq!(lease.backend(), "vxlan");
        assert_eq!(lease.vni, Some(1));
        assert_eq!(lease.to_json().as_bytes(), text);
        let udp = br#"{"PublicIP":"192.0.2.9","PublicIPv6":null}"#;
        let lease = LeaseValue::parse(udp).expect("valid");
        assert_eq!(lease.backend(), "udp");
        assert_eq!(lease.to_json().as_bytes(), udp);
    }

    #[test]
    fn flanneld_dual_stack_lease() {
        // Field order and form of flanneld's `LeaseAttrs` with a `vxlan` backend on both
        // families (`pkg/lease/lease.go`, `pkg/backend/vxlan`).
        let text = br#"{"PublicIP":"192.0.2.3","PublicIPv6":"2001:db8::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:03"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:06:03"}}"#;
        let lease = LeaseValue::parse(text).expect("valid");
        assert_eq!(
            lease.public_ipv6,
            Some("2001:db8::3".parse().expect("literal"))
        );
        assert_eq!(lease.vni6, Some(1));
        assert_eq!(lease.vtep_mac6, Some(MacAddress([0x0e, 0, 0, 0, 6, 3])));
        assert_eq!(lease.to_json().as_bytes(), text);
        for bad in [
            r#"{"PublicIP":"192.0.2.3","BackendType":"vxlan","BackendV6Data":{"VtepMAC":"zz"}}"#,
            r#"{"PublicIP":"192.0.2.3","BackendType":"vxlan","BackendV6Data":{"VNI":"1"}}"#,
            r#"{"PublicIP":"192.0.2.3","PublicIPv6":""}"#,
            r#"{"PublicIP":"192.0.2.3","BackendType":"vxlan","BackendData":{"VtepMAC":null}}"#,
        ] {
            assert!(LeaseValue::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        // flannel's IPv6 type reads an IPv4 address as its mapped form, which no peer can be.
        let mapped = LeaseValue::parse(br#"{"PublicIP":"192.0.2.3","PublicIPv6":"192.0.2.3"}"#)
            .expect("decodes as flanneld's");
        let ip6 = mapped.public_ipv6.expect("an address");
        assert_eq!(ip6.to_ipv4_mapped(), Some(Ipv4Addr::new(192, 0, 2, 3)));
        assert_eq!(
            judge_public_ipv6(ip6, None),
            Some(Rejection::PublicIpv6Unusable)
        );
        // `null` or another backend's data holds no VTEP.
        let lease =
            LeaseValue::parse(br#"{"PublicIP":"192.0.2.3","BackendV6Data":null}"#).expect("valid");
        assert_eq!((lease.vni6, lease.vtep_mac6), (None, None));
    }

    #[test]
    fn keys() {
        let net: Ipv4Net = "10.244.7.0/24".parse().expect("literal");
        let key = subnet_key(DEFAULT_PREFIX, net);
        assert_eq!(key, "/coreos.com/network/subnets/10.244.7.0-24");
        let plain = SubnetKey {
            ipv4: net,
            ipv6: None,
        };
        assert_eq!(parse_subnet_key(DEFAULT_PREFIX, &key), Some(plain));
        assert_eq!(
            parse_subnet_key(
                "/coreos.com/network/",
                "/coreos.com/network/subnets/10.244.7.0-24&fd00:1::-64"
            ),
            Some(SubnetKey {
                ipv4: net,
                ipv6: Some("fd00:1::/64".parse().expect("literal")),
            })
        );
    }

    #[rstest::rstest]
    #[case::config("/coreos.com/network/config")]
    #[case::host_bits("/coreos.com/network/subnets/10.244.7.1-24")]
    #[case::suffix_junk("/coreos.com/network/subnets/10.244.2.0-24&anything")]
    #[case::empty_v6("/coreos.com/network/subnets/10.244.2.0-24&")]
    #[case::v6_upper("/coreos.com/network/subnets/10.244.2.0-24&FD00::-64")]
    #[case::v6_long_form("/coreos.com/network/subnets/10.244.2.0-24&fd00:0:0:0:0:0:0:0-64")]
    #[case::v6_host_bits("/coreos.com/network/subnets/10.244.2.0-24&fd00::1-64")]
    #[case::v6_dotted("/coreos.com/network/subnets/10.244.2.0-24&::ffff:10.0.0.0-120")]
    #[case::v6_len("/coreos.com/network/subnets/10.244.2.0-24&fd00::-129")]
    #[case::two_v6("/coreos.com/network/subnets/10.244.2.0-24&fd00::-64&fd01::-64")]
    #[case::leading_zero("/coreos.com/network/subnets/010.244.2.0-24")]
    #[case::len_leading_zero("/coreos.com/network/subnets/10.244.2.0-024")]
    #[case::len_plus("/coreos.com/network/subnets/10.244.2.0-+24")]
    #[case::len_big("/coreos.com/network/subnets/10.244.2.0-33")]
    #[case::len_missing("/coreos.com/network/subnets/10.244.2.0-")]
    #[case::no_len("/coreos.com/network/subnets/10.244.2.0")]
    #[case::slash("/coreos.com/network/subnets/10.244.2.0/24")]
    #[case::short_quad("/coreos.com/network/subnets/10.244.2-24")]
    #[case::space("/coreos.com/network/subnets/10.244.2.0-24 ")]
    #[case::nested("/coreos.com/network/subnets/x/10.244.2.0-24")]
    #[case::other_prefix("/coreos.com/networkx/subnets/10.244.2.0-24")]
    fn keys_flannel_never_writes_are_refused(#[case] key: &str) {
        assert_eq!(parse_subnet_key(DEFAULT_PREFIX, key), None, "{key}");
    }

    /// flanneld's `ParseSubnetKey` reads the end of the whole key, leading zeros of a length
    /// included; what it would refuse is no lease to it either.
    #[test]
    fn keys_are_read_as_flanneld_reads_them() {
        let p = "/coreos.com/network/subnets/";
        let v4 = |t: &str| -> Ipv4Net { t.parse().expect("literal") };
        for (key, ipv4, ipv6) in [
            ("10.244.3.0-24", "10.244.3.0/24", None),
            ("10.244.3.0-024", "10.244.3.0/24", None),
            ("x10.244.3.0-24", "10.244.3.0/24", None),
            ("x/10.244.3.0-24", "10.244.3.0/24", None),
            ("10.244.3.9-24", "10.244.3.0/24", None),
            ("10.244.3.0-00000024", "10.244.3.0/24", None),
            ("10.244.3.0-0", "0.0.0.0/0", None),
            ("10.244.3.0-31", "10.244.3.0/31", None),
            ("110.244.3.0-24", "110.244.3.0/24", None),
            (
                "10.244.3.0-24&fd00:0010::-064",
                "10.244.3.0/24",
                Some("fd00:10::/64"),
            ),
            (
                "10.244.3.0-24&fd00::1-64",
                "10.244.3.0/24",
                Some("fd00::/64"),
            ),
        ] {
            let raw = format!("{p}{key}");
            let want = SubnetKey {
                ipv4: v4(ipv4),
                ipv6: ipv6.map(|t| t.parse().expect("literal")),
            };
            assert_eq!(flannel_subnet_key(raw.as_bytes()), Some(want), "{key}");
        }
        let raw = [p.as_bytes(), b"\xff\xfe10.244.3.0-24"].concat();
        assert_eq!(
            flannel_subnet_key(&raw).map(|k| k.ipv4),
            Some(v4("10.244.3.0/24"))
        );
        for key in [
            "10.244.3.0-32",
            "10.244.3.0-99",
            "010.244.3.0-24",
            "10.244.003.0-24",
            "10.244.3.256-24",
            "10.244x3.0-24",
            "10.244.3.0-24&fd00::-128",
            "10.244.3.0-24&fd00:::-64",
            "10.244.3.0-24&anything",
            "10.244.3.0-24 ",
            "10.244.3.0-24\n",
            "10.244.3-24",
            "10.244.3.0/24",
            "",
        ] {
            let raw = format!("{p}{key}");
            assert_eq!(flannel_subnet_key(raw.as_bytes()), None, "{key:?}");
        }
        // Every key in flannel's exact form it writes reads the same (but /32, which
        // flanneld cannot read).
        for key in ["10.244.2.0-24", "10.244.2.0-24&fd00:10:244:2::-64"] {
            let raw = format!("{p}{key}");
            assert_eq!(
                flannel_subnet_key(raw.as_bytes()),
                parse_subnet_key(DEFAULT_PREFIX, &raw)
            );
        }
    }

    fn dual_config() -> NetworkConfig {
        NetworkConfig::parse(
            br#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56",
            "IPv6SubnetMax":"fd00:10:244:c8::"}"#,
        )
        .expect("valid")
    }

    const OWN_KEY6: &str = "/coreos.com/network/subnets/10.244.1.0-24&fd00:10:244:1::-64";

    fn judge_dual(leases: &[(&str, i64, &str)]) -> (Vec<Accepted>, Vec<Rejected>) {
        let own = OwnNode {
            ip: Some(OWN_IP),
            ipv6: Some("2001:db8::1".parse().expect("literal")),
            key: Some(OWN_KEY6),
            subnet: Some("10.244.1.0/24".parse().expect("literal")),
            subnet6: Some("fd00:10:244:1::/64".parse().expect("literal")),
        };
        judge_leases_dual(
            &dual_config(),
            &own,
            DEFAULT_PREFIX,
            leases.iter().map(|(key, rev, value)| StoredLease {
                key,
                create_revision: *rev,
                value: value.as_bytes(),
            }),
        )
    }

    #[rstest::rstest]
    #[case::outside("10.244.3.0-24&fd00:10:245::-64", "", Rejection::Ipv6OutsideNetwork)]
    #[case::wider("10.244.3.0-24&fd00::-48", "", Rejection::Ipv6OutsideNetwork)]
    #[case::len("10.244.3.0-24&fd00:10:244:3::-80", "", Rejection::Ipv6SubnetLen)]
    #[case::below_min("10.244.3.0-24&fd00:10:244::-64", "", Rejection::Ipv6SubnetRange)]
    #[case::above_max("10.244.3.0-24&fd00:10:244:c9::-64", "", Rejection::Ipv6SubnetRange)]
    #[case::own_subnet6("10.244.3.0-24&fd00:10:244:1::-64", "", Rejection::Ipv6Overlap)]
    #[case::same_as_good("10.244.3.0-24&fd00:10:244:2::-64", "", Rejection::Ipv6Overlap)]
    #[case::own_ipv6(
        "10.244.3.0-24&fd00:10:244:3::-64",
        "2001:db8::1",
        Rejection::PublicIpv6Own
    )]
    #[case::loopback6(
        "10.244.3.0-24&fd00:10:244:3::-64",
        "::1",
        Rejection::PublicIpv6Unusable
    )]
    #[case::in_network6(
        "10.244.3.0-24&fd00:10:244:3::-64",
        "fd00:10:244:3::1",
        Rejection::PublicIpv6InNetwork
    )]
    #[case::any6(
        "10.244.3.0-24&fd00:10:244:3::-64",
        "::",
        Rejection::PublicIpv6Unusable
    )]
    #[case::link_local(
        "10.244.3.0-24&fd00:10:244:3::-64",
        "fe80::1",
        Rejection::PublicIpv6Unusable
    )]
    #[case::multicast6(
        "10.244.3.0-24&fd00:10:244:3::-64",
        "ff02::1",
        Rejection::PublicIpv6Unusable
    )]
    #[case::mapped(
        "10.244.3.0-24&fd00:10:244:3::-64",
        "::ffff:192.0.2.9",
        Rejection::PublicIpv6Unusable
    )]
    #[case::v4_half("10.244.0.0-24&fd00:10:244:3::-64", "", Rejection::SubnetRange)]
    fn each_bad_dual_lease_is_rejected_whole(
        #[case] key: &str,
        #[case] ipv6: &str,
        #[case] reason: Rejection,
    ) {
        let good_key = "/coreos.com/network/subnets/10.244.2.0-24&fd00:10:244:2::-64";
        let v4_only = "/coreos.com/network/subnets/10.244.4.0-24";
        let bad_key = format!("{DEFAULT_PREFIX}/subnets/{key}");
        let v6 = if ipv6.is_empty() {
            "null".to_owned()
        } else {
            format!("\"{ipv6}\"")
        };
        let bad_value = format!(r#"{{"PublicIP":"192.0.2.9","PublicIPv6":{v6}}}"#);
        let (accepted, rejected) = judge_dual(&[
            (&bad_key, 9, &bad_value),
            (
                good_key,
                7,
                r#"{"PublicIP":"192.0.2.2","PublicIPv6":"2001:db8::2"}"#,
            ),
            (v4_only, 8, r#"{"PublicIP":"192.0.2.4"}"#),
            (OWN_KEY6, 3, r#"{"PublicIP":"192.0.2.1"}"#),
        ]);
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(
            (rejected[0].key.as_str(), rejected[0].reason),
            (bad_key.as_str(), reason)
        );
        assert_eq!(accepted.len(), 2, "{accepted:?}");
        assert_eq!(accepted[0].key, good_key);
        assert_eq!(
            accepted[0].subnet6,
            Some("fd00:10:244:2::/64".parse().expect("literal"))
        );
        // A lease without an IPv6 subnet is an IPv4-only peer.
        assert_eq!(
            (accepted[1].key.as_str(), accepted[1].subnet6),
            (v4_only, None)
        );
    }

    #[test]
    fn an_ipv4_network_ignores_the_ipv6_half() {
        let (accepted, rejected) = judge(&[(
            "/coreos.com/network/subnets/10.244.3.0-24&fd00:99::-64",
            4,
            r#"{"PublicIP":"192.0.2.3","PublicIPv6":"::1"}"#,
        )]);
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(accepted[0].subnet6, None);
    }

    fn config() -> NetworkConfig {
        NetworkConfig::parse(
            br#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.200.0"}"#,
        )
        .expect("valid")
    }

    const OWN_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const OWN_KEY: &str = "/coreos.com/network/subnets/10.244.1.0-24";

    fn judge(leases: &[(&str, i64, &str)]) -> (Vec<Accepted>, Vec<Rejected>) {
        judge_leases(
            &config(),
            OWN_IP,
            Some(OWN_KEY),
            Some("10.244.1.0/24".parse().expect("literal")),
            DEFAULT_PREFIX,
            leases.iter().map(|(key, rev, value)| StoredLease {
                key,
                create_revision: *rev,
                value: value.as_bytes(),
            }),
        )
    }

    #[rstest::rstest]
    #[case::suffix(
        "10.244.2.0-24&anything",
        r#"{"PublicIP":"192.0.2.9"}"#,
        Rejection::BadKey
    )]
    #[case::value("10.244.3.0-24", r#"{"PublicIP":"nope"}"#, Rejection::BadValue)]
    #[case::json("10.244.3.0-24", "{", Rejection::BadValue)]
    #[case::outside(
        "198.51.100.0-24",
        r#"{"PublicIP":"192.0.2.9"}"#,
        Rejection::OutsideNetwork
    )]
    #[case::wider("10.0.0.0-8", r#"{"PublicIP":"192.0.2.9"}"#, Rejection::OutsideNetwork)]
    #[case::whole("10.244.0.0-16", r#"{"PublicIP":"192.0.2.9"}"#, Rejection::SubnetLen)]
    #[case::inner("10.244.2.128-25", r#"{"PublicIP":"192.0.2.9"}"#, Rejection::SubnetLen)]
    #[case::below_min("10.244.0.0-24", r#"{"PublicIP":"192.0.2.9"}"#, Rejection::SubnetRange)]
    #[case::above_max(
        "10.244.201.0-24",
        r#"{"PublicIP":"192.0.2.9"}"#,
        Rejection::SubnetRange
    )]
    #[case::own_subnet(
        "10.244.1.0-24&fd00::-64",
        r#"{"PublicIP":"192.0.2.9"}"#,
        Rejection::Overlap
    )]
    #[case::loopback(
        "10.244.3.0-24",
        r#"{"PublicIP":"127.0.0.1"}"#,
        Rejection::PublicIpLoopback
    )]
    #[case::loopback_net(
        "10.244.3.0-24",
        r#"{"PublicIP":"127.9.9.9"}"#,
        Rejection::PublicIpLoopback
    )]
    #[case::any(
        "10.244.3.0-24",
        r#"{"PublicIP":"0.0.0.0"}"#,
        Rejection::PublicIpUnspecified
    )]
    #[case::multicast(
        "10.244.3.0-24",
        r#"{"PublicIP":"224.0.0.1"}"#,
        Rejection::PublicIpMulticast
    )]
    #[case::broadcast(
        "10.244.3.0-24",
        r#"{"PublicIP":"255.255.255.255"}"#,
        Rejection::PublicIpBroadcast
    )]
    #[case::own_ip("10.244.3.0-24", r#"{"PublicIP":"192.0.2.1"}"#, Rejection::PublicIpOwn)]
    fn each_bad_lease_is_rejected_and_the_good_one_stays(
        #[case] key: &str,
        #[case] value: &str,
        #[case] reason: Rejection,
    ) {
        let good_key = "/coreos.com/network/subnets/10.244.2.0-24";
        let bad_key = format!("{DEFAULT_PREFIX}/subnets/{key}");
        // The bad lease is the older one, so it would win an overlap if it were taken.
        let (accepted, rejected) = judge(&[
            (&bad_key, 5, value),
            (good_key, 7, r#"{"PublicIP":"192.0.2.2"}"#),
            (OWN_KEY, 3, r#"{"PublicIP":"192.0.2.1"}"#),
        ]);
        assert_eq!(accepted.len(), 1, "{accepted:?}");
        assert_eq!(accepted[0].key, good_key);
        assert_eq!(accepted[0].value.public_ip, Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(
            (rejected[0].key.as_str(), rejected[0].reason),
            (bad_key.as_str(), reason)
        );
    }

    #[test]
    fn the_older_of_two_overlapping_leases_of_one_form_wins() {
        let b = "/coreos.com/network/subnets/10.244.2.0-24&fd00::-64";
        let c = "/coreos.com/network/subnets/10.244.2.0-24&fd00:1::-64";
        let va = r#"{"PublicIP":"192.0.2.2"}"#;
        let vb = r#"{"PublicIP":"192.0.2.3"}"#;
        // Two keys of another form than an IPv4 network's: the older wins.
        for (rb, rc, winner) in [(4, 9, b), (9, 4, c)] {
            for order in [[(b, rb, va), (c, rc, vb)], [(c, rc, vb), (b, rb, va)]] {
                let (accepted, rejected) = judge(&order);
                assert_eq!(accepted.len(), 1);
                assert_eq!(accepted[0].key, winner);
                assert_eq!(rejected.len(), 1);
                assert_eq!(rejected[0].reason, Rejection::Overlap);
            }
        }
        let d = "/coreos.com/network/subnets/10.244.2.0-24&fd00:10:244:2::-64";
        let e = "/coreos.com/network/subnets/10.244.2.0-24&fd00:10:244:3::-64";
        let vd = r#"{"PublicIP":"192.0.2.2","PublicIPv6":"2001:db8::2"}"#;
        let ve = r#"{"PublicIP":"192.0.2.3","PublicIPv6":"2001:db8::3"}"#;
        // Two dual-stack keys on a dual-stack network sharing their IPv4 half: the older wins.
        for (rd, re, winner) in [(4, 9, d), (9, 4, e)] {
            let (accepted, rejected) = judge_dual(&[(d, rd, vd), (e, re, ve)]);
            assert_eq!(accepted.len(), 1, "{accepted:?}");
            assert_eq!(accepted[0].key, winner);
            assert_eq!(rejected[0].reason, Rejection::Overlap);
        }
    }

    /// A key of the allocator's form keeps its subnet against an overlapping key of another
    /// form whatever their create revisions: the node's key written back after a deletion
    /// (created again, so newer than the squatter) still wins.
    #[test]
    fn the_allocator_s_key_form_wins_over_any_other_whatever_its_age() {
        let plain = "/coreos.com/network/subnets/10.244.84.0-24";
        let squat = "/coreos.com/network/subnets/10.244.84.0-24&fd00::-64";
        let vp = r#"{"PublicIP":"192.0.2.2"}"#;
        let vs = r#"{"PublicIP":"192.0.2.66"}"#;
        // The squatter older (the write-back case), then newer.
        for (rp, rs) in [(20, 7), (7, 20), (9, 9)] {
            for order in [
                [(plain, rp, vp), (squat, rs, vs)],
                [(squat, rs, vs), (plain, rp, vp)],
            ] {
                let (accepted, rejected) = judge(&order);
                assert_eq!(accepted.len(), 1, "{accepted:?}");
                assert_eq!(accepted[0].key, plain);
                assert_eq!(accepted[0].value.public_ip, Ipv4Addr::new(192, 0, 2, 2));
                assert_eq!(rejected.len(), 1, "{rejected:?}");
                assert_eq!(
                    (rejected[0].key.as_str(), rejected[0].reason),
                    (squat, Rejection::Overlap)
                );
            }
        }
        // Alone, a key of another form is still a lease (an IPv4 network ignores the IPv6
        // half), and the allocator's key created after it takes the subnet over.
        let (accepted, _) = judge(&[(squat, 7, vs)]);
        assert_eq!(accepted[0].key, squat);
        // On a dual-stack network the dual-stack key is the allocator's: an older plain key
        // (an IPv4-only peer) loses to it.
        let dual = "/coreos.com/network/subnets/10.244.84.0-24&fd00:10:244:54::-64";
        let vd = r#"{"PublicIP":"192.0.2.2","PublicIPv6":"2001:db8::2"}"#;
        let (accepted, rejected) = judge_dual(&[(plain, 3, vs), (dual, 30, vd)]);
        assert_eq!(accepted.len(), 1, "{accepted:?}");
        assert_eq!(accepted[0].key, dual);
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(
            (rejected[0].key.as_str(), rejected[0].reason),
            (plain, Rejection::Overlap)
        );
    }

    #[test]
    fn values_are_read_as_go_s_decoder_reads_them() {
        // Field names in any case, the later of two winning; unknown fields ignored.
        let lease = LeaseValue::parse(
            br#"{"publicip":"192.0.2.8","PUBLICIP":"192.0.2.9","backendtype":"vxlan",
                "backenddata":{"vni":1,"vtepmac":"0e:00:00:00:00:09"},"Extra":[1,{"a":null}]}"#,
        )
        .expect("valid for flanneld");
        assert_eq!(lease.public_ip, Ipv4Addr::new(192, 0, 2, 9));
        assert_eq!(lease.backend(), "vxlan");
        assert_eq!(lease.vni, Some(1));
        assert_eq!(lease.vtep_mac, Some(MacAddress([0x0e, 0, 0, 0, 0, 9])));
        let lease = LeaseValue::parse(
            br#"{"PublicIP":"192.0.2.8","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"},
                "BackendData":{"VNI":2,"VtepMAC":"0e:00:00:00:00:02"}}"#,
        )
        .expect("valid for flanneld");
        assert_eq!(lease.vni, Some(2));
        // Only the vxlan backend reads the backend data: a udp lease's is ignored.
        let lease = LeaseValue::parse(
            br#"{"PublicIP":"192.0.2.8","BackendData":{"VtepMAC":"ff:ff:ff:ff:ff:ff","VNI":"x"}}"#,
        )
        .expect("a udp lease");
        assert_eq!(
            (lease.backend(), lease.vni, lease.vtep_mac),
            ("udp", None, None)
        );
        // flannel's IPv4 type takes an IPv4-mapped IPv6 address as the IPv4 one.
        let lease = LeaseValue::parse(br#"{"PublicIP":"::ffff:192.0.2.25"}"#).expect("mapped");
        assert_eq!(lease.public_ip, Ipv4Addr::new(192, 0, 2, 25));
        // Every occurrence must decode, even one a later one would replace; and `null` is no
        // IPv4 address for flannel's type.
        for bad in [
            &br#"{"PublicIP":"x","PublicIP":"192.0.2.8"}"#[..],
            br#"{"PublicIP":null}"#,
            br#"{"PublicIP":"2001:db8::1"}"#,
            br#"{"PublicIP":"192.0.2.8","BackendType":1}"#,
            br#"{"PublicIP":"192.0.2.8","BackendType":"vxlan","BackendData":{"VNI":-1}}"#,
            br#"{"PublicIP":"192.0.2.8","BackendType":"vxlan","BackendData":{"VNI":4294967296}}"#,
            br#"{"PublicIP":"192.0.2.8"} x"#,
            br#"[{"PublicIP":"192.0.2.8"}]"#,
        ] {
            assert!(
                LeaseValue::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_vtep_mac_must_be_unicast() {
        for mac in [
            "ff:ff:ff:ff:ff:ff",
            "01:00:5e:00:00:01",
            "33:33:00:00:00:01",
            "00:00:00:00:00:00",
        ] {
            let text = format!(
                r#"{{"PublicIP":"192.0.2.3","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
            );
            let e = LeaseValue::parse(text.as_bytes()).expect_err(mac);
            assert!(e.to_string().contains("not a unicast MAC"), "{mac}: {e}");
            let v6 = format!(
                r#"{{"PublicIP":"192.0.2.3","BackendType":"vxlan","BackendV6Data":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
            );
            assert!(LeaseValue::parse(v6.as_bytes()).is_err(), "{mac}");
        }
        let ok = br#"{"PublicIP":"192.0.2.3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}}"#;
        assert!(LeaseValue::parse(ok).is_ok());
    }

    #[test]
    fn a_public_ip_that_routes_into_the_overlay_or_nowhere_is_refused() {
        // A peer in a pod subnet (its own lease's, this node's 10.244.1.0/24) would be reached
        // through the TUN device, its datagrams encapsulated again, forever.
        for (ip, reason) in [
            ("10.244.9.1", Rejection::PublicIpInNetwork),
            ("10.244.1.1", Rejection::PublicIpInNetwork),
            ("240.0.0.1", Rejection::PublicIpReserved),
            ("254.1.2.3", Rejection::PublicIpReserved),
            ("255.255.255.255", Rejection::PublicIpBroadcast),
        ] {
            let value = format!(r#"{{"PublicIP":"{ip}"}}"#);
            let (accepted, rejected) = judge(&[(
                "/coreos.com/network/subnets/10.244.9.0-24",
                3,
                value.as_str(),
            )]);
            assert!(accepted.is_empty(), "{ip}");
            assert_eq!(rejected[0].reason, reason, "{ip}");
        }
        // Outside every pod subnet (inside the network but outside the leases, as an underlay
        // with its own more specific route can be), and ordinary addresses: taken.
        for ip in [
            "10.244.200.1",
            "10.245.0.1",
            "10.243.255.254",
            "192.0.2.9",
            "239.255.255.255",
        ] {
            let value = format!(r#"{{"PublicIP":"{ip}"}}"#);
            let (accepted, rejected) = judge(&[(
                "/coreos.com/network/subnets/10.244.9.0-24",
                3,
                value.as_str(),
            )]);
            if ip == "239.255.255.255" {
                assert_eq!(rejected[0].reason, Rejection::PublicIpMulticast);
            } else {
                assert_eq!(accepted.len(), 1, "{ip}: {rejected:?}");
            }
        }
    }

    #[test]
    fn a_peer_in_another_lease_s_subnet_is_refused_whichever_came_first() {
        // 10.244.9.0/24 is at 10.244.7.5, inside 10.244.7.0/24, leased before or after it.
        let a = (
            "/coreos.com/network/subnets/10.244.9.0-24",
            r#"{"PublicIP":"10.244.7.5"}"#,
        );
        let b = (
            "/coreos.com/network/subnets/10.244.7.0-24",
            r#"{"PublicIP":"192.0.2.7"}"#,
        );
        for (ra, rb) in [(3, 4), (4, 3)] {
            let (accepted, rejected) = judge(&[(a.0, ra, a.1), (b.0, rb, b.1)]);
            assert_eq!(accepted.len(), 1);
            assert_eq!(accepted[0].key, b.0);
            assert_eq!(rejected[0].key, a.0);
            assert_eq!(rejected[0].reason, Rejection::PublicIpInNetwork);
            assert!(
                rejected[0].detail.contains("10.244.7.0/24"),
                "{}",
                rejected[0].detail
            );
        }
    }

    #[test]
    fn an_oversized_value_is_refused_unread() {
        let mut value = r#"{"PublicIP":"192.0.2.9","#.to_owned();
        value.push_str(&" ".repeat(MAX_LEASE_VALUE));
        value.push_str(r#""X":1}"#);
        assert!(
            LeaseValue::parse(value.as_bytes()).is_ok(),
            "valid JSON, only long"
        );
        let (accepted, rejected) = judge(&[(
            "/coreos.com/network/subnets/10.244.9.0-24",
            3,
            value.as_str(),
        )]);
        assert!(accepted.is_empty());
        assert_eq!(rejected[0].reason, Rejection::BadValue);
        assert!(
            rejected[0].detail.contains("bytes"),
            "{}",
            rejected[0].detail
        );
    }

    #[test]
    fn reasons_are_distinct_labels() {
        let labels: std::collections::HashSet<_> =
            Rejection::ALL.iter().map(|r| r.reason()).collect();
        assert_eq!(labels.len(), Rejection::ALL.len());
        for (i, r) in Rejection::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    proptest! {
        /// A cleaned prefix is clean: cleaning it again changes nothing, it has no empty or
        /// `.` element and no trailing slash (but the root), and a lease key under it parses.
        #[test]
        fn cleaned_prefixes_are_clean(raw in "[/a.]{0,12}") {
            let clean = clean_prefix(&raw);
            prop_assert_eq!(clean_prefix(&clean), clean.clone());
            prop_assert!(!clean.contains("//"));
            prop_assert!(clean == "/" || !clean.ends_with('/'));
            prop_assert!(clean.split('/').all(|p| p != "."));
            let subnet: Ipv4Net = "10.244.1.0/24".parse().expect("literal");
            let key = subnet_key(&clean, subnet);
            prop_assert_eq!(parse_subnet_key(&clean, &key).map(|k| k.ipv4), Some(subnet));
        }
    }

    proptest! {
        #[test]
        fn any_bytes_are_a_lease_or_a_typed_error(bytes in proptest::collection::vec(any::<u8>(), 0..200),
                                                   text in "[{}\\[\\],:\"a-zA-Z0-9.: ]{0,120}") {
            let _ = LeaseValue::parse(&bytes);
            let _ = LeaseValue::parse(text.as_bytes());
            // A value that parses writes back as one that parses to the same addresses and
            // backend (a VNI without a MAC, or the reverse, is not written back).
            if let Ok(v) = LeaseValue::parse(text.as_bytes()) {
                let again = LeaseValue::parse(v.to_json().as_bytes());
                prop_assert!(again.is_ok(), "{:?}", again);
                if let Ok(again) = again {
                    prop_assert_eq!((again.public_ip, again.public_ipv6), (v.public_ip, v.public_ipv6));
                    prop_assert_eq!(again.backend(), v.backend());
                }
            }
        }

        #[test]
        fn lease_roundtrip(ip in any::<[u8; 4]>(), v6 in proptest::option::of(any::<[u8; 16]>()),
                           vxlan in any::<bool>(), vni in 0u32..(1 << 24), mac in any::<[u8; 6]>()) {
            let lease = LeaseValue {
                public_ip: ip.into(),
                public_ipv6: v6.map(Ipv6Addr::from),
                backend_type: vxlan.then(|| "vxlan".to_owned()),
                vni: vxlan.then_some(vni),
                // Unicast (what a lease may carry): the group bit clear, never all zero.
                vtep_mac: vxlan.then_some(MacAddress([mac[0] & 0xfe | 2, mac[1], mac[2], mac[3], mac[4], mac[5]])),
                vni6: (vxlan && v6.is_some()).then_some(vni),
                vtep_mac6: (vxlan && v6.is_some()).then_some(MacAddress([mac[5] & 0xfe | 2, mac[4], mac[3], mac[2], mac[1], mac[0]])),
            };
            // The whole VNI goes out, as flanneld (v0.24.0 and later) writes it.
            prop_assert_eq!(LeaseValue::parse(lease.to_json().as_bytes()), Ok(lease.clone()));
        }

        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200), key in ".{0,60}") {
            let _ = LeaseValue::parse(&data);
            let _ = parse_subnet_key(DEFAULT_PREFIX, &key);
        }

        #[test]
        fn flanneld_s_key_reader_never_panics(
            key in proptest::collection::vec(any::<u8>(), 0..120),
            tail in "[0-9.&a-f:x-]{0,40}",
        ) {
            let _ = flannel_subnet_key(&key);
            let mut both = key;
            both.extend_from_slice(tail.as_bytes());
            if let Some(k) = flannel_subnet_key(&both) {
                // Subnets come out as network addresses, of a length Go's reader allows.
                prop_assert_eq!(k.ipv4, k.ipv4.trunc());
                prop_assert!(k.ipv4.prefix_len() <= 31);
                prop_assert!(k.ipv6.is_none_or(|v6| v6 == v6.trunc() && v6.prefix_len() <= 127));
            }
        }

        #[test]
        fn a_key_that_parses_is_written_back_byte_for_byte(key in "[0-9a-f.:&-]{0,40}") {
            let key = format!("{DEFAULT_PREFIX}/subnets/{key}");
            if let Some(k) = parse_subnet_key(DEFAULT_PREFIX, &key) {
                prop_assert_eq!(k.key(DEFAULT_PREFIX), key);
            }
        }

        #[test]
        fn every_subnet_key_parses_back(ip in any::<u32>(), len in 0u8..=32) {
            let net = Ipv4Net::new(Ipv4Addr::from(ip), len).expect("valid").trunc();
            let key = subnet_key(DEFAULT_PREFIX, net);
            prop_assert_eq!(
                parse_subnet_key(DEFAULT_PREFIX, &key),
                Some(SubnetKey { ipv4: net, ipv6: None })
            );
        }

        #[test]
        fn every_dual_key_parses_back(ip in any::<u32>(), len in 0u8..=32, ip6 in any::<u128>(), len6 in 0u8..=128) {
            let k = SubnetKey {
                ipv4: Ipv4Net::new(Ipv4Addr::from(ip), len).expect("valid").trunc(),
                ipv6: Some(Ipv6Net::new(Ipv6Addr::from(ip6), len6).expect("valid").trunc()),
            };
            let key = k.key(DEFAULT_PREFIX);
            // Go's text form never embeds a dotted quad; those addresses are not keys flannel
            // can read back (its key pattern has hex digits and colons only).
            let dotted = key.rsplit('&').next().is_some_and(|t| t.contains('.'));
            prop_assert_eq!(parse_subnet_key(DEFAULT_PREFIX, &key), (!dotted).then_some(k));
        }

        #[test]
        fn judged_leases_make_a_table(
            leases in proptest::collection::vec(
                (0u8..4, any::<u8>(), 14u8..28, 0u8..6, any::<bool>(), 0i64..20),
                0..24,
            ),
        ) {
            let ips = [
                Ipv4Addr::new(192, 0, 2, 2),
                Ipv4Addr::new(192, 0, 2, 3),
                OWN_IP,
                Ipv4Addr::LOCALHOST,
                Ipv4Addr::BROADCAST,
                Ipv4Addr::new(224, 0, 0, 5),
            ];
            let stored: Vec<(String, i64, String)> = leases
                .iter()
                .map(|&(a, b, len, ip, v6, rev)| {
                    let net = Ipv4Net::new(Ipv4Addr::new(10, 243 + a, b, 0), len)
                        .expect("valid")
                        .trunc();
                    let mut key = subnet_key(DEFAULT_PREFIX, net);
                    if v6 {
                        key.push_str("&fd00::-64");
                    }
                    (key, rev, format!(r#"{{"PublicIP":"{}"}}"#, ips[usize::from(ip)]))
                })
                .collect();
            let view: Vec<(&str, i64, &str)> =
                stored.iter().map(|(k, r, v)| (k.as_str(), *r, v.as_str())).collect();
            let (accepted, rejected) = judge(&view);
            let mut keys: Vec<&str> = view.iter().map(|l| l.0).filter(|k| *k != OWN_KEY).collect();
            keys.sort_unstable();
            keys.dedup();
            // Keys are unique in etcd; the generator may repeat one, each copy is judged.
            let judged = accepted.len() + rejected.len();
            prop_assert_eq!(judged, view.iter().filter(|l| l.0 != OWN_KEY).count());
            let config = config();
            for a in &accepted {
                prop_assert!(config.allows(a.subnet));
                prop_assert_eq!(judge_public_ip(a.value.public_ip, OWN_IP), None);
            }
            let peers: Vec<crate::table::Peer> = accepted
                .iter()
                .map(|a| crate::table::Peer {
                    subnet: ipnet::IpNet::V4(a.subnet),
                    endpoint: std::net::SocketAddr::new(a.value.public_ip.into(), 8285),
                    vtep_mac: None,
                })
                .collect();
            let own = ipnet::IpNet::V4("10.244.1.0/24".parse().expect("literal"));
            prop_assert!(crate::table::Snapshot::new(vec![own], peers).is_ok());
            // The verdict does not depend on the order the leases were listed in.
            let mut reversed = view.clone();
            reversed.reverse();
            let (again, _) = judge(&reversed);
            let set = |v: &[Accepted]| {
                let mut k: Vec<String> = v.iter().map(|a| a.key.clone()).collect();
                k.sort();
                k
            };
            if keys.len() == view.iter().filter(|l| l.0 != OWN_KEY).count() {
                prop_assert_eq!(set(&again), set(&accepted));
            }
        }

    }
}
