//! Node configuration. `Default` suits a home machine; the CLI validates flags into this.

use std::time::Duration;

use libp2p::Multiaddr;
use shoal_protocol::slots;
/// Default lifetime of the provider records other nodes keep for us ([`Config::dht_provider_ttl`]).
pub const DHT_PROVIDER_TTL: Duration = Duration::from_secs(3 * 60 * 60);
/// Default interval at which this node republishes its provider records
/// ([`Config::dht_republish_interval`]): well within the TTL, so a record outlives one missed
/// republication.
pub const DHT_REPUBLISH_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// How a node listens, serves and fetches.
#[derive(Clone, Debug)]
pub struct Config {
    /// Addresses to listen on. Default: QUIC and TCP on all IPv4 interfaces, random ports.
    pub listen: Vec<Multiaddr>,
    /// Concurrent upload streams; further requests are answered `busy`. Default 32.
    pub max_upload_streams: usize,
    /// Upload cap in bytes per second across all peers; `None` or `Some(0)` = unlimited
    /// (default `None`). Read it with [`Config::upload_cap`].
    pub upload_limit_bytes_per_sec: Option<u64>,
    /// Most established connections in total (default 256; a home router copes) and
    /// per peer (default 2: one each way when two peers dial each other at once). Further
    /// connections are refused.
    pub max_connections: u32,
    /// See [`Config::max_connections`].
    pub max_connections_per_peer: u32,
    /// How long a peer may take to send a request, or to send the next bytes of a
    /// response, before the stream is dropped. Default 20 s.
    pub request_timeout: Duration,
    /// How long an idle connection is kept. Default 60 s.
    pub idle_timeout: Duration,
    /// How long to wait for a connection to a peer. Default 10 s.
    pub dial_timeout: Duration,
    /// Take part in the Shoal DHT (Kademlia on `/shoal/kad/1`, docs/node.md "Trackerless"):
    /// answer other nodes' lookups, keep provider records for them, and look up providers
    /// when trackers and link hints give no peer. Default `true`.
    pub dht: bool,
    /// DHT bootstrap peers: multiaddrs ending in `/p2p/<peer id>`. Added to the routing
    /// table at start (then a bootstrap lookup runs, and again every 5 minutes). Default
    /// empty: the node then only learns DHT peers from the peers it meets.
    pub bootstrap: Vec<Multiaddr>,
    /// How long other nodes keep the provider records this node stores for them (and how
    /// long this node keeps theirs). Default [`DHT_PROVIDER_TTL`] (3 h).
    pub dht_provider_ttl: Duration,
    /// How often this node republishes a provider record for every blob it provides, so
    /// the record outlives its TTL and reaches peers that joined since. Default
    /// [`DHT_REPUBLISH_INTERVAL`] (1 h); keep it well below the TTL.
    pub dht_republish_interval: Duration,
    /// Map the listen ports on the local router with UPnP IGD, so peers can dial this node
    /// through its NAT (docs/node.md "Reachability"). Default `true`; [`Config::loopback`]
    /// turns it off (no multicast search from tests).
    pub upnp: bool,
    /// Reserve a slot at relays this node meets (seed nodes and trackers that run a relay
    /// server) while no address of its own is confirmed reachable, and listen there, so
    /// peers behind other NATs can reach it and hole-punch a direct connection. Default
    /// `true`.
    pub use_relays: bool,
    /// Run a circuit relay v2 server and an AutoNAT v2 server for other nodes, with these
    /// limits: seed nodes do ([`RelayLimits::seed_node`]). Default `None`.
    pub relay_server: Option<RelayLimits>,
    /// Test only: flip a byte in every block served, to play a lying peer.
    #[cfg(feature = "test-utils")]
    pub corrupt_uploads: bool,
    /// Test only: close this many block requests of more than two blocks without answering
    /// (what libp2p-stream does to inbound streams a loaded node has not taken yet); counts
    /// down, shared by the config's clones.
    #[cfg(feature = "test-utils")]
    pub unanswered_requests: std::sync::Arc<std::sync::atomic::AtomicU32>,
    /// Test only: close this many have-map subscriptions without answering, likewise.
    #[cfg(feature = "test-utils")]
    pub unanswered_subscriptions: std::sync::Arc<std::sync::atomic::AtomicU32>,
    /// Test only: while set, every inbound block request and have-map subscription is held
    /// open without a word (a frozen process: stopped, swapping, a hung disk). Shared by
    /// the config's clones.
    #[cfg(feature = "test-utils")]
    pub frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/udp/0/quic-v1"
                    .parse()
                    .expect("valid multiaddr"),
                "/ip4/0.0.0.0/tcp/0".parse().expect("valid multiaddr"),
            ],
            max_upload_streams: 32,
            upload_limit_bytes_per_sec: None,
            max_connections: 256,
            max_connections_per_peer: 2,
            request_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            dial_timeout: Duration::from_secs(10),
            dht: true,
            bootstrap: Vec::new(),
            dht_provider_ttl: DHT_PROVIDER_TTL,
            dht_republish_interval: DHT_REPUBLISH_INTERVAL,
            upnp: true,
            use_relays: true,
            relay_server: None,
            #[cfg(feature = "test-utils")]
            corrupt_uploads: false,
            #[cfg(feature = "test-utils")]
            unanswered_requests: std::sync::Arc::default(),
            #[cfg(feature = "test-utils")]
            unanswered_subscriptions: std::sync::Arc::default(),
            #[cfg(feature = "test-utils")]
            frozen: std::sync::Arc::default(),
        }
    }
}

impl Config {
    /// Listen only on loopback (tests, the demo).
    pub fn loopback() -> Self {
        Self {
            listen: vec![
                "/ip4/127.0.0.1/udp/0/quic-v1"
                    .parse()
                    .expect("valid multiaddr"),
                "/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr"),
            ],
            upnp: false,
            ..Self::default()
        }
    }

    /// Sets the listen addresses.
    pub fn with_listen(mut self, listen: Vec<Multiaddr>) -> Self {
        self.listen = listen;
        self
    }

    /// Sets the DHT bootstrap peers (multiaddrs ending in `/p2p/<peer id>`).
    pub fn with_bootstrap(mut self, bootstrap: Vec<Multiaddr>) -> Self {
        self.bootstrap = bootstrap;
        self
    }

    /// Turns the DHT on or off.
    pub const fn with_dht(mut self, dht: bool) -> Self {
        self.dht = dht;
        self
    }

    /// Turns UPnP port mapping on or off ([`Config::upnp`]).
    pub const fn with_upnp(mut self, upnp: bool) -> Self {
        self.upnp = upnp;
        self
    }

    /// Turns reservations at relays on or off ([`Config::use_relays`]).
    pub const fn with_relays(mut self, use_relays: bool) -> Self {
        self.use_relays = use_relays;
        self
    }

    /// Runs a relay and AutoNAT server for others with these limits, or not
    /// ([`Config::relay_server`]).
    pub const fn with_relay_server(mut self, limits: Option<RelayLimits>) -> Self {
        self.relay_server = limits;
        self
    }

    /// Upload slots: how many requests are served at once, and how many of one peer;
    /// further ones are answered `busy` so the requester goes to another peer instead of
    /// queueing. Derived from the upload cap and `max_upload_streams` by
    /// [`slots::Config::for_upload`] (the rule, shared with the simulator; see docs/node.md
    /// on choking).
    pub fn upload_slots(&self) -> slots::Config {
        slots::Config::for_upload(self.upload_cap(), self.max_upload_streams)
    }

    /// The upload cap in force, in bytes per second: `None` without one. A cap of 0 is none
    /// (a cap of nothing would answer every request `busy`: no command means that).
    pub fn upload_cap(&self) -> Option<u64> {
        self.upload_limit_bytes_per_sec.filter(|&r| r > 0)
    }

    /// Sets the upload cap in bytes per second; `None` or `Some(0)` = unlimited.
    pub const fn with_upload_limit(mut self, bytes_per_sec: Option<u64>) -> Self {
        self.upload_limit_bytes_per_sec = bytes_per_sec;
        self
    }
}

/// What a relay server (libp2p circuit relay v2) grants to others. libp2p's defaults (2 min
/// and 128 KiB per circuit) only suit hole-punch coordination; a Shoal relay also carries
/// block traffic between peers that cannot reach each other any other way (two symmetric
/// NATs), within these bounds. A circuit that reaches its byte or time limit is closed; the
/// peers then open another one or use the seed nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Reservations held at once (nodes listening through this relay).
    pub max_reservations: usize,
    /// Reservations one peer may hold.
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts before the node must renew it (libp2p's client renews).
    pub reservation_duration: Duration,
    /// Circuits relayed at once.
    pub max_circuits: usize,
    /// Circuits at once to or from one peer.
    pub max_circuits_per_peer: usize,
    /// Longest life of one circuit.
    pub max_circuit_duration: Duration,
    /// Most bytes one circuit carries (both directions together).
    pub max_circuit_bytes: u64,
}

impl RelayLimits {
    /// A seed node's relay: 256 reservations (2 per peer) for an hour, 64 circuits (16 per
    /// peer), each for up to 30 minutes and 64 MiB. A peer behind a symmetric NAT reaches
    /// every other NATed peer of a swarm only through circuits, one per peer: with libp2p's
    /// 4 per peer it reached four, and the circuits it asked for beyond them were refused
    /// for the whole download.
    pub const fn seed_node() -> Self {
        Self {
            max_reservations: 256,
            max_reservations_per_peer: 2,
            reservation_duration: Duration::from_secs(60 * 60),
            max_circuits: 64,
            max_circuits_per_peer: 16,
            max_circuit_duration: Duration::from_secs(30 * 60),
            max_circuit_bytes: 64 << 20,
        }
    }

    /// A tracker's relay: as many reservations, but smaller circuits (10 minutes, 16 MiB):
    /// a tracker coordinates hole punches and carries little data.
    pub const fn tracker() -> Self {
        Self {
            max_circuit_duration: Duration::from_secs(10 * 60),
            max_circuit_bytes: 16 << 20,
            ..Self::seed_node()
        }
    }

    /// The libp2p relay configuration with these limits, and token buckets on how often
    /// reservations and circuits may be asked for: per peer, 8 reservations then one per
    /// 30 s, 32 circuits then one per 5 s; per IP address, 64 reservations then one per 5 s,
    /// 256 circuits then one per second. libp2p's defaults (60 circuits per IP, then one a
    /// minute) starve the many nodes behind one carrier-grade NAT: the NAT lab, whose
    /// downloaders share one router address, ran out of them after 30 trials.
    pub fn relay_config(&self) -> libp2p::relay::Config {
        let n = |v: u32| std::num::NonZeroU32::new(v).expect("a positive constant");
        libp2p::relay::Config {
            max_reservations: self.max_reservations,
            max_reservations_per_peer: self.max_reservations_per_peer,
            reservation_duration: self.reservation_duration,
            max_circuits: self.max_circuits,
            max_circuits_per_peer: self.max_circuits_per_peer,
            max_circuit_duration: self.max_circuit_duration,
            max_circuit_bytes: self.max_circuit_bytes,
            reservation_rate_limiters: Vec::new(),
            circuit_src_rate_limiters: Vec::new(),
        }
        .reservation_rate_per_peer(n(8), Duration::from_secs(30))
        .reservation_rate_per_ip(n(64), Duration::from_secs(5))
        .circuit_src_per_peer(n(32), Duration::from_secs(5))
        .circuit_src_per_ip(n(256), Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11: `--up-limit 0` answered every request `busy`; 0 is no cap, read in one place.
    #[test]
    fn a_cap_of_zero_is_no_cap() {
        let zero = Config::default().with_upload_limit(Some(0));
        assert_eq!(zero.upload_cap(), None);
        assert_eq!(zero.upload_slots(), Config::default().upload_slots());
        let capped = Config::default().with_upload_limit(Some(1 << 20));
        assert_eq!(capped.upload_cap(), Some(1 << 20));
        assert_eq!(capped.upload_slots().slots_per_peer, 2);
    }
}
