//! A Shoal node: it shares files as encrypted blobs and fetches blobs from peers over libp2p,
//! verifying every 64 KiB block against the blob id before it is decrypted or stored.
//!
//! Main types:
//! - [`Node`]: a running libp2p node (QUIC and TCP+Noise+Yamux, identify, ping) serving
//!   `/shoal/blob/1` from its [`Store`].
//! - [`Store`]: the blobs a node serves — from a plaintext file + key (re-sealed on demand
//!   and checked against the outboard) or from a ciphertext file.
//! - [`fetch::fetch`]: download a link's blob, resumable and crash-safe.
//! - [`seal::seal_file`]: the publish pipeline (encrypt + outboard, all cores).
//! - [`announce::Announcer`]: announcing a blob to trackers and connecting to the peers they
//!   list.
//! - [`tracker_codec`]: the `/shoal/tracker/1` request-response codec (trackers and peers).
//! - [`takedown`]: taking blobs down at trackers (operators) and following their takedown
//!   lists (seed nodes). A fetch stops with [`fetch::FetchError::TakenDown`] when a tracker
//!   it announces to has taken the blob down.
//! - [`dht`]: trackerless discovery — Kademlia provider records on `/shoal/kad/1`
//!   ([`Node::provide`], [`Node::find_providers`]), used when no tracker or link hint
//!   yields a peer.
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use std::{sync::Arc, time::Duration};
//! use shoal_node::{Config, Node, Store, fetch::{self, FetchOptions, Output}, seal::KeyMode};
//! use tokio_util::sync::CancellationToken;
//!
//! let store = Arc::new(Store::in_memory());
//! let shared = store.share_file("movie.mkv".as_ref(), "video/x-matroska", &KeyMode::Random, rand::random(), &|_| {})?;
//! let stop = CancellationToken::new();
//! let seeder = Node::start(Config::loopback(), libp2p::identity::Keypair::generate_ed25519(), store, stop.clone())?;
//! let mut link = shared.link;
//! let addr = seeder.listen_addrs(Duration::from_secs(5)).await[0].clone();
//! link.peers.push(format!("{addr}/p2p/{}", seeder.peer_id()));
//!
//! let getter = Node::start(Config::loopback(), libp2p::identity::Keypair::generate_ed25519(), Arc::new(Store::in_memory()), stop.clone())?;
//! let (progress, _watch) = tokio::sync::watch::channel(Default::default());
//! let done = fetch::fetch(&getter, &link, FetchOptions::new(Output::Dir(".".into())), progress).await?;
//! println!("saved {}", done.path.display());
//! # Ok(()) }
//! ```
//!
//! Features: `test-utils` adds the `testing` module (ephemeral loopback nodes, test files)
//! and a lying-peer mode (`Config::corrupt_uploads`) for tests.

pub mod announce;
mod buffers;
pub mod config;
pub mod dht;
pub mod fetch;
pub mod frugal;
pub mod identity;
mod muxer;
mod node;
mod rate;
pub mod seal;
pub mod seednode;
pub mod store;
pub mod takedown;
#[cfg(feature = "test-utils")]
pub mod testing;
pub mod tracker_codec;
pub mod transport;

pub use config::Config;
pub use dht::DhtError;
pub use node::{DialError, Node, StartError, Stats};
pub use rate::RateLimiter;
pub use store::{Source, Store};
pub use tokio_util::sync::CancellationToken;
