"""Rollout benchmark: steady /chat traffic while a fine-tuning run trains, passes the
gate and the replicas roll onto the new adapter version.

    python -m bench.rollout        # writes bench/results/rollout.{json,png}

Traffic: concurrency 8 on loopback for the whole test. Once the "before" window has
enough requests, the batch size is set just above the collected count, so one of
the following chats triggers the run by itself (its ``mlops_info.training_queued``
turns true). "during" lasts from that triggering chat until the first answer
generated with the new version; "after" is the rest. Reports failed requests,
p50/p99 per window, and the time from the triggering chat to the new version serving.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import httpx  # noqa: E402

from bench.serving import percentile, questions  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TOKEN = "bench-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def window(rows: list[dict]) -> dict:
    ok = [r["latency"] for r in rows if r["ok"]]
    return {
        "requests": len(rows),
        "failed": sum(not r["ok"] for r in rows),
        "p50_ms": round(percentile(ok, 50) * 1000, 1) if ok else None,
        "p99_ms": round(percentile(ok, 99) * 1000, 1) if ok else None,
    }


async def run(url: str, concurrency: int, before: int, after_s: float, timeout_s: float) -> dict:
    qs = questions()
    rows: list[dict] = []
    state = {"armed": False, "new_data": 0, "trigger_at": None, "new_version": None, "served_at": None, "stop": False}

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=concurrency + 4)) as client:
        start_version = (await client.get("/health")).json()["adapter_version"]

        async def user(u: int) -> None:
            i = 0
            while not state["stop"]:
                i += 1
                t0 = time.perf_counter()
                body = {"message": qs[(u * 31 + i) % len(qs)]}  # a new session each time
                try:
                    r = await client.post("/chat", json=body)
                    ok = r.status_code == 200
                    answer = r.json() if ok else {}
                except httpx.HTTPError:
                    ok, answer = False, {}
                done = time.perf_counter()
                version, info = answer.get("adapter_version"), answer.get("mlops_info") or {}
                rows.append({"t": done, "latency": done - t0, "ok": ok, "version": version})
                state["new_data"] = max(state["new_data"], info.get("new_data_count", 0))
                if state["armed"] and state["trigger_at"] is None and info.get("training_queued"):
                    state["trigger_at"] = done  # this chat started the run
                if ok and version != start_version and state["served_at"] is None and state["trigger_at"]:
                    state["new_version"], state["served_at"] = version, done

        async def conductor() -> None:
            while len(rows) < before:
                await asyncio.sleep(0.1)
            # A batch size a few turns above what is collected: the next chats complete it.
            batch = state["new_data"] + concurrency + 2
            r = await client.post("/mlops/settings", json={"batch_size": batch}, headers=ADMIN)
            r.raise_for_status()
            state["armed"] = True
            deadline = time.perf_counter() + timeout_s
            while state["trigger_at"] is None and time.perf_counter() < deadline:
                await asyncio.sleep(0.1)
            while state["served_at"] is None and time.perf_counter() < deadline:
                await asyncio.sleep(0.2)
            await asyncio.sleep(after_s)
            state["stop"] = True

        await asyncio.gather(conductor(), *(user(u) for u in range(concurrency)))
        progress = (await client.get("/mlops/training-progress")).json()

    trigger, served = state["trigger_at"], state["served_at"] or float("inf")
    phases = {
        "before": [r for r in rows if r["t"] < trigger],
        "during": [r for r in rows if trigger <= r["t"] < served],
        "after": [r for r in rows if r["t"] >= served],
    }
    t_start = min(r["t"] - r["latency"] for r in rows)
    return {
        "concurrency": concurrency,
        "requests": len(rows),
        "failed": sum(not r["ok"] for r in rows),
        "from_version": start_version,
        "to_version": state["new_version"],
        "triggering_chat_to_serving_s": round(served - trigger, 2) if state["served_at"] else None,
        "run": {k: progress.get(k) for k in ("status", "total_steps", "version", "samples")},
        "windows": {name: window(part) for name, part in phases.items()},
        "timeline": [
            {"t": round(r["t"] - t_start, 3), "latency_ms": round(r["latency"] * 1000, 1), "ok": r["ok"], "version": r["version"]}
            for r in sorted(rows, key=lambda r: r["t"])
        ],
        "trigger_t": round(trigger - t_start, 3),
        "served_t": round(served - t_start, 3) if state["served_at"] else None,
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    for version in sorted({str(p["version"]) for p in report["timeline"]}):
        points = [p for p in report["timeline"] if str(p["version"]) == version]
        ax.scatter([p["t"] for p in points], [p["latency_ms"] for p in points], s=8, label=f"served by {version}")
    ax.axvline(report["trigger_t"], color="gray", ls="--", label="triggering chat")
    if report["served_t"]:
        ax.axvline(report["served_t"], color="green", ls="--", label="new version serving")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("/chat latency (ms)")
    ax.set_title(f"rollout at concurrency {report['concurrency']}: {report['requests']} requests, {report['failed']} failed")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--before", type=int, default=60, help="requests before the run is triggered")
    parser.add_argument("--after-s", type=float, default=8.0, help="seconds of traffic after the roll")
    parser.add_argument("--timeout-s", type=float, default=600.0)
    args = parser.parse_args()

    import ray
    from ray import serve

    from deployments.app import build_app
    from echorag.documents import read_documents, sample_path
    from echorag.models.tiny_model import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="echorag-rollout-"))
    build_tiny_model(work / "models" / "tiny-ko")
    app_args = {
        "data_dir": str(work), "generator_model": "tiny", "max_new_tokens": 32, "admin_token": TOKEN,
        "rate_limit_per_minute": 0,  # one address sends everything: measure serving, not the limiter
        "finetune_batch_size": 100_000, "finetune_learning_rate": 2e-3,
        # The tiny model is the answerer and the student: its own answers are the labels,
        # and the gate judges on the pool there is by loss (its agreement is noise), so
        # that one run makes a version to roll onto.
        "finetune_train_on": "all", "finetune_gate_min_examples": 1, "finetune_gate_agreement_tolerance": 1.0,
    }
    ray.init(num_cpus=8, include_dashboard=False, namespace="echorag")
    serve.start(http_options={"host": "127.0.0.1", "port": 8124})
    serve.run(build_app(app_args), name="echorag", route_prefix="/")
    url = "http://127.0.0.1:8124"
    httpx.post(f"{url}/documents", json={"documents": read_documents([sample_path()])}, headers=ADMIN, timeout=600).raise_for_status()

    report = {"command": " ".join(["python", *sys.argv])}
    report |= asyncio.run(run(url, args.concurrency, args.before, args.after_s, args.timeout_s))
    serve.shutdown()
    ray.shutdown()

    w = report["windows"]
    steady = w["before"]["p99_ms"]
    report["p99_during_over_before"] = round(w["during"]["p99_ms"] / steady, 2) if w["during"]["p99_ms"] and steady else None
    for name, stats in w.items():
        print(f"{name:6}: {stats}")
    print(f"requests {report['requests']}, failed {report['failed']} (target 0); "
          f"p99 during / before: {report['p99_during_over_before']} (target <= 2)")
    print(f"triggering chat -> {report['to_version']} serving: {report['triggering_chat_to_serving_s']} s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rollout.json").write_text(json.dumps(report, indent=2))
    plot(report, RESULTS / "rollout.png")
    print(f"wrote {RESULTS / 'rollout.json'} and rollout.png")


if __name__ == "__main__":
    main()
