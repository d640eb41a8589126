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
