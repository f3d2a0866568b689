"""gateway tune: the knee's search over a synthetic server (where it starts, when it starts again
lower, when a knee is only a lower bound or the generator's), the interleaved confirmation rounds,
ties and the recommendation, right-sizing across devices, and compute per row on real sessions."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import onnx
import pytest

from gateway.demo import mlp_model
from gateway.loadtest.sweep import replicas_needed
from gateway.tune import measure as measure_mod
from gateway.tune.compute import compute_per_row
from gateway.tune.main import devices_of
from gateway.tune.measure import HINT_FACTOR, HINT_START, Point
from gateway.tune.report import Row, recommend
from gateway.tune.rounds import Candidate, overlaps, plan, run_rounds
from gateway.tune.sample import load_sample
from gateway.tune.sizing import right_size

# ---- the knee over a synthetic server -------------------------------------------------------------


class Alive:
    returncode = None

    def poll(self) -> None:
        return None


def synthetic(monkeypatch: pytest.MonkeyPatch, *, knee: float, probe: float, late_above: float = 0.0) -> list[float]:
    """A server that meets the SLO up to ``knee`` req/s; past it the p99 is 100 ms, and the sends
    are late (``late_above`` of them), as when the generator falls behind. Returns the offered rates."""
    offered: list[float] = []

    def run_load(spec: Any, reqs: Any) -> dict[str, Any]:
        if spec.mode == "closed":
            return {"achieved_rps": probe, "latency_ms": {"p99": 2.0, "count": 100}, "error_rate": 0.0}
        rate = spec.profile.segments[0].start_rps
        offered.append(rate)
        ok = rate <= knee
        return {"achieved_rps": rate, "intended_rps": rate, "error_rate": 0.0,
                "latency_ms": {"p99": 5.0 if ok else 100.0, "count": 100},
                "late_fraction": 0.0 if ok else late_above}

    monkeypatch.setattr(measure_mod, "run_load", run_load)
    monkeypatch.setattr(measure_mod, "fetch_model_info", lambda target: None)
    monkeypatch.setattr(measure_mod, "random_inputs", lambda *a: None)
    monkeypatch.setattr(measure_mod, "build_request_set", lambda *a, **k: None)
    return offered


def knee(budget_s: float = 60.0, **kw: Any) -> Point:
    t0 = time.monotonic()

    def point(thr: float = 0.0, p99: float = 0.0, error: str | None = None, offered: float = 0.0) -> Point:
        return Point({}, thr, p99, error, time.monotonic() - t0, offered)

    opts: dict[str, Any] = {"slo_p99_ms": 20.0, "step_s": 0.01, "start_rps": 500.0, "max_rps": 1e6, "cooldown_s": 0.0,
                            "batch": 1, "retries": 0, "hint_rps": None, "hint_is_lower_bound": False, "procs": 1,
                            "on_step": None}
    opts.update(kw)
    return measure_mod._knee(Alive(), Path("/nonexistent"), None, point, t0 + budget_s, **opts)  # type: ignore[arg-type]


def test_a_knee_is_bracketed_from_half_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    offered = synthetic(monkeypatch, knee=10_000, probe=16_000)
    p = knee()
    assert offered[0] == 8_000  # half the closed-loop probe
    assert p.error is None and 8_000 <= p.throughput_rps <= 10_000
    assert not p.bounded and not p.generator_bound and not p.lower_bound  # a rate above it failed
    assert any(r > 10_000 for r in offered)


def test_a_failing_first_step_starts_again_lower(monkeypatch: pytest.MonkeyPatch) -> None:
    offered = synthetic(monkeypatch, knee=3_000, probe=16_000)
    p = knee()
    assert offered[:2] == [8_000, 4_000] and offered[2] == 2_000
    assert p.error is None and 2_000 <= p.throughput_rps <= 3_000 and not p.bounded


def test_no_rate_at_all_is_an_error_after_two_lower_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    offered = synthetic(monkeypatch, knee=100, probe=16_000)
    p = knee()
    assert offered == [8_000, 4_000, 2_000]
    assert p.throughput_rps == 0 and p.error is not None and "no rate met the SLO" in p.error


def test_failures_on_late_sends_mark_the_knee_as_the_generators(monkeypatch: pytest.MonkeyPatch) -> None:
    synthetic(monkeypatch, knee=10_000, probe=16_000, late_above=0.2)
    p = knee()
    assert p.error is None and p.generator_bound and p.lower_bound and not p.bounded


def test_a_ramp_the_budget_ends_is_a_lower_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    synthetic(monkeypatch, knee=1e9, probe=16_000)
    p = knee(budget_s=60.0, max_rps=20_000)  # never fails up to max_rps
    assert p.error is None and p.bounded and p.lower_bound and p.throughput_rps == 20_000


def test_a_hint_starts_below_it_and_climbs_in_small_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    offered = synthetic(monkeypatch, knee=10_000, probe=50_000)
    p = knee(hint_rps=10_500)
    assert offered[0] == pytest.approx(HINT_START * 10_500)
    assert offered[1] == pytest.approx(offered[0] * HINT_FACTOR)
    assert p.error is None and not p.bounded and 8_400 <= p.throughput_rps <= 10_000
    offered.clear()
    knee(hint_rps=10_500, hint_is_lower_bound=True)  # from a lower bound: the usual factor
    assert offered[1] == pytest.approx(offered[0] * 1.25)


# ---- interleaved rounds -------------------------------------------------------------------------


def pt(thr: float, *, bounded: bool = False, generator: bool = False, error: str | None = None) -> Point:
    p = Point({}, thr, 5.0, error, 1.0)
    p.bounded, p.generator_bound = bounded, generator
    return p


def test_plan_fits_rounds_in_a_share_of_what_is_left() -> None:
    assert plan(3, left_s=200, round_point_s=10, want=3, share=0.5) == 3
    assert plan(3, left_s=100, round_point_s=10, want=3, share=0.5) == 1
    assert plan(3, left_s=50, round_point_s=10, want=3, share=0.5) == 0
    assert plan(0, left_s=500, round_point_s=10, want=3) == 0
    assert plan(2, left_s=500, round_point_s=10, want=0) == 0


def test_rounds_interleave_reversing_order_and_stop_before_the_deadline() -> None:
    clock = [0.0]
    order: list[str] = []
    cands = [Candidate(n, {"k": n}, 100.0) for n in "ABC"]

    def measure(c: Candidate, budget: float) -> Point:
        order.append(c.label)
        clock[0] += budget
        return pt(100.0)

    done = run_rounds(cands, measure, rounds=5, point_s=10.0, deadline=75.0, clock=lambda: clock[0])
    assert done == 2  # a third round (30 s) would end past 75 s: not started
    assert order == list("ABCCBA")
    assert all(len(c.points) == 2 for c in cands)  # every candidate the same number of rounds


def test_median_spread_and_lower_bounds() -> None:
    c = Candidate("x", {}, 0.0, points=[pt(100), pt(300), pt(200), pt(0, error="no rate met the SLO")])
    assert c.median() == (200, 5.0) and c.spread() == (100, 300)
    c.points.append(pt(150, bounded=True))
    assert c.spread() == (100, math.inf)  # a round that is a lower bound leaves the top open
    assert not c.all_bounded() and not c.generator_bound()
    g = Candidate("g", {}, 0.0, points=[pt(100, generator=True), pt(120, generator=True), pt(90)])
    assert g.generator_bound()
    assert Candidate("none", {}, 0.0, points=[pt(0, error="x")]).median() is None
    assert overlaps((100, 200), (150, 300)) and overlaps((100, math.inf), (1000, 1100))
    assert not overlaps((100, 200), (201, 300)) and not overlaps(None, (1, 2))


def row(name: str, thr: float, spread: tuple[float, float] | None, diff: float, *, device: str = "cpu",
        cores: int = 1, size: int = 100, excluded: str | None = None) -> Row:
    r = Row(name, "int8" if "int8" in name else "fp32", size, device=device, throughput_rps=thr,
            accuracy={"max_abs_diff": diff, "max_rel_diff": diff}, excluded=excluded, spread=spread, cores=cores)
    r.cost_per_million = (2.5 if device == "cuda" else 0.05 * cores) / (thr * 3600) * 1e6 if thr else None
    return r


def test_a_faster_variant_wins_only_when_its_rounds_do_not_overlap() -> None:
    fp32 = row("fp32", 10_000, (9_000, 11_000), 0.0)
    apart = row("int8-dynamic", 20_000, (18_000, 22_000), 0.04, size=30)
    assert recommend([fp32, apart]) is apart
    close = row("int8-dynamic", 10_500, (9_500, 11_500), 0.04, size=30)
    assert recommend([fp32, close]) is fp32  # not shown faster: the more accurate is kept
    bound = row("int8-dynamic", 12_000, (12_000, math.inf), 0.04)  # a lower bound above fp32's top
    assert recommend([fp32, bound]) is bound
    unsure = row("fp32", 10_000, (9_000, math.inf), 0.0)  # fp32's own knee may lie higher
    assert recommend([unsure, bound]) is unsure
    assert recommend([fp32, row("x", 50_000, None, 0.1, excluded="too far")]) is fp32
    two_cores = row("fp32", 10_000, (9_000, 11_000), 0.0, cores=2)
    assert recommend([two_cores, close]) is close  # a tie goes to fewer cores before accuracy


# ---- right-sizing across devices ----------------------------------------------------------------


def test_replicas_for_a_load() -> None:
    assert replicas_needed(1_000, 1_000, 0.7) == 2 and replicas_needed(700, 1_000, 0.7) == 1
    assert replicas_needed(10, 1_000, 1.0) == 1
    with pytest.raises(ValueError):
        replicas_needed(10, 0, 0.7)


def test_right_size_picks_the_cheaper_fleet_at_the_load() -> None:
    cpu = row("int8-dynamic", 10_000, None, 0.04, cores=2)
    gpu = row("fp16", 200_000, None, 0.001, device="cuda")
    prices = {"core_hour_price": 0.05, "gpu_hour_price": 2.5, "headroom": 0.7}
    low = right_size([cpu, gpu], devices=["cpu", "cuda"], load_rps=5_000, **prices)
    assert low.chosen is cpu and low.sentence.endswith("use CPU.")  # 1 x 2 cores = 0.10/h against 2.50/h
    assert low.per_device["cpu"]["replicas"] == 1 and low.per_device["cuda"]["replicas"] == 1
    high = right_size([cpu, gpu], devices=["cpu", "cuda"], load_rps=1_000_000, **prices)
    # CPU: ceil(1e6 / 7,000) = 143 replicas x 0.10/h = 14.30/h; CUDA: ceil(1e6 / 140,000) = 8 x 2.50 = 20/h
    assert high.per_device["cpu"]["replicas"] == 143 and high.per_device["cuda"]["replicas"] == 8
    assert high.chosen is cpu
    gpu.throughput_rps = 1_000_000
    assert right_size([cpu, gpu], devices=["cpu", "cuda"], load_rps=1_000_000, **prices).chosen is gpu
    full = right_size([cpu, gpu], devices=["cpu", "cuda"], load_rps=None, **prices)  # price per million
    assert full.chosen is (cpu if cpu.cost_per_million < gpu.cost_per_million else gpu)  # type: ignore[operator]
    only = right_size([cpu], devices=["cpu", "cuda"], load_rps=None, **prices)
    assert only.chosen is cpu and "CUDA not measured" in only.sentence
    assert right_size([], devices=["cpu"], load_rps=None, **prices).chosen is None


def test_devices_argument() -> None:
    assert devices_of("auto", cuda=False) == ["cpu"] and devices_of("auto", cuda=True) == ["cpu", "cuda"]
    assert devices_of("cuda,cpu,cuda", cuda=False) == ["cuda", "cpu"]
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        devices_of("cpu,tpu", cuda=False)


# ---- compute per row, real sessions -------------------------------------------------------------


def test_compute_per_row_on_real_sessions(tmp_path: Path) -> None:
    small, wide = tmp_path / "small.onnx", tmp_path / "wide.onnx"
    onnx.save(mlp_model(1), str(small))
    onnx.save(mlp_model(1, (64, 1024, 1024, 10)), str(wide))
    sample = load_sample(None, small, max_rows=128)
    got = compute_per_row({"small": small, "wide": wide}, sample, rounds=3, run_s=0.01)
    assert set(got) == {"small", "wide"}
    for c in got.values():
        assert c["rounds"] == 3 and set(c["us_per_row"]) == {"1", "64"}
        lo, hi = c["range"]["64"]
        assert 0 < lo <= c["us_per_row"]["64"] <= hi
        assert c["us_per_row"]["64"] < c["us_per_row"]["1"]  # a batch amortizes the per-run cost
    # ~17x the multiply-adds a row: the wide one costs more per row, whatever the machine
    assert got["wide"]["us_per_row"]["64"] > 3 * got["small"]["us_per_row"]["64"]
    late = compute_per_row({"small": small}, sample, rounds=3, run_s=0.01, deadline=time.monotonic())
    assert late["small"]["rounds"] == 0 and late["small"]["us_per_row"] == {}
