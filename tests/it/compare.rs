//! `miwv compare` on score files made by hand (through the `scores.jsonl` row type `select`
//! writes), so every reported number can be checked.

use crate::common;

use common::miwv;
use miwv::state::schema::ScoreRow;
use serde_json::Value;

fn write_scores(path: &std::path::Path, rows: &[Value]) {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn row(id: &str, miwv: Option<f64>, zero: f64, selected: bool) -> Value {
    let row = ScoreRow {
        id: id.into(),
        index: 0,
        miwv: miwv.map_or(f32::NAN, |m| m as f32),
        loss_zero_shot: zero as f32,
        loss_one_shot: miwv.map_or(f32::NAN, |m| (zero + m) as f32),
        reason: None,
        neighbour_id: None,
        neighbour_index: None,
        similarity: None,
        response_tokens: 1,
        prompt_tokens_zero_shot: 1,
        prompt_tokens_one_shot: 1,
        tokens_zero_shot: 0,
        tokens_one_shot: 0,
        selected: Some(selected),
        rank: None,
        turns: 1,
        ifd: None,
    };
    serde_json::to_value(row).unwrap()
}

#[test]
fn compare_reports_correlations_differences_and_overlaps() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    // Ten samples; B swaps the order of the top two, shifts every zero-shot loss by 0.02,
    // lists its rows in another order and has one sample unscored.
    let scores = [0.9, 0.8, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0, -0.1, -0.2];
    let rows_a: Vec<Value> = scores
        .iter()
        .enumerate()
        .map(|(i, &m)| row(&format!("s{i}"), Some(m), 1.0, i < 2))
        .collect();
    let mut rows_b: Vec<Value> = scores
        .iter()
        .enumerate()
        .map(|(i, &m)| {
            let m = match i {
                0 => 0.8,
                1 => 0.9,
                _ => m,
            };
            let m = (i != 9).then_some(m);
            row(&format!("s{i}"), m, 1.02, i < 2)
        })
        .collect();
    rows_b.reverse();
    write_scores(&a, &rows_a);
    write_scores(&b, &rows_b);

    let json_path = dir.path().join("c.json");
    let out = miwv()
        .args(["compare", a.to_str().unwrap(), b.to_str().unwrap()])
        .args(["--ratios", "0.1,0.3", "--json", json_path.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("MIWV Spearman"), "{stdout}");

    let c: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(c["samples"], 10);
    assert_eq!(c["scored_in_both"], 9);
    // One adjacent swap among 9: rho = 1 - 6*2/(9*80); tau = 1 - 2/36.
    let close = |v: &Value, want: f64| (v.as_f64().unwrap() - want).abs() < 1e-6;
    assert!(close(&c["spearman"], 1.0 - 12.0 / 720.0), "{c}");
    assert!(close(&c["kendall_tau_b"], 1.0 - 2.0 / 36.0), "{c}");
    assert!(
        close(&c["loss_zero_shot_difference"]["mean_abs"], 0.02),
        "{c}"
    );
    assert_eq!(c["loss_zero_shot_difference"]["above_0_01"], 10);
    assert!(close(&c["miwv_difference"]["max_abs"], 0.1), "{c}");
    // Top 10% (1 sample): s0 against s1, nothing shared. Top 30% (3): {s0,s1,s2} both.
    let overlaps = c["overlaps"].as_array().unwrap();
    assert_eq!(overlaps[0]["shared"], 0);
    assert_eq!(overlaps[1]["shared"], 3);
    assert!(close(&overlaps[1]["overlap"], 1.0));
    assert_eq!(overlaps[2]["budget"], "the runs' own");
    assert_eq!(overlaps[2]["shared"], 2);
}

#[test]
fn compare_refuses_files_with_other_samples() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    write_scores(
        &a,
        &[
            row("x", Some(0.1), 1.0, false),
            row("y", Some(0.2), 1.0, true),
        ],
    );
    write_scores(
        &b,
        &[
            row("x", Some(0.1), 1.0, false),
            row("z", Some(0.2), 1.0, true),
        ],
    );
    let out = miwv()
        .args(["compare", a.to_str().unwrap(), b.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("id \"y\" is only in the first"), "{stderr}");

    write_scores(&b, &[row("x", Some(0.1), 1.0, false)]);
    std::fs::write(&b, "{\"id\": \"x\", \"miwv\": \"high\"}\n").unwrap();
    let out = miwv()
        .args(["compare", a.to_str().unwrap(), b.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("b.jsonl: line 1: field `miwv`"), "{stderr}");
}
