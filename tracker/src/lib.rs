//! The Shoal tracker's core: a bounded, clock-injected peer table (issue 3,
//! docs/tracker.md).
//!
//! Peers announce to a tracker which blob's swarm they are in (`/shoal/tracker/1`, messages in
//! [`shoal_protocol::tracker`]); the tracker answers with a random subset of the other peers
//! in that swarm and the interval after which to announce again. Scrapes return swarm sizes.
//! The tracker learns blob ids, peer ids, listen addresses and swarm sizes — never keys, file
//! names or plaintext.
//!
//! This crate is the pure part: [`table::PeerTable`] is a plain struct that takes `now` with
//! every call, draws randomness from a seed, and bounds its memory (per-swarm and total entry
//! caps, bounded addresses and answers). The libp2p request-response service and the HTTP
//! `/stats` and `/metrics` endpoints will be thin shells around it (STYLE.md §2, §3).
//!
//! - [`table`]: [`table::PeerTable`], its [`table::Config`], answers, refusals and stats.
//! - [`AddrList`]: how a peer's listen addresses are stored and handed out.
//!
//! # Example
//!
//! ```
//! use std::time::{Duration, Instant};
//! use shoal_protocol::{BlobId, tracker::{AnnounceRequest, Event, Role}};
//! use shoal_tracker::table::{Config, PeerTable};
//!
//! let start = Instant::now(); // the shell's clock; the table never reads one itself
//! let mut table = PeerTable::<u32>::new(Config::default().with_seed(7), start).unwrap();
//! let blob = BlobId::from_bytes([1; 32]);
//! let announce = |role, held| AnnounceRequest {
//!     blob, role, blocks_held: held, total_blocks: 10,
//!     addrs: vec![b"/ip4/192.0.2.1/udp/4001/quic-v1 as bytes".to_vec()],
//!     event: Event::Started,
//! };
//! table.announce(start, 1, &announce(Role::Seeder, 10)).unwrap();
//! let answer = table.announce(start, 2, &announce(Role::Leecher, 0)).unwrap();
//! assert_eq!(answer.peers.len(), 1);
//! assert_eq!(answer.peers[0].peer, 1);
//! assert!(answer.interval >= Duration::from_secs(300));
//! assert_eq!(table.scrape(start, blob).leechers, 1);
//!
//! // Entries expire when not refreshed: the shell calls `expire` at `poll_timeout`.
//! let later = table.poll_timeout().unwrap();
//! assert_eq!(later, start + Duration::from_secs(750));
//! assert_eq!(table.expire(later), 2);
//! assert!(table.is_empty());
//! ```
//!
//! No features.

mod addrs;
mod peers;
mod rng;
pub mod table;

pub use addrs::AddrList;
