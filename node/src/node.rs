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
    Multiaddr, PeerId, Swarm, identify,
    identity::Keypair,
    ping, request_response,
    swarm::{ConnectionId, SwarmEvent, behaviour::toggle::Toggle, dial_opts::DialOpts},
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
        addr: Multiaddr,
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
}

/// Most seed nodes remembered (a tracker lists at most 16 per swarm).
const MAX_SEED_NODES_KNOWN: usize = 1024;

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
        let mut swarm = crate::transport::build_swarm(keypair, idle, |key| Behaviour {
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
            kad: Toggle::from(
                config
                    .dht
                    .then(|| dht::behaviour(key.public().to_peer_id(), &config)),
            ),
        })
        .map_err(StartError::Transport)?;
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
        serve::spawn(
            Service {
                config: config.clone(),
                store: store.clone(),
                stats: stats.clone(),
                interests: interests.clone(),
                client: Client::new(control.clone(), config.request_timeout),
                shutdown: shutdown.clone(),
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
        });
        tokio::spawn(event_loop(
            swarm,
            dht,
            command_rx,
            listen_tx,
            stats,
            inner.interests.clone(),
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
        let (reply, rx) = oneshot::channel();
        let err = |why: String| DialError {
            addr: addr.clone(),
            why,
        };
        self.inner
            .commands
            .send(Command::Dial {
                addr: addr.clone(),
                reply,
            })
            .await
            .map_err(|_| err("node is shut down".into()))?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result.map_err(err),
            Ok(Err(_)) => Err(err("node is shut down".into())),
            Err(_) => Err(err(format!("no connection within {timeout:?}"))),
        }
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
}

async fn event_loop(
    swarm: Swarm<Behaviour>,
    dht: Dht,
    mut commands: mpsc::Receiver<Command>,
    listen: watch::Sender<Vec<Multiaddr>>,
    stats: Arc<Stats>,
    interests: Arc<Interests>,
    shutdown: CancellationToken,
) {
    let mut l = EventLoop {
        swarm,
        dht,
        listen,
        stats,
        interests,
        dials: HashMap::new(),
        tracker_calls: HashMap::new(),
        dial_errors: HashMap::new(),
    };
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
            Command::Dial { addr, reply } => {
                // Already connected: that is what the caller wants.
                if let Some((peer, _)) = dht::split_p2p(&addr)
                    && swarm.is_connected(&peer)
                {
                    let _ = reply.send(Ok(peer));
                    return;
                }
                let opts = dial_opts(&addr);
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
        let swarm = &mut self.swarm;
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                self.listen.send_modify(|a| a.push(address));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                num_established,
                endpoint,
                ..
            } => {
                debug!(peer = %peer_id, "connected");
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
                    .on_connected(swarm, peer_id, endpoint.get_remote_address());
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                debug!(peer = %peer_id, "disconnected");
                if num_established == 0 {
                    self.stats.connected_peers.fetch_sub(1, Ordering::Relaxed);
                    self.dht.on_disconnected(peer_id);
                    self.interests.notify_all(Contact::Disconnected(peer_id));
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                self.dht.on_identify(swarm, peer_id, &info);
                count_dht_peers(swarm, &self.stats);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => {
                self.dht.on_event(swarm, event);
                count_dht_peers(swarm, &self.stats);
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
                    self.dht.dial_ended(swarm, peer, false);
                    count_dht_peers(swarm, &self.stats);
                    if self.dial_errors.len() >= MAX_DIAL_ERRORS_KEPT {
                        self.dial_errors.clear();
                    }
                    self.dial_errors.insert(peer, error.to_string());
                }
            }
            _ => {}
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

/// How to dial `addr`: a bare `/p2p/<id>` dials that peer on the addresses the behaviours
/// (the DHT's routing table) know for it.
fn dial_opts(addr: &Multiaddr) -> DialOpts {
    match dht::split_p2p(addr) {
        Some((peer, bare)) if bare.is_empty() => DialOpts::peer_id(peer).build(),
        Some((peer, bare)) => DialOpts::peer_id(peer).addresses(vec![bare]).build(),
        None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
    }
}
