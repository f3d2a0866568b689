"""The native lane (``gateway._native.lane``): HTTP infer requests from decode to the batch queue
and back in C, with the Python stages for everything it does not cover.

Real server, real sockets on 127.0.0.1, real onnxruntime sessions. The lane must answer exactly
as the general path does (byte for byte, on random requests), interoperate with it (a general-path
follower joins a lane leader's flight), and keep the stages' rules: a client that leaves is never
computed for, deadlines, the in-flight cap, order of pipelined answers.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import identity_model, reference, write_model

from gateway._native.lane import counts
from gateway.demo import mlp_model
from gateway.front.http.server import HttpProtocol
from gateway.testing import ServerThread

SLOW = "max_queue_delay_us = 300000\n"  # requests wait 0.3 s for a fuller batch


def build_repo(root: Path) -> Path:
    # inline, not auto: on a slow host a warm batch of 64 rows can pass auto's 500 us threshold, and
    # the encoder test below replaces the backend's inline run (seen in CI: 200 where 500 was due)
    write_model(root, "mlp", 1, mlp_model(seed=1), 'execution = "inline"\n')
    write_model(root, "slow", 1, mlp_model(seed=2), SLOW)
    write_model(root, "solo", 1, mlp_model(seed=3), SLOW + "coalesce = false\n")
    write_model(root, "ranked", 1, mlp_model(seed=1), "priority_levels = 2\n")
    write_model(root, "cached", 1, identity_model("FP32"), "response_cache_bytes = 4096\n")
    write_model(root, "ident", 1, identity_model("INT32"))
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repo(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def gw(repo: Path) -> Iterator[ServerThread]:
    with ServerThread(repository=repo) as srv:
        yield srv


# ---- raw HTTP ------------------------------------------------------------------------------------
def request_bytes(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    return head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body


def read_answers(sock: socket.socket, n: int) -> list[bytes]:
    """``n`` whole HTTP answers (head and body, as sent)."""
    buf = b""
    out: list[bytes] = []
    while len(out) < n:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = buf[:end].decode("latin-1").lower()
            length = int(head.split("content-length:")[1].split("\r\n")[0])
            total = end + 4 + length
            if len(buf) >= total:
                out.append(buf[:total])
                buf = buf[total:]
                continue
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise AssertionError(f"connection closed after {len(out)} answers")
        buf += chunk
    return out


def exchange(port: int, data: bytes, n: int = 1) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        return read_answers(s, n)


def split(answer: bytes) -> tuple[int, bytes, bytes]:
    end = answer.index(b"\r\n\r\n")
    return int(answer[9:12]), answer[:end], answer[end + 4:]


def json_body(x: np.ndarray, rid: str = "", outputs: list[dict[str, Any]] | None = None,
              parameters: dict[str, Any] | None = None, datatype: str = "FP32") -> bytes:
    doc: dict[str, Any] = {"inputs": [{"name": "INPUT0", "datatype": datatype, "shape": list(x.shape),
                                       "data": x.ravel().tolist()}]}
    if rid:
        doc["id"] = rid
    if outputs is not None:
        doc["outputs"] = outputs
    if parameters is not None:
        doc["parameters"] = parameters
    return json.dumps(doc).encode()


def lane_moves(fn: Any) -> tuple[int, int]:
    """(lane, general) requests while ``fn`` ran (the counters are this process's: the server runs in it)."""
    lane0, gen0 = counts()
    fn()
    lane1, gen1 = counts()
    return lane1 - lane0, gen1 - gen0


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 64)).astype(np.float32)


async def until(pred: Any, timeout: float = 5.0) -> None:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.002)


def wait_queued(gw: ServerThread, model: str, n: int) -> None:
    mv = gw.app.registry.get(model, "1")

    async def main() -> None:
        await until(lambda: mv.batcher.queue.rows >= n)

    gw.call(main())


# ---- which requests take it ----------------------------------------------------------------------
def test_common_requests_take_the_lane_and_are_answered_correctly(gw: ServerThread, repo: Path) -> None:
    x = rows(2, 1)
    want = reference(repo, "mlp", "1", {"INPUT0": x})["OUTPUT0"]
    got: list[bytes] = []
    moved = lane_moves(lambda: got.extend(exchange(gw.http_port, request_bytes("/v2/models/mlp/infer",
                                                                               json_body(x, "a")))))
    assert moved == (1, 0)
    status, _, body = split(got[0])
    doc = json.loads(body)
    assert status == 200 and doc["id"] == "a" and doc["model_version"] == "1"
    np.testing.assert_allclose(np.asarray(doc["outputs"][0]["data"]).reshape(2, 10), want, rtol=1e-6)

    # tritonclient's default: the binary extension both ways
    import tritonclient.http as httpclient
    c = httpclient.InferenceServerClient(gw.http_url)
    inp = httpclient.InferInput("INPUT0", [2, 64], "FP32")
    inp.set_data_from_numpy(x)
    out: list[Any] = []
    assert lane_moves(lambda: out.append(c.infer("mlp", [inp], outputs=[httpclient.InferRequestedOutput("OUTPUT0")])))[0] == 1
    np.testing.assert_allclose(out[0].as_numpy("OUTPUT0"), want, rtol=1e-6)
    c.close()


@pytest.mark.parametrize("model,headers,params", [
    ("ranked", {}, None),  # priority levels: the admit stage's
    ("cached", {}, None),  # a response cache: the coalesce stage's
    ("mlp", {"Accept-Encoding": "gzip"}, None),  # a compressed answer
    ("slow", {}, {"priority": 1}),  # a priority parameter keys flights apart
])
def test_what_needs_a_python_stage_goes_the_general_way(gw: ServerThread, model: str, headers: dict[str, str],
                                                       params: dict[str, Any] | None) -> None:
    x = rows(1, 2) if model != "cached" else np.ones((1, 4), np.float32)
    got: list[bytes] = []
    moved = lane_moves(lambda: got.extend(exchange(
        gw.http_port, request_bytes(f"/v2/models/{model}/infer", json_body(x, parameters=params), headers))))
    assert moved == (0, 1)
    status = split(got[0])[0]
    assert status == 200


def test_refusals_are_the_general_paths_and_worded_there(gw: ServerThread) -> None:
    bad = json_body(rows(1)[:, :32])  # 32 columns where 64 are declared
    got: list[bytes] = []
    assert lane_moves(lambda: got.extend(exchange(gw.http_port, request_bytes("/v2/models/mlp/infer", bad)))) == (0, 1)
    status, _, body = split(got[0])
    assert status == 400 and "shape" in json.loads(body)["error"]


def test_a_traffic_policy_takes_the_model_off_the_lane(gw: ServerThread) -> None:
    r = gw.app.dataplane.router.table["mlp"]
    assert r.lanes[""] is r.lanes["1"] is gw.app.registry.get("mlp", "1").lane
    assert gw.app.registry.get("ranked", "1").lane is None and gw.app.registry.get("cached", "1").lane is None


# ---- the same answers ----------------------------------------------------------------------------
_requests = st.fixed_dictionaries({
    "model": st.sampled_from(["mlp", "ident"]),
    "rows": st.integers(1, 3),
    "id": st.sampled_from(["", "r-1", "ü"]),
    "outputs": st.sampled_from([None, [], [{"name": "OUTPUT0"}], [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
                                [{"name": "NOPE"}]]),
    "parameters": st.sampled_from([None, {}, {"binary_data_output": True}, {"timeout": 5_000_000}, {"other": 1}]),
    "binary_in": st.booleans(),
    "keep_alive": st.booleans(),
    "seed": st.integers(0, 2**31),
})


def build(spec: dict[str, Any]) -> bytes:
    rng = np.random.default_rng(spec["seed"])
    if spec["model"] == "mlp":
        x = rng.uniform(-3, 3, (spec["rows"], 64)).astype(np.float32)
        dt = "FP32"
    else:
        x = rng.integers(-2**31, 2**31 - 1, (spec["rows"], 4)).astype(np.int32)
        dt = "INT32"
    headers = {} if spec["keep_alive"] else {"Connection": "close"}
    if not spec["binary_in"]:
        body = json_body(x, spec["id"], spec["outputs"], spec["parameters"], dt)
    else:
        doc: dict[str, Any] = {"inputs": [{"name": "INPUT0", "datatype": dt, "shape": list(x.shape),
                                           "parameters": {"binary_data_size": x.nbytes}}]}
        for k in ("id", "outputs", "parameters"):
            if spec[k]:
                doc[k] = spec[k]
        head = json.dumps(doc).encode()
        body = head + x.tobytes()
        headers["Inference-Header-Content-Length"] = str(len(head))
    return request_bytes(f"/v2/models/{spec['model']}/infer", body, headers)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=_requests)
def test_the_lane_and_the_general_path_answer_byte_for_byte(gw: ServerThread, spec: dict[str, Any]) -> None:
    data = build(spec)
    lane = exchange(gw.http_port, data)[0]
    HttpProtocol.lane_ok = False
    try:
        general = exchange(gw.http_port, data)[0]
    finally:
        HttpProtocol.lane_ok = True
    assert lane == general


# ---- the stages' rules ---------------------------------------------------------------------------
def test_a_client_that_leaves_is_never_computed_for_and_releases_its_claims(gw: ServerThread) -> None:
    mv = gw.app.registry.get("slow", "1")
    cap = gw.app.dataplane.inflight
    before = mv.stats.execution_count
    s = socket.create_connection(("127.0.0.1", gw.http_port))
    lane0 = counts()[0]
    s.sendall(request_bytes("/v2/models/slow/infer", json_body(rows(1, 5))))
    wait_queued(gw, "slow", 1)
    assert counts()[0] == lane0 + 1 and cap.requests == 1 and len(mv.target.flights) == 1
    s.close()

    async def gone() -> None:
        await until(lambda: cap.requests == 0 and mv.batcher.queue.rows == 0)
        await asyncio.sleep(0.4)  # past the batch delay

    gw.call(gone())
    assert mv.stats.execution_count == before and not mv.target.flights
    assert mv.stats.fail_by_code.get("CANCELLED", 0) >= 1


def test_a_general_path_follower_joins_a_lane_leader_and_outlives_its_leaving(gw: ServerThread, repo: Path) -> None:
    mv = gw.app.registry.get("slow", "1")
    x = rows(1, 6)
    data = json_body(x, "lead")
    before = mv.stats.execution_count
    leader = socket.create_connection(("127.0.0.1", gw.http_port))
    leader.sendall(request_bytes("/v2/models/slow/infer", data))
    wait_queued(gw, "slow", 1)
    with socket.create_connection(("127.0.0.1", gw.http_port), timeout=30) as follower:
        # compression sends it the general way, where the Coalescer finds the lane's flight
        follower.sendall(request_bytes("/v2/models/slow/infer", json_body(x, "follow"), {"Accept-Encoding": "identity"}))

        async def joined() -> None:
            await until(lambda: any(f.followers for f in mv.target.flights.values()))

        gw.call(joined())
        leader.close()
        status, _, body = split(read_answers(follower, 1)[0])
    doc = json.loads(body)
    assert status == 200 and doc["id"] == "follow"
    want = reference(repo, "slow", "1", {"INPUT0": x})["OUTPUT0"]
    np.testing.assert_allclose(np.asarray(doc["outputs"][0]["data"]).reshape(1, 10), want, rtol=1e-6)
    assert mv.stats.execution_count - before == 1
    assert gw.app.dataplane.inflight.requests == 0 and not mv.target.flights


def test_lane_requests_coalesce_with_each_other_through_the_coalescer(gw: ServerThread) -> None:
    mv = gw.app.registry.get("slow", "1")
    x = rows(1, 7)
    before = mv.stats.execution_count
    socks = [socket.create_connection(("127.0.0.1", gw.http_port), timeout=30) for _ in range(5)]
    moved = lane_moves(lambda: [s.sendall(request_bytes("/v2/models/slow/infer", json_body(x, f"c{i}")))
                                for i, s in enumerate(socks)] and wait_queued(gw, "slow", 1))
    answers = [split(read_answers(s, 1)[0]) for s in socks]
    for s in socks:
        s.close()
    assert moved[0] >= 1  # the first leads on the lane; those that find its flight join it
    assert [a[0] for a in answers] == [200] * 5
    assert [json.loads(a[2])["id"] for a in answers] == [f"c{i}" for i in range(5)]
    assert mv.stats.execution_count - before == 1


def test_a_lane_request_past_its_deadline_is_answered_504(gw: ServerThread) -> None:
    got: list[bytes] = []
    moved = lane_moves(lambda: got.extend(exchange(gw.http_port, request_bytes(
        "/v2/models/solo/infer", json_body(rows(1, 8), parameters={"timeout": 20_000})))))
    status, _, body = split(got[0])
    assert moved == (1, 0) and status == 504 and "deadline" in json.loads(body)["error"]
    assert gw.app.dataplane.inflight.requests == 0


def test_pipelined_answers_keep_request_order_across_both_paths(gw: ServerThread) -> None:
    data = b""
    for i in range(30):
        headers = {"Accept-Encoding": "identity"} if i % 3 == 0 else {}  # every third the general way
        data += request_bytes("/v2/models/mlp/infer", json_body(rows(1 + i % 2, i), f"p{i}"), headers)
    answers = exchange(gw.http_port, data, 30)
    assert [json.loads(split(a)[2])["id"] for a in answers] == [f"p{i}" for i in range(30)]


def test_a_full_in_flight_cap_sends_the_request_the_general_way_to_be_refused(repo: Path) -> None:
    with ServerThread(repository=repo, max_inflight_requests=1) as srv:
        s = socket.create_connection(("127.0.0.1", srv.http_port), timeout=30)
        s.sendall(request_bytes("/v2/models/slow/infer", json_body(rows(1, 9))))
        wait_queued(srv, "slow", 1)
        got: list[bytes] = []
        moved = lane_moves(lambda: got.extend(exchange(srv.http_port, request_bytes(
            "/v2/models/slow/infer", json_body(rows(1, 10))))))
        status, head, _ = split(got[0])
        assert moved == (0, 1) and status == 429 and b"retry-after" in head.lower()
        assert split(read_answers(s, 1)[0])[0] == 200
        s.close()


# ---- followers -----------------------------------------------------------------------------------
def open_all(gw: ServerThread, docs: list[bytes], model: str = "slow") -> list[socket.socket]:
    socks = []
    for d in docs:
        s = socket.create_connection(("127.0.0.1", gw.http_port), timeout=30)
        s.sendall(request_bytes(f"/v2/models/{model}/infer", d))
        socks.append(s)
    return socks


def test_identical_bodies_join_the_leader_without_being_decoded(gw: ServerThread) -> None:
    from gateway._native.inferjson import counts as decoded

    mv = gw.app.registry.get("slow", "1")
    before = mv.stats.execution_count
    coalesced = mv.stats.coalesced_count
    d0 = sum(decoded())
    lane0 = counts()[0]
    socks = open_all(gw, [json_body(rows(1, 11), "same")])
    wait_queued(gw, "slow", 1)
    socks += open_all(gw, [json_body(rows(1, 11), "same")] * 4)
    answers = [split(read_answers(s, 1)[0]) for s in socks]
    for s in socks:
        s.close()
    assert [a[0] for a in answers] == [200] * 5 and len({a[2] for a in answers}) == 1
    assert counts()[0] - lane0 == 5 and sum(decoded()) - d0 == 1  # one decode for five requests
    assert mv.stats.execution_count - before == 1 and mv.stats.coalesced_count - coalesced == 4
    assert not mv.target.flights and not mv.lane.raw


def test_requests_queued_by_the_lane_leave_the_queue_as_its_add_would(gw: ServerThread) -> None:
    """The lane appends to a queue that holds requests of its shape in C (all but a batch's first):
    the rows, the running row counts and the deadline count must be ``BatchQueue.add``'s."""
    from gateway.pipeline.batch_queue import BatchQueue

    mv = gw.app.registry.get("slow", "1")
    lane0 = counts()[0]
    socks = open_all(gw, [json_body(rows(1 + i % 3, 20 + i)) for i in range(6)])
    wait_queued(gw, "slow", 12)
    seen: dict[str, Any] = {}

    async def look() -> None:
        q = mv.batcher.queue
        items = list(q.items())
        ref = BatchQueue(q.max_batch_size, q.delay, max_queue_rows=q.max_queue_rows)
        for p in items:
            cum, queue = p.cum, p.queue
            ref.add(p)  # (add writes cum and queue: compare with what the lane wrote, then restore)
            seen.setdefault("cum", []).append((cum, p.cum))
            p.cum, p.queue = cum, queue
        seen["rows"] = (q.rows, ref.rows, [b.rows for b in q.buckets.values()])
        seen["deadlines"] = (q.deadlines, ref.deadlines)
        seen["stats"] = mv.stats.queue_rows

    gw.call(look())
    answers = [split(read_answers(s, 1)[0]) for s in socks]
    for s in socks:
        s.close()
    assert [a[0] for a in answers] == [200] * 6 and counts()[0] - lane0 == 6
    lane_cum, add_cum = [c for c, _ in seen["cum"]], [c for _, c in seen["cum"]]
    assert lane_cum == add_cum and len(lane_cum) == 6 and lane_cum[-1] == 12
    assert seen["rows"] == (12, 12, [12]) and seen["stats"] == 12
    assert seen["deadlines"][0] == seen["deadlines"][1]


def test_distinct_bodies_stop_the_keying_by_bytes_and_identical_ones_restart_it(gw: ServerThread) -> None:
    """Keying bodies by their bytes only pays when identical bodies arrive: after RAW_KEY_PROBE
    leaders that nobody joined by bytes the lane stops, and a request that joins a flight by its
    tensors (an identical one, decoded) starts it again. Answers are the same either way."""
    from gateway._native.inferjson import counts as decoded
    from gateway._native.lane import set_raw_probe

    mv = gw.app.registry.get("slow", "1")
    old = set_raw_probe(4, 1000)
    try:
        assert mv.lane.raw_keying
        socks = open_all(gw, [json_body(rows(1, 40 + i)) for i in range(4)])
        wait_queued(gw, "slow", 4)
        assert not mv.lane.raw_keying  # four leaders keyed by bytes, none joined
        d0, keyed = sum(decoded()), len(mv.lane.raw)
        socks += open_all(gw, [json_body(rows(1, 50), "twin")])
        wait_queued(gw, "slow", 5)
        assert len(mv.lane.raw) == keyed  # not keyed by its bytes while off
        socks += open_all(gw, [json_body(rows(1, 50), "twin")])
        answers = [split(read_answers(s, 1)[0]) for s in socks]
        for s in socks:
            s.close()
        assert [a[0] for a in answers] == [200] * 6 and answers[4][2] == answers[5][2]
        assert sum(decoded()) - d0 == 2  # both twins decoded: the second joined by its tensors
        assert mv.lane.raw_keying  # and that started the keying again
    finally:
        set_raw_probe(*old)


def test_followers_that_leave_are_not_answered_and_the_rest_are(gw: ServerThread) -> None:
    mv = gw.app.registry.get("slow", "1")
    x = rows(1, 12)
    socks = open_all(gw, [json_body(x, "lead")])
    wait_queued(gw, "slow", 1)
    socks += open_all(gw, [json_body(x, f"f{i}") for i in range(3)])

    async def joined() -> None:
        await until(lambda: sum(f.live for f in mv.target.flights.values()) == 4)

    gw.call(joined())
    socks[0].close()  # the leader
    socks[1].close()  # a follower
    answers = [split(read_answers(s, 1)[0]) for s in socks[2:]]
    for s in socks[2:]:
        s.close()
    assert [(a[0], json.loads(a[2])["id"]) for a in answers] == [(200, "f1"), (200, "f2")]

    async def settled() -> None:
        await until(lambda: gw.app.dataplane.inflight.requests == 0)

    gw.call(settled())


def test_a_follower_past_its_own_deadline_gets_504_and_the_leader_its_answer(gw: ServerThread) -> None:
    x = rows(1, 13)
    socks = open_all(gw, [json_body(x, "lead")])
    wait_queued(gw, "slow", 1)
    socks += open_all(gw, [json_body(x, "short", parameters={"timeout": 20_000})])
    lead, short = (split(read_answers(s, 1)[0]) for s in socks)
    for s in socks:
        s.close()
    assert lead[0] == 200 and json.loads(lead[2])["id"] == "lead"
    assert short[0] == 504 and "deadline" in json.loads(short[2])["error"]


def test_a_leader_that_times_out_in_the_queue_leaves_a_new_computation_to_its_followers(gw: ServerThread) -> None:
    mv = gw.app.registry.get("slow", "1")
    x = rows(1, 14)
    before = mv.stats.execution_count
    socks = open_all(gw, [json_body(x, "short", parameters={"timeout": 50_000})])
    wait_queued(gw, "slow", 1)
    socks += open_all(gw, [json_body(x, "long")])
    short, long = (split(read_answers(s, 1)[0]) for s in socks)
    for s in socks:
        s.close()
    assert short[0] == 504
    assert long[0] == 200 and json.loads(long[2])["id"] == "long"
    assert mv.stats.execution_count - before == 1  # the expired one never ran; the retry did


def test_answered_tickets_are_freed_without_the_collector(gw: ServerThread) -> None:
    """Tickets point at each other (followers and their flight, the connection's table and the
    ticket) only while in flight: once answered, or gone, none may wait for the cycle collector."""
    import gc

    from gateway._native.lane import LaneTicket

    mv = gw.app.registry.get("slow", "1")
    gc.collect()
    gc.disable()
    try:
        x = rows(1, 15)
        socks = open_all(gw, [json_body(x, "a")])
        wait_queued(gw, "slow", 1)
        socks += open_all(gw, [json_body(x, "a")] * 3 + [json_body(x, f"b{i}") for i in range(3)]
                          + [json_body(rows(1, 16 + i)) for i in range(3)])
        socks[1].close()  # a follower leaves
        for s in socks[2:]:
            assert split(read_answers(s, 1)[0])[0] == 200
            s.close()
        socks[0].close()

        async def settled() -> None:
            await until(lambda: gw.app.dataplane.inflight.requests == 0 and not mv.target.flights)

        gw.call(settled())
        alive = [o for o in gc.get_objects() if type(o) is LaneTicket]
    finally:
        gc.enable()
    assert alive == []


def test_a_body_above_the_raw_key_bound_joins_by_its_tensors_after_decode(gw: ServerThread) -> None:
    from gateway._native.inferjson import counts as decoded
    from gateway._native.lane import RAW_KEY_MAX_BYTES

    mv = gw.app.registry.get("slow", "1")
    x = rows(60, 17)  # 60 x 64 float32 numbers in full: a JSON body above the bound
    body = json_body(x, "big")
    assert len(body) > RAW_KEY_MAX_BYTES
    before = mv.stats.execution_count
    d0 = sum(decoded())
    socks = open_all(gw, [body])
    wait_queued(gw, "slow", 60)
    assert not mv.lane.raw  # not keyed by its bytes
    socks += open_all(gw, [body])
    answers = [split(read_answers(s, 1)[0]) for s in socks]
    for s in socks:
        s.close()
    assert [a[0] for a in answers] == [200, 200] and answers[0][2] == answers[1][2]
    assert sum(decoded()) - d0 == 2 and mv.stats.execution_count - before == 1  # decoded, then joined


def test_an_answer_the_encoders_cannot_serialise_is_a_logged_500_and_the_server_goes_on(
        gw: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    """No real model here returns a tensor the protocol has no datatype for (complex64), so the
    backend's answer is replaced for one batch: the only stand-in in this file."""
    mv = gw.app.registry.get("mlp", "1")
    backend = mv.backend
    real = backend.run_inline

    def complex_once(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        backend.run_inline = real
        out = real(feeds)
        return {name: a.astype(np.complex64) for name, a in out.items()}

    backend.run_inline = complex_once
    try:
        with caplog.at_level("ERROR"):
            got = exchange(gw.http_port, request_bytes("/v2/models/mlp/infer", json_body(rows(1, 18), "c")))
    finally:
        backend.run_inline = real
    status, _, body = split(got[0])
    assert status == 500 and "cannot encode response" in json.loads(body)["error"]
    assert any("encoding response failed" in r.getMessage() for r in caplog.records)
    assert split(exchange(gw.http_port, request_bytes("/v2/models/mlp/infer", json_body(rows(1, 19))))[0])[0] == 200
