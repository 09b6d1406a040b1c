//! Chat data, templates and the extra scores, end to end on the default models: conversations
//! score every assistant turn, `--also ifd` adds consistent IFD numbers, progress bars appear
//! only on a terminal, and the CLI's conventions (`-ngl`, completions) hold.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::{miwv, read_jsonl};
use miwv::data::dataset::{parse_dataset, Sample};
use miwv::engine::{Model, Scorer};
use miwv::pipeline::resolve_template;
use miwv::scoring::prompt::{Layout, TemplateChoice};
use miwv::scoring::sizes::ContextSizes;
use serde_json::Value;

fn chat_examples(n: usize) -> Vec<Value> {
    let text = std::fs::read_to_string(common::root().join("examples/chat-mini.jsonl")).unwrap();
    text.lines()
        .take(n)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn write_jsonl(path: &Path, records: &[Value]) {
    let lines: Vec<String> = records.iter().map(Value::to_string).collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn assistant_messages(record: &Value) -> usize {
    let messages = record
        .get("conversations")
        .or_else(|| record.get("messages"))
        .and_then(Value::as_array)
        .unwrap();
    messages
        .iter()
        .filter(|m| m.get("from").or_else(|| m.get("role")).unwrap() != "system")
        .count()
        / 2
}

/// The input records whose score rows say `selected`, in input order.
fn marked_selected(scores: &[Value], records: &[Value]) -> Vec<Value> {
    scores
        .iter()
        .zip(records)
        .filter(|(row, _)| row["selected"] == true)
        .map(|(_, record)| record.clone())
        .collect()
}

#[test]
fn conversations_are_scored_per_turn_with_ifd_and_a_progress_bar_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let records = chat_examples(10);
    let data = dir.path().join("chat.jsonl");
    write_jsonl(&data, &records);
    let out = dir.path().join("out");
    let args = [
        "select",
        data.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "-c",
        "2048",
        "-ngl",
        "0",
        "--also",
        "ifd",
        "-n",
        "3",
    ];

    // Under a terminal (script(1) gives the run a pty) the phases draw progress bars.
    let binary = env!("CARGO_BIN_EXE_miwv");
    let command_line = std::iter::once(binary)
        .chain(args)
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let has_script = common::runs("script", &["-qec", "true", "/dev/null"]);
    if common::environment_allows("SCRIPT", "script(1) to give the run a terminal", has_script) {
        let output = Command::new("script")
            .args(["-qec", &command_line, "/dev/null"])
            .current_dir(common::root())
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{shown}");
        for bar in ["embedding", "samples", "scoring", "tokens", "/s, ETA"] {
            assert!(
                shown.contains(bar),
                "no {bar:?} bar on a terminal:\n{shown}"
            );
        }
    } else {
        assert!(miwv().args(args).status().unwrap().success());
    }

    // Piped, the rerun draws no bar, and resumes everything, the L(y) pass included.
    let output = miwv().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains('\r') && !stderr.contains("=>"), "{stderr}");
    let run: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(
        run["scoring"]["resumed_steps"],
        run["scoring"]["planned_steps"]
    );
    assert_eq!(run["template_choice"], "auto");
    assert_eq!(run["template_name"], "model");
    let chat = &run["template"]["chat"];
    assert_eq!(chat["source"], "gguf");
    assert!(chat["jinja"]
        .as_str()
        .unwrap()
        .contains("loop.first and messages[0]['role'] != 'system'"));
    assert_eq!(chat["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(
        chat["markup"],
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant}<|im_end|>\n"
    );
    assert_eq!(run["also_ifd"], true);

    let scores = read_jsonl(&out.join("scores.jsonl"));
    assert_eq!(scores.len(), records.len());
    assert!(scores.iter().any(|s| s["turns"].as_u64().unwrap() > 1));
    for (row, record) in scores.iter().zip(&records) {
        assert_eq!(row["id"], record["id"]);
        assert_eq!(
            row["turns"].as_u64().unwrap() as usize,
            assistant_messages(record)
        );
        let zero = row["loss_zero_shot"].as_f64().unwrap();
        let alone = row["loss_response_only"].as_f64().unwrap();
        assert!(alone > 0.0);
        assert!((row["ifd"].as_f64().unwrap() - zero / alone).abs() < 1e-4);
        assert!((row["superfiltering"].as_f64().unwrap() - (zero - alone).exp()).abs() < 1e-4);
    }
    let selected = read_jsonl(&out.join("selected.jsonl"));
    assert_eq!(selected.len(), 3);
    assert_eq!(
        selected,
        marked_selected(&scores, &records),
        "whole conversations, unchanged"
    );
}

/// A conversation's loss is the token-weighted mean of its turns' losses, each turn scored with
/// the conversation before it as its prompt: with a chat template (no separator), a second turn
/// shown after the first as a one-shot example is the same token sequence.
#[test]
fn a_conversation_loss_is_the_token_weighted_mean_of_its_turns() {
    let model = Model::load(&common::scoring_model(), 0).unwrap();
    let template = resolve_template(&model, TemplateChoice::Auto, None).unwrap();
    let layout = Layout::new(&model, &template, false);
    let text = r#"{"messages": [{"role": "user", "content": "Name a primary colour."}, {"role": "assistant", "content": "Red is a primary colour."}, {"role": "user", "content": "And a secondary one?"}, {"role": "assistant", "content": "Green, which mixes blue and yellow."}]}"#;
    let chat = &parse_dataset(text.as_bytes(), Path::new("c.jsonl"))
        .unwrap()
        .samples[0];
    let turn = |t: usize| Sample {
        turns: vec![chat.turns[t].clone()],
        ..chat.clone()
    };
    let whole = layout.render(&[chat]).unwrap().scored().unwrap();
    let first = layout.render(&[&turn(0)]).unwrap().scored().unwrap();
    let second = layout
        .render(&[&turn(0), &turn(1)])
        .unwrap()
        .scored()
        .unwrap();
    assert_eq!(second.tokens, whole.tokens);

    let mut scorer = Scorer::new(
        &model,
        ContextSizes {
            ctx_per_sequence: 1024,
            parallel: 1,
            batch: 1024,
            ubatch: 512,
            threads: common::threads(),
            workers: 1,
        },
    )
    .unwrap();
    let mut loss = |seq| {
        let lps = scorer.target_log_probs(&[seq]).unwrap();
        seq.mean_loss(&lps[0]) as f64
    };
    let (l_whole, l_first, l_second) = (loss(&whole), loss(&first), loss(&second));
    let (n1, n2) = (first.spans[0].len() as f64, second.spans[0].len() as f64);
    let weighted = (n1 * l_first + n2 * l_second) / (n1 + n2);
    eprintln!("conversation {l_whole:.4}, turns {l_first:.4} and {l_second:.4}");
    assert!((l_whole - weighted).abs() < 1e-3, "{l_whole} vs {weighted}");
    assert!(
        (l_first - l_second).abs() > 1e-2,
        "the turns differ, so the mean means something"
    );
}

#[test]
fn help_shows_examples_and_completions_cover_the_flags() {
    let help = miwv().args(["select", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("Example"), "{help}");
    let top = miwv().arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&top.stdout).contains("Exit codes"));
    for shell in ["bash", "zsh", "fish"] {
        let output = miwv().args(["completions", shell]).output().unwrap();
        assert!(output.status.success());
        let script = String::from_utf8_lossy(&output.stdout);
        for word in ["select", "template", "also", "first-turn"] {
            assert!(script.contains(word), "{shell}: {word} missing");
        }
    }
    let bad = miwv()
        .args(["select", "x.json", "--template", "nope"])
        .output()
        .unwrap();
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a bad command line exits with 2"
    );
}

/// Parquet in, Parquet out: a Hugging Face-style chat dataset (`messages: list<struct<role,
/// content>>`) is scored, and `selected.parquet` holds the chosen rows with the input's schema.
#[test]
fn parquet_chat_data_gives_a_parquet_selection_with_the_same_schema() {
    use arrow_array::builder::{ListBuilder, StringBuilder, StructBuilder};
    use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Fields};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ArrowWriter;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let records = chat_examples(6);
    let fields = Fields::from(vec![
        Field::new("role", DataType::Utf8, true),
        Field::new("content", DataType::Utf8, true),
    ]);
    let mut messages = ListBuilder::new(StructBuilder::from_fields(fields, 0));
    let mut ids = Vec::new();
    for record in &records {
        ids.push(record["id"].as_str().unwrap().to_string());
        let list = record
            .get("conversations")
            .or_else(|| record.get("messages"))
            .and_then(Value::as_array)
            .unwrap();
        for message in list {
            let role = message.get("from").or_else(|| message.get("role")).unwrap();
            let role = match role.as_str().unwrap() {
                "human" => "user",
                "gpt" => "assistant",
                other => other,
            };
            let text = message.get("value").or_else(|| message.get("content"));
            let entry = messages.values();
            entry
                .field_builder::<StringBuilder>(0)
                .unwrap()
                .append_value(role);
            entry
                .field_builder::<StringBuilder>(1)
                .unwrap()
                .append_value(text.unwrap().as_str().unwrap());
            entry.append(true);
        }
        messages.append(true);
    }
    let batch = RecordBatch::try_from_iter([
        ("id", Arc::new(StringArray::from(ids.clone())) as ArrayRef),
        ("messages", Arc::new(messages.finish()) as ArrayRef),
    ])
    .unwrap();
    let data = dir.path().join("train-00000-of-00001.parquet");
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(&data).unwrap(), batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    let out = dir.path().join("out");
    let output = miwv()
        .args([
            "select",
            data.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
        .args(["-c", "2048", "-n", "2", "--first-turn"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let scores = read_jsonl(&out.join("scores.jsonl"));
    assert!(scores.iter().all(|s| s["turns"] == 1), "--first-turn");
    let chosen: Vec<&str> = scores
        .iter()
        .filter(|s| s["selected"] == true)
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(chosen.len(), 2);

    let file = std::fs::File::open(out.join("selected.parquet")).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    assert_eq!(batches[0].schema().fields(), batch.schema().fields());
    let got: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let column = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            (0..column.len())
                .map(|i| column.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(got, chosen, "the selected rows, in input order");
}

/// gzip-compressed JSON Lines in, gzip-compressed JSON Lines out, with custom field names.
#[test]
fn gzip_jsonl_with_other_field_names_gives_a_gzip_selection() {
    use flate2::read::GzDecoder;
    use flate2::write::GzEncoder;
    use std::io::{Read, Write};

    let dir = tempfile::tempdir().unwrap();
    let all: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(common::examples()).unwrap()).unwrap();
    // Dolly's field names: context and response.
    let records: Vec<Value> = all[..6]
        .iter()
        .map(|r| {
            serde_json::json!({
                "id": r["id"],
                "instruction": r["instruction"],
                "context": r["input"],
                "response": r["output"],
            })
        })
        .collect();
    let data = dir.path().join("dolly.jsonl.gz");
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
    for r in &records {
        writeln!(gz, "{r}").unwrap();
    }
    std::fs::write(&data, gz.finish().unwrap()).unwrap();

    let out = dir.path().join("out");
    let output = miwv()
        .args([
            "select",
            data.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
        .args(["--input-field", "context", "--output-field", "response"])
        .args(["-c", "1024", "-n", "2", "--template", "alpaca"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let run: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["template_name"], "alpaca");
    assert_eq!(run["read"]["fields"]["output"], "response");

    let mut text = String::new();
    GzDecoder::new(std::fs::File::open(out.join("selected.jsonl.gz")).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    let selected: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let scores = read_jsonl(&out.join("scores.jsonl"));
    assert_eq!(selected.len(), 2);
    assert_eq!(selected, marked_selected(&scores, &records));
}

/// The response-only pass, decoded by the scheduler beside the other passes, gives each sample
/// the loss of its responses decoded alone in a fresh context.
#[test]
fn the_response_only_pass_matches_each_response_decoded_alone() {
    use miwv::scoring::scheduler::{Decoders, NoJournal, ScoringOptions, ScoringPlan};
    use std::sync::atomic::AtomicBool;

    let model = Model::load(&common::scoring_model(), 0).unwrap();
    let text: Vec<String> = chat_examples(8).iter().map(Value::to_string).collect();
    let samples = parse_dataset(text.join("\n").as_bytes(), Path::new("c.jsonl"))
        .unwrap()
        .samples;
    // Each sample's neighbour is the next one: the passes share decodes and reuse prefixes.
    let neighbours: Vec<Option<usize>> = (0..samples.len())
        .map(|i| Some((i + 1) % samples.len()))
        .collect();
    let sizes = |parallel| ContextSizes {
        ctx_per_sequence: 2048,
        parallel,
        batch: 2048,
        ubatch: 512,
        threads: common::threads(),
        workers: 1,
    };
    let template = resolve_template(&model, TemplateChoice::Chatml, None).unwrap();
    let options = ScoringOptions {
        sizes: sizes(4),
        kv_reuse: true,
        template: template.clone(),
        append_eos: false,
        response_only: true,
        checkpoint_tokens: 1024,
    };
    let mut scheduled = Scorer::new(&model, options.sizes).unwrap();
    let outcome = ScoringPlan::new(&model, &samples, &neighbours, &options)
        .unwrap()
        .score(
            Decoders::One(&mut scheduled),
            &mut NoJournal,
            &AtomicBool::new(false),
            |_| {},
        )
        .unwrap();

    let layout = Layout::new(&model, &template, false);
    let mut scorer = Scorer::new(&model, sizes(1)).unwrap();
    for (sample, &scheduled) in samples.iter().zip(&outcome.response_only) {
        let alone = layout
            .response_only(&layout.render(&[sample]).unwrap())
            .unwrap();
        let lps = scorer.target_log_probs(&[&alone]).unwrap();
        let single = alone.mean_loss(&lps[0]);
        assert!(
            (scheduled - single).abs() <= 1e-2,
            "{}: {scheduled} vs {single}",
            sample.id
        );
    }
}
