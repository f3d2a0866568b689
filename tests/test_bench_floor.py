"""bench/model_floor_server.py, the c=1 reference of bench/http_bench.sh (FLOOR=1), still serves:
it runs the demo's mlp once per POST and answers a KServe v2 reply a client can parse."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

from test_cli import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]


def test_model_floor_server_answers_infer_and_health() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "model_floor_server.py"), str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    try:
        wait_ready(port, proc, timeout=60)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/mlp/infer", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
        for _ in range(3):  # keep-alive off here: each is a new connection, each one model run
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status == 200
                out = json.loads(r.read())["outputs"][0]
        assert out["name"] == "OUTPUT0" and out["shape"] == [1, 10] and len(out["data"]) == 10
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)
