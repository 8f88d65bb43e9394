"""The web UI in real headless Chromium against the real application: a Korean question
streams an answer with its sources, feedback and memory reach the server, the history
survives a reload and exports; admin mode shows /mlops/status, changes settings, runs a
real fine-tune and rolls it back, filters events and resets data."""

import json
import re
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS
from tests.serve.conftest import ADMIN, ADMIN_TOKEN, wait_idle

pytestmark = [pytest.mark.serve, pytest.mark.browser]

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
# Network failures and 4xx/5xx the page itself provokes are logged by Chromium as console
# errors ("Failed to load resource"); only the error test expects them.
RESOURCE_ERROR = "Failed to load resource"


class Console:
    """Console errors and uncaught exceptions of a page."""

    def __init__(self, page):
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

    def unexpected(self, allow_resource_errors=False):
        return [e for e in self.errors if not (allow_resource_errors and RESOURCE_ERROR in e)]


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport=DESKTOP, locale="ko-KR", accept_downloads=True, base_url=server)
    page = context.new_page()
    page.console = Console(page)
    page.set_default_timeout(30_000)
    yield page
    context.close()


def shot(page, name):
    ARTIFACTS.mkdir(exist_ok=True)
    # A passing toast would cover the content: let it go before the picture.
    page.evaluate("document.getElementById('toast').classList.remove('show')")
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / name))


def eventually(check, timeout=30.0, interval=0.25):
    """Call ``check`` until it returns a truthy value (or stops raising AssertionError)."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            value = check()
            if value:
                return value
        except AssertionError as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s: {last}")


def stored_turn(client, turn_id):
    conversations = client.get("/mlops/conversations", params={"limit": 1000}, headers=ADMIN).json()["conversations"]
    return next((c for c in conversations if c["id"] == turn_id), None)


def open_app(page):
    page.goto("/")
    page.wait_for_function("document.getElementById('model-badge').textContent.includes('어댑터')")


def ask(page, text, timeout=120_000):
    """Type a message, send it with Enter, wait for the answer; returns the answer's locator."""
    before = page.locator('[data-role="assistant"]').count()
    page.fill("#chat-input", text)
    page.press("#chat-input", "Enter")
    answer = page.locator('[data-role="assistant"]').nth(before)
    answer.and_(page.locator('[data-state="done"], [data-state="error"]')).wait_for(timeout=timeout)
    return answer




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


# -- admin --------------------------------------------------------------------------------

STATS = ("stat-total", "stat-new", "stat-status", "stat-version", "stat-batch", "stat-next")


def ui_stats(page):
    return {i: page.locator(f"#{i}").get_attribute("data-value") for i in STATS}


def api_stats(status):
    batch, new = status["settings"]["batch_size"], status["collector_stats"]["new_data_count"]
    return {
        "stat-total": str(status["collector_stats"]["total_collected"]),
        "stat-new": str(new),
        "stat-status": status["training_status"]["status"],
        "stat-version": status["models_info"]["current_version"],
        "stat-batch": str(batch),
        "stat-next": str(max(batch - new, 0)),
    }


def panel_matches_status(page, client):
    status = client.get("/mlops/status").json()
    expected, shown = api_stats(status), ui_stats(page)
    assert shown == expected, (shown, expected)
    return status


def test_admin_mode_shows_status_trains_rolls_back_and_resets(page, client):
    from playwright.sync_api import expect

    wait_idle(client)  # a run left by another test would make the manual run a 409
    original = client.get("/mlops/status").json()["settings"]
    open_app(page)
    try:
        # Ctrl+A (in the empty chat box) opens admin mode, which asks for the token once.
        page.focus("#chat-input")
        page.keyboard.press("Control+KeyA")
        expect(page.locator("#admin-panel")).to_be_visible()
        expect(page.get_by_role("button", name="관리자 모드")).to_have_attribute("aria-expanded", "true")
        expect(page.locator("#admin-token")).to_be_focused()
        page.fill("#admin-token", ADMIN_TOKEN)
        page.press("#admin-token", "Enter")
        expect(page.locator("#admin-body")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('echorag.adminToken')") == ADMIN_TOKEN

        # The panel's numbers are /mlops/status's.
        eventually(lambda: panel_matches_status(page, client), timeout=20)
        expect(page.locator("#stat-total")).to_contain_text(page.locator("#stat-total").get_attribute("data-value"))

        # Settings: a new batch size (and no auto trigger, so only the manual run trains;
        # three epochs, so the loss curve has several points).
        batch = original["batch_size"] + 7
        page.fill("#set-batch", str(batch))
        page.fill("#set-epochs", "3")
        page.uncheck("#set-auto")
        page.click("#settings-save")
        eventually(lambda: client.get("/mlops/status").json()["settings"]["batch_size"] == batch)
        saved = client.get("/mlops/status").json()["settings"]
        assert saved["auto_trigger"] is False and saved["epochs"] == 3
        expect(page.locator("#stat-batch")).to_have_attribute("data-value", str(batch))

        # New conversations, from this page and from elsewhere, show up by polling.
        expect(ask(page, f"한글은 누가 만들었나요? (관리자 {uuid.uuid4().hex[:6]})")).to_have_attribute("data-state", "done")
        r = client.post("/chat", json={"message": f"김치는 어떻게 담그나요? (관리자 {uuid.uuid4().hex[:6]})", "user_id": "web-admin"})
        assert r.status_code == 200 and r.json()["mlops_info"]["collected"], r.text
        status = eventually(lambda: panel_matches_status(page, client), timeout=20)
        assert status["collector_stats"]["new_data_count"] >= 2

        # The stored turns are listed; 수정 stores a correction beside the original answer.
        turn_id = r.json()["turn_id"]
        item = page.locator(f'#turns-list li[data-turn-id="{turn_id}"]')
        expect(item).to_be_visible(timeout=20_000)
        item.get_by_role("button", name=re.compile("답변 수정")).click()
        expect(page.locator("#correct-dialog")).to_be_visible()
        original_answer = next(t for t in client.get("/mlops/conversations", headers=ADMIN).json()["conversations"]
                               if t["id"] == turn_id)["assistant"]
        expect(page.locator("#correct-original")).to_have_text(original_answer)
        correction = "김치는 배추를 소금에 절이고 양념을 버무려 담급니다."
        page.fill("#correct-answer", correction)
        page.click("#correct-save")
        expect(page.locator("#correct-dialog")).to_be_hidden()
        expect(item).to_have_attribute("data-origin", "corrected", timeout=20_000)
        expect(item.locator(".turn-answer")).to_have_text(correction)
        stored = next(t for t in client.get("/mlops/conversations", headers=ADMIN).json()["conversations"]
                      if t["id"] == turn_id)
        assert stored["corrected"] == correction and stored["assistant"] == original_answer

        # A manual fine-tune (Chromium keeps Ctrl+T: Ctrl+Shift+F), watched until a new version.
        before = client.get("/mlops/models").json()
        known = {v["version"] for v in before["versions"]}
        page.locator("#admin-title").focus()
        page.keyboard.press("Control+Shift+KeyF")
        seen_training, new_version = [], None
        deadline = time.time() + 420
        while time.time() < deadline:
            summary = page.locator("#train-summary")
            if summary.get_attribute("data-status") == "training":
                seen_training.append(page.locator("#train-step").inner_text())
            rows = page.locator("#versions-body tr")
            versions = [rows.nth(i).get_attribute("data-version") for i in range(rows.count())]
            fresh = [v for v in versions if v not in known]
            if fresh and summary.get_attribute("data-status") in ("succeeded", "rejected"):
                new_version = fresh[0]
                break
            time.sleep(0.3)
        assert new_version, f"no new version appeared; training seen: {seen_training[-3:]}"
        assert any(re.fullmatch(r"\d+ / \d+", s) for s in seen_training), seen_training
        progress = client.get("/mlops/training-progress").json()
        assert progress["version"] == new_version
        assert page.locator("#train-summary").get_attribute("data-version") == new_version
        expect(page.locator("#train-step")).to_have_text(f"{progress['step']} / {progress['total_steps']}")
        assert int(page.locator("#loss-chart").get_attribute("data-points")) == len(progress["losses"]) >= 2
        assert int(page.locator("#collection-chart").get_attribute("data-points")) >= 2
        # The correction is in that run: trained on, or (a pool turn, by hash) the label it was judged on.
        corrected_turn = next(t for t in client.get("/mlops/conversations", headers=ADMIN).json()["conversations"]
                              if t["id"] == turn_id)
        run_metrics = {v["version"]: v for v in client.get("/mlops/models").json()["versions"]}[new_version]["metrics"]
        assert corrected_turn["pool"] or run_metrics["corrected_turns"] >= 1, run_metrics

        # Gate metrics are shown; a rejected version can still be promoted by hand.
        row = page.locator(f'#versions-body tr[data-version="{new_version}"]')
        expect(row).to_contain_text("→")
        if client.get("/mlops/models").json()["active"] != new_version:
            row.get_by_role("button", name=f"{new_version}(으)로 전환").click()
        eventually(lambda: client.get("/mlops/models").json()["active"] == new_version)
        expect(page.locator("#stat-version")).to_have_attribute("data-value", new_version)
        expect(page.locator("#model-badge")).to_contain_text(f"어댑터 {new_version}", timeout=15_000)
        shot(page, "admin.png")

        # Roll back to the version that served before.
        page.click("#rollback-button")
        eventually(lambda: client.get("/mlops/models").json()["active"] == before["active"])
        expect(page.locator("#stat-version")).to_have_attribute("data-value", before["active"], timeout=15_000)
        expect(page.locator(f'#versions-body tr[data-version="{before["active"]}"]')).to_have_class(re.compile("active-row"))

        # The event log filters by type.
        page.select_option("#event-filter", "adapter_rolled_back")
        rolled_back = client.get("/mlops/events", params={"event_type": "adapter_rolled_back"}, headers=ADMIN).json()

        def shown_types():
            return page.locator("#events-list li").evaluate_all("items => items.map(i => i.dataset.type)")

        eventually(lambda: shown_types() == ["adapter_rolled_back"] * rolled_back["count"], timeout=15)
        page.select_option("#event-filter", "")
        # The whole panel in one picture (a tall window), for the README.
        page.set_viewport_size({"width": DESKTOP["width"], "height": 2300})
        shot(page, "admin-full.png")

        # Phone width: the panel takes the screen.
        page.set_viewport_size(PHONE)
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        shot(page, "admin-phone.png")
        page.set_viewport_size(DESKTOP)

        # Ctrl+D resets the data only after confirmation, with a backup.
        total = client.get("/mlops/status").json()["collector_stats"]["total_collected"]
        assert total > 0
        page.locator("#admin-title").focus()
        page.keyboard.press("Control+KeyD")
        expect(page.locator("#confirm-dialog")).to_be_visible()
        page.click("#confirm-cancel")
        expect(page.locator("#confirm-dialog")).to_be_hidden()
        assert client.get("/mlops/status").json()["collector_stats"]["total_collected"] >= total
        page.keyboard.press("Control+KeyD")
        page.click("#confirm-ok")
        eventually(lambda: client.get("/mlops/status").json()["collector_stats"]["total_collected"] == 0)
        expect(page.locator("#stat-total")).to_have_attribute("data-value", "0", timeout=15_000)
        cleared = client.get("/mlops/events", params={"event_type": "conversations_cleared", "limit": 1}, headers=ADMIN).json()
        assert cleared["events"][0]["data"]["backup_path"]

        # Ctrl+A again leaves admin mode.
        page.locator("#admin-title").focus()
        page.keyboard.press("Control+KeyA")
        expect(page.locator("#admin-panel")).to_be_hidden()
        expect(page.get_by_role("button", name="관리자 모드")).to_have_attribute("aria-expanded", "false")
        assert page.console.unexpected() == []
    finally:
        keep = {k: original[k] for k in ("batch_size", "auto_trigger", "epochs", "collection_enabled")}
        assert client.post("/mlops/settings", json=keep, headers=ADMIN).status_code == 200
