"""The validation vocabulary of the hand-written checks (route records and the app manifest).

One way to say each thing, so a record decoded on sync and a manifest posted to the admin
report a problem the same way:

- **Type names** — :func:`type_name` names a value's kind in the words of the data model (YAML
  and JSON alike): ``null``, ``boolean``, ``integer``, ``number``, ``string``, ``list``,
  ``mapping``, and YAML's ``timestamp`` / ``date``. A type error reads
  ``must be a <kind>, not <type_name>`` (:func:`type_error`).
- **Field paths** — ``spec.services.web.upstreams[0]``: keys joined by ``.``, list positions in
  ``[i]``, ``$`` for the whole value (:data:`ROOT`; a key directly under it has no prefix). Built
  by :func:`field_path` and :func:`index_path`; a key is shown printable and at most 64
  characters (:func:`key_text`).
- **Errors** — one failing field is a :class:`~routing.errors.FieldError` ``(path, reason)``
  (``RecordError`` is the same class). First-error checks (records) raise it; collect-all
  validation (the manifest) runs each check under a :class:`Collector`, which turns the raise
  into an :class:`~routing.errors.Issue` and goes on, then raises one
  :class:`~routing.errors.InvalidFields` listing every issue (the admin's 422 ``details``).
- **Checks** — :func:`expect_mapping`, :func:`expect_list`, :func:`expect_string`,
  :func:`expect_bool`, :func:`integer`, :func:`one_of` and :func:`key_problems` (unknown and
  missing keys), shared by both.

Hot paths (a full sync decodes every record) call these only where they cost no more than the
inline check they replace: each check is one call with the path already built, and a message is
formatted only on failure.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from typing import Any, Final, ParamSpec, TypeVar

from routing.errors import FieldError, InvalidFields, Issue

__all__ = [
    "ROOT",
    "Collector",
    "FieldError",
    "InvalidFields",
    "Issue",
    "expect_bool",
    "expect_list",
    "expect_mapping",
    "expect_string",
    "field_path",
    "index_path",
    "integer",
    "key_problems",
    "key_text",
    "one_of",
    "range_error",
    "type_error",
    "type_name",
]

ROOT: Final = "$"
MAX_KEY_TEXT: Final = 64
MAX_SHOWN_DIGITS: Final = 15  # a longer integer is shown as its digit count, not in full

_T = TypeVar("_T")
_P = ParamSpec("_P")


# --------------------------------------------------------------------------------- words


def type_name(value: object) -> str:
    """The kind of ``value`` as messages name it (``must be a string, not integer``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, datetime.datetime):
        return "timestamp"
    if isinstance(value, datetime.date):
        return "date"
    return type(value).__name__


def key_text(key: object) -> str:
    """A mapping key as a path segment: non-printable characters escaped, at most 64 chars."""
    text = key if isinstance(key, str) else str(key)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)
    return text if len(text) <= MAX_KEY_TEXT else f"{text[: MAX_KEY_TEXT - 3]}..."


def field_path(parent: str, key: object) -> str:
    """The path of ``key`` inside the mapping at ``parent`` (``spec`` + ``routes``)."""
    segment = key_text(key)
    return segment if parent == ROOT or not parent else f"{parent}.{segment}"


def index_path(parent: str, index: int) -> str:
    """The path of item ``index`` of the list at ``parent`` (``spec.routes[2]``)."""
    return f"{parent}[{index}]"


def type_error(path: str, expected: str, value: object) -> FieldError:
    """``must be <expected>, not <type_name(value)>`` at ``path`` (``expected``: "a string")."""
    return FieldError(path, f"must be {expected}, not {type_name(value)}")


def range_error(path: str, lo: int, hi: int, value: int) -> FieldError:
    shown = (
        value if abs(value) < 10**MAX_SHOWN_DIGITS else f"a number of {len(str(abs(value)))} digits"
    )
    return FieldError(path, f"must be between {lo} and {hi}, got {shown}")


# --------------------------------------------------------------------------------- checks
# Each returns the value (narrowed) or raises FieldError(path, reason) for that one field.


def expect_mapping(value: Any, path: str) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise type_error(path, "a mapping", value)
    return value


def expect_list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise type_error(path, "a list", value)
    return value


def expect_string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise type_error(path, "a string", value)
    return value


def expect_bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise type_error(path, "a boolean", value)
    return value


def integer(value: Any, path: str, lo: int, hi: int) -> int:
    """An integer in ``lo..hi`` (a boolean is not one)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise type_error(path, "an integer", value)
    if not lo <= value <= hi:
        raise range_error(path, lo, hi, value)
    return value


def one_of(value: Any, path: str, choices: tuple[_T, ...]) -> _T:
    """``value`` if it is one of the string ``choices`` (the choice itself is returned)."""
    text = expect_string(value, path)
    for choice in choices:
        if text == choice:
            return choice
    raise FieldError(path, f"must be one of {', '.join(map(str, choices))}, not {text[:64]!r}")


def key_problems(
    obj: dict[Any, Any],
    path: str,
    required: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
) -> list[Issue]:
    """Unknown keys of ``obj`` (in its order), then missing required ones."""
    allowed = (*required, *optional)
    found = [
        Issue(field_path(path, key), f"unknown field (allowed: {', '.join(allowed)})")
        for key in obj
        if key not in allowed
    ]
    found.extend(Issue(field_path(path, key), "is required") for key in required if key not in obj)
    return found


# --------------------------------------------------------------------------------- collect-all


class Collector:
    """Collects issues for a collect-all validation; :meth:`check` runs one first-error check
    and records its failure instead of raising, :meth:`raise_if_any` ends the validation."""

    def __init__(self, limit: int = 50) -> None:
        self.items: list[Issue] = []
        self.limit = limit  # issues past it are dropped (one answer stays bounded)

    def add(self, path: str, message: str) -> None:
        if len(self.items) < self.limit:
            self.items.append(Issue(path, message))

    def extend(self, issues: Iterable[tuple[str, str]]) -> None:
        for path, message in issues:
            self.add(path, message)

    def check(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T | None:
        """``fn(*args, **kwargs)``, or ``None`` with its :class:`FieldError` recorded."""
        try:
            return fn(*args, **kwargs)
        except FieldError as exc:
            self.add(exc.path, exc.reason)
            return None

    def raise_if_any(self, error: Callable[[list[Issue]], Exception] = InvalidFields) -> None:
        """Raise ``error(issues)`` (one exception listing every issue) if any was found."""
        if self.items:
            raise error(self.items)
