//! The underlay UDP socket: setup through socket2, batched I/O through `recvmmsg`/`sendmmsg`.
//!
//! The socket is bound to the node's public IP and the backend port, as flanneld binds its
//! proxy's socket to the interface address, so replies and outgoing datagrams leave from the
//! port peers expect. Send and receive buffers are raised to [`SOCKET_BUFFER`] bytes (with the
//! `FORCE` options when `CAP_NET_ADMIN` allows, else as far as `net.core.[rw]mem_max` allow),
//! because bursts of a TCP window arrive faster than one worker drains them.
//!
//! A datagram larger than the receive slot comes back flagged `truncated` (the kernel's
//! `MSG_TRUNC`); the caller drops and counts it, never delivers the truncated part.
//!
//! The workers of one node share the port with `SO_REUSEPORT`; [`claim`] keeps a second node
//! (or any other program) from joining that group.

pub mod claim;
mod sys;
#[cfg(test)]
mod tests;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use crate::sys::Release;
use socket2::{Domain, Protocol, Socket, Type};

pub use sys::{GSO_MAX_BYTES, GSO_MAX_SEGMENTS, Received};
pub(crate) use sys::{
    Gathered, MmsgScratch, NO_PEER, RecvSlot, SegmentScratch, SegmentsSent, Transmit,
    decode_multishot, multishot_msghdr,
};

/// Socket buffer size asked for in each direction.
pub const SOCKET_BUFFER: usize = 8 << 20;

/// Errors while setting the socket up.
#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    /// The socket cannot be created.
    #[error("cannot create UDP socket: {0}")]
    Create(#[source] io::Error),
    /// The bind failed.
    #[error(
        "cannot bind UDP socket to {addr}: {source}{}",
        if source.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
            " (no interface holds that address: add it to the underlay interface; --iface does \
             not change the address the node binds to)"
        } else {
            ""
        }
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// Another process serves this address and port.
    #[error(
        "UDP {addr} is {holder}: stop it or give another --public-ip or --port (two nodes on \
         one address and port would split the flows between them)"
    )]
    Taken {
        /// The address.
        addr: SocketAddr,
        /// Who holds it, as far as `/proc` tells.
        holder: String,
    },
    /// The claim on the address and port cannot be taken.
    #[error("cannot claim UDP {addr} for this node: {source}")]
    Claim {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// A socket option failed.
    #[error("cannot set {what} on the UDP socket: {source}")]
    Option {
        /// The option.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// The processes that hold a port: pid and command name.
type Holders = Vec<(u32, String)>;

/// Why one attempt to bind the group failed.
enum Held {
    /// The bind itself: the port is bound without `SO_REUSEPORT`, or by another user.
    Bound,
    /// Bound, but other sockets share the port through `SO_REUSEPORT`.
    Shared,
    /// Anything else.
    Other(UdpError),
}

/// A non-blocking UDP socket bound to the underlay address.
#[derive(Debug)]
pub struct UdpSocket {
    socket: Socket,
    local: SocketAddr,
    /// Sends may carry `UDP_SEGMENT` ([`Self::set_gso`]); cleared for good by an `EIO`.
    gso: std::sync::atomic::AtomicBool,
    /// The node's claim on `local`, for the sockets of a worker group.
    _claim: Option<std::sync::Arc<claim::PortClaim>>,
}

impl UdpSocket {
    /// Creates a non-blocking socket bound to `addr` with large buffers.
    ///
    /// # Errors
    ///
    /// [`UdpError`] naming the step that failed.
    pub fn bind(addr: SocketAddr) -> Result<Self, UdpError> {
        Self::bind_with(addr, false)
    }

    /// Returns the socket's inode, by which the kernel's UDP tables name it.
    ///
    /// # Errors
    ///
    /// The error reading `/proc/self/fd`.
    pub fn inode(&self) -> io::Result<u64> {
        claim::inode_of(self.as_raw_fd())
    }

    /// Returns how many datagrams the kernel dropped at the sockets `inodes` (of this thread's
    /// network namespace) before anyone read them: a full receive buffer, or a bad checksum.
    pub fn drops(inodes: &[u64]) -> u64 {
        claim::socket_drops(inodes)
    }

    /// Creates `count` sockets bound to the same `addr`, one per worker: one socket without
    /// `SO_REUSEPORT`, or several with it (Linux 3.9), over which the kernel spreads incoming
    /// flows by their hash. The option admits any later socket of the same user into the
    /// group, so the port is first claimed for this process ([`claim::PortClaim`], held by
    /// every socket of the group), and after binding no socket but these may be bound to
    /// `addr`: a second node on the same address and port fails to start.
    ///
    /// # Errors
    ///
    /// [`UdpError::Taken`] naming the other process, or [`UdpError`] naming the step that
    /// failed.
    pub fn bind_group(addr: SocketAddr, count: usize) -> Result<Vec<Self>, UdpError> {
        let taken = |holder| UdpError::Taken { addr, holder };
        let claim = std::sync::Arc::new(claim::PortClaim::take(addr).map_err(|e| {
            if e.kind() == io::ErrorKind::AddrInUse {
                taken(e.to_string())
            } else {
                UdpError::Claim { addr, source: e }
            }
        })?);
        // The claim is this node's, so no live fustian holds the port. Sockets on it that no
        // process holds belong to a node that has just exited, and are waited for.
        let sockets = crate::sys::until_released(
            &format!("UDP port {addr}"),
            std::time::Duration::from_millis(10),
            || match Self::bind_group_once(addr, count) {
                Ok(sockets) => Release::Done(Ok(sockets)),
                Err((Held::Other(e), _)) => Release::Done(Err(e)),
                Err((held, holders)) => {
                    let how = match held {
                        Held::Shared => "also bound with SO_REUSEPORT by",
                        _ => "already bound by",
                    };
                    if holders.is_empty() {
                        Release::Held(taken(format!(
                            "{how} {} for over {:?}",
                            claim::describe(&[]),
                            crate::sys::RELEASE_WAIT
                        )))
                    } else {
                        Release::Done(Err(taken(format!("{how} {}", claim::describe(&holders)))))
                    }
                }
            },
        )?;
        Ok(sockets
            .into_iter()
            .map(|s| Self {
                _claim: Some(std::sync::Arc::clone(&claim)),
                ..s
            })
            .collect())
    }

    /// One attempt of [`Self::bind_group`]: the sockets, or why not with the processes that
    /// hold the port (none found: sockets being released).
    fn bind_group_once(addr: SocketAddr, count: usize) -> Result<Vec<Self>, (Held, Holders)> {
        let in_use = |e: UdpError| match e {
            UdpError::Bind { source, .. } if source.kind() == io::ErrorKind::AddrInUse => (
                Held::Bound,
                claim::owners(&claim::udp_inodes_blocking(addr)),
            ),
            e => (Held::Other(e), Vec::new()),
        };
        let sockets = if count <= 1 {
            vec![Self::bind(addr).map_err(in_use)?]
        } else {
            (0..count)
                .map(|_| Self::bind_with(addr, true).map_err(in_use))
                .collect::<Result<Vec<_>, _>>()?
        };
        let own: Vec<u64> = sockets
            .iter()
            .filter_map(|s| claim::inode_of(s.as_raw_fd()).ok())
            .collect();
        let foreign: Vec<u64> = claim::udp_inodes(addr)
            .into_iter()
            .filter(|i| !own.contains(i))
            .collect();
        if own.len() == sockets.len() && !foreign.is_empty() {
            return Err((Held::Shared, claim::owners(&foreign)));
        }
        Ok(sockets)
    }

    fn bind_with(addr: SocketAddr, reuse_port: bool) -> Result<Self, UdpError> {
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::DGRAM.cloexec(),
            Some(Protocol::UDP),
        )
        .map_err(UdpError::Create)?;
        socket
            .set_nonblocking(true)
            .map_err(|source| UdpError::Option {
                what: "O_NONBLOCK",
                source,
            })?;
        for send in [false, true] {
            if sys::set_buffer_force(socket.as_fd(), send, SOCKET_BUFFER).is_err() {
                let r = if send {
                    socket.set_send_buffer_size(SOCKET_BUFFER)
                } else {
                    socket.set_recv_buffer_size(SOCKET_BUFFER)
                };
                r.map_err(|source| UdpError::Option {
                    what: if send { "SO_SNDBUF" } else { "SO_RCVBUF" },
                    source,
                })?;
            }
        }
        // DF clear (as the kernel's `vxlan` device sends), sized by the interface MTU the
        // node's own MTU follows, and blind to forged ICMP "fragmentation needed".
        if addr.is_ipv4() {
            sys::set_pmtudisc_omit(socket.as_fd()).map_err(|source| UdpError::Option {
                what: "IP_MTU_DISCOVER",
                source,
            })?;
        }
        if reuse_port {
            socket
                .set_reuse_port(true)
                .map_err(|source| UdpError::Option {
                    what: "SO_REUSEPORT",
                    source,
                })?;
        }
        socket
            .bind(&addr.into())
            .map_err(|source| UdpError::Bind { addr, source })?;
        let local = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or(addr);
        Ok(Self {
            socket,
            local,
            gso: std::sync::atomic::AtomicBool::new(false),
            _claim: None,
        })
    }

    /// Creates `count` send sockets bound to `ip` on distinct ports spread over `range`
    /// (inclusive), for VXLAN outer source ports. A port that is taken is skipped for the next
    /// free one. Their receive buffers are minimal (nothing is read from them); the outer DF bit
    /// is left clear, as on every tunnel socket.
    ///
    /// # Errors
    ///
    /// [`UdpError`] when a socket cannot be set up or no free port is left in the range.
    pub fn bind_source_pool(
        ip: IpAddr,
        range: (u16, u16),
        count: usize,
    ) -> Result<Vec<Self>, UdpError> {
        let (lo, hi) = (u32::from(range.0), u32::from(range.1));
        let span = hi - lo + 1;
        let count = count.min(span as usize).max(1);
        let mut pool = Vec::with_capacity(count);
        let mut next = lo;
        for i in 0..count {
            let target =
                lo + span * u32::try_from(i).unwrap_or(0) / u32::try_from(count).unwrap_or(1);
            next = next.max(target);
            let socket = loop {
                if next > hi {
                    return Err(UdpError::Bind {
                        addr: SocketAddr::new(ip, range.1),
                        source: io::Error::new(
                            io::ErrorKind::AddrInUse,
                            "no free port left in the source port range",
                        ),
                    });
                }
                let port = u16::try_from(next).unwrap_or(range.1);
                next += 1;
                match Self::bind(SocketAddr::new(ip, port)) {
                    Ok(s) => break s,
                    Err(UdpError::Bind { source, .. })
                        if source.kind() == io::ErrorKind::AddrInUse => {}
                    Err(e) => return Err(e),
                }
            };
            let _ = socket.socket.set_recv_buffer_size(0);
            pool.push(socket);
        }
        Ok(pool)
    }

    /// Returns the bound address.
    pub const fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Receives up to `out.len()` datagrams into `slot`-byte slots of `data` without blocking.
    ///
    /// # Errors
    ///
    /// The `recvmmsg` error other than `WouldBlock` (which returns `Ok(0)`).
    pub(crate) fn recv_batch(
        &self,
        scratch: &mut MmsgScratch,
        data: &mut [u8],
        slot: usize,
        out: &mut [Received],
    ) -> io::Result<usize> {
        sys::recv_batch(self.socket.as_fd(), scratch, data, slot, out)
    }

    /// Sends `batch` (ranges of `data`), runs of equal datagrams to one peer as one
    /// `UDP_SEGMENT` message each while this socket may (see [`sys::send_batch`]); returns how
    /// many datagrams went from the front. The fallbacks are [`Self::with_gso`]'s.
    ///
    /// # Errors
    ///
    /// The error of the first message when none was sent.
    pub(crate) fn send_batch(
        &self,
        scratch: &mut MmsgScratch,
        data: &[u8],
        batch: &[Transmit],
    ) -> io::Result<SegmentsSent> {
        self.with_gso(|fd, gso| {
            let sent = sys::send_batch(fd, scratch, data, batch, gso);
            (sent, scratch.first_segmented())
        })
    }

    /// Sends with `send(fd, gso)`, with `UDP_SEGMENT` while this socket may, and again without
    /// when the kernel refused a message that carried several datagrams (`send` returns its
    /// result and whether the first unsent message did; a one-datagram message never had
    /// `UDP_SEGMENT`, so its error is the send's own): `EIO` (the egress device cannot
    /// checksum, so GSO cannot work there) turns GSO off for this socket for good and says so
    /// once; `EMSGSIZE` (`EINVAL` before Linux 5.x), a segment larger than the route's MTU where
    /// a datagram sent alone would be fragmented, sends these datagrams one per message only.
    fn with_gso<T>(
        &self,
        mut send: impl FnMut(BorrowedFd<'_>, bool) -> (io::Result<T>, bool),
    ) -> io::Result<T> {
        let gso = self.gso();
        let fd = self.socket.as_fd();
        match send(fd, gso) {
            (Err(e), true) if gso && e.raw_os_error() == Some(libc::EIO) => {
                if self.gso.swap(false, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        local = %self.local,
                        "UDP GSO failed with EIO (the egress device cannot checksum); sending \
                         one datagram per message from now on"
                    );
                }
                send(fd, false).0
            }
            (Err(e), true)
                if gso && matches!(e.raw_os_error(), Some(libc::EMSGSIZE | libc::EINVAL)) =>
            {
                send(fd, false).0
            }
            (r, _) => r,
        }
    }

    /// Lets sends carry `UDP_SEGMENT` (or not). A socket starts without.
    pub fn set_gso(&self, on: bool) {
        self.gso.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Returns true while sends carry `UDP_SEGMENT`.
    pub fn gso(&self) -> bool {
        self.gso.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sends the segments of one super-packet (see [`sys::send_segments`]), with
    /// `UDP_SEGMENT` while this socket may and the fallbacks of [`Self::with_gso`]; returns how
    /// many segments went.
    ///
    /// # Errors
    ///
    /// The error of the first message when nothing was sent.
    pub(crate) fn send_segments(
        &self,
        scratch: &mut SegmentScratch,
        batch: &Gathered<'_>,
    ) -> io::Result<SegmentsSent> {
        self.with_gso(|fd, gso| {
            let sent = sys::send_segments(fd, scratch, batch, gso);
            (sent, scratch.first_segmented())
        })
    }

    /// Turns `UDP_GRO` on.
    ///
    /// # Errors
    ///
    /// The `setsockopt` error (`ENOPROTOOPT` before Linux 5.0).
    pub fn enable_gro(&self) -> io::Result<()> {
        sys::set_udp_gro(self.socket.as_fd())
    }

    /// Returns true when the kernel knows `UDP_SEGMENT` (Linux 4.18).
    pub fn gso_supported(&self) -> bool {
        sys::gso_supported(self.socket.as_fd())
    }

    /// Waits up to `timeout_ms` for room in the send buffer.
    ///
    /// # Errors
    ///
    /// The `poll` error.
    pub(crate) fn wait_writable(&self, timeout_ms: i32) -> io::Result<bool> {
        sys::wait_writable(self.socket.as_fd(), timeout_ms)
    }
}

impl AsFd for UdpSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl AsRawFd for UdpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}
