"""Triton's model config (``config.pbtxt``, or a load override: the same config as JSON), read
strictly, the way Triton reads it, so an existing Triton repository of ONNX models either serves
as Triton would serve it or is refused with a reason; never served differently in silence.

- Parsing is against the whole of Triton's schema (``proto/model_config.proto``) with no unknown
  field allowed: a typo (``max_batch_sizes``) refuses the model, naming the file, the field and
  the line.
- Every field that is set is then either honoured or refuses the model as "not supported"
  (``_TOP`` and the per-message sets below); only ``optimization`` (pure performance hints) and
  backend ``parameters`` we do not know load with a logged warning. README's "Model repository"
  section has the table.
- The honoured scheduling fields become the dict shape of ``config.toml`` (``settings``), so one
  validator checks both and ``config.toml`` wins field by field; the declared ``input``/``output``
  are checked against the ONNX graph by ``check_io`` with Triton's rules (dims exclude the batch
  dimension when ``max_batch_size > 0``; -1 in the graph accepts any declared size; ``reshape``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format

from gateway.model_config import ConfigError
from gateway.pb import model_config as mc
from gateway.repository.warmup import WarmupInput, WarmupSample
from gateway.types import TensorSpec

log = logging.getLogger(__name__)

PBTXT = "config.pbtxt"
OVERRIDE_SOURCE = "config override (load parameter 'config')"
_DATATYPE_NAMES = mc.DESCRIPTOR.enum_types_by_name["DataType"].values_by_number
_KIND = mc.ModelInstanceGroup.Kind
_DEVICE = {_KIND.Value("KIND_CPU"): "cpu", _KIND.Value("KIND_GPU"): "cuda", _KIND.Value("KIND_AUTO"): "auto"}

# Top-level fields we honour; any other field that is set refuses the model, except _WARN.
_TOP = {"name", "platform", "backend", "version_policy", "max_batch_size", "input", "output", "dynamic_batching",
        "instance_group", "default_model_filename", "model_warmup", "parameters", "model_transaction_policy",
        "response_cache"}
_WARN = {"optimization"}  # graph level, accelerators, CUDA graphs, pinned memory: speed only, never answers
_HINT = {
    "sequence_batching": "stateful sequence batching",
    "ensemble_scheduling": "ensembles",
    "batch_input": "ragged batching",
    "batch_output": "ragged batching",
    "runtime": "a custom backend runtime",
    "cc_model_filenames": "per-GPU model files",
    "metric_tags": "custom metric labels",
    "model_operations": "custom operator libraries",
    "model_repository_agents": "repository agents",
    "model_metrics": "custom metric buckets",
    "default_timeout_microseconds": "per-priority timeouts",
    "preserve_ordering": "responses leave in completion order",
    "timeout_action": "expired requests are refused, never delayed",
    "decoupled": "decoupled models: zero or many responses per request",
    "enable": "a response cache",
    "is_shape_tensor": "shape tensors",
    "allow_ragged_batch": "ragged batching",
    "optional": "optional inputs",
    "is_non_linear_format_io": "non-linear formats",
    "label_filename": "the classification extension",
    "rate_limiter": "the rate limiter",
    "secondary_devices": "secondary devices",
    "profile": "TensorRT profiles",
    "passive": "passive instances",
    "host_policy": "host policies",
}


@dataclass(frozen=True, slots=True)
class DeclaredTensor:
    """An ``input``/``output`` entry: what the client sees (``dims``) and, with ``reshape``, what
    the model sees. ``field`` names the entry (``input[0]``) for error messages."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None
    field: str


@dataclass(frozen=True, slots=True)
class TritonConfig:
    """What a Triton config asks for, checked for everything that does not need the graph."""

    model: str
    source: str
    """The file (or the load override) it came from, as error messages name it."""
    settings: dict[str, Any]
    """The honoured scheduling fields under their config.toml names (max_batch_size, ...)."""
    inputs: tuple[DeclaredTensor, ...] = ()
    outputs: tuple[DeclaredTensor, ...] = ()
    model_filename: str = ""
    warmup: tuple[WarmupSample, ...] = ()
    gpu_field: str = ""
    """The field that asked for a GPU (``instance_group[0].kind``), for the CUDA check."""

    def fail(self, fieldname: str, why: str) -> ConfigError:
        return ConfigError(f"model '{self.model}': {self.source} field '{fieldname}' {why}")


@dataclass(frozen=True, slots=True)
class IOPlan:
    """The client-visible signature after ``check_io``, and what the backend wrapper must do."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    input_reshape: dict[str, tuple[int, ...]] = field(default_factory=dict)
    output_reshape: dict[str, tuple[int, ...]] = field(default_factory=dict)
    output_subset: bool = False

    @property
    def needs_wrapper(self) -> bool:
        return bool(self.input_reshape or self.output_reshape or self.output_subset)


def triton_type(datatype: str) -> str:
    return "TYPE_" + ("STRING" if datatype == "BYTES" else datatype)


def _kserve_type(value: int) -> str:
    name = _DATATYPE_NAMES[value].name[len("TYPE_"):] if value in _DATATYPE_NAMES else "INVALID"
    return "BYTES" if name == "STRING" else name


# ---- parsing ---------------------------------------------------------------------------------
_UNKNOWN = re.compile(r'Message type "([\w.]+)" has no field named "(\w+)"')


def read_pbtxt(model_dir: Path) -> TritonConfig | None:
    path = model_dir / PBTXT
    if not path.exists():
        return None
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"model '{model_dir.name}': {path} is not text (UTF-8): {exc}") from None
    cfg = mc.ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as exc:
        where = f"line {exc.GetLine()}" if exc.GetLine() else "?"
        detail = str(exc).split(" : ", 1)[-1]
        m = _UNKNOWN.search(detail)
        if m:
            raise ConfigError(f"model '{model_dir.name}': {path} {where}: field '{m.group(2)}' is not a field of "
                              f"Triton's {m.group(1)}; the model is refused, as Triton refuses it") from None
        raise ConfigError(f"model '{model_dir.name}': {path} is not a valid Triton model config: {where}, column "
                          f"{exc.GetColumn()}: {detail}") from None
    return interpret(cfg, model_dir, str(path))


def read_override(model_dir: Path, text: str) -> TritonConfig:
    """A load override: Triton's ModelConfig as JSON (``json_format``'s mapping), replacing
    config.pbtxt for that load."""
    name = model_dir.name
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"model '{name}': {OVERRIDE_SOURCE} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"model '{name}': {OVERRIDE_SOURCE} must be a JSON object (Triton's ModelConfig), "
                          f"got {type(doc).__name__}")
    cfg = mc.ModelConfig()
    try:
        json_format.ParseDict(doc, cfg)
    except json_format.ParseError as exc:
        raise ConfigError(f"model '{name}': {OVERRIDE_SOURCE} is not a valid Triton model config: "
                          f"{str(exc).splitlines()[0]}") from None
    return interpret(cfg, model_dir, OVERRIDE_SOURCE)


# ---- interpretation (graph-independent) ------------------------------------------------------
TRITON_RESPONSE_CACHE_BYTES = 64 * 1024 * 1024
"""What ``response_cache { enable: true }`` turns on: a 64 MiB cache for the model (config.toml's
``response_cache_bytes`` sets another size)."""


class _Reader:
    def __init__(self, model: str, source: str) -> None:
        self.model = model
        self.source = source

    def fail(self, fieldname: str, why: str) -> ConfigError:
        return ConfigError(f"model '{self.model}': {self.source} field '{fieldname}' {why}")

    def unsupported(self, fieldname: str) -> ConfigError:
        hint = _HINT.get(fieldname.rsplit(".", 1)[-1].split("[", 1)[0])
        return self.fail(fieldname, "is set but not supported by this server" + (f" ({hint})" if hint else "")
                         + "; the model is refused rather than served without it")

    def only(self, msg: Any, allowed: set[str], prefix: str) -> None:
        for f, _ in msg.ListFields():
            if f.name not in allowed:
                raise self.unsupported(prefix + f.name)


def interpret(cfg: Any, model_dir: Path, source: str) -> TritonConfig:
    name = model_dir.name
    r = _Reader(name, source)
    for f, _ in cfg.ListFields():
        if f.name in _WARN:
            log.warning("model '%s': %s field '%s' is a performance hint this server ignores", name, source, f.name)
        elif f.name not in _TOP:
            raise r.unsupported(f.name)
    if cfg.name and cfg.name != name:
        raise r.fail("name", f"is '{cfg.name}' but the model's directory is '{name}'; Triton requires them to be equal")
    if cfg.platform and cfg.platform != "onnxruntime_onnx":
        raise r.fail("platform", f"is '{cfg.platform}'; only ONNX models (onnxruntime_onnx) are served")
    if cfg.backend and cfg.backend != "onnxruntime":
        raise r.fail("backend", f"is '{cfg.backend}'; only ONNX models (onnxruntime) are served")
    mbs = cfg.max_batch_size
    if mbs < 0:
        raise r.fail("max_batch_size", f"is {mbs}; it must be 0 (no batching) or more")
    # Triton's onnxruntime backend auto-completes a config that does not declare both input and
    # output: max_batch_size 0 (unset and 0 read the same) then means "batch if the graph can".
    autofill = not (cfg.input and cfg.output)
    settings: dict[str, Any] = {} if autofill and mbs == 0 else {"max_batch_size": mbs}
    if cfg.HasField("version_policy"):
        settings["version_policy"] = _version_policy(r, cfg.version_policy)
    if cfg.HasField("dynamic_batching"):
        settings.update(_dynamic_batching(r, cfg.dynamic_batching, mbs, autofill))
    gpu_field = ""
    if cfg.instance_group:
        group_settings, gpu_field = _instance_groups(r, cfg.instance_group)
        settings.update(group_settings)
    if cfg.default_model_filename:
        fn = cfg.default_model_filename
        if "/" in fn or "\\" in fn or fn in (".", ".."):
            raise r.fail("default_model_filename", f"is '{fn}'; it must be a file name inside each version directory")
    settings.update(_parameters(r, cfg.parameters))
    if cfg.HasField("model_transaction_policy"):
        r.only(cfg.model_transaction_policy, set(), "model_transaction_policy.")
    if cfg.HasField("response_cache"):
        r.only(cfg.response_cache, {"enable"}, "response_cache.")
        if cfg.response_cache.enable:  # Triton's cache size is server-wide; ours is per model
            settings["response_cache_bytes"] = TRITON_RESPONSE_CACHE_BYTES
    return TritonConfig(
        model=name, source=source, settings=settings,
        inputs=tuple(_tensor(r, t, f"input[{i}]", {"name", "data_type", "format", "dims", "reshape"})
                     for i, t in enumerate(cfg.input)),
        outputs=tuple(_tensor(r, t, f"output[{i}]", {"name", "data_type", "dims", "reshape"})
                      for i, t in enumerate(cfg.output)),
        model_filename=cfg.default_model_filename,
        warmup=tuple(_warmup(r, w, f"model_warmup[{i}]", model_dir) for i, w in enumerate(cfg.model_warmup)),
        gpu_field=gpu_field,
    )


def _version_policy(r: _Reader, vp: Any) -> Any:
    which = vp.WhichOneof("policy_choice")
    if which == "latest":
        n = int(vp.latest.num_versions)
        if n < 1:
            raise r.fail("version_policy.latest.num_versions", f"is {n}; it must be at least 1")
        return {"latest": n}
    if which == "specific":
        vs = [int(v) for v in vp.specific.versions]
        if not vs or any(v < 1 for v in vs):
            raise r.fail("version_policy.specific.versions", f"is {vs}; it must list version numbers (>= 1)")
        return {"specific": vs}
    return "all" if which == "all" else {"latest": 1}


def _dynamic_batching(r: _Reader, db: Any, mbs: int, autofill: bool) -> dict[str, Any]:
    r.only(db, {"preferred_batch_size", "max_queue_delay_microseconds", "default_queue_policy", "priority_levels",
                "default_priority_level", "priority_queue_policy"}, "dynamic_batching.")
    out: dict[str, Any] = {"max_queue_delay_us": int(db.max_queue_delay_microseconds)}
    pref = list(db.preferred_batch_size)
    if pref:
        if any(p < 1 for p in pref):
            raise r.fail("dynamic_batching.preferred_batch_size", f"is {pref}; sizes must be at least 1")
        if mbs == 0 and not autofill:
            raise r.fail("dynamic_batching.preferred_batch_size", f"is {pref} but max_batch_size is 0 (batching off)")
        if mbs and any(p > mbs for p in pref):
            raise r.fail("dynamic_batching.preferred_batch_size", f"is {pref}; sizes must not exceed max_batch_size {mbs}")
        out["preferred_batch_sizes"] = pref
    if db.HasField("default_queue_policy"):
        qp = db.default_queue_policy
        r.only(qp, {"max_queue_size", "default_timeout_microseconds", "allow_timeout_override"},
               "dynamic_batching.default_queue_policy.")
        if qp.max_queue_size:
            out["max_queue_size"] = int(qp.max_queue_size)
        if qp.default_timeout_microseconds:
            out["timeout_us"] = int(qp.default_timeout_microseconds)
    out.update(_priorities(r, db))
    return out


def _priorities(r: _Reader, db: Any) -> dict[str, Any]:
    """Triton's priority fields, checked by Triton's rules; without levels Triton ignores the others."""
    levels = int(db.priority_levels)
    if not levels:
        return {}
    default = int(db.default_priority_level)
    if not 1 <= default <= levels:
        raise r.fail("dynamic_batching.default_priority_level", f"is {default}; with priority_levels {levels} "
                     f"it must be in 1..{levels} (Triton's rule)")
    sizes: dict[str, int] = {}
    for level in sorted(db.priority_queue_policy):
        at = f"dynamic_batching.priority_queue_policy[{level}]"
        if not 1 <= level <= levels:
            raise r.fail(at, f"names level {level}; levels are 1..priority_levels ({levels})")
        qp = db.priority_queue_policy[level]
        r.only(qp, {"max_queue_size", "allow_timeout_override"}, at + ".")
        if qp.max_queue_size:
            sizes[str(level)] = int(qp.max_queue_size)
    out: dict[str, Any] = {"priority_levels": levels, "default_priority_level": default}
    if sizes:
        out["priority_queue_size"] = sizes
    return out


def _instance_groups(r: _Reader, groups: Sequence[Any]) -> tuple[dict[str, Any], str]:
    instances, kinds, gpu_field = 0, set(), ""
    for i, g in enumerate(groups):
        at = f"instance_group[{i}]"
        r.only(g, {"name", "kind", "count", "gpus"}, at + ".")
        if g.count < 0:
            raise r.fail(at + ".count", f"is {g.count}; it must be at least 1")
        if g.kind not in _DEVICE:
            raise r.fail(at + ".kind", f"is {_KIND.Name(g.kind)}, which is not supported by this server "
                         "(KIND_CPU, KIND_GPU or KIND_AUTO)")
        if g.gpus and (list(g.gpus) != [0] or g.kind == _KIND.Value("KIND_CPU")):
            raise r.fail(at + ".gpus", f"is {list(g.gpus)}, which is not supported by this server: instances are "
                         "not pinned to devices (only gpus: [0] is accepted)")
        if g.kind == _KIND.Value("KIND_GPU") and not gpu_field:
            gpu_field = at + ".kind"
        kinds.add(g.kind)
        instances += max(1, g.count)  # Triton's default count is 1
    if len(kinds) > 1:
        raise r.fail("instance_group", "mixes kinds, which is not supported by this server: all instances of a "
                     "model run on one device kind")
    return {"instances": instances, "device": _DEVICE[kinds.pop()]}, gpu_field


def _parameters(r: _Reader, params: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in sorted(params):
        value = params[key].string_value
        if key == "execution":  # ours (GET .../config shows it), so a config read back loads the same
            if value not in ("inline", "thread", "auto"):
                raise r.fail("parameters['execution']", f"is '{value}'; it must be inline, thread or auto")
            out["execution"] = value
        elif key == "intra_op_thread_count":  # the name Triton's onnxruntime backend reads
            if not value.isdigit():
                raise r.fail("parameters['intra_op_thread_count']", f"is '{value}'; it must be a whole number")
            out["intra_op_threads"] = int(value)
        elif key != "provider":  # provider: ours, shown in GET .../config; decided by instance_group
            log.warning("model '%s': %s field 'parameters' has '%s', which this server's onnxruntime backend "
                        "ignores", r.model, r.source, key)
    return out


def _tensor(r: _Reader, t: Any, at: str, allowed: set[str]) -> DeclaredTensor:
    r.only(t, allowed, at + ".")
    if not t.name:
        raise r.fail(at + ".name", "is empty")
    if t.data_type == mc.TYPE_INVALID:
        raise r.fail(at + ".data_type", "is not set (TYPE_INVALID)")
    dims = tuple(int(d) for d in t.dims)
    if not dims:
        raise r.fail(at + ".dims", "is empty; Triton requires dims (use [ 1 ] with reshape { shape: [ ] } "
                     "for one value per row)")
    if any(d == 0 or d < -1 for d in dims):
        raise r.fail(at + ".dims", f"is {list(dims)}; each dimension must be positive or -1 (variable)")
    reshape = tuple(int(d) for d in t.reshape.shape) if t.HasField("reshape") else None
    return DeclaredTensor(t.name, _kserve_type(t.data_type), dims, reshape, at)


def _warmup(r: _Reader, w: Any, at: str, model_dir: Path) -> WarmupSample:
    if w.batch_size < 1:
        raise r.fail(at + ".batch_size", f"is {w.batch_size}; it must be at least 1")
    if not w.inputs:
        raise r.fail(at + ".inputs", "is empty; a warm-up sample must give every input of the model")
    inputs = []
    warm_dir = (model_dir / "warmup").resolve()
    for key in sorted(w.inputs):
        inp = w.inputs[key]
        k = f"{at}.inputs['{key}']"
        if inp.data_type == mc.TYPE_INVALID:
            raise r.fail(k + ".data_type", "is not set (TYPE_INVALID)")
        dims = tuple(int(d) for d in inp.dims)
        if any(d < 0 for d in dims):
            raise r.fail(k + ".dims", f"is {list(dims)}; warm-up dims must all be fixed (no -1)")
        which = inp.WhichOneof("input_data_type")
        if which is None:
            raise r.fail(k, "sets none of zero_data, random_data, input_data_file")
        path = None
        if which == "input_data_file":
            path = (warm_dir / inp.input_data_file).resolve()
            if warm_dir not in path.parents or not path.is_file():
                raise r.fail(k + ".input_data_file", f"is '{inp.input_data_file}', which is not a file under "
                             f"{warm_dir}")
        kind = {"zero_data": "zero", "random_data": "random", "input_data_file": "file"}[which]
        inputs.append((key, WarmupInput(_kserve_type(inp.data_type), dims, kind, path, inp.input_data_file)))
    return WarmupSample(w.name, int(w.batch_size), int(w.count), tuple(inputs), at)


# ---- the graph check -------------------------------------------------------------------------
def check_io(tc: TritonConfig, max_batch_size: int, graph_inputs: Sequence[TensorSpec],
             graph_outputs: Sequence[TensorSpec]) -> IOPlan:
    """Check the declared tensors against the ONNX graph (Triton's rules) and return the
    signature clients see. Undeclared ``input``/``output`` lists come from the graph."""
    batching = max_batch_size > 0

    def check(d: DeclaredTensor, g: TensorSpec, kind: str) -> None:
        if d.datatype != g.datatype:
            raise tc.fail(d.field + ".data_type", f"is {triton_type(d.datatype)} but the ONNX graph's {kind} "
                          f"'{g.name}' is {triton_type(g.datatype)}")
        model = g.shape[1:] if batching else g.shape
        declared, at = d.dims, d.field + ".dims"
        if d.reshape is not None:
            if -1 in d.dims or -1 in d.reshape:
                raise tc.fail(d.field + ".reshape", "with a variable (-1) dimension is not supported by this "
                              "server (only fixed shapes are reshaped); the model is refused")
            if prod(d.dims) != prod(d.reshape):
                raise tc.fail(d.field + ".reshape.shape", f"is {list(d.reshape)} ({prod(d.reshape)} elements) "
                              f"but dims {list(d.dims)} has {prod(d.dims)}")
            declared, at = d.reshape, d.field + ".reshape.shape"
        if len(declared) != len(model) or any(m != -1 and m != x for m, x in zip(model, declared, strict=False)):
            rule = (f"with max_batch_size {max_batch_size} > 0 the dims exclude the batch dimension, so "
                    f"{list(model)} (or more specific where the graph has -1) was expected" if batching
                    else "with max_batch_size 0 the dims are the whole shape")
            raise tc.fail(at, f"is {list(declared)} but the ONNX graph's {kind} '{g.name}' has shape "
                          f"{list(g.shape)}: {rule}")

    def visible(d: DeclaredTensor) -> TensorSpec:
        return TensorSpec(d.name, d.datatype, ((-1,) if batching else ()) + d.dims)

    def declared(decl: Sequence[DeclaredTensor], graph: Sequence[TensorSpec], kind: str) -> None:
        by_name = {g.name: g for g in graph}
        seen: set[str] = set()
        for d in decl:
            g = by_name.get(d.name)
            if g is None:
                raise tc.fail(d.field + ".name", f"is '{d.name}' but the ONNX graph has no {kind} of that name "
                              f"(graph {kind}s: {', '.join(by_name)})")
            if d.name in seen:
                raise tc.fail(d.field + ".name", f"declares {kind} '{d.name}' a second time")
            seen.add(d.name)
            check(d, g, kind)

    inputs, outputs = tuple(graph_inputs), tuple(graph_outputs)
    in_reshape: dict[str, tuple[int, ...]] = {}
    out_reshape: dict[str, tuple[int, ...]] = {}
    subset = False
    if tc.inputs:
        declared(tc.inputs, graph_inputs, "input")
        missing = [g.name for g in graph_inputs if g.name not in {d.name for d in tc.inputs}]
        if missing:
            raise tc.fail("input", f"declares {len(tc.inputs)} inputs but the ONNX graph has {len(graph_inputs)}: "
                          f"'{missing[0]}' is not declared")
        inputs = tuple(visible(d) for d in tc.inputs)
        in_reshape = {d.name: d.reshape for d in tc.inputs if d.reshape is not None}
    if tc.outputs:  # a subset is allowed: only the declared outputs are served
        declared(tc.outputs, graph_outputs, "output")
        outputs = tuple(visible(d) for d in tc.outputs)
        out_reshape = {d.name: d.dims for d in tc.outputs if d.reshape is not None}
        subset = len(tc.outputs) != len(graph_outputs)
    return IOPlan(inputs, outputs, in_reshape, out_reshape, subset)
