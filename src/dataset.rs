//! Reading instruction data: Alpaca-style JSON arrays and JSONL.
//!
//! Every record keeps its original JSON object so the selected subset can be written back
//! unchanged. Errors name the file, the line and record, and the field, because a user with a
//! 50K-row file needs to find the bad row, not guess.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// One instruction-tuning sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The record's `id` field, or its 0-based index as a string when it has none.
    pub id: String,
    /// What the model is asked to do.
    pub instruction: String,
    /// Optional context for the instruction (empty when absent).
    pub input: String,
    /// The response the model is trained to produce.
    pub output: String,
    /// The record exactly as read, for writing the selection back.
    pub record: Map<String, Value>,
}

/// Where a record sits in its file, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// 1-based line where the record starts.
    pub line: usize,
    /// 0-based record index.
    pub record: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, record {}", self.line, self.record)
    }
}

/// Why a dataset could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The dataset file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not UTF-8.
    #[error("{path}: line {line}: not valid UTF-8")]
    Encoding {
        /// The dataset file.
        path: PathBuf,
        /// 1-based line of the first invalid byte.
        line: usize,
    },
    /// The bytes are not valid JSON where a record was expected.
    #[error("{path}: {at}: invalid JSON: {message}")]
    Json {
        /// The dataset file.
        path: PathBuf,
        /// Where the bad record starts.
        at: Location,
        /// What the JSON parser reported.
        message: String,
    },
    /// A record is valid JSON but a field is missing or has the wrong type.
    #[error("{path}: {at}: field `{field}`: {problem}")]
    Field {
        /// The dataset file.
        path: PathBuf,
        /// Where the record starts.
        at: Location,
        /// The offending field.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// Reads a dataset: a JSON array of records, or JSON Lines (one record per line).
///
/// The format is decided by the first non-blank character: `[` means an array.
///
/// # Errors
/// [`DatasetError`] naming the file, line, record and field of the first bad record.
pub fn read_dataset(path: &Path) -> Result<Vec<Sample>, DatasetError> {
    let bytes = std::fs::read(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        DatasetError::Encoding {
            path: path.to_path_buf(),
            line: valid.iter().filter(|&&b| b == b'\n').count() + 1,
        }
    })?;
    let records = split_records(&text).map_err(|(at, message)| DatasetError::Json {
        path: path.to_path_buf(),
        at,
        message,
    })?;
    records
        .into_iter()
        .map(|(at, value)| {
            sample_from(value, at).map_err(|(field, problem)| DatasetError::Field {
                path: path.to_path_buf(),
                at,
                field,
                problem,
            })
        })
        .collect()
}

type RecordError = (Location, String);

/// Splits the text into JSON values with their locations, reading one value at a time so an
/// error points at the record that broke.
fn split_records(text: &str) -> Result<Vec<(Location, Value)>, RecordError> {
    let lines = LineIndex::new(text);
    let start = skip_whitespace(text, 0);
    let mut records = Vec::new();
    if text[start..].starts_with('[') {
        let mut pos = skip_whitespace(text, start + 1);
        if text[pos..].starts_with(']') {
            return Ok(records);
        }
        loop {
            let at = Location {
                line: lines.line_of(pos),
                record: records.len(),
            };
            if pos >= text.len() {
                return Err((at, "the array ends before its closing `]`".into()));
            }
            let (value, end) = parse_value(text, pos).map_err(|e| (at, e))?;
            records.push((at, value));
            pos = skip_whitespace(text, end);
            match text[pos..].chars().next() {
                Some(',') => pos = skip_whitespace(text, pos + 1),
                Some(']') => break,
                Some(c) => {
                    let at = Location {
                        line: lines.line_of(pos),
                        record: records.len(),
                    };
                    return Err((
                        at,
                        format!("expected `,` or `]` after a record, found `{c}`"),
                    ));
                }
                None => {
                    let at = Location {
                        line: lines.line_of(pos),
                        record: records.len(),
                    };
                    return Err((at, "the array ends before its closing `]`".into()));
                }
            }
        }
        let rest = skip_whitespace(text, pos + 1);
        if rest < text.len() {
            let at = Location {
                line: lines.line_of(rest),
                record: records.len(),
            };
            return Err((at, "unexpected text after the closing `]`".into()));
        }
    } else {
        for (number, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = Location {
                line: number + 1,
                record: records.len(),
            };
            let value: Value = serde_json::from_str(line).map_err(|e| (at, e.to_string()))?;
            records.push((at, value));
        }
    }
    Ok(records)
}

/// Parses one JSON value starting at `pos`; returns it and the byte offset just past it.
fn parse_value(text: &str, pos: usize) -> Result<(Value, usize), String> {
    let mut stream = serde_json::Deserializer::from_str(&text[pos..]).into_iter::<Value>();
    match stream.next() {
        Some(Ok(value)) => Ok((value, pos + stream.byte_offset())),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("expected a record".into()),
    }
}

fn skip_whitespace(text: &str, pos: usize) -> usize {
    pos + text[pos..].len() - text[pos..].trim_start().len()
}

/// Byte offset -> 1-based line number.
struct LineIndex(Vec<usize>);

impl LineIndex {
    fn new(text: &str) -> Self {
        Self(text.match_indices('\n').map(|(i, _)| i).collect())
    }

    fn line_of(&self, pos: usize) -> usize {
        self.0.partition_point(|&newline| newline < pos) + 1
    }
}

fn sample_from(value: Value, at: Location) -> Result<Sample, (String, String)> {
    let Value::Object(record) = value else {
        return Err(("(record)".into(), "expected a JSON object".into()));
    };
    let text_field = |name: &str, required: bool| -> Result<String, (String, String)> {
        match record.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Null) | None if !required => Ok(String::new()),
            None => Err((name.into(), "missing".into())),
            Some(other) => Err((
                name.into(),
                format!("expected a string, found {}", kind(other)),
            )),
        }
    };
    let instruction = text_field("instruction", true)?;
    let input = text_field("input", false)?;
    let output = text_field("output", true)?;
    let id = match record.get("id") {
        None | Some(Value::Null) => at.record.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err((
                "id".into(),
                format!("expected a string or number, found {}", kind(other)),
            ))
        }
    };
    Ok(Sample {
        id,
        instruction,
        input,
        output,
        record,
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, name: &str) -> Result<Vec<Sample>, DatasetError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        read_dataset(&path)
    }

    #[test]
    fn reads_array_and_jsonl_alike() {
        let array = r#"[
  {"instruction": "Add.", "input": "2 3", "output": "5", "id": "a"},
  {"instruction": "Greet.", "output": "Hello!"}
]"#;
        let jsonl = "{\"instruction\": \"Add.\", \"input\": \"2 3\", \"output\": \"5\", \"id\": \"a\"}\n\n{\"instruction\": \"Greet.\", \"output\": \"Hello!\"}\n";
        let a = read(array, "d.json").unwrap();
        let b = read(jsonl, "d.jsonl").unwrap();
        assert_eq!(a, b);
        assert_eq!(a[0].id, "a");
        assert_eq!(a[1].id, "1");
        assert_eq!(a[1].input, "");
        let keys: Vec<_> = a[0].record.keys().cloned().collect();
        assert_eq!(
            keys,
            ["instruction", "input", "output", "id"],
            "field order kept"
        );
    }

    #[test]
    fn errors_name_file_line_record_and_field() {
        let text = "[\n  {\"instruction\": \"a\", \"output\": \"b\"},\n  {\"instruction\": \"c\",\n   \"output\": 7}\n]";
        let err = read(text, "bad.json").unwrap_err().to_string();
        assert!(err.contains("bad.json"), "{err}");
        assert!(err.contains("line 3, record 1"), "{err}");
        assert!(
            err.contains("field `output`: expected a string, found a number"),
            "{err}"
        );

        let err = read("{\"output\": \"x\"}\n", "m.jsonl")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 1, record 0: field `instruction`: missing"),
            "{err}"
        );
    }

    #[test]
    fn invalid_json_names_the_record() {
        let text =
            "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"c\", \"output\": }\n";
        let err = read(text, "x.jsonl").unwrap_err().to_string();
        assert!(
            err.contains("x.jsonl: line 2, record 1: invalid JSON"),
            "{err}"
        );

        let truncated =
            "[\n {\"instruction\": \"a\", \"output\": \"b\"},\n {\"instruction\": \"c\", \"outp";
        let err = read(truncated, "t.json").unwrap_err().to_string();
        assert!(
            err.contains("t.json: line 3, record 1: invalid JSON"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latin1.jsonl");
        std::fs::write(
            &path,
            b"{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"caf\xe9\"}\n",
        )
        .unwrap();
        let err = read_dataset(&path).unwrap_err().to_string();
        assert!(
            err.contains("latin1.jsonl: line 2: not valid UTF-8"),
            "{err}"
        );
    }
}
