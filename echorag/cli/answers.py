"""``echorag eval-answers``: measure answers (containment, token F1, citations, abstention)
in-process, through the service's own retrieval, answer selector, pipeline and backend."""

from __future__ import annotations

import json


def cmd_eval_answers(args) -> None:
    from echorag.answering.selector import AnswerSelector
    from echorag.config import load_settings
    from echorag.documents import read_jsonl, sample_path
    from echorag.evaluation.answers import AnswerBench, make_generator, select_split

    corpus = read_jsonl(args.corpus or sample_path("sample_kb.jsonl"))
    queries = select_split(read_jsonl(args.queries or sample_path("dev_queries.jsonl")), args.split)
    if args.limit:
        queries = queries[: args.limit]
    settings = load_settings(top_k=args.top_k)
    selector = AnswerSelector.load(args.selector) if args.selector else AnswerSelector.base()
    generator = make_generator(args.backend, settings, args.model)
    bench = AnswerBench(corpus, settings, generator=generator, selector=selector)
    try:
        report = bench.ask(queries)
    finally:
        bench.close()
    rows = report.pop("rows")
    report["backend"] = {"kind": generator.kind, "name": generator.name}
    report["selector"] = selector.version
    report["settings"] = {"top_k": settings.top_k, "extractive_max_sentences": settings.extractive_max_sentences}
    report["split"] = args.split
    if args.rows:
        report["rows"] = rows
    print(json.dumps(report, ensure_ascii=False, indent=2))


def register(sub) -> None:
    p = sub.add_parser("eval-answers", help="measure answers (containment, token F1, citations, abstention) in-process")
    p.add_argument("--corpus", help="corpus JSONL (default: the bundled sample knowledge base)")
    p.add_argument("--queries", help="queries JSONL with answer/answers (default: the bundled dev set)")
    p.add_argument("--backend", choices=["extractive", "local", "openai"], default="extractive")
    p.add_argument("--model", help="model spec for local (auto, tiny, a hub id or directory) or openai")
    p.add_argument("--split", choices=["dev", "test", "all"], default="all",
                   help="half of the queries by their split field (queries without one are always in)")
    p.add_argument("--selector", help="an answer selector version's JSON file (default: the base version)")
    p.add_argument("--top-k", type=int, help="passages per question (default: settings.top_k)")
    p.add_argument("--limit", type=int, help="only the first N queries")
    p.add_argument("--rows", action="store_true", help="also print every query's answer and scores")
    p.set_defaults(func=cmd_eval_answers)
