"""Commands that talk to a running server over HTTP (``--url``, admin token from the env)."""

from __future__ import annotations

import json

from tqdm import tqdm

from echorag.cli.common import CommandError, call, client


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
    with client(args) as http, tqdm(total=len(documents), desc="ingesting", unit="doc") as bar:
        for start in range(0, len(documents), args.batch_size):
            part = documents[start : start + args.batch_size]
            result = call(http, "POST", "/documents", json={"documents": part})
            ids += result["ids"]
            chunks += result["chunks"]
            bar.update(len(part))
    print(json.dumps({"documents": len(ids), "chunks": chunks, "total_documents": result["total_documents"]}))


def register(sub) -> None:
    p = sub.add_parser("ingest", help="index .txt/.md/.jsonl files or folders into a running server")
    p.add_argument("paths", nargs="*")
    p.add_argument("--sample", action="store_true", help="also ingest the bundled Korean sample knowledge base")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=cmd_ingest)
