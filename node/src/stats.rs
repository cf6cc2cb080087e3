//! A node's live counters, shared by the event loop and the serving tasks.

use std::sync::atomic::AtomicU64;

/// Live counters of a node, readable at any time.
#[derive(Debug, Default)]
pub struct Stats {
    /// Blob bytes sent to peers (headers and parents included).
    pub uploaded_bytes: AtomicU64,
    /// Peers currently connected.
    pub connected_peers: AtomicU64,
    /// Requests served to completion.
    pub requests_served: AtomicU64,
    /// Requests answered `busy` (every upload slot taken).
    pub busy_answers: AtomicU64,
    /// Peers in the DHT routing table.
    pub dht_peers: AtomicU64,
    /// Blobs found with stored blocks that fail their check against the blob id (counted
    /// once per blob when its first bad block shows; those blocks are no longer served).
    pub corrupt_blobs: AtomicU64,
    /// Block bytes sent or received while every connection to the peer went through a
    /// relay (no direct path: two symmetric NATs, or before a hole punch succeeds).
    pub relayed_bytes: AtomicU64,
    /// Relay servers: reservations granted to other nodes (renewals included).
    pub relay_reservations: AtomicU64,
    /// Relay servers: circuits relayed for other nodes.
    pub relay_circuits: AtomicU64,
}
