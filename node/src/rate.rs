//! A token bucket shared by all uploads of a node.
//!
//! Hand-written because the common crates (governor) count cells of at most a burst size;
//! here a request may be for one 64 KiB block at a rate below 64 KiB/s, and debt is simpler:
//! a caller takes its bytes at once and sleeps until the bucket is back to zero.

use std::time::Duration;

use tokio::{sync::Mutex, time::Instant};

/// Burst allowance: a quarter second of rate (at least one block), so short bursts pass.
const BURST: Duration = Duration::from_millis(250);

/// Limits throughput to `rate` bytes per second on average.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// A limiter of `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        let burst = (rate * BURST.as_secs_f64()).max(65_536.0);
        Self {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes `n` bytes, waiting as long as the bucket is in debt. Cancel-safe: bytes taken
    /// by a cancelled call stay taken.
    pub async fn acquire(&self, n: u64) {
        let wait = {
            let mut s = self.state.lock().await;
            let now = Instant::now();
            let refill = now.duration_since(s.1).as_secs_f64() * self.rate;
            s.0 = (s.0 + refill).min(self.burst) - n as f64;
            s.1 = now;
            if s.0 < 0.0 {
                Duration::from_secs_f64(-s.0 / self.rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn holds_the_rate() {
        let l = RateLimiter::new(1_000_000);
        let start = Instant::now();
        for _ in 0..100 {
            l.acquire(65_536).await;
        }
        // 6.55 MB at 1 MB/s, minus the 250 ms burst.
        let took = start.elapsed().as_secs_f64();
        assert!((6.2..6.4).contains(&took), "took {took}");
    }
}
