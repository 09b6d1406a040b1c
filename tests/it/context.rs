//! The context limit end to end: nothing is ever cut. A sample that does not fit is left
//! unscorable with its reason, and the run says so in its last lines, in `run.json` and in
//! the report; `--ctx-size auto` sizes the context so that nothing the model can hold is left
//! out, and scores as a large fixed context does.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{miwv, read_json, read_jsonl};
use serde_json::Value;

/// Two-turn conversations in pairs with the same questions (so each is the other's example):
/// four topics with one short and one long answer, two with short answers on both sides.
fn conversations(dir: &Path) -> PathBuf {
    let topics = [
        ("river", 9),
        ("mountain", 9),
        ("forest", 9),
        ("desert", 9),
        ("ocean", 1),
        ("city", 1),
    ];
    let mut records = Vec::new();
    for (topic, long) in topics {
        for (side, repeat) in [("a", 1), ("b", long)] {
            let answer = |what: &str| {
                format!("The {topic} {what}, and people come from far away to see it. ")
                    .repeat(repeat)
            };
            records.push(serde_json::json!({
                "id": format!("{topic}-{side}"),
                "messages": [
                    {"role": "user", "content": format!("Tell me about the {topic}.")},
                    {"role": "assistant", "content": answer("is beautiful in spring")},
                    {"role": "user", "content": "And in winter?"},
                    {"role": "assistant", "content": answer("is quiet under the snow")},
                ],
            }));
        }
    }
    let path = dir.join("conversations.jsonl");
    let lines: Vec<String> = records.iter().map(Value::to_string).collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn select(data: &Path, out: &Path, extra: &[&str]) -> Output {
    let output = miwv()
        .arg("select")
        .arg(data)
        .arg("-o")
        .arg(out)
        .args(["--count", "1"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Unscorable samples in `scores.jsonl` by reason.
fn reasons(scores: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for row in scores {
        if let Some(reason) = row["reason"].as_str() {
            *counts.entry(reason.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

#[test]
fn a_small_context_leaves_long_samples_unscored_and_every_output_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let data = conversations(dir.path());
    let out = dir.path().join("small");
    let output = select(&data, &out, &["-c", "160"]);
    let scores = read_jsonl(&out.join("scores.jsonl"));
    let counts = reasons(&scores);
    assert_eq!(counts.get("too_long"), Some(&4), "{counts:?}");
    assert_eq!(counts.get("example_too_long"), Some(&4), "{counts:?}");
    for row in &scores {
        let (alone, with_example) = (
            row["tokens_zero_shot"].as_u64().unwrap(),
            row["tokens_one_shot"].as_u64().unwrap(),
        );
        match row["reason"].as_str() {
            Some("too_long") => {
                assert!(alone > 160, "{row}");
                assert!(row["loss_zero_shot"].is_null());
            }
            Some("example_too_long") => {
                assert!(alone <= 160 && with_example > 160, "{row}");
                assert!(row["loss_zero_shot"].as_f64().unwrap() > 0.0, "{row}");
                assert!(row["miwv"].is_null() && row["loss_one_shot"].is_null());
            }
            other => {
                assert_eq!(other, None, "{row}");
                assert!(with_example <= 160, "{row}");
            }
        }
    }

    // The last lines, on stderr, whatever stderr is (here a pipe).
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary = &stderr[stderr.rfind("8 of 12 samples have no MIWV").expect(&stderr)..];
    for part in [
        "too_long",
        "example_too_long",
        "longer than 160 tokens",
        "river-b",
        "river-a",
    ] {
        assert!(summary.contains(part), "`{part}` missing from: {summary}");
    }

    let run = read_json(&out.join("run.json"));
    let recorded: BTreeMap<String, usize> = run["unscorable_reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let ids = g["first_ids"].as_array().unwrap();
            assert!(!ids.is_empty() && ids.len() <= 5, "{g}");
            (
                g["reason"].as_str().unwrap().to_string(),
                g["count"].as_u64().unwrap() as usize,
            )
        })
        .collect();
    assert_eq!(recorded, counts);
    assert_eq!(run["context_fit"]["asked"], 160);
    assert_eq!(run["context"]["ctx_per_sequence"], 160);

    let report = miwv().arg("report").arg(&out).output().unwrap();
    assert!(report.status.success());
    let html = std::fs::read_to_string(out.join("report/report.html")).unwrap();
    assert!(
        html.contains("8 (4 too_long, 4 example_too_long)"),
        "the report's summary counts by reason"
    );
    assert!(html.contains("<b>example_too_long</b>: 4"));
}

#[test]
fn an_automatic_context_cuts_nothing_and_scores_as_a_large_fixed_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = conversations(dir.path());
    let (auto, large) = (dir.path().join("auto"), dir.path().join("large"));
    let output = select(&data, &auto, &[]);
    select(&data, &large, &["-c", "8192"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("have no MIWV"), "{stderr}");

    let run = read_json(&auto.join("run.json"));
    let fit = &run["context_fit"];
    assert_eq!(fit["asked"], "auto");
    let (ctx, longest) = (
        run["context"]["ctx_per_sequence"].as_u64().unwrap(),
        fit["longest_sequence"].as_u64().unwrap(),
    );
    assert!(
        longest > 160 && ctx >= longest && ctx < longest + 256,
        "{fit}"
    );
    assert_eq!(ctx % 256, 0);
    assert_eq!(fit["limit"], 8192, "the model's training context");
    assert!(run["unscorable_reasons"].as_array().unwrap().is_empty());

    let (auto, large) = (
        read_jsonl(&auto.join("scores.jsonl")),
        read_jsonl(&large.join("scores.jsonl")),
    );
    let longest_one_shot = auto
        .iter()
        .map(|r| r["tokens_one_shot"].as_u64().unwrap())
        .max()
        .unwrap();
    assert_eq!(longest_one_shot, longest);
    for (a, b) in auto.iter().zip(&large) {
        assert_eq!(a["reason"], Value::Null, "{a}");
        assert_eq!(a["neighbour_id"], b["neighbour_id"]);
        for field in ["loss_zero_shot", "loss_one_shot"] {
            let (x, y) = (a[field].as_f64().unwrap(), b[field].as_f64().unwrap());
            // Only the batch layout differs (docs/METHOD.md: within 1e-2 nats).
            assert!((x - y).abs() < 1e-2, "{}: {field} {x} against {y}", a["id"]);
        }
    }
}
