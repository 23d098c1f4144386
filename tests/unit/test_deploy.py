"""deploy/: the Kubernetes manifests agree with the CLI they run. No cluster runs here (and
`kubectl apply --dry-run=client` needs an API server even so), so the manifests are parsed and
their ports, probes, arguments and termination grace checked against `headserve serve`'s and
`headserve ray-config`'s own parsing."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from headserve.server.options import parser as _parser
from headserve.server.options import serve_settings
from headserve.server.ray_config import config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _docs(path: Path) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(path.read_text()) if d}


@pytest.mark.parametrize("manifest", ["headserve.yaml", "headserve-gpu.yaml"])
def test_the_standalone_deployment_matches_serve(manifest: str) -> None:
    docs = _docs(DEPLOY / "standalone" / manifest)
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][0] == "serve"
    args = _parser().parse_args(container["args"])  # the CLI accepts every argument
    settings = serve_settings(container["args"][1:])
    assert args.host == "0.0.0.0"  # reachable from the pod network
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == args.port and ports["metrics"] == settings.metrics_port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == args.port  # grpc.health.v1 on the port
    assert settings.security.open_health  # probes carry no token
    # Kubernetes kills only after the drain had its --grace seconds, with room to spare
    assert pod["terminationGracePeriodSeconds"] >= settings.grace_seconds + 5
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert docs["Deployment"]["spec"]["selector"]["matchLabels"] == labels
    if "gpu" in manifest:
        assert settings.device == "cuda"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    else:
        service, hpa = docs["Service"], docs["HorizontalPodAutoscaler"]
        assert service["spec"]["selector"] == labels
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
        assert hpa["spec"]["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
        assert container["resources"]["requests"]["cpu"]  # HPA utilization needs a request


def test_the_rayservice_serves_what_ray_config_writes() -> None:
    path = DEPLOY / "ray" / "rayservice.yaml"
    (made_by,) = [ln for ln in path.read_text().splitlines() if ln.startswith("# made by: ")]
    argv = shlex.split(made_by.removeprefix("# made by: "))
    assert argv[:2] == ["headserve", "ray-config"]
    spec = _docs(path)["RayService"]["spec"]
    serve_config = yaml.safe_load(spec["serveConfigV2"])
    assert serve_config == config(argv[2:])  # exactly what the command writes today
    port = serve_config["grpc_options"]["port"]
    (service_port,) = spec["serveService"]["spec"]["ports"]
    assert service_port["port"] == port == service_port["targetPort"]
    head = spec["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert port in {p["containerPort"] for p in head["ports"]}
    (workers,) = spec["rayClusterConfig"]["workerGroupSpecs"]
    (deployment,) = serve_config["applications"][0]["deployments"]
    assert workers["maxReplicas"] == deployment["autoscaling_config"]["max_replicas"]
    cpus = deployment["ray_actor_options"]["num_cpus"]
    worker = workers["template"]["spec"]["containers"][0]
    assert float(worker["resources"]["requests"]["cpu"]) >= cpus  # a replica fits a worker
    assert spec["rayClusterConfig"]["rayVersion"] == "2.60.0"  # the version headserve[ray] pins
