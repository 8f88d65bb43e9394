"""``echorag eval-retrieval``: measure bm25, dense and hybrid retrieval in-process."""

from __future__ import annotations

import json
import sys


def cmd_eval_retrieval(args) -> None:
    from echorag.config import load_settings
    from echorag.documents import read_jsonl, sample_path
    from echorag.evaluation.retrieval import MODES, RetrievalBench

    corpus = read_jsonl(args.corpus or sample_path("sample_kb.jsonl"))
    queries = read_jsonl(args.queries or sample_path("dev_queries.jsonl"))
    if args.limit:
        queries = queries[: args.limit]
    fields = ("fusion", "bm25_weight", "dense_weight", "sentence_weight", "chunk_size", "chunk_overlap")
    overrides = {k: getattr(args, k) for k in fields}
    bench = RetrievalBench(corpus, load_settings(**overrides))
    try:
        report = bench.run(queries, args.modes or MODES)
        report["index"] = {"documents": len(corpus), "chunks": bench.chunks, "build_seconds": round(bench.index_seconds, 2)}
        s = bench.settings
        report["settings"] = {"fusion": s.fusion, "bm25_weight": s.bm25_weight, "dense_weight": s.dense_weight,
                              "sentence_weight": s.sentence_weight, "chunk_size": s.chunk_size,
                              "chunk_overlap": s.chunk_overlap}
        if args.sweep:
            weights = [round(w / 10, 1) for w in range(0, 11)]
            rows = bench.sweep(queries, weights)
            report["sweep"] = rows
            print(f"{'fusion':6} {'w_bm25':>6} {'nDCG@10':>8} {'R@1':>6} {'R@5':>6} {'MRR@10':>7} {'p50 ms':>7}",
                  file=sys.stderr)
            for r in rows:
                print(
                    f"{r['fusion']:6} {r['bm25_weight']:>6} {r['ndcg@10']:>8.4f} {r['recall@1']:>6.3f} "
                    f"{r['recall@5']:>6.3f} {r['mrr@10']:>7.4f} {r['p50_query_ms']:>7.1f}",
                    file=sys.stderr,
                )
    finally:
        bench.close()
    print(json.dumps(report, ensure_ascii=False, indent=2))


def register(sub) -> None:
    p = sub.add_parser("eval-retrieval", help="measure retrieval (bm25, dense, hybrid) in-process")
    p.add_argument("--corpus", help="corpus JSONL (default: the bundled sample knowledge base)")
    p.add_argument("--queries", help="queries JSONL (default: the bundled dev set)")
    p.add_argument("--modes", nargs="+", choices=["bm25", "dense", "hybrid"])
    p.add_argument("--fusion", choices=["rrf", "score", "zscore"])
    p.add_argument("--bm25-weight", type=float)
    p.add_argument("--dense-weight", type=float)
    p.add_argument("--sentence-weight", type=float, help="share of the best sentence in the dense score (0: off)")
    p.add_argument("--chunk-size", type=int)
    p.add_argument("--chunk-overlap", type=int)
    p.add_argument("--limit", type=int, help="only the first N queries")
    p.add_argument("--sweep", action="store_true", help="also try a grid of fusion weights")
    p.set_defaults(func=cmd_eval_retrieval)
