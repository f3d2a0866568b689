"""Target ``http_body``: ``gateway.front.http.codec.decode_infer`` on raw bodies.

Input: the body, JSON only; or ``<N>\\n<body>``, where N is the ``Inference-Header-Content-Length``
(the binary extension). Contract: the body decodes, or ``GatewayError`` with INVALID_ARGUMENT /
NOT_FOUND is raised; never another exception. And what decodes must be what an independent
reading of the body says (``check_decoded``): shapes and dtypes as declared, numbers as
``ref_list_to_array`` reads them, BYTES as ``ref_decode`` splits them, every binary byte
claimed once, data evenly nested, outputs named once, no input with both data and a binary size.
So a lenient decoder (one that accepts what it must refuse) fails here too, not only one that crashes.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import orjson

from fuzz._common import expect_client_error, ref_decode, ref_flatten, ref_list_to_array, shm_registry
from gateway.errors import GatewayError
from gateway.front.http.codec import decode_infer
from gateway.front.plan import EncodePlan
from gateway.shm import REGION
from gateway.types import DATATYPE_TO_NUMPY, InferRequest


def split_input(data: bytes) -> tuple[bytes, int]:
    """(body, header length or -1) from a target input, as the HTTP reader gives it: it reads at
    most 18 digits, so a longer length (or a negative one) arrives as -2, "not an integer"."""
    head, sep, rest = data.partition(b"\n")
    if sep and re.fullmatch(rb"-?[0-9]{1,19}", head):
        n = int(head)
        return rest, n if -2 <= n < 10**18 else -2
    return data, -1


def one_input(data: bytes) -> None:
    body, hlen = split_input(data)
    check_body(body, hlen)


def check_body(body: bytes, hlen: int) -> InferRequest | None:
    """Decode ``body`` (``hlen``: its JSON header length, -1 for all JSON) and check the contract;
    the request when it decoded."""
    try:
        req, plan = decode_infer(body, hlen, "m", "", shm_registry())
    except GatewayError as err:
        expect_client_error(err)
        return None
    check_decoded(req, body, hlen)
    check_plan(req, plan)
    return req


def check_plan(req: InferRequest, plan: EncodePlan | None) -> None:
    """The encode plan names only requested outputs (or "*" without an outputs list), none both
    binary and in shared memory; a plan that plans nothing is None."""
    if plan is None:
        return
    binary, shm = plan.binary or frozenset(), set(plan.shm or ())
    assert binary or shm, "an empty plan instead of None"
    assert not binary & shm, f"outputs both binary and in shared memory: {binary & shm}"
    named = set(req.outputs) if req.outputs is not None else {"*"}
    assert binary | shm <= named, f"plan names outputs not requested: {(binary | shm) - named}"


def check_decoded(req: InferRequest, body: bytes, hlen: int) -> None:
    head = body if hlen < 0 else body[:hlen]
    obj = orjson.loads(head)
    offset = len(head)
    inputs = obj["inputs"]
    assert len(req.inputs) == len(inputs), "an input was dropped or invented"
    for inp in inputs:
        name, datatype, shape = inp["name"], inp["datatype"], inp["shape"]
        assert type(name) is str and type(shape) is list, f"accepted name {name!r} / shape {shape!r}"
        assert all(type(d) is int and d >= 0 for d in shape), f"accepted shape {shape!r}"
        arr = req.inputs[name]
        dtype = DATATYPE_TO_NUMPY[datatype]
        assert arr.dtype == dtype, f"input {name!r}: {arr.dtype} for {datatype}"
        assert arr.shape == tuple(shape), f"input {name!r}: shape {arr.shape} for {shape}"
        count = int(np.prod(shape, dtype=object))
        params = inp.get("parameters")
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            assert "data" not in inp, f"input {name!r} accepted with both data and binary_data_size"
            assert hlen >= 0 or size == 0, "binary_data_size accepted without the binary extension"
            raw = body[offset:offset + size]
            assert len(raw) == size, f"input {name!r}: binary_data_size runs past the body"
            offset += size
            if datatype == "BYTES":
                assert arr.reshape(-1).tolist() == ref_decode(raw), f"input {name!r}: BYTES differ"
            else:
                assert arr.tobytes() == raw, f"input {name!r}: binary data differs"
        elif "data" in inp:
            _check_json_data(name, datatype, inp["data"], count, arr)
        else:
            assert isinstance(params, dict) and REGION in params, f"input {name!r} accepted without data"
    assert offset == len(body), f"{len(body) - offset} bytes of binary data accepted unclaimed"
    outputs = obj.get("outputs")
    if outputs is not None:
        names = [o["name"] for o in outputs]
        assert req.outputs == names, f"outputs {req.outputs} for {names}"
        assert len(set(names)) == len(names), f"accepted outputs named twice: {names}"
    rid = obj.get("id")
    assert rid is None or req.id == rid


def _check_json_data(name: str, datatype: str, data: Any, count: int, arr: np.ndarray) -> None:
    try:
        if datatype == "BYTES":
            flat = ref_flatten(data)
            want: Any = None
        else:
            want = ref_list_to_array(data, datatype, count)
    except (ValueError, OverflowError) as exc:
        raise AssertionError(f"input {name!r}: accepted data the reference refuses ({exc})") from None
    if want is None:
        assert all(type(x) is str for x in flat), f"input {name!r}: accepted non-string BYTES data"
        assert len(flat) == count, f"input {name!r}: {len(flat)} elements for a count of {count}"
        assert arr.reshape(-1).tolist() == [x.encode() for x in flat], f"input {name!r}: BYTES differ"
    else:
        np.testing.assert_array_equal(arr.reshape(-1), want, strict=True, err_msg=f"input {name!r}")
