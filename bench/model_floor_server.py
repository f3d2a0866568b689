"""The 'model floor': the bare netlimit server (../shared/bench/netlimit_server.py) plus one
onnxruntime run of the demo mlp per POST, with the session options the gateway uses (one
intra-op thread, no spinning). No body parsing, no validation, no batching, a fixed input and a
fixed answer: what a round trip costs on this machine when the model runs in it and nothing else
does. The gateway's c=1 figure is measured against it in ``http_bench.sh`` (FLOOR=1), which
separates what the gateway adds from what running the model adds.

Usage: python bench/model_floor_server.py PORT [HOST=127.0.0.1]
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import cast

import httptools
import numpy as np
import onnxruntime as ort
import uvloop

from gateway.demo import mlp_model

INFER = json.dumps({"model_name": "mlp", "outputs": [
    {"name": "OUTPUT0", "datatype": "FP32", "shape": [1, 10], "data": [0.0] * 10}]},
    separators=(",", ":")).encode()
R_INFER = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
           + str(len(INFER)).encode() + b"\r\n\r\n" + INFER)
R_EMPTY = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n"


def _session() -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.onnx"
        path.write_bytes(mlp_model(seed=1).SerializeToString())
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


SESSION = _session()
FEEDS = {"INPUT0": np.random.default_rng(7).uniform(-1, 1, (1, 64)).astype(np.float32)}
RUN = SESSION._sess.run  # the binding, as the gateway calls it (no per-call name checks)
NAMES = ["OUTPUT0"]


class Proto(asyncio.Protocol):
    __slots__ = ("t", "p")
    t: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.p = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.p.feed_data(data)
        except httptools.HttpParserError:
            self.t.close()

    def on_message_complete(self) -> None:
        if self.p.get_method() == b"POST":
            RUN(NAMES, FEEDS, None)
            self.t.write(R_INFER)
        else:
            self.t.write(R_EMPTY)  # health: wait_ready polls it
        if not self.p.should_keep_alive():
            self.t.close()


def main() -> None:
    port = int(sys.argv[1])
    host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    srv = loop.run_until_complete(loop.create_server(Proto, host, port, backlog=1024))
    print(f"model floor listening on {host}:{port}", flush=True)
    try:
        loop.run_forever()
    finally:
        srv.close()


if __name__ == "__main__":
    main()
