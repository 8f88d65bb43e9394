"""How should hybrid retrieval fuse BM25 and e5? A grid over fusion method, BM25
weight and sentence re-scoring on every evaluation set, chosen leave-one-set-out.

    python bench/retrieval_tune.py [--data ../shared/data] [--cache ~/.cache/echorag/bench]

For each query the candidates are what the service scores (``echorag.retrieval.hybrid``):
the top 30 chunks of BM25 and of e5 (chunk cosine), each scored exactly by both;
the dense score is ``(1 - s) * cos(query, chunk) + s * max cos(query, sentence)``
(``s`` = sentence weight; a one-sentence chunk is its own sentence). The fused list
comes from ``echorag.retrieval.lexical.fuse``, the service's own function. e5 vectors come from
the service's embedder and are cached on disk by content (embedding kobest takes
minutes on two cores); nothing else is cached.

Writes bench/results/retrieval_tuning.json: every grid row on every set, the
adaptive (per-query) weighting variants, BM25 variants, leave-one-set-out choices
and the configuration with the best mean nDCG@10 over all sets (the defaults).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import bm25s
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from echorag.documents import read_jsonl, sample_path  # noqa: E402
from echorag.evaluation.retrieval import doc_ranking  # noqa: E402
from echorag.evaluation.retrieval_metrics import evaluate  # noqa: E402
from echorag.korean import morphemes_many, split_sentences  # noqa: E402
from echorag.retrieval.embedding import E5Embedder, VectorCache  # noqa: E402
from echorag.retrieval.hybrid import chunk_documents  # noqa: E402
from echorag.retrieval.lexical import fuse  # noqa: E402

CANDIDATES = 30
WEIGHTS = [round(w / 10, 1) for w in range(11)]
SENTENCE_WEIGHTS = [0.0, 0.25, 0.5, 0.75, 1.0]
METHODS = ("score", "zscore", "rrf")


def eval_sets(data: Path) -> dict[str, tuple[list[dict], list[dict]]]:
    sets = {"dev": (read_jsonl(sample_path("sample_kb.jsonl")), read_jsonl(sample_path("dev_queries.jsonl")))}
    for name in ("belebele_ko", "kobest_boolq_ko"):
        if (data / name / "corpus.jsonl").is_file():
            sets[name] = (read_jsonl(data / name / "corpus.jsonl"), read_jsonl(data / name / "queries.jsonl"))
    return sets


class Embeddings:
    """The service's e5 embedder behind its on-disk passage vectors (``echorag.retrieval.embedding.VectorCache``)."""

    def __init__(self, cache: Path) -> None:
        self.cached = VectorCache(_LazyE5(), path=cache)

    def __call__(self, texts: list[str], is_query: bool) -> np.ndarray:
        if is_query:
            return self.cached.embed_queries(texts)
        return self.cached.embed_passages(texts)


class _LazyE5:
    """Loads e5 only if something is not cached yet."""

    id, dim = E5Embedder.id, 384
    _model: E5Embedder | None = None

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        self._model = self._model or E5Embedder()
        return self._model.embed_queries(texts)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        self._model = self._model or E5Embedder()
        return self._model.embed_passages(texts)


_TERMS: dict[str, list[str]] = {}


def kiwi_terms(texts: list[str]) -> list[list[str]]:
    """The service's BM25 terms (Kiwi morphemes), computed once per text."""
    missing = [t for t in dict.fromkeys(texts) if t not in _TERMS]
    _TERMS.update(zip(missing, morphemes_many(missing)))
    return [_TERMS[t] for t in texts]


class Candidates:
    """Per query: candidate chunk ids with BM25, chunk-cosine and best-sentence scores."""

    def __init__(self, corpus: list[dict], queries: list[dict], embed: Embeddings,
                 chunk_size: int = 500, chunk_overlap: int = 100, k1: float = 1.2, b: float = 0.75,
                 method: str = "lucene") -> None:
        chunks = chunk_documents(corpus, chunk_size, chunk_overlap)
        self.ids = [c.id for c in chunks]
        self.chunk_to_doc = {c.id: c.metadata["doc_id"] for c in chunks}
        queries = [q for q in queries if q["relevant_ids"]]  # unanswerable ones measure abstention
        self.relevant = [q["relevant_ids"] for q in queries]
        texts = [c.text for c in chunks]
        q_vectors = embed([q["query"] for q in queries], True)
        cos = q_vectors @ embed(texts, False).T
        # Best sentence per chunk; a one-sentence chunk keeps its own cosine (as the service does).
        sentences, owner = [], []
        for i, text in enumerate(texts):
            split = split_sentences(text)
            if len(split) > 1:
                sentences += split
                owner += [i] * len(split)
        owner = np.array(owner, dtype=int)
        sentence_cos = q_vectors @ embed(sentences, False).T if sentences else np.zeros((len(queries), 0))
        best = cos.copy()
        for i in np.unique(owner):
            best[:, i] = sentence_cos[:, owner == i].max(axis=1)
        retriever = bm25s.BM25(k1=k1, b=b, method=method)
        retriever.index(kiwi_terms(texts), show_progress=False)
        self.queries = []
        for qi, terms in enumerate(kiwi_terms([q["query"] for q in queries])):
            terms = [t for t in terms if t in retriever.vocab_dict]
            bm25 = retriever.get_scores(terms) if terms else np.zeros(len(texts), np.float32)
            top_bm25 = [i for i in np.argsort(-bm25, kind="stable")[:CANDIDATES] if bm25[i] > 0]
            top_dense = list(np.argsort(-cos[qi], kind="stable")[:CANDIDATES])
            union = np.array(list(dict.fromkeys([*top_dense, *top_bm25])))
            self.queries.append((union, bm25[union], cos[qi, union], best[qi, union]))

    def run(self, method: str, bm25_weight: float, sentence_weight: float, adaptive: str | None = None,
            half: int | None = None) -> dict:
        """Metrics over all queries, or over one half (0: even positions, 1: odd)."""
        ranked, relevant = [], []
        for n, (union, bm25, cos, best) in enumerate(self.queries):
            if half is not None and n % 2 != half:
                continue
            relevant.append(self.relevant[n])
            dense = (1 - sentence_weight) * cos + sentence_weight * best
            ids = [self.ids[i] for i in union]
            rankings = {"bm25": list(zip(ids, bm25.tolist())), "dense": list(zip(ids, dense.tolist()))}
            w = bm25_weight if adaptive is None else adaptive_weight(bm25, dense, adaptive, bm25_weight)
            fused = fuse(rankings, {"bm25": w, "dense": 1 - w}, method=method)
            ranked.append(doc_ranking((cid for cid, _ in fused), self.chunk_to_doc))
        return evaluate(ranked, relevant)


def adaptive_weight(bm25: np.ndarray, dense: np.ndarray, kind: str, prior: float) -> float:
    """Per-query BM25 weight from how decisively each retriever picks its top hit.

    Confidence = (top-1 minus mean of ranks 2-10) of the min-max normalised scores
    ("margin"), or that gap in standard deviations of ranks 2-10 ("z-margin").
    The weight is prior-weighted confidence share, shrunk halfway to the prior.
    """

    def confidence(scores: np.ndarray) -> float:
        top = np.sort(scores)[::-1][:10]
        if len(top) < 2 or top[0] == top[-1]:
            return 0.0
        top = (top - top.min()) / (top[0] - top.min())
        if kind == "margin":
            return float(top[0] - top[1:].mean())
        return float((top[0] - top[1:].mean()) / (top[1:].std() + 1e-6))

    cb, cd = prior * confidence(bm25), (1 - prior) * confidence(dense)
    share = cb / (cb + cd) if cb + cd > 0 else prior
    return 0.5 * share + 0.5 * prior


def bm25_only(c: Candidates) -> dict:
    ranked = []
    for union, bm25, _, _ in c.queries:
        order = [c.ids[i] for i in union[np.argsort(-bm25, kind="stable")]]
        ranked.append(doc_ranking(order, c.chunk_to_doc))
    return evaluate(ranked, c.relevant)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "echorag" / "bench")
    parser.add_argument("--sets", nargs="+", help="only these sets (dev, belebele_ko, kobest_boolq_ko)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "retrieval_tuning.json")
    args = parser.parse_args()
    embed = Embeddings(args.cache)
    started = time.perf_counter()
    data = {n: d for n, d in eval_sets(args.data).items() if not args.sets or n in args.sets}
    sets = {name: Candidates(corpus, queries, embed) for name, (corpus, queries) in data.items()}
    names = list(sets)

    grid = []
    for method in METHODS:
        for sw in SENTENCE_WEIGHTS:
            for w in WEIGHTS:
                row = {"fusion": method, "bm25_weight": w, "sentence_weight": sw}
                for name, c in sets.items():
                    row[name] = c.run(method, w, sw)
                grid.append(row)
        print(f"{method}: done", file=sys.stderr, flush=True)

    def mean_ndcg(row: dict, over: list[str]) -> float:
        return sum(row[n]["ndcg@10"] for n in over) / len(over)

    # Leave one set out: choose on the others, report on it.
    held_out = {}
    for name in names:
        rest = [n for n in names if n != name]
        best = max(grid, key=lambda r: mean_ndcg(r, rest))
        held_out[name] = {
            "chosen_on": rest,
            "config": {k: best[k] for k in ("fusion", "bm25_weight", "sentence_weight")},
            "held_out": best[name],
        }
    best = max(grid, key=lambda r: mean_ndcg(r, names))
    chosen = {k: best[k] for k in ("fusion", "bm25_weight", "sentence_weight")}

    # Split halves: choose on the even-numbered questions of every set, report on the odd ones.
    def on_half(row: dict, half: int) -> dict:
        args_ = (row["fusion"], row["bm25_weight"], row["sentence_weight"])
        return {name: c.run(*args_, half=half) for name, c in sets.items()}

    halves = [(row, on_half(row, 0)) for row in grid]
    tuned_row, tuned_metrics = max(halves, key=lambda rm: sum(m["ndcg@10"] for m in rm[1].values()))
    split_halves = {
        "config": {k: tuned_row[k] for k in ("fusion", "bm25_weight", "sentence_weight")},
        "tuned_on_even": tuned_metrics,
        "reported_on_odd": on_half(tuned_row, 1),
    }

    # Per-query adaptive weighting around the chosen configuration, vs the fixed weight.
    adaptive = []
    for kind in ("margin", "z-margin"):
        row = {"adaptive": kind, **chosen}
        for name, c in sets.items():
            row[name] = c.run(chosen["fusion"], chosen["bm25_weight"], chosen["sentence_weight"], adaptive=kind)
        adaptive.append(row)

    # BM25 variants (BM25 alone, over the same candidate pipeline).
    bm25_variants = []
    for method, k1, b in (("lucene", 1.2, 0.75), ("robertson", 1.2, 0.75), ("atire", 1.2, 0.75),
                          ("bm25+", 1.2, 0.75), ("lucene", 0.9, 0.4), ("lucene", 1.5, 0.9)):
        row = {"method": method, "k1": k1, "b": b}
        for name, (corpus, queries) in data.items():
            row[name] = bm25_only(Candidates(corpus, queries, embed, k1=k1, b=b, method=method))
        bm25_variants.append(row)
        print(f"bm25 {method} k1={k1} b={b}: " + "  ".join(f"{n} {row[n]['ndcg@10']:.4f}" for n in names),
              file=sys.stderr, flush=True)

    report = {
        "command": " ".join(["python", *sys.argv]),
        "candidates": CANDIDATES,
        "selection": "highest mean nDCG@10 over all sets; leave_one_set_out: chosen on the other sets",
        "chosen": chosen,
        "chosen_metrics": {n: best[n] for n in names},
        "leave_one_set_out": held_out,
        "split_halves": split_halves,
        "adaptive": adaptive,
        "bm25_variants": bm25_variants,
        "grid": grid,
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")

    print(f"{'fusion':7} {'w_bm25':>6} {'sent':>5} | " + " | ".join(f"{n[:15]:>15} nDCG  R@1" for n in names))
    top = sorted(grid, key=lambda r: -mean_ndcg(r, names))[:15]
    for r in top:
        cells = " | ".join(f"{r[n]['ndcg@10']:20.4f} {r[n]['recall@1']:.3f}" for n in names)
        print(f"{r['fusion']:7} {r['bm25_weight']:>6} {r['sentence_weight']:>5} | {cells}")
    print(f"\nchosen (mean nDCG@10 over {names}): {chosen}")
    for name, h in held_out.items():
        m = h["held_out"]
        print(f"held out {name}: chosen on {h['chosen_on']} -> {h['config']}: "
              f"nDCG@10 {m['ndcg@10']:.4f} R@1 {m['recall@1']:.3f}")
    odd = split_halves["reported_on_odd"]
    print(f"split halves: chosen on even questions -> {split_halves['config']}; odd questions: "
          + "  ".join(f"{n} nDCG@10 {odd[n]['ndcg@10']:.4f} R@1 {odd[n]['recall@1']:.3f}" for n in names))
    for r in adaptive:
        print(f"adaptive {r['adaptive']}: " + "  ".join(f"{n} {r[n]['ndcg@10']:.4f}" for n in names))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
