"""Hundreds of concurrent callers with mixed row counts and shapes each get exactly their own rows."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient
from test_http_infer import make_input

from gateway.testing import ServerThread


def batches_formed(server: ServerThread, model: str, version: str) -> dict[int, int]:
    c = httpclient.InferenceServerClient(server.http_url)
    stats = c.get_inference_statistics(model, version)["model_stats"][0]
    return {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}


def test_256_concurrent_mixed_requests_get_their_own_rows(server: ServerThread, repo: Path) -> None:
    sess = ort.InferenceSession(str(repo / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(42)
    client = httpclient.InferenceServerClient(server.http_url, concurrency=64, network_timeout=120)
    jobs = []
    for i in range(256):
        rows = int(rng.integers(1, 6))
        if i % 4 == 3:  # a different model with a variable inner dimension: separate shape buckets
            x = rng.standard_normal((rows, int(rng.integers(2, 5)))).astype(np.float32)
            jobs.append(("rowsum", x, client.async_infer("rowsum", [make_input("INPUT0", x, "FP32", i % 2 == 0)])))
        else:
            x = rng.standard_normal((rows, 64)).astype(np.float32)
            jobs.append(("mlp", x, client.async_infer("mlp", [make_input("INPUT0", x, "FP32", i % 2 == 0)],
                                                      model_version="1", request_id=str(i))))
    for model, x, job in jobs:
        got = job.get_result(timeout=120).as_numpy("OUTPUT0")
        if model == "mlp":
            want = sess.run(["OUTPUT0"], {"INPUT0": x})[0]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        else:
            np.testing.assert_allclose(got, x.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-5)
    client.close()
    sizes = batches_formed(server, "mlp", "1")
    assert max(sizes) > 1, f"no batch larger than one row formed: {sizes}"


def test_metrics_show_batching(server: ServerThread) -> None:
    import urllib.request

    text = urllib.request.urlopen(f"http://{server.http_url}/metrics", timeout=30).read().decode()
    counts = {}
    for m in re.finditer(r'gateway_batch_rows_bucket\{le="([^"]+)",model="mlp",version="1"\} (\S+)', text):
        counts[m.group(1)] = float(m.group(2))
    assert counts, text[:2000]
    assert counts["+Inf"] > counts["1.0"], "every batch had one row"
