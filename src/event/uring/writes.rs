//! TUN writes through the ring.
//!
//! Every write a receive plan makes ([`crate::datapath::Core::rx_writes`]) becomes one
//! `WRITEV` on the ring when its bytes stay put until its completion: parts that lie in the
//! receive buffer the plan came from are referenced (the buffer is given back only when its
//! last write completes), small parts (a segment's header block, a short packet, the
//! virtio-net header) are copied into the write's entry. Anything else (a merged super-packet
//! in the core's own buffer, valid only until the next call into the core) is written
//! directly, after the ring writes queued before it have been submitted.
//!
//! A TUN write does not wait: the device takes the packet or drops it. So a ring write runs
//! during the `io_uring_enter` that submits it, and writes reach the device in plan order
//! whichever way each went. The queued writes of a round go out with the loop's next enter,
//! the one that also waits for completions: a burst of received datagrams costs no system call
//! of its own on the TUN side.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, squeue, types};

use super::ring::{Kind, Ring};
use crate::datapath::{Core, TunWrite};
use crate::event::Worker;
use crate::event::exec::TunWriter;
use crate::offload::{VNET_HDR_LEN, VnetHdr};

/// Bytes one entry holds copied, besides the virtio-net header: enough for the header block of
/// a segment (`datapath`'s header stride) or a short packet.
pub(super) const COPY_MAX: usize = 128;

/// Whose buffer a ring write reads from; the buffer is given back when its last write
/// completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    /// Nobody's: the entry holds every byte it writes.
    Nobody,
    /// Single-shot receive slot `j`.
    Slot(usize),
    /// Buffer `bid` of the multishot receive's buffer ring.
    Bid(u16),
}

/// Where one part of a write comes from on the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Part {
    /// Nothing to write.
    Empty,
    /// Referenced where it lies, in the receive buffer.
    InBuffer,
    /// Copied into the entry.
    Copied,
}

/// How a write with parts `head` and `body` goes on the ring, given the receive buffer `buf`
/// it may reference: `None` when it must be written directly (a part outside `buf` too large
/// to copy).
pub(super) fn place(head: &[u8], body: &[u8], buf: &[u8]) -> Option<(Part, Part)> {
    let mut room = COPY_MAX;
    let mut one = |part: &[u8]| {
        if part.is_empty() {
            Some(Part::Empty)
        } else if within(part, buf) {
            Some(Part::InBuffer)
        } else if part.len() <= room {
            room -= part.len();
            Some(Part::Copied)
        } else {
            None
        }
    };
    Some((one(head)?, one(body)?))
}

/// Returns true when `part` lies wholly inside `buf` (compared by address).
fn within(part: &[u8], buf: &[u8]) -> bool {
    let range = buf.as_ptr_range();
    let (start, end) = (part.as_ptr(), part.as_ptr().wrapping_add(part.len()));
    !buf.is_empty() && start >= range.start && end <= range.end
}

/// One ring write: its iovecs and the bytes it owns.
struct Entry {
    iov: [libc::iovec; 3],
    /// The virtio-net header (when the device takes them), then copied parts.
    bytes: [u8; VNET_HDR_LEN + COPY_MAX],
    owner: Owner,
    /// The packet's length, counted when the write completes.
    len: usize,
}

/// The entries of the ring writes in flight, made once per worker, and the writer for what
/// cannot go on the ring.
pub(super) struct RingWrites {
    /// Boxed so entries never move while the kernel reads their iovecs.
    entries: Box<[Entry]>,
    free: Vec<u32>,
    vnet: bool,
    /// Set while ring writes are queued and not yet submitted.
    pub(super) queued: bool,
    direct: TunWriter,
}

impl RingWrites {
    /// Makes `count` entries for a device that takes virtio-net headers when `vnet` is set.
    pub(super) fn new(count: usize, vnet: bool) -> Self {
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let entries = (0..count)
            .map(|_| Entry {
                iov: [empty; 3],
                bytes: [0; VNET_HDR_LEN + COPY_MAX],
                owner: Owner::Nobody,
                len: 0,
            })
            .collect();
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        Self {
            entries,
            free: (0..count).rev().collect(),
            vnet,
            queued: false,
            direct: TunWriter::new(),
        }
    }

    /// Carries out the writes `core` planned for the receive buffer `buf` (owned by `owner`),
    /// in order: on the ring where their bytes stay put ([`Self::prepare`]), else directly,
    /// after submitting the ring writes queued before. Returns how many ring writes were
    /// queued: the caller leaves `buf` untouched until all of them have completed.
    pub(super) fn carry_out(
        &mut self,
        ring: &mut Ring,
        w: &Worker,
        core: &Core,
        buf: &[u8],
        owner: Owner,
    ) -> io::Result<usize> {
        let fd = w.tun.as_raw_fd();
        let mut queued = 0;
        let mut result = Ok(());
        core.rx_writes(buf, |write| {
            if result.is_err() {
                return;
            }
            if let Some((i, sqe)) = self.prepare(fd, &write, buf, owner) {
                // SAFETY: the submission points into the write's entry, which stays put until
                // its completion frees it, and into `buf`, which the caller keeps untouched
                // until then.
                match unsafe { ring.push(&sqe) } {
                    Ok(()) => {
                        self.queued = true;
                        queued += 1;
                    }
                    Err(e) => {
                        self.complete(i);
                        result = Err(e);
                    }
                }
                return;
            }
            if self.queued {
                if let Err(e) = ring.submit_queued() {
                    result = Err(e);
                    return;
                }
                self.queued = false;
            }
            self.direct.write(w, &write);
        });
        result.map(|()| queued)
    }

    /// Prepares the ring write of `write` to the TUN device `fd`, reading from `buf` (owned by
    /// `owner`) what lies there: returns the entry's index and its submission, or `None` when
    /// the write must be made directly (its bytes cannot be kept, no entry is free, or a
    /// virtio-net header for a device without them).
    ///
    /// The submission points into the entry (which stays put until [`Self::complete`]) and
    /// into `buf`, which the caller must leave untouched until then.
    pub(super) fn prepare(
        &mut self,
        fd: RawFd,
        write: &TunWrite<'_>,
        buf: &[u8],
        owner: Owner,
    ) -> Option<(usize, squeue::Entry)> {
        if write.hdr.is_some() && !self.vnet {
            return None;
        }
        let (head, body) = place(write.head, write.body, buf)?;
        let index = *self.free.last()?;
        let i = usize::try_from(index).ok()?;
        let entry = self.entries.get_mut(i)?;
        let mut copied = VNET_HDR_LEN;
        let mut n = 0;
        if self.vnet {
            let hdr = write.hdr.copied().unwrap_or(VnetHdr::NONE);
            entry.bytes[..VNET_HDR_LEN].copy_from_slice(&hdr.to_bytes());
            entry.iov[n] = iovec(&entry.bytes[..VNET_HDR_LEN]);
            n += 1;
        }
        for (part, how) in [(write.head, head), (write.body, body)] {
            match how {
                Part::Empty => continue,
                Part::InBuffer => entry.iov[n] = iovec(part),
                Part::Copied => {
                    let to = &mut entry.bytes[copied..copied + part.len()];
                    to.copy_from_slice(part);
                    entry.iov[n] = iovec(to);
                    copied += part.len();
                }
            }
            n += 1;
        }
        entry.owner = owner;
        entry.len = write.len();
        self.free.pop();
        let sqe = opcode::Writev::new(
            types::Fd(fd),
            entry.iov.as_ptr(),
            u32::try_from(n).unwrap_or(0),
        )
        .build()
        .user_data(Kind::RxWrite.user_data(i));
        Some((i, sqe))
    }

    /// Frees entry `i` once its write completed (or was never submitted); returns the owner of
    /// the buffer it read from and the packet's length.
    pub(super) fn complete(&mut self, i: usize) -> Option<(Owner, usize)> {
        let entry = self.entries.get(i)?;
        let done = (entry.owner, entry.len);
        self.free.push(u32::try_from(i).ok()?);
        Some(done)
    }

    /// Counts the completion of entry `i`'s write (`result` as the ring gave it) and frees the
    /// entry; returns the owner of the buffer it read from.
    pub(super) fn finish(&mut self, w: &Worker, i: usize, result: i32) -> Option<Owner> {
        let (owner, len) = self.complete(i)?;
        let outcome = usize::try_from(result)
            .map(|_| len)
            .map_err(|_| io::Error::from_raw_os_error(-result));
        self.direct.count(w, outcome);
        Some(owner)
    }
}

fn iovec(bytes: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_in_the_buffer_are_referenced_small_ones_copied_large_ones_refused() {
        let buf = vec![7u8; 4096];
        let other = vec![9u8; 4096];
        assert_eq!(
            place(&buf[100..1500], &[], &buf),
            Some((Part::InBuffer, Part::Empty))
        );
        // A segment: its header block in the core, its payload in the buffer.
        assert_eq!(
            place(&other[..52], &buf[200..1600], &buf),
            Some((Part::Copied, Part::InBuffer))
        );
        // A merged packet in the core's own buffer: written directly.
        assert_eq!(place(&other[..1500], &[], &buf), None);
        // Both parts copied only while they fit together.
        assert_eq!(
            place(&other[..64], &other[64..128], &buf),
            Some((Part::Copied, Part::Copied))
        );
        assert_eq!(place(&other[..64], &other[64..129], &buf), None);
        // A part reaching past the buffer's end is not in it.
        assert_eq!(place(&buf[3000..], &[], &buf[..3500]), None);
        // Nothing is in an empty buffer.
        assert_eq!(
            place(&other[..10], &[], &[]),
            Some((Part::Copied, Part::Empty))
        );
    }

    #[test]
    fn an_entry_writes_the_header_then_the_parts_and_comes_back() {
        let buf = vec![1u8; 256];
        let head = [2u8; 40];
        let mut w = RingWrites::new(2, true);
        let write = TunWrite {
            hdr: None,
            head: &head,
            body: &buf[10..110],
        };
        let (i, _) = w.prepare(3, &write, &buf, Owner::Slot(5)).expect("placed");
        let e = &w.entries[i];
        assert_eq!(e.iov[0].iov_len, VNET_HDR_LEN);
        assert_eq!(e.iov[1].iov_len, 40);
        assert_eq!(e.iov[2].iov_base.cast_const(), buf[10..].as_ptr().cast());
        assert_eq!(&e.bytes[..VNET_HDR_LEN], &VnetHdr::NONE.to_bytes());
        assert_eq!(&e.bytes[VNET_HDR_LEN..VNET_HDR_LEN + 40], &head);
        let (j, _) = w.prepare(3, &write, &buf, Owner::Nobody).expect("placed");
        assert!(
            w.prepare(3, &write, &buf, Owner::Nobody).is_none(),
            "pool empty"
        );
        assert_eq!(w.complete(i), Some((Owner::Slot(5), 140)));
        assert_eq!(w.complete(j), Some((Owner::Nobody, 140)));
        assert!(w.prepare(3, &write, &buf, Owner::Nobody).is_some());
        // A device without virtio-net headers never gets one.
        let mut plain = RingWrites::new(1, false);
        let hdr = VnetHdr::NONE;
        let with_hdr = TunWrite {
            hdr: Some(&hdr),
            ..write
        };
        assert!(plain.prepare(3, &with_hdr, &buf, Owner::Nobody).is_none());
    }
}
