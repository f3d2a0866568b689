"""ONNX models generated for the tests (onnx helper API; nothing is downloaded), and the
reference helpers the end-to-end tests compare against."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from gateway.demo import add_sub_model, mlp_model
from gateway.types import DATATYPE_TO_NUMPY

OPSET = 17

ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _model(nodes: list, inputs: list, outputs: list, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    onnx.checker.check_model(m)
    return m


def identity_model(datatype: str, width: int = 4) -> onnx.ModelProto:
    """INPUT0 [batch, width] of any datatype -> OUTPUT0 = INPUT0."""
    t = ONNX_TYPES[datatype]
    return _model([helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
                  [helper.make_tensor_value_info("INPUT0", t, ["batch", width])],
                  [helper.make_tensor_value_info("OUTPUT0", t, ["batch", width])], f"identity_{datatype}")


def multi_dtype_model() -> onnx.ModelProto:
    """Three inputs of different dtypes, three outputs: F = 2*A (FP32), N = B + 1 (INT64), S = C (BYTES)."""
    import numpy as np
    from onnx import numpy_helper

    inits = [numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
             numpy_helper.from_array(np.array(1, dtype=np.int64), "one")]
    nodes = [helper.make_node("Mul", ["A", "two"], ["F"]),
             helper.make_node("Add", ["B", "one"], ["N"]),
             helper.make_node("Identity", ["C"], ["S"])]
    graph = helper.make_graph(
        nodes, "multi",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("B", TensorProto.INT64, ["batch", 2]),
         helper.make_tensor_value_info("C", TensorProto.STRING, ["batch", 1])],
        [helper.make_tensor_value_info("F", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("N", TensorProto.INT64, ["batch", 2]),
         helper.make_tensor_value_info("S", TensorProto.STRING, ["batch", 1])],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    onnx.checker.check_model(m)
    return m


def static_model() -> onnx.ModelProto:
    """No dynamic batch dimension: INPUT0 FP32 [2, 3] -> OUTPUT0 = INPUT0 * INPUT0 (batching off)."""
    return _model([helper.make_node("Mul", ["INPUT0", "INPUT0"], ["OUTPUT0"])],
                  [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, [2, 3])],
                  [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, [2, 3])], "static")


def rowsum_model() -> onnx.ModelProto:
    """Variable inner dimension: INPUT0 FP32 [batch, n] -> OUTPUT0 [batch, 1] = row sums (shape buckets)."""
    import numpy as np
    from onnx import numpy_helper

    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["INPUT0", "axes"], ["OUTPUT0"], keepdims=1)], "rowsum",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 1])], [axes])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    onnx.checker.check_model(m)
    return m


def bad_rows_model() -> onnx.ModelProto:
    """Claims a batch dimension but returns twice the rows it was given (its input stacked twice)."""
    return _model([helper.make_node("Concat", ["INPUT0", "INPUT0"], ["OUTPUT0"], axis=0)],
                  [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 4])],
                  [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch2", 4])], "bad_rows")


def slow_model(width: int = 512, depth: int = 160) -> onnx.ModelProto:
    """INPUT0 FP32 [batch, width] -> OUTPUT0: ``depth`` chained MatMuls by one matrix; with one
    onnxruntime thread, width 512 and depth 160 take ~2 ms a row here (a model that is the bottleneck)."""
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), "W")
    nodes, prev = [], "INPUT0"
    for i in range(depth):
        nodes.append(helper.make_node("MatMul", [prev, "W"], [f"h{i}"]))
        prev = f"h{i}"
    nodes.append(helper.make_node("Identity", [prev], ["OUTPUT0"]))
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", width])], [w])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    onnx.checker.check_model(m)
    return m


def write_model(repo: Path, name: str, version: str | int, model: onnx.ModelProto,
                config_toml: str | None = None) -> Path:
    path = Path(repo) / name / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    if config_toml is not None:
        (Path(repo) / name / "config.toml").write_text(config_toml)
    return path


def build_test_repository(repo: Path) -> Path:
    """The repository most integration tests serve."""
    write_model(repo, "mlp", 1, mlp_model(seed=1))
    write_model(repo, "mlp", 2, mlp_model(seed=2), 'version_policy = "all"\n')
    write_model(repo, "add_sub", 1, add_sub_model())
    write_model(repo, "multi", 1, multi_dtype_model())
    write_model(repo, "static", 1, static_model())
    write_model(repo, "rowsum", 1, rowsum_model())
    write_model(repo, "bad_rows", 1, bad_rows_model(), "max_batch_size = 8\nmax_queue_delay_us = 20000\n")
    for dt in ONNX_TYPES:
        write_model(repo, f"identity_{dt.lower()}", 1, identity_model(dt))
    return repo


def reference(repo: Path, model: str, version: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's outputs from onnxruntime called directly: what the gateway must return."""
    sess = ort.InferenceSession(str(repo / model / version / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def random_array(datatype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random values spanning the datatype's whole range (non-ASCII text for BYTES)."""
    if datatype == "BYTES":
        return np.array([f"s{rng.integers(1000)}-é".encode() for _ in range(int(np.prod(shape)))],
                        dtype=object).reshape(shape)
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    dtype = DATATYPE_TO_NUMPY[datatype]
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
