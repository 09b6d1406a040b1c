//! How big a scoring context is and how many threads decode with it: the sizes every decode
//! step is planned against, and the CPU threads a machine offers by default.

use serde::{Deserialize, Serialize};

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
