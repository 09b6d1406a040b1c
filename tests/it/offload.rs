//! The GPU path. In a CPU build: `-ngl` is refused naming the cause, and `miwv devices` says
//! what llama.cpp sees. In a GPU build (`--features vulkan`, run on Mesa's lavapipe in CI, or
//! on a real GPU): the default model with every layer offloaded selects as the CPU does, and a
//! run killed mid-way resumes.

use crate::common;

use std::process::Output;

use common::miwv;

fn run(args: &[&str]) -> Output {
    miwv().args(args).output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[cfg(not(any(feature = "vulkan", feature = "cuda", feature = "metal")))]
#[test]
fn a_cpu_build_refuses_gpu_layers_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.json");
    common::write_examples(&data, 4);
    let out = dir.path().join("out");
    let refused = run(&[
        "select",
        data.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "-ngl",
        "99",
    ]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    let message = stderr(&refused);
    for part in ["-ngl 99", "no GPU", "CPU", "scripts/build-gpu.sh"] {
        assert!(message.contains(part), "`{part}` missing from: {message}");
    }

    let json = dir.path().join("devices.json");
    let listed = run(&["devices", "--json", json.to_str().unwrap()]);
    let shown = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(
        shown.contains("CPU") && shown.contains("no device here takes layers"),
        "{shown}"
    );
    let devices = common::read_json(&json);
    assert_eq!(
        devices["offload"]["layers"], 31,
        "SmolLM2-135M: 30 layers and the output"
    );
    assert!(devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["kind"] == "cpu"));
}

/// `select` into `out`, keeping one sample, with `extra` flags.
#[cfg(any(feature = "vulkan", feature = "cuda", feature = "metal"))]
fn select(data: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "select",
        data.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "-n",
        "1",
    ];
    args.extend(extra);
    run(&args)
}

#[cfg(any(feature = "vulkan", feature = "cuda", feature = "metal"))]
#[test]
fn every_layer_on_the_device_selects_as_the_cpu_and_resumes() {
    use common::read_jsonl;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let listed = run(&["devices"]);
    let shown = String::from_utf8_lossy(&listed.stdout);
    assert!(shown.contains("31 of 31 layers on"), "{shown}");

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.json");
    // Four samples: a software Vulkan device decodes a few tokens a second.
    common::write_examples(&data, 4);
    let (cpu, gpu) = (dir.path().join("cpu"), dir.path().join("gpu"));
    let on_cpu = select(&data, &cpu, &["-ngl", "0"]);
    assert!(on_cpu.status.success(), "{}", stderr(&on_cpu));

    // Killed after its first checkpoint, then run again to the end.
    let mut child = miwv()
        .args([
            "select",
            data.to_str().unwrap(),
            "-o",
            gpu.to_str().unwrap(),
        ])
        .args(["-n", "1", "-ngl", "999", "--checkpoint-tokens", "64"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let log = gpu.join("checkpoint/losses.jsonl");
    let started = Instant::now();
    while std::fs::read_to_string(&log).map_or(0, |t| t.lines().count()) < 2 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "ended before it was killed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1200),
            "no checkpoint"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let resumed = select(&data, &gpu, &["-ngl", "999", "--checkpoint-tokens", "64"]);
    let log = stderr(&resumed);
    assert!(resumed.status.success(), "{log}");
    assert!(log.contains("resuming"), "{log}");
    assert!(log.contains("1 workers"), "one worker under offload: {log}");

    let (a, b) = (
        read_jsonl(&cpu.join("scores.jsonl")),
        read_jsonl(&gpu.join("scores.jsonl")),
    );
    let mut worst: f64 = 0.0;
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["neighbour_id"], y["neighbour_id"], "{x} {y}");
        for field in ["loss_zero_shot", "loss_one_shot"] {
            let d = (x[field].as_f64().unwrap() - y[field].as_f64().unwrap()).abs();
            worst = worst.max(d);
        }
    }
    eprintln!("largest |device - CPU| loss: {worst:.2e} nats");
    assert!(worst < 1e-2, "{worst}");
    let compared = run(&["compare", cpu.to_str().unwrap(), gpu.to_str().unwrap()]);
    let shown = String::from_utf8_lossy(&compared.stdout);
    let rho: f64 = shown
        .lines()
        .find_map(|l| l.trim().strip_prefix("MIWV Spearman"))
        .and_then(|rest| rest.split_whitespace().find_map(|w| w.parse().ok()))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(rho >= 0.999, "{shown}");
}
