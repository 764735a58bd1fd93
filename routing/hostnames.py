"""Hostname rules shared by records, the admin and the gateway.

Record hostnames follow RFC 1035 as the spec narrows it: lower case, at most 253 characters,
labels of 1-63 characters from ``[a-z0-9-]`` with no leading or trailing hyphen, optionally one
leading ``*.`` wildcard label. Request ``Host`` headers are normalised cheaply on ``bytes``.
"""

from __future__ import annotations

import re

from routing.errors import RecordError
from routing.validation import type_error

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_DELETE_VALID = b"abcdefghijklmnopqrstuvwxyz0123456789-."
_PORT_DIGITS = b"0123456789"
MAX_HOST_LEN = 253


def validate_hostname(value: object, path: str = "host", *, allow_wildcard: bool = True) -> str:
    """Return ``value`` as a valid record hostname or raise :class:`RecordError`.

    The value must already be lower case: a record is canonical, so ``Example.com`` is an error
    here rather than silently changed (the admin lower-cases user input before building records).
    """
    if not isinstance(value, str):
        raise type_error(path, "a string", value)
    host = value
    if not host:
        raise RecordError(path, "must not be empty")
    if len(host) > MAX_HOST_LEN:
        raise RecordError(path, f"must be at most {MAX_HOST_LEN} characters, got {len(host)}")
    if host != host.lower():
        raise RecordError(path, "must be lower case")
    if host.endswith("."):
        raise RecordError(path, "must not end with a dot")
    labels = host.split(".")
    if labels[0] == "*":
        if not allow_wildcard:
            raise RecordError(path, "wildcard hostnames are not allowed here")
        if len(labels) < 3:
            raise RecordError(path, "a wildcard needs at least two labels after '*.'")
        labels = labels[1:]
    for i, label in enumerate(labels):
        if "*" in label:
            raise RecordError(path, "a wildcard is only allowed as the whole first label ('*.')")
        if not label:
            raise RecordError(path, "empty label (two dots in a row, or a leading dot)")
        if len(label) > 63:
            raise RecordError(path, f"label {i + 1} is longer than 63 characters")
        if _LABEL.fullmatch(label) is None:
            raise RecordError(
                path,
                f"label {label!r} may only hold a-z, 0-9 and '-', and not start or end with '-'",
            )
    return host


def is_wildcard(host: str) -> bool:
    return host.startswith("*.")


_HOST_CACHE: dict[bytes, bytes | None] = {}
_HOST_CACHE_MAX = 4096


def normalize_request_host(raw: bytes) -> bytes | None:
    """Cached :func:`_normalize_request_host`: a gateway sees the same few Host values."""
    try:
        return _HOST_CACHE[raw]
    except KeyError:
        pass
    host = _normalize_request_host(raw)
    if len(_HOST_CACHE) >= _HOST_CACHE_MAX:
        _HOST_CACHE.clear()
    _HOST_CACHE[raw] = host
    return host


def _normalize_request_host(raw: bytes) -> bytes | None:
    """Normalise a request's ``Host`` value for lookup: lower-case, port and trailing dot removed.

    Returns ``None`` for a malformed value (the gateway answers 400). IP literals are accepted
    (they simply never match a record); a bracketed IPv6 literal is returned with its brackets.
    """
    if not raw:
        return None
    if raw[0] == 0x5B:  # "[" IPv6 literal
        end = raw.find(b"]")
        if end < 0:
            return None
        rest = raw[end + 1 :]
        if rest and (rest[0] != 0x3A or not _valid_port(rest[1:])):
            return None
        literal = raw[: end + 1].lower()
        if literal.translate(None, b"[]0123456789abcdef:."):
            return None
        return literal
    colon = raw.find(b":")
    if colon >= 0:
        if not _valid_port(raw[colon + 1 :]):
            return None
        raw = raw[:colon]
    host = raw.lower()
    if host.endswith(b"."):
        host = host[:-1]
    if not host or len(host) > MAX_HOST_LEN or host.translate(None, _DELETE_VALID):
        return None
    if host[0] == 0x2E or host[-1] == 0x2E or b".." in host:  # leading dot or empty label
        return None
    return host


def wildcard_parent(host: bytes) -> bytes | None:
    """``a.b.example.com`` → ``*.b.example.com`` (one level only); ``None`` without a parent."""
    dot = host.find(b".")
    if dot <= 0 or host.find(b".", dot + 1) < 0:
        return None
    return b"*" + host[dot:]


def _valid_port(port: bytes) -> bool:
    return 0 < len(port) <= 5 and not port.translate(None, _PORT_DIGITS) and int(port) <= 65535
