"""System shared memory (Triton's shared-memory extension), protocol-neutral.

A client on the same host creates a POSIX shared-memory object (``shm_open("/name")``, which on
Linux is the file ``/dev/shm/name``), registers it under a region name, and then names that
region in an input's or output's parameters instead of sending the tensor over the socket:
``shared_memory_region``, ``shared_memory_byte_size`` and an optional ``shared_memory_offset``
(relative to the region). The fronts parse those parameters; everything else lives here:

- ``SharedMemoryRegistry`` maps region name -> ``Region`` (an ``mmap`` of the object).
  ``read_input`` returns a read-only numpy view straight over the mapping (no copy); BYTES
  inputs are decoded from the same 4-byte length-prefixed form as the binary extension.
  ``output_target`` checks an output's target when the request is decoded; ``write_outputs``
  copies computed outputs into their regions when the response is ready.
- Bounds: a tensor's bytes must lie inside its region (region offset + tensor offset + size),
  and a region inside its object (checked with fstat at registration). Keys are one plain name
  under /dev/shm (``/name``: no other ``/``, no ``..``, no symlink), so no other file can be
  opened through a key.
- Lifetime: unregistering only drops the registry's reference. A queued request's numpy view
  keeps its ``mmap`` alive (numpy holds a buffer export on it) and an output target holds its
  ``Region``, so nothing is ever read from or written to unmapped memory; the mapping goes away
  with its last user. ``close`` (server shutdown) unmaps what nobody uses any more.
- Trust: a client that may register regions can read and write any shared-memory object the
  server's user can open, and one that shrinks its object (``ftruncate``) under a mapping makes
  the server fault on the next access. That is why registration is off unless the operator
  turns it on (``allow_client_shm``, as Triton's ``--allow-client-shm``), for local clients only.

CUDA shared memory is answered as Triton answers on a host without GPU support: status lists no
regions, unregistering succeeds, registering fails with a clear message.

Everything here runs on the event-loop thread, so nothing is locked.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from gateway._native.bytestensor import decode_bytes_tensor, encode_bytes_tensor
from gateway.errors import Code, GatewayError, invalid, not_found

SHM_DIR = "/dev/shm"
_NAME_MAX = 255

REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"


class Region:
    """One registered region: ``byte_size`` bytes at ``offset`` of the object ``key``.

    The mapping starts at the page boundary at or below ``offset``; ``base`` is where the
    region starts inside the mapping.
    """

    __slots__ = ("name", "key", "offset", "byte_size", "mm", "base")

    def __init__(self, name: str, key: str, offset: int, byte_size: int, mm: mmap.mmap, base: int) -> None:
        self.name = name
        self.key = key
        self.offset = offset
        self.byte_size = byte_size
        self.mm = mm
        self.base = base

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}

    def check(self, what: str, offset: int, size: int) -> int:
        """Mapping position of ``size`` bytes at ``offset`` of the region; refuses anything outside."""
        if offset + size > self.byte_size:
            raise invalid(f"{what}: shared_memory_offset {offset} + shared_memory_byte_size {size} runs past "
                          f"the end of shared memory region '{self.name}' ({self.byte_size} bytes)")
        return self.base + offset


@dataclass(frozen=True, slots=True)
class OutputTarget:
    """Where one requested output goes: ``byte_size`` bytes at ``offset`` of ``region``."""

    region: Region
    offset: int
    byte_size: int


def check_key(key: Any) -> str:
    """The object's path under /dev/shm for a key ``/name`` (or ``name``); refuses anything else."""
    if not isinstance(key, str):
        raise invalid(f"shared memory key must be a string '/name', got {key!r}")
    # shm_open takes "/name"; glibc also accepts a bare "name" for the same object (so does Triton).
    name = key[1:] if key.startswith("/") else key
    if (not name or "/" in name or ".." in name or "\x00" in name or name == "."
            or len(name) > _NAME_MAX):
        raise invalid(f"invalid shared memory key {key!r}: it must be '/' followed by a plain name "
                      "(no other '/', no '..')")
    return f"{SHM_DIR}/{name}"


def _int_param(what: str, field: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise invalid(f"{what}: {field} must be a non-negative integer, got {value!r}")
    return value


def _cuda_unsupported() -> NoReturn:
    raise GatewayError(Code.INVALID_ARGUMENT, "CUDA shared memory is not supported by this server "
                       "(it reads and writes tensors in host memory); use system shared memory")


class SharedMemoryRegistry:
    """Registered system shared-memory regions by name (one namespace, as Triton's)."""

    def __init__(self, enabled: bool = True, max_regions: int = 256) -> None:
        self.enabled = enabled
        self.max_regions = max_regions
        self._regions: dict[str, Region] = {}

    # ---- the extension's API ------------------------------------------------------------------
    def register(self, name: str, key: Any, offset: Any, byte_size: Any) -> None:
        if not self.enabled:
            raise GatewayError(Code.UNIMPLEMENTED, "system shared memory is disabled on this server "
                               "(start it with --allow-client-shm, setting allow_client_shm)")
        if not isinstance(name, str) or not name:
            raise invalid("a shared memory region needs a non-empty name")
        if name in self._regions:
            raise invalid(f"shared memory region '{name}' is already registered")
        if len(self._regions) >= self.max_regions:
            raise GatewayError(Code.RESOURCE_EXHAUSTED, f"cannot register shared memory region '{name}': "
                               f"{self.max_regions} regions are registered (setting max_shm_regions)")
        path = check_key(key)
        what = f"shared memory region '{name}'"
        offset = _int_param(what, "offset", offset)
        byte_size = _int_param(what, "byte_size", byte_size)
        if byte_size == 0:
            raise invalid(f"{what}: byte_size must be positive")
        try:
            # O_NOFOLLOW: a symlink planted under /dev/shm must not lead anywhere else.
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise invalid(f"Unable to open shared memory region: '{key}' ({exc.strerror})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise invalid(f"Unable to open shared memory region: '{key}' (not a shared memory object)")
            if offset + byte_size > st.st_size:
                raise invalid(f"failed to register {what}: offset {offset} + byte_size {byte_size} exceed "
                              f"the size of shared memory object '{key}' ({st.st_size} bytes)")
            base = offset % mmap.ALLOCATIONGRANULARITY
            try:
                mm = mmap.mmap(fd, base + byte_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                               offset=offset - base)
            except OSError as exc:
                raise invalid(f"failed to register {what}: cannot map '{key}' ({exc.strerror})") from None
        finally:
            os.close(fd)  # the mapping stays valid without the descriptor
        self._regions[name] = Region(name, key, offset, byte_size, mm, base)

    def unregister(self, name: str) -> None:
        """Forget one region (unknown names succeed, as in Triton). In-flight users keep its mapping."""
        self._regions.pop(name, None)

    def unregister_all(self) -> None:
        self._regions.clear()

    def status(self, name: str = "") -> list[dict[str, Any]]:
        if not name:
            return [r.status() for r in self._regions.values()]
        region = self._regions.get(name)
        if region is None:
            raise not_found(f"Unable to find system shared memory region: '{name}'")
        return [region.status()]

    def close(self) -> None:
        """Unmap every region (shutdown). A mapping some array still views is left to that array."""
        regions = list(self._regions.values())
        self._regions.clear()
        for r in regions:
            # BufferError: exported to a live numpy view; it unmaps when the view goes.
            with contextlib.suppress(BufferError):
                r.mm.close()

    # ---- CUDA shared memory: not served (no device memory is read or written here) --------------
    def cuda_status(self, name: str = "") -> list[dict[str, Any]]:
        if name:
            raise not_found(f"Unable to find cuda shared memory region: '{name}'")
        return []

    def cuda_register(self, name: str) -> NoReturn:
        _cuda_unsupported()

    def cuda_unregister(self, name: str = "") -> None:
        """Nothing is ever registered, so unregistering (one or all) succeeds."""

    # ---- tensors --------------------------------------------------------------------------------
    def _region(self, what: str, params: Mapping[str, Any]) -> tuple[Region, int, int]:
        name = params.get(REGION)
        if not isinstance(name, str):
            raise invalid(f"{what}: {REGION} must be a string, got {name!r}")
        size = params.get(BYTE_SIZE)
        if size is None:
            raise invalid(f"{what}: {REGION} needs {BYTE_SIZE} too")
        size = _int_param(what, BYTE_SIZE, size)
        offset = _int_param(what, OFFSET, params.get(OFFSET, 0))
        region = self._regions.get(name)
        if region is None:
            raise invalid(f"{what}: Unable to find system shared memory region: '{name}'")
        return region, offset, size

    def read_input(self, name: str, datatype: str, dtype: np.dtype, shape: tuple[int, ...] | list[int],
                   count: int, params: Mapping[str, Any]) -> np.ndarray:
        """The input's array, viewed in place in its region (BYTES: decoded from it)."""
        what = f"input '{name}'"
        region, offset, size = self._region(what, params)
        pos = region.check(what, offset, size)
        if datatype == "BYTES":
            try:
                arr = decode_bytes_tensor(memoryview(region.mm)[pos:pos + size], count)
            except ValueError as exc:
                raise invalid(f"{what}: malformed BYTES in shared memory: {exc}") from None
        else:
            if size != count * dtype.itemsize:
                raise invalid(f"{what}: {BYTE_SIZE} {size} does not match shape {list(shape)} of {datatype} "
                              f"({count * dtype.itemsize} bytes)")
            arr = np.frombuffer(region.mm, dtype=dtype, count=count, offset=pos)
            arr.flags.writeable = False  # the client's memory: the model only reads it
        return arr.reshape(shape)

    def output_target(self, name: str, params: Mapping[str, Any]) -> OutputTarget:
        """Check an output's shared-memory target when the request arrives (before compute)."""
        what = f"output '{name}'"
        region, offset, size = self._region(what, params)
        region.check(what, offset, size)
        return OutputTarget(region, offset, size)


def write_outputs(outputs: Mapping[str, np.ndarray],
                  targets: Mapping[str, OutputTarget]) -> dict[str, dict[str, Any]]:
    """Copy each targeted output into its region; return the response parameters per output.

    All sizes are checked before anything is written, so a too-small target leaves every
    region untouched.
    """
    plans: list[tuple[str, OutputTarget, Any, int]] = []
    for name, t in targets.items():
        arr = outputs.get(name)
        if arr is None:
            continue
        if arr.dtype.kind in "OSU":
            data: Any = encode_bytes_tensor(arr)
            size = len(data)
        else:
            data = arr if arr.dtype.byteorder != ">" else arr.astype(arr.dtype.newbyteorder("<"))
            size = data.nbytes
        if size > t.byte_size:
            raise invalid(f"output '{name}' needs {size} bytes but its shared memory region "
                          f"'{t.region.name}' was given {BYTE_SIZE} {t.byte_size}")
        plans.append((name, t, data, size))
    written: dict[str, dict[str, Any]] = {}
    for name, t, data, size in plans:
        r = t.region
        pos = r.base + t.offset
        try:
            if isinstance(data, bytes):
                r.mm[pos:pos + size] = data
            else:
                dst = np.frombuffer(r.mm, dtype=data.dtype, count=data.size, offset=pos).reshape(data.shape)
                np.copyto(dst, data)
                del dst  # release the buffer export at once
        except ValueError:  # unmapped by close(): only at shutdown
            raise GatewayError(Code.UNAVAILABLE, f"output '{name}': shared memory region '{r.name}' "
                               "was unmapped (server shutting down)") from None
        params: dict[str, Any] = {REGION: r.name, BYTE_SIZE: size}
        if t.offset:
            params[OFFSET] = t.offset
        written[name] = params
    return written
