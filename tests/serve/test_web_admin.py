"""Admin mode of the web UI in real headless Chromium: it shows /mlops/status, changes
settings, runs a real fine-tune and rolls it back, filters events and resets data."""

import re
import time
import uuid

import pytest

from tests.serve.conftest import ADMIN, ADMIN_TOKEN, DESKTOP, PHONE, wait_idle
from tests.serve.web_page import ask, eventually, open_app, shot

pytestmark = [pytest.mark.serve, pytest.mark.browser]


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
