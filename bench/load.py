"""Load benchmark: many concurrent users on /chat, then the same load while one
generator replica is killed in the middle.

    python -m bench.load                          # 50 users, 60 s per scenario
    python -m bench.load --duration 10 --users 10 # a short smoke run

Writes bench/results/load.{json,png}. Starts its own local Ray cluster and the
application with the tiny offline model (``deployments.app.build_app``), the generator
with two replicas so that one can die while the other serves.

Each simulated user sends a Korean question from the bundled dev set to ``POST /chat``
(its own ``user_id`` and session), waits for the answer, thinks ``--think-s`` and asks
again, until the scenario's time is up. Reported per scenario: requests, errors by
status code (or exception name), p50/p95/p99 latency of the answered requests and
throughput (answered requests per second).

The "kill" scenario kills one generator replica actor (``ray.kill``) at half time.
Serve replaces it; the report says when a new replica was running again
(``replaced_after_s``) and when the traffic was normal again (``recovered_after_s``):
the end of the last 2-second window after the kill with an error or a p50 above
1.5 times the p50 before the kill. Learning-loop training is off during the benchmark
so only serving is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import httpx  # noqa: E402

from bench.serving import percentile, questions  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TOKEN = "bench-admin-token"
APP = "echorag"
GENERATOR_PREFIX = f"SERVE_REPLICA::{APP}#Generator#"  # actor class ServeReplica:echorag:Generator
WINDOW_S = 2.0  # recovery is judged on windows of this length
SLOW = 1.5  # a window whose p50 is this many times the pre-kill p50 is not normal yet


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def latency_stats(rows: list[dict], wall_s: float) -> dict:
    ok = [r["latency"] for r in rows if r["status"] == 200]
    errors = Counter(str(r["status"]) for r in rows if r["status"] != 200)
    ms = lambda q: round(percentile(ok, q) * 1000, 1) if ok else None  # noqa: E731
    return {
        "requests": len(rows),
        "ok": len(ok),
        "errors": sum(errors.values()),
        "errors_by_status": dict(sorted(errors.items())),
        "p50_ms": ms(50),
        "p95_ms": ms(95),
        "p99_ms": ms(99),
        "throughput_rps": round(len(ok) / wall_s, 2) if wall_s > 0 else None,
    }


async def traffic(url: str, users: int, duration_s: float, think_s: float, t0: float, rows: list[dict]) -> None:
    """``users`` concurrent users asking questions until ``duration_s`` after ``t0``."""
    qs = questions()
    limits = httpx.Limits(max_connections=users + 4, max_keepalive_connections=users + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def user(u: int) -> None:
            i, session = 0, None  # each user keeps the session the server issued it
            while time.perf_counter() - t0 < duration_s:
                body = {"message": qs[(u * 7 + i) % len(qs)], "session_id": session}
                i += 1
                start = time.perf_counter()
                try:
                    response = await client.post("/chat", json=body)
                    status = response.status_code
                    if status == 200:
                        session = response.json()["session_id"]
                except httpx.HTTPError as exc:  # no HTTP answer at all
                    status = type(exc).__name__
                done = time.perf_counter()
                rows.append({"start": start - t0, "t": done - t0, "latency": done - start, "status": status})
                if think_s:
                    await asyncio.sleep(think_s)

        await asyncio.gather(*(user(u) for u in range(users)))


def generator_replicas() -> set[str]:
    """Names of the live generator replica actors (named actors: no dashboard needed)."""
    import ray

    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(GENERATOR_PREFIX)}


def running_generators() -> int:
    from ray import serve

    states = serve.status().applications[APP].deployments["Generator"].replica_states
    return states.get("RUNNING", 0)


def killer(kill_at_s: float, replicas: int, t0: float, timeout_s: float, out: dict) -> None:
    """At ``kill_at_s`` kill one generator replica, then wait for Serve to replace it."""
    import ray

    time.sleep(max(0.0, kill_at_s - (time.perf_counter() - t0)))
    before = generator_replicas()
    victim = sorted(before)[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    out["kill_t"] = time.perf_counter() - t0
    out["killed"] = victim
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        alive = generator_replicas()
        if victim not in alive and alive - before and running_generators() >= replicas:
            out["replaced_t"] = time.perf_counter() - t0
            out["replacement"] = sorted(alive - before)[0]
            return
        time.sleep(0.1)


def recovery(rows: list[dict], kill_t: float, end_t: float) -> dict:
    """When the traffic after the kill looked like the traffic before it again."""
    before = [r["latency"] for r in rows if r["t"] < kill_t and r["status"] == 200]
    baseline = percentile(before, 50) if before else None
    windows, last_bad = [], None
    start = kill_t
    while start < end_t:
        part = [r for r in rows if start <= r["t"] < start + WINDOW_S]
        ok = [r["latency"] for r in part if r["status"] == 200]
        errors = len(part) - len(ok)
        p50 = percentile(ok, 50) if ok else None
        bad = errors > 0 or p50 is None or (baseline is not None and p50 > SLOW * baseline)
        windows.append({"t": round(start, 2), "requests": len(part), "errors": errors,
                        "p50_ms": round(p50 * 1000, 1) if p50 else None, "normal": not bad})
        if bad:
            last_bad = start + WINDOW_S
        start += WINDOW_S
    return {
        "baseline_p50_ms": round(baseline * 1000, 1) if baseline else None,
        "recovered_after_s": round(max(0.0, (last_bad or kill_t) - kill_t), 2),
        "recovered_before_end": last_bad is None or last_bad < end_t - WINDOW_S,
        "windows": windows,
    }


def scenario(url: str, args, kill: bool) -> dict:
    rows: list[dict] = []
    events: dict = {}
    t0 = time.perf_counter()
    thread = None
    if kill:
        thread = threading.Thread(
            target=killer, args=(args.duration * args.kill_at, args.replicas, t0, args.duration * 4, events), daemon=True
        )
        thread.start()
    asyncio.run(traffic(url, args.users, args.duration, args.think_s, t0, rows))
    wall = time.perf_counter() - t0  # includes the requests in flight at the deadline
    if thread is not None:
        thread.join()
    report = {"scenario": "replica killed" if kill else "normal", "users": args.users,
              "duration_s": args.duration, "wall_s": round(wall, 2)} | latency_stats(rows, wall)
    if kill:
        kill_t = events.get("kill_t")
        report["killed"] = events.get("killed")
        report["kill_t"] = round(kill_t, 2) if kill_t is not None else None
        replaced = events.get("replaced_t")
        report["replaced_after_s"] = round(replaced - kill_t, 2) if replaced is not None else None
        report["replaced_t"] = round(replaced, 2) if replaced is not None else None
        if kill_t is not None:
            report["before_kill"] = latency_stats([r for r in rows if r["t"] < kill_t], kill_t)
            report["after_kill"] = latency_stats([r for r in rows if r["t"] >= kill_t], wall - kill_t)
            report |= recovery(rows, kill_t, wall)
    report["timeline"] = [
        {"t": round(r["t"], 3), "latency_ms": round(r["latency"] * 1000, 1), "status": r["status"]}
        for r in sorted(rows, key=lambda r: r["t"])
    ]
    return report


def plot(reports: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(reports), figsize=(6 * len(reports), 4.2), sharey=True, squeeze=False)
    for ax, report in zip(axes[0], reports):
        points = report["timeline"]
        ok = [p for p in points if p["status"] == 200]
        bad = [p for p in points if p["status"] != 200]
        ax.scatter([p["t"] for p in ok], [p["latency_ms"] for p in ok], s=4, alpha=0.5, label="answered")
        if bad:
            ax.scatter([p["t"] for p in bad], [p["latency_ms"] for p in bad], s=14, c="red", marker="x",
                       label=f"errors ({report['errors']})")
        # Answered requests per second, on a second axis: the service's capacity over time.
        seconds = int(report["wall_s"]) + 1
        per_s = Counter(int(p["t"]) for p in ok)
        rate = ax.twinx()
        rate.plot([t + 0.5 for t in range(seconds)], [per_s.get(t, 0) for t in range(seconds)], color="gray", lw=1)
        rate.set_ylabel("answered / s", color="gray", fontsize=8)
        rate.set_ylim(bottom=0)
        if report.get("kill_t") is not None:
            ax.axvline(report["kill_t"], color="red", ls="--", label="replica killed")
        if report.get("replaced_t") is not None:
            ax.axvline(report["replaced_t"], color="green", ls="--", label="replacement running")
        ax.set_xlabel("time (s)")
        ax.set_title(f"{report['scenario']}: {report['users']} users, {report['throughput_rps']} req/s, "
                     f"p95 {report['p95_ms']} ms", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel("/chat latency (ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=50, help="concurrent simulated users")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per scenario")
    parser.add_argument("--think-s", type=float, default=0.0, help="pause between a user's questions")
    parser.add_argument("--replicas", type=int, default=2, help="generator replicas")
    parser.add_argument("--kill-at", type=float, default=0.5, help="when to kill, as a fraction of the duration")
    parser.add_argument("--scenarios", nargs="+", choices=["normal", "kill"], default=["normal", "kill"])
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    import ray
    from ray import serve

    import deployments.app as app_module
    from echorag.documents import read_documents, sample_path
    from echorag.models.tiny_model import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="echorag-load-"))
    build_tiny_model(work / "models" / "tiny-ko")
    app_args = {
        "data_dir": str(work), "generator_model": "tiny", "max_new_tokens": args.max_new_tokens,
        "rate_limit_per_minute": 0,  # one address sends everything: measure serving, not the limiter
        "admin_token": TOKEN, "finetune_auto_trigger": False,
    }
    # Two generator replicas: build_app's own Generator.options(...) keeps num_replicas.
    app_module.Generator = app_module.Generator.options(num_replicas=args.replicas)

    ray.init(address="local", num_cpus=8, include_dashboard=False, namespace="echorag")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app_module.build_app(app_args), name=APP, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    httpx.post(f"{url}/documents", json={"documents": read_documents([sample_path()])},
               headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600).raise_for_status()
    assert running_generators() == args.replicas, serve.status()
    # Warm-up, not measured: every replica loads its model and the base adapter.
    asyncio.run(traffic(url, min(args.users, 8), 5.0, 0.0, time.perf_counter(), []))

    load_before = os.getloadavg()  # other work on the machine shows in the latencies
    reports = []
    for name in args.scenarios:
        report = scenario(url, args, kill=name == "kill")
        reports.append(report)
        shown = {k: v for k, v in report.items() if k not in ("timeline", "windows")}
        print(json.dumps(shown, ensure_ascii=False), flush=True)
    serve.shutdown()
    ray.shutdown()

    result = {
        "command": " ".join(["python -m bench.load", *sys.argv[1:]]),
        "machine": f"{os.cpu_count()} CPUs, tiny model, e5 embedder, loopback HTTP",
        "load_average_1m": {"before": round(load_before[0], 1), "after": round(os.getloadavg()[0], 1)},
        "generator_replicas": args.replicas,
        "think_s": args.think_s,
        "max_new_tokens": args.max_new_tokens,
        "scenarios": reports,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "load.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    plot(reports, RESULTS / "load.png")
    for r in reports:
        line = (f"{r['scenario']:14}: {r['requests']} requests, errors {r['errors']} {r['errors_by_status']}, "
                f"p50/p95/p99 {r['p50_ms']}/{r['p95_ms']}/{r['p99_ms']} ms, {r['throughput_rps']} req/s")
        if "replaced_after_s" in r:
            line += f"; replica replaced after {r['replaced_after_s']} s, traffic normal after {r.get('recovered_after_s')} s"
        print(line)
    print(f"wrote {RESULTS / 'load.json'} and load.png")


if __name__ == "__main__":
    main()
