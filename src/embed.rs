//! Embedding each sample's prompts (instruction + input, or a conversation's user messages;
//! never a response) for retrieval.
//!
//! Vectors are mean-pooled by llama.cpp and L2-normalised here, so inner product is cosine.

use std::ops::Range;

use crate::dataset::Sample;
use crate::engine::{Embedder, EngineError};
use crate::plan::{pack, Capacity};
use crate::prompt::Token;
use crate::shard::Shard;

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
/// `progress` gets the number of samples embedded so far after each batch.
///
/// # Errors
/// Engine failures, including a model that produces no embeddings.
pub fn embed_samples(
    embedder: &mut Embedder,
    samples: &[Sample],
    prefix: &str,
    progress: impl FnMut(usize),
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
    /// order. `progress` gets the number of samples embedded so far after each batch.
    ///
    /// # Errors
    /// Engine failures, including a model that produces no embeddings.
    pub fn embed(
        &self,
        embedder: &mut Embedder,
        range: Range<usize>,
        mut progress: impl FnMut(usize),
    ) -> Result<Vec<(usize, Vec<f32>)>, EngineError> {
        let mut embedded = Vec::new();
        for batch in &self.batches[range] {
            let texts: Vec<Vec<Token>> = batch.iter().map(|&i| self.tokens[i].clone()).collect();
            for (&i, mut vector) in batch.iter().zip(embedder.embed(&texts)?) {
                l2_normalise(&mut vector);
                embedded.push((i, vector));
            }
            progress(embedded.len());
        }
        Ok(embedded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
