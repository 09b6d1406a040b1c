//! What must hold for `parse_dataset` on any input, shared by the cargo-fuzz target
//! (`fuzz_targets/dataset.rs`) and the stable mutation test (`tests/pure/dataset.rs`), which
//! both include this file with `#[path]`.

use std::collections::HashSet;
use std::path::Path;

use serde_json::Value;

use miwv::data::dataset::{parse_dataset, Dataset, DatasetError};

const NAME: &str = "fuzz.json";

/// Parses `bytes` and panics if the result breaks an invariant: no panic inside the reader;
/// unique ids; no more samples than records; locations inside the input; agreement with
/// serde_json on whole arrays; and cutting a good file anywhere keeps a prefix of its samples.
pub fn check(bytes: &[u8]) {
    let result = parse_dataset(bytes, Path::new(NAME));
    check_result(bytes, &result);
    if let Some(items) = whole_array(bytes) {
        // serde_json reads the file as one array: we must too, never calling it bad JSON or cut.
        match &result {
            Ok(dataset) => {
                assert!(dataset.truncated.is_none(), "a whole array read as cut off");
                assert_eq!(dataset.samples.len(), items, "samples of a whole array");
            }
            Err(e @ (DatasetError::Json { .. } | DatasetError::Encoding { .. })) => {
                panic!("serde_json reads a whole array, we refuse it: {e}")
            }
            Err(_) => {}
        }
    }
    if let Ok(full) = &result {
        if is_array(bytes) && full.truncated.is_none() {
            assert!(
                whole_array(bytes).is_some(),
                "read as a complete array, serde_json refuses it"
            );
        }
        if full.truncated.is_none() {
            for cut in cut_points(bytes) {
                check_cut(bytes, full, cut);
            }
        }
    }
}

fn check_result(bytes: &[u8], result: &Result<Dataset, DatasetError>) {
    let lines = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
    match result {
        Ok(dataset) => {
            // Every sample is a JSON object, so each needs a `{` of its own.
            let objects = bytes.iter().filter(|&&b| b == b'{').count();
            assert!(
                dataset.samples.len() <= objects,
                "more samples than records"
            );
            let mut ids = HashSet::new();
            for sample in &dataset.samples {
                assert!(ids.insert(&sample.id), "duplicate id {:?}", sample.id);
                let field = |name| sample.record.get(name).and_then(Value::as_str);
                if let Some(instruction) = field("instruction") {
                    assert_eq!(sample.turns.len(), 1, "an Alpaca record is one turn");
                    assert_eq!(instruction, sample.turns[0].instruction);
                    assert_eq!(field("output"), Some(sample.turns[0].output.as_str()));
                } else {
                    let messages = ["conversations", "messages"]
                        .iter()
                        .find_map(|name| sample.record.get(*name).and_then(Value::as_array));
                    let messages = messages.expect("a sample without instruction is a chat");
                    assert!(
                        sample.turns.len() * 2 <= messages.len(),
                        "turns from messages"
                    );
                }
            }
            if let Some(cut) = &dataset.truncated {
                assert!(
                    cut.at.line >= 1 && cut.at.line <= lines,
                    "cut outside the input"
                );
                assert_eq!(cut.complete_records, dataset.samples.len());
                assert_eq!(cut.at.record, dataset.samples.len());
                assert!(
                    cut.complete_records > 0,
                    "a cut with nothing read must be an error"
                );
                assert!(!cut.to_string().contains('\n'), "one-line message");
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.starts_with(NAME),
                "message names the file: {message}"
            );
            match e {
                DatasetError::Io { .. } => panic!("parse_dataset does no I/O: {message}"),
                DatasetError::Encoding { line, .. } => assert!(*line >= 1 && *line <= lines),
                DatasetError::Json { at, .. } | DatasetError::Field { at, .. } => {
                    assert!(at.line >= 1 && at.line <= lines, "{message}");
                }
                DatasetError::DuplicateId { first, second, .. } => {
                    assert!(first.record < second.record, "{message}");
                    assert!(
                        first.line <= second.line && second.line <= lines,
                        "{message}"
                    );
                }
            }
        }
    }
}

/// A complete, good file cut at `cut` bytes: a download that stopped early. Its complete
/// records are the full file's first ones; the rest is reported as cut, or the file is too
/// short to hold a record.
fn check_cut(bytes: &[u8], full: &Dataset, cut: usize) {
    let prefix = &bytes[..cut];
    let result = parse_dataset(prefix, Path::new(NAME));
    check_result(prefix, &result);
    match &result {
        Ok(part) => {
            let n = part.samples.len();
            assert!(n <= full.samples.len(), "cut at {cut}: more samples");
            assert!(
                part.samples[..] == full.samples[..n],
                "cut at {cut}: not a prefix"
            );
            if is_array(bytes) && cut <= last_non_blank(bytes) && !blank(prefix) {
                assert!(
                    part.truncated.is_some(),
                    "cut at {cut}: array cut not reported"
                );
            }
        }
        Err(DatasetError::Json { message, .. }) if message.contains("nothing to read") => {}
        // Only a byte-order mark can be cut outside a record.
        Err(DatasetError::Encoding { .. }) if cut < 3 && bytes.starts_with(b"\xef\xbb\xbf") => {}
        Err(e) => panic!("cut at {cut}: {e}"),
    }
}

/// A few cut points picked from the input's bytes, so a run is repeatable.
fn cut_points(bytes: &[u8]) -> impl Iterator<Item = usize> {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for &b in bytes {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    let len = bytes.len() as u64;
    let count = if bytes.is_empty() { 0 } else { 3 };
    (0..count).map(move |i| ((hash >> (i * 20)) % len) as usize)
}

fn without_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes)
}

fn blank(bytes: &[u8]) -> bool {
    without_bom(bytes)
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

fn is_array(bytes: &[u8]) -> bool {
    without_bom(bytes)
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        == Some(&b'[')
}

fn last_non_blank(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .unwrap_or(0)
}

/// The number of items when serde_json reads the whole file as one array.
fn whole_array(bytes: &[u8]) -> Option<usize> {
    match serde_json::from_slice::<Value>(without_bom(bytes)) {
        Ok(Value::Array(items)) => Some(items.len()),
        _ => None,
    }
}
