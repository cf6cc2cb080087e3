//! Peers interested in a blob: someone who subscribes to our have-map of a blob we are
//! downloading is downloading it too, and is worth asking for blocks. The have-map server
//! ([`crate::serve`]) reports such peers here; the download of that blob ([`crate::fetch`])
//! receives them.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use libp2p::PeerId;
use shoal_protocol::BlobId;
use tokio::sync::mpsc;

/// Peers queued for a fetch that has not picked them up yet (more are dropped: the fetch
/// also learns them from trackers).
const INTEREST_QUEUE: usize = 64;

/// The downloads in progress that want to hear of interested peers, by blob.
#[derive(Debug, Default)]
pub(crate) struct Interests {
    by_blob: Mutex<HashMap<BlobId, mpsc::Sender<PeerId>>>,
}

impl Interests {
    /// Registers a download of `id`: peers that subscribe to our have-map of it are sent on
    /// the returned receiver. One registration per blob (a later one replaces it).
    pub(crate) fn register(self: &Arc<Self>, id: BlobId) -> Interest {
        let (tx, peers) = mpsc::channel(INTEREST_QUEUE);
        self.by_blob
            .lock()
            .expect("interest lock poisoned")
            .insert(id, tx);
        Interest {
            registry: self.clone(),
            id,
            peers,
        }
    }

    /// `peer` subscribed to our have-map of `id`: tell the download of `id`, if one runs
    /// (dropped if its queue is full).
    pub(crate) fn notify(&self, id: BlobId, peer: PeerId) {
        let tx = self.by_blob.lock().ok().and_then(|m| m.get(&id).cloned());
        if let Some(tx) = tx {
            let _ = tx.try_send(peer);
        }
    }
}

/// A download's registration for peers interested in its blob; unregisters when dropped.
#[derive(Debug)]
pub(crate) struct Interest {
    registry: Arc<Interests>,
    id: BlobId,
    pub(crate) peers: mpsc::Receiver<PeerId>,
}

impl Drop for Interest {
    fn drop(&mut self) {
        if let Ok(mut map) = self.registry.by_blob.lock() {
            map.remove(&self.id);
        }
    }
}
