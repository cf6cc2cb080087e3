//! Peer table tests: all with injected time (no sleeps) and fixed seeds.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use proptest::prelude::*;
use shoal_protocol::tracker::Response;

use super::*;

const INTERVAL: u64 = 300;
const TTL: u64 = 750;
const MIN_GAP: u64 = 60;

fn base() -> Instant {
    // Any instant will do: the table only measures time from its epoch.
    Instant::now()
}

fn blob(b: u8) -> BlobId {
    BlobId::from_bytes([b; 32])
}

/// An announce with progress consistent with the role and event.
fn ann(b: u8, peer: u32, role: Role, event: Event) -> AnnounceRequest {
    let total = 10;
    let held = match (role, event) {
        (Role::Leecher, _) => 3,
        _ => total,
    };
    AnnounceRequest {
        blob: blob(b),
        role,
        blocks_held: held,
        total_blocks: total,
        addrs: vec![peer.to_le_bytes().to_vec(), vec![b]],
        event,
    }
}

struct Sim {
    t0: Instant,
    table: PeerTable<u32>,
}

impl Sim {
    fn new(config: Config) -> Self {
        let t0 = base();
        Self {
            t0,
            table: PeerTable::new(config, t0).unwrap(),
        }
    }

    fn at(&self, secs: u64) -> Instant {
        self.t0 + Duration::from_secs(secs)
    }

    fn announce(
        &mut self,
        secs: u64,
        peer: u32,
        req: &AnnounceRequest,
    ) -> Result<Answer<u32>, Refusal> {
        let now = self.at(secs);
        let got = self.table.announce(now, peer, req);
        if let Ok(a) = &got {
            check_answer(peer, req, a, &self.table.config);
        }
        got
    }

    fn ok(&mut self, secs: u64, peer: u32, b: u8, role: Role, event: Event) -> Answer<u32> {
        self.announce(secs, peer, &ann(b, peer, role, event))
            .unwrap_or_else(|e| panic!("peer {peer} at {secs}s: {e}"))
    }

    fn listed(&self, peer: u32, b: u8) -> bool {
        self.table.entry(&peer, &blob(b)).is_some()
    }
}

/// What every answer must satisfy, whatever the table's state.
fn check_answer(asker: u32, req: &AnnounceRequest, a: &Answer<u32>, config: &Config) {
    assert!(a.peers.len() <= config.answer_peers);
    assert!(a.seed_nodes.len() <= config.answer_seed_nodes);
    let mut seen = HashSet::new();
    for p in a.peers.iter().chain(&a.seed_nodes) {
        assert_ne!(p.peer, asker, "the asker is never listed");
        assert!(seen.insert(p.peer), "peer {} listed twice", p.peer);
    }
    assert!(a.seed_nodes.iter().all(|p| p.role == Role::SeedNode));
    assert!(a.peers.iter().all(|p| p.role != Role::SeedNode));
    if req.role != Role::Leecher {
        assert!(
            a.peers.iter().all(|p| p.role == Role::Leecher),
            "seeders get leechers only"
        );
        assert!(a.seed_nodes.is_empty());
    }
    if req.event == Event::Stopped {
        assert!(a.peers.is_empty() && a.seed_nodes.is_empty());
    }
    let interval = a.interval.as_secs();
    let cfg_interval = config.announce_interval.as_secs();
    let full = (cfg_interval..=cfg_interval + config.interval_jitter.as_secs()).contains(&interval);
    let soon = interval == config.min_announce_interval.as_secs().max(1);
    let seeded = a.seed_nodes.len() + a.peers.iter().filter(|p| p.role == Role::Seeder).count() > 0;
    // Sooner only for a leecher in a swarm nobody seeds (an answer naming a seeder shows one).
    assert!(
        full || (soon && req.role == Role::Leecher && !seeded && req.event != Event::Stopped),
        "interval {interval} s"
    );
    // The answer always makes a valid wire message.
    let resp = a.clone().into_response(|p| p.to_le_bytes().to_vec());
    Response::Announce(resp).encode();
}

#[test]
fn answers_list_other_peers() {
    let mut sim = Sim::new(Config::default());
    assert!(
        sim.ok(0, 1, 1, Role::Seeder, Event::Started)
            .peers
            .is_empty()
    );
    let a = sim.ok(0, 2, 1, Role::Leecher, Event::Started);
    assert_eq!(a.peers.len(), 1);
    let p = &a.peers[0];
    assert_eq!((p.peer, p.role, p.blocks_held), (1, Role::Seeder, 10));
    assert_eq!(
        p.addrs.to_vecs(),
        vec![1u32.to_le_bytes().to_vec(), vec![1]]
    );
    // Another swarm is separate.
    assert!(
        sim.ok(0, 3, 2, Role::Leecher, Event::Started)
            .peers
            .is_empty()
    );
}

/// Issue 11: a leecher that starts before any seeder is told to come back after the minimum
/// interval, so it hears of the seeder soon and never runs into the rate limit; once
/// someone seeds, leechers get the full interval.
#[test]
fn a_leecher_nobody_can_serve_comes_back_at_the_minimum_interval() {
    let mut sim = Sim::new(Config::default());
    let early = sim.ok(0, 1, 1, Role::Leecher, Event::Started);
    assert!(early.peers.is_empty());
    assert_eq!(early.interval, Duration::from_secs(MIN_GAP));
    // Another leecher alone is no seeder either.
    let second = sim.ok(0, 2, 1, Role::Leecher, Event::Started);
    assert_eq!(second.interval, Duration::from_secs(MIN_GAP));
    // Obeying it is never refused as too soon.
    assert!(
        sim.announce(MIN_GAP, 1, &ann(1, 1, Role::Leecher, Event::Periodic))
            .is_ok()
    );
    // A seeder arrives: the leecher hears of it at its next announce, and from then on the
    // full interval applies.
    assert!(
        sim.ok(MIN_GAP + 5, 3, 1, Role::Seeder, Event::Started)
            .interval
            >= Duration::from_secs(INTERVAL)
    );
    let later = sim.ok(2 * MIN_GAP, 1, 1, Role::Leecher, Event::Periodic);
    assert!(
        later
            .peers
            .iter()
            .any(|p| p.peer == 3 && p.role == Role::Seeder)
    );
    assert!(later.interval >= Duration::from_secs(INTERVAL));
    // A seed node counts as someone seeding too.
    sim.ok(0, 4, 2, Role::SeedNode, Event::Started);
    assert!(
        sim.ok(1, 5, 2, Role::Leecher, Event::Started).interval >= Duration::from_secs(INTERVAL)
    );
}

#[test]
fn expiry_after_missed_reannounces() {
    let mut sim = Sim::new(Config::default());
    sim.ok(0, 1, 1, Role::Seeder, Event::Started);
    sim.ok(100, 2, 1, Role::Leecher, Event::Started);
    assert_eq!(sim.table.poll_timeout(), Some(sim.at(TTL)));
    // Peer 1 misses its re-announces at 300 and 600: at 750 it is gone.
    let scrape = sim.table.scrape(sim.at(TTL - 1), blob(1));
    assert_eq!((scrape.seeders, scrape.leechers), (1, 1));
    // Even before `expire` runs, an expired entry is neither counted nor listed.
    let scrape = sim.table.scrape(sim.at(TTL), blob(1));
    assert_eq!((scrape.seeders, scrape.leechers), (0, 1));
    assert!(!sim.listed(1, 1));
    assert_eq!(
        sim.table.expire(sim.at(TTL)),
        0,
        "the scrape already swept the swarm"
    );
    assert_eq!(sim.table.poll_timeout(), Some(sim.at(100 + TTL)));
    assert_eq!(sim.table.expire(sim.at(100 + TTL)), 1);
    assert!(sim.table.is_empty());
    assert_eq!(sim.table.poll_timeout(), None);
    assert_eq!(sim.table.stats().expired, 2);
    sim.table.check_invariants();
}

#[test]
fn expire_frees_untouched_swarms() {
    let mut sim = Sim::new(Config::default());
    for b in 0..50u8 {
        sim.ok(u64::from(b), u32::from(b), b, Role::Leecher, Event::Started);
    }
    assert_eq!(sim.table.expire(sim.at(TTL + 9)), 10);
    assert_eq!(sim.table.stats().swarms, 40);
    // Due at 760, but passes come at most every 5 s after the last one (at 759).
    assert_eq!(sim.table.poll_timeout(), Some(sim.at(TTL + 14)));
    assert_eq!(sim.table.expire(sim.at(10_000)), 40);
    assert_eq!(sim.table.stats().peers, 0);
    sim.table.check_invariants();
}

#[test]
fn reannounce_keeps_an_entry_alive() {
    let mut sim = Sim::new(Config::default());
    sim.ok(0, 1, 1, Role::Seeder, Event::Started);
    sim.ok(0, 2, 1, Role::Leecher, Event::Started);
    for i in 1..=20 {
        let t = i * INTERVAL;
        sim.table.expire(sim.at(t));
        let a = sim.ok(t, 1, 1, Role::Seeder, Event::Periodic);
        // Peer 2 stopped announcing at 0: listed until its TTL ran out.
        assert_eq!(a.peers.len(), usize::from(t < TTL));
        assert!(sim.listed(1, 1));
    }
    assert!(sim.table.entry(&1, &blob(1)).unwrap().established);
    sim.table.check_invariants();
}

#[test]
fn established_after_a_reannounce_half_an_interval_later() {
    let mut sim = Sim::new(Config::default());
    sim.ok(0, 1, 1, Role::Leecher, Event::Started);
    sim.ok(0, 2, 1, Role::Leecher, Event::Started);
    assert!(!sim.table.entry(&1, &blob(1)).unwrap().established);
    sim.ok(INTERVAL / 2 - 1, 1, 1, Role::Leecher, Event::Periodic);
    assert!(
        !sim.table.entry(&1, &blob(1)).unwrap().established,
        "149 s < 150 s"
    );
    sim.ok(INTERVAL / 2, 2, 1, Role::Leecher, Event::Periodic);
    let e = sim.table.entry(&2, &blob(1)).unwrap();
    assert!(e.established);
    assert_eq!(e.since, sim.at(0));
    assert_eq!(e.last_announce, sim.at(INTERVAL / 2));
    assert_eq!(sim.table.stats().established, 1);
    // Peer 1 gets there at its next accepted refresh.
    sim.ok(INTERVAL, 1, 1, Role::Leecher, Event::Periodic);
    assert_eq!(sim.table.stats().established, 2);
}

#[test]
fn rate_limit_leaves_the_entry_unchanged() {
    let mut sim = Sim::new(Config::default());
    sim.ok(0, 1, 1, Role::Leecher, Event::Started);
    let before = sim.table.entry(&1, &blob(1)).unwrap();
    let mut seeder = ann(1, 1, Role::Seeder, Event::Periodic);
    seeder.addrs = vec![vec![9, 9]];
    assert_eq!(
        sim.announce(30, 1, &seeder),
        Err(Refusal::RateLimited {
            retry_after: Duration::from_secs(MIN_GAP - 30)
        })
    );
    assert_eq!(sim.table.entry(&1, &blob(1)).unwrap(), before);
    assert_eq!(sim.table.scrape(sim.at(30), blob(1)).completed, 0);
    assert_eq!(sim.table.stats().refused_rate_limited, 1);
    // On the wire the wait is whole seconds, at least one.
    assert_eq!(
        RefusalReason::from(Refusal::RateLimited {
            retry_after: Duration::from_millis(1)
        }),
        RefusalReason::RateLimited {
            retry_after_secs: 1
        }
    );
    // Other swarms are limited separately.
    sim.ok(30, 1, 2, Role::Leecher, Event::Started);
    // After the minimum interval the refresh is accepted.
    sim.announce(MIN_GAP, 1, &seeder).unwrap();
    let after = sim.table.entry(&1, &blob(1)).unwrap();
    assert_eq!((after.role, after.blocks_held), (Role::Seeder, 10));
    assert_eq!(after.addrs.to_vecs(), vec![vec![9, 9]]);
    // Stopped is honoured at once.
    sim.ok(MIN_GAP + 1, 1, 1, Role::Seeder, Event::Stopped);
    assert!(!sim.listed(1, 1));
}

#[test]
fn the_first_completed_is_honoured_at_once_and_only_once() {
    let mut sim = Sim::new(Config::default());
    sim.ok(0, 1, 1, Role::Leecher, Event::Started);
    // A download that finished within the minimum interval becomes a seeder at once.
    sim.announce(10, 1, &ann(1, 1, Role::Seeder, Event::Completed))
        .unwrap();
    let e = sim.table.entry(&1, &blob(1)).unwrap();
    assert_eq!(e.role, Role::Seeder);
    assert_eq!(sim.table.scrape(sim.at(10), blob(1)).completed, 1);
    // Another `completed` cannot be used to dodge the limit.
    assert!(matches!(
        sim.announce(20, 1, &ann(1, 1, Role::Seeder, Event::Completed)),
        Err(Refusal::RateLimited { .. })
    ));
}

#[test]
fn stopped_removes_the_entry() {
    let mut sim = Sim::new(Config::default());
    sim.ok(0, 1, 1, Role::Seeder, Event::Started);
    sim.ok(0, 2, 1, Role::Leecher, Event::Started);
    let a = sim.ok(1, 2, 1, Role::Leecher, Event::Stopped);
    assert!(a.peers.is_empty());
    assert!(!sim.listed(2, 1));
    assert_eq!(sim.table.scrape(sim.at(1), blob(1)).leechers, 0);
    // Stopping twice, or for an unknown swarm, is harmless.
    sim.ok(2, 2, 1, Role::Leecher, Event::Stopped);
    sim.ok(2, 2, 9, Role::Leecher, Event::Stopped);
    sim.ok(3, 1, 1, Role::Seeder, Event::Stopped);
    assert!(sim.table.is_empty());
    let stats = sim.table.stats();
    assert_eq!((stats.stopped, stats.swarms, stats.peers), (2, 0, 0));
    sim.table.check_invariants();
}

#[test]
fn completed_is_counted_once_per_entry() {
    let mut sim = Sim::new(Config::default());
    sim.ok(0, 1, 1, Role::Leecher, Event::Started);
    sim.ok(60, 1, 1, Role::Seeder, Event::Completed);
    sim.ok(120, 1, 1, Role::Seeder, Event::Completed);
    sim.ok(180, 1, 1, Role::Seeder, Event::Periodic);
    let s = sim.table.scrape(sim.at(180), blob(1));
    assert_eq!((s.seeders, s.leechers, s.completed), (1, 0, 1));
    // A newcomer that announces Completed first counts too.
    sim.ok(200, 2, 1, Role::Seeder, Event::Completed);
    assert_eq!(sim.table.scrape(sim.at(200), blob(1)).completed, 2);
}

#[test]
fn seeders_get_only_leechers_and_leechers_get_seed_nodes_apart() {
    let mut sim = Sim::new(Config::default());
    for p in 0..5 {
        sim.ok(0, p, 1, Role::Seeder, Event::Started);
        sim.ok(0, 10 + p, 1, Role::Leecher, Event::Started);
        sim.ok(0, 20 + p, 1, Role::SeedNode, Event::Started);
    }
    let roles = |a: &[AnswerPeer<u32>]| a.iter().map(|p| (p.peer, p.role)).collect::<BTreeSet<_>>();
    let leecher = sim.ok(60, 10, 1, Role::Leecher, Event::Periodic);
    let expected: BTreeSet<_> = (0..5)
        .map(|p| (p, Role::Seeder))
        .chain((11..15).map(|p| (p, Role::Leecher)))
        .collect();
    assert_eq!(roles(&leecher.peers), expected);
    assert_eq!(
        roles(&leecher.seed_nodes),
        (20..25).map(|p| (p, Role::SeedNode)).collect()
    );
    for (peer, role) in [(0, Role::Seeder), (20, Role::SeedNode)] {
        let a = sim.ok(60, peer, 1, role, Event::Periodic);
        assert_eq!(
            roles(&a.peers),
            (10..15).map(|p| (p, Role::Leecher)).collect()
        );
        assert!(a.seed_nodes.is_empty());
    }
    let s = sim.table.scrape(sim.at(60), blob(1));
    assert_eq!((s.seeders, s.leechers, s.seed_nodes), (5, 5, 5));
}

#[test]
fn answers_are_bounded_and_prefer_established_peers() {
    let config = Config::default().with_answer_seed_nodes(4);
    let mut sim = Sim::new(config);
    // 10 established seeders, 1,000 fresh leechers, 10 seed nodes (3 established).
    for p in 0..10 {
        sim.ok(0, p, 1, Role::Seeder, Event::Started);
        sim.ok(0, 100 + p, 1, Role::SeedNode, Event::Started);
    }
    for p in 0..10 {
        sim.ok(INTERVAL, p, 1, Role::Seeder, Event::Periodic);
        if p < 3 {
            sim.ok(INTERVAL, 100 + p, 1, Role::SeedNode, Event::Periodic);
        }
    }
    for p in 0..1000 {
        sim.ok(INTERVAL, 1000 + p, 1, Role::Leecher, Event::Started);
    }
    let mut counts = BTreeMap::<u32, u32>::new();
    for p in 0..1000 {
        let a = sim.ok(INTERVAL + 1, 5000 + p, 1, Role::Leecher, Event::Started);
        assert_eq!(a.peers.len(), 50);
        // All 10 established seeders, then 40 drawn from the rest.
        assert_eq!(a.peers.iter().filter(|e| e.peer < 10).count(), 10);
        assert_eq!(a.seed_nodes.len(), 4);
        // Half the seed nodes (2 of 4) from the 3 established ones.
        assert!(a.seed_nodes.iter().filter(|e| e.peer < 103).count() >= 2);
        for e in a.peers.iter().filter(|e| e.peer >= 1000) {
            *counts.entry(e.peer).or_default() += 1;
        }
    }
    // The fresh picks spread over the fresh peers (40,000 picks over ~1,500 of them).
    assert!(counts.len() > 1400, "{}", counts.len());
    assert!(counts.values().all(|&n| n < 100));
}

#[test]
fn a_full_swarm_evicts_its_oldest_fresh_entry() {
    let config = Config::default().with_max_entries_per_swarm(3);
    let mut sim = Sim::new(config);
    sim.ok(0, 1, 1, Role::Seeder, Event::Started);
    sim.ok(INTERVAL, 1, 1, Role::Seeder, Event::Periodic); // established
    sim.ok(INTERVAL + 10, 2, 1, Role::Leecher, Event::Started);
    sim.ok(INTERVAL + 20, 3, 1, Role::Leecher, Event::Started);
    sim.ok(INTERVAL + 30, 4, 1, Role::Leecher, Event::Started);
    assert!(sim.listed(1, 1) && !sim.listed(2, 1) && sim.listed(3, 1) && sim.listed(4, 1));
    // Fill the swarm with established entries: newcomers are refused.
    sim.ok(2 * INTERVAL + 20, 3, 1, Role::Leecher, Event::Periodic);
    sim.ok(2 * INTERVAL + 30, 4, 1, Role::Leecher, Event::Periodic);
    assert_eq!(
        sim.announce(
            2 * INTERVAL + 31,
            5,
            &ann(1, 5, Role::Leecher, Event::Started)
        ),
        Err(Refusal::SwarmFull)
    );
    let stats = sim.table.stats();
    assert_eq!(
        (stats.evicted, stats.refused_swarm_full, stats.entries),
        (1, 1, 3)
    );
    // Other swarms are not affected.
    sim.ok(2 * INTERVAL + 31, 5, 2, Role::Leecher, Event::Started);
    sim.table.check_invariants();
}

#[test]
fn a_full_table_evicts_its_oldest_fresh_entry() {
    let config = Config::default()
        .with_max_entries(4)
        .with_max_entries_per_swarm(4);
    let mut sim = Sim::new(config);
    sim.ok(0, 1, 1, Role::Seeder, Event::Started);
    sim.ok(INTERVAL, 1, 1, Role::Seeder, Event::Periodic); // established
    sim.ok(INTERVAL, 2, 2, Role::Leecher, Event::Started);
    sim.ok(INTERVAL + 1, 3, 3, Role::Leecher, Event::Started);
    sim.ok(INTERVAL + 2, 4, 4, Role::Leecher, Event::Started);
    // Peer 2 gets established: the oldest fresh entry is now peer 3's.
    sim.ok(2 * INTERVAL, 2, 2, Role::Leecher, Event::Periodic);
    sim.ok(2 * INTERVAL, 5, 5, Role::Leecher, Event::Started);
    assert!(!sim.listed(3, 3) && sim.listed(4, 4) && sim.listed(5, 5));
    assert_eq!(sim.table.stats().swarms, 4, "the emptied swarm is gone");
    sim.ok(3 * INTERVAL, 4, 4, Role::Leecher, Event::Periodic);
    sim.ok(3 * INTERVAL, 5, 5, Role::Leecher, Event::Periodic);
    assert_eq!(
        sim.announce(3 * INTERVAL, 6, &ann(6, 6, Role::Leecher, Event::Started)),
        Err(Refusal::TrackerFull)
    );
    assert_eq!(sim.table.stats().refused_tracker_full, 1);
    sim.table.check_invariants();
}

/// The flood policy (docs/tracker.md §2.4): 100 honest peers announce every interval; then
/// 100,000 fresh identities announce into their swarm. Every honest peer stays listed and
/// keeps getting answers in which at least half the peers are honest.
#[test]
fn a_flood_of_fresh_identities_neither_evicts_nor_starves_honest_peers() {
    const HONEST: u32 = 100;
    const FLOOD: u32 = 100_000;
    let config = Config::default()
        .with_max_entries_per_swarm(250)
        .with_max_entries(1_000);
    let mut sim = Sim::new(config);
    let honest = |p: u32| p < HONEST;
    let role = |p: u32| {
        if p.is_multiple_of(4) {
            Role::Seeder
        } else {
            Role::Leecher
        }
    };
    // Honest peers join at t = 0..100 and re-announce every interval.
    let mut next = BTreeMap::new();
    for p in 0..HONEST {
        sim.ok(u64::from(p), p, 1, role(p), Event::Started);
        next.insert(p, u64::from(p) + INTERVAL);
    }
    // The flood: 100,000 fresh ids over 3,000 s (33 per second) from t = 400 on, 90 % into
    // the honest swarm (capped at 250) and 10 % spread over 200 other swarms, which fills
    // the table (capped at 1,000) as well.
    let mut flood_ok = 0;
    for i in 0..FLOOD {
        let t = 400 + u64::from(i) * 3000 / u64::from(FLOOD);
        // Honest re-announces that are due.
        for (&p, due) in next.iter_mut() {
            if *due <= t {
                let a = sim.ok(*due, p, 1, role(p), Event::Periodic);
                let good = a.peers.iter().filter(|e| honest(e.peer)).count();
                assert!(a.peers.len() == 50 || t < 500);
                // Leechers get half the answer from established (= honest) peers; seeders
                // too, from the 74 honest leechers.
                assert!(good >= 25, "peer {p} at {t}s got {good} honest peers");
                *due += INTERVAL;
            }
        }
        let sybil = HONEST + i;
        let b = if i % 10 == 0 { 2 + (i % 200) as u8 } else { 1 };
        if sim
            .announce(t, sybil, &ann(b, sybil, Role::Leecher, Event::Started))
            .is_ok()
        {
            flood_ok += 1;
        }
        if i % 1000 == 0 {
            sim.table.expire(sim.at(t));
        }
    }
    for p in 0..HONEST {
        assert!(sim.listed(p, 1), "honest peer {p} was evicted");
        assert!(sim.table.entry(&p, &blob(1)).unwrap().established);
    }
    let stats = sim.table.stats();
    assert!(
        flood_ok > FLOOD / 2,
        "the flood churns fresh slots: {flood_ok}"
    );
    assert!(stats.evicted > 80_000, "{stats:?}");
    assert_eq!(stats.entries, 1_000, "the table cap was reached");
    sim.table.check_invariants();
}

/// Once every slot holds an established peer, newcomers are refused, not admitted by
/// evicting someone who announces honestly.
#[test]
fn a_flood_into_a_full_established_swarm_is_refused() {
    let config = Config::default().with_max_entries_per_swarm(100);
    let mut sim = Sim::new(config);
    for p in 0..100 {
        sim.ok(0, p, 1, Role::Leecher, Event::Started);
    }
    for p in 0..100 {
        sim.ok(INTERVAL, p, 1, Role::Leecher, Event::Periodic);
    }
    for i in 0..100_000u32 {
        let sybil = 1000 + i;
        assert_eq!(
            sim.announce(
                INTERVAL + 1,
                sybil,
                &ann(1, sybil, Role::Leecher, Event::Started)
            ),
            Err(Refusal::SwarmFull)
        );
    }
    for p in 0..100 {
        let a = sim.ok(2 * INTERVAL, p, 1, Role::Leecher, Event::Periodic);
        assert_eq!(a.peers.len(), 50);
        assert!(a.peers.iter().all(|e| e.peer < 100));
    }
    assert_eq!(sim.table.stats().refused_swarm_full, 100_000);
}

/// Regression (found by the churn benchmark): a peer that stops and re-joins within one
/// second gets the same peer slot, swarm slot and creation tick. The eviction queue must
/// still tell the old record from the new entry, or it can never be compacted and every
/// insert scans it.
#[test]
fn churn_within_one_second_keeps_the_eviction_queue_small() {
    let mut sim = Sim::new(Config::default());
    for p in 0..10 {
        sim.ok(0, p, 1, Role::Leecher, Event::Started);
    }
    for _ in 0..5_000 {
        sim.ok(1, 3, 1, Role::Leecher, Event::Stopped);
        sim.ok(1, 3, 1, Role::Leecher, Event::Started);
    }
    assert!(
        sim.table.fresh.len() <= 2 * 10 + 1024,
        "{}",
        sim.table.fresh.len()
    );
    sim.table.check_invariants();
    // Eviction still finds the oldest fresh entry (peer 0), not a stale record.
    let mut sim2 = Sim::new(
        Config::default()
            .with_max_entries(10)
            .with_max_entries_per_swarm(10),
    );
    for p in 0..10 {
        sim2.ok(0, p, 1, Role::Leecher, Event::Started);
    }
    sim2.ok(1, 0, 1, Role::Leecher, Event::Stopped);
    sim2.ok(1, 0, 1, Role::Leecher, Event::Started);
    sim2.ok(2, 99, 2, Role::Leecher, Event::Started);
    assert!(!sim2.listed(1, 1), "peer 1 is now the oldest");
    assert!(sim2.listed(0, 1));
    sim2.table.check_invariants();
}

#[test]
fn bad_requests_are_refused() {
    let mut sim = Sim::new(Config::default());
    let mut bad = ann(1, 1, Role::Seeder, Event::Started);
    bad.blocks_held = 3; // a seeder holding 3 of 10 blocks
    assert_eq!(sim.announce(0, 1, &bad), Err(Refusal::BadRequest));
    assert!(sim.table.is_empty());
    assert_eq!(sim.table.stats().refused_bad_request, 1);
}

#[test]
fn takedown_removes_a_swarm() {
    let mut sim = Sim::new(Config::default());
    for p in 0..10 {
        sim.ok(0, p, 1, Role::Leecher, Event::Started);
        sim.ok(0, p, 2, Role::Leecher, Event::Started);
    }
    assert_eq!(sim.table.remove_swarm(blob(1)), 10);
    assert_eq!(sim.table.remove_swarm(blob(1)), 0);
    assert_eq!(sim.table.scrape(sim.at(0), blob(1)).leechers, 0);
    assert_eq!(sim.table.len(), 10);
    sim.table.check_invariants();
}

#[test]
fn addresses_follow_the_latest_announce() {
    let mut sim = Sim::new(Config::default());
    sim.ok(0, 1, 1, Role::Leecher, Event::Started);
    let mut r = ann(2, 1, Role::Leecher, Event::Started);
    r.addrs = vec![vec![7]];
    sim.announce(0, 1, &r).unwrap();
    // One peer, one address list, shared by both entries.
    assert_eq!(
        sim.table.entry(&1, &blob(1)).unwrap().addrs.to_vecs(),
        vec![vec![7]]
    );
    assert_eq!(sim.table.stats().peers, 1);
}

#[test]
fn time_never_runs_backwards() {
    let mut sim = Sim::new(Config::default());
    sim.ok(1000, 1, 1, Role::Leecher, Event::Started);
    // An earlier `now` counts as the latest seen: still rate limited, not "before".
    assert!(matches!(
        sim.announce(10, 1, &ann(1, 1, Role::Leecher, Event::Periodic)),
        Err(Refusal::RateLimited { .. })
    ));
    let before_epoch = sim.t0.checked_sub(Duration::from_secs(5));
    if let Some(t) = before_epoch {
        assert_eq!(sim.table.expire(t), 0);
    }
    assert_eq!(
        sim.table.entry(&1, &blob(1)).unwrap().last_announce,
        sim.at(1000)
    );
}

#[test]
fn same_seed_same_answers() {
    let run = |seed: u64| {
        let mut sim = Sim::new(Config::default().with_seed(seed).with_answer_peers(10));
        let mut out = Vec::new();
        for p in 0..200u32 {
            let role = if p % 3 == 0 {
                Role::Seeder
            } else {
                Role::Leecher
            };
            let a = sim.ok(u64::from(p), p, (p % 3) as u8, role, Event::Started);
            out.push((
                a.interval,
                a.peers.iter().map(|e| e.peer).collect::<Vec<_>>(),
            ));
        }
        out
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn answers_convert_to_valid_wire_responses() {
    let mut sim = Sim::new(Config::default());
    sim.ok(0, 1, 1, Role::SeedNode, Event::Started);
    sim.ok(0, 2, 1, Role::Seeder, Event::Started);
    let a = sim.ok(0, 3, 1, Role::Leecher, Event::Started);
    let AnnounceResponse::Ok {
        interval_secs,
        peers,
        seed_nodes,
    } = a.into_response(|p| vec![0x00, 0x24, *p as u8])
    else {
        panic!("an answer is Ok");
    };
    assert!((300..=330).contains(&interval_secs));
    assert_eq!(peers[0].peer_id, vec![0x00, 0x24, 2]);
    assert_eq!(seed_nodes[0].role, Role::SeedNode);
}

#[test]
fn config_is_validated() {
    let ok = Config::default();
    assert_eq!(ok.validate(), Ok(()));
    let bad = [
        ok.clone().with_announce_interval(Duration::ZERO),
        ok.clone()
            .with_min_announce_interval(Duration::from_secs(301)),
        ok.clone().with_entry_ttl(Duration::from_secs(330)),
        ok.clone().with_max_entries(0),
        ok.clone().with_max_entries_per_swarm(3_000_000),
        ok.clone().with_answer_peers(51),
        ok.clone().with_answer_seed_nodes(17),
        ok.clone().with_entry_ttl(Duration::from_secs(u64::MAX)),
    ];
    for c in bad {
        assert!(PeerTable::<u32>::new(c.clone(), base()).is_err(), "{c:?}");
    }
    assert!(matches!(
        ok.with_entry_ttl(Duration::from_secs(330)).validate(),
        Err(ConfigError::TtlTooShort)
    ));
}

/// Bytes per entry (docs/tracker.md §5): the fixed parts are small; the benchmark measures
/// the whole process.
#[test]
fn per_entry_memory_is_small() {
    assert_eq!(size_of::<Entry>(), 24);
    assert_eq!(size_of::<Swarm>(), 88);
    assert_eq!(size_of::<AddrList>(), 16);
    assert_eq!(size_of::<crate::peers::PeerSlot<u32>>(), 24);
    // 100 swarms × 100 peers, each peer in one swarm with two short addresses.
    let mut sim = Sim::new(Config::default());
    for p in 0..10_000u32 {
        sim.ok(0, p, (p % 100) as u8, Role::Leecher, Event::Started);
    }
    let per_entry = sim.table.heap_bytes() / sim.table.len();
    // Entry 24 + index ~15–30 + peer map ~15–30 + slot 24 + addresses 52 + queue 12.
    assert!(
        (90..=200).contains(&per_entry),
        "{per_entry} bytes per entry"
    );
}

// ---- properties over arbitrary operation sequences ----

const PEERS: u32 = 12;
const BLOBS: u8 = 3;
const SWARM_CAP: usize = 3;
const TABLE_CAP: usize = 5;

#[derive(Clone, Debug)]
enum Op {
    Announce {
        peer: u32,
        blob: u8,
        role: Role,
        event: Event,
        dt: u64,
    },
    /// A listed peer re-announces (so that entries get established).
    Refresh {
        pick: prop::sample::Index,
        dt: u64,
    },
    Scrape {
        blob: u8,
    },
    Expire {
        dt: u64,
    },
    Takedown {
        blob: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let role = prop_oneof![
        3 => Just(Role::Leecher),
        2 => Just(Role::Seeder),
        1 => Just(Role::SeedNode)
    ];
    let event = prop_oneof![
        2 => Just(Event::Started),
        4 => Just(Event::Periodic),
        1 => Just(Event::Completed),
        1 => Just(Event::Stopped)
    ];
    let dt = prop_oneof![10 => Just(0u64), 6 => 1u64..=20, 3 => 60u64..200, 1 => 700u64..900];
    prop_oneof![
        10 => (0u32..PEERS, 0u8..BLOBS, role, event, dt.clone()).prop_map(|(peer, blob, role, event, dt)| {
            // Completed comes from a complete peer.
            let role = if event == Event::Completed && role == Role::Leecher { Role::Seeder } else { role };
            Op::Announce { peer, blob, role, event, dt }
        }),
        12 => (any::<prop::sample::Index>(), 0u64..200).prop_map(|(pick, dt)| Op::Refresh { pick, dt }),
        2 => (0u8..BLOBS).prop_map(|blob| Op::Scrape { blob }),
        2 => dt.prop_map(|dt| Op::Expire { dt }),
        1 => (0u8..BLOBS).prop_map(|blob| Op::Takedown { blob }),
    ]
}

fn run_ops(seed: u64, ops: &[Op]) -> (Vec<String>, Stats) {
    let config = Config::default()
        .with_seed(seed)
        .with_max_entries_per_swarm(SWARM_CAP)
        .with_max_entries(TABLE_CAP)
        .with_answer_peers(4)
        .with_answer_seed_nodes(2);
    let mut sim = Sim::new(config);
    let mut now = 0;
    let mut trace = Vec::new();
    for op in ops {
        let later = match *op {
            Op::Announce { dt, .. } | Op::Refresh { dt, .. } | Op::Expire { dt } => now + dt,
            _ => now,
        };
        // Established entries that are not due to expire by the time of this operation.
        let established_before: Vec<(u32, u8)> = (0..PEERS)
            .flat_map(|p| (0..BLOBS).map(move |b| (p, b)))
            .filter(|&(p, b)| {
                sim.table.entry(&p, &blob(b)).is_some_and(|e| {
                    e.established && e.last_announce + Duration::from_secs(TTL) > sim.at(later)
                })
            })
            .collect();
        let op = match op {
            Op::Refresh { pick, dt } => {
                let listed: Vec<(u32, u8, Role)> = (0..PEERS)
                    .flat_map(|p| (0..BLOBS).map(move |b| (p, b)))
                    .filter_map(|(p, b)| sim.table.entry(&p, &blob(b)).map(|e| (p, b, e.role)))
                    .collect();
                if listed.is_empty() {
                    continue;
                }
                let (peer, blob, role) = listed[pick.index(listed.len())];
                Op::Announce {
                    peer,
                    blob,
                    role,
                    event: Event::Periodic,
                    dt: *dt,
                }
            }
            other => other.clone(),
        };
        match op {
            Op::Announce {
                peer,
                blob: b,
                role,
                event,
                dt,
            } => {
                now += dt;
                let before = sim.table.entry(&peer, &blob(b));
                let got = sim.announce(now, peer, &ann(b, peer, role, event));
                match &got {
                    Ok(_) if event == Event::Stopped => assert!(!sim.listed(peer, b)),
                    Ok(_) => {
                        let e = sim
                            .table
                            .entry(&peer, &blob(b))
                            .expect("accepted entries are listed");
                        assert_eq!((e.role, e.last_announce), (role, sim.at(now)));
                    }
                    Err(Refusal::RateLimited { retry_after }) => {
                        let before = before.expect("only existing entries are rate limited");
                        assert_eq!(sim.table.entry(&peer, &blob(b)), Some(before.clone()));
                        assert_eq!(
                            before.last_announce + Duration::from_secs(MIN_GAP),
                            sim.at(now) + *retry_after
                        );
                    }
                    Err(Refusal::SwarmFull) => {
                        let s = sim.table.scrape(sim.at(now), blob(b));
                        assert_eq!(s.seeders + s.leechers + s.seed_nodes, SWARM_CAP as u32);
                    }
                    Err(Refusal::TrackerFull) => assert_eq!(sim.table.len(), TABLE_CAP),
                    Err(e) => panic!("unexpected {e}"),
                }
                // Newcomers and refreshes never remove another peer's established entry.
                for &(p, eb) in &established_before {
                    if (p, eb) != (peer, b) {
                        assert!(
                            sim.listed(p, eb),
                            "established ({p}, {eb}) lost to ({peer}, {b})"
                        );
                    }
                }
                trace.push(format!("{got:?}"));
            }
            Op::Scrape { blob: b } => {
                trace.push(format!("{:?}", sim.table.scrape(sim.at(now), blob(b))))
            }
            Op::Expire { dt } => {
                now += dt;
                trace.push(format!("expired {}", sim.table.expire(sim.at(now))));
                if let Some(t) = sim.table.poll_timeout() {
                    assert!(t > sim.at(now));
                }
            }
            Op::Refresh { .. } => unreachable!("turned into an announce"),
            Op::Takedown { blob: b } => {
                trace.push(format!("removed {}", sim.table.remove_swarm(blob(b))));
            }
        }
        sim.table.check_invariants();
    }
    (trace, sim.table.stats())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Caps, answer rules and table invariants hold after every operation; established
    /// entries survive other peers' announces; the same seed gives the same trace.
    #[test]
    fn invariants_hold_under_arbitrary_operations(seed in any::<u64>(), ops in proptest::collection::vec(op(), 1..300)) {
        let trace = run_ops(seed, &ops);
        prop_assert_eq!(trace, run_ops(seed, &ops));
    }
}

/// The operation mix of the property test reaches every policy path, so passing it means
/// something: evictions, both refusals for fullness, rate limits, expiry, establishment.
#[test]
fn operation_mix_reaches_every_path() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut total = Stats::default();
    for _ in 0..50 {
        let ops = proptest::collection::vec(op(), 1..300)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let (_, s) = run_ops(1, &ops);
        total.evicted += s.evicted;
        total.refused_rate_limited += s.refused_rate_limited;
        total.refused_swarm_full += s.refused_swarm_full;
        total.refused_tracker_full += s.refused_tracker_full;
        total.expired += s.expired;
        total.stopped += s.stopped;
        total.established += s.established;
    }
    let Stats {
        evicted,
        refused_rate_limited,
        refused_swarm_full,
        refused_tracker_full,
        expired,
        stopped,
        established,
        ..
    } = total;
    for (what, n) in [
        ("evicted", evicted),
        ("rate limited", refused_rate_limited),
        ("swarm full", refused_swarm_full),
        ("tracker full", refused_tracker_full),
        ("expired", expired),
        ("stopped", stopped),
        ("established", established),
    ] {
        assert!(n >= 10, "only {n} {what} in 50 runs");
    }
}
