"""A real Triton Inference Server (PyTriton) serving one ONNX file, for the remote-tier tests.

Run with the interpreter of the venv that ``provision.sh`` made (numpy<2, never the project's)::

    serve.py --grpc-port P --http-port H --model-file F.onnx --name mlp --max-batch-size 16 \\
             [--delay-ms D] [--instances N] --workspace W

A Python function bound with dynamic batching runs onnxruntime on the file; its inputs and outputs
are the session's, the batch dimension Triton's. ``--delay-ms`` sleeps that long per batch (a slow
remote). Prints ``ready grpc=P http=H`` once the model is loaded, and exits with status 0 after a
clean stop on SIGINT or SIGTERM (PyTriton removes its /dev/shm regions and the workspace only on a
clean stop) or when its parent process is gone (a test run that died leaves no server behind), 1
when tritonserver dies under it. Each server needs its own workspace.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import sysconfig
import time
from typing import Any

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int32)": np.int32,
          "tensor(int64)": np.int64, "tensor(bool)": np.bool_}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--model-file", required=True)
    p.add_argument("--name", default="mlp")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--delay-ms", type=float, default=0.0, help="sleep this long in each batch")
    p.add_argument("--instances", type=int, default=1, help="model instances (batches run in parallel)")
    p.add_argument("--max-queue-delay-us", type=int, default=0, help="Triton's dynamic batcher delay")
    p.add_argument("--workspace", required=True, help="this server's own directory (removed at a clean stop)")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def tensors(args: list[Any]) -> list[Tensor]:
    """Triton tensors from onnxruntime's: the first dimension is the batch one (Triton's own)."""
    out = []
    for a in args:
        if a.type not in DTYPES:
            raise SystemExit(f"serve.py: {a.name} is {a.type}; supported: {', '.join(DTYPES)}")
        dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in a.shape[1:])
        out.append(Tensor(name=a.name, dtype=DTYPES[a.type], shape=dims))
    return out


def make_infer(sess: ort.InferenceSession, delay_s: float) -> Any:
    names = [o.name for o in sess.get_outputs()]

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        if delay_s:
            time.sleep(delay_s)
        return dict(zip(names, sess.run(names, inputs), strict=True))

    return infer


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="serve.py %(levelname)s %(name)s: %(message)s")
    # Triton's python-backend stub is a separate executable linked against libpython: without this
    # it loads the system's libpython (another patch release than this interpreter's stdlib, e.g.
    # "'_thread.RLock' object has no attribute '_recursion_count'" at model load). Triton passes its
    # environment on to the stub, so no re-exec is needed.
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        os.environ["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH")) if p)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # the tests run several servers on a few cores
    sess = ort.InferenceSession(args.model_file, opts, providers=["CPUExecutionProvider"])

    config = TritonConfig(grpc_port=args.grpc_port, http_port=args.http_port, grpc_address="127.0.0.1",
                          http_address="127.0.0.1", allow_metrics=False, exit_timeout_secs=5,
                          log_verbose=1 if args.verbose else 0)
    # No access token on any API: the tests read statistics and the model configuration.
    triton = Triton(config=config, workspace=args.workspace, security_config=TritonSecurityConfig(restricted_endpoints=[]))
    model_config = ModelConfig(max_batch_size=args.max_batch_size,
                               batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us))
    infer = make_infer(sess, args.delay_ms / 1000)
    triton.bind(model_name=args.name, infer_func=[infer] * args.instances, inputs=tensors(sess.get_inputs()),
                outputs=tensors(sess.get_outputs()), config=model_config, strict=False)

    # SIGTERM stops as SIGINT does: the same KeyboardInterrupt, so that the cleanup below runs.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    parent = os.getppid()
    status = 0
    try:
        triton.run()
        print(f"ready grpc={args.grpc_port} http={args.http_port}", flush=True)
        while triton.is_alive():
            if os.getppid() != parent:
                print("serve.py: the parent process is gone: stopping", file=sys.stderr, flush=True)
                break
            time.sleep(0.2)
        else:
            print("serve.py: tritonserver is gone", file=sys.stderr, flush=True)
            status = 1
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        triton.stop()
    return status


if __name__ == "__main__":
    sys.exit(main())
