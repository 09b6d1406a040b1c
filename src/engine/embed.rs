//! Embedding each sample's prompts (instruction + input, or a conversation's user messages;
//! never a response) for retrieval.
//!
//! Vectors are mean-pooled by llama.cpp and L2-normalised here, so inner product is cosine.

use std::ops::{ControlFlow, Range};
use std::path::Path;

use crate::data::dataset::Sample;
use crate::engine::{Embedder, EngineError};
use crate::scoring::plan::{pack, Capacity};
use crate::scoring::prompt::Token;
use crate::scoring::shard::Shard;

/// The task prefix an embedding architecture expects, when it expects one.
///
/// nomic-embed-text is trained with task prefixes; finding a similar sample is a
/// document-to-document search, hence `search_document: ` on every text.
pub fn default_prefix(architecture: Option<&str>) -> &'static str {
    match architecture {
        Some("nomic-bert") | Some("nomic-bert-moe") => "search_document: ",
        _ => "",
    }
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn l2_normalise(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        v.iter_mut()
            .for_each(|x| *x = (f64::from(*x) / norm) as f32);
    }
}

/// Embeds every sample; returns the normalised vectors row by row and their width.
/// `progress` gets the number of samples embedded so far after each batch, and stops the
/// embedding by breaking.
///
/// # Errors
/// Engine failures, including a model that produces no embeddings;
/// [`EngineError::Stopped`] when `progress` breaks.
pub fn embed_samples(
    embedder: &mut Embedder,
    samples: &[Sample],
    prefix: &str,
    progress: impl FnMut(usize) -> ControlFlow<()>,
) -> Result<(Vec<f32>, usize), EngineError> {
    let batches = EmbeddingBatches::plan(embedder, samples, prefix);
    let embedded = batches.embed(embedder, 0..batches.len(), progress)?;
    let dim = embedded.first().map_or(0, |(_, v)| v.len());
    let mut rows = vec![0.0; samples.len() * dim];
    for (i, vector) in embedded {
        rows[i * dim..(i + 1) * dim].copy_from_slice(&vector);
    }
    Ok((rows, dim))
}

/// Every sample's retrieval tokens, packed into the decode batches that embed them. The
/// batches depend only on the texts and the embedder, so a shard embedding some of them gets
/// the same numbers as one process embedding all (llama.cpp's results depend on the batch).
pub struct EmbeddingBatches {
    tokens: Vec<Vec<Token>>,
    batches: Vec<Vec<usize>>,
}

impl EmbeddingBatches {
    /// Tokenises every sample's retrieval text (after `prefix`) and packs the batches.
    pub fn plan(embedder: &Embedder, samples: &[Sample], prefix: &str) -> Self {
        let tokens: Vec<_> = samples
            .iter()
            .map(|s| embedder.tokenize(&format!("{prefix}{}", s.retrieval_text())))
            .collect();
        let lengths: Vec<usize> = tokens.iter().map(Vec::len).collect();
        let capacity = Capacity {
            tokens: embedder.max_batch_tokens(),
            sequences: embedder.max_sequences(),
        };
        let batches = pack(&lengths, capacity);
        EmbeddingBatches { tokens, batches }
    }

    /// Batches planned.
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    /// Whether there is nothing to embed.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The batches `shard` embeds: a contiguous range holding about its share of the tokens.
    pub fn shard(&self, shard: Shard) -> Range<usize> {
        shard.split(self.batches.len(), |b| {
            self.batches[b].iter().map(|&i| self.tokens[i].len()).sum()
        })
    }

    /// Embeds the batches in `range`; returns (sample index, normalised vector) in batch
    /// order. `progress` gets the number of samples embedded so far after each batch, and
    /// stops the embedding by breaking.
    ///
    /// # Errors
    /// Engine failures, including a model that produces no embeddings;
    /// [`EngineError::Stopped`] when `progress` breaks.
    pub fn embed(
        &self,
        embedder: &mut Embedder,
        range: Range<usize>,
        mut progress: impl FnMut(usize) -> ControlFlow<()>,
    ) -> Result<Vec<(usize, Vec<f32>)>, EngineError> {
        let total = self.batches[range.clone()].iter().map(Vec::len).sum();
        let mut embedded = Vec::new();
        for batch in &self.batches[range] {
            let texts: Vec<Vec<Token>> = batch.iter().map(|&i| self.tokens[i].clone()).collect();
            for (&i, mut vector) in batch.iter().zip(embedder.embed(&texts)?) {
                l2_normalise(&mut vector);
                embedded.push((i, vector));
            }
            if progress(embedded.len()).is_break() {
                return Err(EngineError::Stopped {
                    done: embedded.len(),
                    total,
                });
            }
        }
        Ok(embedded)
    }
}

/// Embeddings made elsewhere, for users who already have them: a NumPy `.npy` file of shape
/// (samples, width), float32 or float64, one row per sample in dataset order. Rows are
/// normalised here, as the model's are. Returns the rows and their width.
///
/// # Errors
/// [`EngineError::Model`] naming the file when it cannot be read, is not a 2-D float array in
/// C order, or has another number of rows than `samples`.
pub fn read_precomputed(path: &Path, samples: usize) -> Result<(Vec<f32>, usize), EngineError> {
    let file = Precomputed::open(path, samples)?;
    Ok((file.rows(0..samples)?, file.dim()))
}

/// A `.npy` file of precomputed embeddings, checked, whose rows are read where they lie: an
/// embedding shard of a million-row file reads only its own, a block at a time.
#[derive(Debug)]
pub struct Precomputed {
    path: std::path::PathBuf,
    file: std::fs::File,
    /// Where the array starts.
    offset: u64,
    dim: usize,
    /// Bytes per value (4 or 8).
    width: usize,
    big_endian: bool,
}

impl Precomputed {
    /// Opens and checks `path` as [`read_precomputed`] describes.
    ///
    /// # Errors
    /// As [`read_precomputed`].
    pub fn open(path: &Path, samples: usize) -> Result<Self, EngineError> {
        let fail = |problem: String| EngineError::Model {
            path: path.to_path_buf(),
            problem,
        };
        let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let npy = npyz::NpyFile::new(std::io::BufReader::new(&file))
            .map_err(|e| fail(format!("not a NumPy .npy file: {e}")))?;
        let &[count, dim] = npy.shape() else {
            return Err(fail(format!(
                "embeddings must be a 2-D array (samples x width), this one has shape {:?}",
                npy.shape()
            )));
        };
        if npy.order() != npyz::Order::C {
            return Err(fail(
                "the array is in Fortran order; save it with numpy.ascontiguousarray".into(),
            ));
        }
        if count as usize != samples {
            return Err(fail(format!(
                "{count} rows of embeddings, but the dataset has {samples} samples"
            )));
        }
        let descr = npy.dtype().descr().trim_matches('\'').to_string();
        let width = match descr.as_str() {
            "<f4" | ">f4" => 4,
            "<f8" | ">f8" => 8,
            other => {
                return Err(fail(format!(
                    "embeddings must be float32 or float64, not {other}"
                )))
            }
        };
        if dim == 0 {
            return Err(fail("embeddings must be at least 1 wide".into()));
        }
        let offset = data_offset(&file).map_err(|e| fail(format!("cannot read the array: {e}")))?;
        Ok(Precomputed {
            path: path.to_path_buf(),
            file,
            offset,
            dim: dim as usize,
            width,
            big_endian: descr.starts_with('>'),
        })
    }

    /// Width of a row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Rows `rows`, normalised, one after another.
    ///
    /// # Errors
    /// [`EngineError::Model`] naming the file when they cannot be read or a value is not
    /// finite.
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Result<Vec<f32>, EngineError> {
        let fail = |problem: String| EngineError::Model {
            path: self.path.clone(),
            problem,
        };
        let (dim, width) = (self.dim, self.width);
        let mut bytes = vec![0u8; rows.len() * dim * width];
        let at = self.offset + (rows.start * dim * width) as u64;
        std::os::unix::fs::FileExt::read_exact_at(&self.file, &mut bytes, at)
            .map_err(|e| fail(format!("cannot read the array: {e}")))?;
        let big = self.big_endian;
        let mut vectors: Vec<f32> = match width {
            4 => bytes
                .chunks_exact(4)
                .map(|b| {
                    let b = b.try_into().expect("4 bytes");
                    if big {
                        f32::from_be_bytes(b)
                    } else {
                        f32::from_le_bytes(b)
                    }
                })
                .collect(),
            _ => bytes
                .chunks_exact(8)
                .map(|b| {
                    let b = b.try_into().expect("8 bytes");
                    (if big {
                        f64::from_be_bytes(b)
                    } else {
                        f64::from_le_bytes(b)
                    }) as f32
                })
                .collect(),
        };
        if vectors.iter().any(|x| !x.is_finite()) {
            return Err(fail("embeddings must be finite".into()));
        }
        vectors.chunks_exact_mut(dim).for_each(l2_normalise);
        Ok(vectors)
    }
}

/// Where a `.npy` file's array starts: after the magic, the version, the header's length
/// (2 bytes in format 1, 4 in formats 2 and 3) and the header.
fn data_offset(file: &std::fs::File) -> std::io::Result<u64> {
    let mut prefix = [0u8; 12];
    std::os::unix::fs::FileExt::read_exact_at(file, &mut prefix, 0)?;
    Ok(match prefix[6] {
        1 => 10 + u64::from(u16::from_le_bytes([prefix[8], prefix[9]])),
        _ => {
            12 + u64::from(u32::from_le_bytes(
                prefix[8..12].try_into().expect("4 bytes"),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NumPy `.npy` file (format 1.0) of `rows` x `dim` values of type `descr`.
    fn npy(path: &Path, descr: &str, shape: &str, data: &[u8]) {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend(data);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn precomputed_embeddings_are_read_normalised_or_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let f4 = dir.path().join("f4.npy");
        let values = [3.0f32, 4.0, 0.0, 2.0];
        npy(&f4, "<f4", "(2, 2)", &values.map(f32::to_le_bytes).concat());
        assert_eq!(
            read_precomputed(&f4, 2).unwrap(),
            (vec![0.6, 0.8, 0.0, 1.0], 2)
        );
        let f8 = dir.path().join("f8.npy");
        npy(
            &f8,
            "<f8",
            "(2, 2)",
            &values.map(|v| f64::from(v).to_le_bytes()).concat(),
        );
        assert_eq!(
            read_precomputed(&f8, 2).unwrap(),
            (vec![0.6, 0.8, 0.0, 1.0], 2)
        );
        for (problem, expected) in [
            (
                read_precomputed(&f4, 3),
                "2 rows of embeddings, but the dataset has 3 samples",
            ),
            (
                read_precomputed(&dir.path().join("none.npy"), 2),
                "cannot read",
            ),
        ] {
            let message = problem.unwrap_err().to_string();
            assert!(
                message.contains(expected) && message.contains(".npy"),
                "{message}"
            );
        }
        let ints = dir.path().join("i4.npy");
        npy(&ints, "<i4", "(2, 2)", &[0u8; 16]);
        let message = read_precomputed(&ints, 2).unwrap_err().to_string();
        assert!(message.contains("float32 or float64, not <i4"), "{message}");
        let flat = dir.path().join("flat.npy");
        npy(&flat, "<f4", "(4,)", &values.map(f32::to_le_bytes).concat());
        let message = read_precomputed(&flat, 4).unwrap_err().to_string();
        assert!(message.contains("2-D array"), "{message}");
    }

    #[test]
    fn normalises_to_unit_length() {
        let mut v = [3.0f32, 4.0];
        l2_normalise(&mut v);
        assert!((v[0] - 0.6).abs() < 1e-7 && (v[1] - 0.8).abs() < 1e-7);
        let mut zero = [0.0f32; 3];
        l2_normalise(&mut zero);
        assert_eq!(zero, [0.0; 3]);
    }
}
