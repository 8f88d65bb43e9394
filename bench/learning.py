"""Does the loop learn? The real learning loop, fed a stream of Korean questions that the
extractive teacher answers, trains versions of the student; each is then measured on a
fixed set of held-out questions against base.

1. Questions: the bundled dev set over the sample knowledge base, plus belebele (ko)
   over its passages with ``--shared``. Each is retrieved and prompted exactly as the
   service does (``echorag.evaluation.answers.AnswerBench``: chunking, e5, Chroma + BM25, the
   evidence gate, ``prompts.build_messages``); questions the gate declines are answered
   NO_ANSWER without any model in the service, so they teach nothing and are left out.
2. A fixed held-out set (a hash of the question, ``--holdout`` of them) is never shown
   to the loop. The rest stream into ``LearningLoop.record`` as teacher-labelled turns
   with the served prompt, in batches of ``--batch``; the loop's own policy starts a run
   per batch (``local_train_fn``: ``train_lora`` + ``evaluate_versions`` in this process,
   the code a Ray Train worker runs), with its own pool, replay and gate (defaults).
3. Every version the loop trained (promoted or not) and base are scored on the held-out
   set with the gate's own measure (``evaluation.evaluate_versions``): loss per label
   token on the teacher's answers, agreement (Kiwi content-morpheme token F1 of greedy
   answers with the teacher's), and token F1 with the gold answers.

    python bench/learning.py [--shared ../shared/data] [--versions 4] [--batch 60]

Writes bench/results/learning.json and learning.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from echorag.answering.extractive import ExtractiveGenerator  # noqa: E402
from echorag.config import Settings  # noqa: E402
from echorag.documents import read_jsonl, sample_path  # noqa: E402
from echorag.evaluation.answer_metrics import token_f1  # noqa: E402
from echorag.evaluation.answers import AnswerBench, references  # noqa: E402
from echorag.learning import LearningLoop, local_train_fn  # noqa: E402
from echorag.learning.evaluation import evaluate_versions  # noqa: E402
from echorag.learning.train_config import TrainConfig  # noqa: E402
from echorag.models.resolution import ensure_tiny_model  # noqa: E402
from echorag.models.tiny_model import TINY_MARKER  # noqa: E402
from echorag.types import Turn  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def held_out(query: dict, share: float) -> bool:
    digest = hashlib.sha256(query["query"].encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def question_sets(shared: Path | None, shared_limit: int) -> list[tuple[str, list[dict], list[dict]]]:
    sets = [("sample_kb", read_jsonl(sample_path("sample_kb.jsonl")), read_jsonl(sample_path("dev_queries.jsonl")))]
    if shared is not None and (shared / "belebele_ko" / "corpus.jsonl").is_file():
        sets.append(("belebele_ko", read_jsonl(shared / "belebele_ko" / "corpus.jsonl"),
                     read_jsonl(shared / "belebele_ko" / "queries.jsonl")[:shared_limit]))
    return sets


def labelled_cases(settings: Settings, shared: Path | None, shared_limit: int) -> list[dict]:
    """Every question the answer selector lets through, with its served prompt and the
    teacher's answer: ``{"set", "query", "messages", "label"}``."""
    teacher = ExtractiveGenerator.from_settings(settings)
    cases = []
    for name, corpus, queries in question_sets(shared, shared_limit):
        bench = AnswerBench(corpus, settings)
        try:
            for case in bench.prepare(queries):
                if case.analysis.abstain:
                    continue
                label = teacher.generate([case.messages], analyses=[case.analysis])[0].text.strip()
                cases.append({"set": name, "query": case.query, "messages": case.messages, "label": label})
        finally:
            bench.close()
    return cases


def stream(loop: LearningLoop, cases: list[dict], versions: int, batch: int) -> list[dict]:
    """Record the cases as collected turns, batch after batch; after each batch wait for
    the run the policy starts. Returns the loop's training progress after each run."""
    runs = []
    for k in range(versions):
        chunk = cases[k * batch : (k + 1) * batch]
        if len(chunk) < batch:
            break
        for i, case in enumerate(chunk):
            q = case["query"]["query"]
            loop.record(Turn(id=f"t{k}-{i}", session_id=f"s{k}-{i}", user_id="bench", user=q,
                             assistant=case["label"], adapter_version="base", model="extractive",
                             prompt=case["messages"], backend="extractive", label="teacher"))
        assert loop.wait_idle(3600), "a run did not finish within an hour"
        runs.append(loop.training_progress().model_dump(mode="json"))
    return runs


def score_versions(base: Path, adapters: dict[str, Path | None], heldout: list[dict], config: TrainConfig) -> dict:
    pool = [c["messages"] + [{"role": "assistant", "content": c["label"]}] for c in heldout]
    scores = evaluate_versions(base, adapters, pool, config)
    rows = {}
    for name, score in scores.items():
        gold = [token_f1(answer, references(c["query"]))
                for answer, c in zip(score.answers, heldout) if references(c["query"])]
        rows[name] = {
            "loss": round(score.loss, 4),
            "agreement": round(score.agreement, 4),
            "gold_f1": round(sum(gold) / len(gold), 4) if gold else None,
            "gold_questions": len(gold),
            "sample_answer": score.answers[0] if score.answers else None,
        }
    return rows


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["versions"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, title in zip(axes, ("loss", "agreement", "gold_f1"),
                              ("loss on held-out teacher labels", "agreement F1 with the teacher", "token F1 with gold")):
        values = [report["versions"][n][key] or 0.0 for n in names]
        promoted = ("active", "archived")
        colors = ["#999999" if n == "base" else "#2b7bba" if report["status"].get(n) in promoted else "#e08a2c"
                  for n in names]
        ax.bar(names, values, color=colors)
        ax.set_title(title, fontsize=10)
        for x, v in enumerate(values):
            ax.text(x, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"student {report['student']['name']} ({report['student']['params']:,} params): "
                 "blue = promoted by the gate, orange = kept back", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, help="the shared Korean sets (../shared/data)")
    parser.add_argument("--shared-limit", type=int, default=900, help="belebele questions to use")
    parser.add_argument("--versions", type=int, default=4)
    parser.add_argument("--batch", type=int, default=60, help="collected turns per run (finetune_batch_size)")
    parser.add_argument("--holdout", type=float, default=0.2, help="share of the questions held out")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=3e-3,
                        help="the tiny student learns at 3e-3 (the service's default, 1e-4, is KANANA's)")
    parser.add_argument("--gate-min-examples", type=int, default=20, help="finetune_gate_min_examples")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--student", type=Path, help="a student model directory (default: the tiny model, built)")
    parser.add_argument("--target-modules", nargs="+", help="LoRA target modules (finetune_target_modules; "
                        "default: the service's, the attention projections)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="echorag-learning-") as tmp:
        settings = Settings(data_dir=Path(tmp) / "data", generator_model="tiny", finetune_batch_size=args.batch,
                            finetune_epochs=args.epochs, finetune_max_length=args.max_length,
                            finetune_learning_rate=args.learning_rate,
                            finetune_gate_min_examples=args.gate_min_examples, finetune_webhook_url=None,
                            **({"finetune_target_modules": tuple(args.target_modules)} if args.target_modules else {}))
        base = args.student or ensure_tiny_model(settings.models_dir)
        cases = labelled_cases(settings, args.shared, args.shared_limit)
        kept_back = [held_out(c["query"], args.holdout) for c in cases]
        heldout = [c for c, held in zip(cases, kept_back) if held]
        streamed = [c for c, held in zip(cases, kept_back) if not held]
        prepared_s = time.perf_counter() - started

        loop = LearningLoop(settings, local_train_fn(base))
        try:
            runs = stream(loop, streamed, args.versions, args.batch)
            infos = {info.version: info for info in loop.registry.history()}
        finally:
            loop.close()
        adapters = {"base": None} | {name: loop.registry.path(name) for name in sorted(infos, key=lambda v: int(v[1:]))}
        config = TrainConfig.from_settings(settings)
        versions = score_versions(base, adapters, heldout, config)
        card = json.loads((base / TINY_MARKER).read_text())

    report = {
        "command": " ".join(["python bench/learning.py", *sys.argv[1:]]),
        "student": {"name": card.get("name", "echorag-tiny-ko"), "params": card.get("params", 0),
                    "path": str(args.student) if args.student else "the tiny model, built offline"},
        "teacher": "extractive",
        "questions": {"labelled": len(cases), "streamed": len(streamed), "held_out": len(heldout),
                      "by_set": {s: sum(c["set"] == s for c in cases) for s in {c["set"] for c in cases}}},
        "batch": args.batch, "epochs": args.epochs, "learning_rate": args.learning_rate,
        "gate_min_examples": args.gate_min_examples, "target_modules": list(settings.finetune_target_modules),
        "status": {name: info.status for name, info in infos.items()},
        "gate": {name: info.metrics.get("gate_reason") for name, info in infos.items()},
        "parents": {name: info.parent for name, info in infos.items()},
        "versions": versions,
        "runs": runs,
        "seconds": {"prepare": round(prepared_s, 1), "total": round(time.perf_counter() - started, 1)},
    }
    base_row = versions["base"]
    for name, row in versions.items():
        if name != "base":
            row["loss_vs_base"] = round(row["loss"] / base_row["loss"], 3)
            row["agreement_vs_base"] = round(row["agreement"] / base_row["agreement"], 2) if base_row["agreement"] else None
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learning.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    plot(report, args.out / "learning.png")
    for name, row in versions.items():
        print(f"{name:>5}  loss {row['loss']:.3f}  agreement {row['agreement']:.3f}  gold F1 {row['gold_f1']}"
              f"  {report['status'].get(name, '')}  {row.get('loss_vs_base', '')}")
    print(json.dumps({k: report[k] for k in ("questions", "status", "gate", "seconds")}, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
