//! Scoring every sample through the engine, with neighbour-prefix KV reuse.
//!
//! The one-shot sequence of sample i starts with exactly the zero-shot sequence of its
//! neighbour k, so k's zero-shot decode is also the prefix of every one-shot pass that uses k:
//! its cache is copied to a fresh slot and only `SEP block_i` is decoded there. That cuts the
//! tokens decoded per sample from about 3L to about 2L. [`crate::plan::schedule`] decides the
//! layout of every decode up front; this module builds the sequences, runs the plan and
//! folds the log-probabilities into losses. At the plan's checkpoints the losses so far go to
//! a [`Journal`], and a run that finds losses there resumes after them.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::dataset::Sample;
use crate::engine::{ContextSizes, Item, Model, Scorer};
use crate::neighbours::Neighbour;
use crate::plan::{digest, schedule, tokens_of, Limits, OneShot, Shape, Step, Work};
use crate::prompt::{Layout, ScoredSequence, Template, Unscorable};
use crate::score::Scores;
use crate::Error;

/// How scoring is run.
#[derive(Debug, Clone, Serialize)]
pub struct ScoringOptions {
    /// Context and batch sizes.
    pub sizes: ContextSizes,
    /// Reuse the neighbour's zero-shot cache as the one-shot prefix.
    pub kv_reuse: bool,
    /// Template.
    pub template: Template,
    /// End responses with EOS.
    pub append_eos: bool,
    /// Also score the responses alone, for IFD and Superfiltering.
    pub response_only: bool,
    /// Tokens decoded between checkpoints (see [`Limits::checkpoint_tokens`]).
    pub checkpoint_tokens: usize,
}

impl ScoringOptions {
    /// Slots held by parents waiting for children: half of them, so children always find room.
    pub fn held_slots(&self) -> usize {
        if self.kv_reuse && self.sizes.parallel >= 2 {
            self.sizes.parallel / 2
        } else {
            0
        }
    }
}

/// Token counts of one sample's passes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    /// Scored tokens.
    pub response_tokens: usize,
    /// Tokens before the response in the zero-shot sequence.
    pub prompt_tokens_zero_shot: usize,
    /// Tokens before the response in the one-shot sequence.
    pub prompt_tokens_one_shot: usize,
    /// Example tokens cut to fit the context.
    pub example_tokens_dropped: usize,
    /// Tokens this sample's passes put through the model (a reused prefix counts once, for
    /// the sample that owns it).
    pub tokens_decoded: usize,
    /// Whether the one-shot pass continued the neighbour's cache.
    pub reused_prefix: bool,
}

/// Which pass of a sample a loss belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pass {
    /// The sample's own prompt only.
    ZeroShot,
    /// The neighbour shown first as an example.
    OneShot,
    /// The responses alone, for IFD.
    ResponseOnly,
}

/// One computed mean response loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Loss {
    /// The sample's index.
    pub sample: usize,
    /// Which pass.
    pub pass: Pass,
    /// Mean negative log-likelihood of the response, in nats.
    pub value: f32,
}

/// Losses saved by an earlier, interrupted run of the same plan.
#[derive(Debug, Clone, Default)]
pub struct Saved {
    /// Steps of the plan they cover; always just after a checkpoint step.
    pub steps_done: usize,
    /// The losses those steps computed.
    pub losses: Vec<Loss>,
}

/// Where scoring keeps its progress, so that a stopped run can go on where it stopped.
pub trait Journal {
    /// Called once the plan is known (`digest` identifies it); returns what earlier runs of
    /// the same plan saved.
    ///
    /// # Errors
    /// When saved losses exist for a different plan or cannot be read.
    fn start(&mut self, digest: &str, steps: usize) -> Result<Saved, Error>;
    /// Keeps the losses computed since the last checkpoint; `steps_done` counts the steps
    /// finished so far.
    ///
    /// # Errors
    /// When they cannot be stored durably.
    fn save(&mut self, steps_done: usize, losses: &[Loss]) -> Result<(), Error>;
    /// Whether the user asked the run to stop.
    fn stop_requested(&self) -> bool;
}

/// A journal that keeps nothing: scoring runs to the end in one go.
pub struct NoJournal;

impl Journal for NoJournal {
    fn start(&mut self, _: &str, _: usize) -> Result<Saved, Error> {
        Ok(Saved::default())
    }
    fn save(&mut self, _: usize, _: &[Loss]) -> Result<(), Error> {
        Ok(())
    }
    fn stop_requested(&self) -> bool {
        false
    }
}

/// What a scoring run did, for `run.json` and the benchmark.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Stats {
    /// Planned decode steps.
    pub planned_steps: usize,
    /// Steps whose losses came from an earlier, interrupted run.
    pub resumed_steps: usize,
    /// `llama_decode` calls.
    pub decodes: usize,
    /// Tokens put through the model.
    pub tokens_decoded: usize,
    /// Logit rows turned into log-probabilities.
    pub scored_rows: usize,
    /// Cache copies from a parent slot.
    pub prefix_copies: usize,
    /// Seconds in cache copies and `llama_decode`.
    pub decode_seconds: f64,
    /// Seconds turning logit rows into log-probabilities.
    pub loss_seconds: f64,
}

/// Per-sample scores and usage, and run statistics.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// One per sample.
    pub scores: Vec<Scores>,
    /// One per sample.
    pub usage: Vec<Usage>,
    /// One per sample: L(y), the responses' loss alone; NaN unless asked for, or when the
    /// responses alone do not fit or leave nothing to score.
    pub response_only: Vec<f32>,
    /// The run as a whole.
    pub stats: Stats,
}

/// How far scoring is, for progress reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Decode steps done, resumed ones included.
    pub steps_done: usize,
    /// Decode steps planned.
    pub steps: usize,
    /// Tokens decoded, resumed steps' included.
    pub tokens_done: usize,
    /// Tokens the whole plan decodes.
    pub tokens: usize,
}

/// Scores every sample zero-shot and one-shot, resuming after what `journal` saved.
/// `progress` is called once the plan is known and after every decode.
///
/// # Errors
/// Engine and journal failures; [`Error::Interrupted`] when the journal asks to stop.
pub fn score_samples(
    model: &Model,
    samples: &[Sample],
    neighbours: &[Option<Neighbour>],
    options: &ScoringOptions,
    journal: &mut dyn Journal,
    mut progress: impl FnMut(Progress),
) -> Result<Outcome, Error> {
    let max_len = options.sizes.ctx_per_sequence;
    let layout = Layout::new(model, &options.template, options.append_eos);
    let blocks: Vec<_> = samples.iter().map(|s| layout.block(s)).collect();

    let mut usage = vec![Usage::default(); samples.len()];
    let mut failed: Vec<Option<Unscorable>> = vec![None; samples.len()];
    let mut zero: Vec<Option<ScoredSequence>> = Vec::with_capacity(samples.len());
    let mut one: Vec<Option<ScoredSequence>> = Vec::with_capacity(samples.len());
    for (i, block) in blocks.iter().enumerate() {
        usage[i].response_tokens = block.response_len();
        let z = layout.zero_shot(block, max_len);
        let o = match (&z, neighbours[i]) {
            (Err(reason), _) => Err(*reason),
            (Ok(_), None) => Err(Unscorable::NoNeighbour),
            (Ok(_), Some(n)) => layout.one_shot(Some(&blocks[n.index]), block, max_len),
        };
        if let Ok(z) = &z {
            usage[i].prompt_tokens_zero_shot = z.target().start;
        }
        match o {
            Ok((seq, cut)) => {
                usage[i].prompt_tokens_one_shot = seq.target().start;
                usage[i].example_tokens_dropped = cut;
                one.push(Some(seq));
            }
            Err(reason) => {
                failed[i] = Some(reason);
                one.push(None);
            }
        }
        zero.push(z.ok());
    }
    let alone: Vec<Option<ScoredSequence>> = blocks
        .iter()
        .map(|block| {
            options
                .response_only
                .then(|| layout.response_only(block, max_len))
                .flatten()
        })
        .collect();

    // A prefix can be reused when the neighbour's zero-shot sequence is decoded and the
    // example was not shortened to fit.
    let reuse = options.held_slots() > 0;
    let shapes: Vec<Shape> = (0..samples.len())
        .map(|i| Shape {
            zero_len: zero[i].as_ref().map(|s| s.tokens.len()),
            one_shot: match (&one[i], neighbours[i]) {
                (None, _) => OneShot::Skip,
                (Some(seq), Some(n))
                    if reuse && usage[i].example_tokens_dropped == 0 && zero[n.index].is_some() =>
                {
                    OneShot::Reuse {
                        parent: n.index,
                        suffix_len: seq.tokens.len()
                            - zero[n.index].as_ref().map_or(0, |z| z.tokens.len()),
                    }
                }
                (Some(seq), _) => OneShot::Whole {
                    len: seq.tokens.len(),
                },
            },
            alone_len: alone[i].as_ref().map(|s| s.tokens.len()),
        })
        .collect();
    let steps = schedule(
        &shapes,
        Limits {
            tokens: options.sizes.batch,
            slots: options.sizes.parallel,
            held: options.held_slots(),
            checkpoint_tokens: options.checkpoint_tokens,
        },
    );
    // What each sample's passes cost follows from the plan, whichever run decodes them.
    for e in steps.iter().flat_map(|s| &s.entries) {
        let i = match e.work {
            Work::ZeroShot(i) | Work::OneShotWhole(i) | Work::ResponseOnly(i) => i,
            Work::OneShotSuffix(i) => {
                usage[i].reused_prefix = true;
                i
            }
        };
        usage[i].tokens_decoded += tokens_of(&shapes, e.work);
    }

    let mut zero_loss = vec![f32::NAN; samples.len()];
    let mut one_loss = vec![f32::NAN; samples.len()];
    let mut alone_loss = vec![f32::NAN; samples.len()];
    let saved = journal.start(&digest(&steps), steps.len())?;
    if saved.steps_done > steps.len()
        || (saved.steps_done > 0 && !steps[saved.steps_done - 1].checkpoint)
    {
        return Err(Error::Resume(format!(
            "saved losses end at step {} of {}, which is not a checkpoint of this plan",
            saved.steps_done,
            steps.len()
        )));
    }
    for loss in &saved.losses {
        let slot = match loss.pass {
            Pass::ZeroShot => zero_loss.get_mut(loss.sample),
            Pass::OneShot => one_loss.get_mut(loss.sample),
            Pass::ResponseOnly => alone_loss.get_mut(loss.sample),
        };
        *slot.ok_or_else(|| {
            Error::Resume(format!(
                "saved loss for sample {} out of range",
                loss.sample
            ))
        })? = loss.value;
    }

    let mut scorer = Scorer::new(model, options.sizes)?;
    let mut stats = Stats {
        planned_steps: steps.len(),
        resumed_steps: saved.steps_done,
        ..Stats::default()
    };
    let step_tokens = |step: &Step| -> usize {
        step.entries
            .iter()
            .map(|e| tokens_of(&shapes, e.work))
            .sum()
    };
    let mut report = Progress {
        steps_done: saved.steps_done,
        steps: steps.len(),
        tokens_done: steps[..saved.steps_done].iter().map(step_tokens).sum(),
        tokens: steps.iter().map(step_tokens).sum(),
    };
    progress(report);
    let (mut decoding, mut extracting) = (Duration::ZERO, Duration::ZERO);
    let mut unsaved = Vec::new();
    for (t, step) in steps.iter().enumerate().skip(saved.steps_done) {
        if journal.stop_requested() {
            return Err(Error::Interrupted {
                saved_steps: t - unsaved_steps(&steps[..t]),
                total_steps: steps.len(),
            });
        }
        // llama.cpp puts sequences in one ubatch only when their ids follow each other in the
        // batch (ascending, consecutive); the plan's entries are decoded in slot order.
        let mut entries = step.entries.clone();
        entries.sort_by_key(|e| e.slot);
        let sequences: Vec<(&ScoredSequence, usize)> = entries
            .iter()
            .map(|e| {
                let (seq, first_pos) = match e.work {
                    Work::ZeroShot(i) => (zero[i].as_ref(), 0),
                    Work::OneShotWhole(i) => (one[i].as_ref(), 0),
                    Work::ResponseOnly(i) => (alone[i].as_ref(), 0),
                    Work::OneShotSuffix(i) => match shapes[i].one_shot {
                        OneShot::Reuse { parent, .. } => (
                            one[i].as_ref(),
                            shapes[parent].zero_len.expect("a reused parent is decoded"),
                        ),
                        _ => unreachable!("a suffix continues its parent"),
                    },
                };
                (seq.expect("planned work has a sequence"), first_pos)
            })
            .collect();
        let items: Vec<Item> = entries
            .iter()
            .zip(&sequences)
            .map(|(e, &(seq, first_pos))| {
                let target = seq.target();
                Item {
                    tokens: &seq.tokens[first_pos..],
                    first_pos,
                    slot: e.slot,
                    copy_from: e.copy_from,
                    scored: target.start - first_pos..target.end - first_pos,
                }
            })
            .collect();
        let clock = Instant::now();
        let rows = scorer.decode_only(&items)?;
        let decoded = Instant::now();
        let log_probs = scorer.log_probs(&items, &rows);
        decoding += decoded - clock;
        extracting += decoded.elapsed();
        scorer.free(&step.free_after);
        for (((e, item), lps), (seq, _)) in
            entries.iter().zip(&items).zip(&log_probs).zip(&sequences)
        {
            let (sample, pass, loss) = match e.work {
                Work::ZeroShot(i) => (i, Pass::ZeroShot, &mut zero_loss[i]),
                Work::OneShotWhole(i) | Work::OneShotSuffix(i) => {
                    (i, Pass::OneShot, &mut one_loss[i])
                }
                Work::ResponseOnly(i) => (i, Pass::ResponseOnly, &mut alone_loss[i]),
            };
            *loss = seq.mean_loss(lps);
            unsaved.push(Loss {
                sample,
                pass,
                value: *loss,
            });
            stats.tokens_decoded += item.tokens.len();
            stats.scored_rows += lps.len();
            stats.prefix_copies += usize::from(e.copy_from.is_some());
        }
        stats.decodes += 1;
        if step.checkpoint {
            // An empty cache here is what a resumed run starts from.
            scorer.clear();
            journal.save(t + 1, &unsaved)?;
            unsaved.clear();
        }
        report.steps_done = t + 1;
        report.tokens_done += step_tokens(step);
        progress(report);
    }
    stats.decode_seconds = decoding.as_secs_f64();
    stats.loss_seconds = extracting.as_secs_f64();

    let scores = (0..samples.len())
        .map(|i| match failed[i] {
            Some(reason) => Scores::unscorable(reason, zero_loss[i]),
            None => Scores::from_losses(zero_loss[i], one_loss[i]),
        })
        .collect();
    Ok(Outcome {
        scores,
        usage,
        response_only: alone_loss,
        stats,
    })
}

/// Steps after the last checkpoint in `steps`.
fn unsaved_steps(steps: &[Step]) -> usize {
    steps.iter().rev().take_while(|s| !s.checkpoint).count()
}
