"""The HTTP codec's fast paths agree with its general paths on random tensors; decode says how to
encode the answer (binary extension, shared memory) beside the request."""

from __future__ import annotations

import os

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from models import random_array

from gateway.errors import Code, GatewayError
from gateway.front.http.codec import decode_infer, encode_infer
from gateway.shm import SharedMemoryRegistry
from gateway.types import InferResponse

NUMERIC = ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP16", "FP32", "FP64"]

shapes = st.lists(st.integers(0, 4), min_size=1, max_size=3).map(tuple)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(NUMERIC + ["BYTES"]), shapes), min_size=1, max_size=3),
       st.text(max_size=5), st.integers(0, 2**32))
def test_json_response_fast_path_equals_general_path(outputs, rid, seed) -> None:
    rng = np.random.default_rng(seed)
    arrays = {f"out{i}": random_array(dt, shape, rng) for i, (dt, shape) in enumerate(outputs)}
    resp = InferResponse("m", "3", arrays, rid)
    fast, hlen = encode_infer(resp, None)
    general, hlen2 = encode_infer(resp, frozenset())  # a (empty) binary set takes the general path
    assert hlen == hlen2 == -1
    assert orjson.loads(fast) == orjson.loads(general)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(NUMERIC), shapes, st.integers(0, 2**32), st.booleans())
def test_json_request_fast_path_equals_general_path(datatype, shape, seed, nested) -> None:
    """Numeric inputs take the native json_tensor path; with parameters they take the Python one."""
    arr = random_array(datatype, shape, np.random.default_rng(seed))
    data = arr.tolist() if nested else arr.reshape(-1).tolist()
    tensor = {"name": "X", "datatype": datatype, "shape": list(shape), "data": data}
    fast, _ = decode_infer(orjson.dumps({"inputs": [tensor]}), -1, "m", "")
    general, _ = decode_infer(orjson.dumps({"inputs": [{**tensor, "parameters": {}}]}), -1, "m", "")
    for got in (fast.inputs["X"], general.inputs["X"]):
        assert got.dtype == arr.dtype and got.shape == arr.shape
        np.testing.assert_array_equal(got, arr)


_DIM = st.integers(0, 4) | st.sampled_from([2**31, 2**62, 2**63, 2**64 - 1, -1]) | st.booleans() | st.floats()
_LEAF = st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=3) | st.booleans() | st.none()
_DATA = st.recursive(_LEAF, lambda kids: st.lists(kids, max_size=4), max_leaves=12)
_TENSOR = st.fixed_dictionaries(
    {"name": st.sampled_from(["X", "Y"]) | st.integers(0, 9),
     "datatype": st.sampled_from(NUMERIC + ["BYTES", "FP8", ""])},
    optional={"shape": st.lists(_DIM, max_size=5) | st.integers(-9, 9) | st.sampled_from(
                  [[1] * 65, [0, 2**62, 2**62], [2**63], [1, 2**63], [0, 2**63 - 1, 4]]),
              "data": _DATA | st.sampled_from([[], ["a"], [1.0], [True]]),
              "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-1, 70)})})


@settings(max_examples=400, deadline=None)
@given(st.lists(_TENSOR, max_size=3), st.binary(max_size=64), st.booleans(),
       st.lists(st.fixed_dictionaries({"name": st.sampled_from(["A", "B"])}), max_size=3))
def test_any_body_decodes_or_raises_gateway_error(inputs, tail, binary, outputs) -> None:
    """Whatever a client sends, decoding either succeeds or raises GatewayError (a 4xx):
    never another exception, which would leave the request unanswered or answered 500."""
    head = orjson.dumps({"inputs": inputs, "outputs": outputs})
    body, hlen = (head + tail, len(head)) if binary else (head, -1)
    try:
        decode_infer(body, hlen, "m", "")
    except GatewayError as err:
        assert err.code is Code.INVALID_ARGUMENT


@pytest.mark.parametrize(("datatype", "shape", "data"), [("BYTES", [], "a"), ("BYTES", [1], "a"), ("FP32", [], 1.5)])
def test_data_must_be_an_array_whatever_the_shape(datatype: str, shape: list[int], data: object) -> None:
    """Found by the fuzz harness (fuzz/corpus/http_body/fuzz-bytes-data-not-an-array): a bare
    string as BYTES data was taken for a one-element tensor, where a bare number is refused."""
    body = orjson.dumps({"inputs": [{"name": "X", "datatype": datatype, "shape": shape, "data": data}]})
    with pytest.raises(GatewayError, match="data must be a JSON array") as info:
        decode_infer(body, -1, "m", "")
    assert info.value.code is Code.INVALID_ARGUMENT
    ok = orjson.dumps({"inputs": [{"name": "X", "datatype": datatype, "shape": shape, "data": [data]}]})
    assert decode_infer(ok, -1, "m", "")[0].inputs["X"].shape == tuple(shape)


X = {"name": "X", "datatype": "FP32", "shape": [1], "data": [1.0]}


def _plan(shm: SharedMemoryRegistry | None = None, **fields: object) -> tuple[frozenset[str] | None, set[str] | None]:
    """(binary outputs, outputs in shared memory) of the plan decode returns; (None, None): no plan."""
    req, plan = decode_infer(orjson.dumps({"inputs": [X], **fields}), -1, "m", "", shm)
    assert req.inputs["X"].tolist() == [1.0]
    if plan is None:
        return None, None
    assert plan.output_parameters is None  # a gRPC field
    return plan.binary, None if plan.shm is None else set(plan.shm)


def test_the_encode_plan_says_which_outputs_go_binary_or_to_shared_memory() -> None:
    """What the encoder needs travels beside the request; a request that asks for nothing special
    gets no plan at all (the hot path allocates none)."""
    assert _plan() == (None, None)
    assert _plan(outputs=[{"name": "A"}, {"name": "B", "parameters": {"binary_data": False}}]) == (None, None)
    assert _plan(parameters={"binary_data_output": True}) == (frozenset(["*"]), None)
    assert _plan(parameters={"binary_data_output": True},
                 outputs=[{"name": "A"}, {"name": "B", "parameters": {"binary_data": False}}]) == (frozenset(["A"]), None)
    assert _plan(outputs=[{"name": "A", "parameters": {"binary_data": True}}, {"name": "B"}]) == (frozenset(["A"]), None)

    name = f"gateway-test-codec-{os.getpid()}"
    with open(f"/dev/shm/{name}", "wb") as f:
        f.write(bytes(64))
    shm = SharedMemoryRegistry()
    try:
        shm.register("r0", "/" + name, 0, 64)
    finally:
        os.unlink(f"/dev/shm/{name}")
    try:
        in_shm = {"shared_memory_region": "r0", "shared_memory_byte_size": 16}
        assert _plan(shm, outputs=[{"name": "A", "parameters": in_shm}]) == (None, {"A"})
        assert _plan(shm, parameters={"binary_data_output": True},
                     outputs=[{"name": "A", "parameters": in_shm}, {"name": "B"}]) == (frozenset(["B"]), {"A"})
    finally:
        shm.close()
