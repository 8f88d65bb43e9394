"""Guard rails over real HTTP: per-user rate limit, body size limit, no open CORS, admin routes closed."""

import time

import pytest

from tests.serve.conftest import ADMIN

pytestmark = pytest.mark.serve


def test_a_caller_over_the_rate_limit_gets_429_with_retry_after(client):
    # Open mode: without a session or a key, nothing but the address identifies a caller.
    body = {"input": "안녕하세요", "user": "rate-limit-test-user"}
    session = client.post("/sessions").json()["session_id"]
    # The bucket refills at 2 requests a second while we send, so a single request after
    # a 429 may pass again; look at the first refusal rather than at a fixed position.
    statuses, limited = [], None
    while limited is None and len(statuses) < 200:
        response = client.post("/v1/embeddings", json=body)
        statuses.append(response.status_code)
        if response.status_code == 429:
            limited = response
    assert statuses[:30] == [200] * 30  # the default burst
    assert limited is not None, statuses
    assert int(limited.headers["Retry-After"]) >= 1
    assert "요청이 너무 많습니다" in limited.json()["error"]["message"]
    # A label in the body is not an identity: it gets no bucket of its own ...
    relabelled = [client.post("/v1/embeddings", json={**body, "user": "someone-else"}).status_code for _ in range(4)]
    assert 429 in relabelled, relabelled  # (one may pass: the bucket refills while we send)
    # ... while a caller holding a session has its own.
    chat = client.post("/chat", json={"message": "안녕하세요", "session_id": session})
    assert chat.status_code == 200, chat.text
    time.sleep(16)  # the address's bucket refills (2 a second) before other tests chat without a session


def test_a_body_over_the_limit_is_refused_before_it_is_read(client):
    huge = {"documents": [{"text": "가" * (11 * 1024 * 1024 // 3)}]}
    response = client.post("/documents", json=huge, headers=ADMIN)
    assert response.status_code == 413
    assert "exceeds" in response.json()["error"]


def test_no_cross_origin_access_by_default(client):
    preflight = {"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"}
    response = client.options("/chat", headers=preflight)
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize(
    "method,path",
    [
        ("POST", "/mlops/settings"), ("POST", "/mlops/finetune"), ("POST", "/mlops/rollback"),
        ("POST", "/mlops/promote"), ("DELETE", "/mlops/conversations"), ("POST", "/mlops/cleanup"),
        ("POST", "/mlops/export"), ("POST", "/documents"), ("GET", "/mlops/conversations"),
        ("GET", "/mlops/events"),
    ],
)
def test_admin_routes_refuse_without_the_token(client, method, path):
    for headers in ({}, {"Authorization": "Bearer wrong-token"}):
        response = client.request(method, path, json={}, headers=headers)
        assert response.status_code == 401, (path, response.text)
        assert response.headers["WWW-Authenticate"] == "Bearer"
