"""Exceptions raised by the routing core (one tree, rooted at :class:`RoutingError`).

The two validation errors belong to the vocabulary in :mod:`routing.validation`: a
:class:`FieldError` is one failing field (``path``, ``reason``), raised by the first-error checks
(route records); :class:`InvalidFields` carries every :class:`Issue` a collect-all validation
found (the manifest), raised once at its end.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


class RoutingError(Exception):
    """Base of every error raised by :mod:`routing`."""


class Issue(NamedTuple):
    """One validation problem: the field path (``spec.services.web.upstreams[0]``) and why."""

    path: str
    message: str


class FieldError(RoutingError, ValueError):
    """A value failed validation at one field.

    ``path`` names the failing field (``endpoints[0].targets[1].weight``; ``$`` is the whole
    value), ``reason`` says why.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path or "$"
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    @property
    def issue(self) -> Issue:
        return Issue(self.path, self.reason)


# A route record (or one of its parts) failed validation: the name the record decoders' callers
# catch. It is the vocabulary's field error, not a subclass, so a shared check (hostnames,
# upstream URLs) raises the one type whoever calls it.
RecordError = FieldError


class InvalidFields(RoutingError):
    """A collect-all validation failed; ``issues`` lists every ``(path, message)`` found."""

    def __init__(self, issues: Iterable[tuple[str, str]], what: str = "invalid") -> None:
        self.issues: tuple[Issue, ...] = tuple(Issue(p, m) for p, m in issues)
        shown = "; ".join(f"{i.path}: {i.message}" for i in self.issues[:5])
        more = f" (and {len(self.issues) - 5} more)" if len(self.issues) > 5 else ""
        super().__init__(f"{what}: {shown}{more}")

    def as_details(self) -> list[dict[str, str]]:
        """The issues as JSON-ready ``{"path", "message"}`` objects for an error envelope."""
        return [{"path": i.path, "message": i.message} for i in self.issues]


class StoreError(RoutingError):
    """The route store could not be reached or answered something unexpected."""


class StaleVersionError(RoutingError):
    """A publish carried a version that is not newer than the stored one."""

    def __init__(self, host: str, version: int, current: int) -> None:
        self.host = host
        self.version = version
        self.current = current
        super().__init__(
            f"{host}: version {version} is not newer than the stored version {current}"
        )
