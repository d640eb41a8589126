//! TUN ioctls (include/uapi/linux/if_tun.h) and raw read/write on the device fd.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::sys::{retry_if_interrupted, syscall};

/// `TUNSETIFF` = `_IOW('T', 202, int)` (include/uapi/linux/if_tun.h).
const TUNSETIFF: libc::Ioctl = 0x4004_54ca as libc::Ioctl;

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

/// Returns the interface index of `name`, or `None` when no such interface exists.
pub(crate) fn if_index(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
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
