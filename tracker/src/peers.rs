//! The peers of the table: each peer's handle and latest addresses, stored once however many
//! swarms it is in, in a slab indexed by `u32`.
//!
//! The handle → slot map is keyed by a 32-bit keyed hash of the handle (a fingerprint), not
//! the handle: a libp2p `PeerId` is 80 bytes, and a `HashMap<PeerId, u32>` with its
//! power-of-two bucket count cost ~190 bytes per peer in the benchmark, against ~19 for
//! `u32` keys. The slab holds the handle, so a lookup confirms it. A peer whose fingerprint
//! another peer already has goes to a second map keyed by the handle itself: about n²/2^33
//! peers, ~120 of a million. The hash key is secret, so nobody can aim collisions at it.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};

use crate::addrs::AddrList;
use crate::heap::map_bytes;
use crate::rng::SeededState;

/// Unit tests keep 4 bits of the fingerprint, so that the collision path is exercised all
/// the time.
#[cfg(not(test))]
const FINGERPRINT_MASK: u32 = u32::MAX;
#[cfg(test)]
const FINGERPRINT_MASK: u32 = 0xf;

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// A peer with at least one entry.
#[derive(Debug)]
pub(crate) struct PeerSlot<P> {
    pub(crate) peer: P,
    pub(crate) addrs: AddrList,
    /// Entries of this peer; the slot is free at 0.
    pub(crate) entries: u32,
}

/// Hashes a `u32` key (already a keyed hash) by spreading it over 64 bits: hashbrown takes
/// the bucket from the low bits and a tag from the top 7.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used for u32 keys; a plain mix keeps it correct anyway.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(GOLDEN);
        }
    }
    fn write_u32(&mut self, n: u32) {
        // n × 2^64/φ: the low bits stay as random as n's, the top bits get them too.
        self.0 = u64::from(n).wrapping_mul(GOLDEN);
    }
}

#[derive(Debug)]
pub(crate) struct Peers<P> {
    slots: Vec<PeerSlot<P>>,
    free: Vec<u32>,
    hasher: SeededState,
    by_fingerprint: HashMap<u32, u32, BuildHasherDefault<PassThrough>>,
    /// Peers whose fingerprint another peer already had (normally empty).
    collided: HashMap<P, u32, SeededState>,
}

impl<P: Copy + Eq + Hash> Peers<P> {
    pub(crate) fn new(hasher: SeededState) -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            by_fingerprint: HashMap::default(),
            collided: HashMap::with_hasher(hasher.clone()),
            hasher,
        }
    }

    fn fingerprint(&self, peer: &P) -> u32 {
        // The high half: SipHash output bits are all equally good.
        (self.hasher.hash_one(peer) >> 32) as u32 & FINGERPRINT_MASK
    }

    /// The slot of a peer with entries.
    pub(crate) fn find(&self, peer: &P) -> Option<u32> {
        match self.by_fingerprint.get(&self.fingerprint(peer)) {
            Some(&p) if self.slots[p as usize].peer == *peer => Some(p),
            _ if self.collided.is_empty() => None,
            _ => self.collided.get(peer).copied(),
        }
    }

    pub(crate) fn slot(&self, p: u32) -> &PeerSlot<P> {
        &self.slots[p as usize]
    }

    /// The peer's slot with one more entry (created if new), its addresses updated.
    pub(crate) fn acquire(&mut self, peer: P, addrs: &[Vec<u8>]) -> u32 {
        if let Some(p) = self.find(&peer) {
            let slot = &mut self.slots[p as usize];
            slot.entries += 1;
            if !slot.addrs.same_as(addrs) {
                slot.addrs = AddrList::new(addrs);
            }
            return p;
        }
        let slot = PeerSlot {
            peer,
            addrs: AddrList::new(addrs),
            entries: 1,
        };
        let p = match self.free.pop() {
            Some(p) => {
                self.slots[p as usize] = slot;
                p
            }
            None => {
                self.slots.push(slot);
                u32::try_from(self.slots.len() - 1).expect("at most max_entries peers")
            }
        };
        let fp = self.fingerprint(&peer);
        match self.by_fingerprint.entry(fp) {
            Entry::Occupied(_) => {
                self.collided.insert(peer, p);
            }
            Entry::Vacant(v) => {
                v.insert(p);
            }
        }
        p
    }

    /// Replaces the addresses of the peer in slot `p`.
    pub(crate) fn set_addrs(&mut self, p: u32, addrs: &[Vec<u8>]) {
        let slot = &mut self.slots[p as usize];
        if !slot.addrs.same_as(addrs) {
            slot.addrs = AddrList::new(addrs);
        }
    }

    /// One entry fewer for slot `p`; frees the slot at zero.
    pub(crate) fn release(&mut self, p: u32) {
        let slot = &mut self.slots[p as usize];
        slot.entries -= 1;
        if slot.entries > 0 {
            return;
        }
        slot.addrs = AddrList::default();
        let peer = slot.peer;
        let fp = self.fingerprint(&peer);
        if self.by_fingerprint.get(&fp) == Some(&p) {
            self.by_fingerprint.remove(&fp);
        } else {
            self.collided.remove(&peer);
        }
        self.free.push(p);
    }

    /// Peers with at least one entry.
    pub(crate) fn len(&self) -> usize {
        self.by_fingerprint.len() + self.collided.len()
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        map_bytes(&self.by_fingerprint)
            + map_bytes(&self.collided)
            + self.slots.capacity() * size_of::<PeerSlot<P>>()
            + self.free.capacity() * size_of::<u32>()
            + self
                .slots
                .iter()
                .map(|s| s.addrs.heap_bytes())
                .sum::<usize>()
    }

    /// Checks the slab against the maps and the entry counts (tests only).
    #[cfg(test)]
    pub(crate) fn check(&self, refs: &[u32]) {
        assert_eq!(self.slots.len(), refs.len());
        for (p, slot) in self.slots.iter().enumerate() {
            let p = p as u32;
            assert_eq!(slot.entries, refs[p as usize], "peer slot {p} refcount");
            if slot.entries == 0 {
                assert!(self.free.contains(&p));
                assert!(slot.addrs.is_empty());
            } else {
                assert_eq!(self.find(&slot.peer), Some(p));
            }
        }
        assert_eq!(self.len() + self.free.len(), self.slots.len());
    }

    #[cfg(test)]
    pub(crate) fn slots_len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;
    use proptest::prelude::*;

    proptest! {
        /// Against a model: with 4-bit fingerprints in tests, most peers collide.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((0u32..64, any::<bool>()), 1..400)) {
            let mut peers = Peers::new(SeededState::new(&mut SplitMix64::new(3)));
            let mut model: HashMap<u32, (u32, u32)> = HashMap::new(); // peer → (slot, entries)
            for (peer, add) in ops {
                if add {
                    let p = peers.acquire(peer, &[vec![1]]);
                    let e = model.entry(peer).or_insert((p, 0));
                    prop_assert_eq!(e.0, p);
                    e.1 += 1;
                } else if let Some(&(p, n)) = model.get(&peer) {
                    peers.release(p);
                    if n == 1 {
                        model.remove(&peer);
                    } else {
                        model.insert(peer, (p, n - 1));
                    }
                }
                for q in 0..64 {
                    prop_assert_eq!(peers.find(&q), model.get(&q).map(|e| e.0));
                }
                prop_assert_eq!(peers.len(), model.len());
            }
        }
    }
}
