//! `recvmmsg(2)` / `sendmmsg(2)` and the socket options socket2 does not cover.
//!
//! The header arrays live in [`MmsgScratch`], allocated once per worker, and the pointers in
//! them are rewritten on every call from the caller's buffers, so nothing here allocates per
//! packet and no pointer outlives the borrow it came from.
#![allow(unsafe_code)]

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::sys::{retry_if_interrupted, syscall};

/// Reusable header arrays for one batch call.
pub(crate) struct MmsgScratch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    /// Control-message space per message (a `UDP_GRO` or `UDP_SEGMENT` cmsg fits in 32 bytes).
    ctrl: Vec<[u64; 4]>,
    /// Datagrams carried by each message of a send.
    counts: Vec<usize>,
}

// SAFETY: the raw pointers inside the arrays are only ever set and used within one call on the
// owning thread; between calls they are stale values that are never dereferenced.
unsafe impl Send for MmsgScratch {}

impl MmsgScratch {
    /// Creates arrays for up to `batch` messages.
    pub(crate) fn new(batch: usize) -> Self {
        // SAFETY: mmsghdr, iovec and sockaddr_storage are plain C structs; all-zero is valid.
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let zero_addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        Self {
            hdrs: vec![zero_hdr; batch],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                batch
            ],
            addrs: vec![zero_addr; batch],
            ctrl: vec![[0u64; 4]; batch],
            counts: vec![0; batch],
        }
    }

    /// Returns the batch size.
    pub(crate) fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Makes message `m` the `iovlen` iovecs from `iov` (kept by the caller for the send)
    /// to `dst`, holding `count` datagrams: with more than one, cut by the kernel at `segment`
    /// bytes (`UDP_SEGMENT`).
    fn set_message(
        &mut self,
        m: usize,
        dst: SocketAddr,
        iov: *mut libc::iovec,
        iovlen: usize,
        count: usize,
        segment: usize,
    ) {
        let namelen = to_storage(dst, &mut self.addrs[m]);
        let hdr = &mut self.hdrs[m].msg_hdr;
        hdr.msg_name = (&raw mut self.addrs[m]).cast();
        hdr.msg_namelen = namelen;
        hdr.msg_iov = iov;
        hdr.msg_iovlen = iovlen;
        hdr.msg_flags = 0;
        if count > 1 {
            let ctrl = &mut self.ctrl[m];
            *ctrl = segment_cmsg(u16::try_from(segment).unwrap_or(u16::MAX));
            hdr.msg_control = ctrl.as_mut_ptr().cast();
            hdr.msg_controllen = std::mem::size_of::<libc::cmsghdr>() + 8;
        } else {
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
        }
        self.counts[m] = count;
    }

    /// Returns true when the first message of the last send carried several datagrams (a
    /// failed `sendmmsg` failed on that one, so only then can `UDP_SEGMENT` be its cause).
    pub(crate) fn first_segmented(&self) -> bool {
        self.counts.first().is_some_and(|&c| c > 1)
    }
}

/// One socket read, as the socket layer decodes it for the datapath core.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    /// The datagram's length (the kernel's `MSG_TRUNC` length: larger than the slot when it
    /// did not fit).
    pub len: usize,
    /// The sender.
    pub from: Option<SocketAddr>,
    /// The datagram did not fit the slot (`MSG_TRUNC`): it must not be delivered.
    pub truncated: bool,
    /// With `UDP_GRO`: the size of each datagram coalesced into this read (0: one datagram).
    pub segment: usize,
}

/// Receives up to `out.len()` datagrams into consecutive `slot`-byte slots of `data`,
/// without blocking. Returns how many arrived (0 when none were waiting).
pub(crate) fn recv_batch(
    fd: BorrowedFd<'_>,
    scratch: &mut MmsgScratch,
    data: &mut [u8],
    slot: usize,
    out: &mut [Received],
) -> io::Result<usize> {
    let n = out
        .len()
        .min(scratch.capacity())
        .min(data.len() / slot.max(1));
    for i in 0..n {
        let iov = &mut scratch.iovs[i];
        iov.iov_base = data[i * slot..].as_mut_ptr().cast();
        iov.iov_len = slot;
        let hdr = &mut scratch.hdrs[i];
        hdr.msg_hdr.msg_name = (&raw mut scratch.addrs[i]).cast();
        hdr.msg_hdr.msg_namelen = socklen_of::<libc::sockaddr_storage>();
        hdr.msg_hdr.msg_iov = iov;
        hdr.msg_hdr.msg_iovlen = 1;
        hdr.msg_hdr.msg_control = scratch.ctrl[i].as_mut_ptr().cast();
        hdr.msg_hdr.msg_controllen = std::mem::size_of::<[u64; 4]>();
        hdr.msg_hdr.msg_flags = 0;
        hdr.msg_len = 0;
    }
    let got = retry_if_interrupted(|| {
        // SAFETY: the first `n` headers point at `n` iovecs and address slots in `scratch`, and
        // each iovec at a distinct `slot`-byte range of `data`, all of which stay borrowed
        // mutably for the duration of the call; `n` fits c_uint because it is a batch size.
        syscall!(recvmmsg(
            fd.as_raw_fd(),
            scratch.hdrs.as_mut_ptr(),
            libc::c_uint::try_from(n).unwrap_or(libc::c_uint::MAX),
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        ))
    });
    let got = match got {
        Ok(g) => g.unsigned_abs() as usize,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
        Err(e) => return Err(e),
    };
    for (((r, hdr), addr), ctrl) in out
        .iter_mut()
        .zip(&scratch.hdrs)
        .zip(&scratch.addrs)
        .zip(&scratch.ctrl)
        .take(got)
    {
        let control = control_bytes(ctrl, hdr.msg_hdr.msg_controllen);
        *r = Received {
            len: (hdr.msg_len as usize).min(slot),
            from: from_storage(addr),
            truncated: hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            segment: gro_segment_size(&control[..]).unwrap_or(0),
        };
    }
    Ok(got)
}

/// Finds the `UDP_GRO` segment size in the control messages `control` of a `recvmsg` (a
/// `cmsghdr` stream; level `SOL_UDP`, type `UDP_GRO`, an `int`). `None` when absent.
pub(crate) fn gro_segment_size(control: &[u8]) -> Option<usize> {
    // struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; } then data, each
    // message padded to the alignment of size_t.
    const WORD: usize = std::mem::size_of::<usize>();
    const HDR: usize = WORD + 8;
    let mut at = 0;
    while at + HDR <= control.len() {
        let mut len_bytes = [0u8; WORD];
        len_bytes.copy_from_slice(&control[at..at + WORD]);
        let len = usize::from_ne_bytes(len_bytes);
        let int = |o: usize| {
            i32::from_ne_bytes([control[o], control[o + 1], control[o + 2], control[o + 3]])
        };
        let (level, kind) = (int(at + WORD), int(at + WORD + 4));
        if len < HDR || at + len > control.len() {
            return None;
        }
        if level == libc::SOL_UDP && kind == libc::UDP_GRO && len >= HDR + 4 {
            return usize::try_from(int(at + HDR)).ok().filter(|&n| n > 0);
        }
        at += len.div_ceil(WORD) * WORD;
    }
    None
}

/// Decodes a read handed over by a multishot receive (the name and control areas of its
/// `io_uring_recvmsg_out`): its sender, its `UDP_GRO` size and whether it was cut short.
pub(crate) fn decode_multishot(
    name: &[u8],
    control: &[u8],
    len: usize,
    truncated: bool,
) -> Received {
    // SAFETY: sockaddr_storage is a plain C struct; all-zero is valid.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let n = name
        .len()
        .min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: `addr` is a sockaddr_storage and at most that many bytes of `name` are copied
    // into it; the regions do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(name.as_ptr(), (&raw mut addr).cast::<u8>(), n) };
    Received {
        len,
        from: from_storage(&addr),
        truncated,
        segment: gro_segment_size(control).unwrap_or(0),
    }
}

/// A message header, its iovec, address and control space, for one receive that stays in
/// flight (an io_uring `RECVMSG`): boxed, so the pointers inside stay valid for as long as the
/// operation does.
pub(crate) struct RecvSlot {
    iov: libc::iovec,
    ctrl: [u64; 4],
    addr: libc::sockaddr_storage,
    msg: libc::msghdr,
}

// SAFETY: the pointers inside point into the box itself and at the caller's buffer, which the
// owning worker keeps; they are used on that worker's thread only.
unsafe impl Send for RecvSlot {}

impl RecvSlot {
    /// Makes one.
    pub(crate) fn new() -> Box<Self> {
        Box::new(Self {
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            ctrl: [0; 4],
            // SAFETY: sockaddr_storage and msghdr are plain C structs; all-zero is valid.
            addr: unsafe { std::mem::zeroed() },
            // SAFETY: as above.
            msg: unsafe { std::mem::zeroed() },
        })
    }

    /// Prepares the header for a receive into `buf` (with room for a `UDP_GRO` control
    /// message) and returns it for the submission. The caller keeps `buf` and `self` in place
    /// until the receive completes.
    pub(crate) fn prepare(&mut self, buf: &mut [u8]) -> *mut libc::msghdr {
        self.iov.iov_base = buf.as_mut_ptr().cast();
        self.iov.iov_len = buf.len();
        self.msg.msg_iov = &raw mut self.iov;
        self.msg.msg_iovlen = 1;
        self.msg.msg_name = (&raw mut self.addr).cast();
        self.msg.msg_namelen = socklen_of::<libc::sockaddr_storage>();
        self.msg.msg_control = self.ctrl.as_mut_ptr().cast();
        self.msg.msg_controllen = std::mem::size_of::<[u64; 4]>();
        self.msg.msg_flags = 0;
        &raw mut self.msg
    }

    /// Decodes a completed receive of `len` bytes (the `MSG_TRUNC` length) into a slot of
    /// `slot_len` bytes.
    pub(crate) fn decode(&self, len: usize, slot_len: usize) -> Received {
        let control = control_bytes(&self.ctrl, self.msg.msg_controllen);
        Received {
            len,
            from: from_storage(&self.addr),
            truncated: len > slot_len || self.msg.msg_flags & libc::MSG_TRUNC != 0,
            segment: gro_segment_size(&control).unwrap_or(0),
        }
    }
}

/// The header of a multishot receive: the kernel reads the name and control lengths from it.
pub(crate) fn multishot_msghdr(control_len: usize) -> Box<libc::msghdr> {
    // SAFETY: msghdr is a plain C struct; all-zero is valid.
    let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
    msg.msg_namelen = socklen_of::<libc::sockaddr_storage>();
    msg.msg_controllen = control_len;
    msg
}

/// Returns the first `len` bytes (at most 32) of a control buffer as bytes.
fn control_bytes(ctrl: &[u64; 4], len: usize) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(8).zip(ctrl) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    out[len.min(32)..].fill(0);
    out
}

/// One datagram to send: `data[start..start + len]` to `dst`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transmit {
    /// Destination.
    pub(crate) dst: SocketAddr,
    /// Offset in the data buffer.
    pub(crate) start: usize,
    /// Length.
    pub(crate) len: usize,
    /// Which of the caller's sockets sends it (not used here).
    pub(crate) socket: u16,
    /// The caller's peer for the datagram's counters ([`NO_PEER`]: none; not used here).
    pub(crate) peer: u32,
}

/// [`Transmit::peer`] of a datagram no peer's counters count (a probe answer).
pub(crate) const NO_PEER: u32 = u32::MAX;

/// Sends one batch with `sendmmsg`. With `gso`, runs of datagrams to one destination of one
/// length (the last of a run may be shorter), up to [`GSO_MAX_SEGMENTS`] and
/// [`GSO_MAX_BYTES`], go as one message carrying `UDP_SEGMENT`, gathered with an iovec each:
/// the kernel's UDP and IP layers then run once for the run instead of once per datagram.
/// Returns how many datagrams were sent from the front of `batch`, and how many messages among
/// them carried several.
///
/// # Errors
///
/// The error of the first message when nothing was sent (`EIO` when the egress device cannot
/// checksum, which means GSO cannot be used).
pub(crate) fn send_batch(
    fd: BorrowedFd<'_>,
    scratch: &mut MmsgScratch,
    data: &[u8],
    batch: &[Transmit],
    gso: bool,
) -> io::Result<SegmentsSent> {
    let n = batch.len().min(scratch.capacity());
    for (i, t) in batch[..n].iter().enumerate() {
        let Some(bytes) = data.get(t.start..t.start + t.len) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        let iov = &mut scratch.iovs[i];
        iov.iov_base = bytes.as_ptr().cast_mut().cast();
        iov.iov_len = bytes.len();
    }
    let mut messages = 0;
    let mut i = 0;
    while i < n {
        let first = &batch[i];
        let take = if gso { gso_run(&batch[i..n]) } else { 1 };
        let iov = &raw mut scratch.iovs[i];
        scratch.set_message(messages, first.dst, iov, take, take, first.len);
        messages += 1;
        i += take;
    }
    send_messages(fd, scratch, messages)
}

/// Returns how many datagrams from the front of `batch` one `UDP_SEGMENT` message can carry:
/// those to the first one's destination, as [`gso_run_len`] counts them.
pub(crate) fn gso_run(batch: &[Transmit]) -> usize {
    let dst = batch.first().map(|t| t.dst);
    gso_run_len(
        batch
            .iter()
            .take_while(|t| Some(t.dst) == dst)
            .map(|t| t.len),
    )
}

/// Returns how many datagrams of the lengths `lens` (all to one peer), from the front, one
/// `UDP_SEGMENT` message can carry: all of the first one's length but the last, which may be
/// shorter, none empty, at most [`GSO_MAX_SEGMENTS`] and [`GSO_MAX_BYTES`] together. At least 1
/// unless `lens` is empty.
pub(crate) fn gso_run_len(mut lens: impl Iterator<Item = usize>) -> usize {
    let Some(size) = lens.next() else {
        return 0;
    };
    let (mut bytes, mut take) = (size, 1);
    for len in lens {
        if take == GSO_MAX_SEGMENTS || len > size || len == 0 || bytes + len > GSO_MAX_BYTES {
            break;
        }
        bytes += len;
        take += 1;
        // A shorter datagram must be the last of its message.
        if len < size {
            break;
        }
    }
    take
}

/// Sends the first `messages` messages of `scratch` in one `sendmmsg`; returns the datagrams
/// they carried from the front, and how many of the messages sent carried several.
fn send_messages(
    fd: BorrowedFd<'_>,
    scratch: &mut MmsgScratch,
    messages: usize,
) -> io::Result<SegmentsSent> {
    let sent = sendmmsg(fd, scratch, messages)?.min(messages);
    let counts = &scratch.counts[..sent];
    Ok(SegmentsSent {
        segments: counts.iter().sum(),
        gso_messages: counts.iter().filter(|&&c| c > 1).count(),
    })
}

fn sendmmsg(fd: BorrowedFd<'_>, scratch: &mut MmsgScratch, n: usize) -> io::Result<usize> {
    retry_if_interrupted(|| {
        // SAFETY: the first `n` headers point at iovecs and addresses in `scratch` and at byte
        // ranges of `data` checked above; the kernel only reads them, and all stay borrowed for
        // the duration of the call.
        syscall!(sendmmsg(
            fd.as_raw_fd(),
            scratch.hdrs.as_mut_ptr(),
            libc::c_uint::try_from(n).unwrap_or(libc::c_uint::MAX),
            libc::MSG_DONTWAIT
        ))
    })
    .map(|sent| sent.unsigned_abs() as usize)
}

/// Header and iovec space for sending the segments of one super-packet.
pub(crate) struct SegmentScratch {
    mm: MmsgScratch,
    iovs: Vec<libc::iovec>,
}

// SAFETY: as for `MmsgScratch`: pointers are set and used within one call on one thread.
unsafe impl Send for SegmentScratch {}

impl SegmentScratch {
    /// Space for `segments` segments.
    pub(crate) fn new(segments: usize) -> Self {
        Self {
            mm: MmsgScratch::new(segments),
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                2 * segments
            ],
        }
    }

    /// As [`MmsgScratch::first_segmented`].
    pub(crate) fn first_segmented(&self) -> bool {
        self.mm.first_segmented()
    }
}

/// What [`send_segments`] sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentsSent {
    /// Segments sent, from the front.
    pub(crate) segments: usize,
    /// Messages among them that carried several segments with `UDP_SEGMENT`.
    pub(crate) gso_messages: usize,
}

/// The most datagrams one `UDP_SEGMENT` send carries (`UDP_MAX_SEGMENTS` was 64 before
/// Linux 6.9).
pub const GSO_MAX_SEGMENTS: usize = 64;
/// The most payload bytes one `UDP_SEGMENT` send carries (an IPv4 datagram's limit, with room
/// for the IP and UDP headers).
pub const GSO_MAX_BYTES: usize = 65_000;

/// The size of a `cmsghdr` followed by a `u16` (`CMSG_LEN(2)`).
const CMSG_LEN_U16: usize = std::mem::size_of::<libc::cmsghdr>() + 2;

/// The segments of one super-packet, to be sent to `dst`: segment `i` is header slot `i` of
/// `headers` (`stride` bytes apart) followed by its payload range of `packet`
/// ([`crate::wire::Segment`]), gathered with iovecs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gathered<'a> {
    /// The peer.
    pub(crate) dst: SocketAddr,
    /// The header slots.
    pub(crate) headers: &'a [u8],
    /// Bytes from one header slot to the next.
    pub(crate) stride: usize,
    /// The super-packet the payloads lie in.
    pub(crate) packet: &'a [u8],
    /// The segments.
    pub(crate) segs: &'a [crate::wire::Segment],
}

/// Sends the segments of `batch`. With `gso`, runs of equal-sized segments (up to
/// [`GSO_MAX_SEGMENTS`] and [`GSO_MAX_BYTES`]) go as one message carrying `UDP_SEGMENT`;
/// without, one message per segment. All messages go in one `sendmmsg`. Returns how many
/// segments were sent from the front.
///
/// # Errors
///
/// The error of the first message when nothing was sent (`EIO` when the egress device cannot
/// checksum, which means GSO cannot be used).
pub(crate) fn send_segments(
    fd: BorrowedFd<'_>,
    scratch: &mut SegmentScratch,
    batch: &Gathered<'_>,
    gso: bool,
) -> io::Result<SegmentsSent> {
    let Gathered {
        dst,
        headers,
        stride,
        packet,
        segs,
    } = *batch;
    let n = segs.len().min(scratch.mm.capacity());
    for (i, s) in segs[..n].iter().enumerate() {
        let (Some(h), Some(p)) = (
            headers.get(i * stride..i * stride + s.header_len),
            packet.get(s.payload_start..s.payload_start + s.payload_len),
        ) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        scratch.iovs[2 * i] = libc::iovec {
            iov_base: h.as_ptr().cast_mut().cast(),
            iov_len: h.len(),
        };
        scratch.iovs[2 * i + 1] = libc::iovec {
            iov_base: p.as_ptr().cast_mut().cast(),
            iov_len: p.len(),
        };
    }
    // Group the segments into messages, each one segment or a `UDP_SEGMENT` run.
    let mut messages = 0;
    let mut i = 0;
    while i < n {
        let size = segs[i].len();
        let take = if gso {
            gso_run_len(segs[i..n].iter().map(crate::wire::Segment::len))
        } else {
            1
        };
        let iov = &raw mut scratch.iovs[2 * i];
        scratch
            .mm
            .set_message(messages, dst, iov, 2 * take, take, size);
        messages += 1;
        i += take;
    }
    send_messages(fd, &mut scratch.mm, messages)
}

/// Returns a control buffer holding one `UDP_SEGMENT` message with the segment size `size`:
/// `struct cmsghdr { size_t len; int level; int type; }` followed by a `u16`.
fn segment_cmsg(size: u16) -> [u64; 4] {
    const WORD: usize = std::mem::size_of::<usize>();
    let mut bytes = [0u8; 32];
    bytes[..WORD].copy_from_slice(&CMSG_LEN_U16.to_ne_bytes());
    bytes[WORD..WORD + 4].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
    bytes[WORD + 4..WORD + 8].copy_from_slice(&libc::UDP_SEGMENT.to_ne_bytes());
    bytes[WORD + 8..WORD + 10].copy_from_slice(&size.to_ne_bytes());
    let mut out = [0u64; 4];
    for (word, chunk) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *word = u64::from_ne_bytes(b);
    }
    out
}

/// Turns `UDP_GRO` on (Linux 5.0): the kernel may hand over several datagrams of one flow and
/// size in one read, with their size in a control message.
pub(crate) fn set_udp_gro(fd: BorrowedFd<'_>) -> io::Result<()> {
    let value: libc::c_int = 1;
    // SAFETY: `value` is a c_int that outlives the call and its size is passed alongside.
    syscall!(setsockopt(
        fd.as_raw_fd(),
        libc::SOL_UDP,
        libc::UDP_GRO,
        (&raw const value).cast(),
        socklen_of::<libc::c_int>()
    ))
    .map(drop)
}

/// Returns true when the kernel knows `UDP_SEGMENT` (Linux 4.18).
pub(crate) fn gso_supported(fd: BorrowedFd<'_>) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = socklen_of::<libc::c_int>();
    // SAFETY: `value` and `len` outlive the call and `len` holds the size of `value`.
    syscall!(getsockopt(
        fd.as_raw_fd(),
        libc::SOL_UDP,
        libc::UDP_SEGMENT,
        (&raw mut value).cast(),
        &raw mut len
    ))
    .is_ok()
}

/// Sets `SO_RCVBUFFORCE` / `SO_SNDBUFFORCE`, which exceed `net.core.[rw]mem_max` with
/// `CAP_NET_ADMIN` (socket(7)).
pub(crate) fn set_buffer_force(fd: BorrowedFd<'_>, send: bool, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let opt = if send {
        libc::SO_SNDBUFFORCE
    } else {
        libc::SO_RCVBUFFORCE
    };
    // SAFETY: `value` is a c_int that outlives the call and its size is passed alongside.
    syscall!(setsockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        opt,
        (&raw const value).cast(),
        socklen_of::<libc::c_int>()
    ))
    .map(drop)
}

/// Sets `IP_MTU_DISCOVER` to `IP_PMTUDISC_OMIT` (Linux 3.15): datagrams leave with DF clear,
/// sized by the interface's MTU, and ICMP "fragmentation needed" naming the socket is ignored
/// (ip(7)), so nobody on the underlay can shrink the node's path MTU with a forged ICMP.
/// Ignored for IPv6 sockets, which have no DF bit.
pub(crate) fn set_pmtudisc_omit(fd: BorrowedFd<'_>) -> io::Result<()> {
    let value: libc::c_int = libc::IP_PMTUDISC_OMIT;
    // SAFETY: `value` is a c_int that outlives the call and its size is passed alongside.
    let r = syscall!(setsockopt(
        fd.as_raw_fd(),
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        (&raw const value).cast(),
        socklen_of::<libc::c_int>()
    ));
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => Ok(()),
        other => other.map(drop),
    }
}

/// Waits up to `timeout_ms` for `fd` to become writable.
pub(crate) fn wait_writable(fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    retry_if_interrupted(|| {
        // SAFETY: `pfd` is one valid pollfd that outlives the call.
        syscall!(poll(&raw mut pfd, 1, timeout_ms))
    })
    .map(|n| n > 0)
}

pub(crate) fn socklen_of<T>() -> libc::socklen_t {
    // Socket address structs are at most 128 bytes (sockaddr_storage), so this always fits.
    libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}

// AF_INET (2) and AF_INET6 (10) fit sa_family_t (u16) by definition (include/linux/socket.h).
#[allow(clippy::cast_possible_truncation)]
const FAMILY_INET: libc::sa_family_t = libc::AF_INET as libc::sa_family_t;
#[allow(clippy::cast_possible_truncation)]
const FAMILY_INET6: libc::sa_family_t = libc::AF_INET6 as libc::sa_family_t;

pub(crate) fn to_storage(
    addr: SocketAddr,
    storage: &mut libc::sockaddr_storage,
) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: FAMILY_INET,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write((&raw mut *storage).cast::<libc::sockaddr_in>(), sin) };
            socklen_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: FAMILY_INET6,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut *storage).cast::<libc::sockaddr_in6>(), sin6) };
            socklen_of::<libc::sockaddr_in6>()
        }
    }
}

pub(crate) fn from_storage(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the kernel wrote a sockaddr_in, which fits and is aligned.
            let sin = unsafe { &*(&raw const *storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the kernel wrote a sockaddr_in6, which fits and is aligned.
            let sin6 = unsafe { &*(&raw const *storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn finds_the_gro_size() {
        let word = std::mem::size_of::<usize>();
        let mut c = Vec::new();
        // An unrelated message first (IP_TOS, one byte, padded).
        c.extend_from_slice(&(word + 9).to_ne_bytes());
        c.extend_from_slice(&libc::IPPROTO_IP.to_ne_bytes());
        c.extend_from_slice(&libc::IP_TOS.to_ne_bytes());
        c.extend_from_slice(&[0u8; 8]);
        c.extend_from_slice(&(word + 12).to_ne_bytes());
        c.extend_from_slice(&libc::SOL_UDP.to_ne_bytes());
        c.extend_from_slice(&libc::UDP_GRO.to_ne_bytes());
        c.extend_from_slice(&1400i32.to_ne_bytes());
        c.extend_from_slice(&[0u8; 4]);
        assert_eq!(gro_segment_size(&c), Some(1400));
        assert_eq!(gro_segment_size(&c[..word + 16]), None);
        assert_eq!(gro_segment_size(&[]), None);
    }

    proptest! {
        #[test]
        fn control_parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = gro_segment_size(&data);
        }

        /// Cutting any queue into GSO runs covers it front to back, and every run is one
        /// `UDP_SEGMENT` message the kernel takes: one peer, equal lengths but a shorter last,
        /// within the segment and byte limits.
        #[test]
        fn gso_runs_cover_the_queue_with_messages_the_kernel_takes(
            queue in proptest::collection::vec((0u8..3, 0usize..1600), 0..200),
        ) {
            let batch: Vec<Transmit> = queue
                .iter()
                .map(|&(peer, len)| Transmit {
                    dst: SocketAddr::from(([192, 0, 2, peer], 8285)),
                    start: 0,
                    len,
                    socket: 0,
                    peer: 0,
                })
                .collect();
            let mut at = 0;
            while at < batch.len() {
                let take = gso_run(&batch[at..]);
                prop_assert!(take >= 1);
                let run = &batch[at..at + take];
                if take > 1 {
                    let size = run[0].len;
                    prop_assert!(take <= GSO_MAX_SEGMENTS);
                    prop_assert!(run.iter().map(|t| t.len).sum::<usize>() <= GSO_MAX_BYTES);
                    prop_assert!(run.iter().all(|t| t.dst == run[0].dst && t.len > 0));
                    prop_assert!(run[..take - 1].iter().all(|t| t.len == size));
                    prop_assert!(run[take - 1].len <= size);
                }
                at += take;
            }
            prop_assert_eq!(at, batch.len());
        }
    }
}
