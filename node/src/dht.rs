//! Trackerless discovery: Kademlia (libp2p-kad) provider records for the blobs a node seeds
//! (docs/node.md, "Trackerless: the DHT").
//!
//! The DHT maps a blob id (its 32 raw bytes as the key) to the peer ids that provide the
//! blob, with their addresses. Nothing else is stored: no values, never a content key.
//! Shoal nodes speak [`KAD_PROTOCOL`], not the IPFS protocol name, so they form their own
//! DHT and never join the public one.
//!
//! `Dht` is the part of the node's event loop that drives the Kademlia behaviour: it
//! answers `provide` and `find_providers` commands, feeds addresses learnt through identify
//! into the routing table, and keeps the provider records stored for other nodes bounded
//! (Kademlia's memory store never drops an expired record that nobody asks for).

use std::{
    collections::{HashMap, HashSet, VecDeque, hash_map::Entry},
    time::{Duration, Instant},
};

use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, identify, kad,
    kad::{RecordKey, store::RecordStore},
    multiaddr::Protocol,
    swarm::dial_opts::DialOpts,
};
use shoal_protocol::BlobId;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::{
    behaviour::{Behaviour, Kad},
    config::Config,
};

/// The Kademlia protocol name: Shoal's own, so Shoal nodes never join the public IPFS DHT.
pub const KAD_PROTOCOL: &str = "/shoal/kad/1";
/// Most providers one lookup returns.
pub const MAX_PROVIDERS: usize = 50;
/// Blob ids this node keeps provider records for on behalf of other nodes.
pub(crate) const MAX_FOREIGN_KEYS: usize = 2048;
/// Provider records kept per blob id: Kademlia's replication factor k (more providers of
/// one blob are ignored, which also blunts floods of fake providers).
pub(crate) const MAX_PROVIDERS_PER_KEY: usize = 20;
/// Blob ids this node itself provides (its own records carry no addresses: cheap).
pub(crate) const MAX_OWN_KEYS: usize = 8192;
/// Value records kept: none. Shoal puts only provider records in the DHT.
const MAX_VALUE_RECORDS: usize = 0;
/// Addresses kept per provider record and per peer; longer lists are cut.
pub(crate) const MAX_RECORD_ADDRS: usize = 4;
/// Longest address (binary multiaddr) kept; longer ones are dropped.
const MAX_ADDR_LEN: usize = 128;
/// Longest a DHT query (a lookup, a publication, a bootstrap) runs.
pub(crate) const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between bootstrap lookups, when bootstrap peers are configured. Each one first
/// puts the bootstrap peers back into the routing table (a peer that was down for a while
/// has been evicted from it).
pub(crate) const BOOTSTRAP_EVERY: Duration = Duration::from_secs(5 * 60);
/// Provide commands and lookups in progress at once; more are refused.
const MAX_PENDING: usize = 256;

/// One provider a lookup found, reported as soon as it is known whether it answers.
#[derive(Debug)]
pub(crate) enum Found {
    /// Connected, with the addresses known for it.
    Reachable(PeerId, Vec<Multiaddr>),
    /// Could not be dialled, or did not answer before the lookup's deadline.
    Unreachable(PeerId),
}

/// Why a DHT operation failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DhtError {
    /// The node runs without the DHT (`Config::dht` is false).
    #[error("the DHT is turned off on this node")]
    Disabled,
    /// The record is kept here (and republished later) but no DHT peer took it now.
    #[error("no DHT peer could be reached; configure bootstrap peers")]
    NoPeers,
    /// The local record store is full.
    #[error("the DHT record store is full ({0})")]
    StoreFull(String),
    /// Too many DHT operations in progress.
    #[error("too many DHT operations in progress; try again later")]
    Busy,
    /// The operation did not finish in time.
    #[error("the DHT did not answer within {0:?}")]
    Timeout(Duration),
    /// The node is shut down.
    #[error("the node is shut down")]
    Shutdown,
}

/// The DHT key of a blob: its 32 raw id bytes.
pub(crate) fn key(id: &BlobId) -> RecordKey {
    RecordKey::new(id.as_bytes())
}

/// Builds the Kademlia behaviour for a node with identity `peer`.
pub(crate) fn behaviour(peer: PeerId, config: &Config) -> Kad {
    let store = kad::store::MemoryStore::with_config(
        peer,
        kad::store::MemoryStoreConfig {
            max_records: MAX_VALUE_RECORDS,
            max_value_bytes: 0,
            max_providers_per_key: MAX_PROVIDERS_PER_KEY,
            // Ours and others' together; `Foreign` keeps others' below MAX_FOREIGN_KEYS, so
            // a flood of foreign records never crowds out this node's own.
            max_provided_keys: MAX_FOREIGN_KEYS + MAX_OWN_KEYS,
        },
    );
    let mut kc = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
    kc.set_query_timeout(QUERY_TIMEOUT)
        // Inbound provider records come to us (`Dht::store_foreign`): their addresses are
        // bounded and their expiry tracked before they are stored. Value records are dropped.
        .set_record_filtering(kad::StoreInserts::FilterBoth)
        .set_record_ttl(Some(config.dht_provider_ttl))
        .set_replication_interval(None)
        .set_publication_interval(None)
        .set_provider_record_ttl(Some(config.dht_provider_ttl))
        // Kademlia republishes every record this node provides at this interval.
        .set_provider_publication_interval(Some(config.dht_republish_interval))
        // Periodic bootstrap is ours (`Dht::rebootstrap`): it re-adds the bootstrap peers.
        .set_periodic_bootstrap_interval(None);
    let mut kad = kad::Behaviour::with_config(peer, store, kc);
    // Server mode: answer lookups and store records. Automatic mode waits for a confirmed
    // external address, which a node on a LAN or loopback never gets.
    kad.set_mode(Some(kad::Mode::Server));
    kad
}

/// Splits `/…/p2p/<id>` into the peer id and the address before it.
pub(crate) fn split_p2p(addr: &Multiaddr) -> Option<(PeerId, Multiaddr)> {
    let mut bare = addr.clone();
    match bare.pop() {
        Some(Protocol::P2p(peer)) => Some((peer, bare)),
        _ => None,
    }
}

/// Addresses fit to keep: without a trailing `/p2p/`, not unspecified, bounded in length and
/// number, no duplicates.
fn keepable<'a>(addrs: impl IntoIterator<Item = &'a Multiaddr>, max: usize) -> Vec<Multiaddr> {
    let mut out: Vec<Multiaddr> = Vec::new();
    for a in addrs {
        let a = split_p2p(a).map_or_else(|| a.clone(), |(_, bare)| bare);
        let unspecified = a.iter().any(|p| match p {
            Protocol::Ip4(ip) => ip.is_unspecified(),
            Protocol::Ip6(ip) => ip.is_unspecified(),
            _ => false,
        });
        if a.is_empty() || unspecified || a.len() > MAX_ADDR_LEN || out.contains(&a) {
            continue;
        }
        out.push(a);
        if out.len() == max {
            break;
        }
    }
    out
}

/// A lookup in progress. It ends (its sender is dropped) when the query has finished and
/// every provider found is reported, or at its deadline.
struct Lookup {
    /// Where providers go; room for [`MAX_PROVIDERS`], so a send never fails for space.
    sink: mpsc::Sender<Found>,
    deadline: Instant,
    /// Providers in the order found, at most [`MAX_PROVIDERS`].
    providers: Vec<PeerId>,
    /// Providers being dialled (their addresses are known only while the query lives, so
    /// they are dialled when found).
    waiting: HashSet<PeerId>,
    /// The query has ended.
    finished: bool,
}

/// The DHT side of the node's event loop.
pub(crate) struct Dht {
    local: PeerId,
    /// Bootstrap peers and their addresses.
    bootstrap: Vec<(PeerId, Multiaddr)>,
    provides: HashMap<kad::QueryId, oneshot::Sender<Result<(), DhtError>>>,
    lookups: HashMap<kad::QueryId, Lookup>,
    /// Listen addresses of connected peers (identify) and addresses we dialled them on.
    /// Entries go when the last connection closes, so this is bounded by the connection
    /// limits.
    addrs: HashMap<PeerId, Vec<Multiaddr>>,
    foreign: Foreign,
}

impl Dht {
    pub(crate) fn new(local: PeerId, bootstrap: Vec<(PeerId, Multiaddr)>) -> Self {
        Self {
            local,
            bootstrap,
            provides: HashMap::new(),
            lookups: HashMap::new(),
            addrs: HashMap::new(),
            foreign: Foreign::default(),
        }
    }

    /// Whether bootstrap peers are configured (so periodic bootstraps are worth running).
    pub(crate) fn has_bootstrap(&self) -> bool {
        !self.bootstrap.is_empty()
    }

    /// Puts the bootstrap peers (back) into the routing table and starts a bootstrap lookup.
    pub(crate) fn rebootstrap(&mut self, swarm: &mut Swarm<Behaviour>) {
        let Some(kad) = swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        for (peer, addr) in &self.bootstrap {
            kad.add_address(peer, addr.clone());
        }
        match kad.bootstrap() {
            Ok(_) => debug!(peers = self.bootstrap.len(), "DHT bootstrap started"),
            Err(e) => debug!(error = %e, "DHT bootstrap not started"),
        }
    }

    /// Peers in the routing table.
    pub(crate) fn routing_table_len(swarm: &mut Swarm<Behaviour>) -> usize {
        swarm.behaviour_mut().kad.as_mut().map_or(0, |kad| {
            kad.kbuckets().map(|b| b.num_entries()).sum::<usize>()
        })
    }

    pub(crate) fn provide(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        id: BlobId,
        reply: oneshot::Sender<Result<(), DhtError>>,
    ) {
        let Some(kad) = swarm.behaviour_mut().kad.as_mut() else {
            let _ = reply.send(Err(DhtError::Disabled));
            return;
        };
        if self.provides.len() >= MAX_PENDING {
            let _ = reply.send(Err(DhtError::Busy));
            return;
        }
        match kad.start_providing(key(&id)) {
            Ok(q) => {
                debug!(blob = %id, "providing in the DHT");
                self.provides.insert(q, reply);
            }
            Err(e) => {
                warn!(blob = %id, error = %e, "cannot provide the blob in the DHT");
                let _ = reply.send(Err(DhtError::StoreFull(e.to_string())));
            }
        }
    }

    /// The providers of `id` with an unexpired record in the local store.
    #[cfg(feature = "test-utils")]
    pub(crate) fn stored_providers(swarm: &mut Swarm<Behaviour>, id: BlobId) -> Vec<PeerId> {
        let now = Instant::now();
        swarm
            .behaviour_mut()
            .kad
            .as_mut()
            .map(|kad| {
                kad.store_mut()
                    .providers(&key(&id))
                    .into_iter()
                    .filter(|r| !r.is_expired(now))
                    .map(|r| r.provider)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn stop_providing(swarm: &mut Swarm<Behaviour>, id: BlobId) {
        if let Some(kad) = swarm.behaviour_mut().kad.as_mut() {
            kad.stop_providing(&key(&id));
        }
    }

    /// Starts a provider lookup reporting on `sink` (dropped when it ends, at the latest
    /// after `timeout`).
    pub(crate) fn find_providers(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        id: BlobId,
        timeout: Duration,
        sink: mpsc::Sender<Found>,
    ) {
        let Some(kad) = swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        if self.lookups.len() >= MAX_PENDING {
            return;
        }
        let q = kad.get_providers(key(&id));
        debug!(blob = %id, "DHT provider lookup started");
        self.lookups.insert(
            q,
            Lookup {
                sink,
                deadline: Instant::now() + timeout,
                providers: Vec::new(),
                waiting: HashSet::new(),
                finished: false,
            },
        );
    }

    /// The earliest lookup deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.lookups.values().map(|l| l.deadline).min()
    }

    /// Ends the lookups whose time is up; providers still being dialled count as unreachable.
    pub(crate) fn on_deadline(&mut self, swarm: &mut Swarm<Behaviour>) {
        let now = Instant::now();
        let due: Vec<kad::QueryId> = self
            .lookups
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(q, _)| *q)
            .collect();
        for q in due {
            if let Some(mut query) = swarm
                .behaviour_mut()
                .kad
                .as_mut()
                .and_then(|k| k.query_mut(&q))
            {
                query.finish();
            }
            if let Some(l) = self.lookups.remove(&q) {
                for p in l.waiting {
                    let _ = l.sink.try_send(Found::Unreachable(p));
                }
            }
        }
    }

    pub(crate) fn on_identify(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        peer: PeerId,
        info: &identify::Info,
    ) {
        let listen = keepable(&info.listen_addrs, MAX_RECORD_ADDRS);
        // What the peer says it listens on first (it knows best), then what we dialled.
        let known = self.addrs.entry(peer).or_default();
        let merged = keepable(listen.iter().chain(known.iter()), MAX_RECORD_ADDRS);
        *known = merged;
        let speaks_kad = info.protocols.iter().any(|p| p.as_ref() == KAD_PROTOCOL);
        if let (true, Some(kad)) = (speaks_kad, swarm.behaviour_mut().kad.as_mut()) {
            for a in listen {
                kad.add_address(&peer, a);
            }
        }
    }

    /// A connection to `peer` is up, reached at `remote`: the address we dialled, or (inbound)
    /// the one it came from — with TCP port reuse and QUIC that is the peer's listen address,
    /// a fallback until identify says which addresses it listens on.
    pub(crate) fn on_connected(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        peer: PeerId,
        remote: &Multiaddr,
    ) {
        let known = self.addrs.entry(peer).or_default();
        for a in keepable([remote], 1) {
            if !known.contains(&a) && known.len() < MAX_RECORD_ADDRS {
                known.push(a);
            }
        }
        self.dial_ended(swarm, peer, true);
    }

    pub(crate) fn on_disconnected(&mut self, peer: PeerId) {
        self.addrs.remove(&peer);
    }

    /// A dial to `peer` ended (`connected` or failed): lookups waiting for it report it, and
    /// those that waited only for it end.
    pub(crate) fn dial_ended(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        peer: PeerId,
        connected: bool,
    ) {
        let waiting: Vec<kad::QueryId> = self
            .lookups
            .iter_mut()
            .filter_map(|(q, l)| l.waiting.remove(&peer).then_some(*q))
            .collect();
        if waiting.is_empty() {
            return;
        }
        let found = if connected {
            Found::Reachable(peer, self.addresses(swarm, peer))
        } else {
            Found::Unreachable(peer)
        };
        for q in waiting {
            if let Some(l) = self.lookups.get(&q) {
                let item = match &found {
                    Found::Reachable(p, a) => Found::Reachable(*p, a.clone()),
                    Found::Unreachable(p) => Found::Unreachable(*p),
                };
                let _ = l.sink.try_send(item);
                if l.finished && l.waiting.is_empty() {
                    self.lookups.remove(&q);
                }
            }
        }
    }

    pub(crate) fn on_event(&mut self, swarm: &mut Swarm<Behaviour>, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed {
                id, result, stats, ..
            } => match result {
                kad::QueryResult::StartProviding(r) => {
                    if let Some(reply) = self.provides.remove(&id) {
                        let answer = if stats.num_successes() > 0 {
                            Ok(())
                        } else if r.is_err() {
                            Err(DhtError::Timeout(QUERY_TIMEOUT))
                        } else {
                            Err(DhtError::NoPeers)
                        };
                        let _ = reply.send(answer);
                    }
                }
                kad::QueryResult::RepublishProvider(r) => {
                    debug!(
                        ok = r.is_ok(),
                        peers = stats.num_successes(),
                        "DHT provider record republished"
                    );
                }
                kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                    providers,
                    ..
                })) => self.found(swarm, id, providers),
                kad::QueryResult::GetProviders(_) => {
                    if let Some(l) = self.lookups.get_mut(&id) {
                        l.finished = true;
                        if l.waiting.is_empty() {
                            self.lookups.remove(&id);
                            debug!("DHT provider lookup ended");
                        }
                    }
                }
                kad::QueryResult::Bootstrap(r) => {
                    debug!(ok = r.is_ok(), "DHT bootstrap step");
                }
                _ => {}
            },
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::AddProvider {
                        record: Some(record),
                    },
            } => self.store_foreign(swarm, record),
            kad::Event::RoutingUpdated {
                peer,
                is_new_peer: true,
                ..
            } => debug!(peer = %peer, "DHT peer added"),
            _ => {}
        }
    }

    /// Providers found by lookup `q`: remember them and dial those not connected while the
    /// query still knows their addresses.
    fn found(&mut self, swarm: &mut Swarm<Behaviour>, q: kad::QueryId, providers: HashSet<PeerId>) {
        let Some(l) = self.lookups.get_mut(&q) else {
            return;
        };
        for p in providers {
            if p == self.local || l.providers.contains(&p) {
                continue;
            }
            if l.providers.len() == MAX_PROVIDERS {
                if let Some(mut query) = swarm
                    .behaviour_mut()
                    .kad
                    .as_mut()
                    .and_then(|k| k.query_mut(&q))
                {
                    query.finish();
                }
                break;
            }
            l.providers.push(p);
            if swarm.is_connected(&p) {
                let addrs = addresses(&self.addrs, swarm, p);
                let _ = l.sink.try_send(Found::Reachable(p, addrs));
                continue;
            }
            match swarm.dial(DialOpts::peer_id(p).build()) {
                Ok(()) => {
                    l.waiting.insert(p);
                }
                // Someone dials it already: that dial's outcome counts.
                Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {
                    l.waiting.insert(p);
                }
                Err(e) => {
                    debug!(peer = %p, error = %e, "cannot dial a DHT provider");
                    let _ = l.sink.try_send(Found::Unreachable(p));
                }
            }
        }
    }

    /// The addresses known for `peer`.
    fn addresses(&self, swarm: &mut Swarm<Behaviour>, peer: PeerId) -> Vec<Multiaddr> {
        addresses(&self.addrs, swarm, peer)
    }

    /// Stores a provider record another node sent, within the bounds, with addresses we
    /// know for it if it carries none (a node without confirmed external addresses sends
    /// none: then what it told us through identify is the best we have).
    fn store_foreign(&mut self, swarm: &mut Swarm<Behaviour>, mut record: kad::ProviderRecord) {
        record.addresses = if record.addresses.is_empty() {
            // Without addresses in the record, Kademlia answers with the routing table's,
            // and leaves the provider out if it is not in the table (yet).
            addresses(&self.addrs, swarm, record.provider)
        } else {
            keepable(&record.addresses, MAX_RECORD_ADDRS)
        };
        let Some(kad) = swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        let now = Instant::now();
        self.foreign.sweep(now, kad.store_mut());
        let expires = record.expires.unwrap_or(now);
        if !self.foreign.admit(&record.key, record.provider, expires) {
            debug!(provider = %record.provider, "DHT record store full; provider record dropped");
            return;
        }
        if let Err(e) = kad.store_mut().add_provider(record) {
            debug!(error = %e, "provider record not stored");
        }
    }

    /// Drops the expired provider records kept for others (called now and then).
    pub(crate) fn sweep(&mut self, swarm: &mut Swarm<Behaviour>) {
        if let Some(kad) = swarm.behaviour_mut().kad.as_mut() {
            self.foreign.sweep(Instant::now(), kad.store_mut());
        }
    }

    /// Logs what the node does in the DHT at start.
    pub(crate) fn log_start(&self) {
        if self.bootstrap.is_empty() {
            info!("DHT on, no bootstrap peers: it learns DHT peers from the peers it meets");
        } else {
            info!(peers = self.bootstrap.len(), "DHT on, bootstrapping");
        }
    }
}

/// The addresses known for `peer`: what identify and our dials told us, then the routing
/// table's.
fn addresses(
    known: &HashMap<PeerId, Vec<Multiaddr>>,
    swarm: &mut Swarm<Behaviour>,
    peer: PeerId,
) -> Vec<Multiaddr> {
    let mut addrs = known.get(&peer).cloned().unwrap_or_default();
    if let Some(kad) = swarm.behaviour_mut().kad.as_mut()
        && let Some(bucket) = kad.kbucket(peer)
        && let Some(entry) = bucket.iter().find(|e| *e.node.key.preimage() == peer)
    {
        addrs.extend(entry.node.value.iter().cloned());
    }
    keepable(&addrs, MAX_RECORD_ADDRS)
}

/// The provider records kept for other nodes, in arrival order with their expiry, so expired
/// ones are dropped (Kademlia's memory store drops an expired record only when someone asks
/// for its key) and the number of foreign keys stays below [`MAX_FOREIGN_KEYS`].
#[derive(Default)]
struct Foreign {
    /// (expiry, key, provider), in arrival order; every record gets the same TTL, so expiry
    /// order is arrival order. A refreshed record appears twice; the store has the latest.
    queue: VecDeque<(Instant, RecordKey, PeerId)>,
    /// Queue entries per key.
    per_key: HashMap<RecordKey, usize>,
}

impl Foreign {
    /// Most queue entries: every foreign record once, plus room for refreshes.
    const MAX_ENTRIES: usize = 2 * MAX_FOREIGN_KEYS * MAX_PROVIDERS_PER_KEY;

    /// Records the arrival of a record; `false` if it must not be stored (bounds).
    fn admit(&mut self, key: &RecordKey, provider: PeerId, expires: Instant) -> bool {
        if self.queue.len() >= Self::MAX_ENTRIES
            || (!self.per_key.contains_key(key) && self.per_key.len() >= MAX_FOREIGN_KEYS)
        {
            return false;
        }
        *self.per_key.entry(key.clone()).or_default() += 1;
        self.queue.push_back((expires, key.clone(), provider));
        true
    }

    /// Removes the records that expired by `now` from `store`.
    fn sweep(&mut self, now: Instant, store: &mut kad::store::MemoryStore) {
        while let Some((expires, _, _)) = self.queue.front() {
            if *expires > now {
                break;
            }
            let (_, key, provider) = self.queue.pop_front().expect("front exists");
            // A record refreshed since has a later expiry: leave it to its later entry.
            let expired = store
                .providers(&key)
                .iter()
                .find(|r| r.provider == provider)
                .is_some_and(|r| r.is_expired(now));
            if expired {
                store.remove_provider(&key, &provider);
            }
            if let Entry::Occupied(mut e) = self.per_key.entry(key) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &RecordKey, provider: PeerId, expires: Instant) -> kad::ProviderRecord {
        kad::ProviderRecord {
            key: key.clone(),
            provider,
            expires: Some(expires),
            addresses: Vec::new(),
        }
    }

    #[test]
    fn expired_foreign_records_are_swept_and_refreshed_ones_kept() {
        let me = PeerId::random();
        let mut store = kad::store::MemoryStore::new(me);
        let mut foreign = Foreign::default();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let (a, b) = (RecordKey::new(&[1u8; 32]), RecordKey::new(&[2u8; 32]));
        let (p, q) = (PeerId::random(), PeerId::random());
        for (k, who) in [(&a, p), (&b, q)] {
            assert!(foreign.admit(k, who, t0 + ttl));
            store.add_provider(record(k, who, t0 + ttl)).unwrap();
        }
        // p refreshes its record for `a` at t0 + 5 s.
        let t1 = t0 + Duration::from_secs(5);
        assert!(foreign.admit(&a, p, t1 + ttl));
        store.add_provider(record(&a, p, t1 + ttl)).unwrap();

        foreign.sweep(t0 + ttl, &mut store);
        assert_eq!(store.providers(&a).len(), 1, "refreshed record kept");
        assert!(store.providers(&b).is_empty(), "expired record dropped");
        assert_eq!(foreign.per_key.len(), 1);

        foreign.sweep(t1 + ttl, &mut store);
        assert!(store.providers(&a).is_empty());
        assert!(foreign.per_key.is_empty() && foreign.queue.is_empty());
    }

    #[test]
    fn foreign_keys_are_bounded() {
        let mut foreign = Foreign::default();
        let later = Instant::now() + Duration::from_secs(60);
        let p = PeerId::random();
        for i in 0..MAX_FOREIGN_KEYS {
            let k = RecordKey::new(&(i as u64).to_le_bytes());
            assert!(foreign.admit(&k, p, later));
        }
        assert!(!foreign.admit(&RecordKey::new(b"one more key"), p, later));
        // Another provider of a known key still fits.
        assert!(foreign.admit(
            &RecordKey::new(&0u64.to_le_bytes()),
            PeerId::random(),
            later
        ));
    }

    #[test]
    fn kept_addresses_are_bounded_and_clean() {
        let peer = PeerId::random();
        let addrs: Vec<Multiaddr> = [
            "/ip4/0.0.0.0/tcp/1".to_string(),
            "/ip4/10.0.0.1/tcp/1".into(),
            format!("/ip4/10.0.0.1/tcp/1/p2p/{peer}"),
            "/ip4/10.0.0.2/tcp/1".into(),
            "/ip4/10.0.0.3/tcp/1".into(),
            "/ip4/10.0.0.4/tcp/1".into(),
            "/ip4/10.0.0.5/tcp/1".into(),
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let kept = keepable(&addrs, MAX_RECORD_ADDRS);
        let want: Vec<Multiaddr> = ["1", "2", "3", "4"]
            .iter()
            .map(|i| format!("/ip4/10.0.0.{i}/tcp/1").parse().unwrap())
            .collect();
        assert_eq!(kept, want);
    }

    #[test]
    fn the_kad_protocol_is_ours() {
        let kad = behaviour(PeerId::random(), &Config::default());
        assert_eq!(
            kad.protocol_names(),
            [StreamProtocol::new(KAD_PROTOCOL)].as_slice()
        );
        assert_eq!(kad.mode(), kad::Mode::Server);
    }
}
