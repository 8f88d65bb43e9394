"""Which evidence measure and threshold decide abstention, and which sentence features
choose what the extractive backend quotes? A grid on the DEV half of the sample KB's
queries; the chosen configuration is then reported on both halves (and, with --shared,
on the shared Korean sets), through ``echorag.answer_eval`` (the ``eval-answers`` path).

    python bench/answers_tune.py [--cache ~/.cache/echorag/bench] [--shared ../shared/data]

1. Evidence: for each share of coverage in evidence (the rest is e5 cosine) and each
   penalty for a sentence lacking the amount asked for, the threshold is the highest one
   that refuses at most 5% of the answerable dev questions; the pair that then declines
   most unanswerable dev questions wins (ties: the larger gap to the next answerable
   question). With coverage alone (no embedder) the threshold is chosen the same way,
   under the same amount penalty.
2. Selection: every combination of cosine weight, rank prior, amount bonus, the share of
   the best score a further sentence needs, and the trimming length, scored on the
   answerable dev questions without the gate: mean of containment and token F1.

Writes bench/results/answers_tuning.json. e5 vectors are cached on disk by content.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.embed_cache import CachedEmbedder  # noqa: E402
from echorag.answer_eval import (  # noqa: E402
    AnswerBench,
    containment_references,
    references,
    score,
    select_split,
    summarise,
)
from echorag.answer_metrics import contains, token_f1  # noqa: E402
from echorag.answering import ExtractiveConfig, ExtractiveGenerator, SelectionWeights, format_answer, parse_prompt, select  # noqa: E402
from echorag.config import load_settings  # noqa: E402
from echorag.documents import read_jsonl, sample_path  # noqa: E402
from echorag.embedding import E5Embedder  # noqa: E402
from echorag.evidence import analyse  # noqa: E402

RESULTS = REPO / "bench" / "results"
MAX_REFUSED = 0.05  # answerable dev questions the threshold may refuse
LEXICAL_WEIGHTS = [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]
AMOUNT_PENALTIES = [0.0, 0.25, 0.5, 0.75]
GRID = {
    "dense": [0.0, 0.5, 1.0, 2.0],
    "rank": [0.0, 0.05, 0.1, 0.2],
    "amount": [0.0, 0.1, 0.2, 0.4],
    "min_relative": [0.8, 0.9, 1.01],  # 1.01: one sentence only
    "trim_chars": [40, 60, 80, 10_000],  # 10 000: never trim
    "clause_cuts": ["comma", "connective"],
}


def threshold_for(answerable: np.ndarray) -> float:
    """The highest threshold that refuses at most MAX_REFUSED of these evidence values
    (a value equal to the threshold is answered)."""
    values = np.sort(answerable)
    allowed = int(np.floor(MAX_REFUSED * len(values)))
    return float(values[allowed])


def choose_evidence(dev, dense: bool, penalties: list[float] = AMOUNT_PENALTIES) -> dict:
    rows = []
    for lw, pen in itertools.product(LEXICAL_WEIGHTS if dense else [1.0], penalties):
        values = {id(c): a.evidence(lw, pen) for c, a in dev}
        ans = np.array([values[id(c)] for c, _ in dev if c.answerable])
        una = np.array([values[id(c)] for c, _ in dev if not c.answerable])
        t = threshold_for(ans)
        # Round down a little so the threshold is not an exact sample value.
        t = float(np.floor(t * 1000) / 1000)
        gap = float(np.sort(ans)[int(np.floor(MAX_REFUSED * len(ans)))] - una.max()) if len(una) else 0.0
        rows.append({"lexical_weight": lw, "amount_penalty": pen, "abstain_below": t,
                     "answerable_refused": round(float(np.mean(ans < t)), 4),
                     "unanswerable_declined": round(float(np.mean(una < t)), 4), "gap": round(gap, 4)})
    rows.sort(key=lambda r: (-r["unanswerable_declined"], -r["gap"]))
    return {"grid": rows, "chosen": rows[0]}


def choose_selection(dev, base: ExtractiveConfig) -> dict:
    @lru_cache(maxsize=None)
    def f1(text: str, refs: tuple[str, ...]) -> float:
        return token_f1(text, list(refs))

    answerable = [(c, a) for c, a in dev if c.answerable]
    rows = []
    keys = list(GRID)
    for values in itertools.product(*GRID.values()):
        p = dict(zip(keys, values))
        config = replace(base, abstain_below=0.0, abstain_below_lexical=0.0, min_relative=p["min_relative"],
                         trim_chars=p["trim_chars"], clause_cuts=p["clause_cuts"],
                         selection=SelectionWeights(dense=p["dense"], rank=p["rank"], amount=p["amount"]))
        hits, f1s = [], []
        for case, analysis in answerable:
            text = format_answer(select(analysis, config))
            hits.append(contains(text, containment_references(case.query)))
            f1s.append(f1(text, tuple(references(case.query))))
        p.update(contains=round(float(np.mean(hits)), 4), token_f1=round(float(np.mean(f1s)), 4))
        p["objective"] = round((p["contains"] + p["token_f1"]) / 2, 4)
        rows.append(p)
    rows.sort(key=lambda r: (-r["objective"], -r["contains"]))
    return {"grid_size": len(rows), "top": rows[:15], "chosen": rows[0],
            "baselines": {
                "coverage only, one whole sentence": next(
                    r for r in rows if r["dense"] == 0 and r["rank"] == 0 and r["amount"] == 0
                    and r["min_relative"] == 1.01 and r["trim_chars"] == 10_000),
                "cosine-heavy, one whole sentence": next(
                    r for r in rows if r["dense"] == 2.0 and r["rank"] == 0 and r["amount"] == 0
                    and r["min_relative"] == 1.01 and r["trim_chars"] == 10_000),
            }}


def evaluate(bench: AnswerBench, cases, config: ExtractiveConfig, split: str) -> dict:
    chosen = select_split_cases(cases, split)
    generator = ExtractiveGenerator(bench.embedder, config)
    report = bench.run(chosen, generator, config.abstain_below, progress=False,
                       lexical_weight=config.lexical_weight, amount_penalty=config.amount_penalty)
    report.pop("rows")
    return report


def select_split_cases(cases, split):
    ids = {q["id"] for q in select_split([c.query for c in cases], split)}
    return [c for c in cases if c.query["id"] in ids]


def reduced(queries: list[dict], corpus: list[dict], n: int) -> tuple[list[dict], list[dict]]:
    """The first n queries over their relevant documents plus as many others (file order)."""
    queries = queries[:n]
    relevant = {d for q in queries for d in q["relevant_ids"]}
    others = [d for d in corpus if d["id"] not in relevant][: len(relevant)]
    return queries, [d for d in corpus if d["id"] in relevant] + others


def write(report: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "answers_tuning.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "echorag" / "bench")
    parser.add_argument("--shared", type=Path, help="also report on the shared sets in this folder")
    parser.add_argument(
        "--kobest-limit", type=int, default=0,
        help="kobest: only the first N queries, over their own paragraphs plus as many other paragraphs "
        "(embedding all 3,000 paragraphs and their sentences takes about an hour on two busy cores)",
    )
    args = parser.parse_args()
    started = time.time()
    settings = load_settings()
    embedder = CachedEmbedder(E5Embedder(), args.cache, cache_queries=False)
    bench = AnswerBench(read_jsonl(sample_path("sample_kb.jsonl")), settings, progress=False, embedder=embedder)
    cases = bench.prepare(read_jsonl(sample_path("dev_queries.jsonl")), progress=False)
    # The generator's view: the passages as parsed back from the prompt.
    dense = [(c, analyse(c.query["query"], parse_prompt(c.messages)[1], c.vector, bench.embedder)) for c in cases]
    lexical = [(c, analyse(c.query["query"], parse_prompt(c.messages)[1])) for c in cases]
    dev = [x for x in dense if x[0].query.get("split") == "dev"]
    dev_lexical = [x for x in lexical if x[0].query.get("split") == "dev"]

    evidence_dense = choose_evidence(dev, dense=True)
    e = evidence_dense["chosen"]
    # Without an embedder only the threshold differs (the amount penalty is shared).
    evidence_lexical = choose_evidence(dev_lexical, dense=False, penalties=[e["amount_penalty"]])
    base = ExtractiveConfig(abstain_below=e["abstain_below"], lexical_weight=e["lexical_weight"],
                            amount_penalty=e["amount_penalty"],
                            abstain_below_lexical=evidence_lexical["chosen"]["abstain_below"],
                            max_sentences=settings.extractive_max_sentences)
    selection = choose_selection(dev, base)
    s = selection["chosen"]
    config = replace(base, min_relative=s["min_relative"], trim_chars=s["trim_chars"], clause_cuts=s["clause_cuts"],
                     selection=SelectionWeights(dense=s["dense"], rank=s["rank"], amount=s["amount"]))

    report = {
        "command": "OMP_NUM_THREADS=1 python bench/answers_tune.py" + (" --shared ../shared/data" if args.shared else "")
        + (f" --kobest-limit {args.kobest_limit}" if args.kobest_limit else ""),
        "max_refused_answerable": MAX_REFUSED,
        "evidence": evidence_dense,
        "evidence_without_embedder": {"grid": evidence_lexical["grid"], "chosen": evidence_lexical["chosen"]},
        "selection": selection,
        "chosen": {"abstain_below": config.abstain_below, "abstain_below_lexical": config.abstain_below_lexical,
                   "lexical_weight": config.lexical_weight, "amount_penalty": config.amount_penalty,
                   "dense": config.selection.dense, "rank": config.selection.rank, "amount": config.selection.amount,
                   "min_relative": config.min_relative, "trim_chars": config.trim_chars,
                   "clause_cuts": config.clause_cuts,
                   "max_sentences": config.max_sentences},
        "sample_kb": {split: evaluate(bench, cases, config, split) for split in ("dev", "test")},
        "sample_kb_without_embedder": {},
    }
    # Without an embedder: the extractive backend on morphemes alone (its own threshold).
    for split in ("dev", "test"):
        chosen = select_split_cases(cases, split)
        generator = ExtractiveGenerator(None, config)
        rows, latencies = [], []
        for case in chosen:
            t0 = time.perf_counter()
            text = generator.generate([case.messages])[0].text
            latencies.append((time.perf_counter() - t0) * 1000)
            rows.append(score(case, text))
        report["sample_kb_without_embedder"][split] = summarise(rows, latencies, [c.retrieval_ms for c in chosen])
    bench.close()

    write(report)
    if args.shared:
        report["shared"] = {}
        for name in ("belebele_ko", "kobest_boolq_ko"):
            folder = args.shared / name
            if not (folder / "corpus.jsonl").is_file():
                continue
            queries, corpus = read_jsonl(folder / "queries.jsonl"), read_jsonl(folder / "corpus.jsonl")
            note = "all queries, whole corpus"
            if name == "kobest_boolq_ko" and args.kobest_limit:
                queries, corpus = reduced(queries, corpus, args.kobest_limit)
                note = f"first {len(queries)} queries; corpus: their paragraphs + as many others ({len(corpus)})"
            shared = AnswerBench(corpus, settings, progress=True, embedder=embedder)
            shared_cases = shared.prepare(queries, progress=True)
            out = shared.run(shared_cases, ExtractiveGenerator(shared.embedder, config), config.abstain_below,
                             progress=True, lexical_weight=config.lexical_weight, amount_penalty=config.amount_penalty)
            out.pop("rows")
            report["shared"][name] = {"subset": note, **out}
            shared.close()
            write(report)  # a long run keeps what it has
    report["seconds"] = round(time.time() - started, 1)
    write(report)
    print(json.dumps({"chosen": report["chosen"], "dev": report["sample_kb"]["dev"], "test": report["sample_kb"]["test"]},
                     ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
