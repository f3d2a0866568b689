# distutils: language = c++
# cython: language_level=3
"""Native fast path for KServe v2 REST infer bodies: bytes straight into numpy buffers.

``decode_fast`` parses the common body shapes (numeric JSON tensors, binary-extension tensors,
an id, requested outputs, ``binary_data_output``/``timeout`` parameters) with a C scanner over
the body's bytes: numbers go from their text into the tensor's buffer (``std::from_chars`` for
floats, so FP32 is rounded through a double exactly as orjson -> float -> float32 is), with no
Python object per number. It returns exactly what ``codec.decode_infer`` would, or ``None`` for
anything outside its grammar or in any doubt (escapes, non-ASCII strings, unknown keys,
duplicate keys, out-of-range numbers, FP16 or BYTES JSON data...): the general decoder then
decides and produces every error. It never raises for client input.

Data arrays: nested lists must nest evenly, as ``list_to_array`` requires (every list at one
depth as long as the first at that depth, numbers only at the deepest, at most 64 levels);
only the leaf count has to match the shape. When ``datatype`` and ``shape`` come before
``data`` (every client we know) the data is parsed once into an array allocated with its final
shape; otherwise the data is scanned to its end first and filled after the object closes.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp
cimport numpy as cnp

import numpy as np

from gateway.types import DATATYPE_TO_NUMPY, InferRequest

include "request.pxi"

cnp.import_array()

include "limits.pxi"

cdef extern from * nogil:
    """
    #include <charconv>
    #include <cmath>
    #include <cstring>
    #include <system_error>
    /* The double a JSON number token denotes, correctly rounded; 0 when the token does not
       parse whole or the value is out of a double's range (from_chars reports both). */
    static const double GW_POW10[23] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10,
        1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    static inline int gw_parse_double(const char* s, const char* e, double* out) {
        /* Clinger's fast path first: with at most 15 digits the mantissa is an exact double,
           and so is 10^k for k <= 22, so one IEEE multiply or divide is the correctly rounded
           value, the same double from_chars gives. Most numbers clients send (a few decimals)
           take it; the rest go to from_chars. */
        const char* p = s;
        int neg = 0, nd = 0, e10 = 0;
        uint64_t m = 0;
        if (p < e && *p == '-') { neg = 1; p++; }
        while (p < e && (unsigned char)(*p - '0') < 10) { m = m * 10 + (uint64_t)(*p - '0'); nd++; p++; if (nd > 15) goto slow; }
        if (p < e && *p == '.') {
            p++;
            while (p < e && (unsigned char)(*p - '0') < 10) { m = m * 10 + (uint64_t)(*p - '0'); nd++; e10--; p++; if (nd > 15) goto slow; }
        }
        if (p < e && (*p == 'e' || *p == 'E')) {
            int eneg = 0, ev = 0, en = 0;
            p++;
            if (p < e && (*p == '+' || *p == '-')) { eneg = *p == '-'; p++; }
            while (p < e && (unsigned char)(*p - '0') < 10) { ev = ev * 10 + (*p - '0'); p++; if (++en > 3) goto slow; }
            if (en == 0) goto slow;
            e10 += eneg ? -ev : ev;
        }
        if (p != e || nd == 0 || e10 < -22 || e10 > 22) goto slow;
        {
            double v = (double)m;
            v = e10 < 0 ? v / GW_POW10[-e10] : v * GW_POW10[e10];
            *out = neg ? -v : v;
            return 1;
        }
    slow:
        double v;
        auto r = std::from_chars(s, e, v);
        if (r.ec != std::errc() || r.ptr != e || !std::isfinite(v)) return 0;
        *out = v;
        return 1;
    }
    /* check_shape's bound on a shape's non-zero product (validate._MAX_SPAN), and the largest
       timeout orjson reads as an int (a larger one is the general path's to judge). */
    /* Past a run of ASCII digits, eight at a time while they last (a fraction of a float's
       shortest repr is ~16 digits: a byte loop mispredicts its exit on every number). */
    static inline const char* gw_skip_digits(const char* p, const char* end) {
        while (end - p >= 8) {
            uint64_t x;
            memcpy(&x, p, 8);
            if (((x & 0xF0F0F0F0F0F0F0F0ULL) |
                 (((x + 0x0606060606060606ULL) & 0xF0F0F0F0F0F0F0F0ULL) >> 4))
                != 0x3333333333333333ULL) break;
            p += 8;
        }
        while (p < end && (unsigned char)(*p - '0') < 10) p++;
        return p;
    }
    /* How many of the 8 bytes at p are ASCII digits before the first that is not (0..8), and
       their value into *out: one load and three multiplies instead of a byte loop whose exit
       mispredicts on every number (the fraction of "0.123456" is one call). */
    static const uint64_t GW_U64POW10[9] = {1ULL, 10ULL, 100ULL, 1000ULL, 10000ULL, 100000ULL,
        1000000ULL, 10000000ULL, 100000000ULL};
    static inline int gw_digits8(const char* p, uint64_t* out) {
        uint64_t x, y;
        int k;
        memcpy(&x, p, 8);
        y = ((x & 0xF0F0F0F0F0F0F0F0ULL) | (((x + 0x0606060606060606ULL) & 0xF0F0F0F0F0F0F0F0ULL) >> 4))
            ^ 0x3333333333333333ULL;  /* a zero byte where the byte is a digit (exact up to the first that is not) */
        k = y ? (__builtin_ctzll(y) >> 3) : 8;
        if (k == 0) { *out = 0; return 0; }
        x = (x & 0x0F0F0F0F0F0F0F0FULL) << (8 * (8 - k));  /* the k digits, after 8 - k leading zeros */
        x = ((x * 2561) >> 8) & 0x00FF00FF00FF00FFULL;
        x = ((x * 6553601) >> 16) & 0x0000FFFF0000FFFFULL;
        x = (x * 42949672960001ULL) >> 32;
        *out = x;
        return k;
    }
    /* The common float token of a JSON client, "-?D.F" with D one to seven digits (no leading
       zero but "0") and F one to seven, no exponent: its double, exact (at most 14 digits, so
       both parts fit 2**53, one correctly rounded division), as from_chars and orjson give it;
       NULL where the token is anything else (the general scanner decides). Needs 20 readable
       bytes from p (the 8-byte loads), so a body's last numbers take the scanner. */
    static inline const char* gw_fast_decimal(const char* p, const char* end, double* out) {
        uint64_t ip = 0, fp;
        int k, ni, neg = 0;
        double v;
        if (end - p < 20) return NULL;
        if (*p == '-') { neg = 1; p++; }
        if (*p == '0') p++;
        else {
            ni = gw_digits8(p, &ip);
            if (ni == 0 || ni == 8) return NULL;
            p += ni;
        }
        if (*p != '.') return NULL;
        p++;
        k = gw_digits8(p, &fp);
        if (k == 0 || k == 8) return NULL;
        p += k;
        if ((unsigned char)(*p - '0') < 10 || (*p | 0x20) == 'e') return NULL;
        v = (double)(ip * GW_U64POW10[k] + fp) / GW_POW10[k];
        *out = neg ? -v : v;
        return p;
    }
    static const uint64_t GW_MAX_SPAN = ((((uint64_t)1) << 63) - 1) / 8;
    static const uint64_t GW_TIMEOUT_MAX = (((uint64_t)1) << 63) - 1;
    """
    int gw_parse_double(const char* s, const char* e, double* out)
    const char* gw_skip_digits(const char* p, const char* end)
    int gw_digits8(const char* p, uint64_t* out)
    const char* gw_fast_decimal(const char* p, const char* end, double* out)
    const uint64_t GW_U64POW10[9]
    const uint64_t GW_MAX_SPAN
    const uint64_t GW_TIMEOUT_MAX
    const double GW_POW10[23]

cdef extern from "Python.h":
    object PyUnicode_FromStringAndSize(const char* s, Py_ssize_t size)

# Datatype codes (the order of _NAMES); FP16 only in the binary extension.
cdef enum:
    T_BOOL, T_INT8, T_INT16, T_INT32, T_INT64, T_UINT8, T_UINT16, T_UINT32, T_UINT64
    T_FP16, T_FP32, T_FP64
    N_TYPES

cdef object _NAMES = ("BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
                      "UINT64", "FP16", "FP32", "FP64")
cdef int[12] _TYPENUM = [cnp.NPY_BOOL, cnp.NPY_INT8, cnp.NPY_INT16, cnp.NPY_INT32, cnp.NPY_INT64,
                         cnp.NPY_UINT8, cnp.NPY_UINT16, cnp.NPY_UINT32, cnp.NPY_UINT64,
                         cnp.NPY_FLOAT16, cnp.NPY_FLOAT32, cnp.NPY_FLOAT64]
cdef int[12] _ITEMSIZE = [1, 1, 2, 4, 8, 1, 2, 4, 8, 2, 4, 8]
# Largest magnitude of a negative / a positive integer element, per datatype.
cdef uint64_t[12] _NEG_MAX = [0, 128, 32768, 2147483648ULL, 9223372036854775808ULL,
                              0, 0, 0, 0, 0, 0, 0]
cdef uint64_t[12] _POS_MAX = [1, 127, 32767, 2147483647ULL, 9223372036854775807ULL,
                              255, 65535, 4294967295ULL, 18446744073709551615ULL, 0, 0, 0]
cdef list _DTYPES = [DATATYPE_TO_NUMPY[n] for n in _NAMES]
cdef object _frombuffer = np.frombuffer
cdef object _BINARY_ALL = frozenset(["*"])
cdef str _K_BDO = "binary_data_output"
cdef str _K_TIMEOUT = "timeout"

cdef enum:
    REJECT = -1

cdef unsigned long long _n_fast = 0
cdef unsigned long long _n_none = 0


# ---- token scanners: each takes the cursor, returns the cursor after the token or NULL ----

cdef inline const char* ws(const char* p, const char* end) noexcept nogil:
    while p < end and (p[0] == c' ' or p[0] == b'\n' or p[0] == b'\r' or p[0] == b'\t'):
        p += 1
    return p


cdef inline const char* scan_string(const char* p, const char* end, const char** s,
                                    Py_ssize_t* n) noexcept nogil:
    """An ASCII string without escapes or control characters (the rest is the general path's)."""
    cdef const char* start
    cdef uint8_t c
    if p >= end or p[0] != c'"':
        return NULL
    p += 1
    start = p
    while p < end:
        c = <uint8_t>p[0]
        if c == c'"':
            s[0] = start
            n[0] = p - start
            return p + 1
        if c < 0x20 or c >= 0x80 or c == c'\\':
            return NULL
        p += 1
    return NULL


cdef inline const char* scan_number(const char* p, const char* end, bint* integral, bint* neg,
                                    uint64_t* mag, double* fv=NULL) noexcept nogil:
    """A JSON number token. ``integral``: no fraction or exponent; then ``mag`` is its magnitude,
    or ``integral`` is cleared when the magnitude passes 2**64 - 1 (orjson makes that a float).
    ``fv`` (optional): set to the token's double magnitude when Clinger's fast path gives it
    exactly (at most 15 digits, a power of ten within 10**22), else to -1 (parse the token)."""
    cdef uint64_t m = 0, d
    cdef bint over = False, eneg
    cdef int nd = 0, e10 = 0, ev, en, k
    integral[0] = True
    neg[0] = False
    if p < end and p[0] == c'-':
        neg[0] = True
        p += 1
    if p >= end or not (c'0' <= p[0] <= c'9'):
        return NULL
    if p[0] == c'0':
        p += 1
        nd = 1
        if p < end and c'0' <= p[0] <= c'9':
            return NULL  # a leading zero
    else:
        while p < end and c'0' <= p[0] <= c'9':
            d = <uint64_t>(p[0] - c'0')
            if m < 1844674407370955161ULL or (m == 1844674407370955161ULL and d <= 5):
                m = m * 10 + d
            else:
                over = True
            nd += 1
            p += 1
    mag[0] = m
    if p < end and p[0] == c'.':
        integral[0] = False
        p += 1
        if p >= end or not (c'0' <= p[0] <= c'9'):
            return NULL
        while end - p >= 8 and nd <= 8:  # eight at a time while 16 digits in all cannot be passed
            k = gw_digits8(p, &d)
            m = m * GW_U64POW10[k] + d
            nd += k
            e10 -= k
            p += k
            if k < 8:
                break
        while p < end and c'0' <= p[0] <= c'9' and nd < 16:
            m = m * 10 + <uint64_t>(p[0] - c'0')  # no overflow: at most 16 digits in all
            nd += 1
            e10 -= 1
            p += 1
        if p < end and c'0' <= p[0] <= c'9':
            nd = 99  # too many digits for the fast path
            p = gw_skip_digits(p, end)
    if p < end and (p[0] == c'e' or p[0] == c'E'):
        integral[0] = False
        p += 1
        eneg = False
        if p < end and (p[0] == c'+' or p[0] == c'-'):
            eneg = p[0] == c'-'
            p += 1
        if p >= end or not (c'0' <= p[0] <= c'9'):
            return NULL
        ev = 0
        en = 0
        while p < end and c'0' <= p[0] <= c'9' and en < 4:
            ev = ev * 10 + (p[0] - c'0')
            en += 1
            p += 1
        if p < end and c'0' <= p[0] <= c'9':
            nd = 99
            p = gw_skip_digits(p, end)
        e10 += -ev if eneg else ev
    if over:
        integral[0] = False
    if fv != NULL:
        if nd <= 15 and -22 <= e10 <= 22:
            fv[0] = (<double>m) / GW_POW10[-e10] if e10 < 0 else (<double>m) * GW_POW10[e10]
        else:
            fv[0] = -1.0
    return p


cdef inline const char* scan_count(const char* p, const char* end, uint64_t limit,
                                   uint64_t* out) noexcept nogil:
    """A non-negative integer literal no larger than ``limit`` (no sign, fraction or exponent)."""
    cdef bint integral, neg
    cdef uint64_t m
    p = scan_number(p, end, &integral, &neg, &m)
    if p == NULL or not integral or neg or m > limit:
        return NULL
    out[0] = m
    return p


cdef inline const char* scan_bool(const char* p, const char* end, int* out) noexcept nogil:
    if end - p >= 4 and memcmp(p, b"true", 4) == 0:
        out[0] = 1
        return p + 4
    if end - p >= 5 and memcmp(p, b"false", 5) == 0:
        out[0] = 0
        return p + 5
    return NULL


cdef inline bint key_is(const char* s, Py_ssize_t n, const char* key, Py_ssize_t k) noexcept nogil:
    return n == k and memcmp(s, key, k) == 0


cdef inline const char* after_key(const char* p, const char* end) noexcept nogil:
    """Past the ``:`` that follows a key, and the whitespace after it."""
    p = ws(p, end)
    if p >= end or p[0] != c':':
        return NULL
    return ws(p + 1, end)


cdef inline const char* scan_key(const char* p, const char* end, const char** s, Py_ssize_t* n) noexcept nogil:
    """An object member's key (into ``s``/``n``), and past the ``:`` after it."""
    p = scan_string(p, end, s, n)
    if p == NULL:
        return NULL
    return after_key(p, end)


cdef inline const char* next_member(const char* p, const char* end, char close,
                                    bint* more) noexcept nogil:
    """After a value: past ``,`` (``more``) or the closing bracket."""
    p = ws(p, end)
    if p >= end:
        return NULL
    if p[0] == c',':
        more[0] = True
        return ws(p + 1, end)
    if p[0] == close:
        more[0] = False
        return p + 1
    return NULL


cdef inline const char* open_bracket(const char* p, const char* end, char open_, char close,
                                     bint* empty) noexcept nogil:
    """Past ``open_`` and whitespace; ``empty`` (and past ``close`` too) when nothing is inside."""
    if p >= end or p[0] != open_:
        return NULL
    p = ws(p + 1, end)
    if p >= end:
        return NULL
    empty[0] = p[0] == close
    return p + 1 if empty[0] else p


cdef int datatype_code(const char* s, Py_ssize_t n) noexcept nogil:
    if n == 4:
        if memcmp(s, b"FP32", 4) == 0: return T_FP32
        if memcmp(s, b"FP64", 4) == 0: return T_FP64
        if memcmp(s, b"INT8", 4) == 0: return T_INT8
        if memcmp(s, b"BOOL", 4) == 0: return T_BOOL
        if memcmp(s, b"FP16", 4) == 0: return T_FP16
    elif n == 5:
        if memcmp(s, b"INT64", 5) == 0: return T_INT64
        if memcmp(s, b"INT32", 5) == 0: return T_INT32
        if memcmp(s, b"INT16", 5) == 0: return T_INT16
        if memcmp(s, b"UINT8", 5) == 0: return T_UINT8
    elif n == 6:
        if memcmp(s, b"UINT64", 6) == 0: return T_UINT64
        if memcmp(s, b"UINT32", 6) == 0: return T_UINT32
        if memcmp(s, b"UINT16", 6) == 0: return T_UINT16
    return REJECT


cdef const char* scan_shape(const char* p, const char* end, cnp.npy_intp* dims, int* ndim,
                            Py_ssize_t* count) noexcept nogil:
    """At most MAX_DIMS non-negative integers whose non-zero product stays within GW_MAX_SPAN."""
    cdef bint empty, more = True
    cdef uint64_t v, span = 1, cnt = 1
    cdef int n = 0
    p = open_bracket(p, end, c'[', c']', &empty)
    if p == NULL:
        return NULL
    if not empty:
        while more:
            if n == MAX_DIMS:
                return NULL
            p = scan_count(p, end, GW_MAX_SPAN, &v)
            if p == NULL:
                return NULL
            if v:
                if v > GW_MAX_SPAN // span:
                    return NULL
                span *= v
            cnt *= v
            dims[n] = <cnp.npy_intp>v
            n += 1
            p = next_member(p, end, c']', &more)
            if p == NULL:
                return NULL
    ndim[0] = n
    count[0] = <Py_ssize_t>cnt
    return p


cdef inline bint store_leaf(const char* tok, const char* tokend, bint integral, bint neg,
                            uint64_t mag, int dt, char* out, Py_ssize_t pos, double fv) noexcept nogil:
    """Write one number (``out`` NULL: only check it) as list_to_array would convert orjson's
    value of it; False where that would fail or we are unsure. ``fv``: the magnitude from
    scan_number's fast path, or negative (parse the token)."""
    cdef double d
    if dt >= T_FP32:
        if integral and mag == 0:
            d = 0.0  # "-0" is the int 0 to orjson: +0.0, not -0.0
        elif fv >= 0.0:
            d = -fv if neg else fv
        elif not gw_parse_double(tok, tokend, &d):
            return False
        if out != NULL:
            if dt == T_FP32:
                (<float*>out)[pos] = <float>d
            else:
                (<double*>out)[pos] = d
        return True
    if not integral:
        return False
    if neg:
        if mag > _NEG_MAX[dt]:
            return False
        mag = <uint64_t>0 - mag
    elif mag > _POS_MAX[dt]:
        return False
    if out != NULL:
        if dt == T_INT64 or dt == T_UINT64:
            (<uint64_t*>out)[pos] = mag
        elif dt == T_INT32 or dt == T_UINT32:
            (<uint32_t*>out)[pos] = <uint32_t>mag
        elif dt == T_INT16 or dt == T_UINT16:
            (<uint16_t*>out)[pos] = <uint16_t>mag
        else:
            (<uint8_t*>out)[pos] = <uint8_t>mag
    return True


cdef const char* scan_data(const char* p, const char* end, int dt, char* out, Py_ssize_t cap,
                           Py_ssize_t* count) noexcept nogil:
    """The ``data`` array from ``p``: its leaves into ``out`` (at most ``cap``; ``out`` NULL:
    only count and check them), their number into ``count``. Nesting must be even, as
    list_to_array checks it: ``dims[d]`` is the length of the first list at depth ``d`` and
    ``kind[d]`` what the first element inside one is (1 list, 2 number); every later list at
    that depth must agree. Lists deeper than MAX_NEST_DEPTH levels are refused."""
    cdef Py_ssize_t dims[MAX_NEST_DEPTH]
    cdef Py_ssize_t cnt[MAX_NEST_DEPTH]
    cdef uint8_t kind[MAX_NEST_DEPTH]
    cdef int depth = 0, seen = 0, b
    cdef Py_ssize_t pos = 0
    cdef const char* tok
    cdef bint integral, neg
    cdef uint64_t mag
    cdef double fv
    cdef bint fast = dt == T_FP32 or dt == T_FP64  # floats: gw_fast_decimal first
    if p >= end or p[0] != c'[':
        return NULL
    p += 1
    dims[0] = -1
    kind[0] = 0
    cnt[0] = 0
    while True:
        # a value, or the ']' of an empty list
        p = ws(p, end)
        if p >= end:
            return NULL
        if p[0] == c'[':
            if kind[depth] == 2:
                return NULL
            kind[depth] = 1
            cnt[depth] += 1
            depth += 1
            if depth == MAX_NEST_DEPTH:
                return NULL
            if depth > seen:
                seen = depth
                dims[depth] = -1
                kind[depth] = 0
            cnt[depth] = 0
            p += 1
            continue
        if p[0] != c']':
            if kind[depth] == 1:
                return NULL
            kind[depth] = 2
            cnt[depth] += 1
            if out != NULL and pos >= cap:
                return NULL
            if (p[0] == c't' or p[0] == c'f') and (dt == T_BOOL or dt == REJECT):
                p = scan_bool(p, end, &b)
                if p == NULL:
                    return NULL
                if out != NULL:
                    (<uint8_t*>out)[pos] = <uint8_t>b
            else:
                while True:
                    tok = gw_fast_decimal(p, end, &fv) if fast else NULL
                    if tok != NULL:
                        if out != NULL:
                            if dt == T_FP32:
                                (<float*>out)[pos] = <float>fv
                            else:
                                (<double*>out)[pos] = fv
                        p = tok
                    else:
                        tok = p
                        p = scan_number(p, end, &integral, &neg, &mag, &fv)
                        if p == NULL or (dt != REJECT and not store_leaf(tok, p, integral, neg, mag, dt, out, pos, fv)):
                            return NULL
                    # a run of numbers ("0.5,-1.25,3"), as clients write them: the next at once,
                    # without the separator and nesting bookkeeping below
                    if end - p < 2 or p[0] != c',' or not (p[1] == c'-' or c'0' <= p[1] <= c'9'):
                        break
                    pos += 1
                    cnt[depth] += 1
                    if out != NULL and pos >= cap:
                        return NULL
                    p += 1
            pos += 1
        elif cnt[depth] != 0:
            return NULL  # "[1,]"
        # after a value: ',' then the next value, or ']' closing lists
        while True:
            p = ws(p, end)
            if p >= end:
                return NULL
            if p[0] == c',':
                p += 1
                break
            if p[0] != c']':
                return NULL
            p += 1
            if dims[depth] == -1:
                dims[depth] = cnt[depth]
            elif dims[depth] != cnt[depth]:
                return NULL
            if depth == 0:
                count[0] = pos
                return p
            depth -= 1


cdef object new_array(int dt, int ndim, cnp.npy_intp* dims):
    return cnp.PyArray_EMPTY(ndim, dims, _TYPENUM[dt], 0)


cdef const char* fill_array(const char* p, const char* end, int dt, cnp.ndarray arr,
                            Py_ssize_t count):
    cdef Py_ssize_t got = -1
    cdef char* out = cnp.PyArray_BYTES(arr)
    if count * _ITEMSIZE[dt] >= GIL_RELEASE_BYTES:
        with nogil:
            p = scan_data(p, end, dt, out, count, &got)
    else:
        p = scan_data(p, end, dt, out, count, &got)
    if p == NULL or got != count:
        return NULL
    return p


cdef object decode(bytes body, Py_ssize_t header_length, str model, str version):
    cdef const char* base = PyBytes_AS_STRING(body)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(body)
    cdef const char* p = base
    cdef const char* end
    cdef const char* s
    cdef const char* data_at
    cdef Py_ssize_t n, count, got, offset
    cdef cnp.npy_intp dims[MAX_DIMS]
    cdef int ndim, dt, flag, i
    cdef uint64_t v, bsize
    cdef bint empty, more, omore, binary = header_length >= 0
    cdef unsigned top_seen = 0, seen
    cdef dict tensors = {}
    cdef list out_names = None
    cdef list out_flags = None
    cdef dict params = None
    cdef object rid = None, name, arr
    cdef int binary_all = 0
    cdef uint64_t timeout = 0
    cdef cnp.ndarray a

    if binary:
        if header_length > size:
            return None
        end = base + header_length
        offset = header_length
    else:
        end = base + size
        offset = size
    p = ws(p, end)
    p = open_bracket(p, end, c'{', c'}', &empty)
    if p == NULL or empty:
        return None
    more = True
    while more:
        p = scan_key(p, end, &s, &n)
        if p == NULL:
            return None
        if key_is(s, n, b"inputs", 6):
            if top_seen & 1:
                return None
            top_seen |= 1
            p = open_bracket(p, end, c'[', c']', &empty)
            if p == NULL or empty:
                return None
            omore = True
            while omore:  # one input object
                p = open_bracket(p, end, c'{', c'}', &empty)
                if p == NULL or empty:
                    return None
                seen = 0
                name = None
                dt = REJECT
                ndim = -1
                data_at = NULL
                arr = None
                count = 0
                bsize = 0
                while True:
                    p = scan_key(p, end, &s, &n)
                    if p == NULL:
                        return None
                    if key_is(s, n, b"name", 4) and not seen & 1:
                        seen |= 1
                        p = scan_string(p, end, &s, &n)
                        if p == NULL:
                            return None
                        name = PyUnicode_FromStringAndSize(s, n)
                    elif key_is(s, n, b"datatype", 8) and not seen & 2:
                        seen |= 2
                        p = scan_string(p, end, &s, &n)
                        if p == NULL:
                            return None
                        dt = datatype_code(s, n)
                        if dt == REJECT:
                            return None
                    elif key_is(s, n, b"shape", 5) and not seen & 4:
                        seen |= 4
                        p = scan_shape(p, end, dims, &ndim, &count)
                        if p == NULL:
                            return None
                    elif key_is(s, n, b"data", 4) and not seen & 8:
                        seen |= 8
                        if dt != REJECT and ndim >= 0:  # allocate at the final shape, fill once
                            # every leaf takes a byte and a separator: a larger shape cannot match
                            if dt == T_FP16 or count > (end - p + 1) // 2:
                                return None
                            a = new_array(dt, ndim, dims)
                            p = fill_array(p, end, dt, a, count)
                            arr = a
                        else:
                            data_at = p
                            p = scan_data(p, end, dt, NULL, 0, &got)
                        if p == NULL:
                            return None
                    elif key_is(s, n, b"parameters", 10) and not seen & 16 and binary:
                        seen |= 16
                        p = open_bracket(p, end, c'{', c'}', &empty)
                        if p == NULL or empty:
                            return None
                        p = scan_string(p, end, &s, &n)
                        if p == NULL or not key_is(s, n, b"binary_data_size", 16):
                            return None
                        p = after_key(p, end)
                        if p == NULL:
                            return None
                        p = scan_count(p, end, <uint64_t>size, &bsize)
                        if p == NULL:
                            return None
                        p = ws(p, end)
                        if p >= end or p[0] != c'}':
                            return None
                        p += 1
                    else:
                        return None
                    p = next_member(p, end, c'}', &more)
                    if p == NULL:
                        return None
                    if not more:
                        break
                if (seen & 7) != 7 or (seen & 24) == 0 or (seen & 24) == 24:
                    return None  # name, datatype, shape, and data or binary_data_size (one)
                if seen & 16:  # binary extension: a zero-copy view of the next bsize bytes
                    if <uint64_t>(size - offset) < bsize or bsize != <uint64_t>count * _ITEMSIZE[dt]:
                        return None
                    shape = tuple([dims[i] for i in range(ndim)])
                    arr = _frombuffer(body, dtype=_DTYPES[dt], count=count, offset=offset).reshape(shape)
                    offset += <Py_ssize_t>bsize
                elif arr is None:  # the data came before its datatype or shape
                    if dt == T_FP16 or count != got:
                        return None
                    a = new_array(dt, ndim, dims)
                    if fill_array(data_at, end, dt, a, count) == NULL:
                        return None
                    arr = a
                if name in tensors:
                    return None
                tensors[name] = arr
                p = next_member(p, end, c']', &omore)
                if p == NULL:
                    return None
        elif key_is(s, n, b"outputs", 7):
            if top_seen & 2:
                return None
            top_seen |= 2
            out_names = []
            out_flags = []
            p = open_bracket(p, end, c'[', c']', &empty)
            if p == NULL:
                return None
            omore = not empty
            while omore:  # one output object: name, and maybe parameters.binary_data
                p = open_bracket(p, end, c'{', c'}', &empty)
                if p == NULL or empty:
                    return None
                seen = 0
                name = None
                flag = -1
                while True:
                    p = scan_key(p, end, &s, &n)
                    if p == NULL:
                        return None
                    if key_is(s, n, b"name", 4) and not seen & 1:
                        seen |= 1
                        p = scan_string(p, end, &s, &n)
                        if p == NULL:
                            return None
                        name = PyUnicode_FromStringAndSize(s, n)
                    elif key_is(s, n, b"parameters", 10) and not seen & 2:
                        seen |= 2
                        p = open_bracket(p, end, c'{', c'}', &empty)
                        if p == NULL:
                            return None
                        if not empty:
                            p = scan_string(p, end, &s, &n)
                            if p == NULL or not key_is(s, n, b"binary_data", 11):
                                return None
                            p = after_key(p, end)
                            if p == NULL:
                                return None
                            p = scan_bool(p, end, &flag)
                            if p == NULL:
                                return None
                            p = ws(p, end)
                            if p >= end or p[0] != c'}':
                                return None
                            p += 1
                    else:
                        return None
                    p = next_member(p, end, c'}', &more)
                    if p == NULL:
                        return None
                    if not more:
                        break
                if not seen & 1 or name in out_names:
                    return None
                out_names.append(name)
                out_flags.append(flag)
                p = next_member(p, end, c']', &omore)
                if p == NULL:
                    return None
        elif key_is(s, n, b"parameters", 10):
            if top_seen & 4:
                return None
            top_seen |= 4
            params = {}
            p = open_bracket(p, end, c'{', c'}', &empty)
            if p == NULL:
                return None
            omore = not empty
            seen = 0
            while omore:
                p = scan_key(p, end, &s, &n)
                if p == NULL:
                    return None
                if key_is(s, n, b"binary_data_output", 18) and not seen & 1:
                    seen |= 1
                    p = scan_bool(p, end, &binary_all)
                    if p == NULL:
                        return None
                    params[_K_BDO] = binary_all == 1
                elif key_is(s, n, b"timeout", 7) and not seen & 2:
                    seen |= 2
                    p = scan_count(p, end, GW_TIMEOUT_MAX, &timeout)
                    if p == NULL:
                        return None
                    params[_K_TIMEOUT] = timeout
                else:
                    return None
                p = next_member(p, end, c'}', &omore)
                if p == NULL:
                    return None
        elif key_is(s, n, b"id", 2):
            if top_seen & 8:
                return None
            top_seen |= 8
            p = scan_string(p, end, &s, &n)
            if p == NULL:
                return None
            rid = PyUnicode_FromStringAndSize(s, n)
        else:
            return None
        p = next_member(p, end, c'}', &more)
        if p == NULL:
            return None
    if ws(p, end) != end or not top_seen & 1 or offset != size:
        return None

    req = _new_request(model, version, tensors)
    if rid is not None:
        req.id = rid
    if params is not None:
        req.parameters = params
        req.timeout_us = timeout
    if out_names is None:
        return req, _BINARY_ALL if binary_all == 1 else None
    req.outputs = out_names
    wanted = [nm for nm, fl in zip(out_names, out_flags) if fl == 1 or (fl == -1 and binary_all == 1)]
    return req, frozenset(wanted) if wanted else None


def decode_fast(bytes body not None, Py_ssize_t header_length, str model not None,
                str version not None):
    """``(InferRequest, binary)`` where ``codec.decode_infer(body, header_length, model,
    version)`` returns ``(InferRequest, EncodePlan(binary) if binary else None)``: ``binary`` is
    the outputs to send in the binary extension (``{"*"}``: all), None when all go as JSON.
    None: the body is outside the fast grammar (or would be an error), and the general decoder
    must take it. (The plan is the front's type: this module knows only the core's.)"""
    global _n_fast, _n_none
    result = decode(body, header_length, model, version)
    if result is None:
        _n_none += 1
    else:
        _n_fast += 1
    return result


def counts():
    """(bodies decoded here, bodies handed back with None) since the process started."""
    return _n_fast, _n_none
