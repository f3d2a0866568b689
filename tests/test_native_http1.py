"""gateway._native.http1.RequestReader against fixed cases and, on random valid request streams cut
at random places, against httptools (the parser it replaced) as the reference."""

from __future__ import annotations

from typing import Any

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._native.http1 import RequestReader


class Router:
    def __init__(self, sticky: dict[bytes, str] | None = None) -> None:
        self.sticky_headers = sticky or {}


class Proto:
    """Records what the reader calls."""

    def __init__(self) -> None:
        self.requests: list[tuple[Any, ...]] = []
        self.errors: list[tuple[int, str]] = []
        self.continues = 0
        self.heads: list[tuple[bytes, bytes]] = []

    def on_request(self, *args: Any) -> None:
        self.requests.append(args)

    def _fatal(self, status: int, message: str) -> None:
        self.errors.append((status, message))

    def expect_continue(self) -> None:
        self.continues += 1

    def check_head(self, method: bytes, url: bytes) -> None:
        self.heads.append((method, url))


def read(*chunks: bytes, max_head: int = 8192, max_body: int = 1 << 20,
         sticky: dict[bytes, str] | None = None) -> tuple[Proto, RequestReader]:
    proto = Proto()
    r = RequestReader(proto, Router(sticky), max_head, max_body, 0)
    for i, c in enumerate(chunks):
        r.feed(c, i + 1)
    return proto, r


def req(method: str = "GET", url: str = "/v2/health/ready", body: bytes = b"", headers: str = "",
        version: str = "1.1") -> bytes:
    cl = f"Content-Length: {len(body)}\r\n" if body else ""
    return f"{method} {url} HTTP/{version}\r\nHost: x\r\n{headers}{cl}\r\n".encode() + body


def test_one_request_fields() -> None:
    data = req("POST", "/v2/models/m/infer?x=1", b'{"a":1}',
               "Inference-Header-Content-Length: 3\r\nCONTENT-ENCODING: gzip\r\naccept-Encoding:  br \r\n"
               "Authorization: Bearer t\r\n")
    p, r = read(data)
    assert p.requests == [(b"POST", b"/v2/models/m/infer?x=1", True, b'{"a":1}', 3, b"gzip", b"br", b"Bearer t", None)]
    assert not p.errors and r.phase == 0 and r.messages == 1 and r.buffered == 0


@pytest.mark.parametrize(("version", "headers", "keep"), [
    ("1.1", "", True), ("1.1", "Connection: close\r\n", False), ("1.1", "Connection: keep-alive, Close\r\n", False),
    ("1.0", "", False), ("1.0", "Connection: Keep-Alive\r\n", True), ("1.0", "connection: foo, keep-alive\r\n", True),
])
def test_keep_alive(version: str, headers: str, keep: bool) -> None:
    data = req(headers=headers, version=version) + req("GET", "/after")
    p, r = read(data)
    assert [x[2] for x in p.requests] == ([True, True] if keep else [False])  # nothing read after a close
    assert r.stopped is (not keep)


def test_pipelined_and_split_at_every_byte_boundary() -> None:
    stream = (req("POST", "/a", b"x" * 300) + b"\r\n" + req("GET", "/b")
              + b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\nT: v\r\n\r\n"
              + req("HEAD", "/d"))
    whole, _ = read(stream)
    assert [(x[0], x[1], x[3]) for x in whole.requests] == [
        (b"POST", b"/a", b"x" * 300), (b"GET", b"/b", b""), (b"POST", b"/c", b"wikipedia"), (b"HEAD", b"/d", b"")]
    for i in range(len(stream) + 1):
        p, r = read(stream[:i], stream[i:])
        assert p.requests == whole.requests and not p.errors, i
    p, r = read(*[stream[i:i + 1] for i in range(len(stream))])
    assert p.requests == whole.requests and r.buffered == 0


def test_phase_and_since() -> None:
    p = Proto()
    r = RequestReader(p, Router(), 8192, 1 << 20, 0)
    r.feed(b"GET / HTTP/1.1\r\n", 5)
    assert r.phase == 1 and r.since == 0  # a connection's first request is timed from accept
    r.feed(b"Content-Length: 4\r\n\r\nab", 6)
    assert r.phase == 2 and r.since == 6
    r.feed(b"cd", 7)
    assert r.phase == 0 and len(p.requests) == 1
    r.feed(b"GET", 9)
    assert r.phase == 1 and r.since == 9


@pytest.mark.parametrize(("data", "status"), [
    (b"GET / HTTP/1.1\nHost: x\r\n\r\n", 400),  # bare LF
    (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHo\x01st: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\x00y\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", 400),
    (b"GET  / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 400),
    (b"GET /\x7f HTTP/1.1\r\n\r\n", 400),
    (b"G(T / HTTP/1.1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 400),
    (b"CONNECT x:443 HTTP/1.1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\nab\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 2000\r\n\r\n", 413),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n", 413),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"200\r\n" + b"x" * 512 + b"\r\n" + b"300\r\n", 413),
    (b"GET /" + b"a" * 600 + b" HTTP/1.1\r\n\r\n", 431),  # complete, but too large
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 600, 431),  # unfinished, already too large
])
def test_errors_answer_once_and_stop(data: bytes, status: int) -> None:
    p, r = read(data, req(), max_head=512, max_body=1000)
    assert [e[0] for e in p.errors] == [status] and p.requests == [] and r.stopped
    assert r.buffered == 0


def test_upgrade_header_alone_is_just_a_header() -> None:
    p, _ = read(req(headers="Upgrade: h2c\r\n"))
    assert len(p.requests) == 1 and not p.errors


def test_unfinished_head_is_cut_off_at_the_limit_not_after() -> None:
    p, r = read(b"GET / HTTP/1.1\r\n", b"X: " + b"a" * 400 + b"\r\n", max_head=512)
    assert not p.errors and r.buffered < 512
    r.feed(b"Y: " + b"b" * 100, 3)
    assert [e[0] for e in p.errors] == [431]


def test_expect_continue_after_the_length_check_and_reserve_check_head() -> None:
    data = req("POST", "/m", b"abc", "Expect: 100-Continue\r\n")
    p, r = read(data[:-3])
    assert p.continues == 1 and p.requests == []
    r.feed(b"abc", 2)
    assert len(p.requests) == 1
    p, r = read(b"POST /m HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n", max_body=1000)
    assert p.continues == 0 and p.errors[0][0] == 413
    proto = Proto()
    rr = RequestReader(proto, Router(), 8192, 1000, 0)
    rr.check_head = True
    rr.feed(req("GET", "/metrics"), 1)
    assert proto.heads == [(b"GET", b"/metrics")] and len(proto.requests) == 1


def test_sticky_headers_and_headers_values_trimmed() -> None:
    p, _ = read(req(headers="X-User:\t alice \r\nx-other: 1\r\n"), sticky={b"x-user": "user"})
    assert p.requests[0][8] == {"user": b"alice"}
    p, _ = read(req(headers="X-Other: 1\r\n"), sticky={b"x-user": "user"})
    assert p.requests[0][8] is None


@pytest.mark.parametrize(("value", "parsed"), [("12", 12), ("0", 0), ("x", -2), ("-3", -2), ("", -2), ("1 2", -2)])
def test_inference_header_content_length(value: str, parsed: int) -> None:
    p, _ = read(req("POST", "/m", b"abc", f"Inference-Header-Content-Length: {value}\r\n"))
    assert p.requests[0][4] == parsed


def test_stop_reads_nothing_more() -> None:
    p, r = read(req())
    r.stop()
    r.feed(req(), 2)
    assert len(p.requests) == 1 and r.buffered == 0


# ---- against httptools, on random valid streams -------------------------------------------------
_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~", min_size=1, max_size=12)
_value = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=20).map(str.strip)
_path = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/-_.?=&%", max_size=30).map(lambda s: "/" + s)


@st.composite
def _request(draw: Any) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE"]))
    headers = [(n, v) for n, v in draw(st.lists(st.tuples(_token, _value), max_size=5))
               if n.lower() not in ("content-length", "transfer-encoding", "connection", "upgrade", "expect")]
    body = draw(st.binary(max_size=200))
    head = f"{method} {draw(_path)} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers)
    if draw(st.booleans()):
        sizes = draw(st.lists(st.integers(1, 50), max_size=6))
        chunks, rest = [], body
        for s in sizes:
            if rest:
                chunks.append(rest[:s])
                rest = rest[s:]
        if rest:
            chunks.append(rest)
        enc = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + enc
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class _Ref:
    def __init__(self) -> None:
        self.out: list[tuple[bytes, bytes, bool, bytes]] = []
        self.url = b""
        self.body = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.out.append((self.parser.get_method(), self.url, self.parser.should_keep_alive(), self.body))
        self.url = self.body = b""


@settings(max_examples=300, deadline=None)
@given(st.lists(_request(), min_size=1, max_size=5), st.lists(st.integers(0, 2000), max_size=6))
def test_same_requests_as_httptools(requests: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(requests)
    ref = _Ref()
    ref.parser = httptools.HttpRequestParser(ref)  # type: ignore[attr-defined]
    ref.parser.feed_data(stream)  # type: ignore[attr-defined]
    points = sorted({min(c, len(stream)) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    p, r = read(*pieces)
    assert not p.errors
    assert [(x[0], x[1], x[2], x[3]) for x in p.requests] == ref.out
    assert r.buffered == 0 and r.phase == 0
