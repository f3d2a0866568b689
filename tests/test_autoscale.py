"""Autoscaling signals: a known open-loop rate against a real server gives the replica count that
capacity and headroom ask for, and the count falls back to 1 once the load stops."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from models import mlp_model, write_model
from test_metrics import scrape

from gateway.observe.autoscale import Window, desired_replicas, quantile
from gateway.observe.stats import LATENCY_BUCKETS, Totals
from gateway.testing import ServerThread

RATE = 250.0  # ceil(250 / (200 x 0.5)) = 3, and any measured rate in (200, 300] still says 3
WINDOW_S = 2.0


# ---- the pure parts ---------------------------------------------------------------------------
def test_quantile_interpolates_inside_the_bucket() -> None:
    bounds = (1.0, 2.0, 4.0)
    assert quantile(bounds, [0, 0, 0, 0], 0.95) == 0.0
    assert quantile(bounds, [10, 0, 0, 0], 0.5) == pytest.approx(0.5)
    assert quantile(bounds, [0, 10, 10, 0], 0.75) == pytest.approx(3.0)  # halfway through (2, 4]
    assert quantile(bounds, [0, 0, 0, 5], 0.95) == 4.0  # +Inf answers the largest finite bound


def test_desired_replicas() -> None:
    assert desired_replicas(0.0, 200, 0.5) == 1
    assert desired_replicas(300.0, 200, 0.5) == 3
    assert desired_replicas(300.0000001, 200, 0.5) == 3
    assert desired_replicas(301.0, 200, 0.5) == 4


def _totals(requests: int, late: int = 0) -> Totals:
    """``requests`` answered, the last ``late`` of them waited in the 4th queue bucket."""
    t = Totals(success_count=requests)
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    counts[0], counts[3] = requests - late, late
    t.hists["queue"] = (counts, 0.0)
    t.hists["rows"] = ([requests // 4], float(requests))
    return t


def test_window_uses_the_newest_point_a_window_old_and_survives_resets() -> None:
    w = Window(0.0, window_s=10.0)
    _, load = w.observe(10.0, {("m", "1"): _totals(1000)}, {})
    assert load["m"] == pytest.approx(100.0)  # against the zero point at start
    _, load = w.observe(15.0, {("m", "1"): _totals(1500)}, {("m", "NOT_FOUND"): 50, ("", "NOT_FOUND"): 7})
    assert load["m"] == pytest.approx((1500 + 50) / 15)  # nothing 10 s old but the start yet
    versions, load = w.observe(20.0, {("m", "1"): _totals(2500, late=1500)}, {("m", "NOT_FOUND"): 50})
    assert load["m"] == pytest.approx(155.0)  # against t=10: 1500 answered, 50 unresolved
    assert versions[("m", "1")].mean_rows == pytest.approx(4.0)
    assert LATENCY_BUCKETS[2] < versions[("m", "1")].queue_wait_p95_s <= LATENCY_BUCKETS[3]
    _, load = w.observe(26.0, {("m", "1"): _totals(120)}, {})  # reloaded: counters restarted
    assert load["m"] == pytest.approx(120 / 11)  # against t=15, the restart counted from 0
    assert "" not in load


# ---- a real server ----------------------------------------------------------------------------
def _request(payload: bytes) -> bytes:
    return (b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)


async def _open_loop(port: int, rate: float, seconds: float, conns: int, answered: list[int]) -> None:
    """``rate`` requests/s on a fixed schedule, spread over ``conns`` keep-alive connections (each
    takes every conns-th slot; a late one sends at once, so the rate holds while the server keeps up)."""
    rng = np.random.default_rng(7)
    interval = conns / rate
    start = time.monotonic() + 0.05

    async def one(k: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in range(int(seconds * rate / conns)):
            x = rng.standard_normal((1, 64)).astype(np.float32)
            body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 64],
                                           "data": x.ravel().tolist()}]}).encode()
            delay = start + (i + k / conns) * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(_request(body))
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            assert head.startswith(b"HTTP/1.1 200"), head
            answered[0] += 1
        writer.close()

    await asyncio.gather(*(one(k) for k in range(conns)))


def samples(fams: dict[str, Any], family: str, **labels: str) -> list[float]:
    return [s.value for s in fams[family].samples if s.labels == labels]


@pytest.fixture
def scaled_repo(tmp_path: Path) -> Path:
    write_model(tmp_path, "mlp", 1, mlp_model(seed=1), "capacity_rps = 200\ncapacity_headroom = 0.5\n")
    write_model(tmp_path, "plain", 1, mlp_model(seed=2))  # no capacity: no desired replicas
    return tmp_path


def test_desired_replicas_follow_a_known_rate(scaled_repo: Path) -> None:
    with ServerThread(repository=scaled_repo) as srv:
        assert srv.app is not None
        srv.app.metrics.window.window_s = WINDOW_S  # the default is 30 s: too long for a test
        answered = [0]
        seconds = 5.0
        client = threading.Thread(target=lambda: asyncio.run(_open_loop(srv.http_port, RATE, seconds, 8, answered)))
        t0 = time.monotonic()
        client.start()
        time.sleep(1.5)
        scrape(srv)  # a point inside the load: the baseline of the next scrape
        time.sleep(2.5)
        during = scrape(srv)
        client.join(timeout=30)
        stopped = time.monotonic()
        assert not client.is_alive()
        # the client held the rate (else the expected count below would not be the one asked for)
        assert answered[0] == int(seconds * RATE / 8) * 8
        assert stopped - t0 < seconds + 1.0

        assert samples(during, "gateway_desired_replicas", model="mlp") == [math.ceil(RATE / (200 * 0.5))]
        assert samples(during, "gateway_capacity_rps", model="mlp") == [200.0]
        [demand] = samples(during, "gateway_replica_demand", model="mlp")
        assert demand == pytest.approx(RATE / (200 * 0.5), rel=0.15)  # unrounded: 2.5
        assert samples(during, "gateway_replica_demand", model="plain") == []
        assert samples(during, "gateway_desired_replicas", model="plain") == []
        assert samples(during, "gateway_capacity_rps", model="plain") == []
        [fill] = samples(during, "gateway_batch_fill_ratio", model="mlp", version="1")
        assert 0 < fill <= 1
        [wait] = samples(during, "gateway_queue_wait_p95_seconds", model="mlp", version="1")
        assert 0 <= wait < 1.0
        assert samples(during, "gateway_queue_wait_p95_seconds", model="plain", version="1") == [0.0]

        # once the load stops, the count falls to 1 as soon as the baseline point is past the load:
        # at most a window plus one scrape interval later
        desired = None
        while time.monotonic() - stopped < 2 * WINDOW_S + 2.0:
            time.sleep(0.5)
            [desired] = samples(scrape(srv), "gateway_desired_replicas", model="mlp")
            if desired == 1:
                break
        assert desired == 1
        assert time.monotonic() - stopped <= WINDOW_S + 1.5


def test_load_counts_the_other_workers(scaled_repo: Path) -> None:
    """With --workers N the rates come from the merged totals: a peer's snapshot (as its timer
    writes it) that grows between two scrapes is load, though this process answered nothing."""
    with ServerThread(repository=scaled_repo) as srv:
        assert srv.app is not None
        srv.app.metrics.window.window_s = WINDOW_S
        peer = {"answered": 0}

        def peers() -> list[dict[str, Any]]:
            t = Totals(success_count=peer["answered"])
            return [{"worker": 1, "written_at": time.time(), "versions": [["mlp", "1", t.to_doc()]],
                     "unresolved": []}]

        srv.dataplane.peers = peers
        scrape(srv)
        t1 = time.monotonic()
        time.sleep(WINDOW_S + 0.1)
        peer["answered"] = 1000
        fams = scrape(srv)
        dt = time.monotonic() - t1
        assert samples(fams, "gateway_workers_reporting") == [2]
        [demand] = samples(fams, "gateway_replica_demand", model="mlp")
        assert 1000 / (dt + 0.05) / 100 <= demand <= 1000 / (WINDOW_S + 0.1 - 0.05) / 100
        assert samples(fams, "gateway_desired_replicas", model="mlp") == [math.ceil(demand)]
