"""Identity and privacy over real HTTP: in ``open`` mode sessions are private and a
``user_id`` is only a label; in ``api_keys`` mode (a second application, ``/keys``)
keys decide the user, are stored hashed, are revoked at once, and a deleted user is
gone from SQLite, from Chroma and from every later training set."""

import shutil
import sqlite3
import uuid

import httpx
import pytest

from tests.serve.conftest import ADMIN, ADMIN_TOKEN

pytestmark = pytest.mark.serve

PRIVATE = "제 이름은 김철수이며 당뇨병 진단을 받았습니다. 보험 청구는 어떻게 하나요?"
SPECIFIC = "김철수"  # a word of the private turn that no document or generated answer contains


def memory_hits(body: dict) -> list[dict]:
    return [h for h in body["search_results"] if h["collection"] == "memory"]


def leaks(body: dict, *turn_ids: str) -> bool:
    """Whether an answer shows any of these turns, or the private text at all."""
    shown = [h["id"] for h in memory_hits(body)] + [m["user"] for m in body["memory_content"]]
    return any(t in shown for t in turn_ids) or SPECIFIC in str(body["memory_content"]) or any(
        SPECIFIC in h["text"] for h in memory_hits(body)
    )


# -- open mode (the session application) ----------------------------------------------------


def test_two_clients_without_ids_never_see_each_other(client):
    a = client.post("/chat", json={"message": PRIVATE})
    assert a.status_code == 200, a.text
    a = a.json()
    assert a["session_id"].startswith("s-") and len(a["session_id"]) >= 40
    b = client.post("/chat", json={"message": "안녕하세요"}).json()
    assert b["session_id"] != a["session_id"]
    assert b["memory_content"] == [] and not leaks(b, a["turn_id"])
    # Even a question about A's turn, from elsewhere, recalls nothing of it.
    c = client.post("/chat", json={"message": "김철수 당뇨병 보험 청구"}).json()
    assert not leaks(c, a["turn_id"])

    # A's own session remembers A (short-term memory and the memory collection).
    follow = client.post("/chat", json={"message": "당뇨병 보험 청구 서류는요?", "session_id": a["session_id"]}).json()
    assert follow["session_id"] == a["session_id"]
    assert follow["memory_content"][0]["user"] == PRIVATE
    assert a["turn_id"] in [h["id"] for h in memory_hits(follow)]

    # Memory is read only with the session's id; the old shared session does not exist.
    assert client.get("/memory", params={"session_id": a["session_id"]}).json()["turns"][0]["user"] == PRIVATE
    assert [t["user"] for t in client.get("/memory", params={"session_id": b["session_id"]}).json()["turns"]] == ["안녕하세요"]
    for guess in ("default", "anonymous", a["session_id"][:-2] + "xx", f"s-{uuid.uuid4().hex}.abc"):
        r = client.get("/memory", params={"session_id": guess})
        assert r.status_code == 404 and "세션을 찾을 수 없습니다" in r.json()["error"], guess
        assert client.delete("/memory", params={"session_id": guess}).status_code == 404
    assert client.get("/memory").status_code == 422  # no default session


def test_claiming_another_users_id_recalls_nothing_of_theirs(client):
    victim = client.post("/chat", json={"message": PRIVATE, "user_id": "kim-chulsoo"}).json()
    thief = client.post("/chat", json={"message": "김철수 당뇨병 보험 청구", "user_id": "kim-chulsoo"}).json()
    assert thief["session_id"] != victim["session_id"] and not leaks(thief, victim["turn_id"])
    made_up = client.post("/chat", json={"message": "안녕", "user_id": "kim-chulsoo", "session_id": "kim-session"})
    assert made_up.status_code == 404 and "세션" in made_up.json()["error"]
    assert made_up.json()["detail"] == {"session": "unknown"}


def test_feedback_touches_only_a_turn_of_the_session_given(client):
    mine = client.post("/chat", json={"message": "제주도는 어떤 섬인가요? (피드백 범위)"}).json()
    other = client.post("/chat", json={"message": "안녕하세요 (피드백 범위)"}).json()
    turn = {"turn_id": mine["turn_id"], "rating": "up"}
    assert client.post("/feedback", json=turn).status_code == 404
    assert client.post("/feedback", json={**turn, "session_id": other["session_id"]}).status_code == 404
    assert client.post("/feedback", json={**turn, "session_id": "s-guess.abc"}).status_code == 404
    ok = client.post("/feedback", json={**turn, "session_id": mine["session_id"]})
    assert ok.status_code == 200 and ok.json()["rating"] == 1


def test_a_session_holder_erases_their_session(client):
    first = client.post("/chat", json={"message": "지워질 대화: 제 전화번호를 잊어 주세요"}).json()
    session = first["session_id"]
    client.post("/chat", json={"message": "지워질 대화 두 번째", "session_id": session})
    exported = client.get(f"/admin/sessions/{session}/conversations", headers=ADMIN).json()
    assert exported["count"] == 2 and client.get(f"/admin/sessions/{session}/conversations").status_code == 401
    assert client.delete(f"/sessions/{session[:-1]}x").status_code == 404
    report = client.delete(f"/sessions/{session}").json()
    assert report["conversations"] == 2 and report["vectors"] == 2
    assert client.get(f"/admin/sessions/{session}/conversations", headers=ADMIN).json()["count"] == 0
    assert client.get("/memory", params={"session_id": session}).json()["turns"] == []
    again = client.post("/chat", json={"message": "지워진 세션의 새 질문", "session_id": session}).json()
    assert again["mlops_info"]["collected"] is False  # an erased session is never collected again
    event = client.get("/mlops/events", params={"event_type": "data_erased", "limit": 1}, headers=ADMIN).json()
    assert event["events"][0]["data"]["conversations"] == 2 and session not in str(event)


def test_me_and_sessions_in_open_mode(client):
    assert client.get("/me").json() == {"auth_mode": "open", "user_id": None, "name": None, "key_required": False}
    session = client.post("/sessions").json()["session_id"]
    assert client.get("/memory", params={"session_id": session}).json()["turns"] == []


# -- api_keys mode (a second application) ----------------------------------------------------


@pytest.fixture(scope="module")
def keys_app(ray_cluster, app_settings, tiny_model_path, tmp_path_factory):
    """EchoRAG with ``auth_mode=api_keys`` at ``/keys``: its own data dir and collector."""
    from ray import serve

    from deployments.app import build_app
    from deployments.mlops import stop_app_actors

    root = tmp_path_factory.mktemp("keys-app")
    shutil.copytree(tiny_model_path, root / "models" / "tiny-ko")
    settings = {**app_settings, "data_dir": str(root), "auth_mode": "api_keys",
                "finetune_webhook_url": None, "finetune_auto_trigger": False,
                "engine": "transformers"}  # the fallback engine, forced: the shared app runs vLLM
    serve.run(build_app(settings), name="keys", route_prefix="/keys")
    documents = [
        {"id": "insurance", "text": "보험금 청구는 진단서와 영수증을 보험사에 제출하면 된다. 청구는 3년 안에 해야 한다."},
        {"id": "hangul", "text": "훈민정음은 1443년 세종대왕이 창제한 한국의 문자 체계이다."},
    ]
    with httpx.Client(base_url=f"{ray_cluster}/keys", timeout=180) as http:
        assert http.post("/documents", json={"documents": documents}, headers=ADMIN).is_success
        yield http, root
    serve.delete("keys")
    stop_app_actors("keys")


def add_user(http, name: str) -> tuple[str, dict]:
    r = http.post("/admin/users", json={"name": name}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return r.json()["user"]["id"], {"Authorization": f"Bearer {r.json()['api_key']}"}


def test_without_a_key_every_user_route_is_a_korean_401(keys_app):
    http, _ = keys_app
    routes = [("POST", "/chat", {"message": "안녕"}), ("POST", "/chat/stream", {"message": "안녕"}),
              ("GET", "/memory?session_id=s-x.y", None), ("DELETE", "/memory?session_id=s-x.y", None),
              ("POST", "/feedback", {"turn_id": "t", "rating": "up"}), ("POST", "/sessions", None),
              ("GET", "/v1/models", None), ("POST", "/v1/embeddings", {"input": "안녕"}),
              ("POST", "/v1/chat/completions", {"model": "echorag", "messages": [{"role": "user", "content": "안녕"}]})]
    for headers, wanted in (({}, "사용자 키가 필요합니다"), (ADMIN, "관리자 토큰은 사용자 키가 아닙니다"),
                            ({"Authorization": "Bearer erk_0123456789ab_" + "x" * 43}, "올바르지 않거나 폐기")):
        for method, path, body in routes:
            r = http.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (path, r.text)
            error = r.json()["error"]
            assert wanted in (error if isinstance(error, str) else error["message"]), (path, r.text)
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert http.get("/me").json()["key_required"] is True
    assert http.post("/chat", json={}).status_code == 401  # the key is checked before the body


def test_keys_decide_the_user_who_cannot_read_another(keys_app):
    http, root = keys_app
    alice, as_alice = add_user(http, f"앨리스-{uuid.uuid4().hex[:4]}")
    bob, as_bob = add_user(http, f"밥-{uuid.uuid4().hex[:4]}")
    assert http.get("/me", headers=as_alice).json()["user_id"] == alice

    first = http.post("/chat", json={"message": PRIVATE, "user_id": bob}, headers=as_alice).json()
    stored = http.get(f"/admin/users/{alice}/conversations", headers=ADMIN).json()
    assert stored["count"] == 1 and stored["conversations"][0]["user_id"] == alice  # the body's user_id is ignored
    # Alice, in a new session, recalls her own earlier turn (per user, across sessions) ...
    again = http.post("/chat", json={"message": "김철수 당뇨병 보험 청구"}, headers=as_alice).json()
    assert again["session_id"] != first["session_id"] and first["turn_id"] in [h["id"] for h in memory_hits(again)]
    # ... Bob does not, and Alice's session is not even there for him.
    theirs = http.post("/chat", json={"message": "김철수 당뇨병 보험 청구"}, headers=as_bob).json()
    assert not leaks(theirs, first["turn_id"])
    for method, path, body in (("GET", f"/memory?session_id={first['session_id']}", None),
                               ("POST", "/chat", {"message": "안녕", "session_id": first["session_id"]}),
                               ("DELETE", f"/sessions/{first['session_id']}", None),
                               ("POST", "/feedback", {"turn_id": first["turn_id"], "rating": "down"})):
        assert http.request(method, path, json=body, headers=as_bob).status_code == 404, path
    assert http.get("/memory", params={"session_id": first["session_id"]}, headers=as_alice).json()["turns"]
    assert http.post("/feedback", json={"turn_id": first["turn_id"], "rating": "up"}, headers=as_alice).status_code == 200

    # Keys are stored hashed: neither a key nor its secret is in the database files.
    raw = b"".join(p.read_bytes() for p in root.glob("echorag.sqlite*"))
    for headers in (as_alice, as_bob):
        key = headers["Authorization"].removeprefix("Bearer ")
        assert key.encode() not in raw and key.split("_", 2)[2].encode() not in raw
    db = sqlite3.connect(f"file:{root / 'echorag.sqlite'}?mode=ro", uri=True)
    assert db.execute("SELECT COUNT(*) FROM api_keys WHERE length(salt) = 32 AND length(digest) = 64").fetchone()[0] >= 2
    db.close()


def test_revocation_takes_effect_on_the_next_request(keys_app):
    http, _ = keys_app
    user, headers = add_user(http, f"폐기-{uuid.uuid4().hex[:4]}")
    assert http.post("/sessions", headers=headers).status_code == 201
    assert http.post(f"/admin/users/{user}/revoke", headers=ADMIN).status_code == 200
    r = http.post("/sessions", headers=headers)
    assert r.status_code == 401 and "폐기" in r.json()["error"]
    fresh = http.post(f"/admin/users/{user}/keys", headers=ADMIN).json()["api_key"]
    assert http.post("/sessions", headers={"Authorization": f"Bearer {fresh}"}).status_code == 201
    listed = {u["id"]: u for u in http.get("/admin/users", headers=ADMIN).json()["users"]}
    assert [k["revoked_at"] is None for k in listed[user]["keys"]] == [False, True]


def test_users_have_their_own_rate_limit(keys_app):
    http, _ = keys_app
    _, noisy = add_user(http, f"과다-{uuid.uuid4().hex[:4]}")
    _, quiet = add_user(http, f"조용-{uuid.uuid4().hex[:4]}")
    statuses = []  # until the first refusal (the bucket refills at 2 a second meanwhile)
    while 429 not in statuses and len(statuses) < 200:
        statuses.append(http.post("/v1/embeddings", json={"input": "가"}, headers=noisy).status_code)
    assert statuses[:30] == [200] * 30 and statuses[-1] == 429, statuses
    assert http.post("/v1/embeddings", json={"input": "가"}, headers=quiet).status_code == 200


def test_a_deleted_user_is_gone_from_sqlite_chroma_and_later_training(keys_app):
    http, root = keys_app
    user, headers = add_user(http, f"삭제-{uuid.uuid4().hex[:4]}")
    marker = f"삭제표식{uuid.uuid4().hex[:6]}"  # in this user's turns only
    turns = [http.post("/chat", json={"message": f"{marker} 보험 청구 ({i})"}, headers=headers).json() for i in range(2)]
    _, other = add_user(http, f"남는-{uuid.uuid4().hex[:4]}")
    kept = http.post("/chat", json={"message": "훈민정음은 누가 만들었나요? (남는 사용자)"}, headers=other).json()
    invert = {"id": turns[0]["turn_id"], "collection": "memory", "method": "nearest"}
    assert http.post("/vectors/invert", json=invert, headers=ADMIN).status_code == 200  # remembered in Chroma
    assert marker in http.post("/mlops/export", json={"inline": True}, headers=ADMIN).json()["jsonl"]

    report = http.delete(f"/admin/users/{user}", headers=ADMIN)
    assert report.status_code == 200, report.text
    report = report.json()
    assert (report["conversations"], report["pending"], report["vectors"], report["keys_revoked"]) == (2, 2, 2, 1)

    assert http.post("/sessions", headers=headers).status_code == 401  # the key died with the user
    db = sqlite3.connect(f"file:{root / 'echorag.sqlite'}?mode=ro", uri=True)
    assert db.execute("SELECT COUNT(*) FROM conversations WHERE user_id = ?", (user,)).fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM users WHERE id = ?", (user,)).fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM conversations WHERE id = ?", (kept["turn_id"],)).fetchone()[0] == 1
    db.close()
    assert marker.encode() not in b"".join(p.read_bytes() for p in root.glob("echorag.sqlite*"))
    for turn in turns:
        gone = http.post("/vectors/invert", json={**invert, "id": turn["turn_id"]}, headers=ADMIN)
        assert gone.status_code == 404, gone.text
    training_set = http.post("/mlops/export", json={"inline": True}, headers=ADMIN).json()["jsonl"]
    assert marker not in training_set and "남는 사용자" in training_set
    events = http.get("/mlops/events", params={"event_type": "data_erased"}, headers=ADMIN).json()["events"]
    assert events and events[0]["data"]["subject"] == user and events[0]["data"]["conversations"] == 2


def test_the_openai_client_with_a_user_key(keys_app, ray_cluster):
    import openai

    http, _ = keys_app
    user, headers = add_user(http, f"오픈에이아이-{uuid.uuid4().hex[:4]}")
    key = headers["Authorization"].removeprefix("Bearer ")
    oai = openai.OpenAI(base_url=f"{ray_cluster}/keys/v1", api_key=key, max_retries=0, timeout=120)
    assert [m.id for m in oai.models.list()][:2] == ["echorag", "echorag:base"]
    question = f"훈민정음은 누가 만들었나요? ({uuid.uuid4().hex[:6]})"  # a new turn, never a duplicate
    completion = oai.chat.completions.create(model="echorag", messages=[{"role": "user", "content": question}])
    assert completion.choices[0].message.content
    turn_id = completion.model_extra["echorag"]["turn_id"]
    stored = http.get(f"/admin/users/{user}/conversations", headers=ADMIN).json()["conversations"]
    assert [t["id"] for t in stored] == [turn_id]
    assert len(oai.embeddings.create(model="echorag", input="안녕").data[0].embedding) > 100
    with pytest.raises(openai.AuthenticationError, match="사용자 키"):
        openai.OpenAI(base_url=f"{ray_cluster}/keys/v1", api_key="not-a-key", max_retries=0).models.list()


def test_the_cli_issues_keys_chats_with_one_and_deletes_the_user(keys_app, ray_cluster, monkeypatch, capsys):
    import json

    from echorag.cli import main

    http, _ = keys_app
    url = f"{ray_cluster}/keys"
    monkeypatch.setenv("ECHORAG_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.delenv("ECHORAG_API_KEY", raising=False)

    def run(*argv, ok=True):
        capsys.readouterr()
        code = main(["--url", url, *argv])
        out, err = capsys.readouterr()
        assert (code == 0) == ok, f"exit {code}\nstdout: {out}\nstderr: {err}"
        return out, err

    issued = json.loads(run("users", "add", f"터미널-{uuid.uuid4().hex[:4]}", "--json")[0])
    user, key = issued["user"]["id"], issued["api_key"]
    assert user in run("users", "list")[0]
    _, err = run("chat", "--no-stream", "안녕하세요", ok=False)
    assert "ECHORAG_API_KEY" in err  # no key: a hint, not a traceback
    monkeypatch.setenv("ECHORAG_API_KEY", key)
    answer = json.loads(run("chat", "--json", "--no-stream", f"훈민정음은 누가 만들었나요? ({uuid.uuid4().hex[:6]})")[0])
    assert http.get(f"/admin/users/{user}/conversations", headers=ADMIN).json()["conversations"][0]["id"] == answer["turn_id"]
    assert "--yes" in run("users", "delete", user, ok=False)[1]
    out, _ = run("users", "delete", user, "--yes")
    assert f"deleted {user}: 1 turns" in out
    assert "ECHORAG_API_KEY" in run("chat", "--no-stream", "안녕", ok=False)[1]  # the key died with the user

@pytest.mark.browser
def test_the_web_page_asks_for_the_user_key_once(keys_app, ray_cluster):
    from pathlib import Path

    from playwright.sync_api import expect, sync_playwright

    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian chromium is not installed at /usr/bin/chromium")
    http, _ = keys_app
    user, headers = add_user(http, f"웹-{uuid.uuid4().hex[:4]}")
    key = headers["Authorization"].removeprefix("Bearer ")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_context(locale="ko-KR").new_page()
            page.set_default_timeout(30_000)
            page.goto(f"{ray_cluster}/keys/")
            expect(page.locator("#key-dialog")).to_be_visible()
            page.fill("#user-key", ADMIN_TOKEN)  # the admin token is not a user key
            page.press("#user-key", "Enter")
            expect(page.locator("#user-key-error")).to_contain_text("올바르지 않습니다")
            page.fill("#user-key", key)
            page.press("#user-key", "Enter")
            expect(page.locator("#key-dialog")).to_be_hidden()
            assert page.evaluate("sessionStorage.getItem('echorag.userKey')") == key
            page.fill("#chat-input", f"훈민정음은 누가 만들었나요? (웹 {uuid.uuid4().hex[:6]})")
            page.press("#chat-input", "Enter")
            answer = page.locator('[data-role="assistant"][data-state="done"]')
            answer.wait_for(timeout=120_000)
            stored = http.get(f"/admin/users/{user}/conversations", headers=ADMIN).json()["conversations"]
            assert [t["id"] for t in stored] == [answer.get_attribute("data-turn-id")]
            session = page.evaluate("JSON.parse(localStorage.getItem('echorag.session'))")
            assert session["user_id"] == user and stored[0]["session_id"] == session["session_id"]
            page.reload()  # same tab: the key is not asked again, the conversation stays
            expect(page.locator('[data-role="assistant"]')).to_have_count(1)
            expect(page.locator("#key-dialog")).to_be_hidden()
        finally:
            browser.close()
