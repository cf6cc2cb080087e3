//! The libp2p behaviours a node runs, composed into one. Its own module so that the event
//! loop that owns the swarm ([`crate::node`]) and the parts of it that drive one behaviour
//! ([`crate::dht`]) both name the type without importing each other.

use libp2p::{
    autonat, dcutr, identify, kad, ping, relay, request_response,
    swarm::{NetworkBehaviour, behaviour::toggle::Toggle},
    upnp,
};

use crate::{config::Config, tracker_codec::TrackerCodec};

/// The Kademlia behaviour a node runs.
pub(crate) type Kad = kad::Behaviour<kad::store::MemoryStore>;

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) limits: libp2p::connection_limits::Behaviour,
    pub(crate) stream: libp2p_stream::Behaviour,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    /// Announces and scrapes to trackers (outbound only: a node answers no tracker requests).
    pub(crate) tracker: request_response::Behaviour<TrackerCodec>,
    /// The Shoal DHT (off when `Config::dht` is false).
    pub(crate) kad: Toggle<Kad>,
    /// Reservations at relays and circuits through them (the transport half is in the swarm).
    pub(crate) relay_client: relay::client::Behaviour,
    /// Hole punching: turns a relayed connection into a direct one.
    pub(crate) dcutr: dcutr::Behaviour,
    /// Asks AutoNAT servers to dial this node's address candidates back; a success confirms
    /// the address as reachable.
    pub(crate) autonat: autonat::v2::client::Behaviour,
    /// Seed nodes: relay for others (`Config::relay_server`).
    pub(crate) relay_server: Toggle<relay::Behaviour>,
    /// Seed nodes: dial other nodes' candidates back for them.
    pub(crate) autonat_server: Toggle<autonat::v2::server::Behaviour>,
    /// Port mapping on the local router (`Config::upnp`).
    pub(crate) upnp: Toggle<upnp::tokio::Behaviour>,
}

impl Behaviour {
    /// The reachability behaviours `config` asks for, for the node `local`.
    pub(crate) fn reachability(
        local: libp2p::PeerId,
        config: &Config,
    ) -> (
        Toggle<relay::Behaviour>,
        Toggle<autonat::v2::server::Behaviour>,
        Toggle<upnp::tokio::Behaviour>,
    ) {
        let relay = config
            .relay_server
            .map(|limits| relay::Behaviour::new(local, limits.relay_config()));
        let autonat = config
            .relay_server
            .map(|_| autonat::v2::server::Behaviour::default());
        let upnp = config.upnp.then(upnp::tokio::Behaviour::default);
        (relay.into(), autonat.into(), upnp.into())
    }
}
