//! `shoal get LINK`: fetch, verify, decrypt; resumable.

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use libp2p::Multiaddr;
use shoal_node::{
    CancellationToken, Config, Node, Store,
    fetch::{FetchError, FetchOptions, Output, Progress},
};
use shoal_protocol::{Link, format::SEGMENT_PLAINTEXT_LEN};
use tokio::sync::watch;

use crate::{
    cmd::{DhtArgs, ReachArgs},
    exit, ui,
};

/// Fetch a link's file.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  shoal get 'shoal:…#…'                      into the current directory, under its own name
  shoal get 'shoal:…#…' -o film.mkv          as film.mkv (run it again to resume)
  shoal get 'shoal:…#…' -o downloads/        into an existing directory
  shoal get --sequential 'shoal:…#…'         in file order, to start playing early
  shoal get --seed --patience 0 'shoal:…#…'  wait for a seeder however long, then keep serving
  shoal get --json 'shoal:…#…'               one JSON line on stdout, for scripts

Exit codes: 3 bad link, 4 no peer could deliver (within --patience), 5 integrity,
6 local file error, 7 taken down at a tracker, 130 interrupted (resumable).")]
pub(crate) struct Args {
    /// The share link (quote it: it contains '#' and '&').
    link: String,
    /// Output file, or an existing directory (or a path ending in /) to save under the
    /// file's own name [default: the current directory]. Its directory must exist.
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    /// Another peer to fetch from (multiaddr ending in /p2p/PEER_ID); repeatable.
    #[arg(long, value_name = "MULTIADDR")]
    peer: Vec<Multiaddr>,
    /// A tracker to ask for peers besides the link's (multiaddr ending in /p2p/PEER_ID);
    /// repeatable.
    #[arg(long, value_name = "MULTIADDR")]
    tracker: Vec<Multiaddr>,
    #[command(flatten)]
    dht: DhtArgs,
    #[command(flatten)]
    reach: ReachArgs,
    /// Replace the output file if it already exists.
    #[arg(long)]
    force: bool,
    /// Fetch blocks in file order (to start playing a video while it downloads) instead
    /// of rarest first.
    #[arg(long)]
    sequential: bool,
    /// Keep serving the file to other downloaders after it is complete, until Ctrl-C
    /// (and remember it in the data directory, so `shoal seed` serves it after a restart).
    /// While it downloads, a node always serves the blocks it has verified.
    #[arg(long)]
    seed: bool,
    /// Address to listen on for other downloaders, repeatable [default: QUIC and TCP on all
    /// interfaces].
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// Upload cap per second for serving other downloaders, e.g. 1MiB; 0 = unlimited. The
    /// default leaves room on a typical home uplink.
    #[arg(long, value_parser = ui::parse_size, value_name = "SIZE", default_value = "2MiB")]
    up_limit: u64,
    /// Download cap per second, e.g. 4MiB; 0 = unlimited [default: unlimited].
    #[arg(long, value_parser = ui::parse_size, value_name = "SIZE")]
    down_limit: Option<u64>,
    /// How long to wait while no peer can deliver (the seeder is not up yet, restarted, or
    /// went away) before giving up, e.g. 30s, 5m; 0 = wait forever. Meanwhile every known
    /// address is dialled again and the trackers and the DHT are asked again.
    #[arg(long, value_parser = ui::parse_patience, value_name = "DURATION", default_value = "2m")]
    patience: ui::Patience,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &Args, data_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let link = Link::parse(&args.link).context("the link is malformed")?;
    // A downloader needs no stable identity: an ephemeral one lets `share` and `get` run
    // side by side on one machine with the same data directory. With `--seed` the finished
    // file is remembered there (with its key: this is the link holder's own machine).
    let store = if args.seed {
        Store::open(&ui::data_dir(data_dir)?)
    } else {
        Store::in_memory()
    };
    let keypair = libp2p::identity::Keypair::generate_ed25519();
    let output = match &args.output {
        None => Output::Dir(PathBuf::from(".")),
        // `-o dir/` means a directory even before it exists (the fetch then says it does
        // not, instead of saving a file named `dir`).
        Some(p) if p.is_dir() || p.as_os_str().to_string_lossy().ends_with('/') => {
            Output::Dir(p.clone())
        }
        Some(p) => Output::File(p.clone()),
    };
    let mut opts = FetchOptions::new(output);
    opts.peers.clone_from(&args.peer);
    opts.trackers.clone_from(&args.tracker);
    opts.overwrite = args.force;
    opts.sequential = args.sequential;
    opts.down_limit = args.down_limit; // 0 = no cap, as the fetch reads it
    opts.patience = args.patience.0;
    // Only a node that stays up to seed should tell the DHT it has the file.
    opts.provide = args.seed;
    let rt = ui::runtime()?;
    rt.block_on(async {
        let stop = CancellationToken::new();
        let mut config = args.reach.apply(
            args.dht
                .apply(Config::default().with_upload_limit(Some(args.up_limit))),
        );
        if !args.listen.is_empty() {
            config = config.with_listen(args.listen.clone());
        }
        let node = Node::start(config, keypair, Arc::new(store), stop.clone())?;
        let (tx, rx) = watch::channel(Progress::default());
        let bar_task = tokio::spawn(show_progress(rx, args.json));
        let Some(result) = ui::fetch_until_ctrl_c(&node, &link, opts, tx).await? else {
            eprintln!("\ninterrupted; verified blocks are kept: run the same command again to resume");
            return Ok(ExitCode::from(130));
        };
        let _ = bar_task.await;
        let done = match result {
            Ok(done) => done,
            Err(e) => {
                stop.cancel();
                let e = anyhow::Error::from(e);
                if args.json {
                    // Scripts get the failure on stdout too; the message goes to stderr.
                    ui::print_line(&error_json(&e).to_string())?;
                }
                return Err(e);
            }
        };
        let len = done.metadata.file_len;
        let fetched_bytes = (done.fetched_blocks * SEGMENT_PLAINTEXT_LEN as u64).min(len);
        if args.json {
            let v = serde_json::json!({
                "path": done.path,
                "file_len": len,
                "name": done.metadata.name,
                "media_type": done.metadata.media_type,
                "seconds": done.elapsed.as_secs_f64(),
                "finished_unix": std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64()),
                "mb_per_s": ui::mb_per_s(fetched_bytes, done.elapsed),
                "fetched_blocks": done.fetched_blocks,
                "resumed_blocks": done.resumed_blocks,
                "banned_peers": done.banned.iter().map(|(p, w)| serde_json::json!({"peer": p.to_string(), "why": w})).collect::<Vec<_>>(),
                "sources": done.sources.iter().map(|c| serde_json::json!({"peer": c.peer.to_string(), "blocks": c.blocks, "relayed_blocks": c.relayed_blocks})).collect::<Vec<_>>(),
                "direct_from": done.sources.iter().filter(|c| c.blocks > c.relayed_blocks).map(|c| c.peer.to_string()).collect::<Vec<_>>(),
                "relayed_bytes": node.stats().relayed_bytes.load(std::sync::atomic::Ordering::Relaxed),
                "punches": ui::punches_json(&node),
                "reachability": node.reachability(),
            });
            ui::print_line(&v.to_string())?;
        } else {
            for (p, w) in &done.banned {
                eprintln!("dropped peer {p}: {w}");
            }
            eprintln!(
                "verified and decrypted {} in {:.2} s ({:.0} MB/s){}",
                ui::size(len),
                done.elapsed.as_secs_f64(),
                ui::mb_per_s(fetched_bytes, done.elapsed),
                if done.resumed_blocks > 0 { format!(", resumed {} blocks", done.resumed_blocks) } else { String::new() }
            );
            ui::print_line(&done.path.display().to_string())?;
        }
        if args.seed {
            if !args.json {
                eprintln!("seeding {}; Ctrl-C to stop", done.path.display());
            }
            ui::serve_until_ctrl_c(&node, args.json).await;
        }
        if let Some(a) = done.announcer {
            a.leave().await;
        }
        stop.cancel();
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

/// `{"error": KIND, "message": TEXT, "exit_code": N}` for `--json`, plus `blob_id` and
/// `tracker` when the file was taken down.
fn error_json(e: &anyhow::Error) -> serde_json::Value {
    let kind = match e.downcast_ref::<FetchError>() {
        Some(FetchError::NoPeersGiven { .. }) => "no_peers_given",
        Some(FetchError::Unreachable { .. }) => "unreachable",
        Some(FetchError::Exhausted { .. }) => "exhausted",
        Some(FetchError::WrongKey { .. }) => "wrong_key",
        Some(FetchError::BadBlob { .. }) => "bad_blob",
        Some(FetchError::Undecryptable { .. }) => "undecryptable",
        Some(FetchError::TakenDown { .. }) => "taken_down",
        Some(FetchError::LinkSizeMismatch { .. }) => "link_size_mismatch",
        Some(FetchError::InUse(_)) => "in_use",
        Some(FetchError::OutputExists(_)) => "output_exists",
        Some(FetchError::Disk { .. }) => "disk",
        Some(FetchError::NoSuchDir(_)) => "no_such_dir",
        Some(FetchError::NoSpace { .. }) => "no_space",
        _ => "other",
    };
    let mut v = serde_json::json!({
        "error": kind,
        "message": e.to_string(),
        "exit_code": exit::code_of(e),
    });
    if let Some(FetchError::TakenDown { id, tracker }) = e.downcast_ref::<FetchError>() {
        v["blob_id"] = id.to_string().into();
        v["tracker"] = tracker.to_string().into();
    }
    v
}

/// Shows the fetch's progress on stderr: a spinner until the file's size is known, then a
/// bar; both say when the fetch is waiting for peers.
async fn show_progress(mut rx: watch::Receiver<Progress>, quiet: bool) {
    let mut bar: Option<indicatif::ProgressBar> = None;
    let spinner = ui::spinner(quiet);
    loop {
        let p = rx.borrow_and_update().clone();
        // Shown after a moment only: a second without a request in flight is normal.
        let waiting = p
            .waiting_since
            .map(|t| t.elapsed())
            .filter(|w| *w >= Duration::from_secs(1))
            .map(|w| format!("waiting for peers ({} s)", w.as_secs()));
        match p.file_len {
            None => spinner.set_message(waiting.unwrap_or_else(|| "connecting to peers".into())),
            Some(len) => {
                let b = bar.get_or_insert_with(|| {
                    spinner.finish_and_clear();
                    let b = ui::bytes_bar(len, "fetching", quiet);
                    // Blocks an earlier run verified are not this run's speed.
                    b.set_position((p.resumed_blocks * SEGMENT_PLAINTEXT_LEN as u64).min(len));
                    b.reset_eta();
                    b
                });
                let done = (p.done_blocks * SEGMENT_PLAINTEXT_LEN as u64).min(len);
                b.set_position(done);
                b.set_message(waiting.unwrap_or_else(|| format!("{} peer(s)", p.peers)));
            }
        }
        let changed = tokio::time::timeout(Duration::from_millis(250), rx.changed()).await;
        if matches!(changed, Ok(Err(_))) {
            break;
        }
    }
    spinner.finish_and_clear();
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}
