//! Inbound connection limits per IP address and per subnet (/24 for IPv4, /48 for IPv6):
//! a libp2p behaviour that denies a connection before it costs a handshake (pending) and
//! again when it is established. `libp2p::connection_limits` covers totals and per peer;
//! identities are free, addresses are not, so the flood policy (docs/tracker.md §2.4)
//! needs these too.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::IpAddr,
    task::{Context, Poll},
};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, transport::PortUse},
    swarm::{
        ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
        THandlerInEvent, THandlerOutEvent, ToSwarm, behaviour::ConnectionEstablished, dummy,
    },
};

use super::checks::remote_ip;

/// Why a connection was denied.
#[derive(Debug, thiserror::Error)]
#[error("{count} connections from {scope} already; at most {max} are allowed")]
pub(crate) struct Exceeded {
    scope: String,
    count: u32,
    max: u32,
}

/// The subnet an address counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Subnet {
    V4([u8; 3]),
    V6([u8; 6]),
}

impl Subnet {
    fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                Self::V4([o[0], o[1], o[2]])
            }
            IpAddr::V6(v6) => {
                let o = v6.octets();
                Self::V6([o[0], o[1], o[2], o[3], o[4], o[5]])
            }
        }
    }
}

/// The behaviour. Outbound connections are not limited (the tracker dials no one).
#[derive(Debug)]
pub(crate) struct IpLimits {
    per_ip: u32,
    per_subnet: u32,
    by_ip: HashMap<IpAddr, u32>,
    by_subnet: HashMap<Subnet, u32>,
    /// Counted inbound connections, to uncount them on close.
    conns: HashMap<ConnectionId, IpAddr>,
}

impl IpLimits {
    pub(crate) fn new(per_ip: u32, per_subnet: u32) -> Self {
        Self {
            per_ip,
            per_subnet,
            by_ip: HashMap::new(),
            by_subnet: HashMap::new(),
            conns: HashMap::new(),
        }
    }

    fn check(&self, remote: &Multiaddr) -> Result<(), ConnectionDenied> {
        let Some(ip) = remote_ip(remote) else {
            return Ok(());
        };
        let count = self.by_ip.get(&ip).copied().unwrap_or(0);
        if count >= self.per_ip {
            return Err(ConnectionDenied::new(Exceeded {
                scope: ip.to_string(),
                count,
                max: self.per_ip,
            }));
        }
        let count = self.by_subnet.get(&Subnet::of(ip)).copied().unwrap_or(0);
        if count >= self.per_subnet {
            return Err(ConnectionDenied::new(Exceeded {
                scope: format!("the subnet of {ip}"),
                count,
                max: self.per_subnet,
            }));
        }
        Ok(())
    }

    fn add(&mut self, id: ConnectionId, ip: IpAddr) {
        *self.by_ip.entry(ip).or_default() += 1;
        *self.by_subnet.entry(Subnet::of(ip)).or_default() += 1;
        self.conns.insert(id, ip);
    }

    fn remove(&mut self, id: ConnectionId) {
        let Some(ip) = self.conns.remove(&id) else {
            return;
        };
        decrement(&mut self.by_ip, ip);
        decrement(&mut self.by_subnet, Subnet::of(ip));
    }
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: K) {
    if let Some(n) = map.get_mut(&key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(&key);
        }
    }
}

impl NetworkBehaviour for IpLimits {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.check(remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // Checked again: other connections from this address may have completed their
        // handshakes since this one was pending.
        self.check(remote)?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            // Counted here, not when allowed: another behaviour may still deny it.
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                connection_id,
                endpoint,
                ..
            }) if endpoint.is_listener() => {
                if let Some(ip) = remote_ip(endpoint.get_remote_address()) {
                    self.add(connection_id, ip);
                }
            }
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                self.remove(connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_ip_and_per_subnet_and_forgets_closed_connections() {
        let mut l = IpLimits::new(2, 3);
        let a: Multiaddr = "/ip4/198.51.100.1/tcp/5".parse().unwrap();
        let b: Multiaddr = "/ip4/198.51.100.2/udp/5/quic-v1".parse().unwrap();
        let far: Multiaddr = "/ip4/198.51.101.2/tcp/5".parse().unwrap();
        let ip = |m: &Multiaddr| remote_ip(m).unwrap();
        assert!(l.check(&a).is_ok());
        l.add(ConnectionId::new_unchecked(1), ip(&a));
        l.add(ConnectionId::new_unchecked(2), ip(&a));
        let denied = l.check(&a).unwrap_err();
        let err = denied.downcast_ref::<Exceeded>().unwrap().to_string();
        assert_eq!(
            err,
            "2 connections from 198.51.100.1 already; at most 2 are allowed"
        );
        assert!(l.check(&b).is_ok());
        l.add(ConnectionId::new_unchecked(3), ip(&b));
        assert!(l.check(&b).is_err(), "the /24 is full");
        assert!(l.check(&far).is_ok(), "another /24");
        l.remove(ConnectionId::new_unchecked(1));
        assert!(l.check(&a).is_ok());
        l.remove(ConnectionId::new_unchecked(1));
        assert_eq!(
            l.by_ip.values().sum::<u32>(),
            2,
            "a double close counts once"
        );
        assert!(l.check(&"/memory/1".parse().unwrap()).is_ok());
    }
}
