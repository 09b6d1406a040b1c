//! The settings of a selection run, checked before any model is loaded.
//!
//! llama.cpp aborts the process on some inconsistent sizes instead of returning an error, so
//! every size relation it relies on is checked here first.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::dataset::ReadOptions;
use crate::scoring::prompt::TemplateChoice;
use crate::scoring::select::Budget;
use crate::scoring::sizes::{CtxSize, SizeRequest};

/// Tokens decoded between checkpoints by default: about 4 seconds of a 135M model on two CPU
/// cores. Checkpoints also cut the plan into the segments that workers take one at a time:
/// small segments keep every worker busy to the end of a run (60 samples scored in 49 s with
/// 2,048 against 59 s with 8,192, docs/PERFORMANCE.md), and a checkpoint only orders the
/// work, it decodes nothing twice. On a GPU a larger value saves the journal's syncs.
pub const DEFAULT_CHECKPOINT_TOKENS: usize = 2_048;

/// Which index finds the neighbours. `Default` is `auto` with the automatic `nprobe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexOptions {
    /// `auto`; `Flat` (exact); `join` or `join{L}` (e.g. `join1024`: miwv's inverted-file
    /// self-join with L lists, see [`Method::Join`]); or any other FAISS `index_factory`
    /// string, searched by FAISS itself (`IVF4096,SQ8`, `IVF4096,PQ96`, `HNSW32`, ...).
    pub index: String,
    /// Inverted lists probed per query (`auto`, `join` and FAISS IVF indexes); `None`:
    /// `neighbours::AUTO_NPROBE`.
    pub nprobe: Option<u32>,
    /// Candidates an HNSW index keeps while it searches (FAISS's `efSearch`); `None`: FAISS's
    /// default of 16. More buys recall with search time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ef_search: Option<u32>,
    /// Queries whose exact neighbour is computed to measure an approximate index's recall@1
    /// (0: do not measure).
    pub recall_queries: usize,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            index: "auto".into(),
            nprobe: None,
            ef_search: None,
            recall_queries: 1000,
        }
    }
}

impl IndexOptions {
    /// Exact search, whatever the size.
    pub fn exact() -> Self {
        IndexOptions {
            index: "Flat".into(),
            ..IndexOptions::default()
        }
    }

    /// Whether `nprobe` applies: `auto`, `join` and FAISS inverted-file (IVF) indexes.
    pub fn takes_nprobe(&self) -> bool {
        let index = self.index.trim();
        index == "auto" || index.starts_with("join") || index.contains("IVF")
    }

    /// Whether `ef_search` applies: FAISS HNSW indexes.
    pub fn takes_ef_search(&self) -> bool {
        self.index.contains("HNSW")
    }

    /// Checks what can be checked before the vectors exist (a FAISS factory string itself is
    /// checked by FAISS once the width is known).
    ///
    /// # Errors
    /// [`ConfigError`] naming the flag: an empty index string, a `join` without a number of
    /// lists, `--nprobe` 0, `--nprobe` with an index that has no inverted lists, or
    /// `--ef-search` 0 or with an index that is not HNSW.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let index = self.index.trim();
        if index.is_empty() {
            return Err(ConfigError::new(
                "--index",
                Problem::Unexpected {
                    expected:
                        "`auto`, `Flat`, `join`, `join{LISTS}` or a FAISS index_factory string",
                    got: index.into(),
                },
            ));
        }
        if let Some(lists) = index.strip_prefix("join") {
            if !lists.is_empty() && !lists.parse::<usize>().is_ok_and(|l| l >= 1) {
                return Err(ConfigError::new(
                    "--index",
                    Problem::Unexpected {
                        expected: "`join` or `join` and a number of lists, e.g. join1024",
                        got: index.into(),
                    },
                ));
            }
        }
        let breadth = |flag: &str, value: Option<u32>, applies: bool, why: &'static str| match value
        {
            Some(0) => Err(ConfigError::too_small(flag, 1, 0)),
            Some(_) if !applies => Err(ConfigError::new(
                flag,
                Problem::Conflict {
                    other: format!("--index {index}"),
                    why,
                },
            )),
            _ => Ok(()),
        };
        breadth(
            "--nprobe",
            self.nprobe,
            self.takes_nprobe(),
            "it applies to `auto`, `join` and inverted-file (IVF) indexes only",
        )?;
        breadth(
            "--ef-search",
            self.ef_search,
            self.takes_ef_search(),
            "it applies to HNSW indexes only",
        )?;
        Ok(())
    }
}

/// Which model embeds the samples for retrieval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbedModel {
    /// The scoring model itself, mean-pooled.
    Scoring,
    /// A separate GGUF embedding model.
    File(PathBuf),
    /// Embeddings made elsewhere: a NumPy `.npy` file of shape (samples, width).
    Precomputed(PathBuf),
}

/// Everything `miwv select` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SelectConfig {
    /// The dataset (JSON array, JSON Lines, gzip-compressed JSON Lines or Parquet).
    pub data: PathBuf,
    /// Field names and conversation handling.
    pub read: ReadOptions,
    /// Where `scores.jsonl`, `selected.jsonl` and `run.json` go.
    pub out_dir: PathBuf,
    /// The GGUF scoring model.
    pub model: PathBuf,
    /// The retrieval embedder.
    pub embed_model: EmbedModel,
    /// Text put before every retrieval text; `None` picks the embedder's own convention.
    pub embed_prefix: Option<String>,
    /// How samples are rendered.
    pub template: TemplateChoice,
    /// A Jinja chat template file used instead of the GGUF's own (`--chat-template`).
    pub chat_template: Option<PathBuf>,
    /// How many samples to keep.
    pub budget: Budget,
    /// End every response with EOS (scored as part of the response).
    pub append_eos: bool,
    /// Also compute L(y) and report IFD and the Superfiltering ratio.
    pub also_ifd: bool,
    /// Scoring context sizes, as asked; fitted to the data and the memory budget when the
    /// plan is made.
    pub sizes: SizeRequest,
    /// Layers offloaded to a GPU backend.
    pub gpu_layers: u32,
    /// Continue the neighbour's cached zero-shot pass for the one-shot pass.
    pub kv_reuse: bool,
    /// Tokens decoded between durable checkpoints of the scores.
    pub checkpoint_tokens: usize,
    /// How neighbours are searched (`--index`, `--nprobe`).
    #[serde(default)]
    pub neighbours: IndexOptions,
}

/// An invalid setting: the flag at fault and what is wrong with its value. Every message
/// about a setting is composed here, from these parts.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{flag} {problem}")]
pub struct ConfigError {
    /// The flag, e.g. `--ratio`.
    pub flag: String,
    /// What is wrong with it.
    pub problem: Problem,
}

/// What is wrong with a setting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Problem {
    /// Below the least value it may take.
    #[error("must be at least {least}, got {got}{}", because(.why))]
    TooSmall {
        /// The least value (a number, or another flag and its value).
        least: String,
        /// The value given.
        got: String,
        /// Why the bound exists.
        why: Option<&'static str>,
    },
    /// Above the largest value it may take.
    #[error("must be at most {most}, got {got}{}", because(.why))]
    TooLarge {
        /// The largest value (a number, or another flag and its value).
        most: String,
        /// The value given.
        got: String,
        /// Why the bound exists.
        why: Option<&'static str>,
    },
    /// Outside an interval.
    #[error("must be in {range}, got {got}")]
    OutOfRange {
        /// The interval, e.g. `(0, 1]`.
        range: &'static str,
        /// The value given.
        got: String,
    },
    /// A list given without values.
    #[error("needs at least one value")]
    Empty,
    /// Another flag's value rules this one out.
    #[error("cannot be combined with {other}: {why}")]
    Conflict {
        /// The other flag and its value.
        other: String,
        /// Why not.
        why: &'static str,
    },
    /// A value of the wrong form.
    #[error("expected {expected}, got `{got}`")]
    Unexpected {
        /// What the flag takes.
        expected: &'static str,
        /// The value given.
        got: String,
    },
    /// A value the code that reads it refused, with its reason.
    #[error("{0}")]
    Refused(String),
}

fn because(why: &Option<&'static str>) -> String {
    why.map(|why| format!(" ({why})")).unwrap_or_default()
}

impl ConfigError {
    /// `flag` is at fault: `problem`.
    pub fn new(flag: impl Into<String>, problem: Problem) -> Self {
        ConfigError {
            flag: flag.into(),
            problem,
        }
    }

    /// `flag` must be at least `least`, and was `got`.
    pub fn too_small(flag: &str, least: impl ToString, got: impl ToString) -> Self {
        Self::new(
            flag,
            Problem::TooSmall {
                least: least.to_string(),
                got: got.to_string(),
                why: None,
            },
        )
    }

    /// `flag` must be at most `most`, and was `got`.
    pub fn too_large(flag: &str, most: impl ToString, got: impl ToString) -> Self {
        Self::new(
            flag,
            Problem::TooLarge {
                most: most.to_string(),
                got: got.to_string(),
                why: None,
            },
        )
    }

    /// Adds why a bound exists to a [`Problem::TooSmall`] or [`Problem::TooLarge`].
    pub fn because(mut self, reason: &'static str) -> Self {
        if let Problem::TooSmall { why, .. } | Problem::TooLarge { why, .. } = &mut self.problem {
            *why = Some(reason);
        }
        self
    }
}

/// `value` as the narrower integer type a C library takes (whose largest value is `max`), or a
/// range error naming `flag` instead of a silent wrap.
///
/// # Errors
/// [`Problem::TooLarge`] when `value` does not fit.
pub fn checked<T: TryFrom<usize> + std::fmt::Display>(
    flag: &str,
    value: usize,
    max: T,
) -> Result<T, ConfigError> {
    T::try_from(value).map_err(|_| ConfigError::too_large(flag, max, value))
}

/// Checks `miwv bench-neighbours --dim`: at least 1, and a width FAISS takes (a `u32`).
///
/// # Errors
/// [`ConfigError`] naming `--dim`.
pub fn check_dim(dim: usize) -> Result<(), ConfigError> {
    if dim == 0 {
        return Err(ConfigError::too_small("--dim", 1, 0));
    }
    checked("--dim", dim, u32::MAX).map(|_| ())
}

/// `--chat-template` replaces the model's own template: only with `--template auto` or
/// `model`, which ask for it.
///
/// # Errors
/// [`ConfigError`] naming both flags.
pub fn check_chat_template(
    template: TemplateChoice,
    chat_template: Option<&std::path::Path>,
) -> Result<(), ConfigError> {
    match (template, chat_template) {
        (TemplateChoice::Auto | TemplateChoice::Model, _) | (_, None) => Ok(()),
        (other, Some(path)) => Err(ConfigError::new(
            format!("--chat-template {}", path.display()),
            Problem::Conflict {
                other: format!(
                    "--template {}",
                    clap::ValueEnum::to_possible_value(&other)
                        .map_or(String::new(), |v| v.get_name().to_string())
                ),
                why: "it replaces the model's own template, which only `auto` and `model` use",
            },
        )),
    }
}

/// Checks `--ratio` or `--count`.
///
/// # Errors
/// [`ConfigError`] naming the flag.
pub fn check_budget(budget: Budget) -> Result<(), ConfigError> {
    match budget {
        Budget::Ratio(r) => check_ratio("--ratio", r),
        Budget::Count(0) => {
            Err(ConfigError::too_small("--count", 1, 0).because("0 would select nothing"))
        }
        Budget::Count(_) => Ok(()),
    }
}

impl SelectConfig {
    /// Checks every setting and every relation between them.
    ///
    /// `--count 0` is refused like `--ratio 0`: a run that selects nothing is almost always a
    /// mistyped budget, and it would only be found out after the whole dataset was scored.
    ///
    /// # Errors
    /// [`ConfigError`] naming the flag at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_budget(self.budget)?;
        check_chat_template(self.template, self.chat_template.as_deref())?;
        self.neighbours.validate()?;
        if self.checkpoint_tokens == 0 {
            return Err(ConfigError::too_small("--checkpoint-tokens", 1, 0));
        }
        check_sizes(&self.sizes)
    }
}

/// Checks that a selection ratio is in (0, 1] (NaN is not).
///
/// # Errors
/// [`ConfigError`] naming `flag`.
pub fn check_ratio(flag: &str, ratio: f64) -> Result<(), ConfigError> {
    if ratio > 0.0 && ratio <= 1.0 {
        Ok(())
    } else {
        Err(ConfigError::new(
            flag,
            Problem::OutOfRange {
                range: "(0, 1]",
                got: ratio.to_string(),
            },
        ))
    }
}

/// Checks `miwv compare --ratios`: at least one, each in (0, 1].
///
/// # Errors
/// [`ConfigError`] naming `--ratios`.
pub fn check_compare_ratios(ratios: &[f64]) -> Result<(), ConfigError> {
    if ratios.is_empty() {
        return Err(ConfigError::new("--ratios", Problem::Empty));
    }
    ratios.iter().try_for_each(|&r| check_ratio("--ratios", r))
}

/// Checks `miwv bench --sizes` and `--repeats`: at least one size, each of at least two
/// samples (one alone has no neighbour to take an example from), and at least one timed decode.
///
/// # Errors
/// [`ConfigError`] naming the flag at fault.
pub fn check_bench(sizes: &[usize], repeats: usize) -> Result<(), ConfigError> {
    if sizes.is_empty() {
        return Err(ConfigError::new("--sizes", Problem::Empty));
    }
    if let Some(&small) = sizes.iter().find(|&&n| n < 2) {
        return Err(
            ConfigError::too_small("--sizes", 2, small).because("a sample needs a neighbour")
        );
    }
    if repeats == 0 {
        return Err(ConfigError::too_small("--repeats", 1, 0));
    }
    Ok(())
}

/// Checks `miwv report --top`: at least one sample listed from each end.
///
/// # Errors
/// [`ConfigError`] naming `--top`.
pub fn check_top(top: usize) -> Result<(), ConfigError> {
    if top == 0 {
        return Err(ConfigError::too_small("--top", 1, 0));
    }
    Ok(())
}

/// Checks the context sizes asked for, before any model is loaded: those llama.cpp would
/// abort on. The batch needs no check of its own: the fit raises it to hold a sequence and
/// keeps it within the slots ([`SizeRequest::fit`]).
///
/// # Errors
/// [`ConfigError`] naming the flag at fault.
pub fn check_sizes(s: &SizeRequest) -> Result<(), ConfigError> {
    if s.parallel == 0 || s.parallel > 256 {
        return Err(ConfigError::new(
            "--parallel",
            Problem::OutOfRange {
                range: "1..=256",
                got: s.parallel.to_string(),
            },
        ));
    }
    if let CtxSize::Tokens(ctx) = s.ctx {
        if ctx < 16 {
            return Err(ConfigError::too_small("--ctx-size", 16, ctx));
        }
        // llama.cpp counts the whole KV cache in a u32.
        checked(
            "--ctx-size x --parallel",
            ctx.saturating_mul(s.parallel),
            u32::MAX,
        )?;
    }
    if s.ubatch == 0 {
        return Err(ConfigError::too_small("--ubatch-size", 1, 0));
    }
    if s.ubatch > s.batch {
        return Err(ConfigError::too_large(
            "--ubatch-size",
            format!("--batch-size ({})", s.batch),
            s.ubatch,
        ));
    }
    if s.threads == 0 {
        return Err(ConfigError::too_small("--threads", 1, 0));
    }
    checked("--threads", s.threads, i32::MAX)?;
    if s.workers == 0 {
        return Err(ConfigError::too_small("--workers", 1, 0));
    }
    if s.workers > s.threads {
        return Err(ConfigError::too_large(
            "--workers",
            format!("--threads ({})", s.threads),
            s.workers,
        ));
    }
    if s.memory_budget == Some(0) {
        return Err(ConfigError::too_small("--memory-budget", "1 MiB", "0"));
    }
    Ok(())
}
