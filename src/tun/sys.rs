//! TUN ioctls (include/uapi/linux/if_tun.h) and raw read/write on the device fd.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::sys::{retry_if_interrupted, syscall};

/// `TUNSETIFF` = `_IOW('T', 202, int)` (include/uapi/linux/if_tun.h).
const TUNSETIFF: libc::Ioctl = 0x4004_54ca as libc::Ioctl;

/// `TUNSETOFFLOAD` = `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::Ioctl = 0x4004_54d0 as libc::Ioctl;

/// `TUN_F_CSUM`: the reader handles partial checksums.
pub(super) const TUN_F_CSUM: libc::c_uint = 0x01;
/// `TUN_F_TSO4`: the reader handles TCP over IPv4 super-packets.
pub(super) const TUN_F_TSO4: libc::c_uint = 0x02;
/// `TUN_F_TSO6`: the reader handles TCP over IPv6 super-packets.
pub(super) const TUN_F_TSO6: libc::c_uint = 0x04;
/// `TUN_F_USO4`: UDP over IPv4 super-packets (Linux 6.2).
pub(super) const TUN_F_USO4: libc::c_uint = 0x20;
/// `TUN_F_USO6`: UDP over IPv6 super-packets (Linux 6.2).
pub(super) const TUN_F_USO6: libc::c_uint = 0x40;

/// Sets the offloads the reader of the device handles (device-wide, not per queue).
pub(super) fn set_offload(fd: &OwnedFd, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
    syscall!(ioctl(
        fd.as_raw_fd(),
        TUNSETOFFLOAD,
        libc::c_ulong::from(flags)
    ))
    .map(drop)
}

/// Writes the pieces `parts` (at most three) as one packet (`writev`).
pub(super) fn writev(fd: &OwnedFd, parts: &[&[u8]]) -> io::Result<usize> {
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut iov = [empty; 3];
    let n = parts.len().min(iov.len());
    let count = libc::c_int::try_from(n).unwrap_or(0);
    for (v, p) in iov.iter_mut().zip(&parts[..n]) {
        *v = libc::iovec {
            iov_base: p.as_ptr().cast_mut().cast(),
            iov_len: p.len(),
        };
    }
    retry_if_interrupted(|| {
        // SAFETY: the first `n` iovecs point at slices that stay borrowed for the duration of
        // the call, and the kernel only reads them; `n` is at most 3.
        syscall!(writev(fd.as_raw_fd(), iov.as_ptr(), count))
    })
    .map(|n| n.unsigned_abs())
}

/// Opens `/dev/net/tun` non-blocking and close-on-exec.
pub(super) fn open_clone_device() -> io::Result<OwnedFd> {
    // SAFETY: the path is a NUL-terminated static string; open takes no other pointer.
    let fd = syscall!(open(
        c"/dev/net/tun".as_ptr(),
        libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC
    ))?;
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches `fd` to the TUN device `name` with `flags` (`IFF_TUN | IFF_NO_PI | ...`), creating
/// the device if it does not exist. Returns the name the kernel gave the device.
pub(super) fn set_iff(fd: &OwnedFd, name: &str, flags: libc::c_int) -> io::Result<String> {
    // SAFETY: ifreq is a plain C struct for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        libc::c_short::try_from(flags).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `req` is a valid, initialised ifreq that outlives the call; TUNSETIFF reads and
    // writes only within it.
    syscall!(ioctl(
        fd.as_raw_fd(),
        TUNSETIFF,
        &mut req as *mut libc::ifreq
    ))?;
    let end = req
        .ifr_name
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(req.ifr_name.len());
    Ok(req.ifr_name[..end]
        .iter()
        .map(|&c| c as u8 as char)
        .collect())
}

/// Returns the interface index of `name`, or `None` when no such interface exists (or the
/// lookup itself failed: see [`if_index_checked`] where that must be told apart).
pub(crate) fn if_index(name: &str) -> Option<u32> {
    if_index_checked(name).ok().flatten()
}

/// Returns the interface index of `name`, `Ok(None)` when no such interface exists, and the
/// error when the lookup itself failed (`if_nametoindex` opens a socket, so a process out of
/// file descriptors gets `EMFILE`, not a missing device).
pub(crate) fn if_index_checked(name: &str) -> io::Result<Option<u32>> {
    let Ok(c) = CString::new(name) else {
        return Ok(None);
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index != 0 {
        return Ok(Some(index));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENODEV | libc::ENXIO) | None => Ok(None),
        Some(_) => Err(e),
    }
}

/// Reads one packet into `buf`.
pub(super) fn read(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    retry_if_interrupted(|| {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
        syscall!(read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()))
    })
    .map(|n| n.unsigned_abs())
}

/// Writes one packet from `buf`.
pub(super) fn write(fd: &OwnedFd, buf: &[u8]) -> io::Result<usize> {
    retry_if_interrupted(|| {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the duration of the call.
        syscall!(write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()))
    })
    .map(|n| n.unsigned_abs())
}
