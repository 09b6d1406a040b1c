//! The settings of a selection run, checked before any model is loaded.
//!
//! llama.cpp aborts the process on some inconsistent sizes instead of returning an error, so
//! every size relation it relies on is checked here first.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::dataset::ReadOptions;
use crate::prompt::TemplateChoice;
use crate::select::Budget;

/// Tokens decoded between checkpoints by default: about 4 seconds of a 135M model on two CPU
/// cores. Checkpoints also cut the plan into the segments that workers take one at a time:
/// small segments keep every worker busy to the end of a run (60 samples scored in 49 s with
/// 2,048 against 59 s with 8,192, docs/PERFORMANCE.md), and a checkpoint only orders the
/// work, it decodes nothing twice. On a GPU a larger value saves the journal's syncs.
pub const DEFAULT_CHECKPOINT_TOKENS: usize = 2_048;

/// Sizes of a scoring context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextSizes {
    /// KV cells per sequence: the longest sequence that can be scored.
    pub ctx_per_sequence: usize,
    /// Sequences decoded together (each gets its own KV stream).
    pub parallel: usize,
    /// Most tokens in one `llama_decode` call.
    pub batch: usize,
    /// Most tokens in one physical compute step.
    pub ubatch: usize,
    /// CPU threads, shared out among the workers.
    pub threads: usize,
    /// Scoring contexts that decode different segments of the plan at once, each with
    /// `threads / workers` threads (see [`ContextSizes::threads_per_worker`]).
    #[serde(default = "one_worker")]
    pub workers: usize,
}

fn one_worker() -> usize {
    1
}

impl ContextSizes {
    /// Workers when the user names none: on the CPU one per thread, so no thread ever waits
    /// at a barrier for another (a core taken by another program then slows one worker, not
    /// every decode); with layers on a GPU one, which keeps the GPU busy alone.
    pub fn default_workers(threads: usize, gpu_layers: u32) -> usize {
        if gpu_layers > 0 {
            1
        } else {
            threads.max(1)
        }
    }

    /// Threads each worker's context computes with.
    pub fn threads_per_worker(&self) -> usize {
        (self.threads / self.workers.max(1)).max(1)
    }
}

/// CPU threads when the user names none: one per physical performance core, as llama.cpp
/// recommends. Hyper-threads share a core's arithmetic units and a laptop's efficiency cores
/// are slower, so a thread on either makes every other thread wait for it. Never more than
/// the CPUs this process may use (its affinity and cgroup quota).
pub fn default_threads() -> usize {
    let allowed = std::thread::available_parallelism().map_or(1, usize::from);
    performance_cores().map_or(allowed, |cores| cores.clamp(1, allowed))
}

/// Physical cores, efficiency cores left out, where the system says; `None` elsewhere.
#[cfg(target_os = "linux")]
fn performance_cores() -> Option<usize> {
    use std::collections::HashSet;
    let cpus = std::path::Path::new("/sys/devices/system/cpu");
    // On Intel hybrid CPUs the kernel lists the performance cores' CPUs here.
    let performance = std::fs::read_to_string("/sys/devices/cpu_core/cpus")
        .ok()
        .map(|list| cpu_list(list.trim()));
    let mut cores = HashSet::new();
    for entry in std::fs::read_dir(cpus).ok()?.flatten() {
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_prefix("cpu"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if performance.as_ref().is_some_and(|p| !p.contains(&id)) {
            continue;
        }
        let siblings = std::fs::read_to_string(entry.path().join("topology/thread_siblings_list"));
        // A CPU taken offline has no topology; it runs nothing.
        if let Ok(siblings) = siblings {
            cores.insert(siblings.trim().to_string());
        }
    }
    (!cores.is_empty()).then_some(cores.len())
}

/// Apple Silicon's performance cores (`hw.perflevel0`); Intel Macs' physical cores.
#[cfg(target_os = "macos")]
fn performance_cores() -> Option<usize> {
    ["hw.perflevel0.physicalcpu", "hw.physicalcpu"]
        .iter()
        .find_map(|key| {
            let out = std::process::Command::new("/usr/sbin/sysctl")
                .args(["-n", key])
                .output()
                .ok()?;
            String::from_utf8(out.stdout).ok()?.trim().parse().ok()
        })
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn performance_cores() -> Option<usize> {
    None
}

/// The CPUs of a kernel CPU list such as `0-7,16-23`.
#[cfg(target_os = "linux")]
fn cpu_list(list: &str) -> Vec<usize> {
    list.split(',')
        .filter_map(|part| match part.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?..=b.parse().ok()?).collect::<Vec<_>>()),
            None => Some(vec![part.parse().ok()?]),
        })
        .flatten()
        .collect()
}

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
    /// Queries whose exact neighbour is computed to measure an approximate index's recall@1
    /// (0: do not measure).
    pub recall_queries: usize,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            index: "auto".into(),
            nprobe: None,
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

    /// Checks what can be checked before the vectors exist (a FAISS factory string itself is
    /// checked by FAISS once the width is known).
    ///
    /// # Errors
    /// A message naming the bad value: an empty index string, a `join` without a number of
    /// lists, `nprobe` 0, or `nprobe` with an index that has no inverted lists.
    pub fn validate(&self) -> Result<(), String> {
        let index = self.index.trim();
        if index.is_empty() {
            return Err("index: expected `auto`, `Flat`, `join`, `join{LISTS}` or a FAISS index_factory string".into());
        }
        if let Some(lists) = index.strip_prefix("join") {
            if !lists.is_empty() && !lists.parse::<usize>().is_ok_and(|l| l >= 1) {
                return Err(format!("index: `{index}`: expected `join` or `join` and a number of lists, e.g. join1024"));
            }
        }
        if self.nprobe == Some(0) {
            return Err("nprobe: must be at least 1".into());
        }
        if self.nprobe.is_some() && !self.takes_nprobe() {
            return Err(format!(
                "nprobe: applies to `auto`, `join` and inverted-file (IVF) indexes, not `{index}`"
            ));
        }
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
    /// Scoring context sizes.
    pub sizes: ContextSizes,
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

/// An invalid setting.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    /// An error whose message names the flag at fault.
    pub fn new(message: String) -> Self {
        ConfigError(message)
    }
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
        (other, Some(path)) => Err(ConfigError(format!(
            "--chat-template {} replaces the model's own template; it cannot be combined with --template {}",
            path.display(),
            clap::ValueEnum::to_possible_value(&other).map_or(String::new(), |v| v.get_name().to_string())
        ))),
    }
}

/// Checks `--ratio` or `--count`.
///
/// # Errors
/// [`ConfigError`] naming the flag.
pub fn check_budget(budget: Budget) -> Result<(), ConfigError> {
    match budget {
        Budget::Ratio(r) => check_ratio("--ratio", r),
        Budget::Count(0) => Err(ConfigError(
            "--count must be at least 1 (0 would select nothing)".into(),
        )),
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
        self.neighbours
            .validate()
            .map_err(|e| ConfigError(format!("--{e}")))?;
        if self.checkpoint_tokens == 0 {
            return Err(ConfigError("--checkpoint-tokens must be at least 1".into()));
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
        Err(ConfigError(format!(
            "{flag} must be in (0, 1], got {ratio}"
        )))
    }
}

/// Checks `miwv compare --ratios`: at least one, each in (0, 1].
///
/// # Errors
/// [`ConfigError`] naming `--ratios`.
pub fn check_compare_ratios(ratios: &[f64]) -> Result<(), ConfigError> {
    if ratios.is_empty() {
        return Err(ConfigError("--ratios needs at least one ratio".into()));
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
        return Err(ConfigError("--sizes needs at least one size".into()));
    }
    if let Some(&small) = sizes.iter().find(|&&n| n < 2) {
        return Err(ConfigError(format!(
            "--sizes must each be at least 2 (a sample needs a neighbour), got {small}"
        )));
    }
    if repeats == 0 {
        return Err(ConfigError("--repeats must be at least 1".into()));
    }
    Ok(())
}

/// Checks `miwv report --top`: at least one sample listed from each end.
///
/// # Errors
/// [`ConfigError`] naming `--top`.
pub fn check_top(top: usize) -> Result<(), ConfigError> {
    if top == 0 {
        return Err(ConfigError("--top must be at least 1".into()));
    }
    Ok(())
}

/// Checks the relations between context sizes that llama.cpp relies on.
///
/// # Errors
/// [`ConfigError`] naming the flag at fault.
pub fn check_sizes(s: &ContextSizes) -> Result<(), ConfigError> {
    let fail = |m: String| Err(ConfigError(m));
    if s.ctx_per_sequence < 16 {
        return fail(format!(
            "--ctx-size must be at least 16, got {}",
            s.ctx_per_sequence
        ));
    }
    if s.parallel == 0 || s.parallel > 256 {
        return fail(format!("--parallel must be 1..=256, got {}", s.parallel));
    }
    // llama.cpp counts the whole KV cache in a u32.
    let kv = s.ctx_per_sequence.saturating_mul(s.parallel);
    if u32::try_from(kv).is_err() {
        return fail(format!(
            "--ctx-size x --parallel ({kv}) exceeds llama.cpp's limit of {} tokens",
            u32::MAX
        ));
    }
    if s.batch < s.ctx_per_sequence {
        return fail(format!(
            "--batch-size ({}) must be at least --ctx-size ({}) so that any sequence fits one decode",
            s.batch, s.ctx_per_sequence
        ));
    }
    if s.batch > kv {
        return fail(format!(
            "--batch-size ({}) cannot exceed --ctx-size x --parallel ({kv})",
            s.batch
        ));
    }
    if s.ubatch == 0 || s.ubatch > s.batch {
        return fail(format!(
            "--ubatch-size must be 1..=--batch-size ({}), got {}",
            s.batch, s.ubatch
        ));
    }
    if s.threads == 0 {
        return fail("--threads must be at least 1".into());
    }
    if s.workers == 0 || s.workers > s.threads {
        return fail(format!(
            "--workers must be 1..=--threads ({}), got {}",
            s.threads, s.workers
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn kernel_cpu_lists_are_read_with_ranges() {
        assert_eq!(cpu_list("0-3,8,10-11"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(cpu_list("5"), vec![5]);
    }

    #[test]
    fn default_threads_are_at_least_one_and_never_more_than_the_cpus_allowed() {
        let threads = default_threads();
        assert!(threads >= 1);
        assert!(threads <= std::thread::available_parallelism().map_or(1, usize::from));
    }
}
