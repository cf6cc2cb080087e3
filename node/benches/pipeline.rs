//! The share pipeline (encrypt + outboard, all cores) against raw single-core
//! XChaCha20-Poly1305 sealing and raw BLAKE3 on the same data, side by side in one run.
//! `cargo bench -p shoal-node --bench pipeline`. Results: docs/benchmarks.md.

// Benchmarks panic on setup failure; that is the right outcome.
#![allow(clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shoal_node::seal::{KeyMode, seal_file};
use shoal_protocol::format::{
    ContentKey, Metadata, SEGMENT_LEN, SEGMENT_PLAINTEXT_LEN, SegmentCipher,
};
use std::hint::black_box;

/// 256 MiB: large enough to stream, small enough to stay in the page cache.
const LEN: usize = 256 << 20;

fn pipeline(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input.bin");
    let data = shoal_node::testing::write_file(&path, LEN, 1);
    let mut g = c.benchmark_group("share_pipeline_256MiB");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(LEN as u64));

    let cipher = SegmentCipher::new(&ContentKey::from_bytes([9; 32]));
    let mut buf = vec![0u8; SEGMENT_LEN];
    g.bench_function("raw_xchacha20poly1305_seal_1_core", |b| {
        b.iter(|| {
            for (i, chunk) in data.chunks(SEGMENT_PLAINTEXT_LEN).enumerate() {
                buf.truncate(0);
                buf.extend_from_slice(chunk);
                buf.extend_from_slice(&[0; 16]);
                cipher.seal_in_place(i as u64, false, &mut buf);
            }
            black_box(&buf);
        });
    });
    g.bench_function("raw_blake3_1_core", |b| {
        b.iter(|| black_box(blake3::hash(&data)))
    });
    let meta = Metadata {
        name: "input.bin".into(),
        file_len: LEN as u64,
        media_type: String::new(),
    };
    g.bench_function("seal_file_all_cores", |b| {
        b.iter(|| {
            let s = seal_file(
                &path,
                meta.clone(),
                &KeyMode::Random,
                [1; 32],
                None,
                &|_| {},
            )
            .unwrap();
            black_box(s.outboard.id())
        });
    });
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
