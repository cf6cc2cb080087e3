//! Seed nodes: always-on servers that hold ciphertext only (docs/node.md "Seed nodes").
//!
//! A [`SeedNode`] runs on a [`Node`]. It accepts `/shoal/push/1` uploads from the
//! publishers on its allow-list ([`push`] is the publisher's side), verifies every pair and
//! block against the blob id as it arrives, and stores the ciphertext and outboard under
//! its store directory within a quota. It serves what it stores like any peer, fast or
//! frugally ([`Policy`]), announces each blob to its trackers as a seed node, and deletes
//! and refuses blobs taken down ([`SeedNode::take_down`]).
//!
//! A seed node never sees a key: the push protocol has no field for one, and a link's key
//! never reaches this module. Its files, read byte for byte, hold ciphertext, outboards
//! (hashes of ciphertext), have-maps and blob ids.
//!
//! Store layout (`--store DIR`):
//! - `blobs/<id>.blob` and `blobs/<id>.obao`: stored blobs (the `.blob` is renamed in last:
//!   its presence marks the blob complete);
//! - `partial/<id>.blob`, `.obao`, `.have`: a push in progress or interrupted (resumed by
//!   the next push of the same blob; counted against the quota; deleted once nobody has
//!   resumed it for [`SeedNodeConfig::abandon_after`]);
//! - `taken-down`: blob ids taken down, one per line (never stored again);
//! - `LOCK`: held while a seed node uses the directory.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    fs::{self, File, OpenOptions},
    io,
    path::{Path, PathBuf},
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
use serde::Serialize;
use shoal_protocol::{
    BlobId,
    blob::{BlockRange, Need, Outboard, PARENT_LEN, RangeDecoder, block_count},
    push::{Failure, OFFER_LEN, Offer, PUSH_PROTOCOL, Refusal, Reply, want_ranges},
    superseed::{self, DEFAULT_WINDOW},
    tracker::Role,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{
    announce::{Announcer, Status},
    node::Node,
    partial::{State, open_sparse_outboard},
    store::{Source, write_all_at, write_atomic},
};

/// Pushes received at once; more are answered `busy`.
pub const MAX_CONCURRENT_PUSHES: usize = 4;
/// Blocks received between durable checkpoints of a push.
const CHECKPOINT_BLOCKS: usize = 64;
/// Longest time between checkpoints while blocks arrive.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// What a busy seed node tells a publisher to wait.
const BUSY_RETRY_SECS: u64 = 5;
/// How long a seed node may take to make a pushed blob durable and answer.
const STORE_TIMEOUT: Duration = Duration::from_secs(60);

fn push_protocol() -> StreamProtocol {
    StreamProtocol::new(PUSH_PROTOCOL)
}

/// How a seed node serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Serve any block asked for, as fast as the upload cap allows: downloads finish
    /// soonest; the seed node sends what peers cannot.
    #[default]
    Fast,
    /// Super-seed: hand each block the swarm lacks to one peer and let peers spread it, so
    /// egress approaches one copy per swarm ([`shoal_protocol::superseed`]).
    Frugal,
}

impl FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fast" => Ok(Self::Fast),
            "frugal" => Ok(Self::Frugal),
            other => Err(format!("unknown policy {other:?}; use fast or frugal")),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fast => "fast",
            Self::Frugal => "frugal",
        })
    }
}

/// A seed node's settings.
#[derive(Clone, Debug)]
pub struct SeedNodeConfig {
    /// Where blobs are stored.
    pub store_dir: PathBuf,
    /// Most bytes of blobs and outboards stored (interrupted pushes included).
    pub quota: u64,
    /// Publishers allowed to push (peer ids, proved by the connection's handshake).
    pub allow: HashSet<PeerId>,
    /// How blobs are served.
    pub policy: Policy,
    /// Trackers to announce every stored blob to, as a seed node.
    pub trackers: Vec<Multiaddr>,
    /// Frugal mode: blocks revealed to one peer at a time.
    pub frugal_window: u32,
    /// How often to pull the trackers' takedown lists (every blob listed is deleted and
    /// refused); `None` follows none.
    pub takedown_poll: Option<Duration>,
    /// An interrupted push that nobody resumes for this long is deleted, and its quota
    /// freed (checked at start and every hour).
    pub abandon_after: Duration,
}

/// Default for [`SeedNodeConfig::abandon_after`]: a day.
pub const ABANDON_AFTER: Duration = Duration::from_secs(24 * 3600);
/// How often abandoned pushes are looked for.
const ABANDON_CHECK_EVERY: Duration = Duration::from_secs(3600);

/// Default interval between takedown-list pulls.
pub const TAKEDOWN_POLL: Duration = Duration::from_secs(60);

impl SeedNodeConfig {
    /// A seed node storing under `store_dir` up to `quota` bytes, fast policy, nobody
    /// allowed to push yet, no tracker.
    pub fn new(store_dir: PathBuf, quota: u64) -> Self {
        Self {
            store_dir,
            quota,
            allow: HashSet::new(),
            policy: Policy::Fast,
            trackers: Vec::new(),
            frugal_window: DEFAULT_WINDOW,
            takedown_poll: Some(TAKEDOWN_POLL),
            abandon_after: ABANDON_AFTER,
        }
    }
}

/// Why a seed node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SeedNodeError {
    /// The store directory cannot be created or read.
    #[error("cannot use the store directory {path}")]
    Store {
        /// The path.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Another seed node holds the store directory.
    #[error("another seed node is using {path}; stop it, or choose another --store")]
    Locked {
        /// The directory.
        path: String,
    },
    /// The push protocol is already served by this node.
    #[error("this node already runs a seed node")]
    AlreadyRunning,
}

/// Counters of pushes.
#[derive(Debug, Default)]
struct PushCounters {
    accepted: AtomicU64,
    stored: AtomicU64,
    bytes: AtomicU64,
    refused_not_allowed: AtomicU64,
    refused_quota: AtomicU64,
    refused_taken_down: AtomicU64,
    refused_busy: AtomicU64,
    refused_bad: AtomicU64,
    failed_corrupt: AtomicU64,
    failed_other: AtomicU64,
    takedowns: AtomicU64,
    abandoned: AtomicU64,
    corrupt_repaired: AtomicU64,
    corrupt_dropped: AtomicU64,
}

/// A snapshot of a seed node's state, for `/stats`, `/metrics` and status lines.
#[derive(Clone, Debug, Serialize)]
pub struct SeedNodeStats {
    /// The node's peer id.
    pub peer_id: String,
    /// Serving policy.
    pub policy: Policy,
    /// Quota in bytes.
    pub quota: u64,
    /// Bytes used (stored blobs, outboards, interrupted pushes).
    pub used: u64,
    /// Stored blobs.
    pub blobs: Vec<BlobStats>,
    /// Pushes accepted (data started to move or the blob was already stored).
    pub pushes_accepted: u64,
    /// Pushes that completed with the blob stored.
    pub pushes_stored: u64,
    /// Verified bytes received by pushes.
    pub pushed_bytes: u64,
    /// Pushes refused, by reason.
    pub pushes_refused: RefusedCounts,
    /// Pushes stopped because data did not verify.
    pub pushes_corrupt: u64,
    /// Pushes that failed otherwise (disk, timeouts, publisher gone).
    pub pushes_failed: u64,
    /// Blobs taken down (deleted).
    pub takedowns: u64,
    /// Interrupted pushes deleted because nobody resumed them in time.
    pub pushes_abandoned: u64,
    /// Stored blobs found with blocks that fail their check against the blob id (once per
    /// blob; see [`crate::repair`]).
    pub corrupt_blobs: u64,
    /// Of them, repaired from peers.
    pub corrupt_repaired: u64,
    /// Of them, dropped because no peer had the bad blocks in time.
    pub corrupt_dropped: u64,
    /// Block bytes sent to peers reached only through a relay.
    pub relayed_bytes: u64,
    /// Relay reservations granted to nodes behind NAT (renewals included).
    pub relay_reservations: u64,
    /// Circuits relayed between other nodes.
    pub relay_circuits: u64,
}

/// Refused pushes by reason.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct RefusedCounts {
    /// Publisher not on the allow-list.
    pub not_allowed: u64,
    /// Over quota.
    pub quota: u64,
    /// Blob taken down.
    pub taken_down: u64,
    /// Too many pushes at once, or this blob is being pushed already.
    pub busy: u64,
    /// Invalid offer or size mismatch.
    pub bad_offer: u64,
}

/// One stored blob's serving figures.
#[derive(Clone, Debug, Serialize)]
pub struct BlobStats {
    /// The blob id.
    pub id: String,
    /// Its size in bytes.
    pub blob_len: u64,
    /// Bytes sent to peers.
    pub egress_bytes: u64,
    /// `egress_bytes / blob_len`: copies of the blob sent.
    pub egress_copies: f64,
    /// Frugal decisions (frugal policy only).
    pub frugal: Option<superseed::Stats>,
    /// Blocks whose stored copy fails its check, not served until fetched back from peers
    /// (the blob is not announced meanwhile).
    pub bad_blocks: Vec<u32>,
}

struct Stored {
    blob_len: u64,
    source: Arc<Source>,
    /// `None` while quarantined (bad blocks being repaired) or without trackers.
    announcer: Option<Announcer>,
}

#[derive(Default)]
struct Book {
    stored: HashMap<BlobId, Stored>,
    /// Interrupted or running pushes: blob size (reserved against the quota).
    partial: HashMap<BlobId, u64>,
    /// Pushes running now.
    active: HashSet<BlobId>,
    taken_down: HashSet<BlobId>,
}

struct Inner {
    node: Node,
    config: SeedNodeConfig,
    blobs_dir: PathBuf,
    partial_dir: PathBuf,
    book: Mutex<Book>,
    counters: PushCounters,
    _lock: File,
}

/// A running seed node. Cheap to clone; it runs as long as its [`Node`].
#[derive(Clone)]
pub struct SeedNode {
    inner: Arc<Inner>,
}

impl fmt::Debug for SeedNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeedNode")
            .field("store", &self.inner.config.store_dir)
            .finish_non_exhaustive()
    }
}

/// Bytes a stored blob of `blob_len` takes: the ciphertext and its outboard.
fn footprint(blob_len: u64) -> u64 {
    blob_len + Outboard::size_for(blob_len)
}

fn blocks_of(blob_len: u64) -> u32 {
    u32::try_from(block_count(blob_len)).expect("MAX_FILE_LEN bounds blocks")
}

impl SeedNode {
    /// Opens the store directory (creating it), serves every blob stored there from
    /// `node`, announces them, and starts accepting pushes. Must be called within tokio.
    ///
    /// # Errors
    /// If the directory cannot be used, or another seed node holds it.
    pub fn start(node: &Node, config: SeedNodeConfig) -> Result<Self, SeedNodeError> {
        let dir = config.store_dir.clone();
        let store_err = |source| SeedNodeError::Store {
            path: dir.display().to_string(),
            source,
        };
        let blobs_dir = dir.join("blobs");
        let partial_dir = dir.join("partial");
        fs::create_dir_all(&blobs_dir).map_err(store_err)?;
        fs::create_dir_all(&partial_dir).map_err(store_err)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))
            .map_err(store_err)?;
        if lock.try_lock().is_err() {
            return Err(SeedNodeError::Locked {
                path: dir.display().to_string(),
            });
        }
        let incoming = node
            .stream_control()
            .accept(push_protocol())
            .map_err(|_| SeedNodeError::AlreadyRunning)?;
        let mut book = Book {
            taken_down: load_taken_down(&dir.join("taken-down")).map_err(store_err)?,
            ..Book::default()
        };
        for entry in fs::read_dir(&partial_dir).map_err(store_err)?.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "blob")
                && let Some(id) = id_of(&path)
                && let Ok(md) = entry.metadata()
            {
                book.partial.insert(id, md.len());
            }
        }
        let inner = Arc::new(Inner {
            node: node.clone(),
            config,
            blobs_dir,
            partial_dir,
            book: Mutex::new(book),
            counters: PushCounters::default(),
            _lock: lock,
        });
        let seed = Self { inner };
        seed.load_stored().map_err(store_err)?;
        seed.expire_abandoned(std::time::SystemTime::now());
        {
            let seed = Arc::downgrade(&seed.inner);
            tokio::spawn(async move {
                let mut every = tokio::time::interval(ABANDON_CHECK_EVERY);
                every.tick().await;
                loop {
                    every.tick().await;
                    let Some(inner) = seed.upgrade() else { return };
                    Self { inner }.expire_abandoned(std::time::SystemTime::now());
                }
            });
        }
        tokio::spawn(accept_pushes(seed.inner.clone(), incoming));
        let cfg = &seed.inner.config;
        if let Some(every) = cfg.takedown_poll
            && !cfg.trackers.is_empty()
        {
            seed.follow_takedowns(crate::takedown::follow(
                node.clone(),
                cfg.trackers.clone(),
                every,
            ));
        }
        info!(
            store = %dir.display(),
            blobs = seed.blob_ids().len(),
            policy = %seed.inner.config.policy,
            "seed node started"
        );
        Ok(seed)
    }

    /// Serves every complete blob in `blobs/`; skips (and logs) files that are not one.
    fn load_stored(&self) -> io::Result<()> {
        for entry in fs::read_dir(&self.inner.blobs_dir)?.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "blob") {
                continue;
            }
            let Some(id) = id_of(&path) else {
                warn!(path = %path.display(), "not a blob file name; ignored");
                continue;
            };
            if self.book().taken_down.contains(&id) {
                // Taken down while the deletion did not finish: finish it.
                let _ = fs::remove_file(&path);
                let _ = fs::remove_file(path.with_extension("obao"));
                continue;
            }
            match load_blob(&path, id) {
                Ok(outboard) => self.serve(outboard, path),
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "stored blob unusable; ignored")
                }
            }
        }
        Ok(())
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.inner.book()
    }

    /// Starts serving and announcing a stored blob.
    fn serve(&self, outboard: Outboard, path: PathBuf) {
        self.inner.serve(outboard, path);
    }

    /// The stored blobs.
    pub fn blob_ids(&self) -> Vec<BlobId> {
        let mut ids: Vec<BlobId> = self.book().stored.keys().copied().collect();
        ids.sort_by_key(|id| *id.as_bytes());
        ids
    }

    /// Whether `id` is stored and served.
    pub fn has(&self, id: &BlobId) -> bool {
        self.book().stored.contains_key(id)
    }

    /// Takes blob `id` down: stops serving and announcing it, deletes its files (stored or
    /// partial), and refuses it from now on (remembered in the store directory). Returns
    /// whether anything was deleted.
    ///
    /// # Errors
    /// If the takedown list cannot be saved (the blob is deleted and refused anyway until
    /// the process exits).
    pub fn take_down(&self, id: BlobId) -> io::Result<bool> {
        self.inner.take_down(id)
    }

    /// A snapshot of the counters and stored blobs.
    pub fn stats(&self) -> SeedNodeStats {
        let inner = &self.inner;
        let c = &inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let book = self.book();
        let mut blobs: Vec<BlobStats> = book
            .stored
            .iter()
            .map(|(id, s)| {
                let egress = s.source.uploaded();
                BlobStats {
                    id: id.to_string(),
                    blob_len: s.blob_len,
                    egress_bytes: egress,
                    egress_copies: egress as f64 / s.blob_len.max(1) as f64,
                    frugal: s.source.super_seed().map(|ss| ss.stats()),
                    bad_blocks: s.source.bad_blocks(),
                }
            })
            .collect();
        blobs.sort_by(|a, b| a.id.cmp(&b.id));
        SeedNodeStats {
            peer_id: inner.node.peer_id().to_string(),
            policy: inner.config.policy,
            quota: inner.config.quota,
            used: book.used(),
            blobs,
            pushes_accepted: get(&c.accepted),
            pushes_stored: get(&c.stored),
            pushed_bytes: get(&c.bytes),
            pushes_refused: RefusedCounts {
                not_allowed: get(&c.refused_not_allowed),
                quota: get(&c.refused_quota),
                taken_down: get(&c.refused_taken_down),
                busy: get(&c.refused_busy),
                bad_offer: get(&c.refused_bad),
            },
            pushes_corrupt: get(&c.failed_corrupt),
            pushes_failed: get(&c.failed_other),
            takedowns: get(&c.takedowns),
            pushes_abandoned: get(&c.abandoned),
            corrupt_blobs: get(&inner.node.stats().corrupt_blobs),
            corrupt_repaired: get(&c.corrupt_repaired),
            corrupt_dropped: get(&c.corrupt_dropped),
            relayed_bytes: get(&inner.node.stats().relayed_bytes),
            relay_reservations: get(&inner.node.stats().relay_reservations),
            relay_circuits: get(&inner.node.stats().relay_circuits),
        }
    }

    /// Deletes the interrupted pushes (not running now) whose part file was last written
    /// before `now - abandon_after`, freeing their quota. Returns how many.
    pub fn expire_abandoned(&self, now: std::time::SystemTime) -> usize {
        let inner = &self.inner;
        let Some(cutoff) = now.checked_sub(inner.config.abandon_after) else {
            return 0;
        };
        let mut book = self.book();
        let stale: Vec<BlobId> = book
            .partial
            .keys()
            .filter(|id| !book.active.contains(id))
            .filter(|id| {
                fs::metadata(inner.partial_dir.join(format!("{id}.blob")))
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t < cutoff)
            })
            .copied()
            .collect();
        for id in &stale {
            book.partial.remove(id);
            inner.remove_partial_files(*id);
            info!(blob = %id, "deleted an interrupted push nobody resumed");
        }
        inner
            .counters
            .abandoned
            .fetch_add(stale.len() as u64, Ordering::Relaxed);
        stale.len()
    }

    /// Takes down every blob received on `listed` (deleted and refused), until its sender
    /// side ends. [`SeedNode::start`] does this with [`crate::takedown::follow`] of the
    /// configured trackers.
    pub fn follow_takedowns(&self, mut listed: mpsc::Receiver<BlobId>) {
        let seed = self.clone();
        tokio::spawn(async move {
            while let Some(id) = listed.recv().await {
                match seed.take_down(id) {
                    Ok(true) => info!(blob = %id, "taken down: deleted and refused from now on"),
                    Ok(false) => debug!(blob = %id, "taken down (not stored here)"),
                    Err(e) => warn!(blob = %id, error = %e, "takedown not saved to disk"),
                }
            }
        });
    }
}

impl Book {
    fn used(&self) -> u64 {
        let stored: u64 = self.stored.values().map(|s| footprint(s.blob_len)).sum();
        let partial: u64 = self.partial.values().map(|&l| footprint(l)).sum();
        stored + partial
    }
}

impl Inner {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().expect("seed node lock poisoned")
    }

    fn serve(self: &Arc<Self>, outboard: Outboard, path: PathBuf) {
        let id = outboard.id();
        let blob_len = outboard.blob_len();
        let mut source = Source::cipher(path.clone(), outboard);
        if self.config.policy == Policy::Frugal {
            source = source.frugal(self.config.frugal_window);
        }
        let source = self.node.store().insert(source);
        let announcer = self.announcer(id, blob_len);
        self.book().stored.insert(
            id,
            Stored {
                blob_len,
                source: source.clone(),
                announcer,
            },
        );
        // Bad blocks found while serving are repaired from peers (crate::repair).
        let weak = Arc::downgrade(self);
        tokio::spawn(crate::repair::guard(
            self.node.clone(),
            Arc::downgrade(&source),
            path,
            move |event| {
                if let Some(inner) = weak.upgrade() {
                    inner.on_repair(id, event);
                }
            },
        ));
    }

    /// Announces stored blob `id` to the trackers (none without trackers).
    fn announcer(&self, id: BlobId, blob_len: u64) -> Option<Announcer> {
        let total = blocks_of(blob_len);
        (!self.config.trackers.is_empty()).then(|| {
            Announcer::start(
                &self.node,
                id,
                self.config.trackers.clone(),
                Status {
                    role: Role::SeedNode,
                    blocks_held: total,
                    total_blocks: total,
                },
                None,
            )
        })
    }

    /// A stored blob's blocks failed their check (quarantine: stop announcing it), were
    /// repaired (announce it again), or could not be (drop it and free its space).
    fn on_repair(&self, id: BlobId, event: crate::repair::Event) {
        use crate::repair::Event;
        match event {
            Event::Quarantined => {
                if let Some(s) = self.book().stored.get_mut(&id) {
                    s.announcer = None; // dropping it announces `stopped`
                }
            }
            Event::Repaired => {
                self.counters
                    .corrupt_repaired
                    .fetch_add(1, Ordering::Relaxed);
                let blob_len = self.book().stored.get(&id).map(|s| s.blob_len);
                if let Some(blob_len) = blob_len {
                    let announcer = self.announcer(id, blob_len);
                    if let Some(s) = self.book().stored.get_mut(&id) {
                        s.announcer = announcer;
                    }
                }
            }
            Event::GaveUp => {
                self.counters
                    .corrupt_dropped
                    .fetch_add(1, Ordering::Relaxed);
                self.book().stored.remove(&id);
                self.node.store().remove(&id);
                let blob = self.blobs_dir.join(format!("{id}.blob"));
                let _ = fs::remove_file(&blob);
                let _ = fs::remove_file(blob.with_extension("obao"));
            }
        }
    }

    fn take_down(&self, id: BlobId) -> io::Result<bool> {
        let (was_stored, was_partial, save) = {
            let mut book = self.book();
            let fresh = book.taken_down.insert(id);
            let stored = book.stored.remove(&id).is_some();
            let partial = book.partial.remove(&id).is_some();
            let save = fresh.then(|| {
                let mut ids: Vec<String> =
                    book.taken_down.iter().map(ToString::to_string).collect();
                ids.sort();
                ids.join("\n") + "\n"
            });
            (stored, partial, save)
        };
        self.node.store().remove(&id);
        let blob = self.blobs_dir.join(format!("{id}.blob"));
        // The list first: a crash after it finishes the deletion at the next start.
        if let Some(list) = save {
            self.counters.takedowns.fetch_add(1, Ordering::Relaxed);
            write_atomic(
                &self.config.store_dir.join("taken-down"),
                list.as_bytes(),
                false,
            )?;
        }
        let _ = fs::remove_file(&blob);
        let _ = fs::remove_file(blob.with_extension("obao"));
        self.remove_partial_files(id);
        Ok(was_stored || was_partial)
    }

    /// Deletes what a push of `id` left in `partial/`, if anything.
    fn remove_partial_files(&self, id: BlobId) {
        for ext in ["blob", "obao", "have"] {
            let _ = fs::remove_file(self.partial_dir.join(format!("{id}.{ext}")));
        }
    }

    /// Decides on an offer: refuse it, or reserve quota and mark the push active.
    fn admit(&self, peer: PeerId, offer: &Offer) -> Result<Admitted, Refusal> {
        if !self.config.allow.contains(&peer) {
            return Err(Refusal::NotAllowed);
        }
        let mut book = self.book();
        if book.taken_down.contains(&offer.id) {
            return Err(Refusal::TakenDown);
        }
        if let Some(s) = book.stored.get(&offer.id) {
            return if s.blob_len == offer.blob_len {
                Ok(Admitted::AlreadyStored)
            } else {
                Err(Refusal::BadOffer)
            };
        }
        if book.active.contains(&offer.id) || book.active.len() >= MAX_CONCURRENT_PUSHES {
            return Err(Refusal::Busy {
                retry_after_secs: BUSY_RETRY_SECS,
            });
        }
        if !book.partial.contains_key(&offer.id) {
            let used = book.used();
            let free = self.config.quota.saturating_sub(used);
            if footprint(offer.blob_len) > free {
                return Err(Refusal::Quota { free });
            }
            book.partial.insert(offer.id, offer.blob_len);
        }
        book.active.insert(offer.id);
        Ok(Admitted::Receive)
    }

    fn count_refusal(&self, r: Refusal) {
        let c = &self.counters;
        match r {
            Refusal::NotAllowed => &c.refused_not_allowed,
            Refusal::Quota { .. } => &c.refused_quota,
            Refusal::TakenDown => &c.refused_taken_down,
            Refusal::Busy { .. } => &c.refused_busy,
            Refusal::BadOffer => &c.refused_bad,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}

enum Admitted {
    AlreadyStored,
    Receive,
}

/// Clears a push's "active" mark when it ends, however it ends.
struct ActiveGuard<'a> {
    inner: &'a Inner,
    id: BlobId,
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.inner.book().active.remove(&self.id);
    }
}

fn id_of(path: &Path) -> Option<BlobId> {
    path.file_stem()?.to_str()?.parse().ok()
}

fn load_taken_down(path: &Path) -> io::Result<HashSet<BlobId>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(HashSet::new()),
        Err(e) => Err(e),
    }
}

/// Loads a stored blob's outboard and checks it fits the blob file and the id.
fn load_blob(path: &Path, id: BlobId) -> io::Result<Outboard> {
    let blob_len = fs::metadata(path)?.len();
    if !shoal_protocol::push::valid_blob_len(blob_len) {
        return Err(io::Error::other(format!(
            "{blob_len} bytes is not a blob size"
        )));
    }
    let pairs = fs::read(path.with_extension("obao"))?;
    let outboard = Outboard::from_parts(id, blob_len, pairs).map_err(io::Error::other)?;
    // The pairs down to the first block hash up to the id (every block is checked again
    // against the outboard when it is served).
    if outboard
        .expected_block_hash(shoal_protocol::BlockIndex(0))
        .is_none()
    {
        return Err(io::Error::other("outboard does not match the blob id"));
    }
    Ok(outboard)
}

async fn accept_pushes(inner: Arc<Inner>, mut incoming: libp2p_stream::IncomingStreams) {
    let shutdown = inner.node.shutdown_token();
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => break,
            next = incoming.next() => next,
        };
        let Some((peer, mut stream)) = next else {
            break;
        };
        let inner = inner.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let res = tokio::select! {
                () = shutdown.cancelled() => Ok(()),
                res = receive(&inner, peer, &mut stream) => res,
            };
            if let Err(e) = res {
                debug!(%peer, error = %e, "push ended early");
            }
        });
    }
}

async fn write_reply(stream: &mut Stream, reply: &Reply) -> io::Result<()> {
    stream.write_all(&reply.encode()).await?;
    stream.flush().await
}

async fn read_timeout(stream: &mut Stream, buf: &mut [u8], timeout: Duration) -> io::Result<()> {
    tokio::time::timeout(timeout, stream.read_exact(buf))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "publisher sent nothing in time"))?
}

/// Serves one push stream.
async fn receive(inner: &Arc<Inner>, peer: PeerId, stream: &mut Stream) -> io::Result<()> {
    let timeout = inner.node.config().request_timeout;
    let mut buf = [0u8; OFFER_LEN];
    read_timeout(stream, &mut buf, timeout).await?;
    let offer = match Offer::decode(&buf) {
        Ok(o) => o,
        Err(e) => {
            debug!(%peer, error = %e, "bad push offer");
            inner.count_refusal(Refusal::BadOffer);
            write_reply(stream, &Reply::Refuse(Refusal::BadOffer)).await?;
            return stream.close().await;
        }
    };
    let id = offer.id;
    match inner.admit(peer, &offer) {
        Err(r) => {
            if r == Refusal::NotAllowed {
                warn!(%peer, blob = %id, "push refused: publisher not on the allow-list (--allow PEER_ID)");
            } else {
                info!(%peer, blob = %id, refusal = ?r, "push refused");
            }
            inner.count_refusal(r);
            write_reply(stream, &Reply::Refuse(r)).await?;
            stream.close().await
        }
        Ok(Admitted::AlreadyStored) => {
            inner.counters.accepted.fetch_add(1, Ordering::Relaxed);
            write_reply(stream, &Reply::Accept { want: Vec::new() }).await?;
            write_reply(stream, &Reply::Stored).await?;
            stream.close().await
        }
        Ok(Admitted::Receive) => {
            let _active = ActiveGuard { inner, id };
            inner.counters.accepted.fetch_add(1, Ordering::Relaxed);
            info!(%peer, blob = %id, bytes = offer.blob_len, "receiving push");
            let result = receive_blocks(inner, peer, &offer, stream).await;
            let reply = match result {
                Ok(()) => {
                    inner.counters.stored.fetch_add(1, Ordering::Relaxed);
                    info!(%peer, blob = %id, "push stored");
                    Reply::Stored
                }
                Err(PushFail::Reply(f)) => {
                    match f {
                        Failure::Corrupt { block } => {
                            inner
                                .counters
                                .failed_corrupt
                                .fetch_add(1, Ordering::Relaxed);
                            warn!(%peer, blob = %id, block, "push stopped: data does not match the blob id");
                        }
                        _ => {
                            inner.counters.failed_other.fetch_add(1, Ordering::Relaxed);
                            warn!(%peer, blob = %id, failure = ?f, "push stopped");
                        }
                    }
                    Reply::Failed(f)
                }
                Err(PushFail::Io(e)) => {
                    inner.counters.failed_other.fetch_add(1, Ordering::Relaxed);
                    info!(%peer, blob = %id, error = %e, "push interrupted; verified blocks are kept for a resume");
                    return Err(e);
                }
            };
            write_reply(stream, &reply).await?;
            stream.close().await
        }
    }
}

enum PushFail {
    /// Tell the publisher, then close.
    Reply(Failure),
    /// The stream broke: nothing to tell.
    Io(io::Error),
}

/// A push's files in `partial/`.
struct Partial {
    part: File,
    part_path: PathBuf,
    obao: File,
    obao_path: PathBuf,
    outboard: Outboard,
    state: State,
    /// Written since the last checkpoint.
    pending: Vec<u32>,
    dirty_pairs: Vec<u64>,
}

impl Partial {
    fn open(dir: &Path, offer: &Offer) -> io::Result<Self> {
        let id = offer.id;
        let part_path = dir.join(format!("{id}.blob"));
        let obao_path = dir.join(format!("{id}.obao"));
        let have_path = dir.join(format!("{id}.have"));
        let part = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part_path)?;
        let state = State::load(have_path.clone(), id, Some(offer.blob_len));
        let (obao, outboard, pairs_kept) = open_sparse_outboard(&obao_path, id, offer.blob_len)?;
        // Blocks of an earlier push count only if the part file and their pairs survived
        // too (both are synced before the have-map at each checkpoint; a crash while a
        // finished push was being moved into `blobs/` can leave either behind alone).
        let state = match state {
            Some(s) if pairs_kept && part.metadata()?.len() == offer.blob_len => s,
            _ => {
                part.set_len(0)?;
                part.set_len(offer.blob_len)?;
                State::new(have_path, id, offer.blob_len)
            }
        };
        Ok(Self {
            part,
            part_path,
            obao,
            obao_path,
            outboard,
            state,
            pending: Vec::new(),
            dirty_pairs: Vec::new(),
        })
    }

    /// Makes the blocks written so far durable, then records them in the have-map.
    fn checkpoint(&mut self) -> io::Result<()> {
        if self.pending.is_empty() && self.dirty_pairs.is_empty() {
            return Ok(());
        }
        self.dirty_pairs.sort_unstable();
        self.dirty_pairs.dedup();
        for &p in &self.dirty_pairs {
            let at = usize::try_from(p).expect("outboard fits in memory") * PARENT_LEN;
            write_all_at(
                &self.obao,
                &self.outboard.as_bytes()[at..at + PARENT_LEN],
                p * PARENT_LEN as u64,
            )?;
        }
        self.dirty_pairs.clear();
        self.part.sync_data()?;
        self.obao.sync_data()?;
        for b in self.pending.drain(..) {
            self.state.set(u64::from(b));
        }
        self.state.save()
    }
}

/// Receives the wanted blocks of a push, verifying each, and stores the blob when complete.
async fn receive_blocks(
    inner: &Arc<Inner>,
    peer: PeerId,
    offer: &Offer,
    stream: &mut Stream,
) -> Result<(), PushFail> {
    let timeout = inner.node.config().request_timeout;
    let disk = |e: io::Error| {
        warn!(blob = %offer.id, error = %e, "seed node store failed");
        PushFail::Reply(Failure::Disk)
    };
    let dir = inner.partial_dir.clone();
    let o = *offer;
    let mut partial = tokio::task::spawn_blocking(move || Partial::open(&dir, &o))
        .await
        .map_err(|e| disk(io::Error::other(e)))?
        .map_err(disk)?;
    let total = blocks_of(offer.blob_len);
    let want = want_ranges(total, |b| !partial.state.has(u64::from(b)));
    write_reply(stream, &Reply::Accept { want: want.clone() })
        .await
        .map_err(PushFail::Io)?;
    let mut decoder = RangeDecoder::new(offer.id, offer.blob_len, &want);
    let mut last_checkpoint = Instant::now();
    let mut next_block = want.first().map_or(0, |r| r.start);
    loop {
        if inner.book().taken_down.contains(&offer.id) {
            return Err(PushFail::Reply(Failure::TakenDown));
        }
        match decoder.need() {
            Need::Done => break,
            Need::Parent => {
                let mut pair = [0u8; PARENT_LEN];
                read_timeout(stream, &mut pair, timeout)
                    .await
                    .map_err(PushFail::Io)?;
                match decoder.parent(&pair) {
                    Ok(position) => {
                        partial.outboard.set_pair(position, &pair);
                        partial.dirty_pairs.push(position);
                    }
                    Err(_) => {
                        checkpoint(partial).await.map_err(disk)?;
                        return Err(PushFail::Reply(Failure::Corrupt { block: next_block }));
                    }
                }
            }
            Need::Block { index, len } => {
                next_block = index.0;
                let mut data = vec![0u8; len];
                read_timeout(stream, &mut data, timeout)
                    .await
                    .map_err(PushFail::Io)?;
                if decoder.block(&data).is_err() {
                    checkpoint(partial).await.map_err(disk)?;
                    return Err(PushFail::Reply(Failure::Corrupt { block: index.0 }));
                }
                write_all_at(&partial.part, &data, index.offset()).map_err(disk)?;
                partial.pending.push(index.0);
                inner
                    .counters
                    .bytes
                    .fetch_add(len as u64, Ordering::Relaxed);
                if partial.pending.len() >= CHECKPOINT_BLOCKS
                    || last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL
                {
                    partial = checkpoint(partial).await.map_err(disk)?;
                    last_checkpoint = Instant::now();
                }
            }
        }
    }
    let partial = checkpoint(partial).await.map_err(disk)?;
    debug!(%peer, blob = %offer.id, "push complete; storing");
    let blobs_dir = inner.blobs_dir.clone();
    let id = offer.id;
    let stored = tokio::time::timeout(
        STORE_TIMEOUT,
        tokio::task::spawn_blocking(move || finish(partial, &blobs_dir, id)),
    )
    .await
    .map_err(|_| disk(io::Error::other("storing took too long")))?
    .map_err(|e| disk(io::Error::other(e)))?
    .map_err(disk)?;
    let (outboard, path) = stored;
    {
        let mut book = inner.book();
        book.partial.remove(&id);
        if book.taken_down.contains(&id) {
            drop(book);
            let _ = fs::remove_file(&path);
            let _ = fs::remove_file(path.with_extension("obao"));
            return Err(PushFail::Reply(Failure::TakenDown));
        }
    }
    inner.serve(outboard, path);
    Ok(())
}

/// Runs a checkpoint on a blocking thread (fsyncs take milliseconds).
async fn checkpoint(mut partial: Partial) -> io::Result<Partial> {
    tokio::task::spawn_blocking(move || partial.checkpoint().map(|()| partial))
        .await
        .map_err(io::Error::other)?
}

/// Moves a complete push into `blobs/` (outboard first: the blob file's arrival marks it
/// complete) and returns the outboard and the blob's path.
fn finish(partial: Partial, blobs_dir: &Path, id: BlobId) -> io::Result<(Outboard, PathBuf)> {
    if partial.state.count() != block_count(partial.outboard.blob_len()) {
        return Err(io::Error::other("push ended with blocks missing"));
    }
    let blob_path = blobs_dir.join(format!("{id}.blob"));
    let Partial {
        part,
        part_path,
        obao,
        obao_path,
        outboard,
        state,
        ..
    } = partial;
    // Every pair is now known: write the whole outboard (pairs of resumed runs included).
    write_all_at(&obao, outboard.as_bytes(), 0)?;
    obao.sync_data()?;
    drop((part, obao));
    fs::rename(&obao_path, blob_path.with_extension("obao"))?;
    fs::rename(&part_path, &blob_path)?;
    if let Ok(dir) = File::open(blobs_dir) {
        let _ = dir.sync_all();
    }
    let _ = fs::remove_file(state.path());
    Ok((outboard, blob_path))
}

/// What a push did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PushReport {
    /// Blocks the seed node asked for (fewer than the blob's after an interrupted push;
    /// none if it already stored the blob).
    pub blocks_sent: u64,
    /// Blocks in the blob.
    pub blocks_total: u64,
    /// Blob bytes sent.
    pub bytes_sent: u64,
}

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// The seed node refused the push.
    #[error("{}", refusal_text(*.0, .1))]
    Refused(Refusal, PeerId),
    /// The seed node stopped the push.
    #[error("{}", failure_text(*.0))]
    Failed(Failure),
    /// The seed node could not be reached, or the stream broke (run the push again: it
    /// resumes).
    #[error("push interrupted: {0}; run the same command again to resume")]
    Interrupted(String),
    /// The seed node broke the protocol.
    #[error("the seed node answered nonsense ({0})")]
    Protocol(String),
    /// Reading the blob here failed.
    #[error("cannot read the blob here: {0}")]
    Local(String),
}

fn refusal_text(r: Refusal, me: &PeerId) -> String {
    match r {
        Refusal::NotAllowed => format!(
            "the seed node does not accept pushes from this publisher (peer id {me}); ask its operator to add `--allow {me}`"
        ),
        Refusal::Quota { free } => format!(
            "the seed node is out of space: its quota has {free} bytes free; ask its operator to raise --quota or remove blobs"
        ),
        Refusal::TakenDown => "this blob was taken down; the seed node will not store it".into(),
        Refusal::Busy { retry_after_secs } => format!(
            "the seed node is busy with other pushes (or this blob's); try again in {retry_after_secs} s"
        ),
        Refusal::BadOffer => {
            "the seed node refused the offer: it holds an interrupted push of this blob with another size".into()
        }
    }
}

fn failure_text(f: Failure) -> String {
    match f {
        Failure::Corrupt { block } => format!(
            "the seed node rejected block {block}: it does not match the blob id (the local copy is damaged or changed since it was shared; share the file again)"
        ),
        Failure::Disk => "the seed node could not write to its disk; ask its operator".into(),
        Failure::TakenDown => "this blob was taken down during the push".into(),
    }
}

/// Pushes the ciphertext of `source` (served by `node`) to the seed node `to`, resuming
/// where an earlier push stopped. `progress(sent, total)` is called with blob bytes.
/// Only ciphertext and public facts (blob id and size) leave this machine.
///
/// # Errors
/// If the seed node cannot be reached, refuses, or stops the push.
pub async fn push(
    node: &Node,
    to: PeerId,
    source: Arc<Source>,
    progress: impl Fn(u64, u64),
) -> Result<PushReport, PushError> {
    let timeout = node.config().request_timeout;
    let offer = Offer {
        id: source.id(),
        blob_len: source.blob_len(),
    };
    let interrupted = |e: &dyn fmt::Display| PushError::Interrupted(e.to_string());
    let mut control = node.stream_control();
    let mut stream = tokio::time::timeout(timeout, control.open_stream(to, push_protocol()))
        .await
        .map_err(|_| interrupted(&"timed out opening the push stream"))?
        .map_err(|e| interrupted(&e))?;
    stream
        .write_all(&offer.encode())
        .await
        .map_err(|e| interrupted(&e))?;
    let want = match read_reply(&mut stream, offer.blocks(), timeout).await? {
        Reply::Accept { want } => want,
        Reply::Refuse(r) => return Err(PushError::Refused(r, node.peer_id())),
        other => return Err(PushError::Protocol(format!("{other:?} before accept"))),
    };
    let blocks_sent: u64 = want.iter().map(|r| u64::from(r.len())).sum();
    let total_bytes: u64 = want
        .iter()
        .flat_map(BlockRange::iter)
        .map(|b| shoal_protocol::blob::block_len(offer.blob_len, b) as u64)
        .sum();
    progress(0, total_bytes);
    // Write the data while listening for a reply: a seed node that finds a bad block says
    // so and stops reading, and a writer waiting on its full window would wait forever.
    let (mut rd, mut wr) = stream.split();
    let reply = read_reply_untimed(&mut rd, offer.blocks());
    tokio::pin!(reply);
    let writer = async {
        if want.is_empty() {
            return Ok(());
        }
        let (tx, mut rx) = mpsc::channel(4);
        let src = source.clone();
        let ranges = want.clone();
        #[cfg(feature = "test-utils")]
        let corrupt = node.config().corrupt_uploads;
        #[cfg(not(feature = "test-utils"))]
        let corrupt = false;
        let producer = tokio::task::spawn_blocking(move || {
            crate::serve::blocks::produce(&src, &ranges, Vec::new(), corrupt, &tx);
        });
        let mut sent = 0u64;
        while let Some(chunk) = rx.recv().await {
            let chunk = chunk.map_err(|e| PushError::Local(e.to_string()))?;
            wr.write_all(&chunk).await.map_err(|e| interrupted(&e))?;
            // Parents are a small part of a chunk: count them in, capped.
            sent = (sent + chunk.len() as u64).min(total_bytes);
            progress(sent, total_bytes);
            crate::buffers::put(chunk);
        }
        drop(rx);
        let _ = producer.await;
        wr.flush().await.map_err(|e| interrupted(&e))
    };
    let early = tokio::select! {
        written = writer => { written?; None }
        reply = &mut reply => Some(reply),
    };
    let reply = match early {
        Some(reply) => reply,
        None => tokio::time::timeout(STORE_TIMEOUT, &mut reply)
            .await
            .map_err(|_| interrupted(&"the seed node did not confirm in time"))?,
    };
    match reply? {
        Reply::Stored => {
            let _ = wr.close().await;
            progress(total_bytes, total_bytes);
            Ok(PushReport {
                blocks_sent,
                blocks_total: offer.blocks(),
                bytes_sent: total_bytes,
            })
        }
        Reply::Failed(f) => Err(PushError::Failed(f)),
        other => Err(PushError::Protocol(format!("{other:?} after the data"))),
    }
}

/// Reads one reply, however long it takes (the caller bounds the wait).
async fn read_reply_untimed(
    stream: &mut (impl futures::AsyncRead + Unpin),
    blocks: u64,
) -> Result<Reply, PushError> {
    let interrupted = |e: io::Error| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            PushError::Interrupted("the seed node closed the stream".into())
        } else {
            PushError::Interrupted(e.to_string())
        }
    };
    let mut buf = vec![0u8; 1];
    stream.read_exact(&mut buf).await.map_err(interrupted)?;
    loop {
        let need = Reply::frame_len(&buf).map_err(|e| PushError::Protocol(e.to_string()))?;
        if need <= buf.len() {
            break;
        }
        let have = buf.len();
        buf.resize(need, 0);
        stream
            .read_exact(&mut buf[have..])
            .await
            .map_err(interrupted)?;
    }
    Reply::decode(&buf, blocks).map_err(|e| PushError::Protocol(e.to_string()))
}

async fn read_reply(
    stream: &mut Stream,
    blocks: u64,
    timeout: Duration,
) -> Result<Reply, PushError> {
    tokio::time::timeout(timeout, read_reply_untimed(stream, blocks))
        .await
        .map_err(|_| PushError::Interrupted("the seed node did not answer in time".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reopen(dir: &Path, offer: &Offer) -> Vec<u64> {
        let p = Partial::open(dir, offer).expect("open partial");
        (0..block_count(offer.blob_len))
            .filter(|&b| p.state.has(b))
            .collect()
    }

    /// A crash can leave a push's have-map beside a part file or outboard that did not
    /// survive (e.g. between the two renames of `finish`): its blocks must then be asked
    /// for again, never counted as stored.
    #[test]
    fn a_resumed_push_counts_blocks_only_while_data_and_pairs_both_survive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let offer = Offer {
            id: BlobId::from_bytes([7; 32]),
            blob_len: shoal_protocol::format::Layout::for_file(3 * 65_520)
                .expect("layout")
                .blob_len(),
        };
        assert!(block_count(offer.blob_len) >= 3);
        let mut p = Partial::open(dir.path(), &offer).expect("open partial");
        p.pending.extend([0, 2]);
        p.checkpoint().expect("checkpoint");
        drop(p);
        assert_eq!(
            reopen(dir.path(), &offer),
            [0, 2],
            "a clean resume keeps them"
        );

        fs::remove_file(dir.path().join(format!("{}.obao", offer.id))).expect("rm obao");
        assert_eq!(
            reopen(dir.path(), &offer),
            [0u64; 0],
            "pairs lost: start over"
        );

        let mut p = Partial::open(dir.path(), &offer).expect("open partial");
        p.pending.push(1);
        p.checkpoint().expect("checkpoint");
        drop(p);
        fs::remove_file(dir.path().join(format!("{}.blob", offer.id))).expect("rm blob");
        assert_eq!(
            reopen(dir.path(), &offer),
            [0u64; 0],
            "data lost: start over"
        );
    }
}
