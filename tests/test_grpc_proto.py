"""proto/ against Triton's: the generated code is fresh, and every descriptor we serve matches.

Wire compatibility rests on field numbers and types, so instead of trusting review this test
walks every RPC of our service from its request and response types through every nested message
and compares each field with the descriptors compiled into tritonclient (the reference client):
name, number, type, label, oneof, message/enum type name. Messages of grpc_service.proto must
match exactly; model_config.proto is a declared subset of Triton's, so each message there must
have only fields Triton has, with Triton's number and type.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import tritonclient.grpc.model_config_pb2 as triton_config
import tritonclient.grpc.service_pb2 as triton_service
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from gateway import pb
from gateway.pb import model_config as model_config_pb2
from gateway.pb import service as grpc_service_pb2

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "GRPCInferenceService"


def _load_codegen():  # proto/codegen.py holds the one codegen recipe (setup.py runs it too)
    spec = importlib.util.spec_from_file_location("_gateway_codegen", ROOT / "proto" / "codegen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_descriptor_set_is_fresh() -> None:
    """The build records the digest of the .proto sources it compiled; an edit since then fails."""
    codegen = _load_codegen()
    recorded = (pb.GENERATED / codegen.DIGEST).read_text().strip()
    assert recorded == codegen.sources_digest(ROOT / "proto"), (
        "gateway/grpc_gen is stale: run `python proto/codegen.py` (or pip install -e .)")
    assert sorted(p.name for p in pb.GENERATED.iterdir() if p.is_file()) == sorted(
        [codegen.DESCRIPTOR_SET, codegen.DIGEST]), "gateway/grpc_gen has files the build does not write"


def test_no_generated_python_is_imported() -> None:
    """Generated *_pb2 modules pin a protobuf gencode version; the package must not ship any."""
    assert not list(pb.GENERATED.glob("*.py"))
    assert pb.service.ModelInferRequest.DESCRIPTOR.file.pool is pb.POOL


def _field_signature(f: FieldDescriptor) -> tuple:
    return (
        f.name,
        f.number,
        f.type,
        "repeated" if f.is_repeated else ("required" if f.is_required else "optional"),
        f.message_type.full_name if f.message_type is not None else None,
        f.enum_type.full_name if f.enum_type is not None else None,
        f.containing_oneof.name if f.containing_oneof is not None else None,
        f.has_presence if f.message_type is None and f.containing_oneof is None else None,
    )


def _compare_enum(ours: EnumDescriptor, theirs: EnumDescriptor, problems: list[str]) -> None:
    t = {v.name: v.number for v in theirs.values}
    for v in ours.values:
        if t.get(v.name) != v.number:
            problems.append(f"enum {ours.full_name}.{v.name} = {v.number}, Triton: {t.get(v.name)}")


def _compare(ours: Descriptor, theirs: Descriptor, problems: list[str], seen: set[str]) -> None:
    if ours.full_name in seen:
        return
    seen.add(ours.full_name)
    if ours.full_name != theirs.full_name:
        problems.append(f"message {ours.full_name} vs Triton's {theirs.full_name}")
    if ours.GetOptions().map_entry != theirs.GetOptions().map_entry:
        problems.append(f"{ours.full_name}: map entry flag differs")
    subset = ours.file.name == "model_config.proto"
    theirs_by_name = {f.name: f for f in theirs.fields}
    ours_names = {f.name for f in ours.fields}
    if not subset:
        for missing in sorted(set(theirs_by_name) - ours_names):
            problems.append(f"{ours.full_name}: field '{missing}' is missing")
    for f in ours.fields:
        tf = theirs_by_name.get(f.name)
        if tf is None:
            problems.append(f"{ours.full_name}: field '{f.name}' is not in Triton's message")
            continue
        if _field_signature(f) != _field_signature(tf):
            problems.append(f"{ours.full_name}.{f.name}: {_field_signature(f)} != Triton {_field_signature(tf)}")
            continue
        if f.message_type is not None:
            _compare(f.message_type, tf.message_type, problems, seen)
        if f.enum_type is not None:
            _compare_enum(f.enum_type, tf.enum_type, problems)
    for nested in ours.nested_types:
        tn = theirs.nested_types_by_name.get(nested.name)
        if tn is None:
            problems.append(f"{nested.full_name} is not in Triton's message")
        else:
            _compare(nested, tn, problems, seen)


def test_service_methods_match_triton() -> None:
    ours = grpc_service_pb2.DESCRIPTOR.services_by_name[SERVICE]
    theirs = triton_service.DESCRIPTOR.services_by_name[SERVICE]
    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"

    def sig(service):
        return {
            m.name: (m.input_type.full_name, m.output_type.full_name, m.client_streaming, m.server_streaming)
            for m in service.methods
        }

    assert sig(ours) == sig(theirs)


def test_every_served_message_matches_triton() -> None:
    ours = grpc_service_pb2.DESCRIPTOR.services_by_name[SERVICE]
    theirs = triton_service.DESCRIPTOR.services_by_name[SERVICE]
    problems: list[str] = []
    seen: set[str] = set()
    for m in ours.methods:
        tm = theirs.methods_by_name[m.name]
        _compare(m.input_type, tm.input_type, problems, seen)
        _compare(m.output_type, tm.output_type, problems, seen)
    assert not problems, "\n".join(problems)
    # The walk must reach the config messages (through ModelConfigResponse) and all of ours.
    assert "inference.ModelConfig" in seen and "inference.ModelDynamicBatching" in seen
    declared = set(grpc_service_pb2.DESCRIPTOR.message_types_by_name)
    assert {f"inference.{n}" for n in declared} <= seen


@pytest.mark.parametrize("name", sorted(model_config_pb2.DESCRIPTOR.message_types_by_name))
def test_model_config_messages_are_a_subset_of_triton(name: str) -> None:
    problems: list[str] = []
    _compare(model_config_pb2.DESCRIPTOR.message_types_by_name[name],
             triton_config.DESCRIPTOR.message_types_by_name[name], problems, set())
    assert not problems, "\n".join(problems)


def test_data_type_enum_matches_triton() -> None:
    ours = {v.name: v.number for v in model_config_pb2.DESCRIPTOR.enum_types_by_name["DataType"].values}
    theirs = {v.name: v.number for v in triton_config.DESCRIPTOR.enum_types_by_name["DataType"].values}
    assert ours == theirs


def test_comparison_catches_a_wrong_field_number() -> None:
    """The walk is only worth something if it fails on a difference: check it on a mismatched pair."""
    problems: list[str] = []
    # ModelInferRequest vs ModelInferResponse differ (field 5 is inputs vs outputs, ...).
    _compare(grpc_service_pb2.ModelInferRequest.DESCRIPTOR, triton_service.ModelInferResponse.DESCRIPTOR,
             problems, set())
    assert problems


def test_messages_round_trip_through_triton_types() -> None:
    """Bytes our server writes parse as Triton's types and back, with nothing left unknown."""
    msg = grpc_service_pb2.ModelInferResponse(model_name="m", model_version="1", id="x")
    out = msg.outputs.add(name="OUTPUT0", datatype="FP32", shape=[1, 2])
    out.parameters["p"].int64_param = -3
    msg.parameters["q"].uint64_param = 1 << 63
    msg.raw_output_contents.append(b"\x00" * 8)
    theirs = triton_service.ModelInferResponse.FromString(msg.SerializeToString())
    assert theirs.outputs[0].parameters["p"].int64_param == -3
    assert theirs.parameters["q"].uint64_param == 1 << 63
    assert grpc_service_pb2.ModelInferResponse.FromString(theirs.SerializeToString()) == msg

    cfg = grpc_service_pb2.ModelConfigResponse()
    cfg.config.name = "m"
    cfg.config.max_batch_size = 8
    cfg.config.input.add(name="I", data_type=model_config_pb2.TYPE_FP32, dims=[-1, 4])
    cfg.config.dynamic_batching.preferred_batch_size.extend([4, 8])
    cfg.config.version_policy.specific.versions.extend([1, 3])
    theirs_cfg = triton_service.ModelConfigResponse.FromString(cfg.SerializeToString())
    assert theirs_cfg.config.input[0].data_type == triton_config.TYPE_FP32
    assert list(theirs_cfg.config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert theirs_cfg.config.WhichOneof("scheduling_choice") == "dynamic_batching"
