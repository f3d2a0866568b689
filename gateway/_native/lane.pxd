# C-level contract of gateway._native.lane (see _native/lane.pyx): the HTTP front
# (_native/http1.pyx) calls the lane through these declarations, as C calls.

cimport cython


@cython.final
cdef class InflightCap:
    cdef public long long max_requests, max_bytes, requests, bytes
    cdef bint fits(self, long long size) noexcept


@cython.final
cdef class LaneTicket:
    # Pending's interface, read and written by BatchQueue and Batcher (a leader's)
    cdef public object request, inputs, group, bucket, queue
    cdef public Py_ssize_t rows, index, level, cum
    cdef public double arrival, deadline, rank
    cdef public bint cancelled
    # _Flight's interface, read and written by the Coalescer for followers that join it (a leader's)
    cdef public object owner, key, followers
    cdef public Py_ssize_t live
    cdef public bint lead_gone, finished
    # _Waiter's interface (a follower's): the flight it waits on (Coalescer.retry moves it), gone
    cdef public object flight
    cdef public bint gone
    # the claim and the answer
    cdef bint follower
    cdef InflightCap cap
    cdef long long size
    cdef Lane lane
    cdef object rawkey  # a leader's ``raw_key``, while it takes followers (``Lane.join_raw``)
    cdef object proto, binary
    cdef Py_ssize_t seq
    cdef bint keep_alive

    cdef void _forget(self) except *
    cdef void _withdraw(self) except *
    cdef void _release(self) noexcept
    cdef void _unticket(self) except *
    cdef void deliver(self, dict outs, make) except *
    cdef void _share(self, dict outs, make) except *
    cdef bint same_bytes(self, LaneTicket other) except -1
    cdef object _write_rows(self, dict outs, data, make)


@cython.final
cdef class Lane:
    cdef object coalescer, admit, batcher, queue, stats, clock, checks, output_set, backend, key_of
    cdef object name, version
    cdef dict flights
    # ``raw_key`` of a body -> the in-flight leader that was decoded from those bytes: a request
    # with the same bytes for the same version is the same request, so it joins without being
    # decoded (``join_raw``).
    cdef readonly dict raw
    cdef Py_ssize_t raw_misses, raw_off  # the raw keys' probe (RAW_KEY_PROBE, RAW_KEY_PAUSE)
    cdef dict buckets  # the BatchQueue's (never rebound): the lane appends to its queue in C
    cdef bint coalescing, batching, plain_levels
    cdef Py_ssize_t max_waiters, max_queue_rows, mbs
    cdef long long timeout_us
    cdef double max_wait_s

    cpdef object raw_key(self, bytes body, Py_ssize_t header_length)
    cpdef object join_raw(self, key, proto, Py_ssize_t seq, bint keep_alive, InflightCap cap)
    cpdef object submit(self, req, binary, proto, Py_ssize_t seq, bint keep_alive, InflightCap cap, raw_key=*)
    cdef LaneTicket _ticket(self, req, binary, proto, Py_ssize_t seq, bint keep_alive, InflightCap cap,
                            long long size, double now, double deadline)
    cdef object _submit(self, req, binary, proto, Py_ssize_t seq, bint keep_alive, InflightCap cap)
    cdef void _enqueue(self, LaneTicket t) except *
