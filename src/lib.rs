//! miwv: pick the instruction-tuning samples a given LLM will learn most from.
//!
//! MIWV (Model Instruction Weakness Value, Jiang et al., arXiv 2511.07074) scores each sample by
//! how much a similar sample, shown as a one-shot example, changes the model's loss on its
//! response: `MIWV = L(y | example, x) - L(y | x)`. Higher is selected first.
//!
//! The modules follow the pipeline: `records` / `dataset` -> `prompt` (with `chat`) -> `embed` ->
//! `neighbours` -> `plan` / `scheduler` (through the `decoder` seam, implemented by `engine`)
//! -> `score` -> `select` -> `output` / `schema`; `run` wires them together, `config`
//! checks the settings first, `gguf` checks a model file's header before llama.cpp reads it,
//! `lock` keeps one process per run and shard, and `resume` keeps what a stopped run did.
//! `compare` measures how far two runs' scores agree; `doctor` shows how a sample renders and checks the GGUF
//! vocabulary against the model's reference tokenizer; `report` draws a finished run's scores;
//! `cli` turns the command line into checked settings.
//!
//! Everything that links native code (llama.cpp, FAISS, Oniguruma) sits behind the default
//! `native` feature; without it the crate is the data, planning, scheduling and output layers
//! alone, which is what the fuzz target and fast tests of the scheduler build on.

#![deny(missing_docs)]

// Data: files in, samples out.
pub mod dataset;
pub mod records;
// Samples into the exact token sequences that are scored; `chat` runs Jinja chat templates.
pub mod chat;
pub mod prompt;
// Scoring without a model: plan, schedule through the decoder seam, losses, selection.
pub mod decoder;
pub mod plan;
pub mod scheduler;
pub mod score;
pub mod select;
// Settings, resumable state and the output files.
pub mod config;
pub mod gguf;
pub mod lock;
pub mod output;
pub mod progress;
pub mod resume;
pub mod schema;
pub mod shard;
// Reading finished runs.
pub mod compare;
pub mod report;

// Native code: llama.cpp, FAISS and the reference tokenizer, and what needs them.
#[cfg(feature = "native")]
pub mod bench;
#[cfg(feature = "native")]
pub mod cli;
#[cfg(feature = "native")]
pub mod doctor;
#[cfg(feature = "native")]
pub mod embed;
#[cfg(feature = "native")]
pub mod engine;
#[cfg(feature = "native")]
pub mod neighbour_bench;
#[cfg(feature = "native")]
pub mod neighbours;
#[cfg(feature = "native")]
pub mod run;

use std::path::PathBuf;

/// The default scoring model, as fetched by `ggml-models/fetch.py`.
pub const DEFAULT_MODEL: &str = "ggml-models/SmolLM2-135M-Instruct.F16.gguf";
/// The default retrieval embedder, as fetched by `ggml-models/fetch.py`.
pub const DEFAULT_EMBED_MODEL: &str = "ggml-models/nomic-embed-text-v1.5.f16.gguf";

/// Any failure of a run, by the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Inconsistent settings.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The chat template cannot render a sample.
    #[error(transparent)]
    Render(#[from] prompt::UnrenderableSample),
    /// The chat template cannot render a sample (it raises, or crosses a bound).
    #[error("{}: chat template: {source}", template.display())]
    Unrenderable {
        /// The file the template comes from: the GGUF, or the `--chat-template` file.
        template: PathBuf,
        /// The sample and why.
        source: prompt::UnrenderableSample,
    },
    /// Unreadable or malformed dataset file or records.
    #[error(transparent)]
    Records(#[from] records::RecordsError),
    /// The dataset has no records.
    #[error("{0}: the dataset has no records")]
    EmptyDataset(PathBuf),
    /// The asked template cannot be used with the model.
    #[error("{path}: chat template: {source}")]
    Template {
        /// The model file.
        path: PathBuf,
        /// Why.
        source: prompt::TemplateError,
    },
    /// llama.cpp failed.
    #[cfg(feature = "native")]
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    /// FAISS failed.
    #[cfg(feature = "native")]
    #[error(transparent)]
    Neighbours(#[from] neighbours::NeighbourError),
    /// Scoring stopped: a decoder or journal failure, or the user's Ctrl-C.
    #[error(transparent)]
    Scoring(#[from] scheduler::ScoringError),
    /// The saved state of an earlier run cannot be used or kept.
    #[error(transparent)]
    Resume(#[from] resume::ResumeError),
    /// An output file could not be written.
    #[error(transparent)]
    Output(#[from] output::OutputError),
    /// Another process works on the same run or shard.
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    /// A score or run file cannot be read.
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
    /// Two score files cannot be compared.
    #[error(transparent)]
    Compare(#[from] compare::CompareError),
    /// A run's report cannot be made.
    #[error(transparent)]
    Report(#[from] report::ReportError),
    /// The reference tokenizer could not be loaded.
    #[cfg(feature = "native")]
    #[error(transparent)]
    Tokenizer(#[from] doctor::TokenizerError),
    /// The GGUF vocabulary and the reference tokenizer disagree.
    #[error("the GGUF vocabulary and the reference tokenizer disagree on {segments} segments in {samples} samples: scores from this GGUF would be computed on other tokens than the model was trained on")]
    TokenizersDiffer {
        /// Segments tokenized differently.
        segments: usize,
        /// Samples affected.
        samples: usize,
    },
    /// The benchmark's data has fewer records than its largest size.
    #[error("{}: {records} records, fewer than the largest --sizes value {needed}", path.display())]
    TooFewRecords {
        /// The data file.
        path: PathBuf,
        /// Its records.
        records: usize,
        /// The largest size asked for.
        needed: usize,
    },
    /// Other file-system failures.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl Error {
    /// Whether the user stopped the run (exit code 130; rerunning resumes).
    pub fn is_interrupted(&self) -> bool {
        matches!(
            self,
            Error::Scoring(scheduler::ScoringError::Interrupted { .. })
        )
    }
}
