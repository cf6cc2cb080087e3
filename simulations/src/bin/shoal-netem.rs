//! `shoal-netem`: netem's constant delay for kernels built without netem.
//!
//! It binds an NFQUEUE (metadata only: packets stay in the kernel, only their ids come up),
//! holds each packet's verdict, and accepts the packet `--delay-ms` after it arrived. The
//! delay is constant, so packets leave in the order they came (no reordering). At most
//! `--max-held` packets are held; beyond that a packet is dropped at once and counted, like
//! netem's `limit`. The kernel queue's own limit is set a little above it, so drops are this
//! program's and show in its counters.
//!
//! Put it behind a rule without `--queue-bypass`, so nothing passes undelayed: while no
//! process is bound, the kernel drops the queue's packets.
//!
//! ```sh
//! iptables -A FORWARD -j NFQUEUE --queue-num 0
//! shoal-netem --queue 0 --delay-ms 20 &     # every forwarded packet waits 20 ms
//! ```
//!
//! On SIGTERM or SIGINT it accepts every packet it still holds (and any still waiting in the
//! socket), prints its counters on stderr and exits 0. It prints one line on stderr when the
//! queue is bound (scripts wait for it), and one at exit.
//!
//! Timing: it waits in `poll` for the next packet or the next due time, whichever comes
//! first, so a packet's arrival is read as it happens and the delay is `--delay-ms` plus
//! scheduling latency (tens of microseconds on an idle machine). The due packets of a turn go
//! out in one batch verdict. GSO packets are taken whole (the kernel need not segment them
//! for the queue): they are only held, never read or changed. The socket's receive buffer is
//! enlarged (`--recv-buffer`) so a burst that arrives while the process is not scheduled
//! waits there instead of being dropped by the kernel (the kernel's own drop counters are
//! printed at exit).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use shoal_sim::nfqueue::{QueueSocket, Verdict};
use shoal_sim::{DelayLine, Full};

/// The kernel queue may hold this many more packets than `--max-held` (those not yet read
/// from the socket), so that the line's own limit, which is counted, is what drops first.
const KERNEL_QUEUE_HEADROOM: u32 = 4096;
/// Most datagrams read from the socket before the due packets are released again.
const MAX_READS_PER_TURN: usize = 1024;
/// Longest wait in poll while nothing is due, to look at the stop flag.
const IDLE_WAKE: Duration = Duration::from_millis(100);
/// Give up after this many socket errors in a row (a broken socket, not a passing error).
const MAX_ERRORS_IN_A_ROW: u32 = 1000;
/// Errors printed on stderr; later ones are only counted.
const MAX_ERRORS_SHOWN: u64 = 10;
/// Most datagrams read from the socket at shutdown (to accept them rather than let them drop).
const MAX_READS_AT_EXIT: usize = 100_000;

const EXAMPLES: &str = "\
Examples:
  iptables -A FORWARD -j NFQUEUE --queue-num 0      (no --queue-bypass: nothing skips the delay)
  shoal-netem --queue 0 --delay-ms 20               every forwarded packet waits 20 ms
  ip netns exec router shoal-netem --queue 0 --delay-ms 20 --max-held 50000

A path that crosses the queue once each way gets 2 x --delay-ms of round-trip time.
SIGTERM/SIGINT: accept everything still held, print the counters, exit 0. Needs root
(CAP_NET_ADMIN) in the network namespace of the rule.";

/// Delay every packet of an NFQUEUE by a constant time (netem's delay, for kernels without
/// netem).
#[derive(Debug, Parser)]
#[command(name = "shoal-netem", version, after_help = EXAMPLES)]
struct Args {
    /// The NFQUEUE number to bind (the iptables rule's --queue-num)
    #[arg(long, value_name = "N")]
    queue: u16,
    /// Delay added to every packet, in milliseconds
    #[arg(long, value_name = "MS")]
    delay_ms: u64,
    /// Most packets held at once; beyond it a packet is dropped and counted
    #[arg(long, value_name = "PACKETS", default_value_t = 20_000)]
    max_held: u32,
    /// The netlink socket's receive buffer in bytes (packets waiting to be read; ~1 KiB
    /// each)
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    recv_buffer: usize,
}

#[derive(Debug, Default)]
struct Counters {
    delayed: u64,
    dropped: u64,
    errors: u64,
    errors_in_a_row: u32,
    most_held: usize,
}

impl Counters {
    fn error(&mut self, what: &str, e: &dyn std::fmt::Display) -> Result<()> {
        self.errors += 1;
        self.errors_in_a_row += 1;
        if self.errors <= MAX_ERRORS_SHOWN {
            eprintln!("shoal-netem: {what}: {e}");
        }
        if self.errors_in_a_row >= MAX_ERRORS_IN_A_ROW {
            bail!(
                "{} socket errors in a row, the last: {what}: {e}",
                self.errors_in_a_row
            );
        }
        Ok(())
    }

    fn ok(&mut self) {
        self.errors_in_a_row = 0;
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal-netem: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("install a signal handler")?;
    }
    let q = args.queue;
    let mut sock = QueueSocket::bind(
        q,
        args.max_held.saturating_add(KERNEL_QUEUE_HEADROOM),
        args.recv_buffer,
    )
    .with_context(|| {
        format!("bind NFQUEUE {q} (needs root or CAP_NET_ADMIN; EBUSY: another process has it)")
    })?;
    eprintln!(
        "shoal-netem: queue {q} bound; delaying every packet {} ms, holding at most {} (pid {})",
        args.delay_ms,
        args.max_held,
        std::process::id()
    );
    let max_held =
        usize::try_from(args.max_held).context("--max-held does not fit this machine")?;
    let mut line = DelayLine::new(Duration::from_millis(args.delay_ms), max_held);
    let mut n = Counters::default();
    let mut ids = Vec::with_capacity(MAX_READS_PER_TURN);
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let wait = line.next_deadline().map_or(IDLE_WAKE, |due| {
            due.saturating_duration_since(now).min(IDLE_WAKE)
        });
        if !wait.is_zero() {
            match sock.wait(wait) {
                Ok(_) => n.ok(),
                Err(e) => n.error("poll", &e)?,
            }
        }
        ids.clear();
        let read = receive(&mut sock, &mut ids, &mut n, MAX_READS_PER_TURN)?;
        let now = Instant::now();
        for &id in &ids {
            if let Err(Full(id)) = line.push(now, id) {
                match sock.verdict(id, Verdict::Drop) {
                    Ok(()) => n.ok(),
                    Err(e) => n.error("verdict", &e)?,
                }
                n.dropped += 1;
            }
        }
        n.most_held = n.most_held.max(line.len());
        release(&mut sock, &mut n, std::iter::from_fn(|| line.pop_due(now)))?;
        // A full turn of reads leaves the socket readable: the next poll returns at once.
        debug_assert!(read <= MAX_READS_PER_TURN);
    }
    // Shutdown: what is held, and what still waits in the socket, goes out now rather than
    // being dropped by the kernel when the socket closes.
    release(&mut sock, &mut n, line.drain())?;
    ids.clear();
    receive(&mut sock, &mut ids, &mut n, MAX_READS_AT_EXIT)?;
    let accepted_at_exit = ids.len();
    if let Some(&last) = ids.last() {
        match sock.verdict_up_to(last, Verdict::Accept) {
            Ok(()) => n.ok(),
            Err(e) => n.error("verdict", &e)?,
        }
    }
    let kernel = kernel_counters(q).unwrap_or_else(|| "not readable".to_owned());
    eprintln!(
        "shoal-netem: queue {q} done: {} packets delayed, {} dropped (more than {} held), \
         {accepted_at_exit} accepted undelayed at exit, most held at once {}, {} errors; \
         kernel: {kernel}",
        n.delayed, n.dropped, args.max_held, n.most_held, n.errors
    );
    Ok(())
}

/// Reads up to `max` datagrams waiting in the socket, appending packet ids to `ids`; returns
/// the datagrams read. Errors the kernel sent back for earlier verdicts are counted.
fn receive(
    sock: &mut QueueSocket,
    ids: &mut Vec<u32>,
    n: &mut Counters,
    max: usize,
) -> Result<usize> {
    let read = match sock.recv(ids, max) {
        Ok(read) => {
            n.ok();
            read
        }
        Err(e) => {
            // ENOBUFS: the socket overflowed and the kernel dropped packets; go on reading.
            n.error("receive", &e)?;
            0
        }
    };
    for errno in sock.take_errors() {
        n.error(
            "the kernel refused a verdict",
            &std::io::Error::from_raw_os_error(-errno),
        )?;
    }
    Ok(read)
}

/// Accepts the given packets, oldest first, with one batch verdict for the newest of them (the
/// kernel accepts every packet still queued up to it: exactly these, as the line is FIFO and
/// dropped packets were answered when they came).
fn release(sock: &mut QueueSocket, n: &mut Counters, due: impl Iterator<Item = u32>) -> Result<()> {
    let mut last = None;
    for id in due {
        last = Some(id);
        n.delayed += 1;
    }
    if let Some(id) = last {
        match sock.verdict_up_to(id, Verdict::Accept) {
            Ok(()) => n.ok(),
            Err(e) => n.error("verdict", &e)?,
        }
    }
    Ok(())
}

/// The kernel's own counters for the queue (`/proc/net/netfilter/nfnetlink_queue`): packets
/// it dropped because the queue was full, and because they could not be sent to this socket.
fn kernel_counters(queue: u16) -> Option<String> {
    let text = std::fs::read_to_string("/proc/net/netfilter/nfnetlink_queue").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 7 && f[0] == queue.to_string())
            .then(|| format!("queue_dropped {}, user_dropped {}", f[5], f[6]))
    })
}
