"""Scale-out on a real multi-node Ray cluster on this machine (``deploy/local-cluster.sh``:
a head and two worker raylets, a Chroma server, adapters and Ray Train storage on a
shared ``file://`` URI), driven from outside over HTTP and the dashboard's REST API.

    python bench/scale.py [--clients 8] [--ramp 1 2 4 8 8 4 2 1] [--step-s 15]

1. **Autoscaling**: the generator (the tiny model, a stand-in for an LLM: it is the slow
   stage) and the embedder autoscale on ongoing requests. Clients ramp up, then down;
   every second the benchmark records each deployment's target and running replicas
   (``/api/serve/applications/``), the requests in flight and the p95 of the requests
   that finished in the last window.
2. **A worker node killed under load**: ``--clients`` chat without pause; the worker node
   with generator replicas is SIGKILLed (its raylet's process group). Each client keeps
   one session and sends every message with an ``Idempotency-Key``; like the OpenAI SDK it
   retries a dropped connection or a 5xx twice (after 1 s, then 2 s). Counted: requests,
   attempts retried, requests failed after the retries, acknowledged-and-lost turns (a
   200 whose ``mlops_info`` says the turn was collected, and whose ``turn_id`` the
   collector does not hold afterwards), and the seconds until every deployment is
   HEALTHY with its target replicas running on the nodes left.
3. **The node of a running fine-tune killed**: both workers offer the training resource;
   the node running the Train worker is killed mid-run while two clients keep chatting.
   The run fails, its turns stay pending, the loop retries after its backoff and the
   retry trains on the other node.

Writes bench/results/scale.json and scale.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from bench.serving import percentile, questions  # noqa: E402
from tests.cluster.local_cluster import LocalCluster, wait_until  # noqa: E402

RESULTS = REPO / "bench" / "results"
TOKEN = "bench-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
NODES = "head:3:serve w1:2:serve,train w2:2:serve,train"
SCALED = ("Generator", "Embedder")
RETRIES = 2  # per request, after the first attempt


def serve_config() -> dict:
    """serve_config.yaml with the tiny generator and fast autoscaling on the generator
    and the embedder (sized for two cores: half a CPU per replica)."""
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text(encoding="utf-8"))
    app = config["applications"][0]
    app["args"] |= {"max_new_tokens": 24, "generator_model": "tiny", "finetune_train_on": "all",
                    "finetune_gate_min_examples": 1, "finetune_gate_agreement_tolerance": 1.0,
                    "rate_limit_per_minute": 0}  # the clients share one address
    autoscaling = {"target_ongoing_requests": 2, "upscale_delay_s": 2, "downscale_delay_s": 10,
                   "metrics_interval_s": 1, "look_back_period_s": 4}
    for deployment in app["deployments"]:
        if deployment["name"] == "Generator":
            deployment |= {"autoscaling_config": {"min_replicas": 1, "max_replicas": 3, **autoscaling},
                           "ray_actor_options": {"num_cpus": 0.5, "resources": {"echorag_serve": 1}}}
        if deployment["name"] == "Embedder":
            deployment.pop("num_replicas", None)
            deployment |= {"autoscaling_config": {"min_replicas": 1, "max_replicas": 2, **autoscaling},
                           "ray_actor_options": {"num_cpus": 0.25}}
    return config


class Clients:
    """Chat clients in threads, each asking without pause while its index is below
    ``active``; every request is recorded as (start, end, status, turn_id), the turn id
    only when the response says the turn was collected."""

    def __init__(self, url: str, most: int) -> None:
        self.url, self.active, self.stop = url, 0, False
        self.records: list[tuple[float, float, str, str | None]] = []
        self.in_flight = 0
        self.errors: list[str] = []  # bodies of 5xx responses
        self.retried: list[tuple[float, str]] = []  # (when, status) of attempts a client retried
        self._lock = threading.Lock()
        self._questions = questions()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(most)]
        for thread in self._threads:
            thread.start()

    def _run(self, index: int) -> None:
        asked, session = index, None
        while not self.stop:
            if index >= self.active:
                time.sleep(0.05)
                continue
            # Numbered, so no turn is a duplicate the collector would rightly not store again.
            number, asked = asked, asked + len(self._threads)
            question = f"{self._questions[number % len(self._questions)]} ({number})"
            with self._lock:
                self.in_flight += 1
            start = time.time()
            # As HTTP clients do (the OpenAI SDK: twice), a dropped connection or a 5xx is
            # retried; the Idempotency-Key, in the same session, keeps a retry one turn.
            for attempt in range(1 + RETRIES):
                status, turn = self._ask(question, session, key=f"question-{number}")
                retryable = not status.isdigit() or status.startswith("5")
                if not retryable or attempt == RETRIES:
                    break
                with self._lock:
                    self.retried.append((time.time(), status))
                time.sleep(1 + attempt)
            session = turn[1] if turn else session
            with self._lock:
                self.in_flight -= 1
                self.records.append((start, time.time(), status, turn[0] if turn else None))

    def _ask(self, question: str, session: str | None, key: str) -> tuple[str, tuple[str | None, str] | None]:
        """Status, and (turn id when collected, session id) when answered."""
        try:  # a new connection each time: a killed node's proxy takes its connections along
            response = httpx.post(f"{self.url}/chat", json={"message": question, "session_id": session},
                                  headers={"Idempotency-Key": key}, timeout=120)
        except httpx.HTTPError as exc:
            return type(exc).__name__, None
        if response.status_code >= 500:
            self.errors.append(response.text[:300])
        if response.status_code != 200:
            return str(response.status_code), None
        body = response.json()
        # Acknowledged as collected: a duplicate (same question, same answer) is not stored.
        return "200", (body["turn_id"] if body.get("mlops_info", {}).get("collected") else None, body["session_id"])

    def between(self, start: float, end: float) -> list[tuple]:
        with self._lock:
            return [r for r in self.records if start <= r[1] < end]

    def close(self) -> None:
        self.stop = True
        for thread in self._threads:
            thread.join(timeout=150)


def deployments(cluster: LocalCluster) -> dict[str, dict]:
    """Deployment name -> status, target and running replicas, from the dashboard."""
    details = httpx.get(f"{cluster.dashboard}/api/serve/applications/", timeout=10).json()
    app = details["applications"]["echorag"]
    return {name: {"status": d["status"], "target": d["target_num_replicas"],
                   "running": sum(r["state"] == "RUNNING" for r in d["replicas"]),
                   "nodes": [r["node_id"] for r in d["replicas"] if r["state"] == "RUNNING"]}
            for name, d in app["deployments"].items()}


def healthy(cluster: LocalCluster) -> bool:
    alive = set(cluster.node_ids().values())
    return all(d["status"] == "HEALTHY" and d["running"] == d["target"] and set(d["nodes"]) <= alive
               for d in deployments(cluster).values())


def autoscaling(cluster: LocalCluster, clients: Clients, ramp: list[int], step_s: float) -> dict:
    timeline, started = [], time.time()
    for level in ramp + [0, 0]:  # two idle steps: the downscale
        clients.active = level
        step_end = time.time() + step_s
        while time.time() < step_end:
            time.sleep(1.0)
            now = time.time()
            done = clients.between(now - 3, now)
            point = {"t": round(now - started, 1), "clients": level, "in_flight": clients.in_flight,
                     "p95_ms": round(percentile([b - a for a, b, s, _ in done if s == "200"], 95) * 1000, 1)
                     if any(s == "200" for _, _, s, _ in done) else None}
            for name, d in deployments(cluster).items():
                if name in SCALED:
                    point[name] = {"target": d["target"], "running": d["running"]}
            timeline.append(point)
    records = clients.between(started, time.time())
    return {"ramp": ramp, "step_s": step_s, "timeline": timeline,
            "requests": len(records), "failed": sum(s != "200" for _, _, s, _ in records),
            "max_replicas": {n: max(p[n]["running"] for p in timeline) for n in SCALED},
            "final_replicas": {n: timeline[-1][n]["running"] for n in SCALED}}


def stored_turn_ids(client: httpx.Client) -> set[str]:
    ids, offset = set(), 0
    while True:
        page = client.get("/mlops/conversations", params={"limit": 1000, "offset": offset}, headers=ADMIN).json()
        ids |= {t["id"] for t in page["conversations"]}
        offset += len(page["conversations"])
        if not page["conversations"] or offset >= page["total"]:
            return ids


def node_kill(cluster: LocalCluster, client: httpx.Client, clients: Clients, n: int, before_s: float) -> dict:
    names = cluster.node_ids()
    placed = deployments(cluster)
    victim = max(("w1", "w2"), key=lambda w: sum(d["nodes"].count(names[w]) for d in placed.values()))
    lost_replicas = {k: d["nodes"].count(names[victim]) for k, d in placed.items() if names[victim] in d["nodes"]}
    started = time.time()
    clients.active = n
    time.sleep(before_s)
    killed = time.time()
    cluster.kill_node(victim)
    wait_until(lambda: victim not in cluster.node_ids(), 60, f"the GCS to mark {victim} dead")
    dead_s = time.time() - killed
    wait_until(lambda: healthy(cluster), 300, "every deployment HEALTHY on the nodes left", every=1)
    recovered_s = time.time() - killed
    time.sleep(before_s)
    clients.active = 0
    wait_until(lambda: clients.in_flight == 0, 150, "the last requests")
    ended = time.time()
    records = clients.between(started, ended)
    time.sleep(3)  # the collector writes a turn before /chat answers; a margin all the same
    acknowledged = {t for _, _, s, t in records if s == "200" and t}
    lost = acknowledged - stored_turn_ids(client)
    per_second = {}
    for a, b, s, _ in records:
        slot = per_second.setdefault(int(b - started), {"ok": 0, "failed": 0})
        slot["ok" if s == "200" else "failed"] += 1
    failures = dict(Counter(s for _, _, s, _ in records if s != "200"))
    return {"clients": n, "killed_node": victim, "replicas_on_it": lost_replicas,
            "killed_at_s": round(killed - started, 1), "marked_dead_after_s": round(dead_s, 1),
            "requests": len(records), "failed": sum(failures.values()), "failures": failures,
            # Attempts that failed and were retried (same Idempotency-Key), by what they got.
            "retried": dict(Counter(status for when, status in clients.retried if started <= when < ended)),
            "server_errors": clients.errors[-10:],
            "acknowledged": len(acknowledged), "acknowledged_and_lost": len(lost),
            "recovery_s": round(recovered_s, 1),
            "p95_ms_before": round(percentile([b - a for a, b, s, _ in records if s == "200" and b < killed], 95) * 1000, 1),
            "per_second": [{"t": t, **v} for t, v in sorted(per_second.items())],
            "after": {k: {"running": d["running"], "target": d["target"]} for k, d in deployments(cluster).items()}}


def train_worker_node(cluster: LocalCluster) -> str | None:
    for actor in cluster.ray_list("actors", "state=ALIVE"):
        if "RayTrainWorker" in (actor.get("class_name") or ""):
            return actor["node_id"]
    return None


def training_kill(cluster: LocalCluster, client: httpx.Client, clients: Clients, batch: int) -> dict:
    # The turns of the load phases are not this run's: clear them, then train every batch.
    client.delete("/mlops/conversations", headers=ADMIN).raise_for_status()
    settings = {"batch_size": batch, "auto_trigger": True, "epochs": 3, "learning_rate": 2e-3,
                "holdout_fraction": 0.34, "retry_backoff_s": 5}
    client.post("/mlops/settings", json=settings, headers=ADMIN).raise_for_status()
    started = time.time()
    clients.active = 2  # serving goes on through the run and the kill
    node = wait_until(lambda: client.get("/mlops/training-progress").json()["status"] == "training"
                      and train_worker_node(cluster), 600, "a Train worker of the run", every=0.5)
    first = client.get("/mlops/training-progress").json()
    clients.active = 1
    names = {v: k for k, v in cluster.node_ids().items()}
    victim = names[node]
    killed = time.time()
    cluster.kill_node(victim)
    failed = wait_until(lambda: (p := client.get("/mlops/training-progress").json())["status"] == "failed" and p,
                        600, "the run to fail", every=0.5)
    failed_s = time.time() - killed
    def retried() -> dict | None:  # the attempt after the killed one, once it has ended
        runs = client.get("/mlops/training-history").json()["runs"]
        return next((r for r in runs if r["attempt"] > first["attempt"] and r["from_seq"] == first["from_seq"]
                     and r["status"] != "running"), None)

    done = wait_until(retried, 900, "the retried run to end", every=1)
    succeeded_s = (done["ended_at"] or time.time()) - killed
    clients.active = 0
    wait_until(lambda: clients.in_flight == 0, 150, "the last requests")
    records = clients.between(started, time.time())
    models = client.get("/mlops/models").json()
    version = next((v for v in models["versions"] if v["version"] == done["version"] and done["version"]),
                   {"metrics": {}})
    events = client.get("/mlops/events", params={"limit": 50}, headers=ADMIN).json()
    return {"batch": batch, "killed_node": victim, "killed_after_run_start_s": round(killed - first["started_at"], 1),
            "attempt_killed": {k: first[k] for k in ("run_id", "attempt", "from_seq", "to_seq")},
            "failed_after_s": round(failed_s, 1), "error": (failed.get("error") or "")[:300],
            "retry": {k: done[k] for k in ("status", "outcome", "run_id", "attempt", "from_seq", "to_seq", "version")},
            "retry_ended_after_s": round(succeeded_s, 1),
            "retry_train_node": {v: k for k, v in cluster.node_ids().items()}.get(version["metrics"].get("train_node_id")),
            # The killed attempt's turns stayed pending: the retry trains on them (and on newer ones).
            "retry_covers_killed_turns": done["from_seq"] == first["from_seq"] and done["to_seq"] >= first["to_seq"],
            "chat_requests": len(records), "chat_failed": sum(s != "200" for _, _, s, _ in records),
            "events": [e.get("message") for e in events.get("events", [])][:12]}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    line = report["autoscaling"]["timeline"]
    t = [p["t"] for p in line]
    for name, color in zip(SCALED, ("tab:blue", "tab:orange")):
        ax1.step(t, [p[name]["target"] for p in line], where="post", color=color, ls="--", label=f"{name} target")
        ax1.step(t, [p[name]["running"] for p in line], where="post", color=color, label=f"{name} running")
    ax1.step(t, [p["in_flight"] for p in line], where="post", color="gray", alpha=0.6, label="requests in flight")
    ax1.set_xlabel("s")
    ax1.set_ylabel("replicas / requests")
    ax1b = ax1.twinx()
    ax1b.plot(t, [p["p95_ms"] for p in line], color="tab:red", alpha=0.7, label="p95 (3 s window)")
    ax1b.set_ylabel("p95 ms")
    ax1.set_title("Serve autoscaling under a load ramp")
    ax1.legend(loc="upper left", fontsize=7)
    ax1b.legend(loc="upper right", fontsize=7)
    kill = report["node_kill"]
    seconds = [p["t"] for p in kill["per_second"]]
    ax2.bar(seconds, [p["ok"] for p in kill["per_second"]], color="tab:green", label="answered")
    ax2.bar(seconds, [p["failed"] for p in kill["per_second"]], bottom=[p["ok"] for p in kill["per_second"]],
            color="tab:red", label="failed")
    ax2.axvline(kill["killed_at_s"], color="k", ls="--", label=f"{kill['killed_node']} killed")
    ax2.axvline(kill["killed_at_s"] + kill["recovery_s"], color="k", ls=":", label="all deployments healthy")
    ax2.set_xlabel("s")
    ax2.set_ylabel("requests finished per second")
    ax2.set_title(f"{kill['clients']} clients, a worker node killed: {sum(kill['retried'].values())} attempts retried, "
                  f"{kill['failed']} of {kill['requests']} failed, {kill['acknowledged_and_lost']} lost", fontsize=9)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--ramp", type=int, nargs="+", default=[1, 2, 4, 8, 8, 4, 2, 1])
    parser.add_argument("--step-s", type=float, default=15)
    parser.add_argument("--kill-after-s", type=float, default=20, help="load before the kill (and after recovery)")
    parser.add_argument("--batch", type=int, default=6, help="turns per training run in the training-node kill")
    args = parser.parse_args()
    from echorag.documents import read_documents, sample_path
    from echorag.models.tiny_model import build_tiny_model

    started = time.time()
    cluster = LocalCluster(NODES, env={
        "ECHORAG_ADMIN_TOKEN": TOKEN, "RAY_AUTH_MODE": "disabled",
        "ECHORAG_FINETUNE_WORKER_RESOURCES": '{"echorag_train": 1}',
        "ECHORAG_LC_SYSTEM_CONFIG": '{"health_check_period_ms": 1000, "health_check_timeout_ms": 1000, '
                                    '"health_check_failure_threshold": 3}',
    })
    build_tiny_model(cluster.dir / "data" / "models" / "tiny-ko")
    report: dict = {"benchmark": "multi-node cluster on one machine: autoscaling, node kill, training-node kill",
                    "command": "python bench/scale.py " + " ".join(sys.argv[1:]), "nodes": NODES,
                    "cpu_count": os.cpu_count()}
    clients = None
    try:
        cluster.up(serve_config())
        report["up_s"] = round(time.time() - started, 1)
        print(f"cluster up in {report['up_s']} s", flush=True)
        with httpx.Client(base_url=cluster.url, timeout=300) as client:
            response = client.post("/documents", json={"documents": read_documents([sample_path()])}, headers=ADMIN)
            response.raise_for_status()
            # No training while serving is measured (the default batch would start one).
            client.post("/mlops/settings", json={"auto_trigger": False}, headers=ADMIN).raise_for_status()
            clients = Clients(cluster.url, max(args.clients, max(args.ramp)))
            report["autoscaling"] = autoscaling(cluster, clients, args.ramp, args.step_s)
            print(json.dumps({k: v for k, v in report["autoscaling"].items() if k != "timeline"}), flush=True)
            report["node_kill"] = node_kill(cluster, client, clients, args.clients, args.kill_after_s)
            print(json.dumps({k: v for k, v in report["node_kill"].items() if k != "per_second"}), flush=True)
            cluster.start_node(report["node_kill"]["killed_node"])
            wait_until(lambda: len(cluster.node_ids()) == 3, 120, "the node to rejoin")
            wait_until(lambda: healthy(cluster), 300, "every deployment healthy")
            report["training_kill"] = training_kill(cluster, client, clients, args.batch)
            print(json.dumps(report["training_kill"], ensure_ascii=False), flush=True)
    finally:
        if clients:
            clients.close()
        cluster.down()
        cluster.cleanup()
    report["total_s"] = round(time.time() - started, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    plot(report, RESULTS / "scale.png")
    print(f"wrote {RESULTS / 'scale.json'} and scale.png ({report['total_s']} s)")


if __name__ == "__main__":
    main()
