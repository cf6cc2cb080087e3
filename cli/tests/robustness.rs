//! Issue 11 as a user meets it: caps of 0, damaged links, missing or full output
//! directories, busy ports and data directories, repeated hints, `--json` everywhere, colour
//! only on terminals. Child processes on loopback; every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{path::Path, process::Command, time::Instant};

use common::{Guard, LIMIT, run, shoal, start, text, walk, write_random};

/// `shoal share FILE` on loopback with `extra` flags: the sharer and its link.
fn share(dir: &Path, file: &str, extra: &[&str]) -> (Guard, String) {
    let (g, link, _) = start(
        shoal(dir)
            .args([
                "share",
                file,
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--no-dht",
            ])
            .args(extra),
    );
    (g, link)
}

/// Item 5: `--up-limit 0` is "unlimited" for `share` as for every command (it answered
/// every request `busy`).
#[test]
fn share_with_up_limit_0_serves_at_full_speed() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_random(&dir.path().join("f.bin"), 3_000_000);
    let (_sharer, link) = share(dir.path(), "f.bin", &["--up-limit", "0"]);
    let started = Instant::now();
    let o = run(shoal(dir.path()).args(["get", &link, "--no-dht", "--json", "-o", "got.bin"]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(std::fs::read(dir.path().join("got.bin")).unwrap(), data);
    assert!(
        started.elapsed() < LIMIT / 4,
        "took {:?}",
        started.elapsed()
    );
    // Item 10: every block counts, the first and last (bootstrap) ones too.
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let blocks = data.len().div_ceil(65_520) as u64; // the header record fits in block 0
    assert_eq!(v["fetched_blocks"].as_u64(), Some(blocks), "{v}");
}

/// Item 3: a link whose size hint was damaged fails at once with exit 3 and says so.
#[test]
fn a_link_with_a_wrong_size_fails_at_once_as_damaged() {
    let dir = tempfile::tempdir().unwrap();
    write_random(&dir.path().join("f.bin"), 1_000_000);
    let (_sharer, link) = share(dir.path(), "f.bin", &[]);
    let (before, after) = link.split_once("sz=").unwrap();
    let (size, rest) = after.split_once(['&', '#']).unwrap();
    let sep = &after[size.len()..=size.len()];
    let damaged = format!("{before}sz=1040{sep}{rest}");
    let started = Instant::now();
    let o = run(shoal(dir.path()).args(["get", &damaged, "--no-dht", "-o", "x.bin"]));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains(&format!(
            "the link's size (1040 bytes) does not match the blob's ({size})"
        )) && err.contains("the link is damaged"),
        "{err}"
    );
    assert!(
        started.elapsed().as_secs() < 10,
        "took {:?}",
        started.elapsed()
    );
}

/// Item 11: a missing output directory is named before anything is fetched, and nothing
/// is left behind (it downloaded everything into hidden files, then failed).
#[test]
fn a_missing_output_directory_is_refused_before_fetching() {
    let dir = tempfile::tempdir().unwrap();
    write_random(&dir.path().join("f.bin"), 200_000);
    let (_sharer, link) = share(dir.path(), "f.bin", &[]);
    let before = walk(dir.path()).len();
    for (out, named) in [
        ("newdir/", "newdir"),
        ("missing/sub/file.bin", "missing/sub"),
    ] {
        let o = run(shoal(dir.path()).args(["get", &link, "--no-dht", "-o", out]));
        assert_eq!(o.status.code(), Some(6), "{out}: {}", text(&o.stderr));
        let err = text(&o.stderr);
        assert!(
            err.contains(&format!("directory {named} does not exist")),
            "{out}: {err}"
        );
        assert!(!err.contains(".shoal-"), "blames a hidden file: {err}");
    }
    assert_eq!(walk(dir.path()).len(), before, "files were left behind");
}

/// Item 7: a download into a filesystem too small for it says so before fetching the body,
/// with how much is needed (a 1 MiB tmpfs in a private mount namespace of this test).
#[cfg(target_os = "linux")]
#[test]
fn a_download_into_a_too_small_filesystem_says_how_much_is_needed() {
    let dir = tempfile::tempdir().unwrap();
    write_random(&dir.path().join("big.bin"), 4_000_000);
    let (_sharer, link) = share(dir.path(), "big.bin", &[]);
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    // `unshare -rm`: a user and mount namespace of our own (as root or not), where mounting
    // a tmpfs is allowed and disappears with the process.
    let o = run(Command::new("unshare")
        .current_dir(dir.path())
        .env("SHOAL_DATA_DIR", dir.path().join("data"))
        .args(["-rm", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=1m tmpfs "$2" && exec "$0" get "$1" --no-dht -o "$2/""#)
        .arg(common::SHOAL)
        .arg(&link)
        .arg(&small));
    let err = text(&o.stderr);
    assert!(
        !err.contains("unshare:") && !err.contains("mount:"),
        "this test needs `unshare -rm` (user namespaces) and tmpfs: {err}"
    );
    assert_eq!(o.status.code(), Some(6), "{err}");
    assert!(
        err.contains("not enough free space") && err.contains("free some space"),
        "{err}"
    );
}

/// Item 12: a second node cannot listen on a port another one holds (libp2p binds with
/// `SO_REUSEPORT`, so it started and took some of the first one's connections), and two
/// processes cannot run a node with one data directory's identity.
#[test]
fn a_busy_port_and_a_data_directory_in_use_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_random(&dir.path().join("f.bin"), 10_000);
    let (_first, link) = share(dir.path(), "f.bin", &[]);
    // Its port, from the link's hint.
    let hint = link.split("peer=").nth(1).unwrap();
    let port = hint
        .split("/tcp/")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let o = run(shoal(&other)
        .args(["share", "../f.bin", "--no-dht", "--listen"])
        .arg(format!("/ip4/127.0.0.1/tcp/{port}")));
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains(&format!("cannot listen on /ip4/127.0.0.1/tcp/{port}")),
        "{err}"
    );
    assert!(err.to_lowercase().contains("in use"), "{err}");

    // The same data directory as the running sharer: refused, says what to do.
    let o = run(shoal(dir.path()).args([
        "share",
        "f.bin",
        "--no-dht",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ]));
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("another shoal process is running with the identity")
            && err.contains("--data-dir"),
        "{err}"
    );
}

/// Items 13 and 14: two listen addresses give two `peer=` hints, not four; `id --json`.
#[test]
fn links_name_each_address_once_and_id_speaks_json() {
    let dir = tempfile::tempdir().unwrap();
    write_random(&dir.path().join("f.bin"), 10_000);
    let (_sharer, link) = share(
        dir.path(),
        "f.bin",
        &["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"],
    );
    let hints: Vec<&str> = link
        .split('#')
        .next()
        .unwrap()
        .split(['?', '&'])
        .filter(|h| h.starts_with("peer="))
        .collect();
    assert_eq!(hints.len(), 2, "{hints:?}");
    assert_ne!(hints[0], hints[1]);

    let o = run(shoal(dir.path()).args(["id", "--json"]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["peer_id"].as_str().unwrap().starts_with("12D3KooW"),
        "{v}"
    );
    assert_eq!(v["role"], "node");
}

/// Item 8: log lines carry no colour codes when stderr is a pipe (and none with
/// `NO_COLOR`).
#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    write_random(&dir.path().join("f.bin"), 10_000);
    let (_sharer, link) = share(dir.path(), "f.bin", &[]);
    let o = run(shoal(dir.path())
        .args(["get", &link, "--no-dht", "-o", "got.bin"])
        .env("RUST_LOG", "info"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("INFO"), "logged at info level: {err}");
    assert!(!err.contains('\u{1b}'), "colour codes in a pipe: {err:?}");
}

/// Item 16: with the DHT off, the "no source" error does not suggest a DHT bootstrap peer.
#[test]
fn without_the_dht_the_error_does_not_suggest_a_bootstrap_peer() {
    let dir = tempfile::tempdir().unwrap();
    write_random(&dir.path().join("f.bin"), 1_000);
    let o = run(shoal(dir.path()).args(["encrypt", "f.bin", "-o", "f.blob", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let link = v["link"].as_str().unwrap();
    let hintless = format!(
        "{}#{}",
        link.split(['?', '#']).next().unwrap(),
        link.rsplit('#').next().unwrap()
    );
    let o = run(shoal(dir.path()).args(["get", &hintless, "--no-dht"]));
    assert_eq!(o.status.code(), Some(4), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("the DHT is off") && !err.contains("--bootstrap ADDR"),
        "{err}"
    );
}
