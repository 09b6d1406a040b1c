//! The output files' one definition: a line of `scores.jsonl` and the `run.json` record.
//!
//! `select` writes them, and `compare` and `report` read them back through the same types, so
//! a field renamed or added on one side cannot silently drift from the other. Reading is
//! tolerant where another scorer's file is read too (`tools/reference` writes `scores.jsonl`
//! lines with the same names but leaves token counts null and selection fields out).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::data::dataset::{ReadOptions, Truncation};
use crate::scoring::prompt::TemplateChoice;
use crate::scoring::scheduler::Stats;
use crate::scoring::score::Unscorable;
use crate::scoring::sizes::{ContextFit, ContextSizes};

/// One line of `scores.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreRow {
    /// The sample's id (a number in another scorer's file reads as its text).
    #[serde(deserialize_with = "id_text")]
    pub id: String,
    /// Its 0-based position in the dataset.
    pub index: usize,
    /// One-shot loss minus zero-shot loss; null (NaN here) when undefined.
    #[serde(with = "nan_as_null")]
    pub miwv: f32,
    /// Mean response loss given the sample's own prompt.
    #[serde(with = "nan_as_null", default = "nan")]
    pub loss_zero_shot: f32,
    /// Mean response loss with the neighbour as a one-shot example.
    #[serde(with = "nan_as_null", default = "nan")]
    pub loss_one_shot: f32,
    /// Why `miwv` is undefined.
    #[serde(default)]
    pub reason: Option<Unscorable>,
    /// The example's id.
    #[serde(default, deserialize_with = "optional_id_text")]
    pub neighbour_id: Option<String>,
    /// The example's index.
    #[serde(default)]
    pub neighbour_index: Option<usize>,
    /// Cosine similarity to the example.
    #[serde(default)]
    pub similarity: Option<f32>,
    /// Scored tokens (the response, EOS included when appended).
    #[serde(default, deserialize_with = "null_as_zero")]
    pub response_tokens: usize,
    /// Tokens before the response in the zero-shot sequence (BOS and prompt).
    #[serde(default, deserialize_with = "null_as_zero")]
    pub prompt_tokens_zero_shot: usize,
    /// Tokens before the response in the one-shot sequence (BOS, example, separator, prompt).
    #[serde(default, deserialize_with = "null_as_zero")]
    pub prompt_tokens_one_shot: usize,
    /// Tokens of the whole zero-shot sequence, whether or not it fits the context.
    #[serde(default, deserialize_with = "null_as_zero")]
    pub tokens_zero_shot: usize,
    /// Tokens of the whole one-shot sequence (example and sample), whether or not it fits;
    /// 0 without one.
    #[serde(default, deserialize_with = "null_as_zero")]
    pub tokens_one_shot: usize,
    /// Whether the sample is in the selection; `None` in a file that records no selection.
    #[serde(default)]
    pub selected: Option<bool>,
    /// 1-based rank by MIWV among scored samples.
    #[serde(default)]
    pub rank: Option<usize>,
    /// Exchanges whose responses are scored (1 for Alpaca records).
    #[serde(default, deserialize_with = "null_as_zero")]
    pub turns: usize,
    /// IFD and Superfiltering, with `--also ifd`.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub ifd: Option<Ifd>,
}

impl ScoreRow {
    /// MIWV where it is defined.
    pub fn score(&self) -> Option<f32> {
        self.miwv.is_finite().then_some(self.miwv)
    }
}

/// Cherry LLM's IFD and Superfiltering's ratio, from the zero-shot loss and the responses'
/// loss alone (docs/METHOD.md). Null where either loss is undefined.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ifd {
    /// L(y): mean loss of the responses with no prompt.
    #[serde(with = "nan_as_null")]
    pub loss_response_only: f32,
    /// IFD = L(y|x) / L(y); above 1 the prompt does not help, and Cherry LLM drops the sample.
    #[serde(with = "nan_as_null")]
    pub ifd: f32,
    /// PPL(y|x) / PPL(y) = exp(L(y|x) - L(y)).
    #[serde(with = "nan_as_null")]
    pub superfiltering: f32,
}

impl Ifd {
    /// From L(y|x) and L(y).
    pub fn new(loss_zero_shot: f32, loss_response_only: f32) -> Self {
        Self {
            loss_response_only,
            ifd: loss_zero_shot / loss_response_only,
            superfiltering: (loss_zero_shot - loss_response_only).exp(),
        }
    }
}

/// `run.json`: what a finished run read, how it scored, and what it found. Written last, so
/// when it is there the other output files belong to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// `miwv` and its version.
    pub tool: String,
    /// The dataset file.
    pub data: FileRecord,
    /// Where a cut-off dataset file stops.
    pub data_truncated: Option<Truncation>,
    /// The scoring model's file and GGUF metadata.
    pub scoring_model: FileRecord,
    /// How retrieval embedded the samples.
    pub embedder: EmbedderRecord,
    /// How the neighbours were searched: the index, duplicate texts, measured recall@1.
    #[serde(default)]
    pub neighbour_search: Option<IndexReport>,
    /// The `--template` asked for.
    pub template_choice: TemplateChoice,
    /// The template it resolved to (`chatml`, `alpaca`, `model`, ...).
    pub template_name: String,
    /// The template as [`crate::scoring::prompt::Template`] records it (a chat template's source, Jinja text,
    /// sha256 and markup). Kept as JSON when read, so that runs recorded by earlier versions,
    /// which described templates differently, still read.
    pub template: serde_json::Value,
    /// Text between the example and the target in a one-shot sequence.
    pub separator: String,
    /// Field names and conversation handling.
    pub read: ReadOptions,
    /// Whether responses end with EOS (scored).
    pub append_eos: bool,
    /// Whether the response-only pass ran (IFD).
    pub also_ifd: bool,
    /// How many samples were to be kept.
    pub budget: BudgetRecord,
    /// Context and batch sizes decoded with.
    pub context: ContextSizes,
    /// How they were fitted to the data and the memory budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_fit: Option<ContextFit>,
    /// Samples read.
    pub samples: usize,
    /// Samples with a defined MIWV.
    pub scored: usize,
    /// Samples without one.
    pub unscorable: usize,
    /// Those samples by reason, with the first few ids.
    #[serde(default)]
    pub unscorable_reasons: Vec<UnscoredGroup>,
    /// Samples selected.
    pub selected: usize,
    /// Whether one-shot passes continued the neighbour's cached pass.
    pub kv_reuse: bool,
    /// Tokens decoded between checkpoints.
    pub checkpoint_tokens: usize,
    /// What scoring did.
    pub scoring: Stats,
    /// Where the time went.
    pub timings: Timings,
    /// How a staged run was split (`miwv merge`); absent for `miwv select`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<ShardsRecord>,
}

/// The samples left without a MIWV for one reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnscoredGroup {
    /// Why.
    pub reason: Unscorable,
    /// How many.
    pub count: usize,
    /// The ids of the first few, in dataset order.
    pub first_ids: Vec<String>,
}

impl UnscoredGroup {
    /// Ids kept per reason.
    pub const FIRST_IDS: usize = 5;

    /// The groups of `reasons` (one per sample, in dataset order), in the order of
    /// [`Unscorable`]'s variants; `id` names sample `i`.
    pub fn of(
        reasons: impl IntoIterator<Item = Option<Unscorable>>,
        id: impl Fn(usize) -> String,
    ) -> Vec<UnscoredGroup> {
        let mut groups: Vec<UnscoredGroup> = Vec::new();
        for (i, reason) in reasons.into_iter().enumerate() {
            let Some(reason) = reason else { continue };
            let at = match groups.iter().position(|g| g.reason == reason) {
                Some(at) => at,
                None => {
                    groups.push(UnscoredGroup {
                        reason,
                        count: 0,
                        first_ids: Vec::new(),
                    });
                    groups.len() - 1
                }
            };
            let group = &mut groups[at];
            group.count += 1;
            if group.first_ids.len() < Self::FIRST_IDS {
                group.first_ids.push(id(i));
            }
        }
        groups.sort_by_key(|g| g.reason as u8);
        groups
    }

    /// `4 too_long, 4 example_too_long`: the groups' counts in one line.
    pub fn tally(groups: &[UnscoredGroup]) -> String {
        let parts: Vec<String> = groups
            .iter()
            .map(|g| format!("{} {}", g.count, g.reason.name()))
            .collect();
        parts.join(", ")
    }
}

/// The shard counts of a staged run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardsRecord {
    /// `miwv embed` shards.
    pub embed: usize,
    /// `miwv score` shards.
    pub score: usize,
}

/// A file a run read, with its hash; GGUF metadata for models.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileRecord {
    /// Where it was (canonical path).
    pub path: PathBuf,
    /// Its sha256 then (lowercase hex).
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
    /// What the GGUF says about itself.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub gguf: Option<ModelInfo>,
}

/// What a GGUF file says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// `general.name`.
    pub name: Option<String>,
    /// `general.architecture`.
    pub architecture: Option<String>,
    /// The weights' quantisation, from `general.file_type`.
    pub quantisation: Option<String>,
    /// Parameter count.
    pub parameters: u64,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// The context length the model was trained with.
    pub context_train: u32,
    /// Embedding width.
    pub embedding_dim: usize,
}

/// How retrieval embedded the samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedderRecord {
    /// The embedding model's file; `None` when the scoring model embedded (`--embed-model self`).
    pub model: Option<FileRecord>,
    /// Whether the scoring model embedded.
    pub uses_scoring_model: bool,
    /// Text put before each retrieval text.
    pub prefix: String,
    /// Pooling over tokens.
    pub pooling: String,
    /// Whether vectors were normalised to unit length (cosine similarity).
    pub normalised: bool,
    /// The FAISS index.
    pub index: String,
    /// Longest retrieval text in tokens; longer ones are cut.
    pub max_tokens: usize,
}

impl PartialEq for FileRecord {
    fn eq(&self, other: &Self) -> bool {
        (&self.path, &self.sha256, self.bytes, &self.gguf)
            == (&other.path, &other.sha256, other.bytes, &other.gguf)
    }
}

/// The selection budget: exactly one of the two is set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BudgetRecord {
    /// Share of samples kept.
    pub ratio: Option<f64>,
    /// Exact number kept.
    pub count: Option<usize>,
}

/// Wall-clock seconds per phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Reading, hashing and loading the models.
    pub load_s: f64,
    /// Embedding and neighbour search (0 when resumed).
    pub retrieval_s: f64,
    /// Scoring.
    pub scoring_s: f64,
    /// The whole run.
    pub total_s: f64,
    /// The process's peak resident memory, MiB (Linux; `null` elsewhere and in runs written
    /// before it was recorded).
    #[serde(default)]
    pub peak_rss_mib: Option<f64>,
}

/// A retrieved example, as saved in the run's checkpoint and written in `scores.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Neighbour {
    /// Index of the neighbour in the dataset.
    pub index: usize,
    /// Cosine similarity to the query.
    pub similarity: f32,
}

/// How the neighbours are searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Exact search: one FAISS `IndexFlatIP` over every distinct vector.
    Exact,
    /// miwv's inverted-file self-join, built from FAISS's BLAS paths: k-means by L2 distance
    /// (FAISS `Clustering`) makes L lists; every vector is assigned to its nearest centroid
    /// and probes its `nprobe` nearest (FAISS flat search); vectors are held as 8-bit scalar
    /// codes (one byte per dimension); each list's members are searched for every query that
    /// probes the list with one FAISS flat search (a BLAS product); each query's best
    /// candidates are re-ranked with exact dot products against the original vectors.
    Join,
    /// Any other `index_factory` string, trained, filled and searched by FAISS itself; its
    /// candidates are re-ranked exactly.
    Faiss,
}

/// The index actually used for `n` distinct vectors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexPlan {
    /// The index: `Flat`, `join{L}` or the FAISS `index_factory` string.
    pub factory: String,
    /// How it is searched.
    pub method: Method,
    /// Exact search (`Flat`).
    pub exact: bool,
    /// Inverted lists, when the index has them.
    pub lists: Option<usize>,
    /// Inverted lists probed per query, when the index has them.
    pub nprobe: Option<u32>,
    /// Candidates an HNSW index keeps while it searches, when one was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ef_search: Option<u32>,
    /// Vectors the index is trained on (0: no training).
    pub train: usize,
}

/// How the neighbours were found, for `run.json` and the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexReport {
    /// The index used.
    pub plan: IndexPlan,
    /// Samples.
    pub samples: usize,
    /// Distinct retrieval texts: the vectors in the index.
    pub distinct: usize,
    /// Samples whose neighbour is an identical text (found without search).
    pub duplicates: usize,
    /// Samples searched (distinct texts without a copy).
    pub searched: usize,
    /// Queries whose approximate candidates held no other sample, searched exactly instead.
    pub fallbacks: usize,
    /// Share of the recall sample whose neighbour is an exact nearest neighbour (its
    /// similarity within `neighbours::TIE` of the best); 1 by construction for exact search.
    pub recall_at_1: Option<f64>,
    /// Queries in the recall sample.
    pub recall_queries: usize,
    /// Seconds training the index.
    pub train_s: f64,
    /// Seconds adding the vectors.
    pub add_s: f64,
    /// Seconds searching and re-ranking.
    pub search_s: f64,
    /// Seconds measuring recall.
    pub recall_s: f64,
}

/// A score or run file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The file is missing or unreadable.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line of `scores.jsonl` is not a score row.
    #[error("{path}: line {line}: {problem}")]
    Row {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong (the field is named).
        problem: String,
    },
    /// `run.json` is not a run record of this version.
    #[error("{path}: not a run record of this version of miwv: {problem}")]
    Run {
        /// The file.
        path: PathBuf,
        /// What is wrong (the field is named).
        problem: String,
    },
}

impl SchemaError {
    /// Whether the file does not exist.
    pub fn is_missing(&self) -> bool {
        matches!(self, SchemaError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }

    /// The file at fault.
    pub fn path(&self) -> &Path {
        match self {
            SchemaError::Io { path, .. }
            | SchemaError::Row { path, .. }
            | SchemaError::Run { path, .. } => path,
        }
    }
}

fn read_text(path: &Path) -> Result<String, SchemaError> {
    std::fs::read_to_string(path).map_err(|source| SchemaError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads every row of a `scores.jsonl` (blank lines skipped).
///
/// # Errors
/// [`SchemaError`] naming the file, and the line and field of a malformed row.
pub fn read_scores(path: &Path) -> Result<Vec<ScoreRow>, SchemaError> {
    let text = read_text(path)?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            from_json(line).map_err(|problem| SchemaError::Row {
                path: path.to_path_buf(),
                line: n + 1,
                problem,
            })
        })
        .collect()
}

/// Reads a `run.json`.
///
/// # Errors
/// [`SchemaError`] naming the file, and the field at fault.
pub fn read_run(path: &Path) -> Result<RunRecord, SchemaError> {
    from_json(&read_text(path)?).map_err(|problem| SchemaError::Run {
        path: path.to_path_buf(),
        problem,
    })
}

/// Parses JSON into `T`, naming the field at fault: "field `scoring.decodes`: invalid type".
fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    let mut json = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        if field == "." {
            inner.to_string()
        } else {
            format!("field `{field}`: {inner}")
        }
    })
}

fn nan() -> f32 {
    f32::NAN
}

/// JSON has no NaN: an undefined loss is written as `null` and read back as NaN.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f32, s: S) -> Result<S::Ok, S::Error> {
        if value.is_finite() {
            s.serialize_f32(*value)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NAN))
    }
}

fn null_as_zero<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    Ok(Option::<usize>::deserialize(d)?.unwrap_or(0))
}

fn id_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    optional_id_text(d)?.ok_or_else(|| serde::de::Error::custom("expected a string, found null"))
}

fn optional_id_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(s)),
        serde_json::Value::Number(n) => Ok(Some(n.to_string())),
        other => Err(serde::de::Error::custom(format!(
            "expected a string, found {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unscorable_samples_are_counted_by_reason_with_their_first_ids() {
        use Unscorable::*;
        let reasons = [
            None,
            Some(ExampleTooLong),
            Some(TooLong),
            None,
            Some(ExampleTooLong),
        ]
        .into_iter()
        .chain(std::iter::repeat_n(Some(ExampleTooLong), 6));
        let groups = UnscoredGroup::of(reasons, |i| format!("s{i}"));
        assert_eq!(groups.len(), 2);
        assert_eq!((groups[0].reason, groups[0].count), (TooLong, 1));
        assert_eq!(groups[0].first_ids, ["s2"]);
        assert_eq!((groups[1].reason, groups[1].count), (ExampleTooLong, 8));
        assert_eq!(groups[1].first_ids, ["s1", "s4", "s5", "s6", "s7"]);
        assert!(UnscoredGroup::of([None, None], |i| i.to_string()).is_empty());
    }

    fn row() -> ScoreRow {
        ScoreRow {
            id: "a".into(),
            index: 0,
            miwv: 0.25,
            loss_zero_shot: 1.5,
            loss_one_shot: 1.75,
            reason: None,
            neighbour_id: Some("b".into()),
            neighbour_index: Some(1),
            similarity: Some(0.9),
            response_tokens: 10,
            prompt_tokens_zero_shot: 5,
            prompt_tokens_one_shot: 20,
            tokens_zero_shot: 0,
            tokens_one_shot: 0,
            selected: Some(true),
            rank: Some(1),
            turns: 1,
            ifd: None,
        }
    }

    #[test]
    fn a_row_reads_back_as_written_nan_as_null() {
        let mut unscorable = row();
        unscorable.miwv = f32::NAN;
        unscorable.loss_one_shot = f32::NAN;
        unscorable.reason = Some(Unscorable::NoNeighbour);
        let mut with_ifd = row();
        with_ifd.ifd = Some(Ifd::new(1.5, 2.0));
        for original in [row(), unscorable, with_ifd] {
            let line = serde_json::to_string(&original).unwrap();
            let back: ScoreRow = serde_json::from_str(&line).unwrap();
            assert_eq!(serde_json::to_string(&back).unwrap(), line);
            assert_eq!(back.score(), original.score());
        }
        let line = serde_json::to_string(&ScoreRow {
            miwv: f32::NAN,
            ..row()
        })
        .unwrap();
        assert!(line.contains(r#""miwv":null"#), "{line}");
    }

    #[test]
    fn another_scorers_row_reads_with_defaults() {
        let line = r#"{"id": 7, "index": 0, "miwv": null, "loss_zero_shot": 1.0, "response_tokens": null, "neighbour_id": 3}"#;
        let row: ScoreRow = serde_json::from_str(line).unwrap();
        assert_eq!(row.id, "7");
        assert_eq!(row.neighbour_id.as_deref(), Some("3"));
        assert!(row.miwv.is_nan() && row.loss_one_shot.is_nan());
        assert_eq!(
            (row.response_tokens, row.selected, row.ifd),
            (0, None, None)
        );
    }

    #[test]
    fn a_bad_field_is_named_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scores.jsonl");
        std::fs::write(&path, "{\"id\":\"a\",\"index\":0,\"miwv\":1}\n\n{\"id\":\"b\",\"index\":1,\"miwv\":\"high\"}\n").unwrap();
        let message = read_scores(&path).unwrap_err().to_string();
        assert!(message.contains("scores.jsonl: line 3"), "{message}");
        assert!(message.contains("field `miwv`"), "{message}");
        assert!(read_scores(&dir.path().join("none.jsonl"))
            .unwrap_err()
            .is_missing());
    }
}
