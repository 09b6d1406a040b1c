//! Shared fixtures for the model tests: the default models and the example dataset.

#![allow(dead_code)]

use std::path::PathBuf;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model_file(name: &str) -> PathBuf {
    let path = root().join("ggml-models").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `python3 ggml-models/fetch.py` (scripts/test.sh does)",
        path.display()
    );
    path
}

pub fn scoring_model() -> PathBuf {
    model_file("SmolLM2-135M-Instruct.Q4_1.gguf")
}

pub fn embedding_model() -> PathBuf {
    model_file("nomic-embed-text-v1.5.f16.gguf")
}

pub fn examples() -> PathBuf {
    root().join("examples/alpaca-mini.json")
}

/// The example dataset's deliberate near-paraphrase pairs (0-based indices).
pub const PARAPHRASES: [(usize, usize); 6] = [
    (4, 149),
    (19, 169),
    (32, 180),
    (47, 161),
    (61, 194),
    (89, 139),
];

pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
