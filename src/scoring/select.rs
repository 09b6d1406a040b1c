//! Choosing the subset: the top floor(N * ratio) samples by MIWV.

/// How many samples to keep.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// A share of all samples (unscorable ones included in N), in (0, 1].
    Ratio(f64),
    /// An exact count.
    Count(usize),
}

impl Budget {
    /// The number of samples this budget keeps out of `n`.
    pub fn count(self, n: usize) -> usize {
        match self {
            // The epsilon keeps products such as 100 * 0.29 = 28.999999999999996 from losing one.
            Budget::Ratio(r) => ((n as f64 * r) + 1e-9).floor() as usize,
            Budget::Count(c) => c,
        }
        .min(n)
    }
}

/// Indices of the `count` highest scores, highest first; ties go to the lower index and NaN is
/// never selected (so fewer than `count` come back when too few scores are defined).
pub fn top_by_score(scores: &[f32], count: usize) -> Vec<usize> {
    let mut ranked: Vec<usize> = (0..scores.len()).filter(|&i| !scores[i].is_nan()).collect();
    ranked.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    ranked.truncate(count);
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_sizes_for_alpaca() {
        let n = 52_002;
        let sizes: Vec<usize> = [0.01, 0.05, 0.10, 0.15]
            .iter()
            .map(|&r| Budget::Ratio(r).count(n))
            .collect();
        assert_eq!(sizes, [520, 2600, 5200, 7800]);
        assert_eq!(Budget::Ratio(0.29).count(100), 29);
        assert_eq!(Budget::Ratio(1.0).count(7), 7);
        assert_eq!(Budget::Count(10).count(7), 7);
    }

    #[test]
    fn ranks_descending_with_stable_ties_and_no_nan() {
        let scores = [0.1, f32::NAN, 0.5, 0.1, -2.0, 0.5, f32::NAN];
        assert_eq!(top_by_score(&scores, 4), [2, 5, 0, 3]);
        assert_eq!(top_by_score(&scores, 100), [2, 5, 0, 3, 4]);
        assert_eq!(top_by_score(&[f32::NAN, f32::NAN], 1), Vec::<usize>::new());
    }
}
