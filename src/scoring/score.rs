//! From logits to losses to MIWV.
//!
//! The loss of a response is the mean over its tokens of -log p(token | everything before it),
//! with a full-vocabulary log-softmax in f32. MIWV = one-shot loss - zero-shot loss: a positive
//! value means a relevant example made the response *harder*, which marks a weakness worth
//! training on.

use serde::{Deserialize, Serialize};

/// log p(`token`) under the softmax of one row of logits.
///
/// Only the log-sum-exp and the target's logit are needed, so no normalised row is
/// materialised: one pass finds the maximum, one sums `exp(l - max)` with a polynomial `exp`
/// that the compiler vectorises (a libm `exp` per entry costs more than the decode for large
/// vocabularies; the polynomial is accurate to about 1e-7 relative).
pub fn log_prob(logits: &[f32], token: usize) -> f32 {
    let max = max_of(logits);
    logits[token] - max - sum_exp(logits, max).ln()
}

const LANES: usize = 16;

fn max_of(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = m.max(v);
        }
    }
    rest.iter()
        .chain(&lanes)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

fn sum_exp(x: &[f32], max: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (acc, &v) in lanes.iter_mut().zip(chunk) {
            *acc += exp_nonpositive(v - max);
        }
    }
    let tail: f32 = rest.iter().map(|&v| exp_nonpositive(v - max)).sum();
    lanes.iter().sum::<f32>() + tail
}

/// `exp(x)` for `x <= 0`, branch-free so loops over it vectorise: `2^n * e^r` with
/// `n = round(x / ln 2)`, `|r| <= ln 2 / 2` and a degree-6 Taylor polynomial for `e^r`.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting it rounds to integer
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// Mean negative log-probability; NaN for an empty slice.
pub fn mean_loss(log_probs: &[f32]) -> f32 {
    if log_probs.is_empty() {
        return f32::NAN;
    }
    -log_probs.iter().map(|&lp| f64::from(lp)).sum::<f64>() as f32 / log_probs.len() as f32
}

/// Why a sample cannot be scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unscorable {
    /// The response has no tokens.
    EmptyResponse,
    /// The zero-shot sequence alone does not fit the context.
    TooLong,
    /// The zero-shot sequence fits but the one-shot sequence does not: the example is never
    /// cut, so there is no one-shot loss (the zero-shot loss is computed).
    ExampleTooLong,
    /// There is no other sample to use as the example.
    NoNeighbour,
}

impl Unscorable {
    /// What the reason means, for a run whose sequences may have at most `limit` tokens.
    pub fn explain(self, limit: usize) -> String {
        match self {
            Unscorable::EmptyResponse => "no response token to score".into(),
            Unscorable::TooLong => format!("the sample alone is longer than {limit} tokens"),
            Unscorable::ExampleTooLong => format!(
                "the example and the sample together are longer than {limit} tokens \
                 (zero-shot loss computed)"
            ),
            Unscorable::NoNeighbour => "no other sample to be the example".into(),
        }
    }

    /// The reason as `scores.jsonl` spells it (`too_long`): its serde name, so the two cannot
    /// differ.
    pub fn name(self) -> String {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::String(name)) => name,
            _ => format!("{self:?}"),
        }
    }
}

/// A sample's scores, or why it has none.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scores {
    /// L(y | x).
    pub loss_zero_shot: f32,
    /// L(y | example, x).
    pub loss_one_shot: f32,
    /// `loss_one_shot - loss_zero_shot`; NaN when undefined.
    pub miwv: f32,
    /// Why the sample could not be scored.
    pub reason: Option<Unscorable>,
}

impl Scores {
    /// Scores from the two losses.
    pub fn from_losses(loss_zero_shot: f32, loss_one_shot: f32) -> Self {
        Self {
            loss_zero_shot,
            loss_one_shot,
            miwv: loss_one_shot - loss_zero_shot,
            reason: None,
        }
    }

    /// An undefined score; `loss_zero_shot` is kept when it could be computed.
    pub fn unscorable(reason: Unscorable, loss_zero_shot: f32) -> Self {
        Self {
            loss_zero_shot,
            loss_one_shot: f32::NAN,
            miwv: f32::NAN,
            reason: Some(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_prob_matches_the_definition() {
        let logits = [1.0f32, 2.0, 3.0, -1.0];
        let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        for (t, &l) in logits.iter().enumerate() {
            let expected = f64::from(l) - z.ln();
            assert!((f64::from(log_prob(&logits, t)) - expected).abs() < 1e-6);
        }
        // Large logits must not overflow.
        let big = [1000.0f32, 1000.0];
        assert!((log_prob(&big, 0) - (0.5f32).ln()).abs() < 1e-6);
    }

    #[test]
    fn fast_log_softmax_matches_f64_on_a_large_random_row() {
        // A vocabulary-sized row with a wide spread of logits.
        let mut state = 12345u64;
        let row: Vec<f32> = (0..49_157)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 40.0 - 25.0
            })
            .collect();
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
        for t in [0, 1, 777, 49_156] {
            let exact = row[t] as f64 - max - z.ln();
            assert!((log_prob(&row, t) as f64 - exact).abs() < 1e-5, "token {t}");
        }
        for x in [0.0f32, -0.3, -1.0, -10.5, -50.0, -86.9] {
            let rel = ((exp_nonpositive(x) as f64) / (x as f64).exp() - 1.0).abs();
            assert!(rel < 1e-6, "exp({x}) off by {rel}");
        }
    }

    #[test]
    fn mean_response_loss_on_hand_made_logits() {
        // Three response tokens scored from three logit rows over a 3-token vocabulary.
        let rows = [[0.0f32, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 10.0]];
        let targets = [1usize, 0, 2];
        let lps: Vec<f32> = rows
            .iter()
            .zip(targets)
            .map(|(r, t)| log_prob(r, t))
            .collect();
        let expected =
            (3f64.ln() + (1.0 + 2.0 * (-2f64).exp()).ln() + (1.0 + 2.0 * (-10f64).exp()).ln())
                / 3.0;
        assert!((f64::from(mean_loss(&lps)) - expected).abs() < 1e-6);
        assert!(mean_loss(&[]).is_nan());
        let s = Scores::from_losses(1.5, 2.0);
        assert_eq!(s.miwv, 0.5);
    }
}
