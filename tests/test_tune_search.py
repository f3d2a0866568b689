"""gateway tune: the configuration search (fake measurements, fake clock) and one real measurement
(a real `gateway serve` subprocess under the load tester)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import onnx
import pytest

from gateway.demo import mlp_model
from gateway.tune import measure as measure_mod
from gateway.tune.measure import Point, config_toml, measure_point
from gateway.tune.search import DEFAULT_BASE, GRID, best_point, cost, expected_points, search, valid


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# Per-knob factors: thread beats inline, 2 instances pay (only with threads), 2 intra-op threads do
# not, batches of 64 beat 8, a 500 us delay helps a little. The best valid config is therefore known.
FACTORS: dict[str, dict[Any, float]] = {
    "execution": {"inline": 1.0, "thread": 1.4},
    "intra_op_threads": {1: 1.0, 2: 0.9},
    "instances": {1: 1.0, 2: 1.5},
    "max_batch_size": {8: 0.7, 64: 1.0},
    "max_queue_delay_us": {0: 1.0, 500: 1.1},
}
BEST = {"execution": "thread", "intra_op_threads": 1, "instances": 2, "max_batch_size": 64, "max_queue_delay_us": 500}


def throughput(cfg: dict[str, Any]) -> float:
    thr = 1000.0
    for knob, table in FACTORS.items():
        thr *= table[cfg[knob]]
    return thr


def fake(clock: FakeClock, fn: Any = throughput, log: list[tuple[dict[str, Any], float]] | None = None) -> Any:
    """A measurement that takes exactly the time it is given and returns fn(config)."""

    def measure(cfg: dict[str, Any], budget: float) -> Point:
        if log is not None:
            log.append((dict(cfg), budget))
        clock.t += budget
        thr = fn(cfg)
        return Point(cfg, thr, 10.0, None if thr > 0 else "failed", budget)

    return measure


def configs(points: list[Point]) -> list[tuple[tuple[str, Any], ...]]:
    return [tuple(sorted(p.config.items())) for p in points]


def test_finds_the_known_best_and_never_measures_a_config_twice() -> None:
    clock = FakeClock()
    seen: list[Point] = []
    points = search(fake(clock), budget_s=1000, clock=clock, on_point=seen.append)
    brute = max((dict(zip(GRID, vals, strict=True)) for vals in itertools.product(*GRID.values())),
                key=lambda c: throughput(c) if valid(c) else 0.0)
    assert brute == BEST
    best = best_point(points)
    assert best is not None and best.config == BEST
    assert len(configs(points)) == len(set(configs(points)))
    assert all(valid(p.config) for p in points)
    assert points[0].config == DEFAULT_BASE
    assert seen == points
    assert len(points) <= expected_points(GRID)


def test_respects_the_budget_exactly() -> None:
    for budget in (7.0, 30.0, 65.0, 200.0):
        clock = FakeClock()
        given: list[tuple[dict[str, Any], float]] = []
        start = clock.t
        points = search(fake(clock, log=given), budget_s=budget, clock=clock, min_point_s=6.0)
        assert clock.t - start <= budget + 1e-9
        assert sum(b for _, b in given) <= budget + 1e-9
        assert all(b >= 6.0 for _, b in given)  # never a point too short to find a knee
        assert budget - (clock.t - start) < 6.0 or len(points) >= 6  # stopped only when out of time or done
        assert len(points) == len(given)
    clock = FakeClock()
    assert search(fake(clock), budget_s=5.0, clock=clock, min_point_s=6.0) == []


def test_large_budget_is_shared_over_the_expected_points() -> None:
    clock = FakeClock()
    given: list[tuple[dict[str, Any], float]] = []
    search(fake(clock, log=given), budget_s=1100, clock=clock)
    assert {b for _, b in given} == {1100 / expected_points(GRID)}


def test_ties_keep_the_cheaper_config() -> None:
    def flat_threads(cfg: dict[str, Any]) -> float:  # threads and instances buy nothing
        return 1000.0 * (1.2 if cfg["max_batch_size"] == 64 else 1.0)

    clock = FakeClock()
    points = search(fake(clock, flat_threads), budget_s=1000, clock=clock, tie_tolerance=0.0,
                    base={"intra_op_threads": 2, "execution": "thread", "instances": 2})
    best = best_point(points, tie_tolerance=0.0)
    assert best is not None
    assert (best.config["intra_op_threads"], best.config["instances"]) == (1, 1)
    # From the cheap base, a dearer tie is never taken.
    clock = FakeClock()
    points = search(fake(clock, flat_threads), budget_s=1000, clock=clock, tie_tolerance=0.0)
    assert cost(best_point(points, tie_tolerance=0.0).config) == (1, 1, 1)  # type: ignore[union-attr]


def test_a_dearer_config_must_win_by_more_than_the_tolerance() -> None:
    def gain(extra: float) -> Any:
        return lambda cfg: 1000.0 * (1 + extra if cfg["intra_op_threads"] == 2 else 1.0)

    for extra, threads in ((0.01, 1), (0.05, 2)):
        clock = FakeClock()
        points = search(fake(clock, gain(extra)), budget_s=1000, clock=clock, tie_tolerance=0.02)
        best = best_point(points)
        assert best is not None and best.config["intra_op_threads"] == threads


def test_failed_points_are_returned_and_never_chosen() -> None:
    def thread_fails(cfg: dict[str, Any]) -> float:
        return 0.0 if cfg["execution"] == "thread" else throughput(cfg)

    clock = FakeClock()
    points = search(fake(clock, thread_fails), budget_s=1000, clock=clock)
    failed = [p for p in points if p.error]
    assert failed and all(p.config["execution"] == "thread" for p in failed)
    best = best_point(points)
    assert best is not None and best.error is None and best.config["execution"] == "inline"


def test_config_toml_round_trips() -> None:
    import tomllib

    cfg = {**DEFAULT_BASE, "coalesce": False, "response_cache_ttl_s": 1.5}
    assert tomllib.loads(config_toml(cfg)) == cfg
    with pytest.raises(ValueError, match="not a TOML scalar"):
        config_toml({"preferred_batch_sizes": [4, 8]})


# ---- real measurements: a `gateway serve` subprocess per point --------------------------------------


@pytest.fixture
def mlp_file(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp_model(0), str(path))
    return path


@pytest.fixture
def watched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[subprocess.Popen[bytes]], Path]:
    """Records the server processes measure_point starts and keeps its temporary files under one
    directory, so a test can check that nothing is left behind."""
    started: list[subprocess.Popen[bytes]] = []
    real = subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = real(*args, **kwargs)
        started.append(proc)
        return proc

    monkeypatch.setattr(measure_mod.subprocess, "Popen", popen)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return started, tmp


def gone(proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is None:
        return False
    try:
        os.kill(proc.pid, 0)
    except ProcessLookupError:
        return True
    return False


# The generator runs in the calling process (procs=1, as `gateway tune` runs it: a fresh process).
# Late in the suite, pytest's process carries threads other tests left behind, which take the GIL
# from the generator's loop and stall its sends; so this measurement runs in a fresh interpreter.
_MEASURE_IN_CHILD = """
import json, subprocess, sys, tempfile
from pathlib import Path
from gateway.tune import measure
from gateway.tune.search import DEFAULT_BASE
started = []
real = subprocess.Popen
def popen(*a, **k):
    p = real(*a, **k)
    started.append(p)
    return p
measure.subprocess.Popen = popen
tempfile.tempdir = sys.argv[2]
pt = measure.measure_point(Path(sys.argv[1]), "mlp", dict(DEFAULT_BASE), slo_p99_ms=50, budget_s=12.0, step_s=1.0)
print(json.dumps({"point": pt.__dict__, "pids": [p.pid for p in started],
                  "exited": [p.poll() is not None for p in started]}))
"""


def test_measure_point_finds_a_knee_on_the_demo_mlp(mlp_file: Path, tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = subprocess.run([sys.executable, "-c", _MEASURE_IN_CHILD, str(mlp_file), str(tmp)], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    point = Point(**res["point"])
    assert point.error is None, point.error
    assert point.throughput_rps > 0 and point.offered_rps >= 500
    assert point.throughput_rps >= 0.95 * point.offered_rps  # the SLO's delivery bound held there
    assert 0 < point.p99_ms <= 50
    assert point.seconds < 12 + 5  # the last step's drain and the server's stop are bounded
    assert point.config == DEFAULT_BASE
    assert len(res["pids"]) == 1 and res["exited"] == [True]
    with pytest.raises(ProcessLookupError):
        os.kill(res["pids"][0], 0)
    assert list(tmp.iterdir()) == []


def test_a_config_the_server_refuses_gives_an_error_with_its_log_line(mlp_file: Path, watched: Any) -> None:
    started, tmp = watched
    point = measure_point(mlp_file, "mlp", {**DEFAULT_BASE, "execution": "sideways"}, slo_p99_ms=50,
                          budget_s=20, step_s=1.0)
    assert point.throughput_rps == 0 and point.error is not None
    assert "did not load" in point.error
    assert "config field 'execution' must be one of" in point.error  # the server's own log line
    assert point.seconds < 15
    assert len(started) == 1 and gone(started[0])
    assert list(tmp.iterdir()) == []


def test_a_missing_model_file_gives_an_error(tmp_path: Path, watched: Any) -> None:
    started, tmp = watched
    point = measure_point(tmp_path / "nope.onnx", "m", dict(DEFAULT_BASE), slo_p99_ms=50, budget_s=5)
    assert point.error is not None and "not found" in point.error
    assert started == [] and list(tmp.iterdir()) == []
