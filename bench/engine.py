"""The engine that runs local models, through Serve: vLLM against transformers ``generate``
with ``@serve.batch``, the same model, one run, side by side.

The model is a random-weight Llama with KANANA's proportions scaled down (``--layers``,
``--hidden``; head_dim 64) and the tiny model's Korean tokenizer and chat template, so
every answer runs to ``--max-new-tokens``; three LoRA versions of it (peft, non-zero
weights) are registered as v1–v3. One EchoRAG application per engine (``engine:
transformers``, then ``engine: vllm``; one on the cores at a time) with the sample
knowledge base answers ``/chat/stream`` at concurrency 1, 8 and 32, every request on base,
then requests pinned round robin to base, v1, v2 and v3 (``adapter_version``). Measured as
a user sees it: output tokens/s (the ``done`` event's ``usage``) and time to the first
``token`` event, p50/p95.

    python bench/engine.py [--layers 8] [--hidden 768] [--max-new-tokens 64] [--requests 64]

Writes bench/results/engine.json and engine.png; prints vLLM / transformers ratios.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

RESULTS = REPO / "bench" / "results"
TOKEN = "bench-admin-token"
ENGINES = ("transformers", "vllm")
LEVELS = (1, 8, 32)
MIXES = {"base": [None], "mixed": [None, "v1", "v2", "v3"]}


def random_llama(out: Path, layers: int, hidden: int) -> tuple[Path, int]:
    """A random-weight Llama with the tiny model's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from echorag.models.tiny_model import build_tiny_model

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(out.parent / "tiny-ko"))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 64 * 64,
        num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 256),
        max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # a zero logit never wins over ~30k random ones: no special token,
        model.lm_head.weight[tokenizer.all_special_ids] = 0  # so every answer is full length
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, sum(p.numel() for p in model.parameters())


def register_versions(model: Path, adapters_root: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from echorag.learning.registry import AdapterRegistry

    registry = AdapterRegistry(adapters_root)
    for seed, version in enumerate(("v1", "v2", "v3")):
        torch.manual_seed(seed)
        peft = get_peft_model(AutoModelForCausalLM.from_pretrained(model), LoraConfig(
            r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False))
        peft.save_pretrained(adapters_root.parent / f"made-{version}")
        registry.add(adapters_root.parent / f"made-{version}", version=version)


async def stream_load(url: str, questions: list[str], versions: list, concurrency: int, total: int) -> dict:
    """``total`` /chat/stream requests, ``concurrency`` in flight: output tokens/s and TTFT."""
    ttft, tokens = [], 0
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=concurrency)) as c:

        async def one(i: int) -> None:
            nonlocal tokens
            body = {"message": questions[i % len(questions)], "adapter_version": versions[i % len(versions)]}
            async with semaphore:
                t0, first = time.perf_counter(), None
                async with c.stream("POST", "/chat/stream", json=body) as response:
                    response.raise_for_status()
                    event = None
                    async for line in response.aiter_lines():
                        if line.startswith("event: "):
                            event = line[7:]
                            if event == "token" and first is None:
                                first = time.perf_counter() - t0
                        elif line.startswith("data: ") and event == "done":
                            tokens += json.loads(line[6:])["response"]["usage"]["completion_tokens"]
                ttft.append(first if first is not None else time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(total)))
        wall = time.perf_counter() - started
    ms = np.array(ttft) * 1000
    return {"requests": total, "output_tokens": tokens, "seconds": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1), "ttft_p50_ms": round(float(np.percentile(ms, 50)), 1),
            "ttft_p95_ms": round(float(np.percentile(ms, 95)), 1)}


def run_engine(engine: str, model: Path, work: Path, args) -> dict:
    from ray import serve

    from deployments.app import build_app
    from echorag.documents import read_documents, read_jsonl, sample_path

    questions = [q["query"] for q in read_jsonl(sample_path("dev_queries.jsonl")) if q["relevant_ids"]]
    data = work / engine
    register_versions(model, data / "adapters")
    serve.run(build_app({"data_dir": str(data), "generator_model": str(model), "engine": engine,
                         "max_new_tokens": args.max_new_tokens, "admin_token": TOKEN, "finetune_auto_trigger": False,
                         "conversation_collection_enabled": False, "rate_limit_per_minute": 0}),
              name=engine, route_prefix=f"/{engine}")
    url = f"http://127.0.0.1:{args.port}/{engine}"
    httpx.post(f"{url}/documents", json={"documents": read_documents([sample_path()])},
               headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600).raise_for_status()
    assert httpx.get(f"{url}/health", timeout=60).json()["engine"] == engine
    asyncio.run(stream_load(url, questions, MIXES["mixed"], 4, 8))  # loads the versions, warms up
    runs: dict = {}
    for mix, versions in MIXES.items():
        for level in LEVELS:
            result = asyncio.run(stream_load(url, questions, versions, level, max(args.requests, 2 * level)))
            runs.setdefault(mix, {})[level] = result
            print(f"{engine} {mix} c={level}: {result}", flush=True)
    serve.delete(engine)
    return runs


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for engine in ENGINES:
        for mix, style in (("base", "-o"), ("mixed", "--s")):
            runs = report["engines"][engine][mix]
            axes[0].plot(LEVELS, [runs[c]["tokens_per_s"] for c in LEVELS], style, label=f"{engine}, {mix}")
            axes[1].plot(LEVELS, [runs[c]["ttft_p95_ms"] for c in LEVELS], style, label=f"{engine}, {mix}")
    for ax, title in zip(axes, ("output tokens/s", "time to first token p95 (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(LEVELS, [str(c) for c in LEVELS])
        ax.set_xlabel("concurrent /chat/stream requests")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"{report['model']['params'] / 1e6:.0f}M-parameter Llama through Serve: vLLM vs transformers")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level and mix")
    parser.add_argument("--port", type=int, default=8125)
    args = parser.parse_args()
    from echorag.models.engine import engine_status

    if (why := engine_status()) is not None:
        sys.exit(why)
    import ray
    from ray import serve

    started = time.time()
    report: dict = {"command": " ".join(["python bench/engine.py", *sys.argv[1:]]), "engines": {}}
    with tempfile.TemporaryDirectory(prefix="echorag-engine-") as tmp:
        work = Path(tmp)
        model, params = random_llama(work / "model", args.layers, args.hidden)
        report["model"] = {"layers": args.layers, "hidden": args.hidden, "params": params,
                           "max_new_tokens": args.max_new_tokens}
        ray.init(num_cpus=8, include_dashboard=False, namespace="echorag-bench")
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        try:
            for engine in ENGINES:
                report["engines"][engine] = run_engine(engine, model, work, args)
        finally:
            serve.shutdown()
            ray.shutdown()
    t, v = report["engines"]["transformers"], report["engines"]["vllm"]
    report["ratios"] = {mix: {c: {"tokens_per_s": round(v[mix][c]["tokens_per_s"] / t[mix][c]["tokens_per_s"], 2),
                                  "ttft_p95": round(v[mix][c]["ttft_p95_ms"] / t[mix][c]["ttft_p95_ms"], 2)}
                              for c in LEVELS} for mix in MIXES}
    report["mixed_cost"] = {e: {c: round(report["engines"][e]["base"][c]["tokens_per_s"]
                                         / report["engines"][e]["mixed"][c]["tokens_per_s"], 2) for c in LEVELS}
                            for e in ENGINES}
    report["seconds"] = round(time.time() - started, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engine.json").write_text(json.dumps(report, indent=2))
    plot(report, RESULTS / "engine.png")
    print(json.dumps({k: report[k] for k in ("model", "ratios", "mixed_cost")}, indent=1))


if __name__ == "__main__":
    main()
