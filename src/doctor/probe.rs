//! The peer probe: a datagram a fustian node recognises on its tunnel port and answers, so
//! `doctor` can tell "port blocked" and "MTU mismatch" from a working path.
//!
//! ```text
//!  probe body (20 bytes, then any padding):
//!   0      1   2   3   4      5..8      8..16          16..20
//!  0xF5  'f' 'p' 'r'  kind   zero      token (echoed) length (request: 0; reply: bytes received)
//! ```
//!
//! - `udp` backend: the body is the whole UDP payload. An IP packet's first nibble is its
//!   version (4 or 6), so a payload starting with 0xF can never be a deliverable packet.
//! - `vxlan` backend: a VXLAN header (flags 0x08, the node's VNI) and an inner Ethernet header
//!   with the local experimental EtherType 0x88B5 (IEEE 802, "local experimental") carry the
//!   body. A data frame is always IPv4 or IPv6; a kernel VXLAN device that receives a probe
//!   hands the frame to a stack that has no handler for 0x88B5 and drops it, never answering.
//!
//! The receiving node ([`crate::datapath`]) tests one byte (`udp`) or two (`vxlan`) per datagram
//! to tell a probe apart, then, off the hot path: answers only a sender whose address is a
//! peer's in the table, at most [`ANSWER_RATE`] per second per worker, with a reply of
//! [`REPLY_LEN`] bytes (plus the VXLAN and Ethernet headers), never longer than the request; a
//! probe that is not answered is dropped and counted as any other datagram would be. A probe
//! is never written to TUN. One socket read gets at most one answer (with `UDP_GRO` a read may
//! hold several datagrams; the prober sends one request at a time and waits).
//!
//! `doctor` sends probes from its own socket bound to the node's underlay address (so the
//! sender is the node's address, which its peers know) and an ephemeral port; the answer goes
//! to that port. It sets DF (`IP_PMTUDISC_PROBE`) and searches the largest datagram answered.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::{Backend, Check, Intent, ProbeOptions};

/// The first byte of a probe: version nibble 0xF, which no IP packet has.
pub const MAGIC: [u8; 4] = [0xF5, b'f', b'p', b'r'];
/// The EtherType of a probe inside VXLAN: IEEE 802 local experimental EtherType 1.
pub const ETHERTYPE: u16 = 0x88B5;
/// The probe body's header length; a reply is exactly this long.
pub const REPLY_LEN: usize = 20;
/// VXLAN header plus inner Ethernet header in front of the body.
pub const VXLAN_PREFIX: usize = 8 + 14;
/// Answers per second (and burst) each worker gives.
pub const ANSWER_RATE: f64 = 50.0;

/// What a probe body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Answer: `len` bytes of the request were received.
    Reply {
        /// The bytes received (the whole UDP payload).
        len: u32,
    },
    /// A request.
    Request,
}

/// A parsed probe body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Request or reply.
    pub kind: Kind,
    /// Chosen by the requester, echoed.
    pub token: u64,
}

/// Why a probe body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeError {
    /// Shorter than [`REPLY_LEN`].
    Truncated,
    /// Magic, kind or reserved bytes wrong.
    Malformed,
}

impl Probe {
    /// Parses a probe body.
    ///
    /// # Errors
    ///
    /// [`ProbeError`] for a body that is too short or not a probe.
    pub fn parse(body: &[u8]) -> Result<Self, ProbeError> {
        let head = body.get(..REPLY_LEN).ok_or(ProbeError::Truncated)?;
        if head[..4] != MAGIC || head[5..8] != [0, 0, 0] {
            return Err(ProbeError::Malformed);
        }
        let token = u64::from_be_bytes(head[8..16].try_into().map_err(|_| ProbeError::Malformed)?);
        let len = u32::from_be_bytes(head[16..20].try_into().map_err(|_| ProbeError::Malformed)?);
        let kind = match (head[4], len) {
            (1, 0) => Kind::Request,
            (2, len) => Kind::Reply { len },
            _ => return Err(ProbeError::Malformed),
        };
        Ok(Self { kind, token })
    }

    /// Writes the body into `out[..REPLY_LEN]` (the rest of `out` is left as it is) and returns
    /// [`REPLY_LEN`], or 0 when `out` is too short.
    pub fn emit(&self, out: &mut [u8]) -> usize {
        let Some(head) = out.get_mut(..REPLY_LEN) else {
            return 0;
        };
        head[..4].copy_from_slice(&MAGIC);
        let (kind, len) = match self.kind {
            Kind::Request => (1, 0),
            Kind::Reply { len } => (2, len),
        };
        head[4] = kind;
        head[5..8].fill(0);
        head[8..16].copy_from_slice(&self.token.to_be_bytes());
        head[16..20].copy_from_slice(&len.to_be_bytes());
        REPLY_LEN
    }
}

/// Returns true when `datagram` is a probe in the `udp` format (the datapath's one test).
#[inline]
pub const fn is_flannel_probe(datagram: &[u8]) -> bool {
    matches!(datagram.first(), Some(b) if *b >> 4 == 0xF)
}

/// Returns true when `datagram` carries a probe in the `vxlan` format (the datapath's one
/// test: the inner EtherType).
#[inline]
pub const fn is_vxlan_probe(datagram: &[u8]) -> bool {
    datagram.len() >= VXLAN_PREFIX && u16::from_be_bytes([datagram[20], datagram[21]]) == ETHERTYPE
}

/// Builds into `out` the answer to `datagram` (a probe request in the format `vxlan` says:
/// `Some((vni, local_mac))` for VXLAN, `None` for `udp`) and returns its length, never more
/// than `datagram.len()`. `None` for anything that is not a well-formed request: a VXLAN probe
/// must carry the node's VNI, valid flags and the node's MAC as destination, and not its own
/// as source.
pub fn answer(datagram: &[u8], vxlan: Option<(u32, [u8; 6])>, out: &mut [u8]) -> Option<usize> {
    let prefix = if vxlan.is_some() { VXLAN_PREFIX } else { 0 };
    let body = datagram.get(prefix..)?;
    let probe = Probe::parse(body).ok()?;
    if probe.kind != Kind::Request {
        return None;
    }
    let reply = Probe {
        kind: Kind::Reply {
            len: u32::try_from(datagram.len()).unwrap_or(u32::MAX),
        },
        token: probe.token,
    };
    if let Some((vni, mac)) = vxlan {
        let (vx, eth) = (datagram.get(..8)?, datagram.get(8..22)?);
        // RFC 7348 section 5: flags 0x08, the rest reserved (zero).
        if vx != vxlan_header(vni)
            || eth[..6] != mac
            || eth[6..12] == mac
            || eth[12..14] != ETHERTYPE.to_be_bytes()
        {
            return None;
        }
        let out = out.get_mut(..VXLAN_PREFIX + REPLY_LEN)?;
        out[..8].copy_from_slice(&vxlan_header(vni));
        out[8..14].copy_from_slice(&eth[6..12]);
        out[14..20].copy_from_slice(&mac);
        out[20..22].copy_from_slice(&ETHERTYPE.to_be_bytes());
        reply.emit(&mut out[VXLAN_PREFIX..]);
    } else {
        reply.emit(out);
    }
    Some(prefix + REPLY_LEN).filter(|n| *n <= datagram.len())
}

/// Builds a request of `len` bytes into `out` (cleared first): `vxlan` is `Some((vni, peer's
/// MAC, own MAC))` for VXLAN.
pub fn request(out: &mut Vec<u8>, len: usize, token: u64, vxlan: Option<(u32, [u8; 6], [u8; 6])>) {
    out.clear();
    out.resize(len.max(REPLY_LEN + VXLAN_PREFIX), 0);
    let mut at = 0;
    if let Some((vni, dst, src)) = vxlan {
        out[..8].copy_from_slice(&vxlan_header(vni));
        out[8..14].copy_from_slice(&dst);
        out[14..20].copy_from_slice(&src);
        out[20..22].copy_from_slice(&ETHERTYPE.to_be_bytes());
        at = VXLAN_PREFIX;
    }
    Probe {
        kind: Kind::Request,
        token,
    }
    .emit(&mut out[at..]);
    out.truncate(len.max(at + REPLY_LEN));
}

fn vxlan_header(vni: u32) -> [u8; 8] {
    let v = vni.to_be_bytes();
    [0x08, 0, 0, 0, v[1], v[2], v[3], 0]
}

/// The UDP header in front of a probe on the wire (after the IP header).
const UDP_HEADER: usize = 8;

/// The IP and UDP headers in front of a probe to `dst` on the wire.
const fn underlay_headers(dst: SocketAddr) -> usize {
    UDP_HEADER + if dst.is_ipv6() { 40 } else { 20 }
}

/// What probing one peer found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerResult {
    /// Round-trip time of the smallest probe, when it was answered.
    pub rtt: Option<Duration>,
    /// The largest underlay datagram (IP header included) answered.
    pub path_mtu: Option<u32>,
}

/// The most peer endpoints one doctor run probes.
pub const MAX_PROBED: usize = 1024;

/// How long one doctor run spends probing peers in all; the endpoints left are named as not
/// probed.
pub const PROBE_BUDGET: Duration = Duration::from_secs(60);

/// Probes every peer of `intent` (the first [`MAX_PROBED`], unicast endpoints only) and
/// judges the answers.
pub fn checks(intent: &Intent, opts: &ProbeOptions) -> Vec<Check> {
    let mut out = Vec::new();
    // One socket per underlay address of the node (IPv4 and IPv6 on a dual underlay).
    let mut sockets = Vec::new();
    for ip in std::iter::once(intent.listen.ip()).chain(intent.listen6.map(|a| a.ip())) {
        match bind(ip) {
            Ok(s) => sockets.push(s),
            Err(e) => out.push(Check::warn(
                "peers",
                format!("cannot open a probe socket on {ip}: {e}"),
                None,
            )),
        }
    }
    // Each endpoint once (many subnets may name one host, and a hostile answer may repeat
    // one dead address), within one time budget for the whole run.
    let mut seen = std::collections::HashSet::new();
    let deadline = std::time::Instant::now() + PROBE_BUDGET;
    for (i, peer) in intent.peers.iter().enumerate() {
        let name = format!("peer.{}", peer.endpoint);
        if !seen.insert(peer.endpoint) {
            continue;
        }
        // The peers come from the node's answer: doctor (often root) sends only to as many
        // as a cluster has, and only to unicast addresses a node could hold.
        let over = seen.len() > MAX_PROBED;
        if over || std::time::Instant::now() >= deadline {
            let left = intent.peers[i..]
                .iter()
                .map(|p| p.endpoint)
                .collect::<std::collections::HashSet<_>>()
                .len();
            let why = if over {
                format!("doctor probes the first {MAX_PROBED}")
            } else {
                format!("doctor's {} s for probing are up", PROBE_BUDGET.as_secs())
            };
            out.push(Check::warn(
                "peers",
                format!("{left} more peer endpoints not probed ({why})"),
                None,
            ));
            break;
        }
        let ip = peer.endpoint.ip();
        let unicast = !(ip.is_unspecified()
            || ip.is_loopback()
            || ip.is_multicast()
            || matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast() || v4.octets()[0] >= 240));
        if !unicast || peer.endpoint.port() == 0 {
            out.push(Check::warn(
                &name,
                "not probed: no node can be at this address (the node's answer is suspect)",
                None,
            ));
            continue;
        }
        let Some(sock) = sockets.iter().find(|s| {
            s.local_addr()
                .is_ok_and(|a| a.is_ipv6() == peer.endpoint.is_ipv6())
        }) else {
            out.push(Check::warn(
                &name,
                "no probe socket of the endpoint's family",
                None,
            ));
            continue;
        };
        // The underlay MTU the node sized its TUN device for, on this peer's family.
        let overhead = underlay_headers(peer.endpoint)
            + match intent.backend {
                Backend::Udp => 0,
                Backend::Vxlan { .. } => VXLAN_PREFIX,
            };
        let want = intent.mtu + u32::try_from(overhead).unwrap_or(0);
        let opts = &ProbeOptions {
            max_mtu: opts.max_mtu.max(want),
            ..*opts
        };
        let vxlan = match (intent.backend, peer.vtep_mac, intent.vtep_mac) {
            (Backend::Vxlan { vni }, Some(dst), Some(src)) => Some((vni, dst, src)),
            (Backend::Vxlan { .. }, ..) => {
                out.push(Check::warn(&name, "no VTEP MAC known for the peer", None));
                continue;
            }
            (Backend::Udp, ..) => None,
        };
        let token = (u64::from(std::process::id()) << 32) | (i as u64) << 16;
        let r = probe_peer(sock, peer.endpoint, vxlan, token, opts);
        out.push(judge(&name, peer.endpoint, intent, &r, want));
    }
    out
}

fn judge(name: &str, endpoint: SocketAddr, intent: &Intent, r: &PeerResult, want: u32) -> Check {
    let port = endpoint.port();
    let ip = endpoint.ip();
    match (r.rtt, r.path_mtu) {
        (None, _) if matches!(intent.backend, Backend::Vxlan { .. }) => Check::warn(
            name,
            format!(
                "no fustian answer from {endpoint} (kernel VXLAN peer, or UDP {port} blocked?)"
            ),
            Some(format!(
                "on {ip}: iptables -I INPUT -p udp --dport {port} -j ACCEPT"
            )),
        ),
        (None, _) => Check::fail(
            name,
            format!(
                "no answer from {endpoint}: UDP port {port} blocked by a firewall, or the peer is down"
            ),
            Some(format!(
                "on {ip}: iptables -I INPUT -p udp --dport {port} -j ACCEPT"
            )),
        ),
        (Some(rtt), Some(mtu)) if mtu < want => Check::fail(
            name,
            format!(
                "MTU mismatch: {endpoint} answers up to {mtu} bytes, the node sends up to {want} \
                 (TUN MTU {}); rtt {:.2} ms",
                intent.mtu,
                rtt.as_secs_f64() * 1e3
            ),
            Some(format!(
                "ip link set dev {} mtu {}  (or raise the underlay MTU on the path to {ip})",
                intent.tun,
                intent.mtu - (want - mtu)
            )),
        ),
        (Some(rtt), mtu) => Check::ok(
            name,
            format!(
                "answers, rtt {:.2} ms, path MTU {}",
                rtt.as_secs_f64() * 1e3,
                mtu.map_or("?".to_owned(), |m| format!(">= {m}"))
            ),
        ),
    }
}

fn bind(ip: IpAddr) -> std::io::Result<UdpSocket> {
    let sock = UdpSocket::bind(SocketAddr::new(ip, 0))?;
    crate::sys::set_pmtudisc_probe(&sock)?;
    Ok(sock)
}

/// Sends a small probe (RTT), then searches the largest answered size up to `opts.max_mtu`.
pub fn probe_peer(
    sock: &UdpSocket,
    dst: SocketAddr,
    vxlan: Option<(u32, [u8; 6], [u8; 6])>,
    token: u64,
    opts: &ProbeOptions,
) -> PeerResult {
    let mut buf = Vec::new();
    let headers = underlay_headers(dst);
    let min = u32::try_from(VXLAN_PREFIX + REPLY_LEN + headers).unwrap_or(70);
    let mut seq = 0u64;
    let mut once = |size: u32| {
        seq += 1;
        let payload = size as usize - headers;
        request(&mut buf, payload, token | seq, vxlan);
        // Two tries each, for a loss.
        (0..2).find_map(|_| exchange(sock, dst, &buf, token | seq, vxlan.is_some(), opts.timeout))
    };
    let Some(rtt) = once(min) else {
        return PeerResult {
            rtt: None,
            path_mtu: None,
        };
    };
    let (mut lo, mut hi) = (min, opts.max_mtu.max(min));
    if once(hi).is_some() {
        lo = hi;
    } else {
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if once(mid).is_some() {
                lo = mid;
            } else {
                hi = mid;
            }
        }
    }
    PeerResult {
        rtt: Some(rtt),
        path_mtu: Some(lo),
    }
}

/// Sends `req` and waits for the reply with `token`; returns the round-trip time.
fn exchange(
    sock: &UdpSocket,
    dst: SocketAddr,
    req: &[u8],
    token: u64,
    vxlan: bool,
    timeout: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    // EMSGSIZE: larger than the local device allows with DF; not answered.
    sock.send_to(req, dst).ok()?;
    let mut buf = [0u8; 128];
    loop {
        let left = timeout
            .checked_sub(start.elapsed())
            .filter(|d| !d.is_zero())?;
        sock.set_read_timeout(Some(left)).ok()?;
        let (n, from) = sock.recv_from(&mut buf).ok()?;
        let prefix = if vxlan { VXLAN_PREFIX } else { 0 };
        if from.ip() != dst.ip() {
            continue;
        }
        match buf.get(prefix..n).map(Probe::parse) {
            Some(Ok(Probe {
                kind: Kind::Reply { len },
                token: t,
            })) if t == token && len as usize == req.len() => return Some(start.elapsed()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    #[test]
    fn endpoints_no_node_can_hold_are_not_probed() {
        let status = serde_json::json!({
            "tun": "flannel0", "mtu": 1472, "network": "10.244.0.0/16",
            "subnet": "10.244.1.0/24", "listen": "127.0.0.1:8285", "backend": "udp",
            "table": {"peers": [
                {"subnet": "10.244.2.0/24", "endpoint": "224.0.0.1:8285"},
                {"subnet": "10.244.3.0/24", "endpoint": "255.255.255.255:8285"},
                {"subnet": "10.244.4.0/24", "endpoint": "0.0.0.0:8285"},
                {"subnet": "10.244.5.0/24", "endpoint": "240.1.2.3:8285"},
                {"subnet": "10.244.6.0/24", "endpoint": "127.0.0.1:8285"},
            ]}
        });
        let intent = Intent::from_status(&status).expect("valid");
        let checks = checks(&intent, &ProbeOptions::default());
        assert_eq!(checks.len(), 5, "{checks:?}");
        for c in &checks {
            assert_eq!(c.outcome, crate::doctor::Outcome::Warn, "{c:?}");
            assert!(c.detail.starts_with("not probed"), "{c:?}");
        }
    }

    #[test]
    fn each_endpoint_is_judged_once() {
        let peers: Vec<_> = (2..300)
            .map(|i| {
                serde_json::json!({"subnet": format!("10.244.{}.0/24", i % 250 + 2),
                    "endpoint": if i % 2 == 0 { "224.0.0.1:8285" } else { "0.0.0.0:8285" }})
            })
            .collect();
        let status = serde_json::json!({
            "tun": "flannel0", "mtu": 1472, "network": "10.244.0.0/16",
            "subnet": "10.244.1.0/24", "listen": "127.0.0.1:8285", "backend": "udp",
            "table": {"peers": peers}
        });
        let intent = Intent::from_status(&status).expect("valid");
        let checks = checks(&intent, &ProbeOptions::default());
        let names: Vec<_> = checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["peer.224.0.0.1:8285", "peer.0.0.0.0:8285"],
            "{checks:?}"
        );
    }

    #[test]
    fn flannel_request_is_answered_smaller() {
        let mut req = Vec::new();
        request(&mut req, 100, 7, None);
        assert_eq!(req.len(), 100);
        assert!(is_flannel_probe(&req));
        let mut out = [0u8; 64];
        let n = answer(&req, None, &mut out).unwrap();
        assert_eq!(n, REPLY_LEN);
        let p = Probe::parse(&out[..n]).unwrap();
        assert_eq!(
            p,
            Probe {
                kind: Kind::Reply { len: 100 },
                token: 7
            }
        );
        // A reply is never answered.
        assert_eq!(answer(&out[..n], None, &mut [0u8; 64]), None);
    }

    #[test]
    fn vxlan_request_checks_vni_and_macs() {
        let mut req = Vec::new();
        request(&mut req, 80, 9, Some((1, MAC_B, MAC_A)));
        assert!(is_vxlan_probe(&req));
        let mut out = [0u8; 64];
        let n = answer(&req, Some((1, MAC_B)), &mut out).unwrap();
        assert_eq!(n, VXLAN_PREFIX + REPLY_LEN);
        assert_eq!(&out[8..14], &MAC_A);
        assert_eq!(&out[14..20], &MAC_B);
        assert!(is_vxlan_probe(&out[..n]));
        assert_eq!(answer(&req, Some((2, MAC_B)), &mut out), None, "wrong VNI");
        assert_eq!(answer(&req, Some((1, MAC_A)), &mut out), None, "wrong MAC");
        // A data frame is never a probe.
        let mut data = req.clone();
        data[20..22].copy_from_slice(&0x0800u16.to_be_bytes());
        assert!(!is_vxlan_probe(&data));
        assert!(!is_flannel_probe(&[0x45, 0]));
        assert!(!is_flannel_probe(&[0x60, 0]));
    }

    proptest! {
        #[test]
        fn answers_never_exceed_the_request(
            data in prop::collection::vec(any::<u8>(), 0..200),
            vxlan in any::<bool>(),
        ) {
            let mut out = [0u8; 64];
            let v = vxlan.then_some((1, MAC_B));
            if let Some(n) = answer(&data, v, &mut out) {
                prop_assert!(n <= data.len());
                let prefix = if vxlan { VXLAN_PREFIX } else { 0 };
                let p = Probe::parse(&out[prefix..n]).unwrap();
                prop_assert_eq!(p.kind, Kind::Reply { len: u32::try_from(data.len()).unwrap() });
            }
        }

        #[test]
        fn request_round_trips(len in 0usize..2000, token in any::<u64>(), vxlan in any::<bool>()) {
            let mut req = Vec::new();
            let v = vxlan.then_some((1, MAC_B, MAC_A));
            request(&mut req, len, token, v);
            let prefix = if vxlan { VXLAN_PREFIX } else { 0 };
            prop_assert_eq!(req.len(), len.max(prefix + REPLY_LEN));
            prop_assert_eq!(Probe::parse(&req[prefix..]), Ok(Probe { kind: Kind::Request, token }));
            let mut out = [0u8; 64];
            prop_assert!(answer(&req, vxlan.then_some((1, MAC_B)), &mut out).is_some());
        }
    }
}
