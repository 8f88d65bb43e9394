"""The official ``openai`` client against EchoRAG's OpenAI-compatible API."""

import numpy as np
import openai
import pytest

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="not-needed", max_retries=0, timeout=120)


def test_models_lists_the_service_and_every_adapter_version(oai, client):
    ids = [m.id for m in oai.models.list()]
    assert ids[:2] == ["echorag", "echorag:base"]
    versions = [v["version"] for v in client.get("/mlops/models").json()["versions"]]
    assert ids[2:] == [f"echorag:{v}" for v in versions if v != "base"]


def test_completion_is_retrieval_augmented_and_counts_tokens(oai):
    completion = oai.chat.completions.create(
        model="echorag", messages=[{"role": "user", "content": "훈민정음은 누가 만들었나요?"}]
    )
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "stop"
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    sources = completion.model_extra["echorag"]["sources"]
    assert any("훈민정음" in s["text"] for s in sources)


def test_stream_arrives_in_chunks_that_join_to_the_answer(oai):
    messages = [
        {"role": "system", "content": "간결하게 답하세요."},
        {"role": "user", "content": "김치는 어떻게 만들어요?"},
        {"role": "assistant", "content": "배추를 절여서 양념에 버무립니다."},
        {"role": "user", "content": "김치는 어떤 음식인가요?"},
    ]
    stream = oai.chat.completions.create(
        model="echorag:base", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) >= 2
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens > 0 and chunks[-1].usage.prompt_tokens > 0
    assert {c.model for c in chunks} == {"echorag:base"}


def test_unknown_model_and_bad_messages_are_clear_4xx(oai):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        oai.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "안녕"}])
    with pytest.raises(openai.NotFoundError, match="not available"):
        oai.chat.completions.create(model="echorag:v999", messages=[{"role": "user", "content": "안녕"}])
    with pytest.raises(openai.UnprocessableEntityError, match="last message"):
        oai.chat.completions.create(model="echorag", messages=[{"role": "assistant", "content": "안녕"}])


def test_embeddings_are_the_services_normalised_vectors(oai):
    texts = ["서울은 대한민국의 수도입니다.", "부산은 항구 도시입니다."]
    result = oai.embeddings.create(model="echorag", input=texts)
    vectors = np.array([d.embedding for d in result.data])
    assert vectors.shape[0] == 2 and vectors.shape[1] >= 256
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    query = oai.embeddings.create(model="echorag", input="한국의 수도는?", extra_body={"input_type": "query"})
    scores = vectors @ np.array(query.data[0].embedding)
    assert scores[0] > scores[1]  # the capital sentence is closer to the capital question


def test_stats_count_the_openai_routes_like_chat(oai, client):
    """/stats counts every chat route in one place: a completion, streamed or not, is a
    request with a latency, as a /chat is."""
    before = client.get("/stats").json()
    oai.chat.completions.create(model="echorag", messages=[{"role": "user", "content": "한강은 어디로 흐르나요?"}])
    list(oai.chat.completions.create(model="echorag", stream=True,
                                     messages=[{"role": "user", "content": "김치는 어떻게 담그나요?"}]))
    after = client.get("/stats").json()
    assert after["requests"] - before["requests"] == 2 and after["errors"] == before["errors"]
    assert after["avg_latency_s"] > 0
