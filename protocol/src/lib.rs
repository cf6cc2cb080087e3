//! Shoal's protocol core: the encrypted content format, blob ids and verified streaming,
//! share links and wire messages. Pure: bytes in, bytes out — no IO, no clocks, no OS
//! randomness, no async runtime.
//!
//! - [`format`](mod@format): keys, the sealed header record, segment seal/open, blob layout.
//! - [`blob`]: [`BlobId`], the outboard, and the sans-IO range encoder/decoder.
//! - [`have`]: have-maps ([`have::BlockSet`]) and `/shoal/have/1`, which tells peers which
//!   blocks a peer holds as it verifies them.
//! - [`link`]: share links `shoal:<id>?<hints>#<key>`.
//! - [`wire`]: `/shoal/blob/1` request and response headers.
//! - [`schedule`]: the sans-IO download scheduler (which blocks to ask which peer for), driven
//!   by the node and, later, by the simulator.
//! - [`slots`]: the sans-IO upload-slot rule (how many requests a node serves at once, and
//!   how many of one peer).
//! - [`superseed`]: the sans-IO super-seeding core of frugal seed nodes (which blocks to show
//!   which peer, and which requests to serve).
//! - [`tracker`]: `/shoal/tracker/1` announce and scrape messages (docs/tracker.md).
//!
//! The normative specification is `docs/protocol.md`; `docs/test-vectors/` holds byte-exact
//! vectors that this crate's tests check in both directions.
//!
//! # Example
//!
//! ```
//! use shoal_protocol::{format::{ContentKey, Metadata, Sealer, Opener}, blob::{BlobId, BlockIndex}};
//!
//! let key = ContentKey::random_from([42; 32]); // use OS randomness in real code
//! let file = b"hello, swarm";
//! let meta = Metadata { name: "hello.txt".into(), file_len: file.len() as u64, media_type: "text/plain".into() };
//! let sealer = Sealer::new(&key, 0, meta).unwrap();
//! let mut segment = Vec::new();
//! sealer.seal_segment(0, file, &mut segment); // a one-segment blob
//! let id = BlobId::of(&segment);
//!
//! let (opener, body) = Opener::new(&key, segment.len() as u64, &mut segment).unwrap();
//! assert_eq!(&segment[body], file);
//! assert_eq!(opener.header().metadata.name, "hello.txt");
//! # let _ = id;
//! ```
#![deny(missing_docs)]

mod base32;
pub mod blob;
pub mod format;
pub mod have;
pub mod link;
pub mod push;
pub mod schedule;
pub mod slots;
pub mod superseed;
pub mod tracker;
pub mod wire;

pub use blob::{BlobId, BlockIndex};
pub use format::ContentKey;
pub use link::Link;

#[cfg(test)]
mod build_tests {
    /// The crypto is instantiated in this crate, so it must be built optimised even in
    /// test builds (workspace Cargo.toml, `[profile.dev.package.shoal-protocol]`).
    #[test]
    fn protocol_is_built_optimised() {
        assert_eq!(env!("SHOAL_PROTOCOL_OPT_LEVEL"), "3");
    }
}
