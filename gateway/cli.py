"""The ``gateway`` command: ``serve`` (the server), ``loadtest`` (the load generator), ``admin``
(traffic policies on a running server), ``batch`` (offline scoring) and ``tune`` (precision x
serving configuration at an SLO)."""

from __future__ import annotations

import argparse
import os
import sys

from gateway import __version__, admin_cli
from gateway.batch import cli as batch_cli
from gateway.tune import cli as tune_cli


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model repository over HTTP and gRPC",
                       description="Serve a model repository (Triton layout) over KServe v2 HTTP and gRPC. "
                       "Settings: --config FILE (TOML), then GATEWAY_* environment variables, then flags.")
    p.add_argument("--model-repository", help="directory: <repo>/<model>/<version>/model.onnx")
    p.add_argument("--demo", action="store_true", default=None,
                   help="build and serve a demo repository generated in code (no files, no network)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, help="HTTP port (default 8000; 0 = any free port)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default 8001; 0 = any free port; -1 = off)")
    p.add_argument("--grpc-front", choices=["native", "grpcio"],
                   help="gRPC front: native (HTTP/2 in C on libnghttp2; the default) or grpcio (grpc.aio)")
    p.add_argument("--config", help="server settings file (TOML)")
    p.add_argument("--max-body-bytes", type=int, help="largest HTTP body accepted (413 past it)")
    p.add_argument("--loop", choices=["uvloop", "asyncio"], help="event loop (default uvloop)")
    p.add_argument("--workers", type=int, help="server processes sharing the ports via SO_REUSEPORT (default 1)")
    p.add_argument("--log-level", help="logging level (default INFO)")
    p.add_argument("--allow-client-shm", action="store_true", default=None,
                   help="let clients register system shared-memory regions (local clients only)")
    p.add_argument("--log-format", choices=["text", "json"],
                   help="log records as text lines (default) or one JSON object per line")
    p.add_argument("--access-log", action="store_true", default=None,
                   help="log one JSON line per request on the gateway.access logger")
    p.add_argument("--server-name", help="name reported in server metadata (default inference-gateway)")


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at exit: a reader that left is then a clean stop too
        return code
    except BrokenPipeError:
        # Whoever read our output went away (`gateway admin ... | head -5`): it had what it wanted.
        # Point stdout at /dev/null so that the flush at exit does not fail once more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None) -> int:
    # numpy's OpenBLAS pool is never used on the request path, but its idle threads spin after
    # any BLAS call and take CPU from the event loop and the kernel on small machines. Set before
    # numpy is imported; an explicit setting in the environment wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "loadtest":
        from gateway.loadtest import require_extra

        if (problem := require_extra()) is not None:
            print(problem, file=sys.stderr)
            return 2
        from gateway.loadtest.cli import main as loadtest_main

        return loadtest_main(argv[1:])
    parser = argparse.ArgumentParser(prog="gateway", description="KServe v2 inference gateway")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    sub.add_parser("loadtest", help="load-test any KServe v2 server (see `gateway loadtest --help`)")
    admin_cli.add_parser(sub)
    batch_cli.add_parser(sub)
    tune_cli.add_parser(sub)
    demo = sub.add_parser("demo", help="the demo models (generated in code)")
    demo_sub = demo.add_subparsers(dest="demo_command", required=True)
    export = demo_sub.add_parser("export", help="write the demo repository to DIR (Triton layout)")
    export.add_argument("dir", help="target directory (created; existing demo models are overwritten)")
    args = parser.parse_args(argv)
    if args.command == "admin":
        return admin_cli.run(args)
    if args.command == "batch":
        return batch_cli.run(args)
    if args.command == "tune":
        return tune_cli.run(args)
    if args.command == "demo":
        from gateway.demo import build_demo_repository

        root = build_demo_repository(args.dir)
        print(f"demo repository written to {root}: serve it with "
              f"`gateway serve --model-repository {args.dir}`")
        return 0
    if args.command == "serve":
        from gateway.app import serve
        from gateway.settings import ServerSettings

        overrides = {
            "model_repository": args.model_repository, "demo": args.demo, "host": args.host,
            "http_port": args.http_port, "grpc_port": args.grpc_port, "grpc_front": args.grpc_front,
            "max_body_bytes": args.max_body_bytes,
            "loop": args.loop, "log_level": args.log_level, "workers": args.workers,
            "allow_client_shm": args.allow_client_shm,
            "log_format": args.log_format, "access_log": args.access_log, "server_name": args.server_name,
        }
        try:
            settings = ServerSettings.load(args.config, overrides=overrides)
        except (ValueError, OSError) as exc:
            parser.error(str(exc))
        if settings.grpc_front == "native" and settings.grpc_port >= 0:
            from gateway.front.grpc.native import MISSING

            if MISSING is not None:  # refuse to start rather than serve another front than asked
                parser.error(MISSING)
        return serve(settings, ServerSettings.unknown_env())
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
