"""HTTP guard rails without Ray: the per-user rate limiter, body size limit and CORS."""

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from deployments.guard import RequestGuard
from echorag.serving.ratelimit import RateLimiter


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_rate_limiter_allows_a_burst_then_refills_at_the_rate():
    clock = FakeClock()
    limiter = RateLimiter(per_minute=60, burst=3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.acquire("a")
    assert wait == pytest.approx(1.0)
    assert RateLimiter.retry_after(wait) == "1"
    assert limiter.acquire("b") == 0.0  # other users are not affected
    clock.now += 1.0
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0


def test_rate_limiter_off_and_key_eviction():
    assert RateLimiter(per_minute=0, burst=1).acquire("x") == 0.0
    limiter = RateLimiter(per_minute=1, burst=1, max_keys=2, clock=FakeClock())
    for key in "abc":
        limiter.acquire(key)
    assert len(limiter._buckets) == 2


@pytest.fixture
def guarded():
    app = FastAPI()
    app.add_middleware(RequestGuard)

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        return {"bytes": len(await request.body())}

    yield TestClient(app)
    RequestGuard.configure(10 * 1024 * 1024, ())


def test_body_over_the_limit_is_refused_with_413_json(guarded):
    RequestGuard.configure(2048, ())
    assert guarded.post("/echo", content=b"x" * 2048).json() == {"bytes": 2048}
    response = guarded.post("/echo", content=b"x" * 2049)
    assert response.status_code == 413 and "2048 bytes" in response.json()["error"]

    def chunked():  # no Content-Length: counted as it arrives
        for _ in range(5):
            yield b"x" * 1000

    response = guarded.post("/echo", content=chunked())
    assert response.status_code == 413


def test_cors_only_for_configured_origins(guarded):
    preflight = {"Origin": "https://chat.example.com", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in guarded.options("/echo", headers=preflight).headers
    RequestGuard.configure(10 * 1024 * 1024, ("https://chat.example.com",))
    response = guarded.options("/echo", headers=preflight)
    assert response.headers["access-control-allow-origin"] == "https://chat.example.com"
    other = guarded.options("/echo", headers={**preflight, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
