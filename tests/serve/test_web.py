"""The web UI in real headless Chromium against the real application: a Korean question
streams an answer with its sources, feedback and memory reach the server, the history
survives a reload and exports; failures are explained in Korean."""

import json
import re
import uuid
from pathlib import Path

import pytest

from tests.serve.conftest import PHONE
from tests.serve.web_page import ask, eventually, open_app, shot, stored_turn

pytestmark = [pytest.mark.serve, pytest.mark.browser]


# -- chat ---------------------------------------------------------------------------------


def test_chat_streams_an_answer_with_sources_feedback_memory_and_export(page, client):
    from playwright.sync_api import expect

    open_app(page)
    health = client.get("/health").json()
    if health["demo_model"]:
        expect(page.locator("#demo-banner")).to_be_visible()
    else:
        expect(page.locator("#demo-banner")).to_be_hidden()
    expect(page.locator("#model-badge")).to_contain_text(health["adapter_version"])

    # Shift+Enter is a new line, not a send.
    page.fill("#chat-input", "첫 줄")
    page.press("#chat-input", "Shift+Enter")
    page.keyboard.type("둘째 줄")
    assert page.input_value("#chat-input") == "첫 줄\n둘째 줄"
    assert page.locator('[data-role="user"]').count() == 0

    question = f"훈민정음은 언제 반포되었나요? (웹 {uuid.uuid4().hex[:6]})"
    answer = ask(page, question)
    expect(answer).to_have_attribute("data-state", "done")
    assert int(answer.get_attribute("data-tokens")) >= 2, "the answer did not arrive as streamed tokens"
    expect(page.locator("#messages")).to_have_attribute("aria-live", "polite")
    expect(answer).to_have_attribute("aria-busy", "false")

    # What the page shows is what the server answered and stored.
    turn_id = answer.get_attribute("data-turn-id")
    turn = eventually(lambda: stored_turn(client, turn_id))
    assert turn["user"] == question
    assert answer.locator(".msg-body").inner_text().strip() == turn["assistant"]

    # Sources: expandable, with score and collection; the documents are the ones the turn cites.
    sources = answer.locator("li.source")
    expect(sources.first).to_be_hidden()
    answer.locator("details.sources summary").click()
    expect(sources.first).to_be_visible()
    assert "훈민정음" in sources.first.locator("strong").inner_text()
    assert re.search(r"점수 \d\.\d{3}", sources.first.inner_text())
    documents = answer.locator('li.source[data-collection="documents"]')
    assert {documents.nth(i).get_attribute("data-id") for i in range(documents.count())} == set(turn["sources"])
    assert "문서" in documents.first.locator(".tag").inner_text()
    timing = answer.locator(".timing").inner_text()
    assert all(stage in timing for stage in ("임베딩", "검색", "생성")), timing

    # Feedback 👍 then 👎 reaches the collector.
    answer.get_by_role("button", name="좋아요").click()
    expect(answer.get_by_role("button", name="좋아요")).to_have_attribute("aria-pressed", "true")
    eventually(lambda: stored_turn(client, turn_id)["feedback"] == 1)
    answer.get_by_role("button", name="싫어요").click()
    expect(answer.get_by_role("button", name="싫어요")).to_have_attribute("aria-pressed", "true")
    expect(answer.get_by_role("button", name="좋아요")).to_have_attribute("aria-pressed", "false")
    eventually(lambda: stored_turn(client, turn_id)["feedback"] == -1)
    shot(page, "chat.png")

    # A reload keeps the session and the history (sources and feedback included).
    session = page.evaluate("JSON.parse(localStorage.getItem('echorag.session'))")
    page.reload()
    open_app(page)
    assert page.evaluate("JSON.parse(localStorage.getItem('echorag.session'))") == session
    restored = page.locator(f'[data-role="assistant"][data-turn-id="{turn_id}"]')
    expect(restored).to_have_count(1)
    expect(restored.get_by_role("button", name="싫어요")).to_have_attribute("aria-pressed", "true")
    assert restored.locator("li.source").count() == answer.locator("li.source").count()

    # Ctrl+M shows the server's memory of this session; Ctrl+K clears it.
    memory = client.get("/memory", params={"session_id": session["session_id"]}).json()
    assert memory["turns"] and memory["turns"][-1]["user"] == question
    page.keyboard.press("Control+KeyM")
    expect(page.locator("#memory-dialog")).to_be_visible()
    expect(page.locator("#memory-list li")).to_have_count(len(memory["turns"]))
    page.keyboard.press("Escape")
    expect(page.locator("#memory-dialog")).to_be_hidden()
    page.keyboard.press("Control+KeyK")
    expect(page.locator('[data-role="system"]')).to_have_count(1)
    assert client.get("/memory", params={"session_id": session["session_id"]}).json()["turns"] == []

    # Ctrl+E exports the history as JSON and as Markdown.
    page.keyboard.press("Control+KeyE")
    expect(page.locator("#export-dialog")).to_be_visible()
    with page.expect_download() as download:
        page.click("#export-json")
    assert download.value.suggested_filename.endswith(".json")
    exported = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert exported["session_id"] == session["session_id"]
    assistant = [m for m in exported["messages"] if m.get("turn_id") == turn_id]
    assert assistant and assistant[0]["text"] == turn["assistant"] and assistant[0]["feedback"] == -1
    with page.expect_download() as download:
        page.click("#export-md")
    assert download.value.suggested_filename.endswith(".md")
    markdown = Path(download.value.path()).read_text(encoding="utf-8")
    assert markdown.startswith("# EchoRAG 대화 기록") and question in markdown and "근거:" in markdown
    page.keyboard.press("Escape")

    # "?" opens the shortcut help (outside the text box).
    page.locator(".brand").click()
    page.keyboard.press("?")
    expect(page.locator("#help-dialog")).to_be_visible()
    expect(page.locator("#help-dialog")).to_contain_text("Ctrl")
    page.keyboard.press("Escape")

    # Phone width: nothing overflows sideways.
    page.set_viewport_size(PHONE)
    page.locator(f'[data-turn-id="{turn_id}"]').scroll_into_view_if_needed()
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    shot(page, "chat-phone.png")
    assert page.console.unexpected() == []


def test_failures_are_explained_in_korean(page):
    from playwright.sync_api import expect

    open_app(page)
    banner = page.locator("#error-banner")

    page.route("**/chat/stream", lambda route: route.abort())
    answer = ask(page, "연결 실패 시험")
    expect(answer).to_have_attribute("data-state", "error")
    expect(banner).to_contain_text("서버에 연결할 수 없습니다")
    page.unroute("**/chat/stream")

    page.route("**/chat/stream", lambda route: route.fulfill(
        status=429, headers={"Retry-After": "7"}, content_type="application/json", body='{"error": "rate limited"}'))
    ask(page, "요청 제한 시험")
    expect(banner).to_contain_text("요청이 너무 많습니다. 7초 후에")
    page.unroute("**/chat/stream")

    page.route("**/chat/stream", lambda route: route.fulfill(status=503, body="unavailable"))
    ask(page, "과부하 시험")
    expect(banner).to_contain_text("일시적으로")
    page.unroute("**/chat/stream")

    # The real server refuses a too long message (413).
    ask(page, "가" * 4001)
    expect(banner).to_contain_text("메시지가 너무 깁니다")

    # A wrong admin token is refused with a Korean message, and nothing is kept.
    page.click("#admin-toggle")
    page.fill("#admin-token", "wrong-token")
    page.press("#admin-token", "Enter")
    expect(page.locator("#admin-login-error")).to_contain_text("올바르지 않습니다")
    assert page.evaluate("sessionStorage.getItem('echorag.adminToken')") is None
    assert page.console.unexpected(allow_resource_errors=True) == []
