"""The coalesce stage end to end: identical in-flight requests share one computation, the response
cache, and the single-flight rules (cancelled leader, all cancelled, errors, deadlines).

Real onnxruntime sessions behind a real server; HTTP over 127.0.0.1 where the client's view is the
point, the data plane on the server's loop (``ServerThread.call``) where a test must cancel one
waiter at an exact moment.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from models import bad_rows_model, identity_model, write_model

from gateway.demo import mlp_model
from gateway.errors import GatewayError
from gateway.testing import ServerThread
from gateway.types import InferRequest

SLOW = "max_queue_delay_us = 300000\n"  # requests wait 0.3 s for a fuller batch: they are in flight together


def build_repo(root: Path) -> Path:
    write_model(root, "slow", 1, mlp_model(seed=1))
    write_model(root, "slow", 2, mlp_model(seed=2), 'version_policy = "all"\n' + SLOW)
    write_model(root, "solo", 1, mlp_model(seed=1), SLOW + "coalesce = false\n")
    write_model(root, "ranked", 1, mlp_model(seed=1), SLOW + "priority_levels = 2\nresponse_cache_bytes = 65536\n")
    write_model(root, "cached", 1, identity_model("FP32"), "response_cache_bytes = 4096\nresponse_cache_ttl_s = 0.5\n")
    write_model(root, "bad", 1, bad_rows_model(), SLOW + "response_cache_bytes = 65536\n")
    return root


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    with ServerThread(repository=build_repo(tmp_path_factory.mktemp("repo"))) as srv:
        yield srv


def post(port: int, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def stats(port: int, model: str, version: str = "1") -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", f"/v2/models/{model}/versions/{version}/stats")
    doc = json.loads(conn.getresponse().read())
    conn.close()
    return doc["model_stats"][0]


def body(x: list[float], rid: str = "", name: str = "INPUT0", outputs: list[str] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"inputs": [{"name": name, "datatype": "FP32", "shape": [1, len(x)], "data": x}]}
    if rid:
        doc["id"] = rid
    if outputs is not None:
        doc["outputs"] = [{"name": o} for o in outputs]
    return doc


X = [0.01 * i for i in range(64)]


def burst(port: int, path: str, docs: list[dict[str, Any]]) -> list[tuple[int, Any]]:
    with ThreadPoolExecutor(len(docs)) as pool:
        return list(pool.map(lambda d: post(port, path, d), docs))


def test_identical_concurrent_requests_compute_once_and_each_gets_its_own_id(gw: ServerThread) -> None:
    before = stats(gw.http_port, "slow", "2")
    answers = burst(gw.http_port, "/v2/models/slow/versions/2/infer", [body(X, f"r{i}") for i in range(100)])
    after = stats(gw.http_port, "slow", "2")
    assert [s for s, _ in answers] == [200] * 100
    assert sorted(a["id"] for _, a in answers) == sorted(f"r{i}" for i in range(100))
    first = answers[0][1]["outputs"][0]["data"]
    assert all(a["outputs"][0]["data"] == first for _, a in answers)
    executed = after["inference_count"] - before["inference_count"]
    assert executed <= 3, executed  # one computation (threads may straddle a batch boundary or two)
    success = after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    assert success == 100  # every answered request counts, as in Triton
    conn = http.client.HTTPConnection("127.0.0.1", gw.http_port)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    assert 'gateway_coalesced_requests_total{model="slow",version="2"}' in text


def test_other_versions_outputs_or_an_opted_out_model_never_coalesce(gw: ServerThread) -> None:
    b1, b2 = stats(gw.http_port, "slow", "1"), stats(gw.http_port, "slow", "2")
    docs = [body(X, "a")]
    with ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(post, gw.http_port, "/v2/models/slow/versions/1/infer", docs[0]),
                pool.submit(post, gw.http_port, "/v2/models/slow/versions/2/infer", docs[0]),
                pool.submit(post, gw.http_port, "/v2/models/slow/versions/2/infer", body(X, "o", outputs=["OUTPUT0"]))]
        results = [f.result() for f in futs]
    assert all(s == 200 for s, _ in results)
    a1, a2 = stats(gw.http_port, "slow", "1"), stats(gw.http_port, "slow", "2")
    assert a1["inference_count"] - b1["inference_count"] == 1
    assert a2["inference_count"] - b2["inference_count"] == 2  # all outputs vs OUTPUT0 only: two computations
    before = stats(gw.http_port, "solo")
    answers = burst(gw.http_port, "/v2/models/solo/infer", [body(X, f"s{i}") for i in range(20)])
    assert all(s == 200 for s, _ in answers)
    assert stats(gw.http_port, "solo")["inference_count"] - before["inference_count"] == 20


def test_requests_at_different_priorities_never_share_a_flight_but_share_the_cache(gw: ServerThread) -> None:
    """A flight runs at its leader's priority, so a high-priority duplicate must not wait in a
    low-priority flight; an answer does not depend on the priority it was computed at."""
    before = stats(gw.http_port, "ranked")
    docs = []
    for i, level in enumerate([2, 2, 1, 1, None]):  # None: the default level (2), a flight of its own
        d = body(X, f"p{i}")
        if level is not None:
            d["parameters"] = {"priority": level}
        docs.append(d)
    answers = burst(gw.http_port, "/v2/models/ranked/infer", docs)
    assert [s for s, _ in answers] == [200] * 5
    mid = stats(gw.http_port, "ranked")
    assert mid["inference_count"] - before["inference_count"] == 3  # levels 2, 1 and unset: one each
    again = post(gw.http_port, "/v2/models/ranked/infer", {**body(X, "late"), "parameters": {"priority": 1}})
    after = stats(gw.http_port, "ranked")
    assert again[0] == 200 and again[1]["outputs"] == answers[0][1]["outputs"]
    assert after["inference_count"] == mid["inference_count"]  # from the cache
    assert after["inference_stats"]["cache_hit"]["count"] == mid["inference_stats"]["cache_hit"]["count"] + 1


def request(model: str, x: list[float], rid: str, version: str = "", timeout_us: int = 0) -> InferRequest:
    return InferRequest(model, version, {"INPUT0": np.asarray([x], np.float32)}, None, rid, None, timeout_us)


def test_a_cancelled_leader_leaves_the_computation_to_its_followers(gw: ServerThread) -> None:
    async def main() -> tuple[list[Any], int]:
        dp = gw.app.dataplane
        mv = gw.app.registry.get("slow", "2")
        before = mv.stats.execution_count
        got: list[Any] = []
        leader = dp.submit(request("slow", X, "lead", "2"), lambda r, e: got.append(("lead", r, e)))
        for i in range(3):
            dp.submit(request("slow", X, f"f{i}", "2"), lambda r, e, i=i: got.append((f"f{i}", r, e)))
        leader.cancel()
        for _ in range(200):
            if len(got) == 3:
                break
            await asyncio.sleep(0.01)
        return got, mv.stats.execution_count - before

    got, executed = gw.call(main())
    assert sorted(g[0] for g in got) == ["f0", "f1", "f2"]  # the leader is never called back
    assert all(e is None and r.id == name for name, r, e in got)
    assert executed == 1


def test_when_every_waiter_leaves_nothing_is_computed(gw: ServerThread) -> None:
    async def main() -> int:
        dp = gw.app.dataplane
        mv = gw.app.registry.get("slow", "2")
        before = mv.stats.execution_count
        tickets = [dp.submit(request("slow", [1.0] * 64, f"c{i}", "2"), lambda r, e: None) for i in range(5)]
        for t in tickets:
            t.cancel()
        await asyncio.sleep(0.5)  # past the batch delay
        return mv.stats.execution_count - before

    assert gw.call(main()) == 0


def test_errors_reach_every_waiter_and_are_not_cached(gw: ServerThread) -> None:
    x = [1.0, 2.0, 3.0, 4.0]
    for _ in range(2):  # the second round computes (and fails) again: the error was not cached
        before = stats(gw.http_port, "bad")
        answers = burst(gw.http_port, "/v2/models/bad/infer", [body(x, f"e{i}") for i in range(10)])
        assert [s for s, _ in answers] == [500] * 10 and all("rows" in a["error"] for _, a in answers)
        after = stats(gw.http_port, "bad")
        assert after["inference_stats"]["fail"]["count"] - before["inference_stats"]["fail"]["count"] == 10
        assert after["inference_stats"]["cache_hit"]["count"] == 0


def test_each_waiter_keeps_its_deadline_and_a_timed_out_leader_does_not_fail_the_rest(gw: ServerThread) -> None:
    async def main() -> list[Any]:
        dp = gw.app.dataplane
        got: list[Any] = []
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        dp.submit(request("slow", [2.0] * 64, "short", "2", timeout_us=50_000),
                  lambda r, e: got.append(("short", loop.time() - t0, r, e)))
        dp.submit(request("slow", [2.0] * 64, "long", "2", timeout_us=5_000_000),
                  lambda r, e: got.append(("long", loop.time() - t0, r, e)))
        for _ in range(300):
            if len(got) == 2:
                break
            await asyncio.sleep(0.01)
        return got

    got = {g[0]: g for g in gw.call(main())}
    assert isinstance(got["short"][3], GatewayError) and got["short"][3].code.name == "DEADLINE_EXCEEDED"
    assert got["long"][3] is None and got["long"][2].id == "long"  # computed again for the one still waiting


# ---- the response cache ----------------------------------------------------------------------------

def test_a_cache_hit_returns_identical_bytes_and_skips_the_queue(gw: ServerThread) -> None:
    x = [0.25, 0.5, 0.75, 1.0]
    first = post(gw.http_port, "/v2/models/cached/infer", body(x, "one"))
    s1 = stats(gw.http_port, "cached")
    second = post(gw.http_port, "/v2/models/cached/infer", body(x, "two"))
    s2 = stats(gw.http_port, "cached")
    assert first[0] == second[0] == 200 and second[1]["id"] == "two"
    assert first[1]["outputs"] == second[1]["outputs"]
    assert s2["inference_count"] == s1["inference_count"]  # not computed
    assert s2["inference_stats"]["cache_hit"]["count"] == s1["inference_stats"]["cache_hit"]["count"] + 1
    assert s2["inference_stats"]["success"]["count"] == s1["inference_stats"]["success"]["count"] + 1
    time.sleep(0.6)  # past response_cache_ttl_s
    post(gw.http_port, "/v2/models/cached/infer", body(x, "three"))
    s3 = stats(gw.http_port, "cached")
    assert s3["inference_count"] == s2["inference_count"] + 1  # expired: computed again
    assert s3["inference_stats"]["cache_miss"]["count"] == s2["inference_stats"]["cache_miss"]["count"] + 1


def test_the_cache_stays_inside_its_byte_bound_under_churn(gw: ServerThread) -> None:
    rng = np.random.default_rng(3)
    for i in range(300):
        assert post(gw.http_port, "/v2/models/cached/infer", body(rng.standard_normal(4).tolist(), f"c{i}"))[0] == 200
    mv = gw.app.registry.get("cached")
    assert 0 < mv.stats.cache_bytes <= 4096
    assert mv.stats.cache_evictions > 0
    assert sum(n for _, _, n in mv.target.cache.values()) == mv.stats.cache_bytes  # type: ignore[attr-defined]


def test_a_reloaded_version_never_serves_a_stale_answer(gw: ServerThread, tmp_path: Path) -> None:
    x = [0.5, 0.5, 0.5, 0.5]
    assert post(gw.http_port, "/v2/models/cached/infer", body(x, "warm"))[0] == 200
    before = gw.app.registry.get("cached")
    path = gw.app.repository / "cached" / "1" / "model.onnx"
    os.utime(path, ns=(time.time_ns(), time.time_ns()))  # new weights, as far as the repository can tell
    conn = http.client.HTTPConnection("127.0.0.1", gw.http_port)
    conn.request("POST", "/v2/repository/models/cached/load", b"{}")
    assert conn.getresponse().status == 200
    conn.close()
    after = gw.app.registry.get("cached")
    assert after is not before and after.stats.cache_bytes == 0
    post(gw.http_port, "/v2/models/cached/infer", body(x, "fresh"))
    assert stats(gw.http_port, "cached")["inference_stats"]["cache_miss"]["count"] == 1


def test_flights_leave_no_reference_cycles_behind(gw: ServerThread) -> None:
    """A flight and its queued work point at each other while in flight; once answered nothing
    cyclic may remain (a cycle per request would hand every request to the collector: measured as
    a 4 µs-per-request slowdown and p99 spikes before the links were cut)."""
    import gc

    async def main() -> int:
        dp = gw.app.dataplane
        gc.collect()
        gc.disable()
        try:
            for k in range(8):
                reqs = [request("slow", [float(k * 100 + i % 3)] * 64, f"g{i}") for i in range(16)]
                await asyncio.gather(*(dp.infer(r) for r in reqs))  # duplicates among them: shared flights
            return gc.collect()
        finally:
            gc.enable()

    assert gw.call(main()) == 0


# ---- the flight key ------------------------------------------------------------------------------
_LAYOUTS = [("<f4", (1, 64)), ("<f4", (2, 32)), ("<f4", (64,)), ("<f4", (1, 1, 64)), (">f4", (1, 64)),
            ("<i4", (1, 64)), ("<u4", (1, 64)), ("<f4", (64, 1)), ("<f4", (1 << 27, 0)), ("<f4", (0, 1 << 27))]


def test_flight_keys_are_equal_exactly_when_name_dtype_shape_and_bytes_are() -> None:
    """The key's packed layout (dtype, byte order, shape as one int) must keep apart what the
    tensors keep apart: the same 256 bytes as another shape, dtype or byte order is another request."""
    from gateway._native.lane import flight_key
    from gateway.pipeline import coalesce

    raw = np.random.default_rng(5).integers(0, 255, 256, dtype=np.uint8).tobytes()

    def key(name: str, dt: str, shape: tuple[int, ...], data: bytes = raw) -> Any:
        n = int(np.prod(shape))
        a = np.frombuffer(data[:n * 4], dtype=dt).reshape(shape) if n * 4 <= len(data) else np.zeros(shape, dt)
        return flight_key(InferRequest("m", "1", {name: a}), coalesce.flight_key)

    keys = [key("x", dt, shape) for dt, shape in _LAYOUTS]
    assert len(set(keys)) == len(keys)  # every layout apart
    assert key("x", "<f4", (1, 64)) == key("x", "<f4", (1, 64), bytes(raw))  # same content, another buffer
    assert key("y", "<f4", (1, 64)) != keys[0]
    other = bytearray(raw)
    other[100] ^= 1
    assert key("x", "<f4", (1, 64), bytes(other)) != keys[0]
    # a copy equal in value but another object keys alike; a strided view takes the general key
    a = np.frombuffer(raw, dtype="<f4").reshape(1, 64)
    assert flight_key(InferRequest("m", "1", {"x": a.copy()}), coalesce.flight_key) == keys[0]
    view = np.frombuffer(raw, dtype="<f4").reshape(2, 32)[:, ::2]
    assert flight_key(InferRequest("m", "1", {"x": view}), coalesce.flight_key) == coalesce.flight_key(
        InferRequest("m", "1", {"x": view}))
