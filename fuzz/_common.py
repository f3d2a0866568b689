"""What the targets share: the client-error contract, the test references, a shared-memory region.

Importing this puts tests/ on ``sys.path`` (as tests/conftest.py does), for ``native_refs``
(the kernels' references) and ``models`` (the test models).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from gateway.errors import Code, GatewayError
from gateway.shm import SharedMemoryRegistry

_TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from native_refs import (  # noqa: E402  (needs tests/ on sys.path)
    FLOAT_TYPES,
    INT_TYPES,
    int_range,
    ref_decode,
    ref_encode,
    ref_flatten,
    ref_list_to_array,
)

__all__ = ["FLOAT_TYPES", "INT_TYPES", "int_range", "ref_decode", "ref_encode", "ref_flatten", "ref_list_to_array",
           "expect_client_error", "shm_registry", "test_models", "CLIENT_CODES"]

CLIENT_CODES = frozenset((Code.INVALID_ARGUMENT, Code.NOT_FOUND))
"""What a decoder may answer bad input with (400 / 404); anything else is a bug."""

SHM_REGION_SIZE = 4096


def expect_client_error(err: GatewayError) -> None:
    assert err.code in CLIENT_CODES, f"decoder answered {err!r}: not a client error"


def test_models() -> Any:
    """tests/models.py (the test models), imported on first use: it pulls in onnx."""
    import models

    return models


_shm: SharedMemoryRegistry | None = None


def shm_registry() -> SharedMemoryRegistry:
    """A registry with two real regions over one /dev/shm object (unlinked at once, the mappings
    stay): "r0" is the whole 4 KiB, "r1" 64 bytes at offset 100, so that fuzzed offsets and
    sizes meet real bounds checks. Without /dev/shm: a registry with no regions."""
    global _shm
    if _shm is None:
        _shm = SharedMemoryRegistry(enabled=True)
        if os.path.isdir("/dev/shm"):
            name = f"gateway-fuzz-{os.getpid()}"
            path = f"/dev/shm/{name}"
            with open(path, "wb") as f:
                f.write(bytes(range(256)) * (SHM_REGION_SIZE // 256))
            try:
                _shm.register("r0", "/" + name, 0, SHM_REGION_SIZE)
                _shm.register("r1", "/" + name, 100, 64)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            atexit.register(_shm.close)
    return _shm
