"""`gateway tune` end to end on a small generated classifier: real variants, real onnxruntime
accuracy, real gateways measured with the load tester, within the budget; the recommended variant
loads and serves as a new version."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient

from gateway.cli import main
from gateway.demo import mlp_model
from gateway.testing import ServerThread
from gateway.tune.sample import load_sample


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "mlp" / "1").mkdir(parents=True)
    onnx.save(mlp_model(1), str(root / "mlp" / "1" / "model.onnx"))
    (root / "mlp" / "config.toml").write_text("max_batch_size = 64\n")
    return root


def direct(reference: Path, candidate: Path, model_path: Path) -> tuple[float, float]:
    """Max abs diff and argmax agreement computed here, over the sample tune draws (batches of 64)."""
    sample = load_sample(None, model_path, max_rows=512)
    a_s, b_s = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (reference, candidate))
    worst, agree, rows = 0.0, 0, 0
    for feeds in sample.batches(64):
        a = a_s.run(None, feeds)[0].astype(np.float64)
        b = b_s.run(None, feeds)[0].astype(np.float64)
        worst = max(worst, float(np.abs(a - b).max()))
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        rows += len(a)
    return worst, agree / rows


def test_tune_measures_variants_within_budget_and_the_pick_serves(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    budget = 60.0  # the search (a point is ~10 s) and one confirmation round of both variants
    t0 = time.monotonic()
    # its own process, as a user runs it: the load generator runs in tune's process, and pytest's
    # (threads left by earlier tests) would compete with it for the GIL
    r = subprocess.run([sys.executable, "-m", "gateway", "tune", "--model-repository", str(repo), "-m", "mlp",
                        "--slo-p99-ms", "200", "--budget-s", str(budget), "--out", str(out),
                        "--variants", "fp32,int8-dynamic", "--step-s", "1"],
                       capture_output=True, text=True, timeout=budget + 60)
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Recommended:" in r.stdout and "reports:" in r.stdout  # progress, table and advice on the console
    assert elapsed <= budget + 8, elapsed  # the last server's shutdown may run a few seconds over
    doc = json.loads((out / "tune.json").read_text())
    by_name = {v["name"]: v for v in doc["variants"]}
    assert list(by_name) == ["fp32", "int8-dynamic"]
    assert doc["devices"] == ["cpu"] and doc["schema"] == "gateway.tune/2"
    fp32, int8 = by_name["fp32"], by_name["int8-dynamic"]
    for v in (fp32, int8):  # compute per row, in process, at one row and at a full batch
        assert v["device"] == "cpu" and set(v["compute"]["us_per_row"]) == {"1", "64"}
    assert int8["precision"] == "int8" and 0 < int8["size_bytes"] < fp32["size_bytes"]
    worst, agreement = direct(Path(fp32["path"]), Path(int8["path"]), repo / "mlp" / "1" / "model.onnx")
    assert int8["accuracy"]["max_abs_diff"] == pytest.approx(worst, rel=1e-12, abs=1e-12)
    assert int8["accuracy"]["argmax_agreement"] == pytest.approx(agreement)
    assert fp32["accuracy"]["max_abs_diff"] == 0.0 and fp32["accuracy"]["argmax_agreement"] == 1.0
    assert doc["data"]["real"] is False and "random" in doc["data"]["source"]
    measured = [v for v in doc["variants"] if v["throughput_rps"] > 0]
    assert measured, doc["variants"]
    for v in measured:
        assert v["p99_ms"] <= 200 and v["config"] and v["cost_per_million"] > 0 and v["points"]
        # confirmed in a round: the figure is the rounds' median, within their range
        assert len(v["rounds"]) == 1 and v["search_throughput_rps"] > 0
        lo, hi = v["throughput_range"]
        assert lo == pytest.approx(v["throughput_rps"], abs=0.1) and (hi is None or hi >= lo)
    assert any(v["pareto"] for v in measured)
    assert (out / "report.html").read_text().count("<tr>") == 3
    # the recommended variant, as written: a new version beside the model's config
    assert doc["recommended"] in by_name
    vdir = Path(doc["recommended_version"]["dir"])
    assert vdir.name == "2" and (vdir / "model.onnx").is_file()
    config = (vdir.parent / "config.toml").read_text()
    for key in ("max_batch_size", "execution", "instances", "capacity_rps", "capacity_headroom", "device"):
        assert f"{key} =" in config
    served = tmp_path / "served"
    shutil.copytree(vdir.parent, served / "mlp")
    with ServerThread(repository=served, grpc_port=-1) as srv:
        c = httpclient.InferenceServerClient(srv.http_url)
        x = httpclient.InferInput("INPUT0", [1, 64], "FP32")
        x.set_data_from_numpy(np.ones((1, 64), np.float32))
        r = c.infer("mlp", [x], model_version="2")
        assert r.as_numpy("OUTPUT0").shape == (1, 10)


def test_a_tolerance_that_excludes_int8_says_why(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc = main(["tune", "--model-repository", str(repo), "-m", "mlp", "--budget-s", "2", "--out", str(out),
               "--variants", "fp32,int8-dynamic,int8-static", "--max-abs-diff", "1e-6", "--devices", "cpu,cuda", "-q"])
    assert rc == 0
    doc = json.loads((out / "tune.json").read_text())
    by_name = {v["name"]: v for v in doc["variants"] if v["device"] == "cpu"}
    for name in ("int8-dynamic", "int8-static"):
        assert "max abs diff" in by_name[name]["excluded"] and "--max-abs-diff" in by_name[name]["excluded"]
    assert "budget" in by_name["fp32"]["excluded"]  # 2 s: built and compared, not measured
    if not doc["machine"]["cuda"]:  # asked for, not here: each variant's CUDA row says why, none is dropped
        cuda_rows = [v for v in doc["variants"] if v["device"] == "cuda"]
        assert [v["name"] for v in cuda_rows] == ["fp32", "int8-dynamic", "int8-static"]
        assert "no CUDA execution provider" in cuda_rows[0]["excluded"]
    assert doc["recommended"] is None and "recommended_version" not in doc


def test_unknown_model_is_a_clear_error(repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tune", "--model-repository", str(repo), "-m", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "no versions of model 'nope'" in capsys.readouterr().err
