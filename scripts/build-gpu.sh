#!/usr/bin/env bash
# Builds miwv with a GPU backend of llama.cpp, from registry packages where it can.
#
#   scripts/build-gpu.sh vulkan        # Linux: Vulkan (any Vulkan 1.2 GPU, or Mesa's lavapipe on the CPU)
#   scripts/build-gpu.sh cuda ARCH     # Linux: CUDA from NVIDIA's pip wheels, ARCH e.g. 90 (H100), 89, 86, 80
#   scripts/build-gpu.sh metal         # macOS on Apple Silicon
#   scripts/build-gpu.sh BACKEND [ARCH] -- CARGO-ARGS   # e.g. -- test --release --test it offload::
#
# The binary goes to $MIWV_CACHE/target-<backend>/release/miwv (MIWV_CACHE defaults to
# ~/.cache/miwv; CARGO_TARGET_DIR overrides the target directory), apart from the CPU build's
# target so that neither rebuilds the other. Nothing is installed system-wide except, for
# vulkan, the Debian packages named below when apt-get can install them (root).
set -euo pipefail

backend="${1:-}"
shift || true
arch=""
if [[ "$backend" == cuda && $# -gt 0 && "$1" != "--" ]]; then
  arch="$1"
  shift
fi
cargo_args=(build --release)
if [[ "${1:-}" == "--" ]]; then
  shift
  cargo_args=("$@")
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${MIWV_CACHE:-$HOME/.cache/miwv}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target-$backend}"

usage() {
  sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# Vulkan headers of at least 1.3.272 (ggml-vulkan uses vk::LayerSettingEXT), glslc to compile
# the shaders, the loader, and SPIR-V headers. Debian 12 has all but the headers' version:
# those are taken from Debian 13's libvulkan-dev (headers only; the system loader is used).
vulkan_sdk() {
  local need=(glslc libvulkan-dev spirv-headers mesa-vulkan-drivers)
  if ! command -v glslc >/dev/null || ! ldconfig -p | grep -q 'libvulkan.so.1 '; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      apt-get install -y --no-install-recommends "${need[@]}" >&2
    else
      echo "error: install ${need[*]} (Debian/Ubuntu) or the LunarG Vulkan SDK, then rerun" >&2
      exit 1
    fi
  fi
  local have
  have="$(sed -n 's/^#define VK_HEADER_VERSION \([0-9]*\)/\1/p' /usr/include/vulkan/vulkan_core.h 2>/dev/null || true)"
  if [[ -n "${VULKAN_SDK:-}" ]]; then
    echo "vulkan: VULKAN_SDK=$VULKAN_SDK (given)" >&2
    return
  fi
  if [[ -n "$have" && "$have" -ge 272 ]]; then
    echo "vulkan: system headers 1.x.$have" >&2
    return
  fi
  local sdk="$cache/vulkan-sdk-1.4.309"
  local deb="libvulkan-dev_1.4.309.0-1_amd64.deb"
  local sha="8d329d465e16168afff58b1bd0dd6db46aac2cc3f56054a481b25a04e90b345a"
  if [[ ! -f "$sdk/include/vulkan/vulkan.hpp" ]]; then
    local tmp
    tmp="$(mktemp -d)"
    curl -fsSL -o "$tmp/$deb" "http://deb.debian.org/debian/pool/main/v/vulkan-loader/$deb" || {
      echo "error: could not fetch $deb from deb.debian.org; copy $sdk from a machine that has it" >&2
      exit 1
    }
    echo "$sha  $tmp/$deb" | sha256sum -c --quiet
    dpkg -x "$tmp/$deb" "$tmp/x"
    mkdir -p "$sdk/lib" "$sdk/bin"
    cp -r "$tmp/x/usr/include" "$sdk/"
    rm -rf "$tmp"
  fi
  ln -sf "$(ldconfig -p | awk '/libvulkan.so.1 /{print $NF; exit}')" "$sdk/lib/libvulkan.so"
  ln -sf "$(command -v glslc)" "$sdk/bin/glslc"
  export VULKAN_SDK="$sdk"
  echo "vulkan: system headers 1.x.${have:-none} are too old; using $sdk (Debian 13's 1.4.309)" >&2
}

case "$backend" in
  vulkan)
    vulkan_sdk
    features=vulkan
    ;;
  metal)
    [[ "$(uname -s)" == Darwin ]] || { echo "error: metal builds on macOS only" >&2; exit 1; }
    features=metal
    ;;
  cuda)
    # shellcheck source=scripts/cuda-wheels.sh
    source "$root/scripts/cuda-wheels.sh" "$arch"
    features=cuda,llama-cpp-2/cuda-no-vmm
    ;;
  *) usage ;;
esac

cd "$root"
cargo "${cargo_args[0]}" --features "$features" "${cargo_args[@]:1}"
if [[ "${cargo_args[0]}" == build ]]; then
  if [[ "$backend" == cuda ]]; then after_build; fi
  echo "built: $CARGO_TARGET_DIR/release/miwv ($backend)"
fi
