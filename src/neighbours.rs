//! Finding each sample's most similar *other* sample with FAISS.
//!
//! Exact inner-product search over L2-normalised vectors is cosine similarity. FAISS batches
//! all queries into one BLAS product and is the path to approximate and GPU indexes for very
//! large datasets.

use crate::schema::Neighbour;
use faiss::index::IndexImpl;
use faiss::{Index, MetricType};

/// FAISS failed.
#[derive(Debug, thiserror::Error)]
#[error("FAISS: {0}")]
pub struct NeighbourError(String);

/// Similarities closer than this are ties, broken by the lower index: BLAS blocking can give
/// identical vectors dot products that differ in the last bits.
const TIE: f32 = 1e-6;

/// For every row of `vectors` (`dim` wide, normalised), the most similar other row; ties go to
/// the lowest index. `None` when the dataset has a single sample.
///
/// # Errors
/// [`NeighbourError`] when FAISS fails.
pub fn nearest_others(
    vectors: &[f32],
    dim: usize,
) -> Result<Vec<Option<Neighbour>>, NeighbourError> {
    let n = vectors.len().checked_div(dim).unwrap_or(0);
    if n < 2 {
        return Ok(vec![None; n]);
    }
    let fail = |e: faiss::error::Error| NeighbourError(e.to_string());
    let mut index: IndexImpl =
        faiss::index_factory(dim as u32, "Flat", MetricType::InnerProduct).map_err(fail)?;
    index.add(vectors).map_err(fail)?;
    // The query itself, an exact duplicate or two, and a margin to see a tie end.
    let mut k = n.min(4);
    let result = index.search(vectors, k).map_err(fail)?;
    let mut found: Vec<Option<Neighbour>> = (0..n)
        .map(|i| {
            best_other(
                i,
                &result.labels[i * k..(i + 1) * k],
                &result.distances[i * k..(i + 1) * k],
            )
        })
        .collect();
    // Rows whose tie may continue past the k results are searched again, wider.
    let mut unsettled: Vec<usize> = (0..n)
        .filter(|&i| tie_reaches_end(&result.distances[i * k..(i + 1) * k], found[i]))
        .collect();
    while !unsettled.is_empty() && k < n {
        k = (k * 4).min(n);
        for i in std::mem::take(&mut unsettled) {
            let row = index
                .search(&vectors[i * dim..(i + 1) * dim], k)
                .map_err(fail)?;
            found[i] = best_other(i, &row.labels, &row.distances);
            if tie_reaches_end(&row.distances, found[i]) {
                unsettled.push(i);
            }
        }
    }
    Ok(found)
}

fn best_other(query: usize, labels: &[faiss::Idx], similarities: &[f32]) -> Option<Neighbour> {
    labels
        .iter()
        .zip(similarities)
        .filter_map(|(label, &similarity)| {
            let index = label.get()? as usize;
            (index != query).then_some(Neighbour { index, similarity })
        })
        .reduce(|best, next| {
            let better = next.similarity > best.similarity + TIE
                || ((next.similarity - best.similarity).abs() <= TIE && next.index < best.index);
            if better {
                next
            } else {
                best
            }
        })
}

fn tie_reaches_end(similarities: &[f32], best: Option<Neighbour>) -> bool {
    match (best, similarities.last()) {
        (Some(best), Some(&last)) => (best.similarity - last).abs() <= TIE,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::l2_normalise;

    fn rows(raw: &[[f32; 3]]) -> Vec<f32> {
        raw.iter()
            .flat_map(|r| {
                let mut r = *r;
                l2_normalise(&mut r);
                r
            })
            .collect()
    }

    #[test]
    fn never_its_own_neighbour_and_ties_go_to_the_lowest_index() {
        // Rows 1, 3, 4, 5 and 6 are identical: each must pick the lowest *other* copy.
        let v = rows(&[
            [1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.9, 0.1, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 1.0, 0.0],
        ]);
        let found = nearest_others(&v, 3).unwrap();
        let picked: Vec<usize> = found.iter().map(|n| n.unwrap().index).collect();
        assert_eq!(picked, [2, 3, 0, 1, 1, 1, 1]);
        assert!((found[1].unwrap().similarity - 1.0).abs() < 1e-5);
    }

    #[test]
    fn a_single_sample_has_no_neighbour() {
        assert_eq!(
            nearest_others(&rows(&[[1.0, 2.0, 3.0]]), 3).unwrap(),
            vec![None]
        );
    }
}
