//! Takedowns at trackers (docs/tracker.md §1.7, §4.6): an operator's [`submit`], the public
//! [`list`], and [`follow`], which seed nodes run to learn which blobs to delete.
//!
//! A takedown is accepted only from a node whose peer id the tracker lists as an operator
//! (`shoal tracker --operator PEER_ID`); the tracker takes the id from the connection, so
//! the node's own identity is what counts. The list is public: blob ids and sequence
//! numbers, no reasons or operator ids.
//!
//! ```no_run
//! # async fn run(node: shoal_node::Node, tracker: libp2p::Multiaddr, blob: shoal_protocol::BlobId) -> anyhow::Result<()> {
//! use std::time::Duration;
//! use shoal_node::takedown;
//!
//! let seq = takedown::submit(&node, &tracker, blob, "abuse report #17").await?;
//! let (page, more) = takedown::list(&node, &tracker, 0).await?;
//! assert!(page.iter().any(|&(s, b)| s == seq && b == blob) || more);
//!
//! // A seed node: delete whatever any tracker takes down.
//! let mut gone = takedown::follow(node.clone(), vec![tracker], Duration::from_secs(60));
//! while let Some(blob) = gone.recv().await {
//!     println!("delete {blob}");
//! }
//! # Ok(()) }
//! ```

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use libp2p::{Multiaddr, PeerId};
use shoal_protocol::{
    BlobId,
    tracker::{
        DenyReason, MAX_REASON_LEN, Request, Response, TakedownListRequest, TakedownRequest,
        validate_reason,
    },
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::node::Node;

/// Blob ids queued for a [`follow`] receiver.
const FOLLOW_QUEUE: usize = 256;
/// Most pages [`follow`] reads from one tracker in one round (512 entries each); the rest
/// comes next round. Bounds a round against a tracker that always says "more".
const MAX_PAGES_PER_ROUND: usize = 64;

/// Why a takedown request or a list query failed. Each message names the tracker and says
/// what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TakedownError {
    /// The reason breaks the protocol's rules; nothing was sent.
    #[error(
        "the reason must be 1 to {MAX_REASON_LEN} bytes of text without line breaks or control characters ({len} bytes given)"
    )]
    BadReason {
        /// Its length in bytes.
        len: usize,
    },
    /// The tracker does not count this node's peer id among its operators.
    #[error(
        "tracker {tracker} says this node (peer id {peer}) is not an operator; start the tracker with --operator {peer}"
    )]
    NotOperator {
        /// The tracker.
        tracker: Multiaddr,
        /// This node's peer id.
        peer: PeerId,
    },
    /// The tracker could not record the takedown (its store failed); nothing changed.
    #[error(
        "tracker {tracker} could not record the takedown (its takedown store failed); check the tracker's log and try again"
    )]
    Unavailable {
        /// The tracker.
        tracker: Multiaddr,
    },
    /// No answer: the tracker is unreachable, or dropped the request (a list query over its
    /// rate limit gets no answer).
    #[error(
        "no answer from tracker {tracker} ({why}); check the address and that the tracker runs, and ask for the list less often"
    )]
    Unreachable {
        /// The tracker.
        tracker: Multiaddr,
        /// What happened.
        why: String,
    },
    /// The tracker answered something that is not an answer to the request.
    #[error("tracker {tracker} answered wrongly ({why}); it may run another version")]
    BadAnswer {
        /// The tracker.
        tracker: Multiaddr,
        /// What was wrong.
        why: String,
    },
}

/// Asks `tracker` (a multiaddr ending in `/p2p/<peer id>`) to take `blob` down for
/// `reason`, as this node's identity. Returns the takedown's sequence number in the tracker's
/// list (the earlier one if the blob was already down). Cancel-safe: dropping the future
/// abandons the request; the tracker may still have recorded it.
///
/// # Errors
/// [`TakedownError::BadReason`] before sending anything; [`TakedownError::NotOperator`] if
/// the tracker does not trust this node's peer id; [`TakedownError::Unavailable`],
/// [`TakedownError::Unreachable`] or [`TakedownError::BadAnswer`] otherwise.
pub async fn submit(
    node: &Node,
    tracker: &Multiaddr,
    blob: BlobId,
    reason: &str,
) -> Result<u64, TakedownError> {
    if validate_reason(reason).is_err() {
        return Err(TakedownError::BadReason { len: reason.len() });
    }
    let request = Request::Takedown(TakedownRequest {
        blob,
        reason: reason.to_owned(),
    });
    match ask(node, tracker, request).await? {
        Response::TakedownDone { seq } => {
            info!(%tracker, blob = %blob, seq, "taken down");
            Ok(seq)
        }
        Response::Denied(DenyReason::NotOperator) => Err(TakedownError::NotOperator {
            tracker: tracker.clone(),
            peer: node.peer_id(),
        }),
        Response::Denied(DenyReason::Unavailable) => Err(TakedownError::Unavailable {
            tracker: tracker.clone(),
        }),
        other => Err(bad_answer(tracker, &other)),
    }
}

/// Asks `tracker` for the blobs taken down after sequence number `since` (0: from the
/// start): at most 512 `(seq, blob)` pairs in ascending `seq`, and whether more follow (ask
/// again with the last `seq`). Anyone may ask; the tracker rate limits it with scrapes.
/// Cancel-safe.
///
/// # Errors
/// [`TakedownError::Unreachable`] (also when the request was dropped by the tracker's rate
/// limit) or [`TakedownError::BadAnswer`] (a page out of order or not after `since`).
pub async fn list(
    node: &Node,
    tracker: &Multiaddr,
    since: u64,
) -> Result<(Vec<(u64, BlobId)>, bool), TakedownError> {
    let request = Request::TakedownList(TakedownListRequest { since });
    match ask(node, tracker, request).await? {
        Response::TakedownList(page) => {
            // The decoder checked the order; a page must also start after `since`.
            if page.entries.first().is_some_and(|e| e.seq <= since) {
                return Err(TakedownError::BadAnswer {
                    tracker: tracker.clone(),
                    why: format!("listed seq {} after {since}", page.entries[0].seq),
                });
            }
            let entries = page.entries.iter().map(|e| (e.seq, e.blob)).collect();
            Ok((entries, page.more))
        }
        other => Err(bad_answer(tracker, &other)),
    }
}

/// Follows the takedown lists of `trackers`: polls each one now and then every `every`
/// (paging through `more`), remembers how far it read each tracker (in memory), and sends
/// every newly listed blob id once (a blob taken down at several trackers is sent once). A
/// seed node deletes what it receives. The first poll of each run reads the whole list, so
/// a restarted follower sees every takedown again.
///
/// Runs as a tokio task until the receiver is dropped; failures are logged and retried at
/// the next poll. Must be called within tokio. `every` is at least one second.
pub fn follow(node: Node, trackers: Vec<Multiaddr>, every: Duration) -> mpsc::Receiver<BlobId> {
    let (tx, rx) = mpsc::channel(FOLLOW_QUEUE);
    tokio::spawn(run_follow(node, trackers, every, tx));
    rx
}

async fn run_follow(
    node: Node,
    trackers: Vec<Multiaddr>,
    every: Duration,
    tx: mpsc::Sender<BlobId>,
) {
    let mut cursors: HashMap<Multiaddr, u64> = HashMap::new();
    let mut failing: HashSet<Multiaddr> = HashSet::new();
    let mut sent: HashSet<BlobId> = HashSet::new();
    let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = tx.closed() => break,
            _ = tick.tick() => {}
        }
        for tracker in &trackers {
            let cursor = cursors.entry(tracker.clone()).or_insert(0);
            let mut pages = 0;
            loop {
                let page = tokio::select! {
                    () = tx.closed() => return,
                    page = list(&node, tracker, *cursor) => page,
                };
                let (entries, more) = match page {
                    Ok(page) => {
                        if failing.remove(tracker) {
                            info!(%tracker, "takedown list readable again");
                        }
                        page
                    }
                    Err(e) => {
                        // Warn once per failure spell, not at every poll.
                        if failing.insert(tracker.clone()) {
                            warn!(error = %e, "cannot read a tracker's takedown list; retrying at the next poll");
                        } else {
                            debug!(error = %e, "takedown list still unreadable");
                        }
                        break;
                    }
                };
                for (seq, blob) in entries {
                    *cursor = seq;
                    if sent.insert(blob) {
                        debug!(%tracker, blob = %blob, seq, "taken down at a followed tracker");
                        if tx.send(blob).await.is_err() {
                            return;
                        }
                    }
                }
                pages += 1;
                if !more || pages >= MAX_PAGES_PER_ROUND {
                    break;
                }
            }
        }
    }
    debug!("takedown follower stopped");
}

async fn ask(
    node: &Node,
    tracker: &Multiaddr,
    request: Request,
) -> Result<Response, TakedownError> {
    node.tracker_request(tracker, request)
        .await
        .map_err(|e| TakedownError::Unreachable {
            tracker: tracker.clone(),
            why: e.why,
        })
}

fn bad_answer(tracker: &Multiaddr, answer: &Response) -> TakedownError {
    TakedownError::BadAnswer {
        tracker: tracker.clone(),
        why: format!("unexpected {answer:?}"),
    }
}
