//! `shoal seed-node`: an operator's always-on seed server. Stores ciphertext pushed by
//! allowed publishers, serves it to swarms (fast or frugal), announces it to trackers as a
//! seed node, and exports per-blob egress over HTTP.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{Json, Router, extract::State, http::header, response::IntoResponse, routing::get};
use libp2p::{Multiaddr, PeerId};
use shoal_node::{
    CancellationToken, Config, Node, Store,
    config::RelayLimits,
    identity,
    metrics::{Exposition, Kind},
    seednode::{Policy, SeedNode, SeedNodeConfig, SeedNodeStats},
};

use crate::{cmd::peer_hints, exit, ui};

/// The seed node's identity file in the data directory (a home node, a tracker and a seed
/// node on one machine keep different peer ids).
pub(crate) const IDENTITY_FILE: &str = "seed-node.key";

const AFTER_HELP: &str = "\
The first line on stdout is the seed node's address, ending in /p2p/<peer id>: publishers
push to it with `shoal push LINK --to ADDR`. The node holds ciphertext only: pushes carry
no key. Status goes to stderr; with --json, stdout gets the address object and then stats
every 5 s.

Examples:
  shoal seed-node --store /srv/shoal --quota 500GiB --allow 12D3KooW… --tracker /ip4/…/p2p/…
  shoal seed-node --store ./blobs --quota 2GiB --allow 12D3KooW… --policy frugal --up-limit 4MiB
  curl -s http://127.0.0.1:7002/stats        per-blob egress and frugal decisions (JSON)
  curl -s http://127.0.0.1:7002/metrics      the same for Prometheus";

/// Run a seed node.
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub(crate) struct Args {
    /// Where pushed blobs are stored [default: DATA_DIR/seed-node].
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Most bytes stored (blobs, their outboards and interrupted pushes), e.g. 500GiB.
    /// Pushes that do not fit are refused with the space left.
    #[arg(long, value_parser = ui::parse_size, value_name = "SIZE", default_value = "10GiB")]
    quota: u64,
    /// A publisher allowed to push (its peer id, as `shoal push` prints it); repeatable.
    /// Without any, nobody can push and the node serves what it already stores.
    #[arg(long, value_name = "PEER_ID")]
    allow: Vec<PeerId>,
    /// How to serve: `fast` sends any block asked for (downloads finish soonest);
    /// `frugal` super-seeds, handing each block the swarm lacks to one peer, so egress
    /// approaches one copy per swarm.
    #[arg(long, default_value = "fast", value_name = "fast|frugal")]
    policy: Policy,
    /// A tracker to announce every stored blob to as a seed node (multiaddr ending in
    /// /p2p/PEER_ID); repeatable. The tracker must list this node's peer id with
    /// --allow-seed-node.
    #[arg(long, value_name = "MULTIADDR", value_parser = ui::parse_peer_addr)]
    tracker: Vec<Multiaddr>,
    /// Upload cap per second for all blobs together, e.g. 100MiB; 0 = unlimited.
    #[arg(long, value_parser = ui::parse_size, value_name = "SIZE", default_value = "0")]
    up_limit: u64,
    /// Address to listen on, repeatable [default: QUIC and TCP on all interfaces, port 7010].
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// Where to serve GET /stats (JSON) and GET /metrics (Prometheus), or `off`.
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:7002")]
    http: String,
    /// Machine-readable output: one JSON object per line on stdout (the address first).
    #[arg(long)]
    json: bool,
    /// Do not relay for nodes behind NAT. By default a seed node is a circuit relay v2
    /// (256 reservations; 64 circuits of at most 30 min and 64 MiB each) and an AutoNAT
    /// server: nodes that cannot be dialled listen through it, and peers behind other
    /// NATs hole-punch direct connections to them through it. Relays carry ciphertext
    /// only, and learn who talks to whom.
    #[arg(long)]
    no_relay_server: bool,
}

pub(crate) fn run(args: &Args, data_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let data_dir = ui::data_dir(data_dir)?;
    let keypair = identity::load_or_create_file(&data_dir, IDENTITY_FILE)?;
    let store_dir = args
        .store
        .clone()
        .unwrap_or_else(|| data_dir.join("seed-node"));
    let http: Option<SocketAddr> = if args.http.eq_ignore_ascii_case("off") {
        None
    } else {
        Some(args.http.parse().map_err(|_| {
            exit::coded(
                exit::OTHER,
                format!(
                    "--http {:?} is not an address like 127.0.0.1:7002, or `off`",
                    args.http
                ),
            )
        })?)
    };
    let rt = ui::runtime()?;
    rt.block_on(async {
        let stop = CancellationToken::new();
        let limit = Some(args.up_limit); // 0 = no cap, as the node reads it
        let listen = if args.listen.is_empty() {
            vec![
                "/ip4/0.0.0.0/udp/7010/quic-v1".parse()?,
                "/ip4/0.0.0.0/tcp/7010".parse()?,
            ]
        } else {
            args.listen.clone()
        };
        // Seed nodes are found through trackers and links, not the DHT.
        // A server is reachable: no UPnP, no relays for itself; a relay for others.
        let config = Config::default()
            .with_upload_limit(limit)
            .with_listen(listen)
            .with_dht(false)
            .with_upnp(false)
            .with_relays(false)
            .with_relay_server((!args.no_relay_server).then(RelayLimits::seed_node));
        let node = Node::start(config, keypair, Arc::new(Store::in_memory()), stop.clone())
            .map_err(|e| {
                exit::coded(
                    exit::OTHER,
                    format!("cannot start the seed node: {e}; is another one running? choose other ports with --listen"),
                )
            })?;
        let mut seed_config = SeedNodeConfig::new(store_dir.clone(), args.quota);
        seed_config.allow = args.allow.iter().copied().collect();
        seed_config.policy = args.policy;
        seed_config.trackers.clone_from(&args.tracker);
        let seed = SeedNode::start(&node, seed_config)?;
        let http_addr = match http {
            Some(addr) => Some(serve_http(addr, seed.clone(), stop.clone()).await?),
            None => None,
        };
        let addrs = node.listen_addrs(Duration::from_secs(5)).await;
        let hints = peer_hints(&addrs, node.peer_id(), usize::MAX);
        let Some(first) = hints.first() else {
            return Err(exit::coded(
                exit::OTHER,
                "the seed node has no dialable listen address; pass --listen with a concrete or 0.0.0.0 address",
            ));
        };
        let stats = seed.stats();
        if args.json {
            let v = serde_json::json!({
                "addr": first,
                "addrs": hints,
                "peer_id": node.peer_id().to_string(),
                "http": http_addr.map(|a| a.to_string()),
                "store": store_dir,
                "blobs": stats.blobs.len(),
                "policy": args.policy,
            });
            ui::print_line(&v.to_string())?;
        } else {
            ui::print_line(first)?;
            eprintln!(
                "seed node {} ({} policy): {} blobs stored in {}, {} of {} quota used",
                node.peer_id(),
                args.policy,
                stats.blobs.len(),
                store_dir.display(),
                ui::size(stats.used),
                ui::size(args.quota)
            );
            if args.allow.is_empty() {
                eprintln!("nobody may push (no --allow PEER_ID); serving what is stored");
            }
            if let Some(a) = http_addr {
                eprintln!("stats at http://{a}/stats and /metrics; Ctrl-C to stop");
            }
        }
        run_until_ctrl_c(&seed, args.json).await;
        stop.cancel();
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

async fn serve_http(
    addr: SocketAddr,
    seed: SeedNode,
    stop: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        exit::coded(
            exit::OTHER,
            format!(
                "cannot serve HTTP on {addr}: {e}; choose another with --http ADDR, or --http off"
            ),
        )
    })?;
    let bound = listener.local_addr()?;
    let router = Router::new()
        .route("/stats", get(stats_json))
        .route("/metrics", get(metrics))
        .with_state(seed);
    shoal_tracker::service::serve_bounded(listener, router, stop);
    Ok(bound)
}

async fn stats_json(State(seed): State<SeedNode>) -> Json<SeedNodeStats> {
    Json(seed.stats())
}

async fn metrics(State(seed): State<SeedNode>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        prometheus_text(&seed.stats()),
    )
}

/// The stats in the Prometheus text format.
pub(crate) fn prometheus_text(s: &SeedNodeStats) -> String {
    let mut m = Exposition::new("shoal_seed_node");
    m.one("quota_bytes", Kind::Gauge, "Storage quota.", s.quota);
    m.one(
        "used_bytes",
        Kind::Gauge,
        "Storage used (blobs, outboards, interrupted pushes).",
        s.used,
    );
    m.one("blobs", Kind::Gauge, "Blobs stored.", s.blobs.len());
    let per_blob = |f: &dyn Fn(&shoal_node::seednode::BlobStats) -> f64| {
        s.blobs
            .iter()
            .map(|b| (format!("{{blob=\"{}\"}}", b.id), f(b)))
            .collect::<Vec<_>>()
    };
    m.metric(
        "egress_bytes_total",
        Kind::Counter,
        "Blob bytes sent to peers, per blob.",
        per_blob(&|b| b.egress_bytes as f64),
    );
    m.metric(
        "egress_copies",
        Kind::Gauge,
        "Copies of each blob sent (egress / blob size).",
        per_blob(&|b| b.egress_copies),
    );
    let frugal: Vec<_> = s
        .blobs
        .iter()
        .filter_map(|b| Some((b, b.frugal?)))
        .collect();
    if !frugal.is_empty() {
        let rows = |f: &dyn Fn(&shoal_protocol::superseed::Stats) -> u64| {
            frugal
                .iter()
                .map(|(b, st)| (format!("{{blob=\"{}\"}}", b.id), f(st)))
                .collect::<Vec<_>>()
        };
        m.metric(
            "frugal_revealed_blocks_total",
            Kind::Counter,
            "Blocks revealed to one peer (frugal policy).",
            rows(&|st| st.revealed),
        );
        m.metric(
            "frugal_resent_blocks_total",
            Kind::Counter,
            "Blocks sent more than once: the first and last block to each newcomer that \
             bootstraps here, and copies lost with a peer that left.",
            rows(&|st| st.blocks_resent),
        );
        m.metric(
            "frugal_stalled_reveals_total",
            Kind::Counter,
            "Blocks revealed to a peer that got nothing from other peers for 10 s though \
             others held them.",
            rows(&|st| st.revealed_to_stalled),
        );
        m.metric(
            "frugal_refused_requests_total",
            Kind::Counter,
            "Requests for blocks not revealed to the asker (answered missing).",
            rows(&|st| st.refused),
        );
    }
    let r = &s.pushes_refused;
    m.metric(
        "pushes_total",
        Kind::Counter,
        "Pushes by outcome.",
        [
            ("{outcome=\"stored\"}", s.pushes_stored),
            ("{outcome=\"corrupt\"}", s.pushes_corrupt),
            ("{outcome=\"failed\"}", s.pushes_failed),
            ("{outcome=\"abandoned\"}", s.pushes_abandoned),
            ("{outcome=\"refused_not_allowed\"}", r.not_allowed),
            ("{outcome=\"refused_quota\"}", r.quota),
            ("{outcome=\"refused_taken_down\"}", r.taken_down),
            ("{outcome=\"refused_busy\"}", r.busy),
            ("{outcome=\"refused_bad_offer\"}", r.bad_offer),
        ],
    );
    m.one(
        "pushed_bytes_total",
        Kind::Counter,
        "Verified bytes received by pushes.",
        s.pushed_bytes,
    );
    m.one(
        "takedowns_total",
        Kind::Counter,
        "Blobs taken down here.",
        s.takedowns,
    );
    m.metric(
        "corrupt_blobs_total",
        Kind::Counter,
        "Stored blobs found with blocks that fail their check against the blob id, by what \
         became of them (repairing: not announced while the bad blocks are fetched back).",
        [
            (
                "{state=\"repairing\"}",
                s.corrupt_blobs
                    .saturating_sub(s.corrupt_repaired + s.corrupt_dropped),
            ),
            ("{state=\"repaired\"}", s.corrupt_repaired),
            ("{state=\"dropped\"}", s.corrupt_dropped),
        ],
    );
    m.one(
        "relayed_bytes_total",
        Kind::Counter,
        "Block bytes sent to peers reached only through a relay.",
        s.relayed_bytes,
    );
    m.one(
        "relay_reservations_total",
        Kind::Counter,
        "Relay reservations granted to nodes behind NAT (renewals included).",
        s.relay_reservations,
    );
    m.one(
        "relay_circuits_total",
        Kind::Counter,
        "Circuits relayed between other nodes (for hole punching, or data where no direct \
         path exists).",
        s.relay_circuits,
    );
    m.finish()
}

async fn run_until_ctrl_c(seed: &SeedNode, json: bool) {
    let status = indicatif::ProgressBar::new_spinner();
    if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        status.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let started = Instant::now();
    let mut seconds = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                let s = seed.stats();
                let egress: u64 = s.blobs.iter().map(|b| b.egress_bytes).sum();
                status.set_message(format!(
                    "{} blobs, {} used, {} sent, {} pushes stored",
                    s.blobs.len(), ui::size(s.used), ui::size(egress), s.pushes_stored,
                ));
                status.tick();
                seconds += 1;
                if json && seconds.is_multiple_of(5) {
                    let mut v = serde_json::to_value(&s).unwrap_or_default();
                    v["uptime_secs"] = started.elapsed().as_secs().into();
                    if ui::print_line(&v.to_string()).is_err() {
                        break;
                    }
                }
            }
        }
    }
    status.finish_and_clear();
}

#[cfg(test)]
mod tests {
    use shoal_node::seednode::{BlobStats, Policy, RefusedCounts, SeedNodeStats};

    use super::prometheus_text;

    #[test]
    fn metrics_carry_help_type_and_labelled_samples() {
        let stats = SeedNodeStats {
            peer_id: "12D3KooWexample".into(),
            policy: Policy::Frugal,
            quota: 1 << 30,
            used: 3 << 20,
            blobs: vec![BlobStats {
                id: "abc".into(),
                blob_len: 1 << 20,
                egress_bytes: 3 << 19,
                egress_copies: 1.5,
                frugal: Some(shoal_protocol::superseed::Stats {
                    revealed: 16,
                    ..Default::default()
                }),
                bad_blocks: Vec::new(),
            }],
            pushes_accepted: 2,
            pushes_stored: 1,
            pushed_bytes: 1 << 20,
            pushes_refused: RefusedCounts {
                quota: 4,
                ..Default::default()
            },
            pushes_corrupt: 0,
            pushes_failed: 1,
            takedowns: 0,
            pushes_abandoned: 0,
            corrupt_blobs: 3,
            corrupt_repaired: 1,
            corrupt_dropped: 1,
            relayed_bytes: 7,
            relay_reservations: 0,
            relay_circuits: 0,
        };
        let text = prometheus_text(&stats);
        for line in [
            "# HELP shoal_seed_node_quota_bytes Storage quota.",
            "# TYPE shoal_seed_node_quota_bytes gauge",
            "shoal_seed_node_quota_bytes 1073741824",
            "shoal_seed_node_blobs 1",
            "# TYPE shoal_seed_node_egress_bytes_total counter",
            "shoal_seed_node_egress_bytes_total{blob=\"abc\"} 1572864",
            "shoal_seed_node_egress_copies{blob=\"abc\"} 1.5",
            "shoal_seed_node_frugal_revealed_blocks_total{blob=\"abc\"} 16",
            "shoal_seed_node_pushes_total{outcome=\"stored\"} 1",
            "shoal_seed_node_pushes_total{outcome=\"refused_quota\"} 4",
            "shoal_seed_node_corrupt_blobs_total{state=\"repairing\"} 1",
            "shoal_seed_node_relayed_bytes_total 7",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing from:\n{text}"
            );
        }
        // Every sample belongs to a metric announced just before it.
        let mut announced = "";
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                announced = rest.split(' ').next().unwrap();
            } else if !l.starts_with('#') {
                assert!(l.starts_with(announced), "{l:?} after TYPE {announced}");
            }
        }
    }
}
