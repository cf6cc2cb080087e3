//! `shoal seed-node`, `shoal push` and `shoal id` as an operator and a publisher run them:
//! child processes on loopback. A seed node's files and logs never hold the key or
//! plaintext.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{run, shoal, start, text, walk, write_random};

#[test]
fn push_to_a_seed_node_then_get_from_it_and_nothing_secret_reaches_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (publisher, operator, stranger) = (root.join("pub"), root.join("op"), root.join("x"));
    for d in [&publisher, &operator, &stranger] {
        std::fs::create_dir(d).unwrap();
    }
    let data = write_random(&publisher.join("film.bin"), 700_000);
    let id = run(shoal(&publisher).args(["id"]));
    assert!(id.status.success());
    let publisher_id = text(&id.stdout).trim().to_owned();
    assert!(publisher_id.starts_with("12D3KooW"), "{publisher_id}");

    let store = operator.join("store");
    let (mut seed_node, addr, seed_log) = start(
        shoal(&operator)
            .args(["seed-node", "--store"])
            .arg(&store)
            .args(["--allow", &publisher_id, "--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(["--http", "off", "--quota", "100MiB"])
            .env("RUST_LOG", "shoal_node=trace,debug"),
    );
    assert!(addr.contains("/p2p/12D3KooW"), "{addr}");

    // The publisher shares (to seal and get the link), stops, and pushes.
    let (share, link, _) = start(shoal(&publisher).args([
        "share",
        "film.bin",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--no-dht",
    ]));
    drop(share);
    let key = link.rsplit('#').next().unwrap().to_owned();
    let o = run(shoal(&publisher).args(["push", &link, "--to", &addr, "--json"]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["status"], "stored");
    assert_eq!(report["blocks_sent"], report["blocks_total"]);
    // Again: nothing to send.
    let o = run(shoal(&publisher).args(["push", &link, "--to", &addr]));
    assert!(o.status.success());
    assert!(
        text(&o.stderr).contains("already stores"),
        "{}",
        text(&o.stderr)
    );

    // A downloader gets it from the seed node (the publisher is gone).
    let o =
        run(shoal(&stranger).args(["get", &link, "--peer", &addr, "--no-dht", "-o", "copy.bin"]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(std::fs::read(stranger.join("copy.bin")).unwrap(), data);

    // A machine that does not hold the blob cannot push it, and says what to do.
    let o = run(shoal(&stranger).args(["push", &link, "--to", &addr]));
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("does not hold blob"), "{err}");

    let _ = seed_node.0.kill();
    common::wait_bounded(&mut seed_node.0);
    let logs = seed_log.lock().unwrap().clone();
    assert!(
        text(&logs).contains("receiving push"),
        "the seed node logged at debug level"
    );
    let samples: Vec<&[u8]> = [0, 100_000, 350_000, 699_000]
        .iter()
        .map(|&at| &data[at..at + 32])
        .collect();
    let mut scanned = 0;
    for (what, bytes) in walk(&operator)
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .chain([("seed-node logs".to_owned(), logs)])
    {
        assert!(!text(&bytes).contains(&key), "{what} contains the key");
        for s in &samples {
            assert!(
                !bytes.windows(s.len()).any(|w| w == *s),
                "{what} contains plaintext"
            );
        }
        scanned += 1;
    }
    assert!(scanned >= 4, "store, outboard, identity and logs scanned");
}

#[test]
fn push_from_a_publisher_not_allowed_names_the_flag_to_add() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (publisher, operator) = (root.join("pub"), root.join("op"));
    std::fs::create_dir(&publisher).unwrap();
    std::fs::create_dir(&operator).unwrap();
    write_random(&publisher.join("f.bin"), 100_000);
    let (_seed_node, addr, _) = start(shoal(&operator).args([
        "seed-node",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--http",
        "off",
    ]));
    let (share, link, _) = start(shoal(&publisher).args([
        "share",
        "f.bin",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--no-dht",
    ]));
    drop(share);
    let me = text(&run(shoal(&publisher).args(["id"])).stdout)
        .trim()
        .to_owned();
    // (`push --listen` like every other command; issue 11.)
    let o = run(shoal(&publisher).args([
        "push",
        &link,
        "--to",
        &addr,
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ]));
    // A remote operator's refusal has its own exit code (issue 11: it was 1).
    assert_eq!(o.status.code(), Some(8), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains(&format!("--allow {me}")), "{err}");
}

#[test]
fn every_command_help_has_examples() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in [
        "seed-node",
        "push",
        "id",
        "get",
        "share",
        "seed",
        "encrypt",
        "decrypt",
        "inspect",
        "demo",
        "tracker",
        "takedown",
    ] {
        let o = run(shoal(dir.path()).args([cmd, "--help"]));
        assert!(o.status.success());
        assert!(text(&o.stdout).contains("Examples:"), "{cmd} --help");
    }
}
