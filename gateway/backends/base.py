"""The interface every backend implements (onnxruntime in-process now, a remote Triton later).

The batcher sees only this: run a packed batch, know how many batches may run at once, and
whether a batch may run inline on the event loop thread (cheap models) or must go elsewhere.
Backends translate their own exceptions into ``GatewayError`` at this boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from gateway.types import TensorSpec

Outputs = dict[str, np.ndarray]
DoneFn = Callable[[Outputs | None, BaseException | None], None]


class Backend(Protocol):
    platform: str
    """Triton platform string shown in metadata (e.g. onnxruntime_onnx)."""
    inputs: Sequence[TensorSpec]
    outputs: Sequence[TensorSpec]
    capacity: int
    """Batches that may run at once (instances)."""
    inline: bool
    """True: ``run_inline`` on the loop thread; False: ``run_async`` completes via callback."""
    device: str
    """What actually runs it, e.g. 'CPUExecutionProvider'."""

    def run_inline(self, feeds: dict[str, np.ndarray]) -> Outputs:
        """Run one batch synchronously on the calling thread."""
        ...

    def run_async(self, feeds: dict[str, np.ndarray], done: DoneFn) -> None:
        """Start one batch elsewhere; ``done`` is called on the event loop thread."""
        ...

    def ready(self) -> bool: ...

    async def close(self) -> None: ...
