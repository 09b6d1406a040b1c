//! `miwv select` end to end, and retrieval with the real embedding model and FAISS.

use crate::common;

use std::path::Path;

use common::{miwv, read_jsonl, read_selected};
use miwv::data::dataset::read_dataset;
use miwv::engine::embed::{default_prefix, embed_samples};
use miwv::engine::{Embedder, Model};
use miwv::retrieval::neighbours::nearest_others;
use serde_json::Value;

/// Runs `miwv select DATA -o OUT EXTRA...`, checks it succeeded, returns `scores.jsonl`.
fn select(data: &Path, out: &Path, extra: &[&str]) -> Vec<Value> {
    let status = miwv()
        .arg("select")
        .arg(data)
        .arg("-o")
        .arg(out)
        .args(extra)
        .status()
        .unwrap();
    assert!(status.success());
    read_jsonl(&out.join("scores.jsonl"))
}

#[test]
fn the_neighbour_of_a_near_paraphrase_is_its_paraphrase() {
    let samples = read_dataset(&common::examples()).unwrap().samples;
    let model = Model::load(&common::embedding_model(), 0).unwrap();
    let prefix = default_prefix(model.info().architecture.as_deref());
    let mut embedder = Embedder::new(&model, common::threads()).unwrap();
    let (vectors, dim) = embed_samples(&mut embedder, &samples, prefix, |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(dim, 768);
    let found = nearest_others(&vectors, dim).unwrap();
    for (a, b) in common::PARAPHRASES {
        let (na, nb) = (found[a].unwrap(), found[b].unwrap());
        assert_eq!(
            na.index, b,
            "{} should retrieve {}",
            samples[a].id, samples[b].id
        );
        assert_eq!(
            nb.index, a,
            "{} should retrieve {}",
            samples[b].id, samples[a].id
        );
        assert!(na.similarity > 0.8 && na.similarity <= 1.0 + 1e-5);
    }
    for (i, n) in found.iter().enumerate() {
        assert_ne!(n.unwrap().index, i, "a sample is never its own neighbour");
    }
}

#[test]
fn select_writes_scores_selection_and_run_record() {
    // 40 samples, one of them duplicated at the end: 41 records.
    let dir = tempfile::tempdir().unwrap();
    let all: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(common::examples()).unwrap()).unwrap();
    let mut records: Vec<Value> = all[..40].to_vec();
    let mut duplicate = records[7].clone();
    duplicate["id"] = "dup-of-ex-008".into();
    records.push(duplicate);
    let data = dir.path().join("data.jsonl");
    let lines: Vec<String> = records.iter().map(|r| r.to_string()).collect();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("out");

    let scores = select(&data, &out, &["--ratio", "0.1"]);
    assert_eq!(scores.len(), 41);
    for (i, row) in scores.iter().enumerate() {
        assert_eq!(row["index"], i);
        assert_eq!(row["id"], records[i]["id"]);
        let zero = row["loss_zero_shot"].as_f64().unwrap();
        let one = row["loss_one_shot"].as_f64().unwrap();
        let miwv = row["miwv"].as_f64().unwrap();
        assert!((miwv - (one - zero)).abs() < 1e-5);
        assert!(row["reason"].is_null());
        assert!(row["response_tokens"].as_u64().unwrap() > 0);
        assert!(row["prompt_tokens_one_shot"].as_u64() > row["prompt_tokens_zero_shot"].as_u64());
        assert_ne!(row["neighbour_index"], i);
    }
    // The duplicate and its original retrieve each other and score clearly negative.
    assert_eq!(scores[40]["neighbour_index"], 7);
    assert_eq!(scores[7]["neighbour_index"], 40);
    assert!(scores[40]["miwv"].as_f64().unwrap() < -0.3);

    // floor(41 * 0.1) = 4 selected: the four highest MIWV, unchanged records, input order.
    let selected = read_selected(&out);
    assert_eq!(selected.len(), 4);
    let mut by_score: Vec<(f64, usize)> = scores
        .iter()
        .map(|r| {
            (
                r["miwv"].as_f64().unwrap(),
                r["index"].as_u64().unwrap() as usize,
            )
        })
        .collect();
    by_score.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut top: Vec<usize> = by_score[..4].iter().map(|&(_, i)| i).collect();
    top.sort();
    let expected: Vec<Value> = top.iter().map(|&i| records[i].clone()).collect();
    assert_eq!(selected, expected);
    assert_eq!(scores.iter().filter(|r| r["selected"] == true).count(), 4);

    let run: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["samples"], 41);
    assert_eq!(run["selected"], 4);
    // SmolLM2-Instruct is a chat model: its own Jinja template, read from the GGUF.
    assert_eq!(run["template_choice"], "auto");
    assert_eq!(run["template_name"], "model");
    assert_eq!(run["template"]["chat"]["source"], "gguf");
    assert_eq!(run["template"]["chat"]["eos_token"], "<|im_end|>");
    assert_eq!(run["budget"]["ratio"], 0.1);
    assert_eq!(
        run["scoring_model"]["sha256"],
        "a269e3181fcbb25046f99f64ba8d3c159165b211c2ff4ffca7ba1bb219d2ccd0"
    );
    assert_eq!(run["scoring_model"]["quantisation"], "F16");
    assert_eq!(run["scoring_model"]["architecture"], "llama");
    assert_eq!(run["embedder"]["model"]["architecture"], "nomic-bert");
    assert!(run["tool"].as_str().unwrap().starts_with("miwv "));

    // The files read back through the one schema exactly as written...
    let scores_text = std::fs::read_to_string(out.join("scores.jsonl")).unwrap();
    let rows = miwv::state::schema::read_scores(&out.join("scores.jsonl")).unwrap();
    let rewritten: String = rows
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    assert_eq!(rewritten, scores_text);
    let record = miwv::state::schema::read_run(&out.join("run.json")).unwrap();
    assert_eq!(serde_json::to_value(&record).unwrap(), run);
    assert_eq!((record.samples, record.selected), (41, 4));

    // ...and feed `compare` and `report` as they come: a run agrees fully with itself...
    let comparison = dir.path().join("self.json");
    let compared = miwv()
        .args(["compare", out.to_str().unwrap(), out.to_str().unwrap()])
        .args(["--json", comparison.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(compared.status.success(), "{compared:?}");
    let comparison: Value =
        serde_json::from_str(&std::fs::read_to_string(&comparison).unwrap()).unwrap();
    assert_eq!(comparison["scored_in_both"], 41);
    assert_eq!(comparison["spearman"], 1.0);
    assert_eq!(comparison["miwv_difference"]["max_abs"], 0.0);
    let overlaps = comparison["overlaps"].as_array().unwrap();
    assert_eq!(overlaps.last().unwrap()["budget"], "the runs' own");
    assert_eq!(overlaps.last().unwrap()["shared"], 4);
    assert!(overlaps.iter().all(|o| o["overlap"] == 1.0), "{overlaps:?}");

    // ...and its report shows the top sample with its text.
    let reported = miwv()
        .args(["report", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(reported.status.success(), "{reported:?}");
    let html = std::fs::read_to_string(out.join("report/report.html")).unwrap();
    let top = rows.iter().find(|r| r.rank == Some(1)).unwrap();
    assert!(
        html.contains(&top.id),
        "the top sample {} is on the page",
        top.id
    );
    let instruction = records[top.index]["instruction"].as_str().unwrap();
    let start: String = instruction.chars().take(12).collect();
    assert!(
        html.contains(&miwv::tools::report::escape_html(&start)),
        "the page shows the top sample's prompt ({start:?})"
    );
}

#[test]
fn unscorable_samples_are_nan_with_a_reason_and_never_selected() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.json");
    std::fs::write(
        &data,
        r#"[
 {"id": "empty", "instruction": "Say nothing.", "output": ""},
 {"id": "a", "instruction": "Name a primary colour.", "output": "Red is a primary colour."},
 {"id": "b", "instruction": "Name a warm colour.", "output": "Orange is a warm colour."}
]"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let scores = select(&data, &out, &["--count", "3", "--embed-model", "self"]);
    assert!(scores[0]["miwv"].is_null());
    assert_eq!(scores[0]["reason"], "empty_response");
    assert_eq!(scores[0]["selected"], false);
    let selected = read_selected(&out);
    assert_eq!(
        selected.len(),
        2,
        "NaN is never selected, even when the count allows it"
    );
}

#[test]
fn bad_input_fails_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("bad.jsonl");
    std::fs::write(
        &data,
        "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": 3, \"output\": \"b\"}\n",
    )
    .unwrap();
    let out = miwv()
        .args([
            "select",
            data.to_str().unwrap(),
            "-o",
            dir.path().join("o").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.jsonl: line 2, record 1: field `instruction`: expected a string"),
        "{stderr}"
    );

    let good = dir.path().join("good.jsonl");
    std::fs::write(&good, "{\"instruction\": \"a\", \"output\": \"b\"}\n").unwrap();
    for (model, problem) in [
        ("no/such/model.gguf", "cannot read the model file"),
        ("Cargo.toml", "not a GGUF file"),
    ] {
        let out = miwv()
            .args([
                "select",
                good.to_str().unwrap(),
                "-m",
                model,
                "-o",
                dir.path().join("o").to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(model) && stderr.contains(problem),
            "{stderr}"
        );
    }
}
