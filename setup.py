"""Build-only: compiles the Cython hot path in _native/ and the protobuf modules from proto/.

Metadata, dependencies and tool settings live in pyproject.toml. A failed native build is an
error: there is no pure-Python fallback, so an install without the extension cannot happen.
Set GATEWAY_DEBUG=1 to build with Cython line tracing and bounds/wraparound checks on.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
DEBUG = os.environ.get("GATEWAY_DEBUG") == "1"

NATIVE_MODULES = sorted(p.stem for p in (ROOT / "_native").glob("*.pyx"))


def _extensions() -> list[Extension]:
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    if DEBUG:
        macros.append(("CYTHON_TRACE_NOGIL", "1"))
    exts = [
        Extension(
            f"gateway._native.{name}",
            [f"_native/{name}.pyx"],
            include_dirs=[numpy.get_include(), "_native"],
            define_macros=macros,
            extra_compile_args=["-O3"] if not DEBUG else ["-O0", "-g"],
        )
        for name in NATIVE_MODULES
    ]
    directives = {
        "language_level": "3",
        "boundscheck": DEBUG,
        "wraparound": DEBUG,
        "initializedcheck": DEBUG,
        "cdivision": True,
        "linetrace": DEBUG,
        "embedsignature": True,
    }
    return cythonize(exts, compiler_directives=directives, include_path=["_native"], quiet=True)


def generate_protos(out_dir: Path) -> None:
    """Compile proto/*.proto into Python modules under out_dir (gateway/grpc_gen)."""
    from grpc_tools import protoc  # build-time dependency (pyproject build-system.requires)
    import grpc_tools

    protos = sorted((ROOT / "proto").glob("*.proto"))
    if not protos:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = str(Path(grpc_tools.__file__).parent / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT / 'proto'}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed to compile proto/*.proto")
    # protoc emits absolute imports ("import grpc_service_pb2"); make them package-relative.
    for py in out_dir.glob("*_pb2*.py"):
        text = py.read_text()
        for p in protos:
            mod = p.stem + "_pb2"
            text = text.replace(f"\nimport {mod} as ", f"\nfrom . import {mod} as ")
        py.write_text(text)
    init = out_dir / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated from proto/ by setup.py; do not edit."""\n')


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        generate_protos(ROOT / "gateway" / "grpc_gen")
        super().run()


if __name__ == "__main__":
    if "--protos-only" in sys.argv:
        generate_protos(ROOT / "gateway" / "grpc_gen")
        sys.exit(0)
    # Always (re)generate: editable installs do not run build_py.
    generate_protos(ROOT / "gateway" / "grpc_gen")
    setup(ext_modules=_extensions(), cmdclass={"build_py": BuildPyWithProtos})
