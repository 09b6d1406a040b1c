//! `miwv bench-neighbours`: the neighbour phase at scale, on synthetic clustered vectors.
//!
//! For each size the vectors are generated with a fixed seed and written to a file block by
//! block (generation never holds them all), then read back through [`FileVectors`] exactly as
//! a run reads its `embeddings.f32`. Each size runs exact search where it is feasible (up to
//! `exact_max`), and every requested index; each run reports its wall time per stage, its
//! peak resident memory (VmHWM, reset before each run) and its recall@1: measured by the
//! index itself on a sample of its queries, and, where the exact run exists, over all queries.
//!
//! The vectors imitate sentence embeddings: a common direction shared by all (embeddings are
//! anisotropic), 32 broad subjects, 1,024 topics of skewed popularity spread over them, a
//! 12-dimensional spread inside each topic, small isotropic noise, 5% near-paraphrases of an
//! earlier sample and 1% exact copies of an earlier sample's text. Before normalisation the
//! squared lengths are about 0.49 (common), 1 (subject), 0.64 (topic), 0.5 (spread inside
//! the topic) and 0.04 (noise): two random samples of one topic have cosine ≈ 0.8, of one
//! subject ≈ 0.55, otherwise ≈ 0.2.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::retrieval::neighbours::{
    find_neighbours, recall_at_1, FileVectors, IndexOptions, IndexPlan, IndexReport, Stage,
};
use crate::state::config::ConfigError;
use crate::state::progress::{peak_rss_mib, reset_peak_rss};
use crate::state::schema::Neighbour;
use crate::Error;

/// What to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct NeighbourBenchConfig {
    /// Numbers of vectors, in increasing order.
    pub sizes: Vec<usize>,
    /// Width of the vectors.
    pub dim: usize,
    /// Indexes to run at every size (`auto` or `index_factory` strings, with their `nprobe`).
    pub indexes: Vec<IndexOptions>,
    /// Exact search runs for sizes up to this (it grows with N²).
    pub exact_max: usize,
    /// Seed of the synthetic vectors.
    pub seed: u64,
    /// Directory for the temporary vector files.
    pub dir: PathBuf,
}

/// One neighbour search.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRun {
    /// Vectors.
    pub n: usize,
    /// The index asked for (`auto` or a factory string).
    pub requested: String,
    /// Wall seconds of the whole neighbour phase (grouping, training, adding, searching,
    /// recall measurement).
    pub seconds: f64,
    /// Peak resident memory of the process during the run, MiB (Linux).
    pub peak_rss_mib: Option<f64>,
    /// Recall@1 over all queries against the exact run of the same size, where there is one.
    pub recall_all: Option<f64>,
    /// Mean similarity of the neighbours found.
    pub mean_similarity: f64,
    /// What the index reported: its plan, stage times and sampled recall.
    pub report: IndexReport,
}

/// The whole benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct NeighbourBenchReport {
    /// `lscpu`'s model name and the number of CPUs.
    pub machine: String,
    /// Width of the vectors.
    pub dim: usize,
    /// Seconds to generate and write each size's vectors (not part of any run).
    pub generation_s: Vec<(usize, f64)>,
    /// Every run, by size, exact first.
    pub runs: Vec<BenchRun>,
}

/// Runs the benchmark, logging each run as it ends.
///
/// # Errors
/// [`Error::Config`] for a bad configuration, [`Error::Io`] when a vector file cannot be
/// written, [`Error::Neighbours`] when FAISS fails.
pub fn run(config: &NeighbourBenchConfig) -> Result<NeighbourBenchReport, Error> {
    check(config)?;
    let mut report = NeighbourBenchReport {
        machine: machine(),
        dim: config.dim,
        generation_s: Vec::new(),
        runs: Vec::new(),
    };
    for &n in &config.sizes {
        let path = config.dir.join(format!(
            "miwv-bench-neighbours-{}-{n}x{}.f32",
            std::process::id(),
            config.dim
        ));
        let started = Instant::now();
        let data = Synthetic::new(config.dim, config.seed);
        let hashes = data.write(&path, n).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        report
            .generation_s
            .push((n, started.elapsed().as_secs_f64()));
        tracing::info!(
            n,
            seconds = started.elapsed().as_secs_f64(),
            "vectors written"
        );
        let result = measure_size(config, n, &path, &hashes, &mut report.runs);
        let _ = std::fs::remove_file(&path);
        result?;
    }
    Ok(report)
}

fn check(config: &NeighbourBenchConfig) -> Result<(), ConfigError> {
    crate::state::config::check_bench(&config.sizes, 1)?;
    crate::state::config::check_dim(config.dim)?;
    for options in &config.indexes {
        options.validate()?;
    }
    Ok(())
}

fn measure_size(
    config: &NeighbourBenchConfig,
    n: usize,
    path: &std::path::Path,
    hashes: &[u64],
    runs: &mut Vec<BenchRun>,
) -> Result<(), Error> {
    let source = FileVectors::open(path, config.dim)?;
    let mut exact: Option<Vec<Option<Neighbour>>> = None;
    if n <= config.exact_max {
        let (run, found) = measure(&source, hashes, &IndexOptions::exact(), None)?;
        runs.push(run);
        exact = Some(found);
    }
    for options in &config.indexes {
        let plan = IndexPlan::resolve(options, n);
        if plan.exact && exact.is_some() {
            // `auto` chose exact search, which just ran: report it under this name, once.
            if runs
                .iter()
                .any(|r| r.n == n && r.requested == options.index)
            {
                continue;
            }
            let mut run = runs
                .iter()
                .find(|r| r.n == n && r.report.plan.exact)
                .expect("the exact run")
                .clone();
            run.requested = options.index.clone();
            log_run(&run);
            runs.push(run);
            continue;
        }
        if plan.exact && n > config.exact_max {
            tracing::warn!(n, index = %options.index, "exact search skipped above --exact-max");
            continue;
        }
        let (run, _) = measure(&source, hashes, options, exact.as_deref())?;
        runs.push(run);
    }
    Ok(())
}

fn measure(
    source: &FileVectors,
    hashes: &[u64],
    options: &IndexOptions,
    exact: Option<&[Option<Neighbour>]>,
) -> Result<(BenchRun, Vec<Option<Neighbour>>), Error> {
    reset_peak_rss();
    let started = Instant::now();
    let mut last_stage = None;
    let found = find_neighbours(source, hashes, options, &mut |stage, done, total| {
        if last_stage != Some(stage) || done == total {
            tracing::debug!(?stage, done, total, "neighbours");
            last_stage = Some(stage);
        }
        if stage == Stage::Train && done == 0 {
            tracing::debug!(vectors = total, "training");
        }
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let peak_rss_mib = peak_rss_mib();
    let similarities: Vec<f64> = found
        .found
        .iter()
        .flatten()
        .map(|n| f64::from(n.similarity))
        .collect();
    let run = BenchRun {
        n: hashes.len(),
        requested: options.index.clone(),
        seconds,
        peak_rss_mib,
        recall_all: exact.map(|exact| recall_at_1(&found.found, exact)),
        mean_similarity: similarities.iter().sum::<f64>() / similarities.len().max(1) as f64,
        report: found.report,
    };
    log_run(&run);
    Ok((run, found.found))
}

fn log_run(run: &BenchRun) {
    tracing::info!(
        n = run.n,
        index = %run.report.plan.factory,
        nprobe = ?run.report.plan.nprobe,
        seconds = format!("{:.1}", run.seconds),
        peak_rss_mib = ?run.peak_rss_mib.map(|m| m.round()),
        recall_sampled = ?run.report.recall_at_1,
        recall_all = ?run.recall_all,
        "run done"
    );
}

impl NeighbourBenchReport {
    /// The report as a Markdown table.
    pub fn render(&self) -> String {
        let mut out = format!("machine: {}\ndim: {}\n", self.machine, self.dim);
        for (n, s) in &self.generation_s {
            out += &format!("generated {n} vectors in {s:.1} s (not timed below)\n");
        }
        out += "\n| N | asked | index | nprobe / efSearch | train s | add s | search s | recall s | total s | peak RSS MiB | recall@1 sampled | recall@1 all | mean sim | settled by copies |\n";
        out += "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
        for run in &self.runs {
            let r = &run.report;
            let opt = |v: Option<f64>, digits: usize| {
                v.map_or("–".to_string(), |v| format!("{v:.digits$}"))
            };
            out += &format!(
                "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {:.3} | {} |\n",
                run.n,
                run.requested,
                r.plan.factory,
                match (r.plan.nprobe, r.plan.ef_search) {
                    (Some(nprobe), _) => nprobe.to_string(),
                    (None, Some(ef_search)) => format!("ef {ef_search}"),
                    (None, None) => "–".to_string(),
                },
                r.train_s,
                r.add_s,
                r.search_s,
                r.recall_s,
                run.seconds,
                opt(run.peak_rss_mib, 0),
                if r.plan.exact {
                    "exact".to_string()
                } else {
                    format!("{} ({} q)", opt(r.recall_at_1, 4), r.recall_queries)
                },
                opt(run.recall_all, 4),
                run.mean_similarity,
                r.duplicates,
            );
        }
        out
    }
}

/// Clustered unit vectors, each row a function of the seed and its index alone.
pub(crate) struct Synthetic {
    dim: usize,
    seed: u64,
    /// The direction all rows share.
    common: Vec<f32>,
    /// `TOPICS` centres: their subject's unit direction plus `TOPIC` times their own.
    centres: Vec<f32>,
    /// `TOPICS × RANK` random directions of spread inside each topic.
    bases: Vec<f32>,
}

const SUBJECTS: usize = 32;
const TOPICS: usize = 1024;
const RANK: usize = 12;
/// Weights: the common direction, a topic's own direction, a topic's spread (per latent
/// coordinate: 0.7 / √RANK, a spread of length 0.7), isotropic noise, and a near-paraphrase's
/// shift of its original's latent coordinates (relative).
const COMMON: f32 = 0.7;
const TOPIC: f32 = 0.8;
const SPREAD: f32 = 0.2;
const NOISE: f32 = 0.2;
const PARAPHRASE: f32 = 0.1;
/// Shares of rows that copy an earlier row's text, or paraphrase it.
const COPIES: f64 = 0.01;
const PARAPHRASES: f64 = 0.05;

impl Synthetic {
    pub(crate) fn new(dim: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed, u64::MAX);
        let unit = |rng: &mut Rng| {
            let mut v: Vec<f32> = (0..dim).map(|_| rng.normal()).collect();
            crate::engine::embed::l2_normalise(&mut v);
            v
        };
        let common = unit(&mut rng);
        let subjects: Vec<Vec<f32>> = (0..SUBJECTS).map(|_| unit(&mut rng)).collect();
        let centres = (0..TOPICS)
            .flat_map(|t| {
                let own = unit(&mut rng);
                let subject = &subjects[t % SUBJECTS];
                own.iter()
                    .zip(subject)
                    .map(|(o, s)| s + TOPIC * o)
                    .collect::<Vec<f32>>()
            })
            .collect();
        let bases = (0..TOPICS * RANK).flat_map(|_| unit(&mut rng)).collect();
        Synthetic {
            dim,
            seed,
            common,
            centres,
            bases,
        }
    }

    /// The row whose text row `i` copies (itself when it is no copy).
    fn original(&self, mut i: usize) -> usize {
        loop {
            let mut rng = Rng::new(self.seed, i as u64);
            if i == 0 || rng.uniform() >= COPIES {
                return i;
            }
            i = (rng.next() % i as u64) as usize;
        }
    }

    /// Row `i`'s topic and latent coordinates, before any paraphrasing.
    fn latent(&self, i: usize) -> (usize, [f32; RANK]) {
        let mut rng = Rng::new(self.seed ^ 0x1a7e_0000, i as u64);
        let u = rng.uniform();
        let topic = ((TOPICS as f64) * u * u) as usize;
        let mut z = [0.0; RANK];
        z.iter_mut().for_each(|z| *z = SPREAD * rng.normal());
        (topic.min(TOPICS - 1), z)
    }

    /// Row `i` (normalised) into `out`; returns the hash of its text.
    pub(crate) fn row(&self, i: usize, out: &mut [f32]) -> u64 {
        let i = self.original(i);
        let mut rng = Rng::new(self.seed ^ 0x0b5e_0000, i as u64);
        let (topic, z) = if i > 0 && rng.uniform() < PARAPHRASES {
            let of = (rng.next() % i as u64) as usize;
            let (topic, mut z) = self.latent(of);
            z.iter_mut()
                .for_each(|z| *z += PARAPHRASE * SPREAD * rng.normal());
            (topic, z)
        } else {
            self.latent(i)
        };
        let d = self.dim;
        let centre = &self.centres[topic * d..(topic + 1) * d];
        let noise = NOISE / (d as f32).sqrt();
        for (k, v) in out.iter_mut().enumerate() {
            *v = COMMON * self.common[k] + centre[k] + noise * rng.normal();
        }
        for (r, &z) in z.iter().enumerate() {
            let basis = &self.bases[(topic * RANK + r) * d..(topic * RANK + r + 1) * d];
            out.iter_mut().zip(basis).for_each(|(v, b)| *v += z * b);
        }
        crate::engine::embed::l2_normalise(out);
        let mut state = self.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        crate::retrieval::neighbours::splitmix64(&mut state)
    }

    /// Writes `n` rows to `path` as little-endian f32, block by block; returns their hashes.
    fn write(&self, path: &std::path::Path, n: usize) -> std::io::Result<Vec<u64>> {
        const ROWS: usize = 8192;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
        let mut hashes = Vec::with_capacity(n);
        let mut block = vec![0.0f32; ROWS * self.dim];
        let mut bytes = Vec::with_capacity(ROWS * self.dim * 4);
        for start in (0..n).step_by(ROWS) {
            let rows = ROWS.min(n - start);
            let block = &mut block[..rows * self.dim];
            let block_hashes: Vec<u64> = block
                .par_chunks_mut(self.dim)
                .enumerate()
                .map(|(r, row)| self.row(start + r, row))
                .collect();
            hashes.extend(block_hashes);
            bytes.clear();
            bytes.extend(block.iter().flat_map(|v| v.to_le_bytes()));
            out.write_all(&bytes)?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(hashes)
    }
}

/// A per-row random stream: SplitMix64 seeded by the seed and the row.
struct Rng {
    state: u64,
    spare: Option<f32>,
}

impl Rng {
    fn new(seed: u64, row: u64) -> Self {
        let mut state = seed ^ row.wrapping_mul(0xd1b5_4a32_d192_ed03);
        crate::retrieval::neighbours::splitmix64(&mut state);
        Rng { state, spare: None }
    }

    fn next(&mut self) -> u64 {
        crate::retrieval::neighbours::splitmix64(&mut self.state)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f32 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        self.spare = Some((r * s) as f32);
        (r * c) as f32
    }
}

pub(crate) fn machine() -> String {
    let model = std::process::Command::new("lscpu")
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .find(|l| l.starts_with("Model name:"))
                .map(|l| l["Model name:".len()..].trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    format!("{model}, {cpus} CPUs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_rows_are_unit_deterministic_and_copies_are_identical() {
        let data = Synthetic::new(32, 7);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.f32");
        let hashes = data.write(&path, 3000).unwrap();
        let again = Synthetic::new(32, 7)
            .write(&dir.path().join("w.f32"), 3000)
            .unwrap();
        assert_eq!(hashes, again);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(dir.path().join("w.f32")).unwrap()
        );
        let source = FileVectors::open(&path, 32).unwrap();
        let mut a = vec![0.0; 32];
        let mut b = vec![0.0; 32];
        let mut copies = 0;
        let mut first = std::collections::HashMap::new();
        for (i, &h) in hashes.iter().enumerate() {
            crate::retrieval::neighbours::VectorSource::read_rows(&source, i, &mut a).unwrap();
            let norm: f32 = a.iter().map(|x| x * x).sum();
            assert!((norm - 1.0).abs() < 1e-4);
            if let Some(&j) = first.get(&h) {
                crate::retrieval::neighbours::VectorSource::read_rows(&source, j, &mut b).unwrap();
                assert_eq!(a, b, "a copied text has the identical vector");
                copies += 1;
            } else {
                first.insert(h, i);
            }
        }
        assert!((10..60).contains(&copies), "{copies} copies in 3000");
    }
}
