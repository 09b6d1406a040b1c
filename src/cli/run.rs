//! What each subcommand does once its settings are checked: run it through the library and
//! print its outcome. Kept apart from the parsing so the binary stays a few lines and an
//! embedding program (the Python package's `miwv` command) runs exactly the same command.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{
    Action, BenchSettings, CompareSettings, DoctorSettings, QuantizeSettings, ReportSettings,
};
use crate::state::config::SelectConfig;

/// Runs the `miwv` command line `args` (the program name first) as the binary does: parse,
/// log to stderr, run the subcommand, print its outcome; returns the exit code. The binary
/// and the Python package's `miwv` command both call it.
pub fn main<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let invocation = match super::parse(args) {
        Ok(invocation) => invocation,
        Err(e) => {
            let _ = e.print();
            // Help and version exit with 0, a bad command line with 2.
            return e.exit_code() as u8;
        }
    };
    init_logging(invocation.verbose);
    log_openmp_wait_policy();
    let result = match invocation.action {
        Action::Select(config) => run_select(&config),
        Action::Embed(config, shard) => {
            stop_on_ctrl_c();
            stage(crate::pipeline::stages::embed(&config, shard, &STOP))
        }
        Action::Neighbours(run) => stage(crate::pipeline::stages::neighbours(&run)),
        Action::Plan(run, calibrate_tokens, json) => {
            run_plan(&run, calibrate_tokens, json.as_deref())
        }
        Action::Score(run, shard, threads) => {
            stop_on_ctrl_c();
            stage(crate::pipeline::stages::score(&run, shard, threads, &STOP))
        }
        Action::Merge(run, budget) => {
            crate::pipeline::stages::merge(&run, budget).map(|summary| print_summary(&summary))
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
            super::write_completions(shell, &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) if e.is_interrupted() => {
            eprintln!("miwv: {e}");
            130
        }
        Err(e) => {
            eprintln!("miwv: error: {e}");
            1
        }
    }
}

/// How OpenMP threads wait in this process, at `-v`.
fn log_openmp_wait_policy() {
    for variable in crate::engine::OPENMP_WAIT_VARIABLES {
        let value = std::env::var(variable).unwrap_or_else(|_| "unset".into());
        tracing::debug!("OpenMP: {variable}={value}");
    }
}

/// Which log records are made at `-v` given `verbose` times: `RUST_LOG` when set, else info
/// (debug at `-v`, trace at `-vv`). The Python package's logging uses the same rule.
pub fn log_filter(verbose: u8) -> tracing_subscriber::EnvFilter {
    let default = match verbose {
        // llama.cpp's own warnings are about GGUF details users cannot act on; -v shows them.
        0 => "miwv=info,llama-cpp-2=error,warn",
        1 => "debug",
        _ => "trace",
    };
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
}

fn init_logging(verbose: u8) {
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(verbose))
        // Colour codes only where they are drawn: not in a log file, a pipe or CI.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(crate::state::progress::LogWriter)
        // Another subscriber may own the process already (an embedding program's).
        .try_init()
        .ok();
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

fn run_select(config: &SelectConfig) -> Result<(), crate::Error> {
    stop_on_ctrl_c();
    let summary = crate::pipeline::select_until(config, &STOP)?;
    print_summary(&summary);
    Ok(())
}

fn stage(
    result: Result<crate::pipeline::stages::StageSummary, crate::Error>,
) -> Result<(), crate::Error> {
    println!("{}", result?.message);
    Ok(())
}

/// The run's last lines: what it wrote on stdout; what it could not score on stderr, so a
/// user who reads neither `scores.jsonl` nor the log still sees it.
fn print_summary(summary: &crate::pipeline::RunSummary) {
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

/// Prints a report as text, and saves it as JSON where `--json` asked.
fn show<T: serde::Serialize>(
    text: String,
    report: &T,
    json: Option<&std::path::Path>,
) -> Result<(), crate::Error> {
    print!("{text}");
    if let Some(path) = json {
        crate::data::output::write_json(path, report)?;
    }
    Ok(())
}

fn run_bench(settings: BenchSettings) -> Result<(), crate::Error> {
    let report = crate::tools::bench::run(&settings.config)?;
    show(report.render(), &report, settings.json.as_deref())
}

fn run_bench_neighbours(settings: crate::cli::BenchNeighboursSettings) -> Result<(), crate::Error> {
    let report = crate::tools::neighbour_bench::run(&settings.config)?;
    show(report.render(), &report, settings.json.as_deref())
}

fn run_plan(
    run: &std::path::Path,
    calibrate_tokens: usize,
    json: Option<&std::path::Path>,
) -> Result<(), crate::Error> {
    let estimate = crate::pipeline::estimate::estimate(run, calibrate_tokens)?;
    show(estimate.render(), &estimate, json)
}

fn run_bench_scale(
    config: &crate::tools::scale_bench::ScaleBenchConfig,
    json: Option<&std::path::Path>,
) -> Result<(), crate::Error> {
    let report = crate::tools::scale_bench::run(config)?;
    show(report.render(), &report, json)
}

fn run_compare(settings: CompareSettings) -> Result<(), crate::Error> {
    let comparison =
        crate::tools::compare::compare_files(&settings.a, &settings.b, &settings.ratios)?;
    show(comparison.render(), &comparison, settings.json.as_deref())
}

fn run_quantize(settings: &QuantizeSettings) -> Result<(), crate::Error> {
    let done = crate::engine::quantize(
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

fn run_doctor(settings: DoctorSettings) -> Result<(), crate::Error> {
    use crate::engine::tokenizer::ReferenceTokenizer;
    use crate::tools::doctor::{check_tokenizer, view_sample};
    let (_, dataset) = crate::data::records::read_samples(&settings.data, &settings.read)?;
    let model = crate::engine::Model::load(&settings.model, 0)?;
    let template = crate::pipeline::resolve_template(
        &model,
        settings.template,
        settings.chat_template.as_deref(),
    )?;
    println!("{}", crate::tools::doctor::describe_template(&template));
    let view = view_sample(&model, &template, &dataset.samples, settings.sample, false)?
        .ok_or_else(|| {
            crate::state::config::ConfigError::too_large(
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
        crate::tools::doctor::sample_lengths(&model, &template, &dataset.samples, trained)?;
    print!("{}", lengths.render());
    let Some(tokenizer) = settings.tokenizer else {
        return Ok(());
    };
    let reference = ReferenceTokenizer::load(&tokenizer)?;
    let report = check_tokenizer(&model, &reference, &dataset.samples, &template)?;
    print!("{}", report.render(&reference, settings.limit));
    if let Some(path) = settings.json {
        crate::data::output::write_json(&path, &report)?;
    }
    if report.disagreements.is_empty() {
        Ok(())
    } else {
        Err(crate::Error::TokenizersDiffer {
            segments: report.disagreements.len(),
            samples: report.samples_differing,
        })
    }
}

fn run_report(settings: ReportSettings) -> Result<(), crate::Error> {
    let files = crate::tools::report::write_report(&settings.out_dir, settings.top)?;
    println!("histogram: {}", files.histogram.display());
    println!("scatter:   {}", files.scatter.display());
    println!("report:    {}", files.html.display());
    Ok(())
}

fn run_devices(
    model: &std::path::Path,
    gpu_layers: u32,
    json: Option<std::path::PathBuf>,
) -> Result<(), crate::Error> {
    use crate::engine::devices::devices;
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
    let loaded = crate::engine::Model::load(model, 0)?;
    let offload = loaded.offload(gpu_layers)?;
    println!("{}: {}", model.display(), offload.render(gpu_layers));
    if let Some(path) = json {
        let report = serde_json::json!({"devices": found, "model": model, "offload": offload});
        crate::data::output::write_json(&path, &report)?;
    }
    Ok(())
}
