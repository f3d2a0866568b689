"""Arrow columns to a model's input tensors and its outputs back to columns, without per-row Python.

An input is fed by one column of the same name (a fixed-size or variable list column for a
``[-1, N]`` input, a scalar column for ``[-1]`` or ``[-1, 1]``), or, by mapping, by several scalar
columns (``features=f0..f63``). Rows with a null or a list of the wrong width are bad rows: they are
found with Arrow kernels and reported by number, never fed and never dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gateway.types import DATATYPE_TO_NUMPY, TensorSpec


class MappingError(ValueError):
    """The input data cannot feed the model as mapped; the message names the input and the columns."""


@dataclass(frozen=True)
class Source:
    """Where one model input comes from: one column, or several scalar columns side by side."""

    input: TensorSpec
    columns: tuple[str, ...]

    @property
    def width(self) -> int:
        """Values per row (the input's dims after the batch dimension, multiplied)."""
        dims = self.input.shape[1:]
        if any(d < 0 for d in dims):
            raise MappingError(f"input '{self.input.name}' has a variable dimension {list(self.input.shape)}: "
                               "batch scoring needs fixed widths")
        return int(np.prod(dims)) if dims else 1


def expand(spec: str) -> tuple[str, ...]:
    """``f0..f63`` -> f0, f1, ..., f63; ``a,b,c`` -> a, b, c."""
    out: list[str] = []
    for part in spec.split(","):
        m = re.fullmatch(r"(.*?)(\d+)\.\.(?:\1)?(\d+)", part.strip())
        if m:
            prefix, lo, hi = m.group(1), int(m.group(2)), int(m.group(3))
            out += [f"{prefix}{i}" for i in range(lo, hi + 1)]
        elif part.strip():
            out.append(part.strip())
    return tuple(out)


def plan(inputs: Sequence[TensorSpec], schema: pa.Schema, mapping: Mapping[str, str]) -> list[Source]:
    names = set(schema.names)
    out = []
    for spec in inputs:
        cols = expand(mapping[spec.name]) if spec.name in mapping else (spec.name,)
        missing = [c for c in cols if c not in names]
        if missing:
            raise MappingError(f"input '{spec.name}' needs column(s) {', '.join(missing)}, which the data lacks "
                               f"(columns: {', '.join(schema.names)}); map it with --map {spec.name}=COLUMNS")
        src = Source(spec, cols)
        if len(cols) > 1 and len(cols) != src.width:
            raise MappingError(f"input '{spec.name}' takes {src.width} values per row but is mapped to "
                               f"{len(cols)} columns")
        out.append(src)
    return out


def tensors(batch: pa.RecordBatch, sources: Sequence[Source]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(the input tensors of the good rows, a boolean mask of the bad rows)."""
    n = batch.num_rows
    bad = np.zeros(n, dtype=bool)
    flats: list[tuple[Source, pa.Array | list[pa.Array]]] = []
    for src in sources:
        if len(src.columns) > 1:
            arrays = [batch.column(c) for c in src.columns]
            for a in arrays:
                if a.null_count:
                    bad |= np.asarray(a.is_null())
            flats.append((src, arrays))
            continue
        col = batch.column(src.columns[0])
        if col.null_count:
            bad |= np.asarray(col.is_null())
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
            # widths from the type or the offsets, not pc.list_value_length + fill_null: the latter
            # imports pandas on first use (~0.3 s of a job's time, measured)
            if pa.types.is_fixed_size_list(col.type):
                if col.type.list_size != src.width:
                    bad[:] = True
            else:
                bad |= np.diff(np.asarray(col.offsets)) != src.width
            values = pc.list_flatten(col)
            if values.null_count:  # a null inside a list: the rows holding one are bad
                parents = pc.list_parent_indices(col).to_numpy(zero_copy_only=False)
                bad[parents[np.asarray(values.is_null())]] = True
        elif src.width != 1:
            raise MappingError(f"input '{src.input.name}' takes {src.width} values per row but column "
                               f"'{src.columns[0]}' holds one ({col.type}); map it to a list column or to "
                               f"{src.width} columns")
        flats.append((src, col))
    good = ~bad
    feeds: dict[str, np.ndarray] = {}
    m = int(good.sum())
    for src, data in flats:
        dtype = DATATYPE_TO_NUMPY[src.input.datatype]
        shape = (m, *src.input.shape[1:])
        if isinstance(data, list):
            mat = np.column_stack([a.to_numpy(zero_copy_only=False) for a in data])
            feeds[src.input.name] = mat[good].astype(dtype, copy=False).reshape(shape)
            continue
        if pa.types.is_list(data.type) or pa.types.is_large_list(data.type) or pa.types.is_fixed_size_list(data.type):
            rows = data.filter(pa.array(good)) if bad.any() else data
            values = pc.list_flatten(rows).to_numpy(zero_copy_only=False)
            feeds[src.input.name] = values.astype(dtype, copy=False).reshape(shape)
        else:
            values = data.to_numpy(zero_copy_only=False)
            feeds[src.input.name] = values[good].astype(dtype, copy=False).reshape(shape)
    return feeds, bad


def output_columns(outputs: Mapping[str, np.ndarray], scalar: bool = False) -> dict[str, pa.Array]:
    """One column per output: a plain column for one value per row, else a fixed-size list column
    of the row's values (flattened in C order). ``scalar`` (CSV, which has no list type): one column
    per value instead, ``NAME_0``, ``NAME_1``, ..."""
    cols = {}
    for name, arr in outputs.items():
        n = arr.shape[0] if arr.ndim else 1
        flat = np.ascontiguousarray(arr).reshape(n, -1)
        if flat.shape[1] == 1:
            cols[name] = pa.array(flat[:, 0])
        elif scalar:
            for j in range(flat.shape[1]):
                cols[f"{name}_{j}"] = pa.array(flat[:, j])
        else:
            cols[name] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
    return cols
