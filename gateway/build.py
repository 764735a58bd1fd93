"""Which build of the hot path this process runs: mypyc-compiled or pure Python.

``pip install .`` compiles the modules listed under ``[tool.turnout] compiled-modules`` in
``pyproject.toml`` (about 1.9× less Python time per request, see benchmarks/RESULTS.md); an
editable install (development) keeps them pure Python. Operators see the answer in the worker's
start-up log line, ``/readyz`` and the ``turnout_build_info`` metric.
"""

from __future__ import annotations

import importlib
import importlib.machinery
from functools import cache

HOT_MODULES = (
    "gateway.native",
    "gateway.upstream",
    "gateway.pool",
    "gateway.dispatch",
    "gateway.headers",
    "gateway.forwarding",
    "routing.compiled",
)


@cache
def compiled() -> bool:
    """True when every hot-path module was loaded from a compiled extension."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return all(
        str(getattr(importlib.import_module(name), "__file__", "")).endswith(suffixes)
        for name in HOT_MODULES
    )


def describe() -> str:
    return "compiled (mypyc)" if compiled() else "pure Python"
