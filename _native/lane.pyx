# cython: language_level=3
"""The native lane: an HTTP infer request's whole way into a batch, and its answer's way out, in C.

The general request path is a chain of Python stages (``dataplane.submit`` -> in-flight cap ->
route -> coalesce -> admit -> batch), each with its own per-request object: a claim, a flight, a
queued unit, the front's callback. For the common request that chain is ~5 µs of interpreter
work. The lane does what those stages do for it in one C call, with one object per request, the
``LaneTicket``. A leader's ticket is at once the front's ticket (``cancel``), the in-flight claim,
the coalescing flight (``_Flight``'s interface: followers that arrive by the general path join it)
and the batch queue's unit (``Pending``'s interface, so ``BatchQueue`` and ``Batcher`` treat it
as any other). A follower's ticket has ``_Waiter``'s interface, so it can wait on any flight and
``Coalescer.retry`` can move it. A computed flight is answered in C straight from the batch's
rows (``deliver``): each distinct (id, binary outputs, keep-alive) is encoded once and the bytes
written to every waiter that would get them, in request order by the front.

A request whose body bytes equal those of an in-flight leader of the same version is the same
request: it joins that flight before it is decoded (``join_raw``), which is what makes identical
requests (a load generator's one body, a dashboard's fan-out, retries) cost a lookup.

What it covers is decided once per model version (``ModelVersion.lane``: no cache, no priority
levels, no precomputed route, fixed inner dimensions) and per request (no ``priority`` parameter,
every check passing, room in the queue, the flight and the in-flight bounds). Anything else
returns None *before anything changed*, and the caller takes the general path, which then answers
exactly as it would have (refusals are worded and counted there, once). ``counts()`` tells how
many requests each way took.
"""

from cpython.dict cimport PyDict_GetItem, PyDict_DelItem, PyDict_SetItem
from cpython.object cimport PyObject
from cpython.bytes cimport PyBytes_GET_SIZE
cimport numpy as cnp

import logging

import numpy as np
from xxhash import xxh3_128_intdigest

from gateway._native.grpcpb import encode_infer
from gateway._native.inferenc import http_answer, http_response
from gateway._native.sigcheck import accepted_rows
from gateway.errors import Code, GatewayError
from gateway.types import InferResponse

cnp.import_array()

log = logging.getLogger("gateway.pipeline.lane")

cdef double INF = float("inf")
RAW_KEY_MAX_BYTES = 64 * 1024
"""Bodies up to this size are keyed by their bytes for joining before decode (``Lane.raw_key``)."""
cdef Py_ssize_t _raw_key_max = RAW_KEY_MAX_BYTES
RAW_KEY_PROBE = 256
"""Leaders keyed by their bytes in a row that no request joined by bytes: the lane then stops
keying bodies (``RAW_KEY_PAUSE`` requests), since distinct traffic only pays for the hash."""
RAW_KEY_PAUSE = 4096
"""Requests not keyed by their bytes after a fruitless probe, unless one joins a flight by its
tensors first (identical requests are arriving again: key them at once)."""
cdef Py_ssize_t _raw_probe = RAW_KEY_PROBE, _raw_pause = RAW_KEY_PAUSE
cdef object _DEADLINE = Code.DEADLINE_EXCEEDED
cdef bytes _CLOSE = b"connection: close\r\n"
cdef unsigned long long _n_lane = 0
GRPC = object()
"""A ticket's ``binary`` for a gRPC call: its answer is a serialized ModelInferResponse (written
with ``proto._write_in_order(stream id, message, False)``), not an HTTP response."""
cdef object _GRPC = GRPC
cdef unsigned long long _n_general = 0


def set_raw_probe(Py_ssize_t probe, Py_ssize_t pause):
    """Set RAW_KEY_PROBE and RAW_KEY_PAUSE for every lane (tests); returns the previous pair."""
    global _raw_probe, _raw_pause
    old = (_raw_probe, _raw_pause)
    _raw_probe, _raw_pause = max(1, probe), max(0, pause)
    return old


def counts():
    """(HTTP infer requests the lane took, those that went the general way) since the process started."""
    return _n_lane, _n_general


def note_general():
    """An HTTP infer request the front did not offer to a lane (a policy, compression, shared memory, ...)."""
    global _n_general
    _n_general += 1


cdef class NoTicket:
    """The ticket of work that is already answered (or never queued): cancelling it does nothing.
    (``pipeline.target.NO_TICKET`` is this module's instance.)"""

    def cancel(self):
        pass


NO_TICKET = NoTicket()
cdef object _NO_TICKET = NO_TICKET


cdef class InflightCap:
    """Server-wide bound on infer requests admitted and not yet answered (``max_inflight_requests``)
    and on their tensor bytes (``max_inflight_bytes``; a request alone is always let in, or one
    larger than the bound could never be served). 0: no bound. Mutated on the loop thread only.
    (Its fields are declared in ``lane.pxd``.)"""

    def __init__(self, long long max_requests=0, long long max_bytes=0):
        self.max_requests = max_requests or (1 << 62)
        self.max_bytes = max_bytes or (1 << 62)
        self.requests = 0
        self.bytes = 0

    def hold(self, request, done):
        """Claim a place for ``request`` or raise RESOURCE_EXHAUSTED; the claim is what the target
        calls back (it passes the answer on) and the ticket the front cancels: either releases it."""
        cdef long long size = _nbytes(request.inputs)
        if not self.fits(size):
            if self.requests >= self.max_requests:
                raise GatewayError(Code.RESOURCE_EXHAUSTED, f"server holds {self.requests} infer requests "
                                   "(max_inflight_requests): retry later", retry_after_s=1)
            raise GatewayError(Code.RESOURCE_EXHAUSTED,
                               f"server holds {self.bytes} bytes of infer requests; this one ({size} bytes) would "
                               f"pass max_inflight_bytes ({self.max_bytes}): retry later", retry_after_s=1)
        self.requests += 1
        self.bytes += size
        return Held(self, done, size)

    cdef bint fits(self, long long size) noexcept:
        return self.requests < self.max_requests and not (self.bytes + size > self.max_bytes and self.requests)


cdef long long _nbytes(dict inputs) except -1:
    cdef long long size = 0
    for a in inputs.values():
        size += a.nbytes
    return size


cdef class Held:
    """One request's claim on the ``InflightCap``, released exactly once: by its answer or its cancel."""

    cdef public InflightCap cap
    cdef public object done, ticket
    cdef public long long size

    def __init__(self, InflightCap cap, done, long long size):
        self.cap = cap
        self.done = done
        self.size = size
        self.ticket = _NO_TICKET

    def __call__(self, response, error):
        self.ticket = _NO_TICKET  # the queued work holds this as its ``done``: no cycle left behind
        self.release()
        self.done(response, error)

    def cancel(self):
        self.ticket.cancel()
        self.release()

    cpdef release(self):
        cdef InflightCap cap = self.cap
        if cap is not None:
            self.cap = None
            cap.requests -= 1
            cap.bytes -= self.size


cdef class LaneTicket:
    """One request on the lane: a flight's leader (queued, computed) or a follower waiting on a
    flight (see the module's docstring for the roles). Its fields are declared in ``lane.pxd``."""

    @property
    def done(self):
        """What the batcher (a leader) or the Coalescer (a follower) calls with the answer: the
        ticket itself (no cycle through an attribute)."""
        return self

    @property
    def lead_done(self):
        """The leader's own answer, as ``Coalescer.answer`` and ``retry`` call it."""
        return self._answer

    # ---- the front's ticket ---------------------------------------------------------------------
    def cancel(self):
        """The client went away. A follower leaves its flight; a leader's computation goes on
        only while followers wait for it."""
        if self.follower:
            if not self.gone:
                self.gone = True
                self.flight.left()
        elif self.owner is None:
            self._withdraw()
        elif not self.lead_gone:
            self.lead_gone = True
            self.left()
        self._release()

    # ---- the flight -----------------------------------------------------------------------------
    def left(self):
        self.live -= 1
        if self.live == 0 and not self.finished:  # nobody wants it any more: drop it before dispatch
            self.finished = True
            self._forget()
            self.followers = None
            self._withdraw()

    cdef void _forget(self) except *:
        """The flight takes no more followers (answered, or nobody wants it)."""
        cdef dict flights = self.owner.flights
        cdef PyObject* cur = PyDict_GetItem(flights, self.key)
        if cur == <PyObject*>self:
            PyDict_DelItem(flights, self.key)
        if self.rawkey is not None:
            flights = self.lane.raw
            cur = PyDict_GetItem(flights, self.rawkey)
            if cur == <PyObject*>self:
                PyDict_DelItem(flights, self.rawkey)
            self.rawkey = None

    def __call__(self, resp, err):
        """A leader: the batch's answer or the queue's error, as ``_Flight.__call__`` takes it. A
        follower: its own answer, from the Coalescer."""
        if self.follower:
            self._answer(resp, err)
            return
        if self.finished:
            return
        self.finished = True
        owner = self.owner
        if owner is None:
            self._answer(resp, err)
            return
        self._forget()
        if self.followers is None:  # nobody joined (the lane has no cache)
            if not self.lead_gone:
                self._answer(resp, err)
            return
        if err is not None and err.code is _DEADLINE and owner.retry(self):
            return
        owner.answer(self, resp, err)
        self.followers = None

    # ---- the queued unit ------------------------------------------------------------------------
    cdef void _withdraw(self) except *:
        if not self.cancelled:
            self.cancelled = True
            q = self.queue
            if q is not None:
                q.withdraw(self, True)

    # ---- the answer -----------------------------------------------------------------------------
    cdef void _release(self) noexcept:
        cdef InflightCap cap = self.cap
        if cap is not None:
            self.cap = None
            cap.requests -= 1
            cap.bytes -= self.size

    cdef void _unticket(self) except *:
        cdef dict tickets = self.proto._tickets
        if PyDict_GetItem(tickets, self.seq) != NULL:
            PyDict_DelItem(tickets, self.seq)

    cdef void deliver(self, dict outs, make) except *:
        """A leader's rows of the batch (``Batcher._complete``, through ``deliver``): its answer,
        and each follower's, encoded straight from them."""
        if self.finished:
            return
        self.finished = True
        if self.owner is not None:
            self._forget()
        wanted = self.request.outputs
        if wanted is not None:
            outs = {n: outs[n] for n in wanted}
        if self.followers is None:
            if not self.lead_gone:
                self._write_rows(outs, None, make)
            return
        self._share(outs, make)
        self.followers = None

    cdef void _share(self, dict outs, make) except *:
        """``Coalescer.answer`` for a computed flight: the leader and each follower get their own
        response (own id; one encoding for consecutive waiters that would get the same bytes), a
        follower whose own deadline passed gets DEADLINE_EXCEEDED; counted as the Coalescer counts."""
        owner = self.owner
        stats = owner.stats
        cdef double now = owner.clock()
        cdef Py_ssize_t ok = 0
        cdef LaneTicket w
        data = late = None
        if not self.lead_gone:
            ok += 1
            data = self._write_rows(outs, None, make)
        last = self
        for f in self.followers:  # LaneTickets and _Waiters (joined by the general path) alike
            if f.gone:
                continue
            if f.deadline <= now:
                late = late or _late_waiting(owner.name)
                stats.record_failures(late.code.name, 1, int((now - f.arrival) * 1e9))
                f.done(None, late)
                continue
            ok += 1
            stats.extra_success_ns += int((now - f.arrival) * 1e9)
            if type(f) is LaneTicket:
                w = <LaneTicket>f
                data = w._write_rows(outs, data if w.same_bytes(last) else None, make)
                last = w
            else:
                f.done(InferResponse(owner.name, owner.version, outs, f.request.id), None)
        if ok > 1:
            stats.extra_success_count += ok - 1
            stats.coalesced_count += ok - 1
            stats.shared_flights += 1

    cdef bint same_bytes(self, LaneTicket other) except -1:
        """Its answer is ``other``'s, byte for byte: the same id, binary outputs and keep-alive."""
        return (self.binary is other.binary and self.keep_alive == other.keep_alive
                and (self.request is other.request or self.request.id == other.request.id))

    cdef object _write_rows(self, dict outs, data, make):
        """Answer from the rows: ``data`` (the bytes another waiter got, when they are the same),
        or encoded in C; written in request order by the front. Returns the bytes (None: the
        general encoder answered)."""
        self._release()
        self._unticket()
        if data is None:
            lane = self.lane
            try:
                if self.binary is _GRPC:
                    data = encode_infer(lane.name, lane.version, self.request.id, outs)
                else:
                    data = http_answer(lane.name, lane.version, outs, self.request.id, self.binary,
                                       b"" if self.keep_alive else _CLOSE)
            except Exception:  # the general encoder names (and logs) what it cannot serialise
                data = None
            if data is None:  # outputs the native encoder leaves to the general one
                self.proto._answer_general(self.seq, make(self.request, outs), None, self.binary, self.keep_alive)
                return None
        self.proto._write_in_order(self.seq, data, not self.keep_alive)
        return data

    def _answer(self, resp, err):
        """The answer as a response object or an error (the general stages' way of giving it)."""
        self._release()
        self._unticket()
        data = None
        if err is None:
            try:
                if self.binary is not _GRPC:
                    data = http_response(resp, self.binary, b"" if self.keep_alive else _CLOSE)
                elif resp.parameters is None:
                    data = encode_infer(resp.model_name, resp.model_version, resp.id, resp.outputs)
            except Exception:  # the general encoder names (and logs) what it cannot serialise
                data = None
        if data is None:  # an error, or outputs the native encoder leaves to the general one
            self.proto._answer_general(self.seq, resp, err, self.binary, self.keep_alive)
            return
        self.proto._write_in_order(self.seq, data, not self.keep_alive)


def flight_key(req, general):
    """The Coalescer's key for ``req``: for one non-BYTES input and all outputs, (name, layout,
    xxh3-128 of its bytes) here, where ``layout`` is one int that stands for the dtype, byte
    order and shape (``_layout``), or (name, dtype, shape, digest) where it cannot; else
    ``general(req)`` (``coalesce.flight_key``). Both the Coalescer and the lane call this, so that
    either finds the other's flights."""
    return _flight_key(req, req.inputs, req.outputs, general)


cdef inline long long _layout(cnp.ndarray a) noexcept:
    """The dtype, byte order and shape of ``a`` packed into one int, distinct for distinct
    layouts: the type number (7 bits), byte-swapped (1), ndim (2), two dimensions of 26 bits
    each; -1 where they do not fit (the key then holds the dtype and shape themselves). The
    key's hash is then that of a small int, not a dtype's and a fresh shape tuple's, four
    times per request (insert, lookups, removal)."""
    cdef int nd = cnp.PyArray_NDIM(a), tn = cnp.PyArray_TYPE(a)
    cdef cnp.npy_intp* dims = cnp.PyArray_DIMS(a)
    cdef long long d0 = 0, d1 = 0
    if nd > 2 or tn < 0 or tn >= 128:
        return -1
    if nd >= 1:
        d0 = dims[0]
    if nd == 2:
        d1 = dims[1]
    if d0 >= (1 << 26) or d1 >= (1 << 26):
        return -1
    return ((((<long long>tn << 1) | (0 if cnp.PyArray_ISNOTSWAPPED(a) else 1)) << 54)
            | (<long long>nd << 52) | (d0 << 26) | d1)


cdef object _flight_key(req, dict inputs, outputs, general):
    cdef long long layout
    if outputs is None and len(inputs) == 1:
        for name, a in inputs.items():
            if type(a) is cnp.ndarray and cnp.PyArray_TYPE(<cnp.ndarray>a) != cnp.NPY_OBJECT:
                try:
                    digest = xxh3_128_intdigest(a)
                except (BufferError, ValueError, TypeError):  # a strided view
                    break
                layout = _layout(<cnp.ndarray>a)
                if layout >= 0:
                    return (name, layout, digest)
                return (name, a.dtype, a.shape, digest)
    return general(req)


cdef inline void _join(flight, LaneTicket t) except *:
    """``t`` waits on ``flight`` (a LaneTicket or a _Flight), as ``Coalescer._join`` adds a waiter."""
    followers = flight.followers
    if followers is None:
        flight.followers = [t]
    else:
        followers.append(t)
    flight.live += 1


cdef object _late_waiting(name):
    return GatewayError(Code.DEADLINE_EXCEEDED, f"deadline exceeded waiting for model '{name}'")


cdef class Lane:
    """One model version's lane: what its Coalescer (or None), Admit and Batcher would do for a
    request that needs none of their uncommon branches. Built by ``ModelVersion`` for versions
    whose configuration allows it; the stages it reads stay the authority. Its fields are declared
    in ``lane.pxd``, so that the HTTP front calls it in C."""

    def __init__(self, admit, coalescer, key_of):
        """``admit``: the version's Admit stage; ``coalescer``: its Coalescer (None when it opted
        out); ``key_of``: ``coalesce.flight_key`` (the key of requests the inline form does not cover)."""
        batcher = admit.batcher
        sig = admit.sig
        self.admit = admit
        self.name = admit.name
        self.version = admit.version
        self.batcher = batcher
        self.queue = admit.queue
        self.stats = admit.stats
        self.clock = admit.clock
        self.checks = sig.checks
        self.output_set = sig.output_set
        self.batching = sig.batching
        self.backend = batcher.backend
        self.max_queue_rows = self.queue.max_queue_rows
        self.mbs = batcher.config.max_batch_size
        self.timeout_us = admit.timeout_us
        self.max_wait_s = admit.max_wait_s
        self.coalescer = coalescer
        self.key_of = key_of
        self.coalescing = coalescer is not None  # (a lane's Coalescer has no cache: it coalesces)
        self.flights = coalescer.flights if coalescer is not None else None
        self.max_waiters = coalescer.max_waiters if coalescer is not None else 0
        self.raw = {}
        self.buckets = self.queue.buckets
        self.plain_levels = not self.queue.level_limits
        if not self.checks:
            raise ValueError("a lane needs the signature's native checks")

    @property
    def raw_keying(self):
        """Whether bodies are keyed by their bytes now (see RAW_KEY_PROBE)."""
        return self.raw_off == 0

    cpdef object raw_key(self, bytes body, Py_ssize_t header_length):
        """The key of a body's bytes for ``join_raw`` and ``submit``: their xxh3-128 and the binary
        header's length, as the flight key hashes tensors. None (no joining before decode) when
        this version does not coalesce, or for a body above RAW_KEY_MAX_BYTES: the flight key
        hashes its tensors anyway, and for a large body that is most of its bytes."""
        if body is None:
            raise TypeError("raw_key needs the body's bytes")
        if not self.coalescing or PyBytes_GET_SIZE(body) > _raw_key_max:
            return None
        if self.raw_off:  # the last probe found distinct bodies only (RAW_KEY_PROBE)
            self.raw_off -= 1
            return None
        return (header_length, xxh3_128_intdigest(body))

    cpdef object join_raw(self, key, proto, Py_ssize_t seq, bint keep_alive, InflightCap cap):
        """Before decoding: the ticket of a follower of the in-flight leader decoded from the same
        bytes (``key``: ``raw_key``), if there is one with room; None otherwise (nothing was
        changed: decode, then ``submit``)."""
        global _n_lane
        cdef PyObject* found
        cdef LaneTicket lead, t
        cdef double now, deadline
        cdef long long timeout_us
        if key is None or not self.raw:
            return None
        found = PyDict_GetItem(self.raw, key)
        if found == NULL:
            return None
        lead = <LaneTicket>found
        if lead.finished or lead.live >= self.max_waiters:
            return None
        if cap is not None and not cap.fits(lead.size):
            return None
        req = lead.request  # the same bytes: the same request (id included)
        now = self.clock()
        timeout_us = req.timeout_us or self.timeout_us
        deadline = now + timeout_us * 1e-6 if timeout_us > 0 else INF
        t = self._ticket(req, lead.binary, proto, seq, keep_alive, cap, lead.size, now, deadline)
        t.follower = True
        t.flight = lead
        _join(lead, t)
        _n_lane += 1
        self.raw_misses = 0
        return t

    cpdef object submit(self, req, binary, proto, Py_ssize_t seq, bint keep_alive, InflightCap cap, raw_key=None):
        """Queue ``req`` (decoded by the HTTP front from a body whose ``raw_key`` it gives, answered
        on ``proto`` as request ``seq``) and return its ticket; None: not for the lane, and nothing
        was changed."""
        global _n_lane, _n_general
        cdef LaneTicket t
        r = self._submit(req, binary, proto, seq, keep_alive, cap)
        if r is None:
            _n_general += 1
            return None
        _n_lane += 1
        t = <LaneTicket>r
        if t.follower:
            if self.raw_off:  # identical requests again: key their bytes from the next one
                self.raw_off = 0
                self.raw_misses = 0
        elif raw_key is not None and self.coalescing:
            t.rawkey = raw_key
            PyDict_SetItem(self.raw, raw_key, t)
            self.raw_misses += 1
            if self.raw_misses >= _raw_probe:
                self.raw_misses = 0
                self.raw_off = _raw_pause
        return t

    cdef LaneTicket _ticket(self, req, binary, proto, Py_ssize_t seq, bint keep_alive, InflightCap cap,
                            long long size, double now, double deadline):
        cdef LaneTicket t = LaneTicket.__new__(LaneTicket)
        t.request = req
        t.arrival = now
        t.deadline = deadline
        t.proto = proto
        t.seq = seq
        t.keep_alive = keep_alive
        t.binary = binary
        t.lane = self
        t.size = size
        if cap is not None:
            cap.requests += 1
            cap.bytes += size
            t.cap = cap
        return t

    cdef object _submit(self, req, binary, proto, Py_ssize_t seq, bint keep_alive, InflightCap cap):
        cdef dict inputs = req.inputs
        cdef Py_ssize_t rows = 0
        cdef double now, deadline, start, finish
        cdef long long timeout_us, size = 0
        cdef LaneTicket t, lead = None
        cdef PyObject* found
        params = req.parameters
        if params is not None and "priority" in params:
            return None  # a flight runs at its leader's priority: the Coalescer keys those apart
        outputs = req.outputs
        key = flight = None
        if self.coalescing:  # the Coalescer's stage first: a follower takes no queue space
            key = _flight_key(req, inputs, outputs, self.key_of)
            found = PyDict_GetItem(self.flights, key)
            if found != NULL:
                flight = <object>found
                if type(flight) is LaneTicket:
                    lead = <LaneTicket>flight
                    if lead.live >= self.max_waiters:
                        return None  # full: the Coalescer starts another
                elif flight.live >= self.max_waiters:
                    return None
        if flight is None:  # a leader: the admit stage's checks
            if not self.admit.accepting:
                return None
            rows = accepted_rows(self.checks, inputs, self.batching, outputs, self.output_set)
            if rows < 0 or rows > self.max_queue_rows or (self.mbs and rows > self.mbs):
                return None  # refused (the general path says why), or a request split into chunks
            if self.queue.rows + rows > self.max_queue_rows:
                return None  # full: the general path drains an idle inline backend, or refuses
        now = self.clock()
        timeout_us = req.timeout_us or self.timeout_us
        deadline = now + timeout_us * 1e-6 if timeout_us > 0 else INF
        if flight is None and (deadline != INF or self.max_wait_s):
            start, finish = self.batcher.expected(rows, 1, now)
            if start > 0.0 and (now + finish - deadline > 0.0
                                or (self.max_wait_s and start - self.max_wait_s > 0.0)):
                return None  # would be answered too late: refused there
        size = _nbytes(inputs)
        if cap is not None and not cap.fits(size):
            return None
        t = self._ticket(req, binary, proto, seq, keep_alive, cap, size, now, deadline)
        if flight is not None:  # join it, as Coalescer._join does
            t.follower = True
            t.flight = flight
            _join(flight, t)
            return t
        t.inputs = inputs
        t.rows = rows
        t.rank = now
        t.bucket = ()
        t.level = 1
        t.owner = self.coalescer
        t.key = key
        t.live = 1
        self._enqueue(t)
        batcher = self.batcher
        if batcher._soon is None and batcher.in_flight < self.backend.capacity:
            batcher._soon = batcher.loop.call_soon(batcher._flush)
        if self.coalescing:
            PyDict_SetItem(self.flights, key, t)
        return t

    cdef void _enqueue(self, LaneTicket t) except *:
        """``BatchQueue.add(t)`` in C when its bucket and first level's lane exist (a request that
        joins a queue already holding requests of its shape: all but the first of a batch), else
        the method itself; then the statistics' queue depth."""
        cdef PyObject* found
        cdef object q = self.queue
        found = PyDict_GetItem(self.buckets, ()) if self.plain_levels else NULL
        if found != NULL:
            b = <object>found
            found = PyDict_GetItem(b.lanes, 1)
        if found == NULL:
            q.add(t)
        else:
            lane = <object>found  # never empty: BatchQueue deletes an emptied lane
            last = lane[len(lane) - 1]
            t.cum = ((<LaneTicket>last).cum if type(last) is LaneTicket else <Py_ssize_t>last.cum) + t.rows
            lane.append(t)
            t.queue = q
            b.rows += t.rows
            q.rows += t.rows
            if t.deadline != INF:
                q.deadlines += 1
        self.stats.queue_rows = q.rows


def deliver(list items, dict outputs, dict views, make):
    """Hand each item of a computed batch its rows, as ``Batcher._complete`` does: ``views`` maps
    each output to its per-item row views (``pack.scatter_rows``), or is None for a batch of one
    item, which gets ``outputs`` whole. Lane tickets are answered in C, other items as the batcher
    would (chunks to their group, the rest to ``done`` with ``make(request, rows)``)."""
    cdef Py_ssize_t i, n = len(items)
    cdef dict outs
    for i in range(n):
        p = items[i]
        if type(p) is LaneTicket:
            if (<LaneTicket>p).cancelled or (<LaneTicket>p).finished:
                continue
        elif p.cancelled:
            continue
        if views is None:
            outs = outputs
        else:
            outs = {}
            for name, v in views.items():
                outs[name] = (<list>v)[i]
        if type(p) is LaneTicket:
            (<LaneTicket>p).deliver(outs, make)
        elif p.group is not None:
            p.group.part_done(p.index, outs, None, make)
        else:
            p.done(make(p.request, outs), None)
