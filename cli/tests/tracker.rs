//! `shoal tracker` as a user or script runs it: the first stdout line is a dialable address
//! ending in `/p2p/<peer id>`, the identity persists in the data directory, and a taken
//! HTTP port is a clear error.

// Helpers outside #[test] fns: a panic there is a test failure, which is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");
const LIMIT: Duration = Duration::from_secs(60);

fn shoal(dir: &Path) -> Command {
    let mut c = Command::new(SHOAL);
    c.current_dir(dir)
        .env("SHOAL_DATA_DIR", dir.join("data"))
        .env_remove("RUST_LOG");
    c
}

/// Kills the child on drop, so a failing test leaves no process behind.
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `shoal tracker` on loopback with random ports and returns it with its first
/// stdout line.
fn start_tracker(dir: &Path, extra: &[&str]) -> (Guard, String) {
    let mut child = shoal(dir)
        .args([
            "tracker",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--http",
            "127.0.0.1:0",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = Guard(child);
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(LIMIT).expect("tracker prints its address");
    (guard, line.trim().to_owned())
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
    let _ = json_run.0.wait();
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
    let status = guard.0.wait().unwrap();
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
