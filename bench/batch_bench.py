"""`gateway batch` rows/s, Parquet to Parquet, against onnxruntime in a tight in-process loop on the
same rows (the floor: no reading, converting or writing), in one run; with the ``ray`` extra, also
``--engine ray --concurrency 2`` on a local Ray the job starts (2 actors, one onnxruntime thread each).

    python bench/batch_bench.py [ROWS=1000000] [BATCH=1024]

The demo mlp (64->256->256->10 FP32, one onnxruntime thread as the demo configures it), ROWS random
rows in 4 Parquet parts. The job's rows/s is its own (scoring, from the first read to the last
rename; the imports and the model load are excluded like the floor's session creation). Same
machine, same run. The floor uses one core, the job two (the model on one, reading, converting and
writing on the other): anything else running on the machine lowers the ratio, so compare the best
of several runs.
Ray's rows/s is from the start of its Dataset execution to the last file moved in (its actors'
start and model load included, Ray's own start excluded).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq

from gateway.demo import build_demo_repository


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        repo = build_demo_repository(tmp / "repo")
        x = np.random.default_rng(0).standard_normal((rows, 64)).astype(np.float32)
        (tmp / "in").mkdir()
        per = rows // 4
        for i in range(4):
            chunk = x[i * per:(i + 1) * per]
            pq.write_table(pa.table({"id": np.arange(i * per, (i + 1) * per),
                                     "INPUT0": pa.FixedSizeListArray.from_arrays(pa.array(chunk.ravel()), 64)}),
                           tmp / "in" / f"p{i}.parquet", row_group_size=65536)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(repo / "mlp" / "2" / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        t0 = time.perf_counter()
        for s in range(0, per * 4, batch):
            sess.run(None, {"INPUT0": x[s:s + batch]})
        floor = per * 4 / (time.perf_counter() - t0)
        job = _job(repo, tmp, "local", batch)
        line = (f"{per * 4} rows, batch {batch}: onnxruntime loop {floor:,.0f} rows/s; gateway batch {job:,.0f} rows/s "
                f"(Parquet to Parquet, ratio {job / floor:.2f})")
        if importlib.util.find_spec("ray") is None:
            print(line + "; --engine ray: not installed (pip install 'inference-gateway[ray]')")
            return
        on_ray = _job(repo, tmp, "ray", batch)
        print(line + f"; --engine ray, 2 actors {on_ray:,.0f} rows/s (ratio {on_ray / floor:.2f} of the loop, "
                     f"{on_ray / job:.2f} of the local engine)")


def _job(repo: Path, tmp: Path, engine: str, batch: int) -> float:
    cmd = [sys.executable, "-m", "gateway", "batch", "-q", "--engine", engine, "--concurrency", "2",
           "--model-repository", str(repo), "-m", "mlp", "--input", str(tmp / "in"), "--output",
           str(tmp / f"out-{engine}"), "--keep", "id", "--batch-size", str(batch)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return float(re.search(r"\(([\d,]+) rows/s\)", out).group(1).replace(",", ""))  # type: ignore[union-attr]


if __name__ == "__main__":
    main()
