"""gateway._native.sigcheck.accepted_rows against the interpreted check it shortcuts: where it
accepts, check_request's reference loop accepts with the same rows; where that refuses, it
hands back -1 (random signatures and requests)."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._native.sigcheck import accepted_rows
from gateway.errors import GatewayError
from gateway.pipeline.validate import Signature, check_request
from gateway.types import InferRequest, TensorSpec

TYPES = ["FP32", "FP64", "INT64", "INT32", "BOOL", "FP16"]
_DT = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_,
       "FP16": np.float16}


def reference(sig: Signature, req: InferRequest) -> int | None:
    """check_request with the native path off (a Signature without ``checks``)."""
    plain = Signature(sig.model, sig.inputs, sig.outputs, sig.batching, sig.variable_inner_dims, sig.output_names)
    try:
        return check_request(plain, req)
    except GatewayError:
        return None


@st.composite
def case(draw: Any) -> tuple[Signature, InferRequest]:
    batching = draw(st.booleans())
    n = draw(st.integers(1, 3))
    specs = []
    for i in range(n):
        inner = tuple(draw(st.lists(st.sampled_from([-1, 1, 2, 3]), max_size=3)))
        specs.append(TensorSpec(f"in{i}", draw(st.sampled_from(TYPES)), ((-1,) + inner) if batching else inner))
    outputs = [TensorSpec("out0", "FP32", (-1, 1)), TensorSpec("out1", "FP32", (-1, 1))]
    sig = Signature.build("m", specs, outputs, batching)
    rows = draw(st.integers(0, 3))
    tensors: dict[str, np.ndarray] = {}
    for spec in specs:
        if draw(st.integers(0, 9)) == 0:
            continue  # missing
        shape = [rows if (batching and j == 0) else (draw(st.sampled_from([1, 2, 3])) if d == -1 else d)
                 for j, d in enumerate(spec.shape)]
        if draw(st.integers(0, 7)) == 0 and shape:
            shape[-1] += 1  # wrong fixed dimension
        if draw(st.integers(0, 9)) == 0:
            shape.append(1)  # wrong rank
        dtype = _DT[spec.datatype] if draw(st.integers(0, 7)) else np.int8
        arr = np.zeros(shape, dtype=dtype)
        if draw(st.integers(0, 7)) == 0 and arr.ndim and arr.shape[-1] > 1:
            arr = np.zeros([*shape[:-1], shape[-1] * 2], dtype=dtype)[..., ::2]  # strided view
        if draw(st.integers(0, 9)) == 0 and arr.ndim and batching:
            arr = np.zeros([arr.shape[0] + 1, *arr.shape[1:]], dtype=dtype)  # rows disagree
        tensors[spec.name] = arr
    if draw(st.integers(0, 9)) == 0:
        tensors["extra"] = np.zeros(1, np.float32)
    req = InferRequest("m", "", tensors)
    req.outputs = draw(st.one_of(st.none(), st.lists(st.sampled_from(["out0", "out1", "nope"]), max_size=2)))
    return sig, req


@settings(max_examples=600, deadline=None)
@given(case())
def test_accepted_rows_agrees_with_check_request(c: tuple[Signature, InferRequest]) -> None:
    sig, req = c
    want = reference(sig, InferRequest(req.model_name, req.model_version, dict(req.inputs), outputs=req.outputs))
    got = accepted_rows(sig.checks, req.inputs, sig.batching, req.outputs, sig.output_set)
    if want is None:
        assert got == -1
    elif got != -1:
        assert got == want
    contiguous = all(a.flags.c_contiguous for a in req.inputs.values())
    if want is not None and contiguous and type(req.inputs) is dict:
        assert got == want  # the common case must take the native path


def test_the_fast_path_returns_what_check_request_returns() -> None:
    sig = Signature.build("m", [TensorSpec("x", "FP32", (-1, 4))], [TensorSpec("y", "FP32", (-1, 1))], True)
    req = InferRequest("m", "", {"x": np.zeros((3, 4), np.float32)})
    assert check_request(sig, req) == 3
    assert accepted_rows(sig.checks, req.inputs, True, None, sig.output_set) == 3
    assert accepted_rows(sig.checks, {"x": np.zeros((3, 4), np.float64)}, True, None, sig.output_set) == -1
