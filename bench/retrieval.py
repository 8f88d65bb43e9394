"""Retrieval benchmark: bm25 / dense / hybrid and a fusion-weight sweep on every
evaluation set, with the service's own code (``echorag.evaluation.retrieval``).

    python bench/retrieval.py [--data ../shared/data] [--cache DIR]   # writes bench/results/retrieval.{json,png}

``--cache`` keeps passage vectors on disk between runs (``echorag.retrieval.embedding.VectorCache``); queries
are always embedded live, one at a time, so the latency is what a user sees.

Sets: the bundled dev set (sample knowledge base + dev questions) and, when
present, the licensed Korean sets in ``--data`` (belebele_ko, kobest_boolq_ko).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from echorag.config import load_settings  # noqa: E402
from echorag.documents import read_jsonl, sample_path  # noqa: E402
from echorag.evaluation.retrieval import RetrievalBench  # noqa: E402
from echorag.retrieval.embedding import VectorCache, make_embedder  # noqa: E402

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]


def eval_sets(data: Path) -> dict[str, tuple[Path, Path]]:
    sets = {"dev (sample KB)": (sample_path("sample_kb.jsonl"), sample_path("dev_queries.jsonl"))}
    for name in ("belebele_ko", "kobest_boolq_ko"):
        if (data / name / "corpus.jsonl").is_file():
            sets[name] = (data / name / "corpus.jsonl", data / name / "queries.jsonl")
    return sets


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["sets"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        for method, style in (("rrf", "o-"), ("score", "s-"), ("zscore", "^-")):
            rows = [r for r in report["sets"][name]["sweep"] if r["fusion"] == method]
            ax.plot([r["bm25_weight"] for r in rows], [r["ndcg@10"] for r in rows], style, label=f"hybrid ({method})")
        ax.axhline(report["sets"][name]["modes"]["bm25"]["ndcg@10"], color="tab:red", ls=":", label="bm25 only")
        ax.axhline(report["sets"][name]["modes"]["dense"]["ndcg@10"], color="tab:green", ls=":", label="dense only")
        ax.axhline(report["sets"][name]["modes"]["hybrid"]["ndcg@10"], color="black", lw=0.8, label="hybrid (defaults)")
        ax.set_title(name)
        ax.set_xlabel("BM25 weight (dense = 1 - w)")
        ax.set_ylabel("nDCG@10")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cache", type=Path, help="keep passage vectors here (echorag.retrieval.embedding.VectorCache)")
    parser.add_argument("--sets", nargs="+", help="only these sets")
    args = parser.parse_args()
    settings = load_settings()
    embedder = None
    if args.cache:
        # passages from disk; queries embedded live (max_items=0: nothing kept in memory)
        embedder = VectorCache(make_embedder(settings), max_items=0, path=args.cache)
    report = {
        "command": " ".join(["python", *sys.argv]),
        "defaults": {"fusion": settings.fusion, "bm25_weight": settings.bm25_weight,
                     "dense_weight": settings.dense_weight, "sentence_weight": settings.sentence_weight,
                     "chunk_size": settings.chunk_size, "chunk_overlap": settings.chunk_overlap},
        "sets": {},
    }
    weights = [round(w / 10, 1) for w in range(11)]
    for name, (corpus, queries) in eval_sets(args.data).items():
        if args.sets and name not in args.sets:
            continue
        queries_rows = read_jsonl(queries)
        bench = RetrievalBench(read_jsonl(corpus), settings, embedder=embedder)
        try:
            modes = bench.run(queries_rows)
            sweep = bench.sweep(queries_rows, weights)
        finally:
            bench.close()
        report["sets"][name] = {
            "documents": len(read_jsonl(corpus)), "queries": len(queries_rows), "chunks": bench.chunks,
            "index_seconds": round(bench.index_seconds, 2), "modes": modes, "sweep": sweep,
        }
        line = "  ".join(f"{m}: nDCG@10 {modes[m]['ndcg@10']:.4f} R@1 {modes[m]['recall@1']:.3f}" for m in modes)
        print(f"{name}: {line}  (hybrid p50 {modes['hybrid']['p50_query_ms']} ms/query)", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "retrieval.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    plot(report, RESULTS / "retrieval.png")
    print(f"wrote {RESULTS / 'retrieval.json'} and retrieval.png")


if __name__ == "__main__":
    main()
