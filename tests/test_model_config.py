"""Model configs are validated against the graph; a bad one is refused naming the field."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from models import mlp_model, static_model, write_model

from gateway.backends.onnx import OnnxFactory
from gateway.errors import GatewayError
from gateway.front.model_docs import model_config
from gateway.model_config import ConfigError, VersionPolicy, parse_config
from gateway.repository.registry import ModelRegistry


@pytest.mark.parametrize("raw, field", [
    ({"max_batch_size": -1}, "max_batch_size"),
    ({"max_batch_size": "8"}, "max_batch_size"),
    ({"instances": 0}, "instances"),
    ({"device": "tpu"}, "device"),
    ({"execution": "maybe"}, "execution"),
    ({"preferred_batch_sizes": [0]}, "preferred_batch_sizes"),
    ({"max_batch_size": 4, "preferred_batch_sizes": [8]}, "preferred_batch_sizes"),
    ({"version_policy": {"latest": 0}}, "version_policy"),
    ({"version_policy": "some"}, "version_policy"),
    ({"max_batch_sise": 4}, "max_batch_sise"),
    ({"release_on_deadline": "yes"}, "release_on_deadline"),
    ({"priority_levels": -1}, "priority_levels"),
    ({"default_priority_level": 1}, "default_priority_level"),  # no levels
    ({"priority_levels": 2, "default_priority_level": 3}, "default_priority_level"),
    ({"priority_levels": 2, "priority_queue_size": 5}, "priority_queue_size"),
    ({"priority_levels": 2, "priority_queue_size": {"3": 5}}, "priority_queue_size"),
    ({"priority_levels": 2, "priority_queue_size": {"high": 5}}, "priority_queue_size"),
    ({"priority_levels": 2, "priority_queue_size": {"2": 0}}, "priority_queue_size"),
    ({"priority_queue_size": {"1": 5}}, "priority_queue_size"),  # no levels
    ({"priority_aging_us": 0}, "priority_aging_us"),
    ({"max_queue_wait_us": 1.5}, "max_queue_wait_us"),
    ({"capacity_rps": -1}, "capacity_rps"),
    ({"capacity_rps": "200"}, "capacity_rps"),
    ({"capacity_rps": float("nan")}, "capacity_rps"),
    ({"capacity_headroom": 0}, "capacity_headroom"),
    ({"capacity_headroom": 1.5}, "capacity_headroom"),
    ({"capacity_headroom": True}, "capacity_headroom"),
])
def test_bad_fields_are_named(raw: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"'{field}'"):
        parse_config("m", raw)


def test_priority_and_admission_fields() -> None:
    c = parse_config("m", {"priority_levels": 3, "priority_queue_size": {"2": 512, "3": 64},
                           "max_queue_wait_us": 50_000, "priority_aging_us": 200_000})
    assert c.priority_queue_size == ((2, 512), (3, 64)) and c.max_queue_wait_us == 50_000
    assert c.default_level == 3  # unset: the lowest level
    assert parse_config("m", {"priority_levels": 3, "default_priority_level": 1}).default_level == 1
    assert parse_config("m", {}).default_level == 1 and parse_config("m", {}).priority_aging_us == 1_000_000


def test_capacity_fields() -> None:
    cfg = parse_config("m", {"capacity_rps": 200, "capacity_headroom": 0.5})
    assert (cfg.capacity_rps, cfg.capacity_headroom) == (200.0, 0.5)
    default = parse_config("m", {})
    assert (default.capacity_rps, default.capacity_headroom) == (0.0, 0.7)  # 0: capacity unknown
    assert parse_config("m", {"capacity_headroom": 1}).capacity_headroom == 1.0


def test_version_policies() -> None:
    assert VersionPolicy().select(["1", "3", "2"]) == ["3"]
    assert VersionPolicy(kind="latest", latest=2).select(["1", "10", "2"]) == ["2", "10"]
    assert VersionPolicy(kind="all").select(["2", "1"]) == ["1", "2"]
    assert VersionPolicy(kind="specific", specific=("1",)).select(["1", "2"]) == ["1"]


def load(repo: Path, name: str) -> ModelRegistry:
    reg = ModelRegistry(repo, OnnxFactory())
    asyncio.run(reg.load(name))
    return reg


def test_batching_on_static_graph_is_refused(tmp_path: Path) -> None:
    write_model(tmp_path, "static", 1, static_model(), "max_batch_size = 8\n")
    with pytest.raises(GatewayError, match="'max_batch_size'.*INPUT0"):
        load(tmp_path, "static")


def test_static_graph_without_config_serves_unbatched(tmp_path: Path) -> None:
    write_model(tmp_path, "static", 1, static_model())
    reg = load(tmp_path, "static")
    assert reg.get("static").config.max_batch_size == 0


def test_defaults_from_graph_and_version_policy(tmp_path: Path) -> None:
    write_model(tmp_path, "mlp", 1, mlp_model(1))
    write_model(tmp_path, "mlp", 3, mlp_model(3), "max_queue_delay_us = 100\npreferred_batch_sizes = [4, 8]\n")
    reg = load(tmp_path, "mlp")
    assert reg.version_labels("mlp") == ["3"]  # Triton's default: latest 1
    mv = reg.get("mlp")
    assert mv.config.max_batch_size == 64 and mv.config.preferred_batch_sizes == (4, 8)
    cfg = model_config(mv)
    assert cfg["dynamic_batching"] == {"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": 100,
                                       "default_queue_policy": {"max_queue_size": 4096, "default_timeout_microseconds": 0,
                                                                "allow_timeout_override": True}}
    assert cfg["input"] == [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [64]}]


def test_invalid_onnx_and_missing_versions(tmp_path: Path) -> None:
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(GatewayError, match="cannot load"):
        load(tmp_path, "broken")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GatewayError, match="no <version>/model.onnx"):
        load(tmp_path, "empty")
    (tmp_path / "badtoml").mkdir()
    write_model(tmp_path, "badtoml", 1, mlp_model(1))
    (tmp_path / "badtoml" / "config.toml").write_text("max_batch_size = = 3")
    with pytest.raises(GatewayError, match="not valid TOML"):
        load(tmp_path, "badtoml")


def test_cuda_requested_without_cuda_is_refused(tmp_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA: the refusal path does not apply")
    write_model(tmp_path, "gpu", 1, mlp_model(1), 'device = "cuda"\n')
    with pytest.raises(GatewayError, match="'device'.*onnxruntime-gpu"):
        load(tmp_path, "gpu")


TRITON_PBTXT = """
name: "tmlp"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 64 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 10 ] } ]
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 300 }
instance_group [ { count: 2 kind: KIND_CPU } ]
version_policy: { all { } }
model_warmup [ { name: "w" batch_size: 1 inputs { key: "INPUT0" value { data_type: TYPE_FP32 dims: [ 64 ] zero_data: true } } } ]
"""


def test_triton_config_pbtxt_is_read(tmp_path: Path) -> None:
    """An existing Triton repository serves unchanged (tests/test_triton_repository.py has the refusals)."""
    write_model(tmp_path, "tmlp", 1, mlp_model(1))
    write_model(tmp_path, "tmlp", 2, mlp_model(2))
    (tmp_path / "tmlp" / "config.pbtxt").write_text(TRITON_PBTXT)
    reg = load(tmp_path, "tmlp")
    assert reg.version_labels("tmlp") == ["1", "2"]
    cfg = reg.get("tmlp").config
    assert (cfg.max_batch_size, cfg.preferred_batch_sizes, cfg.max_queue_delay_us, cfg.instances, cfg.device) == (
        16, (4, 8), 300, 2, "cpu")
    # config.toml, where present, wins field by field
    (tmp_path / "tmlp" / "config.toml").write_text("max_batch_size = 32\n")
    assert load(tmp_path, "tmlp").get("tmlp").config.max_batch_size == 32


def test_bad_pbtxt_and_foreign_platform_are_refused(tmp_path: Path) -> None:
    write_model(tmp_path, "bad", 1, mlp_model(1))
    (tmp_path / "bad" / "config.pbtxt").write_text("max_batch_size: [[[")
    with pytest.raises(GatewayError, match="not a valid Triton model config"):
        load(tmp_path, "bad")
    (tmp_path / "bad" / "config.pbtxt").write_text('platform: "tensorrt_plan"\n')
    with pytest.raises(GatewayError, match="only ONNX"):
        load(tmp_path, "bad")
