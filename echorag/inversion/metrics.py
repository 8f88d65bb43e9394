"""How close a restoration is to its target, over Kiwi morphemes: token F1, BLEU, exact match."""

from __future__ import annotations

import math
from collections import Counter

from echorag.korean import get_kiwi, normalize

_PUNCT_TAGS = ("SF", "SP", "SS", "SE", "SO", "SW")


def eval_morphemes(text: str) -> list[str]:
    """Kiwi morpheme forms (punctuation left out): the unit of token F1 and BLEU."""
    return [t.form.lower() for t in get_kiwi().tokenize(normalize(text)) if not t.tag.startswith(_PUNCT_TAGS)]


def token_f1(reference: str, hypothesis: str) -> float:
    """F1 of the morpheme multisets (order-free)."""
    ref, hyp = Counter(eval_morphemes(reference)), Counter(eval_morphemes(hypothesis))
    overlap = sum((ref & hyp).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(hyp.values()), overlap / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def bleu(reference: str, hypothesis: str, max_n: int = 4) -> float:
    """Sentence BLEU over morphemes, add-one smoothing for n > 1 (Lin & Och 2004)."""
    ref, hyp = eval_morphemes(reference), eval_morphemes(hypothesis)
    if not ref or not hyp:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        hyp_ngrams = Counter(tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1))
        ref_ngrams = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
        matches, total = sum((hyp_ngrams & ref_ngrams).values()), max(len(hyp) - n + 1, 0)
        smooth = 0 if n == 1 else 1
        if matches + smooth == 0:
            return 0.0
        log_precision += math.log((matches + smooth) / (total + smooth)) / max_n
    brevity = min(0.0, 1 - len(ref) / len(hyp))
    return math.exp(brevity + log_precision)


def exact_match(reference: str, hypothesis: str) -> bool:
    """Same text up to spacing and punctuation (Kiwi joins morphemes with its own spacing)."""
    return eval_morphemes(reference) == eval_morphemes(hypothesis)
