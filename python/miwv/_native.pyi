"""The native module: the miwv library, reached through its command line."""

from typing import Callable, List, Sequence

OPENMP_WAIT: tuple[str, str]
OPENMP_WAIT_VARIABLES: List[str]

def main(argv: Sequence[str]) -> int:
    """Runs the `miwv` command line `argv` (program name first) as the binary does; returns
    its exit code."""

def flags(subcommand: str) -> List[str]:
    """The long flags of a subcommand, without their dashes."""

def run(args: Sequence[str], on_event: Callable[..., None], log_level: int) -> str:
    """Runs `miwv ARGS...` through the library; returns its outcome as JSON text.

    Raises the `miwv.errors` exception for the failure, carrying the command's message."""
