//! What `fustian trace` costs the packet path: one TUN read through the datapath core with
//! nothing attached, with a trace attached whose filter matches nothing, and with one that
//! matches every packet (its ring drained as it fills).

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fustian::datapath::{Core, CoreConfig, Forwarding, HEADROOM};
use fustian::metrics::Metrics;
use fustian::table::{Peer, Snapshot};
use fustian::trace::{Filter, Hub};
use fustian::wire::Encap;

/// A 1400-byte UDP/IPv4 packet 10.244.1.2:40000 -> 10.244.2.2:5201 with a valid header
/// checksum.
fn packet() -> Vec<u8> {
    let mut p = vec![0u8; 1400];
    p[..20].copy_from_slice(&[
        0x45, 0, 0x05, 0x78, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 244, 1, 2, 10, 244, 2, 2,
    ]);
    let sum = fustian::wire::ip::checksum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p[20..24].copy_from_slice(&[0x9c, 0x40, 0x14, 0x51]);
    p[24..26].copy_from_slice(&1380u16.to_be_bytes());
    p
}

fn core(hub: &Arc<Hub>) -> Core {
    Core::new(
        CoreConfig {
            worker: 0,
            fwd: Forwarding {
                encap: Encap::Flannel,
                network: "10.244.0.0/16".parse().expect("literal"),
                max_inner_len: 1450,
                icmp: true,
                strict_source_port: false,
            },
            vnet: false,
            uso: false,
            gro: false,
            sockets: 0,
            tun_mtu: 1450,
        },
        Arc::new(Metrics::new(1)),
    )
    .with_trace(Arc::clone(hub))
}

fn bench(c: &mut Criterion) {
    let snap = Snapshot::new(
        vec!["10.244.1.0/24".parse().expect("literal")],
        vec![Peer {
            subnet: "10.244.2.0/24".parse().expect("literal"),
            endpoint: SocketAddr::from(([192, 0, 2, 2], 8285)),
            vtep_mac: None,
        }],
    )
    .expect("valid");
    let p = packet();
    let mut slot = vec![0u8; HEADROOM + 2048];
    let mut group = c.benchmark_group("trace_tun_read");
    group.throughput(Throughput::Elements(1));
    let now = Instant::now();
    let mut run = |name: &str, filter: Option<&str>| {
        let hub = Arc::new(Hub::new(1));
        let attached = filter.map(|f| hub.attach(Filter::parse(f).expect("valid")).expect("room"));
        let mut c1 = core(&hub);
        let mut drained = Vec::new();
        let mut i = 0u32;
        group.bench_function(name, |b| {
            b.iter(|| {
                slot[HEADROOM..HEADROOM + p.len()].copy_from_slice(&p);
                // A batch of one read: the worst case for the per-batch look at the hub.
                c1.begin_batch();
                let plan = c1.tun_read(&snap, &mut slot, p.len(), now);
                i = i.wrapping_add(1);
                if i.is_multiple_of(1024)
                    && let Some(a) = &attached
                {
                    drained.clear();
                    a.drain(&mut drained);
                }
                black_box(plan)
            });
        });
    };
    run("detached", None);
    run("attached_no_match", Some("host 10.244.9.9"));
    run("attached_match", Some("udp and port 5201"));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
