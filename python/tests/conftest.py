"""Shared fixtures: the repository's default models and example data, and runs of the `miwv`
command that `pip install` put beside this Python."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "ggml-models" / "SmolLM2-135M-Instruct.F16.gguf"
EMBED_MODEL = ROOT / "ggml-models" / "nomic-embed-text-v1.5.f16.gguf"

#: Options every test run uses: the repository's models wherever pytest runs, and a ratio
#: that selects a few of a dozen samples.
MODELS: Dict[str, Any] = {"model": MODEL, "embed_model": EMBED_MODEL}


def miwv_command() -> str:
    """The `miwv` command installed with the package."""
    return str(Path(sys.executable).parent / "miwv")


def cli(*args: Any, check: bool = True) -> subprocess.CompletedProcess:
    """Runs the `miwv` command with `args`."""
    done = subprocess.run(
        [miwv_command(), *map(str, args)], capture_output=True, text=True
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def read_jsonl(path: Path) -> List[Dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def alpaca_records(n: int) -> List[Dict[str, Any]]:
    with open(ROOT / "examples" / "alpaca-mini.json", encoding="utf-8") as f:
        return json.load(f)[:n]


def chat_records(n: int) -> List[Dict[str, Any]]:
    """ShareGPT conversations (the file mixes them with `messages` records, which a table
    made from the first record's keys, as pyarrow's `from_pylist` makes it, would drop)."""
    records = read_jsonl(ROOT / "examples" / "chat-mini.jsonl")
    return [r for r in records if "conversations" in r][:n]


def write_jsonl(path: Path, records: List[Dict[str, Any]]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path


@pytest.fixture(scope="session", autouse=True)
def models_present() -> None:
    missing = [p for p in (MODEL, EMBED_MODEL) if not p.exists()]
    if missing:
        pytest.fail(f"missing {missing}: run scripts/setup.sh first")
