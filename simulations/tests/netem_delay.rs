//! `shoal-netem` delays forwarded packets by the configured time.
//!
//! Builds three network namespaces, `a` - `r` - `b`, with an NFQUEUE rule in the router's
//! FORWARD chain, runs the built `shoal-netem --delay-ms 20` in the router, and measures TCP
//! connect time from `a` to a listener in `b` (one round trip: SYN out, SYN-ACK back, each
//! crossing the router once). The median of several must be about 40 ms.
//!
//! Needs root, `ip` (iproute2) and `iptables`. Not root is a failure, unless `SHOAL_NO_NETNS=1`
//! is set: then the test says why it does not run and passes. Every namespace is removed on
//! exit, also when the test panics (a drop guard); names carry the pid, so parallel runs do not
//! collide.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const DELAY_MS: u64 = 20;
/// Connects measured after one warm-up (which also resolves the neighbours' MAC addresses).
const SAMPLES: usize = 7;
/// Bounds on the median connect time, in ms: 2 x DELAY_MS plus what the poll loop, veth and
/// the scheduler add on a loaded 2-core machine.
const RTT_MIN_MS: f64 = 38.0;
const RTT_MAX_MS: f64 = 60.0;
const CMD_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const NETEM_START_TIMEOUT: Duration = Duration::from_secs(15);
const NETEM_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// `b`'s address (the listener).
const B_ADDR: Ipv4Addr = Ipv4Addr::new(10, 91, 2, 2);

/// The namespaces (and the netem child) of one test; all removed when dropped.
struct Lab {
    namespaces: Vec<String>,
    netem: Option<Child>,
}

impl Lab {
    fn ns(&self, i: usize) -> &str {
        &self.namespaces[i]
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.netem.take() {
            let _ = child.kill();
            let _ = wait_timeout(&mut child, NETEM_EXIT_TIMEOUT);
        }
        for ns in &self.namespaces {
            // Deleting a namespace removes its veth ends (and the peers' ends with them).
            if let Err(e) = run(&["ip", "netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Runs a command to completion within CMD_TIMEOUT; Err with its output if it fails.
fn run(args: &[&str]) -> Result<(), String> {
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: cannot start: {e}", args.join(" ")))?;
    let status = wait_timeout(&mut child, CMD_TIMEOUT)
        .ok_or_else(|| format!("{}: no exit after {CMD_TIMEOUT:?}", args.join(" ")))?;
    if status.success() {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    Err(format!("{}: {status}: {}", args.join(" "), err.trim()))
}

/// Waits for the child's exit up to `limit`; kills it and returns None when it does not exit.
fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Moves the calling thread into the named network namespace (only this thread).
fn enter(ns: &str) {
    let f = File::open(format!("/run/netns/{ns}")).expect("open the namespace's /run/netns file");
    rustix::thread::move_into_link_name_space(
        f.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .expect("setns into the namespace");
}

/// Checks root and tools; Err(reason) when the test cannot run.
fn preconditions() -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("this test builds network namespaces and needs root".to_owned());
    }
    for tool in ["ip", "iptables"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Err(format!(
                "`{tool}` is missing (apt-get install iproute2 iptables)"
            ));
        }
    }
    Ok(())
}

/// `a` (10.91.1.2) - `r` (10.91.1.1 | 10.91.2.1, NFQUEUE 0 in FORWARD) - `b` (10.91.2.2).
fn build(lab: &mut Lab) -> Result<(), String> {
    let pid = std::process::id();
    for role in ["a", "r", "b"] {
        let name = format!("shlnetem{pid}{role}");
        run(&["ip", "netns", "add", &name])?;
        lab.namespaces.push(name);
    }
    let (a, r, b) = (lab.ns(0), lab.ns(1), lab.ns(2));
    let cmds: Vec<Vec<&str>> = vec![
        vec![
            "ip", "-n", r, "link", "add", "ra", "type", "veth", "peer", "name", "va", "netns", a,
        ],
        vec![
            "ip", "-n", r, "link", "add", "rb", "type", "veth", "peer", "name", "vb", "netns", b,
        ],
        vec!["ip", "-n", r, "addr", "add", "10.91.1.1/24", "dev", "ra"],
        vec!["ip", "-n", r, "addr", "add", "10.91.2.1/24", "dev", "rb"],
        vec!["ip", "-n", a, "addr", "add", "10.91.1.2/24", "dev", "va"],
        vec!["ip", "-n", b, "addr", "add", "10.91.2.2/24", "dev", "vb"],
        vec!["ip", "-n", a, "link", "set", "lo", "up"],
        vec!["ip", "-n", r, "link", "set", "lo", "up"],
        vec!["ip", "-n", b, "link", "set", "lo", "up"],
        vec!["ip", "-n", r, "link", "set", "ra", "up"],
        vec!["ip", "-n", r, "link", "set", "rb", "up"],
        vec!["ip", "-n", a, "link", "set", "va", "up"],
        vec!["ip", "-n", b, "link", "set", "vb", "up"],
        vec!["ip", "-n", a, "route", "add", "default", "via", "10.91.1.1"],
        vec!["ip", "-n", b, "route", "add", "default", "via", "10.91.2.1"],
        vec![
            "ip",
            "netns",
            "exec",
            r,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ],
        // No --queue-bypass: nothing crosses the router undelayed.
        vec![
            "ip",
            "netns",
            "exec",
            r,
            "iptables",
            "-A",
            "FORWARD",
            "-j",
            "NFQUEUE",
            "--queue-num",
            "0",
        ],
    ];
    for c in &cmds {
        run(c)?;
    }
    Ok(())
}

/// Starts shoal-netem in the router; returns once it says the queue is bound, with a thread
/// that collects the rest of its stderr.
fn start_netem(lab: &mut Lab) -> std::thread::JoinHandle<String> {
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            lab.ns(1),
            env!("CARGO_BIN_EXE_shoal-netem"),
        ])
        .args(["--queue", "0", "--delay-ms", &DELAY_MS.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shoal-netem");
    let stderr = child.stderr.take().expect("stderr is piped");
    lab.netem = Some(child);
    let (tx, rx) = std::sync::mpsc::sync_channel::<String>(1);
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if all.is_empty() {
                let _ = tx.send(line.clone());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let first = rx
        .recv_timeout(NETEM_START_TIMEOUT)
        .expect("shoal-netem printed no start line (did it fail to bind the queue?)");
    assert!(
        first.contains("bound"),
        "unexpected first line from shoal-netem: {first}"
    );
    reader
}

/// A listener in `b`; the socket stays in `b` whichever thread uses it.
fn listen_in(ns: String) -> TcpListener {
    std::thread::spawn(move || {
        enter(&ns);
        TcpListener::bind(SocketAddrV4::new(B_ADDR, 0)).expect("listen in b")
    })
    .join()
    .expect("listener thread")
}

/// Connect times from `a` to `to`: one warm-up, then SAMPLES, in ms.
fn connect_times_from(ns: String, to: SocketAddr) -> Vec<f64> {
    std::thread::spawn(move || {
        enter(&ns);
        let mut times = Vec::with_capacity(SAMPLES);
        for i in 0..=SAMPLES {
            let t = Instant::now();
            let s = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)
                .unwrap_or_else(|e| panic!("connect {i} from a to {to}: {e}"));
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            drop(s);
            if i > 0 {
                times.push(ms);
            }
        }
        times
    })
    .join()
    .expect("connector thread")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn netem_delays_forwarded_packets_by_the_configured_time() {
    if let Err(why) = preconditions() {
        if std::env::var_os("SHOAL_NO_NETNS").is_some_and(|v| v == "1") {
            eprintln!("NOT RUN (SHOAL_NO_NETNS=1): {why}");
            return;
        }
        panic!("{why}; run the tests as root, or set SHOAL_NO_NETNS=1 to skip this one");
    }
    let mut lab = Lab {
        namespaces: Vec::new(),
        netem: None,
    };
    build(&mut lab).unwrap_or_else(|e| panic!("building the namespaces failed: {e}"));
    let stderr = start_netem(&mut lab);

    let listener = listen_in(lab.ns(2).to_owned());
    let to = listener.local_addr().unwrap();
    let times = connect_times_from(lab.ns(0).to_owned(), to);
    let rtt = median(times.clone());
    eprintln!(
        "connect times through shoal-netem --delay-ms {DELAY_MS}: {times:.1?} ms, median {rtt:.1} ms"
    );
    assert!(
        (RTT_MIN_MS..=RTT_MAX_MS).contains(&rtt),
        "median connect time {rtt:.1} ms is not about 2 x {DELAY_MS} ms (all: {times:.1?})"
    );

    // SIGTERM: it releases what it holds, reports its counters and exits 0.
    let child = lab.netem.as_mut().expect("netem runs");
    let pid = rustix::process::Pid::from_child(child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = wait_timeout(child, NETEM_EXIT_TIMEOUT);
    let text = stderr.join().unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "shoal-netem exit: {status:?}; stderr:\n{text}"
    );
    assert!(
        text.contains("done:") && !text.contains(" 0 packets delayed"),
        "stderr:\n{text}"
    );
    drop(listener);
}
