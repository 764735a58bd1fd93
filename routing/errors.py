"""Exceptions raised by the routing core (one tree, rooted at :class:`RoutingError`)."""

from __future__ import annotations


class RoutingError(Exception):
    """Base of every error raised by :mod:`routing`."""


class RecordError(RoutingError, ValueError):
    """A route record (or one of its parts) failed validation.

    ``path`` names the failing field (``endpoints[0].targets[1].weight``), ``reason`` says why.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path or "$"
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


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
