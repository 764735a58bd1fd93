"""Which build of the hot path this test run must exercise.

``scripts/test`` runs the suite on the pure-Python sources, then runs ``tests/routing`` and
``tests/gateway`` again on the mypyc-compiled modules (``scripts/build_compiled.py``) with
``TURNOUT_EXPECT_COMPILED=1``; tests check that the build they see is the one intended, so a
path mistake cannot turn the compiled run into a second pure-Python run.
"""

from __future__ import annotations

import os

EXPECT_COMPILED = os.environ.get("TURNOUT_EXPECT_COMPILED", "") == "1"
