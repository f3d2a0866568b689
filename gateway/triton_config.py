"""Read the matching fields of a Triton ``config.pbtxt``, so an existing Triton repository of ONNX
models serves unchanged.

The text is parsed against our own ``inference.ModelConfig`` schema (``proto/model_config.proto``,
the same field names and numbers as Triton's); fields we do not model are skipped, not errors.
The result is the same dict shape as ``config.toml``, so one validator checks both; where a model
has both files, ``config.toml`` wins field by field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import text_format

from gateway.model_config import ConfigError
from gateway.pb import model_config as model_config_pb2


def _skip_value(text: str, i: int) -> int:
    """Index just past the value starting at ``i``: a ``{...}``/``[...]`` group, a quoted string
    or a bare token."""
    n = len(text)
    if i < n and text[i] in "{[":
        depth, quote = 0, ""
        while i < n:
            c = text[i]
            if quote:
                if c == "\\":
                    i += 1
                elif c == quote:
                    quote = ""
            elif c in "\"'":
                quote = c
            elif c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return n
    if i < n and text[i] in "\"'":
        quote, i = text[i], i + 1
        while i < n and text[i] != quote:
            i += 2 if text[i] == "\\" else 1
        return i + 1
    while i < n and not text[i].isspace() and text[i] not in ",;":
        i += 1
    return i


def _known_top_level(text: str) -> str:
    """Drop the top-level fields our schema lacks (model_warmup, optimization, ...): protobuf's
    ``allow_unknown_field`` cannot skip an unknown field written in the ``name [ {...} ]`` form."""
    known = {f.name for f in model_config_pb2.ModelConfig.DESCRIPTOR.fields}
    kept: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace() or text[i] in ",;":
            i += 1
            continue
        if text[i] == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        start = i
        while i < n and (text[i].isalnum() or text[i] == "_"):
            i += 1
        name = text[start:i]
        if not name:
            return text  # not the shape we expect: let the parser report it
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == ":":
            i += 1
            while i < n and text[i].isspace():
                i += 1
        i = _skip_value(text, i)
        if name in known:
            kept.append(text[start:i])
    return "\n".join(kept)


def read_pbtxt(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.pbtxt"
    if not path.exists():
        return {}
    cfg = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(_known_top_level(path.read_text()), cfg, allow_unknown_field=True)
    except text_format.ParseError as exc:
        raise ConfigError(f"model '{model_dir.name}': {path} is not a valid Triton model config: {exc}") from None
    if cfg.platform and cfg.platform != "onnxruntime_onnx" or cfg.backend and cfg.backend != "onnxruntime":
        raise ConfigError(f"model '{model_dir.name}': config.pbtxt field 'platform'/'backend' names "
                          f"{cfg.platform or cfg.backend!r}; only ONNX models (onnxruntime) are served")
    out: dict[str, Any] = {"max_batch_size": cfg.max_batch_size}
    if cfg.HasField("dynamic_batching"):
        db = cfg.dynamic_batching
        out["max_queue_delay_us"] = int(db.max_queue_delay_microseconds)
        if db.preferred_batch_size:
            out["preferred_batch_sizes"] = list(db.preferred_batch_size)
    if cfg.instance_group:
        out["instances"] = sum(max(1, g.count) for g in cfg.instance_group)
        kinds = {g.kind for g in cfg.instance_group}
        if kinds == {model_config_pb2.ModelInstanceGroup.KIND_GPU}:
            out["device"] = "cuda"
        elif kinds == {model_config_pb2.ModelInstanceGroup.KIND_CPU}:
            out["device"] = "cpu"
    which = cfg.version_policy.WhichOneof("policy_choice") if cfg.HasField("version_policy") else None
    if which == "all":
        out["version_policy"] = "all"
    elif which == "latest":
        out["version_policy"] = {"latest": int(cfg.version_policy.latest.num_versions)}
    elif which == "specific":
        out["version_policy"] = {"specific": [int(v) for v in cfg.version_policy.specific.versions]}
    return out
