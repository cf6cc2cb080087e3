//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the same bodies the
//! libFuzzer targets run (`fuzz/src/bodies.rs`), so CI exercises every decoder on stable
//! Rust. A crash found by `cargo fuzz` is fixed by committing its input to the corpus.

#![allow(clippy::unwrap_used, clippy::expect_used)]

// The bodies are `pub` for the fuzz crate; here they live in a private module.
#[allow(unreachable_pub)]
#[path = "../../fuzz/src/bodies.rs"]
mod bodies;

use std::path::Path;

#[test]
fn corpus_replays_without_panics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (name, body) in bodies::TARGETS {
        let dir = root.join(name);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            body(&data);
            n += 1;
        }
        assert!(n > 0, "corpus for {name} is empty");
    }
}

/// The tracker targets' named seeds are valid messages, so the fuzzer starts inside the
/// format; only crash regressions (`crash-*`) may be invalid.
#[test]
fn tracker_seeds_are_valid_messages() {
    use shoal_protocol::tracker::{Request, Response};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    type Decodes = fn(&[u8]) -> bool;
    let targets: [(&str, Decodes); 2] = [
        ("tracker_request", |b| Request::decode(b).is_ok()),
        ("tracker_response", |b| Response::decode(b).is_ok()),
    ];
    for (name, decodes) in targets {
        for entry in std::fs::read_dir(root.join(name)).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            if !file.starts_with("crash-") {
                assert!(
                    decodes(&std::fs::read(&path).unwrap()),
                    "{name}/{file} does not decode"
                );
            }
        }
    }
}

/// Random inputs too, so a target body that panics on simple input fails here first.
#[test]
fn bodies_survive_random_input() {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for len in [0usize, 1, 9, 16, 35, 100, 1024, 1100, 2092, 2093, 70_000] {
        for _ in 0..20 {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            for (_, body) in bodies::TARGETS {
                body(&data);
            }
        }
    }
}
