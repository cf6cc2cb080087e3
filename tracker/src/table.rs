//! The peer table: a pure, clock-injected, bounded map from swarms to the peers in them
//! (docs/tracker.md §2).
//!
//! # Call order
//!
//! The shell owns one [`PeerTable`] and feeds it every request with the current time:
//! - [`PeerTable::announce`] for each decoded announce, with the authenticated remote peer;
//! - [`PeerTable::scrape`] for each blob of a scrape;
//! - [`PeerTable::expire`] whenever [`PeerTable::poll_timeout`] has passed (re-read
//!   `poll_timeout` after every call: announces can move it earlier).
//!
//! Time only moves forward: a `now` earlier than one seen before counts as the latest one.
//! The table never reads the clock and draws randomness only from [`Config::seed`], so the
//! same seed and the same calls give the same answers.
//!
//! # Policies (precise definitions in docs/tracker.md §2)
//!
//! - **Expiry.** An entry that has not been refreshed for [`Config::entry_ttl`] is gone: it
//!   is never counted or listed, and `expire` frees its memory.
//! - **Rate limit.** A refresh of an entry sooner than [`Config::min_announce_interval`]
//!   after its last accepted announce is refused with [`Refusal::RateLimited`] and changes
//!   nothing — except `Stopped`, which always removes the entry, and an entry's first
//!   `Completed`, which is always recorded.
//! - **Established entries.** An entry becomes *established* when it is refreshed at least
//!   half an [`Config::announce_interval`] after it was created: it has proven to be a live
//!   peer that follows the protocol. Newcomers never evict established entries.
//! - **Caps and eviction.** When a swarm holds [`Config::max_entries_per_swarm`] entries, a
//!   new entry evicts the swarm's oldest non-established entry; when the table holds
//!   [`Config::max_entries`], the table's oldest non-established entry. If there is none,
//!   the newcomer is refused ([`Refusal::SwarmFull`], [`Refusal::TrackerFull`]).
//! - **Come back sooner.** A leecher in a swarm where nobody seeds is told to announce again
//!   after [`Config::min_announce_interval`] instead of the full interval: it waits for a
//!   seeder, and obeying that never hits the rate limit.
//! - **Answers.** Leechers get seeders and leechers, seeders and seed nodes get leechers
//!   only, and leechers get seed nodes in a separate list. Each list is a uniformly random
//!   sample, except that at least half of it (rounded up) comes from established entries
//!   when there are enough: a flood of fresh identities cannot crowd honest peers out of the
//!   answers. The asker is never listed.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::time::{Duration, Instant};

use shoal_protocol::BlobId;
use shoal_protocol::tracker::{
    AnnounceRequest, AnnounceResponse, Event, MAX_PEERS, MAX_SEED_NODES, PeerEntry, RefusalReason,
    Role, SwarmStats,
};
use tracing::{debug, trace};

use crate::addrs::AddrList;
use crate::heap::map_bytes;
use crate::peers::Peers;
use crate::rng::{SeededState, SplitMix64};

/// Peer table settings. Durations have a resolution of one second (sub-second parts round
/// up). [`Default`] suits a public tracker on a small server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// How often peers should re-announce (the interval answers carry, before jitter).
    /// Default 5 minutes: BitTorrent's 30 minutes makes departed peers linger in answers,
    /// and a Shoal announce is one small request on an existing connection.
    pub announce_interval: Duration,
    /// Up to this much is added at random to each answer's interval, so peers that joined
    /// together (a flash crowd, a tracker restart) spread their re-announces. Default 30 s.
    pub interval_jitter: Duration,
    /// An entry not refreshed for this long expires. Must exceed `announce_interval +
    /// interval_jitter`. Default 750 s (2.5 intervals): a peer may miss one re-announce,
    /// not two.
    pub entry_ttl: Duration,
    /// Shortest time between two accepted announces of one peer for one swarm. Must not
    /// exceed `announce_interval`. Default 60 s.
    pub min_announce_interval: Duration,
    /// Most entries in one swarm. Default 20,000.
    pub max_entries_per_swarm: usize,
    /// Most entries in the table (and so most swarms and most distinct peers). Default
    /// 2,000,000: about 520 MB for a service keyed by libp2p peer ids, at the ~260 bytes per
    /// entry measured by the benchmark (docs/tracker.md §5).
    pub max_entries: usize,
    /// Most seeders and leechers in one answer, at most [`MAX_PEERS`]. Default 50.
    pub answer_peers: usize,
    /// Most seed nodes in one answer, at most [`MAX_SEED_NODES`]. Default 8.
    pub answer_seed_nodes: usize,
    /// [`PeerTable::poll_timeout`] asks for an [`PeerTable::expire`] pass at most this often,
    /// so memory of expired entries is freed up to this late (they stop being listed on
    /// time regardless). Default 5 s.
    pub expiry_granularity: Duration,
    /// Seed of the table's random choices and hash keys. The service should draw it from
    /// the OS; simulations and tests fix it. Default 0.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            announce_interval: Duration::from_secs(300),
            interval_jitter: Duration::from_secs(30),
            entry_ttl: Duration::from_secs(750),
            min_announce_interval: Duration::from_secs(60),
            max_entries_per_swarm: 20_000,
            max_entries: 2_000_000,
            answer_peers: MAX_PEERS,
            answer_seed_nodes: 8,
            expiry_granularity: Duration::from_secs(5),
            seed: 0,
        }
    }
}

impl Config {
    /// Sets [`Config::announce_interval`].
    #[must_use]
    pub const fn with_announce_interval(mut self, d: Duration) -> Self {
        self.announce_interval = d;
        self
    }
    /// Sets [`Config::interval_jitter`].
    #[must_use]
    pub const fn with_interval_jitter(mut self, d: Duration) -> Self {
        self.interval_jitter = d;
        self
    }
    /// Sets [`Config::entry_ttl`].
    #[must_use]
    pub const fn with_entry_ttl(mut self, d: Duration) -> Self {
        self.entry_ttl = d;
        self
    }
    /// Sets [`Config::min_announce_interval`].
    #[must_use]
    pub const fn with_min_announce_interval(mut self, d: Duration) -> Self {
        self.min_announce_interval = d;
        self
    }
    /// Sets [`Config::max_entries_per_swarm`].
    #[must_use]
    pub const fn with_max_entries_per_swarm(mut self, n: usize) -> Self {
        self.max_entries_per_swarm = n;
        self
    }
    /// Sets [`Config::max_entries`].
    #[must_use]
    pub const fn with_max_entries(mut self, n: usize) -> Self {
        self.max_entries = n;
        self
    }
    /// Sets [`Config::answer_peers`].
    #[must_use]
    pub const fn with_answer_peers(mut self, n: usize) -> Self {
        self.answer_peers = n;
        self
    }
    /// Sets [`Config::answer_seed_nodes`].
    #[must_use]
    pub const fn with_answer_seed_nodes(mut self, n: usize) -> Self {
        self.answer_seed_nodes = n;
        self
    }
    /// Sets [`Config::expiry_granularity`].
    #[must_use]
    pub const fn with_expiry_granularity(mut self, d: Duration) -> Self {
        self.expiry_granularity = d;
        self
    }
    /// Sets [`Config::seed`].
    #[must_use]
    pub const fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Checks the settings against each other and the protocol's bounds.
    ///
    /// # Errors
    /// The first setting that is out of range or contradicts another.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.ticks().map(|_| ())
    }

    /// The durations in whole seconds, validated.
    fn ticks(&self) -> Result<Ticks, ConfigError> {
        let secs = |field: &'static str, d: Duration, min: u32| {
            let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            match u32::try_from(s) {
                Ok(s) if s >= min && s <= MAX_DURATION_SECS => Ok(s),
                _ => Err(ConfigError::Duration { field, value: d }),
            }
        };
        let t = Ticks {
            interval: secs("announce_interval", self.announce_interval, 1)?,
            jitter: secs("interval_jitter", self.interval_jitter, 0)?,
            ttl: secs("entry_ttl", self.entry_ttl, 1)?,
            min_gap: secs("min_announce_interval", self.min_announce_interval, 0)?,
            granularity: secs("expiry_granularity", self.expiry_granularity, 0)?,
        };
        if t.min_gap > t.interval {
            return Err(ConfigError::MinIntervalAboveInterval);
        }
        if t.ttl <= t.interval + t.jitter {
            return Err(ConfigError::TtlTooShort);
        }
        let count = |field: &'static str, value: usize, max: usize| {
            if (1..=max).contains(&value) {
                Ok(())
            } else {
                Err(ConfigError::Count { field, value, max })
            }
        };
        count("max_entries", self.max_entries, MAX_TABLE_ENTRIES)?;
        count(
            "max_entries_per_swarm",
            self.max_entries_per_swarm,
            self.max_entries,
        )?;
        count("answer_peers", self.answer_peers, MAX_PEERS)?;
        if self.answer_seed_nodes > MAX_SEED_NODES {
            return Err(ConfigError::Count {
                field: "answer_seed_nodes",
                value: self.answer_seed_nodes,
                max: MAX_SEED_NODES,
            });
        }
        Ok(t)
    }
}

/// Longest configurable duration: 10 years, so tick sums never overflow.
const MAX_DURATION_SECS: u32 = 10 * 365 * 24 * 3600;
/// Slab indices are `u32`, with room to spare.
const MAX_TABLE_ENTRIES: usize = 1 << 31;

/// Why a [`Config`] was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A duration is out of range (zero where at least a second is needed, or over ten
    /// years).
    #[error("{field} of {value:?} is out of range")]
    Duration {
        /// The setting.
        field: &'static str,
        /// Its value.
        value: Duration,
    },
    /// A count is out of range.
    #[error("{field} is {value}; it must be 1 to {max}")]
    Count {
        /// The setting.
        field: &'static str,
        /// Its value.
        value: usize,
        /// The largest allowed.
        max: usize,
    },
    /// Peers that follow the announce interval would be rate limited.
    #[error("min_announce_interval exceeds announce_interval")]
    MinIntervalAboveInterval,
    /// Peers that re-announce on time would expire.
    #[error("entry_ttl must exceed announce_interval + interval_jitter")]
    TtlTooShort,
}

/// Config durations in ticks (whole seconds).
#[derive(Clone, Copy, Debug)]
struct Ticks {
    interval: u32,
    jitter: u32,
    ttl: u32,
    min_gap: u32,
    granularity: u32,
}

/// Why the table did not accept an announce. Each maps to a
/// [`RefusalReason`] for the wire (`From`).
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The peer refreshed this swarm sooner than [`Config::min_announce_interval`]; its
    /// entry is unchanged.
    #[error("announced too soon; retry after {retry_after:?}")]
    RateLimited {
        /// When the next announce for this swarm will be accepted (at least one second).
        retry_after: Duration,
    },
    /// The swarm is at its cap and every entry in it is established.
    #[error("swarm is full of established peers")]
    SwarmFull,
    /// The table is at its cap and every entry in it is established.
    #[error("tracker is full of established peers")]
    TrackerFull,
    /// The announce breaks a protocol rule (`AnnounceRequest::validate`).
    #[error("announce is invalid")]
    BadRequest,
}

impl From<Refusal> for RefusalReason {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::RateLimited { retry_after } => Self::RateLimited {
                retry_after_secs: u32::try_from(
                    retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0),
                )
                .unwrap_or(u32::MAX)
                .max(1),
            },
            Refusal::SwarmFull => Self::SwarmFull,
            Refusal::TrackerFull => Self::TrackerFull,
            Refusal::BadRequest => Self::BadRequest,
        }
    }
}

/// One listed peer in an [`Answer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnswerPeer<P> {
    /// The peer.
    pub peer: P,
    /// Its role in this swarm.
    pub role: Role,
    /// Blocks it held at its last announce.
    pub blocks_held: u32,
    /// Where it listens (shared with the table, not copied).
    pub addrs: AddrList,
}

/// The table's answer to an accepted announce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer<P> {
    /// When to announce again: [`Config::announce_interval`] plus jitter, whole seconds; for
    /// a leecher in a swarm where nobody seeds (no seeder, no seed node),
    /// [`Config::min_announce_interval`] (at least 1 s), so it hears of a seeder soon.
    pub interval: Duration,
    /// Other seeders and leechers (a seeder or seed node gets leechers only), in random
    /// order. Empty for `Stopped`.
    pub peers: Vec<AnswerPeer<P>>,
    /// Seed nodes, for leechers only, in random order.
    pub seed_nodes: Vec<AnswerPeer<P>>,
}

impl<P> Answer<P> {
    /// The wire answer, with `peer_id` turning a peer handle into its id bytes (libp2p
    /// `PeerId::to_bytes`).
    pub fn into_response(self, mut peer_id: impl FnMut(&P) -> Vec<u8>) -> AnnounceResponse {
        let mut entry = |a: AnswerPeer<P>| PeerEntry {
            peer_id: peer_id(&a.peer),
            addrs: a.addrs.to_vecs(),
            role: a.role,
            blocks_held: a.blocks_held,
        };
        AnnounceResponse::Ok {
            interval_secs: u32::try_from(self.interval.as_secs())
                .unwrap_or(u32::MAX)
                .max(1),
            peers: self.peers.into_iter().map(&mut entry).collect(),
            seed_nodes: self.seed_nodes.into_iter().map(&mut entry).collect(),
        }
    }
}

/// What the table knows about one peer in one swarm ([`PeerTable::entry`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryInfo {
    /// Role at the last accepted announce.
    pub role: Role,
    /// Blocks held at the last accepted announce.
    pub blocks_held: u32,
    /// Whether the entry is established (see the [module docs](self)).
    pub established: bool,
    /// When the entry was created (to the second).
    pub since: Instant,
    /// When the last announce was accepted (to the second).
    pub last_announce: Instant,
    /// The peer's addresses (shared by all its entries: the latest announce wins).
    pub addrs: AddrList,
}

/// Counters and gauges for `/stats` and Prometheus. Gauges describe the table now;
/// counters count since the table was created.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Gauge: entries (peer × swarm).
    pub entries: u64,
    /// Gauge: established entries.
    pub established: u64,
    /// Gauge: swarms with at least one entry.
    pub swarms: u64,
    /// Gauge: distinct peers with at least one entry.
    pub peers: u64,
    /// Gauge: entries with role seeder.
    pub seeders: u64,
    /// Gauge: entries with role leecher.
    pub leechers: u64,
    /// Gauge: entries with role seed node.
    pub seed_nodes: u64,
    /// Counter: accepted announces (including `Stopped`).
    pub announces: u64,
    /// Counter: scraped swarms.
    pub scrapes: u64,
    /// Counter: entries removed by `Stopped`.
    pub stopped: u64,
    /// Counter: entries removed because they were not refreshed in time.
    pub expired: u64,
    /// Counter: non-established entries evicted to make room for newcomers.
    pub evicted: u64,
    /// Counter: announces refused as [`Refusal::RateLimited`].
    pub refused_rate_limited: u64,
    /// Counter: announces refused as [`Refusal::SwarmFull`].
    pub refused_swarm_full: u64,
    /// Counter: announces refused as [`Refusal::TrackerFull`].
    pub refused_tracker_full: u64,
    /// Counter: announces refused as [`Refusal::BadRequest`].
    pub refused_bad_request: u64,
}

// Entry classes, in their order inside a swarm's entry array. The order makes every pool an
// answer draws from one contiguous range, split into an established and a fresh part:
// a leecher's peers are SEEDER_EST..=SEEDER_NEW (established: SEEDER_EST..=LEECHER_EST), a
// seeder's are LEECHER_EST..=LEECHER_NEW, seed nodes SEED_NODE_EST..=SEED_NODE_NEW. New
// leechers, the most common insert, need one swap; new seeders none.
const SEED_NODE_EST: usize = 0;
const SEED_NODE_NEW: usize = 1;
const SEEDER_EST: usize = 2;
const LEECHER_EST: usize = 3;
const LEECHER_NEW: usize = 4;
const SEEDER_NEW: usize = 5;
const CLASSES: usize = 6;

const fn class_of(role: Role, established: bool) -> usize {
    match (role, established) {
        (Role::SeedNode, true) => SEED_NODE_EST,
        (Role::SeedNode, false) => SEED_NODE_NEW,
        (Role::Seeder, true) => SEEDER_EST,
        (Role::Seeder, false) => SEEDER_NEW,
        (Role::Leecher, true) => LEECHER_EST,
        (Role::Leecher, false) => LEECHER_NEW,
    }
}

const fn role_of(class: usize) -> Role {
    match class {
        SEED_NODE_EST | SEED_NODE_NEW => Role::SeedNode,
        SEEDER_EST | SEEDER_NEW => Role::Seeder,
        _ => Role::Leecher,
    }
}

const fn is_established(class: usize) -> bool {
    matches!(class, SEED_NODE_EST | SEEDER_EST | LEECHER_EST)
}

/// One peer in one swarm: 24 bytes. Times are ticks (whole seconds since the table's
/// epoch); role and establishment are implied by the entry's class (its position range).
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Peer slot.
    peer: u32,
    /// Creation number, unique among live entries: ties the entry to its record in the
    /// eviction queue. (Slots and ticks are not enough: an entry stopped and re-created
    /// within the same second by the same peer reuses both.)
    seq: u32,
    /// Tick the entry was created.
    since: u32,
    /// Tick of the last accepted announce.
    last: u32,
    blocks_held: u32,
    /// Whether this entry's `Completed` was counted.
    completed: bool,
}

/// The entries of one blob, grouped by class: class `c` occupies positions
/// `ends[c - 1]..ends[c]` (from 0 for class 0), so `ends[CLASSES - 1]` is the length.
#[derive(Debug)]
struct Swarm {
    blob: BlobId,
    entries: Vec<Entry>,
    ends: [u32; CLASSES],
    completed: u32,
    /// A lower bound of the entries' `last` (exact after a sweep): the swarm needs no sweep
    /// before `min_last + ttl`.
    min_last: u32,
}

type Index = HashMap<(u32, u32), u32, SeededState>;

impl Swarm {
    const fn start(&self, class: usize) -> u32 {
        if class == 0 { 0 } else { self.ends[class - 1] }
    }

    const fn len(&self) -> u32 {
        self.ends[CLASSES - 1]
    }

    fn class_at(&self, pos: u32) -> usize {
        self.ends
            .iter()
            .position(|&end| pos < end)
            .expect("position inside the swarm")
    }

    const fn count(&self, class: usize) -> u32 {
        self.ends[class] - self.start(class)
    }

    /// Inserts `entry` at the end of `class`, moving one entry of each later class up.
    /// Returns its position.
    fn insert(&mut self, s: u32, index: &mut Index, class: usize, entry: Entry) -> u32 {
        self.entries.push(entry);
        self.ends[CLASSES - 1] += 1;
        let mut hole = self.len() - 1;
        for k in (class + 1..CLASSES).rev() {
            // The new entry is the last of class k: swap it with the first of class k,
            // then shrink class k from the front.
            let first = self.ends[k - 1];
            if first != hole {
                self.entries.swap(first as usize, hole as usize);
                index.insert((s, self.entries[hole as usize].peer), hole);
            }
            self.ends[k - 1] += 1;
            hole = first;
        }
        index.insert((s, entry.peer), hole);
        hole
    }

    /// Removes the entry at `pos`, moving one entry of its class and of each later class
    /// down. Returns it and its class.
    fn remove(&mut self, s: u32, index: &mut Index, pos: u32) -> (Entry, usize) {
        let class = self.class_at(pos);
        let mut hole = pos;
        for k in class..CLASSES {
            // The removed entry is in class k: swap it with the last of class k, then
            // shrink class k from the back (so it becomes the first of class k + 1).
            let last = self.ends[k] - 1;
            if last != hole {
                self.entries.swap(hole as usize, last as usize);
                index.insert((s, self.entries[hole as usize].peer), hole);
            }
            self.ends[k] -= 1;
            hole = last;
        }
        let entry = self.entries.pop().expect("the hole is the last position");
        index.remove(&(s, entry.peer));
        (entry, class)
    }

    /// Position of the oldest non-established entry (ties: the lowest position).
    fn oldest_fresh(&self) -> Option<u32> {
        [SEED_NODE_NEW, LEECHER_NEW, SEEDER_NEW]
            .into_iter()
            .flat_map(|c| self.start(c)..self.ends[c])
            .min_by_key(|&pos| (self.entries[pos as usize].since, pos))
    }
}

/// An entry as it was created, in the queue of non-established entries (oldest first).
#[derive(Clone, Copy, Debug)]
struct Fresh {
    seq: u32,
    swarm: u32,
    peer: u32,
}

/// The tracker's peer table. See the [module docs](self) for the call order and policies.
///
/// `P` is the peer handle: libp2p's `PeerId` in the service, `u32` in simulations.
pub struct PeerTable<P> {
    config: Config,
    ticks: Ticks,
    epoch: Instant,
    /// Latest tick seen.
    now: u32,
    rng: SplitMix64,
    swarm_ids: HashMap<BlobId, u32, SeededState>,
    swarms: Vec<Swarm>,
    free_swarms: Vec<u32>,
    peers: Peers<P>,
    /// (swarm slot, peer slot) → position in the swarm's entries.
    index: Index,
    /// Non-established entries in creation order, for table-wide eviction. Stale records
    /// (entries since established or removed) are skipped when popped and dropped when the
    /// queue grows past twice the live ones plus 1,024 (`compact_fresh`).
    fresh: VecDeque<Fresh>,
    /// The next entry's `seq` (wrapping).
    next_seq: u32,
    /// Entries per class, table-wide.
    totals: [u64; CLASSES],
    /// A lower bound of the earliest expiry tick; `None` when the table is empty.
    next_expiry: Option<u64>,
    last_expire: u32,
    stats: Stats,
}

impl<P: Copy + Eq + Hash + fmt::Debug> fmt::Debug for PeerTable<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerTable")
            .field("config", &self.config)
            .field("entries", &self.totals.iter().sum::<u64>())
            .field("swarms", &self.swarm_ids.len())
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl<P: Copy + Eq + Hash + Ord + fmt::Debug> PeerTable<P> {
    /// An empty table. `now` is its epoch: later times are counted in whole seconds from it.
    ///
    /// # Errors
    /// If the config is invalid ([`Config::validate`]).
    pub fn new(config: Config, now: Instant) -> Result<Self, ConfigError> {
        let ticks = config.ticks()?;
        let mut rng = SplitMix64::new(config.seed);
        let hasher = SeededState::new(&mut rng);
        Ok(Self {
            ticks,
            epoch: now,
            now: 0,
            rng,
            swarm_ids: HashMap::with_hasher(hasher.clone()),
            swarms: Vec::new(),
            free_swarms: Vec::new(),
            peers: Peers::new(hasher.clone()),
            index: HashMap::with_hasher(hasher),
            fresh: VecDeque::new(),
            next_seq: 0,
            totals: [0; CLASSES],
            next_expiry: None,
            last_expire: 0,
            stats: Stats::default(),
            config,
        })
    }

    /// The settings.
    pub const fn config(&self) -> &Config {
        &self.config
    }

    /// Entries in the table (each peer once per swarm it is in).
    pub fn len(&self) -> usize {
        usize::try_from(self.totals.iter().sum::<u64>()).expect("at most max_entries")
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Handles an announce from `peer` (the authenticated remote of the connection, never
    /// a field of the request).
    ///
    /// Creates or refreshes the peer's entry in the swarm of `req.blob` (`Stopped` removes
    /// it) and answers a random subset of the other peers. `req.addrs` replace the
    /// addresses stored for `peer` (the shell may filter or add to them first).
    ///
    /// # Errors
    /// A [`Refusal`]; the peer's entry is then unchanged.
    pub fn announce(
        &mut self,
        now: Instant,
        peer: P,
        req: &AnnounceRequest,
    ) -> Result<Answer<P>, Refusal> {
        let t = self.advance(now);
        if req.validate().is_err() {
            self.stats.refused_bad_request += 1;
            return Err(Refusal::BadRequest);
        }
        self.sweep_if_due(req.blob);
        let existing = self.locate(&peer, &req.blob);
        if req.event == Event::Stopped {
            if let Some((s, _, pos)) = existing {
                self.remove_at(s, pos);
                self.drop_swarm_if_empty(s);
                self.stats.stopped += 1;
            }
            self.stats.announces += 1;
            return Ok(Answer {
                interval: self.interval(),
                peers: Vec::new(),
                seed_nodes: Vec::new(),
            });
        }
        let (s, pos) = match existing {
            Some((s, p, pos)) => (s, self.refresh(t, s, p, pos, req)?),
            None => self.admit(t, peer, req)?,
        };
        self.stats.announces += 1;
        Ok(self.answer(s, pos, req.role))
    }

    /// The size of a swarm (zero counts if the table does not know it).
    pub fn scrape(&mut self, now: Instant, blob: BlobId) -> SwarmStats {
        self.advance(now);
        self.sweep_if_due(blob);
        self.stats.scrapes += 1;
        let Some(&s) = self.swarm_ids.get(&blob) else {
            return SwarmStats::empty(blob);
        };
        let sw = &self.swarms[s as usize];
        SwarmStats {
            blob,
            seeders: sw.count(SEEDER_EST) + sw.count(SEEDER_NEW),
            leechers: sw.count(LEECHER_EST) + sw.count(LEECHER_NEW),
            seed_nodes: sw.count(SEED_NODE_EST) + sw.count(SEED_NODE_NEW),
            completed: sw.completed,
        }
    }

    /// Removes every entry that was not refreshed within [`Config::entry_ttl`] and returns
    /// how many. Call it when [`PeerTable::poll_timeout`] has passed; calling it at other
    /// times is harmless. Cost: one check per swarm, plus the entries of swarms that have
    /// some entry due.
    pub fn expire(&mut self, now: Instant) -> usize {
        let t = self.advance(now);
        self.last_expire = t;
        let mut removed = 0;
        let mut next: Option<u64> = None;
        for s in 0..self.swarms.len() {
            if self.swarms[s].entries.is_empty() {
                continue; // a free slot
            }
            let s = u32::try_from(s).expect("slab indices fit u32");
            if self.due(s) {
                removed += self.sweep(s);
            }
            let sw = &self.swarms[s as usize];
            if !sw.entries.is_empty() {
                let at = u64::from(sw.min_last) + u64::from(self.ticks.ttl);
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        self.next_expiry = next;
        removed
    }

    /// When [`PeerTable::expire`] next has work to do (at most every
    /// [`Config::expiry_granularity`]); `None` if the table is empty.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let next = self.next_expiry?;
        let at = next.max(u64::from(self.last_expire) + u64::from(self.ticks.granularity));
        Some(self.epoch + Duration::from_secs(at))
    }

    /// Removes a whole swarm (an operator took the blob down) and returns how many entries
    /// it had.
    pub fn remove_swarm(&mut self, blob: BlobId) -> usize {
        let Some(&s) = self.swarm_ids.get(&blob) else {
            return 0;
        };
        let mut removed = 0;
        while let Some(last) = self.swarms[s as usize].len().checked_sub(1) {
            self.remove_at(s, last);
            removed += 1;
        }
        self.drop_swarm_if_empty(s);
        removed
    }

    /// The entry of `peer` in the swarm of `blob`, if any (it may be past its TTL if no
    /// call has touched the swarm since).
    pub fn entry(&self, peer: &P, blob: &BlobId) -> Option<EntryInfo> {
        let (s, p, pos) = self.locate(peer, blob)?;
        let sw = &self.swarms[s as usize];
        let e = sw.entries[pos as usize];
        let class = sw.class_at(pos);
        Some(EntryInfo {
            role: role_of(class),
            blocks_held: e.blocks_held,
            established: is_established(class),
            since: self.instant(e.since),
            last_announce: self.instant(e.last),
            addrs: self.peers.slot(p).addrs.clone(),
        })
    }

    /// Counters and gauges.
    pub fn stats(&self) -> Stats {
        let t = &self.totals;
        Stats {
            entries: t.iter().sum(),
            established: t[SEED_NODE_EST] + t[SEEDER_EST] + t[LEECHER_EST],
            swarms: self.swarm_ids.len() as u64,
            peers: self.peers.len() as u64,
            seeders: t[SEEDER_EST] + t[SEEDER_NEW],
            leechers: t[LEECHER_EST] + t[LEECHER_NEW],
            seed_nodes: t[SEED_NODE_EST] + t[SEED_NODE_NEW],
            ..self.stats.clone()
        }
    }

    /// An estimate of the heap bytes the table holds, from its containers' capacities and
    /// the address lists (docs/tracker.md §5 compares it with measured RSS). Excludes
    /// allocator overhead.
    pub fn heap_bytes(&self) -> usize {
        let entries: usize = self
            .swarms
            .iter()
            .map(|s| s.entries.capacity() * size_of::<Entry>())
            .sum();
        map_bytes(&self.swarm_ids)
            + map_bytes(&self.index)
            + self.swarms.capacity() * size_of::<Swarm>()
            + entries
            + self.free_swarms.capacity() * size_of::<u32>()
            + self.peers.heap_bytes()
            + self.fresh.capacity() * size_of::<Fresh>()
    }

    // ---- internals ----

    /// Checks every structural invariant (tests only; O(entries)).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut totals = [0u64; CLASSES];
        let mut refs = vec![0u32; self.peers.slots_len()];
        for (s, sw) in self.swarms.iter().enumerate() {
            let s = s as u32;
            if sw.entries.is_empty() {
                assert!(self.free_swarms.contains(&s), "empty swarm {s} not free");
                assert_eq!(sw.ends, [0; CLASSES]);
                continue;
            }
            assert_eq!(self.swarm_ids.get(&sw.blob), Some(&s));
            assert!(sw.ends.windows(2).all(|w| w[0] <= w[1]), "{:?}", sw.ends);
            assert_eq!(sw.len() as usize, sw.entries.len());
            assert!(sw.entries.len() <= self.config.max_entries_per_swarm);
            for (pos, e) in sw.entries.iter().enumerate() {
                assert_eq!(self.index.get(&(s, e.peer)), Some(&(pos as u32)));
                assert!(e.since <= e.last && e.last <= self.now);
                assert!(sw.min_last <= e.last);
                refs[e.peer as usize] += 1;
                let class = sw.class_at(pos as u32);
                totals[class] += 1;
                if !is_established(class) {
                    let queued = self
                        .fresh
                        .iter()
                        .filter(|r| r.swarm == s && r.peer == e.peer && r.seq == e.seq)
                        .count()
                        == 1;
                    assert!(queued, "fresh entry missing from the eviction queue");
                }
            }
        }
        assert_eq!(totals, self.totals);
        assert_eq!(self.index.len(), self.len());
        assert!(self.len() <= self.config.max_entries);
        assert_eq!(
            self.swarm_ids.len() + self.free_swarms.len(),
            self.swarms.len()
        );
        self.peers.check(&refs);
        let live = totals[SEED_NODE_NEW] + totals[LEECHER_NEW] + totals[SEEDER_NEW];
        assert!(self.fresh.len() as u64 <= 2 * live + 1024);
        if !self.is_empty() {
            let next = self.next_expiry.expect("non-empty table has an expiry");
            let min = self
                .swarms
                .iter()
                .flat_map(|s| &s.entries)
                .map(|e| e.last)
                .min();
            assert!(next <= u64::from(min.expect("non-empty")) + u64::from(self.ticks.ttl));
        }
    }

    /// Moves the clock to `now` (never backwards) and returns the tick.
    fn advance(&mut self, now: Instant) -> u32 {
        let secs = now.saturating_duration_since(self.epoch).as_secs();
        let t = u32::try_from(secs).unwrap_or(u32::MAX);
        self.now = self.now.max(t);
        self.now
    }

    fn instant(&self, tick: u32) -> Instant {
        self.epoch + Duration::from_secs(u64::from(tick))
    }

    fn interval(&mut self) -> Duration {
        let jitter = self.rng.below(self.ticks.jitter + 1);
        Duration::from_secs(u64::from(self.ticks.interval) + u64::from(jitter))
    }

    const fn expired(&self, e: &Entry) -> bool {
        e.last as u64 + self.ticks.ttl as u64 <= self.now as u64
    }

    fn due(&self, s: u32) -> bool {
        let sw = &self.swarms[s as usize];
        u64::from(sw.min_last) + u64::from(self.ticks.ttl) <= u64::from(self.now)
    }

    fn sweep_if_due(&mut self, blob: BlobId) {
        if let Some(&s) = self.swarm_ids.get(&blob)
            && self.due(s)
        {
            self.sweep(s);
        }
    }

    /// Removes the swarm's expired entries (and the swarm, if that empties it); makes
    /// `min_last` exact.
    fn sweep(&mut self, s: u32) -> usize {
        let mut removed = 0;
        let mut pos = self.swarms[s as usize].len();
        // Backwards: a removal moves only entries from later positions, already kept.
        while pos > 0 {
            pos -= 1;
            if self.expired(&self.swarms[s as usize].entries[pos as usize]) {
                self.remove_at(s, pos);
                removed += 1;
            }
        }
        let sw = &mut self.swarms[s as usize];
        sw.min_last = sw.entries.iter().map(|e| e.last).min().unwrap_or(self.now);
        self.stats.expired += removed as u64;
        self.drop_swarm_if_empty(s);
        removed
    }

    fn locate(&self, peer: &P, blob: &BlobId) -> Option<(u32, u32, u32)> {
        let s = *self.swarm_ids.get(blob)?;
        let p = self.peers.find(peer)?;
        let pos = *self.index.get(&(s, p))?;
        Some((s, p, pos))
    }

    /// Removes the entry at `pos` of swarm `s` and releases its peer slot. The caller
    /// drops the swarm if it is now empty.
    fn remove_at(&mut self, s: u32, pos: u32) -> Entry {
        let sw = &mut self.swarms[s as usize];
        let (entry, class) = sw.remove(s, &mut self.index, pos);
        self.totals[class] -= 1;
        if !is_established(class) {
            self.compact_fresh(); // its record went stale
        }
        self.peers.release(entry.peer);
        entry
    }

    fn drop_swarm_if_empty(&mut self, s: u32) {
        let sw = &mut self.swarms[s as usize];
        if sw.entries.is_empty() {
            self.swarm_ids.remove(&sw.blob);
            sw.entries = Vec::new(); // free the memory
            self.free_swarms.push(s);
            if self.is_empty() {
                self.next_expiry = None;
            }
        } else if sw.entries.capacity() > 16 && sw.entries.len() * 4 < sw.entries.capacity() {
            sw.entries.shrink_to(sw.entries.len() * 2);
        }
    }

    /// Refreshes an existing entry. Returns its (possibly new) position.
    fn refresh(
        &mut self,
        t: u32,
        s: u32,
        p: u32,
        pos: u32,
        req: &AnnounceRequest,
    ) -> Result<u32, Refusal> {
        let sw = &mut self.swarms[s as usize];
        let old = sw.entries[pos as usize];
        let next_ok = u64::from(old.last) + u64::from(self.ticks.min_gap);
        // The first `completed` is news worth hearing at once: the peer moves to the seeder
        // list where leechers find it. Only once per entry, so it cannot dodge the limit.
        let first_completed = req.event == Event::Completed && !old.completed;
        if u64::from(t) < next_ok && !first_completed {
            self.stats.refused_rate_limited += 1;
            trace!(blob = %req.blob, "announce rate limited");
            return Err(Refusal::RateLimited {
                retry_after: Duration::from_secs(next_ok - u64::from(t)),
            });
        }
        let class = sw.class_at(pos);
        let established = is_established(class) || t - old.since >= self.ticks.interval.div_ceil(2);
        let mut e = old;
        e.last = t;
        e.blocks_held = req.blocks_held;
        if req.event == Event::Completed && !e.completed {
            e.completed = true;
            sw.completed = sw.completed.saturating_add(1);
        }
        let new_class = class_of(req.role, established);
        let pos = if new_class == class {
            sw.entries[pos as usize] = e;
            pos
        } else {
            sw.remove(s, &mut self.index, pos);
            self.totals[class] -= 1;
            self.totals[new_class] += 1;
            sw.insert(s, &mut self.index, new_class, e)
        };
        self.peers.set_addrs(p, &req.addrs);
        if established && !is_established(class) {
            self.compact_fresh(); // its record went stale
        }
        Ok(pos)
    }

    /// Creates an entry for a newcomer, evicting a non-established entry if a cap is
    /// reached. Returns the swarm and the entry's position.
    fn admit(&mut self, t: u32, peer: P, req: &AnnounceRequest) -> Result<(u32, u32), Refusal> {
        if let Some(&s) = self.swarm_ids.get(&req.blob)
            && self.swarms[s as usize].len() as usize >= self.config.max_entries_per_swarm
        {
            let Some(pos) = self.swarms[s as usize].oldest_fresh() else {
                self.stats.refused_swarm_full += 1;
                debug!(blob = %req.blob, ?peer, "swarm full of established peers: newcomer refused");
                return Err(Refusal::SwarmFull);
            };
            self.remove_at(s, pos);
            self.stats.evicted += 1;
            debug!(blob = %req.blob, "swarm full: evicted its oldest fresh entry");
            self.drop_swarm_if_empty(s);
        }
        if self.len() >= self.config.max_entries && !self.evict_oldest_fresh() {
            self.stats.refused_tracker_full += 1;
            debug!(blob = %req.blob, ?peer, "table full of established peers: newcomer refused");
            return Err(Refusal::TrackerFull);
        }
        // Only now: the evictions above may have freed the peer's slot or the swarm.
        let p = self.peers.acquire(peer, &req.addrs);
        let s = self.swarm_slot(req.blob, t);
        let completed = req.event == Event::Completed;
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        let entry = Entry {
            peer: p,
            seq,
            since: t,
            last: t,
            blocks_held: req.blocks_held,
            completed,
        };
        let class = class_of(req.role, false);
        let sw = &mut self.swarms[s as usize];
        if completed {
            sw.completed = sw.completed.saturating_add(1);
        }
        sw.min_last = sw.min_last.min(t);
        let pos = sw.insert(s, &mut self.index, class, entry);
        self.totals[class] += 1;
        let at = u64::from(t) + u64::from(self.ticks.ttl);
        self.next_expiry = Some(self.next_expiry.map_or(at, |n| n.min(at)));
        self.fresh.push_back(Fresh {
            seq,
            swarm: s,
            peer: p,
        });
        self.compact_fresh();
        Ok((s, pos))
    }

    /// The swarm's slot, created (empty) if new.
    fn swarm_slot(&mut self, blob: BlobId, t: u32) -> u32 {
        if let Some(&s) = self.swarm_ids.get(&blob) {
            return s;
        }
        let swarm = Swarm {
            blob,
            entries: Vec::new(),
            ends: [0; CLASSES],
            completed: 0,
            min_last: t,
        };
        let s = match self.free_swarms.pop() {
            Some(s) => {
                self.swarms[s as usize] = swarm;
                s
            }
            None => {
                self.swarms.push(swarm);
                u32::try_from(self.swarms.len() - 1).expect("at most max_entries swarms")
            }
        };
        self.swarm_ids.insert(blob, s);
        s
    }

    /// Position of a queued record's entry if it is still that non-established entry.
    fn still_fresh(&self, r: &Fresh) -> Option<u32> {
        let pos = *self.index.get(&(r.swarm, r.peer))?;
        let sw = &self.swarms[r.swarm as usize];
        let live = !is_established(sw.class_at(pos)) && sw.entries[pos as usize].seq == r.seq;
        live.then_some(pos)
    }

    /// Evicts the table's oldest non-established entry, if there is one.
    fn evict_oldest_fresh(&mut self) -> bool {
        while let Some(r) = self.fresh.pop_front() {
            if let Some(pos) = self.still_fresh(&r) {
                self.remove_at(r.swarm, pos);
                self.stats.evicted += 1;
                debug!(blob = %self.swarms[r.swarm as usize].blob, "table full: evicted its oldest fresh entry");
                self.drop_swarm_if_empty(r.swarm);
                return true;
            }
        }
        false
    }

    /// Drops stale records once they outnumber live ones by 1,024, so the queue stays within
    /// twice the non-established entries plus 1,024. Called whenever a record is added or
    /// goes stale; a pass removes at least `live + 1024` records that were each added once,
    /// so the cost is amortised O(1) per added record.
    fn compact_fresh(&mut self) {
        let live = self.totals[SEED_NODE_NEW] + self.totals[LEECHER_NEW] + self.totals[SEEDER_NEW];
        if (self.fresh.len() as u64) > 2 * live + 1024 {
            let mut queue = std::mem::take(&mut self.fresh);
            queue.retain(|r| self.still_fresh(r).is_some());
            self.fresh = queue;
        }
    }

    /// The answer for the entry at `asker` in swarm `s`.
    fn answer(&mut self, s: u32, asker: u32, role: Role) -> Answer<P> {
        let mut interval = self.interval();
        let sw = &self.swarms[s as usize];
        let nobody_seeds = [SEEDER_EST, SEEDER_NEW, SEED_NODE_EST, SEED_NODE_NEW]
            .iter()
            .all(|&class| sw.count(class) == 0);
        if role == Role::Leecher && nobody_seeds {
            // Waiting for a seeder that may come any moment: come back as soon as the rate
            // limit allows, not at the full interval.
            interval = Duration::from_secs(u64::from(self.ticks.min_gap.max(1)));
        }
        // (first, first fresh, end) of the pools: see the class order.
        let (peer_pool, seed_pool) = match role {
            Role::Leecher => (
                (
                    sw.start(SEEDER_EST),
                    sw.ends[LEECHER_EST],
                    sw.ends[SEEDER_NEW],
                ),
                Some((
                    sw.start(SEED_NODE_EST),
                    sw.ends[SEED_NODE_EST],
                    sw.ends[SEED_NODE_NEW],
                )),
            ),
            // A seeder (or a seed node, which seeds) needs no other seeders.
            Role::Seeder | Role::SeedNode => (
                (
                    sw.start(LEECHER_EST),
                    sw.ends[LEECHER_EST],
                    sw.ends[LEECHER_NEW],
                ),
                None,
            ),
        };
        let mut picked = Vec::with_capacity(self.config.answer_peers);
        pick(
            &mut self.rng,
            peer_pool,
            self.config.answer_peers,
            asker,
            &mut picked,
        );
        let peers = self.listed(s, &picked);
        let seed_nodes = match seed_pool {
            Some(pool) if self.config.answer_seed_nodes > 0 => {
                picked.clear();
                pick(
                    &mut self.rng,
                    pool,
                    self.config.answer_seed_nodes,
                    asker,
                    &mut picked,
                );
                self.listed(s, &picked)
            }
            _ => Vec::new(),
        };
        Answer {
            interval,
            peers,
            seed_nodes,
        }
    }

    fn listed(&self, s: u32, positions: &[u32]) -> Vec<AnswerPeer<P>> {
        let sw = &self.swarms[s as usize];
        positions
            .iter()
            .map(|&pos| {
                let e = &sw.entries[pos as usize];
                let slot = self.peers.slot(e.peer);
                AnswerPeer {
                    peer: slot.peer,
                    role: role_of(sw.class_at(pos)),
                    blocks_held: e.blocks_held,
                    addrs: slot.addrs.clone(),
                }
            })
            .collect()
    }
}

/// Picks up to `k` positions of the pool `lo..hi` except `exclude`, in random order: at
/// least `ceil(k / 2)` from the established part `lo..mid` when it has that many, the rest
/// uniformly from what remains of the whole pool.
fn pick(
    rng: &mut SplitMix64,
    (lo, mid, hi): (u32, u32, u32),
    k: usize,
    exclude: u32,
    out: &mut Vec<u32>,
) {
    let inside = |a: u32, b: u32| u32::from((a..b).contains(&exclude));
    let total = (hi - lo - inside(lo, hi)) as usize;
    if total <= k {
        out.extend((lo..hi).filter(|&x| x != exclude));
    } else {
        let established = (mid - lo - inside(lo, mid)) as usize;
        let first = established.min(k.div_ceil(2));
        let mut taken = SmallSet::new();
        taken.insert(exclude);
        sample(rng, lo, mid, first, &mut taken, out);
        sample(rng, lo, hi, k - first, &mut taken, out);
    }
    // Fisher–Yates: the established picks must not always come first.
    for i in (1..out.len()).rev() {
        let j = rng.below(u32::try_from(i + 1).expect("at most MAX_PEERS")) as usize;
        out.swap(i, j);
    }
}

/// Appends `n` distinct positions of `lo..hi` not in `taken` (there must be that many),
/// uniformly at random, and adds them to `taken`.
fn sample(
    rng: &mut SplitMix64,
    lo: u32,
    hi: u32,
    n: usize,
    taken: &mut SmallSet,
    out: &mut Vec<u32>,
) {
    if n == 0 {
        return;
    }
    let free = (hi - lo) as usize - taken.count_in(lo, hi);
    debug_assert!(n <= free, "sampling {n} of {free}");
    if free <= 2 * n {
        // Dense: list the candidates (at most 2n ≤ 100) and shuffle n of them to the front.
        let mut cand: Vec<u32> = (lo..hi).filter(|&x| !taken.contains(x)).collect();
        for i in 0..n {
            let span = u32::try_from(cand.len() - i).expect("small");
            let j = i + rng.below(span) as usize;
            cand.swap(i, j);
            taken.insert(cand[i]);
            out.push(cand[i]);
        }
    } else {
        // Sparse: draw and reject. More than n of the fewer than 2n + 2 + MAX_PEERS
        // positions stay free, so more than a third of the draws succeed.
        let mut got = 0;
        while got < n {
            let x = lo + rng.below(hi - lo);
            if taken.insert(x) {
                out.push(x);
                got += 1;
            }
        }
    }
}

/// A set of at most 128 positions (an answer and the asker), open addressing on the stack:
/// constant time per draw where a list would cost a scan.
struct SmallSet {
    slots: [u32; SMALL_SET_SLOTS],
    items: Vec<u32>,
}

const SMALL_SET_SLOTS: usize = 256;
const EMPTY: u32 = u32::MAX;
// Positions are below max_entries_per_swarm ≤ 2^31, so they never equal EMPTY.
const _: () = assert!(MAX_TABLE_ENTRIES < EMPTY as usize);
const _: () = assert!(2 * (MAX_PEERS + 1) <= SMALL_SET_SLOTS);

impl SmallSet {
    fn new() -> Self {
        Self {
            slots: [EMPTY; SMALL_SET_SLOTS],
            items: Vec::with_capacity(MAX_PEERS + 1),
        }
    }

    fn slot_of(&self, x: u32) -> (usize, bool) {
        // Fibonacci hashing: the top byte of x × 2^32/φ.
        let mut i = (x.wrapping_mul(0x9e37_79b9) >> 24) as usize;
        loop {
            match self.slots[i] {
                EMPTY => return (i, false),
                y if y == x => return (i, true),
                _ => i = (i + 1) % SMALL_SET_SLOTS,
            }
        }
    }

    fn contains(&self, x: u32) -> bool {
        self.slot_of(x).1
    }

    /// Adds `x`; false if it was there.
    fn insert(&mut self, x: u32) -> bool {
        let (i, found) = self.slot_of(x);
        if !found {
            debug_assert!(self.items.len() < SMALL_SET_SLOTS / 2, "SmallSet overfull");
            self.slots[i] = x;
            self.items.push(x);
        }
        !found
    }

    fn count_in(&self, lo: u32, hi: u32) -> usize {
        self.items
            .iter()
            .filter(|&&x| (lo..hi).contains(&x))
            .count()
    }
}

#[cfg(test)]
mod tests;
