//! Per-packet cost of the forwarding decisions (parse, lookup, encapsulate / check,
//! decapsulate), and of the checksum sum every segment's payload goes through.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fustian::datapath::forward::{Forwarding, Outbound, inbound, outbound};
use fustian::table::{Peer, Snapshot};
use fustian::wire::ip::{IpProtocol, Packet, Repr};
use fustian::wire::{Encap, MacAddress, VxlanParams};

const HEADROOM: usize = 64;

fn packet(src: [u8; 4], dst: [u8; 4], len: usize) -> Vec<u8> {
    let repr = Repr {
        src_addr: Ipv4Addr::from(src),
        dst_addr: Ipv4Addr::from(dst),
        protocol: IpProtocol::Udp,
        ttl: 64,
        payload_len: len - 20,
    };
    let mut buf = vec![0u8; len];
    repr.emit(&mut Packet::new_unchecked(&mut buf[..]))
        .expect("fits");
    buf
}

fn snapshot(local: &str, peer_subnet: &str, peer_ip: &str) -> Snapshot {
    Snapshot::new(
        vec![local.parse().expect("literal")],
        vec![Peer {
            subnet: peer_subnet.parse().expect("literal"),
            endpoint: SocketAddr::new(peer_ip.parse().expect("literal"), 8285),
            vtep_mac: Some(MacAddress([2, 0, 0, 0, 0, 9])),
        }],
    )
    .expect("valid")
}

fn bench(c: &mut Criterion) {
    let fwd = Forwarding {
        encap: Encap::Flannel,
        network: "10.244.0.0/16".parse().expect("literal"),
        max_inner_len: 1472,
        icmp: false,
        strict_source_port: false,
    };
    let a = snapshot("10.244.1.0/24", "10.244.2.0/24", "192.0.2.2");
    let b = snapshot("10.244.2.0/24", "10.244.1.0/24", "192.0.2.1");
    let from_a: SocketAddr = "192.0.2.1:8285".parse().expect("literal");
    let mut group = c.benchmark_group("flannel");
    for size in [64usize, 576, 1400, 1472] {
        group.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0u8; HEADROOM];
        buf.extend(packet([10, 244, 1, 2], [10, 244, 2, 2], size));
        group.bench_with_input(BenchmarkId::new("outbound", size), &size, |bench, &size| {
            bench.iter(|| black_box(outbound(&a, &fwd, black_box(&mut buf), HEADROOM, size)));
        });
        let datagram = packet([10, 244, 1, 2], [10, 244, 2, 2], size);
        group.bench_with_input(BenchmarkId::new("inbound", size), &size, |bench, _| {
            bench.iter(|| black_box(inbound(&b, &fwd, from_a, black_box(&datagram))));
        });
    }
    group.finish();

    // VXLAN: outbound writes the 22-byte header into the headroom and hashes the flow;
    // inbound checks flags, VNI and MACs before the same IP checks.
    let mac_a = MacAddress([2, 0, 0, 0, 0, 1]);
    let vx_a = Forwarding {
        encap: Encap::Vxlan(VxlanParams {
            vni: 1,
            local_mac: mac_a,
        }),
        network: "10.244.0.0/16".parse().expect("literal"),
        max_inner_len: 1450,
        icmp: false,
        strict_source_port: false,
    };
    let vx_b = Forwarding {
        encap: Encap::Vxlan(VxlanParams {
            vni: 1,
            local_mac: MacAddress([2, 0, 0, 0, 0, 9]),
        }),
        network: "10.244.0.0/16".parse().expect("literal"),
        max_inner_len: 1450,
        icmp: false,
        strict_source_port: false,
    };
    let mut group = c.benchmark_group("vxlan");
    for size in [64usize, 576, 1400, 1450] {
        group.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0u8; HEADROOM];
        buf.extend(packet([10, 244, 1, 2], [10, 244, 2, 2], size));
        group.bench_with_input(BenchmarkId::new("outbound", size), &size, |bench, &size| {
            bench.iter(|| black_box(outbound(&a, &vx_a, black_box(&mut buf), HEADROOM, size)));
        });
        let Outbound::Send { start, len, .. } = outbound(&a, &vx_a, &mut buf, HEADROOM, size)
        else {
            panic!("not sent");
        };
        let frame = buf[start..start + len].to_vec();
        let b_vx = Snapshot::new(
            vec!["10.244.2.0/24".parse().expect("literal")],
            vec![Peer {
                subnet: "10.244.1.0/24".parse().expect("literal"),
                endpoint: from_a,
                vtep_mac: Some(mac_a),
            }],
        )
        .expect("valid");
        group.bench_with_input(BenchmarkId::new("inbound", size), &size, |bench, _| {
            bench.iter(|| black_box(inbound(&b_vx, &vx_b, from_a, black_box(&frame))));
        });
    }
    group.finish();
}

/// The Internet checksum's one's-complement sum over a segment's payload and a super-packet.
fn checksum(c: &mut Criterion) {
    let mut group = c.benchmark_group("ones_sum");
    for size in [1448usize, 65_536] {
        let data: Vec<u8> = (0..size)
            .map(|i| u8::try_from(i * 7 % 251).unwrap_or(0))
            .collect();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |bench, _| {
            bench.iter(|| black_box(fustian::wire::ip::ones_sum(black_box(&data))));
        });
        group.bench_with_input(BenchmarkId::new("portable", size), &size, |bench, _| {
            bench.iter(|| black_box(fustian::wire::ip::ones_sum_portable(black_box(&data))));
        });
    }
    group.finish();
}

criterion_group!(benches, bench, checksum);
criterion_main!(benches);
