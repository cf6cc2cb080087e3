//! Downloading a blob from peers: verified, decrypted as it arrives, resumable, crash-safe.
//!
//! Files in the output directory while a download runs:
//! - `.shoal-<blob id>.part`: the plaintext being assembled, written at final offsets;
//! - `.shoal-<blob id>.state`: which blocks are verified *and durably written* (the
//!   have-map) plus the decrypted header record. Never the key.
//!
//! Order of writes: block bytes → `fdatasync(part)` → state file written atomically. So the
//! state never claims a block that is not on disk. The sync runs on a helper thread while
//! writing continues; a checkpoint records only the blocks written before its sync began.
//! After a crash, at most the blocks of the last two checkpoint intervals
//! ([`CHECKPOINT_BLOCKS`] blocks or [`CHECKPOINT_INTERVAL`] each) are fetched
//! again. The part file is renamed to its final name only when every block is in.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{AsyncReadExt, AsyncWriteExt, future::join_all};
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
use shoal_protocol::{
    BlobId, Link,
    blob::{
        BlockIndex, BlockRange, Need, Outboard, PARENT_LEN, RangeDecoder, VerifyError, block_count,
    },
    format::{HEADER_LEN, Layout, Metadata, OpenBlobError, Opener},
    have::{BlockSet, HaveMsg, Subscribe},
    schedule::{self, Action, Failure, Mode, RequestId, Scheduler},
    wire::{BlobRequest, ResponseHeader},
};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::{
    announce::{Announcer, Outcome, Status},
    buffers,
    dht::Found,
    node::{DialError, Interest, Node, blob_protocol, have_protocol},
    rate::RateLimiter,
    store::{Held, Source, Store, read_exact_at, write_all_at, write_atomic},
};

/// Blocks written between durable checkpoints of the have-map.
pub const CHECKPOINT_BLOCKS: u64 = 256;
/// Longest time between checkpoints while blocks arrive.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// Progress is published every this many blocks (1 MiB).
const PROGRESS_EVERY: u64 = 16;
/// Verified blocks queued for the writer (64 KiB each): bounds memory.
const WRITE_QUEUE: usize = 32;
const STATE_MAGIC: &[u8; 8] = b"SHOALDL1";

/// Where the file goes.
#[derive(Clone, Debug)]
pub enum Output {
    /// Exactly this path.
    File(PathBuf),
    /// This directory, under the name in the blob's header.
    Dir(PathBuf),
}

/// How to fetch.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Where the file goes.
    pub output: Output,
    /// Peers to try besides the link's `peer` hints.
    pub peers: Vec<Multiaddr>,
    /// Parallel requests per peer. Default 4.
    pub requests_per_peer: usize,
    /// Blocks (64 KiB) per request. Default 16 (1 MiB).
    pub blocks_per_request: u32,
    /// Replace an existing output file.
    pub overwrite: bool,
    /// Fetch blocks in order (streaming playback) instead of rarest first.
    pub sequential: bool,
    /// Download cap in bytes per second across all peers; `None` = unlimited.
    pub down_limit: Option<u64>,
    /// Trackers to announce to besides the link's `tr` hints (multiaddrs ending in
    /// `/p2p/<peer id>`).
    pub trackers: Vec<Multiaddr>,
    /// Once the file is complete, provide it in the DHT ([`Node::provide`]): the node seeds
    /// it while it runs. Default `true`; turn it off when the node stops right after the
    /// fetch (a provider record would then point at a peer that is gone).
    pub provide: bool,
}

impl FetchOptions {
    /// Defaults writing to `output`.
    pub const fn new(output: Output) -> Self {
        Self {
            output,
            peers: Vec::new(),
            requests_per_peer: 4,
            blocks_per_request: 64,
            overwrite: false,
            sequential: false,
            down_limit: None,
            trackers: Vec::new(),
            provide: true,
        }
    }
}

/// Progress of a fetch, published on a watch channel.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// File name from the header, once known.
    pub name: Option<String>,
    /// File length in bytes, once known.
    pub file_len: Option<u64>,
    /// Blocks in the blob, once known.
    pub total_blocks: u64,
    /// Blocks verified and written.
    pub done_blocks: u64,
    /// Blocks found already done when the fetch started (resume).
    pub resumed_blocks: u64,
    /// Peers connected.
    pub peers: usize,
}

/// What a finished fetch did.
#[derive(Debug)]
pub struct Fetched {
    /// Final path of the file.
    pub path: PathBuf,
    /// The header metadata.
    pub metadata: Metadata,
    /// Blocks downloaded in this run.
    pub fetched_blocks: u64,
    /// Blocks reused from an interrupted run.
    pub resumed_blocks: u64,
    /// Wall time of this run.
    pub elapsed: Duration,
    /// Peers dropped for sending bad data, with the reason.
    pub banned: Vec<(PeerId, String)>,
    /// Still announcing this node to the link's trackers, now as a seeder: keep it while the
    /// node seeds the file; dropping it tells the trackers this node left.
    pub announcer: Option<Announcer>,
}

/// Why a fetch failed. Blocks verified before the failure are kept for the next run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The link names no peer or tracker, none was given, and the DHT cannot be asked.
    #[error(
        "the link names no peer or tracker to fetch from and no DHT bootstrap peer is configured; pass a peer with --peer ADDR, a tracker with --tracker ADDR, or a DHT bootstrap peer with --bootstrap ADDR"
    )]
    NoPeersGiven,
    /// No peer could be reached: not the link's or given peers, none listed by a tracker,
    /// none found in the DHT.
    #[error(
        "no peer could be reached; tried:\n{}\npass a peer that has the file with --peer ADDR, a tracker with --tracker ADDR or a DHT bootstrap peer with --bootstrap ADDR, and check that someone is seeding it",
        list(.tried)
    )]
    Unreachable {
        /// Each source (peer address, tracker, the DHT) and what it gave.
        tried: Vec<String>,
    },
    /// Peers were reached but none could deliver the missing blocks.
    #[error("no reachable peer could deliver the blob ({done} of {total} blocks done; run again to resume); peers:\n{}", list(.why))]
    Exhausted {
        /// Blocks done.
        done: u64,
        /// Blocks in the blob.
        total: u64,
        /// Each peer and why it was given up.
        why: Vec<String>,
    },
    /// The key in the link does not open the blob.
    #[error("the key in the link does not open blob {id}: the link is wrong or was altered")]
    WrongKey {
        /// The blob.
        id: BlobId,
    },
    /// The blob verified against its id but is not a valid Shoal blob under this key.
    #[error("blob {id} is not a valid Shoal blob for this link")]
    BadBlob {
        /// The blob.
        id: BlobId,
        /// Cause.
        #[source]
        source: OpenBlobError,
    },
    /// A verified segment failed to decrypt: the publisher produced a broken blob.
    #[error(
        "segment {block} of blob {id} does not decrypt although it matches the blob id; the publisher's blob is broken"
    )]
    Undecryptable {
        /// The blob.
        id: BlobId,
        /// The segment.
        block: BlockIndex,
    },
    /// A tracker this fetch announces to (one named in the link, or given) answered that its
    /// operator took the blob down. The fetch stops, even if some peer would still serve the
    /// blob: the link's publisher chose that tracker to coordinate the file, and "taken
    /// down" means the file is no longer distributed there. Blocks verified so far stay in
    /// the output directory's `.shoal-<blob id>.*` files; delete them if unwanted.
    #[error(
        "this file was taken down: the operator of tracker {tracker} took blob {id} down, and the tracker no longer coordinates its download; nothing more is fetched"
    )]
    TakenDown {
        /// The blob.
        id: BlobId,
        /// The tracker that said so.
        tracker: Multiaddr,
    },
    /// Another fetch of the same blob into the same directory is running.
    #[error("another download of this blob is already writing {0}; wait for it or stop it")]
    InUse(PathBuf),
    /// The output file exists.
    #[error("{0} already exists; choose another -o path or pass --force to replace it")]
    OutputExists(PathBuf),
    /// Writing locally failed (disk full, permissions). Verified blocks are kept.
    #[error("cannot write {path}; fix the cause (e.g. free disk space) and run again to resume")]
    Disk {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

fn list(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("  - {s}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One request's failure, classified: a lying peer is banned; a local or transient failure
/// never bans.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("sent data that does not match the blob id ({0})")]
    Lied(String),
    #[error("answered {0:?}")]
    Status(ResponseHeader),
    /// The stream was reset before the request was written, or ended before the status byte
    /// (a block request) or the first frame (a have-map subscription). libp2p-stream drops
    /// an inbound stream when the node has not yet taken the previous one
    /// (libp2p/rust-libp2p#5651), so a loaded peer does this to some of several streams
    /// opened together.
    #[error(
        "closed the request without answering (a loaded peer drops requests it cannot take yet)"
    )]
    Unanswered,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("timed out")]
    Timeout,
    #[error("stopped")]
    Stopped,
}

/// A parent pair verified on the way to a block, and its position in the outboard.
type Pair = (u64, [u8; PARENT_LEN]);

struct Verified {
    index: BlockIndex,
    data: Vec<u8>,
    /// The pairs verified since the previous block of the response: kept (sparse outboard)
    /// so this node can serve the block to others.
    parents: Vec<Pair>,
}

/// Persistent have-map and header of a download (and of a push a seed node receives).
pub(crate) struct State {
    path: PathBuf,
    id: BlobId,
    blob_len: u64,
    header: Option<[u8; HEADER_LEN]>,
    have: Vec<u8>,
}

impl State {
    pub(crate) fn new(path: PathBuf, id: BlobId, blob_len: u64) -> Self {
        let blocks = block_count(blob_len);
        Self {
            path,
            id,
            blob_len,
            header: None,
            have: vec![0; usize::try_from(blocks.div_ceil(8)).expect("fits")],
        }
    }

    /// Loads a state file if it belongs to this blob; anything else means "start over".
    pub(crate) fn load(path: PathBuf, id: BlobId, blob_len: Option<u64>) -> Option<Self> {
        let bytes = fs::read(&path).ok()?;
        if bytes.len() < 8 + 32 + 8 + 1 + HEADER_LEN
            || &bytes[..8] != STATE_MAGIC
            || bytes[8..40] != id.as_bytes()[..]
        {
            return None;
        }
        let len = u64::from_le_bytes(bytes[40..48].try_into().ok()?);
        if blob_len.is_some_and(|l| l != len) || Layout::for_blob(len).is_err() {
            return None;
        }
        let header: Option<[u8; HEADER_LEN]> = (bytes[48] == 1).then(|| {
            bytes[49..49 + HEADER_LEN]
                .try_into()
                .expect("length checked")
        });
        let mut state = Self::new(path, id, len);
        state.header = header;
        let bits = &bytes[49 + HEADER_LEN..];
        if bits.len() != state.have.len() {
            return None;
        }
        state.have.copy_from_slice(bits);
        Some(state)
    }

    pub(crate) fn save(&self) -> io::Result<()> {
        let mut out = Vec::with_capacity(49 + HEADER_LEN + self.have.len());
        out.extend_from_slice(STATE_MAGIC);
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(&self.blob_len.to_le_bytes());
        out.push(u8::from(self.header.is_some()));
        out.extend_from_slice(&self.header.unwrap_or([0; HEADER_LEN]));
        out.extend_from_slice(&self.have);
        write_atomic(&self.path, &out, true)
    }

    pub(crate) fn has(&self, i: u64) -> bool {
        let i = usize::try_from(i).expect("fits");
        self.have[i / 8] & (1 << (i % 8)) != 0
    }

    pub(crate) fn set(&mut self, i: u64) {
        let i = usize::try_from(i).expect("fits");
        self.have[i / 8] |= 1 << (i % 8);
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn count(&self) -> u64 {
        self.have.iter().map(|b| u64::from(b.count_ones())).sum()
    }
}

/// Each tracker a fetch announces to and what its last announce gave.
type Outcomes = watch::Receiver<Vec<(Multiaddr, Outcome)>>;

/// Fetches the blob of `link` into `opts.output`, publishing progress on `progress`.
/// Cancel-safe in the sense that matters: dropping the future loses no verified block that
/// reached a checkpoint, and never leaves a partial file under the final name.
///
/// A tracker that answers "taken down" stops the fetch at once with
/// [`FetchError::TakenDown`] (see there why). The answer comes to the first announce, or to
/// a re-announce if the takedown happens during the download; a fetch that completes before
/// some tracker has answered at all waits up to [`TRACKER_VERDICT_WAIT`] for that answer
/// before it publishes the file.
///
/// # Errors
/// See [`FetchError`]; every variant says what to do next.
pub async fn fetch(
    node: &Node,
    link: &Link,
    opts: FetchOptions,
    progress: watch::Sender<Progress>,
) -> Result<Fetched, FetchError> {
    let id = link.id;
    let (announcing, mut announcing_rx) = tokio::sync::oneshot::channel();
    let inner = fetch_inner(node, link, opts, progress, announcing);
    tokio::pin!(inner);
    let mut outcomes: Option<Outcomes> = None;
    let mut waiting = true; // for the announcer's outcomes, or for changes to them
    let result = loop {
        tokio::select! {
            // A takedown wins over whatever the fetch does in the same instant.
            biased;
            got = &mut announcing_rx, if waiting && outcomes.is_none() => {
                outcomes = got.ok();
                waiting = outcomes.is_some();
            }
            alive = async {
                match outcomes.as_mut() {
                    Some(o) => o.changed().await.is_ok(),
                    None => false,
                }
            }, if waiting && outcomes.is_some() => waiting = alive,
            r = &mut inner => break r,
        }
        if let Some(tracker) = taken_down_at(outcomes.as_ref()) {
            // Dropping the fetch aborts its requests; verified blocks stay on disk.
            info!(blob = %id, %tracker, "taken down at a tracker; fetch stopped");
            return Err(FetchError::TakenDown { id, tracker });
        }
    };
    match (result, taken_down_at(outcomes.as_ref())) {
        // Failing for lack of peers because the tracker stopped listing them: say why.
        (Err(_), Some(tracker)) => Err(FetchError::TakenDown { id, tracker }),
        (r, _) => r,
    }
}

/// The first tracker in `outcomes` that answered "taken down".
fn taken_down_at(outcomes: Option<&Outcomes>) -> Option<Multiaddr> {
    outcomes?
        .borrow()
        .iter()
        .find(|(_, o)| *o == Outcome::TakenDown)
        .map(|(t, _)| t.clone())
}

/// How long a fetch that completed waits for a tracker that has not answered its first
/// announce yet, before it publishes the file: long enough for a live tracker's "taken
/// down", short enough not to hold up a download because of a dead one.
pub const TRACKER_VERDICT_WAIT: Duration = Duration::from_secs(2);

/// [`fetch`] without the takedown watch: sends the announcer's outcomes on `announcing`
/// once it announces to trackers (dropped unused without trackers).
async fn fetch_inner(
    node: &Node,
    link: &Link,
    opts: FetchOptions,
    progress: watch::Sender<Progress>,
    announcing: tokio::sync::oneshot::Sender<Outcomes>,
) -> Result<Fetched, FetchError> {
    let started = Instant::now();
    let id = link.id;
    let (dir, fixed_name) = match &opts.output {
        Output::File(p) => (
            p.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            Some(p.clone()),
        ),
        Output::Dir(d) => (d.clone(), None),
    };
    if let Some(p) = &fixed_name
        && p.exists()
        && !opts.overwrite
    {
        return Err(FetchError::OutputExists(p.clone()));
    }
    let part_path = dir.join(format!(".shoal-{id}.part"));
    let state_path = dir.join(format!(".shoal-{id}.state"));
    let disk = |path: &Path| {
        let path = path.to_owned();
        move |source| FetchError::Disk { path, source }
    };
    // One fetch per blob and directory at a time: the part file is locked for the whole run
    // (released when the writer ends, even if the process is killed).
    let part = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&part_path)
        .map_err(disk(&part_path))?;
    if part.try_lock().is_err() {
        return Err(FetchError::InUse(part_path));
    }
    // Dropped before `part` (declared after it), so while the lock is still held.
    let mut clutter = EmptyPart {
        part: part_path.clone(),
        state: state_path.clone(),
        published: false,
    };

    // Trackers: from the link (`tr=`) and the options. They list more peers as they join.
    let mut tried = Vec::new();
    let trackers = merge_addrs(&opts.trackers, &link.trackers, "tracker ", &mut tried);
    // Connect to every known peer at once.
    let addrs = merge_addrs(&opts.peers, &link.peers, "", &mut tried);
    if addrs.is_empty() && trackers.is_empty() && tried.is_empty() && !node.dht_usable() {
        return Err(FetchError::NoPeersGiven);
    }
    // Peers that subscribe to our have-map of this blob are downloading it too: ask them.
    let mut interest = node.interest(id);
    // Peers found by trackers and the DHT, dialled already.
    let (found_tx, mut found) = mpsc::channel(FOUND_QUEUE);
    let total_hint = link
        .blob_len
        .and_then(|l| u32::try_from(block_count(l)).ok())
        .unwrap_or(0);
    let announcer = (!trackers.is_empty()).then(|| {
        Announcer::start(
            node,
            id,
            trackers.clone(),
            Status::leecher(0, total_hint),
            Some(found_tx.clone()),
        )
    });
    if let Some(a) = &announcer {
        let _ = announcing.send(a.outcomes());
    }
    let mut dht = DhtSearch::new(node, id, found_tx);
    if addrs.is_empty() && trackers.is_empty() {
        dht.start(); // nothing else names a peer: ask the DHT at once
    }
    let timeout = node.config().dial_timeout;
    let dials = join_all(addrs.iter().map(|a| node.dial(a.clone(), timeout))).await;
    let mut peers: Vec<PeerId> = Vec::new();
    for r in dials {
        match r {
            Ok(p) if !peers.contains(&p) => peers.push(p),
            Ok(_) => {}
            Err(DialError { addr, why }) => tried.push(format!("{addr}: {why}")),
        }
    }
    if peers.is_empty() {
        // Nobody named in the link or given answered: trackers and the DHT are left. The
        // DHT is asked at once if the named peers failed or there is no tracker, else when
        // the trackers list nobody in time.
        if !addrs.is_empty() || trackers.is_empty() {
            dht.start();
        }
        if let Some(p) = first_peer(
            &mut found,
            &mut interest.peers,
            &mut dht,
            announcer.as_ref(),
        )
        .await
        {
            peers.push(p);
        }
    }
    while let Ok(p) = found.try_recv() {
        if !peers.contains(&p) {
            peers.push(p);
        }
    }
    if peers.is_empty() {
        if addrs.is_empty() {
            tried.push("peers: none named in the link or given with --peer".into());
        }
        match &announcer {
            None => tried.push("trackers: none named in the link or given with --tracker".into()),
            Some(a) => tried.extend(a.outcomes().borrow().iter().map(|(t, o)| match o {
                Outcome::Failed(why) | Outcome::Refused(why) => format!("tracker {t}: {why}"),
                Outcome::TakenDown => format!("tracker {t}: the blob was taken down there"),
                Outcome::Pending => format!("tracker {t}: no answer within {GIVE_UP_AFTER:?}"),
                Outcome::Answered(n) => {
                    format!("tracker {t}: listed {n} peer(s), none reachable")
                }
            })),
        }
        tried.push(dht.describe());
        return Err(FetchError::Unreachable { tried });
    }
    progress.send_modify(|p| p.peers = peers.len());
    info!(blob = %id, peers = peers.len(), "connected");

    let mut state = State::load(state_path.clone(), id, link.blob_len);
    let resumed = state.as_ref().map_or(0, State::count);
    let mut banned: Vec<(PeerId, String)> = Vec::new();
    let mut why: Vec<String> = Vec::new();

    // Bootstrap: learn and authenticate the size, and open segment 0 (proves the key)
    // before fetching the body.
    let mut first_block: Option<Vec<u8>> = None;
    let mut boot_parents: Vec<Pair> = Vec::new();
    let mut boot_last: Option<(u64, Vec<u8>)> = None;
    if state.as_ref().is_none_or(|s| s.header.is_none()) {
        let mut got = None;
        // Peers that are busy (upload slots full in a flash crowd), lack the first blocks
        // (partial) or fail in transit are asked again with back-off until `GIVE_UP_AFTER`;
        // unreachable and lying ones are not. With trackers, a peer that does not have the
        // blob yet is asked again too (a tracker lists downloaders that are just starting),
        // and peers the trackers list later join the rounds.
        let tracked = announcer.is_some();
        let mut retry = peers.clone();
        let mut not_found: Vec<PeerId> = Vec::new();
        let mut backoff = BOOTSTRAP_BACKOFF;
        let deadline = tokio::time::Instant::now() + GIVE_UP_AFTER;
        loop {
            while let Ok(p) = found.try_recv() {
                if !retry.contains(&p) && !banned.iter().any(|(b, _)| *b == p) {
                    retry.push(p);
                    peers.push(p);
                }
            }
            if retry.is_empty() {
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                // Nobody left to ask: trackers may list more peers, and the DHT may know
                // some (at most one lookup per DHT_RETRY).
                let searching = dht.start();
                if !tracked && !searching {
                    break;
                }
                tokio::select! {
                    p = tokio::time::timeout_at(deadline, found.recv()) => {
                        if let Ok(Some(p)) = p {
                            retry.push(p);
                            peers.push(p);
                        }
                    }
                    () = dht.done() => {}
                }
                continue;
            }
            let round = std::mem::take(&mut retry);
            why.clear();
            for peer in round {
                let trusted = link.blob_len.or(state.as_ref().map(|s| s.blob_len));
                match bootstrap(node, peer, id, trusted).await {
                    Ok(x) => {
                        debug!(blob = %id, peer = %peer, after = ?started.elapsed(), "bootstrapped");
                        got = Some(x);
                        break;
                    }
                    Err(RequestError::Lied(w)) => {
                        warn!(peer = %peer, blob = %id, why = %w, "peer sent bad data; disconnected");
                        node.disconnect(peer).await;
                        banned.push((peer, w));
                    }
                    Err(e) => {
                        debug!(blob = %id, peer = %peer, error = %e, "bootstrap attempt failed");
                        let again = match &e {
                            RequestError::Status(ResponseHeader::NotFound) => {
                                not_found.push(peer);
                                tracked
                            }
                            RequestError::Status(
                                ResponseHeader::Busy | ResponseHeader::Missing,
                            )
                            | RequestError::Io(_)
                            | RequestError::Unanswered
                            | RequestError::Timeout => true,
                            _ => false,
                        };
                        if again {
                            retry.push(peer);
                        }
                        why.push(format!("{peer}: {e}"));
                    }
                }
            }
            if got.is_some() {
                break;
            }
            // Someone has the blob (busy or partial): the peers that did not have it yet are
            // likely downloaders just starting, worth asking again.
            if !retry.is_empty() {
                for p in not_found.drain(..) {
                    if !retry.contains(&p) {
                        retry.push(p);
                    }
                }
            }
            not_found.clear();
            if !retry.is_empty() {
                if tokio::time::Instant::now() + backoff > deadline {
                    break;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
        let Some(Boot {
            blob_len,
            block0,
            last,
            parents,
        }) = got
        else {
            why.extend(banned.iter().map(|(p, w)| format!("{p}: {w}")));
            why.push(dht.describe());
            return Err(FetchError::Exhausted {
                done: 0,
                total: link.blob_len.map_or(0, block_count),
                why,
            });
        };
        if state.as_ref().is_none_or(|s| s.blob_len != blob_len) {
            state = Some(State::new(state_path.clone(), id, blob_len));
        }
        first_block = Some(block0);
        boot_parents = parents;
        boot_last = last;
    }
    // A peer caught lying is never asked again for this blob.
    peers.retain(|p| !banned.iter().any(|(b, _)| b == p));
    let mut state = state.expect("set above");
    let blob_len = state.blob_len;
    let total = block_count(blob_len);

    // Open segment 0 (fresh) or rebuild the opener from the saved header (resume).
    let (opener, seg0_body) = match first_block.take() {
        Some(mut block0) => {
            let (opener, body) =
                Opener::new(&link.key, blob_len, &mut block0).map_err(|e| match e {
                    OpenBlobError::WrongKey => FetchError::WrongKey { id },
                    source => FetchError::BadBlob { id, source },
                })?;
            let mut header = [0u8; HEADER_LEN];
            header.copy_from_slice(&block0[..HEADER_LEN]);
            state.header = Some(header);
            (opener, Some(block0[body].to_vec()))
        }
        None => {
            let header = state.header.expect("resume requires a saved header");
            let opener =
                Opener::from_header(&link.key, blob_len, &header).map_err(|e| match e {
                    OpenBlobError::Header(
                        shoal_protocol::format::HeaderError::CommitmentMismatch,
                    ) => FetchError::WrongKey { id },
                    source => FetchError::BadBlob { id, source },
                })?;
            (opener, None)
        }
    };
    let metadata = opener.header().metadata.clone();
    let final_path = fixed_name.unwrap_or_else(|| dir.join(default_name(&metadata, id)));
    if final_path.exists() && !opts.overwrite {
        return Err(FetchError::OutputExists(final_path));
    }
    progress.send_modify(|p| {
        p.name = Some(metadata.name.clone());
        p.file_len = Some(metadata.file_len);
        p.total_blocks = total;
        p.resumed_blocks = resumed;
        p.done_blocks = resumed;
    });

    // The parent pairs verified so far, kept in a sparse outboard file synced with the part
    // file, so this node serves the blocks it has to other downloaders (also after a resume).
    let obao_path = dir.join(format!(".shoal-{id}.obao"));
    let (obao, mut outboard, _) = open_sparse_outboard(&obao_path, id, blob_len)?;
    for (position, pair) in &boot_parents {
        outboard.set_pair(*position, pair);
        write_all_at(&obao, pair, position * PARENT_LEN as u64).map_err(disk(&obao_path))?;
    }

    // Not preallocated: the file grows as blocks land, so a full disk shows up as a write
    // error mid-run (verified blocks so far are kept) and sparse-hostile filesystems cope.
    // The last block too, so this node can bootstrap others (they ask for blocks 0 and
    // last first) — if it can be written now: it lies at the end of the file, and a file
    // size limit or a full disk should stop the download where the data is, not here.
    let mut last_written = None;
    if let Some((index, mut data)) = boot_last.take()
        && !state.has(index)
        && let Ok(range) = opener.open_segment(index, &mut data)
    {
        let (file_off, _) = opener.layout().file_offset(index);
        if write_all_at(&part, &data[range], file_off).is_ok() {
            last_written = Some(index);
        }
    }
    let mut first_written = false;
    if let Some(body) = seg0_body
        && !state.has(0)
    {
        write_all_at(&part, &body, 0).map_err(disk(&part_path))?;
        first_written = true;
    }
    // Durable before the state claims them.
    if first_written || last_written.is_some() || !boot_parents.is_empty() {
        part.sync_data().map_err(disk(&part_path))?;
        obao.sync_data().map_err(disk(&obao_path))?;
    }
    if first_written {
        state.set(0);
    }
    if let Some(index) = last_written {
        state.set(index);
    }
    state.save().map_err(disk(&state_path))?;
    progress.send_modify(|p| p.done_blocks = state.count());

    // Serve what we hold while downloading: blocks on disk whose pairs are known.
    let total32 = u32::try_from(total).expect("MAX_FILE_LEN keeps indices in u32");
    let mut servable = BlockSet::new(total32);
    for i in 0..total32 {
        if state.has(u64::from(i)) && outboard.expected_block_hash(BlockIndex(i)).is_some() {
            servable.insert(i);
        }
    }
    let held = Arc::new(Held::new(servable));
    let flags = opener.header().flags;
    let serving = Arc::new(
        Source::downloading(
            part.try_clone().map_err(disk(&part_path))?,
            part_path.clone(),
            &link.key,
            flags,
            metadata.clone(),
            outboard,
            held.clone(),
        )
        .map_err(|e| FetchError::BadBlob {
            id,
            source: OpenBlobError::Header(shoal_protocol::format::HeaderError::Metadata(e)),
        })?,
    );
    let _serving_guard = ServingGuard::register(node, &serving);

    let had: Vec<u32> = (0..total)
        .filter(|&i| state.has(i))
        .map(|i| u32::try_from(i).expect("MAX_FILE_LEN keeps indices in u32"))
        .collect();
    let fetched_blocks = total - had.len() as u64;
    let state_count_at_start = had.len();
    let overwrite = opts.overwrite;
    let (writer_tx, writer_rx) = mpsc::channel(WRITE_QUEUE);
    let writer = {
        let part_path = part_path.clone();
        let state_path = state_path.clone();
        let progress = progress.clone();
        let held = held.clone();
        let serving = serving.clone();
        let obao_path = obao_path.clone();
        tokio::task::spawn_blocking(move || {
            write_blocks(
                writer_rx,
                &opener,
                &part,
                &part_path,
                Sparse {
                    file: &obao,
                    path: &obao_path,
                    source: &serving,
                    held: &held,
                },
                &state_path,
                state,
                &progress,
            )
        })
    };
    if let Some(a) = &announcer {
        a.set(Status::leecher(
            u32::try_from(state_count_at_start).unwrap_or(0),
            total32,
        ));
    }
    let ended = drive(
        node,
        id,
        blob_len,
        &opts,
        Discovery {
            peers: &peers,
            interest,
            found,
            announcer: announcer.as_ref(),
            dht: &mut dht,
        },
        had,
        writer_tx,
        &progress,
    )
    .await;
    let state = writer.await.map_err(|e| FetchError::Disk {
        path: part_path.clone(),
        source: io::Error::other(e),
    })??;
    banned.extend(ended.banned);
    why.extend(ended.gave_up);
    let done = state.count();
    if done < total {
        why.extend(
            banned
                .iter()
                .map(|(p, w)| format!("{p}: sent bad data ({w})")),
        );
        why.push(dht.describe());
        return Err(FetchError::Exhausted { done, total, why });
    }
    // Complete: every block verified, decrypted and synced. A tracker that has not answered
    // yet may still say "taken down" (the caller then drops this future): give it a moment.
    if let Some(a) = &announcer {
        let mut outcomes = a.outcomes();
        let _ = tokio::time::timeout(
            TRACKER_VERDICT_WAIT,
            outcomes.wait_for(|o| o.iter().all(|(_, x)| *x != Outcome::Pending)),
        )
        .await;
    }
    // Publish under the final name.
    if final_path.exists() && !overwrite {
        return Err(FetchError::OutputExists(final_path));
    }
    let part = OpenOptions::new()
        .write(true)
        .open(&part_path)
        .map_err(disk(&part_path))?;
    if part.metadata().map_err(disk(&part_path))?.len() != metadata.file_len {
        // Only an empty file (no block carries file bytes) or a stale longer part.
        part.set_len(metadata.file_len).map_err(disk(&part_path))?;
        part.sync_all().map_err(disk(&part_path))?;
    }
    drop(part);
    fs::rename(&part_path, &final_path).map_err(disk(&final_path))?;
    clutter.published = true;
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    let _ = fs::remove_file(&state_path);
    let _ = fs::remove_file(&obao_path);
    info!(blob = %id, blocks = total, "fetch complete");
    if let Some(a) = &announcer {
        a.set(Status::seeder(total32));
    }
    // Keep serving the whole file while the node runs. Every pair is known unless blocks were
    // resumed from a run that lost its sparse outboard; then only new downloads seed it.
    let outboard = serving.outboard().clone();
    // Every pair was verified when it arrived; a pair still all zeros was never received (a
    // hash of zeros is not a value BLAKE3 produces in practice). Served blocks are checked
    // against the outboard again anyway.
    if outboard
        .as_bytes()
        .chunks_exact(PARENT_LEN)
        .all(|p| p.iter().any(|&b| b != 0))
    {
        match node
            .store()
            .add_downloaded(&final_path, &link.key, flags, metadata.clone(), outboard)
        {
            Ok(whole) => whole.add_uploaded(serving.uploaded()),
            Err(e) => warn!(blob = %id, error = %e, "cannot seed the downloaded file"),
        }
    }
    // Seeding the whole blob now: tell the DHT, in the background.
    if opts.provide
        && node.config().dht
        && node.store().get(&id).is_some_and(|s| s.held().is_none())
    {
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = node.provide(id).await {
                debug!(blob = %id, error = %e, "downloaded blob not provided in the DHT");
            }
        });
    }
    Ok(Fetched {
        path: final_path,
        metadata,
        fetched_blocks,
        resumed_blocks: resumed,
        elapsed: started.elapsed(),
        banned,
        announcer,
    })
}

/// Removes the part file of a fetch that ends before it recorded anything (no state file: no
/// peer answered, the key was wrong, the file was taken down): running again starts afresh
/// anyway, so an empty `.shoal-<id>.part` would only be clutter in the output directory.
/// Anything with a state file next to it is resume data and stays.
struct EmptyPart {
    part: PathBuf,
    state: PathBuf,
    /// The part file became the output: nothing to clean.
    published: bool,
}

impl Drop for EmptyPart {
    fn drop(&mut self) {
        if !self.published
            && !self.state.exists()
            && fs::metadata(&self.part).is_ok_and(|m| m.len() == 0)
        {
            let _ = fs::remove_file(&self.part);
        }
    }
}

/// `given` followed by the link's `hints` that parse and are not already there; a hint that
/// does not parse is listed in `tried` (prefixed with `what`).
fn merge_addrs(
    given: &[Multiaddr],
    hints: &[String],
    what: &str,
    tried: &mut Vec<String>,
) -> Vec<Multiaddr> {
    let mut out = given.to_vec();
    for h in hints {
        match h.parse::<Multiaddr>() {
            Ok(a) if !out.contains(&a) => out.push(a),
            Ok(_) => {}
            Err(e) => tried.push(format!("{what}{h}: not a valid multiaddr ({e})")),
        }
    }
    out
}

fn default_name(meta: &Metadata, id: BlobId) -> String {
    // The protocol already rejects separators, control characters, "." and "..".
    if meta.name.is_empty() || meta.name.starts_with('.') {
        format!("{id}.bin")
    } else {
        meta.name.clone()
    }
}

/// What bootstrapping learnt: the authenticated blob size, sealed block 0, and the parent
/// pairs verified on the way.
struct Boot {
    blob_len: u64,
    block0: Vec<u8>,
    /// The last block (sealed), when the blob has more than one.
    last: Option<(u64, Vec<u8>)>,
    parents: Vec<Pair>,
}

/// Fetches block 0 (and the last block when the size is not yet trusted) from `peer`.
async fn bootstrap(
    node: &Node,
    peer: PeerId,
    id: BlobId,
    trusted_len: Option<u64>,
) -> Result<Boot, RequestError> {
    let timeout = node.config().request_timeout;
    let mut control = node.control();
    let blob_len = match trusted_len {
        Some(l) => l,
        None => {
            // Learn the claimed size, then prove it by verifying the last block.
            let req = BlobRequest::new(id, [0]).expect("one range");
            let mut stream =
                open(&mut control, peer, blob_protocol(), &req.encode(), timeout).await?;
            let claimed = read_status(&mut stream, None, timeout).await?;
            let _ = stream.close().await;
            Layout::for_blob(claimed).map_err(|e| RequestError::Lied(e.to_string()))?;
            claimed
        }
    };
    let last = u32::try_from(block_count(blob_len) - 1)
        .map_err(|_| RequestError::Lied("size out of range".into()))?;
    let req = BlobRequest::new(id, [0, last]).expect("at most two ranges");
    let mut block0 = None;
    let mut last_block = None;
    let mut parents = Vec::new();
    request(node, peer, &req, blob_len, |v| {
        parents.extend(v.parents);
        if v.index.0 == 0 {
            block0 = Some(v.data);
        } else {
            last_block = Some((u64::from(v.index.0), v.data));
        }
        async { Ok(()) }
    })
    .await?;
    Ok(Boot {
        blob_len,
        block0: block0.expect("block 0 was requested and verified"),
        last: last_block,
        parents,
    })
}

/// Opens a stream of `protocol` to `peer` and writes `message` (a request or a
/// subscription), each step within `timeout`.
async fn open(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    protocol: StreamProtocol,
    message: &[u8],
    timeout: Duration,
) -> Result<Stream, RequestError> {
    let mut stream = tokio::time::timeout(timeout, control.open_stream(peer, protocol))
        .await
        .map_err(|_| RequestError::Timeout)?
        .map_err(|e| RequestError::Io(io::Error::other(e.to_string())))?;
    match tokio::time::timeout(timeout, stream.write_all(message)).await {
        Err(_) => Err(RequestError::Timeout),
        // The peer reset the stream before reading it: dropped unanswered.
        Ok(Err(_)) => Err(RequestError::Unanswered),
        Ok(Ok(())) => Ok(stream),
    }
}

async fn read_exact_timeout(
    stream: &mut Stream,
    buf: &mut [u8],
    timeout: Duration,
) -> Result<(), RequestError> {
    tokio::time::timeout(timeout, stream.read_exact(buf))
        .await
        .map_err(|_| RequestError::Timeout)?
        .map_err(RequestError::Io)
}

/// Reads the response status; returns the blob size on `Ok`.
async fn read_status(
    stream: &mut Stream,
    expected_len: Option<u64>,
    timeout: Duration,
) -> Result<u64, RequestError> {
    let mut status = [0u8; 1];
    match read_exact_timeout(stream, &mut status, timeout).await {
        Err(RequestError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(RequestError::Unanswered);
        }
        r => r?,
    }
    match ResponseHeader::decode_status(status[0]) {
        Err(e) => Err(RequestError::Lied(e.to_string())),
        Ok(Some(other)) => Err(RequestError::Status(other)),
        Ok(None) => {
            let mut len = [0u8; 8];
            read_exact_timeout(stream, &mut len, timeout).await?;
            let ResponseHeader::Ok { blob_len } = ResponseHeader::ok_with_len(len) else {
                unreachable!("ok_with_len returns Ok")
            };
            if expected_len.is_some_and(|l| l != blob_len) {
                return Err(RequestError::Lied(format!(
                    "claimed size {blob_len}, link says {}",
                    expected_len.unwrap_or(0)
                )));
            }
            Ok(blob_len)
        }
    }
}

/// Sends one request and verifies the answer block by block, handing each verified block to
/// `on_block` before reading the next.
async fn request<F, Fut>(
    node: &Node,
    peer: PeerId,
    req: &BlobRequest,
    blob_len: u64,
    mut on_block: F,
) -> Result<(), RequestError>
where
    F: FnMut(Verified) -> Fut,
    Fut: Future<Output = Result<(), RequestError>>,
{
    let timeout = node.config().request_timeout;
    let mut control = node.control();
    let mut stream = open(&mut control, peer, blob_protocol(), &req.encode(), timeout).await?;
    read_status(&mut stream, Some(blob_len), timeout).await?;
    let mut decoder = RangeDecoder::new(req.id, blob_len, &req.ranges);
    let mut parents = Vec::new();
    loop {
        match decoder.need() {
            Need::Done => break,
            Need::Parent => {
                let mut pair = [0u8; PARENT_LEN];
                read_exact_timeout(&mut stream, &mut pair, timeout).await?;
                let position = decoder.parent(&pair).map_err(lied)?;
                parents.push((position, pair));
            }
            Need::Block { len, .. } => {
                let mut data = buffers::take(len);
                read_exact_timeout(&mut stream, &mut data, timeout).await?;
                let index = decoder.block(&data).map_err(lied)?;
                let parents = std::mem::take(&mut parents);
                on_block(Verified {
                    index,
                    data,
                    parents,
                })
                .await?;
            }
        }
    }
    let _ = stream.close().await;
    Ok(())
}

fn lied(e: VerifyError) -> RequestError {
    RequestError::Lied(e.to_string())
}

/// What happened to the peers during the main phase.
struct Ended {
    banned: Vec<(PeerId, String)>,
    gave_up: Vec<String>,
}

/// What a request task or have-map watcher reports to the driver.
enum Event {
    /// A verified block was handed to the writer.
    Block {
        peer: PeerId,
        id: RequestId,
        index: u32,
    },
    /// The request ended (all its blocks delivered, or failed).
    Ended {
        peer: PeerId,
        id: RequestId,
        result: Result<(), RequestError>,
    },
    /// `peer` holds these blocks too.
    Have {
        peer: PeerId,
        ranges: Vec<BlockRange>,
    },
    /// `peer`'s have-map stream ended: it has the whole blob and said all, it went away,
    /// or it broke the protocol.
    HaveEnded {
        peer: PeerId,
        result: Result<(), RequestError>,
    },
}

/// How long trackers get to list a reachable peer before the DHT is asked too (at once if
/// every tracker failed).
pub const TRACKER_GRACE: Duration = Duration::from_secs(5);
/// How long one DHT provider lookup may take.
const DHT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How much longer the fetch waits for the node to end a lookup (it ends it at the timeout).
const DHT_LOOKUP_GRACE: Duration = Duration::from_secs(2);
/// Shortest time between two DHT provider lookups of one fetch.
const DHT_RETRY: Duration = Duration::from_secs(30);

/// Provider lookups in the DHT for one fetch: one at a time, at most one per [`DHT_RETRY`].
/// Providers that answer a dial go on the same `found` channel as tracker-listed peers, so
/// bootstrap and the main phase use them alike. A running lookup is aborted on drop.
struct DhtSearch {
    node: Node,
    id: BlobId,
    found: mpsc::Sender<PeerId>,
    last: Option<tokio::time::Instant>,
    running: Option<tokio::task::JoinHandle<String>>,
    /// What the last finished lookup gave, for error messages.
    outcome: Option<String>,
}

impl DhtSearch {
    fn new(node: &Node, id: BlobId, found: mpsc::Sender<PeerId>) -> Self {
        Self {
            node: node.clone(),
            id,
            found,
            last: None,
            running: None,
            outcome: None,
        }
    }

    /// Starts a lookup unless one runs, the DHT cannot be used, or the last one started less
    /// than [`DHT_RETRY`] ago. Returns whether a lookup is running now.
    fn start(&mut self) -> bool {
        if self.running.is_some() {
            return true;
        }
        let now = tokio::time::Instant::now();
        if !self.node.dht_usable() || self.last.is_some_and(|t| now < t + DHT_RETRY) {
            return false;
        }
        debug!(blob = %self.id, "looking up providers in the DHT");
        self.last = Some(now);
        self.running = Some(tokio::spawn(dht_lookup(
            self.node.clone(),
            self.id,
            self.found.clone(),
        )));
        true
    }

    fn running(&self) -> bool {
        self.running.is_some()
    }

    /// Waits for the running lookup to end; never returns if none runs (for `select!`).
    /// Cancel-safe.
    async fn done(&mut self) {
        let Some(handle) = self.running.as_mut() else {
            return std::future::pending().await;
        };
        let outcome = handle
            .await
            .unwrap_or_else(|e| format!("DHT: the lookup failed ({e})"));
        self.running = None;
        self.outcome = Some(outcome);
    }

    /// What the DHT gave, for error messages.
    fn describe(&self) -> String {
        if let Some(o) = &self.outcome {
            o.clone()
        } else if !self.node.config().dht {
            "DHT: off".into()
        } else if self.running.is_some() {
            "DHT: a provider lookup is still running".into()
        } else if !self.node.dht_usable() {
            "DHT: not asked (no bootstrap peer configured and no DHT peer known)".into()
        } else {
            "DHT: not asked".into()
        }
    }
}

impl Drop for DhtSearch {
    fn drop(&mut self) {
        if let Some(h) = &self.running {
            h.abort();
        }
    }
}

/// One provider lookup: each provider found that answers (the node dials them as they are
/// found) goes on `found` at once, without waiting for the others. Returns what happened,
/// for error messages.
async fn dht_lookup(node: Node, id: BlobId, found: mpsc::Sender<PeerId>) -> String {
    let mut providers = node.provider_stream(id, DHT_LOOKUP_TIMEOUT).await;
    let (mut seen, mut reached) = (0usize, 0usize);
    let _ = tokio::time::timeout(DHT_LOOKUP_TIMEOUT + DHT_LOOKUP_GRACE, async {
        while let Some(f) = providers.recv().await {
            seen += 1;
            if let Found::Reachable(peer, _) = f {
                reached += 1;
                let _ = found.try_send(peer);
            }
        }
    })
    .await;
    if seen == 0 {
        let known = node
            .stats()
            .dht_peers
            .load(std::sync::atomic::Ordering::Relaxed);
        return format!("DHT: no provider of this blob found ({known} DHT peer(s) known)");
    }
    info!(blob = %id, providers = seen, reached, "DHT providers found");
    format!("DHT: {seen} provider(s) found, {reached} reachable")
}

/// Waits for the first peer that trackers or the DHT find. The DHT is asked (unless it
/// already was) after [`TRACKER_GRACE`], or at once when every tracker failed or refused.
/// Gives up when every tracker failed (or there is none) and no lookup runs, or after
/// [`GIVE_UP_AFTER`].
async fn first_peer(
    found: &mut mpsc::Receiver<PeerId>,
    interest: &mut mpsc::Receiver<PeerId>,
    dht: &mut DhtSearch,
    announcer: Option<&Announcer>,
) -> Option<PeerId> {
    let start = tokio::time::Instant::now();
    let grace = start + TRACKER_GRACE;
    let deadline = start + GIVE_UP_AFTER;
    let mut outcomes = announcer.map(Announcer::outcomes);
    loop {
        // (every tracker failed, every tracker failed or refused for now)
        let (failed, out) = outcomes.as_mut().map_or((true, true), |o| {
            let o = o.borrow_and_update();
            (
                o.iter()
                    .all(|(_, x)| matches!(x, Outcome::Failed(_) | Outcome::TakenDown)),
                o.iter().all(|(_, x)| {
                    matches!(
                        x,
                        Outcome::Failed(_) | Outcome::Refused(_) | Outcome::TakenDown
                    )
                }),
            )
        });
        let now = tokio::time::Instant::now();
        if out || now >= grace {
            dht.start();
        }
        if failed && !dht.running() {
            return None;
        }
        tokio::select! {
            p = found.recv() => return p,
            // A downloader that found us (through a tracker) is as good a start.
            Some(p) = interest.recv() => return Some(p),
            () = dht.done() => {}
            changed = async {
                match outcomes.as_mut() {
                    Some(o) => o.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            } => {
                if !changed {
                    outcomes = None; // the announcer is gone: no tracker will answer
                }
            }
            () = tokio::time::sleep_until(grace), if now < grace => {}
            () = tokio::time::sleep_until(deadline) => return None,
        }
    }
}

/// First wait before asking busy peers again for the first blocks; doubles up to 2 s.
const BOOTSTRAP_BACKOFF: Duration = Duration::from_millis(100);
/// A peer that does not have the blob yet is asked again this many times for its have-map,
/// after this wait (doubling): 0.3 + 0.6 + 1.2 s covers a downloader's bootstrap.
const HAVE_RETRIES: u32 = 3;
const HAVE_RETRY: Duration = Duration::from_millis(300);
/// Peers found through trackers, queued for the fetch.
const FOUND_QUEUE: usize = 64;
/// The tracker hears about progress every this many blocks (at the next re-announce).
const ANNOUNCE_PROGRESS_EVERY: u32 = 64;

/// Where the main phase learns about peers.
struct Discovery<'a> {
    /// Connected at the start.
    peers: &'a [PeerId],
    /// Peers that subscribed to our have-map of this blob.
    interest: Interest,
    /// Peers trackers listed (dialled already).
    found: mpsc::Receiver<PeerId>,
    /// The announcer, told about progress.
    announcer: Option<&'a Announcer>,
    /// Provider lookups, asked again when no usable peer is left.
    dht: &'a mut DhtSearch,
}

/// Bound of the event queue from request tasks to the driver.
const EVENT_QUEUE: usize = 256;
/// With nothing in flight and no block arriving for this long, the peers left cannot help
/// (they lack the missing blocks): give up, keeping what was verified.
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// Runs the main phase: the sans-IO [`Scheduler`] decides which blocks to ask which peer
/// for; this loop carries out its actions (spawn, cancel, ban, drop) and feeds it what
/// happens: blocks, failures, and the peers' have-maps. Returns when the blob is complete,
/// no peer is left, or the writer stopped.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
async fn drive(
    node: &Node,
    id: BlobId,
    blob_len: u64,
    opts: &FetchOptions,
    discovery: Discovery<'_>,
    had: Vec<u32>,
    writer: mpsc::Sender<Verified>,
    progress: &watch::Sender<Progress>,
) -> Ended {
    let total = u32::try_from(block_count(blob_len)).expect("MAX_FILE_LEN keeps indices in u32");
    let per_request = opts.blocks_per_request.max(1);
    let config = schedule::Config {
        mode: if opts.sequential {
            Mode::Sequential
        } else {
            Mode::RarestFirst
        },
        max_blocks_per_request: per_request,
        min_in_flight_blocks: per_request.min(16),
        max_in_flight_blocks: per_request
            * u32::try_from(opts.requests_per_peer.max(1)).unwrap_or(u32::MAX),
        stall_timeout: node.config().request_timeout,
        seed: rand::random(),
        ..schedule::Config::default()
    };
    let mut sched = Scheduler::new(config, total, had);
    let limiter = opts.down_limit.map(|r| Arc::new(RateLimiter::new(r)));
    let (events_tx, mut events) = mpsc::channel::<Event>(EVENT_QUEUE);
    // Owned by this future: dropping the fetch (Ctrl-C, an app cancelling it) aborts every
    // request task with it, so nothing keeps downloading into the part file afterwards.
    let mut set = tokio::task::JoinSet::new();
    let mut tasks: HashMap<RequestId, tokio::task::AbortHandle> = HashMap::new();
    // Have-map subscriptions, and what each peer told us it holds.
    let mut watching: HashMap<PeerId, tokio::task::AbortHandle> = HashMap::new();
    let mut known: HashMap<PeerId, BlockSet> = HashMap::new();
    let mut again: std::collections::HashSet<PeerId> = std::collections::HashSet::new();
    let mut ended = Ended {
        banned: Vec::new(),
        gave_up: Vec::new(),
    };
    let mut last_error: HashMap<PeerId, String> = HashMap::new();
    let mut writer_gone = false;
    let mut last_block = tokio::time::Instant::now();
    let watch = |set: &mut tokio::task::JoinSet<()>,
                 watching: &mut HashMap<PeerId, tokio::task::AbortHandle>,
                 peer: PeerId| {
        if let std::collections::hash_map::Entry::Vacant(e) = watching.entry(peer) {
            debug!(peer = %peer, blob = %id, "subscribing to have-map");
            e.insert(set.spawn(watch_have(node.clone(), peer, id, total, events_tx.clone())));
        }
    };
    let Discovery {
        peers,
        mut interest,
        mut found,
        announcer,
        dht,
    } = discovery;
    for &p in peers {
        watch(&mut set, &mut watching, p);
    }
    let mut announced_at = 0u32;
    loop {
        while let Some(action) = sched.poll_action() {
            match action {
                Action::Request {
                    peer,
                    id: rid,
                    blocks,
                } => {
                    let req = BlobRequest { id, ranges: blocks };
                    let handle = set.spawn(request_task(
                        node.clone(),
                        peer,
                        rid,
                        req,
                        blob_len,
                        writer.clone(),
                        events_tx.clone(),
                        limiter.clone(),
                    ));
                    tasks.insert(rid, handle);
                }
                Action::Cancel { id: rid, .. } => {
                    if let Some(t) = tasks.remove(&rid) {
                        t.abort();
                    }
                }
                Action::Ban { peer } => {
                    let w = last_error
                        .remove(&peer)
                        .unwrap_or_else(|| "sent bad data".into());
                    warn!(peer = %peer, blob = %id, why = %w, "peer sent bad data; disconnected");
                    if let Some(h) = watching.remove(&peer) {
                        h.abort();
                    }
                    node.disconnect(peer).await;
                    ended.banned.push((peer, w));
                }
                Action::Drop { peer } => {
                    let w = last_error.remove(&peer).unwrap_or_else(|| "stalled".into());
                    debug!(peer = %peer, blob = %id, why = %w, "giving up on peer");
                    ended.gave_up.push(format!("{peer}: {w}"));
                }
            }
        }
        let usable = sched.peers().count();
        progress.send_if_modified(|p| std::mem::replace(&mut p.peers, usable) != usable);
        if sched.is_complete() || writer_gone {
            break;
        }
        if usable == 0 && tasks.is_empty() && watching.is_empty() {
            // Peers found meanwhile first: a lookup sends its providers before it ends, and
            // its end may be seen before them.
            while let Ok(peer) = found.try_recv() {
                if !ended.banned.iter().any(|(b, _)| *b == peer) {
                    watch(&mut set, &mut watching, peer);
                }
            }
            // No usable peer left: the DHT may know providers the trackers no longer list
            // (at most one lookup per DHT_RETRY); without one running, give up.
            if watching.is_empty() && !dht.start() {
                break;
            }
        }
        while set.try_join_next().is_some() {} // reap finished tasks
        let wake = sched.poll_timeout().map(tokio::time::Instant::from_std);
        let give_up = tasks.is_empty().then_some(last_block + GIVE_UP_AFTER);
        tokio::select! {
            event = events.recv() => {
                let now = tokio::time::Instant::now().into_std();
                match event.expect("the driver holds a sender") {
                    Event::Block { peer, id: rid, index } => {
                        last_block = tokio::time::Instant::now();
                        sched.handle_block(now, peer, rid, index);
                        let held = total - sched.missing();
                        if let Some(a) = announcer
                            && held >= announced_at + ANNOUNCE_PROGRESS_EVERY
                            && held < total
                        {
                            a.set(Status::leecher(held, total));
                            announced_at = held;
                        }
                    }
                    Event::Have { peer, ranges } => {
                        if !known.contains_key(&peer) && node.is_seed_node(&peer) {
                            sched.set_last_resort(peer);
                        }
                        let set = known.entry(peer).or_insert_with(|| BlockSet::new(total));
                        for r in &ranges {
                            set.insert_range(*r);
                        }
                        sched.handle_have_ranges(now, peer, &ranges);
                    }
                    Event::HaveEnded { peer, result } => {
                        debug!(peer = %peer, blob = %id, result = ?result.as_ref().err(), "have-map stream ended");
                        watching.remove(&peer);
                        if again.remove(&peer)
                            && matches!(result, Err(RequestError::Status(ResponseHeader::NotFound)))
                        {
                            watch(&mut set, &mut watching, peer);
                            continue;
                        }
                        let full = known.get(&peer).is_some_and(BlockSet::is_full);
                        match result {
                            Ok(()) if full => {} // said everything: it has the whole blob
                            Err(RequestError::Lied(w)) => {
                                warn!(peer = %peer, blob = %id, why = %w, "peer broke the have protocol; disconnected");
                                node.disconnect(peer).await;
                                sched.handle_peer_gone(now, peer);
                                ended.banned.push((peer, w));
                            }
                            Err(RequestError::Status(ResponseHeader::NotFound)) => {
                                ended.gave_up.push(format!("{peer}: does not have the blob"));
                                sched.handle_peer_gone(now, peer);
                            }
                            other => {
                                if let Err(e) = other {
                                    last_error.insert(peer, e.to_string());
                                }
                                // Gone or stopped serving; it may come back (it subscribes
                                // to us again, or a tracker lists it).
                                known.remove(&peer);
                                sched.handle_peer_gone(now, peer);
                            }
                        }
                    }
                    Event::Ended { peer, id: rid, result } => {
                        tasks.remove(&rid);
                        let why = match result {
                            Ok(()) => continue,
                            Err(RequestError::Stopped) => {
                                writer_gone = true;
                                continue;
                            }
                            Err(RequestError::Lied(w)) => {
                                last_error.insert(peer, format!("sent data that does not match the blob id ({w})"));
                                Failure::Lied
                            }
                            Err(RequestError::Status(ResponseHeader::NotFound)) => {
                                last_error.insert(peer, "answered NotFound".into());
                                Failure::NotFound
                            }
                            Err(RequestError::Status(ResponseHeader::Busy)) => Failure::Busy,
                            Err(e) => {
                                last_error.insert(peer, e.to_string());
                                Failure::Failed
                            }
                        };
                        sched.handle_failure(now, peer, rid, why);
                    }
                }
            }
            Some(peer) = interest.peers.recv() => {
                if !ended.banned.iter().any(|(b, _)| *b == peer) {
                    debug!(peer = %peer, blob = %id, "peer fetching the same blob found us");
                    if watching.contains_key(&peer) && !known.contains_key(&peer) {
                        // Our subscription may be about to hear "not found" from before the
                        // peer was ready: subscribe again when it ends.
                        again.insert(peer);
                    }
                    watch(&mut set, &mut watching, peer);
                }
            }
            Some(peer) = found.recv() => {
                if !ended.banned.iter().any(|(b, _)| *b == peer) {
                    debug!(peer = %peer, blob = %id, "a tracker or the DHT found a peer");
                    watch(&mut set, &mut watching, peer);
                }
            }
            () = dht.done() => {}
            () = async {
                match wake {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => sched.handle_timeout(tokio::time::Instant::now().into_std()),
            () = async {
                match give_up {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                ended.gave_up.push(format!(
                    "no peer delivered a block for {GIVE_UP_AFTER:?}: the peers left lack the missing blocks"
                ));
                break;
            }
        }
    }
    set.abort_all();
    ended
}

/// Subscribes to `peer`'s have-map of blob `id` and reports it to the driver until the
/// stream ends.
async fn watch_have(node: Node, peer: PeerId, id: BlobId, total: u32, events: mpsc::Sender<Event>) {
    // A peer that does not have the blob yet may be a downloader still bootstrapping (it
    // found us through a tracker or the link): ask again a few times before giving up on it.
    let mut wait = HAVE_RETRY;
    // A subscription closed before its first frame may have been dropped by a loaded peer
    // (see `RequestError::Unanswered`): ask again the same way.
    let mut result = subscribe_have(&node, peer, id, total, &events).await;
    for _ in 0..HAVE_RETRIES {
        if !matches!(
            result,
            Err(RequestError::Status(ResponseHeader::NotFound) | RequestError::Unanswered)
        ) {
            break;
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
        result = subscribe_have(&node, peer, id, total, &events).await;
    }
    let _ = events.send(Event::HaveEnded { peer, result }).await;
}

/// One have-map subscription, until the stream ends. A stream that ends before any frame
/// is [`RequestError::Unanswered`]: a peer holding blocks says so first, and one holding none
/// yet keeps the stream open until it has some.
async fn subscribe_have(
    node: &Node,
    peer: PeerId,
    id: BlobId,
    total: u32,
    events: &mpsc::Sender<Event>,
) -> Result<(), RequestError> {
    let mut heard = false;
    let result = read_have_map(node, peer, id, total, |ranges| {
        heard = true;
        async move { events.send(Event::Have { peer, ranges }).await.is_ok() }
    })
    .await;
    match result {
        Ok(()) if !heard => Err(RequestError::Unanswered),
        r => r,
    }
}

/// Subscribes to `peer`'s have-map of blob `id` (of `total` blocks) and hands each frame's
/// ranges to `on_have` until the stream ends (`Ok`), the peer misbehaves, or `on_have`
/// returns `false` (`Stopped`).
pub(crate) async fn read_have_map<F, Fut>(
    node: &Node,
    peer: PeerId,
    id: BlobId,
    total: u32,
    mut on_have: F,
) -> Result<(), RequestError>
where
    F: FnMut(Vec<BlockRange>) -> Fut,
    Fut: Future<Output = bool>,
{
    let timeout = node.config().request_timeout;
    let mut control = node.control();
    let subscribe = Subscribe { id }.encode();
    let mut stream = open(&mut control, peer, have_protocol(), &subscribe, timeout).await?;
    loop {
        // No timeout between frames: a peer with nothing new says nothing.
        let mut prefix = [0u8; 2];
        match stream.read_exact(&mut prefix).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(RequestError::Io(e)),
        }
        let len = HaveMsg::frame_len(prefix).map_err(|e| RequestError::Lied(e.to_string()))?;
        let mut body = vec![0u8; len];
        read_exact_timeout(&mut stream, &mut body, timeout).await?;
        match HaveMsg::decode(&body).map_err(|e| RequestError::Lied(e.to_string()))? {
            HaveMsg::NotFound => return Err(RequestError::Status(ResponseHeader::NotFound)),
            HaveMsg::Have { total: t, .. } if t != total => {
                return Err(RequestError::Lied(format!(
                    "have-map for {t} blocks, the blob has {total}"
                )));
            }
            HaveMsg::Have { ranges, .. } => {
                if !on_have(ranges).await {
                    return Err(RequestError::Stopped);
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)] // spawned from one place; a struct would only rename them
/// One request: stream the verified blocks to the writer and tell the driver about each.
async fn request_task(
    node: Node,
    peer: PeerId,
    rid: RequestId,
    req: BlobRequest,
    blob_len: u64,
    writer: mpsc::Sender<Verified>,
    events: mpsc::Sender<Event>,
    limiter: Option<Arc<RateLimiter>>,
) {
    let result = request(&node, peer, &req, blob_len, |v| {
        let index = v.index.0;
        let writer = writer.clone();
        let events = events.clone();
        let limiter = limiter.clone();
        async move {
            // Pausing here stops reading the stream: the transport's flow control slows the
            // sender down to the limit.
            if let Some(l) = limiter {
                l.acquire(v.data.len() as u64).await;
            }
            writer.send(v).await.map_err(|_| RequestError::Stopped)?;
            events
                .send(Event::Block {
                    peer,
                    id: rid,
                    index,
                })
                .await
                .map_err(|_| RequestError::Stopped)
        }
    })
    .await;
    let _ = events
        .send(Event::Ended {
            peer,
            id: rid,
            result,
        })
        .await;
}

/// Where the writer keeps what makes blocks servable to others: the sparse outboard file and
/// in-memory outboard (pairs), and the have-map that peers subscribe to.
struct Sparse<'a> {
    file: &'a File,
    path: &'a Path,
    source: &'a Source,
    held: &'a Held,
}

impl Sparse<'_> {
    /// Writes the pairs at `dirty` positions from memory to the sparse outboard file, in
    /// runs (positions less than 64 pairs apart go in one write: memory holds every pair the
    /// file does, so the pairs in between are rewritten unchanged), and clears `dirty`.
    fn flush_pairs(&self, dirty: &mut Vec<u64>) -> io::Result<()> {
        if dirty.is_empty() {
            return Ok(());
        }
        dirty.sort_unstable();
        dirty.dedup();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for &p in dirty.iter() {
            match runs.last_mut() {
                Some((_, end)) if p < *end + 64 => *end = p + 1,
                _ => runs.push((p, p + 1)),
            }
        }
        dirty.clear();
        let pair = PARENT_LEN as u64;
        for (start, end) in runs {
            let bytes = {
                let outboard = self.source.outboard();
                let from = usize::try_from(start * pair).expect("outboard fits in memory");
                let to = usize::try_from(end * pair).expect("outboard fits in memory");
                outboard.as_bytes()[from..to].to_vec()
            };
            write_all_at(self.file, &bytes, start * pair)?;
        }
        Ok(())
    }
}

/// Opens (or creates) the sparse outboard of a download: the pairs of an earlier run if the
/// file has the right size, else all zeros (blocks resumed without their pairs are fetched
/// fine but not served until the download completes). The flag says whether the earlier
/// pairs were kept.
pub(crate) fn open_sparse_outboard(
    path: &Path,
    id: BlobId,
    blob_len: u64,
) -> Result<(File, Outboard, bool), FetchError> {
    let disk = |source| FetchError::Disk {
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(disk)?;
    let size = Outboard::size_for(blob_len);
    if file.metadata().map_err(disk)?.len() == size {
        let mut pairs = vec![0u8; usize::try_from(size).expect("outboard fits in memory")];
        read_exact_at(&file, &mut pairs, 0).map_err(disk)?;
        let outboard = Outboard::from_parts(id, blob_len, pairs).expect("size checked");
        return Ok((file, outboard, true));
    }
    file.set_len(0).map_err(disk)?;
    file.set_len(size).map_err(disk)?;
    Ok((file, Outboard::partial(id, blob_len), false))
}

/// Keeps a download-in-progress source in the node's store for the life of the fetch: it
/// is removed when the fetch ends without completing (a completed one is replaced by the
/// whole file).
struct ServingGuard {
    store: Arc<Store>,
    id: BlobId,
}

impl ServingGuard {
    fn register(node: &Node, source: &Arc<Source>) -> Option<Self> {
        let store = node.store().clone();
        // Already serving the whole blob (shared or seeded here): leave that in place.
        if store.get(&source.id()).is_some_and(|s| s.held().is_none()) {
            return None;
        }
        store.insert_arc(source.clone());
        Some(Self {
            store,
            id: source.id(),
        })
    }
}

impl Drop for ServingGuard {
    fn drop(&mut self) {
        if self.store.get(&self.id).is_some_and(|s| s.held().is_some()) {
            self.store.remove(&self.id);
        }
    }
}

#[allow(clippy::too_many_arguments)] // one call site; grouping would only rename them
/// The writer: decrypts verified blocks, writes them at their file offsets, and checkpoints
/// (sync data, then save the have-map). Runs on a blocking thread.
fn write_blocks(
    mut rx: mpsc::Receiver<Verified>,
    opener: &Opener,
    part: &File,
    part_path: &Path,
    sparse: Sparse<'_>,
    state_path: &Path,
    mut state: State,
    progress: &watch::Sender<Progress>,
) -> Result<State, FetchError> {
    let disk = |path: &Path| {
        let path = path.to_owned();
        move |source| FetchError::Disk { path, source }
    };
    // Blocks written since the last checkpoint: durable only after the next sync.
    let mut pending: Vec<u64> = Vec::new();
    // A sync running on a helper thread, and the blocks written before it began: they are
    // recorded once it completes. Writing goes on meanwhile, so the pipeline never stalls
    // on `fdatasync`, and the state still only claims blocks that a finished sync covered.
    let mut syncing: Option<(std::thread::JoinHandle<io::Result<()>>, Vec<u64>)> = None;
    let mut last_checkpoint = Instant::now();
    let finish_sync =
        |state: &mut State,
         syncing: &mut Option<(std::thread::JoinHandle<io::Result<()>>, Vec<u64>)>|
         -> Result<(), FetchError> {
            let Some((handle, blocks)) = syncing.take() else {
                return Ok(());
            };
            handle
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("sync thread panicked")))
                .map_err(disk(part_path))?;
            for p in blocks {
                state.set(p);
            }
            state.save().map_err(disk(state_path))
        };
    let checkpoint = |state: &mut State, pending: &mut Vec<u64>| -> Result<(), FetchError> {
        part.sync_data().map_err(disk(part_path))?;
        sparse.file.sync_data().map_err(disk(sparse.path))?;
        for p in pending.drain(..) {
            state.set(p);
        }
        state.save().map_err(disk(state_path))
    };
    let mut result = Ok(());
    let mut unpublished = 0u64;
    // Positions of pairs learnt since the last flush to the sparse outboard file.
    let mut dirty: Vec<u64> = Vec::new();
    while let Some(Verified {
        index,
        mut data,
        parents,
    }) = rx.blocking_recv()
    {
        let i = u64::from(index.0);
        if state.has(i)
            || pending.contains(&i)
            || syncing.as_ref().is_some_and(|(_, b)| b.contains(&i))
        {
            continue;
        }
        // The pairs above the block first: it is announced as held only once it can be
        // served. They reach the sparse outboard file before the next sync (`flush_pairs`).
        if !parents.is_empty() {
            sparse.source.set_pairs(&parents);
            dirty.extend(parents.iter().map(|(position, _)| *position));
        }
        let Ok(range) = opener.open_segment(i, &mut data) else {
            result = Err(FetchError::Undecryptable {
                id: state.id,
                block: index,
            });
            break;
        };
        let (file_off, _) = opener.layout().file_offset(i);
        let written = write_all_at(part, &data[range], file_off);
        buffers::put(data);
        if let Err(e) = written {
            result = Err(disk(part_path)(e));
            break;
        }
        pending.push(i);
        sparse.held.insert(index.0);
        if pending.len() as u64 >= CHECKPOINT_BLOCKS
            || last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL
        {
            // The previous sync had a whole interval to finish; record it, start the next.
            if let Err(e) = finish_sync(&mut state, &mut syncing) {
                result = Err(e);
                break;
            }
            if let Err(e) = sparse.flush_pairs(&mut dirty) {
                result = Err(disk(sparse.path)(e));
                break;
            }
            match (part.try_clone(), sparse.file.try_clone()) {
                (Ok(f), Ok(ob)) => {
                    syncing = Some((
                        std::thread::spawn(move || {
                            f.sync_data()?;
                            ob.sync_data()
                        }),
                        std::mem::take(&mut pending),
                    ));
                }
                (Err(e), _) | (_, Err(e)) => {
                    result = Err(disk(part_path)(e));
                    break;
                }
            }
            last_checkpoint = Instant::now();
        }
        // Publish every PROGRESS_EVERY blocks, not every block: each update wakes the
        // watcher on the network thread.
        unpublished += 1;
        if unpublished == PROGRESS_EVERY {
            progress.send_modify(|p| p.done_blocks += unpublished);
            unpublished = 0;
        }
    }
    progress.send_modify(|p| p.done_blocks += unpublished);
    // Keep every block that was written before a failure: nothing verified is lost. If this
    // checkpoint fails too (the disk is really full), the first error is the one to report.
    let saved = finish_sync(&mut state, &mut syncing)
        .and_then(|()| sparse.flush_pairs(&mut dirty).map_err(disk(sparse.path)))
        .and_then(|()| checkpoint(&mut state, &mut pending));
    result?;
    saved?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_rejects_other_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let id = BlobId::from_bytes([1; 32]);
        let len = Layout::for_file(1_000_000).unwrap().blob_len();
        let path = dir.path().join("s");
        let mut s = State::new(path.clone(), id, len);
        s.header = Some([7; HEADER_LEN]);
        s.set(0);
        s.set(9);
        s.save().unwrap();
        let l = State::load(path.clone(), id, Some(len)).unwrap();
        assert_eq!((l.count(), l.has(9), l.has(8)), (2, true, false));
        assert_eq!(l.header, Some([7; HEADER_LEN]));
        assert!(State::load(path.clone(), BlobId::from_bytes([2; 32]), None).is_none());
        assert!(State::load(path.clone(), id, Some(len + 16)).is_none());
        fs::write(&path, b"SHOALDL1 truncated").unwrap();
        assert!(State::load(path, id, None).is_none());
    }
}
