//! Helpers shared by the tracker's integration tests.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use libp2p::Multiaddr;
use shoal_tracker::Tracker;

/// The tracker's TCP address with `/p2p/<id>`, as a link's `tr=` hint carries it.
pub(crate) async fn tracker_addr(tracker: &Tracker) -> Multiaddr {
    let addrs = tracker.listen_addrs(Duration::from_secs(10)).await;
    let tcp = addrs
        .iter()
        .find(|a| a.to_string().contains("/tcp/"))
        .expect("the tracker listens on TCP");
    format!("{tcp}/p2p/{}", tracker.peer_id()).parse().unwrap()
}
