//! Reading instruction data: Alpaca records and chat conversations, from JSON arrays and JSONL.
//!
//! A record is either Alpaca-style (`instruction`, `input?`, `output`) or a conversation
//! (ShareGPT's `conversations: [{from, value}]` or `messages: [{role, content}]`); both become
//! a [`Sample`] of one or more [`Turn`]s, so everything after this module is format-agnostic.
//!
//! Every record keeps its original JSON object so the selected subset can be written back
//! unchanged. Errors name the file, the line and record, and the field, because a user with a
//! 50K-row file needs to find the bad row, not guess.
//!
//! A file that was cut off (an interrupted download or write; ShareGPT's 90K array ends in the
//! middle of a record) is read up to its last complete record and reported as a [`Truncation`]
//! instead of refused, because everything before the cut is still good data. Only the end of the
//! input is forgiven: a syntax error anywhere else stays an error.
//!
//! The module depends only on serde, serde_json and thiserror, so the fuzz crate in `fuzz/` can
//! compile it on its own without building llama.cpp and FAISS.

use std::collections::hash_map::{Entry, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One instruction-tuning sample: an Alpaca record (one turn) or a conversation.
///
/// Serialised without its record: what a run's sample store keeps for scoring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The record's id field, or its 0-based index as a string when it has none.
    pub id: String,
    /// A conversation's system message (empty when there is none).
    pub system: String,
    /// The exchanges whose responses are scored, in order; empty when the record has none.
    pub turns: Vec<Turn>,
    /// The record exactly as read, for writing the selection back.
    #[serde(skip)]
    pub record: Map<String, Value>,
}

/// One exchange: what the model is asked, and the response it is trained to produce.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Turn {
    /// What the model is asked to do (a conversation's user message).
    pub instruction: String,
    /// Optional context for the instruction (empty when absent; always empty in conversations).
    pub input: String,
    /// The response the model is trained to produce.
    pub output: String,
}

impl Turn {
    /// The instruction, then the input when there is one.
    pub fn prompt_text(&self) -> String {
        if self.input.is_empty() {
            self.instruction.clone()
        } else {
            format!("{}\n{}", self.instruction, self.input)
        }
    }
}

impl Sample {
    /// What represents the sample for retrieval: every turn's prompt, never a response.
    pub fn retrieval_text(&self) -> String {
        let prompts: Vec<String> = self.turns.iter().map(Turn::prompt_text).collect();
        prompts.join("\n\n")
    }
}

/// Which record fields hold what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Fields {
    /// The sample id.
    pub id: String,
    /// Alpaca's instruction.
    pub instruction: String,
    /// Alpaca's optional input.
    pub input: String,
    /// Alpaca's response.
    pub output: String,
    /// The list of messages of a conversation; `None` accepts `conversations` (ShareGPT's
    /// `{from, value}`) and `messages` (`{role, content}`).
    pub conversation: Option<String>,
}

impl Default for Fields {
    fn default() -> Self {
        Self {
            id: "id".into(),
            instruction: "instruction".into(),
            input: "input".into(),
            output: "output".into(),
            conversation: None,
        }
    }
}

/// How records become samples.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReadOptions {
    /// Field names.
    pub fields: Fields,
    /// Keep only a conversation's first exchange.
    pub first_turn_only: bool,
    /// Leave each sample's original record out, for the stages that never write the
    /// selection: a million records held as JSON objects take gigabytes. Not a setting of
    /// the run (it changes no score), so it is not saved with one.
    #[serde(skip)]
    pub drop_records: bool,
}

/// A dataset as read: its complete records, and where the file stops if it was cut off.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// The complete records, in file order, with unique ids.
    pub samples: Vec<Sample>,
    /// Set when the file ends before the dataset does; the samples are those before the cut.
    pub truncated: Option<Truncation>,
}

/// Where a cut-off file stops, so the caller can warn that the tail was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truncation {
    /// Where the incomplete record starts. When the file ends between records (after a `,` or
    /// a record, before the closing `]`), the line where the array's text stops (that `,`, or
    /// the end of that record) and the index the next record would have had.
    pub at: Location,
    /// How many complete records were read before the cut (all of them are in the samples).
    pub complete_records: usize,
}

impl fmt::Display for Truncation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.complete_records == 1 { "" } else { "s" };
        write!(
            f,
            "the file ends early, at {} (cut off?); keeping the {} complete record{plural} before it",
            self.at, self.complete_records
        )
    }
}

/// Where a record sits in its file, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// 1-based line where the record starts; 0 in files without lines (Parquet).
    pub line: usize,
    /// 0-based record index.
    pub record: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => write!(f, "row {}", self.record),
            line => write!(f, "line {line}, record {}", self.record),
        }
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
    /// The bytes are not valid JSON where a record was expected, or the file ends before its
    /// first record is complete.
    #[error("{path}: {at}: invalid JSON: {message}")]
    Json {
        /// The dataset file.
        path: PathBuf,
        /// Where the bad record starts.
        at: Location,
        /// What the JSON parser reported, with the position in the whole file.
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
    /// Two records have the same id (explicit, or the index used for records without one).
    #[error(
        "{path}: {second}: id {id:?} already used by {first}; ids must be unique because \
         scores.jsonl and the resume log refer to samples by id"
    )]
    DuplicateId {
        /// The dataset file.
        path: PathBuf,
        /// The repeated id.
        id: String,
        /// The record that used it first.
        first: Location,
        /// The record that repeats it.
        second: Location,
    },
}

/// Reads a dataset file: a JSON array of records, or JSON Lines (one record per line), with
/// the default field names.
///
/// See [`parse_dataset`] for the format and what counts as cut off.
///
/// # Errors
/// [`DatasetError::Io`] when the file cannot be read, otherwise as [`parse_dataset`].
pub fn read_dataset(path: &Path) -> Result<Dataset, DatasetError> {
    let bytes = std::fs::read(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_dataset(&bytes, path)
}

/// [`parse_dataset_with`] the default field names.
///
/// # Errors
/// As [`parse_dataset_with`].
pub fn parse_dataset(bytes: &[u8], path: &Path) -> Result<Dataset, DatasetError> {
    parse_dataset_with(bytes, path, &ReadOptions::default())
}

/// Parses a dataset: a JSON array of records, or JSON Lines (one record per line).
///
/// The format is decided by the first non-blank character: `[` means an array. A leading UTF-8
/// byte-order mark is skipped. An empty or blank file, or `[]`, has no samples. A file that ends
/// before the array's closing `]`, or whose last line is cut, keeps its complete records and
/// says so in [`Dataset::truncated`]. `path` is only used in error messages.
///
/// # Errors
/// [`DatasetError`] naming the file, line, record and field of the first bad record; a file
/// cut off before its first record is complete is an error too, since nothing is usable.
pub fn parse_dataset_with(
    bytes: &[u8],
    path: &Path,
    options: &ReadOptions,
) -> Result<Dataset, DatasetError> {
    let (text, cut_character) = match std::str::from_utf8(bytes) {
        Ok(text) => (text, None),
        Err(e) => {
            let valid = &bytes[..e.valid_up_to()];
            let encoding = DatasetError::Encoding {
                path: path.to_path_buf(),
                line: valid.iter().filter(|&&b| b == b'\n').count() + 1,
            };
            // The file ends inside a multi-byte character: a download cut inside a string.
            // Read what comes before; unless that is cut off too, the bytes really are bad.
            match (e.error_len(), std::str::from_utf8(valid)) {
                (None, Ok(text)) => (text, Some(encoding)),
                _ => return Err(encoding),
            }
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Converter::new(path, options);
    let split = split_records(text, &mut records);
    // A bad record comes before any syntax error the split stopped at (it stops at either).
    let samples = records.finish()?;
    let split = split.map_err(|(at, message)| DatasetError::Json {
        path: path.to_path_buf(),
        at,
        message,
    })?;
    if let (Some(encoding), None) = (cut_character, split.cut) {
        return Err(encoding);
    }
    let truncated = split.cut.map(|at| Truncation {
        at,
        complete_records: samples.len(),
    });
    Ok(Dataset { samples, truncated })
}

/// Turns records read by any reader (JSON here, Parquet elsewhere) into samples, checking
/// fields and that ids are unique.
///
/// # Errors
/// [`DatasetError::Field`] or [`DatasetError::DuplicateId`] for the first bad record.
pub fn samples_from_records(
    records: Vec<(Location, Value)>,
    path: &Path,
    options: &ReadOptions,
) -> Result<Vec<Sample>, DatasetError> {
    let mut converter = Converter::new(path, options);
    for (at, value) in records {
        if !converter.push(at, value) {
            break;
        }
    }
    converter.finish()
}

/// Records turned into samples as they are read, their fields checked and their ids kept
/// unique, so a million records are never all held as JSON values at once.
struct Converter<'a> {
    path: &'a Path,
    options: &'a ReadOptions,
    samples: Vec<Sample>,
    first_use: HashMap<String, Location>,
    failed: Option<DatasetError>,
}

impl<'a> Converter<'a> {
    fn new(path: &'a Path, options: &'a ReadOptions) -> Self {
        Converter {
            path,
            options,
            samples: Vec::new(),
            first_use: HashMap::new(),
            failed: None,
        }
    }

    /// Records converted so far.
    fn len(&self) -> usize {
        self.samples.len()
    }

    /// Converts the record at `at`; `false` (keeping the error) when it is bad.
    fn push(&mut self, at: Location, value: Value) -> bool {
        let path = || self.path.to_path_buf();
        let sample = match sample_from(value, at, self.options) {
            Ok(sample) => sample,
            Err((field, problem)) => {
                self.failed = Some(DatasetError::Field {
                    path: path(),
                    at,
                    field,
                    problem,
                });
                return false;
            }
        };
        match self.first_use.entry(sample.id.clone()) {
            Entry::Occupied(first) => {
                self.failed = Some(DatasetError::DuplicateId {
                    path: path(),
                    id: sample.id,
                    first: *first.get(),
                    second: at,
                });
                return false;
            }
            Entry::Vacant(slot) => {
                slot.insert(at);
            }
        }
        self.samples.push(sample);
        true
    }

    /// The samples, or the first bad record's error.
    fn finish(self) -> Result<Vec<Sample>, DatasetError> {
        match self.failed {
            Some(e) => Err(e),
            None => Ok(self.samples),
        }
    }
}

type RecordError = (Location, String);

/// The JSON values of a file with their locations, and where it was cut off, if it was.
struct Split {
    cut: Option<Location>,
}

/// Splits the text into JSON values with their locations, reading one value at a time so an
/// error points at the record that broke, and hands each to `records`; stops early (with
/// no cut) when `records` refuses one.
fn split_records(text: &str, records: &mut Converter) -> Result<Split, RecordError> {
    let lines = LineIndex::new(text);
    let start = skip_whitespace(text, 0);
    let split = if text[start..].starts_with('[') {
        split_array(text, start, &lines, records)?
    } else {
        split_lines(text, &lines, records)?
    };
    match split.cut {
        Some(at) if records.len() == 0 => Err((
            at,
            "the file ends before its first record is complete, so there is nothing to read \
             (cut off?)"
                .into(),
        )),
        _ => Ok(split),
    }
}

/// A JSON array starting at `open` (its `[`). Ending before the closing `]` is a cut, wherever
/// it happens: inside a record, after a `,` or right after a record.
fn split_array(
    text: &str,
    open: usize,
    lines: &LineIndex,
    records: &mut Converter,
) -> Result<Split, RecordError> {
    let location = |pos: usize, record: usize| Location {
        line: lines.line_of(pos),
        record,
    };
    // The last byte read that belongs to the array: where a cut between records is reported.
    let mut last = open;
    let mut pos = skip_whitespace(text, open + 1);
    if text[pos..].starts_with(']') {
        return check_end(text, pos, records, lines);
    }
    loop {
        if pos >= text.len() {
            let cut = Some(location(last, records.len()));
            return Ok(Split { cut });
        }
        let at = location(pos, records.len());
        let mut stream = serde_json::Deserializer::from_str(&text[pos..]).into_iter::<Value>();
        match stream.next() {
            Some(Ok(value)) => {
                if !records.push(at, value) {
                    return Ok(Split { cut: None });
                }
            }
            Some(Err(e)) if e.is_eof() => return Ok(Split { cut: Some(at) }),
            Some(Err(e)) => return Err((at, json_message(&e, pos, lines))),
            None => return Err((at, "expected a record".into())),
        }
        last = pos + stream.byte_offset() - 1;
        pos = skip_whitespace(text, last + 1);
        match text[pos..].chars().next() {
            Some(',') => {
                last = pos;
                pos = skip_whitespace(text, pos + 1);
            }
            Some(']') => return check_end(text, pos, records, lines),
            Some(c) => {
                return Err((
                    location(pos, records.len()),
                    format!("expected `,` or `]` after a record, found {c:?}"),
                ))
            }
            None => {
                let cut = Some(location(last, records.len()));
                return Ok(Split { cut });
            }
        }
    }
}

/// After the closing `]` at `close` only whitespace may follow.
fn check_end(
    text: &str,
    close: usize,
    records: &Converter,
    lines: &LineIndex,
) -> Result<Split, RecordError> {
    let rest = skip_whitespace(text, close + 1);
    if rest < text.len() {
        let at = Location {
            line: lines.line_of(rest),
            record: records.len(),
        };
        return Err((at, "unexpected text after the closing `]`".into()));
    }
    Ok(Split { cut: None })
}

/// JSON Lines: one record per non-blank line. Only the last line can be cut off, and only if it
/// runs to the end of the file: a line that stops at a newline was not cut by the end of input.
fn split_lines(
    text: &str,
    lines: &LineIndex,
    records: &mut Converter,
) -> Result<Split, RecordError> {
    let mut start = 0;
    for (index, raw) in text.split('\n').enumerate() {
        let line_start = start;
        start += raw.len() + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.bytes().all(is_json_whitespace) {
            continue;
        }
        let at = Location {
            line: index + 1,
            record: records.len(),
        };
        match serde_json::from_str::<Value>(line) {
            Ok(value) => {
                if !records.push(at, value) {
                    return Ok(Split { cut: None });
                }
            }
            Err(e) if e.is_eof() && start > text.len() => return Ok(Split { cut: Some(at) }),
            Err(e) => return Err((at, json_message(&e, line_start, lines))),
        }
    }
    Ok(Split { cut: None })
}

/// serde_json's message with its position made absolute: it counts from where the parse
/// started (the record, or the line), which would point a user at the wrong place.
fn json_message(e: &serde_json::Error, start: usize, lines: &LineIndex) -> String {
    let message = e.to_string();
    if e.line() == 0 {
        return message;
    }
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let what = message.strip_suffix(&suffix).unwrap_or(&message);
    let line = lines.line_of(start) + e.line() - 1;
    let column = if e.line() == 1 {
        lines.column_of(start) + e.column()
    } else {
        e.column()
    };
    format!("{what} at line {line} column {column}")
}

/// JSON's own whitespace; Unicode spaces elsewhere are syntax errors, as serde_json says.
fn is_json_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_whitespace(text: &str, pos: usize) -> usize {
    pos + text.as_bytes()[pos..]
        .iter()
        .take_while(|&&b| is_json_whitespace(b))
        .count()
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

    /// 0-based byte column.
    fn column_of(&self, pos: usize) -> usize {
        match self.line_of(pos) {
            1 => pos,
            line => pos - self.0[line - 2] - 1,
        }
    }
}

type FieldError = (String, String);

fn sample_from(value: Value, at: Location, options: &ReadOptions) -> Result<Sample, FieldError> {
    let Value::Object(record) = value else {
        return Err(("(record)".into(), "expected a JSON object".into()));
    };
    let fields = &options.fields;
    let id = match record.get(&fields.id) {
        None | Some(Value::Null) => at.record.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err((
                fields.id.clone(),
                format!("expected a string or number, found {}", kind(other)),
            ))
        }
    };
    let conversation = match &fields.conversation {
        Some(name) => Some(name.as_str()),
        None if has(&record, &fields.instruction) => None,
        None => ["conversations", "messages"]
            .into_iter()
            .find(|name| has(&record, name)),
    };
    let (system, mut turns) = match conversation {
        Some(name) => conversation_turns(&record, name)?,
        None => (String::new(), vec![alpaca_turn(&record, fields)?]),
    };
    if options.first_turn_only {
        turns.truncate(1);
    }
    Ok(Sample {
        id,
        system,
        turns,
        record: if options.drop_records {
            Map::new()
        } else {
            record
        },
    })
}

/// Whether `record` sets `name`. A null counts as unset: a table (Parquet, a DataFrame) has
/// every column in every row, null where a record lacks it, so records of both kinds in one
/// table read as they do from JSON Lines.
fn has(record: &Map<String, Value>, name: &str) -> bool {
    record.get(name).is_some_and(|value| !value.is_null())
}

fn text_field(
    record: &Map<String, Value>,
    name: &str,
    required: bool,
) -> Result<String, FieldError> {
    match record.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Null) | None if !required => Ok(String::new()),
        None => Err((name.into(), "missing".into())),
        Some(other) => Err((
            name.into(),
            format!("expected a string, found {}", kind(other)),
        )),
    }
}

fn alpaca_turn(record: &Map<String, Value>, fields: &Fields) -> Result<Turn, FieldError> {
    if !record.contains_key(&fields.instruction) && fields.conversation.is_none() {
        return Err((
            fields.instruction.clone(),
            "missing (and no `conversations` or `messages` list either)".into(),
        ));
    }
    Ok(Turn {
        instruction: text_field(record, &fields.instruction, true)?,
        input: text_field(record, &fields.input, false)?,
        output: text_field(record, &fields.output, true)?,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    System,
    User,
    Assistant,
}

/// A conversation's exchanges, as chat fine-tuning reads them (FastChat's rules): an optional
/// system message first, then user and assistant alternating. Assistant messages before the
/// first user message have no prompt and a last user message has no response; both are
/// skipped, since training never sees them as targets either.
fn conversation_turns(
    record: &Map<String, Value>,
    name: &str,
) -> Result<(String, Vec<Turn>), FieldError> {
    let messages = match record.get(name) {
        Some(Value::Array(messages)) => messages,
        None => return Err((name.into(), "missing".into())),
        Some(other) => {
            return Err((
                name.into(),
                format!("expected a list of messages, found {}", kind(other)),
            ))
        }
    };
    let mut system = String::new();
    let mut turns: Vec<Turn> = Vec::new();
    let mut last = None;
    for (n, message) in messages.iter().enumerate() {
        let at = |key: &str| format!("{name}[{n}]{key}");
        let Value::Object(message) = message else {
            return Err((
                at(""),
                format!("expected a message object, found {}", kind(message)),
            ));
        };
        let (role_key, text_key) = if message.contains_key("from") || message.contains_key("value")
        {
            ("from", "value")
        } else {
            ("role", "content")
        };
        let role = message_role(message, role_key)
            .map_err(|problem| (at(&format!(".{role_key}")), problem))?;
        let text = text_field(message, text_key, true)
            .map_err(|(_, problem)| (at(&format!(".{text_key}")), problem))?;
        match (last, role) {
            (None, Role::System) => system = text,
            (_, Role::System) => {
                return Err((
                    at(&format!(".{role_key}")),
                    "a system message is only allowed first".into(),
                ))
            }
            (None | Some(Role::System), Role::Assistant) => continue,
            (Some(Role::User), Role::User) | (Some(Role::Assistant), Role::Assistant) => {
                return Err((
                    at(&format!(".{role_key}")),
                    "two messages of the same role in a row; user and assistant must alternate"
                        .into(),
                ))
            }
            (_, Role::User) => turns.push(Turn {
                instruction: text,
                ..Turn::default()
            }),
            (Some(Role::User), Role::Assistant) => {
                turns.last_mut().expect("a user message came first").output = text
            }
        }
        last = Some(role);
    }
    if last == Some(Role::User) {
        turns.pop();
    }
    Ok((system, turns))
}

/// A message's role under `key`, or what is wrong with it.
fn message_role(message: &Map<String, Value>, key: &str) -> Result<Role, String> {
    match message.get(key) {
        Some(Value::String(role)) => match role.as_str() {
            "system" => Ok(Role::System),
            "human" | "user" => Ok(Role::User),
            "gpt" | "assistant" | "model" | "chatgpt" | "bing" | "bard" => Ok(Role::Assistant),
            other => Err(format!(
                "unknown role {other:?} (expected system, user/human or assistant/gpt)"
            )),
        },
        None => Err("missing".into()),
        Some(other) => Err(format!("expected a string, found {}", kind(other))),
    }
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
        read_dataset(&path).map(|dataset| dataset.samples)
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
        assert_eq!(a[1].turns[0].input, "");
        let keys: Vec<_> = a[0].record.keys().cloned().collect();
        assert_eq!(
            keys,
            ["instruction", "input", "output", "id"],
            "field order kept"
        );
    }

    #[test]
    fn a_null_field_reads_as_a_missing_one() {
        // As a table holds records of both kinds: every column in every row.
        let as_rows = concat!(
            r#"{"instruction": null, "output": null, "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}], "messages": null}"#,
            "\n",
            r#"{"instruction": null, "output": null, "conversations": null, "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}"#,
            "\n",
            r#"{"instruction": "Hi", "output": "Hello", "conversations": null, "messages": null}"#,
        );
        let as_records = concat!(
            r#"{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}"#,
            "\n",
            r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}"#,
            "\n",
            r#"{"instruction": "Hi", "output": "Hello"}"#,
        );
        let turns = |samples: Vec<Sample>| -> Vec<Vec<Turn>> {
            samples.into_iter().map(|s| s.turns).collect()
        };
        assert_eq!(
            turns(read(as_rows, "rows.jsonl").unwrap()),
            turns(read(as_records, "records.jsonl").unwrap())
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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        std::fs::write(&path, truncated).unwrap();
        let dataset = read_dataset(&path).unwrap();
        assert_eq!(dataset.samples.len(), 1);
        let cut = dataset.truncated.unwrap();
        assert_eq!(cut.at, Location { line: 3, record: 1 });
        assert_eq!(cut.complete_records, 1);

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

    #[test]
    fn json_positions_count_from_the_start_of_the_file() {
        // The second record starts at line 3, column 3; serde_json alone would say line 1.
        let text = "[\n  {\"instruction\": \"a\", \"output\": \"b\"},\n  {\"instruction\": x}\n]";
        let err = parse_dataset(text.as_bytes(), Path::new("p.json"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "p.json: line 3, record 1: invalid JSON: expected value at line 3 column 19"
            ),
            "{err}"
        );
        let text = "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\":\n";
        let err = parse_dataset(text.as_bytes(), Path::new("p.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("p.jsonl: line 2, record 1: invalid JSON: EOF while parsing a value at line 2 column 15"), "{err}");
    }
}
