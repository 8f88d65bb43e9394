"""The caller dependency of user routes without Ray: each auth mode over a real FastAPI
app (the identity service replaced by a stand-in with the same ``authenticate`` method)."""

import asyncio

import pytest
from fastapi import FastAPI, HTTPException, Request, Security
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from deployments.auth import Sessions, UnknownSession, UserAuth, optional_caller, owner, require_caller
from echorag.config import Settings
from echorag.identity.access import Caller, SessionSigner
from echorag.serving.memory import SessionMemory

ADMIN = "admin-token-for-tests"
GOOD = "erk_0123456789ab_" + "s" * 43


class Remote:
    def __init__(self, fn):
        self.fn = fn

    async def remote(self, *args):
        return self.fn(*args)


class FakeIdentities:
    def __init__(self):
        self.calls = 0
        self.revoked = False
        self.authenticate = Remote(self._authenticate)
        self.session_secret = Remote(lambda: "s" * 32)

    def _authenticate(self, key):
        self.calls += 1
        return Caller(user_id="usr_kim", name="김") if key == GOOD and not self.revoked else None


def app_for(mode: str, client=("testclient", 50000), **settings):
    identities = FakeIdentities()
    UserAuth.configure(Settings(auth_mode=mode, **settings), identities, ADMIN)
    app = FastAPI()

    @app.exception_handler(HTTPException)
    async def _error(request, exc):
        return JSONResponse({"error": exc.detail, "detail": getattr(exc, "info", None)}, exc.status_code, exc.headers)

    @app.post("/chat")
    async def chat(body: dict, caller: Caller = Security(require_caller)):
        return {"user_id": caller.user_id}

    @app.get("/me")
    async def me(caller: Caller = Security(optional_caller)):
        return {"user_id": caller.user_id}

    return TestClient(app, client=client), identities


@pytest.fixture(autouse=True)
def reset():
    yield
    UserAuth.configure(Settings(), None, None)


def test_open_mode_needs_no_key_and_ignores_one():
    http, identities = app_for("open")
    assert http.post("/chat", json={}).json() == {"user_id": None}
    assert http.post("/chat", json={}, headers={"Authorization": f"Bearer {GOOD}"}).json() == {"user_id": None}
    assert identities.calls == 0


def test_api_keys_mode_refuses_before_the_body_and_checks_every_request():
    http, identities = app_for("api_keys")
    for headers, wanted in (({}, "사용자 키가 필요합니다"), ({"Authorization": f"Bearer {ADMIN}"}, "관리자 토큰"),
                            ({"Authorization": "Bearer nope"}, "올바르지 않거나")):
        r = http.post("/chat", content=b"not json at all", headers=headers)
        assert r.status_code == 401 and wanted in r.json()["error"], r.text
        assert r.json()["detail"] == {"auth": "user_key"} and r.headers["WWW-Authenticate"].startswith("Bearer")
    keyed = {"Authorization": f"Bearer {GOOD}"}
    assert http.post("/chat", json={}, headers=keyed).json() == {"user_id": "usr_kim"}
    identities.revoked = True
    assert http.post("/chat", json={}, headers=keyed).status_code == 401  # the next request
    assert http.get("/me").json() == {"user_id": None}  # no key: nobody, not a 401
    assert http.get("/me", headers=keyed).status_code == 401


def test_trusted_header_is_believed_only_from_the_proxy():
    settings = {"trusted_proxies": ["10.0.0.5"], "trusted_user_header": "X-Auth-User"}
    proxied, _ = app_for("trusted_header", client=("10.0.0.5", 4000), **settings)
    assert proxied.post("/chat", json={}, headers={"X-Auth-User": "kim@example.com"}).json() == {"user_id": "kim@example.com"}
    assert proxied.post("/chat", json={}).status_code == 401
    assert proxied.post("/chat", json={}, headers={"X-Auth-User": "anonymous"}).status_code == 401
    direct, _ = app_for("trusted_header", client=("10.0.0.9", 4000), **settings)
    r = direct.post("/chat", json={}, headers={"X-Auth-User": "kim@example.com"})
    assert r.status_code == 401 and "프록시" in r.json()["error"]


def test_sessions_are_issued_held_and_owned():
    asyncio.run(_sessions_are_issued_held_and_owned())


async def _sessions_are_issued_held_and_owned():
    sessions = Sessions(FakeIdentities())
    anyone, kim = Caller(), Caller(user_id="usr_kim")
    mine, new = await sessions.open(anyone, None)
    assert new and await sessions.open(anyone, mine) == (mine, False)
    theirs = await sessions.issue(kim)
    for caller, session_id in ((anyone, theirs), (Caller(user_id="usr_lee"), theirs), (kim, mine), (anyone, "default")):
        with pytest.raises(UnknownSession):
            await sessions.hold(caller, session_id)
    assert owner(anyone, mine) == f"session:{mine}" and owner(kim, theirs) == "usr_kim"
    configured = Sessions(None, "c" * 20)
    assert SessionSigner("c" * 20).verify(await configured.issue(anyone))

    memory = SessionMemory()
    memory.add(theirs, "질문", "답")
    memory.add(mine, "질문", "답")
    assert memory.forget(sessions.belongs("usr_kim")) == 1 and memory.get(mine) and not memory.get(theirs)


def test_forgetting_sessions_by_predicate():
    memory = SessionMemory()
    for s in ("a1", "a2", "b1"):
        memory.add(s, "q", "a")
    assert memory.forget(lambda s: s.startswith("a")) == 2 and len(memory) == 1


def test_a_route_handler_sees_no_request_from_an_unauthenticated_caller():
    seen = []
    http, _ = app_for("api_keys")
    app = http.app

    @app.post("/spy")
    async def spy(request: Request, caller: Caller = Security(require_caller)):
        seen.append(await request.body())
        return {}

    assert http.post("/spy", content=b"secret").status_code == 401 and seen == []
