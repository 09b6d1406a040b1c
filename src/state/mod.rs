//! The state layer: a run's checked settings (`config`), the one definition of its output
//! files (`schema`), what makes it resumable (`resume`), one process per run and shard
//! (`lock`), and its progress on the terminal (`progress`).
//!
//! Pure Rust: it builds and tests without the `native` feature. It may import the `data` and
//! `scoring` layers, nothing above them.

pub mod config;
pub mod lock;
pub mod progress;
pub mod resume;
pub mod schema;
