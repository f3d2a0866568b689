"""Target ``native_inferjson``: ``gateway._native.inferjson.decode_fast`` against the interpreted
``codec.decode_general``, on raw bodies (input format as ``http_body``: the body, or
``<N>\\n<body>`` for the binary extension).

Contract (differential): where the general decoder refuses a body (GatewayError), the native one
hands it back (None); where it accepts, the native one either hands it back or returns the same
request field by field and the same tensors bit for bit (dtype, shape, bytes), with the same
binary outputs. Never an exception from the native decoder.
"""

from __future__ import annotations

from typing import Any

from fuzz.http_body import split_input
from gateway._native.inferjson import decode_fast
from gateway.errors import GatewayError
from gateway.front.http.codec import decode_general


def same(got: tuple[Any, frozenset[str] | None], want: tuple[Any, Any]) -> None:
    g, w = got[0], want[0]
    assert (g.model_name, g.model_version, g.id, g.outputs, g.parameters, g.timeout_us) == (
        w.model_name, w.model_version, w.id, w.outputs, w.parameters, w.timeout_us), (g, w)
    assert list(g.inputs) == list(w.inputs)
    for name, a in g.inputs.items():
        b = w.inputs[name]
        assert (a.dtype, a.shape, a.tobytes()) == (b.dtype, b.shape, b.tobytes()), name
    want_binary = None if want[1] is None else want[1].binary
    assert got[1] == want_binary, (got[1], want_binary)


def one_input(data: bytes) -> None:
    body, hlen = split_input(data)
    got = decode_fast(body, hlen, "m", "1")
    try:
        want = decode_general(body, hlen, "m", "1")
    except GatewayError:
        assert got is None, "the native decoder accepted a body the general one refuses"
        return
    if got is not None:
        same(got, want)
