//! The integration tests that link native code, in one binary so that llama.cpp, FAISS and
//! Arrow are linked once. (The dataset reader and the scheduler on a fake decoder are in
//! `tests/pure`, which builds without them.)
//!
//! Fast tests need no model: the command line (`cli`), `compare` and `report` on files
//! written through the output schema. The others run the real default models, fetched by
//! `ggml-models/fetch.py` (`scripts/test.sh` does it).

mod common;

mod chat;
mod cli;
mod compare;
mod context;
mod crash;
mod doctor;
mod engine;
mod equivalence;
mod formats;
mod hostile;
mod lock;
mod offload;
mod quantize;
mod report;
mod select;
mod slurm;
mod stages;
