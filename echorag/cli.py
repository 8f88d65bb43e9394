"""The ``echorag`` command.

Commands that change a running service talk to it over HTTP (``--url``);
``eval-retrieval``, ``build-tiny-model`` and ``reindex`` work in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import httpx
from tqdm import tqdm

DEFAULT_URL = os.environ.get("ECHORAG_URL", "http://127.0.0.1:8000")


class CommandError(Exception):
    """A user-facing failure: printed without a traceback, exit code 1."""


def _admin_token() -> str | None:
    """ECHORAG_ADMIN_TOKEN, else the token a local server generated in its data dir."""
    if token := os.environ.get("ECHORAG_ADMIN_TOKEN"):
        return token
    from echorag.config import load_settings
    from echorag.security import TOKEN_FILE

    path = load_settings().data_dir / TOKEN_FILE
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def _client(args) -> httpx.Client:
    headers = {}
    if token := _admin_token():
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(base_url=args.url, headers=headers, timeout=args.timeout)


def _call(client: httpx.Client, method: str, path: str, **kwargs) -> dict:
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise CommandError(f"cannot reach EchoRAG at {client.base_url}: {exc}") from None
    if response.is_error:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        raise CommandError(f"{method} {path} failed ({response.status_code}): {message}")
    return response.json()


def cmd_ingest(args) -> None:
    from echorag.documents import read_documents, sample_path

    paths = list(args.paths) + ([sample_path()] if args.sample else [])
    if not paths:
        raise CommandError("give files or folders to ingest, or --sample")
    try:
        documents = read_documents(paths)
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    if not documents:
        raise CommandError("no non-empty documents found")
    ids, chunks = [], 0
    with _client(args) as client, tqdm(total=len(documents), desc="ingesting", unit="doc") as bar:
        for start in range(0, len(documents), args.batch_size):
            part = documents[start : start + args.batch_size]
            result = _call(client, "POST", "/documents", json={"documents": part})
            ids += result["ids"]
            chunks += result["chunks"]
            bar.update(len(part))
    print(json.dumps({"documents": len(ids), "chunks": chunks, "total_documents": result["total_documents"]}))


def cmd_eval_retrieval(args) -> None:
    from echorag.config import load_settings
    from echorag.documents import read_jsonl, sample_path
    from echorag.retrieval_eval import MODES, RetrievalBench

    corpus = read_jsonl(args.corpus or sample_path("sample_kb.jsonl"))
    queries = read_jsonl(args.queries or sample_path("dev_queries.jsonl"))
    if args.limit:
        queries = queries[: args.limit]
    overrides = {k: getattr(args, k) for k in ("fusion", "bm25_weight", "dense_weight", "chunk_size", "chunk_overlap")}
    bench = RetrievalBench(corpus, load_settings(**overrides))
    try:
        report = bench.run(queries, args.modes or MODES)
        report["index"] = {"documents": len(corpus), "chunks": bench.chunks, "build_seconds": round(bench.index_seconds, 2)}
        if args.sweep:
            weights = [round(w / 10, 1) for w in range(0, 11)]
            rows = bench.sweep(queries, weights)
            report["sweep"] = rows
            print(f"{'fusion':6} {'w_bm25':>6} {'nDCG@10':>8} {'R@1':>6} {'R@5':>6} {'MRR@10':>7}", file=sys.stderr)
            for r in rows:
                print(
                    f"{r['fusion']:6} {r['bm25_weight']:>6} {r['ndcg@10']:>8.4f} {r['recall@1']:>6.3f} "
                    f"{r['recall@5']:>6.3f} {r['mrr@10']:>7.4f}",
                    file=sys.stderr,
                )
    finally:
        bench.close()
    print(json.dumps(report, ensure_ascii=False, indent=2))


def cmd_build_tiny_model(args) -> None:
    from echorag.config import load_settings
    from echorag.models import build_tiny_model, tiny_model_dir

    out = Path(args.out) if args.out else tiny_model_dir(load_settings().models_dir)
    print(build_tiny_model(out, seed=args.seed))


def cmd_reindex(args) -> None:
    from echorag.config import load_settings
    from echorag.embedding import make_embedder
    from echorag.store import connect, reindex

    settings = load_settings()
    embedder = make_embedder(settings)
    with tqdm(desc=f"re-embedding with {embedder.id}", unit="item") as bar:
        counts = reindex(connect(settings), embedder, progress=bar.update)
    print(json.dumps(counts))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="echorag", description="EchoRAG: Korean RAG chat that learns.")
    parser.add_argument("--url", default=DEFAULT_URL, help="server URL (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=120.0, help="HTTP timeout in seconds")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="index .txt/.md/.jsonl files or folders into a running server")
    p.add_argument("paths", nargs="*")
    p.add_argument("--sample", action="store_true", help="also ingest the bundled Korean sample knowledge base")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("eval-retrieval", help="measure retrieval (bm25, dense, hybrid) in-process")
    p.add_argument("--corpus", help="corpus JSONL (default: the bundled sample knowledge base)")
    p.add_argument("--queries", help="queries JSONL (default: the bundled dev set)")
    p.add_argument("--modes", nargs="+", choices=["bm25", "dense", "hybrid"])
    p.add_argument("--fusion", choices=["rrf", "score"])
    p.add_argument("--bm25-weight", type=float)
    p.add_argument("--dense-weight", type=float)
    p.add_argument("--chunk-size", type=int)
    p.add_argument("--chunk-overlap", type=int)
    p.add_argument("--limit", type=int, help="only the first N queries")
    p.add_argument("--sweep", action="store_true", help="also try a grid of fusion weights")
    p.set_defaults(func=cmd_eval_retrieval)

    p = sub.add_parser("build-tiny-model", help="build the tiny offline Korean demo model")
    p.add_argument("--out", help="output directory (default: $ECHORAG_DATA_DIR/models/tiny-ko)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_build_tiny_model)

    p = sub.add_parser("reindex", help="re-embed stored texts after changing the embedder (server stopped)")
    p.set_defaults(func=cmd_reindex)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except CommandError as exc:
        print(f"echorag: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
