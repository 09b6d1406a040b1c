//! `cargo bench`: the scheduler against llama.cpp's own ceiling on the default model.
//!
//! Uses the bundled examples unless `MIWV_BENCH_DATA` names another Alpaca-style file (e.g. the
//! ShareGPT pairs from `benches/fetch-data.py`); `MIWV_BENCH_SIZES` overrides the sizes
//! (comma-separated), and `MIWV_BENCH_BUSY=1` also scores the largest with one core kept busy.
//! `scripts/bench.sh` runs the full benchmark behind docs/PERFORMANCE.md.

use std::path::PathBuf;

use miwv::scoring::prompt::TemplateChoice;
use miwv::scoring::sizes::{CtxSize, SizeRequest};
use miwv::tools::bench::{run, BenchConfig};

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let data = std::env::var_os("MIWV_BENCH_DATA")
        .map_or_else(|| root.join("examples/alpaca-mini.json"), PathBuf::from);
    let sizes = std::env::var("MIWV_BENCH_SIZES")
        .ok()
        .map(|s| {
            s.split(',')
                .map(|n| n.trim().parse().expect("sizes are numbers"))
                .collect()
        })
        .unwrap_or_else(|| vec![50, 100, 200]);
    let config = BenchConfig {
        data,
        model: root.join(miwv::DEFAULT_MODEL),
        embed_model: root.join(miwv::DEFAULT_EMBED_MODEL),
        sizes,
        context: SizeRequest {
            ctx: CtxSize::Auto,
            parallel: 4,
            batch: 2048,
            ubatch: 512,
            threads: std::thread::available_parallelism().map_or(1, usize::from),
            workers: 1,
            memory_budget: None,
        },
        gpu_layers: 0,
        template: TemplateChoice::Alpaca,
        ceiling_repeats: 8,
        // MIWV_BENCH_BUSY=1: also with one core kept busy.
        busy: std::env::var_os("MIWV_BENCH_BUSY").is_some(),
    };
    match run(&config) {
        Ok(report) => print!("{}", report.render()),
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
    }
}
