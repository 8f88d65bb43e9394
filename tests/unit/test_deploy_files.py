"""The deployment files parse, pass Ray's own schemas, and agree with each other:
the RayService serves exactly serve_config.yaml's application, every pod finds Chroma
and the adapters, and there is a GPU for every generator replica."""

import json

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import ServeDeploySchema

from tests.conftest import REPO

KUBERAY = REPO / "deploy" / "kuberay"


def load_all(path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def by_kind(docs: list[dict], kind: str) -> dict:
    return next(d for d in docs if d["kind"] == kind)


@pytest.fixture(scope="module")
def serve_config() -> dict:
    return yaml.safe_load((REPO / "serve_config.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def rayservice() -> dict:
    return by_kind(load_all(KUBERAY / "rayservice.yaml"), "RayService")


def generator(config: dict) -> dict:
    return next(d for d in config["applications"][0]["deployments"] if d["name"] == "Generator")


def pods(rayservice: dict) -> list[dict]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]


def env(container: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_rayservice_serves_serve_config_application(serve_config, rayservice):
    serve_v2 = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    assert serve_v2["applications"] == serve_config["applications"]
    ServeDeploySchema.model_validate(serve_config)  # Serve's own schema
    ServeDeploySchema.model_validate(serve_v2)
    assert rayservice["apiVersion"] == "ray.io/v1"
    assert rayservice["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__


def test_every_pod_finds_chroma_and_the_shared_adapters(rayservice):
    chroma = load_all(KUBERAY / "chroma.yaml")
    service = by_kind(chroma, "Service")
    claims = {d["metadata"]["name"]: d for d in load_all(KUBERAY / "storage.yaml") + chroma
              if d["kind"] == "PersistentVolumeClaim"}
    for pod in pods(rayservice):
        container = pod["containers"][0]
        settings = env(container)
        assert settings["ECHORAG_CHROMA_HOST"] == service["metadata"]["name"]
        assert int(settings["ECHORAG_CHROMA_PORT"]) == service["spec"]["ports"][0]["port"]
        adapters = settings["ECHORAG_ADAPTERS_URI"]
        assert adapters.startswith("file://")  # a shared volume, mounted at that path in every pod
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volume = next(v for v in pod["volumes"] if v["name"] == mounts[adapters.removeprefix("file://")])
        claim = claims[volume["persistentVolumeClaim"]["claimName"]]
        assert "ReadWriteMany" in claim["spec"]["accessModes"]
        # Ray Train's runs on the same shared volume: a worker on any node checkpoints there.
        assert settings["ECHORAG_TRAIN_STORAGE_URI"].startswith(adapters + "/")
        assert settings["ECHORAG_DATA_DIR"] in mounts
    # The collector's SQLite lives on the head's own volume, never on a shared file system.
    head = pods(rayservice)[0]
    data = next(v for v in head["volumes"] if v["name"] == "data")
    assert claims[data["persistentVolumeClaim"]["claimName"]]["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_a_gpu_for_every_generator_replica(serve_config, rayservice):
    max_replicas = generator(serve_config)["autoscaling_config"]["max_replicas"]
    groups = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    gpus = sum(g["maxReplicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
               for g in groups)
    assert gpus >= max_replicas
    head_limits = pods(rayservice)[0]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in head_limits  # the head serves CPU deployments only
    aws = yaml.safe_load((REPO / "cluster.yaml").read_text(encoding="utf-8"))
    assert aws["available_node_types"]["gpu_worker"]["max_workers"] >= max_replicas


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-onprem.yaml"])
def test_cluster_launcher_configs_pass_rays_schema(name):
    config = yaml.safe_load((REPO / name).read_text(encoding="utf-8"))
    validate_config(prepare_config(json.loads(json.dumps(config))))  # what `ray up` checks
    commands = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    for setting in ("ECHORAG_CHROMA_HOST", "ECHORAG_ADAPTERS_URI", "ECHORAG_TRAIN_STORAGE_URI", "ECHORAG_DATA_DIR"):
        assert commands.count(setting) == 2, setting  # head and workers alike


def test_grafana_dashboard_uses_the_exported_series():
    import re

    from deployments.metrics import EXPORTED, SPECS

    dashboard = json.loads((REPO / "observability" / "grafana" / "echorag-dashboard.json").read_text(encoding="utf-8"))
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in dashboard["templating"]["list"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"] if p["type"] != "row")
    series = set(EXPORTED.values()) | {
        f"ray_{name}_{suffix}" for name, spec in SPECS.items() if spec[0] == "histogram" for suffix in ("bucket", "sum", "count")
    }
    used = {name for expr in exprs for name in re.findall(r"ray_echorag_\w+", expr)}
    assert used and used <= series, used - series
    assert set(EXPORTED.values()) - {"ray_echorag_request_latency_s", "ray_echorag_stage_latency_s"} <= used  # every series has a panel
    assert any("ray_serve_num_http_requests_total" in e for e in exprs)
    assert any("ray_serve_deployment_processing_latency_ms_bucket" in e for e in exprs)
    assert any("ray_serve_replica_processing_queries" in e for e in exprs)
