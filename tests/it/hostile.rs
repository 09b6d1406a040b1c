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
        (
            &["-m", header_only],
            &[header_only, "it is cut off, or the count is false"],
        ),
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

/// Model files and chat templates are untrusted input: each hostile one below ends in
/// seconds with exit code 1 and a message naming the file, under a 3 GiB address-space limit
/// (the loop that once took 23.7 GiB would abort against it instead).
mod untrusted_model_files {
    use std::io::Cursor;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};
    use std::time::{Duration, Instant};

    use miwv::data::gguf::read_metadata;

    use crate::common::{self, write_examples};

    /// `miwv select` on a small dataset within a 3 GiB address space; also its wall time.
    fn select_bounded(dir: &Path, extra: &[&str]) -> (Output, Duration) {
        let data = dir.join("data.json");
        if !data.exists() {
            write_examples(&data, 4);
        }
        let line = std::iter::once(env!("CARGO_BIN_EXE_miwv").to_string())
            .chain(["select".into(), data.display().to_string(), "-o".into()])
            .chain([dir.join("out").display().to_string()])
            .chain(extra.iter().map(|a| a.to_string()))
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ");
        let started = Instant::now();
        let output = Command::new("sh")
            .args(["-c", &format!("ulimit -v 3145728; exec {line}")])
            .current_dir(common::root())
            .output()
            .unwrap();
        (output, started.elapsed())
    }

    fn assert_refused(dir: &Path, extra: &[&str], parts: &[&str]) {
        let (output, took) = select_bounded(dir, extra);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{extra:?}: {stderr}");
        for part in parts {
            assert!(
                stderr.contains(part),
                "{extra:?}: `{part}` missing from: {stderr}"
            );
        }
        assert!(took < Duration::from_secs(60), "{extra:?} took {took:?}");
        assert!(!dir.join("out/scores.jsonl").exists());
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn find(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap()
    }

    /// The shipped model with its chat template replaced by `jinja`: the metadata rewritten
    /// and the tensor data moved to the next aligned offset, as a GGUF writer lays it out.
    fn with_template(model: &[u8], jinja: &str) -> Vec<u8> {
        let summary = read_metadata(Cursor::new(model), model.len() as u64).unwrap();
        // The key, its type (u32), the value's length (u64), the value.
        let length_at = find(model, b"tokenizer.chat_template") + 23 + 4;
        let old = u64::from_le_bytes(model[length_at..length_at + 8].try_into().unwrap());
        let end = length_at + 8 + old as usize;
        let mut out = model[..length_at].to_vec();
        out.extend((jinja.len() as u64).to_le_bytes());
        out.extend(jinja.as_bytes());
        out.extend(&model[end..summary.header_bytes as usize]);
        out.resize(out.len().div_ceil(32) * 32, 0);
        out.extend(&model[summary.data_offset as usize..]);
        out
    }

    /// A `u32` metadata value overwritten in place.
    fn with_u32(model: &[u8], key: &str, value: u32) -> Vec<u8> {
        let at = find(model, key.as_bytes()) + key.len();
        assert_eq!(model[at..at + 4], 4u32.to_le_bytes(), "{key} is a u32");
        let mut out = model.to_vec();
        out[at + 4..at + 8].copy_from_slice(&value.to_le_bytes());
        out
    }

    const LOOPS: &str = "{% for m in messages %}{{ m.content }}{% for i in range(10000) %}{% for j in range(10000) %}{{ 'x' * 1000 }}{% endfor %}{% endfor %}{% endfor %}";
    const GROWS: &str = "{% set ns = namespace(s='') %}{% for i in range(10000) %}{% for j in range(10000) %}{% set ns.s = ns.s + 'xxxxxxxxxxxxxxxx' %}{% endfor %}{% endfor %}{{ ns.s }}";
    const RECURSES: &str = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
    const RAISES: &str = "{{ raise_exception('this template refuses everything') }}";

    #[test]
    fn hostile_chat_template_files_are_stopped_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        for (name, jinja, message) in [
            ("loops", LOOPS, "exceeded its bound on rendered text"),
            (
                "grows",
                GROWS,
                "exceeded its bound on instructions and memory",
            ),
            (
                "recurses",
                RECURSES,
                "exceeded its bound on recursion depth",
            ),
            ("raises", RAISES, "this template refuses everything"),
        ] {
            let file = write(dir.path(), &format!("{name}.jinja"), jinja.as_bytes());
            let file = file.to_str().unwrap();
            assert_refused(
                dir.path(),
                &["--chat-template", file],
                &[&format!("{file}: chat template: sample ex-"), message],
            );
        }
        // A template file larger than any chat template is refused unread.
        let huge = write(dir.path(), "huge.jinja", &vec![b'x'; 2 << 20]);
        let huge = huge.to_str().unwrap();
        assert_refused(
            dir.path(),
            &["--chat-template", huge],
            &[huge, "more than the 1048576 a chat template may have"],
        );
    }

    #[test]
    fn hostile_gguf_files_are_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let model = std::fs::read(common::shipped_model()).unwrap();
        let summary = read_metadata(Cursor::new(&model), model.len() as u64).unwrap();
        assert_eq!(
            (summary.architecture.as_str(), summary.vocab),
            ("llama", 49152)
        );

        // A hostile template inside the GGUF, run by `--template auto`.
        for (name, jinja, message) in [
            ("loops", LOOPS, "exceeded its bound on rendered text"),
            (
                "recurses",
                RECURSES,
                "exceeded its bound on recursion depth",
            ),
            ("raises", RAISES, "this template refuses everything"),
        ] {
            let file = write(
                dir.path(),
                &format!("{name}.gguf"),
                &with_template(&model, jinja),
            );
            let file = file.to_str().unwrap();
            assert_refused(
                dir.path(),
                &["-m", file],
                &[&format!("{file}: chat template: sample ex-"), message],
            );
        }
        // The spliced file itself is sound: with a harmless template it scores.
        let fine = write(
            dir.path(),
            "fine.gguf",
            &with_template(&model, miwv::scoring::chat::CHATML),
        );
        let (output, _) = select_bounded(dir.path(), &["-m", fine.to_str().unwrap(), "-n", "1"]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::remove_dir_all(dir.path().join("out")).unwrap();

        let mut pairs = model.clone();
        pairs[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
        let mut key = model.clone();
        key[24..32].copy_from_slice(&(1u64 << 62).to_le_bytes());
        let huge_template = with_template(&model, &"{# #}".repeat(400_000));
        let cases: [(&str, Vec<u8>, &str); 6] = [
            (
                "cut.gguf",
                model[..20_000].to_vec(),
                "tokenizer.ggml.tokens declares 49152, but the file holds at most 2361",
            ),
            ("pairs.gguf", pairs, "metadata pairs declares 1152921504606846976"),
            ("key.gguf", key, "a metadata key declares 4611686018427387904"),
            ("template.gguf", huge_template, "tokenizer.chat_template declares 2000000, more than 1048576"),
            (
                "bos.gguf",
                with_u32(&model, "tokenizer.ggml.bos_token_id", 1_000_000),
                "metadata `tokenizer.ggml.bos_token_id` (1000000) does not fit `tokenizer.ggml.tokens` (49152)",
            ),
            (
                "context.gguf",
                with_u32(&model, "llama.context_length", 0),
                "metadata `llama.context_length`: 0 tokens is not a training context",
            ),
        ];
        for (name, bytes, message) in cases {
            let file = write(dir.path(), name, &bytes);
            let file = file.to_str().unwrap();
            assert_refused(dir.path(), &["-m", file], &[file, message]);
        }
    }
}
