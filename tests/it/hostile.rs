//! Hostile input end to end: bad model files, impossible settings, awkward datasets and
//! unwritable output. Each must end in a clear error and a non-zero exit (never an abort from
//! inside llama.cpp), or in a run that records what it could not score.

use crate::common;

use std::path::Path;
use std::process::Output;

use common::{miwv, read_jsonl, read_selected, write_examples};
use serde_json::Value;

fn select(data: &Path, out: &Path, extra: &[&str]) -> Output {
    miwv()
        .arg("select")
        .arg(data)
        .arg("-o")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// Asserts a clean failure (exit code 1, not a signal) whose message contains every `part`.
fn assert_fails_with(output: &Output, parts: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    for part in parts {
        assert!(stderr.contains(part), "`{part}` missing from: {stderr}");
    }
}

fn assert_succeeds(output: &Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn broken_or_unsuitable_model_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.json");
    write_examples(&data, 4);
    let model = std::fs::read(common::scoring_model()).unwrap();
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &model[..model.len() / 3]).unwrap();
    let header_only = dir.path().join("header.gguf");
    std::fs::write(&header_only, &model[..64]).unwrap();
    let text = dir.path().join("text.gguf");
    std::fs::write(&text, "not a model\n").unwrap();
    let (truncated, header_only, text) = (
        truncated.to_str().unwrap(),
        header_only.to_str().unwrap(),
        text.to_str().unwrap(),
    );
    let embedder = common::embedding_model();
    let embedder = embedder.to_str().unwrap();
    let out = dir.path().join("out");
    let cases: [(&[&str], &[&str]); 8] = [
        (
            &["-m", "no/such/model.gguf"],
            &["no/such/model.gguf", "cannot read the model file"],
        ),
        (&["-m", text], &[text, "not a GGUF file"]),
        (&["-m", truncated], &[truncated, "could not load"]),
        (&["-m", header_only], &[header_only, "could not load"]),
        (
            &["--embed-model", truncated],
            &[truncated, "could not load"],
        ),
        (&["--embed-model", text], &[text, "not a GGUF file"]),
        // An embedding model has no language-model head: it can retrieve but not score.
        (
            &["-m", embedder],
            &[embedder, "is an embedding model and cannot score"],
        ),
        // SmolLM2 was trained on 8192 tokens.
        (
            &["-c", "16384", "-b", "16384"],
            &["--ctx-size 16384 exceeds the 8192 tokens"],
        ),
    ];
    for (args, message) in cases {
        assert_fails_with(&select(&data, &out, args), message);
    }
    assert!(
        !out.join("scores.jsonl").exists(),
        "no output from a failed run"
    );
}

#[test]
fn an_unwritable_output_directory_fails_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.json");
    write_examples(&data, 4);
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let out = file.join("out");
    let started = std::time::Instant::now();
    let output = select(&data, &out, &[]);
    assert_fails_with(&output, &[out.to_str().unwrap()]);
    assert!(
        started.elapsed().as_secs() < 20,
        "the output directory is checked before the models are used"
    );
}

#[test]
fn a_one_sample_dataset_is_scored_zero_shot_and_marked_no_neighbour() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("one.jsonl");
    std::fs::write(
        &data,
        "{\"id\": \"only\", \"instruction\": \"Name a colour.\", \"output\": \"Blue.\"}\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    assert_succeeds(&select(&data, &out, &["--count", "1"]));
    let scores = read_jsonl(&out.join("scores.jsonl"));
    assert_eq!(scores.len(), 1);
    assert!(scores[0]["miwv"].is_null());
    assert_eq!(scores[0]["reason"], "no_neighbour");
    assert!(scores[0]["loss_zero_shot"].as_f64().unwrap() > 0.0);
    assert!(read_selected(&out).is_empty());
}

#[test]
fn a_long_example_is_shortened_and_a_target_that_cannot_fit_is_too_long() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("long.json");
    let long = "The river rises in the hills and runs to the sea. ".repeat(30);
    let records = serde_json::json!([
        {"id": "long", "instruction": "Describe the river.", "output": long},
        {"id": "short", "instruction": "Describe the river briefly.", "output": "It runs to the sea."},
        {"id": "other", "instruction": "Describe the hills.", "output": "They are green."},
    ]);
    std::fs::write(&data, records.to_string()).unwrap();
    let out = dir.path().join("out");
    let args = [
        "-c",
        "96",
        "-b",
        "192",
        "--ubatch-size",
        "96",
        "--count",
        "3",
    ];
    assert_succeeds(&select(&data, &out, &args));
    let scores = read_jsonl(&out.join("scores.jsonl"));
    assert!(scores[0]["miwv"].is_null());
    assert_eq!(scores[0]["reason"], "too_long");
    assert_eq!(scores[1]["neighbour_id"], "long", "{}", scores[1]);
    assert!(scores[1]["example_tokens_dropped"].as_u64().unwrap() > 0);
    assert!(
        scores[1]["miwv"].as_f64().is_some(),
        "the shortened example still scores"
    );
}

#[test]
fn a_cut_off_array_is_scored_up_to_its_last_complete_record() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.json");
    write_examples(&whole, 5);
    let text = std::fs::read_to_string(&whole).unwrap();
    // Cut inside the fifth record, as a download that stopped part way would.
    let cut = text.rfind("\"output\"").unwrap() + 12;
    let data = dir.path().join("cut.json");
    std::fs::write(&data, &text[..cut]).unwrap();
    let out = dir.path().join("out");
    let output = select(&data, &out, &["--count", "2"]);
    assert_succeeds(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cut.json") && stderr.contains("record 4"),
        "{stderr}"
    );
    assert_eq!(read_jsonl(&out.join("scores.jsonl")).len(), 4);
    let run: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["data_truncated"]["at"]["record"], 4, "{run}");
}

#[test]
fn duplicate_ids_are_refused_naming_both_records() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dup.jsonl");
    std::fs::write(
        &data,
        "{\"id\": \"x\", \"instruction\": \"a\", \"output\": \"b\"}\n\
         {\"id\": \"y\", \"instruction\": \"c\", \"output\": \"d\"}\n\
         {\"id\": \"x\", \"instruction\": \"e\", \"output\": \"f\"}\n",
    )
    .unwrap();
    assert_fails_with(
        &select(&data, &dir.path().join("out"), &[]),
        &["dup.jsonl", "line 3", "\"x\"", "line 1"],
    );
}

#[test]
fn one_and_two_threads_give_identical_scores() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.json");
    write_examples(&data, 12);
    let run = |threads: &str| {
        let out = dir.path().join(format!("t{threads}"));
        assert_succeeds(&select(
            &data,
            &out,
            &["-c", "512", "-b", "512", "-t", threads],
        ));
        std::fs::read(out.join("scores.jsonl")).unwrap()
    };
    assert!(
        run("1") == run("2"),
        "scores.jsonl differs between -t 1 and -t 2"
    );
}
