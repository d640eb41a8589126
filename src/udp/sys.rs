//! `recvmmsg(2)` / `sendmmsg(2)` and the socket options socket2 does not cover.
//!
//! The header arrays live in [`MmsgScratch`], allocated once per worker, and the pointers in
//! them are rewritten on every call from the caller's buffers, so nothing here allocates per
//! packet and no pointer outlives the borrow it came from.
#![allow(unsafe_code)]

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::sys::{retry_if_interrupted, syscall};

/// Reusable header arrays for one batch call.
pub(crate) struct MmsgScratch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
}

// SAFETY: the raw pointers inside the arrays are only ever set and used within one call on the
// owning thread; between calls they are stale values that are never dereferenced.
unsafe impl Send for MmsgScratch {}

impl MmsgScratch {
    /// Creates arrays for up to `batch` messages.
    pub(crate) fn new(batch: usize) -> Self {
        // SAFETY: mmsghdr, iovec and sockaddr_storage are plain C structs; all-zero is valid.
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let zero_addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        Self {
            hdrs: vec![zero_hdr; batch],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                batch
            ],
            addrs: vec![zero_addr; batch],
        }
    }

    /// Returns the batch size.
    pub(crate) fn capacity(&self) -> usize {
        self.hdrs.len()
    }
}

/// One received datagram.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received {
    /// Bytes placed in the slot (at most the slot size).
    pub(crate) len: usize,
    /// The sender.
    pub(crate) from: Option<SocketAddr>,
    /// The datagram did not fit the slot (`MSG_TRUNC`): it must not be delivered.
    pub(crate) truncated: bool,
}

/// Receives up to `out.len()` datagrams into consecutive `slot`-byte slots of `data`,
/// without blocking. Returns how many arrived (0 when none were waiting).
pub(crate) fn recv_batch(
    fd: BorrowedFd<'_>,
    scratch: &mut MmsgScratch,
    data: &mut [u8],
    slot: usize,
    out: &mut [Received],
) -> io::Result<usize> {
    let n = out
        .len()
        .min(scratch.capacity())
        .min(data.len() / slot.max(1));
    for i in 0..n {
        let iov = &mut scratch.iovs[i];
        iov.iov_base = data[i * slot..].as_mut_ptr().cast();
        iov.iov_len = slot;
        let hdr = &mut scratch.hdrs[i];
        hdr.msg_hdr.msg_name = (&raw mut scratch.addrs[i]).cast();
        hdr.msg_hdr.msg_namelen = socklen_of::<libc::sockaddr_storage>();
        hdr.msg_hdr.msg_iov = iov;
        hdr.msg_hdr.msg_iovlen = 1;
        hdr.msg_hdr.msg_control = std::ptr::null_mut();
        hdr.msg_hdr.msg_controllen = 0;
        hdr.msg_hdr.msg_flags = 0;
        hdr.msg_len = 0;
    }
    let got = retry_if_interrupted(|| {
        // SAFETY: the first `n` headers point at `n` iovecs and address slots in `scratch`, and
        // each iovec at a distinct `slot`-byte range of `data`, all of which stay borrowed
        // mutably for the duration of the call; `n` fits c_uint because it is a batch size.
        syscall!(recvmmsg(
            fd.as_raw_fd(),
            scratch.hdrs.as_mut_ptr(),
            libc::c_uint::try_from(n).unwrap_or(libc::c_uint::MAX),
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        ))
    });
    let got = match got {
        Ok(g) => g.unsigned_abs() as usize,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
        Err(e) => return Err(e),
    };
    for ((r, hdr), addr) in out
        .iter_mut()
        .zip(&scratch.hdrs)
        .zip(&scratch.addrs)
        .take(got)
    {
        *r = Received {
            len: (hdr.msg_len as usize).min(slot),
            from: from_storage(addr),
            truncated: hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        };
    }
    Ok(got)
}

/// One datagram to send: `data[start..start + len]` to `dst`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transmit {
    /// Destination.
    pub(crate) dst: SocketAddr,
    /// Offset in the data buffer.
    pub(crate) start: usize,
    /// Length.
    pub(crate) len: usize,
    /// Which of the caller's sockets sends it (not used here).
    pub(crate) socket: u16,
}

/// Sends one batch with `sendmmsg`. Returns how many were sent from the front of `batch`; an
/// error means the first message failed.
pub(crate) fn send_batch(
    fd: BorrowedFd<'_>,
    scratch: &mut MmsgScratch,
    data: &[u8],
    batch: &[Transmit],
) -> io::Result<usize> {
    let n = batch.len().min(scratch.capacity());
    for (i, t) in batch[..n].iter().enumerate() {
        let Some(bytes) = data.get(t.start..t.start + t.len) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        let iov = &mut scratch.iovs[i];
        iov.iov_base = bytes.as_ptr().cast_mut().cast();
        iov.iov_len = bytes.len();
        let namelen = to_storage(t.dst, &mut scratch.addrs[i]);
        let hdr = &mut scratch.hdrs[i];
        hdr.msg_hdr.msg_name = (&raw mut scratch.addrs[i]).cast();
        hdr.msg_hdr.msg_namelen = namelen;
        hdr.msg_hdr.msg_iov = iov;
        hdr.msg_hdr.msg_iovlen = 1;
        hdr.msg_hdr.msg_control = std::ptr::null_mut();
        hdr.msg_hdr.msg_controllen = 0;
        hdr.msg_hdr.msg_flags = 0;
    }
    retry_if_interrupted(|| {
        // SAFETY: the first `n` headers point at iovecs and addresses in `scratch` and at byte
        // ranges of `data` checked above; the kernel only reads them, and all stay borrowed for
        // the duration of the call.
        syscall!(sendmmsg(
            fd.as_raw_fd(),
            scratch.hdrs.as_mut_ptr(),
            libc::c_uint::try_from(n).unwrap_or(libc::c_uint::MAX),
            libc::MSG_DONTWAIT
        ))
    })
    .map(|sent| sent.unsigned_abs() as usize)
}

/// Sets `SO_RCVBUFFORCE` / `SO_SNDBUFFORCE`, which exceed `net.core.[rw]mem_max` with
/// `CAP_NET_ADMIN` (socket(7)).
pub(crate) fn set_buffer_force(fd: BorrowedFd<'_>, send: bool, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let opt = if send {
        libc::SO_SNDBUFFORCE
    } else {
        libc::SO_RCVBUFFORCE
    };
    // SAFETY: `value` is a c_int that outlives the call and its size is passed alongside.
    syscall!(setsockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        opt,
        (&raw const value).cast(),
        socklen_of::<libc::c_int>()
    ))
    .map(drop)
}

/// Sets `IP_MTU_DISCOVER` to `IP_PMTUDISC_DONT` so datagrams leave with DF clear (ip(7)).
/// Ignored for IPv6 sockets, which have no DF bit.
pub(crate) fn set_pmtudisc_dont(fd: BorrowedFd<'_>) -> io::Result<()> {
    let value: libc::c_int = libc::IP_PMTUDISC_DONT;
    // SAFETY: `value` is a c_int that outlives the call and its size is passed alongside.
    let r = syscall!(setsockopt(
        fd.as_raw_fd(),
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        (&raw const value).cast(),
        socklen_of::<libc::c_int>()
    ));
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => Ok(()),
        other => other.map(drop),
    }
}

/// Waits up to `timeout_ms` for `fd` to become writable.
pub(crate) fn wait_writable(fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    retry_if_interrupted(|| {
        // SAFETY: `pfd` is one valid pollfd that outlives the call.
        syscall!(poll(&raw mut pfd, 1, timeout_ms))
    })
    .map(|n| n > 0)
}

pub(crate) fn socklen_of<T>() -> libc::socklen_t {
    // Socket address structs are at most 128 bytes (sockaddr_storage), so this always fits.
    libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}

// AF_INET (2) and AF_INET6 (10) fit sa_family_t (u16) by definition (include/linux/socket.h).
#[allow(clippy::cast_possible_truncation)]
const FAMILY_INET: libc::sa_family_t = libc::AF_INET as libc::sa_family_t;
#[allow(clippy::cast_possible_truncation)]
const FAMILY_INET6: libc::sa_family_t = libc::AF_INET6 as libc::sa_family_t;

pub(crate) fn to_storage(
    addr: SocketAddr,
    storage: &mut libc::sockaddr_storage,
) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: FAMILY_INET,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write((&raw mut *storage).cast::<libc::sockaddr_in>(), sin) };
            socklen_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: FAMILY_INET6,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut *storage).cast::<libc::sockaddr_in6>(), sin6) };
            socklen_of::<libc::sockaddr_in6>()
        }
    }
}

pub(crate) fn from_storage(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the kernel wrote a sockaddr_in, which fits and is aligned.
            let sin = unsafe { &*(&raw const *storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the kernel wrote a sockaddr_in6, which fits and is aligned.
            let sin6 = unsafe { &*(&raw const *storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}
