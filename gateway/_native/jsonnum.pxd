# C-level contract of gateway._native.jsonnum (convention 5).

from cpython.ref cimport PyObject

cdef enum DType:
    # KServe datatypes that list_to_array fills; FP16 is filled as FP64, then cast once.
    DT_BOOL, DT_INT8, DT_INT16, DT_INT32, DT_INT64
    DT_UINT8, DT_UINT16, DT_UINT32, DT_UINT64, DT_FP16, DT_FP32, DT_FP64

cdef int check_even(list lst, const Py_ssize_t* dims, int ndim, int depth) except -1
cdef Py_ssize_t count_leaves(list lst) except -1
cdef Py_ssize_t fill_float(list lst, char* out, Py_ssize_t pos, Py_ssize_t cap, int dt,
                           int depth) except -1
cdef Py_ssize_t fill_int(list lst, char* out, Py_ssize_t pos, Py_ssize_t cap, int dt,
                         int depth) except -1
cdef Py_ssize_t fill_bool(list lst, char* out, Py_ssize_t pos, Py_ssize_t cap, int depth) except -1
cdef Py_ssize_t fill(list lst, char* out, Py_ssize_t cap, int dt) except -1
cdef int bad_element(PyObject* x, Py_ssize_t pos, int dt) except -1
cdef int out_of_range(PyObject* x, Py_ssize_t pos, int dt) except -1
cdef str _short(object obj)
cdef bint fp16_overflows(const double* v, Py_ssize_t n) noexcept nogil
