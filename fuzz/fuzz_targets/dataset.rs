//! `parse_dataset` on arbitrary bytes: it must never panic and its results must hold together
//! (see `../invariants.rs`, shared with the stable mutation test in `tests/pure/dataset.rs`).

#![no_main]

#[path = "../invariants.rs"]
mod invariants;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| invariants::check(bytes));
