"""The ``bag_of_morphemes`` restorer (Song & Raghunathan 2020): a linear decoder from a vector
to morpheme counts, fitted on the corpus, and a Kiwi join of the decoded bag into words."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from echorag.inversion.metrics import _PUNCT_TAGS, eval_morphemes
from echorag.korean import get_kiwi

# Chosen by leave-documents-out cross-validation on the sample knowledge base (5 folds,
# held-out sentences of 6-25 morphemes), not on the evaluation targets.
PROBE_WEIGHT, PROBE_Z, LENGTH_SCALE, RIDGE = 0.2, 2.0, 0.8, 0.01


def random_spans(sentences: list[str], per_sentence: int, rng: random.Random) -> list[str]:
    """Runs of 2-12 words from each sentence: more (text, vector) pairs for the decoder."""
    spans = []
    for sentence in sentences:
        words = sentence.split()
        for _ in range(per_sentence if len(words) > 2 else 0):
            n = rng.randint(2, 12)
            start = rng.randrange(max(1, len(words) - n + 1))
            spans.append(" ".join(words[start : start + n]))
    return spans


@dataclass
class MorphemeDecoder:
    """Vector -> expected count of every morpheme (Kiwi form and tag), by ridge regression
    fitted in closed form, with the text's expected length in the last column."""

    vocab: list[tuple[str, str]]
    weights: np.ndarray  # (dim + 1, len(vocab) + 1)
    positions: np.ndarray  # mean relative position of each morpheme in its texts
    unit_vectors: np.ndarray  # each morpheme embedded alone: a target-specific probe

    @classmethod
    def fit(cls, texts: list[str], vectors: np.ndarray, embed: Callable[[list[str]], np.ndarray]) -> "MorphemeDecoder":
        index: dict[tuple[str, str], int] = {}
        rows, cols, where = [], [], []
        for row, tokens in enumerate(get_kiwi().tokenize(texts)):
            units = [(t.form, t.tag) for t in tokens if not t.tag.startswith(_PUNCT_TAGS)]
            for position, unit in enumerate(units):
                rows.append(row)
                cols.append(index.setdefault(unit, len(index)))
                where.append(position / max(len(units) - 1, 1))
        rows_a, cols_a = np.array(rows, int), np.array(cols, int)
        x = np.hstack([vectors, np.ones((len(vectors), 1), np.float32)]).astype(np.float64)
        # X^T Y without the dense (texts x vocabulary) count matrix; the last column is length.
        xty = np.zeros((len(index) + 1, x.shape[1]))
        np.add.at(xty, cols_a, x[rows_a])
        xty[-1] = np.bincount(rows_a, minlength=len(x)) @ x
        gram = x.T @ x + RIDGE * np.eye(x.shape[1])
        weights = np.linalg.solve(gram, xty.T).astype(np.float32)
        positions = np.bincount(cols_a, weights=where, minlength=len(index)) / np.bincount(cols_a, minlength=len(index))
        vocab = list(index)
        return cls(vocab, weights, positions, embed([form for form, _ in vocab]))

    def decode(self, target: np.ndarray, limit: int = 200) -> list[tuple[str, str]]:
        predicted = np.append(target, 1.0).astype(np.float32) @ self.weights
        counts, length = np.clip(predicted[:-1], 0, None), max(float(predicted[-1]), 1.0)
        probes = self.unit_vectors @ target
        z = (probes - probes.mean()) / (probes.std() + 1e-9)
        scores = counts + PROBE_WEIGHT * np.clip(z - PROBE_Z, 0, None)
        # Every copy of a morpheme is an item, as likely as what remains of its expected count.
        items = sorted(
            ((min(1.0, float(scores[j]) - copy), int(j)) for j in np.argsort(-scores)[:limit]
             for copy in range(3) if scores[j] - copy > 0.05),
            reverse=True,
        )
        # Keep the k likeliest items that maximise the expected F1, 2 * sum(p) / (k + length).
        best_k, best, total = 0, 0.0, 0.0
        for k, (p, _) in enumerate(items, 1):
            total += p
            if (f1 := 2 * total / (k + LENGTH_SCALE * length)) > best:
                best_k, best = k, f1
        chosen = sorted((j for _, j in items[:best_k]), key=lambda j: self.positions[j])
        return [self.vocab[j] for j in chosen]


def join_morphemes(units: list[tuple[str, str]]) -> str:
    """Words from morphemes, greedily: each morpheme either attaches to the last word (Kiwi
    joins it: particles, endings) or starts a new one, whichever keeps more of the morphemes
    placed so far when the text is read back; a bag in typical order is not a sentence,
    and a blind join fuses morphemes into words Kiwi reads differently."""
    kiwi = get_kiwi()
    words: list[list[tuple[str, str]]] = []

    def render(candidate: list[list[tuple[str, str]]]) -> str | None:
        try:
            return " ".join(kiwi.join(word) for word in candidate)
        except Exception:
            return None

    for i, unit in enumerate(units):
        placed = Counter(form.lower() for form, _ in units[: i + 1])
        options = [words + [[unit]]] + ([words[:-1] + [words[-1] + [unit]]] if words else [])
        if unit[1].startswith(("J", "E", "XS", "VCP")):
            options.reverse()  # on a tie, a particle or an ending attaches
        best, best_kept = options[0], -1
        for option in options:
            text = render(option)
            kept = -1 if text is None else sum((placed & Counter(eval_morphemes(text))).values())
            if kept > best_kept:
                best, best_kept = option, kept
        words = best
    return render(words) or " ".join(form for form, _ in units)
