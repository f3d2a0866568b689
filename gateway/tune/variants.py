"""The model's precision variants, each built into its own folder, none dropped without a reason.

A variant that cannot be built (an operator the quantizer does not know, a model with nothing to
quantize) is still listed, with the reason in ``error``: a report that silently leaves int8 out
reads as though int8 had been tried and lost.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gateway.tune.sample import Sample, fixed_batch

NAMES = ("fp32", "fp32-opt", "int8-dynamic", "int8-static", "fp16")
PRECISION = {"fp32": "fp32", "fp32-opt": "fp32", "int8-dynamic": "int8", "int8-static": "int8", "fp16": "fp16"}
FP16_CPU_SKIP = ("skipped: the CPU execution provider has no fp16 kernels that pay; "
                 "fp16 is tried where CUDA is present")
CALIBRATION_BATCH = 64
CALIBRATION_ROWS = 512
# Operators the quantizer emits; a "quantized" model holding none of them is the fp32 model renamed.
_QUANT_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
                        "ConvInteger", "QLinearMatMul", "QLinearConv", "DynamicQuantizeMatMul", "QAttention",
                        "QGemm", "QLinearAdd", "QLinearMul", "MatMulIntegerToFloat", "DynamicQuantizeLSTM"})


@dataclass
class Variant:
    name: str
    precision: str
    path: Path | None
    size_bytes: int
    error: str | None
    seconds: float


def build_variants(model_path: Path, workdir: Path, sample: Sample, *, cuda: bool = False,
                   only: Sequence[str] | None = None) -> list[Variant]:
    """Build each variant as ``workdir/NAME/model.onnx`` (in ``NAMES`` order, or ``only``'s names).

    ``sample`` calibrates int8-static. ``cuda``: the CUDA execution provider is present (fp16 is
    built only then). Every built file is loaded in an onnxruntime CPU session before it is listed
    as built; any failure becomes the variant's ``error``, never an exception."""
    names = list(NAMES) if only is None else list(only)
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)} (known: {', '.join(NAMES)})")
    builders: dict[str, Callable[[Path, Path, Sample, bool], None]] = {
        "fp32": _fp32, "fp32-opt": _fp32_opt, "int8-dynamic": _int8_dynamic,
        "int8-static": _int8_static, "fp16": _fp16,
    }
    out = []
    for name in names:
        if name == "fp16" and not cuda:
            out.append(Variant(name, PRECISION[name], None, 0, FP16_CPU_SKIP, 0.0))
            continue
        target = Path(workdir) / name / "model.onnx"
        target.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        try:
            builders[name](Path(model_path), target, sample, cuda)
            _check_loads(target)
            if PRECISION[name] == "int8":
                _check_quantized(target)
        except Exception as e:  # a variant that fails is listed with its reason; the others go on
            msg = " ".join(f"{type(e).__name__}: {e}".split())  # one line: it goes in a table
            out.append(Variant(name, PRECISION[name], None, 0, msg if len(msg) <= 300 else msg[:297] + "...",
                               time.perf_counter() - start))
            continue
        out.append(Variant(name, PRECISION[name], target, _size(target), None, time.perf_counter() - start))
    return out


def _fp32(src: Path, dst: Path, sample: Sample, cuda: bool) -> None:
    shutil.copyfile(src, dst)
    for location in _external_files(src):  # tensors kept beside the model file travel with it
        (dst.parent / location).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src.parent / location, dst.parent / location)


def _fp32_opt(src: Path, dst: Path, sample: Sample, cuda: bool) -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # EXTENDED, not ALL: ALL adds layout optimizations (NCHWc and the like) chosen for this machine's
    # CPU; a file saved with them is tied to the hardware it was optimized on, and the file is what
    # gets served, maybe elsewhere. EXTENDED's fusions are portable between machines of one provider.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(dst)
    # fused nodes are assigned to a provider: optimize for the provider that will serve the file
    providers = ["CPUExecutionProvider"]
    if cuda and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    ort.InferenceSession(str(src), opts, providers=providers)
    if not dst.exists():
        raise RuntimeError("onnxruntime wrote no optimized model")


def _int8_dynamic(src: Path, dst: Path, sample: Sample, cuda: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = _preprocessed(src, dst.parent)
    try:
        quantize_dynamic(model, dst, weight_type=QuantType.QInt8)
    finally:
        _drop_preprocessed(model, src)


def _int8_static(src: Path, dst: Path, sample: Sample, cuda: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = _preprocessed(src, dst.parent)
    batch = fixed_batch(src) or CALIBRATION_BATCH

    def run(per_channel: bool) -> None:
        quantize_static(model, dst, CalibrationReader(sample, batch), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)

    try:
        try:
            run(per_channel=True)
        except Exception:  # some operators' weights take no per-channel scales: per tensor then
            run(per_channel=False)
    finally:
        _drop_preprocessed(model, src)


def _fp16(src: Path, dst: Path, sample: Sample, cuda: bool) -> None:
    import onnx

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        raise RuntimeError("needs onnxruntime's transformers tools") from None
    # keep_io_types: the inputs and outputs stay fp32, so clients and the sample feed it unchanged
    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))


class CalibrationReader:
    """The sample's batches, fed to the quantizer's calibration session one at a time."""

    def __init__(self, sample: Sample, batch: int, rows: int = CALIBRATION_ROWS) -> None:
        self._batch = batch
        self._sample = sample
        self._rows = rows
        self._it: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        seen = 0
        for feeds in self._sample.batches(self._batch):
            n = next(iter(feeds.values())).shape[0] if feeds else 0
            if n != self._batch and seen:  # a short last batch after full ones: a fixed batch would refuse it
                return
            yield feeds
            seen += n
            if seen >= self._rows:
                return

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()


def _preprocessed(src: Path, folder: Path) -> Path:
    """The model after the quantizer's own pre-processing (shape inference, constant folding), which
    lets it quantize more operators; the original where pre-processing fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = folder / "preprocessed.onnx"
    # symbolic shape inference needs sympy and does not know every operator: without it, then
    # without pre-processing at all
    for skip_symbolic in (False, True):
        try:
            quant_pre_process(str(src), str(out), skip_symbolic_shape=skip_symbolic)
            return out
        except Exception:
            out.unlink(missing_ok=True)
    return src


def _drop_preprocessed(model: Path, src: Path) -> None:
    """The folder holds the variant alone: it may be served as a model version as it is."""
    if model != src:
        model.unlink(missing_ok=True)


def _check_loads(path: Path) -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _check_quantized(path: Path) -> None:
    import onnx

    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    if not ops & _QUANT_OPS:
        raise ValueError("nothing to quantize: no operator of this model has an int8 form "
                         "(the result would be the fp32 model)")


def _external_files(path: Path) -> list[str]:
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    locations: set[str] = set()
    tensors: list[Any] = list(model.graph.initializer)
    for t in tensors:
        if uses_external_data(t):
            locations.add(ExternalDataInfo(t).location)
    return sorted(locations)


def _size(path: Path) -> int:
    return path.stat().st_size + sum((path.parent / loc).stat().st_size for loc in _external_files(path))
