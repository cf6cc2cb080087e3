//! `shoal tracker` as a user or script runs it: the first stdout line is a dialable address
//! ending in `/p2p/<peer id>`, the identity persists in the data directory, and a taken
//! HTTP port is a clear error.

// Helpers outside #[test] fns: a panic there is a test failure, which is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
};

use common::{Guard, LIMIT, SHOAL, run, shoal, start, text};

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};

/// Starts `shoal tracker` on loopback with random ports and returns it with its first
/// stdout line.
fn start_tracker(dir: &Path, extra: &[&str]) -> (Guard, String) {
    let (guard, line, _) = start(
        shoal(dir)
            .args([
                "tracker",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--http",
                "127.0.0.1:0",
            ])
            .args(extra),
    );
    (guard, line)
}

/// The peer id an address ends with, checking it is `/ip4/127.0.0.1/tcp/<port>/p2p/<id>`.
fn dialable(addr: &str) -> PeerId {
    let addr: Multiaddr = addr.parse().unwrap_or_else(|e| panic!("{addr:?}: {e}"));
    let parts: Vec<Protocol<'_>> = addr.iter().collect();
    assert!(
        matches!(parts[..], [Protocol::Ip4(ip), Protocol::Tcp(port), Protocol::P2p(_)] if ip.is_loopback() && port != 0),
        "{addr}"
    );
    match parts[2] {
        Protocol::P2p(id) => id,
        _ => unreachable!(),
    }
}

#[test]
fn tracker_prints_a_dialable_address_first_and_keeps_its_identity() {
    let dir = tempfile::tempdir().unwrap();

    let (mut json_run, line) = start_tracker(dir.path(), &["--json"]);
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
    let id = dialable(v["addr"].as_str().unwrap());
    assert_eq!(v["peer_id"], id.to_string(), "{v}");
    assert!(v["http"].as_str().unwrap().starts_with("127.0.0.1:"), "{v}");
    assert_eq!(v["addrs"][0], v["addr"], "{v}");
    let _ = json_run.0.kill();
    common::wait_bounded(&mut json_run.0);
    assert!(dir.path().join("data/tracker.key").exists());

    // Plain output: the first line is the address itself; a restart keeps the peer id.
    let (_plain_run, line) = start_tracker(dir.path(), &[]);
    assert_eq!(dialable(&line), id);
}

#[test]
fn tracker_reports_a_taken_http_port_and_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let child = shoal(dir.path())
        .args([
            "tracker",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--http",
            &addr,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = Guard(child);
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let mut stderr = guard.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        let _ = tx.send(s);
    });
    let stderr = rx.recv_timeout(LIMIT).expect("tracker exits");
    let status = common::wait_bounded(&mut guard.0);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot serve HTTP on {addr}")),
        "{stderr}"
    );
    assert!(stderr.contains("--http"), "{stderr}");
}

#[test]
fn tracker_help_has_examples() {
    let o = Command::new(SHOAL)
        .args(["tracker", "--help"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "Examples:",
        "--allow-seed-node",
        "--http",
        "tr=",
        "/metrics",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}

/// The peer id of the node identity `shoal` keeps in `data/identity.key`.
fn node_peer_id(data: &Path) -> PeerId {
    let bytes = std::fs::read(data.join("identity.key")).unwrap();
    libp2p::identity::Keypair::from_protobuf_encoding(&bytes)
        .unwrap()
        .public()
        .to_peer_id()
}

/// Issue 4, end to end with the binary: a non-operator's takedown is refused naming its peer
/// id; the operator's succeeds (a share link in place of the blob id); then `get` of the
/// link fails with exit code 7 and says why, although the sharer still serves the file;
/// `--list` shows the takedown.
#[test]
fn takedown_then_get_of_the_link_fails_with_exit_code_7() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let with_data = |name: &str| {
        let mut c = shoal(root);
        c.env("SHOAL_DATA_DIR", root.join(name))
            .env_remove("SHOAL_BOOTSTRAP");
        c
    };
    // The operator's identity exists before the tracker starts, so it can be allowed.
    std::fs::create_dir(root.join("operator")).unwrap();
    let operator_key = libp2p::identity::Keypair::generate_ed25519();
    std::fs::write(
        root.join("operator/identity.key"),
        operator_key.to_protobuf_encoding().unwrap(),
    )
    .unwrap();
    let operator = operator_key.public().to_peer_id().to_string();
    let (_tracker, tr) = start_tracker(root, &["--operator", &operator]);
    dialable(&tr);

    // Share a file through the tracker; keep the sharer running.
    std::fs::write(root.join("f"), vec![7u8; 300_000]).unwrap();
    let (_sharer, link, _) = start(with_data("sharer").args([
        "share",
        "f",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--no-dht",
        "--tracker",
        &tr,
    ]));
    assert!(link.contains("tr=") && link.contains("peer="), "{link}");
    let blob_id = link
        .strip_prefix("shoal:")
        .unwrap()
        .split(['?', '#'])
        .next()
        .unwrap()
        .to_owned();
    let key = link.rsplit_once('#').unwrap().1.to_owned();

    // Someone else: refused by the tracker's operator list, told which peer id to allow
    // (exit 8, a remote operator's refusal).
    let o = run(with_data("stranger").args([
        "takedown",
        &blob_id,
        "--reason",
        "mine now",
        "--tracker",
        &tr,
    ]));
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(8), "{err}");
    let stranger = node_peer_id(&root.join("stranger"));
    assert!(err.contains("is not an operator"), "{err}");
    assert!(err.contains(&format!("--operator {stranger}")), "{err}");

    // The operator, naming the blob by its link: the key is neither printed nor logged.
    let o = run(with_data("operator").args([
        "takedown",
        &link,
        "--reason",
        "abuse report 17",
        "--tracker",
        &tr,
        "--json",
    ]));
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["blob_id"], blob_id.as_str(), "{v}");
    assert_eq!(v["seq"], 1, "{v}");
    assert_eq!(v["operator"], operator.as_str(), "{v}");
    assert!(!out.contains(&key) && !err.contains(&key));

    // get: exit 7, the reason on stderr, a JSON error on stdout, no file.
    let o = run(with_data("getter").args([
        "get",
        &link,
        "-o",
        "out.bin",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--no-dht",
        "--json",
    ]));
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert_eq!(o.status.code(), Some(7), "stdout: {out}\nstderr: {err}");
    assert!(err.contains("this file was taken down"), "{err}");
    assert!(err.contains(&tr), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["error"], "taken_down", "{v}");
    assert_eq!(v["exit_code"], 7, "{v}");
    assert_eq!(v["tracker"], tr.as_str(), "{v}");
    assert_eq!(v["blob_id"], blob_id.as_str(), "{v}");
    assert!(!root.join("out.bin").exists());

    // The public list, from anyone.
    let o = run(with_data("stranger").args(["takedown", "--list", "--tracker", &tr]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), format!("1 {blob_id}"));
}

#[test]
fn takedown_help_has_examples() {
    let o = Command::new(SHOAL)
        .args(["takedown", "--help"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "Examples:",
        "--reason",
        "--operator",
        "--list",
        "exit code 7",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}
