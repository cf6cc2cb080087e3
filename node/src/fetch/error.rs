//! Why a fetch failed: [`FetchError`], each variant saying what to do next.

use std::{io, path::PathBuf};

use libp2p::Multiaddr;
use shoal_protocol::{BlobId, BlockIndex, format::OpenBlobError};

/// Why a fetch failed. Blocks verified before the failure are kept for the next run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The link names no peer or tracker, none was given, and the DHT cannot be asked (it
    /// is off, or no DHT peer is known).
    #[error(
        "the link names no peer or tracker to fetch from{}",
        if *.dht_off {
            " and the DHT is off; pass a peer with --peer ADDR or a tracker with --tracker ADDR, or turn the DHT back on (drop --no-dht)"
        } else {
            " and no DHT bootstrap peer is configured; pass a peer with --peer ADDR, a tracker with --tracker ADDR, or a DHT bootstrap peer with --bootstrap ADDR"
        }
    )]
    NoPeersGiven {
        /// The DHT is turned off (`Config::dht`), rather than without peers.
        dht_off: bool,
    },
    /// No peer could be reached: not the link's or given peers, none listed by a tracker,
    /// none found in the DHT.
    #[error(
        "no peer could be reached; tried:\n{}\ncheck that someone is seeding it, or pass a peer that has the file with --peer ADDR or a tracker with --tracker ADDR{}",
        list(.tried),
        if *.dht_off { "" } else { " or a DHT bootstrap peer with --bootstrap ADDR" }
    )]
    Unreachable {
        /// Each source (peer address, tracker, the DHT) and what it gave.
        tried: Vec<String>,
        /// The DHT is turned off.
        dht_off: bool,
    },
    /// Peers were reached but none could deliver the missing blocks.
    #[error("no reachable peer could deliver the blob ({done} of {total} blocks done; run again to resume); peers:\n{}", list(.why))]
    Exhausted {
        /// Blocks done.
        done: u64,
        /// Blocks in the blob.
        total: u64,
        /// Each peer and why it was given up.
        why: Vec<String>,
    },
    /// The link's size hint (`sz`) is not the blob's: a peer proved the blob's real size
    /// against the blob id. The link was damaged (or edited); nothing was downloaded.
    #[error(
        "the link's size ({link} bytes) does not match the blob's ({blob}): the link is damaged; ask for it again"
    )]
    LinkSizeMismatch {
        /// The size the link names.
        link: u64,
        /// The blob's size, as proven against the blob id.
        blob: u64,
    },
    /// The key in the link does not open the blob.
    #[error("the key in the link does not open blob {id}: the link is wrong or was altered")]
    WrongKey {
        /// The blob.
        id: BlobId,
    },
    /// The blob verified against its id but is not a valid Shoal blob under this key.
    #[error("blob {id} is not a valid Shoal blob for this link")]
    BadBlob {
        /// The blob.
        id: BlobId,
        /// Cause.
        #[source]
        source: OpenBlobError,
    },
    /// A verified segment failed to decrypt: the publisher produced a broken blob.
    #[error(
        "segment {block} of blob {id} does not decrypt although it matches the blob id; the publisher's blob is broken"
    )]
    Undecryptable {
        /// The blob.
        id: BlobId,
        /// The segment.
        block: BlockIndex,
    },
    /// A tracker this fetch announces to (one named in the link, or given) answered that its
    /// operator took the blob down. The fetch stops, even if some peer would still serve the
    /// blob: the link's publisher chose that tracker to coordinate the file, and "taken
    /// down" means the file is no longer distributed there. Blocks verified so far stay in
    /// the output directory's `.shoal-<blob id>.*` files; delete them if unwanted.
    #[error(
        "this file was taken down: the operator of tracker {tracker} took blob {id} down, and the tracker no longer coordinates its download; nothing more is fetched"
    )]
    TakenDown {
        /// The blob.
        id: BlobId,
        /// The tracker that said so.
        tracker: Multiaddr,
    },
    /// The output directory does not exist (checked before anything is fetched).
    #[error("directory {0} does not exist; create it first or choose another -o path")]
    NoSuchDir(PathBuf),
    /// The output directory's filesystem has too little free space for what is left to
    /// fetch (checked before the body is fetched).
    #[error(
        "not enough free space in {dir}: the download needs {needed} more bytes and {available} are free; free some space or choose another -o path"
    )]
    NoSpace {
        /// The output directory.
        dir: PathBuf,
        /// Bytes still to write (file and resume data).
        needed: u64,
        /// Bytes free there.
        available: u64,
    },
    /// Another fetch of the same blob into the same directory is running.
    #[error("another download of this blob is already writing {0}; wait for it or stop it")]
    InUse(PathBuf),
    /// The output file exists.
    #[error("{0} already exists; choose another -o path or pass --force to replace it")]
    OutputExists(PathBuf),
    /// Writing locally failed (disk full, permissions). Verified blocks are kept.
    #[error("cannot write {path}; fix the cause (e.g. free disk space) and run again to resume")]
    Disk {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

fn list(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("  - {s}"))
        .collect::<Vec<_>>()
        .join("\n")
}
