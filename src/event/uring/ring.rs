//! io_uring mechanics for the loop in `super`: the ring with its submission and completion
//! handling, what each operation's `user_data` encodes, provided-buffer rings, and the probe
//! for what the kernel has.
#![allow(unsafe_code)]

use std::alloc::Layout;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{IoUring, Probe, cqueue, opcode, squeue, types};

/// What an operation is, in the high half of its `user_data`; the low half is its slot or
/// buffer id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A single-shot TUN read into a transmit slot.
    TxRead,
    /// A single-shot receive into a receive slot.
    RxRecv,
    /// A TUN write; the index is its entry in `super::writes::RingWrites`.
    RxWrite,
    /// The stop-flag timer.
    Timer,
    /// A cancellation at shutdown.
    Cancel,
    /// The multishot receive.
    RxMulti,
    /// The multishot TUN read.
    TxMulti,
}

impl Kind {
    const ALL: [Self; 7] = [
        Self::TxRead,
        Self::RxRecv,
        Self::RxWrite,
        Self::Timer,
        Self::Cancel,
        Self::RxMulti,
        Self::TxMulti,
    ];

    /// Returns the `user_data` of this kind of operation on slot `index`.
    pub(super) fn user_data(self, index: usize) -> u64 {
        let kind = Self::ALL.iter().position(|k| *k == self).unwrap_or(0) as u64 + 1;
        (kind << 32) | (index as u64 & 0xffff_ffff)
    }

    /// Splits a `user_data` into its kind and index (`None` for one this loop never made).
    pub(super) fn of(user_data: u64) -> Option<(Self, usize)> {
        let kind = usize::try_from(user_data >> 32).ok()?.checked_sub(1)?;
        let index = usize::try_from(user_data & 0xffff_ffff).ok()?;
        Self::ALL.get(kind).map(|k| (*k, index))
    }
}

/// One completion, moved out of the ring.
#[derive(Debug, Clone, Copy)]
pub(super) struct Completion {
    pub(super) user_data: u64,
    pub(super) result: i32,
    pub(super) flags: u32,
}

impl Completion {
    /// Returns true while a multishot operation stays armed after this completion.
    pub(super) fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// Returns the provided buffer the completion used, if any.
    pub(super) fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }
}

/// What a completion of a multishot operation means for the loop.
#[derive(Debug)]
pub(super) enum Multishot {
    /// A buffer was filled.
    Buffer(u16),
    /// The kernel refused the operation before it ever worked: fall back to single shots.
    Refused,
    /// Nothing to do (the ring ran dry, a cancellation, no buffer).
    Quiet,
    /// It failed; worth a log line.
    Failed(io::Error),
}

/// The state of a multishot operation kept in flight.
#[derive(Debug, Default)]
pub(super) struct Armed {
    /// Set when the operation ended and must be submitted again.
    pub(super) rearm: bool,
    /// Set once a completion succeeded (an early refusal means no support).
    pub(super) worked: bool,
}

impl Armed {
    /// Reads completion `c`: errors in `refusals` before the operation ever worked (no buffer
    /// of it can be in use then) are a refusal, errors in `quiet` are nothing to report.
    pub(super) fn complete(
        &mut self,
        c: &Completion,
        refusals: &[i32],
        quiet: &[i32],
    ) -> Multishot {
        if !c.more() {
            self.rearm = true;
        }
        if c.result < 0 {
            let e = -c.result;
            return if !self.worked && refusals.contains(&e) {
                Multishot::Refused
            } else if quiet.contains(&e) {
                Multishot::Quiet
            } else {
                Multishot::Failed(io::Error::from_raw_os_error(e))
            };
        }
        self.worked = true;
        c.buffer().map_or(Multishot::Quiet, Multishot::Buffer)
    }
}

/// Completion queue entries: room for every operation the loop can have in flight at once (the
/// multishot operations' buffers, the single-shot slots and the ring TUN writes), so no
/// completion waits in the kernel's overflow list.
const CQ_ENTRIES: u32 = 4096;

/// The ring and the count of operations in flight.
pub(super) struct Ring {
    pub(super) ring: IoUring,
    inflight: usize,
    timer_armed: bool,
    timespec: Box<types::Timespec>,
    completions: Vec<Completion>,
}

impl Ring {
    /// Makes a ring with room for `entries` submissions, on the calling thread, which must be
    /// the only one to submit to it. Where the kernel has them (6.1), the ring is set up
    /// single-issuer with deferred task running: completion work runs only when the loop waits
    /// for completions, in one batch, instead of interrupting its own system calls; else with
    /// cooperative task running (5.19); else plain. The completion queue has room for
    /// [`CQ_ENTRIES`] (`IORING_SETUP_CQSIZE`, 5.5).
    pub(super) fn new(entries: u32) -> io::Result<Self> {
        let cq = CQ_ENTRIES.max(2 * entries);
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(cq)
            .build(entries)
            .or_else(|_| {
                IoUring::builder()
                    .setup_coop_taskrun()
                    .setup_cqsize(cq)
                    .build(entries)
            })
            .or_else(|_| IoUring::builder().setup_cqsize(cq).build(entries))
            .or_else(|_| IoUring::new(entries))?;
        Ok(Self {
            ring,
            inflight: 0,
            timer_armed: false,
            timespec: Box::new(types::Timespec::new().sec(0).nsec(200_000_000)),
            completions: Vec::with_capacity(8 * entries as usize),
        })
    }

    /// Queues one entry, submitting first when the submission queue is full.
    ///
    /// # Safety
    ///
    /// Every pointer in `entry` must refer to memory that neither moves nor is touched again
    /// until this entry's completion has been reaped (or, at shutdown, the ring is gone).
    pub(super) unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the caller guarantees the pointers in `entry` stay valid until its
            // completion is reaped.
            let pushed = unsafe { self.ring.submission().push(entry) };
            if pushed.is_ok() {
                self.inflight += 1;
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    /// Arms the timer that wakes the loop to look at its stop flag, unless it is armed.
    pub(super) fn arm_timer(&mut self) -> io::Result<()> {
        if self.timer_armed {
            return Ok(());
        }
        let timer = opcode::Timeout::new(&raw const *self.timespec)
            .build()
            .user_data(Kind::Timer.user_data(0));
        // SAFETY: the timespec is boxed in `self` and lives as long as the ring.
        unsafe { self.push(&timer)? };
        self.timer_armed = true;
        Ok(())
    }

    /// Submits what is queued, if anything (an empty submission would still cost a system
    /// call).
    pub(super) fn submit_queued(&mut self) -> io::Result<()> {
        if !self.ring.submission().is_empty() {
            self.ring.submit()?;
        }
        Ok(())
    }

    /// Returns true when submissions are queued that no enter has taken yet.
    pub(super) fn has_queued(&mut self) -> bool {
        !self.ring.submission().is_empty()
    }

    /// Submits what is queued and waits for at least one completion.
    ///
    /// # Errors
    ///
    /// The `io_uring_enter` error other than `EINTR` and `EBUSY`.
    pub(super) fn submit_and_wait(&mut self) -> io::Result<()> {
        match self.ring.submit_and_wait(1) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Submits what is queued and runs the completion work that is ready, without waiting;
    /// returns whether completions wait to be reaped (for a busy-poll look).
    ///
    /// # Errors
    ///
    /// The `io_uring_enter` error other than `EINTR` and `EBUSY`.
    pub(super) fn peek(&mut self) -> io::Result<bool> {
        /// `IORING_ENTER_GETEVENTS`: with deferred task running, completion work runs only in
        /// an enter that carries it; with no minimum it returns at once.
        const GETEVENTS: u32 = 1;
        self.submit_queued()?;
        // SAFETY: no submissions and no argument pointer are passed; the call only runs
        // completion work and returns.
        let entered = unsafe {
            self.ring
                .submitter()
                .enter::<libc::sigset_t>(0, 0, GETEVENTS, None)
        };
        match entered {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
            Err(e) => return Err(e),
        }
        Ok(!self.ring.completion().is_empty())
    }

    /// Moves all completions out of the ring (so handlers may push new entries) and returns
    /// them; a multishot operation stays in flight while its completions say so.
    pub(super) fn reap(&mut self) -> Vec<Completion> {
        let mut out = std::mem::take(&mut self.completions);
        out.clear();
        let mut finished = 0;
        for cqe in self.ring.completion() {
            let c = Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            };
            if !c.more() {
                finished += 1;
            }
            if Kind::of(c.user_data).map(|(k, _)| k) == Some(Kind::Timer) {
                self.timer_armed = false;
            }
            out.push(c);
        }
        self.inflight = self.inflight.saturating_sub(finished);
        out
    }

    /// Hands the completion list back for reuse.
    pub(super) fn recycle(&mut self, list: Vec<Completion>) {
        self.completions = list;
    }

    /// Cancels the operations `user_data` and waits for every completion in flight, handing
    /// each to `seen` (so a write that completes meanwhile is still counted). Returns false
    /// when some did not arrive within about two seconds.
    pub(super) fn cancel_all(
        &mut self,
        user_data: &[u64],
        mut seen: impl FnMut(&Completion),
    ) -> bool {
        for &ud in user_data {
            let cancel = opcode::AsyncCancel::new(ud)
                .build()
                .user_data(Kind::Cancel.user_data(0));
            // SAFETY: a cancellation refers to no memory.
            if unsafe { self.push(&cancel) }.is_err() {
                return false;
            }
        }
        let mut rounds = 0;
        while self.inflight > 0 && rounds < 20 {
            rounds += 1;
            if self.arm_timer().is_err() || self.submit_and_wait().is_err() {
                return false;
            }
            let list = self.reap();
            list.iter().for_each(&mut seen);
            self.recycle(list);
        }
        self.inflight == 0
    }
}

/// Checks that the kernel has what the loop needs: a ring, fast poll (Linux 5.7), and the
/// READ, WRITE, WRITEV, RECVMSG, TIMEOUT and ASYNC_CANCEL opcodes.
///
/// # Errors
///
/// A sentence saying what is missing (io_uring disabled by `kernel.io_uring_disabled` or a
/// seccomp filter shows up here as the setup error).
pub(super) fn probe() -> Result<(), String> {
    let ring = IoUring::new(8).map_err(|e| format!("io_uring_setup failed: {e}"))?;
    if !ring.params().is_feature_fast_poll() {
        return Err("the kernel lacks IORING_FEAT_FAST_POLL (Linux 5.7)".into());
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("IORING_REGISTER_PROBE failed: {e}"))?;
    let needed = [
        (opcode::Read::CODE, "READ"),
        (opcode::Write::CODE, "WRITE"),
        (opcode::Writev::CODE, "WRITEV"),
        (opcode::RecvMsg::CODE, "RECVMSG"),
        (opcode::Timeout::CODE, "TIMEOUT"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    ];
    for (code, name) in needed {
        if !probe.is_supported(code) {
            return Err(format!("the kernel lacks the io_uring opcode {name}"));
        }
    }
    Ok(())
}

/// Returns true when this kernel's multishot TUN read is trusted: the opcode exists (6.7) and
/// the kernel is 6.12 or later, which has the fixes for TUN (liburing issues #1041 and #1257;
/// io_uring-6.12 commit c9d952b9103b).
pub(super) fn read_multishot_reliable(ring: &IoUring) -> bool {
    let mut probe = Probe::new();
    if ring.submitter().register_probe(&mut probe).is_err()
        || !probe.is_supported(opcode::ReadMulti::CODE)
    {
        return false;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (6, 12)
}

/// A provided-buffer ring (`io_uring_register_buf_ring(3)`): a page-aligned array of entries
/// that hand buffers to the kernel, and the buffers themselves, one contiguous allocation.
pub(super) struct BufRing {
    base: *mut types::BufRingEntry,
    layout: Layout,
    pub(super) mask: u16,
    tail: u16,
    bufs: Box<[u8]>,
    buf_len: usize,
    /// Bytes at the start of each buffer kept from the kernel (headroom for encapsulation).
    offset: usize,
}

impl BufRing {
    /// Allocates `entries` (a power of two) buffers of `buf_len` bytes and registers them with
    /// `ring` as buffer group `group`. `None` when the kernel cannot (before 5.19).
    pub(super) fn register(
        ring: &IoUring,
        entries: u16,
        buf_len: usize,
        offset: usize,
        group: u16,
    ) -> Result<Self, String> {
        let size = usize::from(entries) * std::mem::size_of::<types::BufRingEntry>();
        let layout = Layout::from_size_align(size, 4096).map_err(|e| e.to_string())?;
        // SAFETY: the layout has a non-zero size.
        let base = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<types::BufRingEntry>();
        if base.is_null() {
            return Err("out of memory".into());
        }
        let mut r = Self {
            base,
            layout,
            mask: entries - 1,
            tail: 0,
            bufs: vec![0u8; usize::from(entries) * buf_len].into_boxed_slice(),
            buf_len,
            offset,
        };
        // SAFETY: the entry memory is page aligned, holds `entries` entries and lives in
        // `self`, which the loop keeps until the ring is dropped (field order in the loop,
        // and a failed drain leaks both together).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(base as u64, entries, group, 0)
        }
        .map_err(|e| e.to_string())?;
        for bid in 0..entries {
            r.provide(bid);
        }
        r.publish();
        Ok(r)
    }

    /// Returns buffer `bid`.
    pub(super) fn buf(&mut self, bid: u16) -> &mut [u8] {
        let r = self.range(bid);
        &mut self.bufs[r]
    }

    /// Returns every buffer, as one slice.
    pub(super) fn data(&self) -> &[u8] {
        &self.bufs
    }

    /// Returns every buffer, as one mutable slice.
    pub(super) fn data_mut(&mut self) -> &mut [u8] {
        &mut self.bufs
    }

    /// Returns where buffer `bid` lies in [`Self::data`].
    pub(super) fn range(&self, bid: u16) -> std::ops::Range<usize> {
        let start = usize::from(bid & self.mask) * self.buf_len;
        start..start + self.buf_len
    }

    /// Puts buffer `bid` back at the tail (made visible by [`Self::publish`]).
    pub(super) fn provide(&mut self, bid: u16) {
        let bid = bid & self.mask;
        let offset = self.offset;
        let addr = self.buf(bid)[offset..].as_mut_ptr() as u64;
        let len = u32::try_from(self.buf_len - offset).unwrap_or(u32::MAX);
        let index = usize::from(self.tail & self.mask);
        // SAFETY: `index` is below the number of entries the allocation holds.
        let ptr = unsafe { self.base.add(index) };
        // SAFETY: `ptr` points at an initialised entry inside the allocation; the kernel only
        // reads entries between its head and the published tail, and this one is past it.
        let entry = unsafe { &mut *ptr };
        entry.set_addr(addr);
        entry.set_len(len);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the tail to the kernel (a release store, as liburing's
    /// `io_uring_buf_ring_advance`).
    pub(super) fn publish(&self) {
        // SAFETY: `base` is the first entry of an initialised ring.
        let ptr = unsafe { types::BufRingEntry::tail(self.base) }.cast::<AtomicU16>();
        // SAFETY: `ptr` is the ring's 16-bit tail field, aligned for an AtomicU16, valid for
        // the ring's lifetime and written only by this thread.
        let tail = unsafe { &*ptr };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: `base` came from `alloc_zeroed` with this layout and is freed once.
        unsafe { std::alloc::dealloc(self.base.cast(), self.layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        for kind in Kind::ALL {
            for index in [0, 1, 63, 255, 0xffff] {
                assert_eq!(Kind::of(kind.user_data(index)), Some((kind, index)));
            }
        }
        assert_eq!(Kind::of(0), None);
        assert_eq!(Kind::of(u64::MAX), None);
    }
}
