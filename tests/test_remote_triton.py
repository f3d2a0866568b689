"""The ``triton`` backend against a real tritonserver: PyTriton 0.7 (Triton 2.51, CPU) as the remote tier.

``tests/test_remote.py`` runs our own gateways as the remote servers; here they are Triton itself,
each serving ``gateway.demo.mlp_model(seed=7)`` with onnxruntime inside a PyTriton-bound function
(``tests/pytriton/serve.py``), in a venv of its own (PyTriton needs numpy<2) that
``tests/pytriton/provision.sh`` makes under ``.pytriton-venv/`` (``PYTRITON_VENV`` overrides it;
``.ci/run`` provisions it first). Without network to install it the module is skipped, except under
CI, where it fails; any other provisioning failure fails.

Each server is its own process group on free ports with its own workspace; teardown stops it
(SIGTERM, PyTriton's clean stop) and kills the group if it lingers. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from test_cli import free_port
from test_remote import post, stats
from tritonclient.utils import InferenceServerException

from gateway.demo import mlp_model
from gateway.testing import ServerThread

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "tests" / "pytriton"
VENV = Path(os.environ.get("PYTRITON_VENV") or ROOT / ".pytriton-venv")
NO_NETWORK = 75  # provision.sh's exit status when the package index is unreachable
HEALTH_S = 0.2  # the front's remote_health_interval_s
DELAY_MS = 300  # the slow remote's time per batch
X = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
SESSION = ort.InferenceSession(mlp_model(seed=7).SerializeToString(), providers=["CPUExecutionProvider"])


def reference(x: np.ndarray) -> np.ndarray:
    return SESSION.run(None, {"INPUT0": x})[0]  # type: ignore[no-any-return]


class TritonProcess:
    """``serve.py`` under the venv's interpreter: one tritonserver on fixed ports, restartable."""

    def __init__(self, python: str, model: Path, root: Path, *flags: str) -> None:
        self.python, self.model, self.root, self.flags = python, model, root, flags
        self.grpc_port, self.http_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "missing.log"
        self.starts = 0
        self.leftovers: set[Path] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def spawn(self) -> None:
        """Start the process (without waiting: ``wait_ready``); a fresh workspace and TMPDIR each time."""
        self.starts += 1
        run = self.root / f"run{self.starts}"
        (run / "tmp").mkdir(parents=True)
        self.log = run / "serve.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [self.python, str(HERE / "serve.py"), "--grpc-port", str(self.grpc_port), "--http-port",
                 str(self.http_port), "--model-file", str(self.model), "--name", "mlp", "--max-batch-size", "16",
                 "--workspace", str(run / "workspace"), *self.flags],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env=self.env(run))

    @staticmethod
    def env(run: Path) -> dict[str, str]:
        """Ours, less what would point the venv's interpreter at the project's packages."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["TMPDIR"] = str(run / "tmp")
        return env

    def wait_ready(self, timeout: float = 120) -> None:
        assert self.proc is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if b"\nready grpc=" in b"\n" + self.log.read_bytes():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"serve.py on {self.address} not ready (exit {self.proc.poll()}):\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        return self.log.read_bytes()[-n:].decode(errors="replace")

    def children(self, pid: int) -> list[int]:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def tritonserver_pid(self) -> int:
        assert self.proc is not None
        pids = [c for c in self.children(self.proc.pid) if Path(f"/proc/{c}/comm").read_text().strip() == "tritonserver"]
        assert len(pids) == 1, self.tail()
        return pids[0]

    def note_leftovers(self) -> None:
        """What a kill leaves behind, noted while the processes live, for ``stop`` to remove: Triton's
        copy of a model loaded through its API (/tmp/folderXXXXXX, a fixed template that ignores
        TMPDIR: each stub's argv names its model.py) and PyTriton's shared memory (/dev/shm, as
        mapped by any process of the server)."""
        assert self.proc is not None
        todo, seen = [self.proc.pid], []
        while todo:
            pid = todo.pop()
            seen.append(pid)
            with contextlib.suppress(OSError):
                todo += self.children(pid)
        for pid in seen:
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if len(argv) > 1 and argv[1].endswith(b"/1/model.py") and argv[1].startswith(b"/tmp/folder"):
                    self.leftovers.add(Path(argv[1].decode()).parent.parent)
                for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                    if "/dev/shm/" in line:
                        self.leftovers.add(Path(line[line.index("/dev/shm/"):].split(" ")[0]))

    def crash(self) -> None:
        """SIGKILL the tritonserver process; serve.py sees it gone, cleans up and exits."""
        self.note_leftovers()
        os.kill(self.tritonserver_pid(), signal.SIGKILL)

    def terminate(self) -> None:
        """Ask for a clean stop (SIGTERM) without waiting: ``stop`` waits, so several stop at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.note_leftovers()
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """A clean stop, bounded; then SIGKILL to the whole group: nothing outlives the test."""
        self.terminate()
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        for leftover in Path("/dev/shm").glob(f"pytrtion{proc.pid}-*"):  # PyTriton's regions, after a kill
            leftover.unlink(missing_ok=True)
        for path in self.leftovers:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        self.leftovers.clear()
        self.proc = None

    def inference_count(self) -> int:
        """Rows run by the model (Triton's statistics API: opened up by serve.py)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v2/models/mlp/stats", timeout=10) as r:
            return int(json.load(r)["model_stats"][0]["inference_count"])


@pytest.fixture(scope="module")
def triton_python() -> str:
    try:
        r = subprocess.run(["bash", str(HERE / "provision.sh"), str(VENV)], capture_output=True, text=True,
                           timeout=900, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"provisioning {VENV} took over {e.timeout} s")
    if r.returncode == NO_NETWORK and not os.environ.get("CI"):
        pytest.skip(f"PyTriton cannot be installed without network: {r.stderr.strip().splitlines()[-1]}")
    if r.returncode != 0:
        pytest.fail(f"provisioning {VENV} failed (exit {r.returncode}):\n{r.stderr[-4000:]}")
    return r.stdout.strip().splitlines()[-1]


def front_repo(root: Path, fast: list[str], slow: str) -> Path:
    def model(name: str, endpoints: list[str], extra: str = "") -> None:
        (root / name).mkdir(parents=True)
        eps = ", ".join(f'"{e}"' for e in endpoints)
        (root / name / "config.toml").write_text(
            f'backend = "triton"\nendpoints = [{eps}]\nremote_model = "mlp"\nremote_health_interval_s = {HEALTH_S}\n'
            f"remote_breaker_open_s = 0.5\ncoalesce = false\n{extra}")

    model("far", fast)
    model("far_slow", [slow])
    model("far_tight", [slow], "remote_max_outstanding = 1\nmax_queue_size = 8\n")
    return root


@dataclass
class Fleet:
    fast: list[TritonProcess]  # both behind "far"
    slow: TritonProcess  # DELAY_MS a batch, behind "far_slow" and "far_tight"
    front: ServerThread


@pytest.fixture(scope="module")
def fleet(triton_python: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("pytriton")
    model = root / "mlp.onnx"
    onnx.save(mlp_model(seed=7), str(model))
    fast = [TritonProcess(triton_python, model, root / f"t{i}") for i in range(2)]
    slow = TritonProcess(triton_python, model, root / "slow", "--delay-ms", str(DELAY_MS))
    front: ServerThread | None = None
    try:
        for t in (*fast, slow):
            t.spawn()
        for t in (*fast, slow):
            t.wait_ready()
        front = ServerThread(repository=front_repo(root / "front", [t.address for t in fast], slow.address))
        front.__enter__()
        yield Fleet(fast, slow, front)
    finally:
        if front is not None:
            front.__exit__(None, None, None)
        for t in (*fast, slow):
            t.terminate()
        for t in (*fast, slow):
            t.stop()


def answer(doc: Any) -> np.ndarray:
    out = doc["outputs"][0]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def test_results_equal_onnxruntime_over_json_binary_and_grpc(fleet: Fleet) -> None:
    want = reference(X)
    status, doc = post(fleet.front, "far", X)
    assert status == 200, doc
    assert np.allclose(answer(doc), want, atol=1e-5)
    h = httpclient.InferenceServerClient(fleet.front.http_url)
    g = grpcclient.InferenceServerClient(fleet.front.grpc_url)
    try:
        inp = httpclient.InferInput("INPUT0", list(X.shape), "FP32")
        inp.set_data_from_numpy(X, binary_data=True)
        out = h.infer("far", [inp], outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)])
        assert np.allclose(out.as_numpy("OUTPUT0"), want, atol=1e-5)
        ginp = grpcclient.InferInput("INPUT0", list(X.shape), "FP32")
        ginp.set_data_from_numpy(X)
        assert np.allclose(g.infer("far", [ginp]).as_numpy("OUTPUT0"), want, atol=1e-5)
        # the signature from Triton's ModelMetadata, the batch size from its ModelConfig
        meta = h.get_model_metadata("far")
        assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [("INPUT0", "FP32", [-1, 64])]
        assert [(o["name"], o["shape"]) for o in meta["outputs"]] == [("OUTPUT0", [-1, 10])]
        assert h.get_model_config("far")["max_batch_size"] == 16
        assert h.is_model_ready("far")
    finally:
        h.close()
        g.close()


def load(front: ServerThread, stop: threading.Event, seed: int, results: list[tuple[float, int, str]]) -> None:
    """Requests until ``stop`` (at most 400): HTTP JSON and gRPC in turn, 1-4 rows each. Each result:
    (send time, status, what was wrong with a 200 answer or the error's text)."""
    rng = np.random.default_rng(seed)
    g = grpcclient.InferenceServerClient(front.grpc_url)
    try:
        for i in range(400):
            if stop.is_set():
                return
            x = rng.standard_normal((int(rng.integers(1, 5)), 64)).astype(np.float32)
            t0 = time.monotonic()
            if i % 2:
                try:
                    status, doc = post(front, "far", x, timeout=10)
                except OSError as e:  # a timeout: the test fails on it
                    results.append((t0, -1, repr(e)))
                    continue
                got = answer(doc) if status == 200 else None
                note = doc.get("error", "") if status != 200 else ""
            else:
                inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                try:
                    got, status, note = g.infer("far", [inp], client_timeout=10).as_numpy("OUTPUT0"), 200, ""
                except InferenceServerException as e:
                    got, note = None, str(e)
                    status = 503 if e.status() == "StatusCode.UNAVAILABLE" else -1
            if got is not None and not np.allclose(got, reference(x), atol=1e-5):
                note = "wrong answer"
            results.append((t0, status, note))
    finally:
        g.close()


def test_a_killed_triton_costs_only_clean_errors_and_is_used_again_when_back(fleet: Fleet) -> None:
    a, b = fleet.fast
    front = fleet.front
    assert [post(front, "far", X)[0] for _ in range(3)] == [200] * 3
    stop = threading.Event()
    results: list[tuple[float, int, str]] = []
    threads = [threading.Thread(target=load, args=(front, stop, seed, results)) for seed in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        killed_at = time.monotonic()
        a.crash()
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads), "a load thread hung"
    bad = [r for r in results if r[1] not in (200, 503) or r[2] == "wrong answer"]
    assert not bad, bad[:5]
    assert sum(r[0] < killed_at for r in results) > 8 and sum(r[0] > killed_at for r in results) > 8
    late = [r for r in results if r[0] > killed_at + HEALTH_S + 0.3]  # after a health check saw it gone
    assert late and all(r[1] == 200 for r in late), [r for r in late if r[1] != 200][:5]

    # from now on the other one answers everything
    time.sleep(HEALTH_S)
    before = b.inference_count()
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: post(front, "far", X)[0], range(32)))
    assert codes == [200] * 32
    assert b.inference_count() - before == 32 * len(X)

    # back on the same ports: used again (ties go to the first endpoint listed, which it is)
    a.stop()
    a.spawn()
    a.wait_ready()
    end = time.monotonic() + 10  # a few health intervals and one reconnect backoff (at most 1 s)
    used = 0
    while not used and time.monotonic() < end:
        assert post(front, "far", X)[0] == 200
        used = a.inference_count()
        time.sleep(0.05)
    assert used > 0, a.tail()
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda _: post(front, "far", X)[0], range(16))) == [200] * 16


def test_a_short_client_deadline_is_answered_at_the_deadline_not_when_triton_finishes(fleet: Fleet) -> None:
    front = fleet.front
    assert post(front, "far_slow", X)[0] == 200  # warm; the slow remote takes DELAY_MS a batch
    failed = stats(front, "far_slow")["inference_stats"]["fail"]["count"]
    t0 = time.perf_counter()
    status, doc = post(front, "far_slow", X, parameters={"timeout": 50_000})  # microseconds
    took = time.perf_counter() - t0
    assert status in (504, 429), doc
    assert status == 429 or "deadline" in doc["error"].lower(), doc
    assert took < DELAY_MS / 1000 * 0.7, took
    g = grpcclient.InferenceServerClient(front.grpc_url)
    try:
        inp = grpcclient.InferInput("INPUT0", list(X.shape), "FP32")
        inp.set_data_from_numpy(X)
        t0 = time.perf_counter()
        with pytest.raises(InferenceServerException) as e:
            g.infer("far_slow", [inp], client_timeout=0.05)
        took = time.perf_counter() - t0
    finally:
        g.close()
    assert "deadline" in str(e.value).lower() or e.value.status() == "StatusCode.RESOURCE_EXHAUSTED", e.value
    assert took < DELAY_MS / 1000 * 0.7, took
    end = time.monotonic() + 5
    while stats(front, "far_slow")["inference_stats"]["fail"]["count"] < failed + 2:
        assert time.monotonic() < end, "the front did not count both calls as failed"
        time.sleep(0.05)
    time.sleep(DELAY_MS / 1000 * 2)  # the remote finishes what it had started
    assert post(front, "far_slow", X)[0] == 200  # and serves on


def test_a_triton_slower_than_the_offered_load_pushes_back_as_429(fleet: Fleet) -> None:
    front = fleet.front
    x = np.ones((4, 64), np.float32)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda _: post(front, "far_tight", x), range(32)))
    took = time.perf_counter() - t0
    codes = [s for s, _ in results]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(429) > 0 and codes.count(200) > 0, codes
    assert all("retry" in d["error"].lower() or "queue" in d["error"] for s, d in results if s == 429)
    assert all(np.allclose(answer(d), reference(x), atol=1e-5) for s, d in results if s == 200)
    assert took < 10, took  # refused at once, not queued behind the slow remote
