//! `shoal inspect LINK`: what a link names, never its key.

use std::process::ExitCode;

use anyhow::Context;
use shoal_protocol::{Link, blob::block_count, format::Layout};

use crate::ui;

/// Show what a link names.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  shoal inspect 'shoal:…#…'          blob id, size and hints; never the key
  shoal inspect --json 'shoal:…#…'   the same as one JSON object")]
pub(crate) struct Args {
    /// The share link (quote it: it contains '#' and '&').
    link: String,
    /// Print JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let link = Link::parse(&args.link).context("the link is malformed")?;
    let file_len = link
        .blob_len
        .and_then(|l| Layout::for_blob(l).ok())
        .map(|l| l.file_len());
    if args.json {
        let v = serde_json::json!({
            "blob_id": link.id.to_string(),
            "blob_len": link.blob_len,
            "file_len": file_len,
            "blocks": link.blob_len.map(block_count),
            "peers": link.peers,
            "trackers": link.trackers,
            "other_hints": link.other,
            "has_key": true,
        });
        ui::print_line(&v.to_string())?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut lines = vec![format!("blob id:   {}", link.id)];
    match (link.blob_len, file_len) {
        (Some(b), Some(f)) => {
            lines.push(format!("file size: {} ({f} bytes)", ui::size(f)));
            lines.push(format!(
                "blob size: {b} bytes in {} blocks of 64 KiB",
                block_count(b)
            ));
        }
        _ => lines.push("size:      not in the link (learned and verified while fetching)".into()),
    }
    for p in &link.peers {
        lines.push(format!("peer:      {p}"));
    }
    for t in &link.trackers {
        lines.push(format!("tracker:   {t}"));
    }
    for (n, v) in &link.other {
        lines.push(format!(
            "hint:      {n}={v} (not understood by this version)"
        ));
    }
    lines.push("key:       present (not shown)".into());
    for l in lines {
        ui::print_line(&l)?;
    }
    Ok(ExitCode::SUCCESS)
}
