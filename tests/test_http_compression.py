"""HTTP content codings: tritonclient's request and response compression, and the bounds around it.

tritonclient.http compresses the whole request body (binary tensors included) and sends the
*uncompressed* JSON length in Inference-Header-Content-Length; it decompresses a response whose
Content-Encoding is gzip or deflate before it reads the header length. Decompression on the
server is bounded by max_body_bytes: a zip bomb gets 413 without the memory it asks for.
"""

from __future__ import annotations

import gzip
import http.client
import json
import resource
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from models import reference
from tritonclient.utils import InferenceServerException

from gateway.testing import ServerThread

CODINGS = [None, "gzip", "deflate"]
ADD_SUB = json.dumps({"inputs": [
    {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [1.0] * 16},
    {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": [2.0] * 16}]}).encode()


def post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **headers})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def multi_inputs(binary: bool) -> tuple[list[httpclient.InferInput], dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    feeds = {"A": rng.standard_normal((5, 3)).astype(np.float32),
             "B": rng.integers(-1000, 1000, (5, 2)).astype(np.int64),
             "C": np.array([[f"text-{i}-é".encode()] for i in range(5)], dtype=object)}
    inputs = []
    for name, dt in (("A", "FP32"), ("B", "INT64"), ("C", "BYTES")):
        i = httpclient.InferInput(name, list(feeds[name].shape), dt)
        i.set_data_from_numpy(feeds[name], binary_data=binary)
        inputs.append(i)
    return inputs, feeds


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("response", CODINGS, ids=lambda c: f"resp-{c}")
@pytest.mark.parametrize("request_", CODINGS, ids=lambda c: f"req-{c}")
def test_tritonclient_compression_round_trip(server: ServerThread, repo: Path, request_: str | None,
                                             response: str | None, binary: bool) -> None:
    c = httpclient.InferenceServerClient(server.http_url)
    inputs, feeds = multi_inputs(binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("F", "N", "S")]
    r = c.infer("multi", inputs, outputs=outputs, request_id="zip-1",
                request_compression_algorithm=request_, response_compression_algorithm=response)
    want = reference(repo, "multi", "1", feeds)
    np.testing.assert_array_equal(r.as_numpy("F"), want["F"])
    np.testing.assert_array_equal(r.as_numpy("N"), want["N"])
    got = [bytes(x) if binary else x.encode() for x in r.as_numpy("S").reshape(-1)]
    assert got == list(feeds["C"].reshape(-1))  # S = C
    assert r.get_response()["id"] == "zip-1"


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_response_is_compressed_and_header_length_is_uncompressed(server: ServerThread, coding: str) -> None:
    body = json.dumps({"inputs": [
        {"name": "INPUT0", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}).encode()
    status, headers, data = post(server.http_port, "/v2/models/mlp/infer", body, {"Accept-Encoding": coding})
    assert status == 200 and headers["content-encoding"] == coding
    assert int(headers["content-length"]) == len(data)
    plain = gzip.decompress(data) if coding == "gzip" else zlib.decompress(data)
    hlen = int(headers["inference-header-content-length"])
    head = json.loads(plain[:hlen])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == len(plain) - hlen == 4 * 10  # FP32[1, 10]


def test_raw_deflate_request_is_accepted(server: ServerThread) -> None:
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)  # no zlib header, as some clients send "deflate"
    status, _, data = post(server.http_port, "/v2/models/add_sub/infer", c.compress(ADD_SUB) + c.flush(),
                           {"Content-Encoding": "deflate"})
    assert status == 200, data
    assert json.loads(data)["outputs"][0]["data"] == [3.0] * 16


@pytest.mark.parametrize("accept, coding", [
    (None, None),
    ("gzip;q=0", None),
    ("identity", None),
    ("br", None),
    ("gzip;q=0, deflate", "deflate"),
    ("gzip;q=0.2, deflate;q=0.8", "deflate"),
    ("deflate, gzip", "deflate"),
    ("br, *", "gzip"),
    ("*;q=0", None),
])
def test_accept_encoding_negotiation(server: ServerThread, accept: str | None, coding: str | None) -> None:
    status, headers, data = post(server.http_port, "/v2/models/add_sub/infer", ADD_SUB,
                                 {"Accept-Encoding": accept} if accept is not None else {})
    assert status == 200
    assert headers.get("content-encoding") == coding
    if coding == "gzip":
        data = gzip.decompress(data)
    elif coding == "deflate":
        data = zlib.decompress(data)
    assert json.loads(data)["outputs"][0]["data"] == [3.0] * 16


def test_errors_are_not_compressed_so_tritonclient_reads_them(server: ServerThread) -> None:
    c = httpclient.InferenceServerClient(server.http_url)
    inp = httpclient.InferInput("INPUT0", [1, 64], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 64), np.float32))
    with pytest.raises(InferenceServerException) as exc:
        c.infer("no_such_model", [inp], request_compression_algorithm="gzip", response_compression_algorithm="gzip")
    assert exc.value.status() == "404" and "no_such_model" in exc.value.message()


def test_corrupt_gzip_gets_400_and_keeps_serving(server: ServerThread) -> None:
    port = server.http_port
    for body in (b"certainly not gzip", gzip.compress(ADD_SUB)[:-10], gzip.compress(ADD_SUB) + b"trailing"):
        status, _, data = post(port, "/v2/models/add_sub/infer", body, {"Content-Encoding": "gzip"})
        assert status == 400 and "gzip" in json.loads(data)["error"]
    status, _, _ = post(port, "/v2/models/add_sub/infer", ADD_SUB, {})
    assert status == 200


def test_unknown_encoding_gets_415_naming_what_is_accepted(server: ServerThread) -> None:
    status, headers, data = post(server.http_port, "/v2/models/add_sub/infer", ADD_SUB, {"Content-Encoding": "br"})
    assert status == 415
    assert "br" in json.loads(data)["error"]
    assert headers["accept-encoding"] == "gzip, deflate"
    status, _, _ = post(server.http_port, "/v2/models/add_sub/infer", ADD_SUB, {"Content-Encoding": "identity"})
    assert status == 200


# ---- zip bombs ---------------------------------------------------------------------------------------
LIMIT = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def small_limit_server(repo: Path) -> Iterator[ServerThread]:
    with ServerThread(repository=repo, loop="uvloop", max_body_bytes=LIMIT) as srv:
        yield srv


def gzip_bomb_1gib() -> bytes:
    """1 GiB of zeros in ~1 MB: one gzip member of 1 MiB of zeros, repeated (gzip allows members in a row)."""
    member = gzip.compress(b"\0" * (1 << 20), compresslevel=9)
    return member * 1024


def deflate_bomb(size: int) -> bytes:
    """One zlib stream of ``size`` zeros."""
    c = zlib.compressobj(9)
    chunk = b"\0" * (1 << 20)
    return b"".join([c.compress(chunk) for _ in range(size >> 20)] + [c.flush()])


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_zip_bomb_gets_413_fast_with_bounded_memory(small_limit_server: ServerThread, coding: str) -> None:
    bomb = gzip_bomb_1gib() if coding == "gzip" else deflate_bomb(128 << 20)
    assert len(bomb) < LIMIT  # the wire body passes the limit: only the decompressed size is over it
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; the server runs in this process
    t0 = time.perf_counter()
    status, _, data = post(small_limit_server.http_port, "/v2/models/add_sub/infer", bomb,
                           {"Content-Encoding": coding})
    elapsed = time.perf_counter() - t0
    assert status == 413 and "max_body_bytes" in json.loads(data)["error"]
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mib < 100, f"peak RSS grew by {grown_mib:.0f} MiB: decompression was not bounded"
    assert elapsed < 5, elapsed  # stops at the limit instead of inflating the whole GiB
    status, _, data = post(small_limit_server.http_port, "/v2/models/add_sub/infer", gzip.compress(ADD_SUB),
                           {"Content-Encoding": "gzip"})
    assert status == 200 and json.loads(data)["outputs"][0]["data"] == [3.0] * 16


def test_body_just_under_the_limit_decompresses(small_limit_server: ServerThread) -> None:
    # padding inside the JSON: LIMIT bytes exactly once decompressed is accepted, one more is not
    pad = LIMIT - len(ADD_SUB) - len(b', "x": ""')
    doc = ADD_SUB[:-1] + b', "x": "' + b" " * pad + b'"}'
    assert len(doc) == LIMIT
    status, _, data = post(small_limit_server.http_port, "/v2/models/add_sub/infer", gzip.compress(doc),
                           {"Content-Encoding": "gzip"})
    assert status == 200, data
    doc = ADD_SUB[:-1] + b', "x": "' + b" " * (pad + 1) + b'"}'
    status, _, _ = post(small_limit_server.http_port, "/v2/models/add_sub/infer", gzip.compress(doc),
                        {"Content-Encoding": "gzip"})
    assert status == 413
