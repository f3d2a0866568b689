"""Imports flow one way along the request path: front -> dataplane/route -> batcher -> backends.

Nothing downstream may import upstream (STYLE.md, convention 1); the protocol-neutral core knows
no wire format. Checked on the source with ast, so a violation fails before it can become a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "gateway"

# core module -> the gateway modules it may import (everything else in gateway is upstream of it)
ALLOWED = {
    "types": set(),
    "errors": set(),
    "model_config": {"types"},
    "batch_queue": set(),
    "validate": {"errors", "types"},
    "stats": {"_native.hist"},
    "backends/base": {"types"},
    "backends/onnx": {"backends.base", "errors", "model_config", "types"},
    "batcher": {"_native.pack", "backends.base", "batch_queue", "errors", "model_config", "stats", "types",
                "validate"},
    "backends/reshape": {"backends.base", "errors", "types"},
    "warmup": {"model_config", "types"},
    # registry: backends.base for the Backend type; backends.reshape wraps a backend for Triton's
    # reshape; warmup builds the warm-up inputs (split out to keep the registry small)
    "registry": {"backends.base", "backends.onnx", "backends.reshape", "batcher", "errors", "model_config", "stats",
                 "triton_config", "types", "validate", "warmup"},
    "triton_config": {"pb", "model_config", "types", "warmup"},  # the config schema only, parsed from text
    "route": {"registry", "types"},
    "shm": {"_native.bytestensor", "errors"},
    "dataplane": {"__init__", "batcher", "errors", "registry", "route", "shm", "stats", "types"},
}
# the core never speaks a wire protocol
WIRE = ["grpc", "gateway.pb", "gateway.front", "httptools", "orjson"]


def imports_of(module: str) -> set[str]:
    tree = ast.parse((PKG / f"{module}.py").read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def gateway_imports(module: str) -> set[str]:
    out = set()
    for imp in imports_of(module):
        if imp == "gateway":
            out.add("__init__")
        elif imp.startswith("gateway."):
            out.add(imp[len("gateway."):])
    return out


def test_core_imports_only_downstream() -> None:
    bad = {m: sorted(gateway_imports(m) - allowed) for m, allowed in ALLOWED.items()}
    assert not {m: v for m, v in bad.items() if v}


def test_core_knows_no_wire_format() -> None:
    core = [m for m in ALLOWED if m != "triton_config"]  # it parses config text with the generated schema
    bad = [f"{m} imports {imp}" for m in core for imp in imports_of(m)
           if any(imp == w or imp.startswith(w + ".") for w in WIRE)]
    assert not bad, bad
