//! Peer table throughput and memory on one core (issue 3: ≥ 50,000 announces/s; memory per
//! 1M entries). `cargo bench -p shoal-tracker --bench announce`. Results: docs/tracker.md §5.
//!
//! The table holds 10,000 swarms × 100 peers = 1,000,000 entries: per swarm 2 seed nodes,
//! 18 seeders and 80 leechers, each a distinct peer with two listen addresses (an IPv4 and
//! an IPv6 QUIC multiaddr, 11 and 23 bytes). Peer handles are either `u32` (simulations) or
//! an 80-byte stand-in with the layout and `Hash` of libp2p's `PeerId` (the service).
//!
//! Memory is measured, not computed: a child process (this binary, re-run with
//! `SHOAL_TRACKER_BENCH_MEMORY`) reads its resident set size (`VmRSS`, Linux) before and
//! after filling a table, and also prints the table's own estimate from container
//! capacities (`PeerTable::heap_bytes`). A counting global allocator would need `unsafe`,
//! which the workspace forbids.

// Benchmarks panic on setup failure; that is the right outcome.
#![allow(clippy::unwrap_used)]

use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use shoal_protocol::BlobId;
use shoal_protocol::tracker::{AnnounceRequest, Event, Response, Role};
use shoal_tracker::table::{Config, PeerTable};

const SWARMS: u32 = 10_000;
const PER_SWARM: u32 = 100;
const ENTRIES: u32 = SWARMS * PER_SWARM;
/// Visiting entries in the order `k × STRIDE mod ENTRIES` touches every entry once per pass,
/// scattered over swarms like real traffic (7,919 is prime, so coprime to 10^6).
const STRIDE: u64 = 7_919;
const MEMORY_ENV: &str = "SHOAL_TRACKER_BENCH_MEMORY";

/// A peer handle for the benchmark.
trait Handle: Copy + Eq + Hash + Ord + Debug {
    fn of(i: u32) -> Self;
    fn to_bytes(self) -> Vec<u8>;
}

impl Handle for u32 {
    fn of(i: u32) -> Self {
        i
    }
    fn to_bytes(self) -> Vec<u8> {
        self.to_le_bytes().to_vec()
    }
}

/// libp2p's `PeerId` is a `Multihash<64>`: `{ code: u64, size: u8, digest: [u8; 64] }`, 80
/// bytes, hashing the code and the used part of the digest. An ed25519 peer id is the
/// identity multihash (code 0) of a 36-byte protobuf-encoded public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct PeerIdLike {
    code: u64,
    size: u8,
    digest: [u8; 64],
}

impl Hash for PeerIdLike {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.code.hash(state);
        self.digest[..usize::from(self.size)].hash(state);
    }
}

impl Handle for PeerIdLike {
    fn of(i: u32) -> Self {
        let mut digest = [0; 64];
        digest[..4].copy_from_slice(&[0x08, 0x01, 0x12, 0x20]);
        for (k, chunk) in digest[4..36].chunks_mut(4).enumerate() {
            chunk.copy_from_slice(&(i ^ (k as u32).wrapping_mul(0x9e37_79b9)).to_le_bytes());
        }
        Self {
            code: 0,
            size: 36,
            digest,
        }
    }
    fn to_bytes(self) -> Vec<u8> {
        let mut v = vec![0x00, self.size];
        v.extend_from_slice(&self.digest[..usize::from(self.size)]);
        v
    }
}

fn blob(swarm: u32) -> BlobId {
    let mut b = [0x5a; 32];
    b[..4].copy_from_slice(&swarm.to_le_bytes());
    BlobId::from_bytes(b)
}

/// A reusable announce; `set` rewrites it in place (no allocation) for peer `i`.
fn template() -> AnnounceRequest {
    AnnounceRequest {
        blob: blob(0),
        role: Role::Leecher,
        blocks_held: 0,
        total_blocks: 1000,
        // /ip4/a.b.c.d/udp/p/quic-v1 and /ip6/…/udp/p/quic-v1 as binary multiaddrs.
        addrs: vec![
            vec![0x04, 0, 0, 0, 0, 0x91, 0x02, 0, 0, 0xcc, 0x03],
            [
                vec![0x29],
                vec![0x20; 16],
                vec![0x91, 0x02, 0, 0, 0xcc, 0x03],
            ]
            .concat(),
        ],
        event: Event::Started,
    }
}

fn set(req: &mut AnnounceRequest, i: u32, event: Event) {
    let swarm = i / PER_SWARM;
    req.blob = blob(swarm);
    (req.role, req.blocks_held) = match i % PER_SWARM {
        0..2 => (Role::SeedNode, 1000),
        2..20 => (Role::Seeder, 1000),
        _ => (Role::Leecher, i % 997),
    };
    req.event = event;
    let port = ((i % 50_000) as u16 + 1024).to_be_bytes();
    req.addrs[0][1..5].copy_from_slice(&i.to_be_bytes());
    req.addrs[0][7..9].copy_from_slice(&port);
    req.addrs[1][13..17].copy_from_slice(&i.to_be_bytes());
    req.addrs[1][19..21].copy_from_slice(&port);
}

fn config() -> Config {
    Config::default()
        .with_max_entries(2 * ENTRIES as usize)
        .with_seed(1)
}

/// A table with every entry announced once at `t0`; returns it and the insert rate.
fn filled<P: Handle>(t0: Instant) -> (PeerTable<P>, f64) {
    let mut table = PeerTable::new(config(), t0).unwrap();
    let mut req = template();
    let start = Instant::now();
    for i in 0..ENTRIES {
        set(&mut req, i, Event::Started);
        black_box(table.announce(t0, P::of(i), &req).unwrap());
    }
    let rate = f64::from(ENTRIES) / start.elapsed().as_secs_f64();
    assert_eq!(table.len(), ENTRIES as usize);
    (table, rate)
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Child process: fill one table and print its memory.
fn measure<P: Handle>(name: &str) {
    let before = rss_bytes();
    let (table, rate) = filled::<P>(Instant::now());
    let after = rss_bytes();
    let per_entry = |b: u64| b as f64 / f64::from(ENTRIES);
    println!(
        "memory {name:>8}: {} entries, {} swarms: RSS +{:.0} MB = {:.0} B/entry \
         (table estimate {:.0} B/entry); first announces {:.0}/s",
        table.len(),
        table.stats().swarms,
        (after - before) as f64 / 1e6,
        per_entry(after - before),
        per_entry(table.heap_bytes() as u64),
        rate,
    );
    black_box(table);
}

fn report_memory() {
    for kind in ["u32", "peer-id"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .env(MEMORY_ENV, kind)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

/// Re-announces (`Periodic`) of existing entries in a full table: the steady state. Each
/// pass over all entries moves the clock by 61 s, just past the rate limit.
fn reannounce<P: Handle>(c: &mut Criterion, name: &str, encode: bool) {
    let t0 = Instant::now();
    let (mut table, _) = filled::<P>(t0);
    let mut req = template();
    let mut k: u64 = 0;
    let mut g = c.benchmark_group("announce");
    g.throughput(Throughput::Elements(1));
    let id = if encode {
        format!("reannounce_and_encode/{name}")
    } else {
        format!("reannounce/{name}")
    };
    g.bench_function(id, |b| {
        b.iter(|| {
            let pass = k / u64::from(ENTRIES);
            let i = u32::try_from(k * STRIDE % u64::from(ENTRIES)).unwrap();
            k += 1;
            set(&mut req, i, Event::Periodic);
            let now = t0 + Duration::from_secs(61 * (pass + 1));
            let answer = table.announce(now, P::of(i), &req).unwrap();
            if encode {
                let resp = answer.into_response(|p| p.to_bytes());
                black_box(Response::Announce(resp).encode());
            } else {
                black_box(answer);
            }
        });
    });
    g.finish();
}

/// Churn: one peer leaves (`Stopped`) and a new one joins (`Started`) the same swarm per
/// iteration, two announces.
fn churn<P: Handle>(c: &mut Criterion, name: &str) {
    let t0 = Instant::now();
    let (mut table, _) = filled::<P>(t0);
    let mut ids: Vec<u32> = (0..ENTRIES).collect();
    let mut next_id = ENTRIES;
    let mut req = template();
    let mut k: u64 = 0;
    let mut g = c.benchmark_group("announce");
    g.throughput(Throughput::Elements(2));
    g.bench_function(format!("churn_stop_and_start/{name}"), |b| {
        b.iter(|| {
            let slot = u32::try_from(k * STRIDE % u64::from(ENTRIES)).unwrap();
            k += 1;
            set(&mut req, slot, Event::Stopped);
            black_box(table.announce(t0, P::of(ids[slot as usize]), &req).unwrap());
            set(&mut req, slot, Event::Started);
            black_box(table.announce(t0, P::of(next_id), &req).unwrap());
            ids[slot as usize] = next_id;
            next_id += 1;
        });
    });
    g.finish();
}

fn scrape(c: &mut Criterion) {
    let t0 = Instant::now();
    let (mut table, _) = filled::<PeerIdLike>(t0);
    let mut k: u32 = 0;
    let mut g = c.benchmark_group("scrape");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_swarm/peer-id", |b| {
        b.iter(|| {
            k = k.wrapping_add(7_919);
            black_box(table.scrape(t0, blob(k % SWARMS)))
        });
    });
    g.finish();
}

fn main() {
    if let Ok(kind) = std::env::var(MEMORY_ENV) {
        match kind.as_str() {
            "u32" => measure::<u32>("u32"),
            _ => measure::<PeerIdLike>("peer-id"),
        }
        return;
    }
    report_memory();
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8))
        .configure_from_args();
    reannounce::<PeerIdLike>(&mut c, "peer-id", false);
    reannounce::<u32>(&mut c, "u32", false);
    reannounce::<PeerIdLike>(&mut c, "peer-id", true);
    churn::<PeerIdLike>(&mut c, "peer-id");
    scrape(&mut c);
    c.final_summary();
}
