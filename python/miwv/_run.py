"""The calls: each turns its keywords into the command line's arguments, runs them through
the native module and gives back what the run wrote, as Python objects."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Union

from . import _data, _native
from ._events import Events, Progress, logger
from .options import PathLike, command_line

if TYPE_CHECKING:
    import pandas
    import pyarrow

    from typing_extensions import Unpack

    from ._data import Data
    from .options import EmbedOptions, MergeOptions, ScoreOptions, SelectOptions


def _call(args: List[str], progress: Progress = False) -> Any:
    events = Events(progress)
    try:
        outcome = _native.run(args, events, logger.getEffectiveLevel())
    finally:
        events.close()
    return json.loads(outcome)


def _score_types() -> Dict[str, Any]:
    """The types of the score columns that may be null in every row of a file, and of the
    ids (an id such as `2024-01-01` would otherwise read as a date)."""
    import pyarrow as pa

    floats = ["miwv", "loss_zero_shot", "loss_one_shot", "similarity"]
    floats += ["loss_response_only", "ifd", "superfiltering"]
    types: Dict[str, Any] = {name: pa.float64() for name in floats}
    types.update(id=pa.string(), neighbour_id=pa.string(), neighbour_index=pa.int64())
    types.update(reason=pa.string())
    types.update(selected=pa.bool_(), rank=pa.int64())
    return types


class Run:
    """A run directory: what `select` or `merge` wrote there, read back as tables.

    `Run(out)` opens one made earlier, by this package or by the `miwv` command.
    """

    def __init__(self, out: PathLike, data: Any = None) -> None:
        self.out = Path(out)
        #: The data as the caller gave it, when the run was made in this process.
        self._data = data
        self._scores: Optional["pyarrow.Table"] = None

    def __repr__(self) -> str:
        return f"miwv.Run({os.fspath(self.out)!r})"

    @property
    def info(self) -> Dict[str, Any]:
        """The run record, `run.json`: settings, files and their hashes, timings, counts."""
        with open(self.out / "run.json", encoding="utf-8") as f:
            return json.load(f)

    @property
    def scores(self) -> "pyarrow.Table":
        """`scores.jsonl` as a table, one row per sample in dataset order: `id`, `index`,
        `miwv` (null where undefined), both losses, `reason`, the neighbour, `selected`,
        `rank` and the token counts."""
        if self._scores is None:
            import pyarrow as pa
            import pyarrow.json as pj

            path = self.out / "scores.jsonl"
            with open(path, encoding="utf-8") as f:
                columns = list(json.loads(f.readline()))
            # Typed up front: a column may be null in every row of a block, or of the file,
            # and every run's table should have one schema.
            types = _score_types()
            schema = pa.schema([(c, types[c]) for c in columns if c in types])
            options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer")
            self._scores = pj.read_json(path, parse_options=options).select(columns)
        return self._scores

    def to_pandas(self) -> "pandas.DataFrame":
        """The scores as a pandas DataFrame."""
        return self.scores.to_pandas()

    @property
    def selected_indices(self) -> List[int]:
        """The 0-based positions of the selected samples in the data, in data order."""
        scores = self.scores
        index = scores.column("index").to_pylist()
        chosen = scores.column("selected").to_pylist()
        return [i for i, keep in zip(index, chosen) if keep]

    @property
    def selected(self) -> Any:
        """The selected samples in the type the data was given: the rows of a list, a
        DataFrame, a pyarrow Table or a Dataset, or the path of the selected file for data
        given as a path (and for a run opened with `Run(out)`)."""
        if self._data is None or _data.kind_of(self._data) == "path":
            return next(self.out.glob("selected.*"))
        return _data.rows(self._data, self.selected_indices)


def _with_out(args: List[str], out: PathLike) -> List[str]:
    return args[:1] + ["--out", os.fspath(out)] + args[1:]


def select(
    data: "Data",
    out: PathLike,
    *,
    progress: Progress = None,
    **options: "Unpack[SelectOptions]",
) -> Run:
    """Scores every sample of `data` and keeps the top share by MIWV, as `miwv select`.

    `data`: a path (JSON, JSON Lines, Parquet), a list of dicts, a pandas DataFrame, a pyarrow
    Table or a Hugging Face Dataset. `out`: the run directory. `options`: `miwv select`'s
    flags (`ratio=0.05`, `model=...`, `ctx_size=4096`, `kv_reuse=False`, ...).
    `progress`: None for tqdm bars where they can be drawn, False for none, True for bars
    always, or a callable `(phase, done, total, unit)`.

    Raises `DataError`, `ModelError`, `OptionsError`, `Interrupted` (Ctrl-C; call again to
    resume) or `MiwvError`.
    """
    file = _data.as_file(data, Path(out))
    _call(_with_out(command_line("select", [file], options), out), progress)
    return Run(out, data)


def embed(
    data: "Data",
    out: PathLike,
    *,
    progress: Progress = None,
    **options: "Unpack[EmbedOptions]",
) -> str:
    """`miwv embed`: embeds this shard's share of `data` into the run directory `out`
    (`shard="K/N"`, with `select`'s other options). Returns the stage's summary line."""
    file = _data.as_file(data, Path(out))
    done = _call(_with_out(command_line("embed", [file], options), out), progress)
    return done["message"]


def neighbours(run: PathLike, *, verbose: int = 0) -> str:
    """`miwv neighbours`: finds every sample's neighbour once all embed shards are done.
    Returns the stage's summary line."""
    return _call(command_line("neighbours", [run], {"verbose": verbose}))["message"]


def plan(run: PathLike, *, calibrate_tokens: Optional[int] = None, verbose: int = 0) -> Dict[str, Any]:
    """`miwv plan`: the decode plan's size, the fitted context, and (with `calibrate_tokens`
    above 0, the default 16384) a time estimate for this machine, as a dict."""
    options = {"calibrate_tokens": calibrate_tokens, "verbose": verbose}
    return _call(command_line("plan", [run], options))


def score(
    run: PathLike, *, progress: Progress = None, **options: "Unpack[ScoreOptions]"
) -> str:
    """`miwv score`: scores this shard (`shard="K/N"`) of a run whose neighbours are found.
    Returns the stage's summary line."""
    return _call(command_line("score", [run], options), progress)["message"]


def merge(run: PathLike, **options: "Unpack[MergeOptions]") -> Run:
    """`miwv merge`: joins the score shards into `scores.jsonl`, the selection and
    `run.json` (`ratio=` or `count=` to choose another budget than the run's)."""
    _call(command_line("merge", [run], options))
    return Run(run)


def compare(
    a: Union[PathLike, Run],
    b: Union[PathLike, Run],
    *,
    ratios: Optional[Sequence[float]] = None,
    verbose: int = 0,
) -> Dict[str, Any]:
    """`miwv compare`: rank correlations and top-k overlaps of two score files (or run
    directories, or runs), samples matched by id."""
    paths = [x.out if isinstance(x, Run) else x for x in (a, b)]
    return _call(command_line("compare", paths, {"ratios": ratios, "verbose": verbose}))


def report(run: Union[PathLike, Run], *, top: Optional[int] = None, verbose: int = 0) -> Dict[str, Any]:
    """`miwv report`: draws a finished run (a histogram, a scatter plot, an HTML page);
    returns the files written."""
    path = run.out if isinstance(run, Run) else run
    return _call(command_line("report", [path], {"top": top, "verbose": verbose}))
