//! Upload slots: how many block requests a node serves at once, and how many of them one peer
//! may hold (the choking rule, docs/node.md "Upload slots and choking"). Sans-IO and
//! deterministic, like [`crate::schedule`]: the node and the simulator drive the same code.
//!
//! # Call order
//!
//! For each request that arrives, call [`Slots::handle_request`]: it answers
//! [`Decision::Serve`] with a [`SlotId`] (serve the request, then call
//! [`Slots::handle_done`] with that id however the request ends) or [`Decision::Busy`]
//! (answer `busy` at once). A `handle_done` for an unknown or already released slot is
//! ignored and returns `false`.
//!
//! # Policy
//!
//! A node serves at most [`Config::slots`] requests at once and at most
//! [`Config::slots_per_peer`] of one peer; any other request is answered `busy` at once, so
//! the requester goes to another peer instead of queueing behind others. Slots are taken in
//! order of arrival (round robin: requests are short, so they turn over within about a
//! second). [`Config::for_upload`] derives both bounds from the upload cap: uncapped, every
//! slot is open to every peer; capped, one slot per [`SLOT_RATE`] of the cap (each served
//! request then moves at a useful rate) and two per peer (so one peer cannot take them all).

use std::{
    collections::{BTreeMap, HashMap},
    time::Instant,
};

use crate::schedule::PeerHandle;

/// Upload rate per slot when the upload is capped ([`Config::for_upload`]).
pub const SLOT_RATE: u64 = 256 * 1024;
/// Fewest slots of a capped node.
pub const MIN_CAPPED_SLOTS: usize = 2;
/// Slots one peer may hold at once on a capped node.
pub const CAPPED_SLOTS_PER_PEER: usize = 2;

/// How many requests are served at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Requests served at once, over all peers (at least 1).
    pub slots: usize,
    /// Requests of one peer served at once (at least 1).
    pub slots_per_peer: usize,
}

impl Config {
    /// The node's rule: with no upload cap (`upload_limit_bytes_per_sec` = `None`, or
    /// `Some(0)`: a cap of nothing means no cap), `max_streams` slots, all open to one peer; with a cap, one slot per [`SLOT_RATE`]
    /// (at least [`MIN_CAPPED_SLOTS`], at most `max_streams`, if that is larger) and
    /// [`CAPPED_SLOTS_PER_PEER`] per peer.
    pub fn for_upload(upload_limit_bytes_per_sec: Option<u64>, max_streams: usize) -> Self {
        match upload_limit_bytes_per_sec.filter(|&r| r > 0) {
            None => Self {
                slots: max_streams.max(1),
                slots_per_peer: max_streams.max(1),
            },
            Some(rate) => Self {
                slots: usize::try_from(rate / SLOT_RATE)
                    .unwrap_or(usize::MAX)
                    .clamp(MIN_CAPPED_SLOTS, max_streams.max(MIN_CAPPED_SLOTS)),
                slots_per_peer: CAPPED_SLOTS_PER_PEER,
            },
        }
    }
}

/// Names one slot taken by [`Slots::handle_request`]; [`Slots::handle_done`] releases it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotId(pub u64);

/// What to do with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Serve it in this slot; release the slot when the request ends.
    Serve(SlotId),
    /// Every slot, or this peer's share of them, is taken: answer `busy` now.
    Busy,
}

/// The upload slots of one node, over peers of type `P`.
#[derive(Debug)]
pub struct Slots<P> {
    config: Config,
    /// The peer holding each slot taken.
    taken: BTreeMap<SlotId, P>,
    /// Slots each peer holds (peers holding none are not kept).
    per_peer: HashMap<P, usize>,
    next_id: u64,
    busy_answers: u64,
}

impl<P: PeerHandle> Slots<P> {
    /// No slot taken yet.
    pub fn new(config: Config) -> Self {
        Self {
            config: Config {
                slots: config.slots.max(1),
                slots_per_peer: config.slots_per_peer.max(1),
            },
            taken: BTreeMap::new(),
            per_peer: HashMap::new(),
            next_id: 0,
            busy_answers: 0,
        }
    }

    /// The bounds in force.
    pub const fn config(&self) -> Config {
        self.config
    }

    /// A request of `peer` arrived: serve it in a slot, or answer `busy`.
    pub fn handle_request(&mut self, _now: Instant, peer: P) -> Decision {
        let held = self.per_peer.get(&peer).copied().unwrap_or(0);
        if self.taken.len() >= self.config.slots || held >= self.config.slots_per_peer {
            self.busy_answers += 1;
            return Decision::Busy;
        }
        let id = SlotId(self.next_id);
        self.next_id += 1;
        self.taken.insert(id, peer);
        *self.per_peer.entry(peer).or_insert(0) += 1;
        Decision::Serve(id)
    }

    /// The request served in `slot` ended (completed, failed or cancelled). Returns `false`
    /// for a slot that is not taken.
    pub fn handle_done(&mut self, _now: Instant, slot: SlotId) -> bool {
        let Some(peer) = self.taken.remove(&slot) else {
            return false;
        };
        match self.per_peer.get_mut(&peer) {
            Some(n) if *n > 1 => *n -= 1,
            _ => {
                self.per_peer.remove(&peer);
            }
        }
        true
    }

    /// Slots taken now.
    pub fn in_use(&self) -> usize {
        self.taken.len()
    }

    /// Slots `peer` holds now.
    pub fn held_by(&self, peer: P) -> usize {
        self.per_peer.get(&peer).copied().unwrap_or(0)
    }

    /// Requests answered `busy` so far.
    pub const fn busy_answers(&self) -> u64 {
        self.busy_answers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Tests need a base instant; protocol code never reads the clock itself.
    #[allow(clippy::disallowed_methods)] // test scaffolding only
    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn the_cap_sets_the_slots() {
        let mib = 1024 * 1024;
        assert_eq!(
            Config::for_upload(None, 32),
            Config {
                slots: 32,
                slots_per_peer: 32
            }
        );
        // One slot per 256 KiB/s, at least 2, at most the stream limit; 2 per peer.
        for (cap, slots) in [(1, 2), (mib, 4), (4 * mib, 16), (200 * mib, 32)] {
            assert_eq!(
                Config::for_upload(Some(cap), 32),
                Config {
                    slots,
                    slots_per_peer: 2
                },
                "cap {cap}"
            );
        }
        // A stream limit below the minimum does not go below it.
        assert_eq!(Config::for_upload(Some(100 * mib), 1).slots, 2);
        // A cap of 0 is no cap (issue 11: `share --up-limit 0` answered every request busy).
        assert_eq!(
            Config::for_upload(Some(0), 32),
            Config::for_upload(None, 32)
        );
    }

    #[test]
    fn a_peer_gets_its_share_and_others_the_rest() {
        let now = t0();
        let mut s = Slots::new(Config {
            slots: 3,
            slots_per_peer: 2,
        });
        let a1 = s.handle_request(now, 'a');
        let a2 = s.handle_request(now, 'a');
        assert!(matches!((a1, a2), (Decision::Serve(_), Decision::Serve(_))));
        assert_eq!(s.handle_request(now, 'a'), Decision::Busy, "a's share");
        let Decision::Serve(b1) = s.handle_request(now, 'b') else {
            panic!("b gets the third slot");
        };
        assert_eq!(s.handle_request(now, 'c'), Decision::Busy, "all taken");
        assert_eq!((s.in_use(), s.busy_answers()), (3, 2));
        assert!(s.handle_done(now, b1));
        assert!(matches!(s.handle_request(now, 'c'), Decision::Serve(_)));
        assert_eq!((s.held_by('a'), s.held_by('b'), s.held_by('c')), (2, 0, 1));
    }

    #[test]
    fn releasing_twice_is_ignored() {
        let now = t0();
        let mut s = Slots::new(Config {
            slots: 1,
            slots_per_peer: 1,
        });
        let Decision::Serve(id) = s.handle_request(now, 1u32) else {
            panic!("a free slot");
        };
        assert!(s.handle_done(now, id));
        assert!(!s.handle_done(now, id));
        assert_eq!(s.in_use(), 0);
    }

    proptest! {
        /// Against any sequence of requests and releases: the bounds always hold, a request
        /// is refused only when a bound is reached, and the counts agree with a model.
        #[test]
        fn bounds_hold_under_any_events(
            slots in 1usize..6,
            per_peer in 1usize..4,
            ops in proptest::collection::vec((0u32..4, any::<bool>(), any::<prop::sample::Index>()), 0..200),
        ) {
            let now = t0();
            let mut s = Slots::new(Config { slots, slots_per_peer: per_peer });
            let mut held: Vec<(SlotId, u32)> = Vec::new();
            for (peer, request, pick) in ops {
                if request || held.is_empty() {
                    let of_peer = held.iter().filter(|(_, p)| *p == peer).count();
                    match s.handle_request(now, peer) {
                        Decision::Serve(id) => {
                            prop_assert!(held.len() < slots && of_peer < per_peer);
                            held.push((id, peer));
                        }
                        Decision::Busy => prop_assert!(held.len() >= slots || of_peer >= per_peer),
                    }
                } else {
                    let (id, _) = held.swap_remove(pick.index(held.len()));
                    prop_assert!(s.handle_done(now, id));
                }
                prop_assert_eq!(s.in_use(), held.len());
                for p in 0..4 {
                    prop_assert_eq!(s.held_by(p), held.iter().filter(|(_, q)| *q == p).count());
                }
            }
        }
    }
}
