# cython: language_level=3
"""The per-request signature check's accepting path in C: one call instead of a loop of
interpreted comparisons per input.

``accepted_rows(specs, inputs, batching, outputs, output_names)`` returns the request's rows
when every input is there with the model's dtype, rank and fixed dimensions, C-contiguous,
the batch dimensions agree and every requested output exists; else -1, and the caller runs the
interpreted ``validate.check_request``, which names what is wrong (or makes a strided input
contiguous). It never decides a refusal itself, so the messages live in one place.
``specs``: ``((name, numpy dtype, shape), ...)`` as ``Signature.checks`` precomputes it.
"""

from cpython.dict cimport PyDict_GetItem, PyDict_Size
from cpython.ref cimport PyObject
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
cimport numpy as cnp

cnp.import_array()


def accepted_rows(tuple specs not None, dict inputs not None, bint batching, outputs, frozenset output_names):
    cdef Py_ssize_t n = PyTuple_GET_SIZE(specs), i, d, nd, rows = -1
    cdef PyObject* item
    cdef PyObject* obj
    cdef tuple spec, shape
    cdef cnp.ndarray arr
    cdef cnp.npy_intp* dims
    cdef long want
    if PyDict_Size(inputs) != n:
        return -1
    for i in range(n):
        spec = <tuple>PyTuple_GET_ITEM(specs, i)
        obj = PyDict_GetItem(inputs, <object>PyTuple_GET_ITEM(spec, 0))
        if obj == NULL or not cnp.PyArray_CheckExact(<object>obj):
            return -1
        arr = <cnp.ndarray>obj
        if <PyObject*>cnp.PyArray_DESCR(arr) != PyTuple_GET_ITEM(spec, 1):
            if arr.dtype != <object>PyTuple_GET_ITEM(spec, 1):  # an equal dtype that is not the singleton
                return -1
        shape = <tuple>PyTuple_GET_ITEM(spec, 2)
        nd = PyTuple_GET_SIZE(shape)
        if cnp.PyArray_NDIM(arr) != nd or not cnp.PyArray_IS_C_CONTIGUOUS(arr):
            return -1
        dims = cnp.PyArray_DIMS(arr)
        for d in range(1 if batching else 0, nd):
            want = <long><object>PyTuple_GET_ITEM(shape, d)
            if want != -1 and dims[d] != want:
                return -1
        if batching:
            if nd == 0 or dims[0] < 1 or (rows != -1 and dims[0] != rows):
                return -1
            rows = dims[0]
    if outputs is not None:
        for name in outputs:
            if name not in output_names:
                return -1
    return rows if batching else 1
