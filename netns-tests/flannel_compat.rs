//! Wire compatibility with flannel's `udp` backend, checked without fustian's own encoder.
//!
//! Node B runs no fustian: the test plays flanneld there, with a UDP socket bound to
//! 192.0.2.2:8285 as flanneld's proxy binds it. Inner packets are built and parsed with
//! etherparse.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use fustian::lab::{host_addr, pod_addr};

use crate::common::{EXE, for_each_loop, serial, skip, topology};

#[test]
fn speaks_flannel_udp_both_ways() {
    if skip("speaks_flannel_udp_both_ways") {
        return;
    }
    let _serial = serial();
    for_each_loop("speaks_flannel_udp_both_ways", check);
}

fn check(extra: &[&str]) {
    let mut topo = topology();
    let args = topo.node_args(0, extra);
    topo.start_node(0, EXE, &args)
        .unwrap_or_else(|e| panic!("{e}"));

    // flanneld on B: bound to its public IP and port 8285.
    let flanneld = topo.hosts[1]
        .run(|| UdpSocket::bind("192.0.2.2:8285"))
        .expect("enter node b")
        .expect("bind 192.0.2.2:8285");
    flanneld
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let pod = topo.pods[0]
        .run(|| UdpSocket::bind("10.244.1.2:9001"))
        .expect("enter pod a")
        .expect("bind pod socket");
    pod.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");

    // B -> A: a raw IPv4/UDP packet from B's pod subnet as the whole datagram, to port 8285.
    let payload = b"hello from a flannel node";
    let builder = PacketBuilder::ipv4([10, 244, 2, 5], [10, 244, 1, 2], 64).udp(9000, 9001);
    let mut datagram = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut datagram, payload).expect("build");
    flanneld
        .send_to(&datagram, host_addr(0, 8285))
        .expect("send");
    let mut buf = [0u8; 2048];
    let (n, from) = pod
        .recv_from(&mut buf)
        .expect("the pod receives the inner packet");
    assert_eq!(&buf[..n], payload);
    assert_eq!(
        from,
        "10.244.2.5:9000".parse::<SocketAddr>().expect("literal")
    );

    // A -> B: the pod's packet arrives at flanneld's socket as exactly the inner IP packet,
    // from fustian's bound port, with one TTL decrement (the node's kernel route), not three.
    pod.send_to(b"reply from a pod", "10.244.2.5:9000")
        .expect("send");
    let (n, from) = flanneld
        .recv_from(&mut buf)
        .expect("flanneld receives the datagram");
    assert_eq!(
        from,
        host_addr(0, 8285),
        "sent from the bound address and port"
    );
    let packet = SlicedPacket::from_ip(&buf[..n]).expect("the payload is an IP packet");
    let Some(NetSlice::Ipv4(ip)) = &packet.net else {
        panic!("not IPv4: {packet:?}")
    };
    assert_eq!(
        usize::from(ip.header().total_len()),
        n,
        "payload is exactly the inner packet"
    );
    assert_eq!(ip.header().source_addr(), pod_addr(0, 0).ip());
    assert_eq!(
        ip.header().destination_addr(),
        std::net::Ipv4Addr::new(10, 244, 2, 5)
    );
    assert_eq!(ip.header().ttl(), 63);
    let Some(TransportSlice::Udp(udp)) = &packet.transport else {
        panic!("not UDP")
    };
    assert_eq!((udp.source_port(), udp.destination_port()), (9001, 9000));
    assert_eq!(udp.payload(), b"reply from a pod");
}
