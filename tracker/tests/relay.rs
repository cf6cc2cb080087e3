//! Issue 13: a seeder nobody can dial (it listens on nothing, as a node behind NAT is not
//! listening anywhere others can reach) reserves a slot at the tracker's relay, announces
//! its relayed address, and a downloader fetches the file through the relay. The blocks are
//! counted as relayed on both sides. With the tracker's relay off, nobody can reach it.
//! Real libp2p nodes on 127.0.0.1; every wait has a timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use common::{start_tracker, tracker_only};
use shoal_node::{
    CancellationToken, Config, Reachability, Store,
    announce::{Announcer, Status},
    fetch::{FetchOptions, Output, Progress, fetch},
    testing,
};
use shoal_protocol::blob::block_count;
use shoal_tracker::ServiceConfig;
use tokio::{sync::watch, time::timeout};

const LIMIT: Duration = Duration::from_secs(60);

/// Runs the scenario with the tracker's relay on or off; returns the fetch's result, the
/// downloader's relayed bytes and the seeder's reachability.
async fn through_the_tracker(
    relay: bool,
    patience: Duration,
) -> (
    Result<shoal_node::fetch::Fetched, shoal_node::fetch::FetchError>,
    u64,
    Reachability,
    Vec<u8>,
    std::path::PathBuf,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let mut config = ServiceConfig::loopback();
    if !relay {
        config.relay = None;
    }
    let (tracker, tr) = start_tracker(config, &stop).await;
    let testing::SharedFile {
        store,
        shared,
        data,
        ..
    } = testing::shared_file(dir.path(), 1 << 20, 21);
    // No listen address at all: only a relay makes it reachable.
    let seeder = testing::node(
        Config::loopback().with_listen(Vec::new()).with_dht(false),
        store,
        &stop,
    );
    let total = u32::try_from(block_count(shared.link.blob_len.unwrap())).unwrap();
    let _seeding = Announcer::start(
        &seeder,
        shared.link.id,
        vec![tr.clone()],
        Status::seeder(total),
        None,
    );
    let mut stats = tracker.subscribe_stats();
    timeout(LIMIT, stats.wait_for(|s| s.service.announce_requests >= 1))
        .await
        .expect("the seeder announces")
        .unwrap();
    let link = tracker_only(&shared.link, &tr);
    let leecher = testing::node(
        Config::loopback().with_dht(false),
        Arc::new(Store::in_memory()),
        &stop,
    );
    let out = dir.path().join("got.bin");
    let mut opts = FetchOptions::new(Output::File(out.clone()));
    opts.patience = Some(patience);
    let (tx, _rx) = watch::channel(Progress::default());
    let got = timeout(LIMIT, fetch(&leecher, &link, opts, tx))
        .await
        .expect("the fetch ends in time");
    let relayed = leecher.stats().relayed_bytes.load(Ordering::Relaxed);
    let reach = seeder.reachability();
    stop.cancel();
    (got, relayed, reach, data, out, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeder_nobody_can_dial_serves_through_the_trackers_relay() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (got, relayed, reach, data, out, _dir) =
        through_the_tracker(true, Duration::from_secs(20)).await;
    // The hole punch the downloader waits for (at most 3 s) cannot work: the seeder listens
    // nowhere. Then the blocks come through the relay.
    let done = got.expect("the download succeeds through the relay");
    assert!(std::fs::read(&out).unwrap() == data, "the file differs");
    assert_eq!(
        reach,
        Reachability::Relay,
        "the seeder knows where it stands"
    );
    // Every block of the download loop came from the seeder, over the relay.
    let from = done.sources.first().expect("a source delivered blocks");
    assert!(from.blocks > 0);
    assert_eq!(from.relayed_blocks, from.blocks, "{:?}", done.sources);
    assert!(
        relayed >= from.blocks * 60_000,
        "relayed bytes counted: {relayed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_relay_nobody_reaches_it() {
    let (got, relayed, reach, ..) = through_the_tracker(false, Duration::from_secs(3)).await;
    assert!(got.is_err(), "a seeder that listens nowhere was reached");
    assert_eq!(relayed, 0);
    assert_eq!(reach, Reachability::Unknown);
}
