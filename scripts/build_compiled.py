"""Build the mypyc-compiled hot path out of tree, for the test suite and the benchmarks.

Production installs compile in place of the pure-Python modules (``pip install .``, see
``setup.py``). Development uses an editable install, which stays pure Python: compiled modules
next to the sources would silently shadow every later edit. This script gives tests and
benchmarks the compiled variant without that risk: it copies ``routing/`` and ``gateway/`` into
``build/compiled/src`` and compiles the modules listed under ``[tool.turnout]
compiled-modules`` in ``pyproject.toml`` there. A stamp (hash of the sources, the module list,
the Python and the mypy version) makes a second run with unchanged sources a no-op.

Use the result with ``PYTHONPATH=build/compiled/src`` plus ``PYTHONSAFEPATH=1`` (so that a child
started with ``python -c`` from the repository root does not put the pure sources first)::

    .venv/bin/python scripts/build_compiled.py          # prints the directory to put on PYTHONPATH
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("routing", "gateway")


def compiled_modules(root: Path = ROOT) -> list[str]:
    with (root / "pyproject.toml").open("rb") as fh:
        conf = tomllib.load(fh)
    modules: list[str] = conf["tool"]["turnout"]["compiled-modules"]
    return modules


def cython_modules(root: Path = ROOT) -> list[str]:
    """The Cython extensions (``[tool.turnout] cython-modules``): compiled twins of pure-Python
    modules that stay the reference."""
    if not (root / "pyproject.toml").is_file():
        return []
    with (root / "pyproject.toml").open("rb") as fh:
        conf = tomllib.load(fh)
    modules: list[str] = conf["tool"]["turnout"].get("cython-modules", [])
    return modules


def _sources(root: Path) -> list[Path]:
    return sorted(
        p for pkg in PACKAGES for pattern in ("*.py", "*.pyx") for p in (root / pkg).rglob(pattern)
    )


def _stamp(root: Path, modules: list[str]) -> str:
    import Cython
    import mypy.version

    h = hashlib.sha256()
    h.update(sys.version.encode())
    h.update(mypy.version.__version__.encode())
    h.update(Cython.__version__.encode())
    h.update("\n".join(modules + cython_modules(root)).encode())
    for path in _sources(root):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def build(root: Path = ROOT, out: Path | None = None, *, quiet: bool = True) -> Path:
    """Compile (or reuse) and return the directory to put first on ``sys.path``."""
    out = out or root / "build" / "compiled"
    src = out / "src"
    modules = compiled_modules(root)
    stamp = _stamp(root, modules)
    stamp_file = out / "stamp"
    if stamp_file.exists() and stamp_file.read_text() == stamp and src.is_dir():
        return src
    if out.exists():
        shutil.rmtree(out)
    src.mkdir(parents=True)
    for pkg in PACKAGES:
        shutil.copytree(root / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy(root / "pyproject.toml", src / "pyproject.toml")  # mypy settings
    mypyc = Path(sys.executable).with_name("mypyc")
    cmd = [str(mypyc) if mypyc.exists() else "mypyc", *modules]
    result = subprocess.run(cmd, cwd=src, capture_output=True, text=True, env=os.environ.copy())
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-20000:] + result.stderr[-20000:])
        raise SystemExit(f"mypyc failed (exit {result.returncode}): {' '.join(cmd)}")
    if not quiet:
        sys.stderr.write(result.stdout)
    shutil.rmtree(src / "build", ignore_errors=True)
    cython = cython_modules(root)
    _cythonize(src, cython, quiet=quiet)
    built = [*modules, *cython]
    missing = [m for m in built if not list((src / Path(m).parent).glob(Path(m).stem + ".*.so"))]
    if missing:
        raise SystemExit(f"mypyc produced no extension for: {', '.join(missing)}")
    stamp_file.write_text(stamp)
    return src


def _cythonize(src: Path, modules: list[str], *, quiet: bool) -> None:
    """Build the Cython extensions in place in ``src`` (the same directives as setup.py)."""
    code = (
        "import sys; from setuptools import setup, Extension; "
        "from Cython.Build import cythonize; "
        "mods = sys.argv[1:]; sys.argv[1:] = ['build_ext', '--inplace']; "
        "setup(script_args=sys.argv[1:], ext_modules=cythonize("
        "[Extension(m[:-4].replace('/', '.'), [m]) for m in mods], "
        "compiler_directives={'language_level': 3}, quiet=True))"
    )
    cmd = [sys.executable, "-c", code, *modules]
    result = subprocess.run(cmd, cwd=src, capture_output=True, text=True, env=os.environ.copy())
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-20000:] + result.stderr[-20000:])
        raise SystemExit(f"cython failed (exit {result.returncode}): {' '.join(modules)}")
    if not quiet:
        sys.stderr.write(result.stdout)
    shutil.rmtree(src / "build", ignore_errors=True)


def main() -> int:
    print(build(quiet="-v" not in sys.argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
