//! The integration tests, in one binary so that llama.cpp, FAISS and Arrow are linked once.
//!
//! Fast tests need no model: the dataset reader (`dataset`), the command line (`cli`), the
//! scheduler on a fake decoder (`scheduler`), `compare` and `report` on files written through
//! the output schema. The others run the real default models, fetched by
//! `ggml-models/fetch.py` (`scripts/test.sh` does it).

mod common;
#[path = "../../fuzz/invariants.rs"]
mod invariants;

mod chat;
mod cli;
mod compare;
mod crash;
mod dataset;
mod doctor;
mod engine;
mod equivalence;
mod formats;
mod hostile;
mod quantize;
mod report;
mod scheduler;
mod select;
mod slurm;
mod stages;
