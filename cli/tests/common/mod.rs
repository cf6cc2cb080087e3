//! Helpers shared by the CLI test files: the binary, bounded runs, background children.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

pub(crate) const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");
pub(crate) const LIMIT: Duration = Duration::from_secs(60);

/// `shoal` with its data directory in `dir/data` and no ambient logging or bootstrap.
pub(crate) fn shoal(dir: &Path) -> Command {
    let mut c = Command::new(SHOAL);
    c.current_dir(dir)
        .env("SHOAL_DATA_DIR", dir.join("data"))
        .env_remove("RUST_LOG")
        .env_remove("SHOAL_BOOTSTRAP");
    c
}

/// Runs a command to completion, reading its output as it comes (a full pipe would block
/// it), and kills it if it outlives [`LIMIT`].
pub(crate) fn run(cmd: &mut Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(LIMIT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("command timed out: {cmd:?}");
        }
    }
}

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Kills the child on drop, so a failing test leaves no process behind.
pub(crate) struct Guard(pub(crate) Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a background child wrote to stderr so far.
pub(crate) type Log = Arc<Mutex<Vec<u8>>>;

/// Starts `cmd` in the background and returns it with its first stdout line (waiting at
/// most [`LIMIT`]); its stderr is collected into the returned log.
pub(crate) fn start(cmd: &mut Command) -> (Guard, String, Log) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let log = Log::default();
    let sink = log.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n @ 1..) = stderr.read(&mut buf) {
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let guard = Guard(child);
    let line = rx
        .recv_timeout(LIMIT)
        .expect("the child prints a first line");
    (guard, line.trim().to_owned(), log)
}

/// Waits for `child` to exit, at most [`LIMIT`]; kills it and fails the test otherwise.
pub(crate) fn wait_bounded(child: &mut Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("a child did not exit within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20)); // polling the child, bounded
    }
}

/// Everything `r` yields until it ends, read on a thread, at most [`LIMIT`].
pub(crate) fn read_bounded(mut r: impl Read + Send + 'static) -> String {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    rx.recv_timeout(LIMIT).expect("the output ends in time")
}

/// The lines `r` yields, read on a thread; each call waits at most [`LIMIT`] for the next.
pub(crate) fn lines_bounded(r: impl Read + Send + 'static) -> impl FnMut() -> Option<String> {
    let (tx, rx) = std::sync::mpsc::sync_channel(64);
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    move || match rx.recv_timeout(LIMIT) {
        Ok(line) => Some(line),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("no line within {LIMIT:?}"),
    }
}

/// Every file under `dir`.
pub(crate) fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// `len` bytes of xorshift noise written to `path`.
pub(crate) fn write_random(path: &Path, len: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1d_u64 ^ len as u64;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(path, &data).unwrap();
    data
}
