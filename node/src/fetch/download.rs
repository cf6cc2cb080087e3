//! The download loop: between the sans-IO [`Scheduler`], which decides which blocks to ask
//! which peer for, and the network. It carries out the scheduler's actions (start a request
//! task, cancel, ban, drop) and feeds it what happens: blocks verified, requests failed, and
//! the peers' have-maps (a subscription per peer, reporting each addition). Verified blocks
//! go to the writer ([`super::writer`]); new peers come from the [`Sources`].

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    sync::Arc,
    time::Duration,
};

use libp2p::PeerId;
use shoal_protocol::{
    BlobId,
    blob::{BlockIndex, BlockRange, block_count, block_len},
    have::BlockSet,
    schedule::{self, Action, Failure, Mode, RequestId, Scheduler},
    wire::{BlobRequest, ResponseHeader},
};
use tokio::{
    sync::{mpsc, watch},
    task::{AbortHandle, JoinSet},
};
use tracing::{debug, warn};

use super::{
    options::{FetchOptions, Progress, SourceCount},
    peers::{Arrival, Patience, Sources, sleep_until},
};
use crate::{
    announce::Status,
    node::Node,
    rate::RateLimiter,
    wire::{Client, RequestError, Verified},
};

/// A peer that does not have the blob yet is asked again this many times for its have-map,
/// after this wait (doubling): 0.3 + 0.6 + 1.2 s covers a downloader's bootstrap.
const HAVE_RETRIES: u32 = 3;
const HAVE_RETRY: Duration = Duration::from_millis(300);
/// The tracker hears about progress every this many blocks (at the next re-announce).
const ANNOUNCE_PROGRESS_EVERY: u32 = 64;
/// How often [`Download::trace`] logs the pipelines (debug level).
const TRACE_EVERY: Duration = Duration::from_secs(1);
/// Bound of the event queue from request tasks to the driver.
const EVENT_QUEUE: usize = 256;

/// What happened to the peers during the download loop.
pub(super) struct Ended {
    /// Peers dropped for sending bad data, with the reason.
    pub(super) banned: Vec<(PeerId, String)>,
    /// Peers given up on, and why.
    pub(super) gave_up: Vec<String>,
    /// Blocks each peer delivered.
    pub(super) sources: HashMap<PeerId, SourceCount>,
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

/// Runs the download loop from the connected `peers` until the blob is complete, the writer
/// stopped, or no request was in flight for `patience` (the peers left lack the missing
/// blocks, or none is left, and none came back or joined meanwhile). `had` are the blocks
/// already written.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
pub(super) async fn run(
    node: &Node,
    id: BlobId,
    blob_len: u64,
    opts: &FetchOptions,
    peers: &[PeerId],
    sources: &mut Sources,
    had: Vec<u32>,
    writer: mpsc::Sender<Verified>,
    progress: &watch::Sender<Progress>,
) -> Ended {
    let mut d = Download::new(node, id, blob_len, opts, had, writer);
    let mut patience = Patience::new(opts.patience);
    for &p in peers {
        d.watch(p);
    }
    loop {
        d.carry_out_actions(sources).await;
        let usable = d.sched.peers().count();
        if d.sched.is_complete() || d.writer_gone {
            break;
        }
        let now = tokio::time::Instant::now();
        if d.tasks.is_empty() {
            // Nothing in flight: the peers connected lack the missing blocks, or none is left.
            patience.wait(now);
            if usable == 0 {
                sources.want_peers();
            }
        } else {
            patience.stop();
        }
        progress.send_if_modified(|p| std::mem::replace(&mut p.peers, usable) != usable);
        patience.show(progress);
        if patience.exhausted(now) {
            d.ended.gave_up.push(format!(
                "no request could be made for {}: no peer reachable has the missing blocks",
                patience.describe()
            ));
            break;
        }
        while d.set.try_join_next().is_some() {} // reap finished tasks
        d.trace(now);
        let wake = d.sched.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            event = d.events.recv() => {
                let event = event.expect("the driver holds a sender");
                d.on_event(event, sources).await;
            }
            arrival = sources.next() => d.on_arrival(arrival),
            () = sleep_until(wake) => d.sched.handle_timeout(tokio::time::Instant::now().into_std()),
            () = sleep_until(patience.deadline()) => {}
        }
    }
    d.set.abort_all();
    d.ended
}

/// The download loop's state.
struct Download {
    node: Node,
    client: Client,
    id: BlobId,
    blob_len: u64,
    total: u32,
    sched: Scheduler<PeerId>,
    limiter: Option<Arc<RateLimiter>>,
    writer: mpsc::Sender<Verified>,
    events_tx: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    /// Owned by the fetch's future: dropping the fetch (Ctrl-C, an app cancelling it) aborts
    /// every request task with it, so nothing keeps downloading into the part file
    /// afterwards.
    set: JoinSet<()>,
    tasks: HashMap<RequestId, AbortHandle>,
    /// Have-map subscriptions, and what each peer told us it holds.
    watching: HashMap<PeerId, AbortHandle>,
    known: HashMap<PeerId, BlockSet>,
    /// Peers to subscribe to again when their subscription ends "not found" (they found us
    /// while our subscription may have been answered before they were ready).
    again: HashSet<PeerId>,
    /// Peers that only connected to us: "not found" from them is no news.
    contacts: HashSet<PeerId>,
    ended: Ended,
    last_error: HashMap<PeerId, String>,
    writer_gone: bool,
    last_block: tokio::time::Instant,
    announced_at: u32,
    /// When [`Download::trace`] last logged the pipelines.
    traced: tokio::time::Instant,
}

impl Download {
    fn new(
        node: &Node,
        id: BlobId,
        blob_len: u64,
        opts: &FetchOptions,
        had: Vec<u32>,
        writer: mpsc::Sender<Verified>,
    ) -> Self {
        let total =
            u32::try_from(block_count(blob_len)).expect("MAX_FILE_LEN keeps indices in u32");
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
        let (events_tx, events) = mpsc::channel::<Event>(EVENT_QUEUE);
        Self {
            node: node.clone(),
            client: node.client(),
            id,
            blob_len,
            total,
            sched: Scheduler::new(config, total, had),
            limiter: opts
                .down_limit
                .filter(|&r| r > 0)
                .map(|r| Arc::new(RateLimiter::new(r))),
            writer,
            events_tx,
            events,
            set: JoinSet::new(),
            tasks: HashMap::new(),
            watching: HashMap::new(),
            known: HashMap::new(),
            again: HashSet::new(),
            contacts: HashSet::new(),
            ended: Ended {
                banned: Vec::new(),
                gave_up: Vec::new(),
                sources: HashMap::new(),
            },
            last_error: HashMap::new(),
            writer_gone: false,
            last_block: tokio::time::Instant::now(),
            announced_at: 0,
            traced: tokio::time::Instant::now(),
        }
    }

    /// Logs, at most once a [`TRACE_EVERY`] and at debug level, what is missing and each
    /// peer's pipeline (blocks in flight, measured rate): where a download's time goes.
    fn trace(&mut self, now: tokio::time::Instant) {
        if now < self.traced + TRACE_EVERY || !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        self.traced = now;
        let mut pipes: Vec<String> = self
            .sched
            .peers()
            .map(|p| {
                let s = p.to_string();
                let short = &s[s.len().saturating_sub(4)..];
                format!(
                    "{short}:{}@{:.0}K",
                    self.sched.in_flight(p),
                    self.sched.rate(p) / 1024.0
                )
            })
            .collect();
        pipes.sort();
        debug!(
            blob = %self.id,
            missing = self.sched.missing(),
            endgame = self.sched.in_endgame(),
            pipelines = %pipes.join(" "),
            "pipelines"
        );
    }

    /// Counts a block from `peer`, and whether it came through a relay (then it also counts
    /// in the node's `relayed_bytes`).
    fn count_source(&mut self, peer: PeerId, index: u32) {
        let relayed = self.node.only_relayed(&peer);
        let c = self.ended.sources.entry(peer).or_insert(SourceCount {
            peer,
            blocks: 0,
            relayed_blocks: 0,
        });
        c.blocks += 1;
        if relayed {
            c.relayed_blocks += 1;
            self.node.stats().relayed_bytes.fetch_add(
                block_len(self.blob_len, BlockIndex(index)) as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    fn is_banned(&self, peer: PeerId) -> bool {
        self.ended.banned.iter().any(|(b, _)| *b == peer)
    }

    /// Subscribes to `peer`'s have-map, unless already subscribed.
    fn watch(&mut self, peer: PeerId) {
        if let Entry::Vacant(e) = self.watching.entry(peer) {
            debug!(peer = %peer, blob = %self.id, "subscribing to have-map");
            e.insert(self.set.spawn(watch_have(
                self.client.clone(),
                peer,
                self.id,
                self.total,
                self.events_tx.clone(),
            )));
        }
    }

    /// Carries out every action the scheduler has.
    async fn carry_out_actions(&mut self, sources: &mut Sources) {
        while let Some(action) = self.sched.poll_action() {
            match action {
                Action::Request {
                    peer,
                    id: rid,
                    blocks,
                } => {
                    let req = BlobRequest {
                        id: self.id,
                        ranges: blocks,
                    };
                    let handle = self.set.spawn(request_task(
                        self.client.clone(),
                        peer,
                        rid,
                        req,
                        self.blob_len,
                        self.writer.clone(),
                        self.events_tx.clone(),
                        self.limiter.clone(),
                    ));
                    self.tasks.insert(rid, handle);
                }
                Action::Cancel { id: rid, .. } => {
                    if let Some(t) = self.tasks.remove(&rid) {
                        t.abort();
                    }
                }
                Action::Ban { peer } => {
                    let w = self
                        .last_error
                        .remove(&peer)
                        .unwrap_or_else(|| "sent bad data".into());
                    self.ban(sources, peer, w, "peer sent bad data; disconnected")
                        .await;
                }
                Action::Drop { peer } => {
                    let w = self
                        .last_error
                        .remove(&peer)
                        .unwrap_or_else(|| "stalled".into());
                    debug!(peer = %peer, blob = %self.id, why = %w, "giving up on peer");
                    self.ended.gave_up.push(format!("{peer}: {w}"));
                }
            }
        }
    }

    /// `peer` lied (`why`): no more have-map from it, never dialled or asked again, and
    /// disconnected; it goes on the list the fetch reports.
    async fn ban(&mut self, sources: &mut Sources, peer: PeerId, why: String, what: &str) {
        warn!(peer = %peer, blob = %self.id, why = %why, "{what}");
        if let Some(h) = self.watching.remove(&peer) {
            h.abort();
        }
        sources.ban(peer);
        self.node.disconnect(peer).await;
        self.ended.banned.push((peer, why));
    }

    /// A peer from the sources: subscribe to its have-map.
    fn on_arrival(&mut self, arrival: Arrival) {
        let peer = arrival.peer();
        if self.is_banned(peer) {
            return;
        }
        match arrival {
            Arrival::Gone(_) => {
                // Its requests go back to the pool; it is asked again once the sources have
                // dialled it again and it says what it has.
                debug!(peer = %peer, blob = %self.id, "peer disconnected");
                if let Some(h) = self.watching.remove(&peer) {
                    h.abort();
                }
                self.known.remove(&peer);
                self.sched
                    .handle_peer_gone(tokio::time::Instant::now().into_std(), peer);
                return;
            }
            Arrival::Connected(_) => {
                debug!(peer = %peer, blob = %self.id, "peer connected");
            }
            Arrival::Subscribed(_) => {
                debug!(peer = %peer, blob = %self.id, "peer fetching the same blob found us");
                self.contacts.remove(&peer);
                if self.watching.contains_key(&peer) && !self.known.contains_key(&peer) {
                    // Our subscription may be about to hear "not found" from before the peer
                    // was ready: subscribe again when it ends.
                    self.again.insert(peer);
                }
            }
            Arrival::Contacted(_) => {
                if self.watching.contains_key(&peer) || self.known.contains_key(&peer) {
                    return;
                }
                self.contacts.insert(peer);
            }
        }
        self.watch(peer);
    }

    async fn on_event(&mut self, event: Event, sources: &mut Sources) {
        let now = tokio::time::Instant::now().into_std();
        match event {
            Event::Block {
                peer,
                id: rid,
                index,
            } => {
                self.last_block = tokio::time::Instant::now();
                self.sched.handle_block(now, peer, rid, index);
                self.count_source(peer, index);
                let held = self.total - self.sched.missing();
                if let Some(a) = &sources.announcer
                    && held >= self.announced_at + ANNOUNCE_PROGRESS_EVERY
                    && held < self.total
                {
                    a.set(Status::leecher(held, self.total));
                    self.announced_at = held;
                }
            }
            Event::Have { peer, ranges } => {
                if !self.known.contains_key(&peer) && self.node.is_seed_node(&peer) {
                    self.sched.set_last_resort(peer);
                }
                let set = self
                    .known
                    .entry(peer)
                    .or_insert_with(|| BlockSet::new(self.total));
                for r in &ranges {
                    set.insert_range(*r);
                }
                self.sched.handle_have_ranges(now, peer, &ranges);
            }
            Event::HaveEnded { peer, result } => {
                self.on_have_ended(now, peer, result, sources).await;
            }
            Event::Ended {
                peer,
                id: rid,
                result,
            } => self.on_request_ended(now, peer, rid, result),
        }
    }

    async fn on_have_ended(
        &mut self,
        now: std::time::Instant,
        peer: PeerId,
        result: Result<(), RequestError>,
        sources: &mut Sources,
    ) {
        debug!(peer = %peer, blob = %self.id, result = ?result.as_ref().err(), "have-map stream ended");
        self.watching.remove(&peer);
        if self.again.remove(&peer)
            && matches!(result, Err(RequestError::Status(ResponseHeader::NotFound)))
        {
            self.watch(peer);
            return;
        }
        let full = self.known.get(&peer).is_some_and(BlockSet::is_full);
        match result {
            Ok(()) if full => {} // said everything: it has the whole blob
            Err(RequestError::Lied(w)) => {
                self.sched.handle_peer_gone(now, peer);
                self.ban(
                    sources,
                    peer,
                    w,
                    "peer broke the have protocol; disconnected",
                )
                .await;
            }
            Err(RequestError::Status(ResponseHeader::NotFound)) => {
                if !self.contacts.remove(&peer) {
                    self.ended
                        .gave_up
                        .push(format!("{peer}: does not have the blob"));
                }
                self.sched.handle_peer_gone(now, peer);
            }
            other => {
                if let Err(e) = other {
                    self.last_error.insert(peer, e.to_string());
                }
                // Gone or stopped serving; it may come back: the sources dial it again (and
                // it may subscribe to us again, or a tracker list it).
                self.known.remove(&peer);
                self.sched.handle_peer_gone(now, peer);
                sources.lost(peer);
            }
        }
    }

    fn on_request_ended(
        &mut self,
        now: std::time::Instant,
        peer: PeerId,
        rid: RequestId,
        result: Result<(), RequestError>,
    ) {
        self.tasks.remove(&rid);
        let why = match result {
            Ok(()) => return,
            Err(RequestError::Stopped) => {
                self.writer_gone = true;
                return;
            }
            Err(RequestError::Lied(w)) => {
                self.last_error.insert(
                    peer,
                    format!("sent data that does not match the blob id ({w})"),
                );
                Failure::Lied
            }
            // The size is proven by now: another one is a lie.
            Err(e @ RequestError::WrongSize { .. }) => {
                self.last_error.insert(peer, e.to_string());
                Failure::Lied
            }
            Err(RequestError::Status(ResponseHeader::NotFound)) => {
                self.last_error.insert(peer, "answered NotFound".into());
                Failure::NotFound
            }
            Err(RequestError::Status(ResponseHeader::Busy)) => Failure::Busy,
            // Its own copy of that block is bad (it says so and serves its other blocks).
            Err(RequestError::Status(ResponseHeader::Corrupt { block })) if block < self.total => {
                self.ended.gave_up.push(format!(
                    "{peer}: its stored copy of block {block} fails its check against the blob id (it no longer serves that block)"
                ));
                Failure::Lacks { block }
            }
            Err(RequestError::Status(ResponseHeader::Corrupt { block })) => {
                self.last_error.insert(
                    peer,
                    format!("named block {block} of a {}-block blob", self.total),
                );
                Failure::Lied
            }
            Err(e) => {
                self.last_error.insert(peer, e.to_string());
                Failure::Failed
            }
        };
        self.sched.handle_failure(now, peer, rid, why);
    }
}

/// Subscribes to `peer`'s have-map of blob `id` and reports it to the driver until the
/// stream ends.
async fn watch_have(
    client: Client,
    peer: PeerId,
    id: BlobId,
    total: u32,
    events: mpsc::Sender<Event>,
) {
    // A peer that does not have the blob yet may be a downloader still bootstrapping (it
    // found us through a tracker or the link): ask again a few times before giving up on it.
    let mut wait = HAVE_RETRY;
    // A subscription closed before its first frame may have been dropped by a loaded peer
    // (see `RequestError::Unanswered`): ask again the same way.
    let mut result = subscribe_have(&client, peer, id, total, &events).await;
    for _ in 0..HAVE_RETRIES {
        if !matches!(
            result,
            Err(RequestError::Status(ResponseHeader::NotFound) | RequestError::Unanswered)
        ) {
            break;
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
        result = subscribe_have(&client, peer, id, total, &events).await;
    }
    let _ = events.send(Event::HaveEnded { peer, result }).await;
}

/// One have-map subscription, until the stream ends. A stream that ends before any frame
/// is [`RequestError::Unanswered`]: a peer holding blocks says so first, and one holding none
/// yet keeps the stream open until it has some.
async fn subscribe_have(
    client: &Client,
    peer: PeerId,
    id: BlobId,
    total: u32,
    events: &mpsc::Sender<Event>,
) -> Result<(), RequestError> {
    let mut heard = false;
    let result = client
        .read_have_map(peer, id, total, |ranges| {
            heard = true;
            async move { events.send(Event::Have { peer, ranges }).await.is_ok() }
        })
        .await;
    match result {
        Ok(()) if !heard => Err(RequestError::Unanswered),
        r => r,
    }
}

#[allow(clippy::too_many_arguments)] // spawned from one place; a struct would only rename them
/// One request: stream the verified blocks to the writer and tell the driver about each.
async fn request_task(
    client: Client,
    peer: PeerId,
    rid: RequestId,
    req: BlobRequest,
    blob_len: u64,
    writer: mpsc::Sender<Verified>,
    events: mpsc::Sender<Event>,
    limiter: Option<Arc<RateLimiter>>,
) {
    let result = client
        .request(peer, &req, blob_len, |v| {
            let index = v.index.0;
            let writer = writer.clone();
            let events = events.clone();
            let limiter = limiter.clone();
            async move {
                // Pausing here stops reading the stream: the transport's flow control slows
                // the sender down to the limit.
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
