//! The libp2p behaviours a node runs, composed into one. Its own module so that the event
//! loop that owns the swarm ([`crate::node`]) and the parts of it that drive one behaviour
//! ([`crate::dht`]) both name the type without importing each other.

use libp2p::{
    identify, kad, ping, request_response,
    swarm::{NetworkBehaviour, behaviour::toggle::Toggle},
};

use crate::tracker_codec::TrackerCodec;

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
}
