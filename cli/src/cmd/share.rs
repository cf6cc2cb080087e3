//! `shoal share FILE`: seal a file, print its link, serve it until Ctrl-C.

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use libp2p::Multiaddr;
use shoal_node::{
    CancellationToken, Config, Node, Store,
    announce::{Announcer, Status},
    identity,
};

use crate::{
    cmd::{DhtArgs, KeyArgs, ReachArgs, peer_hints, provide_all},
    ui,
};

/// Most peer addresses put into a link.
const MAX_LINK_PEERS: usize = 6;

/// Share a file.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  shoal share film.mkv                            print the link, serve until Ctrl-C
  shoal share film.mkv --tracker /ip4/…/p2p/…     name a tracker in the link, announce to it
  shoal share film.mkv --up-limit 2MiB            cap the upload (0 = no cap)
  shoal --data-dir /tmp/a share film.mkv --listen /ip4/127.0.0.1/tcp/0
                                                  a second node on this machine, loopback only

The link's key is after '#': whoever has the link can read the file.")]
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
    /// Upload cap per second, e.g. 2MiB; 0 = unlimited [default: unlimited].
    #[arg(long, value_parser = ui::parse_size, value_name = "SIZE")]
    up_limit: Option<u64>,
    /// A tracker to announce to and to name in the link (multiaddr ending in
    /// /p2p/PEER_ID, as `shoal tracker` prints it); repeatable.
    #[arg(long, value_name = "MULTIADDR")]
    tracker: Vec<Multiaddr>,
    #[command(flatten)]
    dht: DhtArgs,
    #[command(flatten)]
    reach: ReachArgs,
    /// Machine-readable output: one JSON object per line on stdout (the link first).
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &Args, data_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let data_dir = ui::data_dir(data_dir)?;
    let _running = identity::lock(&data_dir, identity::IDENTITY_FILE)?;
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
        let mut config = args.reach.apply(
            args.dht
                .apply(Config::default().with_upload_limit(args.up_limit)),
        );
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
        let mut link = shared.link.clone();
        link.peers = peer_hints(&addrs, node.peer_id(), MAX_LINK_PEERS);
        link.trackers = args.tracker.iter().map(ToString::to_string).collect();
        let total = u32::try_from(shoal_protocol::blob::block_count(
            link.blob_len.unwrap_or_default(),
        ))?;
        let announcer = (!args.tracker.is_empty()).then(|| {
            Announcer::start(
                &node,
                link.id,
                args.tracker.clone(),
                Status::seeder(total),
                None,
            )
        });
        provide_all(&node, vec![link.id]);
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
        ui::serve_until_ctrl_c(&node, args.json).await;
        if let Some(a) = announcer {
            a.leave().await;
        }
        stop.cancel();
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
