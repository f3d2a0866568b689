"""How far a variant's outputs are from the reference model's, on the same rows in the same batches.

Both run on the CPU provider with one intra-op thread, so the numbers depend on the models and the
sample, not on the machine's thread count. The batches matter: int8-dynamic quantizes activations
with one scale per tensor, so a row's output depends on its batch-mates; compare at the batch size
the variant will be served at.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gateway.tune.sample import Sample, fixed_batch


@dataclass
class Accuracy:
    """Over every output and every element of the sample.

    ``max_rel_diff``: max |a-b| / max(|a|, eps), eps = 1e-6 * max|a| over that output (a and b the
    reference's and the candidate's values), so that elements near zero do not make it infinite.
    ``argmax_agreement``: the share of rows whose argmax over the last axis agrees, for each output
    shaped [rows, k] with k > 1, averaged (mean) over those outputs; None when no output has that
    shape. ``per_output``: the same numbers for each output by name."""

    max_abs_diff: float
    max_rel_diff: float
    argmax_agreement: float | None
    rows: int
    per_output: dict[str, dict[str, float]]


def compare(reference: Path, candidate: Path, sample: Sample, batch_size: int = 64) -> Accuracy:
    """Run both models over ``sample.batches(batch_size)`` (a model with a fixed first dimension: its
    own batch size, whole batches only) and compare every output, as float64."""
    ref, cand = cpu_session(reference), cpu_session(candidate)
    names = [o.name for o in ref.get_outputs()]
    cand_names = {o.name for o in cand.get_outputs()}
    if set(names) != cand_names:
        raise ValueError(f"{candidate} has outputs {sorted(cand_names)}, the reference {sorted(names)}")
    fixed = fixed_batch(Path(reference))
    size = fixed or batch_size
    got: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {n: ([], []) for n in names}
    rows = 0
    for feeds in sample.batches(size):
        n = next(iter(feeds.values())).shape[0] if feeds else 0
        if n != size and fixed is not None:
            break
        for name, a, b in zip(names, ref.run(names, feeds), cand.run(names, feeds), strict=True):
            got[name][0].append(np.asarray(a))
            got[name][1].append(np.asarray(b))
        rows += n
    per_output: dict[str, dict[str, float]] = {}
    agreements = []
    for name in names:
        a_parts, b_parts = got[name]
        if not a_parts:
            continue
        stats = _compare_output(np.concatenate(a_parts), np.concatenate(b_parts), rows, name)
        per_output[name] = stats
        if "argmax_agreement" in stats:
            agreements.append(stats["argmax_agreement"])
    return Accuracy(
        max_abs_diff=max((s["max_abs_diff"] for s in per_output.values()), default=0.0),
        max_rel_diff=max((s["max_rel_diff"] for s in per_output.values()), default=0.0),
        argmax_agreement=float(np.mean(agreements)) if agreements else None,
        rows=rows,
        per_output=per_output,
    )


def _compare_output(a: np.ndarray, b: np.ndarray, rows: int, name: str) -> dict[str, float]:
    if a.shape != b.shape:
        raise ValueError(f"output '{name}': shape {list(b.shape)}, the reference's {list(a.shape)}")
    if a.dtype.kind in "OSU" or b.dtype.kind in "OSU":  # strings: equal or not
        same = float(np.mean(a == b)) if a.size else 1.0
        diff = 0.0 if same == 1.0 else float("inf")
        return {"max_abs_diff": diff, "max_rel_diff": diff, "equal_share": same}
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if a64.size == 0:
        return {"max_abs_diff": 0.0, "max_rel_diff": 0.0}
    d = np.abs(a64 - b64)
    mag = np.abs(a64)
    eps = 1e-6 * float(mag.max())
    # eps is 0 only when the reference is all zeros: then any difference is infinitely relative
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = d / np.maximum(mag, eps) if eps > 0 else np.where(d > 0, np.inf, 0.0)
    out: dict[str, Any] = {"max_abs_diff": float(d.max()), "max_rel_diff": float(rel.max())}
    if a.ndim == 2 and a.shape[0] == rows and a.shape[1] > 1:
        out["argmax_agreement"] = float(np.mean(np.argmax(a64, axis=-1) == np.argmax(b64, axis=-1)))
    return out


def cpu_session(path: Path) -> Any:
    """One intra-op and one inter-op thread on the CPU provider: figures that depend on the model,
    not on the machine's thread count (the accuracy comparison, ``tune.compute``)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
