//! From logits to losses to MIWV.
//!
//! The loss of a response is the mean over its tokens of -log p(token | everything before it),
//! with a full-vocabulary log-softmax in f32. MIWV = one-shot loss - zero-shot loss: a positive
//! value means a relevant example made the response *harder*, which marks a weakness worth
//! training on.

use serde::Serialize;

use crate::prompt::Unscorable;

/// log p(`token`) under the softmax of one row of logits.
///
/// Only the log-sum-exp and the target's logit are needed, so this is one pass for the max and
/// one for the sum, with no normalised row materialised.
pub fn log_prob(logits: &[f32], token: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    logits[token] - max - sum.ln()
}

/// Mean negative log-probability; NaN for an empty slice.
pub fn mean_loss(log_probs: &[f32]) -> f32 {
    if log_probs.is_empty() {
        return f32::NAN;
    }
    -log_probs.iter().map(|&lp| f64::from(lp)).sum::<f64>() as f32 / log_probs.len() as f32
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
