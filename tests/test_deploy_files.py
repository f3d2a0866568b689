"""docker/: the compose file and the Kubernetes manifests are complete and agree with the server.

No Docker or cluster here, so these read the files: every mount has a source, every GATEWAY_*
variable is a real setting, the shutdown numbers add up (preStop + drain + grace fit in the
termination grace period), probes exist, workers match the CPU request, and the runtime image
installs no load-test extras.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import tomllib
import yaml

from gateway.model_config import parse_config
from gateway.settings import ServerSettings

DOCKER = Path(__file__).resolve().parents[1] / "docker"
SETTINGS = {f"GATEWAY_{f.name.upper()}": f for f in fields(ServerSettings)}


def _defaults() -> ServerSettings:
    return ServerSettings(demo=True)


def test_compose_mounts_exist_and_shutdown_fits() -> None:
    doc = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    named = set(doc.get("volumes") or {})
    for name, svc in doc["services"].items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith((".", "/")):
                assert (DOCKER / src).exists(), f"service {name} mounts {src}, which does not exist"
            else:
                assert src in named, f"service {name} mounts volume {src}, which is not declared"
    assert "gateway demo export /models" in doc["services"]["models"]["command"][0]
    gw = doc["services"]["gateway"]
    env = gw["environment"]
    assert set(k for k in env if k.startswith("GATEWAY_")) <= set(SETTINGS)
    stop = float(gw["stop_grace_period"].rstrip("s"))
    assert stop > float(env["GATEWAY_DRAIN_S"]) + float(env["GATEWAY_SHUTDOWN_GRACE_S"])


def _k8s() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for d in yaml.safe_load_all((DOCKER / "k8s" / "gateway.yaml").read_text()):
        out.setdefault(d["kind"], []).append(d)
    return out


def test_k8s_deployment_is_complete() -> None:
    docs = _k8s()
    (dep,) = docs["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert set(env) <= set(SETTINGS), set(env) - set(SETTINGS)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe in c, probe
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    sleep = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    drain = float(env.get("GATEWAY_DRAIN_S", _defaults().drain_s))
    grace = float(env.get("GATEWAY_SHUTDOWN_GRACE_S", _defaults().shutdown_grace_s))
    assert pod["terminationGracePeriodSeconds"] > float(sleep[1]) + drain + grace
    cpu = c["resources"]["requests"]["cpu"]
    assert int(env["GATEWAY_WORKERS"]) == int(cpu), "one worker per requested CPU"
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims <= {p["metadata"]["name"] for p in docs["PersistentVolumeClaim"]}


def test_k8s_has_a_headless_service_for_grpc() -> None:
    services = _k8s()["Service"]
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    assert headless and any(p["name"] == "grpc" for p in headless[0]["spec"]["ports"])


def test_runtime_image_installs_no_extras() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    runtime = text.split("FROM ")[-1]
    installs = re.findall(r"pip install[^\n]*", runtime)
    assert installs and not any("[" in line for line in installs), installs


def _mount(svc: dict, path: str) -> str:
    """The volume a compose service mounts at ``path``."""
    for vol in svc.get("volumes", []):
        src, dst = vol.split(":")[:2]
        if dst == path:
            return str(src)
    raise AssertionError(f"nothing mounted at {path}")


def test_compose_forwards_a_remote_model_to_the_triton_service() -> None:
    """The gateway's repository is the volume the models service fills, with the remote models
    copied in; each remote model's endpoints name a compose service and its container gRPC port."""
    doc = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    svcs = doc["services"]
    gw, models = svcs["gateway"], svcs["models"]
    repo = gw["command"][gw["command"].index("--model-repository") + 1]
    volume = _mount(gw, repo)
    assert _mount(models, f"/{volume}") == volume and f"/{volume}" in models["command"][0]
    assert "cp -r /remote-models/." in models["command"][0] and _mount(models, "/remote-models") == "./remote-models"
    assert gw["depends_on"]["triton"]["condition"] == "service_healthy" and "healthcheck" in svcs["triton"]
    configs = sorted((DOCKER / "remote-models").glob("*/config.toml"))
    assert configs
    for path in configs:
        cfg = parse_config(path.parent.name, tomllib.loads(path.read_text()))
        assert cfg.remote is not None
        for ep in cfg.remote.endpoints:
            host, port = ep.rsplit(":", 1)
            assert host in svcs, f"{path}: endpoint {ep} names no compose service"
            assert port == "8001" and "tritonserver" in svcs[host]["command"][0]


def test_k8s_remote_gateway_lists_every_triton_pod_and_serves_the_configmap() -> None:
    docs: dict[str, list[dict]] = {}
    for d in yaml.safe_load_all((DOCKER / "k8s" / "triton.yaml").read_text()):
        docs.setdefault(d["kind"], []).append(d)
    (sts,) = docs["StatefulSet"]
    (cm,) = docs["ConfigMap"]
    headless = next(s for s in docs["Service"] if s["metadata"]["name"] == sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    grpc_port = next(p["containerPort"] for p in sts["spec"]["template"]["spec"]["containers"][0]["ports"]
                     if p["name"] == "grpc")
    pods = [f"{sts['metadata']['name']}-{i}.{headless['metadata']['name']}:{grpc_port}"
            for i in range(sts["spec"]["replicas"])]
    dep = next(d for d in docs["Deployment"] if d["metadata"]["name"] == "inference-gateway-remote")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    repo = c["args"][c["args"].index("--model-repository") + 1]
    (mount,) = c["volumeMounts"]
    assert mount["mountPath"] == repo
    vol = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert vol["configMap"]["name"] == cm["metadata"]["name"]
    for item in vol["configMap"]["items"]:
        name, file = item["path"].split("/")
        assert file == "config.toml"
        cfg = parse_config(name, tomllib.loads(cm["data"][item["key"]]))
        assert cfg.remote is not None and list(cfg.remote.endpoints) == pods
        assert c["readinessProbe"]["httpGet"]["path"] == f"/v2/models/{name}/ready"
    env = {e["name"] for e in c["env"]}
    assert env <= set(SETTINGS)
    sleep = float(c["lifecycle"]["preStop"]["exec"]["command"][1])
    drain = float(next(e["value"] for e in c["env"] if e["name"] == "GATEWAY_DRAIN_S"))
    grace = float(next(e["value"] for e in c["env"] if e["name"] == "GATEWAY_SHUTDOWN_GRACE_S"))
    assert pod["terminationGracePeriodSeconds"] > sleep + drain + grace


def _gauges() -> set[str]:
    """The gauge families /metrics exports (read from their definitions)."""
    src = (DOCKER.parent / "gateway" / "observe" / "metrics.py").read_text()
    return set(re.findall(r'GaugeMetricFamily\(\s*"(\w+)"', src))


def _deployment_name() -> str:
    (dep,) = _k8s()["Deployment"]
    return dep["metadata"]["name"]


def test_k8s_hpa_scales_the_deployment_on_the_replica_demand() -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all((DOCKER / "k8s" / "hpa.yaml").read_text())}
    hpa = docs["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", _deployment_name())
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (m,) = hpa["spec"]["metrics"]
    assert m["type"] == "Pods"  # per-pod shares, averaged then multiplied back by the pod count
    assert m["pods"]["metric"]["name"] == "gateway_replica_demand" in _gauges()
    assert m["pods"]["target"] == {"type": "AverageValue", "averageValue": "1"}
    # the adapter rule exposes that same series per pod
    rules = yaml.safe_load(docs["ConfigMap"]["data"]["config.yaml"])["rules"]
    named = {r["name"]["as"]: r for r in rules}
    assert {"gateway_replica_demand", "gateway_desired_replicas"} <= set(named) <= _gauges()
    for r in rules:
        assert set(r["resources"]["overrides"]) == {"namespace", "pod"}
        assert r["name"]["as"] in r["seriesQuery"]


def test_k8s_keda_scales_the_deployment_to_the_summed_demand() -> None:
    (so,) = list(yaml.safe_load_all((DOCKER / "k8s" / "keda.yaml").read_text()))
    assert (so["apiVersion"], so["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    target = so["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", _deployment_name())
    (trig,) = so["spec"]["triggers"]
    assert trig["type"] == "prometheus"
    md = trig["metadata"]
    assert float(md["threshold"]) == 1.0 and md.get("metricType", "AverageValue") == "AverageValue"
    metric = re.search(r"sum\((\w+)\{", md["query"])
    assert metric is not None and metric.group(1) == "gateway_replica_demand" in _gauges()
    assert md["serverAddress"].startswith("http")
