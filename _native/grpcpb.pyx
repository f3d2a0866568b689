# cython: language_level=3
"""ModelInferRequest and ModelInferResponse on the protobuf wire, in C, for the native gRPC front.

The general way of a ModelInfer call is protobuf's parser (upb) into a message object, then the
codec (``front.grpc.codec``) from that object into an ``InferRequest``, and back the same way:
tens of attribute reads and small objects per call. The common call needs none of it: every
input has raw contents, no parameters anywhere, a numeric datatype. ``decode_infer`` reads such a
message straight into the ``InferRequest`` (each input copied once into its array) and returns
None for anything else, which then takes the general way, where every error is named.
``encode_infer`` writes the response of numeric, C-ordered outputs in one buffer (None: the
general encoder). Both are checked against upb and the codec on random messages
(tests/test_native_grpcpb.py).

Wire format (protobuf encoding): each field is a varint key ``number << 3 | wire type``; type 0 a
varint, 1 eight bytes, 2 a varint length and that many bytes, 5 four bytes. ModelInferRequest:
1 model_name, 2 model_version, 3 id, 4 parameters (map), 5 inputs (1 name, 2 datatype, 3 shape
packed or not, 4 parameters, 5 contents), 6 outputs (1 name, 2 parameters), 7 raw_input_contents.
ModelInferResponse: 1 model_name, 2 model_version, 3 id, 4 parameters, 5 outputs (1 name,
2 datatype, 3 shape packed, 4 parameters), 6 raw_output_contents.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memcpy
cimport numpy as cnp

import numpy as np

from gateway.types import DATATYPE_TO_NUMPY, InferRequest

include "request.pxi"
include "limits.pxi"

cnp.import_array()

cdef enum:
    MAX_FIELDS = 64  # inputs, outputs, raw contents per message on this path (more: the general one)

cdef dict _DTYPES = {k.encode(): v for k, v in DATATYPE_TO_NUMPY.items() if k != "BYTES"}
cdef dict _NAMES = {v: k.encode() for k, v in DATATYPE_TO_NUMPY.items() if k != "BYTES"}
cdef long long MAX_ELEMENTS = (1 << 63) // 16


cdef inline const uint8_t* read_varint(const uint8_t* p, const uint8_t* end, uint64_t* out) noexcept nogil:
    cdef uint64_t v = 0
    cdef int shift = 0
    while p < end and shift < 64:
        v |= <uint64_t>(p[0] & 0x7f) << shift
        if not p[0] & 0x80:
            out[0] = v
            return p + 1
        p += 1
        shift += 7
    return NULL


cdef inline const uint8_t* skip_field(const uint8_t* p, const uint8_t* end, int wt) noexcept nogil:
    cdef uint64_t n
    if wt == 0:
        return read_varint(p, end, &n)
    if wt == 1:
        return p + 8 if end - p >= 8 else NULL
    if wt == 5:
        return p + 4 if end - p >= 4 else NULL
    if wt == 2:
        p = read_varint(p, end, &n)
        if p == NULL or <uint64_t>(end - p) < n:
            return NULL
        return p + n
    return NULL  # groups (3, 4) and reserved types: not ours


cdef inline const uint8_t* read_len(const uint8_t* p, const uint8_t* end, const uint8_t** s,
                                    Py_ssize_t* n) noexcept nogil:
    cdef uint64_t v
    p = read_varint(p, end, &v)
    if p == NULL or <uint64_t>(end - p) < v:
        return NULL
    s[0] = p
    n[0] = <Py_ssize_t>v
    return p + v


cdef struct Span:
    const uint8_t* p
    Py_ssize_t n


cdef struct Input:
    Span name
    Span datatype
    Span shape  # the packed shape, or the whole tensor message when the shape is not packed
    bint packed


cdef int parse_input(const uint8_t* p, const uint8_t* end, Input* t) noexcept nogil:
    """0: a tensor this path takes; -1: anything else (parameters, contents, unknown wire types)."""
    cdef uint64_t key
    cdef const uint8_t* s
    cdef Py_ssize_t n
    cdef int field, wt
    cdef const uint8_t* start = p
    t.name.n = t.datatype.n = t.shape.n = 0
    t.name.p = t.datatype.p = t.shape.p = NULL
    t.packed = True
    while p < end:
        p = read_varint(p, end, &key)
        if p == NULL:
            return -1
        field = <int>(key >> 3)
        wt = <int>(key & 7)
        if field == 1 and wt == 2:
            p = read_len(p, end, &t.name.p, &t.name.n)
        elif field == 2 and wt == 2:
            p = read_len(p, end, &t.datatype.p, &t.datatype.n)
        elif field == 3 and wt == 2:
            if t.shape.n:
                return -1  # packed in several runs: rare, the general path
            p = read_len(p, end, &t.shape.p, &t.shape.n)
        elif field == 3 and wt == 0:  # unpacked: read them from the message when building
            t.packed = False
            t.shape.p = start
            t.shape.n = end - start
            p = skip_field(p, end, 0)
        elif field == 4 or field == 5:
            return -1
        elif field == 1 or field == 2:
            return -1  # a known field with the wrong wire type
        else:
            p = skip_field(p, end, wt)
        if p == NULL:
            return -1
    return 0


cdef inline bint push_dim(list dims, uint64_t v) except -1:
    """Append dimension ``v``; False when the path does not take it (negative as int64, too large,
    past MAX_DIMS: the general path names it)."""
    if v >> 62 or len(dims) == MAX_DIMS:
        return False
    dims.append(<int64_t>v)
    return True


cdef object shape_of(Input* t):
    """The tensor's shape as a tuple, or None when it is not one this path takes."""
    cdef const uint8_t* p = t.shape.p
    cdef const uint8_t* end = p + t.shape.n
    cdef uint64_t v, key
    cdef list dims = []
    while p < end:
        if not t.packed:  # the whole tensor message: its unpacked field-3 varints
            p = read_varint(p, end, &key)
            if p == NULL:
                return None
            if key != (3 << 3):
                p = skip_field(p, end, <int>(key & 7))
                if p == NULL:
                    return None
                continue
        p = read_varint(p, end, &v)
        if p == NULL or not push_dim(dims, v):
            return None
    return tuple(dims)


cdef inline str text(Span s):
    return PyUnicode_DecodeUTF8(<const char*>s.p, s.n, NULL) if s.n else ""


def decode_infer(bytes msg not None, long long timeout_us):
    """``InferRequest`` as ``codec.decode_infer_request(ModelInferRequest.FromString(msg),
    timeout_us)`` makes it, for a message this path takes (see the module); None otherwise."""
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(msg)
    cdef const uint8_t* end = p + PyBytes_GET_SIZE(msg)
    cdef uint64_t key
    cdef int field, wt, i, n_in = 0, n_out = 0, n_raw = 0
    cdef Span model, version, rid
    cdef Input inputs[MAX_FIELDS]
    cdef Span outs[MAX_FIELDS]
    cdef Span raws[MAX_FIELDS]
    cdef const uint8_t* s
    cdef Py_ssize_t n
    cdef const uint8_t* q
    cdef const uint8_t* qend
    model.n = version.n = rid.n = 0
    model.p = version.p = rid.p = NULL
    while p < end:
        p = read_varint(p, end, &key)
        if p == NULL:
            return None
        field = <int>(key >> 3)
        wt = <int>(key & 7)
        if wt != 2:
            if 1 <= field <= 7:
                return None
            p = skip_field(p, end, wt)
            if p == NULL:
                return None
            continue
        p = read_len(p, end, &s, &n)
        if p == NULL:
            return None
        if field == 1:
            model.p, model.n = s, n
        elif field == 2:
            version.p, version.n = s, n
        elif field == 3:
            rid.p, rid.n = s, n
        elif field == 4:
            return None  # request parameters: the general path reads them
        elif field == 5:
            if n_in == MAX_FIELDS or parse_input(s, s + n, &inputs[n_in]) < 0:
                return None
            n_in += 1
        elif field == 6:
            if n_out == MAX_FIELDS:
                return None
            q = s
            qend = s + n
            outs[n_out].p = NULL
            outs[n_out].n = 0
            while q < qend:
                q = read_varint(q, qend, &key)
                if q == NULL:
                    return None
                if key == (1 << 3 | 2):
                    q = read_len(q, qend, &outs[n_out].p, &outs[n_out].n)
                elif (key >> 3) == 1 or (key >> 3) == 2:
                    return None  # output parameters (binary_data, shared memory): the general path
                else:
                    q = skip_field(q, qend, <int>(key & 7))
                if q == NULL:
                    return None
            n_out += 1
        elif field == 7:
            if n_raw == MAX_FIELDS:
                return None
            raws[n_raw].p, raws[n_raw].n = s, n
            n_raw += 1
    if n_raw != n_in or n_in == 0:
        return None
    try:
        return _build(model, version, rid, inputs, n_in, outs, n_out, raws, timeout_us)
    except UnicodeDecodeError:  # a string that is not UTF-8: protobuf's parser refuses the message
        return None


cdef object _build(Span model, Span version, Span rid, Input* inputs, int n_in, Span* outs, int n_out,
                   Span* raws, long long timeout_us):
    cdef int i
    cdef long long count, nonzero, itemsize, d
    cdef cnp.ndarray arr
    tensors = {}
    for i in range(n_in):
        dtype = _DTYPES.get(PyBytes_FromStringAndSize(<const char*>inputs[i].datatype.p, inputs[i].datatype.n))
        if dtype is None:
            return None
        shape = shape_of(&inputs[i])
        if shape is None:
            return None
        count = nonzero = 1
        for dim in shape:
            d = dim
            if d:
                if nonzero > MAX_ELEMENTS // d:
                    return None  # no array has this shape: the general path says so
                nonzero *= d
            count *= d
        itemsize = (<cnp.dtype>dtype).itemsize
        if raws[i].n != count * itemsize:
            return None
        name = text(inputs[i].name)
        if name in tensors:
            return None
        arr = np.empty(shape, dtype=dtype)
        memcpy(cnp.PyArray_DATA(arr), raws[i].p, raws[i].n)
        tensors[name] = arr
    req = _new_request(text(model), text(version), tensors)
    if rid.n:
        req.id = text(rid)
    req.timeout_us = timeout_us
    if n_out:
        req.outputs = [text(outs[i]) for i in range(n_out)]
    return req


def target(bytes msg not None):
    """(model_name, model_version) of a serialized ModelInferRequest, read without decoding the
    rest (to find the version's lane before the decode); None when it cannot tell."""
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(msg)
    cdef const uint8_t* end = p + PyBytes_GET_SIZE(msg)
    cdef uint64_t key
    cdef Span model, version
    cdef const uint8_t* s
    cdef Py_ssize_t n
    model.n = version.n = 0
    model.p = version.p = NULL
    while p < end:
        p = read_varint(p, end, &key)
        if p == NULL:
            return None
        if (key & 7) != 2:
            if 1 <= (key >> 3) <= 7:
                return None
            p = skip_field(p, end, <int>(key & 7))
        else:
            p = read_len(p, end, &s, &n)
            if p != NULL and key >> 3 == 1:
                model.p, model.n = s, n
            elif p != NULL and key >> 3 == 2:
                version.p, version.n = s, n
        if p == NULL:
            return None
    try:
        return text(model), text(version)
    except UnicodeDecodeError:
        return None


cdef inline Py_ssize_t varint_size(uint64_t v) noexcept nogil:
    cdef Py_ssize_t n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef inline char* put_varint(char* o, uint64_t v) noexcept nogil:
    while v >= 0x80:
        o[0] = <char>((v & 0x7f) | 0x80)
        v >>= 7
        o += 1
    o[0] = <char>v
    return o + 1


cdef inline char* put_len(char* o, int key, const char* s, Py_ssize_t n) noexcept nogil:
    o[0] = <char>key
    o = put_varint(o + 1, n)
    memcpy(o, s, n)
    return o + n


cdef inline Py_ssize_t len_size(Py_ssize_t n) noexcept nogil:
    return 1 + varint_size(n) + n


def encode_infer(str model not None, str version not None, str rid not None, dict outputs not None):
    """The serialized ModelInferResponse that ``codec.encode_infer_response`` makes for these
    outputs (numeric, native byte order, C-ordered arrays); None when one is not (the general
    encoder takes it)."""
    cdef bytes bm = model.encode(), bv = version.encode(), bi = rid.encode()
    cdef Py_ssize_t total = 0, k, ndim, shape_len, tensor_len
    cdef list parts = []
    cdef cnp.ndarray arr
    cdef bytes name, dt
    cdef char* o
    cdef bytes out
    cdef cnp.npy_intp* dims
    if PyBytes_GET_SIZE(bm):
        total += len_size(PyBytes_GET_SIZE(bm))
    if PyBytes_GET_SIZE(bv):
        total += len_size(PyBytes_GET_SIZE(bv))
    if PyBytes_GET_SIZE(bi):
        total += len_size(PyBytes_GET_SIZE(bi))
    for key, value in outputs.items():
        if type(value) is not np.ndarray or type(key) is not str:
            return None
        arr = <cnp.ndarray>value
        dt = _NAMES.get(arr.dtype)
        if dt is None or not cnp.PyArray_IS_C_CONTIGUOUS(arr) or arr.dtype.byteorder == ">":
            return None
        name = (<str>key).encode()
        ndim = cnp.PyArray_NDIM(arr)
        dims = cnp.PyArray_DIMS(arr)
        shape_len = 0
        for k in range(ndim):
            shape_len += varint_size(<uint64_t>dims[k])
        tensor_len = len_size(PyBytes_GET_SIZE(name)) + len_size(PyBytes_GET_SIZE(dt))
        if ndim:
            tensor_len += len_size(shape_len)
        total += len_size(tensor_len) + len_size(cnp.PyArray_NBYTES(arr))
        parts.append((name, dt, arr, shape_len, tensor_len))
    out = PyBytes_FromStringAndSize(NULL, total)
    o = PyBytes_AS_STRING(out)
    if PyBytes_GET_SIZE(bm):
        o = put_len(o, 0x0a, PyBytes_AS_STRING(bm), PyBytes_GET_SIZE(bm))
    if PyBytes_GET_SIZE(bv):
        o = put_len(o, 0x12, PyBytes_AS_STRING(bv), PyBytes_GET_SIZE(bv))
    if PyBytes_GET_SIZE(bi):
        o = put_len(o, 0x1a, PyBytes_AS_STRING(bi), PyBytes_GET_SIZE(bi))
    for name, dt, value, shape_len, tensor_len in parts:
        arr = <cnp.ndarray>value
        o[0] = 0x2a
        o = put_varint(o + 1, tensor_len)
        o = put_len(o, 0x0a, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))
        o = put_len(o, 0x12, PyBytes_AS_STRING(dt), PyBytes_GET_SIZE(dt))
        ndim = cnp.PyArray_NDIM(arr)
        if ndim:
            dims = cnp.PyArray_DIMS(arr)
            o[0] = 0x1a
            o = put_varint(o + 1, shape_len)
            for k in range(ndim):
                o = put_varint(o, <uint64_t>dims[k])
    for name, dt, value, shape_len, tensor_len in parts:
        arr = <cnp.ndarray>value
        o = put_len(o, 0x32, <const char*>cnp.PyArray_DATA(arr), cnp.PyArray_NBYTES(arr))
    return out
