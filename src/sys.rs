//! The one door to libc: the `syscall!` macro, `retry_if_interrupted`, and the few process-level
//! calls (`setns`) that no safe crate offers.
//!
//! Every libc call in the crate goes through `syscall!`, which turns the C convention (`-1` and
//! `errno`) into `io::Result`. Nothing here knows about packets.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Calls a libc function and maps a `-1` return to `io::Error::last_os_error()`.
macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)* ) ) => {{
        #[allow(unused_unsafe)]
        // SAFETY: the caller of the macro upholds the contract of the named libc function; each
        // call site states it in its own `SAFETY` comment.
        let res = unsafe { libc::$fn($($arg, )*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}
pub(crate) use syscall;

/// Runs `f` again while it fails with `EINTR`.
pub(crate) fn retry_if_interrupted<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Moves the calling thread into the network namespace held open by `ns`.
///
/// Only the calling thread changes namespace (setns(2) acts per thread for `CLONE_NEWNET`);
/// sockets it creates afterwards belong to that namespace wherever they are used later.
///
/// # Errors
///
/// Returns the `setns` error, for example `EPERM` without `CAP_SYS_ADMIN`.
pub fn enter_netns(ns: &File) -> io::Result<()> {
    // SAFETY: the fd is valid for the duration of the call because `ns` is borrowed; setns
    // takes no pointers.
    syscall!(setns(ns.as_raw_fd(), libc::CLONE_NEWNET)).map(drop)
}

/// Returns the number of CPUs this process may run on.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Sends `SIGTERM` to the process `pid` (one this process started).
///
/// # Errors
///
/// The `kill` error, for example `ESRCH` when it has already exited.
pub fn terminate(pid: u32) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill takes no pointers; the pid belongs to a child this process started.
    syscall!(kill(pid, libc::SIGTERM)).map(drop)
}

/// Drops every capability (effective, permitted and inheritable sets) of the calling thread
/// with `capset(2)`. Threads created afterwards inherit the empty sets; a uid-0 process keeps
/// its uid but loses every privilege (CAP_NET_ADMIN included).
///
/// # Errors
///
/// The `capset` error.
pub fn drop_capabilities() -> io::Result<()> {
    keep_only_capabilities(0)
}

/// Drops every capability of the calling thread but those in `keep` (a mask of bit numbers
/// below 32, `1 << CAP_SETUID` and so on; include/uapi/linux/capability.h).
///
/// # Errors
///
/// The `capset` error.
pub fn keep_only_capabilities(keep: u32) -> io::Result<()> {
    // _LINUX_CAPABILITY_VERSION_3 (include/uapi/linux/capability.h): two 32-bit data words.
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let data = [
        Data {
            effective: keep,
            permitted: keep,
            inheritable: 0,
        },
        Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
    ];
    // SAFETY: `header` and `data` are valid, correctly laid out for version 3 and outlive the
    // call; capset only reads them.
    syscall!(syscall(libc::SYS_capset, &raw const header, data.as_ptr())).map(drop)
}

/// Switches the whole process to the user `name` and its primary group, with no
/// supplementary groups (glibc applies set*id to every thread).
///
/// # Errors
///
/// `NotFound` when the user does not exist, else the failing call's error.
pub fn switch_user(name: &str) -> io::Result<()> {
    let c =
        std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid C string; getpwnam returns a pointer into static storage or null,
    // read right away on this thread before any other getpw* call.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no user named {name}"),
        ));
    }
    // SAFETY: `pw` is non-null and points at a valid passwd entry (see above).
    let entry = unsafe { &*pw };
    let (uid, gid) = (entry.pw_uid, entry.pw_gid);
    // SAFETY: a zero-length group list with a null pointer is valid for setgroups.
    syscall!(setgroups(0, std::ptr::null()))?;
    // SAFETY: plain integer argument.
    syscall!(setgid(gid))?;
    // SAFETY: plain integer argument.
    syscall!(setuid(uid)).map(drop)
}
