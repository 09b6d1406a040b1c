//! Finding each sample's most similar *other* sample with FAISS, at any size.
//!
//! Inner product over L2-normalised vectors is cosine similarity. The rules hold for every
//! index and size:
//!
//! - a sample is never its own neighbour, and a dataset of one sample has none;
//! - similarities within [`TIE`] are ties, which go to the lowest index;
//! - samples whose retrieval texts are identical (equal hashes, passed by the caller) are
//!   grouped first: each copy's neighbour is the lowest-index *other* copy, with similarity
//!   1.0, without any search. Only one vector per distinct text is indexed and only texts
//!   without a copy are searched, so 10,000 copies of one instruction cost O(N).
//!
//! Three methods, chosen by [`IndexOptions`] (`auto` by default, see [`IndexPlan::resolve`]):
//!
//! - **exact** (`Flat`, what `auto` uses up to [`AUTO_EXACT_MAX`] distinct texts): every
//!   distinct vector in one FAISS `IndexFlatIP`, queries in blocks (one BLAS product per
//!   block), k = min(N, 4) and, for the rare row whose tie reaches the k-th result, a wider
//!   search of that row. O(N²·D): 100 s at 100K × 768 on 2 cores, hours at 1M.
//! - **self-join** (`join`, `join{L}`; what `auto` uses above): an inverted file searched all
//!   at once, list by list, with FAISS's BLAS paths ([`Method::Join`]). 3.5 to 10 minutes
//!   (by machine) and 1.2 GiB at 1M × 768 on 2 cores.
//! - **any other FAISS `index_factory` string** (`IVF4096,SQ8`, `HNSW32`, ...): trained,
//!   filled block by block and searched by FAISS itself. Built for the machine, FAISS's
//!   fastest index at the join's recall (`IVF1024,SQ8`) still took 1.9x its time at 1M, and
//!   HNSW did not reach that recall (docs/PERFORMANCE.md).
//!
//! Approximate methods fetch a few candidates per query and re-rank them with exact dot
//! products against the original vectors, so every reported similarity is exact and the tie
//! rule applies to them; their recall@1 against exact search is measured on a random sample
//! of the run's own queries and returned in the [`IndexReport`].
//!
//! Vectors come from a [`VectorSource`]: a slice in memory ([`SliceVectors`]) or a file of
//! little-endian `f32` rows read block by block ([`FileVectors`], the run's `embeddings.f32`).
//! The self-join holds one byte per dimension per vector, the training sample and one list's
//! vectors at a time, never all N vectors as `f32`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Instant;

use faiss::index::IndexImpl;
use faiss::{FlatIndex, Index, MetricType};
use rayon::prelude::*;
use serde::Serialize;

pub use crate::state::config::IndexOptions;
pub use crate::state::schema::{IndexPlan, IndexReport, Method, Neighbour};

/// Retrieval failed: FAISS, reading the vectors, or an index setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NeighbourError {
    /// FAISS refused or failed.
    #[error("FAISS: {0}")]
    Faiss(String),
    /// The vector file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The vector file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Inconsistent input (the message names which).
    #[error("neighbours: {0}")]
    Invalid(String),
    /// An index setting that cannot be used.
    #[error(transparent)]
    Setting(#[from] crate::state::config::ConfigError),
}

fn faiss_error(context: &str) -> impl Fn(faiss::error::Error) -> NeighbourError + '_ {
    move |e| NeighbourError::Faiss(format!("{context}: {e}"))
}

/// Similarities closer than this are ties, broken by the lower index: BLAS blocking can give
/// identical vectors dot products that differ in the last bits.
pub const TIE: f32 = 1e-6;

/// Up to this many distinct vectors, `auto` searches exactly (`Flat`); above it, the
/// self-join. Measured on 2 cores (docs/PERFORMANCE.md, "Neighbours at scale"): exact search
/// of 50,000 × 768 takes 26 s and keeps results exact; above, its N² growth takes over (101 s
/// at 100,000) while the self-join takes 5–10 s there.
pub const AUTO_EXACT_MAX: usize = 50_000;

/// Lists probed per query when no `nprobe` is given. At 1M × 768 on the benchmark's
/// vectors: recall@1 0.973 / 0.994 / 1.000 with 2 / 4 / 8 probes, in 106 / 153 / 193 s; 8
/// leaves room for real embeddings, which are likely harder.
pub const AUTO_NPROBE: u32 = 8;

/// Training vectors per inverted list (FAISS asks for 30 to 256; k-means time grows with it).
pub const TRAIN_PER_LIST: usize = 40;

/// Candidates fetched from an approximate index per query and re-ranked exactly.
const CANDIDATES: usize = 8;

/// Rows per block when vectors are read, added or searched.
const BLOCK: usize = 16_384;

/// Rows per block of the exact block-wise search used for recall and fall-backs.
const EXACT_BLOCK: usize = 32_768;

/// Where the normalised vectors come from: rows `0..len()`, `dim()` wide.
pub trait VectorSource: Sync {
    /// Width of a row.
    fn dim(&self) -> usize;
    /// Number of rows.
    fn len(&self) -> usize;
    /// Whether there are no rows.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies rows `start..start + out.len() / dim()` into `out`.
    ///
    /// # Errors
    /// [`NeighbourError::Io`] when the rows cannot be read.
    fn read_rows(&self, start: usize, out: &mut [f32]) -> Result<(), NeighbourError>;
}

/// Vectors already in memory: `dim`-wide rows, one after another.
#[derive(Debug, Clone, Copy)]
pub struct SliceVectors<'a> {
    vectors: &'a [f32],
    dim: usize,
}

impl<'a> SliceVectors<'a> {
    /// Rows of `dim` values.
    ///
    /// # Errors
    /// [`NeighbourError::Invalid`] when `dim` is 0 or does not divide the length.
    pub fn new(vectors: &'a [f32], dim: usize) -> Result<Self, NeighbourError> {
        if dim == 0 || !vectors.len().is_multiple_of(dim) {
            return Err(NeighbourError::Invalid(format!(
                "{} values are not rows of {dim}",
                vectors.len()
            )));
        }
        Ok(SliceVectors { vectors, dim })
    }
}

impl VectorSource for SliceVectors<'_> {
    fn dim(&self) -> usize {
        self.dim
    }
    fn len(&self) -> usize {
        self.vectors.len() / self.dim
    }
    fn read_rows(&self, start: usize, out: &mut [f32]) -> Result<(), NeighbourError> {
        let from = start * self.dim;
        let rows = self.vectors.get(from..from + out.len()).ok_or_else(|| {
            NeighbourError::Invalid(format!("rows from {start} are past the end"))
        })?;
        out.copy_from_slice(rows);
        Ok(())
    }
}

/// Vectors in a file of little-endian `f32` rows (the run's `embeddings.f32`), read with
/// positioned reads as they are needed: nothing is kept in memory.
#[derive(Debug)]
pub struct FileVectors {
    file: std::fs::File,
    path: PathBuf,
    dim: usize,
    len: usize,
}

impl FileVectors {
    /// Opens `path` as rows of `dim` values.
    ///
    /// # Errors
    /// [`NeighbourError::Io`] when it cannot be opened; [`NeighbourError::Invalid`] when its
    /// size is not a whole number of rows.
    pub fn open(path: &Path, dim: usize) -> Result<Self, NeighbourError> {
        let io = |source| NeighbourError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let bytes = file.metadata().map_err(io)?.len();
        let row = (dim * 4) as u64;
        if dim == 0 || bytes % row != 0 {
            return Err(NeighbourError::Invalid(format!(
                "{}: {bytes} bytes are not rows of {dim} f32 values",
                path.display()
            )));
        }
        Ok(FileVectors {
            file,
            path: path.to_path_buf(),
            dim,
            len: (bytes / row) as usize,
        })
    }

    #[cfg(unix)]
    fn read_at(&self, bytes: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, bytes, offset)
    }

    #[cfg(windows)]
    fn read_at(&self, mut bytes: &mut [u8], mut offset: u64) -> std::io::Result<()> {
        while !bytes.is_empty() {
            match std::os::windows::fs::FileExt::seek_read(&self.file, bytes, offset)? {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => {
                    bytes = &mut bytes[n..];
                    offset += n as u64;
                }
            }
        }
        Ok(())
    }
}

impl VectorSource for FileVectors {
    fn dim(&self) -> usize {
        self.dim
    }
    fn len(&self) -> usize {
        self.len
    }
    fn read_rows(&self, start: usize, out: &mut [f32]) -> Result<(), NeighbourError> {
        const CHUNK: usize = 1 << 16;
        let mut bytes = vec![0u8; (out.len() * 4).min(CHUNK)];
        let mut offset = (start * self.dim * 4) as u64;
        for values in out.chunks_mut(CHUNK / 4) {
            let bytes = &mut bytes[..values.len() * 4];
            self.read_at(bytes, offset)
                .map_err(|source| NeighbourError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            for (v, b) in values.iter_mut().zip(bytes.chunks_exact(4)) {
                *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            offset += bytes.len() as u64;
        }
        Ok(())
    }
}

impl IndexPlan {
    /// The plan for `n` distinct vectors. `auto` is `Flat` up to [`AUTO_EXACT_MAX`] and above
    /// it the self-join with [`join_lists`] lists probing [`AUTO_NPROBE`] each. Inverted
    /// lists are trained on [`TRAIN_PER_LIST`] vectors per list.
    pub fn resolve(options: &IndexOptions, n: usize) -> IndexPlan {
        let index = options.index.trim();
        let factory = match index {
            "auto" if n <= AUTO_EXACT_MAX => "Flat".to_string(),
            "auto" | "join" => format!("join{}", join_lists(n)),
            _ => index.to_string(),
        };
        let (method, lists) = if factory == "Flat" {
            (Method::Exact, None)
        } else if let Some(lists) = factory.strip_prefix("join") {
            (Method::Join, lists.parse().ok())
        } else {
            (Method::Faiss, inverted_lists(&factory))
        };
        // No more lists than vectors, and no more probes than lists.
        let lists = lists.map(|l: usize| l.clamp(1, n.max(1)));
        let nprobe = lists.map(|l| options.nprobe.unwrap_or(AUTO_NPROBE).min(l as u32));
        let train = match (method, lists) {
            (Method::Exact, _) => 0,
            (Method::Join, Some(lists)) => n.min(lists * TRAIN_PER_LIST),
            // FAISS warns below 39 per list; PQ codebooks want 256 × 39 at least.
            (_, Some(lists)) => n.min((lists * TRAIN_PER_LIST).max(10_000)),
            (_, None) => n.min(100_000),
        };
        IndexPlan {
            factory,
            method,
            exact: method == Method::Exact,
            lists,
            nprobe,
            ef_search: options.ef_search.filter(|_| options.takes_ef_search()),
            train,
        }
    }
}

/// Inverted lists for the self-join of `n` vectors: the power of two nearest √n, at least 16.
///
/// A self-join costs about `2·n·L·D` flops to assign the vectors to L lists and
/// `2·n·nprobe·(n/L)·D` to search the lists; at a fixed share `nprobe/L` of the data searched
/// per query, fewer, larger lists cost less and keep BLAS products large. FAISS's advice of
/// 4·√n to 16·√n lists is for indexes searched many times; this one is searched once.
pub fn join_lists(n: usize) -> usize {
    let power = (n as f64).sqrt().log2().round().max(4.0) as u32;
    1usize << power
}

/// The number of inverted lists in an `index_factory` string (`IVF4096,...` gives 4096).
fn inverted_lists(factory: &str) -> Option<usize> {
    let at = factory.find("IVF")? + 3;
    let digits: String = factory[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// A step of [`find_neighbours`], for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Training the index on a sample (vectors read / to read).
    Train,
    /// Adding the distinct vectors (added / to add).
    Add,
    /// Searching the queries (searched / to search).
    Search,
    /// Exact search of the recall sample (database rows scanned / all).
    Recall,
}

/// Each sample's neighbour and how it was found.
#[derive(Debug, Clone)]
pub struct Neighbours {
    /// For every sample, its most similar other sample; `None` when it is alone.
    pub found: Vec<Option<Neighbour>>,
    /// The index used, its cost and its measured recall.
    pub report: IndexReport,
}

/// For every row of `vectors` (`dim` wide, normalised), the most similar other row by exact
/// search; ties go to the lowest index, bit-identical rows are each other's neighbours with
/// similarity 1. `None` when the dataset has a single sample. All rows are in memory; for a
/// large dataset use [`find_neighbours`] with a [`FileVectors`] and text hashes.
///
/// # Errors
/// [`NeighbourError`] when FAISS fails or `dim` does not divide the length.
pub fn nearest_others(
    vectors: &[f32],
    dim: usize,
) -> Result<Vec<Option<Neighbour>>, NeighbourError> {
    if vectors.is_empty() {
        return Ok(Vec::new());
    }
    let hashes: Vec<u64> = vectors
        .chunks_exact(dim.max(1))
        .map(|row| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            row.iter().for_each(|v| v.to_bits().hash(&mut hasher));
            hasher.finish()
        })
        .collect();
    let source = SliceVectors::new(vectors, dim)?;
    let found = find_neighbours(&source, &hashes, &IndexOptions::exact(), &mut |_, _, _| {})?;
    Ok(found.found)
}

/// Every sample's most similar other sample (see the module notes for the rules).
///
/// `hashes` holds one hash of each sample's retrieval text (equal texts, equal hashes);
/// `progress` is called with each stage's work done and total.
///
/// # Errors
/// [`NeighbourError`] when the hashes do not match the vectors, the index string is refused
/// by FAISS, FAISS fails or the vectors cannot be read.
pub fn find_neighbours(
    source: &dyn VectorSource,
    hashes: &[u64],
    options: &IndexOptions,
    progress: &mut dyn FnMut(Stage, usize, usize),
) -> Result<Neighbours, NeighbourError> {
    let n = source.len();
    if hashes.len() != n {
        return Err(NeighbourError::Invalid(format!(
            "{} text hashes for {n} vectors",
            hashes.len()
        )));
    }
    options.validate()?;
    let groups = group_copies(hashes);
    let mut found = groups.found;
    let plan = IndexPlan::resolve(options, groups.distinct.len());
    let mut report = IndexReport {
        plan: plan.clone(),
        samples: n,
        distinct: groups.distinct.len(),
        duplicates: n - groups.queries.len(),
        searched: groups.queries.len(),
        fallbacks: 0,
        recall_at_1: None,
        recall_queries: 0,
        train_s: 0.0,
        add_s: 0.0,
        search_s: 0.0,
        recall_s: 0.0,
    };
    // A single distinct text: its copies have each other, a lone sample has no neighbour.
    if groups.queries.is_empty() || groups.distinct.len() < 2 {
        return Ok(Neighbours { found, report });
    }
    let db = Database {
        source,
        rows: &groups.distinct,
    };
    if plan.exact {
        exact_search(&db, &groups.queries, &mut found, &mut report, progress)?;
        report.recall_at_1 = Some(1.0);
    } else {
        if plan.method == Method::Join {
            join_search(&db, &groups.queries, &mut found, &mut report, progress)?;
        } else {
            approximate_search(&db, &groups.queries, &mut found, &mut report, progress)?;
        }
        if options.recall_queries > 0 {
            let started = Instant::now();
            let sample = random_subset(&groups.queries, options.recall_queries, 0x5eed_2ec4);
            let exact = exact_nearest(&db, &sample, &mut |done, total| {
                progress(Stage::Recall, done, total)
            })?;
            let approximate: Vec<Option<Neighbour>> = sample.iter().map(|&q| found[q]).collect();
            report.recall_at_1 = Some(recall_at_1(&approximate, &exact));
            report.recall_queries = sample.len();
            report.recall_s = started.elapsed().as_secs_f64();
        }
    }
    tracing::debug!(
        index = %plan.factory,
        nprobe = ?plan.nprobe,
        distinct = report.distinct,
        duplicates = report.duplicates,
        recall_at_1 = ?report.recall_at_1,
        "neighbours found"
    );
    Ok(Neighbours { found, report })
}

/// The share of `found` whose neighbour is an exact nearest neighbour: the same sample as
/// `exact`, or one as similar within [`TIE`]. Rows where `exact` has none do not count.
pub fn recall_at_1(found: &[Option<Neighbour>], exact: &[Option<Neighbour>]) -> f64 {
    let (mut hits, mut total) = (0usize, 0usize);
    for (f, e) in found.iter().zip(exact) {
        if let Some(e) = e {
            total += 1;
            if f.is_some_and(|f| f.index == e.index || f.similarity >= e.similarity - TIE) {
                hits += 1;
            }
        }
    }
    if total == 0 {
        1.0
    } else {
        hits as f64 / total as f64
    }
}

/// Samples grouped by identical text.
struct Groups {
    /// The first sample of each distinct text, ascending: the indexed vectors.
    distinct: Vec<usize>,
    /// Distinct texts without a copy, ascending: the samples searched.
    queries: Vec<usize>,
    /// Neighbours settled by copies.
    found: Vec<Option<Neighbour>>,
}

fn group_copies(hashes: &[u64]) -> Groups {
    let mut first: HashMap<u64, usize> = HashMap::with_capacity(hashes.len());
    let mut found: Vec<Option<Neighbour>> = vec![None; hashes.len()];
    let mut distinct = Vec::new();
    for (i, &hash) in hashes.iter().enumerate() {
        match first.entry(hash) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(i);
                distinct.push(i);
            }
            std::collections::hash_map::Entry::Occupied(slot) => {
                let original = *slot.get();
                found[i] = Some(Neighbour {
                    index: original,
                    similarity: 1.0,
                });
                // Samples come in increasing order: the first copy seen is the lowest.
                if found[original].is_none() {
                    found[original] = Some(Neighbour {
                        index: i,
                        similarity: 1.0,
                    });
                }
            }
        }
    }
    let queries = distinct
        .iter()
        .copied()
        .filter(|&i| found[i].is_none())
        .collect();
    Groups {
        distinct,
        queries,
        found,
    }
}

/// The indexed vectors: the distinct samples of a source. Index labels are positions in
/// `rows`, which is ascending, so the lower label is the lower sample index.
struct Database<'a> {
    source: &'a dyn VectorSource,
    rows: &'a [usize],
}

impl Database<'_> {
    fn dim(&self) -> usize {
        self.source.dim()
    }

    fn sample(&self, label: faiss::Idx) -> Option<usize> {
        label.get().and_then(|l| self.rows.get(l as usize)).copied()
    }
}

/// The rows `samples` (ascending) of `source`, one after another, read in contiguous runs.
fn gather(
    source: &dyn VectorSource,
    samples: &[usize],
    out: &mut Vec<f32>,
) -> Result<(), NeighbourError> {
    let dim = source.dim();
    out.clear();
    out.resize(samples.len() * dim, 0.0);
    let mut at = 0;
    while at < samples.len() {
        let mut end = at + 1;
        while end < samples.len() && samples[end] == samples[end - 1] + 1 {
            end += 1;
        }
        source.read_rows(samples[at], &mut out[at * dim..end * dim])?;
        at = end;
    }
    Ok(())
}

/// Adds every database vector to `index`, block by block.
fn add_all(
    db: &Database,
    index: &mut impl Index,
    progress: &mut dyn FnMut(Stage, usize, usize),
) -> Result<(), NeighbourError> {
    let mut block = Vec::new();
    for (b, rows) in db.rows.chunks(BLOCK).enumerate() {
        gather(db.source, rows, &mut block)?;
        index.add(&block).map_err(faiss_error("add"))?;
        progress(Stage::Add, b * BLOCK + rows.len(), db.rows.len());
    }
    Ok(())
}

/// Query blocks: `BLOCK` rows (a multiple of FAISS's 4,096-query BLAS block, so each block is
/// computed exactly as one call over all queries would), with a tail shorter than FAISS's
/// BLAS threshold (20 queries) joined to the block before it.
fn query_blocks(queries: &[usize]) -> Vec<&[usize]> {
    let mut blocks: Vec<&[usize]> = queries.chunks(BLOCK).collect();
    if blocks.len() > 1 && blocks[blocks.len() - 1].len() < 20 {
        blocks.pop();
        let start = (blocks.len() - 1) * BLOCK;
        *blocks.last_mut().expect("two blocks") = &queries[start..];
    }
    blocks
}

fn exact_search(
    db: &Database,
    queries: &[usize],
    found: &mut [Option<Neighbour>],
    report: &mut IndexReport,
    progress: &mut dyn FnMut(Stage, usize, usize),
) -> Result<(), NeighbourError> {
    let dim = db.dim();
    let n = db.rows.len();
    let started = Instant::now();
    let mut index: IndexImpl =
        faiss::index_factory(faiss_dim(dim)?, "Flat", MetricType::InnerProduct)
            .map_err(faiss_error("Flat"))?;
    add_all(db, &mut index, progress)?;
    report.add_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    // The query itself, an exact duplicate or two, and a margin to see a tie end.
    let k = n.min(4);
    let mut unsettled = Vec::new();
    let mut block = Vec::new();
    let mut done = 0;
    for rows in query_blocks(queries) {
        gather(db.source, rows, &mut block)?;
        let result = index.search(&block, k).map_err(faiss_error("search"))?;
        for (q, &sample) in rows.iter().enumerate() {
            let labels = &result.labels[q * k..(q + 1) * k];
            let similarities = &result.distances[q * k..(q + 1) * k];
            found[sample] = best_other(sample, db, labels, similarities);
            if tie_reaches_end(similarities, found[sample]) {
                unsettled.push(sample);
            }
        }
        done += rows.len();
        progress(Stage::Search, done, queries.len());
    }
    // Rows whose tie may continue past the k results are searched again, wider.
    let mut k = k;
    let mut row = vec![0.0; dim];
    while !unsettled.is_empty() && k < n {
        k = (k * 4).min(n);
        for sample in std::mem::take(&mut unsettled) {
            db.source.read_rows(sample, &mut row)?;
            let result = index.search(&row, k).map_err(faiss_error("search"))?;
            found[sample] = best_other(sample, db, &result.labels, &result.distances);
            if tie_reaches_end(&result.distances, found[sample]) {
                unsettled.push(sample);
            }
        }
    }
    report.search_s = started.elapsed().as_secs_f64();
    Ok(())
}

fn approximate_search(
    db: &Database,
    queries: &[usize],
    found: &mut [Option<Neighbour>],
    report: &mut IndexReport,
    progress: &mut dyn FnMut(Stage, usize, usize),
) -> Result<(), NeighbourError> {
    let plan = report.plan.clone();
    let dim = db.dim();
    let started = Instant::now();
    let mut index: IndexImpl =
        faiss::index_factory(faiss_dim(dim)?, &plan.factory, MetricType::InnerProduct)
            .map_err(faiss_error(&plan.factory))?;
    if !index.is_trained() {
        let sample = random_subset(db.rows, plan.train.max(1), 0x7a1_0001);
        progress(Stage::Train, 0, sample.len());
        let mut vectors = Vec::new();
        gather(db.source, &sample, &mut vectors)?;
        index.train(&vectors).map_err(faiss_error("train"))?;
        progress(Stage::Train, sample.len(), sample.len());
    }
    let parameters = [("nprobe", plan.nprobe), ("efSearch", plan.ef_search)];
    for (name, value) in parameters {
        if let Some(value) = value {
            faiss::index::autotune::ParameterSpace::new()
                .and_then(|space| space.set_index_parameter(&index, name, f64::from(value)))
                .map_err(faiss_error(name))?;
        }
    }
    report.train_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    add_all(db, &mut index, progress)?;
    report.add_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let k = CANDIDATES.min(db.rows.len());
    let mut block = Vec::new();
    let mut missing = Vec::new();
    let mut done = 0;
    for rows in query_blocks(queries) {
        gather(db.source, rows, &mut block)?;
        let result = index.search(&block, k).map_err(faiss_error("search"))?;
        let candidates = |q: usize| {
            result.labels[q * k..(q + 1) * k]
                .iter()
                .filter_map(|&label| db.sample(label))
        };
        rerank_block(db, rows, &block, candidates, found, &mut missing)?;
        done += rows.len();
        progress(Stage::Search, done, queries.len());
    }
    // Candidates that held no other sample (empty probed lists): search those exactly.
    search_exactly(db, &missing, found)?;
    report.fallbacks = missing.len();
    report.search_s = started.elapsed().as_secs_f64();
    Ok(())
}

/// The self-join ([`Method::Join`]): inverted lists from k-means, every vector stored as
/// 8-bit codes in its nearest list, each list searched against the queries that probe it (one
/// BLAS product per list), and the candidates re-ranked against the original vectors.
fn join_search(
    db: &Database,
    queries: &[usize],
    found: &mut [Option<Neighbour>],
    report: &mut IndexReport,
    progress: &mut dyn FnMut(Stage, usize, usize),
) -> Result<(), NeighbourError> {
    let plan = report.plan.clone();
    let lists = plan.lists.unwrap_or(1).min(db.rows.len());
    let nprobe = (plan.nprobe.unwrap_or(1) as usize).clamp(1, lists);

    let started = Instant::now();
    let (codec, mut coarse) = train_lists(db, plan.train.max(lists), lists, progress)?;
    report.train_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let (codes, probes) = encode_and_assign(db, &codec, &mut coarse, nprobe, progress)?;
    drop(coarse);
    let layout = ListLayout::build(db.rows, queries, &probes, lists, nprobe);
    drop(probes);
    report.add_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let top = search_lists(db, &codec, &codes, &layout, nprobe, queries.len(), progress)?;
    drop(codes);
    let missing = rerank_candidates(db, queries, &top, found)?;
    search_exactly(db, &missing, found)?;
    report.fallbacks = missing.len();
    report.search_s = started.elapsed().as_secs_f64();
    Ok(())
}

/// The lists' centroids (k-means on a sample of `train` vectors), in a flat index, and the
/// 8-bit codec fitted on the same sample.
fn train_lists(
    db: &Database,
    train: usize,
    lists: usize,
    progress: &mut dyn FnMut(Stage, usize, usize),
) -> Result<(Sq8, FlatIndex), NeighbourError> {
    let dim = db.dim();
    let sample = random_subset(db.rows, train, 0x7a1_0001);
    progress(Stage::Train, 0, sample.len());
    let mut vectors = Vec::new();
    gather(db.source, &sample, &mut vectors)?;
    let codec = Sq8::fit(&vectors, dim);
    let centroids = kmeans(&vectors, dim, lists)?;
    drop(vectors);
    let mut coarse = FlatIndex::new_l2(faiss_dim(dim)?).map_err(faiss_error("Flat"))?;
    coarse.add(&centroids).map_err(faiss_error("add"))?;
    progress(Stage::Train, sample.len(), sample.len());
    Ok((codec, coarse))
}

/// Every vector's codes, and its `nprobe` nearest lists (`u32::MAX` where FAISS placed it in
/// none, e.g. a vector holding NaN).
fn encode_and_assign(
    db: &Database,
    codec: &Sq8,
    coarse: &mut FlatIndex,
    nprobe: usize,
    progress: &mut dyn FnMut(Stage, usize, usize),
) -> Result<(Vec<u8>, Vec<u32>), NeighbourError> {
    let (dim, m) = (db.dim(), db.rows.len());
    let mut codes = vec![0u8; m * dim];
    let mut probes = vec![0u32; m * nprobe];
    let mut block = Vec::new();
    for (b, rows) in db.rows.chunks(BLOCK).enumerate() {
        gather(db.source, rows, &mut block)?;
        let result = coarse
            .search(&block, nprobe)
            .map_err(faiss_error("assign"))?;
        let at = b * BLOCK;
        for (slot, label) in probes[at * nprobe..(at + rows.len()) * nprobe]
            .iter_mut()
            .zip(&result.labels)
        {
            *slot = label.get().map_or(u32::MAX, |l| l as u32);
        }
        codes[at * dim..(at + rows.len()) * dim]
            .par_chunks_mut(dim)
            .zip(block.par_chunks(dim))
            .for_each(|(code, vector)| codec.encode(vector, code));
        progress(Stage::Add, at + rows.len(), m);
    }
    Ok((codes, probes))
}

/// Who is in each list and who searches it.
struct ListLayout {
    /// A list's members: the vectors (by place in the database) whose nearest list it is.
    members: Csr,
    /// A list's probers: the queries (by place in the query list) that search it.
    probers: Csr,
    /// Each query's place in the database.
    positions: Vec<u32>,
}

impl ListLayout {
    fn build(
        rows: &[usize],
        queries: &[usize],
        probes: &[u32],
        lists: usize,
        nprobe: usize,
    ) -> Self {
        let members = Csr::build(
            lists,
            (0..rows.len())
                .map(|p| (probes[p * nprobe], p as u32))
                .filter(|&(list, _)| list != u32::MAX),
        );
        let positions = positions_in(rows, queries);
        let probers = Csr::build(
            lists,
            positions.iter().enumerate().flat_map(|(q, &p)| {
                probes[p as usize * nprobe..(p as usize + 1) * nprobe]
                    .iter()
                    .filter(|&&list| list != u32::MAX)
                    .map(move |&list| (list, q as u32))
            }),
        );
        let pairs: usize = (0..lists)
            .map(|l| members.row(l).len() * probers.row(l).len())
            .sum();
        let largest = (0..lists).map(|l| members.row(l).len()).max().unwrap_or(0);
        tracing::debug!(
            lists,
            nprobe,
            largest,
            pairs,
            share = pairs as f64 / (rows.len() as f64 * queries.len() as f64),
            "self-join lists"
        );
        ListLayout {
            members,
            probers,
            positions,
        }
    }
}

/// Each list against the queries that probe it, on the decoded codes: every query's best
/// [`CANDIDATES`] by approximate similarity (database places).
fn search_lists(
    db: &Database,
    codec: &Sq8,
    codes: &[u8],
    layout: &ListLayout,
    nprobe: usize,
    queries: usize,
    progress: &mut dyn FnMut(Stage, usize, usize),
) -> Result<TopK, NeighbourError> {
    let mut top = TopK::new(queries, CANDIDATES);
    let mut index = FlatIndex::new_ip(faiss_dim(db.dim())?).map_err(faiss_error("Flat"))?;
    let (mut member_vectors, mut query_vectors) = (Vec::new(), Vec::new());
    let mut searched = 0;
    for list in 0..layout.members.len() {
        let (members, probers) = (layout.members.row(list), layout.probers.row(list));
        searched += probers.len();
        if members.is_empty() || probers.is_empty() {
            continue;
        }
        codec.decode_rows(codes, members.iter().copied(), &mut member_vectors);
        codec.decode_rows(
            codes,
            probers.iter().map(|&q| layout.positions[q as usize]),
            &mut query_vectors,
        );
        index.reset().map_err(faiss_error("reset"))?;
        index.add(&member_vectors).map_err(faiss_error("add"))?;
        // One more than needed: the query itself is among its own list's members.
        let k = (CANDIDATES + 1).min(members.len());
        let result = index
            .search(&query_vectors, k)
            .map_err(faiss_error("search"))?;
        for (j, &q) in probers.iter().enumerate() {
            let own = layout.positions[q as usize];
            for (label, &similarity) in result.labels[j * k..(j + 1) * k]
                .iter()
                .zip(&result.distances[j * k..(j + 1) * k])
            {
                if let Some(l) = label.get() {
                    let member = members[l as usize];
                    if member != own {
                        top.offer(q as usize, member, similarity);
                    }
                }
            }
        }
        progress(Stage::Search, searched / nprobe, queries);
    }
    Ok(top)
}

/// Every query's candidates in `top` re-ranked against the original vectors into `found`;
/// returns the queries left without a neighbour.
fn rerank_candidates(
    db: &Database,
    queries: &[usize],
    top: &TopK,
    found: &mut [Option<Neighbour>],
) -> Result<Vec<usize>, NeighbourError> {
    let mut block = Vec::new();
    let mut missing = Vec::new();
    let mut done = 0;
    for rows in query_blocks(queries) {
        gather(db.source, rows, &mut block)?;
        let first = done;
        let candidates = |q: usize| top.row(first + q).map(|p| db.rows[p as usize]);
        rerank_block(db, rows, &block, candidates, found, &mut missing)?;
        done += rows.len();
    }
    Ok(missing)
}

/// The queries `rows` (their vectors in `block`), each re-ranked against its `candidates(q)`
/// into `found`; the queries left without a neighbour go to `missing`.
fn rerank_block<I: Iterator<Item = usize>>(
    db: &Database,
    rows: &[usize],
    block: &[f32],
    candidates: impl Fn(usize) -> I + Sync,
    found: &mut [Option<Neighbour>],
    missing: &mut Vec<usize>,
) -> Result<(), NeighbourError> {
    let dim = db.dim();
    let best: Vec<Option<Neighbour>> = rows
        .par_iter()
        .enumerate()
        .map_init(
            || vec![0.0f32; dim],
            |candidate, (q, &sample)| {
                rerank(
                    db,
                    sample,
                    &block[q * dim..(q + 1) * dim],
                    candidates(q),
                    candidate,
                )
            },
        )
        .collect::<Result<_, _>>()?;
    for (&sample, best) in rows.iter().zip(best) {
        found[sample] = best;
        if best.is_none() {
            missing.push(sample);
        }
    }
    Ok(())
}

/// The neighbours of `samples` by exact search, for queries an approximate search left
/// without one (every probed list empty but for themselves).
fn search_exactly(
    db: &Database,
    samples: &[usize],
    found: &mut [Option<Neighbour>],
) -> Result<(), NeighbourError> {
    if samples.is_empty() {
        return Ok(());
    }
    let exact = exact_nearest(db, samples, &mut |_, _| {})?;
    for (&sample, best) in samples.iter().zip(exact) {
        found[sample] = best;
    }
    Ok(())
}

/// A vector width as FAISS takes it.
fn faiss_dim(dim: usize) -> Result<u32, NeighbourError> {
    u32::try_from(dim).map_err(|_| {
        NeighbourError::Invalid(format!("vectors of width {dim} are wider than FAISS takes"))
    })
}

/// k-means by L2 distance (FAISS `Clustering`, 10 iterations as in FAISS's IVF training, a
/// fixed seed) of `vectors` into `k` centroids.
///
/// L2, not inner product: sentence embeddings share a common direction, and with
/// inner-product assignment the centroid nearest that direction wins a large share of all
/// vectors (on the benchmark's vectors one list of 128 held 22% of 20,000, and the join
/// compared 53% of all pairs). L2 distance ignores a shift common to all vectors, and for
/// unit vectors it ranks neighbours exactly as cosine does.
fn kmeans(vectors: &[f32], dim: usize, k: usize) -> Result<Vec<f32>, NeighbourError> {
    let mut params = faiss::cluster::ClusteringParameters::new();
    params.set_niter(10);
    params.set_seed(1234);
    let mut clustering =
        faiss::cluster::Clustering::new_with_params(faiss_dim(dim)?, faiss_dim(k)?, &params)
            .map_err(faiss_error("k-means"))?;
    let mut assign = FlatIndex::new_l2(faiss_dim(dim)?).map_err(faiss_error("k-means"))?;
    clustering
        .train(vectors, &mut assign)
        .map_err(faiss_error("k-means"))?;
    Ok(clustering
        .centroids()
        .map_err(faiss_error("k-means"))?
        .concat())
}

/// The place of each of `subset` (ascending) in `all` (ascending, holding every one).
fn positions_in(all: &[usize], subset: &[usize]) -> Vec<u32> {
    let mut at = 0;
    subset
        .iter()
        .map(|&s| {
            while all[at] != s {
                at += 1;
            }
            at as u32
        })
        .collect()
}

/// Rows of `u32` values, packed (compressed sparse rows).
struct Csr {
    offsets: Vec<usize>,
    values: Vec<u32>,
}

impl Csr {
    /// `rows` rows from (row, value) pairs; each row keeps its values in the order given.
    fn build(rows: usize, pairs: impl Iterator<Item = (u32, u32)> + Clone) -> Csr {
        let mut offsets = vec![0usize; rows + 1];
        for (row, _) in pairs.clone() {
            offsets[row as usize + 1] += 1;
        }
        for r in 0..rows {
            offsets[r + 1] += offsets[r];
        }
        let mut next = offsets.clone();
        let mut values = vec![0u32; offsets[rows]];
        for (row, value) in pairs {
            values[next[row as usize]] = value;
            next[row as usize] += 1;
        }
        Csr { offsets, values }
    }

    fn row(&self, row: usize) -> &[u32] {
        &self.values[self.offsets[row]..self.offsets[row + 1]]
    }

    fn len(&self) -> usize {
        self.offsets.len() - 1
    }
}

/// The `k` most similar candidates offered for each query (approximate similarities).
struct TopK {
    k: usize,
    ids: Vec<u32>,
    similarities: Vec<f32>,
}

impl TopK {
    fn new(queries: usize, k: usize) -> Self {
        TopK {
            k,
            ids: vec![u32::MAX; queries * k],
            similarities: vec![f32::NEG_INFINITY; queries * k],
        }
    }

    fn offer(&mut self, query: usize, id: u32, similarity: f32) {
        let range = query * self.k..(query + 1) * self.k;
        let sims = &mut self.similarities[range.clone()];
        let (worst, &least) = sims
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .expect("k >= 1");
        if similarity > least {
            sims[worst] = similarity;
            self.ids[range.start + worst] = id;
        }
    }

    fn row(&self, query: usize) -> impl Iterator<Item = u32> + '_ {
        self.ids[query * self.k..(query + 1) * self.k]
            .iter()
            .copied()
            .filter(|&id| id != u32::MAX)
    }
}

/// 8-bit scalar codes, one byte per dimension over the range seen in a sample (FAISS's
/// `SQ8`): 4x smaller than `f32`, with errors far below the gaps the re-ranking settles.
struct Sq8 {
    low: Vec<f32>,
    step: Vec<f32>,
}

impl Sq8 {
    fn fit(sample: &[f32], dim: usize) -> Self {
        let mut low = vec![f32::INFINITY; dim];
        let mut high = vec![f32::NEG_INFINITY; dim];
        for row in sample.chunks_exact(dim) {
            for ((l, h), &v) in low.iter_mut().zip(&mut high).zip(row) {
                *l = l.min(v);
                *h = h.max(v);
            }
        }
        // A margin for values beyond the sample's; those further out are clamped.
        let step = low
            .iter_mut()
            .zip(&high)
            .map(|(l, &h)| {
                let margin = 0.05 * (h - *l).max(1e-6);
                *l -= margin;
                (h + margin - *l) / 255.0
            })
            .collect();
        Sq8 { low, step }
    }

    fn encode(&self, vector: &[f32], code: &mut [u8]) {
        for (((c, &v), &l), &s) in code.iter_mut().zip(vector).zip(&self.low).zip(&self.step) {
            *c = ((v - l) / s).round().clamp(0.0, 255.0) as u8;
        }
    }

    /// The rows at `places` of `codes`, decoded one after another into `out`.
    fn decode_rows(&self, codes: &[u8], places: impl Iterator<Item = u32>, out: &mut Vec<f32>) {
        let dim = self.low.len();
        let places: Vec<u32> = places.collect();
        out.clear();
        out.resize(places.len() * dim, 0.0);
        out.par_chunks_mut(dim)
            .zip(places.par_iter())
            .for_each(|(row, &p)| {
                let code = &codes[p as usize * dim..(p as usize + 1) * dim];
                for (((v, &c), &l), &s) in row.iter_mut().zip(code).zip(&self.low).zip(&self.step) {
                    *v = l + f32::from(c) * s;
                }
            });
    }
}

/// The best of an approximate index's candidates (samples) for `sample`, by exact dot
/// products.
fn rerank(
    db: &Database,
    sample: usize,
    query: &[f32],
    candidates: impl Iterator<Item = usize>,
    candidate: &mut [f32],
) -> Result<Option<Neighbour>, NeighbourError> {
    let mut best: Option<Neighbour> = None;
    for other in candidates {
        if other == sample {
            continue;
        }
        db.source.read_rows(other, candidate)?;
        best = Some(better(
            best,
            Neighbour {
                index: other,
                similarity: dot(query, candidate),
            },
        ));
    }
    Ok(best)
}

/// `next` if it is more similar than `best` beyond a tie, or tied with a lower index.
fn better(best: Option<Neighbour>, next: Neighbour) -> Neighbour {
    match best {
        Some(best)
            if !(next.similarity > best.similarity + TIE
                || ((next.similarity - best.similarity).abs() <= TIE
                    && next.index < best.index)) =>
        {
            best
        }
        _ => next,
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight running sums, which the compiler keeps in vector registers.
    let mut sums = [0.0f32; 8];
    let (a8, a_rest) = a.split_at(a.len() / 8 * 8);
    let (b8, b_rest) = b.split_at(a8.len());
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for l in 0..8 {
            sums[l] += x[l] * y[l];
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    sums.iter().sum::<f32>() + tail
}

/// The exact neighbour of each of `queries` (ascending samples) among all database vectors,
/// scanning the database in blocks: one `IndexFlatIP` of `EXACT_BLOCK` rows at a time, so
/// memory stays bounded whatever the size. `progress` gets the database rows scanned.
fn exact_nearest(
    db: &Database,
    queries: &[usize],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Option<Neighbour>>, NeighbourError> {
    let dim = db.dim();
    let mut query_vectors = Vec::new();
    gather(db.source, queries, &mut query_vectors)?;
    let mut best: Vec<Option<Neighbour>> = vec![None; queries.len()];
    let mut index = FlatIndex::new_ip(faiss_dim(dim)?).map_err(faiss_error("Flat"))?;
    let mut block = Vec::new();
    let mut scanned = 0;
    for rows in db.rows.chunks(EXACT_BLOCK) {
        gather(db.source, rows, &mut block)?;
        index.reset().map_err(faiss_error("reset"))?;
        index.add(&block).map_err(faiss_error("add"))?;
        let k = rows.len().min(CANDIDATES);
        let result = index
            .search(&query_vectors, k)
            .map_err(faiss_error("search"))?;
        for (q, &sample) in queries.iter().enumerate() {
            for (label, &similarity) in result.labels[q * k..(q + 1) * k]
                .iter()
                .zip(&result.distances[q * k..(q + 1) * k])
            {
                let Some(other) = label.get().map(|l| rows[l as usize]) else {
                    continue;
                };
                if other != sample {
                    best[q] = Some(better(
                        best[q],
                        Neighbour {
                            index: other,
                            similarity,
                        },
                    ));
                }
            }
        }
        scanned += rows.len();
        progress(scanned, db.rows.len());
    }
    Ok(best)
}

/// `count` of `items` chosen at random (a fixed seed), in ascending order; all of them when
/// there are no more.
fn random_subset(items: &[usize], count: usize, seed: u64) -> Vec<usize> {
    if count >= items.len() {
        return items.to_vec();
    }
    let mut state = seed;
    let mut pool: Vec<usize> = items.to_vec();
    // A partial Fisher-Yates shuffle: the first `count` places are a uniform sample.
    for i in 0..count {
        let j = i + (splitmix64(&mut state) % (pool.len() - i) as u64) as usize;
        pool.swap(i, j);
    }
    pool.truncate(count);
    pool.sort_unstable();
    pool
}

/// SplitMix64: a small, fast generator with a fixed sequence per seed.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn best_other(
    query: usize,
    db: &Database,
    labels: &[faiss::Idx],
    similarities: &[f32],
) -> Option<Neighbour> {
    labels
        .iter()
        .zip(similarities)
        .filter_map(|(&label, &similarity)| {
            let index = db.sample(label)?;
            (index != query).then_some(Neighbour { index, similarity })
        })
        .fold(None, |best, next| Some(better(best, next)))
}

fn tie_reaches_end(similarities: &[f32], best: Option<Neighbour>) -> bool {
    match (best, similarities.last()) {
        (Some(best), Some(&last)) => (best.similarity - last).abs() <= TIE,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::embed::l2_normalise;

    fn rows(raw: &[[f32; 3]]) -> Vec<f32> {
        raw.iter()
            .flat_map(|r| {
                let mut r = *r;
                l2_normalise(&mut r);
                r
            })
            .collect()
    }

    fn no_progress() -> impl FnMut(Stage, usize, usize) {
        |_, _, _| {}
    }

    /// `n` unit vectors `dim` wide around `centres` random centres, with a fixed seed.
    fn clustered(n: usize, dim: usize, centres: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        let mut uniform = move || (splitmix64(&mut state) >> 11) as f32 / (1u64 << 53) as f32;
        let centre: Vec<Vec<f32>> = (0..centres)
            .map(|_| (0..dim).map(|_| uniform() - 0.5).collect())
            .collect();
        (0..n)
            .flat_map(|i| {
                let c = &centre[i % centres];
                let mut v: Vec<f32> = c.iter().map(|x| x + 0.3 * (uniform() - 0.5)).collect();
                l2_normalise(&mut v);
                v
            })
            .collect()
    }

    fn find(vectors: &[f32], dim: usize, hashes: &[u64], options: &IndexOptions) -> Neighbours {
        let source = SliceVectors::new(vectors, dim).unwrap();
        find_neighbours(&source, hashes, options, &mut no_progress()).unwrap()
    }

    fn join(lists: usize, nprobe: u32) -> IndexOptions {
        IndexOptions {
            index: format!("join{lists}"),
            nprobe: Some(nprobe),
            ef_search: None,
            recall_queries: 50,
        }
    }

    fn ivf(lists: usize, nprobe: u32) -> IndexOptions {
        IndexOptions {
            index: format!("IVF{lists},SQ8"),
            nprobe: Some(nprobe),
            ef_search: None,
            recall_queries: 50,
        }
    }

    fn hnsw(ef_search: u32) -> IndexOptions {
        IndexOptions {
            index: "HNSW32".into(),
            nprobe: None,
            ef_search: Some(ef_search),
            recall_queries: 50,
        }
    }

    #[test]
    fn never_its_own_neighbour_and_ties_go_to_the_lowest_index() {
        // Rows 1, 3, 4, 5 and 6 are identical: each must pick the lowest *other* copy.
        let v = rows(&[
            [1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.9, 0.1, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 1.0, 0.0],
        ]);
        let found = nearest_others(&v, 3).unwrap();
        let picked: Vec<usize> = found.iter().map(|n| n.unwrap().index).collect();
        assert_eq!(picked, [2, 3, 0, 1, 1, 1, 1]);
        assert!((found[1].unwrap().similarity - 1.0).abs() < 1e-5);
    }

    #[test]
    fn identical_vectors_with_different_texts_tie_to_the_lowest_index() {
        // The same vectors as above, but every text distinct: the exact search and its
        // widening settle the ties, as before copies were grouped.
        let v = rows(&[
            [1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.9, 0.1, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 1.0, 0.0],
        ]);
        let hashes: Vec<u64> = (0..7).collect();
        let found = find(&v, 3, &hashes, &IndexOptions::exact()).found;
        let picked: Vec<usize> = found.iter().map(|n| n.unwrap().index).collect();
        assert_eq!(picked, [2, 3, 0, 1, 1, 1, 1]);
        assert!((found[4].unwrap().similarity - 1.0).abs() < 1e-5);
    }

    #[test]
    fn exact_search_in_blocks_equals_one_faiss_call_over_all_rows() {
        // More rows than one query block: the blocks must give the bits of a single call.
        let (n, dim) = (BLOCK + 3_000, 8);
        let v = clustered(n, dim, 50, 21);
        let hashes: Vec<u64> = (0..n as u64).collect();
        let found = find(&v, dim, &hashes, &IndexOptions::exact()).found;
        let mut index: IndexImpl =
            faiss::index_factory(dim as u32, "Flat", MetricType::InnerProduct).unwrap();
        index.add(&v).unwrap();
        let result = index.search(&v, 4).unwrap();
        for (i, found) in found.iter().enumerate() {
            let (labels, sims) = (
                &result.labels[i * 4..i * 4 + 4],
                &result.distances[i * 4..i * 4 + 4],
            );
            let expected = labels
                .iter()
                .zip(sims)
                .filter_map(|(l, &similarity)| {
                    let index = l.get()? as usize;
                    (index != i).then_some(Neighbour { index, similarity })
                })
                .fold(None, |best, next| Some(better(best, next)));
            if !tie_reaches_end(sims, expected) {
                let (f, e) = (found.unwrap(), expected.unwrap());
                assert_eq!(
                    (f.index, f.similarity.to_bits()),
                    (e.index, e.similarity.to_bits()),
                    "row {i}"
                );
            }
        }
    }

    #[test]
    fn a_single_sample_has_no_neighbour() {
        assert_eq!(
            nearest_others(&rows(&[[1.0, 2.0, 3.0]]), 3).unwrap(),
            vec![None]
        );
        for options in [
            IndexOptions::exact(),
            ivf(4, 1),
            join(4, 1),
            IndexOptions::default(),
        ] {
            let found = find(&rows(&[[1.0, 2.0, 3.0]]), 3, &[7], &options).found;
            assert_eq!(found, vec![None]);
        }
    }

    #[test]
    fn copies_are_grouped_by_text_before_any_search() {
        // Samples 0, 2 and 5 share a text (hash 9), 3 and 4 another (hash 8); their vectors
        // differ slightly, as batched embeddings of equal texts can.
        let v = rows(&[
            [1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [1.0, 0.001, 0.0],
            [0.0, 0.0, 1.0],
            [0.0, 0.001, 1.0],
            [1.0, 0.0, 0.002],
            [0.1, 1.0, 0.0],
        ]);
        let hashes = [9, 1, 9, 8, 8, 9, 2];
        for options in [IndexOptions::exact(), ivf(2, 2), join(2, 2)] {
            let result = find(&v, 3, &hashes, &options);
            let picked: Vec<(usize, f32)> = result
                .found
                .iter()
                .map(|n| (n.unwrap().index, n.unwrap().similarity))
                .collect();
            assert_eq!(picked[0], (2, 1.0), "{options:?}");
            assert_eq!(picked[2], (0, 1.0));
            assert_eq!(picked[5], (0, 1.0));
            assert_eq!(picked[3], (4, 1.0));
            assert_eq!(picked[4], (3, 1.0));
            // Searched: 1 and 6 (a copy group's vector is its first sample's).
            assert_eq!(picked[1].0, 6);
            assert_eq!(picked[6].0, 1);
            assert_eq!(result.report.distinct, 4);
            assert_eq!(result.report.duplicates, 5);
            assert_eq!(result.report.searched, 2);
        }
    }

    #[test]
    fn ten_thousand_copies_cost_no_search() {
        let dim = 8;
        let mut v = clustered(10_010, dim, 5, 3);
        // Rows 10..10010 are copies of row 3.
        let copy: Vec<f32> = v[3 * dim..4 * dim].to_vec();
        for row in v.chunks_exact_mut(dim).skip(10) {
            row.copy_from_slice(&copy);
        }
        let hashes: Vec<u64> = (0..10_010u64)
            .map(|i| if i >= 10 { 3 } else { i })
            .collect();
        let result = find(&v, dim, &hashes, &IndexOptions::exact());
        assert_eq!(result.report.searched, 9);
        assert_eq!(result.found[3].unwrap().index, 10);
        assert_eq!(result.found[10_009].unwrap().index, 3);
        for (i, n) in result.found.iter().enumerate() {
            assert_ne!(n.unwrap().index, i);
        }
    }

    #[test]
    fn approximate_indexes_follow_the_rules_and_find_the_exact_neighbours_here() {
        let dim = 16;
        let n = 2_000;
        let mut v = clustered(n, dim, 20, 11);
        // Rows 100 and 200 equal row 50 bit for bit, with different texts: a tie at 1.0.
        let row: Vec<f32> = v[50 * dim..51 * dim].to_vec();
        v[100 * dim..101 * dim].copy_from_slice(&row);
        v[200 * dim..201 * dim].copy_from_slice(&row);
        let hashes: Vec<u64> = (0..n as u64).collect();
        let exact = find(&v, dim, &hashes, &IndexOptions::exact());
        // Exact search reports 1 by construction.
        assert_eq!(exact.report.recall_at_1, Some(1.0));
        // Every list probed: the candidates are the exact top 8 (up to 8-bit rounding).
        let runs = [
            (ivf(32, 32), Method::Faiss),
            (join(32, 32), Method::Join),
            (hnsw(64), Method::Faiss),
        ];
        for (options, method) in runs {
            let approximate = find(&v, dim, &hashes, &options);
            let plan = &approximate.report.plan;
            assert_eq!((plan.method, plan.exact), (method, false));
            assert_eq!(plan.ef_search, options.ef_search);
            for (i, n) in approximate.found.iter().enumerate() {
                assert_ne!(n.unwrap().index, i, "never itself");
            }
            assert_eq!(approximate.found[50].unwrap().index, 100);
            assert_eq!(approximate.found[100].unwrap().index, 50);
            assert_eq!(approximate.found[200].unwrap().index, 50);
            let all = recall_at_1(&approximate.found, &exact.found);
            assert!(all >= 0.99, "{options:?}: recall@1 {all}");
            let sampled = approximate.report.recall_at_1.unwrap();
            assert_eq!(approximate.report.recall_queries, 50);
            assert!(sampled >= 0.95, "{options:?}: sampled recall@1 {sampled}");
        }
        // A few lists probed: recall drops a little, and the sample sees it.
        let few = find(&v, dim, &hashes, &join(32, 2));
        let all = recall_at_1(&few.found, &exact.found);
        let sampled = few.report.recall_at_1.unwrap();
        assert!(all >= 0.8, "recall@1 {all}");
        assert!((sampled - all).abs() < 0.1, "sampled {sampled}, all {all}");
    }

    #[test]
    fn vectors_read_from_a_file_give_the_same_neighbours() {
        let dim = 8;
        let v = clustered(320, dim, 7, 5);
        let file = tempfile::NamedTempFile::new().unwrap();
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(file.path(), bytes).unwrap();
        let source = FileVectors::open(file.path(), dim).unwrap();
        assert_eq!(source.len(), 320);
        let hashes: Vec<u64> = (0..320).collect();
        for options in [IndexOptions::exact(), ivf(8, 2), join(8, 2)] {
            let from_file =
                find_neighbours(&source, &hashes, &options, &mut no_progress()).unwrap();
            let in_memory = find(&v, dim, &hashes, &options);
            assert_eq!(from_file.found, in_memory.found);
        }
        assert!(FileVectors::open(file.path(), 7).is_err());
    }

    #[test]
    fn recall_counts_exact_and_tied_neighbours() {
        let n = |index, similarity| Some(Neighbour { index, similarity });
        let exact = [n(1, 0.9), n(0, 0.9), n(0, 0.5), None, n(2, 0.8)];
        let found = [n(1, 0.9), n(2, 0.8), n(4, 0.5), n(0, 0.1), n(3, 0.8 - 1e-7)];
        // Row 0 exact, row 1 wrong, row 2 a tie with another index, row 3 not counted, row 4
        // within TIE.
        assert_eq!(recall_at_1(&found, &exact), 0.75);
        assert_eq!(recall_at_1(&[None], &[n(1, 0.3)]), 0.0);
    }

    #[test]
    fn auto_is_exact_up_to_the_threshold_then_the_self_join() {
        let auto = IndexOptions::default();
        assert_eq!(IndexPlan::resolve(&auto, 200).factory, "Flat");
        assert!(IndexPlan::resolve(&auto, AUTO_EXACT_MAX).exact);
        let above = IndexPlan::resolve(&auto, AUTO_EXACT_MAX + 1);
        assert_eq!(above.method, Method::Join);
        let big = IndexPlan::resolve(&auto, 1_000_000);
        assert_eq!(big.factory, "join1024");
        assert_eq!((big.lists, big.nprobe), (Some(1024), Some(AUTO_NPROBE)));
        assert_eq!(big.train, 1024 * TRAIN_PER_LIST);
        let with = |index: &str, nprobe| IndexOptions {
            index: index.into(),
            nprobe,
            ..IndexOptions::default()
        };
        let plan = IndexPlan::resolve(&with("IVF1024,PQ96", Some(16)), 100_000);
        assert_eq!(plan.method, Method::Faiss);
        assert_eq!((plan.nprobe, plan.train), (Some(16), 1024 * TRAIN_PER_LIST));
        assert_eq!(
            IndexPlan::resolve(&with("HNSW32", None), 100_000).nprobe,
            None
        );
        assert_eq!(
            IndexPlan::resolve(&with("join", None), 100_000).factory,
            "join256"
        );
        let small = IndexPlan::resolve(&with("join4", Some(16)), 100_000);
        assert_eq!(
            (small.lists, small.nprobe),
            (Some(4), Some(4)),
            "no more probes than lists"
        );
        for bad in [
            with("Flat", Some(4)),
            with("join0", None),
            with("joinx", None),
            with(" ", None),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(with("join64", Some(2)).validate().is_ok());
        assert_eq!(join_lists(10), 16);
        assert_eq!(join_lists(100_000), 256);
        assert_eq!(join_lists(1_000_000), 1024);
    }

    #[test]
    fn eight_bit_codes_round_within_half_a_step() {
        let v = clustered(500, 16, 5, 9);
        let codec = Sq8::fit(&v, 16);
        let mut codes = vec![0u8; v.len()];
        for (code, row) in codes.chunks_exact_mut(16).zip(v.chunks_exact(16)) {
            codec.encode(row, code);
        }
        let mut decoded = Vec::new();
        codec.decode_rows(&codes, 0..500, &mut decoded);
        for (i, (a, b)) in v.iter().zip(&decoded).enumerate() {
            assert!((a - b).abs() <= codec.step[i % 16] * 0.5 + 1e-6);
        }
    }

    #[test]
    fn a_bad_factory_string_names_itself() {
        let v = rows(&[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]);
        let source = SliceVectors::new(&v, 3).unwrap();
        let options = IndexOptions {
            index: "NoSuchIndex".into(),
            ..IndexOptions::default()
        };
        let e = find_neighbours(&source, &[1, 2], &options, &mut no_progress()).unwrap_err();
        assert!(e.to_string().contains("NoSuchIndex"), "{e}");
    }
}
