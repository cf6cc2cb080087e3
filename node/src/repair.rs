//! Self-repair of stored ciphertext (seed nodes): when blocks of a stored blob fail their
//! check against the blob id (bit rot, a damaged disk), the serving path stops serving them
//! and marks them bad ([`Source::mark_bad`]); [`guard`] notices, reports the blob as
//! quarantined (its owner stops announcing it), and fetches each bad block back from the
//! peers that recently asked for blocks of the blob — downloaders, who serve what they
//! hold — verifying it against the blob id like any download (no key is needed: the bytes
//! are ciphertext). Repaired blocks are written in place and served again; a blob that
//! cannot be repaired within [`REPAIR_FOR`] is given up (its owner drops it).

use std::{
    fs::OpenOptions,
    path::PathBuf,
    sync::Weak,
    time::{Duration, Instant},
};

use shoal_protocol::{BlockIndex, wire::BlobRequest};
use tracing::{debug, info, warn};

use crate::{
    node::Node,
    store::{Source, write_all_at},
};

/// How long a blob with bad blocks is tried to be repaired before it is given up.
pub const REPAIR_FOR: Duration = Duration::from_secs(10 * 60);
/// First wait between two repair rounds (when no requester had the blocks); doubles up to
/// [`REPAIR_EVERY_MAX`].
const REPAIR_EVERY_FIRST: Duration = Duration::from_millis(500);
const REPAIR_EVERY_MAX: Duration = Duration::from_secs(30);

/// What happened to a guarded blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Blocks failed their check: the blob is not to be announced until repaired.
    Quarantined,
    /// Every bad block was fetched back and verified: announce it again.
    Repaired,
    /// Not repaired within [`REPAIR_FOR`]: drop the blob.
    GaveUp,
}

/// Watches `source` (ciphertext stored at `path`) until it is dropped or given up,
/// repairing bad blocks as they appear and telling `on` about each [`Event`].
pub async fn guard(node: Node, source: Weak<Source>, path: PathBuf, mut on: impl FnMut(Event)) {
    let Some(mut corruption) = source.upgrade().map(|s| s.corruption()) else {
        return;
    };
    loop {
        if corruption.wait_for(|&n| n > 0).await.is_err() {
            return; // the source is gone (taken down, dropped)
        }
        let Some(source) = source.upgrade() else {
            return;
        };
        on(Event::Quarantined);
        if repair(&node, &source, &path).await {
            info!(blob = %source.id(), path = %path.display(), "stored blob repaired from peers");
            on(Event::Repaired);
        } else {
            warn!(
                blob = %source.id(),
                path = %path.display(),
                bad_blocks = ?source.bad_blocks(),
                "stored blob could not be repaired from peers; dropping it"
            );
            on(Event::GaveUp);
            return;
        }
    }
}

/// Fetches the bad blocks back until none is left (`true`) or [`REPAIR_FOR`] has passed.
async fn repair(node: &Node, source: &Source, path: &PathBuf) -> bool {
    let started = Instant::now();
    let client = node.client();
    let mut pause = REPAIR_EVERY_FIRST;
    loop {
        let bad = source.bad_blocks();
        if bad.is_empty() {
            return true;
        }
        for block in bad {
            for peer in source.requesters() {
                let req = BlobRequest::new(source.id(), [block]).expect("one range");
                let mut data = None;
                let got = client
                    .request(peer, &req, source.blob_len(), |v| {
                        data = Some(v.data);
                        async { Ok(()) }
                    })
                    .await;
                let Some(data) = data.filter(|_| got.is_ok()) else {
                    debug!(blob = %source.id(), block, %peer, "repair: peer did not deliver");
                    continue;
                };
                // Verified against the blob id by the request; written where it belongs.
                let written = OpenOptions::new().write(true).open(path).and_then(|f| {
                    write_all_at(&f, &data, BlockIndex(block).offset())?;
                    f.sync_data()
                });
                match written {
                    Ok(()) => {
                        debug!(blob = %source.id(), block, %peer, "repair: block fetched back");
                        source.mark_repaired(block);
                        break;
                    }
                    Err(e) => {
                        warn!(blob = %source.id(), block, error = %e, "repair: cannot write the block");
                        return false;
                    }
                }
            }
        }
        if source.bad_blocks().is_empty() {
            return true;
        }
        if started.elapsed() + pause > REPAIR_FOR {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(REPAIR_EVERY_MAX);
    }
}
