"""Greetings, thanks and questions about EchoRAG itself: answered politely, not from documents.

"안녕하세요" is not a question the documents answer: quoting the closest sentence, or
saying the documents hold no answer, is not what a person expects of a chat service.
A message that is nothing but small talk (a greeting, thanks, a goodbye, "뭐 할 수 있어?")
gets a short Korean reply that says what EchoRAG does, whatever backend answers, with no
retrieval; such turns are not collected as training data. A greeting followed by a real
question ("안녕하세요, 훈민정음은 누가 만들었나요?") is a question.
"""

from __future__ import annotations

import re

from echorag.korean import normalize

ABOUT = ("저는 EchoRAG입니다. 등록된 문서에서 답을 찾아 [1]처럼 출처 번호와 함께 알려 드리고, "
         "문서에 없는 내용은 없다고 말씀드려요. 답변에 👍/👎를 남겨 주시면 다음 답이 더 나아집니다.")
REPLIES = {
    "greeting": "안녕하세요! " + ABOUT + " 궁금한 것을 물어보세요.",
    "thanks": "천만에요! 더 궁금한 것이 있으면 언제든 물어보세요.",
    "farewell": "안녕히 가세요! 또 궁금한 것이 생기면 찾아 주세요.",
    "about": ABOUT + " 예를 들어 \"훈민정음은 누가 만들었나요?\"처럼 물어보세요.",
}
# Whole messages only: what may follow is politeness, never content.
_TAIL = r"(?:요|용|여|유|다|니다|습니다|세요|셔요|해요|해|합니다|드립니다|드려요|ㅎ+|ㅋ+|ㅠ+|~|!|\.|\?|\s|😊|🙂|👋|🙏)*"
_PATTERNS = {
    "greeting": r"(?:안녕(?:하세요|하십니까|하신가요)?|반가워|반갑|하이|헬로|hi|hello|hey|좋은\s*(?:아침|하루|저녁))",
    "thanks": r"(?:고마워|고맙|감사(?:해|합니다|드려)?|땡큐|thanks?|thank\s*you|수고(?:하셨|했|하세)?)",
    "farewell": r"(?:잘\s*(?:가|있어|자)|안녕히\s*(?:가|계)|바이|bye|또\s*(?:봐|만나))",
    "about": r"(?:(?:너|넌|당신)(?:은|는)?\s*(?:누구|뭐|무엇)(?:야|니|인가|이야|예)?"
             r"|(?:뭘|뭐|무엇을|무엇)\s*(?:할\s*수\s*있|도와\s*줄\s*수\s*있|할\s*줄\s*알)(?:어|나|니|습니까|나요|어요)?"
             r"|자기\s*소개(?:\s*해\s*줘)?|도움말|사용법|help)",
}
_MATCHERS = {kind: re.compile(rf"^\s*(?:{p}){_TAIL}$", re.I) for kind, p in _PATTERNS.items()}
_MAX_CHARS = 30  # longer messages carry a question


def kind(message: str) -> str | None:
    """What kind of small talk the whole message is, or None when it asks something else."""
    text = normalize(message).strip()
    if not text or len(text) > _MAX_CHARS:
        return None
    return next((k for k, matcher in _MATCHERS.items() if matcher.match(text)), None)


_LEADING_GREETING = re.compile(rf"^\s*{_PATTERNS['greeting']}(?:습니다|니다|요|다)?[\s,.!?~]+", re.I)


def without_greeting(message: str) -> str:
    """The question after a greeting ("안녕하세요, 훈민정음은 누가…" → "훈민정음은 누가…"): what
    retrieval and the answer selector should look at."""
    rest = _LEADING_GREETING.sub("", message, count=1)
    return rest if rest.strip() and rest != message else message


def reply(message: str) -> str | None:
    """The polite reply to a small-talk message, or None for anything else."""
    found = kind(message)
    return REPLIES[found] if found else None
