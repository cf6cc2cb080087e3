//! Super-seeding: the policy of a frugal seed node. Hand each block the swarm does not have
//! to one peer, and let the peers spread it, so the seed node's egress approaches one copy
//! of the blob per swarm (docs/node.md "Seed nodes").
//!
//! Sans-IO and deterministic, like [`crate::schedule`]: the node and the simulator drive the
//! same code over their own peer handles.
//!
//! # Call order
//!
//! Feed every event with the time it happened: [`SuperSeed::handle_subscribe`] and
//! [`SuperSeed::handle_unsubscribe`] as a peer's subscriptions to our have-map open and
//! close, [`SuperSeed::handle_have`] as the peer's own have-map (which the driver subscribes
//! to when `handle_subscribe` says the peer is new) reports blocks,
//! [`SuperSeed::handle_have_closed`] when that have-map can no longer be read,
//! [`SuperSeed::handle_request`] for each block request (its answer says whether to serve
//! it or answer `missing`) and [`SuperSeed::handle_served`] once a request was sent in full.
//! Ask [`SuperSeed::poll_reveal`] after any of these (and now and then: reveals also depend
//! on time) for the blocks to add to what a peer is shown. Events about unknown peers are
//! ignored.
//!
//! # Policy
//!
//! - A frugal seed node shows each subscriber only the blocks it *reveals* to that peer
//!   (have-maps only ever grow, so a revealed block stays requestable by that peer).
//! - It reveals to a peer at most [`SuperSeed::window`] blocks that peer has not fetched
//!   yet. It picks them, as contiguous runs from a rotating cursor, among the blocks no
//!   connected peer holds and nobody else has been revealed and not yet served:
//!   - first blocks never sent;
//!   - then blocks sent before that are lost: their only recipient left, or nobody
//!     reports holding them [`RESEND_AFTER`] after they were sent.
//! - It serves a peer only blocks revealed to it; other requests are answered `missing`
//!   (the peer gets them from the peers that have them). The exception is the first and
//!   last block, which every downloader fetches before anything else (the header, and the
//!   proof of the blob's size) from whoever it reaches first: refusing them would stall
//!   newcomers, and they cost two blocks per peer.
//! - The driver subscribes back to every subscriber's have-map, so the core knows what the
//!   swarm holds: a block a peer reports stops being a candidate, and a block whose every
//!   holder left becomes one again. A peer that completes stops subscribing but goes on
//!   serving: it counts as a holder until its have-map can no longer be read.
//! - Safety valve: a peer that has received nothing from other peers for [`STALL_AFTER`]
//!   (it cannot reach the holders: they are behind a firewall, or no longer announced) is
//!   also shown blocks others hold, once no never-sent or lost block is left for it. No
//!   downloader waits forever on a frugal seed node.

use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

use crate::{blob::BlockRange, have::BlockSet};

/// Blocks revealed to a peer and not yet fetched by it, at most (1 MiB: a few round trips
/// of a capped home peer's requests).
pub const DEFAULT_WINDOW: u32 = 16;
/// A block sent this long ago that no connected peer reports holding is sent again.
pub const RESEND_AFTER: Duration = Duration::from_secs(30);
/// A peer that received no block from other peers for this long is served blocks others
/// hold too.
pub const STALL_AFTER: Duration = Duration::from_secs(10);

/// Counters of one blob's frugal decisions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Blocks revealed to some peer (re-reveals of lost blocks included).
    pub revealed: u64,
    /// Blocks sent in full.
    pub blocks_sent: u64,
    /// Blocks sent again after their first copy was lost (churn costs these).
    pub blocks_resent: u64,
    /// Requests answered `missing` because they asked for blocks not revealed to the peer.
    pub refused: u64,
    /// Blocks revealed to stalled peers though others held them ([`STALL_AFTER`]).
    pub revealed_to_stalled: u64,
    /// Distinct blocks sent at least once.
    pub distinct_sent: u64,
}

#[derive(Debug)]
struct PeerState {
    /// Subscriptions open (a peer may re-subscribe before its old stream is seen closing).
    subscriptions: u32,
    revealed: BlockSet,
    /// What the peer reports holding.
    has: BlockSet,
    /// Revealed, not yet served to it, not reported held.
    pending: u32,
    /// When it last reported a block it did not get from us (or joined).
    progress_at: Instant,
}

/// What [`SuperSeed::poll_reveal`] looks for, in order.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Blocks never sent.
    NeverSent,
    /// Blocks sent whose copies are lost.
    Lost,
    /// For a stalled peer: any block it lacks.
    Stalled,
}

/// One blob's super-seeding state, over peers of type `P`.
#[derive(Debug)]
pub struct SuperSeed<P> {
    total: u32,
    window: u32,
    slots: Vec<Option<PeerState>>,
    index: HashMap<P, usize>,
    /// Times each block was sent in full.
    sent: Vec<u32>,
    /// Connected peers reporting each block.
    avail: Vec<u32>,
    /// The peer each block is revealed to and not yet served (by slot).
    pending_at: Vec<Option<usize>>,
    /// Who got each block last, and when.
    last_sent: Vec<Option<(usize, Instant)>>,
    cursor: u32,
    stats: Stats,
}

impl<P: Hash + Eq + Clone> SuperSeed<P> {
    /// State for a blob of `total` blocks, revealing at most `window` blocks per peer.
    pub fn new(total: u32, window: u32) -> Self {
        let n = total as usize;
        Self {
            total,
            window: window.max(1),
            slots: Vec::new(),
            index: HashMap::new(),
            sent: vec![0; n],
            avail: vec![0; n],
            pending_at: vec![None; n],
            last_sent: vec![None; n],
            cursor: 0,
            stats: Stats::default(),
        }
    }

    /// Blocks revealed to one peer and not yet fetched, at most.
    pub const fn window(&self) -> u32 {
        self.window
    }

    /// The counters.
    pub const fn stats(&self) -> Stats {
        self.stats
    }

    /// Peers known: subscribed to our have-map, or still serving theirs.
    pub fn peers(&self) -> usize {
        self.index.len()
    }

    /// Peers subscribed to our have-map (downloading from the swarm).
    pub fn subscribed(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter(|s| s.subscriptions > 0)
            .count()
    }

    /// `peer` subscribed to our have-map. Returns whether it is new: then the driver
    /// subscribes to the peer's own have-map and calls [`SuperSeed::handle_have_closed`]
    /// when that ends.
    pub fn handle_subscribe(&mut self, now: Instant, peer: P) -> bool {
        if let Some(&slot) = self.index.get(&peer) {
            if let Some(s) = self.slots[slot].as_mut() {
                s.subscriptions += 1;
            }
            return false;
        }
        let state = PeerState {
            subscriptions: 1,
            revealed: BlockSet::new(self.total),
            has: BlockSet::new(self.total),
            pending: 0,
            progress_at: now,
        };
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(free) => {
                self.slots[free] = Some(state);
                free
            }
            None => {
                self.slots.push(Some(state));
                self.slots.len() - 1
            }
        };
        self.index.insert(peer, slot);
        true
    }

    /// Blocks revealed to `peer` so far (what a new subscription of it is shown first).
    pub fn revealed_to(&self, peer: &P) -> Vec<BlockRange> {
        self.index
            .get(peer)
            .and_then(|&slot| self.slots[slot].as_ref())
            .map(|s| s.revealed.ranges())
            .unwrap_or_default()
    }

    /// One of `peer`'s subscriptions to our have-map ended. It stays in the swarm as far as
    /// we know (what it holds still counts: a downloader that completes stops subscribing
    /// but goes on serving); with its last subscription, blocks revealed to it and not
    /// fetched are free for others.
    pub fn handle_unsubscribe(&mut self, _now: Instant, peer: &P) {
        let Some(&slot) = self.index.get(peer) else {
            return;
        };
        let Some(state) = self.slots[slot].as_mut() else {
            return;
        };
        state.subscriptions = state.subscriptions.saturating_sub(1);
        if state.subscriptions > 0 {
            return;
        }
        state.pending = 0;
        self.release_pending(slot);
    }

    /// Blocks revealed to `slot` and not fetched are no longer pending there.
    fn release_pending(&mut self, slot: usize) {
        for p in &mut self.pending_at {
            if *p == Some(slot) {
                *p = None;
            }
        }
    }

    /// We stopped hearing `peer`'s have-map (it closed, or refused). If it is not
    /// subscribed to ours either, it has left: what it held no longer counts, and blocks
    /// only it received are lost. Returns whether it left (else: still subscribed, keep
    /// listening to it).
    pub fn handle_have_closed(&mut self, _now: Instant, peer: &P) -> bool {
        let Some(&slot) = self.index.get(peer) else {
            return true;
        };
        if self.slots[slot]
            .as_ref()
            .is_some_and(|s| s.subscriptions > 0)
        {
            return false;
        }
        let state = self.slots[slot].take().expect("slot of an indexed peer");
        self.index.remove(peer);
        for b in state.has.iter() {
            self.avail[b as usize] -= 1;
        }
        self.release_pending(slot);
        for l in &mut self.last_sent {
            if l.is_some_and(|(s, _)| s == slot) {
                // The recipient left: the copy may be gone (a later holder reports it).
                *l = None;
            }
        }
        true
    }

    /// `peer` reports holding `ranges` (its have-map, or an addition to it).
    pub fn handle_have(&mut self, now: Instant, peer: &P, ranges: &[BlockRange]) {
        let Some(&slot) = self.index.get(peer) else {
            return;
        };
        let Some(state) = self.slots[slot].as_mut() else {
            return;
        };
        for r in ranges {
            for b in r.start..r.end.min(self.total) {
                if state.has.insert(b) {
                    if self.last_sent[b as usize].is_none_or(|(s, _)| s != slot) {
                        state.progress_at = now;
                    }
                    self.avail[b as usize] += 1;
                    if self.pending_at[b as usize] == Some(slot) {
                        self.pending_at[b as usize] = None;
                        state.pending -= 1;
                    }
                }
            }
        }
    }

    /// New blocks to reveal to `peer` now (as ranges; empty when its window is still half
    /// full or nothing is worth revealing).
    pub fn poll_reveal(&mut self, now: Instant, peer: &P) -> Vec<BlockRange> {
        let Some(&slot) = self.index.get(peer) else {
            return Vec::new();
        };
        let pending = self.slots[slot].as_ref().map_or(0, |s| s.pending);
        if pending * 2 > self.window {
            return Vec::new();
        }
        let mut want = self.window - pending;
        let mut out: Vec<BlockRange> = Vec::new();
        let stalled = self.slots[slot]
            .as_ref()
            .is_some_and(|s| now.duration_since(s.progress_at) >= STALL_AFTER);
        for pass in [Pass::NeverSent, Pass::Lost, Pass::Stalled] {
            if want == 0 || (pass == Pass::Stalled && !stalled) {
                break;
            }
            for i in 0..self.total {
                if want == 0 {
                    break;
                }
                let b = (self.cursor + i) % self.total;
                if !self.candidate(slot, b, pass, now) {
                    continue;
                }
                if pass == Pass::Stalled {
                    self.stats.revealed_to_stalled += 1;
                }
                if pass == Pass::Lost {
                    tracing::debug!(
                        block = b,
                        sent = self.sent[b as usize],
                        holder_left = self.last_sent[b as usize].is_none(),
                        "frugal: revealing a lost block again"
                    );
                }
                let state = self.slots[slot].as_mut().expect("slot of an indexed peer");
                state.revealed.insert(b);
                state.pending += 1;
                self.pending_at[b as usize] = Some(slot);
                self.stats.revealed += 1;
                want -= 1;
                match out.last_mut() {
                    Some(r) if r.end == b => r.end = b + 1,
                    _ => out.push(BlockRange {
                        start: b,
                        end: b + 1,
                    }),
                }
            }
        }
        if let Some(last) = out.last() {
            // The next peer starts after this run, in another part of the blob.
            self.cursor = last.end % self.total;
        }
        out.sort_unstable();
        out
    }

    fn candidate(&self, slot: usize, b: u32, pass: Pass, now: Instant) -> bool {
        let i = b as usize;
        let state = self.slots[slot].as_ref().expect("slot of an indexed peer");
        if state.has.contains(b) || state.revealed.contains(b) {
            return false;
        }
        if self.pending_at[i].is_some() {
            return false;
        }
        if pass == Pass::Stalled {
            return true;
        }
        if self.avail[i] > 0 {
            return false;
        }
        match pass {
            Pass::NeverSent => self.sent[i] == 0,
            _ => {
                self.sent[i] > 0
                    && self.last_sent[i]
                        .is_none_or(|(_, at)| now.duration_since(at) >= RESEND_AFTER)
            }
        }
    }

    /// `peer` asks for `ranges`: whether to serve them. Yes if every block was revealed to
    /// it, or is the first or last block (what a downloader bootstraps from); else the
    /// driver answers `missing`, and a refusal is counted.
    pub fn handle_request(&mut self, _now: Instant, peer: &P, ranges: &[BlockRange]) -> bool {
        let last = self.total.saturating_sub(1);
        let revealed = self
            .index
            .get(peer)
            .and_then(|&slot| self.slots[slot].as_ref());
        let ok = ranges.iter().all(|r| {
            (r.start..r.end)
                .all(|b| b == 0 || b == last || revealed.is_some_and(|s| s.revealed.contains(b)))
        });
        if !ok {
            self.stats.refused += 1;
        }
        ok
    }

    /// `ranges` were sent in full to `peer`.
    pub fn handle_served(&mut self, now: Instant, peer: &P, ranges: &[BlockRange]) {
        let slot = self.index.get(peer).copied();
        for r in ranges {
            for b in r.start..r.end.min(self.total) {
                let i = b as usize;
                self.sent[i] += 1;
                self.stats.blocks_sent += 1;
                if self.sent[i] == 1 {
                    self.stats.distinct_sent += 1;
                } else {
                    self.stats.blocks_resent += 1;
                    tracing::debug!(
                        block = b,
                        sent = self.sent[i],
                        same_peer = slot.is_some() && self.last_sent[i].map(|(s, _)| s) == slot,
                        "frugal: block sent again"
                    );
                }
                if let Some(slot) = slot {
                    if self.pending_at[i] == Some(slot) {
                        self.pending_at[i] = None;
                        if let Some(s) = self.slots[slot].as_mut() {
                            s.pending -= 1;
                        }
                    }
                    self.last_sent[i] = Some((slot, now));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Tests need a base instant; protocol code never reads the clock itself.
    #[allow(clippy::disallowed_methods)] // test scaffolding only
    fn t0() -> Instant {
        Instant::now()
    }

    fn blocks(ranges: &[BlockRange]) -> Vec<u32> {
        ranges.iter().flat_map(|r| r.start..r.end).collect()
    }

    #[test]
    fn each_block_goes_to_one_peer_until_all_are_out() {
        let now = t0();
        let mut ss = SuperSeed::new(100, 8);
        for p in 0..4 {
            ss.handle_subscribe(now, p);
        }
        let mut seen = BlockSet::new(100);
        // Peers fetch what they are shown and report it; nothing is shown twice.
        for _round in 0..10 {
            for p in 0..4 {
                let r = ss.poll_reveal(now, &p);
                for b in blocks(&r) {
                    assert!(seen.insert(b), "block {b} revealed twice");
                }
                assert!(ss.handle_request(now, &p, &r) || r.is_empty());
                ss.handle_served(now, &p, &r);
                ss.handle_have(now, &p, &r);
            }
        }
        assert!(seen.is_full());
        let s = ss.stats();
        assert_eq!(
            (s.distinct_sent, s.blocks_sent, s.blocks_resent),
            (100, 100, 0)
        );
        // Everything is in the swarm: nothing more to reveal, even after the resend grace,
        // to a peer that is getting blocks from others.
        let later = now + RESEND_AFTER * 2;
        let theirs = blocks(&ss.revealed_to(&1));
        ss.handle_have(
            later,
            &0,
            &[BlockRange {
                start: theirs[0],
                end: theirs[0] + 1,
            }],
        );
        assert!(ss.poll_reveal(later, &0).is_empty());
        assert_eq!(ss.stats().revealed_to_stalled, 0);
    }

    #[test]
    fn window_bounds_what_a_peer_is_shown() {
        let now = t0();
        let mut ss = SuperSeed::new(100, 8);
        ss.handle_subscribe(now, "a");
        assert_eq!(blocks(&ss.poll_reveal(now, &"a")).len(), 8);
        // Nothing fetched: the window is full.
        assert!(ss.poll_reveal(now, &"a").is_empty());
        // Half fetched: topped up.
        ss.handle_served(now, &"a", &[BlockRange { start: 0, end: 4 }]);
        assert_eq!(blocks(&ss.poll_reveal(now, &"a")).len(), 4);
    }

    #[test]
    fn unrevealed_requests_are_refused_and_counted() {
        let now = t0();
        let mut ss = SuperSeed::new(10, 2);
        ss.handle_subscribe(now, 1);
        ss.handle_subscribe(now, 2);
        ss.poll_reveal(now, &1);
        let r1 = [BlockRange { start: 1, end: 2 }];
        assert!(ss.handle_request(now, &1, &r1));
        assert!(!ss.handle_request(now, &2, &r1));
        assert!(
            !ss.handle_request(now, &3, &r1),
            "unknown peers get nothing"
        );
        assert_eq!(ss.stats().refused, 2);
        // Everyone may bootstrap: the first and last block.
        let ends = [
            BlockRange { start: 0, end: 1 },
            BlockRange { start: 9, end: 10 },
        ];
        assert!(ss.handle_request(now, &2, &ends) && ss.handle_request(now, &3, &ends));
    }

    #[test]
    fn blocks_of_a_peer_that_left_are_revealed_again() {
        let now = t0();
        let mut ss = SuperSeed::new(4, 4);
        ss.handle_subscribe(now, 1);
        ss.handle_subscribe(now, 2);
        let r = ss.poll_reveal(now, &1);
        assert_eq!(blocks(&r), vec![0, 1, 2, 3]);
        ss.handle_served(now, &1, &[BlockRange { start: 0, end: 2 }]);
        ss.handle_have(now, &1, &[BlockRange { start: 0, end: 2 }]);
        // Peer 2 gets nothing: blocks 0-1 are in the swarm, 2-3 pending at peer 1.
        assert!(ss.poll_reveal(now, &2).is_empty());
        // Peer 1 leaves before sharing: everything comes back for peer 2.
        ss.handle_unsubscribe(now, &1);
        assert!(ss.handle_have_closed(now, &1));
        let again = blocks(&ss.poll_reveal(now, &2));
        assert_eq!(again, vec![0, 1, 2, 3]);
        ss.handle_served(now, &2, &[BlockRange { start: 0, end: 4 }]);
        assert_eq!(ss.stats().blocks_resent, 2);
    }

    #[test]
    fn a_block_nobody_reports_is_resent_only_after_the_grace() {
        let now = t0();
        let mut ss = SuperSeed::new(2, 2);
        ss.handle_subscribe(now, 1);
        ss.handle_subscribe(now, 2);
        let r = ss.poll_reveal(now, &1);
        ss.handle_served(now, &1, &r);
        // Peer 1 is still here but never reports the blocks (its have-map is slow).
        assert!(ss.poll_reveal(now + Duration::from_secs(1), &2).is_empty());
        assert_eq!(blocks(&ss.poll_reveal(now + RESEND_AFTER, &2)), vec![0, 1]);
    }

    #[test]
    fn resubscribing_does_not_drop_the_peer() {
        let now = t0();
        let mut ss = SuperSeed::new(4, 2);
        assert!(ss.handle_subscribe(now, 1), "a new peer");
        assert!(
            !ss.handle_subscribe(now, 1),
            "a second subscription of the same peer"
        );
        let r = ss.poll_reveal(now, &1);
        ss.handle_unsubscribe(now, &1);
        assert_eq!((ss.peers(), ss.subscribed()), (1, 1));
        assert!(
            !ss.handle_have_closed(now, &1),
            "one subscription is still open"
        );
        assert!(ss.handle_request(now, &1, &r));
        assert_eq!(
            ss.revealed_to(&1),
            r,
            "a new subscription is shown these first"
        );
        ss.handle_unsubscribe(now, &1);
        assert_eq!((ss.peers(), ss.subscribed()), (1, 0));
        assert!(ss.handle_have_closed(now, &1));
        assert_eq!(ss.peers(), 0);
    }

    #[test]
    fn a_peer_that_stops_subscribing_but_still_reports_keeps_its_blocks_counted() {
        let now = t0();
        let mut ss = SuperSeed::new(4, 2);
        ss.handle_subscribe(now, 1);
        ss.handle_subscribe(now, 2);
        let r = ss.poll_reveal(now, &1);
        assert_eq!(blocks(&r), vec![0, 1]);
        ss.handle_served(now, &1, &r);
        ss.handle_have(now, &1, &r);
        // Peer 1 completes elsewhere and stops subscribing; we still hear its have-map.
        ss.handle_unsubscribe(now, &1);
        assert_eq!(
            blocks(&ss.poll_reveal(now, &2)),
            vec![2, 3],
            "0-1 are in the swarm"
        );
        ss.handle_served(now, &2, &[BlockRange { start: 2, end: 4 }]);
        ss.handle_have(now, &2, &[BlockRange { start: 2, end: 4 }]);
        assert!(
            ss.poll_reveal(now + Duration::from_secs(1), &2).is_empty(),
            "nothing is lost"
        );
        assert_eq!(ss.stats().blocks_resent, 0);
    }

    #[test]
    fn blocks_revealed_to_a_peer_that_stops_subscribing_are_freed_for_others() {
        let now = t0();
        let mut ss = SuperSeed::new(2, 2);
        ss.handle_subscribe(now, 1);
        ss.handle_subscribe(now, 2);
        assert_eq!(blocks(&ss.poll_reveal(now, &1)), vec![0, 1]);
        assert!(ss.poll_reveal(now, &2).is_empty(), "pending at peer 1");
        ss.handle_unsubscribe(now, &1);
        assert_eq!(blocks(&ss.poll_reveal(now, &2)), vec![0, 1]);
    }

    #[test]
    fn a_peer_that_gets_nothing_from_others_is_served_after_the_stall_time() {
        let now = t0();
        let all = [BlockRange { start: 0, end: 6 }];
        let mut ss = SuperSeed::new(6, 4);
        ss.handle_subscribe(now, 1);
        ss.handle_have(now, &1, &all);
        // Peer 2 arrives; peer 1 holds everything but peer 2 cannot reach it.
        ss.handle_subscribe(now, 2);
        assert!(
            ss.poll_reveal(now, &2).is_empty(),
            "everything is in the swarm"
        );
        assert!(ss.poll_reveal(now + STALL_AFTER / 2, &2).is_empty());
        let late = now + STALL_AFTER;
        assert_eq!(blocks(&ss.poll_reveal(late, &2)), vec![0, 1, 2, 3]);
        assert_eq!(ss.stats().revealed_to_stalled, 4);
        // Blocks it gets from us do not count as progress: it stays stalled.
        let got = [BlockRange { start: 0, end: 4 }];
        ss.handle_served(late, &2, &got);
        ss.handle_have(late, &2, &got);
        assert_eq!(blocks(&ss.poll_reveal(late, &2)), vec![4, 5]);

        // A peer that does get blocks from others is not stalled.
        let mut ss = SuperSeed::new(4, 4);
        ss.handle_subscribe(now, 1);
        let r = ss.poll_reveal(now, &1);
        ss.handle_served(now, &1, &r);
        ss.handle_have(now, &1, &r);
        ss.handle_subscribe(now, 2);
        ss.handle_have(
            now + STALL_AFTER / 2,
            &2,
            &[BlockRange { start: 0, end: 1 }],
        );
        assert!(ss.poll_reveal(now + STALL_AFTER, &2).is_empty());
        assert_eq!(
            blocks(&ss.poll_reveal(now + STALL_AFTER / 2 + STALL_AFTER, &2)),
            vec![1, 2, 3],
            "stalled again once that stops"
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        Join(u8),
        Unsubscribe(u8),
        Leave(u8),
        Has(u8, u32, u32),
        Reveal(u8),
        Serve(u8),
        Wait(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let peer = 0u8..4;
        prop_oneof![
            peer.clone().prop_map(Op::Join),
            peer.clone().prop_map(Op::Unsubscribe),
            peer.clone().prop_map(Op::Leave),
            (peer.clone(), 0u32..40, 1u32..8).prop_map(|(p, s, l)| Op::Has(p, s, l)),
            peer.clone().prop_map(Op::Reveal),
            peer.prop_map(Op::Serve),
            (0u64..40).prop_map(Op::Wait),
        ]
    }

    impl<P: Hash + Eq + Clone> SuperSeed<P> {
        /// The bookkeeping agrees with itself.
        fn check(&self) {
            for (slot, state) in self.slots.iter().enumerate() {
                let Some(state) = state else { continue };
                let pending = self.pending_at.iter().filter(|p| **p == Some(slot)).count();
                assert_eq!(
                    state.pending as usize, pending,
                    "pending count of slot {slot}"
                );
            }
            for b in 0..self.total {
                let holders = self
                    .slots
                    .iter()
                    .flatten()
                    .filter(|s| s.has.contains(b))
                    .count();
                assert_eq!(self.avail[b as usize] as usize, holders, "holders of {b}");
            }
            assert_eq!(self.index.len(), self.slots.iter().flatten().count());
        }
    }

    proptest::proptest! {
        /// Any sequence of events keeps the counts consistent, never panics, never shows a
        /// peer a block twice or one it holds, and never lets a peer's unfetched reveals
        /// exceed the window.
        #[test]
        fn bookkeeping_holds_under_any_events(
            total in 1u32..40,
            window in 1u32..8,
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let start = t0();
            let mut now = start;
            let mut ss = SuperSeed::new(total, window);
            for op in ops {
                match op {
                    Op::Join(p) => {
                        ss.handle_subscribe(now, p);
                    }
                    Op::Unsubscribe(p) => ss.handle_unsubscribe(now, &p),
                    Op::Leave(p) => {
                        ss.handle_have_closed(now, &p);
                    }
                    Op::Has(p, s, l) => ss.handle_have(now, &p, &[BlockRange { start: s, end: s + l }]),
                    Op::Reveal(p) => {
                        let before = ss.revealed_to(&p);
                        let held: Vec<u32> = ss
                            .index
                            .get(&p)
                            .and_then(|&slot| ss.slots[slot].as_ref())
                            .map(|s| s.has.iter().collect())
                            .unwrap_or_default();
                        let new = blocks(&ss.poll_reveal(now, &p));
                        let before = blocks(&before);
                        for b in &new {
                            proptest::prop_assert!(!before.contains(b), "{b} shown twice");
                            proptest::prop_assert!(!held.contains(b), "{b} is held");
                        }
                        let pending = ss
                            .index
                            .get(&p)
                            .and_then(|&slot| ss.slots[slot].as_ref())
                            .map_or(0, |s| s.pending);
                        proptest::prop_assert!(pending <= window);
                    }
                    Op::Serve(p) => {
                        let shown = ss.revealed_to(&p);
                        if ss.handle_request(now, &p, &shown) {
                            ss.handle_served(now, &p, &shown);
                        }
                    }
                    Op::Wait(s) => now += Duration::from_secs(s),
                }
                ss.check();
            }
        }
    }
}
