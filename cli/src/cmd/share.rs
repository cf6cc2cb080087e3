//! `shoal share FILE`: seal a file, print its link, serve it until Ctrl-C.

use std::{path::PathBuf, process::ExitCode, sync::Arc, sync::atomic::Ordering, time::Duration};

use anyhow::Context;
use libp2p::Multiaddr;
use shoal_node::{CancellationToken, Config, Node, Store, identity};

use crate::{
    cmd::{KeyArgs, peer_hints},
    ui,
};

/// Most peer addresses put into a link.
const MAX_LINK_PEERS: usize = 6;

/// Share a file.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The file to share.
    file: PathBuf,
    /// Media type to record in the encrypted header (e.g. video/mp4).
    #[arg(long, default_value = "")]
    media_type: String,
    #[command(flatten)]
    key: KeyArgs,
    /// Address to listen on, repeatable [default: QUIC and TCP on all interfaces].
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// Upload cap per second, e.g. 2MiB [default: unlimited].
    #[arg(long, value_parser = ui::parse_size, value_name = "SIZE")]
    up_limit: Option<u64>,
    /// Machine-readable output: one JSON object per line on stdout (the link first).
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &Args, data_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let data_dir = ui::data_dir(data_dir)?;
    let keypair = identity::load_or_create(&data_dir)?;
    let store = Arc::new(Store::open(&data_dir));
    let file_len = std::fs::metadata(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?
        .len();
    let mode = args.key.mode();
    let bar = ui::bytes_bar(file_len, "sealing", args.json);
    let shared = store.share_file(&args.file, &args.media_type, &mode, ui::os_random(), &|n| {
        bar.set_position(n)
    })?;
    bar.finish_and_clear();

    let rt = ui::runtime()?;
    rt.block_on(async {
        let stop = CancellationToken::new();
        let mut config = Config::default().with_upload_limit(args.up_limit);
        if !args.listen.is_empty() {
            config = config.with_listen(args.listen.clone());
        }
        let node = Node::start(config, keypair, store, stop.clone())?;
        // Interfaces report their addresses one by one: take what arrives in a moment.
        let mut addrs = node.listen_addrs(Duration::from_secs(5)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        addrs = node
            .listen_addrs(Duration::ZERO)
            .await
            .into_iter()
            .chain(addrs)
            .collect();
        addrs.dedup();
        let mut link = shared.link.clone();
        link.peers = peer_hints(&addrs, node.peer_id(), MAX_LINK_PEERS);
        let text = link.to_secret_string();
        if args.json {
            let v = serde_json::json!({
                "link": text,
                "blob_id": link.id.to_string(),
                "file_len": shared.metadata.file_len,
                "name": shared.metadata.name,
                "peer_id": node.peer_id().to_string(),
                "reused": shared.reused,
            });
            ui::print_line(&v.to_string())?;
        } else {
            ui::warn_secret_link();
            ui::print_line(&text)?;
            eprintln!(
                "sharing {} ({}) as peer {}; Ctrl-C to stop",
                shared.metadata.name,
                ui::size(shared.metadata.file_len),
                node.peer_id()
            );
        }
        serve_until_ctrl_c(&node, args.json).await;
        stop.cancel();
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

async fn serve_until_ctrl_c(node: &Node, json: bool) {
    let status = indicatif::ProgressBar::new_spinner();
    if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        status.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = 0u64;
    let mut seconds = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                let up = node.stats().uploaded_bytes.load(Ordering::Relaxed);
                let peers = node.stats().connected_peers.load(Ordering::Relaxed);
                let rate = up.saturating_sub(last);
                last = up;
                seconds += 1;
                status.set_message(format!("{peers} peers connected, {} uploaded, {}/s", ui::size(up), ui::size(rate)));
                status.tick();
                if json && seconds.is_multiple_of(5) {
                    let v = serde_json::json!({"uploaded_bytes": up, "connected_peers": peers, "upload_bytes_per_sec": rate});
                    if ui::print_line(&v.to_string()).is_err() {
                        break;
                    }
                }
            }
        }
    }
    status.finish_and_clear();
    let up = node.stats().uploaded_bytes.load(Ordering::Relaxed);
    eprintln!("stopped; uploaded {} in total", ui::size(up));
}
