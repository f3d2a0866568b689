"""A single-threaded KServe v2 HTTP stub with a *known* service behaviour, for load-tester tests.

  python kserve_stub.py PORT [--delay-ms D] [--capacity K] [--pause-at S --pause-for P] [--status CODE]

--delay-ms D   every request is answered D ms after it arrives (no queueing: infinite servers).
--capacity K   requests are served one at a time at exactly K per second (service 1/K s, FIFO),
               scheduled on virtual time, so the sustainable rate is exactly K.
--pause-at S --pause-for P   S seconds after the first POST the server stalls for P seconds:
               nothing arriving or queued is answered before the pause ends.
--status CODE  answer every infer with this HTTP status (error accounting tests).
GET /metrics and /v2/models/mlp/stats count requests, queue and compute time (Triton-style).
"""

import argparse
import asyncio
import json

import httptools
import uvloop

INFER = json.dumps({"model_name": "mlp", "outputs": [
    {"name": "OUTPUT0", "datatype": "FP32", "shape": [1, 10], "data": [0.0] * 10}]}).encode()
META = json.dumps({"name": "mlp", "versions": ["1"], "platform": "stub",
                   "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 64]}],
                   "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 10]}]}).encode()


def resp(status: int, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return (b"HTTP/1.1 %d X\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n" % (status, ctype, len(body))) + body


class State:
    def __init__(self, args):
        self.a = args
        self.first = None
        self.free_at = 0.0
        self.count = 0
        self.queue_ns = 0
        self.compute_ns = 0


class Proto(asyncio.Protocol):
    def __init__(self, st, loop):
        self.st, self.loop = st, loop
        self.url = b""

    def connection_made(self, t):
        self.t = t
        self.p = httptools.HttpRequestParser(self)

    def data_received(self, data):
        try:
            self.p.feed_data(data)
        except httptools.HttpParserError:
            self.t.close()

    def on_url(self, url):
        self.url += url

    def on_message_complete(self):
        url, self.url = self.url, b""
        st = self.st
        if self.p.get_method() != b"POST":
            if url.startswith(b"/v2/health"):
                self.t.write(resp(200, b""))
            elif url == b"/metrics":
                body = (f"# TYPE stub_requests_total counter\nstub_requests_total {st.count}\n"
                        f"stub_queue_seconds_sum {st.queue_ns / 1e9}\nstub_queue_seconds_count {st.count}\n")
                self.t.write(resp(200, body.encode(), b"text/plain"))
            elif url.endswith(b"/stats"):
                body = json.dumps({"model_stats": [{"name": "mlp", "version": "1", "inference_count": st.count,
                                                    "execution_count": st.count, "inference_stats": {
                                                        "success": {"count": st.count, "ns": st.queue_ns + st.compute_ns},
                                                        "queue": {"count": st.count, "ns": st.queue_ns},
                                                        "compute_infer": {"count": st.count, "ns": st.compute_ns}}}]})
                self.t.write(resp(200, body.encode()))
            elif url.startswith(b"/v2/models/"):
                self.t.write(resp(200, META))
            else:
                self.t.write(resp(200, b'{"name":"stub","version":"0","extensions":[]}'))
            return
        now = self.loop.time()
        a = st.a
        if st.first is None:
            st.first = now
        begin = now
        if a.pause_for and st.first + a.pause_at <= now < st.first + a.pause_at + a.pause_for:
            begin = st.first + a.pause_at + a.pause_for
        if a.capacity:
            service = 1.0 / a.capacity
            begin = max(begin, st.free_at)
            st.free_at = begin + service
        else:
            service = a.delay_ms / 1e3
        done = begin + service
        st.count += 1
        st.queue_ns += int((begin - now) * 1e9)
        st.compute_ns += int(service * 1e9)
        out = resp(a.status, INFER if a.status == 200 else b'{"error":"stub"}')
        if done <= now:
            self.t.write(out)
        else:
            self.loop.call_at(done, self._send, out)

    def _send(self, out):
        if not self.t.is_closing():
            self.t.write(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--capacity", type=float, default=0.0)
    ap.add_argument("--pause-at", type=float, default=0.0)
    ap.add_argument("--pause-for", type=float, default=0.0)
    ap.add_argument("--status", type=int, default=200)
    args = ap.parse_args()
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    st = State(args)
    srv = loop.run_until_complete(loop.create_server(lambda: Proto(st, loop), "127.0.0.1", args.port, backlog=4096))
    print(f"stub listening on {args.port}", flush=True)
    try:
        loop.run_forever()
    finally:
        srv.close()


if __name__ == "__main__":
    main()
