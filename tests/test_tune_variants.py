"""gateway.tune's variants, data sample and accuracy comparison, with real onnxruntime on the demo mlp."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from models import identity_model, multi_dtype_model, static_model

from gateway.demo import mlp_model
from gateway.tune.accuracy import compare
from gateway.tune.sample import RANDOM_SOURCE, Sample, load_sample
from gateway.tune.variants import FP16_CPU_SKIP, NAMES, build_variants


def _write(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write(mlp_model(seed=1), tmp_path_factory.mktemp("mlp") / "mlp" / "1" / "model.onnx")


@pytest.fixture(scope="module")
def built(mlp: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    sample = load_sample(None, mlp, max_rows=256)
    variants = build_variants(mlp, tmp_path_factory.mktemp("work"), sample)
    return sample, {v.name: v for v in variants}


def _run(path: Path, sample: Sample, size: int) -> dict[str, np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    parts = [sess.run(names, feeds) for feeds in sample.batches(size)]
    return {n: np.concatenate([p[i] for p in parts]) for i, n in enumerate(names)}


def test_every_cpu_variant_builds_and_fp16_says_why_not(built) -> None:  # type: ignore[no-untyped-def]
    _, v = built
    assert list(v) == list(NAMES)
    for name in ("fp32", "fp32-opt", "int8-dynamic", "int8-static"):
        assert v[name].error is None, v[name].error
        assert v[name].path is not None and v[name].path.name == "model.onnx"
        assert v[name].size_bytes == v[name].path.stat().st_size > 0
        assert sorted(p.name for p in v[name].path.parent.iterdir()) == ["model.onnx"]  # no leftovers
        assert v[name].seconds > 0
    assert [v[n].precision for n in NAMES] == ["fp32", "fp32", "int8", "int8", "fp16"]
    assert v["fp16"].path is None and v["fp16"].size_bytes == 0 and v["fp16"].error == FP16_CPU_SKIP
    fp32 = v["fp32"].size_bytes
    assert v["int8-dynamic"].size_bytes < fp32 / 2
    assert v["int8-static"].size_bytes < fp32 / 2
    ops = {n.op_type for n in onnx.load(str(v["int8-static"].path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format


def test_only_builds_the_named_variants(mlp: Path, tmp_path: Path) -> None:
    sample = load_sample(None, mlp, max_rows=8)
    out = build_variants(mlp, tmp_path, sample, only=["int8-dynamic", "fp16"])
    assert [x.name for x in out] == ["int8-dynamic", "fp16"]
    assert not (tmp_path / "fp32").exists()
    with pytest.raises(ValueError, match="int4"):
        build_variants(mlp, tmp_path, sample, only=["int4"])


def test_fp16_converts_where_cuda_is_said_to_be(mlp: Path, tmp_path: Path) -> None:
    # the conversion and the load check run on any machine; only the speed needs CUDA
    sample = load_sample(None, mlp, max_rows=64)
    out = build_variants(mlp, tmp_path, sample, cuda=True, only=["fp32", "fp16"])
    fp32, fp16 = out
    assert fp16.error is None and fp16.path is not None, fp16.error
    assert fp16.size_bytes < 0.6 * fp32.size_bytes
    inits = onnx.load(str(fp16.path)).graph.initializer
    assert {i.data_type for i in inits if i.name.startswith("W")} == {onnx.TensorProto.FLOAT16}
    acc = compare(fp32.path, fp16.path, sample)  # type: ignore[arg-type]
    assert 0 < acc.max_abs_diff < 0.05 and acc.argmax_agreement is not None and acc.argmax_agreement >= 0.95


def test_compare_with_itself_is_exact(built) -> None:  # type: ignore[no-untyped-def]
    sample, v = built
    acc = compare(v["fp32"].path, v["fp32"].path, sample)
    assert acc.max_abs_diff == 0.0 and acc.max_rel_diff == 0.0
    assert acc.argmax_agreement == 1.0
    assert acc.rows == sample.rows == 256
    assert acc.per_output == {"OUTPUT0": {"max_abs_diff": 0.0, "max_rel_diff": 0.0, "argmax_agreement": 1.0}}


@pytest.mark.parametrize("name", ["int8-dynamic", "int8-static", "fp32-opt"])
def test_compare_equals_a_direct_computation(built, name: str) -> None:  # type: ignore[no-untyped-def]
    sample, v = built
    acc = compare(v["fp32"].path, v[name].path, sample, batch_size=32)
    a = _run(v["fp32"].path, sample, 32)["OUTPUT0"].astype(np.float64)
    b = _run(v[name].path, sample, 32)["OUTPUT0"].astype(np.float64)
    d = np.abs(a - b)
    eps = 1e-6 * np.abs(a).max()
    assert acc.max_abs_diff == float(d.max())
    assert acc.max_rel_diff == float((d / np.maximum(np.abs(a), eps)).max())
    assert acc.argmax_agreement == float(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))
    assert acc.per_output["OUTPUT0"]["max_abs_diff"] == acc.max_abs_diff
    if name.startswith("int8"):  # quantized: not the same numbers, still mostly the same class
        assert acc.max_abs_diff > 0
        assert 0.7 <= acc.argmax_agreement <= 1.0  # type: ignore[operator]


def test_no_classifier_output_has_no_agreement(tmp_path: Path) -> None:
    model = _write(identity_model("FP32", width=1), tmp_path / "m.onnx")
    sample = load_sample(None, model, max_rows=10)
    acc = compare(model, model, sample)
    assert acc.argmax_agreement is None and acc.max_abs_diff == 0.0 and acc.rows == 10


def test_nothing_to_quantize_is_an_error_not_an_exception(tmp_path: Path) -> None:
    for dtype in ("FP32", "INT64"):
        model = _write(identity_model(dtype), tmp_path / dtype / "m.onnx")
        out = {x.name: x for x in build_variants(model, tmp_path / dtype / "work", load_sample(None, model))}
        assert out["fp32"].error is None
        for name in ("int8-dynamic", "int8-static"):
            assert out[name].path is None and out[name].size_bytes == 0
            assert out[name].error is not None and "nothing to quantize" in out[name].error, out[name].error


def test_a_failing_build_is_listed_with_its_reason(mlp: Path, tmp_path: Path) -> None:
    other = _write(identity_model("FP32"), tmp_path / "other.onnx")
    wrong = load_sample(None, other, max_rows=4)  # INPUT0 [4, 4]: onnxruntime refuses it for the mlp's [-1, 64]
    out = build_variants(mlp, tmp_path / "work", wrong, only=["int8-static", "fp32"])
    assert out[0].name == "int8-static" and out[0].path is None
    assert out[0].error is not None and out[0].error.split(":")[0].isidentifier() and len(out[0].error) <= 300
    assert "INPUT0" in out[0].error and "\n" not in out[0].error
    assert out[1].error is None  # one failure does not stop the others


def test_fixed_batch_model(tmp_path: Path) -> None:
    model = _write(static_model(), tmp_path / "m.onnx")  # INPUT0 [2, 3]
    sample = load_sample(None, model, max_rows=7)
    assert sample.rows == 6  # whole batches of 2
    acc = compare(model, model, sample, batch_size=64)
    assert acc.rows == 6 and acc.max_abs_diff == 0.0


# -- load_sample ------------------------------------------------------------------------------------


def test_random_sample(mlp: Path) -> None:
    s = load_sample(None, mlp, max_rows=100, seed=3)
    assert not s.real and s.source == RANDOM_SOURCE and s.rows == 100
    assert s.inputs["INPUT0"].shape == (100, 64) and s.inputs["INPUT0"].dtype == np.float32
    assert np.array_equal(s.inputs["INPUT0"], load_sample(None, mlp, max_rows=100, seed=3).inputs["INPUT0"])
    assert not np.array_equal(s.inputs["INPUT0"], load_sample(None, mlp, max_rows=100, seed=4).inputs["INPUT0"])
    assert [b["INPUT0"].shape[0] for b in s.batches(32)] == [32, 32, 32, 4]


def test_random_sample_of_every_kind(tmp_path: Path) -> None:
    model = _write(identity_model("INT64"), tmp_path / "i.onnx")
    s = load_sample(None, model, max_rows=50)
    x = s.inputs["INPUT0"]
    assert x.dtype == np.int64 and x.shape == (50, 4) and x.min() >= 0 and x.max() < 10
    model = _write(identity_model("BOOL"), tmp_path / "b.onnx")
    assert load_sample(None, model, max_rows=50).inputs["INPUT0"].dtype == np.bool_
    model = _write(multi_dtype_model(), tmp_path / "s.onnx")
    with pytest.raises(ValueError, match="'C' is a string tensor"):
        load_sample(None, model)


def test_npz_sample(mlp: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((20, 64))  # float64: cast to the model's float32
    np.savez(tmp_path / "d.npz", INPUT0=x)
    s = load_sample(tmp_path / "d.npz", mlp, max_rows=12)
    assert s.real and s.source == str(tmp_path / "d.npz") and s.rows == 12
    assert s.inputs["INPUT0"].dtype == np.float32
    np.testing.assert_array_equal(s.inputs["INPUT0"], x[:12].astype(np.float32))
    np.savez(tmp_path / "w.npz", INPUT0=x[:, :10])
    with pytest.raises(ValueError, match=r"shape \[20, 10\], the model takes \[-1, 64\]"):
        load_sample(tmp_path / "w.npz", mlp)
    np.savez(tmp_path / "i.npz", INPUT0=np.ones((2, 64), dtype=bool))
    with pytest.raises(ValueError, match="INPUT0' is bool"):
        load_sample(tmp_path / "i.npz", mlp)


def test_jsonl_sample(mlp: Path, tmp_path: Path) -> None:
    rows = np.arange(6 * 64, dtype=np.float32).reshape(6, 64)
    lines = [json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2, 64],
                                     "data": rows[2 * i:2 * i + 2].ravel().tolist()}]}) for i in range(3)]
    (tmp_path / "r.jsonl").write_text("\n".join(lines) + "\n\n")
    s = load_sample(tmp_path / "r.jsonl", mlp)
    assert s.real and s.rows == 6
    np.testing.assert_array_equal(s.inputs["INPUT0"], rows)
    (tmp_path / "bad.jsonl").write_text(lines[0] + "\n{\"inputs\": 3}\n")
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_sample(tmp_path / "bad.jsonl", mlp)


def test_parquet_sample(mlp: Path, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    x = np.random.default_rng(1).standard_normal((9, 64)).astype(np.float32)
    pq.write_table(pa.table({"INPUT0": pa.array(list(x), type=pa.list_(pa.float32()))}), tmp_path / "d.parquet")
    s = load_sample(tmp_path / "d.parquet", mlp)
    assert s.real and s.rows == 9
    np.testing.assert_array_equal(s.inputs["INPUT0"], x)


def test_a_wrong_input_name_is_named(mlp: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", INPUT0=np.zeros((2, 64), np.float32), FEATURES=np.zeros((2, 64), np.float32))
    with pytest.raises(ValueError, match="'FEATURES' is not an input of the model"):
        load_sample(tmp_path / "d.npz", mlp)
    np.savez(tmp_path / "m.npz", X=np.zeros((2, 64), np.float32))
    with pytest.raises(ValueError, match="'X' is not an input"):
        load_sample(tmp_path / "m.npz", mlp)
    (tmp_path / "d.csv").write_text("INPUT0\n1\n")
    with pytest.raises(ValueError, match="unknown data format '.csv'"):
        load_sample(tmp_path / "d.csv", mlp)
    with pytest.raises(ValueError, match="no such file"):
        load_sample(tmp_path / "none.npz", mlp)


def test_a_missing_input_is_named(tmp_path: Path) -> None:
    model = _write(multi_dtype_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", A=np.zeros((2, 3), np.float32), B=np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="input\\(s\\) 'C' are missing"):
        load_sample(tmp_path / "d.npz", model)
