#!/usr/bin/env bash
# Installs what building miwv needs (cmake, a C++ compiler, libclang for bindgen, BLAS/LAPACK
# for FAISS) and fetches the default models (the default scoring model is written from the
# downloaded one by `miwv quantize`, so the first run builds miwv). Safe to run again: it only
# installs and fetches what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_sudo() { if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then echo sudo; fi; }

if [ "$(uname -s)" = Linux ] && command -v apt-get >/dev/null; then
    packages=(cmake build-essential pkg-config libclang-dev libopenblas-dev)
    python3 -m pip --version >/dev/null 2>&1 || packages+=(python3 python3-pip)
    # The Python package's tests install it into a fresh virtual environment.
    python3 -m venv --help >/dev/null 2>&1 || packages+=(python3-venv)
    missing=()
    for p in "${packages[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "setup: installing ${missing[*]}"
        SUDO=$(need_sudo)
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
elif [ "$(uname -s)" = Darwin ] && command -v brew >/dev/null; then
    for p in cmake llvm; do brew list "$p" >/dev/null 2>&1 || brew install "$p"; done
else
    for tool in cmake c++ python3; do
        command -v "$tool" >/dev/null || { echo "setup: please install $tool" >&2; exit 1; }
    done
fi

command -v cargo >/dev/null || { echo "setup: please install Rust (https://rustup.rs)" >&2; exit 1; }

python3 ggml-models/fetch.py all
