# C-level contract of gateway._native.hist (see _native/hist.pyx).

cdef class Histogram:
    cdef double* bounds
    cdef long long* counts
    cdef Py_ssize_t n
    cdef double total
    cdef void add(self, double v, long long k) noexcept nogil
    cpdef void observe(self, double v, long long k=*)


cdef class BatchRecorder:
    cdef public long long success_count, success_ns, queue_count, queue_ns
    cdef public long long input_count, input_ns, infer_count, infer_ns, output_count, output_ns
    cdef public long long inference_count, execution_count
    cdef public dict batch_sizes  # rows -> [executions, input ns, infer ns, output ns]
    cdef public Histogram queue, total, pack, compute, scatter, rows
