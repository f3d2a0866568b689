"""Fuzz harness for the surfaces that read client bytes: the HTTP front (wire and body
decoders), the gRPC request converter and the native kernels.

Each target is a module here with ``one_input(data: bytes) -> None``, which drives the real
code with ``data`` and raises when a contract breaks (an exception that is not the surface's
own client error, a 500, an answer missing, a result that disagrees with the reference).
``python -m fuzz run`` runs them under atheris (libFuzzer), each in its own process;
``tests/test_fuzz_regressions.py`` replays every file of ``corpus/<target>/`` through its
target in the normal test run, so a reproducer, once committed, guards its bug for good.

Importing this package imports nothing of the gateway: the atheris worker must instrument the
gateway's modules as they are first imported (``fuzz._worker``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CORPUS = ROOT / "corpus"
DICTS = ROOT / "dicts"

TARGETS: dict[str, str] = {
    "http_wire": "HTTP request bytes into a real HttpProtocol over a fake transport and a real data plane",
    "http_body": "a KServe JSON / binary-extension body (optional 'N\\n' prefix: the JSON header length)",
    "http_body_grammar": "the same decoder, on bodies built from a grammar (shapes, nesting, binary sizes)",
    "grpc_request": "a serialized ModelInferRequest into decode_infer_request",
    "grpc_request_grammar": "decode_infer_request on ModelInferRequests built from a grammar",
    "native_jsonnum": "list_to_array / json_tensor against the Python reference",
    "native_bytestensor": "decode_bytes_tensor / encode_bytes_tensor against the struct reference",
    "native_inferjson": "the native infer-body decoder against the interpreted one (same body format as http_body)",
}
"""Target name -> what it feeds (the module ``fuzz.<name>`` defines ``one_input``)."""

# libFuzzer dictionaries (tokens it splices into inputs), per target.
DICTIONARIES: dict[str, str] = {"http_wire": "http.dict", "http_body": "http.dict", "native_inferjson": "http.dict"}


def load(name: str) -> Callable[[bytes], None]:
    if name not in TARGETS:
        raise KeyError(f"no fuzz target {name!r} (targets: {', '.join(TARGETS)})")
    return importlib.import_module(f"fuzz.{name}").one_input  # type: ignore[no-any-return]


def corpus_files(name: str) -> list[Path]:
    """The committed inputs of a target: seeds, bug reproducers, and crashes not yet fixed."""
    folder = CORPUS / name
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")) if folder.is_dir() else []
