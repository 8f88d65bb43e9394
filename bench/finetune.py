"""Fine-tuning benchmark: what Ray Train costs on top of the plain training loop.

    python bench/finetune.py [--sizes 100 1000 4000 10000] [--epochs 2]   # writes bench/results/finetune.{json,png}

Overhead ratio = wall time of ``deployments.training.fit_lora`` (a TorchTrainer with
one CPU worker: controller, worker group, process group, model load in a fresh worker
process, checkpoint upload) / wall time of the same ``train_lora`` loop in this process
(load, train, save) for the same examples, config and number of steps. Target: <= 1.5x.

Ray's cost is mostly a fixed start-up, so the ratio depends on how long the training
itself takes: it is measured for several run sizes (collected turns per run). The Ray
cluster is started before timing (the service always has one), and one untimed run
warms it up; that first run is reported on its own. Both sides train with the same
number of torch threads (a Ray worker with ``CPU: 1`` gets one).

Data: the bundled dev questions with their reference answers, as collected turns
(user question, assistant answer), repeated to the requested size. Model: the tiny
offline model by default (``--model`` takes any local model directory).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local bench cluster needs no token
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.serve: the progress actor

import torch  # noqa: E402

from echorag.documents import read_jsonl, sample_path  # noqa: E402
from echorag.learning.train_config import TrainConfig  # noqa: E402
from echorag.learning.training import save_adapter, train_lora  # noqa: E402
from echorag.models.chat_tokens import Chat  # noqa: E402
from echorag.models.resolution import ensure_tiny_model  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TARGET_RATIO = 1.5


def collected_turns(n: int) -> list[Chat]:
    """``n`` turns shaped like ``StoredTurn.messages()``, from the dev questions."""
    pairs = [(q["query"], q["answer"]) for q in read_jsonl(sample_path("dev_queries.jsonl")) if q.get("answer")]
    return [
        [{"role": "user", "content": pairs[i % len(pairs)][0]}, {"role": "assistant", "content": pairs[i % len(pairs)][1]}]
        for i in range(n)
    ]


def time_in_process(model: Path, chats: list[Chat], config: TrainConfig, threads: int) -> dict:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        started = time.perf_counter()
        result = train_lora(model, chats, config)
        with tempfile.TemporaryDirectory() as out:
            save_adapter(result.model, out)
        wall = time.perf_counter() - started
    finally:
        torch.set_num_threads(previous)
    return {"wall_s": wall, "steps": result.steps, "train_s": result.timings["train_s"],
            "load_s": result.timings["load_s"], "final_loss": result.losses[-1]}


def time_ray(model: Path, chats: list[Chat], config: TrainConfig, run_dir: Path) -> dict:
    import ray

    from deployments.training import fit_lora
    from tests.serve.progress_actor import TrainingProgress

    progress = TrainingProgress.remote()
    try:
        started = time.perf_counter()
        fit = fit_lora(model, chats, config, run_dir, num_workers=1, progress_actor=progress)
        wall = time.perf_counter() - started
        state = ray.get(progress.get.remote())
    finally:
        ray.kill(progress)
    metrics = fit.metrics
    return {"wall_s": wall, "steps": state["total_steps"], "train_s": metrics.get("train_s"),
            "load_s": metrics.get("load_s"), "final_loss": state["loss"],
            "worker_threads": metrics.get("torch_threads"), "adapter": str(fit.adapter_dir)}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = report["runs"]
    steps = [r["steps"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(steps, [r["in_process_s"] for r in rows], "o-", label="train_lora in process")
    left.plot(steps, [r["ray_train_s"] for r in rows], "s-", label="fit_lora (TorchTrainer, 1 CPU worker)")
    left.set_xlabel("optimizer steps")
    left.set_ylabel("wall time (s)")
    left.set_title("LoRA fine-tuning wall time")
    left.legend(fontsize=8)
    right.plot(steps, [r["ratio"] for r in rows], "o-", color="tab:purple")
    right.axhline(TARGET_RATIO, color="tab:red", ls=":", label=f"target {TARGET_RATIO}x")
    right.set_xlabel("optimizer steps")
    right.set_yscale("log")  # a tiny run is all start-up; a long one is all training
    right.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}x"))
    right.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    right.set_yticks([t for t in (1, 1.5, 2, 3, 5, 10, 20, 50, 100) if t <= 1.2 * max(r["ratio"] for r in rows)])
    right.set_ylabel("Ray Train / in process (log)")
    right.set_title("Ray Train overhead ratio")
    right.legend(fontsize=8)
    for r in rows:
        right.annotate(f"{r['turns']} turns", (r["steps"], r["ratio"]), fontsize=7,
                       textcoords="offset points", xytext=(4, 4))
    fig.suptitle(f"{report['model']} on {report['machine']['cpus']} CPUs, {report['config']['epochs']} epochs",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 4000, 10000],
                        help="collected turns per run (100 is the default trigger size)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per size and side (median)")
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the tiny model)")
    args = parser.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="echorag-bench-finetune-"))
    model = args.model or ensure_tiny_model(work / "models")
    config = TrainConfig(epochs=args.epochs)
    threads = 1  # what a Ray worker with {"CPU": 1} gets (checked below)

    ray.init(num_cpus=8, include_dashboard=False, namespace="echorag-bench")
    started = time.perf_counter()
    warm = time_ray(model, collected_turns(8), TrainConfig(epochs=1), work / "runs")
    first_run_s = time.perf_counter() - started
    threads = warm["worker_threads"] or threads
    print(f"first (warm-up) Ray Train run on a fresh cluster: {first_run_s:.1f} s; worker torch threads: {threads}")

    rows = []
    for turns in args.sizes:
        chats = collected_turns(turns)
        local, remote = [], []
        for _ in range(args.repeats):  # alternate, so background load hits both sides alike
            local.append(time_in_process(model, chats, config, threads))
            remote.append(time_ray(model, chats, config, work / "runs"))
        assert local[0]["steps"] == remote[0]["steps"], (local[0]["steps"], remote[0]["steps"])
        in_process = statistics.median(r["wall_s"] for r in local)
        ray_train = statistics.median(r["wall_s"] for r in remote)
        row = {
            "turns": turns,
            "steps": local[0]["steps"],
            "in_process_s": round(in_process, 2),
            "ray_train_s": round(ray_train, 2),
            "ratio": round(ray_train / in_process, 3),
            "overhead_s": round(ray_train - in_process, 2),
            "in_process_train_s": round(statistics.median(r["train_s"] for r in local), 2),
            "ray_worker_train_s": round(statistics.median(r["train_s"] for r in remote), 2),
            "final_loss": {"in_process": round(local[0]["final_loss"], 4), "ray": round(remote[0]["final_loss"], 4)},
            "meets_target": ray_train / in_process <= TARGET_RATIO,
            "same_final_loss": local[0]["final_loss"] == remote[0]["final_loss"],  # same seed, same steps
        }
        rows.append(row)
        print(f"{turns:5d} turns, {row['steps']:4d} steps: in process {in_process:6.1f} s, "
              f"Ray Train {ray_train:6.1f} s -> ratio {row['ratio']:.2f}x (overhead {row['overhead_s']:.1f} s)")
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)  # the tiny model and the Train run folders

    report = {
        "benchmark": "Ray Train overhead: fit_lora (TorchTrainer, 1 CPU worker) / train_lora in process",
        "target_ratio": TARGET_RATIO,
        "model": "echorag tiny demo model" if args.model is None else str(args.model),
        "config": config.to_dict() | {"target_modules": list(config.target_modules)},
        "torch_threads": threads,
        "repeats": args.repeats,
        "first_ray_run_s": round(first_run_s, 2),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "ray": ray.__version__},
        "runs": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "finetune.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    plot(report, RESULTS / "finetune.png")
    print(f"ratio (largest run, {rows[-1]['turns']} turns): {rows[-1]['ratio']:.2f}x "
          f"(target <= {TARGET_RATIO}x) -> {RESULTS / 'finetune.json'}")


if __name__ == "__main__":
    main()
