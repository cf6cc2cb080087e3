//! Bootstrapping a download: before any block of the body is asked for, learn and
//! authenticate the blob's size (from the link, the saved state, or a peer's claim proved by
//! verifying the last block at that size) and open segment 0, which proves the key and holds
//! the header. A resumed download rebuilds the opener from the saved header instead.

use std::{
    collections::{HashSet, VecDeque},
    time::{Duration, Instant},
};

use futures::{StreamExt, stream::FuturesUnordered};

use libp2p::PeerId;
use shoal_protocol::{
    BlobId, Link,
    blob::block_count,
    format::{HEADER_LEN, HeaderError, Layout, OpenBlobError, Opener},
    wire::{BlobRequest, ResponseHeader},
};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::{
    error::FetchError,
    options::Progress,
    part::PartFiles,
    peers::{Arrival, Patience, Sources, sleep_until},
};
use crate::{
    node::Node,
    partial::State,
    wire::{Client, Pair, RequestError},
};

/// The blob as bootstrapping, or the state saved by an earlier run, opened it.
pub(super) struct Opened {
    /// Which blocks are verified and written; the header is in it.
    pub(super) state: State,
    /// Blocks an earlier run had verified.
    pub(super) resumed: u64,
    pub(super) opener: Opener,
    /// When bootstrapping just fetched them: block 0's plaintext, the last block (sealed),
    /// and the parent pairs verified on the way.
    pub(super) body0: Option<Vec<u8>>,
    pub(super) last: Option<(u64, Vec<u8>)>,
    pub(super) parents: Vec<Pair>,
}

/// Opens the blob of `link`: from the state an earlier run of this fetch saved in `files`,
/// or by bootstrapping from `peers` ([`first_blocks`]; liars go on `banned`, and are taken
/// out of `peers`).
///
/// # Errors
/// [`FetchError::Exhausted`] when no peer delivered the first blocks (`why` says what each
/// answered), and those of [`open_blob`].
#[allow(clippy::too_many_arguments)] // one call site; the lists are the fetch's own
pub(super) async fn open(
    node: &Node,
    link: &Link,
    files: &PartFiles,
    peers: &mut Vec<PeerId>,
    sources: &mut Sources,
    patience: &mut Patience,
    progress: &watch::Sender<Progress>,
    banned: &mut Vec<(PeerId, String)>,
    why: &mut Vec<String>,
) -> Result<Opened, FetchError> {
    let id = link.id;
    let mut state = files.load_state(id, link.blob_len);
    let resumed = state.as_ref().map_or(0, State::count);
    let mut boot = None;
    if state.as_ref().is_none_or(|s| s.header.is_none()) {
        // A size saved by an earlier run was proven then; the link's may be damaged.
        let trusted = match (state.as_ref(), link.blob_len) {
            (Some(s), _) => Size::Proven(s.blob_len),
            (None, Some(l)) => Size::Linked(l),
            (None, None) => Size::Unknown,
        };
        let got = first_blocks(
            node, id, trusted, peers, sources, patience, progress, banned, why,
        )
        .await?;
        let Some(got) = got else {
            why.extend(banned.iter().map(|(p, w)| format!("{p}: {w}")));
            why.extend(sources.describe(&patience.describe()));
            return Err(FetchError::Exhausted {
                done: 0,
                total: link.blob_len.map_or(0, block_count),
                why: std::mem::take(why),
            });
        };
        if state.as_ref().is_none_or(|s| s.blob_len != got.blob_len) {
            state = Some(files.new_state(id, got.blob_len));
        }
        boot = Some(got);
    }
    // A peer caught lying is never asked again for this blob.
    peers.retain(|p| !banned.iter().any(|(b, _)| b == p));
    let mut state = state.expect("set above");
    let (block0, last, parents) = match boot {
        Some(b) => (Some(b.block0), b.last, b.parents),
        None => (None, None, Vec::new()),
    };
    let (opener, body0) = open_blob(link, block0, &mut state)?;
    Ok(Opened {
        state,
        resumed,
        opener,
        body0,
        last,
        parents,
    })
}

/// What a fetch knows of the blob's size before bootstrapping.
#[derive(Clone, Copy, Debug)]
enum Size {
    /// Nothing: learn a peer's claim and prove it.
    Unknown,
    /// The link's `sz` hint: a peer answering with another size is a liar, unless it
    /// proves its size (then the link is damaged).
    Linked(u64),
    /// Proven by an earlier run of this fetch.
    Proven(u64),
}

/// Why bootstrapping from one peer failed.
enum BootError {
    Request(RequestError),
    /// The peer proved the blob is `blob_len` bytes: not the link's size.
    LinkSize {
        link: u64,
        blob: u64,
    },
}

impl From<RequestError> for BootError {
    fn from(e: RequestError) -> Self {
        Self::Request(e)
    }
}

/// First wait before asking busy peers again for the first blocks; doubles up to 2 s.
const BOOTSTRAP_BACKOFF: Duration = Duration::from_millis(100);
/// A peer that has not delivered the first blocks this long after it was asked does not
/// hold the others up: the next peer is asked beside it (a hedged request). A peer that
/// answers at all does so well within this, even on a slow uplink (two blocks, 128 KiB).
const BOOTSTRAP_HEDGE: Duration = Duration::from_secs(1);
/// Most peers asked for the first blocks at once.
const BOOTSTRAP_PARALLEL: usize = 4;

/// What bootstrapping learnt: the authenticated blob size, sealed block 0, and the parent
/// pairs verified on the way.
struct Boot {
    blob_len: u64,
    block0: Vec<u8>,
    /// The last block (sealed), when the blob has more than one.
    last: Option<(u64, Vec<u8>)>,
    parents: Vec<Pair>,
}

/// The peers bootstrapping asks, in order, and those it asks again after a back-off.
struct Queue {
    /// To ask as soon as there is room.
    now: VecDeque<PeerId>,
    /// To ask again once `again_at` has passed.
    again: Vec<PeerId>,
    again_at: Option<tokio::time::Instant>,
    backoff: Duration,
    /// Answered "not found": asked again once another peer showed it has the blob.
    not_found: Vec<PeerId>,
    /// Being asked now.
    asking: HashSet<PeerId>,
}

impl Queue {
    fn new(peers: &[PeerId]) -> Self {
        Self {
            now: peers.iter().copied().collect(),
            again: Vec::new(),
            again_at: None,
            backoff: BOOTSTRAP_BACKOFF,
            not_found: Vec::new(),
            asking: HashSet::new(),
        }
    }

    /// Whether `peer` is asked now or waits its turn.
    fn holds(&self, peer: PeerId) -> bool {
        self.asking.contains(&peer) || self.now.contains(&peer) || self.again.contains(&peer)
    }

    /// A peer from the sources joins the queue (or, gone, leaves the list).
    fn take(&mut self, a: Arrival, peers: &mut Vec<PeerId>, banned: &[(PeerId, String)]) {
        let p = a.peer();
        if matches!(a, Arrival::Gone(_)) {
            peers.retain(|q| *q != p);
        } else if !self.holds(p) && !banned.iter().any(|(b, _)| *b == p) {
            self.now.push_back(p);
            if !peers.contains(&p) {
                peers.push(p);
            }
        }
    }

    /// `peer` is asked again after the back-off, which doubles (up to 2 s) each time.
    fn later(&mut self, peer: PeerId) {
        if !self.again.contains(&peer) {
            self.again.push(peer);
        }
        if self.again_at.is_none() {
            self.again_at = Some(tokio::time::Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// The back-off is over: the peers waiting it out are asked again.
    fn wake(&mut self) {
        self.again_at = None;
        for p in std::mem::take(&mut self.again) {
            if !self.now.contains(&p) && !self.asking.contains(&p) {
                self.now.push_back(p);
            }
        }
    }

    /// Whether nobody is asked, nor waits to be.
    fn is_empty(&self) -> bool {
        self.asking.is_empty() && self.now.is_empty() && self.again.is_empty()
    }
}

/// Asks `peers` (and those the sources give meanwhile) for the first blocks until one
/// delivers them; the size is `trusted_len` if known. One peer at a time, but a peer that
/// has not delivered within [`BOOTSTRAP_HEDGE`] (frozen, or overloaded) does not hold the
/// others up: the next is asked beside it, up to [`BOOTSTRAP_PARALLEL`]. Peers that are
/// busy (upload slots full in a flash crowd), lack the first blocks (partial) or fail in
/// transit are asked again with back-off; a peer whose connection broke is handed back to
/// the sources, which dial it again; liars go on `banned` and are not asked again. With
/// trackers, a peer that does not have the blob yet is asked again too (a tracker lists
/// downloaders that are just starting). Gives up (`None`) when nobody delivered within
/// `patience`; `why` then says what each peer last answered.
///
/// # Errors
/// [`FetchError::LinkSizeMismatch`] as soon as a peer proves the link's size wrong.
#[allow(clippy::too_many_arguments)] // one call site; the lists are the fetch's own
async fn first_blocks(
    node: &Node,
    id: BlobId,
    size: Size,
    peers: &mut Vec<PeerId>,
    sources: &mut Sources,
    patience: &mut Patience,
    progress: &watch::Sender<Progress>,
    banned: &mut Vec<(PeerId, String)>,
    why: &mut Vec<String>,
) -> Result<Option<Boot>, FetchError> {
    let started = Instant::now();
    let tracked = sources.announcer.is_some();
    let mut queue = Queue::new(peers);
    let mut asking = FuturesUnordered::new();
    let mut hedge_at: Option<tokio::time::Instant> = None;
    // What each peer last answered, in the order they were first asked.
    let mut answers: Vec<(PeerId, String)> = Vec::new();
    patience.wait(tokio::time::Instant::now());
    loop {
        while let Some(a) = sources.try_next() {
            queue.take(a, peers, banned);
        }
        let now = tokio::time::Instant::now();
        // Ask the next peer when nobody is being asked, or the last one asked is slow.
        if asking.len() < BOOTSTRAP_PARALLEL
            && (asking.is_empty() || hedge_at.is_some_and(|t| t <= now))
            && let Some(peer) = queue.now.pop_front()
        {
            queue.asking.insert(peer);
            hedge_at = Some(now + BOOTSTRAP_HEDGE);
            asking.push(async move { (peer, bootstrap(node, peer, id, size).await) });
            continue;
        }
        if queue.is_empty() {
            // Nobody left to ask: the sources re-dial, trackers may list more peers, and the
            // DHT may know some.
            patience.show(progress);
            sources.want_peers();
        }
        let hedge = hedge_at.filter(|_| !queue.now.is_empty() && asking.len() < BOOTSTRAP_PARALLEL);
        let idle = asking.is_empty();
        tokio::select! {
            Some((peer, result)) = asking.next() => {
                queue.asking.remove(&peer);
                let e = match result {
                    Ok(boot) => {
                        debug!(blob = %id, peer = %peer, after = ?started.elapsed(), "bootstrapped");
                        patience.stop();
                        patience.show(progress);
                        return Ok(Some(boot));
                    }
                    Err(BootError::LinkSize { link, blob }) => {
                        return Err(FetchError::LinkSizeMismatch { link, blob });
                    }
                    Err(BootError::Request(e)) => e,
                };
                on_failure(node, peer, id, e, tracked, &mut queue, sources, banned, &mut answers)
                    .await;
            }
            a = sources.next() => queue.take(a, peers, banned),
            () = sleep_until(queue.again_at) => queue.wake(),
            () = sleep_until(hedge) => {}
            () = sleep_until(patience.deadline()), if idle => {
                *why = answers.into_iter().map(|(_, w)| w).collect();
                return Ok(None);
            }
        }
    }
}

/// Bootstrapping from `peer` failed with `e`: a liar is banned and disconnected, a peer
/// that may deliver later is queued again, a broken connection goes back to the sources;
/// `answers` keeps what each peer last said.
#[allow(clippy::too_many_arguments)] // one call site: the state of `first_blocks`
async fn on_failure(
    node: &Node,
    peer: PeerId,
    id: BlobId,
    e: RequestError,
    tracked: bool,
    queue: &mut Queue,
    sources: &mut Sources,
    banned: &mut Vec<(PeerId, String)>,
    answers: &mut Vec<(PeerId, String)>,
) {
    if let RequestError::Lied(w) = e {
        warn!(peer = %peer, blob = %id, why = %w, "peer sent bad data; disconnected");
        answers.retain(|(p, _)| *p != peer);
        node.disconnect(peer).await;
        sources.ban(peer);
        banned.push((peer, w));
        return;
    }
    debug!(blob = %id, peer = %peer, error = %e, "bootstrap attempt failed");
    match &e {
        RequestError::Status(ResponseHeader::NotFound) if tracked => queue.later(peer),
        RequestError::Status(ResponseHeader::NotFound) => queue.not_found.push(peer),
        RequestError::Status(ResponseHeader::Busy | ResponseHeader::Missing)
        | RequestError::Unanswered
        | RequestError::Timeout => {
            // Someone has the blob (busy or partial): the peers that did not have it yet
            // are likely downloaders just starting, worth asking again.
            queue.later(peer);
            for p in std::mem::take(&mut queue.not_found) {
                queue.later(p);
            }
        }
        // The connection broke: the sources dial it again and hand it back.
        RequestError::Io(_) => sources.lost(peer),
        _ => {}
    }
    let answer = format!("{peer}: {e}");
    match answers.iter_mut().find(|(p, _)| *p == peer) {
        Some((_, w)) => *w = answer,
        None => answers.push((peer, answer)),
    }
}

/// Fetches block 0 and the last block from `peer`, which proves the blob's size: the one
/// `size` gives, or the size the peer claims.
async fn bootstrap(node: &Node, peer: PeerId, id: BlobId, size: Size) -> Result<Boot, BootError> {
    let client = node.client();
    let blob_len = match size {
        Size::Linked(l) | Size::Proven(l) => l,
        // Learn the claimed size, then prove it by verifying the last block.
        Size::Unknown => client.claimed_len(peer, id).await?,
    };
    match first_and_last(&client, peer, id, blob_len).await {
        // The peer says the blob has another size than the link's: if it proves that size
        // too, the link is wrong, not the peer.
        Err(RequestError::WrongSize { claimed, expected }) if matches!(size, Size::Linked(_)) => {
            match first_and_last(&client, peer, id, claimed).await {
                Ok(_) => Err(BootError::LinkSize {
                    link: expected,
                    blob: claimed,
                }),
                Err(RequestError::WrongSize { claimed, .. }) => Err(BootError::Request(
                    RequestError::Lied(format!("claimed two sizes, the last {claimed}")),
                )),
                Err(e) => Err(e.into()),
            }
        }
        Err(RequestError::WrongSize { claimed, expected }) => Err(BootError::Request(
            RequestError::Lied(format!("claimed size {claimed}, proven {expected}")),
        )),
        r => Ok(r?),
    }
}

/// Fetches block 0 and the last block of a blob of `blob_len` bytes from `peer`, verified.
async fn first_and_last(
    client: &Client,
    peer: PeerId,
    id: BlobId,
    blob_len: u64,
) -> Result<Boot, RequestError> {
    Layout::for_blob(blob_len).map_err(|e| RequestError::Lied(e.to_string()))?;
    let last = u32::try_from(block_count(blob_len) - 1)
        .map_err(|_| RequestError::Lied("size out of range".into()))?;
    let req = BlobRequest::new(id, [0, last]).expect("at most two ranges");
    let mut block0 = None;
    let mut last_block = None;
    let mut parents = Vec::new();
    client
        .request(peer, &req, blob_len, |v| {
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

/// The opener of the blob, and block 0's plaintext when bootstrapping just fetched it:
/// opens `block0` (sealed; a fresh download: its header goes into `state`) or rebuilds the
/// opener from the header `state` saved (a resume).
///
/// # Errors
/// [`FetchError::WrongKey`] when the link's key does not open the blob,
/// [`FetchError::BadBlob`] when it is not a valid Shoal blob.
fn open_blob(
    link: &Link,
    block0: Option<Vec<u8>>,
    state: &mut State,
) -> Result<(Opener, Option<Vec<u8>>), FetchError> {
    let id = link.id;
    let blob_len = state.blob_len;
    match block0 {
        Some(mut block0) => {
            let (opener, body) =
                Opener::new(&link.key, blob_len, &mut block0).map_err(|e| match e {
                    OpenBlobError::WrongKey => FetchError::WrongKey { id },
                    source => FetchError::BadBlob { id, source },
                })?;
            let mut header = [0u8; HEADER_LEN];
            header.copy_from_slice(&block0[..HEADER_LEN]);
            state.header = Some(header);
            Ok((opener, Some(block0[body].to_vec())))
        }
        None => {
            let header = state.header.expect("resume requires a saved header");
            let opener =
                Opener::from_header(&link.key, blob_len, &header).map_err(|e| match e {
                    OpenBlobError::Header(HeaderError::CommitmentMismatch) => {
                        FetchError::WrongKey { id }
                    }
                    source => FetchError::BadBlob { id, source },
                })?;
            Ok((opener, None))
        }
    }
}
