"""Shadow comparison: agreement rules per output kind, differences, errors on either side."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pipeline.shadow_compare import ShadowComparison

RNG = np.random.default_rng(20240611)
LOGITS = RNG.standard_normal((8, 10)).astype(np.float32)
REGRESSION = RNG.standard_normal((8, 1)).astype(np.float32)
LABELS = np.arange(8, dtype=np.int64)
TEXT = np.array([b"cat", b"dog", b""], dtype=object)


def outputs(**over: np.ndarray) -> dict[str, np.ndarray]:
    return {"logits": LOGITS, "score": REGRESSION, "label": LABELS, "text": TEXT, **over}


def one(primary: dict | None, shadow: dict | None, error: str | None = None) -> dict:
    c = ShadowComparison()
    c.record(primary, shadow, 0.010, 0.012, error)
    return c.snapshot()


def test_identical_outputs_agree_with_no_difference() -> None:
    c = ShadowComparison()
    for _ in range(3):
        c.record(outputs(), {k: v.copy() for k, v in outputs().items()}, 0.010, 0.013)
    s = c.snapshot()
    assert (s["compared"], s["agreed"], s["agreement_rate"], s["within_tolerance"]) == (3, 3, 1.0, 3)
    assert s["max_abs_diff"] == 0.0 and s["max_rel_diff"] == 0.0
    assert s["mean_latency_diff_ms"] == pytest.approx(3.0)
    assert c.counts() == (3, 0)


def test_a_different_classifier_disagrees_by_argmax() -> None:
    worse = LOGITS.copy()
    worse[3] = -worse[3]  # row 3's top class changes
    c = ShadowComparison()
    c.record(outputs(), outputs(logits=worse), 0.01, 0.01)
    c.record(outputs(), outputs(), 0.01, 0.01)
    s = c.snapshot()
    assert c.counts() == (2, 1) and s["agreement_rate"] == 0.5 and s["within_tolerance"] == 1
    assert s["max_abs_diff"] == pytest.approx(2 * np.abs(LOGITS[3]).max())


def test_score_noise_that_keeps_the_argmax_is_agreement_but_not_within_tolerance() -> None:
    s = one(outputs(), outputs(logits=LOGITS * np.float32(1.01)))  # 1 % on every score
    assert (s["agreed"], s["within_tolerance"]) == (1, 0)
    assert s["max_rel_diff"] == pytest.approx(0.01, rel=1e-3)


def test_small_float_noise_is_within_tolerance() -> None:
    noise = (REGRESSION * (1 + 1e-4)).astype(np.float32)
    s = one(outputs(), outputs(score=noise, logits=LOGITS + np.float32(1e-6)))
    assert (s["agreed"], s["within_tolerance"]) == (1, 1)
    assert 0 < s["max_abs_diff"] < 1e-3 and s["max_rel_diff"] > 0  # (relative to a logit near 0: large)


def test_regression_outside_tolerance_disagrees() -> None:
    s = one(outputs(), outputs(score=REGRESSION + np.float32(0.1)))
    assert (s["agreed"], s["within_tolerance"]) == (0, 0)
    assert s["max_abs_diff"] == pytest.approx(0.1, rel=1e-5)


def test_relative_difference_skips_primary_zeros() -> None:
    s = one({"y": np.array([0.0, 2.0])}, {"y": np.array([1e-3, 2.001])})
    assert s["max_abs_diff"] == pytest.approx(1e-3) and s["max_rel_diff"] == pytest.approx(5e-4)
    assert s["agreed"] == 0  # 1e-3 off a zero is outside atol 1e-5


def test_shape_mismatch_and_missing_output_disagree() -> None:
    assert one(outputs(), outputs(logits=LOGITS[:, :9]))["agreed"] == 0
    assert one(outputs(), outputs(label=LABELS.reshape(2, 4)))["agreed"] == 0
    shadow = outputs()
    del shadow["label"]
    assert one(outputs(), shadow)["agreed"] == 0  # a client reading "label" would break
    assert one(outputs(), outputs(extra=np.zeros(3)))["agreed"] == 1  # outputs only the shadow has: fine


def test_bytes_outputs_compare_by_equality() -> None:
    assert one(outputs(), outputs(text=np.array([b"cat", b"dog", b""], dtype=object)))["agreed"] == 1
    assert one(outputs(), outputs(text=np.array([b"cat", b"dog", b""], dtype=np.bytes_)))["agreed"] == 1
    s = one(outputs(), outputs(text=np.array([b"cat", b"cow", b""], dtype=object)))
    assert (s["agreed"], s["within_tolerance"]) == (0, 0)
    as_str = np.array(["cat", "dog", ""], dtype=object)
    assert one(outputs(), outputs(text=as_str))["agreed"] == 0  # str is not bytes


def test_integers_and_booleans_are_exact() -> None:
    s = one(outputs(), outputs(label=LABELS + 1))
    assert s["agreed"] == 0 and s["max_abs_diff"] == 1.0
    flags = np.array([True, False, True])
    assert one({"f": flags}, {"f": flags.copy()})["agreed"] == 1
    assert one({"f": flags}, {"f": ~flags})["agreed"] == 0
    big = np.array([2**64 - 1, 0], dtype=np.uint64)
    assert one({"u": big}, {"u": big[::-1].copy()})["agreed"] == 0  # no unsigned wrap-around


def test_nan_matches_nan_only() -> None:
    y = np.array([1.0, np.nan, np.inf])
    assert one({"y": y}, {"y": y.copy()})["agreed"] == 1
    s = one({"y": y}, {"y": np.array([1.0, 0.0, np.inf])})
    assert s["agreed"] == 0 and s["max_abs_diff"] == np.inf
    assert one({"y": y}, {"y": np.array([1.0, np.nan, 1e300])})["agreed"] == 0  # inf is no tolerance


def test_errors_on_either_side() -> None:
    c = ShadowComparison()
    c.record(None, outputs(), 0.01, 0.01)  # the primary failed: nothing to compare
    c.record(outputs(), None, 0.01, 0.0, "UNAVAILABLE: shadow down")
    c.record(outputs(), outputs(), 0.01, 0.01, "DEADLINE_EXCEEDED")  # an error with outputs is an error
    c.record(None, None, 0.01, 0.01, "both down")
    c.record(outputs(), outputs(), 0.01, 0.01)
    c.shed += 2
    s = c.snapshot()
    assert (s["mirrored"], s["compared"], s["agreed"]) == (5, 1, 1)
    assert (s["primary_errors"], s["shadow_errors"], s["shadow_error_rate"]) == (2, 3, 0.6)
    assert s["last_shadow_error"] == "both down" and s["shed"] == 2
    assert (s["atol"], s["rtol"]) == (1e-5, 1e-3) and c.counts() == (1, 0)


def test_empty_snapshot() -> None:
    s = ShadowComparison(atol=0.0, rtol=0.0).snapshot()
    assert s["compared"] == 0 and s["agreement_rate"] is None and s["mean_latency_diff_ms"] is None
    assert s["shadow_error_rate"] is None
    with pytest.raises(ValueError):
        ShadowComparison(atol=-1.0)


ODD = [
    np.array([[1, 2], [3]], dtype=object),  # ragged
    np.array([np.zeros(2), np.ones(2)], dtype=object),  # arrays inside (ambiguous ==)
    np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]),
    np.array(["2024-01-01"], dtype="datetime64[D]"),
    np.array([1 + 2j, 3j]),
    np.array(["a", "b"]),
    np.zeros((0, 10), dtype=np.float32),
    np.float32(3.0),
    [1.0, 2.0],  # not even an array
]


def odd_id(v: object) -> str:
    return getattr(getattr(v, "dtype", None), "str", type(v).__name__)


@pytest.mark.parametrize("value", ODD, ids=odd_id)
def test_odd_values_never_raise(value) -> None:
    c = ShadowComparison()
    for other in ODD:
        c.record({"x": value}, {"x": other}, 0.0, 0.0)  # type: ignore[dict-item]
    c.record({"x": value}, {"x": value}, 0.0, 0.0)  # type: ignore[dict-item]
    assert c.compared == len(ODD) + 1 and c.agreed >= 1  # at least itself


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["float16", "float32", "float64", "int8", "uint16", "int64", "bool"]),
       st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple), st.integers(0, 2**32))
def test_any_numeric_output_agrees_with_itself(dtype, shape, seed) -> None:
    arr = (np.random.default_rng(seed).standard_normal(shape) * 100).astype(dtype)
    s = one({"y": arr}, {"y": arr.copy()})
    assert (s["agreed"], s["within_tolerance"], s["max_abs_diff"]) == (1, 1, 0.0)
