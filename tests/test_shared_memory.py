"""System shared memory end to end: tritonclient (HTTP and gRPC) and tritonclient.utils.shared_memory
against a real gateway over real sockets, results compared with onnxruntime run directly.

Each test creates its regions through the ``regions`` fixture, which destroys them (and
unregisters everything on the server) even when the test fails.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from models import multi_dtype_model, reference, write_model
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from gateway.demo import add_sub_model
from gateway.errors import Code, GatewayError
from gateway.front.status import http_status
from gateway.shm import SharedMemoryRegistry, check_key
from gateway.testing import ServerThread

MAX_REGIONS = 8
_ids = itertools.count()


# ---- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shm_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("shm_repo")
    write_model(repo, "add_sub", 1, add_sub_model())
    write_model(repo, "multi", 1, multi_dtype_model())
    # Holds a request in its queue for 300 ms: time to unregister and destroy its region meanwhile.
    write_model(repo, "add_sub_slow", 1, add_sub_model(), "max_batch_size = 8\nmax_queue_delay_us = 300000\n")
    return repo


@pytest.fixture(scope="module")
def shm_server(shm_repo: Path, loop_name: str) -> Iterator[ServerThread]:
    with ServerThread(repository=shm_repo, loop=loop_name, allow_client_shm=True,
                      max_shm_regions=MAX_REGIONS) as srv:
        yield srv

        async def leftovers() -> list[str]:
            left = [f"{mv.name}:{mv.version} queued={mv.batcher.queue.rows} in_flight={mv.batcher.in_flight}"
                    for mv in srv.app.registry.versions() if mv.batcher.queue.rows or mv.batcher.in_flight]
            left += [f"connection owes {len(c._tickets)} answers" for c in srv.app.http.connections if c._tickets]
            left += [f"region {r['name']} still registered" for r in srv.app.shm.status()]
            return left

        assert srv.call(leftovers()) == []


class Regions:
    """Client-side regions created by one test; ``destroy`` runs at teardown whatever happened."""

    def __init__(self) -> None:
        self.handles: list[Any] = []

    def create(self, name: str, byte_size: int) -> tuple[Any, str]:
        key = f"/gw_test_{os.getpid()}_{next(_ids)}"
        handle = shm.create_shared_memory_region(name, key, byte_size, create_only=True)
        self.handles.append(handle)
        return handle, key

    def destroy(self) -> None:
        for h in self.handles:
            with contextlib.suppress(Exception):  # teardown: destroy the others anyway
                shm.destroy_shared_memory_region(h)
        self.handles.clear()


@pytest.fixture
def regions() -> Iterator[Regions]:
    r = Regions()
    try:
        yield r
    finally:
        r.destroy()


@dataclass
class Api:
    """The same calls through tritonclient.http or tritonclient.grpc."""

    proto: str
    url: str
    mod: Any

    def __post_init__(self) -> None:
        self.client = self.mod.InferenceServerClient(self.url)

    def output(self, name: str) -> Any:
        if self.proto == "http":
            return self.mod.InferRequestedOutput(name, binary_data=True)
        return self.mod.InferRequestedOutput(name)

    def status(self, name: str = "") -> list[dict[str, Any]]:
        got = self.client.get_system_shared_memory_status(name)
        if self.proto == "http":
            return sorted(got, key=lambda r: r["name"])
        return sorted(({"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
                       for r in got.regions.values()), key=lambda r: r["name"])

    def out_meta(self, result: Any, name: str) -> tuple[list[int], dict[str, Any]]:
        out = result.get_output(name)
        if self.proto == "http":
            assert "data" not in out
            return out["shape"], out["parameters"]
        params = {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in out.parameters.items()}
        return list(out.shape), params

    def fails(self, call: Callable[[], Any], code: Code, *words: str) -> None:
        with pytest.raises(InferenceServerException) as info:
            call()
        want = str(http_status(code)[0]) if self.proto == "http" else f"StatusCode.{code.name}"
        assert str(info.value.status()) == want, info.value
        for w in words:
            assert w in info.value.message(), info.value.message()


@pytest.fixture(params=["http", "grpc"])
def api(request: pytest.FixtureRequest, shm_server: ServerThread) -> Iterator[Api]:
    if request.param == "http":
        a = Api("http", shm_server.http_url, httpclient)
    else:
        a = Api("grpc", shm_server.grpc_url, grpcclient)
    try:
        yield a
    finally:
        a.client.unregister_system_shared_memory()
        a.client.close()


def shm_input(api: Api, name: str, shape: list[int], datatype: str, region: str, size: int,
              offset: int = 0) -> Any:
    inp = api.mod.InferInput(name, shape, datatype)
    inp.set_shared_memory(region, size, offset)
    return inp


def shm_output(api: Api, name: str, region: str, size: int, offset: int = 0) -> Any:
    out = api.output(name)
    out.set_shared_memory(region, size, offset)
    return out


def data(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, 16)).astype(np.float32), rng.standard_normal((rows, 16)).astype(np.float32))


def add_sub_in_shm(api: Api, regions: Regions, tag: str, rows: int = 3) -> tuple[Any, np.ndarray, np.ndarray, Any]:
    """Both inputs in one region (second at an offset), registered; returns (in_handle, x0, x1, inputs)."""
    x0, x1 = data(rows, len(tag))
    n = x0.nbytes
    h_in, key_in = regions.create(f"{tag}_in", 2 * n)
    shm.set_shared_memory_region(h_in, [x0, x1])
    api.client.register_system_shared_memory(f"{tag}_in", key_in, 2 * n)
    inputs = [shm_input(api, "INPUT0", [rows, 16], "FP32", f"{tag}_in", n),
              shm_input(api, "INPUT1", [rows, 16], "FP32", f"{tag}_in", n, offset=n)]
    return h_in, x0, x1, inputs


# ---- inference through shared memory --------------------------------------------------------------

def test_inputs_and_outputs_in_shared_memory_match_onnxruntime(api: Api, regions: Regions,
                                                                shm_repo: Path) -> None:
    _, x0, x1, inputs = add_sub_in_shm(api, regions, f"io_{api.proto}")
    n = x0.nbytes
    # Outputs in one region at offsets 0 and 64 past the first (the region itself starts 128
    # bytes into its object): every offset is counted from the right origin or the data is off.
    h_out, key_out = regions.create("out", 128 + 2 * n + 64)
    api.client.register_system_shared_memory("out", key_out, 2 * n + 64, offset=128)
    outputs = [shm_output(api, "OUTPUT0", "out", n), shm_output(api, "OUTPUT1", "out", n, offset=n + 64)]
    r = api.client.infer("add_sub", inputs, outputs=outputs)

    want = reference(shm_repo, "add_sub", "1", {"INPUT0": x0, "INPUT1": x1})
    shape0, p0 = api.out_meta(r, "OUTPUT0")
    shape1, p1 = api.out_meta(r, "OUTPUT1")
    assert p0 == {"shared_memory_region": "out", "shared_memory_byte_size": n}
    assert p1 == {"shared_memory_region": "out", "shared_memory_byte_size": n, "shared_memory_offset": n + 64}
    got0 = shm.get_contents_as_numpy(h_out, np.float32, shape0, offset=128)
    got1 = shm.get_contents_as_numpy(h_out, np.float32, shape1, offset=128 + n + 64)
    np.testing.assert_allclose(got0, want["OUTPUT0"], rtol=1e-6)
    np.testing.assert_allclose(got1, want["OUTPUT1"], rtol=1e-6)
    if api.proto == "grpc":  # an empty raw entry per shm output keeps the others aligned
        assert list(r.get_response().raw_output_contents) == [b"", b""]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_one_input_and_one_output_in_shared_memory_the_others_inline(api: Api, regions: Regions,
                                                                      shm_repo: Path, binary: bool) -> None:
    if api.proto == "grpc" and not binary:
        pytest.skip("gRPC has no JSON form")
    x0, x1 = data(2, 7)
    h_in, key_in = regions.create("mixed_in", x1.nbytes)
    shm.set_shared_memory_region(h_in, [x1])
    api.client.register_system_shared_memory("mixed_in", key_in, x1.nbytes)
    h_out, key_out = regions.create("mixed_out", x0.nbytes)
    api.client.register_system_shared_memory("mixed_out", key_out, x0.nbytes)
    inline = api.mod.InferInput("INPUT0", [2, 16], "FP32")
    if api.proto == "http":
        inline.set_data_from_numpy(x0, binary_data=binary)
        out1 = api.mod.InferRequestedOutput("OUTPUT1", binary_data=binary)
    else:
        inline.set_data_from_numpy(x0)
        out1 = api.mod.InferRequestedOutput("OUTPUT1")
    # the shm input first: its (absent) raw contents must not shift the inline input's
    inputs = [shm_input(api, "INPUT1", [2, 16], "FP32", "mixed_in", x1.nbytes), inline]
    outputs = [shm_output(api, "OUTPUT0", "mixed_out", x0.nbytes), out1]
    r = api.client.infer("add_sub", inputs, outputs=outputs)
    want = reference(shm_repo, "add_sub", "1", {"INPUT0": x0, "INPUT1": x1})
    np.testing.assert_allclose(r.as_numpy("OUTPUT1"), want["OUTPUT1"], rtol=1e-6)
    shape, _ = api.out_meta(r, "OUTPUT0")
    np.testing.assert_allclose(shm.get_contents_as_numpy(h_out, np.float32, shape), want["OUTPUT0"], rtol=1e-6)


def test_bytes_and_mixed_datatypes_in_shared_memory(api: Api, regions: Regions, shm_repo: Path) -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    b = np.array([[1, -(2**40)], [7, 2**62]], dtype=np.int64)
    c = np.array([[b"x"], ["ü-\x00-z".encode()]], dtype=object)
    c_raw = serialize_byte_tensor(c)
    c_size = len(c_raw.item())
    h, key = regions.create("multi_in", a.nbytes + b.nbytes + c_size)
    shm.set_shared_memory_region(h, [a, b, c_raw])
    api.client.register_system_shared_memory("multi_in", key, a.nbytes + b.nbytes + c_size)
    h_out, key_out = regions.create("multi_out", 64)
    api.client.register_system_shared_memory("multi_out", key_out, 64)
    inputs = [shm_input(api, "A", [2, 3], "FP32", "multi_in", a.nbytes),
              shm_input(api, "B", [2, 2], "INT64", "multi_in", b.nbytes, offset=a.nbytes),
              shm_input(api, "C", [2, 1], "BYTES", "multi_in", c_size, offset=a.nbytes + b.nbytes)]
    outputs = [shm_output(api, "S", "multi_out", 64), shm_output(api, "N", "multi_out", 32, offset=32),
               api.output("F")]
    r = api.client.infer("multi", inputs, outputs=outputs)
    want = reference(shm_repo, "multi", "1", {"A": a, "B": b, "C": np.vectorize(bytes.decode, otypes=[object])(c)})
    np.testing.assert_allclose(r.as_numpy("F"), want["F"])
    shape_n, p_n = api.out_meta(r, "N")
    np.testing.assert_array_equal(shm.get_contents_as_numpy(h_out, np.int64, shape_n, offset=32), want["N"])
    shape_s, p_s = api.out_meta(r, "S")
    assert p_s["shared_memory_byte_size"] == c_size  # what was written, not what was offered
    assert shm.get_contents_as_numpy(h_out, np.object_, shape_s).tolist() == c.tolist()


def test_grpc_stream_reads_and_writes_shared_memory(shm_server: ServerThread, regions: Regions,
                                                    shm_repo: Path) -> None:
    api = Api("grpc", shm_server.grpc_url, grpcclient)
    c = api.client
    try:
        _, x0, x1, inputs = add_sub_in_shm(api, regions, "stream")
        h_out, key_out = regions.create("stream_out", x0.nbytes)
        c.register_system_shared_memory("stream_out", key_out, x0.nbytes)
        answers: queue.Queue[Any] = queue.Queue()
        c.start_stream(callback=lambda result, error: answers.put((result, error)))
        c.async_stream_infer("add_sub", inputs, outputs=[shm_output(api, "OUTPUT0", "stream_out", x0.nbytes)])
        # and one too small: answered on the stream with the error, the stream goes on
        c.async_stream_infer("add_sub", inputs, outputs=[shm_output(api, "OUTPUT0", "stream_out", 8)])
        got = [answers.get(timeout=30) for _ in range(2)]
        c.stop_stream()
        ok = [res for res, err in got if err is None]
        errors = [err for res, err in got if err is not None]
        assert len(ok) == 1 and len(errors) == 1
        assert "OUTPUT0" in errors[0].message() and "8" in errors[0].message()
        want = reference(shm_repo, "add_sub", "1", {"INPUT0": x0, "INPUT1": x1})["OUTPUT0"]
        shape = list(ok[0].get_output("OUTPUT0").shape)
        np.testing.assert_allclose(shm.get_contents_as_numpy(h_out, np.float32, shape), want, rtol=1e-6)
    finally:
        c.unregister_system_shared_memory()
        c.close()


def test_unregister_and_destroy_while_queued_still_answers_right(api: Api, regions: Regions,
                                                                  shm_repo: Path) -> None:
    """The request waits 300 ms in the batch queue holding views of its input region; the region
    is unregistered and the client destroys (unmaps and unlinks) it meanwhile. The gateway's
    mapping must outlive the views, and the output region still gets the answer."""
    h_in, x0, x1, inputs = add_sub_in_shm(api, regions, f"late_{api.proto}", rows=2)
    h_out, key_out = regions.create("late_out", x0.nbytes)
    api.client.register_system_shared_memory("late_out", key_out, x0.nbytes)
    outputs = [shm_output(api, "OUTPUT0", "late_out", x0.nbytes)]
    t0 = time.monotonic()
    if api.proto == "http":
        pending = api.client.async_infer("add_sub_slow", inputs, outputs=outputs)
    else:
        done: queue.Queue[Any] = queue.Queue()
        api.client.async_infer("add_sub_slow", inputs, lambda result, error: done.put((result, error)),
                               outputs=outputs)
    other = Api(api.proto, api.url, api.mod)  # the first client's connection is busy
    other.client.unregister_system_shared_memory()  # all: both regions leave the registry
    assert other.status() == []
    other.client.close()
    regions.handles.remove(h_in)
    shm.destroy_shared_memory_region(h_in)
    assert time.monotonic() - t0 < 0.25, "too slow to act while the request is queued"
    if api.proto == "http":
        r = pending.get_result(timeout=30)
    else:
        r, err = done.get(timeout=30)
        assert err is None, err
    want = reference(shm_repo, "add_sub", "1", {"INPUT0": x0, "INPUT1": x1})["OUTPUT0"]
    shape, _ = api.out_meta(r, "OUTPUT0")
    np.testing.assert_allclose(shm.get_contents_as_numpy(h_out, np.float32, shape), want, rtol=1e-6)


# ---- the registry's API ---------------------------------------------------------------------------

def test_status_lists_regions_and_unregister_one_or_all(api: Api, regions: Regions) -> None:
    _, ka = regions.create("a", 4096)
    _, kb = regions.create("b", 100)
    api.client.register_system_shared_memory("a", ka, 1000, offset=96)
    api.client.register_system_shared_memory("b", kb, 100)
    assert api.status() == [{"name": "a", "key": ka, "offset": 96, "byte_size": 1000},
                            {"name": "b", "key": kb, "offset": 0, "byte_size": 100}]
    assert api.status("b") == [{"name": "b", "key": kb, "offset": 0, "byte_size": 100}]
    api.client.unregister_system_shared_memory("a")
    assert [r["name"] for r in api.status()] == ["b"]
    api.fails(lambda: api.status("a"), Code.NOT_FOUND, "Unable to find system shared memory region: 'a'")
    api.client.unregister_system_shared_memory("never-registered")  # succeeds, as in Triton
    api.client.unregister_system_shared_memory()
    assert api.status() == []


def test_register_refuses_bad_keys_duplicates_and_sizes(api: Api, regions: Regions,
                                                        tmp_path: Path) -> None:
    _, key = regions.create("ok", 256)
    outside = tmp_path / "secret"
    outside.write_bytes(b"s" * 256)
    rel = os.path.relpath(outside, "/dev/shm")
    for bad in ("/../" + rel, "/" + rel, f"/{rel.replace('../', '')}/..", "/a/b", "/..", "/"):
        api.fails(lambda k=bad: api.client.register_system_shared_memory("bad", k, 16),
                  Code.INVALID_ARGUMENT, "invalid shared memory key")
    api.fails(lambda: api.client.register_system_shared_memory("bad", f"/gw_missing_{os.getpid()}", 16),
              Code.INVALID_ARGUMENT, "Unable to open shared memory region")
    api.fails(lambda: api.client.register_system_shared_memory("bad", key, 200, offset=100),
              Code.INVALID_ARGUMENT, "exceed the size", "256")
    api.client.register_system_shared_memory("ok", key, 256)
    api.fails(lambda: api.client.register_system_shared_memory("ok", key, 128),
              Code.INVALID_ARGUMENT, "'ok' is already registered")
    assert api.status() == [{"name": "ok", "key": key, "offset": 0, "byte_size": 256}]


def test_region_count_is_bounded(api: Api, regions: Regions) -> None:
    _, key = regions.create("many", 64)
    for i in range(MAX_REGIONS):
        api.client.register_system_shared_memory(f"r{i}", key, 64)
    api.fails(lambda: api.client.register_system_shared_memory("one-too-many", key, 64),
              Code.RESOURCE_EXHAUSTED, "max_shm_regions")
    api.client.unregister_system_shared_memory("r0")
    api.client.register_system_shared_memory("one-too-many", key, 64)


def test_bad_shared_memory_tensors_are_refused_and_the_server_keeps_serving(api: Api, regions: Regions,
                                                                             shm_repo: Path) -> None:
    _, x0, x1, inputs = add_sub_in_shm(api, regions, f"bad_{api.proto}", rows=2)
    n = x0.nbytes
    h_out, key_out = regions.create("bad_out", 2 * n)
    api.client.register_system_shared_memory("bad_out", key_out, 2 * n)
    tag = f"bad_{api.proto}_in"
    in1 = inputs[1]

    def infer(*ins: Any, outputs: list[Any] | None = None) -> Any:
        return api.client.infer("add_sub", list(ins), outputs=outputs)

    cases = [
        # the second half of a 2n region, one byte further: past the end
        (lambda: infer(inputs[0], shm_input(api, "INPUT1", [2, 16], "FP32", tag, n, offset=n + 1)),
         "runs past the end"),
        (lambda: infer(inputs[0], shm_input(api, "INPUT1", [2, 16], "FP32", tag, 3 * n)), "runs past the end"),
        (lambda: infer(inputs[0], shm_input(api, "INPUT1", [2, 16], "FP32", tag, n - 4)), "does not match"),
        (lambda: infer(inputs[0], shm_input(api, "INPUT1", [2, 16], "FP32", "nope", n)),
         "Unable to find system shared memory region: 'nope'"),
        (lambda: infer(inputs[0], in1, outputs=[shm_output(api, "OUTPUT0", "bad_out", n - 1)]),
         "output 'OUTPUT0' needs"),
        (lambda: infer(inputs[0], in1, outputs=[shm_output(api, "OUTPUT0", "bad_out", n, offset=n + 1)]),
         "runs past the end"),
        (lambda: infer(inputs[0], in1, outputs=[shm_output(api, "OUTPUT0", "nope", n)]),
         "Unable to find system shared memory region: 'nope'"),
    ]
    for call, words in cases:
        api.fails(call, Code.INVALID_ARGUMENT, words)
    # nothing above was written, and a good request still works
    assert not np.frombuffer(shm.get_contents_as_numpy(h_out, np.uint8, [2 * n]), np.uint8).any()
    r = infer(inputs[0], in1, outputs=[shm_output(api, "OUTPUT0", "bad_out", n)])
    want = reference(shm_repo, "add_sub", "1", {"INPUT0": x0, "INPUT1": x1})["OUTPUT0"]
    shape, _ = api.out_meta(r, "OUTPUT0")
    np.testing.assert_allclose(shm.get_contents_as_numpy(h_out, np.float32, shape), want, rtol=1e-6)


def test_cuda_shared_memory_answers_without_regions(api: Api) -> None:
    api.client.unregister_cuda_shared_memory()
    api.client.unregister_cuda_shared_memory("x")
    status = api.client.get_cuda_shared_memory_status()
    assert (status == []) if api.proto == "http" else (len(status.regions) == 0)
    handle: Any = "AAAA" if api.proto == "http" else b"\x00" * 64
    api.fails(lambda: api.client.register_cuda_shared_memory("x", handle, 0, 64),
              Code.INVALID_ARGUMENT, "CUDA shared memory is not supported")


def test_server_metadata_lists_system_shared_memory(shm_server: ServerThread) -> None:
    meta = httpclient.InferenceServerClient(shm_server.http_url).get_server_metadata()
    assert "system_shared_memory" in meta["extensions"]
    assert "cuda_shared_memory" not in meta["extensions"]


def test_registration_is_off_by_default(server: ServerThread, regions: Regions) -> None:
    """The shared test server runs with default settings: clients may not register regions."""
    _, key = regions.create("off", 64)
    for a in (Api("http", server.http_url, httpclient), Api("grpc", server.grpc_url, grpcclient)):
        a.fails(lambda a=a: a.client.register_system_shared_memory("off", key, 64),
                Code.UNIMPLEMENTED, "disabled", "allow-client-shm")
        assert a.status() == []
        a.client.unregister_system_shared_memory()
        a.client.unregister_cuda_shared_memory()
        a.fails(lambda a=a: a.client.infer("add_sub", [shm_input(a, "INPUT0", [1, 16], "FP32", "off", 64),
                                                        shm_input(a, "INPUT1", [1, 16], "FP32", "off", 64)]),
                Code.INVALID_ARGUMENT, "Unable to find system shared memory region: 'off'")
        a.client.close()
    assert "system_shared_memory" not in httpclient.InferenceServerClient(server.http_url) \
        .get_server_metadata()["extensions"]


def test_grpc_raw_contents_count_must_match_the_inputs_not_in_shared_memory(api: Api, regions: Regions) -> None:
    if api.proto != "grpc":
        pytest.skip("gRPC only")
    x = np.ones((1, 16), np.float32)
    h, key = regions.create("cnt", x.nbytes)
    shm.set_shared_memory_region(h, [x])
    api.client.register_system_shared_memory("cnt", key, x.nbytes)
    req = service_pb2.ModelInferRequest(model_name="add_sub")
    t = req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
    t.parameters["shared_memory_region"].string_param = "cnt"
    t.parameters["shared_memory_byte_size"].int64_param = x.nbytes
    req.inputs.add(name="INPUT1", datatype="FP32", shape=[1, 16])
    # One raw entry per input not in shared memory. (With one entry for every input, no input's
    # parameters are looked at: the fast path stays as it was, and all are read as raw.)
    req.raw_input_contents.extend([x.tobytes()] * 3)
    with grpc.insecure_channel(api.url) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(req, timeout=10)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "1 in shared memory" in info.value.details() and "3 raw_input_contents" in info.value.details()
        del req.raw_input_contents[1:]
        r = stub.ModelInfer(req, timeout=10)
        assert np.frombuffer(r.raw_output_contents[0], np.float32).tolist() == [2.0] * 16


# ---- the registry itself ------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["/../etc/passwd", "/a/b", "/..", "/.", "/", "", "//x", "/x/..", "/" + "n" * 256,
                                 "/a\x00b", 7, None])
def test_keys_other_than_one_name_under_dev_shm_are_refused(key: Any) -> None:
    with pytest.raises(GatewayError) as info:
        check_key(key)
    assert info.value.code is Code.INVALID_ARGUMENT


def test_keys_name_one_object_under_dev_shm() -> None:
    assert check_key("/input_simple") == "/dev/shm/input_simple"
    assert check_key("input_simple") == "/dev/shm/input_simple"  # as glibc's shm_open reads it


def test_shutdown_with_a_live_view_leaves_the_view_readable(regions: Regions) -> None:
    x = np.arange(8, dtype=np.float32)
    h, key = regions.create("live", x.nbytes + 4)
    shm.set_shared_memory_region(h, [x], offset=4)
    reg = SharedMemoryRegistry(enabled=True)
    reg.register("live", key, 4, x.nbytes)
    view = reg.read_input("X", "FP32", np.dtype("<f4"), [2, 4], 8, {"shared_memory_region": "live",
                                                                  "shared_memory_byte_size": x.nbytes})
    assert not view.flags.writeable
    reg.close()  # the view holds the mapping: it is not unmapped under it
    assert reg.status() == []
    np.testing.assert_array_equal(view.ravel(), x)
