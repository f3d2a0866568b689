"""Target ``grpc_request``: ``gateway.front.grpc.codec.decode_infer_request`` on a serialized
``ModelInferRequest`` (bytes that protobuf cannot parse are skipped: grpc never hands those over).

Contract: the message decodes, or ``GatewayError`` with INVALID_ARGUMENT / NOT_FOUND is raised;
never another exception. What decodes must agree with the message (``check_decoded``): every
input once, its shape and dtype as declared, raw contents byte for byte (BYTES split as
``ref_decode`` splits them), typed contents value for value, the requested outputs in order.
"""

from __future__ import annotations

import numpy as np
from google.protobuf.message import DecodeError

from fuzz._common import expect_client_error, ref_decode, shm_registry
from gateway.errors import GatewayError
from gateway.front.grpc.codec import CONTENTS_FIELD, decode_infer_request
from gateway.front.plan import EncodePlan
from gateway.pb import service as pb
from gateway.shm import REGION
from gateway.types import DATATYPE_TO_NUMPY, InferRequest


def one_input(data: bytes) -> None:
    try:
        msg = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        return
    check_message(msg)


def check_message(msg: pb.ModelInferRequest, deadline_us: int = 0) -> InferRequest | None:
    try:
        req, plan = decode_infer_request(msg, deadline_us, shm_registry())
    except GatewayError as err:
        expect_client_error(err)
        return None
    check_decoded(req, msg)
    check_plan(plan, msg)
    return req


def check_plan(plan: EncodePlan | None, msg: pb.ModelInferRequest) -> None:
    """A plan exactly when some output has parameters; shared-memory targets only for outputs
    whose parameters name a region."""
    with_params = {o.name for o in msg.outputs if o.parameters}
    if plan is None:
        assert not with_params, f"outputs {with_params} have parameters but decode kept none"
        return
    assert plan.binary is None, "a gRPC plan with HTTP binary outputs"
    assert set(plan.output_parameters or ()) == with_params
    assert set(plan.shm or ()) == {o.name for o in msg.outputs if REGION in o.parameters}


def check_decoded(req: InferRequest, msg: pb.ModelInferRequest) -> None:
    assert len(req.inputs) == len(msg.inputs), "an input was dropped or invented"
    raw = list(msg.raw_input_contents)
    maybe_shm = len(raw) != len(msg.inputs)  # raw contents for some inputs only: the others in shm
    for t in msg.inputs:
        arr = req.inputs[t.name]
        assert arr.dtype == DATATYPE_TO_NUMPY[t.datatype], f"input {t.name!r}: {arr.dtype} for {t.datatype}"
        assert arr.shape == tuple(t.shape), f"input {t.name!r}: shape {arr.shape} for {list(t.shape)}"
        if maybe_shm and REGION in t.parameters:
            assert not t.HasField("contents"), f"input {t.name!r}: shared memory and typed contents accepted"
        elif msg.raw_input_contents:
            assert raw, f"input {t.name!r} accepted without raw contents"
            buf = raw.pop(0)
            assert not t.HasField("contents"), f"input {t.name!r}: raw and typed contents accepted"
            if t.datatype == "BYTES":
                assert arr.reshape(-1).tolist() == ref_decode(buf), f"input {t.name!r}: BYTES differ"
            else:
                assert arr.tobytes() == buf, f"input {t.name!r}: raw contents differ"
        else:
            values = list(getattr(t.contents, CONTENTS_FIELD[t.datatype]))
            got = arr.reshape(-1).tolist()
            if arr.dtype.kind == "f":
                assert np.array_equal(np.array(got), np.array(values, dtype=np.float64), equal_nan=True), \
                    f"input {t.name!r}: contents differ"
            else:
                assert got == values, f"input {t.name!r}: {CONTENTS_FIELD[t.datatype]} differ"
    assert not raw, f"{len(raw)} raw_input_contents accepted unclaimed"
    if msg.outputs:
        assert req.outputs == [o.name for o in msg.outputs]
    else:
        assert req.outputs is None
    assert req.timeout_us >= 0
