//! One node per underlay address and port.
//!
//! The workers of a node share its port through `SO_REUSEPORT`, and the kernel lets any
//! process of the same user join such a group (Linux 3.9 `net/ipv4/inet_connection_sock.c`:
//! same uid and every socket with the option). A second node started on the same address and
//! port would therefore start without an error and receive part of the flows. Two checks stop
//! it:
//!
//! - a claim: an abstract Unix socket named `fustian-udp-<ip>:<port>`, bound before the UDP
//!   sockets and held for the node's lifetime. Abstract names live in the network namespace
//!   (`unix(7)`), as the UDP port does, and go away with the last fd, on a crash too. A second
//!   fustian fails to bind the name and stops.
//! - after binding, `/proc/net/udp` (or `udp6`) must list no socket on the address and port
//!   but this node's own; this catches any other program sharing the port with
//!   `SO_REUSEPORT`.
//!
//! Either way the error names the other process when `/proc/<pid>/fd` shows who holds the
//! socket. Local users who bind the port or the claim's name first stop the node from
//! starting (the port alone was always enough for that); they cannot join a running node's
//! port, whose sockets belong to root.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixDatagram;

/// The claim on one address and port; released when dropped.
#[derive(Debug)]
pub struct PortClaim {
    _socket: UnixDatagram,
}

impl PortClaim {
    /// Claims `addr` for this process.
    ///
    /// # Errors
    ///
    /// `AddrInUse` with the holder in the message when another process holds the claim; the
    /// socket or bind error otherwise.
    pub fn take(addr: SocketAddr) -> io::Result<Self> {
        Self::take_named(&claim_name(addr))
    }

    /// Claims the abstract name `name` for this process (a TUN device's,
    /// `fustian-tun-<device>`, say).
    ///
    /// # Errors
    ///
    /// As [`Self::take`].
    pub fn take_named(name: &str) -> io::Result<Self> {
        let unix = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        match UnixDatagram::bind_addr(&unix) {
            Ok(socket) => Ok(Self { _socket: socket }),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("already served by {}", describe(&named_holders(name))),
            )),
            Err(e) => Err(e),
        }
    }
}

/// Returns the processes holding the abstract socket `name` (at most 8).
pub(crate) fn named_holders(name: &str) -> Vec<(u32, String)> {
    let inodes = proc_lines("/proc/net/unix")
        .iter()
        .filter_map(|l| parse_unix_line(l))
        .filter(|(path, _)| path.strip_prefix('@') == Some(name))
        .map(|(_, inode)| inode)
        .collect::<Vec<_>>();
    owners(&inodes)
}

/// Returns the user id process `pid` runs as (its `/proc` directory's owner).
pub(crate) fn uid_of(pid: u32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(format!("/proc/{pid}"))
        .ok()
        .map(|m| m.uid())
}

/// Returns the processes (at most 8) with a queue of TUN device `name` open: an fd whose
/// `fdinfo` says `iff:` and the name (Linux 3.x, `tun_chr_show_fdinfo`).
pub(crate) fn tun_holders(name: &str) -> Vec<(u32, String)> {
    let want = format!("iff:\t{name}\n");
    processes_where(|dir| {
        std::fs::read_dir(dir.join("fdinfo")).is_ok_and(|fds| {
            fds.flatten()
                .any(|fd| std::fs::read_to_string(fd.path()).is_ok_and(|info| info.contains(&want)))
        })
    })
}

/// Returns the name of the claim on `addr`.
pub(crate) fn claim_name(addr: SocketAddr) -> String {
    format!("fustian-udp-{addr}")
}

/// Returns the inodes of the UDP sockets bound to exactly `addr` in this network namespace.
pub(crate) fn udp_inodes(addr: SocketAddr) -> Vec<u64> {
    udp_inodes_where(addr, |local| local == addr)
}

/// Returns the inodes of the sockets whose bind keeps one on `addr` from binding: those on
/// `addr` itself, and those on the wildcard address of its family and its port.
pub(crate) fn udp_inodes_blocking(addr: SocketAddr) -> Vec<u64> {
    udp_inodes_where(addr, |local| {
        local.port() == addr.port() && (local.ip() == addr.ip() || local.ip().is_unspecified())
    })
}

/// Returns the inodes of the UDP sockets of `addr`'s family whose local address passes `keep`.
fn udp_inodes_where(addr: SocketAddr, keep: impl Fn(SocketAddr) -> bool) -> Vec<u64> {
    let table = if addr.is_ipv4() {
        "/proc/net/udp"
    } else {
        "/proc/net/udp6"
    };
    proc_lines(table)
        .iter()
        .filter_map(|l| parse_udp_line(l))
        .filter(|&(local, _)| keep(local))
        .map(|(_, inode)| inode)
        .collect()
}

/// Returns the socket inode behind `fd` of this process.
pub(crate) fn inode_of(fd: std::os::fd::RawFd) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(format!("/proc/self/fd/{fd}")).map(|m| m.ino())
}

/// Returns "pid N (name)" for each process holding one of `inodes`, or says none was found.
///
/// The name is the holder's own (`/proc/PID/comm`, which any process sets with `prctl`), so it
/// is escaped onto one line ([`crate::sys::one_line`]): a holder named `x\nERROR ...` cannot
/// forge a log line.
pub(crate) fn describe(owners: &[(u32, String)]) -> String {
    if owners.is_empty() {
        return "another process (not found in /proc)".to_owned();
    }
    owners
        .iter()
        .map(|(pid, comm)| format!("pid {pid} ({})", crate::sys::one_line(comm)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Returns the processes (pid, command name) with an fd on a socket in `inodes`, at most 8.
pub(crate) fn owners(inodes: &[u64]) -> Vec<(u32, String)> {
    if inodes.is_empty() {
        return Vec::new();
    }
    processes_where(|dir| {
        std::fs::read_dir(dir.join("fd")).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|target| {
                    parse_socket_link(&target.to_string_lossy())
                        .is_some_and(|i| inodes.contains(&i))
                })
            })
        })
    })
}

/// Returns the processes other than this one (pid, command name; at most 8) whose `/proc`
/// directory passes `holds`.
fn processes_where(mut holds: impl FnMut(&std::path::Path) -> bool) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || !holds(&entry.path()) {
            continue;
        }
        let comm = std::fs::read_to_string(entry.path().join("comm"))
            .map(|c| c.trim().to_owned())
            .unwrap_or_default();
        found.push((pid, comm));
        if found.len() >= 8 {
            break;
        }
    }
    found
}

/// Sums the `drops` column (the socket's `sk_drops`: datagrams the kernel dropped because the
/// receive buffer was full, or that failed their checksum) of the sockets `inodes` in the
/// calling thread's network namespace's UDP tables.
pub(crate) fn socket_drops(inodes: &[u64]) -> u64 {
    ["/proc/thread-self/net/udp", "/proc/thread-self/net/udp6"]
        .into_iter()
        .flat_map(proc_lines)
        .filter_map(|l| parse_udp_drops(&l))
        .filter(|(inode, _)| inodes.contains(inode))
        .fold(0u64, |sum, (_, drops)| sum.wrapping_add(drops))
}

/// The inode and `drops` column of one line of `/proc/net/udp` or `/proc/net/udp6`: after
/// the inode come the reference count, the socket's address and the drops.
pub(crate) fn parse_udp_drops(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    let inode = fields.nth(9)?.parse().ok()?;
    let drops = fields.nth(2)?.parse().ok()?;
    Some((inode, drops))
}

/// Returns the lines of a `/proc/net` table after its header (none when it cannot be read).
fn proc_lines(path: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().skip(1).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Parses the local address and inode of one line of `/proc/net/udp` or `/proc/net/udp6`
/// (`net/ipv4/udp.c` `udp4_format_sock`, `net/ipv6/datagram.c` `__ip6_dgram_sock_seq_show`):
/// `sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode`.
/// Addresses are the raw network-order words printed as native `%08X`, the port `%04X`.
pub(crate) fn parse_udp_line(line: &str) -> Option<(SocketAddr, u64)> {
    let mut fields = line.split_whitespace();
    let local = fields.nth(1)?;
    let inode = fields.nth(7)?.parse().ok()?;
    let (ip_hex, port_hex) = local.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let ip = match ip_hex.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(ip_hex)?.to_ne_bytes())),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(ip_hex.get(i * 8..i * 8 + 8)?)?.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some((SocketAddr::new(ip, port), inode))
}

fn word(hex: &str) -> Option<u32> {
    if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

/// Parses the inode and path of one line of `/proc/net/unix` (`net/unix/af_unix.c`
/// `unix_seq_show`): `Num RefCount Protocol Flags Type St Inode Path`, abstract paths start
/// with `@`.
pub(crate) fn parse_unix_line(line: &str) -> Option<(&str, u64)> {
    let mut fields = line.split_whitespace();
    let inode = fields.nth(6)?.parse().ok()?;
    let path = fields.next()?;
    Some((path, inode))
}

/// Parses the inode of an fd link `socket:[N]`.
pub(crate) fn parse_socket_link(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn describe_escapes_holder_names() {
        let text = describe(&[(42, "x\nERROR forged".to_owned()), (7, "plain".to_owned())]);
        assert_eq!(text, "pid 42 (x\\nERROR forged), pid 7 (plain)");
        assert!(!text.contains('\n'));
        assert_eq!(
            describe(&[(9, "a\u{1b}[2Jb\r".to_owned())]),
            "pid 9 (a\\u{1b}[2Jb\\r)"
        );
    }

    #[test]
    fn reads_udp_lines() {
        // Captured from /proc/net/udp and /proc/net/udp6 on x86-64 (little-endian).
        let v4 = "  127: 010200C0:2063 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 90123 2 0000000000000000 0";
        assert_eq!(
            parse_udp_line(v4),
            Some(("192.0.2.1:8291".parse().expect("addr"), 90123))
        );
        let v6 = "  512: B80D0120000000000000000001000000:2063 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 0";
        assert_eq!(
            parse_udp_line(v6),
            Some(("[2001:db8::1]:8291".parse().expect("addr"), 4242))
        );
        assert_eq!(parse_udp_drops(v4), Some((90123, 0)));
        let dropping = "  127: 010200C0:2063 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 90123 2 0000000000000000 4711";
        assert_eq!(parse_udp_drops(dropping), Some((90123, 4711)));
        assert_eq!(parse_udp_drops("  sl  local_address rem_address"), None);
        assert_eq!(parse_udp_line("  sl  local_address rem_address"), None);
        assert_eq!(parse_udp_line("0: 0102:2063 x x x x x x 5"), None);
    }

    #[test]
    fn reads_unix_lines_and_fd_links() {
        let line = "0000000000000000: 00000002 00000000 00000000 0002 01 77312 @fustian-udp-192.0.2.1:8285";
        assert_eq!(
            parse_unix_line(line),
            Some(("@fustian-udp-192.0.2.1:8285", 77312))
        );
        assert_eq!(
            parse_unix_line("0000000000000000: 00000002 00000000 00010000 0001 01 123"),
            None
        );
        assert_eq!(parse_socket_link("socket:[77312]"), Some(77312));
        assert_eq!(parse_socket_link("pipe:[77312]"), None);
        assert_eq!(parse_socket_link("socket:[77312"), None);
    }

    #[test]
    fn finds_its_own_socket() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().expect("addr");
        let own = inode_of(std::os::fd::AsRawFd::as_raw_fd(&socket)).expect("inode");
        assert_eq!(udp_inodes(addr), vec![own]);
    }

    #[test]
    fn a_second_claim_names_the_first() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().expect("addr");
        let first = PortClaim::take(addr).expect("first claim");
        let second = PortClaim::take(addr).expect_err("second claim");
        assert_eq!(second.kind(), io::ErrorKind::AddrInUse);
        // The holder is this process, which `owners` leaves out.
        assert!(second.to_string().contains("already served by"), "{second}");
        drop(first);
        PortClaim::take(addr).expect("claim again after release");
    }

    #[test]
    fn a_group_refuses_a_port_shared_with_another_socket() {
        // Another program's socket on the port, with SO_REUSEPORT as the workers' sockets.
        let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
            .expect("socket");
        other.set_reuse_port(true).expect("SO_REUSEPORT");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        other.bind(&any.into()).expect("bind");
        let addr = other
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("addr");
        match crate::udp::UdpSocket::bind_group(addr, 2) {
            Err(crate::udp::UdpError::Taken { holder, .. }) => {
                assert!(holder.contains("also bound with SO_REUSEPORT"), "{holder}");
            }
            other => panic!("expected Taken, got {other:?}"),
        }
        drop(other);
        let group = crate::udp::UdpSocket::bind_group(addr, 2).expect("free now");
        assert_eq!(group.len(), 2);
    }

    proptest! {
        #[test]
        fn udp_lines_never_panic(line in ".{0,200}") {
            let _ = parse_udp_drops(&line);
            let _ = parse_udp_line(&line);
            let _ = parse_unix_line(&line);
            let _ = parse_socket_link(&line);
        }

        #[test]
        fn udp_lines_round_trip(ip in any::<[u8; 4]>(), port in any::<u16>(), inode in any::<u64>()) {
            let line = format!(
                "  1: {:08X}:{port:04X} 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 {inode} 2 0 0",
                u32::from_ne_bytes(ip)
            );
            prop_assert_eq!(
                parse_udp_line(&line),
                Some((SocketAddr::new(Ipv4Addr::from(ip).into(), port), inode))
            );
        }

        #[test]
        fn udp6_lines_round_trip(ip in any::<[u8; 16]>(), port in any::<u16>(), inode in any::<u64>()) {
            let words: String = ip
                .chunks_exact(4)
                .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
                .collect();
            let line = format!("  1: {words}:{port:04X} 0:0 07 0:0 0:0 0 0 0 {inode} 2 0 0");
            prop_assert_eq!(
                parse_udp_line(&line),
                Some((SocketAddr::new(Ipv6Addr::from(ip).into(), port), inode))
            );
        }
    }
}
