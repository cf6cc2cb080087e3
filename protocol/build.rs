//! Records the optimisation level this crate is built with, so a test can check that the
//! crypto stays optimised in dev and test builds (unoptimised XChaCha20-Poly1305 is ~70x
//! slower and would make the test suite crawl). See the workspace Cargo.toml.

fn main() {
    let level = std::env::var("OPT_LEVEL").unwrap_or_default();
    println!("cargo::rustc-env=SHOAL_PROTOCOL_OPT_LEVEL={level}");
    println!("cargo::rerun-if-env-changed=OPT_LEVEL");
}
