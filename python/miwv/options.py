"""The options of each call: the command line's flags, spelled as Python keywords
(`--ctx-size` is `ctx_size`, `--no-kv-reuse` is `kv_reuse=False`). An option left out takes
the command line's default; every value is checked by the command line's own parser, so a
bad one raises `OptionsError` with the message `miwv` would print."""

from __future__ import annotations

import os
from typing import Any, List, Literal, Mapping, Sequence, TypedDict, Union

from . import _native
from .errors import OptionsError

PathLike = Union[str, "os.PathLike[str]"]


class SelectOptions(TypedDict, total=False):
    """`miwv select`'s options (see `miwv select --help`)."""

    model: PathLike
    embed_model: PathLike
    embeddings: PathLike
    index: str
    nprobe: int
    ef_search: int
    embed_prefix: str
    template: Literal["auto", "model", "chatml", "alpaca", "raw", "oda"]
    chat_template: PathLike
    instruction_field: str
    input_field: str
    output_field: str
    id_field: str
    messages_field: str
    first_turn: bool
    also: Literal["ifd"]
    ratio: float
    count: int
    append_eos: bool
    ctx_size: Union[int, Literal["auto"]]
    parallel: int
    batch_size: int
    ubatch_size: int
    threads: int
    workers: int
    n_gpu_layers: int
    memory_budget: Union[str, int]
    kv_reuse: bool
    checkpoint_tokens: int
    verbose: int


class EmbedOptions(SelectOptions, total=False):
    """`miwv embed`'s options: `select`'s and the shard."""

    shard: str
    shards: int


class ScoreOptions(TypedDict, total=False):
    """`miwv score`'s options."""

    shard: str
    shards: int
    threads: int
    verbose: int


class MergeOptions(TypedDict, total=False):
    """`miwv merge`'s options."""

    ratio: float
    count: int
    verbose: int


#: Keywords whose flag says the opposite: `kv_reuse=False` is `--no-kv-reuse`.
INVERTED = {"kv_reuse": "no-kv-reuse"}

#: Flags the API sets itself, or that have no meaning in a call.
NOT_OPTIONS = {"out", "help", "version", "json"}


def keywords(subcommand: str) -> List[str]:
    """The keywords a subcommand takes: its flags, in Python's spelling."""
    renamed = {flag: keyword for keyword, flag in INVERTED.items()}
    return [
        renamed.get(flag, flag.replace("-", "_"))
        for flag in _native.flags(subcommand)
        if flag not in NOT_OPTIONS
    ] + ["verbose"]


def command_line(
    subcommand: str, positional: Sequence[Any], options: Mapping[str, Any]
) -> List[str]:
    """`subcommand`'s arguments: the positional ones, then `options`."""
    known = set(keywords(subcommand))
    # A path that starts with `-` would read as a flag.
    args = [subcommand] + [_path_text(p) for p in positional]
    for keyword, value in options.items():
        if keyword not in known:
            raise OptionsError(
                f"unknown option {keyword!r} for {subcommand} (its options: "
                f"{', '.join(sorted(known))})"
            )
        if value is None:
            continue
        if keyword == "verbose":
            args += ["-v"] * int(value)
            continue
        if keyword in INVERTED:
            if value is False:
                args.append("--" + INVERTED[keyword])
            continue
        flag = "--" + keyword.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False:
            continue
        elif isinstance(value, (list, tuple)):
            args += [flag, ",".join(_text(v) for v in value)]
        else:
            args += [flag, _text(value)]
    return args


def _text(value: Any) -> str:
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


def _path_text(value: Any) -> str:
    text = _text(value)
    return os.path.join(".", text) if text.startswith("-") else text
