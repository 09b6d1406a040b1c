"""The data a caller holds, made a file the run reads, and the selection given back in the
caller's type.

A path is read where it lies. Anything else is saved in the run directory first, under a
name holding its content's hash: Arrow data (a pyarrow Table, a pandas DataFrame, a Hugging
Face Dataset) as Parquet, written from Arrow's columns with no JSON in between, and a list
of dicts as JSON Lines. The run then reads a file like any other run: its checkpoint is bound
to that content, calling again with the same data resumes it, and `miwv report`, `compare`
and the stage commands work on the directory from the command line.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Sequence, Union

from .errors import DataError

if TYPE_CHECKING:
    import datasets
    import pandas
    import pyarrow

#: What the API accepts as data.
Data = Union[
    str,
    "os.PathLike[str]",
    Sequence[Dict[str, Any]],
    "pandas.DataFrame",
    "pyarrow.Table",
    "datasets.Dataset",
]


def kind_of(data: Any) -> str:
    """`path`, `records`, `pandas`, `arrow` or `datasets`."""
    if isinstance(data, (str, os.PathLike)):
        return "path"
    module = type(data).__module__.split(".")[0]
    name = type(data).__name__
    if module == "pandas" and name == "DataFrame":
        return "pandas"
    if module == "pyarrow" and name in ("Table", "RecordBatch"):
        return "arrow"
    if module == "datasets" and name == "Dataset":
        return "datasets"
    if isinstance(data, Sequence) and all(isinstance(r, dict) for r in data):
        return "records"
    raise TypeError(
        "data must be a path, a list of dicts, a pandas DataFrame, a pyarrow Table or a "
        f"Hugging Face Dataset, not {type(data).__module__}.{name}"
    )


def as_file(data: Any, out: Path) -> Path:
    """The file a run reads `data` from: the path itself, or a copy saved in `out`."""
    kind = kind_of(data)
    if kind == "path":
        return Path(data)
    out.mkdir(parents=True, exist_ok=True)
    if kind == "records":
        return _saved(out, ".jsonl", lambda path: _write_records(data, path))
    table = _arrow_table(data, kind)
    if table.num_rows == 0:
        raise DataError("the data has no records")
    return _saved(out, ".parquet", lambda path: _write_parquet(table, path))


def _arrow_table(data: Any, kind: str) -> "pyarrow.Table":
    import pyarrow as pa

    if kind == "pandas":
        # The DataFrame's index is not data: rows are matched by position.
        return pa.Table.from_pandas(data, preserve_index=False)
    if kind == "datasets":
        # The Dataset's own Arrow table, in its current row order (after a select or shuffle).
        return data.with_format("arrow")[:]
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    return data


def _write_parquet(table: "pyarrow.Table", path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, path)


def _write_records(records: Sequence[Dict[str, Any]], path: Path) -> None:
    if not records:
        raise DataError("the data has no records")
    with open(path, "w", encoding="utf-8") as f:
        for i, record in enumerate(records):
            try:
                line = json.dumps(record, ensure_ascii=False, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise DataError(f"record {i}: cannot be saved as JSON: {e}") from None
            f.write(line + "\n")


def _saved(out: Path, suffix: str, write: Any) -> Path:
    """Writes through `write` to `out/data-HASH{suffix}`; an identical file already there
    is kept as it is, and a different one is never overwritten."""
    partial = out / f".data-partial{suffix}"
    write(partial)
    digest = hashlib.sha256()
    with open(partial, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    path = out / f"data-{digest.hexdigest()[:16]}{suffix}"
    if path.exists():
        partial.unlink()
    else:
        os.replace(partial, path)
    return path


def rows(data: Any, indices: List[int]) -> Any:
    """The rows of `data` at `indices`, in `data`'s own type."""
    kind = kind_of(data)
    if kind == "records":
        return [data[i] for i in indices]
    if kind == "pandas":
        return data.iloc[indices]
    if kind == "datasets":
        return data.select(indices)
    return data.take(indices)
