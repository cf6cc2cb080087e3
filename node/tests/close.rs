//! A stream whose connection closes must end, not wait forever. yamux leaves the streams of a
//! gracefully closed connection asleep (its `poll_close` never wakes their readers), so a
//! have-map subscription — which waits for the next frame without a timeout — hung when the
//! node closed a relayed connection for a direct one (issue 13, the NAT lab's first TCP
//! trials). Real libp2p nodes on 127.0.0.1; every wait has a timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{sync::Arc, time::Duration};

use futures::{AsyncReadExt, StreamExt};
use libp2p::StreamProtocol;
use shoal_node::{CancellationToken, Config, Store, testing};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(10);
const PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal-test/hold/1");

/// B opens a stream to A over `kind` ("tcp" or "quic-v1"); A holds it open and silent; B
/// waits for a byte, then closes the connection: the read must end at once.
async fn a_read_ends_when_the_connection_closes(kind: &str) {
    let stop = CancellationToken::new();
    let config = || Config::loopback().with_dht(false);
    let a = testing::node(config(), Arc::new(Store::in_memory()), &stop);
    let b = testing::node(config(), Arc::new(Store::in_memory()), &stop);
    let mut incoming = a.stream_control().accept(PROTOCOL).unwrap();
    let held = tokio::spawn(async move {
        // Keep the stream, never write.
        let s = incoming.next().await;
        std::future::pending::<()>().await;
        drop(s);
    });
    let addr = testing::addr(&a, kind).await;
    b.dial(addr, LIMIT).await.unwrap();
    let mut stream = timeout(LIMIT, b.stream_control().open_stream(a.peer_id(), PROTOCOL))
        .await
        .expect("the stream opens in time")
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut byte = [0u8; 1];
        stream.read(&mut byte).await
    });
    // The read is waiting; now the connection goes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !reader.is_finished(),
        "nothing was written: the read must wait"
    );
    b.disconnect(a.peer_id()).await;
    let ended = timeout(LIMIT, reader)
        .await
        .unwrap_or_else(|_| panic!("{kind}: the read still waits after its connection closed"))
        .unwrap();
    assert!(
        matches!(ended, Ok(0) | Err(_)),
        "{kind}: a read on a closed connection gave data: {ended:?}"
    );
    held.abort();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_ends_when_its_tcp_connection_closes() {
    a_read_ends_when_the_connection_closes("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_ends_when_its_quic_connection_closes() {
    a_read_ends_when_the_connection_closes("quic-v1").await;
}
