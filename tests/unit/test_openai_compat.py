"""The OpenAI request mapping onto /chat, without a server."""

import unicodedata

import pytest
from pydantic import ValidationError

from echorag.serving import openai as oai
from echorag.types import MemoryTurn


def test_model_names_pick_the_active_a_pinned_or_the_base_version():
    assert oai.parse_model("echorag") is None
    assert oai.parse_model("echorag:v3") == "v3"
    assert oai.parse_model("echorag:base") == "base"
    for bad in ("gpt-4o", "echorag:", "echo"):
        with pytest.raises(oai.UnknownModel, match="does not exist"):
            oai.parse_model(bad)


def test_messages_become_the_question_and_the_conversation_so_far():
    request = oai.ChatCompletionRequest(
        model="echorag:v2",
        user="kim",
        temperature=0.3,  # accepted for compatibility, sampling is set server-side
        messages=[
            {"role": "system", "content": "친절하게"},
            {"role": "user", "content": "김치가 뭐예요?"},
            {"role": "assistant", "content": "발효 음식입니다."},
            {"role": "user", "content": [{"type": "text", "text": "어떻게 "}, {"type": "text", "text": "만들어요?"}]},
        ],
    )
    chat, history = oai.to_chat_request(request, oai.parse_model(request.model))
    assert chat.message == "어떻게 만들어요?"
    assert chat.adapter_version == "v2" and chat.user_id == "kim" and chat.session_id == "openai:kim"
    assert history == [MemoryTurn(user="김치가 뭐예요?", assistant="발효 음식입니다.")]


def test_a_prompt_with_its_own_passages_is_answered_by_its_question():
    """Another EchoRAG (this one as its teacher) or any RAG client sends its passages and
    then the question: EchoRAG answers from its own documents, so the question is what counts."""
    from echorag.answering.prompts import build_messages
    from echorag.types import SearchResult

    faq = SearchResult(id="f#0", text="자주 묻는 질문\n\n질문: 환불은 언제까지 되나요?\n답변: 7일 이내입니다.",
                       score=1.0, collection="documents", metadata={})
    prompt = build_messages("배송은 얼마나 걸리나요?", [faq], [])[-1]["content"]
    request = oai.ChatCompletionRequest(model="echorag", messages=[{"role": "user", "content": prompt}])
    assert oai.to_chat_request(request, None)[0].message == "배송은 얼마나 걸리나요?"
    plain = oai.ChatCompletionRequest(model="echorag", messages=[{"role": "user", "content": "질문: 이건 그대로"}])
    assert oai.to_chat_request(plain, None)[0].message == "질문: 이건 그대로"


@pytest.mark.parametrize(
    "messages",
    [[], [{"role": "assistant", "content": "안녕"}], [{"role": "user", "content": "  "}], [{"role": "robot", "content": "x"}]],
)
def test_a_request_must_end_with_a_user_message(messages):
    with pytest.raises(ValidationError):
        oai.ChatCompletionRequest(messages=messages)


def test_embedding_inputs_are_checked_and_normalised():
    nfd = unicodedata.normalize("NFD", "한국")  # as macOS writes it
    assert oai.EmbeddingRequest(input=nfd).texts() == ["한국"]
    assert oai.EmbeddingRequest(input=["가", "나"]).texts() == ["가", "나"]
    for bad in ([], [""], ["x"] * 257):
        with pytest.raises(ValueError):
            oai.EmbeddingRequest(input=bad).texts()


def test_errors_use_openais_envelope():
    body = oai.error_body("model 'x' does not exist")
    assert body == {"error": {"message": "model 'x' does not exist", "type": "invalid_request_error",
                              "param": None, "code": None}}
