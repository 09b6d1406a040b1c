//! The settings of a selection run, checked before any model is loaded.
//!
//! llama.cpp aborts the process on some inconsistent sizes instead of returning an error, so
//! every size relation it relies on is checked here first.

use std::path::PathBuf;

use crate::dataset::ReadOptions;
use crate::engine::ContextSizes;
use crate::prompt::TemplateChoice;
use crate::select::Budget;

/// Tokens decoded between checkpoints by default: about two minutes of a 135M model on two
/// CPU cores, well under a second on a GPU.
pub const DEFAULT_CHECKPOINT_TOKENS: usize = 32_768;

/// Which model embeds the samples for retrieval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbedModel {
    /// The scoring model itself, mean-pooled.
    Scoring,
    /// A separate GGUF embedding model.
    File(PathBuf),
}

/// Everything `miwv select` needs.
#[derive(Debug, Clone)]
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
}

/// An invalid setting.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl SelectConfig {
    /// Checks every relation between the settings.
    ///
    /// # Errors
    /// [`ConfigError`] naming the flag at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Budget::Ratio(r) = self.budget {
            if !(r > 0.0 && r <= 1.0) {
                return Err(ConfigError(format!("--ratio must be in (0, 1], got {r}")));
            }
        }
        if self.checkpoint_tokens == 0 {
            return Err(ConfigError("--checkpoint-tokens must be at least 1".into()));
        }
        check_sizes(&self.sizes)
    }
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
    if s.batch < s.ctx_per_sequence {
        return fail(format!(
                "--batch-size ({}) must be at least --ctx-size ({}) so that any sequence fits one decode",
                s.batch, s.ctx_per_sequence
            ));
    }
    if s.batch > s.ctx_per_sequence * s.parallel {
        return fail(format!(
            "--batch-size ({}) cannot exceed --ctx-size x --parallel ({})",
            s.batch,
            s.ctx_per_sequence * s.parallel
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
    Ok(())
}
