"""Run inside a freshly built venv by tests/test_install_compat.py (not collected by pytest).

    python smoke.py tritonclient|stub

Starts ``gateway serve --demo`` from this venv on free ports, then calls it over gRPC (and HTTP
with tritonclient): with the official tritonclient where the venv has it, else with the
gateway's own stubs (venvs whose protobuf tritonclient does not accept). Prints one JSON line.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(mode: str) -> int:
    import google.protobuf

    http_port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--demo", "--http-port", str(http_port),
                             "--grpc-port", str(grpc_port), "--log-level", "WARNING"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        end = time.time() + 120
        while True:
            if proc.poll() is not None:
                print(proc.stdout.read() if proc.stdout else "", file=sys.stderr)
                raise SystemExit(f"gateway exited with {proc.returncode}")
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2).status == 200:
                    break
            except OSError:
                if time.time() > end:
                    raise
                time.sleep(0.3)
        x = np.arange(32, dtype=np.float32).reshape(2, 16)
        if mode == "tritonclient":
            import tritonclient.grpc as grpcclient
            import tritonclient.http as httpclient

            outputs = {}
            for name, mod, url in (("grpc", grpcclient, f"127.0.0.1:{grpc_port}"),
                                   ("http", httpclient, f"127.0.0.1:{http_port}")):
                client = mod.InferenceServerClient(url)
                assert client.is_server_ready()
                inputs = [mod.InferInput("INPUT0", [2, 16], "FP32"), mod.InferInput("INPUT1", [2, 16], "FP32")]
                inputs[0].set_data_from_numpy(x)
                inputs[1].set_data_from_numpy(x)
                outputs[name] = client.infer("add_sub", inputs).as_numpy("OUTPUT0").tolist()
                client.close()
            result = outputs["grpc"]
            assert outputs["http"] == result
        else:
            import grpc

            from gateway.pb import Stub
            from gateway.pb import service as pb

            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
                stub = Stub(ch)
                assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
                req = pb.ModelInferRequest(model_name="add_sub")
                for name in ("INPUT0", "INPUT1"):
                    req.inputs.add(name=name, datatype="FP32", shape=[2, 16])
                    req.raw_input_contents.append(x.tobytes())
                resp = stub.ModelInfer(req, timeout=10)
                result = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(2, 16).tolist()
        assert result == (2 * x).tolist(), result
        print(json.dumps({"protobuf": google.protobuf.__version__, "mode": mode, "ok": True}))
        return 0
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
