"""``gateway admin``: the traffic admin API from a shell (stdlib HTTP only).

    gateway admin traffic mlp                          # policy, arms, guards, shadow, outcomes
    gateway admin set mlp '{"weights": {"1": 95, "2": 5}}'   # or --file policy.json
    gateway admin rollback mlp
    gateway admin promote mlp [--version 2]

The token comes from ``--token`` or ``GATEWAY_ADMIN_TOKEN`` (the same variable the server reads),
the server from ``--url`` (default http://127.0.0.1:8000). Prints the server's JSON answer; exits 1
on an error answer, with the server's message on stderr.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
from typing import Any
from urllib.parse import quote, urlsplit


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("admin", help="change traffic policies on a running gateway (admin API)",
                       description="Call a running gateway's admin API. Token: --token or GATEWAY_ADMIN_TOKEN.")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway's HTTP address")
    p.add_argument("--token", help="admin bearer token (default: $GATEWAY_ADMIN_TOKEN)")
    s = p.add_subparsers(dest="admin_command", required=True)
    s.add_parser("traffic", help="show a model's traffic policy and live per-arm state").add_argument("model")
    put = s.add_parser("set", help="replace a model's traffic policy (JSON with the [traffic] keys)")
    put.add_argument("model")
    put.add_argument("policy", nargs="?", help="the policy as JSON (or use --file)")
    put.add_argument("--file", help="read the policy JSON from this file")
    s.add_parser("rollback", help="all traffic to the stable version at once").add_argument("model")
    pr = s.add_parser("promote", help="next rollout step, or make the canary the stable version")
    pr.add_argument("model")
    pr.add_argument("--version", help="the version to promote (when there are several canaries)")


def run(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("GATEWAY_ADMIN_TOKEN", "")
    if not token:
        print("gateway admin: no token: pass --token or set GATEWAY_ADMIN_TOKEN", file=sys.stderr)
        return 2
    base = f"/v2/admin/models/{quote(args.model, safe='')}"
    body: Any = None
    if args.admin_command == "traffic":
        method, path = "GET", base + "/traffic"
    elif args.admin_command == "set":
        text = open(args.file).read() if args.file else args.policy  # noqa: SIM115 - one short read
        if not text:
            print("gateway admin set: give the policy as JSON or --file", file=sys.stderr)
            return 2
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            print(f"gateway admin set: the policy is not valid JSON: {exc}", file=sys.stderr)
            return 2
        method, path = "PUT", base + "/traffic"
    elif args.admin_command == "rollback":
        method, path = "POST", base + "/rollback"
    else:
        method, path = "POST", base + "/promote"
        body = {"version": args.version} if args.version else None
    status, doc = call(args.url, method, path, token, body)
    if status >= 400:
        print(f"gateway admin: HTTP {status}: {doc.get('error', doc) if isinstance(doc, dict) else doc}",
              file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2, sort_keys=True))
    return 0


def call(url: str, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    u = urlsplit(url)
    conn_type = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    conn = conn_type(u.hostname or "127.0.0.1", u.port or (443 if u.scheme == "https" else 80), timeout=30)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Authorization": f"Bearer {token}",
                                                        "Content-Type": "application/json"})
        r = conn.getresponse()
        raw = r.read()
        try:
            return r.status, json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return r.status, raw.decode("utf-8", "replace")
    finally:
        conn.close()
