#!/usr/bin/env bash
# The Python package's tests: `pip install` the clone into a fresh virtual environment, as a
# new user would, then pytest on the real models. The native module is built by maturin
# through cargo, reusing CARGO_TARGET_DIR's llama.cpp and FAISS.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export MIWV_CACHE="${MIWV_CACHE:-$HOME/.cache/miwv}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$MIWV_CACHE/target}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
scripts/setup.sh

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
echo "test-python: pip install .[test] into a fresh virtual environment"
"$work/venv/bin/python" -m pip install -q "$root[test]"
# From outside the clone, so the tests import the installed package and not python/miwv.
cd "$work"
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider "$root/python/tests" "$@"
