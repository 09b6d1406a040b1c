//! `miwv._native`: the miwv library behind the Python package.
//!
//! Python hands over a command line. The CLI's own parser ([`miwv::cli::parse`]) checks it,
//! so every option is validated with the CLI's messages, and the library runs it on a worker
//! thread. The calling thread waits with the GIL released, passes the run's log records and
//! progress to a Python callback, and turns Ctrl-C into the run's clean stop. Nothing of the
//! pipeline is reimplemented here.

use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use miwv::cli::Action;
use miwv::state::progress::{self, PhaseEvent};
use pyo3::exceptions::{PyKeyboardInterrupt, PyValueError};
use pyo3::prelude::*;
use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

/// How often the waiting thread looks at Ctrl-C and the callback's events.
const POLL: Duration = Duration::from_millis(100);

/// Runs the `miwv` command line `argv` (program name first) exactly as the binary does and
/// returns its exit code: the Python package's `miwv` command.
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<OsString>) -> u8 {
    py.detach(|| miwv::cli::main(argv))
}

/// The long flags of `subcommand` (`select`, `embed`, ...), without the leading dashes.
#[pyfunction]
fn flags(subcommand: &str) -> PyResult<Vec<String>> {
    miwv::cli::long_flags(subcommand)
        .ok_or_else(|| PyValueError::new_err(format!("no subcommand {subcommand}")))
}

/// Runs `miwv ARGS...` through the library and returns its outcome as JSON text.
///
/// `on_event` is called on this thread with `("log", level, target, message)` and the
/// progress events `("started", phase, total, unit)`, `("advanced", phase, done)`,
/// `("noted", phase, message)` and `("finished", phase)`; `log_level` is the Python logger's
/// effective level, which decides whether debug records are made at all.
#[pyfunction]
fn run(
    py: Python<'_>,
    args: Vec<String>,
    on_event: Bound<'_, PyAny>,
    log_level: u32,
) -> PyResult<String> {
    let argv = std::iter::once("miwv".to_string()).chain(args);
    let invocation =
        miwv::cli::parse(argv).map_err(|e| raise(py, "OptionsError", &clap_message(&e)))?;
    let Some(job) = job(invocation.action) else {
        return Err(raise(
            py,
            "OptionsError",
            "this subcommand runs from the miwv command only",
        ));
    };
    set_log_filter(log_level, invocation.verbose);
    let stop = AtomicBool::new(false);
    let waited = wait(py, &on_event, &stop, job)?;
    match waited.outcome {
        Ok(json) => Ok(json),
        Err(e) => {
            let class = if waited.interrupted && e.is_interrupted() {
                "Interrupted"
            } else {
                error_class(&e)
            };
            Err(raise(py, class, &e.to_string()))
        }
    }
}

/// A command-line error as the command prints it, without its `error: ` and the usage
/// lines that follow: the flag at fault and what is wrong with it.
fn clap_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    let text = text.split("\n\nUsage:").next().unwrap_or(text);
    text.trim_end().to_string()
}

/// What the worker thread runs for one call: a subcommand, its outcome as JSON text.
type Job = Box<dyn FnOnce(&AtomicBool) -> Result<String, miwv::Error> + Send>;

/// The job running `action`; `None` for the subcommands that print what they find rather
/// than return it, which the `miwv` command runs.
fn job(action: Action) -> Option<Job> {
    use miwv::pipeline::{self, estimate::estimate, stages};
    use miwv::tools::{compare::compare_files, report::write_report};
    Some(match action {
        Action::Select(config) => Box::new(move |stop| json(pipeline::select_until(&config, stop))),
        Action::Embed(config, shard) => {
            Box::new(move |stop| json(stages::embed(&config, shard, stop)))
        }
        Action::Neighbours(run) => Box::new(move |_| json(stages::neighbours(&run))),
        Action::Score(run, shard, threads) => {
            Box::new(move |stop| json(stages::score(&run, shard, threads, stop)))
        }
        Action::Merge(run, budget) => Box::new(move |_| json(stages::merge(&run, budget))),
        Action::Plan(run, calibrate_tokens, _) => {
            Box::new(move |_| json(estimate(&run, calibrate_tokens)))
        }
        Action::Compare(settings) => Box::new(move |_| {
            json(compare_files(&settings.a, &settings.b, &settings.ratios).map_err(Into::into))
        }),
        Action::Report(settings) => Box::new(move |_| {
            json(write_report(&settings.out_dir, settings.top).map_err(Into::into))
        }),
        Action::Bench(_)
        | Action::BenchNeighbours(_)
        | Action::BenchScale(..)
        | Action::Quantize(_)
        | Action::Doctor(_)
        | Action::Devices(..)
        | Action::Completions(_) => return None,
    })
}

fn json<T: Serialize>(outcome: Result<T, miwv::Error>) -> Result<String, miwv::Error> {
    outcome.map(|value| serde_json::to_string(&value).expect("outcomes serialise to JSON"))
}

/// The `miwv.errors` class for a failure: bad data, a bad model, bad options, or the
/// others (a locked run, an unwritable directory, a checkpoint of other settings).
fn error_class(e: &miwv::Error) -> &'static str {
    use miwv::engine::EngineError;
    use miwv::Error::*;
    match e {
        Records(_) | EmptyDataset(_) | Render(_) | Unrenderable { .. } | TooFewRecords { .. } => {
            "DataError"
        }
        Engine(EngineError::NoGpu { .. }) => "OptionsError",
        Engine(EngineError::Metadata(_) | EngineError::Model { .. })
        | Template { .. }
        | Tokenizer(_)
        | TokenizersDiffer { .. } => "ModelError",
        Config(_) | Fit(_) => "OptionsError",
        _ => "MiwvError",
    }
}

/// A `miwv.errors` exception of `class` carrying `message`.
fn raise(py: Python<'_>, class: &str, message: &str) -> PyErr {
    let made = py
        .import("miwv.errors")
        .and_then(|errors| errors.getattr(class))
        .and_then(|class| class.call1((message,)));
    match made {
        Ok(exception) => PyErr::from_value(exception),
        Err(e) => e,
    }
}

/// What a run ended with, and whether the user asked it to stop.
struct Waited {
    outcome: Result<String, miwv::Error>,
    interrupted: bool,
}

/// Runs `work` on a worker thread and waits for it with the GIL released, passing its
/// events to `on_event` between waits. The first Ctrl-C sets `stop`, which the run honours
/// at its next batch with its checkpoint saved; a callback that raises stops it the same
/// way, and its exception is raised once the run has stopped.
fn wait(
    py: Python<'_>,
    on_event: &Bound<'_, PyAny>,
    stop: &AtomicBool,
    work: impl FnOnce(&AtomicBool) -> Result<String, miwv::Error> + Send,
) -> PyResult<Waited> {
    let (sender, mut receiver) = channel();
    let _route = Route::to(sender);
    let mut interrupted = false;
    let mut raised: Option<PyErr> = None;
    // Ctrl-C surfaces as a KeyboardInterrupt from the signal check or from inside the
    // callback, wherever Python ran its handler; either way it only stops the run.
    let mut stopped_by = |e: PyErr| {
        stop.store(true, Ordering::SeqCst);
        if !e.is_instance_of::<PyKeyboardInterrupt>(py) {
            raised.get_or_insert(e);
        } else if !std::mem::replace(&mut interrupted, true) {
            tracing::warn!("stopping after the current batch; call again to resume");
        }
    };
    let outcome = std::thread::scope(|scope| {
        let worker = scope.spawn(move || work(stop));
        loop {
            let finished = worker.is_finished();
            let (back, events) = py.detach(move || next_events(receiver));
            receiver = back;
            for event in events {
                if let Err(e) = deliver(on_event, event) {
                    stopped_by(e);
                }
            }
            if let Err(e) = py.check_signals() {
                stopped_by(e);
            }
            if finished {
                break;
            }
        }
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    });
    match raised {
        Some(e) => Err(e),
        None => Ok(Waited {
            outcome,
            interrupted,
        }),
    }
}

/// The events sent within one [`POLL`], handing the receiver back.
fn next_events(receiver: Receiver<Event>) -> (Receiver<Event>, Vec<Event>) {
    let mut events = Vec::new();
    match receiver.recv_timeout(POLL) {
        Ok(event) => events.push(event),
        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
    }
    events.extend(receiver.try_iter());
    (receiver, events)
}

fn deliver(on_event: &Bound<'_, PyAny>, event: Event) -> PyResult<()> {
    match event {
        Event::Log(level, target, message) => on_event.call1(("log", level, target, message)),
        Event::Phase(PhaseEvent::Started { phase, total, unit }) => {
            on_event.call1(("started", phase, total, unit))
        }
        Event::Phase(PhaseEvent::Advanced { phase, done }) => {
            on_event.call1(("advanced", phase, done))
        }
        Event::Phase(PhaseEvent::Noted { phase, message }) => {
            on_event.call1(("noted", phase, message))
        }
        Event::Phase(PhaseEvent::Finished { phase }) => on_event.call1(("finished", phase)),
    }
    .map(drop)
}

/// What the worker thread tells the waiting one.
enum Event {
    /// A log record: Python's level number, the Rust target, the formatted message.
    Log(u32, String, String),
    /// A progress bar's event.
    Phase(PhaseEvent),
}

/// Where log records and progress go while a call runs; one call at a time gets them.
fn sink() -> &'static Mutex<Option<Sender<Event>>> {
    static SINK: Mutex<Option<Sender<Event>>> = Mutex::new(None);
    &SINK
}

/// Sends the run's log records and progress to one call's channel until dropped.
struct Route;

impl Route {
    fn to(sender: Sender<Event>) -> Self {
        let phases = sender.clone();
        progress::observe(Some(Arc::new(move |event| {
            let _ = phases.send(Event::Phase(event));
        })));
        *sink().lock().unwrap_or_else(|e| e.into_inner()) = Some(sender);
        Route
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        progress::observe(None);
        *sink().lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Sets which records are made, by the binary's rule ([`miwv::cli::log_filter`]): the
/// Python logger at DEBUG counts as `-v`, below it (TRACE, 5) as `-vv`.
fn set_log_filter(python_level: u32, verbose: u8) {
    let Some(handle) = log_filter() else {
        return;
    };
    let asked = match python_level {
        0..=5 => 2,
        6..=10 => 1,
        _ => 0,
    };
    let _ = handle.reload(miwv::cli::log_filter(verbose.max(asked)));
}

/// The process's tracing subscriber, which forwards to the running call; installed on the
/// first call. `None` when the process already had another (the `miwv` command's).
fn log_filter() -> Option<&'static reload::Handle<EnvFilter, Registry>> {
    static HANDLE: OnceLock<Option<reload::Handle<EnvFilter, Registry>>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let (filter, handle) = reload::Layer::new(miwv::cli::log_filter(0));
            let subscriber = Registry::default().with(filter).with(Forward);
            tracing::subscriber::set_global_default(subscriber)
                .ok()
                .map(|()| handle)
        })
        .as_ref()
}

/// A tracing layer that formats each record as the binary's log line does (the message,
/// then `field=value` pairs) and sends it to the running call.
struct Forward;

impl<S: tracing::Subscriber> Layer<S> for Forward {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let Some(sender) = sink().lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return;
        };
        let mut text = Text::default();
        event.record(&mut text);
        let metadata = event.metadata();
        let level = match *metadata.level() {
            tracing::Level::ERROR => 40,
            tracing::Level::WARN => 30,
            tracing::Level::INFO => 20,
            tracing::Level::DEBUG => 10,
            tracing::Level::TRACE => 5,
        };
        let _ = sender.send(Event::Log(
            level,
            metadata.target().to_string(),
            text.line(),
        ));
    }
}

/// A record's message and fields.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Text {
    fn line(self) -> String {
        match (self.message.is_empty(), self.fields.is_empty()) {
            (_, true) => self.message,
            (true, false) => self.fields,
            (false, false) => format!("{} {}", self.message, self.fields),
        }
    }
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
            return;
        }
        if !self.fields.is_empty() {
            self.fields.push(' ');
        }
        self.fields += &format!("{}={value:?}", field.name());
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(main, m)?)?;
    m.add_function(wrap_pyfunction!(flags, m)?)?;
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add("OPENMP_WAIT", miwv::engine::OPENMP_WAIT)?;
    m.add(
        "OPENMP_WAIT_VARIABLES",
        miwv::engine::OPENMP_WAIT_VARIABLES.to_vec(),
    )?;
    Ok(())
}
