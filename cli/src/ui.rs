//! Terminal helpers: logging, progress bars, sizes, the data directory, link warnings.

use std::{
    io::{IsTerminal, Write},
    path::PathBuf,
    sync::atomic::Ordering,
    time::Duration,
};

use shoal_node::{
    Node, Reachability,
    fetch::{self, FetchError, FetchOptions, Fetched, Progress},
};
use shoal_protocol::Link;
use tokio::sync::watch;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Installs the stderr log subscriber. Default level `warn`; `-v` info, `-vv` debug.
pub(crate) fn init_logging(verbose: u8) {
    // libp2p-kad warns "Failed to trigger bootstrap: No known peers" when a node without
    // bootstrap peers starts listening: expected here (the DHT then learns peers from the
    // peers the node meets), so kad's own warnings show from -v on.
    let default = match verbose {
        0 => "warn,libp2p_kad=error",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour_on_stderr())
        .with_target(false)
        .try_init();
}

/// Whether stderr gets colours: only on a terminal, and never with `NO_COLOR` set to
/// anything non-empty (<https://no-color.org>).
fn colour_on_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The data directory: `--data-dir`, `$SHOAL_DATA_DIR`, or the platform default
/// (`$XDG_DATA_HOME/shoal`, `~/.local/share/shoal`).
pub(crate) fn data_dir(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(d) = flag {
        return Ok(d);
    }
    directories::ProjectDirs::from("", "", "shoal")
        .map(|p| p.data_dir().to_owned())
        .context("cannot find a home directory for shoal's data; pass --data-dir DIR")
}

/// A byte-count progress bar on stderr, hidden when stderr is not a terminal or `quiet`.
pub(crate) fn bytes_bar(len: u64, what: &str, quiet: bool) -> ProgressBar {
    let target = if quiet || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A status spinner on stderr, hidden when stderr is not a terminal or `quiet`.
pub(crate) fn spinner(quiet: bool) -> ProgressBar {
    let target = if quiet || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let spinner = ProgressBar::with_draw_target(None, target);
    spinner.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
    spinner.enable_steady_tick(Duration::from_millis(200));
    spinner
}

/// Parses sizes like `64MiB`, `1GiB`, `4MB`, `1000`.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a size like 64MiB, 4MB or 1000 ({e})"))
}

/// A peer's multiaddr, which must end in `/p2p/PEER_ID`.
pub(crate) fn parse_peer_addr(s: &str) -> Result<libp2p::Multiaddr, String> {
    let addr: libp2p::Multiaddr = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a multiaddr ({e})"))?;
    match addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(_)) => Ok(addr),
        _ => Err(format!(
            "{s:?} names no peer: it must end in /p2p/PEER_ID (a running Shoal node's address, as `shoal seed` prints it)"
        )),
    }
}

/// How long to wait; `None` is forever (`--patience 0`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Patience(pub(crate) Option<Duration>);

/// Parses how long to wait: `90s`, `2m`, `1h30m`, or seconds (`120`); `0` means forever.
pub(crate) fn parse_patience(s: &str) -> Result<Patience, String> {
    let s = s.trim();
    let d = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("{s:?} is not a duration like 30s, 2m or 1h ({e})"))?,
    };
    Ok(Patience((!d.is_zero()).then_some(d)))
}

/// Human-readable size.
pub(crate) fn size(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

/// MB/s (10^6 bytes per second), the unit the benchmarks use.
pub(crate) fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-9) / 1e6
}

/// Warns on stderr, before a link is shown, that it carries the key.
pub(crate) fn warn_secret_link() {
    eprintln!(
        "note: the link carries the decryption key after '#'. Anyone who sees it can read the file;"
    );
    eprintln!("      share it only with the people meant to have it (and mind shared screens).");
}

/// Prints one line to stdout and flushes (so scripts see the link at once).
pub(crate) fn print_line(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// A tokio runtime for the node. One worker thread measured faster than two on 2 cores
/// (less cross-thread wake-up; see docs/benchmarks.md); blocking work has its own pool.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Downloads `link` until done or Ctrl-C (then `None`, once the download has stopped: its
/// verified blocks are kept for a resume).
///
/// The download runs as a task on the runtime's worker, next to the node's own tasks. Polled
/// from `block_on` instead, every block's event would wake the main thread: ~25,000 context
/// switches per GiB instead of ~7,500 (docs/benchmarks.md).
pub(crate) async fn fetch_until_ctrl_c(
    node: &Node,
    link: &Link,
    opts: FetchOptions,
    progress: watch::Sender<Progress>,
) -> anyhow::Result<Option<Result<Fetched, FetchError>>> {
    let mut task = tokio::spawn({
        let (node, link) = (node.clone(), link.clone());
        async move { fetch::fetch(&node, &link, opts, progress).await }
    });
    tokio::select! {
        joined = &mut task => Ok(Some(joined.context("the download task failed")?)),
        _ = tokio::signal::ctrl_c() => {
            task.abort();
            let _ = task.await;
            Ok(None)
        }
    }
}

/// 32 bytes from the OS CSPRNG.
pub(crate) fn os_random() -> [u8; 32] {
    rand::random()
}

/// Where a node stands, for a status line.
pub(crate) const fn reach_words(r: Reachability) -> &'static str {
    match r {
        Reachability::Direct => "reachable directly",
        Reachability::Upnp => "reachable through UPnP",
        Reachability::Relay => "reachable through a relay",
        Reachability::Unknown => "reachability not known yet",
    }
}

/// The hole punches `node` took part in, for `--json`.
pub(crate) fn punches_json(node: &Node) -> Vec<serde_json::Value> {
    node.punches()
        .iter()
        .map(|p| serde_json::json!({"peer": p.peer.to_string(), "ok": p.ok, "secs": p.after.as_secs_f64()}))
        .collect()
}

/// Shows a status line (peers, uploaded, rate; a JSON line every second with `json`) while
/// the node serves, until Ctrl-C.
pub(crate) async fn serve_until_ctrl_c(node: &Node, json: bool) {
    let status = indicatif::ProgressBar::new_spinner();
    if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        status.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                let up = node.stats().uploaded_bytes.load(Ordering::Relaxed);
                let peers = node.stats().connected_peers.load(Ordering::Relaxed);
                let dht_peers = node.stats().dht_peers.load(Ordering::Relaxed);
                let rate = up.saturating_sub(last);
                last = up;
                // Per-blob totals: the three blobs that sent the most.
                let mut blobs: Vec<(u64, String)> = node.store().sources().iter()
                    .map(|s| (s.uploaded(), s.id().to_string()))
                    .collect();
                blobs.sort_unstable_by(|a, b| b.cmp(a));
                let top: Vec<String> = blobs.iter().take(3)
                    .map(|(b, id)| format!("{}…: {}", &id[..8], size(*b)))
                    .collect();
                let reach = reach_words(node.reachability());
                status.set_message(format!(
                    "{peers} peers connected, {} uploaded, {}/s, {reach}{}",
                    size(up),
                    size(rate),
                    if blobs.len() > 1 { format!(" [{}]", top.join(", ")) } else { String::new() },
                ));
                status.tick();
                if json {
                    let mut blobs: Vec<_> = node.store().sources().iter().map(|s| serde_json::json!({
                        "blob_id": s.id().to_string(),
                        "uploaded_bytes": s.uploaded(),
                        "complete": s.held().is_none(),
                    })).collect();
                    blobs.sort_by_key(|b| b["blob_id"].as_str().map(str::to_owned));
                    let v = serde_json::json!({
                        "uploaded_bytes": up,
                        "connected_peers": peers,
                        "dht_peers": dht_peers,
                        "upload_bytes_per_sec": rate,
                        "reachability": node.reachability(),
                        "relayed_bytes": node.stats().relayed_bytes.load(Ordering::Relaxed),
                        "blobs": blobs,
                    });
                    if print_line(&v.to_string()).is_err() {
                        break;
                    }
                }
            }
        }
    }
    status.finish_and_clear();
    let up = node.stats().uploaded_bytes.load(Ordering::Relaxed);
    eprintln!("stopped; uploaded {} in total", size(up));
}
