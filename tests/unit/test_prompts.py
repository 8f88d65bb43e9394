"""Prompt assembly: system prompt, numbered passages, memory, bounded context."""

import re

from echorag.answering.prompts import NO_CONTEXT, SYSTEM_PROMPT, build_messages, format_passages
from echorag.types import MemoryTurn

PASSAGES = [
    {"text": "서울은 대한민국의 수도이다.", "metadata": {"title": "서울"}, "collection": "documents"},
    {"text": "부산은 항구 도시이다.", "metadata": {}, "collection": "memory"},
    {"text": "제주도는 화산섬이다."},
]


def test_system_prompt_is_korean_grounded_and_cites_by_number():
    assert re.search(r"[가-힣]", SYSTEM_PROMPT)
    assert "한국어" in SYSTEM_PROMPT and "[1]" in SYSTEM_PROMPT and "참고 문서" in SYSTEM_PROMPT
    assert "찾을 수 없습니다" in SYSTEM_PROMPT  # what to say when the passages lack the answer


def test_passages_are_numbered_in_rank_order_before_the_question():
    messages = build_messages("  수도는 어디인가요? ", PASSAGES, [])
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == SYSTEM_PROMPT
    user = messages[-1]["content"]
    assert user.startswith("참고 문서:\n[1] 제목: 서울 · 출처: documents\n서울은 대한민국의 수도이다.")
    assert "[2] 출처: memory\n부산은 항구 도시이다." in user
    assert "[3]\n제주도는 화산섬이다." in user
    assert user.index("[1]") < user.index("[2]") < user.index("[3]") < user.index("질문:")
    assert user.endswith("질문: 수도는 어디인가요?")


def test_memory_turns_come_first_oldest_first():
    memory = [MemoryTurn(user="첫 질문", assistant="첫 답"), MemoryTurn(user="둘째 질문", assistant="둘째 답")]
    messages = build_messages("셋째 질문", PASSAGES[:1], memory)
    assert [(m["role"], m["content"]) for m in messages[1:-1]] == [
        ("user", "첫 질문"), ("assistant", "첫 답"), ("user", "둘째 질문"), ("assistant", "둘째 답"),
    ]
    assert messages[-1]["role"] == "user" and "셋째 질문" in messages[-1]["content"]


def test_context_is_bounded_and_truncated_in_rank_order():
    long = [{"text": "가" * 400}, {"text": "나" * 400}, {"text": "다" * 400}]
    context = format_passages(long, max_chars=600)
    assert len(context) <= 600
    assert "가" * 400 in context  # the best passage stays whole
    assert "[2]" in context and context.endswith("…")  # the next one is cut
    assert "[3]" not in context and "다" not in context  # the rest is dropped
    for budget in (0, 10, 50, 401, 1000, 3000):
        assert len(format_passages(long, budget)) <= max(budget, len(NO_CONTEXT))
    user = build_messages("질문", long, [], max_context_chars=600)[-1]["content"]
    assert context in user


def test_no_passages_says_so():
    assert build_messages("안녕", [], [])[-1]["content"] == f"참고 문서:\n{NO_CONTEXT}\n\n질문: 안녕"


def test_messages_render_with_the_tiny_chat_template(tiny_tokenizer):
    messages = build_messages("수도는?", PASSAGES, [MemoryTurn(user="안녕", assistant="안녕하세요")])
    prompt = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "참고 문서:\n[1]" in prompt and "안녕하세요<|eot_id|>" in prompt
    assert prompt.endswith("질문: 수도는?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
