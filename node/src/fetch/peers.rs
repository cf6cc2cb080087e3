//! Where a download's peers come from, and how long it waits for them.
//!
//! Sources: the link's `peer` hints and the peers given; the trackers (the link's `tr` hints
//! and those given), which list more peers as they join; the DHT, asked when those give
//! nobody usable; and peers that contact us (they subscribe to our have-map of the blob, or
//! connect after a tracker told them about us). [`Sources`] holds all of them for one fetch
//! and keeps trying: it dials every address it knows, re-dials a peer that was lost or could
//! not be reached with back-off ([`REDIAL_FIRST`] doubling to [`REDIAL_MAX`]), and hands
//! each peer that connects to the fetch ([`Sources::next`]). When nobody could help, it says
//! what each source gave ([`Sources::describe`]).
//!
//! Patience: a fetch with no peer that can deliver waits for one — a seeder that restarts,
//! a seeder that comes later — for [`FetchOptions::patience`] ([`Patience`]), then gives up
//! and says what it tried.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::Duration,
};

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use shoal_protocol::{BlobId, Link, blob::block_count};
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
    time::Instant,
};
use tracing::{debug, info};

use super::{
    error::FetchError,
    options::{FetchOptions, Progress},
};
use crate::{
    announce::{Announcer, Listed, Outcome, Status},
    dht::Found,
    interest::{Contact, Interest},
    node::Node,
};

/// How long trackers get to list a reachable peer before the DHT is asked too (at once if
/// every tracker failed).
pub const TRACKER_GRACE: Duration = Duration::from_secs(5);
/// First wait before dialling again a peer that was lost or could not be reached; doubles
/// each time up to [`REDIAL_MAX`].
pub const REDIAL_FIRST: Duration = Duration::from_millis(250);
/// Longest wait between two dials of one peer.
pub const REDIAL_MAX: Duration = Duration::from_secs(10);
/// How long one DHT provider lookup may take.
const DHT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How much longer the fetch waits for the node to end a lookup (it ends it at the timeout).
const DHT_LOOKUP_GRACE: Duration = Duration::from_secs(2);
/// Shortest time between two DHT provider lookups of one fetch.
const DHT_RETRY: Duration = Duration::from_secs(30);
/// Peers listed by trackers or found in the DHT, queued for the fetch.
const FOUND_QUEUE: usize = 64;
/// Most peers a fetch keeps addresses for and dials (named, listed, found); more are not
/// kept. Trackers list at most 66 per answer.
const MAX_KNOWN: usize = 512;

/// How long a fetch waits with no peer that can deliver before it gives up. `None`: forever.
#[derive(Clone, Copy, Debug)]
pub(super) struct Patience {
    limit: Option<Duration>,
    since: Option<Instant>,
}

impl Patience {
    pub(super) const fn new(limit: Option<Duration>) -> Self {
        Self { limit, since: None }
    }

    /// Waiting since `now`, unless already waiting.
    pub(super) fn wait(&mut self, now: Instant) {
        self.since.get_or_insert(now);
    }

    /// Not waiting (a peer delivers, or has requests in flight).
    pub(super) const fn stop(&mut self) {
        self.since = None;
    }

    /// When the fetch gives up, if it is waiting and patience has a limit.
    pub(super) fn deadline(&self) -> Option<Instant> {
        Some(self.since? + self.limit?)
    }

    /// Whether patience has run out at `now`.
    pub(super) fn exhausted(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }

    /// Publishes since when the fetch has been waiting (`None`: it is not) on `progress`.
    pub(super) fn show(&self, progress: &watch::Sender<Progress>) {
        let since = self.since.map(Instant::into_std);
        progress.send_if_modified(|p| std::mem::replace(&mut p.waiting_since, since) != since);
    }

    /// The limit, for messages.
    pub(super) fn describe(&self) -> String {
        self.limit
            .map_or_else(|| "forever".into(), |l| format!("{} s", l.as_secs()))
    }
}

/// Each tracker a fetch announces to and what its last announce gave.
pub(super) type Outcomes = watch::Receiver<Vec<(Multiaddr, Outcome)>>;

/// A peer for the fetch, and how it came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Arrival {
    /// Connected: dialled at an address a source gave, or found in the DHT.
    Connected(PeerId),
    /// It subscribed to our have-map of this blob: it is downloading it too.
    Subscribed(PeerId),
    /// It connected to us; it may have nothing to do with this blob.
    Contacted(PeerId),
    /// Our last connection to it closed: it is gone until it is dialled again (which the
    /// sources do, if they know it).
    Gone(PeerId),
}

impl Arrival {
    pub(super) const fn peer(self) -> PeerId {
        match self {
            Self::Connected(p) | Self::Subscribed(p) | Self::Contacted(p) | Self::Gone(p) => p,
        }
    }
}

/// Where the fetch learnt a peer's addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// The link's `peer` hints, or the peers given.
    Named,
    /// A tracker's list.
    Tracker,
    /// A DHT provider record.
    Dht,
    /// It subscribed to our have-map of the blob (dialled again when lost, like the above).
    Subscriber,
    /// It connected to us (never dialled: it may have nothing to do with the blob).
    Contact,
}

/// A peer (or, before the first dial, an address of an unknown peer) the fetch can dial.
#[derive(Debug)]
struct Target {
    /// Known once dialled, or from the address's `/p2p/` part.
    peer: Option<PeerId>,
    addrs: Vec<Multiaddr>,
    via: Via,
    connected: bool,
    dialling: bool,
    /// When to dial next (when not connected); `None`: not scheduled.
    next_dial: Option<Instant>,
    backoff: Duration,
    dials: u32,
    last_error: Option<String>,
}

/// Every source of peers of one fetch.
pub(super) struct Sources {
    node: Node,
    id: BlobId,
    targets: Vec<Target>,
    by_peer: HashMap<PeerId, usize>,
    /// No dial is due before this (a lower bound of the targets' `next_dial`; `None`: none
    /// is scheduled), so the download loop's calls of [`Sources::next`] do not scan the
    /// targets when nothing is due.
    next_wake: Option<Instant>,
    /// Peers caught lying: never dialled or handed out again.
    banned: HashSet<PeerId>,
    /// Hints that did not parse.
    bad_hints: Vec<String>,
    /// Whether any named address was given (for messages).
    named: bool,
    trackers: Vec<Multiaddr>,
    /// Peers connected, not yet handed out.
    ready: VecDeque<Arrival>,
    /// Dials running: the target and what came of it.
    dials: JoinSet<(usize, Result<PeerId, String>)>,
    /// Peers that contact us.
    interest: Interest,
    /// Peers trackers list.
    listed: mpsc::Receiver<Listed>,
    /// Peers DHT lookups found (already dialled by the node).
    found: mpsc::Receiver<(PeerId, Vec<Multiaddr>)>,
    /// Announcing to the trackers (none without trackers); told about progress.
    pub(super) announcer: Option<Announcer>,
    /// Provider lookups.
    pub(super) dht: DhtSearch,
    /// What the trackers answered (`None` without trackers).
    outcomes: Option<Outcomes>,
    /// The fetch has no usable peer ([`Sources::want_peers`]): ask the DHT when the
    /// trackers fail, after their grace, and again every [`DHT_RETRY`].
    hungry: bool,
    started: Instant,
}

impl Sources {
    /// Gathers the sources of `link` and `opts`, starts dialling the named peers and
    /// announcing to the trackers (and a DHT lookup, if nothing else names a peer).
    ///
    /// # Errors
    /// [`FetchError::NoPeersGiven`] when nothing names a peer or tracker and the DHT cannot
    /// be asked.
    pub(super) fn start(node: &Node, link: &Link, opts: &FetchOptions) -> Result<Self, FetchError> {
        let id = link.id;
        let mut bad_hints = Vec::new();
        let trackers = merge_addrs(&opts.trackers, &link.trackers, "tracker ", &mut bad_hints);
        let addrs = merge_addrs(&opts.peers, &link.peers, "", &mut bad_hints);
        if addrs.is_empty() && trackers.is_empty() && bad_hints.is_empty() && !node.dht_usable() {
            return Err(FetchError::NoPeersGiven {
                dht_off: !node.config().dht,
            });
        }
        let (listed_tx, listed) = mpsc::channel(FOUND_QUEUE);
        let total_hint = link
            .blob_len
            .and_then(|l| u32::try_from(block_count(l)).ok())
            .unwrap_or(0);
        let announcer = (!trackers.is_empty()).then(|| {
            Announcer::start_listing(
                node,
                id,
                trackers.clone(),
                Status::leecher(0, total_hint),
                listed_tx,
            )
        });
        let (found_tx, found) = mpsc::channel(FOUND_QUEUE);
        let outcomes = announcer.as_ref().map(Announcer::outcomes);
        let mut this = Self {
            node: node.clone(),
            id,
            targets: Vec::new(),
            by_peer: HashMap::new(),
            next_wake: None,
            banned: HashSet::new(),
            bad_hints,
            named: !addrs.is_empty(),
            trackers,
            ready: VecDeque::new(),
            dials: JoinSet::new(),
            interest: node.interest(id),
            listed,
            found,
            announcer,
            dht: DhtSearch::new(node, id, found_tx),
            outcomes,
            hungry: false,
            started: Instant::now(),
        };
        for addr in addrs {
            this.add(peer_of(&addr), vec![addr], Via::Named);
        }
        if !this.named && this.trackers.is_empty() {
            this.dht.start(); // nothing else names a peer: ask the DHT at once
        }
        this.dial_due();
        Ok(this)
    }

    /// What the trackers answer, as they answer (`None` without trackers).
    pub(super) fn outcomes(&self) -> Option<Outcomes> {
        self.announcer.as_ref().map(Announcer::outcomes)
    }

    /// The first peers: every named peer that answers its first dial, or else the first
    /// peer any source gives. Waits up to `patience`.
    ///
    /// # Errors
    /// [`FetchError::Unreachable`] when no peer connected within `patience`, saying what
    /// each source gave.
    pub(super) async fn first(
        &mut self,
        patience: &mut Patience,
        progress: &watch::Sender<Progress>,
    ) -> Result<Vec<PeerId>, FetchError> {
        patience.wait(Instant::now());
        let mut peers = Vec::new();
        loop {
            // Every named peer's first dial is over (or none was named): take what answered.
            let named_pending = self
                .targets
                .iter()
                .any(|t| t.via == Via::Named && t.dials == 0);
            while let Some(a) = self.ready.pop_front() {
                if let Arrival::Gone(p) = a {
                    peers.retain(|q| *q != p);
                } else if !peers.contains(&a.peer()) {
                    peers.push(a.peer());
                }
            }
            if !peers.is_empty() && !named_pending {
                break;
            }
            if !named_pending {
                // Waiting, once the named peers' first dials are over.
                self.want_peers();
                patience.show(progress);
            }
            let deadline = patience.deadline();
            tokio::select! {
                a = self.next() => self.ready.push_front(a),
                () = sleep_until(deadline) => {
                    return Err(FetchError::Unreachable {
                        tried: self.describe(&patience.describe()),
                        dht_off: !self.node.config().dht,
                    });
                }
            }
        }
        patience.stop();
        patience.show(progress);
        info!(blob = %self.id, peers = peers.len(), "connected");
        Ok(peers)
    }

    /// The next peer that connected (or contacted us, or left) if one did already; meanwhile
    /// takes in what the sources said and starts the dials that are due.
    pub(super) fn try_next(&mut self) -> Option<Arrival> {
        futures::FutureExt::now_or_never(self.next())
    }

    /// The next peer that connects (or contacts us, or leaves). Cancel-safe.
    pub(super) async fn next(&mut self) -> Arrival {
        loop {
            if let Some(a) = self.ready.pop_front() {
                if !matches!(a, Arrival::Gone(_)) {
                    self.hungry = false; // the caller says again if this one does not help
                }
                return a;
            }
            let wake = self.dial_due();
            // While hungry: the moments the DHT may be asked (again).
            let grace = self.started + TRACKER_GRACE;
            let dht_due = self
                .hungry
                .then(|| {
                    if Instant::now() < grace {
                        Some(grace)
                    } else {
                        self.dht.next_allowed()
                    }
                })
                .flatten();
            let hungry = self.hungry;
            tokio::select! {
                changed = async {
                    match self.outcomes.as_mut() {
                        Some(o) => o.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                }, if hungry => {
                    if changed {
                        self.want_peers();
                    } else {
                        self.outcomes = None; // the announcer is gone
                    }
                }
                () = sleep_until(dht_due) => self.want_peers(),
                Some(done) = self.dials.join_next() => {
                    if let Ok((target, result)) = done {
                        self.dialled(target, result);
                    }
                }
                Some(l) = self.listed.recv() => {
                    self.add(Some(l.peer), l.addrs, Via::Tracker);
                }
                Some((peer, addrs)) = self.found.recv() => {
                    let t = self.add(Some(peer), addrs, Via::Dht);
                    if let Some(t) = t {
                        self.dialled(t, Ok(peer));
                    }
                }
                Some(contact) = self.interest.peers.recv() => {
                    let arrival = match contact {
                        Contact::Subscribed(p) => Arrival::Subscribed(p),
                        Contact::Connected(p) => Arrival::Contacted(p),
                        Contact::Disconnected(p) => {
                            self.lost(p);
                            return Arrival::Gone(p);
                        }
                    };
                    let peer = arrival.peer();
                    if self.banned.contains(&peer) {
                        continue;
                    }
                    self.hungry = false;
                    let via = match arrival {
                        Arrival::Subscribed(_) => Via::Subscriber,
                        _ => Via::Contact,
                    };
                    if let Some(t) = self.add(Some(peer), Vec::new(), via) {
                        let target = &mut self.targets[t];
                        target.connected = true;
                        target.next_dial = None;
                        if via == Via::Subscriber && target.via == Via::Contact {
                            target.via = Via::Subscriber;
                        }
                    }
                    return arrival;
                }
                () = self.dht.done() => {}
                () = sleep_until(wake) => {}
            }
        }
    }

    /// The fetch has no usable peer: ask the DHT too (at most one lookup per
    /// [`DHT_RETRY`]) once the trackers had [`TRACKER_GRACE`] to list one, or at once when
    /// every tracker failed or there is none, or every named peer failed its dial.
    pub(super) fn want_peers(&mut self) {
        self.hungry = true;
        let named_failed = self.named
            && self
                .targets
                .iter()
                .filter(|t| t.via == Via::Named)
                .all(|t| !t.connected && t.dials > 0);
        let trackers_out = self.outcomes.as_ref().is_none_or(|o| {
            o.borrow().iter().all(|(_, x)| {
                matches!(
                    x,
                    Outcome::Failed(_) | Outcome::Refused(_) | Outcome::TakenDown
                )
            })
        });
        if named_failed || trackers_out || self.started.elapsed() >= TRACKER_GRACE {
            self.dht.start();
        }
    }

    /// The fetch lost `peer` (its connection or its have-map stream ended): dial it again
    /// soon, at every address known for it, with back-off while it does not answer. Peers
    /// the sources never gave and that never contacted us are not dialled.
    pub(super) fn lost(&mut self, peer: PeerId) {
        let Some(&t) = self.by_peer.get(&peer) else {
            return;
        };
        if self.banned.contains(&peer) || self.targets[t].via == Via::Contact {
            return;
        }
        let target = &mut self.targets[t];
        if target.connected {
            debug!(blob = %self.id, %peer, "peer lost; dialling it again");
            target.connected = false;
            target.backoff = REDIAL_FIRST;
            self.dial_at(t, Instant::now());
        }
    }

    /// `peer` sent bad data: never dial or hand it out again.
    pub(super) fn ban(&mut self, peer: PeerId) {
        self.banned.insert(peer);
        if let Some(&t) = self.by_peer.get(&peer) {
            let target = &mut self.targets[t];
            target.connected = false;
            target.next_dial = None;
        }
    }

    /// Adds what a source says about a peer (or an address), merging with what is known.
    /// Returns its target, unless too many are known or it is banned.
    fn add(&mut self, peer: Option<PeerId>, addrs: Vec<Multiaddr>, via: Via) -> Option<usize> {
        if peer.is_some_and(|p| self.banned.contains(&p)) {
            return None;
        }
        if let Some(&t) = peer.as_ref().and_then(|p| self.by_peer.get(p)) {
            let target = &mut self.targets[t];
            let mut new = Vec::new();
            for a in addrs {
                if !target.addrs.contains(&a) {
                    target.addrs.push(a.clone());
                    new.push(a);
                }
            }
            // A dial of the addresses known before may take its whole timeout (a NATed
            // peer's private address in a link hint): dial the new ones (a tracker's relayed
            // address) beside it now.
            if target.dialling && !target.connected && !new.is_empty() {
                self.spawn_dial(t, new);
                return Some(t);
            }
            // A peer listed again that we could not reach: try it again now.
            if !target.connected
                && !target.dialling
                && !matches!(via, Via::Contact | Via::Subscriber)
            {
                self.dial_at(t, Instant::now());
            }
            return Some(t);
        }
        if self.targets.len() >= MAX_KNOWN {
            return None;
        }
        let mut addrs = addrs;
        if addrs.is_empty() {
            addrs.extend(peer.map(|p| Multiaddr::empty().with(Protocol::P2p(p))));
        }
        let t = self.targets.len();
        self.targets.push(Target {
            peer,
            addrs,
            via,
            connected: false,
            dialling: false,
            next_dial: None,
            backoff: REDIAL_FIRST,
            dials: 0,
            last_error: None,
        });
        if let Some(p) = peer {
            self.by_peer.insert(p, t);
        }
        if !matches!(via, Via::Contact | Via::Subscriber) {
            self.dial_at(t, Instant::now());
        }
        Some(t)
    }

    /// Schedules a dial of target `t` at `at`.
    fn dial_at(&mut self, t: usize, at: Instant) {
        self.targets[t].next_dial = Some(at);
        self.next_wake = Some(self.next_wake.map_or(at, |w| w.min(at)));
    }

    /// Starts the dials that are due; returns when the next one is.
    fn dial_due(&mut self) -> Option<Instant> {
        let now = Instant::now();
        if self.next_wake.is_none_or(|w| w > now) {
            return self.next_wake;
        }
        let mut next_wake = None::<Instant>;
        let mut due = Vec::new();
        for (t, target) in self.targets.iter_mut().enumerate() {
            if target.connected || target.dialling {
                continue;
            }
            match target.next_dial {
                None => continue,
                Some(at) if at > now => {
                    next_wake = Some(next_wake.map_or(at, |w| w.min(at)));
                    continue;
                }
                Some(_) => {}
            }
            target.dialling = true;
            target.next_dial = None;
            due.push((t, target.addrs.clone()));
        }
        for (t, addrs) in due {
            self.spawn_dial(t, addrs);
        }
        self.next_wake = next_wake;
        next_wake
    }

    /// Dials target `t` at `addrs` in the background; [`Sources::dialled`] takes the result.
    fn spawn_dial(&mut self, t: usize, addrs: Vec<Multiaddr>) {
        let timeout = self.node.config().dial_timeout;
        let node = self.node.clone();
        self.dials.spawn(async move {
            // All addresses of one peer at once (a NATed peer's direct ones may never
            // answer; its relayed one does): the first connection wins.
            if let Some((peer, bare)) = same_peer(&addrs) {
                return (
                    t,
                    node.dial_peer(peer, bare, timeout)
                        .await
                        .map_err(|e| e.to_string()),
                );
            }
            // Otherwise one address at a time: one connection is enough.
            let mut why = String::from("no address known");
            for addr in addrs {
                match node.dial(addr.clone(), timeout).await {
                    Ok(peer) => return (t, Ok(peer)),
                    Err(e) => why = e.to_string(),
                }
            }
            (t, Err(why))
        });
    }

    /// A dial of target `t` ended.
    fn dialled(&mut self, t: usize, result: Result<PeerId, String>) {
        let target = &mut self.targets[t];
        target.dialling = false;
        target.dials += 1;
        match result {
            Ok(peer) => {
                target.connected = true;
                target.last_error = None;
                target.backoff = REDIAL_FIRST;
                if target.peer.is_none() {
                    target.peer = Some(peer);
                    self.by_peer.entry(peer).or_insert(t);
                }
                if !self.banned.contains(&peer) {
                    self.ready.push_back(Arrival::Connected(peer));
                }
            }
            // A dial that ended after another one of the same target connected.
            Err(_) if target.connected => {}
            Err(why) => {
                debug!(blob = %self.id, target = t, %why, "dial failed; trying again later");
                let at = Instant::now() + target.backoff;
                target.last_error = Some(why);
                target.backoff = (target.backoff * 2).min(REDIAL_MAX);
                self.dial_at(t, at);
            }
        }
    }

    /// What each source gave, when none gave a peer that could deliver; `patience` says
    /// how long the fetch waited.
    pub(super) fn describe(&self, patience: &str) -> Vec<String> {
        let mut tried = self.bad_hints.clone();
        for t in self.targets.iter() {
            let what = match t.via {
                Via::Named => "",
                Via::Tracker => "listed by a tracker: ",
                Via::Dht => "found in the DHT: ",
                Via::Subscriber => "downloading it too: ",
                Via::Contact => continue,
            };
            let addrs: Vec<String> = t.addrs.iter().map(ToString::to_string).collect();
            let state = match (&t.last_error, t.connected) {
                (_, true) => "connected".to_string(),
                (Some(e), false) => format!("{e} (dialled {} time(s))", t.dials),
                (None, false) => "not reached".to_string(),
            };
            tried.push(format!("{what}{}: {state}", addrs.join(" or ")));
        }
        if !self.named {
            tried.push("peers: none named in the link or given with --peer".into());
        }
        match &self.announcer {
            None => tried.push("trackers: none named in the link or given with --tracker".into()),
            Some(a) => tried.extend(a.outcomes().borrow().iter().map(|(t, o)| match o {
                Outcome::Failed(why) | Outcome::Refused(why) => format!("tracker {t}: {why}"),
                Outcome::TakenDown => format!("tracker {t}: the blob was taken down there"),
                Outcome::Pending => format!("tracker {t}: no answer within {patience}"),
                Outcome::Answered { seeders: 0, .. } => format!(
                    "tracker {t}: nobody is seeding this file yet: the tracker lists 0 seeders"
                ),
                Outcome::Answered { peers, seeders } => {
                    format!("tracker {t}: listed {peers} peer(s), {seeders} of them seeding")
                }
            })),
        }
        tried.push(self.dht.describe());
        tried
    }
}

/// The peer id at the end of `addr` (`/p2p/<id>`), if any.
fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(p)) => Some(p),
        _ => None,
    }
}

/// When every address in `addrs` ends in `/p2p/<id>` of one peer: that peer and the
/// addresses without it (a bare `/p2p/<id>` gives none, which dials the addresses the node
/// knows for the peer).
fn same_peer(addrs: &[Multiaddr]) -> Option<(PeerId, Vec<Multiaddr>)> {
    let peer = peer_of(addrs.first()?)?;
    let mut bare = Vec::with_capacity(addrs.len());
    for a in addrs {
        if peer_of(a) != Some(peer) {
            return None;
        }
        let mut a = a.clone();
        a.pop();
        if !a.is_empty() {
            bare.push(a);
        }
    }
    Some((peer, bare))
}

/// Sleeps until `t`; never returns without one (for `select!`).
pub(super) async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
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
/// Providers that answer a dial are sent on `found`, so bootstrap and the main phase use
/// them like any other peer. A running lookup is aborted on drop.
pub(super) struct DhtSearch {
    node: Node,
    id: BlobId,
    found: mpsc::Sender<(PeerId, Vec<Multiaddr>)>,
    last: Option<Instant>,
    running: Option<tokio::task::JoinHandle<String>>,
    /// What the last finished lookup gave, for error messages.
    outcome: Option<String>,
}

impl DhtSearch {
    fn new(node: &Node, id: BlobId, found: mpsc::Sender<(PeerId, Vec<Multiaddr>)>) -> Self {
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
        let now = Instant::now();
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

    /// When the next lookup may start, if none runs (`None` while one runs, or without the
    /// DHT).
    fn next_allowed(&self) -> Option<Instant> {
        if self.running.is_some() || !self.node.dht_usable() {
            return None;
        }
        Some(self.last.map_or_else(Instant::now, |t| t + DHT_RETRY))
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
async fn dht_lookup(
    node: Node,
    id: BlobId,
    found: mpsc::Sender<(PeerId, Vec<Multiaddr>)>,
) -> String {
    let mut providers = node.provider_stream(id, DHT_LOOKUP_TIMEOUT).await;
    let (mut seen, mut reached) = (0usize, 0usize);
    let _ = tokio::time::timeout(DHT_LOOKUP_TIMEOUT + DHT_LOOKUP_GRACE, async {
        while let Some(f) = providers.recv().await {
            seen += 1;
            if let Found::Reachable(peer, addrs) = f {
                reached += 1;
                let addrs = addrs
                    .into_iter()
                    .map(|a| a.with_p2p(peer).unwrap_or_else(|a| a))
                    .collect();
                let _ = found.try_send((peer, addrs));
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
