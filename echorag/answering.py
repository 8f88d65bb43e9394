"""Extractive answers: quote the retrieved sentences that answer the question, with ``[n]``.

``ExtractiveGenerator`` is a generator backend like ``LocalGenerator`` (same ``generate`` /
``stream`` / ``usage``) that needs no language model. It reads the chat messages that
``prompts.build_messages`` made (``parse_prompt`` is the exact inverse of
``prompts.format_passages``), scores every sentence of the document passages against the
question (``echorag.evidence``: IDF-weighted Kiwi morpheme coverage, e5 cosine, passage
rank, whether it states the amount asked for), and answers with the best 1–3 sentences
quoted verbatim, each followed by the ``[n]`` of its passage. A long sentence is cut to
the clauses that carry the question's terms. Below the evidence threshold it answers
exactly ``NO_ANSWER`` and cites nothing. Remembered turns (collection ``memory``) are
never quoted. Defaults: ``python bench/answers_tune.py`` (bench/results/answers_tuning.json).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from echorag.evidence import (
    AMOUNT_PENALTY,
    LEXICAL_WEIGHT,
    Analysis,
    Unit,
    VectorCache,
    analyse,
    answers_amount,
    unit_evidence,
)
from echorag.korean import get_kiwi, morphemes_many, normalize
from echorag.prompts import NO_ANSWER, NO_CONTEXT
from echorag.short_answers import NAMING_VERB, short_answer
from echorag.types import Generation

_CONTEXT_PREFIX = "참고 문서:\n"
_QUESTION_SEPARATOR = "\n\n질문: "
# "[n]", "[n] 제목: T", "[n] 출처: C" or "[n] 제목: T · 출처: C", then the passage's text.
_HEADER = re.compile(r"\[(\d+)\](?: ((?:제목|출처): [^\n]*))?\n")
_TITLE, _SOURCE, _JOIN = "제목: ", "출처: ", " · "


@dataclass(frozen=True)
class Passage:
    """One numbered passage of a prompt, as ``format_passages`` wrote it."""

    number: int
    text: str
    title: str | None = None
    collection: str | None = None


def _labels(labels: str | None) -> tuple[str | None, str | None]:
    """(title, collection) from a header's labels, ``제목: T · 출처: C`` or either alone."""
    if not labels:
        return None, None
    title = source = None
    if labels.startswith(_SOURCE) and _JOIN not in labels:
        return None, labels[len(_SOURCE):]
    head, sep, tail = labels.rpartition(_JOIN + _SOURCE)
    if sep:  # the title itself may contain " · ": the source is the last label
        labels, source = head, tail
    if labels.startswith(_TITLE):
        title = labels[len(_TITLE):]
    return title, source


def parse_context(context: str) -> list[Passage]:
    """The passages of a ``format_passages`` block, numbered as written."""
    if context.strip() == NO_CONTEXT or not context.startswith("["):
        return []
    headers = []  # (number, start of header, end of header line, labels)
    position, expected = 0, 1
    while True:
        # Headers are numbered 1, 2, 3… and start the block or follow a blank line, so a
        # "[3]" inside a passage's text is not taken for one.
        match = _HEADER.match(context, position)
        if match is None or int(match.group(1)) != expected:
            break
        headers.append((expected, match.start(), match.end(), match.group(2)))
        expected += 1
        following = context.find(f"\n\n[{expected}]", match.end())
        while following != -1 and not _HEADER.match(context, following + 2):
            following = context.find(f"\n\n[{expected}]", following + 2)
        if following == -1:
            break
        position = following + 2
    passages = []
    for i, (number, _, body_start, labels) in enumerate(headers):
        body_end = headers[i + 1][1] - 2 if i + 1 < len(headers) else len(context)
        title, collection = _labels(labels)
        passages.append(Passage(number, context[body_start:body_end], title, collection))
    return passages


def parse_prompt(messages: Sequence[dict]) -> tuple[str, list[Passage]]:
    """(question, passages) of the last user message of ``prompts.build_messages`` output.

    A message that is not such a prompt (a plain chat turn) is all question, no passages.
    """
    user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    if user is None:
        return "", []
    content = user.get("content") or ""
    if not content.startswith(_CONTEXT_PREFIX) or _QUESTION_SEPARATOR not in content:
        return content.strip(), []
    # The question comes last: a passage may itself contain the separator (an FAQ's
    # "질문: …"), so the last one splits, unless the question is another EchoRAG's whole
    # prompt (this service as its OpenAI-compatible teacher): then the first one before it.
    split = content.find(_QUESTION_SEPARATOR + _CONTEXT_PREFIX)
    if split == -1:
        split = content.rfind(_QUESTION_SEPARATOR)
    context = content[len(_CONTEXT_PREFIX):split]
    return content[split + len(_QUESTION_SEPARATOR):], parse_context(context)


# -- choosing and quoting sentences ----------------------------------------------------


@dataclass(frozen=True)
class SelectionWeights:
    """How a sentence is ranked as an answer: coverage + dense * cosine + rank / (1 + r)
    + amount when it states the amount asked for."""

    dense: float = 0.5
    rank: float = 0.2
    amount: float = 0.1


@dataclass(frozen=True)
class ExtractiveConfig:
    abstain_below: float = 0.476  # with e5 cosines (an embedder)
    abstain_below_lexical: float = 0.147  # without an embedder: coverage alone
    lexical_weight: float = LEXICAL_WEIGHT  # evidence: share of coverage (rest: cosine)
    amount_penalty: float = AMOUNT_PENALTY
    max_sentences: int = 3
    # A further sentence is quoted only when it scores at least this share of the best
    # one and brings a question term the quotes so far lack.
    min_relative: float = 0.9
    trim_chars: int = 40  # sentences longer than this are cut to the clauses that matter
    clause_cuts: str = "comma"  # where a sentence may be cut: "comma" or "connective" (see _clauses)
    # Answer "몇 년에…?" with the amount the best sentence states ("1444년"), not the
    # sentence, where it is unambiguous (echorag.short_answers).
    short_answers: bool = True
    selection: SelectionWeights = field(default_factory=SelectionWeights)
    # True where the pipeline's evidence gate (echorag.evidence, on the retriever's stored
    # sentence vectors) has already decided to answer: the best sentence is quoted
    # whatever its score, instead of refusing a second time on a weaker measure.
    upstream_gate: bool = False

    @classmethod
    def from_settings(cls, settings, upstream_gate: bool = False) -> "ExtractiveConfig":
        return cls(
            abstain_below=settings.abstain_below,
            abstain_below_lexical=settings.abstain_below_lexical,
            max_sentences=settings.extractive_max_sentences,
            upstream_gate=upstream_gate,
        )

    def threshold(self, analysis: Analysis) -> float:
        dense = any(u.cosine is not None for u in analysis.units)
        return self.abstain_below if dense else self.abstain_below_lexical


@dataclass
class Quote:
    unit: Unit
    text: str  # the sentence or its trimmed clauses, verbatim


@dataclass
class Answer:
    text: str
    evidence: float
    quotes: list[Quote]

    @property
    def abstained(self) -> bool:
        return not self.quotes


def selection_score(unit: Unit, weights: SelectionWeights) -> float:
    cosine = unit.cosine if unit.cosine is not None else 0.0
    return unit.coverage + weights.dense * cosine + weights.rank / (1 + unit.rank) + weights.amount * unit.amount_ok


@lru_cache(maxsize=4096)
def _clauses(sentence: str, cuts: str = "comma") -> tuple[str, ...]:
    """The sentence cut after each connective ending (EC) followed by a comma ("…했고, …");
    with ``cuts="connective"`` after every connective ending followed by a space too."""
    tokens = get_kiwi().tokenize(sentence)
    positions: list[int] = []
    for previous, token in zip(tokens, tokens[1:]):
        if not previous.tag.startswith("EC"):
            continue
        if token.form == ",":
            positions.append(token.start + token.len)
        elif cuts == "connective" and sentence[previous.start + previous.len : token.start].isspace():
            positions.append(token.start)
    bounds = [0, *sorted(set(positions)), len(sentence)]
    return tuple(sentence[a:b] for a, b in zip(bounds, bounds[1:]) if sentence[a:b].strip())


_NAMING = re.compile(NAMING_VERB)


@lru_cache(maxsize=4096)
def _clause_terms(clauses: tuple[str, ...]) -> tuple[frozenset[str], ...]:
    return tuple(frozenset(t) for t in morphemes_many(list(clauses)))


def trim(sentence: str, analysis: Analysis, max_chars: int, cuts: str = "comma") -> str:
    """The shortest run of clauses that keeps the sentence's question terms and amount;
    the sentence itself when it is short or cannot be cut. A run that stops before the
    sentence's end ends in "…"."""
    clauses = _clauses(sentence, cuts)
    if len(sentence) <= max_chars or len(clauses) < 2:
        return sentence
    weights = analysis.weights
    clause_terms = _clause_terms(clauses)
    needed = {t for t in weights if any(t in terms for terms in clause_terms)}
    # "…보호되는데, 이를 집단 면역이라고 합니다": the naming clause is the answer to "뭐라고 하나".
    naming = [i for i, clause in enumerate(clauses) if _NAMING.search(clause)]
    needs_amount = answers_amount(analysis.question, sentence)
    best = None
    for first in range(len(clauses)):
        for last in range(first, len(clauses)):
            if first == 0 and last == len(clauses) - 1:
                continue
            covered = set().union(*clause_terms[first : last + 1])
            text = "".join(clauses[first : last + 1]).strip()
            if not needed <= covered or (needs_amount and not answers_amount(analysis.question, text)):
                continue
            if any(not first <= i <= last for i in naming):
                continue
            if last < len(clauses) - 1:
                text = text.rstrip(" ,") + "…"
            if best is None or len(text) < len(best):
                best = text
    return best or sentence


# A sentence that only concludes or refers back ("잎이 초록색으로 보이는 까닭이다.", "이 때문에
# …") says nothing without the one before it.
_REFERS_BACK = re.compile(r"^(?:이는|이것은|이것이|이 때문에|이때문에|그래서|따라서|그러므로|이처럼|이렇게|그 결과)\s")
_CONCLUDES = re.compile(r"(?:까닭|때문|이유)(?:이다|입니다|이에요|예요)\.?$")


def _with_antecedent(unit: Unit, analysis: Analysis, chosen: list[Unit]) -> str:
    """The sentence, preceded by the one before it in its passage where it refers back to it."""
    if not (_REFERS_BACK.match(unit.text) or _CONCLUDES.search(unit.text)):
        return unit.text
    before = next((u for u in analysis.units if u.passage == unit.passage and u.index == unit.index - 1), None)
    if before is None or before in chosen:
        return unit.text
    return f"{before.text} {unit.text}"


def select(analysis: Analysis, config: ExtractiveConfig) -> list[Quote]:
    """The sentences to quote, best first; none when the evidence is below the threshold."""
    threshold = config.threshold(analysis)
    if not analysis.units:
        return []
    if not config.upstream_gate and analysis.evidence(config.lexical_weight, config.amount_penalty) < threshold:
        return []
    ranked = sorted(analysis.units, key=lambda u: -selection_score(u, config.selection))
    best_score = selection_score(ranked[0], config.selection)
    chosen = [ranked[0]]
    covered = set(ranked[0].terms)
    for unit in ranked[1:]:
        if len(chosen) >= config.max_sentences:
            break
        if selection_score(unit, config.selection) < config.min_relative * best_score:
            break
        new_terms = {t for t in analysis.weights if t in unit.terms and t not in covered}
        if not new_terms or unit_evidence(unit, config.lexical_weight, config.amount_penalty) < threshold:
            continue
        chosen.append(unit)
        covered |= unit.terms
    quotes = [Quote(unit, trim(_with_antecedent(unit, analysis, chosen), analysis, config.trim_chars, config.clause_cuts))
              for unit in chosen]
    if config.short_answers and (short := short_answer(analysis.question, quotes[0].text)):
        return [Quote(quotes[0].unit, short)]
    return quotes


def format_answer(quotes: list[Quote]) -> str:
    if not quotes:
        return NO_ANSWER
    return " ".join(f"{q.text} [{q.unit.number}]" for q in quotes)


def answer(
    question: str,
    passages: Sequence[Any],
    config: ExtractiveConfig | None = None,
    query_vector: np.ndarray | None = None,
    embedder: Any | None = None,
    sentence_vectors: np.ndarray | None = None,
) -> Answer:
    """Answer from ranked passages (dicts, ``SearchResult`` or ``Passage``; ``[n]`` is a
    ``Passage``'s own number, else its position from 1)."""
    config = config or ExtractiveConfig()
    analysis = analyse(question, passages, query_vector, embedder, sentence_vectors)
    quotes = select(analysis, config)
    return Answer(format_answer(quotes), analysis.evidence(config.lexical_weight, config.amount_penalty), quotes)


class ExtractiveGenerator:
    """The no-LLM backend: quotes the passages of the prompt (see the module docstring).

    ``embedder``: optional, with ``embed_queries``/``embed_passages`` (``make_embedder``);
    without it sentences are ranked on morphemes alone. Adapters do not apply and are
    ignored; ``max_new_tokens`` and ``temperature`` do not apply either.
    """

    kind = "extractive"
    is_demo = False

    def __init__(self, embedder: Any | None = None, config: ExtractiveConfig | None = None, name: str = "extractive") -> None:
        self.name = name
        self.config = config or ExtractiveConfig()
        if embedder is not None and not isinstance(embedder, VectorCache):
            embedder = VectorCache(embedder)
        self.embedder = embedder

    @classmethod
    def from_settings(cls, settings, embedder: Any | None = None, upstream_gate: bool = False) -> "ExtractiveGenerator":
        return cls(embedder, ExtractiveConfig.from_settings(settings, upstream_gate))

    @classmethod
    def served(cls, settings) -> "ExtractiveGenerator":
        """As the service runs it: behind the pipeline's evidence gate and without an
        embedder. Ranking the sentences on morphemes, rank and amount quotes as well as
        adding e5 cosines (bench/results/answers_tuning.json), and re-embedding every
        passage sentence cost more than the rest of an answer on CPUs."""
        return cls.from_settings(settings, None, upstream_gate=True)

    @property
    def adapters(self) -> list[str]:
        return []

    def answer(self, messages: list[dict]) -> Answer:
        question, passages = parse_prompt(messages)
        return answer(question, passages, self.config, embedder=self.embedder)

    def answer_results(
        self,
        question: str,
        results: Sequence[Any],
        query_vector: np.ndarray | None = None,
        sentence_vectors: np.ndarray | None = None,
    ) -> Answer:
        """Answer straight from search results (``[n]`` = their order from 1), for a caller
        that has the query vector and the sentence vectors already (see
        ``evidence.sentence_vectors_from_rows``): no embedding at all then."""
        return answer(question, results, self.config, query_vector, self.embedder, sentence_vectors)

    def generate(
        self,
        conversations: list[list[dict]],
        adapters: list[str | None] | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
    ) -> list[Generation]:
        results = []
        for messages in conversations:
            text = self.answer(messages).text
            results.append(Generation(text, *self.usage(messages, text)))
        return results

    def stream(
        self,
        messages: list[dict],
        adapter: str | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
    ) -> Iterator[str]:
        """The answer quote by quote; joined, the pieces equal ``generate``'s text."""
        text = self.answer(messages).text
        pieces = re.split(r"(?<=\]) ", text)
        for i, piece in enumerate(pieces):
            yield piece if i == len(pieces) - 1 else piece + " "

    def usage(self, messages: list[dict], text: str) -> tuple[int, int]:
        """(prompt, completion) sizes in words (space-separated eojeol): there is no tokenizer."""
        prompt = sum(len(normalize(m.get("content") or "").split()) for m in messages)
        return prompt, len(text.split())
