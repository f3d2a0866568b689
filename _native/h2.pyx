# cython: language_level=3
"""HTTP/2 for the native gRPC front, on libnghttp2: frames in, one Python call per gRPC call out.

grpc.aio costs ~110 µs of server CPU per unary call here, most of it in its Python layers; the
HTTP/2 work itself (framing, HPACK, flow control, SETTINGS, PING) costs a few µs in C. So the
protocol is nghttp2's (Debian ``libnghttp2-dev``; the library under curl and Apache's mod_http2),
driven through its in-memory API (``mem_recv`` / ``mem_send``) on the asyncio transport the
connection already has, and what is gRPC is here:

- a request's headers are read in C (``:path``, ``content-type``, ``grpc-timeout``,
  ``grpc-encoding``, the rest kept as metadata);
- its DATA is collected until the length-prefixed message is whole; a message declared larger
  than ``max_message`` is refused as soon as its 5-byte prefix arrives (RESOURCE_EXHAUSTED), so
  its bytes are never buffered;
- a unary call is handed to ``on_call(stream)`` once its client half-closes; a streaming call's
  messages each to ``on_message(stream, message)`` as they complete, then ``on_half_close``;
- answers are length-prefixed messages followed by ``grpc-status`` / ``grpc-message`` trailers
  (``send``, ``finish``); an error before any message is a trailers-only response;
- a stream the client resets (RST_STREAM: cancel, deadline) calls ``on_cancel(stream)``.

What is written is collected per connection and written once per loop pass (``call_soon``): the
answers of a batch that serves 64 streams of one connection go out in one ``write``.

``GrpcConnection`` is subclassed by ``front.grpc.native.NativeGrpcProtocol``, which holds the
policy: which RPCs exist, decode, the data plane, errors. Callbacks from nghttp2 never raise
into C: an exception is kept, the session is torn down, and ``data_received`` logs it.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from libc.stdint cimport int32_t, uint8_t, uint32_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, memcmp

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec* tp)
    enum:
        CLOCK_REALTIME
        CLOCK_MONOTONIC


cdef inline double clock_s(int which) noexcept nogil:
    cdef timespec ts
    clock_gettime(which, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9

import asyncio
import logging

log = logging.getLogger("gateway.front.grpc.native")


cdef extern from "nghttp2/nghttp2.h":
    ctypedef struct nghttp2_session:
        pass
    ctypedef struct nghttp2_session_callbacks:
        pass
    ctypedef struct nghttp2_option:
        pass
    ctypedef struct nghttp2_frame_hd:
        size_t length
        int32_t stream_id
        uint8_t type
        uint8_t flags
    ctypedef struct nghttp2_headers:
        nghttp2_frame_hd hd
        int cat
    ctypedef union nghttp2_frame:
        nghttp2_frame_hd hd
        nghttp2_headers headers
    ctypedef struct nghttp2_nv:
        uint8_t* name
        uint8_t* value
        size_t namelen
        size_t valuelen
        uint8_t flags
    ctypedef union nghttp2_data_source:
        int fd
        void* ptr
    ctypedef ssize_t (*nghttp2_data_source_read_callback)(
        nghttp2_session* session, int32_t stream_id, uint8_t* buf, size_t length, uint32_t* data_flags,
        nghttp2_data_source* source, void* user_data)
    ctypedef struct nghttp2_data_provider:
        nghttp2_data_source source
        nghttp2_data_source_read_callback read_callback
    ctypedef struct nghttp2_settings_entry:
        int32_t settings_id
        uint32_t value

    ctypedef int (*nghttp2_on_begin_headers_callback)(nghttp2_session*, const nghttp2_frame*, void*)
    ctypedef int (*nghttp2_on_header_callback)(nghttp2_session*, const nghttp2_frame*, const uint8_t*, size_t,
                                               const uint8_t*, size_t, uint8_t, void*)
    ctypedef int (*nghttp2_on_data_chunk_recv_callback)(nghttp2_session*, uint8_t, int32_t, const uint8_t*,
                                                        size_t, void*)
    ctypedef int (*nghttp2_on_frame_recv_callback)(nghttp2_session*, const nghttp2_frame*, void*)
    ctypedef int (*nghttp2_on_stream_close_callback)(nghttp2_session*, int32_t, uint32_t, void*)
    ctypedef int (*nghttp2_on_frame_send_callback)(nghttp2_session*, const nghttp2_frame*, void*)

    enum:
        NGHTTP2_FLAG_NONE
        NGHTTP2_FLAG_END_STREAM
        NGHTTP2_FLAG_ACK
        NGHTTP2_DATA
        NGHTTP2_HEADERS
        NGHTTP2_PING
        NGHTTP2_HCAT_REQUEST
        NGHTTP2_HCAT_RESPONSE
        NGHTTP2_NV_FLAG_NONE
        NGHTTP2_NV_FLAG_NO_COPY_NAME
        NGHTTP2_NV_FLAG_NO_COPY_VALUE
        NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
        NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
        NGHTTP2_DATA_FLAG_EOF
        NGHTTP2_DATA_FLAG_NO_END_STREAM
        NGHTTP2_ERR_CALLBACK_FAILURE
        NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
        NGHTTP2_ERR_DEFERRED
        NGHTTP2_NO_ERROR
        NGHTTP2_PROTOCOL_ERROR
        NGHTTP2_INTERNAL_ERROR
        NGHTTP2_CANCEL
        NGHTTP2_ENHANCE_YOUR_CALM

    int nghttp2_session_callbacks_new(nghttp2_session_callbacks** out)
    void nghttp2_session_callbacks_del(nghttp2_session_callbacks* cbs)
    void nghttp2_session_callbacks_set_on_begin_headers_callback(nghttp2_session_callbacks*, nghttp2_on_begin_headers_callback)
    void nghttp2_session_callbacks_set_on_header_callback(nghttp2_session_callbacks*, nghttp2_on_header_callback)
    void nghttp2_session_callbacks_set_on_data_chunk_recv_callback(nghttp2_session_callbacks*, nghttp2_on_data_chunk_recv_callback)
    void nghttp2_session_callbacks_set_on_frame_recv_callback(nghttp2_session_callbacks*, nghttp2_on_frame_recv_callback)
    void nghttp2_session_callbacks_set_on_stream_close_callback(nghttp2_session_callbacks*, nghttp2_on_stream_close_callback)
    void nghttp2_session_callbacks_set_on_frame_send_callback(nghttp2_session_callbacks*, nghttp2_on_frame_send_callback)
    int nghttp2_option_new(nghttp2_option** out)
    void nghttp2_option_del(nghttp2_option* opt)
    void nghttp2_option_set_max_outbound_ack(nghttp2_option* opt, size_t n)
    int nghttp2_session_server_new2(nghttp2_session** out, const nghttp2_session_callbacks* cbs, void* user_data,
                                    const nghttp2_option* opt)
    int nghttp2_session_client_new2(nghttp2_session** out, const nghttp2_session_callbacks* cbs, void* user_data,
                                    const nghttp2_option* opt)
    ctypedef struct nghttp2_priority_spec:
        pass
    int32_t nghttp2_submit_request(nghttp2_session* session, const nghttp2_priority_spec* pri_spec,
                                   const nghttp2_nv* nva, size_t nvlen, const nghttp2_data_provider* data_prd,
                                   void* stream_user_data)
    void nghttp2_session_del(nghttp2_session* session)
    ssize_t nghttp2_session_mem_recv(nghttp2_session* session, const uint8_t* data, size_t length)
    ssize_t nghttp2_session_mem_send(nghttp2_session* session, const uint8_t** data)
    int nghttp2_session_want_read(nghttp2_session* session)
    int nghttp2_session_want_write(nghttp2_session* session)
    int nghttp2_session_set_local_window_size(nghttp2_session* session, uint8_t flags, int32_t stream_id,
                                              int32_t window_size)
    int nghttp2_session_resume_data(nghttp2_session* session, int32_t stream_id)
    int32_t nghttp2_session_get_last_proc_stream_id(nghttp2_session* session)
    int nghttp2_submit_settings(nghttp2_session* session, uint8_t flags, const nghttp2_settings_entry* iv, size_t niv)
    int nghttp2_submit_response(nghttp2_session* session, int32_t stream_id, const nghttp2_nv* nva, size_t nvlen,
                                const nghttp2_data_provider* data_prd)
    int nghttp2_submit_trailer(nghttp2_session* session, int32_t stream_id, const nghttp2_nv* nva, size_t nvlen)
    int nghttp2_submit_rst_stream(nghttp2_session* session, uint8_t flags, int32_t stream_id, uint32_t error_code)
    int nghttp2_submit_goaway(nghttp2_session* session, uint8_t flags, int32_t last_stream_id, uint32_t error_code,
                              const uint8_t* opaque_data, size_t opaque_data_len)
    int nghttp2_submit_shutdown_notice(nghttp2_session* session)
    int nghttp2_submit_ping(nghttp2_session* session, uint8_t flags, const uint8_t* opaque_data)
    const char* nghttp2_strerror(int lib_error_code)


cdef enum:
    PREFIX = 5  # gRPC message prefix: compressed flag, 4-byte big-endian length
    KIND_UNKNOWN = 0
    KIND_UNARY = 1
    KIND_STREAM = 2
    # gRPC status codes used here
    ST_OK = 0
    ST_INTERNAL = 13
    ST_UNIMPLEMENTED = 12
    ST_RESOURCE_EXHAUSTED = 8
    ST_INVALID_ARGUMENT = 3

cdef bytes _S_200 = b"200"
cdef bytes _S_415 = b"415"
cdef bytes _CT = b"application/grpc"
cdef int _TIMEOUT_UNITS[256]
cdef int _u
for _u in range(256):
    _TIMEOUT_UNITS[_u] = 0
_TIMEOUT_UNITS[ord("H")] = 1
_TIMEOUT_UNITS[ord("M")] = 2
_TIMEOUT_UNITS[ord("S")] = 3
_TIMEOUT_UNITS[ord("m")] = 4
_TIMEOUT_UNITS[ord("u")] = 5
_TIMEOUT_UNITS[ord("n")] = 6


cdef long long parse_timeout_us(const uint8_t* v, size_t n) noexcept:
    """``grpc-timeout`` (1-8 digits and a unit) in µs, at least 1; -1 when malformed."""
    cdef long long x = 0
    cdef size_t i
    cdef int unit
    if n < 2 or n > 9:
        return -1
    for i in range(n - 1):
        if v[i] < 48 or v[i] > 57:
            return -1
        x = x * 10 + (v[i] - 48)
    unit = _TIMEOUT_UNITS[v[n - 1]]
    if unit == 1:
        x *= 3600 * 1000000
    elif unit == 2:
        x *= 60 * 1000000
    elif unit == 3:
        x *= 1000000
    elif unit == 4:
        x *= 1000
    elif unit == 5:
        pass
    elif unit == 6:
        x = x // 1000
    else:
        return -1
    return x if x > 0 else 1


cdef bytes percent_encode(bytes message):
    """``grpc-message``: bytes outside printable ASCII, and '%', as %XX (the gRPC HTTP/2 spec)."""
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(message)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(message), i, k = 0
    cdef unsigned char c
    cdef bytearray out
    cdef char* o
    for i in range(n):
        if s[i] < 0x20 or s[i] > 0x7e or s[i] == 0x25:
            k += 1
    if k == 0:
        return message
    out = bytearray(n + 2 * k)
    o = PyByteArray_AS_STRING(out)
    k = 0
    for i in range(n):
        c = s[i]
        if c < 0x20 or c > 0x7e or c == 0x25:
            o[k] = b'%'
            o[k + 1] = b"0123456789ABCDEF"[c >> 4]
            o[k + 2] = b"0123456789ABCDEF"[c & 15]
            k += 3
        else:
            o[k] = c
            k += 1
    return bytes(out)


cdef inline void set_nv(nghttp2_nv* nv, bytes name, bytes value) noexcept:
    nv.name = <uint8_t*>PyBytes_AS_STRING(name)
    nv.namelen = PyBytes_GET_SIZE(name)
    nv.value = <uint8_t*>PyBytes_AS_STRING(value)
    nv.valuelen = PyBytes_GET_SIZE(value)
    nv.flags = NGHTTP2_NV_FLAG_NONE  # nghttp2 copies the block when it is submitted


cdef Py_ssize_t status_block(Stream s, bytes status, nghttp2_nv* nva) except -1:
    """``grpc-status``, ``grpc-message`` and the extra trailers of ``s`` into ``nva``; their count."""
    cdef Py_ssize_t n = 1
    set_nv(&nva[0], b"grpc-status", status)
    if s.grpc_message is not None:
        set_nv(&nva[1], b"grpc-message", s.grpc_message)
        n = 2
    if s.trailers:
        for k, v in s.trailers:
            set_nv(&nva[n], k, v)
            n += 1
    return n


cdef class Stream:
    """One gRPC call: what its request said, and what is owed on it."""

    cdef readonly int32_t id
    cdef readonly bytes path
    cdef readonly int kind
    cdef readonly long long timeout_us
    """From ``grpc-timeout`` (0: none)."""
    cdef readonly object encoding
    """``grpc-encoding`` when it is not identity (the message's compression), else None."""
    cdef readonly list metadata
    """(name, value) of the headers that are not HTTP/2's or gRPC's own, as str."""
    cdef public object ticket
    """What ``on_cancel`` cancels (the front's business), or None."""
    cdef public object state
    """The front's per-call state (a streaming call's), or None."""
    cdef public object target
    """(model, version, request id) for the access log, when the front noted them."""
    cdef readonly double started, started_mono
    """When its headers were complete (epoch seconds; the monotonic clock): set while ``log_calls``."""
    cdef readonly bint closed
    """The stream is gone (answered and sent, or reset): nothing more may be sent on it."""
    cdef readonly bint finished
    """``finish`` was called: the call's status is decided."""
    cdef bint half_closed, bad, ctype_ok, headers_sent, deferred, compressed, rst_after
    cdef bytearray buf
    cdef long long need  # the length of the message being received (-1: its prefix is not whole)
    cdef long long held  # bytes of it the connection holds (counted in ``buffered``)
    cdef Py_ssize_t header_bytes
    cdef object pending  # a unary call's request message, until its client half-closes
    cdef list outq  # messages to send
    cdef Py_ssize_t out_pos  # bytes of outq[0], prefix included, already sent
    cdef int status
    cdef bytes grpc_message
    cdef list trailers  # extra (name, value) bytes pairs for the trailers


cdef int _on_begin_headers(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) noexcept:
    cdef GrpcConnection conn = <GrpcConnection>user_data
    cdef Stream s
    if frame.hd.type != NGHTTP2_HEADERS or frame.headers.cat != NGHTTP2_HCAT_REQUEST:
        return 0
    try:
        s = Stream.__new__(Stream)
        s.id = frame.hd.stream_id
        s.need = -1
        s.path = b""
        conn.streams[s.id] = s
    except BaseException as exc:
        conn.error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_header(nghttp2_session* session, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
                    const uint8_t* value, size_t valuelen, uint8_t flags, void* user_data) noexcept:
    cdef GrpcConnection conn = <GrpcConnection>user_data
    cdef PyObject* found
    cdef Stream s
    cdef long long t
    if frame.hd.type != NGHTTP2_HEADERS:
        return 0
    try:
        found = PyDict_GetItem(conn.streams, frame.hd.stream_id)
        if found == NULL:
            return 0
        s = <Stream>found
        s.header_bytes += namelen + valuelen + 32
        if s.header_bytes > conn.max_header_bytes:
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE  # resets this stream
        if frame.headers.cat != NGHTTP2_HCAT_REQUEST:
            return 0  # the client's trailers: gRPC requests carry none we read
        if namelen == 5 and memcmp(name, b":path", 5) == 0:
            s.path = PyBytes_FromStringAndSize(<const char*>value, valuelen)
        elif name[0] == b':':
            return 0
        elif namelen == 12 and memcmp(name, b"content-type", 12) == 0:
            s.ctype_ok = valuelen >= 16 and memcmp(value, b"application/grpc", 16) == 0 and (
                valuelen == 16 or value[16] == b'+' or value[16] == b';')
        elif namelen == 12 and memcmp(name, b"grpc-timeout", 12) == 0:
            t = parse_timeout_us(value, valuelen)
            s.timeout_us = t if t > 0 else 0
        elif namelen == 13 and memcmp(name, b"grpc-encoding", 13) == 0:
            if not (valuelen == 8 and memcmp(value, b"identity", 8) == 0):
                s.encoding = PyBytes_FromStringAndSize(<const char*>value, valuelen).decode("latin-1")
        elif (namelen == 2 and memcmp(name, b"te", 2) == 0) or (namelen == 20 and memcmp(
                name, b"grpc-accept-encoding", 20) == 0) or (namelen == 10 and memcmp(name, b"user-agent", 10) == 0):
            return 0
        else:
            if s.metadata is None:
                s.metadata = []
            s.metadata.append((PyBytes_FromStringAndSize(<const char*>name, namelen).decode("latin-1"),
                               PyBytes_FromStringAndSize(<const char*>value, valuelen).decode("latin-1")))
    except BaseException as exc:
        conn.error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_data_chunk(nghttp2_session* session, uint8_t flags, int32_t stream_id, const uint8_t* data,
                        size_t length, void* user_data) noexcept:
    cdef GrpcConnection conn = <GrpcConnection>user_data
    cdef PyObject* found
    try:
        found = PyDict_GetItem(conn.streams, stream_id)
        if found != NULL:
            conn._data(<Stream>found, data, length)
    except BaseException as exc:
        conn.error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_frame_recv(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) noexcept:
    cdef GrpcConnection conn = <GrpcConnection>user_data
    cdef PyObject* found
    cdef Stream s
    if frame.hd.type == NGHTTP2_PING:
        if frame.hd.flags & NGHTTP2_FLAG_ACK:
            conn.ping_out = False
        return 0
    if frame.hd.type != NGHTTP2_HEADERS and frame.hd.type != NGHTTP2_DATA:
        return 0
    try:
        found = PyDict_GetItem(conn.streams, frame.hd.stream_id)
        if found == NULL:
            return 0
        s = <Stream>found
        if frame.hd.type == NGHTTP2_HEADERS and frame.headers.cat == NGHTTP2_HCAT_REQUEST:
            conn._headers_done(s)
        if frame.hd.flags & NGHTTP2_FLAG_END_STREAM:
            conn._half_closed(s)
    except BaseException as exc:
        conn.error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_stream_close(nghttp2_session* session, int32_t stream_id, uint32_t error_code,
                          void* user_data) noexcept:
    cdef GrpcConnection conn = <GrpcConnection>user_data
    cdef PyObject* found
    cdef Stream s
    try:
        found = PyDict_GetItem(conn.streams, stream_id)
        if found == NULL:
            return 0
        s = <Stream>found
        del conn.streams[stream_id]
        conn._closed(s)
    except BaseException as exc:
        conn.error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_frame_send(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) noexcept:
    """The answer of a stream refused while its request was arriving is out: now reset the stream,
    so that its client stops sending (a reset submitted with the answer would overtake it)."""
    cdef GrpcConnection conn = <GrpcConnection>user_data
    cdef PyObject* found
    if not frame.hd.flags & NGHTTP2_FLAG_END_STREAM or (frame.hd.type != NGHTTP2_HEADERS
                                                        and frame.hd.type != NGHTTP2_DATA):
        return 0
    found = PyDict_GetItem(conn.streams, frame.hd.stream_id)
    if found != NULL and (<Stream>found).rst_after:
        (<Stream>found).rst_after = False
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame.hd.stream_id, NGHTTP2_NO_ERROR)
    return 0


cdef ssize_t _read_out(nghttp2_session* session, int32_t stream_id, uint8_t* buf, size_t length,
                       uint32_t* data_flags, nghttp2_data_source* source, void* user_data) noexcept:
    cdef GrpcConnection conn = <GrpcConnection>user_data
    cdef PyObject* found
    try:
        found = PyDict_GetItem(conn.streams, stream_id)
        if found == NULL:
            return NGHTTP2_ERR_CALLBACK_FAILURE  # cannot happen: nghttp2 asks only for open streams
        return conn._fill(<Stream>found, buf, length, data_flags)
    except BaseException as exc:
        conn.error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE


cdef class GrpcConnection:
    """One HTTP/2 connection's session; the front's protocol subclasses it (see the module)."""

    cdef nghttp2_session* session
    cdef public object transport
    cdef public dict streams
    """stream id -> Stream, from its first header until it closes."""
    cdef public dict kinds
    """``:path`` -> 1 (unary) or 2 (streaming): the RPCs served; others are UNIMPLEMENTED."""
    cdef public long long max_message
    cdef public long long buffered, max_buffered
    """Bytes of unfinished request messages held, all streams together, and their bound (past it
    the stream that would pass it is refused RESOURCE_EXHAUSTED)."""
    cdef public Py_ssize_t max_header_bytes
    cdef public object error
    """An exception a callback raised (the session is then torn down)."""
    cdef public long long calls, cancelled
    cdef public bint log_calls
    """Call ``finished(stream, status)`` as each stream's status is decided (the access log)."""
    cdef char* obuf
    cdef size_t olen, ocap
    cdef bint in_recv, flush_due, dead, ping_out
    cdef object loop

    def __cinit__(self, *args, **kwargs):
        self.streams = {}
        self.kinds = {}
        self.max_message = 4 << 20
        self.max_buffered = 1 << 62
        self.max_header_bytes = 16384

    def __dealloc__(self):
        if self.session != NULL:
            nghttp2_session_del(self.session)
            self.session = NULL
        if self.obuf != NULL:
            free(self.obuf)
            self.obuf = NULL

    def h2_start(self, transport, unsigned int max_streams, unsigned int window):
        """Start serving on ``transport``: our SETTINGS (concurrent streams, the per-stream window,
        the header list bound) and a connection window of ``window``."""
        cdef nghttp2_session_callbacks* cbs
        cdef nghttp2_option* opt
        cdef nghttp2_settings_entry iv[3]
        cdef int rv
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        if nghttp2_session_callbacks_new(&cbs) != 0:
            raise MemoryError()
        nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, _on_begin_headers)
        nghttp2_session_callbacks_set_on_header_callback(cbs, _on_header)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, _on_data_chunk)
        nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, _on_frame_recv)
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs, _on_stream_close)
        nghttp2_session_callbacks_set_on_frame_send_callback(cbs, _on_frame_send)
        nghttp2_option_new(&opt)
        rv = nghttp2_session_server_new2(&self.session, cbs, <void*>self, opt)
        nghttp2_option_del(opt)
        nghttp2_session_callbacks_del(cbs)
        if rv != 0:
            raise MemoryError(nghttp2_strerror(rv).decode())
        iv[0].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
        iv[0].value = max_streams
        iv[1].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        iv[1].value = window
        iv[2].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
        iv[2].value = self.max_header_bytes
        nghttp2_submit_settings(self.session, NGHTTP2_FLAG_NONE, iv, 3)
        nghttp2_session_set_local_window_size(self.session, NGHTTP2_FLAG_NONE, 0, window)
        self._flush()

    def data_received(self, data):
        cdef const uint8_t* p
        cdef Py_ssize_t n
        cdef ssize_t rv
        if self.session == NULL or self.dead:
            return
        p = <const uint8_t*>PyBytes_AS_STRING(data)
        n = PyBytes_GET_SIZE(data)
        self.in_recv = True
        try:
            rv = nghttp2_session_mem_recv(self.session, p, n)
        finally:
            self.in_recv = False
        if self.error is not None:
            exc, self.error = self.error, None
            log.error("the native gRPC front failed on a frame: closing the connection", exc_info=exc)
            self._die(NGHTTP2_INTERNAL_ERROR)
            return
        if rv < 0:  # a protocol error: nghttp2 has queued its GOAWAY when one is due
            log.debug("HTTP/2 protocol error from a client: %s", nghttp2_strerror(<int>rv).decode())
            self._flush()
            self._die(NGHTTP2_PROTOCOL_ERROR)
            return
        self._flush()

    # ---- receiving -------------------------------------------------------------------------
    cdef void _headers_done(self, Stream s) except *:
        cdef PyObject* kind = PyDict_GetItem(self.kinds, s.path)
        s.kind = <int><object>kind if kind != NULL else KIND_UNKNOWN
        if self.log_calls:
            s.started = clock_s(CLOCK_REALTIME)
            s.started_mono = clock_s(CLOCK_MONOTONIC)
        if s.kind == KIND_UNKNOWN:
            self._refuse(s, ST_UNIMPLEMENTED, b"Method not found: " + s.path)
        elif not s.ctype_ok:
            self._refuse(s, ST_INTERNAL, b"content-type must be application/grpc")

    cdef void _data(self, Stream s, const uint8_t* data, size_t length) except *:
        """DATA of ``s``: collect it; hand each whole message of a streaming call on. What the
        connection holds of unfinished messages is bounded by ``max_buffered``."""
        cdef Py_ssize_t have, take
        cdef const unsigned char* b
        cdef long long need
        if s.bad or s.kind == KIND_UNKNOWN:
            return
        while length:
            if s.buf is None:
                s.buf = bytearray()
            have = PyByteArray_GET_SIZE(s.buf)
            take = (PREFIX if s.need < 0 else s.need) - have
            if <size_t>take > length:
                take = length
            if self.buffered + take > self.max_buffered:
                self._refuse(s, ST_RESOURCE_EXHAUSTED, (
                    "the connection holds %d bytes of unfinished messages (grpc_max_inflight_bytes %d)"
                    % (self.buffered, self.max_buffered)).encode())
                return
            PyByteArray_Resize(s.buf, have + take)
            memcpy(PyByteArray_AS_STRING(s.buf) + have, data, take)
            self.buffered += take
            s.held += take
            data += take
            length -= take
            if s.need >= 0:
                if have + take == s.need:
                    self._message(s)
                continue
            if have + take < PREFIX:  # the prefix first
                return
            b = <const unsigned char*>PyByteArray_AS_STRING(s.buf)
            need = (<long long>b[1] << 24) | (<long long>b[2] << 16) | (<long long>b[3] << 8) | b[4]
            if b[0] > 1:
                self._refuse(s, ST_INTERNAL, b"malformed gRPC message prefix")
                return
            if need > self.max_message:
                self._refuse(s, ST_RESOURCE_EXHAUSTED, (
                    "Received message larger than max (%d vs. %d)" % (need, self.max_message)).encode())
                return
            if s.kind == KIND_UNARY and s.pending is not None:
                self._refuse(s, ST_UNIMPLEMENTED, b"a unary call sent more than one message")
                return
            s.compressed = b[0] == 1
            s.need = need
            self._release(s)
            s.buf = bytearray()
            if need == 0:
                self._message(s)

    cdef inline void _release(self, Stream s) noexcept:
        self.buffered -= s.held
        s.held = 0

    cdef void _message(self, Stream s) except *:
        """A whole message of ``s``: a streaming call's goes to ``on_message`` now, a unary call's
        waits for the half-close (in ``pending``, still counted as held)."""
        cdef bytes msg = bytes(s.buf) if s.need else b""
        s.buf = None
        s.need = -1
        if s.kind == KIND_STREAM:
            self._release(s)
        if s.compressed:
            msg = self.decompress(s, msg)
            if msg is None:
                return
        if s.kind == KIND_STREAM:
            self.calls += 1
            self.on_message(s, msg)
        else:
            s.pending = msg

    cdef void _half_closed(self, Stream s) except *:
        if s.bad or s.kind == KIND_UNKNOWN or s.finished:
            return
        s.half_closed = True
        if s.kind == KIND_STREAM:
            if s.need >= 0 or (s.buf is not None and PyByteArray_GET_SIZE(s.buf)):
                self._refuse(s, ST_INTERNAL, b"the stream ended inside a message")
                return
            self.on_half_close(s)
            return
        if s.pending is None or s.need >= 0 or (s.buf is not None and PyByteArray_GET_SIZE(s.buf)):
            self._refuse(s, ST_UNIMPLEMENTED if s.pending is None and s.need < 0 else ST_INTERNAL,
                         b"a unary call must send exactly one whole message")
            return
        msg = s.pending
        s.pending = None
        self._release(s)
        self.calls += 1
        self.on_call(s, msg)

    cdef void _refuse(self, Stream s, int status, bytes message) except *:
        """Answer ``s`` with an error while its request is still arriving (or was never whole),
        and tell the client to stop sending it."""
        s.bad = True
        s.buf = None
        s.pending = None
        self._release(s)
        s.rst_after = not s.half_closed  # once the answer is out (_on_frame_send)
        self._finish(s, status, message, None)

    # ---- the subclass's part -------------------------------------------------------------------
    def on_call(self, Stream s, bytes message):
        """A unary call's request message (``s.path`` says which RPC)."""
        self.finish(s, ST_UNIMPLEMENTED, "not served")

    def on_message(self, Stream s, bytes message):
        """One message of a streaming call."""

    def on_half_close(self, Stream s):
        """The client of a streaming call sent its last message."""
        self.finish(s, ST_OK, "")

    def on_cancel(self, Stream s):
        """The client reset ``s`` (cancel, deadline) before it was finished."""

    def finished(self, Stream s, int status):
        """``s``'s status is decided (called while ``log_calls``)."""

    def decompress(self, Stream s, bytes message):
        """A compressed message (``s.encoding``): its bytes, or None after finishing ``s`` with an error."""
        self.finish(s, ST_UNIMPLEMENTED, f"grpc-encoding {s.encoding} is not supported")
        return None

    # ---- sending -------------------------------------------------------------------------------
    def send(self, Stream s, bytes message):
        """Queue one response message on ``s`` (headers first, once). False: ``s`` is gone."""
        cdef nghttp2_nv nva[2]
        cdef nghttp2_data_provider prd
        if s.closed or s.finished or self.session == NULL or self.dead:
            return False
        if s.outq is None:
            s.outq = [message]
        else:
            s.outq.append(message)
        if not s.headers_sent:
            s.headers_sent = True
            set_nv(&nva[0], b":status", _S_200)
            set_nv(&nva[1], b"content-type", _CT)
            prd.source.ptr = NULL
            prd.read_callback = _read_out
            nghttp2_submit_response(self.session, s.id, nva, 2, &prd)
        elif s.deferred:
            s.deferred = False
            nghttp2_session_resume_data(self.session, s.id)
        self._want_flush()
        return True

    def reply(self, Stream s, bytes message, trailers=None):
        """A unary call's answer: ``message``, then status OK (``trailers``: extra pairs)."""
        if self.send(s, message):
            self._finish(s, ST_OK, b"", trailers)

    def finish(self, Stream s, int status, message, trailers=None):
        """End ``s`` with ``status`` (and ``grpc-message``): after the queued messages, or as a
        trailers-only response when none was sent. ``trailers``: extra (name, value) pairs."""
        cdef bytes m = message.encode() if isinstance(message, str) else message
        if s.closed or s.finished or self.session == NULL or self.dead:
            return False
        self._finish(s, status, m, trailers)
        return True

    cdef void _finish(self, Stream s, int status, bytes message, trailers) except *:
        cdef nghttp2_nv nva[24]
        cdef Py_ssize_t n = 0
        cdef bytes st
        if s.closed or s.finished or self.session == NULL:
            return
        s.finished = True
        s.status = status
        if self.log_calls:
            self.finished(s, status)
        s.grpc_message = percent_encode(message) if message else None
        s.trailers = [(k.encode() if isinstance(k, str) else k, v.encode() if isinstance(v, str) else v)
                      for k, v in trailers[:20]] if trailers else None
        if s.headers_sent:  # trailers after the messages
            if s.deferred:
                s.deferred = False
                nghttp2_session_resume_data(self.session, s.id)
            self._want_flush()
            return
        s.headers_sent = True
        s.outq = None
        st = str(status).encode()  # (held here until nghttp2 has copied it)
        set_nv(&nva[0], b":status", _S_200)
        set_nv(&nva[1], b"content-type", _CT)
        n = 2 + status_block(s, st, nva + 2)
        nghttp2_submit_response(self.session, s.id, nva, n, NULL)  # trailers-only: END_STREAM on HEADERS
        self._want_flush()

    cdef ssize_t _fill(self, Stream s, uint8_t* buf, size_t length, uint32_t* data_flags) except -1:
        """nghttp2 asks for up to ``length`` bytes of ``s``'s DATA: the queued messages, each
        after its prefix; then the trailers, once it is finished."""
        cdef size_t done = 0, take, size
        cdef bytes msg
        cdef unsigned char prefix[5]
        cdef nghttp2_nv nva[24]
        cdef Py_ssize_t n
        cdef bytes st
        while done < length and s.outq:
            msg = <bytes>s.outq[0]
            size = PyBytes_GET_SIZE(msg)
            if s.out_pos < PREFIX:
                prefix[0] = 0
                prefix[1] = (size >> 24) & 0xff
                prefix[2] = (size >> 16) & 0xff
                prefix[3] = (size >> 8) & 0xff
                prefix[4] = size & 0xff
                take = PREFIX - s.out_pos
                if take > length - done:
                    take = length - done
                memcpy(buf + done, prefix + s.out_pos, take)
                s.out_pos += take
                done += take
                continue
            take = size - (s.out_pos - PREFIX)
            if take > length - done:
                take = length - done
            memcpy(buf + done, PyBytes_AS_STRING(msg) + (s.out_pos - PREFIX), take)
            s.out_pos += take
            done += take
            if <size_t>(s.out_pos - PREFIX) == size:
                del s.outq[0]
                s.out_pos = 0
        if s.outq:
            return done
        if s.finished:
            data_flags[0] |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM
            st = str(s.status).encode()  # (held here until nghttp2 has copied it)
            nghttp2_submit_trailer(self.session, s.id, nva, status_block(s, st, nva))
            return done
        if done == 0:
            s.deferred = True
            return NGHTTP2_ERR_DEFERRED
        return done

    cdef void _want_flush(self) except *:
        if self.in_recv or self.flush_due:
            return  # data_received flushes when it is done
        self.flush_due = True
        self.loop.call_soon(self._flush_soon)

    def _flush_soon(self):
        self.flush_due = False
        self._flush()

    cpdef _flush(self):
        """Write everything nghttp2 has to send, in one write; close once neither side has more."""
        cdef const uint8_t* p
        cdef ssize_t n
        cdef size_t cap
        cdef char* nb
        if self.session == NULL or self.dead:
            return
        self.olen = 0
        while True:
            n = nghttp2_session_mem_send(self.session, &p)
            if n <= 0:
                break
            if self.olen + n > self.ocap:
                cap = self.ocap * 2 if self.ocap else 16384
                while cap < self.olen + n:
                    cap *= 2
                nb = <char*>realloc(self.obuf, cap)
                if nb == NULL:
                    raise MemoryError()
                self.obuf = nb
                self.ocap = cap
            memcpy(self.obuf + self.olen, p, n)
            self.olen += n
        if self.error is not None:  # raised in _fill
            exc, self.error = self.error, None
            log.error("the native gRPC front failed writing a response: closing the connection", exc_info=exc)
            self._die(NGHTTP2_INTERNAL_ERROR)
            return
        t = self.transport
        if self.olen and t is not None and not t.is_closing():
            t.write(PyBytes_FromStringAndSize(self.obuf, self.olen))
        if self.ocap > (1 << 20):  # a large answer went out: do not keep its buffer
            free(self.obuf)
            self.obuf = NULL
            self.ocap = 0
        self.olen = 0
        if n < 0 or (not nghttp2_session_want_read(self.session) and not nghttp2_session_want_write(self.session)):
            self._die(NGHTTP2_NO_ERROR)

    # ---- ending ------------------------------------------------------------------------------
    def goaway(self, bint graceful=True):
        """Tell the client no new stream will be taken: a GOAWAY naming the last stream we saw
        (streams up to it are still answered). Not graceful: close now."""
        if self.session == NULL or self.dead:
            return
        nghttp2_submit_goaway(self.session, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(self.session),
                              NGHTTP2_NO_ERROR, NULL, 0)
        self._flush()
        if not graceful:
            self._die(NGHTTP2_NO_ERROR)

    def ping(self):
        """A keepalive PING; ``pings_unacked`` is True until its ACK comes."""
        cdef uint8_t opaque[8]
        if self.session == NULL or self.dead:
            return
        memcpy(opaque, b"gatewayk", 8)
        nghttp2_submit_ping(self.session, NGHTTP2_FLAG_NONE, opaque)
        self.ping_out = True
        self._want_flush()

    def pings_unacked(self):
        return self.ping_out

    cdef void _die(self, uint32_t code) except *:
        """The connection is over: cancel what is owed, close the transport."""
        if self.dead:
            return
        self.dead = True
        self.cancel_all()
        t = self.transport
        if t is not None:
            t.close()

    def cancel_all(self):
        """Every stream not finished is cancelled (``on_cancel``); nothing more is sent."""
        cdef Stream s
        streams, self.streams = self.streams, {}
        for s in streams.values():
            self._closed(s)

    cdef void _closed(self, Stream s) except *:
        """``s`` is gone (reset, or its connection ended): what it held goes back, and a call not
        yet finished is cancelled."""
        s.closed = True
        s.buf = None
        s.pending = None
        self._release(s)
        if not s.finished and not s.bad:
            self.cancelled += 1
            self.on_cancel(s)

    @property
    def open_streams(self):
        return len(self.streams)



# ---- the client side: the load tester's gRPC calls (gateway.loadtest.grpc_native) ---------------

cdef class _Call:
    cdef bytes payload  # the whole DATA: prefix and message
    cdef Py_ssize_t pos
    cdef int status  # grpc-status once seen, else -1
    cdef object token  # what ``done`` gets back


cdef int _c_on_header(nghttp2_session* session, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
                      const uint8_t* value, size_t valuelen, uint8_t flags, void* user_data) noexcept:
    cdef GrpcClient c = <GrpcClient>user_data
    cdef PyObject* found
    cdef int v = 0
    cdef size_t i
    if frame.hd.type != NGHTTP2_HEADERS or namelen != 11 or memcmp(name, b"grpc-status", 11) != 0:
        return 0
    found = PyDict_GetItem(c.calls, frame.hd.stream_id)
    if found == NULL:
        return 0
    for i in range(valuelen):
        if value[i] < 48 or value[i] > 57:
            v = 2  # UNKNOWN: not a status
            break
        v = v * 10 + (value[i] - 48)
    (<_Call>found).status = v
    return 0


cdef int _c_on_stream_close(nghttp2_session* session, int32_t stream_id, uint32_t error_code,
                            void* user_data) noexcept:
    cdef GrpcClient c = <GrpcClient>user_data
    cdef PyObject* found = PyDict_GetItem(c.calls, stream_id)
    cdef _Call call
    if found == NULL:
        return 0
    call = <_Call>found
    try:
        del c.calls[stream_id]
        # no status: reset or cut off (the server refused the stream, or went away): UNAVAILABLE
        c.done(call.token, call.status if call.status >= 0 else 14)
    except BaseException as exc:
        c.error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef ssize_t _c_read(nghttp2_session* session, int32_t stream_id, uint8_t* buf, size_t length,
                     uint32_t* data_flags, nghttp2_data_source* source, void* user_data) noexcept:
    cdef GrpcClient c = <GrpcClient>user_data
    cdef PyObject* found = PyDict_GetItem(c.calls, stream_id)
    cdef _Call call
    cdef size_t n
    if found == NULL:
        return NGHTTP2_ERR_CALLBACK_FAILURE
    call = <_Call>found
    n = PyBytes_GET_SIZE(call.payload) - call.pos
    if n > length:
        n = length
    memcpy(buf, PyBytes_AS_STRING(call.payload) + call.pos, n)
    call.pos += n
    if call.pos == PyBytes_GET_SIZE(call.payload):
        data_flags[0] |= NGHTTP2_DATA_FLAG_EOF
    return n


cdef class GrpcClient:
    """One HTTP/2 connection of gRPC calls to a server, for the load tester: ``call(path, message,
    headers, token)`` starts one (the message already serialized), and ``done(token, status)`` is
    called with its grpc-status (14, UNAVAILABLE, when the stream ended without one). Responses are
    not parsed, only their status read. What the calls write is sent once per loop pass."""

    cdef nghttp2_session* session
    cdef public object transport, error, done
    cdef public dict calls
    cdef char* obuf
    cdef size_t ocap
    cdef bint flush_due, in_recv, dead
    cdef object loop

    def __cinit__(self, *args, **kwargs):
        self.calls = {}

    def __dealloc__(self):
        if self.session != NULL:
            nghttp2_session_del(self.session)
        if self.obuf != NULL:
            free(self.obuf)

    def h2_start(self, transport, unsigned int window=1 << 24):
        cdef nghttp2_session_callbacks* cbs
        cdef nghttp2_settings_entry iv[2]
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        if nghttp2_session_callbacks_new(&cbs) != 0:
            raise MemoryError()
        nghttp2_session_callbacks_set_on_header_callback(cbs, _c_on_header)
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs, _c_on_stream_close)
        rv = nghttp2_session_client_new2(&self.session, cbs, <void*>self, NULL)
        nghttp2_session_callbacks_del(cbs)
        if rv != 0:
            raise MemoryError(nghttp2_strerror(rv).decode())
        iv[0].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
        iv[0].value = 100000
        iv[1].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        iv[1].value = window
        nghttp2_submit_settings(self.session, NGHTTP2_FLAG_NONE, iv, 2)
        nghttp2_session_set_local_window_size(self.session, NGHTTP2_FLAG_NONE, 0, window)
        self._flush()

    @staticmethod
    def frame(bytes message not None):
        """``message`` with its gRPC prefix (uncompressed, its length): what ``call`` sends."""
        cdef Py_ssize_t size = PyBytes_GET_SIZE(message)
        cdef bytes out = PyBytes_FromStringAndSize(NULL, size + PREFIX)
        cdef char* o = PyBytes_AS_STRING(out)
        o[0] = 0
        o[1] = (size >> 24) & 0xff
        o[2] = (size >> 16) & 0xff
        o[3] = (size >> 8) & 0xff
        o[4] = size & 0xff
        memcpy(o + PREFIX, PyBytes_AS_STRING(message), size)
        return out

    def call(self, list headers, bytes framed, token):
        """Start one call: ``headers`` a list of (name, value) bytes pairs (pseudo-headers first),
        ``framed`` the serialized request with its prefix (``frame``: made once per request kind).
        False when the connection is gone."""
        cdef nghttp2_nv nva[32]
        cdef nghttp2_data_provider prd
        cdef Py_ssize_t n = 0
        cdef int32_t sid
        cdef _Call c
        if self.session == NULL or self.dead:
            return False
        for k, v in headers[:32]:
            set_nv(&nva[n], k, v)
            n += 1
        c = _Call.__new__(_Call)
        c.payload = framed
        c.status = -1
        c.token = token
        prd.source.ptr = NULL
        prd.read_callback = _c_read
        sid = nghttp2_submit_request(self.session, NULL, nva, n, &prd, NULL)
        if sid < 0:
            return False
        self.calls[sid] = c
        if not self.in_recv and not self.flush_due:
            self.flush_due = True
            self.loop.call_soon(self._flush_soon)
        return True

    def _flush_soon(self):
        self.flush_due = False
        self._flush()

    def data_received(self, data):
        cdef ssize_t rv
        if self.session == NULL or self.dead:
            return
        self.in_recv = True
        try:
            rv = nghttp2_session_mem_recv(self.session, <const uint8_t*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        finally:
            self.in_recv = False
        if self.error is not None:
            exc, self.error = self.error, None
            self._die()
            raise exc
        if rv < 0:
            self._die()
            return
        self._flush()

    cpdef _flush(self):
        cdef const uint8_t* p
        cdef ssize_t n
        cdef size_t olen = 0, cap
        cdef char* nb
        if self.session == NULL or self.dead:
            return
        while True:
            n = nghttp2_session_mem_send(self.session, &p)
            if n <= 0:
                break
            if olen + n > self.ocap:
                cap = self.ocap * 2 if self.ocap else 65536
                while cap < olen + n:
                    cap *= 2
                nb = <char*>realloc(self.obuf, cap)
                if nb == NULL:
                    raise MemoryError()
                self.obuf = nb
                self.ocap = cap
            memcpy(self.obuf + olen, p, n)
            olen += n
        if olen and self.transport is not None and not self.transport.is_closing():
            self.transport.write(PyBytes_FromStringAndSize(self.obuf, olen))
        if self.ocap > (4 << 20):
            free(self.obuf)
            self.obuf = NULL
            self.ocap = 0

    cdef void _die(self) except *:
        if self.dead:
            return
        self.dead = True
        if self.transport is not None:
            self.transport.close()
        self.fail_all()

    def fail_all(self):
        """The connection is gone: every call still open ends UNAVAILABLE."""
        cdef _Call c
        calls, self.calls = self.calls, {}
        self.dead = True
        for c in calls.values():
            self.done(c.token, 14)

    @property
    def open_calls(self):
        return len(self.calls)
