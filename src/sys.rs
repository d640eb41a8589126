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

/// Sends `signal` to process `pid` (a child not yet reaped, so the pid is still its own).
///
/// # Errors
///
/// The kernel's error, or `InvalidInput` for a pid out of range.
pub fn kill(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill takes two integers and no memory.
    syscall!(kill(pid, signal)).map(drop)
}

/// Runs `f` again while it fails with `EINTR`.
pub(crate) fn retry_if_interrupted<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// How long a start-up step waits for what a node that has just exited still holds (its UDP
/// sockets, its TUN queues, the routes through its device): its io_uring instance releases its
/// files some milliseconds after the process is reaped (26–45 ms observed on Linux 6.18), and the
/// kernel flushes the device's routes with the device.
pub const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What one attempt of [`until_released`] found.
pub enum Release<T, E> {
    /// Finished, well or not: the result to return.
    Done(Result<T, E>),
    /// Held by nothing alive (being released): the error to return if the wait runs out.
    Held(E),
}

/// Runs `attempt` every `step` until it is [`Release::Done`] or [`RELEASE_WAIT`] has passed;
/// says once that it waits for `what`, and again when the wait ended well.
///
/// # Errors
///
/// The attempt's own error, or the last [`Release::Held`] error once the wait runs out.
pub fn until_released<T, E>(
    what: &str,
    step: std::time::Duration,
    attempt: impl FnMut() -> Release<T, E>,
) -> Result<T, E> {
    until_released_within(RELEASE_WAIT, what, step, attempt)
}

/// [`until_released`] with its own limit.
fn until_released_within<T, E>(
    wait: std::time::Duration,
    what: &str,
    step: std::time::Duration,
    mut attempt: impl FnMut() -> Release<T, E>,
) -> Result<T, E> {
    let deadline = std::time::Instant::now() + wait;
    let mut waited = false;
    loop {
        match attempt() {
            Release::Done(result) => {
                if waited && result.is_ok() {
                    tracing::info!("{what}: released");
                }
                return result;
            }
            Release::Held(e) if std::time::Instant::now() >= deadline => return Err(e),
            Release::Held(_) => {
                if !waited {
                    tracing::info!("{what}: waiting for a node that has just exited to release it");
                    waited = true;
                }
                std::thread::sleep(step);
            }
        }
    }
}

/// A resource limit: the soft and the hard value (`None` is unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// What the process may use now.
    pub soft: Option<u64>,
    /// What an unprivileged process may raise `soft` to.
    pub hard: Option<u64>,
}

fn limit_value(v: libc::rlim_t) -> Option<u64> {
    (v != libc::RLIM_INFINITY).then_some(v)
}

/// Returns limit `resource` (`libc::RLIMIT_*`).
///
/// # Errors
///
/// The `getrlimit` error.
pub fn limit(resource: libc::__rlimit_resource_t) -> io::Result<Limit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through the pointer, which outlives the call.
    syscall!(getrlimit(resource, &raw mut lim))?;
    Ok(Limit {
        soft: limit_value(lim.rlim_cur),
        hard: limit_value(lim.rlim_max),
    })
}

/// Raises limit `resource` to at least `want` bytes or items (`None`: unlimited) where it is
/// lower: both values where the process may (`CAP_SYS_RESOURCE`), else the soft value up to
/// the hard one. Returns the limit in force afterwards; never lowers anything.
///
/// # Errors
///
/// The `getrlimit` error.
pub fn raise_limit(resource: libc::__rlimit_resource_t, want: Option<u64>) -> io::Result<Limit> {
    let now = limit(resource)?;
    let below = |v: Option<u64>| match (v, want) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(v), Some(w)) => v < w,
    };
    if !below(now.soft) {
        return Ok(now);
    }
    let raw = |v: Option<u64>| v.unwrap_or(libc::RLIM_INFINITY);
    let both = libc::rlimit {
        rlim_cur: raw(want),
        rlim_max: if below(now.hard) {
            raw(want)
        } else {
            raw(now.hard)
        },
    };
    // SAFETY: setrlimit reads one rlimit through the pointer, which outlives the call.
    if syscall!(setrlimit(resource, &raw const both)).is_err() {
        let soft = match (now.hard, want) {
            (Some(h), Some(w)) => Some(h.min(w)),
            (Some(h), None) => Some(h),
            (None, w) => w,
        };
        let to_hard = libc::rlimit {
            rlim_cur: raw(soft),
            rlim_max: raw(now.hard),
        };
        // SAFETY: as above.
        let _ = syscall!(setrlimit(resource, &raw const to_hard));
    }
    limit(resource)
}

/// Raises the soft limit on open files to the hard one, as Go's runtime does at the start of
/// every program (flanneld included): the kernel's default soft limit of 1024 is a service
/// manager's leftover from `select(2)`, which nothing here uses.
///
/// # Errors
///
/// The `getrlimit` error.
pub fn raise_open_files() -> io::Result<Limit> {
    let now = limit(libc::RLIMIT_NOFILE)?;
    raise_limit(libc::RLIMIT_NOFILE, now.hard)
}

/// Returns milliseconds on a clock that only moves forward (1 at the first call in this
/// process, so 0 may stand for "never"), for deadlines shared between threads as plain
/// integers.
pub fn monotonic_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(std::time::Instant::now);
    u64::try_from(epoch.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
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
/// below 32, `1 << CAP_SETUID` and so on; include/uapi/linux/capability.h) that it holds: a
/// capability not in its permitted set is never asked for, since `capset` refuses to add one
/// (so a thread of a node started without CAP_SETUID, say in a container granting only
/// CAP_NET_ADMIN, still drops to what it may keep instead of failing).
///
/// # Errors
///
/// The `capget` or `capset` error.
pub fn keep_only_capabilities(keep: u32) -> io::Result<()> {
    let keep = keep & capget()?[0].permitted;
    capset([
        CapData {
            effective: keep,
            permitted: keep,
            inheritable: 0,
        },
        CapData::default(),
    ])
}

/// What [`restrict_all_threads`] leaves of each thread's capability sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// Nothing: the effective, permitted, inheritable and ambient sets are emptied.
    Nothing,
    /// The sets as they are, for a switch of user right after (`setuid` from root to another
    /// user clears them, capabilities(7) "Effect of user ID changes on capabilities", which the
    /// locked securebits keep in force).
    Sets,
}

/// What a thread without `CAP_SETPCAP` could not do in [`restrict_calling_thread`] (the other
/// steps need no capability).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Shortfall {
    /// The securebits are not set and locked.
    pub(crate) securebits: bool,
    /// Capabilities remain in the bounding set.
    pub(crate) bounding: bool,
}

impl Shortfall {
    /// Returns true when every step was done.
    pub(crate) const fn is_none(self) -> bool {
        !self.securebits && !self.bounding
    }

    const fn bits(self) -> u32 {
        (self.securebits as u32) | ((self.bounding as u32) << 1)
    }

    const fn from_bits(bits: u32) -> Self {
        Self {
            securebits: bits & 1 != 0,
            bounding: bits & 2 != 0,
        }
    }

    const fn or(self, other: Self) -> Self {
        Self {
            securebits: self.securebits || other.securebits,
            bounding: self.bounding || other.bounding,
        }
    }
}

/// `SECBIT_*` of include/uapi/linux/securebits.h (Linux 2.6.26); a `_LOCKED` bit fixes the bit
/// below it for the thread and every thread and process it starts.
const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
const SECBIT_KEEP_CAPS: libc::c_ulong = 1 << 4;
const SECBIT_KEEP_CAPS_LOCKED: libc::c_ulong = 1 << 5;

/// Takes from the calling thread every way back to a capability, so that uid 0 without
/// capabilities stays without them:
///
/// - the securebits `SECBIT_NOROOT` (an `execve` as root no longer grants root's full set),
///   with `SECBIT_NO_SETUID_FIXUP` and `SECBIT_KEEP_CAPS` cleared (a switch of user clears the
///   sets), all three locked;
/// - every capability dropped from the bounding set (a set-user-ID-root or file-capability
///   program grants nothing outside it);
/// - with [`Keep::Nothing`], the effective, permitted and inheritable sets emptied (the kernel
///   empties the ambient set with them, since it stays below permitted and inheritable);
/// - `no_new_privs` (Linux 3.5): `execve` grants nothing the thread does not already hold, so
///   even a thread that still runs as root with the bounding set in place gains nothing from a
///   program it runs.
///
/// The first two need `CAP_SETPCAP` (capabilities(7)), so they come before the sets are
/// emptied; a thread without it skips them and says so in the [`Shortfall`]. Every step is
/// done only where not done yet, so a second call changes nothing and fails nothing.
///
/// All of it is per thread and inherited by the threads and processes the thread starts
/// afterwards. Only system calls, no allocation and no lock: [`restrict_all_threads`] runs it in
/// a signal handler.
///
/// # Errors
///
/// The `prctl` or `capset` error (`no_new_privs` fails with `EINVAL` before Linux 3.5).
pub(crate) fn restrict_calling_thread(keep: Keep) -> io::Result<Shortfall> {
    let mut short = Shortfall::default();
    // SAFETY: prctl with integer arguments only; it reads the calling thread's securebits.
    let bits = syscall!(prctl(libc::PR_GET_SECUREBITS, Z, Z, Z, Z))?;
    let bits = libc::c_ulong::try_from(bits).unwrap_or_default();
    let want = (bits & !(SECBIT_NO_SETUID_FIXUP | SECBIT_KEEP_CAPS))
        | SECBIT_NOROOT
        | SECBIT_NOROOT_LOCKED
        | SECBIT_NO_SETUID_FIXUP_LOCKED
        | SECBIT_KEEP_CAPS_LOCKED;
    // SAFETY: prctl with integer arguments only; EPERM without CAP_SETPCAP.
    if want != bits && syscall!(prctl(libc::PR_SET_SECUREBITS, want, Z, Z, Z)).is_err() {
        short.securebits = true;
    }
    for cap in (0..64u8).map(libc::c_ulong::from) {
        // SAFETY: prctl with integer arguments only; 1 for a capability in the bounding set, 0
        // for one not, EINVAL past the last capability the kernel knows.
        match syscall!(prctl(libc::PR_CAPBSET_READ, cap, Z, Z, Z)) {
            Err(_) => break,
            Ok(0) => {}
            Ok(_) => {
                // SAFETY: prctl with integer arguments only; EPERM without CAP_SETPCAP.
                if syscall!(prctl(libc::PR_CAPBSET_DROP, cap, Z, Z, Z)).is_err() {
                    short.bounding = true;
                }
            }
        }
    }
    if keep == Keep::Nothing {
        capset([CapData::default(); 2])?;
    }
    // SAFETY: prctl with integer arguments only.
    syscall!(prctl(
        libc::PR_SET_NO_NEW_PRIVS,
        1 as libc::c_ulong,
        Z,
        Z,
        Z
    ))?;
    Ok(short)
}

/// How long [`restrict_all_threads`] waits for one thread to answer.
const RESTRICT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs [`restrict_calling_thread`] with `keep` in every thread of the process, the calling
/// thread last, except the threads that keep capabilities of their own ([`keep_net_caps`]).
/// Returns what threads without `CAP_SETPCAP` could not do.
///
/// Capabilities, securebits, the bounding set and `no_new_privs` belong to each thread, and
/// only the thread itself can change them (`capset` changes only the caller's where the kernel
/// has file capabilities, which every kernel has since 2.6.33, capset(2); `prctl` knows only
/// the caller). A thread the process started before this call (the
/// log writer, the HTTP endpoint, an etcd client's resolver threads, a tool's pipe readers)
/// would keep what the process had. So each thread is sent a signal whose handler makes the
/// calls, one thread after another, each answer awaited: the way glibc applies `setuid` to
/// every thread (nptl's `__nptl_setxid`), and libcap's psx. Starting every thread after the
/// drop instead would leave out the threads that must run before it (the endpoint answers
/// while the node waits for etcd) and those a library starts on its own. The handler runs with
/// `SA_RESTART`, as glibc's does, so a thread interrupted in a system call goes on with it.
/// Threads started meanwhile are found by listing the threads again until no new one appears;
/// those started afterwards inherit the restrictions of the thread that starts them.
///
/// # Errors
///
/// Listing `/proc/self/task`, installing the handler or signalling a thread fails; a thread's
/// own error; `TimedOut` naming a thread that did not answer within 5 s (its signal
/// blocked, or stuck in the kernel), which keeps what it had.
pub(crate) fn restrict_all_threads(keep: Keep) -> io::Result<Shortfall> {
    use std::sync::atomic::Ordering;
    static ONE_ROUND: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _round = ONE_ROUND
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    RESTRICT_KEEPS_SETS.store(keep == Keep::Sets, Ordering::Release);
    let signal = restrict_signal();
    let old = install_handler(signal, on_restrict_signal)?;
    // SAFETY: getpid takes no arguments and cannot fail.
    let pid = unsafe { libc::getpid() };
    let me = gettid();
    let mut done = vec![me];
    let mut short = Shortfall::default();
    loop {
        let new: Vec<libc::pid_t> = threads()?
            .into_iter()
            .filter(|t| !done.contains(t))
            .collect();
        if new.is_empty() {
            break;
        }
        for tid in new {
            done.push(tid);
            RESTRICT_ANSWER.store(0, Ordering::Relaxed);
            match tgkill(pid, tid, signal) {
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
                Err(e) => return Err(e),
                Ok(()) => {}
            }
            let deadline = std::time::Instant::now() + RESTRICT_WAIT;
            let answer = loop {
                let answer = RESTRICT_ANSWER.load(Ordering::Acquire);
                if answer >> 32 == u64::from(tid.unsigned_abs()) {
                    break Some(answer);
                }
                // Signal 0 only asks whether the thread is still there: one that ended before
                // it ran the handler has nothing left to restrict.
                if tgkill(pid, tid, 0).is_err_and(|e| e.raw_os_error() == Some(libc::ESRCH)) {
                    break None;
                }
                if std::time::Instant::now() > deadline {
                    // The handler stays installed: the signal may still arrive, and its
                    // default action would end the process.
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "thread {tid} ({}) did not drop its privileges within {:?}",
                            thread_name(tid),
                            RESTRICT_WAIT
                        ),
                    ));
                }
                std::thread::sleep(std::time::Duration::from_micros(100));
            };
            let Some(answer) = answer else { continue };
            #[allow(clippy::cast_possible_truncation)]
            let low = answer as u32;
            if low & ANSWER_FAILED != 0 {
                let errno = i32::try_from(low & !ANSWER_FAILED).unwrap_or(libc::EIO);
                let e = io::Error::from_raw_os_error(errno);
                return Err(io::Error::new(
                    e.kind(),
                    format!("thread {tid} ({}): {e}", thread_name(tid)),
                ));
            }
            short = short.or(Shortfall::from_bits(low));
        }
    }
    // SAFETY: `old` is the action sigaction returned for this signal; no pointer is kept.
    syscall!(sigaction(signal, &raw const old, std::ptr::null_mut()))?;
    Ok(short.or(restrict_calling_thread(keep)?))
}

/// The signal of [`restrict_all_threads`]: the first real-time signal glibc leaves to the
/// program (it keeps the two below for itself, nptl(7)); fustian uses no other real-time
/// signal.
fn restrict_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

/// The [`Keep`] of the round under way: true for [`Keep::Sets`].
static RESTRICT_KEEPS_SETS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The last answer to the signal: the thread id in the high 32 bits, in the low ones the
/// [`Shortfall`] bits, or [`ANSWER_FAILED`] with the errno.
static RESTRICT_ANSWER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Marks an answer that carries an errno.
const ANSWER_FAILED: u32 = 1 << 31;

std::thread_local! {
    /// Set on a thread that keeps capabilities of its own ([`keep_net_caps`]), which
    /// [`restrict_all_threads`] leaves alone. A `const` `Cell` without destructor: reading it
    /// is one load, safe in a signal handler.
    static OWN_CAPS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The handler of [`restrict_signal`]: restricts the thread it interrupts and answers. Only
/// system calls and atomics (async-signal-safe, signal-safety(7)); `errno` is the interrupted
/// code's and is put back.
extern "C" fn on_restrict_signal(_: libc::c_int) {
    use std::sync::atomic::Ordering;
    // SAFETY: __errno_location takes no arguments and cannot fail.
    let slot = unsafe { libc::__errno_location() };
    // SAFETY: `slot` is the calling thread's errno, valid and aligned for the thread's life.
    let errno = unsafe { *slot };
    let low = if OWN_CAPS.get() {
        0
    } else {
        let keep = if RESTRICT_KEEPS_SETS.load(Ordering::Acquire) {
            Keep::Sets
        } else {
            Keep::Nothing
        };
        match restrict_calling_thread(keep) {
            Ok(short) => short.bits(),
            Err(e) => ANSWER_FAILED | e.raw_os_error().map_or(0, i32::unsigned_abs),
        }
    };
    let tid = u64::from(gettid().unsigned_abs());
    RESTRICT_ANSWER.store((tid << 32) | u64::from(low), Ordering::Release);
    // SAFETY: as above.
    unsafe { *slot = errno };
}

/// Installs `handler` for `signal` with `SA_RESTART` and returns the action it replaces.
fn install_handler(
    signal: libc::c_int,
    handler: extern "C" fn(libc::c_int),
) -> io::Result<libc::sigaction> {
    // SAFETY: sigaction is a plain C struct, for which all zeroes is a valid value (no
    // handler, no flags, an empty mask on Linux).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler as libc::sighandler_t;
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: as above.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; the handler is a function that lives as
    // long as the program.
    syscall!(sigaction(signal, &raw const action, &raw mut old))?;
    Ok(old)
}

/// Returns the calling thread's id.
fn gettid() -> libc::pid_t {
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    libc::pid_t::try_from(tid).unwrap_or_default()
}

/// Sends `signal` to thread `tid` of process `pid` (0: only checks that it exists).
fn tgkill(pid: libc::pid_t, tid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: tgkill takes three integers and no memory.
    syscall!(syscall(
        libc::SYS_tgkill,
        libc::c_long::from(pid),
        libc::c_long::from(tid),
        libc::c_long::from(signal)
    ))
    .map(drop)
}

/// Returns the ids of this process's threads.
fn threads() -> io::Result<Vec<libc::pid_t>> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("cannot list the threads: {e}"));
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").map_err(named)? {
        if let Some(tid) = entry
            .map_err(named)?
            .file_name()
            .to_str()
            .and_then(|n| n.parse().ok())
        {
            out.push(tid);
        }
    }
    Ok(out)
}

/// Returns the name of thread `tid` of this process, for a message.
fn thread_name(tid: libc::pid_t) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .map_or_else(|_| "?".to_owned(), |n| n.trim().to_owned())
}

/// Switches the whole process to the user `name` and its primary group, with no
/// supplementary groups (glibc applies set*id to every thread).
///
/// # Errors
///
/// `NotFound` when the user does not exist, else the failing call's error.
pub fn switch_user(name: &str) -> io::Result<()> {
    let (uid, gid) = lookup_user(name)?;
    // SAFETY: a zero-length group list with a null pointer is valid for setgroups.
    syscall!(setgroups(0, std::ptr::null()))?;
    // SAFETY: plain integer argument.
    syscall!(setgid(gid))?;
    // SAFETY: plain integer argument.
    syscall!(setuid(uid)).map(drop)
}

/// Returns this process's effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// Returns the user id and group id of user `name`, so a node can refuse an unknown `--user`
/// before it sets anything up.
///
/// # Errors
///
/// `NotFound` naming the user; `InvalidInput` for a name with a NUL byte.
pub fn lookup_user(name: &str) -> io::Result<(libc::uid_t, libc::gid_t)> {
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
    Ok((entry.pw_uid, entry.pw_gid))
}

/// `CAP_NET_ADMIN` and `CAP_NET_RAW` (include/uapi/linux/capability.h: 12 and 13), what a
/// packet-filter tool needs (nfnetlink, and the raw socket of `iptables-legacy`).
const NET_CAPS: u32 = (1 << 12) | (1 << 13);

/// Narrows the calling thread to `CAP_NET_ADMIN` and `CAP_NET_RAW`, plus `CAP_SETUID` and
/// `CAP_SETGID` until [`narrow_to_net_caps`], and arranges that it keeps them, for the tools it
/// runs, after the process drops its privileges or switches user.
///
/// Credentials are per thread (capabilities(7)), so this thread can keep them while the others
/// drop every capability. It keeps `CAP_SETUID` and `CAP_SETGID` for a while because glibc
/// applies `setgroups`/`setgid`/`setuid` to every thread of the process and aborts it when one
/// thread's call fails (nptl `__nptl_setxid`). Where the thread holds `CAP_SETPCAP` it also
/// sets `SECBIT_NOROOT` (so a child running as uid 0 gets only the ambient set, not the full
/// set root would get at `execve`) and `SECBIT_NO_SETUID_FIXUP` (a switch of user leaves its
/// sets alone), both locked, and drops every other capability from its bounding set. Without
/// `CAP_SETPCAP` the "keep capabilities" flag still keeps the permitted set across a switch of
/// user, and [`raise_net_caps_for_children`] raises the effective and ambient sets again.
/// Last it sets `no_new_privs`, and [`restrict_all_threads`] leaves the thread alone.
///
/// # Errors
///
/// The `prctl` or `capset` error.
pub(crate) fn keep_net_caps() -> io::Result<()> {
    // A thread that failed to set itself up is restricted with the others.
    let kept = keep_net_caps_unmarked();
    OWN_CAPS.set(kept.is_ok());
    kept
}

fn keep_net_caps_unmarked() -> io::Result<()> {
    // Without ambient capabilities (before 4.3) SECBIT_NOROOT stays clear: a child running as
    // root then gets what the bounding set dropped below leaves, the network capabilities.
    let noroot = if ambient_supported() {
        SECBIT_NOROOT | SECBIT_NOROOT_LOCKED
    } else {
        0
    };
    // Locked, with SECBIT_KEEP_CAPS clear (SECBIT_NO_SETUID_FIXUP already keeps the sets).
    let bits =
        noroot | SECBIT_NO_SETUID_FIXUP | SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED;
    // SAFETY: prctl with integer arguments only; PR_SET_SECUREBITS takes the new bits.
    if syscall!(prctl(libc::PR_SET_SECUREBITS, bits, Z, Z, Z)).is_ok() {
        for cap in (0..64).filter(|c: &libc::c_ulong| *c != 12 && *c != 13) {
            // SAFETY: prctl with integer arguments only; EINVAL past the last capability.
            if syscall!(prctl(libc::PR_CAPBSET_DROP, cap, Z, Z, Z)).is_err() {
                break;
            }
        }
    } else {
        // SAFETY: prctl with integer arguments only.
        syscall!(prctl(libc::PR_SET_KEEPCAPS, 1 as libc::c_ulong, Z, Z, Z))?;
    }
    set_all(capget()?[0].permitted & (NET_CAPS | SETID_CAPS))?;
    raise_net_caps_for_children()?;
    // The tools it runs get the network capabilities through the ambient set, which
    // `no_new_privs` leaves alone (they are in the thread's permitted set already); what it
    // stops is a set-user-ID or file-capability program granting more.
    // SAFETY: prctl with integer arguments only.
    syscall!(prctl(
        libc::PR_SET_NO_NEW_PRIVS,
        1 as libc::c_ulong,
        Z,
        Z,
        Z
    ))
    .map(drop)
}

/// Drops `CAP_SETUID` and `CAP_SETGID` that [`keep_net_caps`] kept: call it once the process
/// has dropped its privileges or switched user.
///
/// # Errors
///
/// The `capget`, `capset` or `prctl` error.
pub(crate) fn narrow_to_net_caps() -> io::Result<()> {
    set_all(capget()?[0].permitted & NET_CAPS)?;
    raise_net_caps_for_children()
}

/// Sets the permitted, effective and inheritable sets of the calling thread to `caps`.
fn set_all(caps: u32) -> io::Result<()> {
    capset([
        CapData {
            effective: caps,
            permitted: caps,
            inheritable: caps & NET_CAPS,
        },
        CapData::default(),
    ])
}

/// `CAP_SETGID` and `CAP_SETUID` (6 and 7).
const SETID_CAPS: u32 = (1 << 6) | (1 << 7);

/// Raises the effective, inheritable and ambient sets of the calling thread to what its
/// permitted set holds of `CAP_NET_ADMIN` and `CAP_NET_RAW`, so a child it starts now runs
/// with them, also as another user (ambient capabilities, Linux 4.3). Before 4.3 there is no
/// ambient set: a child running as root still gets them (see [`keep_net_caps`]), one running
/// as another user cannot.
///
/// # Errors
///
/// The `capget`, `capset` or `prctl` error; before 4.3, `Unsupported` when the thread no
/// longer runs as root.
pub(crate) fn raise_net_caps_for_children() -> io::Result<()> {
    let held = capget()?[0].permitted;
    let permitted = held & NET_CAPS;
    capset([
        CapData {
            effective: held,
            permitted: held,
            inheritable: permitted,
        },
        CapData::default(),
    ])?;
    if !ambient_supported() {
        // SAFETY: geteuid takes no arguments and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        return if root {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a child running as another user than root gets no capabilities before \
                 Linux 4.3 (no ambient capabilities)",
            ))
        };
    }
    for cap in [12u32, 13] {
        if permitted & (1 << cap) != 0 {
            // SAFETY: prctl with integer arguments only.
            syscall!(prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                libc::c_ulong::from(cap),
                Z,
                Z
            ))?;
        }
    }
    Ok(())
}

/// Returns true when the kernel has ambient capabilities (Linux 4.3): before, `prctl` knows no
/// `PR_CAP_AMBIENT` and fails with `EINVAL`.
fn ambient_supported() -> bool {
    // SAFETY: prctl with integer arguments only; IS_SET only reads the calling thread's set.
    syscall!(prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_IS_SET as libc::c_ulong,
        12 as libc::c_ulong,
        Z,
        Z
    ))
    .is_ok()
}

/// One 32-bit word of each capability set (`struct __user_cap_data_struct`).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `struct __user_cap_header_struct` for `_LINUX_CAPABILITY_VERSION_3` (two data words).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// Sets `IP_MTU_DISCOVER` to `IP_PMTUDISC_PROBE` on an IPv4 UDP socket (`IPV6_MTU_DISCOVER` to
/// `IPV6_PMTUDISC_PROBE` on an IPv6 one): datagrams leave with DF set (IPv6 never fragments in
/// the path) and are never fragmented locally, whatever path MTU the kernel has cached (ip(7),
/// ipv6(7), Linux 2.6.22), so a probe of a given size tests the path at that size.
///
/// # Errors
///
/// The error of `setsockopt`.
pub fn set_pmtudisc_probe(sock: &std::net::UdpSocket) -> io::Result<()> {
    let (level, name, value) = if sock.local_addr()?.is_ipv6() {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        )
    };
    // SAFETY: `value` is a c_int that outlives the call, and its size is passed alongside; the
    // descriptor is open for the duration of the borrow of `sock`.
    syscall!(setsockopt(
        sock.as_raw_fd(),
        level,
        name,
        (&raw const value).cast(),
        libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4)
    ))
    .map(drop)
}

/// An unused `prctl` argument.
const Z: libc::c_ulong = 0;

/// Returns the calling thread's capability sets.
fn capget() -> io::Result<[CapData; 2]> {
    let header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: `header` and `data` are valid and laid out for version 3 (two words); capget
    // writes only into `data`, which outlives the call.
    syscall!(syscall(
        libc::SYS_capget,
        &raw const header,
        data.as_mut_ptr()
    ))?;
    Ok(data)
}

/// Sets the calling thread's capability sets.
fn capset(data: [CapData; 2]) -> io::Result<()> {
    let header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    // SAFETY: `header` and `data` are valid and laid out for version 3 and outlive the call;
    // capset only reads them.
    syscall!(syscall(libc::SYS_capset, &raw const header, data.as_ptr())).map(drop)
}

/// The unfolded one's-complement lane sum of `data` ([`crate::wire::ip::lane_sum`]), run as a
/// build of that loop for AVX2 when the CPU has it (about twice the baseline SSE2 build's bytes
/// per cycle: `ones_sum` bench in `benches/wire.rs`), else as the baseline build.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn lane_sum(data: &[u8]) -> u64 {
    #[target_feature(enable = "avx2")]
    fn avx2(data: &[u8]) -> u64 {
        crate::wire::ip::lane_sum(data)
    }
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: `avx2` needs nothing but a CPU with AVX2, which the check above found; std
        // caches the CPUID answer, so the check is one load.
        unsafe { avx2(data) }
    } else {
        crate::wire::ip::lane_sum(data)
    }
}

/// The unfolded one's-complement lane sum of `data` (no run-time dispatch on this target).
#[cfg(not(target_arch = "x86_64"))]
#[inline]
pub(crate) fn lane_sum(data: &[u8]) -> u64 {
    crate::wire::ip::lane_sum(data)
}

/// Returns the user id of the process at the other end of a connected Unix stream socket, as the
/// kernel recorded it when that process connected (`SO_PEERCRED`; a user namespace's root shows
/// as the unprivileged user it maps to).
///
/// # Errors
///
/// The `getsockopt` error.
pub fn peer_uid(stream: &std::os::unix::net::UnixStream) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::ucred>()).unwrap_or(12);
    // SAFETY: `cred` and `len` are live locals of the sizes passed; the kernel writes at most
    // `len` bytes into `cred` and the new length into `len`.
    syscall!(getsockopt(
        stream.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_PEERCRED,
        (&raw mut cred).cast(),
        &raw mut len,
    ))?;
    Ok(cred.uid)
}

/// Returns `text` safe to print on a terminal: control characters other than newline and tab
/// (escape sequences, BEL, carriage return, C1 controls) and the bidirectional overrides are
/// written as `\u{..}` escapes. Everything printed from another process's answer (a node's
/// `/status`, an error naming what it sent) goes through this, so no answer can move the
/// cursor, retitle the terminal or hide text.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    escape_where(
        text,
        |c| c != '\n' && c != '\t',
        |c, out| out.extend(c.escape_unicode()),
    )
}

/// Returns `text` with every control character for which `control` holds, and every
/// bidirectional override, written by `escape`; borrowed when nothing needs it.
fn escape_where(
    text: &str,
    control: impl Fn(char) -> bool,
    escape: impl Fn(char, &mut String),
) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        (c.is_control() && control(c))
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            escape(c, &mut out);
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Returns `text` safe to put in one log line: what [`printable`] escapes, and newline and tab
/// too (`\n`, `\t`), so text taken from etcd, the network config or a config file can neither
/// forge a log line nor hide one.
pub fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    escape_where(text, |_| true, |c, out| out.extend(c.escape_debug()))
}

/// Returns JSON text with the characters [`printable`] escapes written as JSON escapes
/// (`\u009b`): JSON escapes C0 controls itself but not DEL, C1 controls or bidirectional
/// overrides, and in JSON text they can only stand inside strings, where the escape means the
/// same character.
pub fn printable_json(json: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !json.chars().any(|c| unsafe_char(c) && c != '\n') {
        return std::borrow::Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if unsafe_char(c) && c != '\n' {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `.NAME<suffix>` beside the file `NAME` of `path` (its temporary file, its lock).
fn hidden_sibling(path: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(
        path.file_name()
            .unwrap_or_else(|| std::ffi::OsStr::new("fustian")),
    );
    name.push(suffix);
    path.with_file_name(name)
}

/// Returns the lock file [`lock_beside`] takes for `target`: `.NAME.lock` beside it.
pub fn lock_path(target: &std::path::Path) -> std::path::PathBuf {
    hidden_sibling(target, ".lock")
}

/// Returns the temporary file [`write_atomically`] first writes for `path`: `.NAME.tmp`
/// beside it (another name only when another user holds that one).
pub fn temporary_path(path: &std::path::Path) -> std::path::PathBuf {
    hidden_sibling(path, ".tmp")
}

/// Writes `data` to `path` through a temporary file and a rename, so readers never see half
/// and a crash leaves the old file or the new one. The file is mode 0644 whatever the umask
/// and whatever was at the path before, as flanneld writes its subnet file (`renameio` with
/// the umask ignored): `docker`'s and the CNI plugin's readers need not run as root, and no
/// other local user may rewrite what the network plugin reads. The temporary file is created
/// anew (`O_EXCL`), never through a link left there, and never at a name another user holds.
///
/// # Errors
///
/// The write, sync or rename error.
pub fn write_atomically(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    const MODE: u32 = 0o644;
    let (tmp, mut file) = create_temporary(path, MODE, euid())?;
    let written = file
        .set_permissions(std::fs::Permissions::from_mode(MODE))
        .and_then(|()| file.write_all(data))
        .and_then(|()| file.sync_data());
    drop(file);
    let placed = written.and_then(|()| std::fs::rename(&tmp, path));
    if placed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    placed
}

/// Creates the temporary file of [`write_atomically`] beside `path`: `.NAME.tmp` (one name per
/// target, so a crash leaves at most one behind, removed by the next write) when it is free
/// or this user's; else, when another user holds that name, `.NAME.<pid>.<n>.tmp`.
fn create_temporary(
    path: &std::path::Path,
    mode: u32,
    euid: u32,
) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let pid = std::process::id();
    let mut last = None;
    for attempt in 0..16u32 {
        let tmp = if attempt == 0 {
            hidden_sibling(path, ".tmp")
        } else {
            hidden_sibling(path, &format!(".{pid}.{attempt}.tmp"))
        };
        match std::fs::symlink_metadata(&tmp) {
            // Another user's: not removed (it may not be ours to remove), another name is used.
            Ok(m) if m.uid() != euid => {
                last = Some(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} belongs to another user", tmp.display()),
                ));
                continue;
            }
            Ok(_) => match std::fs::remove_file(&tmp) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    last = Some(e);
                    continue;
                }
                _ => {}
            },
            Err(_) => {}
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::AlreadyExists)))
}

/// Reads a configuration file: at most `max` bytes (refused if longer), only a regular file
/// (a symbolic link to one is followed, as a mounted ConfigMap is made of them), opened
/// without blocking so a FIFO or a device at the path cannot hang the node.
///
/// # Errors
///
/// `InvalidData` for a file that is not regular, or longer than `max`, or not UTF-8; the open
/// or read error otherwise.
pub fn read_config_file(path: &std::path::Path, max: usize) -> std::io::Result<String> {
    read_bounded(path, max, false)
}

/// Reads a small file the node keeps for itself (its VTEP MAC, the subnet file it wrote
/// before): as [`read_config_file`], but a symbolic link at its name is not followed, and the
/// file must be owned by this process's user or root, since it may sit in a directory others
/// can write to.
///
/// # Errors
///
/// `NotFound` when it does not exist; `InvalidData` for a link, a file that is not regular,
/// another user's or longer than `max`; the open or read error otherwise.
pub fn read_own_small_file(path: &std::path::Path, max: usize) -> std::io::Result<String> {
    read_bounded(path, max, true)
}

/// The reader of [`read_config_file`] and, with `own`, of [`read_own_small_file`].
fn read_bounded(path: &std::path::Path, max: usize, own: bool) -> std::io::Result<String> {
    use std::io::Read as _;
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    let follow = if own { libc::O_NOFOLLOW } else { 0 };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | follow)
        .open(path)
        .map_err(|e| {
            if own && e.raw_os_error() == Some(libc::ELOOP) {
                invalid("a symbolic link, which is not followed".into())
            } else {
                e
            }
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(invalid("not a regular file".into()));
    }
    // SAFETY: geteuid takes no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if own && meta.uid() != euid && meta.uid() != 0 {
        return Err(invalid(format!(
            "owned by uid {}, not by this user or root",
            meta.uid()
        )));
    }
    let mut bytes = Vec::new();
    file.take(max as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > max {
        return Err(invalid(format!("longer than {max} bytes")));
    }
    String::from_utf8(bytes).map_err(|_| invalid("not UTF-8 text".into()))
}

/// An exclusive lock on `.NAME.lock` beside a file `NAME`, held while this value lives (the
/// kernel drops it when the process ends, however it ends).
#[derive(Debug)]
pub struct FileLock {
    _file: std::fs::File,
}

/// Why [`lock_beside`] did not take its lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("{} is in use by another node{}", .target.display(), .pid.map_or_else(String::new, |p| format!(" (pid {p})")))]
    Held {
        /// The file the lock guards.
        target: std::path::PathBuf,
        /// The holder's pid, as `/proc/locks` shows it.
        pid: Option<u32>,
    },
    /// The lock file is not a regular file of this user (someone else made it, in a directory
    /// others can write to).
    #[error(
        "{} is not a regular file of this user with one name (a link or another's file); remove it",
        .lock.display()
    )]
    Foreign {
        /// The lock file.
        lock: std::path::PathBuf,
    },
    /// The lock file cannot be opened or written.
    #[error("cannot lock {}: {source}", .lock.display())]
    Io {
        /// The lock file.
        lock: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Returns the pid holding an `flock` on the file `dev`/`ino`, from `/proc/locks`.
fn flock_holder(dev: u64, ino: u64) -> Option<u32> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open("/proc/locks")
        .ok()?
        .take(4 << 20)
        .read_to_string(&mut text)
        .ok()?;
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    text.lines().find_map(|line| {
        let (pid, maj, min, inode) = parse_lock_line(line)?;
        // Pid 0: a holder outside this process's pid namespace.
        (maj == major && min == minor && inode == ino && pid != 0).then_some(pid)
    })
}

/// Parses one held `FLOCK` line of `/proc/locks` (`1: FLOCK ADVISORY WRITE 1234 00:1a:5678 0
/// EOF`): the pid, the device's major and minor numbers, the inode. A waiter's line (`->`) or
/// any other lock gives `None`.
pub(crate) fn parse_lock_line(line: &str) -> Option<(u32, u32, u32, u64)> {
    let mut words = line.split_whitespace().skip(1);
    if words.next()? != "FLOCK" {
        return None;
    }
    let pid = words.nth(2)?.parse().ok()?;
    let mut id = words.next()?.split(':');
    let major = u32::from_str_radix(id.next()?, 16).ok()?;
    let minor = u32::from_str_radix(id.next()?, 16).ok()?;
    let inode = id.next()?.parse().ok()?;
    Some((pid, major, minor, inode))
}

/// Takes the lock that says one node writes `target` (its subnet file): `.NAME.lock` beside it,
/// created mode 0600 if missing (its directory too), never through a symbolic link, and only if
/// it is a regular file owned by this process's user; then locked (`flock`, without waiting)
/// and given this process's pid, which the next taker names when it finds it held. (Only this
/// user's file: a node takes it before it drops its privileges, so as the user who made it;
/// [`read_own_small_file`] also takes root's, as a node reads its files after the drop too.)
///
/// # Errors
///
/// [`LockError::Held`] when another process holds it, [`LockError::Foreign`] for a lock file
/// that is not this user's regular file, [`LockError::Io`] otherwise.
pub fn lock_beside(target: &std::path::Path) -> Result<FileLock, LockError> {
    use std::io::{Seek as _, Write as _};
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let lock = lock_path(target);
    let io = |source| LockError::Io {
        lock: lock.clone(),
        source,
    };
    if let Some(dir) = lock.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&lock)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                LockError::Foreign { lock: lock.clone() }
            } else {
                io(e)
            }
        })?;
    let meta = file.metadata().map_err(io)?;
    // SAFETY: geteuid takes no arguments and cannot fail.
    let euid = unsafe { libc::geteuid() };
    // A hard link (another name of some file of this user, made by whoever can write to the
    // directory) is not a lock file of the node's: it would be truncated.
    if !meta.file_type().is_file() || meta.uid() != euid || meta.nlink() != 1 {
        return Err(LockError::Foreign { lock });
    }
    // SAFETY: flock takes the open descriptor and flags, no pointers.
    if unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    } != 0
    {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io(e));
        }
        // The holder as the kernel knows it: the pid written in the file may be an earlier
        // holder's, dead since (and its number another process's now).
        return Err(LockError::Held {
            target: target.to_owned(),
            pid: flock_holder(meta.dev(), meta.ino()),
        });
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(FileLock { _file: file })
}

#[cfg(test)]
mod lock_tests {
    use super::{LockError, lock_beside, parse_lock_line, read_own_small_file};

    #[test]
    fn proc_locks_lines_give_the_holder() {
        assert_eq!(
            parse_lock_line("1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF"),
            Some((1234, 0, 0x1a, 5678))
        );
        assert_eq!(
            parse_lock_line("1: -> FLOCK  ADVISORY  WRITE 99 00:1a:5678 0 EOF"),
            None
        );
        assert_eq!(
            parse_lock_line("2: POSIX  ADVISORY  WRITE 1 fd:01:7 0 EOF"),
            None
        );
        assert_eq!(parse_lock_line(""), None);
    }

    proptest::proptest! {
        #[test]
        fn any_proc_locks_line_parses_or_not(line in "\\PC{0,80}") {
            let _ = parse_lock_line(&line);
        }
    }

    #[test]
    fn config_files_regular_and_bounded() {
        let dir = std::env::temp_dir().join(format!("fustian-conf-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("node.toml");
        std::fs::write(&file, "network = \"10.244.0.0/16\"\n").expect("write");
        let link = dir.join("link.toml");
        std::os::unix::fs::symlink(&file, &link).expect("symlink");
        assert!(
            super::read_config_file(&link, 1 << 20).is_ok(),
            "a link is followed"
        );
        let fifo = dir.join("fifo.toml");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a NUL-terminated path and a mode.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = super::read_config_file(&fifo, 1 << 20).expect_err("fifo");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e =
            super::read_config_file(std::path::Path::new("/dev/zero"), 1 << 20).expect_err("dev");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        std::fs::write(&file, vec![b'#'; 100]).expect("write");
        let e = super::read_config_file(&file, 99).expect_err("long");
        assert!(e.to_string().contains("longer than 99 bytes"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn small_own_files_only() {
        let dir = std::env::temp_dir().join(format!("fustian-small-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("mac");
        std::fs::write(&file, "0e:00:00:00:00:01\n").expect("write");
        assert_eq!(
            read_own_small_file(&file, 64).expect("read"),
            "0e:00:00:00:00:01\n"
        );
        let bad = |path: &std::path::Path| {
            read_own_small_file(path, 64)
                .expect_err("refused")
                .to_string()
        };
        std::fs::write(&file, vec![b'a'; 65]).expect("write");
        assert!(bad(&file).contains("longer than 64 bytes"));
        let link = dir.join("link");
        std::os::unix::fs::symlink(&file, &link).expect("symlink");
        assert!(bad(&link).contains("symbolic link"));
        assert!(bad(&dir).contains("not a regular file"));
        assert!(bad(std::path::Path::new("/dev/zero")).contains("not a regular file"));
        assert_eq!(
            read_own_small_file(&dir.join("missing"), 64)
                .map_err(|e| e.kind())
                .err(),
            Some(std::io::ErrorKind::NotFound)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn one_holder_at_a_time_named_by_pid() {
        let dir = std::env::temp_dir().join(format!("fustian-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let target = dir.join("subnet.env");
        let held = lock_beside(&target).expect("first");
        match lock_beside(&target) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("{other:?}"),
        }
        drop(held);
        let again = lock_beside(&target).expect("free again");
        drop(again);
        // A symbolic link at the lock's name is never followed.
        let lock = dir.join(".other.env.lock");
        std::os::unix::fs::symlink(dir.join("elsewhere"), &lock).expect("symlink");
        assert!(matches!(
            lock_beside(&dir.join("other.env")),
            Err(LockError::Foreign { .. })
        ));
        assert!(!dir.join("elsewhere").exists());
        // Nor is a hard link to another file, which would be truncated.
        let precious = dir.join("precious");
        std::fs::write(&precious, b"keep").expect("file");
        std::fs::hard_link(&precious, dir.join(".third.env.lock")).expect("hard link");
        assert!(matches!(
            lock_beside(&dir.join("third.env")),
            Err(LockError::Foreign { .. })
        ));
        assert_eq!(std::fs::read(&precious).expect("read"), b"keep");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod peer_tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::net::{UnixListener, UnixStream};

    use super::peer_uid;

    #[test]
    fn peer_uid_is_the_connecting_thread_s() {
        let dir = std::env::temp_dir().join(format!("fustian-peer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind");
        let me = std::fs::metadata(&path).expect("stat").uid();
        let _client = UnixStream::connect(&path).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        assert_eq!(peer_uid(&server).expect("peer"), me);
        if me == 0 {
            // Another user: a thread that switched its own credentials (the raw system call
            // changes only the calling thread's) connects.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
            let p = path.clone();
            let other = std::thread::spawn(move || {
                // SAFETY: setresuid takes three integers; it affects only this thread.
                let r = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
                assert_eq!(r, 0, "setresuid");
                UnixStream::connect(&p).expect("connect as nobody")
            })
            .join()
            .expect("thread");
            let (server, _) = listener.accept().expect("accept");
            assert_eq!(peer_uid(&server).expect("peer"), 65534);
            drop(other);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod file_tests {
    use std::os::unix::fs::PermissionsExt as _;

    use proptest::prelude::*;

    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("fustian-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn an_atomic_write_is_0644_whatever_the_umask_and_never_follows_a_link() {
        let dir = scratch("atomic");
        let target = dir.join("subnet.env");
        let victim = dir.join("victim");
        std::fs::write(&victim, "keep\n").expect("victim");
        // Left at the temporary name by a local user: a link to a file the writer must not
        // touch.
        std::os::unix::fs::symlink(&victim, dir.join(".subnet.env.tmp")).expect("symlink");
        // SAFETY: umask only sets the process's file creation mask; no memory is involved.
        let old = unsafe { libc::umask(0o077) };
        let written = write_atomically(&target, b"FLANNEL_MTU=1450\n");
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        written.expect("write");
        assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "keep\n");
        assert_eq!(
            std::fs::read_to_string(&target).expect("target"),
            "FLANNEL_MTU=1450\n"
        );
        let mode = std::fs::metadata(&target)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        // An existing file's mode is replaced, as flanneld replaces it.
        for (before, after) in [
            (0o600, 0o644),
            (0o640, 0o644),
            (0o666, 0o644),
            (0o4755, 0o644),
        ] {
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(before))
                .expect("chmod");
            write_atomically(&target, b"FLANNEL_MTU=1450\n").expect("rewrite");
            let mode = std::fs::metadata(&target)
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, after, "{before:o}");
        }
        // Two targets in one directory never share a temporary file.
        write_atomically(&dir.join("subnet.prom"), b"x\n").expect("second");
        assert_eq!(
            std::fs::read_to_string(&target).expect("target"),
            "FLANNEL_MTU=1450\n"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// In a directory other users may write to, what another user left at the target's name
    /// is replaced by a root-owned 0644 file, and another user's file at the temporary name is neither
    /// removed nor written through: the write takes another name.
    #[test]
    fn an_atomic_write_takes_nothing_from_another_user_s_files() {
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(
            euid(),
            0,
            "this test needs root (it gives files to another user)"
        );
        let nobody = 65534;
        let dir = scratch("atomic-others");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        let target = dir.join("subnet.env");
        std::fs::write(&target, "placeholder\n").expect("placeholder");
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let tmp = dir.join(".subnet.env.tmp");
        std::fs::write(&tmp, "theirs\n").expect("their temporary");
        for file in [&target, &tmp] {
            std::os::unix::fs::chown(file, Some(nobody), Some(nobody)).expect("chown");
        }
        write_atomically(&target, b"FLANNEL_MTU=1450\n").expect("write");
        let meta = std::fs::metadata(&target).expect("meta");
        assert_eq!(meta.uid(), 0);
        assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
        assert_eq!(
            std::fs::read_to_string(&target).expect("target"),
            "FLANNEL_MTU=1450\n"
        );
        assert_eq!(std::fs::read_to_string(&tmp).expect("theirs"), "theirs\n");
        assert_eq!(std::fs::metadata(&tmp).expect("meta").uid(), nobody);
        // Nothing of this writer's is left behind.
        let left: Vec<_> = std::fs::read_dir(&dir)
            .expect("list")
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn printable_escapes_what_a_terminal_would_obey() {
        assert_eq!(
            printable("node 10.244.1.0/24\n\tpeers"),
            "node 10.244.1.0/24\n\tpeers"
        );
        let hostile = "a\u{1b}]0;title\u{7}b\u{1b}[2Kc\rd\u{9b}e\u{202e}f\u{7f}";
        let shown = printable(hostile);
        assert!(
            !shown
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t'),
            "{shown}"
        );
        assert!(!shown.contains('\u{202e}'));
        assert!(shown.contains("\\u{1b}]0;title"), "{shown}");
    }

    #[test]
    fn printable_json_keeps_the_meaning() {
        let value = serde_json::json!({"tun": "fl\u{9b}0\u{202e}\u{7f}", "n": [1, "\u{1b}"]});
        let json = serde_json::to_string_pretty(&value).expect("json");
        let shown = printable_json(&json);
        assert!(
            !shown.chars().any(|c| c.is_control() && c != '\n'),
            "{shown}"
        );
        assert!(!shown.contains('\u{202e}'));
        let back: serde_json::Value = serde_json::from_str(&shown).expect("still JSON");
        assert_eq!(back, value);
    }

    proptest! {
        #[test]
        fn printable_output_holds_no_control_character(text in any::<String>()) {
            let risky = |c: char| (c.is_control() && c != '\n' && c != '\t')
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            let shown = printable(&text);
            let clean = !shown.chars().any(risky);
            prop_assert!(clean, "{:?}", shown);
            // Text with nothing to escape comes back unchanged.
            if !text.chars().any(risky) {
                prop_assert_eq!(shown.as_ref(), text.as_str());
            }
        }
    }
}

#[cfg(test)]
mod release_tests {
    use super::{Release, until_released_within};
    use std::time::{Duration, Instant};

    #[test]
    fn a_release_in_progress_is_waited_for() {
        let mut attempts = 0;
        let got: Result<u32, &str> = until_released_within(
            Duration::from_secs(10),
            "x",
            Duration::from_millis(1),
            || {
                attempts += 1;
                if attempts < 3 {
                    Release::Held("held")
                } else {
                    Release::Done(Ok(7))
                }
            },
        );
        assert_eq!((got, attempts), (Ok(7), 3));
    }

    #[test]
    fn a_failure_ends_the_wait_at_once() {
        let mut attempts = 0;
        let got: Result<(), &str> = until_released_within(
            Duration::from_secs(10),
            "x",
            Duration::from_millis(1),
            || {
                attempts += 1;
                Release::Done(Err("refused"))
            },
        );
        assert_eq!((got, attempts), (Err("refused"), 1));
    }

    #[test]
    fn a_release_that_does_not_come_ends_with_the_last_error_after_the_limit() {
        let wait = Duration::from_millis(30);
        let start = Instant::now();
        let mut attempts = 0u32;
        let got: Result<(), u32> =
            until_released_within(wait, "x", Duration::from_millis(1), || {
                attempts += 1;
                Release::Held(attempts)
            });
        assert!(start.elapsed() >= wait);
        assert_eq!(got, Err(attempts));
        assert!(attempts >= 2, "attempted {attempts} times");
    }
}

#[cfg(test)]
mod limit_tests {
    use super::{limit, raise_limit};

    #[test]
    fn a_limit_is_never_lowered_and_raised_up_to_what_is_allowed() {
        let before = limit(libc::RLIMIT_NOFILE).expect("getrlimit");
        let after = raise_limit(libc::RLIMIT_NOFILE, Some(1)).expect("raise");
        assert_eq!(after, before, "a lower want changes nothing");
        // Up to the hard value any process may go.
        let after = raise_limit(libc::RLIMIT_NOFILE, before.hard).expect("raise");
        assert_eq!(after.soft, before.hard);
    }
}

#[cfg(test)]
mod privilege_tests {
    use super::{
        Keep, NET_CAPS, SECBIT_KEEP_CAPS_LOCKED, SECBIT_NO_SETUID_FIXUP,
        SECBIT_NO_SETUID_FIXUP_LOCKED, SECBIT_NOROOT, SECBIT_NOROOT_LOCKED, Z, capget,
        keep_net_caps, narrow_to_net_caps, restrict_calling_thread,
    };

    /// CAP_SETPCAP (8), which the securebits and the bounding set need.
    const SETPCAP: u32 = 1 << 8;

    /// The calling thread's securebits.
    fn securebits() -> libc::c_ulong {
        // SAFETY: prctl with integer arguments only.
        let bits = syscall!(prctl(libc::PR_GET_SECUREBITS, Z, Z, Z, Z)).expect("securebits");
        libc::c_ulong::try_from(bits).expect("not negative")
    }

    /// Runs `cat /proc/self/status` from the calling thread and returns the child's numeric
    /// fields (the capability sets read as hexadecimal).
    fn child_status() -> Vec<(String, u64)> {
        let out = std::process::Command::new("cat")
            .arg("/proc/self/status")
            .output()
            .expect("cat runs");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                let radix = if k.starts_with("Cap") { 16 } else { 10 };
                Some((k.to_owned(), u64::from_str_radix(v.trim(), radix).ok()?))
            })
            .collect()
    }

    fn field(status: &[(String, u64)], name: &str) -> u64 {
        status
            .iter()
            .find(|(k, _)| k == name)
            .unwrap_or_else(|| panic!("no {name} in {status:?}"))
            .1
    }

    /// Runs `f` on a thread of its own: what it does to its credentials stays there.
    fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f).join().expect("thread")
    }

    #[test]
    fn a_restricted_thread_and_what_it_runs_get_no_capability_back() {
        let (privileged, short, bits, child) = on_thread(|| {
            let privileged = capget().expect("capget")[0].effective & SETPCAP != 0;
            let short = restrict_calling_thread(Keep::Nothing).expect("restrict");
            (privileged, short, securebits(), child_status())
        });
        // A program run as root would get root's full set at execve without SECBIT_NOROOT,
        // the bounding set and no_new_privs; it gets nothing.
        for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
            assert_eq!(field(&child, set), 0, "{set}: {child:?}");
        }
        assert_eq!(field(&child, "NoNewPrivs"), 1, "{child:?}");
        if privileged {
            assert!(short.is_none(), "{short:?}");
            let want = SECBIT_NOROOT
                | SECBIT_NOROOT_LOCKED
                | SECBIT_NO_SETUID_FIXUP_LOCKED
                | SECBIT_KEEP_CAPS_LOCKED;
            assert_eq!(bits, want, "securebits {bits:#x}");
            assert_eq!(field(&child, "CapBnd"), 0, "{child:?}");
        } else {
            assert!(short.securebits, "{short:?}");
        }
    }

    #[test]
    fn restricting_a_thread_again_changes_and_fails_nothing() {
        let (first, second, bits) = on_thread(|| {
            let first = restrict_calling_thread(Keep::Nothing).expect("restrict");
            let bits = securebits();
            let second = restrict_calling_thread(Keep::Nothing).expect("again");
            assert_eq!(securebits(), bits);
            (first, second, bits)
        });
        assert_eq!(first, second, "securebits {bits:#x}");
    }

    #[test]
    fn a_thread_keeping_its_sets_loses_them_when_it_leaves_root() {
        if crate::sys::euid() != 0 {
            eprintln!("a_thread_keeping_its_sets_loses_them_when_it_leaves_root: needs root");
            return;
        }
        let (kept, after) = on_thread(|| {
            restrict_calling_thread(Keep::Sets).expect("restrict");
            let kept = capget().expect("capget")[0];
            // The raw system call changes only this thread's user ids (glibc's setresuid would
            // change every thread's).
            // SAFETY: setresuid takes three integers and no memory.
            let r = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
            assert_eq!(r, 0, "setresuid");
            (kept, capget().expect("capget")[0])
        });
        assert_ne!(kept.permitted, 0, "root's sets kept until the switch");
        assert_eq!(
            (after.effective, after.permitted, after.inheritable),
            (0, 0, 0),
            "the switch of user cleared them"
        );
    }

    #[test]
    fn the_masquerade_thread_s_tools_get_the_network_capabilities_and_no_more() {
        if crate::sys::euid() != 0 {
            eprintln!(
                "the_masquerade_thread_s_tools_get_the_network_capabilities_and_no_more: \
                 needs root"
            );
            return;
        }
        let (bits, child) = on_thread(|| {
            keep_net_caps().expect("keep");
            narrow_to_net_caps().expect("narrow");
            (securebits(), child_status())
        });
        let net = u64::from(NET_CAPS);
        // no_new_privs leaves the ambient set alone.
        assert_eq!(field(&child, "NoNewPrivs"), 1, "{child:?}");
        assert_eq!(field(&child, "CapEff"), net, "{child:?}");
        assert_eq!(field(&child, "CapAmb"), net, "{child:?}");
        assert_eq!(field(&child, "CapBnd") & !net, 0, "{child:?}");
        let locked = SECBIT_NOROOT
            | SECBIT_NOROOT_LOCKED
            | SECBIT_NO_SETUID_FIXUP
            | SECBIT_NO_SETUID_FIXUP_LOCKED
            | SECBIT_KEEP_CAPS_LOCKED;
        assert_eq!(bits, locked, "securebits {bits:#x}");
    }
}
