"""Answer quality per backend, and what the extractive answerer costs to serve.

1. Quality (``echorag.evaluation.answers``, the ``echorag eval-answers`` path: the service's
   retrieval, prompt, evidence gate and backend, in-process): the extractive answerer,
   the tiny model (``generator_model: tiny``) and KANANA where it loads, on both halves
   of the bundled dev set (thresholds were chosen on ``dev``: ``test`` is the report)
   and on the shared Korean sets (belebele's answers are option texts, paraphrases:
   read its token F1, not containment).
2. Serving: ``/chat`` over HTTP, the extractive answerer and the tiny model side by side
   as two applications of one local Ray cluster, each with the sample knowledge base, at
   concurrency 1 and 8: throughput, p50, p95 and their ratio.

    python bench/answers.py [--shared ../shared/data] [--shared-limit 300]

Writes bench/results/answers.json and answers.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from bench.serving import load, settle  # noqa: E402

RESULTS = REPO / "bench" / "results"
TOKEN = "bench-admin-token"


def quality(backends: dict[str, object], settings, shared: Path | None, shared_limit: int) -> dict:
    from echorag.documents import read_jsonl, sample_path
    from echorag.evaluation.answers import AnswerBench, select_split

    sets = {"sample_kb": (read_jsonl(sample_path("sample_kb.jsonl")), read_jsonl(sample_path("dev_queries.jsonl")))}
    if shared is not None and (shared / "belebele_ko" / "corpus.jsonl").is_file():
        queries = read_jsonl(shared / "belebele_ko" / "queries.jsonl")[:shared_limit]
        sets["belebele_ko"] = (read_jsonl(shared / "belebele_ko" / "corpus.jsonl"), queries)
    report: dict = {}
    for name, (corpus, queries) in sets.items():
        bench = AnswerBench(corpus, settings)
        splits = ("dev", "test") if name == "sample_kb" else ("all",)
        cases = {split: bench.prepare(select_split(queries, split)) for split in splits}
        for backend, generator in backends.items():
            for split, split_cases in cases.items():
                out = bench.run(split_cases, generator)
                out.pop("rows")
                report.setdefault(name, {}).setdefault(backend, {})[split] = out
                print(f"{name} {backend} {split}: {json.dumps(out['answerable'], ensure_ascii=False)} "
                      f"unanswerable {out['unanswerable']}", flush=True)
        bench.close()
    return report


async def http_chat(url: str, questions: list[str], concurrency: int, total: int) -> dict:
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def call(i: int) -> None:
            response = await client.post("/chat", json={"message": questions[i % len(questions)]})
            response.raise_for_status()

        return await load(call, concurrency, total)


def serving(tiny_model: Path, work: Path, requests: int, max_new_tokens: int) -> dict:
    import ray
    from ray import serve

    from deployments.app import build_app
    from echorag.documents import read_documents, read_jsonl, sample_path

    questions = [q["query"] for q in read_jsonl(sample_path("dev_queries.jsonl"))]
    ray.init(num_cpus=8, include_dashboard=False, namespace="echorag-bench")
    serve.start(http_options={"host": "127.0.0.1", "port": 8124})
    apps = {"extractive": "auto", "tiny": "tiny"}  # auto without KANANA answers extractively
    for name, model in apps.items():
        data = work / name
        shutil.copytree(tiny_model, data / "models" / "tiny-ko")
        serve.run(build_app({"data_dir": str(data), "generator_model": model, "max_new_tokens": max_new_tokens,
                             "admin_token": TOKEN, "finetune_auto_trigger": False, "rate_limit_per_minute": 0}),
                  name=name, route_prefix=f"/{name}")
        httpx.post(f"http://127.0.0.1:8124/{name}/documents", json={"documents": read_documents([sample_path()])},
                   headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600).raise_for_status()
    report: dict = {"max_new_tokens": max_new_tokens, "apps": {}}
    for name in apps:
        url = f"http://127.0.0.1:8124/{name}"
        health = httpx.get(f"{url}/health", timeout=60).json()
        asyncio.run(http_chat(url, questions, 4, 8))  # warm-up
        runs = {}
        for concurrency in (1, 8):
            settle(url)
            runs[concurrency] = asyncio.run(http_chat(url, questions, concurrency, max(requests, 2 * concurrency)))
            print(f"/chat {name} c={concurrency}: {runs[concurrency]}", flush=True)
        report["apps"][name] = {"model_kind": health["model_kind"], "chat": runs}
    serve.shutdown()
    ray.shutdown()
    x, t = report["apps"]["extractive"]["chat"], report["apps"]["tiny"]["chat"]
    report["throughput_ratio_extractive_vs_tiny"] = {c: round(x[c]["throughput_rps"] / t[c]["throughput_rps"], 2) for c in x}
    report["p95_ratio_extractive_vs_tiny"] = {c: round(x[c]["p95_ms"] / t[c]["p95_ms"], 2) for c in x}
    return report


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    test = report["quality"]["sample_kb"]
    backends = list(test)
    metrics = ["contains", "token_f1", "citation_precision"]
    width = 0.8 / (len(metrics) + 1)
    for i, metric in enumerate(metrics):
        values = [test[b]["test"]["answerable"][metric] or 0 for b in backends]
        left.bar([j + i * width for j in range(len(backends))], values, width, label=metric)
    declined = [test[b]["test"]["unanswerable"]["abstained"] or 0 for b in backends]
    left.bar([j + len(metrics) * width for j in range(len(backends))], declined, width, label="unanswerable abstained")
    left.set_xticks([j + 1.5 * width for j in range(len(backends))], backends)
    left.set_ylim(0, 1.05)
    left.set_title("Answer quality, sample KB test half")
    left.legend(fontsize=8)
    apps = report["serving"]["apps"]
    for name, app in apps.items():
        levels = sorted(app["chat"], key=int)
        right.plot([int(c) for c in levels], [app["chat"][c]["throughput_rps"] for c in levels], marker="o", label=name)
    right.set_xlabel("concurrency")
    right.set_ylabel("/chat requests per second")
    right.set_title("/chat throughput over HTTP")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, help="the shared Korean sets (../shared/data)")
    parser.add_argument("--shared-limit", type=int, default=300, help="queries per shared set")
    parser.add_argument("--requests", type=int, default=240, help="/chat requests per concurrency level")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--skip", nargs="*", default=[], choices=["quality", "serving"],
                        help="parts not to measure again (their last results are kept)")
    args = parser.parse_args()

    from echorag.answering.extractive import ExtractiveGenerator
    from echorag.config import load_settings
    from echorag.models.generation import LocalGenerator
    from echorag.models.resolution import resolve_answerer, resolve_generator
    from echorag.models.tiny_model import build_tiny_model

    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="echorag-answers-"))
    tiny_model = build_tiny_model(work / "models" / "tiny-ko")
    settings = load_settings(data_dir=str(work), max_new_tokens=args.max_new_tokens, temperature=0.0)
    tiny = LocalGenerator(resolve_generator("tiny", settings.models_dir))
    backends = {"extractive": ExtractiveGenerator.from_settings(settings), "tiny": tiny}
    kanana = resolve_answerer(settings)
    if kanana.kind == "kanana":
        backends["kanana"] = LocalGenerator(kanana)
    out = RESULTS / "answers.json"
    report = json.loads(out.read_text()) if out.is_file() else {}
    report["command"] = " ".join(["python bench/answers.py", *sys.argv[1:]])  # "--skip": the rest kept from before
    report["kanana"] = "loaded" if "kanana" in backends else "not available here (no local copy, hub offline)"
    if "quality" not in args.skip:
        report["quality"] = quality(backends, settings, args.shared, args.shared_limit)
        RESULTS.mkdir(exist_ok=True)
        out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    if "serving" not in args.skip:
        report["serving"] = serving(tiny_model, work / "serve", args.requests, args.max_new_tokens)
    report["seconds"] = round(time.time() - started, 1)
    out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    if "serving" in report and "quality" in report:
        plot(report, RESULTS / "answers.png")
        print("throughput extractive / tiny:", report["serving"]["throughput_ratio_extractive_vs_tiny"])
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
