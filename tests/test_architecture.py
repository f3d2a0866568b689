"""Imports flow one way along the request path, over the whole package, with no cycle.

Every module of ``gateway`` has a layer; a module may import its own package's modules (the graph
must stay acyclic) and anything in a lower layer, never a higher one. Lazy imports inside
functions count too: they are how cycles hide. The protocol-neutral core (layers below the data
plane) knows no wire format. Checked on the source with ast, so a violation fails before it can
become a cycle at import time.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import tomllib

PKG = Path(__file__).resolve().parent.parent / "gateway"

# module or package prefix -> layer; the longest matching prefix wins. Downstream first.
LAYERS: dict[str, float] = {
    "__init__": 0, "types": 0, "errors": 0, "model_config": 0, "_native": 0, "pb": 0,
    "backends": 1, "observe.stats": 1, "shm": 1, "stores": 1,
    "pipeline": 2,
    "repository": 3,
    "dataplane": 4, "compose": 4.5,
    "settings": 5, "logs": 5, "observe": 5, "demo": 5,
    "front": 6,
    "app": 7, "embedded": 8, "batch": 8, "tune": 8, "testing": 8, "admin_cli": 8, "cli": 9, "__main__": 10,
    "loadtest": 5,  # a client: it speaks the wire protocol, never imports the server
}
CORE_BELOW = 4  # layers below the data plane speak no wire protocol
WIRE = ["grpc", "gateway.pb", "gateway.front", "httptools", "orjson"]
# A backend that is itself a client of a remote server speaks that server's protocol; the
# repository parses Triton's config.pbtxt with the generated schema.
WIRE_OK = {"repository.triton_config"}
WIRE_OK_PREFIX = ("backends.triton",)


def modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG).with_suffix("")
        if rel.parts[0] == "grpc_gen":
            continue
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__") if rel.parts[-1] == "__init__" and len(rel.parts) > 1 else name] = p
    return out


MODULES = modules()


def layer(module: str) -> float:
    best = None
    for prefix in LAYERS:
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best)):
            best = prefix
    assert best is not None, f"gateway.{module} has no layer in tests/test_architecture.py: add it"
    return LAYERS[best]


def imports_of(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)  # `from gateway.x import y` (a module)
    return out


def gateway_deps(module: str) -> set[str]:
    """The gateway modules ``module`` imports (names of modules, not of their attributes)."""
    out = set()
    for imp in imports_of(MODULES[module]):
        if imp == "gateway":
            out.add("__init__")
        elif imp.startswith("gateway."):
            name = imp[len("gateway."):]
            if name in MODULES:
                out.add(name)
    out.discard(module)
    return out


# The package's own lazy re-exports (``gateway.Gateway``) are the one edge upward: leave them out.
GRAPH = {m: gateway_deps(m) if m != "__init__" else set() for m in MODULES}


def test_every_module_has_a_layer() -> None:
    for m in MODULES:
        layer(m)


def test_imports_flow_downstream() -> None:
    bad = [f"gateway.{m} (layer {layer(m)}) imports gateway.{d} (layer {layer(d)})"
           for m, deps in GRAPH.items() for d in deps if layer(d) > layer(m)]
    assert not bad, "\n".join(sorted(bad))


def test_native_modules_import_only_the_bottom_layer() -> None:
    """The compiled modules (``_native/*.pyx``, which the AST walk above does not read) sit at
    layer 0: what they import from the package must be there too."""
    bad = []
    for pyx in sorted((PKG.parent / "_native").glob("*.pyx")):
        for line in pyx.read_text().splitlines():
            m = re.match(r"(?:from|import) gateway\.([\w.]+)", line)
            if m and "cimport" not in line and layer(m.group(1)) > 0:
                bad.append(f"{pyx.name}: {line.strip()}")
    assert not bad, bad


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(GRAPH[m]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                raise AssertionError("import cycle: " + " -> ".join(f"gateway.{c}" for c in cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_core_knows_no_wire_format() -> None:
    core = [m for m in MODULES if layer(m) < CORE_BELOW and m not in WIRE_OK and not m.startswith(WIRE_OK_PREFIX)
            and m != "pb"]
    bad = [f"gateway.{m} imports {imp}" for m in core for imp in imports_of(MODULES[m])
           if any(imp == w or imp.startswith(w + ".") for w in WIRE)]
    assert not bad, bad


def test_repository_builds_no_backend_itself() -> None:
    """Backends come from a factory the composition root injects (compose / app.py); the repository
    and the pipeline see only the Backend protocol (and the reshape wrapper Triton's config asks for,
    which wraps any backend)."""
    bad = [f"gateway.{m} imports gateway.{d}" for m, deps in GRAPH.items()
           if m.startswith(("repository", "pipeline", "dataplane")) for d in deps
           if d.startswith("backends.") and d not in ("backends.base", "backends.reshape")]
    assert not bad, bad


def test_every_package_is_shipped() -> None:
    """A package missing from pyproject's list would be missing from the wheel."""
    listed = set(tomllib.loads((PKG.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {"gateway" + "".join("." + p for p in d.relative_to(PKG).parts)
               for d in [PKG, *PKG.rglob("*")] if d.is_dir() and (d / "__init__.py").exists()}
    assert on_disk <= listed, sorted(on_disk - listed)
