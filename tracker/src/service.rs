//! The tracker service: `/shoal/tracker/1` over libp2p, around a [`PeerTable`]
//! (docs/tracker.md §4).
//!
//! One event loop owns the `Swarm`, the table and every check; it never waits on anything
//! but the swarm, its expiry timer and shutdown. Per request:
//!
//! 1. The peer id is the connection's authenticated remote (`request_response::Event::
//!    Message { peer, .. }`), never a field of the message.
//! 2. Announced addresses are filtered: each must parse as a multiaddr, name no other peer
//!    in a `/p2p/` component and start with the IP the connection comes from; the rest are
//!    dropped (and nothing is made up when none is left).
//! 3. The seed-node role is kept only by peers on [`Config::seed_node_allow`]; others are
//!    listed as seeder or leecher by their progress.
//! 4. Scrapes and takedown-list requests are rate limited per peer (one token bucket for
//!    both); a limited request gets no answer (the stream is dropped: the protocol has no
//!    scrape refusal yet).
//! 5. Announces of a taken-down blob are refused as taken down, and scrapes of it answer
//!    zero counts, before the table is asked. Takedowns are accepted from the peer ids on
//!    [`Config::operators`] only; each is recorded durably in the [`TakedownStore`] before
//!    the answer, and its swarm is removed from the table.
//! 6. The table answers; [`Answer::into_response`](crate::table::Answer::into_response)
//!    turns its answer into the wire message.
//!
//! Bounds: connections in total, pending, per peer, per IP and per subnet (/24, /48);
//! request-response streams per connection (`shoal_node::tracker_codec::
//! MAX_CONCURRENT_STREAMS`) and their time; request bytes (`MAX_REQUEST_LEN`, read with
//! `take`); the table's own caps; the scrape limiter's map; HTTP connections.
//!
//! [`Tracker::stats`] and the HTTP endpoints read a snapshot the loop publishes after every
//! event.

mod checks;
mod http;
mod ip_limits;

use std::{
    collections::{HashMap, HashSet},
    io,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use futures::{AsyncRead, AsyncWrite, StreamExt};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, TransportError, autonat, connection_limits, identify,
    identity::Keypair,
    ping, relay,
    request_response::{self, InboundFailure, ProtocolSupport, ResponseChannel},
    swarm::{ConnectionId, NetworkBehaviour, SwarmEvent, behaviour::toggle::Toggle},
};
use serde::Serialize;
pub use shoal_node::config::RelayLimits;
use shoal_node::tracker_codec::{self, TrackerCodec};
use shoal_protocol::tracker::{
    AnnounceRequest, AnnounceResponse, DenyReason, MAX_TAKEDOWN_ENTRIES, RefusalReason, Request,
    Response, ScrapeRequest, ScrapeResponse, SwarmStats, TakedownListRequest, TakedownRequest,
};
use tokio::{sync::watch, time::Sleep};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, error, info, warn};

use crate::{
    table::{self, ConfigError, PeerTable},
    takedowns::{StoreError, TakedownStore},
};
use checks::RateLimiter;
use ip_limits::IpLimits;

pub use http::{HTTP_CONNECTION_LIFETIME, MAX_HTTP_CONNECTIONS, serve_bounded};

/// The port a tracker listens on by default (TCP and QUIC); HTTP uses the next one.
pub const DEFAULT_PORT: u16 = 7000;
/// Identify protocol version string, the same as nodes use.
const IDENTIFY_PROTOCOL: &str = "/shoal/id/1";
/// How often the stats snapshot is refreshed when no event does it.
const STATS_REFRESH: Duration = Duration::from_secs(1);

/// How the service listens and what it accepts. [`Default`] suits a public tracker on a
/// small server; [`Config::loopback`] suits tests. Durations are [`Duration`]s; counts are
/// per the unit their name says.
#[derive(Clone, Debug)]
pub struct Config {
    /// libp2p listen addresses. Default: QUIC and TCP on all IPv4 interfaces, port
    /// [`DEFAULT_PORT`].
    pub listen: Vec<Multiaddr>,
    /// Where to serve `GET /stats` and `GET /metrics`; `None` serves no HTTP. Default
    /// `127.0.0.1:7001` (loopback: put a reverse proxy or the scraper on the same host).
    pub http: Option<SocketAddr>,
    /// Peers whose `seed node` role is accepted (operators' seed servers). Anyone else
    /// claiming it is listed as seeder or leecher. Default: none.
    pub seed_node_allow: Vec<PeerId>,
    /// Peers whose takedowns are accepted (the operator's own identities, proven by their
    /// connection). Anyone else is denied. Default: none.
    pub operators: HashSet<PeerId>,
    /// Where the takedown list and its audit trail are kept (a redb file, created if
    /// missing; its directory must exist). `None` (default) keeps them in memory: they are
    /// lost when the tracker stops.
    pub takedown_store: Option<PathBuf>,
    /// The peer table's settings. Its `seed` is ignored: see [`Config::table_seed`].
    pub table: table::Config,
    /// Seed of the table's random choices and hash keys. `None` (default) draws it from the
    /// OS at start, as a public tracker must (the hash keys resist collision flooding only
    /// while secret); tests may fix it.
    pub table_seed: Option<u64>,
    /// Time for one request stream: reading the request and sending the answer. Default 10 s.
    pub request_timeout: Duration,
    /// A connection with no open stream is closed after this long. Default 30 s: a peer
    /// announces every few minutes, a connection per peer costs memory.
    pub idle_timeout: Duration,
    /// Most established inbound connections. Default 10,000.
    pub max_connections: u32,
    /// Most inbound connections still in their handshake. Default 256.
    pub max_pending_connections: u32,
    /// Most connections of one peer id. Default 2 (TCP and QUIC).
    pub max_connections_per_peer: u32,
    /// Most connections from one IP address. Default 16 (several nodes behind one NAT).
    pub max_connections_per_ip: u32,
    /// Most connections from one /24 (IPv4) or /48 (IPv6). Default 64.
    pub max_connections_per_subnet: u32,
    /// Scrapes a peer may send at once before the rate limit applies. Default 10.
    pub scrape_burst: u32,
    /// After a burst, one scrape per this long per peer. Default 1 s.
    pub scrape_interval: Duration,
    /// Most peers the scrape limiter tracks at once (peers idle for a burst's worth of
    /// intervals are forgotten first). Default 65,536.
    pub max_scrape_peers: usize,
    /// Run a circuit relay v2 and an AutoNAT v2 server with these limits, so nodes behind
    /// NAT can be reached through the tracker and hole-punch direct connections (docs/node.md
    /// "Reachability"). Default [`RelayLimits::tracker`]; `None` runs neither.
    pub relay: Option<RelayLimits>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![
                format!("/ip4/0.0.0.0/udp/{DEFAULT_PORT}/quic-v1")
                    .parse()
                    .expect("valid multiaddr"),
                format!("/ip4/0.0.0.0/tcp/{DEFAULT_PORT}")
                    .parse()
                    .expect("valid multiaddr"),
            ],
            http: Some(SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT + 1))),
            seed_node_allow: Vec::new(),
            operators: HashSet::new(),
            takedown_store: None,
            table: table::Config::default(),
            table_seed: None,
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_pending_connections: 256,
            max_connections_per_peer: 2,
            max_connections_per_ip: 16,
            max_connections_per_subnet: 64,
            scrape_burst: 10,
            scrape_interval: Duration::from_secs(1),
            max_scrape_peers: 65_536,
            relay: Some(RelayLimits::tracker()),
        }
    }
}

impl Config {
    /// Loopback only, random ports, HTTP on `127.0.0.1:0` (tests, demos).
    pub fn loopback() -> Self {
        Self {
            listen: vec![
                "/ip4/127.0.0.1/udp/0/quic-v1"
                    .parse()
                    .expect("valid multiaddr"),
                "/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr"),
            ],
            http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            ..Self::default()
        }
    }

    /// Sets [`Config::listen`].
    #[must_use]
    pub fn with_listen(mut self, listen: Vec<Multiaddr>) -> Self {
        self.listen = listen;
        self
    }

    /// Sets [`Config::http`].
    #[must_use]
    pub const fn with_http(mut self, http: Option<SocketAddr>) -> Self {
        self.http = http;
        self
    }

    /// Sets [`Config::seed_node_allow`].
    #[must_use]
    pub fn with_seed_node_allow(mut self, peers: Vec<PeerId>) -> Self {
        self.seed_node_allow = peers;
        self
    }

    /// Sets [`Config::operators`].
    #[must_use]
    pub fn with_operators(mut self, operators: impl IntoIterator<Item = PeerId>) -> Self {
        self.operators = operators.into_iter().collect();
        self
    }

    /// Sets [`Config::takedown_store`].
    #[must_use]
    pub fn with_takedown_store(mut self, path: Option<PathBuf>) -> Self {
        self.takedown_store = path;
        self
    }

    /// Sets [`Config::table`].
    #[must_use]
    pub fn with_table(mut self, table: table::Config) -> Self {
        self.table = table;
        self
    }

    /// Sets [`Config::table_seed`].
    #[must_use]
    pub const fn with_table_seed(mut self, seed: Option<u64>) -> Self {
        self.table_seed = seed;
        self
    }

    /// Sets the scrape rate limit: `burst` at once, then one per `interval` per peer.
    #[must_use]
    pub const fn with_scrape_limit(mut self, burst: u32, interval: Duration) -> Self {
        self.scrape_burst = burst;
        self.scrape_interval = interval;
        self
    }

    /// Sets [`Config::max_connections_per_ip`] and [`Config::max_connections_per_subnet`].
    #[must_use]
    pub const fn with_ip_limits(mut self, per_ip: u32, per_subnet: u32) -> Self {
        self.max_connections_per_ip = per_ip;
        self.max_connections_per_subnet = per_subnet;
        self
    }
}

/// Why the tracker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The peer table settings are invalid.
    #[error("invalid peer table settings")]
    Table(#[source] ConfigError),
    /// A service setting is invalid.
    #[error("{0}")]
    Config(&'static str),
    /// Building the transport failed.
    #[error("building the libp2p transport")]
    Transport(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Listening on a libp2p address failed (in use, not local, unsupported).
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The takedown store cannot be opened (in use by another tracker, corrupt, unreadable).
    #[error("cannot open the takedown store")]
    Takedowns(#[source] StoreError),
    /// Binding the HTTP endpoint failed.
    #[error("cannot serve HTTP on {addr}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A snapshot of the tracker's gauges and counters (`GET /stats` serialises it as JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// The peer table's gauges and counters (entries, swarms, peers, accepted announces,
    /// scraped swarms, refusals by reason, expiry, eviction).
    pub table: table::Stats,
    /// The service's own.
    pub service: ServiceStats,
}

/// The service's gauges and counters (counters since start).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ServiceStats {
    /// Gauge: peers with at least one open connection.
    pub connected_peers: u64,
    /// Gauge: open connections.
    pub connections: u64,
    /// Counter: announce requests received and decoded (accepted or refused by the table).
    pub announce_requests: u64,
    /// Counter: scrape requests received and decoded.
    pub scrape_requests: u64,
    /// Counter: scrape requests dropped by the rate limit.
    pub scrapes_rate_limited: u64,
    /// Counter: request streams dropped because they did not decode (refreshed within
    /// a second).
    pub decode_errors: u64,
    /// Counter: request streams that failed otherwise (timeouts, closed connections).
    pub stream_failures: u64,
    /// Counter: announced addresses dropped by the address checks.
    pub addrs_dropped: u64,
    /// Counter: seed-node claims from peers not on the allow-list.
    pub seed_node_downgrades: u64,
    /// Counter: inbound connections denied by the connection limits.
    pub connections_denied: u64,
    /// Counter: answers not sent because they failed validation (a bug; should stay 0).
    pub internal_errors: u64,
    /// Gauge: blobs on the takedown list.
    pub taken_down_blobs: u64,
    /// Counter: takedown requests received and decoded (from anyone).
    pub takedown_requests: u64,
    /// Counter: blobs newly taken down by operators.
    pub takedowns: u64,
    /// Counter: takedown requests denied because the peer is not an operator.
    pub takedowns_denied: u64,
    /// Counter: takedowns not recorded because the store failed (answered "unavailable").
    pub takedown_store_errors: u64,
    /// Counter: announces refused because their blob is taken down.
    pub refused_taken_down: u64,
    /// Counter: takedown-list requests received and decoded.
    pub takedown_list_requests: u64,
    /// Counter: takedown-list requests dropped by the (scrape) rate limit.
    pub takedown_lists_rate_limited: u64,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    ip_limits: IpLimits,
    tracker: request_response::Behaviour<CountingCodec>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    relay: Toggle<relay::Behaviour>,
    autonat: Toggle<autonat::v2::server::Behaviour>,
}

/// The tracker codec, counting requests that do not decode: request-response drops such a
/// stream without an event, so the codec is the only place that sees them.
#[derive(Clone, Debug)]
struct CountingCodec {
    decode_errors: Arc<AtomicU64>,
}

impl request_response::Codec for CountingCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, p: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        let read = TrackerCodec.read_request(p, io).await;
        if read
            .as_ref()
            .is_err_and(|e| e.kind() == io::ErrorKind::InvalidData)
        {
            self.decode_errors.fetch_add(1, Ordering::Relaxed);
        }
        read
    }

    async fn read_response<T>(&mut self, p: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        TrackerCodec.read_response(p, io).await
    }

    async fn write_request<T>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        TrackerCodec.write_request(p, io, req).await
    }

    async fn write_response<T>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        TrackerCodec.write_response(p, io, res).await
    }
}

/// A running tracker. Cheap to clone; it stops when the cancellation token it was started
/// with is cancelled (or [`Tracker::shutdown`] is called).
#[derive(Clone)]
pub struct Tracker {
    inner: Arc<Inner>,
}

struct Inner {
    /// The event loop and the HTTP server.
    tasks: TaskTracker,
    peer_id: PeerId,
    listen: watch::Receiver<Vec<Multiaddr>>,
    stats: watch::Receiver<Stats>,
    http_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("peer_id", &self.inner.peer_id)
            .field("http_addr", &self.inner.http_addr)
            .finish_non_exhaustive()
    }
}

impl Tracker {
    /// Starts a tracker with identity `keypair`: binds every listen address and the HTTP
    /// endpoint, then runs until `shutdown` is cancelled. Must be called within a tokio
    /// runtime.
    ///
    /// # Errors
    /// If a setting is invalid, the transport cannot be built, or an address (libp2p or
    /// HTTP) cannot be bound.
    pub fn start(
        config: Config,
        keypair: Keypair,
        shutdown: CancellationToken,
    ) -> Result<Self, StartError> {
        if config.scrape_burst == 0 {
            return Err(StartError::Config("scrape_burst must be at least 1"));
        }
        if config.max_scrape_peers == 0 {
            return Err(StartError::Config("max_scrape_peers must be at least 1"));
        }
        let seed = config.table_seed.unwrap_or_else(rand::random);
        let table = PeerTable::new(config.table.clone().with_seed(seed), Instant::now())
            .map_err(StartError::Table)?;
        let takedowns = match &config.takedown_store {
            Some(path) => TakedownStore::open(path).map_err(StartError::Takedowns)?,
            None => TakedownStore::in_memory(),
        };
        if takedowns.repaired() {
            warn!(
                store = takedowns.location(),
                "the takedown store was damaged and has been repaired; the newest takedowns may be lost: check GET /takedowns and take them down again"
            );
        }
        let http = match config.http {
            Some(addr) => Some(
                http::bind(addr)
                    .and_then(|l| Ok((l.local_addr()?, l)))
                    .map_err(|source| StartError::Http { addr, source })?,
            ),
            None => None,
        };

        let decode_errors = Arc::new(AtomicU64::new(0));
        let swarm = listening_swarm(&config, keypair, decode_errors.clone())?;

        let peer_id = *swarm.local_peer_id();
        let (listen_tx, listen) = watch::channel(Vec::new());
        let counters = ServiceStats {
            taken_down_blobs: takedowns.len() as u64,
            ..ServiceStats::default()
        };
        let (stats_tx, stats) = watch::channel(Stats {
            table: table.stats(),
            service: counters.clone(),
        });
        let http_addr = http.as_ref().map(|(addr, _)| *addr);
        let tasks = TaskTracker::new();
        if let Some((_, listener)) = http {
            http::spawn(
                listener,
                stats.clone(),
                takedowns.reader(),
                shutdown.clone(),
                &tasks,
            );
        }
        info!(
            store = takedowns.location(),
            taken_down = takedowns.len(),
            operators = config.operators.len(),
            "takedown list loaded"
        );
        let service = Service {
            swarm,
            table,
            seed_node_allow: config.seed_node_allow.iter().copied().collect(),
            operators: config.operators.clone(),
            takedowns,
            scrapes: RateLimiter::new(
                config.scrape_burst,
                config.scrape_interval,
                config.max_scrape_peers,
            ),
            conns: HashMap::new(),
            relaying: config
                .relay
                .map(|_| shoal_node::reach::names_loopback(&config.listen)),
            counters,
            decode_errors,
            stats: stats_tx,
            listen: listen_tx,
        };
        tasks.spawn(service.run(shutdown.clone()));
        tasks.close();
        info!(peer = %peer_id, http = ?http_addr, "tracker started");
        Ok(Self {
            inner: Arc::new(Inner {
                tasks,
                peer_id,
                listen,
                stats,
                http_addr,
                shutdown,
            }),
        })
    }

    /// The tracker's peer id (what `/p2p/…` in its address names).
    pub fn peer_id(&self) -> PeerId {
        self.inner.peer_id
    }

    /// The addresses the tracker listens on, waiting up to `timeout` for at least one.
    /// Cancel-safe.
    pub async fn listen_addrs(&self, timeout: Duration) -> Vec<Multiaddr> {
        let mut rx = self.inner.listen.clone();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|a| !a.is_empty())).await;
        rx.borrow().clone()
    }

    /// Where the HTTP endpoints listen (with the actual port when `:0` was asked), if any.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.inner.http_addr
    }

    /// The latest gauges and counters (updated after every event the tracker handles).
    pub fn stats(&self) -> Stats {
        self.inner.stats.borrow().clone()
    }

    /// A receiver of every new [`Stats`] snapshot, to wait for a condition
    /// (`watch::Receiver::wait_for`) instead of polling.
    pub fn subscribe_stats(&self) -> watch::Receiver<Stats> {
        self.inner.stats.clone()
    }

    /// Stops the tracker's tasks (the same as cancelling its token).
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Waits until the tracker's tasks have ended after a shutdown: its ports are closed and
    /// its takedown store is released (another tracker may open it). Open HTTP connections
    /// are finished first (each lives at most [`HTTP_CONNECTION_LIFETIME`]). Cancel-safe.
    pub async fn stopped(&self) {
        self.inner.tasks.wait().await;
    }
}

/// An open connection.
#[derive(Clone, Copy, Debug)]
struct Conn {
    peer: PeerId,
    /// The IP it comes from.
    remote: Option<IpAddr>,
    /// The tracker's IP it reached (inbound connections).
    local: Option<IpAddr>,
}

/// The tracker's swarm: its behaviours with their limits (the relay and AutoNAT servers when
/// `config.relay` is set), listening on `config.listen`. Request streams that fail to decode
/// count in `decode_errors`.
fn listening_swarm(
    config: &Config,
    keypair: Keypair,
    decode_errors: Arc<AtomicU64>,
) -> Result<Swarm<Behaviour>, StartError> {
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established_incoming(Some(config.max_connections))
        .with_max_pending_incoming(Some(config.max_pending_connections))
        .with_max_established_per_peer(Some(config.max_connections_per_peer));
    let ip_limits = IpLimits::new(
        config.max_connections_per_ip,
        config.max_connections_per_subnet,
    );
    let idle = config.idle_timeout;
    let request_timeout = config.request_timeout;
    let codec = CountingCodec { decode_errors };
    let mut swarm = shoal_node::transport::build_swarm(keypair, idle, |key| Behaviour {
        limits: connection_limits::Behaviour::new(limits),
        ip_limits,
        tracker: request_response::Behaviour::with_codec(
            codec,
            [(tracker_codec::tracker_protocol(), ProtocolSupport::Inbound)],
            request_response::Config::default()
                .with_request_timeout(request_timeout)
                .with_max_concurrent_streams(tracker_codec::MAX_CONCURRENT_STREAMS),
        ),
        identify: identify::Behaviour::new(identify::Config::new(
            IDENTIFY_PROTOCOL.into(),
            key.public(),
        )),
        ping: ping::Behaviour::default(),
        relay: config
            .relay
            .map(|l| relay::Behaviour::new(key.public().to_peer_id(), l.relay_config()))
            .into(),
        autonat: config
            .relay
            .map(|_| autonat::v2::server::Behaviour::default())
            .into(),
    })
    .map_err(StartError::Transport)?;
    if let Some(relay) = swarm.behaviour_mut().relay.as_mut() {
        // A tracker is a public server: it relays from the start instead of waiting for
        // AutoNAT to confirm an external address (libp2p's default).
        relay.set_status(Some(relay::Status::Enable));
    }
    for addr in &config.listen {
        let listen_error = |source| StartError::Listen {
            addr: addr.clone(),
            source,
        };
        shoal_node::transport::probe_listen(addr).map_err(|e| listen_error(e.into()))?;
        swarm.listen_on(addr.clone()).map_err(|e| {
            listen_error(match e {
                TransportError::Other(io) => io.into(),
                TransportError::MultiaddrNotSupported(a) => {
                    format!("no transport for {a}: use /ip4|ip6/…/tcp/… or /udp/…/quic-v1").into()
                }
            })
        })?;
    }
    Ok(swarm)
}

/// The event loop's state: the single owner of the swarm and the table.
struct Service {
    swarm: Swarm<Behaviour>,
    table: PeerTable<PeerId>,
    seed_node_allow: HashSet<PeerId>,
    operators: HashSet<PeerId>,
    takedowns: TakedownStore,
    /// Scrapes and takedown-list requests: one bucket per peer for both.
    scrapes: RateLimiter<PeerId>,
    /// Open connections: the IP each comes from and the IP it reached (bounded by the
    /// connection limits).
    conns: HashMap<ConnectionId, Conn>,
    /// Whether this tracker relays (then it vouches for circuits through itself, and its
    /// listen addresses are external ones: loopback ones too if `Some(true)`, when told to
    /// listen on loopback).
    relaying: Option<bool>,
    counters: ServiceStats,
    /// Shared with the codec, which counts requests that do not decode.
    decode_errors: Arc<AtomicU64>,
    stats: watch::Sender<Stats>,
    listen: watch::Sender<Vec<Multiaddr>>,
}

impl Service {
    async fn run(mut self, shutdown: CancellationToken) {
        let expiry = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(expiry);
        let mut armed = self.arm(expiry.as_mut());
        // Some counters change without a swarm event (decode errors): refresh regularly.
        let mut refresh = tokio::time::interval(STATS_REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = refresh.tick() => {}
                () = &mut expiry, if armed => {
                    let removed = self.table.expire(Instant::now());
                    debug!(removed, "expiry pass");
                }
                event = self.swarm.select_next_some() => self.on_event(event),
            }
            armed = self.arm(expiry.as_mut());
            self.publish();
        }
        debug!("tracker event loop stopped");
    }

    /// Points the expiry timer at the table's next `poll_timeout`; false if there is none.
    fn arm(&self, timer: Pin<&mut Sleep>) -> bool {
        let Some(at) = self.table.poll_timeout() else {
            return false;
        };
        let at = tokio::time::Instant::from_std(at);
        if timer.deadline() != at {
            timer.reset(at);
        }
        true
    }

    fn publish(&self) {
        let mut service = self.counters.clone();
        service.decode_errors = self.decode_errors.load(Ordering::Relaxed);
        self.stats.send_replace(Stats {
            table: self.table.stats(),
            service,
        });
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Tracker(event)) => self.on_tracker(event),
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                if let Some(loopback_ok) = self.relaying
                    && shoal_node::reach::advertise_listen_addr(&address, loopback_ok)
                {
                    // A relay's reservations carry its addresses; clients refuse one without.
                    self.swarm.add_external_address(address.clone());
                }
                self.listen.send_modify(|a| a.push(address));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                info!(%address, "no longer listening");
                self.listen.send_modify(|a| a.retain(|x| *x != address));
            }
            SwarmEvent::ListenerError { error, .. } => {
                warn!(%error, "listener error");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                let ip = checks::remote_ip(endpoint.get_remote_address());
                debug!(peer = %peer_id, ip = ?ip, "connected");
                let local = match &endpoint {
                    libp2p::core::ConnectedPoint::Listener { local_addr, .. } => {
                        checks::remote_ip(local_addr)
                    }
                    libp2p::core::ConnectedPoint::Dialer { .. } => None,
                };
                self.conns.insert(
                    connection_id,
                    Conn {
                        peer: peer_id,
                        remote: ip,
                        local,
                    },
                );
                self.counters.connections = self.conns.len() as u64;
                if num_established.get() == 1 {
                    self.counters.connected_peers += 1;
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                debug!(peer = %peer_id, "disconnected");
                self.conns.remove(&connection_id);
                self.counters.connections = self.conns.len() as u64;
                if num_established == 0 {
                    self.counters.connected_peers = self.counters.connected_peers.saturating_sub(1);
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                if matches!(error, libp2p::swarm::ListenError::Denied { .. }) {
                    self.counters.connections_denied += 1;
                }
                debug!(remote = %send_back_addr, %error, "inbound connection failed");
            }
            _ => {}
        }
    }

    fn on_tracker(&mut self, event: request_response::Event<Request, Response>) {
        match event {
            request_response::Event::Message {
                peer,
                connection_id,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
            } => self.on_request(peer, connection_id, request, channel),
            // Undecodable requests never get here: request-response drops their streams
            // silently, so `CountingCodec` counts them.
            request_response::Event::InboundFailure { peer, error, .. } => match error {
                // We dropped the answer on purpose (a rate-limited scrape).
                InboundFailure::ResponseOmission => {}
                other => {
                    self.counters.stream_failures += 1;
                    debug!(peer = %peer, error = %other, "request stream failed");
                }
            },
            // The tracker sends no requests: no responses or outbound failures arrive.
            request_response::Event::Message { .. }
            | request_response::Event::OutboundFailure { .. }
            | request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_request(
        &mut self,
        peer: PeerId,
        conn: ConnectionId,
        request: Request,
        channel: ResponseChannel<Response>,
    ) {
        let now = Instant::now();
        let response = match request {
            Request::Announce(req) => {
                self.counters.announce_requests += 1;
                Response::Announce(self.announce(now, peer, conn, req))
            }
            Request::Scrape(req) => {
                self.counters.scrape_requests += 1;
                let Some(answer) = self.scrape(now, peer, &req) else {
                    // Dropping the channel closes the stream: the peer sees no answer.
                    return;
                };
                Response::Scrape(answer)
            }
            Request::Takedown(req) => {
                self.counters.takedown_requests += 1;
                self.takedown(peer, &req)
            }
            Request::TakedownList(req) => {
                self.counters.takedown_list_requests += 1;
                let Some(page) = self.takedown_list(now, peer, req) else {
                    return; // rate limited: no answer
                };
                page
            }
        };
        // The encoder panics on an invalid message; the table only builds valid ones, but a
        // bug there must not take the connection task down.
        if let Err(e) = response.validate() {
            self.counters.internal_errors += 1;
            error!(peer = %peer, error = %e, "built an invalid answer; not sent (a bug)");
            return;
        }
        if self
            .swarm
            .behaviour_mut()
            .tracker
            .send_response(channel, response)
            .is_err()
        {
            debug!(peer = %peer, "peer left before its answer was sent");
        }
    }

    /// The relays circuits may go through: this tracker at the IP connection `conn`
    /// reached, and the allow-listed seed nodes connected now at the IPs they come from.
    fn known_relays(&self, conn: ConnectionId) -> checks::KnownRelays {
        let mut relays = checks::KnownRelays::default();
        if self.relaying.is_some()
            && let Some(local) = self.conns.get(&conn).and_then(|c| c.local)
        {
            relays.0.insert(*self.swarm.local_peer_id(), vec![local]);
        }
        for c in self.conns.values() {
            if let Some(ip) = c.remote
                && self.seed_node_allow.contains(&c.peer)
            {
                relays.0.entry(c.peer).or_default().push(ip);
            }
        }
        relays
    }

    fn announce(
        &mut self,
        now: Instant,
        peer: PeerId,
        conn: ConnectionId,
        mut req: AnnounceRequest,
    ) -> AnnounceResponse {
        if self.takedowns.is_taken_down(&req.blob) {
            self.counters.refused_taken_down += 1;
            debug!(peer = %peer, blob = %req.blob, "announce of a taken-down blob refused");
            return AnnounceResponse::Refused {
                reason: RefusalReason::TakenDown,
            };
        }
        let observed = self.conns.get(&conn).and_then(|c| c.remote);
        let relays = self.known_relays(conn);
        let (kept, dropped) = checks::filter_addrs(&req.addrs, &peer, observed, &relays);
        if !dropped.is_empty() {
            self.counters.addrs_dropped += dropped.len() as u64;
            debug!(peer = %peer, dropped = ?dropped, "announced addresses dropped");
        }
        req.addrs = kept;
        if checks::authorise_role(&mut req, self.seed_node_allow.contains(&peer)) {
            self.counters.seed_node_downgrades += 1;
            debug!(peer = %peer, role = %req.role, "seed-node claim not allow-listed; downgraded");
        }
        match self.table.announce(now, peer, &req) {
            Ok(answer) => {
                debug!(
                    peer = %peer,
                    blob = %req.blob,
                    role = %req.role,
                    event = ?req.event,
                    peers = answer.peers.len(),
                    seed_nodes = answer.seed_nodes.len(),
                    "announce"
                );
                answer.into_response(|p: &PeerId| p.to_bytes())
            }
            Err(refusal) => {
                debug!(peer = %peer, blob = %req.blob, %refusal, "announce refused");
                AnnounceResponse::Refused {
                    reason: refusal.into(),
                }
            }
        }
    }

    fn scrape(
        &mut self,
        now: Instant,
        peer: PeerId,
        req: &ScrapeRequest,
    ) -> Option<ScrapeResponse> {
        if !self.scrapes.allow(now, peer) {
            self.counters.scrapes_rate_limited += 1;
            debug!(peer = %peer, "scrape rate limited; dropped");
            return None;
        }
        let swarms = req
            .blobs
            .iter()
            .map(|&blob| {
                if self.takedowns.is_taken_down(&blob) {
                    SwarmStats::empty(blob)
                } else {
                    self.table.scrape(now, blob)
                }
            })
            .collect();
        debug!(peer = %peer, blobs = req.blobs.len(), "scrape");
        Some(ScrapeResponse { swarms })
    }

    /// An operator's takedown: recorded durably before the answer; the swarm leaves the
    /// table. Anyone else is denied. The write (one fsync) blocks the loop for a moment; only
    /// operators can cause one.
    fn takedown(&mut self, peer: PeerId, req: &TakedownRequest) -> Response {
        if !self.operators.contains(&peer) {
            self.counters.takedowns_denied += 1;
            debug!(peer = %peer, blob = %req.blob, "takedown from a peer that is not an operator; denied");
            return Response::Denied(DenyReason::NotOperator);
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match self.takedowns.take_down(now, &peer, req.blob, &req.reason) {
            Ok(recorded) => {
                if recorded.new {
                    let removed = self.table.remove_swarm(req.blob);
                    self.counters.takedowns += 1;
                    self.counters.taken_down_blobs = self.takedowns.len() as u64;
                    info!(operator = %peer, blob = %req.blob, seq = recorded.seq, removed, "blob taken down");
                } else {
                    info!(operator = %peer, blob = %req.blob, seq = recorded.seq, "blob was already taken down; recorded again");
                }
                Response::TakedownDone { seq: recorded.seq }
            }
            Err(e) => {
                self.counters.takedown_store_errors += 1;
                error!(operator = %peer, blob = %req.blob, error = %e, "cannot record a takedown; answered unavailable");
                Response::Denied(DenyReason::Unavailable)
            }
        }
    }

    /// A page of the public takedown list, or `None` if the peer is over its rate limit.
    fn takedown_list(
        &mut self,
        now: Instant,
        peer: PeerId,
        req: TakedownListRequest,
    ) -> Option<Response> {
        if !self.scrapes.allow(now, peer) {
            self.counters.takedown_lists_rate_limited += 1;
            debug!(peer = %peer, "takedown-list request rate limited; dropped");
            return None;
        }
        let page = self.takedowns.list(req.since, MAX_TAKEDOWN_ENTRIES);
        debug!(peer = %peer, since = req.since, entries = page.entries.len(), more = page.more, "takedown list");
        Some(Response::TakedownList(page))
    }
}
