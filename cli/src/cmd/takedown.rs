//! `shoal takedown BLOB_ID --reason TEXT --tracker ADDR`: take a blob down at trackers
//! this machine's identity operates; `--list` prints a tracker's public takedown list.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context;
use libp2p::Multiaddr;
use shoal_node::{CancellationToken, Config, Node, Store, identity, takedown};
use shoal_protocol::BlobId;

use crate::{exit, ui};

/// Pages `--list` reads from one tracker (512 entries each). The tracker's rate limit (a
/// burst of 10 list or scrape requests, then one per second) drops requests beyond it.
const MAX_LIST_PAGES: usize = 10;

const AFTER_HELP: &str = "\
The tracker accepts takedowns only from operators: peer ids it was started with
(`shoal tracker --operator PEER_ID`). This command speaks as the node identity in the data
directory (DATA_DIR/identity.key); if the tracker refuses, the error names that peer id.
After a takedown the tracker refuses to coordinate the blob (`shoal get` of a link naming
it stops with exit code 7), scrapes count zero, and seed nodes following its list delete
the blob. The reason stays in the tracker's audit trail (GET /takedowns on its HTTP
address); the public list has blob ids only.

A share link may be given instead of the blob id: only its blob id is used; the key is
neither printed nor sent.

Examples:
  shoal takedown 3vq…xa --reason 'abuse report #17' --tracker /ip4/203.0.113.9/udp/7000/quic-v1/p2p/12D3KooW…
  shoal takedown 'shoal:3vq…xa?tr=…#…' --reason 'court order' --tracker ADDR --tracker ADDR2
  shoal takedown --list --tracker ADDR          the tracker's public takedown list: SEQ BLOB_ID";

/// Take a blob down at a tracker, or list a tracker's takedowns.
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub(crate) struct Args {
    /// The blob id to take down, or a share link naming it (quote it).
    #[arg(
        value_name = "BLOB_ID|LINK",
        required_unless_present = "list",
        conflicts_with = "list"
    )]
    blob: Option<String>,
    /// Why: kept in the tracker's audit trail (1 to 256 bytes, one line).
    #[arg(long, required_unless_present = "list", conflicts_with = "list")]
    reason: Option<String>,
    /// The tracker (multiaddr ending in /p2p/PEER_ID, as `shoal tracker` prints it);
    /// repeatable.
    #[arg(long, value_name = "MULTIADDR", required = true, value_parser = ui::parse_peer_addr)]
    tracker: Vec<Multiaddr>,
    /// Print the trackers' public takedown lists instead (anyone may ask).
    #[arg(long)]
    list: bool,
    /// With --list: only takedowns after this sequence number.
    #[arg(long, value_name = "SEQ", requires = "list", default_value_t = 0)]
    since: u64,
    /// Machine-readable output: one JSON object per line on stdout.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &Args, data_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let target = args.blob.as_deref().map(parse_blob).transpose()?;
    let rt = ui::runtime()?;
    if args.list {
        // Public: any identity will do, and none is created for it.
        let keypair = libp2p::identity::Keypair::generate_ed25519();
        return rt.block_on(async {
            let (node, stop) = client(keypair)?;
            let result = print_lists(&node, args).await;
            stop.cancel();
            result
        });
    }
    let (Some(blob), Some(reason)) = (target, args.reason.as_deref()) else {
        // clap requires both without --list.
        return Err(exit::coded(
            exit::USAGE,
            "give BLOB_ID and --reason, or --list",
        ));
    };
    let data_dir = ui::data_dir(data_dir)?;
    let keypair = identity::load_or_create(&data_dir)?;
    rt.block_on(async {
        let (node, stop) = client(keypair)?;
        let operator = node.peer_id().to_string();
        let result = async {
            for tracker in &args.tracker {
                let seq = takedown::submit(&node, tracker, blob, reason).await?;
                if args.json {
                    let v = serde_json::json!({
                        "blob_id": blob.to_string(),
                        "tracker": tracker.to_string(),
                        "seq": seq,
                        "operator": operator,
                    });
                    ui::print_line(&v.to_string())?;
                } else {
                    ui::print_line(&format!(
                        "taken down {blob} at {tracker} (seq {seq}, as operator {operator})"
                    ))?;
                }
            }
            anyhow::Ok(ExitCode::SUCCESS)
        }
        .await;
        stop.cancel();
        result
    })
}

/// A node that only dials out: no listen address, no DHT.
fn client(keypair: libp2p::identity::Keypair) -> anyhow::Result<(Node, CancellationToken)> {
    let stop = CancellationToken::new();
    let config = Config::default().with_listen(Vec::new()).with_dht(false);
    let node = Node::start(config, keypair, Arc::new(Store::in_memory()), stop.clone())?;
    Ok((node, stop))
}

async fn print_lists(node: &Node, args: &Args) -> anyhow::Result<ExitCode> {
    for tracker in &args.tracker {
        let mut since = args.since;
        for page in 0.. {
            let (entries, more) = takedown::list(node, tracker, since).await?;
            for (seq, blob) in &entries {
                if args.json {
                    let v = serde_json::json!({
                        "tracker": tracker.to_string(),
                        "seq": seq,
                        "blob_id": blob.to_string(),
                    });
                    ui::print_line(&v.to_string())?;
                } else {
                    ui::print_line(&format!("{seq} {blob}"))?;
                }
            }
            since = entries.last().map_or(since, |e| e.0);
            if !more {
                break;
            }
            if page + 1 == MAX_LIST_PAGES {
                eprintln!(
                    "{tracker} has more takedowns; continue with --since {since} in a few seconds"
                );
                break;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A blob id, or the blob id of a share link. Only the part before `?` and `#` is read, so
/// the key is never parsed, printed or kept.
fn parse_blob(s: &str) -> anyhow::Result<BlobId> {
    let s = s.trim();
    let id = match s.strip_prefix("shoal:") {
        Some(rest) => rest.split(['?', '#']).next().unwrap_or_default(),
        None => s,
    };
    id.parse()
        .context("expected a blob id (52 base32 characters) or a share link")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_ids_come_from_ids_or_links_without_touching_the_key() {
        let id = BlobId::from_bytes([7; 32]);
        assert_eq!(parse_blob(&id.to_string()).unwrap(), id);
        // The key part is not even valid base32: it is never parsed.
        let link = format!("shoal:{id}?sz=10&tr=/ip4/1.2.3.4/tcp/1#NOT-A-KEY");
        assert_eq!(parse_blob(&link).unwrap(), id);
        assert_eq!(parse_blob(&format!("shoal:{id}#k")).unwrap(), id);
        let e = parse_blob("shoal:nope#secretkey").unwrap_err();
        assert!(!format!("{e:#}").contains("secretkey"), "{e:#}");
        assert!(parse_blob("").is_err());
    }
}
