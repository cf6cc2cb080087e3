//! The answering side of Shoal's stream protocols: [`blocks`] serves `/shoal/blob/1`
//! requests (verified ranges, under the upload slots and cap), [`have`] serves
//! `/shoal/have/1` subscriptions (frugally for super-seeded blobs). The node spawns both
//! loops at start ([`spawn`]); they read the store and share the node's counters. The asking
//! side is [`crate::wire`].

pub(crate) mod blocks;
pub(crate) mod have;

use std::sync::Arc;
#[cfg(feature = "test-utils")]
use std::sync::atomic::{AtomicU32, Ordering};

use tokio_util::sync::CancellationToken;

use crate::{config::Config, interest::Interests, stats::Stats, store::Store, wire::Client};

/// What serving needs of the node.
#[derive(Debug)]
pub(crate) struct Service {
    pub(crate) config: Config,
    pub(crate) store: Arc<Store>,
    pub(crate) stats: Arc<Stats>,
    /// Told of peers that subscribe to a blob being downloaded here.
    pub(crate) interests: Arc<Interests>,
    /// Frugal sources read their subscribers' have-maps with it.
    pub(crate) client: Client,
    pub(crate) shutdown: CancellationToken,
    /// Which peers are reached only through a relay (their bytes count as relayed).
    pub(crate) reach: Arc<std::sync::Mutex<crate::reach::Reach>>,
}

/// The next inbound stream, or `None` once the node stops (or the protocol is closed).
async fn next_stream(
    service: &Service,
    incoming: &mut libp2p_stream::IncomingStreams,
) -> Option<(libp2p::PeerId, libp2p::Stream)> {
    loop {
        let next = tokio::select! {
            () = service.shutdown.cancelled() => None,
            next = futures::StreamExt::next(incoming) => next,
        };
        #[cfg(feature = "test-utils")]
        if service.config.frozen.load(Ordering::Relaxed)
            && let Some((_, stream)) = next
        {
            // Frozen: hold the stream open, say nothing, until the node stops.
            let stop = service.shutdown.clone();
            tokio::spawn(async move {
                stop.cancelled().await;
                drop(stream);
            });
            continue;
        }
        return next;
    }
}

/// Spawns the loops that serve block requests (`blobs`) and have-map subscriptions
/// (`haves`) until `service.shutdown` is cancelled.
pub(crate) fn spawn(
    service: Service,
    blobs: libp2p_stream::IncomingStreams,
    haves: libp2p_stream::IncomingStreams,
) {
    let service = Arc::new(service);
    tokio::spawn(blocks::serve_loop(service.clone(), blobs));
    tokio::spawn(have::have_loop(service, haves));
}

/// Test only: takes one from `counter` unless it is 0; whether it did (the
/// `Config::unanswered_*` knobs).
#[cfg(feature = "test-utils")]
fn count_down(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}
