//! Coverage-guided fuzzing of the GGUF metadata reader: any bytes, no panic, and only sane,
//! consistent metadata accepted (see `../gguf_invariants.rs`, shared with the stable mutation
//! test in `tests/pure/gguf.rs`).
#![no_main]

#[path = "../gguf_invariants.rs"]
mod gguf_invariants;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| gguf_invariants::check(bytes));
