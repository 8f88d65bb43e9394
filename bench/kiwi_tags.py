"""Which Kiwi tags (and BM25 k1/b) make the best Korean BM25?

Evaluates echorag.retrieval.lexical.BM25Index on belebele_ko and kobest_boolq_ko for several
tag sets and (k1, b), writes bench/results/kiwi_tags.json and prints a table.
The winner is the config with the best nDCG@10 averaged over BOTH sets.

    python bench/kiwi_tags.py [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import bm25s
import kiwipiepy

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from echorag.evaluation.retrieval_metrics import evaluate, load_jsonl, ndcg_at_k  # noqa: E402
from echorag.korean import BM25_TAGS, morphemes_many, normalize  # noqa: E402
from echorag.retrieval.lexical import BM25Index  # noqa: E402

DATASETS = ("belebele_ko", "kobest_boolq_ko")
NOUNS = {"NNG", "NNP"}
SYMBOLS = {"NR", "SL", "SN", "SH", "W_URL", "W_EMAIL", "W_HASHTAG", "W_SERIAL"}
VERBS = {"VV", "VA"}


@dataclass(frozen=True)
class TagConfig:
    name: str
    tags: frozenset[str] = frozenset()
    lemmatize: bool = True
    kiwi_options: dict = field(default_factory=dict, hash=False)
    char_bigrams: bool = False  # the data READMEs' baseline, for reference


TAG_CONFIGS = [
    TagConfig("nouns", frozenset(NOUNS)),
    TagConfig("nouns+sym", frozenset(NOUNS | SYMBOLS)),
    TagConfig("nouns+sym+NP", frozenset(NOUNS | SYMBOLS | {"NP"})),
    TagConfig("nouns+sym+XR", frozenset(NOUNS | SYMBOLS | {"XR"})),
    TagConfig("nouns+sym+stems", frozenset(NOUNS | SYMBOLS | VERBS), lemmatize=False),
    TagConfig("nouns+sym+lemmas", frozenset(NOUNS | SYMBOLS | VERBS)),
    TagConfig("nouns+sym+lemmas+XR", frozenset(NOUNS | SYMBOLS | VERBS | {"XR"})),
    TagConfig("nouns+sym+lemmas+XR+MAG", frozenset(NOUNS | SYMBOLS | VERBS | {"XR", "MAG"})),
    TagConfig("nouns+sym+lemmas+XR+MAG+NNB", frozenset(NOUNS | SYMBOLS | VERBS | {"XR", "MAG", "NNB"})),
    TagConfig("nouns+sym+lemmas+XR split_complex", frozenset(NOUNS | SYMBOLS | VERBS | {"XR"}),
              kiwi_options={"split_complex": True}),
    TagConfig("nouns+sym+lemmas+XR saisiot", frozenset(NOUNS | SYMBOLS | VERBS | {"XR"}),
              kiwi_options={"saisiot": True}),
    TagConfig("char-bigrams (baseline)", char_bigrams=True),
]
K1_B = [(0.9, 0.4), (1.2, 0.75), (1.5, 0.75), (2.0, 0.75), (1.2, 0.5), (1.2, 0.9)]


def char_bigrams(texts: list[str]) -> list[list[str]]:
    """Character bigrams inside each whitespace word (a single-character word stays whole)."""
    out = []
    for text in texts:
        terms = []
        for word in normalize(text).lower().split():
            terms.extend([word] if len(word) == 1 else [word[i : i + 2] for i in range(len(word) - 1)])
        out.append(terms)
    return out


class CachedTokenizer:
    """Runs Kiwi once per text and config, however many (k1, b) reuse it."""

    def __init__(self, config: TagConfig) -> None:
        self.config = config
        self.cache: dict[str, list[str]] = {}

    def __call__(self, texts: list[str]) -> list[list[str]]:
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            if self.config.char_bigrams:
                terms = char_bigrams(missing)
            else:
                terms = morphemes_many(missing, self.config.tags, lemmatize=self.config.lemmatize,
                                       **self.config.kiwi_options)
            self.cache.update(zip(missing, terms))
        return [self.cache[t] for t in texts]


def run_dataset(
    corpus: list[dict], queries: list[dict], tokenizer: CachedTokenizer, k1: float, b: float
) -> tuple[dict, list[float]]:
    """Mean metrics, and each query's nDCG@10 (for paired comparisons)."""
    index = BM25Index(k1=k1, b=b, tokenize=tokenizer)
    index.add([d["id"] for d in corpus], [d["text"] for d in corpus])
    tokenizer([q["query"] for q in queries])  # one Kiwi batch instead of one call per query
    ranked = [[doc_id for doc_id, _ in index.search(q["query"], k=10)] for q in queries]
    relevant = [q["relevant_ids"] for q in queries]
    metrics = evaluate(ranked, relevant)
    per_query = [ndcg_at_k(r, rel, 10) for r, rel in zip(ranked, relevant)]
    return metrics, per_query


def paired_difference(row: list[list[float]], best: list[list[float]]) -> tuple[float, float]:
    """Mean nDCG@10 difference to the best config (averaged over data sets) and its standard error."""
    means, variances = [], []
    for ours, theirs in zip(row, best):
        diffs = [a - b for a, b in zip(ours, theirs)]
        mean = sum(diffs) / len(diffs)
        means.append(mean)
        variances.append(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))
    return sum(means) / len(means), math.sqrt(sum(variances)) / len(variances)


def is_default(row: dict) -> bool:
    """Does this config match what echorag ships (BM25_TAGS, lemmas, BM25Index's k1 and b)?"""
    default = BM25Index()
    return (set(row["tags"]) == set(BM25_TAGS) and row["lemmatize"] and not row["kiwi_options"]
            and (row["k1"], row["b"]) == (default.k1, default.b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "kiwi_tags.json")
    args = parser.parse_args()

    data = {
        name: (load_jsonl(args.data_dir / name / "corpus.jsonl"), load_jsonl(args.data_dir / name / "queries.jsonl"))
        for name in DATASETS
    }
    started = time.perf_counter()
    rows, per_query = [], []
    for config in TAG_CONFIGS:
        tokenizer = CachedTokenizer(config)
        for k1, b in K1_B:
            row = {"config": config.name, "tags": sorted(config.tags), "lemmatize": config.lemmatize,
                   "kiwi_options": config.kiwi_options, "k1": k1, "b": b}
            ndcgs = []
            for name, (corpus, queries) in data.items():
                row[name], ndcg = run_dataset(corpus, queries, tokenizer, k1, b)
                ndcgs.append(ndcg)
            row["mean_ndcg@10"] = sum(row[name]["ndcg@10"] for name in DATASETS) / len(DATASETS)
            rows.append(row)
            per_query.append(ndcgs)
            print(f"{config.name:38s} k1={k1:<4} b={b:<5} mean nDCG@10={row['mean_ndcg@10']:.4f}", file=sys.stderr)

    kiwi_rows = [r for r in rows if r["config"] != "char-bigrams (baseline)"]
    best = max(kiwi_rows, key=lambda r: r["mean_ndcg@10"])
    best_ndcgs = per_query[rows.index(best)]
    for row, ndcgs in zip(rows, per_query):
        row["delta_vs_best"], row["delta_se"] = paired_difference(ndcgs, best_ndcgs)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "data_dir": str(args.data_dir),
        "selection": "highest nDCG@10 averaged over both data sets (Kiwi configs only); "
        "delta_vs_best/delta_se: paired per-query difference of that average and its standard error",
        "best": {key: best[key] for key in ("config", "tags", "lemmatize", "kiwi_options", "k1", "b")},
        "best_is_the_default": is_default(best),
        "results": rows,
        "runtime_s": round(time.perf_counter() - started, 1),
        "environment": {"python": platform.python_version(), "kiwipiepy": kiwipiepy.__version__,
                        "bm25s": bm25s.__version__, "cpus": os.cpu_count()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    columns = " | ".join(f"{name[:15]:>15} nDCG   R@1   R@5   MRR" for name in DATASETS)
    header = f"{'config':36s} {'k1':>4} {'b':>4} | {columns} | Δ mean nDCG ± SE"
    print(header)
    print("-" * len(header))
    for r in sorted(rows, key=lambda r: -r["mean_ndcg@10"]):
        cells = " | ".join(
            f"{r[n]['ndcg@10']:20.4f} {r[n]['recall@1']:.3f} {r[n]['recall@5']:.3f} {r[n]['mrr@10']:.3f}"
            for n in DATASETS
        )
        delta = f"{r['delta_vs_best']:+.4f} ± {r['delta_se']:.4f}"
        print(f"{r['config']:36s} {r['k1']:>4} {r['b']:>4} | {cells} | {delta}")
    print(f"\nbest: {best['config']} k1={best['k1']} b={best['b']}  ({result['runtime_s']} s) -> {args.out}")
    if not result["best_is_the_default"]:
        print("NOTE: the best config is not the default of korean.BM25_TAGS / BM25Index(k1, b)")


if __name__ == "__main__":
    main()
