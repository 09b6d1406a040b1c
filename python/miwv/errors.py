"""The exceptions miwv raises. Each carries the message the `miwv` command prints."""

from __future__ import annotations

__all__ = ["MiwvError", "DataError", "ModelError", "OptionsError", "Interrupted"]


class MiwvError(Exception):
    """Any failure of a run: the base of the others, and itself for what is none of them
    (a run locked by another process, an unwritable directory, a checkpoint made with other
    settings)."""


class DataError(MiwvError, ValueError):
    """The data cannot be read or scored: the message names the file, line (or record) and
    field at fault."""


class ModelError(MiwvError):
    """A model file is missing, is not a GGUF model, or cannot be used (its template, its
    tokenizer)."""


class OptionsError(MiwvError, ValueError):
    """An option is unknown, of the wrong type, out of range, or at odds with another; the
    message is the command line's."""


class Interrupted(MiwvError, KeyboardInterrupt):
    """Ctrl-C stopped the run after its current batch. What was scored is saved: calling
    again with the same arguments resumes. It is a `KeyboardInterrupt`, so code that stops
    on Ctrl-C stops on it too."""
