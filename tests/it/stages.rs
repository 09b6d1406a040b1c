//! `select` as stages: `embed` and `score` in shards run in a shuffled order (one score shard
//! killed mid-run and rerun), then `neighbours` and `merge`, equal `select` byte for byte.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{self, miwv, write_examples};

/// Small checkpoints: every score shard has several segments, so one can be killed mid-run.
const FLAGS: [&str; 4] = ["--checkpoint-tokens", "128", "--ratio", "0.25"];

fn run(cmd: &mut Command) -> Output {
    let out = cmd.env("OMP_WAIT_POLICY", "PASSIVE").output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn failure(cmd: &mut Command) -> String {
    let out = cmd.env("OMP_WAIT_POLICY", "PASSIVE").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{cmd:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Starts `score --shard 1/3` (two segments on this data) and kills it with SIGKILL once its
/// log has saved the first. One thread, hence one worker, decodes the segments in order: with
/// two, the second could finish first and be saved with the first, just before the end.
fn kill_mid_run(run_dir: &Path) {
    let log = run_dir.join("checkpoint/score/shard-00001-of-00003.jsonl");
    let mut child = miwv()
        .args(["score", path(run_dir), "--shard", "1/3", "-t", "1"])
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let lines = std::fs::read_to_string(&log).map_or(0, |t| t.lines().count());
        if lines >= 2 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the shard ended before it could be killed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no checkpoint"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let marker = run_dir.join("checkpoint/score/shard-00001-of-00003.json");
    assert!(
        !marker.exists(),
        "the shard finished before it could be killed"
    );
}

#[test]
fn sharded_stages_in_any_order_equal_select_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.json");
    write_examples(&data, 12);
    let reference = dir.path().join("select");
    run(miwv()
        .args(["select", path(&data), "-o", path(&reference)])
        .args(FLAGS));

    let staged = dir.path().join("run");
    for shard in ["2/3", "0/3"] {
        run(miwv()
            .args([
                "embed",
                path(&data),
                "--out",
                path(&staged),
                "--shard",
                shard,
            ])
            .args(FLAGS));
    }
    let early = failure(miwv().args(["neighbours", path(&staged)]));
    assert!(
        early.contains("embed shard 1/3 has no results: run `miwv embed DATA --out")
            && early.contains("--shard 1/3"),
        "{early}"
    );
    // The last embedding shard takes its index from a Slurm array's environment.
    run(miwv()
        .args([
            "embed",
            path(&data),
            "--out",
            path(&staged),
            "--shards",
            "3",
        ])
        .args(FLAGS)
        .env("SLURM_ARRAY_TASK_ID", "1"));
    let changed = failure(
        miwv()
            .args([
                "embed",
                path(&data),
                "--out",
                path(&staged),
                "--shard",
                "0/3",
            ])
            .args(FLAGS)
            .args(["--template", "alpaca"]),
    );
    assert!(
        changed.contains("embedded with other settings"),
        "{changed}"
    );
    let no_neighbours = failure(miwv().args(["score", path(&staged), "--shard", "0/3"]));
    assert!(
        no_neighbours.contains(&format!("run `miwv neighbours {}`", path(&staged))),
        "{no_neighbours}"
    );
    run(miwv().args(["neighbours", path(&staged)]));

    // What scoring will cost, timed on the run's first segments; nothing is saved.
    let estimate_path = dir.path().join("estimate.json");
    let planned = run(miwv().args([
        "plan",
        path(&staged),
        "--calibrate-tokens",
        "64",
        "--json",
        path(&estimate_path),
    ]));
    let printed = String::from_utf8_lossy(&planned.stdout);
    assert!(
        printed.contains("samples: 12") && printed.contains("suggested: `--shards 1`"),
        "{printed}"
    );
    let estimate = common::read_json(&estimate_path);
    let tokens = estimate["tokens"].as_u64().unwrap();
    assert!(tokens > 0 && tokens < estimate["tokens_without_reuse"].as_u64().unwrap());
    assert!(estimate["segments"].as_u64().unwrap() >= 3);
    let calibrated = estimate["calibration"]["tokens"].as_u64().unwrap();
    assert!((64..tokens).contains(&calibrated), "{estimate}");
    // The lengths the context was fitted to, and the context the shards decode with.
    let (zero, one) = (&estimate["zero_shot_tokens"], &estimate["one_shot_tokens"]);
    assert_eq!(zero["count"], 12);
    assert!(zero["median"].as_u64().unwrap() <= zero["longest"].as_u64().unwrap());
    let context = &estimate["context"];
    assert_eq!(context["asked"], "auto");
    assert_eq!(context["longest_sequence"], one["longest"], "{estimate}");
    assert!(printed.contains("one-shot sequences:") && printed.contains("every sequence fits"));
    assert!(!staged.join("checkpoint/score").exists());

    run(miwv().args(["score", path(&staged), "--shard", "2/3"]));
    kill_mid_run(&staged);
    let missing = failure(miwv().args(["merge", path(&staged)]));
    assert!(
        missing.contains(&format!(
            "score shard 0/3 has no results: run `miwv score {} --shard 0/3`",
            path(&staged)
        )),
        "{missing}"
    );
    let other_count = failure(miwv().args(["score", path(&staged), "--shard", "0/4"]));
    assert!(other_count.contains("split 3 ways, not 4"), "{other_count}");
    run(miwv().args(["score", path(&staged), "--shard", "0/3"]));
    let resumed = run(miwv().args(["score", path(&staged), "--shard", "1/3", "-t", "1"]));
    let log = String::from_utf8_lossy(&resumed.stderr);
    assert!(log.contains("resuming"), "the killed shard resumes: {log}");
    run(miwv().args(["merge", path(&staged)]));

    for file in ["scores.jsonl", "selected.json"] {
        let a = std::fs::read(reference.join(file)).unwrap();
        let b = std::fs::read(staged.join(file)).unwrap();
        assert!(a == b, "{file} differs from select's");
    }
    let record = |dir: &Path| -> Value {
        let mut v: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
        let object = v.as_object_mut().unwrap();
        for key in ["timings", "scoring", "shards"] {
            object.remove(key);
        }
        let search = object["neighbour_search"].as_object_mut().unwrap();
        search.retain(|key, _| !key.ends_with("_s"));
        v
    };
    assert_eq!(record(&staged), record(&reference));
    let run_json = common::read_json(&staged.join("run.json"));
    assert_eq!(run_json["shards"]["embed"], 3);
    assert_eq!(run_json["shards"]["score"], 3);
    assert_eq!(
        run_json["scoring"]["planned_steps"],
        common::read_json(&reference.join("run.json"))["scoring"]["planned_steps"]
    );
}

#[test]
fn bench_scale_measures_every_stage_at_both_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("scale.json");
    let printed = run(miwv().args([
        "bench-scale",
        "--samples",
        "40",
        "--shard-samples",
        "10",
        "--dim",
        "16",
        "--dir",
        path(&dir.path().join("work")),
        "--json",
        path(&json),
    ]));
    let table = String::from_utf8_lossy(&printed.stdout);
    assert!(table.contains("score shard at N=40 against N=4"), "{table}");
    let report = common::read_json(&json);
    let runs = report["runs"].as_array().unwrap();
    let stages: Vec<(u64, &str)> = runs
        .iter()
        .map(|r| (r["n"].as_u64().unwrap(), r["stage"].as_str().unwrap()))
        .collect();
    assert_eq!(
        stages,
        [
            (4, "embed"),
            (4, "neighbours"),
            (4, "score"),
            (40, "embed"),
            (40, "neighbours"),
            (40, "score")
        ]
    );
    for r in runs {
        assert!(r["peak_rss_mib"].as_f64().unwrap() > 10.0, "{r}");
        assert!(r["seconds"].as_f64().unwrap() > 0.0, "{r}");
    }
    for r in runs.iter().filter(|r| r["stage"] == "score") {
        assert!(r["ready_s"].as_f64().is_some(), "{r}");
        assert!(r["tokens_decoded"].as_u64().unwrap() > 0, "{r}");
    }
}
