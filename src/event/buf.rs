//! Fixed packet buffers: one contiguous allocation cut into equal slots, made once per worker.
//!
//! Each slot starts with `headroom` free bytes so an encapsulation header can be written in
//! front of the inner packet in place (the payload is never moved). Slot sizes are rounded up
//! to 64 bytes so slots start on cache lines.

/// A set of equal slots with headroom.
#[derive(Debug)]
pub(crate) struct SlotBuf {
    data: Vec<u8>,
    slot: usize,
    count: usize,
}

impl SlotBuf {
    /// Allocates `count` slots, each with `headroom` bytes before a `payload`-byte area.
    pub(crate) fn new(count: usize, headroom: usize, payload: usize) -> Self {
        let slot = (headroom + payload).div_ceil(64) * 64;
        Self {
            data: vec![0u8; slot * count],
            slot,
            count,
        }
    }

    /// Returns the number of slots.
    pub(crate) const fn count(&self) -> usize {
        self.count
    }

    /// Returns the slot size in bytes.
    pub(crate) const fn slot(&self) -> usize {
        self.slot
    }

    /// Returns where slot `i` lies in [`Self::data_mut`].
    pub(crate) const fn range(&self, i: usize) -> std::ops::Range<usize> {
        i * self.slot..(i + 1) * self.slot
    }

    /// Returns slot `i` whole (headroom included).
    pub(crate) fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        let start = i * self.slot;
        &mut self.data[start..start + self.slot]
    }

    /// Returns all slots as one slice.
    pub(crate) fn data(&self) -> &[u8] {
        &self.data
    }

    /// Returns all slots as one mutable slice.
    pub(crate) fn data_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_aligned_and_disjoint() {
        let mut b = SlotBuf::new(4, 16, 1472);
        assert_eq!(b.slot() % 64, 0);
        assert!(b.slot() >= 1488);
        b.slot_mut(1).fill(1);
        assert!(b.data()[..b.range(1).start].iter().all(|&x| x == 0));
        assert!(b.data()[b.range(2).start..].iter().all(|&x| x == 0));
        assert_eq!(b.count(), 4);
    }
}
