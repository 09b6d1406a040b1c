//! One process at a time per run directory and per shard.
//!
//! Two processes writing one run (a second terminal, a re-queued Slurm task, `submit.sh` run
//! twice) would interleave their checkpoint logs and outputs. Each command therefore holds an
//! advisory lock (`flock(2)`, through the standard library) on a file in the run's
//! `checkpoint/` directory while it runs. The kernel releases it when the process ends, however
//! it ends, so a crash or `kill -9` never leaves a stale lock behind.
//!
//! The lock files live in `checkpoint/locks/`. `select`, `neighbours` and `merge` hold the
//! run's lock (`run.lock`) alone; the shard commands (`embed`, `score`) share it with each
//! other and hold their own shard's lock (e.g. `score-shard-0-of-4.lock`) alone, so the shards
//! of an array run side by side while two copies of one shard do not. A process holding a lock alone writes who it is into
//! the file, so a refused process can name it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("{what} is in use by {holder}; wait for it to finish or stop it, then run this command again (the lock goes with the process that holds it, so nothing needs deleting)")]
    Held {
        /// The run directory, or the shard of it.
        what: String,
        /// Who holds it, as far as the lock files tell.
        holder: String,
    },
    /// The lock file could not be opened or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Who holds a lock alone, as written into its file.
#[derive(Debug, Serialize, Deserialize)]
struct Holder {
    host: String,
    pid: u32,
    command: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` (pid {} on host {})",
            self.command, self.pid, self.host
        )
    }
}

impl Holder {
    fn this_process(command: &str) -> Self {
        Holder {
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            pid: std::process::id(),
            command: command.to_string(),
        }
    }
}

/// A held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct RunLock {
    _files: Vec<File>,
}

impl RunLock {
    /// Holds the run in `run_dir` alone, for `command` (e.g. `miwv select`).
    ///
    /// # Errors
    /// [`LockError::Held`] naming the holder when another process works on the run.
    pub fn run(run_dir: &Path, command: &str) -> Result<Self, LockError> {
        let path = run_lock_path(run_dir);
        let file = open(&path)?;
        match take(&file, &path, Mode::Alone) {
            Taken::Yes => write_holder(&path, &file, command)?,
            Taken::Busy => {
                return Err(LockError::Held {
                    what: run_dir.display().to_string(),
                    holder: run_holders(run_dir),
                })
            }
            Taken::Unsupported => {}
        }
        Ok(RunLock { _files: vec![file] })
    }

    /// Holds the shard called `shard` (e.g. `score-shard-0-of-2`) alone, and the run in
    /// `run_dir` together with the other shard commands.
    ///
    /// # Errors
    /// [`LockError::Held`] naming the holder when the shard, or the whole run, is in use.
    pub fn shard(run_dir: &Path, shard: &str, command: &str) -> Result<Self, LockError> {
        let run_path = run_lock_path(run_dir);
        let run = open(&run_path)?;
        match take(&run, &run_path, Mode::Shared) {
            // No process holds the run alone now: whatever its file names is a past holder.
            Taken::Yes => run.set_len(0).map_err(|source| LockError::Io {
                path: run_path.clone(),
                source,
            })?,
            Taken::Busy => return Err(held(run_dir.display().to_string(), &run_path)),
            Taken::Unsupported => {}
        }
        let path = locks_dir(run_dir).join(format!("{shard}.lock"));
        let file = open(&path)?;
        match take(&file, &path, Mode::Alone) {
            Taken::Yes => write_holder(&path, &file, command)?,
            Taken::Busy => return Err(held(format!("{} ({shard})", run_dir.display()), &path)),
            Taken::Unsupported => {}
        }
        Ok(RunLock {
            _files: vec![run, file],
        })
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Alone,
    Shared,
}

enum Taken {
    Yes,
    Busy,
    /// The file system cannot lock (some network file systems, see the README): the run
    /// goes on unguarded, and says so.
    Unsupported,
}

fn take(file: &File, path: &Path, mode: Mode) -> Taken {
    let tried = match mode {
        Mode::Alone => file.try_lock(),
        Mode::Shared => file.try_lock_shared(),
    };
    match tried {
        Ok(()) => Taken::Yes,
        Err(TryLockError::WouldBlock) => Taken::Busy,
        Err(TryLockError::Error(e)) => {
            tracing::warn!(
                "{}: cannot lock ({e}); nothing stops a second process from writing this run at the same time",
                path.display()
            );
            Taken::Unsupported
        }
    }
}

/// `what` is in use by the process its lock file `path` names.
fn held(what: String, path: &Path) -> LockError {
    LockError::Held {
        what,
        holder: holder_in(path).unwrap_or_else(|| "another miwv process".into()),
    }
}

fn locks_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoint").join("locks")
}

/// The run's lock file.
fn run_lock_path(run_dir: &Path) -> PathBuf {
    locks_dir(run_dir).join("run.lock")
}

fn open(path: &Path) -> Result<File, LockError> {
    let io = |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io)
}

fn write_holder(path: &Path, mut file: &File, command: &str) -> Result<(), LockError> {
    let record = serde_json::to_string(&Holder::this_process(command)).expect("a plain record");
    file.set_len(0)
        .and_then(|()| file.write_all(record.as_bytes()))
        .map_err(|source| LockError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// The holder a lock file names, if it names one.
fn holder_in(path: &Path) -> Option<String> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    serde_json::from_str::<Holder>(&text)
        .ok()
        .map(|h| h.to_string())
}

/// Who holds the run in `run_dir`: the process that holds it alone, or else every shard
/// command working on it.
fn run_holders(run_dir: &Path) -> String {
    if let Some(holder) = holder_in(&run_lock_path(run_dir)) {
        return holder;
    }
    let mut shards: Vec<String> = std::fs::read_dir(locks_dir(run_dir))
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let busy = path != run_lock_path(run_dir)
                && matches!(
                    File::open(&path).ok()?.try_lock_shared(),
                    Err(TryLockError::WouldBlock)
                );
            busy.then(|| holder_in(&path)).flatten()
        })
        .collect();
    shards.sort();
    if shards.is_empty() {
        "another miwv process".into()
    } else {
        shards.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_held_by_one_process_and_shards_side_by_side() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        let shard = |k: usize| format!("score-shard-{k}-of-2");

        let select = RunLock::run(run, "miwv select").unwrap();
        let refused = RunLock::run(run, "miwv select").unwrap_err().to_string();
        assert!(refused.contains("`miwv select` (pid "), "{refused}");
        assert!(
            refused.contains(&std::process::id().to_string()),
            "{refused}"
        );
        let refused = RunLock::shard(run, &shard(0), "miwv score").unwrap_err();
        assert!(refused.to_string().contains("`miwv select`"), "{refused}");
        drop(select);

        let first = RunLock::shard(run, &shard(0), "miwv score --shard 0/2").unwrap();
        let second = RunLock::shard(run, &shard(1), "miwv score --shard 1/2").unwrap();
        let again = RunLock::shard(run, &shard(0), "miwv score --shard 0/2").unwrap_err();
        assert!(
            again.to_string().contains("`miwv score --shard 0/2`"),
            "{again}"
        );
        let merge = RunLock::run(run, "miwv merge").unwrap_err().to_string();
        assert!(
            merge.contains("`miwv score --shard 0/2`")
                && merge.contains("`miwv score --shard 1/2`"),
            "{merge}"
        );
        drop((first, second));
        RunLock::run(run, "miwv merge").unwrap();
    }
}
