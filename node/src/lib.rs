//! A Shoal node: it shares files as encrypted blobs and fetches blobs from peers over libp2p,
//! verifying every 64 KiB block against the blob id before it is decrypted or stored.
//!
//! # Module map
//!
//! Each module does one job. Calls go down this list, never up: a module uses only modules
//! below it (and `shoal_protocol`, whose sans-IO cores — the download scheduler, the
//! upload-slot rule, super-seeding — make the decisions these modules carry out).
//!
//! | module | job |
//! | --- | --- |
//! | [`seednode`] | an operator's seed server: receives pushes, stores ciphertext, serves and announces it |
//! | [`repair`] | fetching back stored ciphertext blocks that fail their check, from peers (seed nodes) |
//! | [`fetch`] | downloading a link's blob (a folder: where peers come from, the part file, bootstrap, the download loop, the writer) |
//! | [`takedown`] | taking blobs down at trackers, and following their takedown lists |
//! | [`announce`] | announcing a blob to trackers and dialling the peers they list |
//! | `node` ([`Node`]) | owns the libp2p swarm (one event loop) and offers dialling, tracker requests, the DHT, stream clients |
//! | `serve` | answering `/shoal/blob/1` block requests and `/shoal/have/1` have-map subscriptions |
//! | [`dht`] | the part of the event loop that drives Kademlia (trackerless discovery) |
//! | [`reach`] | the event loop's reachability state: confirmed addresses, relay reservations, relayed connections, hole punches |
//! | `wire` | asking: block requests verified as they stream in, have-map subscriptions |
//! | `interest` | peers that subscribe to a blob being downloaded here, handed to that download |
//! | `partial` | what a partial blob keeps on disk to resume: state file and sparse outboard |
//! | [`store`] | the blobs a node serves: plaintext + key re-sealed on demand, or ciphertext |
//! | [`seal`] | the publish pipeline: encrypt and build the outboard on all cores |
//! | [`transport`], `muxer`, `behaviour` | TCP+TLS/Noise+Yamux and QUIC, and the behaviours the swarm runs |
//! | [`tracker_codec`] | the `/shoal/tracker/1` request-response codec |
//! | [`config`], [`identity`], `stats`, `rate`, `buffers` | settings, the node key, counters, the token bucket, recycled block buffers |
//!
//! Main types: [`Node`] (a running node serving `/shoal/blob/1` from its [`Store`]),
//! [`fetch::fetch`] (download a link's blob, resumable and crash-safe; it stops with
//! [`fetch::FetchError::TakenDown`] when a tracker took the blob down),
//! [`seal::seal_file`], [`announce::Announcer`], [`Node::provide`] and
//! [`Node::find_providers`] (the DHT on `/shoal/kad/1`, used when no tracker or link hint
//! yields a peer).
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
mod behaviour;
mod buffers;
pub mod config;
pub mod dht;
pub mod fetch;
pub mod identity;
mod interest;
pub mod metrics;
mod muxer;
mod node;
mod partial;
mod rate;
pub mod reach;
pub mod repair;
pub mod seal;
pub mod seednode;
mod serve;
mod stats;
pub mod store;
pub mod takedown;
#[cfg(feature = "test-utils")]
pub mod testing;
pub mod tracker_codec;
pub mod transport;
mod wire;

pub use config::Config;
pub use dht::DhtError;
pub use node::{DialError, Node, StartError};
pub use rate::RateLimiter;
pub use reach::Reachability;
pub use stats::Stats;
pub use store::{Source, Store};
pub use tokio_util::sync::CancellationToken;
