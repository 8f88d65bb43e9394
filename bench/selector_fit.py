"""Fit the base answer selector on the DEV half of the bundled questions and report it on
the TEST half, beside the hand-written rules it replaces, on the same retrieval.

    python bench/selector_fit.py [--cache ~/.cache/echorag/bench] [--c 1.0] [--write-base]

A sentence is labelled as answering its question when it contains a gold answer (the
short spans, else the reference sentence, as ``contains`` measures); every sentence of
an unanswerable question is a negative, and the question a negative of the selector's
answerability model. Its threshold is chosen on out-of-fold probabilities of the dev half
(``selector.fit``). ``--write-base`` saves the
fitted version as the one EchoRAG ships (echorag/data/selector_base.json) and its examples
(selector_base_examples.npz), which every later version is fitted on again (replay).

Writes bench/results/selector.json and selector.png; prints test-half ratios against the
rules.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from echorag.answering.evidence import RULE_THRESHOLD, strongest  # noqa: E402
from echorag.answering.extractive import ExtractiveGenerator  # noqa: E402
from echorag.answering.selector import Example, features, fit  # noqa: E402
from echorag.config import load_settings  # noqa: E402
from echorag.documents import read_jsonl, sample_path  # noqa: E402
from echorag.evaluation.answer_metrics import contains  # noqa: E402
from echorag.evaluation.answers import AnswerBench, containment_references, select_split  # noqa: E402
from echorag.learning.selector_learning import save_examples  # noqa: E402
from echorag.retrieval.embedding import E5Embedder, VectorCache  # noqa: E402
from echorag.types import Analysis  # noqa: E402

RESULTS = REPO / "bench" / "results"
BASE_FILE = REPO / "echorag" / "data" / "selector_base.json"
EXAMPLES_FILE = REPO / "echorag" / "data" / "selector_base_examples.npz"


class Rules:
    """The hand-written answerer as it served before the selector: the evidence gate on
    e5 and morphemes, and sentences ranked on coverage, passage rank and the amount asked."""

    version = "rules"

    def decide(self, analysis: Analysis) -> Analysis:
        for u in analysis.units:
            u.probability = u.coverage + 0.2 / (1 + u.rank) + 0.1 * u.amount_ok
        analysis.abstain = not analysis.units or strongest(analysis) < RULE_THRESHOLD
        return analysis


def example(case) -> Example:
    refs = containment_references(case.query) if case.answerable else []
    labels = np.array([float(bool(refs) and contains(u.text, refs)) for u in case.analysis.units])
    return Example(features(case.analysis), labels, case.answerable)


def measure(bench: AnswerBench, cases, selector) -> dict:
    for case in cases:
        selector.decide(case.analysis)
    report = bench.run(cases, bench.generator, progress=False)
    report.pop("rows")
    return {"contains": report["answerable"]["contains"], "token_f1": report["answerable"]["token_f1"],
            "answerable_refused": report["answerable"]["abstained"],
            "unanswerable_refused": report["unanswerable"]["abstained"], "queries": report["queries"]}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["contains", "unanswerable_refused", "answerable_refused"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.38
    for i, who in enumerate(("rules", "selector")):
        values = [report["test"][who][n] for n in names]
        ax.bar(np.arange(len(names)) + (i - 0.5) * width, values, width, label=who)
        for x, v in zip(np.arange(len(names)) + (i - 0.5) * width, values):
            ax.text(x, v + 0.01, f"{v:.3f}", ha="center", fontsize=8)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylim(0, 1.1)
    ax.set_title("Test half of the bundled questions: rules vs the base selector")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "echorag" / "bench")
    parser.add_argument("--c", type=float, default=1.0, help="inverse L2 strength of the logistic regression")
    parser.add_argument("--write-base", action="store_true", help="save the fitted selector as the shipped base")
    args = parser.parse_args()
    started = time.time()
    settings = load_settings()
    embedder = VectorCache(E5Embedder(), path=args.cache)
    queries = read_jsonl(sample_path("dev_queries.jsonl"))
    bench = AnswerBench(read_jsonl(sample_path("sample_kb.jsonl")), settings, progress=False, embedder=embedder,
                        generator=ExtractiveGenerator.from_settings(settings))
    try:
        cases = {split: bench.prepare(select_split(queries, split), progress=False) for split in ("dev", "test")}
        examples = [example(c) for c in cases["dev"]]
        selector = fit(examples, "base", c=args.c,
                       fitted_on={"data": "dev half of echorag/data/dev_queries.jsonl (sample KB)"})
        report = {"command": " ".join(["python bench/selector_fit.py", *sys.argv[1:]]), "c": args.c,
                  "threshold": selector.threshold, "fitted_on": selector.fitted_on}
        for split, chosen in cases.items():
            report[split] = {"rules": measure(bench, chosen, Rules()), "selector": measure(bench, chosen, selector)}
    finally:
        bench.close()
    report["coefficients"] = {
        "sentence": dict(sorted(zip(selector.features, np.round(selector.sentence.coef, 4).tolist()),
                                key=lambda kv: -abs(kv[1]))),
        "question": dict(sorted(zip(selector.question_features, np.round(selector.question.coef, 4).tolist()),
                                key=lambda kv: -abs(kv[1]))) if selector.question else None}
    report["seconds"] = round(time.time() - started, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "selector.json").write_text(json.dumps(report, ensure_ascii=False, indent=2))
    plot(report, RESULTS / "selector.png")
    if args.write_base:
        selector.save(BASE_FILE)
        save_examples(examples, EXAMPLES_FILE)
    test = report["test"]
    for name in ("contains", "unanswerable_refused", "answerable_refused"):
        rules, learned = test["rules"][name], test["selector"][name]
        print(f"test {name}: rules {rules:.3f}, selector {learned:.3f} ({learned / rules if rules else float('nan'):.2f}x)")
    print(json.dumps({k: report[k] for k in ("dev", "test", "threshold")}, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
