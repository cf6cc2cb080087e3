//! `shoal seed`: a long-running home seeder for everything this machine remembers (shares,
//! downloads kept with `get --seed`) and for the links given, fetched first if needed.

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use libp2p::Multiaddr;
use shoal_node::{
    CancellationToken, Config, Node, Store,
    announce::{Announcer, Status},
    fetch::{FetchOptions, Output, Progress},
    identity,
};
use shoal_protocol::{Link, blob::block_count};
use tokio::sync::watch;

use crate::{
    cmd::{DhtArgs, ReachArgs, provide_all},
    ui,
};

/// Seed files to other peers until Ctrl-C.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  shoal seed                                   serve everything shared or kept here
  shoal seed --up-limit 1MiB --tracker ADDR    capped, announced to a tracker
  shoal seed 'shoal:…#…' --dir ~/seeds          fetch a link first, then serve it too")]
pub(crate) struct Args {
    /// Links to seed as well: each is fetched into --dir first unless this machine already
    /// has it complete.
    links: Vec<String>,
    /// Where to save files fetched for LINKS [default: the current directory].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Upload cap per second for all blobs together, e.g. 2MiB; 0 = unlimited. The default
    /// leaves room on a typical home uplink.
    #[arg(long, value_parser = ui::parse_size, value_name = "SIZE", default_value = "2MiB")]
    up_limit: u64,
    /// A tracker to announce every seeded blob to (multiaddr ending in /p2p/PEER_ID);
    /// repeatable. Links' own trackers are announced to as well.
    #[arg(long, value_name = "MULTIADDR")]
    tracker: Vec<Multiaddr>,
    #[command(flatten)]
    dht: DhtArgs,
    #[command(flatten)]
    reach: ReachArgs,
    /// Address to listen on, repeatable [default: QUIC and TCP on all interfaces].
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// How long to wait for a peer that can deliver a LINK's file before giving up on it,
    /// e.g. 30s, 5m; 0 = wait forever.
    #[arg(long, value_parser = ui::parse_patience, value_name = "DURATION", default_value = "2m")]
    patience: ui::Patience,
    /// Machine-readable output: one JSON object per line on stdout.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &Args, data_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let links = args
        .links
        .iter()
        .map(|l| Link::parse(l).context("a link is malformed"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let data_dir = ui::data_dir(data_dir)?;
    let _running = identity::lock(&data_dir, identity::IDENTITY_FILE)?;
    let keypair = identity::load_or_create(&data_dir)?;
    let store = Arc::new(Store::open(&data_dir));
    let loaded = store.load_saved();
    for (path, why) in &loaded.skipped {
        eprintln!("not seeding {}: {why}", path.display());
    }
    if loaded.served.is_empty() && links.is_empty() {
        anyhow::bail!(
            "nothing to seed in {}: share a file with `shoal share`, keep a download with \
             `shoal get --seed`, or pass links to `shoal seed`",
            data_dir.display()
        );
    }
    let rt = ui::runtime()?;
    rt.block_on(async {
        let stop = CancellationToken::new();
        let limit = Some(args.up_limit); // 0 = no cap, as the node reads it
        let mut config = args
            .reach
            .apply(args.dht.apply(Config::default().with_upload_limit(limit)));
        if !args.listen.is_empty() {
            config = config.with_listen(args.listen.clone());
        }
        let node = Node::start(config, keypair, store.clone(), stop.clone())?;
        let addrs = node.listen_addrs(Duration::from_secs(5)).await;
        let hints = super::peer_hints(&addrs, node.peer_id(), 4);
        if args.json {
            let v = serde_json::json!({"peer_id": node.peer_id().to_string(), "addrs": hints});
            ui::print_line(&v.to_string())?;
        } else {
            eprintln!("seeding as peer {} on {}", node.peer_id(), hints.join(" "));
        }
        let mut announcers = Vec::new();
        provide_all(&node, loaded.served.iter().map(|s| s.id).collect());
        for s in &loaded.served {
            report(args.json, &s.id.to_string(), &s.name, "seeding", None)?;
            if !args.tracker.is_empty() {
                let total = u32::try_from(block_count(s.blob_len))?;
                announcers.push(Announcer::start(
                    &node,
                    s.id,
                    args.tracker.clone(),
                    Status::seeder(total),
                    None,
                ));
            }
        }
        let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
        for link in &links {
            if store.get(&link.id).is_some_and(|s| s.held().is_none()) {
                continue; // already complete here
            }
            let (tx, _rx) = watch::channel(Progress::default());
            let mut opts = FetchOptions::new(Output::Dir(dir.clone()));
            opts.trackers.clone_from(&args.tracker);
            opts.patience = args.patience.0;
            let Some(got) = ui::fetch_until_ctrl_c(&node, link, opts, tx).await? else {
                stop.cancel();
                return Ok(ExitCode::from(130));
            };
            match got {
                Ok(done) => {
                    let name = done.metadata.name.clone();
                    report(
                        args.json,
                        &link.id.to_string(),
                        &name,
                        "fetched",
                        Some(&done.path),
                    )?;
                    announcers.extend(done.announcer);
                }
                // One link failing does not stop seeding the others.
                Err(e) => report(
                    args.json,
                    &link.id.to_string(),
                    "",
                    &format!("not seeding: {e}"),
                    None,
                )?,
            }
        }
        ui::serve_until_ctrl_c(&node, args.json).await;
        // Tell the trackers this node left.
        futures::future::join_all(announcers.into_iter().map(Announcer::leave)).await;
        stop.cancel();
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

fn report(
    json: bool,
    id: &str,
    name: &str,
    what: &str,
    path: Option<&std::path::Path>,
) -> std::io::Result<()> {
    if json {
        let v = serde_json::json!({"blob_id": id, "name": name, "status": what, "path": path});
        ui::print_line(&v.to_string())
    } else {
        eprintln!("{what} {name} ({id})");
        Ok(())
    }
}
