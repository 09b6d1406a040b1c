#!/usr/bin/env bash
# The benchmark behind docs/PERFORMANCE.md, from a fresh clone: fetch the models and the
# ShareGPT first-turn pairs, build, and run `miwv bench` on the default and the larger model.
# Sizes can be changed: SIZES=250,1000,4000 scripts/bench.sh (hours on a 2-core CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
python3 ggml-models/fetch.py qwen
python3 benches/fetch-data.py
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
cargo build --release
data="${MIWV_CACHE:-$HOME/.cache/miwv}/data/sharegpt-first-turn.jsonl"
mkdir -p bench-results
cargo run --release --quiet -- bench "$data" --sizes "${SIZES:-25,50,100}" \
    --json bench-results/smollm2-135m.json "$@"
cargo run --release --quiet -- bench "$data" --sizes "${QWEN_SIZES:-25,50}" \
    -m ggml-models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
    --json bench-results/qwen2.5-0.5b.json "$@"
