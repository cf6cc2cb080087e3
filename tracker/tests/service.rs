//! The tracker service over real libp2p on 127.0.0.1: bare client swarms (request-response
//! outbound with the node's codec, plus raw streams for malformed input) announce to,
//! scrape and take down blobs at a started `Tracker`, and the HTTP endpoints are read with a
//! hand-written GET.
//! Every wait has a timeout; waits on the tracker's state watch its stats snapshots.

// Helpers outside #[test] fns: a panic there is a test failure, which is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{future::Future, net::SocketAddr, time::Duration};

use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::{
    Multiaddr, PeerId, Swarm, noise,
    request_response::{self, ProtocolSupport},
    swarm::{NetworkBehaviour, SwarmEvent},
    tcp, yamux,
};
use shoal_node::tracker_codec::{self, TrackerCodec};
use shoal_protocol::{
    BlobId,
    tracker::{
        AnnounceRequest, AnnounceResponse, DenyReason, Event, MAX_REQUEST_LEN,
        MAX_TAKEDOWN_ENTRIES, RefusalReason, Request, Response, Role, ScrapeRequest, SwarmStats,
        TakedownListRequest, TakedownRequest,
    },
};
use shoal_tracker::{ServiceConfig, StartError, Stats, Tracker, table, takedowns::StoreError};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// Bound of every wait.
const LIMIT: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A started tracker that stops when dropped.
struct Running {
    tracker: Tracker,
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn start(config: ServiceConfig) -> Running {
    init_logging();
    let stop = CancellationToken::new();
    let keypair = libp2p::identity::Keypair::generate_ed25519();
    let tracker = Tracker::start(config, keypair, stop.clone()).expect("tracker starts");
    Running { tracker, stop }
}

/// The tracker's first listen address of `kind` ("tcp" or "quic-v1"), with `/p2p/<id>`.
async fn tracker_addr(t: &Tracker, kind: &str) -> Multiaddr {
    within("tracker listen address", async {
        loop {
            let addrs = t.listen_addrs(Duration::from_millis(200)).await;
            if let Some(a) = addrs.iter().find(|a| a.to_string().contains(kind)) {
                return format!("{a}/p2p/{}", t.peer_id()).parse().unwrap();
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

/// Waits until the tracker's stats satisfy `f`.
async fn wait_stats(t: &Tracker, what: &str, f: impl Fn(&Stats) -> bool) -> Stats {
    let mut rx = t.subscribe_stats();
    match tokio::time::timeout(LIMIT, rx.wait_for(|s| f(s))).await {
        Ok(Ok(s)) => s.clone(),
        _ => panic!("timed out waiting for {what}; stats: {:#?}", t.stats()),
    }
}

#[derive(NetworkBehaviour)]
struct ClientBehaviour {
    rr: request_response::Behaviour<TrackerCodec>,
    stream: libp2p_stream::Behaviour,
}

/// A bare libp2p peer: it dials the tracker and sends requests; it listens nowhere. It speaks
/// only Noise and stock yamux on TCP, so the tests also check that Shoal's listeners (which
/// offer TLS first) still take plain libp2p peers.
struct Client {
    swarm: Swarm<ClientBehaviour>,
}

impl Client {
    fn new() -> Self {
        let swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_quic()
            .with_behaviour(|_| ClientBehaviour {
                rr: tracker_codec::behaviour(ProtocolSupport::Outbound, LIMIT),
                stream: libp2p_stream::Behaviour::new(),
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(LIMIT))
            .build();
        Self { swarm }
    }

    fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// Connects to `addr` (ending in `/p2p/<tracker>`); returns the tracker's id, or the
    /// error if the connection fails.
    async fn try_connect(&mut self, addr: &Multiaddr) -> Result<PeerId, String> {
        self.swarm.dial(addr.clone()).unwrap();
        within("connection", async {
            loop {
                match self.swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } => return Ok(peer_id),
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        return Err(error.to_string());
                    }
                    _ => {}
                }
            }
        })
        .await
    }

    async fn connect(&mut self, addr: &Multiaddr) -> PeerId {
        self.try_connect(addr).await.expect("connects to tracker")
    }

    /// Sends one request over an open connection and waits for its answer or failure.
    async fn request(&mut self, tracker: PeerId, req: Request) -> Result<Response, String> {
        let id = self.swarm.behaviour_mut().rr.send_request(&tracker, req);
        within("tracker answer", async {
            loop {
                if let SwarmEvent::Behaviour(ClientBehaviourEvent::Rr(ev)) =
                    self.swarm.select_next_some().await
                {
                    match ev {
                        request_response::Event::Message {
                            message:
                                request_response::Message::Response {
                                    request_id,
                                    response,
                                },
                            ..
                        } if request_id == id => return Ok(response),
                        request_response::Event::OutboundFailure {
                            request_id, error, ..
                        } if request_id == id => return Err(error.to_string()),
                        _ => {}
                    }
                }
            }
        })
        .await
    }

    async fn announce(&mut self, tracker: PeerId, req: AnnounceRequest) -> AnnounceResponse {
        match self.request(tracker, Request::Announce(req)).await {
            Ok(Response::Announce(a)) => a,
            other => panic!("expected an announce answer, got {other:?}"),
        }
    }

    /// Writes `bytes` on a raw `/shoal/tracker/1` stream, closes the write side and returns
    /// whatever comes back before the stream ends.
    async fn raw(&mut self, tracker: PeerId, bytes: Vec<u8>) -> Vec<u8> {
        let mut control = self.swarm.behaviour().stream.new_control();
        let exchange = async move {
            let mut s = control
                .open_stream(tracker, tracker_codec::tracker_protocol())
                .await
                .expect("stream opens");
            // The tracker may drop the stream before reading it all: a failed write is fine.
            let _ = s.write_all(&bytes).await;
            let _ = s.close().await;
            let mut back = Vec::new();
            let _ = s.read_to_end(&mut back).await;
            back
        };
        let swarm = &mut self.swarm;
        within("raw stream", async {
            tokio::pin!(exchange);
            loop {
                tokio::select! {
                    back = &mut exchange => return back,
                    _ = swarm.select_next_some() => {}
                }
            }
        })
        .await
    }
}

fn blob(n: u8) -> BlobId {
    BlobId::from_bytes([n; 32])
}

fn addr_bytes(s: &str) -> Vec<u8> {
    s.parse::<Multiaddr>().unwrap().to_vec()
}

fn announce(blob: BlobId, role: Role, held: u32, addrs: Vec<Vec<u8>>) -> AnnounceRequest {
    AnnounceRequest {
        blob,
        role,
        blocks_held: held,
        total_blocks: 10,
        addrs,
        event: Event::Started,
    }
}

fn peers_of(
    a: &AnnounceResponse,
) -> (
    &[shoal_protocol::tracker::PeerEntry],
    &[shoal_protocol::tracker::PeerEntry],
) {
    match a {
        AnnounceResponse::Ok {
            peers, seed_nodes, ..
        } => (peers, seed_nodes),
        AnnounceResponse::Refused { reason } => panic!("refused: {reason:?}"),
    }
}

#[tokio::test]
async fn second_peer_learns_the_first_with_its_checked_addresses_and_connection_id() {
    let t = start(ServiceConfig::loopback());
    let tcp = tracker_addr(&t.tracker, "tcp").await;
    let quic = tracker_addr(&t.tracker, "quic-v1").await;

    // A seeder over TCP lists a good address, a foreign IP, and a /p2p/ of someone else.
    let mut a = Client::new();
    let tracker = a.connect(&tcp).await;
    assert_eq!(tracker, t.tracker.peer_id());
    let good = addr_bytes("/ip4/127.0.0.1/tcp/4001");
    let own_p2p = addr_bytes(&format!(
        "/ip4/127.0.0.1/udp/4001/quic-v1/p2p/{}",
        a.peer_id()
    ));
    let foreign_ip = addr_bytes("/ip4/192.0.2.7/tcp/4001");
    let other_peer = addr_bytes(&format!("/ip4/127.0.0.1/tcp/4002/p2p/{}", PeerId::random()));
    let answer = a
        .announce(
            tracker,
            announce(
                blob(1),
                Role::Seeder,
                10,
                vec![good.clone(), foreign_ip, other_peer, own_p2p.clone()],
            ),
        )
        .await;
    let (peers, _) = peers_of(&answer);
    assert!(peers.is_empty(), "first in the swarm: {answer:?}");

    // A second seeder lists only a foreign address: it is listed without any.
    let mut c = Client::new();
    c.connect(&tcp).await;
    c.announce(
        tracker,
        announce(
            blob(1),
            Role::Seeder,
            10,
            vec![addr_bytes("/ip4/192.0.2.8/tcp/1")],
        ),
    )
    .await;

    // A leecher over QUIC gets both, under the ids their connections proved.
    let mut b = Client::new();
    b.connect(&quic).await;
    let answer = b
        .announce(
            tracker,
            announce(
                blob(1),
                Role::Leecher,
                0,
                vec![addr_bytes("/ip4/127.0.0.1/udp/4003/quic-v1")],
            ),
        )
        .await;
    let (peers, seed_nodes) = peers_of(&answer);
    assert!(seed_nodes.is_empty());
    assert_eq!(peers.len(), 2, "{answer:?}");
    let entry_of = |p: &Client| {
        peers
            .iter()
            .find(|e| e.peer_id == p.peer_id().to_bytes())
            .unwrap_or_else(|| panic!("{} not listed in {answer:?}", p.peer_id()))
    };
    let first = entry_of(&a);
    assert_eq!(first.role, Role::Seeder);
    assert_eq!(first.blocks_held, 10);
    assert_eq!(first.addrs, vec![good, own_p2p]);
    assert!(entry_of(&c).addrs.is_empty(), "no address is made up");
    assert!(
        !peers.iter().any(|e| e.peer_id == b.peer_id().to_bytes()),
        "never the asker"
    );

    // A third seeder gets the leecher, with the address its QUIC connection vouched for.
    let mut d = Client::new();
    d.connect(&tcp).await;
    let answer = d
        .announce(tracker, announce(blob(1), Role::Seeder, 10, vec![]))
        .await;
    let (peers, _) = peers_of(&answer);
    assert_eq!(peers.len(), 1, "a seeder gets leechers only: {answer:?}");
    assert_eq!(peers[0].peer_id, b.peer_id().to_bytes());
    assert_eq!(
        peers[0].addrs,
        vec![addr_bytes("/ip4/127.0.0.1/udp/4003/quic-v1")]
    );

    let stats = wait_stats(&t.tracker, "four announces", |s| {
        s.service.announce_requests == 4
    })
    .await;
    assert_eq!(stats.service.addrs_dropped, 3);
    assert_eq!(stats.table.entries, 4);
    assert_eq!(stats.table.seeders, 3);
    assert_eq!(stats.table.leechers, 1);
    assert_eq!(stats.service.connected_peers, 4);
}

#[tokio::test]
async fn seed_node_claims_from_peers_not_allow_listed_are_downgraded() {
    let operator = Client::new();
    let t = start(ServiceConfig::loopback().with_seed_node_allow(vec![operator.peer_id()]));
    let tcp = tracker_addr(&t.tracker, "tcp").await;
    let mut operator = operator;
    let tracker = operator.connect(&tcp).await;
    let mut pretender = Client::new();
    pretender.connect(&tcp).await;
    let mut partial_pretender = Client::new();
    partial_pretender.connect(&tcp).await;
    let mut leecher = Client::new();
    leecher.connect(&tcp).await;

    let claim = |held| announce(blob(2), Role::SeedNode, held, vec![]);
    operator.announce(tracker, claim(10)).await;
    pretender.announce(tracker, claim(10)).await;
    partial_pretender.announce(tracker, claim(4)).await;
    let answer = leecher
        .announce(tracker, announce(blob(2), Role::Leecher, 1, vec![]))
        .await;
    let (peers, seed_nodes) = peers_of(&answer);
    assert_eq!(seed_nodes.len(), 1, "{answer:?}");
    assert_eq!(seed_nodes[0].peer_id, operator.peer_id().to_bytes());
    let role_of = |c: &Client| {
        peers
            .iter()
            .find(|e| e.peer_id == c.peer_id().to_bytes())
            .map(|e| e.role)
    };
    assert_eq!(role_of(&pretender), Some(Role::Seeder));
    assert_eq!(role_of(&partial_pretender), Some(Role::Leecher));
    let stats = wait_stats(&t.tracker, "downgrades", |s| {
        s.service.announce_requests == 4
    })
    .await;
    assert_eq!(stats.service.seed_node_downgrades, 2);
    assert_eq!(stats.table.seed_nodes, 1);
}

#[tokio::test]
async fn announcing_again_too_soon_is_refused_as_rate_limited() {
    let t = start(ServiceConfig::loopback());
    let tcp = tracker_addr(&t.tracker, "tcp").await;
    let mut a = Client::new();
    let tracker = a.connect(&tcp).await;
    let first = a
        .announce(tracker, announce(blob(3), Role::Leecher, 0, vec![]))
        .await;
    assert!(matches!(first, AnnounceResponse::Ok { .. }), "{first:?}");
    let mut again = announce(blob(3), Role::Leecher, 1, vec![]);
    again.event = Event::Periodic;
    let second = a.announce(tracker, again).await;
    match second {
        AnnounceResponse::Refused {
            reason: RefusalReason::RateLimited { retry_after_secs },
        } => assert!((1..=60).contains(&retry_after_secs), "{retry_after_secs}"),
        other => panic!("expected a rate-limit refusal, got {other:?}"),
    }
    let stats = wait_stats(&t.tracker, "refusal", |s| s.table.refused_rate_limited == 1).await;
    assert_eq!(stats.table.announces, 1);
    assert_eq!(stats.service.announce_requests, 2);
}

#[tokio::test]
async fn scrapes_count_swarm_members_and_are_rate_limited_per_peer() {
    let t = start(ServiceConfig::loopback().with_scrape_limit(2, Duration::from_secs(3600)));
    let tcp = tracker_addr(&t.tracker, "tcp").await;
    let mut s = Client::new();
    let tracker = s.connect(&tcp).await;
    let mut l = Client::new();
    l.connect(&tcp).await;
    s.announce(tracker, announce(blob(4), Role::Seeder, 10, vec![]))
        .await;
    l.announce(tracker, announce(blob(4), Role::Leecher, 3, vec![]))
        .await;

    let mut scraper = Client::new();
    scraper.connect(&tcp).await;
    let scrape = || {
        Request::Scrape(ScrapeRequest {
            blobs: vec![blob(4), blob(5)],
        })
    };
    let expected = vec![
        SwarmStats {
            blob: blob(4),
            seeders: 1,
            leechers: 1,
            seed_nodes: 0,
            completed: 0,
        },
        SwarmStats::empty(blob(5)),
    ];
    for _ in 0..2 {
        match scraper.request(tracker, scrape()).await {
            Ok(Response::Scrape(r)) => assert_eq!(r.swarms, expected),
            other => panic!("expected a scrape answer, got {other:?}"),
        }
    }
    // The burst is spent: the third scrape gets no answer (the stream is dropped) ...
    let third = scraper.request(tracker, scrape()).await;
    assert!(third.is_err(), "{third:?}");
    // ... while another peer still may, and announces are not affected.
    match l.request(tracker, scrape()).await {
        Ok(Response::Scrape(r)) => assert_eq!(r.swarms, expected),
        other => panic!("expected a scrape answer, got {other:?}"),
    }
    let stats = wait_stats(&t.tracker, "scrapes", |s| s.service.scrape_requests == 4).await;
    assert_eq!(stats.service.scrapes_rate_limited, 1);
    assert_eq!(stats.table.scrapes, 6, "two swarms per answered scrape");
}

#[tokio::test]
async fn malformed_requests_are_dropped_and_the_tracker_keeps_serving() {
    let t = start(ServiceConfig::loopback());
    let tcp = tracker_addr(&t.tracker, "tcp").await;
    let mut c = Client::new();
    let tracker = c.connect(&tcp).await;

    // Garbage, a response sent as a request, and a request past MAX_REQUEST_LEN.
    let back = c.raw(tracker, b"\x01not an announce".to_vec()).await;
    assert!(back.is_empty(), "no answer to garbage: {back:?}");
    let wrong_way = Response::Announce(AnnounceResponse::Refused {
        reason: RefusalReason::SwarmFull,
    })
    .encode();
    assert!(c.raw(tracker, wrong_way).await.is_empty());
    let mut long = Request::Announce(announce(blob(6), Role::Leecher, 0, vec![])).encode();
    long.resize(MAX_REQUEST_LEN + 100, 0);
    assert!(c.raw(tracker, long).await.is_empty());
    let stats = wait_stats(&t.tracker, "decode errors", |s| {
        s.service.decode_errors == 3
    })
    .await;
    assert_eq!(stats.service.announce_requests, 0);
    assert_eq!(stats.table.entries, 0);

    // A valid request on a raw stream is answered in the wire format, and the same
    // connection keeps working through request-response.
    let valid = Request::Announce(announce(blob(6), Role::Leecher, 0, vec![])).encode();
    let back = c.raw(tracker, valid).await;
    assert!(
        matches!(
            Response::decode(&back),
            Ok(Response::Announce(AnnounceResponse::Ok { .. }))
        ),
        "{back:?}"
    );
    let ok = c
        .announce(tracker, announce(blob(7), Role::Leecher, 0, vec![]))
        .await;
    assert!(matches!(ok, AnnounceResponse::Ok { .. }), "{ok:?}");
}

#[tokio::test]
async fn connections_beyond_the_per_ip_limit_are_denied() {
    let t = start(ServiceConfig::loopback().with_ip_limits(1, 64));
    let tcp = tracker_addr(&t.tracker, "tcp").await;
    let mut a = Client::new();
    let tracker = a.connect(&tcp).await;
    let mut b = Client::new();
    let denied = b.try_connect(&tcp).await;
    assert!(
        denied.is_err(),
        "second connection from 127.0.0.1 was accepted"
    );
    let stats = wait_stats(&t.tracker, "denial", |s| s.service.connections_denied >= 1).await;
    assert_eq!(stats.service.connections, 1);
    // A Shoal node turned away says why in words (issue 11: it said "Failed to dial the
    // requested peer").
    let stop = CancellationToken::new();
    let node = shoal_node::testing::node(
        shoal_node::Config::loopback(),
        std::sync::Arc::new(shoal_node::Store::in_memory()),
        &stop,
    );
    let err = within(
        "a refused request",
        node.tracker_request(
            &tcp,
            shoal_protocol::tracker::Request::Announce(announce(blob(8), Role::Leecher, 0, vec![])),
        ),
    )
    .await
    .unwrap_err();
    assert!(err.why.contains("refuses connections"), "{err}");
    stop.cancel();
    // The first peer is unaffected.
    let ok = a
        .announce(tracker, announce(blob(8), Role::Leecher, 0, vec![]))
        .await;
    assert!(matches!(ok, AnnounceResponse::Ok { .. }), "{ok:?}");
}

#[tokio::test]
async fn entries_expire_on_the_tables_schedule() {
    let table = table::Config::default()
        .with_announce_interval(Duration::from_secs(1))
        .with_interval_jitter(Duration::ZERO)
        .with_min_announce_interval(Duration::ZERO)
        .with_entry_ttl(Duration::from_secs(2))
        .with_expiry_granularity(Duration::from_secs(1));
    let t = start(ServiceConfig::loopback().with_table(table));
    let tcp = tracker_addr(&t.tracker, "tcp").await;
    let mut a = Client::new();
    let tracker = a.connect(&tcp).await;
    a.announce(tracker, announce(blob(9), Role::Leecher, 0, vec![]))
        .await;
    // Nobody touches the swarm again: only the service's timer can remove the entry.
    let stats = wait_stats(&t.tracker, "expiry", |s| s.table.expired == 1).await;
    assert_eq!(stats.table.entries, 0);
    assert_eq!(stats.table.swarms, 0);
}

/// A minimal HTTP/1.1 GET: status code and body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    within("HTTP GET", async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8(buf).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_owned(), body.to_owned())
    })
    .await
}

#[tokio::test]
async fn http_stats_and_metrics_report_the_counters() {
    let t = start(ServiceConfig::loopback());
    let http = t.tracker.http_addr().expect("HTTP is on in loopback()");
    assert_ne!(http.port(), 0);
    let tcp = tracker_addr(&t.tracker, "tcp").await;
    let mut a = Client::new();
    let tracker = a.connect(&tcp).await;
    a.announce(
        tracker,
        announce(
            blob(10),
            Role::Seeder,
            10,
            vec![addr_bytes("/ip4/192.0.2.7/tcp/1")],
        ),
    )
    .await;
    let _ = a.raw(tracker, b"junk".to_vec()).await;
    wait_stats(&t.tracker, "decode error", |s| s.service.decode_errors == 1).await;

    let (status, head, body) = http_get(http, "/stats").await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("application/json"),
        "{head}"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["service"]["announce_requests"], 1, "{v}");
    assert_eq!(v["service"]["decode_errors"], 1, "{v}");
    assert_eq!(v["service"]["addrs_dropped"], 1, "{v}");
    assert_eq!(v["service"]["connected_peers"], 1, "{v}");
    assert_eq!(v["table"]["entries"], 1, "{v}");
    assert_eq!(v["table"]["seeders"], 1, "{v}");
    assert_eq!(v["table"]["refused_rate_limited"], 0, "{v}");

    let (status, head, body) = http_get(http, "/metrics").await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    for line in [
        "# TYPE shoal_tracker_entries gauge",
        "shoal_tracker_entries 1",
        "shoal_tracker_swarms 1",
        "shoal_tracker_role_entries{role=\"seeder\"} 1",
        "# TYPE shoal_tracker_announce_requests_total counter",
        "shoal_tracker_announce_requests_total 1",
        "shoal_tracker_announces_accepted_total 1",
        "shoal_tracker_announce_refusals_total{reason=\"rate_limited\"} 0",
        "shoal_tracker_decode_errors_total 1",
        "shoal_tracker_addrs_dropped_total 1",
        "shoal_tracker_connected_peers 1",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in:\n{body}"
        );
    }

    let (status, _, _) = http_get(http, "/nope").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn taken_ports_are_start_errors() {
    init_logging();
    let key = libp2p::identity::Keypair::generate_ed25519;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = Tracker::start(
        ServiceConfig::loopback().with_http(Some(addr)),
        key(),
        CancellationToken::new(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, StartError::Http { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse),
        "{err:?}"
    );
    assert!(err.to_string().contains(&addr.to_string()), "{err}");

    // libp2p binds TCP with SO_REUSEPORT; a second tracker on the same port must still fail.
    let first = start(ServiceConfig::loopback().with_http(None));
    let tcp = tracker_addr(&first.tracker, "tcp").await;
    let bare: Multiaddr = tcp
        .iter()
        .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
        .collect();
    let err = Tracker::start(
        ServiceConfig::loopback()
            .with_listen(vec![bare.clone()])
            .with_http(None),
        key(),
        CancellationToken::new(),
    )
    .unwrap_err();
    match &err {
        StartError::Listen { addr, source } => {
            assert_eq!(addr, &bare);
            let io = source
                .downcast_ref::<std::io::Error>()
                .expect("an OS error");
            assert_eq!(io.kind(), std::io::ErrorKind::AddrInUse);
        }
        other => panic!("expected a listen error, got {other:?}"),
    }
}

impl Client {
    async fn takedown(&mut self, tracker: PeerId, blob: BlobId, reason: &str) -> Response {
        let req = Request::Takedown(TakedownRequest {
            blob,
            reason: reason.into(),
        });
        self.request(tracker, req).await.expect("a takedown answer")
    }

    async fn list(
        &mut self,
        tracker: PeerId,
        since: u64,
    ) -> Result<(Vec<(u64, BlobId)>, bool), String> {
        match self
            .request(
                tracker,
                Request::TakedownList(TakedownListRequest { since }),
            )
            .await?
        {
            Response::TakedownList(l) => {
                Ok((l.entries.iter().map(|e| (e.seq, e.blob)).collect(), l.more))
            }
            other => panic!("expected a takedown list, got {other:?}"),
        }
    }

    async fn scrape_one(&mut self, tracker: PeerId, blob: BlobId) -> SwarmStats {
        match self
            .request(
                tracker,
                Request::Scrape(ScrapeRequest { blobs: vec![blob] }),
            )
            .await
        {
            Ok(Response::Scrape(r)) => r.swarms[0],
            other => panic!("expected a scrape answer, got {other:?}"),
        }
    }
}

// Long on purpose: one scenario across a restart; the steps share the tracker, the clients and
// the store, and their order is what is tested.
/// Issue 4: an operator takes a blob down; a non-operator cannot; the swarm's entries go,
/// announces are refused as taken down and scrapes count zero; the list is public; the
/// takedown and its audit trail survive a restart; a second tracker cannot open the store.
#[tokio::test]
async fn operator_takedowns_stop_a_swarm_and_persist_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("takedowns.redb");
    let mut op = Client::new();
    let mut seeder = Client::new();
    let mut other = Client::new();
    let operator = op.peer_id();
    let config = || {
        ServiceConfig::loopback()
            .with_operators([operator])
            .with_takedown_store(Some(store.clone()))
    };
    let t = start(config());
    let tcp = tracker_addr(&t.tracker, "tcp").await;
    let tracker = seeder.connect(&tcp).await;
    op.connect(&tcp).await;
    other.connect(&tcp).await;
    let addrs = vec![addr_bytes("/ip4/127.0.0.1/tcp/4001")];
    for b in [blob(1), blob(2)] {
        seeder
            .announce(tracker, announce(b, Role::Seeder, 10, addrs.clone()))
            .await;
    }
    let listed = other
        .announce(tracker, announce(blob(1), Role::Leecher, 0, vec![]))
        .await;
    assert_eq!(peers_of(&listed).0.len(), 1);

    // Not an operator: denied, nothing changes.
    assert_eq!(
        other.takedown(tracker, blob(1), "I do not like it").await,
        Response::Denied(DenyReason::NotOperator)
    );
    assert_eq!(other.scrape_one(tracker, blob(1)).await.seeders, 1);

    // The operator: done, the swarm is gone, scrapes count zero, announces are refused.
    assert_eq!(
        op.takedown(tracker, blob(1), "court order 17").await,
        Response::TakedownDone { seq: 1 }
    );
    let s = wait_stats(&t.tracker, "takedown", |s| s.service.takedowns == 1).await;
    assert_eq!(s.service.taken_down_blobs, 1);
    assert_eq!(s.service.takedowns_denied, 1);
    assert_eq!(s.table.swarms, 1, "only blob 2's swarm is left");
    assert_eq!(
        other.scrape_one(tracker, blob(1)).await,
        SwarmStats::empty(blob(1))
    );
    assert_eq!(other.scrape_one(tracker, blob(2)).await.seeders, 1);
    for (client, role, held) in [
        (&mut seeder, Role::Seeder, 10),
        (&mut other, Role::Leecher, 0),
    ] {
        assert_eq!(
            client
                .announce(tracker, announce(blob(1), role, held, vec![]))
                .await,
            AnnounceResponse::Refused {
                reason: RefusalReason::TakenDown
            }
        );
    }
    // Again: the same seq, audited once more.
    assert_eq!(
        op.takedown(tracker, blob(1), "second notice").await,
        Response::TakedownDone { seq: 1 }
    );
    assert_eq!(
        other.list(tracker, 0).await.unwrap(),
        (vec![(1, blob(1))], false)
    );
    assert_eq!(other.list(tracker, 1).await.unwrap(), (vec![], false));

    // Counters, metrics and the audit trail over HTTP.
    let s = wait_stats(&t.tracker, "refusals", |s| {
        s.service.refused_taken_down == 2
    })
    .await;
    assert_eq!(s.service.takedown_requests, 3);
    assert_eq!(s.service.takedown_list_requests, 2);
    let http = t.tracker.http_addr().unwrap();
    let (_, _, metrics) = http_get(http, "/metrics").await;
    for line in [
        "shoal_tracker_announce_refusals_total{reason=\"taken_down\"} 2",
        "shoal_tracker_takedowns_total 1",
        "shoal_tracker_taken_down_blobs 1",
        "shoal_tracker_takedowns_denied_total 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in:\n{metrics}"
        );
    }
    let (status, _, body) = http_get(http, "/takedowns").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["more"], false, "{v}");
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{v}");
    assert_eq!(entries[0]["seq"], 1);
    assert_eq!(entries[0]["action"], "takedown");
    assert_eq!(entries[0]["reason"], "court order 17");
    assert_eq!(entries[0]["operator"], op.peer_id().to_string());
    assert_eq!(entries[0]["blob"], blob(1).to_string());
    assert_eq!(entries[1]["action"], "takedown_repeated");
    let (status, _, body) = http_get(http, "/takedowns?since=1").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("second notice") && !body.contains("court order"),
        "{body}"
    );
    assert_eq!(http_get(http, "/takedowns?since=x").await.0, 400);

    // A second tracker cannot open the store while this one runs.
    let err = Tracker::start(
        config(),
        libp2p::identity::Keypair::generate_ed25519(),
        CancellationToken::new(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, StartError::Takedowns(StoreError::Locked { .. })),
        "{err:?}"
    );
    assert!(
        std::error::Error::source(&err)
            .unwrap()
            .to_string()
            .contains(&store.display().to_string()),
        "{err}"
    );

    // Restart on the same file: still taken down, the audit goes on.
    t.tracker.shutdown();
    within("tracker stops", t.tracker.stopped()).await;
    drop(t);
    let t = start(config());
    let tcp = tracker_addr(&t.tracker, "tcp").await;
    let mut op = op;
    let mut late = Client::new();
    let tracker = late.connect(&tcp).await;
    op.connect(&tcp).await;
    assert_eq!(t.tracker.stats().service.taken_down_blobs, 1);
    assert_eq!(
        late.announce(tracker, announce(blob(1), Role::Seeder, 10, vec![]))
            .await,
        AnnounceResponse::Refused {
            reason: RefusalReason::TakenDown
        }
    );
    assert_eq!(
        late.list(tracker, 0).await.unwrap(),
        (vec![(1, blob(1))], false)
    );
    assert_eq!(
        op.takedown(tracker, blob(2), "third").await,
        Response::TakedownDone { seq: 3 }
    );
    assert_eq!(
        late.list(tracker, 0).await.unwrap(),
        (vec![(1, blob(1)), (3, blob(2))], false)
    );
    let (_, _, body) = http_get(t.tracker.http_addr().unwrap(), "/takedowns").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["entries"].as_array().unwrap().len(), 3, "{v}");
}

/// The public list comes in pages of at most MAX_TAKEDOWN_ENTRIES with `more`, and shares
/// the scrape rate limit.
#[tokio::test]
async fn the_takedown_list_is_paged_and_rate_limited() {
    let mut op = Client::new();
    let t = start(
        ServiceConfig::loopback()
            .with_operators([op.peer_id()])
            .with_scrape_limit(4, Duration::from_secs(3600)),
    );
    let tcp = tracker_addr(&t.tracker, "tcp").await;
    let tracker = op.connect(&tcp).await;
    let n = MAX_TAKEDOWN_ENTRIES + 3;
    let blobs: Vec<BlobId> = (0..n)
        .map(|i| {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&(i as u64).to_le_bytes());
            BlobId::from_bytes(b)
        })
        .collect();
    // Takedowns are not rate limited (operators only).
    for (i, b) in blobs.iter().enumerate() {
        assert_eq!(
            op.takedown(tracker, *b, "bulk").await,
            Response::TakedownDone { seq: i as u64 + 1 }
        );
    }
    let mut reader = Client::new();
    reader.connect(&tcp).await;
    let (first, more) = reader.list(tracker, 0).await.unwrap();
    assert!(more);
    assert_eq!(first.len(), MAX_TAKEDOWN_ENTRIES);
    let last = first.last().unwrap().0;
    let (rest, more) = reader.list(tracker, last).await.unwrap();
    assert!(!more);
    assert_eq!(rest.len(), 3);
    let all: Vec<BlobId> = first.iter().chain(&rest).map(|e| e.1).collect();
    assert_eq!(all, blobs);
    assert_eq!(
        reader.list(tracker, u64::MAX).await.unwrap(),
        (vec![], false)
    );
    // One scrape, then the fifth request of the burst of 4 is dropped.
    let _ = reader.scrape_one(tracker, blobs[0]).await;
    assert!(reader.list(tracker, 0).await.is_err());
    let s = wait_stats(&t.tracker, "rate limit", |s| {
        s.service.takedown_lists_rate_limited == 1
    })
    .await;
    assert_eq!(s.service.takedown_list_requests, 4);
}
