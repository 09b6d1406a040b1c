//! Model files are untrusted input: the GGUF metadata reader refuses cut-off headers, absurd
//! counts, huge strings and inconsistent fields, naming the key, in bounded time and memory;
//! a mutation test runs the cargo-fuzz target's invariants on the stable toolchain.

use std::io::Cursor;
use std::time::{Duration, Instant};

use miwv::data::gguf::{read_metadata, GgufProblem, GgufSummary};

#[path = "../../fuzz/gguf_invariants.rs"]
mod gguf_invariants;

/// A metadata value, as GGUF writes it.
enum V {
    U32(u32),
    I32(i32),
    Str(String),
    Strings(Vec<String>),
    F32s(usize),
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// A GGUF v3 file with these metadata pairs and `tensors` one-dimensional tensor records.
fn gguf(pairs: &[(&str, V)], tensors: u64) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend(tensors.to_le_bytes());
    out.extend((pairs.len() as u64).to_le_bytes());
    for (key, value) in pairs {
        string(&mut out, key);
        match value {
            V::U32(v) => {
                out.extend(4u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            V::I32(v) => {
                out.extend(5u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            V::Str(s) => {
                out.extend(8u32.to_le_bytes());
                string(&mut out, s);
            }
            V::Strings(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|s| string(&mut out, s));
            }
            V::F32s(n) => {
                out.extend(9u32.to_le_bytes());
                out.extend(6u32.to_le_bytes());
                out.extend((*n as u64).to_le_bytes());
                out.extend(std::iter::repeat_n(0u8, n * 4));
            }
        }
    }
    for t in 0..tensors {
        string(&mut out, &format!("blk.{t}.weight"));
        out.extend(1u32.to_le_bytes());
        out.extend(16u64.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend((t * 64).to_le_bytes());
    }
    out
}

fn tokens(n: usize) -> V {
    V::Strings((0..n).map(|i| format!("t{i}")).collect())
}

/// A small model's metadata: the fields miwv checks, all consistent.
fn model(extra: Vec<(&'static str, V)>) -> Vec<u8> {
    let mut pairs = vec![
        ("general.architecture", V::Str("llama".into())),
        ("llama.context_length", V::U32(8192)),
        ("tokenizer.ggml.tokens", tokens(100)),
        ("tokenizer.ggml.scores", V::F32s(100)),
        ("tokenizer.ggml.bos_token_id", V::U32(1)),
        ("tokenizer.ggml.eos_token_id", V::U32(2)),
        ("tokenizer.chat_template", V::Str("{{ messages }}".into())),
    ];
    for (key, value) in extra {
        pairs.retain(|(k, _)| *k != key);
        pairs.push((key, value));
    }
    gguf(&pairs, 3)
}

fn read(bytes: &[u8]) -> Result<GgufSummary, GgufProblem> {
    read_metadata(Cursor::new(bytes), bytes.len() as u64)
}

fn refused(bytes: &[u8]) -> String {
    let started = Instant::now();
    let problem = read(bytes).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    problem.to_string()
}

#[test]
fn a_consistent_header_is_read() {
    let summary = read(&model(vec![])).unwrap();
    assert_eq!(summary.architecture, "llama");
    assert_eq!(summary.vocab, 100);
    assert_eq!(summary.context_length, Some(8192));
    assert_eq!(summary.tensors, 3);
    assert_eq!(summary.chat_template_bytes, Some(14));
    assert_eq!(summary.special_tokens.len(), 2);
}

#[test]
fn a_cut_off_header_names_where_it_ends() {
    let whole = model(vec![]);
    for cut in [0, 3, 4, 9, 30, whole.len() / 2, whole.len() - 1] {
        let message = refused(&whole[..cut]);
        // Either the read runs into the end, or a count is already more than the rest holds.
        assert!(
            ["not a GGUF file", "cut off"]
                .iter()
                .any(|m| message.contains(m)),
            "cut at {cut}: {message}"
        );
    }
}

#[test]
fn absurd_counts_and_lengths_are_refused_before_any_allocation() {
    // 2^60 metadata pairs or tensors in a file of a few hundred bytes.
    let mut pairs = model(vec![]);
    pairs[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(refused(&pairs).contains("metadata pairs declares 1152921504606846976"));
    let mut tensors = model(vec![]);
    tensors[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(refused(&tensors).contains("tensors declares"));
    // A key claiming to be 2^62 bytes long.
    let mut key = model(vec![]);
    key[24..32].copy_from_slice(&(1u64 << 62).to_le_bytes());
    assert!(refused(&key).contains("a metadata key declares"));
    // An array of 2^40 floats.
    let mut bytes = gguf(&[("general.architecture", V::Str("llama".into()))], 0);
    string(&mut bytes, "tokenizer.ggml.scores");
    bytes.extend(9u32.to_le_bytes());
    bytes.extend(6u32.to_le_bytes());
    bytes.extend((1u64 << 40).to_le_bytes());
    bytes[16..24].copy_from_slice(&2u64.to_le_bytes());
    assert!(refused(&bytes).contains("tokenizer.ggml.scores declares 1099511627776"));
}

#[test]
fn huge_strings_are_refused_naming_the_key() {
    let name = "x".repeat(100_000);
    let message = refused(&model(vec![("general.name", V::Str(name))]));
    assert!(
        message.contains("general.name declares 100000, more than 65536"),
        "{message}"
    );
    let template = "{# #}".repeat(300_000);
    let message = refused(&model(vec![("tokenizer.chat_template", V::Str(template))]));
    assert!(
        message.contains("tokenizer.chat_template declares 1500000"),
        "{message}"
    );
}

#[test]
fn inconsistent_fields_are_refused_naming_both() {
    let message = refused(&model(vec![("tokenizer.ggml.eos_token_id", V::U32(100))]));
    assert_eq!(
        message,
        "metadata `tokenizer.ggml.eos_token_id` (100) does not fit `tokenizer.ggml.tokens` (100)"
    );
    let message = refused(&model(vec![("tokenizer.ggml.bos_token_id", V::I32(-5))]));
    assert!(
        message.contains("`tokenizer.ggml.bos_token_id`"),
        "{message}"
    );
    let message = refused(&model(vec![("tokenizer.ggml.scores", V::F32s(99))]));
    assert!(
        message.contains("`tokenizer.ggml.scores` (99)"),
        "{message}"
    );
    let message = refused(&model(vec![("llama.context_length", V::U32(0))]));
    assert!(
        message.contains("`llama.context_length`: 0 tokens"),
        "{message}"
    );
    let message = refused(&model(vec![("tokenizer.ggml.tokens", tokens(0))]));
    assert!(
        message.contains("`tokenizer.ggml.tokens`: missing or empty"),
        "{message}"
    );
    let message = refused(&model(vec![(
        "general.architecture",
        V::Str(String::new()),
    )]));
    assert!(message.contains("`general.architecture`"), "{message}");
}

#[test]
fn other_versions_and_unknown_types_are_refused() {
    let mut v1 = model(vec![]);
    v1[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert_eq!(
        refused(&v1),
        "GGUF version 1 is not supported (2 and 3 are)"
    );
    let mut bytes = gguf(&[("general.architecture", V::Str("llama".into()))], 0);
    string(&mut bytes, "general.oddity");
    bytes.extend(99u32.to_le_bytes());
    bytes[16..24].copy_from_slice(&2u64.to_le_bytes());
    assert_eq!(
        refused(&bytes),
        "metadata `general.oddity`: unknown value type 99"
    );
}

/// Deterministic mutations of a valid header, checked with the cargo-fuzz target's invariants.
#[test]
fn mutated_headers_keep_the_invariants() {
    let seed = model(vec![]);
    let iterations: usize = std::env::var("MIWV_FUZZ_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let started = Instant::now();
    for _ in 0..iterations {
        let mut bytes = seed.clone();
        for _ in 0..=next() % 4 {
            let at = (next() as usize) % bytes.len();
            match next() % 4 {
                0 => bytes[at] = next() as u8,
                1 => bytes[at] ^= 1 << (next() % 8),
                2 => bytes.truncate(at),
                _ => bytes[at..].iter_mut().take(8).for_each(|b| *b = 0xff),
            }
            if bytes.is_empty() {
                break;
            }
        }
        gguf_invariants::check(&bytes);
    }
    assert!(started.elapsed() < Duration::from_secs(60));
}
