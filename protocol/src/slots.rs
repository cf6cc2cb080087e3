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
//! A node serves at most [`Config::slots`] requests at once; any other request is answered
//! `busy` at once, so the requester goes to another peer instead of queueing behind others.
//! Slots are taken in order of arrival (round robin: requests are short, so they turn over
//! within about a second). One peer may hold its **fair share** of the slots: all of them
//! divided by the peers that want some — those holding slots now, those refused in the last
//! [`DEMAND_WINDOW`], and the asker — and never less than [`Config::slots_per_peer`]. So a
//! lone downloader may use every slot (a cap limits the rate, never the parallelism: it gets
//! the whole cap), and as others arrive each is held to its share.
//! [`Config::for_upload`] derives the bounds from the upload cap: uncapped, every slot is open
//! to every peer; capped, one slot per [`SLOT_RATE`] of the cap (each served request then
//! moves at a useful rate) and a share of at least two per peer.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use crate::schedule::PeerHandle;

/// Upload rate per slot when the upload is capped ([`Config::for_upload`]).
pub const SLOT_RATE: u64 = 256 * 1024;
/// Fewest slots of a capped node.
pub const MIN_CAPPED_SLOTS: usize = 2;
/// Slots one peer may always hold on a capped node (more while fewer peers want some).
pub const CAPPED_SLOTS_PER_PEER: usize = 2;
/// A peer refused `busy` this recently still wants slots: it counts when the fair share is
/// worked out (requests are short and refused peers ask again within about a second).
pub const DEMAND_WINDOW: Duration = Duration::from_secs(2);

/// How many requests are served at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Requests served at once, over all peers (at least 1).
    pub slots: usize,
    /// Requests of one peer that are always served at once when slots are free (at least 1);
    /// a peer may hold more while fewer peers want slots (its fair share).
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
    /// Peers refused lately, and when: they want slots too (bounded by
    /// [`MAX_WAITING_KEPT`], oldest dropped).
    waiting: HashMap<P, Instant>,
    next_id: u64,
    busy_answers: u64,
}

/// Refused peers remembered for the fair share.
const MAX_WAITING_KEPT: usize = 1024;

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
            waiting: HashMap::new(),
            next_id: 0,
            busy_answers: 0,
        }
    }

    /// The bounds in force.
    pub const fn config(&self) -> Config {
        self.config
    }

    /// A request of `peer` arrived: serve it in a slot, or answer `busy`.
    pub fn handle_request(&mut self, now: Instant, peer: P) -> Decision {
        let held = self.per_peer.get(&peer).copied().unwrap_or(0);
        if self.taken.len() >= self.config.slots || held >= self.fair_share(now, peer) {
            self.busy_answers += 1;
            if self.waiting.len() >= MAX_WAITING_KEPT && !self.waiting.contains_key(&peer) {
                self.forget_waiting(now);
            }
            self.waiting.insert(peer, now);
            return Decision::Busy;
        }
        self.waiting.remove(&peer);
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

    /// Slots `peer` may hold at `now`: every slot divided among the peers that want some
    /// (holding slots, refused within [`DEMAND_WINDOW`], and `peer`), at least
    /// [`Config::slots_per_peer`].
    pub fn fair_share(&self, now: Instant, peer: P) -> usize {
        let wanting = self
            .per_peer
            .keys()
            .chain(
                self.waiting
                    .iter()
                    .filter(|(p, at)| {
                        !self.per_peer.contains_key(p)
                            && now.saturating_duration_since(**at) < DEMAND_WINDOW
                    })
                    .map(|(p, _)| p),
            )
            .filter(|p| **p != peer)
            .count()
            + 1;
        self.config
            .slots
            .div_ceil(wanting)
            .max(self.config.slots_per_peer)
    }

    /// Drops the waiting peers refused before [`DEMAND_WINDOW`]; if none is that old, the
    /// oldest one (the map stays bounded).
    fn forget_waiting(&mut self, now: Instant) {
        self.waiting
            .retain(|_, at| now.saturating_duration_since(*at) < DEMAND_WINDOW);
        if self.waiting.len() >= MAX_WAITING_KEPT
            && let Some(oldest) = self
                .waiting
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(p, _)| *p)
        {
            self.waiting.remove(&oldest);
        }
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
            slots: 4,
            slots_per_peer: 1,
        });
        // Alone, a peer may take every slot (issue 11: a capped sharer gave one downloader a
        // tenth of its cap, refusing its third request).
        let a: Vec<SlotId> = (0..4)
            .map(|_| match s.handle_request(now, 'a') {
                Decision::Serve(id) => id,
                Decision::Busy => panic!("a lone peer is refused"),
            })
            .collect();
        assert_eq!(s.handle_request(now, 'b'), Decision::Busy, "all taken");
        // b wants slots now: a's share is half, so a freed slot goes to b, not back to a.
        assert!(s.handle_done(now, a[0]));
        assert_eq!(s.fair_share(now, 'a'), 2);
        assert_eq!(
            s.handle_request(now, 'a'),
            Decision::Busy,
            "a holds more than its share"
        );
        assert!(matches!(s.handle_request(now, 'b'), Decision::Serve(_)));
        assert!(s.handle_done(now, a[1]));
        assert!(matches!(s.handle_request(now, 'b'), Decision::Serve(_)));
        assert_eq!((s.held_by('a'), s.held_by('b')), (2, 2));
        // b gone quiet: its slots free, a may take all again once b's demand is old.
        let later = now + DEMAND_WINDOW;
        assert_eq!(s.fair_share(later, 'a'), 2, "b still holds slots");
        assert_eq!(s.busy_answers(), 2);
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
        /// Against any sequence of requests, releases and waits: the bounds always hold, a
        /// request is refused only when the slots are full or its peer holds its fair share
        /// (worked out from a model of who wants slots), and a peer alone is never refused
        /// while a slot is free.
        #[test]
        fn bounds_hold_under_any_events(
            slots in 1usize..6,
            per_peer in 1usize..4,
            ops in proptest::collection::vec((0u32..4, 0u8..3, any::<prop::sample::Index>()), 0..200),
        ) {
            let start = t0();
            let mut now = start;
            let mut s = Slots::new(Config { slots, slots_per_peer: per_peer });
            let mut held: Vec<(SlotId, u32)> = Vec::new();
            let mut refused: BTreeMap<u32, Instant> = BTreeMap::new();
            for (peer, kind, pick) in ops {
                match kind {
                    0 | 1 if kind == 0 || held.is_empty() => {
                        let of = |p: u32| held.iter().filter(|(_, q)| *q == p).count();
                        let wanting = (0..4u32)
                            .filter(|&p| p != peer)
                            .filter(|&p| of(p) > 0 || refused.get(&p).is_some_and(|at| now.duration_since(*at) < DEMAND_WINDOW))
                            .count() + 1;
                        let share = slots.div_ceil(wanting).max(per_peer);
                        match s.handle_request(now, peer) {
                            Decision::Serve(id) => {
                                prop_assert!(held.len() < slots && of(peer) < share);
                                held.push((id, peer));
                                refused.remove(&peer);
                            }
                            Decision::Busy => {
                                prop_assert!(held.len() >= slots || of(peer) >= share, "refused below its share {share}");
                                prop_assert!(wanting > 1 || held.len() >= slots, "a lone peer refused with free slots");
                                refused.insert(peer, now);
                            }
                        }
                    }
                    1 => {
                        let (id, _) = held.swap_remove(pick.index(held.len()));
                        prop_assert!(s.handle_done(now, id));
                    }
                    _ => now += Duration::from_millis(700),
                }
                prop_assert_eq!(s.in_use(), held.len());
                for p in 0..4 {
                    prop_assert_eq!(s.held_by(p), held.iter().filter(|(_, q)| *q == p).count());
                }
            }
        }
    }
}
