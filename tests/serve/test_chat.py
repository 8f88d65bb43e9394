"""Korean chat over HTTP against the real Serve application (tiny model, e5, Chroma)."""

import json

import pytest

from echorag.documents import read_jsonl, sample_path
from echorag.models.engine import engine_status
from tests.serve.conftest import ADMIN

pytestmark = pytest.mark.serve


def _dev_questions(style: str, n: int) -> list[dict]:
    return [q for q in read_jsonl(sample_path("dev_queries.jsonl")) if q["metadata"]["style"] == style][:n]


@pytest.mark.parametrize("question", _dev_questions("keyword", 4) + _dev_questions("paraphrase", 2), ids=lambda q: q["id"])
def test_korean_question_finds_its_document(client, question):
    r = client.post("/chat", json={"message": question["query"], "user_id": f"u-{question['id']}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["response"].strip()
    top3 = [hit["metadata"]["doc_id"] for hit in body["search_results"] if hit["collection"] == "documents"][:3]
    assert question["relevant_ids"][0] in top3
    assert body["model"] and body["adapter_version"] == "base"
    assert set(body["timing"]) >= {"embedding", "retrieval", "generation", "total"}
    assert set(body["mlops_info"]) == {
        "collected", "total_collected", "new_data_count", "should_train", "training_queued", "current_version",
        "selector_version",
    }
    assert body["mlops_info"]["selector_version"]  # the answer selector that chose the answer


def test_health_says_which_model_serves(client):
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["model_kind"] == "tiny" and body["demo_model"] is True
    # vLLM serves local models wherever it is installed (./setup.sh on x86-64 with AVX-512).
    assert body["engine"] == ("vllm" if engine_status() is None else "transformers")
    assert body["embedder"].startswith("e5:")
    assert body["documents"] >= 48


def test_answer_passes_through_session_memory_and_memory_collection(client):
    first = client.post("/chat", json={"message": "제주도의 특징을 알려줘", "user_id": "mem-user"}).json()
    session = first["session_id"]  # issued by the server: the session continues with it
    second = client.post("/chat", json={"message": "거기 날씨는 어때?", "user_id": "mem-user", "session_id": session}).json()
    assert second["memory_content"] == [{"user": "제주도의 특징을 알려줘", "assistant": first["response"]}]
    # The first turn was embedded into the memory collection and is recalled for this session only.
    assert any(h["collection"] == "memory" and h["id"] == first["turn_id"] for h in second["search_results"])
    other = client.post("/chat", json={"message": "제주도 날씨", "user_id": "someone-else"}).json()
    assert not any(h["collection"] == "memory" and h["id"] == first["turn_id"] for h in other["search_results"])

    memory = client.get("/memory", params={"session_id": session}).json()
    assert len(memory["turns"]) == 2
    assert client.delete("/memory", params={"session_id": session}).json()["cleared"] == 2
    assert client.get("/memory", params={"session_id": session}).json()["turns"] == []


def test_stream_sends_sources_tokens_and_the_final_response(client):
    events = []
    with client.stream("POST", "/chat/stream", json={"message": "김치는 어떻게 담가요?", "user_id": "s1"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    kinds = [e["event"] for e in events]
    assert kinds[0] == "sources" and kinds[-1] == "done" and kinds.count("token") >= 2
    streamed = "".join(e["text"] for e in events if e["event"] == "token").strip()
    assert streamed == events[-1]["response"]["response"]


def test_nfd_message_is_normalised(client):
    import unicodedata

    nfd = unicodedata.normalize("NFD", "훈민정음은 누가 만들었나요?")
    body = client.post("/chat", json={"message": nfd, "user_id": "nfd"}).json()
    assert body["memory_content"] == []
    memory = client.get("/memory", params={"session_id": body["session_id"]}).json()
    assert memory["turns"][0]["user"] == unicodedata.normalize("NFC", nfd)


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"message": ""}, 422),
        ({"message": "   \n\t "}, 422),
        ({}, 422),
        ({"message": 123}, 422),
        ({"message": "가" * 4001}, 413),
        ({"message": "안녕", "session_id": ""}, 422),
    ],
    ids=["empty", "whitespace", "missing", "not-a-string", "too-long", "empty-session"],
)
def test_bad_chat_input_is_a_clear_4xx(client, payload, status):
    r = client.post("/chat", json=payload)
    assert r.status_code == status
    assert isinstance(r.json()["error"], str) and r.json()["error"]


def test_invalid_json_and_bad_documents_are_4xx(client):
    r = client.post("/chat", content=b'{"message": "\xec\x95\x88', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "error" in r.json()
    assert client.post("/documents", json={"documents": []}, headers=ADMIN).status_code == 422
    assert client.post("/documents", json={"documents": [{"text": "  "}]}, headers=ADMIN).status_code == 422
    assert client.get("/no-such-route").status_code == 404


def test_ingested_document_is_searchable_and_replaced_on_reingest(client):
    doc = {"id": "test-ulleungdo", "text": "울릉도 오징어는 가을에 가장 많이 잡힌다. 울릉도는 화산섬이다.", "metadata": {"title": "울릉도"}}
    assert client.post("/documents", json={"documents": [doc]}).status_code == 401  # admins only
    r = client.post("/documents", json={"documents": [doc]}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["ids"] == ["test-ulleungdo"]
    before = client.get("/health").json()["documents"]
    client.post("/documents", json={"documents": [doc]}, headers=ADMIN)
    assert client.get("/health").json()["documents"] == before  # replaced, not duplicated
    body = client.post("/chat", json={"message": "울릉도 오징어는 언제 많이 잡혀?", "user_id": "ul"}).json()
    assert body["search_results"][0]["metadata"]["doc_id"] == "test-ulleungdo"
