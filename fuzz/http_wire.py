"""Target ``http_wire``: request bytes into a real ``HttpProtocol``, over a fake transport that
records what is written, with a real ``DataPlane`` serving a tiny real repository (onnxruntime
sessions, batchers) on one long-lived asyncio loop.

Each input is fed twice, on fresh connections: whole, then cut into a few chunks (a loop pass
between chunks, no delivery while the protocol has paused reading, as a real transport does).
Contract, checked once the batches have run:
- no exception escapes ``data_received``; no error is logged and none reaches the loop's handler;
- every response is well formed (status line, content-length, a JSON ``{"error": ...}`` body
  for errors), its status one of ``ALLOWED`` (a 500 is a bug);
- on an open connection every request the parser completed got exactly one answer, nothing is
  owed (``_tickets``) or parked, reading is not paused; a closed one was closed after an answer
  that said ``connection: close``, and nothing was written after the close;
- an unfinished head never holds more than ``max_header_bytes`` past the chunk it began in (431);
- a 200 to an infer request names the model and the version of its URL (``versions//infer``
  must not reach the default version);
- both feedings give the same statuses (unless a 431 or 429 made them differ by design);
- once every timeout has passed, the sweep closes the connection (408 when a request was
  half-sent) and nothing of it is left in the front.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import re
import tempfile
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson

from fuzz._common import test_models
from gateway.compose import build_pipeline
from gateway.demo import add_sub_model, mlp_model
from gateway.front.http.server import _HEAD, HttpFront, HttpProtocol
from gateway.observe.metrics import make_metrics_registry
from gateway.settings import ServerSettings

ALLOWED = frozenset((200, 400, 404, 405, 408, 413, 415, 429, 431, 501, 503, 504))
"""Statuses the front may answer a client with; 500 means a bug."""
MAX_HEAD = 1024
MAX_BODY = 16384
PIPELINED = 4
_INFER = re.compile(rb"^/v2/models/([^/]*)(?:/versions/([^/]*))?/infer$")


class _Transport:
    """Just enough of ``asyncio.Transport``: records writes, counts writes after close."""

    __slots__ = ("out", "closed", "paused", "proto", "loop", "late_writes")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.out = bytearray()
        self.closed = False
        self.paused = False
        self.proto: HttpProtocol | None = None
        self.loop = loop
        self.late_writes = 0

    def write(self, data: bytes) -> None:
        if self.closed:
            self.late_writes += 1
        else:
            self.out += data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.call_soon(self.proto.connection_lost, None)  # type: ignore[union-attr]

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(name, default)


class _Recorded(HttpProtocol):
    """The real protocol, noting which requests the reader completed."""

    __slots__ = ("requests",)

    def __init__(self, front: HttpFront) -> None:
        super().__init__(front)
        self.requests: dict[int, tuple[bytes, bytes]] = {}  # seq -> (method, url)
        self.parser.tap = self._note  # every request, the ones the compiled path takes too

    def _note(self, method: bytes, url: bytes) -> None:
        if not self._closing:
            self.requests[self._seq] = (method, url)


class _Errors(logging.Handler):
    """Errors the gateway logs (each one a bug here), and the sweep's "never answered" warning."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or "never answered" in record.getMessage():
            self.seen.append(f"{record.name}: {record.getMessage()}")


class _Harness:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[str] = []
        self.loop.set_exception_handler(lambda _loop, ctx: self.loop_errors.append(str(ctx.get("message"))
                                                                                   + repr(ctx.get("exception"))))
        self._tmp = tempfile.TemporaryDirectory(prefix="gateway-fuzz-")
        root = build_repository(Path(self._tmp.name))
        pipeline = build_pipeline(root, repository_locked="model load/unload is off while fuzzing")
        self.registry = pipeline.registry
        self.loop.run_until_complete(self.registry.load_all())
        dp = pipeline.dataplane
        self.settings = ServerSettings(max_header_bytes=MAX_HEAD, max_body_bytes=MAX_BODY,
                                       max_pipelined_requests=PIPELINED)
        self.front = HttpFront(dp, self.settings, make_metrics_registry(dp))
        self.errors = _Errors()
        logging.getLogger("gateway").addHandler(self.errors)
        atexit.register(self.close)

    def close(self) -> None:
        logging.getLogger("gateway").removeHandler(self.errors)
        if not self.loop.is_closed():
            self.loop.run_until_complete(self.registry.close())
            self.loop.close()
        self._tmp.cleanup()

    def run(self, data: bytes, chunks: list[bytes]) -> list[int]:
        self.errors.seen.clear()
        self.loop_errors.clear()
        statuses = self.loop.run_until_complete(self._drive(chunks))
        assert not self.errors.seen, f"logged: {self.errors.seen}"
        assert not self.loop_errors, f"loop exception handler: {self.loop_errors}"
        return statuses

    async def _drive(self, chunks: list[bytes]) -> list[int]:
        front = self.front
        t = _Transport(self.loop)
        proto = _Recorded(front)
        t.proto = proto
        proto.connection_made(t)
        for chunk in chunks:
            for _ in range(100):  # a paused transport delivers nothing: the answers come first
                if not t.paused or t.closed:
                    break
                await _passes(3)
            if t.closed or t.paused:
                break
            proto.data_received(chunk)
            await asyncio.sleep(0)
        await _settle(proto)
        await _passes(2)  # a close just written is followed by connection_lost on the next pass
        responses = parse_responses(bytes(t.out), proto.requests)
        statuses = [status for status, _, _ in responses]
        assert t.late_writes == 0, f"{t.late_writes} writes after close"
        for i, (status, headers, body) in enumerate(responses):
            assert status in ALLOWED, f"response {i}: {status} {body[:300]!r}"
            check_response(status, headers, body, proto.requests.get(i))
        if not t.closed:
            assert len(responses) == len(proto.requests) == proto._seq == proto._next_write, (
                f"{len(responses)} answers for {len(proto.requests)} requests (seq {proto._seq}, "
                f"next write {proto._next_write})")
            assert not proto._tickets and not proto._parked, f"owed {list(proto._tickets)} parked {list(proto._parked)}"
            assert not t.paused, "reading paused with nothing owed"
            if proto._phase == _HEAD:
                held = proto.parser.buffered
                assert held <= MAX_HEAD, f"an unfinished head holds {held} bytes"
        else:
            assert responses, "closed without an answer"
            assert responses[-1][1].get(b"connection") == b"close", "closed after an answer that did not say so"
        # every timeout passes: the sweep must close the connection and leave nothing behind
        before = len(t.out)
        half_sent = not t.closed and proto._phase != 0 and not proto._paused
        front.tick += 10**6
        front._sweep()
        if front._sweeper is not None:
            front._sweeper.cancel()
        await _passes(3)
        assert t.closed, "the sweep left the connection open"
        if half_sent:
            late = parse_responses(bytes(t.out[before:]), {})
            assert [s for s, _, _ in late] == [408], f"half-sent request answered {late}"
        assert proto not in front.connections and not proto._tickets
        return statuses


async def _passes(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _settle(proto: HttpProtocol) -> None:
    """Let batches run and answers come (a thread-pool backend takes more than a loop pass)."""
    for i in range(2000):
        await asyncio.sleep(0 if i < 20 else 0.001)
        if i >= 2 and not proto._tickets:
            return


def parse_responses(out: bytes, requests: dict[int, tuple[bytes, bytes]]) -> list[tuple[int, dict, bytes]]:
    """The final responses in ``out`` (interim 100s skipped); HEAD answers carry no body."""
    responses: list[tuple[int, dict, bytes]] = []
    pos = 0
    while pos < len(out):
        end = out.find(b"\r\n\r\n", pos)
        assert end >= 0, f"truncated response head {out[pos:pos + 200]!r}"
        lines = out[pos:end].split(b"\r\n")
        m = re.match(rb"HTTP/1\.1 (\d{3}) [^\r\n]+$", lines[0])
        assert m, f"bad status line {lines[0][:100]!r}"
        status = int(m.group(1))
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            assert sep, f"bad header line {line!r}"
            headers[name.strip().lower()] = value.strip()
        pos = end + 4
        if status == 100:
            assert not headers
            continue
        length = int(headers[b"content-length"])
        request = requests.get(len(responses))
        if request is None or request[0] != b"HEAD":
            body = out[pos:pos + length]
            assert len(body) == length, f"body of {len(body)} bytes for content-length {length}"
            pos += length
        else:
            body = b""
        responses.append((status, headers, body))
    return responses


def check_response(status: int, headers: dict[bytes, bytes], body: bytes, request: tuple[bytes, bytes] | None) -> None:
    if status >= 400 and body:
        doc = orjson.loads(body)
        assert isinstance(doc, dict) and isinstance(doc.get("error"), str), f"error body {body[:200]!r}"
    if request is None:
        return
    method, url = request
    m = _INFER.match(url.split(b"?", 1)[0])
    if m is None or method != b"POST":
        return
    if m.group(2) == b"":
        assert status >= 400, f"{url!r} answered {status}: an empty version segment is not the default version"
    if status != 200:
        return
    coding = headers.get(b"content-encoding")
    if coding is not None:
        body = zlib.decompress(body, 16 + zlib.MAX_WBITS if coding == b"gzip" else zlib.MAX_WBITS)
    hlen = headers.get(b"inference-header-content-length")
    doc = orjson.loads(body[:int(hlen)] if hlen is not None else body)
    assert doc["model_name"] == unquote(m.group(1).decode("latin-1")), f"{url!r} answered by {doc['model_name']}"
    if m.group(2) is not None:
        assert doc["model_version"] == unquote(m.group(2).decode("latin-1")), \
            f"{url!r} answered by version {doc['model_version']}"
    assert isinstance(doc["outputs"], list)


def build_repository(root: Path) -> Path:
    """A few small models: batching with splits (add_sub, max 4 rows), two versions (mlp), BYTES
    with a 2-row queue (identity_bytes: 429s), several dtypes (multi), no batching (static), a
    variable inner dimension on a thread pool (rowsum)."""
    m = test_models()
    write_model, identity_model = m.write_model, m.identity_model
    inline = 'execution = "inline"\n'
    write_model(root, "add_sub", 1, add_sub_model(), inline + "max_batch_size = 4\n")
    write_model(root, "mlp", 1, mlp_model(seed=1), inline + 'version_policy = "all"\n')
    write_model(root, "mlp", 2, mlp_model(seed=2))
    write_model(root, "identity_bytes", 1, identity_model("BYTES"), inline + "max_queue_size = 2\n")
    write_model(root, "multi", 1, m.multi_dtype_model(), inline)
    write_model(root, "static", 1, m.static_model(), inline)
    write_model(root, "rowsum", 1, m.rowsum_model(), 'execution = "thread"\n')
    return root


_harness: _Harness | None = None


def harness() -> _Harness:
    global _harness
    if _harness is None:
        _harness = _Harness()
    return _harness


def one_input(data: bytes) -> None:
    h = harness()
    whole = h.run(data, [data])
    n = 2 + zlib.crc32(data) % 7
    size = max(1, -(-len(data) // n))
    chunked = h.run(data, [data[i:i + size] for i in range(0, len(data), size)] or [b""])
    if 431 not in whole + chunked and 429 not in whole + chunked:
        assert whole == chunked, f"whole: {whole}, in chunks of {size}: {chunked}"


def setup() -> None:
    """Build the repository and load the models before the fuzzer's clock starts."""
    harness()
