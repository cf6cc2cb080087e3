//! Shoal simulations and network-emulation tools.
//!
//! This crate will host `shoal-sim`, the discrete-event simulator that drives the sans-IO
//! cores of `shoal-protocol` over a simulated network (STYLE.md §1, §8). For now it holds the
//! lab's network-emulation tools, which stand in for what this machine's kernel lacks:
//!
//! - [`DelayLine`]: a constant-delay FIFO, the sans-IO timing core of `shoal-netem`. Items
//!   leave exactly `delay` after they entered, in the order they entered, and the line holds at
//!   most a fixed number of them.
//! - [`nfqueue`]: a minimal NFQUEUE client over a netlink socket (bind a queue, read packet
//!   ids, send verdicts), its message codec pure and tested on bytes.
//! - the binary `shoal-netem`: the delay half of Linux `netem`, for kernels built without it.
//!   It binds an NFQUEUE and accepts each packet `--delay-ms` after it arrived (see
//!   `shoal-netem --help`). `bench/nat_lab.sh` runs it on its core router so every path has a
//!   chosen round-trip time.
//!
//! # Example
//!
//! ```
//! use std::time::{Duration, Instant};
//! use shoal_sim::DelayLine;
//!
//! let t0 = Instant::now();
//! let mut line = DelayLine::new(Duration::from_millis(20), 1000);
//! line.push(t0, "syn").expect("the line has room");
//! assert_eq!(line.pop_due(t0 + Duration::from_millis(19)), None);
//! assert_eq!(line.next_deadline(), Some(t0 + Duration::from_millis(20)));
//! assert_eq!(line.pop_due(t0 + Duration::from_millis(20)), Some("syn"));
//! ```
//!
//! # Features
//!
//! None. The tests in `tests/` build network namespaces and need root; set
//! `SHOAL_NO_NETNS=1` to skip them (they say so) where that is impossible.

mod delay;
pub mod nfqueue;

pub use delay::{DelayLine, Full};
