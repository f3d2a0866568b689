"""Histograms, merging, the knee search, the capacity model and request encoding, without sockets."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from hdrh.histogram import HdrHistogram

from gateway.loadtest.cli import main
from gateway.loadtest.merge import hist_from_us, latency_summary, merge, new_histogram, summarize_worker
from gateway.loadtest.recorder import ST_TIMEOUT, status_label
from gateway.loadtest.runner import WorkerOutcome
from gateway.loadtest.sweep import Slo, find_knee, judge, replicas_needed
from gateway.loadtest.targets import (
    ModelInfo,
    Target,
    TensorSpec,
    Variation,
    build_request_set,
    encode_http,
    load_samples,
    random_inputs,
)

INFO = ModelInfo("mlp", "", (TensorSpec("INPUT0", "FP32", (-1, 64)),), (TensorSpec("OUTPUT0", "FP32", (-1, 10)),))


def test_bulk_histogram_equals_hdrh_record_value():
    v = np.random.default_rng(1).lognormal(7, 1.5, 30_000)
    ref = new_histogram()
    for x in v:
        ref.record_value(max(1, int(x)))
    h = hist_from_us(v)
    assert np.array_equal(np.ctypeslib.as_array(h.counts), np.ctypeslib.as_array(ref.counts))
    s = latency_summary(h)
    for key, p in (("p50", 50), ("p99", 99), ("p99_9", 99.9)):
        assert s[key] == ref.get_value_at_percentile(p) / 1e3
    assert s["max"] == ref.get_max_value() / 1e3
    back = HdrHistogram.decode(h.encode())
    assert back.get_total_count() == 30_000 and back.get_value_at_percentile(99) == ref.get_value_at_percentile(99)


def _outcome(proc: int, t: np.ndarray, lat: np.ndarray, status: np.ndarray) -> WorkerOutcome:
    return WorkerOutcome(proc, t, lat, status, late=1, opened=2, max_open=2, connect_errors=0, cpu_s=0.1, wall_s=1)


def test_merge_of_processes_equals_one_process():
    rng = np.random.default_rng(2)
    t = np.sort(rng.uniform(0, 4, 8000))
    lat = rng.exponential(0.01, 8000)
    status = np.where(rng.uniform(size=8000) < 0.01, 503, 200).astype(np.int16)
    status[:5] = ST_TIMEOUT
    kw = {"interval": 1.0, "warmup": 0.0, "window_end": 4.0}
    one = merge([summarize_worker(_outcome(0, t, lat, status), **kw)], mode="open", **kw)
    halves = [summarize_worker(_outcome(k, t[k::2], lat[k::2], status[k::2]), **kw) for k in (0, 1)]
    two = merge(halves, mode="open", **kw)
    assert one["latency_ms"] == two["latency_ms"]
    assert one["errors"] == two["errors"] and one["errors"]["timeout"] == 5
    assert one["requests"]["ok"] == two["requests"]["ok"] == int(np.count_nonzero(status == 200))
    assert [i["latency_ms"] for i in one["intervals"]] == [i["latency_ms"] for i in two["intervals"]]
    assert one["intended_rps"] == pytest.approx(2000)
    assert two["generator"]["procs"] == 2 and two["requests"]["late"] == 2


def test_unanswered_requests_are_errors_and_warmup_is_excluded():
    t = np.arange(10) * 0.1
    lat = np.full(10, 0.005)
    lat[-1] = np.nan
    status = np.full(10, 200, np.int16)
    status[-1] = 0
    kw = {"interval": 0.5, "warmup": 0.2, "window_end": 1.0}
    s = merge([summarize_worker(_outcome(0, t, lat, status), **kw)], mode="open", **kw)
    assert s["requests"]["sent"] == 8 and s["errors"] == {"no_response": 1}
    assert s["latency_ms"]["count"] == 7


def test_status_labels():
    assert status_label(503) == "http_503"
    assert status_label(1014) == "grpc_UNAVAILABLE"
    assert status_label(ST_TIMEOUT) == "timeout"


def _synthetic_server(capacity: float):
    """Summary of a server that keeps p99 at 5 ms below capacity and falls behind above it."""
    def measure(rate: float) -> dict:
        over = max(0.0, rate - capacity)
        p99 = 5.0 + 1000.0 * over / capacity * 10
        return {"latency_ms": {"p99": p99, "count": 100}, "error_rate": 0.0, "intended_rps": rate,
                "achieved_rps": min(rate, capacity), "late_fraction": 0.0}
    return measure


@pytest.mark.parametrize("capacity", [370.0, 1234.0, 8000.0])
def test_knee_search_brackets_the_capacity(capacity):
    res = find_knee(_synthetic_server(capacity), Slo(50.0), start_rps=100, max_rps=100_000, factor=1.5, refine=4)
    assert res.knee_rps <= capacity * 1.005 + 1
    assert res.knee_rps >= capacity * 0.95
    assert res.bracket[1] is not None and res.bracket[1] > res.knee_rps
    assert [s.phase for s in res.steps].count("refine") == 4


def test_knee_search_reports_when_it_never_breaks_or_breaks_at_once():
    never = find_knee(_synthetic_server(1e9), Slo(50.0), start_rps=100, max_rps=1000)
    assert never.knee_rps == 1000 and never.bracket[1] is None and "never broke" in never.warnings[0]
    at_once = find_knee(_synthetic_server(10), Slo(50.0), start_rps=100, max_rps=1000)
    assert at_once.knee_rps == 0 and any("first step" in w for w in at_once.warnings)


def test_judge_names_every_broken_bound():
    step = judge(1000, {"latency_ms": {"p99": 80.0, "count": 10}, "error_rate": 0.02, "intended_rps": 1000,
                        "achieved_rps": 800}, Slo(50.0, 0.01))
    assert not step.passed and len(step.reasons) == 3


def test_replicas_needed():
    assert replicas_needed(20_000, 5_000, 0.7) == 6  # 20000 / 3500 = 5.7
    assert replicas_needed(3_500, 5_000, 0.7) == 1
    assert replicas_needed(3_501, 5_000, 0.7) == 2
    with pytest.raises(ValueError):
        replicas_needed(1, 1, 0)


def test_capacity_command(tmp_path, capsys):
    assert main(["capacity", "--knee-rps", "5000", "--target-rps", "20000", "--headroom", "0.7"]) == 0
    assert "replicas needed: 6" in capsys.readouterr().out
    f = tmp_path / "sweep.json"
    f.write_text(json.dumps({"sweep": {"knee_rps": 1000}}))
    assert main(["capacity", "--from", str(f), "--target-rps", "1500"]) == 0
    assert "replicas needed: 3" in capsys.readouterr().out


def _split_http(raw: bytes) -> tuple[dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v2/models/mlp/infer HTTP/1.1"
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    assert int(headers["content-length"]) == len(body)
    return headers, body


def test_http_json_and_binary_requests_are_valid():
    rng = np.random.default_rng(0)
    sample = random_inputs(INFO, 3, {}, rng)
    assert sample["INPUT0"].shape == (3, 64) and sample["INPUT0"].dtype == np.float32
    var = Variation(headers=(("x-tenant", "a"),), routing_keys=3, priorities=((1, 0.5), (2, 0.5)))
    rs = build_request_set(Target("http-json", "127.0.0.1", 1, "mlp"), INFO, [sample], var)
    hdrs, body = _split_http(rs.payloads[0])
    req = orjson.loads(body)
    assert req["inputs"][0]["shape"] == [3, 64] and len(req["inputs"][0]["data"]) == 192
    assert hdrs["x-tenant"] == "a"
    keys = {_split_http(p)[0]["x-routing-key"] for p in rs.payloads}
    prios = {_split_http(p)[0]["x-priority"] for p in rs.payloads}
    assert keys == {"key-0", "key-1", "key-2"} and prios == {"1", "2"}
    rs = build_request_set(Target("http-binary", "127.0.0.1", 1, "mlp"), INFO, [sample], Variation())
    hdrs, body = _split_http(rs.payloads[0])
    n = int(hdrs["inference-header-content-length"])
    head = orjson.loads(body[:n])
    assert head["inputs"][0]["parameters"]["binary_data_size"] == 768 == len(body) - n
    assert np.array_equal(np.frombuffer(body[n:], np.float32).reshape(3, 64), sample["INPUT0"])
    assert head["outputs"] == [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]


def test_grpc_requests_are_serialized_model_infer_messages():
    from tritonclient.grpc import service_pb2

    sample = random_inputs(INFO, 2, {}, np.random.default_rng(0))
    var = Variation(routing_keys=2, priorities=((5, 1.0),), priority_param=True)
    rs = build_request_set(Target("grpc", "127.0.0.1", 1, "mlp"), INFO, [sample], var)
    msg = service_pb2.ModelInferRequest.FromString(rs.payloads[0])
    assert msg.model_name == "mlp" and list(msg.inputs[0].shape) == [2, 64]
    assert np.array_equal(np.frombuffer(msg.raw_input_contents[0], np.float32).reshape(2, 64), sample["INPUT0"])
    assert msg.parameters["priority"].int64_param == 5
    assert dict(rs.grpc_metadata[1]) == {"x-routing-key": "key-1", "x-priority": "5"}


def test_recorded_inputs_from_jsonl_and_npz(tmp_path):
    rows = np.arange(5 * 64, dtype=np.float32).reshape(5, 64)
    np.savez(tmp_path / "in.npz", INPUT0=rows)
    samples = load_samples(tmp_path / "in.npz", INFO, batch=2)
    assert len(samples) == 2 and np.array_equal(samples[1]["INPUT0"], rows[2:4])
    lines = [json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 64],
                                     "data": rows[i].tolist()}]}) for i in range(3)]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    samples = load_samples(tmp_path / "in.jsonl", INFO, batch=1)
    assert len(samples) == 3 and np.array_equal(samples[2]["INPUT0"], rows[2:3])
    body, _ = encode_http(INFO, samples[0], binary=False, params={})
    assert orjson.loads(body)["inputs"][0]["data"] == rows[0].tolist()
