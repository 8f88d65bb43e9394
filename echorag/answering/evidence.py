"""Every retrieved sentence against the question: the analysis the answer selector
(``echorag.answering.selector``) scores, computed once per question before any model runs.

Every sentence of the document passages (never of remembered turns) is compared with
the question in two ways:

- ``coverage``: the share of the question's content morphemes (Kiwi) that the sentence
  contains, each weighted by its IDF over the sentences at hand, so a rare term the
  passages lack ("왕비" when they only talk about 세종's alphabet) weighs most;
- ``cosine``: e5 cosine of the query and the sentence, mapped from e5's narrow range
  onto [0, 1] by a fixed affine map (``COSINE_FLOOR``…``COSINE_CEILING``).

Both are absolute (unlike the retriever's fused scores, min-max normalised per query),
so one threshold works across questions. A question that asks for an amount ("몇 명",
"며칠", "수수료는 얼마", "몸무게는 얼마나", "몇 년을 수련") needs a sentence that states one
of that kind, and one that asks which institution, team or place ("어느 기관", "구단은
어디") a sentence naming one the question does not; a sentence that does not has its
evidence scaled by ``1 - amount_penalty``. ``evidence`` is the best
sentence's ``lexical_weight * coverage + (1 - lexical_weight) * cosine`` (so scaled);
without an embedder it is the best coverage alone. ``lexical_weight``, ``amount_penalty``
and ``RULE_THRESHOLD`` are the hand-written rule's, once tuned on the dev half
(bench/results/answers_tuning.json); the rule now feeds the selector and is its floor.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from echorag.korean import get_kiwi, morphemes_many, normalize, split_sentences
from echorag.types import Analysis, Unit

# Question words and light verbs: they say what is asked, not what the answer is about,
# and no answering sentence contains them.
QUESTION_STOPWORDS = frozenset({
    "몇", "언제", "어디", "누구", "무엇", "뭐", "왜", "어떻다", "얼마", "얼마나", "무슨", "어느", "어떤",
    "하다", "되다", "있다", "없다", "이다", "알다", "보다", "주다", "싶다", "가능", "각각", "대략",
    "보통", "대개", "주로", "혹시", "좀", "다", "거", "것", "뭘",
})
# What a question that asks for an amount expects in its answer: "몇 명" a number and
# 명, "며칠" a number of days (or hours, weeks…), "얼마" any number.
_UNIT_ALIASES = {
    "미터": ("m", "미터"), "킬로미터": ("km", "킬로미터"), "센티미터": ("cm", "센티미터"),
    "기가": ("gb", "기가"), "나노": ("nm", "나노"), "살": ("세", "살"), "글자": ("자", "글자"),
    "개": ("개", "건", "가지"), "차례": ("턴", "번", "차례"), "퍼센트": ("%", "퍼센트"), "%": ("%", "퍼센트"),
    "해": ("년",), "며칠": ("일", "시간", "주", "개월", "달"), "대": ("대", "승", "패"),
    "원": ("원",),
}
# "얼마" about a fee, a price or a tax asks for money: a number of 원.
_MONEY_SUFFIXES = ("료", "비", "금", "값", "비용", "가격", "요금", "세", "돈")
NUMBER_PATTERN = (
    r"(?:\d[\d,.]*(?:\s*[~∼-]\s*\d[\d,.]*)?\s*(?:만|천|백|억)?\s*"
    r"|(?:한|두|세|네|다섯|여섯|일곱|여덟|아홉|열|스물|서른|마흔|쉰|백|천|만)\s*)"
)
_DIGIT = re.compile(r"\d")
# What answers "언제": a date or time of some kind.
WHEN_PATTERN = re.compile(
    r"\d[\d,.]*\s*(?:년|월|일|세기|시|주|개월)|(?:봄|여름|가을|겨울|새벽|아침|저녁|오전|오후|시대|초기|중기|말기|무렵)"
    r"|(?:고려|조선|삼국|통일 신라|신라|백제|고구려)\s*(?:초|말|중기|후기|전기)"
)
# What answers "연도는?", "태어난 해는 언제": a calendar year, not "11월" or "같은 해".
YEAR_PATTERN = re.compile(r"(?<![\d,.])\d{3,4}\s*년|기원전\s*\d+\s*년")
# What answers "해마다 언제", "매년 언제": a time of the year, not the year something began.
RECURRING_PATTERN = re.compile(
    r"(?<![\d,.])\d{1,2}\s*(?:월|일|시)|봄|여름|가을|겨울|방학|연초|연말|명절|설날|추석|초순|중순|하순"
)
_EVERY_YEAR = ("해마다", "매년", "매해", "해년마다")


# "몸무게는 얼마나" asks for a weight: a number of kg, not any number.
_MEASURES = {
    ("몸무게", "무게", "체중", "중량"): ("kg", "g", "t", "킬로그램", "그램", "톤", "근"),
    ("키", "길이", "높이", "거리", "너비", "폭", "깊이"): ("m", "cm", "km", "mm", "미터", "킬로미터", "센티미터", "리"),
    ("넓이", "면적"): ("㎡", "㎢", "m2", "km2", "제곱", "평", "헥타르", "ha"),
}
# "몇 년을 수련", "몇 년 동안", "몇 년마다" ask for a length of time; "몇 년에" for a year;
# so does "몇 년" of a lifespan, a term or a period ("평균 수명은 몇 년이야?").
_DURATION_AFTER_YEAR = frozenset({"을", "를", "동안", "간", "마다", "이나", "씩", "째", "정도", "쯤", "가량"})
_DURATION_NOUNS = frozenset({"수명", "기간", "임기", "연한", "연수", "공백"})
_DURATION = re.compile(r"(?<![\d,.])\d{1,2}\s*년|(?:한|두|세|네|다섯|여섯|일곱|여덟|아홉|열|수십|몇)\s*(?:년|해)")
# "어느 기관", "구단은 어디": a name is asked for, which the answer must state beyond the
# names the question already has.
_NAMED_THINGS = frozenset({
    "기관", "구단", "팀", "회사", "기업", "대학", "학교", "나라", "국가", "도시", "단체", "정당",
    "방송사", "출판사", "박물관", "도서관", "지역", "곳",
})
_NAME_TAGS = ("NNP", "SL")


@lru_cache(maxsize=4096)
def question_tokens(question: str) -> tuple:
    """Kiwi's tokens of a question: what it asks is read from them several times."""
    return tuple(get_kiwi().tokenize(normalize(question)))


def _amount_pattern(units: Sequence[str], flags: int = 0) -> re.Pattern:
    """A number followed by one of these units."""
    return re.compile(NUMBER_PATTERN + "(?:" + "|".join(re.escape(u) for u in units) + ")", flags)


@lru_cache(maxsize=4096)
def asked_amount(question: str) -> tuple[tuple[re.Pattern, ...], bool]:
    """(patterns one of which an answer must contain, whether any number will do)."""
    tokens = question_tokens(question)
    units: list[str] = []
    patterns: list[re.Pattern] = []
    any_number = False
    for i, token in enumerate(tokens):
        if token.form == "몇" and i + 1 < len(tokens):
            unit = tokens[i + 1].form.lower()
            after = tokens[i + 2].form if i + 2 < len(tokens) else ""
            if unit == "년" and (after in _DURATION_AFTER_YEAR or _DURATION_NOUNS & set(question_terms(question))):
                patterns.append(_DURATION)
            else:
                units.append(unit)
        elif token.form == "며칠":
            units.append("며칠")
        elif token.form in ("얼마", "얼마나"):
            any_number = True
    terms = question_terms(question)
    if any_number and any(t.endswith(_MONEY_SUFFIXES) for t in terms):
        units.append("원")
    measure = next((measured for nouns, measured in _MEASURES.items() if any(t in nouns for t in terms)), None)
    if any_number and measure:
        patterns.append(_amount_pattern(measure, re.I))
    patterns += [_amount_pattern(_UNIT_ALIASES.get(u, (u,))) for u in dict.fromkeys(units)]
    return tuple(patterns or _asked_time(question, tokens)), any_number


def _asked_time(question: str, tokens: tuple) -> list[re.Pattern]:
    """What answers a question about when: a calendar year, a time of the year, any date."""
    when = any(token.form == "언제" for token in tokens)
    if asks_calendar_year(question):
        return [YEAR_PATTERN]
    if when and any(word in question for word in _EVERY_YEAR):
        return [RECURRING_PATTERN]
    return [WHEN_PATTERN] if when or asks_year(question) else []


_CALENDAR_YEAR_WORDS = frozenset({"연도", "년도"})
# "…에 등재된 해는?", "태어난 해는 언제인가?": the year, with its particle, last or before
# "언제" ("충전해야 해?" is "do", not "year").
_YEAR_ASKED = re.compile(r"(?:^|\s)해(?:는|가)\s*(?:언제|[?？]?\s*$)")


def asks_calendar_year(question: str) -> bool:
    """'연도는?', '…한 해는?', '태어난 해는 언제': a calendar year is asked for."""
    return any(t in _CALENDAR_YEAR_WORDS for t in question_terms(question)) or bool(_YEAR_ASKED.search(question))


def asks_year(question: str) -> bool:
    """'연도는?', '어느 시기에', '…한 해는?' ask when, as "언제" does, without the word."""
    return asks_calendar_year(question) or "시기" in question_terms(question)


@lru_cache(maxsize=4096)
def asked_name(question: str) -> frozenset[str] | None:
    """The names the question already has when it asks for another one ("어느 기관이
    소장", "구단은 어디"), else None."""
    tokens = question_tokens(question)
    forms = [t.form for t in tokens]
    which = any(f == "어느" and i + 1 < len(forms) and forms[i + 1] in _NAMED_THINGS for i, f in enumerate(forms))
    where = "어디" in forms and any(f in _NAMED_THINGS for f in forms)
    if not (which or where):
        return None
    return frozenset(t.form.lower() for t in tokens if t.tag in _NAME_TAGS)


@lru_cache(maxsize=16384)
def _names(text: str) -> frozenset[str]:
    return frozenset(t.form.lower() for t in get_kiwi().tokenize(text) if t.tag in _NAME_TAGS)


def answers_amount(question: str, text: str) -> bool:
    """False when the question asks for an amount and the text states none of that kind,
    or asks which institution, team or place and the text names none it does not."""
    known = asked_name(question)
    if known is not None and not _names(text) - known:
        return False
    patterns, any_number = asked_amount(question)
    text = text.lower()
    if patterns:
        return any(p.search(text) for p in patterns)
    return bool(_DIGIT.search(text)) if any_number else True


# e5 cosines of a query and a sentence fall in a narrow band; this maps it onto [0, 1].
COSINE_FLOOR = 0.75
COSINE_CEILING = 0.92
LEXICAL_WEIGHT = 0.2  # share of coverage in evidence (the rest is cosine)
AMOUNT_PENALTY = 0.5  # evidence of a sentence lacking the amount asked for is scaled by 1 - this
# The hand-written rule answered when the best sentence's evidence reached this; its
# verdict is one of the selector's features, and the floor under its abstention.
RULE_THRESHOLD = 0.476


def asks_for_something(question: str) -> bool:
    """The question asks for a kind of answer a sentence may lack: an amount, a date, a name."""
    patterns, any_number = asked_amount(question)
    return bool(patterns) or any_number or asked_name(question) is not None


def _get(passage: Any, name: str, default: Any = None) -> Any:
    """A field of a passage given as a dict, a pydantic ``SearchResult`` or a dataclass."""
    if isinstance(passage, dict):
        return passage.get(name, default)
    return getattr(passage, name, default)


def is_fact_source(passage: Any) -> bool:
    """Remembered turns (collection ``memory``) are conversation, not facts to quote."""
    return (_get(passage, "collection") or "documents") != "memory"


# A sentence that ends in a fragment after its final stop: Kiwi cuts "알렸다. '훈민정음'이라는"
# after the closing quote, so the quoted word would end one sentence and start none.
_TRAILING_FRAGMENT = re.compile(r"[.?!][\"'”’」』)]*(\s+)\S[^.?!]*$")
_ENDS_SENTENCE = re.compile(r"[.?!…][\"'”’」』)]*$")


def split_cleanly(text: str) -> list[str]:
    """``korean.split_sentences``, with a fragment cut off the start of a sentence given
    back to it; every sentence is a verbatim slice of the (normalised) text."""
    text = normalize(text)
    spans, position = [], 0
    for sentence in split_sentences(text):
        start = text.find(sentence, position)
        if start < 0:  # not a slice after all: keep Kiwi's sentence as it is
            return [s.strip() for s in split_sentences(text) if s.strip()]
        spans.append([start, start + len(sentence)])
        position = start + len(sentence)
    for current, following in zip(spans, spans[1:]):
        piece = text[current[0] : current[1]]
        match = _TRAILING_FRAGMENT.search(piece)
        if match and not _ENDS_SENTENCE.search(piece.rstrip()):
            cut = current[0] + match.start(1)
            current[1], following[0] = cut, cut
    return [text[a:b].strip() for a, b in spans if text[a:b].strip()]


@lru_cache(maxsize=4096)
def _sentences(text: str) -> tuple[tuple[str, frozenset[str]], ...]:
    """(sentence, its content morphemes) of one passage; passages repeat across
    questions, so the Kiwi work is cached."""
    sentences = split_cleanly(text)
    terms = morphemes_many(sentences) if sentences else []
    return tuple((s, frozenset(t)) for s, t in zip(sentences, terms))


@lru_cache(maxsize=4096)
def question_terms(question: str) -> tuple[str, ...]:
    """The question's content morphemes, question words left out, in order, unique."""
    terms = morphemes_many([question])[0]
    return tuple(dict.fromkeys(t for t in terms if t not in QUESTION_STOPWORDS))


def strongest(analysis: Analysis, lexical_weight: float = LEXICAL_WEIGHT,
              amount_penalty: float = AMOUNT_PENALTY) -> float:
    """The best sentence's evidence: what the hand-written rule compared with ``RULE_THRESHOLD``."""
    return max((unit_evidence(u, lexical_weight, amount_penalty) for u in analysis.units), default=0.0)


def unit_evidence(unit: Unit, lexical_weight: float = LEXICAL_WEIGHT, amount_penalty: float = AMOUNT_PENALTY) -> float:
    """How well this one sentence supports an answer, in [0, 1]."""
    if unit.cosine is None:
        value = unit.coverage
    else:
        value = lexical_weight * unit.coverage + (1 - lexical_weight) * unit.cosine
    return value if unit.amount_ok else value * (1 - amount_penalty)


def calibrate_cosine(cosine: np.ndarray | float) -> np.ndarray:
    return np.clip((np.asarray(cosine, np.float64) - COSINE_FLOOR) / (COSINE_CEILING - COSINE_FLOOR), 0.0, 1.0)


def _units(question: str, passages: Sequence[Any]) -> list[Unit]:
    units: list[Unit] = []
    seen: set[str] = set()
    rank = 0
    for position, passage in enumerate(passages):
        if not is_fact_source(passage):
            continue
        text = normalize(_get(passage, "text") or "")
        number = _get(passage, "number") or position + 1
        for index, (sentence, terms) in enumerate(_sentences(text)):
            if sentence not in seen:  # overlapping chunks repeat sentences: keep the best-ranked
                seen.add(sentence)
                units.append(Unit(position, index, number, rank, sentence, terms, answers_amount(question, sentence),
                                  passage_score=float(_get(passage, "score") or 0.0)))
        rank += 1
    return units


def _stored_vectors(units: list[Unit], passages: Sequence[Any],
                   rows: Sequence[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray] | None:
    """(sentence vectors, passage vectors) of ``units`` from the rows the retriever stores
    per chunk, one array per passage: the chunk's vector, then (when it has more than one
    sentence) one row per ``korean.split_sentences`` sentence. A chunk without sentence rows
    lends its own vector to its sentences. None when a document passage has no rows."""
    chunks: dict[int, np.ndarray] = {}
    for position, passage in enumerate(passages):
        if not is_fact_source(passage):
            continue
        chunk = rows[position] if position < len(rows) else None
        if chunk is None or len(chunk) == 0:
            return None
        chunks[position] = np.asarray(chunk, np.float32)

    def sentence_row(unit: Unit) -> np.ndarray:
        # A one-sentence chunk is its own sentence; a truncated passage keeps its first rows.
        chunk = chunks[unit.passage]
        return chunk[0] if len(chunk) == 1 else chunk[min(1 + unit.index, len(chunk) - 1)]

    empty = np.zeros_like(next(iter(chunks.values()))[0])
    passage_vectors = np.stack([chunks[p][0] if p in chunks else empty for p in range(len(passages))])
    return np.stack([sentence_row(u) for u in units]), passage_vectors


def analyse(
    question: str,
    passages: Sequence[Any],
    query_vector: np.ndarray | None = None,
    embedder: Any | None = None,
    rows: Sequence[np.ndarray | None] | None = None,
) -> Analysis:
    """Score every sentence of the document passages against the question.

    ``passages``: dicts or objects with ``text``, ``collection`` and ``score``
    (``SearchResult``), in rank order. ``query_vector``: the question's e5 query vector
    when the caller has it; otherwise ``embedder`` embeds the question. ``rows``: per
    passage, the vectors the retriever stored at indexing (``Retriever.vector_rows``; None
    for a remembered turn); where a document passage has none, ``embedder`` embeds the
    sentences (wrap it in ``embedding.VectorCache`` to reuse them); with neither, morphemes
    alone (cosines stay None).
    """
    question = normalize(question).strip()
    units = _units(question, passages)
    terms = question_terms(question)
    # Smoothed IDF over the sentences (BM25's): a term no sentence has weighs most.
    n = len(units)
    weights = {}
    for term in terms:
        df = sum(1 for u in units if term in u.terms)
        weights[term] = math.log(1 + (n - df + 0.5) / (df + 0.5))
    total = sum(weights.values())
    for unit in units:
        unit.coverage = sum(w for t, w in weights.items() if t in unit.terms) / total if total else 0.0
    vectors = _stored_vectors(units, passages, rows) if units and rows is not None else None
    if units and (vectors is not None or embedder is not None) and (query_vector is not None or embedder is not None):
        if query_vector is None:
            query_vector = embedder.embed_queries([question])[0]
        if vectors is None:
            vectors = (embedder.embed_passages([u.text for u in units]),
                       embedder.embed_passages([normalize(_get(p, "text") or "") for p in passages]))
        sentence_vectors, passage_vectors = (np.asarray(v, np.float32) for v in vectors)
        if len(sentence_vectors) != len(units):
            raise ValueError(f"{len(sentence_vectors)} sentence vectors for {len(units)} sentences")
        query = np.asarray(query_vector, np.float32)
        passage_cosines = calibrate_cosine(passage_vectors @ query)
        for unit, cosine in zip(units, calibrate_cosine(sentence_vectors @ query)):
            unit.cosine = float(cosine)
            unit.passage_cosine = float(passage_cosines[unit.passage])
    return Analysis(question, terms, weights, units)
