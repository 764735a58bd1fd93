"""Internationalised labels under the platform base domain: their Unicode form and skeleton.

A label under the base domain is granted to the first space that asks (admin/api/services.py),
so an ``xn--`` label could pass for another tenant's name: ``xn--pple-43d`` is "аpple" with a
Cyrillic "а". UTS #39 (Unicode Security Mechanisms) defines when two strings are confusable:
their *skeletons* are equal. The skeleton is ICU's (``uspoof_getSkeleton`` through PyICU), the
reference implementation of UTS #39 and its confusables data — the same check browsers use
before they show a Unicode hostname; a table of our own would lag behind Unicode's.

An ``xn--`` label must be a valid IDNA 2008 A-label (the ``idna`` package); its Unicode form is
what the skeleton is computed from. ASCII labels are their own Unicode form.

PyICU is the optional extra ``turnout[idn]`` (it builds against the system ICU: ``libicu-dev``),
so a plain ``pip install`` works on any machine. Without it :func:`skeleton_key` answers None and
the admin refuses new ``xn--`` labels under the base domain (fail closed, 503
``idn_unavailable``); keys missing from rows claimed meanwhile are computed on the fly once PyICU
is installed, like rows from before skeletons were stored.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

import idna

try:
    import icu  # type: ignore[import-untyped]  # PyICU ships no type information
except ImportError:  # the optional extra turnout[idn] is not installed
    icu = None

ACE_PREFIX: Final = "xn--"
_CHECKER: Final[Any] = icu.SpoofChecker() if icu is not None else None
AVAILABLE: Final = _CHECKER is not None


class IdnaLabelError(ValueError):
    """An ``xn--`` label that is not a valid IDNA A-label."""


def is_ace(label: str) -> bool:
    return label.startswith(ACE_PREFIX)


def unicode_label(label: str) -> str:
    """The Unicode form (U-label) of ``label``; ASCII labels are returned as they are.

    Raises :class:`IdnaLabelError` for an ``xn--`` label that does not decode to a valid
    IDNA 2008 label (bad Punycode, disallowed code points, an all-ASCII payload...)."""
    if not is_ace(label):
        return label
    try:
        decoded = idna.decode(label)
    except (idna.IDNAError, UnicodeError) as exc:
        raise IdnaLabelError(f"{label} is not a valid internationalised label: {exc}") from None
    if decoded.isascii():  # "xn--" + an ASCII payload is another spelling of an ASCII name
        raise IdnaLabelError(f"{label} is not a valid internationalised label")
    return decoded


def skeleton(label: str, checker: Any = _CHECKER) -> str | None:
    """The UTS #39 skeleton of ``label``'s Unicode form (confusable labels have equal ones), or
    None without PyICU. Invalid ``xn--`` labels raise :class:`IdnaLabelError` either way."""
    text = unicode_label(label)
    return None if checker is None else str(checker.getSkeleton(0, text))


def skeleton_key(label: str, checker: Any = _CHECKER) -> str | None:
    """SHA-256 hex of :func:`skeleton` — a fixed-size, indexable stand-in (a skeleton can be
    several times longer than its label); None without PyICU."""
    sk = skeleton(label, checker)
    return None if sk is None else hashlib.sha256(sk.encode()).hexdigest()
