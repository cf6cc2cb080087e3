//! One module per subcommand: `Args` (clap) and `run`.

pub(crate) mod crypt;
pub(crate) mod demo;
pub(crate) mod get;
pub(crate) mod id;
pub(crate) mod inspect;
pub(crate) mod push;
pub(crate) mod seed;
pub(crate) mod seed_node;
pub(crate) mod share;
pub(crate) mod takedown;
pub(crate) mod tracker;

use futures::StreamExt;
use libp2p::{Multiaddr, multiaddr::Protocol};
use shoal_node::{Config, DhtError, Node, seal::KeyMode};
use shoal_protocol::BlobId;

/// Blobs announced in the DHT at once by `share` and `seed` (each waits for its first
/// publication; Kademlia republishes them hourly afterwards).
const PROVIDE_CONCURRENCY: usize = 4;

/// DHT flags (shared by `share`, `get` and `seed`).
#[derive(clap::Args, Debug)]
pub(crate) struct DhtArgs {
    /// A DHT bootstrap peer: any running Shoal node (multiaddr ending in /p2p/PEER_ID, as
    /// `shoal seed` prints it). Through it this node joins the Shoal DHT: it announces
    /// there what it seeds, and finds peers there when no tracker or link hint gives one
    /// (so links without hints work). Repeatable, or comma-separated in the environment.
    #[arg(
        long,
        value_name = "MULTIADDR",
        env = "SHOAL_BOOTSTRAP",
        value_delimiter = ',',
        value_parser = crate::ui::parse_peer_addr
    )]
    bootstrap: Vec<Multiaddr>,
    /// Stay out of the DHT: no lookups, no provider records, no answering other nodes'
    /// DHT queries (--bootstrap is then ignored).
    #[arg(long)]
    no_dht: bool,
}

impl DhtArgs {
    /// `config` with these DHT settings.
    pub(crate) fn apply(&self, config: Config) -> Config {
        if self.no_dht {
            config.with_dht(false).with_bootstrap(Vec::new())
        } else {
            config.with_dht(true).with_bootstrap(self.bootstrap.clone())
        }
    }
}

/// Reachability flags of home nodes (shared by `share`, `get` and `seed`); see docs/node.md
/// "Reachability".
#[derive(clap::Args, Debug)]
pub(crate) struct ReachArgs {
    /// Do not ask the router to forward a port (UPnP IGD). Without a mapping, peers behind
    /// other NATs reach this node through a relay and hole punching.
    #[arg(long)]
    no_upnp: bool,
    /// Do not listen through relays (the seed nodes' and trackers'), even when no address
    /// of this node is reachable from outside: peers behind NAT then cannot reach it.
    #[arg(long)]
    no_relay: bool,
}

impl ReachArgs {
    /// `config` with these settings.
    pub(crate) fn apply(&self, config: Config) -> Config {
        config.with_upnp(!self.no_upnp).with_relays(!self.no_relay)
    }
}

/// Announces `ids` in the DHT in the background, a few at a time. A blob no DHT peer took
/// now stays provided locally and goes out with the hourly republication; that is worth a
/// warning only when bootstrap peers were given (without, nobody is expected to hear it).
pub(crate) fn provide_all(node: &Node, ids: Vec<BlobId>) {
    if !node.config().dht {
        return;
    }
    let node = node.clone();
    tokio::spawn(async move {
        let expected = !node.config().bootstrap.is_empty();
        futures::stream::iter(ids)
            .for_each_concurrent(PROVIDE_CONCURRENCY, |id| {
                let node = node.clone();
                async move {
                    match node.provide(id).await {
                        Ok(()) => tracing::info!(blob = %id, "announced in the DHT"),
                        Err(e @ (DhtError::NoPeers | DhtError::Timeout(_))) if expected => {
                            tracing::warn!(blob = %id, error = %e, "not announced in the DHT yet; it is announced again within the hour");
                        }
                        Err(e) => tracing::debug!(blob = %id, error = %e, "not announced in the DHT"),
                    }
                }
            })
            .await;
    });
}

/// How the content key is chosen (shared by `share` and `encrypt`).
#[derive(clap::Args, Debug)]
pub(crate) struct KeyArgs {
    /// Derive the key from the content, so identical files shared this way (same bytes,
    /// name and media type) dedupe. Anyone holding the same file can then tell that this
    /// link is that file.
    #[arg(long)]
    convergent: bool,
    /// Secret for --convergent: dedupe only among holders of this secret.
    #[arg(
        long,
        requires = "convergent",
        env = "SHOAL_CONVERGENCE_SECRET",
        hide_env_values = true
    )]
    secret: Option<String>,
}

impl KeyArgs {
    pub(crate) fn mode(&self) -> KeyMode {
        if self.convergent {
            KeyMode::Convergent {
                secret: self.secret.clone().unwrap_or_default().into_bytes(),
            }
        } else {
            KeyMode::Random
        }
    }
}

/// Peer hints for a link: the node's concrete listen addresses with `/p2p/<id>`, routable
/// ones first, at most `max`.
pub(crate) fn peer_hints(addrs: &[Multiaddr], peer: libp2p::PeerId, max: usize) -> Vec<String> {
    let is_loopback = |a: &Multiaddr| {
        a.iter().any(|p| {
            matches!(p, Protocol::Ip4(ip) if ip.is_loopback())
                || matches!(p, Protocol::Ip6(ip) if ip.is_loopback())
        })
    };
    let is_unspecified = |a: &Multiaddr| {
        a.iter().any(|p| {
            matches!(p, Protocol::Ip4(ip) if ip.is_unspecified())
                || matches!(p, Protocol::Ip6(ip) if ip.is_unspecified())
        })
    };
    // Each address once (interfaces report theirs one by one, and a caller may gather the
    // list twice), then the reachable ones before loopback.
    let mut seen = std::collections::HashSet::new();
    let mut v: Vec<&Multiaddr> = addrs
        .iter()
        .filter(|a| !is_unspecified(a) && seen.insert(*a))
        .collect();
    v.sort_by_key(|a| is_loopback(a));
    v.into_iter()
        .take(max)
        .map(|a| format!("{a}/p2p/{peer}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11: two `--listen` addresses gave four `peer=` hints (the list was gathered twice
    /// and `Vec::dedup` only drops neighbours).
    #[test]
    fn peer_hints_name_each_address_once_routable_first() {
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let a: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let b: Multiaddr = "/ip4/192.168.1.2/tcp/2".parse().unwrap();
        let any: Multiaddr = "/ip4/0.0.0.0/tcp/3".parse().unwrap();
        let hints = peer_hints(&[a.clone(), b.clone(), any, a.clone(), b.clone()], peer, 8);
        assert_eq!(
            hints,
            vec![format!("{b}/p2p/{peer}"), format!("{a}/p2p/{peer}")]
        );
    }
}
