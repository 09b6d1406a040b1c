#!/usr/bin/env bash
# Set up the Python reference: a venv at $MIWV_CACHE/reference-venv (MIWV_CACHE defaults to
# ~/.cache/miwv; nothing is installed in the repository) with CPU-only torch, transformers and
# gguf, plus llama.cpp's converter package for make-f32-gguf.sh. Idempotent: a second run with
# the same requirements.txt checks the venv and returns.
#
# Needs: python3 (3.11) with venv, gcc and binutils (for the CUDA stub libraries), and PyPI
# (about 620 MB of wheels + a 77 MB sdist; 1.6 GB installed). Offline, copy
# $MIWV_CACHE/reference-venv and $MIWV_CACHE/reference/ from a machine that has them, or point
# PIP_FIND_LINKS at a directory holding the wheels (`pip download --no-deps -r requirements.txt`)
# and the llama-cpp-python sdist.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${MIWV_CACHE:-$HOME/.cache/miwv}"
venv="$cache/reference-venv"
req="$here/requirements.txt"
stamp="$venv/.miwv-reference-requirements.sha256"
conv_root="$cache/reference/llama.cpp-conversion"

# llama.cpp's `conversion` package and gguf-py (the llama-cpp-sys-2 crate ships only the
# converter's entry script): taken from the llama.cpp tree vendored in this sdist.
lcp_version="0.3.36"
lcp_sha256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

offline_hint() {
  cat >&2 <<EOF
error: could not fetch $1 from PyPI (offline, or PyPI unreachable).
  - copy $venv and $cache/reference/ from a machine where this script ran, or
  - put the wheels (pip download --no-deps -r $req) and llama_cpp_python-$lcp_version.tar.gz
    in a directory and rerun with PIP_FIND_LINKS=that/dir PIP_NO_INDEX=1.
EOF
  exit 1
}

want="$(cat "$req" "$here/make_cuda_stubs.py" | sha256sum | cut -d' ' -f1)"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "venv: $venv is up to date"
else
  echo "venv: creating $venv"
  SECONDS=0
  python3 -m venv "$venv"
  start=$(date +%s)
  # --no-deps: requirements.txt is the whole closure, minus torch's CUDA wheels (see there).
  "$venv/bin/pip" install --no-deps -r "$req" || offline_hint "the wheels in $req"
  echo "venv: installed in $(( $(date +%s) - start ))s"
  echo "venv: building CUDA stub libraries (CPU-only torch)"
  "$venv/bin/python" "$here/make_cuda_stubs.py" "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$want" > "$stamp"
  echo "venv: done in ${SECONDS}s"
fi

"$venv/bin/python" - <<'EOF'
import torch, transformers, gguf, tokenizers, accelerate
assert not torch.cuda.is_available()
x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
assert (x @ x.T).tolist() == [[5.0, 14.0], [14.0, 50.0]]
print(f"venv: ok (torch {torch.__version__} on CPU, {torch.get_num_threads()} threads; "
      f"transformers {transformers.__version__}; tokenizers {tokenizers.__version__}; gguf ok)")
EOF

if [[ -f "$conv_root/.sha256" && "$(cat "$conv_root/.sha256")" == "$lcp_sha256" ]]; then
  echo "converter package: $conv_root is up to date"
else
  echo "converter package: fetching llama-cpp-python==$lcp_version sdist"
  SECONDS=0
  dl="$(mktemp -d)"
  trap 'rm -rf "$dl"' EXIT
  tarball="$dl/llama_cpp_python-$lcp_version.tar.gz"
  # A copy already at hand (PIP_FIND_LINKS directories) is used as it is: offline, pip would
  # also need the sdist's build backend (scikit-build-core) just to read its metadata.
  for d in ${PIP_FIND_LINKS:-}; do
    [[ -f "$d/$(basename "$tarball")" ]] && cp "$d/$(basename "$tarball")" "$tarball" && break
  done
  if [[ ! -f "$tarball" ]]; then
    "$venv/bin/pip" download --quiet --no-deps --no-binary llama-cpp-python "llama-cpp-python==$lcp_version" -d "$dl" \
      || offline_hint "llama-cpp-python==$lcp_version (sdist)"
  fi
  got="$(sha256sum "$tarball" | cut -d' ' -f1)"
  [[ "$got" == "$lcp_sha256" ]] || { echo "error: $tarball has sha256 $got, expected $lcp_sha256" >&2; exit 1; }
  top="llama_cpp_python-$lcp_version/vendor/llama.cpp"
  tar -xzf "$tarball" -C "$dl" "$top/conversion" "$top/gguf-py" "$top/convert_hf_to_gguf.py" "$top/LICENSE"
  rm -rf "$conv_root"
  mkdir -p "$(dirname "$conv_root")"
  mv "$dl/$top" "$conv_root"
  echo "$lcp_sha256" > "$conv_root/.sha256"
  echo "converter package: unpacked into $conv_root in ${SECONDS}s"
fi

du -sh "$venv" "$conv_root" 2>/dev/null | sed 's/^/size: /'
echo "next: tools/reference/make-f32-gguf.sh   (then tools/reference/README.md)"
