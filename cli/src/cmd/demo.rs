//! `shoal demo`: the whole system in one process on 127.0.0.1, no setup. A tracker, a seed
//! node, a publisher that pushes a generated file's ciphertext to the seed node and goes
//! offline, and N home peers with capped uplinks that download the file together, from the
//! seed node and from each other. A live view while it runs; then each peer's time against
//! the Kumar–Ross bound, the seed node's egress in copies of the file, the peers' share of
//! the bytes, and a byte-for-byte check of every copy.

mod live;
mod summary;

use std::{
    collections::HashSet,
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::future::join_all;
use libp2p::{Multiaddr, PeerId, identity::Keypair};
use shoal_node::{
    CancellationToken, Config, Node, Store,
    fetch::{self, FetchOptions, Fetched, Output, Progress},
    seal::KeyMode,
    seednode::{self, Policy, SeedNode, SeedNodeConfig},
};
use shoal_protocol::{Link, format::SEGMENT_PLAINTEXT_LEN};
use shoal_tracker::{ServiceConfig, Tracker};
use tokio::sync::watch;

use crate::{exit, ui};

/// Most home peers: each is a full node in this process, on a machine that may have two
/// cores.
const MAX_PEERS: usize = 32;
/// Largest generated file.
const MAX_SIZE: u64 = 1 << 30;
/// Most bytes the demo keeps in its temporary directory (the original, the seed node's
/// ciphertext, one copy per peer).
const MAX_DISK: u64 = 8 << 30;
/// How long starting a node, the tracker noticing the seed node, or a push may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Live view refresh interval.
const REFRESH: Duration = Duration::from_millis(200);
/// How long to wait for the peers' `stopped` announces at the end.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

const AFTER_HELP: &str = "\
Everything runs in this process on 127.0.0.1 and is deleted at the end: a tracker, a seed
node (stores ciphertext only, uploads at most --seed-cap), a publisher that pushes the
encrypted file to the seed node and goes offline, and --peers home peers (each uploading at
most --peer-cap) that fetch the file together and serve each other what they have. A cap of
0 means unlimited. Exit code 5 if a copy differs from the original.

Examples:
  shoal demo                               8 peers, 16 MiB, seed node at 4 MiB/s
  shoal demo --policy frugal               the seed node aims at sending one copy
  shoal demo --peers 16 --size 64MiB       a bigger swarm
  shoal demo --json | jq .offload_percent  the summary as one JSON object";

/// How the seed node serves.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum PolicyArg {
    /// Serve whatever is asked, up to the cap: peers finish soonest, the seed node sends
    /// what the peers cannot.
    Fast,
    /// Hand each block to one peer and let the peers spread it: the seed node aims at one
    /// copy of the file, whatever the number of peers; peers take longer.
    Frugal,
}

impl From<PolicyArg> for Policy {
    fn from(p: PolicyArg) -> Self {
        match p {
            PolicyArg::Frugal => Self::Frugal,
            PolicyArg::Fast => Self::Fast,
        }
    }
}

/// Transport between the demo's nodes.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum Transport {
    /// QUIC (TLS 1.3 inside, UDP).
    Quic,
    /// TCP with Noise and Yamux.
    Tcp,
}

impl Transport {
    const fn name(self) -> &'static str {
        match self {
            Self::Quic => "quic-v1",
            Self::Tcp => "tcp",
        }
    }

    fn listen(self) -> Vec<Multiaddr> {
        let addr = match self {
            Self::Quic => "/ip4/127.0.0.1/udp/0/quic-v1",
            Self::Tcp => "/ip4/127.0.0.1/tcp/0",
        };
        vec![addr.parse().expect("valid multiaddr")]
    }
}

/// Run the demo.
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub(crate) struct Args {
    /// Home peers that fetch the file together (1 to 32).
    #[arg(long, default_value_t = 8, value_parser = parse_peers)]
    peers: usize,
    /// Size of the generated file (at most 1GiB).
    #[arg(long, default_value = "16MiB", value_parser = parse_file_size)]
    size: u64,
    /// How the seed node serves: `fast` (any block asked; peers finish soonest) or
    /// `frugal` (each block to one peer, about one copy in all; with the default caps a
    /// perfect frugal run needs 1.31 × T_min, the summary's frugal bound).
    #[arg(long, value_enum, default_value = "fast")]
    policy: PolicyArg,
    /// The seed node's upload cap, per second (0 = unlimited).
    #[arg(long, value_name = "RATE", default_value = "4MiB", value_parser = ui::parse_size)]
    seed_cap: u64,
    /// Each home peer's upload cap, per second (0 = unlimited).
    #[arg(long, value_name = "RATE", default_value = "1MiB", value_parser = ui::parse_size)]
    peer_cap: u64,
    /// Transport between the nodes.
    #[arg(long, value_enum, default_value = "tcp")]
    transport: Transport,
    /// Print the summary as one JSON object on stdout (no live view).
    #[arg(long)]
    json: bool,
}

fn parse_peers(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of peers"))?;
    match n {
        0 => Err("the demo needs at least 1 peer".into()),
        n if n > MAX_PEERS => Err(format!(
            "at most {MAX_PEERS} peers: each is a full node in this one process"
        )),
        n => Ok(n),
    }
}

fn parse_file_size(s: &str) -> Result<u64, String> {
    match ui::parse_size(s)? {
        0 => Err("the file must have at least 1 byte".into()),
        n if n > MAX_SIZE => Err(format!(
            "at most {} (got {})",
            ui::size(MAX_SIZE),
            ui::size(n)
        )),
        n => Ok(n),
    }
}

/// `0` = unlimited.
const fn cap(rate: u64) -> Option<u64> {
    if rate == 0 { None } else { Some(rate) }
}

fn cap_text(rate: u64) -> String {
    match cap(rate) {
        None => "unlimited".into(),
        Some(r) => format!("{}/s", ui::size(r)),
    }
}

/// One home peer's result.
struct PeerRun {
    /// Time from the common start to the verified file.
    elapsed: Duration,
    /// Bytes this peer uploaded to others.
    uploaded: u64,
    path: PathBuf,
}

/// What the networked part of the demo measured.
struct Measured {
    link: Link,
    push_time: Duration,
    peers: Vec<PeerRun>,
    seed_egress_bytes: u64,
    seed_egress_copies: f64,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let disk = args.size.saturating_mul(args.peers as u64 + 2);
    if disk > MAX_DISK {
        return Err(exit::coded(
            exit::USAGE,
            format!(
                "--peers {} --size {} would keep {} in a temporary directory; the demo allows {} (fewer peers or a smaller --size)",
                args.peers,
                ui::size(args.size),
                ui::size(disk),
                ui::size(MAX_DISK)
            ),
        ));
    }
    let say = |s: &str| {
        if !args.json {
            eprintln!("{s}");
        }
    };
    let policy = Policy::from(args.policy);
    say(&format!(
        "shoal demo: a tracker, a seed node and {} home peers in this process on 127.0.0.1 share a {} file.",
        args.peers,
        ui::size(args.size)
    ));
    say(&format!(
        "  upload caps: seed node {} ({policy} policy), each peer {}",
        cap_text(args.seed_cap),
        cap_text(args.peer_cap)
    ));
    let dir = tempfile::tempdir().context("creating a temporary directory")?;

    // 1. The publisher's file: random, so nothing compresses or dedupes by accident.
    let publisher_dir = dir.path().join("publisher");
    std::fs::create_dir(&publisher_dir).context("creating a temporary directory")?;
    let src = publisher_dir.join("shoal-demo.bin");
    let original = write_random(&src, args.size)?;
    let store = Arc::new(Store::in_memory());
    let bar = ui::bytes_bar(args.size, "encrypting", args.json);
    let t = Instant::now();
    let shared = store.share_file(
        &src,
        "application/octet-stream",
        &KeyMode::Random,
        ui::os_random(),
        &|n| bar.set_position(n),
    )?;
    bar.finish_and_clear();
    say(&format!(
        "  1. the publisher encrypted {} of random bytes in {:.2} s: blob {}",
        ui::size(args.size),
        t.elapsed().as_secs_f64(),
        shared.link.id
    ));

    let rt = ui::runtime()?;
    let measured = rt.block_on(async {
        tokio::select! {
            m = swarm(args, policy, dir.path(), store, shared.link) => m,
            r = tokio::signal::ctrl_c() => {
                r.context("waiting for Ctrl-C")?;
                Err(exit::coded(exit::OTHER, "interrupted"))
            }
        }
    });
    // Blocking threads (file writes, re-sealing) end on their own; don't wait long.
    rt.shutdown_timeout(Duration::from_secs(1));
    let measured = measured?;

    let copies_ok = measured
        .peers
        .iter()
        .map(|p| hash_file(&p.path).map(|h| h == original))
        .collect::<anyhow::Result<Vec<bool>>>()?;
    let report = summary::Report::new(
        args,
        policy,
        &measured,
        copies_ok.iter().all(|&ok| ok),
        &original,
    );
    if args.json {
        ui::print_line(&report.json().to_string())?;
    } else {
        // The result goes to stdout (the steps and the live view went to stderr).
        say("");
        let mut out = std::io::stdout().lock();
        out.write_all(report.text().as_bytes())?;
        out.flush()?;
    }
    if report.verified() {
        Ok(ExitCode::SUCCESS)
    } else {
        let bad: Vec<String> = copies_ok
            .iter()
            .enumerate()
            .filter(|(_, ok)| !**ok)
            .map(|(i, _)| (i + 1).to_string())
            .collect();
        Err(exit::coded(
            exit::INTEGRITY,
            format!(
                "the copies of peer(s) {} differ from the original",
                bad.join(", ")
            ),
        ))
    }
}

/// Nodes of the demo (not the tracker) with the demo's transport, no DHT (the tracker is
/// how they meet), uploads capped at `cap` bytes per second.
fn node_config(transport: Transport, cap: Option<u64>) -> Config {
    Config::loopback()
        .with_listen(transport.listen())
        .with_dht(false)
        .with_upload_limit(cap)
}

/// The node's listen address with `/p2p/<id>`.
fn addr_of(addrs: Vec<Multiaddr>, peer: PeerId, what: &str) -> anyhow::Result<Multiaddr> {
    let first = addrs
        .into_iter()
        .next()
        .with_context(|| format!("the {what} did not start listening on 127.0.0.1"))?;
    format!("{first}/p2p/{peer}")
        .parse()
        .context("building a multiaddr")
}

/// Tracker, seed node, publisher and peers: the networked part, step by step.
async fn swarm(
    args: &Args,
    policy: Policy,
    dir: &Path,
    store: Arc<Store>,
    link: Link,
) -> anyhow::Result<Measured> {
    let stage = Stage {
        args,
        dir,
        stop: CancellationToken::new(),
    };
    let _stop_all = stage.stop.clone().drop_guard();
    let seed_key = Keypair::generate_ed25519();
    let publisher_key = Keypair::generate_ed25519();
    let seed_id = seed_key.public().to_peer_id();
    let (tracker, tracker_addr) = stage.tracker(seed_id).await?;
    let (seed, seed_addr) = stage
        .seed_node(
            policy,
            seed_key,
            publisher_key.public().to_peer_id(),
            &tracker_addr,
        )
        .await?;
    let push_time = stage
        .publish(publisher_key, store, &link, seed_id, seed_addr)
        .await?;
    // The seed node announces what it stores; peers find it through the tracker.
    let mut tracked = tracker.subscribe_stats();
    tokio::time::timeout(STEP_TIMEOUT, tracked.wait_for(|s| s.table.seed_nodes >= 1))
        .await
        .context("the seed node did not announce itself to the tracker in time")?
        .context("the tracker stopped")?;
    stage.say("     the seed node never sees the key: only the link carries it");
    let mut link = link;
    link.peers.clear();
    link.trackers = vec![tracker_addr.to_string()];
    stage.say(&format!("     link (key hidden): {}#…", link.public_part()));
    let peers = stage.peers().await?;
    let (runs, announcers) = stage.fetch_all(&peers, &link, &seed).await?;
    let (seed_egress_bytes, seed_egress_copies) = seed_egress(&seed, &link);
    // Leave the tracker politely (bounded), then stop everything.
    let _ = tokio::time::timeout(
        LEAVE_TIMEOUT,
        join_all(announcers.into_iter().map(|a| a.leave())),
    )
    .await;
    stage.stop.cancel();
    Ok(Measured {
        link,
        push_time,
        peers: runs,
        seed_egress_bytes,
        seed_egress_copies,
    })
}

/// What the steps of the networked part share: the flags, the work directory, and the token
/// that stops every node.
struct Stage<'a> {
    args: &'a Args,
    dir: &'a Path,
    stop: CancellationToken,
}

impl Stage<'_> {
    fn say(&self, s: &str) {
        if !self.args.json {
            eprintln!("{s}");
        }
    }

    /// Step 2: the tracker, which accepts the seed node `seed_id`'s announces as a seed node.
    async fn tracker(&self, seed_id: PeerId) -> anyhow::Result<(Tracker, Multiaddr)> {
        // Every node here connects from 127.0.0.1: lift the per-IP connection limits.
        let conns = u32::try_from(4 * (MAX_PEERS + 2)).expect("small");
        let tracker = Tracker::start(
            ServiceConfig::loopback()
                .with_listen(self.args.transport.listen())
                .with_http(None)
                .with_ip_limits(conns, conns)
                .with_seed_node_allow(vec![seed_id]),
            Keypair::generate_ed25519(),
            self.stop.child_token(),
        )
        .context("starting the tracker")?;
        let addr = addr_of(
            tracker.listen_addrs(STEP_TIMEOUT).await,
            tracker.peer_id(),
            "tracker",
        )?;
        Ok((tracker, addr))
    }

    /// Step 3: the seed node: stores what `publisher` pushes, serves it to the swarm under
    /// `policy`, announces it to the tracker. Returns it with its address.
    async fn seed_node(
        &self,
        policy: Policy,
        key: Keypair,
        publisher: PeerId,
        tracker: &Multiaddr,
    ) -> anyhow::Result<(SeedNode, Multiaddr)> {
        let id = key.public().to_peer_id();
        let node = Node::start(
            node_config(self.args.transport, cap(self.args.seed_cap)),
            key,
            Arc::new(Store::in_memory()),
            self.stop.clone(),
        )
        .context("starting the seed node")?;
        let mut config = SeedNodeConfig::new(
            self.dir.join("seed-node"),
            self.args.size.saturating_mul(4).saturating_add(64 << 20),
        );
        config.allow = HashSet::from([publisher]);
        config.policy = policy;
        config.trackers = vec![tracker.clone()];
        let seed = SeedNode::start(&node, config).context("starting the seed node")?;
        let addr = addr_of(node.listen_addrs(STEP_TIMEOUT).await, id, "seed node")?;
        Ok((seed, addr))
    }

    /// Step 4: the publisher (`key`, sharing from `store`) pushes the ciphertext of `link`'s
    /// blob to the seed node (never the key) and leaves. Returns how long the push took.
    async fn publish(
        &self,
        key: Keypair,
        store: Arc<Store>,
        link: &Link,
        seed_id: PeerId,
        seed_addr: Multiaddr,
    ) -> anyhow::Result<Duration> {
        let publisher_stop = self.stop.child_token();
        let publisher = Node::start(
            node_config(self.args.transport, None),
            key,
            store.clone(),
            publisher_stop.clone(),
        )
        .context("starting the publisher's node")?;
        let source = store
            .get(&link.id)
            .context("the shared file is not in the publisher's store")?;
        publisher
            .dial(seed_addr, STEP_TIMEOUT)
            .await
            .context("the publisher cannot reach the seed node")?;
        let bar = ui::bytes_bar(source.blob_len(), "pushing", self.args.json);
        let t = Instant::now();
        let pushed = seednode::push(&publisher, seed_id, source, |sent, total| {
            bar.set_length(total);
            bar.set_position(sent);
        })
        .await
        .context("pushing to the seed node")?;
        let push_time = t.elapsed();
        bar.finish_and_clear();
        publisher_stop.cancel();
        self.say(&format!(
            "  2. it pushed the ciphertext to the seed node ({} in {:.2} s) and went offline;",
            ui::size(pushed.bytes_sent),
            push_time.as_secs_f64()
        ));
        Ok(push_time)
    }

    /// Step 5: the home peers, each with a directory of its own, listening.
    async fn peers(&self) -> anyhow::Result<Vec<(Node, PathBuf)>> {
        let args = self.args;
        let mut peers = Vec::with_capacity(args.peers);
        for i in 0..args.peers {
            let node = Node::start(
                node_config(args.transport, cap(args.peer_cap)),
                Keypair::generate_ed25519(),
                Arc::new(Store::in_memory()),
                self.stop.clone(),
            )
            .with_context(|| format!("starting peer {}", i + 1))?;
            let out = self.dir.join(format!("peer-{}", i + 1));
            std::fs::create_dir(&out).context("creating a peer's directory")?;
            peers.push((node, out));
        }
        for (node, _) in &peers {
            // Listening before they announce, so the tracker hands out their addresses.
            if node.listen_addrs(STEP_TIMEOUT).await.is_empty() {
                anyhow::bail!("a peer did not start listening on 127.0.0.1");
            }
        }
        Ok(peers)
    }

    /// Step 5, continued: every peer fetches `link` at once, with the live view meanwhile.
    /// Returns each peer's run, and their announcers (they keep serving until dropped).
    async fn fetch_all(
        &self,
        peers: &[(Node, PathBuf)],
        link: &Link,
        seed: &SeedNode,
    ) -> anyhow::Result<(Vec<PeerRun>, Vec<shoal_node::announce::Announcer>)> {
        let args = self.args;
        self.say(&format!(
            "  3. {} peers fetch it at once, from the seed node and from each other:",
            args.peers
        ));
        let blob_len = link.blob_len.unwrap_or(args.size);
        let mut watches = Vec::with_capacity(args.peers);
        let started = Instant::now();
        let runs: Vec<_> = peers
            .iter()
            .map(|(node, out)| {
                let (tx, rx) = watch::channel(Progress::default());
                watches.push(rx);
                let node = node.clone();
                let link = link.clone();
                let mut opts = FetchOptions::new(Output::Dir(out.clone()));
                opts.provide = false;
                tokio::spawn(async move {
                    let r = fetch::fetch(&node, &link, opts, tx).await;
                    (r, started.elapsed())
                })
            })
            .collect();
        let mut view = live::View::new(args.json, args.peers, args.size, blob_len);
        let all = join_all(runs);
        tokio::pin!(all);
        let mut tick = tokio::time::interval(REFRESH);
        let results = loop {
            tokio::select! {
                r = &mut all => break r,
                _ = tick.tick() => view.update(&live::Now {
                    elapsed: started.elapsed(),
                    peers: watches.iter().zip(peers).map(|(w, (node, _))| {
                        let p = w.borrow();
                        live::PeerNow {
                            done_bytes: (p.done_blocks * SEGMENT_PLAINTEXT_LEN as u64).min(args.size),
                            complete: p.total_blocks > 0 && p.done_blocks == p.total_blocks,
                            uploaded: uploaded(node),
                        }
                    }).collect(),
                    seed_egress: seed_egress(seed, link).0,
                }),
            }
        };
        view.finish();
        // Everyone is done: every peer kept serving until now. Collect the figures.
        let mut runs = Vec::with_capacity(args.peers);
        let mut announcers = Vec::new();
        for (i, (joined, (node, _))) in results.into_iter().zip(peers).enumerate() {
            let (fetched, elapsed) = joined.context("a peer's task failed")?;
            let Fetched {
                path, announcer, ..
            } = fetched.with_context(|| format!("peer {} could not fetch the file", i + 1))?;
            announcers.extend(announcer);
            runs.push(PeerRun {
                elapsed,
                uploaded: uploaded(node),
                path,
            });
        }
        Ok((runs, announcers))
    }
}

fn uploaded(node: &Node) -> u64 {
    node.stats().uploaded_bytes.load(Ordering::Relaxed)
}

/// The seed node's egress for the demo's blob: bytes and copies of the blob.
fn seed_egress(seed: &SeedNode, link: &Link) -> (u64, f64) {
    let id = link.id.to_string();
    seed.stats()
        .blobs
        .into_iter()
        .find(|b| b.id == id)
        .map_or((0, 0.0), |b| (b.egress_bytes, b.egress_copies))
}

fn write_random(path: &Path, size: u64) -> anyhow::Result<blake3::Hash> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut f =
        std::io::BufWriter::new(std::fs::File::create(path).context("writing the demo file")?);
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).expect("at most 1 MiB");
        rng.fill_bytes(&mut buf[..n]);
        hasher.update(&buf[..n]);
        f.write_all(&buf[..n]).context("writing the demo file")?;
        left -= n as u64;
    }
    f.flush().context("writing the demo file")?;
    Ok(hasher.finalize())
}

fn hash_file(path: &Path) -> anyhow::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(std::fs::File::open(path).context("reading a peer's copy")?)
        .context("reading a peer's copy")?;
    Ok(hasher.finalize())
}
