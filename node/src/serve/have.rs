//! Serving `/shoal/have/1`: have-map subscriptions. A subscriber gets the whole map, then
//! what is added; a frugal source ([`shoal_protocol::superseed`]) shows each peer only what
//! it reveals to it, and reads each subscriber's own have-map back.

use std::{sync::Arc, time::Duration};

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::{PeerId, Stream};
use shoal_protocol::{
    blob::{BlockRange, block_count},
    have::{self, HaveMsg, SUBSCRIBE_LEN, Subscribe},
};
use tokio::sync::Semaphore;
use tracing::debug;

#[cfg(feature = "test-utils")]
use super::count_down;
use super::{Service, next_stream};
use crate::store::Source;

/// Most have-map subscriptions served at once; more are closed at once.
pub(crate) const MAX_HAVE_SUBSCRIPTIONS: usize = 512;
/// Shortest time between two have-map updates on one subscription: blocks verified
/// meanwhile go in one frame.
const HAVE_UPDATE_EVERY: Duration = Duration::from_millis(100);
/// A frugal source re-subscribes to a subscriber's own have-map this long after it was
/// refused (the peer still bootstrapping) or the stream broke, doubling up to the maximum;
/// a complete peer's (closed after its full map) is read again at the maximum.
const SUBSCRIBE_BACK_FIRST_RETRY: Duration = Duration::from_millis(300);
const SUBSCRIBE_BACK_MAX_RETRY: Duration = Duration::from_secs(5);

/// Takes `/shoal/have/1` subscriptions until the node stops, each served on a task of its
/// own (at most [`MAX_HAVE_SUBSCRIPTIONS`] at once).
pub(super) async fn have_loop(inner: Arc<Service>, mut incoming: libp2p_stream::IncomingStreams) {
    let slots = Arc::new(Semaphore::new(MAX_HAVE_SUBSCRIPTIONS));
    while let Some((peer, mut stream)) = next_stream(&inner, &mut incoming).await {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream); // at the limit: the peer sees the stream end and asks again later
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let res = tokio::select! {
                () = inner.shutdown.cancelled() => Ok(()),
                res = serve_have(&inner, peer, &mut stream) => res,
            };
            if let Err(e) = res {
                debug!(peer = %peer, error = %e, "have subscription ended");
            }
            drop(permit);
        });
    }
}

/// Serves one have-map subscription: the whole map, then what is added, until the blob is
/// complete, the subscriber closes the stream, or the download is abandoned.
async fn serve_have(
    inner: &Arc<Service>,
    peer: PeerId,
    stream: &mut Stream,
) -> std::io::Result<()> {
    #[cfg(feature = "test-utils")]
    if count_down(&inner.config.unanswered_subscriptions) {
        return Ok(()); // dropped unanswered
    }
    let mut sub = [0u8; SUBSCRIBE_LEN];
    tokio::time::timeout(inner.config.request_timeout, stream.read_exact(&mut sub))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no subscription"))??;
    let Ok(Subscribe { id }) = Subscribe::decode(&sub) else {
        return stream.close().await;
    };
    let Some(source) = inner.store.get(&id) else {
        stream.write_all(&HaveMsg::NotFound.encode_frame()).await?;
        return stream.close().await;
    };
    // Someone fetching this blob: if we are fetching it too, they are worth asking.
    inner.interests.notify(id, peer);
    let total = u32::try_from(block_count(source.blob_len())).expect("MAX_FILE_LEN bounds blocks");
    if source.is_frugal() {
        return serve_have_frugal(inner, peer, stream, source, total).await;
    }
    let Some(held) = source.held().cloned() else {
        let all = [BlockRange {
            start: 0,
            end: total,
        }];
        for msg in have::frames(total, &all) {
            stream.write_all(&msg.encode_frame()).await?;
        }
        return stream.close().await;
    };
    drop(source); // hold only the have-map: an abandoned download drops it and ends this
    let mut changed = held.subscribe();
    let mut told = held.snapshot();
    for msg in have::frames(total, &told.ranges()) {
        stream.write_all(&msg.encode_frame()).await?;
    }
    let mut eof = [0u8; 1];
    while !told.is_full() {
        tokio::select! {
            r = changed.changed() => if r.is_err() { break },
            // The subscriber sends nothing after subscribing: a read returns when it closes.
            _ = stream.read(&mut eof) => return Ok(()),
        }
        tokio::time::sleep(HAVE_UPDATE_EVERY).await; // batch what arrives meanwhile
        let now = held.snapshot();
        for msg in have::frames(total, &now.difference_ranges(&told)) {
            stream.write_all(&msg.encode_frame()).await?;
        }
        told = now;
    }
    stream.close().await
}

/// Serves one have-map subscription to a blob served frugally: only the blocks revealed to
/// this peer ([`shoal_protocol::superseed`]), more as it fetches them. The first subscription of a peer
/// starts [`listen_frugal_peer`].
async fn serve_have_frugal(
    inner: &Arc<Service>,
    peer: PeerId,
    stream: &mut Stream,
    source: Arc<Source>,
    total: u32,
) -> std::io::Result<()> {
    let Some(new_peer) = source
        .super_seed()
        .map(|mut ss| ss.handle_subscribe(std::time::Instant::now(), peer))
    else {
        return Ok(());
    };
    debug!(%peer, blob = %source.id(), new_peer, "frugal: subscribed");
    if new_peer {
        // One listener per peer, for as long as it subscribes to us or serves its own
        // have-map (a downloader that completes stops subscribing but goes on serving).
        tokio::spawn(listen_frugal_peer(
            inner.clone(),
            peer,
            source.clone(),
            total,
        ));
    }
    // A re-subscription is shown what was revealed before first.
    let mut new = source
        .super_seed()
        .map(|ss| ss.revealed_to(&peer))
        .unwrap_or_default();
    let mut eof = [0u8; 1];
    let result = async {
        loop {
            new.extend(
                source
                    .super_seed()
                    .map(|mut ss| ss.poll_reveal(std::time::Instant::now(), &peer))
                    .unwrap_or_default(),
            );
            new.sort_unstable();
            for msg in have::frames(total, &new) {
                stream.write_all(&msg.encode_frame()).await?;
            }
            new.clear();
            tokio::select! {
                // Blocks served (a window may have room) or, at the latest, what peers
                // reported meanwhile.
                () = source.served() => {}
                () = tokio::time::sleep(HAVE_UPDATE_EVERY) => {}
                // The subscriber sends nothing after subscribing: a read returns when it closes.
                _ = stream.read(&mut eof) => return Ok(()),
            }
        }
    }
    .await;
    if let Some(mut ss) = source.super_seed() {
        ss.handle_unsubscribe(std::time::Instant::now(), &peer);
    }
    debug!(%peer, blob = %source.id(), "frugal: unsubscribed");
    result
}

/// Listens to a frugal source's subscriber's own have-map, so the frugal state knows what
/// the swarm holds, until the peer has left: it is not subscribed to ours and its own
/// cannot be read. A peer still bootstrapping answers "not found" and a stream can break:
/// it is asked again meanwhile. A peer that completes closes its have-map after the full
/// map: it goes on serving, so it is asked again now and then, and stays counted while
/// it answers (without that, what only it received from us would look lost and be sent
/// again).
async fn listen_frugal_peer(inner: Arc<Service>, peer: PeerId, source: Arc<Source>, total: u32) {
    let id = source.id();
    let mut pause = SUBSCRIBE_BACK_FIRST_RETRY;
    loop {
        let result = inner
            .client
            .read_have_map(peer, id, total, |ranges| {
                if let Some(mut ss) = source.super_seed() {
                    ss.handle_have(std::time::Instant::now(), &peer, &ranges);
                }
                std::future::ready(true)
            })
            .await;
        // Taken down or replaced meanwhile: nothing left to serve frugally.
        let served = inner
            .store
            .get(&id)
            .is_some_and(|s| Arc::ptr_eq(&s, &source));
        if !served {
            return;
        }
        if let Err(e) = result {
            if source
                .super_seed()
                .is_none_or(|mut ss| ss.handle_have_closed(std::time::Instant::now(), &peer))
            {
                debug!(%peer, blob = %id, error = %e, "frugal: peer left");
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(SUBSCRIBE_BACK_MAX_RETRY);
        } else {
            // Closed after its whole map: complete, still here.
            tokio::time::sleep(SUBSCRIBE_BACK_MAX_RETRY).await;
        }
    }
}
