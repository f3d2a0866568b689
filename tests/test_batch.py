"""`gateway batch`: offline scoring from Parquet/CSV/JSON lines to Parquet/CSV, run as users run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from gateway.backends.onnx import OnnxBackend
from gateway.batch.columns import expand
from gateway.batch.job import BadRows, Job, progress_line, run
from gateway.demo import build_demo_repository


def gateway_batch(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "batch", "-q", *map(str, args)], capture_output=True,
                          text=True, timeout=300, check=check)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_repository(tmp_path_factory.mktemp("repo"))


def reference(repo: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(repo / "mlp" / "2" / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {"INPUT0": x})[0]  # type: ignore[no-any-return]


def write_parts(d: Path, parts: int, rows: int, seed: int = 0) -> np.ndarray:
    d.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(seed).standard_normal((parts * rows, 64)).astype(np.float32)
    for i in range(parts):
        chunk = x[i * rows:(i + 1) * rows]
        t = pa.table({"id": np.arange(i * rows, (i + 1) * rows),
                      "INPUT0": pa.FixedSizeListArray.from_arrays(pa.array(chunk.ravel()), 64)})
        pq.write_table(t, d / f"in-{i:02d}.parquet", row_group_size=10_000)
    return x


def read_out(d: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(d.glob("part-*.parquet"))])


def test_outputs_equal_onnxruntime_and_keep_the_key_columns(repo: Path, tmp_path: Path) -> None:
    x = write_parts(tmp_path / "in", 4, 50_000)
    r = gateway_batch("--model-repository", repo, "-m", "mlp", "--input", tmp_path / "in", "--output",
                      tmp_path / "out", "--keep", "id")
    assert "200000 rows" in r.stdout and "4 scored, 0 already done" in r.stdout, r.stdout
    t = read_out(tmp_path / "out")
    assert t.column_names == ["id", "OUTPUT0"] and t.num_rows == 200_000
    assert np.array_equal(t.column("id").to_numpy(), np.arange(200_000))
    got = np.asarray(t.column("OUTPUT0").combine_chunks().flatten()).reshape(-1, 10)
    assert np.allclose(got, reference(repo, x), atol=1e-5)
    assert (tmp_path / "out" / "_SUCCESS").exists()
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_a_job_killed_halfway_resumes_without_computing_a_part_twice(repo: Path, tmp_path: Path) -> None:
    x = write_parts(tmp_path / "in", 8, 60_000)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "gateway", "batch", "-q", "--model-repository", str(repo), "-m", "mlp",
           "--input", str(tmp_path / "in"), "--output", str(out), "--keep", "id", "--batch-size", "512"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 120
    while not (out / "part-00002.parquet").exists():
        assert proc.poll() is None and time.monotonic() < end, "the job ended before it could be killed"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(out.glob("part-*.parquet")))
    assert 3 <= done_before < 8 and not (out / "_SUCCESS").exists()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    # counted: the rerun computes exactly the rows of the parts the killed run had not finished
    assert f"{(8 - done_before) * 60_000} rows in" in r.stdout, r.stdout
    assert f"{8 - done_before} scored, {done_before} already done" in r.stdout, r.stdout
    t = read_out(out)
    assert np.array_equal(t.column("id").to_numpy(), np.arange(480_000))  # no part missing, none twice
    got = np.asarray(t.column("OUTPUT0").combine_chunks().flatten()).reshape(-1, 10)
    assert np.allclose(got, reference(repo, x), atol=1e-5)


def session(model: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # as the repository configures it
    return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])


def test_a_million_rows_equal_onnxruntime_run_on_the_same_batches(repo: Path, tmp_path: Path) -> None:
    sizes = [300_000, 250_000, 200_000, 150_000, 100_000]  # 1M rows in 5 parts, uneven tails
    x = np.random.default_rng(7).standard_normal((sum(sizes), 64)).astype(np.float32)
    (tmp_path / "in").mkdir()
    starts = np.cumsum([0, *sizes])
    for i, (a, b) in enumerate(zip(starts[:-1], starts[1:], strict=True)):
        pq.write_table(pa.table({"id": np.arange(a, b), "INPUT0": pa.FixedSizeListArray.from_arrays(
            pa.array(x[a:b].ravel()), 64)}), tmp_path / "in" / f"p{i}.parquet", row_group_size=100_000)
    s = run(Job(repo, "mlp", str(tmp_path / "in"), tmp_path / "out", keep=("id",), quiet=True))
    assert (s.rows, s.rejected, s.parts_done, s.parts_skipped) == (1_000_000, 0, 5, 0)
    t = read_out(tmp_path / "out")
    assert np.array_equal(t.column("id").to_numpy(), np.arange(1_000_000))
    got = np.asarray(t.column("OUTPUT0").combine_chunks().flatten()).reshape(-1, 10)
    # the same batches onnxruntime's own loop makes (1024 rows from each part's start): the same
    # kernels on the same rows, so the same bits
    sess = session(repo / "mlp" / "2" / "model.onnx")
    want = np.concatenate([sess.run(None, {"INPUT0": x[s:min(s + 1024, b)]})[0]
                           for a, b in zip(starts[:-1], starts[1:], strict=True) for s in range(a, b, 1024)])
    np.testing.assert_array_equal(got, want)


def test_several_instances_all_compute_and_keep_the_row_order(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    repo = build_demo_repository(tmp_path / "repo")
    cfg = repo / "mlp" / "config.toml"
    cfg.write_text(cfg.read_text() + "instances = 3\n")
    x = write_parts(tmp_path / "in", 2, 70_000, seed=5)
    used: set[int] = set()
    real = OnnxBackend._run

    def counting(self: OnnxBackend, sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> object:
        if feeds["INPUT0"].shape[0] == 500:  # the job's batches (the warm-up's are 64 rows)
            used.add(id(sess))
        return real(self, sess, feeds)

    monkeypatch.setattr(OnnxBackend, "_run", counting)
    s = run(Job(repo, "mlp", str(tmp_path / "in"), tmp_path / "out", keep=("id",), batch_size=500,
                quiet=True))
    assert s.rows == 140_000 and len(used) == 3  # every instance ran batches
    t = read_out(tmp_path / "out")
    assert np.array_equal(t.column("id").to_numpy(), np.arange(140_000))
    got = np.asarray(t.column("OUTPUT0").combine_chunks().flatten()).reshape(-1, 10)
    np.testing.assert_array_equal(got, session(repo / "mlp" / "2" / "model.onnx").run(None, {"INPUT0": x})[0])


def test_progress_shows_rows_per_second_and_an_eta_unless_quiet(repo: Path, tmp_path: Path) -> None:
    write_parts(tmp_path / "in", 2, 5_000)
    cmd = [sys.executable, "-m", "gateway", "batch", "--model-repository", str(repo), "-m", "mlp", "--input",
           str(tmp_path / "in")]
    r = subprocess.run([*cmd, "--output", str(tmp_path / "o1")], capture_output=True, text=True, timeout=120,
                       check=True)
    assert "rows/s" in r.stderr and "ETA" in r.stderr and "/10,000 rows" in r.stderr, r.stderr
    assert "10000 rows in" in r.stdout and "0 rejected; parts: 2 scored, 0 already done" in r.stdout, r.stdout
    r = subprocess.run([*cmd, "--output", str(tmp_path / "o2"), "-q"], capture_output=True, text=True,
                       timeout=120, check=True)
    assert r.stderr == "" and "10000 rows in" in r.stdout
    # rows of CSV or JSON are not known before reading them: no total, no ETA
    line = progress_line(0, 3, 2000, 10_000, 1.0)
    assert line == "part 1/3: 2,000/10,000 rows (20 %), 2,000 rows/s, ETA 0:04"
    assert progress_line(1, 3, 2000, None, 2.0) == "part 2/3: 2,000 rows, 1,000 rows/s"


def bad_input(path: Path) -> None:
    rows = [[0.5] * 64 for _ in range(10)]
    rows[3] = None  # a null row
    rows[7] = [0.5] * 63  # the wrong width
    rows[8] = [0.5] * 63 + [None]  # a null inside
    pq.write_table(pa.table({"id": list(range(10)), "INPUT0": pa.array(rows, pa.list_(pa.float32()))}), path)


def test_bad_rows_fail_the_job_by_number_or_go_to_rejects(repo: Path, tmp_path: Path) -> None:
    bad_input(tmp_path / "bad.parquet")
    r = gateway_batch("--model-repository", repo, "-m", "mlp", "--input", tmp_path / "bad.parquet", "--output",
                      tmp_path / "out", "--keep", "id", check=False)
    assert r.returncode == 1 and "3 bad row(s)" in r.stderr and "row 3, 7, 8" in r.stderr, r.stderr
    assert not list((tmp_path / "out").glob("part-*"))  # nothing half-written
    r = gateway_batch("--model-repository", repo, "-m", "mlp", "--input", tmp_path / "bad.parquet", "--output",
                      tmp_path / "out2", "--keep", "id", "--on-error", "skip")
    assert "7 rows" in r.stdout and "3 rejected" in r.stdout, r.stdout
    assert read_out(tmp_path / "out2").column("id").to_pylist() == [0, 1, 2, 4, 5, 6, 9]
    rejects = pq.read_table(tmp_path / "out2" / "rejects" / "part-00000.parquet")
    assert rejects.column("row").to_pylist() == [3, 7, 8] and rejects.column("id").to_pylist() == [3, 7, 8]


def test_a_bad_row_in_a_later_part_fails_after_the_parts_before_it_are_complete(repo: Path,
                                                                                tmp_path: Path) -> None:
    write_parts(tmp_path / "in", 1, 1000)  # in-00: complete before the failure
    bad_input(tmp_path / "in" / "in-01.parquet")  # rows 1003, 1007, 1008 of the input are bad
    write_parts(tmp_path / "more", 1, 1000)
    (tmp_path / "more" / "in-00.parquet").rename(tmp_path / "in" / "in-02.parquet")
    with pytest.raises(BadRows, match="row 1003, 1007, 1008"):
        run(Job(repo, "mlp", str(tmp_path / "in"), tmp_path / "out", keep=("id",), quiet=True))
    # the part before is complete; no temporary file, no _SUCCESS
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == ["part-00000.parquet"]
    assert pq.read_table(tmp_path / "out" / "part-00000.parquet").num_rows == 1000


def test_scalar_csv_columns_mapped_to_an_input_and_csv_output(repo: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(3).standard_normal((500, 64)).astype(np.float32)
    pacsv.write_csv(pa.table({"key": [f"u{i}" for i in range(500)], **{f"f{j}": x[:, j] for j in range(64)}}),
                    tmp_path / "in.csv")
    r = gateway_batch("--model-repository", repo, "-m", "mlp", "--input", tmp_path / "in.csv", "--output",
                      tmp_path / "out", "--keep", "key", "--map", "INPUT0=f0..f63", "--format", "csv")
    assert "500 rows" in r.stdout, r.stdout + r.stderr
    t = pacsv.read_csv(tmp_path / "out" / "part-00000.csv")
    assert t.column("key").to_pylist()[:2] == ["u0", "u1"] and t.num_rows == 500
    got = np.column_stack([t.column(f"OUTPUT0_{j}").to_numpy() for j in range(10)])
    assert np.allclose(got, reference(repo, x), atol=1e-4)  # CSV has no lists: one column per value


def test_json_lines_input_and_a_missing_column_is_named(repo: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(4).standard_normal((20, 64)).astype(np.float32)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": i, "INPUT0": row.tolist()}) + "\n"
                                               for i, row in enumerate(x)))
    r = gateway_batch("--model-repository", repo, "-m", "mlp", "--input", tmp_path / "in.jsonl", "--output",
                      tmp_path / "out", "--keep", "id")
    got = np.asarray(read_out(tmp_path / "out").column("OUTPUT0").combine_chunks().flatten()).reshape(-1, 10)
    assert "20 rows" in r.stdout and np.allclose(got, reference(repo, x), atol=1e-4)
    r = gateway_batch("--model-repository", repo, "-m", "mlp", "--input", tmp_path / "in.jsonl", "--output",
                      tmp_path / "out3", "--map", "INPUT0=features", check=False)
    assert r.returncode == 1 and "column(s) features" in r.stderr, r.stderr


def test_column_ranges_expand() -> None:
    assert expand("f0..f3") == ("f0", "f1", "f2", "f3")
    assert expand("x1..3,y") == ("x1", "x2", "x3", "y")
    assert expand("a, b") == ("a", "b")
