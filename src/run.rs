//! `miwv select`: the pipeline from a dataset file to a selected subset.
//!
//! data -> embeddings -> neighbours -> token sequences -> packed decodes -> losses -> MIWV ->
//! selection -> output files. Each step is its own module; this one only wires them together
//! and records what was done in `run.json`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{EmbedModel, SelectConfig};
use crate::dataset::{ReadOptions, Sample, Truncation};
use crate::embed::{default_prefix, embed_samples};
use crate::engine::{check_model_file, ContextSizes, Embedder, Model, ModelInfo};
use crate::neighbours::nearest_others;
use crate::output::{write_json, write_jsonl, Ifd, ScoreRow};
use crate::progress::{Phase, ScoringProgress};
use crate::prompt::{Template, TemplateChoice};
use crate::records::{output_file_name, read_samples, write_selected};
use crate::resume::{Retrieval, RunState};
use crate::scheduler::{score_samples, ScoringOptions, Stats};
use crate::select::{top_by_score, Budget};
use crate::Error;

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
/// As [`select`]; [`Error::Interrupted`] when stopped.
pub fn select_until(config: &SelectConfig, stop: &AtomicBool) -> Result<RunSummary, Error> {
    config.validate()?;
    let started = Instant::now();
    std::fs::create_dir_all(&config.out_dir).map_err(|source| Error::Io {
        path: config.out_dir.clone(),
        source,
    })?;
    let (format, dataset) = read_samples(&config.data, &config.read)?;
    if let Some(cut) = &dataset.truncated {
        tracing::warn!("{}: {cut}", config.data.display());
    }
    let samples = dataset.samples;
    if samples.is_empty() {
        return Err(Error::EmptyDataset(config.data.clone()));
    }
    tracing::info!(samples = samples.len(), file = %config.data.display(), %format, "read dataset");

    let mut timings = Timings::default();
    let clock = Instant::now();
    check_model_file(&config.model)?;
    if let EmbedModel::File(path) = &config.embed_model {
        check_model_file(path)?;
    }
    let data = FileRecord::of(&config.data, None)?;
    let mut scoring_model = FileRecord::of(&config.model, None)?;
    let embed_file = match &config.embed_model {
        EmbedModel::Scoring => None,
        EmbedModel::File(path) => Some(FileRecord::of(path, None)?),
    };
    let model = Model::load(&config.model, config.gpu_layers)?;
    model.check_can_score(config.sizes.ctx_per_sequence)?;
    scoring_model.gguf = Some(model.info());
    let template = model.template(config.template)?;
    tracing::info!(template = template.name(), "template");
    let state = RunState::open(
        &config.out_dir,
        &settings(
            config,
            &template,
            &data,
            &scoring_model,
            embed_file.as_ref(),
        ),
    )?;
    timings.load_s = clock.elapsed().as_secs_f64();

    let clock = Instant::now();
    let retrieval = match state.load_retrieval()? {
        Some(saved) if saved.neighbours.len() == samples.len() => {
            tracing::info!("reusing the saved neighbours in {}", state.dir().display());
            saved
        }
        Some(_) => {
            return Err(Error::Resume(format!(
                "{}: saved neighbours do not match the dataset",
                state.dir().display()
            )))
        }
        None => {
            let (retrieval, embeddings) = retrieve(config, &model, &samples, embed_file)?;
            state.save_retrieval(&retrieval, &embeddings)?;
            retrieval
        }
    };
    let neighbours = &retrieval.neighbours;
    timings.retrieval_s = clock.elapsed().as_secs_f64();

    let clock = Instant::now();
    let options = ScoringOptions {
        sizes: config.sizes,
        kv_reuse: config.kv_reuse,
        template: template.clone(),
        append_eos: config.append_eos,
        response_only: config.also_ifd,
        checkpoint_tokens: config.checkpoint_tokens,
    };
    let mut progress = ScoringProgress::default();
    let outcome = score_samples(
        &model,
        &samples,
        neighbours,
        &options,
        &mut state.loss_log(stop),
        |p| progress.update(p),
    )?;
    drop(progress);
    let (scores, usage) = (outcome.scores, outcome.usage);
    timings.scoring_s = clock.elapsed().as_secs_f64();

    let miwv: Vec<f32> = scores.iter().map(|s| s.miwv).collect();
    let wanted = config.budget.count(samples.len());
    let ranked = top_by_score(&miwv, samples.len());
    let mut rank = vec![None; samples.len()];
    for (r, &i) in ranked.iter().enumerate() {
        rank[i] = Some(r + 1);
    }
    let mut chosen: Vec<usize> = ranked.iter().copied().take(wanted).collect();
    chosen.sort_unstable();

    let rows = (0..samples.len()).map(|i| {
        let n = neighbours[i];
        let ifd = config
            .also_ifd
            .then(|| Ifd::new(scores[i].loss_zero_shot, outcome.response_only[i]));
        ScoreRow {
            id: samples[i].id.clone(),
            index: i,
            miwv: scores[i].miwv,
            loss_zero_shot: scores[i].loss_zero_shot,
            loss_one_shot: scores[i].loss_one_shot,
            reason: scores[i].reason,
            neighbour_id: n.map(|n| samples[n.index].id.clone()),
            neighbour_index: n.map(|n| n.index),
            similarity: n.map(|n| n.similarity),
            response_tokens: usage[i].response_tokens,
            prompt_tokens_zero_shot: usage[i].prompt_tokens_zero_shot,
            prompt_tokens_one_shot: usage[i].prompt_tokens_one_shot,
            example_tokens_dropped: usage[i].example_tokens_dropped,
            selected: rank[i].is_some_and(|r| r <= wanted),
            rank: rank[i],
            turns: samples[i].turns.len(),
            ifd,
        }
    });
    let summary = RunSummary {
        scores: config.out_dir.join("scores.jsonl"),
        selected: config.out_dir.join(output_file_name(format)),
        run: config.out_dir.join("run.json"),
        samples: samples.len(),
        scored: ranked.len(),
        selected_count: chosen.len(),
    };
    // run.json is written last: when it is there, the other two files belong to it.
    match std::fs::remove_file(&summary.run) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::Io {
                path: summary.run.clone(),
                source: e,
            })
        }
        _ => {}
    }
    write_jsonl(&summary.scores, rows)?;
    write_selected(&config.data, format, &summary.selected, &chosen, |i| {
        &samples[i].record
    })?;

    timings.total_s = started.elapsed().as_secs_f64();
    let record = RunRecord {
        tool: concat!("miwv ", env!("CARGO_PKG_VERSION")),
        data,
        data_truncated: dataset.truncated,
        scoring_model,
        embedder: retrieval.embedder,
        template_choice: config.template,
        template_name: template.name().to_string(),
        separator: template.separator(),
        template,
        read: &config.read,
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
        context: config.sizes,
        samples: samples.len(),
        scored: ranked.len(),
        unscorable: samples.len() - ranked.len(),
        selected: chosen.len(),
        kv_reuse: config.kv_reuse,
        checkpoint_tokens: config.checkpoint_tokens,
        scoring: outcome.stats,
        timings,
    };
    write_json(&summary.run, &record)?;
    Ok(summary)
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
    serde_json::json!({
        "tool": env!("CARGO_PKG_VERSION"),
        "data_sha256": data.sha256,
        "model_sha256": model.sha256,
        "embed_model_sha256": embed_model.map_or("self", |m| m.sha256.as_str()),
        "embed_prefix": config.embed_prefix,
        "template": template,
        "read": config.read,
        "append_eos": config.append_eos,
        "also_ifd": config.also_ifd,
        "ctx_size": s.ctx_per_sequence,
        "parallel": s.parallel,
        "batch_size": s.batch,
        "ubatch_size": s.ubatch,
        "kv_reuse": config.kv_reuse,
        "n_gpu_layers": config.gpu_layers,
        "checkpoint_tokens": config.checkpoint_tokens,
    })
}

/// Embeds the samples and finds each one's neighbour.
fn retrieve(
    config: &SelectConfig,
    model: &Model,
    samples: &[Sample],
    embed_file: Option<FileRecord>,
) -> Result<(Retrieval, Vec<f32>), Error> {
    let separate;
    let embed_model = match &config.embed_model {
        EmbedModel::Scoring => model,
        EmbedModel::File(path) => {
            separate = Model::load(path, config.gpu_layers)?;
            &separate
        }
    };
    let info = embed_model.info();
    let prefix = config
        .embed_prefix
        .clone()
        .unwrap_or_else(|| default_prefix(info.architecture.as_deref()).to_string());
    let mut embedder = Embedder::new(embed_model, config.sizes.threads)?;
    let bar = Phase::new("embedding", samples.len() as u64, "samples");
    let (vectors, dim) =
        embed_samples(&mut embedder, samples, &prefix, |done| bar.set(done as u64))?;
    drop(bar);
    tracing::info!(dim, "embedded samples");
    let bar = Phase::spinner("neighbours", "nearest other sample by cosine (FAISS)");
    let neighbours = nearest_others(&vectors, dim)?;
    drop(bar);
    let record = EmbedderRecord {
        uses_scoring_model: embed_file.is_none(),
        model: embed_file.map(|file| FileRecord {
            gguf: Some(info),
            ..file
        }),
        prefix,
        pooling: "mean",
        normalised: true,
        index: "faiss Flat, inner product",
        max_tokens: embedder.max_tokens(),
    };
    let retrieval = Retrieval {
        dim,
        neighbours,
        embedder: serde_json::to_value(record).expect("the record serialises"),
    };
    Ok((retrieval, vectors))
}

#[derive(Debug, Default, Serialize)]
struct Timings {
    load_s: f64,
    retrieval_s: f64,
    scoring_s: f64,
    total_s: f64,
}

#[derive(Serialize)]
struct BudgetRecord {
    ratio: Option<f64>,
    count: Option<usize>,
}

#[derive(Serialize)]
struct FileRecord {
    path: PathBuf,
    sha256: String,
    bytes: u64,
    #[serde(flatten)]
    gguf: Option<ModelInfo>,
}

impl FileRecord {
    fn of(path: &Path, gguf: Option<ModelInfo>) -> Result<Self, Error> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let (sha256, bytes) = file_sha256(path).map_err(io)?;
        Ok(Self {
            path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
            sha256,
            bytes,
            gguf,
        })
    }
}

/// The sha256 (lowercase hex) and size of a file, read in 1 MiB pieces so a 7B model is
/// never held in memory.
///
/// # Errors
/// The I/O error.
pub fn file_sha256(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((sha256, bytes))
}

#[derive(Serialize)]
struct EmbedderRecord {
    model: Option<FileRecord>,
    uses_scoring_model: bool,
    prefix: String,
    pooling: &'static str,
    normalised: bool,
    index: &'static str,
    max_tokens: usize,
}

#[derive(Serialize)]
struct RunRecord<'a> {
    tool: &'static str,
    data: FileRecord,
    data_truncated: Option<Truncation>,
    scoring_model: FileRecord,
    embedder: serde_json::Value,
    template_choice: TemplateChoice,
    template_name: String,
    template: Template,
    separator: &'static str,
    read: &'a ReadOptions,
    append_eos: bool,
    also_ifd: bool,
    budget: BudgetRecord,
    context: ContextSizes,
    samples: usize,
    scored: usize,
    unscorable: usize,
    selected: usize,
    kv_reuse: bool,
    checkpoint_tokens: usize,
    scoring: Stats,
    timings: Timings,
}
