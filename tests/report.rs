//! `miwv report` on a run directory made by hand: pictures, the page, and what happens when the
//! dataset or the run's files are missing.

mod common;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use common::miwv;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const SAMPLES: usize = 14;
/// Scored with MIWV falling with the index; these two are unscorable.
const UNSCORABLE: [(usize, &str); 2] = [(5, "empty_response"), (9, "too_long")];

fn id(i: usize) -> String {
    format!("s{i:02}")
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
    let bytes = serde_json::to_vec_pretty(&records).unwrap();
    std::fs::write(&data, &bytes).unwrap();
    let sha: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    let out = dir.join("out");
    std::fs::create_dir(&out).unwrap();
    let mut rank = 0;
    let rows: Vec<Value> = (0..SAMPLES)
        .map(|i| match UNSCORABLE.iter().find(|(u, _)| *u == i) {
            Some((_, reason)) => json!({
                "id": id(i), "index": i, "miwv": null, "loss_zero_shot": null,
                "loss_one_shot": null, "reason": reason, "neighbour_id": null,
                "neighbour_index": null, "similarity": null, "selected": false, "rank": null,
            }),
            None => {
                rank += 1;
                let miwv = 0.4 - 0.1 * i as f64;
                let zero = 1.0 + 0.2 * i as f64;
                json!({
                    "id": id(i), "index": i, "miwv": miwv, "loss_zero_shot": zero,
                    "loss_one_shot": zero + miwv, "reason": null,
                    "neighbour_id": id((i + 1) % SAMPLES), "neighbour_index": (i + 1) % SAMPLES,
                    "similarity": 0.7, "selected": rank <= 2, "rank": rank,
                    // A field from a later version: ignored.
                    "ifd": 0.9,
                })
            }
        })
        .collect();
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(out.join("scores.jsonl"), text).unwrap();
    std::fs::write(
        out.join("selected.jsonl"),
        format!("{}\n{}\n", records[0], records[1]),
    )
    .unwrap();
    let run = json!({
        "tool": "miwv 0.1.0",
        "data": {"path": data, "sha256": sha, "bytes": bytes.len()},
        "scoring_model": {"path": "/models/tiny.gguf", "name": "Tiny Test Model", "quantisation": "Q4_1"},
        "template_name": "alpaca",
        "budget": {"ratio": 0.15, "count": null},
        "samples": SAMPLES, "scored": SAMPLES - 2, "unscorable": 2, "selected": 2,
    });
    std::fs::write(out.join("run.json"), run.to_string()).unwrap();
    out
}

fn report(out: &Path, extra: &[&str]) -> std::process::Output {
    miwv().arg("report").arg(out).args(extra).output().unwrap()
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

    // Unscorable rows with their reasons.
    let unscorable = &html[html.find("Unscorable (2)").unwrap()..];
    for (i, reason) in UNSCORABLE {
        assert!(unscorable.contains(&format!(">{}<", id(i))), "{unscorable}");
        assert!(unscorable.contains(reason), "{unscorable}");
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

    std::fs::write(out.join("scores.jsonl"), "{\"id\": \"a\"}\nnot json\n").unwrap();
    let result = report(&out, &[]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("scores.jsonl: line 2"), "{stderr}");
}
