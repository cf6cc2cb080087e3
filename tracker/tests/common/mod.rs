//! Helpers shared by the tracker's integration tests.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use libp2p::{Multiaddr, identity::Keypair};
use shoal_node::CancellationToken;
use shoal_protocol::Link;
use shoal_tracker::{ServiceConfig, Tracker};

/// The tracker's TCP address with `/p2p/<id>`, as a link's `tr=` hint carries it.
pub(crate) async fn tracker_addr(tracker: &Tracker) -> Multiaddr {
    let addrs = tracker.listen_addrs(Duration::from_secs(10)).await;
    let tcp = addrs
        .iter()
        .find(|a| a.to_string().contains("/tcp/"))
        .expect("the tracker listens on TCP");
    format!("{tcp}/p2p/{}", tracker.peer_id()).parse().unwrap()
}

/// A tracker with `config` and a fresh identity, and its address as [`tracker_addr`] gives it.
pub(crate) async fn start_tracker(
    config: ServiceConfig,
    stop: &CancellationToken,
) -> (Tracker, Multiaddr) {
    let tracker = Tracker::start(config, Keypair::generate_ed25519(), stop.clone())
        .expect("the tracker starts");
    let tr = tracker_addr(&tracker).await;
    (tracker, tr)
}

/// `link` with no peer hints, naming only the tracker at `tr`: a downloader finds peers
/// through the tracker alone.
pub(crate) fn tracker_only(link: &Link, tr: &Multiaddr) -> Link {
    let mut link = link.clone();
    link.peers.clear();
    link.trackers = vec![tr.to_string()];
    link
}
