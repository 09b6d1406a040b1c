//! Scoring every sample through the engine, with neighbour-prefix KV reuse.
//!
//! The one-shot sequence of sample i starts with exactly the zero-shot sequence of its
//! neighbour k, so k's zero-shot decode is also the prefix of every one-shot pass that uses k:
//! its cache is copied to a fresh slot and only `SEP block_i` is decoded there. That cuts the
//! tokens decoded per sample from about 3L to about 2L. [`crate::scoring::plan::schedule`] decides the
//! layout of every decode up front; this module builds the sequences, runs the plan and
//! folds the log-probabilities into losses. At the plan's checkpoints the losses so far go to
//! a [`Journal`], and a run that finds losses there resumes after them.
//!
//! [`ScoringPlan::score`] reads as its phases: [`ScoringPlan::new`] renders every sample once
//! into a [`PlanTable`] of lengths, plans and accounts each sample's tokens;
//! [`ScoringPlan::decode`] resumes after the journal's losses and decodes a range of steps,
//! each segment's sequences rendered when a worker takes it (render, copy, decode, gather,
//! fold, checkpoint); [`ScoringPlan::fold`] turns the losses into scores. It talks to the
//! model only through a [`Decoder`].

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::dataset::Sample;
use crate::scoring::decoder::{DecodeError, Decoder, DecoderPool, Item};
use crate::scoring::plan::{digest, schedule, tokens_of, Limits, OneShot, Step, Work};
use crate::scoring::prompt::{Template, Tokenize, UnrenderableSample};
use crate::scoring::score::Scores;
use crate::scoring::sequences::{sample_of, PlanTable, Renderer, SegmentSequences, Sequencer};
use crate::scoring::shard::Shard;
use crate::scoring::sizes::ContextSizes;

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
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Scored tokens.
    pub response_tokens: usize,
    /// Tokens before the response in the zero-shot sequence.
    pub prompt_tokens_zero_shot: usize,
    /// Tokens before the response in the one-shot sequence.
    pub prompt_tokens_one_shot: usize,
    /// Tokens of the whole zero-shot sequence, whether or not it fits the context.
    pub tokens_zero_shot: usize,
    /// Tokens of the whole one-shot sequence, whether or not it fits (0 without an example).
    pub tokens_one_shot: usize,
    /// Tokens this sample's passes put through the model (a reused prefix counts once, for
    /// the sample that owns it).
    pub tokens_decoded: usize,
    /// Whether the one-shot pass continued the neighbour's cache.
    pub reused_prefix: bool,
}

/// Which pass of a sample a loss belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The step after the last one they cover; always just after a checkpoint step (or the
    /// start of the range when nothing is saved).
    pub steps_done: usize,
    /// The losses those steps computed.
    pub losses: Vec<Loss>,
}

/// Where scoring keeps its progress, so that a stopped run can go on where it stopped.
pub trait Journal {
    /// Called once the plan is known (`digest` identifies it, `steps` is its length) with the
    /// steps this run decodes; returns what earlier runs of the same plan and range saved, or
    /// nothing saved at `range.start`.
    ///
    /// # Errors
    /// When saved losses exist for a different plan or range, or cannot be read.
    fn start(
        &mut self,
        digest: &str,
        steps: usize,
        range: Range<usize>,
    ) -> Result<Saved, ScoringError>;
    /// Keeps the losses computed since the last checkpoint; `steps_done` counts the steps
    /// finished so far.
    ///
    /// # Errors
    /// When they cannot be stored durably.
    fn save(&mut self, steps_done: usize, losses: &[Loss]) -> Result<(), ScoringError>;
}

/// A journal that keeps nothing: scoring runs to the end in one go.
pub struct NoJournal;

impl Journal for NoJournal {
    fn start(&mut self, _: &str, _: usize, range: Range<usize>) -> Result<Saved, ScoringError> {
        Ok(Saved {
            steps_done: range.start,
            losses: Vec::new(),
        })
    }
    fn save(&mut self, _: usize, _: &[Loss]) -> Result<(), ScoringError> {
        Ok(())
    }
}

/// What a scoring run did, for `run.json` and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
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
    /// Decoders that ran at once (each with its own context); the seconds above add up
    /// over them.
    #[serde(default)]
    pub workers: usize,
}

impl Stats {
    /// Adds the work another segment or shard did (its decodes, tokens and seconds).
    pub fn add(&mut self, other: &Stats) {
        self.decodes += other.decodes;
        self.tokens_decoded += other.tokens_decoded;
        self.scored_rows += other.scored_rows;
        self.prefix_copies += other.prefix_copies;
        self.decode_seconds += other.decode_seconds;
        self.loss_seconds += other.loss_seconds;
    }
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

/// Why scoring stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum ScoringError {
    /// The chat template cannot render a sample.
    #[error(transparent)]
    Render(#[from] UnrenderableSample),
    /// The decoder failed.
    #[error(transparent)]
    Decode(DecodeError),
    /// The journal could not read or keep losses.
    #[error(transparent)]
    Journal(Box<dyn std::error::Error + Send + Sync>),
    /// A sample could not be read from where the run keeps them.
    #[error(transparent)]
    Samples(Box<dyn std::error::Error + Send + Sync>),
    /// Saved state (the journal's) does not fit this plan.
    #[error(transparent)]
    Resume(Box<dyn std::error::Error + Send + Sync>),
    /// Saved losses or a range of steps that do not fit this plan.
    #[error("cannot resume: {0}")]
    Plan(PlanMismatch),
    /// The user stopped the run; what was saved is kept for resuming.
    #[error("interrupted: {saved_steps} of {total_steps} decode steps are saved; run the same command again to resume")]
    Interrupted {
        /// Steps whose losses are saved.
        saved_steps: usize,
        /// Steps planned.
        total_steps: usize,
    },
}

/// Saved losses or steps asked for that do not fit a plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanMismatch {
    /// A range that cuts a segment.
    #[error("steps {range:?} are not whole segments of this plan of {steps} steps")]
    NotWholeSegments {
        /// The range asked for.
        range: Range<usize>,
        /// Steps in the plan.
        steps: usize,
    },
    /// Saved losses that end inside a segment or outside the range.
    #[error("saved losses end at step {saved} of {steps}, which is not a checkpoint of steps {range:?} of this plan")]
    NotAtCheckpoint {
        /// Where the saved losses end.
        saved: usize,
        /// Steps in the plan.
        steps: usize,
        /// The range asked for.
        range: Range<usize>,
    },
    /// A saved loss for a sample the plan does not have.
    #[error("saved loss for sample {0} out of range")]
    NoSuchSample(usize),
    /// A sample's tokens are not those the plan was made from.
    #[error("sample {0} renders to other tokens than the plan was made from: the data, model or template changed since; plan the run again")]
    Sequence(usize),
    /// A saved plan made for another number of samples.
    #[error("the saved plan has {planned} samples, the data {samples}")]
    Samples {
        /// Samples in the saved plan.
        planned: usize,
        /// Samples in the data.
        samples: usize,
    },
}

/// Every decode step of a run, planned from the data and the settings alone, so that any
/// process (a resumed run, a shard on another machine) decodes the same steps in the same
/// batches. It holds a [`PlanTable`] of sequence lengths, never the sequences: those are
/// rendered by its [`Sequencer`] a segment at a time.
pub struct ScoringPlan<'a> {
    sequencer: Box<dyn Sequencer + 'a>,
    table: PlanTable,
    steps: Vec<Step>,
    usage: Vec<Usage>,
    digest: String,
}

impl<'a> ScoringPlan<'a> {
    /// Renders every sample's sequences (on every core) and plans their decodes.
    ///
    /// # Errors
    /// [`ScoringError::Render`] when the chat template cannot render a sample.
    pub fn new<T: Tokenize + Sync>(
        tokenizer: &'a T,
        samples: &'a [Sample],
        examples: &[Option<usize>],
        options: &ScoringOptions,
    ) -> Result<Self, ScoringError> {
        let table = PlanTable::plan(
            tokenizer,
            samples,
            examples,
            options,
            options.sizes.ctx_per_sequence,
        )?;
        let renderer = Box::new(Renderer::new(tokenizer, samples, options));
        ScoringPlan::from_table(renderer, table, options)
    }

    /// The plan of a saved [`PlanTable`], its sequences rendered by `sequencer` (over the
    /// same samples, model and template) when they are decoded.
    ///
    /// # Errors
    /// [`PlanMismatch::Samples`] when the table is for another number of samples.
    pub fn from_table(
        sequencer: Box<dyn Sequencer + 'a>,
        table: PlanTable,
        options: &ScoringOptions,
    ) -> Result<Self, ScoringError> {
        if table.len() != sequencer.len() || table.examples.len() != table.len() {
            return Err(ScoringError::Plan(PlanMismatch::Samples {
                planned: table.len(),
                samples: sequencer.len(),
            }));
        }
        let steps = schedule(&table.shapes, options.limits());
        let mut usage = table.usage.clone();
        for e in steps.iter().flat_map(|s| &s.entries) {
            let i = sample_of(e.work);
            usage[i].reused_prefix |= matches!(e.work, Work::OneShotSuffix(_));
            usage[i].tokens_decoded += tokens_of(&table.shapes, e.work);
        }
        let digest = digest(&steps);
        Ok(ScoringPlan {
            sequencer,
            table,
            steps,
            usage,
            digest,
        })
    }

    /// What the plan knows of each sample, to save for later processes.
    pub fn table(&self) -> &PlanTable {
        &self.table
    }

    /// Scores every sample: decodes the whole plan, resuming after what `journal` saved, and
    /// folds the losses. `progress` is called once the plan is known and after every decode.
    ///
    /// # Errors
    /// Decoder and journal failures; [`ScoringError::Interrupted`] once `stop` is set.
    pub fn score(
        &self,
        decoders: Decoders<'_>,
        journal: &mut dyn Journal,
        stop: &AtomicBool,
        progress: impl FnMut(Progress),
    ) -> Result<Outcome, ScoringError> {
        let (saved, stats) = self.decode(decoders, 0..self.steps(), journal, stop, progress)?;
        self.fold(&saved.losses, stats)
    }

    /// Decode steps planned.
    pub fn steps(&self) -> usize {
        self.steps.len()
    }

    /// Identifies the plan, so saved losses are only reused by the plan that made them.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The steps `shard` decodes: a contiguous run of whole segments between checkpoints (no
    /// KV cache crosses a checkpoint, so segments are independent), shared out so each shard
    /// gets about the same number of tokens. Every step belongs to exactly one shard; a shard
    /// is empty when there are fewer segments than shards.
    pub fn shard(&self, shard: Shard) -> Range<usize> {
        let segments = self.segments(0..self.steps.len());
        let mine = shard.split(segments.len(), |j| self.tokens_in(segments[j].clone()));
        let start = |j: usize| segments.get(j).map_or(self.steps.len(), |s| s.start);
        start(mine.start)..start(mine.end)
    }

    /// Segments between checkpoints: the units workers take and shards share out.
    pub fn segment_count(&self) -> usize {
        self.segments(0..self.steps.len()).len()
    }

    /// The first whole segments holding at least `tokens` tokens (all when fewer): a
    /// short, representative piece of the plan to time.
    pub fn first_segments(&self, tokens: usize) -> Range<usize> {
        let mut sum = 0;
        for segment in self.segments(0..self.steps.len()) {
            sum += self.tokens_in(segment.clone());
            if sum >= tokens {
                return 0..segment.end;
            }
        }
        0..self.steps.len()
    }

    /// Tokens the plan would decode if no one-shot pass reused its neighbour's cache.
    pub fn tokens_without_reuse(&self) -> usize {
        let shapes = &self.table.shapes;
        shapes
            .iter()
            .map(|shape| {
                let one = match shape.one_shot {
                    OneShot::Skip => 0,
                    OneShot::Whole { len } => len,
                    OneShot::Reuse { parent, suffix_len } => {
                        shapes[parent].zero_len.unwrap_or(0) + suffix_len
                    }
                };
                shape.zero_len.unwrap_or(0) + one + shape.alone_len.unwrap_or(0)
            })
            .sum()
    }

    /// Tokens decoded in `steps`.
    pub fn tokens_in(&self, steps: Range<usize>) -> usize {
        self.steps[steps].iter().map(|s| self.step_tokens(s)).sum()
    }

    fn step_tokens(&self, step: &Step) -> usize {
        step.entries
            .iter()
            .map(|e| tokens_of(&self.table.shapes, e.work))
            .sum()
    }

    /// Decodes the steps in `range` through `decoder`, resuming after what `journal` saved for
    /// them and saving at every checkpoint. `range` must start at a checkpoint boundary (as
    /// [`ScoringPlan::shard`]'s do). Every decoder looks at `stop` before each step, so a set
    /// flag (the user's Ctrl-C) stops them all at their next step. Returns what the journal
    /// holds for the range, now complete, and what this call did.
    ///
    /// # Errors
    /// Decoder and journal failures; [`ScoringError::Interrupted`] once `stop` is set.
    pub fn decode(
        &self,
        decoders: Decoders<'_>,
        range: Range<usize>,
        journal: &mut dyn Journal,
        stop: &AtomicBool,
        progress: impl FnMut(Progress),
    ) -> Result<(Saved, Stats), ScoringError> {
        let mut saved = journal.start(&self.digest, self.steps.len(), range.clone())?;
        self.check_resumable(&saved, &range)?;
        let first = saved.steps_done;
        let report = Progress {
            steps_done: first - range.start,
            steps: range.len(),
            tokens_done: self.tokens_in(range.start..first),
            tokens: self.tokens_in(range.clone()),
        };
        let mut keeper = Keeper {
            plan: self,
            journal,
            stop,
            progress,
            report,
            segments: self.segments(first..range.end),
            finished: BTreeMap::new(),
            saved_segments: 0,
            saved_through: first,
            losses: &mut saved.losses,
            stats: Stats {
                planned_steps: range.len(),
                resumed_steps: first - range.start,
                workers: 1,
                ..Stats::default()
            },
        };
        (keeper.progress)(report);
        self.decode_segments(decoders, &mut keeper)?;
        // A stop seen during the last decodes still stops the run, so a caller's Ctrl-C
        // ends it the same way wherever it lands; everything is saved for the rerun.
        if keeper.stopped() {
            return Err(keeper.interrupted());
        }
        let stats = keeper.stats;
        saved.steps_done = range.end;
        Ok((saved, stats))
    }

    fn check_resumable(&self, saved: &Saved, range: &Range<usize>) -> Result<(), ScoringError> {
        let at_boundary = |t: usize| t == 0 || self.steps[t - 1].checkpoint;
        if range.end > self.steps.len() || !at_boundary(range.start) || !at_boundary(range.end) {
            return Err(ScoringError::Plan(PlanMismatch::NotWholeSegments {
                range: range.clone(),
                steps: self.steps.len(),
            }));
        }
        if !range.contains(&saved.steps_done) && saved.steps_done != range.end
            || !at_boundary(saved.steps_done)
        {
            return Err(ScoringError::Plan(PlanMismatch::NotAtCheckpoint {
                saved: saved.steps_done,
                steps: self.steps.len(),
                range: range.clone(),
            }));
        }
        Ok(())
    }

    /// Every sample's scores from the losses of all steps (as saved by one run, or gathered
    /// from every shard), with `stats` for the record.
    ///
    /// # Errors
    /// [`ScoringError::Resume`] when a loss names a sample that does not exist.
    pub fn fold(&self, losses: &[Loss], stats: Stats) -> Result<Outcome, ScoringError> {
        let losses = Losses::gather(self.usage.len(), losses)?;
        Ok(losses.fold(&self.table, self.usage.clone(), stats))
    }
}

impl ScoringOptions {
    fn limits(&self) -> Limits {
        Limits {
            tokens: self.sizes.batch,
            slots: self.sizes.parallel,
            held: self.held_slots(),
            checkpoint_tokens: self.checkpoint_tokens,
        }
    }
}

fn pass_of(work: Work) -> Pass {
    match work {
        Work::ZeroShot(_) => Pass::ZeroShot,
        Work::OneShotWhole(_) | Work::OneShotSuffix(_) => Pass::OneShot,
        Work::ResponseOnly(_) => Pass::ResponseOnly,
    }
}

/// Every sample's loss per pass, NaN until computed.
struct Losses {
    zero: Vec<f32>,
    one: Vec<f32>,
    alone: Vec<f32>,
}

impl Losses {
    /// Every sample's losses from the logged ones.
    fn gather(samples: usize, logged: &[Loss]) -> Result<Self, ScoringError> {
        let mut losses = Losses {
            zero: vec![f32::NAN; samples],
            one: vec![f32::NAN; samples],
            alone: vec![f32::NAN; samples],
        };
        for loss in logged {
            *losses
                .get_mut(loss.sample, loss.pass)
                .ok_or_else(|| ScoringError::Plan(PlanMismatch::NoSuchSample(loss.sample)))? =
                loss.value;
        }
        Ok(losses)
    }

    fn get_mut(&mut self, sample: usize, pass: Pass) -> Option<&mut f32> {
        match pass {
            Pass::ZeroShot => self.zero.get_mut(sample),
            Pass::OneShot => self.one.get_mut(sample),
            Pass::ResponseOnly => self.alone.get_mut(sample),
        }
    }

    fn fold(self, table: &PlanTable, usage: Vec<Usage>, stats: Stats) -> Outcome {
        let scores = (0..self.zero.len())
            .map(|i| match table.failed[i] {
                Some(reason) => Scores::unscorable(reason, self.zero[i]),
                None => Scores::from_losses(self.zero[i], self.one[i]),
            })
            .collect();
        Outcome {
            scores,
            usage,
            response_only: self.alone,
            stats,
        }
    }
}

/// Which decoders run a plan's segments.
pub enum Decoders<'a> {
    /// One decoder, on the calling thread.
    One(&'a mut dyn Decoder),
    /// A decoder per worker, each on its own thread, taking the next segment when it is done
    /// with one.
    Pool(&'a dyn DecoderPool),
}

/// What a segment's decoder tells whoever watches it.
trait Watch {
    /// Whether to stop before the next step.
    fn stopped(&self) -> bool;
    /// A step of `tokens` tokens is done.
    fn step_done(&mut self, tokens: usize);
}

/// What a worker sends to the thread that keeps the journal.
enum Report {
    Step(usize),
    Segment(usize, Vec<Loss>, Stats),
    Failed(ScoringError),
}

/// A worker's side of the channel, and the flags that stop it: the user's, and the one any
/// worker or the journal sets when it fails.
struct WorkerWatch<'a> {
    stop: &'a AtomicBool,
    failed: &'a AtomicBool,
    reports: mpsc::Sender<Report>,
}

impl Watch for WorkerWatch<'_> {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || self.failed.load(Ordering::SeqCst)
    }
    fn step_done(&mut self, tokens: usize) {
        let _ = self.reports.send(Report::Step(tokens));
    }
}

/// Keeps the journal while segments finish, perhaps out of order: a segment's losses are
/// saved once every segment before it is, so the journal always holds a prefix of the plan
/// and a resumed run starts right after it.
struct Keeper<'a, P> {
    plan: &'a ScoringPlan<'a>,
    journal: &'a mut dyn Journal,
    stop: &'a AtomicBool,
    progress: P,
    report: Progress,
    segments: Vec<Range<usize>>,
    finished: BTreeMap<usize, Vec<Loss>>,
    saved_segments: usize,
    saved_through: usize,
    losses: &'a mut Vec<Loss>,
    stats: Stats,
}

impl<P: FnMut(Progress)> Keeper<'_, P> {
    fn segment_done(
        &mut self,
        index: usize,
        losses: Vec<Loss>,
        stats: Stats,
    ) -> Result<(), ScoringError> {
        self.stats.add(&stats);
        self.finished.insert(index, losses);
        while let Some(losses) = self.finished.remove(&self.saved_segments) {
            self.saved_through = self.segments[self.saved_segments].end;
            self.journal.save(self.saved_through, &losses)?;
            self.losses.extend(losses);
            self.saved_segments += 1;
        }
        Ok(())
    }

    fn interrupted(&self) -> ScoringError {
        ScoringError::Interrupted {
            saved_steps: self.saved_through,
            total_steps: self.plan.steps.len(),
        }
    }
}

impl<P: FnMut(Progress)> Watch for Keeper<'_, P> {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
    fn step_done(&mut self, tokens: usize) {
        self.report.steps_done += 1;
        self.report.tokens_done += tokens;
        (self.progress)(self.report);
    }
}

impl ScoringPlan<'_> {
    /// Decodes `keeper`'s segments with `decoders`, saving them as they complete.
    fn decode_segments<P: FnMut(Progress)>(
        &self,
        decoders: Decoders<'_>,
        keeper: &mut Keeper<'_, P>,
    ) -> Result<(), ScoringError> {
        match decoders {
            Decoders::One(decoder) => {
                for (index, steps) in keeper.segments.clone().into_iter().enumerate() {
                    match self.decode_segment(decoder, steps, keeper)? {
                        Some((losses, stats)) => keeper.segment_done(index, losses, stats)?,
                        None => return Err(keeper.interrupted()),
                    }
                }
                Ok(())
            }
            Decoders::Pool(pool) => self.decode_in_workers(pool, keeper),
        }
    }

    /// The segments of `steps`: runs of steps that each end at a checkpoint (or at the end of
    /// `steps`), so no KV cache crosses from one to the next.
    fn segments(&self, steps: Range<usize>) -> Vec<Range<usize>> {
        let mut segments = Vec::new();
        let mut start = steps.start;
        for t in steps.clone() {
            if self.steps[t].checkpoint || t + 1 == steps.end {
                segments.push(start..t + 1);
                start = t + 1;
            }
        }
        segments
    }

    /// Runs `keeper`'s segments on the pool's workers, the journal kept on this thread.
    /// Each worker reads the user's stop flag itself before every step; a failure anywhere
    /// (a decoder, the journal) stops the others the same way.
    fn decode_in_workers<P: FnMut(Progress)>(
        &self,
        pool: &dyn DecoderPool,
        keeper: &mut Keeper<'_, P>,
    ) -> Result<(), ScoringError> {
        let segments = keeper.segments.clone();
        let workers = pool.workers().clamp(1, segments.len().max(1));
        keeper.stats.workers = workers;
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let (reports, received) = mpsc::channel();
        let mut failure = None;
        std::thread::scope(|scope| {
            for _ in 0..workers {
                let mut watch = WorkerWatch {
                    stop: keeper.stop,
                    failed: &failed,
                    reports: reports.clone(),
                };
                let (segments, next) = (&segments, &next);
                scope.spawn(move || {
                    let mut work = || -> Result<(), ScoringError> {
                        let mut decoder = pool.decoder().map_err(ScoringError::Decode)?;
                        loop {
                            let index = next.fetch_add(1, Ordering::Relaxed);
                            let Some(steps) = segments.get(index) else {
                                return Ok(());
                            };
                            let Some((losses, stats)) =
                                self.decode_segment(&mut *decoder, steps.clone(), &mut watch)?
                            else {
                                return Ok(());
                            };
                            let _ = watch.reports.send(Report::Segment(index, losses, stats));
                        }
                    };
                    if let Err(e) = work() {
                        watch.failed.store(true, Ordering::SeqCst);
                        let _ = watch.reports.send(Report::Failed(e));
                    }
                });
            }
            drop(reports);
            // Ends when every worker has returned and dropped its sender.
            for report in received {
                let error = match report {
                    Report::Step(tokens) => {
                        keeper.step_done(tokens);
                        None
                    }
                    Report::Segment(index, losses, stats) => {
                        keeper.segment_done(index, losses, stats).err()
                    }
                    Report::Failed(e) => Some(e),
                };
                if let Some(e) = error {
                    failed.store(true, Ordering::SeqCst);
                    failure.get_or_insert(e);
                }
            }
        });
        match failure {
            Some(e) => Err(e),
            None if keeper.saved_segments < segments.len() => Err(keeper.interrupted()),
            None => Ok(()),
        }
    }

    /// Decodes one segment on `decoder` and empties it after; `None` when `watch` says to
    /// stop first.
    fn decode_segment(
        &self,
        decoder: &mut dyn Decoder,
        steps: Range<usize>,
        watch: &mut dyn Watch,
    ) -> Result<Option<(Vec<Loss>, Stats)>, ScoringError> {
        let mut stats = Stats::default();
        let mut losses = Vec::new();
        let steps = &self.steps[steps];
        let sequences = SegmentSequences::render(&*self.sequencer, &self.table, steps)?;
        for step in steps {
            if watch.stopped() {
                decoder.clear();
                return Ok(None);
            }
            losses.extend(self.decode_step(decoder, &sequences, step, &mut stats)?);
            watch.step_done(self.step_tokens(step));
        }
        // An empty cache here is what a resumed run starts from.
        decoder.clear();
        Ok(Some((losses, stats)))
    }

    /// One planned step through the decoder: copy the parents' caches, decode, gather the
    /// scored log-probabilities, free the slots the step is done with, and compute each
    /// entry's loss.
    fn decode_step(
        &self,
        decoder: &mut dyn Decoder,
        sequences: &SegmentSequences,
        step: &Step,
        stats: &mut Stats,
    ) -> Result<Vec<Loss>, ScoringError> {
        // llama.cpp puts sequences in one ubatch only when their ids follow each other in the
        // batch (ascending, consecutive); the plan's entries are decoded in slot order.
        let mut entries = step.entries.clone();
        entries.sort_by_key(|e| e.slot);
        let items: Vec<Item> = entries
            .iter()
            .map(|e| sequences.item(e, &self.table.shapes))
            .collect();

        let clock = Instant::now();
        for e in &entries {
            if let Some(from) = e.copy_from {
                decoder
                    .copy_slot(from, e.slot)
                    .map_err(ScoringError::Decode)?;
            }
        }
        decoder.decode(&items).map_err(ScoringError::Decode)?;
        let decoded = Instant::now();
        let log_probs = decoder.log_probs(&items);
        stats.decode_seconds += (decoded - clock).as_secs_f64();
        stats.loss_seconds += decoded.elapsed().as_secs_f64();
        for &slot in &step.free_after {
            decoder.free_slot(slot);
        }

        stats.decodes += 1;
        let mut losses = Vec::with_capacity(entries.len());
        for ((e, item), lps) in entries.iter().zip(&items).zip(&log_probs) {
            losses.push(Loss {
                sample: sample_of(e.work),
                pass: pass_of(e.work),
                value: sequences.scored(e.work).mean_loss(lps),
            });
            stats.tokens_decoded += item.tokens.len();
            stats.scored_rows += lps.len();
            stats.prefix_copies += usize::from(e.copy_from.is_some());
        }
        Ok(losses)
    }
}
