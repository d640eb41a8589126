//! Emulated kernel profiles: seccomp filters that make this kernel refuse, at the system-call
//! boundary, what an older x86_64 kernel did not have, the way that kernel refuses it.
//!
//! A profile for release `X.Y` answers
//! - every system call added after `X.Y` with `ENOSYS` (the table in `kernel-syscalls.txt`,
//!   with its sources at its top);
//! - `setsockopt`/`getsockopt(SOL_UDP, UDP_SEGMENT)` before 4.18 and `(SOL_UDP, UDP_GRO)`
//!   before 5.0 with `ENOPROTOOPT` (`udp_lib_setsockopt`/`udp_lib_getsockopt` fall through to
//!   their default case there);
//! - `ioctl(TUNSETOFFLOAD)` asking for `TUN_F_USO4`/`TUN_F_USO6` before 6.2 with `EINVAL`
//!   (`set_offload` in drivers/net/tun.c rejects unknown bits); the argument is the flags value
//!   itself, so a masked compare sees it;
//! - `prctl(PR_CAP_AMBIENT)` before 4.3 with `EINVAL` (unknown option);
//! - `io_uring_register` opcodes the kernel did not have, and the `IORING_REGISTER_USE_
//!   REGISTERED_RING` bit before 6.3, with `EINVAL`; `io_uring_enter` flags it did not have
//!   with `EINVAL` (include/uapi/linux/io_uring.h and the release each value appeared in).
//!
//! These are the calls of fustian (and of the C library under it) whose answer depends on the
//! release; the other options and flags it uses (`IFF_MULTI_QUEUE` 3.8, `SO_REUSEPORT` 3.9,
//! `IFF_VNET_HDR` and TSO 2.6.27, `SO_*BUFFORCE`, `IP_PMTUDISC_*`, `recvmmsg`/`sendmmsg`,
//! `setns`) predate 3.10, the oldest profile.
//!
//! What a filter cannot see is not emulated: anything passed in memory (the flags inside
//! `io_uring_params`, the operations inside submission queue entries, `TUNSETIFF`'s `ifreq`,
//! control messages), what the kernel reports back (the io_uring probe, feature bits,
//! `uname`; the netns tests put the profile's release in `/proc/sys/kernel/osrelease`, which
//! fustian reads, with a bind mount), and behaviour that is not a refused call.
//!
//! The programs are compiled before `fork`; the child only installs them (no allocation
//! between `fork` and `exec`). They are inherited across `exec`, so `ip netns exec` and then
//! the node run under them.

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// A kernel release, `major.minor.patch` (patch 0 for a profile).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Version(pub(crate) u32, pub(crate) u32, pub(crate) u32);

impl Version {
    /// Parses `X.Y` or `X.Y.Z`.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split('.').map(str::parse::<u32>);
        let major = parts.next()?.ok()?;
        let minor = parts.next()?.ok()?;
        let patch = match parts.next() {
            Some(p) => p.ok()?,
            None => 0,
        };
        parts.next().is_none().then_some(Self(major, minor, patch))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.2 == 0 {
            write!(f, "{}.{}", self.0, self.1)
        } else {
            write!(f, "{}.{}.{}", self.0, self.1, self.2)
        }
    }
}

/// Shorthand for a profile's version.
const fn v(major: u32, minor: u32) -> Version {
    Version(major, minor, 0)
}

/// One system call of the table.
#[derive(Clone, Debug)]
pub(crate) struct Syscall {
    /// x86_64 number.
    pub(crate) nr: i64,
    /// Name in the kernel's table.
    pub(crate) name: String,
    /// The release that added it.
    pub(crate) added: Version,
}

/// The table of `kernel-syscalls.txt`.
const TABLE: &str = include_str!("kernel-syscalls.txt");

/// Parses `kernel-syscalls.txt`; a malformed line is an error naming it.
pub(crate) fn syscalls() -> Result<Vec<Syscall>, String> {
    let mut out = Vec::new();
    for (n, line) in TABLE.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let parsed = match fields.as_slice() {
            [nr, name, added] => {
                nr.parse::<i64>()
                    .ok()
                    .zip(Version::parse(added))
                    .map(|(nr, added)| Syscall {
                        nr,
                        name: (*name).to_owned(),
                        added,
                    })
            }
            _ => None,
        };
        out.push(parsed.ok_or_else(|| format!("kernel-syscalls.txt:{}: {line:?}", n + 1))?);
    }
    Ok(out)
}

/// `SOL_UDP` (include/linux/socket.h).
const SOL_UDP: u64 = 17;
/// Socket options of `SOL_UDP` with the release that added them (include/uapi/linux/udp.h).
const UDP_OPTIONS: [(u64, &str, Version); 2] =
    [(103, "UDP_SEGMENT", v(4, 18)), (104, "UDP_GRO", v(5, 0))];
/// `TUNSETOFFLOAD` = `_IOW('T', 208, unsigned int)` (include/uapi/linux/if_tun.h).
const TUNSETOFFLOAD: u64 = 0x4004_54d0;
/// `TUN_F_USO4` and `TUN_F_USO6`, Linux 6.2.
const TUN_F_USO: [u64; 2] = [0x20, 0x40];
/// `PR_CAP_AMBIENT`, Linux 4.3 (include/uapi/linux/prctl.h).
const PR_CAP_AMBIENT: u64 = 47;
/// `io_uring_register` opcodes with the release that added them (include/uapi/linux/io_uring.h).
const IORING_REGISTER: [(u64, Version); 35] = [
    (0, v(5, 1)),   // REGISTER_BUFFERS
    (1, v(5, 1)),   // UNREGISTER_BUFFERS
    (2, v(5, 1)),   // REGISTER_FILES
    (3, v(5, 1)),   // UNREGISTER_FILES
    (4, v(5, 2)),   // REGISTER_EVENTFD
    (5, v(5, 2)),   // UNREGISTER_EVENTFD
    (6, v(5, 5)),   // REGISTER_FILES_UPDATE
    (7, v(5, 6)),   // REGISTER_EVENTFD_ASYNC
    (8, v(5, 6)),   // REGISTER_PROBE
    (9, v(5, 6)),   // REGISTER_PERSONALITY
    (10, v(5, 6)),  // UNREGISTER_PERSONALITY
    (11, v(5, 10)), // REGISTER_RESTRICTIONS
    (12, v(5, 10)), // REGISTER_ENABLE_RINGS
    (13, v(5, 13)), // REGISTER_FILES2
    (14, v(5, 13)), // REGISTER_FILES_UPDATE2
    (15, v(5, 13)), // REGISTER_BUFFERS2
    (16, v(5, 13)), // REGISTER_BUFFERS_UPDATE
    (17, v(5, 14)), // REGISTER_IOWQ_AFF
    (18, v(5, 14)), // UNREGISTER_IOWQ_AFF
    (19, v(5, 15)), // REGISTER_IOWQ_MAX_WORKERS
    (20, v(5, 18)), // REGISTER_RING_FDS
    (21, v(5, 18)), // UNREGISTER_RING_FDS
    (22, v(5, 19)), // REGISTER_PBUF_RING
    (23, v(5, 19)), // UNREGISTER_PBUF_RING
    (24, v(6, 0)),  // REGISTER_SYNC_CANCEL
    (25, v(6, 0)),  // REGISTER_FILE_ALLOC_RANGE
    (26, v(6, 8)),  // REGISTER_PBUF_STATUS
    (27, v(6, 9)),  // REGISTER_NAPI
    (28, v(6, 9)),  // UNREGISTER_NAPI
    (29, v(6, 12)), // REGISTER_CLOCK
    (30, v(6, 12)), // REGISTER_CLONE_BUFFERS
    (31, v(6, 13)), // REGISTER_SEND_MSG_RING
    (32, v(6, 15)), // REGISTER_ZCRX_IFQ
    (33, v(6, 13)), // REGISTER_RESIZE_RINGS
    (34, v(6, 13)), // REGISTER_MEM_REGION
];
/// `IORING_REGISTER_USE_REGISTERED_RING`, a bit of the opcode argument, Linux 6.3.
const IORING_REGISTER_USE_REGISTERED_RING: (u64, Version) = (1 << 31, v(6, 3));
/// The opcode without [`IORING_REGISTER_USE_REGISTERED_RING`].
const OPCODE_MASK: u64 = 0x7fff_ffff;
/// `io_uring_enter` flags with the release that added them.
const IORING_ENTER: [(u64, Version); 8] = [
    (1 << 0, v(5, 1)),  // GETEVENTS
    (1 << 1, v(5, 1)),  // SQ_WAKEUP
    (1 << 2, v(5, 10)), // SQ_WAIT
    (1 << 3, v(5, 11)), // EXT_ARG
    (1 << 4, v(5, 18)), // REGISTERED_RING
    (1 << 5, v(6, 12)), // ABS_TIMER
    (1 << 6, v(6, 13)), // EXT_ARG_REG
    (1 << 7, v(6, 15)), // NO_IOWAIT
];
/// io_uring's three calls, Linux 5.1.
const IO_URING: Version = v(5, 1);

/// The compiled filters of one profile, shared by every process started under it.
#[derive(Clone)]
pub(crate) struct Profile {
    /// The emulated release.
    pub(crate) version: Version,
    programs: Arc<Vec<BpfProgram>>,
}

impl fmt::Debug for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Profile({})", self.version)
    }
}

impl Profile {
    /// Compiles the filters of `version`.
    pub(crate) fn new(version: Version) -> Result<Self, String> {
        let table = syscalls()?;
        let nr = |name: &str| {
            table
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.nr)
                .ok_or_else(|| format!("{name} is missing from kernel-syscalls.txt"))
        };
        let mut enosys: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for s in table.iter().filter(|s| s.added > version) {
            enosys.insert(s.nr, Vec::new());
        }

        let mut enoprotoopt: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        let udp: Vec<SeccompRule> = UDP_OPTIONS
            .iter()
            .filter(|(_, _, added)| *added > version)
            .map(|(opt, _, _)| rule(&[(1, SOL_UDP, u64::MAX), (2, *opt, u64::MAX)]))
            .collect::<Result<_, _>>()?;
        if !udp.is_empty() {
            enoprotoopt.insert(nr("setsockopt")?, udp.clone());
            enoprotoopt.insert(nr("getsockopt")?, udp);
        }

        let mut einval: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        if version < v(6, 2) {
            let uso = TUN_F_USO
                .iter()
                .map(|bit| rule(&[(1, TUNSETOFFLOAD, u64::MAX), (2, *bit, *bit)]))
                .collect::<Result<_, _>>()?;
            einval.insert(nr("ioctl")?, uso);
        }
        if version < v(4, 3) {
            einval.insert(nr("prctl")?, vec![rule(&[(0, PR_CAP_AMBIENT, u64::MAX)])?]);
        }
        if version >= IO_URING {
            let mut register = IORING_REGISTER
                .iter()
                .filter(|(_, added)| *added > version)
                .map(|(op, _)| rule(&[(1, *op, OPCODE_MASK)]))
                .collect::<Result<Vec<_>, _>>()?;
            let (bit, added) = IORING_REGISTER_USE_REGISTERED_RING;
            if added > version {
                register.push(rule(&[(1, bit, bit)])?);
            }
            if !register.is_empty() {
                einval.insert(nr("io_uring_register")?, register);
            }
            let enter = IORING_ENTER
                .iter()
                .filter(|(_, added)| *added > version)
                .map(|(bit, _)| rule(&[(3, *bit, *bit)]))
                .collect::<Result<Vec<_>, _>>()?;
            if !enter.is_empty() {
                einval.insert(nr("io_uring_enter")?, enter);
            }
        }

        // The ENOSYS program goes last: in profiles before 3.17 it refuses `seccomp(2)`
        // itself, which installs the others.
        let mut programs = Vec::new();
        for (errno, rules) in [
            (libc::EINVAL, einval),
            (libc::ENOPROTOOPT, enoprotoopt),
            (libc::ENOSYS, enosys),
        ] {
            if rules.is_empty() {
                continue;
            }
            let filter = SeccompFilter::new(
                rules,
                SeccompAction::Allow,
                SeccompAction::Errno(errno.unsigned_abs()),
                TargetArch::x86_64,
            )
            .map_err(|e| format!("profile {version}: {e}"))?;
            let program: BpfProgram = filter
                .try_into()
                .map_err(|e| format!("profile {version}: {e}"))?;
            programs.push(program);
        }
        Ok(Self {
            version,
            programs: Arc::new(programs),
        })
    }

    /// Makes `cmd` install the profile's filters in the child, between `fork` and `exec`.
    pub(crate) fn confine(&self, cmd: &mut Command) {
        let programs = Arc::clone(&self.programs);
        // SAFETY: the closure runs in the child between `fork` and `exec`. It only reads the
        // programs compiled before the fork and makes the `prctl` and `seccomp` system calls
        // through `seccompiler::apply_filter`, which neither allocates nor takes a lock, so it
        // is async-signal-safe as `pre_exec` requires.
        unsafe {
            cmd.pre_exec(move || {
                for program in programs.iter() {
                    seccompiler::apply_filter(program).map_err(|e| match e {
                        seccompiler::Error::Prctl(e) | seccompiler::Error::Seccomp(e) => e,
                        _ => std::io::Error::from_raw_os_error(libc::EINVAL),
                    })?;
                }
                Ok(())
            });
        }
    }
}

/// A rule matching when every `(argument, value, mask)` holds: `argument & mask == value`
/// (`u64::MAX` as the mask is plain equality). Only the low 32 bits are compared: every
/// argument matched here is a C `int` or `unsigned int` to the kernel (an `ioctl` command too).
fn rule(conditions: &[(u8, u64, u64)]) -> Result<SeccompRule, String> {
    let conditions = conditions
        .iter()
        .map(|&(arg, value, mask)| {
            let op = if mask == u64::MAX {
                SeccompCmpOp::Eq
            } else {
                SeccompCmpOp::MaskedEq(mask)
            };
            SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    SeccompRule::new(conditions).map_err(|e| e.to_string())
}

/// The calls [`probe_calls`] makes: name, the release from which the kernel answers it
/// normally, the errno a profile of an older kernel answers with, and the errno the host
/// answers with (0: success). The host answers are those of a kernel from 6.2 on.
pub(crate) const PROBES: [(&str, Version, i32, i32); 11] = [
    ("getrandom", v(3, 17), libc::ENOSYS, 0),
    ("statx", v(4, 11), libc::ENOSYS, 0),
    ("close_range", v(5, 9), libc::ENOSYS, 0),
    ("prctl_cap_ambient", v(4, 3), libc::EINVAL, 0),
    ("getsockopt_udp_segment", v(4, 18), libc::ENOPROTOOPT, 0),
    ("setsockopt_udp_gro", v(5, 0), libc::ENOPROTOOPT, 0),
    // An fd not attached to a device answers every TUNSETOFFLOAD with EBADFD, unless the
    // filter answers first: only the USO bits are refused.
    ("tunsetoffload_csum", v(2, 6), libc::EINVAL, libc::EBADFD),
    ("tunsetoffload_uso", v(6, 2), libc::EINVAL, libc::EBADFD),
    ("io_uring_setup", IO_URING, libc::ENOSYS, 0),
    // With an argument at an unmapped address the kernel answers EFAULT, the profile EINVAL.
    ("io_uring_register_probe", v(5, 6), libc::EINVAL, 0),
    (
        "io_uring_register_pbuf_ring",
        v(5, 19),
        libc::EINVAL,
        libc::EFAULT,
    ),
];

/// Returns what a process running under `version` must see from [`probe_calls`]: the io_uring
/// calls after `io_uring_setup` only where the ring exists.
pub(crate) fn expected_probes(version: Version) -> Vec<(&'static str, i32)> {
    PROBES
        .iter()
        .filter(|(name, ..)| !name.starts_with("io_uring_register") || version >= IO_URING)
        .map(|&(name, added, refused, ok)| (name, if version < added { refused } else { ok }))
        .collect()
}

/// Makes each call of [`PROBES`] directly (no C library fallback in between) and returns its
/// errno (0: success).
pub(crate) fn probe_calls() -> Vec<(&'static str, i32)> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    let errno = |r: libc::c_long| {
        if r < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        } else {
            0
        }
    };
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    // SAFETY: getrandom writes at most 1 byte into `buf`.
    let r = unsafe { libc::syscall(libc::SYS_getrandom, buf.as_mut_ptr(), 1, 0) };
    out.push(("getrandom", errno(r)));
    // SAFETY: the path is a NUL-terminated string and `buf` has room for a `struct statx`
    // (256 bytes).
    let r = unsafe {
        libc::syscall(
            libc::SYS_statx,
            libc::AT_FDCWD,
            c"/".as_ptr(),
            0,
            libc::STATX_BASIC_STATS,
            buf.as_mut_ptr(),
        )
    };
    out.push(("statx", errno(r)));
    // SAFETY: closes descriptors no process of this test holds (none that high).
    let r = unsafe { libc::syscall(libc::SYS_close_range, 1_000_000, 1_000_000, 0) };
    out.push(("close_range", errno(r)));
    // SAFETY: prctl with integer arguments only; IS_SET reads the thread's ambient set.
    let r = unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_IS_SET, 12, 0, 0) };
    out.push(("prctl_cap_ambient", errno(r.into())));

    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
    let mut value: libc::c_int = 1;
    let mut len = libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("fits");
    // SAFETY: `value` and `len` outlive the call and `len` holds the size of `value`.
    let r = unsafe {
        libc::getsockopt(
            udp.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    out.push(("getsockopt_udp_segment", errno(r.into())));
    // SAFETY: `value` is a c_int that outlives the call and its size is passed alongside.
    let r = unsafe {
        libc::setsockopt(
            udp.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&raw const value).cast(),
            len,
        )
    };
    out.push(("setsockopt_udp_gro", errno(r.into())));

    // SAFETY: the path is a NUL-terminated string; the fd is owned on the next line.
    let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    assert!(
        raw >= 0,
        "open /dev/net/tun: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `raw` is a new descriptor nothing else owns.
    let tun = unsafe { OwnedFd::from_raw_fd(raw) };
    for (name, flags) in [
        ("tunsetoffload_csum", 0x01),
        ("tunsetoffload_uso", 0x01 | TUN_F_USO[0]),
    ] {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let r = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETOFFLOAD as libc::Ioctl, flags) };
        out.push((name, errno(r.into())));
    }

    // `struct io_uring_params` is 120 bytes; `buf` is zeroed, so no setup flags.
    buf.fill(0);
    // SAFETY: the kernel reads and writes the 120 bytes of `io_uring_params` in `buf`.
    let r = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4, buf.as_mut_ptr()) };
    out.push(("io_uring_setup", errno(r)));
    if let Ok(fd) = i32::try_from(r)
        && fd >= 0
    {
        // SAFETY: `fd` is the new ring nothing else owns.
        let ring = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut probe = [0u8; 16 + 8 * 64];
        // SAFETY: the probe has room for its 16-byte header and 64 opcode entries.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                ring.as_raw_fd(),
                8,
                probe.as_mut_ptr(),
                64,
            )
        };
        out.push(("io_uring_register_probe", errno(r)));
        // SAFETY: the argument is an address no mapping holds (page 0): the kernel's copy
        // from it fails with EFAULT and no memory of this process is touched.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                ring.as_raw_fd(),
                22,
                std::ptr::without_provenance::<u8>(8),
                1,
            )
        };
        out.push(("io_uring_register_pbuf_ring", errno(r)));
    }
    out
}
