"""Webhooks: tell humans when a run finishes or fails (Slack, Discord or any JSON endpoint).

Delivery is retried with exponential backoff on 429 (honouring Retry-After), 5xx,
timeouts and connection errors, and never raises: a broken webhook must not break
the learning loop. Webhook URLs are secrets, so logs show the host only.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from echorag.learning.events import Event

log = logging.getLogger(__name__)

Flavor = Literal["slack", "discord", "generic"]
DISCORD_LIMIT = 2000  # characters per message


def _host_is(host: str, domain: str) -> bool:
    return host == domain or host.endswith("." + domain)


def flavor_of(url: str) -> Flavor:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host == "hooks.slack.com":
        return "slack"
    if (_host_is(host, "discord.com") or _host_is(host, "discordapp.com")) and parts.path.startswith("/api/webhooks"):
        return "discord"
    return "generic"


def payload_for(url: str, event: Event | str, flavor: Flavor | None = None) -> dict[str, Any]:
    """The JSON body for ``url``: Slack ``{"text"}``, Discord ``{"content"}``, otherwise
    the event itself plus ``text`` (which Mattermost-style receivers display)."""
    event = Event(type="message", message=event) if isinstance(event, str) else event
    flavor = flavor or flavor_of(url)
    if flavor == "slack":
        return {"text": event.message}
    if flavor == "discord":
        return {"content": event.message[:DISCORD_LIMIT]}
    return {"text": event.message, **event.model_dump(mode="json")}


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):  # absent, or an HTTP date: fall back to backoff
        return None


def send_webhook(
    url: str,
    event: Event | str,
    attempts: int = 4,
    backoff: float = 0.5,
    *,
    timeout: float = 5.0,
    max_delay: float = 60.0,
    flavor: Flavor | None = None,
) -> bool:
    """POST the event; True when delivered. Waits ``backoff``, ``2*backoff``, ... between
    attempts (or what Retry-After asks, up to ``max_delay``)."""
    host = urlsplit(url).hostname or "?"
    try:
        payload = payload_for(url, event, flavor)
        with httpx.Client(timeout=timeout) as client:
            for attempt in range(1, attempts + 1):
                delay = backoff * 2 ** (attempt - 1)
                try:
                    response = client.post(url, json=payload)
                except httpx.TransportError as exc:  # timeouts, refused connections, resets
                    problem = type(exc).__name__
                else:
                    if response.is_success:
                        return True
                    problem = f"HTTP {response.status_code}"
                    if response.status_code != 429 and response.status_code < 500:
                        log.warning("webhook to %s refused (%s); not retrying", host, problem)
                        return False
                    asked = _retry_after(response) if response.status_code == 429 else None
                    delay = delay if asked is None else asked
                if attempt < attempts:
                    log.info("webhook to %s: %s, retry %d/%d in %.1fs", host, problem, attempt, attempts - 1, delay)
                    time.sleep(min(delay, max_delay))
        log.warning("webhook to %s not delivered after %d attempts (%s)", host, attempts, problem)
    except Exception:  # never let a notification break the caller
        log.exception("webhook to %s failed", host)
    return False
