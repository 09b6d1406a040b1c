//! Comparing two runs' scores: how far a change of quantisation, model or embedder (or an
//! independent reference implementation) moves the ranking and the selection.
//!
//! A selection is only as trustworthy as its ranking is stable; correlations say how much the
//! order moved, selection overlaps say what the user would actually have trained on.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::scoring::select::{top_by_score, Budget};
use crate::state::schema::{read_scores, SchemaError, ScoreRow};

/// One side of a comparison: a `scores.jsonl` read by id.
#[derive(Debug, Clone)]
pub struct ScoreFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Sample ids, in file order.
    pub ids: Vec<String>,
    /// MIWV per sample (NaN where null).
    pub miwv: Vec<f32>,
    /// Zero-shot loss per sample, where the file has it.
    pub loss_zero_shot: Vec<f32>,
    /// One-shot loss per sample, where the file has it.
    pub loss_one_shot: Vec<f32>,
    /// The run's own selection (`selected` fields), when the file has them.
    pub selected: Option<Vec<bool>>,
}

/// Why a comparison cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// A score file could not be read.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The two files do not score the same samples.
    #[error("{a} and {b} score different samples: {problem}")]
    Mismatch {
        /// First file.
        a: PathBuf,
        /// Second file.
        b: PathBuf,
        /// The first difference found.
        problem: String,
    },
}

impl ScoreFile {
    /// Reads a `scores.jsonl`, or the one inside an output directory.
    ///
    /// # Errors
    /// [`CompareError::Schema`] naming the file, and the line and field of a bad row.
    pub fn read(path: &Path) -> Result<Self, CompareError> {
        let path = if path.is_dir() {
            path.join("scores.jsonl")
        } else {
            path.to_path_buf()
        };
        let rows = read_scores(&path)?;
        Ok(Self::from_rows(path, &rows))
    }

    /// The columns a comparison needs, from rows of `scores.jsonl`.
    pub fn from_rows(path: PathBuf, rows: &[ScoreRow]) -> Self {
        ScoreFile {
            path,
            ids: rows.iter().map(|r| r.id.clone()).collect(),
            miwv: rows.iter().map(|r| r.miwv).collect(),
            loss_zero_shot: rows.iter().map(|r| r.loss_zero_shot).collect(),
            loss_one_shot: rows.iter().map(|r| r.loss_one_shot).collect(),
            selected: rows.iter().map(|r| r.selected).collect(),
        }
    }
}

/// The share of one selection size both sides agree on.
#[derive(Debug, Clone, Serialize)]
pub struct Overlap {
    /// What was selected: a ratio such as "5%" or "the runs' own".
    pub budget: String,
    /// Samples selected by the first side.
    pub selected_a: usize,
    /// Samples selected by the second side.
    pub selected_b: usize,
    /// Samples selected by both.
    pub shared: usize,
    /// `shared / max(selected_a, selected_b)`: 1 when the selections are the same.
    pub overlap: f64,
}

/// Mean and largest absolute difference of one quantity over samples defined on both sides.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    /// Samples where both values are defined.
    pub samples: usize,
    /// Mean |a - b|.
    pub mean_abs: f64,
    /// Largest |a - b|.
    pub max_abs: f64,
    /// Samples with |a - b| above 0.01 nats.
    pub above_0_01: usize,
}

/// What `miwv compare` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// First file.
    pub a: PathBuf,
    /// Second file.
    pub b: PathBuf,
    /// Samples in each file.
    pub samples: usize,
    /// Samples with a MIWV on both sides.
    pub scored_in_both: usize,
    /// Spearman rank correlation of MIWV (ties get their mean rank).
    pub spearman: f64,
    /// Kendall's tau-b of MIWV.
    pub kendall_tau_b: f64,
    /// Per-sample differences of MIWV and of both losses.
    pub miwv_difference: Difference,
    /// Zero-shot loss differences.
    pub loss_zero_shot_difference: Option<Difference>,
    /// One-shot loss differences.
    pub loss_one_shot_difference: Option<Difference>,
    /// Selection overlaps at each asked ratio, then at the runs' own selection.
    pub overlaps: Vec<Overlap>,
}

/// [`compare`] of the score files at `a` and `b` (each a `scores.jsonl` or a directory holding
/// one).
///
/// # Errors
/// As [`ScoreFile::read`] and [`compare`].
pub fn compare_files(a: &Path, b: &Path, ratios: &[f64]) -> Result<Comparison, CompareError> {
    compare(&ScoreFile::read(a)?, &ScoreFile::read(b)?, ratios)
}

/// Compares two score files sample by sample (matched by id), with top-k overlaps at each of
/// `ratios`.
///
/// # Errors
/// [`CompareError::Mismatch`] when the files do not hold the same ids.
pub fn compare(a: &ScoreFile, b: &ScoreFile, ratios: &[f64]) -> Result<Comparison, CompareError> {
    let order = match_ids(a, b)?;
    let in_a_order = |values: &[f32]| order.iter().map(|&j| values[j]).collect::<Vec<f32>>();
    let b_miwv = in_a_order(&b.miwv);
    let b_selected = b
        .selected
        .as_ref()
        .map(|s| order.iter().map(|&j| s[j]).collect::<Vec<bool>>());

    let both: Vec<usize> = (0..a.ids.len())
        .filter(|&i| !a.miwv[i].is_nan() && !b_miwv[i].is_nan())
        .collect();
    let x: Vec<f64> = both.iter().map(|&i| f64::from(a.miwv[i])).collect();
    let y: Vec<f64> = both.iter().map(|&i| f64::from(b_miwv[i])).collect();
    Ok(Comparison {
        a: a.path.clone(),
        b: b.path.clone(),
        samples: a.ids.len(),
        scored_in_both: both.len(),
        spearman: spearman(&x, &y),
        kendall_tau_b: kendall_tau_b(&x, &y),
        miwv_difference: difference(&a.miwv, &b_miwv).unwrap_or(Difference {
            samples: 0,
            mean_abs: f64::NAN,
            max_abs: f64::NAN,
            above_0_01: 0,
        }),
        loss_zero_shot_difference: difference(&a.loss_zero_shot, &in_a_order(&b.loss_zero_shot)),
        loss_one_shot_difference: difference(&a.loss_one_shot, &in_a_order(&b.loss_one_shot)),
        overlaps: overlaps(a, &b_miwv, b_selected.as_deref(), ratios),
    })
}

/// For each of `a`'s rows, the position of the row with the same id in `b`.
fn match_ids(a: &ScoreFile, b: &ScoreFile) -> Result<Vec<usize>, CompareError> {
    let mismatch = |problem: String| CompareError::Mismatch {
        a: a.path.clone(),
        b: b.path.clone(),
        problem,
    };
    if a.ids.len() != b.ids.len() {
        return Err(mismatch(format!(
            "{} samples against {}",
            a.ids.len(),
            b.ids.len()
        )));
    }
    let position: std::collections::HashMap<&str, usize> = b
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    a.ids
        .iter()
        .map(|id| {
            position
                .get(id.as_str())
                .copied()
                .ok_or_else(|| mismatch(format!("id {id:?} is only in the first")))
        })
        .collect()
}

/// Top-k overlaps at each ratio, then of the runs' own selections when both recorded one;
/// `b_miwv` and `b_selected` are in `a`'s order.
fn overlaps(
    a: &ScoreFile,
    b_miwv: &[f32],
    b_selected: Option<&[bool]>,
    ratios: &[f64],
) -> Vec<Overlap> {
    let n = a.ids.len();
    let mut overlaps: Vec<Overlap> = ratios
        .iter()
        .map(|&r| {
            let count = Budget::Ratio(r).count(n);
            let top_a = top_by_score(&a.miwv, count);
            let top_b = top_by_score(b_miwv, count);
            overlap(format!("{}%", r * 100.0), &top_a, &top_b)
        })
        .collect();
    if let (Some(sel_a), Some(sel_b)) = (&a.selected, b_selected) {
        let chosen = |selected: &[bool]| -> Vec<usize> {
            (0..selected.len()).filter(|&i| selected[i]).collect()
        };
        overlaps.push(overlap(
            "the runs' own".into(),
            &chosen(sel_a),
            &chosen(sel_b),
        ));
    }
    overlaps
}

/// Mean and largest |x - y| over the pairs defined on both sides; `None` when there is none.
fn difference(xs: &[f32], ys: &[f32]) -> Option<Difference> {
    let pairs: Vec<f64> = xs
        .iter()
        .zip(ys)
        .filter(|(x, y)| !x.is_nan() && !y.is_nan())
        .map(|(x, y)| f64::from((x - y).abs()))
        .collect();
    (!pairs.is_empty()).then(|| Difference {
        samples: pairs.len(),
        mean_abs: pairs.iter().sum::<f64>() / pairs.len() as f64,
        max_abs: pairs.iter().copied().fold(0.0, f64::max),
        above_0_01: pairs.iter().filter(|&&d| d > 0.01).count(),
    })
}

fn overlap(budget: String, a: &[usize], b: &[usize]) -> Overlap {
    let set: std::collections::HashSet<usize> = a.iter().copied().collect();
    let shared = b.iter().filter(|i| set.contains(i)).count();
    let most = a.len().max(b.len());
    Overlap {
        budget,
        selected_a: a.len(),
        selected_b: b.len(),
        shared,
        overlap: if most == 0 {
            1.0
        } else {
            shared as f64 / most as f64
        },
    }
}

impl Comparison {
    /// A short plain-text table.
    pub fn render(&self) -> String {
        let mut out = format!(
            "A: {}\nB: {}\n{} samples, {} scored in both\n\nMIWV Spearman   {:.4}\nMIWV Kendall b  {:.4}\n",
            self.a.display(),
            self.b.display(),
            self.samples,
            self.scored_in_both,
            self.spearman,
            self.kendall_tau_b
        );
        out.push_str("\n|A - B|          mean      max   > 0.01\n");
        for (name, d) in [
            ("MIWV", Some(&self.miwv_difference)),
            ("zero-shot loss", self.loss_zero_shot_difference.as_ref()),
            ("one-shot loss", self.loss_one_shot_difference.as_ref()),
        ] {
            if let Some(d) = d {
                out.push_str(&format!(
                    "{name:<15} {:>7.4} {:>8.4} {:>8}\n",
                    d.mean_abs, d.max_abs, d.above_0_01
                ));
            }
        }
        out.push_str("\nselection        A     B  shared  overlap\n");
        for o in &self.overlaps {
            out.push_str(&format!(
                "{:<14} {:>3} {:>5} {:>7}  {:>7.3}\n",
                o.budget, o.selected_a, o.selected_b, o.shared, o.overlap
            ));
        }
        out
    }
}

/// Ranks from 1, ties sharing their mean rank.
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&i, &j| values[i].total_cmp(&values[j]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        let mean = (start + end + 1) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = mean;
        }
        start = end;
    }
    ranks
}

/// Spearman's rho: Pearson correlation of the ranks. NaN for fewer than two points or a
/// constant side.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    let (rx, ry) = (ranks(x), ranks(y));
    let n = rx.len() as f64;
    if rx.len() < 2 {
        return f64::NAN;
    }
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in rx.iter().zip(&ry) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    sxy / (sxx * syy).sqrt()
}

/// Kendall's tau-b in O(n log n) (Knight's algorithm): sort by x, count the discordant pairs
/// as the swaps a merge sort by y needs, correcting for ties on either side.
pub fn kendall_tau_b(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len();
    if n < 2 {
        return f64::NAN;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| x[i].total_cmp(&x[j]).then(y[i].total_cmp(&y[j])));
    let pairs = |run: usize| (run * run.saturating_sub(1) / 2) as u64;
    let tied_runs = |keys: &[usize], same: &dyn Fn(usize, usize) -> bool| -> u64 {
        let mut total = 0;
        let mut start = 0;
        for i in 1..=keys.len() {
            if i == keys.len() || !same(keys[i - 1], keys[i]) {
                total += pairs(i - start);
                start = i;
            }
        }
        total
    };
    let tied_x = tied_runs(&order, &|i, j| x[i] == x[j]);
    let tied_xy = tied_runs(&order, &|i, j| x[i] == x[j] && y[i] == y[j]);
    let mut by_y: Vec<f64> = order.iter().map(|&i| y[i]).collect();
    let swaps = merge_sort_swaps(&mut by_y);
    let tied_y = {
        let idx: Vec<usize> = (0..n).collect();
        tied_runs(&idx, &|i, j| by_y[i] == by_y[j])
    };
    let total = pairs(n);
    let concordant_minus_discordant =
        total as f64 - (tied_x + tied_y) as f64 + tied_xy as f64 - 2.0 * swaps as f64;
    concordant_minus_discordant / (((total - tied_x) as f64) * ((total - tied_y) as f64)).sqrt()
}

/// Sorts `v` and returns how many inversions (pairs out of order) it had.
fn merge_sort_swaps(v: &mut [f64]) -> u64 {
    let n = v.len();
    if n < 2 {
        return 0;
    }
    let mid = n / 2;
    let mut swaps = merge_sort_swaps(&mut v[..mid]) + merge_sort_swaps(&mut v[mid..]);
    let mut merged = Vec::with_capacity(n);
    let (mut i, mut j) = (0, mid);
    while i < mid && j < n {
        if v[j] < v[i] {
            merged.push(v[j]);
            swaps += (mid - i) as u64;
            j += 1;
        } else {
            merged.push(v[i]);
            i += 1;
        }
    }
    merged.extend_from_slice(&v[i..mid]);
    merged.extend_from_slice(&v[j..n]);
    v.copy_from_slice(&merged);
    swaps
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tau-b by its definition, over every pair.
    fn kendall_by_pairs(x: &[f64], y: &[f64]) -> f64 {
        let (mut concordant, mut discordant, mut only_x, mut only_y) = (0.0_f64, 0.0, 0.0, 0.0);
        for i in 0..x.len() {
            for j in i + 1..x.len() {
                let (dx, dy) = (x[i] - x[j], y[i] - y[j]);
                if dx == 0.0 && dy == 0.0 {
                } else if dx == 0.0 {
                    only_x += 1.0;
                } else if dy == 0.0 {
                    only_y += 1.0;
                } else if dx * dy > 0.0 {
                    concordant += 1.0;
                } else {
                    discordant += 1.0;
                }
            }
        }
        (concordant - discordant)
            / ((concordant + discordant + only_y) * (concordant + discordant + only_x)).sqrt()
    }

    #[test]
    fn kendall_matches_the_pairwise_definition_with_ties() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 7) as f64
        };
        for n in [2, 3, 10, 57, 200] {
            let x: Vec<f64> = (0..n).map(|_| next()).collect();
            let y: Vec<f64> = (0..n).map(|_| next()).collect();
            let (fast, slow) = (kendall_tau_b(&x, &y), kendall_by_pairs(&x, &y));
            assert!(
                (fast - slow).abs() < 1e-12 || (fast.is_nan() && slow.is_nan()),
                "n={n}: {fast} vs {slow}"
            );
        }
    }

    #[test]
    fn correlations_of_known_orders() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let reversed = [5.0, 4.0, 3.0, 2.0, 1.0];
        assert!((spearman(&x, &x) - 1.0).abs() < 1e-12);
        assert!((kendall_tau_b(&x, &x) - 1.0).abs() < 1e-12);
        assert!((spearman(&x, &reversed) + 1.0).abs() < 1e-12);
        assert!((kendall_tau_b(&x, &reversed) + 1.0).abs() < 1e-12);
        // One adjacent swap: rho = 1 - 6*2/(5*24) = 0.9; tau = (9 - 1)/10 = 0.8.
        let swapped = [1.0, 2.0, 4.0, 3.0, 5.0];
        assert!((spearman(&x, &swapped) - 0.9).abs() < 1e-12);
        assert!((kendall_tau_b(&x, &swapped) - 0.8).abs() < 1e-12);
        // Mean ranks for ties.
        assert_eq!(ranks(&[3.0, 1.0, 3.0, 2.0]), [3.5, 1.0, 3.5, 2.0]);
    }
}
