//! What a download serves to others: while it runs, every block it has verified and written
//! whose parent pairs are known (a [`Source::downloading`] in the node's store, whose
//! have-map grows as the writer adds blocks); once complete, the whole file, which the node
//! then seeds like a share (and provides in the DHT).

use std::{path::Path, sync::Arc};

use shoal_protocol::{
    BlobId, BlockIndex, Link,
    blob::{Outboard, PARENT_LEN},
    format::{HeaderError, Metadata, OpenBlobError},
    have::BlockSet,
};
use tracing::{debug, warn};

use super::{
    error::FetchError,
    part::{PartFiles, disk},
};
use crate::{
    node::Node,
    partial::State,
    store::{Held, Source, Store},
};

/// The blocks a download serves while it runs, registered in the node's store for as long
/// as this lives.
pub(super) struct Serving {
    /// The download-in-progress source (serves from the part file).
    pub(super) source: Arc<Source>,
    /// Its have-map: the writer adds each block it writes.
    pub(super) held: Arc<Held>,
    _guard: Option<ServingGuard>,
}

impl Serving {
    /// Serves, from the part file of `files` (through a handle of its own), what `state`
    /// holds and `outboard` can prove.
    ///
    /// # Errors
    /// [`FetchError::BadBlob`] if the header's metadata is invalid, [`FetchError::Disk`].
    pub(super) fn start(
        node: &Node,
        link: &Link,
        files: &PartFiles,
        flags: u16,
        metadata: &Metadata,
        outboard: Outboard,
        state: &State,
    ) -> Result<Self, FetchError> {
        let total32 = u32::try_from(shoal_protocol::blob::block_count(state.blob_len))
            .expect("MAX_FILE_LEN keeps indices in u32");
        let mut servable = BlockSet::new(total32);
        for i in 0..total32 {
            if state.has(u64::from(i)) && outboard.expected_block_hash(BlockIndex(i)).is_some() {
                servable.insert(i);
            }
        }
        let held = Arc::new(Held::new(servable));
        let source = Arc::new(
            Source::downloading(
                files.part.try_clone().map_err(disk(&files.part_path))?,
                files.part_path.clone(),
                &link.key,
                flags,
                metadata.clone(),
                outboard,
                held.clone(),
            )
            .map_err(|e| FetchError::BadBlob {
                id: link.id,
                source: OpenBlobError::Header(HeaderError::Metadata(e)),
            })?,
        );
        let guard = ServingGuard::register(node, &source);
        Ok(Self {
            source,
            held,
            _guard: guard,
        })
    }
}

/// Keeps a download-in-progress source in the node's store for the life of the fetch: it
/// is removed when the fetch ends without completing (a completed one is replaced by the
/// whole file).
struct ServingGuard {
    store: Arc<Store>,
    id: BlobId,
}

impl ServingGuard {
    fn register(node: &Node, source: &Arc<Source>) -> Option<Self> {
        let store = node.store().clone();
        // Already serving the whole blob (shared or seeded here): leave that in place.
        if store.get(&source.id()).is_some_and(|s| s.held().is_none()) {
            return None;
        }
        store.insert_arc(source.clone());
        Some(Self {
            store,
            id: source.id(),
        })
    }
}

impl Drop for ServingGuard {
    fn drop(&mut self) {
        if self.store.get(&self.id).is_some_and(|s| s.held().is_some()) {
            self.store.remove(&self.id);
        }
    }
}

/// Seeds the completed file at `path` while the node runs, in place of the part file it
/// served from, and provides it in the DHT if `provide`.
pub(super) fn seed_complete(
    node: &Node,
    link: &Link,
    path: &Path,
    flags: u16,
    metadata: &Metadata,
    serving: &Serving,
    provide: bool,
) {
    let id = link.id;
    // Every pair is known unless blocks were resumed from a run that lost its sparse
    // outboard; then only new downloads seed it.
    let outboard = serving.source.outboard().clone();
    // Every pair was verified when it arrived; a pair still all zeros was never received (a
    // hash of zeros is not a value BLAKE3 produces in practice). Served blocks are checked
    // against the outboard again anyway.
    if outboard
        .as_bytes()
        .chunks_exact(PARENT_LEN)
        .all(|p| p.iter().any(|&b| b != 0))
    {
        match node
            .store()
            .add_downloaded(path, &link.key, flags, metadata.clone(), outboard)
        {
            Ok(whole) => whole.add_uploaded(serving.source.uploaded()),
            Err(e) => warn!(blob = %id, error = %e, "cannot seed the downloaded file"),
        }
    }
    // Seeding the whole blob now: tell the DHT, in the background.
    if provide && node.config().dht && node.store().get(&id).is_some_and(|s| s.held().is_none()) {
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = node.provide(id).await {
                debug!(blob = %id, error = %e, "downloaded blob not provided in the DHT");
            }
        });
    }
}
