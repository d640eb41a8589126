//! The lab's own traffic: a TCP bulk transfer with a content hash, and a UDP ping-pong.
//!
//! Both ends run on threads that entered a namespace ([`super::netns::Netns::spawn`]), so no
//! external tool is needed. The bulk sender writes a deterministic pseudo-random stream; with
//! `verify` both ends hash what they sent and received (SHA-256) so corruption, loss or
//! reordering anywhere in the path shows up as a mismatch.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::netns::Netns;
use crate::error::Error;

/// How much a bulk transfer sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    /// Exactly this many bytes.
    Bytes(u64),
    /// As much as fits in this time.
    Duration(Duration),
}

/// The outcome of one bulk transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkResult {
    /// Bytes the sender wrote.
    pub sent: u64,
    /// Bytes the receiver read.
    pub received: u64,
    /// Receiver-side time from accept to end of stream.
    pub elapsed: Duration,
    /// SHA-256 of the sent stream, when verifying.
    pub sent_hash: Option<[u8; 32]>,
    /// SHA-256 of the received stream, when verifying.
    pub received_hash: Option<[u8; 32]>,
}

impl BulkResult {
    /// Returns the goodput in Gbit/s.
    pub fn gbps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.received as f64 * 8.0 / secs / 1e9
        } else {
            0.0
        }
    }

    /// Returns true when every byte arrived and (when verifying) the hashes match.
    pub fn intact(&self) -> bool {
        self.sent == self.received && self.sent_hash == self.received_hash
    }
}

const CHUNK: usize = 128 * 1024;
/// Pattern period: a prime number of bytes, so the stream does not repeat on a round boundary.
const PERIOD: usize = 1_048_573;

fn pattern() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut p = vec![0u8; PERIOD + CHUNK];
    for b in &mut p[..PERIOD] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x.to_le_bytes()[0];
    }
    p.copy_within(..CHUNK, PERIOD);
    p
}

fn io_err(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Lab(format!("{what}: {e}"))
}

/// Sends a TCP stream from namespace `from` to `to_addr`, listened on in namespace `to`.
///
/// # Errors
///
/// [`Error::Lab`] when a socket fails, a peer stalls for 10 s, or `stop` is set.
pub fn tcp_bulk(
    from: &Netns,
    to: &Netns,
    to_addr: SocketAddr,
    amount: Amount,
    verify: bool,
    stop: &Arc<AtomicBool>,
) -> Result<BulkResult, Error> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let stop_rx = Arc::clone(stop);
    let server = to.spawn(
        move || -> Result<(u64, Duration, Option<[u8; 32]>), Error> {
            let listener = TcpListener::bind(to_addr).map_err(io_err("listen"))?;
            listener.set_nonblocking(true).map_err(io_err("listen"))?;
            let _ = ready_tx.send(());
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut stream = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline || stop_rx.load(Ordering::Relaxed) {
                            return Err(Error::Lab("no connection arrived".into()));
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(io_err("accept")(e)),
                }
            };
            let start = Instant::now();
            stream.set_nonblocking(false).map_err(io_err("accept"))?;
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(io_err("accept"))?;
            let mut hasher = verify.then(Sha256::new);
            let mut buf = vec![0u8; CHUNK];
            let mut received = 0u64;
            loop {
                let n = stream.read(&mut buf).map_err(io_err("receive"))?;
                if n == 0 {
                    break;
                }
                if let Some(h) = hasher.as_mut() {
                    h.update(&buf[..n]);
                }
                received += n as u64;
                if stop_rx.load(Ordering::Relaxed) {
                    return Err(Error::Lab("interrupted".into()));
                }
            }
            Ok((
                received,
                start.elapsed(),
                hasher.map(|h| h.finalize().into()),
            ))
        },
    )?;
    match ready_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(()) => {}
        // It ended before it listened: its own error says why.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            return Err(match server.join() {
                Ok(Err(e)) => e,
                _ => Error::Lab("the receiver stopped before it listened".into()),
            });
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            return Err(Error::Lab("the receiver did not start within 30 s".into()));
        }
    }

    let stop_tx = Arc::clone(stop);
    let client = from.spawn(move || -> Result<(u64, Option<[u8; 32]>), Error> {
        let pat = pattern();
        let mut stream = TcpStream::connect_timeout(&to_addr, Duration::from_secs(5))
            .map_err(io_err("connect"))?;
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .map_err(io_err("connect"))?;
        let mut hasher = verify.then(Sha256::new);
        let start = Instant::now();
        let mut sent = 0u64;
        loop {
            let want = match amount {
                Amount::Bytes(total) => {
                    if sent >= total {
                        break;
                    }
                    usize::try_from((total - sent).min(CHUNK as u64)).unwrap_or(CHUNK)
                }
                Amount::Duration(d) => {
                    if start.elapsed() >= d {
                        break;
                    }
                    CHUNK
                }
            };
            if stop_tx.load(Ordering::Relaxed) {
                return Err(Error::Lab("interrupted".into()));
            }
            let off = usize::try_from(sent % PERIOD as u64).unwrap_or(0);
            let data = &pat[off..off + want];
            stream.write_all(data).map_err(io_err("send"))?;
            if let Some(h) = hasher.as_mut() {
                h.update(data);
            }
            sent += want as u64;
        }
        stream
            .shutdown(Shutdown::Write)
            .map_err(io_err("shutdown"))?;
        Ok((sent, hasher.map(|h| h.finalize().into())))
    })?;
    let client = client
        .join()
        .map_err(|_| Error::Lab("the sender panicked".into()))?;
    let server = server
        .join()
        .map_err(|_| Error::Lab("the receiver panicked".into()))?;
    let (sent, sent_hash) = client?;
    let (received, elapsed, received_hash) = server?;
    Ok(BulkResult {
        sent,
        received,
        elapsed,
        sent_hash,
        received_hash,
    })
}

/// Round-trip times of a ping-pong run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latency {
    /// Replies received.
    pub replies: usize,
    /// Requests that got no reply within a second.
    pub lost: usize,
    /// Median round trip.
    pub p50: Duration,
    /// 99th percentile round trip.
    pub p99: Duration,
}

/// Sends `count` 64-byte UDP requests from `from` to an echo responder at `to_addr` in `to`,
/// one at a time, and measures each round trip.
///
/// # Errors
///
/// [`Error::Lab`] when a socket fails or `stop` is set.
pub fn udp_ping_pong(
    from: &Netns,
    to: &Netns,
    to_addr: SocketAddr,
    count: u32,
    stop: &Arc<AtomicBool>,
) -> Result<Latency, Error> {
    let done = Arc::new(AtomicBool::new(false));
    let done_srv = Arc::clone(&done);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = to.spawn(move || -> Result<(), Error> {
        let sock = UdpSocket::bind(to_addr).map_err(io_err("echo bind"))?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(io_err("echo"))?;
        let _ = ready_tx.send(());
        let mut buf = [0u8; 2048];
        while !done_srv.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], peer);
            }
        }
        Ok(())
    })?;
    match ready_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(()) => {}
        // It ended before it listened: its own error says why.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            return Err(match server.join() {
                Ok(Err(e)) => e,
                _ => Error::Lab("the echo responder stopped before it listened".into()),
            });
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            return Err(Error::Lab(
                "the echo responder did not start within 30 s".into(),
            ));
        }
    }
    let stop_c = Arc::clone(stop);
    let client = from.spawn(move || -> Result<(Vec<Duration>, usize), Error> {
        let bind: SocketAddr = if to_addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .map_err(|_| Error::Lab("bad wildcard".into()))?;
        let sock = UdpSocket::bind(bind).map_err(io_err("ping bind"))?;
        sock.connect(to_addr).map_err(io_err("ping connect"))?;
        sock.set_read_timeout(Some(Duration::from_secs(1)))
            .map_err(io_err("ping"))?;
        let mut rtts = Vec::with_capacity(count as usize);
        let mut lost = 0;
        let mut req = [0u8; 64];
        let mut buf = [0u8; 2048];
        for seq in 0..count {
            if stop_c.load(Ordering::Relaxed) {
                return Err(Error::Lab("interrupted".into()));
            }
            req[..4].copy_from_slice(&seq.to_be_bytes());
            let start = Instant::now();
            sock.send(&req).map_err(io_err("ping send"))?;
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) if n >= 4 && buf[..4] == seq.to_be_bytes() => {
                        rtts.push(start.elapsed());
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        lost += 1;
                        break;
                    }
                }
            }
        }
        Ok((rtts, lost))
    })?;
    let result = client
        .join()
        .map_err(|_| Error::Lab("the pinger panicked".into()));
    done.store(true, Ordering::Relaxed);
    let _ = server.join();
    let (mut rtts, lost) = result??;
    rtts.sort_unstable();
    let pct = |p: usize| -> Duration {
        if rtts.is_empty() {
            Duration::ZERO
        } else {
            rtts[(rtts.len() - 1) * p / 100]
        }
    };
    Ok(Latency {
        replies: rtts.len(),
        lost,
        p50: pct(50),
        p99: pct(99),
    })
}

/// The outcome of a small-packet flood.
#[derive(Debug, Clone, PartialEq)]
pub struct Flood {
    /// Datagrams the sender handed to the kernel.
    pub sent: u64,
    /// Datagrams that arrived.
    pub received: u64,
    /// How long the sender sent.
    pub elapsed: Duration,
}

impl Flood {
    /// Returns the delivered rate in packets per second.
    pub fn pps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.received as f64 / secs
        } else {
            0.0
        }
    }

    /// Returns the share of sent datagrams that did not arrive.
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            1.0 - self.received as f64 / self.sent as f64
        }
    }
}

/// Sends `size`-byte UDP datagrams from `from` to `to_addr` in `to` as fast as one thread can
/// for `duration`, and counts what arrives.
///
/// # Errors
///
/// [`Error::Lab`] when a socket fails or `stop` is set.
pub fn udp_flood(
    from: &Netns,
    to: &Netns,
    to_addr: SocketAddr,
    size: usize,
    duration: Duration,
    stop: &Arc<AtomicBool>,
) -> Result<Flood, Error> {
    let done = Arc::new(AtomicBool::new(false));
    let done_rx = Arc::clone(&done);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = to.spawn(move || -> Result<u64, Error> {
        let sock = UdpSocket::bind(to_addr).map_err(io_err("flood bind"))?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(io_err("flood"))?;
        let _ = ready_tx.send(());
        let mut buf = [0u8; 2048];
        let mut received = 0u64;
        let mut quiet_since: Option<Instant> = None;
        loop {
            match sock.recv(&mut buf) {
                Ok(_) => {
                    received += 1;
                    quiet_since = None;
                }
                Err(_) if done_rx.load(Ordering::Relaxed) => {
                    // The sender is done: stop after 300 ms without a datagram.
                    let since = *quiet_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_millis(300) {
                        return Ok(received);
                    }
                }
                Err(_) => {}
            }
        }
    })?;
    match ready_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(()) => {}
        // It ended before it listened: its own error says why.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            return Err(match receiver.join() {
                Ok(Err(e)) => e,
                _ => Error::Lab("the flood receiver stopped before it listened".into()),
            });
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            return Err(Error::Lab(
                "the flood receiver did not start within 30 s".into(),
            ));
        }
    }
    let stop_c = Arc::clone(stop);
    let sender = from.spawn(move || -> Result<(u64, Duration), Error> {
        let bind: SocketAddr = if to_addr.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let sock = UdpSocket::bind(bind).map_err(io_err("flood bind"))?;
        sock.connect(to_addr).map_err(io_err("flood connect"))?;
        let payload = vec![0x5au8; size];
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < duration {
            if stop_c.load(Ordering::Relaxed) {
                return Err(Error::Lab("interrupted".into()));
            }
            for _ in 0..64 {
                if sock.send(&payload).is_ok() {
                    sent += 1;
                }
            }
        }
        Ok((sent, start.elapsed()))
    })?;
    let sent = sender
        .join()
        .map_err(|_| Error::Lab("the flood sender panicked".into()));
    done.store(true, Ordering::Relaxed);
    let received = receiver
        .join()
        .map_err(|_| Error::Lab("the flood receiver panicked".into()))?;
    let (sent, elapsed) = sent??;
    Ok(Flood {
        sent,
        received: received?,
        elapsed,
    })
}
