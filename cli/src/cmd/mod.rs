//! One module per subcommand: `Args` (clap) and `run`.

pub(crate) mod crypt;
pub(crate) mod demo;
pub(crate) mod get;
pub(crate) mod inspect;
pub(crate) mod seed;
pub(crate) mod share;
pub(crate) mod tracker;

use libp2p::{Multiaddr, multiaddr::Protocol};
use shoal_node::seal::KeyMode;

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
    let mut v: Vec<&Multiaddr> = addrs.iter().filter(|a| !is_unspecified(a)).collect();
    v.sort_by_key(|a| is_loopback(a));
    v.into_iter()
        .take(max)
        .map(|a| format!("{a}/p2p/{peer}"))
        .collect()
}
