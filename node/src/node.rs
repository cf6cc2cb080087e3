//! The libp2p node: one event loop owns the `Swarm`; everyone else holds a [`Node`] handle
//! (commands on a bounded channel, replies on oneshots). Bulk data runs over raw
//! `libp2p-stream` streams: one `/shoal/blob/1` request per stream.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{
    Multiaddr, PeerId, Stream, StreamProtocol, Swarm, identify,
    identity::Keypair,
    ping, request_response,
    swarm::{
        ConnectionId, NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle, dial_opts::DialOpts,
    },
};
use shoal_protocol::{
    BlobId, BlockIndex,
    blob::{BlockRange, EncodeItem, PARENT_LEN, RangeEncoder, block_count, block_len},
    format::SEGMENT_LEN,
    have::{self, HAVE_PROTOCOL, HaveMsg, SUBSCRIBE_LEN, Subscribe},
    tracker::{Request as TrackerRequest, Response as TrackerResponse},
    wire::{BLOB_PROTOCOL, BlobRequest, MAX_SERVE_BLOCKS, ResponseHeader},
};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    buffers,
    config::Config,
    dht::{self, Dht, DhtError, Found, Kad},
    rate::RateLimiter,
    store::{Source, Store},
    tracker_codec::{self, TrackerCodec},
};

/// Bound of the command queue into the event loop.
const COMMAND_QUEUE: usize = 64;
/// Encoded chunks buffered between the blocking block reader and the stream writer.
const SERVE_PIPELINE: usize = 4;
/// Bytes of a recycled chunk buffer: a block and the parent pairs sent before it (16 pairs
/// cover a tree of 2^16 blocks, 4 GiB; deeper trees grow the buffer).
const CHUNK_LEN: usize = SEGMENT_LEN + 16 * PARENT_LEN;

/// Most have-map subscriptions served at once; more are closed at once.
const MAX_HAVE_SUBSCRIPTIONS: usize = 512;
/// Shortest time between two have-map updates on one subscription: blocks verified
/// meanwhile go in one frame.
const HAVE_UPDATE_EVERY: Duration = Duration::from_millis(100);
/// A frugal source re-subscribes to a subscriber's own have-map this long after it was
/// refused (the peer still bootstrapping) or the stream broke, doubling up to the maximum;
/// a complete peer's (closed after its full map) is read again at the maximum.
const SUBSCRIBE_BACK_FIRST_RETRY: Duration = Duration::from_millis(300);
const SUBSCRIBE_BACK_MAX_RETRY: Duration = Duration::from_secs(5);
/// Peers queued for a fetch that has not picked them up yet (more are dropped: the fetch
/// also learns them from trackers).
const INTEREST_QUEUE: usize = 64;
/// How much longer than a lookup's own timeout a caller waits for its answer (the event loop
/// answers at the timeout; this only covers a stalled loop).
const LOOKUP_GRACE: Duration = Duration::from_secs(2);

pub(crate) fn blob_protocol() -> StreamProtocol {
    StreamProtocol::new(BLOB_PROTOCOL)
}

pub(crate) fn have_protocol() -> StreamProtocol {
    StreamProtocol::new(HAVE_PROTOCOL)
}

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    limits: libp2p::connection_limits::Behaviour,
    stream: libp2p_stream::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    /// Announces and scrapes to trackers (outbound only: a node answers no tracker requests).
    tracker: request_response::Behaviour<TrackerCodec>,
    /// The Shoal DHT (off when `Config::dht` is false).
    pub(crate) kad: Toggle<Kad>,
}

/// Live counters of a node, readable at any time.
#[derive(Debug, Default)]
pub struct Stats {
    /// Blob bytes sent to peers (headers and parents included).
    pub uploaded_bytes: AtomicU64,
    /// Peers currently connected.
    pub connected_peers: AtomicU64,
    /// Requests served to completion.
    pub requests_served: AtomicU64,
    /// Requests answered `busy` (every upload slot taken).
    pub busy_answers: AtomicU64,
    /// Peers in the DHT routing table.
    pub dht_peers: AtomicU64,
}

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
    interest: Mutex<HashMap<BlobId, mpsc::Sender<PeerId>>>,
    /// Peers a tracker listed as seed nodes: downloads ask them last
    /// ([`shoal_protocol::schedule::Scheduler::set_last_resort`]). Bounded.
    seed_nodes: Mutex<std::collections::HashSet<PeerId>>,
}

/// Most seed nodes remembered (a tracker lists at most 16 per swarm).
const MAX_SEED_NODES_KNOWN: usize = 1024;

/// A fetch's registration for peers interested in its blob; unregisters when dropped.
pub(crate) struct Interest {
    node: Node,
    id: BlobId,
    pub(crate) peers: mpsc::Receiver<PeerId>,
}

impl Drop for Interest {
    fn drop(&mut self) {
        if let Ok(mut map) = self.node.inner.interest.lock() {
            map.remove(&self.id);
        }
    }
}

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
            swarm
                .listen_on(addr.clone())
                .map_err(|e| StartError::Listen {
                    addr: addr.clone(),
                    source: e.into(),
                })?;
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
        let inner = Arc::new(Inner {
            peer_id,
            commands,
            control,
            listen,
            stats: stats.clone(),
            store,
            shutdown: shutdown.clone(),
            config,
            interest: Mutex::new(HashMap::new()),
            seed_nodes: Mutex::default(),
        });
        tokio::spawn(event_loop(
            swarm,
            dht,
            command_rx,
            listen_tx,
            stats,
            shutdown.clone(),
        ));
        tokio::spawn(serve_loop(inner.clone(), incoming));
        tokio::spawn(have_loop(inner.clone(), incoming_have));
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

    pub(crate) fn control(&self) -> libp2p_stream::Control {
        self.inner.control.clone()
    }

    /// Registers a fetch of `id`: peers that subscribe to our have-map of it are sent on
    /// the returned receiver. One registration per blob (a later one replaces it).
    pub(crate) fn interest(&self, id: BlobId) -> Interest {
        let (tx, peers) = mpsc::channel(INTEREST_QUEUE);
        self.inner
            .interest
            .lock()
            .expect("interest lock poisoned")
            .insert(id, tx);
        Interest {
            node: self.clone(),
            id,
            peers,
        }
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

async fn event_loop(
    mut swarm: Swarm<Behaviour>,
    mut dht: Dht,
    mut commands: mpsc::Receiver<Command>,
    listen: watch::Sender<Vec<Multiaddr>>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) {
    let mut dials: HashMap<ConnectionId, (Multiaddr, oneshot::Sender<Result<PeerId, String>>)> =
        HashMap::new();
    let mut tracker_calls: HashMap<
        request_response::OutboundRequestId,
        oneshot::Sender<Result<TrackerResponse, String>>,
    > = HashMap::new();
    // Bootstrap again now and then (only with bootstrap peers: without, there is nothing to
    // re-add), and drop expired foreign provider records.
    let mut rebootstrap = tokio::time::interval_at(
        tokio::time::Instant::now() + dht::BOOTSTRAP_EVERY,
        dht::BOOTSTRAP_EVERY,
    );
    rebootstrap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let lookup_due = dht.next_deadline().map(tokio::time::Instant::from_std);
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = rebootstrap.tick() => {
                if dht.has_bootstrap() {
                    dht.rebootstrap(&mut swarm);
                }
                dht.sweep(&mut swarm);
            }
            () = async {
                match lookup_due {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => dht.on_deadline(&mut swarm),
            cmd = commands.recv() => match cmd {
                None => break,
                Some(Command::Disconnect { peer }) => {
                    let _ = swarm.disconnect_peer_id(peer);
                    // A peer that lies about blobs is no DHT peer worth keeping either (and
                    // DHT queries would otherwise connect to it again at once).
                    if let Some(kad) = swarm.behaviour_mut().kad.as_mut() {
                        kad.remove_peer(&peer);
                    }
                    count_dht_peers(&mut swarm, &stats);
                }
                Some(Command::Provide { id, reply }) => dht.provide(&mut swarm, id, reply),
                Some(Command::StopProviding { id }) => Dht::stop_providing(&mut swarm, id),
                Some(Command::FindProviders { id, timeout, sink }) => {
                    dht.find_providers(&mut swarm, id, timeout, sink);
                }
                #[cfg(feature = "test-utils")]
                Some(Command::StoredProviders { id, reply }) => {
                    let _ = reply.send(Dht::stored_providers(&mut swarm, id));
                }
                Some(Command::Tracker { peer, addr, request, reply }) => {
                    let id = swarm.behaviour_mut().tracker.send_request_with_addresses(&peer, request, vec![addr]);
                    tracker_calls.insert(id, reply);
                }
                Some(Command::Dial { addr, reply }) => {
                    // Already connected: that is what the caller wants.
                    if let Some((peer, _)) = dht::split_p2p(&addr)
                        && swarm.is_connected(&peer)
                    {
                        let _ = reply.send(Ok(peer));
                        continue;
                    }
                    let opts = dial_opts(&addr);
                    let id = opts.connection_id();
                    match swarm.dial(opts) {
                        Ok(()) => { dials.insert(id, (addr, reply)); }
                        Err(e) => { let _ = reply.send(Err(e.to_string())); }
                    }
                }
            },
            event = swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { address, .. } => {
                    info!(%address, "listening");
                    listen.send_modify(|a| a.push(address));
                }
                SwarmEvent::ConnectionEstablished { peer_id, connection_id, num_established, endpoint, .. } => {
                    debug!(peer = %peer_id, "connected");
                    if num_established.get() == 1 {
                        stats.connected_peers.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some((_, reply)) = dials.remove(&connection_id) {
                        let _ = reply.send(Ok(peer_id));
                    }
                    dht.on_connected(&mut swarm, peer_id, endpoint.get_remote_address());
                }
                SwarmEvent::ConnectionClosed { peer_id, num_established, .. } => {
                    debug!(peer = %peer_id, "disconnected");
                    if num_established == 0 {
                        stats.connected_peers.fetch_sub(1, Ordering::Relaxed);
                        dht.on_disconnected(peer_id);
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                    dht.on_identify(&mut swarm, peer_id, &info);
                    count_dht_peers(&mut swarm, &stats);
                }
                SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => {
                    dht.on_event(&mut swarm, event);
                    count_dht_peers(&mut swarm, &stats);
                }
                SwarmEvent::Behaviour(BehaviourEvent::Tracker(event)) => match event {
                    request_response::Event::Message {
                        message: request_response::Message::Response { request_id, response },
                        ..
                    } => {
                        if let Some(reply) = tracker_calls.remove(&request_id) {
                            let _ = reply.send(Ok(response));
                        }
                    }
                    request_response::Event::OutboundFailure { request_id, error, .. } => {
                        if let Some(reply) = tracker_calls.remove(&request_id) {
                            let _ = reply.send(Err(error.to_string()));
                        }
                    }
                    _ => {}
                },
                SwarmEvent::OutgoingConnectionError { connection_id, error, peer_id } => {
                    if let Some((addr, reply)) = dials.remove(&connection_id) {
                        debug!(%addr, %error, "dial failed");
                        let _ = reply.send(Err(error.to_string()));
                    }
                    if let Some(peer) = peer_id {
                        dht.dial_ended(&mut swarm, peer, false);
                        count_dht_peers(&mut swarm, &stats);
                    }
                }
                _ => {}
            },
        }
    }
    debug!("event loop stopped");
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

async fn serve_loop(inner: Arc<Inner>, mut incoming: libp2p_stream::IncomingStreams) {
    let slots = Arc::new(Semaphore::new(inner.config.upload_slots()));
    let per_peer_max = inner.config.upload_slots_per_peer();
    let per_peer: Arc<Mutex<HashMap<PeerId, usize>>> = Arc::default();
    let limiter = inner
        .config
        .upload_limit_bytes_per_sec
        .map(|r| Arc::new(RateLimiter::new(r)));
    loop {
        let next = tokio::select! {
            () = inner.shutdown.cancelled() => break,
            next = incoming.next() => next,
        };
        let Some((peer, mut stream)) = next else {
            break;
        };
        let inner = inner.clone();
        let limiter = limiter.clone();
        let peer_ok = {
            let mut map = per_peer.lock().expect("slot map lock poisoned");
            let n = map.entry(peer).or_insert(0);
            if *n < per_peer_max {
                *n += 1;
                true
            } else {
                false
            }
        };
        let release_peer = {
            let per_peer = per_peer.clone();
            move || {
                let mut map = per_peer.lock().expect("slot map lock poisoned");
                if let Some(n) = map.get_mut(&peer) {
                    *n -= 1;
                    if *n == 0 {
                        map.remove(&peer);
                    }
                }
            }
        };
        let permit = if peer_ok {
            let p = slots.clone().try_acquire_owned().ok();
            if p.is_none() {
                release_peer();
            }
            p
        } else {
            None
        };
        match permit {
            Some(permit) => {
                tokio::spawn(async move {
                    let res = tokio::select! {
                        () = inner.shutdown.cancelled() => Ok(()),
                        res = serve(&inner, peer, limiter.as_deref(), &mut stream) => res,
                    };
                    if let Err(e) = res {
                        debug!(peer = %peer, error = %e, "request ended early");
                    }
                    drop(permit);
                    release_peer();
                });
            }
            None => {
                // Every slot (or this peer's share) is busy: say so at once so the peer goes
                // elsewhere rather than queueing behind others.
                inner.stats.busy_answers.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(inner.config.request_timeout, async {
                        stream.write_all(&ResponseHeader::Busy.encode()).await?;
                        stream.close().await
                    })
                    .await;
                });
            }
        }
    }
}

async fn have_loop(inner: Arc<Inner>, mut incoming: libp2p_stream::IncomingStreams) {
    let slots = Arc::new(Semaphore::new(MAX_HAVE_SUBSCRIPTIONS));
    loop {
        let next = tokio::select! {
            () = inner.shutdown.cancelled() => break,
            next = incoming.next() => next,
        };
        let Some((peer, mut stream)) = next else {
            break;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream); // at the limit: the peer sees the stream end and asks again later
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let res = tokio::select! {
                () = inner.shutdown.cancelled() => Ok(()),
                res = serve_have(&inner, peer, &mut stream) => res,
            };
            if let Err(e) = res {
                debug!(peer = %peer, error = %e, "have subscription ended");
            }
            drop(permit);
        });
    }
}

/// Serves one have-map subscription: the whole map, then what is added, until the blob is
/// complete, the subscriber closes the stream, or the download is abandoned.
async fn serve_have(inner: &Arc<Inner>, peer: PeerId, stream: &mut Stream) -> std::io::Result<()> {
    #[cfg(feature = "test-utils")]
    if count_down(&inner.config.unanswered_subscriptions) {
        return Ok(()); // dropped unanswered
    }
    let mut sub = [0u8; SUBSCRIBE_LEN];
    tokio::time::timeout(inner.config.request_timeout, stream.read_exact(&mut sub))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no subscription"))??;
    let Ok(Subscribe { id }) = Subscribe::decode(&sub) else {
        return stream.close().await;
    };
    let Some(source) = inner.store.get(&id) else {
        stream.write_all(&HaveMsg::NotFound.encode_frame()).await?;
        return stream.close().await;
    };
    // Someone fetching this blob: if we are fetching it too, they are worth asking.
    let tx = inner.interest.lock().ok().and_then(|m| m.get(&id).cloned());
    if let Some(tx) = tx {
        let _ = tx.try_send(peer);
    }
    let total = u32::try_from(block_count(source.blob_len())).expect("MAX_FILE_LEN bounds blocks");
    if source.is_frugal() {
        return serve_have_frugal(inner, peer, stream, source, total).await;
    }
    let Some(held) = source.held().cloned() else {
        let all = [BlockRange {
            start: 0,
            end: total,
        }];
        for msg in have::frames(total, &all) {
            stream.write_all(&msg.encode_frame()).await?;
        }
        return stream.close().await;
    };
    drop(source); // hold only the have-map: an abandoned download drops it and ends this
    let mut changed = held.subscribe();
    let mut told = held.snapshot();
    for msg in have::frames(total, &told.ranges()) {
        stream.write_all(&msg.encode_frame()).await?;
    }
    let mut eof = [0u8; 1];
    while !told.is_full() {
        tokio::select! {
            r = changed.changed() => if r.is_err() { break },
            // The subscriber sends nothing after subscribing: a read returns when it closes.
            _ = stream.read(&mut eof) => return Ok(()),
        }
        tokio::time::sleep(HAVE_UPDATE_EVERY).await; // batch what arrives meanwhile
        let now = held.snapshot();
        for msg in have::frames(total, &now.difference_ranges(&told)) {
            stream.write_all(&msg.encode_frame()).await?;
        }
        told = now;
    }
    stream.close().await
}

/// Serves one have-map subscription to a blob served frugally: only the blocks revealed to
/// this peer ([`crate::frugal`]), more as it fetches them. The first subscription of a peer
/// starts [`listen_frugal_peer`].
async fn serve_have_frugal(
    inner: &Arc<Inner>,
    peer: PeerId,
    stream: &mut Stream,
    source: Arc<Source>,
    total: u32,
) -> std::io::Result<()> {
    let Some(new_peer) = source
        .super_seed()
        .map(|mut ss| ss.join(peer, std::time::Instant::now()))
    else {
        return Ok(());
    };
    debug!(%peer, blob = %source.id(), new_peer, "frugal: subscribed");
    if new_peer {
        // One listener per peer, for as long as it subscribes to us or serves its own
        // have-map (a downloader that completes stops subscribing but goes on serving).
        tokio::spawn(listen_frugal_peer(
            Node {
                inner: inner.clone(),
            },
            peer,
            source.clone(),
            total,
        ));
    }
    // A re-subscription is shown what was revealed before first.
    let mut new = source
        .super_seed()
        .map(|ss| ss.revealed_to(&peer))
        .unwrap_or_default();
    let mut eof = [0u8; 1];
    let result = async {
        loop {
            new.extend(
                source
                    .super_seed()
                    .map(|mut ss| ss.reveal(&peer, std::time::Instant::now()))
                    .unwrap_or_default(),
            );
            new.sort_unstable();
            for msg in have::frames(total, &new) {
                stream.write_all(&msg.encode_frame()).await?;
            }
            new.clear();
            tokio::select! {
                // Blocks served (a window may have room) or, at the latest, what peers
                // reported meanwhile.
                () = source.served() => {}
                () = tokio::time::sleep(HAVE_UPDATE_EVERY) => {}
                // The subscriber sends nothing after subscribing: a read returns when it closes.
                _ = stream.read(&mut eof) => return Ok(()),
            }
        }
    }
    .await;
    if let Some(mut ss) = source.super_seed() {
        ss.unsubscribe(&peer);
    }
    debug!(%peer, blob = %source.id(), "frugal: unsubscribed");
    result
}

/// Listens to a frugal source's subscriber's own have-map, so the frugal state knows what
/// the swarm holds, until the peer has left: it is not subscribed to ours and its own
/// cannot be read. A peer still bootstrapping answers "not found" and a stream can break:
/// it is asked again meanwhile. A peer that completes closes its have-map after the full
/// map: it goes on serving, so it is asked again now and then, and stays counted while
/// it answers (without that, what only it received from us would look lost and be sent
/// again).
async fn listen_frugal_peer(node: Node, peer: PeerId, source: Arc<Source>, total: u32) {
    let id = source.id();
    let mut pause = SUBSCRIBE_BACK_FIRST_RETRY;
    loop {
        let result = crate::fetch::read_have_map(&node, peer, id, total, |ranges| {
            if let Some(mut ss) = source.super_seed() {
                ss.peer_has(&peer, &ranges, std::time::Instant::now());
            }
            std::future::ready(true)
        })
        .await;
        // Taken down or replaced meanwhile: nothing left to serve frugally.
        let served = node
            .inner
            .store
            .get(&id)
            .is_some_and(|s| Arc::ptr_eq(&s, &source));
        if !served {
            return;
        }
        if let Err(e) = result {
            if source.super_seed().is_none_or(|mut ss| ss.leave(&peer)) {
                debug!(%peer, blob = %id, error = %e, "frugal: peer left");
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(SUBSCRIBE_BACK_MAX_RETRY);
        } else {
            // Closed after its whole map: complete, still here.
            tokio::time::sleep(SUBSCRIBE_BACK_MAX_RETRY).await;
        }
    }
}

/// Test only: takes one from `counter` unless it is 0; whether it did (the
/// `Config::unanswered_*` knobs).
#[cfg(feature = "test-utils")]
fn count_down(counter: &std::sync::atomic::AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

async fn serve(
    inner: &Inner,
    peer: PeerId,
    limiter: Option<&RateLimiter>,
    stream: &mut Stream,
) -> std::io::Result<()> {
    let timeout = inner.config.request_timeout;
    let req = tokio::time::timeout(timeout, read_request(stream))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "request not received in time")
        })??;
    let Ok(req) = req else {
        stream
            .write_all(&ResponseHeader::BadRequest.encode())
            .await?;
        return stream.close().await;
    };
    let Some(source) = inner.store.get(&req.id) else {
        stream.write_all(&ResponseHeader::NotFound.encode()).await?;
        return stream.close().await;
    };
    let blob_len = source.blob_len();
    let blocks = block_count(blob_len);
    if req.check_within(blocks).is_err() || req.block_count() > MAX_SERVE_BLOCKS {
        stream
            .write_all(&ResponseHeader::BadRequest.encode())
            .await?;
        return stream.close().await;
    }
    #[cfg(feature = "test-utils")]
    if req.block_count() > 2 && count_down(&inner.config.unanswered_requests) {
        return Ok(()); // dropped unanswered
    }
    let frugal_ok = source
        .super_seed()
        .is_none_or(|mut ss| ss.may_serve(&peer, &req.ranges));
    if !source.holds(&req.ranges) || !frugal_ok {
        stream.write_all(&ResponseHeader::Missing.encode()).await?;
        return stream.close().await;
    }
    debug!(blob = %req.id, blocks = req.block_count(), "serving");
    let (tx, mut rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(SERVE_PIPELINE);
    #[cfg(feature = "test-utils")]
    let corrupt = inner.config.corrupt_uploads;
    #[cfg(not(feature = "test-utils"))]
    let corrupt = false;
    let header = ResponseHeader::Ok { blob_len }.encode();
    let counted = source.clone();
    let ranges = req.ranges.clone();
    let producer =
        tokio::task::spawn_blocking(move || produce(&source, &req.ranges, header, corrupt, &tx));
    while let Some(chunk) = rx.recv().await {
        let chunk = chunk?;
        if let Some(l) = limiter {
            l.acquire(chunk.len() as u64).await;
        }
        stream.write_all(&chunk).await?;
        inner
            .stats
            .uploaded_bytes
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        counted.add_uploaded(chunk.len() as u64);
        buffers::put(chunk);
    }
    producer.await.map_err(std::io::Error::other)?;
    if let Some(mut ss) = counted.super_seed() {
        ss.served(&peer, &ranges, std::time::Instant::now());
        drop(ss);
        counted.notify_served();
    }
    inner.stats.requests_served.fetch_add(1, Ordering::Relaxed);
    stream.close().await
}

/// One step of a range response, planned up front so the outboard lock (a download in
/// progress adds pairs to it) is held only while planning, never across IO.
enum Step {
    Parent([u8; PARENT_LEN]),
    Block(BlockIndex),
}

/// Reads the blocks of `ranges` from storage on a blocking thread, encoded for the wire
/// after `header` (a `/shoal/blob/1` response, or a push's body).
pub(crate) fn produce(
    source: &Source,
    ranges: &[BlockRange],
    header: Vec<u8>,
    corrupt: bool,
    tx: &mpsc::Sender<std::io::Result<Vec<u8>>>,
) {
    let file = match source.open() {
        Ok(f) => f,
        Err(e) => {
            warn!(path = %source.path().display(), error = %e, "cannot open shared file");
            let _ = tx.blocking_send(Err(e));
            return;
        }
    };
    let plan: Vec<Step> = RangeEncoder::new(&source.outboard(), ranges)
        .map(|item| match item {
            EncodeItem::Parent(pair) => {
                Step::Parent(pair.try_into().expect("pairs are PARENT_LEN bytes"))
            }
            EncodeItem::Block { index, .. } => Step::Block(index),
        })
        .collect();
    // One buffer per chunk sent: parents, then the block read and sealed in place. The status
    // header goes in front of the first chunk (one frame instead of two). Buffers come from
    // the pool the send loops return them to, so a block is not zero-filled before it is read.
    let mut chunk = buffers::take(CHUNK_LEN);
    chunk[..header.len()].copy_from_slice(&header);
    let mut used = header.len();
    for step in plan {
        match step {
            Step::Parent(pair) => {
                grow(&mut chunk, used + PARENT_LEN);
                chunk[used..used + PARENT_LEN].copy_from_slice(&pair);
                used += PARENT_LEN;
            }
            Step::Block(index) => {
                let len = block_len(source.blob_len(), index);
                grow(&mut chunk, used + len);
                let block = &mut chunk[used..used + len];
                if let Err(e) = source.read_block_into(&file, index, block) {
                    // Logged once here (an operator must act); the peer just sees the
                    // stream end and goes elsewhere.
                    warn!(blob = %source.id(), block = %index, error = %e, "cannot serve block");
                    let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
                if corrupt {
                    block[len / 2] ^= 0x01;
                }
                chunk.truncate(used + len);
                let next = buffers::take(CHUNK_LEN);
                if tx
                    .blocking_send(Ok(std::mem::replace(&mut chunk, next)))
                    .is_err()
                {
                    return; // the requester went away
                }
                used = 0;
            }
        }
    }
    buffers::put(chunk);
}

/// Makes `chunk` at least `len` bytes long (a response's first chunk carries a header and
/// a deep tree more parents than [`CHUNK_LEN`] has room for).
fn grow(chunk: &mut Vec<u8>, len: usize) {
    if chunk.len() < len {
        chunk.resize(len, 0);
    }
}

async fn read_request(
    stream: &mut Stream,
) -> std::io::Result<Result<BlobRequest, shoal_protocol::wire::DecodeRequestError>> {
    let mut prefix = [0u8; 35];
    stream.read_exact(&mut prefix).await?;
    let len = match BlobRequest::encoded_len(&prefix) {
        Ok(len) => len,
        Err(e) => return Ok(Err(e)),
    };
    let mut buf = prefix.to_vec();
    buf.resize(len, 0);
    stream.read_exact(&mut buf[35..]).await?;
    Ok(BlobRequest::decode(&buf))
}
