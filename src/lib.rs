//! miwv: pick the instruction-tuning samples a given LLM will learn most from.
//!
//! MIWV (Model Instruction Weakness Value, Jiang et al., arXiv 2511.07074) scores each sample by
//! how much a similar sample, shown as a one-shot example, changes the model's loss on its
//! response: `MIWV = L(y | example, x) - L(y | x)`. Higher is selected first.
//!
//! The modules follow the pipeline: [`dataset`] -> [`prompt`] -> [`embed`] -> [`neighbours`]
//! -> [`plan`] / [`scheduler`] / [`engine`] -> [`score`] -> [`select`] -> [`output`]; [`run`] wires them
//! together, [`config`] checks the settings first and [`resume`] keeps what a stopped run did.
//! [`compare`] measures how far two runs' scores agree; [`doctor`] checks the GGUF vocabulary
//! against the model's reference tokenizer; [`report`] draws a finished run's scores.
//! [`records`] handles the dataset's file format (JSON, JSON Lines, gzip, Parquet) and writes
//! the selection back in the same one.

#![deny(missing_docs)]

pub mod bench;
pub mod compare;
pub mod config;
pub mod dataset;
pub mod doctor;
pub mod embed;
pub mod engine;
pub mod neighbours;
pub mod output;
pub mod plan;
pub mod progress;
pub mod prompt;
pub mod records;
pub mod report;
pub mod resume;
pub mod run;
pub mod scheduler;
pub mod score;
pub mod select;

use std::path::PathBuf;

/// The default scoring model, as fetched by `ggml-models/fetch.py`.
pub const DEFAULT_MODEL: &str = "ggml-models/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The default retrieval embedder, as fetched by `ggml-models/fetch.py`.
pub const DEFAULT_EMBED_MODEL: &str = "ggml-models/nomic-embed-text-v1.5.f16.gguf";

/// Any failure of a run, by the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Inconsistent settings.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Unreadable or malformed dataset.
    #[error(transparent)]
    Dataset(#[from] dataset::DatasetError),
    /// Unreadable dataset file format, or the selection could not be written in it.
    #[error(transparent)]
    Records(#[from] records::RecordsError),
    /// The dataset has no records.
    #[error("{0}: the dataset has no records")]
    EmptyDataset(PathBuf),
    /// llama.cpp failed.
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    /// FAISS failed.
    #[error(transparent)]
    Neighbours(#[from] neighbours::NeighbourError),
    /// An output file could not be written.
    #[error(transparent)]
    Output(#[from] output::OutputError),
    /// The user stopped the run; what was saved is kept for resuming.
    #[error("interrupted: {saved_steps} of {total_steps} decode steps are saved; run the same command again to resume")]
    Interrupted {
        /// Steps whose losses are saved.
        saved_steps: usize,
        /// Steps planned.
        total_steps: usize,
    },
    /// The saved state of an earlier run cannot be used.
    #[error("cannot resume: {0}")]
    Resume(String),
    /// Two score files cannot be compared.
    #[error(transparent)]
    Compare(#[from] compare::CompareError),
    /// A run's report cannot be made.
    #[error(transparent)]
    Report(#[from] report::ReportError),
    /// The reference tokenizer could not be loaded.
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
    /// The benchmark cannot run as asked.
    #[error("bench: {0}")]
    Bench(String),
    /// Other file-system failures.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}
