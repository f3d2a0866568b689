"""A backend seen through a Triton config's tensor declarations: ``reshape`` and an output subset.

Triton's ``reshape``: the client sends and receives ``dims``, the model takes and returns
``reshape.shape`` (both without the batch dimension when the model batches). The registry wraps a
backend in this only when a config declares a reshape or fewer outputs than the graph has, so
other models pay nothing. Reshapes are of C-contiguous batches into views (no copy); the load
check allows only fixed shapes with equal element counts, so a reshape cannot fail on a request
that passed validation and take its batch-mates down with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from gateway.backends.base import Backend, DoneFn, Outputs
from gateway.errors import Code, GatewayError
from gateway.types import TensorSpec


class ReshapingBackend:
    def __init__(self, inner: Backend, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                 input_shapes: Mapping[str, tuple[int, ...]], output_shapes: Mapping[str, tuple[int, ...]],
                 batching: bool) -> None:
        self.inner = inner
        self.platform = inner.platform
        self.inputs = inputs
        self.outputs = outputs
        self.capacity = inner.capacity
        self._in = dict(input_shapes)
        self._out = dict(output_shapes)
        self._names = tuple(o.name for o in outputs)
        self._batching = batching

    @property
    def inline(self) -> bool:
        return self.inner.inline

    @inline.setter
    def inline(self, value: bool) -> None:
        self.inner.inline = value

    @property
    def device(self) -> str:
        return self.inner.device

    @device.setter
    def device(self, value: str) -> None:
        self.inner.device = value

    def _feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._in:
            return feeds
        out = dict(feeds)
        for name, shape in self._in.items():
            arr = feeds[name]
            out[name] = arr.reshape((arr.shape[0], *shape) if self._batching else shape)
        return out

    def _outputs(self, outputs: Outputs) -> Outputs:
        res = {}
        for name in self._names:
            arr = outputs[name]
            shape = self._out.get(name)
            if shape is not None:
                try:
                    arr = arr.reshape((arr.shape[0], *shape) if self._batching else shape)
                except ValueError as exc:
                    raise GatewayError(Code.INTERNAL, f"output '{name}' of shape {list(arr.shape)} does not "
                                       f"reshape to the declared dims {list(shape)}: {exc}") from None
            res[name] = arr
        return res

    def run_inline(self, feeds: dict[str, np.ndarray]) -> Outputs:
        return self._outputs(self.inner.run_inline(self._feeds(feeds)))

    def run_async(self, feeds: dict[str, np.ndarray], done: DoneFn,
                  deadline: float = float("inf")) -> Callable[[], object] | None:
        def finished(outputs: Outputs | None, err: BaseException | None) -> None:
            if outputs is not None:
                try:
                    outputs = self._outputs(outputs)
                except GatewayError as exc:
                    outputs, err = None, exc
            done(outputs, err)

        return self.inner.run_async(self._feeds(feeds), finished, deadline)

    def warm_up(self, feeds: dict[str, np.ndarray], inline_threshold_us: int) -> float:
        return self.inner.warm_up(self._feeds(feeds), inline_threshold_us)  # type: ignore[attr-defined]

    def cancel(self) -> None:
        self.inner.cancel()

    def start(self) -> None:
        self.inner.start()  # type: ignore[attr-defined]

    def ready(self) -> bool:
        return self.inner.ready()

    async def close(self) -> None:
        await self.inner.close()
