# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled twin of :mod:`gateway.head` (Cython): the same functions, the same results.

``gateway/head.py`` is the reference and the documentation; this file makes the same decisions
in C on the common path:

* the result is a ``cdef class`` :class:`RequestHead` with typed fields (``public``: Python and
  mypyc code read them by the same names as the reference's). ``gateway.head`` registers it as
  a virtual subclass of its own ``RequestHead`` (``isinstance`` works for both) and exports it
  as ``gateway.head.HEAD_TYPE`` when this module is picked;
* no per-header Python object: the field lines are scanned into a C array of spans (on the C
  stack for up to 32 headers), classified by a C switch on length + compare (the classes of
  ``gateway.headers.request_header_class``), and the forwarded block is written in one
  allocation. ``headers`` (the list of ``(name, value)``) is built on first access from the
  head's bytes; :meth:`RequestHead.header_value` finds one header without building it;
* the Host is normalised in C with the exact rules of
  ``routing.hostnames.normalize_request_host`` (:func:`normalize_host`, compared with it by a
  hypothesis test);
* the rare paths (absolute-form targets, Connection nominations, Transfer-Encoding verdicts,
  incomplete request lines) run the reference's Python expressions.

``tests/gateway/test_head_diff.py`` compares the two on generated and hostile heads; keep them
in step (a change here is a change there).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdlib cimport free, malloc
from libc.string cimport memchr, memcmp, memcpy

from gateway.errors import BAD_HOST, BAD_LENGTH, BAD_REQUEST, BAD_TE, HEADERS_TOO_LARGE
from gateway.head import RequestHead as _ReferenceHead
from gateway.head import ResponseHead as _ReferenceResponse
from gateway.head import Refused, _check_upgrade, _only_chunked
from gateway.head import (
    _ALL_M,
    _DIGITS,
    _NOT_NOMINABLE,
    HTTP_METHODS,
    ICE_METHODS,
    RAW_SLACK,
    RTSP_METHODS,
    Rejected,
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
    R_CONNECTION as R_CONNECTION_,
    R_CONTENT_LENGTH as R_CONTENT_LENGTH_,
    R_DROP as R_DROP_,
    R_FORWARD as R_FORWARD_,
    R_TRANSFER_ENCODING as R_TRANSFER_ENCODING_,
    R_UPGRADE as R_UPGRADE_,
)

IMPLEMENTATION = "cython"

ctypedef unsigned char uchar

# The H_* classes as C constants (checked against gateway.headers below).
cdef enum:
    C_FORWARD = 0
    C_DROP = 1
    C_CONTENT_LENGTH = 2
    C_TRANSFER_ENCODING = 3
    C_CONNECTION = 4
    C_X_FORWARDED_FOR = 5
    C_X_REQUEST_ID = 6
    C_EXPECT = 7
    C_UPGRADE = 8
    C_HOST = 9
    C_X_FORWARDED_PROTO = 10
    C_OVERRIDE = 11
    C_COOKIE = 12
assert (
    H_FORWARD, H_DROP, H_CONTENT_LENGTH, H_TRANSFER_ENCODING, H_CONNECTION, H_X_FORWARDED_FOR,
    H_X_REQUEST_ID, H_EXPECT, H_UPGRADE, H_HOST, H_X_FORWARDED_PROTO, H_OVERRIDE, H_COOKIE,
) == tuple(range(13)), "gateway.headers' H_* classes changed: update gateway/_headc.pyx"

cdef enum:
    F_CLOSE = 1
    F_KEEP_ALIVE = 2
    F_UPGRADE = 4
    M_HTTP = 1
    M_RTSP = 2
    M_ICE = 4
    LOCAL_FIELDS = 32

cdef uchar _T_TOKEN[256]
cdef uchar _T_URL[256]
cdef uchar _T_QUERY[256]
cdef uchar _T_FRAGMENT[256]
cdef uchar _T_SERVER[256]
cdef uchar _T_ALPHA[256]
cdef uchar _T_VALUE[256]
cdef uchar _T_HOST[256]  # routing.hostnames._DELETE_VALID
cdef uchar _T_IPV6[256]  # the bytes of a bracketed IPv6 literal (lower case)
cdef uchar _LOWER[256]  # bytes.lower(): ASCII A-Z only


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
_fill(_T_HOST, b"abcdefghijklmnopqrstuvwxyz0123456789-.")
_fill(_T_IPV6, b"[]0123456789abcdef:.")


cdef void _fill_lower():
    cdef int i
    for i in range(256):
        _LOWER[i] = i + 32 if 0x41 <= i <= 0x5A else i


_fill_lower()

# The methods as C strings, with the protocols they are valid for (GET and POST first).
cdef int _N_METHODS = 0
cdef const char* _M_PTR[64]
cdef Py_ssize_t _M_LEN[64]
cdef int _M_FLAGS[64]
_METHOD_OBJECTS = sorted(_ALL_M, key=lambda m: (m not in (b"GET", b"POST"), m != b"GET", m))
assert len(_METHOD_OBJECTS) <= 64


cdef void _fill_methods():
    global _N_METHODS
    cdef int i = 0
    cdef bytes m
    for m in _METHOD_OBJECTS:
        _M_PTR[i] = <const char*>m
        _M_LEN[i] = len(m)
        _M_FLAGS[i] = (
            (M_HTTP if m in HTTP_METHODS else 0)
            | (M_RTSP if m in RTSP_METHODS else 0)
            | (M_ICE if m in ICE_METHODS else 0)
        )
        i += 1
    _N_METHODS = i


_fill_methods()


ctypedef struct Field:
    Py_ssize_t line  # the line's (and the name's) start
    Py_ssize_t nend  # the name's end (the colon)
    Py_ssize_t vstart  # the value, without leading OWS
    Py_ssize_t vend
    int code  # the H_* class of the name
    int kept  # 0 not forwarded, 1 the line (a slice when canonical), 2 "Host: " + value
    int skip  # scratch: nominated by Connection (dropped from the block being joined)


ctypedef struct Fields:
    Field* f
    Py_ssize_t n
    Py_ssize_t cap
    bint heap


cdef int _grow(Fields* fs) except -1:
    cdef Py_ssize_t cap = fs.cap * 2
    cdef Field* f = <Field*>malloc(cap * sizeof(Field))
    if f == NULL:
        raise MemoryError()
    memcpy(f, fs.f, fs.n * sizeof(Field))
    if fs.heap:
        free(fs.f)
    fs.f = f
    fs.cap = cap
    fs.heap = True
    return 0


# ------------------------------------------------------------------------------ C helpers


cdef inline Py_ssize_t _span(const uchar* table, const uchar* p, Py_ssize_t pos, Py_ssize_t n):
    """The end of the run of ``table`` bytes starting at ``pos`` (the regex runs of head.py)."""
    while pos < n and table[p[pos]]:
        pos += 1
    return pos


cdef inline bint _ieq(const uchar* s, const char* lower, Py_ssize_t n):
    """``s[:n].lower() == lower`` for an ASCII lower-case ``lower`` of length ``n``."""
    cdef Py_ssize_t i
    for i in range(n):
        if _LOWER[s[i]] != <uchar>lower[i]:
            return False
    return True


cdef int _hclass(const uchar* s, Py_ssize_t n):
    """``gateway.headers.request_header_class`` of the name ``s[:n]``."""
    cdef uchar c0
    if n == 0:
        return C_FORWARD
    c0 = _LOWER[s[0]]
    if n == 4:
        if _ieq(s, b"host", 4):
            return C_HOST
    elif n == 2:
        if _ieq(s, b"te", 2):
            return C_DROP
    elif n == 6:
        if c0 == c'c' and _ieq(s, b"cookie", 6):
            return C_COOKIE
        if c0 == c'e' and _ieq(s, b"expect", 6):
            return C_EXPECT
    elif n == 7:
        if c0 == c'u' and _ieq(s, b"upgrade", 7):
            return C_UPGRADE
        if c0 == c't' and _ieq(s, b"trailer", 7):
            return C_DROP
    elif n == 10:
        if c0 == c'c' and _ieq(s, b"connection", 10):
            return C_CONNECTION
        if c0 == c'k' and _ieq(s, b"keep-alive", 10):
            return C_DROP
    elif n == 12:
        if c0 == c'x' and _ieq(s, b"x-request-id", 12):
            return C_X_REQUEST_ID
    elif n == 14:
        if c0 == c'c' and _ieq(s, b"content-length", 14):
            return C_CONTENT_LENGTH
    elif n == 15:
        if c0 == c'x' and _ieq(s, b"x-forwarded-for", 15):
            return C_X_FORWARDED_FOR
    elif n == 16:
        if c0 == c'x' and _ieq(s, b"x-forwarded-host", 16):
            return C_DROP
    elif n == 17:
        if c0 == c't' and _ieq(s, b"transfer-encoding", 17):
            return C_TRANSFER_ENCODING
        if c0 == c'x' and _ieq(s, b"x-forwarded-proto", 17):
            return C_X_FORWARDED_PROTO
    elif n == 20:
        if c0 == c'x' and _ieq(s, b"x-turnout-deployment", 20):
            return C_OVERRIDE
    if c0 == c'x' and n >= 10 and _ieq(s, b"x-turnout-", 10):
        return C_DROP
    if c0 == c'p' and n >= 6 and _ieq(s, b"proxy-", 6):
        return C_DROP
    return C_FORWARD


cdef inline bint _is_proxy_connection(const uchar* s, Py_ssize_t n):
    return n == 16 and _ieq(s, b"proxy-connection", 16)


cdef int _connection_flags(const uchar* p, Py_ssize_t start, Py_ssize_t end):
    """head._connection_flags: the close / keep-alive / upgrade tokens of a Connection value."""
    cdef int flags = 0
    cdef Py_ssize_t a, b, stop
    while True:
        stop = start
        while stop < end and p[stop] != 0x2C:  # ","
            stop += 1
        a = start
        b = stop
        while a < b and (p[a] == 0x20 or p[a] == 0x09):
            a += 1
        while b > a and (p[b - 1] == 0x20 or p[b - 1] == 0x09):
            b -= 1
        if b - a == 5 and _ieq(p + a, b"close", 5):
            flags |= F_CLOSE
        elif b - a == 10 and _ieq(p + a, b"keep-alive", 10):
            flags |= F_KEEP_ALIVE
        elif b - a == 7 and _ieq(p + a, b"upgrade", 7):
            flags |= F_UPGRADE
        if stop >= end:
            return flags
        start = stop + 1


cdef int _te_state(const uchar* p, Py_ssize_t start, Py_ssize_t end):
    """head._te_state: -1 invalid (chunked not last), 1 ends in chunked, 0 not."""
    cdef Py_ssize_t a, b, stop
    while True:
        stop = start
        while stop < end and p[stop] != 0x2C:
            stop += 1
        a = start
        b = stop
        while a < b and (p[a] == 0x20 or p[a] == 0x09):
            a += 1
        while b > a and p[b - 1] == 0x20:
            b -= 1
        if b - a == 7 and _ieq(p + a, b"chunked", 7):
            return 1 if stop >= end else -1
        if stop >= end:
            return 0
        start = stop + 1


cdef inline bint _valid_port(const uchar* s, Py_ssize_t n):
    """routing.hostnames._valid_port."""
    cdef Py_ssize_t i
    cdef long v = 0
    if n <= 0 or n > 5:
        return False
    for i in range(n):
        if not (0x30 <= s[i] <= 0x39):
            return False
        v = v * 10 + (s[i] - 0x30)
    return v <= 65535


cdef object _normalize(object raw):
    """routing.hostnames._normalize_request_host on ``bytes``; ``raw`` itself when it is
    already normal (no copy)."""
    cdef const uchar* s = <const uchar*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t i, end, colon, hlen
    cdef bint upper = False
    cdef uchar c, prev
    cdef bytes out
    cdef char* q
    if n == 0:
        return None
    if s[0] == 0x5B:  # "[" IPv6 literal
        end = -1
        for i in range(n):
            if s[i] == 0x5D:
                end = i
                break
        if end < 0:
            return None
        if end + 1 < n and (s[end + 1] != 0x3A or not _valid_port(s + end + 2, n - end - 2)):
            return None
        hlen = end + 1
        for i in range(hlen):
            c = s[i]
            if not _T_IPV6[_LOWER[c]]:
                return None
            if c != _LOWER[c]:
                upper = True
    else:
        colon = -1
        for i in range(n):
            if s[i] == 0x3A:
                colon = i
                break
        hlen = n
        if colon >= 0:
            if not _valid_port(s + colon + 1, n - colon - 1):
                return None
            hlen = colon
        if hlen > 0 and s[hlen - 1] == 0x2E:
            hlen -= 1
        if hlen == 0 or hlen > 253:
            return None
        prev = 0x2E  # a leading dot is an empty label
        for i in range(hlen):
            c = _LOWER[s[i]]
            if not _T_HOST[c]:
                return None
            if c == 0x2E and prev == 0x2E:
                return None
            if c != s[i]:
                upper = True
            prev = c
        if prev == 0x2E:
            return None
    if hlen == n and not upper:
        return raw
    out = PyBytes_FromStringAndSize(NULL, hlen)
    q = PyBytes_AS_STRING(out)
    for i in range(hlen):
        q[i] = _LOWER[s[i]]
    return out


def normalize_host(bytes raw not None):
    """The Host normalisation of the parser (for the differential test against
    ``routing.hostnames``)."""
    return _normalize(raw)


def header_class(bytes name not None):
    """The parser's header class of ``name`` (for the differential test against
    ``gateway.headers.request_header_class``)."""
    return _hclass(<const uchar*>PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))


cdef inline bytes _slice(const uchar* p, Py_ssize_t start, Py_ssize_t end):
    return PyBytes_FromStringAndSize(<const char*>p + start, end - start)


cdef object _bad(str reason):
    return Rejected(BAD_REQUEST, reason)


cdef object _too_large(str reason):
    return Rejected(HEADERS_TOO_LARGE, reason)


cdef object _incomplete(Py_ssize_t n, Py_ssize_t counted, Py_ssize_t max_bytes):
    """head._incomplete: ``None``, unless already over the limit."""
    if counted > max_bytes or n > 2 * max_bytes + RAW_SLACK:
        return _too_large("incomplete head over the limit")
    return None


def _version_tail_ok(rest: bytes) -> bool:
    """Could ``rest`` (what follows "HTTP/", under 5 bytes) still become "d.d\\r\\n"?"""
    pattern = (_DIGITS, b".", _DIGITS, b"\r", b"\n")
    return all(rest[i] in pattern[i] for i in range(len(rest)))


# ------------------------------------------------------------------------------ the result


cdef list _field_list(bytes buf, Py_ssize_t pos, Py_ssize_t stop):
    """``(name, value)`` per field line of ``buf[pos:stop]`` (lines already checked by the
    parse; values without leading OWS): the lazily built ``headers`` of both head classes."""
    cdef const uchar* p = <const uchar*>PyBytes_AS_STRING(buf)
    cdef Py_ssize_t nend, vstart, vend
    headers = []
    while pos < stop:
        nend = _span(_T_TOKEN, p, pos, stop)
        vstart = nend + 1
        while p[vstart] == 0x20 or p[vstart] == 0x09:
            vstart += 1
        vend = _span(_T_VALUE, p, vstart, stop)
        headers.append((_slice(p, pos, nend), _slice(p, vstart, vend)))
        pos = vend + 2
    return headers


# gateway.headers.HEAD_* (tests/gateway/test_head_diff.py checks they agree)
cdef enum:
    _HEAD_KEEP_ALIVE = 1
    _HEAD_VERSION_10 = 2
    _HEAD_UPGRADE = 4
    _HEAD_CHUNKED = 8
    _HEAD_EXPECT_CONTINUE = 16
    _HEAD_REFRAMED = 32
    _HEAD_RARE = 64
    _RESP_BODY = 1
    _RESP_CHUNKED = 2
    _RESP_CLOSE_DELIMITED = 4
    _RESP_KEEP_ALIVE = 8
    _RESP_UPGRADE = 16


cdef class RequestHead:
    """One parsed request head: the fields of ``gateway.head.RequestHead``, typed."""

    cdef public bytes method
    cdef public bytes target
    cdef public int version
    cdef public Py_ssize_t end
    cdef public bint keep_alive
    cdef public bint version_10
    cdef public bint upgrade
    cdef public object content_length
    cdef public bint chunked
    cdef public object host
    cdef public object hostkey
    cdef public object header_host
    cdef public bytes path
    cdef public object te
    cdef public bint expect_continue
    cdef public bint conn_upgrade
    cdef public object upgrade_value
    cdef public object xff
    cdef public object xfproto
    cdef public object request_id
    cdef public object override
    cdef public object cookie
    cdef public bytes kept
    cdef public object kept_h2
    cdef public bint reframed
    cdef public object verdict
    cdef public object verdict_rid
    cdef bytes _buf  # the bytes parsed (the field lines are read again from them)
    cdef Py_ssize_t _fields_start  # the first field line
    cdef object _headers

    @property
    def headers(self):
        """``(name, value)`` per field line as received (value without leading OWS), built
        on first access."""
        if self._headers is None:
            self._headers = _field_list(self._buf, self._fields_start, self.end - 2)
        return self._headers

    @headers.setter
    def headers(self, value):
        self._headers = value

    @property
    def summary(self):
        """``(method, target, path, host, hostkey, kept, content_length, flags, match_path)``:
        see ``gateway.head.RequestHead.summary`` (one tuple instead of ~20 attribute reads)."""
        cdef bytes path = self.path
        cdef const char* p = PyBytes_AS_STRING(path)
        cdef const char* q = <const char*>memchr(p, 0x3F, PyBytes_GET_SIZE(path))
        match_path = path if q == NULL else PyBytes_FromStringAndSize(p, q - p)
        cdef int flags = (
            (_HEAD_KEEP_ALIVE if self.keep_alive else 0)
            | (_HEAD_VERSION_10 if self.version_10 else 0)
            | (_HEAD_UPGRADE if self.upgrade else 0)
            | (_HEAD_CHUNKED if self.chunked else 0)
            | (_HEAD_EXPECT_CONTINUE if self.expect_continue else 0)
            | (_HEAD_REFRAMED if self.reframed else 0)
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
            flags |= _HEAD_RARE
        return (
            self.method,
            self.target,
            self.path,
            self.host,
            self.hostkey,
            self.kept,
            self.content_length,
            flags,
            match_path,
        )

    def header_value(self, bytes lname not None):
        """The value (as received) of the first header named ``lname`` (lower case), or None."""
        cdef const uchar* p = <const uchar*>PyBytes_AS_STRING(self._buf)
        cdef const char* want = PyBytes_AS_STRING(lname)
        cdef Py_ssize_t wlen = PyBytes_GET_SIZE(lname)
        cdef Py_ssize_t pos = self._fields_start
        cdef Py_ssize_t stop = self.end - 2
        cdef Py_ssize_t nend, vstart, vend
        if self._headers is not None:  # replaced or already built: read the list
            for name, value in self._headers:
                if name.lower() == lname:
                    return value
            return None
        while pos < stop:
            nend = _span(_T_TOKEN, p, pos, stop)
            vstart = nend + 1
            while p[vstart] == 0x20 or p[vstart] == 0x09:
                vstart += 1
            vend = _span(_T_VALUE, p, vstart, stop)
            if nend - pos == wlen and _ieq(p + pos, want, wlen):
                return _slice(p, vstart, vend)
            pos = vend + 2
        return None

    def fields(self):
        """Every field, in the reference's slot order (the differential tests compare these)."""
        return tuple(getattr(self, name) for name in _ReferenceHead.__slots__)

    def __repr__(self):
        return f"RequestHead({self.method!r} {self.target!r} v{self.version}, end={self.end})"


# ------------------------------------------------------------------------------ the parser


cdef Py_ssize_t _scan_url(const uchar* p, Py_ssize_t n, Py_ssize_t pos, bint connect):
    """End of the request target starting at ``pos``: -1 incomplete, -2 invalid."""
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
            pos = _span(_T_ALPHA, p, pos, n)
            if pos >= n:
                return -1
            if p[pos] != 0x3A:  # ":"
                return -2
            # "://" (a prefix of it when the buffer ends)
            if pos + 1 < n and p[pos + 1] != 0x2F:
                return -2
            if pos + 2 < n and p[pos + 2] != 0x2F:
                return -2
            if n - pos < 3:
                return -1
            pos += 3
            state = 1
        else:
            return -2
    while True:
        if state == 1:  # authority
            pos = _span(_T_SERVER, p, pos, n)
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
            pos = _span(_T_URL, p, pos, n)
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
            pos = _span(_T_QUERY, p, pos, n)
            if pos >= n:
                return -1
            if p[pos] == 0x23:
                pos += 1
                state = 5
                continue
            break
        # fragment
        pos = _span(_T_FRAGMENT, p, pos, n)
        if pos >= n:
            return -1
        break
    c = p[pos]
    if c == 0x20 or c == 0x0D or c == 0x0A:
        return pos
    return -2


def parse_request(bytes buf not None, Py_ssize_t max_bytes, Py_ssize_t max_headers):
    """Parse the request head at the start of ``buf`` (see gateway/head.py)."""
    cdef Field local[LOCAL_FIELDS]
    cdef Fields fs
    fs.f = local
    fs.n = 0
    fs.cap = LOCAL_FIELDS
    fs.heap = False
    try:
        return _parse(buf, max_bytes, max_headers, &fs)
    finally:
        if fs.heap:
            free(fs.f)


cdef object _parse(bytes buf, Py_ssize_t max_bytes, Py_ssize_t max_headers, Fields* fs):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
    cdef const uchar* p = <const uchar*>PyBytes_AS_STRING(buf)
    cdef Py_ssize_t pos, mend, tstart, tend, tally, line, nend, vstart, vend, pending, i, stop
    cdef Py_ssize_t fields_start, nlen
    cdef int c, version, special, conn_flags, major, dot, minor, state, code, mflags, mi
    cdef int protocol
    cdef bint have_pending, cl_seen, te_seen, te_chunked, upgrade_header, upgrade, keep_alive
    cdef bint has_connection
    cdef unsigned long long cl, digit
    cdef Field* f
    pos = 0
    while pos < n and (p[pos] == 0x0D or p[pos] == 0x0A):  # llhttp skips empty lines
        pos += 1
    # ---- method
    mend = -1
    stop = pos + 16 if pos + 16 < n else n
    for i in range(pos, stop):
        if p[i] == 0x20:
            mend = i
            break
    if mend < 0:
        rest = buf[pos:]
        if n - pos < 16 and (rest == b"" or any(m.startswith(rest) for m in _ALL_M)):
            return _incomplete(n, 0, max_bytes)
        return _bad("invalid method")
    mi = -1
    nlen = mend - pos
    for i in range(_N_METHODS):
        if _M_LEN[i] == nlen and memcmp(_M_PTR[i], p + pos, nlen) == 0:
            mi = i
            break
    if mi < 0:
        return _bad("invalid method")
    method = <bytes>_METHOD_OBJECTS[mi]
    mflags = _M_FLAGS[mi]
    cdef bint is_connect = nlen == 7 and memcmp(p + pos, b"CONNECT", 7) == 0
    pos = mend
    while pos < n and p[pos] == 0x20:
        pos += 1
    # ---- target
    tstart = pos
    tend = _scan_url(p, n, pos, is_connect)
    if tend == -2:
        return _bad("invalid request target")
    if tend == -1:
        return _incomplete(n, n - tstart, max_bytes)
    tally = tend - tstart
    if tally > max_bytes:
        return _too_large("request target")
    pos = tend
    c = p[pos]
    if c == 0x20:
        while pos < n and p[pos] == 0x20:
            pos += 1
        if n - pos >= 5 and memcmp(p + pos, b"HTTP/", 5) == 0:
            protocol = M_HTTP
            pos += 5
        elif n - pos >= 5 and memcmp(p + pos, b"RTSP/", 5) == 0:
            protocol = M_RTSP
            pos += 5
        elif n - pos >= 4 and memcmp(p + pos, b"ICE/", 4) == 0:
            protocol = M_ICE
            pos += 4
        else:
            rest = buf[pos:]
            if len(rest) < 5 and (
                b"HTTP/".startswith(rest) or b"RTSP/".startswith(rest) or b"ICE/".startswith(rest)
            ):
                return _incomplete(n, tally, max_bytes)
            return _bad("invalid protocol")
        if n - pos < 5:
            if not _version_tail_ok(buf[pos:]):
                return _bad("invalid version")
            return _incomplete(n, tally, max_bytes)
        major, dot, minor = p[pos], p[pos + 1], p[pos + 2]
        if not (0x30 <= major <= 0x39) or dot != 0x2E or not (0x30 <= minor <= 0x39):
            return _bad("invalid version")
        version = (major - 0x30) * 10 + (minor - 0x30)
        if not (version == 11 or version == 10 or version == 20 or version == 9):
            return _bad("invalid version")
        if not (mflags & protocol):
            return _bad("method not valid for the protocol")
        if p[pos + 3] != 0x0D or p[pos + 4] != 0x0A:
            return _bad("no CRLF after the version")
        pos += 5
    elif c == 0x0D:  # HTTP/0.9: "GET /\r\n"
        if pos + 1 >= n:
            return _incomplete(n, tally, max_bytes)
        if p[pos + 1] != 0x0A:
            return _bad("CR without LF")
        pos += 2
        version = 9
    else:  # HTTP/0.9 with a bare LF (llhttp takes it)
        pos += 1
        version = 9

    # ---- field lines
    fields_start = pos
    pending = 0  # bytes of the last header, counted when the next name (or the end) is read
    have_pending = False
    cl_seen = False
    te_seen = False
    te_chunked = False
    cl = 0
    conn_flags = 0
    upgrade_header = False
    has_connection = False
    while True:
        if pos >= n:
            return _incomplete(n, tally + pending, max_bytes)
        c = p[pos]
        if c == 0x0D:
            if pos + 1 >= n:
                return _incomplete(n, tally + pending, max_bytes)
            if p[pos + 1] != 0x0A:
                return _bad("CR without LF")
            pos += 2
            break
        line = pos
        nend = _span(_T_TOKEN, p, pos, n)
        if nend >= n:
            if have_pending and fs.n > max_headers:
                return _too_large("header fields")  # httptools reports it at the read's end
            return _incomplete(n, tally + pending + nend - pos, max_bytes)
        if nend == pos or p[nend] != 0x3A:
            # obs-fold, whitespace before the colon, a bare LF, a non-token character. llhttp
            # ends the name of one of its own headers at a space, which reports the previous
            # header first: that one's limit wins then.
            if have_pending and p[nend] == 0x20 and (tally + pending > max_bytes or fs.n > max_headers):
                code = _hclass(p + pos, nend - pos)
                if (
                    code == C_CONTENT_LENGTH
                    or code == C_TRANSFER_ENCODING
                    or code == C_CONNECTION
                    or code == C_UPGRADE
                    or _is_proxy_connection(p + pos, nend - pos)
                ):
                    return _too_large("header fields")
            return _bad("invalid field name")
        if have_pending:  # httptools reports the previous header once this name is read
            tally += pending
            if tally > max_bytes or fs.n > max_headers:
                return _too_large("header fields")
            have_pending = False
        nlen = nend - pos
        code = _hclass(p + pos, nlen)
        special = 0
        if code == C_CONTENT_LENGTH:
            if cl_seen:
                return _bad("duplicate Content-Length")
            if te_seen:
                return _bad("Content-Length with Transfer-Encoding")
            cl_seen = True
            special = 1
        elif code == C_TRANSFER_ENCODING:
            if cl_seen:
                return _bad("Transfer-Encoding with Content-Length")
            if te_chunked:
                return _bad("Transfer-Encoding after chunked")
            te_seen = True
            special = 2
        elif code == C_CONNECTION:
            special = 3
            has_connection = True
        elif code == C_UPGRADE:
            special = 4
        elif code == C_DROP and _is_proxy_connection(p + pos, nlen):
            special = 3
        vstart = nend + 1
        while vstart < n and (p[vstart] == 0x20 or p[vstart] == 0x09):
            vstart += 1
        vend = _span(_T_VALUE, p, vstart, n)
        if special == 1 and vend + 1 >= n:  # llhttp refuses the character as it arrives
            stop = vend
            while stop > vstart and (p[stop - 1] == 0x20 or p[stop - 1] == 0x09):
                stop -= 1
            for i in range(vstart, stop):
                if not (0x30 <= p[i] <= 0x39):
                    return _bad("invalid Content-Length")
        if vend >= n:
            return _incomplete(n, tally + nlen + vend - vstart, max_bytes)
        if p[vend] != 0x0D:
            return _bad("invalid field value")
        if vend + 1 >= n:
            return _incomplete(n, tally + nlen + vend - vstart, max_bytes)
        if p[vend + 1] != 0x0A:
            return _bad("CR without LF")
        if special == 1 or special == 2:
            stop = vend
            while stop > vstart and (p[stop - 1] == 0x20 or p[stop - 1] == 0x09):
                stop -= 1
            if stop == vstart:
                # llhttp refuses an empty one at the byte after its line
                if vend + 2 >= n:
                    return _incomplete(n, tally + nlen + vend - vstart, max_bytes)
                return _bad("empty Content-Length or Transfer-Encoding")
            if special == 1:
                cl = 0
                for i in range(vstart, stop):
                    if not (0x30 <= p[i] <= 0x39):
                        return _bad("invalid Content-Length")
                for i in range(vstart, stop):
                    digit = p[i] - 0x30
                    if cl > (<unsigned long long>0xFFFFFFFFFFFFFFFF - digit) // 10:
                        return _bad("Content-Length overflow")
                    cl = cl * 10 + digit
            else:
                state = _te_state(p, vstart, vend)
                if state < 0:
                    return _bad("Transfer-Encoding after chunked")
                te_chunked = state == 1
        elif special == 3:
            conn_flags |= _connection_flags(p, vstart, vend)
        elif special == 4 and vend > vstart:
            upgrade_header = True
        pos = vend + 2
        if pos < n and (p[pos] == 0x20 or p[pos] == 0x09):
            return _bad("obs-fold")
        if fs.n == fs.cap:
            _grow(fs)
        f = &fs.f[fs.n]
        f.line = line
        f.nend = nend
        f.vstart = vstart
        f.vend = vend
        f.code = code
        f.kept = 0
        f.skip = 0
        fs.n += 1
        pending = nlen + (vend - vstart) + 4
        have_pending = True
    if have_pending:
        tally += pending
        if tally > max_bytes or fs.n > max_headers:
            return _too_large("header fields")
    upgrade = (upgrade_header and (conn_flags & F_UPGRADE) != 0) or is_connect
    if te_seen and not te_chunked and not upgrade:  # llhttp upgrades first, body or not
        return _bad("Transfer-Encoding not ending in chunked")

    cdef RequestHead head = RequestHead.__new__(RequestHead)
    head.method = method
    head.target = _slice(p, tstart, tend)
    head.version = version
    head.end = pos
    head._buf = buf
    head._fields_start = fields_start
    # llhttp: HTTP/1.1 unless "close"; any other version only with "keep-alive"
    if version == 11:
        keep_alive = (conn_flags & F_CLOSE) == 0
    else:
        keep_alive = (conn_flags & F_KEEP_ALIVE) != 0
    head.keep_alive = keep_alive
    head.version_10 = (not keep_alive or has_connection) and version == 10
    head.upgrade = upgrade
    head.chunked = te_chunked
    head.content_length = cl if cl_seen else None
    _classify(head, buf, p, fs, is_connect)
    return head


cdef object _value(const uchar* p, Field* f):
    return _slice(p, f.vstart, f.vend)


cdef int _classify(RequestHead head, bytes buf, const uchar* p, Fields* fs, bint is_connect) except -1:
    """What ``Dispatcher.prepare`` reads from the headers, and the block that goes upstream."""
    cdef Py_ssize_t i, nf = fs.n, cl_i = -1, rid_i = -1, vrid_i = -1, upgrade_i = -1
    cdef Py_ssize_t xfproto_i = -1, override_i = -1, host_i = -1, a, b
    cdef int code
    cdef bint expect = False, have_verdict = False
    cdef Field* f
    cdef Field* g
    verdict = None
    url = head.target
    host = None
    path = url
    if (PyBytes_GET_SIZE(url) == 0 or PyBytes_AS_STRING(url)[0] != c'/') and not (
        url == b"*" and head.method == b"OPTIONS"
    ):
        target = _absolute_form(url)
        if target is None:
            verdict = BAD_REQUEST
            have_verdict = True
        else:
            host, path = target
    if not have_verdict and is_connect:
        verdict = BAD_REQUEST
        have_verdict = True
    head.path = path

    conn_tokens = None
    te = None
    xff = None
    cookie = None
    for i in range(nf):
        f = &fs.f[i]
        code = f.code
        if code == C_FORWARD:
            f.kept = 1
        elif code == C_COOKIE:
            f.kept = 1
            value = _value(p, f)
            cookie = value if cookie is None else cookie + b"; " + value
        elif code == C_DROP:
            pass
        elif code == C_CONTENT_LENGTH:
            if cl_i >= 0 and not have_verdict:
                g = &fs.f[cl_i]
                if g.vend - g.vstart != f.vend - f.vstart or memcmp(
                    p + g.vstart, p + f.vstart, f.vend - f.vstart
                ):
                    verdict = BAD_LENGTH
                    have_verdict = True
                    vrid_i = rid_i
            cl_i = i
        elif code == C_TRANSFER_ENCODING:
            value = _value(p, f)
            te = value if te is None else te + b", " + value
        elif code == C_CONNECTION:
            value = _value(p, f)
            if value not in PLAIN_CONNECTION:  # keep-alive/close nominate nothing
                conn_tokens = (conn_tokens or []) + [t.strip().lower() for t in value.split(b",")]
        elif code == C_X_FORWARDED_FOR:
            value = _value(p, f)
            xff = value if xff is None else xff + b", " + value
        elif code == C_X_REQUEST_ID:
            rid_i = i
        elif code == C_EXPECT:
            expect = f.vend - f.vstart == 12 and _ieq(p + f.vstart, b"100-continue", 12)
        elif code == C_UPGRADE:
            upgrade_i = i
        elif code == C_HOST:
            if host_i >= 0:
                if not have_verdict:
                    verdict = BAD_HOST  # RFC 9112 §3.2
                    have_verdict = True
                    vrid_i = rid_i
                continue
            host_i = i
            if f.nend - f.line == 4 and memcmp(p + f.line, b"Host", 4) == 0:
                f.kept = 1
            else:
                f.kept = 2
        elif code == C_X_FORWARDED_PROTO:
            xfproto_i = i
        else:  # C_OVERRIDE
            override_i = i
    header_host = _value(p, &fs.f[host_i]) if host_i >= 0 else None
    extra_host = None
    if host is None:
        host = header_host
    elif host != header_host:
        # RFC 9112 §3.2.2: an absolute-form target's authority replaces the Host header.
        if host_i >= 0:
            fs.f[host_i].kept = 0
        extra_host = host
    hostkey = _normalize(host) if host is not None else None
    req_id = _value(p, &fs.f[rid_i]) if rid_i >= 0 else None
    if not have_verdict:
        if hostkey is None:
            verdict = BAD_HOST
            have_verdict = True
            vrid_i = rid_i
        elif te is not None:
            if cl_i >= 0:
                verdict = BAD_REQUEST  # unreachable: refused when parsed
                have_verdict = True
                vrid_i = rid_i
            elif _last_token(te) != b"chunked":
                verdict = BAD_TE
                have_verdict = True
                vrid_i = rid_i
        elif cl_i >= 0:
            f = &fs.f[cl_i]
            a = f.vstart
            b = f.vend
            if b - a > 18 or b == a:
                verdict = BAD_LENGTH
            else:
                for i in range(a, b):
                    if not (0x30 <= p[i] <= 0x39):
                        verdict = BAD_LENGTH
                        break
            if verdict is not None:
                have_verdict = True
                vrid_i = rid_i
    head.verdict = verdict
    head.verdict_rid = _value(p, &fs.f[vrid_i]) if vrid_i >= 0 else None
    head.host = host
    head.hostkey = hostkey
    head.header_host = header_host
    head.te = te
    head.expect_continue = expect
    head.xff = xff
    head.xfproto = _value(p, &fs.f[xfproto_i]) if xfproto_i >= 0 else None
    head.request_id = req_id
    head.override = _value(p, &fs.f[override_i]).strip() if override_i >= 0 else None
    head.cookie = cookie
    head.reframed = te is not None and cl_i >= 0
    conn_upgrade = conn_tokens is not None and b"upgrade" in conn_tokens
    head.conn_upgrade = conn_upgrade
    head.upgrade_value = _value(p, &fs.f[upgrade_i]) if conn_upgrade and upgrade_i >= 0 else None
    head.kept_h2 = None
    if conn_tokens:
        nominated = {t for t in conn_tokens if t not in _NOT_NOMINABLE}
        if nominated:
            if b"http2-settings" in nominated and upgrade_i >= 0 and conn_upgrade:
                # kept if the route allows the upgrade (h2c: RFC 9113 §3.2), else dropped
                nominated.discard(b"http2-settings")
                _nominate(p, fs, nominated)
                head.kept_h2 = _join(p, fs, extra_host)
                nominated.add(b"http2-settings")
            _nominate(p, fs, nominated)
            head.kept = _join(p, fs, extra_host)
            return 0
    head.kept = _join(p, fs, extra_host)
    return 0


cdef bytes _last_token(bytes te):
    """``[c.strip().lower() for c in te.split(b",")][-1]``."""
    tokens = te.split(b",")
    return (<bytes>tokens[len(tokens) - 1]).strip().lower()


cdef int _nominate(const uchar* p, Fields* fs, set nominated) except -1:
    """Mark the kept lines whose (lower-case) name Connection nominates."""
    cdef Py_ssize_t i
    cdef Field* f
    for i in range(fs.n):
        f = &fs.f[i]
        if f.kept == 2:
            f.skip = b"host" in nominated
        elif f.kept == 1:
            f.skip = _slice(p, f.line, f.nend).lower() in nominated
        else:
            f.skip = 0
    return 0


cdef bytes _join(const uchar* p, Fields* fs, object extra_host):
    """The forwarded block in one allocation: canonical lines copied, others rebuilt."""
    cdef Py_ssize_t i, total = 0, nlen, vlen, hlen = 0, k
    cdef Field* f
    cdef char* q
    cdef bytes out
    for i in range(fs.n):
        f = &fs.f[i]
        if f.kept == 0 or f.skip:
            continue
        vlen = f.vend - f.vstart
        if f.kept == 1:
            nlen = f.nend - f.line
            if f.vstart == f.nend + 2 and p[f.nend + 1] == 0x20:
                total += f.vend + 2 - f.line
            else:
                total += nlen + vlen + 4
        else:
            total += vlen + 8
    if extra_host is not None:
        hlen = PyBytes_GET_SIZE(extra_host)
        total += hlen + 8
    out = PyBytes_FromStringAndSize(NULL, total)
    q = PyBytes_AS_STRING(out)
    k = 0
    for i in range(fs.n):
        f = &fs.f[i]
        if f.kept == 0 or f.skip:
            continue
        vlen = f.vend - f.vstart
        if f.kept == 1:
            nlen = f.nend - f.line
            if f.vstart == f.nend + 2 and p[f.nend + 1] == 0x20:
                memcpy(q + k, p + f.line, f.vend + 2 - f.line)
                k += f.vend + 2 - f.line
                continue
            memcpy(q + k, p + f.line, nlen)
            k += nlen
        else:
            memcpy(q + k, b"Host", 4)
            k += 4
        q[k] = c':'
        q[k + 1] = c' '
        memcpy(q + k + 2, p + f.vstart, vlen)
        k += vlen + 2
        q[k] = c'\r'
        q[k + 1] = c'\n'
        k += 2
    if extra_host is not None:
        memcpy(q + k, b"Host: ", 6)
        memcpy(q + k + 6, PyBytes_AS_STRING(extra_host), hlen)
        k += hlen + 6
        q[k] = c'\r'
        q[k + 1] = c'\n'
    return out


# ------------------------------------------------------------------------------ response heads
#
# gateway.head.parse_response in C: the same grammar (llhttp's strict response parser and its
# error reasons), the same decisions; the field lines as spans, the client's header block
# written in one allocation. ResponseHead.kept and .headers are built on first access.

cdef enum:
    R_FORWARD = 0
    R_DROP = 1
    R_CONTENT_LENGTH = 2
    R_TRANSFER_ENCODING = 3
    R_CONNECTION = 4
    R_UPGRADE = 5
    # llhttp's flags for a response head
    RF_CLOSE = 1
    RF_KEEP_ALIVE = 2
    RF_CONN_UPGRADE = 4
    RF_CHUNKED = 8
    RF_UPGRADE = 16
    RF_CONTENT_LENGTH = 32
    RF_TRANSFER_ENCODING = 64
    # llhttp's header states
    LH_GENERAL = 0
    LH_CONNECTION = 1
    LH_CONTENT_LENGTH = 2
    LH_TRANSFER_ENCODING = 3
    LH_UPGRADE = 4

assert (R_FORWARD_, R_DROP_, R_CONTENT_LENGTH_, R_TRANSFER_ENCODING_, R_CONNECTION_, R_UPGRADE_) == (
    0, 1, 2, 3, 4, 5,
), "gateway.headers' R_* classes changed: update gateway/_headc.pyx"


cdef int _rclass(const uchar* s, Py_ssize_t n, int* lh):
    """``gateway.headers.response_header_class`` of ``s[:n]``; ``lh[0]``: llhttp's state."""
    lh[0] = LH_GENERAL
    if n == 14:
        if _ieq(s, b"content-length", 14):
            lh[0] = LH_CONTENT_LENGTH
            return R_CONTENT_LENGTH
    elif n == 17:
        if _ieq(s, b"transfer-encoding", 17):
            lh[0] = LH_TRANSFER_ENCODING
            return R_TRANSFER_ENCODING
    elif n == 10:
        if _ieq(s, b"connection", 10):
            lh[0] = LH_CONNECTION
            return R_CONNECTION
        if _ieq(s, b"keep-alive", 10):
            return R_DROP
    elif n == 7:
        if _ieq(s, b"upgrade", 7):
            lh[0] = LH_UPGRADE
            return R_UPGRADE
        if _ieq(s, b"trailer", 7):
            return R_DROP
    elif n == 2:
        if _ieq(s, b"te", 2):
            return R_DROP
    elif n == 16:
        if _ieq(s, b"proxy-connection", 16):
            lh[0] = LH_CONNECTION
            return R_DROP
    elif n == 18:
        if _ieq(s, b"proxy-authenticate", 18):
            return R_DROP
    elif n == 12:
        if _ieq(s, b"x-request-id", 12):
            return R_DROP
    return R_FORWARD


def response_header_class_c(bytes name not None):
    """The parser's response header class of ``name`` (for the differential test)."""
    cdef int lh
    return _rclass(<const uchar*>PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name), &lh)


cdef bint _keep_alive(int version, int flags, int status, bint skipbody):
    """llhttp_should_keep_alive()."""
    if version // 10 > 0 and version % 10 > 0:
        if flags & RF_CLOSE:
            return False
    elif not (flags & RF_KEEP_ALIVE):
        return False
    if status // 100 == 1 or status == 204 or status == 304 or skipbody:
        return True
    if (flags & RF_TRANSFER_ENCODING) and not (flags & RF_CHUNKED):
        return False
    return (flags & (RF_CHUNKED | RF_CONTENT_LENGTH)) != 0


cdef class ResponseHead:
    """One final response head: the fields of ``gateway.head.ResponseHead``, typed."""

    cdef public int status
    cdef public bytes reason
    cdef public int version
    cdef public Py_ssize_t end
    cdef public object content_length
    cdef public bint body_expected
    cdef public bint chunked
    cdef public bint close_delimited
    cdef public bint keep_alive
    cdef public bint upgrade
    cdef bytes _block
    cdef bytes _buf
    cdef Py_ssize_t _fields_start
    cdef object _headers
    cdef object _kept

    def block(self):
        """The kept lines as Exchange.response_head writes them (``name: value`` CRLF)."""
        return self._block

    @property
    def summary(self):
        """``(status, reason, end, content_length, flags)``: see
        ``gateway.head.ResponseHead.summary``."""
        cdef int flags = (
            (_RESP_BODY if self.body_expected else 0)
            | (_RESP_CHUNKED if self.chunked else 0)
            | (_RESP_CLOSE_DELIMITED if self.close_delimited else 0)
            | (_RESP_KEEP_ALIVE if self.keep_alive else 0)
            | (_RESP_UPGRADE if self.upgrade else 0)
        )
        return (self.status, self.reason, self.end, self.content_length, flags)

    @property
    def headers(self):
        """The final head's fields as received, built on first access."""
        if self._headers is None:
            self._headers = _field_list(self._buf, self._fields_start, self.end - 2)
        return self._headers

    @headers.setter
    def headers(self, value):
        self._headers = value

    @property
    def kept(self):
        """``(name, value)`` of the lines that go to the client, built on first access."""
        cdef const uchar* p
        cdef Py_ssize_t pos, colon, eol, n
        if self._kept is None:
            kept = []
            p = <const uchar*>PyBytes_AS_STRING(self._block)
            n = PyBytes_GET_SIZE(self._block)
            pos = 0
            while pos < n:
                colon = pos
                while p[colon] != 0x3A:
                    colon += 1
                eol = colon + 2
                while p[eol] != 0x0D:
                    eol += 1
                kept.append((_slice(p, pos, colon), _slice(p, colon + 2, eol)))
                pos = eol + 2
            self._kept = kept
        return self._kept

    @kept.setter
    def kept(self, value):
        self._kept = value

    def fields(self):
        return tuple(getattr(self, name) for name in _ReferenceResponse.__slots__)

    def __repr__(self):
        return f"ResponseHead({self.status} {self.reason!r} v{self.version}, end={self.end})"


cdef object _refused(str kind, str message):
    return Refused(kind, message)


cdef object _invalid(str reason):
    return Refused("protocol", "invalid response: " + reason)


def parse_response(
    bytes buf not None,
    Py_ssize_t max_bytes,
    Py_ssize_t max_headers,
    bint head_request,
    offered=None,
):
    """gateway.head.parse_response."""
    cdef Field local[LOCAL_FIELDS]
    cdef Fields fs
    fs.f = local
    fs.n = 0
    fs.cap = LOCAL_FIELDS
    fs.heap = False
    try:
        return _parse_response(buf, max_bytes, max_headers, head_request, offered, &fs)
    finally:
        if fs.heap:
            free(fs.f)


ctypedef struct RHead:
    int status
    int version
    int flags
    Py_ssize_t reason_start
    Py_ssize_t reason_end
    Py_ssize_t fields_start
    Py_ssize_t end


cdef object _parse_response(
    bytes buf, Py_ssize_t max_bytes, Py_ssize_t max_headers, bint head_request, object offered,
    Fields* fs,
):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
    cdef const uchar* p = <const uchar*>PyBytes_AS_STRING(buf)
    cdef Py_ssize_t pos = 0, interim = 0, size, i
    cdef RHead h
    cdef int rc
    while True:
        fs.n = 0
        rc = _response_head(p, n, pos, &h, fs)
        if rc < 0:
            return _invalid(_REASONS[-rc - 1])
        if rc == 0:
            if n > max_bytes:
                return _refused("head_too_large", f"upstream response head over {max_bytes} bytes")
            return None
        if fs.n > max_headers:
            return _refused(
                "head_too_large", f"upstream response head has over {max_headers} headers"
            )
        size = 17 + h.reason_end - h.reason_start
        for i in range(fs.n):
            size += fs.f[i].nend - fs.f[i].line + fs.f[i].vend - fs.f[i].vstart + 4
        if 100 <= h.status < 200 and h.status != 101:
            interim += size
            pos = h.end
            if not _keep_alive(h.version, h.flags, h.status, False):
                while pos < n and (p[pos] == 0x0D or p[pos] == 0x0A):
                    pos += 1
                if pos < n:
                    return _invalid("Data after `Connection: close`")
                if n > max_bytes:
                    return _refused(
                        "head_too_large", f"upstream response head over {max_bytes} bytes"
                    )
                return None
            continue
        if n > max_bytes and interim + size > max_bytes:
            return _refused("head_too_large", f"upstream response head over {max_bytes} bytes")
        return _final_response(buf, p, &h, fs, head_request, offered)


# The error reasons of _response_head (negative return values index them, from -1).
_REASONS = (
    "Expected HTTP/, RTSP/ or ICE/",  # -1
    "Invalid major version",  # -2
    "Expected dot",  # -3
    "Invalid minor version",  # -4
    "Invalid HTTP version",  # -5
    "Expected space after version",  # -6
    "Invalid status code",  # -7
    "Missing expected CR after response line",  # -8
    "Invalid response status",  # -9
    "Expected LF after CR",  # -10
    "Unexpected space after start line",  # -11
    "Expected LF after headers",  # -12
    "Invalid header field char",  # -13
    "Invalid header token",  # -14
    "Transfer-Encoding can't be present with Content-Length",  # -15
    "Content-Length can't be present with Transfer-Encoding",  # -16
    "Invalid header value char",  # -17
    "Empty Content-Length",  # -18
    "Empty Transfer-Encoding",  # -19
    "Duplicate Content-Length",  # -20
    "Content-Length overflow",  # -21
    "Invalid character in Content-Length",  # -22
    "Missing expected CR after header value",  # -23
    "Missing expected LF after header value",  # -24
    "Unexpected whitespace after header value",  # -25
)


cdef int _prefix(const uchar* p, Py_ssize_t n, Py_ssize_t pos, const char* lit, Py_ssize_t k):
    """1: ``lit`` at ``pos``; 0: the buffer ends inside a match; -1: no match."""
    cdef Py_ssize_t m = n - pos
    if m > k:
        m = k
    if memcmp(p + pos, lit, m) != 0:
        return -1
    return 1 if m == k else 0


cdef int _response_head(const uchar* p, Py_ssize_t n, Py_ssize_t pos, RHead* h, Fields* fs) except -100:
    """One head at ``pos``: 1 complete (``h``, ``fs``), 0 incomplete, < 0 invalid (-reason)."""
    cdef int r, c, lh, code, flags = 0, cflags
    cdef Py_ssize_t nend, vstart, vend, dend, wend, a, b, stop
    cdef unsigned long long cl, digit
    cdef Field* f
    while pos < n and (p[pos] == 0x0D or p[pos] == 0x0A):
        pos += 1
    if pos >= n:
        return 0
    # ---- protocol
    r = _prefix(p, n, pos, b"HTTP", 4)
    if r == 1:
        pos += 4
    elif r == 0:
        return 0
    else:
        r = _prefix(p, n, pos, b"RTSP", 4)
        if r == 1:
            pos += 4
        elif r == 0:
            return 0
        else:
            r = _prefix(p, n, pos, b"ICE", 3)
            if r == 1:
                pos += 3
            elif r == 0:
                return 0
            else:
                return -1
    if pos >= n:
        return 0
    if p[pos] != 0x2F:
        return -1
    pos += 1
    # ---- version
    if pos >= n:
        return 0
    if not (0x30 <= p[pos] <= 0x39):
        return -2
    h.version = (p[pos] - 0x30) * 10
    pos += 1
    if pos >= n:
        return 0
    if p[pos] != 0x2E:
        return -3
    pos += 1
    if pos >= n:
        return 0
    if not (0x30 <= p[pos] <= 0x39):
        return -4
    h.version += p[pos] - 0x30
    pos += 1
    if not (h.version == 11 or h.version == 10 or h.version == 20 or h.version == 9):
        return -5
    if pos >= n:
        return 0
    if p[pos] != 0x20:
        return -6
    pos += 1
    # ---- status
    h.status = 0
    for _ in range(3):
        if pos >= n:
            return 0
        c = p[pos]
        if not (0x30 <= c <= 0x39):
            return -7
        h.status = h.status * 10 + c - 0x30
        pos += 1
    if pos >= n:
        return 0
    c = p[pos]
    if c == 0x20:
        pos += 1
        h.reason_start = pos
        while pos < n and p[pos] != 0x0D and p[pos] != 0x0A:
            pos += 1
        if pos >= n:
            return 0
        if p[pos] == 0x0A:
            return -8
        h.reason_end = pos
    elif c == 0x0D:
        h.reason_start = h.reason_end = pos
    else:
        return -9
    if pos + 1 >= n:
        return 0
    if p[pos + 1] != 0x0A:
        return -10
    pos += 2
    if pos >= n:
        return 0
    if p[pos] == 0x20:
        return -11
    h.fields_start = pos
    # ---- field lines
    while True:
        if pos >= n:
            return 0
        c = p[pos]
        if c == 0x0D:
            if pos + 1 >= n:
                return 0
            if p[pos + 1] != 0x0A:
                return -12
            h.flags = flags
            h.end = pos + 2
            return 1
        if c == 0x0A:
            return -13
        if c == 0x3A:
            return -14
        nend = _span(_T_TOKEN, p, pos, n)
        if nend >= n:
            return 0
        code = _rclass(p + pos, nend - pos, &lh)
        if p[nend] != 0x3A:
            if p[nend] == 0x20 and lh != LH_GENERAL:
                return -13
            return -14
        if lh == LH_TRANSFER_ENCODING and (flags & RF_CONTENT_LENGTH):
            return -15
        if lh == LH_CONTENT_LENGTH and (flags & RF_TRANSFER_ENCODING):
            return -16
        vstart = nend + 1
        while vstart < n and (p[vstart] == 0x20 or p[vstart] == 0x09):
            vstart += 1
        if vstart >= n:
            return 0
        c = p[vstart]
        if c == 0x0A:
            return -17
        if c == 0x0D:  # an empty value
            if vstart + 1 >= n:
                return 0
            if p[vstart + 1] != 0x0A:
                return -10
            if vstart + 2 >= n:
                return 0
            if p[vstart + 2] == 0x20 or p[vstart + 2] == 0x09:
                return -17
            if lh == LH_CONTENT_LENGTH:
                return -18
            if lh == LH_TRANSFER_ENCODING:
                return -19
            vend = vstart
        else:
            if lh == LH_CONTENT_LENGTH:
                if flags & RF_CONTENT_LENGTH:
                    return -20
                dend = vstart
                cl = 0
                while dend < n and 0x30 <= p[dend] <= 0x39:
                    digit = p[dend] - 0x30
                    if cl > (<unsigned long long>0xFFFFFFFFFFFFFFFF - digit) // 10:
                        return -21
                    cl = cl * 10 + digit
                    dend += 1
                wend = dend
                while wend < n and (p[wend] == 0x20 or p[wend] == 0x09):
                    wend += 1
                if wend >= n:
                    return 0
                if p[wend] != 0x0D and p[wend] != 0x0A:
                    return -22
            vend = _span(_T_VALUE, p, vstart, n)
            if vend >= n:
                return 0
            if p[vend] == 0x0A:
                return -23
            if p[vend] != 0x0D:
                return -17
            if vend + 1 >= n:
                return 0
            if p[vend + 1] != 0x0A:
                return -24
            if vend + 2 >= n:
                return 0
            if p[vend + 2] == 0x20 or p[vend + 2] == 0x09:
                return -25
            if lh == LH_CONTENT_LENGTH:
                flags |= RF_CONTENT_LENGTH
            elif lh == LH_TRANSFER_ENCODING:
                flags = (flags | RF_TRANSFER_ENCODING) & ~RF_CHUNKED
                # the last token: after the last ",", without leading OWS and trailing spaces
                a = vend
                while a > vstart and p[a - 1] != 0x2C:
                    a -= 1
                b = vend
                while a < b and (p[a] == 0x20 or p[a] == 0x09):
                    a += 1
                while b > a and p[b - 1] == 0x20:
                    b -= 1
                if b - a == 7 and _ieq(p + a, b"chunked", 7):
                    flags |= RF_CHUNKED
            elif lh == LH_CONNECTION:
                cflags = _connection_flags(p, vstart, vend)
                if cflags & F_CLOSE:
                    flags |= RF_CLOSE
                if cflags & F_KEEP_ALIVE:
                    flags |= RF_KEEP_ALIVE
                if cflags & F_UPGRADE:
                    flags |= RF_CONN_UPGRADE
            elif lh == LH_UPGRADE:
                flags |= RF_UPGRADE
        if fs.n == fs.cap:
            _grow(fs)
        f = &fs.f[fs.n]
        f.line = pos
        f.nend = nend
        f.vstart = vstart
        f.vend = vend
        f.code = code
        f.kept = 0
        f.skip = 0
        fs.n += 1
        pos = vend + 2


cdef object _final_response(
    bytes buf, const uchar* p, RHead* h, Fields* fs, bint head_request, object offered
):
    """UpstreamConnection.on_headers_complete for the final head."""
    cdef Py_ssize_t i, length_i = -1, upgrade_i = -1, total = 0, k, nlen, vlen
    cdef int code, status = h.status
    cdef bint body_expected, chunked
    cdef Field* f
    cdef char* q
    cdef bytes block
    te = None
    conn_tokens = None
    for i in range(fs.n):
        f = &fs.f[i]
        code = f.code
        if code == R_FORWARD:
            f.kept = 1
        elif code == R_CONTENT_LENGTH:
            length_i = i
        elif code == R_TRANSFER_ENCODING:
            value = _value(p, f)
            te = value if te is None else te + b", " + value
        elif code == R_CONNECTION:
            value = _value(p, f)
            if value not in PLAIN_CONNECTION:  # the usual values nominate nothing
                conn_tokens = [t.strip().lower() for t in value.split(b",")]
        elif code == R_UPGRADE:
            upgrade_i = i
    if conn_tokens:
        nominated = {t for t in conn_tokens if t not in (b"close", b"keep-alive", b"upgrade")}
        if nominated:
            for i in range(fs.n):
                f = &fs.f[i]
                if f.kept and _slice(p, f.line, f.nend).lower() in nominated:
                    f.kept = 0
    upgrade = _value(p, &fs.f[upgrade_i]) if upgrade_i >= 0 else None
    if status == 101:
        refusal = _check_upgrade(offered, upgrade, conn_tokens)
        if refusal is not None:
            return refusal
    body_expected = not (head_request or status == 204 or status == 304 or status == 101)
    chunked = te is not None
    if te is not None and body_expected and te != b"chunked" and not _only_chunked(te):
        return _refused("protocol", f"upstream sent unsupported Transfer-Encoding {te!r}")
    # the client's header block, in one allocation
    for i in range(fs.n):
        f = &fs.f[i]
        if f.kept:
            total += f.nend - f.line + f.vend - f.vstart + 4
    if status == 101:
        total += 21 + 11 + PyBytes_GET_SIZE(upgrade)  # "Connection: upgrade\r\n" "Upgrade: " CRLF
    block = PyBytes_FromStringAndSize(NULL, total)
    q = PyBytes_AS_STRING(block)
    k = 0
    for i in range(fs.n):
        f = &fs.f[i]
        if not f.kept:
            continue
        if f.vstart == f.nend + 2 and p[f.nend + 1] == 0x20:
            memcpy(q + k, p + f.line, f.vend + 2 - f.line)
            k += f.vend + 2 - f.line
            continue
        nlen = f.nend - f.line
        vlen = f.vend - f.vstart
        memcpy(q + k, p + f.line, nlen)
        q[k + nlen] = c':'
        q[k + nlen + 1] = c' '
        memcpy(q + k + nlen + 2, p + f.vstart, vlen)
        k += nlen + vlen + 2
        q[k] = c'\r'
        q[k + 1] = c'\n'
        k += 2
    if status == 101:
        memcpy(q + k, b"Connection: upgrade\r\nUpgrade: ", 30)
        k += 30
        memcpy(q + k, PyBytes_AS_STRING(upgrade), PyBytes_GET_SIZE(upgrade))
        k += PyBytes_GET_SIZE(upgrade)
        q[k] = c'\r'
        q[k + 1] = c'\n'
    cdef ResponseHead head = ResponseHead.__new__(ResponseHead)
    head.status = status
    head.reason = _slice(p, h.reason_start, h.reason_end)
    head.version = h.version
    head.end = h.end
    head._buf = buf
    head._fields_start = h.fields_start
    head._block = block
    head.content_length = None if chunked or length_i < 0 else _value(p, &fs.f[length_i])
    head.body_expected = body_expected
    head.chunked = chunked
    head.close_delimited = body_expected and not chunked and length_i < 0
    head.keep_alive = _keep_alive(
        h.version,
        h.flags,
        status,
        status == 101 and (h.flags & RF_UPGRADE) != 0 and (h.flags & RF_CONN_UPGRADE) != 0,
    )
    head.upgrade = status == 101
    return head
