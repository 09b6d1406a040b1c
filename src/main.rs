//! The `miwv` binary: parse the command line ([`miwv::cli`]), set up logging, run the
//! subcommand through the library and turn its outcome into an exit code.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use miwv::cli::{
    Action, BenchSettings, CompareSettings, DoctorSettings, QuantizeSettings, ReportSettings,
};
use miwv::state::config::SelectConfig;

fn main() -> ExitCode {
    with_openmp_wait_policy();
    let invocation = match miwv::cli::parse(std::env::args_os()) {
        Ok(invocation) => invocation,
        // Help and version exit with 0, a bad command line with 2.
        Err(e) => e.exit(),
    };
    init_logging(invocation.verbose);
    log_openmp_wait_policy();
    let result = match invocation.action {
        Action::Select(config) => run_select(&config),
        Action::Embed(config, shard) => stage(miwv::pipeline::stages::embed(&config, shard)),
        Action::Neighbours(run) => stage(miwv::pipeline::stages::neighbours(&run)),
        Action::Plan(run, calibrate_tokens, json) => {
            run_plan(&run, calibrate_tokens, json.as_deref())
        }
        Action::Score(run, shard, threads) => {
            stop_on_ctrl_c();
            stage(miwv::pipeline::stages::score(&run, shard, threads, &STOP))
        }
        Action::Merge(run, budget) => {
            miwv::pipeline::stages::merge(&run, budget).map(|summary| print_summary(&summary))
        }
        Action::Bench(settings) => run_bench(settings),
        Action::BenchNeighbours(settings) => run_bench_neighbours(settings),
        Action::BenchScale(config, json) => run_bench_scale(&config, json.as_deref()),
        Action::Compare(settings) => run_compare(settings),
        Action::Quantize(settings) => run_quantize(&settings),
        Action::Doctor(settings) => run_doctor(settings),
        Action::Report(settings) => run_report(settings),
        Action::Devices(model, gpu_layers, json) => run_devices(&model, gpu_layers, json),
        Action::Completions(shell) => {
            miwv::cli::write_completions(shell, &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_interrupted() => {
            eprintln!("miwv: {e}");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("miwv: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the process again with [`miwv::engine::OPENMP_WAIT`] set, unless the user chose how
/// OpenMP threads wait. libgomp reads its settings once, when it is loaded, before `main`
/// runs, so setting the variable here would be too late; `exec` keeps the process id, the
/// arguments and everything else.
#[cfg(unix)]
fn with_openmp_wait_policy() {
    use miwv::engine::{OPENMP_WAIT, OPENMP_WAIT_VARIABLES};
    use std::os::unix::process::CommandExt;
    if OPENMP_WAIT_VARIABLES
        .iter()
        .any(|v| std::env::var_os(v).is_some())
    {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let error = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(OPENMP_WAIT.0, OPENMP_WAIT.1)
        .exec();
    // `exec` returns only when it failed: run on with OpenMP's own defaults.
    eprintln!(
        "miwv: warning: could not restart with {}={}: {error}",
        OPENMP_WAIT.0, OPENMP_WAIT.1
    );
}

#[cfg(not(unix))]
fn with_openmp_wait_policy() {}

/// How OpenMP threads wait in this process, at `-v`.
fn log_openmp_wait_policy() {
    for variable in miwv::engine::OPENMP_WAIT_VARIABLES {
        let value = std::env::var(variable).unwrap_or_else(|_| "unset".into());
        tracing::debug!("OpenMP: {variable}={value}");
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
        // Colour codes only where they are drawn: not in a log file, a pipe or CI.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(miwv::state::progress::LogWriter)
        .init();
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

fn run_select(config: &SelectConfig) -> Result<(), miwv::Error> {
    stop_on_ctrl_c();
    let summary = miwv::pipeline::select_until(config, &STOP)?;
    print_summary(&summary);
    Ok(())
}

fn stage(
    result: Result<miwv::pipeline::stages::StageSummary, miwv::Error>,
) -> Result<(), miwv::Error> {
    println!("{}", result?.message);
    Ok(())
}

/// The run's last lines: what it wrote on stdout; what it could not score on stderr, so a
/// user who reads neither `scores.jsonl` nor the log still sees it.
fn print_summary(summary: &miwv::pipeline::RunSummary) {
    if let Some(lines) = summary.unscorable_lines() {
        eprint!("miwv: {lines}");
    }
    println!(
        "scored {} of {} samples; selected {}",
        summary.scored, summary.samples, summary.selected_count
    );
    println!("scores:   {}", summary.scores.display());
    println!("selected: {}", summary.selected.display());
    println!("run:      {}", summary.run.display());
}

fn run_bench(settings: BenchSettings) -> Result<(), miwv::Error> {
    let report = miwv::tools::bench::run(&settings.config)?;
    print!("{}", report.render());
    if let Some(path) = settings.json {
        miwv::data::output::write_json(&path, &report)?;
    }
    Ok(())
}

fn run_bench_neighbours(settings: miwv::cli::BenchNeighboursSettings) -> Result<(), miwv::Error> {
    let report = miwv::tools::neighbour_bench::run(&settings.config)?;
    print!("{}", report.render());
    if let Some(path) = settings.json {
        miwv::data::output::write_json(&path, &report)?;
    }
    Ok(())
}

fn run_plan(
    run: &std::path::Path,
    calibrate_tokens: usize,
    json: Option<&std::path::Path>,
) -> Result<(), miwv::Error> {
    let estimate = miwv::pipeline::estimate::estimate(run, calibrate_tokens)?;
    print!("{}", estimate.render());
    if let Some(path) = json {
        miwv::data::output::write_json(path, &estimate)?;
    }
    Ok(())
}

fn run_bench_scale(
    config: &miwv::tools::scale_bench::ScaleBenchConfig,
    json: Option<&std::path::Path>,
) -> Result<(), miwv::Error> {
    let report = miwv::tools::scale_bench::run(config)?;
    print!("{}", report.render());
    if let Some(path) = json {
        miwv::data::output::write_json(path, &report)?;
    }
    Ok(())
}

fn run_compare(settings: CompareSettings) -> Result<(), miwv::Error> {
    use miwv::tools::compare::{compare, ScoreFile};
    let comparison = compare(
        &ScoreFile::read(&settings.a)?,
        &ScoreFile::read(&settings.b)?,
        &settings.ratios,
    )?;
    print!("{}", comparison.render());
    if let Some(path) = settings.json {
        miwv::data::output::write_json(&path, &comparison)?;
    }
    Ok(())
}

fn run_quantize(settings: &QuantizeSettings) -> Result<(), miwv::Error> {
    let done = miwv::engine::quantize(
        &settings.input,
        &settings.output,
        &settings.format,
        settings.threads,
    )?;
    println!(
        "{} ({}) -> {} ({}, {} bytes, sha256 {})",
        settings.input.display(),
        done.from,
        settings.output.display(),
        done.to,
        done.bytes,
        done.sha256
    );
    Ok(())
}

fn run_doctor(settings: DoctorSettings) -> Result<(), miwv::Error> {
    use miwv::engine::tokenizer::ReferenceTokenizer;
    use miwv::tools::doctor::{check_tokenizer, view_sample};
    let (_, dataset) = miwv::data::records::read_samples(&settings.data, &settings.read)?;
    let model = miwv::engine::Model::load(&settings.model, 0)?;
    let template = miwv::pipeline::resolve_template(
        &model,
        settings.template,
        settings.chat_template.as_deref(),
    )?;
    println!("{}", miwv::tools::doctor::describe_template(&template));
    let view = view_sample(&model, &template, &dataset.samples, settings.sample, false)?
        .ok_or_else(|| {
            miwv::state::config::ConfigError::too_large(
                "--sample",
                format!(
                    "{} (the data has {} samples)",
                    dataset.samples.len().saturating_sub(1),
                    dataset.samples.len()
                ),
                settings.sample,
            )
        })?;
    println!("{}", view.render(|token| model.piece(token)));
    let trained = model.info().context_train as usize;
    let lengths =
        miwv::tools::doctor::sample_lengths(&model, &template, &dataset.samples, trained)?;
    print!("{}", lengths.render());
    let Some(tokenizer) = settings.tokenizer else {
        return Ok(());
    };
    let reference = ReferenceTokenizer::load(&tokenizer)?;
    let report = check_tokenizer(&model, &reference, &dataset.samples, &template)?;
    print!("{}", report.render(&reference, settings.limit));
    if let Some(path) = settings.json {
        miwv::data::output::write_json(&path, &report)?;
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

fn run_report(settings: ReportSettings) -> Result<(), miwv::Error> {
    let files = miwv::tools::report::write_report(&settings.out_dir, settings.top)?;
    println!("histogram: {}", files.histogram.display());
    println!("scatter:   {}", files.scatter.display());
    println!("report:    {}", files.html.display());
    Ok(())
}

fn run_devices(
    model: &std::path::Path,
    gpu_layers: u32,
    json: Option<std::path::PathBuf>,
) -> Result<(), miwv::Error> {
    use miwv::engine::devices::devices;
    let found = devices()?;
    let mib = |bytes: u64| bytes / (1 << 20);
    println!("devices llama.cpp sees in this build:");
    for d in &found {
        println!(
            "  {:<10} {:<8} {:<6} {:>8} MiB free of {:>8} MiB  {}",
            d.name,
            d.backend,
            d.kind,
            mib(d.memory_free),
            mib(d.memory_total),
            d.description
        );
    }
    let loaded = miwv::engine::Model::load(model, 0)?;
    let offload = loaded.offload(gpu_layers)?;
    println!("{}: {}", model.display(), offload.render(gpu_layers));
    if let Some(path) = json {
        let report = serde_json::json!({"devices": found, "model": model, "offload": offload});
        miwv::data::output::write_json(&path, &report)?;
    }
    Ok(())
}
