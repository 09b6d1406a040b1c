"""How OpenMP threads wait in this process, set before the native module loads OpenMP.

libgomp reads its settings once, when it is loaded. The `miwv` binary restarts itself with
`GOMP_SPINCOUNT=1000` (a short spin: the idle machine's speed, and no lost cores on a busy
one; docs/PERFORMANCE.md, "On a busy machine"); a Python process cannot restart, so the
package sets the same variable before importing the native module, unless the user chose
(`OMP_WAIT_POLICY` or `GOMP_SPINCOUNT`) or OpenMP is already loaded by another package.
"""

from __future__ import annotations

import os

#: The binary's choice, `miwv::engine::OPENMP_WAIT` (tests/test_api.py checks they agree).
OPENMP_WAIT = ("GOMP_SPINCOUNT", "1000")
#: The variables with which a user chooses, `miwv::engine::OPENMP_WAIT_VARIABLES`.
OPENMP_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def openmp_wait_policy() -> None:
    if not any(v in os.environ for v in OPENMP_WAIT_VARIABLES):
        os.environ[OPENMP_WAIT[0]] = OPENMP_WAIT[1]
