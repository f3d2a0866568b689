"""Failures are counted, and /metrics carries Triton's families, consistent with the statistics extension.

Every answered failure of an infer request shows up in ``gateway_requests_total{outcome}``, in
Triton's ``nv_inference_request_failure{reason}`` and in the statistics extension's
``inference_stats.fail`` (HTTP and gRPC), whichever front answered it and wherever it failed
(decode, routing, validation, admission, execution). A failure that names no loaded version is
counted server-wide. The exposition is parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import http.client
import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from models import bad_rows_model, mlp_model, write_model
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from gateway.demo import add_sub_model
from gateway.observe.stats import Totals
from gateway.testing import ServerThread

NV_COUNTERS = ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
               "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
               "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
               "nv_inference_compute_output_duration_us")
REASONS = {"REJECTED", "CANCELED", "BACKEND", "OTHER"}


@pytest.fixture(scope="module")
def metrics_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("metrics")
    write_model(repo, "add_sub", 1, add_sub_model())
    write_model(repo, "counted", 1, mlp_model(seed=1))  # only test_success_counts_... sends to it
    # waits up to 0.6 s for a fuller batch and holds at most 2 rows: queue-full and pending are observable
    write_model(repo, "waity", 1, mlp_model(seed=3),
                "max_batch_size = 64\nmax_queue_delay_us = 600000\nmax_queue_size = 2\n")
    write_model(repo, "bad_rows", 1, bad_rows_model(), "max_batch_size = 8\n")
    return repo


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def srv(metrics_repo: Path, request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    with ServerThread(repository=metrics_repo, loop=request.param) as s:
        yield s


# ---- reading what the server exposes ----------------------------------------------------------
def scrape(s: ServerThread) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", s.http_port, timeout=30)
    conn.request("GET", "/metrics")
    r = conn.getresponse()
    text = r.read().decode()
    conn.close()
    assert r.status == 200
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict[str, Any], family: str, sample: str | None = None, **labels: str) -> float:
    """One sample's value (0 when absent: a counter that never moved)."""
    name = sample or (family + "_total" if fams[family].type == "counter" else family)
    found = [s.value for s in fams[family].samples if s.name == name and s.labels == labels]
    assert len(found) <= 1
    return found[0] if found else 0.0


def http_stats(s: ServerThread, model: str) -> dict[str, Any]:
    return httpclient.InferenceServerClient(s.http_url).get_inference_statistics(model)["model_stats"][0]


def grpc_stats(s: ServerThread, model: str) -> Any:
    return grpcclient.InferenceServerClient(s.grpc_url).get_inference_statistics(model).model_stats[0]


class Counts:
    """The failure counters of one model version (and the server-wide ones) before an action."""

    def __init__(self, s: ServerThread, model: str = "add_sub", version: str = "1") -> None:
        self.s, self.model, self.version = s, model, version
        self.fams = scrape(s)
        self.http_fail = http_stats(s, model)["inference_stats"]["fail"]["count"]
        self.grpc_fail = grpc_stats(s, model).inference_stats.fail.count

    def delta(self, outcome: str, reason: str | None, stats_moved: bool = True, model: str | None = None,
              version: str | None = None) -> None:
        """Assert exactly one more failure of ``outcome`` (labelled model/version), of Triton ``reason``."""
        after = scrape(self.s)
        m = self.model if model is None else model
        v = self.version if version is None else version
        got = (value(after, "gateway_requests", model=m, version=v, outcome=outcome)
               - value(self.fams, "gateway_requests", model=m, version=v, outcome=outcome))
        assert got == 1, (outcome, m, v, got)
        for r in REASONS:
            moved = (value(after, "nv_inference_request_failure", model=self.model, version=self.version, reason=r)
                     - value(self.fams, "nv_inference_request_failure", model=self.model, version=self.version,
                             reason=r))
            assert moved == (1 if r == reason else 0), (r, moved)
        n = 1 if stats_moved else 0
        assert http_stats(self.s, self.model)["inference_stats"]["fail"]["count"] == self.http_fail + n
        assert grpc_stats(self.s, self.model).inference_stats.fail.count == self.grpc_fail + n


# ---- requests ---------------------------------------------------------------------------------
def http_inputs(shape: tuple[int, int] = (1, 16), dtype: str = "FP32", names: tuple[str, ...] = ("INPUT0", "INPUT1"),
                mod: Any = httpclient) -> list[Any]:
    out = []
    for n in names:
        i = mod.InferInput(n, list(shape), dtype)
        i.set_data_from_numpy(np.ones(shape, dtype=np.float32 if dtype == "FP32" else np.int32))
        out.append(i)
    return out


def raw_post(s: ServerThread, path: str, body: bytes) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", s.http_port, timeout=30)
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    r.read()
    conn.close()
    return r.status


def expect_error(fn: Any, status: str) -> None:
    with pytest.raises(InferenceServerException) as e:
        fn()
    assert status in str(e.value.status()), e.value


# ---- failures over HTTP ------------------------------------------------------------------------
def test_http_4xx_are_counted(srv: ServerThread) -> None:
    c = httpclient.InferenceServerClient(srv.http_url)
    cases = [  # (request, HTTP status)
        (lambda: c.infer("add_sub", http_inputs(shape=(1, 15))), "400"),  # wrong shape
        (lambda: c.infer("add_sub", http_inputs(dtype="INT32")), "400"),  # wrong datatype
        (lambda: c.infer("add_sub", http_inputs(names=("INPUT0",))), "400"),  # missing input
    ]
    for fn, status in cases:
        before = Counts(srv)
        expect_error(fn, status)
        before.delta("invalid_argument", "OTHER")
    before = Counts(srv)  # not decodable: counted by the front against the version the URL names
    assert raw_post(srv, "/v2/models/add_sub/versions/1/infer", b'{"inputs": [') == 400
    before.delta("invalid_argument", "OTHER")


def test_http_404_is_counted_server_wide(srv: ServerThread) -> None:
    c = httpclient.InferenceServerClient(srv.http_url)
    before = Counts(srv)
    expect_error(lambda: c.infer("add_sub", http_inputs(), model_version="9"), "404")
    # a version that does not exist is charged to no version: to the model, server-wide
    before.delta("not_found", None, stats_moved=False, version="")
    before = Counts(srv)
    expect_error(lambda: c.infer("no_such_model", http_inputs()), "404")
    before.delta("not_found", None, stats_moved=False, model="", version="")  # a client's name is no label


def test_http_429_and_504_are_rejections(srv: ServerThread) -> None:
    c = httpclient.InferenceServerClient(srv.http_url)
    two = [httpclient.InferInput("INPUT0", [2, 64], "FP32")]
    two[0].set_data_from_numpy(np.zeros((2, 64), np.float32))
    one = [httpclient.InferInput("INPUT0", [1, 64], "FP32")]
    one[0].set_data_from_numpy(np.zeros((1, 64), np.float32))
    before = Counts(srv, "waity")
    box: queue.Queue = queue.Queue()
    t = threading.Thread(target=lambda: box.put(c.__class__(srv.http_url).infer("waity", two)))
    t.start()  # fills the queue (2 rows) for 0.6 s
    deadline = time.time() + 5
    while time.time() < deadline and value(scrape(srv), "nv_inference_pending_request_count",
                                           model="waity", version="1") != 1:
        time.sleep(0.01)
    fams = scrape(srv)
    assert value(fams, "nv_inference_pending_request_count", model="waity", version="1") == 1
    assert value(fams, "gateway_requests_in_flight", model="waity", version="1") == 1
    assert value(fams, "gateway_queue_rows", model="waity", version="1") == 2
    expect_error(lambda: c.infer("waity", one), "429")
    before.delta("resource_exhausted", "REJECTED")
    t.join(10)
    assert box.get_nowait().as_numpy("OUTPUT0").shape == (2, 10)  # the queued one is still answered
    before = Counts(srv, "waity")
    expect_error(lambda: c.infer("waity", one, timeout=1000), "504")  # deadline passes while queued
    before.delta("deadline_exceeded", "REJECTED")


def test_model_failure_is_a_backend_failure(srv: ServerThread) -> None:
    c = httpclient.InferenceServerClient(srv.http_url)
    x = [httpclient.InferInput("INPUT0", [1, 4], "FP32")]
    x[0].set_data_from_numpy(np.zeros((1, 4), np.float32))
    before = Counts(srv, "bad_rows")
    expect_error(lambda: c.infer("bad_rows", x), "500")
    before.delta("internal", "BACKEND")


# ---- failures over gRPC ------------------------------------------------------------------------
def test_grpc_failures_are_counted(srv: ServerThread) -> None:
    c = grpcclient.InferenceServerClient(srv.grpc_url)
    before = Counts(srv)
    expect_error(lambda: c.infer("add_sub", http_inputs(shape=(1, 15), mod=grpcclient)), "INVALID_ARGUMENT")
    before.delta("invalid_argument", "OTHER")
    before = Counts(srv)
    expect_error(lambda: c.infer("add_sub", http_inputs(names=("INPUT0",), mod=grpcclient)), "INVALID_ARGUMENT")
    before.delta("invalid_argument", "OTHER")
    before = Counts(srv)
    expect_error(lambda: c.infer("add_sub", http_inputs(mod=grpcclient), model_version="9"), "NOT_FOUND")
    before.delta("not_found", None, stats_moved=False, version="")
    before = Counts(srv)  # not decodable (raw contents too short): counted by the front
    r = service_pb2.ModelInferRequest(model_name="add_sub")
    for n in ("INPUT0", "INPUT1"):
        r.inputs.add(name=n, datatype="FP32", shape=[1, 16])
        r.raw_input_contents.append(b"\x00" * 3)
    with grpc.insecure_channel(srv.grpc_url) as ch, pytest.raises(grpc.RpcError) as e:
        service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(r, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    before.delta("invalid_argument", "OTHER")


def test_grpc_stream_failures_are_counted(srv: ServerThread) -> None:
    c = grpcclient.InferenceServerClient(srv.grpc_url)
    answers: queue.Queue = queue.Queue()
    before = Counts(srv)
    c.start_stream(callback=lambda result, error: answers.put(error))
    c.async_stream_infer("add_sub", http_inputs(shape=(1, 15), mod=grpcclient))
    c.async_stream_infer("add_sub", http_inputs(mod=grpcclient))
    got = [answers.get(timeout=30) for _ in range(2)]
    c.stop_stream()
    assert sum(e is not None for e in got) == 1
    before.delta("invalid_argument", "OTHER")
    before = Counts(srv)  # not decodable: counted by the stream's reader

    def reqs() -> Iterator[Any]:
        r = service_pb2.ModelInferRequest(model_name="add_sub", id="raw-bad")
        for n in ("INPUT0", "INPUT1"):
            r.inputs.add(name=n, datatype="FP32", shape=[1, 16])
            r.raw_input_contents.append(b"\x00" * 3)
        yield r

    with grpc.insecure_channel(srv.grpc_url) as ch:
        raw = list(service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelStreamInfer(reqs(), timeout=30))
    assert len(raw) == 1 and raw[0].error_message
    before.delta("invalid_argument", "OTHER")


# ---- the Triton families ---------------------------------------------------------------------
def test_success_counts_and_triton_families_match_the_statistics(srv: ServerThread) -> None:
    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    h = httpclient.InferenceServerClient(srv.http_url)
    g = grpcclient.InferenceServerClient(srv.grpc_url)
    hi = [httpclient.InferInput("INPUT0", [1, 64], "FP32")]
    hi[0].set_data_from_numpy(x)
    gi = [grpcclient.InferInput("INPUT0", [1, 64], "FP32")]
    gi[0].set_data_from_numpy(x)
    for _ in range(5):
        h.infer("counted", hi)
    for _ in range(4):
        g.infer("counted", gi)
    answers: queue.Queue = queue.Queue()
    g.start_stream(callback=lambda result, error: answers.put(error))
    for i in range(3):  # distinct inputs: the native front reads them in one pass, and identical
        si = [grpcclient.InferInput("INPUT0", [1, 64], "FP32")]  # ones would share one computation
        si[0].set_data_from_numpy(x + i)
        g.async_stream_infer("counted", si)
    assert [answers.get(timeout=30) for _ in range(3)] == [None] * 3
    g.stop_stream()
    sent = 12

    fams = scrape(srv)
    lv = {"model": "counted", "version": "1"}
    for name in NV_COUNTERS:
        assert fams[name].type == "counter", name
        assert {frozenset(s.labels) for s in fams[name].samples} == (
            {frozenset({"model", "version", "reason"})} if name == "nv_inference_request_failure"
            else {frozenset({"model", "version"})}), name
    assert fams["nv_inference_pending_request_count"].type == "gauge"
    assert {s.labels["reason"] for s in fams["nv_inference_request_failure"].samples
            if s.labels["model"] == "counted"} == REASONS

    st = http_stats(srv, "counted")
    inf = st["inference_stats"]
    assert value(fams, "nv_inference_request_success", **lv) == sent == inf["success"]["count"]
    assert value(fams, "gateway_requests", outcome="success", **lv) == sent
    assert value(fams, "gateway_request_stage_seconds", "gateway_request_stage_seconds_count",
                 stage="total", **lv) == sent
    assert sum(value(fams, "nv_inference_request_failure", reason=r, **lv) for r in REASONS) == 0
    assert value(fams, "nv_inference_count", **lv) == st["inference_count"] == sent  # one row each
    assert value(fams, "nv_inference_exec_count", **lv) == st["execution_count"]
    assert st["execution_count"] >= 1
    for family, stage in (("nv_inference_request_duration_us", "success"), ("nv_inference_queue_duration_us", "queue"),
                          ("nv_inference_compute_input_duration_us", "compute_input"),
                          ("nv_inference_compute_infer_duration_us", "compute_infer"),
                          ("nv_inference_compute_output_duration_us", "compute_output")):
        assert value(fams, family, **lv) == inf[stage]["ns"] // 1000, family
    assert value(fams, "nv_inference_request_duration_us", **lv) > 0
    gs = grpc_stats(srv, "counted")
    assert gs.inference_stats.success.count == sent and gs.inference_count == sent


def test_gauges_are_zero_when_idle(srv: ServerThread) -> None:
    fams = scrape(srv)
    for name in ("nv_inference_pending_request_count", "gateway_requests_in_flight", "gateway_queue_rows"):
        samples = fams[name].samples
        assert samples and all(s.value == 0 for s in samples), name
    assert value(fams, "gateway_workers_reporting") == 1


# ---- the aggregate itself -----------------------------------------------------------------------
def test_totals_merge_sums_counters_and_histograms_bucket_wise() -> None:
    a, b = Totals(success_count=3, success_ns=30), Totals(success_count=4, success_ns=40, last_inference_ms=9)
    a.hists["total"] = ([1, 2] + [0] * 15, 0.5)
    b.hists["total"] = ([0, 1] + [0] * 14 + [3], 1.5)
    b.hists["rows"] = ([4] + [0] * 11, 4.0)
    a.fail_by_code, b.fail_by_code = {"INVALID_ARGUMENT": 1}, {"INVALID_ARGUMENT": 2, "NOT_FOUND": 1}
    a.batch_sizes, b.batch_sizes = {1: [3, 10, 20, 30]}, {1: [4, 1, 2, 3], 2: [1, 1, 1, 1]}
    a.merge(Totals.from_doc(json.loads(json.dumps(b.to_doc()))))  # through the snapshot file's form
    assert (a.success_count, a.success_ns, a.last_inference_ms) == (7, 70, 9)
    assert a.hists["total"] == ([1, 3] + [0] * 14 + [3], 2.0)
    buckets, total = a.cumulative("total")
    assert buckets[0] == ("5e-05", 1) and buckets[1] == ("0.0001", 4) and buckets[-1] == ("+Inf", 7)
    assert a.cumulative("rows")[0][-1] == ("+Inf", 4)
    assert a.fail_by_code == {"INVALID_ARGUMENT": 3, "NOT_FOUND": 1}
    assert a.batch_sizes == {1: [7, 11, 22, 33], 2: [1, 1, 1, 1]}


def test_http_bodies_are_counted_by_decoder(srv: ServerThread) -> None:
    """tritonclient's bodies take the native decoder; one it does not cover (an escaped string)
    and a malformed one go to the interpreted decoder, and both paths answer."""
    before = scrape(srv)
    c = httpclient.InferenceServerClient(srv.http_url)
    c.infer("add_sub", http_inputs())  # binary extension
    c.infer("add_sub", http_inputs(), outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=False)])
    row = ",".join(["1"] * 16)
    escaped = ('{"id":"a\\u0062","inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,16],"data":[' + row
               + ']},{"name":"INPUT1","datatype":"FP32","shape":[1,16],"data":[' + row + ']}]}').encode()
    assert raw_post(srv, "/v2/models/add_sub/infer", escaped) == 200
    assert raw_post(srv, "/v2/models/add_sub/infer", b'{"inputs": [') == 400
    after = scrape(srv)

    def moved(path: str) -> float:
        return value(after, "gateway_http_decode", path=path) - value(before, "gateway_http_decode", path=path)

    assert moved("native") == 2 and moved("general") == 2
