"""Commands that work on this machine without a server: the tiny model, re-indexing."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm


def cmd_build_tiny_model(args) -> None:
    from echorag.config import load_settings
    from echorag.models.tiny_model import build_tiny_model, tiny_model_dir

    models_dir = load_settings().models_dir
    if args.size == "tiny":
        if args.corpus:
            raise SystemExit("--corpus is for --size small: the tiny model is built from the project's own text")
        print(build_tiny_model(Path(args.out) if args.out else tiny_model_dir(models_dir), seed=args.seed))
        return
    from echorag.models.small_model import build_small_model, small_model_dir

    missing = [c for c in args.corpus if not Path(c).is_file()]
    if missing:
        raise SystemExit(f"corpus not found: {', '.join(missing)}")
    out = Path(args.out) if args.out else small_model_dir(models_dir)
    with tqdm(desc="pretraining the small student", unit="step") as bar:

        def progress(step: int, total: int, loss: float) -> None:
            bar.total = total
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            bar.update(step - bar.n)

        print(build_small_model(out, [Path(c) for c in args.corpus], seed=args.seed, progress=progress))


def cmd_reindex(args) -> None:
    from echorag.config import load_settings
    from echorag.retrieval.embedding import make_embedder
    from echorag.retrieval.vector_store import connect, reindex

    settings = load_settings()
    embedder = make_embedder(settings)
    with tqdm(desc=f"re-embedding with {embedder.id}", unit="item") as bar:
        counts = reindex(connect(settings), embedder, progress=bar.update)
    print(json.dumps(counts))


def register(sub) -> None:
    p = sub.add_parser("build-tiny-model", help="build the tiny offline Korean demo model (or the small student)")
    p.add_argument("--size", choices=["tiny", "small"], default="tiny",
                   help="tiny: the demo model, seconds; small: a student that can learn to quote (echorag.models.small_model), "
                        "about 25 minutes on 2 CPU cores")
    p.add_argument("--corpus", action="append", default=[], metavar="JSONL",
                   help="with --size small: Korean text to pretrain on (a 'text' field per line); repeatable")
    p.add_argument("--out", help="output directory (default: $ECHORAG_DATA_DIR/models/tiny-ko or small-ko)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_build_tiny_model)

    p = sub.add_parser("reindex", help="re-embed stored texts after changing the embedder (server stopped)")
    p.set_defaults(func=cmd_reindex)
