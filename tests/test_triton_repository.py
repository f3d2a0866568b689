"""A Triton model repository read the way Triton reads it, checked with tritonclient over real sockets.

One repository holds good models next to models whose config.pbtxt Triton would refuse (a typo,
a wrong input name, dims or data_type, a name that is not the directory's, unsupported fields,
a warm-up that fails): the refused ones are UNAVAILABLE with the file and the field in their
reason, the others serve, and the server stays up. Honoured fields show in the served config and
in behaviour; load overrides, Triton's error wording and readiness are checked over HTTP and gRPC.
"""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from models import OPSET, identity_model, rowsum_model, write_model
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from gateway.demo import add_sub_model
from gateway.testing import ServerThread

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def _model(nodes: list, inputs: list, outputs: list, inits: tuple = ()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    onnx.checker.check_model(m)
    return m


def cast_model() -> onnx.ModelProto:
    """S BYTES [batch, 1] -> N INT64 = the strings parsed as integers (ONNX Cast from STRING)."""
    return _model([helper.make_node("Cast", ["S"], ["N"], to=TensorProto.INT64)],
                  [helper.make_tensor_value_info("S", TensorProto.STRING, ["batch", 1])],
                  [helper.make_tensor_value_info("N", TensorProto.INT64, ["batch", 1])])


def pick_model() -> onnx.ModelProto:
    """S BYTES [batch, 1] -> V = [10, 20, 30][int(S) - 5]: only "5".."7" work, so neither empty
    strings nor the default b"1" warm it up; a declared sample can."""
    return _model([helper.make_node("Cast", ["S"], ["N"], to=TensorProto.INT64),
                   helper.make_node("Sub", ["N", "five"], ["I"]),
                   helper.make_node("Gather", ["table", "I"], ["V"], axis=0)],
                  [helper.make_tensor_value_info("S", TensorProto.STRING, ["batch", 1])],
                  [helper.make_tensor_value_info("V", TensorProto.INT64, ["batch", 1])],
                  (numpy_helper.from_array(np.array(5, np.int64), "five"),
                   numpy_helper.from_array(np.array([10, 20, 30], np.int64), "table")))


def square_identity_model() -> onnx.ModelProto:
    """INPUT0 FP32 [batch, 2, 2] -> OUTPUT0 = INPUT0 (served with reshape as [batch, 4])."""
    return _model([helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
                  [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 2, 2])],
                  [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 2, 2])])


DYNAMIC = """dynamic_batching { preferred_batch_size: [ 2, 4 ] max_queue_delay_microseconds: 100
                   default_queue_policy { max_queue_size: 32 default_timeout_microseconds: 5000000 } }"""


PRIORITIES = """dynamic_batching { priority_levels: 3 default_priority_level: 2
                   priority_queue_policy { key: 3 value: { max_queue_size: 6 } } }"""


def add_sub_pbtxt(name: str, scheduling: str = DYNAMIC) -> str:
    return f"""name: "{name}"
backend: "onnxruntime"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }}, {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }}, {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }} ]
{scheduling}
instance_group [ {{ count: 2 kind: KIND_CPU }} ]
version_policy: {{ all {{ }} }}
"""


def _bad(name: str, old: str, new: str) -> str:
    text = add_sub_pbtxt(name)
    assert old in text
    return text.replace(old, new, 1)


TYPO_LINE = add_sub_pbtxt("typo").count("\n") + 1

# model -> (config.pbtxt, what its reason must name)
REFUSED = {
    "typo": (add_sub_pbtxt("typo") + "max_batch_sizes: 16\n",
             ["typo/config.pbtxt", f"line {TYPO_LINE}", "'max_batch_sizes'"]),
    "wrong_input": (_bad("wrong_input", 'name: "INPUT0"', 'name: "INPUTX"'),
                    ["wrong_input/config.pbtxt", "'input[0].name'", "'INPUTX'", "INPUT0"]),
    "wrong_dims": (_bad("wrong_dims", 'name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ]',
                        'name: "INPUT1" data_type: TYPE_FP32 dims: [ 32 ]'),
                   ["wrong_dims/config.pbtxt", "'input[1].dims'", "[32]", "[-1, 16]"]),
    "wrong_type": (_bad("wrong_type", 'name: "OUTPUT0" data_type: TYPE_FP32', 'name: "OUTPUT0" data_type: TYPE_INT32'),
                   ["wrong_type/config.pbtxt", "'output[0].data_type'", "TYPE_INT32", "TYPE_FP32"]),
    "name_mismatch": (_bad("name_mismatch", 'name: "name_mismatch"', 'name: "other"'),
                      ["name_mismatch/config.pbtxt", "'name'", "'other'", "'name_mismatch'"]),
    "sequence": (add_sub_pbtxt("sequence", "sequence_batching { max_sequence_idle_microseconds: 5000000 }"),
                 ["sequence/config.pbtxt", "'sequence_batching'", "not supported"]),
    # Triton's rule: with priority levels, the default level must be one of them
    "priority": (_bad("priority", "max_queue_delay_microseconds: 100", "priority_levels: 2"),
                 ["priority/config.pbtxt", "'dynamic_batching.default_priority_level'", "1..2"]),
    "priority_timeout": (_bad("priority_timeout", "max_queue_delay_microseconds: 100",
                              "priority_levels: 2 default_priority_level: 2 priority_queue_policy { key: 2 value: "
                              "{ default_timeout_microseconds: 100 } }"),
                         ["'dynamic_batching.priority_queue_policy[2].default_timeout_microseconds'", "not supported"]),
    "priority_key": (_bad("priority_key", "max_queue_delay_microseconds: 100",
                          "priority_levels: 2 default_priority_level: 2 priority_queue_policy { key: 3 value: "
                          "{ max_queue_size: 4 } }"),
                     ["'dynamic_batching.priority_queue_policy[3]'", "1..priority_levels (2)"]),
    "unbatched_dims": (add_sub_pbtxt("unbatched_dims", "").replace("max_batch_size: 8", "max_batch_size: 0"),
                       ["unbatched_dims/config.pbtxt", "'input[0].dims'", "max_batch_size 0"]),
}

SEVEN = (1).to_bytes(4, "little") + b"7"  # one BYTES element: length, then the bytes


def build_repo(root: Path) -> Path:
    write_model(root, "good", 1, add_sub_model())
    write_model(root, "good", 2, add_sub_model())
    (root / "good" / "config.pbtxt").write_text(add_sub_pbtxt("good"))
    for name, (text, _) in REFUSED.items():
        write_model(root, name, 1, add_sub_model())
        (root / name / "config.pbtxt").write_text(text)

    write_model(root, "dims_specific", 1, rowsum_model())  # graph [batch, n]; declared [3]
    (root / "dims_specific" / "config.pbtxt").write_text(
        'max_batch_size: 4\ninput [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 3 ] } ]\n')

    path = root / "custom_file" / "1" / "custom.onnx"
    path.parent.mkdir(parents=True)
    onnx.save(identity_model("FP32"), str(path))
    (root / "custom_file" / "config.pbtxt").write_text('default_model_filename: "custom.onnx"\nmax_batch_size: 4\n')

    write_model(root, "reshaped", 1, square_identity_model())
    (root / "reshaped" / "config.pbtxt").write_text(
        'max_batch_size: 4\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]\n')

    write_model(root, "subset_out", 1, add_sub_model())
    (root / "subset_out" / "config.pbtxt").write_text(
        'max_batch_size: 8\noutput [ { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]\n')

    write_model(root, "optim", 1, identity_model("FP32"))
    (root / "optim" / "config.pbtxt").write_text(
        'max_batch_size: 4\n'
        'optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" } ] } }\n')

    write_model(root, "gpu", 1, identity_model("FP32"))
    (root / "gpu" / "config.pbtxt").write_text('max_batch_size: 4\ninstance_group [ { kind: KIND_GPU } ]\n')

    write_model(root, "cast_default", 1, cast_model())  # default warm-up b"1" parses; b"" would not
    write_model(root, "cast_zero", 1, cast_model())
    (root / "cast_zero" / "config.pbtxt").write_text(
        'max_batch_size: 4\nmodel_warmup [ { name: "empty" batch_size: 1 inputs { key: "S" value: '
        '{ data_type: TYPE_STRING dims: [ 1 ] zero_data: true } } } ]\n')
    write_model(root, "pick_default", 1, pick_model())
    write_model(root, "pick_sample", 1, pick_model())
    (root / "pick_sample" / "warmup").mkdir()
    (root / "pick_sample" / "warmup" / "seven").write_bytes(SEVEN)
    (root / "pick_sample" / "config.pbtxt").write_text(
        'max_batch_size: 4\nmodel_warmup [ { name: "seven" batch_size: 2 count: 3 inputs { key: "S" value: '
        '{ data_type: TYPE_STRING dims: [ 1 ] input_data_file: "seven" } } } ]\n')

    write_model(root, "autofill", 1, identity_model("FP32"))  # no input/output declared: the graph decides
    (root / "autofill" / "config.pbtxt").write_text("instance_group [ { count: 2 kind: KIND_CPU } ]\n")

    write_model(root, "prio", 1, add_sub_model())
    (root / "prio" / "config.pbtxt").write_text(add_sub_pbtxt("prio", PRIORITIES))

    write_model(root, "ovr", 1, identity_model("FP32"))
    (root / "ovr" / "config.pbtxt").write_text("max_batch_size: 8\n")
    return root


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, loop_name: str) -> Iterator[ServerThread]:
    with ServerThread(repository=build_repo(tmp_path_factory.mktemp("triton_repo")), loop=loop_name) as s:
        yield s


def clients(srv: ServerThread) -> list:
    return [httpclient.InferenceServerClient(srv.http_url), grpcclient.InferenceServerClient(srv.grpc_url)]


def index(c: object) -> dict[str, dict]:
    if isinstance(c, httpclient.InferenceServerClient):
        return {m["name"]: m for m in c.get_model_repository_index()}
    return {m.name: {"name": m.name, "state": m.state, "reason": m.reason}
            for m in c.get_model_repository_index().models}  # type: ignore[attr-defined]


def fp32(mod: object, name: str, x: np.ndarray) -> object:
    i = mod.InferInput(name, list(x.shape), "FP32")  # type: ignore[attr-defined]
    i.set_data_from_numpy(x)
    return i


def strings(mod: object, values: list[bytes]) -> object:
    x = np.array(values, dtype=object).reshape(-1, 1)
    i = mod.InferInput("S", list(x.shape), "BYTES")  # type: ignore[attr-defined]
    i.set_data_from_numpy(x)
    return i


def mod_of(c: object) -> object:
    return httpclient if isinstance(c, httpclient.InferenceServerClient) else grpcclient


def add_sub_inputs(mod: object, rows: int = 1) -> list:
    x = np.arange(rows * 16, dtype=np.float32).reshape(rows, 16)
    return [fp32(mod, "INPUT0", x), fp32(mod, "INPUT1", x)]


def error_of(fn: object, *args: object, **kw: object) -> str:
    with pytest.raises(InferenceServerException) as info:
        fn(*args, **kw)  # type: ignore[operator]
    return info.value.message()


# ---- refusals --------------------------------------------------------------------------------
@pytest.mark.parametrize("model", sorted(REFUSED))
def test_refused_config_leaves_model_unavailable_with_file_and_field(srv: ServerThread, model: str) -> None:
    for c in clients(srv):
        row = index(c)[model]
        assert row["state"] == "UNAVAILABLE"
        for part in REFUSED[model][1]:
            assert part in row["reason"], (part, row["reason"])
        assert not c.is_model_ready(model)
        msg = error_of(c.infer, model, add_sub_inputs(mod_of(c)))
        assert msg == f"Request for unknown model: '{model}' has no available versions"
        # the good model in the same repository serves
        out = c.infer("good", add_sub_inputs(mod_of(c)))
        assert np.array_equal(out.as_numpy("OUTPUT0"), 2 * np.arange(16, dtype=np.float32).reshape(1, 16))


def test_kind_gpu_without_cuda_names_the_field(srv: ServerThread) -> None:
    row = index(clients(srv)[0])["gpu"]
    if HAS_CUDA:
        assert row["state"] == "READY"
        return
    assert row["state"] == "UNAVAILABLE"
    assert "gpu/config.pbtxt" in row["reason"] and "'instance_group[0].kind'" in row["reason"]
    assert "KIND_GPU" in row["reason"] and "CUDAExecutionProvider" in row["reason"]


# ---- honoured fields -------------------------------------------------------------------------
def test_honoured_fields_show_in_config_and_behaviour(srv: ServerThread) -> None:
    h, g = clients(srv)
    cfg = h.get_model_config("good")
    assert cfg["max_batch_size"] == 8
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [2, 4]
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    assert cfg["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 32
    assert cfg["dynamic_batching"]["default_queue_policy"]["default_timeout_microseconds"] == 5000000
    assert cfg["instance_group"][0]["count"] == 2 and cfg["instance_group"][0]["kind"] == "KIND_CPU"
    assert cfg["version_policy"] == {"all": {}}
    assert cfg["input"][0] == {"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [16]}
    gcfg = g.get_model_config("good").config
    assert list(gcfg.dynamic_batching.preferred_batch_size) == [2, 4] and gcfg.max_batch_size == 8
    assert gcfg.dynamic_batching.default_queue_policy.max_queue_size == 32
    assert sorted(h.get_model_metadata("good")["versions"]) == ["1", "2"]
    mv = srv.app.registry.get("good")
    assert mv.backend.capacity == 2 and mv.batcher.queue.max_queue_rows == 32 and mv.config.timeout_us == 5000000
    for c in (h, g):  # a request larger than max_batch_size (8) is split and reassembled
        out = c.infer("good", add_sub_inputs(mod_of(c), rows=11), model_version="1")
        assert out.as_numpy("OUTPUT1").shape == (11, 16)


def test_priority_fields_are_honoured(srv: ServerThread) -> None:
    h, g = clients(srv)
    mv = srv.app.registry.get("prio")
    c = mv.config
    assert (c.priority_levels, c.default_priority_level, c.priority_queue_size) == (3, 2, ((3, 6),))
    assert mv.batcher.queue.level_limits == {3: 6} and mv.admit.default_level == 2
    db = h.get_model_config("prio")["dynamic_batching"]
    assert (db["priority_levels"], db["default_priority_level"]) == (3, 2)
    assert db["priority_queue_policy"]["3"]["max_queue_size"] == 6
    gdb = g.get_model_config("prio").config.dynamic_batching
    assert gdb.priority_levels == 3 and gdb.priority_queue_policy[3].max_queue_size == 6
    for cl in (h, g):
        assert cl.infer("prio", add_sub_inputs(mod_of(cl)), priority=1).as_numpy("OUTPUT0").shape == (1, 16)
        assert "'priority'" in error_of(cl.infer, "prio", add_sub_inputs(mod_of(cl)), priority=4)
    served = h.get_model_config("prio")  # read back, it loads the same
    g.load_model("prio", config=json.dumps(served))
    assert h.get_model_config("prio") == served
    h.load_model("prio")


def test_declared_dims_are_what_clients_must_send(srv: ServerThread) -> None:
    h, g = clients(srv)
    assert h.get_model_metadata("dims_specific")["inputs"][0]["shape"] == [-1, 3]  # the graph says [-1, -1]
    for c in (h, g):
        mod = mod_of(c)
        out = c.infer("dims_specific", [fp32(mod, "INPUT0", np.ones((2, 3), np.float32))])
        assert out.as_numpy("OUTPUT0").tolist() == [[3.0], [3.0]]
        assert "shape" in error_of(c.infer, "dims_specific", [fp32(mod, "INPUT0", np.ones((1, 4), np.float32))])


def test_default_model_filename_serves(srv: ServerThread) -> None:
    for c in clients(srv):
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        assert np.array_equal(c.infer("custom_file", [fp32(mod_of(c), "INPUT0", x)]).as_numpy("OUTPUT0"), x)
    assert clients(srv)[0].get_model_config("custom_file")["default_model_filename"] == "custom.onnx"


def test_reshape_client_sees_dims_model_sees_reshape(srv: ServerThread) -> None:
    h, g = clients(srv)
    meta = h.get_model_metadata("reshaped")
    assert meta["inputs"][0]["shape"] == [-1, 4] and meta["outputs"][0]["shape"] == [-1, 4]
    assert h.get_model_config("reshaped")["input"][0]["reshape"] == {"shape": [2, 2]}
    assert list(g.get_model_config("reshaped").config.output[0].reshape.shape) == [2, 2]
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    for c in (h, g):
        out = c.infer("reshaped", [fp32(mod_of(c), "INPUT0", x)]).as_numpy("OUTPUT0")
        assert out.shape == (3, 4) and np.array_equal(out, x)


def test_declared_output_subset_is_all_that_is_served(srv: ServerThread) -> None:
    h, g = clients(srv)
    assert [o["name"] for o in h.get_model_metadata("subset_out")["outputs"]] == ["OUTPUT1"]
    for c in (h, g):
        mod = mod_of(c)
        out = c.infer("subset_out", add_sub_inputs(mod))
        assert out.as_numpy("OUTPUT0") is None and np.array_equal(out.as_numpy("OUTPUT1"), np.zeros((1, 16)))
        wanted = [mod.InferRequestedOutput("OUTPUT0")]  # type: ignore[attr-defined]
        assert "OUTPUT0" in error_of(c.infer, "subset_out", add_sub_inputs(mod), outputs=wanted)


def test_performance_hints_load(srv: ServerThread) -> None:
    assert index(clients(srv)[0])["optim"]["state"] == "READY"


def test_undeclared_io_is_auto_completed_from_the_graph(srv: ServerThread) -> None:
    """As Triton's onnxruntime backend does: without input/output declared, max_batch_size 0
    means "batch if the graph can" (our default of 64 rows; Triton's is 4)."""
    cfg = clients(srv)[0].get_model_config("autofill")
    assert cfg["max_batch_size"] == 64 and cfg["instance_group"][0]["count"] == 2
    assert cfg["input"] == [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}]


# ---- warm-up ---------------------------------------------------------------------------------
def test_any_exception_while_loading_fails_only_that_model(tmp_path: Path, loop_name: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only ConfigError/GatewayError: an unexpected exception (a bug) while loading one model
    leaves it UNAVAILABLE with the reason, and the server starts and serves the others."""
    import gateway.repository.registry as registry

    real = registry.read_config_file

    def flaky(model_dir: Path) -> dict:
        if model_dir.name == "buggy":
            raise RuntimeError("injected fault")
        return real(model_dir)

    monkeypatch.setattr(registry, "read_config_file", flaky)
    write_model(tmp_path, "fine", 1, identity_model("FP32"))
    write_model(tmp_path, "buggy", 1, identity_model("FP32"))
    with ServerThread(repository=tmp_path, loop=loop_name) as s:
        for c in clients(s):
            rows = index(c)
            assert rows["buggy"]["state"] == "UNAVAILABLE" and "RuntimeError: injected fault" in rows["buggy"]["reason"]
            assert rows["fine"]["state"] == "READY" and c.is_model_ready("fine")
            assert "failed to load 'buggy'" in error_of(c.load_model, "buggy")


def test_warmup_failures_leave_only_that_model_unavailable(srv: ServerThread) -> None:
    for c in clients(srv):
        rows = index(c)
        # defaults fit the datatype: b"1" parses as an integer (empty strings, the old default, do not)
        assert rows["cast_default"]["state"] == "READY"
        assert c.infer("cast_default", [strings(mod_of(c), [b"12", b"-3"])]).as_numpy("N").tolist() == [[12], [-3]]
        # a declared sample that fails (empty strings) fails the model, naming the sample
        assert rows["cast_zero"]["state"] == "UNAVAILABLE"
        assert "cast_zero/config.pbtxt" in rows["cast_zero"]["reason"]
        assert "'model_warmup[0]'" in rows["cast_zero"]["reason"] and "Cast" in rows["cast_zero"]["reason"]
        # no sample, and the defaults do not fit this model: failed, with the reason
        assert rows["pick_default"]["state"] == "UNAVAILABLE"
        assert "warm-up with default inputs" in rows["pick_default"]["reason"]
        assert not c.is_model_ready("pick_default") and not c.is_model_ready("cast_zero")


def test_declared_warmup_sample_is_used(srv: ServerThread) -> None:
    """The same model as pick_default becomes ready with its input_data_file sample."""
    h, g = clients(srv)
    for c in (h, g):
        assert index(c)["pick_sample"]["state"] == "READY"
        assert c.infer("pick_sample", [strings(mod_of(c), [b"6", b"7"])]).as_numpy("V").tolist() == [[20], [30]]
    sample = h.get_model_config("pick_sample")["model_warmup"][0]
    assert sample["batch_size"] == 2 and sample["count"] == 3
    assert sample["inputs"]["S"] == {"data_type": "TYPE_STRING", "dims": [1], "input_data_file": "seven"}
    gsample = g.get_model_config("pick_sample").config.model_warmup[0]
    assert gsample.batch_size == 2 and gsample.inputs["S"].input_data_file == "seven"


# ---- load overrides --------------------------------------------------------------------------
def test_load_with_config_override(srv: ServerThread) -> None:
    h, g = clients(srv)
    h.load_model("ovr", config=json.dumps({"max_batch_size": 2}))
    assert h.get_model_config("ovr")["max_batch_size"] == 2
    g.load_model("ovr", config=json.dumps({"name": "ovr", "max_batch_size": 3,
                                           "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}]}))
    assert g.get_model_config("ovr").config.max_batch_size == 3
    h.load_model("ovr")  # without an override: config.pbtxt again
    assert h.get_model_config("ovr")["max_batch_size"] == 8


def test_served_config_loads_back_as_an_override(srv: ServerThread) -> None:
    """GET .../config is Triton's ModelConfig JSON: handed back as an override it loads the same."""
    h, g = clients(srv)
    served = h.get_model_config("reshaped")
    g.load_model("reshaped", config=json.dumps(served))
    assert h.get_model_config("reshaped") == served
    h.load_model("reshaped")


@pytest.mark.parametrize("override, names", [
    ("{", "not valid JSON"),
    ('{"max_batch_sizes": 2}', "max_batch_sizes"),
    ('{"max_batch_size": 2, "sequence_batching": {}}', "not supported"),
    ('{"max_batch_size": 2, "input": [{"name": "NOPE", "data_type": "TYPE_FP32", "dims": [4]}]}', "NOPE"),
    ("[]", "JSON object"),
])
def test_malformed_override_is_refused(srv: ServerThread, override: str, names: str) -> None:
    for c in clients(srv):
        msg = error_of(c.load_model, "ovr", config=override)
        assert "failed to load" in msg and names in msg, msg
        assert c.is_model_ready("ovr")  # the serving version stays
    assert clients(srv)[0].get_model_config("ovr")["max_batch_size"] == 8


def test_file_override_and_unknown_parameters_are_refused(srv: ServerThread) -> None:
    g = clients(srv)[1]
    msg = error_of(g.load_model, "ovr", config="{}", files={"file:1/model.onnx": b"x"})
    assert "failed to load" in msg and "not supported" in msg
    conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=10)
    for params, text in (({"file:1/model.onnx": base64.b64encode(b"x").decode()}, "not supported"),
                         ({"what": 1}, "unrecognized load parameter 'what'"), ({"config": 7}, "must be a string")):
        conn.request("POST", "/v2/repository/models/ovr/load", json.dumps({"parameters": params}))
        resp = conn.getresponse()
        err = json.loads(resp.read())["error"]
        assert resp.status >= 400 and "failed to load" in err and text in err, err
    conn.close()


def test_unknown_model_load_and_infer_use_tritons_words(srv: ServerThread) -> None:
    for c in clients(srv):
        mod = mod_of(c)
        assert "failed to load" in error_of(c.load_model, "nope")
        assert "failed to load" in error_of(c.load_model, "..")
        assert error_of(c.infer, "nope", add_sub_inputs(mod)) == "Request for unknown model: 'nope' is not found"
        assert error_of(c.get_model_metadata, "nope") == "Request for unknown model: 'nope' is not found"
        assert (error_of(c.infer, "good", add_sub_inputs(mod), model_version="9")
                == "Request for unknown model: 'good' version 9 is not found")


# ---- readiness -------------------------------------------------------------------------------
def test_server_not_ready_while_a_model_failed(srv: ServerThread) -> None:
    for c in clients(srv):
        assert c.is_server_live() and not c.is_server_ready()
    conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=10)
    conn.request("GET", "/v2/health/ready")
    assert conn.getresponse().status == 503
    conn.close()


def small_repo(root: Path) -> Path:
    write_model(root, "fine", 1, identity_model("FP32"))
    write_model(root, "broken", 1, identity_model("FP32"))
    (root / "broken" / "config.pbtxt").write_text("max_batch_sizes: 4\n")
    return root


def test_strict_readiness_counts_failed_and_reloaded_models(tmp_path: Path, loop_name: str) -> None:
    with ServerThread(repository=small_repo(tmp_path), loop=loop_name) as s:
        h, g = clients(s)
        assert not h.is_server_ready() and not g.is_server_ready()
        h.unload_model("broken")  # unloaded on purpose: no longer counts
        assert h.is_server_ready() and g.is_server_ready()
        assert "failed to load" in error_of(g.load_model, "broken")  # explicitly loaded, failed: counts again
        assert not h.is_server_ready() and not g.is_server_ready()
        (tmp_path / "broken" / "config.pbtxt").write_text("max_batch_size: 4\n")
        g.load_model("broken")
        assert h.is_server_ready() and g.is_server_ready() and h.is_model_ready("broken")


def test_relaxed_readiness_and_empty_repository(tmp_path: Path, loop_name: str) -> None:
    with ServerThread(repository=small_repo(tmp_path / "r"), loop=loop_name, strict_readiness=False) as s:
        h, g = clients(s)
        assert h.is_server_ready() and g.is_server_ready()
        assert h.is_model_ready("fine") and not h.is_model_ready("broken")
    (tmp_path / "empty").mkdir()
    with ServerThread(repository=tmp_path / "empty", loop=loop_name) as s:
        h, g = clients(s)
        assert h.is_server_ready() and g.is_server_ready()
