//! What a fetch is asked to do ([`FetchOptions`], [`Output`]), what it reports while it runs
//! ([`Progress`]) and what it did ([`Fetched`]).

use std::{path::PathBuf, time::Duration};

use libp2p::{Multiaddr, PeerId};
use shoal_protocol::format::Metadata;

use crate::announce::Announcer;

/// Where the file goes.
#[derive(Clone, Debug)]
pub enum Output {
    /// Exactly this path.
    File(PathBuf),
    /// This directory, under the name in the blob's header.
    Dir(PathBuf),
}

/// How to fetch.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Where the file goes.
    pub output: Output,
    /// Peers to try besides the link's `peer` hints.
    pub peers: Vec<Multiaddr>,
    /// Parallel requests per peer. Default 4.
    pub requests_per_peer: usize,
    /// Blocks (64 KiB) per request. Default 64 (4 MiB).
    pub blocks_per_request: u32,
    /// Replace an existing output file.
    pub overwrite: bool,
    /// Fetch blocks in order (streaming playback) instead of rarest first.
    pub sequential: bool,
    /// Download cap in bytes per second across all peers; `None` (or 0) = unlimited.
    pub down_limit: Option<u64>,
    /// Trackers to announce to besides the link's `tr` hints (multiaddrs ending in
    /// `/p2p/<peer id>`).
    pub trackers: Vec<Multiaddr>,
    /// Once the file is complete, provide it in the DHT ([`crate::Node::provide`]): the node seeds
    /// it while it runs. Default `true`; turn it off when the node stops right after the
    /// fetch (a provider record would then point at a peer that is gone).
    pub provide: bool,
    /// How long to wait while no peer can deliver (none is reachable yet, the ones
    /// connected lack the missing blocks, or they went away) before giving up; meanwhile
    /// the fetch re-dials every address it knows and asks its trackers and the DHT again.
    /// `None` waits forever. Default [`DEFAULT_PATIENCE`].
    pub patience: Option<Duration>,
}

/// How long a fetch waits for a peer that can deliver, by default: enough for a seeder to
/// restart or to come online a little after the downloader.
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(120);

impl FetchOptions {
    /// Defaults writing to `output`.
    pub const fn new(output: Output) -> Self {
        Self {
            output,
            peers: Vec::new(),
            requests_per_peer: 4,
            blocks_per_request: 64,
            overwrite: false,
            sequential: false,
            down_limit: None,
            trackers: Vec::new(),
            provide: true,
            patience: Some(DEFAULT_PATIENCE),
        }
    }
}

/// Progress of a fetch, published on a watch channel.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// File name from the header, once known.
    pub name: Option<String>,
    /// File length in bytes, once known.
    pub file_len: Option<u64>,
    /// Blocks in the blob, once known.
    pub total_blocks: u64,
    /// Blocks verified and written.
    pub done_blocks: u64,
    /// Blocks found already done when the fetch started (resume).
    pub resumed_blocks: u64,
    /// Peers connected.
    pub peers: usize,
    /// Since when no request has been in flight: the fetch is waiting for a peer that can
    /// deliver (it gives up after [`FetchOptions::patience`]). `None` while blocks flow.
    pub waiting_since: Option<std::time::Instant>,
}

/// Blocks one peer delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceCount {
    /// The peer.
    pub peer: PeerId,
    /// Verified blocks it sent.
    pub blocks: u64,
    /// Of those, the ones that came while every connection to it went through a relay.
    pub relayed_blocks: u64,
}

/// What a finished fetch did.
#[derive(Debug)]
pub struct Fetched {
    /// Final path of the file.
    pub path: PathBuf,
    /// The header metadata.
    pub metadata: Metadata,
    /// Blocks downloaded in this run.
    pub fetched_blocks: u64,
    /// Blocks reused from an interrupted run.
    pub resumed_blocks: u64,
    /// Wall time of this run.
    pub elapsed: Duration,
    /// Peers dropped for sending bad data, with the reason.
    pub banned: Vec<(PeerId, String)>,
    /// The peers blocks came from in the download loop (not the first and last blocks,
    /// which the bootstrap fetches), most blocks first.
    pub sources: Vec<SourceCount>,
    /// Still announcing this node to the link's trackers, now as a seeder: keep it while the
    /// node seeds the file; dropping it tells the trackers this node left.
    pub announcer: Option<Announcer>,
}
