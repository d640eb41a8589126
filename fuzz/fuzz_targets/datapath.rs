//! The datapath core, both directions, on arbitrary batches: TUN reads with arbitrary
//! virtio-net headers, socket reads with arbitrary `UDP_GRO` sizes, senders and truncation,
//! offloads on and off, both encapsulations. Nothing may panic, every planned range must lie
//! in its slot, and every input must be accounted for exactly once.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use fustian::datapath::{Core, CoreConfig, Forwarding, HEADROOM, RxOp, TxPlan};
use fustian::metrics::Metrics;
use fustian::table::{Peer, Snapshot};
use fustian::udp::Received;
use fustian::wire::{Encap, MacAddress, VxlanParams};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let vxlan = flags & 1 != 0;
    let local_mac = MacAddress([0xee, 0x58, 0x53, 0xba, 0x43, 0xf5]);
    let fwd = Forwarding {
        encap: if vxlan {
            Encap::Vxlan(VxlanParams { vni: 1, local_mac })
        } else {
            Encap::Flannel
        },
        network: "10.244.0.0/16".parse().expect("literal"),
        max_inner_len: if flags & 16 != 0 { 600 } else { 1450 },
        icmp: flags & 8 != 0,
        strict_source_port: flags & 32 != 0,
    };
    let cfg = CoreConfig {
        worker: 0,
        fwd,
        vnet: flags & 2 != 0,
        // UDP merging follows the virtio-net headers.
        uso: flags & 2 != 0,
        gro: flags & 4 != 0,
        sockets: usize::from(flags >> 6),
        tun_mtu: 1450,
    };
    let snap = Snapshot::new(
        vec!["10.244.2.0/24".parse().expect("literal")],
        vec![Peer {
            subnet: "10.244.1.0/24".parse().expect("literal"),
            endpoint: "192.0.2.1:8472".parse().expect("literal"),
            vtep_mac: Some(MacAddress([2, 0, 0, 0, 0, 1])),
        }],
    )
    .expect("valid");
    let mut core = Core::new(cfg, Arc::new(Metrics::new(1)));
    let mut tun_slot = vec![0u8; core.tun_slot_len()];
    let mut rx_slot = vec![0u8; core.rx_payload() + 1];
    let mut now = Instant::now();
    let (mut tun_reads, mut datagrams_max) = (0u64, 0u64);
    // Records: kind, length (2 bytes), GRO size (2 bytes), then the bytes.
    while rest.len() >= 5 {
        let kind = rest[0];
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]]));
        let segment = usize::from(u16::from_le_bytes([rest[3], rest[4]]));
        rest = &rest[5..];
        let take = len.min(rest.len());
        let bytes = &rest[..take];
        rest = &rest[take..];
        now += Duration::from_millis(u64::from(kind >> 4));
        if kind & 1 == 0 {
            // A TUN read: the bytes start with the virtio-net header when there is one.
            let at = core.tun_read_offset();
            let n = bytes.len().min(tun_slot.len() - at);
            tun_slot[at..at + n].copy_from_slice(&bytes[..n]);
            tun_reads += 1;
            match core.tun_read(&snap, &mut tun_slot, n, now) {
                TxPlan::Datagram { start, len, socket, .. } => {
                    assert!(start + len <= tun_slot.len());
                    assert!(socket < cfg.sockets.max(1));
                }
                TxPlan::Segments { packet, packet_len, count, .. } => {
                    assert_eq!(packet, HEADROOM);
                    assert!(packet + packet_len <= tun_slot.len());
                    for s in core.segments(count) {
                        assert!(s.payload_start + s.payload_len <= packet_len);
                        assert!(s.header_len <= core.segment_stride());
                    }
                }
                TxPlan::Icmp { len } => assert!(!core.icmp_reply(len).is_empty()),
                TxPlan::Dropped => {}
            }
        } else {
            // A socket read of `len` bytes (more than the slot: truncated).
            let n = bytes.len().min(rx_slot.len());
            rx_slot[..n].copy_from_slice(&bytes[..n]);
            let from = match kind & 6 {
                0 => None,
                2 => Some("192.0.2.9:8472".parse().expect("literal")),
                _ => Some("192.0.2.1:8472".parse().expect("literal")),
            };
            let r = Received {
                len: if kind & 8 != 0 { len } else { n },
                from,
                truncated: kind & 8 != 0 && len > n,
                segment,
            };
            datagrams_max += r.len.div_ceil(segment.max(1)).max(1) as u64;
            core.udp_read(&snap, &mut rx_slot, &r);
            check(&core, core.rx_ops(), n);
            if kind & 0x80 != 0 {
                core.rx_flush();
                check(&core, core.rx_ops(), 0);
            }
        }
    }
    core.rx_flush();
    check(&core, core.rx_ops(), 0);
    let t = core.tally();
    assert_eq!(t.tun_reads, tun_reads);
    assert_eq!(t.tun_reads, t.sent + t.tun_dropped, "{t:?}");
    assert_eq!(t.datagrams, t.delivered + t.rx_dropped + t.probes, "{t:?}");
    assert!(t.datagrams <= datagrams_max);
});

/// Every write lies within the `len` bytes read into the slot, or in the core's buffers.
fn check(core: &Core, ops: &[RxOp], len: usize) {
    for op in ops {
        match *op {
            RxOp::Write { start, len: n } | RxOp::WriteVnet { start, len: n, .. } => {
                assert!(start + n <= len, "{op:?} beyond {len}");
            }
            RxOp::Merged { buf } => assert!(!core.merged(buf).1.is_empty()),
            RxOp::Segments { packet, first, count } => {
                for i in first..first + count {
                    let (head, seg) = core.rx_segment(i);
                    assert_eq!(head.len(), seg.header_len);
                    assert!(packet + seg.payload_start + seg.payload_len <= len);
                }
            }
        }
    }
}
