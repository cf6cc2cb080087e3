//! The Shoal tracker (issue 3, docs/tracker.md): the `/shoal/tracker/1` libp2p service, its
//! HTTP `/stats` and `/metrics` endpoints, and the bounded, clock-injected peer table at its
//! core.
//!
//! Peers announce to a tracker which blob's swarm they are in (`/shoal/tracker/1`, messages in
//! [`shoal_protocol::tracker`], codec in [`shoal_node::tracker_codec`]); the tracker answers
//! with a random subset of the other peers in that swarm and the interval after which to
//! announce again. Scrapes return swarm sizes. The tracker learns blob ids, peer ids, listen
//! addresses and swarm sizes — never keys, file names or plaintext.
//!
//! - [`table`]: the pure part. [`table::PeerTable`] is a plain struct that takes `now` with
//!   every call, draws randomness from a seed, and bounds its memory (per-swarm and total
//!   entry caps, bounded addresses and answers).
//! - [`service`]: the thin async shell (STYLE.md §3). [`Tracker::start`] runs one event loop
//!   that owns the libp2p swarm (TCP+Noise+Yamux, QUIC, identify, ping) and the table; it
//!   takes each announcing peer's id from its connection, checks announced addresses against
//!   the connection's IP, authorises the seed-node role, rate limits scrapes, limits
//!   connections per IP and subnet, and expires entries on the table's schedule. HTTP serves
//!   [`service::Stats`] as JSON and as Prometheus metrics.
//! - [`takedowns`]: the takedown list and its audit trail in an embedded redb store. The
//!   service refuses announces of taken-down blobs, answers zeros to their scrapes, takes
//!   takedowns from the operators on [`ServiceConfig::operators`] and serves the public list
//!   to anyone (seed nodes follow it).
//! - [`AddrList`]: how a peer's listen addresses are stored and handed out.
//!
//! The `shoal tracker` command runs the service (`shoal-cli`).
//!
//! # Example: the table
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
//! # Example: the service
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use shoal_tracker::{ServiceConfig, Tracker};
//! use tokio_util::sync::CancellationToken;
//!
//! let stop = CancellationToken::new();
//! let keypair = libp2p::identity::Keypair::generate_ed25519();
//! let tracker = Tracker::start(ServiceConfig::loopback(), keypair, stop.clone())?;
//! let addr = &tracker.listen_addrs(Duration::from_secs(5)).await[0];
//! println!("tracker at {addr}/p2p/{}", tracker.peer_id());
//! println!("metrics at http://{}/metrics", tracker.http_addr().unwrap());
//! println!("{} swarms", tracker.stats().table.swarms);
//! stop.cancel();
//! # Ok(()) }
//! ```
//!
//! No features.

mod addrs;
mod heap;
mod peers;
mod rng;
pub mod service;
pub mod table;
pub mod takedowns;

pub use addrs::AddrList;
pub use service::{Config as ServiceConfig, StartError, Stats, Tracker};
