"""The engine and training at KANANA's size on one GPU, random weights (no download).

A Llama of KANANA 1.5 2.1B's depth and width (32 layers, hidden 1792; 16 heads of 112,
8 KV heads, FFN 8064: the head split and FFN width approximate it) with the project's
Korean tokenizer, bf16, and three LoRA versions of it (peft, rank 16 on q/k/v/o):

1. vLLM decode tokens/s at concurrency 1, 32 and 64, the requests spread over the three
   versions in one batch, against the memory-bandwidth bound: every decode step reads
   all weights once, so steps/s <= bandwidth / weight bytes (bandwidth measured here by
   a device-to-device copy), tokens/s <= that × concurrency.
2. One LoRA fine-tuning run of the same model through the project's ``train_lora`` (one
   optimizer step of 4 chats × 1,024 tokens): seconds and peak GPU memory.

    python bench/gpu_check.py [--layers 32 --hidden 1792 ...]   (bench/gpu_check.sh on a bare machine)

Writes bench/results/gpu_check.json (or $OUT/gpu_check.json). Sized for well under 8
minutes on one H100/H200; on a CPU, pass a small shape to try the script itself.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

CONCURRENCY = (1, 32, 64)


def build(out: Path, args) -> tuple[Path, list[Path], int]:
    """The random model and three peft adapters of it; returns their paths and the parameter count."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from echorag.models.tiny_model import build_tiny_model

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(out / "tiny-ko"))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=args.ffn,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.hidden // args.heads, max_position_embeddings=4096, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    base = out / "model"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    params = sum(p.numel() for p in model.parameters())
    adapters = []
    for seed in range(3):
        torch.manual_seed(seed + 1)
        peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, init_lora_weights=False,
                                                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
        adapters.append(out / f"v{seed + 1}")
        peft.save_pretrained(adapters[-1])
        model = peft.unload()
    return base, adapters, params


def bandwidth_gb_s() -> float | None:
    """Device-to-device copy, bytes read + written per second (GB/s)."""
    if not torch.cuda.is_available():
        return None
    x = torch.empty(2 * 1024**3 // 2, dtype=torch.bfloat16, device="cuda")  # 2 GiB
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / 10
    del x, y
    torch.cuda.empty_cache()
    return 2 * 2 * 1024**3 / seconds / 1e9


def engine_runs(base: Path, adapters: list[Path], args) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from echorag.models.engine import cpu_dtype

    gpu = torch.cuda.is_available()
    llm = LLM(model=str(base), dtype="bfloat16" if gpu else cpu_dtype(), enable_lora=True, max_loras=3,
              max_lora_rank=16, max_model_len=2048, gpu_memory_utilization=0.5, enforce_eager=not gpu)
    loras = [LoRARequest(f"v{i + 1}", i + 1, str(path)) for i, path in enumerate(adapters)]
    params = SamplingParams(max_tokens=args.output_tokens, ignore_eos=True, temperature=0.0)
    prompt = "훈민정음은 누가 만들었나요? " * 16  # about 200 tokens
    llm.generate([prompt] * 3, params, lora_request=loras)  # warm-up: loads the versions
    runs = {}
    for concurrency in CONCURRENCY:
        prompts = [f"{i} {prompt}" for i in range(concurrency)]
        started = time.perf_counter()
        outputs = llm.generate(prompts, params, lora_request=[loras[i % 3] for i in range(concurrency)])
        seconds = time.perf_counter() - started
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        runs[concurrency] = {"seconds": round(seconds, 2), "output_tokens": tokens,
                             "tokens_per_s": round(tokens / seconds, 1)}
        print(f"vLLM c={concurrency}: {runs[concurrency]}", flush=True)
    del llm
    return runs


def training_step(base: Path, args) -> dict:
    from echorag.learning.train_config import TrainConfig
    from echorag.learning.training import train_lora

    text = "세종대왕은 1443년에 훈민정음을 만들었고 1446년에 반포하였다. " * 40
    chats = [[{"role": "user", "content": f"{i}번 질문: 훈민정음에 대해 알려 주세요."},
              {"role": "assistant", "content": text}] for i in range(4)]
    config = TrainConfig(epochs=1, batch_size=4, max_length=1024, dtype="auto")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = train_lora(base, chats, config)
    seconds = time.perf_counter() - started
    peak = round(torch.cuda.max_memory_allocated() / 1024**3, 2) if torch.cuda.is_available() else None
    return {"seconds": round(seconds, 2), "steps": len(result.losses), "loss": round(result.losses[-1], 4),
            "peak_gpu_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=1792)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--ffn", type=int, default=8064)
    parser.add_argument("--output-tokens", type=int, default=256)
    parser.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "bench" / "results"))
    args = parser.parse_args()
    report: dict = {"command": " ".join(["python bench/gpu_check.py", *sys.argv[1:]]),
                    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    with tempfile.TemporaryDirectory(prefix="echorag-gpu-check-") as tmp:
        base, adapters, params = build(Path(tmp), args)
        weight_gb = params * 2 / 1e9
        report["model"] = {"layers": args.layers, "hidden": args.hidden, "params": params, "weight_gb": weight_gb}
        bandwidth = bandwidth_gb_s()
        report["bandwidth_copy_gb_s"] = bandwidth and round(bandwidth, 1)
        if importlib.util.find_spec("vllm") is None:
            report["engine"] = "vllm is not installed here"
        else:
            report["engine"] = engine_runs(base, adapters, args)
            for concurrency, run in report["engine"].items():
                if bandwidth:  # a step reads the weights once; a copy's read half is what a step can use
                    run["bound_tokens_per_s"] = round(bandwidth / 2 / weight_gb * concurrency, 1)
                    run["share_of_bound"] = round(run["tokens_per_s"] / run["bound_tokens_per_s"], 3)
        report["training"] = training_step(base, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":  # vLLM's engine processes re-import this module
    main()
