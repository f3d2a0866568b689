"""Build valid, precomputed inference requests for any KServe v2 server from its own metadata.

The load loop must never encode anything: this module reads the model's metadata (HTTP
``GET /v2/models/{m}`` or gRPC ``ModelMetadata``), makes input tensors (random, or recorded ones from
a JSON-lines or ``.npz`` file), and turns each (sample, routing key, priority) combination into the
exact bytes that go on the wire: a whole HTTP/1.1 request (JSON or binary tensor extension) or a
serialized ``ModelInferRequest`` plus its gRPC metadata. The runner then only picks a variant index
per request from a precomputed array.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import orjson

__all__ = ["TensorSpec", "ModelInfo", "Target", "RequestSet", "parse_target", "fetch_model_info",
           "random_inputs", "load_samples", "build_request_set", "http_get"]

_NP = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BOOL": np.bool_,
       "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
       "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64}
PROTOCOLS = ("http-json", "http-binary", "grpc")


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True, slots=True)
class Target:
    """Where the load goes: ``protocol`` is one of http-json, http-binary, grpc."""

    protocol: str
    host: str
    port: int
    model: str
    version: str = ""

    @property
    def is_grpc(self) -> bool:
        return self.protocol == "grpc"

    @property
    def infer_path(self) -> str:
        v = f"/versions/{self.version}" if self.version else ""
        return f"/v2/models/{self.model}{v}/infer"


@dataclass(frozen=True, slots=True)
class RequestSet:
    """Precomputed request variants; ``grpc_metadata[i]`` pairs with ``payloads[i]`` for gRPC."""

    payloads: tuple[bytes, ...]
    grpc_metadata: tuple[tuple[tuple[str, str], ...], ...] = field(default=())
    batch_rows: int = 1

    def choices(self, n: int, seed: int = 0) -> np.ndarray:
        """Which variant each of ``n`` requests sends (uniform, reproducible)."""
        return np.random.default_rng(seed).integers(0, len(self.payloads), size=n, dtype=np.int32)


def parse_target(url: str, protocol: str, model: str, version: str = "") -> Target:
    """``url`` is ``http://host:port``, ``grpc://host:port`` or ``host:port``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}")
    parts = urlsplit(url if "//" in url else "//" + url)
    default = 8001 if protocol == "grpc" else 8000
    return Target(protocol, parts.hostname or "127.0.0.1", parts.port or default, model, version)


def http_get(host: str, port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _specs(items: Sequence[Mapping]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(t["name"], t["datatype"], tuple(int(d) for d in t["shape"])) for t in items)


def fetch_model_info(target: Target, timeout: float = 5.0) -> ModelInfo:
    """Read model metadata from the server over the target's own protocol."""
    if target.is_grpc:
        import grpc
        from google.protobuf.json_format import MessageToDict

        from gateway.pb import Stub
        from gateway.pb import service as pb

        with grpc.insecure_channel(f"{target.host}:{target.port}") as ch:
            msg = Stub(ch).ModelMetadata(pb.ModelMetadataRequest(name=target.model, version=target.version),
                                         timeout=timeout)
        meta = MessageToDict(msg, preserving_proto_field_name=True)
    else:
        v = f"/versions/{target.version}" if target.version else ""
        status, body = http_get(target.host, target.port, f"/v2/models/{target.model}{v}", timeout)
        if status != 200:
            raise RuntimeError(f"GET model metadata: HTTP {status}: {body[:200]!r}")
        meta = json.loads(body)
    return ModelInfo(meta.get("name", target.model), target.version,
                     _specs(meta.get("inputs", [])), _specs(meta.get("outputs", [])))


def _concrete_shape(spec: TensorSpec, batch: int, overrides: Mapping[str, Sequence[int]]) -> tuple[int, ...]:
    if spec.name in overrides:
        return tuple(overrides[spec.name])
    # A leading -1 is the batch dimension (Triton's max_batch_size > 0); other -1 default to 1.
    return tuple((batch if i == 0 else 1) if d < 0 else d for i, d in enumerate(spec.shape))


def random_inputs(info: ModelInfo, batch: int, overrides: Mapping[str, Sequence[int]],
                  rng: np.random.Generator) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for spec in info.inputs:
        shape = _concrete_shape(spec, batch, overrides)
        if spec.datatype == "BYTES":
            n = int(np.prod(shape))
            out[spec.name] = np.array([f"s{v}".encode() for v in rng.integers(0, 1 << 30, n)],
                                      dtype=object).reshape(shape)
        elif spec.datatype == "BOOL":
            out[spec.name] = rng.integers(0, 2, shape).astype(np.bool_)
        elif spec.datatype.startswith("FP"):
            out[spec.name] = rng.uniform(-1, 1, shape).astype(_NP[spec.datatype])
        elif spec.datatype in _NP:
            out[spec.name] = rng.integers(0, 100, shape).astype(_NP[spec.datatype])
        else:
            raise ValueError(f"input {spec.name}: unsupported datatype {spec.datatype}")
    return out


def _from_json_tensor(t: Mapping) -> np.ndarray:
    shape = tuple(int(d) for d in t["shape"])
    if t["datatype"] == "BYTES":
        return np.array([s.encode() if isinstance(s, str) else bytes(s) for s in np.ravel(t["data"])],
                        dtype=object).reshape(shape)
    return np.asarray(t["data"], dtype=_NP[t["datatype"]]).reshape(shape)


def load_samples(path: str | Path, info: ModelInfo, batch: int, limit: int = 4096) -> list[dict[str, np.ndarray]]:
    """Recorded inputs. ``.jsonl``: one KServe v2 JSON infer request per line (sent as recorded).
    ``.npz``: one array per input name, first axis = rows; request k takes ``batch`` rows from row k*batch.
    """
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            arrays = {s.name: z[s.name] for s in info.inputs}
        rows = min(len(a) for a in arrays.values())
        if rows < batch:
            raise ValueError(f"{path}: {rows} rows, fewer than batch {batch}")
        count = min(limit, rows // batch)
        return [{k: a[i * batch:(i + 1) * batch] for k, a in arrays.items()} for i in range(count)]
    samples = []
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                req = orjson.loads(line)
                samples.append({t["name"]: _from_json_tensor(t) for t in req["inputs"]})
            if len(samples) >= limit:
                break
    if not samples:
        raise ValueError(f"{path}: no requests")
    return samples


def _dtype_name(info: ModelInfo, name: str) -> str:
    for s in info.inputs:
        if s.name == name:
            return s.datatype
    raise ValueError(f"model {info.name} has no input {name}")


def _raw(arr: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return b"".join(len(b).to_bytes(4, "little") + b for b in arr.ravel())
    return np.ascontiguousarray(arr, dtype=_NP[datatype]).tobytes()


def _json_data(arr: np.ndarray, datatype: str) -> list:
    if datatype == "BYTES":
        return [b.decode(errors="replace") for b in arr.ravel()]
    return arr.ravel().tolist()


def encode_http(info: ModelInfo, inputs: Mapping[str, np.ndarray], binary: bool,
                params: Mapping[str, object]) -> tuple[bytes, int]:
    """Return (body, json header length or 0 for plain JSON)."""
    tensors, blobs = [], []
    for name, arr in inputs.items():
        dt = _dtype_name(info, name)
        t: dict = {"name": name, "datatype": dt, "shape": list(arr.shape)}
        if binary:
            blob = _raw(arr, dt)
            t["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            t["data"] = _json_data(arr, dt)
        tensors.append(t)
    req: dict = {"inputs": tensors}
    if binary:
        req["outputs"] = [{"name": o.name, "parameters": {"binary_data": True}} for o in info.outputs]
    if params:
        req["parameters"] = dict(params)
    head = orjson.dumps(req)
    return (head + b"".join(blobs), len(head)) if binary else (head, 0)


def encode_grpc(info: ModelInfo, inputs: Mapping[str, np.ndarray], params: Mapping[str, object]) -> bytes:
    from gateway.pb import service as pb

    req = pb.ModelInferRequest(model_name=info.name, model_version=info.version)
    for name, arr in inputs.items():
        dt = _dtype_name(info, name)
        t = req.inputs.add()
        t.name, t.datatype = name, dt
        t.shape.extend(arr.shape)
        req.raw_input_contents.append(_raw(arr, dt))
    for k, v in params.items():
        if isinstance(v, bool):
            req.parameters[k].bool_param = v
        elif isinstance(v, int):
            req.parameters[k].int64_param = v
        else:
            req.parameters[k].string_param = str(v)
    return req.SerializeToString()


def http_request(target: Target, body: bytes, json_len: int, headers: Sequence[tuple[str, str]]) -> bytes:
    head = [f"POST {target.infer_path} HTTP/1.1", f"Host: {target.host}:{target.port}",
            "Content-Type: " + ("application/octet-stream" if json_len else "application/json"),
            f"Content-Length: {len(body)}"]
    if json_len:
        head.append(f"Inference-Header-Content-Length: {json_len}")
    head += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


@dataclass(frozen=True, slots=True)
class Variation:
    """Per-request header/metadata variation: static headers, routing keys, weighted priorities."""

    headers: tuple[tuple[str, str], ...] = ()
    routing_header: str = "x-routing-key"
    routing_keys: int = 0
    priority_header: str = "x-priority"
    priorities: tuple[tuple[int, float], ...] = ()
    priority_param: bool = False


def build_request_set(target: Target, info: ModelInfo, samples: Sequence[Mapping[str, np.ndarray]],
                      var: Variation, max_variants: int = 4096, seed: int = 0) -> RequestSet:
    """One wire payload per variant: sample v % S, routing key v % K, priority drawn by weight."""
    rng = np.random.default_rng(seed)
    n = max(len(samples), var.routing_keys, 16 if len(var.priorities) > 1 else 1)
    n = min(n, max_variants)
    prios: list[int | None] = [None] * n
    if var.priorities:
        levels = [p for p, _ in var.priorities]
        w = np.array([wt for _, wt in var.priorities], dtype=float)
        prios = [int(levels[i]) for i in rng.choice(len(levels), size=n, p=w / w.sum())]
    encoded: dict[tuple[int, int | None], tuple[bytes, int]] = {}
    payloads, metas = [], []
    first = next(iter(samples[0].values()), None) if samples else None
    batch_rows = int(first.shape[0]) if first is not None and first.ndim else 1
    for v in range(n):
        sample = samples[v % len(samples)]
        hdrs = list(var.headers)
        if var.routing_keys:
            hdrs.append((var.routing_header, f"key-{v % var.routing_keys}"))
        if prios[v] is not None:
            hdrs.append((var.priority_header, str(prios[v])))
        params = {"priority": prios[v]} if var.priority_param and prios[v] is not None else {}
        key = (v % len(samples), prios[v] if params else None)
        if target.is_grpc:
            if key not in encoded:
                encoded[key] = (encode_grpc(info, sample, params), 0)
            payloads.append(encoded[key][0])
            metas.append(tuple((k.lower(), val) for k, val in hdrs))
        else:
            if key not in encoded:
                encoded[key] = encode_http(info, sample, target.protocol == "http-binary", params)
            body, jl = encoded[key]
            payloads.append(http_request(target, body, jl, hdrs))
    return RequestSet(tuple(payloads), tuple(metas), batch_rows)
