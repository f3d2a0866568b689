"""Types of the compiled ``_native/door.pyx`` (for mypy; the module is the authority)."""

from typing import Any

class DoorState:
    target_s: float
    tick_s: float
    lag_s: float
    max_lag_s: float
    _overdue: float
    clock: Any
    shut: bool
    refused: int
    asked: int
    def refuse(self) -> bool: ...
