"""The short answer inside a quoted sentence, for questions that ask for an amount or a date.

"최만리 반대 상소는 몇 년에 올라왔나?" is answered by "1444년", not by the whole sentence
that states it. Where the question asks for amounts ("몇 년", "몇 명", "얼마", "며칠",
"언제", "…한 해는?") and the quoted sentence states exactly as many of that kind as are
asked, not counting those the question itself names, the answer is those amounts,
verbatim. Anything less certain (no amount, or more candidates than asked) keeps the
sentence: a wrong short answer is worse than a long right one.
"""

from __future__ import annotations

import re

from echorag.answering.evidence import (
    NUMBER_PATTERN,
    RECURRING_PATTERN,
    WHEN_PATTERN,
    asked_amount,
    question_terms,
    question_tokens,
)
from echorag.korean import normalize

# A unit ends its word, or a particle follows it: "원이다", not "원리".
_WORD_ENDS = r"(?=$|[^가-힣]|[이가은는을를에의도로씩쯤만까부]|으로|정도|가량|안팎)"
# "얼마" with no unit asked: a number and the unit or counter written after it.
_ANY_AMOUNT = re.compile(
    NUMBER_PATTERN + r"(?:[A-Za-z%]+|(?:배|원|명|개|건|번|회|점|세|살|년|일|시간|분|초|주|개월|달|퍼센트|미터|킬로미터)"
    + _WORD_ENDS + ")"
)
# "얼마 만에 돌아왔나" asks how long it took: "7개월 만에".
_TOOK = re.compile(NUMBER_PATTERN + r"(?:년|개월|달|주|일|시간|분)\s*만에?")
# Words around a number that belong to the amount: "만 50세", "약 140GB", "80마리 안팎".
_QUALIFIER = re.compile(r"(?:만|약|총|최대|최소)\s$")
_APPROXIMATELY = re.compile(r"\s?(?:안팎|가량|남짓|정도|이상|이하|이내|미만)" + _WORD_ENDS)
# A year or month is followed by the rest of its date: "1950년 6월 25일".
_DATE_TAIL = re.compile(r"(?:\s*\d{1,2}\s*월)?(?:\s*\d{1,2}\s*일)?")
# A calendar date: a year of three or four digits ("2년" is a length of time), a month, a day.
_DIGIT_DATE = re.compile(r"(?<![\d,.])(?:\d{3,4}\s*년|\d{1,2}\s*월|\d{1,2}\s*일|\d{1,2}\s*세기)")
_CALENDAR_DATE = re.compile(r"\d{3,4}\s*년(?:\s*\d{1,2}\s*월)?(?:\s*\d{1,2}\s*일)?|\d{1,2}\s*월(?:\s*\d{1,2}\s*일)?")
_ASKING = ("몇", "얼마", "얼마나", "며칠", "언제")
# A question that also asks what, who or where wants more than an amount.
_ASKING_MORE = ("무엇", "뭐", "뭘", "누구", "누가", "어디", "어떤", "어느", "무슨", "왜", "어떻게", "어떻다")
# "…을 무엇이라 하나?", "…을 가리키는 용어는?": the name the sentence gives it.
_ASKS_NAME = re.compile(r"무엇이라|뭐라고|뭐라 |용어는|이름은|명칭은")
NAMING_VERB = r"(?:이)?라(?:고)?\s*(?:한다|합니다|해요|하며|하고|부른다|부릅니다|불러요|불린다|불립니다)"
_NAMED = re.compile(r"(?:'([^']+)'|‘([^’]+)’|「([^」]+)」|([^\s,'‘’「」]+?))" + NAMING_VERB)


def _patterns(question: str) -> tuple[re.Pattern, ...]:
    patterns, any_number = asked_amount(question)
    if any_number and "만에" in question.replace(" ", ""):
        return (_TOOK,)
    if patterns == (WHEN_PATTERN,):  # "언제", "어느 시기에": a date in digits, not "겨울" or "조선 초"
        return (_DIGIT_DATE,)
    if patterns == (RECURRING_PATTERN,):  # "해마다 언제": "7월 말부터 8월 초" needs its sentence
        return ()
    if not patterns and any_number:
        return (_ANY_AMOUNT,)
    return patterns


def _asked_count(question: str) -> int:
    """How many amounts are asked ("몇 명이며 … 몇 번" asks two); 0 when the question
    asks for something else as well ("무엇이며 얼마나…")."""
    forms = [t.form for t in question_tokens(question)]
    if any(f in _ASKING_MORE or f == "각각" for f in forms):  # "1종과 2종이 각각 몇 점": a sentence
        return 0
    return max(1, sum(1 for f in forms if f in _ASKING))


def short_answer(question: str, sentence: str) -> str | None:
    """The amounts ``sentence`` states in answer to ``question`` ("1444년", "7명, 8번"),
    or None where the question asks for none or the sentence is ambiguous."""
    if _ASKS_NAME.search(question):
        return _name(question, sentence)
    patterns, asked = _patterns(question), _asked_count(question)
    if not patterns or not asked:
        return None
    named = normalize(question).replace(" ", "")
    dates = [(m.start(), m.end()) for m in _CALENDAR_DATE.finditer(sentence)]
    spans: list[tuple[int, int]] = []
    for pattern in patterns:
        for match in pattern.finditer(sentence):
            start, end = match.start(), match.end()
            if sentence[start:end].replace(" ", "") in named:  # "2017년 가을…": given, not asked
                continue
            if any(a < start < b for a, b in dates) or (pattern is _ANY_AMOUNT and any(a <= start < b for a, b in dates)):
                continue  # the day of a date is not "며칠"; "규모 얼마였어?" is not answered by a date
            if sentence[end - 1] in "년월":
                end = _DATE_TAIL.match(sentence, end).end()
            if qualifier := _QUALIFIER.search(sentence, max(0, start - 3), start):
                start = qualifier.start()
            if approximately := _APPROXIMATELY.match(sentence, end):
                end = approximately.end()
            spans.append((start, end))
    spans = list({sentence[a:b].strip(): (a, b) for a, b in reversed(_outermost(spans))}.values())[::-1]
    # Of several years, the one nearest the question's words; of several amounts of any
    # kind ("얼마"), none: "700억 개(70B) 모델… 140GB" would too often pick the wrong one.
    if len(spans) > asked and patterns != (_ANY_AMOUNT,):
        spans = _nearest(question, sentence, spans, asked)
    if len(spans) != asked:
        return None
    return ", ".join(sentence[a:b].strip() for a, b in _adjacent_joined(sentence, spans))


def _nearest(question: str, sentence: str, spans: list[tuple[int, int]], asked: int) -> list[tuple[int, int]]:
    """Of more candidates than asked, the ``asked`` nearest to the question's own words in
    the sentence ("2013년 데뷔한 BTS는 2020년 「Dynamite」로…1위": 2020년), where they are
    clearly nearer than the rest; else none."""
    places = [m.start() for t in question_terms(question) if len(t) > 1
              for m in re.finditer(re.escape(t), sentence, re.IGNORECASE)]
    if not places:
        return []

    def distance(span: tuple[int, int]) -> int:
        return min(max(span[0] - p, p - span[1], 0) for p in places)

    ranked = sorted(spans, key=distance)
    kept, rest = ranked[:asked], ranked[asked:]
    if distance(rest[0]) < 2 * max(distance(s) for s in kept) + 4:
        return []
    return sorted(kept)


def _name(question: str, sentence: str) -> str | None:
    """"…상황은 스태그플레이션이라고 불러요" names it: "스태그플레이션" (not a name the
    question already says)."""
    names = [next(g for g in m.groups() if g) for m in _NAMED.finditer(sentence)]
    named = normalize(question).replace(" ", "")
    names = [n for n in dict.fromkeys(names) if n.replace(" ", "") not in named]
    return names[0] if len(names) == 1 else None


def _adjacent_joined(sentence: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Amounts written side by side are one answer: "4승 1패" to "몇 대 몇"."""
    joined: list[tuple[int, int]] = []
    for start, end in spans:
        if joined and sentence[joined[-1][1]:start].isspace():
            joined[-1] = (joined[-1][0], end)
        else:
            joined.append((start, end))
    return joined


def _outermost(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Spans in order, those inside another left out ("1950년" inside "1950년 6월 25일")."""
    spans = sorted(set(spans), key=lambda s: (s[0], -s[1]))
    kept: list[tuple[int, int]] = []
    for start, end in spans:
        if kept and start < kept[-1][1]:
            continue
        kept.append((start, end))
    return kept
