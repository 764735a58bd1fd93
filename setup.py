"""Build hook: compile the gateway's hot path with mypyc for regular installs.

``pip install .`` (or building a wheel) compiles the modules listed under ``[tool.turnout]
compiled-modules`` in ``pyproject.toml`` into C extensions — the same code, about half the
Python time per request (benchmarks/RESULTS.md) — and builds the Cython extensions listed under
``cython-modules`` (``gateway/_headc.pyx``: the compiled twin of ``gateway/head.py``, which
stays the reference and the fallback). An editable install (``pip install -e .``,
development) stays pure Python: extensions next to the sources would shadow every later edit.

``TURNOUT_COMPILE`` unset: compile, and fall back to pure Python with a warning when that is not
possible (no C compiler, no Python headers) — as markupsafe and simplejson treat their
speedups. ``TURNOUT_COMPILE=1``: compile or fail the build. ``TURNOUT_COMPILE=0``: pure Python.
Everything else lives in pyproject.toml.
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
FLAG = os.environ.get("TURNOUT_COMPILE", "").strip().lower()
REQUIRED = FLAG in ("1", "true", "yes")
DISABLED = FLAG in ("0", "false", "no")


def _warn(exc: BaseException) -> None:
    sys.stderr.write(
        f"WARNING: turnout: compiling the hot path (mypyc, Cython) failed ({exc}); installing the "
        "pure-Python modules instead (about 2x more CPU per request). Install a C compiler and "
        "the Python headers (Debian: build-essential python3-dev) or set TURNOUT_COMPILE=1 to "
        "make this an error.\n"
    )


class OptionalBuildExt(build_ext):
    """``build_ext`` that degrades to pure Python unless compiling was required.

    All or nothing: mypyc puts the code of every module in one shared library and each module's
    extension only imports it, so after any failure every built extension is removed (a partial
    set would fail at import)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            if REQUIRED:
                raise
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            self.extensions = []
            self.distribution.ext_modules = []
            _warn(exc)


# Commands that build extensions. Metadata-only runs (egg_info, dist_info: pip's "getting
# requirements" and "preparing metadata" steps), sdists and editable installs (editable_wheel,
# develop) get no ext_modules, so they never run mypyc.
BUILDS: frozenset[str] = frozenset({"bdist_wheel", "build", "build_ext", "install"})


def _ext_modules() -> list[Any]:
    if DISABLED or not BUILDS.intersection(sys.argv) or "editable_wheel" in sys.argv:
        return []
    with (HERE / "pyproject.toml").open("rb") as fh:
        conf = tomllib.load(fh)["tool"]["turnout"]
    try:
        from Cython.Build import cythonize
        from mypyc.build import mypycify
        from setuptools import Extension

        cython = [
            Extension(m[: -len(".pyx")].replace("/", "."), [m]) for m in conf["cython-modules"]
        ]
        return [
            *mypycify(conf["compiled-modules"], opt_level="3"),
            *cythonize(cython, compiler_directives={"language_level": 3}, quiet=True),
        ]
    except (Exception, SystemExit) as exc:  # mypy reports type errors with sys.exit()
        if REQUIRED:
            raise
        _warn(exc)
        return []


# The C that cythonize writes next to a .pyx is a build product, never package data.
setup(
    ext_modules=_ext_modules(),
    cmdclass={"build_ext": OptionalBuildExt},
    exclude_package_data={"gateway": ["*.c", "*.pyx"]},
)
