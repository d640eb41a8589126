//! Table lookups (hit and miss) at several sizes, and the cost of publishing a snapshot.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fustian::table::{Peer, Snapshot, Table};
use ipnet::{IpNet, Ipv4Net};

/// `n` /24 leases in 10.0.0.0/8 (up to 65 536) with /16 leases beyond that.
fn peers(n: usize) -> Vec<Peer> {
    (0..n)
        .map(|i| {
            let i = u32::try_from(i).expect("small");
            let (net, len) = if i < 65_536 {
                (0x0a00_0000 | (i << 8), 24)
            } else {
                (0x0b00_0000 | ((i - 65_536) << 8), 24)
            };
            Peer {
                subnet: IpNet::V4(Ipv4Net::new(Ipv4Addr::from(net), len).expect("valid")),
                endpoint: SocketAddr::new(IpAddr::from([192, 0, 2, 1]), 8285),
                vtep_mac: None,
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("table");
    group.throughput(Throughput::Elements(1));
    for n in [16usize, 1_000, 100_000] {
        let snap = Snapshot::new(vec!["172.16.0.0/24".parse().expect("literal")], peers(n))
            .expect("valid");
        let hit = IpAddr::from(Ipv4Addr::from(
            0x0a00_0005u32 | ((u32::try_from(n).expect("small") / 2 % 65_536) << 8),
        ));
        let miss = IpAddr::from([203, 0, 113, 9]);
        group.bench_with_input(BenchmarkId::new("lookup_hit", n), &n, |b, _| {
            b.iter(|| black_box(snap.lookup(black_box(hit)).map(|p| p.0)));
        });
        group.bench_with_input(BenchmarkId::new("lookup_miss", n), &n, |b, _| {
            b.iter(|| black_box(snap.lookup(black_box(miss)).map(|p| p.0)));
        });
        let table = Table::new(Snapshot::default(), 1);
        group.bench_with_input(BenchmarkId::new("build_and_publish", n), &n, |b, &n| {
            let list = peers(n);
            b.iter(|| {
                let s = Snapshot::new(vec![], list.clone()).expect("valid");
                black_box(table.publish(s))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
