"""Build hook: compile the gateway's hot path with mypyc for regular installs.

``pip install .`` (or building a wheel) compiles the modules listed under ``[tool.turnout]
compiled-modules`` in ``pyproject.toml`` into C extensions — the same code, about 1.9× less
Python time per request (benchmarks/RESULTS.md). An editable install (``pip install -e .``,
development) stays pure Python: extensions next to the sources would shadow every later edit.
``TURNOUT_COMPILE=0`` builds a pure-Python wheel; ``TURNOUT_COMPILE=1`` insists on compiling
(the build fails instead of silently falling back). Everything else lives in pyproject.toml.
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent


def _ext_modules() -> list[object]:
    flag = os.environ.get("TURNOUT_COMPILE", "").strip().lower()
    if flag in ("0", "false", "no") or "editable_wheel" in sys.argv or "sdist" in sys.argv:
        return []
    with (HERE / "pyproject.toml").open("rb") as fh:
        modules = tomllib.load(fh)["tool"]["turnout"]["compiled-modules"]
    from mypyc.build import mypycify

    return list(mypycify(modules, opt_level="3"))


setup(ext_modules=_ext_modules())
