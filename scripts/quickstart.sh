#!/usr/bin/env bash
# One command from a fresh clone: install build dependencies, fetch the default models, build,
# and select the top 10% of the bundled example dataset.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release
cargo run --release --quiet -- select examples/alpaca-mini.json --out miwv-out --ratio 0.1 "$@"
