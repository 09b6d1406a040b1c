//! Embedding each sample's prompts (instruction + input, or a conversation's user messages;
//! never a response) for retrieval.
//!
//! Vectors are mean-pooled by llama.cpp and L2-normalised here, so inner product is cosine.

use crate::dataset::Sample;
use crate::engine::{Embedder, EngineError};
use crate::plan::{pack, Capacity};

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
    mut progress: impl FnMut(usize),
) -> Result<(Vec<f32>, usize), EngineError> {
    let tokens: Vec<_> = samples
        .iter()
        .map(|s| embedder.tokenize(&format!("{prefix}{}", s.retrieval_text())))
        .collect();
    let lengths: Vec<usize> = tokens.iter().map(Vec::len).collect();
    let capacity = Capacity {
        tokens: embedder.max_batch_tokens(),
        sequences: embedder.max_sequences(),
    };
    let mut rows: Vec<Vec<f32>> = vec![Vec::new(); samples.len()];
    let mut done = 0;
    for batch in pack(&lengths, capacity) {
        done += batch.len();
        let texts: Vec<Vec<_>> = batch.iter().map(|&i| tokens[i].clone()).collect();
        for (&i, mut vector) in batch.iter().zip(embedder.embed(&texts)?) {
            l2_normalise(&mut vector);
            rows[i] = vector;
        }
        progress(done);
    }
    let dim = rows.first().map_or(0, Vec::len);
    Ok((rows.concat(), dim))
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
