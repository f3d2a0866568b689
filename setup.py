"""Build-only: compiles the Cython hot path in _native/ and the descriptor set of proto/.

Metadata, dependencies and tool settings live in pyproject.toml; the protobuf recipe is in
proto/codegen.py. A failed native build is an
error: there is no pure-Python fallback, so an install without the extension cannot happen.
Set GATEWAY_DEBUG=1 to build with Cython line tracing and bounds/wraparound checks on.
"""

from __future__ import annotations

import importlib.util
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
# Modules that link a system library: name -> (libraries, header that must exist, the Debian package).
SYSTEM_LIBS = {"h2": (["nghttp2"], "nghttp2/nghttp2.h", "libnghttp2-dev")}
_INCLUDE_DIRS = ("/usr/include", "/usr/local/include", *os.environ.get("CPATH", "").split(":"))


def _has_header(header: str) -> bool:
    return any(d and (Path(d) / header).is_file() for d in _INCLUDE_DIRS)


def _native_modules() -> list[str]:
    """Every _native/*.pyx; one whose system library's headers are missing is left out, loudly
    (the server then refuses the setting that needs it, naming the package: grpc_front)."""
    names = []
    for name in NATIVE_MODULES:
        if name in SYSTEM_LIBS and not _has_header(SYSTEM_LIBS[name][1]):
            print(f"\n*** gateway: NOT building gateway._native.{name}: {SYSTEM_LIBS[name][1]} is missing "
                  f"(Debian/Ubuntu: apt-get install {SYSTEM_LIBS[name][2]}); the native gRPC front will refuse "
                  "to start until it is installed and the package rebuilt ***\n", file=sys.stderr)
            continue
        names.append(name)
    return names


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
            libraries=SYSTEM_LIBS[name][0] if name in SYSTEM_LIBS else [],
            extra_compile_args=["-O3"] if not DEBUG else ["-O0", "-g"],
        )
        for name in _native_modules()
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
    return cythonize(exts, compiler_directives=directives, include_path=["_native", str(ROOT)], quiet=True)


def generate_protos(out_dir: Path) -> None:
    """The recipe lives in proto/codegen.py so that tests can run it without Cython installed."""
    spec = importlib.util.spec_from_file_location("_gateway_codegen", ROOT / "proto" / "codegen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate_protos(ROOT / "proto", out_dir)


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
