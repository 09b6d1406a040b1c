//! The tests that need no native code: the dataset reader, and planning, resume and shards
//! through the scheduler on a deterministic fake decoder. They build and run without the
//! `native` feature (`cargo test --no-default-features --test pure`), in seconds, before
//! llama.cpp and FAISS are compiled.

#[path = "../../fuzz/invariants.rs"]
mod invariants;

mod dataset;
mod gguf;
mod scheduler;
mod templates;
