"""The route stage and the policy parser, without sockets: split shares, sticky assignment, pinning,
atomic swaps, and the errors a bad policy gets."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from gateway.errors import Code, GatewayError
from gateway.pipeline.policy import PolicyError, check_versions, parse_policy
from gateway.pipeline.route import ModelRoute, Router, sticky_point
from gateway.types import InferRequest


class Named:
    """A stand-in target: routing tests only look at which one was chosen."""

    def __init__(self, version: str) -> None:
        self.version = version

    def submit(self, request, done, eager=False):  # type: ignore[no-untyped-def]
        raise AssertionError("not called")


def miss(name: str, version: str) -> GatewayError:
    return GatewayError(Code.NOT_FOUND, f"unknown {name} {version}")


def router_with(weights: dict[str, float] | None, sticky: str = "", stable: str = "1") -> Router:
    r = Router(miss)
    targets = {v: Named(v) for v in ("1", "2", "3")}
    r.publish("m", ModelRoute("m", targets, stable, weights, None, sticky))
    return r


def chosen(r: Router, request: InferRequest, keys: dict[str, str] | None = None) -> str:
    return r.route(request, keys).version  # type: ignore[attr-defined]


def binomial_999(n: int, p: float) -> tuple[float, float]:
    z = 3.29  # two-sided 99.9 %
    half = z * math.sqrt(p * (1 - p) / n)
    return p - half, p + half


def test_weighted_split_shares_are_inside_the_binomial_interval() -> None:
    r = router_with({"1": 90, "2": 10})
    n = 10_000
    got = [chosen(r, InferRequest("m")) for _ in range(n)]
    share = got.count("2") / n
    lo, hi = binomial_999(n, 0.10)
    assert lo <= share <= hi, share
    assert set(got) == {"1", "2"}


def test_pinned_requests_ignore_the_policy() -> None:
    r = router_with({"1": 0.0001, "2": 100})
    assert all(chosen(r, InferRequest("m", "1")) == "1" for _ in range(200))
    with pytest.raises(GatewayError) as e:
        r.route(InferRequest("m", "9"))
    assert e.value.code is Code.NOT_FOUND


def test_no_policy_sends_unpinned_to_the_default_version() -> None:
    r = router_with(None, stable="3")
    assert {chosen(r, InferRequest("m")) for _ in range(100)} == {"3"}


def test_sticky_keys_always_land_on_the_same_arm_and_shares_follow_weights() -> None:
    r = router_with({"1": 70, "2": 30}, sticky="x-user-id")
    first: dict[str, str] = {}
    for rep in range(5):
        for k in range(1000):
            key = f"user-{k}"
            # header on some, request parameter on others: the same key picks the same arm either way
            if rep % 2:
                v = chosen(r, InferRequest("m", parameters={"x-user-id": key}))
            else:
                v = chosen(r, InferRequest("m"), {"x-user-id": key})
            assert first.setdefault(key, v) == v
    share = sum(v == "2" for v in first.values()) / 1000
    lo, hi = binomial_999(1000, 0.30)
    assert lo <= share <= hi, share


def test_requests_without_the_key_fall_back_to_the_weighted_split() -> None:
    r = router_with({"1": 50, "2": 50}, sticky="x-user-id")
    got = {chosen(r, InferRequest("m")) for _ in range(200)}
    assert got == {"1", "2"}


def test_raising_a_canary_weight_only_moves_users_from_stable_to_the_canary() -> None:
    keys = [f"u{i}" for i in range(2000)]
    before = {k: chosen(router_with({"1": 95, "2": 5}, "k"), InferRequest("m"), {"k": k}) for k in keys}
    after = {k: chosen(router_with({"1": 75, "2": 25}, "k"), InferRequest("m"), {"k": k}) for k in keys}
    assert all(after[k] == "2" for k in keys if before[k] == "2")  # nobody flips back to stable
    assert sum(v == "2" for v in after.values()) > sum(v == "2" for v in before.values())


def test_sticky_assignment_is_the_same_in_another_process() -> None:
    keys = [f"user-{i}" for i in range(200)]
    here = [sticky_point("ab", k) for k in keys]
    code = ("import sys, json; from gateway.pipeline.route import sticky_point; "
            "print(json.dumps([sticky_point('ab', f'user-{i}') for i in range(200)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout
    import json

    assert json.loads(out) == here


def test_a_swap_is_atomic_and_unpublishing_removes_the_model() -> None:
    r = router_with({"1": 100})
    old = r.table
    r.publish("m", ModelRoute("m", {"2": Named("2")}, "2"))
    assert old["m"].default == "1"  # the old table is untouched: requests holding it finish on it
    assert chosen(r, InferRequest("m")) == "2"
    r.publish("m", None)
    with pytest.raises(GatewayError):
        r.route(InferRequest("m"))


# ---- the policy parser ------------------------------------------------------------------------

def test_a_full_policy_parses_and_round_trips() -> None:
    doc = {"weights": {"1": 95, "2": 5}, "sticky_key": "X-User-Id", "shadow": {"version": "3", "fraction": 0.2},
           "guard": {"min_requests": 100, "max_error_rate": 0.02, "outcome_metric": "conversion",
                     "outcome_max_drop": 0.01},
           "steps": [5, 25, 50, 100], "step_interval_s": 30}
    p = parse_policy(doc)
    assert p.weights == {"1": 95.0, "2": 5.0} and p.stable == "1" and p.sticky_key == "x-user-id"
    assert p.shadow is not None and p.shadow.version == "3" and p.rollout_canary == "2"
    assert p.guard is not None and p.guard.min_requests == 100
    assert p.outcome_guard is not None and p.outcome_guard.metric == "conversion"
    assert parse_policy(p.to_doc()) == p
    check_versions(p, ["1", "2", "3"])


@pytest.mark.parametrize("doc, field", [
    ({"weights": {"1": -1}}, "traffic.weights.1"),
    ({"weights": {"x": 1}}, "traffic.weights.x"),
    ({"weights": {"1": 0}}, "traffic.weights"),
    ({"weights": {"1": 1}, "stable": "2"}, "traffic.stable"),
    ({"sticky_key": "bad key"}, "traffic.sticky_key"),
    ({"shadow": {"fraction": 0.5}}, "traffic.shadow.version"),
    ({"shadow": {"version": "2", "fraction": 1.5}}, "traffic.shadow.fraction"),
    ({"steps": [50, 25, 100], "weights": {"1": 1, "2": 1}}, "traffic.steps"),
    ({"steps": [5, 100], "weights": {"1": 1}}, "traffic.steps"),
    ({"guard": {"min_requests": 0}}, "traffic.guard.min_requests"),
    ({"guard": {"max_error_rat": 0.1}}, "traffic.guard.max_error_rat"),
    ({"wieghts": {}}, "traffic.wieghts"),
    ([1, 2], "traffic"),
])
def test_a_bad_policy_names_the_field(doc: object, field: str) -> None:
    with pytest.raises(PolicyError) as e:
        parse_policy(doc)
    assert str(e.value).startswith(field + ":"), str(e.value)


def test_a_policy_naming_a_version_that_is_not_loaded_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"traffic.weights.7: version 7 is not loaded \(loaded: 1, 2\)"):
        check_versions(parse_policy({"weights": {"1": 1, "7": 1}}), ["1", "2"])
