"""Does EchoRAG answer better after a week of feedback? Measured through the public HTTP API
on questions the feedback never touched.

    python bench/answer_learning.py --shared ../shared/data [--rounds 4] [--per-round 64]

One EchoRAG application (extractive: no language model loads here) on a local Ray
cluster, with the bundled sample knowledge base and three quarters of Belebele's Korean
passages ingested. Belebele questions whose answer option stands verbatim in their
passage are answerable (a gold span); questions on the quarter of passages left out are
unanswerable. Passages are split in two by a hash: the questions of one half are the
feedback stream, those of the other half, with the bundled test half, are evaluated and
never given feedback.

Each round asks ``--per-round`` stream questions over ``/chat`` and reacts as a careful
user and admin would: 👍 (``/feedback``) when the answer holds the gold span or declines
an unanswerable question, else a correction (``PUT /mlops/conversations/{id}``) with the
gold span, or ``NO_ANSWER`` for an unanswerable one; then ``POST /mlops/finetune``. The
gate promotes the run's selector version or keeps it back; the evaluation sets are asked
again through ``/chat`` with whatever serves. Writes bench/results/answer_learning.json and
.png, and prints the last round against base.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from echorag.answering.prompts import NO_ANSWER  # noqa: E402
from echorag.documents import read_documents, read_jsonl, sample_path  # noqa: E402
from echorag.evaluation.answer_metrics import abstained, contains  # noqa: E402
from echorag.evaluation.answers import containment_references, select_split  # noqa: E402

RESULTS = REPO / "bench" / "results"
TOKEN = "bench-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
PORT = 8127


def bucket(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def belebele(shared: Path) -> tuple[list[dict], dict[str, list[dict]]]:
    """(passages to ingest, question sets): stream and eval halves by passage, each with
    answerable questions (a verbatim gold span) and unanswerable ones (passage left out)."""
    from echorag.evaluation.answer_metrics import normalize_answer

    corpus = {d["id"]: d for d in read_jsonl(shared / "belebele_ko" / "corpus.jsonl")}
    absent = {i for i in corpus if bucket("absent:" + i) < 0.25}
    sets: dict[str, list[dict]] = {"stream": [], "eval": []}
    for q in read_jsonl(shared / "belebele_ko" / "queries.jsonl"):
        passage = q["relevant_ids"][0]
        half = "stream" if bucket("half:" + passage) < 0.5 else "eval"
        if passage in absent:
            sets[half].append({**q, "relevant_ids": [], "answers": []})
        elif normalize_answer(q["answer"]) in normalize_answer(corpus[passage]["text"]):
            sets[half].append({**q, "answers": [q["answer"]]})
    return [d for i, d in corpus.items() if i not in absent], sets


def ask(http: httpx.Client, questions: list[dict]) -> list[tuple[dict, dict]]:
    answered = []
    for q in questions:
        response = http.post("/chat", json={"message": q["query"]})
        response.raise_for_status()
        answered.append((q, response.json()))
    return answered


def measure(answered: list[tuple[dict, dict]]) -> dict:
    ans = [(q, b) for q, b in answered if q["relevant_ids"]]
    una = [(q, b) for q, b in answered if not q["relevant_ids"]]

    def mean(values: list[bool]) -> float | None:
        return round(sum(values) / len(values), 4) if values else None

    return {"contains": mean([contains(b["response"], containment_references(q)) for q, b in ans]),
            "answerable_refused": mean([abstained(b["response"]) for _, b in ans]),
            "unanswerable_refused": mean([abstained(b["response"]) for _, b in una]),
            "answerable": len(ans), "unanswerable": len(una),
            "selector": sorted({b["mlops_info"].get("selector_version") or "?" for _, b in answered})}


def give_feedback(http: httpx.Client, answered: list[tuple[dict, dict]]) -> dict:
    counts = {"up": 0, "corrected": 0, "corrected_to_no_answer": 0}
    for q, body in answered:
        gold = containment_references(q)
        right = abstained(body["response"]) if not q["relevant_ids"] else contains(body["response"], gold)
        if right:
            http.post("/feedback", json={"turn_id": body["turn_id"], "rating": "up",
                                         "session_id": body["session_id"]}).raise_for_status()
            counts["up"] += 1
        else:
            answer = gold[0] if q["relevant_ids"] else NO_ANSWER
            http.put(f"/mlops/conversations/{body['turn_id']}", json={"answer": answer}, headers=ADMIN).raise_for_status()
            counts["corrected" if q["relevant_ids"] else "corrected_to_no_answer"] += 1
    return counts


def run_and_wait(http: httpx.Client, timeout: float = 1800) -> dict:
    http.post("/mlops/finetune", json={"force": True}, headers=ADMIN).raise_for_status()
    deadline = time.time() + timeout
    time.sleep(2)
    while (progress := http.get("/mlops/training-progress").json())["status"] == "training" or progress["pending"]:
        if time.time() > deadline:
            raise TimeoutError(progress)
        time.sleep(3)
    return progress


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = report["rounds"]
    x = [r["feedback_turns"] for r in rounds]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, name in zip(axes, ("belebele_eval", "sample_kb_test")):
        for metric, style in (("contains", "o-"), ("unanswerable_refused", "s-"), ("answerable_refused", "^--")):
            ax.plot(x, [r[name][metric] for r in rounds], style, label=metric)
        ax.set_xlabel("feedback turns given (stream questions, disjoint from these)")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{name}: the selector that serves after each run")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, required=True, help="the shared data folder (belebele_ko)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--per-round", type=int, default=64)
    args = parser.parse_args()

    import ray
    from ray import serve

    from deployments.app import build_app
    from echorag.models.tiny_model import build_tiny_model

    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="echorag-answer-learning-"))
    passages, sets = belebele(args.shared)
    stream = sorted(sets["stream"], key=lambda q: bucket("order:" + q["id"]))
    sample_test = select_split(read_jsonl(sample_path("dev_queries.jsonl")), "test")
    ray.init(num_cpus=8, include_dashboard=False, namespace="echorag-bench")
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    build_tiny_model(work / "models" / "tiny-ko")
    serve.run(build_app({"data_dir": str(work), "generator_model": "auto", "admin_token": TOKEN,
                         "finetune_auto_trigger": False, "rate_limit_per_minute": 0, "finetune_epochs": 1}),
              name="learning", route_prefix="/")
    report: dict = {"command": " ".join(["python bench/answer_learning.py", *sys.argv[1:]]),
                    "sets": {"stream": len(stream), "belebele_eval": len(sets["eval"]), "sample_kb_test": len(sample_test),
                             "ingested_passages": len(passages)}, "rounds": []}
    with httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=600) as http:
        documents = read_documents([sample_path()]) + [{"id": d["id"], "text": d["text"]} for d in passages]
        for start in range(0, len(documents), 100):
            http.post("/documents", json={"documents": documents[start : start + 100]}, headers=ADMIN).raise_for_status()
        given = 0
        for round_ in range(args.rounds + 1):
            if round_:
                chunk = stream[(round_ - 1) * args.per_round : round_ * args.per_round]
                counts = give_feedback(http, ask(http, chunk))
                given += len(chunk)
                progress = run_and_wait(http)
            else:
                counts, progress = {}, {}
            time.sleep(6)  # retrievers follow the selector registry every 5 s
            models = http.get("/mlops/models").json()
            row = {"round": round_, "feedback_turns": given, "feedback": counts, "selector": models["selector"],
                   "selectors": [{k: s.get(k) for k in ("version", "status", "parent")} |
                                 {"reason": s.get("metrics", {}).get("reason"),
                                  "pool": s.get("metrics", {}).get("candidate")} for s in models["selectors"]],
                   "run_status": progress.get("status"),
                   "belebele_eval": measure(ask(http, sets["eval"])),
                   "sample_kb_test": measure(ask(http, sample_test))}
            report["rounds"].append(row)
            print(json.dumps({k: row[k] for k in ("round", "feedback_turns", "selector", "belebele_eval",
                                                  "sample_kb_test")}, ensure_ascii=False), flush=True)
            RESULTS.mkdir(exist_ok=True)
            (RESULTS / "answer_learning.json").write_text(json.dumps(report, ensure_ascii=False, indent=2))
    serve.shutdown()
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = round(time.time() - started, 1)
    (RESULTS / "answer_learning.json").write_text(json.dumps(report, ensure_ascii=False, indent=2))
    plot(report, RESULTS / "answer_learning.png")
    first, last = report["rounds"][0], report["rounds"][-1]
    for name in ("belebele_eval", "sample_kb_test"):
        for metric in ("contains", "unanswerable_refused", "answerable_refused"):
            print(f"{name} {metric}: base {first[name][metric]} -> {last['selector']} {last[name][metric]}")


if __name__ == "__main__":
    main()
