"""``echorag eval-inversion``: how much of a text can be restored from its stored vector?"""

from __future__ import annotations

import json
import sys

from echorag.cli.common import CommandError


def cmd_eval_inversion(args) -> None:
    from echorag.config import load_settings
    from echorag.documents import read_jsonl
    from echorag.inversion import METHODS, Inverter, default_lm, evaluate
    from echorag.retrieval.embedding import make_embedder
    from echorag.retrieval.rotation import unwrap

    targets = [row["text"] for row in read_jsonl(args.texts) if str(row.get("text", "")).strip()]
    if args.limit:
        targets = targets[: args.limit]
    corpus = [row["text"] for row in read_jsonl(args.corpus)] if args.corpus else []
    embedder = make_embedder(load_settings())  # the service's embedder, rotation included
    token_means = getattr(unwrap(embedder)[0], "pooling", None) == "input_embedding_mean"
    methods = args.method or [m for m in METHODS if token_means or m != "bag_of_tokens"]
    # The restorer: with the service's embedder (it holds any rotation key) or, to measure
    # the defence, with the public model alone.
    restorer_embedder = unwrap(embedder)[0] if args.without_key else embedder
    lm = default_lm(embedder) if "bag_of_tokens" in methods else None
    if "bag_of_tokens" in methods and not token_means:
        raise CommandError("bag_of_tokens needs ECHORAG_EMBEDDER=kanana and ECHORAG_EMBEDDER_POOLING=input_embedding_mean")
    if {"nearest", "bag_of_morphemes", "iterative"} & set(methods) and not corpus:
        raise CommandError("nearest, bag_of_morphemes and iterative need --corpus (texts the restorer may consult)")
    service = Inverter(embedder, corpus=corpus, lm=lm)
    attacker = Inverter(restorer_embedder, corpus=corpus, lm=lm) if args.without_key else None

    def progress(method: str, done: int) -> None:
        print(f"\r{method}: {done}/{len(targets)}", end="\n" if done == len(targets) else "", file=sys.stderr, flush=True)

    try:
        report = evaluate(service, targets, methods, args.budget, args.side, attacker, progress)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    print(json.dumps(report, ensure_ascii=False, indent=2))


def register(sub) -> None:
    p = sub.add_parser("eval-inversion", help="restore texts from their vectors and score the restorations")
    p.add_argument("--texts", required=True, help="JSONL of target texts ({\"text\"} per line)")
    p.add_argument("--corpus", help="JSONL of texts the restorer may consult (must not contain the targets)")
    p.add_argument("--method", nargs="+", choices=["nearest", "bag_of_tokens", "bag_of_morphemes", "iterative"],
                   help="default: every method the embedder allows")
    p.add_argument("--budget", type=int, help="nearest: texts consulted; bag_of_tokens: beam width; "
                   "bag_of_morphemes: morphemes considered; iterative: texts embedded")
    p.add_argument("--side", choices=["passage", "query"], default="passage", help="how the targets are embedded")
    p.add_argument("--limit", type=int, help="only the first N targets")
    p.add_argument("--without-key", action="store_true",
                   help="restore with the public model only (measures ECHORAG_VECTOR_ROTATION_KEY)")
    p.set_defaults(func=cmd_eval_inversion)
