//! `miwv select` as four stages over one run directory, so its work can be spread over
//! processes, machines and cluster jobs: `embed` and `score` in shards, `neighbours` and
//! `merge` once.
//!
//! Every shard writes only files of its own (`checkpoint/embed/shard-K-of-N.*`,
//! `checkpoint/score/shard-K-of-N.*`) and a done marker, atomically and last, so shards can
//! share a network filesystem and a rerun skips what is done. Embedding shards embed whole
//! planned batches and score shards decode whole segments between checkpoints of the one
//! plan, so the merged outputs equal `select`'s byte for byte.

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{
    check_renders, describe_index, load_models, read_input, read_samples_only, scoring_options,
    scoring_plan, search_neighbours, text_hashes, with_embedder, write_outputs, Loaded, Ranking,
    RunSummary,
};
use crate::data::output::{write_atomically, write_json};
use crate::data::store::SampleStore;
use crate::engine::embed::{EmbeddingBatches, Precomputed};
use crate::engine::{Model, ScorerPool};
use crate::retrieval::neighbours::FileVectors;
use crate::scoring::prompt::Template;
use crate::scoring::scheduler::ScoringPlan;
use crate::scoring::scheduler::{Decoders, Stats};
use crate::scoring::select::Budget;
use crate::scoring::sequences::Renderer;
use crate::scoring::shard::Shard;
use crate::scoring::sizes::ContextFit;
use crate::state::config::{EmbedModel, SelectConfig};
use crate::state::lock::RunLock;
use crate::state::progress::{Phase, ScoringProgress};
use crate::state::resume::RunState;
use crate::state::resume::{read_json, Mismatch, Remedy, ResumeError, Retrieval};
use crate::state::schema::{EmbedderRecord, ShardsRecord, Timings, UnscoredGroup};
use crate::Error;

/// Rows of precomputed embeddings read and written at a time.
const BLOCK_ROWS: usize = 16_384;

/// What an embedding shard leaves besides its vectors: written last, it marks the shard done.
#[derive(Debug, Serialize, Deserialize)]
struct EmbedShard {
    /// The settings of the whole run, as given to this shard.
    config: SelectConfig,
    /// What changes a score (the run's fingerprint), so `neighbours` can check every shard
    /// was made alike.
    settings: serde_json::Value,
    /// The samples whose vectors the shard's `.f32` file holds, in its row order.
    samples: Vec<usize>,
    dim: usize,
    embedder: EmbedderRecord,
    seconds: f64,
}

/// The run's settings once every embedding shard is in: what `score` and `merge` read.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct StageRecord {
    pub(super) config: SelectConfig,
    embed_shards: usize,
}

/// What a score shard leaves when its steps are all decoded and saved.
#[derive(Debug, Serialize, Deserialize)]
struct ScoreShard {
    steps: Range<usize>,
    stats: Stats,
    seconds: f64,
    /// Seconds from the start until the shard's steps were known, ready to decode.
    #[serde(default)]
    ready_s: f64,
}

/// What a stage did, for the command's last words.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageSummary {
    /// One line saying it.
    pub message: String,
}

fn done(message: String) -> StageSummary {
    tracing::info!("{message}");
    StageSummary { message }
}

fn shard_file(dir: &Path, shard: Shard, extension: &str) -> PathBuf {
    dir.join(format!("{}.{extension}", shard.file_stem()))
}

fn stage_record_path(run: &Path) -> PathBuf {
    run.join("checkpoint").join("stage.json")
}

/// `miwv embed`: embeds this shard's share of the samples into the run directory
/// `config.out_dir`.
///
/// Stops at the next batch once `stop` is set, keeping nothing of this shard.
///
/// # Errors
/// Bad settings or input, engine failures, a run directory made with other settings or
/// another shard count; [`EngineError::Stopped`](crate::engine::EngineError::Stopped) when
/// stopped.
pub fn embed(
    config: &SelectConfig,
    shard: Shard,
    stop: &AtomicBool,
) -> Result<StageSummary, Error> {
    config.validate()?;
    let _lock = RunLock::shard(
        &config.out_dir,
        &format!("embed-{}", shard.file_stem()),
        &format!("miwv embed --shard {shard}"),
    )?;
    let config = &with_absolute_paths(config);
    let dataset = read_samples_only(config)?;
    let clock = Instant::now();
    let loaded = load_models(config)?;
    check_renders(config, &loaded, &dataset)?;
    let dir = loaded.state.stage_dir("embed", shard.count)?;
    let marker = shard_file(&dir, shard, "json");
    if let Some(earlier) = read_json::<EmbedShard>(&marker)? {
        if earlier.settings != loaded.settings {
            return Err(ResumeError::incompatible(
                &marker,
                Mismatch::OtherEmbedding,
                Remedy::OtherOutOrDelete(dir.clone()),
            )
            .into());
        }
        return Ok(done(format!("embed shard {shard} is already done")));
    }
    let samples = &dataset.samples;
    let output = shard_file(&dir, shard, "f32");
    // The samples of the shard's rows, in row order.
    let (rows, dim, embedder) = match &config.embed_model {
        EmbedModel::Precomputed(path) => {
            let range = shard.split(samples.len(), |_| 1);
            let source = Precomputed::open(path, samples.len())?;
            // Block by block, so a shard never holds all its rows.
            write_atomically(&output, |out| {
                for start in range.clone().step_by(BLOCK_ROWS) {
                    let block = start..(start + BLOCK_ROWS).min(range.end);
                    let vectors = source.rows(block).map_err(std::io::Error::other)?;
                    let bytes: Vec<u8> = vectors.iter().flat_map(|x| x.to_le_bytes()).collect();
                    out.write_all(&bytes)?;
                }
                Ok(())
            })?;
            let record = super::precomputed_record(&loaded);
            (range.collect::<Vec<_>>(), source.dim(), record)
        }
        _ => {
            let (embedded, embedder) = with_embedder(config, &loaded, |embedder, prefix| {
                let batches = EmbeddingBatches::plan(embedder, samples, prefix);
                let range = batches.shard(shard);
                let bar = Phase::new("embedding", samples.len() as u64, "samples");
                Ok(batches.embed(embedder, range, |n| {
                    bar.set(n as u64);
                    super::go_on(stop)
                })?)
            })?;
            let dim = embedded.first().map_or(0, |(_, v)| v.len());
            write_atomically(&output, |out| {
                embedded.iter().try_for_each(|(_, v)| {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    out.write_all(&bytes)
                })
            })?;
            (embedded.iter().map(|(i, _)| *i).collect(), dim, embedder)
        }
    };
    let embedded = rows.len();
    let record = EmbedShard {
        config: config.clone(),
        settings: loaded.settings.clone(),
        samples: rows,
        dim,
        embedder,
        seconds: clock.elapsed().as_secs_f64(),
    };
    write_json(&marker, &record)?;
    Ok(done(format!(
        "embed shard {shard}: {embedded} of {} samples embedded",
        samples.len()
    )))
}

/// Every path the run reads, made absolute, so later stages find them from any directory.
fn with_absolute_paths(config: &SelectConfig) -> SelectConfig {
    let absolute = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let mut config = config.clone();
    config.data = absolute(&config.data);
    config.model = absolute(&config.model);
    config.chat_template = config.chat_template.as_deref().map(absolute);
    match &config.embed_model {
        EmbedModel::File(path) => config.embed_model = EmbedModel::File(absolute(path)),
        EmbedModel::Precomputed(path) => {
            config.embed_model = EmbedModel::Precomputed(absolute(path))
        }
        EmbedModel::Scoring => {}
    }
    config
}

/// `miwv neighbours`: gathers every embedding shard of the run in `run` and finds each
/// sample's neighbour; the one stage that sees all embeddings.
///
/// # Errors
/// A missing or mismatched embedding shard (naming the command that makes it), engine and
/// FAISS failures.
pub fn neighbours(run: &Path) -> Result<StageSummary, Error> {
    let embed_dir = run.join("checkpoint").join("embed");
    let count = shard_count(&embed_dir, "embed", run)?;
    let _lock = RunLock::run(run, "miwv neighbours")?;
    let shards: Vec<EmbedShard> = (0..count)
        .map(|index| {
            let shard = Shard::new(index, count).expect("index below count");
            read_shard_marker(&embed_dir, "embed", shard, run)
        })
        .collect::<Result<_, _>>()?;
    let first = &shards[0];
    let mut config = first.config.clone();
    config.out_dir = run.to_path_buf();
    let dataset = read_samples_only(&config)?;
    let loaded = load_models(&config)?;
    let n = dataset.samples.len();
    // A shard may hold no samples (more shards than batches); its width is 0.
    let dim = shards.iter().map(|s| s.dim).max().unwrap_or(0);
    let rows = EmbeddingRows::open(&embed_dir, &shards, &loaded.settings, n, dim)?;
    let embeddings = loaded.state.embeddings_path();
    rows.write_in_sample_order(&embeddings)?;
    let (found, search) = search_neighbours(
        &config,
        &FileVectors::open(&embeddings, dim)?,
        &text_hashes(&dataset.samples),
    )?;
    let retrieval = Retrieval {
        dim,
        neighbours: found,
        embedder: EmbedderRecord {
            index: describe_index(&search),
            ..first.embedder.clone()
        },
        search: Some(search),
    };
    loaded.state.save_retrieval_record(&retrieval)?;
    let (fit, unscorable) = save_plan(&config, &loaded, &dataset, &retrieval)?;
    write_json(
        &stage_record_path(run),
        &StageRecord {
            config,
            embed_shards: count,
        },
    )?;
    let mut message = format!(
        "neighbours of {n} samples from {count} embed shards; planned with a {}-token context",
        fit.sizes.ctx_per_sequence
    );
    if !unscorable.is_empty() {
        message += &format!(
            "; left without a MIWV: {} (`miwv plan {}` shows the lengths)",
            UnscoredGroup::tally(&unscorable),
            run.display()
        );
    }
    Ok(done(message))
}

/// Plans the run's decodes once, on every core, and saves the plan's table, its context and
/// the samples in the run directory, so that a score shard reads only what its own segments
/// need and the merge plans without rendering the dataset again. Returns the context and
/// the samples the plan leaves unscorable.
fn save_plan(
    config: &SelectConfig,
    loaded: &Loaded,
    dataset: &crate::data::dataset::Dataset,
    retrieval: &Retrieval,
) -> Result<(ContextFit, Vec<UnscoredGroup>), Error> {
    let clock = Instant::now();
    let (plan, fit) = scoring_plan(config, loaded, dataset, retrieval)?;
    SampleStore::write(&loaded.state.plan_dir()?, &dataset.samples)?;
    loaded.state.save_fit(&fit)?;
    loaded.state.save_plan(plan.table())?;
    tracing::info!(
        samples = dataset.samples.len(),
        steps = plan.steps(),
        tokens = plan.tokens_in(0..plan.steps()),
        seconds = clock.elapsed().as_secs_f64(),
        "planned"
    );
    let samples = &dataset.samples;
    let unscorable = UnscoredGroup::of(plan.table().failed.iter().copied(), |i| {
        samples[i].id.clone()
    });
    Ok((fit, unscorable))
}

/// The plan `neighbours` saved, its sequences rendered from the run's sample store, and the
/// context it fitted; `threads`, when given, replaces the run's thread count here.
pub(super) fn saved_plan<'a>(
    config: &SelectConfig,
    model: &'a Model,
    template: &Template,
    state: &RunState,
    threads: Option<usize>,
) -> Result<(ScoringPlan<'a>, ContextFit), Error> {
    let run = &config.out_dir;
    let table = state.load_plan()?.ok_or_else(|| no_neighbours(run))?;
    let mut fit = state.load_fit()?.ok_or_else(|| no_neighbours(run))?;
    if let Some(threads) = threads {
        // The workers the budget allowed, at most one per thread.
        fit.sizes.threads = threads;
        fit.sizes.workers = fit.sizes.workers.min(threads).max(1);
    }
    let store = SampleStore::open(&state.plan_dir()?)?.ok_or_else(|| no_neighbours(run))?;
    let options = scoring_options(config, template, fit.sizes);
    let renderer = Renderer::new(model, store, &options);
    let plan = ScoringPlan::from_table(Box::new(renderer), table, &options)?;
    Ok((plan, fit))
}

/// What a score shard decodes with: the model and template, checked against the settings
/// `neighbours` saved. A shard reads neither the data nor the embeddings (the plan and the
/// sample store hold what it needs), so it hashes only the model, however large the dataset.
pub(super) struct Scorer {
    pub(super) model: Model,
    pub(super) template: Template,
    pub(super) state: RunState,
}

impl Scorer {
    pub(super) fn load(config: &SelectConfig, run: &Path) -> Result<Self, Error> {
        let saved = RunState::saved_settings(run)?.ok_or_else(|| no_neighbours(run))?;
        crate::engine::check_model_file(&config.model)?;
        let record = super::file_record(&config.model)?;
        let (model, template) = super::load_scoring_model(config)?;
        // Another model or template than the run's is refused by name, as for any stage.
        let mut settings = saved;
        settings["model_sha256"] = record.sha256.into();
        settings["template"] = serde_json::to_value(&template).expect("a template serialises");
        let state = RunState::open(run, &settings)?;
        Ok(Scorer {
            model,
            template,
            state,
        })
    }
}

fn no_neighbours(run: &Path) -> Error {
    ResumeError::Missing {
        run: run.to_path_buf(),
        what: "no neighbours yet".into(),
        command: format!("`miwv neighbours {}`", run.display()),
    }
    .into()
}

/// The embedding shards' row files, checked against the run, and where each sample's row is.
struct EmbeddingRows {
    /// Per sample: (shard, row in its file).
    place: Vec<(usize, usize)>,
    files: Vec<std::fs::File>,
    dim: usize,
}

impl EmbeddingRows {
    /// Opens every shard's rows; refuses a shard made with other settings or of the wrong
    /// size, and a sample no shard holds.
    fn open(
        embed_dir: &Path,
        shards: &[EmbedShard],
        settings: &serde_json::Value,
        n: usize,
        dim: usize,
    ) -> Result<Self, Error> {
        let count = shards.len();
        let mut place: Vec<Option<(usize, usize)>> = vec![None; n];
        let mut files = Vec::with_capacity(count);
        for (index, record) in shards.iter().enumerate() {
            let shard = Shard::new(index, count).expect("index below count");
            if record.settings != *settings || (record.dim != dim && !record.samples.is_empty()) {
                return Err(ResumeError::incompatible(
                    &shard_file(embed_dir, shard, "json"),
                    Mismatch::OtherEmbedding,
                    Remedy::Delete(embed_dir.to_path_buf()),
                )
                .into());
            }
            let path = shard_file(embed_dir, shard, "f32");
            let file = std::fs::File::open(&path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
            if bytes != (record.samples.len() * dim * 4) as u64
                || record.samples.iter().any(|&i| i >= n)
            {
                return Err(ResumeError::incompatible(
                    &path,
                    Mismatch::EmbeddingSize {
                        bytes,
                        rows: record.samples.len(),
                        dim,
                    },
                    Remedy::Delete(embed_dir.to_path_buf()),
                )
                .into());
            }
            for (row, &i) in record.samples.iter().enumerate() {
                place[i] = Some((index, row));
            }
            files.push(file);
        }
        let place = place
            .iter()
            .enumerate()
            .map(|(sample, at)| {
                at.ok_or_else(|| {
                    Error::from(ResumeError::incompatible(
                        embed_dir,
                        Mismatch::SampleMissing { count, sample },
                        Remedy::Delete(embed_dir.to_path_buf()),
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(EmbeddingRows { place, files, dim })
    }

    /// The run's embeddings in sample order at `path`, copied row by row: never all in memory.
    fn write_in_sample_order(&self, path: &Path) -> Result<(), Error> {
        let row_bytes = self.dim * 4;
        Ok(write_atomically(path, |out| {
            let mut row = vec![0u8; row_bytes];
            for &(shard, index) in &self.place {
                std::os::unix::fs::FileExt::read_exact_at(
                    &self.files[shard],
                    &mut row,
                    (index * row_bytes) as u64,
                )?;
                out.write_all(&row)?;
            }
            Ok(())
        })?)
    }
}

/// `miwv score`: decodes this shard's share of the plan for the run in `run`, resuming what
/// an earlier attempt of the same shard saved. `threads` overrides the run's thread count.
///
/// # Errors
/// Missing neighbours (naming the command), engine failures, a run directory made with other
/// settings or another shard count; an interrupted [`Error::Scoring`] when `stop` is set.
pub fn score(
    run: &Path,
    shard: Shard,
    threads: Option<usize>,
    stop: &AtomicBool,
) -> Result<StageSummary, Error> {
    let clock = Instant::now();
    let config = read_stage_record(run)?.config;
    let _lock = RunLock::shard(
        run,
        &format!("score-{}", shard.file_stem()),
        &format!("miwv score --shard {shard}"),
    )?;
    let scorer = Scorer::load(&config, run)?;
    let dir = scorer.state.stage_dir("score", shard.count)?;
    let marker = shard_file(&dir, shard, "json");
    if marker.exists() {
        return Ok(done(format!("score shard {shard} is already done")));
    }
    let (plan, fit) = saved_plan(
        &config,
        &scorer.model,
        &scorer.template,
        &scorer.state,
        threads,
    )?;
    let steps = plan.shard(shard);
    let ready_s = clock.elapsed().as_secs_f64();
    tracing::info!(ready_s, steps = ?steps, "score shard planned");
    let pool = ScorerPool::new(&scorer.model, fit.sizes);
    let mut progress = ScoringProgress::default();
    let (_, stats) = plan.decode(
        Decoders::Pool(&pool),
        steps.clone(),
        &mut scorer.state.shard_loss_log(shard),
        stop,
        |p| progress.update(p),
    )?;
    drop(progress);
    write_json(
        &marker,
        &ScoreShard {
            steps: steps.clone(),
            stats,
            seconds: clock.elapsed().as_secs_f64(),
            ready_s,
        },
    )?;
    Ok(done(format!(
        "score shard {shard}: steps {}..{} of {} decoded",
        steps.start,
        steps.end,
        plan.steps()
    )))
}

/// `miwv merge`: gathers every score shard of the run in `run` and writes `scores.jsonl`,
/// the selection and `run.json` exactly as `select` does. `budget` overrides the run's.
///
/// # Errors
/// A missing score shard (naming the command that makes it) or one saved for another plan.
pub fn merge(run: &Path, budget: Option<Budget>) -> Result<RunSummary, Error> {
    let started = Instant::now();
    let stage = read_stage_record(run)?;
    let _lock = RunLock::run(run, "miwv merge")?;
    let mut config = stage.config;
    if let Some(budget) = budget {
        config.budget = budget;
    }
    config.validate()?;
    let (format, dataset) = read_input(&config)?;
    let loaded = load_models(&config)?;
    let retrieval = saved_retrieval(&loaded, run)?;
    let (plan, fit) = saved_plan(
        &config,
        &loaded.model,
        &loaded.template,
        &loaded.state,
        None,
    )?;
    let score_dir = run.join("checkpoint").join("score");
    let count = shard_count(&score_dir, "score", run)?;
    let mut losses = Vec::new();
    let mut stats = Stats {
        planned_steps: plan.steps(),
        ..Stats::default()
    };
    let mut timings = Timings::default();
    for index in 0..count {
        let shard = Shard::new(index, count).expect("index below count");
        let record: ScoreShard = read_shard_marker(&score_dir, "score", shard, run)?;
        let steps = plan.shard(shard);
        let log = loaded.state.shard_loss_log(shard);
        let saved = log.saved(plan.digest(), steps.clone())?;
        if record.steps != steps || saved.steps_done != steps.end {
            return Err(ResumeError::incompatible(
                log.path(),
                Mismatch::Incomplete(steps),
                Remedy::Rerun(format!("miwv score {} --shard {shard}", run.display())),
            )
            .into());
        }
        losses.extend(saved.losses);
        stats.resumed_steps += record.stats.resumed_steps;
        stats.workers = stats.workers.max(record.stats.workers);
        stats.add(&record.stats);
        timings.scoring_s += record.seconds;
    }
    let outcome = plan.fold(&losses, stats)?;
    drop(plan);
    let ranking = Ranking::of(&outcome, config.budget);
    let summary = write_outputs(
        &config, format, &dataset, &retrieval, &outcome, &ranking, fit,
    )?;
    timings.total_s = started.elapsed().as_secs_f64();
    let mut record = super::run_record(
        &config, loaded, dataset, retrieval, outcome, timings, &summary,
    );
    record.shards = Some(ShardsRecord {
        embed: stage.embed_shards,
        score: count,
    });
    write_json(&summary.run, &record)?;
    Ok(summary)
}

/// The run's settings as `neighbours` recorded them, its output directory being `run`
/// wherever the stage runs.
pub(super) fn read_stage_record(run: &Path) -> Result<StageRecord, Error> {
    let path = stage_record_path(run);
    let mut record: StageRecord = read_json(&path)?.ok_or_else(|| {
        Error::from(ResumeError::Missing {
            run: run.to_path_buf(),
            what: "no neighbours yet".into(),
            command: format!(
                "`miwv neighbours {}` after every `miwv embed` shard",
                run.display()
            ),
        })
    })?;
    record.config.out_dir = run.to_path_buf();
    Ok(record)
}

fn saved_retrieval(loaded: &Loaded, run: &Path) -> Result<Retrieval, Error> {
    loaded
        .state
        .load_retrieval()?
        .ok_or_else(|| no_neighbours(run))
}

/// The shard count of a stage's files (all must agree; see `RunState::stage_dir`).
fn shard_count(dir: &Path, stage: &str, run: &Path) -> Result<usize, Error> {
    let counts: std::collections::BTreeSet<usize> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| Shard::count_in_file_name(e.ok()?.file_name().to_str()?))
                .collect()
        })
        .unwrap_or_default();
    match counts.len() {
        1 => Ok(*counts.first().expect("one count")),
        0 => Err(ResumeError::Missing {
            run: run.to_path_buf(),
            what: format!("no {stage} shards"),
            command: format!("{} first", stage_command(stage, run, "K/N")),
        }
        .into()),
        _ => Err(ResumeError::incompatible(
            dir,
            Mismatch::MixedShardCounts {
                stage: stage.into(),
                counts: counts.into_iter().collect(),
            },
            Remedy::Delete(dir.to_path_buf()),
        )
        .into()),
    }
}

/// The command that makes shard `shard` (`K/N`, or a placeholder) of `stage`.
fn stage_command(stage: &str, run: &Path, shard: &str) -> String {
    match stage {
        "embed" => format!(
            "`miwv embed DATA --out {} --shard {shard}` with the run's flags",
            run.display()
        ),
        _ => format!("`miwv score {} --shard {shard}`", run.display()),
    }
}

/// A shard's done marker, or an error naming the command that makes it.
fn read_shard_marker<T: serde::de::DeserializeOwned>(
    dir: &Path,
    stage: &str,
    shard: Shard,
    run: &Path,
) -> Result<T, Error> {
    read_json(&shard_file(dir, shard, "json"))?.ok_or_else(|| {
        ResumeError::Missing {
            run: run.to_path_buf(),
            what: format!("{stage} shard {shard} has no results"),
            command: stage_command(stage, run, &shard.to_string()),
        }
        .into()
    })
}
