//! `miwv report` on a run directory written through the output schema (`miwv::state::schema`, the types
//! `select` writes): pictures, the page, and what happens when the dataset or the run's files
//! are missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use miwv::data::dataset::ReadOptions;
use miwv::data::output::{file_sha256, write_json, write_jsonl};
use miwv::scoring::prompt::TemplateChoice;
use miwv::scoring::scheduler::Stats;
use miwv::scoring::score::Unscorable;
use miwv::scoring::sizes::ContextSizes;
use miwv::state::schema::{
    BudgetRecord, EmbedderRecord, FileRecord, Ifd, ModelInfo, RunRecord, ScoreRow, Timings,
};
use serde_json::{json, Value};

const SAMPLES: usize = 14;
/// Scored with MIWV falling with the index; these two are unscorable, with the names
/// `scores.jsonl` and the page give their reasons.
const UNSCORABLE: [(usize, Unscorable, &str); 2] = [
    (5, Unscorable::EmptyResponse, "empty_response"),
    (9, Unscorable::TooLong, "too_long"),
];
/// Selected: the two highest MIWV.
const SELECTED: usize = 2;

fn id(i: usize) -> String {
    format!("s{i:02}")
}

/// A GGUF as `run.json` records it.
fn gguf_file(path: &str, name: &str, quantisation: &str) -> FileRecord {
    FileRecord {
        path: path.into(),
        sha256: "0".repeat(64),
        bytes: 80 << 20,
        gguf: Some(ModelInfo {
            name: Some(name.into()),
            architecture: Some("llama".into()),
            quantisation: Some(quantisation.into()),
            parameters: 135_000_000,
            vocab_size: 49_152,
            context_train: 8192,
            embedding_dim: 576,
        }),
    }
}

/// The `run.json` of a finished run over the dataset at `data`, every field set as `select`
/// sets it.
fn run_record(data: &Path) -> RunRecord {
    let (sha256, bytes) = file_sha256(data).unwrap();
    RunRecord {
        tool: "miwv 0.1.0".into(),
        data: FileRecord {
            path: data.to_path_buf(),
            sha256,
            bytes,
            gguf: None,
        },
        data_truncated: None,
        scoring_model: gguf_file("/models/tiny.gguf", "Tiny Test Model", "Q4_1"),
        embedder: EmbedderRecord {
            model: Some(gguf_file("/models/embed.gguf", "Tiny Embedder", "F16")),
            uses_scoring_model: false,
            prefix: "search_document: ".into(),
            pooling: "mean".into(),
            normalised: true,
            index: "IndexFlatIP".into(),
            max_tokens: 512,
        },
        neighbour_search: None,
        template_choice: TemplateChoice::Alpaca,
        template_name: "alpaca".into(),
        // As an earlier version recorded a chat template: a run made by it still reads.
        template: serde_json::json!({"chat": {
            "name": "model",
            "header": "",
            "system": ["<|im_start|>system\n", "<|im_end|>\n"],
            "user_open": "<|im_start|>user\n",
            "assistant_open": "<|im_end|>\n<|im_start|>assistant\n",
            "assistant_close": "<|im_end|>\n"
        }}),
        separator: "\n\n".into(),
        read: ReadOptions::default(),
        append_eos: true,
        also_ifd: true,
        budget: BudgetRecord {
            ratio: Some(0.15),
            count: None,
        },
        context: ContextSizes {
            ctx_per_sequence: 2048,
            parallel: 4,
            batch: 2048,
            ubatch: 512,
            threads: 2,
            workers: 1,
        },
        context_fit: None,
        samples: SAMPLES,
        scored: SAMPLES - UNSCORABLE.len(),
        unscorable: UNSCORABLE.len(),
        unscorable_reasons: Vec::new(),
        selected: SELECTED,
        kv_reuse: true,
        checkpoint_tokens: 32_768,
        scoring: Stats::default(),
        timings: Timings::default(),
        shards: None,
    }
}

/// The rows of `scores.jsonl`: MIWV falling with the index, ranked, the top two selected, the
/// `UNSCORABLE` ones with their reasons.
fn score_rows() -> Vec<ScoreRow> {
    let mut rank = 0;
    (0..SAMPLES)
        .map(|i| {
            let unscored = ScoreRow {
                id: id(i),
                index: i,
                miwv: f32::NAN,
                loss_zero_shot: f32::NAN,
                loss_one_shot: f32::NAN,
                reason: None,
                neighbour_id: None,
                neighbour_index: None,
                similarity: None,
                response_tokens: 0,
                prompt_tokens_zero_shot: 0,
                prompt_tokens_one_shot: 0,
                tokens_zero_shot: 0,
                tokens_one_shot: 0,
                selected: Some(false),
                rank: None,
                turns: 1,
                ifd: None,
            };
            if let Some(&(_, reason, _)) = UNSCORABLE.iter().find(|(u, ..)| *u == i) {
                return ScoreRow {
                    reason: Some(reason),
                    ..unscored
                };
            }
            rank += 1;
            let miwv = 0.4 - 0.1 * i as f32;
            let zero = 1.0 + 0.2 * i as f32;
            let neighbour = (i + 1) % SAMPLES;
            ScoreRow {
                miwv,
                loss_zero_shot: zero,
                loss_one_shot: zero + miwv,
                neighbour_id: Some(id(neighbour)),
                neighbour_index: Some(neighbour),
                similarity: Some(0.7),
                response_tokens: 4,
                prompt_tokens_zero_shot: 40,
                prompt_tokens_one_shot: 90,
                tokens_zero_shot: 0,
                tokens_one_shot: 0,
                selected: Some(rank <= SELECTED),
                rank: Some(rank),
                ifd: Some(Ifd::new(zero, zero + 0.5)),
                ..unscored
            }
        })
        .collect()
}

/// A finished run's directory: `data.json`, and `out/` with scores.jsonl, selected.jsonl and
/// run.json naming the dataset by path and sha256. The top sample's instruction holds markup.
fn fixture(dir: &Path) -> PathBuf {
    let records: Vec<Value> = (0..SAMPLES)
        .map(|i| {
            let instruction = match i {
                0 => "Explain <script>alert('x')</script> & why it is unsafe.".to_string(),
                _ => format!("Instruction number {i}: describe topic {i}."),
            };
            let output = if i == 5 {
                String::new()
            } else {
                format!("Answer {i}.")
            };
            json!({"id": id(i), "instruction": instruction, "input": "", "output": output})
        })
        .collect();
    let data = dir.join("data.json");
    std::fs::write(&data, serde_json::to_vec_pretty(&records).unwrap()).unwrap();

    let out = dir.join("out");
    std::fs::create_dir(&out).unwrap();
    write_jsonl(&out.join("scores.jsonl"), score_rows()).unwrap();
    std::fs::write(
        out.join("selected.jsonl"),
        format!("{}\n{}\n", records[0], records[1]),
    )
    .unwrap();
    write_json(&out.join("run.json"), &run_record(&data)).unwrap();
    out
}

fn report(out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_miwv"))
        .arg("report")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// Width, height and the number of distinct colours of a PNG.
fn decode_png(path: &Path) -> (u32, u32, usize) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let colours: std::collections::HashSet<&[u8]> =
        buf[..info.buffer_size()].chunks(channels).collect();
    (info.width, info.height, colours.len())
}

fn data_uris(html: &str) -> Vec<Vec<u8>> {
    html.split("src=\"data:image/png;base64,")
        .skip(1)
        .map(|rest| {
            let encoded = &rest[..rest.find('"').unwrap()];
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap()
        })
        .collect()
}

#[test]
fn report_draws_both_pictures_and_one_self_contained_page() {
    let dir = tempfile::tempdir().unwrap();
    let out = fixture(dir.path());
    let result = report(&out, &["--top", "3"]);
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");

    let reported = out.join("report");
    let histogram = reported.join("miwv-histogram.png");
    let scatter = reported.join("losses-scatter.png");
    let html_path = reported.join("report.html");
    for path in [&histogram, &scatter, &html_path] {
        assert!(stdout.contains(&path.display().to_string()), "{stdout}");
    }

    // Real pictures: the sizes drawn, and text, bars and points in many colours.
    let (w, h, colours) = decode_png(&histogram);
    assert_eq!((w, h), (1200, 700));
    assert!(colours > 30, "{colours} colours: blank histogram?");
    let (w, h, colours) = decode_png(&scatter);
    assert_eq!((w, h), (1000, 900));
    assert!(colours > 30, "{colours} colours: blank scatter plot?");

    let html = std::fs::read_to_string(&html_path).unwrap();
    let images = data_uris(&html);
    assert_eq!(images.len(), 2, "both pictures embedded");
    assert_eq!(images[0], std::fs::read(&histogram).unwrap());
    assert_eq!(images[1], std::fs::read(&scatter).unwrap());
    assert!(!html.contains("http://") && !html.contains("https://"));
    assert!(
        !html.contains("<script"),
        "markup from the data must be escaped"
    );

    // Summary.
    assert!(html.contains("Tiny Test Model"));
    assert!(html.contains("Tiny Embedder"));
    assert!(html.contains("alpaca"));
    assert!(html.contains(&dir.path().join("data.json").display().to_string()));

    // Top 3 and bottom 3, with the sample texts (escaped).
    let top = &html[html.find("Top 3 by MIWV").unwrap()..html.find("Bottom 3 by MIWV").unwrap()];
    assert!(top.contains(">s00<") && top.contains(">s01<") && top.contains(">s02<"));
    assert!(
        top.contains("Explain &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; why"),
        "{top}"
    );
    assert!(top.contains("Answer 0."));
    let bottom = &html[html.find("Bottom 3 by MIWV").unwrap()..html.find("Unscorable (").unwrap()];
    assert!(bottom.contains(">s13<") && bottom.contains(">s11<") && !bottom.contains(">s09<"));

    // Unscorable rows with their reasons, named as in scores.jsonl.
    let unscorable = &html[html.find("Unscorable (2)").unwrap()..];
    for (i, _, reason) in UNSCORABLE {
        assert!(unscorable.contains(&format!(">{}<", id(i))), "{unscorable}");
        assert!(
            unscorable.contains(&format!("<td>{reason}</td>")),
            "{unscorable}"
        );
    }
    assert!(unscorable.contains("Instruction number 5"));
}

#[test]
fn report_without_the_dataset_says_so_and_still_draws() {
    let dir = tempfile::tempdir().unwrap();
    let out = fixture(dir.path());
    let data = dir.path().join("data.json");

    std::fs::write(&data, "[]").unwrap();
    let result = report(&out, &[]);
    assert!(result.status.success(), "{:?}", result);
    let html = std::fs::read_to_string(out.join("report/report.html")).unwrap();
    assert!(html.contains("Sample texts are not shown"), "{html}");
    assert!(html.contains("has changed since the run"));
    assert!(html.contains(">s00<") && !html.contains("Explain"));

    std::fs::remove_file(&data).unwrap();
    let result = report(&out, &[]);
    assert!(result.status.success(), "{:?}", result);
    let html = std::fs::read_to_string(out.join("report/report.html")).unwrap();
    assert!(html.contains("is gone"), "{html}");
    assert_eq!(data_uris(&html).len(), 2);
}

#[test]
fn report_names_the_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-run");
    let result = report(&missing, &[]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no-such-run: not found"), "{stderr}");

    let out = fixture(dir.path());
    std::fs::remove_file(out.join("run.json")).unwrap();
    let result = report(&out, &[]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("run.json: not found"), "{stderr}");

    std::fs::remove_file(out.join("scores.jsonl")).unwrap();
    let result = report(&out, &[]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("scores.jsonl: not found"), "{stderr}");
    assert!(
        !out.join("report").exists(),
        "nothing written for a failed report"
    );

    // A good row, then a line that is not one: the file and the bad line are named.
    let good = serde_json::to_string(&score_rows()[0]).unwrap();
    std::fs::write(out.join("scores.jsonl"), format!("{good}\nnot json\n")).unwrap();
    let result = report(&out, &[]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("scores.jsonl: line 2"), "{stderr}");
}
