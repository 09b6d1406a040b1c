//! The scoring layer, without a model: samples into the exact token sequences that are scored
//! (`chat`, `prompt`; rendered on demand by `sequences`), every decode planned up front
//! (`plan`, `sizes`, `shard`), run through
//! the `decoder` seam (`scheduler`), and losses into MIWV and a selection (`score`,
//! `select`).
//!
//! Pure Rust: it builds and tests without the `native` feature (the scheduler's tests run on
//! a fake decoder). It may import the `data` layer, nothing above it.

pub mod chat;
pub mod decoder;
pub mod plan;
pub mod prompt;
pub mod scheduler;
pub mod score;
pub mod select;
pub mod sequences;
pub mod shard;
pub mod sizes;
