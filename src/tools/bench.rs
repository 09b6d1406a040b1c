//! `miwv bench`: the scheduler measured against llama.cpp's own ceiling, in one run.
//!
//! A shared machine is noisy, so the report is ratios of timings taken minutes apart in the
//! same process: our scored tokens/s over llama.cpp's prompt-processing rate for the same
//! model and threads, and samples/s with and without neighbour-prefix reuse.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::Serialize;

use crate::data::dataset::{ReadOptions, Sample};
use crate::data::records::read_samples;
use crate::engine::embed::{default_prefix, embed_samples};
use crate::engine::{Embedder, Model, Scorer, ScorerPool};
use crate::pipeline::fitted_table;
use crate::pipeline::resolve_template;
use crate::retrieval::neighbours::nearest_others;
use crate::scoring::decoder::{Decoder, Item};
use crate::scoring::prompt::{Layout, Template, TemplateChoice, Token};
use crate::scoring::scheduler::{Decoders, NoJournal, ScoringOptions, ScoringPlan, Stats};
use crate::scoring::sequences::PlanTable;
use crate::scoring::sizes::{ContextSizes, SizeRequest};
use crate::state::progress::{peak_rss_mib, reset_peak_rss};
use crate::state::schema::UnscoredGroup;
use crate::Error;

/// What to benchmark.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Dataset in any format `select` reads; the first N records are used.
    pub data: PathBuf,
    /// Scoring model.
    pub model: PathBuf,
    /// Embedding model for retrieval.
    pub embed_model: PathBuf,
    /// Dataset sizes to score, in increasing order; the largest also runs without reuse.
    pub sizes: Vec<usize>,
    /// Context sizes and threads, as asked; fitted to the largest workload.
    pub context: SizeRequest,
    /// Layers offloaded to a GPU backend (both models).
    pub gpu_layers: u32,
    /// Template.
    pub template: TemplateChoice,
    /// Full-batch decodes timed for each ceiling.
    pub ceiling_repeats: usize,
    /// Also score the largest size with one core kept busy.
    pub busy: bool,
}

/// llama.cpp's prompt processing alone.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    /// Tokens per `llama_decode`.
    pub batch_tokens: usize,
    /// Logit rows requested per decode.
    pub logit_rows: usize,
    /// Tokens per second.
    pub tokens_per_s: f64,
}

/// One scoring run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Samples scored.
    pub samples: usize,
    /// Neighbour-prefix reuse on.
    pub kv_reuse: bool,
    /// Wall seconds for scoring (building sequences, planning, decoding, losses).
    pub seconds: f64,
    /// Tokens put through the model per second of wall time.
    pub tokens_per_s: f64,
    /// Samples per second.
    pub samples_per_s: f64,
    /// Tokens decoded per sample.
    pub tokens_per_sample: f64,
    /// Share of decoded tokens whose logits were read.
    pub logit_share: f64,
    /// Peak resident memory during the run, MiB (Linux).
    pub peak_rss_mib: Option<f64>,
    /// Engine statistics.
    pub stats: Stats,
    /// Samples left without a MIWV, by reason (`too_long`, `example_too_long`, ...).
    pub unscorable: Vec<UnscoredGroup>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scoring model's file name.
    pub model: String,
    /// Threads and sizes, as fitted.
    pub context: ContextSizes,
    /// (1a) logits at the last position only.
    pub ceiling_last_logit: Ceiling,
    /// (1b) logits at the workload's share of positions.
    pub ceiling_workload_logits: Ceiling,
    /// Scoring runs with reuse, one per size.
    pub with_reuse: Vec<Run>,
    /// The largest size without reuse.
    pub without_reuse: Run,
    /// The largest size with reuse, with another thread keeping one core busy (`--busy`).
    pub busy: Option<Run>,
}

impl Report {
    /// Our tokens/s over ceiling (1b): the scheduler's whole overhead.
    pub fn ratio_to_workload_ceiling(&self) -> f64 {
        self.largest().tokens_per_s / self.ceiling_workload_logits.tokens_per_s
    }

    /// Our tokens/s over ceiling (1a).
    pub fn ratio_to_last_logit_ceiling(&self) -> f64 {
        self.largest().tokens_per_s / self.ceiling_last_logit.tokens_per_s
    }

    /// Samples/s with reuse over samples/s without.
    pub fn reuse_speedup(&self) -> f64 {
        self.largest().samples_per_s / self.without_reuse.samples_per_s
    }

    /// Seconds with one core kept busy over seconds on the quiet machine, same work.
    pub fn busy_slowdown(&self) -> Option<f64> {
        self.busy
            .as_ref()
            .map(|b| b.seconds / self.largest().seconds)
    }

    fn largest(&self) -> &Run {
        self.with_reuse.last().expect("at least one size")
    }

    /// The report as a table for the terminal.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let c = &self.context;
        out += &format!(
            "model {}; {} threads, ctx {} x {} slots, batch {}, ubatch {}\n\n",
            self.model, c.threads, c.ctx_per_sequence, c.parallel, c.batch, c.ubatch
        );
        for (name, ceiling) in [
            (
                "(1a) llama.cpp, logits at the last position",
                &self.ceiling_last_logit,
            ),
            (
                "(1b) llama.cpp, logits at the workload's share",
                &self.ceiling_workload_logits,
            ),
        ] {
            out += &format!(
                "{name}: {:.0} tokens/s ({} tokens, {} logit rows per decode)\n",
                ceiling.tokens_per_s, ceiling.batch_tokens, ceiling.logit_rows
            );
        }
        let big = self.largest();
        out += &format!(
            "(2) miwv scoring, {} samples: {:.0} tokens/s = {:.3} x (1b), {:.3} x (1a)\n",
            big.samples,
            big.tokens_per_s,
            self.ratio_to_workload_ceiling(),
            self.ratio_to_last_logit_ceiling()
        );
        // Workers' seconds add up; their sum is set against the wall time of all of them.
        let worker_seconds = big.seconds * big.stats.workers.max(1) as f64;
        out += &format!(
            "    {} workers; of their time loss extraction {:.1}%, outside decode/extraction {:.1}%\n",
            big.stats.workers,
            100.0 * big.stats.loss_seconds / worker_seconds,
            100.0 * (worker_seconds - big.stats.decode_seconds - big.stats.loss_seconds)
                / worker_seconds
        );
        out += &format!(
            "(3) samples/s with KV reuse {:.3}, without {:.3}: {:.2}x\n",
            big.samples_per_s,
            self.without_reuse.samples_per_s,
            self.reuse_speedup()
        );
        let mib = |r: &Run| {
            r.peak_rss_mib
                .map_or("n/a".into(), |m| format!("{m:.0} MiB"))
        };
        out += &format!(
            "(4) tokens decoded per sample: {:.1} with reuse, {:.1} without ({:.2}x); peak RSS {} / {}\n",
            big.tokens_per_sample,
            self.without_reuse.tokens_per_sample,
            self.without_reuse.tokens_per_sample / big.tokens_per_sample,
            mib(big),
            mib(&self.without_reuse)
        );
        out +=
            "(5) growth with N (reuse on):\n      N   seconds  tokens/s  ms/token  tokens/sample\n";
        for r in &self.with_reuse {
            out += &format!(
                "  {:>5}  {:>8.1}  {:>8.0}  {:>8.3}  {:>13.1}\n",
                r.samples,
                r.seconds,
                r.tokens_per_s,
                1000.0 / r.tokens_per_s,
                r.tokens_per_sample
            );
        }
        if let (Some(busy), Some(slowdown)) = (&self.busy, self.busy_slowdown()) {
            out += &format!(
                "(6) one core kept busy by another thread: {:.1} s for {} samples, {slowdown:.2}x the quiet time\n",
                busy.seconds, busy.samples
            );
        }
        for r in self.with_reuse.iter().chain([&self.without_reuse]) {
            if !r.unscorable.is_empty() {
                out += &format!(
                    "unscorable at N = {}{}: {}\n",
                    r.samples,
                    if r.kv_reuse { "" } else { " without reuse" },
                    UnscoredGroup::tally(&r.unscorable)
                );
            }
        }
        out
    }
}

/// Runs the benchmark.
///
/// # Errors
/// Input, model and engine errors.
pub fn run(config: &BenchConfig) -> Result<Report, Error> {
    crate::state::config::check_sizes(&config.context)?;
    crate::state::config::check_bench(&config.sizes, config.ceiling_repeats)?;
    let largest = config.sizes.iter().copied().max().unwrap_or(0);
    let samples = first_samples(config, largest)?;
    let (vectors, dim) = embed_all(config, &samples)?;
    let model = Model::load(&config.model, config.gpu_layers)?;
    model.check_can_score(config.context.ctx.tokens())?;
    let template = resolve_template(&model, config.template, None)?;
    // Every run decodes with the sizes that fit the largest workload, as select would.
    let (_, fit) = fitted_table(&config.context, &model, None, |sizes| {
        Ok(PlanTable::plan(
            &model,
            &samples,
            &examples(&vectors, dim, largest)?,
            &options(&template, sizes, true),
            sizes.ctx_per_sequence,
        )?)
    })?;
    let bench = Bench {
        model: &model,
        template: &template,
        samples: &samples,
        vectors: &vectors,
        dim,
        sizes: fit.sizes,
    };

    let mut with_reuse = Vec::new();
    for &n in &config.sizes {
        with_reuse.push(bench.score(n, true)?);
        tracing::info!("scored {n} samples with reuse");
    }
    let without_reuse = bench.score(largest, false)?;
    let busy = config
        .busy
        .then(|| with_one_core_busy(|| bench.score(largest, true)))
        .transpose()?;
    let share = with_reuse.last().map_or(0.0, |r| r.logit_share);

    let tokens = ceiling_tokens(&model, &samples, &template, 512);
    let ceiling = |rows: usize| ceiling(&model, fit.sizes, &tokens, rows, config.ceiling_repeats);
    let ceiling_last_logit = ceiling(1)?;
    let ceiling_workload_logits = ceiling(((tokens.len() as f64 * share).round() as usize).max(1))?;

    Ok(Report {
        model: config
            .model
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
        context: fit.sizes,
        ceiling_last_logit,
        ceiling_workload_logits,
        with_reuse,
        without_reuse,
        busy,
    })
}

/// Runs `work` while another thread spins, as a competing program keeps one core busy.
fn with_one_core_busy<T>(work: impl FnOnce() -> T) -> T {
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let spinner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        })
    };
    let result = work();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = spinner.join();
    result
}

/// The dataset's first `n` samples.
fn first_samples(config: &BenchConfig, n: usize) -> Result<Vec<Sample>, Error> {
    let (_, dataset) = read_samples(&config.data, &ReadOptions::default())?;
    let mut samples = dataset.samples;
    if samples.len() < n {
        return Err(Error::TooFewRecords {
            path: config.data.clone(),
            records: samples.len(),
            needed: n,
        });
    }
    samples.truncate(n);
    Ok(samples)
}

/// Every sample's retrieval embedding, rows of the returned width.
fn embed_all(config: &BenchConfig, samples: &[Sample]) -> Result<(Vec<f32>, usize), Error> {
    let embed_model = Model::load(&config.embed_model, config.gpu_layers)?;
    let prefix = default_prefix(embed_model.info().architecture.as_deref());
    let mut embedder = Embedder::new(&embed_model, config.context.threads)?;
    Ok(embed_samples(&mut embedder, samples, prefix, |_| {
        std::ops::ControlFlow::Continue(())
    })?)
}

/// What every timed scoring run shares.
struct Bench<'a> {
    model: &'a Model,
    template: &'a Template,
    samples: &'a [Sample],
    vectors: &'a [f32],
    dim: usize,
    sizes: ContextSizes,
}

/// Each of the first `n` samples' example: its nearest other among those `n`.
fn examples(vectors: &[f32], dim: usize, n: usize) -> Result<Vec<Option<usize>>, Error> {
    Ok(nearest_others(&vectors[..n * dim], dim)?
        .into_iter()
        .map(|found| found.map(|k| k.index))
        .collect())
}

/// How the benchmark scores: `select`'s defaults at `sizes`.
fn options(template: &Template, sizes: ContextSizes, kv_reuse: bool) -> ScoringOptions {
    ScoringOptions {
        sizes,
        kv_reuse,
        template: template.clone(),
        append_eos: false,
        response_only: false,
        checkpoint_tokens: crate::state::config::DEFAULT_CHECKPOINT_TOKENS,
    }
}

impl Bench<'_> {
    /// Scores the first `n` samples (neighbours among those `n`) and times it.
    fn score(&self, n: usize, kv_reuse: bool) -> Result<Run, Error> {
        let examples = examples(self.vectors, self.dim, n)?;
        let options = options(self.template, self.sizes, kv_reuse);
        reset_peak_rss();
        let clock = Instant::now();
        let pool = ScorerPool::new(self.model, self.sizes);
        let plan = ScoringPlan::new(self.model, &self.samples[..n], &examples, &options)?;
        let outcome = plan.score(
            Decoders::Pool(&pool),
            &mut NoJournal,
            &AtomicBool::new(false),
            |_| {},
        )?;
        let seconds = clock.elapsed().as_secs_f64();
        let s = outcome.stats;
        Ok(Run {
            samples: n,
            kv_reuse,
            seconds,
            tokens_per_s: s.tokens_decoded as f64 / seconds,
            samples_per_s: n as f64 / seconds,
            tokens_per_sample: s.tokens_decoded as f64 / n as f64,
            logit_share: s.scored_rows as f64 / s.tokens_decoded as f64,
            peak_rss_mib: peak_rss_mib(),
            stats: s,
            unscorable: UnscoredGroup::of(outcome.scores.iter().map(|s| s.reason), |i| {
                self.samples[i].id.clone()
            }),
        })
    }
}

/// `len` real tokens: the dataset's samples as the template renders them, concatenated (a
/// sample the template cannot render is left out; the scoring run names it).
fn ceiling_tokens(
    model: &Model,
    samples: &[Sample],
    template: &Template,
    len: usize,
) -> Vec<Token> {
    let layout = Layout::new(model, template, false);
    let mut tokens = Vec::with_capacity(len + 512);
    for sample in samples {
        if let Ok(rendered) = layout.render(&[sample]) {
            tokens.extend(rendered.tokens);
        }
        if tokens.len() >= len {
            break;
        }
    }
    tokens.truncate(len);
    tokens
}

/// Tokens/s of full one-sequence decodes with `rows` logit rows each (the last ones), on as
/// many contexts at once as scoring runs workers (`sizes.workers`, each with its share of the
/// threads), so the ceiling is llama.cpp's on the same layout of the machine.
fn ceiling(
    model: &Model,
    sizes: ContextSizes,
    tokens: &[Token],
    rows: usize,
    repeats: usize,
) -> Result<Ceiling, Error> {
    let rows = rows.min(tokens.len() - 1);
    let item = Item {
        tokens,
        first_pos: 0,
        slot: 0,
        scored: tokens.len() - rows..tokens.len(),
    };
    let start = std::sync::Barrier::new(sizes.workers.max(1));
    let decode_all = || -> Result<f64, Error> {
        let warmed = Scorer::new(model, sizes).and_then(|mut scorer| {
            scorer.decode_items(std::slice::from_ref(&item))?;
            scorer.free_slot(0);
            Ok(scorer)
        });
        // Every worker reaches the barrier, failed or not, so none waits forever.
        start.wait();
        let mut scorer = warmed?;
        let clock = Instant::now();
        for _ in 0..repeats {
            scorer.decode_items(std::slice::from_ref(&item))?;
            scorer.free_slot(0);
        }
        Ok(clock.elapsed().as_secs_f64())
    };
    let seconds = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..sizes.workers.max(1))
            .map(|_| scope.spawn(decode_all))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a ceiling worker panicked"))
            .collect::<Result<Vec<f64>, Error>>()
    })?;
    let slowest = seconds.into_iter().fold(0.0, f64::max);
    Ok(Ceiling {
        batch_tokens: tokens.len(),
        logit_rows: rows,
        tokens_per_s: (tokens.len() * repeats * sizes.workers.max(1)) as f64 / slowest,
    })
}
