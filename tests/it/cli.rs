//! The command line end to end through the built binary, without loading any model: bad values
//! exit with 2 naming their flag, help works, logs to a file carry no colour codes, and
//! OpenMP waits as documented.

use std::process::{Command, Output, Stdio};

fn miwv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_miwv"))
        .args(args)
        .output()
        .unwrap()
}

/// Asserts exit code 2 and a message on stderr holding every one of `parts`, and no output.
fn assert_bad_command_line(args: &[&str], parts: &[&str]) {
    let output = miwv(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    for part in parts {
        assert!(
            stderr.contains(part),
            "{args:?}: `{part}` missing: {stderr}"
        );
    }
    assert!(output.stdout.is_empty(), "{args:?}");
}

#[test]
fn bad_values_exit_with_2_naming_the_flag() {
    assert_bad_command_line(
        &["select", "x.json", "--ratio", "1.5"],
        &["--ratio must be in (0, 1], got 1.5", "Usage: miwv select"],
    );
    assert_bad_command_line(
        &["bench", "x.json", "-ngl", "abc"],
        &["'abc'", "--n-gpu-layers"],
    );
    assert_bad_command_line(
        &["select", "x.json", "-c", "8"],
        &["--ctx-size must be at least 16, got 8"],
    );
    assert_bad_command_line(
        &["bench", "x.json", "-c", "8"],
        &["--ctx-size must be at least 16, got 8"],
    );
    assert_bad_command_line(
        &["report", "out", "--top", "0"],
        &["--top must be at least 1"],
    );
    assert_bad_command_line(
        &["select", "x.json", "-t", "1", "--workers", "2"],
        &["--workers must be at most --threads (1), got 2"],
    );
    assert_bad_command_line(
        &["quantize", "a.gguf", "b.gguf", "--type", "IQ1_S"],
        &["invalid value 'IQ1_S' for '--type <FORMAT>'"],
    );
}

#[test]
fn help_still_works() {
    for args in [&["--help"][..], &["select", "--help"], &["help", "bench"]] {
        let output = miwv(args);
        assert!(output.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(help.contains("Usage: miwv"), "{args:?}: {help}");
    }
    let top = String::from_utf8_lossy(&miwv(&["--help"]).stdout).into_owned();
    assert!(top.contains("Exit codes"), "{top}");
    let bench = String::from_utf8_lossy(&miwv(&["bench", "--help"]).stdout).into_owned();
    assert!(bench.contains("--n-gpu-layers"), "{bench}");
}

/// A run whose stderr is a file logs plain text. The dataset is cut off (a warning) and read
/// (an info line); the missing scoring model then stops the run before anything is loaded.
#[test]
fn logs_to_a_file_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cut.jsonl");
    std::fs::write(
        &data,
        "{\"instruction\": \"a\", \"output\": \"b\"}\n\
         {\"instruction\": \"c\", \"output\": \"d\"}\n\
         {\"instruction\": \"e\", \"out",
    )
    .unwrap();
    let log = dir.path().join("log.txt");
    let status = Command::new(env!("CARGO_BIN_EXE_miwv"))
        .arg("select")
        .arg(&data)
        .arg("-o")
        .arg(dir.path().join("out"))
        .args(["-m"])
        .arg(dir.path().join("missing.gguf"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("WARN") && log.contains("INFO"),
        "no log lines: {log}"
    );
    assert!(log.contains("missing.gguf"), "{log}");
    assert!(
        !log.contains("\x1b["),
        "colour codes in a log file: {log:?}"
    );
}

/// OpenMP's wait is set for the user who set nothing (libgomp reads it before `main`, so the
/// binary restarts itself with it), and left alone for the user who chose.
#[test]
fn openmp_threads_spin_briefly_unless_the_user_chose() {
    let openmp_lines = |env: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_miwv"));
        command
            .args(["-v", "completions", "bash"])
            .env_remove("OMP_WAIT_POLICY")
            .env_remove("GOMP_SPINCOUNT")
            .envs(env.iter().copied());
        let output = command.output().unwrap();
        assert!(output.status.success());
        assert!(
            !output.stdout.is_empty(),
            "the restarted process did the work"
        );
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let lines: Vec<String> = stderr
            .lines()
            .filter_map(|l| l.split_once("OpenMP: ").map(|(_, v)| v.to_string()))
            .collect();
        lines
    };
    assert_eq!(
        openmp_lines(&[]),
        ["OMP_WAIT_POLICY=unset", "GOMP_SPINCOUNT=1000"]
    );
    assert_eq!(
        openmp_lines(&[("OMP_WAIT_POLICY", "PASSIVE")]),
        ["OMP_WAIT_POLICY=PASSIVE", "GOMP_SPINCOUNT=unset"]
    );
    assert_eq!(
        openmp_lines(&[("GOMP_SPINCOUNT", "50")]),
        ["OMP_WAIT_POLICY=unset", "GOMP_SPINCOUNT=50"]
    );
}
