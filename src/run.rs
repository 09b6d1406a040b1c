//! `miwv select`: the pipeline from a dataset file to a selected subset.
//!
//! data -> embeddings -> neighbours -> token sequences -> packed decodes -> losses -> MIWV ->
//! selection -> output files. Each step is its own module; this one only wires them together
//! and records what was done in `run.json`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{EmbedModel, SelectConfig};
use crate::dataset::{read_dataset, Sample};
use crate::embed::{default_prefix, embed_samples};
use crate::engine::{ContextSizes, Embedder, Model, ModelInfo};
use crate::neighbours::{nearest_others, Neighbour};
use crate::output::{write_json, write_jsonl, ScoreRow};
use crate::prompt::Template;
use crate::scheduler::{score_samples, ScoringOptions, Stats};
use crate::select::{top_by_score, Budget};
use crate::Error;

/// What a finished run produced.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// `scores.jsonl`.
    pub scores: PathBuf,
    /// `selected.jsonl`.
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

/// Runs the whole selection and writes the three output files.
///
/// # Errors
/// Any step's error: bad settings, bad input (naming file, line and field), model or engine
/// failures, unwritable output.
pub fn select(config: &SelectConfig) -> Result<RunSummary, Error> {
    config.validate()?;
    let started = Instant::now();
    std::fs::create_dir_all(&config.out_dir).map_err(|source| Error::Io {
        path: config.out_dir.clone(),
        source,
    })?;
    let samples = read_dataset(&config.data)?;
    if samples.is_empty() {
        return Err(Error::EmptyDataset(config.data.clone()));
    }
    tracing::info!(samples = samples.len(), file = %config.data.display(), "read dataset");

    let mut timings = Timings::default();
    let clock = Instant::now();
    let model = Model::load(&config.model, config.gpu_layers)?;
    timings.load_s = clock.elapsed().as_secs_f64();

    let clock = Instant::now();
    let (embedder_record, neighbours) = retrieve(config, &model, &samples)?;
    timings.retrieval_s = clock.elapsed().as_secs_f64();

    let clock = Instant::now();
    let options = ScoringOptions {
        sizes: config.sizes,
        kv_reuse: config.kv_reuse,
        template: config.template,
        append_eos: config.append_eos,
    };
    let mut last_report = 0.0;
    let outcome = score_samples(
        &model,
        &samples,
        &neighbours,
        &options,
        |done, total, tokens| {
            let secs = clock.elapsed().as_secs_f64();
            if secs - last_report >= 10.0 || done == total {
                last_report = secs;
                tracing::info!(
                    "scored {done}/{total} decodes, {:.0} tokens/s",
                    tokens as f64 / secs.max(1e-9)
                );
            }
        },
    )?;
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
        }
    });
    let summary = RunSummary {
        scores: config.out_dir.join("scores.jsonl"),
        selected: config.out_dir.join("selected.jsonl"),
        run: config.out_dir.join("run.json"),
        samples: samples.len(),
        scored: ranked.len(),
        selected_count: chosen.len(),
    };
    write_jsonl(&summary.scores, rows)?;
    write_jsonl(
        &summary.selected,
        chosen.iter().map(|&i| &samples[i].record),
    )?;

    timings.total_s = started.elapsed().as_secs_f64();
    let record = RunRecord {
        tool: concat!("miwv ", env!("CARGO_PKG_VERSION")),
        data: FileRecord::of(&config.data, None)?,
        scoring_model: FileRecord::of(&config.model, Some(model.info()))?,
        embedder: embedder_record,
        template: config.template,
        separator: config.template.separator(),
        append_eos: config.append_eos,
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
        scoring: outcome.stats,
        timings,
    };
    write_json(&summary.run, &record)?;
    Ok(summary)
}

/// Embeds the samples and finds each one's neighbour.
fn retrieve(
    config: &SelectConfig,
    model: &Model,
    samples: &[Sample],
) -> Result<(EmbedderRecord, Vec<Option<Neighbour>>), Error> {
    let separate;
    let (embed_model, file) = match &config.embed_model {
        EmbedModel::Scoring => (model, None),
        EmbedModel::File(path) => {
            separate = Model::load(path, config.gpu_layers)?;
            (&separate, Some(path.as_path()))
        }
    };
    let info = embed_model.info();
    let prefix = config
        .embed_prefix
        .clone()
        .unwrap_or_else(|| default_prefix(info.architecture.as_deref()).to_string());
    let mut embedder = Embedder::new(embed_model, config.sizes.threads)?;
    let (vectors, dim) = embed_samples(&mut embedder, samples, &prefix)?;
    tracing::info!(dim, "embedded samples");
    let neighbours = nearest_others(&vectors, dim)?;
    let record = EmbedderRecord {
        model: match file {
            Some(path) => Some(FileRecord::of(path, Some(info))?),
            None => None,
        },
        uses_scoring_model: file.is_none(),
        prefix,
        pooling: "mean",
        normalised: true,
        index: "faiss Flat, inner product",
        max_tokens: embedder.max_tokens(),
    };
    Ok((record, neighbours))
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
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut bytes = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(io)?;
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
        Ok(Self {
            path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
            sha256,
            bytes,
            gguf,
        })
    }
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
struct RunRecord {
    tool: &'static str,
    data: FileRecord,
    scoring_model: FileRecord,
    embedder: EmbedderRecord,
    template: Template,
    separator: &'static str,
    append_eos: bool,
    budget: BudgetRecord,
    context: ContextSizes,
    samples: usize,
    scored: usize,
    unscorable: usize,
    selected: usize,
    kv_reuse: bool,
    scoring: Stats,
    timings: Timings,
}
