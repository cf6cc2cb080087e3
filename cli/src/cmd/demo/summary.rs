//! The demo's summary: completion times against the Kumar–Ross bound, seed-node egress in
//! copies, the peers' share of the bytes, as text (stderr) or one JSON object (stdout).

use std::fmt::Write as _;

use shoal_node::seednode::Policy;

use super::{Args, Measured, cap};
use crate::ui;

/// Lower bounds on the time until every peer has the file, in seconds (`None` where no cap
/// bounds it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Bounds {
    /// Kumar–Ross: max(F/u_s, F/d_min, N·F/(u_s + Σu_i)), with d_min = ∞ (downloads
    /// uncapped). See: R. Kumar, K. Ross, "Peer-assisted file distribution: the minimum
    /// distribution time", 2006.
    pub(super) t_min: Option<f64>,
    /// A seed that sends one copy leaves N−1 copies to the peers: max(F/u_s, (N−1)·F/Σu_i).
    pub(super) frugal: Option<f64>,
    /// A server alone sends N copies: N·F/u_s.
    pub(super) server_alone: Option<f64>,
}

/// Bounds for `n` peers fetching `f` bytes from a seed uploading `seed` bytes/s, each peer
/// uploading `peer` bytes/s (`None` = unlimited).
pub(super) fn bounds(f: u64, n: usize, seed: Option<u64>, peer: Option<u64>) -> Bounds {
    let f = f as f64;
    let n = n as f64;
    // Time to send `bytes` at `rate` (an unlimited rate takes no time).
    let at = |bytes: f64, rate: Option<f64>| rate.map_or(0.0, |r| bytes / r);
    let u_s = seed.map(|s| s as f64);
    let sum_u = peer.map(|p| p as f64 * n);
    let total_up = u_s.zip(sum_u).map(|(s, p)| s + p);
    let positive = |t: f64| (t > 0.0).then_some(t);
    Bounds {
        t_min: positive(at(f, u_s).max(at(n * f, total_up))),
        frugal: positive(at(f, u_s).max(at((n - 1.0) * f, sum_u))),
        server_alone: positive(at(n * f, u_s)),
    }
}

/// Everything the summary shows.
pub(super) struct Report {
    policy: Policy,
    size: u64,
    blob_len: u64,
    blob_id: String,
    seed_cap: Option<u64>,
    peer_cap: Option<u64>,
    transport: &'static str,
    push_secs: f64,
    peer_secs: Vec<f64>,
    peer_uploaded: Vec<u64>,
    bounds: Bounds,
    seed_egress_bytes: u64,
    seed_egress_copies: f64,
    verified: bool,
    original: String,
}

impl Report {
    pub(super) fn new(
        args: &Args,
        policy: Policy,
        m: &Measured,
        verified: bool,
        original: &blake3::Hash,
    ) -> Self {
        let blob_len = m.link.blob_len.unwrap_or(args.size);
        let n = m.peers.len();
        Self {
            policy,
            size: args.size,
            blob_len,
            blob_id: m.link.id.to_string(),
            seed_cap: cap(args.seed_cap),
            peer_cap: cap(args.peer_cap),
            transport: args.transport.name(),
            push_secs: m.push_time.as_secs_f64(),
            peer_secs: m.peers.iter().map(|p| p.elapsed.as_secs_f64()).collect(),
            peer_uploaded: m.peers.iter().map(|p| p.uploaded).collect(),
            bounds: bounds(blob_len, n, cap(args.seed_cap), cap(args.peer_cap)),
            seed_egress_bytes: m.seed_egress_bytes,
            seed_egress_copies: m.seed_egress_copies,
            verified,
            original: original.to_hex()[..16].to_owned(),
        }
    }

    pub(super) const fn verified(&self) -> bool {
        self.verified
    }

    fn peer_upload_bytes(&self) -> u64 {
        self.peer_uploaded.iter().sum()
    }

    fn delivered(&self) -> u64 {
        self.peer_upload_bytes() + self.seed_egress_bytes
    }

    /// Bytes uploaded by peers, in percent of all bytes delivered to peers.
    fn offload_percent(&self) -> f64 {
        100.0 * self.peer_upload_bytes() as f64 / self.delivered().max(1) as f64
    }

    fn all_done(&self) -> f64 {
        self.peer_secs.iter().copied().fold(0.0, f64::max)
    }

    pub(super) fn json(&self) -> serde_json::Value {
        let b = &self.bounds;
        serde_json::json!({
            "policy": self.policy,
            "size": self.size,
            "peers": self.peer_secs.len(),
            "peer_secs": self.peer_secs,
            "peer_upload_bytes_each": self.peer_uploaded,
            "all_done_secs": self.all_done(),
            "t_min_secs": b.t_min,
            "frugal_bound_secs": b.frugal,
            "server_alone_secs": b.server_alone,
            "seed_egress_bytes": self.seed_egress_bytes,
            "seed_egress_copies": self.seed_egress_copies,
            "peer_upload_bytes": self.peer_upload_bytes(),
            "offload_percent": self.offload_percent(),
            "verified": self.verified,
            "seed_cap": self.seed_cap,
            "peer_cap": self.peer_cap,
            "transport": self.transport,
            "blob_id": self.blob_id,
            "blob_len": self.blob_len,
            "push_secs": self.push_secs,
        })
    }

    pub(super) fn text(&self) -> String {
        let b = &self.bounds;
        let n = self.peer_secs.len();
        let all_done = self.all_done();
        let mut s = String::new();
        if self.verified {
            let who = if n == 1 {
                "the peer holds the file, byte-identical to the original".to_owned()
            } else {
                format!("all {n} peers hold the file, every copy byte-identical to the original")
            };
            let _ = writeln!(s, "Done in {all_done:.1} s: {who}.");
        } else {
            let _ = writeln!(
                s,
                "Done in {all_done:.1} s, but some copies DIFFER from the original (BLAKE3 {}…).",
                self.original
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "  peer   done after   vs T_min   uploaded to others");
        for (i, (&t, &up)) in self.peer_secs.iter().zip(&self.peer_uploaded).enumerate() {
            let ratio = b.t_min.map_or("–".into(), |m| format!("{:.2}×", t / m));
            let _ = writeln!(
                s,
                "  {:>4}   {t:>8.1} s   {ratio:>8}   {:>18}",
                i + 1,
                ui::size(up)
            );
        }
        match b.t_min {
            Some(t) => {
                let _ = writeln!(
                    s,
                    "  T_min = {t:.1} s: no system can finish sooner (Kumar–Ross: max(F/u_s, N·F/(u_s + Σu_i))); the last peer took {:.2}×",
                    all_done / t
                );
                if all_done < t {
                    // See: node/src/rate.rs, BURST.
                    let _ = writeln!(
                        s,
                        "  (under T_min: each upload cap lets a quarter second's worth through at once, which counts in a short run)"
                    );
                }
            }
            None => {
                let _ = writeln!(
                    s,
                    "  T_min: none; the seed node's upload is not capped, so only this machine's speed bounds the swarm"
                );
            }
        }
        if self.policy == Policy::Frugal
            && let Some(t) = b.frugal
        {
            let _ = writeln!(
                s,
                "  frugal bound = {t:.1} s = max(F/u_s, (N−1)·F/Σu_i): the seed node sends ~1 copy, so peers must carry the other N−1"
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "  seed node sent {:>10} = {:.2} copies of the file ({} policy)",
            ui::size(self.seed_egress_bytes),
            self.seed_egress_copies,
            self.policy
        );
        let _ = writeln!(
            s,
            "  peers sent     {:>10} = {:.0} % of the {} delivered",
            ui::size(self.peer_upload_bytes()),
            self.offload_percent(),
            ui::size(self.delivered())
        );
        let alone = ui::size(self.blob_len.saturating_mul(n as u64));
        let copies = if n == 1 { "copy" } else { "copies" };
        match (b.server_alone, self.seed_cap) {
            (Some(t), Some(c)) => {
                let _ = writeln!(
                    s,
                    "  a server alone would send {n} {copies} ({alone}) and need at least {t:.1} s at {}/s ({:.1}× longer)",
                    ui::size(c),
                    t / all_done.max(1e-3)
                );
            }
            _ => {
                let _ = writeln!(s, "  a server alone would send {n} {copies} ({alone})");
            }
        }
        let _ = writeln!(s);
        let other = match self.policy {
            Policy::Frugal => "`--policy fast` (peers finish sooner, the seed node sends more)",
            Policy::Fast => "`--policy frugal` (the seed node aims at one copy; peers take longer)",
        };
        let more = (2 * n).min(super::MAX_PEERS);
        let more = if more > n {
            format!(", or `--peers {more}`")
        } else {
            String::new()
        };
        let _ = writeln!(s, "Try {other}{more}.");
        let _ = writeln!(
            s,
            "For real: `shoal share FILE` on one machine, `shoal get LINK` on the others."
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn default_demo_bounds() {
        // 16 MiB, 8 peers at 1 MiB/s, seed at 4 MiB/s: the swarm term wins (128/12 s).
        let b = bounds(16 * MIB, 8, Some(4 * MIB), Some(MIB));
        assert!(close(b.t_min, 128.0 / 12.0), "{b:?}");
        assert!(close(b.frugal, 14.0), "{b:?}");
        assert!(close(b.server_alone, 32.0), "{b:?}");
    }

    #[test]
    fn the_issue_flash_crowd_bounds() {
        // Issue 4: 64 MiB, 8 peers at 1 MiB/s, seed at 4 MiB/s: frugal bound 56 s.
        let b = bounds(64 * MIB, 8, Some(4 * MIB), Some(MIB));
        assert!(close(b.frugal, 56.0), "{b:?}");
        assert!(close(b.t_min, 512.0 / 12.0), "{b:?}");
    }

    #[test]
    fn uncapped_uploads() {
        // Peers uncapped: only the seed's one copy bounds it.
        let b = bounds(16 * MIB, 8, Some(4 * MIB), None);
        assert!(close(b.t_min, 4.0) && close(b.frugal, 4.0), "{b:?}");
        // Seed uncapped: nothing bounds T_min (d_min is infinite too); the frugal bound
        // still needs the peers' N−1 copies.
        let b = bounds(16 * MIB, 8, None, Some(MIB));
        assert_eq!((b.t_min, b.server_alone), (None, None), "{b:?}");
        assert!(close(b.frugal, 14.0), "{b:?}");
        // One peer: the seed sends the one copy.
        let b = bounds(16 * MIB, 1, Some(4 * MIB), Some(MIB));
        assert!(close(b.t_min, 4.0) && close(b.frugal, 4.0), "{b:?}");
    }
}
