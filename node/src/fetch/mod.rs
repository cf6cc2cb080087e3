//! Downloading a blob from peers: verified, decrypted as it arrives, resumable, crash-safe.
//!
//! [`fetch`] runs one download through its jobs, each in its own module (calls go down the
//! list, never back up):
//! - `peers`: where peers come from (link hints, trackers, the DHT, peers that subscribe
//!   to us), and what each source gave when nobody could help;
//! - `part`: the part file and its resume state in the output directory: open and lock,
//!   load, record the bootstrap, publish under the final name, clean up;
//! - `bootstrap`: the blob's authenticated size and first block, which proves the key;
//! - `serving`: what the download serves to others while it runs, and seeding once done;
//! - `download`: the loop between the scheduler, block requests and have-maps;
//! - `writer`: decrypting, writing and checkpointing verified blocks;
//! - `crate::wire` (shared with the rest of the node): the requests and their replies.
//!
//! Files in the output directory while a download runs: `.shoal-<blob id>.part` (the
//! plaintext being assembled), `.state` (the blocks verified and durably written, and the
//! decrypted header record; never the key) and `.obao` (the parent pairs verified so far);
//! see `part` and, for the order of writes and what a crash costs, `writer`. The part
//! file is renamed to its final name only when every block is in.

mod bootstrap;
mod download;
mod error;
mod options;
mod part;
mod peers;
mod serving;
mod writer;

use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use shoal_protocol::{Link, blob::block_count};
use tokio::sync::watch;
use tracing::info;

use self::{
    bootstrap::Opened,
    part::PartFiles,
    peers::{Outcomes, Patience, Sources},
    serving::Serving,
};
pub use self::{
    error::FetchError,
    options::{DEFAULT_PATIENCE, FetchOptions, Fetched, Output, Progress, SourceCount},
    peers::{REDIAL_FIRST, REDIAL_MAX, TRACKER_GRACE},
    writer::{CHECKPOINT_BLOCKS, CHECKPOINT_INTERVAL},
};
use crate::{
    announce::{Outcome, Status},
    node::Node,
};

/// How long a fetch that completed waits for a tracker that has not answered its first
/// announce yet, before it publishes the file: long enough for a live tracker's "taken
/// down", short enough not to hold up a download because of a dead one.
pub const TRACKER_VERDICT_WAIT: Duration = Duration::from_secs(2);

/// Fetches the blob of `link` into `opts.output`, publishing progress on `progress`.
/// Cancel-safe in the sense that matters: dropping the future loses no verified block that
/// reached a checkpoint, and never leaves a partial file under the final name.
///
/// A tracker that answers "taken down" stops the fetch at once with
/// [`FetchError::TakenDown`] (see there why). The answer comes to the first announce, or to
/// a re-announce if the takedown happens during the download; a fetch that completes before
/// some tracker has answered at all waits up to [`TRACKER_VERDICT_WAIT`] for that answer
/// before it publishes the file.
///
/// # Errors
/// See [`FetchError`]; every variant says what to do next.
pub async fn fetch(
    node: &Node,
    link: &Link,
    opts: FetchOptions,
    progress: watch::Sender<Progress>,
) -> Result<Fetched, FetchError> {
    let id = link.id;
    let (announcing, mut announcing_rx) = tokio::sync::oneshot::channel();
    let inner = fetch_inner(node, link, opts, progress, announcing);
    tokio::pin!(inner);
    let mut outcomes: Option<Outcomes> = None;
    let mut waiting = true; // for the announcer's outcomes, or for changes to them
    let result = loop {
        tokio::select! {
            // A takedown wins over whatever the fetch does in the same instant.
            biased;
            got = &mut announcing_rx, if waiting && outcomes.is_none() => {
                outcomes = got.ok();
                waiting = outcomes.is_some();
            }
            alive = async {
                match outcomes.as_mut() {
                    Some(o) => o.changed().await.is_ok(),
                    None => false,
                }
            }, if waiting && outcomes.is_some() => waiting = alive,
            r = &mut inner => break r,
        }
        if let Some(tracker) = taken_down_at(outcomes.as_ref()) {
            // Dropping the fetch aborts its requests; verified blocks stay on disk.
            info!(blob = %id, %tracker, "taken down at a tracker; fetch stopped");
            return Err(FetchError::TakenDown { id, tracker });
        }
    };
    match (result, taken_down_at(outcomes.as_ref())) {
        // Failing for lack of peers because the tracker stopped listing them: say why.
        (Err(_), Some(tracker)) => Err(FetchError::TakenDown { id, tracker }),
        (r, _) => r,
    }
}

/// The first tracker in `outcomes` that answered "taken down".
fn taken_down_at(outcomes: Option<&Outcomes>) -> Option<Multiaddr> {
    outcomes?
        .borrow()
        .iter()
        .find(|(_, o)| *o == Outcome::TakenDown)
        .map(|(t, _)| t.clone())
}

/// [`fetch`] without the takedown watch: sends the announcer's outcomes on `announcing`
/// once it announces to trackers (dropped unused without trackers).
async fn fetch_inner(
    node: &Node,
    link: &Link,
    opts: FetchOptions,
    progress: watch::Sender<Progress>,
    announcing: tokio::sync::oneshot::Sender<Outcomes>,
) -> Result<Fetched, FetchError> {
    let started = Instant::now();
    let id = link.id;
    let mut files = PartFiles::open(&opts.output, id, opts.overwrite)?;
    let mut sources = Sources::start(node, link, &opts)?;
    if let Some(outcomes) = sources.outcomes() {
        let _ = announcing.send(outcomes);
    }
    let mut patience = Patience::new(opts.patience);
    let mut peers = sources.first(&mut patience, &progress).await?;
    progress.send_modify(|p| p.peers = peers.len());

    let mut banned: Vec<(libp2p::PeerId, String)> = Vec::new();
    let mut why: Vec<String> = Vec::new();
    let Opened {
        mut state,
        resumed,
        opener,
        body0,
        last,
        parents,
    } = bootstrap::open(
        node,
        link,
        &files,
        &mut peers,
        &mut sources,
        &mut patience,
        &progress,
        &mut banned,
        &mut why,
    )
    .await?;
    let blob_len = state.blob_len;
    let total = block_count(blob_len);
    let metadata = opener.header().metadata.clone();
    let final_path = files.final_path(&metadata, id, opts.overwrite)?;
    files.check_space(metadata.file_len, resumed, total)?;
    progress.send_modify(|p| {
        p.name = Some(metadata.name.clone());
        p.file_len = Some(metadata.file_len);
        p.total_blocks = total;
        p.resumed_blocks = resumed;
        p.done_blocks = resumed;
    });
    let (obao, outboard) = files.record_boot(&mut state, &opener, &parents, body0, last)?;
    progress.send_modify(|p| p.done_blocks = state.count());

    // Serve what we hold while downloading: blocks on disk whose pairs are known.
    let flags = opener.header().flags;
    let serving = Serving::start(node, link, &files, flags, &metadata, outboard, &state)?;
    let had: Vec<u32> = (0..total)
        .filter(|&i| state.has(i))
        .map(|i| u32::try_from(i).expect("MAX_FILE_LEN keeps indices in u32"))
        .collect();
    // Every block this run fetched, the first and last ones of the bootstrap included.
    let fetched_blocks = total - resumed;
    let total32 = u32::try_from(total).expect("MAX_FILE_LEN keeps indices in u32");
    if let Some(a) = &sources.announcer {
        a.set(Status::leecher(
            u32::try_from(had.len()).unwrap_or(0),
            total32,
        ));
    }
    let (writer_tx, writer) = writer::spawn(opener, &files, obao, &serving, state, &progress)?;
    let ended = download::run(
        node,
        id,
        blob_len,
        &opts,
        &peers,
        &mut sources,
        had,
        writer_tx,
        &progress,
    )
    .await;
    let state = writer.await.map_err(|e| FetchError::Disk {
        path: files.part_path.clone(),
        source: std::io::Error::other(e),
    })??;
    banned.extend(ended.banned);
    why.extend(ended.gave_up);
    let mut counts: Vec<SourceCount> = ended.sources.into_values().collect();
    counts.sort_by_key(|c| std::cmp::Reverse(c.blocks));
    let done = state.count();
    if done < total {
        why.extend(
            banned
                .iter()
                .map(|(p, w)| format!("{p}: sent bad data ({w})")),
        );
        why.extend(sources.describe(&patience.describe()));
        return Err(FetchError::Exhausted { done, total, why });
    }
    // Complete: every block verified, decrypted and synced. A tracker that has not answered
    // yet may still say "taken down" (the caller then drops this future): give it a moment.
    if let Some(mut outcomes) = sources.outcomes() {
        let _ = tokio::time::timeout(
            TRACKER_VERDICT_WAIT,
            outcomes.wait_for(|o| o.iter().all(|(_, x)| *x != Outcome::Pending)),
        )
        .await;
    }
    files.publish(&final_path, metadata.file_len, opts.overwrite)?;
    info!(blob = %id, blocks = total, "fetch complete");
    if let Some(a) = &sources.announcer {
        a.set(Status::seeder(total32));
    }
    // Keep serving the whole file while the node runs.
    serving::seed_complete(
        node,
        link,
        &final_path,
        flags,
        &metadata,
        &serving,
        opts.provide,
    );
    Ok(Fetched {
        path: final_path,
        metadata,
        fetched_blocks,
        resumed_blocks: resumed,
        elapsed: started.elapsed(),
        banned,
        sources: counts,
        announcer: sources.announcer.take(),
    })
}
