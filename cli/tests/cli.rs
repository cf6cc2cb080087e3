//! The `shoal` binary as a user runs it: child processes on loopback, exit codes, kill -9 and
//! resume, and the key never showing up where it must not.

// Helpers outside #[test] fns: a panic there is a test failure, which is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    Guard, LIMIT, Log, SHOAL, lines_bounded, read_bounded, run, shoal, start, text, wait_bounded,
    walk, write_random,
};

/// Starts `shoal share` and returns it with the link from its first stdout line. Its stderr
/// is collected in the background (see [`Sharer::stderr`]).
fn share(dir: &Path, file: &str, extra: &[&str]) -> (Guard, String) {
    let (g, link, _) = share_logged(dir, file, extra);
    (g, link)
}

fn share_logged(dir: &Path, file: &str, extra: &[&str]) -> (Guard, String, Log) {
    start(
        shoal(dir)
            .args(["share", file, "--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(extra)
            .env("RUST_LOG", "debug"),
    )
}

fn state_blocks(state: &Path) -> u32 {
    std::fs::read(state).map_or(0, |b| {
        b.get(49 + 1024..)
            .map_or(0, |bits| bits.iter().map(|x| x.count_ones()).sum())
    })
}

/// A `shoal get` of a 12 MB file from a sharer capped at 3 MB/s (so it is still running when
/// the test interrupts it), started and waited on until `min_blocks` are verified on disk.
struct SlowGet {
    _seeder: Guard,
    getter: Guard,
    link: String,
    data: Vec<u8>,
    out: std::path::PathBuf,
    state: std::path::PathBuf,
    part: std::path::PathBuf,
}

fn slow_get(dir: &Path, min_blocks: u32, stderr: Stdio) -> SlowGet {
    let data = write_random(&dir.join("big.bin"), 12_000_000);
    let (seeder, link) = share(dir, "big.bin", &["--up-limit", "3MB"]);
    let id = link
        .trim_start_matches("shoal:")
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    let out = dir.join("out");
    std::fs::create_dir(&out).unwrap();
    let state = out.join(format!(".shoal-{id}.state"));
    let part = out.join(format!(".shoal-{id}.part"));
    let getter = shoal(dir)
        .args(["get", &link, "-o"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut getter = Guard(getter);
    let deadline = Instant::now() + LIMIT;
    while state_blocks(&state) < min_blocks {
        assert!(Instant::now() < deadline, "download made no progress");
        assert!(
            getter.0.try_wait().unwrap().is_none(),
            "get exited before it was interrupted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    SlowGet {
        _seeder: seeder,
        getter,
        link,
        data,
        out,
        state,
        part,
    }
}

impl SlowGet {
    /// Runs the same `get` again to the end; returns its `--json` summary after checking
    /// that it resumed at least `kept` blocks and left the right file and nothing else.
    fn resume(&self, dir: &Path, kept: u32) -> serde_json::Value {
        assert!(
            !self.out.join("big.bin").exists(),
            "a partial file appeared under the final name"
        );
        let o = run(shoal(dir)
            .args(["get", &self.link, "--json", "-o"])
            .arg(&self.out));
        assert!(o.status.success(), "{}", text(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(
            v["resumed_blocks"].as_u64().unwrap() >= u64::from(kept),
            "{v}"
        );
        assert_eq!(std::fs::read(self.out.join("big.bin")).unwrap(), self.data);
        assert!(!self.state.exists() && !self.part.exists());
        v
    }
}

#[test]
fn kill_9_mid_download_then_resume_completes_without_refetching() {
    let dir = tempfile::tempdir().unwrap();
    let mut get = slow_get(dir.path(), 40, Stdio::null());
    get.getter.0.kill().unwrap(); // SIGKILL on Unix: no cleanup runs
    wait_bounded(&mut get.getter.0);
    let kept = state_blocks(&get.state);
    let v = get.resume(dir.path(), kept);
    assert_eq!(
        v["resumed_blocks"].as_u64().unwrap() + v["fetched_blocks"].as_u64().unwrap(),
        184,
        "{v}"
    );
}

/// Ctrl-C (SIGINT) during `get`: exit code 130, a message saying how to resume, verified
/// blocks kept on disk, and the same command completes the file.
#[test]
fn ctrl_c_mid_download_exits_130_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut get = slow_get(dir.path(), 20, Stdio::piped());
    let sent = Command::new("kill")
        .args(["-INT", &get.getter.0.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let stderr = read_bounded(get.getter.0.stderr.take().unwrap());
    let status = wait_bounded(&mut get.getter.0);
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("run the same command again to resume"),
        "{stderr}"
    );
    let kept = state_blocks(&get.state);
    assert!(kept >= 20, "verified blocks were kept: {kept}");
    get.resume(dir.path(), kept);
}

#[test]
fn the_key_never_reaches_logs_or_inspect() {
    let dir = tempfile::tempdir().unwrap();
    write_random(&dir.path().join("secret.txt"), 300_000);
    let (mut seeder, link, share_log) = share_logged(dir.path(), "secret.txt", &[]);
    let key = link.rsplit('#').next().unwrap().to_owned();
    assert_eq!(key.len(), 52);
    let o = run(shoal(dir.path())
        .args(["-vv", "get", &link, "-o", "copy.txt"])
        .env("RUST_LOG", "shoal_node=trace,shoal_protocol=trace,debug"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let inspect = run(shoal(dir.path()).args(["inspect", &link, "--json"]));
    assert!(inspect.status.success());
    let _ = seeder.0.kill();
    wait_bounded(&mut seeder.0);
    let share_out = share_log.lock().unwrap().clone();
    assert!(
        text(&share_out).contains("serving"),
        "share logged at debug level"
    );
    for (what, bytes) in [
        ("get stdout", &o.stdout),
        ("get stderr", &o.stderr),
        ("inspect", &inspect.stdout),
        ("share stderr", &share_out),
    ] {
        let t = text(bytes);
        assert!(!t.contains(&key), "{what} contains the key:\n{t}");
    }
    // The node identity and share records stay on the sharer; the get side wrote no key.
    for entry in walk(&dir.path().join("data")) {
        if entry.ends_with("key") {
            continue; // the sharer's own share record (mode 0600), by design
        }
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !text(&bytes).contains(&key),
            "{} contains the key",
            entry.display()
        );
    }
}

#[test]
fn encrypt_decrypt_and_their_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = write_random(&d.join("doc.pdf"), 200_001);
    let o = run(shoal(d).args(["encrypt", "doc.pdf", "-o", "doc.blob", "--json"]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let link = v["link"].as_str().unwrap().to_owned();
    let o = run(shoal(d).args(["decrypt", "doc.blob", &link, "-o", "back.pdf"]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(std::fs::read(d.join("back.pdf")).unwrap(), data);

    // Convergent mode: the same file gives the same link; a secret gives another.
    let conv = |out: &str, extra: &[&str]| {
        let o = run(shoal(d)
            .args(["encrypt", "doc.pdf", "-o", out, "--json", "--convergent"])
            .args(extra));
        assert!(o.status.success(), "{}", text(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["link"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (c1, c2, c3) = (
        conv("c1.blob", &[]),
        conv("c2.blob", &[]),
        conv("c3.blob", &["--secret", "team"]),
    );
    assert_eq!(c1, c2);
    assert_ne!(c1, c3);
    assert_eq!(
        std::fs::read(d.join("c1.blob")).unwrap(),
        std::fs::read(d.join("c2.blob")).unwrap()
    );

    // Existing output: refused, untouched (exit 6).
    let o = run(shoal(d).args(["decrypt", "doc.blob", &link, "-o", "back.pdf"]));
    assert_eq!(o.status.code(), Some(6), "{}", text(&o.stderr));
    // Wrong key (exit 5), named as such.
    let other = run(shoal(d).args(["encrypt", "doc.pdf", "-o", "other.blob", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&other.stdout).unwrap();
    let other_link = v["link"].as_str().unwrap();
    let wrong = format!(
        "{}#{}",
        link.split('#').next().unwrap(),
        other_link.rsplit('#').next().unwrap()
    );
    let o = run(shoal(d).args(["decrypt", "doc.blob", &wrong, "-o", "x.pdf"]));
    assert_eq!(o.status.code(), Some(5));
    assert!(
        text(&o.stderr).contains("key does not open"),
        "{}",
        text(&o.stderr)
    );
    assert!(!d.join("x.pdf").exists());
    // A flipped byte in the body: the blob id check refuses the output (exit 5).
    let mut blob = std::fs::read(d.join("doc.blob")).unwrap();
    let mid = blob.len() / 2;
    blob[mid] ^= 1;
    std::fs::write(d.join("bad.blob"), &blob).unwrap();
    let o = run(shoal(d).args(["decrypt", "bad.blob", &link, "-o", "y.pdf"]));
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    assert!(!d.join("y.pdf").exists());
    // Truncated (exit 5).
    blob.pop();
    std::fs::write(d.join("short.blob"), &blob).unwrap();
    let o = run(shoal(d).args(["decrypt", "short.blob", &link, "-o", "z.pdf"]));
    assert_eq!(o.status.code(), Some(5));
    assert!(text(&o.stderr).contains("truncated"), "{}", text(&o.stderr));
    // Malformed links (exit 3) name the bad part.
    for (bad, says) in [
        ("shoal:abc#def", "blob id"),
        ("http://x", "shoal:"),
        (link.split('#').next().unwrap(), "no key"),
    ] {
        let o = run(shoal(d).args(["inspect", bad]));
        assert_eq!(o.status.code(), Some(3), "{bad}");
        assert!(text(&o.stderr).contains(says), "{bad}: {}", text(&o.stderr));
    }
}

#[test]
fn get_with_no_reachable_peer_lists_what_it_tried() {
    let dir = tempfile::tempdir().unwrap();
    write_random(&dir.path().join("f"), 1000);
    let o = run(shoal(dir.path()).args(["encrypt", "f", "-o", "f.blob", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let peer = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
    // It keeps dialling for the patience window, then says what it tried.
    let started = Instant::now();
    let o = run(shoal(dir.path()).args([
        "get",
        v["link"].as_str().unwrap(),
        "--peer",
        &format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer}"),
        "--patience",
        "2s",
    ]));
    assert_eq!(o.status.code(), Some(4), "{}", text(&o.stderr));
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "gave up before its patience"
    );
    let err = text(&o.stderr);
    assert!(err.contains(&format!("tcp/{port}")), "{err}");
    assert!(err.contains("dialled"), "says how often it dialled: {err}");
}

/// The demo's JSON summary after a small run (`extra` adds flags).
fn demo_json(dir: &Path, extra: &[&str]) -> serde_json::Value {
    let started = Instant::now();
    let o = run(shoal(dir)
        .args(["demo", "--size", "2MiB", "--peers", "3", "--json"])
        .args(extra));
    eprintln!(
        "demo {extra:?} took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    // --json: the summary on stdout, no live view on stderr.
    assert!(
        !text(&o.stderr).contains("peers done"),
        "{}",
        text(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Tracker, seed node, publisher and 3 capped peers in one process: every copy verified,
/// the seed node sent something, and the peers carried part of the bytes.
#[test]
fn demo_runs_a_swarm_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let v = demo_json(dir.path(), &[]);
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(v["peers"], 3, "{v}");
    assert_eq!(v["size"], 2 * 1024 * 1024, "{v}");
    assert_eq!(v["policy"], "fast", "{v}");
    let secs = v["peer_secs"].as_array().unwrap();
    assert_eq!(secs.len(), 3, "{v}");
    assert!(secs.iter().all(|s| s.as_f64().unwrap() > 0.0), "{v}");
    assert!(v["t_min_secs"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["seed_egress_copies"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["seed_egress_bytes"].as_u64().unwrap() > 0, "{v}");
    assert!(v["peer_upload_bytes"].as_u64().unwrap() > 0, "{v}");
    let offload = v["offload_percent"].as_f64().unwrap();
    assert!(offload > 0.0 && offload < 100.0, "{v}");
}

/// The frugal seed node sends about one copy. Regression test for issue 4 (frugal seed
/// nodes once answered `missing` to every newcomer's first request, blocks 0 and last).
#[test]
fn demo_frugal_seed_node_sends_about_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let v = demo_json(dir.path(), &["--policy", "frugal"]);
    assert_eq!(v["verified"], true, "{v}");
    assert!(v["seed_egress_copies"].as_f64().unwrap() < 1.5, "{v}");
}

/// Flags that make no demo are refused before anything starts, saying why.
#[test]
fn demo_refuses_nonsense_flags() {
    let dir = tempfile::tempdir().unwrap();
    for (args, says) in [
        (&["--peers", "0"][..], "at least 1 peer"),
        (&["--peers", "1000"][..], "at most 32 peers"),
        (&["--size", "0"][..], "at least 1 byte"),
        (&["--size", "2GiB"][..], "at most 1.0 GiB"),
        (&["--peers", "30", "--size", "1GiB"][..], "the demo allows"),
        (&["--policy", "cheap"][..], "fast"),
    ] {
        let o = run(shoal(dir.path()).arg("demo").args(args));
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains(says),
            "{args:?}: {}",
            text(&o.stderr)
        );
    }
}

/// A write failure mid-download (here the file-size limit, which fails writes like a full
/// disk does) stops with exit 6 and a message saying to rerun; the rerun resumes.
#[cfg(unix)]
#[test]
fn write_failure_mid_download_keeps_verified_blocks_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_random(&dir.path().join("big.bin"), 40_000_000);
    let (_seeder, link) = share(dir.path(), "big.bin", &[]);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // 20 MB file-size limit, blocks in file order (POSIX sh counts 512-byte blocks; past
    // the 4 x 64 blocks in flight, so real progress
    // precedes the failure); SIGXFSZ ignored (an ignored signal stays ignored across
    // exec), so the write returns EFBIG instead of killing the process.
    let o = run(Command::new("sh")
        .current_dir(dir.path())
        .env("SHOAL_DATA_DIR", dir.path().join("data"))
        .args([
            "-c",
            r#"trap "" XFSZ; ulimit -f 40000; exec "$0" get --sequential "$1" -o "$2""#,
            SHOAL,
            &link,
        ])
        .arg(&out));
    assert_eq!(o.status.code(), Some(6), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("cannot write") && err.contains("run again to resume"),
        "{err}"
    );
    assert!(!out.join("big.bin").exists());

    let o = run(shoal(dir.path())
        .args(["get", &link, "--json", "-o"])
        .arg(&out));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // Everything written before the failure was checkpointed on the way out.
    assert!(v["resumed_blocks"].as_u64().unwrap() >= 40, "{v}");
    assert_eq!(std::fs::read(out.join("big.bin")).unwrap(), data);
}

#[test]
fn unwritable_output_is_a_local_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    write_random(&dir.path().join("f.bin"), 10_000);
    let (_seeder, link) = share(dir.path(), "f.bin", &[]);
    let o = run(shoal(dir.path()).args(["get", &link, "-o", "no/such/dir/f.bin"]));
    assert_eq!(o.status.code(), Some(6), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("no/such/dir"),
        "{}",
        text(&o.stderr)
    );
}

/// A share remembered in the data directory is served again by `shoal seed` after the
/// sharer is gone; with nothing remembered, `seed` says what to do.
#[test]
fn seed_serves_what_was_shared_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let empty = run(shoal(dir.path()).args(["seed", "--listen", "/ip4/127.0.0.1/tcp/0"]));
    assert_eq!(empty.status.code(), Some(1));
    assert!(
        text(&empty.stderr).contains("nothing to seed"),
        "{}",
        text(&empty.stderr)
    );

    let data = write_random(&dir.path().join("movie.bin"), 300_000);
    let (sharer, link) = share(dir.path(), "movie.bin", &[]);
    drop(sharer); // the sharing process is gone; only the data directory remains

    let mut seeder = shoal(dir.path())
        .args(["seed", "--json", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut next_line = lines_bounded(seeder.stdout.take().unwrap());
    let _seeder = Guard(seeder);
    let first: serde_json::Value = serde_json::from_str(&next_line().unwrap()).unwrap();
    let addr = first["addrs"][0].as_str().unwrap().to_owned();
    let seeding: serde_json::Value = serde_json::from_str(&next_line().unwrap()).unwrap();
    assert_eq!(seeding["status"], "seeding");
    assert_eq!(seeding["name"], "movie.bin");

    let out_dir = dir.path().join("got");
    std::fs::create_dir(&out_dir).unwrap();
    let got = run(shoal(dir.path()).args([
        "get",
        &link,
        "--peer",
        &addr,
        "-o",
        out_dir.join("movie.bin").to_str().unwrap(),
    ]));
    assert!(got.status.success(), "{}", text(&got.stderr));
    assert_eq!(std::fs::read(out_dir.join("movie.bin")).unwrap(), data);
}

/// Trackerless (issue 3): a link without hints, fetched with `--bootstrap` only. One `shoal
/// share` serves as the bootstrap node; a second one shares the file and announces it in the
/// DHT; `shoal get` finds it there.
#[test]
fn get_finds_a_sharer_through_the_dht_from_a_link_without_hints() {
    let dir = tempfile::tempdir().unwrap();
    let (b_dir, s_dir) = (dir.path().join("b"), dir.path().join("s"));
    std::fs::create_dir(&b_dir).unwrap();
    std::fs::create_dir(&s_dir).unwrap();
    write_random(&b_dir.join("other.bin"), 1000);
    let (_bootstrap, b_link) = share(&b_dir, "other.bin", &[]);
    let b_link = shoal_protocol::Link::parse(&b_link).unwrap();
    let b_addr = b_link
        .peers
        .iter()
        .find(|p| p.contains("/tcp/"))
        .expect("the link names the sharer's TCP address")
        .clone();

    let data = write_random(&s_dir.join("movie.bin"), 300_000);
    let (_sharer, link, log) = share_logged(&s_dir, "movie.bin", &["--bootstrap", &b_addr]);
    let deadline = Instant::now() + LIMIT;
    while !text(&log.lock().unwrap()).contains("announced in the DHT") {
        assert!(
            Instant::now() < deadline,
            "the sharer never announced in the DHT: {}",
            text(&log.lock().unwrap())
        );
        std::thread::sleep(Duration::from_millis(50)); // polling its log, not synchronising
    }
    let mut hintless = shoal_protocol::Link::parse(&link).unwrap();
    hintless.peers.clear();
    hintless.trackers.clear();

    let out = dir.path().join("got.bin");
    let got = run(shoal(dir.path()).args([
        "get",
        &hintless.to_secret_string(),
        "-o",
        out.to_str().unwrap(),
        "--bootstrap",
        &b_addr,
    ]));
    assert!(got.status.success(), "{}", text(&got.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), data);

    // Without --bootstrap the error says which flags give the fetch a source.
    let alone = run(shoal(dir.path()).args(["get", &hintless.to_secret_string()]));
    assert_eq!(alone.status.code(), Some(4), "{}", text(&alone.stderr));
    assert!(
        text(&alone.stderr).contains("--bootstrap"),
        "{}",
        text(&alone.stderr)
    );
}
