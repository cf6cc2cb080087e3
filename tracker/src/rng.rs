//! Seeded randomness and hashing for the peer table.
//!
//! The table's choices (which peers an answer lists, the interval jitter) must be
//! reproducible: a simulation or a test with the same seed and the same inputs must see the
//! same answers. So the crate carries its own tiny generator instead of `rand`, whose
//! algorithms and stream layout may change between versions, and it never reads OS
//! randomness (STYLE.md §2). The service passes a seed drawn from the OS in its config.

use std::hash::BuildHasher;
#[allow(deprecated)] // Keyed SipHash-2-4: see `SeededState`.
use std::hash::SipHasher;

/// SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
/// OOPSLA 2014; the seeding generator of xoshiro). Not cryptographic, which is fine: it
/// only shuffles which peers an answer lists. See: <https://prng.di.unimi.it/splitmix64.c>
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub(crate) const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub(crate) const fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`), by Lemire's multiply-shift: the bias is at most
    /// `n / 2^64`, far below anything a peer list could show.
    pub(crate) fn below(&mut self, n: u32) -> u32 {
        debug_assert!(n > 0, "below(0)");
        let wide = u128::from(self.next_u64()) * u128::from(n);
        u32::try_from(wide >> 64).expect("the high half of u64 × u32 is below n")
    }
}

/// Hash-map keys here (blob ids, peer ids) are chosen by remote peers, so the maps use a
/// keyed hash against collision flooding. std's `RandomState` would draw its keys from the
/// OS; this state derives them from the config seed, so the core stays free of OS
/// randomness. `SipHasher` is deprecated only in favour of `DefaultHasher`, whose algorithm
/// is unspecified and which cannot be keyed; SipHash-2-4 with secret keys is exactly what
/// is wanted. Iteration order of these maps never decides an outcome (the table iterates
/// its slabs instead), so the choice of hash does not affect determinism.
#[derive(Clone, Debug)]
pub(crate) struct SeededState {
    k0: u64,
    k1: u64,
}

impl SeededState {
    pub(crate) fn new(rng: &mut SplitMix64) -> Self {
        Self {
            k0: rng.next_u64(),
            k1: rng.next_u64(),
        }
    }
}

#[allow(deprecated)] // Keyed SipHash-2-4: see the type's docs.
impl BuildHasher for SeededState {
    type Hasher = SipHasher;
    fn build_hasher(&self) -> SipHasher {
        SipHasher::new_with_keys(self.k0, self.k1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference output of splitmix64.c for seed 1234567.
    #[test]
    fn matches_reference_splitmix64() {
        let mut r = SplitMix64::new(1_234_567);
        let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423
            ]
        );
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = SplitMix64::new(7);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[r.below(10) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
        assert_eq!(r.below(1), 0);
    }
}
