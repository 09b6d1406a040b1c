//! What makes a run resumable: the settings it started with, the retrieval it computed and a
//! durable log of its losses, all kept in `OUT/checkpoint/`.
//!
//! Scoring a large dataset on a laptop takes hours, so a run must survive being killed at any
//! moment. Every file here is either written whole (temporary file, sync, rename) or appended
//! to and synced line by line; a kill leaves at worst a torn last line, which the next run cuts
//! off. Only a run with the same settings may reuse what is here.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::data::output::{sync_parent, write_atomically, write_json, OutputError};
use crate::scoring::scheduler::{Journal, Loss, Pass, Saved, ScoringError};
use crate::scoring::sequences::PlanTable;
use crate::scoring::shard::Shard;
use crate::scoring::sizes::ContextFit;
use crate::state::schema::{EmbedderRecord, IndexReport, Neighbour};

/// Why a run's saved state cannot be used or kept.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// A checkpoint file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A checkpoint file could not be written whole.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// What is saved at `path` belongs to another run, or is damaged.
    #[error("cannot resume: {}: {mismatch}; {remedy}", path.display())]
    Incompatible {
        /// The file or directory.
        path: PathBuf,
        /// What does not fit.
        mismatch: Mismatch,
        /// What the user can do.
        remedy: Remedy,
    },
    /// An earlier stage of a staged run has not been run.
    #[error("{}: {what}: run {command}", run.display())]
    Missing {
        /// The run directory.
        run: PathBuf,
        /// What is missing.
        what: String,
        /// The command that makes it.
        command: String,
    },
}

/// How saved state does not fit the run that finds it.
#[derive(Debug, thiserror::Error)]
pub enum Mismatch {
    /// The run was made with other settings (these keys differ).
    #[error("holds a run made with other settings ({}); its results cannot be mixed with this run's", .0.join(", "))]
    OtherSettings(Vec<String>),
    /// A stage's shards were made with another shard count.
    #[error("holds {stage} shards of a run split {found} ways, not {asked}")]
    ShardCount {
        /// The stage.
        stage: String,
        /// The count of the saved shards.
        found: usize,
        /// The count asked for now.
        asked: usize,
    },
    /// A stage's shards were made with several shard counts.
    #[error("holds {stage} shards of several counts ({counts:?})")]
    MixedShardCounts {
        /// The stage.
        stage: String,
        /// The counts found.
        counts: Vec<usize>,
    },
    /// A file that is not valid JSON of its kind.
    #[error("unreadable ({0})")]
    Unreadable(String),
    /// A damaged line of the loss log.
    #[error("line {line}: {what}")]
    BadLine {
        /// 1-based.
        line: usize,
        /// What is wrong with it.
        what: String,
    },
    /// The loss log was written for another plan of decodes.
    #[error("was written for a different plan of decodes (another build of miwv?)")]
    OtherPlan,
    /// The loss log covers other steps of the plan.
    #[error("holds steps {saved:?} of the plan, not {asked:?} (another shard count?)")]
    OtherSteps {
        /// The steps it covers.
        saved: Range<usize>,
        /// The steps asked for.
        asked: Range<usize>,
    },
    /// The loss log has no losses.
    #[error("no losses saved")]
    NoLosses,
    /// A finished shard's log does not cover its steps.
    #[error("does not hold all of steps {0:?}")]
    Incomplete(Range<usize>),
    /// The saved neighbours are for another dataset.
    #[error("saved neighbours do not match the dataset")]
    OtherDataset,
    /// An embedding shard was made with other settings.
    #[error("was embedded with other settings than this run's")]
    OtherEmbedding,
    /// An embedding file of the wrong size.
    #[error("{bytes} bytes, expected {rows} rows of {dim}")]
    EmbeddingSize {
        /// Its size.
        bytes: u64,
        /// Rows expected.
        rows: usize,
        /// Width of a row.
        dim: usize,
    },
    /// No embedding shard holds a sample.
    #[error("no embed shard of {count} holds sample {sample}")]
    SampleMissing {
        /// Shards.
        count: usize,
        /// The sample.
        sample: usize,
    },
}

/// What a user can do about saved state that does not fit.
#[derive(Debug, thiserror::Error)]
pub enum Remedy {
    /// Delete the file or directory and start over.
    #[error("delete {} to start over", .0.display())]
    Delete(PathBuf),
    /// Write this run elsewhere, or delete the saved state.
    #[error("use another --out, or delete {} to start over", .0.display())]
    OtherOutOrDelete(PathBuf),
    /// Use the saved shard count, or delete the stage's directory.
    #[error("use --shards {count}, or delete {} to start that stage over", dir.display())]
    ShardsOrDelete {
        /// The saved count.
        count: usize,
        /// The stage's directory.
        dir: PathBuf,
    },
    /// Run a command again.
    #[error("run `{0}` again")]
    Rerun(String),
}

impl ResumeError {
    /// Saved state at `path` that does not fit, and what to do about it.
    pub fn incompatible(path: &Path, mismatch: Mismatch, remedy: Remedy) -> Self {
        ResumeError::Incompatible {
            path: path.to_path_buf(),
            mismatch,
            remedy,
        }
    }
}

impl From<ResumeError> for ScoringError {
    fn from(e: ResumeError) -> Self {
        match e {
            e @ ResumeError::Incompatible { .. } => ScoringError::Resume(Box::new(e)),
            other => ScoringError::Journal(Box::new(other)),
        }
    }
}

/// The checkpoint directory of one output directory.
#[derive(Debug, Clone)]
pub struct RunState {
    dir: PathBuf,
    settings: Value,
}

/// The retrieval step's result, saved so a resumed run does not embed again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Retrieval {
    /// Embedding width.
    pub dim: usize,
    /// Each sample's example.
    pub neighbours: Vec<Option<Neighbour>>,
    /// How the embeddings were made, as recorded in `run.json`.
    pub embedder: EmbedderRecord,
    /// How the neighbours were searched: index, duplicates, recall.
    #[serde(default)]
    pub search: Option<IndexReport>,
}

impl RunState {
    /// Opens the checkpoint directory in `out_dir`, creating it.
    ///
    /// `settings` must hold everything that changes a score (model and data hashes, template,
    /// batch layout); a directory holding work done with other settings is refused, naming
    /// what differs. The settings are recorded with the first work saved, so a run that fails
    /// before doing any (a wrong model path, say) binds nothing.
    ///
    /// # Errors
    /// [`ResumeError::Io`] when the directory cannot be written; [`ResumeError::Incompatible`]
    /// when it holds a run with other settings.
    pub fn open(out_dir: &Path, settings: &Value) -> Result<Self, ResumeError> {
        let dir = out_dir.join("checkpoint");
        std::fs::create_dir_all(&dir).map_err(|source| ResumeError::Io {
            path: dir.clone(),
            source,
        })?;
        let state = Self {
            dir,
            settings: settings.clone(),
        };
        if let Some(saved) = read_json::<Value>(&state.dir.join("settings.json"))? {
            let changed = differing_keys(&saved, settings);
            if !changed.is_empty() {
                return Err(ResumeError::incompatible(
                    out_dir,
                    Mismatch::OtherSettings(changed),
                    Remedy::OtherOutOrDelete(state.dir.clone()),
                ));
            }
        }
        Ok(state)
    }

    /// The settings a run in `out_dir` was bound to, if any work was saved there.
    ///
    /// # Errors
    /// When the file exists but cannot be read.
    pub fn saved_settings(out_dir: &Path) -> Result<Option<Value>, ResumeError> {
        read_json(&out_dir.join("checkpoint").join("settings.json"))
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a staged run keeps its plan and sample store (`checkpoint/plan`), created.
    ///
    /// # Errors
    /// [`ResumeError::Io`] when it cannot be created.
    pub fn plan_dir(&self) -> Result<PathBuf, ResumeError> {
        let dir = self.dir.join("plan");
        std::fs::create_dir_all(&dir).map_err(|source| ResumeError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(dir)
    }

    /// Saves the run's plan table (`checkpoint/plan/table.bin`), which marks the plan done.
    ///
    /// # Errors
    /// When it cannot be written.
    pub fn save_plan(&self, table: &PlanTable) -> Result<(), ResumeError> {
        let bytes = postcard::to_stdvec(table).expect("a plan table serialises");
        let path = self.plan_dir()?.join("table.bin");
        write_atomically(&path, |out| out.write_all(&bytes))?;
        Ok(())
    }

    /// The saved plan table, if a `neighbours` stage made one.
    ///
    /// # Errors
    /// When the file exists but cannot be read.
    pub fn load_plan(&self) -> Result<Option<PlanTable>, ResumeError> {
        let path = self.dir.join("plan").join("table.bin");
        read_if_present(&path)?
            .map(|bytes| {
                postcard::from_bytes(&bytes).map_err(|e| {
                    ResumeError::incompatible(
                        &path,
                        Mismatch::Unreadable(e.to_string()),
                        Remedy::Delete(path.clone()),
                    )
                })
            })
            .transpose()
    }

    /// Saves how the run's context was fitted (`checkpoint/context.json`), so that a resumed
    /// run or a score shard decodes with the same sizes.
    ///
    /// # Errors
    /// When it cannot be written.
    pub fn save_fit(&self, fit: &ContextFit) -> Result<(), ResumeError> {
        Ok(write_json(&self.dir.join("context.json"), fit)?)
    }

    /// The fit an earlier run saved.
    ///
    /// # Errors
    /// When the file exists but cannot be read.
    pub fn load_fit(&self) -> Result<Option<ContextFit>, ResumeError> {
        read_json(&self.dir.join("context.json"))
    }

    /// The saved retrieval, if an earlier run finished that step.
    ///
    /// # Errors
    /// When the file exists but cannot be read.
    pub fn load_retrieval(&self) -> Result<Option<Retrieval>, ResumeError> {
        read_json(&self.dir.join("retrieval.json"))
    }

    /// Saves the embeddings (`embeddings.f32`, little-endian rows of `dim`) and then the
    /// retrieval, whose presence marks the step as done.
    ///
    /// # Errors
    /// [`ResumeError::Output`] when a file cannot be written.
    pub fn save_retrieval(
        &self,
        retrieval: &Retrieval,
        embeddings: &[f32],
    ) -> Result<(), ResumeError> {
        write_atomically(&self.embeddings_path(), |out| {
            embeddings
                .iter()
                .try_for_each(|v| out.write_all(&v.to_le_bytes()))
        })?;
        self.save_retrieval_record(retrieval)
    }

    /// Where the run's embeddings are kept: little-endian `f32` rows, one per sample.
    pub fn embeddings_path(&self) -> PathBuf {
        self.dir.join("embeddings.f32")
    }

    /// Saves the retrieval (its embeddings already in [`RunState::embeddings_path`]), binding
    /// the directory to this run's settings.
    ///
    /// # Errors
    /// [`ResumeError::Output`] when a file cannot be written.
    pub fn save_retrieval_record(&self, retrieval: &Retrieval) -> Result<(), ResumeError> {
        write_json(&self.dir.join("settings.json"), &self.settings)?;
        write_json(&self.dir.join("retrieval.json"), retrieval)?;
        Ok(())
    }

    /// The directory of a staged run's shards for `stage` (`embed`, `score`), created; files of
    /// another shard count are refused, so a rerun with another N cannot mix its shards in.
    ///
    /// # Errors
    /// [`ResumeError::Incompatible`] naming the count found; [`ResumeError::Io`].
    pub fn stage_dir(&self, stage: &str, count: usize) -> Result<PathBuf, ResumeError> {
        let dir = self.dir.join(stage);
        let io = |source| ResumeError::Io {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            let found = name.to_str().and_then(Shard::count_in_file_name);
            if let Some(found) = found.filter(|&found| found != count) {
                return Err(ResumeError::incompatible(
                    &dir,
                    Mismatch::ShardCount {
                        stage: stage.into(),
                        found,
                        asked: count,
                    },
                    Remedy::ShardsOrDelete {
                        count: found,
                        dir: dir.clone(),
                    },
                ));
            }
        }
        Ok(dir)
    }

    /// The scoring journal of one score shard: `score/shard-K-of-N.jsonl`.
    pub fn shard_loss_log(&self, shard: Shard) -> LossLog {
        LossLog {
            path: self
                .dir
                .join("score")
                .join(format!("{}.jsonl", shard.file_stem())),
            file: None,
        }
    }

    /// The scoring journal: `losses.jsonl`.
    pub fn loss_log(&self) -> LossLog {
        LossLog {
            path: self.dir.join("losses.jsonl"),
            file: None,
        }
    }
}

/// The bytes of `path`, or `None` when an earlier run has not written it.
fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>, ResumeError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ResumeError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A JSON file written whole by an earlier run, or `None` when there is none.
///
/// # Errors
/// [`ResumeError`] when it exists but cannot be read or parsed.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, ResumeError> {
    read_if_present(path)?
        .map(|bytes| {
            serde_json::from_slice(&bytes).map_err(|e| {
                ResumeError::incompatible(
                    path,
                    Mismatch::Unreadable(e.to_string()),
                    Remedy::Delete(path.to_path_buf()),
                )
            })
        })
        .transpose()
}

/// Settings keys whose values differ (or exist on one side only).
fn differing_keys(saved: &Value, now: &Value) -> Vec<String> {
    let (Some(saved), Some(now)) = (saved.as_object(), now.as_object()) else {
        return vec!["the whole settings record".into()];
    };
    let mut keys: Vec<String> = saved
        .keys()
        .chain(now.keys())
        .filter(|k| saved.get(*k) != now.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// `losses.jsonl`: a header naming the plan, then one line per checkpoint with the losses of
/// the steps since the one before.
pub struct LossLog {
    path: PathBuf,
    file: Option<File>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    plan: String,
    steps: usize,
    /// The steps a shard decodes; absent when the log covers the whole plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shard_steps: Option<Range<usize>>,
}

impl Header {
    fn range(&self) -> Range<usize> {
        self.shard_steps.clone().unwrap_or(0..self.steps)
    }
}

#[derive(Serialize, Deserialize)]
struct Commit {
    steps_done: usize,
    losses: Vec<SavedLoss>,
}

/// A loss as stored: JSON has no NaN, so a non-finite loss is `null`.
#[derive(Serialize, Deserialize)]
struct SavedLoss {
    sample: usize,
    pass: Pass,
    value: Option<f32>,
}

impl LossLog {
    fn io(&self, source: std::io::Error) -> ResumeError {
        ResumeError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, line: usize, what: impl std::fmt::Display) -> ResumeError {
        ResumeError::incompatible(
            &self.path,
            Mismatch::BadLine {
                line,
                what: what.to_string(),
            },
            Remedy::Delete(self.path.clone()),
        )
    }

    /// Reads the saved lines, cutting off a torn last line; `None` when there is no header.
    fn read(&self, digest: &str, range: &Range<usize>) -> Result<Option<Saved>, ResumeError> {
        let Some(bytes) = read_if_present(&self.path)? else {
            return Ok(None);
        };
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete < bytes.len() {
            tracing::warn!(
                "{}: cutting off a torn last line ({} bytes) left by an interrupted run",
                self.path.display(),
                bytes.len() - complete
            );
            let file = OpenOptions::new()
                .write(true)
                .open(&self.path)
                .map_err(|e| self.io(e))?;
            file.set_len(complete as u64).map_err(|e| self.io(e))?;
            file.sync_all().map_err(|e| self.io(e))?;
        }
        let mut lines = bytes[..complete]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty());
        let Some(first) = lines.next() else {
            return Ok(None);
        };
        let header: Header = serde_json::from_slice(first).map_err(|e| self.corrupt(1, e))?;
        if header.plan != digest {
            return Err(ResumeError::incompatible(
                &self.path,
                Mismatch::OtherPlan,
                Remedy::Delete(self.path.clone()),
            ));
        }
        if header.range() != *range {
            return Err(ResumeError::incompatible(
                &self.path,
                Mismatch::OtherSteps {
                    saved: header.range(),
                    asked: range.clone(),
                },
                Remedy::Delete(self.path.clone()),
            ));
        }
        let mut saved = Saved {
            steps_done: range.start,
            losses: Vec::new(),
        };
        for (n, line) in lines.enumerate() {
            let commit: Commit =
                serde_json::from_slice(line).map_err(|e| self.corrupt(n + 2, e))?;
            if commit.steps_done <= saved.steps_done || commit.steps_done > range.end {
                return Err(self.corrupt(n + 2, "checkpoints out of order"));
            }
            saved.steps_done = commit.steps_done;
            saved.losses.extend(commit.losses.into_iter().map(|l| Loss {
                sample: l.sample,
                pass: l.pass,
                value: l.value.unwrap_or(f32::NAN),
            }));
        }
        Ok(Some(saved))
    }

    /// What the log holds for `range` of the plan `digest`, for gathering a finished shard.
    ///
    /// # Errors
    /// [`ResumeError`] when the log is missing, unreadable, or for another plan or range.
    pub fn saved(&self, digest: &str, range: Range<usize>) -> Result<Saved, ResumeError> {
        self.read(digest, &range)?.ok_or_else(|| {
            ResumeError::incompatible(
                &self.path,
                Mismatch::NoLosses,
                Remedy::Delete(self.path.clone()),
            )
        })
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line and makes it durable.
    fn append(&mut self, value: &impl Serialize) -> Result<(), ResumeError> {
        let mut line = serde_json::to_vec(value).expect("log lines serialise");
        line.push(b'\n');
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .and_then(|file| sync_parent(&self.path).map(|()| file))
                    .map_err(|e| self.io(e))?;
                self.file.insert(file)
            }
        };
        let result = file.write_all(&line).and_then(|()| file.sync_data());
        result.map_err(|e| self.io(e))
    }
}

impl Journal for LossLog {
    fn start(
        &mut self,
        digest: &str,
        steps: usize,
        range: Range<usize>,
    ) -> Result<Saved, ScoringError> {
        if let Some(saved) = self.read(digest, &range)? {
            if saved.steps_done > range.start {
                tracing::info!(
                    "resuming: {} of {} decode steps already done ({})",
                    saved.steps_done - range.start,
                    range.len(),
                    self.path.display()
                );
            }
            return Ok(saved);
        }
        let whole = range == (0..steps);
        self.append(&Header {
            plan: digest.to_string(),
            steps,
            shard_steps: (!whole).then_some(range.clone()),
        })?;
        Ok(Saved {
            steps_done: range.start,
            losses: Vec::new(),
        })
    }

    fn save(&mut self, steps_done: usize, losses: &[Loss]) -> Result<(), ScoringError> {
        let losses = losses
            .iter()
            .map(|l| SavedLoss {
                sample: l.sample,
                pass: l.pass,
                value: l.value.is_finite().then_some(l.value),
            })
            .collect();
        Ok(self.append(&Commit { steps_done, losses })?)
    }
}
