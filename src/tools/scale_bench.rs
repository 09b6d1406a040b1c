//! `miwv bench-scale`: the staged run at a size, on synthetic data, stage by stage.
//!
//! For N samples and N/10 it writes a synthetic Alpaca JSON Lines file and a `.npy` of
//! precomputed embeddings (the vectors of `bench-neighbours`; a row that copies an earlier
//! row's vector copies its text too), then runs the README's staged run as child processes
//! of this binary: `embed --shard 0/1`, `neighbours`, and `score --shard 0/K` with K chosen
//! so the shard holds about `shard_samples` samples at either size. Each stage's wall time
//! and peak resident memory (the child's own, from `wait4`) are measured; a score shard also
//! reports the seconds until its steps were ready to decode. The two score shards decode
//! about the same samples, so the ratio of their times shows what the dataset's size costs
//! a shard. `merge` needs every shard scored and is not run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::tools::neighbour_bench::{machine, Synthetic};
use crate::Error;

/// What to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleBenchConfig {
    /// Samples in the large dataset (the small one has a tenth).
    pub samples: usize,
    /// Width of the embeddings.
    pub dim: usize,
    /// Samples a score shard should hold, at either size.
    pub shard_samples: usize,
    /// The scoring model.
    pub model: PathBuf,
    /// Where the datasets and runs are written (kept, for inspection).
    pub dir: PathBuf,
    /// Seed of the synthetic data.
    pub seed: u64,
}

/// One stage of one size.
#[derive(Debug, Clone, Serialize)]
pub struct StageRun {
    /// Samples in the dataset.
    pub n: usize,
    /// `embed`, `neighbours` or `score`.
    pub stage: String,
    /// The command line run.
    pub command: String,
    /// Wall seconds.
    pub seconds: f64,
    /// The child's peak resident memory, MiB.
    pub peak_rss_mib: f64,
    /// Score shards: seconds until the shard's steps were ready to decode.
    pub ready_s: Option<f64>,
    /// Score shards: tokens decoded.
    pub tokens_decoded: Option<usize>,
}

/// The whole benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleBenchReport {
    /// The CPU and its count.
    pub machine: String,
    /// Width of the embeddings.
    pub dim: usize,
    /// Seconds to write each size's data (not part of any stage).
    pub generation_s: Vec<(usize, f64)>,
    /// Every stage, smaller size first.
    pub runs: Vec<StageRun>,
}

/// Runs the benchmark.
///
/// # Errors
/// [`Error::Io`] when the data cannot be written or a stage fails (naming its log).
pub fn run(config: &ScaleBenchConfig) -> Result<ScaleBenchReport, Error> {
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        path: "miwv".into(),
        source,
    })?;
    let mut report = ScaleBenchReport {
        machine: machine(),
        dim: config.dim,
        generation_s: Vec::new(),
        runs: Vec::new(),
    };
    let large_shards = config.samples.div_ceil(config.shard_samples.max(1)).max(1);
    for (n, shards) in [
        (config.samples / 10, large_shards.div_ceil(10)),
        (config.samples, large_shards),
    ] {
        let dir = config.dir.join(format!("n{n}"));
        let io = |source| Error::Io {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let (data, embeddings) = (dir.join("data.jsonl"), dir.join("embeddings.npy"));
        let started = Instant::now();
        write_dataset(&data, &embeddings, n, config.dim, config.seed).map_err(io)?;
        report
            .generation_s
            .push((n, started.elapsed().as_secs_f64()));
        let run_dir = dir.join("run");
        let _ = std::fs::remove_dir_all(&run_dir);
        let stages = stage_commands(&data, &embeddings, &config.model, &run_dir, shards);
        for (stage, args) in stages {
            let log = dir.join(format!("{stage}.log"));
            let (seconds, peak_rss_mib) = run_stage(&exe, &args, &log)?;
            let marker = (stage == "score")
                .then(|| score_marker(&run_dir, shards))
                .flatten();
            let run = StageRun {
                n,
                stage: stage.into(),
                command: format!("miwv {}", args.join(" ")),
                seconds,
                peak_rss_mib,
                ready_s: marker.as_ref().and_then(|m| m["ready_s"].as_f64()),
                tokens_decoded: marker
                    .as_ref()
                    .and_then(|m| m["stats"]["tokens_decoded"].as_u64())
                    .map(|t| t as usize),
            };
            tracing::info!(
                n,
                stage,
                seconds = format!("{seconds:.1}"),
                peak_rss_mib,
                "stage done"
            );
            report.runs.push(run);
        }
    }
    Ok(report)
}

/// The staged run's commands over `run`, as the README gives them, the score shard being
/// shard 0 of `shards`.
fn stage_commands(
    data: &Path,
    embeddings: &Path,
    model: &Path,
    run: &Path,
    shards: usize,
) -> [(&'static str, Vec<String>); 3] {
    let path = |p: &Path| p.display().to_string();
    let args = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    let (data, embeddings, model, run) = (path(data), path(embeddings), path(model), path(run));
    [
        (
            "embed",
            args(&[
                "embed",
                &data,
                "--embeddings",
                &embeddings,
                "--model",
                &model,
                "--out",
                &run,
                "--shard",
                "0/1",
            ]),
        ),
        ("neighbours", args(&["neighbours", &run])),
        (
            "score",
            args(&["score", &run, "--shard", &format!("0/{shards}")]),
        ),
    ]
}

/// Runs `exe args`, its log to `log`; returns its wall seconds and peak RSS (MiB).
fn run_stage(exe: &Path, args: &[String], log: &Path) -> Result<(f64, f64), Error> {
    let io = |source| Error::Io {
        path: log.to_path_buf(),
        source,
    };
    let log_file = std::fs::File::create(log).map_err(io)?;
    let started = Instant::now();
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().map_err(io)?)
        .stderr(log_file)
        .spawn()
        .map_err(io)?;
    let (status, max_rss_kib) = wait_with_usage(child.id()).map_err(io)?;
    let seconds = started.elapsed().as_secs_f64();
    if status != 0 {
        return Err(io(std::io::Error::other(format!(
            "`miwv {}` failed (wait status {status}); its log is this file",
            args.join(" ")
        ))));
    }
    // Linux reports ru_maxrss in KiB, macOS in bytes.
    let kib = if cfg!(target_os = "macos") {
        max_rss_kib / 1024
    } else {
        max_rss_kib
    };
    Ok((seconds, kib as f64 / 1024.0))
}

/// Waits for child `pid` and returns its wait status and its own peak RSS in KiB.
fn wait_with_usage(pid: u32) -> std::io::Result<(i32, i64)> {
    let mut status = 0;
    // SAFETY: `rusage` is plain data that wait4 fills; the pid is our own child, waited once.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    if waited < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((status, usage.ru_maxrss))
}

fn score_marker(run: &Path, shards: usize) -> Option<serde_json::Value> {
    let stem = crate::scoring::shard::Shard::new(0, shards)
        .ok()?
        .file_stem();
    let path = run
        .join("checkpoint")
        .join("score")
        .join(format!("{stem}.json"));
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Words the synthetic texts are made of.
const WORDS: [&str; 48] = [
    "explain",
    "the",
    "data",
    "model",
    "write",
    "short",
    "list",
    "of",
    "three",
    "reasons",
    "why",
    "a",
    "river",
    "city",
    "market",
    "science",
    "history",
    "learn",
    "simple",
    "code",
    "function",
    "sort",
    "numbers",
    "poem",
    "about",
    "winter",
    "light",
    "energy",
    "cell",
    "protein",
    "planet",
    "orbit",
    "story",
    "child",
    "teacher",
    "garden",
    "recipe",
    "bread",
    "summer",
    "travel",
    "map",
    "language",
    "translate",
    "sentence",
    "into",
    "French",
    "and",
    "compare",
];

/// Text of `words` words drawn from `state`.
fn text(state: &mut u64, words: usize) -> String {
    let mut out = String::new();
    for w in 0..words {
        if w > 0 {
            out.push(' ');
        }
        let r = crate::retrieval::neighbours::splitmix64(state);
        out.push_str(WORDS[(r % WORDS.len() as u64) as usize]);
    }
    out
}

/// Writes `n` Alpaca records to `data` and their embeddings (`n` x `dim` float32) to
/// `embeddings` as a NumPy `.npy` (format 1.0: magic, header length, a Python dict literal
/// padded to a multiple of 64 bytes, then the rows).
fn write_dataset(
    data: &Path,
    embeddings: &Path,
    n: usize,
    dim: usize,
    seed: u64,
) -> std::io::Result<()> {
    const ROWS: usize = 8192;
    let synthetic = Synthetic::new(dim, seed);
    let mut records = std::io::BufWriter::new(std::fs::File::create(data)?);
    let mut vectors = std::io::BufWriter::new(std::fs::File::create(embeddings)?);
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({n}, {dim}), }}");
    let header_len = (10 + dict.len() + 1).div_ceil(64) * 64 - 10;
    vectors.write_all(b"\x93NUMPY\x01\x00")?;
    vectors.write_all(&(header_len as u16).to_le_bytes())?;
    vectors.write_all(format!("{dict:<width$}\n", width = header_len - 1).as_bytes())?;
    let mut block = vec![0.0f32; ROWS * dim];
    for start in (0..n).step_by(ROWS) {
        let rows = ROWS.min(n - start);
        let block = &mut block[..rows * dim];
        let lines: Vec<String> = block
            .par_chunks_mut(dim)
            .enumerate()
            .map(|(r, row)| {
                let mut state = synthetic.row(start + r, row);
                let words = 6 + (state % 19) as usize;
                let instruction = text(&mut state, words);
                let words = 10 + (state % 41) as usize;
                let output = text(&mut state, words);
                serde_json::json!({
                    "id": format!("s{}", start + r),
                    "instruction": instruction,
                    "input": "",
                    "output": output,
                })
                .to_string()
            })
            .collect();
        for line in lines {
            records.write_all(line.as_bytes())?;
            records.write_all(b"\n")?;
        }
        let bytes: Vec<u8> = block.iter().flat_map(|v| v.to_le_bytes()).collect();
        vectors.write_all(&bytes)?;
    }
    records.flush()?;
    vectors.flush()?;
    Ok(())
}

impl ScaleBenchReport {
    /// The report as Markdown: per stage and size, and the score shard's ratio.
    pub fn render(&self) -> String {
        let mut out = format!("machine: {}\ndim: {}\n", self.machine, self.dim);
        for (n, s) in &self.generation_s {
            out += &format!("wrote {n} samples and embeddings in {s:.1} s (not timed below)\n");
        }
        out += "\n| N | stage | wall s | peak RSS MiB | ready to decode s | tokens decoded |\n";
        out += "|---|---|---|---|---|---|\n";
        let opt = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.1}"));
        for r in &self.runs {
            out += &format!(
                "| {} | {} | {:.1} | {:.0} | {} | {} |\n",
                r.n,
                r.stage,
                r.seconds,
                r.peak_rss_mib,
                opt(r.ready_s),
                r.tokens_decoded.map_or("–".to_string(), |t| t.to_string()),
            );
        }
        let shards: Vec<&StageRun> = self.runs.iter().filter(|r| r.stage == "score").collect();
        if let [small, large] = shards[..] {
            let per_token = |r: &StageRun| r.seconds / r.tokens_decoded.unwrap_or(1).max(1) as f64;
            out += &format!(
                "\nscore shard at N={} against N={}: wall {:.2}x, wall per token decoded {:.2}x\n",
                large.n,
                small.n,
                large.seconds / small.seconds,
                per_token(large) / per_token(small),
            );
        }
        for r in &self.runs {
            out += &format!("\n    {}", r.command);
        }
        out + "\n"
    }
}
