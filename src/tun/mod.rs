//! The TUN device: opening it and configuring it as flannel's `udp` backend does.
//!
//! The device is opened with `IFF_TUN | IFF_NO_PI` (raw IP packets, no packet-information
//! prefix), non-blocking and close-on-exec. It is created if it does not exist; a device fustian
//! created is not persistent, so the kernel removes it when the last fd closes, on a clean exit
//! and on a crash alike. A device that existed before (for example made persistent with
//! `ip tuntap add`) is attached to and left in place.
//!
//! Configuration goes through rtnetlink ([`link`]): the MTU, the address and the link state. As
//! flannel does (`udp_network_amd64.go`), the address is the first address of this node's
//! subnet with the prefix length of the whole overlay network, so the kernel's connected route
//! sends the whole network (e.g. 10.244.0.0/16) into the device, while the more specific local
//! subnet route (on the bridge to the pods) keeps local traffic local.

pub mod link;
mod sys;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

pub(crate) use sys::if_index;

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

/// An open TUN device queue.
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    name: String,
    index: u32,
    created: bool,
}

impl Tun {
    /// Opens (creating if needed) the single-queue TUN device `name`.
    ///
    /// # Errors
    ///
    /// [`TunError::Open`] or [`TunError::SetIff`].
    pub fn open(name: &str) -> Result<Self, TunError> {
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
    /// # Errors
    ///
    /// [`TunError::Open`] or [`TunError::SetIff`].
    pub fn open_queues(name: &str, queues: usize) -> Result<Vec<Self>, TunError> {
        let existed = if_index(name).is_some();
        if queues <= 1 {
            return Ok(vec![Self::attach(
                name,
                libc::IFF_TUN | libc::IFF_NO_PI,
                existed,
            )?]);
        }
        let flags = libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE;
        let first = match Self::attach(name, flags, existed) {
            Ok(first) => first,
            Err(TunError::SetIff { source, .. })
                if existed && source.raw_os_error() == Some(libc::EINVAL) =>
            {
                tracing::warn!("{name} exists as a single-queue device; running one worker");
                return Ok(vec![Self::attach(
                    name,
                    libc::IFF_TUN | libc::IFF_NO_PI,
                    existed,
                )?]);
            }
            Err(e) => return Err(e),
        };
        let mut all = vec![first];
        for _ in 1..queues {
            all.push(Self::attach(name, flags, existed)?);
        }
        Ok(all)
    }

    fn attach(name: &str, flags: libc::c_int, existed: bool) -> Result<Self, TunError> {
        let fd = sys::open_clone_device().map_err(TunError::Open)?;
        let name = sys::set_iff(&fd, name, flags).map_err(|source| TunError::SetIff {
            name: name.to_owned(),
            source,
        })?;
        let index = if_index(&name).ok_or_else(|| TunError::SetIff {
            name: name.clone(),
            source: io::Error::other("device vanished after TUNSETIFF"),
        })?;
        Ok(Self {
            fd,
            name,
            index,
            created: !existed,
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

    /// Writes one packet.
    ///
    /// # Errors
    ///
    /// The `write(2)` error.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        sys::write(&self.fd, buf)
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
