"""Run a whole gateway (HTTP + gRPC) in a background thread, for tests and benchmarks.

    with ServerThread(repository=path, loop="uvloop") as srv:
        client = tritonclient.http.InferenceServerClient(f"127.0.0.1:{srv.http_port}")

The server gets its own event loop in its own thread, so synchronous clients can call it.
Ports default to 0 (free ports picked by the OS).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from gateway.app import App, new_event_loop
from gateway.settings import ServerSettings


class ServerThread:
    def __init__(self, repository: str | Path | None = None, loop: str = "uvloop", **overrides: Any) -> None:
        # shed_loop_lag_ms = 0: a loop in a thread shares the GIL with the test's own code, so its lag
        # says how long the test held the GIL, not that the server is overloaded (tests of the door
        # turn it on)
        base: dict[str, Any] = {"http_port": 0, "grpc_port": 0, "loop": loop, "shed_loop_lag_ms": 0}
        if repository is None:
            base["demo"] = True
        else:
            base["model_repository"] = str(repository)
        base.update(overrides)
        self.settings = ServerSettings(**base)
        self.app: App | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    @property
    def http_port(self) -> int:
        assert self.app is not None
        return self.app.http_port

    @property
    def grpc_port(self) -> int:
        assert self.app is not None
        return self.app.grpc_port

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def dataplane(self) -> Any:
        assert self.app is not None
        return self.app.dataplane

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _run(self) -> None:
        loop = self.loop = new_event_loop(self.settings.loop)
        asyncio.set_event_loop(loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            try:
                self.app = App(self.settings)
                await self.app.start()
            except BaseException as exc:
                self._error = exc
                self._started.set()
                return
            self._started.set()
            await self._stop.wait()
            await self.app.stop(grace=5.0)

        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    def __enter__(self) -> ServerThread:
        self._thread = threading.Thread(target=self._run, name="gateway-server", daemon=True)
        self._thread.start()
        if not self._started.wait(120):
            raise RuntimeError("gateway did not start within 120 s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.loop is not None and self._stop is not None and self._thread is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)
