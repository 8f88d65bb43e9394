"""``POST /vectors/invert`` on the running service (e5 embedder): admin only, the store's
echo for stored texts, an iterative restoration that gets close to the target."""

import pytest

from tests.serve.conftest import ADMIN

pytestmark = pytest.mark.serve


def test_inversion_is_admin_only(client):
    assert client.post("/vectors/invert", json={"id": "x"}).status_code == 401


def test_a_stored_chunk_is_echoed_by_nearest_and_approached_by_iterative(client):
    hit = client.post("/chat", json={"message": "훈민정음은 누가 만들었나요?", "user_id": "invert-user"}).json()
    chunk = next(r for r in hit["search_results"] if r["collection"] == "documents")

    echo = client.post("/vectors/invert", json={"id": chunk["id"], "method": "nearest"}, headers=ADMIN)
    assert echo.status_code == 200, echo.text
    assert echo.json()["text"] == chunk["text"] and echo.json()["cosine"] > 0.99

    restored = client.post(
        "/vectors/invert", json={"id": chunk["id"], "method": "iterative", "budget": 120}, headers=ADMIN
    ).json()
    assert restored["method"] == "iterative" and restored["trace"]
    assert restored["text"] != chunk["text"]  # the target itself is never consulted
    first = restored["trace"][0]["cosine"]
    assert restored["cosine"] >= first and restored["cosine"] > 0.8


def test_bad_targets_are_clear_4xx(client):
    dim = len(client.post("/v1/embeddings", json={"input": "가"}).json()["data"][0]["embedding"])
    cases = [
        ({"id": "no-such-chunk"}, 404),
        ({"vector": [0.1] * (dim - 1)}, 422),
        ({"vector": [0.0] * dim}, 422),
        ({"vector": [0.1] * dim, "method": "bag_of_tokens"}, 422),  # e5 is not mean-pooled
        ({"id": "x", "vector": [0.1] * dim}, 422),
        ({}, 422),
    ]
    for body, status in cases:
        response = client.post("/vectors/invert", json=body, headers=ADMIN)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]
