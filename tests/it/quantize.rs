//! `miwv quantize` through the binary: llama.cpp's conversion, the same bytes whatever the
//! thread count, a warning when the input is already quantised, nothing half-written.

use std::path::Path;
use std::process::Output;

use crate::common;

use miwv::engine::Model;

fn quantize(input: &Path, output: &Path, args: &[&str]) -> Output {
    common::miwv()
        .arg("quantize")
        .arg(input)
        .arg(output)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn writes_a_loadable_model_in_the_asked_format_with_the_same_bytes_on_any_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let source = common::shipped_model();
    let (one, two) = (dir.path().join("one.gguf"), dir.path().join("two.gguf"));
    let a = quantize(&source, &one, &["--type", "q8_0", "-t", "1"]);
    let b = quantize(&source, &two, &["--type", "Q8_0", "-t", "2"]);
    for run in [&a, &b] {
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(
            String::from_utf8_lossy(&run.stderr).contains("is already quantised (Q4_1)"),
            "requantising from Q4_1 is warned about"
        );
    }
    assert_eq!(std::fs::read(&one).unwrap(), std::fs::read(&two).unwrap());
    let sha = miwv::data::output::file_sha256(&one).unwrap().0;
    assert!(
        stdout(&a).contains(&format!("sha256 {sha}")),
        "{}",
        stdout(&a)
    );

    let model = Model::load(&one, 0).unwrap();
    let info = model.info();
    assert_eq!(info.quantisation.as_deref(), Some("Q8_0"));
    let original = Model::load(&source, 0).unwrap().info();
    assert_eq!(info.parameters, original.parameters);
    assert_eq!(info.vocab_size, original.vocab_size);
    // 8.5 bits per weight against Q4_1's 5: larger, but well under F16's 16.
    let (q8, q4) = (
        std::fs::metadata(&one).unwrap().len(),
        std::fs::metadata(&source).unwrap().len(),
    );
    assert!(q8 > q4 && q8 < q4 * 2, "{q8} bytes from {q4}");
}

#[test]
fn the_default_model_is_reproduced_and_a_float_copy_of_it_is_not_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let f16 = dir.path().join("m.F16.gguf");
    let f32 = dir.path().join("m.F32.gguf");
    assert!(quantize(&common::shipped_model(), &f16, &["--type", "F16"])
        .status
        .success());
    // The default scoring model is this very conversion (ggml-models/fetch.py checks its
    // sha256), so it is reproduced byte for byte.
    assert!(
        std::fs::read(&f16).unwrap() == std::fs::read(common::scoring_model()).unwrap(),
        "miwv quantize no longer writes the default model's bytes"
    );
    let run = quantize(&f16, &f32, &["--type", "F32"]);
    assert!(run.status.success());
    assert!(
        !String::from_utf8_lossy(&run.stderr).contains("already quantised"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout(&run).contains("(F16) ->"), "{}", stdout(&run));
    assert_eq!(
        Model::load(&f32, 0).unwrap().info().quantisation.as_deref(),
        Some("F32")
    );
}

#[test]
fn refusals_name_the_problem_and_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let model = common::shipped_model();

    let unknown = quantize(&model, &out, &["--type", "IQ2_XXS"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("possible values"));

    let same = quantize(&model, &model, &["--type", "Q8_0"]);
    assert_eq!(same.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&same.stderr).contains("another file than the input"));

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a model").unwrap();
    let not_gguf = quantize(&text, &out, &["--type", "Q8_0"]);
    assert_eq!(not_gguf.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&not_gguf.stderr).contains("notes.txt: not a GGUF file"));

    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only notes.txt"
    );
}
