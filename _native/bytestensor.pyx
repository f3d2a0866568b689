# cython: language_level=3
"""KServe BYTES tensors in the binary extension: each element is a 4-byte little-endian
length followed by that many bytes.

``decode_bytes_tensor`` validates the whole buffer in a C loop (no GIL for large buffers)
before it creates one ``bytes`` per element, so a truncated tensor fails without building
anything. ``encode_bytes_tensor`` measures every element first, allocates the result once and
copies into it; elements that are neither ``bytes`` nor ``str`` are converted with
``str(x).encode()`` into a list we own first, so no user ``__str__`` runs while we hold raw
pointers into element buffers.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.ref cimport Py_INCREF, Py_XDECREF, PyObject
from libc.stdint cimport uint8_t, uint32_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
cimport numpy as cnp

import numpy as np

cnp.import_array()

include "limits.pxi"

cdef extern from *:
    """
    static inline uint32_t gw_load_u32le(const uint8_t* p) {
        return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16)
               | ((uint32_t)p[3] << 24);
    }
    #define GW_IS_BYTES(o) PyBytes_Check(o)
    #define GW_IS_STR(o) PyUnicode_Check(o)
    """
    uint32_t gw_load_u32le(const uint8_t* p) noexcept nogil
    bint GW_IS_BYTES(PyObject* o)
    bint GW_IS_STR(PyObject* o)
    const char* PyUnicode_AsUTF8AndSize(PyObject* o, Py_ssize_t* size) except NULL
    PyObject** PySequence_Fast_ITEMS(object o)


cdef Py_ssize_t scan_elements(const uint8_t* p, Py_ssize_t size, Py_ssize_t* count) noexcept nogil:
    """Walk the length prefixes; return the offset where the walk stopped (``size`` when the
    buffer is well formed) and store the number of complete elements in ``count``."""
    cdef Py_ssize_t off = 0, n = 0, length
    while size - off >= 4:
        length = gw_load_u32le(p + off)
        if length > size - off - 4:
            break
        off += 4 + length
        n += 1
    count[0] = n
    return off


def decode_bytes_tensor(buf, Py_ssize_t count=-1):
    """1-D object array of the ``bytes`` elements in ``buf`` (any contiguous bytes-like).

    ValueError when an element is truncated (naming its index), or when ``count >= 0`` and
    the buffer holds a different number of elements.
    """
    cdef const uint8_t[::1] mv
    cdef const uint8_t* p
    cdef Py_ssize_t size, off, i, length, n
    cdef cnp.npy_intp dim
    cdef cnp.ndarray arr
    cdef PyObject** slots
    try:
        mv = buf
    except (TypeError, ValueError):  # other item formats or dimensions: view as plain bytes
        mv = memoryview(buf).cast("B")
    size = mv.shape[0]
    p = &mv[0] if size else NULL
    if size >= GIL_RELEASE_BYTES:
        with nogil:
            off = scan_elements(p, size, &n)
    else:
        off = scan_elements(p, size, &n)
    if off != size:
        if size - off < 4:
            raise ValueError(f"BYTES element {n} is truncated: {size - off} bytes left where its "
                             f"4-byte length prefix should be")
        raise ValueError(f"BYTES element {n} is truncated: it declares {gw_load_u32le(p + off)} "
                         f"bytes but {size - off - 4} are left")
    if count >= 0 and n != count:
        raise ValueError(f"BYTES data has {n} elements but shape implies {count}")
    dim = n
    arr = cnp.PyArray_SimpleNew(1, &dim, cnp.NPY_OBJECT)
    slots = <PyObject**>cnp.PyArray_DATA(arr)
    off = 0
    for i in range(n):
        length = gw_load_u32le(p + off)
        item = PyBytes_FromStringAndSize(<const char*>p + off + 4, length)
        Py_INCREF(item)
        Py_XDECREF(slots[i])
        slots[i] = <PyObject*>item
        off += 4 + length
    return arr


cdef Py_ssize_t measure(PyObject** items, Py_ssize_t n, const char** ptrs,
                        Py_ssize_t* lens) except -2:
    """Record each element's UTF-8/bytes buffer; return the encoded size, or -1 when an
    element is neither bytes nor str (the caller converts and retries)."""
    cdef Py_ssize_t i, total = 0
    cdef PyObject* x
    for i in range(n):
        x = items[i]
        if x == NULL:
            return -1
        if GW_IS_BYTES(x):
            ptrs[i] = PyBytes_AS_STRING(<object>x)
            lens[i] = PyBytes_GET_SIZE(<object>x)
        elif GW_IS_STR(x):
            ptrs[i] = PyUnicode_AsUTF8AndSize(x, &lens[i])
        else:
            return -1
        if lens[i] > 0xFFFFFFFF:
            raise ValueError(f"BYTES element {i} has {lens[i]} bytes; the format allows 2**32 - 1")
        total += 4 + lens[i]
    return total


cdef void write_parts(char* dst, const char** ptrs, const Py_ssize_t* lens,
                      Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef uint32_t length
    cdef uint8_t* q
    for i in range(n):
        length = <uint32_t>lens[i]
        q = <uint8_t*>dst
        q[0] = length & 0xFF
        q[1] = (length >> 8) & 0xFF
        q[2] = (length >> 16) & 0xFF
        q[3] = length >> 24
        memcpy(dst + 4, ptrs[i], lens[i])
        dst += 4 + lens[i]


cdef bytes pack_parts(PyObject** items, Py_ssize_t n):
    """Encode ``items`` (bytes or str); None when some item needs a ``str()`` first."""
    cdef const char** ptrs = <const char**>malloc((n + 1) * sizeof(char*))
    cdef Py_ssize_t* lens = <Py_ssize_t*>malloc((n + 1) * sizeof(Py_ssize_t))
    cdef Py_ssize_t total
    cdef bytes out
    cdef char* dst
    try:
        if ptrs == NULL or lens == NULL:
            raise MemoryError()
        total = measure(items, n, ptrs, lens)
        if total < 0:
            return None
        out = PyBytes_FromStringAndSize(NULL, total)
        dst = PyBytes_AS_STRING(out)
        if total >= GIL_RELEASE_BYTES:
            with nogil:
                write_parts(dst, ptrs, lens, n)
        else:
            write_parts(dst, ptrs, lens, n)
        return out
    finally:
        free(ptrs)
        free(lens)


def encode_bytes_tensor(arr):
    """Length-prefixed encoding of every element of ``arr`` (any shape, row-major).

    ``bytes`` are written as they are, ``str`` as UTF-8, anything else as ``str(x)`` in UTF-8.
    ``arr`` may be an object, ``S`` or ``U`` array, or anything ``np.asarray`` accepts.
    """
    cdef cnp.ndarray flat
    cdef str kind
    if not isinstance(arr, np.ndarray):
        arr = np.asarray(arr, dtype=object)
    kind = arr.dtype.kind
    if kind == "O":
        flat = np.ascontiguousarray(arr.reshape(-1))
    elif kind == "S" or kind == "U":
        flat = arr.reshape(-1).astype(object)
    else:  # numbers encoded as text, formatted like the scalars arr.flat yields
        flat = np.fromiter(arr.flat, dtype=object, count=arr.size)
    out = pack_parts(<PyObject**>cnp.PyArray_DATA(flat), flat.shape[0])
    if out is None:
        parts = [x if isinstance(x, bytes) else x.encode() if isinstance(x, str) else str(x).encode()
                 for x in flat]
        out = pack_parts(PySequence_Fast_ITEMS(parts), len(parts))
    return out
