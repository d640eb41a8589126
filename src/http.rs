//! The node's HTTP endpoint (`--healthz-port`, as flanneld's): `/healthz`, `/readyz`,
//! `/metrics` in the Prometheus text format, and `/status`, the JSON that `fustian show` prints.
//!
//! Served by tiny_http on one thread of its own; requests only read atomics and the table
//! snapshot, so a slow or hostile client cannot delay forwarding. Off by default (port 0), as
//! flanneld's.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Renders every metric in the Prometheus text format.
pub type MetricsRenderer = Box<dyn Fn() -> String + Send + Sync>;
/// Renders the node's state (table, counters, I/O path) as JSON.
pub type StatusRenderer = Box<dyn Fn() -> serde_json::Value + Send + Sync>;

/// What the endpoint serves, filled in by the node as it comes up.
pub struct Status {
    /// Set once the device, the sockets, the lease (with etcd) and the subnet file are in
    /// place.
    pub ready: AtomicBool,
    /// Cleared when a worker stops on its own (an event loop failed).
    pub healthy: AtomicBool,
    /// Why the node is not ready (answered by `/readyz` with 503).
    reason: Mutex<String>,
    /// The renderers, set once the node has what they read.
    renderers: Mutex<Option<(Arc<MetricsRenderer>, Arc<StatusRenderer>)>>,
}

impl Status {
    /// Returns a status that is healthy, not ready, with the reason "starting", and renders
    /// nothing yet.
    pub fn new() -> Self {
        Self {
            ready: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            reason: Mutex::new("starting".into()),
            renderers: Mutex::new(None),
        }
    }

    /// Marks the node not ready, saying why.
    pub fn set_not_ready(&self, reason: &str) {
        if let Ok(mut r) = self.reason.lock() {
            reason.clone_into(&mut r);
        }
        self.ready.store(false, Ordering::Relaxed);
    }

    /// Marks the node ready.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Sets what `/metrics` and `/status` render.
    pub fn set_renderers(&self, metrics: MetricsRenderer, status: StatusRenderer) {
        if let Ok(mut r) = self.renderers.lock() {
            *r = Some((Arc::new(metrics), Arc::new(status)));
        }
    }

    fn reason(&self) -> String {
        self.reason.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn renderers(&self) -> Option<(Arc<MetricsRenderer>, Arc<StatusRenderer>)> {
        self.renderers.lock().ok().and_then(|r| r.clone())
    }
}

impl Default for Status {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Status")
            .field("ready", &self.ready)
            .field("healthy", &self.healthy)
            .finish_non_exhaustive()
    }
}

/// Answers one request path: status code, content type and body.
pub fn respond(status: &Status, path: &str) -> (u16, &'static str, String) {
    let path = path.split('?').next().unwrap_or_default();
    match path {
        "/healthz" if status.healthy.load(Ordering::Relaxed) => {
            (200, "text/plain", "fustian is running\n".into())
        }
        "/healthz" => (503, "text/plain", "a worker stopped\n".into()),
        "/readyz" if status.ready.load(Ordering::Relaxed) => {
            (200, "text/plain", "fustian is ready\n".into())
        }
        "/readyz" => (
            503,
            "text/plain",
            format!("fustian is not ready: {}\n", status.reason()),
        ),
        "/metrics" => (
            200,
            "text/plain; version=0.0.4",
            status.renderers().map(|(m, _)| m()).unwrap_or_default(),
        ),
        "/status" => (
            200,
            "application/json",
            status
                .renderers()
                .map_or(serde_json::Value::Null, |(_, s)| s())
                .to_string(),
        ),
        _ => (404, "text/plain", "not found\n".into()),
    }
}

/// A bound, not yet serving endpoint (bound during setup, while binding a low port is still
/// allowed; served from a thread started after the privileges are gone).
pub struct Listener(tiny_http::Server);

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Listener")
            .field(&self.0.server_addr().to_ip())
            .finish()
    }
}

/// Binds the endpoint to `addr`.
///
/// # Errors
///
/// The bind error.
pub fn bind(addr: SocketAddr) -> std::io::Result<Listener> {
    tiny_http::Server::http(addr)
        .map(Listener)
        .map_err(|e| std::io::Error::other(format!("cannot listen on {addr}: {e}")))
}

/// Serves `status` from `listener` on a thread of its own until `stop` is set.
///
/// # Errors
///
/// The thread cannot be started.
pub fn serve(
    listener: Listener,
    status: Arc<Status>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let server = listener.0;
    if let Some(addr) = server.server_addr().to_ip() {
        tracing::info!(%addr, "HTTP endpoint: /healthz /readyz /metrics /status");
    }
    std::thread::Builder::new()
        .name("fustian-http".into())
        .spawn(move || {
            // Capabilities belong to each thread: this one may start before the node drops
            // its own, and needs none. CAP_SETUID and CAP_SETGID stay (bits 7 and 6), because
            // glibc applies a later `--user` switch to every thread and aborts the process if
            // one thread is refused; the switch then clears them.
            if let Err(e) = crate::sys::keep_only_capabilities((1 << 7) | (1 << 6)) {
                tracing::warn!("HTTP endpoint: cannot drop capabilities: {e}");
            }
            while !stop.load(Ordering::Relaxed) {
                let request = match server.recv_timeout(Duration::from_millis(200)) {
                    Ok(Some(r)) => r,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!("HTTP endpoint: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                let (code, kind, body) = if *request.method() == tiny_http::Method::Get {
                    respond(&status, request.url())
                } else {
                    (405, "text/plain", "GET only\n".into())
                };
                let mut response = tiny_http::Response::from_string(body).with_status_code(code);
                if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], kind.as_bytes())
                {
                    response.add_header(h);
                }
                let _ = request.respond(response);
            }
        })
}

/// Fetches `path` from a node's endpoint at `addr` (`fustian show`): a plain HTTP/1.0 GET,
/// returning the body of a 200 answer.
///
/// # Errors
///
/// A message for a connection failure, a timeout, or another status.
pub fn get(addr: SocketAddr, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .map_err(|e| format!("cannot send to {addr}: {e}"))?;
    let mut text = String::new();
    stream
        .take(16 << 20)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read from {addr}: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr} did not answer HTTP"))?;
    let code = head.split_whitespace().nth(1).unwrap_or_default();
    if code != "200" {
        return Err(format!("{addr}{path} answered {code}: {}", body.trim()));
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Status {
        let s = Status::new();
        s.set_renderers(
            Box::new(|| "fustian_tx_packets 3\n".to_owned()),
            Box::new(|| serde_json::json!({"subnet": "10.244.1.0/24"})),
        );
        s
    }

    #[test]
    fn paths() {
        let s = status();
        assert_eq!(respond(&s, "/healthz").0, 200);
        assert_eq!(respond(&s, "/readyz").0, 503);
        s.set_not_ready("waiting for etcd at http://192.0.2.254:2379");
        assert_eq!(
            respond(&s, "/readyz").2,
            "fustian is not ready: waiting for etcd at http://192.0.2.254:2379\n"
        );
        s.set_ready();
        assert_eq!(respond(&s, "/readyz").0, 200);
        assert_eq!(respond(&s, "/metrics").2, "fustian_tx_packets 3\n");
        assert!(respond(&s, "/status?x=1").2.contains("10.244.1.0/24"));
        assert_eq!(respond(&s, "/nope").0, 404);
        s.healthy.store(false, Ordering::Relaxed);
        assert_eq!(respond(&s, "/healthz").0, 503);
    }

    #[test]
    fn serves_over_loopback() {
        let stop = Arc::new(AtomicBool::new(false));
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = probe.local_addr().expect("addr");
        drop(probe);
        let listener = bind(addr).expect("bind");
        let h = serve(listener, Arc::new(status()), Arc::clone(&stop)).expect("serve");
        assert_eq!(
            get(addr, "/metrics").as_deref(),
            Ok("fustian_tx_packets 3\n")
        );
        assert!(get(addr, "/readyz").is_err_and(|e| e.contains("503")));
        stop.store(true, Ordering::Relaxed);
        h.join().expect("server thread");
    }
}
