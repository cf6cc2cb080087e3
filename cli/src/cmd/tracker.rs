//! `shoal tracker`: run a tracker until Ctrl-C; print its address first, for `tr=` hints.

use std::{
    error::Error,
    io,
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use libp2p::{Multiaddr, PeerId};
use shoal_node::{CancellationToken, identity};
use shoal_tracker::{ServiceConfig, StartError, Tracker, takedowns::StoreError};

use crate::{cmd::peer_hints, exit, ui};

/// The tracker's identity file in the data directory: a node and a tracker on one machine
/// keep different peer ids.
pub(crate) const IDENTITY_FILE: &str = "tracker.key";
/// With --json, a stats line every this many seconds.
const JSON_STATS_EVERY_SECS: u64 = 5;

const AFTER_HELP: &str = "\
The first line on stdout is the tracker's address, ending in /p2p/<peer id>: put it in a
link's tr= hint. With --json, every line is a JSON object (the address first, then stats
every 5 s). Status goes to stderr. The identity is kept in DATA_DIR/tracker.key, so the
address stays the same across restarts.

Takedowns: peers given with --operator may take blobs down (`shoal takedown`); the tracker
then refuses to coordinate them. The list and its audit trail are kept in
DATA_DIR/takedowns.redb (--takedowns PATH); GET /takedowns on the HTTP address shows the
audit trail.

Examples:
  shoal tracker                                  QUIC and TCP on port 7000, stats on 127.0.0.1:7001
  shoal tracker --listen /ip4/0.0.0.0/tcp/7100 --http off
  shoal tracker --allow-seed-node 12D3KooW…       accept that peer's seed-node announces
  shoal tracker --operator 12D3KooW…              accept that peer's takedowns
  addr=$(shoal tracker --json | head -1 | jq -r .addr)
  curl -s http://127.0.0.1:7001/stats            gauges and counters as JSON
  curl -s http://127.0.0.1:7001/metrics          the same for Prometheus
  curl -s http://127.0.0.1:7001/takedowns        the takedown audit trail (JSON)";

/// Run a tracker.
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub(crate) struct Args {
    /// Address to listen on, repeatable [default: /ip4/0.0.0.0/udp/7000/quic-v1 and
    /// /ip4/0.0.0.0/tcp/7000].
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// Where to serve GET /stats (JSON) and GET /metrics (Prometheus), or `off`.
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:7001", value_parser = parse_http)]
    http: HttpAddr,
    /// A peer id whose seed-node announces are accepted (an operator's seed server);
    /// repeatable. Others claiming the role are listed as seeders or leechers.
    #[arg(long = "allow-seed-node", value_name = "PEER_ID")]
    allow_seed_node: Vec<PeerId>,
    /// A peer id allowed to take blobs down (`shoal takedown` prints the peer id of the
    /// machine it runs on); repeatable. Without it nobody can.
    #[arg(long = "operator", value_name = "PEER_ID")]
    operators: Vec<PeerId>,
    /// The takedown list and its audit trail (a redb file, created if missing)
    /// [default: DATA_DIR/takedowns.redb].
    #[arg(long, value_name = "PATH")]
    takedowns: Option<PathBuf>,
    /// Machine-readable output: one JSON object per line on stdout (the address first).
    #[arg(long)]
    json: bool,
    /// Do not relay for nodes behind NAT. By default the tracker is a circuit relay v2
    /// (256 reservations; 64 circuits of at most 10 min and 16 MiB each) and an AutoNAT
    /// server, and lists relayed addresses through itself and through its allow-listed
    /// seed nodes.
    #[arg(long)]
    no_relay: bool,
}

/// `--http`: an address, or `off`.
#[derive(Clone, Copy, Debug)]
struct HttpAddr(Option<SocketAddr>);

fn parse_http(s: &str) -> Result<HttpAddr, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(HttpAddr(None));
    }
    s.parse()
        .map(|a| HttpAddr(Some(a)))
        .map_err(|_| format!("{s:?} is not an address like 127.0.0.1:7001, or `off`"))
}

pub(crate) fn run(args: &Args, data_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let data_dir = ui::data_dir(data_dir)?;
    let keypair = identity::load_or_create_file(&data_dir, IDENTITY_FILE)?;
    let takedowns = args
        .takedowns
        .clone()
        .unwrap_or_else(|| shoal_tracker::takedowns::default_path(&data_dir));
    let mut config = ServiceConfig::default()
        .with_http(args.http.0)
        .with_seed_node_allow(args.allow_seed_node.clone())
        .with_operators(args.operators.iter().copied())
        .with_takedown_store(Some(takedowns));
    if args.no_relay {
        config.relay = None;
    }
    if !args.listen.is_empty() {
        config = config.with_listen(args.listen.clone());
    }
    let rt = ui::runtime()?;
    rt.block_on(async {
        let stop = CancellationToken::new();
        let tracker = Tracker::start(config, keypair, stop.clone()).map_err(start_error)?;
        // Interfaces report their addresses one by one: take what arrives in a moment.
        let mut addrs = tracker.listen_addrs(Duration::from_secs(5)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        addrs.extend(tracker.listen_addrs(Duration::ZERO).await);
        let mut seen = std::collections::HashSet::new();
        addrs.retain(|a| seen.insert(a.clone()));
        let hints = peer_hints(&addrs, tracker.peer_id(), usize::MAX);
        let Some(first) = hints.first() else {
            return Err(exit::coded(
                exit::OTHER,
                "the tracker has no dialable listen address; pass --listen with a concrete or 0.0.0.0 address",
            ));
        };
        let http = tracker.http_addr();
        if args.json {
            let v = serde_json::json!({
                "addr": first,
                "addrs": hints,
                "peer_id": tracker.peer_id().to_string(),
                "http": http.map(|a| a.to_string()),
            });
            ui::print_line(&v.to_string())?;
        } else {
            ui::print_line(first)?;
            for other in &hints[1..] {
                eprintln!("also at {other}");
            }
            match http {
                Some(a) => eprintln!(
                    "tracker {} running; stats at http://{a}/stats and /metrics; Ctrl-C to stop",
                    tracker.peer_id()
                ),
                None => eprintln!("tracker {} running; Ctrl-C to stop", tracker.peer_id()),
            }
        }
        serve_until_ctrl_c(&tracker, args.json).await;
        stop.cancel();
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

/// The start error with its causes and a hint, as one message (exit code 1: a taken port is
/// not a local file error).
fn start_error(e: StartError) -> anyhow::Error {
    let mut message = format!("cannot start the tracker: {e}");
    let io_kind = os_error_kind(&e);
    let mut source = e.source();
    while let Some(cause) = source {
        // libp2p wraps OS errors in layers that repeat them (or print nothing).
        let text = cause.to_string();
        let text = text.trim_start_matches([':', ' ']);
        if !text.is_empty() && !message.contains(text) {
            message.push_str(": ");
            message.push_str(text);
        }
        source = cause.source();
    }
    let hint = match (&e, io_kind) {
        (StartError::Listen { .. }, Some(io::ErrorKind::AddrInUse)) => {
            "; is another tracker running? choose other ports with --listen"
        }
        (StartError::Listen { .. }, Some(io::ErrorKind::AddrNotAvailable)) => {
            "; that IP is not on this machine: use one of its own, or 0.0.0.0, with --listen"
        }
        (StartError::Listen { .. }, _) => "; check the --listen addresses",
        (StartError::Http { .. }, _) => "; choose another with --http ADDR, or --http off",
        (StartError::Takedowns(StoreError::Locked { .. }), _) => {
            "; stop the other tracker, or give this one its own file with --takedowns PATH"
        }
        (StartError::Takedowns(StoreError::Corrupt { .. }), _) => {
            "; restore it from a backup, or move it away to start with an empty takedown list (its audit trail is then lost)"
        }
        (StartError::Takedowns(StoreError::Format { .. }), _) => {
            "; run the shoal version that wrote it, or move it away to start with an empty takedown list"
        }
        (StartError::Takedowns(_), _) => {
            "; check the path and its permissions, or choose another with --takedowns PATH"
        }
        _ => "",
    };
    message.push_str(hint);
    exit::coded(exit::OTHER, message)
}

/// The kind of the first OS error in `e`'s chain (the service reports bind failures as
/// the OS error itself).
fn os_error_kind(e: &(dyn Error + 'static)) -> Option<io::ErrorKind> {
    let mut next = Some(e);
    while let Some(cause) = next {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        next = cause.source();
    }
    None
}

async fn serve_until_ctrl_c(tracker: &Tracker, json: bool) {
    let status = indicatif::ProgressBar::new_spinner();
    if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        status.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = (Instant::now(), tracker.stats().service.announce_requests);
    let mut seconds = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                let s = tracker.stats();
                let now = Instant::now();
                let announces = s.service.announce_requests;
                let rate = announces.saturating_sub(last.1) as f64
                    / now.duration_since(last.0).as_secs_f64().max(1e-3);
                last = (now, announces);
                seconds += 1;
                status.set_message(format!(
                    "{} swarms, {} peers ({} connected), {rate:.1} announces/s, {} scrapes",
                    s.table.swarms, s.table.peers, s.service.connected_peers, s.service.scrape_requests,
                ));
                status.tick();
                if json && seconds.is_multiple_of(JSON_STATS_EVERY_SECS) {
                    let v = serde_json::json!({
                        "swarms": s.table.swarms,
                        "peers": s.table.peers,
                        "entries": s.table.entries,
                        "connected_peers": s.service.connected_peers,
                        "announces": announces,
                        "announces_per_sec": rate,
                        "scrapes": s.service.scrape_requests,
                    });
                    if ui::print_line(&v.to_string()).is_err() {
                        break;
                    }
                }
            }
        }
    }
    status.finish_and_clear();
    let s = tracker.stats();
    eprintln!(
        "stopped; {} announces and {} scrapes received",
        s.service.announce_requests, s.service.scrape_requests
    );
}
