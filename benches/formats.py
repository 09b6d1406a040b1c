#!/usr/bin/env python3
"""The weight-format table of docs/PERFORMANCE.md: the same weights in every format, scored on
the same samples, for speed and for agreement with F32.

For each model, every format is written from the shipped file with `miwv quantize` (cached
under $MIWV_CACHE/models/formats/), then `miwv select` scores the first N records of DATA with
it (the same neighbours each time: the embedder does not change). Speed is the scoring phase's
tokens put through the model per second (`run.json`: scoring.tokens_decoded / timings.scoring_s),
also as a ratio to Q4_1 measured in the same run of this script; agreement is `miwv compare`
against the F32 copy: MIWV Spearman and the overlap of the top 5% and 10%.

The F32 copy holds the shipped file's values exactly (dequantised, not re-rounded), so the
table measures what each format changes against the values the model actually ships with.

usage: benches/formats.py DATA [--model smollm2|qwen|FILE.gguf ...] [--samples N]
                          [--formats F32,F16,...] [--out DIR] [--json FILE] [-- miwv select flags]
       benches/formats.py DATA --embedder [--samples N]   (nomic-embed F16 against Q8_0)

Needs the release binary (`cargo build --release`, or MIWV_BIN=path) and the models (`ggml-models/fetch.py all`
and, for qwen, `ggml-models/fetch.py qwen`).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("MIWV_CACHE", Path.home() / ".cache" / "miwv"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
MODELS = {
    "smollm2": ROOT / "ggml-models" / "SmolLM2-135M-Instruct.Q4_1.gguf",
    "qwen": ROOT / "ggml-models" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
}
FORMATS = ["Q4_0", "Q4_1", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "F16", "F32"]


def miwv(*args, **kw):
    binary = os.environ.get("MIWV_BIN", TARGET / "release" / "miwv")
    return subprocess.run([str(binary), *map(str, args)], check=True, **kw)


def derive(source, fmt):
    """The shipped file in `fmt`, written once and cached."""
    shipped = shipped_format(source)
    stem = source.stem[: -len(shipped)].rstrip(".-_") if shipped else source.stem
    out = CACHE / "models" / "formats" / f"{stem}.{fmt}.gguf"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        miwv("quantize", source, out, "--type", fmt, stderr=subprocess.DEVNULL,
             stdout=subprocess.DEVNULL)
    return out


def shipped_format(source):
    stem = source.stem.upper()
    return next((f for f in FORMATS if stem.endswith(f)), None)


def score(model, data, out, extra):
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    miwv("select", data, "-m", model, "--out", out, *extra,
         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = json.loads((out / "run.json").read_text())
    tokens = run["scoring"]["tokens_decoded"]
    seconds = run["timings"]["scoring_s"]
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def agreement(run, reference):
    path = run / "compare-f32.json"
    miwv("compare", run, reference, "--ratios", "0.05,0.1", "--json", path,
         stdout=subprocess.DEVNULL)
    report = json.loads(path.read_text())
    overlaps = [o["overlap"] for o in report["overlaps"]]
    return {
        "spearman": report["spearman"],
        "top5": overlaps[0],
        "top10": overlaps[1],
        "mean_abs_miwv": report["miwv_difference"]["mean_abs"],
    }


EMBEDDER = ROOT / "ggml-models" / "nomic-embed-text-v1.5.f16.gguf"


def embedder_table(data, samples, out, extra):
    """The embedding model in F16 (shipped) and Q8_0: samples embedded per second (the
    `miwv embed` stage, model loading included) and how many neighbours change."""
    runs = {}
    for fmt in ["F16", "Q8_0"]:
        model = EMBEDDER if fmt == "F16" else derive(EMBEDDER, fmt)
        run = out / f"embedder-{fmt}"
        if run.exists():
            subprocess.run(["rm", "-rf", str(run)], check=True)
        started = time.time()
        miwv("embed", data, "--out", run, "--embed-model", model, *extra,
             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds = time.time() - started
        miwv("neighbours", run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        retrieval = json.loads((run / "checkpoint" / "retrieval.json").read_text())
        runs[fmt] = {
            "seconds": seconds,
            "samples_per_s": samples / seconds,
            "file_bytes": model.stat().st_size,
            "neighbours": [n and n["index"] for n in retrieval["neighbours"]],
        }
        print(f"embedder {fmt}: {runs[fmt]['samples_per_s']:.1f} samples/s", file=sys.stderr,
              flush=True)
    same = sum(a == b for a, b in zip(runs["F16"]["neighbours"], runs["Q8_0"]["neighbours"]))
    lines = [
        f"### nomic-embed-text-v1.5 ({samples} samples)",
        "",
        "| format | file MiB | samples/s (embed stage) | vs F16 | neighbours as with F16 |",
        "|---|---|---|---|---|",
    ]
    for fmt, r in runs.items():
        lines.append(f"| {fmt} | {r['file_bytes'] / 2**20:.0f} | {r['samples_per_s']:.1f} | "
                     f"{r['samples_per_s'] / runs['F16']['samples_per_s']:.2f}x | "
                     + ("(reference)" if fmt == "F16" else f"{same} of {samples} ({same / samples:.1%})")
                     + " |")
    for r in runs.values():
        del r["neighbours"]
    runs["same_neighbours"] = same
    return "\n".join(lines) + "\n", runs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data")
    parser.add_argument("--model", action="append", help="smollm2, qwen or a GGUF path")
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--out", default=str(ROOT / "bench-results" / "formats"))
    parser.add_argument("--json")
    parser.add_argument("--embedder", action="store_true",
                        help="measure the embedding model's formats instead (F16, Q8_0)")
    parser.add_argument("extra", nargs="*", help="flags passed to `miwv select`")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"data-{args.samples}.jsonl"
    with open(args.data) as src, open(data, "w") as dst:
        for i, line in enumerate(src):
            if i == args.samples:
                break
            dst.write(line)

    if args.embedder:
        text, results = embedder_table(data, args.samples, out, args.extra)
        print(text)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        return

    formats = args.formats.split(",")
    results = {}
    for name in args.model or ["smollm2"]:
        source = MODELS.get(name, Path(name))
        shipped = shipped_format(source)
        rows = {}
        for fmt in formats:
            model = source if fmt == shipped else derive(source, fmt)
            started = time.time()
            rows[fmt] = score(model, data, out / f"{name}-{fmt}", args.extra)
            rows[fmt]["file_bytes"] = model.stat().st_size
            print(f"{name} {fmt}: {rows[fmt]['tokens_per_s']:.0f} tokens/s "
                  f"({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
        for fmt in formats:
            if "F32" in rows and fmt != "F32":
                rows[fmt].update(agreement(out / f"{name}-{fmt}", out / f"{name}-F32"))
        results[name] = {"source": str(source), "shipped": shipped, "rows": rows}
        print(table(name, shipped, args.samples, rows))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def table(name, shipped, samples, rows):
    base = rows.get("Q4_1", {}).get("tokens_per_s")
    lines = [
        f"### {name} ({samples} samples; shipped as {shipped})",
        "",
        "| format | file MiB | scored tokens/s | vs Q4_1 | MIWV Spearman vs F32 | top 5% shared | top 10% shared |",
        "|---|---|---|---|---|---|---|",
    ]
    for fmt, r in rows.items():
        ratio = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
        agree = [f"{r[k]:.4f}" if k == "spearman" else f"{r[k]:.0%}" for k in
                 ("spearman", "top5", "top10")] if "spearman" in r else ["(reference)"] * 3
        lines.append(f"| {fmt} | {r['file_bytes'] / 2**20:.0f} | {r['tokens_per_s']:.0f} | {ratio} | "
                     + " | ".join(agree) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
