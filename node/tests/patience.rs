//! Issue 11, "peers come and go": a download keeps re-dialling the addresses it knows while
//! no peer can deliver, shows that it is waiting, goes on when a peer comes back, and gives
//! up only after its patience, saying what it tried. Real nodes on 127.0.0.1; every wait has
//! a timeout; nothing sleeps to synchronise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use libp2p::{Multiaddr, identity::Keypair};
use shoal_node::{
    CancellationToken, Config, Node, Store,
    fetch::{FetchError, FetchOptions, Output, Progress, fetch},
    testing,
};
use tokio::{sync::watch, time::timeout};

const LIMIT: Duration = Duration::from_secs(60);

/// A free TCP port on 127.0.0.1 (bound, learnt, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A seeder with identity `key` serving `store` on exactly `127.0.0.1:port` (TCP), capped
/// at `cap` bytes per second. Retries (bounded) while the port is still held by a seeder
/// that was just stopped.
async fn seeder_on(
    port: u16,
    key: &Keypair,
    store: &Arc<Store>,
    cap: u64,
) -> (Node, CancellationToken) {
    let listen: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
    let config = Config::loopback()
        .with_listen(vec![listen])
        .with_upload_limit(Some(cap));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // The old listener is gone once the port can be bound again.
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            let stop = CancellationToken::new();
            let node =
                Node::start(config.clone(), key.clone(), store.clone(), stop.clone()).unwrap();
            testing::addr(&node, "tcp").await;
            return (node, stop);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "port {port} never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // polling the port, bounded
    }
}

/// A download under way from a capped sharer on a fixed port, with `patience`.
struct Run {
    shared: testing::SharedFile,
    key: Keypair,
    port: u16,
    seeder_stop: CancellationToken,
    link: shoal_protocol::Link,
    out: std::path::PathBuf,
    rx: watch::Receiver<Progress>,
    download: tokio::task::JoinHandle<Result<shoal_node::fetch::Fetched, FetchError>>,
    stop: CancellationToken,
}

/// Shares a 4 MiB file (content `seed`) on a free port, capped at `cap`, and starts a
/// download of it with `patience`, returning once `blocks` blocks are in.
async fn run_until(
    dir: &std::path::Path,
    seed: u64,
    cap: u64,
    patience: Duration,
    blocks: u64,
) -> Run {
    let shared = testing::shared_file(dir, 4 << 20, seed);
    let key = Keypair::generate_ed25519();
    let port = free_port();
    let (seeder, seeder_stop) = seeder_on(port, &key, &shared.store, cap).await;
    let mut link = shared.shared.link.clone();
    link.peers = vec![format!(
        "/ip4/127.0.0.1/tcp/{port}/p2p/{}",
        seeder.peer_id()
    )];
    let stop = CancellationToken::new();
    let getter = testing::node(Config::loopback(), Arc::new(Store::in_memory()), &stop);
    let out = dir.join("got.bin");
    let (tx, mut rx) = watch::channel(Progress::default());
    let mut opts = FetchOptions::new(Output::File(out.clone()));
    opts.patience = Some(patience);
    let download = tokio::spawn({
        let link = link.clone();
        async move { fetch(&getter, &link, opts, tx).await }
    });
    timeout(LIMIT, rx.wait_for(|p| p.done_blocks >= blocks))
        .await
        .expect("the download starts")
        .unwrap();
    Run {
        shared,
        key,
        port,
        seeder_stop,
        link,
        out,
        rx,
        download,
        stop,
    }
}

/// Item 1: the sharer is killed mid-download and comes back on the same address. The
/// download waits ("waiting for peers" in its progress), dials it again, and completes.
/// Before the fix it ended at once with "no addresses for peer".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sharer_is_dialled_again_and_the_download_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = run_until(dir.path(), 21, 1_500_000, Duration::from_secs(120), 8).await;
    r.seeder_stop.cancel();
    // With its only peer gone, the download says it is waiting.
    timeout(LIMIT, r.rx.wait_for(|p| p.waiting_since.is_some()))
        .await
        .expect("the download waits for peers")
        .unwrap();
    let done_before = r.rx.borrow().done_blocks;
    let (_back, back_stop) = seeder_on(r.port, &r.key, &r.shared.store, 1_500_000).await;
    let done = timeout(LIMIT, r.download)
        .await
        .expect("the download completes after the restart")
        .unwrap()
        .expect("the download succeeds");
    assert_eq!(std::fs::read(&r.out).unwrap(), r.shared.data);
    assert!(
        done_before < r.rx.borrow().total_blocks,
        "the restart happened mid-download"
    );
    assert!(r.rx.borrow().waiting_since.is_none(), "no longer waiting");
    assert!(done.banned.is_empty(), "{:?}", done.banned);
    back_stop.cancel();
    r.stop.cancel();
}

/// Item 1's other half: a sharer that does not come back. The download keeps dialling for
/// its patience, then ends with what it tried, keeping the verified blocks for a resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharer_that_stays_away_ends_the_download_after_its_patience() {
    let dir = tempfile::tempdir().unwrap();
    let patience = Duration::from_secs(3);
    let Run {
        seeder_stop,
        download,
        link,
        out,
        port,
        stop,
        ..
    } = run_until(dir.path(), 22, 1_000_000, patience, 4).await;
    seeder_stop.cancel();
    let gone = std::time::Instant::now();
    let err = timeout(LIMIT, download)
        .await
        .expect("the download gives up in time")
        .unwrap()
        .unwrap_err();
    assert!(
        gone.elapsed() >= patience,
        "gave up after {:?}",
        gone.elapsed()
    );
    assert!(matches!(err, FetchError::Exhausted { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("tcp/{port}")),
        "names the address: {text}"
    );
    assert!(text.contains("dialled"), "says it dialled again: {text}");
    assert!(!out.exists());
    let state = dir.path().join(format!(".shoal-{}.state", link.id));
    assert!(state.exists(), "verified blocks are kept for a resume");
    stop.cancel();
}

/// Two seeders of one file, the first `frozen` from the start (it takes connections and
/// streams and never answers, like a stopped process); a downloader whose request timeout
/// is far beyond the test's limit fetches from both, the frozen one named first. Returns
/// the outcome, the file, and the seeders' ids (frozen, live).
async fn fetch_beside_a_frozen_peer(
    dir: &std::path::Path,
    freeze_after_blocks: Option<u64>,
) -> (
    shoal_node::fetch::Fetched,
    Vec<u8>,
    libp2p::PeerId,
    libp2p::PeerId,
) {
    let shared = testing::shared_file(dir, 4 << 20, 11);
    let stop = CancellationToken::new();
    // Capped, so that a freeze mid-download finds requests still to make.
    let frozen_config = Config::loopback().with_upload_limit(Some(4 << 20));
    let freeze = frozen_config.frozen.clone();
    freeze.store(freeze_after_blocks.is_none(), Ordering::Relaxed);
    let frozen = testing::node(frozen_config, shared.store.clone(), &stop);
    let live = testing::node(
        Config::loopback().with_upload_limit(Some(4 << 20)),
        shared.store.clone(),
        &stop,
    );
    let mut config = Config::loopback();
    config.request_timeout = Duration::from_secs(600);
    let getter = testing::node(config, Arc::new(Store::in_memory()), &stop);
    let mut link = shared.shared.link.clone();
    link.peers = vec![
        testing::addr(&frozen, "tcp").await.to_string(),
        testing::addr(&live, "tcp").await.to_string(),
    ];
    let out = dir.join("got.bin");
    let (tx, mut rx) = watch::channel(Progress::default());
    let download = tokio::spawn({
        let opts = FetchOptions::new(Output::File(out.clone()));
        async move { fetch(&getter, &link, opts, tx).await }
    });
    if let Some(blocks) = freeze_after_blocks {
        timeout(LIMIT, rx.wait_for(|p| p.done_blocks >= blocks))
            .await
            .expect("the download starts")
            .unwrap();
        freeze.store(true, Ordering::Relaxed);
    }
    let fetched = timeout(LIMIT, download)
        .await
        .expect("a frozen peer held the download up")
        .unwrap()
        .expect("the download completes from the live peer");
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got, shared.data, "the file arrived intact");
    stop.cancel();
    (fetched, got, frozen.peer_id(), live.peer_id())
}

/// A peer frozen from the start (the first named in the link) holds nobody up: the
/// download asks the next one for the first blocks beside it (not after its request
/// timeout, here 10 minutes) and gets every block from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_peer_does_not_hold_up_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (fetched, _, frozen, live) = fetch_beside_a_frozen_peer(dir.path(), None).await;
    assert!(
        fetched
            .sources
            .iter()
            .all(|s| s.peer != frozen || s.blocks == 0),
        "{:?}",
        fetched.sources
    );
    assert!(
        fetched
            .sources
            .iter()
            .any(|s| s.peer == live && s.blocks > 0)
    );
}

/// A peer that freezes mid-download, with requests of ours outstanding, holds nobody up
/// either: its blocks come from the other peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_frozen_mid_download_does_not_hold_it_up() {
    let dir = tempfile::tempdir().unwrap();
    let (fetched, _, _, live) = fetch_beside_a_frozen_peer(dir.path(), Some(8)).await;
    assert!(
        fetched
            .sources
            .iter()
            .any(|s| s.peer == live && s.blocks > 0)
    );
}
