//! Trackerless discovery (issue 3): real libp2p nodes on 127.0.0.1 (port 0) forming a
//! Shoal DHT through one bootstrap node. Every wait has a timeout; nothing sleeps to
//! synchronise (tests wait on what the DHT answers).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use libp2p::{Multiaddr, PeerId};
use shoal_node::{
    CancellationToken, Config, Node, Store,
    fetch::{FetchError, FetchOptions, Output, fetch},
    seal::KeyMode,
    testing,
};
use shoal_protocol::{BlobId, Link};
use tokio::{sync::watch, time::timeout};

const LIMIT: Duration = Duration::from_secs(30);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A bootstrap node (empty store) and a config that bootstraps from it.
async fn bootstrap_node(stop: &CancellationToken) -> (Node, Config) {
    let b = testing::node(Config::loopback(), Arc::new(Store::in_memory()), stop);
    let addr = testing::addr(&b, "tcp").await;
    (b, Config::loopback().with_bootstrap(vec![addr]))
}

/// Shares a file from a new node started with `config`; returns the node, the link without
/// any hints, and the file's bytes.
fn seeder(
    dir: &Path,
    name: &str,
    len: usize,
    config: Config,
    stop: &CancellationToken,
) -> (Node, Link, Vec<u8>) {
    let path = dir.join(name);
    let data = testing::write_file(&path, len, len as u64);
    let store = Arc::new(Store::in_memory());
    let shared = store
        .share_file(&path, "", &KeyMode::Random, rand::random(), &|_| {})
        .unwrap();
    let mut link = shared.link;
    link.peers.clear();
    link.trackers.clear();
    (testing::node(config, store, stop), link, data)
}

/// Waits until `asker`'s DHT lookups of `id` name `provider` (or, with `present` false, no
/// longer name it).
async fn wait_listed(asker: &Node, id: BlobId, provider: PeerId, present: bool) {
    timeout(LIMIT, async {
        loop {
            let found = asker.find_providers(id, Duration::from_secs(2)).await;
            if found.iter().any(|(p, _)| *p == provider) == present {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await; // pacing, not synchronisation
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{provider} listed = {present} for {id}"));
}

/// Waits until `holder`'s DHT store holds (or, with `present` false, no longer holds) an
/// unexpired record of `provider` for `id`. A lookup from `holder` would not show that: the
/// provider answers it too, whether or not `holder` stored the record.
async fn wait_stored(holder: &Node, id: BlobId, provider: PeerId, present: bool) {
    timeout(LIMIT, async {
        while holder.stored_providers(id).await.contains(&provider) != present {
            tokio::time::sleep(Duration::from_millis(50)).await; // pacing, not synchronisation
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{provider} stored = {present} for {id}"));
}

async fn fetch_to(node: &Node, link: &Link, out: &Path) -> Result<(), FetchError> {
    fetch_waiting(node, link, out, shoal_node::fetch::DEFAULT_PATIENCE).await
}

/// [`fetch_to`] that waits at most `patience` for a peer that can deliver.
async fn fetch_waiting(
    node: &Node,
    link: &Link,
    out: &Path,
    patience: Duration,
) -> Result<(), FetchError> {
    let (tx, _rx) = watch::channel(Default::default());
    let mut opts = FetchOptions::new(Output::File(out.into()));
    opts.patience = Some(patience);
    timeout(LIMIT, fetch(node, link, opts, tx))
        .await
        .expect("fetch ends in time")
        .map(|_| ())
}

/// A link with no peer hints and no trackers: the downloader finds the seeder through the
/// DHT (one bootstrap node), fetches the file byte for byte, and then provides it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_without_peers_or_trackers_is_fetched_through_the_dht() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let (b, boot) = bootstrap_node(&stop).await;
    let (s, link, data) = seeder(dir.path(), "a.bin", 700_000, boot.clone(), &stop);
    timeout(LIMIT, s.provide(link.id))
        .await
        .unwrap()
        .expect("the bootstrap node takes the record");
    wait_stored(&b, link.id, s.peer_id(), true).await;

    let l = testing::node(boot, Arc::new(Store::in_memory()), &stop);
    let out = dir.path().join("got.bin");
    let started = Instant::now();
    fetch_to(&l, &link, &out).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == data, "the file differs");
    eprintln!("fetched through the DHT in {:?}", started.elapsed());
    // Finished downloads are seeded, so the downloader is a provider now too.
    wait_listed(&b, link.id, l.peer_id(), true).await;
    stop.cancel();
}

/// The link names only a tracker that cannot be reached: the download still completes,
/// through the DHT, without waiting out the tracker grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_naming_only_an_unreachable_tracker_completes_through_the_dht() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let (b, boot) = bootstrap_node(&stop).await;
    let (s, mut link, data) = seeder(dir.path(), "b.bin", 300_000, boot.clone(), &stop);
    timeout(LIMIT, s.provide(link.id)).await.unwrap().unwrap();
    wait_stored(&b, link.id, s.peer_id(), true).await;

    // A port nobody listens on (bind, learn the port, close).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    link.trackers = vec![format!(
        "/ip4/127.0.0.1/tcp/{port}/p2p/{}",
        PeerId::random()
    )];
    let l = testing::node(boot, Arc::new(Store::in_memory()), &stop);
    let out = dir.path().join("got.bin");
    let started = Instant::now();
    fetch_to(&l, &link, &out).await.unwrap();
    assert!(std::fs::read(&out).unwrap() == data, "the file differs");
    let took = started.elapsed();
    assert!(
        took < shoal_node::fetch::TRACKER_GRACE,
        "a failed tracker should send the fetch to the DHT at once; took {took:?}"
    );
    stop.cancel();
}

/// The only peer the link names goes away mid-download: with no tracker left, the fetch asks
/// the DHT, finds another seeder of the same blob, and completes from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_last_peer_leaves_mid_download_the_dht_finds_another() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let (b, boot) = bootstrap_node(&stop).await;
    // Two seeders of one blob (convergent keys: same file, same blob id). The first, named in
    // the link, is slow and not in the DHT; the second is only in the DHT.
    let path = dir.path().join("d.bin");
    let data = testing::write_file(&path, 2_000_000, 4);
    let convergent = KeyMode::Convergent { secret: Vec::new() };
    let share = |store: &Store| {
        store
            .share_file(&path, "", &convergent, rand::random(), &|_| {})
            .unwrap()
            .link
    };
    let (first_store, second_store) = (Arc::new(Store::in_memory()), Arc::new(Store::in_memory()));
    let mut link = share(&first_store);
    assert_eq!(share(&second_store).id, link.id);
    let first_stop = CancellationToken::new();
    let first = testing::node(
        Config::loopback()
            .with_dht(false)
            .with_upload_limit(Some(1_000_000)),
        first_store,
        &first_stop,
    );
    let second = testing::node(boot.clone(), second_store, &stop);
    timeout(LIMIT, second.provide(link.id))
        .await
        .unwrap()
        .unwrap();
    wait_stored(&b, link.id, second.peer_id(), true).await;
    link.peers = vec![testing::addr(&first, "tcp").await.to_string()];
    link.trackers.clear();

    let l = testing::node(boot, Arc::new(Store::in_memory()), &stop);
    let out = dir.path().join("got.bin");
    let (tx, mut rx) = watch::channel(Default::default());
    let run = fetch(&l, &link, FetchOptions::new(Output::File(out.clone())), tx);
    let kill = async {
        // Some blocks came from the first seeder: now it goes.
        rx.wait_for(|p: &shoal_node::fetch::Progress| p.done_blocks >= 4)
            .await
            .unwrap();
        first_stop.cancel();
        std::future::pending::<()>().await;
    };
    let done = timeout(LIMIT, async {
        tokio::select! {
            r = run => r,
            () = kill => unreachable!(),
        }
    })
    .await
    .expect("fetch ends in time")
    .unwrap();
    assert!(std::fs::read(&out).unwrap() == data, "the file differs");
    assert!(
        first_stop.is_cancelled(),
        "finished before the first seeder left"
    );
    assert!(done.fetched_blocks > 4);
    // The second seeder, found only in the DHT, served the rest (issue 11: the test did not
    // show it was used at all).
    let second_sent = second
        .stats()
        .uploaded_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    let first_sent = first
        .stats()
        .uploaded_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        second_sent + first_sent >= data.len() as u64 && second_sent > data.len() as u64 / 2,
        "the DHT's seeder sent {second_sent} bytes, the link's {first_sent}"
    );
    stop.cancel();
}

/// Nobody has the blob: no peer hints, no tracker, no provider in the DHT. The fetch fails
/// once its patience runs out with an error that says what was tried and what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_found_anywhere_fails_soon_and_says_what_was_tried() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let (_b, boot) = bootstrap_node(&stop).await;
    // A blob nobody provides (the seeder never starts a node).
    let path = dir.path().join("c.bin");
    testing::write_file(&path, 1000, 3);
    let mut link = Store::in_memory()
        .share_file(&path, "", &KeyMode::Random, rand::random(), &|_| {})
        .unwrap()
        .link;
    link.peers.clear();
    link.trackers.clear();

    let l = testing::node(boot, Arc::new(Store::in_memory()), &stop);
    let started = Instant::now();
    let patience = Duration::from_secs(3);
    let err = fetch_waiting(&l, &link, &dir.path().join("got.bin"), patience)
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= patience,
        "gave up after {took:?}, before its patience"
    );
    assert!(matches!(err, FetchError::Unreachable { .. }), "{err}");
    let text = err.to_string();
    for what in [
        "peers: none",
        "trackers: none",
        "DHT: no provider",
        "--peer",
        "--bootstrap",
    ] {
        assert!(text.contains(what), "{what:?} missing from: {text}");
    }
    assert!(took < Duration::from_secs(15), "took {took:?}");

    // Without any bootstrap peer the DHT cannot be asked: the error says how to give a source.
    let lonely = testing::node(Config::loopback(), Arc::new(Store::in_memory()), &stop);
    let err = fetch_to(&lonely, &link, &dir.path().join("got2.bin"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::NoPeersGiven { dht_off: false }),
        "{err}"
    );
    assert!(err.to_string().contains("--bootstrap"), "{err}");
    stop.cancel();
}

/// Provider records are republished: with a 1 s record TTL at the bootstrap node, the
/// record of a seeder that keeps providing outlives it, and that of one that stopped
/// providing expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_records_are_republished_until_stopped() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let ttl = Duration::from_secs(1);
    let mut b_config = Config::loopback();
    b_config.dht_provider_ttl = ttl;
    let b = testing::node(b_config, Arc::new(Store::in_memory()), &stop);
    let b_addr: Multiaddr = testing::addr(&b, "tcp").await;
    let mut boot = Config::loopback().with_bootstrap(vec![b_addr]);
    boot.dht_republish_interval = Duration::from_millis(250);
    let (keeps, kept, _) = seeder(dir.path(), "k.bin", 1000, boot.clone(), &stop);
    let (stops, stopped, _) = seeder(dir.path(), "s.bin", 2000, boot, &stop);
    timeout(LIMIT, keeps.provide(kept.id))
        .await
        .unwrap()
        .unwrap();
    wait_stored(&b, kept.id, keeps.peer_id(), true).await;
    let first = Instant::now();
    timeout(LIMIT, stops.provide(stopped.id))
        .await
        .unwrap()
        .unwrap();
    wait_stored(&b, stopped.id, stops.peer_id(), true).await;
    stops.stop_providing(stopped.id).await;
    // The stopped record expires at the bootstrap node once its TTL has passed...
    wait_stored(&b, stopped.id, stops.peer_id(), false).await;
    // ...so the first record of the other seeder, stored earlier, has expired too: it is
    // still there only because it was republished.
    assert!(first.elapsed() >= ttl);
    assert!(
        b.stored_providers(kept.id).await.contains(&keeps.peer_id()),
        "republished record missing after {:?}",
        first.elapsed()
    );
    // And lookups from elsewhere find it.
    wait_listed(&stops, kept.id, keeps.peer_id(), true).await;
    stop.cancel();
}
