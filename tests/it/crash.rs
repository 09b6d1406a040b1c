//! Crash safety: a run killed at random moments and resumed each time ends with exactly the
//! outputs of an uninterrupted run; Ctrl-C stops cleanly; a torn log line, a full disk and a
//! change of settings are handled without losing or mixing work; no network is touched.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{miwv, read_jsonl, read_selected, write_examples};
use serde_json::Value;

/// The share selected by the runs compared.
const RATIO: &str = "0.25";

/// Small sizes so a run takes seconds, with a checkpoint wherever the cache empties.
fn select_args(data: &Path, out: &Path, ratio: &str) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "select".into(),
        data.display().to_string(),
        "-o".into(),
        out.display().to_string(),
    ];
    args.extend(
        [
            "-c",
            "512",
            "-b",
            "512",
            "--ubatch-size",
            "256",
            "--checkpoint-tokens",
            "1",
            "-r",
            ratio,
        ]
        .map(String::from),
    );
    args
}

fn run_to_end(data: &Path, out: &Path, ratio: &str) -> Output {
    let output = miwv().args(select_args(data, out, ratio)).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

struct Reference {
    dir: tempfile::TempDir,
    data: PathBuf,
    out: PathBuf,
    took: Duration,
}

/// One uninterrupted run, made without network where the machine allows a network namespace,
/// and checked for network sockets under strace where that is installed.
fn reference() -> &'static Reference {
    static REFERENCE: OnceLock<Reference> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data.json");
        write_examples(&data, 12);
        let out = dir.path().join("reference");
        let args = select_args(&data, &out, RATIO);
        let trace = dir.path().join("network.trace");
        let (mut command, traced) = isolated_command(&args, &trace);
        let started = Instant::now();
        let output = command.output().unwrap();
        let took = started.elapsed();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        if traced {
            let trace = std::fs::read_to_string(&trace).expect("strace wrote its log");
            assert!(
                !trace.contains("AF_INET"),
                "miwv opened a network socket:\n{trace}"
            );
        }
        Reference {
            dir,
            data,
            out,
            took,
        }
    })
}

/// `miwv ARGS` inside a new user and network namespace (no network at all) and under strace
/// (socket and connect calls logged to `trace`). Without either the run goes on unisolated,
/// unless `MIWV_REQUIRE_NETNS` asks for both. Also says whether it is traced.
fn isolated_command(args: &[String], trace: &Path) -> (Command, bool) {
    let mut line: Vec<String> = Vec::new();
    let namespace = common::runs("unshare", &["-rn", "true"]);
    let strace = common::runs("strace", &["-o", "/dev/null", "true"]);
    let isolated = common::environment_allows(
        "NETNS",
        "`unshare -rn` and `strace` to run without network and trace sockets",
        namespace && strace,
    );
    if isolated {
        line.extend(["unshare", "-rn", "strace", "-f", "-qq"].map(String::from));
        line.extend(["-e", "trace=socket,connect", "-o"].map(String::from));
        line.push(trace.display().to_string());
    }
    line.push(env!("CARGO_BIN_EXE_miwv").into());
    line.extend(args.iter().cloned());
    let mut command = Command::new(&line[0]);
    command.args(&line[1..]).current_dir(common::root());
    (command, isolated)
}

fn assert_same_outputs(out: &Path, reference: &Path) {
    for file in ["scores.jsonl", "selected.json"] {
        let (got, want) = (
            std::fs::read(out.join(file)).unwrap(),
            std::fs::read(reference.join(file)).unwrap(),
        );
        assert!(
            got == want,
            "{} differs from the uninterrupted run",
            out.join(file).display()
        );
    }
}

/// Every (sample, pass) loss in the log, which must appear at most once.
fn logged_losses(out: &Path) -> Vec<(u64, String, String)> {
    let lines = read_jsonl(&out.join("checkpoint/losses.jsonl"));
    let mut losses: Vec<(u64, String, String)> = lines[1..]
        .iter()
        .flat_map(|commit| commit["losses"].as_array().unwrap().clone())
        .map(|l| {
            (
                l["sample"].as_u64().unwrap(),
                l["pass"].as_str().unwrap().to_string(),
                l["value"].to_string(),
            )
        })
        .collect();
    losses.sort();
    let before = losses.len();
    losses.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    assert_eq!(before, losses.len(), "a loss was logged twice");
    losses
}

fn run_json(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap()
}

/// xorshift64*, seeded from the clock and printed, so a failure can be replayed with
/// MIWV_KILL_SEED.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::env::var("MIWV_KILL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("kill schedule seed: MIWV_KILL_SEED={seed}");
        Self(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[test]
fn sigkill_at_random_moments_then_resume_gives_the_uninterrupted_outputs() {
    let reference = reference();
    let want_losses = logged_losses(&reference.out);
    let mut rng = Rng::new();
    let mut kills = 0;
    let mut finished_runs = 0;
    let mut attempt = 0;
    let mut out = reference.dir.path().join("killed-0");
    while kills < 12 {
        attempt += 1;
        let mut child = miwv()
            .args(select_args(&reference.data, &out, RATIO))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Anywhere from before the models load to past the end of a whole run.
        let longest = reference.took.as_millis() as u64 * 6 / 5;
        let delay = Duration::from_millis(50 + rng.below(longest));
        let started = Instant::now();
        let finished = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() >= delay {
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        match finished {
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
                eprintln!("attempt {attempt}: killed after {delay:?}");
            }
            Some(status) => {
                // The run ended before its kill: check it, then start over to kill more.
                assert!(status.success(), "attempt {attempt} failed: {status}");
                assert_same_outputs(&out, &reference.out);
                assert_eq!(logged_losses(&out), want_losses);
                finished_runs += 1;
                out = reference.dir.path().join(format!("killed-{finished_runs}"));
            }
        }
    }
    run_to_end(&reference.data, &out, RATIO);
    assert_same_outputs(&out, &reference.out);
    assert_eq!(
        logged_losses(&out),
        want_losses,
        "every loss logged once, none missing"
    );
    let run = run_json(&out);
    eprintln!(
        "{kills} kills in {attempt} attempts; the last run resumed {} of {} steps",
        run["scoring"]["resumed_steps"], run["scoring"]["planned_steps"]
    );
}

#[test]
fn ctrl_c_stops_cleanly_and_the_rerun_resumes() {
    let reference = reference();
    let out = reference.dir.path().join("interrupted");
    // One worker saves its segments as it finishes them, so the first checkpoint leaves most
    // of the plan to do; with several, the first segment can be saved last, with all the rest.
    let mut child = miwv()
        .args(select_args(&reference.data, &out, RATIO))
        .args(["--workers", "1"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let log = out.join("checkpoint/losses.jsonl");
    // Interrupt once the first checkpoint is saved.
    let started = Instant::now();
    while std::fs::read_to_string(&log).map_or(0, |l| l.lines().count()) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint saved"
        );
        assert!(child.try_wait().unwrap().is_none(), "finished too soon");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The shell's built-in kill: a bare machine may have no /bin/kill.
    let sent = Command::new("sh")
        .args(["-c", &format!("kill -INT {}", child.id())])
        .status()
        .unwrap();
    assert!(sent.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("run the same command again to resume"),
        "{stderr}"
    );
    assert!(
        !out.join("scores.jsonl").exists(),
        "no outputs from a stopped run"
    );

    let output = run_to_end(&reference.data, &out, RATIO);
    assert!(String::from_utf8_lossy(&output.stderr).contains("resuming"));
    assert_same_outputs(&out, &reference.out);
    assert!(run_json(&out)["scoring"]["resumed_steps"].as_u64().unwrap() > 0);
}

#[test]
fn a_torn_log_line_is_cut_off_and_other_settings_are_refused() {
    let reference = reference();
    let out = reference.dir.path().join("torn");
    copy_dir(&reference.out.join("checkpoint"), &out.join("checkpoint"));
    // A kill in the middle of a write leaves a line without its end.
    let log = out.join("checkpoint/losses.jsonl");
    let mut text = std::fs::read_to_string(&log).unwrap();
    let last = text.trim_end().rfind('\n').unwrap() + 1;
    let torn = text[last..last + 40].to_string();
    text.truncate(last);
    text.push_str(&torn);
    std::fs::write(&log, text).unwrap();

    let output = run_to_end(&reference.data, &out, RATIO);
    assert!(String::from_utf8_lossy(&output.stderr).contains("torn last line"));
    assert_same_outputs(&out, &reference.out);

    // A different template would change every score: refused, naming it.
    let output = miwv()
        .args(select_args(&reference.data, &out, RATIO))
        .args(["--template", "raw"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("other settings (template)"), "{stderr}");

    // Threads and the budget do not change scores: the saved work is reused as is.
    let output = miwv()
        .args(select_args(&reference.data, &out, "0.5"))
        .args(["-t", "1"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let run = run_json(&out);
    assert_eq!(run["scoring"]["decodes"], 0, "{run}");
    assert_eq!(read_selected(&out).len(), 6);
}

#[test]
fn a_full_disk_is_a_clear_error_and_loses_nothing() {
    let reference = reference();
    let can_mount = common::runs(
        "unshare",
        &["-rm", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"],
    );
    if !common::environment_allows(
        "TMPFS",
        "a small tmpfs mounted in a user namespace (`unshare -rm`)",
        can_mount,
    ) {
        return;
    }
    // A disk just big enough for the saved work but not for the outputs.
    let checkpoint = reference.out.join("checkpoint");
    let pages: u64 = std::fs::read_dir(&checkpoint)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len().div_ceil(4096))
        .sum();
    let work = reference.dir.path().join("disk-full");
    std::fs::create_dir_all(&work).unwrap();
    let mount = work.join("mnt");
    std::fs::create_dir_all(&mount).unwrap();
    let bin = env!("CARGO_BIN_EXE_miwv");
    let args = select_args(&reference.data, &mount.join("out"), RATIO).join(" ");
    let script = format!(
        "set -e
         mount -t tmpfs -o size={kib}k none {mnt}
         mkdir {mnt}/out && cp -r {checkpoint} {mnt}/out/
         set +e
         {bin} {args} > /dev/null 2> {work}/full.err
         echo $? > {work}/full.rc
         ls {mnt}/out > {work}/full.ls
         set -e
         mount -o remount,size=16m {mnt}
         {bin} {args} > /dev/null 2> {work}/second.err
         cp {mnt}/out/scores.jsonl {mnt}/out/selected.json {mnt}/out/run.json {work}/",
        kib = (pages + 1) * 4,
        mnt = mount.display(),
        checkpoint = checkpoint.display(),
        work = work.display(),
    );
    let status = Command::new("unshare")
        .args(["-rm", "sh", "-c", &script])
        .current_dir(common::root())
        .status()
        .unwrap();
    let read = |name: &str| std::fs::read_to_string(work.join(name)).unwrap_or_default();
    assert!(status.success(), "{}", read("second.err"));
    assert_eq!(read("full.rc").trim(), "1", "{}", read("full.err"));
    assert!(
        read("full.err").contains("No space left on device") && read("full.err").contains("/out/"),
        "{}",
        read("full.err")
    );
    let listing = read("full.ls");
    assert!(
        !listing.contains("tmp") && !listing.contains("run.json"),
        "no partial file is left, and no run.json vouches for an incomplete set: {listing}"
    );
    assert_same_outputs(&work, &reference.out);
    assert_eq!(run_json(&work)["scoring"]["decodes"], 0, "nothing rescored");
}

#[test]
fn a_log_that_cannot_grow_is_a_clear_error_and_loses_nothing() {
    let reference = reference();
    let log_bytes = std::fs::metadata(reference.out.join("checkpoint/losses.jsonl"))
        .unwrap()
        .len();
    assert!(
        log_bytes > 1024,
        "the log must outgrow the 1 KiB limit below"
    );
    let out = reference.dir.path().join("log-limit");
    copy_dir(&reference.out.join("checkpoint"), &out.join("checkpoint"));
    std::fs::remove_file(out.join("checkpoint/losses.jsonl")).unwrap();
    // Files may grow to 1 KiB only (RLIMIT_FSIZE), as on a disk that fills mid-run; with
    // SIGXFSZ ignored the write fails with EFBIG instead of killing the process.
    let output = Command::new("bash")
        .args(["-c", "trap '' XFSZ; ulimit -f 1; exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_miwv"))
        .args(select_args(&reference.data, &out, RATIO))
        .current_dir(common::root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("losses.jsonl") && stderr.contains("File too large"),
        "{stderr}"
    );
    let saved = std::fs::read_to_string(out.join("checkpoint/losses.jsonl")).unwrap();
    assert!(
        saved.lines().count() >= 2,
        "checkpoints before the limit are kept"
    );

    run_to_end(&reference.data, &out, RATIO);
    assert_same_outputs(&out, &reference.out);
    assert!(run_json(&out)["scoring"]["resumed_steps"].as_u64().unwrap() > 0);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}
