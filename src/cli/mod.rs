//! The `miwv` command line, turned into checked settings in one fallible step.
//!
//! It lives in the library rather than the binary so that every flag, alias, default and bad
//! value can be tested without starting a process or loading a model. [`parse`] rewrites
//! llama.cpp's `-ngl`, lets clap parse, then checks every value and every relation between
//! values ([`crate::state::config`] holds the checks) and builds the settings each subcommand runs
//! with. Every failure is a [`clap::Error`]: it prints like clap's own, names the flag at
//! fault and exits with code 2.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::data::dataset::{Fields, ReadOptions};
use crate::scoring::prompt::TemplateChoice;
use crate::scoring::select::Budget;
use crate::scoring::shard::Shard;
use crate::scoring::sizes::{self, ContextSizes, CtxSize, SizeRequest};
use crate::state::config::{self, ConfigError, EmbedModel, IndexOptions, Problem, SelectConfig};
use crate::tools::bench::BenchConfig;

mod run;
pub use run::{log_filter, main};

/// Pick the instruction-tuning samples a model learns most from (MIWV).
#[derive(Parser)]
#[command(
    version,
    about,
    long_about = None,
    after_help = "Exit codes: 0 done, 1 error (the message names the file, line and field), \
                  2 bad command line, 130 stopped by Ctrl-C (rerun the same command to resume).\n\
                  Short flags follow llama.cpp: -m model, -c context, -b batch, -t threads, \
                  -ngl GPU layers."
)]
pub struct Cli {
    /// Log more (-v: debug, -vv: trace, llama.cpp's log included). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score every sample and write the top share by MIWV.
    #[command(after_help = "Examples:\n  \
            miwv select examples/alpaca-mini.json -o out --ratio 0.1\n  \
            miwv select train-00000-of-00001.parquet -m qwen2.5-7b-instruct-q4_k_m.gguf -ngl 999 -o out\n  \
            miwv select sharegpt.jsonl.gz --first-turn --also ifd -n 1000 -o out\n  \
            miwv select dolly.jsonl --input-field context --output-field response --template alpaca\n\n\
            Rerun the same command to resume a stopped run; `miwv report out` draws the result.")]
    Select(SelectArgs),
    /// Stage 1 of a staged run: embed (a shard of) the samples into the run directory.
    #[command(
        after_help = "`select` in four stages over one run directory, for clusters:\n  \
            miwv embed DATA --out RUN [select's flags] --shard K/N   (N processes, any order)\n  \
            miwv neighbours RUN                                      (once, after every embed shard)\n  \
            miwv score RUN --shard K/N                               (M processes, any order)\n  \
            miwv merge RUN                                           (once: scores.jsonl, selection, run.json)\n\n\
            K counts from 0. With --shards N alone, K comes from SLURM_ARRAY_TASK_ID, JOB_COMPLETION_INDEX or RANK.\n\
            A shard that stopped resumes when run again; a finished one is skipped."
    )]
    Embed(EmbedArgs),
    /// Stage 2: find every sample's neighbour from all embedding shards.
    Neighbours(NeighboursArgs),
    /// What scoring a run will cost (tokens, memory, time here), once its neighbours are found.
    #[command(
        after_help = "Example:\n  miwv embed data.jsonl --out run --shard 0/1 && miwv neighbours run && miwv plan run\n\n\
            Times a short decode of the plan's first segments with the run's model and settings; \
            nothing is saved."
    )]
    Plan(PlanArgs),
    /// Stage 3: score (a shard of) the samples.
    Score(ScoreArgs),
    /// Stage 4: gather every score shard into scores.jsonl, the selection and run.json.
    Merge(MergeArgs),
    /// Measure scoring speed against llama.cpp's own prompt-processing ceiling.
    #[command(
        after_help = "Example:\n  python3 benches/fetch-data.py\n  miwv bench ~/.cache/miwv/data/sharegpt-first-turn.jsonl --sizes 50,100,200 -ngl 999"
    )]
    Bench(BenchArgs),
    /// Measure the neighbour search (exact and approximate indexes) on synthetic vectors.
    #[command(after_help = "Examples:\n  \
            miwv bench-neighbours --sizes 10000,100000\n  \
            miwv bench-neighbours --sizes 1000000 --index auto --index IVF4096,PQ96 --nprobe 4,8,16 --json nb.json\n\n\
            The vectors are written to a temporary file (N x dim x 4 bytes) and read back block by block.")]
    BenchNeighbours(BenchNeighboursArgs),
    /// Measure the staged run's stages (time, peak memory, a score shard's start) at a size,
    /// on synthetic data with precomputed embeddings.
    #[command(after_help = "Example:\n  \
            miwv bench-scale --samples 1000000 --dir /var/tmp/scale --json scale.json\n\n\
            Writes N and N/10 samples with their embeddings under --dir (about 1.3 GB at 1M x 256) \
            and keeps them with each stage's log.")]
    BenchScale(BenchScaleArgs),
    /// Compare two runs' scores: MIWV rank correlations, loss differences, selection overlap.
    #[command(
        after_help = "Example (what quantisation does to the selection):\n  miwv select data.json -m model.Q4_1.gguf -o q4\n  miwv select data.json -m model.F32.gguf -o f32\n  miwv compare q4 f32 --json drift.json"
    )]
    Compare(CompareArgs),
    /// Show how a sample renders and which tokens are scored; with --tokenizer, check that the
    /// GGUF vocabulary tokenizes the data like the model's tokenizer.json.
    #[command(
        after_help = "Exits with 1 when a sample cannot be rendered or any segment differs.\nExamples:\n  miwv doctor examples/alpaca-mini.json --sample 3\n  miwv doctor examples/alpaca-mini.json --tokenizer tokenizer.json -m model.gguf"
    )]
    Doctor(DoctorArgs),
    /// Write a GGUF's weights in another format, as llama.cpp's llama-quantize does.
    #[command(
        after_help = "Examples:\n  miwv quantize model.F16.gguf model.Q8_0.gguf --type Q8_0\n  miwv quantize model.Q4_1.gguf model.F16.gguf --type F16   (from quantised weights: warned)\n\n\
            Which format to score with: docs/PERFORMANCE.md, \"Weight formats\"."
    )]
    Quantize(QuantizeArgs),
    /// List the devices llama.cpp sees in this build, and what -ngl does with a model.
    #[command(
        after_help = "Examples:\n  miwv devices\n  miwv devices -m model.gguf -ngl 20\n\n\
            A GPU backend is built with scripts/build-gpu.sh (vulkan, cuda or metal)."
    )]
    Devices(DevicesArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  miwv completions bash > ~/.local/share/bash-completion/completions/miwv\n  miwv completions zsh > ~/.zfunc/_miwv"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Draw a finished run: MIWV histogram, loss scatter and an HTML page with the top samples.
    #[command(
        after_help = "Writes OUT_DIR/report/: miwv-histogram.png, losses-scatter.png and report.html (one \
                      self-contained file).\nExample:\n  miwv select examples/alpaca-mini.json -o out\n  miwv report out"
    )]
    Report(ReportArgs),
}

/// Which shard this process is: `--shard K/N`, or `--shards N` with K from the environment.
#[derive(Args)]
struct ShardArgs {
    /// This process's shard: K/N with K from 0 to N-1 (e.g. 3/8).
    #[arg(long, value_parser = parse_shard, conflicts_with = "shards")]
    shard: Option<Shard>,
    /// The shard count N, the index coming from SLURM_ARRAY_TASK_ID, JOB_COMPLETION_INDEX or
    /// RANK.
    #[arg(long)]
    shards: Option<usize>,
}

fn parse_shard(s: &str) -> Result<Shard, String> {
    s.parse()
}

impl ShardArgs {
    /// The shard, the whole stage when neither flag is given.
    fn check(
        self,
        subcommand: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Shard, clap::Error> {
        let fail =
            |e: String| invalid(subcommand)(ConfigError::new("--shards", Problem::Refused(e)));
        match (self.shard, self.shards) {
            (Some(shard), _) => Ok(shard),
            (None, Some(count)) => Shard::from_environment(count, lookup).map_err(fail),
            (None, None) => Ok(Shard::WHOLE),
        }
    }
}

#[derive(Args)]
struct EmbedArgs {
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    shard: ShardArgs,
}

#[derive(Args)]
struct NeighboursArgs {
    /// The run directory (`--out` of `miwv embed`).
    run: PathBuf,
}

#[derive(Args)]
struct PlanArgs {
    /// The run directory (after `miwv neighbours`).
    run: PathBuf,
    /// Tokens decoded to time this machine (0: no calibration, no time estimate).
    #[arg(long, default_value_t = 16_384)]
    calibrate_tokens: usize,
    /// Also write the estimate as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct DevicesArgs {
    /// GGUF model whose layers -ngl would offload.
    #[arg(short = 'm', long, default_value = crate::DEFAULT_MODEL)]
    model: PathBuf,
    /// Layers to offload, as `select -ngl` takes them.
    #[arg(long = "n-gpu-layers", visible_alias = "ngl", default_value_t = 999)]
    n_gpu_layers: u32,
    /// Also write the devices as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct ScoreArgs {
    /// The run directory (`--out` of `miwv embed`).
    run: PathBuf,
    #[command(flatten)]
    shard: ShardArgs,
    /// CPU threads [default: the run's].
    #[arg(short = 't', long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct MergeArgs {
    /// The run directory (`--out` of `miwv embed`).
    run: PathBuf,
    /// Share of samples to keep, in (0, 1] [default: the run's].
    #[arg(short, long, conflicts_with = "count")]
    ratio: Option<f64>,
    /// Exact number of samples to keep [default: the run's].
    #[arg(short = 'n', long)]
    count: Option<usize>,
}

#[derive(Args)]
struct ReportArgs {
    /// Output directory of a finished `miwv select` (holding scores.jsonl and run.json).
    out_dir: PathBuf,
    /// Samples listed from each end of the ranking.
    #[arg(long, default_value_t = 20)]
    top: usize,
}

#[derive(Args)]
struct DoctorArgs {
    /// Dataset whose prompts and responses are tokenized.
    data: PathBuf,
    /// The model's Hugging Face tokenizer.json, to check the GGUF vocabulary against.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// The sample shown token by token (its 0-based index in the data, as in scores.jsonl).
    #[arg(long, default_value_t = 0)]
    sample: usize,
    /// GGUF model whose vocabulary is checked.
    #[arg(short = 'm', long, default_value = crate::DEFAULT_MODEL)]
    model: PathBuf,
    /// Prompt template (its text is tokenized too).
    #[arg(long, value_enum, default_value_t = TemplateChoice::Auto)]
    template: TemplateChoice,
    /// A Jinja chat template file used instead of the GGUF's own.
    #[arg(long, value_name = "FILE")]
    chat_template: Option<PathBuf>,
    #[command(flatten)]
    fields: FieldArgs,
    /// Disagreements printed in full.
    #[arg(long, default_value_t = 10)]
    limit: usize,
    /// Also write every disagreement as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct QuantizeArgs {
    /// The GGUF model to convert.
    input: PathBuf,
    /// Where to write the converted GGUF.
    output: PathBuf,
    /// The weight format to write.
    #[arg(long = "type", ignore_case = true, value_parser = clap::builder::PossibleValuesParser::new(crate::engine::QUANTIZE_FORMATS))]
    format: String,
    /// CPU threads [default: one per physical performance core].
    #[arg(short = 't', long)]
    threads: Option<usize>,
}

#[derive(Args)]
struct CompareArgs {
    /// First scores.jsonl (or an output directory holding one).
    a: PathBuf,
    /// Second scores.jsonl (or an output directory holding one); samples are matched by id.
    b: PathBuf,
    /// Selection ratios whose top-k sets are compared.
    #[arg(long, value_delimiter = ',', default_values_t = [0.01, 0.05, 0.10, 0.15])]
    ratios: Vec<f64>,
    /// Also write the comparison as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct SelectArgs {
    /// Dataset: JSON array, JSON Lines (.jsonl, .jsonl.gz) or Parquet, of Alpaca records
    /// {instruction, input?, output, id?} or conversations ({conversations: [{from, value}]}
    /// or {messages: [{role, content}]}).
    data: PathBuf,
    /// Output directory for scores.jsonl, selected.jsonl and run.json.
    #[arg(short, long, default_value = "miwv-out")]
    out: PathBuf,
    /// GGUF scoring model.
    #[arg(short = 'm', long, default_value = crate::DEFAULT_MODEL)]
    model: PathBuf,
    /// GGUF embedding model for retrieval, or `self` to mean-pool the scoring model.
    #[arg(long, default_value = crate::DEFAULT_EMBED_MODEL)]
    embed_model: String,
    /// Embeddings made elsewhere, instead of an embedding model: a NumPy .npy file of shape
    /// (samples, width), float32 or float64, rows in dataset order.
    #[arg(long, conflicts_with_all = ["embed_model", "embed_prefix"])]
    embeddings: Option<PathBuf>,
    /// Neighbour search: `auto` (exact up to 50,000 distinct texts, an inverted-file
    /// self-join above), `Flat` (exact), `join` / `join{LISTS}`, or a FAISS index_factory
    /// string such as `IVF4096,SQ8`.
    #[arg(long, default_value = "auto")]
    index: String,
    /// Inverted lists probed per query (`auto`, `join`, FAISS IVF indexes) [default: 8].
    #[arg(long)]
    nprobe: Option<u32>,
    /// Candidates an HNSW index keeps while it searches (FAISS's efSearch) [default: 16].
    #[arg(long)]
    ef_search: Option<u32>,
    /// Text put before each retrieval text [default: the embedder's convention, e.g.
    /// "search_document: " for nomic-embed].
    #[arg(long)]
    embed_prefix: Option<String>,
    /// Prompt template; `auto` is the model's own chat template when its GGUF has one,
    /// otherwise alpaca.
    #[arg(long, value_enum, default_value_t = TemplateChoice::Auto)]
    template: TemplateChoice,
    /// A Jinja chat template file used instead of the GGUF's own, e.g. for a GGUF without
    /// one or a model tuned with another (with `--template auto` or `model`).
    #[arg(long, value_name = "FILE")]
    chat_template: Option<PathBuf>,
    #[command(flatten)]
    fields: FieldArgs,
    /// Extra scores from one more pass: `ifd` adds L(y), IFD and the Superfiltering ratio.
    #[arg(long, value_enum, value_delimiter = ',')]
    also: Vec<Also>,
    /// Share of samples to keep, in (0, 1].
    #[arg(short, long, default_value_t = 0.05, conflicts_with = "count")]
    ratio: f64,
    /// Exact number of samples to keep (instead of --ratio).
    #[arg(short = 'n', long)]
    count: Option<usize>,
    /// End each response with the model's EOS token (scored with the response).
    #[arg(long)]
    append_eos: bool,
    #[command(flatten)]
    context: ContextArgs,
    /// Decode every one-shot sequence whole instead of continuing the neighbour's cached
    /// zero-shot pass (about 1.5x the tokens; for comparison).
    #[arg(long)]
    no_kv_reuse: bool,
    /// Tokens decoded between durable checkpoints of the scores (an interrupted run loses at
    /// most this much work; changing it changes the batch layout, so a resume keeps it).
    #[arg(long, default_value_t = config::DEFAULT_CHECKPOINT_TOKENS)]
    checkpoint_tokens: usize,
}

/// Extra scores.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Also {
    /// L(y) from the responses alone; IFD = L(y|x)/L(y) and PPL(y|x)/PPL(y).
    Ifd,
}

#[derive(Args)]
struct FieldArgs {
    /// Field holding the instruction.
    #[arg(long, default_value = "instruction")]
    instruction_field: String,
    /// Field holding the optional input.
    #[arg(long, default_value = "input")]
    input_field: String,
    /// Field holding the response.
    #[arg(long, default_value = "output")]
    output_field: String,
    /// Field holding the sample id [default: id; the record's index when absent].
    #[arg(long, default_value = "id")]
    id_field: String,
    /// Field holding a conversation's messages [default: `conversations` or `messages`,
    /// whichever a record has].
    #[arg(long)]
    messages_field: Option<String>,
    /// Score only each conversation's first exchange.
    #[arg(long)]
    first_turn: bool,
}

impl FieldArgs {
    fn options(self) -> ReadOptions {
        ReadOptions {
            fields: Fields {
                id: self.id_field,
                instruction: self.instruction_field,
                input: self.input_field,
                output: self.output_field,
                conversation: self.messages_field,
            },
            first_turn_only: self.first_turn,
            drop_records: false,
        }
    }
}

#[derive(Args)]
struct ContextArgs {
    /// Longest sequence in tokens (example + target); each parallel sequence gets this much
    /// KV. `auto`: the longest sequence the data needs, within the model's training context
    /// and --memory-budget. Nothing is ever cut: a longer sequence leaves its sample
    /// unscorable (`too_long`, `example_too_long`).
    #[arg(short = 'c', long, default_value = "auto", value_name = "auto|TOKENS")]
    ctx_size: CtxSize,
    /// KV slots at most: sequences decoded together and cached prefixes kept (half of them
    /// at most); fewer when --memory-budget needs it.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Most tokens per decode call; raised to the context when a sequence needs it, and at
    /// most --ctx-size x --parallel.
    #[arg(short = 'b', long, default_value_t = 2048)]
    batch_size: usize,
    /// Most tokens per compute step.
    #[arg(long = "ubatch-size", default_value_t = 512)]
    ubatch_size: usize,
    /// CPU threads [default: one per physical performance core].
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// Scoring contexts decoding different parts of the data at once, the threads shared out
    /// among them; each holds its own KV cache [default: one per thread on the CPU, one with
    /// -ngl].
    #[arg(long)]
    workers: Option<usize>,
    /// Layers to offload to the GPU, llama.cpp's -ngl (builds with the cuda, metal or vulkan
    /// feature; 999 offloads all).
    #[arg(long = "n-gpu-layers", visible_alias = "ngl", default_value_t = 0)]
    n_gpu_layers: u32,
    /// Memory the weights and every worker's context may take together, e.g. `6G` or
    /// `512M` (a bare number is GiB); slots, workers and an automatic context are chosen to
    /// stay within it [default: three quarters of this machine's memory].
    #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
    memory_budget: Option<u64>,
}

/// `6G`, `1.5G`, `512M`, `2048K` or a bare number of GiB, in bytes (binary units).
fn parse_memory(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let upper = text.to_ascii_uppercase();
    let number = upper.trim_end_matches("IB").trim_end_matches('B');
    let (digits, unit) = match number.char_indices().last() {
        Some((at, unit @ ('K' | 'M' | 'G' | 'T'))) => (&number[..at], unit),
        _ => (number, 'G'),
    };
    let shift = match unit {
        'K' => 10,
        'M' => 20,
        'G' => 30,
        _ => 40,
    };
    match digits.trim().parse::<f64>() {
        Ok(value) if value.is_finite() && value >= 0.0 => {
            Ok((value * (1u64 << shift) as f64) as u64)
        }
        _ => Err(format!(
            "expected a size such as 6G, 1.5G or 512M, got `{text}`"
        )),
    }
}

impl ContextArgs {
    fn sizes(&self) -> SizeRequest {
        let threads = self.threads.unwrap_or_else(sizes::default_threads);
        SizeRequest {
            ctx: self.ctx_size,
            parallel: self.parallel,
            batch: self.batch_size,
            ubatch: self.ubatch_size,
            threads,
            workers: self
                .workers
                .unwrap_or_else(|| ContextSizes::default_workers(threads, self.n_gpu_layers)),
            memory_budget: self.memory_budget,
        }
    }
}

#[derive(Args)]
struct BenchArgs {
    /// Dataset in any format `select` reads; the first N records are used (see
    /// benches/fetch-data.py).
    data: PathBuf,
    /// GGUF scoring model.
    #[arg(short = 'm', long, default_value = crate::DEFAULT_MODEL)]
    model: PathBuf,
    /// GGUF embedding model for retrieval.
    #[arg(long, default_value = crate::DEFAULT_EMBED_MODEL)]
    embed_model: PathBuf,
    /// Dataset sizes, comma-separated; the largest also runs without KV reuse.
    #[arg(long, value_delimiter = ',', default_values_t = [50, 100, 200])]
    sizes: Vec<usize>,
    /// Prompt template (alpaca by default, so results compare with docs/PERFORMANCE.md).
    #[arg(long, value_enum, default_value_t = TemplateChoice::Alpaca)]
    template: TemplateChoice,
    /// Full-batch decodes timed for each engine ceiling.
    #[arg(long, default_value_t = 8)]
    repeats: usize,
    /// Also score the largest size again with another thread keeping one core busy, as a
    /// browser or a build does on a laptop, and report the slowdown.
    #[arg(long)]
    busy: bool,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    context: ContextArgs,
}

#[derive(Args)]
struct BenchNeighboursArgs {
    /// Numbers of vectors, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000, 100_000, 1_000_000])]
    sizes: Vec<usize>,
    /// Width of the vectors.
    #[arg(long, default_value_t = 768)]
    dim: usize,
    /// Index to measure: `auto` or a FAISS index_factory string such as IVF4096,SQ8 (repeat
    /// the flag for several) [default: auto].
    #[arg(long = "index")]
    indexes: Vec<String>,
    /// Inverted lists probed per query, comma-separated to compare several (IVF indexes and
    /// auto) [default: the index's own].
    #[arg(long, value_delimiter = ',')]
    nprobe: Vec<u32>,
    /// Candidates an HNSW index keeps while it searches, comma-separated to compare several
    /// (HNSW indexes) [default: FAISS's 16].
    #[arg(long, value_delimiter = ',')]
    ef_search: Vec<u32>,
    /// Exact search (which grows with N²) runs for sizes up to this.
    #[arg(long, default_value_t = 100_000)]
    exact_max: usize,
    /// Queries in an approximate index's recall sample.
    #[arg(long, default_value_t = 1000)]
    recall_queries: usize,
    /// Seed of the synthetic vectors.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory for the temporary vector files [default: the system's temporary directory].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct BenchScaleArgs {
    /// Samples in the large dataset; the small one has a tenth.
    #[arg(long, default_value_t = 1_000_000)]
    samples: usize,
    /// Width of the embeddings.
    #[arg(long, default_value_t = 256)]
    dim: usize,
    /// Samples a score shard holds, at either size.
    #[arg(long, default_value_t = 250)]
    shard_samples: usize,
    /// The scoring model.
    #[arg(short = 'm', long, default_value = crate::DEFAULT_MODEL)]
    model: PathBuf,
    /// Where the data, runs and logs go [default: miwv-bench-scale in the temporary directory].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seed of the synthetic data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// A checked command line: what to do, and how much to log.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// `-v` given this many times.
    pub verbose: u8,
    /// The subcommand with its checked settings.
    pub action: Action,
}

/// A subcommand with its checked settings.
#[derive(Debug, Clone)]
pub enum Action {
    /// `miwv select`.
    Select(SelectConfig),
    /// `miwv embed`: the run's settings and this process's shard.
    Embed(SelectConfig, Shard),
    /// `miwv neighbours RUN`.
    Neighbours(PathBuf),
    /// `miwv plan RUN`: tokens to time, and where the JSON goes.
    Plan(PathBuf, usize, Option<PathBuf>),
    /// `miwv score RUN`: the shard and a thread count overriding the run's.
    Score(PathBuf, Shard, Option<usize>),
    /// `miwv merge RUN`, with a budget overriding the run's.
    Merge(PathBuf, Option<Budget>),
    /// `miwv bench`.
    Bench(BenchSettings),
    /// `miwv bench-neighbours`.
    BenchNeighbours(BenchNeighboursSettings),
    /// `miwv bench-scale`, and where its JSON report goes.
    BenchScale(crate::tools::scale_bench::ScaleBenchConfig, Option<PathBuf>),
    /// `miwv compare`.
    Compare(CompareSettings),
    /// `miwv quantize`.
    Quantize(QuantizeSettings),
    /// `miwv doctor`.
    Doctor(DoctorSettings),
    /// `miwv report`.
    Report(ReportSettings),
    /// `miwv completions`: print the script for this shell.
    Completions(clap_complete::Shell),
    /// `miwv devices`: the model, the layers to offload and where the JSON goes.
    Devices(PathBuf, u32, Option<PathBuf>),
}

/// `miwv bench`'s settings.
#[derive(Debug, Clone)]
pub struct BenchSettings {
    /// What to measure. Its sizes are sorted and without repeats, as [`BenchConfig`] expects.
    pub config: BenchConfig,
    /// `--json`: also write the report here.
    pub json: Option<PathBuf>,
}

/// `miwv bench-neighbours`' settings.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchNeighboursSettings {
    /// What to measure; sizes sorted and without repeats.
    pub config: crate::tools::neighbour_bench::NeighbourBenchConfig,
    /// `--json`: also write the report here.
    pub json: Option<PathBuf>,
}

/// `miwv compare`'s settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CompareSettings {
    /// The first `scores.jsonl`, or an output directory holding one.
    pub a: PathBuf,
    /// The second.
    pub b: PathBuf,
    /// `--ratios`: each in (0, 1].
    pub ratios: Vec<f64>,
    /// `--json`: also write the comparison here.
    pub json: Option<PathBuf>,
}

/// `miwv quantize`'s settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantizeSettings {
    /// The GGUF read.
    pub input: PathBuf,
    /// The GGUF written.
    pub output: PathBuf,
    /// `--type`: a name from [`crate::engine::QUANTIZE_FORMATS`], upper case.
    pub format: String,
    /// `-t`: at least 1.
    pub threads: usize,
}

/// `miwv doctor`'s settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DoctorSettings {
    /// The dataset.
    pub data: PathBuf,
    /// `--tokenizer`: the model's Hugging Face `tokenizer.json`, when the vocabulary is checked.
    pub tokenizer: Option<PathBuf>,
    /// `--sample`: the sample shown token by token.
    pub sample: usize,
    /// `-m`: the GGUF whose vocabulary is checked.
    pub model: PathBuf,
    /// `--template`.
    pub template: TemplateChoice,
    /// `--chat-template`: a Jinja file in place of the GGUF's template.
    pub chat_template: Option<PathBuf>,
    /// Field names and conversation handling.
    pub read: ReadOptions,
    /// `--limit`: disagreements printed in full (0 prints the counts alone).
    pub limit: usize,
    /// `--json`: also write every disagreement here.
    pub json: Option<PathBuf>,
}

/// `miwv report`'s settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportSettings {
    /// The finished run's output directory.
    pub out_dir: PathBuf,
    /// `--top`: samples listed from each end of the ranking, at least 1.
    pub top: usize,
}

/// Parses and checks a command line (`args` starts with the program name).
///
/// # Errors
/// A [`clap::Error`] for anything clap refuses (an unknown flag, a value of the wrong type,
/// `--help` and `--version` too) and for every value or relation [`crate::state::config`] refuses;
/// [`clap::Error::exit`] prints it and exits with 2 (0 for help and version).
pub fn parse<I, T>(args: I) -> Result<Invocation, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let cli = Cli::try_parse_from(llama_cpp_flags(args.into_iter().map(Into::into)))?;
    let action = match cli.command {
        Command::Select(args) => Action::Select(args.check()?),
        Command::Embed(args) => {
            let shard = args.shard.check("embed", |name| std::env::var(name).ok())?;
            Action::Embed(args.select.check()?, shard)
        }
        Command::Neighbours(args) => Action::Neighbours(args.run),
        Command::Plan(args) => Action::Plan(args.run, args.calibrate_tokens, args.json),
        Command::Score(args) => {
            if args.threads == Some(0) {
                return Err(invalid("score")(ConfigError::too_small("--threads", 1, 0)));
            }
            let shard = args.shard.check("score", |name| std::env::var(name).ok())?;
            Action::Score(args.run, shard, args.threads)
        }
        Command::Merge(args) => {
            let budget = match (args.ratio, args.count) {
                (Some(r), _) => Some(Budget::Ratio(r)),
                (None, Some(c)) => Some(Budget::Count(c)),
                (None, None) => None,
            };
            if let Some(budget) = budget {
                config::check_budget(budget).map_err(invalid("merge"))?;
            }
            Action::Merge(args.run, budget)
        }
        Command::Bench(args) => Action::Bench(args.check()?),
        Command::BenchNeighbours(args) => Action::BenchNeighbours(args.check()?),
        Command::BenchScale(args) => args.check()?,
        Command::Compare(args) => Action::Compare(args.check()?),
        Command::Quantize(args) => Action::Quantize(args.check()?),
        Command::Doctor(args) => Action::Doctor(args.check()?),
        Command::Report(args) => Action::Report(args.check()?),
        Command::Completions { shell } => Action::Completions(shell),
        Command::Devices(args) => Action::Devices(args.model, args.n_gpu_layers, args.json),
    };
    Ok(Invocation {
        verbose: cli.verbose,
        action,
    })
}

/// The long flags of `subcommand`, without their dashes; `None` when there is no such
/// subcommand. The Python API checks its keyword arguments against them.
pub fn long_flags(subcommand: &str) -> Option<Vec<String>> {
    let command = Cli::command();
    let found = command.find_subcommand(subcommand)?;
    Some(
        found
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect(),
    )
}

/// Writes the completion script for `shell`.
pub fn write_completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    clap_complete::generate(shell, &mut Cli::command(), "miwv", out);
}

/// llama.cpp's multi-letter short flags (`-ngl 99`, `-ngl=99`), which clap does not parse, as
/// the long flags they stand for.
fn llama_cpp_flags(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    args.map(|arg| match arg.to_str() {
        Some("-ngl") => "--n-gpu-layers".into(),
        Some(s) if s.starts_with("-ngl=") => format!("--n-gpu-layers={}", &s[5..]).into(),
        _ => arg,
    })
    .collect()
}

/// A refused value of `subcommand`, as clap reports its own (usage included, exit code 2).
fn invalid(subcommand: &str) -> impl Fn(ConfigError) -> clap::Error + '_ {
    move |e| {
        let mut cli = Cli::command();
        cli.build();
        match cli.find_subcommand_mut(subcommand) {
            Some(sub) => sub.error(ErrorKind::ValueValidation, e),
            None => cli.error(ErrorKind::ValueValidation, e),
        }
    }
}

impl SelectArgs {
    fn check(self) -> Result<SelectConfig, clap::Error> {
        let config = SelectConfig {
            data: self.data,
            read: self.fields.options(),
            out_dir: self.out,
            model: self.model,
            embed_model: match (self.embeddings, self.embed_model.as_str()) {
                (Some(vectors), _) => EmbedModel::Precomputed(vectors),
                (None, "self") => EmbedModel::Scoring,
                (None, path) => EmbedModel::File(path.into()),
            },
            embed_prefix: self.embed_prefix,
            template: self.template,
            chat_template: self.chat_template,
            budget: self.count.map_or(Budget::Ratio(self.ratio), Budget::Count),
            append_eos: self.append_eos,
            also_ifd: self.also.contains(&Also::Ifd),
            sizes: self.context.sizes(),
            gpu_layers: self.context.n_gpu_layers,
            kv_reuse: !self.no_kv_reuse,
            checkpoint_tokens: self.checkpoint_tokens,
            neighbours: IndexOptions {
                index: self.index,
                nprobe: self.nprobe,
                ef_search: self.ef_search,
                ..IndexOptions::default()
            },
        };
        config.validate().map_err(invalid("select"))?;
        Ok(config)
    }
}

impl BenchArgs {
    fn check(self) -> Result<BenchSettings, clap::Error> {
        let context = self.context.sizes();
        config::check_bench(&self.sizes, self.repeats)
            .and_then(|()| config::check_sizes(&context))
            .map_err(invalid("bench"))?;
        let mut sizes = self.sizes;
        sizes.sort_unstable();
        sizes.dedup();
        Ok(BenchSettings {
            config: BenchConfig {
                data: self.data,
                model: self.model,
                embed_model: self.embed_model,
                sizes,
                context,
                gpu_layers: self.context.n_gpu_layers,
                template: self.template,
                ceiling_repeats: self.repeats,
                busy: self.busy,
            },
            json: self.json,
        })
    }
}

impl BenchNeighboursArgs {
    fn check(self) -> Result<BenchNeighboursSettings, clap::Error> {
        use crate::retrieval::neighbours::IndexOptions;
        let fail = invalid("bench-neighbours");
        if let Some(&small) = self.sizes.iter().find(|&&n| n < 2) {
            return Err(fail(
                ConfigError::too_small("--sizes", 2, small).because("a vector needs a neighbour"),
            ));
        }
        config::check_dim(self.dim).map_err(&fail)?;
        let names = if self.indexes.is_empty() {
            vec!["auto".to_string()]
        } else {
            self.indexes
        };
        let mut indexes = Vec::new();
        for index in names {
            let options = IndexOptions {
                index,
                nprobe: None,
                ef_search: None,
                recall_queries: self.recall_queries,
            };
            options.validate().map_err(&fail)?;
            // One run per value of whichever search breadth the index takes.
            let variants: Vec<IndexOptions> = if options.takes_nprobe() {
                self.nprobe
                    .iter()
                    .map(|&nprobe| IndexOptions {
                        nprobe: Some(nprobe),
                        ..options.clone()
                    })
                    .collect()
            } else if options.takes_ef_search() {
                self.ef_search
                    .iter()
                    .map(|&ef_search| IndexOptions {
                        ef_search: Some(ef_search),
                        ..options.clone()
                    })
                    .collect()
            } else {
                Vec::new()
            };
            if variants.is_empty() {
                indexes.push(options);
            }
            for variant in variants {
                variant.validate().map_err(&fail)?;
                indexes.push(variant);
            }
        }
        let mut sizes = self.sizes;
        sizes.sort_unstable();
        sizes.dedup();
        Ok(BenchNeighboursSettings {
            config: crate::tools::neighbour_bench::NeighbourBenchConfig {
                sizes,
                dim: self.dim,
                indexes,
                exact_max: self.exact_max,
                seed: self.seed,
                dir: self.dir.unwrap_or_else(std::env::temp_dir),
            },
            json: self.json,
        })
    }
}

impl BenchScaleArgs {
    fn check(self) -> Result<Action, clap::Error> {
        let fail = invalid("bench-scale");
        if self.samples < 20 {
            return Err(fail(
                ConfigError::too_small("--samples", 20, self.samples)
                    .because("its tenth is scored as well"),
            ));
        }
        if self.shard_samples == 0 {
            return Err(fail(ConfigError::too_small("--shard-samples", 1, 0)));
        }
        config::check_dim(self.dim).map_err(&fail)?;
        let config = crate::tools::scale_bench::ScaleBenchConfig {
            samples: self.samples,
            dim: self.dim,
            shard_samples: self.shard_samples,
            model: self.model,
            dir: self
                .dir
                .unwrap_or_else(|| std::env::temp_dir().join("miwv-bench-scale")),
            seed: self.seed,
        };
        Ok(Action::BenchScale(config, self.json))
    }
}

impl CompareArgs {
    fn check(self) -> Result<CompareSettings, clap::Error> {
        config::check_compare_ratios(&self.ratios).map_err(invalid("compare"))?;
        Ok(CompareSettings {
            a: self.a,
            b: self.b,
            ratios: self.ratios,
            json: self.json,
        })
    }
}

impl DoctorArgs {
    /// Any `--limit` is fine, 0 printing the counts alone; `--chat-template` only with a
    /// template that asks for the model's own.
    fn check(self) -> Result<DoctorSettings, clap::Error> {
        config::check_chat_template(self.template, self.chat_template.as_deref())
            .map_err(invalid("doctor"))?;
        Ok(DoctorSettings {
            data: self.data,
            tokenizer: self.tokenizer,
            sample: self.sample,
            model: self.model,
            template: self.template,
            chat_template: self.chat_template,
            read: self.fields.options(),
            limit: self.limit,
            json: self.json,
        })
    }
}

impl QuantizeArgs {
    fn check(self) -> Result<QuantizeSettings, clap::Error> {
        if self.input == self.output {
            return Err(invalid("quantize")(ConfigError::new(
                "OUTPUT",
                Problem::Conflict {
                    other: "INPUT".into(),
                    why: "the output must be another file than the input",
                },
            )));
        }
        if self.threads == Some(0) {
            return Err(invalid("quantize")(ConfigError::too_small(
                "--threads",
                1,
                0,
            )));
        }
        Ok(QuantizeSettings {
            input: self.input,
            output: self.output,
            format: self.format.to_ascii_uppercase(),
            threads: self.threads.unwrap_or_else(sizes::default_threads),
        })
    }
}

impl ReportArgs {
    fn check(self) -> Result<ReportSettings, clap::Error> {
        config::check_top(self.top).map_err(invalid("report"))?;
        Ok(ReportSettings {
            out_dir: self.out_dir,
            top: self.top,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Invocation, clap::Error> {
        parse(std::iter::once("miwv").chain(args.iter().copied()))
    }

    fn ok(args: &[&str]) -> Invocation {
        run(args).unwrap_or_else(|e| panic!("{args:?} refused: {e}"))
    }

    /// The action of `command` followed by `extra`, which must be accepted.
    fn action(command: &[&str], extra: &[&str]) -> Action {
        let args: Vec<&str> = command.iter().chain(extra).copied().collect();
        ok(&args).action
    }

    fn select(extra: &[&str]) -> SelectConfig {
        match action(&["select", "d.json"], extra) {
            Action::Select(config) => config,
            other => panic!("{other:?}"),
        }
    }

    fn bench(extra: &[&str]) -> BenchSettings {
        match action(&["bench", "d.json"], extra) {
            Action::Bench(settings) => settings,
            other => panic!("{other:?}"),
        }
    }

    fn compare(extra: &[&str]) -> CompareSettings {
        match action(&["compare", "a", "b"], extra) {
            Action::Compare(settings) => settings,
            other => panic!("{other:?}"),
        }
    }

    fn doctor(extra: &[&str]) -> DoctorSettings {
        match action(&["doctor", "d.json", "--tokenizer", "t.json"], extra) {
            Action::Doctor(settings) => settings,
            other => panic!("{other:?}"),
        }
    }

    fn report(extra: &[&str]) -> ReportSettings {
        match action(&["report", "out"], extra) {
            Action::Report(settings) => settings,
            other => panic!("{other:?}"),
        }
    }

    /// Asserts that `args` is refused as a bad command line (exit code 2) whose message holds
    /// every one of `parts`; returns the message.
    fn refused(args: &[&str], parts: &[&str]) -> String {
        let e = match run(args) {
            Ok(invocation) => panic!("{args:?} accepted: {invocation:?}"),
            Err(e) => e,
        };
        let message = e.to_string();
        assert_eq!(e.exit_code(), 2, "{args:?}: {message}");
        for part in parts {
            assert!(
                message.contains(part),
                "{args:?}: `{part}` missing: {message}"
            );
        }
        message
    }

    fn cores() -> usize {
        sizes::default_threads()
    }

    #[test]
    fn select_defaults() {
        let c = select(&[]);
        assert_eq!(c.data, PathBuf::from("d.json"));
        assert_eq!(c.out_dir, PathBuf::from("miwv-out"));
        assert_eq!(c.model, PathBuf::from(crate::DEFAULT_MODEL));
        assert_eq!(
            c.embed_model,
            EmbedModel::File(crate::DEFAULT_EMBED_MODEL.into())
        );
        assert_eq!(c.embed_prefix, None);
        assert_eq!(c.template, TemplateChoice::Auto);
        assert_eq!(c.read, ReadOptions::default());
        assert_eq!(c.budget, Budget::Ratio(0.05));
        assert!(!c.append_eos);
        assert!(!c.also_ifd);
        assert_eq!(
            c.sizes,
            SizeRequest {
                ctx: CtxSize::Auto,
                parallel: 4,
                batch: 2048,
                ubatch: 512,
                threads: cores(),
                workers: cores(),
                memory_budget: None,
            }
        );
        assert_eq!(c.gpu_layers, 0);
        assert!(c.kv_reuse);
        assert_eq!(c.checkpoint_tokens, config::DEFAULT_CHECKPOINT_TOKENS);
    }

    #[test]
    fn workers_default_to_one_per_thread_on_the_cpu_and_one_on_a_gpu() {
        assert_eq!(select(&["-t", "3"]).sizes.workers, 3);
        assert_eq!(select(&["-t", "3", "--workers", "1"]).sizes.workers, 1);
        assert_eq!(select(&["-t", "3", "-ngl", "99"]).sizes.workers, 1);
        let sizes = select(&["-t", "5", "--workers", "2"]).sizes.at(64, 1, 2);
        assert_eq!((sizes.workers, sizes.threads_per_worker()), (2, 2));
        for bad in [&["-t", "2", "--workers", "3"][..], &["--workers", "0"]] {
            let err = run(&[&["select", "d.json"], bad].concat()).err().unwrap();
            assert!(err.to_string().contains("--workers must be"), "{err}");
        }
    }

    #[test]
    fn select_paths_models_and_template() {
        for flag in ["-o", "--out"] {
            assert_eq!(select(&[flag, "dir"]).out_dir, PathBuf::from("dir"));
        }
        for flag in ["-m", "--model"] {
            assert_eq!(select(&[flag, "x.gguf"]).model, PathBuf::from("x.gguf"));
        }
        assert_eq!(
            select(&["--embed-model", "e.gguf"]).embed_model,
            EmbedModel::File("e.gguf".into())
        );
        assert_eq!(
            select(&["--embed-model", "self"]).embed_model,
            EmbedModel::Scoring
        );
        assert_eq!(
            select(&["--embed-prefix", "query: "])
                .embed_prefix
                .as_deref(),
            Some("query: ")
        );
        for (name, choice) in [
            ("auto", TemplateChoice::Auto),
            ("model", TemplateChoice::Model),
            ("chatml", TemplateChoice::Chatml),
            ("alpaca", TemplateChoice::Alpaca),
            ("raw", TemplateChoice::Raw),
            ("oda", TemplateChoice::Oda),
        ] {
            assert_eq!(select(&["--template", name]).template, choice);
        }
        assert_eq!(select(&[]).chat_template, None);
        for template in ["auto", "model"] {
            let c = select(&["--template", template, "--chat-template", "t.jinja"]);
            assert_eq!(c.chat_template, Some(PathBuf::from("t.jinja")));
        }
        for template in ["chatml", "alpaca", "raw", "oda"] {
            for command in ["select", "doctor"] {
                refused(
                    &[
                        command,
                        "d.json",
                        "--template",
                        template,
                        "--chat-template",
                        "t.jinja",
                    ],
                    &["--chat-template t.jinja", &format!("--template {template}")],
                );
            }
        }
        assert_eq!(
            doctor(&["--chat-template", "t.jinja"]).chat_template,
            Some(PathBuf::from("t.jinja"))
        );
    }

    #[test]
    fn select_fields_and_switches() {
        let c = select(&[
            "--instruction-field",
            "q",
            "--input-field",
            "context",
            "--output-field",
            "response",
            "--id-field",
            "key",
            "--messages-field",
            "turns",
            "--first-turn",
        ]);
        assert_eq!(
            c.read,
            ReadOptions {
                fields: Fields {
                    id: "key".into(),
                    instruction: "q".into(),
                    input: "context".into(),
                    output: "response".into(),
                    conversation: Some("turns".into()),
                },
                first_turn_only: true,
                drop_records: false,
            }
        );
        assert!(select(&["--append-eos"]).append_eos);
        assert!(select(&["--also", "ifd"]).also_ifd);
        assert!(select(&["--also=ifd"]).also_ifd);
        assert!(!select(&["--no-kv-reuse"]).kv_reuse);
        assert_eq!(
            select(&["--checkpoint-tokens", "100"]).checkpoint_tokens,
            100
        );
    }

    #[test]
    fn select_budget() {
        for flag in ["-r", "--ratio"] {
            assert_eq!(select(&[flag, "0.25"]).budget, Budget::Ratio(0.25));
        }
        assert_eq!(select(&["-r", "1"]).budget, Budget::Ratio(1.0));
        for flag in ["-n", "--count"] {
            assert_eq!(select(&[flag, "7"]).budget, Budget::Count(7));
        }
    }

    #[test]
    fn context_flags_and_aliases() {
        for flag in ["-c", "--ctx-size"] {
            let s = select(&[flag, "1024", "-b", "1024"]).sizes;
            assert_eq!(s.ctx, CtxSize::Tokens(1024));
        }
        assert_eq!(select(&["-c", "auto"]).sizes.ctx, CtxSize::Auto);
        for (budget, bytes) in [
            ("6G", 6 << 30),
            ("1.5G", 3 << 29),
            ("512M", 512 << 20),
            ("512MiB", 512 << 20),
            ("2", 2 << 30),
        ] {
            let s = select(&["--memory-budget", budget]).sizes;
            assert_eq!(s.memory_budget, Some(bytes), "{budget}");
        }
        for bad in [
            "--memory-budget=lots",
            "--memory-budget=-1G",
            "--memory-budget=0",
        ] {
            let err = run(&["select", "d.json", bad]).err().unwrap();
            assert!(err.to_string().contains("--memory-budget"), "{bad}: {err}");
        }
        assert_eq!(select(&["--parallel", "8"]).sizes.parallel, 8);
        for flag in ["-b", "--batch-size"] {
            assert_eq!(select(&[flag, "4096"]).sizes.batch, 4096);
        }
        assert_eq!(select(&["--ubatch-size", "256"]).sizes.ubatch, 256);
        for flag in ["-t", "--threads"] {
            assert_eq!(select(&[flag, "3"]).sizes.threads, 3);
        }
        for args in [
            &["-ngl", "99"][..],
            &["-ngl=99"],
            &["--ngl", "99"],
            &["--ngl=99"],
            &["--n-gpu-layers", "99"],
            &["--n-gpu-layers=99"],
        ] {
            assert_eq!(select(args).gpu_layers, 99, "{args:?}");
        }
    }

    #[test]
    fn verbose_counts_anywhere() {
        assert_eq!(ok(&["select", "d.json"]).verbose, 0);
        assert_eq!(ok(&["select", "d.json", "-v"]).verbose, 1);
        assert_eq!(ok(&["-vv", "select", "d.json"]).verbose, 2);
        assert_eq!(ok(&["select", "-v", "d.json", "--verbose"]).verbose, 2);
        assert_eq!(ok(&["report", "out", "-vv"]).verbose, 2);
    }

    #[test]
    fn bench_defaults_and_flags() {
        let b = bench(&[]);
        assert_eq!(b.json, None);
        let c = b.config;
        assert_eq!(c.data, PathBuf::from("d.json"));
        assert_eq!(c.model, PathBuf::from(crate::DEFAULT_MODEL));
        assert_eq!(c.embed_model, PathBuf::from(crate::DEFAULT_EMBED_MODEL));
        assert_eq!(c.sizes, [50, 100, 200]);
        assert_eq!(c.template, TemplateChoice::Alpaca);
        assert_eq!(c.ceiling_repeats, 8);
        assert_eq!(c.gpu_layers, 0);
        assert_eq!(c.context, select(&[]).sizes);
        assert!(!c.busy);
        assert!(bench(&["--busy"]).config.busy);

        let c = bench(&[
            "-m",
            "s.gguf",
            "--embed-model",
            "e.gguf",
            "--sizes",
            "20,10",
            "--template",
            "chatml",
            "--repeats",
            "2",
            "--json",
            "b.json",
            "-c",
            "512",
            "--parallel",
            "2",
            "-b",
            "1024",
            "--ubatch-size",
            "128",
            "-t",
            "2",
        ]);
        assert_eq!(c.json, Some(PathBuf::from("b.json")));
        assert_eq!(c.config.model, PathBuf::from("s.gguf"));
        assert_eq!(c.config.embed_model, PathBuf::from("e.gguf"));
        assert_eq!(c.config.sizes, [10, 20], "sorted");
        assert_eq!(c.config.template, TemplateChoice::Chatml);
        assert_eq!(c.config.ceiling_repeats, 2);
        assert_eq!(
            c.config.context,
            SizeRequest {
                ctx: CtxSize::Tokens(512),
                parallel: 2,
                batch: 1024,
                ubatch: 128,
                threads: 2,
                workers: 2,
                memory_budget: None,
            }
        );
        assert_eq!(
            bench(&["--model", "m.gguf"]).config.model,
            PathBuf::from("m.gguf")
        );
        assert_eq!(bench(&["--sizes", "5,5,3"]).config.sizes, [3, 5]);
    }

    /// The bug this module was written for: `bench -ngl 99` was parsed and then dropped.
    #[test]
    fn bench_passes_gpu_layers_on() {
        for args in [
            &["-ngl", "99"][..],
            &["-ngl=99"],
            &["--ngl", "99"],
            &["--n-gpu-layers", "99"],
        ] {
            assert_eq!(bench(args).config.gpu_layers, 99, "{args:?}");
        }
    }

    #[test]
    fn bench_neighbours_expands_indexes_and_probes() {
        let settings = match ok(&["bench-neighbours"]).action {
            Action::BenchNeighbours(settings) => settings,
            other => panic!("{other:?}"),
        };
        let c = &settings.config;
        assert_eq!(
            (c.sizes.as_slice(), c.dim),
            (&[10_000, 100_000, 1_000_000][..], 768)
        );
        assert_eq!(
            c.indexes,
            [crate::retrieval::neighbours::IndexOptions::default()]
        );
        let settings = match ok(&[
            "bench-neighbours",
            "--sizes",
            "500,20",
            "--index",
            "IVF64,SQ8",
            "--index",
            "Flat",
            "--index",
            "join",
            "--nprobe",
            "2,4",
            "--index",
            "HNSW32",
            "--ef-search",
            "16,64",
        ])
        .action
        {
            Action::BenchNeighbours(settings) => settings,
            other => panic!("{other:?}"),
        };
        let runs: Vec<(&str, Option<u32>)> = settings
            .config
            .indexes
            .iter()
            .map(|o| (o.index.as_str(), o.nprobe.or(o.ef_search)))
            .collect();
        assert_eq!(settings.config.sizes, [20, 500]);
        assert_eq!(
            runs,
            [
                ("IVF64,SQ8", Some(2)),
                ("IVF64,SQ8", Some(4)),
                ("Flat", None),
                ("join", Some(2)),
                ("join", Some(4)),
                ("HNSW32", Some(16)),
                ("HNSW32", Some(64))
            ]
        );
        refused(&["bench-neighbours", "--sizes", "1"], &["--sizes"]);
        refused(&["bench-neighbours", "--nprobe", "0"], &["nprobe"]);
        refused(
            &["bench-neighbours", "--index", "HNSW32", "--ef-search", "0"],
            &["--ef-search"],
        );
        refused(
            &["select", "d.json", "--index", "join", "--ef-search", "64"],
            &["--ef-search", "HNSW"],
        );
        refused(&["bench-neighbours", "--index", "join0"], &["--index"]);
        // The flag is named once, by the one place messages are composed.
        let err = run(&["select", "d.json", "--index", "join0"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("--index expected `join` or `join` and a number of lists, e.g. join1024, got `join0`"),
            "{err}"
        );
        assert!(!err.contains("index: "), "{err}");
        refused(
            &["bench-neighbours", "--dim", "5000000000"],
            &["--dim must be at most 4294967295, got 5000000000"],
        );
    }

    #[test]
    fn compare_doctor_report_and_completions() {
        let c = compare(&[]);
        assert_eq!(
            c,
            CompareSettings {
                a: "a".into(),
                b: "b".into(),
                ratios: vec![0.01, 0.05, 0.10, 0.15],
                json: None,
            }
        );
        let c = compare(&["--ratios", "0.2,1", "--json", "c.json"]);
        assert_eq!(c.ratios, [0.2, 1.0]);
        assert_eq!(c.json, Some(PathBuf::from("c.json")));

        let d = doctor(&[]);
        assert_eq!(
            d,
            DoctorSettings {
                data: "d.json".into(),
                tokenizer: Some("t.json".into()),
                sample: 0,
                model: crate::DEFAULT_MODEL.into(),
                template: TemplateChoice::Auto,
                chat_template: None,
                read: ReadOptions::default(),
                limit: 10,
                json: None,
            }
        );
        let d = doctor(&[
            "-m",
            "x.gguf",
            "--template",
            "raw",
            "--output-field",
            "response",
            "--first-turn",
            "--limit",
            "0",
            "--json",
            "d.json",
        ]);
        assert_eq!(d.model, PathBuf::from("x.gguf"));
        assert_eq!(d.template, TemplateChoice::Raw);
        assert_eq!(d.read.fields.output, "response");
        assert!(d.read.first_turn_only);
        assert_eq!(d.limit, 0, "--limit 0 prints the counts alone");
        assert_eq!(d.json, Some(PathBuf::from("d.json")));
        assert_eq!(
            doctor(&["--model", "y.gguf"]).model,
            PathBuf::from("y.gguf")
        );
        assert_eq!(doctor(&["--sample", "7"]).sample, 7);
        match ok(&["doctor", "d.json"]).action {
            Action::Doctor(settings) => assert_eq!(settings.tokenizer, None),
            other => panic!("{other:?}"),
        }

        assert_eq!(
            report(&[]),
            ReportSettings {
                out_dir: "out".into(),
                top: 20,
            }
        );
        assert_eq!(report(&["--top", "3"]).top, 3);

        assert!(matches!(
            ok(&["completions", "zsh"]).action,
            Action::Completions(clap_complete::Shell::Zsh)
        ));
        let mut script = Vec::new();
        write_completions(clap_complete::Shell::Bash, &mut script);
        let script = String::from_utf8(script).unwrap();
        for word in ["select", "--n-gpu-layers", "--ctx-size", "--also"] {
            assert!(script.contains(word), "{word} missing");
        }
    }

    #[test]
    fn bad_select_values_name_their_flag() {
        let cases: &[(&[&str], &[&str])] = &[
            (&["-r", "0"], &["--ratio must be in (0, 1], got 0"]),
            (&["--ratio", "1.5"], &["--ratio must be in (0, 1], got 1.5"]),
            (&["--ratio", "NaN"], &["--ratio must be in (0, 1], got NaN"]),
            (&["--ratio=-0.5"], &["--ratio must be in (0, 1], got -0.5"]),
            (&["-r", "x"], &["'x'", "--ratio"]),
            (&["-r", "0.1", "-n", "5"], &["--ratio", "--count"]),
            (&["-n", "0"], &["--count must be at least 1"]),
            (&["-n=-3"], &["'-3'", "--count"]),
            (&["--template", "nope"], &["'nope'", "--template"]),
            (&["--also", "ppl"], &["'ppl'", "--also"]),
            (
                &["--checkpoint-tokens", "0"],
                &["--checkpoint-tokens must be at least 1"],
            ),
            (&["-ngl", "abc"], &["'abc'", "--n-gpu-layers"]),
            (&["-ngl=-1"], &["'-1'", "--n-gpu-layers"]),
            (&["--unknown"], &["--unknown"]),
        ];
        for (extra, parts) in cases {
            let args: Vec<&str> = ["select", "d.json"].iter().chain(*extra).copied().collect();
            refused(&args, parts);
        }
        refused(&["select"], &["<DATA>"]);
    }

    /// Each size relation llama.cpp relies on, refused naming the flags involved, for both
    /// subcommands that take them.
    #[test]
    fn bad_sizes_name_their_flags() {
        let cases: &[(&[&str], &[&str])] = &[
            (&["-c", "8"], &["--ctx-size must be at least 16, got 8"]),
            (
                &["--ctx-size", "15", "-b", "16"],
                &["--ctx-size must be at least 16"],
            ),
            (
                &["--parallel", "0"],
                &["--parallel must be in 1..=256, got 0"],
            ),
            (
                &["--parallel", "257"],
                &["--parallel must be in 1..=256, got 257"],
            ),
            (
                &["--ubatch-size", "0"],
                &["--ubatch-size must be at least 1, got 0"],
            ),
            (
                &["--ubatch-size", "4096"],
                &["--ubatch-size must be at most --batch-size (2048), got 4096"],
            ),
            (&["-t", "0"], &["--threads must be at least 1"]),
            (
                &["-t", "3000000000", "--workers", "1"],
                &["--threads must be at most 2147483647, got 3000000000"],
            ),
            (&["--threads", "0"], &["--threads must be at least 1"]),
            (
                &["-c", "4294967296", "-b", "4294967296", "--parallel", "1"],
                &["--ctx-size x --parallel must be at most 4294967295, got 4294967296"],
            ),
        ];
        for sub in ["select", "bench"] {
            for (extra, parts) in cases {
                let args: Vec<&str> = [sub, "d.json"].iter().chain(*extra).copied().collect();
                let message = refused(&args, parts);
                assert!(
                    message.contains(&format!("miwv {sub}")),
                    "the usage is the subcommand's: {message}"
                );
            }
        }
        // The edges are fine.
        let s = select(&[
            "-c",
            "16",
            "-b",
            "16",
            "--ubatch-size",
            "16",
            "--parallel",
            "1",
        ])
        .sizes;
        assert_eq!((s.ctx, s.batch, s.ubatch), (CtxSize::Tokens(16), 16, 16));
        assert_eq!(select(&["--parallel", "256"]).sizes.parallel, 256);
        assert_eq!(select(&["-b", "8192"]).sizes.batch, 8192);
    }

    #[test]
    fn bad_bench_compare_and_report_values_name_their_flag() {
        refused(&["bench", "d.json", "--sizes="], &["--sizes"]);
        refused(&["bench", "d.json", "--sizes", ""], &["--sizes"]);
        refused(
            &["bench", "d.json", "--sizes", "1,10"],
            &["--sizes must be at least 2", "got 1"],
        );
        refused(
            &["bench", "d.json", "--sizes", "0"],
            &["--sizes must be at least 2"],
        );
        refused(&["bench", "d.json", "--sizes", "a,b"], &["'a'", "--sizes"]);
        refused(
            &["bench", "d.json", "--repeats", "0"],
            &["--repeats must be at least 1"],
        );
        refused(
            &["bench", "d.json", "-ngl", "abc"],
            &["'abc'", "--n-gpu-layers"],
        );
        refused(
            &["bench", "d.json", "--template", "nope"],
            &["'nope'", "--template"],
        );
        refused(&["bench", "d.json", "-n", "5"], &["-n"]);

        refused(
            &["compare", "a", "b", "--ratios", "0.1,1.5"],
            &["--ratios must be in (0, 1], got 1.5"],
        );
        refused(
            &["compare", "a", "b", "--ratios", "0"],
            &["--ratios must be in (0, 1], got 0"],
        );
        refused(
            &["compare", "a", "b", "--ratios", "NaN"],
            &["--ratios must be in (0, 1], got NaN"],
        );
        refused(&["compare", "a", "b", "--ratios="], &["--ratios"]);

        refused(
            &["report", "out", "--top", "0"],
            &["--top must be at least 1"],
        );
        refused(&["report", "out", "--top=-1"], &["'-1'", "--top"]);
        refused(&["completions", "tcsh"], &["'tcsh'"]);
    }

    #[test]
    fn help_and_version_are_not_failures() {
        for args in [
            &["--help"][..],
            &["select", "--help"],
            &["help", "bench"],
            &["--version"],
        ] {
            let e = run(args).expect_err("help and version end the parse");
            assert_eq!(e.exit_code(), 0, "{args:?}");
        }
        let help = run(&["bench", "--help"]).unwrap_err().to_string();
        for flag in [
            "--n-gpu-layers",
            "--ngl",
            "--sizes",
            "--repeats",
            "-c, --ctx-size",
        ] {
            assert!(help.contains(flag), "{flag} missing from bench --help");
        }
    }

    #[test]
    fn only_whole_ngl_arguments_are_rewritten() {
        let rewritten = llama_cpp_flags(
            ["miwv", "-ngl", "1", "-ngl=2", "-nglx", "--ngl", "x-ngl"]
                .into_iter()
                .map(OsString::from),
        );
        assert_eq!(
            rewritten,
            [
                "miwv",
                "--n-gpu-layers",
                "1",
                "--n-gpu-layers=2",
                "-nglx",
                "--ngl",
                "x-ngl"
            ]
        );
    }
}
