//! The crate's error: each layer's own errors, composed by the step that failed. Only the
//! pipeline, the tools that run it and the binary deal in it; the layers below return their
//! own.

use std::path::PathBuf;

use crate::data::output::OutputError;
use crate::data::records::RecordsError;
use crate::engine::tokenizer::TokenizerError;
use crate::engine::EngineError;
use crate::retrieval::neighbours::NeighbourError;
use crate::scoring::prompt::TemplateError;
use crate::scoring::prompt::UnrenderableSample;
use crate::scoring::scheduler::ScoringError;
use crate::state::config::ConfigError;
use crate::state::lock::LockError;
use crate::state::resume::ResumeError;
use crate::state::schema::SchemaError;
use crate::tools::compare::CompareError;
use crate::tools::report::ReportError;

/// Any failure of a run, by the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Inconsistent settings.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The chat template cannot render a sample.
    #[error(transparent)]
    Render(#[from] UnrenderableSample),
    /// The chat template cannot render a sample (it raises, or crosses a bound).
    #[error("{}: chat template: {source}", template.display())]
    Unrenderable {
        /// The file the template comes from: the GGUF, or the `--chat-template` file.
        template: PathBuf,
        /// The sample and why.
        source: UnrenderableSample,
    },
    /// Unreadable or malformed dataset file or records.
    #[error(transparent)]
    Records(#[from] RecordsError),
    /// The dataset has no records.
    #[error("{0}: the dataset has no records")]
    EmptyDataset(PathBuf),
    /// The asked template cannot be used with the model.
    #[error("{path}: chat template: {source}")]
    Template {
        /// The model file.
        path: PathBuf,
        /// Why.
        source: TemplateError,
    },
    /// llama.cpp failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// FAISS failed.
    #[error(transparent)]
    Neighbours(#[from] NeighbourError),
    /// Scoring stopped: a decoder or journal failure, or the user's Ctrl-C.
    #[error(transparent)]
    Scoring(#[from] ScoringError),
    /// The memory budget cannot hold the model and one context.
    #[error(transparent)]
    Fit(#[from] crate::scoring::sizes::FitError),
    /// The saved state of an earlier run cannot be used or kept.
    #[error(transparent)]
    Resume(#[from] ResumeError),
    /// An output file could not be written.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// The run's sample store.
    #[error(transparent)]
    Store(#[from] crate::data::store::StoreError),
    /// Another process works on the same run or shard.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A score or run file cannot be read.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// Two score files cannot be compared.
    #[error(transparent)]
    Compare(#[from] CompareError),
    /// A run's report cannot be made.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// The reference tokenizer could not be loaded.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
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
            Error::Scoring(ScoringError::Interrupted { .. })
                | Error::Engine(EngineError::Stopped { .. })
        )
    }
}
