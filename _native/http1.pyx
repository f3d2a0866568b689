# cython: language_level=3
"""HTTP/1.1 request reader for the HTTP front: bytes in, one Python call per request out.

httptools calls back into Python for every piece of a request (message begin, URL, each header,
end of head, each body chunk, message end): six or more interpreted calls per request, most of
them to look at headers we then ignore. ``RequestReader.feed`` scans what arrived in C, looks at
only the headers the front needs (matched by length, then case-insensitively), and calls the
connection's ``on_request`` once per complete request with what it needs to answer it.

Grammar (RFC 9112), strict where leniency lets requests be smuggled or misread:
- request line ``METHOD SP target SP HTTP/1.x CRLF``; empty lines before it are skipped;
- header lines ``name ":" OWS value OWS CRLF`` with token names and no control bytes in values;
  obsolete line folding, a bare LF or CR, whitespace before the colon: 400;
- the body: ``Content-Length`` (digits only, once) or ``Transfer-Encoding: chunked`` (extensions
  ignored, trailers read and dropped); both at once: 400; a coding other than a final chunked:
  501, or 400 when chunked is not last (the body's end cannot be known);
- ``Upgrade`` with ``Connection: upgrade``, and ``CONNECT``: 400 (not served);
- keep-alive: HTTP/1.1 unless ``Connection: close``; HTTP/1.0 only with ``Connection: keep-alive``.
  Nothing after a request that does not keep the connection alive is read.

Limits: an unfinished head never holds more than ``max_head`` bytes (431 as soon as it does), a
``Content-Length`` past ``max_body`` is 413 before any of the body is read (so before a 100
Continue), a chunked body is 413 once its chunks would pass ``max_body``.

Errors are answered by the connection: ``proto._fatal(status, message)`` and the reader stops for
good (``stopped``). The connection stops it too (``stop()``) when it closes. The reader keeps
``phase`` (0 idle, 1 head, 2 body) and ``since`` (the tick the phase began) for the front's
once-a-second sweep, which times heads and bodies without a timer per request.

``Connection`` is the compiled half of the front's connection (asyncpg's shape: Python policy over
a compiled protocol): the state every request touches, and the whole way of the common infer
request from the bytes to its ticket. The reader hands such a request to it directly, without
an interpreted frame; ``front.http.server.HttpProtocol`` subclasses it with the rest.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from libc.string cimport memchr, memcmp

from gateway._native.door cimport DoorState
from gateway._native.lane cimport InflightCap, Lane

import logging

from gateway._native.inferjson import decode_fast

log = logging.getLogger("gateway.front.http.server")

cdef extern from "string.h":
    void* memmem(const void* haystack, size_t haystacklen, const void* needle, size_t needlelen) nogil

cdef enum:
    IDLE = 0
    HEAD = 1
    BODY = 2
    MAX_METHOD = 16
    MAX_CHUNK_LINE = 1024  # a chunk-size line with its extensions
    # body modes
    B_NONE = 0
    B_LENGTH = 1
    B_CHUNKED = 2

# token characters (RFC 9110 5.6.2)
cdef unsigned char TOKEN[256]
cdef int _i
for _i in range(256):
    TOKEN[_i] = 0
cdef const unsigned char* _tok = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
while _tok[0]:
    TOKEN[_tok[0]] = 1
    _tok += 1

cdef bytes _EMPTY = b""
cdef dict _METHODS = {m: m for m in (b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE")}
cdef bytes _POST = _METHODS[b"POST"]
cdef bytes _CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Stop(Exception):
    """Raised from a reader callback after ``_fatal``: stop parsing what the client sent next."""


cdef inline bint ieq(const char* s, const char* lower, Py_ssize_t n) noexcept nogil:
    """ASCII case-insensitive compare of ``n`` bytes against a lowercase literal. Correct for
    token bytes only (``| 0x20`` folds letters and leaves '-' and digits alone)."""
    cdef Py_ssize_t i
    for i in range(n):
        if (<unsigned char>s[i] | 0x20) != <unsigned char>lower[i]:
            return False
    return True


cdef inline bint value_ok(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """No control bytes in a header value but HTAB (obs-text, >= 0x80, is allowed)."""
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(n):
        c = s[i]
        if (c < 0x20 and c != 0x09) or c == 0x7f:
            return False
    return True


cdef inline long long parse_digits(const char* s, Py_ssize_t n) noexcept nogil:
    """A non-empty run of at most 18 decimal digits, or -1."""
    cdef long long v = 0
    cdef Py_ssize_t i
    if n == 0 or n > 18:
        return -1
    for i in range(n):
        if s[i] < 48 or s[i] > 57:
            return -1
        v = v * 10 + (s[i] - 48)
    return v


cdef struct Head:
    Py_ssize_t method_len
    Py_ssize_t url_start
    Py_ssize_t url_len
    int minor
    long long content_length
    int chunked
    bint conn_close
    bint conn_keep_alive
    bint conn_upgrade
    bint upgrade
    bint expect_continue
    long long header_len  # Inference-Header-Content-Length: -1 absent, -2 not an integer
    Py_ssize_t ce_start
    Py_ssize_t ce_len
    Py_ssize_t ae_start
    Py_ssize_t ae_len
    Py_ssize_t auth_start
    Py_ssize_t auth_len
    int status  # an error to answer, 0 if none
    const char* message


cdef void connection_tokens(Head* h, const char* v, Py_ssize_t n) noexcept nogil:
    """``Connection: a, b``: note close, keep-alive and upgrade among the tokens."""
    cdef Py_ssize_t i = 0, j, k
    while i < n:
        while i < n and (v[i] == b' ' or v[i] == b'\t' or v[i] == b','):
            i += 1
        j = i
        while j < n and v[j] != b',':
            j += 1
        k = j
        while k > i and (v[k - 1] == b' ' or v[k - 1] == b'\t'):
            k -= 1
        if k - i == 5 and ieq(v + i, "close", 5):
            h.conn_close = True
        elif k - i == 10 and ieq(v + i, "keep-alive", 10):
            h.conn_keep_alive = True
        elif k - i == 7 and ieq(v + i, "upgrade", 7):
            h.conn_upgrade = True
        i = j + 1


cdef int parse_head(const char* p, Py_ssize_t n, Head* h) noexcept nogil:
    """Parse a complete head (``n`` bytes, ending with the empty line). Sets ``h.status`` on error."""
    cdef Py_ssize_t pos = 0, eol, i, name_len, vs, ve
    cdef const char* line
    cdef const char* lf
    cdef long long cl
    h.content_length = -1
    h.chunked = 0
    h.conn_close = h.conn_keep_alive = h.conn_upgrade = h.upgrade = h.expect_continue = False
    h.header_len = -1
    h.ce_start = h.ae_start = h.auth_start = -1
    h.ce_len = h.ae_len = h.auth_len = 0
    h.status = 0
    # ---- request line
    lf = <const char*>memchr(p, b'\n', n)
    eol = lf - p
    if eol < 1 or p[eol - 1] != b'\r':
        h.status = 400; h.message = "malformed HTTP request: the request line does not end with CRLF"
        return 0
    eol -= 1
    i = 0
    while i < eol and i <= MAX_METHOD and TOKEN[<unsigned char>p[i]]:
        i += 1
    if i == 0 or i > MAX_METHOD or i >= eol or p[i] != b' ':
        h.status = 400; h.message = "malformed HTTP request: invalid method"
        return 0
    h.method_len = i
    i += 1
    h.url_start = i
    while i < eol and <unsigned char>p[i] > 0x20 and <unsigned char>p[i] != 0x7f:
        i += 1
    h.url_len = i - h.url_start
    if h.url_len == 0 or i >= eol or p[i] != b' ':
        h.status = 400; h.message = "malformed HTTP request: invalid request target"
        return 0
    i += 1
    if eol - i != 8 or memcmp(p + i, "HTTP/1.", 7) != 0 or (p[i + 7] != b'0' and p[i + 7] != b'1'):
        h.status = 400; h.message = "malformed HTTP request: unsupported HTTP version (HTTP/1.0 and 1.1 are served)"
        return 0
    h.minor = p[i + 7] - 48
    pos = eol + 2
    # ---- header lines, up to the empty line
    while True:
        lf = <const char*>memchr(p + pos, b'\n', n - pos)
        if lf == NULL:  # cannot happen: the head ends with CRLFCRLF
            h.status = 400; h.message = "malformed HTTP request: unterminated head"
            return 0
        eol = lf - p
        if eol == pos or p[eol - 1] != b'\r':
            h.status = 400; h.message = "malformed HTTP request: a header line does not end with CRLF"
            return 0
        eol -= 1
        if eol == pos:  # the empty line
            break
        line = p + pos
        if line[0] == b' ' or line[0] == b'\t':
            h.status = 400; h.message = "malformed HTTP request: obsolete header line folding"
            return 0
        i = 0
        while pos + i < eol and TOKEN[<unsigned char>line[i]]:
            i += 1
        if i == 0 or pos + i >= eol or line[i] != b':':
            h.status = 400; h.message = "malformed HTTP request: invalid header name"
            return 0
        name_len = i
        vs = pos + i + 1
        ve = eol
        while vs < ve and (p[vs] == b' ' or p[vs] == b'\t'):
            vs += 1
        while ve > vs and (p[ve - 1] == b' ' or p[ve - 1] == b'\t'):
            ve -= 1
        if not value_ok(<const unsigned char*>p + vs, ve - vs):
            h.status = 400; h.message = "malformed HTTP request: invalid character in a header value"
            return 0
        # the headers the front reads, by length first
        if name_len == 14 and ieq(line, "content-length", 14):
            cl = parse_digits(p + vs, ve - vs)
            if cl < 0 or h.content_length >= 0:
                h.status = 400; h.message = "malformed HTTP request: invalid or repeated Content-Length"
                return 0
            h.content_length = cl
        elif name_len == 17 and ieq(line, "transfer-encoding", 17):
            if h.chunked:
                h.status = 400; h.message = "malformed HTTP request: repeated Transfer-Encoding"
                return 0
            if ve - vs == 7 and ieq(p + vs, "chunked", 7):
                h.chunked = 1
            elif ve - vs > 7 and ieq(p + ve - 7, "chunked", 7) and (p[ve - 8] == b' ' or p[ve - 8] == b','):
                h.status = 501; h.message = "transfer codings other than chunked are not supported"
                return 0
            else:
                h.status = 400; h.message = "malformed HTTP request: Transfer-Encoding must end with chunked"
                return 0
        elif name_len == 10 and ieq(line, "connection", 10):
            connection_tokens(h, p + vs, ve - vs)
        elif name_len == 31 and ieq(line, "inference-header-content-length", 31):
            h.header_len = parse_digits(p + vs, ve - vs)
            if h.header_len < 0:
                h.header_len = -2  # answered as 400 once the request is complete
        elif name_len == 16 and ieq(line, "content-encoding", 16):
            h.ce_start = vs; h.ce_len = ve - vs
        elif name_len == 15 and ieq(line, "accept-encoding", 15):
            h.ae_start = vs; h.ae_len = ve - vs
        elif name_len == 13 and ieq(line, "authorization", 13):
            h.auth_start = vs; h.auth_len = ve - vs
        elif name_len == 6 and ieq(line, "expect", 6):
            if ve - vs == 12 and ieq(p + vs, "100-continue", 12):
                h.expect_continue = True
        elif name_len == 7 and ieq(line, "upgrade", 7):
            h.upgrade = True
        pos = eol + 2
    if h.chunked and h.content_length >= 0:
        h.status = 400; h.message = "malformed HTTP request: both Content-Length and Transfer-Encoding"
        return 0
    if h.method_len == 7 and memcmp(p, "CONNECT", 7) == 0:
        h.upgrade = h.conn_upgrade = True
    return 0


cdef class Connection


cdef class RequestReader:
    """One per connection. ``feed(data, tick)`` parses what arrived and calls
    ``proto.on_request(method, url, keep_alive, body, header_len, content_encoding,
    accept_encoding, authorization, sticky)`` per complete request, in order."""

    cdef object proto
    cdef Connection conn  # proto, when it is a Connection: the common infer request goes to it in C
    cdef object router
    cdef bytearray buf  # bytes received and not yet consumed
    cdef Py_ssize_t scanned  # how far into buf the head's end has been looked for
    cdef public int phase
    cdef public long since
    cdef public bint stopped
    cdef public bint check_head  # call proto.check_head(method, url) when a head is complete
    cdef public Py_ssize_t messages  # requests completed
    cdef public object tap
    """None, or called with (method, url) as each request is complete, before it is handled (a
    harness that checks every answer against its request: the fast path calls no Python method)."""
    cdef Py_ssize_t max_head
    cdef Py_ssize_t max_body
    # the request whose body is being read
    cdef object method, url, ce, ae, auth, sticky
    cdef bint keep_alive
    cdef long long header_len
    cdef int mode
    cdef long long remaining  # B_LENGTH: body bytes still to come
    cdef bytearray chunks  # B_CHUNKED: the body decoded so far
    cdef bint in_trailers
    cdef Py_ssize_t trailer_bytes

    def __cinit__(self, proto, router, Py_ssize_t max_head, Py_ssize_t max_body, long tick=0):
        self.proto = proto
        self.conn = proto if isinstance(proto, Connection) else None
        self.router = router
        self.buf = bytearray()
        self.max_head = max_head
        self.max_body = max_body
        self.since = tick

    @property
    def buffered(self):
        """Bytes received and held, not yet part of a complete unit (head, body, chunk)."""
        return PyByteArray_GET_SIZE(self.buf)

    def stop(self):
        """Read nothing more (the connection answered an error, or is closing)."""
        self.stopped = True
        self.buf = bytearray()
        self.chunks = None

    def current(self):
        """(method, url) of the request being read, as far as its head was understood
        (``(b"", b"")`` before that): for logging a request answered before it was complete."""
        return (self.method or _EMPTY, self.url or _EMPTY)

    def feed(self, bytes data not None, long tick):
        cdef Py_ssize_t used
        cdef bytearray buf
        if self.stopped:
            return
        if PyByteArray_GET_SIZE(self.buf) == 0:
            # the common case: whole requests in one read, parsed in place
            used = self._run(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), tick)
            if not self.stopped and used < PyBytes_GET_SIZE(data):
                self.buf += data[used:] if used else data
        else:
            buf = self.buf
            buf += data
            used = self._run(PyByteArray_AS_STRING(buf), PyByteArray_GET_SIZE(buf), tick)
            if not self.stopped and used:
                del buf[:used]  # ``scanned`` counts from the head's start, now at 0

    cdef void _fail(self, int status, str message) except *:
        self.stopped = True
        self.proto._fatal(status, message)

    cdef Py_ssize_t _run(self, const char* p, Py_ssize_t n, long tick) except -1:
        """Consume complete units (heads, bodies, chunks) of ``p[:n]``; returns the bytes used."""
        cdef Py_ssize_t pos = 0, avail, start, head_len
        cdef const char* end
        cdef Head h
        while pos < n and not self.stopped:
            if self.phase == IDLE:
                while pos + 1 < n and p[pos] == b'\r' and p[pos + 1] == b'\n':
                    pos += 2  # empty lines before a request line are skipped
                if pos >= n or (p[pos] == b'\r' and pos + 1 == n):
                    return pos
                self.phase = HEAD
                self.scanned = 0
                if self.messages:  # a connection's first request is timed from accept
                    self.since = tick
            if self.phase == HEAD:
                avail = n - pos
                start = self.scanned - 3 if self.scanned > 3 else 0
                end = <const char*>memmem(p + pos + start, avail - start, b"\r\n\r\n", 4)
                if end == NULL:
                    if avail > self.max_head:
                        self._fail(431, f"request head exceeds max_header_bytes ({self.max_head})")
                        return pos
                    self.scanned = avail
                    return pos
                head_len = (end - (p + pos)) + 4
                if head_len > self.max_head:
                    self._fail(431, f"request head exceeds max_header_bytes ({self.max_head})")
                    return pos
                parse_head(p + pos, head_len, &h)
                if h.status:
                    self._fail(h.status, h.message.decode("ascii"))
                    return pos
                if h.upgrade and h.conn_upgrade:
                    self._fail(400, "protocol upgrade is not supported")
                    return pos
                self._take_head(p + pos, head_len, &h)
                if h.content_length > self.max_body:
                    self._fail(413, f"request body exceeds max_body_bytes ({self.max_body})")
                    return pos
                pos += head_len
                self.phase = BODY
                self.since = tick
                if self.check_head:
                    self.proto.check_head(self.method, self.url)
                    if self.stopped:
                        return pos
                if h.expect_continue:
                    self.proto.expect_continue()
                    if self.stopped:
                        return pos
                if self.mode == B_NONE:
                    self._complete(_EMPTY)
                    continue
            # BODY
            if self.mode == B_LENGTH:
                if n - pos < self.remaining:
                    return pos  # wait for all of it: one copy, when it is complete
                pos += self.remaining
                self._complete(PyBytes_FromStringAndSize(p + pos - self.remaining, self.remaining))
            else:
                pos = self._chunked(p, n, pos)
                if pos < 0:
                    return 0
                if self.mode == B_CHUNKED:  # not finished
                    return pos
        return pos

    cdef void _take_head(self, const char* p, Py_ssize_t head_len, Head* h) except *:
        cdef object m = PyBytes_FromStringAndSize(p, h.method_len)
        self.method = _METHODS.get(m, m)
        self.url = PyBytes_FromStringAndSize(p + h.url_start, h.url_len)
        self.keep_alive = (not h.conn_close) if h.minor == 1 else (h.conn_keep_alive and not h.conn_close)
        self.header_len = h.header_len
        self.ce = PyBytes_FromStringAndSize(p + h.ce_start, h.ce_len) if h.ce_start >= 0 else None
        self.ae = PyBytes_FromStringAndSize(p + h.ae_start, h.ae_len) if h.ae_start >= 0 else None
        self.auth = PyBytes_FromStringAndSize(p + h.auth_start, h.auth_len) if h.auth_start >= 0 else None
        self.sticky = None
        headers = self.router.sticky_headers  # empty unless some model's policy reads a header
        if headers:
            self.sticky = sticky_values(p, head_len, headers)
        if h.chunked:
            self.mode = B_CHUNKED
            self.chunks = bytearray()
            self.in_trailers = False
            self.trailer_bytes = 0
        elif h.content_length > 0:
            self.mode = B_LENGTH
            self.remaining = h.content_length
        else:
            self.mode = B_NONE

    cdef Py_ssize_t _chunked(self, const char* p, Py_ssize_t n, Py_ssize_t pos) except -2:
        """Consume whole chunks (size line + data + CRLF) and trailer lines of ``p[pos:n]``;
        completes the request at the last chunk. Returns the new position, or -1 after an error."""
        cdef const char* lf
        cdef Py_ssize_t eol, i, k
        cdef long long size
        cdef int d
        cdef unsigned char c
        while pos < n:
            lf = <const char*>memchr(p + pos, b'\n', n - pos)
            if lf == NULL:
                if n - pos > MAX_CHUNK_LINE:
                    self._fail(400, "malformed HTTP request: chunk line too long")
                    return -1
                return pos
            eol = lf - p
            if eol == pos or p[eol - 1] != b'\r':
                self._fail(400, "malformed HTTP request: a chunk line does not end with CRLF")
                return -1
            if self.in_trailers:
                self.trailer_bytes += eol + 1 - pos
                if self.trailer_bytes > self.max_head:
                    self._fail(431, f"request trailers exceed max_header_bytes ({self.max_head})")
                    return -1
                if eol - 1 == pos:  # the empty line: the request is complete
                    pos = eol + 1
                    body = bytes(self.chunks)
                    self.chunks = None
                    self._complete(body)
                    return pos
                pos = eol + 1
                continue
            size = 0
            i = pos
            while i < eol - 1:
                c = <unsigned char>p[i]
                if 48 <= c <= 57:
                    d = c - 48
                elif 97 <= (c | 0x20) <= 102:
                    d = (c | 0x20) - 87
                else:
                    break
                size = size * 16 + d
                if size > self.max_body:
                    self._fail(413, f"request body exceeds max_body_bytes ({self.max_body})")
                    return -1
                i += 1
            if i == pos or (i < eol - 1 and p[i] != b';' and p[i] != b' ' and p[i] != b'\t'):
                self._fail(400, "malformed HTTP request: invalid chunk size")
                return -1
            if PyByteArray_GET_SIZE(self.chunks) + size > self.max_body:
                self._fail(413, f"request body exceeds max_body_bytes ({self.max_body})")
                return -1
            if size == 0:
                self.in_trailers = True
                pos = eol + 1
                continue
            k = eol + 1
            if n - k < size + 2:
                return pos  # the whole chunk, then
            if p[k + size] != b'\r' or p[k + size + 1] != b'\n':
                self._fail(400, "malformed HTTP request: chunk data does not end with CRLF")
                return -1
            self.chunks += PyBytes_FromStringAndSize(p + k, size)
            pos = k + size + 2
        return pos

    cdef void _complete(self, object body) except *:
        self.phase = IDLE
        self.mode = B_NONE
        self.messages += 1
        keep_alive = self.keep_alive
        if not keep_alive:
            self.stopped = True  # nothing after a request that closes the connection is read
        method, url, sticky = self.method, self.url, self.sticky
        self.method = self.url = self.sticky = None
        if self.tap is not None:
            self.tap(method, url)
        if (self.conn is not None and method is _POST and self.ce is None and self.ae is None
                and self.header_len != -2 and self.conn._lane_infer(url, keep_alive, body, self.header_len, sticky)):
            return
        self.proto.on_request(method, url, keep_alive, body, self.header_len, self.ce, self.ae,
                              self.auth, sticky)


cdef object sticky_values(const char* p, Py_ssize_t n, dict headers):
    """{sticky key: raw value} of the headers of a valid head ``p[:n]`` that ``headers``
    (lowercase name -> key) names."""
    cdef dict out = None
    cdef const char* lf
    cdef Py_ssize_t pos, eol, i, vs, ve
    lf = <const char*>memchr(p, b'\n', n)
    pos = (lf - p) + 1
    while True:
        lf = <const char*>memchr(p + pos, b'\n', n - pos)
        eol = (lf - p) - 1
        if eol == pos:
            return out
        i = pos
        while p[i] != b':':
            i += 1
        key = headers.get(PyBytes_FromStringAndSize(p + pos, i - pos).lower())
        if key is not None:
            vs = i + 1
            ve = eol
            while vs < ve and (p[vs] == b' ' or p[vs] == b'\t'):
                vs += 1
            while ve > vs and (p[ve - 1] == b' ' or p[ve - 1] == b'\t'):
                ve -= 1
            if out is None:
                out = {}
            out[key] = PyBytes_FromStringAndSize(p + vs, ve - vs)
        pos = eol + 2


cdef class Connection:
    """The per-request state of an HTTP connection and the common infer request's way, in C.

    ``front.http.server.HttpProtocol`` is this class with everything per connection or uncommon
    (accepting, closing, errors, every other route); it sets these fields and makes the reader.
    What is here runs for every request: reading (``data_received``), holding tickets, writing
    answers in request order (``_write_in_order``: pipelined answers that are ready go out in one
    write), pausing reading while ``max_pipelined_requests`` are owed. The common infer request, a
    POST to an infer URL seen before, with no content coding, for a version with a native lane
    (``gateway._native.lane``), goes from the reader to its ticket in ``_lane_infer`` without an
    interpreted frame; whatever that path does not finish it hands to the subclass's Python
    methods at the point where it stops (``_shed``, ``_infer_rest``, ``_infer_failed``), so that
    every request is answered as ``on_request`` would answer it."""

    cdef public object transport, front, _dataplane, _router
    cdef public DoorState _door
    cdef public InflightCap _inflight
    cdef public RequestReader parser
    cdef public dict _parked, _tickets, _routes
    cdef public Py_ssize_t _seq, _next_write, _max_pipelined
    cdef public bint _closing, _paused, _continue_due
    cdef public long last_active

    def data_received(self, data):
        if self._closing:
            return  # answered and closing: nothing more the client sends is read
        tick = self.front.tick
        self.last_active = tick
        try:
            self.parser.feed(data, tick)
        except Stop:
            pass
        except Exception:
            if not self._closing:  # one of our callbacks failed (not Stop): a bug, still answered
                log.exception("reading an HTTP request failed")
                self._fatal(500, "internal error while reading the request")

    cdef bint _lane_infer(self, url, bint keep_alive, body, long long header_len, sticky) except -1:
        """The reader's complete POST request: True when it was taken here (answered or held),
        False when ``on_request`` must take it (nothing was changed)."""
        cdef PyObject* found
        cdef Py_ssize_t seq
        cdef Lane lane
        if self._closing:
            return True  # on_request would drop it too
        found = PyDict_GetItem(self._routes, url)
        if found == NULL or not self.lane_ok:
            return False
        route = <object>found
        found = PyDict_GetItem(<dict?>self._router.table, (<tuple?>route)[0])
        if found == NULL:
            return False
        found = PyDict_GetItem(<dict?>(<object>found).lanes, route[1])
        if found == NULL:
            return False
        lane = <Lane?><object>found
        seq = self._seq
        self._seq = seq + 1
        self._continue_due = False
        fast = None
        try:
            if self._door.refuse():
                self._shed(seq, route, keep_alive)
                return True
            raw = lane.raw_key(body, header_len)
            t = lane.join_raw(raw, self, seq, keep_alive, self._inflight)
            if t is None:
                fast = decode_fast(body, header_len, route[0], route[1])
                if fast is not None:
                    t = lane.submit(fast[0], fast[1], self, seq, keep_alive, self._inflight, raw)
                if t is None:  # the general decoder's body, or the general stages' request
                    self._infer_rest(seq, url, route, lane, raw, body, header_len, keep_alive, None, sticky, fast)
                    return True
            self._hold(seq, t)
        except Exception as exc:
            self._infer_failed(seq, url, None if fast is not None else route, exc, keep_alive)
        return True

    cpdef _hold(self, Py_ssize_t seq, ticket):
        """Request ``seq`` is in flight: keep its ticket (a close cancels it), and stop reading
        while ``max_pipelined_requests`` are."""
        cdef dict tickets = self._tickets
        tickets[seq] = ticket
        if len(tickets) >= self._max_pipelined:
            self._pause_reading()

    cpdef _pause_reading(self):
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    cpdef _resume_reading(self):
        if self._paused and self.transport is not None and not self._closing:
            self._paused = False
            if self.parser.phase != IDLE:
                self.parser.since = self.front.tick  # the time we did not read was ours, not the client's
            self.transport.resume_reading()

    cpdef _write_in_order(self, Py_ssize_t seq, data, bint close):
        """Write the answer to request ``seq`` now if it is next, with the answers parked behind
        it that are now due (one write); else park it until its turn."""
        cdef dict parked
        cdef list out
        t = self.transport
        if t is None or t.is_closing():
            return
        if seq != self._next_write:
            self._parked[seq] = (data, close)
            return
        self.last_active = self.front.tick
        self._next_write = seq + 1
        parked = self._parked
        if close or not parked:
            t.write(data)
        else:
            out = [data]
            while parked:
                nxt = parked.pop(self._next_write, None)
                if nxt is None:
                    break
                out.append(nxt[0])
                self._next_write += 1
                if nxt[1]:
                    close = True
                    break
            t.write(data if len(out) == 1 else b"".join(out))
        if close:
            t.close()
            return
        if self._continue_due and self._next_write == self._seq:  # the waiting request is next now
            self._continue_due = False
            t.write(_CONTINUE)
        if self._paused and len(self._tickets) < self._max_pipelined // 2:
            self._resume_reading()
