//! The `miwv` command line: parses flags, builds a checked configuration, calls the library.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Parser, Subcommand};
use miwv::config::{EmbedModel, SelectConfig};
use miwv::dataset::{Fields, ReadOptions};
use miwv::engine::ContextSizes;
use miwv::prompt::TemplateChoice;
use miwv::select::Budget;

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
struct Cli {
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
    /// Measure scoring speed against llama.cpp's own prompt-processing ceiling.
    #[command(
        after_help = "Example:\n  python3 benches/fetch-data.py\n  miwv bench ~/.cache/miwv/data/sharegpt-first-turn.jsonl --sizes 50,100,200"
    )]
    Bench(BenchArgs),
    /// Compare two runs' scores: MIWV rank correlations, loss differences, selection overlap.
    #[command(
        after_help = "Example (what quantisation does to the selection):\n  miwv select data.json -m model.Q4_1.gguf -o q4\n  miwv select data.json -m model.F32.gguf -o f32\n  miwv compare q4 f32 --json drift.json"
    )]
    Compare(CompareArgs),
    /// Check that the GGUF vocabulary tokenizes the data like the model's tokenizer.json.
    #[command(
        after_help = "Exits with 1 when any segment differs.\nExample:\n  miwv doctor examples/alpaca-mini.json --tokenizer tokenizer.json -m model.gguf"
    )]
    Doctor(DoctorArgs),
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
    /// The model's Hugging Face tokenizer.json.
    #[arg(long)]
    tokenizer: PathBuf,
    /// GGUF model whose vocabulary is checked.
    #[arg(short = 'm', long, default_value = miwv::DEFAULT_MODEL)]
    model: PathBuf,
    /// Prompt template (its text is tokenized too).
    #[arg(long, value_enum, default_value_t = TemplateChoice::Auto)]
    template: TemplateChoice,
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
    #[arg(short = 'm', long, default_value = miwv::DEFAULT_MODEL)]
    model: PathBuf,
    /// GGUF embedding model for retrieval, or `self` to mean-pool the scoring model.
    #[arg(long, default_value = miwv::DEFAULT_EMBED_MODEL)]
    embed_model: String,
    /// Text put before each retrieval text [default: the embedder's convention, e.g.
    /// "search_document: " for nomic-embed].
    #[arg(long)]
    embed_prefix: Option<String>,
    /// Prompt template; `auto` is the model's own chat template when its GGUF has one,
    /// otherwise alpaca.
    #[arg(long, value_enum, default_value_t = TemplateChoice::Auto)]
    template: TemplateChoice,
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
    #[arg(long, default_value_t = miwv::config::DEFAULT_CHECKPOINT_TOKENS)]
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
        }
    }
}

#[derive(Args)]
struct ContextArgs {
    /// Longest sequence in tokens (example + target); each parallel sequence gets this much KV.
    #[arg(short = 'c', long, default_value_t = 2048)]
    ctx_size: usize,
    /// KV slots: sequences decoded together and cached prefixes kept (half of them at most).
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Most tokens per decode call (at least --ctx-size).
    #[arg(short = 'b', long, default_value_t = 2048)]
    batch_size: usize,
    /// Most tokens per compute step.
    #[arg(long = "ubatch-size", default_value_t = 512)]
    ubatch_size: usize,
    /// CPU threads [default: all cores].
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// Layers to offload to the GPU, llama.cpp's -ngl (builds with the cuda, metal or vulkan
    /// feature; 999 offloads all).
    #[arg(long = "n-gpu-layers", visible_alias = "ngl", default_value_t = 0)]
    n_gpu_layers: u32,
}

impl ContextArgs {
    fn sizes(&self) -> ContextSizes {
        ContextSizes {
            ctx_per_sequence: self.ctx_size,
            parallel: self.parallel,
            batch: self.batch_size,
            ubatch: self.ubatch_size,
            threads: self
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)),
        }
    }
}

#[derive(Args)]
struct BenchArgs {
    /// Dataset in any format `select` reads; the first N records are used (see
    /// benches/fetch-data.py).
    data: PathBuf,
    /// GGUF scoring model.
    #[arg(short = 'm', long, default_value = miwv::DEFAULT_MODEL)]
    model: PathBuf,
    /// GGUF embedding model for retrieval.
    #[arg(long, default_value = miwv::DEFAULT_EMBED_MODEL)]
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
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    context: ContextArgs,
}

impl SelectArgs {
    fn into_config(self) -> SelectConfig {
        SelectConfig {
            data: self.data,
            read: self.fields.options(),
            out_dir: self.out,
            model: self.model,
            embed_model: match self.embed_model.as_str() {
                "self" => EmbedModel::Scoring,
                path => EmbedModel::File(path.into()),
            },
            embed_prefix: self.embed_prefix,
            template: self.template,
            budget: self.count.map_or(Budget::Ratio(self.ratio), Budget::Count),
            append_eos: self.append_eos,
            also_ifd: self.also.contains(&Also::Ifd),
            sizes: self.context.sizes(),
            gpu_layers: self.context.n_gpu_layers,
            kv_reuse: !self.no_kv_reuse,
            checkpoint_tokens: self.checkpoint_tokens,
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        // llama.cpp's own warnings are about GGUF details users cannot act on; -v shows them.
        0 => "miwv=info,llama-cpp-2=error,warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(miwv::progress::LogWriter)
        .init();
}

fn bench(args: BenchArgs) -> Result<(), miwv::Error> {
    let config = miwv::bench::BenchConfig {
        data: args.data,
        model: args.model,
        embed_model: args.embed_model,
        sizes: args.sizes,
        context: args.context.sizes(),
        template: args.template,
        ceiling_repeats: args.repeats,
    };
    let report = miwv::bench::run(&config)?;
    print!("{}", report.render());
    if let Some(path) = args.json {
        miwv::output::write_json(&path, &report)?;
    }
    Ok(())
}

/// Set by the first Ctrl-C: scoring stops at the next decode, with its checkpoints kept.
static STOP: AtomicBool = AtomicBool::new(false);

fn stop_on_ctrl_c() {
    let installed = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            eprintln!("miwv: stopped at once; rerun the same command to resume");
            std::process::exit(130);
        }
        eprintln!("miwv: stopping after the current decode (Ctrl-C again to quit at once)");
    });
    if let Err(e) = installed {
        tracing::warn!("Ctrl-C will kill the run without a clean stop: {e}");
    }
}

fn compare(args: CompareArgs) -> Result<(), miwv::Error> {
    use miwv::compare::{compare, ScoreFile};
    let comparison = compare(
        &ScoreFile::read(&args.a)?,
        &ScoreFile::read(&args.b)?,
        &args.ratios,
    )?;
    print!("{}", comparison.render());
    if let Some(path) = args.json {
        miwv::output::write_json(&path, &comparison)?;
    }
    Ok(())
}

fn doctor(args: DoctorArgs) -> Result<(), miwv::Error> {
    use miwv::doctor::{check_tokenizer, ReferenceTokenizer};
    let (_, dataset) = miwv::records::read_samples(&args.data, &args.fields.options())?;
    let samples = dataset.samples;
    let reference = ReferenceTokenizer::load(&args.tokenizer)?;
    let model = miwv::engine::Model::load(&args.model, 0)?;
    let template = model.template(args.template)?;
    let report = check_tokenizer(&model, &reference, &samples, &template);
    print!("{}", report.render(&reference, args.limit));
    if let Some(path) = args.json {
        miwv::output::write_json(&path, &report)?;
    }
    if report.disagreements.is_empty() {
        Ok(())
    } else {
        Err(miwv::Error::TokenizersDiffer {
            segments: report.disagreements.len(),
            samples: report.samples_differing,
        })
    }
}

/// llama.cpp's multi-letter short flags (`-ngl 99`), which clap does not parse, as the long
/// flags they stand for.
fn llama_cpp_flags(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    args.map(|arg| match arg.to_str() {
        Some("-ngl") => "--n-gpu-layers".into(),
        Some(s) if s.starts_with("-ngl=") => format!("--n-gpu-layers={}", &s[5..]).into(),
        _ => arg,
    })
    .collect()
}

fn report(args: ReportArgs) -> Result<(), miwv::Error> {
    let files = miwv::report::write_report(&args.out_dir, args.top)?;
    println!("histogram: {}", files.histogram.display());
    println!("scatter:   {}", files.scatter.display());
    println!("report:    {}", files.html.display());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(llama_cpp_flags(std::env::args_os()));
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Select(args) => {
            stop_on_ctrl_c();
            let config = args.into_config();
            miwv::run::select_until(&config, &STOP).map(|summary| {
                println!(
                    "scored {} of {} samples; selected {}",
                    summary.scored, summary.samples, summary.selected_count
                );
                println!("scores:   {}", summary.scores.display());
                println!("selected: {}", summary.selected.display());
                println!("run:      {}", summary.run.display());
            })
        }
        Command::Bench(args) => bench(args),
        Command::Compare(args) => compare(args),
        Command::Doctor(args) => doctor(args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "miwv", &mut std::io::stdout());
            Ok(())
        }
        Command::Report(args) => report(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ miwv::Error::Interrupted { .. }) => {
            eprintln!("miwv: {e}");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("miwv: error: {e}");
            ExitCode::FAILURE
        }
    }
}
