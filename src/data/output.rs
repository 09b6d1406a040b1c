//! Writing output files durably: `scores.jsonl`, the selection, `run.json`, reports.
//!
//! What the files hold is defined once in [`crate::state::schema`]; this module only writes. Each
//! file is written to a temporary name and renamed into place, so a crash never leaves a
//! half-written file that looks complete.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The sha256 (lowercase hex) and size of a file, read in 1 MiB pieces so a 7B model is
/// never held in memory.
///
/// # Errors
/// The I/O error.
pub fn file_sha256(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((sha256, bytes))
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
