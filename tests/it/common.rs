//! Shared fixtures for the model tests: the default models and the example dataset.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

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

/// The default scoring model: the shipped weights as F16 (`ggml-models/fetch.py` derives it).
pub fn scoring_model() -> PathBuf {
    model_file("SmolLM2-135M-Instruct.F16.gguf")
}

/// The file the model package ships, in Q4_1.
pub fn shipped_model() -> PathBuf {
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

/// The `miwv` binary, run from the repository root so the default model paths resolve.
pub fn miwv() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_miwv"));
    cmd.current_dir(root());
    cmd
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The selected records of a run, written as a JSON array (`selected.json`, for array input)
/// or JSON Lines (`selected.jsonl`).
pub fn read_selected(out: &Path) -> Vec<Value> {
    let array = out.join("selected.json");
    if array.exists() {
        serde_json::from_str(&std::fs::read_to_string(array).unwrap()).unwrap()
    } else {
        read_jsonl(&out.join("selected.jsonl"))
    }
}

/// Writes the first `n` example records to `path` as a JSON array.
pub fn write_examples(path: &Path, n: usize) {
    let all: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(examples()).unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string_pretty(&all[..n]).unwrap()).unwrap();
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Whether a test that needs something from the machine (a tool, a kernel feature) can run.
/// Where `MIWV_REQUIRE_<switch>` is set (`.ci/run` sets each one and installs what it needs),
/// a missing `what` fails the test; elsewhere the test is skipped and says so on the real
/// stderr, past the test harness's capture.
pub fn environment_allows(switch: &str, what: &str, available: bool) -> bool {
    use std::io::Write;
    if available {
        return true;
    }
    let variable = format!("MIWV_REQUIRE_{switch}");
    assert!(
        std::env::var_os(&variable).is_none(),
        "{variable} is set but this machine lacks {what}"
    );
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {}: needs {what} (set {variable}=1 to make this an error)",
        std::thread::current().name().unwrap_or("a test")
    );
    false
}

/// Whether `program ARGS` runs and succeeds here.
pub fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
