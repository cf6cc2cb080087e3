//! Where a download's peers come from: the link's `peer` hints and the peers given, the
//! trackers (the link's `tr` hints and those given; they list more peers as they join), the
//! DHT (asked when those give nobody), and peers that subscribe to our have-map of the blob
//! (downloading it too). [`Sources`] holds all of them for one fetch: it connects the first
//! peers ([`Sources::connect`]), then hands the bootstrap and the download loop each peer
//! found later, already dialled, and says what every source gave when nobody could help.

use std::time::Duration;

use futures::future::join_all;
use libp2p::{Multiaddr, PeerId};
use shoal_protocol::{BlobId, Link, blob::block_count};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

use super::{error::FetchError, options::FetchOptions};
use crate::{
    announce::{Announcer, Outcome, Status},
    dht::Found,
    interest::Interest,
    node::{DialError, Node},
};

/// How long trackers get to list a reachable peer before the DHT is asked too (at once if
/// every tracker failed).
pub const TRACKER_GRACE: Duration = Duration::from_secs(5);
/// How long one DHT provider lookup may take.
const DHT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How much longer the fetch waits for the node to end a lookup (it ends it at the timeout).
const DHT_LOOKUP_GRACE: Duration = Duration::from_secs(2);
/// Shortest time between two DHT provider lookups of one fetch.
const DHT_RETRY: Duration = Duration::from_secs(30);
/// Peers found through trackers and the DHT, queued for the fetch.
const FOUND_QUEUE: usize = 64;
/// With nothing in flight and no block arriving for this long, the peers left cannot help
/// (they lack the missing blocks): give up, keeping what was verified. Also how long the
/// first peer and the first blocks are waited for.
pub(super) const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// Each tracker a fetch announces to and what its last announce gave.
pub(super) type Outcomes = watch::Receiver<Vec<(Multiaddr, Outcome)>>;

/// Every source of peers of one fetch.
pub(super) struct Sources {
    /// Peers named in the link or given, and trackers, parsed; hints that did not parse,
    /// and named peers that could not be dialled, are in `tried`.
    addrs: Vec<Multiaddr>,
    trackers: Vec<Multiaddr>,
    tried: Vec<String>,
    /// Peers that subscribe to our have-map of this blob: downloading it too.
    pub(super) interest: Interest,
    /// Peers trackers listed and the DHT found, dialled already.
    pub(super) found: mpsc::Receiver<PeerId>,
    /// Announcing to the trackers (none without trackers); told about progress.
    pub(super) announcer: Option<Announcer>,
    /// Provider lookups.
    pub(super) dht: DhtSearch,
}

impl Sources {
    /// Gathers the sources of `link` and `opts` and starts announcing to the trackers (and
    /// a DHT lookup, if nothing else names a peer).
    ///
    /// # Errors
    /// [`FetchError::NoPeersGiven`] when nothing names a peer or tracker and the DHT cannot
    /// be asked.
    pub(super) fn start(node: &Node, link: &Link, opts: &FetchOptions) -> Result<Self, FetchError> {
        let id = link.id;
        let mut tried = Vec::new();
        let trackers = merge_addrs(&opts.trackers, &link.trackers, "tracker ", &mut tried);
        let addrs = merge_addrs(&opts.peers, &link.peers, "", &mut tried);
        if addrs.is_empty() && trackers.is_empty() && tried.is_empty() && !node.dht_usable() {
            return Err(FetchError::NoPeersGiven);
        }
        let interest = node.interest(id);
        let (found_tx, found) = mpsc::channel(FOUND_QUEUE);
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
        let mut dht = DhtSearch::new(node, id, found_tx);
        if addrs.is_empty() && trackers.is_empty() {
            dht.start(); // nothing else names a peer: ask the DHT at once
        }
        Ok(Self {
            addrs,
            trackers,
            tried,
            interest,
            found,
            announcer,
            dht,
        })
    }

    /// What the trackers answer, as they answer (`None` without trackers).
    pub(super) fn outcomes(&self) -> Option<Outcomes> {
        self.announcer.as_ref().map(Announcer::outcomes)
    }

    /// Whether trackers are asked (they list peers that join later).
    pub(super) const fn tracked(&self) -> bool {
        self.announcer.is_some()
    }

    /// Connects to every peer named in the link or given, at once; if none answers, waits
    /// for the first peer a tracker or the DHT finds ([`first_peer`]). Returns the peers
    /// connected.
    ///
    /// # Errors
    /// [`FetchError::Unreachable`], saying what each source gave.
    pub(super) async fn connect(&mut self, node: &Node) -> Result<Vec<PeerId>, FetchError> {
        let timeout = node.config().dial_timeout;
        let dials = join_all(self.addrs.iter().map(|a| node.dial(a.clone(), timeout))).await;
        let mut peers: Vec<PeerId> = Vec::new();
        for r in dials {
            match r {
                Ok(p) if !peers.contains(&p) => peers.push(p),
                Ok(_) => {}
                Err(DialError { addr, why }) => self.tried.push(format!("{addr}: {why}")),
            }
        }
        if peers.is_empty() {
            // Nobody named in the link or given answered: trackers and the DHT are left. The
            // DHT is asked at once if the named peers failed or there is no tracker, else when
            // the trackers list nobody in time.
            if !self.addrs.is_empty() || self.trackers.is_empty() {
                self.dht.start();
            }
            if let Some(p) = first_peer(
                &mut self.found,
                &mut self.interest.peers,
                &mut self.dht,
                self.announcer.as_ref(),
            )
            .await
            {
                peers.push(p);
            }
        }
        while let Ok(p) = self.found.try_recv() {
            if !peers.contains(&p) {
                peers.push(p);
            }
        }
        if peers.is_empty() {
            return Err(FetchError::Unreachable {
                tried: self.describe_unreachable(),
            });
        }
        info!(blob = %self.dht.id, peers = peers.len(), "connected");
        Ok(peers)
    }

    /// What each source gave, when none gave a reachable peer.
    fn describe_unreachable(&mut self) -> Vec<String> {
        let mut tried = std::mem::take(&mut self.tried);
        if self.addrs.is_empty() {
            tried.push("peers: none named in the link or given with --peer".into());
        }
        match &self.announcer {
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
        tried.push(self.dht.describe());
        tried
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

/// Provider lookups in the DHT for one fetch: one at a time, at most one per [`DHT_RETRY`].
/// Providers that answer a dial go on the same `found` channel as tracker-listed peers, so
/// bootstrap and the main phase use them alike. A running lookup is aborted on drop.
pub(super) struct DhtSearch {
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
    pub(super) fn start(&mut self) -> bool {
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
    pub(super) async fn done(&mut self) {
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
    pub(super) fn describe(&self) -> String {
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
