//! Writing a run's results: `scores.jsonl`, `selected.jsonl` and `run.json`.
//!
//! Each file is written to a temporary name and renamed into place, so a crash never leaves a
//! half-written file that looks complete.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::prompt::Unscorable;

/// One line of `scores.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreRow {
    /// The sample's id.
    pub id: String,
    /// Its 0-based position in the dataset.
    pub index: usize,
    /// One-shot loss minus zero-shot loss; null when undefined.
    pub miwv: f32,
    /// Mean response loss given the sample's own prompt.
    pub loss_zero_shot: f32,
    /// Mean response loss with the neighbour as a one-shot example.
    pub loss_one_shot: f32,
    /// Why `miwv` is undefined.
    pub reason: Option<Unscorable>,
    /// The example's id.
    pub neighbour_id: Option<String>,
    /// The example's index.
    pub neighbour_index: Option<usize>,
    /// Cosine similarity to the example.
    pub similarity: Option<f32>,
    /// Scored tokens (the response, EOS included when appended).
    pub response_tokens: usize,
    /// Tokens before the response in the zero-shot sequence (BOS and prompt).
    pub prompt_tokens_zero_shot: usize,
    /// Tokens before the response in the one-shot sequence (BOS, example, separator, prompt).
    pub prompt_tokens_one_shot: usize,
    /// Example tokens cut from the left to fit the context.
    pub example_tokens_dropped: usize,
    /// Whether the sample is in `selected.jsonl`.
    pub selected: bool,
    /// 1-based rank by MIWV among scored samples.
    pub rank: Option<usize>,
    /// Exchanges whose responses are scored (1 for Alpaca records).
    pub turns: usize,
    /// IFD and Superfiltering, with `--also ifd`.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub ifd: Option<Ifd>,
}

/// Cherry LLM's IFD and Superfiltering's ratio, from the zero-shot loss and the responses'
/// loss alone (METHOD.md). Null where either loss is undefined.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ifd {
    /// L(y): mean loss of the responses with no prompt.
    pub loss_response_only: f32,
    /// IFD = L(y|x) / L(y); above 1 the prompt does not help, and Cherry LLM drops the sample.
    pub ifd: f32,
    /// PPL(y|x) / PPL(y) = exp(L(y|x) - L(y)).
    pub superfiltering: f32,
}

impl Ifd {
    /// From L(y|x) and L(y).
    pub fn new(loss_zero_shot: f32, loss_response_only: f32) -> Self {
        Self {
            loss_response_only,
            ifd: loss_zero_shot / loss_response_only,
            superfiltering: (loss_zero_shot - loss_response_only).exp(),
        }
    }
}

/// Writes `path` atomically: a temporary file in the same directory, synced, then renamed.
///
/// # Errors
/// The I/O error, with the path.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<(), OutputError> {
    let fail = |source| OutputError {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let written = File::create(&tmp).and_then(|file| {
        let mut out = BufWriter::new(file);
        write(&mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_parent(path)
    });
    if written.is_err() {
        // A full disk should not keep the partial file's space.
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(fail)
}

/// Makes a rename or a new file in `path`'s directory durable.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

/// Writes one JSON value per line.
///
/// # Errors
/// The I/O error, with the path.
pub fn write_jsonl<T: Serialize>(
    path: &Path,
    rows: impl IntoIterator<Item = T>,
) -> Result<(), OutputError> {
    write_atomically(path, |out| {
        for row in rows {
            serde_json::to_writer(&mut *out, &row)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    })
}

/// Writes pretty-printed JSON.
///
/// # Errors
/// The I/O error, with the path.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), OutputError> {
    write_atomically(path, |out| {
        serde_json::to_writer_pretty(&mut *out, value)?;
        out.write_all(b"\n")
    })
}

/// An output file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct OutputError {
    /// The file being written.
    pub path: PathBuf,
    /// The I/O error.
    pub source: std::io::Error,
}
