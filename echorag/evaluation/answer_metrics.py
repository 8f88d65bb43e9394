"""Answer quality metrics: containment of a gold answer, Kiwi content-morpheme token F1,
citation precision and abstention.

Small pure functions, shared by ``echorag eval-answers`` and the learning loop's gate.
Citation markers (``[1]``, ``[1, 2]``) are stripped before an answer is compared with a
reference, so an answer is not rewarded or punished for citing.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

from echorag.answering.prompts import NO_ANSWER
from echorag.korean import morphemes_many, normalize

_CITATION = re.compile(r"\[\s*(\d+(?:\s*,\s*\d+)*)\s*\]")
_CITATION_MARK = re.compile(r"\[\s*\d+(?:\s*,\s*\d+)*\s*\]")  # the same, nothing captured
# Dropped before containment: spacing and punctuation that varies between a quote, a
# paraphrase and a gold span. Symbols that carry meaning (%, ~, <, >, units) stay.
_DROPPED = re.compile(r"[\s.,!?;:'\"`()\[\]{}「」『』《》〈〉“”‘’·ㆍ…\-–—/\\]")
# A decimal point between digits is part of the number: "5.8" is not "58".
_DECIMAL = re.compile(r"(?<=\d)\.(?=\d)")
_DECIMAL_MARK = "\uE000"  # a private-use character that survives _DROPPED


def quoted_pieces(text: str) -> list[str]:
    """The stretches of an answer between its ``[n]`` markers (each quote or short answer)."""
    return [piece.strip() for piece in _CITATION_MARK.split(text) if piece.strip()]


def strip_citations(text: str) -> str:
    """The answer without its ``[n]`` markers."""
    return re.sub(r"[ \t]+", " ", _CITATION.sub("", text)).strip()


def cited_numbers(text: str) -> list[int]:
    """Passage numbers cited as ``[n]`` (or ``[n, m]``), first occurrence order."""
    numbers: list[int] = []
    for match in _CITATION.finditer(text):
        numbers += [int(n) for n in match.group(1).split(",")]
    return list(dict.fromkeys(numbers))


def normalize_answer(text: str) -> str:
    """NFC, lower case, no citations, no spacing or punctuation (decimal points kept)."""
    text = strip_citations(normalize(text)).lower()
    text = _DECIMAL.sub(_DECIMAL_MARK, text)
    return _DROPPED.sub("", text).replace(_DECIMAL_MARK, ".")


def contains(prediction: str, references: Iterable[str]) -> bool:
    """Whether some non-empty reference appears, normalised, inside the prediction."""
    answer = normalize_answer(prediction)
    return any(ref and ref in answer for ref in map(normalize_answer, references))


def content_terms(texts: Sequence[str]) -> list[list[str]]:
    """Kiwi content morphemes (nouns, numbers, verb lemmas…) of each text, citations removed."""
    return morphemes_many([strip_citations(t) for t in texts])


def _f1(predicted: Counter, reference: Counter) -> float:
    overlap = sum((predicted & reference).values())
    if not overlap:
        return 0.0
    precision = overlap / sum(predicted.values())
    recall = overlap / sum(reference.values())
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, references: str | Iterable[str]) -> float:
    """Best F1 of the prediction's content morphemes against any reference's (bags of
    morphemes, as SQuAD's token F1). 0.0 when either side has no content morpheme."""
    refs = [references] if isinstance(references, str) else [r for r in references if r]
    if not refs:
        return 0.0
    terms = content_terms([prediction, *refs])
    predicted = Counter(terms[0])
    if not predicted:
        return 0.0
    return max(_f1(predicted, Counter(ref)) for ref in terms[1:])


def abstained(text: str) -> bool:
    """Whether the answer declines: it says the documents hold no answer."""
    answer = normalize_answer(text)
    return normalize_answer(NO_ANSWER) in answer or "답을찾을수없" in answer


def citation_precision(prediction: str, passage_doc_ids: Sequence[str | None], relevant_ids: Iterable[str]) -> float | None:
    """Share of cited ``[n]`` whose passage (``passage_doc_ids[n - 1]``, the document id of
    the n-th passage in the prompt) is a relevant document. A number outside the prompt
    counts as wrong. None when the answer cites nothing."""
    cited = cited_numbers(prediction)
    if not cited:
        return None
    relevant = set(relevant_ids)
    good = sum(1 for n in cited if 1 <= n <= len(passage_doc_ids) and passage_doc_ids[n - 1] in relevant)
    return good / len(cited)
