# C-level contract of gateway._native.bytestensor (convention 5).

from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t

cdef Py_ssize_t scan_elements(const uint8_t* p, Py_ssize_t size, Py_ssize_t* count) noexcept nogil
cdef Py_ssize_t measure(PyObject** items, Py_ssize_t n, const char** ptrs,
                        Py_ssize_t* lens) except -2
cdef void write_parts(char* dst, const char** ptrs, const Py_ssize_t* lens,
                      Py_ssize_t n) noexcept nogil
cdef bytes pack_parts(PyObject** items, Py_ssize_t n)
