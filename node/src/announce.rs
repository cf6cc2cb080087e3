//! Announcing to trackers: telling them which swarms this node is in, and connecting to the
//! peers they list (docs/tracker.md).
//!
//! One [`Announcer`] per blob this node downloads or seeds. It announces `started`, then
//! again at the interval each tracker asks for, `completed` when the download finishes, and
//! `stopped` when the handle is dropped. The peers a tracker lists are dialled; those that
//! answer are reported on the `found` channel, so a download asks them for blocks.

use std::{collections::HashSet, sync::Arc, time::Duration};

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
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
/// Wait before announcing again when a leecher was told of no peer at all.
const LONELY_RETRY: Duration = Duration::from_secs(3);
/// Wait after a tracker could not be reached or answered badly.
const RETRY: Duration = Duration::from_secs(30);
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
    /// The tracker answered, listing this many peers (seed nodes included).
    Answered(usize),
    /// The tracker refused the announce for now (rate limited, full): it is asked again.
    Refused(String),
    /// The tracker could not be reached or answered badly: it is asked again later.
    Failed(String),
    /// The tracker's operator took the blob down: the tracker no longer coordinates its
    /// swarm, and is not asked again.
    TakenDown,
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
                    found.clone(),
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
    found: Option<mpsc::Sender<PeerId>>,
    report: Report,
) {
    let dialled = Arc::new(Mutex::new(HashSet::new()));
    let mut event = Event::Started;
    loop {
        let now = *status.borrow_and_update();
        let wait = match announce(&node, &tracker, blob, now, event).await {
            Ok(AnnounceResponse::Ok {
                interval_secs,
                peers,
                seed_nodes,
            }) => {
                debug!(%tracker, blob = %blob, peers = peers.len(), seed_nodes = seed_nodes.len(), "announced");
                let lonely = peers.is_empty() && seed_nodes.is_empty();
                report.set(Outcome::Answered(peers.len() + seed_nodes.len()));
                connect(&node, peers.iter().chain(&seed_nodes), &dialled, &found);
                if lonely && now.role == Role::Leecher {
                    // Nobody to download from yet (we may have been first): ask again soon.
                    LONELY_RETRY
                } else {
                    Duration::from_secs(interval_secs.into()).clamp(MIN_INTERVAL, MAX_INTERVAL)
                }
            }
            Ok(AnnounceResponse::Refused {
                reason: RefusalReason::TakenDown,
            }) => {
                warn!(%tracker, blob = %blob, "the tracker's operator took this blob down; not announcing it there again");
                report.set(Outcome::TakenDown);
                return;
            }
            Ok(AnnounceResponse::Refused { reason }) => {
                if matches!(reason, RefusalReason::RateLimited { .. }) {
                    // Expected now and then (an early re-announce): it waits and retries.
                    debug!(%tracker, blob = %blob, ?reason, "tracker refused the announce");
                } else {
                    warn!(%tracker, blob = %blob, ?reason, "tracker refused the announce");
                }
                report.set(Outcome::Refused(format!(
                    "refused the announce ({reason:?})"
                )));
                match reason {
                    RefusalReason::RateLimited { retry_after_secs } => {
                        Duration::from_secs(retry_after_secs.into()).max(Duration::from_secs(1))
                    }
                    _ => RETRY,
                }
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
        .listen_addrs(Duration::ZERO)
        .await
        .into_iter()
        .filter(|a| !is_unspecified(a))
        .take(MAX_ADDRS)
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

/// Dials the listed peers not dialled before (in the background) and reports those that
/// answer.
fn connect<'a>(
    node: &Node,
    entries: impl Iterator<Item = &'a PeerEntry>,
    dialled: &Arc<Mutex<HashSet<PeerId>>>,
    found: &Option<mpsc::Sender<PeerId>>,
) {
    let me = node.peer_id();
    for entry in entries {
        let Ok(peer) = PeerId::from_bytes(&entry.peer_id) else {
            continue;
        };
        if peer == me {
            continue;
        }
        if entry.role == Role::SeedNode {
            node.note_seed_node(peer);
        }
        let addrs: Vec<Multiaddr> = entry
            .addrs
            .iter()
            .filter_map(|a| Multiaddr::try_from(a.clone()).ok())
            .map(|a| a.with_p2p(peer).unwrap_or_else(|a| a))
            .collect();
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

fn is_unspecified(a: &Multiaddr) -> bool {
    a.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}
