"""Choose how much the corpus's token bigrams weigh when bag_of_tokens orders a recovered
bag (``echorag.inversion.token_bag.BIGRAM_WEIGHT``), on held-out sentences of the sample knowledge
base: never on the evaluation targets.

    python -m bench.inversion_tune --model DIR [--weights 0 0.5 1 2 4]   # writes bench/results/inversion_tuning.json

Leave-documents-out: the documents are split into folds; for each fold the restorer's
corpus is the other documents, and sentences of 6-25 morphemes of the held-out ones are
the targets. The token bag is recovered once per sentence; only its ordering changes with
the weight. DIR: a model whose embedder pools ``input_embedding_mean`` (bench/inversion.py
builds the tiny ones with ``--models``).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from echorag.documents import read_jsonl, sample_path
from echorag.inversion import (
    LanguageModel,
    TokenBigrams,
    corpus_sentences,
    eval_morphemes,
    order_tokens,
    recover_token_bag,
    token_f1,
)
from echorag.inversion.token_bag import _leading_special
from echorag.korean import split_sentences
from echorag.retrieval.embedding import KananaEmbedder

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--per-fold", type=int, default=10, help="held-out sentences per fold")
    parser.add_argument("--beam", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    embedder = KananaEmbedder(str(args.model), pooling="input_embedding_mean", device="cpu")
    lm = LanguageModel.load(str(args.model))
    table = embedder.model.get_input_embeddings().weight.detach().float().numpy()
    bos = _leading_special(embedder.tokenizer)

    docs = [row["text"] for row in read_jsonl(sample_path("sample_kb.jsonl"))]
    order = list(range(len(docs)))
    random.Random(1).shuffle(order)
    scores: dict[float, list[float]] = {w: [] for w in args.weights}
    started = time.perf_counter()
    for fold in range(args.folds):
        held = set(order[fold :: args.folds])
        corpus = [d for i, d in enumerate(docs) if i not in held]
        bigrams = TokenBigrams.fit(embedder.tokenizer, corpus_sentences(corpus))
        candidates = [s for i in sorted(held) for s in split_sentences(docs[i]) if 6 <= len(eval_morphemes(s)) <= 25]
        for sentence in random.Random(fold).sample(candidates, min(args.per_fold, len(candidates))):
            bag, _ = recover_token_bag(table, embedder.embed_passages([sentence])[0], bos_id=bos, beam=args.beam)
            for weight in args.weights:
                ordered = order_tokens(lm, bag, bigrams=bigrams, bigram_weight=weight)
                scores[weight].append(token_f1(sentence, embedder.tokenizer.decode(ordered, skip_special_tokens=True)))
        print(f"fold {fold + 1}/{args.folds}: " + "  ".join(f"w={w}: {np.mean(s):.3f}" for w, s in scores.items()),
              flush=True)
    report = {
        "command": "python -m bench.inversion_tune " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                                                if k != "weights"),
        "model": args.model.name, "sentences": len(scores[args.weights[0]]),
        "token_f1_by_weight": {str(w): round(float(np.mean(s)), 4) for w, s in scores.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    report["best_weight"] = max(args.weights, key=lambda w: np.mean(scores[w]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "inversion_tuning.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
