//! `parse_dataset` on arbitrary bytes: it must never panic and its results must hold together
//! (see `../invariants.rs`, shared with the stable mutation test in `tests/dataset.rs`).

#![no_main]

// Only the reader is compiled, not miwv (which would build llama.cpp and FAISS under the
// sanitizer). `read_dataset` is unused here.
#[allow(dead_code)]
#[path = "../../src/dataset.rs"]
mod dataset;
#[path = "../invariants.rs"]
mod invariants;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| invariants::check(bytes));
