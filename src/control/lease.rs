//! flannel's etcd values, parsed and written exactly as flanneld does (etcd v3 API, flannel
//! 0.18 and later): the network configuration at `<prefix>/config` and one lease per node at
//! `<prefix>/subnets/<ip>-<len>`.
//!
//! ```text
//! /coreos.com/network/config
//!   {"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}
//! /coreos.com/network/subnets/10.244.1.0-24
//!   {"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan",
//!    "BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}
//! ```
//!
//! The rules are flannel's (`pkg/subnet/config.go`, `pkg/lease/lease.go`): a missing `Backend`
//! means `udp` (the code's default, whatever the documentation says); `SubnetLen` defaults to
//! 24, or to the network's prefix plus 2 for networks smaller than a /22, and above 30 is
//! refused; `SubnetMin` and `SubnetMax` default to the second and the last subnet and must lie
//! on a subnet boundary inside the network. A `udp` lease carries no backend type or data. All
//! of it is untrusted input: every parser returns a [`LeaseError`] naming the field, never
//! panics, and is fuzzed (`fuzz/fuzz_targets/etcd_config.rs`, `etcd_lease.rs`).

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::Ipv4Net;
use serde::Deserialize;

pub use super::netconf::{Backend, NetConfigError, NetworkConfig};
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
        /// serde's message.
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

fn json_error(what: &'static str, e: &serde_json::Error) -> LeaseError {
    LeaseError::Json {
        what,
        detail: e.to_string(),
    }
}

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
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawLease {
    #[serde(rename = "PublicIP")]
    public_ip: Option<String>,
    #[serde(rename = "PublicIPv6")]
    public_ipv6: Option<String>,
    backend_type: Option<String>,
    backend_data: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawVxlanData {
    #[serde(rename = "VNI")]
    vni: Option<u32>,
    #[serde(rename = "VtepMAC")]
    vtep_mac: Option<String>,
}

impl LeaseValue {
    /// Parses a lease value.
    ///
    /// # Errors
    ///
    /// [`LeaseError`] naming the field.
    pub fn parse(json: &[u8]) -> Result<Self, LeaseError> {
        let raw: RawLease = serde_json::from_slice(json).map_err(|e| json_error("a lease", &e))?;
        let text = raw.public_ip.ok_or_else(|| field("PublicIP", "missing"))?;
        let public_ip = text
            .parse()
            .map_err(|_| field("PublicIP", format!("`{text}` is not an IPv4 address")))?;
        let public_ipv6 = match raw.public_ipv6.filter(|s| !s.is_empty()) {
            None => None,
            Some(t) => Some(
                t.parse()
                    .map_err(|_| field("PublicIPv6", format!("`{t}` is not an IPv6 address")))?,
            ),
        };
        let (mut vni, mut vtep_mac) = (None, None);
        if let Some(data) = raw.backend_data.filter(|v| v.is_object()) {
            let d: RawVxlanData =
                serde_json::from_value(data).map_err(|e| json_error("BackendData", &e))?;
            vni = d.vni;
            if let Some(m) = d.vtep_mac {
                vtep_mac = Some(
                    m.parse::<MacAddress>()
                        .map_err(|e| field("BackendData.VtepMAC", format!("`{m}`: {e}")))?,
                );
            }
        }
        Ok(Self {
            public_ip,
            public_ipv6,
            backend_type: raw.backend_type.filter(|s| !s.is_empty()),
            vni,
            vtep_mac,
        })
    }

    /// Returns the backend this lease speaks: its `BackendType`, `udp` when absent.
    pub fn backend(&self) -> &str {
        self.backend_type.as_deref().unwrap_or("udp")
    }

    /// Writes the value in flanneld's exact JSON: `PublicIP`, `PublicIPv6` (`null`), and for
    /// `vxlan` `BackendType` and `BackendData` with `VNI` and `VtepMAC`; a `udp` lease has
    /// only the first two.
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
        }
        out.push('}');
        out
    }
}

/// Returns the etcd key of the lease for `subnet`: `<prefix>/subnets/10.244.1.0-24`.
pub fn subnet_key(prefix: &str, subnet: Ipv4Net) -> String {
    format!(
        "{}/subnets/{}-{}",
        prefix.trim_end_matches('/'),
        subnet.network(),
        subnet.prefix_len()
    )
}

/// Returns the subnet a lease key names (`.../subnets/10.244.1.0-24`; a dual-stack key's IPv6
/// part after `&` is ignored), or `None` for any other key.
pub fn parse_subnet_key(prefix: &str, key: &str) -> Option<Ipv4Net> {
    let rest = key
        .strip_prefix(prefix.trim_end_matches('/'))?
        .strip_prefix("/subnets/")?;
    let v4 = rest.split('&').next()?;
    let (ip, len) = v4.rsplit_once('-')?;
    let net = Ipv4Net::new(ip.parse().ok()?, len.parse().ok()?).ok()?;
    (net.trunc() == net).then_some(net)
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
    fn keys() {
        let net: Ipv4Net = "10.244.7.0/24".parse().expect("literal");
        let key = subnet_key(DEFAULT_PREFIX, net);
        assert_eq!(key, "/coreos.com/network/subnets/10.244.7.0-24");
        assert_eq!(parse_subnet_key(DEFAULT_PREFIX, &key), Some(net));
        assert_eq!(
            parse_subnet_key(
                "/coreos.com/network/",
                "/coreos.com/network/subnets/10.244.7.0-24&fd00::-64"
            ),
            Some(net)
        );
        assert_eq!(
            parse_subnet_key(DEFAULT_PREFIX, "/coreos.com/network/config"),
            None
        );
        assert_eq!(
            parse_subnet_key(DEFAULT_PREFIX, "/coreos.com/network/subnets/10.244.7.1-24"),
            None
        );
    }

    proptest! {
        #[test]
        fn lease_roundtrip(ip in any::<[u8; 4]>(), v6 in proptest::option::of(any::<[u8; 16]>()),
                           vxlan in any::<bool>(), vni in 0u32..(1 << 24), mac in any::<[u8; 6]>()) {
            let lease = LeaseValue {
                public_ip: ip.into(),
                public_ipv6: v6.map(Ipv6Addr::from),
                backend_type: vxlan.then(|| "vxlan".to_owned()),
                vni: vxlan.then_some(vni),
                vtep_mac: vxlan.then_some(MacAddress(mac)),
            };
            prop_assert_eq!(LeaseValue::parse(lease.to_json().as_bytes()), Ok(lease));
        }

        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200), key in ".{0,60}") {
            let _ = LeaseValue::parse(&data);
            let _ = parse_subnet_key(DEFAULT_PREFIX, &key);
        }

    }
}
