//! IPv6: IPv6 pods over an IPv4 underlay, IPv4 pods over an IPv6 underlay, IPv6 over IPv6, and
//! dual-stack nodes with both underlays; fustian `vxlan` over IPv6 against a kernel `vxlan`
//! device programmed as flannel's IPv6 VTEP; hostile IPv6 inner packets.
//!
//! Addresses (inside the test's namespaces only): underlay 192.0.2.0/24 and 2001:db8::/64
//! (RFC 3849), pods 10.244.0.0/16 and fd00:10:244::/56 (RFC 4193).

use std::time::Duration;

use fustian::lab::{Family, LabBackend, Stack, Topology, pod_addr, pod_addr6};

use crate::common::{
    BULK, EXE, LOOPS, exchange_both_ways_at, for_each_loop, serial, skip, topology, wait_for,
};

/// Builds a topology with IPv6 and starts both nodes on `stack`.
fn start_stack(backend: LabBackend, stack: Stack, extra: &[&str]) -> Topology {
    let mut topo = topology();
    if let Err(e) = topo.add_ipv6() {
        panic!("netns test prerequisite missing or setup failed: {e}");
    }
    for i in 0..2 {
        let args = topo.node_args_stack(i, backend, stack, extra);
        if let Err(e) = topo.start_node(i, EXE, &args) {
            panic!("{e}");
        }
    }
    topo
}

/// Echo and a TCP transfer of `bulk` bytes each way with matching hashes, for each family of
/// the overlay; then the counters show the traffic and nothing dropped as spoofed.
fn exchange(topo: &Topology, stack: Stack, bulk: u64) {
    if stack.overlay.has_v4() {
        exchange_both_ways_at(topo, pod_addr, bulk);
    }
    if stack.overlay.has_v6() {
        exchange_both_ways_at(topo, pod_addr6, bulk);
    }
    let families = u64::from(stack.overlay.has_v4()) + u64::from(stack.overlay.has_v6());
    for i in 0..2 {
        let done = wait_for(Duration::from_secs(5), || {
            topo.counter(i, "tx_bytes") > families * bulk
                && topo.counter(i, "rx_bytes") > families * bulk
        });
        assert!(done, "node {i}: {:?}", topo.stats(i));
        // Each family went to the endpoint of its own underlay family, when there is one.
        let other = 1 - i;
        let mut subnets = Vec::new();
        if stack.overlay.has_v4() {
            subnets.push((fustian::lab::SUBNETS[other], false));
        }
        if stack.overlay.has_v6() {
            subnets.push((fustian::lab::IPV6_SUBNETS[other], true));
        }
        for (subnet, v6) in subnets {
            let ip: std::net::IpAddr = stack.endpoint(other, v6).parse().expect("literal");
            let endpoint = std::net::SocketAddr::new(ip, 8285);
            for dir in ["tx", "rx"] {
                let name =
                    format!("peer_{dir}_bytes{{subnet=\"{subnet}\",endpoint=\"{endpoint}\"}}");
                let n = topo.counter(i, &name);
                assert!(n > bulk, "node {i}: {name} = {n}: {:?}", topo.stats(i));
            }
        }
        for reason in [
            "drop_spoofed_source",
            "drop_not_local",
            "drop_unknown_sender",
            "drop_oversize",
        ] {
            assert_eq!(topo.counter(i, reason), 0, "node {i}: {reason}");
        }
    }
}

/// The subnet file says what flanneld's says for the stack.
fn check_subnet_file(topo: &Topology, stack: Stack) {
    let text = std::fs::read_to_string(topo.dir.path().join("node-0").join("subnet.env"))
        .expect("node 0 wrote its subnet file");
    let v4 = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n";
    let v6 = "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n";
    let want = match stack.overlay {
        Family::V4 => v4.to_owned(),
        Family::V6 => v6.to_owned(),
        Family::Dual => format!("{v4}{v6}"),
    };
    assert!(
        text.starts_with(&want),
        "subnet file:\n{text}\nwant first:\n{want}"
    );
    // udp: outer IP + UDP; the larger IPv6 header when any underlay address is IPv6.
    let overhead = if stack.underlay.has_v6() { 48 } else { 28 };
    assert!(
        text.contains(&format!("FLANNEL_MTU={}\n", 1500 - overhead)),
        "subnet file:\n{text}"
    );
}

/// Each stack over the loops and offloads that matter for it: IPv6 over IPv6 in the whole
/// matrix, the mixed ones on io_uring with offloads and on epoll without.
#[test]
fn ipv6_stacks_carry_traffic() {
    if skip("ipv6_stacks_carry_traffic") {
        return;
    }
    let _serial = serial();
    let v6 = Stack {
        overlay: Family::V6,
        underlay: Family::V6,
    };
    for_each_loop("ipv6_stacks_carry_traffic (6 over 6)", |extra| {
        let topo = start_stack(LabBackend::Udp, v6, extra);
        exchange(&topo, v6, BULK);
        check_subnet_file(&topo, v6);
    });
    let mixed = [
        Stack {
            overlay: Family::V6,
            underlay: Family::V4,
        },
        Stack {
            overlay: Family::V4,
            underlay: Family::V6,
        },
        Stack {
            overlay: Family::Dual,
            underlay: Family::Dual,
        },
    ];
    for stack in mixed {
        for extra in [LOOPS[1], LOOPS[6]] {
            eprintln!(
                "== ipv6_stacks_carry_traffic ({} over {}) with {}",
                stack.overlay.name(),
                stack.underlay.name(),
                extra.join(" ")
            );
            let topo = start_stack(LabBackend::Udp, stack, extra);
            exchange(&topo, stack, BULK);
            check_subnet_file(&topo, stack);
        }
    }
}
