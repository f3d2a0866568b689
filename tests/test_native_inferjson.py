"""gateway._native.inferjson.decode_fast against codec.decode_general (the interpreted decoder):
wherever the fast path answers, its answer is decode_general's, field by field and bit for bit;
wherever decode_general refuses a body, the fast path hands it back (None). Bodies come from a
grammar with random whitespace, key order, number spellings and binary tensors, then are mutated."""

from __future__ import annotations

import random
import timeit
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton_http
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._native.inferjson import counts
from gateway._native.inferjson import decode_fast as native_decode_fast
from gateway.errors import GatewayError
from gateway.front.http.codec import decode_general as decode_infer
from gateway.front.plan import EncodePlan
from gateway.types import DATATYPE_TO_NUMPY, InferRequest


def decode_fast(body: bytes, header_length: int, model: str, version: str) -> Any:
    """The native decoder's answer with its binary set as the plan codec.decode_infer builds."""
    r = native_decode_fast(body, header_length, model, version)
    return None if r is None else (r[0], None if r[1] is None else EncodePlan(r[1]))


SETTINGS = settings(max_examples=300, deadline=None)
NUMERIC = ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP32", "FP64"]
ALL_TYPES = [*NUMERIC, "FP16", "BYTES"]
BENCH_BODY = (b'{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,64],"data":['
              + b",".join(str(round(0.37 * i - 11.5, 4)).encode() for i in range(64)) + b"]}]}")


def same_plan(a: EncodePlan | None, b: EncodePlan | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.binary, a.shm, a.output_parameters) == (b.binary, b.shm, b.output_parameters)


def same_value(a: Any, b: Any) -> bool:
    """Equal and of the same types (``True == 1`` does not count)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def assert_same(got: tuple[InferRequest, EncodePlan | None], want: tuple[InferRequest, EncodePlan | None]) -> None:
    g, w = got[0], want[0]
    assert type(g) is InferRequest
    assert list(g.inputs) == list(w.inputs)
    for name, arr in g.inputs.items():
        ref = w.inputs[name]
        assert type(arr) is np.ndarray
        assert arr.dtype == ref.dtype and arr.dtype.isnative, name
        assert arr.shape == ref.shape, name
        assert arr.flags.c_contiguous, name
        assert arr.tobytes() == ref.tobytes(), (name, arr, ref)
    for field in ("model_name", "model_version", "outputs", "id", "parameters", "timeout_us", "entity"):
        assert same_value(getattr(g, field), getattr(w, field)), field
    assert same_plan(got[1], want[1]), (got[1], want[1])


def check(body: bytes, header_length: int = -1) -> bool:
    """True when the fast path took the body (and matched decode_infer)."""
    try:
        want = decode_infer(body, header_length, "m", "1")
    except GatewayError:
        want = None
    got = decode_fast(body, header_length, "m", "1")
    if got is None:
        return False
    assert want is not None, body
    assert_same(got, want)
    return True


# ---- a grammar of bodies, mostly inside the fast path's, sometimes just outside it ----

class Writer:
    """JSON text with random whitespace between tokens and random number spellings."""

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd

    def ws(self) -> str:
        r = self.rnd.random()
        if r < 0.7:
            return ""
        return "".join(self.rnd.choice(" \t\n\r") for _ in range(self.rnd.randint(1, 3)))

    def value(self, v: Any) -> str:
        w = self.ws
        if isinstance(v, Raw):
            return v.text
        if isinstance(v, dict):
            return "{" + w() + ("," + w()).join(f'"{k}"{w()}:{w()}{self.value(x)}{w()}' for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + w() + ("," + w()).join(self.value(x) + w() for x in v) + "]"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v + '"'
        if v is None:
            return "null"
        return str(v)


class Raw:
    """Text written as is (a number spelling, a broken token)."""

    def __init__(self, text: str) -> None:
        self.text = text


def number_text(rnd: random.Random, datatype: str) -> str:
    r = rnd.random()
    if datatype == "BOOL":
        return rnd.choice(["true", "false", "true", "false", "0", "1", "-0", "2", "1.0", "null"])
    if datatype.startswith(("INT", "UINT")):
        bits = int(datatype.removeprefix("U").removeprefix("INT"))
        lo, hi = (0, 2**bits - 1) if datatype.startswith("U") else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        if r < 0.7:
            return str(rnd.randint(lo, hi))
        return rnd.choice([str(lo), str(hi), str(lo - 1), str(hi + 1), "-0", "1.0", "1e2", "0x1", "01",
                           str(2**64), str(2**64 - 1), str(-(2**63)), "true"])
    if r < 0.35:
        return repr(rnd.uniform(-1e6, 1e6))
    if r < 0.5:
        return repr(float(np.float32(rnd.uniform(-5, 5))))
    if r < 0.6:
        return str(rnd.randint(-(2**70), 2**70))
    if r < 0.7:
        return f"{rnd.uniform(-10, 10):.{rnd.randint(0, 20)}{rnd.choice('eEf')}}"
    if r < 0.8:
        return repr(rnd.choice([1e308, -1e308, 3.5e38, 3.4028235e38, 1e-310, 5e-324, 2.2250738585072014e-308,
                                1.401298464324817e-45, 0.1, 1 / 3]))
    return rnd.choice(["0", "-0", "0.0", "-0.0", "1e400", "-1e400", "1e-400", "1E+2", "1e-2", "2.5E3", ".5",
                       "01", "-", "1.", "1.e5", "+1", "NaN", "Infinity", "-Infinity", "1e", "0e0", "-0e-0",
                       str(2**64), str(2**63), str(-(2**63) - 1), "123456789012345678901234567890", "true"])


def data_for(rnd: random.Random, datatype: str, shape: list[int]) -> Any:
    n = int(np.prod(shape)) if shape else 1
    if rnd.random() < 0.1:
        n = max(0, n + rnd.choice([-1, 1]))  # a count that disagrees with the shape
    if datatype == "BYTES":
        flat: list[Any] = [''.join(rnd.choice("ab c") for _ in range(3)) for _ in range(n)]
    else:
        flat = [Raw(number_text(rnd, datatype)) for _ in range(n)]
    r = rnd.random()
    if r < 0.55 or len(shape) < 2 or n != (int(np.prod(shape)) if shape else 1):
        return flat
    if r < 0.9:  # nested as the shape
        return nest(flat, shape) if n else flat
    if r < 0.95:  # unevenly
        return [flat[:1], flat[1:]]
    return [[x] for x in flat]  # evenly, not as the shape


def nest(flat: list[Any], shape: list[int]) -> Any:
    if len(shape) <= 1:
        return list(flat)
    step = len(flat) // shape[0]
    return [nest(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def shape_for(rnd: random.Random) -> list[Any]:
    ndim = rnd.choice([0, 1, 1, 2, 2, 3])
    shape: list[Any] = [rnd.choice([0, 1, 1, 2, 3, 4]) for _ in range(ndim)]
    if rnd.random() < 0.03:
        shape = rnd.choice([[0, 2**62, 2**62], [2**63], [0, 2**59], [-1], [1.0], [1] * 65, [0, 2**40]])
    return shape


def input_obj(rnd: random.Random, i: int, binary: bool, chunks: list[bytes]) -> dict[str, Any]:
    datatype = rnd.choice(ALL_TYPES) if rnd.random() < 0.2 else rnd.choice(NUMERIC)
    shape = shape_for(rnd)
    obj: dict[str, Any] = {"name": rnd.choice([f"in{i}", f"in{i}", "in0", "", "x y"]), "datatype": datatype,
                           "shape": [Raw(str(d)) if isinstance(d, int) else d for d in shape]}
    if binary and rnd.random() < 0.6 and datatype != "BYTES":
        count = int(np.prod(shape)) if shape and all(isinstance(d, int) and d >= 0 for d in shape) else 1
        size = count * DATATYPE_TO_NUMPY[datatype].itemsize if count < 1000 else 4
        if rnd.random() < 0.1:
            size += rnd.choice([-1, 1, 3])
        size = max(size, 0)
        raw = bytes(rnd.getrandbits(8) for _ in range(size))
        if datatype == "BOOL":
            raw = bytes(b & 1 for b in raw)
        chunks.append(raw)
        obj["parameters"] = {"binary_data_size": Raw(str(size))}
    else:
        obj["data"] = data_for(rnd, datatype, shape if all(isinstance(d, int) and 0 <= d < 10 for d in shape) else [1])
        if rnd.random() < 0.03:
            obj["parameters"] = {}
    if rnd.random() < 0.03:
        obj[rnd.choice(["extra", "name", "data"])] = 1
    keys = list(obj)
    rnd.shuffle(keys)
    return {k: obj[k] for k in keys}


def build_body(rnd: random.Random) -> tuple[bytes, int]:
    binary = rnd.random() < 0.4
    chunks: list[bytes] = []
    doc: dict[str, Any] = {"inputs": [input_obj(rnd, i, binary, chunks) for i in range(rnd.choice([1, 1, 2, 3]))]}
    if rnd.random() < 0.3:
        doc["id"] = rnd.choice(["", "req-1", "a b", "x\\n", "\u00e9"])
    if rnd.random() < 0.4:
        outs: list[Any] = []
        for j in range(rnd.choice([0, 1, 2, 3])):
            out: dict[str, Any] = {"name": rnd.choice([f"out{j}", "out0"])}
            r = rnd.random()
            if r < 0.3:
                out["parameters"] = {"binary_data": rnd.random() < 0.5}
            elif r < 0.35:
                out["parameters"] = {}
            elif r < 0.4:
                out["parameters"] = {"classification": 2}
            outs.append(out)
        doc["outputs"] = outs
    if rnd.random() < 0.4:
        params: dict[str, Any] = {}
        if rnd.random() < 0.6:
            params["binary_data_output"] = rnd.random() < 0.5
        if rnd.random() < 0.5:
            params["timeout"] = Raw(rnd.choice(["0", "5", "1000000", "-1", "1.5", str(2**63), "true"]))
        if rnd.random() < 0.1:
            params["other"] = 1
        doc["parameters"] = params
    if rnd.random() < 0.03:
        doc["unknown"] = []
    keys = list(doc)
    rnd.shuffle(keys)
    w = Writer(rnd)
    head = (w.ws() + w.value({k: doc[k] for k in keys}) + w.ws()).encode()
    if binary:
        return head + b"".join(chunks), len(head)
    return head, -1


def mutate(rnd: random.Random, body: bytes, header_length: int) -> tuple[bytes, int]:
    r = rnd.random()
    end = header_length if header_length >= 0 else len(body)
    i = rnd.randrange(max(end, 1))
    if r < 0.3:  # truncated
        return (body[:i], -1) if header_length < 0 else (body[:i] + body[end:], i)
    if r < 0.5:  # a byte replaced
        c = bytes([rnd.choice(b'{}[],:"\\ 0-.eE+x\x80\x00')])
        return body[:i] + c + body[i + 1:], header_length
    if r < 0.6:  # a byte inserted
        c = bytes([rnd.choice(b'{}[],:"\\ 0-.eE')])
        return body[:i] + c + body[i:], (header_length + 1 if header_length >= 0 else -1)
    if r < 0.7:  # binary part cut or grown
        return body + b"\x00" if rnd.random() < 0.5 else body[:-1], header_length
    if r < 0.8:
        return body, (header_length + rnd.choice([-1, 1]) if header_length >= 0 else len(body))
    return body, header_length


@SETTINGS
@given(st.randoms(use_true_random=False))
def test_random_bodies_match_decode_infer(rnd: random.Random) -> None:
    body, hl = build_body(rnd)
    check(body, hl)


@SETTINGS
@given(st.randoms(use_true_random=False))
def test_mutated_bodies_match_or_hand_back(rnd: random.Random) -> None:
    body, hl = build_body(rnd)
    for _ in range(3):
        body, hl = mutate(rnd, body, hl)
        check(body, hl)


def test_grammar_reaches_both_outcomes() -> None:
    """The generator is worth something only if it produces bodies on both sides of the line."""
    rnd = random.Random(7)
    taken = sum(check(*build_body(rnd)) for _ in range(600))
    assert 150 < taken < 600


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**70), 2**70), min_size=1,
                max_size=20), st.sampled_from(["FP32", "FP64"]))
def test_floats_bit_for_bit(values: list[float | int], datatype: str) -> None:
    text = ",".join(repr(v) for v in values)
    body = f'{{"inputs":[{{"name":"x","datatype":"{datatype}","shape":[{len(values)}],"data":[{text}]}}]}}'.encode()
    check(body)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(NUMERIC[1:9]), st.data())
def test_integers_in_range_are_taken(datatype: str, data: st.DataObject) -> None:
    info = np.iinfo(DATATYPE_TO_NUMPY[datatype])
    values = data.draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=1, max_size=10))
    text = ",".join(map(str, values))
    body = f'{{"inputs":[{{"name":"x","datatype":"{datatype}","shape":[{len(values)}],"data":[{text}]}}]}}'.encode()
    assert check(body)


@pytest.mark.parametrize("text", ["-0", "1e400", "-1e400", "1e-400", "01", ".5", "1.", "+1", "NaN", "Infinity",
                                  "1e", "--1", "0x10", "1.0e", "- 1"])
def test_float_spellings(text: str) -> None:
    """JSON's number grammar exactly: what orjson reads, the fast path reads alike or hands back."""
    body = f'{{"inputs":[{{"name":"x","datatype":"FP32","shape":[1],"data":[{text}]}}]}}'.encode()
    took = check(body)
    if text == "-0":
        assert took
    if text in ("01", ".5", "1.", "+1", "NaN", "Infinity", "1e400", "--1", "0x10"):
        assert not took


@pytest.mark.parametrize("body", [
    b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}],"inputs":[]}',
    b'{"inputs":[{"name":"x","name":"y","datatype":"FP32","shape":[1],"data":[1]}]}',
    b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]},{"name":"x","datatype":"FP32","shape":[1],"data":[1]}]}',
    b'{"inputs":[{"name":"x\\u0041","datatype":"FP32","shape":[1],"data":[1]}]}',
    b'{"inputs":[{"name":"\xc3\xa9","datatype":"FP32","shape":[1],"data":[1]}]}',
    b'{"inputs":[{"name":"x","datatype":"FP32","shape":[2],"data":[1]}]}',
    b'{"inputs":[{"name":"x","datatype":"INT8","shape":[1],"data":[128]}]}',
    b'{"inputs":[{"name":"x","datatype":"UINT8","shape":[1],"data":[-1]}]}',
    b'{"inputs":[{"name":"x","datatype":"FP16","shape":[1],"data":[1]}]}',
    b'{"inputs":[{"name":"x","datatype":"BYTES","shape":[1],"data":["a"]}]}',
    b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}],"outputs":[{"name":"a"},{"name":"a"}]}',
    b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}],"parameters":{"timeout":-1}}',
    b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}],"parameters":{"priority":1}}',
    b'{"inputs":[]}',
    b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}]} x',
    b'{"inputs":[{"name":"x","datatype":"FP32","shape":[2],"data":[[1],2]}]}',
    b'{"inputs":[{"name":"x","datatype":"FP32","shape":[2],"data":[[1,2],[]]}]}',
])
def test_handed_back(body: bytes) -> None:
    assert decode_fast(body, -1, "m", "1") is None
    check(body)


@pytest.mark.parametrize("body", [
    BENCH_BODY,
    b' {"id":"a","inputs":[{"data":[[1,2],[3,4]],"shape":[2,2],"datatype":"INT32","name":"x"}],"outputs":[]} ',
    b'{"inputs":[{"name":"x","datatype":"BOOL","shape":[4],"data":[true,false,1,0]}],'
    b'"parameters":{"binary_data_output":true,"timeout":100}}',
    b'{"inputs":[{"name":"x","datatype":"FP64","shape":[0,3],"data":[]}],'
    b'"outputs":[{"name":"a","parameters":{"binary_data":false}},{"name":"b"}],"parameters":{"binary_data_output":true}}',
    b'{"inputs":[{"name":"x","datatype":"UINT64","shape":[],"data":[18446744073709551615]}]}',
    b'{"inputs":[{"name":"x","datatype":"INT64","shape":[2],"data":[[-9223372036854775808],[9223372036854775807]]}]}',
])
def test_taken(body: bytes) -> None:
    assert check(body)


def triton_bodies() -> list[tuple[bytes, int]]:
    rng = np.random.default_rng(3)
    a = triton_http.InferInput("INPUT0", [2, 8], "FP32")
    a.set_data_from_numpy(rng.standard_normal((2, 8)).astype(np.float32))
    b = triton_http.InferInput("INPUT1", [3], "INT64")
    b.set_data_from_numpy(np.array([1, -2, 3], dtype=np.int64), binary_data=False)
    c = triton_http.InferInput("INPUT2", [2, 2], "BOOL")
    c.set_data_from_numpy(np.array([[True, False], [False, True]]))
    d = triton_http.InferInput("INPUT3", [4], "FP64")
    d.set_data_from_numpy(rng.standard_normal(4), binary_data=False)
    outs = [triton_http.InferRequestedOutput("OUT0", binary_data=True),
            triton_http.InferRequestedOutput("OUT1", binary_data=False)]
    gen = triton_http.InferenceServerClient.generate_request_body
    bodies = [gen([a]), gen([a, b, c, d], outputs=outs, request_id="r1", timeout=5000), gen([b, d]),
              gen([d], outputs=[outs[1]])]
    return [(body, -1 if hl is None else hl) for body, hl in bodies]


@pytest.mark.parametrize("case", range(4))
def test_tritonclient_bodies_taken(case: int) -> None:
    body, hl = triton_bodies()[case]
    assert check(body, hl)
    got = decode_fast(body, hl, "m", "1")
    assert got is not None
    if hl >= 0 and "INPUT0" in got[0].inputs:
        arr = got[0].inputs["INPUT0"]
        assert arr.base is not None and not arr.flags.owndata  # a view over the body, not a copy


@pytest.mark.parametrize("body,hl", [triton_bodies()[1], (BENCH_BODY, -1)])
def test_every_truncation(body: bytes, hl: int) -> None:
    end = hl if hl >= 0 else len(body)
    for i in range(end):
        if hl >= 0:
            check(body[:i] + body[end:], i)
            check(body[:i], hl)
        else:
            check(body[:i])


def test_counts() -> None:
    taken, handed = counts()
    assert decode_fast(BENCH_BODY, -1, "m", "1") is not None
    assert decode_fast(b"{}", -1, "m", "1") is None
    assert decode_fast(b"[1]", 5, "m", "1") is None
    assert counts() == (taken + 1, handed + 2)


def test_big_tensor_fills_without_the_gil() -> None:
    values = np.random.default_rng(1).standard_normal(100_000)
    body = ('{"inputs":[{"name":"x","datatype":"FP64","shape":[100000],"data":['
            + ",".join(map(repr, values.tolist())) + "]}]}").encode()
    assert check(body)
    got = decode_fast(body, -1, "m", "1")
    assert got is not None and np.array_equal(got[0].inputs["x"], values)


def test_timing_print() -> None:
    """Not an assertion: the per-body cost of each path on the wrk bench body."""
    n = 20_000
    fast = min(timeit.repeat(lambda: decode_fast(BENCH_BODY, -1, "m", "1"), number=n, repeat=3)) / n
    slow = min(timeit.repeat(lambda: decode_infer(BENCH_BODY, -1, "m", "1"), number=n, repeat=3)) / n
    print(f"\nbench body: decode_fast {fast * 1e6:.2f} us, decode_infer {slow * 1e6:.2f} us")


_TOKEN = st.builds(
    lambda sign, whole, frac, exp: sign + whole + (("." + frac) if frac else "") + exp,
    st.sampled_from(["", "-"]),
    st.from_regex(r"(0|[1-9][0-9]{0,17})", fullmatch=True),
    st.from_regex(r"[0-9]{0,18}", fullmatch=True),
    st.one_of(st.just(""), st.from_regex(r"[eE][+-]?[0-9]{1,3}", fullmatch=True)),
)


@SETTINGS
@given(st.lists(_TOKEN, min_size=1, max_size=40), st.sampled_from(["FP64", "FP32"]))
def test_float_tokens_round_exactly_as_the_general_path(tokens: list[str], datatype: str) -> None:
    """Short decimals take the exact multiply-or-divide path, the rest from_chars: either way
    the value is the correctly rounded double orjson reads (then float32, for FP32)."""
    body = (f'{{"inputs":[{{"name":"x","datatype":"{datatype}","shape":[{len(tokens)}],"data":['
            + ",".join(tokens) + "]}]}").encode()
    try:
        want = decode_infer(body, -1, "m", "1")
    except GatewayError:
        assert decode_fast(body, -1, "m", "1") is None
        return
    got = decode_fast(body, -1, "m", "1")
    if got is not None:  # out-of-range values are handed back
        assert got[0].inputs["x"].tobytes() == want[0].inputs["x"].tobytes()


_SHORT = st.builds(
    lambda sign, whole, frac, tail: sign + whole + "." + frac + tail,
    st.sampled_from(["", "-"]),
    st.from_regex(r"(0|[1-9][0-9]{0,8})", fullmatch=True),
    st.from_regex(r"[0-9]{1,9}", fullmatch=True),
    st.sampled_from(["", "", "", " ", "e0", "E-3", "0"]),
)


@SETTINGS
@given(st.lists(_SHORT, min_size=1, max_size=40), st.sampled_from(["FP64", "FP32"]))
def test_short_decimals_read_at_once_are_the_general_paths_values(tokens: list[str], datatype: str) -> None:
    """The tokens a client writes most ("-0.123456") are read in one step (gw_fast_decimal): at
    and around its limits (seven digits each side, an exponent or more digits after, the last
    20 bytes of a body) the values must still be exactly the general path's."""
    body = (f'{{"inputs":[{{"name":"x","datatype":"{datatype}","shape":[{len(tokens)}],"data":['
            + ",".join(tokens) + "]}]}").encode()
    want = decode_infer(body, -1, "m", "1")
    got = decode_fast(body, -1, "m", "1")
    assert got is not None
    assert got[0].inputs["x"].tobytes() == want[0].inputs["x"].tobytes()
