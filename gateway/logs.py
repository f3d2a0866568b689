"""Logging for the server process: text or JSON lines on stderr, and the opt-in access log.

``configure_logging`` is the one place a server process sets logging up (``app.serve`` calls it,
and so does every worker process, which starts with bare logging). Library use (``App``,
``ServerThread``) configures nothing: the embedding program owns its logging.

- ``log_format = "json"``: every record is one JSON object per line (time, level, logger,
  message, and exception text when there is one), for log collectors that parse lines.
- ``access_log = true``: one JSON object per request on the ``gateway.access`` logger (fields in
  ``log_access``). It does not propagate to the root logger, so its lines stay pure JSON in both
  formats; operators route it by configuring that logger. The fronts only call ``log_access``
  when the setting is on (a subclass or an interceptor installed at start), so a server without
  it pays nothing per request.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from typing import Any

import orjson

ACCESS_LOGGER = "gateway.access"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_HANDLER_NAME = "gateway"  # our handlers carry this name, so configuring again replaces them

_access = logging.getLogger(ACCESS_LOGGER)


@functools.lru_cache(maxsize=4)  # every line within one second reuses its text
def _second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def iso_utc(timestamp: float) -> str:
    """ISO 8601 in UTC with milliseconds: 2025-01-31T12:00:00.123Z (truncated, as datetime does)."""
    second = int(timestamp)
    ms = min(999, round((timestamp - second) * 1_000_000) // 1000)
    return f"{_second(second)}.{ms:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages and tracebacks are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"time": iso_utc(record.created), "level": record.levelname,
                               "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def configure_logging(level: str = "INFO", log_format: str = "text", access_log: bool = False) -> None:
    """Set up the process's logging: a stderr handler on the root logger, and the access logger."""
    root = logging.getLogger()
    _drop_ours(root)
    handler = logging.StreamHandler(sys.stderr)
    handler.name = _HANDLER_NAME
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Python's warnings would otherwise be bare text on stderr, breaking a stream of JSON lines.
    logging.captureWarnings(log_format == "json")
    _drop_ours(_access)
    if access_log:
        out = logging.StreamHandler(sys.stderr)
        out.name = _HANDLER_NAME
        out.setFormatter(logging.Formatter("%(message)s"))  # the message is the JSON object
        _access.addHandler(out)
        _access.setLevel(logging.INFO)  # on because it was asked for, whatever log_level says
        _access.propagate = False
    else:
        _access.setLevel(logging.NOTSET)
        _access.propagate = True


def _drop_ours(logger: logging.Logger) -> None:
    for h in list(logger.handlers):
        if h.name == _HANDLER_NAME:
            logger.removeHandler(h)


def log_access(start: float, protocol: str, method: str, path: str, model: str, version: str,
               status: int | str, request_bytes: int | None, response_bytes: int | None, duration_ms: float,
               client: str, request_id: str) -> None:
    """One access record: its message is the JSON line; the same fields are in ``record.access``."""
    if not _access.isEnabledFor(logging.INFO):
        return
    fields = {"time": iso_utc(start), "protocol": protocol, "method": method, "path": path,
              "model": model or None, "version": version or None, "status": status,
              "request_bytes": request_bytes, "response_bytes": response_bytes,
              "duration_ms": round(duration_ms, 3), "client": client, "request_id": request_id or None}
    # makeRecord + handle rather than info(): info() walks the stack for the caller's file and line,
    # which was half the cost of a line and means nothing here.
    record = _access.makeRecord(ACCESS_LOGGER, logging.INFO, __file__, 0, orjson.dumps(fields).decode(), (), None,
                                extra={"access": fields})
    _access.handle(record)


__all__ = ["ACCESS_LOGGER", "JsonFormatter", "configure_logging", "iso_utc", "log_access"]
