# cython: language_level=3
"""Fixed-bucket latency histograms updated once per batch, at C speed.

The profile showed numpy-based per-batch observation (searchsorted, bincount, sum: a few
microseconds each) costing more than the model run for batch-1 traffic; this does the same
in tens of nanoseconds per value, and reads the arrival time of each queued request directly.
"""

cimport cython
from libc.stdlib cimport free, malloc


cdef class Histogram:
    """Counts per bucket (upper bounds, ``le`` semantics) plus +Inf, and the sum of observations."""

    def __cinit__(self, bounds):
        cdef Py_ssize_t i
        self.n = len(bounds)
        self.bounds = <double*>malloc(self.n * sizeof(double))
        self.counts = <long long*>malloc((self.n + 1) * sizeof(long long))
        if self.bounds == NULL or self.counts == NULL:
            raise MemoryError()
        for i in range(self.n):
            self.bounds[i] = bounds[i]
            if i and self.bounds[i] <= self.bounds[i - 1]:
                raise ValueError("histogram bounds must increase")
        for i in range(self.n + 1):
            self.counts[i] = 0
        self.total = 0.0

    def __dealloc__(self):
        free(self.bounds)
        free(self.counts)

    @cython.boundscheck(False)
    cdef void add(self, double v, long long k) noexcept nogil:
        cdef Py_ssize_t lo = 0, hi = self.n, mid
        while lo < hi:  # first bound >= v
            mid = (lo + hi) >> 1
            if self.bounds[mid] < v:
                lo = mid + 1
            else:
                hi = mid
        self.counts[lo] += k
        self.total += v * k

    cpdef void observe(self, double v, long long k=1):
        self.add(v, k)

    def observe_many(self, const double[::1] values):
        cdef Py_ssize_t i
        with nogil:
            for i in range(values.shape[0]):
                self.add(values[i], 1)

    @property
    def sum(self):
        return self.total

    @property
    def count(self):
        cdef long long c = 0
        cdef Py_ssize_t i
        for i in range(self.n + 1):
            c += self.counts[i]
        return c

    def bucket_counts(self):
        """Per-bucket (not cumulative) counts; the last is +Inf."""
        return [self.counts[i] for i in range(self.n + 1)]

    def cumulative(self):
        """Prometheus buckets: [(le, cumulative count), ..., ("+Inf", count)]."""
        cdef long long c = 0
        cdef Py_ssize_t i
        out = []
        for i in range(self.n):
            c += self.counts[i]
            out.append((repr(self.bounds[i]), c))
        c += self.counts[self.n]
        out.append(("+Inf", c))
        return out


cdef class BatchRecorder:
    """Every per-batch statistic in one native call: Triton's cumulative durations, the per
    batch-size table and the stage histograms. Read by ``gateway.stats.ModelStats.snapshot``."""


    def __init__(self, latency_bounds, rows_bounds):
        self.queue = Histogram(latency_bounds)
        self.total = Histogram(latency_bounds)
        self.pack = Histogram(latency_bounds)
        self.compute = Histogram(latency_bounds)
        self.scatter = Histogram(latency_bounds)
        self.rows = Histogram(rows_bounds)
        self.batch_sizes = {}

    def record(self, list items, long long rows, double t0, double t1, double t2, double t3, double t4):
        """t0 pack start, t1 compute start, t2 compute end, t3 scatter end, t4 callbacks done (s)."""
        cdef double a, q, t, sq = 0.0, st = 0.0
        cdef object p
        cdef long long n = len(items)
        cdef long long pack_ns = <long long>((t1 - t0) * 1e9)
        cdef long long infer_ns = <long long>((t2 - t1) * 1e9)
        cdef long long out_ns = <long long>((t3 - t2) * 1e9)
        cdef list b
        for p in items:
            a = p.arrival
            q = t0 - a
            t = t4 - a
            self.queue.add(q, 1)
            self.total.add(t, 1)
            sq += q
            st += t
        self.success_count += n
        self.success_ns += <long long>(st * 1e9)
        self.queue_count += n
        self.queue_ns += <long long>(sq * 1e9)
        # Triton charges every request of a batch the batch's compute times.
        self.input_count += n
        self.input_ns += pack_ns * n
        self.infer_count += n
        self.infer_ns += infer_ns * n
        self.output_count += n
        self.output_ns += out_ns * n
        self.inference_count += rows
        self.execution_count += 1
        b = self.batch_sizes.get(rows)
        if b is None:
            self.batch_sizes[rows] = [1, pack_ns, infer_ns, out_ns]
        else:
            b[0] += 1
            b[1] += pack_ns
            b[2] += infer_ns
            b[3] += out_ns
        self.pack.add(t1 - t0, 1)
        self.compute.add(t2 - t1, 1)
        self.scatter.add(t3 - t2, 1)
        self.rows.add(<double>rows, 1)
