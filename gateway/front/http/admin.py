"""Admin routes over HTTP: a model's traffic policy, rollback, promote, and outcome feedback.

- ``GET  /v2/admin/models/{m}/traffic``: the policy in force, per-arm live numbers, guard states,
  shadow comparison, outcome report, recent events.
- ``PUT  /v2/admin/models/{m}/traffic``: replace the policy (the ``[traffic]`` keys as JSON);
  validated whole, applied atomically; 400 names the bad field.
- ``POST /v2/admin/models/{m}/rollback``: all traffic to the stable version at once.
- ``POST /v2/admin/models/{m}/promote``: the next rollout step, or the canary becomes stable
  (body ``{"version": "2"}`` names it when there are several).
- ``POST /v2/models/{m}/outcomes``: ``{"outcomes": [{"request_id"|"key"|"arm": ..., "metric": ...,
  "value": ...}, ...]}`` credits downstream outcomes to the arm that answered.

Protected by a bearer token (``admin_token`` / ``GATEWAY_ADMIN_TOKEN``). With no token configured
the admin routes do not exist (404): an admin API that is open by default is a hole. A missing or
wrong token is 401 with nothing changed. When a token is set, repository load/unload and outcome
feedback require it too (outcomes steer guards: a forged flood could roll a good canary back).
"""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import unquote

import orjson

from gateway.dataplane import DataPlane
from gateway.errors import Code, GatewayError, invalid

Doc = tuple[int, Any]

_ACTIONS = {("GET", "traffic"), ("PUT", "traffic"), ("POST", "rollback"), ("POST", "promote")}


def check_token(expected: str, authorization: bytes | None) -> None:
    """Raise UNAUTHENTICATED unless ``authorization`` is ``Bearer <expected>`` (constant-time compare)."""
    given = b""
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(b" ")
        if scheme.lower() == b"bearer":
            given = value.strip()
    if not given or not hmac.compare_digest(given, expected.encode()):
        raise GatewayError(Code.UNAUTHENTICATED, "missing or wrong admin token (send 'Authorization: Bearer <token>')")


def _json(body: bytes, what: str) -> Any:
    if not body.strip():
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"{what}: the body is not valid JSON: {exc}") from None


def is_admin_path(parts: list[str]) -> bool:
    return len(parts) >= 2 and parts[0] == "v2" and parts[1] == "admin"


def route_admin(dp: DataPlane, token: str, method: str, parts: list[str], body: bytes,
                authorization: bytes | None) -> Doc:
    """An admin request (``parts``: the path split on '/'). 404 when no token is configured."""
    if not token:
        raise GatewayError(Code.NOT_FOUND, f"no route for {method} /{'/'.join(parts)} (the admin API is off: "
                                           "set admin_token to turn it on)")
    if len(parts) != 5 or parts[2] != "models" or (method, parts[4]) not in _ACTIONS:
        check_token(token, authorization)  # an unknown admin path tells nothing to a caller without the token
        raise GatewayError(Code.NOT_FOUND, f"no route for {method} /{'/'.join(parts)}")
    check_token(token, authorization)
    name, action = unquote(parts[3]), parts[4]
    traffic = dp.traffic
    if action == "traffic":
        if method == "GET":
            return 200, traffic.get(name)
        doc = _json(body, "traffic policy")
        if doc is None:
            raise invalid("traffic policy: the body must be a JSON object with the [traffic] keys")
        return 200, traffic.put(name, doc)
    if action == "rollback":
        return 200, traffic.rollback(name)
    doc = _json(body, "promote")
    version = ""
    if doc is not None:
        if not isinstance(doc, dict) or set(doc) - {"version"}:
            raise invalid("promote: the body must be empty or {\"version\": \"<version>\"}")
        version = str(doc.get("version", ""))
    return 200, traffic.promote(name, version)


def route_outcomes(dp: DataPlane, token: str, name: str, body: bytes, authorization: bytes | None) -> Doc:
    if token:
        check_token(token, authorization)
    doc = _json(body, "outcomes")
    items = doc.get("outcomes") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise invalid("outcomes: the body must be {\"outcomes\": [{\"request_id\" | \"key\" | \"arm\": ..., "
                      "\"metric\": ..., \"value\": ...}, ...]}")
    return 200, dp.traffic.outcomes(name, items)
