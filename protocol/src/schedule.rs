//! The download scheduler: which blocks to ask which peer for. Sans-IO and deterministic,
//! so the node and the simulator (a later issue) drive the same code.
//!
//! # Call order
//!
//! Feed every event with the time it happened (`handle_*(now, …)`), then drain
//! [`Scheduler::poll_action`] until it returns `None`, and call [`Scheduler::handle_timeout`]
//! when [`Scheduler::poll_timeout`] says so. Each [`Action::Request`] carries a [`RequestId`];
//! the driver's replies ([`Scheduler::handle_block`], [`Scheduler::handle_failure`]) name it.
//! A reply for an unknown id (already cancelled, already failed) is ignored and returns
//! `false`.
//!
//! # Policy
//!
//! - **Rarest first** (default): a request starts at a block that the fewest connected peers
//!   have (random tie-break from the seeded RNG), then extends to neighbouring blocks the peer
//!   has, so requests stay contiguous. **Sequential** mode takes the lowest missing blocks
//!   first (streaming playback).
//! - **Pipelining**: each peer may have `rate × pipeline_target` bytes in flight, clamped to
//!   `[min_in_flight_blocks, max_in_flight_blocks]`; the rate is an exponentially weighted
//!   average of what the peer delivers over windows of at least 250 ms (a burst of blocks
//!   released by one retransmission is not a fast link).
//! - **Fair share**: no peer has more than `missing / peers` blocks in flight, so several peers
//!   split even a small blob instead of one peer taking it all.
//! - **Last resort**: seed nodes ([`Scheduler::set_last_resort`]) are asked only for blocks
//!   no other peer has while some other peer keeps up: it has room in its pipeline and
//!   drains what it has in flight within `pipeline_target`.
//! - **Endgame**: once every missing block that any usable peer has is requested, an *idle*
//!   peer may ask for already-requested blocks too, `endgame_request_blocks` at a time (up to
//!   `endgame_copies` requests per block); when a block arrives, requests that have nothing
//!   left to deliver are cancelled.
//! - **Failures**: a peer that lies is banned at once (its requests go back to the pool and it
//!   is never scheduled again); one that stalls (no block for `stall_timeout` while it has
//!   requests) or fails is struck, backed off, and dropped after `max_strikes`; one that says
//!   it does not have the blob is dropped; `busy` backs off without a strike. A failed request
//!   that was sent before the peer's latest strike adds no strike: requests in flight together
//!   often fail together (a connection drops; a loaded peer drops the streams it cannot take
//!   yet), and that is one incident, not several.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt::Debug,
    hash::Hash,
    time::{Duration, Instant},
};

use crate::{blob::BlockRange, format::SEGMENT_LEN};

/// A peer as the driver names it: a libp2p `PeerId` in the node, a `u32` in simulations.
pub trait PeerHandle: Copy + Eq + Hash + Ord + Debug {}
impl<T: Copy + Eq + Hash + Ord + Debug> PeerHandle for T {}

/// Names one request; the driver's replies carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Block order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Rarest blocks first (swarm health).
    #[default]
    RarestFirst,
    /// Lowest blocks first (streaming playback).
    Sequential,
}

/// Scheduler settings. `Default` suits a home downlink talking to a handful of peers.
#[derive(Clone, Debug)]
pub struct Config {
    /// Block order.
    pub mode: Mode,
    /// Most blocks in one request (64 = 4 MiB).
    pub max_blocks_per_request: u32,
    /// In-flight floor per peer, in blocks, used before a rate is known too.
    pub min_in_flight_blocks: u32,
    /// In-flight ceiling per peer, in blocks (256 = 16 MiB).
    pub max_in_flight_blocks: u32,
    /// How much data, in time at the peer's measured rate, to keep in flight per peer: the
    /// bandwidth-delay product with headroom.
    pub pipeline_target: Duration,
    /// A peer with requests in flight that delivers nothing for this long has stalled.
    pub stall_timeout: Duration,
    /// Strikes (stalls, failures) before a peer is dropped.
    pub max_strikes: u32,
    /// First back-off after `busy` or a strike; doubles each time, capped at 16×.
    pub backoff: Duration,
    /// Most outstanding requests for one block in endgame.
    pub endgame_copies: u8,
    /// Blocks per endgame (duplicate) request.
    pub endgame_request_blocks: u32,
    /// Seed of the tie-breaking RNG.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::RarestFirst,
            max_blocks_per_request: 64,
            min_in_flight_blocks: 16,
            max_in_flight_blocks: 256,
            pipeline_target: Duration::from_millis(500),
            stall_timeout: Duration::from_secs(15),
            max_strikes: 3,
            backoff: Duration::from_millis(250),
            endgame_copies: 2,
            endgame_request_blocks: 4,
            seed: 0x5eed,
        }
    }
}

/// Why a request failed, as the driver saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The peer sent data that does not verify: ban it.
    Lied,
    /// The peer does not have this blob: stop asking it.
    NotFound,
    /// The peer is at its upload limit: back off, no strike.
    Busy,
    /// The peer lacks blocks it advertised, or the stream broke or timed out: strike.
    Failed,
    /// The peer's own copy of `block` failed its check against the blob id (it says so,
    /// and serves its other blocks): stop asking it for that block; no strike. Its other
    /// requests that name the block are cancelled (it would refuse them too).
    Lacks {
        /// The block.
        block: u32,
    },
}

/// What the driver should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<P> {
    /// Ask `peer` for `blocks` (sorted, disjoint ranges) under id `id`.
    Request {
        /// The peer.
        peer: P,
        /// The request's id.
        id: RequestId,
        /// The blocks.
        blocks: Vec<BlockRange>,
    },
    /// Abandon request `id` to `peer` (endgame: another peer delivered its blocks).
    Cancel {
        /// The peer.
        peer: P,
        /// The request.
        id: RequestId,
    },
    /// `peer` sent bad data: disconnect it; it is never scheduled again for this blob.
    Ban {
        /// The peer.
        peer: P,
    },
    /// `peer` is no use for this blob (not found, too many failures): stop talking to it
    /// about it.
    Drop {
        /// The peer.
        peer: P,
    },
}

#[derive(Debug)]
struct PeerState {
    has: Vec<u64>,
    in_flight: u32,
    requests: BTreeSet<RequestId>,
    /// Bytes per second, exponentially weighted over [`RATE_WINDOW`]s; 0 until measured.
    rate: f64,
    /// The open measuring window: since when, and the bytes delivered in it.
    window_start: Instant,
    window_bytes: f64,
    last_progress: Instant,
    strikes: u32,
    /// Strikes ever given (never reset): a request remembers it when sent, and a failure of
    /// a request sent before the latest strike is part of that strike's incident.
    incidents: u32,
    busy_streak: u32,
    backoff_until: Option<Instant>,
}

impl PeerState {
    fn new(now: Instant, has: Vec<u64>) -> Self {
        Self {
            has,
            in_flight: 0,
            requests: BTreeSet::new(),
            rate: 0.0,
            window_start: now,
            window_bytes: 0.0,
            last_progress: now,
            strikes: 0,
            incidents: 0,
            busy_streak: 0,
            backoff_until: None,
        }
    }
}

impl PeerState {
    /// A block arrived at `now`: counts it in the open window and, once the window spans
    /// [`RATE_WINDOW`] (or holds [`RATE_WINDOW_BYTES`]), folds the window's rate into `rate`. Measuring over a window rather
    /// than block by block keeps a burst (blocks held up by a lost packet, then released
    /// together) from reading as a link a hundred times faster, which would let one peer's
    /// pipeline swallow the blocks every other peer could deliver sooner.
    fn measure(&mut self, now: Instant) {
        self.window_bytes += SEGMENT_LEN as f64;
        let span = now.saturating_duration_since(self.window_start);
        // A window closes after RATE_WINDOW, or sooner on a fast link once it holds more
        // than a burst can (a lost packet holds up at most a congestion window).
        if span < RATE_WINDOW && (self.window_bytes < RATE_WINDOW_BYTES || span < RATE_SPAN_MIN) {
            return;
        }
        let sample = self.window_bytes / span.as_secs_f64();
        self.rate = if self.rate == 0.0 {
            sample
        } else {
            (1.0 - RATE_WEIGHT).mul_add(self.rate, RATE_WEIGHT * sample)
        };
        self.window_start = now;
        self.window_bytes = 0.0;
    }

    /// The peer goes from idle to busy at `now`: the time it sat idle is not its rate.
    fn wake(&mut self, now: Instant) {
        self.last_progress = now;
        self.window_start = now;
        self.window_bytes = 0.0;
    }
}

/// Span of a rate sample...
const RATE_WINDOW: Duration = Duration::from_millis(250);
/// ...or less, once this many bytes arrived (a fast link is measured within milliseconds,
/// so its pipeline opens at once)...
const RATE_WINDOW_BYTES: f64 = (2 << 20) as f64;
/// ...but never less than this.
const RATE_SPAN_MIN: Duration = Duration::from_millis(1);
/// Weight of a new sample in the rate average (about a second of memory).
const RATE_WEIGHT: f64 = 0.3;

#[derive(Debug)]
struct Request<P> {
    peer: P,
    /// Blocks not yet delivered.
    left: BTreeSet<u32>,
    /// The peer's `incidents` when the request was sent.
    incidents: u32,
}

/// SplitMix64: a tiny, fixed RNG so that a seed gives the same schedule on every platform
/// and every version of every dependency (simulations replay traces).
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn bit(bits: &[u64], i: u32) -> bool {
    bits.get(i as usize / 64)
        .is_some_and(|w| w & (1 << (i % 64)) != 0)
}

fn clear_bit(bits: &mut [u64], i: u32) -> bool {
    let w = &mut bits[i as usize / 64];
    let was = *w & (1 << (i % 64)) != 0;
    *w &= !(1 << (i % 64));
    was
}

fn set_bit(bits: &mut [u64], i: u32) -> bool {
    let w = &mut bits[i as usize / 64];
    let was = *w & (1 << (i % 64)) != 0;
    *w |= 1 << (i % 64);
    !was
}

/// The download scheduler for one blob. See the module docs for the call order and policy.
#[derive(Debug)]
pub struct Scheduler<P: PeerHandle> {
    config: Config,
    total: u32,
    have: Vec<u64>,
    missing: u32,
    /// How many usable peers have each block.
    avail: Vec<u32>,
    /// How many outstanding requests cover each block.
    requested: Vec<u8>,
    peers: BTreeMap<P, PeerState>,
    /// Seed nodes: asked for blocks no other peer has, or when the other peers cannot keep
    /// up (their pipelines are full, or slow to drain).
    last_resort: BTreeSet<P>,
    banned: BTreeSet<P>,
    dropped: BTreeSet<P>,
    requests: BTreeMap<RequestId, Request<P>>,
    actions: VecDeque<Action<P>>,
    next_id: u64,
    rng: SplitMix64,
}

impl<P: PeerHandle> Scheduler<P> {
    /// A scheduler for a blob of `total` blocks, of which `have` are already held.
    pub fn new(config: Config, total: u32, have: impl IntoIterator<Item = u32>) -> Self {
        let words = (total as usize).div_ceil(64);
        let mut this = Self {
            rng: SplitMix64(config.seed),
            config,
            total,
            have: vec![0; words],
            missing: total,
            avail: vec![0; total as usize],
            requested: vec![0; total as usize],
            peers: BTreeMap::new(),
            last_resort: BTreeSet::new(),
            banned: BTreeSet::new(),
            dropped: BTreeSet::new(),
            requests: BTreeMap::new(),
            actions: VecDeque::new(),
            next_id: 0,
        };
        for b in have {
            if b < total && set_bit(&mut this.have, b) {
                this.missing -= 1;
            }
        }
        this
    }

    /// Marks `peer` as a last resort (a seed node): it is asked only for blocks no other
    /// usable peer has, unless no other peer keeps up: each is resting, has a full
    /// pipeline, or would take longer than `pipeline_target` to deliver what it has in
    /// flight at its measured rate (a home uplink shared by many downloaders, in the tail
    /// of a flash crowd, where the seed node would otherwise idle).
    /// Servers pay for their egress; peers' uplinks are what swarms are for.
    pub fn set_last_resort(&mut self, peer: P) {
        self.last_resort.insert(peer);
    }

    /// Whether every block is held.
    pub const fn is_complete(&self) -> bool {
        self.missing == 0
    }

    /// Blocks still missing.
    pub const fn missing(&self) -> u32 {
        self.missing
    }

    /// Whether block `b` is held.
    pub fn has(&self, b: u32) -> bool {
        bit(&self.have, b)
    }

    /// Peers currently usable (connected, not banned or dropped).
    pub fn peers(&self) -> impl Iterator<Item = P> + '_ {
        self.peers.keys().copied()
    }

    /// Blocks in flight to `peer`.
    pub fn in_flight(&self, peer: P) -> u32 {
        self.peers.get(&peer).map_or(0, |p| p.in_flight)
    }

    /// `peer`'s measured delivery rate in bytes per second (0 until measured).
    pub fn rate(&self, peer: P) -> f64 {
        self.peers.get(&peer).map_or(0.0, |p| p.rate)
    }

    /// A peer's full have-map (on connect, or a replacement). `blocks` past the end are
    /// ignored. Ignored for banned and dropped peers.
    pub fn handle_have(&mut self, now: Instant, peer: P, blocks: impl IntoIterator<Item = u32>) {
        if self.banned.contains(&peer) || self.dropped.contains(&peer) {
            return;
        }
        let words = (self.total as usize).div_ceil(64);
        let mut has = vec![0u64; words];
        for b in blocks {
            if b < self.total {
                set_bit(&mut has, b);
            }
        }
        if let Some(old) = self.peers.get(&peer) {
            for b in 0..self.total {
                if bit(&old.has, b) {
                    self.avail[b as usize] -= 1;
                }
            }
        }
        for b in 0..self.total {
            if bit(&has, b) {
                self.avail[b as usize] += 1;
            }
        }
        let state = self
            .peers
            .entry(peer)
            .or_insert_with(|| PeerState::new(now, Vec::new()));
        state.has = has;
        // Requests for blocks the new map no longer lists are cancelled: asking would fail.
        let stale: Vec<RequestId> = state
            .requests
            .iter()
            .copied()
            .filter(|id| self.requests[id].left.iter().any(|&b| !bit(&state.has, b)))
            .collect();
        for id in stale {
            self.release(id);
            self.actions.push_back(Action::Cancel { peer, id });
        }
        self.schedule(now);
    }

    /// `peer` now has the blocks in `ranges`, in addition to what it had (an incremental
    /// have-map update, or the first one: an unknown peer is added). Ranges past the end are
    /// clamped. Ignored for banned and dropped peers.
    pub fn handle_have_ranges(&mut self, now: Instant, peer: P, ranges: &[BlockRange]) {
        if self.banned.contains(&peer) || self.dropped.contains(&peer) {
            return;
        }
        let words = (self.total as usize).div_ceil(64);
        let state = self
            .peers
            .entry(peer)
            .or_insert_with(|| PeerState::new(now, vec![0; words]));
        let mut added = false;
        for r in ranges {
            for b in r.start..r.end.min(self.total) {
                if set_bit(&mut state.has, b) {
                    self.avail[b as usize] += 1;
                    added = true;
                }
            }
        }
        if added {
            self.schedule(now);
        }
    }

    /// `peer` now has block `b` (an incremental have-map update).
    pub fn handle_have_block(&mut self, now: Instant, peer: P, b: u32) {
        if b >= self.total {
            return;
        }
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        if set_bit(&mut state.has, b) {
            self.avail[b as usize] += 1;
            self.schedule(now);
        }
    }

    /// `peer` disconnected: its requests go back to the pool. It may come back with a new
    /// have-map.
    pub fn handle_peer_gone(&mut self, now: Instant, peer: P) {
        self.remove_peer(peer);
        self.schedule(now);
    }

    /// A verified block arrived from `peer` for request `id`. Returns `false` (and changes
    /// nothing) if the id is unknown or does not cover the block.
    pub fn handle_block(&mut self, now: Instant, peer: P, id: RequestId, block: u32) -> bool {
        let Some(req) = self.requests.get_mut(&id) else {
            return false;
        };
        if req.peer != peer || !req.left.remove(&block) {
            debug_assert!(req.peer == peer, "reply from the wrong peer");
            return false;
        }
        let done = req.left.is_empty();
        self.requested[block as usize] -= 1;
        if let Some(p) = self.peers.get_mut(&peer) {
            p.in_flight -= 1;
            p.measure(now);
            p.last_progress = now;
            p.strikes = 0;
            p.busy_streak = 0;
            if done {
                p.requests.remove(&id);
            }
        }
        if done {
            self.requests.remove(&id);
        }
        if set_bit(&mut self.have, block) {
            self.missing -= 1;
            // Endgame: drop this block from other requests; cancel those left empty.
            if self.requested[block as usize] > 0 {
                let others: Vec<RequestId> = self
                    .requests
                    .iter()
                    .filter(|(_, r)| r.left.contains(&block))
                    .map(|(&i, _)| i)
                    .collect();
                for other in others {
                    let r = self.requests.get_mut(&other).expect("listed above");
                    r.left.remove(&block);
                    self.requested[block as usize] -= 1;
                    let (owner, empty) = (r.peer, r.left.is_empty());
                    if let Some(p) = self.peers.get_mut(&owner) {
                        p.in_flight -= 1;
                        if empty {
                            p.requests.remove(&other);
                        }
                    }
                    if empty {
                        self.requests.remove(&other);
                        self.actions.push_back(Action::Cancel {
                            peer: owner,
                            id: other,
                        });
                    }
                }
            }
        }
        self.schedule(now);
        true
    }

    /// Request `id` to `peer` failed. Blocks it had not delivered go back to the pool. Returns
    /// `false` if the id is unknown.
    pub fn handle_failure(&mut self, now: Instant, peer: P, id: RequestId, why: Failure) -> bool {
        let Some(req) = self.requests.get(&id) else {
            return false;
        };
        if req.peer != peer {
            debug_assert!(false, "failure reported by the wrong peer");
            return false;
        }
        let sent_at_incident = req.incidents;
        self.release(id);
        match why {
            Failure::Lied => {
                self.remove_peer(peer);
                self.banned.insert(peer);
                self.actions.push_back(Action::Ban { peer });
            }
            Failure::NotFound => {
                self.remove_peer(peer);
                self.dropped.insert(peer);
                self.actions.push_back(Action::Drop { peer });
            }
            Failure::Busy => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.busy_streak = (p.busy_streak + 1).min(5);
                    p.backoff_until = Some(now + self.config.backoff * (1 << (p.busy_streak - 1)));
                }
            }
            Failure::Failed => {
                let struck_since = self
                    .peers
                    .get(&peer)
                    .is_some_and(|p| p.incidents > sent_at_incident);
                if !struck_since {
                    self.strike(now, peer);
                }
            }
            Failure::Lacks { block } => self.lacks(peer, block),
        }
        self.schedule(now);
        true
    }

    /// `peer` does not have `block` after all: forget it in its have-map and cancel its other
    /// requests that name it.
    fn lacks(&mut self, peer: P, block: u32) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if block >= self.total || !clear_bit(&mut p.has, block) {
            return;
        }
        self.avail[block as usize] -= 1;
        let naming: Vec<RequestId> = p
            .requests
            .iter()
            .copied()
            .filter(|id| self.requests[id].left.contains(&block))
            .collect();
        for id in naming {
            self.release(id);
            self.actions.push_back(Action::Cancel { peer, id });
        }
    }

    /// Time has passed: stalled peers are struck and their requests returned; back-offs end.
    pub fn handle_timeout(&mut self, now: Instant) {
        let stalled: Vec<P> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.in_flight > 0
                    && now.saturating_duration_since(p.last_progress) >= self.config.stall_timeout
            })
            .map(|(&k, _)| k)
            .collect();
        for peer in stalled {
            let ids: Vec<RequestId> = self.peers[&peer].requests.iter().copied().collect();
            for id in ids {
                self.release(id);
                self.actions.push_back(Action::Cancel { peer, id });
            }
            self.strike(now, peer);
        }
        for p in self.peers.values_mut() {
            if p.backoff_until.is_some_and(|t| t <= now) {
                p.backoff_until = None;
            }
        }
        self.schedule(now);
    }

    /// The next action for the driver, if any.
    pub fn poll_action(&mut self) -> Option<Action<P>> {
        self.actions.pop_front()
    }

    /// When [`Scheduler::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .filter_map(|p| {
                let stall = (p.in_flight > 0).then(|| p.last_progress + self.config.stall_timeout);
                match (stall, p.backoff_until) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            })
            .min()
    }

    /// Whether the scheduler is in endgame: no missing block that some usable peer has is
    /// left unrequested.
    pub fn in_endgame(&self) -> bool {
        (0..self.total).all(|b| {
            bit(&self.have, b) || self.requested[b as usize] > 0 || self.avail[b as usize] == 0
        })
    }

    fn strike(&mut self, now: Instant, peer: P) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.strikes += 1;
        p.incidents += 1;
        if p.strikes >= self.config.max_strikes {
            self.remove_peer(peer);
            self.dropped.insert(peer);
            self.actions.push_back(Action::Drop { peer });
        } else {
            p.backoff_until = Some(now + self.config.backoff * (1 << p.strikes.min(4)));
            p.last_progress = now;
        }
    }

    /// Forgets request `id`, returning its undelivered blocks to the pool.
    fn release(&mut self, id: RequestId) {
        let Some(req) = self.requests.remove(&id) else {
            return;
        };
        for &b in &req.left {
            self.requested[b as usize] -= 1;
        }
        if let Some(p) = self.peers.get_mut(&req.peer) {
            p.in_flight -= u32::try_from(req.left.len()).expect("a request is at most 2^32 blocks");
            p.requests.remove(&id);
        }
    }

    fn remove_peer(&mut self, peer: P) {
        let Some(state) = self.peers.get(&peer) else {
            return;
        };
        let ids: Vec<RequestId> = state.requests.iter().copied().collect();
        for id in ids {
            self.release(id);
        }
        let state = self.peers.remove(&peer).expect("present above");
        for b in 0..self.total {
            if bit(&state.has, b) {
                self.avail[b as usize] -= 1;
            }
        }
    }

    fn capacity(&self, p: &PeerState) -> u32 {
        let by_rate =
            (p.rate * self.config.pipeline_target.as_secs_f64() / SEGMENT_LEN as f64) as u32;
        by_rate.clamp(
            self.config.min_in_flight_blocks,
            self.config.max_in_flight_blocks.max(1),
        )
    }

    /// Blocks `state`'s pipeline can take now. No peer holds more than its fair share of
    /// what is missing in flight, so with several peers a small blob is not requested from
    /// one peer all at once (which would put the swarm in endgame from the start).
    fn room(&self, state: &PeerState, n_peers: u32) -> u32 {
        let fair = self.missing.div_ceil(n_peers);
        self.capacity(state)
            .min(fair)
            .saturating_sub(state.in_flight)
    }

    /// For a last-resort peer: the blocks some other usable peer has, as a bitmap, unless
    /// no such peer keeps up (then `None`: anything goes); see
    /// [`Scheduler::set_last_resort`].
    fn held_by_others(&self, now: Option<Instant>) -> Option<Vec<u64>> {
        let n_peers = u32::try_from(self.peers.len()).unwrap_or(u32::MAX).max(1);
        let mut union = vec![0u64; self.have.len()];
        let mut can_keep_up = false;
        for (peer, state) in &self.peers {
            if self.last_resort.contains(peer) {
                continue;
            }
            let resting = now.is_some_and(|now| state.backoff_until.is_some_and(|t| t > now));
            // A peer keeps up when it has room and drains what it has in flight within the
            // pipeline target (a home uplink shared by many downloaders does not).
            let draining = state.rate == 0.0
                || f64::from(state.in_flight) * SEGMENT_LEN as f64 / state.rate
                    <= self.config.pipeline_target.as_secs_f64();
            if !resting && draining && self.room(state, n_peers) > 0 {
                can_keep_up = true;
            }
            for (u, w) in union.iter_mut().zip(&state.has) {
                *u |= w;
            }
        }
        can_keep_up.then_some(union)
    }

    /// Fills every usable peer's pipeline.
    fn schedule(&mut self, now: Instant) {
        if self.missing == 0 {
            return;
        }
        let peers: Vec<P> = self.peers.keys().copied().collect();
        let n_peers = u32::try_from(peers.len()).unwrap_or(u32::MAX).max(1);
        for peer in peers {
            loop {
                let state = &self.peers[&peer];
                if state.backoff_until.is_some_and(|t| t > now) {
                    break;
                }
                let capacity = self.capacity(state);
                let room = self.room(state, n_peers);
                // Requests of at most half the pipeline, so a slow peer (a capped home
                // uplink shared by many downloaders) gets small requests that complete and
                // spread soon, while a fast one gets `max_blocks_per_request`.
                let full = self
                    .config
                    .max_blocks_per_request
                    .min(capacity.div_ceil(2))
                    .max(1);
                // Wait until a whole request fits (few, large requests), unless the peer is
                // idle: then whatever fits goes out at once.
                if room == 0 || (room < full && state.in_flight > 0) {
                    break;
                }
                let want = room.min(full);
                let blocks = self.pick(now, peer, want);
                if blocks.is_empty() {
                    break;
                }
                self.issue(now, peer, blocks);
            }
        }
    }

    /// Whether `peer` may be asked for block `b`; `endgame` allows blocks already requested
    /// elsewhere (not from this peer) up to `endgame_copies`.
    fn candidate(&self, peer: P, state: &PeerState, b: u32, endgame: bool) -> bool {
        if bit(&self.have, b) || !bit(&state.has, b) {
            return false;
        }
        let r = self.requested[b as usize];
        if r == 0 {
            return true;
        }
        endgame
            && r < self.config.endgame_copies
            && !state
                .requests
                .iter()
                .any(|id| self.requests[id].left.contains(&b))
            && self
                .requests
                .values()
                .all(|q| q.peer != peer || !q.left.contains(&b))
    }

    fn pick(&mut self, now: Instant, peer: P, want: u32) -> Vec<u32> {
        let state = &self.peers[&peer];
        let mut endgame = false;
        let others = if self.last_resort.contains(&peer) {
            self.held_by_others(Some(now))
        } else {
            None
        };
        let mut seeds: Vec<u32> = (0..self.total)
            .filter(|&b| self.candidate(peer, state, b, false))
            .filter(|&b| others.as_ref().is_none_or(|o| !bit(o, b)))
            .collect();
        // Duplicates only in the global endgame: every missing block that any usable peer
        // has is already requested (BitTorrent's rule), not merely this peer's blocks.
        // Only an idle peer duplicates, a few blocks at a time: the waste is bounded by
        // `endgame_request_blocks` per idle peer, not by pipeline depth.
        let mut want = want;
        if seeds.is_empty() && state.in_flight == 0 && self.in_endgame() {
            endgame = true;
            want = want.min(self.config.endgame_request_blocks.max(1));
            seeds = (0..self.total)
                .filter(|&b| self.candidate(peer, state, b, true))
                .collect();
        }
        let mut picked: BTreeSet<u32> = BTreeSet::new();
        while (picked.len() as u32) < want {
            seeds.retain(|b| !picked.contains(b));
            let Some(&seed) = (match self.config.mode {
                Mode::Sequential => seeds.first(),
                Mode::RarestFirst => {
                    let min = seeds.iter().map(|&b| self.avail[b as usize]).min();
                    let rarest: Vec<&u32> = seeds
                        .iter()
                        .filter(|&&b| Some(self.avail[b as usize]) == min)
                        .collect();
                    (!rarest.is_empty())
                        .then(|| rarest[(self.rng.next() % rarest.len() as u64) as usize])
                }
            }) else {
                break;
            };
            picked.insert(seed);
            // Extend contiguously while the neighbours are candidates too.
            let mut hi = seed;
            while (picked.len() as u32) < want
                && hi + 1 < self.total
                && self.candidate(peer, state, hi + 1, endgame)
                && others.as_ref().is_none_or(|o| !bit(o, hi + 1))
            {
                hi += 1;
                picked.insert(hi);
            }
            let mut lo = seed;
            while (picked.len() as u32) < want
                && lo > 0
                && self.candidate(peer, state, lo - 1, endgame)
                && others.as_ref().is_none_or(|o| !bit(o, lo - 1))
            {
                lo -= 1;
                picked.insert(lo);
            }
        }
        picked.into_iter().collect()
    }

    fn issue(&mut self, now: Instant, peer: P, blocks: Vec<u32>) {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let mut ranges: Vec<BlockRange> = Vec::new();
        for &b in &blocks {
            self.requested[b as usize] += 1;
            match ranges.last_mut() {
                Some(r) if r.end == b => r.end = b + 1,
                _ => ranges.push(BlockRange {
                    start: b,
                    end: b + 1,
                }),
            }
        }
        let p = self.peers.get_mut(&peer).expect("scheduling a known peer");
        if p.in_flight == 0 {
            p.wake(now);
        }
        p.in_flight += u32::try_from(blocks.len()).expect("at most max_blocks_per_request");
        p.requests.insert(id);
        let incidents = p.incidents;
        self.requests.insert(
            id,
            Request {
                peer,
                left: blocks.into_iter().collect(),
                incidents,
            },
        );
        self.actions.push_back(Action::Request {
            peer,
            id,
            blocks: ranges,
        });
    }

    /// Checks the internal bookkeeping (tests and fuzzing): counts match the requests and
    /// have-maps, caps hold, and outside endgame no block is requested twice.
    ///
    /// # Panics
    /// If an invariant is broken.
    pub fn check_invariants(&self) {
        let mut requested = vec![0u8; self.total as usize];
        let mut in_flight: BTreeMap<P, u32> = BTreeMap::new();
        for r in self.requests.values() {
            let has = &self
                .peers
                .get(&r.peer)
                .expect("a request's peer is usable")
                .has;
            for &b in &r.left {
                requested[b as usize] += 1;
                assert!(!bit(&self.have, b), "a held block is still requested");
                assert!(
                    bit(has, b),
                    "a request names a block its peer does not have"
                );
            }
            *in_flight.entry(r.peer).or_default() += r.left.len() as u32;
        }
        assert_eq!(requested, self.requested, "request counts drifted");
        for (peer, p) in &self.peers {
            assert_eq!(
                p.in_flight,
                in_flight.get(peer).copied().unwrap_or(0),
                "in-flight count drifted"
            );
            assert!(
                p.in_flight <= self.config.max_in_flight_blocks.max(1),
                "in-flight cap exceeded"
            );
        }
        for b in 0..self.total {
            let avail = self.peers.values().filter(|p| bit(&p.has, b)).count() as u32;
            assert_eq!(avail, self.avail[b as usize], "availability drifted");
            assert!(
                self.requested[b as usize] <= self.config.endgame_copies.max(1),
                "too many copies of a block"
            );
        }
        let missing = (0..self.total).filter(|&b| !bit(&self.have, b)).count() as u32;
        assert_eq!(missing, self.missing);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: f64 = (1 << 20) as f64;

    // Tests need a base instant; protocol code never reads the clock itself.
    #[allow(clippy::disallowed_methods)] // test scaffolding only
    fn t0() -> Instant {
        Instant::now()
    }

    fn drain(s: &mut Scheduler<u32>) -> Vec<Action<u32>> {
        std::iter::from_fn(|| s.poll_action()).collect()
    }

    fn blocks_of(ranges: &[BlockRange]) -> Vec<u32> {
        ranges.iter().flat_map(|r| r.start..r.end).collect()
    }

    /// The requests `acts` send to `who`, with their blocks.
    fn requests_to(acts: &[Action<u32>], who: u32) -> Vec<(RequestId, Vec<u32>)> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Request { peer, id, blocks } if *peer == who => {
                    Some((*id, blocks_of(blocks)))
                }
                _ => None,
            })
            .collect()
    }

    /// The blocks requested from `who` in `acts`, each with its request's id.
    fn blocks_to(acts: &[Action<u32>], who: u32) -> Vec<(RequestId, u32)> {
        requests_to(acts, who)
            .into_iter()
            .flat_map(|(id, bs)| bs.into_iter().map(move |b| (id, b)))
            .collect()
    }

    #[test]
    fn no_dribble_of_small_requests() {
        // As blocks arrive one by one, the peer's pipeline refills in whole requests, not
        // one block at a time.
        let now = t0();
        let config = Config {
            min_in_flight_blocks: 8,
            max_in_flight_blocks: 8,
            max_blocks_per_request: 4,
            ..Config::default()
        };
        let mut s = Scheduler::new(config, 400, []);
        s.handle_have(now, 1, 0..400);
        let mut open: VecDeque<(RequestId, Vec<u32>)> = VecDeque::new();
        let mut t = now;
        while !s.is_complete() {
            while let Some(a) = s.poll_action() {
                if let Action::Request { id, blocks, .. } = a {
                    let b = blocks_of(&blocks);
                    assert!(b.len() == 4 || s.missing() < 8, "small request {b:?}");
                    open.push_back((id, b));
                }
            }
            let (id, blocks) = open.pop_front().expect("work is in flight");
            for b in blocks {
                t += Duration::from_millis(1);
                s.handle_block(t, 1, id, b);
            }
        }
    }

    #[test]
    fn requests_are_contiguous_and_capped() {
        let now = t0();
        let mut s = Scheduler::new(Config::default(), 1000, []);
        s.handle_have(now, 1, 0..1000);
        let acts = drain(&mut s);
        let total: usize = acts
            .iter()
            .map(|a| match a {
                Action::Request { blocks, .. } => {
                    assert!(blocks.len() <= 2, "{blocks:?}");
                    blocks_of(blocks).len()
                }
                other => panic!("{other:?}"),
            })
            .sum();
        assert_eq!(total as u32, Config::default().min_in_flight_blocks);
        s.check_invariants();
    }

    #[test]
    fn last_resort_peers_get_only_what_others_lack_until_others_are_full() {
        let now = t0();
        let config = Config {
            min_in_flight_blocks: 4,
            max_in_flight_blocks: 4,
            max_blocks_per_request: 2,
            ..Config::default()
        };
        let mut s = Scheduler::new(config, 100, []);
        s.set_last_resort(9);
        s.handle_have(now, 1, 0..50);
        s.handle_have(now, 9, 0..100);
        let requested = |acts: &[Action<u32>], who: u32| -> Vec<u32> {
            requests_to(acts, who)
                .into_iter()
                .flat_map(|(_, b)| b)
                .collect()
        };
        let acts = drain(&mut s);
        s.check_invariants();
        // Peer 1's pipeline (4 blocks) is full: it cannot keep up, so the seed node may be
        // asked for anything.
        let from_seed = requested(&acts, 9);
        assert!(!from_seed.is_empty());
        assert_eq!(requested(&acts, 1).len(), 4);
        // Now give the regular peer room (a second fast peer with everything below 50).
        let mut s = Scheduler::new(
            Config {
                min_in_flight_blocks: 64,
                max_in_flight_blocks: 64,
                max_blocks_per_request: 8,
                ..Config::default()
            },
            100,
            [],
        );
        s.set_last_resort(0);
        s.handle_have(now, 5, 0..50);
        s.handle_have(now, 0, 0..100);
        let acts = drain(&mut s);
        s.check_invariants();
        let from_seed = requested(&acts, 0);
        assert!(!from_seed.is_empty());
        assert!(
            from_seed.iter().all(|&b| b >= 50),
            "the seed node was asked for blocks a peer with room has: {from_seed:?}"
        );
    }

    /// A regular peer with room in its pipeline keeps a last-resort peer (a seed node) to
    /// the blocks nobody else has only while it drains what it has in flight within the
    /// pipeline target: a home uplink shared by many downloaders does not, and then the seed
    /// node's spare capacity is used (the tail of a flash crowd, where it would idle).
    #[test]
    fn a_last_resort_peer_is_asked_when_the_others_are_slow() {
        let new_seed_blocks = |delay: Duration| -> usize {
            let now = t0();
            let config = Config {
                min_in_flight_blocks: 16,
                max_in_flight_blocks: 16,
                max_blocks_per_request: 4,
                ..Config::default()
            };
            let mut s = Scheduler::new(config, 1000, []);
            s.set_last_resort(9);
            s.handle_have(now, 1, 0..1000);
            s.handle_have(now, 9, 0..1000);
            let acts = drain(&mut s);
            // Both pipelines full: peer 1 cannot keep up, so the seed node was asked too.
            let (id1, b1) = requests_to(&acts, 1).remove(0);
            assert_eq!(
                requests_to(&acts, 9)
                    .iter()
                    .map(|(_, b)| b.len())
                    .sum::<usize>(),
                16
            );
            // Peer 1 delivers one block after `delay` (its rate: 64 KiB per `delay`), which
            // leaves it room for one more; then the seed node delivers all it was asked.
            let t = now + delay;
            assert!(s.handle_block(t, 1, id1, b1[0]));
            assert!(drain(&mut s).is_empty(), "a whole request does not fit yet");
            for (id, blocks) in requests_to(&acts, 9) {
                for b in blocks {
                    s.handle_block(t + Duration::from_millis(1), 9, id, b);
                }
            }
            let more = requests_to(&drain(&mut s), 9);
            s.check_invariants();
            more.iter().map(|(_, b)| b.len()).sum()
        };
        // Fast: 15 blocks in flight at 64 KiB per 10 ms drain in 0.15 s: it keeps up.
        assert_eq!(new_seed_blocks(Duration::from_millis(10)), 0);
        // Slow: 15 s to drain them: the seed node is asked again.
        assert!(new_seed_blocks(Duration::from_secs(1)) > 0);
    }

    #[test]
    fn a_burst_of_blocks_does_not_read_as_a_fast_link() {
        let now = t0();
        let config = Config {
            min_in_flight_blocks: 32,
            max_in_flight_blocks: 32,
            max_blocks_per_request: 32,
            ..Config::default()
        };
        let mut s = Scheduler::new(config, 1000, []);
        s.handle_have(now, 1, 0..1000);
        let blocks = blocks_to(&drain(&mut s), 1);
        assert_eq!(blocks.len(), 32);
        // 16 blocks at 1 MiB/s (one per 62.5 ms), then 16 more at once: a lost packet held
        // them up and its retransmission released them together.
        let step = Duration::from_micros(62_500);
        let mut t = now;
        for &(id, b) in &blocks[..16] {
            t += step;
            assert!(s.handle_block(t, 1, id, b));
        }
        let steady = s.rate(1);
        assert!((0.8..1.2).contains(&(steady / MIB)), "steady rate {steady}");
        t += step;
        for &(id, b) in &blocks[16..] {
            assert!(s.handle_block(t, 1, id, b));
        }
        // 32 blocks in 1.06 s is 1.9 MiB/s on average; a per-block estimate read the burst
        // as hundreds of MiB/s, and the pipeline followed.
        let after = s.rate(1);
        assert!(
            after / MIB < 3.0,
            "rate after the burst {} MiB/s",
            after / MIB
        );
        s.check_invariants();
    }

    #[test]
    fn a_fast_link_is_measured_within_milliseconds() {
        let now = t0();
        let mut s = Scheduler::new(Config::default(), 4000, []);
        s.handle_have(now, 1, 0..4000);
        let blocks = blocks_to(&drain(&mut s), 1);
        assert_eq!(blocks.len(), 16, "the floor before any rate is known");
        // 16 blocks (1 MiB) 125 µs apart: 500 MiB/s, loopback.
        let mut t = now;
        for &(id, b) in &blocks {
            t += Duration::from_micros(125);
            s.handle_block(t, 1, id, b);
        }
        // Pipelines wait for a quarter of a second at a slow rate, not at this one: 2 MiB
        // measured close the window, and the pipeline opens towards its ceiling (256).
        let second = blocks_to(&drain(&mut s), 1);
        for &(id, b) in second.iter().take(16) {
            t += Duration::from_micros(125);
            s.handle_block(t, 1, id, b);
        }
        assert!(s.rate(1) / MIB > 100.0, "rate {} MiB/s", s.rate(1) / MIB);
        drain(&mut s);
        assert!(
            s.in_flight(1) > 128,
            "pipeline opened: {} blocks",
            s.in_flight(1)
        );
        s.check_invariants();
    }

    #[test]
    fn rarest_block_is_requested_first() {
        // Peer 1 has every block, peer 2 all but 6, peer 3 all but 6 and 2: block 6 has one
        // holder, block 2 two, the others three. Each peer may have one block in flight.
        let now = t0();
        let config = Config {
            min_in_flight_blocks: 1,
            max_in_flight_blocks: 1,
            max_blocks_per_request: 1,
            ..Config::default()
        };
        let mut s = Scheduler::new(config, 10, []);
        s.handle_have(now, 1, 0..10);
        s.handle_have(now, 2, (0..10).filter(|&b| b != 6));
        s.handle_have(now, 3, (0..10).filter(|&b| b != 6 && b != 2));
        let mut open: BTreeMap<u32, (RequestId, u32)> = BTreeMap::new();
        let record = |acts: Vec<Action<u32>>, open: &mut BTreeMap<u32, (RequestId, u32)>| {
            for a in acts {
                if let Action::Request { peer, id, blocks } = a {
                    open.insert(peer, (id, blocks_of(&blocks)[0]));
                }
            }
        };
        record(drain(&mut s), &mut open);
        // Deliver every request, round after round: each next request of a peer is the
        // rarest block it has among those neither held nor asked for elsewhere.
        let holders = |b: u32| match b {
            6 => 1,
            2 => 2,
            _ => 3,
        };
        let mut checked = 0;
        for _ in 0..10 {
            let Some((&peer, &(id, block))) = open.iter().next() else {
                break;
            };
            open.remove(&peer);
            s.handle_block(now, peer, id, block);
            let acts = drain(&mut s);
            for a in &acts {
                if let Action::Request {
                    peer: p, blocks, ..
                } = a
                    && *p == peer
                    && !s.in_endgame()
                {
                    let got = blocks_of(blocks)[0];
                    let outstanding: Vec<u32> = open.values().map(|(_, b)| *b).collect();
                    // The blocks this peer has that are neither held nor asked for.
                    let lacks = |b: u32| (b == 6 && peer != 1) || (b == 2 && peer == 3);
                    let candidates =
                        (0..10u32).filter(|&b| !(s.has(b) || outstanding.contains(&b) || lacks(b)));
                    let rarest = candidates.map(holders).min().expect("outside endgame");
                    assert_eq!(holders(got), rarest, "peer {peer} asked for {got}");
                    checked += 1;
                }
            }
            record(acts, &mut open);
        }
        s.check_invariants();
        assert!(checked >= 4, "only {checked} requests checked");
    }

    /// Issue 11: a peer whose own copy of a block failed its check says so; it is not
    /// struck, it keeps serving its other blocks, and the block comes from another peer.
    #[test]
    fn a_peer_lacking_one_block_serves_the_rest_and_another_peer_that_one() {
        let now = t0();
        let mut s = Scheduler::new(Config::default(), 40, []);
        s.handle_have(now, 1, 0..40);
        let mut said_lacks = false;
        let mut queue: VecDeque<Action<u32>> = drain(&mut s).into();
        while let Some(a) = queue.pop_front() {
            let Action::Request { peer, id, blocks } = a else {
                assert!(
                    !matches!(a, Action::Drop { .. } | Action::Ban { .. }),
                    "{a:?}"
                );
                continue;
            };
            assert_eq!(peer, 1);
            for b in blocks_of(&blocks) {
                if b == 7 {
                    assert!(!said_lacks, "asked for block 7 again");
                    said_lacks = true;
                    assert!(s.handle_failure(now, 1, id, Failure::Lacks { block: 7 }));
                    break;
                }
                s.handle_block(now, 1, id, b);
            }
            queue.extend(drain(&mut s));
        }
        assert!(said_lacks);
        assert_eq!(s.missing(), 1, "every other block came from peer 1");
        assert!(!s.has(7));
        // Another peer with block 7 gets asked for it.
        s.handle_have(now, 2, [7]);
        let acts = drain(&mut s);
        assert!(
            acts.iter().any(
                |a| matches!(a, Action::Request { peer: 2, blocks, .. } if blocks_of(blocks) == [7])
            ),
            "{acts:?}"
        );
        s.check_invariants();
    }

    #[test]
    fn sequential_mode_goes_in_order() {
        let now = t0();
        let config = Config {
            mode: Mode::Sequential,
            min_in_flight_blocks: 8,
            max_blocks_per_request: 4,
            ..Config::default()
        };
        let mut s = Scheduler::new(config, 100, [0, 1]);
        s.handle_have(now, 1, 0..100);
        let acts = drain(&mut s);
        let got: Vec<u32> = acts
            .iter()
            .flat_map(|a| match a {
                Action::Request { blocks, .. } => blocks_of(blocks),
                _ => vec![],
            })
            .collect();
        assert_eq!(got, (2..10).collect::<Vec<_>>());
    }

    #[test]
    fn liar_is_banned_and_its_blocks_go_elsewhere() {
        let now = t0();
        let mut s = Scheduler::new(Config::default(), 20, []);
        s.handle_have(now, 1, 0..20);
        let acts = drain(&mut s);
        let Action::Request { id, .. } = acts[0].clone() else {
            panic!()
        };
        assert!(s.handle_failure(now, 1, id, Failure::Lied));
        assert_eq!(drain(&mut s), vec![Action::Ban { peer: 1 }]);
        // The banned peer's have-map is ignored from now on.
        s.handle_have(now, 1, 0..20);
        assert!(drain(&mut s).is_empty());
        s.handle_have(now, 2, 0..20);
        assert!(
            drain(&mut s)
                .iter()
                .all(|a| matches!(a, Action::Request { peer: 2, .. }))
        );
        // Unknown ids are ignored.
        assert!(!s.handle_failure(now, 2, RequestId(999), Failure::Failed));
        assert!(!s.handle_block(now, 2, RequestId(999), 0));
        s.check_invariants();
    }

    #[test]
    fn requests_failing_together_are_one_strike() {
        let config = Config {
            min_in_flight_blocks: 8,
            max_in_flight_blocks: 8,
            max_blocks_per_request: 2,
            ..Config::default()
        };
        let backoff = config.backoff;
        let mut s = Scheduler::new(config, 100, []);
        let mut t = t0();
        s.handle_have(t, 1, 0..100);
        // Three incidents, each failing every request in flight: dropped at the third.
        for incident in 1..=3 {
            let ids: Vec<RequestId> = drain(&mut s)
                .into_iter()
                .filter_map(|a| match a {
                    Action::Request { id, .. } => Some(id),
                    _ => None,
                })
                .collect();
            assert!(
                ids.len() >= 2,
                "incident {incident}: {} requests",
                ids.len()
            );
            let mut actions = Vec::new();
            for (i, id) in ids.into_iter().enumerate() {
                // Once dropped, the peer's other requests are forgotten.
                let known = s.handle_failure(t, 1, id, Failure::Failed);
                assert!(known || (incident == 3 && i > 0));
                actions.extend(drain(&mut s));
            }
            s.check_invariants();
            let dropped = actions.contains(&Action::Drop { peer: 1 });
            assert_eq!(dropped, incident == 3, "incident {incident}: {actions:?}");
            // The back-off ends; the peer is asked again.
            t += backoff * 32;
            s.handle_timeout(t);
        }
    }

    #[test]
    fn stalled_peer_is_struck_then_dropped() {
        let now = t0();
        let config = Config::default();
        let stall = config.stall_timeout;
        let mut s = Scheduler::new(config, 50, []);
        s.handle_have(now, 1, 0..50);
        drain(&mut s);
        let mut t = now;
        let mut dropped = false;
        for _ in 0..10 {
            let Some(next) = s.poll_timeout() else { break };
            assert!(next >= t);
            t = next + stall;
            s.handle_timeout(t);
            if drain(&mut s).contains(&Action::Drop { peer: 1 }) {
                dropped = true;
                break;
            }
            s.check_invariants();
        }
        assert!(dropped, "a peer that never delivers is dropped");
        assert_eq!(s.peers().count(), 0);
    }

    #[test]
    fn endgame_duplicates_then_cancels() {
        let now = t0();
        // Capacity 8, so whole requests of 4 (half the pipeline) and one covers the blob.
        let config = Config {
            min_in_flight_blocks: 8,
            max_blocks_per_request: 4,
            ..Config::default()
        };
        let mut s = Scheduler::new(config, 4, []);
        s.handle_have(now, 1, 0..4);
        let first = drain(&mut s);
        assert_eq!(first.len(), 1);
        // A second peer arrives: everything is requested, so it duplicates (endgame).
        s.handle_have(now, 2, 0..4);
        assert!(s.in_endgame());
        let dup = drain(&mut s);
        let Some(Action::Request {
            peer: 2,
            id: dup_id,
            ..
        }) = dup.first().cloned()
        else {
            panic!("{dup:?}")
        };
        let Action::Request { id: first_id, .. } = first[0].clone() else {
            panic!()
        };
        for b in 0..4 {
            assert!(s.handle_block(now, 1, first_id, b));
        }
        // Peer 2's duplicate request has nothing left to deliver: cancelled.
        assert!(drain(&mut s).contains(&Action::Cancel {
            peer: 2,
            id: dup_id
        }));
        assert!(s.is_complete());
        s.check_invariants();
    }

    /// A random swarm driven to completion: peers deliver, fail, lie, stall or leave.
    #[derive(Clone, Debug)]
    enum Op {
        Deliver(usize),
        Fail(usize, u8),
        Leave(u32),
        Join(u32, u64),
        HaveMore(u32, u32, u32),
        Tick(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => any::<usize>().prop_map(Op::Deliver),
            1 => (any::<usize>(), 0u8..5).prop_map(|(i, f)| Op::Fail(i, f)),
            1 => (0u32..6).prop_map(Op::Leave),
            1 => (0u32..6, any::<u64>()).prop_map(|(p, m)| Op::Join(p, m)),
            1 => (0u32..6, 0u32..90, 1u32..10).prop_map(|(p, b, n)| Op::HaveMore(p, b, n)),
            1 => any::<u16>().prop_map(Op::Tick),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Invariants hold after every step: counts consistent, in-flight caps held, at
        /// most `endgame_copies` requests per block, and no duplicate outside endgame. Against
        /// a model of what each peer advertised: a request names only blocks its peer
        /// advertised (and did not say it lacks), and a banned or dropped peer is never
        /// asked again.
        #[test]
        fn invariants_hold_under_arbitrary_events(total in 1u32..80, ops in proptest::collection::vec(op(), 1..200), seed in any::<u64>()) {
            let now = t0();
            let config = Config { seed, min_in_flight_blocks: 3, max_in_flight_blocks: 12, max_blocks_per_request: 5, ..Config::default() };
            let mut s = Scheduler::new(config, total, []);
            let mut t = now;
            let mut open: Vec<(u32, RequestId, Vec<u32>)> = Vec::new();
            let mut advertised: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
            let mut gone: BTreeSet<u32> = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Join(p, mask) => {
                        let has: BTreeSet<u32> = (0..total).filter(|b| mask.rotate_left(*b) & 1 == 1 || b % 7 == p % 7).collect();
                        s.handle_have(t, p, has.iter().copied());
                        advertised.insert(p, has);
                    }
                    Op::HaveMore(p, b, n) => {
                        s.handle_have_ranges(t, p, &[crate::blob::BlockRange { start: b, end: b + n }]);
                        advertised.entry(p).or_default().extend((b..b + n).filter(|&x| x < total));
                    }
                    Op::Leave(p) => {
                        s.handle_peer_gone(t, p);
                        advertised.remove(&p);
                        open.retain(|(q, ..)| *q != p);
                    }
                    Op::Deliver(i) if !open.is_empty() => {
                        let i = i % open.len();
                        let (p, id, blocks) = &mut open[i];
                        if let Some(b) = blocks.pop() {
                            s.handle_block(t, *p, *id, b);
                        }
                        if blocks.is_empty() { open.swap_remove(i); }
                    }
                    Op::Fail(i, f) if !open.is_empty() => {
                        let (p, id, blocks) = open.swap_remove(i % open.len());
                        let lacks = Failure::Lacks { block: blocks.first().copied().unwrap_or(0) };
                        let why = [Failure::Lied, Failure::NotFound, Failure::Busy, Failure::Failed, lacks][f as usize];
                        s.handle_failure(t, p, id, why);
                        if matches!(why, Failure::Lied | Failure::NotFound) { open.retain(|(q, ..)| *q != p); }
                        if let Failure::Lacks { block } = why
                            && let Some(has) = advertised.get_mut(&p)
                        {
                            has.remove(&block);
                        }
                    }
                    Op::Tick(ms) => { t += Duration::from_millis(u64::from(ms) * 4); s.handle_timeout(t); }
                    _ => {}
                }
                while let Some(a) = s.poll_action() {
                    match a {
                        Action::Request { peer, id, blocks } => {
                            prop_assert!(!gone.contains(&peer), "peer {peer} was banned or dropped");
                            // Outside endgame, a new request never duplicates an open one.
                            let new = blocks_of(&blocks);
                            let has = advertised.get(&peer);
                            prop_assert!(
                                new.iter().all(|b| has.is_some_and(|h| h.contains(b))),
                                "request {new:?} to peer {peer}, which advertised {has:?}"
                            );
                            if !s.in_endgame() {
                                for (_, _, bs) in &open { prop_assert!(new.iter().all(|b| !bs.contains(b))); }
                            }
                            open.push((peer, id, new));
                        }
                        Action::Cancel { id, .. } => open.retain(|(_, i, _)| *i != id),
                        Action::Ban { peer } | Action::Drop { peer } => {
                            gone.insert(peer);
                            open.retain(|(q, ..)| *q != peer);
                        }
                    }
                }
                // Delivered blocks may still be listed in `open`: drop those the scheduler holds.
                for (_, _, bs) in &mut open { bs.retain(|b| !s.has(*b)); }
                s.check_invariants();
            }
        }

        /// With honest peers whose have-maps cover the blob, every block is eventually
        /// requested and the download completes.
        #[test]
        fn honest_swarm_completes(total in 1u32..200, peers in 1u32..6, seed in any::<u64>(), seq in any::<bool>()) {
            let now = t0();
            let config = Config { seed, mode: if seq { Mode::Sequential } else { Mode::RarestFirst }, ..Config::default() };
            let mut s = Scheduler::new(config, total, []);
            for p in 0..peers {
                // Each peer has a stripe; peer 0 also has everything, so the union covers all.
                s.handle_have(now, p, (0..total).filter(|b| p == 0 || b % peers == p));
            }
            let mut t = now;
            let mut queue: VecDeque<(u32, RequestId, Vec<u32>)> = VecDeque::new();
            for _ in 0..100_000 {
                while let Some(a) = s.poll_action() {
                    if let Action::Request { peer, id, blocks } = a { queue.push_back((peer, id, blocks_of(&blocks))); }
                }
                let Some((p, id, blocks)) = queue.pop_front() else { break };
                for b in blocks {
                    t += Duration::from_micros(200);
                    s.handle_block(t, p, id, b);
                }
                s.check_invariants();
            }
            prop_assert!(s.is_complete(), "{} blocks missing", s.missing());
        }

        /// Same seed, same events: same actions.
        #[test]
        fn deterministic(seed in any::<u64>()) {
            let run = || {
                let now = t0();
                let mut s = Scheduler::new(Config { seed, ..Config::default() }, 300, []);
                for p in 0..4u32 { s.handle_have(now, p, (0..300).filter(|b| (b + p) % 3 != 0)); }
                std::iter::from_fn(|| s.poll_action()).collect::<Vec<_>>()
            };
            prop_assert_eq!(run(), run());
        }
    }
}
