//! Shared fuzz target bodies (see `bodies.rs`).
#[path = "bodies.rs"]
pub mod bodies;
