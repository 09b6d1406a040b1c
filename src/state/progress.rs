//! Progress bars for the long phases (embedding, neighbours, scoring), a log writer that
//! keeps tracing's lines from tearing them, and the process's peak memory for the record.
//!
//! Bars draw on stderr only when it is a terminal; in a pipe or a CI log they stay silent and
//! the phases' `tracing` lines say what is going on instead. A program embedding the library
//! (the Python package) may [`observe`] the phases instead and draw them its own way.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::scoring::scheduler::Progress;

/// All bars live here, so log lines can be printed above them.
fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(|| {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        MultiProgress::with_draw_target(target)
    })
}

/// What happens to a phase, for an [`observe`]r.
#[derive(Debug, Clone, PartialEq)]
pub enum PhaseEvent {
    /// A phase began: `total` items of `unit`, or an unknown amount of work (`None`).
    Started {
        /// `embedding`, `neighbours`, `scoring`.
        phase: String,
        /// Items to do, when known.
        total: Option<u64>,
        /// What is counted (`samples`, `tokens`).
        unit: String,
    },
    /// `done` items are done, counted from the start of the phase; on the first event of a
    /// resumed phase, work an earlier run already did.
    Advanced {
        /// The phase.
        phase: String,
        /// Items done.
        done: u64,
    },
    /// The phase's note changed (`12/40 decodes`).
    Noted {
        /// The phase.
        phase: String,
        /// The note.
        message: String,
    },
    /// The phase ended.
    Finished {
        /// The phase.
        phase: String,
    },
}

/// Receives every [`PhaseEvent`] in place of the bars on stderr.
pub type Observer = Arc<dyn Fn(PhaseEvent) + Send + Sync>;

fn observer_slot() -> &'static RwLock<Option<Observer>> {
    static OBSERVER: RwLock<Option<Observer>> = RwLock::new(None);
    &OBSERVER
}

/// Sends the phases begun from now on to `observer` instead of drawing bars; `None` draws
/// bars again.
pub fn observe(observer: Option<Observer>) {
    *observer_slot().write().unwrap_or_else(|e| e.into_inner()) = observer;
}

fn observer() -> Option<Observer> {
    observer_slot()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// Whether progress is shown: bars on a terminal, or an [`observe`]r.
pub fn visible() -> bool {
    !bars().is_hidden() || observer().is_some()
}

/// One phase's bar, or its events for an [`observe`]r.
pub struct Phase {
    bar: ProgressBar,
    name: String,
    observer: Option<Observer>,
}

impl Phase {
    fn begin(name: &str, total: Option<u64>, unit: &str, bar: ProgressBar) -> Self {
        let observer = observer();
        let bar = match &observer {
            Some(observer) => {
                observer(PhaseEvent::Started {
                    phase: name.into(),
                    total,
                    unit: unit.into(),
                });
                ProgressBar::hidden()
            }
            None => bars().add(bar),
        };
        Self {
            bar,
            name: name.into(),
            observer,
        }
    }

    fn tell(&self, event: impl FnOnce(String) -> PhaseEvent) {
        if let Some(observer) = &self.observer {
            observer(event(self.name.clone()));
        }
    }

    /// A bar counting `total` items of `unit` (`samples`, `tokens`), with rate and ETA.
    pub fn new(name: &str, total: u64, unit: &str) -> Self {
        let style = ProgressStyle::with_template(&format!(
            "{{prefix:>10}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit} \
             ({{per_sec}}, ETA {{eta}}) {{msg}}"
        ))
        .expect("the template is valid")
        .progress_chars("=> ");
        let phase = Self::begin(
            name,
            Some(total),
            unit,
            ProgressBar::new(total).with_style(style),
        );
        phase.bar.set_prefix(name.to_string());
        phase.bar.enable_steady_tick(Duration::from_millis(250));
        phase
    }

    /// A bar without a known length, for short phases.
    pub fn spinner(name: &str, message: &str) -> Self {
        let style = ProgressStyle::with_template("{prefix:>10} {spinner} {msg} ({elapsed})")
            .expect("the template is valid");
        let phase = Self::begin(name, None, "", ProgressBar::new_spinner().with_style(style));
        phase.bar.set_prefix(name.to_string());
        phase.note(message.to_string());
        phase.bar.enable_steady_tick(Duration::from_millis(120));
        phase
    }

    /// Sets the count done so far.
    pub fn set(&self, done: u64) {
        self.bar.set_position(done);
        self.tell(|phase| PhaseEvent::Advanced { phase, done });
    }

    /// Starts at `done` (work a resumed run already has) without counting it in the rate.
    pub fn resume_at(&self, done: u64) {
        self.set(done);
        self.bar.reset_eta();
    }

    /// A note after the counts.
    pub fn note(&self, message: String) {
        self.tell(|phase| PhaseEvent::Noted {
            phase,
            message: message.clone(),
        });
        self.bar.set_message(message);
    }
}

impl Drop for Phase {
    fn drop(&mut self) {
        self.bar.finish();
        self.tell(|phase| PhaseEvent::Finished { phase });
    }
}

/// Scoring's progress: a bar on a terminal, a log line every 10 seconds elsewhere. Tokens an
/// earlier run already decoded are shown as done but left out of the rate.
#[derive(Default)]
pub struct ScoringProgress {
    bar: Option<Phase>,
    started: Option<Instant>,
    resumed_tokens: usize,
    last_log: f64,
}

impl ScoringProgress {
    /// Takes in where scoring is now; the first call is where this run starts.
    pub fn update(&mut self, p: Progress) {
        let started = *self.started.get_or_insert_with(Instant::now);
        let resumed_tokens = &mut self.resumed_tokens;
        let bar = self.bar.get_or_insert_with(|| {
            *resumed_tokens = p.tokens_done;
            let bar = Phase::new("scoring", p.tokens as u64, "tokens");
            bar.resume_at(p.tokens_done as u64);
            bar
        });
        bar.set(p.tokens_done as u64);
        bar.note(format!("{}/{} decodes", p.steps_done, p.steps));
        let secs = started.elapsed().as_secs_f64();
        if !visible() && (secs - self.last_log >= 10.0 || p.steps_done == p.steps) {
            self.last_log = secs;
            tracing::info!(
                "scored {}/{} decodes, {}/{} tokens, {:.0} tokens/s",
                p.steps_done,
                p.steps,
                p.tokens_done,
                p.tokens,
                (p.tokens_done - self.resumed_tokens) as f64 / secs.max(1e-9)
            );
        }
    }
}

/// A `tracing` writer for stderr that clears the bars while it prints a line.
#[derive(Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        bars().suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

/// Starts measuring the peak resident memory afresh (Linux; elsewhere a no-op).
pub fn reset_peak_rss() {
    // Linux: writing 5 resets the peak resident set size (VmHWM).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The peak resident memory since the last reset, MiB (Linux).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn an_observer_gets_a_phase_from_start_to_finish() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        observe(Some(Arc::new(move |event: PhaseEvent| {
            sink.lock().unwrap().push(event)
        })));
        {
            let phase = Phase::new("observed-phase", 10, "samples");
            phase.resume_at(3);
            phase.set(7);
        }
        observe(None);
        let phase = || "observed-phase".to_string();
        let events: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|e| format!("{e:?}").contains("observed-phase"))
            .cloned()
            .collect();
        assert_eq!(
            events,
            vec![
                PhaseEvent::Started {
                    phase: phase(),
                    total: Some(10),
                    unit: "samples".into()
                },
                PhaseEvent::Advanced {
                    phase: phase(),
                    done: 3
                },
                PhaseEvent::Advanced {
                    phase: phase(),
                    done: 7
                },
                PhaseEvent::Finished { phase: phase() },
            ]
        );
    }
}
