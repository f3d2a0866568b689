# C-level contract of gateway._native.pack (convention 5).

cimport numpy as cnp

cdef struct RowSpan:
    # One contiguous source block of a batch copy: ``nbytes`` bytes starting at ``src``.
    const char* src
    Py_ssize_t nbytes

cdef Py_ssize_t check_part(object part, cnp.ndarray out, Py_ssize_t index) except -1
cdef void copy_spans(char* dst, const RowSpan* spans, Py_ssize_t n) noexcept nogil
cdef Py_ssize_t read_counts(list counts, Py_ssize_t* buf) except -1
cdef object row_view(cnp.ndarray batch, int nd, cnp.npy_intp* dims, Py_ssize_t start, int flags)
cdef list slice_views(object batch, const Py_ssize_t* counts, Py_ssize_t n)
