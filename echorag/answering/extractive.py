"""Extractive answers: quote the retrieved sentences that answer the question, with ``[n]``.

``ExtractiveGenerator`` is a generator backend like ``LocalGenerator`` (same ``generate`` /
``stream`` / ``usage``) that needs no language model. It answers from the question's
``types.Analysis``, which the retriever computed once and the answer selector
(``echorag.answering.selector``) scored: the most probable sentences, 1–3 of them, quoted verbatim,
each followed by the ``[n]`` of its passage. A long sentence is cut to the clauses that
carry the question's terms; a question that asks for an amount or a date gets just that
(``echorag.answering.short_answers``). Where the selector abstains the answer is exactly
``NO_ANSWER``. Remembered turns (collection ``memory``) are never quoted.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from echorag.answering.evidence import answers_amount
from echorag.answering.prompts import NO_ANSWER
from echorag.answering.short_answers import NAMING_VERB, short_answer
from echorag.config import default_of
from echorag.korean import get_kiwi, morphemes_many, normalize
from echorag.types import Analysis, Generation, Unit

# -- choosing and quoting sentences ----------------------------------------------------


@dataclass(frozen=True)
class ExtractiveConfig:
    max_sentences: int = default_of("extractive_max_sentences")
    # A further sentence is quoted only when its probability is at least this share of the
    # best one's and it brings a question term the quotes so far lack.
    min_relative: float = 0.9
    trim_chars: int = 40  # sentences longer than this are cut to the clauses that matter
    clause_cuts: str = "comma"  # where a sentence may be cut: "comma" or "connective" (see _clauses)
    # Answer "몇 년에…?" with the amount the best sentence states ("1444년"), not the
    # sentence, where it is unambiguous (echorag.answering.short_answers).
    short_answers: bool = True

    @classmethod
    def from_settings(cls, settings) -> "ExtractiveConfig":
        return cls(max_sentences=settings.extractive_max_sentences)


@dataclass
class Quote:
    unit: Unit
    text: str  # the sentence or its trimmed clauses, verbatim


@dataclass
class Answer:
    text: str
    quotes: list[Quote]

    @property
    def abstained(self) -> bool:
        return not self.quotes


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
    """The sentences to quote, most probable first; none where the selector abstains."""
    if analysis.abstain or not analysis.units:
        return []
    ranked = analysis.ranked()
    best = ranked[0].probability
    chosen = [ranked[0]]
    covered = set(ranked[0].terms)
    for unit in ranked[1:]:
        if len(chosen) >= config.max_sentences or unit.probability < config.min_relative * best:
            break
        if {t for t in analysis.weights if t in unit.terms and t not in covered}:
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


def answer(analysis: Analysis, config: ExtractiveConfig | None = None) -> Answer:
    quotes = select(analysis, config or ExtractiveConfig())
    return Answer(format_answer(quotes), quotes)


class ExtractiveGenerator:
    """The no-LLM backend: quotes from each question's analysis (see the module docstring).
    Adapters do not apply and are ignored; ``max_new_tokens`` and ``temperature`` do not
    apply either."""

    kind = "extractive"
    is_demo = False

    def __init__(self, config: ExtractiveConfig | None = None, name: str = "extractive") -> None:
        self.name = name
        self.config = config or ExtractiveConfig()

    @classmethod
    def from_settings(cls, settings) -> "ExtractiveGenerator":
        return cls(ExtractiveConfig.from_settings(settings))

    @property
    def adapters(self) -> list[str]:
        return []

    def _text(self, analysis: Analysis | None) -> str:
        if analysis is None:
            raise ValueError("the extractive answerer quotes from the question's analysis; none was given")
        return answer(analysis, self.config).text

    def generate(
        self,
        conversations: list[list[dict]],
        adapters: list[str | None] | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        analyses: list[Analysis | None] | None = None,
    ) -> list[Generation]:
        analyses = analyses or [None] * len(conversations)
        results = []
        for messages, analysis in zip(conversations, analyses):
            text = self._text(analysis)
            results.append(Generation(text, *self.usage(messages, text)))
        return results

    def stream(
        self,
        messages: list[dict],
        adapter: str | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        analysis: Analysis | None = None,
    ) -> Iterator[str]:
        """The answer quote by quote; joined, the pieces equal ``generate``'s text."""
        pieces = re.split(r"(?<=\]) ", self._text(analysis))
        for i, piece in enumerate(pieces):
            yield piece if i == len(pieces) - 1 else piece + " "

    def usage(self, messages: list[dict], text: str) -> tuple[int, int]:
        """(prompt, completion) sizes in words (space-separated eojeol): there is no tokenizer."""
        prompt = sum(len(normalize(m.get("content") or "").split()) for m in messages)
        return prompt, len(text.split())
