//! `miwv doctor --tokenizer` on the default model: its reference tokenizer agrees on every
//! example; a tokenizer.json with a broken pre-tokenizer is caught, sample by sample.
//!
//! The fixture is the vocabulary and merges that Hugging Face transformers exports from the
//! default GGUF (`tools/reference/make-f32-gguf.sh` writes the same file), with the
//! pre-tokenizer of SmolLM2's published tokenizer.json: digits split one by one, then
//! byte-level BPE. Tokenizing it is Hugging Face's code, independent of llama.cpp's.

use crate::common;

use common::miwv;
use serde_json::Value;

fn fixture() -> std::path::PathBuf {
    common::root().join("tests/fixtures/smollm2-135m-tokenizer.json")
}

#[test]
fn the_default_models_tokenizer_agrees_on_every_example() {
    let out = miwv()
        .args(["doctor", "examples/alpaca-mini.json", "--tokenizer"])
        .arg(fixture())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("200 samples, 401 segments: 0 differ"),
        "{stdout}"
    );
}

#[test]
fn a_tokenizer_with_a_broken_pre_tokenizer_is_caught() {
    // A classic conversion slip: a leading space added to every text, so the first token of
    // every segment becomes its space-prefixed twin.
    let mut tokenizer: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture()).unwrap()).unwrap();
    let byte_level = &mut tokenizer["pre_tokenizer"]["pretokenizers"][1];
    assert_eq!(byte_level["type"], "ByteLevel");
    byte_level["add_prefix_space"] = Value::Bool(true);
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("tokenizer.json");
    std::fs::write(&broken, tokenizer.to_string()).unwrap();
    let report = dir.path().join("report.json");

    let out = miwv()
        .args([
            "doctor",
            "examples/alpaca-mini.json",
            "--limit",
            "2",
            "--tokenizer",
        ])
        .arg(&broken)
        .arg("--json")
        .arg(&report)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("disagree"), "{stderr}");
    assert!(
        stdout.contains("gguf:") && stdout.contains("reference:"),
        "{stdout}"
    );

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let disagreements = report["disagreements"].as_array().unwrap();
    assert_eq!(
        report["samples_differing"], 200,
        "every prompt starts with a word"
    );
    let first = disagreements
        .iter()
        .find(|d| d["segment"] == "prompt")
        .unwrap();
    assert_eq!(first["first_difference"], 0);
    assert_ne!(first["gguf"][0], first["reference"][0]);
}
