"""Commands that work on this machine without a server: the tiny model, re-indexing."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm


def cmd_build_tiny_model(args) -> None:
    from echorag.config import load_settings
    from echorag.tiny_model import build_tiny_model, tiny_model_dir

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


def register(sub) -> None:
    p = sub.add_parser("build-tiny-model", help="build the tiny offline Korean demo model")
    p.add_argument("--out", help="output directory (default: $ECHORAG_DATA_DIR/models/tiny-ko)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_build_tiny_model)

    p = sub.add_parser("reindex", help="re-embed stored texts after changing the embedder (server stopped)")
    p.set_defaults(func=cmd_reindex)
