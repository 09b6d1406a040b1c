//! One process per run directory and per shard, through the binary: a second `select` on one
//! `--out` and a second copy of one score shard are refused at once, naming the holder, and a
//! holder killed with SIGKILL leaves no lock behind.
//!
//! The holder is made to wait without any timing: its data file is a named pipe that nothing
//! writes, so it blocks reading the data while it holds the lock.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{miwv, write_examples};

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn mkfifo(at: &Path) {
    let made = Command::new("mkfifo").arg(at).status().unwrap();
    assert!(made.success(), "mkfifo {}", at.display());
}

/// Starts `miwv ARGS` and waits until the lock file `lock` names it as its holder.
fn holding(args: &[&str], lock: &Path) -> Child {
    let mut child = miwv()
        .args(args)
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = format!("\"pid\":{}", child.id());
    let started = Instant::now();
    while !std::fs::read_to_string(lock).is_ok_and(|text| text.contains(&pid)) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{args:?} ended before taking its lock"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no lock taken"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

fn run(args: &[&str]) -> Output {
    miwv()
        .args(args)
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .output()
        .unwrap()
}

fn assert_refused_by(output: &Output, holder: &Child, command: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let named = format!("in use by `{command}` (pid {} on host {host})", holder.id());
    assert!(stderr.contains(&named), "{stderr}");
    assert!(
        stderr.contains("wait for it to finish or stop it"),
        "{stderr}"
    );
}

fn kill(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_second_select_on_one_out_is_refused_and_a_killed_holder_leaves_no_lock() {
    let dir = tempfile::tempdir().unwrap();
    let blocked = dir.path().join("blocked.json");
    mkfifo(&blocked);
    let data = dir.path().join("data.json");
    write_examples(&data, 6);
    let out = dir.path().join("out");
    let lock = out.join("checkpoint/locks/run.lock");

    let first = holding(&["select", path(&blocked), "-o", path(&out)], &lock);
    let started = Instant::now();
    let second = run(&["select", path(&data), "-o", path(&out)]);
    assert_refused_by(&second, &first, "miwv select");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused at once, not after loading models"
    );
    assert!(!out.join("scores.jsonl").exists());

    kill(first);
    let rerun = run(&["select", path(&data), "-o", path(&out)]);
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    assert!(out.join("scores.jsonl").exists());
}

#[test]
fn a_second_copy_of_a_score_shard_is_refused_while_other_shards_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.json");
    write_examples(&data, 6);
    let run_dir = dir.path().join("run");
    let staged = |args: &[&str]| {
        let output = run(args);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    staged(&["embed", path(&data), "-o", path(&run_dir), "--shard", "0/1"]);
    staged(&["neighbours", path(&run_dir)]);

    // The score stage reads the run's data file again: as a named pipe it holds shard 0/2
    // waiting, with its lock.
    let kept: PathBuf = dir.path().join("data.kept");
    std::fs::rename(&data, &kept).unwrap();
    mkfifo(&data);
    let lock = run_dir.join("checkpoint/locks/score-shard-00000-of-00002.lock");
    let first = holding(&["score", path(&run_dir), "--shard", "0/2"], &lock);

    let second = run(&["score", path(&run_dir), "--shard", "0/2"]);
    assert_refused_by(&second, &first, "miwv score --shard 0/2");
    // The whole run is in use by the shard: merge is refused too, naming it.
    let merge = run(&["merge", path(&run_dir)]);
    assert_refused_by(&merge, &first, "miwv score --shard 0/2");

    kill(first);
    std::fs::remove_file(&data).unwrap();
    std::fs::rename(&kept, &data).unwrap();
    for shard in ["0/2", "1/2"] {
        staged(&["score", path(&run_dir), "--shard", shard]);
    }
    staged(&["merge", path(&run_dir)]);
    assert!(run_dir.join("scores.jsonl").exists());
}
