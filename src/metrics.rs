//! Counters, kept per worker and summed when read.
//!
//! Each worker owns one cache-padded [`Counters`] block and is the only writer to it (relaxed
//! atomics: no ordering is needed between counters, only that each add is not lost). Readers
//! sum all blocks. Every metric name is listed in this file; the Prometheus text rendering
//! prefixes each with `fustian_`.
//!
//! | name | meaning |
//! |---|---|
//! | `tun_rx_packets`, `tun_rx_bytes` | packets read from the TUN device |
//! | `tx_packets`, `tx_bytes` | datagrams sent to peers (UDP payload bytes) |
//! | `rx_packets`, `rx_bytes` | datagrams received from the underlay (UDP payload bytes) |
//! | `tun_tx_packets`, `tun_tx_bytes` | packets written to the TUN device |
//! | `tun_tx_csum_completed` | of those, packets whose partial TCP/UDP checksum (left by a kernel peer on the same host, see `wire::ip::complete_partial_checksum`) was completed |
//! | `tun_tx_segmented` | received TCP super-packets (from a kernel `vxlan` peer on the same host, see `wire::tcp`) cut into MTU-sized segments |
//! | `tun_tx_icmp` | ICMP errors written back into TUN: net unreachable for `no_route`, fragmentation needed for `too_big` with DF |
//! | `icmp_rate_limited` | ICMP errors not sent: the per-worker token bucket (100/s, burst 100) was empty |
//! | `tun_rx_super`, `tun_rx_super_segments` | offloads: TUN reads that were TSO/USO super-packets, and the segments they were cut into (each also counts in `tx_packets`) |
//! | `tx_gso_sends` | offloads: sends that carried several segments with `UDP_SEGMENT` |
//! | `rx_gro_reads` | offloads: socket reads that held several datagrams (`UDP_GRO`); each datagram counts in `rx_packets` |
//! | `tun_tx_merged`, `tun_tx_merged_segments` | offloads: super-packets written to TUN, and the received segments merged into them (each write counts once in `tun_tx_packets`) |
//! | `busy_poll_hits`, `busy_poll_misses` | `--busy-poll`: looks for work before blocking that found some, and that ran out their window |
//! | `probe_rx`, `probe_tx`, `probe_rate_limited` | `doctor`'s peer probes (see `doctor::probe`): requests from peers recognised (never written to TUN), answers sent, requests left unanswered because the per-worker token bucket was empty or another request of the same read was answered |
//! | `drop_<reason>` | packets dropped, one counter per [`DropReason`] (names below) |
//!
//! Drop reasons: `tun_truncated`, `tun_bad_version`, `tun_bad_header_len`, `tun_bad_length`,
//! `tun_bad_checksum` (malformed packets read from TUN), `tun_bad_flags` (a virtio-net header
//! fustian cannot act on: an unknown GSO type, a GSO type that does not match the packet,
//! checksum offsets outside it, or more segments than a super-packet may have); `rx_truncated`, `rx_bad_version`,
//! `rx_bad_header_len`, `rx_bad_length`, `rx_bad_checksum` (malformed datagrams, or inner
//! packets whose version disagrees with the inner EtherType);
//! `no_route` (no peer owns the destination), `local_destination` (a packet from TUN addressed
//! to this node's own subnet), `too_big` (larger than the path allows), `unknown_sender`
//! (datagram from an address that is no peer), `spoofed_source` (inner source outside the
//! sender's subnet), `not_local` (inner destination outside this node's subnet), `oversize`
//! (datagram larger than the receive buffer; never truncated and delivered), `tx_error` (the
//! underlay send failed), `tun_write_error` (the TUN write failed, of a packet or of an ICMP
//! error); VXLAN only: `rx_bad_flags`
//! (flags other than the I flag or reserved bits set), `wrong_vni`,
//! `wrong_dst_mac` (inner destination is another unicast MAC), `own_src_mac` (inner source is
//! this VTEP's MAC), `non_ip` (ARP or another EtherType; flannel's kernel peers use permanent
//! neighbour entries and never ARP), `no_peer_mac` (a peer without a VTEP MAC), `rx_too_big` (an
//! inner packet above the TUN MTU that is not TCP and cannot be cut into segments),
//! `wrong_source_port` (from a peer's address but another port, with `--peer-source-port exact`),
//! `vxlan_not_host` (inner destination MAC is broadcast or multicast: the kernel's `vxlan`
//! device marks such a frame `PACKET_BROADCAST`/`PACKET_MULTICAST` and IP forwarding refuses
//! it), `rx_bad_tcp_checksum` (a TCP packet above the TUN MTU that fustian would cut into
//! segments, whose checksum is neither complete and valid nor the partial pseudo-header sum:
//! the cut would give corrupted bytes fresh valid checksums).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

use crate::wire::WireError;

/// Why a packet was dropped. Maps one-to-one onto a `drop_*` counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A packet read from TUN failed a wire check.
    TunMalformed(WireError),
    /// A datagram failed a wire check.
    RxMalformed(WireError),
    /// No peer owns the destination of a packet from TUN.
    NoRoute,
    /// A packet from TUN is addressed to this node's own subnet.
    LocalDestination,
    /// A packet is larger than the path to the peer allows.
    TooBig,
    /// A datagram came from an address that is no peer.
    UnknownSender,
    /// A datagram's inner source lies outside the sending peer's subnet.
    SpoofedSource,
    /// A datagram's inner destination lies outside this node's subnet.
    NotLocal,
    /// A datagram did not fit the receive buffer.
    Oversize,
    /// The underlay send failed.
    TxError,
    /// The TUN write failed.
    TunWriteError,
    /// A VXLAN frame carries another VNI.
    WrongVni,
    /// A VXLAN frame's inner destination MAC is another unicast address than this VTEP's.
    WrongDstMac,
    /// A VXLAN frame's inner source MAC is this VTEP's own (a loop).
    OwnSrcMac,
    /// A VXLAN frame carries something other than IPv4 or IPv6 (ARP, for example).
    NonIp,
    /// A VXLAN peer has no VTEP MAC to address frames to.
    NoPeerMac,
    /// A received inner packet is larger than the TUN MTU and is not TCP that can be cut.
    RxTooBig,
    /// A datagram came from a peer's address but not from its port (`--peer-source-port exact`).
    WrongSourcePort,
    /// A VXLAN frame's inner destination MAC is a broadcast or multicast address.
    VxlanNotHost,
    /// A received TCP packet larger than the TUN MTU, to be cut into segments, carries neither a
    /// valid complete checksum nor the partial pseudo-header sum.
    RxBadTcpChecksum,
    /// A received IPv6 packet whose extension headers fustian does not pass on: a chain that
    /// runs past the packet, more than [`crate::wire::ip::MAX_EXT_HEADERS`] headers, a
    /// hop-by-hop header not first, a jumbo payload option, or a routing header with segments
    /// left (the packet would travel on to an address the receive checks never saw).
    RxIpv6ExtHeaders,
    /// A received IPv4 packet whose options fustian does not pass on: a list that does not
    /// parse, or a loose or strict source route with addresses left (the packet would travel
    /// on to an address the receive checks never saw).
    RxIpv4Options,
}

const WIRE_ERRORS: [WireError; 6] = [
    WireError::Truncated,
    WireError::BadVersion,
    WireError::BadHeaderLen,
    WireError::BadLength,
    WireError::BadChecksum,
    WireError::BadFlags,
];

/// Number of drop counters.
pub const DROP_REASONS: usize = 32;

impl DropReason {
    /// Every reason, in counter order.
    pub fn all() -> impl Iterator<Item = Self> {
        WIRE_ERRORS
            .into_iter()
            .map(Self::TunMalformed)
            .chain(WIRE_ERRORS.into_iter().map(Self::RxMalformed))
            .chain([
                Self::NoRoute,
                Self::LocalDestination,
                Self::TooBig,
                Self::UnknownSender,
                Self::SpoofedSource,
                Self::NotLocal,
                Self::Oversize,
                Self::TxError,
                Self::TunWriteError,
                Self::WrongVni,
                Self::WrongDstMac,
                Self::OwnSrcMac,
                Self::NonIp,
                Self::NoPeerMac,
                Self::RxTooBig,
                Self::WrongSourcePort,
                Self::VxlanNotHost,
                Self::RxBadTcpChecksum,
                Self::RxIpv6ExtHeaders,
                Self::RxIpv4Options,
            ])
    }

    /// Returns the counter index.
    pub const fn index(self) -> usize {
        const fn wire(e: WireError) -> usize {
            match e {
                WireError::Truncated => 0,
                WireError::BadVersion => 1,
                WireError::BadHeaderLen => 2,
                WireError::BadLength => 3,
                WireError::BadChecksum => 4,
                WireError::BadFlags => 5,
            }
        }
        match self {
            Self::TunMalformed(e) => wire(e),
            Self::RxMalformed(e) => 6 + wire(e),
            Self::NoRoute => 12,
            Self::LocalDestination => 13,
            Self::TooBig => 14,
            Self::UnknownSender => 15,
            Self::SpoofedSource => 16,
            Self::NotLocal => 17,
            Self::Oversize => 18,
            Self::TxError => 19,
            Self::TunWriteError => 20,
            Self::WrongVni => 21,
            Self::WrongDstMac => 22,
            Self::OwnSrcMac => 23,
            Self::NonIp => 24,
            Self::NoPeerMac => 25,
            Self::RxTooBig => 26,
            Self::WrongSourcePort => 27,
            Self::VxlanNotHost => 28,
            Self::RxBadTcpChecksum => 29,
            Self::RxIpv6ExtHeaders => 30,
            Self::RxIpv4Options => 31,
        }
    }

    /// Returns the counter name without the `drop_` prefix.
    pub const fn name(self) -> &'static str {
        NAMES[self.index()]
    }
}

/// Counter names, indexed by [`DropReason::index`].
const NAMES: [&str; DROP_REASONS] = [
    "tun_truncated",
    "tun_bad_version",
    "tun_bad_header_len",
    "tun_bad_length",
    "tun_bad_checksum",
    "tun_bad_flags",
    "rx_truncated",
    "rx_bad_version",
    "rx_bad_header_len",
    "rx_bad_length",
    "rx_bad_checksum",
    "rx_bad_flags",
    "no_route",
    "local_destination",
    "too_big",
    "unknown_sender",
    "spoofed_source",
    "not_local",
    "oversize",
    "tx_error",
    "tun_write_error",
    "wrong_vni",
    "wrong_dst_mac",
    "own_src_mac",
    "non_ip",
    "no_peer_mac",
    "rx_too_big",
    "wrong_source_port",
    "vxlan_not_host",
    "rx_bad_tcp_checksum",
    "rx_ipv6_ext_headers",
    "rx_ipv4_options",
];

/// One worker's counters. Only that worker writes them.
#[derive(Debug, Default)]
pub struct Counters {
    /// Packets read from TUN.
    pub tun_rx_packets: AtomicU64,
    /// Bytes read from TUN.
    pub tun_rx_bytes: AtomicU64,
    /// Datagrams sent.
    pub tx_packets: AtomicU64,
    /// Payload bytes sent.
    pub tx_bytes: AtomicU64,
    /// Datagrams received.
    pub rx_packets: AtomicU64,
    /// Payload bytes received.
    pub rx_bytes: AtomicU64,
    /// Packets written to TUN.
    pub tun_tx_packets: AtomicU64,
    /// Bytes written to TUN.
    pub tun_tx_bytes: AtomicU64,
    /// Packets written to TUN whose partial TCP/UDP checksum was completed first.
    pub tun_tx_csum_completed: AtomicU64,
    /// Received TCP super-packets cut into MTU-sized segments before the TUN write.
    pub tun_tx_segmented: AtomicU64,
    /// ICMP errors written back into TUN (net unreachable, fragmentation needed).
    pub tun_tx_icmp: AtomicU64,
    /// ICMP errors not sent because the per-worker token bucket was empty.
    pub icmp_rate_limited: AtomicU64,
    /// TUN reads that were super-packets.
    pub tun_rx_super: AtomicU64,
    /// Segments cut from them.
    pub tun_rx_super_segments: AtomicU64,
    /// Sends carrying several segments (`UDP_SEGMENT`).
    pub tx_gso_sends: AtomicU64,
    /// Socket reads holding several datagrams (`UDP_GRO`).
    pub rx_gro_reads: AtomicU64,
    /// Super-packets written to TUN.
    pub tun_tx_merged: AtomicU64,
    /// Segments merged into them.
    pub tun_tx_merged_segments: AtomicU64,
    /// Busy-poll windows that found work before the worker blocked.
    pub busy_poll_hits: AtomicU64,
    /// Busy-poll windows that ran out with nothing found.
    pub busy_poll_misses: AtomicU64,
    /// Probe requests from peers recognised on receive.
    pub probe_rx: AtomicU64,
    /// Probe answers sent.
    pub probe_tx: AtomicU64,
    /// Probe requests left unanswered by the rate limit (or as a read's second or later).
    pub probe_rate_limited: AtomicU64,
    drops: [AtomicU64; DROP_REASONS],
}

impl Counters {
    /// Adds `n` to a counter (relaxed).
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one dropped packet.
    #[inline]
    pub fn drop_packet(&self, reason: DropReason) {
        self.drop_packets(reason, 1);
    }

    /// Counts `n` packets dropped for the same reason.
    #[inline]
    pub fn drop_packets(&self, reason: DropReason, n: u64) {
        self.drops[reason.index()].fetch_add(n, Ordering::Relaxed);
    }
}

/// All workers' counters.
#[derive(Debug)]
pub struct Metrics {
    workers: Vec<CachePadded<Counters>>,
}

impl Metrics {
    /// Creates counters for `workers` workers.
    pub fn new(workers: usize) -> Self {
        Self {
            workers: (0..workers.max(1))
                .map(|_| CachePadded::new(Counters::default()))
                .collect(),
        }
    }

    /// Returns the counters of worker `index` (worker 0 when out of range).
    pub fn worker(&self, index: usize) -> &Counters {
        self.workers.get(index).unwrap_or(&self.workers[0])
    }

    /// Sums every worker's counters.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for c in &self.workers {
            t.add(c);
        }
        t
    }

    /// Renders the totals in the Prometheus text exposition format.
    pub fn render_prometheus(&self) -> String {
        let mut text = String::new();
        for (name, value) in self.totals().named() {
            let _ = writeln!(
                text,
                "# TYPE fustian_{name} counter\nfustian_{name} {value}"
            );
        }
        text
    }
}

/// Declares [`Totals`] with one field per plain counter of [`Counters`], its summing and its
/// names, from one list.
macro_rules! totals {
    ($($name:ident),* $(,)?) => {
        /// Every counter summed over the workers: a typed, copied view of [`Metrics`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct Totals {
            $(
                #[doc = concat!("Sum of [`Counters::", stringify!($name), "`].")]
                pub $name: u64,
            )*
            /// Dropped packets, indexed by [`DropReason::index`].
            pub drops: [u64; DROP_REASONS],
        }

        impl Default for Totals {
            fn default() -> Self {
                Self {
                    $($name: 0,)*
                    drops: [0; DROP_REASONS],
                }
            }
        }

        impl Totals {
            /// Adds one worker's counters.
            fn add(&mut self, c: &Counters) {
                $(self.$name = self.$name.wrapping_add(c.$name.load(Ordering::Relaxed));)*
                for (sum, d) in self.drops.iter_mut().zip(&c.drops) {
                    *sum = sum.wrapping_add(d.load(Ordering::Relaxed));
                }
            }

            /// Returns `(name, value)` pairs, in the documented order, `drop_<reason>` last
            /// (names without the `fustian_` prefix).
            pub fn named(&self) -> Vec<(String, u64)> {
                let mut out = vec![$((stringify!($name).to_owned(), self.$name),)*];
                for reason in DropReason::all() {
                    out.push((format!("drop_{}", reason.name()), self.drops[reason.index()]));
                }
                out
            }
        }
    };
}

totals!(
    tun_rx_packets,
    tun_rx_bytes,
    tx_packets,
    tx_bytes,
    rx_packets,
    rx_bytes,
    tun_tx_packets,
    tun_tx_bytes,
    tun_tx_csum_completed,
    tun_tx_segmented,
    tun_tx_icmp,
    icmp_rate_limited,
    tun_rx_super,
    tun_rx_super_segments,
    tx_gso_sends,
    rx_gro_reads,
    tun_tx_merged,
    tun_tx_merged_segments,
    busy_poll_hits,
    busy_poll_misses,
    probe_rx,
    probe_tx,
    probe_rate_limited,
);

impl Totals {
    /// Returns the number of packets dropped for `reason`.
    pub const fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }
}

/// Escapes `value` for a label value of the Prometheus text format: backslash, double quote
/// and line feed as `\\`, `\"` and `\n` (any other character stands for itself). Every label
/// whose value is not one of fustian's own fixed words goes through it: a TUN device name may
/// hold a quote or a backslash, which would otherwise end the label early and make the whole
/// scrape unreadable.
pub fn label_value(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Parses the text of [`Metrics::render_prometheus`] back into `(name, value)` pairs, with the
/// `fustian_` prefix removed. Lines that are comments or do not parse are skipped.
pub fn parse_prometheus(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            Some((
                name.strip_prefix("fustian_")?.to_owned(),
                value.trim().parse().ok()?,
            ))
        })
        .collect()
}

/// Returns the names (with the `fustian_` prefix removed) that `text`, in the Prometheus text
/// format, declares as counters (`# TYPE fustian_NAME counter`); a series `NAME{labels}` is a
/// counter when `NAME` is.
pub fn prometheus_counters(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("# TYPE fustian_")?;
            let (name, kind) = rest.split_once(' ')?;
            (kind.trim() == "counter").then(|| name.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    proptest::proptest! {
        /// Any text escapes into a label value that ends only at its closing quote, holds no
        /// line feed, and reads back as the text.
        #[test]
        fn label_values_read_back(text in ".*") {
            let escaped = label_value(&text);
            proptest::prop_assert!(!escaped.contains('\n'));
            let mut back = String::new();
            let mut chars = escaped.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some('n') => back.push('\n'),
                        Some(c @ ('\\' | '"')) => back.push(c),
                        other => proptest::prop_assert!(false, "bad escape {:?}", other),
                    },
                    '"' => proptest::prop_assert!(false, "a bare quote in {:?}", escaped),
                    c => back.push(c),
                }
            }
            proptest::prop_assert_eq!(back, text);
        }
    }

    #[test]
    fn reasons_have_distinct_indices_and_names() {
        let all: Vec<_> = DropReason::all().collect();
        assert_eq!(all.len(), DROP_REASONS);
        let indices: HashSet<_> = all.iter().map(|r| r.index()).collect();
        let names: HashSet<_> = all.iter().map(|r| r.name()).collect();
        assert_eq!(indices.len(), DROP_REASONS);
        assert_eq!(names.len(), DROP_REASONS);
        assert!(indices.iter().all(|&i| i < DROP_REASONS));
    }

    #[test]
    fn counters_are_told_from_gauges_by_their_type_lines() {
        let text = "# TYPE fustian_rx_packets counter\nfustian_rx_packets 3\n\
                    # TYPE fustian_table_peers gauge\nfustian_table_peers 2\n\
                    # TYPE fustian_peer_rx_bytes counter\nfustian_peer_rx_bytes{a=\"b\"} 1\n\
                    # TYPE other_x counter\n# TYPE fustian_odd\n";
        let names = prometheus_counters(text);
        let want: HashSet<String> = ["rx_packets", "peer_rx_bytes"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(names, want);
    }

    #[test]
    fn totals_sum_workers_and_roundtrip_through_text() {
        let m = Metrics::new(2);
        Counters::add(&m.worker(0).rx_packets, 3);
        Counters::add(&m.worker(1).rx_packets, 4);
        m.worker(1)
            .drop_packet(DropReason::RxMalformed(WireError::Truncated));
        let parsed = parse_prometheus(&m.render_prometheus());
        let get = |n: &str| parsed.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
        assert_eq!(get("rx_packets"), Some(7));
        assert_eq!(get("drop_rx_truncated"), Some(1));
        assert_eq!(get("drop_no_route"), Some(0));
        let totals = m.totals();
        assert_eq!(totals.rx_packets, 7);
        assert_eq!(
            totals.dropped(DropReason::RxMalformed(WireError::Truncated)),
            1
        );
        assert_eq!(totals.named().len(), parsed.len());
    }
}

#[cfg(test)]
mod prometheus_props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn counter_names_take_any_text(text in "(# TYPE fustian_)?[ -~\n]{0,200}") {
            let _ = prometheus_counters(&text);
        }

        #[test]
        fn declared_kinds_read_back(
            kinds in proptest::collection::vec(("[a-z_]{1,12}", any::<bool>()), 0..8),
        ) {
            let mut text = String::new();
            for (name, counter) in &kinds {
                let kind = if *counter { "counter" } else { "gauge" };
                text.push_str(&format!("# TYPE fustian_{name} {kind}\nfustian_{name} 1\n"));
            }
            let got = prometheus_counters(&text);
            let want: HashSet<String> =
                kinds.iter().filter(|(_, c)| *c).map(|(n, _)| n.clone()).collect();
            prop_assert_eq!(got, want);
        }
    }
}
