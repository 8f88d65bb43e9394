"""Where the learning loop's events go: the store (``GET /mlops/events``), an observer
(the Ray layer turns events into metrics) and, for the events that end a run, a
webhook sent in the background. None of them may break or delay the step that
produced the event.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from echorag.learning.database import ConversationStore
from echorag.learning.events import Event
from echorag.learning.notify import Flavor, send_webhook

log = logging.getLogger(__name__)

Observer = Callable[[str, dict[str, Any]], Any]


class Announcer:
    def __init__(
        self,
        store: ConversationStore,
        observer: Observer | None = None,
        webhook_url: str | None = None,
        webhook_flavor: Flavor | None = None,
        webhook_attempts: int = 4,
        webhook_backoff_s: float = 0.5,
    ) -> None:
        self.store = store
        self.observer = observer
        self.webhook_url = webhook_url
        self.webhook_flavor = webhook_flavor
        self.webhook_attempts = webhook_attempts
        self.webhook_backoff_s = webhook_backoff_s
        self._lock = threading.Lock()
        self._deliveries: list[threading.Thread] = []

    def record(self, event: Event, **data: Any) -> Event:
        """Store ``event`` (``data`` added to its data) and tell the observer; returns the
        stored event (with its id), or the event itself when it could not be stored."""
        if data:
            event = event.model_copy(update={"data": event.data | data})
        self.observe(event.type, event.data)
        try:
            return self.store.add_event(event)
        except Exception:  # an event must never break the step it describes
            log.exception("could not store event %s", event.type)
            return event

    def observe(self, kind: str, data: dict[str, Any]) -> None:
        if self.observer is None:
            return
        try:
            self.observer(kind, data)
        except Exception:  # observing (metrics) must never break the loop
            log.exception("observer failed on %s", kind)

    def send(self, event: Event) -> None:
        """Send a webhook in the background: delivery (with its retries) never delays a run."""
        if not self.webhook_url:
            return
        thread = threading.Thread(
            target=send_webhook,
            args=(self.webhook_url, event, self.webhook_attempts, self.webhook_backoff_s),
            kwargs={"flavor": self.webhook_flavor},
            name=f"echorag-webhook-{event.type}",
            daemon=True,
        )
        with self._lock:
            self._deliveries = [t for t in self._deliveries if t.is_alive()] + [thread]
        thread.start()

    def deliveries(self) -> list[threading.Thread]:
        """The webhooks sent so far that may still be under way."""
        with self._lock:
            return list(self._deliveries)
