# cython: language_level=3
"""JSON-decoded number lists -> flat typed numpy arrays, with no numpy type discovery.

``list_to_array`` walks the (possibly nested) Python list that orjson produced and writes each
number straight into a preallocated buffer of the tensor's dtype. Accepted element types, by
datatype (exact ``int``/``float`` and their subclasses; ``bool`` is *not* a number here):

* BOOL: ``True``/``False``, and the ints 0 and 1 (some clients send 0/1); nothing else.
* INT*/UINT*: ints within the dtype's range (OverflowError naming the range otherwise);
  floats are rejected even when integral (``1.0``), as a typed protocol should.
* FP16/FP32/FP64: ints and floats, converted as numpy does (via a C double; FP16 is filled as
  FP64 and cast once, so rounding matches ``np.asarray(data, dtype=float16)``). Values beyond
  the type's range become +-inf without numpy's RuntimeWarning; an int too large for a double
  raises OverflowError.

Nested lists are flattened row-major, and must nest evenly, as a regular array would: every
list at one depth as long as the first list at that depth, numbers only at the deepest level
(``[[1, 2], [3]]`` and ``[1, [2]]`` are ValueErrors, as is nesting deeper than 64 levels).
The flat case is filled in one pass; when a nested list is met the nesting is checked and
the leaves counted first, and the fill is restarted on an exactly sized buffer.
Invariant: no Python code runs between the count and the fill (only exact or subclass
int/float reads), so the list cannot change size under us; the fill checks anyway.
"""

from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.ref cimport PyObject
from libc.math cimport fabs, isfinite
from libc.limits cimport LLONG_MAX, LLONG_MIN
from libc.stdint cimport (int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t,
                          uint64_t)
cimport numpy as cnp

import numpy as np

cnp.import_array()

include "limits.pxi"

cdef extern from *:
    """
    /* Element classification without a Python reference per element. */
    #define GW_IS_FLOAT(o) (Py_IS_TYPE((o), &PyFloat_Type) || PyFloat_Check(o))
    #define GW_IS_INT(o) (Py_IS_TYPE((o), &PyLong_Type) || (PyLong_Check(o) && !PyBool_Check(o)))
    #define GW_IS_LIST(o) PyList_Check(o)
    #define GW_IS_EXACT_INT(o) PyLong_CheckExact(o)
    """
    bint GW_IS_FLOAT(PyObject* o)
    bint GW_IS_INT(PyObject* o)
    bint GW_IS_LIST(PyObject* o)
    bint GW_IS_EXACT_INT(PyObject* o)
    double PyFloat_AS_DOUBLE(PyObject* o)
    double PyLong_AsDouble(PyObject* o) except? -1.0
    long long PyLong_AsLongLongAndOverflow(PyObject* o, int* overflow) except? -1
    unsigned long long PyLong_AsUnsignedLongLong(PyObject* o) except? <unsigned long long>-1
    PyObject* Py_True
    PyObject* Py_False

# Indexed by DType.
cdef object _NAMES = ("BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
                      "UINT64", "FP16", "FP32", "FP64")
cdef dict _CODES = {name: i for i, name in enumerate(_NAMES)}
cdef int[12] _TYPENUM = [cnp.NPY_BOOL, cnp.NPY_INT8, cnp.NPY_INT16, cnp.NPY_INT32, cnp.NPY_INT64,
                         cnp.NPY_UINT8, cnp.NPY_UINT16, cnp.NPY_UINT32, cnp.NPY_UINT64,
                         cnp.NPY_FLOAT64, cnp.NPY_FLOAT32, cnp.NPY_FLOAT64]
cdef long long[12] _LO = [0, -128, -32768, -2147483648, LLONG_MIN,
                          0, 0, 0, 0, 0, 0, 0]
cdef long long[12] _HI = [1, 127, 32767, 2147483647, LLONG_MAX,
                          255, 65535, 4294967295, LLONG_MAX, 0, 0, 0]
cdef object _FP16 = np.dtype("<f2")

# Sentinel returned by the flat (top-level-only) fill when it meets a nested list.
cdef enum:
    NESTED = -2


cdef str _short(object obj):
    text = repr(obj)
    return text if len(text) <= 40 else text[:37] + "..."


cdef int bad_element(PyObject* x, Py_ssize_t pos, int dt) except -1:
    name = _NAMES[dt]
    want = ("true/false (or 0/1)" if dt == DT_BOOL else
            "integers" if dt < DT_FP16 else "numbers")
    obj = <object>x
    raise ValueError(f"element {pos} is {type(obj).__name__} {_short(obj)}; {name} data must hold {want}")


cdef int out_of_range(PyObject* x, Py_ssize_t pos, int dt) except -1:
    cdef unsigned long long hi = <unsigned long long>_HI[dt]
    if dt == DT_UINT64:
        hi = 18446744073709551615ULL
    if dt == DT_BOOL:
        raise ValueError(f"element {pos} is int {_short(<object>x)}; BOOL data must hold true/false (or 0/1)")
    raise OverflowError(f"element {pos} = {_short(<object>x)} is out of range for {_NAMES[dt]} "
                        f"[{_LO[dt]}, {hi}]")


cdef int check_even(list lst, const Py_ssize_t* dims, int ndim, int depth) except -1:
    """Every list at ``depth`` has ``dims[depth]`` items: lists above the deepest level,
    numbers (anything but a list) at it."""
    cdef Py_ssize_t i, n = PyList_GET_SIZE(lst)
    cdef PyObject* x
    if n != dims[depth]:
        raise ValueError(f"data nests unevenly: a list at depth {depth} has {n} items where the "
                         f"first list at that depth has {dims[depth]}")
    if depth == ndim - 1:
        for i in range(n):
            if GW_IS_LIST(PyList_GET_ITEM(lst, i)):
                raise ValueError(f"data nests unevenly: a list at depth {depth + 1}, where the first "
                                 f"element at that depth is a number")
        return 0
    for i in range(n):
        x = PyList_GET_ITEM(lst, i)
        if not GW_IS_LIST(x):
            raise ValueError(f"data nests unevenly: a number at depth {depth + 1}, where the first "
                             f"element at that depth is a list")
        check_even(<list>x, dims, ndim, depth + 1)
    return 0


cdef Py_ssize_t count_leaves(list lst) except -1:
    """Leaves of a nested list that nests evenly (ValueError otherwise): the shape is read
    down the first elements, then every list is checked against it."""
    cdef Py_ssize_t dims[MAX_NEST_DEPTH]
    cdef int ndim = 0, k
    cdef Py_ssize_t n = 1
    cdef list x = lst
    cdef PyObject* first
    while True:
        if ndim == MAX_NEST_DEPTH:
            raise ValueError(f"data nests lists deeper than {MAX_NEST_DEPTH} levels")
        dims[ndim] = PyList_GET_SIZE(x)
        ndim += 1
        if dims[ndim - 1] == 0:
            break
        first = PyList_GET_ITEM(x, 0)
        if not GW_IS_LIST(first):
            break
        x = <list>first
    check_even(lst, dims, ndim, 0)
    for k in range(ndim):  # the checked product is the real number of leaves: no overflow
        n *= dims[k]
    return n


cdef Py_ssize_t fill_float(list lst, char* out, Py_ssize_t pos, Py_ssize_t cap, int dt,
                           int depth) except -1:
    """Write the leaves of ``lst`` from ``out[pos]``; return the next position. ``cap < 0``:
    flat mode, return NESTED at the first nested list."""
    cdef Py_ssize_t i
    cdef PyObject* x
    cdef double d = 0
    for i in range(PyList_GET_SIZE(lst)):
        x = PyList_GET_ITEM(lst, i)
        if GW_IS_FLOAT(x):
            d = PyFloat_AS_DOUBLE(x)
        elif GW_IS_INT(x):
            try:
                d = PyLong_AsDouble(x)
            except OverflowError:
                raise OverflowError(f"element {pos} = {_short(<object>x)} is too large for {_NAMES[dt]}") from None
        elif GW_IS_LIST(x):
            if cap < 0:
                return NESTED
            pos = fill_float(<list>x, out, pos, cap, dt, depth + 1)
            continue
        else:
            bad_element(x, pos, dt)
        if cap >= 0 and pos >= cap:
            raise RuntimeError("data changed while it was being converted")
        if dt == DT_FP32:
            (<float*>out)[pos] = <float>d
        else:
            (<double*>out)[pos] = d
        pos += 1
    return pos


cdef Py_ssize_t fill_int(list lst, char* out, Py_ssize_t pos, Py_ssize_t cap, int dt,
                         int depth) except -1:
    cdef Py_ssize_t i
    cdef PyObject* x
    cdef long long v
    cdef unsigned long long u = 0
    cdef int overflow
    cdef long long lo = _LO[dt], hi = _HI[dt]
    for i in range(PyList_GET_SIZE(lst)):
        x = PyList_GET_ITEM(lst, i)
        if GW_IS_INT(x):
            v = PyLong_AsLongLongAndOverflow(x, &overflow)
            if overflow == 0 and lo <= v <= hi:
                u = <unsigned long long>v
            elif overflow > 0 and dt == DT_UINT64:
                try:
                    u = PyLong_AsUnsignedLongLong(x)
                except OverflowError:
                    out_of_range(x, pos, dt)
            else:
                out_of_range(x, pos, dt)
        elif GW_IS_LIST(x):
            if cap < 0:
                return NESTED
            pos = fill_int(<list>x, out, pos, cap, dt, depth + 1)
            continue
        else:
            bad_element(x, pos, dt)
        if cap >= 0 and pos >= cap:
            raise RuntimeError("data changed while it was being converted")
        if dt == DT_INT64 or dt == DT_UINT64:
            (<uint64_t*>out)[pos] = u
        elif dt == DT_INT32 or dt == DT_UINT32:
            (<uint32_t*>out)[pos] = <uint32_t>u
        elif dt == DT_INT16 or dt == DT_UINT16:
            (<uint16_t*>out)[pos] = <uint16_t>u
        else:
            (<uint8_t*>out)[pos] = <uint8_t>u
        pos += 1
    return pos


cdef Py_ssize_t fill_bool(list lst, char* out, Py_ssize_t pos, Py_ssize_t cap, int depth) except -1:
    cdef Py_ssize_t i
    cdef PyObject* x
    cdef long long v
    cdef int overflow
    cdef uint8_t b = 0
    for i in range(PyList_GET_SIZE(lst)):
        x = PyList_GET_ITEM(lst, i)
        if x == Py_True:
            b = 1
        elif x == Py_False:
            b = 0
        elif GW_IS_INT(x):
            v = PyLong_AsLongLongAndOverflow(x, &overflow)
            if overflow != 0 or (v != 0 and v != 1):
                out_of_range(x, pos, DT_BOOL)
            b = <uint8_t>v
        elif GW_IS_LIST(x):
            if cap < 0:
                return NESTED
            pos = fill_bool(<list>x, out, pos, cap, depth + 1)
            continue
        else:
            bad_element(x, pos, DT_BOOL)
        if cap >= 0 and pos >= cap:
            raise RuntimeError("data changed while it was being converted")
        (<uint8_t*>out)[pos] = b
        pos += 1
    return pos


cdef bint fp16_overflows(const double* v, Py_ssize_t n) noexcept nogil:
    """True when a finite value rounds past FP16's largest (65504), so the cast would warn."""
    cdef Py_ssize_t i
    for i in range(n):
        if fabs(v[i]) >= 65520.0 and isfinite(v[i]):
            return True
    return False


cdef Py_ssize_t fill(list lst, char* out, Py_ssize_t cap, int dt) except -1:
    if dt == DT_BOOL:
        return fill_bool(lst, out, 0, cap, 1)
    if dt >= DT_FP16:
        return fill_float(lst, out, 0, cap, dt, 1)
    return fill_int(lst, out, 0, cap, dt, 1)


def list_to_array(data, str datatype not None, Py_ssize_t expected_count=-1):
    """Flat 1-D array of KServe ``datatype`` from a JSON-decoded, possibly nested list.

    ValueError for a non-list, an element of the wrong type (named by its flat index), uneven
    nesting or nesting deeper than 64 levels, or (``expected_count >= 0``) a count that differs
    from the shape's;
    OverflowError for an integer outside the dtype's range.
    """
    cdef object code = _CODES.get(datatype)
    cdef int dt
    cdef cnp.npy_intp n
    cdef Py_ssize_t got
    cdef cnp.ndarray arr
    if code is None:
        raise ValueError(f"list_to_array: datatype {datatype!r} is not a numeric KServe datatype")
    dt = <int>code
    if not isinstance(data, list):
        raise ValueError(f"data must be a JSON array, got {type(data).__name__}")
    n = PyList_GET_SIZE(<list>data)
    got = NESTED
    if expected_count < 0 or n == expected_count:  # likely flat: try in one pass
        arr = cnp.PyArray_EMPTY(1, &n, _TYPENUM[dt], 0)
        got = fill(<list>data, cnp.PyArray_BYTES(arr), -1, dt)
    if got == NESTED:
        n = count_leaves(<list>data)
        if expected_count >= 0 and n != expected_count:
            raise ValueError(f"data has {n} elements but shape implies {expected_count}")
        arr = cnp.PyArray_EMPTY(1, &n, _TYPENUM[dt], 0)
        got = fill(<list>data, cnp.PyArray_BYTES(arr), n, dt)
        if got != n:
            raise RuntimeError("data changed while it was being converted")
    if dt == DT_FP16:
        if fp16_overflows(<const double*>cnp.PyArray_DATA(arr), n):
            with np.errstate(over="ignore"):  # overflow to +-inf, as for FP32, without a warning
                return arr.astype(_FP16)
        return arr.astype(_FP16)
    return arr


def json_tensor(dict inp):
    """Fast path for one JSON input object of a numeric datatype: ``(name, array)`` with the
    array already shaped, or ``None`` when the object needs the general decoder (binary
    extension parameters, BYTES, a missing or malformed field). One call per input instead
    of a dozen interpreted checks; conversion errors raise as in ``list_to_array``.
    """
    cdef object name = inp.get("name")
    cdef object datatype = inp.get("datatype")
    cdef object shape = inp.get("shape")
    cdef object data
    cdef object code
    cdef Py_ssize_t i, ndim, count = 1, span = 1
    cdef PyObject* d
    cdef long long v
    cdef int overflow
    cdef cnp.ndarray arr
    if type(name) is not str or type(datatype) is not str or type(shape) is not list:
        return None
    if inp.get("parameters") is not None:
        return None
    code = _CODES.get(datatype)
    if code is None:
        return None
    ndim = PyList_GET_SIZE(<list>shape)
    if ndim > MAX_DIMS:
        return None  # the general decoder names the problem
    for i in range(ndim):
        d = PyList_GET_ITEM(<list>shape, i)
        if not GW_IS_EXACT_INT(d):
            return None
        v = PyLong_AsLongLongAndOverflow(d, &overflow)
        if overflow or v < 0 or v > 0x7fffffff:
            return None
        count *= v
        if v:  # an empty tensor's other dimensions must fit numpy too
            span *= v
            if span > (1LL << 40):
                return None
    data = inp.get("data")
    if data is None:
        return None
    arr = list_to_array(data, <str>datatype, count)
    return name, arr.reshape(shape)
