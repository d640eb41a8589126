//! The network config against flanneld's reading: unit tests for each rule, and a property
//! test that generates configs together with the meaning Go's decoder and flannel's checks
//! give them (the model below), and checks the parser agrees.

use proptest::prelude::*;
use proptest::strategy::ValueTree;

use super::*;

fn parse(json: &str) -> Result<NetworkConfig, NetConfigError> {
    NetworkConfig::parse(json.as_bytes())
}

fn ok(json: &str) -> NetworkConfig {
    parse(json).unwrap_or_else(|e| panic!("{json}: {e}"))
}

fn refused(json: &str) -> &'static str {
    match parse(json) {
        Err(NetConfigError::Field { field, .. }) => field,
        Err(NetConfigError::Json(_)) => "JSON",
        Ok(c) => panic!("{json}: accepted as {c:?}"),
    }
}

fn vxlan(vni: u32, port: Option<u16>, mtu: Option<u32>) -> Backend {
    Backend::Vxlan { vni, port, mtu }
}

#[test]
fn lower_case_backend_keys_are_read() {
    // flanneld runs this with VNI 42 on port 4789.
    let c = ok(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","vni":42,"port":4789}}"#);
    assert_eq!(c.backend, vxlan(42, Some(4789), None));
    assert_eq!(c.backend.port(), 4789);
    let c =
        ok(r#"{"network":"10.244.0.0/16","subnetlen":26,"BACKEND":{"type":"VxLaN","Mtu":1400}}"#);
    assert_eq!(
        c.network,
        "10.244.0.0/16".parse::<Ipv4Net>().expect("literal")
    );
    assert_eq!(c.subnet_len, 26);
    assert_eq!(c.backend, vxlan(1, None, Some(1400)));
    assert_eq!(c.backend.port(), 8472);
}

#[test]
fn the_later_of_two_keys_for_one_field_wins() {
    let c = ok(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":7,"vni":9}}"#);
    assert_eq!(c.backend, vxlan(9, None, None));
    let c = ok(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","vni":9,"VNI":7}}"#);
    assert_eq!(c.backend, vxlan(7, None, None));
    let c = ok(
        r#"{"network":"10.1.0.0/16","Network":"10.244.0.0/16","SUBNETLEN":20,"SubnetLen":null}"#,
    );
    assert_eq!(c.network.to_string(), "10.244.0.0/16");
    assert_eq!(c.subnet_len, 20, "null keeps the earlier value");
    let c =
        ok(r#"{"Network":"10.244.0.0/16","backend":{"Type":"vxlan"},"Backend":{"Type":"udp"}}"#);
    assert_eq!(c.backend, Backend::Udp { port: None });
    // Every occurrence must decode, even one a later key replaces.
    assert_eq!(
        refused(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":"7","vni":9}}"#),
        "Backend.VNI"
    );
    assert_eq!(
        refused(r#"{"SubnetLen":"24","Network":"10.244.0.0/16","subnetlen":24}"#),
        "SubnetLen"
    );
    // A bad Backend replaced by a later one is never looked into: it is a raw message.
    let c = ok(r#"{"Network":"10.244.0.0/16","Backend":{"Type":7},"backend":{"Type":"udp"}}"#);
    assert_eq!(c.backend, Backend::Udp { port: None });
}

#[test]
fn kelvin_sign_and_long_s_fold_like_k_and_s() {
    // U+212A in "Backend", U+017F in "SubnetLen", raw and as escapes.
    let c = ok(
        "{\"Network\":\"10.244.0.0/16\",\"\u{17F}ubnetLen\":20,\"Bac\u{212A}end\":{\"Type\":\"vxlan\"}}",
    );
    assert_eq!(c.subnet_len, 20);
    assert_eq!(c.backend, vxlan(1, None, None));
    let c =
        ok(r#"{"Network":"10.244.0.0/16","\u017fUBNETLEN":20,"BAC\u212aEND":{"Type":"vxlan"}}"#);
    assert_eq!(c.subnet_len, 20);
    assert!(matches!(c.backend, Backend::Vxlan { .. }));
    // Dotless and dotted I have no simple case folding to i: those keys are unknown.
    let c = ok(
        "{\"Network\":\"10.244.0.0/16\",\"Enable\u{131}Pv6\":true,\"EnableIPv6\":false,\"ENABLE\u{130}PV4\":false}",
    );
    assert_eq!(c.subnet_len, 24);
}

#[test]
fn null_keeps_a_default_but_not_for_flannels_own_types() {
    let c = ok(
        r#"{"Network":"10.244.0.0/16","SubnetLen":null,"EnableIPv4":null,"EnableIPv6":null,
        "IPv6SubnetMin":null,"Backend":{"Type":"vxlan","VNI":null,"Port":null,"MTU":null,"GBP":null}}"#,
    );
    assert_eq!(c.subnet_len, 24);
    assert_eq!(c.backend, vxlan(1, None, None));
    // flannel's IP and CIDR decoders see the text `null` and refuse it; a raw Backend of
    // `null` has no Type.
    assert_eq!(refused(r#"{"Network":null}"#), "Network");
    assert_eq!(
        refused(r#"{"Network":"10.244.0.0/16","SubnetMin":null}"#),
        "SubnetMin"
    );
    assert_eq!(
        refused(r#"{"Network":"10.244.0.0/16","IPv6Network":null}"#),
        "IPv6Network"
    );
    assert_eq!(
        refused(r#"{"Network":"10.244.0.0/16","Backend":null}"#),
        "Backend.Type"
    );
}

#[test]
fn types_are_gos() {
    for (json, name) in [
        (
            r#"{"Network":"10.244.0.0/16","SubnetLen":"24"}"#,
            "SubnetLen",
        ),
        (
            r#"{"Network":"10.244.0.0/16","SubnetLen":24.0}"#,
            "SubnetLen",
        ),
        (
            r#"{"Network":"10.244.0.0/16","SubnetLen":2.4e1}"#,
            "SubnetLen",
        ),
        (r#"{"Network":"10.244.0.0/16","SubnetLen":-1}"#, "SubnetLen"),
        (
            r#"{"Network":"10.244.0.0/16","SubnetLen":18446744073709551616}"#,
            "SubnetLen",
        ),
        (
            r#"{"Network":"10.244.0.0/16","EnableNFTables":"true"}"#,
            "EnableNFTables",
        ),
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv4":1}"#,
            "EnableIPv4",
        ),
        (
            r#"{"Network":"10.244.0.0/16","IPv6SubnetLen":1.5}"#,
            "IPv6SubnetLen",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1.0}}"#,
            "Backend.VNI",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1e3}}"#,
            "Backend.VNI",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Port":"4789"}}"#,
            "Backend.Port",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":[1400]}}"#,
            "Backend.MTU",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","GBP":0}}"#,
            "Backend.GBP",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Learning":"yes"}}"#,
            "Backend.Learning",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":9223372036854775808}}"#,
            "Backend.Port",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":5}}"#,
            "Backend.Type",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":"vxlan"}"#,
            "Backend",
        ),
        (r#"{"Network":"10.244.0.0\/16"}"#, "Network"),
        (r#"{"Network":16}"#, "Network"),
        ("[]", "config"),
        ("\"x\"", "config"),
        ("null", "Network"),
        ("{", "JSON"),
        (r#"{"Network":"10.244.0.0/16"} {}"#, "JSON"),
    ] {
        assert_eq!(refused(json), name, "{json}");
    }
    // Options another backend reads are unknown to this one, whatever their type.
    let c =
        ok(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp","VNI":"x","MTU":[],"GBP":true}}"#);
    assert_eq!(c.backend, Backend::Udp { port: None });
    // -0 is an integer to Go; unknown fields are skipped whatever they hold.
    let c =
        ok(r#"{"Network":"10.244.0.0/16","x":[{"y":1e999}],"Backend":{"Type":"vxlan","VNI":-0}}"#);
    assert_eq!(c.backend, vxlan(0, None, None));
}

#[test]
fn flannels_rules_for_network_and_subnets() {
    let c = ok(r#"{"Network":"10.244.0.0/16"}"#);
    assert_eq!(c.subnet_len, 24);
    assert_eq!(c.subnet_min, Ipv4Addr::new(10, 244, 1, 0));
    assert_eq!(c.subnet_max, Ipv4Addr::new(10, 244, 255, 0));
    assert_eq!(c.backend, Backend::Udp { port: None });
    assert_eq!(c.subnets().count(), 255);
    assert!(!c.enable_nftables);
    assert_eq!(ok(r#"{"Network":"10.244.0.0/24"}"#).subnet_len, 26);
    assert_eq!(ok(r#"{"Network":"10.244.0.0/28"}"#).subnet_len, 30);
    assert_eq!(
        ok(r#"{"Network":"10.244.0.0/16","SubnetLen":18}"#).subnet_len,
        18
    );
    assert_eq!(
        ok(r#"{"Network":"10.244.0.0/16","SubnetLen":0}"#).subnet_len,
        24
    );
    // Host bits are cleared; the prefix may have leading zeros, as Go's ParseCIDR allows.
    assert_eq!(
        ok(r#"{"Network":"10.244.9.9/016"}"#).network.to_string(),
        "10.244.0.0/16"
    );
    // 0.0.0.0 is "unset"; an IPv4-mapped address is the IPv4 address to flannel.
    let c =
        ok(r#"{"Network":"10.244.0.0/16","SubnetMin":"0.0.0.0","SubnetMax":"::ffff:10.244.9.0"}"#);
    assert_eq!(c.subnet_min, Ipv4Addr::new(10, 244, 1, 0));
    assert_eq!(c.subnet_max, Ipv4Addr::new(10, 244, 9, 0));
    let c = ok(r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.0.0"}"#);
    assert_eq!(c.subnet_min, Ipv4Addr::new(10, 244, 0, 0));
    assert!(ok(r#"{"Network":"10.244.0.0/16","EnableNFTables":true}"#).enable_nftables);
    // IPv6 fields are decoded (and must be well formed) even when IPv6 is off.
    ok(
        r#"{"Network":"10.244.0.0/16","IPv6Network":"fd00::/56","IPv6SubnetMin":"fd00::100","IPv6SubnetLen":64}"#,
    );
    for (json, name) in [
        (r"{}", "Network"),
        (r#"{"Network":"nope"}"#, "Network"),
        (r#"{"Network":"0.0.0.0/0"}"#, "Network"),
        (r#"{"Network":"fd00::/64"}"#, "Network"),
        (r#"{"Network":"::ffff:10.0.0.0/104"}"#, "Network"),
        (r#"{"Network":"10.244.0.0/29"}"#, "Network"),
        (r#"{"Network":"10.244.0.0/33"}"#, "Network"),
        (r#"{"Network":"010.244.0.0/16"}"#, "Network"),
        (r#"{"Network":"10.244.0.0/16","SubnetLen":31}"#, "SubnetLen"),
        (r#"{"Network":"10.244.0.0/16","SubnetLen":17}"#, "SubnetLen"),
        (r#"{"Network":"10.244.0.0/16","SubnetLen":16}"#, "SubnetLen"),
        (
            r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.7"}"#,
            "SubnetMin",
        ),
        (
            r#"{"Network":"10.244.0.0/16","SubnetMax":"10.245.0.0"}"#,
            "SubnetMax",
        ),
        (
            r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.8.0"}"#,
            "SubnetMin",
        ),
        (
            r#"{"Network":"10.244.0.0/16","SubnetMin":"fd00::1"}"#,
            "SubnetMin",
        ),
        (
            r#"{"Network":"10.244.0.0/16","IPv6Network":"bogus"}"#,
            "IPv6Network",
        ),
        (
            r#"{"Network":"10.244.0.0/16","IPv6SubnetMax":"bogus"}"#,
            "IPv6SubnetMax",
        ),
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true}"#,
            "IPv6Network",
        ),
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"10.0.0.0/8"}"#,
            "IPv6Network",
        ),
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"::/0"}"#,
            "IPv6Network",
        ),
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/125"}"#,
            "IPv6Network",
        ),
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetLen":127}"#,
            "IPv6SubnetLen",
        ),
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetLen":57}"#,
            "IPv6SubnetLen",
        ),
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMin":"fd00::1"}"#,
            "IPv6SubnetMin",
        ),
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMax":"fd01::"}"#,
            "IPv6SubnetMax",
        ),
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetMin":"fd00:0:0:9::","IPv6SubnetMax":"fd00:0:0:8::"}"#,
            "IPv6SubnetMin",
        ),
        (
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/56"}"#,
            "EnableIPv4",
        ),
    ] {
        assert_eq!(refused(json), name, "{json}");
    }
}

#[test]
fn backends_and_their_options() {
    let net = r#""Network":"10.244.0.0/16""#;
    let backend = |b: &str| parse(&format!("{{{net},\"Backend\":{b}}}"));
    let get = |b: &str| backend(b).unwrap_or_else(|e| panic!("{b}: {e}")).backend;
    let field_of = |b: &str| match backend(b) {
        Err(NetConfigError::Field { field, detail }) => (field, detail),
        other => panic!("{b}: {other:?}"),
    };
    assert_eq!(get(r#"{"Type":"udp"}"#), Backend::Udp { port: None });
    assert_eq!(
        get(r#"{"Type":"UDP","Port":8285}"#),
        Backend::Udp { port: None }
    );
    assert_eq!(
        get(r#"{"Type":"udp","port":9000}"#),
        Backend::Udp { port: Some(9000) }
    );
    assert_eq!(get(r#"{"Type":"udp","port":9000}"#).port(), 9000);
    assert_eq!(field_of(r#"{"Type":"udp","Port":0}"#).0, "Backend.Port");
    assert_eq!(field_of(r#"{"Type":"udp","Port":65536}"#).0, "Backend.Port");
    assert_eq!(field_of(r#"{"Type":"udp","Port":-1}"#).0, "Backend.Port");
    // vxlan: port 0 is the kernel's default; MTU is the underlay's, the device gets 50 less.
    assert_eq!(get(r#"{"Type":"vxlan","Port":0}"#), vxlan(1, None, None));
    assert_eq!(get(r#"{"Type":"vxlan","Port":8472}"#), vxlan(1, None, None));
    assert_eq!(
        get(r#"{"Type":"vxlan","VNI":16777215}"#),
        vxlan(16_777_215, None, None)
    );
    let b = get(r#"{"Type":"vxlan","MTU":1400}"#);
    assert_eq!(b.tun_mtu(), Some(1350));
    assert_eq!(get(r#"{"Type":"vxlan","MTU":118}"#).tun_mtu(), Some(68));
    assert_eq!(get(r#"{"Type":"vxlan"}"#).tun_mtu(), None);
    assert_eq!(
        get(r#"{"Type":"udp","MTU":1400}"#).tun_mtu(),
        None,
        "udp reads no MTU"
    );
    assert_eq!(
        get(r#"{"Type":"vxlan","GBP":false,"DirectRouting":false}"#),
        vxlan(1, None, None)
    );
    assert_eq!(
        get(r#"{"Type":"vxlan","Learning":true}"#),
        vxlan(1, None, None)
    );
    for (b, name) in [
        (r#"{"Type":"vxlan","MTU":117}"#, "Backend.MTU"),
        (r#"{"Type":"vxlan","MTU":65051}"#, "Backend.MTU"),
        (r#"{"Type":"vxlan","MTU":0}"#, "Backend.MTU"),
        (r#"{"Type":"vxlan","VNI":16777216}"#, "Backend.VNI"),
        (r#"{"Type":"vxlan","VNI":-4294967295}"#, "Backend.VNI"),
        (r#"{"Type":"vxlan","Port":70000}"#, "Backend.Port"),
        (r#"{"Type":"vxlan","Port":-1}"#, "Backend.Port"),
        (r#"{"Type":"vxlan","GBP":true}"#, "Backend.GBP"),
        (
            r#"{"Type":"vxlan","directRouting":true}"#,
            "Backend.DirectRouting",
        ),
        (r"{}", "Backend.Type"),
        (r#"{"Port":8285}"#, "Backend.Type"),
        (r#"{"Type":""}"#, "Backend.Type"),
        (r#"{"Type":null}"#, "Backend.Type"),
        (r"null", "Backend.Type"),
        (r"[]", "Backend"),
    ] {
        assert_eq!(field_of(b).0, name, "{b}");
    }
    let (name, detail) = field_of(r#"{"Type":"host-gw"}"#);
    assert_eq!(name, "Backend.Type");
    assert!(detail.contains("`host-gw`"), "{detail}");
    assert!(field_of(r#"{"Type":"wireguard"}"#).1.contains("wireguard"));
}

#[test]
fn errors_do_not_echo_unbounded_input() {
    let long = "9".repeat(10_000);
    let e = parse(&format!(
        r#"{{"Network":"10.244.0.0/16","SubnetLen":{long}}}"#
    ))
    .expect_err("too large");
    assert!(e.to_string().len() < 200, "{e}");
}

// ---- The model: what Go's decoder and flannel's checks make of a generated config. ----

/// One decoded token: keeps the field (`null`), sets it, or fails the decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<T> {
    Keep,
    Set(T),
    Fail,
}

const BOOLS: &[(&str, Tok<bool>)] = &[
    ("true", Tok::Set(true)),
    ("false", Tok::Set(false)),
    ("null", Tok::Keep),
    ("1", Tok::Fail),
    ("\"true\"", Tok::Fail),
    ("[]", Tok::Fail),
];

const UINTS: &[(&str, Tok<u64>)] = &[
    ("null", Tok::Keep),
    ("0", Tok::Set(0)),
    ("16", Tok::Set(16)),
    ("17", Tok::Set(17)),
    ("18", Tok::Set(18)),
    ("20", Tok::Set(20)),
    ("24", Tok::Set(24)),
    ("26", Tok::Set(26)),
    ("30", Tok::Set(30)),
    ("31", Tok::Set(31)),
    ("18446744073709551615", Tok::Set(u64::MAX)),
    ("18446744073709551616", Tok::Fail),
    ("-1", Tok::Fail),
    ("-0", Tok::Fail),
    ("24.0", Tok::Fail),
    ("2.4e1", Tok::Fail),
    ("\"24\"", Tok::Fail),
    ("true", Tok::Fail),
];

const INTS: &[(&str, Tok<i64>)] = &[
    ("null", Tok::Keep),
    ("0", Tok::Set(0)),
    ("-0", Tok::Set(0)),
    ("1", Tok::Set(1)),
    ("42", Tok::Set(42)),
    ("117", Tok::Set(117)),
    ("118", Tok::Set(118)),
    ("1400", Tok::Set(1400)),
    ("4789", Tok::Set(4789)),
    ("8285", Tok::Set(8285)),
    ("8472", Tok::Set(8472)),
    ("65050", Tok::Set(65050)),
    ("65051", Tok::Set(65051)),
    ("65535", Tok::Set(65535)),
    ("70000", Tok::Set(70000)),
    ("16777215", Tok::Set(16_777_215)),
    ("16777216", Tok::Set(16_777_216)),
    ("-1", Tok::Set(-1)),
    ("9223372036854775807", Tok::Set(i64::MAX)),
    ("9223372036854775808", Tok::Fail),
    ("42.0", Tok::Fail),
    ("1e3", Tok::Fail),
    ("\"42\"", Tok::Fail),
    ("false", Tok::Fail),
    ("{}", Tok::Fail),
];

/// `Network` values and what flannel's `IP4Net` makes of them (`Fail` includes `null`).
const NETS: &[(&str, Tok<(u32, u8)>)] = &[
    ("\"10.244.0.0/16\"", Tok::Set((0x0AF4_0000, 16))),
    ("\"10.244.7.7/16\"", Tok::Set((0x0AF4_0000, 16))),
    ("\"10.244.0.0/0016\"", Tok::Set((0x0AF4_0000, 16))),
    ("\"10.0.0.0/8\"", Tok::Set((0x0A00_0000, 8))),
    ("\"192.168.0.0/24\"", Tok::Set((0xC0A8_0000, 24))),
    ("\"10.1.2.0/28\"", Tok::Set((0x0A01_0200, 28))),
    ("\"10.1.2.0/29\"", Tok::Set((0x0A01_0200, 29))),
    ("\"0.0.0.0/0\"", Tok::Set((0, 0))),
    ("\"10.244.0.0\\/16\"", Tok::Fail),
    ("\"\\u0031\\u0030.244.0.0/16\"", Tok::Fail),
    ("\"fd00::/64\"", Tok::Fail),
    ("\"10.244.0.0/33\"", Tok::Fail),
    ("\"10.244.0.0\"", Tok::Fail),
    ("\"010.244.0.0/16\"", Tok::Fail),
    ("\"\"", Tok::Fail),
    ("null", Tok::Fail),
    ("16", Tok::Fail),
];

/// `SubnetMin`/`SubnetMax` values and what flannel's `IP4` makes of them.
const IP4S: &[(&str, Tok<u32>)] = &[
    ("\"0.0.0.0\"", Tok::Set(0)),
    ("\"10.244.0.0\"", Tok::Set(0x0AF4_0000)),
    ("\"10.244.5.0\"", Tok::Set(0x0AF4_0500)),
    ("\"10.244.200.0\"", Tok::Set(0x0AF4_C800)),
    ("\"10.244.5.64\"", Tok::Set(0x0AF4_0540)),
    ("\"10.245.0.0\"", Tok::Set(0x0AF5_0000)),
    ("\"::ffff:10.244.9.0\"", Tok::Set(0x0AF4_0900)),
    ("\"fd00::1\"", Tok::Fail),
    ("\"x\"", Tok::Fail),
    ("null", Tok::Fail),
    ("1", Tok::Fail),
];

const FD00: u128 = 0xfd00 << 112;

/// An IPv6 network as numbers: its address and prefix length.
type V6Net = Option<(u128, u8)>;

/// `IPv6Network` values and what flannel's `IP6Net` makes of them (`None`: an IPv4 CIDR,
/// which decodes but is no IPv6 network).
const V6_NETS: &[(&str, Tok<V6Net>)] = &[
    ("\"fd00::/56\"", Tok::Set(Some((FD00, 56)))),
    ("\"fd00::/56\"", Tok::Set(Some((FD00, 56)))),
    ("\"fd00::1/56\"", Tok::Set(Some((FD00, 56)))),
    ("\"fd00::/120\"", Tok::Set(Some((FD00, 120)))),
    ("\"fd00::/125\"", Tok::Set(Some((FD00, 125)))),
    ("\"::/0\"", Tok::Set(Some((0, 0)))),
    ("\"10.0.0.0/8\"", Tok::Set(None)),
    ("\"bogus\"", Tok::Fail),
    ("null", Tok::Fail),
];
/// `IPv6SubnetMin` values. It is a pointer, so Go's decoder sets it back to nil on `null`:
/// a later `null` undoes an earlier address.
const V6_IPS: &[(&str, Tok<Option<u128>>)] = &[
    ("\"fd00::100\"", Tok::Set(Some(FD00 | 0x100))),
    ("\"fd00:0:0:5::\"", Tok::Set(Some(FD00 | (5 << 64)))),
    ("\"fd00:0:0:5::\"", Tok::Set(Some(FD00 | (5 << 64)))),
    ("\"fd00::40\"", Tok::Set(Some(FD00 | 0x40))),
    ("\"10.0.0.1\"", Tok::Set(Some(0xffff_0a00_0001))),
    ("null", Tok::Set(None)),
    ("\"bogus\"", Tok::Fail),
    ("7", Tok::Fail),
];

/// `Backend.Type` values.
const TYPES: &[(&str, Tok<&str>)] = &[
    ("\"udp\"", Tok::Set("udp")),
    ("\"vxlan\"", Tok::Set("vxlan")),
    ("\"VXLAN\"", Tok::Set("vxlan")),
    ("\"Udp\"", Tok::Set("udp")),
    ("\"vx\\u006can\"", Tok::Set("vxlan")),
    ("\"host-gw\"", Tok::Set("host-gw")),
    ("\"\"", Tok::Set("")),
    ("null", Tok::Keep),
    ("5", Tok::Fail),
];

/// Anything, for keys no field answers to.
const ANY: &[&str] = &[
    "1",
    "1.5e300",
    "\"x\"",
    "null",
    "[1,{\"Network\":[null,\"\\ud800\"]}]",
    "{\"Type\":\"host-gw\",\"VNI\":\"x\"}",
    "true",
];

/// Keys that fold to no field of either struct.
const UNKNOWN: &[&str] = &[
    "Networks",
    "BackendType",
    "subnet_len",
    "Typ",
    "Enable\u{131}Pv4",
    "VN\u{130}",
    "Direct Routing",
    "P\u{f6}rt",
    "",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum F {
    EnableIpv4,
    EnableIpv6,
    EnableNfTables,
    Network,
    Ipv6Network,
    SubnetMin,
    SubnetMax,
    Ipv6SubnetMin,
    SubnetLen,
    Ipv6SubnetLen,
    Backend,
    Type,
    Vni,
    Port,
    Mtu,
    Gbp,
    Learning,
    DirectRouting,
    Unknown,
}

impl F {
    const fn name(self) -> &'static str {
        match self {
            Self::EnableIpv4 => "EnableIPv4",
            Self::EnableIpv6 => "EnableIPv6",
            Self::EnableNfTables => "EnableNFTables",
            Self::Network => "Network",
            Self::Ipv6Network => "IPv6Network",
            Self::SubnetMin => "SubnetMin",
            Self::SubnetMax => "SubnetMax",
            Self::Ipv6SubnetMin => "IPv6SubnetMin",
            Self::SubnetLen => "SubnetLen",
            Self::Ipv6SubnetLen => "IPv6SubnetLen",
            Self::Backend => "Backend",
            Self::Type => "Type",
            Self::Vni => "VNI",
            Self::Port => "Port",
            Self::Mtu => "MTU",
            Self::Gbp => "GBP",
            Self::Learning => "Learning",
            Self::DirectRouting => "DirectRouting",
            Self::Unknown => "",
        }
    }
}

/// A generated member: the field it is meant for, how its key is spelled, and its value
/// (an index into the field's table, or a backend object).
#[derive(Debug, Clone)]
struct Member {
    field: F,
    key: String,
    escape_key: bool,
    token: usize,
    backend: Option<Vec<Self>>,
}

fn table_len(f: F) -> usize {
    match f {
        F::EnableIpv4
        | F::EnableIpv6
        | F::EnableNfTables
        | F::Gbp
        | F::Learning
        | F::DirectRouting => BOOLS.len(),
        F::Network => NETS.len(),
        F::Ipv6Network => V6_NETS.len(),
        F::SubnetMin | F::SubnetMax => IP4S.len(),
        F::Ipv6SubnetMin => V6_IPS.len(),
        F::SubnetLen | F::Ipv6SubnetLen => UINTS.len(),
        F::Vni | F::Port | F::Mtu => INTS.len(),
        F::Type => TYPES.len(),
        // Backend: `null`, a string, an array, or (most often) an object.
        F::Backend => 4,
        F::Unknown => ANY.len(),
    }
}

fn token_text(f: F, i: usize) -> &'static str {
    let i = i % table_len(f);
    match f {
        F::EnableIpv4
        | F::EnableIpv6
        | F::EnableNfTables
        | F::Gbp
        | F::Learning
        | F::DirectRouting => BOOLS[i].0,
        F::Network => NETS[i].0,
        F::Ipv6Network => V6_NETS[i].0,
        F::SubnetMin | F::SubnetMax => IP4S[i].0,
        F::Ipv6SubnetMin => V6_IPS[i].0,
        F::SubnetLen | F::Ipv6SubnetLen => UINTS[i].0,
        F::Vni | F::Port | F::Mtu => INTS[i].0,
        F::Type => TYPES[i].0,
        F::Backend => ["null", "\"vxlan\"", "[]", "{}"][i],
        F::Unknown => ANY[i],
    }
}

/// Spells `name` with each letter's case chosen by `cases`, using U+212A for k and U+017F
/// for s when asked.
fn spell(name: &str, cases: &[u8]) -> String {
    name.chars()
        .zip(cases.iter().chain(std::iter::repeat(&0)))
        .map(|(c, &how)| match (how % 4, c.to_ascii_lowercase()) {
            (0, _) => c.to_ascii_lowercase(),
            (1, _) => c.to_ascii_uppercase(),
            (2, 'k') => '\u{212A}',
            (2, 's') => '\u{17F}',
            _ => c,
        })
        .collect()
}

/// How many entries lead each table that decode without error (the rest are type errors).
fn good_len(f: F) -> usize {
    match f {
        F::EnableIpv4
        | F::EnableIpv6
        | F::EnableNfTables
        | F::Gbp
        | F::Learning
        | F::DirectRouting => 3,
        F::Network => 8,
        F::Ipv6Network => 7,
        F::SubnetMin | F::SubnetMax => 7,
        F::Ipv6SubnetMin => 6,
        F::SubnetLen | F::Ipv6SubnetLen => 11,
        F::Vni | F::Port | F::Mtu => 19,
        F::Type => 5,
        F::Backend => 4,
        F::Unknown => ANY.len(),
    }
}

/// A member for one of `fields`, its value most often one that decodes.
fn member(fields: &'static [F]) -> impl Strategy<Value = Member> {
    (
        proptest::sample::select(fields),
        proptest::collection::vec(any::<u8>(), 16),
        proptest::sample::select(UNKNOWN),
        any::<bool>(),
        any::<usize>(),
        any::<u8>(),
    )
        .prop_map(|(field, cases, unknown, escape_key, token, clean)| Member {
            field,
            key: if field == F::Unknown {
                unknown.to_owned()
            } else {
                spell(field.name(), &cases)
            },
            escape_key,
            token: token
                % if clean < 200 {
                    good_len(field)
                } else {
                    table_len(field)
                },
            backend: None,
        })
}

/// A member for `field` itself.
fn member_for(field: &'static [F]) -> impl Strategy<Value = Member> {
    member(field)
}

const TOP: &[F] = &[
    F::EnableIpv4,
    F::EnableIpv6,
    F::EnableIpv6,
    F::Ipv6Network,
    F::EnableNfTables,
    F::Network,
    F::Network,
    F::Network,
    F::Ipv6Network,
    F::SubnetMin,
    F::SubnetMax,
    F::Ipv6SubnetMin,
    F::SubnetLen,
    F::SubnetLen,
    F::Ipv6SubnetLen,
    F::Backend,
    F::Backend,
    F::Backend,
    F::Unknown,
];

const BACKEND: &[F] = &[
    F::Type,
    F::Type,
    F::Type,
    F::Vni,
    F::Port,
    F::Mtu,
    F::Gbp,
    F::Learning,
    F::DirectRouting,
    F::Unknown,
];

/// A config: a few random members, most often with a `Network` and a `Backend` object
/// (itself a `Type` and a few random options) somewhere among them.
fn config() -> impl Strategy<Value = Vec<Member>> {
    let backend = (
        member_for(&[F::Backend]),
        member_for(&[F::Type]),
        proptest::collection::vec(member(BACKEND), 0..4),
        any::<usize>(),
        any::<u8>(),
    )
        .prop_map(|(mut m, ty, mut inner, at, object)| {
            if object < 220 {
                m.token = 3;
                inner.insert(at % (inner.len() + 1), ty);
                m.backend = Some(inner);
            }
            m
        });
    // A dual-stack pair: `"EnableIPv6":true` and an `IPv6Network`.
    let dual = (
        member_for(&[F::EnableIpv6]),
        member_for(&[F::Ipv6Network]),
        any::<usize>(),
    )
        .prop_map(|(mut on, net, at)| {
            on.token = 0;
            (on, net, at)
        });
    (
        proptest::collection::vec(member(TOP), 0..4),
        member_for(&[F::Network]),
        proptest::option::weighted(0.7, backend),
        any::<(usize, usize, bool)>(),
        proptest::option::weighted(0.3, dual),
    )
        .prop_map(
            |(mut members, network, backend, (a, b, with_network), dual)| {
                if with_network || members.is_empty() {
                    members.insert(a % (members.len() + 1), network);
                }
                if let Some((on, net, at)) = dual {
                    members.insert(at % (members.len() + 1), net);
                    members.insert(at % (members.len() + 1), on);
                }
                if let Some(backend) = backend {
                    members.insert(b % (members.len() + 1), backend);
                }
                members
            },
        )
}

fn render_key(m: &Member) -> String {
    if m.escape_key {
        let mut out = String::from("\"");
        for unit in m.key.encode_utf16() {
            out.push_str(&format!("\\u{unit:04x}"));
        }
        out.push('"');
        out
    } else {
        serde_json::to_string(&m.key).expect("string")
    }
}

fn render(members: &[Member], spaced: bool) -> String {
    let (colon, comma) = if spaced {
        (" : ", " ,\n\t")
    } else {
        (":", ",")
    };
    let body: Vec<String> = members
        .iter()
        .map(|m| {
            let value = match &m.backend {
                Some(inner) => render(inner, !spaced),
                None => token_text(m.field, m.token).to_owned(),
            };
            format!("{}{colon}{value}", render_key(m))
        })
        .collect();
    format!("{{{}}}", body.join(comma))
}

/// The last decoded value of every member for field `f` (`Err` when one fails to decode).
fn last<T: Copy>(members: &[Member], f: F, table: &[(&str, Tok<T>)], default: T) -> Result<T, ()> {
    let mut value = default;
    for m in members.iter().filter(|m| m.field == f) {
        match table[m.token].1 {
            Tok::Keep => {}
            Tok::Set(v) => value = v,
            Tok::Fail => return Err(()),
        }
    }
    Ok(value)
}

/// What flanneld's decode and checks, plus fustian's documented refusals, make of `members`.
fn model(members: &[Member]) -> Result<NetworkConfig, ()> {
    let ipv4 = last(members, F::EnableIpv4, BOOLS, true)?;
    let ipv6 = last(members, F::EnableIpv6, BOOLS, false)?;
    let nft = last(members, F::EnableNfTables, BOOLS, false)?;
    let network = last(members, F::Network, NETS, (0, 0))?;
    let v6_network = last(members, F::Ipv6Network, V6_NETS, None)?;
    let min = last(members, F::SubnetMin, IP4S, 0)?;
    let max = last(members, F::SubnetMax, IP4S, 0)?;
    let v6_min = last(members, F::Ipv6SubnetMin, V6_IPS, None)?;
    let len = last(members, F::SubnetLen, UINTS, 0)?;
    let v6_len = last(members, F::Ipv6SubnetLen, UINTS, 0)?;
    let backend = members.iter().rfind(|m| m.field == F::Backend);
    // flannel's CheckNetworkConfig, in its order.
    if !ipv4 || network == (0, 0) {
        return Err(());
    }
    let (base, prefix) = (u64::from(network.0), u64::from(network.1));
    let len = match len {
        0 if prefix > 28 => return Err(()),
        0 if prefix <= 22 => 24,
        0 => prefix + 2,
        n if n > 30 || n < prefix + 2 => return Err(()),
        n => n,
    };
    let size = 1u64 << (32 - len);
    let top = base + (1u64 << (32 - prefix));
    let check = |ip: u32, default: u64| {
        let ip = u64::from(ip);
        match ip {
            0 => Ok(default),
            ip if ip < base || ip >= top || ip % size != 0 => Err(()),
            ip => Ok(ip),
        }
    };
    let (min, max) = (check(min, base + size)?, check(max, top - size)?);
    // fustian refuses an empty range flanneld would only fail to allocate from.
    if min > max {
        return Err(());
    }
    let ipv6 = if ipv6 {
        Some(model_ipv6(v6_network, v6_min, v6_len)?)
    } else {
        None
    };
    let backend = match backend {
        None => Backend::Udp { port: None },
        Some(m) => model_backend(m.backend.as_deref())?,
    };
    Ok(NetworkConfig {
        network: Ipv4Net::new(Ipv4Addr::from(network.0), network.1).map_err(|_| ())?,
        subnet_len: u8::try_from(len).map_err(|_| ())?,
        subnet_min: Ipv4Addr::from(u32::try_from(min).map_err(|_| ())?),
        subnet_max: Ipv4Addr::from(u32::try_from(max).map_err(|_| ())?),
        enable_nftables: nft,
        ipv6,
        backend,
    })
}

/// flannel's checks of the IPv6 half, on the model's numbers.
fn model_ipv6(
    network: Option<(u128, u8)>,
    min: Option<u128>,
    len: u64,
) -> Result<super::Ipv6Config, ()> {
    let (base, prefix) = network.ok_or(())?;
    if prefix == 0 {
        return Err(());
    }
    let prefix = u64::from(prefix);
    let len = match len {
        0 if prefix > 124 => return Err(()),
        0 if prefix <= 62 => 64,
        0 => prefix + 2,
        n if n > 126 || n < prefix + 2 => return Err(()),
        n => n,
    };
    let size = 1u128 << (128 - len);
    let top = base + (1u128 << (128 - prefix));
    let min = match min {
        None => base + size,
        Some(ip) if ip < base || ip >= top || (ip - base) % size != 0 => return Err(()),
        Some(ip) => ip,
    };
    let max = top - size;
    if min > max {
        return Err(());
    }
    Ok(super::Ipv6Config {
        network: ipnet::Ipv6Net::new(base.into(), u8::try_from(prefix).map_err(|_| ())?)
            .map_err(|_| ())?,
        subnet_len: u8::try_from(len).map_err(|_| ())?,
        subnet_min: min.into(),
        subnet_max: max.into(),
    })
}

fn model_backend(members: Option<&[Member]>) -> Result<Backend, ()> {
    // `null`, a string or an array: no Type, or not an object; both refused.
    let members = members.ok_or(())?;
    match last(members, F::Type, TYPES, "")? {
        "udp" => match last(members, F::Port, INTS, 8285)? {
            8285 => Ok(Backend::Udp { port: None }),
            p @ 1..=65535 => Ok(Backend::Udp {
                port: Some(u16::try_from(p).map_err(|_| ())?),
            }),
            _ => Err(()),
        },
        "vxlan" => {
            let vni = last(members, F::Vni, INTS, 1)?;
            let port = last(members, F::Port, INTS, 0)?;
            let mtu = members
                .iter()
                .filter(|m| m.field == F::Mtu)
                .try_fold(None, |mtu, m| match INTS[m.token].1 {
                    Tok::Keep => Ok(mtu),
                    Tok::Set(v) => Ok(Some(v)),
                    Tok::Fail => Err(()),
                })?;
            let gbp = last(members, F::Gbp, BOOLS, false)?;
            last(members, F::Learning, BOOLS, false)?;
            let direct = last(members, F::DirectRouting, BOOLS, false)?;
            if gbp || direct || !(0..1 << 24).contains(&vni) || !(0..=65535).contains(&port) {
                return Err(());
            }
            if mtu.is_some_and(|m| !(118..=65050).contains(&m)) {
                return Err(());
            }
            Ok(Backend::Vxlan {
                vni: u32::try_from(vni).map_err(|_| ())?,
                port: match port {
                    0 | 8472 => None,
                    p => Some(u16::try_from(p).map_err(|_| ())?),
                },
                mtu: mtu.map(u32::try_from).transpose().map_err(|_| ())?,
            })
        }
        _ => Err(()),
    }
}

#[test]
fn the_generator_reaches_every_outcome() {
    // The property below means little unless many generated configs are accepted, with
    // both backends, and many refused.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = config();
    let (mut udp, mut vxlan, mut refused, mut dual) = (0, 0, 0, 0);
    for _ in 0..2000 {
        let members = strategy.new_tree(&mut runner).expect("tree").current();
        dual += usize::from(model(&members).is_ok_and(|c| c.ipv6.is_some()));
        match model(&members).map(|c| c.backend) {
            Ok(Backend::Udp { .. }) => udp += 1,
            Ok(Backend::Vxlan { .. }) => vxlan += 1,
            Err(()) => refused += 1,
        }
    }
    assert!(
        udp > 100 && vxlan > 100 && refused > 200 && dual > 10,
        "{udp} {vxlan} {refused} {dual}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn agrees_with_the_go_model(members in config(), spaced in any::<bool>()) {
        let json = render(&members, spaced);
        let want = model(&members);
        let got = NetworkConfig::parse(json.as_bytes());
        match (&want, &got) {
            (Ok(w), Ok(g)) => prop_assert_eq!(w, g, "{}", json),
            (Err(()), Err(_)) => {}
            _ => prop_assert!(false, "{json}\nmodel: {want:?}\nparser: {got:?}"),
        }
    }

    #[test]
    fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = NetworkConfig::parse(&data);
    }

    #[test]
    fn subnets_lie_in_the_network(prefix in 8u8..=28, extra in 2u8..5, base in any::<u32>()) {
        let len = (prefix + extra).min(30);
        let net = Ipv4Net::new(Ipv4Addr::from(base), prefix).expect("valid").trunc();
        prop_assume!(!net.network().is_unspecified() || prefix != 0);
        let json = format!(r#"{{"Network":"{net}","SubnetLen":{len}}}"#);
        let c = NetworkConfig::parse(json.as_bytes()).expect("valid");
        for s in c.subnets().take(50) {
            prop_assert!(net.contains(&s));
            prop_assert!(c.allows(s));
            prop_assert_eq!(s.prefix_len(), len);
        }
    }
}

#[test]
fn dual_stack_defaults_and_bounds_as_flannel_sets_them() {
    let v6 = |json: &str| ok(json).ipv6.expect("dual stack");
    let c = v6(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}"#);
    assert_eq!(
        c.network,
        "fd00:10:244::/56".parse::<Ipv6Net>().expect("literal")
    );
    assert_eq!(c.subnet_len, 64);
    assert_eq!(
        c.subnet_min,
        "fd00:10:244:1::".parse::<Ipv6Addr>().expect("literal")
    );
    assert_eq!(
        c.subnet_max,
        "fd00:10:244:ff::".parse::<Ipv6Addr>().expect("literal")
    );
    assert_eq!(c.subnets().count(), 255);
    assert!(c.allows("fd00:10:244:7::/64".parse().expect("literal")));
    assert!(!c.allows("fd00:10:244::/64".parse().expect("literal")));
    assert!(!c.allows("fd00:10:244:7::/80".parse().expect("literal")));
    // A network smaller than a /62 is split in four; the host bits of the network go.
    let c = v6(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::7/120"}"#);
    assert_eq!(c.subnet_len, 122);
    assert_eq!(c.network, "fd00::/120".parse::<Ipv6Net>().expect("literal"));
    assert_eq!(
        c.subnet_min,
        "fd00::40".parse::<Ipv6Addr>().expect("literal")
    );
    assert_eq!(
        c.subnet_max,
        "fd00::c0".parse::<Ipv6Addr>().expect("literal")
    );
    // Explicit bounds; "::" is unset, as an all-zero address is to flannel.
    let c = v6(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":80,
        "IPv6SubnetMin":"fd00:0:0:5::","IPv6SubnetMax":"::"}"#,
    );
    assert_eq!(c.subnet_len, 80);
    assert_eq!(
        c.subnet_min,
        "fd00:0:0:5::".parse::<Ipv6Addr>().expect("literal")
    );
    assert_eq!(
        c.subnet_max,
        "fd00:0:0:ffff:ffff::".parse::<Ipv6Addr>().expect("literal")
    );
    // A /48 of /80s has 2^32 subnets: the iterator is lazy.
    assert_eq!(c.subnets().take(3).count(), 3);
    // The bounds are pointers: a later `null` sets one back to unset, as Go's decoder does,
    // so an address off the subnet boundary before it no longer counts.
    let c = v6(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56",
        "IPv6SubnetMin":"fd00::100","IPv6SubnetMin":null,"IPv6SubnetMax":"fd00::1","ipv6subnetmax":null}"#,
    );
    assert_eq!(
        c.subnet_min,
        "fd00:0:0:1::".parse::<Ipv6Addr>().expect("literal")
    );
    assert_eq!(
        c.subnet_max,
        "fd00:0:0:ff::".parse::<Ipv6Addr>().expect("literal")
    );
    // Without EnableIPv6 the IPv6 fields are decoded and otherwise ignored.
    assert_eq!(
        ok(r#"{"Network":"10.244.0.0/16","IPv6Network":"fd00::/56"}"#).ipv6,
        None
    );
}

#[test]
fn settings_no_one_reads_are_named() {
    let unread = |json: &str| super::unread_keys(json.as_bytes(), 16);
    assert!(
        unread(
            r#"{"Network":"10.244.0.0/16","subnetlen":24,"EnableNFTables":true,
                "Backend":{"type":"vxlan","vni":2,"Port":8472,"MTU":1500,"GBP":false,
                "learning":true,"DirectRouting":false}}"#
        )
        .is_empty()
    );
    assert_eq!(
        unread(
            r#"{"Network":"10.244.0.0/16","SubnetLength":24,"Backend":{"Type":"vxlan","VIN":2}}"#
        ),
        ["SubnetLength", "Backend.VIN"]
    );
    // A udp backend reads its port only; a VNI there is nobody's.
    assert_eq!(
        unread(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"UDP","VNI":5,"Port":8285}}"#),
        ["Backend.VNI"]
    );
    assert!(unread(r#"{"Network":"10.244.0.0/16"}"#).is_empty());
    assert!(unread("[]").is_empty());
    let many: String = (0..40).map(|i| format!(r#""k{i}":1,"#)).collect();
    let json = format!(r#"{{{many}"Network":"10.244.0.0/16"}}"#);
    assert_eq!(super::unread_keys(json.as_bytes(), 16).len(), 16);
}
