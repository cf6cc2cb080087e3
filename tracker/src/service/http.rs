//! The HTTP endpoints: `GET /stats` (JSON), `GET /metrics` (Prometheus text format) and
//! `GET /takedowns` (the takedown audit trail, JSON).
//!
//! `/stats` and `/metrics` read the latest [`Stats`] snapshot the event loop publishes;
//! `/takedowns` reads the takedown store from a redb snapshot. None touches the swarm or the
//! table. The audit names operators and reasons: it is for the operator, which is why the
//! endpoint listens on loopback by default. The listener is bounded: at most [`MAX_HTTP_CONNECTIONS`] at once
//! (more are closed at accept), each for at most [`HTTP_CONNECTION_LIFETIME`] (a
//! Prometheus scraper reconnects), so a slow or idle client cannot pile up tasks. Meant for
//! a monitoring network or loopback, not the open internet.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, Uri, header},
    response::IntoResponse,
    routing::get,
};
use shoal_node::metrics::{Exposition, Kind};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    time::Sleep,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, warn};

use super::Stats;
use crate::takedowns::{AuditEntry, AuditReader, MAX_AUDIT_PAGE};

/// Concurrent HTTP connections; more are closed as they are accepted.
pub const MAX_HTTP_CONNECTIONS: usize = 32;
/// How long one HTTP connection may stay open, keep-alive included.
pub const HTTP_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Pause after an accept error that is not about one connection (out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(500);
/// Content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds the HTTP listener now, so `Tracker::start` reports a taken port at once.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// Serves the endpoints on `listener` until `shutdown`.
pub(crate) fn spawn(
    listener: TcpListener,
    stats: watch::Receiver<Stats>,
    audit: AuditReader,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) {
    let router = Router::new()
        .route("/stats", get(stats_json))
        .route("/metrics", get(metrics))
        .with_state(stats)
        .route("/takedowns", get(takedowns).with_state(audit));
    let listener = Bounded {
        inner: listener,
        permits: Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS)),
    };
    tasks.spawn(async move {
        let serve =
            axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned());
        if let Err(e) = serve.await {
            warn!(error = %e, "HTTP endpoint stopped");
        }
        debug!("HTTP endpoint stopped");
    });
}

/// Serves `router` on `listener` with the same bounds as the tracker's endpoints (at most
/// [`MAX_HTTP_CONNECTIONS`] at once, each for at most [`HTTP_CONNECTION_LIFETIME`]) until
/// `shutdown`. For other operator endpoints on loopback (a seed node's `/stats`).
pub fn serve_bounded(listener: TcpListener, router: Router, shutdown: CancellationToken) {
    let listener = Bounded {
        inner: listener,
        permits: Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS)),
    };
    tokio::spawn(async move {
        let serve =
            axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned());
        if let Err(e) = serve.await {
            warn!(error = %e, "HTTP endpoint stopped");
        }
    });
}

async fn stats_json(State(stats): State<watch::Receiver<Stats>>) -> Json<Stats> {
    Json(stats.borrow().clone())
}

/// `GET /takedowns[?since=SEQ]`: audit entries after `since` (default 0), oldest first, at
/// most [`MAX_AUDIT_PAGE`]; `more` says whether to ask again from the last `seq`.
async fn takedowns(State(audit): State<AuditReader>, uri: Uri) -> axum::response::Response {
    let Some(since) = query_u64(uri.query(), "since") else {
        return (
            StatusCode::BAD_REQUEST,
            "since must be a sequence number: /takedowns?since=SEQ\n",
        )
            .into_response();
    };
    match audit.page(since, MAX_AUDIT_PAGE) {
        Ok((entries, more)) => Json(AuditPage { entries, more }).into_response(),
        Err(e) => {
            warn!(error = %e, "cannot read the takedown audit trail");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the takedown store; see the tracker's log\n",
            )
                .into_response()
        }
    }
}

#[derive(serde::Serialize)]
struct AuditPage {
    entries: Vec<AuditEntry>,
    more: bool,
}

/// The value of `key` in a query string as a `u64`: `Some(0)` when absent, `None` when it
/// does not parse.
fn query_u64(query: Option<&str>, key: &str) -> Option<u64> {
    let Some(query) = query else {
        return Some(0);
    };
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == key {
            return v.parse().ok();
        }
    }
    Some(0)
}

async fn metrics(State(stats): State<watch::Receiver<Stats>>) -> impl IntoResponse {
    let text = render_metrics(&stats.borrow());
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        text,
    )
}

// Long on purpose: a flat table, one call per metric, in the order they print.
/// The Prometheus text exposition of `s`: every metric with `# HELP` and `# TYPE`, names
/// prefixed `shoal_tracker_`, counters suffixed `_total`.
pub(crate) fn render_metrics(s: &Stats) -> String {
    let t = &s.table;
    let v = &s.service;
    let mut m = Exposition::new("shoal_tracker");
    m.one(
        "entries",
        Kind::Gauge,
        "Entries (peer x swarm) in the peer table.",
        t.entries,
    );
    m.one(
        "established_entries",
        Kind::Gauge,
        "Entries that re-announced on schedule at least once (never evicted by newcomers).",
        t.established,
    );
    m.one(
        "swarms",
        Kind::Gauge,
        "Swarms with at least one entry.",
        t.swarms,
    );
    m.one(
        "peers",
        Kind::Gauge,
        "Distinct peers with at least one entry.",
        t.peers,
    );
    m.metric(
        "role_entries",
        Kind::Gauge,
        "Entries by role.",
        [
            ("{role=\"seeder\"}", t.seeders),
            ("{role=\"leecher\"}", t.leechers),
            ("{role=\"seed_node\"}", t.seed_nodes),
        ],
    );
    m.one(
        "connected_peers",
        Kind::Gauge,
        "Peers with at least one open connection.",
        v.connected_peers,
    );
    m.one(
        "connections",
        Kind::Gauge,
        "Open connections.",
        v.connections,
    );
    m.one(
        "announce_requests_total",
        Kind::Counter,
        "Announce requests received and decoded.",
        v.announce_requests,
    );
    m.one(
        "announces_accepted_total",
        Kind::Counter,
        "Announces the peer table accepted (stopped included).",
        t.announces,
    );
    m.metric(
        "announce_refusals_total",
        Kind::Counter,
        "Announces refused, by reason.",
        [
            ("{reason=\"rate_limited\"}", t.refused_rate_limited),
            ("{reason=\"swarm_full\"}", t.refused_swarm_full),
            ("{reason=\"tracker_full\"}", t.refused_tracker_full),
            ("{reason=\"bad_request\"}", t.refused_bad_request),
            ("{reason=\"taken_down\"}", v.refused_taken_down),
        ],
    );
    m.one(
        "scrape_requests_total",
        Kind::Counter,
        "Scrape requests received and decoded.",
        v.scrape_requests,
    );
    m.one(
        "scraped_swarms_total",
        Kind::Counter,
        "Swarms looked up by answered scrapes.",
        t.scrapes,
    );
    m.one(
        "scrapes_rate_limited_total",
        Kind::Counter,
        "Scrape requests dropped by the per-peer scrape rate limit.",
        v.scrapes_rate_limited,
    );
    m.one(
        "stopped_total",
        Kind::Counter,
        "Entries removed by a stopped announce.",
        t.stopped,
    );
    m.one(
        "expired_total",
        Kind::Counter,
        "Entries removed because they were not refreshed in time.",
        t.expired,
    );
    m.one(
        "evicted_total",
        Kind::Counter,
        "Fresh entries evicted to make room for newcomers.",
        t.evicted,
    );
    m.one(
        "decode_errors_total",
        Kind::Counter,
        "Request streams dropped because the bytes were not a valid request.",
        v.decode_errors,
    );
    m.one(
        "stream_failures_total",
        Kind::Counter,
        "Request streams that failed otherwise (timeouts, closed connections).",
        v.stream_failures,
    );
    m.one(
        "addrs_dropped_total",
        Kind::Counter,
        "Announced addresses dropped: unparsable, naming another peer, or not the connection's IP.",
        v.addrs_dropped,
    );
    m.one(
        "seed_node_downgrades_total",
        Kind::Counter,
        "Seed-node claims from peers not on the allow-list, listed as seeder or leecher.",
        v.seed_node_downgrades,
    );
    m.one(
        "connections_denied_total",
        Kind::Counter,
        "Inbound connections denied by the connection limits.",
        v.connections_denied,
    );
    m.one(
        "taken_down_blobs",
        Kind::Gauge,
        "Blobs on the takedown list.",
        v.taken_down_blobs,
    );
    m.one(
        "takedown_requests_total",
        Kind::Counter,
        "Takedown requests received and decoded, from anyone.",
        v.takedown_requests,
    );
    m.one(
        "takedowns_total",
        Kind::Counter,
        "Blobs newly taken down by operators.",
        v.takedowns,
    );
    m.one(
        "takedowns_denied_total",
        Kind::Counter,
        "Takedown requests denied because the peer is not an operator.",
        v.takedowns_denied,
    );
    m.one(
        "takedown_store_errors_total",
        Kind::Counter,
        "Takedowns not recorded because the takedown store failed.",
        v.takedown_store_errors,
    );
    m.one(
        "takedown_list_requests_total",
        Kind::Counter,
        "Takedown-list requests received and decoded.",
        v.takedown_list_requests,
    );
    m.one(
        "takedown_lists_rate_limited_total",
        Kind::Counter,
        "Takedown-list requests dropped by the per-peer rate limit (shared with scrapes).",
        v.takedown_lists_rate_limited,
    );
    m.one(
        "internal_errors_total",
        Kind::Counter,
        "Answers not sent because the tracker built an invalid message (a bug).",
        v.internal_errors,
    );
    m.finish()
}

/// A TCP listener that keeps at most [`MAX_HTTP_CONNECTIONS`] connections open, each for at
/// most [`HTTP_CONNECTION_LIFETIME`].
struct Bounded {
    inner: TcpListener,
    permits: Arc<Semaphore>,
}

impl axum::serve::Listener for Bounded {
    type Io = Limited;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Limited, SocketAddr) {
        loop {
            let (stream, addr) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    debug!(error = %e, "HTTP accept failed");
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                    ) {
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                    continue;
                }
            };
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                debug!(%addr, "too many HTTP connections; closing this one");
                continue;
            };
            let io = Limited {
                stream,
                deadline: Box::pin(tokio::time::sleep(HTTP_CONNECTION_LIFETIME)),
                _permit: permit,
            };
            return (io, addr);
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection that fails its reads and writes once its lifetime is over; the server then
/// drops it, releasing its slot.
struct Limited {
    stream: TcpStream,
    deadline: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl Limited {
    fn expired(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "HTTP connection lifetime is over",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.expired(cx)?;
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.expired(cx)?;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_since() {
        assert_eq!(query_u64(None, "since"), Some(0));
        assert_eq!(query_u64(Some("since=42"), "since"), Some(42));
        assert_eq!(query_u64(Some("x=1&since=7"), "since"), Some(7));
        assert_eq!(query_u64(Some("x=1"), "since"), Some(0));
        assert_eq!(query_u64(Some("since=-1"), "since"), None);
        assert_eq!(query_u64(Some("since"), "since"), None);
    }

    #[test]
    fn metrics_have_help_type_and_prefix() {
        let mut s = Stats::default();
        s.table.entries = 3;
        s.table.refused_rate_limited = 2;
        s.service.decode_errors = 1;
        let text = render_metrics(&s);
        assert!(text.contains("\nshoal_tracker_entries 3\n"), "{text}");
        assert!(
            text.contains("shoal_tracker_announce_refusals_total{reason=\"rate_limited\"} 2\n")
        );
        assert!(text.contains("shoal_tracker_decode_errors_total 1\n"));
        assert!(text.contains("shoal_tracker_announce_refusals_total{reason=\"taken_down\"} 0\n"));
        let mut helped = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.insert(rest.split(' ').next().unwrap().to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let name = parts.next().unwrap();
                let kind = parts.next().unwrap();
                assert!(helped.contains(name), "TYPE before HELP for {name}");
                assert_eq!(kind == "counter", name.ends_with("_total"), "{name}");
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(name.starts_with("shoal_tracker_"), "{line}");
                assert!(helped.contains(name), "sample without HELP: {line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<u64>().is_ok(), "{line}");
            }
        }
    }
}
