# distutils: language = c++
# cython: language_level=3
"""KServe v2 REST infer responses -> bytes: JSON numbers with ``std::to_chars``, and the whole
HTTP/1.1 200 answer (head and body) in one buffer.

Numbers have one definition, used by every encoder of the HTTP front (``codec.encode_infer``'s
general path embeds ``json_array`` as an ``orjson.Fragment``), so that every path writes the
same bytes:

* FP32 / FP64: the shortest text that reads back as the same float (``std::to_chars``), with
  ``.0`` appended when that text is integral (``1.0``, as orjson writes, so JSON readers see a
  float); FP16: the shortest FP32 text of the half's value (as orjson). NaN and +-inf: ``null``
  (as orjson: JSON has no spelling for them).
* INT* / UINT*: decimal. BOOL: ``true`` / ``false``.

The body is laid out exactly as ``codec.encode_infer`` has always written it (key order, the
binary extension's ``binary_data_size`` parameters, the raw tensors after the JSON header in
output order). Strings repeat across responses, so their JSON fragments are cached (bounded);
``id`` is copied when it is plain ASCII with nothing to escape, and left to orjson otherwise.
BYTES outputs go through ``encode_bytes_tensor`` (binary) or orjson (JSON) per output.

The buffer is sized once from per-value bounds, the values are formatted in a C++ loop (without
the GIL for large tensors), and the bytes object is shrunk once to what was written.
"""

from cpython.bytes cimport PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.ref cimport Py_DECREF, PyObject
from libc.string cimport memcpy, memmove
cimport numpy as cnp

import numpy as np
import orjson

from gateway._native.bytestensor import encode_bytes_tensor
from gateway.types import numpy_to_datatype

cnp.import_array()

include "limits.pxi"

cdef extern from *:
    """
    #include <charconv>
    #include <cmath>
    #include <cstdint>
    #include <cstring>

    enum { GW_BOOL, GW_I8, GW_I16, GW_I32, GW_I64, GW_U8, GW_U16, GW_U32, GW_U64,
           GW_F16, GW_F32, GW_F64 };

    /* Most bytes one value takes, its comma included. to_chars' shortest float text is at most
       "-2.2250738585072014e-308" (24) or "-1.17549435e-38" (15); it is fixed-point when that is
       no longer than scientific, and then may get ".0": at most 25 (double) / 17 (float) with
       a sign. Two bytes spare for each float type. */
    static const Py_ssize_t gw_width[] = {6, 5, 7, 12, 21, 4, 6, 11, 21, 20, 20, 28};

    static inline float gw_half_to_float(uint16_t h) {
        uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, f;
        if (exp == 0) {
            if (mant == 0) {
                f = sign;
            } else {  /* subnormal half: a normal float */
                exp = 113;
                while (!(mant & 0x400u)) { mant <<= 1; exp--; }
                f = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
            }
        } else if (exp == 31) {
            f = sign | 0x7f800000u | (mant << 13);
        } else {
            f = sign | ((exp + 112) << 23) | (mant << 13);
        }
        float out;
        std::memcpy(&out, &f, 4);
        return out;
    }

    template <typename F> static inline char* gw_put_float(char* p, F v) {
        if (!std::isfinite(v)) { std::memcpy(p, "null", 4); return p + 4; }
        char* e = std::to_chars(p, p + 32, v).ptr;
        for (char* q = p; q < e; ++q) if (*q == '.' || *q == 'e') return e;
        e[0] = '.'; e[1] = '0';
        return e + 2;
    }

    template <typename I> static inline char* gw_put_int(char* p, I v) {
        return std::to_chars(p, p + 24, v).ptr;
    }

    template <typename T, typename Put> static inline char* gw_loop(char* p, const char* src, Py_ssize_t n, Put put) {
        T v;
        *p++ = '[';
        for (Py_ssize_t i = 0; i < n; ++i) {
            if (i) *p++ = ',';
            std::memcpy(&v, src + i * (Py_ssize_t)sizeof(T), sizeof(T));
            p = put(p, v);
        }
        *p++ = ']';
        return p;
    }

    /* "[v,v,...]" of n values of type `code` at src (C order, native byte order); returns the end. */
    static char* gw_put_array(char* p, const char* src, Py_ssize_t n, int code) {
        auto i_ = [](char* q, auto v) { return gw_put_int(q, v); };
        auto f_ = [](char* q, auto v) { return gw_put_float(q, v); };
        switch (code) {
        case GW_BOOL: return gw_loop<uint8_t>(p, src, n, [](char* q, uint8_t v) {
            if (v) { std::memcpy(q, "true", 4); return q + 4; }
            std::memcpy(q, "false", 5); return q + 5; });
        case GW_I8: return gw_loop<int8_t>(p, src, n, i_);
        case GW_I16: return gw_loop<int16_t>(p, src, n, i_);
        case GW_I32: return gw_loop<int32_t>(p, src, n, i_);
        case GW_I64: return gw_loop<int64_t>(p, src, n, i_);
        case GW_U8: return gw_loop<uint8_t>(p, src, n, i_);
        case GW_U16: return gw_loop<uint16_t>(p, src, n, i_);
        case GW_U32: return gw_loop<uint32_t>(p, src, n, i_);
        case GW_U64: return gw_loop<uint64_t>(p, src, n, i_);
        case GW_F16: return gw_loop<uint16_t>(p, src, n, [](char* q, uint16_t v) {
            return gw_put_float(q, gw_half_to_float(v)); });
        case GW_F32: return gw_loop<float>(p, src, n, f_);
        default: return gw_loop<double>(p, src, n, f_);
        }
    }

    static inline char* gw_put_size(char* p, Py_ssize_t v) { return std::to_chars(p, p + 24, v).ptr; }
    static inline int gw_digits(Py_ssize_t v) { int d = 1; while (v >= 10) { v /= 10; d++; } return d; }
    #define GW_IS_ASCII(o) PyUnicode_IS_ASCII(o)
    #define GW_ASCII_DATA(o) ((const char*)PyUnicode_DATA(o))
    """
    enum:
        GW_BOOL, GW_I8, GW_I16, GW_I32, GW_I64, GW_U8, GW_U16, GW_U32, GW_U64, GW_F16, GW_F32, GW_F64
    const Py_ssize_t* gw_width
    char* gw_put_array(char* p, const char* src, Py_ssize_t n, int code) noexcept nogil
    char* gw_put_size(char* p, Py_ssize_t v) noexcept nogil
    int gw_digits(Py_ssize_t v) noexcept nogil
    bint GW_IS_ASCII(object o)
    const char* GW_ASCII_DATA(object o)
    int _PyBytes_Resize(PyObject** b, Py_ssize_t n) except -1
    PyObject* PyBytes_FromStringAndSize(const char* s, Py_ssize_t n) except NULL
    char* PyBytes_AS_STRING(PyObject* b) noexcept


cdef object _dumps = orjson.dumps
cdef object _NUMPY_OPT = orjson.OPT_SERIALIZE_NUMPY
cdef object _np_asc = np.ascontiguousarray
cdef dict _HEADS = {}  # (model, version) -> b'{"model_name":...,"model_version":...'
cdef dict _OUT_HEADS = {}  # (output name, dtype) -> b'{"name":...,"datatype":...,"shape":'
cdef enum:
    CACHE_MAX = 4096  # entries per fragment cache (model names and outputs are few)
    RAW_JSON = -1  # a BYTES output's data, already JSON text
    RAW_BIN = -2  # a binary output's bytes (any datatype), sent after the JSON header
    BIN_FLAG = 64  # added to a numeric code: the tensor's bytes are sent after the JSON header

cdef bytes _OK_JSON = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
cdef bytes _OK_BIN = (b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                      b"inference-header-content-length: ")
cdef bytes _CL = b"\r\ncontent-length: "
cdef bytes _BIN_PARAMS = b',"parameters":{"binary_data_size":'


cdef int dtype_code(cnp.ndarray arr) except -2:
    """The GW_* code of a numeric/bool array; -1 for BYTES-like (object, bytes, str) arrays.
    Other dtypes raise the ValueError that ``numpy_to_datatype`` raises for them."""
    cdef char kind = arr.descr.kind
    cdef Py_ssize_t size = cnp.PyArray_ITEMSIZE(arr)
    if kind == b'f':
        if size == 4:
            return GW_F32
        if size == 8:
            return GW_F64
        if size == 2:
            return GW_F16
    elif kind == b'i' or kind == b'u':
        if size == 1:
            return GW_I8 if kind == b'i' else GW_U8
        if size == 2:
            return GW_I16 if kind == b'i' else GW_U16
        if size == 4:
            return GW_I32 if kind == b'i' else GW_U32
        if size == 8:
            return GW_I64 if kind == b'i' else GW_U64
    elif kind == b'b':
        return GW_BOOL
    elif kind == b'O' or kind == b'S' or kind == b'U':
        return -1
    numpy_to_datatype(arr.dtype)  # raises, naming the dtype
    raise ValueError(f"unsupported numpy dtype {arr.dtype}")


cdef inline cnp.ndarray native_contiguous(cnp.ndarray arr):
    """``arr`` itself when C-contiguous in native byte order, else such a copy (keeps ndim)."""
    if cnp.PyArray_IS_C_CONTIGUOUS(arr) and cnp.PyArray_ISNOTSWAPPED(arr):
        return arr
    return <cnp.ndarray>np.array(arr, dtype=arr.dtype.newbyteorder("="), order="C", copy=True)


cdef inline char* put_bytes(char* p, bytes b) noexcept:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    memcpy(p, PyBytes_AS_STRING(<PyObject*>b), n)
    return p + n


cdef object finish(PyObject* ob, Py_ssize_t used, Py_ssize_t cap):
    """The bytes object ``ob`` (a new reference, ``cap`` bytes) shrunk to its first ``used``."""
    if used > cap:  # the per-value bounds are maxima: this is a bug, and memory is already hurt
        Py_DECREF(<object>ob)
        raise SystemError(f"inferenc wrote {used} bytes into {cap}")
    _PyBytes_Resize(&ob, used)  # on failure it frees ob and sets the exception
    out = <object>ob
    Py_DECREF(out)
    return out


cdef inline char* put_shape(char* p, cnp.ndarray arr) noexcept:
    cdef int nd = cnp.PyArray_NDIM(arr), i
    cdef cnp.npy_intp* dims = cnp.PyArray_DIMS(arr)
    p[0] = b'['
    p += 1
    for i in range(nd):
        if i:
            p[0] = b','
            p += 1
        p = gw_put_size(p, dims[i])
    p[0] = b']'
    return p + 1


cdef char* put_values(char* p, cnp.ndarray arr, int code) noexcept:
    cdef Py_ssize_t n = cnp.PyArray_SIZE(arr)
    cdef const char* src = <const char*>cnp.PyArray_DATA(arr)
    if n * cnp.PyArray_ITEMSIZE(arr) >= GIL_RELEASE_BYTES:
        with nogil:
            p = gw_put_array(p, src, n, code)
        return p
    return gw_put_array(p, src, n, code)


cdef bint plain_ascii(str s):
    """True when ``s`` is ASCII with nothing JSON must escape: its UTF-8 is its JSON text."""
    if not GW_IS_ASCII(s):
        return False
    cdef const char* p = GW_ASCII_DATA(s)
    cdef Py_ssize_t i, n = len(s)
    cdef char c
    for i in range(n):
        c = p[i]
        if c < 0x20 or c == b'"' or c == b'\\':
            return False
    return True


cdef bytes out_head(str name, object dtype):
    key = (name, dtype)
    cdef object head = _OUT_HEADS.get(key)
    if head is None:
        if len(_OUT_HEADS) >= CACHE_MAX:
            _OUT_HEADS.clear()
        frag = <bytes>_dumps({"name": name, "datatype": numpy_to_datatype(dtype)})
        head = _OUT_HEADS[key] = frag[:len(frag) - 1] + b',"shape":'
    return <bytes>head


cdef object encode(object resp, object binary, bytes extra):
    """The body (``extra`` None) or the whole HTTP answer; see ``encode_body``/``http_response``.
    Returns (bytes, header length or -1), or None for outputs that are not numpy arrays."""
    return encode_parts(resp.model_name, resp.model_version, resp.outputs, resp.id, resp.parameters,
                        binary, extra)


cdef object encode_parts(object model_name, object model_version, dict outputs, object rid, object params,
                         object binary, bytes extra):
    """``encode`` of a response given by its fields (the lane has no InferResponse to give)."""
    cdef list refs = []  # per output: original array, head fragment, data object, code
    cdef cnp.ndarray arr, data
    cdef int code
    cdef bint every = binary is not None and "*" in binary
    cdef bint any_bin = False, is_bin
    cdef Py_ssize_t est, jlen, blen, bins = 0, off = 0, hlen, n, i
    cdef bytes rid_frag = None, params_frag = None, head
    cdef object raw
    key = (model_name, model_version)
    cdef object model_head = _HEADS.get(key)
    if model_head is None:
        if len(_HEADS) >= CACHE_MAX:
            _HEADS.clear()
        frag = <bytes>_dumps({"model_name": model_name, "model_version": model_version})
        model_head = _HEADS[key] = frag[:len(frag) - 1]
    est = PyBytes_GET_SIZE(model_head) + 16  # ,"outputs":[ ... ]}
    if rid:
        if type(rid) is str and plain_ascii(<str>rid):
            est += 8 + len(<str>rid)
        else:
            rid_frag = _dumps(rid)
            est += 6 + PyBytes_GET_SIZE(rid_frag)
    if params:
        params_frag = _dumps(params, option=_NUMPY_OPT)
        est += 14 + PyBytes_GET_SIZE(params_frag)
    for name, obj in outputs.items():
        if type(obj) is not cnp.ndarray:
            return None
        arr = <cnp.ndarray>obj
        head = out_head(name, arr.dtype)
        is_bin = binary is not None and (every or name in binary)
        any_bin |= is_bin
        est += PyBytes_GET_SIZE(head) + 2 + 21 * cnp.PyArray_NDIM(arr) + 2
        code = dtype_code(arr)
        if code < 0:  # BYTES: one Python-level encoding, as the general path does
            if is_bin:
                raw = encode_bytes_tensor(arr)
                code = RAW_BIN
            else:
                raw = _dumps([x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
                              for x in arr.reshape(-1)])
                code = RAW_JSON
        elif is_bin:
            data = arr
            if not (cnp.PyArray_IS_C_CONTIGUOUS(arr) and cnp.PyArray_ISNOTSWAPPED(arr)):
                data = <cnp.ndarray>np.array(arr, dtype=arr.dtype.newbyteorder("<"), order="C", copy=True)
            raw = data
            code += BIN_FLAG
        else:
            raw = native_contiguous(arr)
        if code == RAW_JSON:
            est += 8 + PyBytes_GET_SIZE(raw)
        elif code == RAW_BIN or code >= BIN_FLAG:
            if code == RAW_BIN and type(raw) is bytes:
                n = PyBytes_GET_SIZE(raw)
            else:
                n = cnp.PyArray_NBYTES(<cnp.ndarray>raw)
            est += PyBytes_GET_SIZE(_BIN_PARAMS) + 21 + 2 + n
            bins += n
        else:
            est += 8 + 2 + cnp.PyArray_SIZE(<cnp.ndarray>raw) * gw_width[code]
        refs.append(arr)
        refs.append(head)
        refs.append(raw)
        refs.append(code)

    cdef Py_ssize_t reserve = 0
    if extra is not None:  # room for the head, its numbers as long as the bounds' numbers
        reserve = PyBytes_GET_SIZE(_OK_BIN if any_bin else _OK_JSON) + 2 * gw_digits(est) + 4 \
            + PyBytes_GET_SIZE(extra) + (PyBytes_GET_SIZE(_CL) if any_bin else 0)
    cdef PyObject* out = PyBytes_FromStringAndSize(NULL, reserve + est)
    cdef char* base = PyBytes_AS_STRING(out)
    cdef char* p = base + reserve
    p = put_bytes(p, <bytes>model_head)
    if rid_frag is not None:
        p = put_bytes(p, b',"id":')
        p = put_bytes(p, rid_frag)
    elif rid:
        p = put_bytes(p, b',"id":"')
        n = len(<str>rid)
        memcpy(p, GW_ASCII_DATA(rid), n)
        p[n] = b'"'
        p += n + 1
    if params_frag is not None:
        p = put_bytes(p, b',"parameters":')
        p = put_bytes(p, params_frag)
    p = put_bytes(p, b',"outputs":[')
    n = PyList_GET_SIZE(refs)
    for i in range(0, n, 4):
        if i:
            p[0] = b','
            p += 1
        p = put_bytes(p, <bytes>PyList_GET_ITEM(refs, i + 1))
        p = put_shape(p, <cnp.ndarray>PyList_GET_ITEM(refs, i))
        raw = <object>PyList_GET_ITEM(refs, i + 2)
        code = <int><object>PyList_GET_ITEM(refs, i + 3)
        if code == RAW_JSON:
            p = put_bytes(p, b',"data":')
            p = put_bytes(p, <bytes>raw)
        elif code == RAW_BIN or code >= BIN_FLAG:
            p = put_bytes(p, _BIN_PARAMS)
            p = gw_put_size(p, PyBytes_GET_SIZE(raw) if type(raw) is bytes
                            else cnp.PyArray_NBYTES(<cnp.ndarray>raw))
            p[0] = b'}'
            p += 1
        else:
            p = put_bytes(p, b',"data":')
            p = put_values(p, <cnp.ndarray>raw, code)
        p[0] = b'}'
        p += 1
    p[0] = b']'
    p[1] = b'}'
    p += 2
    jlen = p - (base + reserve)
    if any_bin:
        for i in range(0, n, 4):
            raw = <object>PyList_GET_ITEM(refs, i + 2)
            code = <int><object>PyList_GET_ITEM(refs, i + 3)
            if code == RAW_BIN or code >= BIN_FLAG:
                if type(raw) is bytes:
                    p = put_bytes(p, <bytes>raw)
                else:
                    data = <cnp.ndarray>raw
                    memcpy(p, cnp.PyArray_DATA(data), cnp.PyArray_NBYTES(data))
                    p += cnp.PyArray_NBYTES(data)
    blen = p - (base + reserve)
    hlen = jlen if any_bin else -1
    if extra is None:
        return finish(out, blen, est), hlen
    cdef char* h = base
    if any_bin:
        h = put_bytes(h, _OK_BIN)
        h = gw_put_size(h, jlen)
        h = put_bytes(h, _CL)
    else:
        h = put_bytes(h, _OK_JSON)
    h = gw_put_size(h, blen)
    h[0] = b'\r'
    h[1] = b'\n'
    h = put_bytes(h + 2, extra)
    h[0] = b'\r'
    h[1] = b'\n'
    h += 2
    off = h - base
    if off != reserve:
        memmove(h, base + reserve, blen)
    return finish(out, off + blen, reserve + est), hlen


def json_array(cnp.ndarray arr):
    """The JSON text of ``arr``'s values flattened in C order (``b"[0.5,1.0,-2.25]"``), for
    numeric and BOOL arrays of any layout and byte order; ValueError for other dtypes."""
    cdef int code = dtype_code(arr)
    if code < 0:
        raise ValueError(f"json_array formats numbers and booleans, not {arr.dtype}")
    cdef cnp.ndarray data = native_contiguous(arr)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(data)
    cdef Py_ssize_t cap = 2 + n * gw_width[code]
    cdef PyObject* out = PyBytes_FromStringAndSize(NULL, cap)
    cdef char* base = PyBytes_AS_STRING(out)
    cdef char* p = put_values(base, data, code)
    return finish(out, p - base, cap)


def encode_body(resp, binary):
    """Exactly what ``codec.encode_infer(resp, binary)`` returns: (body, JSON header length, or
    -1 when no output is binary). ``binary``: names of the outputs sent raw ("*": all), or None.
    None when an output is not a numpy array (the general path decides what that means)."""
    return encode(resp, binary, None)


def http_response(resp, binary, bytes extra not None):
    """The whole HTTP/1.1 200 answer for ``resp``: status line, content-type, for a binary body
    inference-header-content-length, content-length, ``extra`` (header lines, each ending in
    CRLF; may be empty), the blank line and the body. None where ``encode_body`` is None."""
    r = encode(resp, binary, extra)
    return None if r is None else r[0]


def http_answer(model_name, model_version, dict outputs not None, rid, binary, bytes extra not None):
    """``http_response`` for the response ``InferResponse(model_name, model_version, outputs, rid)``
    without making it (the native lane's answers)."""
    r = encode_parts(model_name, model_version, outputs, rid, None, binary, extra)
    return None if r is None else r[0]
