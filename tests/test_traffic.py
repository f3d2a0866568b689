"""Version routing end to end over real sockets: admin API and its token, weighted and sticky splits,
shadows and their comparison, guards that roll a failing canary back, swaps under load, outcomes.

Each test gets its own gateway on a repository built here (onnx helper API): ``mlp`` versions 1-3
(3 is version 1's graph, so a shadow of it agrees; 2 has other weights, so it disagrees), and
``canary`` whose version 2 fails on inputs above 1 (a Gather out of range) while version 1 takes them.
"""

from __future__ import annotations

import http.client
import json
import math
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from models import write_model
from onnx import TensorProto, helper, numpy_helper

from gateway.demo import mlp_model
from gateway.testing import ServerThread

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def fragile_model() -> Any:
    """X FP32 [batch, 4] -> Y = table[int(max(X))]: fails (out of range) when a row's max is 2 or more."""
    table = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(2, 4), "table")
    nodes = [helper.make_node("ReduceMax", ["X"], ["m"], keepdims=0, axes=[1]),
             helper.make_node("Cast", ["m"], ["i"], to=TensorProto.INT64),
             helper.make_node("Gather", ["table", "i"], ["Y"], axis=0)]
    graph = helper.make_graph(nodes, "fragile", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["b", 4])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["b", 4])], [table])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def sturdy_model() -> Any:
    """X FP32 [batch, 4] -> Y = X (takes every input)."""
    graph = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"])], "sturdy",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["b", 4])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["b", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def build_repo(root: Path) -> Path:
    write_model(root, "mlp", 1, mlp_model(seed=1))
    write_model(root, "mlp", 2, mlp_model(seed=2))
    write_model(root, "mlp", 3, mlp_model(seed=1), 'version_policy = "all"\n')
    write_model(root, "canary", 1, sturdy_model())
    write_model(root, "canary", 2, fragile_model(), 'version_policy = "all"\n')
    return root


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(repository=build_repo(tmp_path / "repo"), admin_token=TOKEN, traffic_tick_s=0.1) as srv:
        yield srv


class Client:
    """One keep-alive HTTP connection."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        data = None if body is None else json.dumps(body).encode()
        self.conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        r = self.conn.getresponse()
        raw = r.read()
        doc = json.loads(raw) if raw else None
        return r.status, {k.lower(): v for k, v in r.getheaders()}, doc

    def infer(self, model: str, x: list[float], version: str = "", headers: dict[str, str] | None = None,
              request_id: str = "", parameters: dict[str, Any] | None = None) -> tuple[int, dict[str, str], Any]:
        name = "INPUT0" if model == "mlp" else "X"
        body: dict[str, Any] = {"inputs": [{"name": name, "datatype": "FP32", "shape": [1, len(x)], "data": x}]}
        if request_id:
            body["id"] = request_id
        if parameters:
            body["parameters"] = parameters
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        return self.call("POST", path, body, headers)

    def close(self) -> None:
        self.conn.close()


def put_policy(c: Client, model: str, doc: dict[str, Any]) -> dict[str, Any]:
    status, _, body = c.call("PUT", f"/v2/admin/models/{model}/traffic", doc, AUTH)
    assert status == 200, body
    return body


def metrics(c: Client) -> str:
    c.conn.request("GET", "/metrics")
    return c.conn.getresponse().read().decode()


def binomial_999(n: int, p: float) -> tuple[float, float]:
    half = 3.29 * math.sqrt(p * (1 - p) / n)
    return p - half, p + half


X64 = [0.01 * i for i in range(64)]


def test_admin_api_needs_the_token_and_a_bad_token_changes_nothing(gw: ServerThread) -> None:
    c = Client(gw.http_port)
    path = "/v2/admin/models/mlp/traffic"
    assert c.call("GET", path)[0] == 401
    assert c.call("GET", path, headers={"Authorization": "Bearer wrong"})[0] == 401
    status, headers, body = c.call("PUT", path, {"weights": {"1": 50, "2": 50}}, {"Authorization": "Bearer nope"})
    assert status == 401 and "error" in body and headers.get("www-authenticate", "").startswith("Bearer")
    assert c.call("POST", "/v2/admin/models/mlp/rollback")[0] == 401
    status, _, view = c.call("GET", path, headers=AUTH)
    assert status == 200 and view["policy"] is None and view["source"] == "none"  # unchanged
    # repository load/unload obey the token once one is set
    assert c.call("POST", "/v2/repository/models/mlp/unload", {})[0] == 401
    assert c.call("POST", "/v2/repository/models/mlp/load", {}, AUTH)[0] == 200
    # a bad policy is refused whole, naming the field
    status, _, body = c.call("PUT", path, {"weights": {"1": 50, "9": 50}}, AUTH)
    assert status == 400 and "traffic.weights.9" in body["error"]
    status, _, body = c.call("PUT", path, {"weights": {"1": 50}, "sticky": "x"}, AUTH)
    assert status == 400 and "traffic.sticky" in body["error"]
    assert c.call("GET", path, headers=AUTH)[2]["policy"] is None
    assert c.call("GET", "/v2/admin/models/nope/traffic", headers=AUTH)[0] == 404
    c.close()


def test_no_token_configured_means_no_admin_routes(tmp_path: Path) -> None:
    with ServerThread(repository=build_repo(tmp_path / "repo")) as srv:
        c = Client(srv.http_port)
        assert c.call("GET", "/v2/admin/models/mlp/traffic")[0] == 404
        assert c.call("PUT", "/v2/admin/models/mlp/traffic", {"weights": {"1": 1}}, AUTH)[0] == 404
        assert c.call("POST", "/v2/admin/models/mlp/rollback", None, AUTH)[0] == 404
        c.close()


def test_weighted_split_90_10_over_http(gw: ServerThread) -> None:
    c = Client(gw.http_port)
    put_policy(c, "mlp", {"weights": {"1": 90, "2": 10}})
    n, seen = 10_000, {"1": 0, "2": 0}
    for _ in range(n):
        status, headers, body = c.infer("mlp", X64)
        assert status == 200
        assert headers["x-gateway-arm"] == body["model_version"]  # the arm is the version that answered
        seen[body["model_version"]] += 1
    lo, hi = binomial_999(n, 0.10)
    assert lo <= seen["2"] / n <= hi, seen
    # pinned requests get their version whatever the policy, and say so
    status, headers, body = c.infer("mlp", X64, version="2")
    assert body["model_version"] == "2" and headers["x-gateway-arm"] == "pinned"
    c.close()


def test_sticky_keys_keep_their_version_and_follow_the_weights(gw: ServerThread) -> None:
    c = Client(gw.http_port)
    put_policy(c, "mlp", {"weights": {"1": 70, "2": 30}, "sticky_key": "x-user-id"})
    first: dict[str, str] = {}
    for rep in range(5):
        for k in range(1000):
            key = f"user-{k}"
            if rep == 4:  # the same key as a request parameter lands on the same arm
                _, _, body = c.infer("mlp", X64, parameters={"x-user-id": key})
            else:
                _, _, body = c.infer("mlp", X64, headers={"X-User-Id": key})
            assert first.setdefault(key, body["model_version"]) == body["model_version"], key
    lo, hi = binomial_999(1000, 0.30)
    assert lo <= sum(v == "2" for v in first.values()) / 1000 <= hi
    c.close()
    # another gateway process (the demo repository has the same mlp versions 1 and 2) agrees
    from test_cli import demo_process

    with demo_process(GATEWAY_ADMIN_TOKEN=TOKEN) as (_, port, _grpc):
        c2 = Client(port)
        put_policy(c2, "mlp", {"weights": {"1": 70, "2": 30}, "sticky_key": "x-user-id"})
        for k in range(200):
            _, _, body = c2.infer("mlp", X64, headers={"x-user-id": f"user-{k}"})
            assert body["model_version"] == first[f"user-{k}"]
        c2.close()


def executions(gw: ServerThread, model: str, version: str) -> int:
    c = Client(gw.http_port)
    _, _, doc = c.call("GET", f"/v2/models/{model}/versions/{version}/stats")
    c.close()
    return int(doc["model_stats"][0]["inference_stats"]["success"]["count"])


def wait_for(pred: Any, timeout: float = 10.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    return pred()


def test_shadow_answers_from_the_primary_and_compares(gw: ServerThread) -> None:
    c = Client(gw.http_port)
    rng = np.random.default_rng(0)
    put_policy(c, "mlp", {"weights": {"1": 100}, "shadow": {"version": "3", "fraction": 0.5}})
    before = executions(gw, "mlp", "3")
    n = 600
    for _ in range(n):
        status, _, body = c.infer("mlp", rng.standard_normal(64).tolist())
        assert status == 200 and body["model_version"] == "1"
    view = wait_for(lambda: (lambda v: v if v["shadow"]["by_primary"]["1"]["compared"] >= 1 else None)(
        c.call("GET", "/v2/admin/models/mlp/traffic", headers=AUTH)[2]))
    mirrored = executions(gw, "mlp", "3") - before
    agree = view["shadow"]["by_primary"]["1"]
    lo, hi = binomial_999(n, 0.5)  # sampled for mirroring: computed, or shed if the loop was saturated
    assert lo * n <= mirrored + agree["shed"] <= hi * n, (mirrored, agree)
    assert mirrored > n / 4
    assert agree["compared"] == mirrored and agree["agreement_rate"] == 1.0 and agree["max_abs_diff"] == 0.0
    # a shadow with other weights disagrees, and the comparison says so
    put_policy(c, "mlp", {"weights": {"1": 100}, "shadow": {"version": "2", "fraction": 1.0}})
    for _ in range(200):
        assert c.infer("mlp", rng.standard_normal(64).tolist())[2]["model_version"] == "1"
    time.sleep(0.2)
    snap = c.call("GET", "/v2/admin/models/mlp/traffic", headers=AUTH)[2]["shadow"]["by_primary"]["1"]
    assert snap["compared"] >= 50 and snap["agreement_rate"] < 0.9 and snap["max_abs_diff"] > 0
    assert 'gateway_shadow_compared_total{model="mlp",primary="1",shadow="2"}' in metrics(c)
    c.close()


def test_guard_rolls_a_failing_canary_back(gw: ServerThread) -> None:
    c = Client(gw.http_port)
    put_policy(c, "canary", {"weights": {"1": 50, "2": 50},
                             "guard": {"window_s": 30, "min_requests": 40, "max_error_rate": 0.05}})
    failed_on_2 = 0
    rolled = None
    for i in range(3000):
        x = [3.0, 0, 0, 0] if i % 3 == 0 else [0.5, 0, 0, 0]  # a third of the inputs break version 2
        status, headers, body = c.infer("canary", x)
        if status != 200:
            failed_on_2 += 1
            assert headers.get("x-gateway-arm") == "2" or status in (400, 500)
        if i % 50 == 0:
            view = c.call("GET", "/v2/admin/models/canary/traffic", headers=AUTH)[2]
            if view["arms"]["2"]["weight"] == 0:
                rolled = view
                break
        time.sleep(0.001)
    assert rolled is not None, "the guard never rolled the canary back"
    assert failed_on_2 > 0
    assert any(e["event"] == "rollback" and e["version"] == "2" for e in rolled["events"])
    assert rolled["arms"]["2"]["guard"]["state"] == "breach"
    # afterwards every request is on the stable version and none fails
    for i in range(300):
        status, _, body = c.infer("canary", [3.0, 0, 0, 0] if i % 3 == 0 else [0.5, 0, 0, 0])
        assert status == 200 and body["model_version"] == "1"
    assert 'gateway_traffic_rollbacks_total{kind="guard",model="canary",version="2"} 1.0' in metrics(c)
    c.close()


def test_swap_versions_under_load_fails_no_request(gw: ServerThread) -> None:
    stop = threading.Event()
    failures: list[str] = []
    answered = [0]

    def load() -> None:
        cl = Client(gw.http_port)
        while not stop.is_set():
            status, _, body = cl.infer("mlp", X64)
            if status != 200:
                failures.append(str(body))
            answered[0] += 1
        cl.close()

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        c = Client(gw.http_port)
        repo = gw.app.repository
        time.sleep(0.3)
        shutil.copytree(repo / "mlp" / "3", repo / "mlp" / "4")  # version N+1 appears
        assert c.call("POST", "/v2/repository/models/mlp/load", {}, AUTH)[0] == 200
        put_policy(c, "mlp", {"weights": {"4": 100}})
        time.sleep(0.3)
        (repo / "mlp" / "config.toml").write_text('version_policy = { specific = [4] }\n')
        assert c.call("POST", "/v2/repository/models/mlp/load", {}, AUTH)[0] == 200  # versions 1-3 drain, go
        time.sleep(0.3)
        _, _, index = c.call("POST", "/v2/repository/index", {})
        assert [e["version"] for e in index if e["name"] == "mlp"] == ["4"]
        c.close()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert answered[0] > 100 and failures == []


def test_outcomes_are_credited_to_the_arm_that_answered(gw: ServerThread) -> None:
    c = Client(gw.http_port)
    put_policy(c, "mlp", {"weights": {"1": 50, "2": 50}, "sticky_key": "x-user-id"})
    rng = np.random.default_rng(1)
    rate = {"1": 0.10, "2": 0.13}
    items = []
    for i in range(2000):
        status, headers, body = c.infer("mlp", X64, request_id=f"r{i}")
        arm = headers["x-gateway-arm"]
        converted = float(rng.random() < rate[arm])
        # a third by request id (this replica remembers), a third by the arm token, a third by sticky key
        if i % 3 == 0:
            items.append({"request_id": f"r{i}", "metric": "conversion", "value": converted})
        elif i % 3 == 1:
            items.append({"arm": arm, "metric": "conversion", "value": converted})
    for k in range(600):
        _, _, body = c.infer("mlp", X64, headers={"x-user-id": f"u{k}"})
        converted = float(rng.random() < rate[body["model_version"]])
        items.append({"key": f"u{k}", "metric": "conversion", "value": converted})
    items.append({"request_id": "never-seen", "metric": "conversion", "value": 1.0})
    status, _, res = c.call("POST", "/v2/models/mlp/outcomes", {"outcomes": items}, AUTH)
    assert status == 200 and res == {"accepted": len(items) - 1, "unattributed": 1}
    status, _, res = c.call("POST", "/v2/models/mlp/outcomes", {"outcomes": [{"metric": "x", "value": 1}]}, AUTH)
    assert status == 400 and "outcomes[0]" in res["error"]
    assert c.call("POST", "/v2/models/mlp/outcomes", {"outcomes": items[:1]})[0] == 401  # token set: needed
    view = c.call("GET", "/v2/admin/models/mlp/traffic", headers=AUTH)[2]
    conv = view["outcomes"]["metrics"]["conversion"]
    for arm, p in rate.items():
        got = conv["arms"][arm]
        assert got["ci"][0] <= p <= got["ci"][1] and abs(got["mean"] - p) < 0.05
    assert conv["vs_stable"]["2"]["verdict"] in ("inconclusive", "better")  # never "worse" on this data
    text = metrics(c)
    assert 'gateway_outcome_count_total{arm="2",metric="conversion",model="mlp"}' in text
    assert 'gateway_outcome_unattributed_total{model="mlp"} 1.0' in text
    c.close()


def test_rollback_and_promote(gw: ServerThread) -> None:
    c = Client(gw.http_port)
    put_policy(c, "mlp", {"weights": {"1": 80, "2": 20}, "steps": [20, 50, 100], "step_interval_s": 3600})
    status, _, view = c.call("POST", "/v2/admin/models/mlp/promote", None, AUTH)
    assert status == 200 and view["arms"]["2"]["weight"] == 50 and view["rollout"]["weight"] == 50
    status, _, view = c.call("POST", "/v2/admin/models/mlp/rollback", None, AUTH)
    assert status == 200 and view["arms"]["1"]["weight"] == 100 and view["arms"]["2"]["weight"] == 0
    assert view["rollout"] is None
    for _ in range(50):
        assert c.infer("mlp", X64)[2]["model_version"] == "1"
    status, _, view = c.call("POST", "/v2/admin/models/mlp/promote", {"version": "2"}, AUTH)
    assert status == 200 and view["stable"] == "2" and view["arms"]["2"]["weight"] == 100
    for _ in range(50):
        assert c.infer("mlp", X64)[2]["model_version"] == "2"
    c.close()


def test_admin_cli_drives_the_api(gw: ServerThread) -> None:
    import subprocess
    import sys

    url = f"http://127.0.0.1:{gw.http_port}"

    def cli(*args: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "", "GATEWAY_ADMIN_TOKEN": token, "PYTHONPATH": str(Path(__file__).parent.parent)}
        return subprocess.run([sys.executable, "-m", "gateway", "admin", "--url", url, *args],
                              capture_output=True, text=True, env=env, timeout=60)

    r = cli("set", "mlp", '{"weights": {"1": 60, "2": 40}}')
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["arms"]["2"]["weight"] == 40
    r = cli("traffic", "mlp")
    assert r.returncode == 0 and json.loads(r.stdout)["policy"]["weights"] == {"1": 60.0, "2": 40.0}
    r = cli("rollback", "mlp")
    assert r.returncode == 0 and json.loads(r.stdout)["arms"]["1"]["weight"] == 100
    r = cli("set", "mlp", '{"weights": {"8": 1}}')
    assert r.returncode == 1 and "traffic.weights.8" in r.stderr
    r = cli("traffic", "mlp", token="wrong")
    assert r.returncode == 1 and "HTTP 401" in r.stderr


def test_grpc_answers_say_which_arm_and_read_the_sticky_key(gw: ServerThread) -> None:
    import tritonclient.grpc as grpcclient

    c = Client(gw.http_port)
    put_policy(c, "mlp", {"weights": {"1": 50, "2": 50}, "sticky_key": "x-user-id"})
    c.close()
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{gw.grpc_port}")
    x = grpcclient.InferInput("INPUT0", [1, 64], "FP32")
    x.set_data_from_numpy(np.asarray([X64], dtype=np.float32))
    seen = set()
    for k in range(40):
        versions = {client.infer("mlp", [x], headers={"x-user-id": f"g{k}"}).get_response().model_version
                    for _ in range(3)}
        assert len(versions) == 1  # sticky over gRPC metadata too
        seen |= versions
    assert seen == {"1", "2"}
    client.close()
    # the arm in trailing metadata (tritonclient does not expose trailers: ask with grpc directly)
    import grpc

    from gateway.pb import Stub
    from gateway.pb import service as pb

    with grpc.insecure_channel(f"127.0.0.1:{gw.grpc_port}") as ch:
        req = pb.ModelInferRequest(model_name="mlp")
        t = req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 64])
        t.contents.fp32_contents.extend(X64)
        resp, call = Stub(ch).ModelInfer.with_call(req)
        assert dict(call.trailing_metadata())["x-gateway-arm"] == resp.model_version


def test_shadow_copies_are_shed_while_the_loop_is_saturated(tmp_path: Path) -> None:
    """With the saturation line set very low, a steady client keeps the loop over it: copies stop
    (counted as shed) while every primary answer still comes back."""
    with ServerThread(repository=build_repo(tmp_path / "repo"), admin_token=TOKEN,
                      shadow_max_loop_busy=0.02) as srv:
        c = Client(srv.http_port)
        put_policy(c, "mlp", {"weights": {"1": 100}, "shadow": {"version": "3", "fraction": 1.0}})
        end = time.monotonic() + 1.5
        n = 0
        while time.monotonic() < end:
            status, _, body = c.infer("mlp", X64)
            assert status == 200 and body["model_version"] == "1"
            n += 1
        snap = c.call("GET", "/v2/admin/models/mlp/traffic", headers=AUTH)[2]["shadow"]["by_primary"]["1"]
        c.close()
    assert snap["shed"] > n / 2, (snap, n)  # most copies shed once the first interval saw the load
    assert snap["compared"] + snap["shed"] <= n


def test_loop_load_turns_on_at_high_and_off_below_low() -> None:
    from gateway.pipeline.load import LoopLoad

    load = LoopLoad(interval_s=0.1, high=0.8, low=0.6)
    load._wall, load._cpu = 0.0, 0.0
    seq = [(0.1, 0.09), (0.2, 0.16), (0.3, 0.23), (0.4, 0.28), (0.5, 0.29)]  # busy .9, .7, .7, .5, .1
    states = []
    for wall, cpu in seq:
        load.sample(wall, cpu)
        states.append(load.saturated)
    assert states == [True, True, True, False, False]


def test_a_reload_keeps_unchanged_versions_and_rebuilds_changed_ones(gw: ServerThread) -> None:
    c = Client(gw.http_port)
    repo = gw.app.repository
    before = {v: gw.app.registry.get("mlp", v) for v in ("1", "2", "3")}
    shutil.copytree(repo / "mlp" / "3", repo / "mlp" / "4")
    assert c.call("POST", "/v2/repository/models/mlp/load", {}, AUTH)[0] == 200
    after = {v: gw.app.registry.get("mlp", v) for v in ("1", "2", "3", "4")}
    assert all(after[v] is before[v] for v in before)  # the same sessions, queues and statistics
    # a traffic-only change to config.toml rebuilds nothing and takes effect
    (repo / "mlp" / "config.toml").write_text('version_policy = "all"\n[traffic]\nweights = { "4" = 100 }\n')
    assert c.call("POST", "/v2/repository/models/mlp/load", {}, AUTH)[0] == 200
    assert all(gw.app.registry.get("mlp", v) is after[v] for v in after)
    assert {c.infer("mlp", X64)[2]["model_version"] for _ in range(20)} == {"4"}
    # a setting that shapes the versions rebuilds them all
    (repo / "mlp" / "config.toml").write_text('version_policy = "all"\nmax_queue_size = 100\n')
    assert c.call("POST", "/v2/repository/models/mlp/load", {}, AUTH)[0] == 200
    assert all(gw.app.registry.get("mlp", v) is not after[v] for v in after)
    view = c.call("GET", "/v2/admin/models/mlp/traffic", headers=AUTH)[2]
    assert view["policy"] is None and view["source"] == "none"  # the file's policy went with the file
    c.close()
