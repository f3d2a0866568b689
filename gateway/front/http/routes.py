"""The non-inference REST routes: health, metadata, config, statistics, repository, shared memory.

Kept apart from the connection code so that the hot path module stays about bytes and order.
Each route returns (status, JSON-able document or None) and raises GatewayError on failure.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any
from urllib.parse import unquote

import orjson

from gateway.dataplane import DataPlane
from gateway.errors import Code, GatewayError, invalid
from gateway.front.model_docs import model_config, model_metadata, model_statistics
from gateway.shm import SharedMemoryRegistry

Doc = tuple[int, Any]


def _model_path(parts: list[str]) -> tuple[str, str, list[str]] | None:
    """['v2','models',m,('versions',v),rest...] -> (m, v, rest)."""
    if len(parts) < 3 or parts[0] != "v2" or parts[1] != "models":
        return None
    name = unquote(parts[2])
    rest = parts[3:]
    version = ""
    if len(rest) >= 2 and rest[0] == "versions":
        version = unquote(rest[1])
        rest = rest[2:]
    return name, version, rest


def route_get(dp: DataPlane, path: str) -> Doc:
    parts = [p for p in path.split("/") if p]
    if parts == ["v2", "health", "live"]:
        if dp.live():
            return 200, None
        raise GatewayError(Code.UNAVAILABLE, "server is not live")
    if parts == ["v2", "health", "ready"]:
        if dp.ready():
            return 200, None
        raise GatewayError(Code.UNAVAILABLE, "server is not ready")
    if parts == ["v2"]:
        return 200, dp.server_metadata()
    if parts == ["v2", "models", "stats"]:
        return 200, model_statistics(dp.model_totals())
    mp = _model_path(parts)
    if mp is not None:
        if "/versions//" in path:  # not the default version: a client that meant one lost it
            raise invalid(f"empty version segment in {path}")
        name, version, rest = mp
        if not rest:
            return 200, model_metadata(dp.model_version(name, version), dp.version_labels(name))
        if rest == ["ready"]:
            if dp.model_ready(name, version):
                return 200, None
            dp.model_version(name, version)  # 404 for an unknown model, else:
            raise GatewayError(Code.UNAVAILABLE, f"model '{name}' is not ready")
        if rest == ["config"]:
            return 200, model_config(dp.model_version(name, version))
        if rest == ["stats"]:
            return 200, model_statistics(dp.model_totals(name, version))
    if len(parts) >= 3 and parts[0] == "v2" and parts[-1] == "status" and parts[1] in _SHM_KINDS:
        # v2/{system,cuda}sharedmemory[/region/NAME]/status
        region = _shm_region(parts)
        if region is not None:
            shm = _shm(dp)
            if parts[1] == "systemsharedmemory":
                return 200, shm.status(region)
            return 200, shm.cuda_status(region)
    raise GatewayError(Code.NOT_FOUND, f"no route for GET {path}")


_SHM_KINDS = ("systemsharedmemory", "cudasharedmemory")


def _shm_region(parts: list[str]) -> str | None:
    """Region name of v2/KIND[/region/NAME]/ACTION ("" without one); None: not such a path."""
    if len(parts) == 3:
        return ""
    if len(parts) == 5 and parts[2] == "region" and parts[3]:
        return unquote(parts[3])
    return None


def _shm(dp: DataPlane) -> SharedMemoryRegistry:
    if dp.shm is None:
        raise GatewayError(Code.UNIMPLEMENTED, "shared memory is not served here")
    return dp.shm


def route_post_now(dp: DataPlane, path: str, body: bytes) -> Doc | None:
    """POST routes answered synchronously (shared-memory registration); None: not one of them."""
    parts = [p for p in path.split("/") if p]
    if len(parts) < 3 or parts[0] != "v2" or parts[1] not in _SHM_KINDS:
        return None
    action = parts[-1]
    region = _shm_region(parts)
    if region is None or action not in ("register", "unregister") or (action == "register" and not region):
        return None
    shm = _shm(dp)
    cuda = parts[1] == "cudasharedmemory"
    if action == "unregister":
        if cuda:
            shm.cuda_unregister(region)
        elif region:
            shm.unregister(region)
        else:
            shm.unregister_all()
        return 200, None
    doc = _json_body(body)
    if cuda:
        shm.cuda_register(region)
    shm.register(region, doc.get("key"), doc.get("offset", 0), doc.get("byte_size"))
    return 200, None


def _json_body(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"malformed JSON in request body: {exc}") from None
    if not isinstance(doc, dict):
        raise invalid("request body must be a JSON object")
    return doc


def route_post_admin(dp: DataPlane, path: str, body: bytes) -> Awaitable[Doc] | None:
    parts = [p for p in path.split("/") if p]
    if parts == ["v2", "repository", "index"]:
        return _index(dp, body)
    if len(parts) == 5 and parts[:3] == ["v2", "repository", "models"] and parts[4] in ("load", "unload"):
        return _load_unload(dp, _plain_name(unquote(parts[3]), parts[4]), parts[4], body)
    return None


def _plain_name(name: str, action: str) -> str:
    """A model name names one directory of the repository: anything else is the client's error
    (checked before the repository touches the file system, where it would fail as a 500)."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
            or len(name.encode("utf-8", "surrogatepass")) > 255):
        shown = name if len(name) <= 40 else name[:37] + "..."
        raise invalid(f"failed to {action} {shown!r}: a model name is a plain directory name "
                      "(1-255 bytes, no '/', '\\' or NUL, not '.' or '..')")
    return name


async def _index(dp: DataPlane, body: bytes) -> Doc:
    doc = _json_body(body)
    return 200, dp.repository_index(bool(doc.get("ready", False)))


async def _load_unload(dp: DataPlane, name: str, action: str, body: bytes) -> Doc:
    doc = _json_body(body)
    if action == "load":
        params = doc.get("parameters") or {}
        if not isinstance(params, dict):
            raise invalid(f"failed to load '{name}': 'parameters' must be a JSON object")
        await dp.load_model(name, parameters=params)  # {"config": "<Triton model config as JSON>"}
    else:
        await dp.unload_model(name)
    return 200, None
