"""The precomputed route (hybrid serving): stored predictions answered without computing, live
fallback by reason, write-back, and a real Redis that stops mid-run.

Real parts: onnxruntime sessions, sockets on 127.0.0.1, tritonclient (HTTP and gRPC), SQLite files,
and a real ``redis-server`` (Debian's package) started on a free port. The one stub is the inner
target of ``test_stale_if_error``: a live run that fails on demand cannot be provoked otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from models import write_model
from test_cli import free_port

from gateway.demo import mlp_model
from gateway.errors import Code, GatewayError
from gateway.model_config import ConfigError, PrecomputedConfig, parse_config
from gateway.observe.stats import ModelStats
from gateway.pipeline.precomputed import PrecomputedTarget
from gateway.stores import open_writer, sqlite_path, write_all
from gateway.stores.entry import BadEntry, Entry, decode, encode, fingerprint
from gateway.testing import ServerThread
from gateway.types import InferRequest, InferResponse

X = np.random.default_rng(3).standard_normal((1, 64)).astype(np.float32)
STORED = np.arange(10, dtype=np.float32).reshape(1, 10) + 1000  # no mlp computes this: a hit is visible


def repo_with(tmp: Path, section: str, versions: tuple[int, ...] = (1,)) -> Path:
    repo = tmp / "repo"
    for v in versions:
        write_model(repo, "mlp", v, mlp_model(seed=v),
                    f'max_batch_size = 64\nversion_policy = "all"\n\n[precomputed]\n{section}\n')
    return repo


def put(url: str, base: Path, items: dict[str, Entry]) -> None:
    w = open_writer(url, base)
    try:
        write_all(w, "mlp", ((k, encode(e)) for k, e in items.items()))
    finally:
        w.close()


def entry(version: str = "1", age_s: float = 0.0, fp: bytes = b"") -> Entry:
    return Entry(version, time.time() - age_s, fp, {"OUTPUT0": STORED})


def infer(srv: ServerThread, key: str | None = None, params: dict[str, Any] | None = None,
          version: str = "") -> tuple[int, dict[str, str], Any]:
    doc: dict[str, Any] = {"inputs": [{"name": "INPUT0", "shape": [1, 64], "datatype": "FP32",
                                       "data": X.ravel().tolist()}]}
    if params:
        doc["parameters"] = params
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["x-entity-id"] = key
    path = f"/v2/models/mlp/versions/{version}/infer" if version else "/v2/models/mlp/infer"
    req = urllib.request.Request(f"http://{srv.http_url}{path}", json.dumps(doc).encode(), headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.load(e)


def output(doc: dict[str, Any]) -> np.ndarray:
    return np.asarray(doc["outputs"][0]["data"], dtype=np.float32).reshape(1, 10)


def model_stats(srv: ServerThread, version: str = "1") -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{srv.http_url}/v2/models/mlp/versions/{version}/stats", timeout=30) as r:
        return json.load(r)["model_stats"][0]  # type: ignore[no-any-return]


def metric(srv: ServerThread, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://{srv.http_url}/metrics", timeout=30) as r:
        text = r.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    assert want or total >= 0
    return total


def live_output(srv: ServerThread) -> np.ndarray:
    status, _, doc = infer(srv)
    assert status == 200
    return output(doc)


# ---- the route over HTTP and gRPC, SQLite store ---------------------------------------------------
def test_hit_is_answered_without_execution_and_says_so(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, 'store = "sqlite://predictions.db"\nmax_staleness_s = 3600')
    put("sqlite://predictions.db", repo / "mlp", {"u1": entry(age_s=5)})
    with ServerThread(repo) as srv:
        live = live_output(srv)
        before = model_stats(srv)
        status, headers, doc = infer(srv, "u1")
        assert status == 200, doc
        np.testing.assert_array_equal(output(doc), STORED)
        assert doc["parameters"]["prediction_source"] == "precomputed"
        assert 4.0 <= doc["parameters"]["prediction_age_s"] < 60
        assert headers["x-prediction-source"] == "precomputed"
        after = model_stats(srv)
        assert after["execution_count"] == before["execution_count"]  # nothing ran
        assert after["inference_count"] == before["inference_count"]
        assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
        # a key with no entry runs live, and says so
        status, headers, doc = infer(srv, "nobody")
        assert status == 200
        np.testing.assert_allclose(output(doc), live, rtol=1e-6)
        assert doc["parameters"]["prediction_source"] == "live" and headers["x-prediction-source"] == "live"
        assert model_stats(srv)["execution_count"] == after["execution_count"] + 1
        # the key as a request parameter instead of a header
        status, _, doc = infer(srv, params={"x-entity-id": "u1"})
        np.testing.assert_array_equal(output(doc), STORED)
        assert metric(srv, "gateway_precomputed_hits_total", model="mlp") == 2
        assert metric(srv, "gateway_precomputed_fallbacks_total", reason="miss") == 1
        assert metric(srv, "gateway_precomputed_fallbacks_total", reason="no_key") == 1
        assert metric(srv, "gateway_precomputed_age_seconds_count", model="mlp") == 2


def test_grpc_metadata_key_and_parameter(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, 'store = "sqlite://p.db"')
    put("sqlite://p.db", repo / "mlp", {"u7": entry()})
    with ServerThread(repo) as srv:
        c = grpcclient.InferenceServerClient(srv.grpc_url)
        inp = grpcclient.InferInput("INPUT0", [1, 64], "FP32")
        inp.set_data_from_numpy(X)
        r = c.infer("mlp", [inp], headers={"x-entity-id": "u7"})
        np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), STORED)
        assert r.get_response().parameters["prediction_source"].string_param == "precomputed"
        r = c.infer("mlp", [inp], parameters={"x-entity-id": "u7"})
        np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), STORED)
        r = c.infer("mlp", [inp], headers={"x-entity-id": "other"})
        assert r.get_response().parameters["prediction_source"].string_param == "live"
        assert not np.array_equal(r.as_numpy("OUTPUT0"), STORED)
        # tritonclient HTTP, the same key as a header
        h = httpclient.InferenceServerClient(srv.http_url)
        hin = httpclient.InferInput("INPUT0", [1, 64], "FP32")
        hin.set_data_from_numpy(X)
        r2 = h.infer("mlp", [hin], headers={"x-entity-id": "u7"})
        np.testing.assert_array_equal(r2.as_numpy("OUTPUT0"), STORED)
        assert r2.get_response()["parameters"]["prediction_source"] == "precomputed"
        c.close()
        h.close()


def test_stale_and_per_request_staleness(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, 'store = "sqlite://p.db"\nmax_staleness_s = 100')
    put("sqlite://p.db", repo / "mlp", {"old": entry(age_s=500), "recent": entry(age_s=50)})
    with ServerThread(repo) as srv:
        _, _, doc = infer(srv, "old")
        assert doc["parameters"]["prediction_source"] == "live"
        _, _, doc = infer(srv, "recent")
        assert doc["parameters"]["prediction_source"] == "precomputed"
        _, _, doc = infer(srv, "recent", {"max_staleness_s": 10})  # the request tightens it
        assert doc["parameters"]["prediction_source"] == "live"
        _, _, doc = infer(srv, "old", {"max_staleness_s": 10_000})  # but never loosens it
        assert doc["parameters"]["prediction_source"] == "live"
        status, _, doc = infer(srv, "recent", {"max_staleness_s": "soon"})
        assert status == 400 and "max_staleness_s" in doc["error"]
        assert metric(srv, "gateway_precomputed_fallbacks_total", reason="stale") == 3


def test_entries_of_another_version_are_not_served(tmp_path: Path) -> None:
    """An entry matches only the version the request is routed to: a new version invalidates the
    stored answers of the old one, a request pinned to the old one still gets them."""
    repo = repo_with(tmp_path, 'store = "sqlite://p.db"', versions=(1, 2))
    put("sqlite://p.db", repo / "mlp", {"u1": entry(version="1"), "u2": entry(version="2")})
    with ServerThread(repo) as srv:  # version 2 is the default (newest)
        _, _, doc = infer(srv, "u1")
        assert doc["parameters"]["prediction_source"] == "live" and doc["model_version"] == "2"
        _, _, doc = infer(srv, "u1", version="1")
        assert doc["parameters"]["prediction_source"] == "precomputed" and doc["model_version"] == "1"
        _, _, doc = infer(srv, "u2")
        assert doc["parameters"]["prediction_source"] == "precomputed"
        assert metric(srv, "gateway_precomputed_fallbacks_total", reason="version") == 1


def test_write_back_then_hit(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, 'store = "sqlite://p.db"\nwrite_back = true')
    with ServerThread(repo) as srv:
        _, _, doc = infer(srv, "fresh")
        assert doc["parameters"]["prediction_source"] == "live"
        live = output(doc)
        deadline = time.monotonic() + 10
        while True:  # written off the request path, within a flush interval
            _, _, doc = infer(srv, "fresh")
            if doc["parameters"]["prediction_source"] == "precomputed" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert doc["parameters"]["prediction_source"] == "precomputed"
        np.testing.assert_array_equal(output(doc), live)
        assert metric(srv, "gateway_precomputed_write_backs_total") >= 1
    stored = decode(_sqlite_value(repo / "mlp" / "p.db", "fresh"))
    assert stored.version == "1" and stored.fingerprint == fingerprint({"INPUT0": X})
    np.testing.assert_array_equal(stored.outputs["OUTPUT0"], live)


def _sqlite_value(path: Path, key: str) -> bytes:
    import sqlite3

    with sqlite3.connect(path) as c:
        return c.execute("SELECT value FROM predictions WHERE model = 'mlp' AND key = ?", (key,)).fetchone()[0]


def test_check_inputs_runs_changed_contexts_live(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, 'store = "sqlite://p.db"\ncheck_inputs = true')
    put("sqlite://p.db", repo / "mlp", {"same": entry(fp=fingerprint({"INPUT0": X})),
                                        "changed": entry(fp=fingerprint({"INPUT0": X + 1}))})
    with ServerThread(repo) as srv:
        assert infer(srv, "same")[2]["parameters"]["prediction_source"] == "precomputed"
        assert infer(srv, "changed")[2]["parameters"]["prediction_source"] == "live"
        assert metric(srv, "gateway_precomputed_fallbacks_total", reason="inputs_changed") == 1


def test_fallback_error_answers_not_found(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, 'store = "sqlite://p.db"\nfallback = "error"')
    put("sqlite://p.db", repo / "mlp", {"u1": entry()})
    with ServerThread(repo) as srv:
        assert infer(srv, "u1")[0] == 200
        status, _, doc = infer(srv, "nobody")
        assert status == 404 and "no stored prediction" in doc["error"], doc
        status, _, doc = infer(srv)
        assert status == 404 and "no key" in doc["error"]
        assert model_stats(srv)["execution_count"] == 0  # nothing ever ran live
        assert infer(srv, "u1")[0] == 200  # and the server keeps serving


def test_unreadable_entry_and_broken_file_run_live(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, 'store = "sqlite://p.db"')
    w = open_writer("sqlite://p.db", repo / "mlp")
    write_all(w, "mlp", [("junk", b"not an entry")])
    w.close()
    with ServerThread(repo) as srv:
        status, _, doc = infer(srv, "junk")
        assert status == 200 and doc["parameters"]["prediction_source"] == "live"
        assert metric(srv, "gateway_precomputed_fallbacks_total", reason="store_error") == 1


# ---- Redis, real server ----------------------------------------------------------------------------
@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    exe = shutil.which("redis-server")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing (.ci/run installs Debian's redis-server)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    client.close()
    yield f"redis://127.0.0.1:{port}/0", proc
    proc.kill()
    proc.wait()


def test_redis_hits_then_redis_stops_and_nothing_fails(tmp_path: Path,
                                                       redis_server: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, proc = redis_server
    repo = repo_with(tmp_path, f'store = "{url}"\nstore_timeout_s = 0.2\nstore_retry_s = 0.5')
    put(url, tmp_path, {f"u{i}": entry() for i in range(20)})
    with ServerThread(repo) as srv:
        c = httpclient.InferenceServerClient(srv.http_url, concurrency=8)
        inp = httpclient.InferInput("INPUT0", [1, 64], "FP32")
        inp.set_data_from_numpy(X)

        def run(key: str) -> Any:
            return c.async_infer("mlp", [inp], headers={"x-entity-id": key})

        results = [run(f"u{i}").get_result() for i in range(20)]
        assert all(r.get_response()["parameters"]["prediction_source"] == "precomputed" for r in results)
        before = model_stats(srv)["execution_count"]
        proc.kill()
        proc.wait()
        t0 = time.monotonic()
        pending = [run(f"u{i % 20}") for i in range(60)]
        results = [p.get_result() for p in pending]  # none raises: every request was answered
        assert all(r.get_response()["parameters"]["prediction_source"] == "live" for r in results)
        assert all(not np.array_equal(r.as_numpy("OUTPUT0"), STORED) for r in results)
        assert time.monotonic() - t0 < 20
        assert model_stats(srv)["execution_count"] > before
        assert metric(srv, "gateway_precomputed_fallbacks_total", reason="store_error") == 60
        assert metric(srv, "gateway_precomputed_store_errors_total") >= 1
        c.close()


def test_redis_write_back(tmp_path: Path, redis_server: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, _ = redis_server
    repo = repo_with(tmp_path, f'store = "{url}"\nwrite_back = true')
    with ServerThread(repo) as srv:
        assert infer(srv, "w1")[2]["parameters"]["prediction_source"] == "live"
        deadline = time.monotonic() + 10
        while infer(srv, "w1")[2]["parameters"]["prediction_source"] != "precomputed":
            assert time.monotonic() < deadline, "the write-back never reached Redis"
            time.sleep(0.05)


# ---- pieces ------------------------------------------------------------------------------------------
def test_entry_round_trip_and_damage() -> None:
    rng = np.random.default_rng(0)
    outs = {"a": rng.standard_normal((1, 5)).astype(np.float32), "b": np.arange(6, dtype=np.int64).reshape(2, 3),
            "c": np.array([[b"x", b"", b"\x00yz"]], dtype=object)}
    e = Entry("12", 1.5e9, fingerprint({"INPUT0": X}), outs)
    d = decode(encode(e))
    assert (d.version, d.computed_at, d.fingerprint) == ("12", 1.5e9, e.fingerprint)
    for k, v in outs.items():
        assert d.outputs[k].dtype == v.dtype and d.outputs[k].shape == v.shape
        np.testing.assert_array_equal(d.outputs[k], v)
    raw = encode(e)
    for bad in (b"", b"GWP0" + raw[4:], raw[:-3], raw[:20]):
        with pytest.raises(BadEntry):
            decode(bad)
    assert fingerprint({"INPUT0": X}) != fingerprint({"INPUT0": X.astype(np.float64)})
    assert fingerprint({"INPUT0": X}) != fingerprint({"INPUT0": X.reshape(64, 1)})


def test_config_checks(tmp_path: Path) -> None:
    cfg = parse_config("m", {"precomputed": {"store": "sqlite://p.db", "key": "X-User", "max_staleness_s": 5}})
    assert cfg.precomputed == PrecomputedConfig("sqlite://p.db", key="x-user", max_staleness_s=5.0)
    for bad, field in (({"store": "mysql://x"}, "store"), ({"store": "sqlite://p", "fallback": "maybe"}, "fallback"),
                       ({"store": "sqlite://p", "max_staleness_s": -1}, "max_staleness_s"),
                       ({"store": "sqlite://p", "ttl": 1}, "ttl"), ({"store": "sqlite://p", "write_back": 1}, "write_back")):
        with pytest.raises(ConfigError, match=f"precomputed.{field}"):
            parse_config("m", {"precomputed": bad})
    assert sqlite_path("sqlite:///abs/p.db", tmp_path) == Path("/abs/p.db")
    assert sqlite_path("sqlite://p.db", tmp_path) == tmp_path / "p.db"
    assert sqlite_path("sqlite:p.db", tmp_path) == tmp_path / "p.db"


class _Failing:
    """A version target whose live run fails (the answer comes later, as a batch's would)."""

    def submit(self, request: InferRequest, done: Any, eager: bool = False) -> Any:
        asyncio.get_running_loop().call_soon(done, None, GatewayError(Code.UNAVAILABLE, "backend down"))
        return None


def test_stale_if_error(tmp_path: Path) -> None:
    put("sqlite://p.db", tmp_path, {"u1": entry(age_s=500), "u2": entry(age_s=5000)})

    async def main() -> list[tuple[InferResponse | None, GatewayError | None]]:
        from gateway.stores import open_store

        cfg = PrecomputedConfig("sqlite://p.db", max_staleness_s=100, stale_if_error_s=1000)
        stage = PrecomputedTarget(_Failing(), "mlp", "1", cfg, open_store(cfg.store, tmp_path, 0.05, 10),
                                  ModelStats())
        out: list[tuple[InferResponse | None, GatewayError | None]] = []
        for key in ("u1", "u2"):
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def done(r: InferResponse | None, e: GatewayError | None, fut: asyncio.Future[None] = fut) -> None:
                out.append((r, e))
                fut.set_result(None)

            stage.submit(InferRequest("mlp", inputs={"INPUT0": X}, parameters={"x-entity-id": key}), done)
            await fut
        await stage.close()
        assert stage.pstats.stale_served == 1
        return out

    (r1, e1), (r2, e2) = asyncio.run(main())
    assert e1 is None and r1 is not None and r1.parameters["prediction_stale"] is True  # type: ignore[index]
    np.testing.assert_array_equal(r1.outputs["OUTPUT0"], STORED)
    assert r2 is None and e2 is not None and e2.code is Code.UNAVAILABLE  # too old even for that


@pytest.mark.parametrize("seed", range(5))
def test_rows_encode_like_single_entries(seed: int) -> None:
    """The batch job's vectorized per-row fingerprints and values equal the serving side's own, row by row."""
    from gateway.stores.entry import encode_rows, row_fingerprints

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    feeds = {"INPUT0": rng.standard_normal((n, int(rng.integers(1, 80)))).astype(np.float32),
             "AUX": rng.integers(-5, 5, (n, 3, 2)).astype(np.int32)}
    if seed % 2:
        del feeds["AUX"]
    outs = {"OUTPUT0": rng.standard_normal((n, 10)).astype(np.float32), "IDX": rng.integers(0, 9, (n,))}
    fps = row_fingerprints(feeds)
    values = encode_rows("4", 1.7e9, fps, outs)
    for i in range(n):
        assert fps[i] == fingerprint({k: v[i:i + 1] for k, v in feeds.items()})
        assert values[i] == encode(Entry("4", 1.7e9, fps[i], {k: v[i:i + 1] for k, v in outs.items()}))


# ---- gateway batch --to-store -----------------------------------------------------------------------
def _entities(path: Path, lo: int, hi: int, bad_row: int | None = None) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = np.random.default_rng(lo).standard_normal((hi - lo, 64)).astype(np.float32)
    values = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 64)
    if bad_row is not None:  # a null row: the job fails on it (on_error = fail)
        values = pa.array([None if i == bad_row else v for i, v in enumerate(values.to_pylist())],
                          pa.list_(pa.float32(), 64))
    pq.write_table(pa.table({"user": [f"u{i}" for i in range(lo, hi)], "INPUT0": values}), path)
    return x


def test_batch_to_store_then_served(tmp_path: Path) -> None:
    from gateway.batch.job import Job, run

    repo = repo_with(tmp_path, 'store = "sqlite://p.db"\ncheck_inputs = true')
    (tmp_path / "in").mkdir()
    xs = np.concatenate([_entities(tmp_path / "in" / "a.parquet", 0, 300),
                         _entities(tmp_path / "in" / "b.parquet", 300, 500)])
    s = run(Job(repo, "mlp", str(tmp_path / "in"), tmp_path / "out", quiet=True,
                to_store="model", store_key="user"))  # the model's own store
    assert (s.rows, s.stored) == (500, 500)
    import pyarrow.parquet as pq

    scored = pq.read_table(tmp_path / "out" / "part-00001.parquet")
    assert scored.column_names[0] == "user"  # the key column is kept
    with ServerThread(repo) as srv:
        h = httpclient.InferenceServerClient(srv.http_url)
        for i in (0, 299, 300, 499):
            inp = httpclient.InferInput("INPUT0", [1, 64], "FP32")
            inp.set_data_from_numpy(xs[i:i + 1])
            r = h.infer("mlp", [inp], headers={"x-entity-id": f"u{i}"})
            # the stored row, served because its inputs hash like the request's (check_inputs)
            assert r.get_response()["parameters"]["prediction_source"] == "precomputed", i
            live = h.infer("mlp", [inp]).as_numpy("OUTPUT0")
            np.testing.assert_allclose(r.as_numpy("OUTPUT0"), live, rtol=1e-5, atol=1e-6)
        assert model_stats(srv)["inference_stats"]["success"]["count"] == 8
        h.close()


def test_batch_to_store_is_transactional_per_part(tmp_path: Path) -> None:
    """A part that fails leaves none of its rows in the store; the parts before it are all there."""
    import sqlite3

    from gateway.batch.job import BadRows, Job, run

    repo = repo_with(tmp_path, 'store = "sqlite://p.db"')
    (tmp_path / "in").mkdir()
    _entities(tmp_path / "in" / "a.parquet", 0, 100)
    _entities(tmp_path / "in" / "b.parquet", 100, 200, bad_row=50)
    db = tmp_path / "s.db"
    with pytest.raises(BadRows, match="row 150"):
        run(Job(repo, "mlp", str(tmp_path / "in"), tmp_path / "out", keep=("user",), quiet=True,
                to_store=f"sqlite://{db}"))
    with sqlite3.connect(db) as c:
        keys = {k for (k,) in c.execute("SELECT key FROM predictions")}
    assert keys == {f"u{i}" for i in range(100)}


def test_batch_to_redis(tmp_path: Path, redis_server: tuple[str, subprocess.Popen[bytes]]) -> None:
    import redis

    from gateway.batch.job import Job, run

    url, _ = redis_server
    repo = repo_with(tmp_path, f'store = "{url}"')
    (tmp_path / "in").mkdir()
    _entities(tmp_path / "in" / "a.parquet", 0, 50)
    s = run(Job(repo, "mlp", str(tmp_path / "in"), tmp_path / "out", keep=("user",), quiet=True, to_store=url))
    assert s.stored == 50
    client = redis.Redis.from_url(url)
    e = decode(client.get("gateway:pred:mlp:u7"))  # type: ignore[arg-type]
    client.close()
    assert e.version == "1" and e.outputs["OUTPUT0"].shape == (1, 10) and len(e.fingerprint) == 16
