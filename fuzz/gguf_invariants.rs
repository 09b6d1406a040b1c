//! What must hold for `gguf::read_metadata` on any bytes, shared by the cargo-fuzz target
//! (`fuzz_targets/gguf.rs`) and the stable mutation test (`tests/pure/gguf.rs`), which both
//! include this file with `#[path]`.

use std::io::Cursor;

use miwv::data::gguf::{read_metadata, MAX_CONTEXT, MAX_TEMPLATE_BYTES};

/// Reads `bytes` as a GGUF file and panics if the result breaks an invariant: no panic inside
/// the reader, and whatever it accepts is sane and consistent.
pub fn check(bytes: &[u8]) {
    let Ok(summary) = read_metadata(Cursor::new(bytes), bytes.len() as u64) else {
        return;
    };
    assert!((2..=3).contains(&summary.version));
    assert!(!summary.architecture.is_empty());
    assert!(summary.vocab > 0);
    // Every token takes at least its 8-byte length in the file.
    assert!(summary.vocab <= bytes.len() as u64 / 8);
    for (key, id) in &summary.special_tokens {
        assert!(*id < summary.vocab, "{key} = {id} accepted");
    }
    if let Some(n) = summary.context_length {
        assert!((1..=MAX_CONTEXT).contains(&n));
    }
    if let Some(n) = summary.chat_template_bytes {
        assert!(n <= MAX_TEMPLATE_BYTES && n <= bytes.len());
    }
}
