//! The data layer: files in, samples out, and the selection written back in the input's
//! format; a model file's header read and checked before anything trusts it.
//!
//! Pure Rust: it builds and tests without the `native` feature. It imports nothing from the
//! layers above it (`scoring`, `state`, the native layers).

pub mod dataset;
pub mod gguf;
pub mod output;
pub mod records;
pub mod store;
