//! A run's samples kept in one file and read back one at a time by offset.
//!
//! A score shard of a million-sample run decodes a few hundred samples. Reading the dataset
//! itself would parse all of it (a JSON array, a gzip stream or a Parquet file cannot be read
//! from the middle), so the stage that plans the run writes every sample once, without its
//! original record, to `samples.bin` (compact binary serde, one sample after another) with
//! `samples.idx` (the little-endian `u64` offset of each sample and of the end). A shard
//! then holds the offsets (8 bytes a sample) and reads only the samples it renders.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::data::dataset::Sample;
use crate::data::output::{write_atomically, OutputError};

/// The store's files could not be written or read, or do not hold what they should.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Writing failed.
    #[error(transparent)]
    Write(#[from] OutputError),
    /// Reading failed.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The files do not hold a store (cut off, or written by something else).
    #[error("{path}: {problem}; delete the run's checkpoint/plan directory and run `miwv neighbours` again")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// Samples read by index from a run's store.
#[derive(Debug)]
pub struct SampleStore {
    path: PathBuf,
    file: File,
    /// Where each sample starts, and where the last one ends.
    offsets: Vec<u64>,
}

const SAMPLES: &str = "samples.bin";
const INDEX: &str = "samples.idx";

impl SampleStore {
    /// Writes `samples` into `dir` (which exists), the index last so that a store cut off
    /// by a crash is found incomplete rather than read.
    ///
    /// # Errors
    /// [`StoreError::Write`] naming the file.
    pub fn write(dir: &Path, samples: &[Sample]) -> Result<(), StoreError> {
        let mut offsets = Vec::with_capacity(samples.len() + 1);
        write_atomically(&dir.join(SAMPLES), |out| {
            let mut at = 0u64;
            for sample in samples {
                offsets.push(at);
                let bytes = postcard::to_stdvec(sample)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                out.write_all(&bytes)?;
                at += bytes.len() as u64;
            }
            offsets.push(at);
            Ok(())
        })?;
        write_atomically(&dir.join(INDEX), |out| {
            offsets
                .iter()
                .try_for_each(|at| out.write_all(&at.to_le_bytes()))
        })?;
        Ok(())
    }

    /// Opens the store in `dir`; `None` when it has none.
    ///
    /// # Errors
    /// [`StoreError::Read`] or [`StoreError::Damaged`] naming the file.
    pub fn open(dir: &Path) -> Result<Option<Self>, StoreError> {
        let (path, index) = (dir.join(SAMPLES), dir.join(INDEX));
        let bytes = match std::fs::read(&index) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Read {
                    path: index,
                    source,
                })
            }
        };
        let damaged = |path: &Path, problem: String| StoreError::Damaged {
            path: path.to_path_buf(),
            problem,
        };
        if bytes.len() % 8 != 0 || bytes.is_empty() {
            return Err(damaged(&index, format!("{} bytes", bytes.len())));
        }
        let offsets: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect();
        let file = File::open(&path).map_err(|source| StoreError::Read {
            path: path.clone(),
            source,
        })?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let last = *offsets.last().expect("not empty");
        if offsets.windows(2).any(|w| w[0] > w[1]) || last != size {
            return Err(damaged(
                &path,
                format!("{size} bytes, the index says {last}"),
            ));
        }
        Ok(Some(SampleStore {
            path,
            file,
            offsets,
        }))
    }

    /// Samples in the store.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sample `index`, without its original record.
    ///
    /// # Errors
    /// [`StoreError::Read`] or [`StoreError::Damaged`] naming the file.
    ///
    /// # Panics
    /// When `index` is not below [`SampleStore::len`].
    pub fn read(&self, index: usize) -> Result<Sample, StoreError> {
        let (start, end) = (self.offsets[index], self.offsets[index + 1]);
        let mut bytes = vec![0u8; (end - start) as usize];
        std::os::unix::fs::FileExt::read_exact_at(&self.file, &mut bytes, start).map_err(
            |source| StoreError::Read {
                path: self.path.clone(),
                source,
            },
        )?;
        postcard::from_bytes(&bytes).map_err(|e| StoreError::Damaged {
            path: self.path.clone(),
            problem: format!("sample {index}: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::Turn;

    fn sample(i: usize) -> Sample {
        Sample {
            id: format!("s{i}"),
            system: if i.is_multiple_of(2) {
                String::new()
            } else {
                "be brief".into()
            },
            turns: (0..=i % 3)
                .map(|t| Turn {
                    instruction: format!("question {i}.{t} ü"),
                    input: String::new(),
                    output: format!("answer {i}.{t}"),
                })
                .collect(),
            record: serde_json::Map::new(),
        }
    }

    #[test]
    fn samples_come_back_by_index_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(SampleStore::open(dir.path()).unwrap().is_none());
        let samples: Vec<Sample> = (0..50).map(sample).collect();
        SampleStore::write(dir.path(), &samples).unwrap();
        let store = SampleStore::open(dir.path()).unwrap().unwrap();
        assert_eq!(store.len(), 50);
        for i in [37, 0, 49, 3] {
            assert_eq!(store.read(i).unwrap(), samples[i]);
        }
        let cut = std::fs::read(dir.path().join(SAMPLES)).unwrap();
        std::fs::write(dir.path().join(SAMPLES), &cut[..cut.len() - 3]).unwrap();
        let message = SampleStore::open(dir.path()).unwrap_err().to_string();
        assert!(message.contains("samples.bin"), "{message}");
    }
}
