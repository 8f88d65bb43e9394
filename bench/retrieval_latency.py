"""Retrieval latency per query on a 1,000-document Korean corpus, with the defaults.

    python bench/retrieval_latency.py [--data ../shared/data] [--cache DIR] [--repeats 3]

Corpus: 1,000 kobest_boolq_ko paragraphs (the relevant ones of the first 500 questions,
then the other paragraphs in id order); queries: those 500 questions. Each repeat embeds
every query live, one at a time (as the service does), then runs hybrid search; the
figures are the median over repeats of each repeat's p50/p95, so one noisy moment on a
shared machine does not decide them. Writes bench/results/retrieval_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from echorag.config import load_settings  # noqa: E402
from echorag.documents import read_jsonl  # noqa: E402
from echorag.evaluation.retrieval import RetrievalBench  # noqa: E402
from echorag.retrieval.embedding import VectorCache, make_embedder  # noqa: E402


def subset(data: Path, documents: int = 1000, questions: int = 500) -> tuple[list[dict], list[dict]]:
    corpus = read_jsonl(data / "kobest_boolq_ko" / "corpus.jsonl")
    queries = read_jsonl(data / "kobest_boolq_ko" / "queries.jsonl")[:questions]
    keep = dict.fromkeys(doc_id for q in queries for doc_id in q["relevant_ids"])
    for doc in sorted(corpus, key=lambda d: d["id"]):
        if len(keep) >= documents:
            break
        keep.setdefault(doc["id"])
    return [d for d in corpus if d["id"] in keep], queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cache", type=Path, help="keep passage vectors here (echorag.retrieval.embedding.VectorCache)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    settings = load_settings()
    embedder = make_embedder(settings)
    if args.cache:
        # passages from disk; queries embedded live (max_items=0: nothing kept in memory)
        embedder = VectorCache(embedder, max_items=0, path=args.cache)
    corpus, queries = subset(args.data)
    started = time.perf_counter()
    bench = RetrievalBench(corpus, settings, progress=False, embedder=embedder)
    repeats = []
    try:
        for _ in range(args.repeats):
            bench._query_vectors.clear()  # embed every query again: its time is part of the latency
            report = bench.run(queries, progress=False)
            repeats.append({mode: {k: report[mode][k] for k in ("ndcg@10", "recall@1", "p50_search_ms",
                                                                  "p50_query_ms", "p95_query_ms")}
                            for mode in report})
    finally:
        bench.close()
    median = {
        mode: {key: statistics.median(r[mode][key] for r in repeats) for key in repeats[0][mode]}
        for mode in repeats[0]
    }
    result = {
        "command": " ".join(["python", *sys.argv]),
        "documents": len(corpus), "chunks": bench.chunks, "queries": len(queries),
        "index_seconds": round(bench.index_seconds, 1) if not args.cache else "cached (not timed)",
        "defaults": {k: getattr(settings, k) for k in ("fusion", "bm25_weight", "dense_weight", "sentence_weight")},
        "median_over_repeats": median,
        "repeats": repeats,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset (all cores)"),
        "load_average_after": os.getloadavg(),
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    out = REPO / "bench" / "results" / "retrieval_latency.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for mode, m in median.items():
        print(f"{mode:6}: p50 {m['p50_query_ms']:.1f} ms (search {m['p50_search_ms']:.1f} ms), "
              f"p95 {m['p95_query_ms']:.1f} ms, nDCG@10 {m['ndcg@10']:.4f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
