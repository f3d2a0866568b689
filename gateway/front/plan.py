"""What a front must remember between decoding a request and encoding its answer.

Which outputs travel in the HTTP binary extension, which are written into shared memory, the
parameters a gRPC request gave its outputs: wire details the core never reads, so they stay
beside the ``InferRequest`` instead of in it. A decoder returns ``None`` for a request that asks
for none of them (the common case: nothing allocated), else one ``EncodePlan``.
"""

from __future__ import annotations

from typing import Any

from gateway.shm import OutputTarget


class EncodePlan:
    """How to encode one request's answer. Never changed after decode (instances may be shared)."""

    __slots__ = ("binary", "shm", "output_parameters")

    def __init__(self, binary: frozenset[str] | None = None, shm: dict[str, OutputTarget] | None = None,
                 output_parameters: dict[str, dict[str, Any]] | None = None) -> None:
        self.binary = binary
        """HTTP: the outputs sent in the binary extension ("*": every output); None: all JSON."""
        self.shm = shm
        """The outputs written into shared memory, with their checked targets."""
        self.output_parameters = output_parameters
        """gRPC: each requested output's parameters as the request gave them (outputs with any)."""

    def __repr__(self) -> str:
        return f"EncodePlan(binary={self.binary!r}, shm={self.shm!r}, output_parameters={self.output_parameters!r})"
