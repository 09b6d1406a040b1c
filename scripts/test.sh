#!/usr/bin/env bash
# The whole test suite: unit tests and integration tests on the real default models, then
# the Python package's tests (scripts/test-python.sh) when no test filter is given.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
# Model tests run one at a time: each already uses every core through llama.cpp.
cargo test --release -- --test-threads=1 "$@"
if [ $# -eq 0 ]; then
    scripts/test-python.sh
fi
