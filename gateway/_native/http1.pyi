"""Types of the compiled ``_native/http1.pyx`` (for mypy; the module is the authority)."""

from typing import Any

class Stop(Exception): ...

class RequestReader:
    phase: int
    since: int
    stopped: bool
    check_head: bool
    messages: int
    tap: Any
    def __init__(self, proto: Any, router: Any, max_head: int, max_body: int, tick: int = 0) -> None: ...
    @property
    def buffered(self) -> int: ...
    def stop(self) -> None: ...
    def current(self) -> tuple[bytes, bytes]: ...
    def feed(self, data: bytes, tick: int) -> None: ...

class Connection:
    transport: Any
    front: Any
    _dataplane: Any
    _router: Any
    _door: Any
    _inflight: Any
    parser: RequestReader
    _parked: dict[int, tuple[bytes, bool]]
    _tickets: dict[int, Any]
    _routes: dict[bytes, tuple[str, str]]
    _seq: int
    _next_write: int
    _max_pipelined: int
    _closing: bool
    _paused: bool
    _continue_due: bool
    last_active: int
    def data_received(self, data: bytes) -> None: ...
    def _hold(self, seq: int, ticket: Any) -> None: ...
    def _pause_reading(self) -> None: ...
    def _resume_reading(self) -> None: ...
    def _write_in_order(self, seq: int, data: bytes, close: bool) -> None: ...
