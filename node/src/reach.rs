//! Where this node stands on the network, and what it does about it: which of its addresses
//! are confirmed reachable (AutoNAT, UPnP), which relays it listens through while none is,
//! and which connections are relayed.
//!
//! Sans-IO: the event loop (`node.rs`, behind [`crate::Node`]) feeds it swarm events and carries out what it
//! answers (listen on a relay, stop listening, close a relayed connection).
//!
//! The policy (docs/node.md "Reachability"):
//! - A node with no confirmed address reserves a slot at up to [`MAX_RELAYS`] relays it meets
//!   (seed nodes and trackers that speak the relay hop protocol) and listens there. Once an
//!   address of its own is confirmed, it stops: a reachable node needs no relay.
//! - A relayed connection is for hole punching and for peers that cannot reach each other
//!   any other way: once a peer also has a direct connection, the relayed ones to it are
//!   closed, so block streams (which pick any connection to the peer) go direct.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant},
};

use libp2p::{
    Multiaddr, PeerId, core::transport::ListenerId, multiaddr::Protocol, swarm::ConnectionId,
};

/// Most relays a node listens through at once.
pub const MAX_RELAYS: usize = 2;
/// Most hole-punch results kept (the oldest go first).
pub const MAX_PUNCHES: usize = 256;

/// How peers can reach this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reachability {
    /// Not known yet (no AutoNAT answer, no relay reservation).
    Unknown,
    /// An address of its own was dialled back by an AutoNAT server.
    Direct,
    /// A port mapped on the router with UPnP was confirmed.
    Upnp,
    /// Only through a relay (other peers behind NAT then hole-punch a direct connection).
    Relay,
}

impl Reachability {
    /// The word the CLI prints.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Direct => "direct",
            Self::Upnp => "upnp",
            Self::Relay => "relay",
        }
    }
}

/// One hole punch: a relayed connection to `peer` that became a direct one, or did not.
#[derive(Debug, Clone, PartialEq)]
pub struct Punch {
    /// The other side.
    pub peer: PeerId,
    /// Whether a direct connection resulted.
    pub ok: bool,
    /// From the first relayed connection to the peer to the result.
    pub after: Duration,
    /// When the result came.
    pub at: Instant,
}

/// A relay this node asked for a reservation.
#[derive(Debug)]
struct Relay {
    /// The listener on the circuit address, once listening started.
    listener: Option<ListenerId>,
    /// Whether the relay accepted the reservation.
    accepted: bool,
}

/// Connections to one peer, by kind.
#[derive(Debug, Default)]
struct Conns {
    direct: BTreeSet<ConnectionId>,
    relayed: BTreeSet<ConnectionId>,
    /// When the first relayed connection of this spell of being connected came up.
    relayed_since: Option<Instant>,
}

/// What the event loop should do after an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Listen on this circuit address (a reservation at its relay).
    Listen(PeerId, Multiaddr),
    /// Stop listening through a relay.
    StopListening(ListenerId),
    /// Close this relayed connection: a direct one to the same peer exists.
    Close(PeerId, ConnectionId),
}

/// The reachability state of one node.
#[derive(Debug)]
pub struct Reach {
    use_relays: bool,
    /// Own addresses AutoNAT confirmed.
    confirmed: BTreeSet<Multiaddr>,
    /// Addresses mapped on the router by UPnP.
    mapped: BTreeSet<Multiaddr>,
    relays: BTreeMap<PeerId, Relay>,
    conns: HashMap<PeerId, Conns>,
    punches: std::collections::VecDeque<Punch>,
}

/// Whether a server (a relay) should tell others it is reachable at its listen address
/// `addr`: a relay's reservations carry these addresses, and clients refuse a reservation
/// without any. Loopback addresses only when the server was told to listen on loopback
/// (`loopback_ok`: tests, one-machine setups); otherwise they would crowd out the real ones.
pub fn advertise_listen_addr(addr: &Multiaddr, loopback_ok: bool) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => !ip.is_unspecified() && (loopback_ok || !ip.is_loopback()),
        Some(Protocol::Ip6(ip)) => !ip.is_unspecified() && (loopback_ok || !ip.is_loopback()),
        _ => false,
    }
}

/// Whether `addrs` names a loopback IP (a server told to listen on loopback).
pub fn names_loopback(addrs: &[Multiaddr]) -> bool {
    addrs.iter().any(|a| match a.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        _ => false,
    })
}

/// Whether `addr` goes through a relay.
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// The relay `addr` goes through (the `/p2p/` part before `/p2p-circuit`), if it is relayed.
fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut relay = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(peer) => relay = Some(peer),
            Protocol::P2pCircuit => return relay,
            _ => {}
        }
    }
    None
}

/// `addrs` with at most one relayed address per relay (the first), direct ones all kept, in
/// order. The relay client opens every circuit through a relay over the one connection it
/// has to that relay, and that connection takes at most 10 circuit requests at once
/// (libp2p-relay 0.22 drops the rest, and their dials fail): a relay's TCP and QUIC
/// addresses would be two requests for the same circuit, so a node dialling seven NATed
/// peers at once would ask for fourteen.
pub fn one_circuit_per_relay(addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
    let mut seen = BTreeSet::new();
    addrs
        .into_iter()
        .filter(|a| relay_of(a).is_none_or(|relay| seen.insert(relay)))
        .collect()
}

impl Reach {
    /// A node that reserves at relays when unreachable if `use_relays`.
    pub fn new(use_relays: bool) -> Self {
        Self {
            use_relays,
            confirmed: BTreeSet::new(),
            mapped: BTreeSet::new(),
            relays: BTreeMap::new(),
            conns: HashMap::new(),
            punches: std::collections::VecDeque::new(),
        }
    }

    /// How peers reach this node now.
    pub fn status(&self) -> Reachability {
        if !self.mapped.is_empty() {
            Reachability::Upnp
        } else if !self.confirmed.is_empty() {
            Reachability::Direct
        } else if self.relays.values().any(|r| r.accepted) {
            Reachability::Relay
        } else {
            Reachability::Unknown
        }
    }

    fn reachable(&self) -> bool {
        !self.confirmed.is_empty() || !self.mapped.is_empty()
    }

    /// The addresses confirmed reachable, mapped ones first.
    pub fn external(&self) -> Vec<Multiaddr> {
        self.mapped.iter().chain(&self.confirmed).cloned().collect()
    }

    /// `relay`, reached at `addr` (without `/p2p`), speaks the relay hop protocol. Returns
    /// the circuit address to listen on when this node wants a reservation there.
    pub fn on_relay_found(&mut self, relay: PeerId, addr: &Multiaddr) -> Option<Action> {
        if !self.use_relays
            || self.reachable()
            || self.relays.len() >= MAX_RELAYS
            || self.relays.contains_key(&relay)
            || is_relayed(addr)
        {
            return None;
        }
        self.relays.insert(
            relay,
            Relay {
                listener: None,
                accepted: false,
            },
        );
        let circuit = addr
            .clone()
            .with(Protocol::P2p(relay))
            .with(Protocol::P2pCircuit);
        Some(Action::Listen(relay, circuit))
    }

    /// Listening through `relay` started as `listener`.
    pub fn on_listening(&mut self, relay: PeerId, listener: ListenerId) {
        if let Some(r) = self.relays.get_mut(&relay) {
            r.listener = Some(listener);
        }
    }

    /// Listening through `relay` could not start, or the listener closed: the slot is free
    /// for another relay.
    pub fn on_listen_failed(&mut self, relay: PeerId) {
        self.relays.remove(&relay);
    }

    /// A listener closed; forgets the relay it was on, if any.
    pub fn on_listener_closed(&mut self, listener: ListenerId) {
        self.relays.retain(|_, r| r.listener != Some(listener));
    }

    /// `relay` accepted the reservation.
    pub fn on_reservation(&mut self, relay: PeerId) {
        if let Some(r) = self.relays.get_mut(&relay) {
            r.accepted = true;
        }
    }

    /// Whether a reservation at `relay` was asked for and is not settled yet.
    pub fn pending_at(&self, relay: &PeerId) -> bool {
        self.relays.get(relay).is_some_and(|r| !r.accepted)
    }

    /// AutoNAT confirmed `addr` (`mapped`: it is a UPnP mapping). Returns the relay
    /// listeners to close: a reachable node needs none.
    pub fn on_confirmed(&mut self, addr: Multiaddr, mapped: bool) -> Vec<Action> {
        if is_relayed(&addr) {
            return Vec::new();
        }
        if mapped {
            self.mapped.insert(addr);
        } else {
            self.confirmed.insert(addr);
        }
        let relays = std::mem::take(&mut self.relays);
        relays
            .into_values()
            .filter_map(|r| r.listener.map(Action::StopListening))
            .collect()
    }

    /// `addr` is no longer confirmed (or mapped).
    pub fn on_expired(&mut self, addr: &Multiaddr) {
        self.confirmed.remove(addr);
        self.mapped.remove(addr);
    }

    /// A connection to `peer` came up over `remote`. Returns the relayed connections to
    /// close (this one, if a direct one exists; the relayed ones, if this one is direct).
    pub fn on_connected(
        &mut self,
        now: Instant,
        peer: PeerId,
        id: ConnectionId,
        remote: &Multiaddr,
    ) -> Vec<Action> {
        let c = self.conns.entry(peer).or_default();
        if is_relayed(remote) {
            c.relayed_since.get_or_insert(now);
            if c.direct.is_empty() {
                c.relayed.insert(id);
                Vec::new()
            } else {
                vec![Action::Close(peer, id)]
            }
        } else {
            c.direct.insert(id);
            std::mem::take(&mut c.relayed)
                .into_iter()
                .map(|r| Action::Close(peer, r))
                .collect()
        }
    }

    /// A connection to `peer` closed.
    pub fn on_disconnected(&mut self, peer: PeerId, id: ConnectionId) {
        if let Some(c) = self.conns.get_mut(&peer) {
            c.direct.remove(&id);
            c.relayed.remove(&id);
            if c.direct.is_empty() && c.relayed.is_empty() {
                self.conns.remove(&peer);
            }
        }
    }

    /// Whether every connection to `peer` is relayed (and there is one).
    pub fn only_relayed(&self, peer: &PeerId) -> bool {
        self.conns
            .get(peer)
            .is_some_and(|c| c.direct.is_empty() && !c.relayed.is_empty())
    }

    /// A hole punch with `peer` ended (`ok`: a direct connection resulted).
    pub fn on_punch(&mut self, now: Instant, peer: PeerId, ok: bool) {
        let since = self
            .conns
            .get(&peer)
            .and_then(|c| c.relayed_since)
            .unwrap_or(now);
        if self.punches.len() >= MAX_PUNCHES {
            self.punches.pop_front();
        }
        self.punches.push_back(Punch {
            peer,
            ok,
            after: now.saturating_duration_since(since),
            at: now,
        });
    }

    /// Whether a hole punch with `peer` ended (either way) at or after `since`.
    pub fn punch_ended_since(&self, peer: &PeerId, since: Instant) -> bool {
        self.punches
            .iter()
            .rev()
            .take_while(|p| p.at >= since)
            .any(|p| p.peer == *peer)
    }

    /// The hole punches this node took part in, oldest first (at most [`MAX_PUNCHES`]).
    pub fn punches(&self) -> impl Iterator<Item = &Punch> {
        self.punches.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().expect("valid multiaddr")
    }

    #[test]
    fn an_unreachable_node_reserves_at_two_relays_then_stops_when_confirmed() {
        let mut r = Reach::new(true);
        let relays: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        let at = addr("/ip4/10.0.0.1/tcp/4001");
        let Some(Action::Listen(p, circuit)) = r.on_relay_found(relays[0], &at) else {
            panic!("no reservation asked");
        };
        assert_eq!(p, relays[0]);
        assert_eq!(
            circuit,
            at.clone()
                .with(Protocol::P2p(relays[0]))
                .with(Protocol::P2pCircuit)
        );
        assert_eq!(r.on_relay_found(relays[0], &at), None, "asked twice");
        assert!(r.on_relay_found(relays[1], &at).is_some());
        assert_eq!(
            r.on_relay_found(relays[2], &at),
            None,
            "more than MAX_RELAYS"
        );
        assert_eq!(r.status(), Reachability::Unknown);
        assert!(r.pending_at(&relays[0]));
        let l0 = ListenerId::next();
        r.on_listening(relays[0], l0);
        r.on_reservation(relays[0]);
        assert!(!r.pending_at(&relays[0]));
        assert_eq!(r.status(), Reachability::Relay);
        // A relay whose listener failed frees its slot.
        r.on_listen_failed(relays[1]);
        assert!(r.on_relay_found(relays[2], &at).is_some());
        // Confirmed: the relay listeners are closed and no new one is taken.
        let stop = r.on_confirmed(addr("/ip4/198.51.100.7/tcp/4001"), false);
        assert_eq!(stop, vec![Action::StopListening(l0)]);
        assert_eq!(r.status(), Reachability::Direct);
        assert_eq!(r.on_relay_found(PeerId::random(), &at), None);
    }

    #[test]
    fn upnp_comes_first_and_expiry_forgets() {
        let mut r = Reach::new(true);
        let a = addr("/ip4/198.51.100.7/tcp/4001");
        let m = addr("/ip4/198.51.100.7/tcp/5001");
        r.on_confirmed(a.clone(), false);
        r.on_confirmed(m.clone(), true);
        assert_eq!(r.status(), Reachability::Upnp);
        assert_eq!(r.external(), vec![m.clone(), a.clone()]);
        r.on_expired(&m);
        assert_eq!(r.status(), Reachability::Direct);
        r.on_expired(&a);
        assert_eq!(r.status(), Reachability::Unknown);
    }

    #[test]
    fn without_relays_nothing_is_reserved() {
        let mut r = Reach::new(false);
        assert_eq!(
            r.on_relay_found(PeerId::random(), &addr("/ip4/10.0.0.1/tcp/1")),
            None
        );
    }

    #[test]
    fn a_direct_connection_closes_the_relayed_ones_and_times_the_punch() {
        let mut r = Reach::new(true);
        let peer = PeerId::random();
        let t0 = Instant::now();
        let relayed = addr(
            "/ip4/10.0.0.1/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit",
        );
        let (c1, c2, c3) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
            ConnectionId::new_unchecked(3),
        );
        assert!(r.on_connected(t0, peer, c1, &relayed).is_empty());
        assert!(r.only_relayed(&peer));
        let t1 = t0 + Duration::from_millis(1500);
        let close = r.on_connected(t1, peer, c2, &addr("/ip4/10.0.0.2/tcp/2"));
        assert_eq!(close, vec![Action::Close(peer, c1)]);
        assert!(!r.only_relayed(&peer));
        r.on_punch(t1, peer, true);
        let p = r.punches().next().expect("recorded");
        assert!(p.ok);
        assert_eq!(p.after, Duration::from_millis(1500));
        assert!(r.punch_ended_since(&peer, t0));
        assert!(!r.punch_ended_since(&peer, t1 + Duration::from_millis(1)));
        assert!(!r.punch_ended_since(&PeerId::random(), t0));
        // A relayed connection arriving while a direct one exists is closed at once.
        assert_eq!(
            r.on_connected(t1, peer, c3, &relayed),
            vec![Action::Close(peer, c3)]
        );
        r.on_disconnected(peer, c1);
        r.on_disconnected(peer, c2);
        r.on_disconnected(peer, c3);
        assert!(!r.only_relayed(&peer));
    }

    #[test]
    fn one_circuit_per_relay_keeps_direct_addresses_and_the_first_circuit_of_each_relay() {
        let (r1, r2, target) = (PeerId::random(), PeerId::random(), PeerId::random());
        let circuit = |relay_addr: &str, relay: PeerId| {
            addr(relay_addr)
                .with(Protocol::P2p(relay))
                .with(Protocol::P2pCircuit)
                .with(Protocol::P2p(target))
        };
        let addrs = vec![
            addr("/ip4/203.0.113.7/tcp/4001"),
            circuit("/ip4/198.51.100.1/udp/7000/quic-v1", r1),
            circuit("/ip4/198.51.100.1/tcp/7000", r1),
            addr("/ip4/203.0.113.7/udp/4001/quic-v1"),
            circuit("/ip4/198.51.100.2/tcp/7010", r2),
            circuit("/ip4/198.51.100.2/udp/7010/quic-v1", r2),
        ];
        let kept = one_circuit_per_relay(addrs.clone());
        assert_eq!(
            kept,
            vec![
                addrs[0].clone(),
                addrs[1].clone(),
                addrs[3].clone(),
                addrs[4].clone()
            ]
        );
    }

    #[test]
    fn punches_are_bounded() {
        let mut r = Reach::new(true);
        let now = Instant::now();
        for _ in 0..MAX_PUNCHES + 10 {
            r.on_punch(now, PeerId::random(), false);
        }
        assert_eq!(r.punches().count(), MAX_PUNCHES);
    }
}
