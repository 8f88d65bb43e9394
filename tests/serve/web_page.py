"""Driving the web page in headless Chromium: a watched console, screenshots, waiting,
and the chat's own moves (open, ask)."""

import time

from tests.conftest import ARTIFACTS
from tests.serve.conftest import ADMIN


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
