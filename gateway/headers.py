"""Header tables shared by the dispatcher (request side) and the upstream pool (response side).

Each header name is classified once per distinct spelling (any case) into a small int, cached
and bounded, so the hot path compares ints instead of lower-casing and probing sets per header.
"""

from __future__ import annotations

from typing import Final

# Lower-case names dropped on the way upstream (framing is re-emitted by the front-end).
_DROP_REQUEST: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"expect",
        b"host",
        b"x-forwarded-host",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-request-id",
    }
)

# Bits of a parsed request head's ``summary`` flags (gateway.head.RequestHead.summary; the
# Cython twin repeats them, tests/gateway/test_head_diff.py checks they agree).
HEAD_KEEP_ALIVE: Final = 1
HEAD_VERSION_10: Final = 2
HEAD_UPGRADE: Final = 4
HEAD_CHUNKED: Final = 8
HEAD_EXPECT_CONTINUE: Final = 16
HEAD_REFRAMED: Final = 32
# One of verdict, kept_h2, upgrade_value, xff, xfproto, request_id, override, cookie is set:
# without it the dispatcher reads none of them.
HEAD_RARE: Final = 64

# Bits of a parsed response head's ``summary`` flags (gateway.head.ResponseHead.summary).
RESP_BODY: Final = 1  # body_expected
RESP_CHUNKED: Final = 2
RESP_CLOSE_DELIMITED: Final = 4
RESP_KEEP_ALIVE: Final = 8
RESP_UPGRADE: Final = 16

# What a request header is to :meth:`Dispatcher.prepare`, decided once per distinct spelling of
# its name (see :func:`request_header_class`): an int compare per header on the hot path
# instead of lower() + a set probe + a chain of bytes compares.
H_FORWARD: Final = 0  # forwarded unchanged
H_DROP: Final = 1  # dropped: hop-by-hop, proxy-*, x-turnout-*, x-forwarded-host
H_CONTENT_LENGTH: Final = 2
H_TRANSFER_ENCODING: Final = 3
H_CONNECTION: Final = 4
H_X_FORWARDED_FOR: Final = 5
H_X_REQUEST_ID: Final = 6
H_EXPECT: Final = 7
H_UPGRADE: Final = 8
H_HOST: Final = 9
H_X_FORWARDED_PROTO: Final = 10
H_OVERRIDE: Final = 11  # x-turnout-deployment: read, not forwarded
H_COOKIE: Final = 12  # read (sticky cookie) and forwarded

_REQUEST_CLASSES: Final[dict[bytes, int]] = {
    **dict.fromkeys(_DROP_REQUEST, H_DROP),  # then the ones read before dropping:
    b"content-length": H_CONTENT_LENGTH,
    b"transfer-encoding": H_TRANSFER_ENCODING,
    b"connection": H_CONNECTION,
    b"x-forwarded-for": H_X_FORWARDED_FOR,
    b"x-request-id": H_X_REQUEST_ID,
    b"expect": H_EXPECT,
    b"upgrade": H_UPGRADE,
    b"host": H_HOST,
    b"x-forwarded-proto": H_X_FORWARDED_PROTO,
    b"x-turnout-deployment": H_OVERRIDE,
    b"cookie": H_COOKIE,
}
_CLASS_CACHE_MAX: Final = 2048
# Keyed by the name as received (any case). Bounded: a client inventing names only costs a
# clear now and then.
_request_class_cache: Final[dict[bytes, int]] = {}


def _remember(cache: dict[bytes, int], name: bytes, code: int) -> int:
    if len(cache) >= _CLASS_CACHE_MAX:
        cache.clear()
    cache[name] = code
    return code


def request_header_class(name: bytes) -> int:
    """The ``H_*`` class of a request header name, in any letter case."""
    code = _request_class_cache.get(name)
    if code is not None:
        return code
    lname = name.lower()
    code = _REQUEST_CLASSES.get(lname)
    if code is None:
        code = H_DROP if lname.startswith((b"x-turnout-", b"proxy-")) else H_FORWARD
    return _remember(_request_class_cache, name, code)


# Lower-case names dropped on the way back to the client (framing re-emitted too).
DROP_RESPONSE: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
        b"proxy-authenticate",
        b"x-request-id",
    }
)
# Response header classes for the upstream pool, cached like the request ones.
R_FORWARD: Final = 0
R_DROP: Final = 1
R_CONTENT_LENGTH: Final = 2
R_TRANSFER_ENCODING: Final = 3
R_CONNECTION: Final = 4
R_UPGRADE: Final = 5
_RESPONSE_CLASSES: Final[dict[bytes, int]] = {
    **dict.fromkeys(DROP_RESPONSE, R_DROP),  # then the ones read before dropping:
    b"content-length": R_CONTENT_LENGTH,
    b"transfer-encoding": R_TRANSFER_ENCODING,
    b"connection": R_CONNECTION,
    b"upgrade": R_UPGRADE,
}
_response_class_cache: Final[dict[bytes, int]] = {}


def response_header_class(name: bytes) -> int:
    """The ``R_*`` class of a response header name, in any letter case."""
    code = _response_class_cache.get(name)
    if code is not None:
        return code
    code = _RESPONSE_CLASSES.get(name.lower(), R_FORWARD)
    return _remember(_response_class_cache, name, code)


# Connection header values that nominate no header and request no upgrade: nothing to parse
# (either direction; the pool uses it too).
PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"Keep-Alive", b"close", b"Close"})


def absolute_form(url: bytes) -> tuple[bytes, bytes] | None:
    """``(authority, origin-form target)`` of an ``http://`` or ``https://`` absolute-form
    target (RFC 9112 §3.2.2: the authority replaces the Host header), or None if it is not one.
    The scheme does not change ``X-Forwarded-Proto``: that is the connection's, not a claim of
    the client's. Userinfo is refused (RFC 9110 §4.2.4)."""
    sep = url.find(b"://")
    if sep < 0 or url[:sep].lower() not in (b"http", b"https"):
        return None
    rest = url[sep + 3 :]
    end = len(rest)
    for stop in (b"/", b"?"):
        i = rest.find(stop)
        if 0 <= i < end:
            end = i
    authority = rest[:end]
    if not authority or b"@" in authority:
        return None
    target = rest[end:]
    if target[:1] != b"/":
        target = b"/" + target  # "http://host" or "http://host?q": the path is "/"
    return authority, target
