//! What moving a packet between user space and the kernel costs, per packet and per byte.
//!
//! - `memcpy`: the floor, the same sizes copied in user space.
//! - `udp_send`: loopback, a receiver thread draining: `sendto` one per syscall, `sendmmsg` of
//!   64, one `sendmsg` with `UDP_SEGMENT` (GSO) carrying 44 segments, and 64 `SendMsg` through
//!   io_uring with one `io_uring_enter`.
//! - `udp_recv`: loopback, a sender thread blasting: `recvmmsg` of 64, and `recvmsg` with
//!   `UDP_GRO` against a GSO sender.
//! - `tun`: needs root; the bench moves itself into a new network namespace, makes a TUN
//!   device there and measures `write` (packets to a local UDP socket) and `read` (packets
//!   the kernel routes into the device), one packet per syscall and 64 at a time through plain
//!   syscalls and through io_uring. Without root it says so and skips these. Offload super-packets through the TUN device (vnet header) are not built yet.
#![allow(unsafe_code, missing_docs, clippy::undocumented_unsafe_blocks)]
#![allow(clippy::multiple_unsafe_ops_per_block)]
#![allow(clippy::cast_possible_truncation)]

use std::hint::black_box;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const SEG: usize = 1400;
const GSO_SEGS: usize = 44;
/// The datagram flannel's udp encapsulation sends for 64 bytes of UDP payload: the inner packet,
/// 64 + 28 header bytes.
const SMALL: usize = 92;

fn memcpy(c: &mut Criterion) {
    let mut g = c.benchmark_group("memcpy");
    // Source and destination share one allocation, 4 KiB-aligned, so that where the
    // destination starts relative to the source's page offset is chosen, not left to the
    // allocator: `same_offset` copies between equal page offsets, `offset_N` puts the
    // destination N bytes further into its page than the source. On the AMD EPYC measured in
    // BENCHMARKS.md a 64 KiB copy (glibc's `rep movsb` path, above 2,112 bytes) runs at about
    // 1.7 GiB/s instead of 26-29 when the destination is 1-63 bytes ahead (`offset_16`), as
    // two `vec!`s of 64 KiB happen to be (`two_vecs`, which prints where they landed).
    for size in [64usize, 1400, 65536] {
        for (name, shift) in [
            ("same_offset", 0usize),
            ("offset_16", 16),
            ("offset_64", 64),
            ("offset_2048", 2048),
        ] {
            let pages = size.div_ceil(4096) * 4096;
            let mut arena = vec![7u8; 2 * pages + 3 * 4096];
            let base = arena.as_ptr() as usize;
            let start = (4096 - base % 4096) % 4096;
            let dst_at = start + pages + 4096 + shift;
            let (head, tail) = arena.split_at_mut(dst_at);
            let src = &head[start..start + size];
            let dst = &mut tail[..size];
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_with_input(BenchmarkId::new(name, size), &size, |b, _| {
                b.iter(|| {
                    dst.copy_from_slice(black_box(src));
                    black_box(&dst);
                });
            });
        }
    }
    // Two separate heap blocks, as a plain `vec!` pair gets them.
    for size in [64usize, 1400, 65536] {
        let src = vec![7u8; size];
        let mut dst = vec![0u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("two_vecs", size), &size, |b, _| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&dst);
            });
        });
        eprintln!(
            "memcpy/two_vecs/{size}: source at page offset {}, destination at {}",
            src.as_ptr() as usize % 4096,
            dst.as_ptr() as usize % 4096
        );
    }
    g.finish();
}

/// A receiver on loopback drained by a thread until dropped.
struct Sink {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    fn new() -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        set_int(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            16 << 20,
        );
        let addr = sock.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                let _ = sock.recv(&mut buf);
            }
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn set_int(fd: i32, level: i32, name: i32, value: i32) -> bool {
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            size_of::<i32>() as u32,
        ) == 0
    }
}

fn sockaddr(addr: std::net::SocketAddr) -> libc::sockaddr_in {
    let std::net::SocketAddr::V4(a) = addr else {
        panic!("IPv4 only")
    };
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

fn sendmmsg(fd: i32, to: &libc::sockaddr_in, data: &[u8], n: usize) -> usize {
    let mut iovs: Vec<libc::iovec> = (0..n)
        .map(|_| libc::iovec {
            iov_base: data.as_ptr().cast_mut().cast(),
            iov_len: data.len(),
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (to as *const libc::sockaddr_in).cast_mut().cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as u32, 0) };
    r.max(0) as usize
}

/// One `sendmsg` carrying `data` cut into `seg`-byte datagrams by the kernel (UDP_SEGMENT).
fn send_gso(fd: i32, to: &libc::sockaddr_in, data: &[u8], seg: u16) -> isize {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    let space = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (to as *const libc::sockaddr_in).cast_mut().cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), seg);
        libc::sendmsg(fd, &msg, 0)
    }
}

fn udp_send(c: &mut Criterion) {
    let sink = Sink::new();
    let to = sockaddr(sink.addr);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let fd = sock.as_raw_fd();
    set_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 16 << 20);
    let data = vec![0x5au8; SEG];
    let big = vec![0x5au8; SEG * GSO_SEGS];
    let mut g = c.benchmark_group("udp_send");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sendto_1400", |b| {
        b.iter(|| sock.send_to(black_box(&data), sink.addr).is_ok());
    });
    g.throughput(Throughput::Elements(64));
    g.bench_function("sendmmsg_64x1400", |b| {
        b.iter(|| sendmmsg(fd, &to, &data, 64))
    });
    g.throughput(Throughput::Elements(GSO_SEGS as u64));
    if send_gso(fd, &to, &big, SEG as u16) > 0 {
        g.bench_function("gso_44x1400", |b| {
            b.iter(|| send_gso(fd, &to, &big, SEG as u16))
        });
    } else {
        eprintln!("udp_send/gso: UDP_SEGMENT unsupported here (Linux 4.18+), skipped");
    }
    // Small datagrams (the lab's 64-byte flood in the udp encapsulation): one per
    // message, or one `UDP_SEGMENT` message for the run, as fustian's send batches do.
    let small = vec![0x5au8; SMALL];
    let small_run = vec![0x5au8; SMALL * 64];
    g.throughput(Throughput::Elements(64));
    g.bench_function("sendmmsg_64x92", |b| {
        b.iter(|| sendmmsg(fd, &to, &small, 64))
    });
    if send_gso(fd, &to, &small_run, SMALL as u16) > 0 {
        g.bench_function("gso_64x92", |b| {
            b.iter(|| send_gso(fd, &to, &small_run, SMALL as u16))
        });
    }
    g.bench_function("io_uring_64x1400", |b| {
        let mut ring = io_uring::IoUring::new(128).expect("io_uring");
        let mut iov = libc::iovec {
            iov_base: data.as_ptr().cast_mut().cast(),
            iov_len: SEG,
        };
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&raw const to).cast_mut().cast();
        msg.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        b.iter(|| {
            for _ in 0..64 {
                let e =
                    io_uring::opcode::SendMsg::new(io_uring::types::Fd(fd), &raw const msg).build();
                unsafe { ring.submission().push(&e).expect("room") };
            }
            ring.submit_and_wait(64).expect("submit");
            ring.completion().count()
        });
    });
    g.finish();
    drop(sink);
}

/// A sender thread blasting `payload`-sized datagrams (GSO when `gso` is set) until dropped.
fn blaster(to: std::net::SocketAddr, gso: bool) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    let handle = std::thread::spawn(move || {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let fd = sock.as_raw_fd();
        let addr = sockaddr(to);
        let data = vec![0x5au8; SEG];
        let big = vec![0x5au8; SEG * GSO_SEGS];
        while !s.load(Ordering::Relaxed) {
            if gso {
                send_gso(fd, &addr, &big, SEG as u16);
            } else {
                sendmmsg(fd, &addr, &data, 64);
            }
        }
    });
    (stop, handle)
}

fn udp_recv(c: &mut Criterion) {
    let mut g = c.benchmark_group("udp_recv");
    g.throughput(Throughput::Bytes((64 * SEG) as u64));
    {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        set_int(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            16 << 20,
        );
        let (stop, h) = blaster(sock.local_addr().expect("addr"), false);
        let fd = sock.as_raw_fd();
        let mut bufs = vec![0u8; 64 * 2048];
        g.bench_function("recvmmsg_64x1400", |b| {
            b.iter(|| {
                let mut got = 0;
                while got < 64 {
                    let mut iovs: Vec<libc::iovec> = bufs
                        .chunks_mut(2048)
                        .map(|c| libc::iovec {
                            iov_base: c.as_mut_ptr().cast(),
                            iov_len: 2048,
                        })
                        .collect();
                    let mut hdrs: Vec<libc::mmsghdr> = iovs
                        .iter_mut()
                        .map(|iov| {
                            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                            h.msg_hdr.msg_iov = iov;
                            h.msg_hdr.msg_iovlen = 1;
                            h
                        })
                        .collect();
                    let want = (64 - got) as u32;
                    let n = unsafe {
                        libc::recvmmsg(fd, hdrs.as_mut_ptr(), want, 0, std::ptr::null_mut())
                    };
                    got += n.max(0) as usize;
                }
                got
            });
        });
        stop.store(true, Ordering::Relaxed);
        let _ = h.join();
    }
    {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        set_int(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            16 << 20,
        );
        if set_int(sock.as_raw_fd(), libc::SOL_UDP, libc::UDP_GRO, 1) {
            let (stop, h) = blaster(sock.local_addr().expect("addr"), true);
            let mut buf = vec![0u8; 65536];
            g.bench_function("gro_64x1400", |b| {
                b.iter(|| {
                    let mut bytes = 0;
                    while bytes < 64 * SEG {
                        bytes += sock.recv(&mut buf).unwrap_or(0);
                    }
                    bytes
                });
            });
            stop.store(true, Ordering::Relaxed);
            let _ = h.join();
        } else {
            eprintln!("udp_recv/gro: UDP_GRO unsupported here (Linux 5.0+), skipped");
        }
    }
    g.finish();
}

/// Makes a TUN device `bench0` (10.9.0.1/24, up) in a new network namespace of this process.
fn tun_device() -> Result<std::fs::File, String> {
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (a network namespace and a TUN device)".into());
    }
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        ));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| format!("/dev/net/tun: {e}"))?;
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"bench0") {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as i16;
    if unsafe { libc::ioctl(file.as_raw_fd(), 0x4004_54ca, &mut req) } != 0 {
        return Err(format!("TUNSETIFF: {}", std::io::Error::last_os_error()));
    }
    for args in [
        &["link", "set", "lo", "up"][..],
        &["addr", "add", "10.9.0.1/24", "dev", "bench0"],
        &["link", "set", "bench0", "up"],
    ] {
        let ok = std::process::Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!(
                "ip {} failed (is iproute2 installed?)",
                args.join(" ")
            ));
        }
    }
    Ok(file)
}

/// An IPv4/UDP packet from 10.9.0.2:9 to 10.9.0.1:`port` with `payload` bytes.
fn udp_packet(port: u16, payload: usize) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ipv4([10, 9, 0, 2], [10, 9, 0, 1], 64).udp(9, port);
    let mut out = Vec::with_capacity(builder.size(payload));
    builder.write(&mut out, &vec![0u8; payload]).expect("build");
    out
}

/// Set once `tun` made its network namespace.
static IN_BENCH_NAMESPACE: AtomicBool = AtomicBool::new(false);

fn tun(c: &mut Criterion) {
    let tun = match tun_device() {
        Ok(t) => {
            IN_BENCH_NAMESPACE.store(true, Ordering::Relaxed);
            t
        }
        Err(why) => {
            eprintln!("tun benches skipped: {why}");
            return;
        }
    };
    let fd = tun.as_raw_fd();
    let sink = UdpSocket::bind("10.9.0.1:0").expect("bind in the bench namespace");
    set_int(
        sink.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        64 << 20,
    );
    sink.set_nonblocking(true).expect("nonblocking");
    let port = sink.local_addr().expect("addr").port();
    let packet = udp_packet(port, SEG - 28);
    let mut g = c.benchmark_group("tun");
    g.throughput(Throughput::Bytes(packet.len() as u64));
    g.bench_function("write_1400", |b| {
        let mut drain = vec![0u8; 2048];
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                unsafe { libc::write(fd, packet.as_ptr().cast(), packet.len()) };
                if i % 256 == 0 {
                    while sink.recv(&mut drain).is_ok() {}
                }
            }
            let t = start.elapsed();
            while sink.recv(&mut drain).is_ok() {}
            t
        });
    });
    // 64 writes: one syscall each, against 64 WRITE operations in one io_uring submission.
    g.throughput(Throughput::Elements(64));
    g.bench_function("write_64_syscalls", |b| {
        let mut drain = vec![0u8; 2048];
        b.iter(|| {
            for _ in 0..64 {
                unsafe { libc::write(fd, packet.as_ptr().cast(), packet.len()) };
            }
            while sink.recv(&mut drain).is_ok() {}
        });
    });
    g.bench_function("write_64_io_uring", |b| {
        let mut ring = io_uring::IoUring::new(128).expect("io_uring");
        let mut drain = vec![0u8; 2048];
        b.iter(|| {
            for _ in 0..64 {
                let e = io_uring::opcode::Write::new(
                    io_uring::types::Fd(fd),
                    packet.as_ptr(),
                    packet.len() as u32,
                )
                .build();
                unsafe { ring.submission().push(&e).expect("room") };
            }
            ring.submit_and_wait(64).expect("submit");
            let n = ring.completion().count();
            while sink.recv(&mut drain).is_ok() {}
            n
        });
    });
    g.throughput(Throughput::Bytes(packet.len() as u64));
    // Reads: packets to 10.9.0.2 are routed into the device; a sender thread keeps it fed.
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    let feeder = std::thread::spawn(move || {
        let sock = UdpSocket::bind("10.9.0.1:0").expect("bind");
        let data = vec![0u8; SEG - 28];
        while !s.load(Ordering::Relaxed) {
            let _ = sock.send_to(&data, "10.9.0.2:9");
        }
    });
    g.bench_function("read_1400", |b| {
        let mut buf = vec![0u8; 2048];
        b.iter(|| unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) });
    });
    g.throughput(Throughput::Elements(64));
    g.bench_function("read_64_syscalls", |b| {
        let mut buf = vec![0u8; 2048];
        b.iter(|| {
            for _ in 0..64 {
                unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            }
        });
    });
    // io_uring reads want a non-blocking fd: a read with nothing queued arms the ring's poll
    // instead of blocking a kernel worker thread.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    g.bench_function("read_64_io_uring", |b| {
        let mut ring = io_uring::IoUring::new(128).expect("io_uring");
        let mut bufs = vec![0u8; 64 * 2048];
        b.iter(|| {
            for chunk in bufs.chunks_mut(2048) {
                let e = io_uring::opcode::Read::new(
                    io_uring::types::Fd(fd),
                    chunk.as_mut_ptr(),
                    chunk.len() as u32,
                )
                .build();
                unsafe { ring.submission().push(&e).expect("room") };
            }
            ring.submit_and_wait(64).expect("submit");
            ring.completion().count()
        });
    });
    stop.store(true, Ordering::Relaxed);
    let _ = feeder.join();
    g.finish();
}

/// Opens `bench1` (10.9.1.1/24) with `IFF_VNET_HDR` and TSO/USO, in the namespace `tun`
/// already made; returns the device and whether USO was granted.
fn tun_offload_device() -> Result<(std::fs::File, bool), String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| format!("/dev/net/tun: {e}"))?;
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"bench1") {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    if unsafe { libc::ioctl(file.as_raw_fd(), 0x4004_54ca, &mut req) } != 0 {
        return Err(format!("TUNSETIFF: {}", std::io::Error::last_os_error()));
    }
    // TUNSETOFFLOAD: CSUM | TSO4 | TSO6, then USO4 | USO6 (Linux 6.2).
    let tso: libc::c_ulong = 0x01 | 0x02 | 0x04;
    let uso = unsafe { libc::ioctl(file.as_raw_fd(), 0x4004_54d0, tso | 0x20 | 0x40) } == 0;
    if !uso && unsafe { libc::ioctl(file.as_raw_fd(), 0x4004_54d0, tso) } != 0 {
        return Err(format!(
            "TUNSETOFFLOAD: {}",
            std::io::Error::last_os_error()
        ));
    }
    for args in [
        &["addr", "add", "10.9.1.1/24", "dev", "bench1"][..],
        &["link", "set", "bench1", "up"],
    ] {
        let ok = std::process::Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!("ip {} failed", args.join(" ")));
        }
    }
    Ok((file, uso))
}

/// Super-packets through TUN with offloads, against the same bytes as MTU-sized packets: one
/// 64 KiB TCP write with a virtio-net header (GSO_TCPV4) and, where the device has USO, one
/// read of a UDP super-packet that a `UDP_SEGMENT` send routed into it.
fn tun_offload(c: &mut Criterion) {
    // Only inside the namespace `tun` made (which needs root); never on the host.
    if !IN_BENCH_NAMESPACE.load(Ordering::Relaxed) {
        eprintln!("tun_offload benches skipped: needs root (runs in the `tun` benches' namespace)");
        return;
    }
    let (tun, uso) = match tun_offload_device() {
        Ok(t) => t,
        Err(why) => {
            eprintln!("tun_offload benches skipped: {why}");
            return;
        }
    };
    let fd = tun.as_raw_fd();
    // A 44-segment TCP super-packet to 10.9.1.99 (not local, not forwarded: dropped by the
    // stack after the write, as the plain packets below are).
    let payload = vec![0u8; GSO_SEGS * 1448];
    let builder = etherparse::PacketBuilder::ipv4([10, 9, 1, 2], [10, 9, 1, 99], 64)
        .tcp(9, 9, 1, 512)
        .ack(1);
    let mut packet = Vec::new();
    builder.write(&mut packet, &payload).expect("build");
    // virtio_net_hdr: NEEDS_CSUM, GSO_TCPV4, hdr_len 40, gso_size 1448, csum 20/16.
    let mut vnet = [0u8; 10];
    vnet[0] = 1;
    vnet[1] = 1;
    vnet[2..4].copy_from_slice(&40u16.to_ne_bytes());
    vnet[4..6].copy_from_slice(&1448u16.to_ne_bytes());
    vnet[6..8].copy_from_slice(&20u16.to_ne_bytes());
    vnet[8..10].copy_from_slice(&16u16.to_ne_bytes());
    let mut g = c.benchmark_group("tun_offload");
    g.throughput(Throughput::Bytes(packet.len() as u64));
    g.bench_function("write_super_tcp_44x1448", |b| {
        let iov = [
            libc::iovec {
                iov_base: vnet.as_ptr() as *mut _,
                iov_len: vnet.len(),
            },
            libc::iovec {
                iov_base: packet.as_ptr() as *mut _,
                iov_len: packet.len(),
            },
        ];
        b.iter(|| unsafe { libc::writev(fd, iov.as_ptr(), 2) });
    });
    // The same bytes as 44 plain packets, one write each (a zero virtio header in front).
    let mut plain = Vec::new();
    etherparse::PacketBuilder::ipv4([10, 9, 1, 2], [10, 9, 1, 99], 64)
        .tcp(9, 9, 1, 512)
        .ack(1)
        .write(&mut plain, &payload[..1448])
        .expect("build");
    let none = [0u8; 10];
    g.bench_function("write_plain_44x1448", |b| {
        let iov = [
            libc::iovec {
                iov_base: none.as_ptr() as *mut _,
                iov_len: none.len(),
            },
            libc::iovec {
                iov_base: plain.as_ptr() as *mut _,
                iov_len: plain.len(),
            },
        ];
        b.iter(|| {
            for _ in 0..GSO_SEGS {
                unsafe { libc::writev(fd, iov.as_ptr(), 2) };
            }
        });
    });
    if uso {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let feeder = std::thread::spawn(move || {
            let sock = UdpSocket::bind("10.9.1.1:0").expect("bind");
            let to = sockaddr("10.9.1.2:9".parse().expect("literal"));
            let data = vec![0u8; GSO_SEGS * (SEG - 28)];
            while !s.load(Ordering::Relaxed) {
                send_gso(sock.as_raw_fd(), &to, &data, (SEG - 28) as u16);
            }
        });
        g.throughput(Throughput::Bytes((GSO_SEGS * (SEG - 28)) as u64));
        g.bench_function("read_super_udp_44x1372", |b| {
            let mut buf = vec![0u8; 70_000];
            b.iter(|| unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) });
        });
        stop.store(true, Ordering::Relaxed);
        let _ = feeder.join();
    } else {
        eprintln!("tun_offload/read_super_udp: the TUN device has no USO (Linux 6.2+), skipped");
    }
    g.finish();
}

criterion_group!(benches, memcpy, udp_send, udp_recv, tun, tun_offload);
criterion_main!(benches);
