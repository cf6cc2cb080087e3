//! `shoal demo`: the whole path on one machine, no setup. A generated file is sealed and
//! shared by one node and fetched by a second over loopback, verified block by block and
//! decrypted; then the copy is compared with the original.

use std::{
    io::Write,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use libp2p::identity::Keypair;
use shoal_node::{
    CancellationToken, Config, Node, Store,
    fetch::{self, FetchOptions, Output, Progress},
    seal::KeyMode,
};
use shoal_protocol::format::SEGMENT_PLAINTEXT_LEN;
use tokio::sync::watch;

use crate::{exit, ui};

/// Transport between the demo's two nodes.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum Transport {
    /// QUIC (TLS 1.3 inside, UDP).
    Quic,
    /// TCP with Noise and Yamux.
    Tcp,
}

/// Run the demo.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Size of the generated file.
    #[arg(long, default_value = "64MiB", value_parser = ui::parse_size)]
    size: u64,
    /// Transport between the two nodes.
    #[arg(long, value_enum, default_value = "tcp")]
    transport: Transport,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let say = |s: String| {
        if !args.json {
            eprintln!("{s}");
        }
    };
    say(format!(
        "shoal demo: two nodes on this machine share a {} file, end-to-end encrypted.",
        ui::size(args.size)
    ));

    // 1. A random file (random, so nothing compresses or dedupes by accident).
    let src = dir.path().join("demo-file.bin");
    let started = Instant::now();
    let original = write_random(&src, args.size)?;
    say(format!(
        "  1. wrote {} of random bytes in {:.2} s",
        ui::size(args.size),
        started.elapsed().as_secs_f64()
    ));

    // 2. Seal it: encrypt every 64 KiB segment and build the BLAKE3 verification tree.
    let store = Arc::new(Store::in_memory());
    let bar = ui::bytes_bar(args.size, "sealing", args.json);
    let t = Instant::now();
    let shared = store.share_file(
        &src,
        "application/octet-stream",
        &KeyMode::Random,
        ui::os_random(),
        &|n| bar.set_position(n),
    )?;
    bar.finish_and_clear();
    let seal_time = t.elapsed();
    say(format!(
        "  2. sealed it in {:.2} s ({:.0} MB/s): blob {}",
        seal_time.as_secs_f64(),
        ui::mb_per_s(args.size, seal_time),
        shared.link.id
    ));

    let rt = ui::runtime()?;
    let summary = rt.block_on(async {
        let stop = CancellationToken::new();
        let sharer = Node::start(
            Config::loopback(),
            Keypair::generate_ed25519(),
            store,
            stop.clone(),
        )?;
        let getter = Node::start(
            Config::loopback(),
            Keypair::generate_ed25519(),
            Arc::new(Store::in_memory()),
            stop.clone(),
        )?;
        let kind = match args.transport {
            Transport::Quic => "quic-v1",
            Transport::Tcp => "tcp",
        };
        let addrs = sharer.listen_addrs(Duration::from_secs(10)).await;
        let addr = addrs
            .iter()
            .find(|a| a.to_string().contains(kind))
            .context("the sharing node did not start listening")?;
        let mut link = shared.link.clone();
        link.peers = vec![format!("{addr}/p2p/{}", sharer.peer_id())];
        say(format!(
            "  3. node A ({}) serves it on {addr}",
            short(&sharer.peer_id().to_string())
        ));
        say(format!("     link (key hidden): {}#…", link.public_part()));

        // 4. Node B fetches with the link: each block is verified against the blob id
        //    before it is decrypted and written.
        let out = dir.path().join("fetched.bin");
        let (tx, mut rx) = watch::channel(Progress::default());
        let bar = ui::bytes_bar(args.size, "fetching", args.json);
        let bar2 = bar.clone();
        let size = args.size;
        let progress = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let done = rx.borrow().done_blocks;
                bar2.set_position((done * SEGMENT_PLAINTEXT_LEN as u64).min(size));
            }
        });
        let t = Instant::now();
        let done = fetch::fetch(
            &getter,
            &link,
            FetchOptions::new(Output::File(out.clone())),
            tx,
        )
        .await?;
        let fetch_time = t.elapsed();
        let _ = progress.await;
        bar.finish_and_clear();
        say(format!(
            "  4. node B ({}) fetched, verified and decrypted it in {:.2} s ({:.0} MB/s) over {}",
            short(&getter.peer_id().to_string()),
            fetch_time.as_secs_f64(),
            ui::mb_per_s(args.size, fetch_time),
            kind
        ));

        // 5. Compare.
        let copy = hash_file(&out)?;
        let same = copy == original;
        say(format!(
            "  5. the copy is {} (BLAKE3 {})",
            if same {
                "byte-identical to the original"
            } else {
                "DIFFERENT from the original"
            },
            &copy.to_hex()[..16]
        ));
        let uploaded = sharer
            .stats()
            .uploaded_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        stop.cancel();
        anyhow::Ok(serde_json::json!({
            "ok": same,
            "file_len": args.size,
            "blob_id": link.id.to_string(),
            "transport": kind,
            "seal_seconds": seal_time.as_secs_f64(),
            "seal_mb_per_s": ui::mb_per_s(args.size, seal_time),
            "fetch_seconds": fetch_time.as_secs_f64(),
            "fetch_mb_per_s": ui::mb_per_s(args.size, fetch_time),
            "uploaded_bytes": uploaded,
            "name": done.metadata.name,
        }))
    })?;
    if args.json {
        ui::print_line(&summary.to_string())?;
    } else {
        say("The sharer saw only ciphertext requests; the key never left the link.".into());
        say("Next: `shoal share FILE` on one machine and `shoal get LINK` on another.".into());
    }
    if summary["ok"] == true {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(exit::coded(
            exit::INTEGRITY,
            "the fetched copy differs from the original",
        ))
    }
}

fn short(s: &str) -> String {
    format!("{}…{}", &s[..8], &s[s.len() - 6..])
}

fn write_random(path: &std::path::Path, size: u64) -> anyhow::Result<blake3::Hash> {
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

fn hash_file(path: &std::path::Path) -> anyhow::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(std::fs::File::open(path).context("reading the fetched file")?)
        .context("reading the fetched file")?;
    Ok(hasher.finalize())
}
