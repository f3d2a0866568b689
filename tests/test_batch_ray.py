"""`gateway batch --engine ray`: the same job on Ray Data gives the local engine's output.

One local Ray instance (2 CPUs, no dashboard, on 127.0.0.1) is shared by the module's tests; they
are skipped, saying why, where the ``ray`` extra is not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from test_batch import bad_input, reference, write_parts

from gateway.batch.job import BadRows, Job, run
from gateway.demo import build_demo_repository

ROOT = Path(__file__).resolve().parent.parent
# Ray Data warns (UserWarning) when an input gives fewer blocks than actors; pytest makes warnings errors
pytestmark = pytest.mark.filterwarnings("ignore:The minimum number of concurrent actors:UserWarning")


def ray_env() -> dict[str, str]:
    """No usage stats; loopback only (Ray binds the host's address unless told it is no cluster, and
    ignores ``_node_ip_address`` for a local start); this checkout importable in the workers."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": path}


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """The module's local Ray (its address); started once, shut down after the last test."""
    saved = {k: os.environ.get(k) for k in ray_env()}
    os.environ.update(ray_env())  # before Ray's first import: it reads them then
    ray = pytest.importorskip("ray", reason="the Ray engine needs the ray extra: pip install 'inference-gateway[ray]'")
    # (the workers inherit the environment of the Ray it starts: PYTHONPATH needs no runtime_env)
    ctx = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield str(ctx.address_info["gcs_address"])
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_repository(tmp_path_factory.mktemp("repo"))


def run_ray(job: Job, concurrency: int = 2) -> Any:
    from gateway.batch.ray_engine import run_ray as run_on_ray

    return run_on_ray(job, concurrency)


def read_dir(d: Path, key: str = "id") -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(d.glob("*.parquet"))]).sort_by(key)


def test_the_same_job_on_ray_gives_the_local_engines_output(cluster: str, repo: Path, tmp_path: Path) -> None:
    x = write_parts(tmp_path / "in", 3, 3000)
    job = Job(repo, "mlp", str(tmp_path / "in"), tmp_path / "ray", keep=("id",), batch_size=512, quiet=True)
    s = run_ray(job)
    run(Job(repo, "mlp", str(tmp_path / "in"), tmp_path / "local", keep=("id",), batch_size=512, quiet=True))
    got, want = read_dir(tmp_path / "ray"), read_dir(tmp_path / "local")
    assert s.rows == 9000 and s.rejected == 0 and got.num_rows == 9000
    assert got.schema.equals(want.schema) and got.equals(want)  # same rows, the same float32 values exactly
    assert np.allclose(np.asarray(got.column("OUTPUT0").combine_chunks().flatten()).reshape(-1, 10),
                       reference(repo, x), atol=1e-5)
    out = sorted(p.name for p in (tmp_path / "ray").iterdir())
    assert "_SUCCESS" in out and "_ray_tmp" not in out and not any(n.startswith("part-") for n in out)
    with pytest.raises(FileExistsError, match="does not resume"):  # no resume: an earlier output is refused
        run_ray(job)


def test_bad_rows_fail_the_job_by_key_or_go_to_rejects(cluster: str, repo: Path, tmp_path: Path) -> None:
    bad_input(tmp_path / "bad.parquet")
    job = Job(repo, "mlp", str(tmp_path / "bad.parquet"), tmp_path / "out", keep=("id",), quiet=True)
    with pytest.raises(BadRows, match=r"bad\.parquet: 3 bad row\(s\).*id 3, 7, 8"):
        run_ray(job)
    assert not list((tmp_path / "out").glob("*.parquet"))  # a failed job leaves no output file
    job.output, job.on_error = tmp_path / "skip", "skip"
    s = run_ray(job)
    assert s.rows == 7 and s.rejected == 3
    assert read_dir(tmp_path / "skip").column("id").to_pylist() == [0, 1, 2, 4, 5, 6, 9]
    rejects = pq.read_table(tmp_path / "skip" / "rejects" / "rejects.parquet").sort_by("id")
    assert rejects.column("id").to_pylist() == [3, 7, 8]
    assert {Path(f).name for f in rejects.column("file").to_pylist()} == {"bad.parquet"}


def test_the_cli_runs_a_csv_job_on_the_cluster_at_ray_address(cluster: str, repo: Path, tmp_path: Path) -> None:
    import ray

    x = np.random.default_rng(3).standard_normal((400, 64)).astype(np.float32)
    pacsv.write_csv(pa.table({"key": [f"u{i:03d}" for i in range(400)], **{f"f{j}": x[:, j] for j in range(64)}}),
                    tmp_path / "in.csv")
    env = {**os.environ, **ray_env(), "RAY_ADDRESS": cluster}
    r = subprocess.run([sys.executable, "-m", "gateway", "batch", "-q", "--engine", "ray", "--concurrency", "2",
                        "--model-repository", str(repo), "-m", "mlp", "--input", str(tmp_path / "in.csv"),
                        "--output", str(tmp_path / "out"), "--keep", "key", "--map", "INPUT0=f0..f63",
                        "--format", "csv"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0 and "400 rows" in r.stdout, r.stdout + r.stderr
    t = pa.concat_tables([pacsv.read_csv(p) for p in (tmp_path / "out").glob("*.csv")]).sort_by("key")
    got = np.column_stack([t.column(f"OUTPUT0_{j}").to_numpy() for j in range(10)])
    assert t.column("key").to_pylist() == [f"u{i:03d}" for i in range(400)]
    assert np.allclose(got, reference(repo, x), atol=1e-4)
    assert ray.cluster_resources().get("CPU") == 2  # the CLI left the cluster it joined running


def test_without_ray_the_engine_says_which_extra_to_install(repo: Path, tmp_path: Path) -> None:
    code = "import sys; sys.modules['ray'] = None; from gateway.cli import main; sys.exit(main())"
    r = subprocess.run([sys.executable, "-c", code, "batch", "--engine", "ray", "--model-repository", str(repo),
                        "-m", "mlp", "--input", str(tmp_path), "--output", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "gateway batch --engine ray needs Ray: pip install 'inference-gateway[ray]'" in r.stderr
