//! How big a scoring context is and how many threads decode with it: the sizes every decode
//! step is planned against, how they are fitted to the data and to a memory budget, and the
//! CPU threads and memory a machine offers by default.

use serde::{Deserialize, Serialize};

/// How long a scoring context's sequences may be, as asked (`--ctx-size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "CtxSizeText", into = "CtxSizeText")]
pub enum CtxSize {
    /// As long as the longest sequence the plan needs, within the model's training context
    /// and the memory budget (see [`SizeRequest::fit`]).
    Auto,
    /// This many tokens.
    Tokens(usize),
}

/// [`CtxSize`] as JSON writes it: `"auto"` or a number.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum CtxSizeText {
    Tokens(usize),
    Word(AutoWord),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum AutoWord {
    Auto,
}

impl From<CtxSizeText> for CtxSize {
    fn from(text: CtxSizeText) -> Self {
        match text {
            CtxSizeText::Tokens(n) => CtxSize::Tokens(n),
            CtxSizeText::Word(AutoWord::Auto) => CtxSize::Auto,
        }
    }
}

impl From<CtxSize> for CtxSizeText {
    fn from(size: CtxSize) -> Self {
        match size {
            CtxSize::Tokens(n) => CtxSizeText::Tokens(n),
            CtxSize::Auto => CtxSizeText::Word(AutoWord::Auto),
        }
    }
}

impl std::str::FromStr for CtxSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "auto" => Ok(CtxSize::Auto),
            n => n
                .parse()
                .map(CtxSize::Tokens)
                .map_err(|_| format!("expected `auto` or a number of tokens, got `{text}`")),
        }
    }
}

impl std::fmt::Display for CtxSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CtxSize::Auto => f.write_str("auto"),
            CtxSize::Tokens(n) => write!(f, "{n}"),
        }
    }
}

/// llama.cpp pads a KV cache to 256 cells, so an automatic context is a multiple of it.
pub const CTX_STEP: usize = 256;

/// Context sizes as a run asks for them; [`SizeRequest::fit`] makes them the
/// [`ContextSizes`] its plan is decoded with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeRequest {
    /// The longest sequence: fitted to the data, or fixed.
    pub ctx: CtxSize,
    /// KV slots at most; fewer when the memory budget needs it.
    pub parallel: usize,
    /// Most tokens per decode call; raised to the context when a sequence needs it.
    pub batch: usize,
    /// Most tokens per compute step.
    pub ubatch: usize,
    /// CPU threads, shared out among the workers.
    pub threads: usize,
    /// Scoring contexts at most; fewer when the memory budget needs it.
    pub workers: usize,
    /// Bytes the weights and every worker's context may take together; `None`:
    /// [`default_memory_budget`].
    #[serde(default)]
    pub memory_budget: Option<u64>,
}

/// What bounds a context besides the request: the model and the memory at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// The model's training context (0: unknown).
    pub trained: usize,
    /// Bytes of the weights, shared by every worker.
    pub weights: u64,
    /// Bytes the weights and the contexts may take together.
    pub budget: u64,
}

/// The memory budget cannot hold the weights and one context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--memory-budget {budget_mib} MiB cannot hold the weights ({weights_mib} MiB) and one \
     context of {ctx} tokens ({context_mib} MiB); raise --memory-budget or lower --ctx-size"
)]
pub struct FitError {
    /// The budget.
    pub budget_mib: u64,
    /// The weights.
    pub weights_mib: u64,
    /// The context's tokens.
    pub ctx: usize,
    /// One context of one slot.
    pub context_mib: u64,
}

/// How a run's context was fitted, for `run.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextFit {
    /// `--ctx-size` as asked.
    pub asked: CtxSize,
    /// The longest sequence any sample could have: the fixed size, or the model's training
    /// context within the budget. Longer ones are unscorable, never cut.
    pub limit: usize,
    /// The longest sequence the plan decodes.
    pub longest_sequence: usize,
    /// The model's training context (0: unknown).
    pub training_context: usize,
    /// The memory budget, MiB.
    pub memory_budget_mib: u64,
    /// The weights and every worker's context at the fitted sizes, MiB (estimated).
    pub memory_mib: u64,
    /// The sizes decoded with.
    pub sizes: ContextSizes,
}

fn mib(bytes: u64) -> u64 {
    bytes / (1 << 20)
}

impl ContextFit {
    /// Whether these sizes still fit `room`'s budget (a resumed run keeps them while they do).
    pub fn fits(&self, room: &Room) -> bool {
        self.memory_mib <= mib(room.budget)
    }
}

impl CtxSize {
    /// The fixed number of tokens; `None` for `auto`.
    pub fn tokens(self) -> Option<usize> {
        match self {
            CtxSize::Tokens(n) => Some(n),
            CtxSize::Auto => None,
        }
    }
}

impl SizeRequest {
    /// Sizes for sequences of `ctx` tokens in `parallel` slots, `workers` contexts: the batch
    /// raised to hold one sequence and kept within what the slots hold.
    pub fn at(&self, ctx: usize, parallel: usize, workers: usize) -> ContextSizes {
        let batch = self.batch.max(ctx).min(ctx * parallel);
        ContextSizes {
            ctx_per_sequence: ctx,
            parallel,
            batch,
            ubatch: self.ubatch.min(batch),
            threads: self.threads,
            workers,
        }
    }

    /// The longest sequence a plan may hold: the fixed size, or for `auto` the model's
    /// training context, lowered (in steps of [`CTX_STEP`]) until the weights and one context
    /// of one slot fit the budget. `memory` is what one context of given sizes allocates.
    ///
    /// # Errors
    /// [`FitError`] when not even the shortest automatic context fits.
    pub fn limit(
        &self,
        room: &Room,
        memory: &dyn Fn(&ContextSizes) -> u64,
    ) -> Result<usize, FitError> {
        if let CtxSize::Tokens(n) = self.ctx {
            return Ok(n);
        }
        // A model that does not say: llama.cpp's own largest context.
        let trained = if room.trained > 0 {
            room.trained
        } else {
            u32::MAX as usize / 2
        };
        let fits =
            |ctx: usize| room.weights.saturating_add(memory(&self.at(ctx, 1, 1))) <= room.budget;
        if fits(trained) {
            return Ok(trained);
        }
        let shortest = CTX_STEP.min(trained);
        if !fits(shortest) {
            return Err(self.too_small(room, shortest, memory));
        }
        // The most steps that fit, by bisection: memory grows with the context.
        let (mut fitting, mut failing) = (1, trained.div_ceil(CTX_STEP));
        while failing - fitting > 1 {
            let middle = (fitting + failing) / 2;
            if fits(middle * CTX_STEP) {
                fitting = middle;
            } else {
                failing = middle;
            }
        }
        Ok(fitting * CTX_STEP)
    }

    /// The sizes a plan whose longest sequence is `longest` is decoded with, no sequence
    /// being longer than `limit` ([`SizeRequest::limit`]). An automatic context is `longest`
    /// rounded up to [`CTX_STEP`]. Then the most slots and workers asked for that fit the
    /// budget: slots are given up first down to two (two still reuse a neighbour's cache),
    /// then workers, then the second slot. Nothing is cut to fit.
    ///
    /// # Errors
    /// [`FitError`] when one context of one slot does not fit the budget.
    pub fn fit(
        &self,
        longest: usize,
        limit: usize,
        room: &Room,
        memory: &dyn Fn(&ContextSizes) -> u64,
    ) -> Result<ContextFit, FitError> {
        let ctx = match self.ctx {
            CtxSize::Tokens(n) => n,
            CtxSize::Auto => longest.max(16).next_multiple_of(CTX_STEP).min(limit),
        };
        let total = |s: &ContextSizes| {
            room.weights
                .saturating_add((s.workers as u64).saturating_mul(memory(s)))
        };
        let (most_slots, most_workers) = (self.parallel.max(1), self.workers.max(1));
        let slots_then_workers = (most_slots.min(2)..=most_slots)
            .rev()
            .map(|p| (p, most_workers))
            .chain((1..most_workers).rev().map(|w| (most_slots.min(2), w)))
            .chain((1..=most_workers).rev().map(|w| (1, w)));
        let sizes = slots_then_workers
            .map(|(p, w)| self.at(ctx, p, w))
            .find(|s| total(s) <= room.budget)
            .ok_or_else(|| self.too_small(room, ctx, memory))?;
        Ok(ContextFit {
            asked: self.ctx,
            limit,
            longest_sequence: longest,
            training_context: room.trained,
            memory_budget_mib: mib(room.budget),
            memory_mib: mib(total(&sizes)),
            sizes,
        })
    }

    fn too_small(
        &self,
        room: &Room,
        ctx: usize,
        memory: &dyn Fn(&ContextSizes) -> u64,
    ) -> FitError {
        FitError {
            budget_mib: mib(room.budget),
            weights_mib: mib(room.weights),
            ctx,
            context_mib: mib(memory(&self.at(ctx, 1, 1))),
        }
    }
}

/// Sizes of a scoring context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextSizes {
    /// KV cells per sequence: the longest sequence that can be scored.
    pub ctx_per_sequence: usize,
    /// Sequences decoded together (each gets its own KV stream).
    pub parallel: usize,
    /// Most tokens in one `llama_decode` call.
    pub batch: usize,
    /// Most tokens in one physical compute step.
    pub ubatch: usize,
    /// CPU threads, shared out among the workers.
    pub threads: usize,
    /// Scoring contexts that decode different segments of the plan at once, each with
    /// `threads / workers` threads (see [`ContextSizes::threads_per_worker`]).
    #[serde(default = "one_worker")]
    pub workers: usize,
}

fn one_worker() -> usize {
    1
}

impl ContextSizes {
    /// Workers when the user names none: on the CPU one per thread, so no thread ever waits
    /// at a barrier for another (a core taken by another program then slows one worker, not
    /// every decode); with layers on a GPU one, which keeps the GPU busy alone.
    pub fn default_workers(threads: usize, gpu_layers: u32) -> usize {
        if gpu_layers > 0 {
            1
        } else {
            threads.max(1)
        }
    }

    /// Threads each worker's context computes with.
    pub fn threads_per_worker(&self) -> usize {
        (self.threads / self.workers.max(1)).max(1)
    }
}

/// CPU threads when the user names none: one per physical performance core, as llama.cpp
/// recommends. Hyper-threads share a core's arithmetic units and a laptop's efficiency cores
/// are slower, so a thread on either makes every other thread wait for it. Never more than
/// the CPUs this process may use (its affinity and cgroup quota).
pub fn default_threads() -> usize {
    let allowed = std::thread::available_parallelism().map_or(1, usize::from);
    performance_cores().map_or(allowed, |cores| cores.clamp(1, allowed))
}

/// Physical cores, efficiency cores left out, where the system says; `None` elsewhere.
#[cfg(target_os = "linux")]
fn performance_cores() -> Option<usize> {
    use std::collections::HashSet;
    let cpus = std::path::Path::new("/sys/devices/system/cpu");
    // On Intel hybrid CPUs the kernel lists the performance cores' CPUs here.
    let performance = std::fs::read_to_string("/sys/devices/cpu_core/cpus")
        .ok()
        .map(|list| cpu_list(list.trim()));
    let mut cores = HashSet::new();
    for entry in std::fs::read_dir(cpus).ok()?.flatten() {
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_prefix("cpu"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if performance.as_ref().is_some_and(|p| !p.contains(&id)) {
            continue;
        }
        let siblings = std::fs::read_to_string(entry.path().join("topology/thread_siblings_list"));
        // A CPU taken offline has no topology; it runs nothing.
        if let Ok(siblings) = siblings {
            cores.insert(siblings.trim().to_string());
        }
    }
    (!cores.is_empty()).then_some(cores.len())
}

/// Apple Silicon's performance cores (`hw.perflevel0`); Intel Macs' physical cores.
#[cfg(target_os = "macos")]
fn performance_cores() -> Option<usize> {
    ["hw.perflevel0.physicalcpu", "hw.physicalcpu"]
        .iter()
        .find_map(|key| {
            let out = std::process::Command::new("/usr/sbin/sysctl")
                .args(["-n", key])
                .output()
                .ok()?;
            String::from_utf8(out.stdout).ok()?.trim().parse().ok()
        })
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn performance_cores() -> Option<usize> {
    None
}

/// The memory budget when the user names none: three quarters of the memory this process
/// may use, leaving the rest to the system and other programs; no limit when it is unknown.
pub fn default_memory_budget() -> u64 {
    machine_memory().map_or(u64::MAX, |bytes| bytes / 4 * 3)
}

/// The machine's physical memory, or the container's limit (cgroup) when that is lower.
pub fn machine_memory() -> Option<u64> {
    // SAFETY: sysconf only reads system configuration.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let physical = (pages > 0 && page > 0).then(|| pages as u64 * page as u64);
    let limit = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|path| {
        std::fs::read_to_string(path)
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
    });
    match (physical, limit) {
        (Some(p), Some(l)) => Some(p.min(l)),
        (p, l) => p.or(l),
    }
}

/// The CPUs of a kernel CPU list such as `0-7,16-23`.
#[cfg(target_os = "linux")]
fn cpu_list(list: &str) -> Vec<usize> {
    list.split(',')
        .filter_map(|part| match part.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?..=b.parse().ok()?).collect::<Vec<_>>()),
            None => Some(vec![part.parse().ok()?]),
        })
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(ctx: CtxSize) -> SizeRequest {
        SizeRequest {
            ctx,
            parallel: 4,
            batch: 2048,
            ubatch: 512,
            threads: 2,
            workers: 2,
            memory_budget: None,
        }
    }

    /// 1 KiB per KV cell and 1 MiB per batch token, as a stand-in for the engine's estimate.
    fn memory(s: &ContextSizes) -> u64 {
        (s.ctx_per_sequence * s.parallel) as u64 * 1024 + s.batch as u64 * (1 << 20)
    }

    const GIB: u64 = 1 << 30;

    fn room(trained: usize, budget: u64) -> Room {
        Room {
            trained,
            weights: GIB,
            budget,
        }
    }

    #[test]
    fn an_automatic_context_is_the_longest_sequence_rounded_up() {
        let auto = request(CtxSize::Auto);
        let room = room(8192, 64 * GIB);
        let limit = auto.limit(&room, &memory).unwrap();
        assert_eq!(limit, 8192, "the training context when the budget allows");
        let fit = auto.fit(1700, limit, &room, &memory).unwrap();
        let s = fit.sizes;
        assert_eq!((s.ctx_per_sequence, s.parallel, s.workers), (1792, 4, 2));
        assert_eq!(s.batch, 2048, "the batch asked for holds a sequence");
        let fit = auto.fit(5000, limit, &room, &memory).unwrap();
        assert_eq!(fit.sizes.ctx_per_sequence, 5120);
        assert_eq!(fit.sizes.batch, 5120, "raised to hold one sequence");
        assert_eq!(
            auto.fit(3, limit, &room, &memory)
                .unwrap()
                .sizes
                .ctx_per_sequence,
            256
        );
    }

    #[test]
    fn the_budget_takes_slots_then_workers_then_lowers_the_limit() {
        let auto = request(CtxSize::Auto);
        // 8,192 tokens: 8 GiB of batch per context; two workers need 17 GiB with the weights.
        let tight = room(8192, 12 * GIB);
        let fit = auto.fit(8000, 8192, &tight, &memory).unwrap();
        assert_eq!((fit.sizes.parallel, fit.sizes.workers), (2, 1));
        assert!(fit.memory_mib <= 12 * 1024);
        // Less than the weights and one 8,192-token context: the limit comes down.
        let small = room(8192, 5 * GIB);
        let limit = auto.limit(&small, &memory).unwrap();
        assert_eq!(limit % CTX_STEP, 0);
        assert!((3072..8192).contains(&limit), "{limit}");
        assert!(GIB + memory(&auto.at(limit, 1, 1)) <= 5 * GIB);
        assert!(GIB + memory(&auto.at(limit + CTX_STEP, 1, 1)) > 5 * GIB);
        let err = auto.limit(&room(8192, GIB), &memory).unwrap_err();
        assert!(
            err.to_string().contains("--memory-budget 1024 MiB"),
            "{err}"
        );
    }

    #[test]
    fn a_fixed_context_stays_and_is_refused_when_it_cannot_fit() {
        let fixed = request(CtxSize::Tokens(1024));
        let room = room(8192, 64 * GIB);
        assert_eq!(fixed.limit(&room, &memory).unwrap(), 1024);
        let fit = fixed.fit(300, 1024, &room, &memory).unwrap();
        assert_eq!(fit.sizes.ctx_per_sequence, 1024);
        let huge = request(CtxSize::Tokens(1 << 16));
        assert!(huge.fit(300, 1 << 16, &room, &memory).is_err());
    }

    #[test]
    fn ctx_size_reads_and_writes_auto_or_a_number() {
        assert_eq!("auto".parse::<CtxSize>(), Ok(CtxSize::Auto));
        assert_eq!("4096".parse::<CtxSize>(), Ok(CtxSize::Tokens(4096)));
        assert!("big".parse::<CtxSize>().is_err());
        assert_eq!(serde_json::to_string(&CtxSize::Auto).unwrap(), "\"auto\"");
        assert_eq!(serde_json::to_string(&CtxSize::Tokens(512)).unwrap(), "512");
        for size in [CtxSize::Auto, CtxSize::Tokens(512)] {
            let text = serde_json::to_string(&size).unwrap();
            assert_eq!(serde_json::from_str::<CtxSize>(&text).unwrap(), size);
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn kernel_cpu_lists_are_read_with_ranges() {
        assert_eq!(cpu_list("0-3,8,10-11"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(cpu_list("5"), vec![5]);
    }

    #[test]
    fn default_threads_are_at_least_one_and_never_more_than_the_cpus_allowed() {
        let threads = default_threads();
        assert!(threads >= 1);
        assert!(threads <= std::thread::available_parallelism().map_or(1, usize::from));
    }
}
