"""miwv: pick the instruction-tuning samples an LLM will learn most from (MIWV, arXiv
2511.07074), locally with llama.cpp and FAISS.

The functions mirror the `miwv` command's subcommands and take its flags as keywords
(`miwv.options`); they run the same library code, with the GIL released, and return
tables rather than printing:

    import miwv
    run = miwv.select(dataset, out="runs/alpaca", ratio=0.05, model="qwen2.5-7b-q4_k_m.gguf")
    run.scores            # pyarrow.Table, one row per sample (scores.jsonl)
    run.selected          # the selected rows, in the type `dataset` was given
    run.info              # the run record (run.json)

Ctrl-C stops a run after its current batch with its checkpoint kept (`miwv.Interrupted`);
calling again with the same arguments resumes it. Log records go to the `miwv` logger;
progress shows as tqdm bars in a terminal or notebook, or goes to `progress=callback`.
"""

from __future__ import annotations


from ._native_env import openmp_wait_policy

openmp_wait_policy()

from . import _native  # noqa: E402,F401  (loaded after the OpenMP settings, which it reads)
from ._data import Data  # noqa: E402
from ._run import Run, compare, embed, merge, neighbours, plan, report, score, select  # noqa: E402
from .errors import (  # noqa: E402
    DataError,
    Interrupted,
    MiwvError,
    ModelError,
    OptionsError,
)

__all__ = [
    "Data",
    "Run",
    "select",
    "embed",
    "neighbours",
    "plan",
    "score",
    "merge",
    "compare",
    "report",
    "MiwvError",
    "DataError",
    "ModelError",
    "OptionsError",
    "Interrupted",
]

