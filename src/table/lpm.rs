//! Longest-prefix match with one hash map per prefix length, longest first.
//!
//! flannel leases all have the same length (`SubnetLen`, 24 by default), so the common table has
//! one level and a lookup is one mask and one hash probe: the exact-match fast path falls out of
//! the structure with no special case. Mixed lengths cost one probe per distinct length (at most
//! 33 for IPv4, 129 for IPv6). No concurrency here: [`super::Table`] publishes whole snapshots.

use std::hash::Hash;

use rustc_hash::FxHashMap;

/// An address type usable as an LPM key.
pub trait Key: Copy + Eq + Hash {
    /// Bits in the address.
    const BITS: u8;
    /// Returns the address with all bits past `len` cleared.
    fn mask(self, len: u8) -> Self;
}

impl Key for u32 {
    const BITS: u8 = 32;
    fn mask(self, len: u8) -> Self {
        if len == 0 {
            0
        } else {
            self & (Self::MAX << (32 - Self::from(len.min(32))))
        }
    }
}

impl Key for u128 {
    const BITS: u8 = 128;
    fn mask(self, len: u8) -> Self {
        if len == 0 {
            0
        } else {
            self & (Self::MAX << (128 - u32::from(len.min(128))))
        }
    }
}

/// A longest-prefix-match map from prefixes to `V`.
#[derive(Debug, Clone)]
pub struct Lpm<K: Key, V> {
    /// Levels sorted by prefix length, longest first.
    levels: Vec<(u8, FxHashMap<K, V>)>,
    len: usize,
}

impl<K: Key, V: Copy> Default for Lpm<K, V> {
    fn default() -> Self {
        Self {
            levels: Vec::new(),
            len: 0,
        }
    }
}

impl<K: Key, V: Copy> Lpm<K, V> {
    /// Inserts `prefix/len` (host bits are cleared); returns the previous value for that prefix.
    pub fn insert(&mut self, prefix: K, len: u8, value: V) -> Option<V> {
        let len = len.min(K::BITS);
        let pos = match self.levels.binary_search_by(|(l, _)| len.cmp(l)) {
            Ok(pos) => pos,
            Err(pos) => {
                self.levels.insert(pos, (len, FxHashMap::default()));
                pos
            }
        };
        let old = self.levels[pos].1.insert(prefix.mask(len), value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Returns the value of the longest prefix containing `addr`.
    #[inline]
    pub fn lookup(&self, addr: K) -> Option<V> {
        self.levels
            .iter()
            .find_map(|(len, map)| map.get(&addr.mask(*len)).copied())
    }

    /// Returns the number of prefixes.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Returns true when no prefix is stored.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Returns the number of distinct prefix lengths (1 in a flannel table).
    pub fn levels(&self) -> usize {
        self.levels.len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn naive(routes: &[(u32, u8, u16)], addr: u32) -> Option<u16> {
        // Last insert of a prefix wins, as in `Lpm::insert`; then the longest length wins.
        let mut best: Option<(u8, u16)> = None;
        for &(p, l, v) in routes {
            if addr.mask(l) == p.mask(l) && best.is_none_or(|(bl, _)| l >= bl) {
                best = Some((l, v));
            }
        }
        best.map(|(_, v)| v)
    }

    #[test]
    fn longest_prefix_wins() {
        let mut lpm = Lpm::default();
        lpm.insert(0x0af4_0000u32, 16, 1);
        lpm.insert(0x0af4_0100u32, 24, 2);
        lpm.insert(0x0af4_0180u32, 25, 3);
        assert_eq!(lpm.lookup(0x0af4_0101), Some(2));
        assert_eq!(lpm.lookup(0x0af4_01ff), Some(3));
        assert_eq!(lpm.lookup(0x0af4_0201), Some(1));
        assert_eq!(lpm.lookup(0x0b00_0001), None);
        assert_eq!(lpm.levels(), 3);
        lpm.insert(0, 0, 9);
        assert_eq!(lpm.lookup(0x0b00_0001), Some(9));
    }

    proptest! {
        #[test]
        fn matches_a_linear_scan(
            routes in proptest::collection::vec((any::<u32>(), 0u8..=32, any::<u16>()), 0..40),
            probes in proptest::collection::vec(any::<u32>(), 1..40),
        ) {
            let mut lpm = Lpm::default();
            for &(p, l, v) in &routes {
                lpm.insert(p, l, v);
            }
            for &(p, _, _) in &routes {
                prop_assert_eq!(lpm.lookup(p), naive(&routes, p));
            }
            for a in probes {
                prop_assert_eq!(lpm.lookup(a), naive(&routes, a));
            }
        }

        #[test]
        fn v6_matches_a_linear_scan(
            routes in proptest::collection::vec((any::<u128>(), 0u8..=128, any::<u16>()), 0..20),
            probes in proptest::collection::vec(any::<u128>(), 1..20),
        ) {
            let mut lpm = Lpm::default();
            for &(p, l, v) in &routes {
                lpm.insert(p, l, v);
            }
            for a in probes.into_iter().chain(routes.iter().map(|r| r.0)) {
                let mut best: Option<(u8, u16)> = None;
                for &(p, l, v) in &routes {
                    if a.mask(l) == p.mask(l) && best.is_none_or(|(bl, _)| l >= bl) {
                        best = Some((l, v));
                    }
                }
                prop_assert_eq!(lpm.lookup(a), best.map(|(_, v)| v));
            }
        }
    }
}
