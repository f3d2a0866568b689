"""KServe v2 / Triton JSON documents -> protobuf for the gRPC control RPCs (metadata, config,
statistics, index).

The documents are the ones the HTTP front sends as they are (``gateway.front.model_docs``, and
the data plane's server metadata and repository index). Their keys are the protobuf field names,
so the statistics, config and index messages are filled by ``json_format.ParseDict``: one
conversion to keep right instead of a hand-written copy of each structure. These RPCs are off the hot path (perf_analyzer asks for
metadata and config once), so the generic converter's cost does not matter.

``ignore_unknown_fields``: the config JSON carries Triton fields that our model_config.proto
does not declare (``parameters``); a client of ours could not read them anyway.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from gateway.pb import Message
from gateway.pb import service as pb


def server_metadata_to_pb(meta: dict[str, Any]) -> Message:
    return pb.ServerMetadataResponse(
        name=meta.get("name", ""), version=meta.get("version", ""), extensions=meta.get("extensions", ())
    )


def model_metadata_to_pb(meta: dict[str, Any]) -> Message:
    msg = pb.ModelMetadataResponse(
        name=meta["name"], versions=meta.get("versions", ()), platform=meta.get("platform", "")
    )
    for key, field in (("inputs", msg.inputs), ("outputs", msg.outputs)):
        for t in meta.get(key, ()):
            field.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
    return msg


def model_config_to_pb(config: dict[str, Any]) -> Message:
    msg = pb.ModelConfigResponse()
    json_format.ParseDict(config, msg.config, ignore_unknown_fields=True)
    return msg


def model_statistics_to_pb(stats: dict[str, Any]) -> Message:
    return json_format.ParseDict(stats, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)


def repository_index_to_pb(index: list[dict[str, Any]]) -> Message:
    return json_format.ParseDict({"models": index}, pb.RepositoryIndexResponse(), ignore_unknown_fields=True)
