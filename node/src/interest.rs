//! Peers coming and going, told to the downloads that care: someone who subscribes to our
//! have-map of a blob we are downloading is downloading it too, and is worth asking for
//! blocks (the have-map server, [`crate::serve`], reports them for that blob); someone who
//! connects to us may have been told by a tracker that we want a blob it seeds, and a peer
//! whose last connection closed is gone until it is dialled again (the node reports both
//! to every download). The download of a blob ([`crate::fetch`]) receives them.

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

/// How a peer contacted us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Contact {
    /// It subscribed to our have-map of the download's blob: it is downloading it too.
    Subscribed(PeerId),
    /// It connected to us; it may or may not have anything to do with the blob.
    Connected(PeerId),
    /// Our last connection to it closed.
    Disconnected(PeerId),
}

/// The downloads in progress that want to hear of peers that contact us, by blob.
#[derive(Debug, Default)]
pub(crate) struct Interests {
    by_blob: Mutex<HashMap<BlobId, mpsc::Sender<Contact>>>,
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
            let _ = tx.try_send(Contact::Subscribed(peer));
        }
    }

    /// Tells every download `contact` (a peer that connected to us, or whose last
    /// connection closed); dropped where a queue is full.
    pub(crate) fn notify_all(&self, contact: Contact) {
        let Ok(map) = self.by_blob.lock() else {
            return;
        };
        for tx in map.values() {
            let _ = tx.try_send(contact);
        }
    }
}

/// A download's registration for peers interested in its blob; unregisters when dropped.
#[derive(Debug)]
pub(crate) struct Interest {
    registry: Arc<Interests>,
    id: BlobId,
    pub(crate) peers: mpsc::Receiver<Contact>,
}

impl Drop for Interest {
    fn drop(&mut self) {
        if let Ok(mut map) = self.registry.by_blob.lock() {
            map.remove(&self.id);
        }
    }
}
