"""The `miwv` command that `pip install` puts on the PATH: the binary's command line, run by
the same library code."""

from __future__ import annotations

import sys


def main() -> None:
    from miwv import _native

    sys.exit(_native.main(["miwv", *sys.argv[1:]]))
