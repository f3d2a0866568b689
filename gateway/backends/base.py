"""The interface every backend implements (onnxruntime in-process now, a remote Triton later),
and the factory the composition root injects into the repository to build them.

The batcher sees only ``Backend``: run a packed batch, know how many batches may run at once, and
whether a batch may run inline on the event loop thread (cheap models) or must go elsewhere.
Backends translate their own exceptions into ``GatewayError`` at this boundary. The repository
sees only ``BackendFactory``: it never names a concrete backend nor a model file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from gateway.model_config import ModelConfig
from gateway.types import TensorSpec

Outputs = dict[str, np.ndarray]
DoneFn = Callable[[Outputs | None, BaseException | None], None]


class Backend(Protocol):
    platform: str
    """Triton platform string shown in metadata (e.g. onnxruntime_onnx)."""
    inputs: Sequence[TensorSpec]
    outputs: Sequence[TensorSpec]
    @property
    def capacity(self) -> int:
        """Batches that may run at once (instances; a remote backend: what its endpoints take now)."""
        ...

    inline: bool
    """True: ``run_inline`` on the loop thread; False: ``run_async`` completes via callback."""
    device: str
    """What actually runs it, e.g. 'CPUExecutionProvider'."""

    def run_inline(self, feeds: dict[str, np.ndarray]) -> Outputs:
        """Run one batch synchronously on the calling thread."""
        ...

    def run_async(self, feeds: dict[str, np.ndarray], done: DoneFn,
                  deadline: float = float("inf")) -> Callable[[], object] | None:
        """Start one batch elsewhere; ``done`` is called on the event loop thread. ``deadline``
        (``time.perf_counter`` time): when the last of its requests stops waiting; a backend that
        can (a remote call) gives up then. Returns how to abandon the batch once nobody wants it
        (every request cancelled), or None when it cannot be interrupted."""
        ...

    def warm_up(self, feeds: dict[str, np.ndarray], inline_threshold_us: int) -> float:
        """Run ``feeds`` on every instance before the version takes traffic; returns the slowest
        time in seconds and may settle ``inline`` from it (``execution = auto``). Raises on failure."""
        ...

    def ready(self) -> bool: ...

    def start(self) -> None:
        """Called on the event loop once the version is built (a remote backend starts its health
        checks); in-process backends have nothing to start."""
        ...

    def cancel(self) -> None:
        """Abandon batches still running (an unload past its grace): their ``done`` gets CANCELLED
        where the backend can interrupt them; in-process sessions finish what they started."""
        ...

    async def close(self) -> None: ...


class BackendFactory(Protocol):
    """Builds a version's backend from its directory in the repository."""

    default_filename: str
    """The model file a version directory holds when the config names none (e.g. model.onnx)."""

    def filename_for(self, config: ModelConfig) -> str:
        """The model file of a version of this model ("": none, a remote model)."""
        ...

    def __call__(self, path: Path, config: ModelConfig) -> Backend:
        """A backend for the model file at ``path``; raises ``ConfigError`` naming what is wrong."""
        ...

    def check_device(self, device: str) -> None:
        """Raise ``ConfigError`` when ``device`` ("cuda", ...) cannot run here."""
        ...
