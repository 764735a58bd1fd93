# cython: language_level=3, boundscheck=False
"""The compiled twin of :mod:`gateway.head` (Cython): the same functions, the same results.

``gateway/head.py`` is the reference and the documentation; this file keeps its code line for
line, with the regular-expression runs replaced by byte-class tables (``_span``) and the
scanning variables typed. ``tests/gateway/test_head_diff.py`` compares the two on generated and
hostile heads; keep them in step (a change here is a change there).
"""

from gateway.errors import BAD_HOST, BAD_LENGTH, BAD_REQUEST, BAD_TE, HEADERS_TOO_LARGE
from gateway.head import (
    _ALL_M,
    _DIGITS,
    _F_CLOSE,
    _F_KEEP_ALIVE,
    _F_UPGRADE,
    _LLHTTP_NAMES,
    _MAX_CL,
    _NOT_NOMINABLE,
    _VERSIONS,
    HTTP_METHODS,
    ICE_METHODS,
    RAW_SLACK,
    RTSP_METHODS,
    Rejected,
    RequestHead,
    _ALPHA,
    _SERVER,
    _TOKEN,
    _URL,
    _VALUE,
    _absolute_form,
)
from gateway.headers import (
    H_CONNECTION,
    H_CONTENT_LENGTH,
    H_COOKIE,
    H_DROP,
    H_EXPECT,
    H_FORWARD,
    H_HOST,
    H_OVERRIDE,
    H_TRANSFER_ENCODING,
    H_UPGRADE,
    H_X_FORWARDED_FOR,
    H_X_FORWARDED_PROTO,
    H_X_REQUEST_ID,
    PLAIN_CONNECTION,
    request_header_class,
)
from routing.hostnames import normalize_request_host

IMPLEMENTATION = "cython"

ctypedef unsigned char uchar

cdef uchar _T_TOKEN[256]
cdef uchar _T_URL[256]
cdef uchar _T_QUERY[256]
cdef uchar _T_FRAGMENT[256]
cdef uchar _T_SERVER[256]
cdef uchar _T_ALPHA[256]
cdef uchar _T_VALUE[256]
cdef uchar _T_OWS[256]
cdef uchar _T_SP[256]
cdef uchar _T_EOL[256]


cdef void _fill(uchar* table, bytes chars):
    cdef int i
    for i in range(256):
        table[i] = 0
    for i in range(len(chars)):
        table[<uchar>chars[i]] = 1


_fill(_T_TOKEN, _TOKEN)
_fill(_T_URL, _URL)
_fill(_T_QUERY, _URL + b"?")
_fill(_T_FRAGMENT, _URL + b"?#")
_fill(_T_SERVER, _SERVER)
_fill(_T_ALPHA, _ALPHA)
_fill(_T_VALUE, _VALUE)
_fill(_T_OWS, b" \t")
_fill(_T_SP, b" ")
_fill(_T_EOL, b"\r\n")


cdef inline Py_ssize_t _span(const uchar* table, bytes buf, Py_ssize_t pos):
    """The end of the run of ``table`` bytes starting at ``pos`` (the regex runs of head.py)."""
    cdef const uchar* p = buf
    cdef Py_ssize_t n = len(buf)
    while pos < n and table[p[pos]]:
        pos += 1
    return pos


cdef int _connection_flags(bytes value):
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
cdef int _te_state(bytes value):
    tokens = value.split(b",")
    last = len(tokens) - 1
    for i, token in enumerate(tokens):
        if token.lstrip(b" \t").rstrip(b" ").lower() == b"chunked":
            return 1 if i == last else -1
    return 0


def _bad(reason: str) -> Rejected:
    return Rejected(BAD_REQUEST, reason)


def _too_large(reason: str) -> Rejected:
    return Rejected(HEADERS_TOO_LARGE, reason)


# ------------------------------------------------------------------------------ the parser


cdef Py_ssize_t _scan_url(bytes buf, Py_ssize_t pos, bint connect):
    """End of the request target starting at ``pos``: -1 incomplete, -2 invalid."""
    cdef Py_ssize_t n = len(buf)
    cdef const uchar* p = buf
    cdef int c, state
    if connect:
        state = 1  # server
    else:
        if pos >= n:
            return -1
        c = p[pos]
        if c == 0x2F or c == 0x2A:  # "/" "*"
            state = 3
        elif (0x41 <= c <= 0x5A) or (0x61 <= c <= 0x7A):
            pos = _span(_T_ALPHA, buf, pos)
            if pos >= n:
                return -1
            if p[pos] != 0x3A:  # ":"
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
            pos = _span(_T_SERVER, buf, pos)
            if pos >= n:
                return -1
            c = p[pos]
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
            pos = _span(_T_URL, buf, pos)
            if pos >= n:
                return -1
            c = p[pos]
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
            pos = _span(_T_QUERY, buf, pos)
            if pos >= n:
                return -1
            if p[pos] == 0x23:
                pos += 1
                state = 5
                continue
            break
        # fragment
        pos = _span(_T_FRAGMENT, buf, pos)
        if pos >= n:
            return -1
        break
    c = p[pos]
    if c == 0x20 or c == 0x0D or c == 0x0A:
        return pos
    return -2


def parse_request(bytes buf, Py_ssize_t max_bytes, Py_ssize_t max_headers):
    """Parse the request head at the start of ``buf`` (see the module docstring)."""
    cdef Py_ssize_t n = len(buf)
    cdef const uchar* p = buf
    cdef Py_ssize_t pos, mend, tstart, tend, tally, line, nend, vstart, vend, pending
    cdef int c, version, special, conn_flags, major, dot, minor, state
    cdef bint have_pending, cl_seen, te_seen, te_chunked, upgrade_header, upgrade
    pos = _span(_T_EOL, buf, 0)  # llhttp skips empty lines
    # ---- method
    mend = buf.find(b" ", pos, pos + 16)
    if mend < 0:
        if n - pos < 16 and (buf[pos:] == b"" or any(m.startswith(buf[pos:]) for m in _ALL_M)):
            return _incomplete(buf, pos, 0, max_bytes)
        return _bad("invalid method")
    method = buf[pos:mend]
    if method not in _ALL_M:
        return _bad("invalid method")
    pos = _span(_T_SP, buf, mend)
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
    c = p[pos]
    if c == 0x20:
        pos = _span(_T_SP, buf, pos)
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
        major, dot, minor = p[pos], p[pos + 1], p[pos + 2]
        if not (0x30 <= major <= 0x39) or dot != 0x2E or not (0x30 <= minor <= 0x39):
            return _bad("invalid version")
        version = (major - 0x30) * 10 + (minor - 0x30)
        if version not in _VERSIONS:
            return _bad("invalid version")
        if method not in methods:
            return _bad("method not valid for the protocol")
        if p[pos + 3] != 0x0D or p[pos + 4] != 0x0A:
            return _bad("no CRLF after the version")
        pos += 5
    elif c == 0x0D:  # HTTP/0.9: "GET /\r\n"
        if pos + 1 >= n:
            return _incomplete(buf, pos, tally, max_bytes)
        if p[pos + 1] != 0x0A:
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
        c = p[pos]
        if c == 0x0D:
            if pos + 1 >= n:
                return _incomplete(buf, pos, tally + pending, max_bytes)
            if p[pos + 1] != 0x0A:
                return _bad("CR without LF")
            pos += 2
            break
        line = pos
        nend = _span(_T_TOKEN, buf, pos)
        if nend >= n:
            if have_pending and len(headers) > max_headers:
                return _too_large("header fields")  # httptools reports it at the read's end
            return _incomplete(buf, pos, tally + pending + nend - pos, max_bytes)
        if nend == pos or p[nend] != 0x3A:
            # obs-fold, whitespace before the colon, a bare LF, a non-token character. llhttp
            # ends the name of one of its own headers at a space, which reports the previous
            # header first: that one's limit wins then.
            if (
                have_pending
                and p[nend] == 0x20
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
        vstart = _span(_T_OWS, buf, nend + 1)
        vend = _span(_T_VALUE, buf, vstart)
        if vend >= n:
            return _incomplete(buf, pos, tally + nend - pos + vend - vstart, max_bytes)
        if p[vend] != 0x0D:
            return _bad("invalid field value")
        if vend + 1 >= n:
            return _incomplete(buf, pos, tally + nend - pos + vend - vstart, max_bytes)
        if p[vend + 1] != 0x0A:
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
        if pos < n and (p[pos] == 0x20 or p[pos] == 0x09):
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
    keep_alive = (
        not (conn_flags & _F_CLOSE) if version == 11 else bool(conn_flags & _F_KEEP_ALIVE)
    )
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


cdef _classify(head: RequestHead, bytes buf, list spans):
    """What ``Dispatcher.prepare`` reads from the headers, and the block that goes upstream."""
    cdef Py_ssize_t i
    cdef int code
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


cdef object _line(bytes buf, list spans, Py_ssize_t i, bytes name, bytes value):
    """Header ``i`` as it goes upstream: a slice of the input when already canonical."""
    cdef Py_ssize_t start = spans[2 * i]
    cdef Py_ssize_t vstart = spans[2 * i + 1]
    if vstart == start + len(name) + 2 and buf[vstart - 1] == 0x20:
        return (start, vstart + len(value) + 2)
    return name + b": " + value + b"\r\n"


cdef bytes _join(bytes buf, list kept):
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


