//! The TUN device: opening it and configuring it as flannel's `udp` backend does.
//!
//! The device is opened with `IFF_TUN | IFF_NO_PI` (raw IP packets, no packet-information
//! prefix), non-blocking and close-on-exec. It is created if it does not exist; a device fustian
//! created is not persistent, so the kernel removes it when the last fd closes, on a clean exit
//! and on a crash alike. A device that existed before (for example made persistent with
//! `ip tuntap add`) is attached to and left in place.
//!
//! Configuration goes through rtnetlink ([`link`]): the MTU, the address, the link state and
//! the route. As flannel does (`udp_network_amd64.go`), the address is the first address of
//! this node's subnet as a host address (/32, so no connected or broadcast route is made for
//! it), and an explicit route sends the whole network (e.g. 10.244.0.0/16) into the device,
//! while the more specific local subnet route (on the bridge to the pods) keeps local traffic
//! local.

pub mod link;
pub mod stats;
mod sys;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

pub(crate) use sys::{if_index, if_index_checked};

/// Errors while setting the device up.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// `/dev/net/tun` cannot be opened.
    #[error("cannot open /dev/net/tun (is the tun driver there, and are we root?): {0}")]
    Open(#[source] io::Error),
    /// `TUNSETIFF` failed.
    #[error("cannot attach to TUN device {name}: {source}")]
    SetIff {
        /// The device name.
        name: String,
        /// The error.
        source: io::Error,
    },
    /// A device of that name exists and is not a TUN device.
    #[error(
        "{name} exists and is {what}, not a TUN device: delete it (ip link del {name}) or give \
         another --tun"
    )]
    NotTun {
        /// The device name.
        name: String,
        /// What it is ("a veth device", "a TAP device").
        what: String,
    },
    /// The TUN device is attached to by another process.
    #[error(
        "TUN device {name} is in use by another process ({detail}): is another node running \
         on it? Stop it, or give another --tun"
    )]
    InUse {
        /// The device name.
        name: String,
        /// What shows it.
        detail: String,
    },
    /// An existing TUN device has an owner or group, whose processes may attach to it.
    #[error(
        "TUN device {name} belongs to {who}: processes of theirs could attach a queue without \
         privileges and read or inject pod traffic; delete it (ip tuntap del dev {name} mode \
         tun) and let the node create it"
    )]
    Owned {
        /// The device name.
        name: String,
        /// `user N`, `group N` or both.
        who: String,
    },
    /// A netlink request failed.
    #[error("cannot {what} on {name}: {source}")]
    Netlink {
        /// What was attempted.
        what: String,
        /// The device.
        name: String,
        /// The error.
        source: io::Error,
    },
}

/// Refuses an existing device `name` that fustian must not attach to, as `ip -d -j link`
/// describes it: not a TUN device at all (a veth, a bridge, a TAP device), or a multi-queue
/// TUN device with queues attached, which another process is reading (the kernel would let
/// this node add its queues beside them and take part of that process's traffic). Without
/// `ip`, or when its answer does not say, the attach goes ahead and the kernel judges.
fn check_existing(name: &str) -> Result<(), TunError> {
    let listed = std::process::Command::new("ip")
        .args(["-d", "-j", "link", "show", "dev", name])
        .stderr(std::process::Stdio::null())
        .output();
    let Some(listed) = listed.ok().filter(|o| o.status.success()) else {
        return Ok(());
    };
    let Ok(serde_json::Value::Array(links)) = serde_json::from_slice(&listed.stdout) else {
        return Ok(());
    };
    let Some(info) = links.first().map(|l| &l["linkinfo"]) else {
        return Ok(());
    };
    judge_existing(name, info)
}

/// Checks that an existing device `name` is one this node may attach to ([`wait_existing`]),
/// without opening it: done before the node writes anything anywhere, so that a node whose
/// device another process reads is refused having changed nothing.
///
/// # Errors
///
/// [`TunError::InUse`] naming the process that holds the device, or [`TunError::NotTun`].
pub(crate) fn check_free(name: &str) -> Result<(), TunError> {
    wait_existing(name).map(|_| ())
}

/// Returns whether device `name` exists, once [`check_existing`] lets this node attach to it.
/// A device with queues attached that no live process holds (no `fdinfo` names it) is waited
/// on ([`crate::sys::until_released`]): the queues of a node that has just exited stay attached
/// some milliseconds after it is reaped, and a device it created goes away with them. A live
/// holder fails the start at once, named.
fn wait_existing(name: &str) -> Result<bool, TunError> {
    use crate::sys::Release;
    crate::sys::until_released(
        &format!("the queues of {name}"),
        std::time::Duration::from_millis(50),
        || {
            if if_index(name).is_none() {
                return Release::Done(Ok(false));
            }
            match check_existing(name) {
                Ok(()) => Release::Done(Ok(true)),
                Err(TunError::InUse { name: n, detail }) => {
                    let holders = crate::udp::claim::tun_holders(name);
                    if holders.is_empty() {
                        Release::Held(TunError::InUse {
                            name: n,
                            detail: format!("{detail}, for over {:?}", crate::sys::RELEASE_WAIT),
                        })
                    } else {
                        Release::Done(Err(TunError::InUse {
                            name: n,
                            detail: format!(
                                "{detail}, held by {}",
                                crate::udp::claim::describe(&holders)
                            ),
                        }))
                    }
                }
                Err(e) => Release::Done(Err(e)),
            }
        },
    )
}

/// [`check_existing`]'s verdict on the `linkinfo` object of `ip -d -j link show`.
fn judge_existing(name: &str, info: &serde_json::Value) -> Result<(), TunError> {
    let not_tun = |what: String| {
        Err(TunError::NotTun {
            name: name.to_owned(),
            what,
        })
    };
    match info["info_kind"].as_str() {
        Some("tun") => {}
        Some(kind) => return not_tun(format!("a {} device", crate::sys::printable(kind))),
        // No link info (an `ip` too old to say, or a physical device): the kernel judges.
        None => return Ok(()),
    }
    let data = &info["info_data"];
    if data["type"].as_str() == Some("tap") {
        return not_tun("a TAP device".into());
    }
    match data["numqueues"].as_u64() {
        Some(n) if n > 0 => Err(TunError::InUse {
            name: name.to_owned(),
            detail: format!("{n} queues attached"),
        }),
        _ => Ok(()),
    }
}

/// An open TUN device queue.
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    name: String,
    index: u32,
    created: bool,
    vnet: bool,
}

/// The TUN offloads the kernel granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TunOffload {
    /// Checksum and TCP segmentation (TSO4, TSO6): reads may be TCP super-packets.
    pub tso: bool,
    /// UDP segmentation (USO4, USO6, Linux 6.2): reads may be UDP super-packets.
    pub uso: bool,
}

impl Tun {
    /// Opens (creating if needed) the single-queue TUN device `name`.
    ///
    /// # Errors
    ///
    /// [`TunError::Open`] or [`TunError::SetIff`].
    pub fn open(name: &str) -> Result<Self, TunError> {
        // A plain single-queue device, as flannel's proxy opens it.
        Self::attach(
            name,
            libc::IFF_TUN | libc::IFF_NO_PI,
            if_index(name).is_some(),
        )
    }

    /// Opens `queues` queues of the TUN device `name` (`IFF_MULTI_QUEUE`, Linux 3.8), creating
    /// it if needed; the kernel spreads flows over the queues by their hash. With one queue,
    /// or when the device exists as a single-queue device (flannel's own `flannel0` is one),
    /// it opens one queue; the caller runs as many workers as it got queues.
    ///
    /// With `offload`, the queues are opened with `IFF_VNET_HDR` and the device is told the
    /// reader handles partial checksums and TCP (and, from Linux 6.2, UDP) super-packets; see
    /// [`TunOffload`] for what was granted. A kernel that refuses gets a plain device.
    ///
    /// # Errors
    ///
    /// [`TunError::Open`] or [`TunError::SetIff`].
    pub fn open_queues(
        name: &str,
        queues: usize,
        offload: bool,
    ) -> Result<(Vec<Self>, TunOffload), TunError> {
        let existed = wait_existing(name)?;
        if offload {
            match Self::open_queues_with(name, queues, existed, libc::IFF_VNET_HDR) {
                Ok(all) => {
                    let granted = all[0].enable_offloads();
                    if granted.tso {
                        return Ok((all, granted));
                    }
                    tracing::info!("{name}: TUN offloads refused; reopening without them");
                    drop(all);
                }
                Err(e @ TunError::InUse { .. }) => return Err(e),
                Err(e) => tracing::info!("{name}: IFF_VNET_HDR refused ({e}); no TUN offloads"),
            }
        }
        let all = Self::open_queues_with(name, queues, existed, 0)?;
        Ok((all, TunOffload::default()))
    }

    fn open_queues_with(
        name: &str,
        queues: usize,
        existed: bool,
        extra: libc::c_int,
    ) -> Result<Vec<Self>, TunError> {
        let single = libc::IFF_TUN | libc::IFF_NO_PI | extra;
        if queues <= 1 {
            return Ok(vec![Self::attach(name, single, existed)?]);
        }
        let flags = single | libc::IFF_MULTI_QUEUE;
        let first = match Self::attach(name, flags, existed) {
            Ok(first) => first,
            Err(TunError::SetIff { source, .. })
                if existed && source.raw_os_error() == Some(libc::EINVAL) =>
            {
                tracing::warn!("{name} exists as a single-queue device; running one worker");
                return Ok(vec![Self::attach(name, single, existed)?]);
            }
            Err(e) => return Err(e),
        };
        let mut all = vec![first];
        for _ in 1..queues {
            all.push(Self::attach(name, flags, existed)?);
        }
        Ok(all)
    }

    /// Asks for checksum and TSO offloads, then USO; returns what the kernel granted.
    fn enable_offloads(&self) -> TunOffload {
        let tso = sys::TUN_F_CSUM | sys::TUN_F_TSO4 | sys::TUN_F_TSO6;
        let uso = sys::TUN_F_USO4 | sys::TUN_F_USO6;
        if sys::set_offload(&self.fd, tso | uso).is_ok() {
            return TunOffload {
                tso: true,
                uso: true,
            };
        }
        TunOffload {
            tso: sys::set_offload(&self.fd, tso).is_ok(),
            uso: false,
        }
    }

    /// Clears the device's offload flags, so a reader that attaches later (to a device that
    /// outlives this process) is not handed super-packets it does not expect.
    pub fn clear_offloads(&self) {
        if self.vnet {
            let _ = sys::set_offload(&self.fd, 0);
        }
    }

    /// Returns true when every read and write carries a virtio-net header.
    pub const fn vnet(&self) -> bool {
        self.vnet
    }

    fn attach(name: &str, flags: libc::c_int, existed: bool) -> Result<Self, TunError> {
        let fd = sys::open_clone_device().map_err(TunError::Open)?;
        let name = sys::set_iff(&fd, name, flags).map_err(|source| {
            if existed && source.raw_os_error() == Some(libc::EBUSY) {
                TunError::InUse {
                    name: name.to_owned(),
                    detail: "the kernel refused a second reader: EBUSY".into(),
                }
            } else {
                TunError::SetIff {
                    name: name.to_owned(),
                    source,
                }
            }
        })?;
        let index = match if_index_checked(&name) {
            Ok(Some(index)) => index,
            Ok(None) => {
                return Err(TunError::SetIff {
                    name,
                    source: io::Error::other("device vanished after TUNSETIFF"),
                });
            }
            Err(source) => return Err(TunError::SetIff { name, source }),
        };
        Ok(Self {
            fd,
            name,
            index,
            created: !existed,
            vnet: flags & libc::IFF_VNET_HDR != 0,
        })
    }

    /// Returns the device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the interface index.
    pub const fn index(&self) -> u32 {
        self.index
    }

    /// Returns true when this process created the device (it goes away with the fd).
    pub const fn created(&self) -> bool {
        self.created
    }

    /// Reads one packet. `WouldBlock` when the queue is empty.
    ///
    /// # Errors
    ///
    /// The `read(2)` error.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        sys::read(&self.fd, buf)
    }

    /// Writes one packet (behind a plain virtio-net header when the device has them).
    /// Returns the packet bytes written.
    ///
    /// # Errors
    ///
    /// The `write(2)` error.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        self.write_parts(buf, &[])
    }

    /// Writes one packet made of `head` then `body` (behind a plain virtio-net header when the
    /// device has them): a segment gathered from its header slot and its payload. Returns the
    /// packet bytes written.
    ///
    /// # Errors
    ///
    /// The `writev(2)` error.
    pub fn write_parts(&self, head: &[u8], body: &[u8]) -> io::Result<usize> {
        if self.vnet {
            let none = crate::offload::VnetHdr::NONE.to_bytes();
            return sys::writev(&self.fd, &[&none, head, body])
                .map(|n| n.saturating_sub(crate::offload::VNET_HDR_LEN));
        }
        if body.is_empty() {
            return sys::write(&self.fd, head);
        }
        sys::writev(&self.fd, &[head, body])
    }

    /// Writes one packet behind the virtio-net header `hdr` (a device opened with offloads).
    /// Returns the packet bytes written.
    ///
    /// # Errors
    ///
    /// The `writev(2)` error; `InvalidInput` on a device without virtio-net headers.
    pub fn write_vnet(&self, hdr: &crate::offload::VnetHdr, packet: &[u8]) -> io::Result<usize> {
        if !self.vnet {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        sys::writev(&self.fd, &[&hdr.to_bytes(), packet])
            .map(|n| n.saturating_sub(crate::offload::VNET_HDR_LEN))
    }
}

impl Drop for Tun {
    fn drop(&mut self) {
        // A device that outlives this process must not keep handing out super-packets.
        if !self.created {
            self.clear_offloads();
        }
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Returns the error a worker stops with when a read of its TUN queue failed with `errno`
/// because the device is gone (deleted, or the queue detached: `EBADFD`; a closed descriptor:
/// `EBADF`; `ENODEV`): no later read can succeed, so going on would forward nothing in one
/// direction while the node still reported itself healthy. `None` for any other error, which
/// is counted and logged as a failed read.
pub fn device_gone(errno: i32) -> Option<io::Error> {
    matches!(errno, libc::EBADFD | libc::EBADF | libc::ENODEV).then(|| {
        io::Error::new(
            io::ErrorKind::NotConnected,
            format!(
                "the TUN device is gone ({}): deleted, or its queue detached; the node stops \
                 (a restart creates it again)",
                io::Error::from_raw_os_error(errno)
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn existing_devices_judged() {
        let judge = |info| judge_existing("flannel0", &info);
        let free = json!({"info_kind": "tun", "info_data": {"type": "tun", "multi_queue": true,
            "numqueues": 0, "persist": true}});
        assert!(judge(free).is_ok());
        let single =
            json!({"info_kind": "tun", "info_data": {"type": "tun", "multi_queue": false}});
        assert!(judge(single).is_ok());
        assert!(judge(json!(null)).is_ok());
        let held = json!({"info_kind": "tun", "info_data": {"type": "tun", "numqueues": 2}});
        let e = judge(held).expect_err("in use").to_string();
        assert!(
            e.contains("in use by another process (2 queues attached)"),
            "{e}"
        );
        let tap = json!({"info_kind": "tun", "info_data": {"type": "tap"}});
        let e = judge(tap).expect_err("tap").to_string();
        assert!(e.contains("is a TAP device, not a TUN device"), "{e}");
        let e = judge(json!({"info_kind": "veth"}))
            .expect_err("veth")
            .to_string();
        assert!(
            e.contains("flannel0 exists and is a veth device")
                && e.contains("ip link del flannel0"),
            "{e}"
        );
    }
}
