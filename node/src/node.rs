//! The libp2p node: one event loop owns the `Swarm`; everyone else holds a [`Node`] handle
//! (commands on a bounded channel, replies on oneshots). Bulk data runs over raw
//! `libp2p-stream` streams: one `/shoal/blob/1` request per stream, served by
//! [`crate::serve`] and asked by [`crate::wire`].
//!
//! The node offers what the rest of the crate builds on: dialling, tracker requests, the DHT,
//! disconnecting liars, a [`Client`] for block requests and have-map subscriptions, and
//! [`Node::interest`] (peers that subscribe to a blob being downloaded). It imports none of
//! the modules that use it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Swarm, autonat, dcutr, identify,
    identity::Keypair,
    ping, relay, request_response,
    swarm::{
        ConnectionId, SwarmEvent,
        behaviour::toggle::Toggle,
        dial_opts::{DialOpts, PeerCondition},
    },
    upnp,
};
use shoal_protocol::{
    BlobId,
    tracker::{Request as TrackerRequest, Response as TrackerResponse},
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::{
    behaviour::{Behaviour, BehaviourEvent},
    config::Config,
    dht::{self, Dht, DhtError, Found},
    interest::{Contact, Interest, Interests},
    reach::{Action, Punch, Reach, Reachability},
    serve::{self, Service},
    stats::Stats,
    store::Store,
    tracker_codec,
    wire::{Client, blob_protocol, have_protocol},
};

/// Bound of the command queue into the event loop.
const COMMAND_QUEUE: usize = 64;
/// How much longer than a lookup's own timeout a caller waits for its answer (the event loop
/// answers at the timeout; this only covers a stalled loop).
const LOOKUP_GRACE: Duration = Duration::from_secs(2);

enum Command {
    Dial {
        /// What the caller asked for (for the log).
        addr: Multiaddr,
        /// The peer, when known (then an existing connection answers at once).
        peer: Option<PeerId>,
        opts: DialOpts,
        reply: oneshot::Sender<Result<PeerId, String>>,
    },
    Disconnect {
        peer: PeerId,
    },
    Tracker {
        peer: PeerId,
        addr: Multiaddr,
        request: TrackerRequest,
        reply: oneshot::Sender<Result<TrackerResponse, String>>,
    },
    Provide {
        id: BlobId,
        reply: oneshot::Sender<Result<(), DhtError>>,
    },
    StopProviding {
        id: BlobId,
    },
    FindProviders {
        id: BlobId,
        timeout: Duration,
        sink: mpsc::Sender<Found>,
    },
    /// Answer once the reservation at `relay` (if this node wants one there) is settled.
    Settle {
        relay: PeerId,
        reply: oneshot::Sender<()>,
    },
    #[cfg(feature = "test-utils")]
    StoredProviders {
        id: BlobId,
        reply: oneshot::Sender<Vec<PeerId>>,
    },
}

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Building the transport failed.
    #[error("building the libp2p transport")]
    Transport(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Listening on an address failed (in use, not local, bad multiaddr).
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A DHT bootstrap address does not end in `/p2p/<peer id>`.
    #[error("DHT bootstrap address {addr} must end in /p2p/<peer id>")]
    Bootstrap {
        /// The address.
        addr: Multiaddr,
    },
}

/// Why connecting to a peer failed.
#[derive(Debug, thiserror::Error, Clone)]
#[error("{addr}: {why}")]
pub struct DialError {
    /// The address tried.
    pub addr: Multiaddr,
    /// What went wrong.
    pub why: String,
}

/// A running node. Cheap to clone; the node stops when [`Node::shutdown`] is called or the
/// cancellation token it was started with is cancelled.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    listen: watch::Receiver<Vec<Multiaddr>>,
    stats: Arc<Stats>,
    store: Arc<Store>,
    shutdown: CancellationToken,
    config: Config,
    /// Fetches in progress, told about peers that subscribe to our have-map of their blob
    /// (someone downloading the same blob: a peer worth asking too).
    interests: Arc<Interests>,
    /// Peers a tracker listed as seed nodes: downloads ask them last
    /// ([`shoal_protocol::schedule::Scheduler::set_last_resort`]). Bounded.
    seed_nodes: Mutex<std::collections::HashSet<PeerId>>,
    /// Reachability, relays and connection kinds; written by the event loop.
    reach: Arc<Mutex<Reach>>,
    /// Woken when a connection comes or goes, or a hole punch ends.
    conn_change: Arc<tokio::sync::Notify>,
}

/// Most seed nodes remembered (a tracker lists at most 16 per swarm).
const MAX_SEED_NODES_KNOWN: usize = 1024;
/// How long a dial that ends on a relayed connection waits for the hole punch that follows
/// (DCUtR takes a round trip or two and a dial) before the caller uses the peer: streams opened
/// meanwhile would go through the relay, or die when the relayed connection is closed.
const PUNCH_WAIT: Duration = Duration::from_secs(3);

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.inner.peer_id)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts a node with identity `keypair`, serving the blobs in `store`. Must be called
    /// within a tokio runtime.
    ///
    /// # Errors
    /// If the transport cannot be built or a listen address cannot be bound.
    pub fn start(
        config: Config,
        keypair: Keypair,
        store: Arc<Store>,
        shutdown: CancellationToken,
    ) -> Result<Self, StartError> {
        let idle = config.idle_timeout;
        let bootstrap = config
            .bootstrap
            .iter()
            .map(|addr| {
                dht::split_p2p(addr).ok_or_else(|| StartError::Bootstrap { addr: addr.clone() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut swarm =
            crate::transport::build_relay_client_swarm(keypair, idle, |key, relay_client| {
                let local = key.public().to_peer_id();
                let (relay_server, autonat_server, upnp) = Behaviour::reachability(local, &config);
                Behaviour {
                    limits: libp2p::connection_limits::Behaviour::new(
                        libp2p::connection_limits::ConnectionLimits::default()
                            .with_max_established(Some(config.max_connections))
                            .with_max_established_per_peer(Some(config.max_connections_per_peer))
                            .with_max_pending_incoming(Some(64)),
                    ),
                    stream: libp2p_stream::Behaviour::new(),
                    identify: identify::Behaviour::new(identify::Config::new(
                        "/shoal/id/1".into(),
                        key.public(),
                    )),
                    ping: ping::Behaviour::default(),
                    tracker: tracker_codec::behaviour(
                        request_response::ProtocolSupport::Outbound,
                        config.request_timeout,
                    ),
                    kad: Toggle::from(config.dht.then(|| dht::behaviour(local, &config))),
                    relay_client,
                    dcutr: dcutr::Behaviour::new(local),
                    autonat: autonat::v2::client::Behaviour::default(),
                    relay_server,
                    autonat_server,
                    upnp,
                }
            })
            .map_err(StartError::Transport)?;
        if let Some(relay) = swarm.behaviour_mut().relay_server.as_mut() {
            // A server relays from the start: libp2p's relay would wait for an external
            // address confirmed by AutoNAT, which a server on a public address has anyway.
            relay.set_status(Some(relay::Status::Enable));
        }
        for addr in &config.listen {
            let listen_error = |source| StartError::Listen {
                addr: addr.clone(),
                source,
            };
            crate::transport::probe_listen(addr).map_err(|e| listen_error(e.into()))?;
            swarm
                .listen_on(addr.clone())
                .map_err(|e| listen_error(e.into()))?;
        }
        let peer_id = *swarm.local_peer_id();
        let mut dht = Dht::new(peer_id, bootstrap);
        if config.dht {
            dht.log_start();
            if dht.has_bootstrap() {
                dht.rebootstrap(&mut swarm);
            }
        }
        let mut control = swarm.behaviour().stream.new_control();
        let incoming = control
            .accept(blob_protocol())
            .expect("the blob protocol is registered once, here");
        let incoming_have = control
            .accept(have_protocol())
            .expect("the have protocol is registered once, here");
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (listen_tx, listen) = watch::channel(Vec::new());
        let stats = Arc::new(Stats::default());
        let interests = Arc::new(Interests::default());
        let reach = Arc::new(Mutex::new(Reach::new(config.use_relays)));
        let conn_change = Arc::new(tokio::sync::Notify::new());
        serve::spawn(
            Service {
                config: config.clone(),
                store: store.clone(),
                stats: stats.clone(),
                interests: interests.clone(),
                client: Client::new(control.clone(), config.request_timeout),
                shutdown: shutdown.clone(),
                reach: reach.clone(),
            },
            incoming,
            incoming_have,
        );
        let inner = Arc::new(Inner {
            peer_id,
            commands,
            control,
            listen,
            stats: stats.clone(),
            store,
            shutdown: shutdown.clone(),
            config,
            interests,
            seed_nodes: Mutex::default(),
            reach: reach.clone(),
            conn_change: conn_change.clone(),
        });
        tokio::spawn(event_loop(
            EventLoop {
                swarm,
                dht,
                listen: listen_tx,
                stats,
                interests: inner.interests.clone(),
                reach,
                conn_change,
                dials: HashMap::new(),
                tracker_calls: HashMap::new(),
                dial_errors: HashMap::new(),
                dialled_addrs: HashMap::new(),
                identified: HashMap::new(),
                relay_server: inner
                    .config
                    .relay_server
                    .map(|_| crate::reach::names_loopback(&inner.config.listen)),
                settling: Vec::new(),
            },
            command_rx,
            shutdown.clone(),
        ));
        info!(peer = %peer_id, "node started");
        Ok(Self { inner })
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.inner.peer_id
    }

    /// Live counters.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// The store this node serves from.
    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// The node's configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Cancelled when the node stops.
    pub(crate) fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// How peers can reach this node now: directly (an AutoNAT server dialled an address of
    /// its own back), through a UPnP mapping, only through a relay, or not known yet.
    pub fn reachability(&self) -> Reachability {
        self.reach().status()
    }

    /// Addresses of this node confirmed reachable from outside (UPnP mappings first).
    pub fn external_addrs(&self) -> Vec<Multiaddr> {
        self.reach().external()
    }

    /// The hole punches this node took part in, oldest first (bounded).
    pub fn punches(&self) -> Vec<Punch> {
        self.reach().punches().cloned().collect()
    }

    /// Whether every connection to `peer` goes through a relay (and there is one).
    pub fn only_relayed(&self, peer: &PeerId) -> bool {
        self.reach().only_relayed(peer)
    }

    fn reach(&self) -> std::sync::MutexGuard<'_, Reach> {
        self.inner.reach.lock().expect("reach lock poisoned")
    }

    /// At most `max` addresses to give trackers: confirmed external ones, then the listen
    /// addresses (unspecified ones left out), then relayed ones, for which room is kept
    /// (up to [`crate::reach::MAX_RELAYS`]): a node behind NAT is reachable through them
    /// only (a tracker drops its private addresses).
    pub async fn announce_addrs(&self, max: usize) -> Vec<Multiaddr> {
        let listen = self.listen_addrs(Duration::ZERO).await;
        let (relayed, direct): (Vec<_>, Vec<_>) = listen
            .into_iter()
            .filter(|a| crate::reach::advertise_listen_addr(a, true) || crate::reach::is_relayed(a))
            .partition(crate::reach::is_relayed);
        let room = max.saturating_sub(relayed.len().min(crate::reach::MAX_RELAYS));
        let mut addrs = self.external_addrs();
        for a in direct {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        addrs.truncate(room);
        addrs.extend(relayed);
        addrs.truncate(max);
        addrs
    }

    /// Waits (at most `timeout`) until this node knows whether `relay`, which it is
    /// connected to or about to be, is a relay, and until a reservation there that it
    /// wants is accepted or refused: an announce sent then carries the relayed address.
    pub async fn settle_at(&self, relay: PeerId, timeout: Duration) {
        let (reply, rx) = oneshot::channel();
        if self
            .inner
            .commands
            .send(Command::Settle { relay, reply })
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(timeout, rx).await;
        }
    }

    /// Remembers that a tracker listed `peer` as a seed node.
    pub fn note_seed_node(&self, peer: PeerId) {
        let mut set = self
            .inner
            .seed_nodes
            .lock()
            .expect("seed-node lock poisoned");
        if set.len() < MAX_SEED_NODES_KNOWN {
            set.insert(peer);
        }
    }

    /// Whether a tracker listed `peer` as a seed node.
    pub fn is_seed_node(&self, peer: &PeerId) -> bool {
        self.inner
            .seed_nodes
            .lock()
            .expect("seed-node lock poisoned")
            .contains(peer)
    }

    /// A handle to open and accept raw libp2p streams on this node's connections (for
    /// protocols of its own beside Shoal's; accepting a Shoal protocol fails).
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.inner.control.clone()
    }

    /// Opens block requests and have-map subscriptions to peers, with the configured
    /// request timeout.
    pub(crate) fn client(&self) -> Client {
        Client::new(
            self.inner.control.clone(),
            self.inner.config.request_timeout,
        )
    }

    /// Registers a fetch of `id`: peers that subscribe to our have-map of it are sent on
    /// the returned receiver. One registration per blob (a later one replaces it).
    pub(crate) fn interest(&self, id: BlobId) -> Interest {
        self.inner.interests.register(id)
    }

    /// The addresses the node listens on, waiting up to `timeout` for at least one.
    /// Cancel-safe.
    pub async fn listen_addrs(&self, timeout: Duration) -> Vec<Multiaddr> {
        let mut rx = self.inner.listen.clone();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|a| !a.is_empty())).await;
        rx.borrow().clone()
    }

    /// Connects to `addr` (which may end in `/p2p/<peer id>`) and returns the peer's id.
    /// Cancel-safe (an abandoned dial completes in the background).
    ///
    /// # Errors
    /// If the connection fails or does not complete within `timeout`.
    pub async fn dial(&self, addr: Multiaddr, timeout: Duration) -> Result<PeerId, DialError> {
        let peer = dht::split_p2p(&addr).map(|(p, _)| p);
        let opts = dial_opts(&addr);
        self.dial_with(addr, peer, opts, timeout).await
    }

    /// Runs the dial `opts` (`addr` names it in errors; `peer`, when known, lets an existing
    /// connection answer at once), then waits for a hole punch if it ended relayed.
    async fn dial_with(
        &self,
        addr: Multiaddr,
        peer: Option<PeerId>,
        opts: DialOpts,
        timeout: Duration,
    ) -> Result<PeerId, DialError> {
        let err = |why: String| DialError {
            addr: addr.clone(),
            why,
        };
        let (reply, rx) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Dial {
                addr: addr.clone(),
                peer,
                opts,
                reply,
            })
            .await
            .map_err(|_| err("node is shut down".into()))?;
        let peer = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result.map_err(err)?,
            Ok(Err(_)) => return Err(err("node is shut down".into())),
            Err(_) => return Err(err(format!("no connection within {timeout:?}"))),
        };
        self.await_punch(peer).await;
        Ok(peer)
    }

    /// When every connection to `peer` is relayed: waits (at most [`PUNCH_WAIT`]) for the
    /// hole punch DCUtR runs over it to end, so the caller's streams go direct when it works.
    async fn await_punch(&self, peer: PeerId) {
        let started = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + PUNCH_WAIT;
        loop {
            let changed = self.inner.conn_change.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let reach = self.reach();
                if !reach.only_relayed(&peer) || reach.punch_ended_since(&peer, started) {
                    return;
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                debug!(%peer, "no hole punch yet; using the relayed connection");
                return;
            }
        }
    }

    /// Connects to `peer` on any of `addrs` (without `/p2p/`), tried at once (libp2p dials
    /// up to 8 at a time and keeps the first that answers): a peer behind NAT is listed with
    /// addresses that may not answer at all and a relayed one that does. Cancel-safe.
    ///
    /// # Errors
    /// If no address connects within `timeout`; the error names the first address.
    pub async fn dial_peer(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        timeout: Duration,
    ) -> Result<PeerId, DialError> {
        let shown = addrs
            .first()
            .cloned()
            .unwrap_or_else(Multiaddr::empty)
            .with(libp2p::multiaddr::Protocol::P2p(peer));
        // Beside another dial of the same peer (at other addresses): allowed.
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::Disconnected)
            .addresses(crate::reach::one_circuit_per_relay(addrs))
            .build();
        self.dial_with(shown, Some(peer), opts, timeout).await
    }

    /// Sends one request to the tracker at `addr` (a multiaddr ending in `/p2p/<peer id>`)
    /// and returns its answer. Cancel-safe.
    ///
    /// # Errors
    /// If `addr` names no peer id, the tracker cannot be reached, or it does not answer
    /// within the request timeout.
    pub async fn tracker_request(
        &self,
        addr: &Multiaddr,
        request: TrackerRequest,
    ) -> Result<TrackerResponse, DialError> {
        let err = |why: String| DialError {
            addr: addr.clone(),
            why,
        };
        let mut bare = addr.clone();
        let Some(libp2p::multiaddr::Protocol::P2p(peer)) = bare.pop() else {
            return Err(err("a tracker address must end in /p2p/<peer id>".into()));
        };
        let (reply, rx) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Tracker {
                peer,
                addr: bare,
                request,
                reply,
            })
            .await
            .map_err(|_| err("node is shut down".into()))?;
        // request-response applies the request timeout itself; this bounds the dial too.
        let limit = self.inner.config.dial_timeout + self.inner.config.request_timeout;
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(result)) => result.map_err(err),
            Ok(Err(_)) => Err(err("node is shut down".into())),
            Err(_) => Err(err(format!("no answer within {limit:?}"))),
        }
    }

    /// Announces in the DHT that this node provides blob `id` (the key is the blob id's 32
    /// raw bytes; the record names this node's peer id, never a content key). The record is
    /// kept locally and republished every `Config::dht_republish_interval` until
    /// [`Node::stop_providing`]; this waits for the first publication. Cancel-safe (the
    /// record stays provided).
    ///
    /// # Errors
    /// [`DhtError::NoPeers`] if no DHT peer took the record now (it is republished later),
    /// [`DhtError::Disabled`] without the DHT, and [`DhtError::StoreFull`],
    /// [`DhtError::Busy`], [`DhtError::Timeout`] or [`DhtError::Shutdown`].
    pub async fn provide(&self, id: BlobId) -> Result<(), DhtError> {
        if !self.inner.config.dht {
            return Err(DhtError::Disabled);
        }
        let (reply, rx) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Provide { id, reply })
            .await
            .map_err(|_| DhtError::Shutdown)?;
        let limit = dht::QUERY_TIMEOUT + LOOKUP_GRACE;
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(DhtError::Shutdown),
            Err(_) => Err(DhtError::Timeout(limit)),
        }
    }

    /// Stops republishing this node's provider record for `id`. Records other nodes hold
    /// expire after their TTL (`Config::dht_provider_ttl`). Best effort; does nothing
    /// without the DHT or once the node is shut down.
    pub async fn stop_providing(&self, id: BlobId) {
        if self.inner.config.dht {
            let _ = self
                .inner
                .commands
                .send(Command::StopProviding { id })
                .await;
        }
    }

    /// Looks up providers of blob `id` in the DHT for at most `timeout` and returns them
    /// (at most [`dht::MAX_PROVIDERS`], never this node), each with the addresses known for
    /// it. Providers are dialled as they are found: those that answered are connected when
    /// this returns; those that did not come with no addresses. Empty without the DHT or
    /// when nothing was found. Cancel-safe.
    pub async fn find_providers(
        &self,
        id: BlobId,
        timeout: Duration,
    ) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let mut found = self.provider_stream(id, timeout).await;
        let mut providers = Vec::new();
        let _ = tokio::time::timeout(timeout + LOOKUP_GRACE, async {
            while let Some(f) = found.recv().await {
                providers.push(match f {
                    Found::Reachable(p, addrs) => (p, addrs),
                    Found::Unreachable(p) => (p, Vec::new()),
                });
            }
        })
        .await;
        providers
    }

    /// Starts a provider lookup of `id` reporting each provider found as soon as it is known
    /// whether it answers; the stream ends with the lookup (at the latest after `timeout`).
    /// Cancel-safe: dropping the receiver only stops the reports.
    pub(crate) async fn provider_stream(
        &self,
        id: BlobId,
        timeout: Duration,
    ) -> mpsc::Receiver<Found> {
        let (sink, found) = mpsc::channel(dht::MAX_PROVIDERS);
        if self.inner.config.dht {
            let _ = self
                .inner
                .commands
                .send(Command::FindProviders { id, timeout, sink })
                .await;
        }
        found
    }

    /// Test only: the providers of `id` whose unexpired records this node's DHT store holds
    /// (its own record included if it provides `id`).
    #[cfg(feature = "test-utils")]
    pub async fn stored_providers(&self, id: BlobId) -> Vec<PeerId> {
        let (reply, rx) = oneshot::channel();
        if self
            .inner
            .commands
            .send(Command::StoredProviders { id, reply })
            .await
            .is_err()
        {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Whether a DHT lookup can reach anyone: the DHT is on and bootstrap peers are
    /// configured or the routing table holds peers.
    pub fn dht_usable(&self) -> bool {
        self.inner.config.dht
            && (!self.inner.config.bootstrap.is_empty()
                || self.inner.stats.dht_peers.load(Ordering::Relaxed) > 0)
    }

    /// Closes every connection to `peer` and drops it from the DHT routing table (used when
    /// it sent data that does not verify). Best effort: does nothing if the node is shutting
    /// down.
    pub async fn disconnect(&self, peer: PeerId) {
        let _ = self.inner.commands.send(Command::Disconnect { peer }).await;
    }

    /// Stops the node's tasks.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }
}

/// The event loop's state: the only owner of the swarm.
struct EventLoop {
    swarm: Swarm<Behaviour>,
    dht: Dht,
    listen: watch::Sender<Vec<Multiaddr>>,
    stats: Arc<Stats>,
    interests: Arc<Interests>,
    /// Dials in progress and who waits for each.
    dials: HashMap<ConnectionId, (Multiaddr, oneshot::Sender<Result<PeerId, String>>)>,
    /// Tracker requests in progress: the tracker and who waits for the answer.
    tracker_calls: HashMap<
        request_response::OutboundRequestId,
        (PeerId, oneshot::Sender<Result<TrackerResponse, String>>),
    >,
    /// Why the last dial of a peer failed, for the errors of requests that needed it.
    dial_errors: HashMap<PeerId, String>,
    /// Reachability, relays and connection kinds (shared with the [`Node`] handles).
    reach: Arc<Mutex<Reach>>,
    /// See [`Inner::conn_change`].
    conn_change: Arc<tokio::sync::Notify>,
    /// The address each outbound connection dialled (a relay is listened through there).
    dialled_addrs: HashMap<ConnectionId, Multiaddr>,
    /// Connected peers identify has told about: whether each is a relay.
    identified: HashMap<PeerId, bool>,
    /// A relay server's listen addresses are its external ones (`Some`), loopback ones too
    /// when it was told to listen on loopback (`Some(true)`). `None`: not a relay server.
    relay_server: Option<bool>,
    /// Callers of [`Node::settle_at`] waiting, with the relay they wait on (bounded).
    settling: Vec<(PeerId, oneshot::Sender<()>)>,
}

/// Most [`Node::settle_at`] callers waiting at once; further ones are answered at once.
const MAX_SETTLING: usize = 64;

async fn event_loop(
    mut l: EventLoop,
    mut commands: mpsc::Receiver<Command>,
    shutdown: CancellationToken,
) {
    // Bootstrap again now and then (only with bootstrap peers: without, there is nothing to
    // re-add), and drop expired foreign provider records.
    let mut rebootstrap = tokio::time::interval_at(
        tokio::time::Instant::now() + dht::BOOTSTRAP_EVERY,
        dht::BOOTSTRAP_EVERY,
    );
    rebootstrap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let lookup_due = l.dht.next_deadline().map(tokio::time::Instant::from_std);
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = rebootstrap.tick() => {
                if l.dht.has_bootstrap() {
                    l.dht.rebootstrap(&mut l.swarm);
                }
                l.dht.sweep(&mut l.swarm);
            }
            () = async {
                match lookup_due {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => l.dht.on_deadline(&mut l.swarm),
            cmd = commands.recv() => match cmd {
                None => break,
                Some(cmd) => l.on_command(cmd),
            },
            event = l.swarm.select_next_some() => l.on_swarm_event(event),
        }
    }
    debug!("event loop stopped");
}

impl EventLoop {
    fn on_command(&mut self, cmd: Command) {
        let swarm = &mut self.swarm;
        match cmd {
            Command::Disconnect { peer } => {
                let _ = swarm.disconnect_peer_id(peer);
                // A peer that lies about blobs is no DHT peer worth keeping either (and DHT
                // queries would otherwise connect to it again at once).
                if let Some(kad) = swarm.behaviour_mut().kad.as_mut() {
                    kad.remove_peer(&peer);
                }
                count_dht_peers(swarm, &self.stats);
            }
            Command::Provide { id, reply } => self.dht.provide(swarm, id, reply),
            Command::Settle { relay, reply } => {
                if self.settling.len() < MAX_SETTLING {
                    self.settling.push((relay, reply));
                    self.wake_settled();
                }
            }
            Command::StopProviding { id } => Dht::stop_providing(swarm, id),
            Command::FindProviders { id, timeout, sink } => {
                self.dht.find_providers(swarm, id, timeout, sink);
            }
            #[cfg(feature = "test-utils")]
            Command::StoredProviders { id, reply } => {
                let _ = reply.send(Dht::stored_providers(swarm, id));
            }
            Command::Tracker {
                peer,
                addr,
                request,
                reply,
            } => {
                let id = swarm.behaviour_mut().tracker.send_request_with_addresses(
                    &peer,
                    request,
                    vec![addr],
                );
                self.tracker_calls.insert(id, (peer, reply));
            }
            Command::Dial {
                addr,
                peer,
                opts,
                reply,
            } => {
                // Already connected: that is what the caller wants.
                if let Some(peer) = peer
                    && swarm.is_connected(&peer)
                {
                    let _ = reply.send(Ok(peer));
                    return;
                }
                let id = opts.connection_id();
                match swarm.dial(opts) {
                    Ok(()) => {
                        self.dials.insert(id, (addr, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                if let Some(loopback_ok) = self.relay_server
                    && crate::reach::advertise_listen_addr(&address, loopback_ok)
                {
                    self.swarm.add_external_address(address.clone());
                }
                self.listen.send_modify(|a| a.push(address));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                info!(%address, "no longer listening");
                self.listen.send_modify(|a| a.retain(|x| *x != address));
            }
            SwarmEvent::ListenerClosed { listener_id, .. } => {
                self.lock_reach().on_listener_closed(listener_id);
                self.wake_settled();
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                info!(%address, "reachable at");
                let stop = self.lock_reach().on_confirmed(address, false);
                self.carry_out(stop);
                self.wake_settled();
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                self.lock_reach().on_expired(&address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                num_established,
                endpoint,
                ..
            } => {
                debug!(peer = %peer_id, "connected");
                if endpoint.is_dialer() {
                    self.dialled_addrs
                        .insert(connection_id, endpoint.get_remote_address().clone());
                }
                let close = self.lock_reach().on_connected(
                    std::time::Instant::now(),
                    peer_id,
                    connection_id,
                    endpoint.get_remote_address(),
                );
                self.carry_out(close);
                self.conn_change.notify_waiters();
                if num_established.get() == 1 {
                    self.stats.connected_peers.fetch_add(1, Ordering::Relaxed);
                    if endpoint.is_listener() {
                        // A seeder a tracker told about us, maybe: downloads may ask it.
                        self.interests.notify_all(Contact::Connected(peer_id));
                    }
                }
                if let Some((_, reply)) = self.dials.remove(&connection_id) {
                    let _ = reply.send(Ok(peer_id));
                }
                self.dht
                    .on_connected(&mut self.swarm, peer_id, endpoint.get_remote_address());
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                debug!(peer = %peer_id, "disconnected");
                self.dialled_addrs.remove(&connection_id);
                self.lock_reach().on_disconnected(peer_id, connection_id);
                self.conn_change.notify_waiters();
                if num_established == 0 {
                    self.identified.remove(&peer_id);
                    self.stats.connected_peers.fetch_sub(1, Ordering::Relaxed);
                    self.dht.on_disconnected(peer_id);
                    self.interests.notify_all(Contact::Disconnected(peer_id));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                connection_id,
                info,
            })) => {
                self.dht.on_identify(&mut self.swarm, peer_id, &info);
                count_dht_peers(&mut self.swarm, &self.stats);
                let relay = info.protocols.contains(&relay::HOP_PROTOCOL_NAME);
                self.identified.insert(peer_id, relay);
                if relay && let Some(addr) = self.dialled_addrs.get(&connection_id).cloned() {
                    let listen = self.lock_reach().on_relay_found(peer_id, &strip_p2p(addr));
                    self.carry_out(listen.into_iter().collect());
                }
                self.wake_settled();
            }
            SwarmEvent::Behaviour(
                event @ (BehaviourEvent::RelayClient(_)
                | BehaviourEvent::RelayServer(_)
                | BehaviourEvent::Dcutr(_)
                | BehaviourEvent::Upnp(_)
                | BehaviourEvent::Autonat(_)),
            ) => self.on_reach_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => {
                self.dht.on_event(&mut self.swarm, event);
                count_dht_peers(&mut self.swarm, &self.stats);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Tracker(event)) => self.on_tracker_event(event),
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                peer_id,
            } => {
                if let Some((addr, reply)) = self.dials.remove(&connection_id) {
                    debug!(%addr, %error, "dial failed");
                    let _ = reply.send(Err(error.to_string()));
                }
                if let Some(peer) = peer_id {
                    self.dht.dial_ended(&mut self.swarm, peer, false);
                    count_dht_peers(&mut self.swarm, &self.stats);
                    if self.dial_errors.len() >= MAX_DIAL_ERRORS_KEPT {
                        self.dial_errors.clear();
                    }
                    self.dial_errors.insert(peer, error.to_string());
                }
            }
            _ => {}
        }
    }

    /// The reachability behaviours' events: relay reservations (ours and, on a relay
    /// server, others'), hole punches, UPnP mappings, AutoNAT tests.
    fn on_reach_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            }) => {
                if !renewal {
                    info!(relay = %relay_peer_id, "reachable through relay");
                }
                self.lock_reach().on_reservation(relay_peer_id);
                self.wake_settled();
            }
            BehaviourEvent::RelayServer(event) => match event {
                relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                    debug!(peer = %src_peer_id, "relay: reservation granted");
                    self.stats
                        .relay_reservations
                        .fetch_add(1, Ordering::Relaxed);
                }
                relay::Event::CircuitReqAccepted {
                    src_peer_id,
                    dst_peer_id,
                } => {
                    debug!(src = %src_peer_id, dst = %dst_peer_id, "relay: circuit opened");
                    self.stats.relay_circuits.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            },
            BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => {
                match &result {
                    Ok(_) => info!(peer = %remote_peer_id, "hole punched: direct connection"),
                    Err(e) => info!(peer = %remote_peer_id, error = %e, "hole punch failed"),
                }
                self.lock_reach().on_punch(
                    std::time::Instant::now(),
                    remote_peer_id,
                    result.is_ok(),
                );
                self.conn_change.notify_waiters();
            }
            BehaviourEvent::Upnp(event) => match event {
                upnp::Event::NewExternalAddr { external_addr, .. } => {
                    info!(address = %external_addr, "UPnP mapped");
                    let stop = self.lock_reach().on_confirmed(external_addr, true);
                    self.carry_out(stop);
                }
                upnp::Event::ExpiredExternalAddr { external_addr, .. } => {
                    self.lock_reach().on_expired(&external_addr);
                }
                upnp::Event::GatewayNotFound => debug!("no UPnP gateway"),
                upnp::Event::NonRoutableGateway => debug!("the UPnP gateway is behind another NAT"),
            },
            BehaviourEvent::Autonat(autonat::v2::client::Event {
                tested_addr,
                server,
                result,
                ..
            }) => {
                debug!(address = %tested_addr, %server, ok = result.is_ok(), "AutoNAT test");
            }
            _ => {}
        }
    }

    fn lock_reach(&self) -> std::sync::MutexGuard<'_, Reach> {
        self.reach.lock().expect("reach lock poisoned")
    }

    /// Carries out what [`Reach`] decided.
    fn carry_out(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Listen(relay, circuit) => match self.swarm.listen_on(circuit.clone()) {
                    Ok(listener) => {
                        debug!(%relay, %circuit, "reserving at relay");
                        self.lock_reach().on_listening(relay, listener);
                    }
                    Err(e) => {
                        debug!(%relay, %circuit, error = %e, "cannot listen through relay");
                        self.lock_reach().on_listen_failed(relay);
                    }
                },
                Action::StopListening(listener) => {
                    self.swarm.remove_listener(listener);
                }
                Action::Close(peer, conn) => {
                    debug!(%peer, "closing a relayed connection: a direct one exists");
                    self.swarm.close_connection(conn);
                }
            }
        }
    }

    /// Answers the [`Node::settle_at`] callers whose relay is settled: identified (as a
    /// relay or not) with no reservation pending there, or this node reachable anyway.
    fn wake_settled(&mut self) {
        if self.settling.is_empty() {
            return;
        }
        let reach = self.reach.lock().expect("reach lock poisoned");
        let done = |relay: &PeerId| {
            !matches!(reach.status(), Reachability::Unknown) && !reach.pending_at(relay)
                || self.identified.contains_key(relay) && !reach.pending_at(relay)
        };
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.settling)
            .into_iter()
            .partition(|(r, _)| done(r));
        drop(reach);
        self.settling = waiting;
        for (_, reply) in ready {
            let _ = reply.send(());
        }
    }

    fn on_tracker_event(
        &mut self,
        event: request_response::Event<TrackerRequest, TrackerResponse>,
    ) {
        match event {
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some((_, reply)) = self.tracker_calls.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some((peer, reply)) = self.tracker_calls.remove(&request_id) {
                    let why = match error {
                        request_response::OutboundFailure::DialFailure => {
                            tracker_dial_failure(self.dial_errors.get(&peer).map(String::as_str))
                        }
                        other => other.to_string(),
                    };
                    let _ = reply.send(Err(why));
                }
            }
            _ => {}
        }
    }
}

/// Peers whose last dial error is kept (for request errors); the map starts over when full.
const MAX_DIAL_ERRORS_KEPT: usize = 256;

/// Why a tracker request could not be sent: the dial's own error, and what a connection
/// closed during the handshake means (a tracker denies connections over its per-IP, per-subnet
/// or total caps before the handshake completes, without a word).
fn tracker_dial_failure(dial_error: Option<&str>) -> String {
    let Some(e) = dial_error else {
        return "cannot connect to the tracker".into();
    };
    let cut = [
        "end of file",
        "reset by peer",
        "Broken pipe",
        "negotiation failed",
    ]
    .iter()
    .any(|s| e.contains(s));
    if cut {
        format!(
            "the tracker accepted the connection and closed it during the handshake: it refuses connections it has no room for (a few per IP address and subnet), or it is no Shoal tracker; stop other shoal processes using it from this address, or try again later ({e})"
        )
    } else {
        format!("cannot connect to the tracker: {e}")
    }
}

/// Publishes the routing table's size (it changes on DHT events, identify and failed dials).
fn count_dht_peers(swarm: &mut Swarm<Behaviour>, stats: &Stats) {
    let n = Dht::routing_table_len(swarm) as u64;
    stats.dht_peers.store(n, Ordering::Relaxed);
}

/// `addr` without a trailing `/p2p/<id>`.
fn strip_p2p(mut addr: Multiaddr) -> Multiaddr {
    if matches!(
        addr.iter().last(),
        Some(libp2p::multiaddr::Protocol::P2p(_))
    ) {
        addr.pop();
    }
    addr
}

/// How to dial `addr`: a bare `/p2p/<id>` dials that peer on the addresses the behaviours
/// (the DHT's routing table) know for it.
fn dial_opts(addr: &Multiaddr) -> DialOpts {
    match dht::split_p2p(addr) {
        Some((peer, bare)) if bare.is_empty() => DialOpts::peer_id(peer).build(),
        Some((peer, bare)) => DialOpts::peer_id(peer).addresses(vec![bare]).build(),
        None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
    }
}
