//! `miwv select`: the pipeline from a dataset file to a selected subset.
//!
//! data -> embeddings -> neighbours -> token sequences -> packed decodes -> losses -> MIWV ->
//! selection -> output files. Each step is its own module; this one only wires them together
//! and records what was done in `run.json`. [`select_until`] reads as those phases: read the
//! data, load the models, retrieve (or reuse) the neighbours, score, rank, write.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;

use crate::data::dataset::Sample;
use crate::data::dataset::{Dataset, ReadOptions};
use crate::data::output::{file_sha256, write_json, write_jsonl};
use crate::data::records::{output_file_name, read_samples, write_selected, FileFormat};
use crate::engine::embed::{default_prefix, embed_samples, read_precomputed};
use crate::engine::{check_model_file, Embedder, Model, ScorerPool};
use crate::retrieval::neighbours::{find_neighbours, SliceVectors, VectorSource};
use crate::scoring::prompt::{Template, TemplateChoice, TemplateError};
use crate::scoring::scheduler::{Decoders, Outcome, ScoringOptions, ScoringPlan};
use crate::scoring::select::{top_by_score, Budget};
use crate::scoring::sequences::{PlanTable, Renderer};
use crate::scoring::sizes::{ContextFit, ContextSizes, Room, SizeRequest};
use crate::state::config::{EmbedModel, SelectConfig};
use crate::state::lock::RunLock;
use crate::state::progress::{Phase, ScoringProgress};
use crate::state::resume::{Mismatch, Remedy, ResumeError, Retrieval, RunState};
use crate::state::schema::{
    BudgetRecord, EmbedderRecord, FileRecord, Ifd, IndexReport, Neighbour, RunRecord, ScoreRow,
    Timings, UnscoredGroup,
};

mod error;
pub mod estimate;
pub mod stages;

pub use error::Error;

/// What a finished run produced.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// `scores.jsonl`.
    pub scores: PathBuf,
    /// The selected records, in the input's format (`selected.jsonl`, `selected.parquet`, ...).
    pub selected: PathBuf,
    /// `run.json`.
    pub run: PathBuf,
    /// Samples read.
    pub samples: usize,
    /// Samples with a defined MIWV.
    pub scored: usize,
    /// Samples selected.
    pub selected_count: usize,
    /// Samples left without a MIWV, by reason.
    pub unscorable: Vec<UnscoredGroup>,
    /// How the context was fitted.
    pub context: ContextFit,
}

impl RunSummary {
    /// What a run's last lines say about the samples it could not score, or `None` when it
    /// scored them all: counts by reason, what each reason means here, and the first ids.
    pub fn unscorable_lines(&self) -> Option<String> {
        let left: usize = self.unscorable.iter().map(|g| g.count).sum();
        if left == 0 {
            return None;
        }
        let mut out = format!("{left} of {} samples have no MIWV:\n", self.samples);
        for group in &self.unscorable {
            out += &format!(
                "  {:<16} {:>7}  {}; first: {}\n",
                group.reason.name(),
                group.count,
                group.reason.explain(self.context.limit),
                group.first_ids.join(", ")
            );
        }
        Some(out)
    }
}

/// Runs the whole selection and writes the three output files, resuming whatever an earlier
/// run with the same settings saved in `OUT/checkpoint/`.
///
/// # Errors
/// Any step's error: bad settings, bad input (naming file, line and field), model or engine
/// failures, unwritable output.
pub fn select(config: &SelectConfig) -> Result<RunSummary, Error> {
    select_until(config, &AtomicBool::new(false))
}

/// [`select`], stopping at the next decode once `stop` is set (losses up to the last
/// checkpoint stay saved).
///
/// # Errors
/// As [`select`]; an interrupted [`Error::Scoring`] when stopped.
pub fn select_until(config: &SelectConfig, stop: &AtomicBool) -> Result<RunSummary, Error> {
    config.validate()?;
    let _lock = RunLock::run(&config.out_dir, "miwv select")?;
    let started = Instant::now();
    let mut timings = Timings::default();
    let (format, dataset) = read_input(config)?;

    let clock = Instant::now();
    let loaded = load_models(config)?;
    check_renders(config, &loaded, &dataset)?;
    timings.load_s = clock.elapsed().as_secs_f64();

    let clock = Instant::now();
    let retrieval = retrieval(config, &loaded, &dataset, stop)?;
    timings.retrieval_s = clock.elapsed().as_secs_f64();

    let clock = Instant::now();
    let (outcome, fit) = score(config, &loaded, &dataset, &retrieval, stop)?;
    timings.scoring_s = clock.elapsed().as_secs_f64();

    let ranking = Ranking::of(&outcome, config.budget);
    let summary = write_outputs(
        config, format, &dataset, &retrieval, &outcome, &ranking, fit,
    )?;
    timings.total_s = started.elapsed().as_secs_f64();
    timings.peak_rss_mib = crate::state::progress::peak_rss_mib();
    let record = run_record(
        config, loaded, dataset, retrieval, outcome, timings, &summary,
    );
    // run.json is written last: when it is there, the other files belong to it.
    write_json(&summary.run, &record)?;
    Ok(summary)
}

/// The dataset, read and checked before any model is loaded.
fn read_input(config: &SelectConfig) -> Result<(FileFormat, Dataset), Error> {
    read_dataset_with(config, &config.read)
}

/// The dataset without its records, for the stages that never write the selection.
fn read_samples_only(config: &SelectConfig) -> Result<Dataset, Error> {
    let read = ReadOptions {
        drop_records: true,
        ..config.read.clone()
    };
    Ok(read_dataset_with(config, &read)?.1)
}

fn read_dataset_with(
    config: &SelectConfig,
    read: &ReadOptions,
) -> Result<(FileFormat, Dataset), Error> {
    std::fs::create_dir_all(&config.out_dir).map_err(|source| Error::Io {
        path: config.out_dir.clone(),
        source,
    })?;
    let (format, dataset) = read_samples(&config.data, read)?;
    if let Some(cut) = &dataset.truncated {
        tracing::warn!("{}: {cut}", config.data.display());
    }
    if dataset.samples.is_empty() {
        return Err(Error::EmptyDataset(config.data.clone()));
    }
    tracing::info!(samples = dataset.samples.len(), file = %config.data.display(), %format, "read dataset");
    Ok((format, dataset))
}

/// The scoring model, its template, the files' records and the checkpoint directory they
/// bind to.
struct Loaded {
    model: Model,
    template: Template,
    data: FileRecord,
    scoring_model: FileRecord,
    embed_file: Option<FileRecord>,
    /// What changes a score (see [`settings`]), which the checkpoint directory is bound to.
    settings: serde_json::Value,
    state: RunState,
}

fn load_models(config: &SelectConfig) -> Result<Loaded, Error> {
    check_model_file(&config.model)?;
    if let EmbedModel::File(path) = &config.embed_model {
        check_model_file(path)?;
    }
    let data = file_record(&config.data)?;
    let mut scoring_model = file_record(&config.model)?;
    let embed_file = match &config.embed_model {
        EmbedModel::Scoring => None,
        EmbedModel::File(path) | EmbedModel::Precomputed(path) => Some(file_record(path)?),
    };
    let (model, template) = load_scoring_model(config)?;
    scoring_model.gguf = Some(model.info());
    let settings = settings(
        config,
        &template,
        &data,
        &scoring_model,
        embed_file.as_ref(),
    );
    let state = RunState::open(&config.out_dir, &settings)?;
    Ok(Loaded {
        model,
        template,
        data,
        scoring_model,
        embed_file,
        settings,
        state,
    })
}

/// The scoring model, loaded and checked to fit a sequence of the run's context, and the
/// template it is scored with.
fn load_scoring_model(config: &SelectConfig) -> Result<(Model, Template), Error> {
    let model = Model::load(&config.model, config.gpu_layers)?;
    model.check_can_score(config.sizes.ctx.tokens())?;
    let template = resolve_template(&model, config.template, config.chat_template.as_deref())?;
    tracing::info!(template = template.name(), "template");
    Ok((model, template))
}

/// The template `choice` means for `model` (its own chat template for `auto` and `model`,
/// or the Jinja file `chat_template` in its place).
///
/// # Errors
/// [`Error::Io`] when the file cannot be read, [`Error::Template`] naming the model file or
/// the template file.
pub fn resolve_template(
    model: &Model,
    choice: TemplateChoice,
    chat_template: Option<&Path>,
) -> Result<Template, Error> {
    let replacement = chat_template.map(read_chat_template).transpose()?;
    Template::resolve(choice, model.chat().as_ref(), replacement.as_deref()).map_err(|source| {
        Error::Template {
            path: chat_template.unwrap_or(model.path()).to_path_buf(),
            source,
        }
    })
}

/// A `--chat-template` file's text, refused unread when it is longer than any chat template.
fn read_chat_template(path: &Path) -> Result<String, Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::metadata(path).map_err(io)?.len();
    if bytes > crate::data::gguf::MAX_TEMPLATE_BYTES as u64 {
        return Err(Error::Template {
            path: path.to_path_buf(),
            source: TemplateError::TooLong {
                bytes,
                limit: crate::data::gguf::MAX_TEMPLATE_BYTES,
            },
        });
    }
    std::fs::read_to_string(path).map_err(io)
}

/// Checks that the chat template renders every sample, alone and after itself, within its
/// bounds, before any model work; a failure names the template's file and the sample.
fn check_renders(config: &SelectConfig, loaded: &Loaded, dataset: &Dataset) -> Result<(), Error> {
    loaded
        .template
        .check_samples(&dataset.samples)
        .map_err(|source| Error::Unrenderable {
            template: config
                .chat_template
                .clone()
                .unwrap_or_else(|| config.model.clone()),
            source,
        })
}

/// The neighbours an earlier run saved, or new ones.
fn retrieval(
    config: &SelectConfig,
    loaded: &Loaded,
    dataset: &Dataset,
    stop: &AtomicBool,
) -> Result<Retrieval, Error> {
    let samples = &dataset.samples;
    let state = &loaded.state;
    match state.load_retrieval()? {
        Some(saved) if saved.neighbours.len() == samples.len() => {
            tracing::info!("reusing the saved neighbours in {}", state.dir().display());
            Ok(saved)
        }
        Some(_) => Err(ResumeError::incompatible(
            state.dir(),
            Mismatch::OtherDataset,
            Remedy::OtherOutOrDelete(state.dir().to_path_buf()),
        )
        .into()),
        None => {
            let (retrieval, embeddings) = retrieve(config, loaded, dataset, stop)?;
            state.save_retrieval(&retrieval, &embeddings)?;
            Ok(retrieval)
        }
    }
}

/// Scores every sample through a llama.cpp scoring context, journalled in the checkpoint
/// directory.
fn score(
    config: &SelectConfig,
    loaded: &Loaded,
    dataset: &Dataset,
    retrieval: &Retrieval,
    stop: &AtomicBool,
) -> Result<(Outcome, ContextFit), Error> {
    let (plan, fit) = scoring_plan(config, loaded, dataset, retrieval)?;
    loaded.state.save_fit(&fit)?;
    let pool = ScorerPool::new(&loaded.model, fit.sizes);
    let mut progress = ScoringProgress::default();
    let outcome = plan.score(
        Decoders::Pool(&pool),
        &mut loaded.state.loss_log(),
        stop,
        |p| progress.update(p),
    )?;
    Ok((outcome, fit))
}

/// The run's whole decode plan, the same in every process that builds it, and the context
/// sizes it is decoded with: those an earlier run of the same settings saved while they
/// still fit the memory budget, otherwise fitted anew to the data (see
/// [`SizeRequest::fit`](crate::scoring::sizes::SizeRequest::fit)).
fn scoring_plan<'a>(
    config: &SelectConfig,
    loaded: &'a Loaded,
    dataset: &'a Dataset,
    retrieval: &Retrieval,
) -> Result<(ScoringPlan<'a>, ContextFit), Error> {
    let model = &loaded.model;
    let examples = examples(retrieval);
    let (table, fit) = fitted_table(&config.sizes, model, loaded.state.load_fit()?, |sizes| {
        let options = scoring_options(config, &loaded.template, sizes);
        Ok(PlanTable::plan(
            model,
            &dataset.samples,
            &examples,
            &options,
            sizes.ctx_per_sequence,
        )?)
    })?;
    let options = scoring_options(config, &loaded.template, fit.sizes);
    let renderer = Renderer::new(model, &dataset.samples[..], &options);
    let plan = ScoringPlan::from_table(Box::new(renderer), table, &options)?;
    Ok((plan, fit))
}

/// The one sizing rule of every path (select, stages, bench): the longest sequence allowed
/// ([`SizeRequest::limit`]), the plan's table made by `table_at` at that limit (with the
/// slots asked for), then the sizes fitted to its longest sequence ([`SizeRequest::fit`]).
/// A `saved` fit of the same `--ctx-size` is kept while it fits the memory budget, so a
/// resumed run decodes the plan it started. A table fitted to one slot decodes every
/// one-shot sequence whole.
///
/// # Errors
/// [`FitError`](crate::scoring::sizes::FitError) when the budget cannot hold the model and
/// one context, and `table_at`'s errors.
pub(crate) fn fitted_table(
    request: &SizeRequest,
    model: &Model,
    saved: Option<ContextFit>,
    table_at: impl FnOnce(ContextSizes) -> Result<PlanTable, Error>,
) -> Result<(PlanTable, ContextFit), Error> {
    let room = Room {
        trained: model.info().context_train as usize,
        weights: std::fs::metadata(model.path()).map_or(0, |m| m.len()),
        budget: match request.memory_budget {
            Some(budget) => budget,
            None => model
                .offload_device_memory()?
                .map_or_else(crate::scoring::sizes::default_memory_budget, |free| {
                    free / 4 * 3
                }),
        },
    };
    let memory = |s: &ContextSizes| model.context_memory(s).total();
    let saved = saved.filter(|fit| fit.asked == request.ctx && fit.fits(&room));
    let limit = match saved {
        Some(fit) => fit.limit,
        None => request.limit(&room, &memory)?,
    };
    let table = table_at(request.at(limit, request.parallel, 1))?;
    let fit = match saved {
        Some(fit) => fit,
        None => request.fit(table.longest(), limit, &room, &memory)?,
    };
    log_fit(&fit);
    let table = if fit.sizes.parallel < 2 {
        table.without_reuse()
    } else {
        table
    };
    Ok((table, fit))
}

/// Says how the context was fitted.
fn log_fit(fit: &ContextFit) {
    let s = &fit.sizes;
    tracing::info!(
        "context: {} tokens per sequence (--ctx-size {}; longest sequence {}, limit {}), \
         {} slots, batch {}, {} workers; about {} MiB of {} MiB budgeted",
        s.ctx_per_sequence,
        fit.asked,
        fit.longest_sequence,
        fit.limit,
        s.parallel,
        s.batch,
        s.workers,
        fit.memory_mib,
        fit.memory_budget_mib
    );
}

/// How the run's settings score, at the given sizes.
fn scoring_options(
    config: &SelectConfig,
    template: &Template,
    sizes: ContextSizes,
) -> ScoringOptions {
    ScoringOptions {
        sizes,
        kv_reuse: config.kv_reuse,
        template: template.clone(),
        append_eos: config.append_eos,
        response_only: config.also_ifd,
        checkpoint_tokens: config.checkpoint_tokens,
    }
}

/// Each sample's example: its neighbour's index.
fn examples(retrieval: &Retrieval) -> Vec<Option<usize>> {
    retrieval
        .neighbours
        .iter()
        .map(|n| n.map(|n| n.index))
        .collect()
}

/// Samples by MIWV, and which are kept.
struct Ranking {
    /// 1-based rank of each sample among the scored ones.
    rank: Vec<Option<usize>>,
    /// Samples kept, in input order.
    chosen: Vec<usize>,
    /// Samples with a defined MIWV.
    scored: usize,
    /// How many the budget asked for.
    wanted: usize,
}

impl Ranking {
    fn of(outcome: &Outcome, budget: Budget) -> Self {
        let n = outcome.scores.len();
        let miwv: Vec<f32> = outcome.scores.iter().map(|s| s.miwv).collect();
        let wanted = budget.count(n);
        let ranked = top_by_score(&miwv, n);
        let mut rank = vec![None; n];
        for (r, &i) in ranked.iter().enumerate() {
            rank[i] = Some(r + 1);
        }
        let mut chosen: Vec<usize> = ranked.iter().copied().take(wanted).collect();
        chosen.sort_unstable();
        Ranking {
            rank,
            chosen,
            scored: ranked.len(),
            wanted,
        }
    }
}

/// Writes `scores.jsonl` and the selection, after removing an older `run.json` so that a
/// directory never pairs it with newer files.
fn write_outputs(
    config: &SelectConfig,
    format: FileFormat,
    dataset: &Dataset,
    retrieval: &Retrieval,
    outcome: &Outcome,
    ranking: &Ranking,
    context: ContextFit,
) -> Result<RunSummary, Error> {
    let samples = &dataset.samples;
    let summary = RunSummary {
        scores: config.out_dir.join("scores.jsonl"),
        selected: config.out_dir.join(output_file_name(format)),
        run: config.out_dir.join("run.json"),
        samples: samples.len(),
        scored: ranking.scored,
        selected_count: ranking.chosen.len(),
        unscorable: UnscoredGroup::of(outcome.scores.iter().map(|s| s.reason), |i| {
            samples[i].id.clone()
        }),
        context,
    };
    match std::fs::remove_file(&summary.run) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::Io {
                path: summary.run.clone(),
                source: e,
            })
        }
        _ => {}
    }
    let rows = (0..samples.len())
        .map(|i| score_row(i, dataset, retrieval, outcome, ranking, config.also_ifd));
    write_jsonl(&summary.scores, rows)?;
    write_selected(
        &config.data,
        format,
        &summary.selected,
        &ranking.chosen,
        |i| &samples[i].record,
    )?;
    Ok(summary)
}

/// Sample `i`'s line of `scores.jsonl`.
fn score_row(
    i: usize,
    dataset: &Dataset,
    retrieval: &Retrieval,
    outcome: &Outcome,
    ranking: &Ranking,
    with_ifd: bool,
) -> ScoreRow {
    let samples = &dataset.samples;
    let (scores, usage) = (&outcome.scores[i], &outcome.usage[i]);
    let n = retrieval.neighbours[i];
    ScoreRow {
        id: samples[i].id.clone(),
        index: i,
        miwv: scores.miwv,
        loss_zero_shot: scores.loss_zero_shot,
        loss_one_shot: scores.loss_one_shot,
        reason: scores.reason,
        neighbour_id: n.map(|n| samples[n.index].id.clone()),
        neighbour_index: n.map(|n| n.index),
        similarity: n.map(|n| n.similarity),
        response_tokens: usage.response_tokens,
        prompt_tokens_zero_shot: usage.prompt_tokens_zero_shot,
        prompt_tokens_one_shot: usage.prompt_tokens_one_shot,
        tokens_zero_shot: usage.tokens_zero_shot,
        tokens_one_shot: usage.tokens_one_shot,
        selected: Some(ranking.rank[i].is_some_and(|r| r <= ranking.wanted)),
        rank: ranking.rank[i],
        turns: samples[i].turns.len(),
        ifd: with_ifd.then(|| Ifd::new(scores.loss_zero_shot, outcome.response_only[i])),
    }
}

fn run_record(
    config: &SelectConfig,
    loaded: Loaded,
    dataset: Dataset,
    retrieval: Retrieval,
    outcome: Outcome,
    timings: Timings,
    summary: &RunSummary,
) -> RunRecord {
    let samples = dataset.samples.len();
    RunRecord {
        tool: concat!("miwv ", env!("CARGO_PKG_VERSION")).into(),
        data: loaded.data,
        data_truncated: dataset.truncated,
        scoring_model: loaded.scoring_model,
        embedder: retrieval.embedder,
        neighbour_search: retrieval.search,
        template_choice: config.template,
        template_name: loaded.template.name().to_string(),
        separator: loaded.template.separator().into(),
        template: serde_json::to_value(&loaded.template).expect("a template is plain data"),
        read: config.read.clone(),
        append_eos: config.append_eos,
        also_ifd: config.also_ifd,
        budget: match config.budget {
            Budget::Ratio(r) => BudgetRecord {
                ratio: Some(r),
                count: None,
            },
            Budget::Count(c) => BudgetRecord {
                ratio: None,
                count: Some(c),
            },
        },
        context: summary.context.sizes,
        context_fit: Some(summary.context),
        samples,
        scored: summary.scored,
        unscorable: samples - summary.scored,
        unscorable_reasons: summary.unscorable.clone(),
        selected: summary.selected_count,
        kv_reuse: config.kv_reuse,
        checkpoint_tokens: config.checkpoint_tokens,
        scoring: outcome.stats,
        timings,
        shards: None,
    }
}

/// Everything that changes a score, and nothing that does not (threads, the budget), so a
/// run may be resumed with another `--threads` or `--ratio` but never mixes other scores in.
fn settings(
    config: &SelectConfig,
    template: &Template,
    data: &FileRecord,
    model: &FileRecord,
    embed_model: Option<&FileRecord>,
) -> serde_json::Value {
    let s = &config.sizes;
    let mut settings = serde_json::json!({
        "tool": env!("CARGO_PKG_VERSION"),
        "data_sha256": data.sha256,
        "model_sha256": model.sha256,
        "embed_model_sha256": embed_model.map_or("self", |m| m.sha256.as_str()),
        "embed_prefix": config.embed_prefix,
        "template": template,
        "read": config.read,
        "append_eos": config.append_eos,
        "also_ifd": config.also_ifd,
        "ctx_size": s.ctx,
        "parallel": s.parallel,
        "batch_size": s.batch,
        "ubatch_size": s.ubatch,
        "kv_reuse": config.kv_reuse,
        "n_gpu_layers": config.gpu_layers,
        "checkpoint_tokens": config.checkpoint_tokens,
        "index": config.neighbours.index,
        "nprobe": config.neighbours.nprobe,
    });
    // Only when set, so runs made before the setting existed still resume.
    if let Some(ef_search) = config.neighbours.ef_search {
        settings["ef_search"] = ef_search.into();
    }
    settings
}

/// Embeds the samples and finds each one's neighbour.
fn retrieve(
    config: &SelectConfig,
    loaded: &Loaded,
    dataset: &Dataset,
    stop: &AtomicBool,
) -> Result<(Retrieval, Vec<f32>), Error> {
    let samples = &dataset.samples;
    let ((vectors, dim), embedder) = match &config.embed_model {
        EmbedModel::Precomputed(path) => (
            read_precomputed(path, samples.len())?,
            precomputed_record(loaded),
        ),
        _ => with_embedder(config, loaded, |embedder, prefix| {
            let bar = Phase::new("embedding", samples.len() as u64, "samples");
            Ok(embed_samples(embedder, samples, prefix, |done| {
                bar.set(done as u64);
                go_on(stop)
            })?)
        })?,
    };
    tracing::info!(dim, "embedded samples");
    let (neighbours, search) = search_neighbours(
        config,
        &SliceVectors::new(&vectors, dim)?,
        &text_hashes(samples),
    )?;
    let retrieval = Retrieval {
        dim,
        neighbours,
        embedder: EmbedderRecord {
            index: describe_index(&search),
            ..embedder
        },
        search: Some(search),
    };
    Ok((retrieval, vectors))
}

/// Whether a long phase goes on: it breaks once `stop` is set.
fn go_on(stop: &AtomicBool) -> ControlFlow<()> {
    if stop.load(Ordering::Relaxed) {
        ControlFlow::Break(())
    } else {
        ControlFlow::Continue(())
    }
}

/// Every sample's neighbour by `config`'s index, with a spinner and the search logged.
fn search_neighbours(
    config: &SelectConfig,
    vectors: &dyn VectorSource,
    hashes: &[u64],
) -> Result<(Vec<Option<Neighbour>>, IndexReport), Error> {
    let bar = Phase::spinner("neighbours", "nearest other sample by cosine (FAISS)");
    let found = find_neighbours(vectors, hashes, &config.neighbours, &mut |_, _, _| {})?;
    drop(bar);
    let report = &found.report;
    tracing::info!(
        index = %report.plan.factory,
        nprobe = ?report.plan.nprobe,
        ef_search = ?report.plan.ef_search,
        duplicates = report.duplicates,
        recall_at_1 = ?report.recall_at_1,
        "neighbours found"
    );
    Ok((found.found, found.report))
}

/// The index as `run.json`'s embedder record names it.
fn describe_index(search: &IndexReport) -> String {
    let plan = &search.plan;
    if plan.exact {
        return "faiss Flat, inner product".into();
    }
    let mut described = plan.factory.clone();
    if let Some(nprobe) = plan.nprobe {
        described += &format!(", nprobe {nprobe}");
    }
    if let Some(ef_search) = plan.ef_search {
        described += &format!(", efSearch {ef_search}");
    }
    described + ", candidates re-ranked by exact inner product"
}

/// A hash of each sample's retrieval text, stable across builds: samples with the same text
/// are each other's neighbours without a search.
fn text_hashes(samples: &[Sample]) -> Vec<u64> {
    use sha2::{Digest, Sha256};
    samples
        .iter()
        .map(|s| {
            let digest = Sha256::digest(s.retrieval_text().as_bytes());
            u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
        })
        .collect()
}

/// Runs `embed` with an embedding context of the run's embedder (a separate GGUF, or the
/// scoring model itself) and the text prefix it expects; returns its result and how the
/// embeddings were made, for the record.
fn with_embedder<R>(
    config: &SelectConfig,
    loaded: &Loaded,
    embed: impl FnOnce(&mut Embedder, &str) -> Result<R, Error>,
) -> Result<(R, EmbedderRecord), Error> {
    let separate;
    let embed_model = match &config.embed_model {
        EmbedModel::Scoring => &loaded.model,
        EmbedModel::File(path) => {
            separate = Model::load(path, config.gpu_layers)?;
            &separate
        }
        EmbedModel::Precomputed(_) => unreachable!("precomputed embeddings need no embedder"),
    };
    let info = embed_model.info();
    let prefix = config
        .embed_prefix
        .clone()
        .unwrap_or_else(|| default_prefix(info.architecture.as_deref()).to_string());
    let mut embedder = Embedder::new(embed_model, config.sizes.threads)?;
    let result = embed(&mut embedder, &prefix)?;
    let record = EmbedderRecord {
        uses_scoring_model: loaded.embed_file.is_none(),
        model: loaded.embed_file.clone().map(|file| FileRecord {
            gguf: Some(info),
            ..file
        }),
        prefix,
        pooling: "mean".into(),
        normalised: true,
        index: "faiss Flat, inner product".into(),
        max_tokens: embedder.max_tokens(),
    };
    Ok((result, record))
}

/// How precomputed embeddings were "made", for the record.
fn precomputed_record(loaded: &Loaded) -> EmbedderRecord {
    EmbedderRecord {
        model: loaded.embed_file.clone(),
        uses_scoring_model: false,
        prefix: String::new(),
        pooling: "precomputed".into(),
        normalised: true,
        index: "faiss Flat, inner product".into(),
        max_tokens: 0,
    }
}

/// A file's record for `run.json`: canonical path, sha256 and size.
fn file_record(path: &Path) -> Result<FileRecord, Error> {
    let (sha256, bytes) = file_sha256(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(FileRecord {
        path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
        sha256,
        bytes,
        gguf: None,
    })
}
