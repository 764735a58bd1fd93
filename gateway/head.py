"""Request heads in one call: parse, decide, rewrite (the reference, and the pure-Python path).

:func:`parse_request` takes the bytes buffered from a client connection and returns

* ``None`` — the head is not complete yet and is within the limits (read more);
* a :class:`Rejected` — the bytes can never be a valid head: 400 (malformed) or 431 (over the
  header limits), and nothing after them may be parsed (the native server closes after the
  answer);
* a :class:`RequestHead` — method, target, version, the routing key (``host``: the Host
  header, or the authority of an absolute-form target, and ``path`` in origin form), the
  framing (``content_length`` / ``chunked``, ``keep_alive``, ``upgrade``, ``expect_continue``),
  the offset where the head ends, a ``verdict`` when the head is well-formed but the request is
  answered by the gateway without routing (a duplicate or malformed Host, an invalid
  Content-Length, a CONNECT, ...), and ``kept``: the header lines that go upstream unchanged.
  Lines already in canonical form (``Name: value`` CRLF) are slices of the input.

The rules are the native front-end's before this module existed: llhttp in its strict mode
(httptools ``HttpRequestParser``), the 431 limits counted as ``gateway/native.py`` counted them
(URL bytes plus ``len(name) + len(value) + 4`` per header, and the header count), then the
header classification of ``Dispatcher.prepare`` (``gateway/headers.py``). In short: RFC 9112
request lines and field lines; no obs-fold, no bare CR or LF inside the head, no whitespace
before the colon, token characters in names, visible characters (and HT, obs-text) in values;
Content-Length digits only, once; Transfer-Encoding ending in ``chunked`` and never with a
Content-Length; exactly one Host. The one deliberate difference: an incomplete head whose bytes
already exceed the limits is refused at once (llhttp counted a header only once it was whole).

:func:`parse_response` is the same for a response head (the rules of ``gateway/upstream.py``:
llhttp's response parser and ``UpstreamConnection.on_headers_complete``; see its section below).

``gateway/_headc.pyx`` is the same functions compiled with Cython; this module picks it when it
is importable (:data:`IMPLEMENTATION` says which runs). Its results are ``cdef class`` instances
with the same attribute names, registered as virtual subclasses of :class:`RequestHead` and
:class:`ResponseHead` (``isinstance`` holds for both implementations); :data:`HEAD_TYPE` and
:data:`RESPONSE_HEAD_TYPE` are the classes the picked functions return (``type(x) is HEAD_TYPE``
is the cheapest test; ``x is None`` / ``isinstance(x, Rejected)`` then "a head" is as cheap).
``tests/gateway/test_head_diff.py`` and ``tests/gateway/test_response_head_diff.py`` demand
identical results from both, and from this reference and httptools.
"""

from __future__ import annotations

import re
from abc import ABCMeta
from typing import Final

from gateway.errors import (
    BAD_HOST,
    BAD_LENGTH,
    BAD_REQUEST,
    BAD_TE,
    HEADERS_TOO_LARGE,
    Answer,
)
from gateway.headers import (
    H_CONNECTION,
    H_CONTENT_LENGTH,
    H_COOKIE,
    H_DROP,
    H_EXPECT,
    H_FORWARD,
    H_HOST,
    H_TRANSFER_ENCODING,
    H_UPGRADE,
    H_X_FORWARDED_FOR,
    H_X_FORWARDED_PROTO,
    H_X_REQUEST_ID,
    HEAD_CHUNKED,
    HEAD_EXPECT_CONTINUE,
    HEAD_KEEP_ALIVE,
    HEAD_RARE,
    HEAD_REFRAMED,
    HEAD_UPGRADE,
    HEAD_VERSION_10,
    PLAIN_CONNECTION,
    R_CONNECTION,
    R_CONTENT_LENGTH,
    R_FORWARD,
    R_TRANSFER_ENCODING,
    R_UPGRADE,
    RESP_BODY,
    RESP_CHUNKED,
    RESP_CLOSE_DELIMITED,
    RESP_KEEP_ALIVE,
    RESP_UPGRADE,
    request_header_class,
    response_header_class,
)
from gateway.headers import absolute_form as _absolute_form
from routing.hostnames import normalize_request_host


class Rejected:
    """A head that can never be valid: answer ``answer`` (400 or 431) and parse nothing more."""

    __slots__ = ("answer", "reason")

    def __init__(self, answer: Answer, reason: str) -> None:
        self.answer = answer
        self.reason = reason

    @property
    def status(self) -> int:
        return self.answer.status

    def __repr__(self) -> str:
        return f"Rejected({self.answer.status}, {self.reason!r})"


class RequestHead(metaclass=ABCMeta):
    """One parsed request head (see the module docstring).

    With the compiled twin picked, :func:`parse_request` returns instances of
    ``gateway._headc.RequestHead`` (a ``cdef class``: the same attribute names and meanings,
    ``headers`` built on first access) instead; it is registered as a virtual subclass, so
    ``isinstance(x, RequestHead)`` holds for both. :data:`HEAD_TYPE` is the class
    :func:`parse_request` returns (``type(x) is HEAD_TYPE`` is the cheapest test)."""

    __slots__ = (
        "chunked",
        "conn_upgrade",
        "content_length",
        "cookie",
        "end",
        "expect_continue",
        "header_host",
        "headers",
        "host",
        "hostkey",
        "keep_alive",
        "kept",
        "kept_h2",
        "method",
        "override",
        "path",
        "reframed",
        "request_id",
        "target",
        "te",
        "upgrade",
        "upgrade_value",
        "verdict",
        "verdict_rid",
        "version",
        "version_10",
        "xff",
        "xfproto",
    )

    method: bytes
    target: bytes  # the request target as received
    version: int  # 9, 10, 11 or 20 (major * 10 + minor)
    end: int  # offset just past the head's final CRLF
    headers: list[tuple[bytes, bytes]]  # (name, value) as received, value without leading OWS
    keep_alive: bool  # llhttp's should_keep_alive() (the version and Connection decide)
    version_10: bool  # an HTTP/1.0 client: close-delimited responses
    # Nothing after this request is HTTP (llhttp: Connection upgrade or CONNECT). llhttp reads a
    # Content-Length or chunked body first, except for CONNECT (and a Transfer-Encoding that does
    # not end in chunked, which is no body then).
    upgrade: bool
    content_length: int | None  # the framing llhttp applies to the body
    chunked: bool
    # What Dispatcher.prepare reads:
    host: bytes | None  # the routing host: the absolute-form authority, else the Host header
    hostkey: bytes | None  # ``host`` normalised for the route lookup
    header_host: bytes | None
    path: bytes  # origin-form target
    te: bytes | None  # Transfer-Encoding values joined with ", "
    expect_continue: bool  # the last Expect header says 100-continue
    conn_upgrade: bool  # a Connection header nominates "upgrade"
    upgrade_value: bytes | None  # the last Upgrade header's value when conn_upgrade
    xff: bytes | None
    xfproto: bytes | None
    request_id: bytes | None  # the client's X-Request-Id (the last one)
    override: bytes | None
    cookie: bytes | None
    kept: bytes  # the header lines forwarded upstream (Host included), nominated ones dropped
    kept_h2: bytes | None  # ``kept`` with HTTP2-Settings kept, when Connection nominates it
    reframed: bool
    verdict: Answer | None  # answered without routing (the head itself is well-formed)
    verdict_rid: bytes | None  # the client request id to answer ``verdict`` with

    def fields(self) -> tuple[object, ...]:
        """Every field, in slot order (the differential tests compare these)."""
        return tuple(getattr(self, name) for name in RequestHead.__slots__)

    @property
    def summary(
        self,
    ) -> tuple[bytes, bytes, bytes, bytes | None, bytes | None, bytes, int | None, int, bytes]:
        """``(method, target, path, host, hostkey, kept, content_length, flags, match_path)``
        in one read (``match_path``: ``path`` without its query, what routes match):
        what the native front-end and ``Dispatcher.prepare_head`` need of every head (an
        attribute read from compiled code is a generic lookup; this is one instead of ~20).
        ``flags``: the ``HEAD_*`` bits of :mod:`gateway.headers`."""
        flags = (
            (HEAD_KEEP_ALIVE if self.keep_alive else 0)
            | (HEAD_VERSION_10 if self.version_10 else 0)
            | (HEAD_UPGRADE if self.upgrade else 0)
            | (HEAD_CHUNKED if self.chunked else 0)
            | (HEAD_EXPECT_CONTINUE if self.expect_continue else 0)
            | (HEAD_REFRAMED if self.reframed else 0)
        )
        if (
            self.verdict is not None
            or self.kept_h2 is not None
            or self.upgrade_value is not None
            or self.xff is not None
            or self.xfproto is not None
            or self.request_id is not None
            or self.override is not None
            or self.cookie is not None
        ):
            flags |= HEAD_RARE
        return (
            self.method,
            self.target,
            self.path,
            self.host,
            self.hostkey,
            self.kept,
            self.content_length,
            flags,
            self.path.partition(b"?")[0],
        )

    def header_value(self, lname: bytes) -> bytes | None:
        """The value (as received) of the first header named ``lname`` (lower case), or None."""
        for name, value in self.headers:
            if name.lower() == lname:
                return value
        return None

    def __repr__(self) -> str:
        return f"RequestHead({self.method!r} {self.target!r} v{self.version}, end={self.end})"


# ------------------------------------------------------------------------------ tables

_ALPHA: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_DIGITS: Final = b"0123456789"
# RFC 9110 tchar (llhttp STRICT_TOKEN)
_TOKEN: Final = _ALPHA + _DIGITS + b"!#$%&'*+-.^_`|~"
# llhttp STRICT_URL_CHAR: visible ASCII except '#' and '?' (they start query and fragment)
_URL: Final = _ALPHA + _DIGITS + b"!\"$%&'()*+,-./:;<=>@[\\]^_`{|}~"
# llhttp USERINFO_CHARS plus the IPv6 brackets: the authority of an absolute-form target
_SERVER: Final = _ALPHA + _DIGITS + b"-_.!~*'()%;:&=+$,[]"
# Field value characters: HT, SP .. 0xFF except DEL
_VALUE: Final = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))


def _run(chars: bytes) -> re.Pattern[bytes]:
    return re.compile(b"[" + re.escape(chars) + b"]*")


_TOKEN_RUN: Final = _run(_TOKEN)
_URL_RUN: Final = _run(_URL)
_QUERY_RUN: Final = _run(_URL + b"?")
_FRAGMENT_RUN: Final = _run(_URL + b"?#")
_SERVER_RUN: Final = _run(_SERVER)
_ALPHA_RUN: Final = _run(_ALPHA)
_VALUE_RUN: Final = _run(_VALUE)
_OWS_RUN: Final = re.compile(rb"[ \t]*")
_SP_RUN: Final = re.compile(rb" *")
_EOL_RUN: Final = re.compile(rb"[\r\n]*")

# llhttp's methods: HTTP/x.y, RTSP/x.y (RTSP and the AirPlay ones) and ICE/x.y (SOURCE)
HTTP_METHODS: Final = frozenset(
    b"DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH "
    b"SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY "
    b"SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split()
)
RTSP_METHODS: Final = frozenset(
    b"GET POST OPTIONS DESCRIBE ANNOUNCE SETUP PLAY PAUSE TEARDOWN GET_PARAMETER SET_PARAMETER "
    b"REDIRECT RECORD FLUSH".split()
)
ICE_METHODS: Final = frozenset({b"SOURCE"})
_VERSIONS: Final = frozenset({9, 10, 11, 20})
_MAX_CL: Final = (1 << 64) - 1
# An incomplete head may hold whitespace llhttp does not count; cap the raw bytes all the same.
RAW_SLACK: Final = 16384

# Connection tokens that are options, not header names, or that name headers we must keep.
_NOT_NOMINABLE: Final = frozenset({b"close", b"keep-alive", b"upgrade", b"host"})

# Decisions a Connection / Proxy-Connection value makes for llhttp (flags, OR-ed).
_F_CLOSE: Final = 1
_F_KEEP_ALIVE: Final = 2
_F_UPGRADE: Final = 4


def _connection_flags(value: bytes) -> int:
    flags = 0
    for token in value.split(b","):
        t = token.strip(b" \t").lower()
        if t == b"close":
            flags |= _F_CLOSE
        elif t == b"keep-alive":
            flags |= _F_KEEP_ALIVE
        elif t == b"upgrade":
            flags |= _F_UPGRADE
    return flags


# Transfer-Encoding per header value, as llhttp reads it: -1 invalid, 1 ends in chunked, 0 not
def _te_state(value: bytes) -> int:
    tokens = value.split(b",")
    last = len(tokens) - 1
    for i, token in enumerate(tokens):
        if token.lstrip(b" \t").rstrip(b" ").lower() == b"chunked":
            return 1 if i == last else -1
    return 0


_MALFORMED: Final = "malformed"


def _bad(reason: str) -> Rejected:
    return Rejected(BAD_REQUEST, reason)


def _too_large(reason: str) -> Rejected:
    return Rejected(HEADERS_TOO_LARGE, reason)


# ------------------------------------------------------------------------------ the parser


def _scan_url(buf: bytes, pos: int, connect: bool) -> int:
    """End of the request target starting at ``pos``: -1 incomplete, -2 invalid."""
    n = len(buf)
    if connect:
        state = 1  # server
    else:
        if pos >= n:
            return -1
        c = buf[pos]
        if c == 0x2F or c == 0x2A:  # "/" "*"
            state = 3
        elif (0x41 <= c <= 0x5A) or (0x61 <= c <= 0x7A):
            pos = _ALPHA_RUN.match(buf, pos).end()  # type: ignore[union-attr]
            if pos >= n:
                return -1
            if buf[pos] != 0x3A:  # ":"
                return -2
            if n - pos < 3:
                return -1 if b"://".startswith(buf[pos:]) else -2
            if buf[pos : pos + 3] != b"://":
                return -2
            pos += 3
            state = 1
        else:
            return -2
    while True:
        if state == 1:  # authority
            pos = _SERVER_RUN.match(buf, pos).end()  # type: ignore[union-attr]
            if pos >= n:
                return -1
            c = buf[pos]
            if c == 0x40:  # "@" (userinfo: taken here, refused by _absolute_form)
                pos += 1
                continue
            if c == 0x2F:
                state = 3
                continue
            if c == 0x3F:  # "?"
                pos += 1
                state = 4
                continue
            break
        if state == 3:  # path
            pos = _URL_RUN.match(buf, pos).end()  # type: ignore[union-attr]
            if pos >= n:
                return -1
            c = buf[pos]
            if c == 0x3F:
                pos += 1
                state = 4
                continue
            if c == 0x23:  # "#"
                pos += 1
                state = 5
                continue
            break
        if state == 4:  # query
            pos = _QUERY_RUN.match(buf, pos).end()  # type: ignore[union-attr]
            if pos >= n:
                return -1
            if buf[pos] == 0x23:
                pos += 1
                state = 5
                continue
            break
        # fragment
        pos = _FRAGMENT_RUN.match(buf, pos).end()  # type: ignore[union-attr]
        if pos >= n:
            return -1
        break
    c = buf[pos]
    if c == 0x20 or c == 0x0D or c == 0x0A:
        return pos
    return -2


def parse_request(buf: bytes, max_bytes: int, max_headers: int) -> RequestHead | Rejected | None:
    """Parse the request head at the start of ``buf`` (see the module docstring)."""
    n = len(buf)
    pos = _EOL_RUN.match(buf).end()  # type: ignore[union-attr]  # llhttp skips empty lines
    # ---- method
    mend = buf.find(b" ", pos, pos + 16)
    if mend < 0:
        if n - pos < 16 and (buf[pos:] == b"" or any(m.startswith(buf[pos:]) for m in _ALL_M)):
            return _incomplete(buf, pos, 0, max_bytes)
        return _bad("invalid method")
    method = buf[pos:mend]
    if method not in _ALL_M:
        return _bad("invalid method")
    pos = _SP_RUN.match(buf, mend).end()  # type: ignore[union-attr]
    # ---- target
    tstart = pos
    tend = _scan_url(buf, pos, method == b"CONNECT")
    if tend == -2:
        return _bad("invalid request target")
    if tend == -1:
        return _incomplete(buf, pos, n - tstart, max_bytes)
    target = buf[tstart:tend]
    tally = len(target)
    if tally > max_bytes:
        return _too_large("request target")
    pos = tend
    c = buf[pos]
    if c == 0x20:
        pos = _SP_RUN.match(buf, pos).end()  # type: ignore[union-attr]
        if buf.startswith(b"HTTP/", pos):
            methods = HTTP_METHODS
            pos += 5
        elif buf.startswith(b"RTSP/", pos):
            methods = RTSP_METHODS
            pos += 5
        elif buf.startswith(b"ICE/", pos):
            methods = ICE_METHODS
            pos += 4
        else:
            rest = buf[pos:]
            if len(rest) < 5 and (
                b"HTTP/".startswith(rest) or b"RTSP/".startswith(rest) or b"ICE/".startswith(rest)
            ):
                return _incomplete(buf, pos, tally, max_bytes)
            return _bad("invalid protocol")
        if n - pos < 5:
            if not _version_tail_ok(buf[pos:]):
                return _bad("invalid version")
            return _incomplete(buf, pos, tally, max_bytes)
        major, dot, minor = buf[pos], buf[pos + 1], buf[pos + 2]
        if not (0x30 <= major <= 0x39) or dot != 0x2E or not (0x30 <= minor <= 0x39):
            return _bad("invalid version")
        version = (major - 0x30) * 10 + (minor - 0x30)
        if version not in _VERSIONS:
            return _bad("invalid version")
        if method not in methods:
            return _bad("method not valid for the protocol")
        if buf[pos + 3] != 0x0D or buf[pos + 4] != 0x0A:
            return _bad("no CRLF after the version")
        pos += 5
    elif c == 0x0D:  # HTTP/0.9: "GET /\r\n"
        if pos + 1 >= n:
            return _incomplete(buf, pos, tally, max_bytes)
        if buf[pos + 1] != 0x0A:
            return _bad("CR without LF")
        pos += 2
        version = 9
    else:  # HTTP/0.9 with a bare LF (llhttp takes it)
        pos += 1
        version = 9

    # ---- field lines
    headers: list[tuple[bytes, bytes]] = []
    spans: list[int] = []  # per header: line start, value start (canonical iff == name end + 2)
    pending = 0  # bytes of the last header, counted when the next name (or the end) is read
    have_pending = False
    cl_seen = False
    te_seen = False
    te_chunked = False
    content_length: int | None = None
    conn_flags = 0
    upgrade_header = False
    while True:
        if pos >= n:
            return _incomplete(buf, pos, tally + pending, max_bytes)
        c = buf[pos]
        if c == 0x0D:
            if pos + 1 >= n:
                return _incomplete(buf, pos, tally + pending, max_bytes)
            if buf[pos + 1] != 0x0A:
                return _bad("CR without LF")
            pos += 2
            break
        line = pos
        nend = _TOKEN_RUN.match(buf, pos).end()  # type: ignore[union-attr]
        if nend >= n:
            if have_pending and len(headers) > max_headers:
                return _too_large("header fields")  # httptools reports it at the read's end
            return _incomplete(buf, pos, tally + pending + nend - pos, max_bytes)
        if nend == pos or buf[nend] != 0x3A:
            # obs-fold, whitespace before the colon, a bare LF, a non-token character. llhttp
            # ends the name of one of its own headers at a space, which reports the previous
            # header first: that one's limit wins then.
            if (
                have_pending
                and buf[nend] == 0x20
                and buf[pos:nend].lower() in _LLHTTP_NAMES
                and (tally + pending > max_bytes or len(headers) > max_headers)
            ):
                return _too_large("header fields")
            return _bad("invalid field name")
        if have_pending:  # httptools reports the previous header once this name is read
            tally += pending
            if tally > max_bytes or len(headers) > max_headers:
                return _too_large("header fields")
            have_pending = False
        name = buf[pos:nend]
        lname = name.lower()
        special = 0
        if lname == b"content-length":
            if cl_seen:
                return _bad("duplicate Content-Length")
            if te_seen:
                return _bad("Content-Length with Transfer-Encoding")
            cl_seen = True
            special = 1
        elif lname == b"transfer-encoding":
            if cl_seen:
                return _bad("Transfer-Encoding with Content-Length")
            if te_chunked:
                return _bad("Transfer-Encoding after chunked")
            te_seen = True
            special = 2
        elif lname == b"connection" or lname == b"proxy-connection":
            special = 3
        elif lname == b"upgrade":
            special = 4
        vstart = _OWS_RUN.match(buf, nend + 1).end()  # type: ignore[union-attr]
        vend = _VALUE_RUN.match(buf, vstart).end()  # type: ignore[union-attr]
        if (
            special == 1
            and vend + 1 >= n
            and buf[vstart:vend].rstrip(b" \t").translate(None, _DIGITS)
        ):
            return _bad("invalid Content-Length")  # llhttp refuses the character as it arrives
        if vend >= n:
            return _incomplete(buf, pos, tally + nend - pos + vend - vstart, max_bytes)
        if buf[vend] != 0x0D:
            return _bad("invalid field value")
        if vend + 1 >= n:
            return _incomplete(buf, pos, tally + nend - pos + vend - vstart, max_bytes)
        if buf[vend + 1] != 0x0A:
            return _bad("CR without LF")
        value = buf[vstart:vend]
        if (special == 1 or special == 2) and not value.rstrip(b" \t"):
            # llhttp refuses an empty one at the byte after its line
            if vend + 2 >= n:
                return _incomplete(buf, pos, tally + nend - pos + vend - vstart, max_bytes)
            return _bad("empty Content-Length or Transfer-Encoding")
        if special == 1:
            digits = value.rstrip(b" \t")
            if digits.translate(None, _DIGITS):
                return _bad("invalid Content-Length")
            content_length = int(digits)
            if content_length > _MAX_CL:
                return _bad("Content-Length overflow")
        elif special == 2:
            state = _te_state(value)
            if state < 0:
                return _bad("Transfer-Encoding after chunked")
            te_chunked = state == 1
        elif special == 3:
            conn_flags |= _connection_flags(value)
        elif special == 4 and value:
            upgrade_header = True
        pos = vend + 2
        if pos < n and (buf[pos] == 0x20 or buf[pos] == 0x09):
            return _bad("obs-fold")
        headers.append((name, value))
        spans.append(line)
        spans.append(vstart)
        pending = len(name) + len(value) + 4
        have_pending = True
    if have_pending:
        tally += pending
        if tally > max_bytes or len(headers) > max_headers:
            return _too_large("header fields")
    upgrade = (upgrade_header and bool(conn_flags & _F_UPGRADE)) or method == b"CONNECT"
    if te_seen and not te_chunked and not upgrade:  # llhttp upgrades first, body or not
        return _bad("Transfer-Encoding not ending in chunked")
    if method == b"PRI":
        return _bad("HTTP/2 preface")  # unreachable: PRI is no method here

    head = RequestHead()
    head.method = method
    head.target = target
    head.version = version
    head.end = pos
    head.headers = headers
    # llhttp: HTTP/1.1 unless "close"; any other version only with "keep-alive"
    keep_alive = not (conn_flags & _F_CLOSE) if version == 11 else bool(conn_flags & _F_KEEP_ALIVE)
    head.keep_alive = keep_alive
    has_connection = False
    for hname, _ in headers:
        if len(hname) == 10 and request_header_class(hname) == H_CONNECTION:
            has_connection = True
            break
    head.version_10 = (not keep_alive or has_connection) and version == 10
    head.upgrade = upgrade
    head.chunked = te_chunked
    head.content_length = content_length
    _classify(head, buf, spans)
    return head


def _classify(head: RequestHead, buf: bytes, spans: list[int]) -> None:
    """What ``Dispatcher.prepare`` reads from the headers, and the block that goes upstream."""
    headers = head.headers
    verdict: Answer | None = None
    verdict_rid: bytes | None = None
    url = head.target
    host: bytes | None = None
    path = url
    if url[:1] != b"/" and not (url == b"*" and head.method == b"OPTIONS"):
        target = _absolute_form(url)
        if target is None:
            verdict = BAD_REQUEST
        else:
            host, path = target
    if verdict is None and head.method == b"CONNECT":
        verdict = BAD_REQUEST
    head.path = path

    # Runs of forwarded lines: (start, end) slices when canonical, else rebuilt bytes.
    kept: list[tuple[bytes, bytes | tuple[int, int]]] = []  # (lower name, line)
    conn_tokens: list[bytes] | None = None
    content_length: bytes | None = None
    te: bytes | None = None
    xff: bytes | None = None
    xfproto: bytes | None = None
    req_id: bytes | None = None
    override: bytes | None = None
    expect = False
    upgrade: bytes | None = None
    cookie: bytes | None = None
    header_host: bytes | None = None
    for i, (name, value) in enumerate(headers):
        code = request_header_class(name)
        if code in (H_FORWARD, H_COOKIE):
            kept.append((name.lower(), _line(buf, spans, i, name, value)))
            if code == H_COOKIE:
                cookie = value if cookie is None else cookie + b"; " + value
        elif code == H_DROP:
            pass
        elif code == H_CONTENT_LENGTH:
            if content_length is not None and content_length != value and verdict is None:
                verdict, verdict_rid = BAD_LENGTH, req_id
            content_length = value
        elif code == H_TRANSFER_ENCODING:
            te = value if te is None else te + b", " + value
        elif code == H_CONNECTION:
            if value not in PLAIN_CONNECTION:  # keep-alive/close nominate nothing
                conn_tokens = (conn_tokens or []) + [t.strip().lower() for t in value.split(b",")]
        elif code == H_X_FORWARDED_FOR:
            xff = value if xff is None else xff + b", " + value
        elif code == H_X_REQUEST_ID:
            req_id = value
        elif code == H_EXPECT:
            expect = value.lower() == b"100-continue"
        elif code == H_UPGRADE:
            upgrade = value
        elif code == H_HOST:
            if header_host is not None:
                if verdict is None:
                    verdict, verdict_rid = BAD_HOST, req_id  # RFC 9112 §3.2
                continue
            header_host = value
            if name == b"Host":
                kept.append((b"host", _line(buf, spans, i, name, value)))
            else:
                kept.append((b"host", b"Host: " + value + b"\r\n"))
        elif code == H_X_FORWARDED_PROTO:
            xfproto = value
        else:  # H_OVERRIDE
            override = value.strip()
    if host is None:
        host = header_host
    elif host != header_host:
        # RFC 9112 §3.2.2: an absolute-form target's authority replaces the Host header.
        kept = [k for k in kept if k[0] != b"host"]
        kept.append((b"host", b"Host: " + host + b"\r\n"))
    hostkey = normalize_request_host(host) if host is not None else None
    if verdict is None:
        if hostkey is None:
            verdict, verdict_rid = BAD_HOST, req_id
        elif te is not None:
            if content_length is not None:
                verdict, verdict_rid = BAD_REQUEST, req_id  # unreachable: refused when parsed
            elif [c.strip().lower() for c in te.split(b",")][-1] != b"chunked":
                verdict, verdict_rid = BAD_TE, req_id
        elif content_length is not None and (
            not content_length.isdigit() or len(content_length) > 18
        ):
            verdict, verdict_rid = BAD_LENGTH, req_id
    head.verdict = verdict
    head.verdict_rid = verdict_rid
    head.host = host
    head.hostkey = hostkey
    head.header_host = header_host
    head.te = te
    head.expect_continue = expect
    head.xff = xff
    head.xfproto = xfproto
    head.request_id = req_id
    head.override = override
    head.cookie = cookie
    head.reframed = te is not None and content_length is not None
    conn_upgrade = conn_tokens is not None and b"upgrade" in conn_tokens
    head.conn_upgrade = conn_upgrade
    head.upgrade_value = upgrade if conn_upgrade else None
    head.kept_h2 = None
    if conn_tokens:
        nominated = {t for t in conn_tokens if t not in _NOT_NOMINABLE}
        if nominated:
            if b"http2-settings" in nominated and upgrade is not None and conn_upgrade:
                # kept if the route allows the upgrade (h2c: RFC 9113 §3.2), else dropped
                nominated.discard(b"http2-settings")
                head.kept_h2 = _join(buf, [k for k in kept if k[0] not in nominated])
                nominated.add(b"http2-settings")
            kept = [k for k in kept if k[0] not in nominated]
    head.kept = _join(buf, kept)


def _line(
    buf: bytes, spans: list[int], i: int, name: bytes, value: bytes
) -> bytes | tuple[int, int]:
    """Header ``i`` as it goes upstream: a slice of the input when already canonical."""
    start = spans[2 * i]
    vstart = spans[2 * i + 1]
    if vstart == start + len(name) + 2 and buf[vstart - 1] == 0x20:
        return (start, vstart + len(value) + 2)
    return name + b": " + value + b"\r\n"


def _join(buf: bytes, kept: list[tuple[bytes, bytes | tuple[int, int]]]) -> bytes:
    """Adjacent slices become one slice: most heads go upstream as one or two copies."""
    parts: list[bytes] = []
    run_start = run_end = -1
    for _, line in kept:
        if isinstance(line, tuple):
            if line[0] == run_end:
                run_end = line[1]
                continue
            if run_start >= 0:
                parts.append(buf[run_start:run_end])
            run_start, run_end = line
        else:
            if run_start >= 0:
                parts.append(buf[run_start:run_end])
                run_start = run_end = -1
            parts.append(line)
    if run_start >= 0:
        parts.append(buf[run_start:run_end])
    return b"".join(parts)


_LLHTTP_NAMES: Final = frozenset(
    {b"connection", b"content-length", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
_ALL_M: Final = HTTP_METHODS | RTSP_METHODS | ICE_METHODS


def _version_tail_ok(rest: bytes) -> bool:
    """Could ``rest`` (what follows "HTTP/", under 5 bytes) still become "d.d\\r\\n"?"""
    pattern = (_DIGITS, b".", _DIGITS, b"\r", b"\n")
    return all(rest[i] in pattern[i] for i in range(len(rest)))


def _incomplete(buf: bytes, pos: int, counted: int, max_bytes: int) -> Rejected | None:
    """Not complete yet: ``None``, unless the bytes counted so far (or the raw bytes, which may
    hold uncounted whitespace) are already over the limit."""
    if counted > max_bytes or len(buf) > 2 * max_bytes + RAW_SLACK:
        return _too_large("incomplete head over the limit")
    return None


# ------------------------------------------------------------------------------ response heads
#
# parse_response: the response-head twin of parse_request, for gateway/upstream.py. The rules are
# today's: llhttp's response parser in its strict mode (httptools HttpResponseParser), fed by
# UpstreamConnection.data_received, and its on_headers_complete (the limits, the hop-by-hop
# filter, the 101 checks, the Transfer-Encoding refusal). tests/gateway/test_response_head_diff.py
# compares it with an oracle driving httptools that way.


class Refused:
    """A response the gateway will not pass on: ``kind`` and ``message`` are those of the
    :class:`~gateway.errors.UpstreamError` that ``gateway/upstream.py`` reports today."""

    __slots__ = ("kind", "message")

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Refused) and (self.kind, self.message) == (
            other.kind,
            other.message,
        )

    def __hash__(self) -> int:
        return hash((self.kind, self.message))

    def __repr__(self) -> str:
        return f"Refused({self.kind!r}, {self.message!r})"


class ResponseHead(metaclass=ABCMeta):
    """One final response head (interim 1xx heads before it are skipped, as today).

    With the compiled twin picked, :func:`parse_response` returns ``gateway._headc.ResponseHead``
    (registered as a virtual subclass; ``kept`` and ``headers`` built on first access, the block
    written in C): :data:`RESPONSE_HEAD_TYPE` is the class it returns."""

    __slots__ = (
        "body_expected",
        "chunked",
        "close_delimited",
        "content_length",
        "end",
        "headers",
        "keep_alive",
        "kept",
        "reason",
        "status",
        "upgrade",
        "version",
    )

    status: int
    reason: bytes  # as received (may be empty)
    version: int  # major * 10 + minor: 9, 10, 11 or 20
    end: int  # offset just past the final head's last CRLF (interim heads included before it)
    headers: list[tuple[bytes, bytes]]  # the final head's fields as received
    # What goes to the client, as UpstreamConnection.on_headers_complete hands it to the sink:
    kept: list[tuple[bytes, bytes]]  # hop-by-hop and nominated dropped; + Connection/Upgrade (101)
    content_length: bytes | None  # the Content-Length value as received; None when chunked
    body_expected: bool  # False for HEAD, 1xx, 204, 304
    chunked: bool  # a Transfer-Encoding header was received (it ends in chunked when a body comes)
    close_delimited: bool  # the body ends when the upstream closes
    keep_alive: bool  # llhttp's should_keep_alive() for this response
    upgrade: bool  # a 101 that passed the checks: the connection becomes a tunnel at ``end``

    def fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in ResponseHead.__slots__)

    def block(self) -> bytes:
        """The kept lines as Exchange.response_head writes them (``name: value`` CRLF)."""
        return b"".join(name + b": " + value + b"\r\n" for name, value in self.kept)

    @property
    def summary(self) -> tuple[int, bytes, int, bytes | None, int]:
        """``(status, reason, end, content_length, flags)`` in one read for the upstream
        connection (``flags``: the ``RESP_*`` bits of :mod:`gateway.headers`)."""
        flags = (
            (RESP_BODY if self.body_expected else 0)
            | (RESP_CHUNKED if self.chunked else 0)
            | (RESP_CLOSE_DELIMITED if self.close_delimited else 0)
            | (RESP_KEEP_ALIVE if self.keep_alive else 0)
            | (RESP_UPGRADE if self.upgrade else 0)
        )
        return (self.status, self.reason, self.end, self.content_length, flags)

    def __repr__(self) -> str:
        return f"ResponseHead({self.status} {self.reason!r} v{self.version}, end={self.end})"


# Status line bytes besides the reason: "HTTP/1.1 200 " + CRLF (and the head's final CRLF);
# gateway/upstream.py's _STATUS_LINE_BYTES.
_STATUS_LINE_BYTES: Final = 17
_PROTOCOLS: Final = (b"HTTP", b"RTSP", b"ICE")
_EXPECTED_PROTOCOL: Final = "Expected HTTP/, RTSP/ or ICE/"
_RESPONSE_SPECIAL: Final = frozenset(
    {b"connection", b"content-length", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


class _Invalid(Exception):
    """llhttp's error reason for an invalid response (``invalid response: <reason>``)."""


def parse_response(
    buf: bytes,
    max_bytes: int,
    max_headers: int,
    head_request: bool,
    offered: bytes | None = None,
) -> ResponseHead | Refused | None:
    """Parse the response at the start of ``buf`` — every byte received since the request was
    sent — up to its final head.

    ``None``: not complete, within ``max_bytes``; a :class:`Refused` (an invalid response, a head
    over the limits, a 101 the request did not ask for, an unsupported Transfer-Encoding); or the
    :class:`ResponseHead`. ``head_request``: the request was HEAD (no body follows).
    ``offered``: the protocols the request asked to switch to (its Upgrade value), if any.
    """
    pos = 0
    interim = 0  # the sizes of the interim heads (as _head_size counts them)
    n = len(buf)
    while True:
        try:
            one = _response_head(buf, pos)
        except _Invalid as exc:
            return Refused("protocol", f"invalid response: {exc}")
        if one is None:
            if n > max_bytes:
                return Refused("head_too_large", f"upstream response head over {max_bytes} bytes")
            return None
        status, version, reason, headers, flags, end = one
        if len(headers) > max_headers:
            return Refused(
                "head_too_large", f"upstream response head has over {max_headers} headers"
            )
        size = _STATUS_LINE_BYTES + len(reason)
        for name, value in headers:
            size += len(name) + len(value) + 4
        if 100 <= status < 200 and status != 101:
            interim += size
            keep = _should_keep_alive(version, flags, status, False)
            pos = end
            if not keep:  # llhttp: nothing but CR and LF may follow a response without keep-alive
                while pos < n and buf[pos] in b"\r\n":
                    pos += 1
                if pos < n:
                    return Refused("protocol", "invalid response: Data after `Connection: close`")
                if n > max_bytes:
                    return Refused(
                        "head_too_large", f"upstream response head over {max_bytes} bytes"
                    )
                return None
            continue
        if n > max_bytes and interim + size > max_bytes:
            return Refused("head_too_large", f"upstream response head over {max_bytes} bytes")
        return _final(status, version, reason, headers, flags, end, head_request, offered)


# llhttp flags (the ones a response head sets)
_RF_CLOSE: Final = 1
_RF_KEEP_ALIVE: Final = 2
_RF_CONN_UPGRADE: Final = 4
_RF_CHUNKED: Final = 8
_RF_UPGRADE: Final = 16
_RF_CONTENT_LENGTH: Final = 32
_RF_TRANSFER_ENCODING: Final = 64


def _should_keep_alive(version: int, flags: int, status: int, skipbody: bool) -> bool:
    """llhttp_should_keep_alive()."""
    if version // 10 > 0 and version % 10 > 0:
        if flags & _RF_CLOSE:
            return False
    elif not flags & _RF_KEEP_ALIVE:
        return False
    # llhttp_message_needs_eof()
    if status // 100 == 1 or status in (204, 304) or skipbody:
        return True
    if flags & _RF_TRANSFER_ENCODING and not flags & _RF_CHUNKED:
        return False
    return bool(flags & (_RF_CHUNKED | _RF_CONTENT_LENGTH))


def _final(
    status: int,
    version: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    flags: int,
    end: int,
    head_request: bool,
    offered: bytes | None,
) -> ResponseHead | Refused:
    """UpstreamConnection.on_headers_complete for the final head."""
    kept: list[tuple[bytes, bytes]] = []
    length: bytes | None = None
    te: bytes | None = None
    conn_tokens: list[bytes] | None = None
    upgrade: bytes | None = None
    for name, value in headers:
        code = response_header_class(name)
        if code == R_FORWARD:
            kept.append((name, value))
        elif code == R_CONTENT_LENGTH:
            length = value
        elif code == R_TRANSFER_ENCODING:
            te = value if te is None else te + b", " + value
        elif code == R_CONNECTION:
            if value not in PLAIN_CONNECTION:  # the usual values nominate nothing
                conn_tokens = [t.strip().lower() for t in value.split(b",")]
        elif code == R_UPGRADE:
            upgrade = value
    if conn_tokens:
        nominated = {t for t in conn_tokens if t not in (b"close", b"keep-alive", b"upgrade")}
        if nominated:
            kept = [(n, v) for n, v in kept if n.lower() not in nominated]
    if status == 101:
        refusal = _check_upgrade(offered, upgrade, conn_tokens)
        if refusal is not None:
            return refusal
        assert upgrade is not None
        kept.append((b"Connection", b"upgrade"))
        kept.append((b"Upgrade", upgrade))
    body_expected = not (head_request or status in (204, 304) or status == 101)
    chunked = te is not None
    if te is not None and body_expected and te != b"chunked" and not _only_chunked(te):
        return Refused("protocol", f"upstream sent unsupported Transfer-Encoding {te!r}")
    head = ResponseHead()
    head.status = status
    head.reason = reason
    head.version = version
    head.end = end
    head.headers = headers
    head.kept = kept
    head.content_length = None if chunked else length
    head.body_expected = body_expected
    head.chunked = chunked
    head.close_delimited = body_expected and not chunked and length is None
    llhttp_upgrade = status == 101 and flags & _RF_UPGRADE and flags & _RF_CONN_UPGRADE
    head.keep_alive = _should_keep_alive(version, flags, status, bool(llhttp_upgrade))
    head.upgrade = status == 101
    return head


def _check_upgrade(
    offered: bytes | None, upgrade: bytes | None, conn_tokens: list[bytes] | None
) -> Refused | None:
    """UpstreamConnection._check_upgrade."""
    if offered is None:
        return Refused("upgrade", "upstream answered 101 to a request that asked for none")
    if upgrade is None or conn_tokens is None or b"upgrade" not in conn_tokens:
        return Refused("upgrade", "upstream 101 without Upgrade and Connection: upgrade")
    wanted = {t.strip().lower() for t in offered.split(b",")}
    for token in upgrade.split(b","):
        if token.strip().lower() not in wanted:
            return Refused("upgrade", f"upstream switched to {upgrade!r}, not {offered!r}")
    return None


def _only_chunked(te: bytes) -> bool:
    return [c.strip().lower() for c in te.split(b",")] == [b"chunked"]


def _need(buf: bytes, pos: int, lit: bytes, reason: str) -> bool:
    """``buf[pos:]`` starts with ``lit``: True; is a proper prefix of it: False (wait); else
    the parse fails with ``reason``."""
    chunk = buf[pos : pos + len(lit)]
    if chunk == lit:
        return True
    if lit.startswith(chunk):
        return False
    raise _Invalid(reason)


def _response_head(
    buf: bytes, pos: int
) -> tuple[int, int, bytes, list[tuple[bytes, bytes]], int, int] | None:
    """One response head at ``pos`` as llhttp reads it: (status, version, reason, headers,
    flags, end), None if incomplete; raises _Invalid."""
    n = len(buf)
    pos = _EOL_RUN.match(buf, pos).end()  # type: ignore[union-attr]  # llhttp skips empty lines
    if pos >= n:
        return None
    # ---- protocol
    for proto in _PROTOCOLS:
        chunk = buf[pos : pos + len(proto)]
        if chunk == proto:
            pos += len(proto)
            break
        if proto.startswith(chunk):
            return None
    else:
        raise _Invalid(_EXPECTED_PROTOCOL)
    if pos >= n:
        return None
    if buf[pos] != 0x2F:
        raise _Invalid(_EXPECTED_PROTOCOL)
    pos += 1
    # ---- version
    if pos >= n:
        return None
    if not 0x30 <= buf[pos] <= 0x39:
        raise _Invalid("Invalid major version")
    major = buf[pos] - 0x30
    pos += 1
    if pos >= n:
        return None
    if buf[pos] != 0x2E:
        raise _Invalid("Expected dot")
    pos += 1
    if pos >= n:
        return None
    if not 0x30 <= buf[pos] <= 0x39:
        raise _Invalid("Invalid minor version")
    version = major * 10 + buf[pos] - 0x30
    pos += 1
    if version not in _VERSIONS:
        raise _Invalid("Invalid HTTP version")
    if pos >= n:
        return None
    if buf[pos] != 0x20:
        raise _Invalid("Expected space after version")
    pos += 1
    # ---- status
    status = 0
    for _ in range(3):
        if pos >= n:
            return None
        c = buf[pos]
        if not 0x30 <= c <= 0x39:
            raise _Invalid("Invalid status code")
        status = status * 10 + c - 0x30
        pos += 1
    if pos >= n:
        return None
    c = buf[pos]
    if c == 0x20:
        start = pos + 1
        cr = buf.find(b"\r", start)
        lf = buf.find(b"\n", start)
        if lf >= 0 and (cr < 0 or lf < cr):
            raise _Invalid("Missing expected CR after response line")
        if cr < 0:
            return None
        reason = buf[start:cr]
        pos = cr
    elif c == 0x0D:
        reason = b""
    else:
        raise _Invalid("Invalid response status")
    # at the CR of the status line
    if pos + 1 >= n:
        return None
    if buf[pos + 1] != 0x0A:
        raise _Invalid("Expected LF after CR")
    pos += 2
    if pos >= n:
        return None
    if buf[pos] == 0x20:
        raise _Invalid("Unexpected space after start line")
    # ---- field lines
    headers: list[tuple[bytes, bytes]] = []
    flags = 0
    while True:
        if pos >= n:
            return None
        c = buf[pos]
        if c == 0x0D:
            if pos + 1 >= n:
                return None
            if buf[pos + 1] != 0x0A:
                raise _Invalid("Expected LF after headers")
            return status, version, reason, headers, flags, pos + 2
        if c == 0x0A:
            raise _Invalid("Invalid header field char")
        if c == 0x3A:
            raise _Invalid("Invalid header token")
        nend = _TOKEN_RUN.match(buf, pos).end()  # type: ignore[union-attr]
        if nend >= n:
            return None
        name = buf[pos:nend]
        lname = name.lower()
        special = lname in _RESPONSE_SPECIAL
        if buf[nend] != 0x3A:
            if buf[nend] == 0x20 and special:
                raise _Invalid("Invalid header field char")
            raise _Invalid("Invalid header token")
        if lname == b"transfer-encoding" and flags & _RF_CONTENT_LENGTH:
            raise _Invalid("Transfer-Encoding can't be present with Content-Length")
        if lname == b"content-length" and flags & _RF_TRANSFER_ENCODING:
            raise _Invalid("Content-Length can't be present with Transfer-Encoding")
        vstart = _OWS_RUN.match(buf, nend + 1).end()  # type: ignore[union-attr]
        if vstart >= n:
            return None
        c = buf[vstart]
        if c == 0x0A:
            raise _Invalid("Invalid header value char")
        if c == 0x0D:  # an empty value
            if vstart + 1 >= n:
                return None
            if buf[vstart + 1] != 0x0A:
                raise _Invalid("Expected LF after CR")
            if vstart + 2 >= n:
                return None
            if buf[vstart + 2] in b" \t":
                raise _Invalid("Invalid header value char")
            if lname == b"content-length":
                raise _Invalid("Empty Content-Length")
            if lname == b"transfer-encoding":
                raise _Invalid("Empty Transfer-Encoding")
            headers.append((name, b""))
            pos = vstart + 2
            continue
        if lname == b"content-length":
            if flags & _RF_CONTENT_LENGTH:
                raise _Invalid("Duplicate Content-Length")
            dend = vstart
            cl = 0
            while dend < n and 0x30 <= buf[dend] <= 0x39:
                cl = cl * 10 + buf[dend] - 0x30
                if cl > _MAX_CL:
                    raise _Invalid("Content-Length overflow")
                dend += 1
            wend = _OWS_RUN.match(buf, dend).end()  # type: ignore[union-attr]
            if wend >= n:
                return None
            if buf[wend] not in b"\r\n":
                raise _Invalid("Invalid character in Content-Length")
        vend = _VALUE_RUN.match(buf, vstart).end()  # type: ignore[union-attr]
        if vend >= n:
            return None
        if buf[vend] == 0x0A:
            raise _Invalid("Missing expected CR after header value")
        if buf[vend] != 0x0D:
            raise _Invalid("Invalid header value char")
        if vend + 1 >= n:
            return None
        if buf[vend + 1] != 0x0A:
            raise _Invalid("Missing expected LF after header value")
        if vend + 2 >= n:
            return None
        if buf[vend + 2] in b" \t":
            raise _Invalid("Unexpected whitespace after header value")
        value = buf[vstart:vend]
        if lname == b"content-length":
            flags |= _RF_CONTENT_LENGTH
        elif lname == b"transfer-encoding":
            flags = (flags | _RF_TRANSFER_ENCODING) & ~_RF_CHUNKED
            # a response may repeat chunked (a request may not): only the last token counts
            if value.rsplit(b",", 1)[-1].lstrip(b" \t").rstrip(b" ").lower() == b"chunked":
                flags |= _RF_CHUNKED
        elif lname == b"connection" or lname == b"proxy-connection":
            c_flags = _connection_flags(value)
            if c_flags & _F_CLOSE:
                flags |= _RF_CLOSE
            if c_flags & _F_KEEP_ALIVE:
                flags |= _RF_KEEP_ALIVE
            if c_flags & _F_UPGRADE:
                flags |= _RF_CONN_UPGRADE
        elif lname == b"upgrade":
            flags |= _RF_UPGRADE
        headers.append((name, value))
        pos = vend + 2


reference_parse_request: Final = parse_request  # always this module's, for the tests
reference_parse_response: Final = parse_response

IMPLEMENTATION = "python"
# The class parse_request returns, and both classes a parsed head can be (see RequestHead).
HEAD_TYPE: type[RequestHead] = RequestHead
HEAD_TYPES: tuple[type[RequestHead], ...] = (RequestHead,)
RESPONSE_HEAD_TYPE: type[ResponseHead] = ResponseHead
try:  # the compiled twin (pip install ., scripts/build_compiled.py); see the module docstring
    from gateway import _headc  # type: ignore[attr-defined]
except ImportError:
    pass
else:
    parse_request = _headc.parse_request
    IMPLEMENTATION = _headc.IMPLEMENTATION
    RequestHead.register(_headc.RequestHead)
    HEAD_TYPE = _headc.RequestHead
    HEAD_TYPES = (_headc.RequestHead, RequestHead)
    parse_response = _headc.parse_response
    ResponseHead.register(_headc.ResponseHead)
    RESPONSE_HEAD_TYPE = _headc.ResponseHead
