//! miwv: pick the instruction-tuning samples a given LLM will learn most from.
//!
//! MIWV (Model Instruction Weakness Value, Jiang et al., arXiv 2511.07074) scores each sample by
//! how much a similar sample, shown as a one-shot example, changes the model's loss on its
//! response: `MIWV = L(y | example, x) - L(y | x)`. Higher is selected first.
//!
//! The crate is the pipeline, one folder per layer, each layer importing only those listed
//! before it:
//!
//! | layer | folder | owns |
//! |---|---|---|
//! | data | [`data`] | dataset files in and the selection out; a model file's header checked |
//! | scoring | [`scoring`] | token sequences, the decode plan, the scheduler behind the `decoder` seam, losses, MIWV, selection |
//! | state | [`state`] | settings, output schema, resumable checkpoints, run locks, progress |
//! | engine | `engine` | llama.cpp: models, scoring contexts, embeddings (native) |
//! | retrieval | `retrieval` | nearest neighbours through FAISS (native) |
//! | pipeline | `pipeline` | `select` and its stages wired from the layers above, and the crate's [`Error`] |
//! | tools | [`tools`] | `compare`, `report`, the benchmarks and `doctor` |
//!
//! `cli` turns the command line into checked settings and runs it, for the thin `miwv` binary
//! and the Python package's `miwv` command.
//!
//! Only `engine` and `retrieval` link native code (llama.cpp, FAISS, the reference
//! tokenizer); they and what needs them sit behind the default `native` feature. Without it
//! the crate is its data, scoring and state layers and the run-reading tools, which build in
//! seconds: the fuzz targets and the fast tests of the scheduler build on that. Each layer
//! owns its errors; [`Error`] composes them at the top.

#![deny(missing_docs)]

pub mod data;
pub mod scoring;
pub mod state;
pub mod tools;

#[cfg(feature = "native")]
pub mod cli;
#[cfg(feature = "native")]
pub mod engine;
#[cfg(feature = "native")]
pub mod pipeline;
#[cfg(feature = "native")]
pub mod retrieval;

#[cfg(feature = "native")]
pub use pipeline::Error;

/// The default scoring model, as fetched by `ggml-models/fetch.py`.
pub const DEFAULT_MODEL: &str = "ggml-models/SmolLM2-135M-Instruct.F16.gguf";
/// The default retrieval embedder, as fetched by `ggml-models/fetch.py`.
pub const DEFAULT_EMBED_MODEL: &str = "ggml-models/nomic-embed-text-v1.5.f16.gguf";
