//! Recycled data buffers for the transfer paths.
//!
//! A downloader's writer hands its 64 KiB block buffers back to the readers, and a server's
//! send loop hands each chunk back to the blocking thread that reads and seals the next one.
//! Fresh buffers would be allocated and zero-filled per block: that was ~3 % of a getter's
//! CPU and ~3 % of a sharer's in `perf` (docs/benchmarks.md).

use std::sync::Mutex;

/// Buffers kept for reuse (64 of ~64 KiB: 4 MiB at most).
const KEEP: usize = 64;
static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A buffer of `len` bytes. Its contents are unspecified (what an earlier user left): the
/// caller overwrites what it uses. Only the part beyond a recycled buffer's length is zeroed.
pub(crate) fn take(len: usize) -> Vec<u8> {
    let mut b = POOL
        .lock()
        .ok()
        .and_then(|mut p| p.pop())
        .unwrap_or_default();
    b.resize(len, 0);
    b
}

/// Returns a buffer for reuse (dropped if the pool is full).
pub(crate) fn put(buf: Vec<u8>) {
    if let Ok(mut p) = POOL.lock()
        && p.len() < KEEP
    {
        p.push(buf);
    }
}
