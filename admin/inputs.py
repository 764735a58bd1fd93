"""Client input outside the JSON body schema: query and path parameters, headers, body strings.

One rule per kind, used everywhere the admin reads such input, so a whole class of 500s cannot
come back through a sibling:

- **Integers** (``?limit=``, ``Content-Length``, integer path parameters) are ASCII digits only
  and length-checked *before* ``int()``: ``'²'.isdigit()`` is true and ``int('²')`` fails, and a
  4 301-digit string exceeds Python's conversion limit. Out of range or not a number → 422 naming
  the field (``query.limit``); a bad ``Content-Length`` → 400, one over the limit → 413.
- **Text** parameters are at most :data:`MAX_PARAM_LEN` printable characters: no controls
  (``%00`` decodes to NUL, which PostgreSQL text refuses), no lone surrogates, no U+FFFE → 422
  naming ``path.<name>`` / ``query.<name>``.
- **Body strings** never hold NUL (JSON allows ``"\\u0000"``; orjson already refuses lone
  surrogates) → 422 naming the field, checked by the models' shared validator
  (:func:`refuse_nul`).
- **Checks from the validation vocabulary** (:mod:`routing.validation`: hostnames, manifests)
  fail with a :class:`~routing.errors.FieldError` (one field) or an
  :class:`~routing.errors.InvalidFields` (every issue); :func:`unprocessable` is the one way
  either becomes a 422 whose ``details.fields`` lists the ``{"path", "message"}`` issues.
- **X-Request-Id** from the client is kept only if it is 1..128 of ``[A-Za-z0-9._:-]`` (else 422
  naming ``header.X-Request-Id``); it is stored apart from the server's own request id, which the
  server always generates (:func:`new_request_id`).
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Final

from admin.errors import ApiError, PayloadTooLarge, Unprocessable, field_error
from routing.errors import FieldError, InvalidFields

MAX_PARAM_LEN: Final = 255
MAX_INT_DIGITS: Final = 18  # below 2**63: fits a BIGINT column and never reaches int()'s limit
CLIENT_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_ASCII_DIGITS = re.compile(r"[0-9]+")


def new_request_id() -> str:
    """The server's id for one request: 32 hex digits, never taken from the client."""
    return secrets.token_hex(16)


def client_int(raw: str, path: str, lo: int, hi: int) -> int:
    """``raw`` as an integer in ``lo..hi``, or 422 naming ``path``."""
    if len(raw) <= MAX_INT_DIGITS and _ASCII_DIGITS.fullmatch(raw):
        value = int(raw)
        if lo <= value <= hi:
            return value
    raise field_error(path, f"must be an integer {lo}..{hi}")


def client_text(raw: str, path: str, max_len: int = MAX_PARAM_LEN) -> str:
    """``raw`` if it is at most ``max_len`` printable characters, or 422 naming ``path``."""
    if len(raw) > max_len:
        raise field_error(path, f"must be at most {max_len} characters")
    if not raw.isprintable():
        bad = next(c for c in raw if not c.isprintable())
        raise field_error(path, f"must not contain U+{ord(bad):04X} (only printable characters)")
    return raw


def unprocessable(exc: FieldError | InvalidFields, *, code: str | None = None) -> Unprocessable:
    """A validation failure as a 422: the error's text as the message, its issues as
    ``details.fields`` (one for a :class:`FieldError`, every one for :class:`InvalidFields`)."""
    issues = [exc.issue] if isinstance(exc, FieldError) else exc.issues
    return Unprocessable(str(exc), [{"path": p, "message": m} for p, m in issues], code=code)


def client_request_id(raw: str | None) -> str | None:
    """The client's ``X-Request-Id`` (None when absent), or 422 naming the header."""
    if raw is None:
        return None
    if CLIENT_REQUEST_ID.fullmatch(raw):
        return raw
    raise field_error("header.X-Request-Id", "must be 1..128 of A-Z a-z 0-9 . _ : -")


def content_length(raw: str | None, limit: int) -> int | None:
    """The declared body size (None when absent): 400 if it is not a number, 413 over ``limit``."""
    if raw is None:
        return None
    raw = raw.strip()
    if not _ASCII_DIGITS.fullmatch(raw):
        err = ApiError(
            "Content-Length must be a non-negative integer",
            code="bad_request",
            details={"fields": [{"path": "header.Content-Length", "message": "not an integer"}]},
        )
        raise err
    if len(raw) > MAX_INT_DIGITS or int(raw) > limit:
        raise PayloadTooLarge(f"request body larger than {limit} bytes")
    return int(raw)


def refuse_nul(value: Any) -> Any:
    """A pydantic after-validator for every field: strings (also inside lists and dicts) must
    not hold NUL. Raises ``ValueError`` (pydantic turns it into a 422 naming the field)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("must not contain U+0000 (NUL)")
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            refuse_nul(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            refuse_nul(key)
            refuse_nul(item)
    return value
