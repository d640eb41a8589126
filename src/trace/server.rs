//! The node's end of `fustian trace`: a Unix socket that streams a running node's verdicts.
//!
//! The socket (`/run/fustian/<tun>.sock` unless `--trace-socket` says otherwise) is created
//! before the node drops its privileges ([`TraceServer::bind`]), mode 0600 in a directory
//! created 0700, and served by threads started after the drop ([`TraceServer::serve`]), so
//! only root on the host can attach and the serving threads hold no capability: a trace shows addresses and packet contents. At most
//! [`MAX_SESSIONS`] traces attach at once, each on a thread of its own; the workers never wait
//! for them.
//!
//! The protocol, one line each way to start and then JSON lines from the node:
//!
//! ```text
//! client: {"filter":"host 10.244.1.2 and verdict drop","packets":false}\n
//!         (or the filter text itself as the line)
//! node:   {"time_ns":...,"dir":"udp>tun","src":...,"verdict":"drop","reason":"spoofed_source",...}\n
//!         {"lost":0}\n    (at least once a second, and whenever the count changes)
//!         {"error":"..."}\n  (instead, when the filter is bad or too many traces are attached)
//! ```
//!
//! A client that disconnects is noticed at the next write (at most a second later) and
//! detached. The socket file is removed when the server is dropped; a stale one left by a node
//! that died is replaced at the next start, a live one is never taken over.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use serde::{Deserialize, Serialize};

use super::{Attached, Filter, Hub, Line, MAX_SESSIONS};
use crate::event::STOP_POLL;

/// The directory of the default socket paths.
pub const SOCKET_DIR: &str = "/run/fustian";
/// The longest request line read.
const MAX_REQUEST: usize = 8192;
/// How long a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the lost count is sent even when it did not change (and a gone client noticed).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long the stream waits for events before looking again.
const IDLE: Duration = Duration::from_millis(20);

/// Returns the default socket path of the node whose TUN device is `tun`.
pub fn default_path(tun: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{tun}.sock"))
}

/// The socket cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TraceSocketError {
    /// The directory cannot be created.
    #[error("cannot create the trace socket directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A node is serving traces there already.
    #[error("another node serves traces at {0}; give --trace-socket")]
    InUse(PathBuf),
    /// Something that is not a socket is in the way.
    #[error("{0} exists and is not a socket")]
    NotSocket(PathBuf),
    /// Binding or setting the mode failed.
    #[error("cannot create the trace socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// A client's request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The filter text.
    #[serde(default)]
    pub filter: String,
    /// Send each event's captured bytes (for `--pcap`).
    #[serde(default)]
    pub packets: bool,
}

impl Request {
    /// Reads a request line: a JSON [`Request`], or else the filter text itself.
    pub fn parse(line: &str) -> Self {
        let line = line.trim();
        serde_json::from_str(line).unwrap_or_else(|_| Self {
            filter: line.to_owned(),
            packets: false,
        })
    }
}

/// The trace socket, served on its own threads; dropping it stops them and removes the file.
#[derive(Debug)]
pub struct TraceServer {
    path: PathBuf,
    halt: Arc<AtomicBool>,
    listener: Option<UnixListener>,
    thread: Option<JoinHandle<()>>,
}

impl TraceServer {
    /// Creates the socket at `path` (mode 0600; its directory, when missing, 0700) and serves
    /// traces of `hub` on it.
    ///
    /// # Errors
    ///
    /// [`TraceSocketError`]: the directory or socket cannot be made, or a live node or
    /// another kind of file holds the path.
    pub fn start(path: &Path, hub: Arc<Hub>) -> Result<Self, TraceSocketError> {
        let mut server = Self::bind(path)?;
        server.serve(hub)?;
        Ok(server)
    }

    /// Creates the socket as [`TraceServer::start`] does, without serving it yet: a node
    /// binds while it holds its privileges and serves once they are dropped, so the serving
    /// threads never hold any.
    ///
    /// # Errors
    ///
    /// As [`TraceServer::start`].
    pub fn bind(path: &Path) -> Result<Self, TraceSocketError> {
        let listener = bind(path)?;
        Ok(Self {
            path: path.to_owned(),
            halt: Arc::new(AtomicBool::new(false)),
            listener: Some(listener),
            thread: None,
        })
    }

    /// Starts serving traces of `hub` (once; later calls do nothing).
    ///
    /// # Errors
    ///
    /// [`TraceSocketError::Bind`] when the thread cannot be started.
    pub fn serve(&mut self, hub: Arc<Hub>) -> Result<(), TraceSocketError> {
        let Some(listener) = self.listener.take() else {
            return Ok(());
        };
        let stop = Arc::clone(&self.halt);
        let thread = std::thread::Builder::new()
            .name("fustian-trace".into())
            .spawn(move || accept_loop(&listener, &hub, &stop))
            .map_err(|source| TraceSocketError::Bind {
                path: self.path.clone(),
                source,
            })?;
        self.thread = Some(thread);
        Ok(())
    }

    /// Returns the socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TraceServer {
    fn drop(&mut self) {
        self.halt.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Without privileges (`--user`) this may fail; the next start replaces the stale file.
        let _ = std::fs::remove_file(&self.path);
    }
}

fn bind(path: &Path) -> Result<UnixListener, TraceSocketError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| TraceSocketError::Dir {
                path: dir.to_owned(),
                source,
            })?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(TraceSocketError::NotSocket(path.to_owned()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(TraceSocketError::InUse(path.to_owned()));
        }
        let _ = std::fs::remove_file(path);
    }
    let bind_err = |source| TraceSocketError::Bind {
        path: path.to_owned(),
        source,
    };
    // The socket is made, and given its mode, inside a directory of the node's own (0700)
    // beside the target, then renamed into place: nothing is ever changed by a path that
    // another user could point elsewhere in between (a shared directory's symlink swap would
    // otherwise have the node chmod any file).
    let private = private_dir_beside(path).map_err(bind_err)?;
    let staged = private.join("s");
    let placed = UnixListener::bind(&staged).and_then(|listener| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    let listener = placed.map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}

/// Creates a new directory, mode 0700, beside `path` (same parent, so a rename from it stays
/// on one file system), with a short name (a socket's path is limited to 107 bytes) made of
/// the process id and a counter; an existing name is skipped.
fn private_dir_beside(path: &Path) -> std::io::Result<std::path::PathBuf> {
    let parent = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    for attempt in 0..64u32 {
        let dir = parent.join(format!(".ft{:x}.{attempt}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        "no free name for a private directory beside the trace socket",
    ))
}

fn accept_loop(listener: &UnixListener, hub: &Arc<Hub>, halt: &Arc<AtomicBool>) {
    let open = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    // The thread sleeps in epoll until a client connects, and looks at `halt` at least every
    // `STOP_POLL`, as the workers do.
    let mut poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("trace socket: no epoll instance ({e}); not serving");
            return;
        }
    };
    let fd = listener.as_raw_fd();
    if let Err(e) = poll
        .registry()
        .register(&mut SourceFd(&fd), Token(0), Interest::READABLE)
    {
        tracing::warn!("trace socket: cannot wait on it ({e}); not serving");
        return;
    }
    let mut events = Events::with_capacity(1);
    let mut refusals = Refusals::default();
    while !halt.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                // Only root attaches, whatever the socket's mode and directory allow (a
                // `--trace-socket` in a shared directory, the moment between `bind` and
                // `chmod`): the kernel's record of who connected decides.
                match crate::sys::peer_uid(&stream) {
                    Ok(0) => {}
                    Ok(uid) => {
                        refusals.note(|more| {
                            tracing::warn!(
                                uid,
                                more,
                                "trace socket: connection from a user other than root refused"
                            );
                        });
                        continue;
                    }
                    Err(e) => {
                        refusals.note(|more| {
                            tracing::warn!(
                                more,
                                "trace socket: cannot tell who connected ({e}); refused"
                            );
                        });
                        continue;
                    }
                }
                // Connections beyond what may attach (plus a few being refused) are told so
                // and closed.
                if open.load(Ordering::Relaxed) >= 2 * MAX_SESSIONS {
                    refuse_busy(&stream);
                    continue;
                }
                open.fetch_add(1, Ordering::Relaxed);
                let (hub, halt, open) = (Arc::clone(hub), Arc::clone(halt), Arc::clone(&open));
                let spawned = std::thread::Builder::new()
                    .name("fustian-tracer".into())
                    .spawn(move || {
                        if let Err(e) = serve(stream, &hub, &halt) {
                            tracing::debug!("trace client gone: {e}");
                        }
                        open.fetch_sub(1, Ordering::Relaxed);
                    });
                match spawned {
                    Ok(t) => clients.push(t),
                    Err(e) => tracing::warn!("cannot start a trace thread: {e}"),
                }
                clients.retain(|t: &JoinHandle<()>| !t.is_finished());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Edge-triggered: every connection queued so far has been taken.
                if let Err(e) = poll.poll(&mut events, Some(STOP_POLL))
                    && e.kind() != io::ErrorKind::Interrupted
                {
                    tracing::warn!("trace socket: {e}");
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // A persistent accept error (out of descriptors): wait for the next event or
                // the stop-flag period rather than spin.
                tracing::warn!("trace socket: {e}");
                let _ = poll.poll(&mut events, Some(STOP_POLL));
            }
        }
    }
    for t in clients {
        let _ = t.join();
    }
}

/// Tells a connection past the limit why it is closed, without waiting on it (the accepting
/// thread must not): one short line fits the new socket's empty buffer, and the request it
/// sent already is read away, so closing does not reset the connection before the client has
/// read the line.
fn refuse_busy(stream: &UnixStream) {
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let line = Line {
        error: Some(format!(
            "{} connections to the trace socket are open already (at most {MAX_SESSIONS} \
             traces attach); try again later",
            2 * MAX_SESSIONS
        )),
        ..Line::default()
    };
    if let Ok(mut text) = serde_json::to_vec(&line) {
        text.push(b'\n');
        let _ = (&*stream).write_all(&text);
    }
    let mut sink = [0u8; 1024];
    for _ in 0..8 {
        if !matches!((&*stream).read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
}

/// Refused connections, logged at most once a minute (with how many went unlogged since), so
/// a local user connecting in a loop cannot flood the node's log.
#[derive(Debug, Default)]
struct Refusals {
    logged: Option<Instant>,
    unlogged: u64,
}

impl Refusals {
    const PERIOD: Duration = Duration::from_secs(60);

    fn note(&mut self, log: impl FnOnce(u64)) {
        if self.logged.is_some_and(|t| t.elapsed() < Self::PERIOD) {
            self.unlogged = self.unlogged.saturating_add(1);
            return;
        }
        log(self.unlogged);
        self.logged = Some(Instant::now());
        self.unlogged = 0;
    }
}

/// Reads the client's request line: at most [`MAX_REQUEST`] bytes up to a line feed, within
/// `timeout` ([`REQUEST_TIMEOUT`]) in all (not per read, so a client sending a byte at a time cannot hold
/// the session open), and given up as soon as the node stops.
fn read_request(
    mut stream: &UnixStream,
    halt: &AtomicBool,
    timeout: Duration,
) -> io::Result<String> {
    let deadline = Instant::now() + timeout;
    let mut line = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        if halt.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "the node is stopping",
            ));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no whole request in time",
            ));
        }
        stream.set_read_timeout(Some(left.min(STOP_POLL)))?;
        let room = MAX_REQUEST.saturating_sub(line.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(nl) = chunk[..n].iter().position(|&b| b == b'\n') {
                    line.extend_from_slice(&chunk[..=nl]);
                    break;
                }
                line.extend_from_slice(&chunk[..n]);
                if line.len() >= MAX_REQUEST {
                    break;
                }
            }
            Err(e) if super::try_again(&e) => {}
            Err(e) => return Err(e),
        }
    }
    String::from_utf8(line).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
}

/// Detaches the session when the stream ends, however it ends.
struct Detach<'a> {
    hub: &'a Hub,
    attached: Attached,
}

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        self.hub.detach(&self.attached);
    }
}

fn serve(stream: UnixStream, hub: &Hub, halt: &AtomicBool) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(HEARTBEAT))?;
    let text = read_request(&stream, halt, REQUEST_TIMEOUT)?;
    let request = Request::parse(&text);
    let mut out = &stream;
    let refuse = |out: &mut &UnixStream, msg: String| {
        let line = Line {
            error: Some(msg),
            ..Line::default()
        };
        write_line(out, &line, halt)
    };
    let filter = match Filter::parse(&request.filter) {
        Ok(f) => f,
        Err(e) => return refuse(&mut out, e.to_string()),
    };
    let Some(attached) = hub.attach(filter) else {
        return refuse(
            &mut out,
            format!("{MAX_SESSIONS} traces are attached already; try again later"),
        );
    };
    let guard = Detach { hub, attached };
    let mut events = Vec::new();
    let mut buf = Vec::new();
    let mut sent_lost = None;
    let mut last_beat = Instant::now();
    while !halt.load(Ordering::Relaxed) {
        events.clear();
        buf.clear();
        guard.attached.drain(&mut events);
        for e in &events {
            if serde_json::to_writer(&mut buf, &Line::from_event(e, request.packets)).is_ok() {
                buf.push(b'\n');
            }
        }
        let lost = guard.attached.session.lost();
        if sent_lost != Some(lost) || last_beat.elapsed() >= HEARTBEAT {
            let line = Line {
                lost: Some(lost),
                ..Line::default()
            };
            if serde_json::to_writer(&mut buf, &line).is_ok() {
                buf.push(b'\n');
            }
            sent_lost = Some(lost);
            last_beat = Instant::now();
        }
        if !buf.is_empty() {
            write_fully(&mut out, &buf, halt)?;
        }
        if events.is_empty() {
            std::thread::sleep(IDLE);
        }
    }
    Ok(())
}

fn write_line(out: &mut &UnixStream, line: &Line, halt: &AtomicBool) -> io::Result<()> {
    let mut buf = serde_json::to_vec(line).map_err(io::Error::other)?;
    buf.push(b'\n');
    write_fully(out, &buf, halt)
}

/// Writes all of `buf`, waiting out a reader that is slow (the workers meanwhile count what
/// does not fit their rings as lost), until `halt`.
fn write_fully(out: &mut &UnixStream, buf: &[u8], halt: &AtomicBool) -> io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        match out.write(&buf[at..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => at += n,
            Err(e) if super::try_again(&e) => {
                if halt.load(Ordering::Relaxed) {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};

    use super::*;

    #[test]
    fn a_request_dribbled_a_byte_at_a_time_meets_one_deadline() {
        let (ours, mut theirs) = UnixStream::pair().expect("pair");
        let halt = Arc::new(AtomicBool::new(false));
        let writer = std::thread::spawn(move || {
            // One byte every 50 ms, never a line feed: only the whole-request deadline ends it.
            for _ in 0..40 {
                if theirs.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let began = Instant::now();
        let e = read_request(&ours, &halt, Duration::from_millis(300)).expect_err("timed out");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(
            began.elapsed() < Duration::from_secs(1),
            "{:?}",
            began.elapsed()
        );
        drop(ours);
        writer.join().expect("writer");
        // A whole line in time is read up to its line feed.
        let (ours, mut theirs) = UnixStream::pair().expect("pair");
        theirs
            .write_all(b"{\"filter\":\"udp\"}\nrest")
            .expect("write");
        let line = read_request(&ours, &halt, Duration::from_secs(5)).expect("line");
        assert_eq!(line, "{\"filter\":\"udp\"}\n");
    }

    #[test]
    fn a_stopping_node_stops_reading_a_request() {
        let (ours, mut theirs) = UnixStream::pair().expect("pair");
        let halt = Arc::new(AtomicBool::new(false));
        // Part of a request, then the stop: however the two meet the reader's loop, it gives
        // up well before its 60 s deadline (which would fail with `TimedOut`).
        let stopper = {
            let halt = Arc::clone(&halt);
            std::thread::spawn(move || {
                theirs.write_all(b"{\"filter\"").expect("write");
                halt.store(true, Ordering::Relaxed);
                theirs
            })
        };
        let e = read_request(&ours, &halt, Duration::from_secs(60)).expect_err("stopped");
        assert_eq!(e.kind(), io::ErrorKind::Interrupted);
        stopper.join().expect("stopper");
    }

    #[test]
    fn refusals_are_logged_once_a_period() {
        let mut r = Refusals::default();
        let mut logged = Vec::new();
        for _ in 0..1000 {
            r.note(|more| logged.push(more));
        }
        assert_eq!(logged, vec![0], "one line for a thousand refusals");
        r.logged = Some(Instant::now() - Refusals::PERIOD);
        r.note(|more| logged.push(more));
        assert_eq!(
            logged,
            vec![0, 999],
            "the next line says how many went unlogged"
        );
    }

    #[test]
    fn requests_are_json_or_filter_text() {
        assert_eq!(
            Request::parse("{\"filter\":\"tcp\",\"packets\":true}\n"),
            Request {
                filter: "tcp".into(),
                packets: true
            }
        );
        assert_eq!(Request::parse("port 80\n").filter, "port 80");
        assert_eq!(Request::parse("").filter, "");
    }

    #[test]
    fn a_symlink_at_the_socket_path_is_refused_and_its_target_left_alone() {
        let dir = std::env::temp_dir().join(format!("fustian-trace-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let victim = dir.join("victim");
        std::fs::write(&victim, b"x").expect("victim");
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).expect("mode");
        let path = dir.join("t.sock");
        std::os::unix::fs::symlink(&victim, &path).expect("symlink");
        let hub = Arc::new(Hub::new(1));
        assert!(matches!(
            TraceServer::start(&path, hub),
            Err(TraceSocketError::NotSocket(_))
        ));
        let mode = std::fs::metadata(&victim)
            .expect("victim")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o644);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn connections_past_the_limit_are_told_why() {
        let dir = std::env::temp_dir().join(format!("fustian-busy-{}", std::process::id()));
        let path = dir.join("t.sock");
        let hub = Arc::new(Hub::new(1));
        let server = TraceServer::start(&path, Arc::clone(&hub)).expect("bind");
        // Connections that never send a request hold their places until their deadline.
        let idle: Vec<UnixStream> = (0..2 * MAX_SESSIONS)
            .map(|_| UnixStream::connect(&path).expect("connect"))
            .collect();
        // Each is counted once the server has accepted it; a new one is then past the limit.
        let deadline = Instant::now() + Duration::from_secs(5);
        let reply = loop {
            let mut late = UnixStream::connect(&path).expect("connect");
            let _ = late.write_all(b"{\"filter\":\"\"}\n");
            late.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            let mut reply = String::new();
            let _ = BufReader::new(&late).read_line(&mut reply);
            if reply.contains("error") || Instant::now() > deadline {
                break reply;
            }
        };
        let line: Line = serde_json::from_str(&reply).expect("a JSON line");
        assert!(
            line.error
                .as_deref()
                .is_some_and(|e| e.contains("open already")),
            "{reply}"
        );
        drop(idle);
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn serves_a_trace_and_refuses_a_bad_filter() {
        let dir = std::env::temp_dir().join(format!("fustian-trace-{}", std::process::id()));
        let path = dir.join("sub").join("t.sock");
        let hub = Arc::new(Hub::new(1));
        let server = TraceServer::start(&path, Arc::clone(&hub)).expect("bind");
        let mode = |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("dir")), 0o700);
        // Made in a private directory beside it and moved into place: nothing else is left.
        let beside: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(beside, [std::ffi::OsString::from("t.sock")]);
        assert!(matches!(
            TraceServer::start(&path, Arc::clone(&hub)),
            Err(TraceSocketError::InUse(_))
        ));

        let mut bad = UnixStream::connect(&path).expect("connect");
        bad.write_all(b"port banana\n").expect("send");
        let mut reply = String::new();
        BufReader::new(&bad).read_line(&mut reply).expect("reply");
        assert!(reply.contains("`banana`"), "{reply}");

        let mut good = UnixStream::connect(&path).expect("connect");
        good.write_all(b"{\"filter\":\"verdict drop\"}\n")
            .expect("send");
        let mut reader = BufReader::new(&good);
        let mut first = String::new();
        reader.read_line(&mut first).expect("lost line");
        assert_eq!(
            serde_json::from_str::<Line>(&first).expect("json").lost,
            Some(0)
        );
        // The in-use check above connected too; that session goes at its first heartbeat.
        let deadline = Instant::now() + Duration::from_secs(5);
        while hub.attached() != 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(hub.attached(), 1);
        drop(reader);
        drop(good);
        // The server notices the client is gone at its next heartbeat.
        let deadline = Instant::now() + Duration::from_secs(5);
        while hub.attached() != 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(hub.attached(), 0);
        drop(server);
        assert!(!path.exists(), "removed on drop");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
