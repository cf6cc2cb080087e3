//! What the service checks before a request reaches the peer table (docs/tracker.md §4):
//! announced addresses, the seed-node role, and the scrape rate. Pure and clock-injected.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    time::{Duration, Instant},
};

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use shoal_protocol::tracker::{AnnounceRequest, Role};

/// Why an announced address was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AddrDrop {
    /// Not a binary multiaddr.
    Unparsable,
    /// A `/p2p/` component names another peer.
    ForeignPeer,
    /// Its IP is not the connection's observed IP, or it has no IP (`/dns/`, `/memory/`).
    ForeignIp,
    /// A relay circuit through a relay the tracker cannot name (not itself, not an
    /// allow-listed seed node connected now), or at an IP that relay is not at.
    UnknownRelay,
}

/// The relays a tracker vouches for in announced circuit addresses, each with the IPs it
/// is known at: the tracker itself (at the IP the announcer reached it on) and the
/// allow-listed seed nodes connected to it (at the IPs they connect from).
#[derive(Debug, Default)]
pub(crate) struct KnownRelays(pub(crate) HashMap<PeerId, Vec<IpAddr>>);

impl KnownRelays {
    fn vouches(&self, relay: &PeerId, ip: IpAddr) -> bool {
        self.0
            .get(relay)
            .is_some_and(|ips| ips.iter().any(|k| k.to_canonical() == ip.to_canonical()))
    }
}

/// The announced addresses the tracker passes on: those that parse, name no other peer than
/// `announcer`, and start with the connection's observed IP `observed`. With no observed IP
/// nothing is kept. Returns the kept addresses (as sent) and what was dropped.
///
/// A relay circuit (`<relay addr>/p2p/<relay>/p2p-circuit[/p2p/<announcer>]`) is kept when
/// `relays` vouches for the relay at the circuit's first IP, whatever the observed IP.
///
/// Why: otherwise a peer could list a victim's address and have every downloader of a
/// popular swarm dial it. A circuit's first hop is a dial to the relay address it names,
/// so the same holds for circuits: only relays the tracker knows, where it knows them.
pub(crate) fn filter_addrs(
    addrs: &[Vec<u8>],
    announcer: &PeerId,
    observed: Option<IpAddr>,
    relays: &KnownRelays,
) -> (Vec<Vec<u8>>, Vec<AddrDrop>) {
    let mut kept = Vec::with_capacity(addrs.len());
    let mut dropped = Vec::new();
    for bytes in addrs {
        match check_addr(bytes, announcer, observed, relays) {
            Ok(()) => kept.push(bytes.clone()),
            Err(why) => dropped.push(why),
        }
    }
    (kept, dropped)
}

fn check_addr(
    bytes: &[u8],
    announcer: &PeerId,
    observed: Option<IpAddr>,
    relays: &KnownRelays,
) -> Result<(), AddrDrop> {
    let addr = Multiaddr::try_from(bytes.to_vec()).map_err(|_| AddrDrop::Unparsable)?;
    let parts: Vec<Protocol<'_>> = addr.iter().collect();
    let first_ip = match parts.first() {
        Some(Protocol::Ip4(ip)) => Some(IpAddr::V4(*ip)),
        Some(Protocol::Ip6(ip)) => Some(IpAddr::V6(*ip)),
        _ => None,
    };
    if let Some(at) = parts.iter().position(|p| *p == Protocol::P2pCircuit) {
        // `<ip>/…/p2p/<relay>/p2p-circuit` then at most `/p2p/<announcer>`.
        let relay = match at.checked_sub(1).map(|i| &parts[i]) {
            Some(Protocol::P2p(relay)) => *relay,
            _ => return Err(AddrDrop::UnknownRelay),
        };
        match &parts[at + 1..] {
            [] => {}
            [Protocol::P2p(id)] if id == announcer => {}
            [Protocol::P2p(_)] => return Err(AddrDrop::ForeignPeer),
            _ => return Err(AddrDrop::UnknownRelay),
        }
        if parts[..at - 1]
            .iter()
            .any(|p| matches!(p, Protocol::P2p(_) | Protocol::P2pCircuit))
        {
            return Err(AddrDrop::UnknownRelay);
        }
        return match first_ip {
            Some(ip) if relays.vouches(&relay, ip) => Ok(()),
            _ => Err(AddrDrop::UnknownRelay),
        };
    }
    if parts
        .iter()
        .any(|p| matches!(p, Protocol::P2p(id) if id != announcer))
    {
        return Err(AddrDrop::ForeignPeer);
    }
    match (first_ip, observed) {
        (Some(ip), Some(seen)) if ip.to_canonical() == seen.to_canonical() => Ok(()),
        _ => Err(AddrDrop::ForeignIp),
    }
}

/// The IP a connection comes from, from its remote multiaddr (`/ip4/…/tcp/…`,
/// `/ip6/…/udp/…/quic-v1`). `None` for addresses without one (relayed, in-memory).
pub(crate) fn remote_ip(remote: &Multiaddr) -> Option<IpAddr> {
    match remote.iter().next()? {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    }
    .map(|ip| ip.to_canonical())
}

/// Authorises the seed-node role: only allow-listed peers keep it. Others are listed as
/// what their progress says they are — a seeder if they hold every block of a blob of known
/// size, else a leecher — so the request stays valid. Returns whether the role changed.
///
/// Why: leechers are always handed the swarm's seed nodes, so a self-declared seed node
/// would be offered to every downloader as a last-resort server.
pub(crate) fn authorise_role(req: &mut AnnounceRequest, allowed: bool) -> bool {
    if req.role != Role::SeedNode || allowed {
        return false;
    }
    req.role = if req.total_blocks > 0 && req.blocks_held == req.total_blocks {
        Role::Seeder
    } else {
        Role::Leecher
    };
    true
}

/// A token bucket per key (GCRA: one "theoretical arrival time" per key), in a bounded map.
///
/// Each key may make `burst` requests at once, then one per `interval`. A key whose bucket
/// is full again is the same as an absent one, so when the map is full such keys are
/// dropped; if none can be, a new key is refused until one can (sweeps run at most once per
/// `interval`, so a flood of new keys costs one pass over the map per interval).
#[derive(Debug)]
pub(crate) struct RateLimiter<K> {
    interval: Duration,
    /// How far ahead of `now` a key's arrival time may run: `(burst - 1) × interval`.
    tolerance: Duration,
    max_keys: usize,
    tat: HashMap<K, Instant>,
    last_sweep: Option<Instant>,
}

impl<K: Eq + Hash + Copy> RateLimiter<K> {
    /// `burst` ≥ 1 requests at once, then one per `interval`, for at most `max_keys` keys at
    /// a time.
    pub(crate) fn new(burst: u32, interval: Duration, max_keys: usize) -> Self {
        Self {
            interval,
            tolerance: interval.saturating_mul(burst.max(1) - 1),
            max_keys,
            tat: HashMap::new(),
            last_sweep: None,
        }
    }

    /// Whether `key` may make a request at `now`; if so, the request is counted.
    pub(crate) fn allow(&mut self, now: Instant, key: K) -> bool {
        if !self.tat.contains_key(&key) && self.tat.len() >= self.max_keys && !self.sweep(now) {
            return false;
        }
        let tat = self.tat.entry(key).or_insert(now);
        let start = (*tat).max(now);
        if start.saturating_duration_since(now) > self.tolerance {
            return false;
        }
        *tat = start + self.interval;
        true
    }

    /// Drops keys whose bucket is full again. Returns whether there is room now.
    fn sweep(&mut self, now: Instant) -> bool {
        if self
            .last_sweep
            .is_some_and(|at| now.saturating_duration_since(at) < self.interval)
        {
            return false;
        }
        self.last_sweep = Some(now);
        self.tat.retain(|_, tat| *tat > now);
        self.tat.len() < self.max_keys
    }

    /// Keys tracked now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.tat.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_protocol::{BlobId, tracker::Event};

    fn bytes(s: &str) -> Vec<u8> {
        s.parse::<Multiaddr>().unwrap().to_vec()
    }

    #[test]
    fn addresses_must_be_the_observed_ip_and_name_no_other_peer() {
        let me = PeerId::random();
        let other = PeerId::random();
        let seen: IpAddr = "203.0.113.5".parse().unwrap();
        let addrs = vec![
            bytes("/ip4/203.0.113.5/udp/4001/quic-v1"),
            bytes(&format!("/ip4/203.0.113.5/tcp/4001/p2p/{me}")),
            bytes("/ip4/192.0.2.7/tcp/4001"),
            bytes(&format!("/ip4/203.0.113.5/tcp/4001/p2p/{other}")),
            bytes(&format!(
                "/ip4/203.0.113.5/tcp/1/p2p/{other}/p2p-circuit/p2p/{me}"
            )),
            bytes(&format!("/ip4/203.0.113.5/tcp/1/p2p-circuit/p2p/{me}")),
            bytes("/dns4/example.com/tcp/4001"),
            bytes("/ip6/2001:db8::1/tcp/4001"),
            vec![0xff, 0x01, 0x02],
        ];
        let none = KnownRelays::default();
        let (kept, dropped) = filter_addrs(&addrs, &me, Some(seen), &none);
        assert_eq!(kept, addrs[..2].to_vec());
        assert_eq!(
            dropped,
            [
                AddrDrop::ForeignIp,
                AddrDrop::ForeignPeer,
                AddrDrop::UnknownRelay,
                AddrDrop::UnknownRelay,
                AddrDrop::ForeignIp,
                AddrDrop::ForeignIp,
                AddrDrop::Unparsable
            ]
        );
        // Without an observed IP nothing is vouched for; no address is made up either.
        let (kept, dropped) = filter_addrs(&addrs, &me, None, &none);
        assert!(kept.is_empty());
        assert_eq!(dropped.len(), addrs.len());
    }

    /// Issue 13: a node behind NAT announces its address through a relay. Kept only through
    /// relays the tracker names, at the IP it knows them by, ending in nothing or the
    /// announcer; the observed IP does not matter (the node's own addresses are private).
    #[test]
    fn circuits_are_kept_only_through_known_relays_at_known_ips() {
        let me = PeerId::random();
        let relay = PeerId::random();
        let other = PeerId::random();
        let seen: IpAddr = "198.51.100.9".parse().unwrap();
        let relays = KnownRelays(HashMap::from([(
            relay,
            vec!["203.0.113.5".parse().unwrap()],
        )]));
        let check = |a: &str| {
            let (kept, dropped) = filter_addrs(&[bytes(a)], &me, Some(seen), &relays);
            if kept.is_empty() {
                Err(dropped[0])
            } else {
                Ok(())
            }
        };
        assert_eq!(
            check(&format!("/ip4/203.0.113.5/tcp/1/p2p/{relay}/p2p-circuit")),
            Ok(())
        );
        assert_eq!(
            check(&format!(
                "/ip4/203.0.113.5/udp/1/quic-v1/p2p/{relay}/p2p-circuit/p2p/{me}"
            )),
            Ok(())
        );
        // Another IP for the relay: a reflection onto a victim.
        assert_eq!(
            check(&format!("/ip4/192.0.2.7/tcp/1/p2p/{relay}/p2p-circuit")),
            Err(AddrDrop::UnknownRelay)
        );
        // A relay nobody vouches for.
        assert_eq!(
            check(&format!("/ip4/203.0.113.5/tcp/1/p2p/{other}/p2p-circuit")),
            Err(AddrDrop::UnknownRelay)
        );
        // Ending in another peer, nested circuits, or a circuit without a relay id.
        assert_eq!(
            check(&format!(
                "/ip4/203.0.113.5/tcp/1/p2p/{relay}/p2p-circuit/p2p/{other}"
            )),
            Err(AddrDrop::ForeignPeer)
        );
        assert_eq!(
            check(&format!(
                "/ip4/203.0.113.5/tcp/1/p2p/{relay}/p2p-circuit/p2p/{relay}/p2p-circuit/p2p/{me}"
            )),
            Err(AddrDrop::UnknownRelay)
        );
        assert_eq!(
            check("/ip4/203.0.113.5/tcp/1/p2p-circuit"),
            Err(AddrDrop::UnknownRelay)
        );
    }

    #[test]
    fn ipv4_mapped_ipv6_matches_ipv4_and_loopback_is_an_ip_like_any_other() {
        let me = PeerId::random();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let (kept, _) = filter_addrs(
            &[bytes("/ip4/127.0.0.1/tcp/9")],
            &me,
            Some(mapped),
            &KnownRelays::default(),
        );
        assert_eq!(kept.len(), 1);
        let remote: Multiaddr = "/ip6/::ffff:127.0.0.1/tcp/5".parse().unwrap();
        assert_eq!(remote_ip(&remote), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(remote_ip(&"/memory/5".parse().unwrap()), None);
    }

    #[test]
    fn seed_node_claims_are_downgraded_by_progress() {
        let mut req = AnnounceRequest {
            blob: BlobId::from_bytes([1; 32]),
            role: Role::SeedNode,
            blocks_held: 3,
            total_blocks: 3,
            addrs: vec![],
            event: Event::Started,
        };
        assert!(!authorise_role(&mut req.clone(), true));
        assert!(authorise_role(&mut req, false));
        assert_eq!(req.role, Role::Seeder);
        assert!(req.validate().is_ok());
        req.role = Role::SeedNode;
        req.blocks_held = 1;
        assert!(authorise_role(&mut req, false));
        assert_eq!(req.role, Role::Leecher);
        assert!(req.validate().is_ok());
        assert!(!authorise_role(&mut req, false), "a leecher stays one");
    }

    #[test]
    fn rate_limiter_allows_a_burst_then_one_per_interval() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut rl = RateLimiter::new(3, s, 10);
        assert!((0..3).all(|_| rl.allow(t0, 1)));
        assert!(!rl.allow(t0, 1));
        assert!(rl.allow(t0, 2), "keys are independent");
        assert!(!rl.allow(t0 + s / 2, 1));
        assert!(rl.allow(t0 + s, 1));
        assert!(!rl.allow(t0 + s, 1));
        // After a long pause the bucket is full again, not fuller.
        let later = t0 + 100 * s;
        assert!((0..3).all(|_| rl.allow(later, 1)));
        assert!(!rl.allow(later, 1));
    }

    #[test]
    fn rate_limiter_map_is_bounded() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut rl = RateLimiter::new(2, s, 4);
        for k in 0..4 {
            assert!(rl.allow(t0, k));
        }
        assert!(!rl.allow(t0, 99), "full of active keys: a newcomer waits");
        assert!(!rl.allow(t0, 98), "and no second sweep within the interval");
        assert_eq!(rl.len(), 4);
        // One interval on, every bucket has refilled: the sweep makes room.
        assert!(rl.allow(t0 + s, 99));
        assert_eq!(rl.len(), 1);
    }
}
