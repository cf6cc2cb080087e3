//! A swarm coordinated by a real tracker on 127.0.0.1: a link that names only the tracker
//! (no peer hints), leechers that find the seeder and each other through it, and a tracker
//! that dies mid-download while the swarm carries on with the peers it knows. Every wait has
//! a timeout; nothing sleeps to synchronise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{start_tracker, tracker_only};

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures::future::join_all;
use libp2p::Multiaddr;
use shoal_node::{
    CancellationToken, Config, Node, Store,
    announce::{Announcer, Status},
    fetch::{FetchOptions, Output, Progress, fetch},
    testing,
};
use shoal_protocol::blob::block_count;
use shoal_tracker::{ServiceConfig, Tracker};
use tokio::{sync::watch, time::timeout};

const LIMIT: Duration = Duration::from_secs(90);
const LEECHERS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leechers_find_each_other_through_the_tracker_and_finish_after_it_dies() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let tracker_stop = CancellationToken::new();
    let (tracker, tr) = start_tracker(ServiceConfig::loopback(), &tracker_stop).await;

    let len = 6 << 20;
    let testing::SharedFile {
        store,
        shared,
        data,
        ..
    } = testing::shared_file(dir.path(), len, 11);
    let cap = |r| Config::loopback().with_upload_limit(Some(r));
    let seeder = testing::node(cap(1_500_000), store, &stop);
    testing::addr(&seeder, "tcp").await; // listening before it announces
    let blob_len = shared.link.blob_len.unwrap();
    let total = u32::try_from(block_count(blob_len)).unwrap();
    let _seeding = Announcer::start(
        &seeder,
        shared.link.id,
        vec![tr.clone()],
        Status::seeder(total),
        None,
    );
    // The seeder is in the swarm before the downloaders arrive (each would find it later
    // anyway, by re-announcing; this keeps the test short).
    let mut stats = tracker.subscribe_stats();
    timeout(LIMIT, stats.wait_for(|s| s.service.announce_requests >= 1))
        .await
        .expect("the seeder announces")
        .unwrap();
    // The link names only the tracker.
    let link = tracker_only(&shared.link, &tr);

    let leechers: Vec<Node> = (0..LEECHERS)
        .map(|_| testing::node(cap(1_500_000), Arc::new(Store::in_memory()), &stop))
        .collect();
    for l in &leechers {
        testing::addr(l, "tcp").await;
    }
    let (first_tx, mut first_rx) = watch::channel(Progress::default());
    let mut first_tx = Some(first_tx);
    let runs = leechers.iter().enumerate().map(|(i, node)| {
        let own = dir.path().join(format!("leecher-{i}"));
        std::fs::create_dir(&own).unwrap();
        let out = own.join("got.bin");
        let opts = FetchOptions::new(Output::File(out.clone()));
        let link = link.clone();
        let tx = first_tx
            .take()
            .unwrap_or_else(|| watch::channel(Progress::default()).0);
        async move { (out.clone(), fetch(node, &link, opts, tx).await) }
    });
    // Kill the tracker once the first leecher is a quarter done: the swarm must finish with
    // the peers it already knows.
    let kill = async {
        timeout(
            LIMIT,
            first_rx.wait_for(|p| p.total_blocks > 0 && p.done_blocks * 4 >= p.total_blocks),
        )
        .await
        .expect("the first leecher progresses")
        .ok(); // Err: that fetch already ended; its result says why
        let announces = tracker.stats().service.announce_requests;
        tracker_stop.cancel();
        announces
    };
    let (results, announces) = tokio::join!(timeout(LIMIT, join_all(runs)), kill);
    assert!(
        announces > LEECHERS as u64,
        "seeder and leechers announced: {announces}"
    );
    let results = results.expect("swarm finishes");
    for (out, got) in results {
        got.unwrap_or_else(|e| panic!("{}: {e:#}", out.display()));
        assert!(
            std::fs::read(&out).unwrap() == data,
            "{} differs",
            out.display()
        );
    }
    let sent = |n: &Node| n.stats().uploaded_bytes.load(Ordering::Relaxed);
    let copies = sent(&seeder) as f64 / blob_len as f64;
    let from_leechers: Vec<u64> = leechers.iter().map(sent).collect();
    eprintln!("seeder sent {copies:.2} copies; leechers sent {from_leechers:?}");
    assert!(
        copies < LEECHERS as f64 * 0.6,
        "the seeder sent {copies:.2} copies; leechers sent {from_leechers:?}"
    );
    stop.cancel();
}

/// A tracker, and a shared file (`len` bytes of content `seed`) whose link names only that
/// tracker: no peer hint.
async fn tracker_only_link(
    dir: &std::path::Path,
    len: usize,
    seed: u64,
    stop: &CancellationToken,
) -> (
    Tracker,
    Multiaddr,
    testing::SharedFile,
    shoal_protocol::Link,
) {
    let (tracker, tr) = start_tracker(ServiceConfig::loopback(), stop).await;
    let shared = testing::shared_file(dir, len, seed);
    let link = tracker_only(&shared.shared.link, &tr);
    (tracker, tr, shared, link)
}

/// Issue 11, item 2: a downloader that starts before anyone seeds (the link names only the
/// tracker) waits instead of failing, and starts as soon as a seeder appears: the tracker
/// tells it to come back after the minimum interval, never rate limits it, and the seeder,
/// answered with the waiting leecher, connects to it at once. Before the fix the leecher
/// re-announced after 3 s, was refused as rate limited, and failed after 60 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downloader_that_starts_before_the_seeder_waits_and_downloads() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let (tracker, tr, shared, link) = tracker_only_link(dir.path(), 1 << 20, 12, &stop).await;
    let testing::SharedFile {
        store,
        shared,
        data,
        ..
    } = shared;

    let leecher = testing::node(Config::loopback(), Arc::new(Store::in_memory()), &stop);
    testing::addr(&leecher, "tcp").await;
    let out = dir.path().join("got.bin");
    let (tx, mut rx) = watch::channel(Progress::default());
    let started = std::time::Instant::now();
    let download = tokio::spawn({
        let (leecher, link, out) = (leecher.clone(), link.clone(), out.clone());
        async move { fetch(&leecher, &link, FetchOptions::new(Output::File(out)), tx).await }
    });
    // The leecher is in the swarm, alone, and waiting.
    let mut stats = tracker.subscribe_stats();
    timeout(LIMIT, stats.wait_for(|s| s.table.entries >= 1))
        .await
        .expect("the leecher announces")
        .unwrap();
    timeout(
        LIMIT,
        rx.wait_for(|p| p.waiting_since.is_some() || p.peers == 0),
    )
    .await
    .expect("the leecher waits")
    .unwrap();

    let seeder = testing::node(Config::loopback(), store, &stop);
    testing::addr(&seeder, "tcp").await;
    let total = u32::try_from(block_count(shared.link.blob_len.unwrap())).unwrap();
    let _seeding = Announcer::start(
        &seeder,
        shared.link.id,
        vec![tr.clone()],
        Status::seeder(total),
        None,
    );
    let done = timeout(LIMIT, download)
        .await
        .expect("the early leecher completes")
        .unwrap()
        .expect("the download succeeds");
    assert_eq!(std::fs::read(&out).unwrap(), data);
    // Well before its next announce (60 s): the seeder's connection told it.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        tracker.stats().table.refused_rate_limited,
        0,
        "nobody was rate limited"
    );
    drop(done);
    stop.cancel();
}

/// Issue 11, item 2: a file nobody seeds. The downloader waits its patience (here 3 s), the
/// tracker keeps answering, and the error says so in words — never a rate-limit refusal or a
/// Rust debug format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_nobody_seeds_says_so_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let (_tracker, _, _, link) = tracker_only_link(dir.path(), 100_000, 13, &stop).await;
    let leecher = testing::node(
        Config::loopback().with_dht(false),
        Arc::new(Store::in_memory()),
        &stop,
    );
    let mut opts = FetchOptions::new(Output::File(dir.path().join("got.bin")));
    opts.patience = Some(Duration::from_secs(3));
    let (tx, _rx) = watch::channel(Progress::default());
    let err = timeout(LIMIT, fetch(&leecher, &link, opts, tx))
        .await
        .expect("the fetch gives up in time")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nobody is seeding this file yet: the tracker lists 0 seeders"),
        "{err}"
    );
    assert!(!err.contains("RateLimited") && !err.contains("{"), "{err}");
    stop.cancel();
}
