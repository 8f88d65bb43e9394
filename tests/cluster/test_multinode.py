"""EchoRAG on a real multi-node Ray cluster on this machine (``deploy/local-cluster.sh``):
a head and two worker raylets, a Chroma server, adapters and Ray Train storage on a
shared ``file://`` URI. A fine-tune trains on the worker node that offers the training
resource, a generator replica on another node serves the new version (downloaded from
the adapter URI into that node's own cache), and a worker node killed outright loses
nothing: its replicas come back on the other nodes and chat keeps answering.

The cluster is driven from outside (the script, ``ray list``, HTTP), so this runs in the
same pytest process as the session cluster of ``tests/serve``, before it starts."""

from __future__ import annotations

import time

import httpx
import pytest
import yaml

from echorag.documents import read_documents, sample_path
from tests.cluster.local_cluster import LocalCluster, wait_until
from tests.conftest import REPO

pytestmark = pytest.mark.cluster

ADMIN_TOKEN = "cluster-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# head and w2 serve (generator replicas need echorag_serve), w1 trains (echorag_train).
NODES = "head:3:serve w1:2:train w2:2:serve"
QUESTIONS = ["제주도는 어떤 섬인가요?", "김치를 담글 때 배추는 얼마나 절이나요?", "훈민정음은 언제 반포되었나요?",
             "블랙홀은 어떻게 생기나요?", "여권은 어디서 발급받나요?"]


def serve_config() -> dict:
    """serve_config.yaml, with two generator replicas on the serving nodes."""
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text(encoding="utf-8"))
    app = config["applications"][0]
    app["args"] |= {"max_new_tokens": 24, "generator_model": "tiny",  # a model that takes adapters
                    # it answers and learns from its own answers, judged on one pool turn by loss
                    "finetune_train_on": "all", "finetune_gate_min_examples": 1,
                    "finetune_gate_agreement_tolerance": 1.0,
                    "engine": "transformers"}  # replicas restart here: seconds, not an engine start each
    generator = next(d for d in app["deployments"] if d["name"] == "Generator")
    generator.pop("autoscaling_config", None)
    generator |= {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.5, "resources": {"echorag_serve": 1}}}
    return config


@pytest.fixture(scope="module")
def cluster(tiny_model_path):
    import shutil

    started = time.monotonic()
    lc = LocalCluster(NODES, env={
        "ECHORAG_ADMIN_TOKEN": ADMIN_TOKEN,
        "ECHORAG_FINETUNE_WORKER_RESOURCES": '{"echorag_train": 1}',
        # A lost node is noticed in about 3 s instead of about 15 s.
        "ECHORAG_LC_SYSTEM_CONFIG": '{"health_check_period_ms": 1000, "health_check_timeout_ms": 1000, '
                                    '"health_check_failure_threshold": 3}',
    })
    shutil.copytree(tiny_model_path, lc.dir / "data" / "models" / "tiny-ko")  # as after a first start
    try:
        lc.up(serve_config())
        print(f"\ncluster up and deployed in {time.monotonic() - started:.1f} s")
        yield lc
    finally:
        groups = lc.process_groups()
        lc.down()
        import os

        for group in groups:  # down stopped every process of every node it started
            with pytest.raises(ProcessLookupError):
                os.killpg(group, 0)
        lc.cleanup()
        print(f"cluster test total {time.monotonic() - started:.1f} s")


@pytest.fixture(scope="module")
def client(cluster):
    with httpx.Client(base_url=cluster.url, timeout=180) as c:
        response = c.post("/documents", json={"documents": read_documents([sample_path()])}, headers=ADMIN)
        assert response.status_code == 200, response.text
        yield c


def chat(url: str, message: str) -> httpx.Response:
    # A new connection each time: the proxy of a killed node takes its connections with it.
    # No session id: each chat is a new private session the server issues.
    return httpx.post(f"{url}/chat", json={"message": message}, timeout=180)


def test_three_raylets_each_with_its_own_resources(cluster):
    nodes = {n["node_id"]: n for n in cluster.ray_list("nodes", "state=ALIVE")}
    names = cluster.node_ids()
    assert set(names) == {"head", "w1", "w2"}
    assert nodes[names["head"]]["is_head_node"] and not nodes[names["w1"]]["is_head_node"]
    assert nodes[names["w1"]]["resources_total"]["CPU"] == 2
    assert nodes[names["w1"]]["resources_total"]["echorag_train"] == 1000
    assert "echorag_train" not in nodes[names["w2"]]["resources_total"]


def test_training_on_a_worker_node_then_serving_it_from_another(cluster, client):
    names = cluster.node_ids()
    settings = {"batch_size": 3, "auto_trigger": True, "epochs": 2, "learning_rate": 2e-3, "holdout_fraction": 0.34}
    assert client.post("/mlops/settings", json=settings, headers=ADMIN).status_code == 200
    started = time.monotonic()
    for question in QUESTIONS[:3]:
        response = chat(cluster.url, question)
        assert response.status_code == 200, response.text

    def finished():
        progress = client.get("/mlops/training-progress").json()
        return progress if progress["status"] in ("succeeded", "failed") and not progress["pending"] else None

    progress = wait_until(finished, 600, "the training run")
    assert progress["status"] == "succeeded", progress
    print(f"training run: {time.monotonic() - started:.1f} s from the first chat")

    models = client.get("/mlops/models").json()
    assert models["active"] == "v1", models
    v1 = next(v for v in models["versions"] if v["version"] == "v1")
    # The Train worker ran on w1, the only node with echorag_train; its node id is in the
    # version's metadata, and the run's checkpoints went to the shared storage, then away.
    assert v1["metrics"]["train_node_id"] == names["w1"]
    assert v1["metrics"]["train_storage"] == f"file://{cluster.dir}/shared/train"
    assert (cluster.dir / "shared" / "adapters" / "v1" / "metadata.json").is_file()
    assert not list((cluster.dir / "shared" / "train").glob("echorag-run-*"))

    # Generator replicas only run on the serving nodes, never on w1.
    generators = cluster.replicas()["Generator"]
    assert len(generators) == 2 and names["w1"] not in generators
    for question in QUESTIONS[3:]:
        answer = chat(cluster.url, question).json()
        assert answer["adapter_version"] == "v1", answer
    # Nodes read v1 from the adapter URI into their own caches (each node has its own
    # TMPDIR): the head (collector, generator) and serving nodes; w1 trained it and never
    # needed to.
    cached = {p.parts[-6] for p in cluster.dir.glob("nodes/*/tmp/echorag-adapter-cache/*/v1-*/adapter_config.json")}
    assert "head" in cached and cached <= {"head", "w2"}, cached


def test_a_killed_worker_node_s_replicas_come_back_on_the_others(cluster, client):
    names = cluster.node_ids()
    before = cluster.replicas()
    on_w2 = {d: ids.count(names["w2"]) for d, ids in before.items() if names["w2"] in ids}
    assert on_w2, f"no Serve replica on w2 to lose: {before}"
    targets = {d: len(ids) for d, ids in before.items()}
    print(f"replicas on w2 before the kill: {on_w2}")

    killed = time.monotonic()
    cluster.kill_node("w2")
    wait_until(lambda: "w2" not in cluster.node_ids(), 60, "the GCS to mark w2 dead")

    def recovered():
        placed = cluster.replicas()
        alive = set(cluster.node_ids().values())
        return all(len([n for n in placed.get(d, []) if n in alive]) == n for d, n in targets.items())

    wait_until(recovered, 300, f"every deployment back to {targets} replicas on the other nodes", every=2)
    after = cluster.replicas()
    assert all(names["w2"] not in ids for ids in after.values()), after
    assert names["head"] in after["Generator"]  # the only serving node left

    answered = wait_until(lambda: chat(cluster.url, QUESTIONS[0]).status_code == 200, 120, "a chat to answer")
    print(f"kill -> all replicas back and chat answering: {time.monotonic() - killed:.1f} s")
    assert answered
    for question in QUESTIONS[1:4]:
        answer = chat(cluster.url, question)
        assert answer.status_code == 200, answer.text
        assert answer.json()["adapter_version"] == "v1"
    health = client.get("/health").json()
    assert health["status"] == "ok", health
