"""The in-process API: same pipeline, no sockets; concurrent calls batch together."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from gateway import Gateway
from gateway.errors import Code, GatewayError
from gateway.front.model_docs import model_config, model_statistics


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_embedded_infer_and_batching(repo: Path, loop_kind: str) -> None:
    sess = ort.InferenceSession(str(repo / "mlp" / "2" / "model.onnx"), providers=["CPUExecutionProvider"])
    xs = [np.random.default_rng(i).standard_normal((1, 64)).astype(np.float32) for i in range(50)]

    async def main() -> None:
        async with Gateway.from_repository(repo) as gw:
            outs = await asyncio.gather(*(gw.infer("mlp", {"INPUT0": x}) for x in xs))
            for x, out in zip(xs, outs, strict=True):
                np.testing.assert_allclose(out["OUTPUT0"], sess.run(None, {"INPUT0": x})[0], rtol=1e-5, atol=1e-6)
            stats = model_statistics(gw.dataplane.model_totals("mlp", "2"))["model_stats"][0]
            assert max(b["batch_size"] for b in stats["batch_stats"]) > 1
            # python lists are converted to the model's dtype
            out = await gw.infer("add_sub", {"INPUT0": [[1.0] * 16], "INPUT1": [[0.5] * 16]}, outputs=["OUTPUT1"])
            assert list(out) == ["OUTPUT1"] and out["OUTPUT1"].tolist() == [[0.5] * 16]
            with pytest.raises(GatewayError) as e:
                await gw.infer("nope", {"INPUT0": xs[0]})
            assert e.value.code is Code.NOT_FOUND

    if loop_kind == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def test_cancelled_caller_is_never_computed(tmp_path: Path) -> None:
    from models import mlp_model, write_model

    write_model(tmp_path, "waity", 1, mlp_model(seed=3), "max_queue_delay_us = 300000\n")

    async def main() -> None:
        async with Gateway.from_repository(tmp_path) as gw:
            task = asyncio.ensure_future(gw.infer("waity", {"INPUT0": np.zeros((1, 64), np.float32)}))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.4)  # past the batching delay
            stats = model_statistics(gw.dataplane.model_totals("waity"))["model_stats"][0]
            assert stats["execution_count"] == 0 and stats["inference_stats"]["success"]["count"] == 0

    asyncio.run(main())


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_thread_execution_with_two_instances(tmp_path: Path, loop_kind: str) -> None:
    """execution = "thread": batches run on a pool, up to `instances` at once, results unchanged."""
    from models import mlp_model, write_model

    write_model(tmp_path, "pooled", 1, mlp_model(seed=5), 'execution = "thread"\ninstances = 2\n')
    sess = ort.InferenceSession(str(tmp_path / "pooled" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    xs = [np.random.default_rng(i).standard_normal((int(i % 3) + 1, 64)).astype(np.float32) for i in range(120)]

    async def main() -> None:
        async with Gateway.from_repository(tmp_path) as gw:
            mv = gw.registry.get("pooled")
            assert not mv.backend.inline and model_config(mv)["parameters"]["execution"]["string_value"] == "thread"
            outs = await asyncio.gather(*(gw.infer("pooled", {"INPUT0": x}) for x in xs))
            for x, out in zip(xs, outs, strict=True):
                np.testing.assert_allclose(out["OUTPUT0"], sess.run(None, {"INPUT0": x})[0], rtol=1e-5, atol=1e-5)
            stats = model_statistics(gw.dataplane.model_totals("pooled"))["model_stats"][0]
            assert stats["inference_count"] == sum(x.shape[0] for x in xs)

    if loop_kind == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def test_demo_gateway_serves_the_demo_models_and_cleans_up() -> None:
    gw = Gateway.demo()
    root = gw.registry.root

    async def main() -> None:
        async with gw:
            out = await gw.infer("add_sub", {"INPUT0": np.ones((1, 16)), "INPUT1": np.ones((1, 16))})
            assert out["OUTPUT0"].tolist() == [[2.0] * 16]
            assert {m["name"] for m in gw.models()} == {"mlp", "add_sub"}

    asyncio.run(main())
    assert not root.exists()


def test_demo_export_writes_a_servable_repository(tmp_path) -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "gateway", "demo", "export", str(tmp_path / "models")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "models" / "mlp" / "2" / "model.onnx").is_file()
    assert (tmp_path / "models" / "add_sub" / "1" / "model.onnx").is_file()
