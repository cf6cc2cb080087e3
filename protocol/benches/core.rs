//! Micro-benchmarks of the pure core: seal/open per segment, bao verify per block, link
//! parse. `cargo bench -p shoal-protocol --bench core`. Results: docs/benchmarks.md.

// Benchmarks panic on setup failure; that is the right outcome.
#![allow(clippy::unwrap_used)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shoal_protocol::{
    BlobId, ContentKey, Link,
    blob::{BlockIndex, EncodeItem, Need, OutboardBuilder, RangeDecoder, RangeEncoder, block_hash},
    format::{SEGMENT_LEN, SEGMENT_PLAINTEXT_LEN, SegmentCipher, TAG_LEN},
    wire::BlobRequest,
};
use std::hint::black_box;

fn segments(c: &mut Criterion) {
    let cipher = SegmentCipher::new(&ContentKey::from_bytes([7; 32]));
    let mut g = c.benchmark_group("segment");
    g.throughput(Throughput::Bytes(SEGMENT_PLAINTEXT_LEN as u64));
    let mut buf = vec![0x5a; SEGMENT_LEN];
    g.bench_function("seal_64k", |b| {
        b.iter(|| cipher.seal_in_place(black_box(3), false, &mut buf));
    });
    let mut sealed = vec![0x5a; SEGMENT_LEN];
    cipher.seal_in_place(3, false, &mut sealed);
    g.bench_function("open_64k", |b| {
        b.iter(|| {
            let mut s = sealed.clone();
            cipher.open_in_place(3, false, &mut s).unwrap();
            black_box(s[TAG_LEN]);
        });
    });
    g.throughput(Throughput::Bytes(SEGMENT_LEN as u64));
    g.bench_function("blake3_block_hash_64k", |b| {
        b.iter(|| black_box(block_hash(BlockIndex(5), black_box(&sealed), false)));
    });
    g.finish();
}

fn verify(c: &mut Criterion) {
    // A 64-block blob; decode a 16-block response (parents + leaves) per iteration.
    let blob: Vec<u8> = (0..64 * SEGMENT_LEN).map(|i| (i % 251) as u8).collect();
    let mut ob = OutboardBuilder::new(blob.len() as u64);
    for (i, chunk) in blob.chunks(SEGMENT_LEN).enumerate() {
        ob.push(block_hash(BlockIndex(i as u32), chunk, false));
    }
    let ob = ob.finish();
    let req = BlobRequest::new(ob.id(), 16..32).unwrap();
    let mut wire = Vec::new();
    for item in RangeEncoder::new(&ob, &req.ranges) {
        match item {
            EncodeItem::Parent(p) => wire.extend_from_slice(p),
            EncodeItem::Block { index, len } => {
                wire.extend_from_slice(&blob[index.offset() as usize..][..len])
            }
        }
    }
    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Bytes(16 * SEGMENT_LEN as u64));
    g.bench_function(BenchmarkId::new("range_decoder", "16_blocks"), |b| {
        b.iter(|| {
            let mut d = RangeDecoder::new(ob.id(), blob.len() as u64, &req.ranges);
            let mut w = &wire[..];
            loop {
                match d.need() {
                    Need::Done => break,
                    Need::Parent => {
                        d.parent(w[..64].try_into().unwrap()).unwrap();
                        w = &w[64..];
                    }
                    Need::Block { len, .. } => {
                        d.block(&w[..len]).unwrap();
                        w = &w[len..];
                    }
                }
            }
        });
    });
    g.finish();
}

fn links(c: &mut Criterion) {
    let mut l = Link::new(BlobId::from_bytes([3; 32]), ContentKey::from_bytes([4; 32]));
    l.blob_len = Some(1_073_758_224);
    l.peers.push(
        "/ip4/192.0.2.1/udp/4001/quic-v1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
            .into(),
    );
    let text = l.to_secret_string();
    c.bench_function("link_parse", |b| {
        b.iter(|| Link::parse(black_box(&text)).unwrap())
    });
}

criterion_group!(benches, segments, verify, links);
criterion_main!(benches);
