#!/usr/bin/env bash
# The GPU offload path without a GPU: llama.cpp's Vulkan backend on Mesa's lavapipe, a software
# Vulkan device on the CPU (as llama.cpp's own CI does). Builds the `vulkan` feature into
# $MIWV_CACHE/target-vulkan, apart from the CPU build, and runs the offload tests there
# (tests/it/offload.rs): every layer of the default model on the device, the selection equal
# to the CPU's, a killed run resumed. Lavapipe decodes a few tokens a second, so the tests use
# a handful of samples.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# lavapipe is a CPU-type device, which ggml uses only when named; f16 and cooperative-matrix
# shaders are left out as in llama.cpp's lavapipe CI job.
export GGML_VK_VISIBLE_DEVICES=0 GGML_VK_DISABLE_F16=1 GGML_VK_DISABLE_COOPMAT=1
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
scripts/build-gpu.sh vulkan -- test --release --test it offload:: -- --test-threads=1 --nocapture "$@"
