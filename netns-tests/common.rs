//! Shared helpers for the netns tests.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fustian::lab::Topology;

/// The fustian binary under test.
pub(crate) const EXE: &str = env!("CARGO_BIN_EXE_fustian");

/// Returns a namespace prefix unique to this test process and call (at most 8 characters).
pub(crate) fn prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Base 36 keeps it within 8 characters: "t" + 3 digits + "x" + up to 3 digits (46,656
    // topologies per test process).
    format!(
        "t{}x{}",
        base36(std::process::id() % 46_656),
        base36(NEXT.fetch_add(1, Ordering::Relaxed) % 46_656)
    )
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ASCII digits")
}

/// Returns true (after saying so) when the environment asks to skip netns tests.
pub(crate) fn skip(test: &str) -> bool {
    if std::env::var_os("FUSTIAN_SKIP_NETNS").is_some() {
        eprintln!("SKIPPED {test}: FUSTIAN_SKIP_NETNS is set");
        return true;
    }
    false
}

/// Builds a topology or fails naming the missing prerequisite.
pub(crate) fn topology() -> Topology {
    match Topology::build(&prefix()) {
        Ok(t) => t,
        Err(e) => panic!("netns test prerequisite missing or setup failed: {e}"),
    }
}

/// Starts fustian on both nodes with `extra` flags.
pub(crate) fn start_both(topo: &mut Topology, extra: &[&str]) {
    for i in 0..2 {
        let args = topo.node_args(i, extra);
        if let Err(e) = topo.start_node(i, EXE, &args) {
            panic!("{e}");
        }
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub(crate) fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Bytes of each bulk transfer.
pub(crate) const BULK: u64 = 100 * 1024 * 1024;

/// Runs UDP echo both ways (50 round trips each) and a 100 MiB TCP transfer each way between
/// the pods, asserting every reply arrived and every stream hashed the same on arrival.
pub(crate) fn exchange_both_ways(topo: &Topology) {
    exchange_both_ways_at(topo, fustian::lab::pod_addr, BULK);
}

/// As [`exchange_both_ways`], between the pod addresses `pod_addr` gives (IPv4 or IPv6), with
/// `bulk` bytes each way.
pub(crate) fn exchange_both_ways_at(
    topo: &Topology,
    pod_addr: fn(usize, u16) -> std::net::SocketAddr,
    bulk: u64,
) {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use fustian::lab::traffic::{Amount, tcp_bulk, udp_ping_pong};

    let stop = Arc::new(AtomicBool::new(false));
    for (from, to) in [(0, 1), (1, 0)] {
        let lat = udp_ping_pong(&topo.pods[from], &topo.pods[to], pod_addr(to, 7), 50, &stop)
            .expect("ping-pong runs");
        assert_eq!(
            lat.replies,
            50,
            "echo {from}->{to}: {lat:?}\nnode 0: {:?}\nnode 1: {:?}",
            topo.stats(0),
            topo.stats(1)
        );
    }
    for (from, to) in [(0, 1), (1, 0)] {
        let r = tcp_bulk(
            &topo.pods[from],
            &topo.pods[to],
            pod_addr(to, 5201),
            Amount::Bytes(bulk),
            true,
            &stop,
        )
        .expect("bulk transfer runs");
        assert_eq!(r.sent, bulk);
        assert!(r.sent_hash.is_some());
        assert!(r.intact(), "{from}->{to}: {r:?}");
    }
}

/// Every event loop with one and with two workers: `--io uring` (io_uring, multishot
/// receive with a provided-buffer ring), the same with `--no-multishot` (single-shot receives,
/// what kernels before 6.0 get), `--io epoll` (the old-kernel path), and `--threads 1` (one
/// TUN queue) against `--threads 2` (multi-queue TUN, `SO_REUSEPORT` sockets).
///
/// Offloads (TUN TSO with virtio-net headers, UDP GSO and GRO) are on by default in each; two
/// more entries run each loop with `--offload off`, the path of kernels without them.
pub(crate) const LOOPS: [&[&str]; 7] = [
    &["--io", "uring", "--threads", "1"],
    &["--io", "uring", "--threads", "2"],
    &["--io", "uring", "--threads", "2", "--no-multishot"],
    &["--io", "uring", "--threads", "1", "--offload", "off"],
    &["--io", "epoll", "--threads", "1"],
    &["--io", "epoll", "--threads", "2"],
    &["--io", "epoll", "--threads", "2", "--offload", "off"],
];

/// Runs `body` once per entry of [`LOOPS`], saying which one runs.
pub(crate) fn for_each_loop(test: &str, mut body: impl FnMut(&[&str])) {
    for extra in LOOPS {
        eprintln!("== {test} with {}", extra.join(" "));
        body(extra);
    }
}

/// Serialises the netns tests: they saturate the two CPUs of a small machine, and timing
/// (a restart within a second, a soak's memory samples) is only meaningful one at a time.
pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `op` with an etcd client connected to `endpoint` from inside namespace `ns`. `None`
/// when etcd cannot be reached.
#[cfg(feature = "etcd")]
pub(crate) fn with_etcd_in<T: Send + 'static>(
    ns: &fustian::lab::netns::Netns,
    endpoint: &str,
    op: impl FnOnce(&mut etcd_client::Client, &tokio::runtime::Runtime) -> T + Send + 'static,
) -> Option<T> {
    let endpoint = endpoint.to_owned();
    ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5));
        let mut c = rt
            .block_on(etcd_client::Client::connect([endpoint], Some(options)))
            .ok()?;
        Some(op(&mut c, &rt))
    })
    .ok()
    .flatten()
}

/// Runs `iptables -w 5 args` in namespace `ns`; returns (success, stdout).
pub(crate) fn iptables(ns: &fustian::lab::netns::Netns, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name(), "iptables", "-w", "5"])
        .args(args)
        .output()
        .expect("ip netns exec iptables runs (iptables installed?)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Runs `nft args` in namespace `ns`; returns (success, stdout).
pub(crate) fn nft(ns: &fustian::lab::netns::Netns, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name(), "nft"])
        .args(args)
        .output()
        .expect("ip netns exec nft runs (nftables installed?)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Deletes the jump to flanneld's masquerade chain in `POSTROUTING` (`-C` in place of `-D`
/// checks it).
pub(crate) const MASQ_JUMP: [&str; 10] = [
    "-t",
    "nat",
    "-D",
    "POSTROUTING",
    "-m",
    "comment",
    "--comment",
    "flanneld masq",
    "-j",
    "FLANNEL-POSTRTG",
];

/// Reads the integer socket option `level`/`name` of `sock`.
#[allow(unsafe_code)]
pub(crate) fn int_sockopt(sock: &std::net::UdpSocket, level: i32, name: i32) -> i32 {
    use std::os::fd::AsRawFd;
    let mut value: libc::c_int = 0;
    let mut len = libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("small");
    // SAFETY: `value` and `len` are valid for writes for the duration of the call.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    assert_eq!(
        r,
        0,
        "getsockopt({level}, {name}): {}",
        std::io::Error::last_os_error()
    );
    value
}

/// Sets the integer socket option `level`/`name` of `sock` to `value`.
#[allow(unsafe_code)]
pub(crate) fn set_int_sockopt(sock: &std::net::UdpSocket, level: i32, name: i32, value: i32) {
    use std::os::fd::AsRawFd;
    let len = libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("small");
    // SAFETY: `value` is a c_int valid for the duration of the call.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            len,
        )
    };
    assert_eq!(
        r,
        0,
        "setsockopt({level}, {name}): {}",
        std::io::Error::last_os_error()
    );
}

/// Sends signal `sig` to process `pid` (one this test started).
#[allow(unsafe_code)]
pub(crate) fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("a pid");
    // SAFETY: kill(2) takes plain integers.
    let r = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// Returns a pipe (read end, write end) whose buffer holds `size` bytes.
#[allow(unsafe_code)]
pub(crate) fn small_pipe(size: libc::c_int) -> (std::io::PipeReader, std::io::PipeWriter) {
    use std::os::fd::AsRawFd;
    let (read, write) = std::io::pipe().expect("pipe");
    // SAFETY: F_SETPIPE_SZ takes an integer and acts on the descriptor alone.
    let set = unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
    assert_eq!(
        set,
        size,
        "F_SETPIPE_SZ: {}",
        std::io::Error::last_os_error()
    );
    (read, write)
}

/// Returns how many bytes wait in the pipe behind `read`.
#[allow(unsafe_code)]
pub(crate) fn pipe_queued(read: &std::io::PipeReader) -> usize {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which outlives the call.
    let r = unsafe { libc::ioctl(read.as_raw_fd(), libc::FIONREAD, &raw mut n) };
    assert_eq!(r, 0, "FIONREAD: {}", std::io::Error::last_os_error());
    usize::try_from(n).unwrap_or(0)
}

/// Sets its flag when dropped, on the way out of a panic as well: threads of a scope that
/// run until the flag is set then end, and the scope reports the panic instead of waiting.
#[cfg(feature = "etcd")]
pub(crate) struct SetOnDrop<'a>(pub(crate) &'a std::sync::atomic::AtomicBool);

#[cfg(feature = "etcd")]
impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
