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

mod sys;
#[cfg(test)]
mod tests;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

pub(crate) use sys::{
    MmsgScratch, Received, SegmentScratch, SegmentsSent, Transmit, control_bytes, from_storage,
    socklen_of, to_storage,
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
    #[error("cannot bind UDP socket to {addr}: {source}")]
    Bind {
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

/// A non-blocking UDP socket bound to the underlay address.
#[derive(Debug)]
pub struct UdpSocket {
    socket: Socket,
    local: SocketAddr,
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

    /// Creates `count` sockets bound to the same `addr` with `SO_REUSEPORT` (Linux 3.9), one
    /// per worker; the kernel spreads incoming flows over them by their hash. One socket is
    /// bound without the option, so a second process on the same port fails to start.
    ///
    /// # Errors
    ///
    /// [`UdpError`] naming the step that failed.
    pub fn bind_group(addr: SocketAddr, count: usize) -> Result<Vec<Self>, UdpError> {
        if count <= 1 {
            return Ok(vec![Self::bind(addr)?]);
        }
        (0..count).map(|_| Self::bind_with(addr, true)).collect()
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
        Ok(Self { socket, local })
    }

    /// Creates `count` send sockets bound to `ip` on distinct ports spread over `range`
    /// (inclusive), for VXLAN outer source ports. A port that is taken is skipped for the next
    /// free one. Their receive buffers are minimal (nothing is read from them) and the outer
    /// DF bit is left clear, as the kernel's `vxlan` device sends.
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
            sys::set_pmtudisc_dont(socket.socket.as_fd()).map_err(|source| UdpError::Option {
                what: "IP_MTU_DISCOVER",
                source,
            })?;
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

    /// Sends `batch` (ranges of `data`), returning how many were sent from the front.
    ///
    /// # Errors
    ///
    /// The error of the first message when none was sent.
    pub(crate) fn send_batch(
        &self,
        scratch: &mut MmsgScratch,
        data: &[u8],
        batch: &[Transmit],
    ) -> io::Result<usize> {
        sys::send_batch(self.socket.as_fd(), scratch, data, batch)
    }

    /// Sends the segments of one super-packet (see [`sys::send_segments`]); returns how many
    /// segments went.
    ///
    /// # Errors
    ///
    /// The error of the first message when nothing was sent.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send_segments(
        &self,
        scratch: &mut SegmentScratch,
        dst: SocketAddr,
        headers: &[u8],
        stride: usize,
        packet: &[u8],
        segs: &[crate::offload::Segment],
        gso: bool,
    ) -> io::Result<SegmentsSent> {
        sys::send_segments(
            self.socket.as_fd(),
            scratch,
            dst,
            headers,
            stride,
            packet,
            segs,
            gso,
        )
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
