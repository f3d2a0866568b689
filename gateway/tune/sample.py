"""The rows a model's variants are calibrated and compared on: the user's data, or random inputs.

Accuracy measured on random inputs says how far a variant's outputs drift, not whether its answers
stay right on the data it will serve, so a sample always says which of the two it is (``real``,
``source``) and the report can say so next to every number drawn from it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gateway.types import DATATYPE_TO_NUMPY, ONNX_TO_DATATYPE

RANDOM_SOURCE = "random (no --data: accuracy not measured on real data)"
# Random rows are capped by bytes as well as by count: a 512-row sample of a 224x224 image model is
# 300 MB, more than calibration or a drift estimate needs.
RANDOM_BYTES = 64 << 20


@dataclass
class Sample:
    """Each input's rows stacked along the first (batch) dimension; every input has ``rows`` of them."""

    inputs: dict[str, np.ndarray]
    rows: int
    real: bool
    source: str

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        """Consecutive slices of ``size`` rows (the last one may be shorter); views, not copies."""
        if size < 1:
            raise ValueError(f"batch size must be at least 1, not {size}")
        for start in range(0, self.rows, size):
            yield {name: arr[start:start + size] for name, arr in self.inputs.items()}


@dataclass(frozen=True)
class ModelInput:
    """An input as onnxruntime reports it: dims that are symbolic or unknown are None."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]


def model_inputs(model_path: Path) -> list[ModelInput]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # only the signature is read
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    out = []
    for arg in sess.get_inputs():
        datatype = ONNX_TO_DATATYPE.get(arg.type)
        if datatype is None:
            raise ValueError(f"input '{arg.name}' has type {arg.type}, which the gateway does not serve")
        dims = tuple(d if isinstance(d, int) and d >= 0 else None for d in arg.shape)
        out.append(ModelInput(arg.name, DATATYPE_TO_NUMPY[datatype], dims))
    return out


def fixed_batch(model_path: Path) -> int | None:
    """The batch size a model with a fixed first dimension takes (None: any)."""
    firsts = {i.shape[0] for i in model_inputs(model_path) if i.shape}
    return next(iter(firsts)) if len(firsts) == 1 and None not in firsts else None


def load_sample(data: Path | None, model_path: Path, max_rows: int = 512, seed: int = 0) -> Sample:
    """``data``: ``.jsonl`` (one KServe v2 infer request per line), ``.npz`` (an array per input) or
    ``.parquet`` (a column per input; list columns for inputs with more than one value a row).
    None: random inputs from the model's signature, deterministic by ``seed``. At most ``max_rows``.

    Names, dtypes and dims are checked against the model; a mismatch raises ValueError naming it.
    Floats are cast between widths and integers between types when the values fit (a Parquet file
    written from pandas holds float64), as a client's own conversion would; other kinds never are.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, not {max_rows}")
    specs = model_inputs(model_path)
    if data is None:
        return _random(specs, max_rows, seed)
    data = Path(data)
    if not data.exists():
        raise ValueError(f"{data}: no such file")
    suffix = data.suffix.lower()
    if suffix == ".jsonl":
        arrays = _jsonl(data, model_path.parent.parent.name or "model")
    elif suffix == ".npz":
        with np.load(data, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    elif suffix == ".parquet":
        arrays = _parquet(data, max_rows)
    else:
        raise ValueError(f"{data}: unknown data format '{suffix}' (give .jsonl, .npz or .parquet)")
    inputs = _check(arrays, specs, str(data))
    rows = next(iter(inputs.values())).shape[0] if inputs else 0
    if rows == 0:
        raise ValueError(f"{data}: no rows")
    rows = min(rows, max_rows)
    return Sample({k: np.ascontiguousarray(v[:rows]) for k, v in inputs.items()}, rows, True, str(data))


def _random(specs: Sequence[ModelInput], max_rows: int, seed: int) -> Sample:
    rng = np.random.default_rng(seed)
    for spec in specs:
        if not spec.shape:
            raise ValueError(f"input '{spec.name}' is a scalar (no batch dimension): give --data")
        if spec.dtype.kind == "O":
            raise ValueError(f"input '{spec.name}' is a string tensor: random data cannot feed it, give --data")
    fixed = [s.shape[0] for s in specs if s.shape[0] is not None]
    row_shapes = {s.name: tuple(1 if d is None else d for d in s.shape[1:]) for s in specs}
    if fixed:  # a fixed first dim: whole batches of it
        per_batch = fixed[0]
        batch_bytes = sum(int(np.prod(row_shapes[s.name])) * s.dtype.itemsize * per_batch for s in specs)
        batches = max(1, min(max_rows // per_batch, RANDOM_BYTES // max(batch_bytes, 1)))
        rows = batches * per_batch
    else:
        row_bytes = sum(int(np.prod(row_shapes[s.name])) * s.dtype.itemsize for s in specs)
        rows = max(1, min(max_rows, RANDOM_BYTES // max(row_bytes, 1)))
    inputs = {}
    for spec in specs:
        shape = (rows, *row_shapes[spec.name])
        if spec.dtype.kind == "f":
            arr = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind in "iu":
            # small and non-negative: valid as an index, a token id or a category for most models
            arr = rng.integers(0, 10, size=shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            arr = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise ValueError(f"input '{spec.name}' has dtype {spec.dtype}: random data cannot feed it, give --data")
        inputs[spec.name] = arr
    return Sample(inputs, rows, False, RANDOM_SOURCE)


def _jsonl(path: Path, model: str) -> dict[str, np.ndarray]:
    # the gateway's own decoder: a body the server would accept is a line this accepts, and the
    # datatype and shape checks are the server's
    from gateway.errors import GatewayError
    from gateway.front.http.codec import decode_infer

    parts: dict[str, list[np.ndarray]] = {}
    names: set[str] | None = None
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                req, _ = decode_infer(line.strip(), -1, model, "")
            except GatewayError as e:
                raise ValueError(f"{path}:{lineno}: {e}") from None
            if names is None:
                names = set(req.inputs)
            elif set(req.inputs) != names:
                raise ValueError(f"{path}:{lineno}: inputs {sorted(req.inputs)} differ from line 1's {sorted(names)}")
            rows = {a.shape[0] if a.ndim else None for a in req.inputs.values()}
            if len(rows) != 1 or None in rows:
                raise ValueError(f"{path}:{lineno}: the inputs must share a first (batch) dimension")
            for name, arr in req.inputs.items():
                parts.setdefault(name, []).append(arr)
    if not parts:
        raise ValueError(f"{path}: no requests")
    try:
        return {name: np.concatenate(arrs) for name, arrs in parts.items()}
    except ValueError as e:
        raise ValueError(f"{path}: the requests' shapes differ past the batch dimension: {e}") from None


def _parquet(path: Path, max_rows: int) -> dict[str, np.ndarray]:
    try:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("reading .parquet needs pyarrow: pip install 'inference-gateway[batch]'") from None
    import pyarrow as pa

    table = pq.read_table(path).slice(0, max_rows)
    out = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if col.null_count:
            raise ValueError(f"{path}: column '{name}' has nulls")
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
            if pa.types.is_fixed_size_list(col.type):
                width = col.type.list_size
            else:
                widths = np.diff(np.asarray(col.offsets))
                if len(widths) and (widths != widths[0]).any():
                    raise ValueError(f"{path}: column '{name}' has lists of different lengths")
                width = int(widths[0]) if len(widths) else 0
            values = pc.list_flatten(col)
            if values.null_count:
                raise ValueError(f"{path}: column '{name}' has nulls inside its lists")
            out[name] = values.to_numpy(zero_copy_only=False).reshape(len(col), width)
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out


def _check(arrays: dict[str, np.ndarray], specs: Sequence[ModelInput], source: str) -> dict[str, np.ndarray]:
    wanted = {s.name for s in specs}
    unknown = sorted(set(arrays) - wanted)
    if unknown:
        raise ValueError(f"{source}: {', '.join(repr(u) for u in unknown)} is not an input of the model "
                         f"(its inputs: {', '.join(sorted(wanted))})")
    missing = sorted(wanted - set(arrays))
    if missing:
        raise ValueError(f"{source}: the model's input(s) {', '.join(repr(m) for m in missing)} are missing")
    out = {}
    rows = None
    for spec in specs:
        arr = np.asarray(arrays[spec.name])
        if arr.ndim == 1 and len(spec.shape) == 2 and spec.shape[1] in (1, None):
            arr = arr.reshape(-1, 1)  # a scalar column for a [-1, 1] input
        if arr.ndim != len(spec.shape):
            raise ValueError(f"{source}: input '{spec.name}' has shape {list(arr.shape)}, the model takes "
                             f"{_dims(spec.shape)}")
        for got, want in zip(arr.shape[1:], spec.shape[1:], strict=True):
            if want is not None and got != want:
                raise ValueError(f"{source}: input '{spec.name}' has shape {list(arr.shape)}, the model takes "
                                 f"{_dims(spec.shape)}")
        if rows is None:
            rows = arr.shape[0]
        elif arr.shape[0] != rows:
            raise ValueError(f"{source}: input '{spec.name}' has {arr.shape[0]} rows, the others {rows}")
        out[spec.name] = _cast(arr, spec, source)
    return out


def _cast(arr: np.ndarray, spec: ModelInput, source: str) -> np.ndarray:
    want = spec.dtype
    if arr.dtype == want:
        return arr
    if want.kind == "O" and arr.dtype.kind in "OSU":
        return arr.astype(object)
    if want.kind == "f" and arr.dtype.kind == "f":
        return arr.astype(want)
    if want.kind in "iu" and arr.dtype.kind in "iu":
        info = np.iinfo(want)
        if arr.size == 0 or (arr.min() >= info.min and arr.max() <= info.max):
            return arr.astype(want)
        raise ValueError(f"{source}: input '{spec.name}' holds values outside {want}'s range")
    raise ValueError(f"{source}: input '{spec.name}' is {arr.dtype}, the model takes {want}")


def _dims(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape) + "]"
