"""Prompt assembly: Korean system prompt, numbered context passages and short-term memory.

The result is a list of chat messages; the tokenizer's own chat template turns it
into model input (``LocalGenerator``) or it goes to an OpenAI-compatible API as is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only
    from echorag.types import MemoryTurn, SearchResult

    Passage = SearchResult | Mapping

NO_ANSWER = "제공된 문서에서 답을 찾을 수 없습니다."

SYSTEM_PROMPT = (
    "당신은 EchoRAG의 한국어 AI 어시스턴트입니다. 항상 한국어로 답하세요.\n"
    "사용자 메시지의 '참고 문서'에 있는 내용만 근거로 답하고, "
    "근거로 삼은 문서는 [1], [2]처럼 번호로 밝히세요.\n"
    f"참고 문서에 답이 없으면 지어내지 말고 \"{NO_ANSWER}\"라고 말하세요.\n"
    "답은 간결하고 정확하게 쓰세요."
)

NO_CONTEXT = "(관련 문서 없음)"

# Below this many characters a truncated passage is noise, not context.
_MIN_PASSAGE_CHARS = 20


def build_messages(
    question: str,
    passages: list[Passage],
    memory: list[MemoryTurn],
    max_context_chars: int = 3000,
    system_prompt: str = SYSTEM_PROMPT,
) -> list[dict]:
    """Chat messages for one RAG turn.

    ``passages`` are ranked retrieval hits: ``SearchResult`` objects, or dicts with
    ``text`` and optional ``metadata.title`` and ``collection`` (training chats have no
    collection); ``memory`` holds earlier turns, oldest first.
    """
    messages = [{"role": "system", "content": system_prompt}]
    for turn in memory:
        if turn.user:
            messages.append({"role": "user", "content": turn.user})
        if turn.assistant:
            messages.append({"role": "assistant", "content": turn.assistant})
    context = format_passages(passages, max_context_chars)
    messages.append({"role": "user", "content": f"{CONTEXT_PREFIX}{context}{QUESTION_SEPARATOR}{question.strip()}"})
    return messages


CONTEXT_PREFIX, QUESTION_SEPARATOR = "참고 문서:\n", "\n\n질문: "


def question_of(message: str) -> str:
    """The question of a message written in this prompt format (another RAG system, or
    another EchoRAG using this one as its OpenAI-compatible teacher, sends its passages and
    then the question): EchoRAG answers from its own documents, so only the question counts.
    Any other message is all question."""
    if message.startswith(CONTEXT_PREFIX) and QUESTION_SEPARATOR in message:
        return message[message.rindex(QUESTION_SEPARATOR) + len(QUESTION_SEPARATOR):].strip() or message
    return message


def format_passages(passages: list[Passage], max_chars: int = 3000) -> str:
    """Number passages [1], [2]… in rank order; the block never exceeds ``max_chars``.

    The best-ranked passages are kept whole as long as they fit, the first one that
    does not fit is cut, and the rest are dropped.
    """
    blocks: list[str] = []
    used = 0
    for number, passage in enumerate(passages, start=1):
        text, title, source = _fields(passage)
        header = _header(number, title, source)
        separator = 2 if blocks else 0  # blocks are joined by a blank line
        room = max_chars - used - separator - len(header) - 1  # 1: newline after the header
        if room < _MIN_PASSAGE_CHARS:
            break
        text = text.strip()
        if len(text) > room:
            text = text[: room - 1].rstrip() + "…"
        block = f"{header}\n{text}"
        blocks.append(block)
        used += separator + len(block)
    return "\n\n".join(blocks) if blocks else NO_CONTEXT


def _fields(passage: Passage) -> tuple[str, str | None, str | None]:
    """Text, title and collection of a passage, whichever of the two shapes it has."""
    if isinstance(passage, Mapping):
        return passage["text"], (passage.get("metadata") or {}).get("title"), passage.get("collection")
    return passage.text, (passage.metadata or {}).get("title"), passage.collection


def _header(number: int, title: str | None, source: str | None) -> str:
    labels = " · ".join(
        label for label in (title and f"제목: {title}", source and f"출처: {source}") if label
    )
    return f"[{number}] {labels}" if labels else f"[{number}]"
