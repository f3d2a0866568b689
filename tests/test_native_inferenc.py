"""The native infer-response encoder (gateway._native.inferenc) against the general path of
codec.encode_infer (dicts + orjson, numbers by json_array) and against what _Call.done frames:
byte for byte, and by value (every finite float reads back bit for bit)."""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway._native.inferenc import encode_body, http_response, json_array
from gateway.front.http.codec import encode_general, encode_infer
from gateway.front.http.server import _BIN_CL, _CL, _OK_200
from gateway.types import InferResponse

NUMERIC = ["?", "i1", "<i2", "<i4", "<i8", "u1", "<u2", "<u4", "<u8", "<f2", "<f4", "<f8"]


def framed(body: bytes, hlen: int, extra: bytes) -> bytes:
    """The answer server.py's _Call.done builds (its expressions, `close` being `extra`)."""
    if hlen < 0:
        return b"".join((_OK_200, _CL, str(len(body)).encode(), b"\r\n", extra, b"\r\n", body))
    return b"".join((_OK_200, _BIN_CL, str(hlen).encode(), b"\r\ncontent-length: ",
                     str(len(body)).encode(), b"\r\n", extra, b"\r\n", body))


@st.composite
def tensors(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(NUMERIC)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
    arr = draw(hnp.arrays(dtype, shape))
    layout = draw(st.sampled_from(["c", "c", "transposed", "strided", "swapped"]))
    if layout == "transposed":
        arr = arr.T
    elif layout == "strided" and arr.ndim:
        arr = arr[::2]
    elif layout == "swapped":
        arr = arr.astype(arr.dtype.newbyteorder(">"))
    return arr


NAME = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=8)
PARAM = st.one_of(st.integers(-(2**63), 2**63 - 1), st.booleans(), NAME, st.floats(allow_nan=False, allow_infinity=False))


@st.composite
def responses(draw: st.DrawFn) -> tuple[InferResponse, frozenset[str] | None]:
    names = draw(st.lists(NAME, min_size=1, max_size=3, unique=True))
    outputs = {n: draw(tensors()) for n in names}
    resp = InferResponse(draw(NAME), draw(st.sampled_from(["1", "2", "v\"1"])), outputs,
                         id=draw(st.one_of(st.just(""), NAME, st.sampled_from(['a"b\\c', "tab\there", "é"]))),
                         parameters=draw(st.one_of(st.none(), st.dictionaries(NAME, PARAM, max_size=3))))
    binary = draw(st.one_of(st.none(), st.just(frozenset()), st.just(frozenset(["*"])),
                            st.sets(st.sampled_from([*names, "absent"])).map(frozenset)))
    return resp, binary


def check_values(arr: np.ndarray, data: list) -> None:
    flat = arr.reshape(-1)
    assert len(data) == flat.size
    if arr.dtype.kind != "f":
        assert data == flat.tolist()
        return
    finite = np.isfinite(flat)
    assert [x is None for x in data] == (~finite).tolist()  # NaN, inf: null
    back = np.array([0.0 if x is None else x for x in data], dtype=np.float64).astype(arr.dtype.newbyteorder("="))
    native = flat.astype(arr.dtype.newbyteorder("="))
    assert back[finite].tobytes() == native[finite].tobytes()  # bit for bit, -0.0 and subnormals too
    assert all(type(x) is float for x in data if x is not None)  # "1.0", never "1"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses(), st.sampled_from([b"", b"connection: close\r\n",
                                      b"x-gateway-arm: 2\r\ncontent-encoding: identity\r\nconnection: close\r\n"]))
def test_native_equals_general_and_framing(case: tuple[InferResponse, frozenset[str] | None], extra: bytes) -> None:
    resp, binary = case
    body, hlen = encode_general(resp, binary)
    assert encode_body(resp, binary) == (body, hlen)
    assert encode_infer(resp, binary) == (body, hlen)
    assert http_response(resp, binary, extra) == framed(body, hlen, extra)
    doc = orjson.loads(body if hlen < 0 else body[:hlen])
    assert doc["model_name"] == resp.model_name and doc["model_version"] == resp.model_version
    assert doc.get("id", "") == resp.id
    assert doc.get("parameters") == (resp.parameters or None)
    every = binary is not None and "*" in binary
    offset = hlen
    for out, (name, arr) in zip(doc["outputs"], resp.outputs.items(), strict=True):
        assert out["name"] == name and out["shape"] == list(arr.shape)
        if binary is not None and (every or name in binary):
            size = out["parameters"]["binary_data_size"]
            assert "data" not in out and size == arr.nbytes
            assert body[offset:offset + size] == arr.astype(arr.dtype.newbyteorder("<")).tobytes()
            offset += size
        else:
            check_values(arr, out["data"])
    assert hlen < 0 or offset == len(body)


@settings(max_examples=300, deadline=None)
@given(tensors())
def test_json_array_reads_back_as_orjson_does(arr: np.ndarray) -> None:
    text = json_array(arr)
    ours = orjson.loads(text)
    check_values(arr, ours)
    theirs = orjson.loads(orjson.dumps(np.ascontiguousarray(arr, arr.dtype.newbyteorder("=")).reshape(-1),
                                       option=orjson.OPT_SERIALIZE_NUMPY))
    if arr.dtype.kind == "f":  # the same values of arr's type (as doubles they may differ: to_chars
        # writes float32 69141448 as 69141448.0, orjson as 69141450.0; both read back as that float32)
        native = arr.dtype.newbyteorder("=")
        ours_t = np.array([math.nan if x is None else x for x in ours], np.float64).astype(native)
        theirs_t = np.array([math.nan if x is None else x for x in theirs], np.float64).astype(native)
        assert ours_t.tobytes() == theirs_t.tobytes()  # bit for bit: -0.0 too
    else:
        assert ours == theirs


def test_number_spelling() -> None:
    f = np.array([1.0, -0.0, 0.5, np.nan, np.inf, -np.inf, 1e-5, 1e300, 16777216.0, 5e-324])
    assert json_array(f) == b"[1.0,-0.0,0.5,null,null,null,1e-05,1e+300,16777216.0,5e-324]"
    assert json_array(f[:3].astype(np.float32)) == b"[1.0,-0.0,0.5]"
    assert json_array(np.array([0.1], np.float32)) == b"[0.1]"  # float32 shortest, not 0.10000000149
    assert json_array(np.array([0.1], np.float16)) == b"[0.099975586]"  # the half's value, float32 shortest
    assert json_array(np.array([[True], [False]])) == b"[true,false]"
    assert json_array(np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max])) == \
        b"[-9223372036854775808,9223372036854775807]"
    assert json_array(np.array([np.iinfo(np.uint64).max], np.uint64)) == b"[18446744073709551615]"
    assert json_array(np.zeros((3, 0), np.float32)) == b"[]"
    assert json_array(np.array(7, np.int8)) == b"[7]"  # 0-d: one value
    with pytest.raises(ValueError, match="numbers and booleans"):
        json_array(np.array(["a"], dtype=object))
    with pytest.raises(ValueError, match="complex64"):
        json_array(np.zeros(2, np.complex64))


def test_every_half_reads_back() -> None:
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    check_values(halves, orjson.loads(json_array(halves)))


def test_large_tensor_formats_without_the_gil() -> None:
    arr = np.random.default_rng(0).standard_normal(100_000)  # 800 kB: past GIL_RELEASE_BYTES
    check_values(arr, orjson.loads(json_array(arr)))
    resp = InferResponse("m", "1", {"y": arr.reshape(1000, 100).astype(np.float32)})
    assert encode_body(resp, None) == encode_general(resp, None)


def test_bytes_outputs() -> None:
    words = np.array([b"a", "\u00e9".encode(), b'"q"', b"\xff"], dtype=object).reshape(2, 2)
    resp = InferResponse("m", "1", {"w": words, "n": np.arange(3, dtype=np.int32)}, id="r")
    for binary in (None, frozenset(["w"]), frozenset(["*"])):
        body, hlen = encode_general(resp, binary)
        assert encode_body(resp, binary) == (body, hlen)
        assert http_response(resp, binary, b"") == framed(body, hlen, b"")
    assert orjson.loads(encode_body(resp, None)[0])["outputs"][0]["data"] == ["a", "\u00e9", '"q"', "\ufffd"]


def test_unsupported_outputs() -> None:
    assert encode_body(InferResponse("m", "1", {"y": [1.0]}), None) is None  # type: ignore[dict-item]
    assert http_response(InferResponse("m", "1", {"y": [1.0]}), None, b"") is None  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="complex"):
        encode_body(InferResponse("m", "1", {"y": np.zeros(1, np.complex64)}), None)
    with pytest.raises(TypeError):  # a lone surrogate is no UTF-8: orjson's error, as on the general path
        encode_body(InferResponse("m", "1", {"y": np.zeros(1)}, id="\ud800"), None)


def test_fragment_caches_stay_bounded() -> None:
    arr = np.zeros(1, np.float32)
    for i in range(5000):
        body, _ = encode_body(InferResponse(f"m{i}", "1", {f"o{i}": arr}), None)
        assert body.startswith(f'{{"model_name":"m{i}"'.encode()) and f'"name":"o{i}"'.encode() in body


WIDTH: dict[type, int] = {np.float16: 20, np.float32: 20, np.float64: 28}  # gw_width, comma included


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_longest_spellings_fit_the_bound(dtype: type) -> None:
    """Random bit patterns (every exponent), negated, plus integral values printed fixed-point
    with ".0": no value's text reaches the per-value bound the buffer is sized with."""
    bits = np.random.default_rng(2).integers(0, 2**63, size=200_000, dtype=np.uint64)
    arr = bits.view(np.float64) if dtype is np.float64 else bits.astype(np.uint32).view(np.float32)
    worst = [-1234567890123456774144.0, -123456789012345680.0, -2.2250738585072014e-308, -1.17549435e-38,
             -3.4028235e38, -999999936.0]
    arr = np.concatenate([arr, -arr, np.array(worst, dtype)])
    text = json_array(arr)
    assert max(map(len, text[1:-1].split(b","))) < WIDTH[dtype] - 2
    check_values(arr, orjson.loads(text))
