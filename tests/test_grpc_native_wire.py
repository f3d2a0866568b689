"""The native gRPC front on the wire, driven by a second HTTP/2 implementation (hyper-h2).

tritonclient speaks through grpc-core; these tests build the frames with hyper-h2 instead, so
that what the front accepts is HTTP/2 and gRPC as specified, not one client's habits: frames
split at every byte boundary, HPACK with huffman strings and dynamic-table size updates, a
client window smaller than an answer, many concurrent streams, a stream reset mid-request,
GOAWAY on stop, and the limits (a message declared past the bound is refused from its prefix,
an abandoned stream leaves nothing behind).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import numpy as np
import pytest

from gateway.front.grpc import native
from gateway.pb import service as pb
from gateway.testing import ServerThread

pytestmark = pytest.mark.skipif(native.MISSING is not None, reason=str(native.MISSING))

INFER = "/inference.GRPCInferenceService/ModelInfer"
X = np.linspace(-1, 1, 64, dtype=np.float32)


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerThread]:
    with ServerThread(grpc_front="native", grpc_max_message_bytes=1 << 20, grpc_max_inflight_bytes=1 << 24) as s:
        yield s


def infer_message(rid: str = "", x: np.ndarray = X) -> bytes:
    req = pb.ModelInferRequest(model_name="mlp", id=rid)
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 64])
    req.raw_input_contents.append(x.astype(np.float32).tobytes())
    msg = req.SerializeToString()
    return struct.pack(">BI", 0, len(msg)) + msg


def headers(path: str = INFER, extra: tuple[tuple[str, str], ...] = ()) -> list[tuple[str, str]]:
    return [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "127.0.0.1"),
            ("content-type", "application/grpc"), ("te", "trailers"), *extra]


class Client:
    """One HTTP/2 connection: hyper-h2 for the protocol, a plain socket, answers per stream."""

    def __init__(self, port: int, window: int = 0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.h2.initiate_connection()
        if window:
            self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.data: dict[int, bytearray] = {}
        self.headers: dict[int, list[tuple[str, str]]] = {}
        self.trailers: dict[int, dict[str, str]] = {}
        self.reset: set[int] = set()
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.flush()

    def flush(self, split: int = 0) -> None:
        out = self.h2.data_to_send()
        if not split:
            self.sock.sendall(out)
            return
        for i in range(0, len(out), split):
            self.sock.sendall(out[i:i + split])
            time.sleep(0)

    def send(self, sid: int, data: bytes, end_stream: bool = False) -> None:
        """``data`` on ``sid`` in frames the peer's limits allow, waiting for WINDOW_UPDATEs."""
        sent = 0
        while sent < len(data) or (end_stream and not sent and not data):
            room = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size, len(data) - sent)
            if room <= 0 and data:
                window = self.h2.local_flow_control_window(sid)
                self.flush()
                self.pump(lambda w=window: self.h2.local_flow_control_window(sid) > w)
                continue
            self.h2.send_data(sid, data[sent:sent + room], end_stream=end_stream and sent + room == len(data))
            sent += room
            self.flush()
            if not data:
                break

    def call(self, message: bytes, path: str = INFER, extra: tuple[tuple[str, str], ...] = ()) -> int:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, headers(path, extra))
        self.h2.send_data(sid, message, end_stream=True)
        return sid

    def pump(self, until: Any, timeout: float = 10) -> None:
        end = time.monotonic() + timeout
        while not until():
            if time.monotonic() > end:
                raise TimeoutError("no answer")
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                self.closed = True
                return
            for ev in self.h2.receive_data(chunk):
                self.event(ev)
            self.flush()

    def event(self, ev: Any) -> None:
        if isinstance(ev, h2.events.ResponseReceived):
            self.headers[ev.stream_id] = [(k.decode(), v.decode()) for k, v in ev.headers]
            d = dict(self.headers[ev.stream_id])
            if "grpc-status" in d:  # trailers-only
                self.trailers[ev.stream_id] = d
        elif isinstance(ev, h2.events.DataReceived):
            self.data.setdefault(ev.stream_id, bytearray()).extend(ev.data)
            self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            self.trailers[ev.stream_id] = {k.decode(): v.decode() for k, v in ev.headers}
        elif isinstance(ev, h2.events.StreamReset):
            self.reset.add(ev.stream_id)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = ev

    def answer(self, sid: int) -> tuple[dict[str, str], list[bytes]]:
        self.pump(lambda: sid in self.trailers or sid in self.reset)
        body = bytes(self.data.get(sid, b""))
        msgs = []
        while body:
            flag, n = struct.unpack(">BI", body[:5])
            assert flag == 0
            msgs.append(body[5:5 + n])
            body = body[5 + n:]
        return self.trailers.get(sid, {}), msgs

    def close(self) -> None:
        self.sock.close()


def outputs(msg: bytes) -> np.ndarray:
    resp = pb.ModelInferResponse.FromString(msg)
    assert resp.model_name == "mlp" and resp.outputs[0].name == "OUTPUT0"
    return np.frombuffer(resp.raw_output_contents[0], dtype=np.float32)


def reference(srv: ServerThread) -> np.ndarray:
    c = Client(srv.grpc_port)
    try:
        sid = c.call(infer_message())
        c.flush()
        trailers, msgs = c.answer(sid)
    finally:
        c.close()
    assert trailers["grpc-status"] == "0"
    return outputs(msgs[0])


def test_unary_infer_and_framing_split_at_every_byte_boundary(srv: ServerThread) -> None:
    want = reference(srv)
    for split in (1, 2, 3, 5, 7, 13, 64):
        c = Client(srv.grpc_port)
        try:
            sid = c.call(infer_message(f"r{split}"))
            c.flush(split)
            trailers, msgs = c.answer(sid)
            assert trailers["grpc-status"] == "0", trailers
            assert pb.ModelInferResponse.FromString(msgs[0]).id == f"r{split}"
            np.testing.assert_array_equal(outputs(msgs[0]), want)
        finally:
            c.close()


def test_many_concurrent_streams_hpack_dynamic_table_and_a_small_client_window(srv: ServerThread) -> None:
    """100 calls in flight on one connection (header blocks indexed in HPACK's dynamic table,
    huffman-coded: hyper-h2's defaults), a client window of 100 bytes (each answer needs several
    WINDOW_UPDATEs), and a dynamic-table size change halfway."""
    want = reference(srv)
    c = Client(srv.grpc_port, window=100)
    try:
        sids = []
        for i in range(100):
            if i == 50:
                c.h2.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 256})
            sids.append(c.call(infer_message(str(i)), extra=(("x-trace", f"value-{i % 7}"),)))
        c.flush()
        for i, sid in enumerate(sids):
            trailers, msgs = c.answer(sid)
            assert trailers["grpc-status"] == "0", trailers
            assert pb.ModelInferResponse.FromString(msgs[0]).id == str(i)
            np.testing.assert_array_equal(outputs(msgs[0]), want)
    finally:
        c.close()


def test_errors_are_grpc_statuses_and_the_connection_goes_on(srv: ServerThread) -> None:
    c = Client(srv.grpc_port)
    try:
        bad = pb.ModelInferRequest(model_name="nope").SerializeToString()
        s1 = c.call(struct.pack(">BI", 0, len(bad)) + bad)
        s2 = c.call(b"\x00\x00\x00\x00\x03abc")  # not a protobuf message
        s3 = c.call(b"\x00\x00\x00\x00\x00", path="/inference.GRPCInferenceService/NoSuchMethod")
        s4 = c.call(b"\x00\x00\x00\x00\x10abc")  # half-closed inside the message
        s5 = c.call(infer_message("ok"))
        c.flush()
        assert c.answer(s1)[0]["grpc-status"] == "5"  # NOT_FOUND
        assert c.answer(s2)[0]["grpc-status"] == "3"  # INVALID_ARGUMENT
        t3 = c.answer(s3)[0]
        assert t3["grpc-status"] == "12" and "NoSuchMethod" in t3["grpc-message"]  # UNIMPLEMENTED
        assert c.answer(s4)[0]["grpc-status"] == "13"  # INTERNAL
        t5, m5 = c.answer(s5)
        assert t5["grpc-status"] == "0" and pb.ModelInferResponse.FromString(m5[0]).id == "ok"
    finally:
        c.close()


def test_a_message_declared_past_the_limit_is_refused_from_its_prefix(srv: ServerThread) -> None:
    """Only the 5-byte prefix is sent: the answer comes before any of the 2 MiB, and the stream is
    reset so that the client stops sending."""
    c = Client(srv.grpc_port)
    try:
        sid = c.h2.get_next_available_stream_id()
        c.h2.send_headers(sid, headers())
        c.h2.send_data(sid, struct.pack(">BI", 0, 2 << 20))
        c.flush()
        c.pump(lambda: sid in c.trailers)
        t = c.trailers[sid]
        assert t["grpc-status"] == "8" and "larger than max" in t["grpc-message"]  # RESOURCE_EXHAUSTED
        s2 = c.call(infer_message("after"))
        c.flush()
        assert c.answer(s2)[0]["grpc-status"] == "0"
    finally:
        c.close()


def test_reset_mid_request_and_abandoned_streams_leave_nothing(srv: ServerThread) -> None:
    c = Client(srv.grpc_port)
    try:
        half = infer_message()[:100]
        sids = []
        for _ in range(20):  # half a message each, then reset
            sid = c.h2.get_next_available_stream_id()
            c.h2.send_headers(sid, headers())
            c.h2.send_data(sid, half)
            sids.append(sid)
        c.flush()
        for sid in sids[:10]:
            c.h2.reset_stream(sid)
        c.flush()
        s = c.call(infer_message("next"))
        c.flush()
        assert c.answer(s)[0]["grpc-status"] == "0"
        conns = srv.app.grpc.connections
        assert sum(x.open_streams for x in conns) == 10  # the 10 abandoned ones, still open
    finally:
        c.close()
    deadline = time.monotonic() + 5
    while srv.app.grpc.connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not srv.app.grpc.connections  # the connection's end dropped its streams


def test_goaway_on_stop_lets_open_calls_finish() -> None:
    with ServerThread(grpc_front="native") as s:
        c = Client(s.grpc_port)
        sid = c.call(infer_message("last"))
        c.flush()
        assert c.answer(sid)[0]["grpc-status"] == "0"
        s.call(s.app.grpc.stop(1.0))
        c.pump(lambda: c.goaway is not None or c.closed)
        assert c.goaway is not None and c.goaway.error_code == 0
        c.close()


def test_refuses_to_start_without_libnghttp2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "MISSING", "the native gRPC front needs libnghttp2 (apt-get install libnghttp2-dev)")
    with pytest.raises(RuntimeError, match="libnghttp2-dev"):
        native.NativeGrpcFront(None, None)  # type: ignore[arg-type]


PA = os.environ.get("PERF_ANALYZER", "")


@pytest.mark.skipif(not PA or not os.access(PA, os.X_OK), reason="set PERF_ANALYZER to a perf_analyzer")
@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "streaming"])
def test_perf_analyzer_works_unchanged(srv: ServerThread, streaming: bool) -> None:
    """perf_analyzer's gRPC client (metadata, config, then infer calls, unary or on a stream)
    against the native front: it finishes with a throughput, and the server counted successes."""
    import tritonclient.grpc as grpcclient

    def successes() -> int:
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{srv.grpc_port}")
        return sum(m.inference_stats.success.count for m in c.get_inference_statistics("mlp").model_stats)

    before = successes()
    out = subprocess.run([PA, "-m", "mlp", "-u", f"127.0.0.1:{srv.grpc_port}", "-i", "grpc", "-b", "1",
                          "--concurrency-range", "4", "--measurement-interval", "1500",
                          "--stability-percentage", "100", "--max-trials", "3",
                          *(["--streaming"] if streaming else [])],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    m = re.search(r"Throughput: ([0-9.]+) infer/sec", out.stdout)
    assert m and float(m.group(1)) > 0, out.stdout[-2000:]
    assert successes() - before >= 100


def test_a_message_larger_than_the_server_s_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 750 KB request through a 64 KiB receive window: the client sends what the window allows,
    the server's WINDOW_UPDATEs (nghttp2's, as the message is collected) let the rest through."""
    monkeypatch.setattr(native, "_WINDOW", 65535)
    x = np.random.default_rng(3).standard_normal((3000, 64)).astype(np.float32)
    req = pb.ModelInferRequest(model_name="mlp", id="big")
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[3000, 64])
    req.raw_input_contents.append(x.tobytes())
    msg = req.SerializeToString()
    data = struct.pack(">BI", 0, len(msg)) + msg
    with ServerThread(grpc_front="native") as s:
        c = Client(s.grpc_port)
        try:
            sid = c.h2.get_next_available_stream_id()
            c.h2.send_headers(sid, headers())
            c.send(sid, data, end_stream=True)
            trailers, msgs = c.answer(sid)
        finally:
            c.close()
    assert trailers["grpc-status"] == "0", trailers
    resp = pb.ModelInferResponse.FromString(msgs[0])
    assert resp.id == "big" and list(resp.outputs[0].shape) == [3000, 10]


def test_unfinished_messages_a_connection_holds_are_bounded() -> None:
    """Streams that send most of a message and stop: past grpc_max_inflight_bytes of them on one
    connection, the stream that would pass it is refused (RESOURCE_EXHAUSTED), and what the
    refused streams held is given back."""
    with ServerThread(grpc_front="native", grpc_max_message_bytes=1 << 20, grpc_max_inflight_bytes=1 << 20) as s:
        c = Client(s.grpc_port)
        try:
            part = struct.pack(">BI", 0, 900_000) + bytes(60_000)
            sids = []
            for _ in range(20):  # 20 x 60 KB held, more than 1 MiB
                sid = c.h2.get_next_available_stream_id()
                c.h2.send_headers(sid, headers())
                c.send(sid, part)
                sids.append(sid)
            c.pump(lambda: any(x in c.trailers for x in sids))
            refused = [x for x in sids if x in c.trailers]
            t = c.trailers[refused[0]]
            assert t["grpc-status"] == "8" and "unfinished messages" in t["grpc-message"]
            conn = next(iter(s.app.grpc.connections))
            assert conn.buffered <= 1 << 20
            for sid in sids:
                if sid not in c.trailers:
                    c.h2.reset_stream(sid)
            c.flush()
            deadline = time.monotonic() + 5
            while conn.buffered and time.monotonic() < deadline:
                time.sleep(0.01)
            assert conn.buffered == 0
            s2 = c.call(infer_message("after"))
            c.flush()
            assert c.answer(s2)[0]["grpc-status"] == "0"
        finally:
            c.close()


def test_common_calls_take_the_native_lane_and_identical_ones_join_undecoded(srv: ServerThread) -> None:
    """The HTTP front's lane serves gRPC calls too: 50 identical calls in one write are one flight
    (the followers joined by the message's bytes), each answered with its own stream's copy."""
    from gateway._native.lane import counts

    mv = srv.app.registry.get("mlp", "", require_ready=True)
    before_lane, before_general = counts()
    before_flights = mv.stats.shared_flights
    c = Client(srv.grpc_port)
    try:
        sids = [c.call(infer_message("same")) for _ in range(50)]
        c.flush()
        answers = [c.answer(sid) for sid in sids]
    finally:
        c.close()
    assert all(t["grpc-status"] == "0" for t, _ in answers)
    assert len({m[0] for _, m in answers}) == 1 and pb.ModelInferResponse.FromString(answers[0][1][0]).id == "same"
    lane, general = counts()
    assert lane - before_lane == 50 and general == before_general
    assert mv.stats.shared_flights > before_flights


def test_calls_leave_no_reference_cycles_behind(srv: ServerThread) -> None:
    """A call and its stream point at each other while it is open; once answered nothing cyclic
    may remain (a cycle per call hands every call to the collector), on the lane and the general
    path (a request parameter sends it there) alike."""
    import gc

    general = pb.ModelInferRequest(model_name="mlp", id="g")
    general.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 64])
    general.raw_input_contents.append(X.tobytes())
    general.parameters["timeout"].int64_param = 10_000_000
    g = general.SerializeToString()
    framed = struct.pack(">BI", 0, len(g)) + g
    # protobuf makes the class of a nested message (InferInputTensor) while one is alive and drops
    # it, a class-descriptor cycle, when none is: one held here keeps that out of the count
    tensor = general.inputs[0]
    c = Client(srv.grpc_port)
    try:
        for warm in (True, False):
            gc.collect()
            gc.disable()
            try:
                sids = [c.call(infer_message(str(i % 3), X + i)) for i in range(30)]
                sids += [c.call(framed) for _ in range(10)]
                c.flush()
                assert all(c.answer(sid)[0]["grpc-status"] == "0" for sid in sids)
                time.sleep(0.05)  # the server's loop finishes its side
                gc.set_debug(gc.DEBUG_SAVEALL)
                found = gc.collect()
                left = sorted({type(o).__name__ + ":" + str(getattr(o, "full_name", getattr(o, "__name__", ""))) for o in gc.garbage})
                gc.garbage.clear()
            finally:
                gc.set_debug(0)
                gc.enable()
            if not warm:
                assert found == 0, left
    finally:
        c.close()
    del tensor


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_as_tritonclient_sends_them(srv: ServerThread, algorithm: str) -> None:
    """tritonclient's ``compression_algorithm``: the message compressed, grpc-encoding named."""
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(f"127.0.0.1:{srv.grpc_port}")
    inp = grpcclient.InferInput("INPUT0", [1, 64], "FP32")
    inp.set_data_from_numpy(X.reshape(1, 64))
    got = c.infer("mlp", [inp], compression_algorithm=algorithm).as_numpy("OUTPUT0")
    plain = c.infer("mlp", [inp]).as_numpy("OUTPUT0")
    c.close()
    np.testing.assert_array_equal(got, plain)


def test_unknown_message_encoding_is_unimplemented(srv: ServerThread) -> None:
    c = Client(srv.grpc_port)
    try:
        msg = infer_message("z")
        sid = c.call(b"\x01" + msg[1:], extra=(("grpc-encoding", "snappy"),))
        c.flush()
        t = c.answer(sid)[0]
        assert t["grpc-status"] == "12" and "snappy" in t["grpc-message"]
    finally:
        c.close()


def test_keepalive_closes_a_connection_whose_pings_go_unanswered() -> None:
    """A PING every grpc_keepalive_time_s: a client that answers stays connected; one that never
    reads (so never acknowledges) is closed once grpc_keepalive_timeout_s has passed."""
    with ServerThread(grpc_front="native", grpc_keepalive_time_s=0.2, grpc_keepalive_timeout_s=0.3) as s:
        live, dead = Client(s.grpc_port), Client(s.grpc_port)
        try:
            end = time.monotonic() + 1.5
            while time.monotonic() < end:  # the live client reads and acknowledges
                with contextlib.suppress(TimeoutError, socket.timeout):
                    live.pump(lambda: False, timeout=0.1)
            assert not live.closed
            dead.sock.settimeout(5)
            data = b""
            while True:  # the dead one only now reads: PINGs, then the close
                chunk = dead.sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            assert data  # it was sent PINGs before being closed
            sid = live.call(infer_message("still"))
            live.flush()
            assert live.answer(sid)[0]["grpc-status"] == "0"
        finally:
            live.close()
            dead.close()


@pytest.mark.parametrize("shape", [[1 << 40, 64], [-1, 64], [0, 1 << 62], [1] * 65])
def test_huge_or_impossible_declared_shapes_are_refused_without_allocating(srv: ServerThread,
                                                                            shape: list[int]) -> None:
    """A shape no array can have, or one far past the raw contents sent: INVALID_ARGUMENT from the
    codec (the C decoder leaves it to it), nothing allocated for it, and the server goes on."""
    req = pb.ModelInferRequest(model_name="mlp", id="huge")
    req.inputs.add(name="INPUT0", datatype="FP32", shape=shape)
    req.raw_input_contents.append(X.tobytes())
    msg = req.SerializeToString()
    c = Client(srv.grpc_port)
    try:
        sid = c.call(struct.pack(">BI", 0, len(msg)) + msg)
        ok = c.call(infer_message("fine"))
        c.flush()
        assert c.answer(sid)[0]["grpc-status"] == "3"  # INVALID_ARGUMENT
        assert c.answer(ok)[0]["grpc-status"] == "0"
    finally:
        c.close()
