//! The demo's live view on stderr: one bar per peer and a line for the seed node on a
//! terminal; a compact status line every second otherwise; nothing with `--json`.

use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::ui;

/// Status lines when stderr is not a terminal: one per this interval.
const LINE_EVERY: Duration = Duration::from_secs(1);

/// One peer, now.
pub(super) struct PeerNow {
    /// File bytes verified and written.
    pub(super) done_bytes: u64,
    /// The whole file is there.
    pub(super) complete: bool,
    /// Bytes uploaded to other peers.
    pub(super) uploaded: u64,
}

/// The swarm, now.
pub(super) struct Now {
    /// Since the peers started.
    pub(super) elapsed: Duration,
    pub(super) peers: Vec<PeerNow>,
    /// Bytes the seed node sent.
    pub(super) seed_egress: u64,
}

enum Mode {
    Bars {
        _multi: MultiProgress,
        peers: Vec<ProgressBar>,
        seed: ProgressBar,
        /// When each peer's bar was finished.
        done: Vec<Option<Duration>>,
    },
    Lines {
        next: Instant,
    },
    Quiet,
}

pub(super) struct View {
    mode: Mode,
    file_len: u64,
    blob_len: u64,
}

impl View {
    pub(super) fn new(json: bool, peers: usize, file_len: u64, blob_len: u64) -> Self {
        let mode = if json {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "  peer {prefix:>2} [{bar:20}] {bytes:>10} {binary_bytes_per_sec:>12}  {msg}",
            )
            .expect("valid template")
            .progress_chars("=> ");
            let bars = (0..peers)
                .map(|i| {
                    let bar = multi.add(ProgressBar::new(file_len));
                    bar.set_style(style.clone());
                    bar.set_prefix((i + 1).to_string());
                    bar
                })
                .collect();
            let seed = multi.add(ProgressBar::new_spinner());
            seed.set_style(ProgressStyle::with_template("  {msg}").expect("valid template"));
            Mode::Bars {
                _multi: multi,
                peers: bars,
                seed,
                done: vec![None; peers],
            }
        } else {
            Mode::Lines {
                next: Instant::now() + LINE_EVERY,
            }
        };
        Self {
            mode,
            file_len,
            blob_len,
        }
    }

    fn copies(&self, bytes: u64) -> f64 {
        bytes as f64 / self.blob_len.max(1) as f64
    }

    pub(super) fn update(&mut self, now: &Now) {
        let peers_up: u64 = now.peers.iter().map(|p| p.uploaded).sum();
        let seed_copies = self.copies(now.seed_egress);
        match &mut self.mode {
            Mode::Quiet => {}
            Mode::Bars {
                peers, seed, done, ..
            } => {
                for ((bar, p), done) in peers.iter().zip(&now.peers).zip(done.iter_mut()) {
                    bar.set_position(p.done_bytes);
                    if p.complete && done.is_none() {
                        *done = Some(now.elapsed);
                    }
                    let state = done.map_or(String::new(), |t| {
                        format!(", done at {:.1} s", t.as_secs_f64())
                    });
                    bar.set_message(format!("sent {}{state}", ui::size(p.uploaded)));
                }
                seed.set_message(format!(
                    "seed node sent {} = {seed_copies:.2} copies · peers sent {} · {:.1} s",
                    ui::size(now.seed_egress),
                    ui::size(peers_up),
                    now.elapsed.as_secs_f64()
                ));
            }
            Mode::Lines { next } => {
                if Instant::now() < *next {
                    return;
                }
                *next += LINE_EVERY;
                let n = now.peers.len();
                let complete = now.peers.iter().filter(|p| p.complete).count();
                let got: u64 = now.peers.iter().map(|p| p.done_bytes).sum();
                let percent = 100.0 * got as f64 / (self.file_len * n as u64).max(1) as f64;
                eprintln!(
                    "  {:>5.1} s  {complete}/{n} peers done, {percent:.0} % of the bytes in; seed node sent {} ({seed_copies:.2} copies), peers sent {}",
                    now.elapsed.as_secs_f64(),
                    ui::size(now.seed_egress),
                    ui::size(peers_up),
                );
            }
        }
    }

    /// Clears the bars (the summary follows).
    pub(super) fn finish(self) {
        if let Mode::Bars { peers, seed, .. } = self.mode {
            for bar in peers {
                bar.finish_and_clear();
            }
            seed.finish_and_clear();
        }
    }
}
