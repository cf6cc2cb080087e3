//! Announcing to trackers: telling them which swarms this node is in, and connecting to the
//! peers they list (docs/tracker.md).
//!
//! One [`Announcer`] per blob this node downloads or seeds. It announces `started`, then
//! again at the interval each tracker asks for (a tracker asks a leecher that nobody can
//! serve yet to come back sooner; a rate limit it answers with is obeyed, never an error),
//! `completed` when the download finishes, and `stopped` when the handle is dropped. The
//! peers a tracker lists are dialled, and those that answer reported on the `found` channel;
//! a download instead takes the list itself (`Listed`) and dials and re-dials them.

use std::{collections::HashSet, sync::Arc, time::Duration};

use libp2p::{Multiaddr, PeerId};
use shoal_protocol::{
    BlobId,
    tracker::{
        AnnounceRequest, AnnounceResponse, Event, MAX_ADDRS, PeerEntry, RefusalReason, Request,
        Response, Role,
    },
};
use tokio::sync::{Mutex, mpsc, watch};
use tracing::{debug, warn};

use crate::node::Node;

/// Shortest wait between announces to one tracker, whatever interval it asks for.
const MIN_INTERVAL: Duration = Duration::from_secs(15);
/// Longest wait between announces (so a tracker restarted with an empty table relearns us).
const MAX_INTERVAL: Duration = Duration::from_secs(30 * 60);
/// Wait after a tracker could not be reached or answered badly.
const RETRY: Duration = Duration::from_secs(30);
/// Longest wait before the first announce for this node's reservation at the tracker's
/// relay (a few round trips when there is one).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the `stopped` announce may take when the handle is dropped.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What this node is in a swarm, as announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// Seeder (whole blob), leecher (downloading) or seed node.
    pub role: Role,
    /// Verified blocks held.
    pub blocks_held: u32,
    /// Blocks in the blob.
    pub total_blocks: u32,
}

impl Status {
    /// A seeder of a blob of `total_blocks`.
    pub const fn seeder(total_blocks: u32) -> Self {
        Self {
            role: Role::Seeder,
            blocks_held: total_blocks,
            total_blocks,
        }
    }

    /// A leecher holding `blocks_held` of `total_blocks` (0 if the size is not known yet).
    pub const fn leecher(blocks_held: u32, total_blocks: u32) -> Self {
        Self {
            role: Role::Leecher,
            blocks_held,
            total_blocks,
        }
    }
}

/// What the last announce to one tracker gave (for a fetch deciding whether to wait for
/// trackers, and for its error messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// No answer yet.
    Pending,
    /// The tracker answered, listing `peers` peers (seed nodes included), of which
    /// `seeders` hold the whole blob (seeders and seed nodes).
    Answered {
        /// Peers listed.
        peers: usize,
        /// Of them, seeders and seed nodes.
        seeders: usize,
    },
    /// The tracker refused the announce (full, or a bad request): it is asked again later.
    Refused(String),
    /// The tracker could not be reached or answered badly: it is asked again later.
    Failed(String),
    /// The tracker's operator took the blob down: the tracker no longer coordinates its
    /// swarm, and is not asked again.
    TakenDown,
}

/// A peer a tracker listed, with the addresses it announced (each ending in `/p2p/<id>`).
#[derive(Clone, Debug)]
pub(crate) struct Listed {
    pub(crate) peer: PeerId,
    pub(crate) addrs: Vec<Multiaddr>,
}

/// What an announcer does with the peers its trackers list.
#[derive(Clone)]
enum Sink {
    /// Dial them (once each, while they answer) and report those that answer.
    Dial(Option<mpsc::Sender<PeerId>>),
    /// Hand them on as listed (a download dials them itself).
    List(mpsc::Sender<Listed>),
}

/// Keeps announcing a blob while it lives; dropping it announces `stopped` (best effort,
/// in the background).
#[derive(Debug)]
pub struct Announcer {
    status: watch::Sender<Status>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    outcomes: watch::Receiver<Vec<(Multiaddr, Outcome)>>,
}

impl Announcer {
    /// Starts announcing `blob` to `trackers` (multiaddrs ending in `/p2p/<peer id>`) with
    /// `status`. Peers the trackers list are dialled; each one that answers is sent on
    /// `found` (when given; dropped if the receiver is full). Must be called within tokio.
    pub fn start(
        node: &Node,
        blob: BlobId,
        trackers: Vec<Multiaddr>,
        status: Status,
        found: Option<mpsc::Sender<PeerId>>,
    ) -> Self {
        Self::spawn(node, blob, trackers, status, Sink::Dial(found))
    }

    /// Like [`Announcer::start`], but the peers the trackers list are sent on `listed`
    /// (dropped if it is full), not dialled.
    pub(crate) fn start_listing(
        node: &Node,
        blob: BlobId,
        trackers: Vec<Multiaddr>,
        status: Status,
        listed: mpsc::Sender<Listed>,
    ) -> Self {
        Self::spawn(node, blob, trackers, status, Sink::List(listed))
    }

    fn spawn(
        node: &Node,
        blob: BlobId,
        trackers: Vec<Multiaddr>,
        status: Status,
        sink: Sink,
    ) -> Self {
        let (tx, rx) = watch::channel(status);
        let (outcomes_tx, outcomes) = watch::channel(
            trackers
                .iter()
                .map(|t| (t.clone(), Outcome::Pending))
                .collect::<Vec<_>>(),
        );
        let outcomes_tx = Arc::new(outcomes_tx);
        let tasks = trackers
            .into_iter()
            .enumerate()
            .map(|(i, tracker)| {
                let report = Report {
                    index: i,
                    to: outcomes_tx.clone(),
                };
                tokio::spawn(run(
                    node.clone(),
                    blob,
                    tracker,
                    rx.clone(),
                    sink.clone(),
                    report,
                ))
            })
            .collect();
        Self {
            status: tx,
            tasks,
            outcomes,
        }
    }

    /// Each tracker and what its last announce gave; changes as announces complete.
    pub(crate) fn outcomes(&self) -> watch::Receiver<Vec<(Multiaddr, Outcome)>> {
        self.outcomes.clone()
    }

    /// Announces `stopped` to every tracker and waits for them (at most a few seconds), so a
    /// process about to exit leaves its swarms cleanly.
    pub async fn leave(self) {
        let Self { status, tasks, .. } = self;
        drop(status);
        let _ = tokio::time::timeout(STOP_TIMEOUT, futures::future::join_all(tasks)).await;
    }

    /// Updates what is announced next. A change from leecher to seeder is announced at once
    /// (`completed`); other changes wait for the next interval.
    pub fn set(&self, status: Status) {
        self.status
            .send_if_modified(|s| std::mem::replace(s, status) != status);
    }
}

/// Where one tracker's task reports its outcomes.
struct Report {
    index: usize,
    to: Arc<watch::Sender<Vec<(Multiaddr, Outcome)>>>,
}

impl Report {
    fn set(&self, outcome: Outcome) {
        self.to.send_modify(|v| {
            if let Some(slot) = v.get_mut(self.index) {
                slot.1 = outcome;
            }
        });
    }
}

/// Announces to one tracker until the [`Announcer`] is dropped.
async fn run(
    node: Node,
    blob: BlobId,
    tracker: Multiaddr,
    mut status: watch::Receiver<Status>,
    sink: Sink,
    report: Report,
) {
    let dialled = Arc::new(Mutex::new(HashSet::new()));
    let mut event = Event::Started;
    // Trackers run relays: an unreachable node reserves a slot at this one as soon as it is
    // connected, and the first announce should carry that relayed address (the next one
    // comes minutes later).
    if let Some((peer, _)) = crate::dht::split_p2p(&tracker)
        && node
            .dial(tracker.clone(), node.config().dial_timeout)
            .await
            .is_ok()
    {
        node.settle_at(peer, SETTLE_TIMEOUT).await;
    }
    loop {
        let now = *status.borrow_and_update();
        let wait = match announce(&node, &tracker, blob, now, event).await {
            Ok(AnnounceResponse::Ok {
                interval_secs,
                peers,
                seed_nodes,
            }) => {
                debug!(%tracker, blob = %blob, peers = peers.len(), seed_nodes = seed_nodes.len(), interval_secs, "announced");
                let seeders =
                    peers.iter().filter(|p| p.role == Role::Seeder).count() + seed_nodes.len();
                report.set(Outcome::Answered {
                    peers: peers.len() + seed_nodes.len(),
                    seeders,
                });
                let listed = peers.iter().chain(&seed_nodes);
                match &sink {
                    Sink::Dial(found) => connect(&node, listed, &dialled, found),
                    Sink::List(to) => list(&node, listed, to),
                }
                // The tracker says when to come back (sooner for a leecher nobody can serve
                // yet: a seeder may come); obey it, so its rate limit is never hit.
                Duration::from_secs(interval_secs.into()).clamp(MIN_INTERVAL, MAX_INTERVAL)
            }
            Ok(AnnounceResponse::Refused {
                reason: RefusalReason::TakenDown,
            }) => {
                warn!(%tracker, blob = %blob, "the tracker's operator took this blob down; not announcing it there again");
                report.set(Outcome::TakenDown);
                return;
            }
            Ok(AnnounceResponse::Refused {
                reason: RefusalReason::RateLimited { retry_after_secs },
            }) => {
                // Too soon (this peer id announced a moment ago, e.g. a restart): come back
                // when the tracker says. Not an error: the last answer still stands.
                debug!(%tracker, blob = %blob, retry_after_secs, "tracker asked to announce later");
                Duration::from_secs(retry_after_secs.into()).max(Duration::from_secs(1))
            }
            Ok(AnnounceResponse::Refused { reason }) => {
                warn!(%tracker, blob = %blob, ?reason, "tracker refused the announce");
                report.set(Outcome::Refused(refusal_text(reason)));
                RETRY
            }
            Err(why) => {
                debug!(%tracker, blob = %blob, %why, "announce failed");
                report.set(Outcome::Failed(why));
                RETRY
            }
        };
        event = Event::Periodic;
        let before = now.role;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                changed = status.changed() => {
                    if changed.is_err() {
                        // The handle is gone: leave the swarm.
                        let last = *status.borrow();
                        let _ = tokio::time::timeout(
                            STOP_TIMEOUT,
                            announce(&node, &tracker, blob, last, Event::Stopped),
                        )
                        .await;
                        return;
                    }
                    if before == Role::Leecher && status.borrow().role == Role::Seeder {
                        event = Event::Completed;
                        break;
                    }
                    // Progress only: announced at the next interval.
                }
            }
        }
    }
}

async fn announce(
    node: &Node,
    tracker: &Multiaddr,
    blob: BlobId,
    status: Status,
    event: Event,
) -> Result<AnnounceResponse, String> {
    let addrs = node
        .announce_addrs(MAX_ADDRS)
        .await
        .into_iter()
        .map(|a| a.to_vec())
        .collect();
    let request = AnnounceRequest {
        blob,
        role: status.role,
        blocks_held: status.blocks_held,
        total_blocks: status.total_blocks,
        addrs,
        event,
    };
    request.validate().map_err(|e| e.to_string())?;
    match node
        .tracker_request(tracker, Request::Announce(request))
        .await
    {
        Ok(Response::Announce(answer)) => Ok(answer),
        Ok(other) => Err(format!("answered an announce with {other:?}")),
        Err(e) => Err(e.why),
    }
}

/// What a refusal means, in words.
fn refusal_text(reason: RefusalReason) -> String {
    match reason {
        RefusalReason::RateLimited { retry_after_secs } => {
            format!("asked to announce again in {retry_after_secs} s")
        }
        RefusalReason::SwarmFull => "refused the announce: this file's swarm is full there".into(),
        RefusalReason::TrackerFull => "refused the announce: the tracker is full".into(),
        RefusalReason::TakenDown => "the blob was taken down there".into(),
        RefusalReason::BadRequest => {
            "refused the announce as a bad request (are this node's listen addresses ones it accepts?)".into()
        }
    }
}

/// The listed peers' ids and addresses (each with `/p2p/<id>`), skipping this node and
/// entries that do not parse; the seed nodes among them are noted on `node` (so its serving
/// and scheduling know them).
fn parse_listed<'a>(node: &Node, entries: impl Iterator<Item = &'a PeerEntry>) -> Vec<Listed> {
    let me = node.peer_id();
    entries
        .filter_map(|entry| {
            let peer = PeerId::from_bytes(&entry.peer_id).ok()?;
            if peer == me {
                return None;
            }
            if entry.role == Role::SeedNode {
                node.note_seed_node(peer);
            }
            let addrs = entry
                .addrs
                .iter()
                .filter_map(|a| Multiaddr::try_from(a.clone()).ok())
                .map(|a| a.with_p2p(peer).unwrap_or_else(|a| a))
                .collect();
            Some(Listed { peer, addrs })
        })
        .collect()
}

/// Hands the listed peers on.
fn list<'a>(node: &Node, entries: impl Iterator<Item = &'a PeerEntry>, to: &mpsc::Sender<Listed>) {
    for listed in parse_listed(node, entries) {
        let _ = to.try_send(listed);
    }
}

/// Dials the listed peers not dialled before (in the background) and reports those that
/// answer.
fn connect<'a>(
    node: &Node,
    entries: impl Iterator<Item = &'a PeerEntry>,
    dialled: &Arc<Mutex<HashSet<PeerId>>>,
    found: &Option<mpsc::Sender<PeerId>>,
) {
    for Listed { peer, addrs } in parse_listed(node, entries) {
        let node = node.clone();
        let dialled = dialled.clone();
        let found = found.clone();
        tokio::spawn(async move {
            if !dialled.lock().await.insert(peer) {
                return;
            }
            // One address at a time: one connection is enough.
            let timeout = node.config().dial_timeout;
            for addr in addrs {
                if node.dial(addr, timeout).await.is_ok() {
                    if let Some(found) = found {
                        let _ = found.try_send(peer);
                    }
                    return;
                }
            }
            // Unreachable now; if a tracker lists it again, try again then.
            dialled.lock().await.remove(&peer);
        });
    }
}
