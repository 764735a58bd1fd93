"""The ``turnout`` command: a thin dispatcher over the gateway, admin and dev entry points.

Each subcommand's module is imported only when that subcommand runs, so ``turnout admin ...``
never pays for the gateway's imports (and vice versa), and a build that lacks a component
says so plainly instead of failing with a traceback.

Everything after the subcommand name is handed, untouched, to the target's ``main(argv)``
(including ``--help``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Final

# subcommand -> (module, help text); each module exposes ``main(argv: list[str]) -> int | None``
_TARGETS: Final[dict[str, tuple[str, str]]] = {
    "gateway": ("gateway.launcher", "run the dispatch gateway (data plane)"),
    "admin": ("admin.cli", "run or operate the admin plane (control plane)"),
    "dev": ("turnout.dev", "run a local all-in-one stack (try: turnout dev --demo)"),
}

# ``turnout admin rollout …`` is a small client of the admin API: loaded without the admin
# plane's own imports (SQLAlchemy, Alembic, crypto), so the live view starts at once.
_SUBTARGETS: Final[dict[tuple[str, str], str]] = {("admin", "rollout"): "admin.rollouts.cli"}

_BENCH_HELP: Final = (
    "compare the gateway with nginx and Python peers (benchmarks/throughput.py; needs wrk)"
)
_BENCH_MESSAGE: Final = (
    "turnout: benchmarks are not part of the installed package.\n"
    "Run them from a source checkout; see benchmarks/README.md "
    "(results are recorded in RESULTS.md)."
)

EntryPoint = Callable[[list[str]], "int | None"]


def _version() -> str:
    try:
        return version("turnout")
    except PackageNotFoundError:
        return "0+unknown"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="turnout",
        description="Turnout: multi-tenant dispatch gateway and admin plane.",
    )
    parser.add_argument("--version", action="version", version=f"turnout {_version()}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in _TARGETS.items():
        # add_help=False: `turnout gateway --help` is the target's help, not ours.
        subs.add_parser(name, help=help_text, add_help=False)
    subs.add_parser("bench", help=_BENCH_HELP, add_help=False)
    return parser


def _is_missing(exc: ModuleNotFoundError, module: str) -> bool:
    """True when ``exc`` means ``module`` itself (or a parent package) is absent.

    A missing *dependency* imported by an existing module is a real error and is re-raised.
    """
    missing = exc.name or ""
    return missing == module or module.startswith(missing + ".")


def _load(command: str, module_name: str | None = None) -> EntryPoint | None:
    module_name = module_name or _TARGETS[command][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if _is_missing(exc, module_name):
            return None
        raise
    entry = getattr(module, "main", None)
    if not callable(entry):
        return None
    return entry  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    ns, rest = parser.parse_known_args(args)
    command: str | None = ns.command

    if command is None:
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        parser.print_help(sys.stderr)
        return 2

    if command == "bench":
        return _bench(rest)

    sub = _SUBTARGETS.get((command, rest[0])) if rest else None
    entry = _load(command, sub)
    if sub is not None:
        rest = rest[1:]
    if entry is None:
        print(f"turnout: '{command}' is not available in this build yet", file=sys.stderr)
        return 2
    result = entry(rest)
    return 0 if result is None else int(result)


def _bench(args: list[str]) -> int:
    """``turnout bench [throughput.py flags]``: run the comparison from a source checkout."""
    import os
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "benchmarks", "throughput.py")
    if not os.path.exists(script):
        print(_BENCH_MESSAGE, file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, script, *args], cwd=root)


if __name__ == "__main__":
    sys.exit(main())
