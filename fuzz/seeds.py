"""The committed corpus, as code: seeds that reach each surface's paths, and one reproducer per
bug fixed (named ``bugN-...`` after issue 8's list: 1 = HTTP decode raised non-GatewayError,
5 = the gRPC converter did, 6 = lenient HTTP bodies, 431; ``fuzz-...``: found by this harness).

``python -m fuzz seeds`` writes them into ``fuzz/corpus/<target>/`` (files of other names, such
as crash inputs, are left alone). Corpus files are the source of truth for the replay; this
module only says how each was made.
"""

from __future__ import annotations

import json
import random
import struct
import zlib
from typing import Any

BIG = 2**63
SIXTEEN = [1.0] * 16


def _t(name: str, datatype: str, shape: list[int], **extra: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, **extra}


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _bytes_elems(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


def _binary(inputs: list[dict[str, Any]], data: bytes, **top: Any) -> tuple[bytes, int]:
    head = _json({"inputs": inputs, **top})
    return head + data, len(head)


GOOD = {"inputs": [_t("INPUT0", "FP32", [1, 16], data=SIXTEEN), _t("INPUT1", "FP32", [1, 16], data=[2.0] * 16)]}
DEEP = ("[" * 1000 + '"a"' + "]" * 1000)

# ---- bodies (http_body: "<N>\n" + body for the binary extension) --------------------------------
BODIES: dict[str, tuple[bytes, int]] = {
    "seed-json-fp32": (_json(GOOD), -1),
    "seed-json-nested-outputs": (_json({"id": "r1", "inputs": [_t("INPUT0", "FP32", [2, 2], data=[[1, 2], [3, 4]])],
                                        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
                                        "parameters": {"timeout": 1000}}), -1),
    "seed-json-every-datatype": (_json({"inputs": [
        _t("B", "BOOL", [2], data=[True, 0]), _t("I8", "INT8", [1], data=[-128]), _t("U64", "UINT64", [1], data=[2**64 - 1]),
        _t("H", "FP16", [2], data=[65504.0, 1e5]), _t("S", "BYTES", [1, 2], data=[["a", "é"]])]}), -1),
    "seed-binary-fp32-bytes": _binary([_t("INPUT0", "FP32", [1, 2], parameters={"binary_data_size": 8}),
                                       _t("INPUT1", "BYTES", [2], parameters={"binary_data_size": 11})],
                                      struct.pack("<2f", 1.0, 2.0) + _bytes_elems(b"abc", b"")),
    "seed-shared-memory": (_json({"inputs": [_t("INPUT0", "FP32", [2], parameters={
        "shared_memory_region": "r1", "shared_memory_byte_size": 8, "shared_memory_offset": 4})],
        "outputs": [{"name": "OUTPUT0", "parameters": {"shared_memory_region": "r0", "shared_memory_byte_size": 64}}]}),
        -1),
    # issue 8, bug 1: decoding raised something else than GatewayError
    "bug1-bytes-shape-2p63-json": (_json({"inputs": [_t("INPUT0", "BYTES", [BIG], data=["a"])]}), -1),
    "bug1-bytes-shape-2p63-binary": _binary([_t("INPUT0", "BYTES", [BIG], parameters={"binary_data_size": 5})],
                                            b"\x01\0\0\0a"),
    "bug1-empty-shape-huge-dims-json": (_json({"inputs": [_t("INPUT0", "FP32", [0, 2**62, 2**62], data=[])]}), -1),
    "bug1-empty-bytes-shape-huge-dims-json": (_json({"inputs": [_t("INPUT0", "BYTES", [0, 2**62, 2**62], data=[])]}),
                                              -1),
    "bug1-empty-shape-huge-dims-binary": _binary(
        [_t("INPUT0", "FP32", [0, 2**62, 2**62], parameters={"binary_data_size": 0})], b""),
    "bug1-65-dims-binary": _binary([_t("INPUT0", "FP32", [1] * 65, parameters={"binary_data_size": 4})], b"\0" * 4),
    "bug1-65-dims-json-numbers": (_json({"inputs": [_t("INPUT0", "FP32", [1] * 65, data=[1.0])]}), -1),
    "bug1-65-dims-json-bytes": (_json({"inputs": [_t("INPUT0", "BYTES", [1] * 65, data=["a"])]}), -1),
    "bug1-bytes-nested-1000-deep-json": (
        b'{"inputs":[{"name":"INPUT0","datatype":"BYTES","shape":[1],"data":' + DEEP.encode() + b"}]}", -1),
    # issue 8, bug 6: lenient bodies, now 400 (check_decoded fails if any of them decodes)
    "bug6-uneven-nesting-numbers": (_json({"inputs": [_t("INPUT0", "FP32", [1, 16], data=[SIXTEEN[:10], SIXTEEN[:6]])]}),
                                    -1),
    "bug6-numbers-beside-lists": (_json({"inputs": [_t("INPUT0", "FP32", [1, 16], data=[1.0, SIXTEEN[:15]])]}), -1),
    "bug6-uneven-nesting-bytes": (_json({"inputs": [_t("INPUT0", "BYTES", [2, 4], data=[["a"] * 5, ["b"] * 3])]}), -1),
    "bug6-duplicate-outputs": (_json({**GOOD, "outputs": [{"name": "OUTPUT0"}, {"name": "OUTPUT0"}]}), -1),
    "bug6-data-and-binary-data-size": _binary(
        [_t("INPUT0", "FP32", [1, 16], data=SIXTEEN, parameters={"binary_data_size": 64}),
         _t("INPUT1", "FP32", [1, 16], parameters={"binary_data_size": 64})], b"\0" * 128),
    # found by this harness: BYTES data given as a bare string instead of an array was accepted
    "fuzz-bytes-data-not-an-array": (_json({"inputs": [_t("INPUT0", "BYTES", [], data="&m")]}), -1),
    "fuzz-bytes-data-not-an-array-shape-1": (_json({"inputs": [_t("INPUT0", "BYTES", [1], data="a")]}), -1),
}


def body_file(body: bytes, hlen: int) -> bytes:
    return body if hlen < 0 else f"{hlen}\n".encode() + body


# ---- HTTP requests (http_wire) ------------------------------------------------------------------
def _req(method: str, path: str, body: bytes = b"", headers: str = "", length: bool = True) -> bytes:
    cl = f"Content-Length: {len(body)}\r\n" if length and (body or method == "POST") else ""
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}{cl}\r\n".encode() + body


def _infer(model: str, body: bytes, hlen: int = -1, version: str = "", headers: str = "") -> bytes:
    path = f"/v2/models/{model}/versions/{version}/infer" if version else f"/v2/models/{model}/infer"
    extra = f"Inference-Header-Content-Length: {hlen}\r\n" if hlen >= 0 else ""
    return _req("POST", path, body, extra + headers)


def _chunked(body: bytes) -> bytes:
    half = len(body) // 2
    parts = [body[:half], body[half:]]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


GOOD_BODY = _json(GOOD)
MLP = _json({"inputs": [_t("INPUT0", "FP32", [1, 64], data=[0.5] * 64)]})
ROWS6 = _json({"inputs": [_t("INPUT0", "FP32", [6, 16], data=[SIXTEEN] * 6),
                          _t("INPUT1", "FP32", [6, 16], data=[SIXTEEN] * 6)]})
MULTI = _json({"inputs": [_t("A", "FP32", [1, 3], data=[1, 2, 3]), _t("B", "INT64", [1, 2], data=[4, 5]),
                          _t("C", "BYTES", [1, 1], data=["x"])]})


def _wire() -> dict[str, bytes]:
    bin_body, bin_hlen = _binary([_t("INPUT0", "FP32", [1, 16], parameters={"binary_data_size": 64}),
                                  _t("INPUT1", "FP32", [1, 16], parameters={"binary_data_size": 64})],
                                 b"\0\0\x80?" * 32, outputs=[{"name": "OUTPUT0", "parameters": {"binary_data": True}}])
    bytes_body, bytes_hlen = _binary([_t("INPUT0", "BYTES", [1, 4], parameters={"binary_data_size": 20})],
                                     _bytes_elems(b"a", b"b", b"c", b"d"), parameters={"binary_data_output": True})
    triggers = b"".join(
        _infer("add_sub" if b'"FP32"' in body else "identity_bytes", body, hlen) for name, (body, hlen) in BODIES.items()
        if name.startswith("bug1-")) + _infer("add_sub", GOOD_BODY) + _req("GET", "/v2/health/live")
    lenient = b"".join(_infer("identity_bytes" if b"BYTES" in body else "add_sub", body, hlen)
                       for name, (body, hlen) in BODIES.items() if name.startswith(("bug6-", "fuzz-")))
    return {
        "seed-health": _req("GET", "/v2/health/live") + _req("GET", "/v2/health/ready") + _req("HEAD", "/v2/health/ready"),
        "seed-metadata": b"".join(_req("GET", p) for p in (
            "/v2", "/v2/models/add_sub", "/v2/models/add_sub/config", "/v2/models/add_sub/stats", "/v2/models/stats",
            "/v2/models/mlp/versions/2/ready", "/v2/models/nope", "/v2/models/add_sub/versions/9")),
        "seed-metrics": _req("GET", "/metrics"),
        "seed-infer-json": _infer("add_sub", GOOD_BODY),
        "seed-infer-binary": _infer("add_sub", bin_body, bin_hlen),
        "seed-infer-bytes": _infer("identity_bytes", bytes_body, bytes_hlen)
        + _infer("identity_bytes", _json({"inputs": [_t("INPUT0", "BYTES", [1, 4], data=["a", "b", "c", "d"])]})),
        "seed-infer-multi-static-rowsum": _infer("multi", MULTI)
        + _infer("static", _json({"inputs": [_t("INPUT0", "FP32", [2, 3], data=[1] * 6)]}))
        + _infer("rowsum", _json({"inputs": [_t("INPUT0", "FP32", [2, 3], data=[1] * 6)]})),
        "seed-infer-versions": _infer("mlp", MLP, version="2") + _infer("mlp", MLP, version="1") + _infer("mlp", MLP),
        "seed-infer-split-rows": _infer("add_sub", ROWS6),
        "seed-pipelined": _infer("add_sub", GOOD_BODY) * 6 + _req("GET", "/v2/health/live"),
        "seed-chunked-body": _req("POST", "/v2/models/add_sub/infer", _chunked(GOOD_BODY),
                                  "Transfer-Encoding: chunked\r\n", length=False),
        "seed-gzip": _infer("add_sub", zlib.compress(GOOD_BODY), headers="Content-Encoding: deflate\r\n"
                            "Accept-Encoding: gzip\r\n")
        + _infer("add_sub", b"junk", headers="Content-Encoding: gzip\r\n")
        + _infer("add_sub", GOOD_BODY, headers="Content-Encoding: br\r\n"),
        "seed-expect-continue": _infer("add_sub", GOOD_BODY) + _infer("add_sub", GOOD_BODY, headers="Expect: 100-continue\r\n"),
        "seed-http10-close": b"GET /v2/health/live HTTP/1.0\r\n\r\n" + _req("GET", "/v2"),
        # an HTTP/1.0 request answered by the thread pool after a 400 for what followed it was parked
        "seed-close-with-a-parked-answer": _infer("static", _json({"inputs": [_t("INPUT0", "FP32", [2, 3], data=[1] * 6)]}))
        + _infer("rowsum", _json({"inputs": [_t("INPUT0", "FP32", [2, 3], data=[1] * 6)]})).replace(b"HTTP/1.1", b"HTTP/1.0")
        + b"garbage\r\n\r\n",
        "seed-connection-close": _req("GET", "/v2", headers="Connection: close\r\n") + _infer("add_sub", GOOD_BODY),
        "seed-repository": _req("POST", "/v2/repository/index", b'{"ready":true}')
        + _req("POST", "/v2/repository/models/mlp/unload") + _req("POST", "/v2/repository/models/../load"),
        "seed-shared-memory": _req("GET", "/v2/systemsharedmemory/status")
        + _req("POST", "/v2/systemsharedmemory/region/r/register", b'{"key":"/x","byte_size":4}')
        + _req("GET", "/v2/cudasharedmemory/status"),
        "seed-errors": _infer("nope", GOOD_BODY) + _infer("add_sub", b"{") + _req("PUT", "/v2")
        + _req("GET", "/nope") + _infer("add_sub", GOOD_BODY, 3) + _req("POST", "/v2/models/add_sub/infer", b"",
                                                                       "Inference-Header-Content-Length: x\r\n"),
        "seed-too-large-body": _req("POST", "/v2/models/add_sub/infer", headers="Content-Length: 100000\r\n",
                                    length=False) + b"x" * 100,
        "seed-malformed": b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        # issue 8, bug 1 end to end: every decode trigger on one connection, then a good request
        "bug1-decode-triggers-pipelined": triggers,
        # issue 8, bug 6: lenient bodies through the front (each a 400), then the empty version segment
        "bug6-lenient-bodies-pipelined": lenient,
        "bug6-empty-version-segment": _infer("add_sub", GOOD_BODY, version="") .replace(
            b"/v2/models/add_sub/infer", b"/v2/models/add_sub/versions//infer"),
        # issue 8, bug 6 (431): a head that never ends must be refused once past max_header_bytes,
        # not buffered (http_wire feeds it in chunks), and a complete one past the limit too
        "bug6-head-431-never-ends": b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000,
        "bug6-head-431-complete": _req("GET", "/v2/health/live", headers="X-Big: " + "a" * 2000 + "\r\n"),
        # found by this harness: the error for a body that does not decompress carried its body even
        # to a HEAD, so the next response was read from the middle of it
        "fuzz-head-with-undecodable-body": _req("HEAD", "/v2/models/add_sub/infer", b"x\x9c not deflate",
                                                "Content-Encoding: deflate\r\n")
        + _req("HEAD", "/v2", b"x", "Content-Encoding: br\r\n") + _req("GET", "/v2/health/live"),
    }


# ---- gRPC requests (grpc_request: serialized ModelInferRequest; deterministic: map fields sorted) ---
def _grpc() -> dict[str, bytes]:
    from gateway.pb import service as pb

    def msg(inputs: list[tuple[str, str, list[int]]], raw: list[bytes] | None = None, **kw: Any) -> Any:
        m = pb.ModelInferRequest(model_name="m", **kw)
        for name, datatype, shape in inputs:
            m.inputs.add(name=name, datatype=datatype, shape=shape)
        if raw is not None:
            m.raw_input_contents.extend(raw)
        return m

    typed = msg([("A", "INT8", [3]), ("B", "BOOL", [1]), ("C", "BYTES", [2]), ("D", "FP64", [1])])
    typed.inputs[0].contents.int_contents.extend([-128, 0, 127])
    typed.inputs[1].contents.bool_contents.append(True)
    typed.inputs[2].contents.bytes_contents.extend([b"x", b""])
    typed.inputs[3].contents.fp64_contents.append(2.5)
    shm = msg([("A", "FP32", [2]), ("B", "FP32", [1])], [struct.pack("<f", 1.0)])
    shm.inputs[0].parameters["shared_memory_region"].string_param = "r1"
    shm.inputs[0].parameters["shared_memory_byte_size"].int64_param = 8
    out = shm.outputs.add(name="OUTPUT0")
    out.parameters["shared_memory_region"].string_param = "r0"
    out.parameters["shared_memory_byte_size"].int64_param = 64
    params = msg([("A", "UINT16", [2])], [b"\1\0\2\0"], id="r")
    params.parameters["timeout"].int64_param = 5000
    params.outputs.add(name="OUTPUT0").parameters["binary_data"].bool_param = True
    shm_huge = msg([("INPUT0", "BYTES", [2**62, 4])])
    shm_huge.inputs[0].parameters["shared_memory_region"].string_param = "r0"
    shm_huge.inputs[0].parameters["shared_memory_byte_size"].int64_param = 8
    return {
        "seed-raw-fp32": msg([("INPUT0", "FP32", [1, 2])], [struct.pack("<2f", 1.0, 2.0)]).SerializeToString(deterministic=True),
        "seed-raw-bytes": msg([("INPUT0", "BYTES", [2])], [_bytes_elems(b"ab", b"")]).SerializeToString(deterministic=True),
        "seed-typed-contents": typed.SerializeToString(deterministic=True),
        "seed-shared-memory": shm.SerializeToString(deterministic=True),
        "seed-parameters-outputs": params.SerializeToString(deterministic=True),
        # issue 8, bug 5: the gRPC converter raised something else than GatewayError
        "bug5-empty-shape-huge-dims-raw": msg([("INPUT0", "FP32", [0, 2**62, 2**62])], [b""]).SerializeToString(deterministic=True),
        "bug5-empty-shape-huge-dims-typed": msg([("INPUT0", "FP32", [0, 2**62, 2**62])]).SerializeToString(deterministic=True),
        "bug5-bytes-shape-2p62x4": msg([("INPUT0", "BYTES", [2**62, 4])], [_bytes_elems(b"a")]).SerializeToString(deterministic=True),
        "bug5-65-dims": msg([("INPUT0", "FP32", [1] * 65)], [b"\0" * 4]).SerializeToString(deterministic=True),
        # found by this harness: a BYTES input in shared memory whose count passes 2**63 (OverflowError)
        "fuzz-bytes-shm-count-past-ssize": shm_huge.SerializeToString(deterministic=True),
    }


def _random(seed: str, n: int, sizes: tuple[int, int]) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"seed-random-{i}": rng.randbytes(rng.randint(*sizes)) for i in range(n)}


def corpus() -> dict[str, dict[str, bytes]]:
    from gateway._native.bytestensor import encode_bytes_tensor  # noqa: F401  (importable: built)

    elems = _bytes_elems(b"abc", b"", b"\xff" * 5)
    return {
        "http_wire": _wire(),
        "http_body": {name: body_file(body, hlen) for name, (body, hlen) in BODIES.items()},
        "native_inferjson": {name: body_file(body, hlen) for name, (body, hlen) in BODIES.items()},
        "http_body_grammar": _random("http_body_grammar", 8, (16, 300)),
        "grpc_request": _grpc(),
        "grpc_request_grammar": _random("grpc_request_grammar", 8, (16, 200)),
        "native_jsonnum": _random("native_jsonnum", 8, (8, 120)),
        "native_bytestensor": {
            **_random("native_bytestensor", 4, (4, 64)),
            "seed-well-formed": b"\x00" + elems,
            "seed-well-formed-count": b"\x01" + elems,
            "seed-truncated": b"\x00" + elems[:-2],
            "seed-huge-length-prefix": b"\x00\xff\xff\xff\xff",
            "seed-encode": b"\x80" + bytes(range(64)),
        },
    }


def write() -> int:
    from fuzz import CORPUS

    n = 0
    for target, files in corpus().items():
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
            n += 1
    return n
