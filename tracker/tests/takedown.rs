//! Issue 4, takedowns from the nodes' side, against a real tracker on 127.0.0.1: the
//! operator's client (`shoal_node::takedown::submit`), the public list and a follower (what
//! seed nodes run), and a fetch of a link naming the tracker that stops with
//! `FetchError::TakenDown` although a peer would serve the blob. Every wait has a timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::tracker_addr;

use std::time::{Duration, Instant};

use libp2p::{Multiaddr, identity::Keypair};
use shoal_node::{
    CancellationToken, Config, Node, Store,
    fetch::{FetchError, FetchOptions, Output, Progress, fetch},
    takedown::{self, TakedownError},
    testing,
};
use shoal_protocol::BlobId;
use shoal_tracker::{ServiceConfig, Tracker};
use tokio::{sync::watch, time::timeout};

const LIMIT: Duration = Duration::from_secs(30);

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A node that only dials out (as `shoal takedown` runs one).
fn client(keypair: Keypair, stop: &CancellationToken) -> Node {
    let config = Config::loopback().with_listen(Vec::new()).with_dht(false);
    Node::start(
        config,
        keypair,
        std::sync::Arc::new(Store::in_memory()),
        stop.clone(),
    )
    .unwrap()
}

#[tokio::test]
async fn operators_take_down_anyone_lists_and_followers_hear_each_blob_once() {
    init_logging();
    let stop = CancellationToken::new();
    let operator_key = Keypair::generate_ed25519();
    let tracker = Tracker::start(
        ServiceConfig::loopback().with_operators([operator_key.public().to_peer_id()]),
        Keypair::generate_ed25519(),
        stop.clone(),
    )
    .unwrap();
    let tr = tracker_addr(&tracker).await;
    let operator = client(operator_key, &stop);
    let stranger = client(Keypair::generate_ed25519(), &stop);
    let blob = |b| BlobId::from_bytes([b; 32]);

    // Someone else: refused, and told which peer id to allow.
    let e = timeout(LIMIT, takedown::submit(&stranger, &tr, blob(1), "nope"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, TakedownError::NotOperator { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains(&format!("--operator {}", stranger.peer_id()))
            && text.contains(&tr.to_string()),
        "{text}"
    );
    // A bad reason never leaves the node.
    let e = timeout(
        LIMIT,
        takedown::submit(&operator, &tr, blob(1), "two\nlines"),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(matches!(e, TakedownError::BadReason { .. }), "{e:?}");

    // The operator; then the list, for anyone.
    let seq = timeout(LIMIT, takedown::submit(&operator, &tr, blob(1), "abuse #1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seq, 1);
    assert_eq!(
        timeout(LIMIT, takedown::list(&stranger, &tr, 0))
            .await
            .unwrap()
            .unwrap(),
        (vec![(1, blob(1))], false)
    );

    // A follower of two trackers (one of them down) hears blob 1, then blob 2 once it is
    // taken down, each once, although blob 1 is taken down again.
    let dead: Multiaddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!(
            "/ip4/127.0.0.1/tcp/{port}/p2p/{}",
            Keypair::generate_ed25519().public().to_peer_id()
        )
        .parse()
        .unwrap()
    };
    let e = timeout(LIMIT, takedown::list(&stranger, &dead, 0))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, TakedownError::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains(&dead.to_string()), "{e}");
    let mut heard = takedown::follow(
        stranger.clone(),
        vec![dead, tr.clone()],
        Duration::from_secs(1),
    );
    let first = timeout(LIMIT, heard.recv()).await.unwrap().unwrap();
    assert_eq!(first, blob(1));
    timeout(LIMIT, takedown::submit(&operator, &tr, blob(1), "again"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        timeout(LIMIT, takedown::submit(&operator, &tr, blob(2), "abuse #2"))
            .await
            .unwrap()
            .unwrap(),
        3
    );
    let second = timeout(LIMIT, heard.recv()).await.unwrap().unwrap();
    assert_eq!(second, blob(2));
    assert!(heard.try_recv().is_err(), "nothing else is listed");
    drop(heard);
    stop.cancel();
}

/// Issue 4: `get` of a link naming a tracker that took the blob down fails with the
/// takedown error, promptly, although the link's peer still serves the blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_stops_when_a_tracker_in_the_link_took_the_blob_down() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let operator_key = Keypair::generate_ed25519();
    let tracker = Tracker::start(
        ServiceConfig::loopback().with_operators([operator_key.public().to_peer_id()]),
        Keypair::generate_ed25519(),
        stop.clone(),
    )
    .unwrap();
    let tr = tracker_addr(&tracker).await;

    let testing::SharedFile { store, shared, .. } = testing::shared_file(dir.path(), 3 << 20, 5);
    let seeder = testing::node(Config::loopback().with_dht(false), store, &stop);
    let mut link = shared.link;
    link.peers
        .push(testing::addr(&seeder, "tcp").await.to_string());
    link.trackers.push(tr.to_string());

    let operator = client(operator_key, &stop);
    takedown::submit(&operator, &tr, link.id, "test takedown")
        .await
        .unwrap();

    let getter = testing::node(
        Config::loopback().with_dht(false),
        std::sync::Arc::new(Store::in_memory()),
        &stop,
    );
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let (progress, _watch) = watch::channel(Progress::default());
    let started = Instant::now();
    let result = timeout(
        LIMIT,
        fetch(
            &getter,
            &link,
            FetchOptions::new(Output::Dir(out.clone())),
            progress,
        ),
    )
    .await
    .expect("the fetch ends");
    let took = started.elapsed();
    match result {
        Err(FetchError::TakenDown { id, tracker }) => {
            assert_eq!(id, link.id);
            assert_eq!(tracker, tr);
        }
        other => panic!("expected TakenDown, got {other:?}"),
    }
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // Nothing was published under a final name.
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| n.starts_with(".shoal-")), "{names:?}");
    stop.cancel();
}
