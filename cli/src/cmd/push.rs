//! `shoal push`: send a shared blob's ciphertext to seed nodes. The key stays here: the
//! push protocol carries only the blob id, its size and ciphertext.

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use libp2p::Multiaddr;
use shoal_node::{
    CancellationToken, Config, Node, Store, identity,
    seednode::{PushError, push},
};
use shoal_protocol::{Link, push::Refusal};

use crate::{exit, ui};

const AFTER_HELP: &str = "\
The blob must be one this machine shares (`shoal share FILE` remembers it in the data
directory, and `shoal get --seed` keeps downloads): push reads it from there. Only
ciphertext leaves this machine; the seed node verifies every block against the blob id.
An interrupted push resumes where it stopped when run again.

The seed node accepts pushes only from peer ids its operator allowed with --allow: this
machine's peer id is printed in the error if it is not.

Examples:
  shoal push \"$LINK\" --to /ip4/203.0.113.7/tcp/7010/p2p/12D3KooW…
  shoal push \"$LINK\" --to ADDR1 --to ADDR2 --json";

/// Push a shared blob's ciphertext to seed nodes.
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub(crate) struct Args {
    /// The share link (its key is never sent: only the blob id and ciphertext are).
    link: String,
    /// A seed node's address, ending in /p2p/PEER_ID; repeatable.
    #[arg(long, required = true, value_name = "MULTIADDR", value_parser = ui::parse_peer_addr)]
    to: Vec<Multiaddr>,
    /// Address to listen on while pushing, repeatable [default: TCP on all interfaces, a
    /// random port]. The seed node only answers; nothing needs to reach this machine.
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// Machine-readable output: one JSON object per seed node on stdout.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &Args, data_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let link = Link::parse(&args.link).context("the link is malformed")?;
    let data_dir = ui::data_dir(data_dir)?;
    let keypair = identity::load_or_create(&data_dir)?;
    let store = Arc::new(Store::open(&data_dir));
    store.load_saved();
    let Some(source) = store.get(&link.id).filter(|s| s.held().is_none()) else {
        return Err(exit::coded(
            exit::LOCAL,
            format!(
                "this machine does not hold blob {}: push from the machine that shared it, or share the file here first with `shoal share FILE` (same file, same link only with --convergent)",
                link.id
            ),
        ));
    };
    let rt = ui::runtime()?;
    rt.block_on(async {
        let stop = CancellationToken::new();
        let listen = if args.listen.is_empty() {
            vec!["/ip4/0.0.0.0/tcp/0".parse()?]
        } else {
            args.listen.clone()
        };
        let config = Config::default().with_listen(listen).with_dht(false);
        let node = Node::start(config, keypair, store.clone(), stop.clone())?;
        let mut failed = None;
        for to in &args.to {
            let result = tokio::select! {
                r = push_one(&node, to, source.clone(), args.json) => r,
                _ = tokio::signal::ctrl_c() => {
                    stop.cancel();
                    return Ok(ExitCode::from(130));
                }
            };
            if let Err(e) = result {
                if args.json {
                    let v = serde_json::json!({"to": to.to_string(), "status": "failed", "error": e.to_string()});
                    ui::print_line(&v.to_string())?;
                } else {
                    eprintln!("push to {to} failed: {e:#}");
                }
                failed.get_or_insert(e);
            }
        }
        stop.cancel();
        match failed {
            None => anyhow::Ok(ExitCode::SUCCESS),
            Some(e) if args.to.len() == 1 => Err(e),
            Some(_) => Ok(ExitCode::from(exit::NETWORK)),
        }
    })
}

async fn push_one(
    node: &Node,
    to: &Multiaddr,
    source: Arc<shoal_node::Source>,
    json: bool,
) -> anyhow::Result<()> {
    let peer = node
        .dial(to.clone(), Duration::from_secs(15))
        .await
        .map_err(|e| {
            exit::coded(
                exit::NETWORK,
                format!("cannot reach the seed node at {to}: {e}"),
            )
        })?;
    let bar = ui::bytes_bar(source.blob_len(), "push", json);
    let result = push(node, peer, source, |sent, total| {
        bar.set_length(total);
        bar.set_position(sent);
    })
    .await;
    bar.finish_and_clear();
    let report = result.map_err(|e| {
        let code = match &e {
            PushError::Failed(shoal_protocol::push::Failure::Corrupt { .. }) => exit::INTEGRITY,
            PushError::Refused(Refusal::Quota { .. } | Refusal::NotAllowed, _) => exit::REFUSED,
            _ => exit::NETWORK,
        };
        exit::coded(code, e.to_string())
    })?;
    if json {
        let v = serde_json::json!({
            "to": to.to_string(),
            "status": "stored",
            "blocks_sent": report.blocks_sent,
            "blocks_total": report.blocks_total,
            "bytes_sent": report.bytes_sent,
        });
        ui::print_line(&v.to_string())?;
    } else if report.blocks_sent == 0 {
        eprintln!("{to} already stores this blob");
    } else if report.blocks_sent < report.blocks_total {
        eprintln!(
            "stored on {to} (resumed: sent {} of {} blocks, {})",
            report.blocks_sent,
            report.blocks_total,
            ui::size(report.bytes_sent)
        );
    } else {
        eprintln!("stored on {to} ({})", ui::size(report.bytes_sent));
    }
    Ok(())
}
