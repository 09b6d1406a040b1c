#!/usr/bin/env python3
"""miwv against a plain transformers scorer on the same samples and threads, in one run.

The peer is tools/reference/reference.py: float32 weights, one sequence at a time, full logits,
two passes per sample, as the research code scores (OpenDataArena's MIWV scorer works this
way). It scores the pairs miwv chose (retrieval is not redone) with the same chat template.
miwv is timed as a user runs it, the whole `miwv select` with loading and embedding; the peer
without loading its model (its own timer), which flatters the peer.

usage: tools/reference/peer_bench.py DATA [--samples 20] [--threads N] [--model GGUF]
                                     [--hf-dir DIR] [--out DIR] [--json FILE]

DATA: Alpaca-style records (benches/fetch-data.py's ShareGPT first-turn pairs). Needs the
reference venv and HF directory (tools/reference/setup.sh, make-f32-gguf.sh) and the release
binary (or MIWV_BIN).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CACHE = Path(os.environ.get("MIWV_CACHE", Path.home() / ".cache" / "miwv"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--model", default=str(ROOT / "ggml-models" / "SmolLM2-135M-Instruct.F16.gguf"))
    parser.add_argument("--hf-dir", default=str(CACHE / "reference" / "smollm2-135m-hf"))
    parser.add_argument("--out", default="/tmp/miwv-peer-bench")
    parser.add_argument("--json")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data.jsonl"
    with open(args.data) as src, open(data, "w") as dst:
        for i, line in enumerate(src):
            if i == args.samples:
                break
            dst.write(line)

    binary = os.environ.get("MIWV_BIN", str(TARGET / "release" / "miwv"))
    run = out / "miwv"
    subprocess.run(["rm", "-rf", str(run)], check=True)
    started = time.time()
    subprocess.run([binary, "select", str(data), "-m", args.model, "-t", str(args.threads),
                    "--out", str(run)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    ours = time.time() - started
    record = json.loads((run / "run.json").read_text())

    python = CACHE / "reference-venv" / "bin" / "python"
    peer = subprocess.run(
        [str(python), str(HERE / "reference.py"), "--model", args.hf_dir, "--data", str(data),
         "--neighbours", str(run / "scores.jsonl"), "--template", "model",
         "--threads", str(args.threads), "--out", str(out / "reference.jsonl")],
        check=True, capture_output=True, text=True)
    found = re.search(r"tokens in ([0-9.]+)s", peer.stderr)
    if not found:
        sys.exit(f"reference.py printed no timing:\n{peer.stderr[-2000:]}")
    theirs = float(found.group(1))

    result = {
        "samples": args.samples,
        "threads": args.threads,
        "model": args.model,
        "template": record.get("template_name"),
        "miwv_seconds": ours,
        "miwv_samples_per_s": args.samples / ours,
        "miwv_workers": record["scoring"].get("workers"),
        "miwv_scoring_s": record["timings"]["scoring_s"],
        "reference_seconds": theirs,
        "reference_samples_per_s": args.samples / theirs,
        "ratio": theirs / ours,
    }
    print(f"{args.samples} samples, {args.threads} threads, template {result['template']}\n"
          f"  miwv select (load, embed, score, write): {ours:.1f} s, "
          f"{result['miwv_samples_per_s']:.2f} samples/s\n"
          f"  transformers F32 batch-1 scorer (scoring only): {theirs:.1f} s, "
          f"{result['reference_samples_per_s']:.2f} samples/s\n"
          f"  miwv / transformers: {result['ratio']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
