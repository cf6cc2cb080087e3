//! Helpers for tests (feature `test-utils`): ephemeral loopback nodes and files.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use libp2p::{Multiaddr, identity::Keypair};

use crate::{CancellationToken, Config, Node, Store, seal::KeyMode, store::Shared};

/// A loopback node with a fresh identity serving `store`.
///
/// # Panics
/// If the node cannot start (a test failure).
pub fn node(config: Config, store: Arc<Store>, stop: &CancellationToken) -> Node {
    Node::start(config, Keypair::generate_ed25519(), store, stop.clone()).expect("test node starts")
}

/// The node's first listen address of the given kind ("tcp" or "quic-v1"), with `/p2p/<id>`.
///
/// # Panics
/// If the node has no such address within 10 s.
pub async fn addr(node: &Node, kind: &str) -> Multiaddr {
    let addrs = node.listen_addrs(Duration::from_secs(10)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut addrs = addrs;
    loop {
        if let Some(a) = addrs.iter().find(|a| a.to_string().contains(kind)) {
            return format!("{a}/p2p/{}", node.peer_id())
                .parse()
                .expect("valid multiaddr");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node has no {kind} address"
        );
        tokio::task::yield_now().await;
        addrs = node.listen_addrs(Duration::from_millis(100)).await;
    }
}

/// Writes `len` bytes of deterministic pseudo-random content to `path`.
///
/// # Panics
/// If the file cannot be written.
pub fn write_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(path, &data).expect("write test file");
    data
}

/// A file shared from a fresh in-memory store: what a seeder in a test starts from.
#[derive(Debug)]
pub struct SharedFile {
    /// The store serving it.
    pub store: Arc<Store>,
    /// The share (its link has `sz` and no peer hints).
    pub shared: Shared,
    /// The file's bytes.
    pub data: Vec<u8>,
    /// Where the file is.
    pub path: PathBuf,
}

/// Writes `len` bytes of content `seed` to `dir/source.bin` (see [`write_file`]) and shares
/// it with a random key, as `application/octet-stream`.
///
/// # Panics
/// If the file cannot be written or shared.
pub fn shared_file(dir: &Path, len: usize, seed: u64) -> SharedFile {
    let path = dir.join("source.bin");
    let data = write_file(&path, len, seed);
    let store = Arc::new(Store::in_memory());
    let shared = store
        .share_file(
            &path,
            "application/octet-stream",
            &KeyMode::Random,
            rand::random(),
            &|_| {},
        )
        .expect("test file is shared");
    SharedFile {
        store,
        shared,
        data,
        path,
    }
}
