"""Checks an InferRequest against a model's signature before it may queue.

Everything a client can get wrong is caught here, with a message naming the tensor, so that
nothing malformed reaches a batch (one bad request must never fail its batch-mates).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gateway._native.sigcheck import accepted_rows
from gateway.errors import invalid
from gateway.types import InferRequest, TensorSpec, numpy_to_datatype

MAX_DIMS = 64
"""Most dimensions a tensor may have (numpy's own limit)."""
MAX_NEST_DEPTH = 64
"""Deepest list nesting accepted in JSON tensor data (the native ``list_to_array`` agrees)."""
_MAX_SPAN = ((1 << 63) - 1) // 8
"""Largest product of a shape's non-zero dimensions: numpy refuses any array, even an empty one,
whose non-zero dimensions times an 8-byte item overflow a signed 64-bit size."""


@dataclass(frozen=True, slots=True)
class Signature:
    """What a model version accepts and returns, precomputed for the per-request check."""

    model: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batching: bool
    variable_inner_dims: bool
    """True when some non-batch input dimension is -1: requests then go to shape buckets."""
    output_names: tuple[str, ...]
    checks: tuple[tuple[str, np.dtype, tuple[int, ...]], ...] = ()
    """(name, dtype, shape) per input, for the native accepting path of ``check_request``."""
    output_set: frozenset[str] = frozenset()

    @classmethod
    def build(cls, model: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
              batching: bool) -> Signature:
        inner = [t.shape[1:] if batching else t.shape for t in inputs]
        names = tuple(o.name for o in outputs)
        return cls(model, tuple(inputs), tuple(outputs), batching, any(-1 in s for s in inner), names,
                   tuple((t.name, t.dtype, t.shape) for t in inputs), frozenset(names))


def check_shape(name: str, shape: object) -> int:
    """Element count of a client-sent shape, which must be a list of at most ``MAX_DIMS``
    non-negative integers whose non-zero product numpy can represent; else INVALID_ARGUMENT.

    Wire decoders call this before they allocate or reshape anything, so that an absurd shape
    (``[2**63]``, ``[0, 2**62, 2**62]``, 65 dimensions) is the client's error, not a crash.
    """
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        raise invalid(f"input '{name}' needs 'shape' as a list of non-negative integers, got {shape!r}")
    if len(shape) > MAX_DIMS:
        raise invalid(f"input '{name}' has {len(shape)} dimensions; at most {MAX_DIMS} are supported")
    count = 1
    span = 1
    for d in shape:
        count *= d
        if d:
            span *= d
            if span > _MAX_SPAN:
                raise invalid(f"input '{name}' has shape {shape}, too large for any tensor "
                              f"(its non-zero dimensions multiply past {_MAX_SPAN})")
    return count


def check_request(sig: Signature, req: InferRequest) -> int:
    """Validate in place (makes inputs C-contiguous); return the request's rows (1 without batching)."""
    inputs = req.inputs
    if sig.checks and type(inputs) is dict:  # the accepting path in C; refusals are named below
        rows = accepted_rows(sig.checks, inputs, sig.batching, req.outputs, sig.output_set)
        if rows >= 0:
            return rows  # type: ignore[no-any-return]
    if len(inputs) != len(sig.inputs):
        names = {t.name for t in sig.inputs}
        extra = [n for n in inputs if n not in names]
        if extra:
            raise invalid(f"model '{sig.model}' has no input '{extra[0]}' (inputs: {', '.join(sorted(names))})")
        missing = [n for n in names if n not in inputs]
        raise invalid(f"model '{sig.model}' expects input '{missing[0]}', which the request lacks")
    rows = -1
    for spec in sig.inputs:
        arr = inputs.get(spec.name)
        if arr is None:
            raise invalid(f"model '{sig.model}' expects input '{spec.name}', which the request lacks")
        if arr.dtype != spec.dtype:
            raise invalid(
                f"input '{spec.name}' has datatype {numpy_to_datatype(arr.dtype)} but model '{sig.model}' "
                f"expects {spec.datatype}"
            )
        shape = arr.shape
        want = spec.shape
        if len(shape) != len(want):
            raise invalid(
                f"input '{spec.name}' has shape {list(shape)} but model '{sig.model}' expects rank {len(want)} "
                f"(shape {list(want)})"
            )
        for i in range(1 if sig.batching else 0, len(want)):
            if want[i] != -1 and shape[i] != want[i]:
                raise invalid(
                    f"input '{spec.name}' has shape {list(shape)} but model '{sig.model}' expects {list(want)}"
                )
        if sig.batching:
            if shape[0] < 1:
                raise invalid(f"input '{spec.name}' has {shape[0]} rows; at least 1 is required")
            if rows == -1:
                rows = shape[0]
            elif shape[0] != rows:
                raise invalid(
                    f"inputs disagree on the batch dimension: '{spec.name}' has {shape[0]} rows, others {rows}"
                )
        if not arr.flags.c_contiguous:
            inputs[spec.name] = np.ascontiguousarray(arr)
    if req.outputs is not None:
        known = sig.output_names
        for name in req.outputs:
            if name not in known:
                raise invalid(f"model '{sig.model}' has no output '{name}' (outputs: {', '.join(known)})")
    return rows if sig.batching else 1


def bucket_key(sig: Signature, req: InferRequest) -> tuple:
    """Requests whose non-batch dimensions differ cannot share a batch."""
    if not sig.variable_inner_dims:
        return ()
    return tuple(req.inputs[t.name].shape[1:] for t in sig.inputs)
