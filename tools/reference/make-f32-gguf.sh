#!/usr/bin/env bash
# Make an F32 GGUF that holds exactly the weights of a quantised GGUF, by way of Hugging Face:
#
#   1. transformers loads the GGUF (gguf_file=...), dequantising every weight to float32, and
#      save_pretrained writes it as a HF directory (model.safetensors, tokenizer.json, ...)
#      to $MIWV_CACHE/reference/<name>-hf/  -- reference.py scores with this directory;
#   2. llama.cpp's own converter, convert_hf_to_gguf.py --outtype f32, turns that directory
#      back into a GGUF, which miwv scores with.
#
# Both sides then run the same float32 weights (checked: every tensor of the result is
# bit-equal to gguf-py's dequantisation of the source, and the tokenizer keys are equal), so a
# difference between miwv's scores and reference.py's is the engines' arithmetic or a token
# layout difference, not quantisation.
#
# The converter entry script is the copy vendored in the llama-cpp-sys-2 crate that miwv links
# (found by glob in the cargo registry, version read from Cargo.lock). That crate ships only the
# entry script, not the `conversion` package or gguf-py it imports, so those come from the
# llama.cpp tree vendored in llama-cpp-python's sdist (setup.sh unpacks it); the script checks
# that the two entry scripts are byte-identical.
#
# Usage: tools/reference/make-f32-gguf.sh [SOURCE.gguf] [--smoke]
#   SOURCE defaults to ggml-models/SmolLM2-135M-Instruct.Q4_1.gguf. The result is written to
#   $MIWV_CACHE/models/<stem>.F32.gguf and hard-linked into ggml-models/ (git-ignored), as
#   ggml-models/fetch.py does. --smoke then runs the miwv binary on 5 records with it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${MIWV_CACHE:-$HOME/.cache/miwv}"
venv="$cache/reference-venv"
py="$venv/bin/python"
conv_root="$cache/reference/llama.cpp-conversion"

src="$repo/ggml-models/SmolLM2-135M-Instruct.Q4_1.gguf"
smoke=0
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1 ;;
    -h|--help) sed -n 2,27p "$0"; exit 0 ;;
    *) src="$(cd "$(dirname "$arg")" && pwd)/$(basename "$arg")" ;;
  esac
done
[[ -f "$src" ]] || { echo "error: $src not found (run ggml-models/fetch.py)" >&2; exit 1; }
[[ -x "$py" ]] || { echo "error: no venv at $venv; run tools/reference/setup.sh first" >&2; exit 1; }
[[ -d "$conv_root/conversion" ]] || { echo "error: $conv_root/conversion missing; run tools/reference/setup.sh" >&2; exit 1; }

base="$(basename "$src" .gguf)"     # SmolLM2-135M-Instruct.Q4_1
stem="${base%.*}"                   # SmolLM2-135M-Instruct
[[ "$stem" == "$base" ]] && stem="$base"
hf_dir="$cache/reference/${stem,,}-hf"
[[ "$stem" == SmolLM2-135M-Instruct ]] && hf_dir="$cache/reference/smollm2-135m-hf"
out_cached="$cache/models/$stem.F32.gguf"
out_link="$repo/ggml-models/$stem.F32.gguf"

# The converter entry script of the llama.cpp version miwv links.
sys_version="$(awk '/^name = "llama-cpp-sys-2"/{getline; gsub(/[^0-9.]/, "", $0); print; exit}' "$repo/Cargo.lock")"
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
converter=""
for c in "$cargo_home"/registry/src/*/"llama-cpp-sys-2-$sys_version"/llama.cpp/convert_hf_to_gguf.py; do
  [[ -f "$c" ]] && converter="$c"
done
if [[ -z "$converter" ]]; then
  echo "error: no convert_hf_to_gguf.py under $cargo_home/registry/src/*/llama-cpp-sys-2-$sys_version/llama.cpp/" >&2
  echo "       (cargo fetch, or build miwv once, puts the crate sources there)" >&2
  exit 1
fi
echo "converter: $converter (llama-cpp-sys-2 $sys_version, from Cargo.lock)"
if cmp -s "$converter" "$conv_root/convert_hf_to_gguf.py"; then
  echo "converter: byte-identical to the entry script beside the conversion package in $conv_root"
else
  echo "warning: the crate's convert_hf_to_gguf.py differs from the one beside $conv_root/conversion;" >&2
  echo "         the conversion package may not match it" >&2
fi

echo "== 1/3 dequantise $src -> $hf_dir"
rm -rf "$hf_dir.tmp"
"$py" "$here/hf_from_gguf.py" "$src" "$hf_dir.tmp"
rm -rf "$hf_dir"
mv "$hf_dir.tmp" "$hf_dir"

echo "== 2/3 convert $hf_dir -> $out_cached (f32)"
mkdir -p "$cache/models"
tmp_out="$out_cached.tmp"
rm -f "$tmp_out"
# PYTHONPATH supplies `conversion` and gguf-py; the entry script itself is the crate's copy.
PYTHONPATH="$conv_root:$conv_root/gguf-py" "$py" "$converter" "$hf_dir" --outtype f32 --outfile "$tmp_out" 2>&1 \
  | grep -v -E '^INFO:hf-to-gguf:(blk\.|token_embd|output)' || true
[[ -s "$tmp_out" ]] || { echo "error: the converter wrote nothing" >&2; exit 1; }

echo "== 3/3 check"
"$py" "$here/check_gguf_equal.py" "$src" "$tmp_out"
mv -f "$tmp_out" "$out_cached"
rm -f "$out_link"
ln "$out_cached" "$out_link" 2>/dev/null || cp "$out_cached" "$out_link"
sha="$(sha256sum "$out_cached" | cut -d' ' -f1)"
echo "F32 GGUF: $out_link ($(stat -c %s "$out_cached") bytes)"
echo "sha256: $sha"
echo "HF directory for reference.py: $hf_dir"

if [[ "$smoke" == 1 ]]; then
  miwv="${MIWV_BIN:-$(command -v miwv || true)}"
  [[ -z "$miwv" && -x "$cache/target/release/miwv" ]] && miwv="$cache/target/release/miwv"
  [[ -z "$miwv" && -x "$repo/target/release/miwv" ]] && miwv="$repo/target/release/miwv"
  [[ -n "$miwv" ]] || { echo "error: no miwv binary for --smoke (set MIWV_BIN)" >&2; exit 1; }
  smoke_dir="$(mktemp -d)"
  "$py" -c 'import json,sys; json.dump(json.load(open(sys.argv[1]))[:5], open(sys.argv[2], "w"))' \
    "$repo/examples/alpaca-mini.json" "$smoke_dir/five.json"
  echo "== smoke: $miwv select (5 records) with the F32 GGUF"
  OMP_WAIT_POLICY=PASSIVE "$miwv" select "$smoke_dir/five.json" -m "$out_link" -o "$smoke_dir/out" --count 1 -c 1024
  head -c 400 "$smoke_dir/out/scores.jsonl"; echo
fi
