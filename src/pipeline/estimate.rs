//! `miwv plan RUN`: what scoring a run will cost, said before any of it is spent.
//!
//! Once `neighbours` has saved the plan, every decode is known: its tokens, its segments,
//! the contexts its workers allocate. What is not known is this machine's speed with this
//! model, so a short calibration decodes the plan's first segments with the run's own
//! settings and model and times them; the estimate is the plan's tokens at that rate. It is a
//! rough figure: later segments may hold longer or shorter sequences than the first ones.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::Serialize;

use super::load_models;
use super::stages::{read_stage_record, saved_plan};
use crate::engine::ScorerPool;
use crate::scoring::scheduler::{Decoders, NoJournal};
use crate::scoring::sizes::ContextFit;
use crate::Error;

/// Seconds of work a suggested shard gets on this machine.
const SHARD_SECONDS: f64 = 3600.0;

/// The cost of scoring a planned run.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    /// Samples in the run.
    pub samples: usize,
    /// Samples that will get a MIWV.
    pub scorable: usize,
    /// Samples that will not, by reason.
    pub unscorable: BTreeMap<String, usize>,
    /// Tokens of every sample's zero-shot sequence, whether it fits or not.
    pub zero_shot_tokens: Distribution,
    /// Tokens of every one-shot sequence (the whole example, then the sample).
    pub one_shot_tokens: Distribution,
    /// How the context was fitted to them.
    pub context: ContextFit,
    /// Decode steps planned.
    pub steps: usize,
    /// Segments between checkpoints (what workers take and shards share out).
    pub segments: usize,
    /// Tokens the plan decodes, neighbour prefixes reused.
    pub tokens: usize,
    /// Tokens it would decode without reusing them.
    pub tokens_without_reuse: usize,
    /// Workers of one process, each with its own context.
    pub workers: usize,
    /// Each worker's context (KV cache, logits, compute), MiB.
    pub context_mib: u64,
    /// The model file, MiB (shared by the workers).
    pub weights_mib: u64,
    /// What the calibration decoded and how fast; `None` when it was not run.
    pub calibration: Option<Calibration>,
}

/// How long a kind of sequence is across the samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Distribution {
    /// Sequences counted.
    pub count: usize,
    /// The median, in tokens.
    pub median: usize,
    /// The 95th percentile (nearest rank).
    pub p95: usize,
    /// The longest.
    pub longest: usize,
}

impl Distribution {
    /// The distribution of `lengths` (zeros, for sequences that do not exist, left out).
    pub fn of(lengths: impl IntoIterator<Item = usize>) -> Self {
        let mut sorted: Vec<usize> = lengths.into_iter().filter(|&n| n > 0).collect();
        sorted.sort_unstable();
        let rank = |q: f64| {
            let at = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            sorted[at - 1]
        };
        if sorted.is_empty() {
            return Distribution::default();
        }
        Distribution {
            count: sorted.len(),
            median: rank(0.5),
            p95: rank(0.95),
            longest: sorted[sorted.len() - 1],
        }
    }

    /// `median 812, 95th percentile 1,630, longest 2,210 tokens`.
    pub fn render(&self) -> String {
        format!(
            "median {}, 95th percentile {}, longest {} tokens",
            self.median, self.p95, self.longest
        )
    }
}

/// A timed decode of the plan's first segments.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Calibration {
    /// Tokens decoded.
    pub tokens: usize,
    /// Wall seconds.
    pub seconds: f64,
}

impl Estimate {
    /// Seconds the whole plan takes at the calibrated rate.
    pub fn seconds(&self) -> Option<f64> {
        let c = self.calibration?;
        (c.tokens > 0).then(|| self.tokens as f64 * c.seconds / c.tokens as f64)
    }

    /// Shards of about an hour each on this machine (at least one, at most a segment each).
    pub fn suggested_shards(&self) -> Option<usize> {
        let seconds = self.seconds()?;
        Some(((seconds / SHARD_SECONDS).ceil() as usize).clamp(1, self.segments.max(1)))
    }

    /// The estimate as lines for a terminal.
    pub fn render(&self) -> String {
        let mut out = format!("samples: {} ({} scorable", self.samples, self.scorable);
        for (reason, count) in &self.unscorable {
            out += &format!(", {count} {reason}");
        }
        out += ")\n";
        out += &format!(
            "zero-shot sequences: {}\none-shot sequences:  {}\n",
            self.zero_shot_tokens.render(),
            self.one_shot_tokens.render()
        );
        let c = &self.context;
        out += &format!(
            "context: {} tokens (--ctx-size {}; at most {}{})\n",
            c.sizes.ctx_per_sequence,
            c.asked,
            c.limit,
            if self.one_shot_tokens.longest <= c.limit {
                ", every sequence fits"
            } else {
                ", longer sequences are not scored, never cut"
            }
        );
        let share = |t: usize| 100.0 * t as f64 / self.tokens_without_reuse.max(1) as f64;
        out += &format!(
            "tokens to decode: {} with neighbour reuse, {} without ({:.0}%)\n",
            self.tokens,
            self.tokens_without_reuse,
            share(self.tokens)
        );
        out += &format!(
            "decode steps: {} in {} segments\n",
            self.steps, self.segments
        );
        out += &format!(
            "memory: {} workers x {} MiB of context, plus {} MiB of weights\n",
            self.workers, self.context_mib, self.weights_mib
        );
        match (self.calibration, self.seconds(), self.suggested_shards()) {
            (Some(c), Some(seconds), Some(shards)) => {
                out += &format!(
                    "calibration: {} tokens in {:.1} s ({:.0} tokens/s on this machine)\n",
                    c.tokens,
                    c.seconds,
                    c.tokens as f64 / c.seconds
                );
                out += &format!(
                    "estimated scoring time here: {} in one process; \
                     suggested: `--shards {shards}` (about {} each)\n",
                    duration(seconds),
                    duration(seconds / shards as f64)
                );
            }
            _ => out += "calibration not run: no time estimate\n",
        }
        out
    }
}

fn duration(seconds: f64) -> String {
    match seconds {
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}

/// Estimates the cost of scoring the run in `run`, timing `calibrate_tokens` tokens of its
/// first segments (0: no calibration). Nothing is saved: the run's scoring is unchanged.
///
/// # Errors
/// A run without neighbours yet (naming the command), engine failures.
pub fn estimate(run: &Path, calibrate_tokens: usize) -> Result<Estimate, Error> {
    let config = read_stage_record(run)?.config;
    let loaded = load_models(&config)?;
    let (plan, fit) = saved_plan(
        &config,
        &loaded.model,
        &loaded.template,
        &loaded.state,
        None,
    )?;
    let table = plan.table();
    let mut unscorable = BTreeMap::new();
    for reason in table.failed.iter().flatten() {
        *unscorable.entry(reason.name()).or_insert(0) += 1;
    }
    let calibration = (calibrate_tokens > 0)
        .then(|| {
            let steps = plan.first_segments(calibrate_tokens);
            let pool = ScorerPool::new(&loaded.model, fit.sizes);
            let started = Instant::now();
            plan.decode(
                Decoders::Pool(&pool),
                steps.clone(),
                &mut NoJournal,
                &AtomicBool::new(false),
                |_| {},
            )?;
            Ok::<_, Error>(Calibration {
                tokens: plan.tokens_in(steps),
                seconds: started.elapsed().as_secs_f64(),
            })
        })
        .transpose()?;
    let mib = |bytes: u64| bytes / (1 << 20);
    Ok(Estimate {
        samples: table.len(),
        scorable: table.failed.iter().filter(|f| f.is_none()).count(),
        unscorable,
        zero_shot_tokens: Distribution::of(table.usage.iter().map(|u| u.tokens_zero_shot)),
        one_shot_tokens: Distribution::of(table.usage.iter().map(|u| u.tokens_one_shot)),
        context: fit,
        steps: plan.steps(),
        segments: plan.segment_count(),
        tokens: plan.tokens_in(0..plan.steps()),
        tokens_without_reuse: plan.tokens_without_reuse(),
        workers: fit.sizes.workers,
        context_mib: mib(loaded.model.context_memory(&fit.sizes).total()),
        weights_mib: mib(loaded.scoring_model.bytes),
        calibration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distributions_leave_out_missing_sequences() {
        let d = Distribution::of((1..=100).chain([0, 0]));
        assert_eq!((d.count, d.median, d.p95, d.longest), (100, 50, 95, 100));
        assert_eq!(Distribution::of([0, 0]), Distribution::default());
        assert_eq!(Distribution::of([7]).p95, 7);
    }
}
