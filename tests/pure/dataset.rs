//! The dataset reader on hostile input: bad JSON, cut-off files, wrong fields, bad encodings,
//! duplicate ids, and a stable-Rust mutation fuzz test over the seeds in `fuzz/seeds/`.
//! No model needed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use miwv::data::dataset::{
    parse_dataset, parse_dataset_with, read_dataset, Dataset, DatasetError, Fields, Location,
    ReadOptions, Sample,
};

use crate::invariants;

fn parse(bytes: impl AsRef<[u8]>, name: &str) -> Result<Dataset, DatasetError> {
    parse_dataset(bytes.as_ref(), Path::new(name))
}

fn error(bytes: impl AsRef<[u8]>, name: &str) -> (DatasetError, String) {
    let err = parse(bytes, name).expect_err("should be refused");
    let message = err.to_string();
    (err, message)
}

fn assert_contains(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "{part:?} not in: {message}");
    }
}

const GOOD: &str = r#"{"instruction": "a", "output": "b"}"#;

// --- Invalid JSON ---------------------------------------------------------------------------

#[test]
fn invalid_json_in_an_array_names_file_line_and_record() {
    let text = "[\n  {\"instruction\": \"a\", \"output\": \"b\"},\n  {\"instruction\": \"c\" \"output\": \"d\"}\n]";
    let (err, message) = error(text, "data.json");
    assert!(
        matches!(
            err,
            DatasetError::Json {
                at: Location { line: 3, record: 1 },
                ..
            }
        ),
        "{err:?}"
    );
    // The position is in the whole file, not counted from the record.
    assert_contains(
        &message,
        &[
            "data.json: line 3, record 1: invalid JSON",
            "expected `,` or `}`",
            "at line 3 column 23",
        ],
    );

    let (err, message) = error(format!("[{GOOD}, {GOOD}\n x]"), "data.json");
    assert!(matches!(err, DatasetError::Json { .. }), "{err:?}");
    assert_contains(
        &message,
        &[
            "data.json: line 2, record 2",
            "expected `,` or `]` after a record, found 'x'",
        ],
    );

    let (err, message) = error(format!("[{GOOD}]\n[{GOOD}]\n"), "data.json");
    assert!(matches!(err, DatasetError::Json { .. }), "{err:?}");
    assert_contains(
        &message,
        &[
            "data.json: line 2, record 1",
            "unexpected text after the closing `]`",
        ],
    );

    // A trailing comma is a syntax error, not a cut.
    let (err, message) = error(format!("[{GOOD},\n]"), "data.json");
    assert!(matches!(err, DatasetError::Json { .. }), "{err:?}");
    assert_contains(&message, &["data.json: line 2, record 1: invalid JSON"]);
}

#[test]
fn invalid_json_in_jsonl_names_file_line_and_record() {
    let text = format!("{GOOD}\n\n{{\"instruction\": \"c\", \"output\": }}\n{GOOD}\n");
    let (err, message) = error(text, "data.jsonl");
    assert!(
        matches!(
            err,
            DatasetError::Json {
                at: Location { line: 3, record: 1 },
                ..
            }
        ),
        "{err:?}"
    );
    assert_contains(
        &message,
        &[
            "data.jsonl: line 3, record 1: invalid JSON",
            "expected value at line 3 column 32",
        ],
    );
}

// --- Cut-off files ----------------------------------------------------------------------------

/// A cut file keeps its complete records and says where it stops.
fn assert_cut(dataset: &Dataset, complete: usize, at: Location) {
    assert_eq!(dataset.samples.len(), complete, "{dataset:?}");
    let cut = dataset.truncated.expect("reported as cut off");
    assert_eq!(cut.at, at);
    assert_eq!(cut.complete_records, complete);
}

const ARRAY_HEAD: &str = "[\n  {\"instruction\": \"a\", \"output\": \"b\", \"id\": \"first\"},\n  {\"instruction\": \"c\", \"output\": \"d\"}";

#[test]
fn array_cut_inside_a_string_keeps_the_complete_records() {
    let text = format!("{ARRAY_HEAD},\n  {{\"instruction\": \"e\", \"output\": \"a long ans");
    let dataset = parse(text, "data.json").unwrap();
    assert_cut(&dataset, 2, Location { line: 4, record: 2 });
    assert_eq!(dataset.samples[0].id, "first");
    assert_eq!(dataset.samples[1].turns[0].output, "d");
    let cut = dataset.truncated.unwrap().to_string();
    assert_eq!(
        cut,
        "the file ends early, at line 4, record 2 (cut off?); keeping the 2 complete records before it"
    );
}

#[test]
fn array_cut_at_other_points_inside_a_record() {
    // Between key and value, inside a number, inside an escape, inside a nested value.
    for tail in [
        "{\"instruction\"",
        "{\"instruction\": ",
        "{\"instruction\": \"e\", \"n\": -",
        "{\"instruction\": \"e\", \"n\": 1.",
        "{\"instruction\": \"e\", \"n\": 1e",
        "{\"instruction\": \"e\\u00",
        "{\"instruction\": \"e\\",
        "{\"instruction\": \"e\", \"tags\": [tr",
        "{",
    ] {
        let text = format!("{ARRAY_HEAD},\n  {tail}");
        let dataset = parse(&text, "data.json").unwrap_or_else(|e| panic!("{tail}: {e}"));
        assert_cut(&dataset, 2, Location { line: 4, record: 2 });
    }
}

#[test]
fn array_cut_right_after_a_comma() {
    let dataset = parse(format!("{ARRAY_HEAD},\n"), "data.json").unwrap();
    // No record started: the cut is placed at the comma's line, the next record's index.
    assert_cut(&dataset, 2, Location { line: 3, record: 2 });
}

#[test]
fn array_cut_right_after_a_complete_record() {
    let dataset = parse(ARRAY_HEAD, "data.json").unwrap();
    assert_cut(&dataset, 2, Location { line: 3, record: 2 });
    let dataset = parse(format!("{ARRAY_HEAD}\n\n"), "data.json").unwrap();
    assert_cut(&dataset, 2, Location { line: 3, record: 2 });
}

#[test]
fn array_cut_inside_a_multibyte_character() {
    let mut bytes = format!("{ARRAY_HEAD},\n  {{\"instruction\": \"caf").into_bytes();
    bytes.push("é".as_bytes()[0]);
    let dataset = parse(&bytes, "data.json").unwrap();
    assert_cut(&dataset, 2, Location { line: 4, record: 2 });
}

#[test]
fn array_cut_inside_the_first_record_is_an_error() {
    for text in [
        "[{\"instruction\": \"a\", \"output\": \"b",
        "[",
        "[\n",
        "[{",
    ] {
        let (err, message) = error(text, "cut.json");
        assert!(
            matches!(
                err,
                DatasetError::Json {
                    at: Location { line: 1, record: 0 },
                    ..
                }
            ),
            "{text:?}: {err:?}"
        );
        assert_contains(
            &message,
            &[
                "cut.json: line 1, record 0",
                "before its first record is complete",
            ],
        );
    }
}

#[test]
fn jsonl_cut_last_line_keeps_the_complete_lines() {
    let text = format!("{GOOD}\n{{\"instruction\": \"c\", \"output\": \"d\", \"id\": \"x\"}}\n{{\"instruction\": \"e\", \"outp");
    let dataset = parse(text, "data.jsonl").unwrap();
    assert_cut(&dataset, 2, Location { line: 3, record: 2 });
    assert_eq!(dataset.samples[1].id, "x");

    let (err, message) = error("{\"instruction\": \"e\", \"outp", "data.jsonl");
    assert!(matches!(err, DatasetError::Json { .. }), "{err:?}");
    assert_contains(
        &message,
        &[
            "data.jsonl: line 1, record 0",
            "before its first record is complete",
        ],
    );
}

#[test]
fn jsonl_bad_middle_line_stays_an_error() {
    // The same incomplete line, but followed by more lines: not a cut.
    let text = format!("{GOOD}\n{{\"instruction\": \"e\", \"outp\n{GOOD}\n");
    let (err, message) = error(text, "data.jsonl");
    assert!(
        matches!(
            err,
            DatasetError::Json {
                at: Location { line: 2, record: 1 },
                ..
            }
        ),
        "{err:?}"
    );
    assert_contains(
        &message,
        &["data.jsonl: line 2, record 1: invalid JSON", "EOF"],
    );

    // A last line ended by a newline did not stop because the file did.
    let text = format!("{GOOD}\n{{\"instruction\": \"e\", \"outp\n");
    let (err, _) = error(text, "data.jsonl");
    assert!(
        matches!(
            err,
            DatasetError::Json {
                at: Location { line: 2, record: 1 },
                ..
            }
        ),
        "{err:?}"
    );
}

// --- Fields -----------------------------------------------------------------------------------

#[test]
fn missing_field_is_named() {
    let text = format!("[{GOOD},\n {{\"instruction\": \"a\"}}]");
    let (err, message) = error(text, "data.json");
    assert!(
        matches!(&err, DatasetError::Field { at: Location { line: 2, record: 1 }, field, .. } if field == "output"),
        "{err:?}"
    );
    assert_eq!(
        message,
        "data.json: line 2, record 1: field `output`: missing"
    );
}

#[test]
fn wrongly_typed_fields_are_named() {
    for (record, field, problem) in [
        (
            r#"{"instruction": "a", "output": 3}"#,
            "output",
            "expected a string, found a number",
        ),
        (
            r#"{"instruction": null, "output": "b"}"#,
            "instruction",
            "expected a string, found null",
        ),
        (
            r#"{"instruction": "a", "input": ["x"], "output": "b"}"#,
            "input",
            "expected a string, found an array",
        ),
        (
            r#"{"instruction": "a", "output": "b", "id": true}"#,
            "id",
            "expected a string or number, found a boolean",
        ),
        (
            r#"["instruction", "output"]"#,
            "(record)",
            "expected a JSON object",
        ),
    ] {
        let (err, message) = error(format!("{GOOD}\n{record}\n"), "data.jsonl");
        assert!(
            matches!(&err, DatasetError::Field { at: Location { line: 2, record: 1 }, field: f, .. } if f == field),
            "{err:?}"
        );
        assert_eq!(
            message,
            format!("data.jsonl: line 2, record 1: field `{field}`: {problem}")
        );
    }
}

// --- Encoding ---------------------------------------------------------------------------------

#[test]
fn non_utf8_bytes_name_the_line() {
    let bytes = b"[{\"instruction\": \"a\", \"output\": \"b\"},\n\n {\"instruction\": \"caf\xe9\", \"output\": \"b\"}]";
    let (err, message) = error(bytes, "latin1.json");
    assert!(
        matches!(err, DatasetError::Encoding { line: 3, .. }),
        "{err:?}"
    );
    assert_eq!(message, "latin1.json: line 3: not valid UTF-8");

    // An incomplete character that is not inside a cut record is bad bytes, not a cut.
    let mut bytes = format!("[{GOOD}]\n").into_bytes();
    bytes.push(0xe2);
    let (err, _) = error(bytes, "data.json");
    assert!(
        matches!(err, DatasetError::Encoding { line: 2, .. }),
        "{err:?}"
    );
}

#[test]
fn byte_order_mark_is_skipped() {
    let dataset = parse(format!("\u{feff}[{GOOD}]"), "bom.json").unwrap();
    assert_eq!(dataset.samples.len(), 1);
    let dataset = parse(format!("\u{feff}{GOOD}\n"), "bom.jsonl").unwrap();
    assert_eq!(dataset.samples.len(), 1);
}

// --- Empty and tiny files ---------------------------------------------------------------------

#[test]
fn empty_blank_and_empty_array_have_no_samples() {
    for text in ["", " \n\t\r\n", "[]", " [ \n ] \n"] {
        let dataset = parse(text, "empty.json").unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(dataset.samples.is_empty(), "{text:?}");
        assert!(dataset.truncated.is_none(), "{text:?}");
    }
}

#[test]
fn one_sample_dataset_reads_fine() {
    for text in [format!("[{GOOD}]"), GOOD.to_string(), format!("{GOOD}\n")] {
        let dataset = parse(&text, "one.json").unwrap();
        assert_eq!(dataset.samples.len(), 1, "{text}");
        assert!(dataset.truncated.is_none(), "{text}");
        let sample = &dataset.samples[0];
        assert_eq!(
            (
                sample.id.as_str(),
                sample.turns[0].instruction.as_str(),
                sample.turns[0].input.as_str(),
                sample.turns[0].output.as_str()
            ),
            ("0", "a", "", "b")
        );
    }
}

// --- Duplicate ids ----------------------------------------------------------------------------

#[test]
fn duplicate_explicit_ids_are_refused() {
    let text = "[\n  {\"instruction\": \"a\", \"output\": \"b\", \"id\": \"x\"},\n  {\"instruction\": \"c\", \"output\": \"d\", \"id\": \"y\"},\n  {\"instruction\": \"e\", \"output\": \"f\", \"id\": \"x\"}\n]";
    let (err, message) = error(text, "data.json");
    assert!(
        matches!(
            &err,
            DatasetError::DuplicateId {
                id,
                first: Location { line: 2, record: 0 },
                second: Location { line: 4, record: 2 },
                ..
            } if id == "x"
        ),
        "{err:?}"
    );
    assert_eq!(
        message,
        "data.json: line 4, record 2: id \"x\" already used by line 2, record 0; ids must be \
         unique because scores.jsonl and the resume log refer to samples by id"
    );

    // A number id and the same digits as a string are the same id in the output files.
    let text = "{\"instruction\": \"a\", \"output\": \"b\", \"id\": 5}\n{\"instruction\": \"a\", \"output\": \"b\", \"id\": \"5\"}\n";
    let (err, _) = error(text, "data.jsonl");
    assert!(
        matches!(&err, DatasetError::DuplicateId { id, .. } if id == "5"),
        "{err:?}"
    );
}

#[test]
fn explicit_id_colliding_with_an_index_id_is_refused() {
    // Record 2 has no id, so its id is "2", which record 0 already took.
    let text =
        format!("{{\"instruction\": \"a\", \"output\": \"b\", \"id\": \"2\"}}\n{GOOD}\n{GOOD}\n");
    let (err, message) = error(text, "data.jsonl");
    assert!(
        matches!(
            &err,
            DatasetError::DuplicateId {
                id,
                first: Location { line: 1, record: 0 },
                second: Location { line: 3, record: 2 },
                ..
            } if id == "2"
        ),
        "{err:?}"
    );
    assert_contains(
        &message,
        &["data.jsonl: line 3, record 2: id \"2\" already used by line 1, record 0"],
    );

    // And the other way round: an explicit id that repeats an earlier record's index.
    let text = format!("{GOOD}\n{{\"instruction\": \"a\", \"output\": \"b\", \"id\": 0}}\n");
    let (err, _) = error(text, "data.jsonl");
    assert!(
        matches!(&err, DatasetError::DuplicateId { id, .. } if id == "0"),
        "{err:?}"
    );
}

// --- Files ------------------------------------------------------------------------------------

#[test]
fn read_dataset_reads_the_file_and_names_it_when_missing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.json");
    std::fs::write(&path, format!("[{GOOD},\n{GOOD}")).unwrap();
    let dataset = read_dataset(&path).unwrap();
    assert_eq!(dataset.samples.len(), 2);
    assert!(dataset.truncated.is_some());

    let missing = dir.path().join("missing.json");
    let err = read_dataset(&missing).unwrap_err();
    assert!(matches!(err, DatasetError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.json"), "{err}");
}

#[test]
fn truncation_serializes_for_reports() {
    let dataset = parse(ARRAY_HEAD, "data.json").unwrap();
    let json = serde_json::to_string(&dataset.truncated.unwrap()).unwrap();
    assert_eq!(json, r#"{"at":{"line":3,"record":2},"complete_records":2}"#);
}

// --- Fuzzing on stable Rust -------------------------------------------------------------------

/// The cargo-fuzz seeds: an array, JSONL, a cut-off array, and Unicode with a byte-order mark.
const SEEDS: [&[u8]; 4] = [
    include_bytes!("../../fuzz/seeds/array.json"),
    include_bytes!("../../fuzz/seeds/lines.jsonl"),
    include_bytes!("../../fuzz/seeds/truncated.json"),
    include_bytes!("../../fuzz/seeds/unicode.json"),
];

#[test]
fn seeds_read_as_expected() {
    let counts: Vec<_> = SEEDS
        .iter()
        .map(|seed| {
            let dataset = parse(seed, "seed.json").unwrap();
            (dataset.samples.len(), dataset.truncated.is_some())
        })
        .collect();
    assert_eq!(counts, [(3, false), (3, false), (1, true), (2, false)]);
    for seed in SEEDS {
        invariants::check(seed);
    }
}

/// Pieces of JSON and of datasets worth inserting, beyond random bytes.
const TOKENS: [&[u8]; 20] = [
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b":",
    b"\"",
    b"\\",
    b"\\u",
    b"\n",
    b"\r\n",
    b"\xef\xbb\xbf",
    "é🐈".as_bytes(),
    b"\xff",
    b"null",
    b"-1.5e3",
    b"\"id\": \"add\"",
    b"\"id\": 1",
    b"\"output\": 3",
    b"{\"instruction\": \"a\", \"output\": \"b\"}",
];

/// xorshift64: small, seedable and the same everywhere, so a failure can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n`; `n` must not be 0.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One random edit: flip a bit, insert a byte or token, delete a range, truncate, copy a piece
/// of the input, or splice in a piece of another seed.
fn mutate(rng: &mut XorShift, input: &mut Vec<u8>) {
    let len = input.len();
    match rng.below(7) {
        0 if len > 0 => {
            let i = rng.below(len);
            input[i] ^= 1 << rng.below(8);
        }
        1 => {
            let byte = rng.next() as u8;
            input.insert(rng.below(len + 1), byte);
        }
        2 => {
            let token = TOKENS[rng.below(TOKENS.len())];
            let at = rng.below(len + 1);
            input.splice(at..at, token.iter().copied());
        }
        3 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(8)).min(len);
            input.drain(start..end);
        }
        4 => input.truncate(rng.below(len + 1)),
        // Copy a piece of the input elsewhere, which is how records (and ids) get repeated.
        5 if len > 0 => {
            let from = rng.below(len);
            let piece = input[from..(from + 1 + rng.below(80)).min(len)].to_vec();
            let at = rng.below(len + 1);
            input.splice(at..at, piece);
        }
        _ => {
            let other = SEEDS[rng.below(SEEDS.len())];
            let from = rng.below(other.len());
            let piece = &other[from..(from + 1 + rng.below(40)).min(other.len())];
            let start = rng.below(len + 1);
            let end = (start + rng.below(40)).min(len);
            input.splice(start..end, piece.iter().copied());
        }
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={value:?} is not a number")))
}

/// Deterministic mutations of the seeds, checked with the cargo-fuzz target's invariants.
/// `MIWV_FUZZ_ITERATIONS` runs more; `MIWV_FUZZ_SEED` replays a failure it printed.
#[test]
fn mutated_seeds_keep_the_invariants() {
    let iterations = env_number("MIWV_FUZZ_ITERATIONS").unwrap_or(20_000);
    let base = env_number("MIWV_FUZZ_SEED").unwrap_or(0x9e37_79b9_7f4a_7c15);
    for i in 0..iterations {
        let seed = (base ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d)).max(1);
        let mut rng = XorShift(seed);
        let mut input = SEEDS[rng.below(SEEDS.len())].to_vec();
        for _ in 0..=rng.below(4) {
            mutate(&mut rng, &mut input);
        }
        if catch_unwind(AssertUnwindSafe(|| invariants::check(&input))).is_err() {
            panic!(
                "invariant broken at iteration {i} (iteration seed {seed:#x}; replay with \
                 MIWV_FUZZ_SEED={base:#x} MIWV_FUZZ_ITERATIONS={}) on input b\"{}\"",
                i + 1,
                input.escape_ascii()
            );
        }
    }
}

// --- Conversations and field names ------------------------------------------------------------

fn parse_with(text: &str, options: &ReadOptions) -> Result<Dataset, DatasetError> {
    parse_dataset_with(text.as_bytes(), Path::new("chat.jsonl"), options)
}

fn turns(sample: &Sample) -> Vec<(&str, &str)> {
    sample
        .turns
        .iter()
        .map(|t| (t.instruction.as_str(), t.output.as_str()))
        .collect()
}

#[test]
fn sharegpt_and_messages_conversations_read_alike() {
    let text = concat!(
        r#"{"id": 1, "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Bye!"}]}"#,
        "\n",
        r#"{"id": 2, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]}"#,
        "\n"
    );
    let samples = parse_with(text, &ReadOptions::default()).unwrap().samples;
    for sample in &samples {
        assert_eq!(sample.system, "Be brief.");
        assert_eq!(turns(sample), [("Hi", "Hello"), ("Bye", "Bye!")]);
        assert_eq!(
            sample.retrieval_text(),
            "Hi\n\nBye",
            "prompts only, never responses"
        );
    }
    let first = ReadOptions {
        first_turn_only: true,
        ..ReadOptions::default()
    };
    let samples = parse_with(text, &first).unwrap().samples;
    assert_eq!(turns(&samples[1]), [("Hi", "Hello")]);
    assert_eq!(
        samples[1].record["messages"].as_array().unwrap().len(),
        5,
        "the record is kept whole for the selection"
    );
}

#[test]
fn conversations_are_read_as_chat_training_reads_them() {
    // A leading assistant message has no prompt and a last user message no response.
    let text = r#"{"conversations": [{"from": "gpt", "value": "Welcome"}, {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}, {"from": "human", "value": "unanswered"}]}"#;
    let samples = parse_with(text, &ReadOptions::default()).unwrap().samples;
    assert_eq!(turns(&samples[0]), [("Q", "A")]);
    // Nothing to score: no turns, which scoring reports as an empty response.
    let text = r#"{"messages": [{"role": "user", "content": "Q"}]}"#;
    assert!(
        parse_with(text, &ReadOptions::default()).unwrap().samples[0]
            .turns
            .is_empty()
    );

    for (text, field, problem) in [
        (
            r#"{"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}"#,
            "conversations[1].from",
            "two messages of the same role in a row",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]}"#,
            "messages[1].role",
            "unknown role \"tool\"",
        ),
        (
            r#"{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}"#,
            "messages[1].role",
            "only allowed first",
        ),
        (
            r#"{"messages": [{"role": "user", "content": [{"type": "text"}]}]}"#,
            "messages[0].content",
            "expected a string, found an array",
        ),
        (
            r#"{"conversations": "hi"}"#,
            "conversations",
            "expected a list of messages",
        ),
        (
            r#"{"messages": [{"content": "a"}]}"#,
            "messages[0].role",
            "missing",
        ),
        (
            r#"{"prompt": "a"}"#,
            "instruction",
            "missing (and no `conversations` or `messages` list either)",
        ),
    ] {
        let err = parse_with(&format!("{GOOD}\n{text}\n"), &ReadOptions::default())
            .unwrap_err()
            .to_string();
        assert_contains(
            &err,
            &[
                "chat.jsonl: line 2, record 1",
                &format!("field `{field}`"),
                problem,
            ],
        );
    }
}

#[test]
fn field_names_are_configurable() {
    // Dolly's names, and a conversation list under its own name.
    let dolly = ReadOptions {
        fields: Fields {
            id: "uid".into(),
            instruction: "instruction".into(),
            input: "context".into(),
            output: "response".into(),
            conversation: None,
        },
        first_turn_only: false,
        drop_records: false,
    };
    let text = r#"{"uid": "d1", "instruction": "Sum.", "context": "2 3", "response": "5"}"#;
    let sample = &parse_with(text, &dolly).unwrap().samples[0];
    assert_eq!(sample.id, "d1");
    assert_eq!(sample.turns[0].input, "2 3");
    assert_eq!(sample.turns[0].output, "5");
    let err = parse_with(
        r#"{"uid": "d2", "instruction": "x", "output": "y"}"#,
        &dolly,
    )
    .unwrap_err()
    .to_string();
    assert_contains(&err, &["field `response`: missing"]);

    let dialog = ReadOptions {
        fields: Fields {
            conversation: Some("dialog".into()),
            ..Fields::default()
        },
        first_turn_only: false,
        drop_records: false,
    };
    let text = r#"{"dialog": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], "instruction": "ignored"}"#;
    assert_eq!(
        turns(&parse_with(text, &dialog).unwrap().samples[0]),
        [("Q", "A")]
    );
    let err = parse_with(GOOD, &dialog).unwrap_err().to_string();
    assert_contains(&err, &["field `dialog`: missing"]);
}
