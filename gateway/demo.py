"""The built-in demo repository: ONNX models generated in code, no files or network needed.

- ``mlp``: 64 -> 256 -> 256 -> 10 FP32 (ReLU), versions 1 and 2 (different seeded weights),
  both served (``version_policy = "all"``); the shape used by the benchmarks.
- ``add_sub``: two FP32 [-1, 16] inputs -> their sum and difference (multi input/output).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _save(model: onnx.ModelProto, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def mlp_model(seed: int, sizes: tuple[int, ...] = (64, 256, 256, 10)) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    prev = "INPUT0"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        bias = (rng.standard_normal(b) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(bias, f"B{i}")]
        out = "OUTPUT0" if i == len(sizes) - 2 else f"h{i}"
        gemm_out = out if out == "OUTPUT0" else f"g{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"B{i}"], [gemm_out]))
        if out != "OUTPUT0":
            nodes.append(helper.make_node("Relu", [gemm_out], [out]))
        prev = out
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", sizes[-1]])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)


def add_sub_model(width: int = 16) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
         helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])],
        "add_sub",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", width]) for n in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", width]) for n in ("OUTPUT0", "OUTPUT1")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)


def build_demo_repository(root: str | Path) -> Path:
    root = Path(root)
    _save(mlp_model(seed=1), root / "mlp" / "1" / "model.onnx")
    _save(mlp_model(seed=2), root / "mlp" / "2" / "model.onnx")
    (root / "mlp" / "config.toml").write_text(
        '# Both versions are served; requests without a version go to the highest.\n'
        'version_policy = "all"\nmax_batch_size = 64\nmax_queue_delay_us = 0\n'
        '# A 64-row batch takes ~0.2 ms: inline on the loop beats a thread hand-off (see README).\n'
        'execution = "inline"\n'
    )
    _save(add_sub_model(), root / "add_sub" / "1" / "model.onnx")
    return root
