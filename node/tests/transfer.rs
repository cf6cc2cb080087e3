//! Real libp2p nodes on 127.0.0.1 (port 0): share, fetch, and every failure path the
//! foundation issue names. Every wait has a timeout; nothing sleeps to synchronise.

// Helpers outside #[test] fns: a panic there is a test failure, which is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use shoal_node::{
    CancellationToken, Config, Store,
    fetch::{FetchError, FetchOptions, Output, Progress, fetch},
    testing,
};
use shoal_protocol::{ContentKey, Link, format::SEGMENT_PLAINTEXT_LEN};
use tokio::{sync::watch, time::timeout};

const LIMIT: Duration = Duration::from_secs(60);
/// How long these fetches wait for a peer that can deliver: ample on loopback, and what a
/// fetch that is meant to fail waits before it says why.
const PATIENCE: Duration = Duration::from_secs(4);

struct Seeder {
    node: shoal_node::Node,
    link: Link,
    data: Vec<u8>,
}

async fn seeder(dir: &Path, len: usize, config: Config, stop: &CancellationToken) -> Seeder {
    let testing::SharedFile {
        store,
        shared,
        data,
        ..
    } = testing::shared_file(dir, len, len as u64 + 1);
    let node = testing::node(config, store, stop);
    Seeder {
        node,
        link: shared.link,
        data,
    }
}

/// A second node serving the same blob as `original` (same key and outboard) from its own
/// copy of the file in `dir/name`.
fn mirror(
    original: &Seeder,
    dir: &Path,
    name: &str,
    config: Config,
    stop: &CancellationToken,
) -> shoal_node::Node {
    let copy_dir = dir.join(name);
    std::fs::create_dir(&copy_dir).unwrap();
    std::fs::write(copy_dir.join("source.bin"), &original.data).unwrap();
    let store = Arc::new(Store::in_memory());
    let outboard = original
        .node
        .store()
        .get(&original.link.id)
        .unwrap()
        .outboard()
        .clone();
    let metadata = shoal_protocol::format::Metadata {
        name: "source.bin".into(),
        file_len: original.data.len() as u64,
        media_type: "application/octet-stream".into(),
    };
    store.insert(
        shoal_node::Source::plain(
            copy_dir.join("source.bin"),
            &original.link.key,
            0,
            metadata,
            outboard,
        )
        .unwrap(),
    );
    testing::node(config, store, stop)
}

fn progress() -> watch::Sender<Progress> {
    watch::channel(Progress::default()).0
}

async fn get(link: &Link, out: &Path) -> Result<shoal_node::fetch::Fetched, FetchError> {
    let stop = CancellationToken::new();
    let getter = testing::node(Config::loopback(), Arc::new(Store::in_memory()), &stop);
    let mut opts = FetchOptions::new(Output::File(out.to_owned()));
    opts.patience = Some(PATIENCE);
    let r = timeout(LIMIT, fetch(&getter, link, opts, progress()))
        .await
        .expect("fetch finishes in time");
    stop.cancel();
    r
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            n.starts_with(".shoal-").then_some(n)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_size_over_tcp_and_quic() {
    let first = SEGMENT_PLAINTEXT_LEN - 1024; // file bytes in segment 0
    let sizes = [
        0,
        1,
        first - 1,
        first,
        first + 1,
        SEGMENT_PLAINTEXT_LEN + 1,
        3 * 1024 * 1024 + 17,
    ];
    for (i, &len) in sizes.iter().enumerate() {
        let kind = if i % 2 == 0 { "tcp" } else { "quic-v1" };
        let dir = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let s = seeder(dir.path(), len, Config::loopback(), &stop).await;
        let mut link = s.link.clone();
        link.peers = vec![testing::addr(&s.node, kind).await.to_string()];
        let out = dir.path().join("got.bin");
        let done = get(&link, &out)
            .await
            .unwrap_or_else(|e| panic!("len {len} over {kind}: {e:#}"));
        assert_eq!(
            std::fs::read(&out).unwrap(),
            s.data,
            "len {len} over {kind}"
        );
        assert_eq!(done.metadata.name, "source.bin");
        assert_eq!(done.metadata.media_type, "application/octet-stream");
        assert!(
            leftovers(dir.path()).is_empty(),
            "{:?}",
            leftovers(dir.path())
        );
        stop.cancel();
    }
}

/// Downloads a `len`-byte blob from one seeder whose node closes its next `n` streams of one
/// kind (`knob`) without answering, as libp2p-stream does to the inbound streams a loaded node
/// has not taken yet. The download must complete from that seeder alone.
async fn completes_despite_unanswered(
    len: usize,
    n: u32,
    knob: fn(&Config) -> &std::sync::atomic::AtomicU32,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let config = Config::loopback();
    knob(&config).store(n, Relaxed);
    let s = seeder(dir.path(), len, config.clone(), &stop).await;
    let mut link = s.link.clone();
    link.peers = vec![testing::addr(&s.node, "tcp").await.to_string()];
    let out = dir.path().join("got.bin");
    let done = get(&link, &out).await.expect("the download completes");
    assert_eq!(std::fs::read(&out).unwrap(), s.data);
    assert!(done.banned.is_empty(), "{:?}", done.banned);
    assert_eq!(
        knob(&config).load(Relaxed),
        0,
        "the seeder left {n} unanswered"
    );
    stop.cancel();
}

/// Requests sent together that are left unanswered together are one strike, not one each,
/// so the only peer is not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_left_unanswered_together_do_not_drop_the_only_peer() {
    completes_despite_unanswered(8 << 20, 3, |c| &c.unanswered_requests).await;
}

/// A have-map subscription closed unanswered is asked again rather than losing the peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_left_unanswered_does_not_lose_the_only_peer() {
    completes_despite_unanswered(2 << 20, 1, |c| &c.unanswered_subscriptions).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_peer_is_dropped_and_download_completes_from_the_honest_one() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let honest = seeder(dir.path(), 2_000_000, Config::loopback(), &stop).await;
    // The liar serves the same file and key but flips a byte in every block. It stays out of
    // the DHT: a DHT node connects to the peers it knows now and then (to refresh its
    // routing table), which would reconnect it to the getter after the ban.
    let mut liar_config = Config::loopback().with_dht(false);
    liar_config.corrupt_uploads = true;
    let liar = mirror(&honest, dir.path(), "liar", liar_config, &stop);
    let mut link = honest.link.clone();
    link.peers = vec![
        testing::addr(&liar, "tcp").await.to_string(),
        testing::addr(&honest.node, "tcp").await.to_string(),
    ];
    let out = dir.path().join("got.bin");
    // A getter that stays up after the fetch, to see which connections it keeps.
    let getter_stop = CancellationToken::new();
    let getter = testing::node(
        Config::loopback(),
        Arc::new(Store::in_memory()),
        &getter_stop,
    );
    let done = timeout(
        LIMIT,
        fetch(
            &getter,
            &link,
            FetchOptions::new(Output::File(out.clone())),
            progress(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), honest.data);
    assert_eq!(done.banned.len(), 1, "{:?}", done.banned);
    assert_eq!(done.banned[0].0, liar.peer_id());
    assert!(
        done.banned[0].1.contains("does not match"),
        "{}",
        done.banned[0].1
    );
    // The liar is disconnected; the honest peer's connection stays (idle timeout is 60 s).
    let connected = |n: &shoal_node::Node| {
        n.stats()
            .connected_peers
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    timeout(LIMIT, async {
        while connected(&liar) > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the lying peer is disconnected");
    assert_eq!(connected(&honest.node), 1);
    getter_stop.cancel();

    // With only the liar, the fetch fails, says why, and leaves no output file.
    link.peers.truncate(1);
    let out2 = dir.path().join("got2.bin");
    let err = get(&link, &out2).await.unwrap_err().to_string();
    assert!(
        err.contains("bad data") || err.contains("does not match"),
        "{err}"
    );
    assert!(!out2.exists());
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_is_detected_before_the_body_is_downloaded() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let s = seeder(dir.path(), 5_000_000, Config::loopback(), &stop).await;
    let mut link = s.link.clone();
    link.key = ContentKey::from_bytes([0x42; 32]);
    link.peers = vec![testing::addr(&s.node, "tcp").await.to_string()];
    let out = dir.path().join("got.bin");
    let err = get(&link, &out).await.unwrap_err();
    assert!(matches!(err, FetchError::WrongKey { .. }), "{err}");
    assert!(err.to_string().contains("does not open"), "{err}");
    // Only block 0 and the last block went over the wire, not the 5 MB body.
    let sent = s
        .node
        .stats()
        .uploaded_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent < 3 * 65_536, "seeder sent {sent} bytes");
    assert!(!out.exists());
    // Nothing was recorded, so nothing is left behind either.
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_unknown_blob_errors_list_what_was_tried() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let s = seeder(dir.path(), 1000, Config::loopback(), &stop).await;
    // A port nobody listens on (bind, learn the port, close).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut link = s.link.clone();
    link.peers = vec![format!(
        "/ip4/127.0.0.1/tcp/{port}/p2p/{}",
        s.node.peer_id()
    )];
    let started = std::time::Instant::now();
    let err = get(&link, &dir.path().join("a")).await.unwrap_err();
    assert!(matches!(err, FetchError::Unreachable { .. }), "{err}");
    // It kept dialling for its patience (issue 11), and says so.
    assert!(started.elapsed() >= PATIENCE, "gave up early");
    assert!(err.to_string().contains(&format!("tcp/{port}")), "{err}");
    let dials: u32 = err
        .to_string()
        .split("dialled ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(dials >= 3, "dialled again with back-off: {err}");
    // A failed fetch that recorded nothing leaves no empty part file behind.
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );

    // A reachable peer that does not have the blob.
    let other = testing::node(Config::loopback(), Arc::new(Store::in_memory()), &stop);
    link.peers = vec![testing::addr(&other, "tcp").await.to_string()];
    let err = get(&link, &dir.path().join("b"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("NotFound") && err.contains(&other.peer_id().to_string()),
        "{err}"
    );
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );

    // No peer at all.
    link.peers.clear();
    let err = get(&link, &dir.path().join("c")).await.unwrap_err();
    assert!(matches!(err, FetchError::NoPeersGiven { .. }), "{err}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_fetch_resumes_without_refetching_and_keeps_output_absent() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    // 8 MB at 4 MB/s: about two seconds, so there is time to interrupt.
    let s = seeder(
        dir.path(),
        8_000_000,
        Config::loopback().with_upload_limit(Some(4_000_000)),
        &stop,
    )
    .await;
    let mut link = s.link.clone();
    link.peers = vec![testing::addr(&s.node, "tcp").await.to_string()];
    let out = dir.path().join("got.bin");

    let getter_stop = CancellationToken::new();
    let getter = testing::node(
        Config::loopback(),
        Arc::new(Store::in_memory()),
        &getter_stop,
    );
    let (tx, mut rx) = watch::channel(Progress::default());
    let run = tokio::spawn({
        let link = link.clone();
        let out = out.clone();
        async move { fetch(&getter, &link, FetchOptions::new(Output::File(out)), tx).await }
    });
    // Interrupt once a good part is verified (two checkpoints' worth of wall time).
    timeout(LIMIT, rx.wait_for(|p| p.done_blocks >= 40))
        .await
        .unwrap()
        .unwrap();
    run.abort();
    let _ = run.await;
    getter_stop.cancel();
    assert!(
        !out.exists(),
        "a partial file must never appear under the final name"
    );

    // The aborted run's writer checkpoints on its way out, then releases the part file.
    let part = dir.path().join(format!(".shoal-{}.part", link.id));
    let open_part = || std::fs::OpenOptions::new().write(true).open(&part).unwrap();
    timeout(LIMIT, async {
        while open_part().try_lock().is_err() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    // While another fetch holds it, a second one is refused rather than racing it.
    let holder = open_part();
    holder.lock().unwrap();
    assert!(matches!(get(&link, &out).await, Err(FetchError::InUse(_))));
    drop(holder);
    let done = get(&link, &out).await.unwrap();
    assert!(done.resumed_blocks >= 1, "nothing was resumed");
    assert_eq!(done.resumed_blocks + done.fetched_blocks, 123, "{done:?}");
    assert_eq!(std::fs::read(&out).unwrap(), s.data);
    assert!(leftovers(dir.path()).is_empty());
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_output_is_not_clobbered_and_bad_size_hint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let s = seeder(dir.path(), 100_000, Config::loopback(), &stop).await;
    let mut link = s.link.clone();
    link.peers = vec![testing::addr(&s.node, "tcp").await.to_string()];
    let out = dir.path().join("exists.bin");
    std::fs::write(&out, b"precious").unwrap();
    let err = get(&link, &out).await.unwrap_err();
    assert!(matches!(err, FetchError::OutputExists(_)), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");

    // A link whose size hint disagrees with the blob: the peer proves the blob's size, so
    // the link is damaged, and the fetch says so at once (issue 11: it waited 60 s).
    let mut wrong = link.clone();
    let wrong_len = shoal_protocol::format::Layout::for_file(100_001)
        .unwrap()
        .blob_len();
    wrong.blob_len = Some(wrong_len);
    let out2 = dir.path().join("b.bin");
    let started = std::time::Instant::now();
    let err = get(&wrong, &out2).await.unwrap_err();
    assert!(
        matches!(err, FetchError::LinkSizeMismatch { link, blob }
            if link == wrong_len && Some(blob) == s.link.blob_len),
        "{err}"
    );
    assert!(started.elapsed() < PATIENCE, "took {:?}", started.elapsed());
    assert!(err.to_string().contains("the link is damaged"), "{err}");
    assert!(!out2.exists());

    // Without a size hint, the size is learned and proven via the last block.
    let mut nosize = link.clone();
    nosize.blob_len = None;
    let out3 = dir.path().join("c.bin");
    get(&nosize, &out3).await.unwrap();
    assert_eq!(std::fs::read(&out3).unwrap(), s.data);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_seeders_both_serve_one_download() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    // Each seeder capped at 8 MB/s, so neither can finish 12 MB alone before the other helps.
    let cap = Config::loopback().with_upload_limit(Some(8_000_000));
    let a = seeder(dir.path(), 12_000_000, cap.clone(), &stop).await;
    let b = mirror(&a, dir.path(), "b", cap, &stop);
    let mut link = a.link.clone();
    link.peers = vec![
        testing::addr(&a.node, "tcp").await.to_string(),
        testing::addr(&b, "quic-v1").await.to_string(),
    ];
    let out = dir.path().join("got.bin");
    get(&link, &out).await.unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), a.data);
    let sent = |n: &shoal_node::Node| {
        n.stats()
            .uploaded_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let (sa, sb) = (sent(&a.node), sent(&b));
    // Both carried a real share (rarest-first spreads requests over both peers).
    assert!(sa > 2_000_000 && sb > 2_000_000, "a sent {sa}, b sent {sb}");
    assert!(
        sa + sb < 12_000_000 * 13 / 10,
        "duplicated too much: {}",
        sa + sb
    );
    stop.cancel();
}

/// `down_limit` holds a download to its rate (it cannot finish sooner than the bytes allow,
/// less one burst), and the file is still complete and correct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_limit_holds_the_rate() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let a = seeder(dir.path(), 2_000_000, Config::loopback(), &stop).await;
    let mut link = a.link.clone();
    link.peers = vec![testing::addr(&a.node, "tcp").await.to_string()];
    let getter = testing::node(Config::loopback(), Arc::new(Store::in_memory()), &stop);
    let out = dir.path().join("slow.bin");
    let mut opts = FetchOptions::new(Output::File(out.clone()));
    opts.down_limit = Some(1_000_000);
    let started = std::time::Instant::now();
    timeout(LIMIT, fetch(&getter, &link, opts, progress()))
        .await
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    // 2 MB at 1 MB/s, minus the 0.25 s burst and the two bootstrap blocks (not limited).
    assert!(took >= Duration::from_millis(1500), "took only {took:?}");
    assert_eq!(std::fs::read(&out).unwrap(), a.data);
    stop.cancel();
}

/// A node at its connection limit refuses more peers, and the refused downloader says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_extra_peers() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let config = Config {
        max_connections: 1,
        ..Config::loopback()
    };
    let a = seeder(dir.path(), 100_000, config, &stop).await;
    let addr = testing::addr(&a.node, "tcp").await;
    let first = testing::node(Config::loopback(), Arc::new(Store::in_memory()), &stop);
    first.dial(addr.clone(), LIMIT).await.unwrap();
    let peers = |n: &shoal_node::Node| n.stats().connected_peers.load(Ordering::Relaxed);
    // The dialer sees the connection before the listener does: wait until the seeder counts
    // it, or the second connection could take the only slot first.
    timeout(LIMIT, async {
        while peers(&a.node) != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the seeder accepts the first peer");
    let second = testing::node(Config::loopback(), Arc::new(Store::in_memory()), &stop);
    // The dialer may see the connection complete before the listener refuses and closes it.
    let _ = second.dial(addr, LIMIT).await;
    timeout(LIMIT, async {
        while peers(&second) != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the refused connection is closed");
    assert_eq!(peers(&a.node), 1, "the seeder kept only the first peer");
    assert_eq!(peers(&first), 1);
    stop.cancel();
}

/// The transport's handshake proves who answers: an address naming another peer id is refused
/// over TCP (TLS) and QUIC, and the right id connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_an_address_with_another_peer_id_fails() {
    let stop = CancellationToken::new();
    let target = testing::node(Config::loopback(), Arc::new(Store::in_memory()), &stop);
    let dialer = testing::node(Config::loopback(), Arc::new(Store::in_memory()), &stop);
    let impostor = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    for kind in ["tcp", "quic"] {
        let addr = testing::addr(&target, kind).await;
        let wrong: libp2p::Multiaddr = addr
            .to_string()
            .replace(&target.peer_id().to_string(), &impostor.to_string())
            .parse()
            .unwrap();
        let err = dialer
            .dial(wrong, LIMIT)
            .await
            .expect_err("the wrong peer id must not connect");
        assert!(
            err.why.contains(&target.peer_id().to_string()),
            "{kind}: the error names the peer that answered: {err}"
        );
        assert_eq!(dialer.dial(addr, LIMIT).await.unwrap(), target.peer_id());
    }
    stop.cancel();
}

/// Issue 11: a liar that comes back after its ban — it dials the downloader and subscribes
/// to its have-map, as a peer downloading the same blob would — is not asked for anything
/// again by that download. The link names only the liar; once it is banned the download
/// waits, and completes when an honest seeder connects to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_liar_that_reconnects_is_not_asked_again() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let honest = seeder(dir.path(), 3_000_000, Config::loopback(), &stop).await;
    let mut liar_config = Config::loopback().with_dht(false);
    liar_config.corrupt_uploads = true;
    let liar = mirror(&honest, dir.path(), "liar", liar_config, &stop);
    let mut link = honest.link.clone();
    link.peers = vec![testing::addr(&liar, "tcp").await.to_string()];
    let getter = testing::node(Config::loopback(), Arc::new(Store::in_memory()), &stop);
    let out = dir.path().join("got.bin");
    let (tx, mut rx) = watch::channel(Progress::default());
    let download = tokio::spawn({
        let (getter, link, out) = (getter.clone(), link.clone(), out.clone());
        async move { fetch(&getter, &link, FetchOptions::new(Output::File(out)), tx).await }
    });
    let served = |n: &shoal_node::Node| n.stats().uploaded_bytes.load(Ordering::Relaxed);
    // Banned (and disconnected) at its first answer; the download then waits for peers.
    timeout(LIMIT, async {
        while served(&liar) == 0 || liar.stats().connected_peers.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await; // polling counters, bounded
        }
    })
    .await
    .expect("the liar is banned and disconnected");
    timeout(LIMIT, rx.wait_for(|p| p.waiting_since.is_some()))
        .await
        .expect("the download waits for another peer")
        .unwrap();
    let before = served(&liar);
    // It comes back: dials the downloader and subscribes to its have-map.
    liar.dial(testing::addr(&getter, "tcp").await, LIMIT)
        .await
        .unwrap();
    let mut control = liar.stream_control();
    let mut sub = timeout(
        LIMIT,
        control.open_stream(
            getter.peer_id(),
            libp2p::StreamProtocol::new(shoal_protocol::have::HAVE_PROTOCOL),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    futures::AsyncWriteExt::write_all(
        &mut sub,
        &shoal_protocol::have::Subscribe { id: link.id }.encode(),
    )
    .await
    .unwrap();
    // An honest seeder connects (as one a tracker told about the download would).
    honest
        .node
        .dial(testing::addr(&getter, "tcp").await, LIMIT)
        .await
        .unwrap();
    let done = timeout(LIMIT, download).await.unwrap().unwrap().unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), honest.data);
    assert_eq!(
        served(&liar),
        before,
        "the liar was asked again after its ban"
    );
    assert_eq!(done.banned.len(), 1, "{:?}", done.banned);
    stop.cancel();
}
