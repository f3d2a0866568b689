# cython: language_level=3
"""Pack the rows of many requests into one batch buffer; scatter batch outputs back as views.

Invariants: ``pack_rows`` validates every part (dtype, trailing shape, total rows) before it
writes a byte, so a rejected call leaves ``out`` untouched; the copy itself is a run of
``memcpy`` over raw bytes, without the GIL once it is large enough to matter.
``scatter_rows`` checks that the counts cover the batch exactly before it makes any view: a
model that returned the wrong number of rows fails the batch instead of handing one request
another request's rows.
"""

from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.ref cimport PyObject
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
cimport numpy as cnp

import numpy as np

cnp.import_array()

include "limits.pxi"

cdef extern from *:
    """
    /* A view of `base`'s memory: steals nothing, borrows descr (the new array takes its own
       reference), and leaves the base for the caller to set. */
    static PyObject* gw_view_from(PyArrayObject* base, int nd, npy_intp* dims, char* data,
                                  int flags) {
        PyArray_Descr* d = PyArray_DESCR(base);
        Py_INCREF(d);  /* PyArray_NewFromDescr steals it */
        return PyArray_NewFromDescr(&PyArray_Type, d, nd, dims, PyArray_STRIDES(base),
                                    data, flags, NULL);
    }
    static int gw_same_dtype(PyArrayObject* a, PyArrayObject* b) {
        return PyArray_DESCR(a) == PyArray_DESCR(b)
               || PyArray_EquivTypes(PyArray_DESCR(a), PyArray_DESCR(b));
    }
    """
    object gw_view_from(cnp.ndarray base, int nd, cnp.npy_intp* dims, char* data, int flags)
    bint gw_same_dtype(cnp.ndarray a, cnp.ndarray b)


cdef Py_ssize_t check_part(object part, cnp.ndarray out, Py_ssize_t index) except -1:
    """Rows of ``part`` after checking that they fit ``out`` (dtype and trailing shape)."""
    cdef cnp.ndarray a
    cdef int k, nd = cnp.PyArray_NDIM(out)
    if not isinstance(part, cnp.ndarray):
        raise TypeError(f"pack_rows: item {index} is a {type(part).__name__}, not a numpy array")
    a = <cnp.ndarray>part
    if not gw_same_dtype(a, out):
        raise ValueError(f"pack_rows: array {index} has dtype {part.dtype}, out has {out.dtype}")
    if cnp.PyArray_NDIM(a) != nd:
        raise ValueError(f"pack_rows: array {index} has shape {part.shape}; "
                         f"rows of out have shape {(<object>out).shape[1:]}")
    for k in range(1, nd):
        if cnp.PyArray_DIMS(a)[k] != cnp.PyArray_DIMS(out)[k]:
            raise ValueError(f"pack_rows: array {index} has shape {part.shape}; "
                             f"rows of out have shape {(<object>out).shape[1:]}")
    return cnp.PyArray_DIMS(a)[0]


cdef void copy_spans(char* dst, const RowSpan* spans, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        memcpy(dst, spans[i].src, spans[i].nbytes)
        dst += spans[i].nbytes


def pack_rows(list arrays not None, cnp.ndarray out not None):
    """Concatenate ``arrays`` along axis 0 into the preallocated C-contiguous ``out``.

    Every part must have ``out``'s dtype and trailing shape, and together exactly
    ``out.shape[0]`` rows (ValueError otherwise, with ``out`` left untouched). Fixed-size
    dtypes are copied as raw bytes; object arrays (BYTES) and non-contiguous parts take
    numpy assignment instead, which is slower but equally correct.
    """
    cdef Py_ssize_t i, n = PyList_GET_SIZE(arrays), rows = 0, total = 0
    cdef RowSpan stack[STACK_ITEMS]
    cdef RowSpan* spans = stack
    cdef bint raw
    cdef cnp.ndarray a
    cdef char* dst
    if cnp.PyArray_NDIM(out) == 0:
        raise ValueError("pack_rows: out must have at least one dimension")
    if not cnp.PyArray_IS_C_CONTIGUOUS(out):
        raise ValueError("pack_rows: out must be C-contiguous")
    if not cnp.PyArray_ISWRITEABLE(out):
        raise ValueError("pack_rows: out is read-only")
    raw = not out.dtype.hasobject
    if n > STACK_ITEMS:
        spans = <RowSpan*>malloc(n * sizeof(RowSpan))
        if spans == NULL:
            raise MemoryError()
    try:
        for i in range(n):
            part = <object>PyList_GET_ITEM(arrays, i)
            rows += check_part(part, out, i)
            a = <cnp.ndarray>part
            raw = raw and cnp.PyArray_IS_C_CONTIGUOUS(a)
            spans[i].src = cnp.PyArray_BYTES(a)
            spans[i].nbytes = cnp.PyArray_NBYTES(a)
            total += spans[i].nbytes
        if rows != cnp.PyArray_DIMS(out)[0]:
            raise ValueError(f"pack_rows: the {n} arrays hold {rows} rows but out has {(<object>out).shape[0]}")
        if not raw:
            rows = 0
            for part in arrays:
                out[rows:rows + part.shape[0]] = part
                rows += part.shape[0]
            return
        dst = cnp.PyArray_BYTES(out)
        if total < GIL_RELEASE_BYTES:
            copy_spans(dst, spans, n)
        else:
            keep = tuple(arrays)  # our own references: no source can be freed while we copy
            with nogil:
                copy_spans(dst, spans, n)
            del keep
    finally:
        if spans != stack:
            free(spans)


cdef Py_ssize_t read_counts(list counts, Py_ssize_t* buf) except -1:
    """Copy ``counts`` (ints or objects with ``__index__``) into ``buf``; return their sum."""
    cdef Py_ssize_t i, c, total = 0
    for i in range(PyList_GET_SIZE(counts)):
        c = <object>PyList_GET_ITEM(counts, i)
        if c < 0:
            raise ValueError(f"scatter_rows: count {i} is negative ({c})")
        buf[i] = c
        total += c
    return total


cdef object row_view(cnp.ndarray batch, int nd, cnp.npy_intp* dims, Py_ssize_t start, int flags):
    """``batch[start:start + dims[0]]`` built directly (no index parsing); base set to batch."""
    cdef cnp.ndarray v = gw_view_from(
        batch, nd, dims, cnp.PyArray_BYTES(batch) + start * cnp.PyArray_STRIDES(batch)[0], flags)
    cnp.set_array_base(v, batch)
    return v


cdef list slice_views(object batch, const Py_ssize_t* counts, Py_ssize_t n):
    cdef Py_ssize_t i, o = 0
    cdef list out = []
    for i in range(n):
        out.append(batch[o:o + counts[i]])
        o += counts[i]
    return out


def scatter_rows(cnp.ndarray batch not None, counts):
    """Views ``batch[o:o + n]`` for consecutive row counts ``n`` (a sequence of ints or an
    integer array). ValueError, before any view is made, unless the counts are non-negative
    and add up to ``batch.shape[0]``: the batch had the wrong number of rows.
    """
    cdef Py_ssize_t i, n = 0, total = 0
    cdef Py_ssize_t stack[STACK_ITEMS]
    cdef Py_ssize_t* buf = stack
    cdef const int64_t[::1] carr
    cdef cnp.npy_intp dims[cnp.NPY_MAXDIMS]
    cdef int k, flags, nd = cnp.PyArray_NDIM(batch)
    cdef list out
    if nd == 0:
        raise ValueError("scatter_rows: batch must have at least one dimension")
    if isinstance(counts, np.ndarray):
        if counts.ndim != 1 or counts.dtype.kind not in "iu":
            raise TypeError(f"scatter_rows: counts must be a 1-D integer array, got {counts.dtype} "
                            f"with shape {counts.shape}")
        carr = np.ascontiguousarray(counts, dtype=np.int64)
        n = carr.shape[0]
    elif type(counts) is not list:
        counts = list(counts)
    if type(counts) is list:
        n = PyList_GET_SIZE(counts)
    if n > STACK_ITEMS:
        buf = <Py_ssize_t*>malloc(n * sizeof(Py_ssize_t))
        if buf == NULL:
            raise MemoryError()
    try:
        if type(counts) is list:
            total = read_counts(counts, buf)
        else:
            for i in range(n):
                if carr[i] < 0:
                    raise ValueError(f"scatter_rows: count {i} is negative ({carr[i]})")
                buf[i] = carr[i]
                total += carr[i]
        if total != cnp.PyArray_DIMS(batch)[0]:
            raise ValueError(f"scatter_rows: the counts cover {total} rows but the batch has "
                             f"{(<object>batch).shape[0]}")
        if type(batch) is not np.ndarray:  # a subclass: let its own slicing build the views
            return slice_views(batch, buf, n)
        for k in range(nd):
            dims[k] = cnp.PyArray_DIMS(batch)[k]
        flags = cnp.PyArray_FLAGS(batch) & cnp.NPY_ARRAY_WRITEABLE
        out = [None] * n
        total = 0
        for i in range(n):
            dims[0] = buf[i]
            out[i] = row_view(batch, nd, dims, total, flags)
            total += buf[i]
        return out
    finally:
        if buf != stack:
            free(buf)
