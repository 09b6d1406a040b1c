"""What a run reports while it works: its log records go to Python's `logging` (loggers under
`miwv`), its progress to tqdm bars or a callback of the caller's."""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Dict, Optional, Union

#: Called as `progress(phase, done, total, unit)`: `phase` is `embedding`, `neighbours` or
#: `scoring`; `total` is None for a phase of unknown length.
ProgressCallback = Callable[[str, int, Optional[int], str], None]
Progress = Union[None, bool, ProgressCallback]

logger = logging.getLogger("miwv")


def _logger_for(target: str) -> logging.Logger:
    """`miwv::pipeline` logs to `miwv.pipeline`; llama.cpp and other libraries under `miwv.`."""
    name = target.replace("::", ".").replace("-", "_")
    if name != "miwv" and not name.startswith("miwv."):
        name = "miwv." + name
    return logging.getLogger(name)


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


class Events:
    """Receives the native module's events on the calling thread."""

    def __init__(self, progress: Progress) -> None:
        self.callback: Optional[ProgressCallback] = None
        self.bars: Dict[str, Any] = {}
        self.totals: Dict[str, Optional[int]] = {}
        self.units: Dict[str, str] = {}
        self.tqdm: Any = None
        if callable(progress):
            self.callback = progress
        elif progress or (progress is None and (sys.stderr.isatty() or _in_notebook())):
            # Bars where they are drawn (a terminal, a notebook), none in a log file.
            try:
                from tqdm.auto import tqdm

                self.tqdm = tqdm
            except ImportError:
                if progress:
                    raise

    def __call__(self, kind: str, *args: Any) -> None:
        getattr(self, "_" + kind)(*args)

    def _log(self, level: int, target: str, message: str) -> None:
        log = _logger_for(target)
        if log.isEnabledFor(level):
            log.log(level, message)

    def _started(self, phase: str, total: Optional[int], unit: str) -> None:
        self.totals[phase] = total
        self.units[phase] = unit
        if self.tqdm is not None:
            self.bars[phase] = self.tqdm(total=total, desc=phase, unit=f" {unit}" if unit else "it")
        self._advanced(phase, 0)

    def _advanced(self, phase: str, done: int) -> None:
        bar = self.bars.get(phase)
        if bar is not None:
            bar.update(done - bar.n)
        if self.callback is not None:
            self.callback(phase, done, self.totals.get(phase), self.units.get(phase, ""))

    def _noted(self, phase: str, message: str) -> None:
        bar = self.bars.get(phase)
        if bar is not None:
            bar.set_postfix_str(message, refresh=False)

    def _finished(self, phase: str) -> None:
        bar = self.bars.pop(phase, None)
        if bar is not None:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
