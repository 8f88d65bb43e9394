"""Which adapter version serves, and switching it: by hand (rollback, promote) or after
the gate. The generator is warmed with a version before the active pointer moves to it,
so the first requests for it do not pay its load.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from echorag.learning.adapter_storage import InvalidAdapterError
from echorag.learning.announce import Announcer
from echorag.learning.api import AdapterChange, PromoteRequest, RollbackRequest
from echorag.learning.events import Event, adapter_promoted, adapter_refused, adapter_rolled_back, traffic_shifted
from echorag.learning.jobs import NotFound
from echorag.learning.registry import BASE, AdapterRegistry
from echorag.serving.routing import Traffic

log = logging.getLogger(__name__)


class VersionSwitch:
    def __init__(
        self, registry: AdapterRegistry, announcer: Announcer, warm_up: Callable[[str], Any] | None = None,
        canary_fraction: float = 0.0,
    ) -> None:
        """``warm_up(version)`` loads a version on the serving side before it is switched to;
        ``canary_fraction``: the student's share of sessions until one is set (echorag.serving.routing)."""
        self.registry = registry
        self.announcer = announcer
        self._warm_up = warm_up
        self.canary_fraction = canary_fraction
        self._moved = threading.Condition()
        registry.on_pointer_change = self._pointer_moved

    def _pointer_moved(self) -> None:
        with self._moved:
            self._moved.notify_all()

    def traffic_after(self, known: Traffic | None, timeout_s: float = 30.0, recheck_s: float = 5.0) -> Traffic:
        """The traffic as soon as it differs from ``known``, or whatever it is after
        ``timeout_s``: a long poll, by which ingress replicas keep it in memory instead of
        reading the pointer on every request. Every write of the pointer here wakes it; the
        pointer is read again every ``recheck_s`` too, for a change made by hand."""
        deadline = time.monotonic() + timeout_s
        with self._moved:  # held from the read to the wait: no write slips in between
            while (current := self.traffic()) == known and (left := deadline - time.monotonic()) > 0:
                self._moved.wait(min(left, recheck_s))
        return current

    def active(self) -> str:
        """The version that serves (``"base"`` if the pointer is unreadable, logged)."""
        return self.traffic().version

    def traffic(self) -> Traffic:
        """The student's active version and share of sessions (base, 0 if unreadable)."""
        try:
            return self.registry.traffic(self.canary_fraction)
        except InvalidAdapterError:
            log.exception("the active adapter pointer is unreadable; serving the base model")
            return Traffic(BASE, 0.0)

    def shift(self, share: float, trigger: str = "manual") -> None:
        """Send ``share`` of the sessions to the student."""
        before = self.traffic()
        self.registry.set_student_share(share)
        self.announcer.record(traffic_shifted(before.version, share, before.student_share, trigger))

    def graduate(self, agreement: float | None, threshold: float | None) -> None:
        """After the gate promoted a version: all traffic to the student when its agreement
        with the labels reached ``threshold`` (``canary_graduate_at``)."""
        if threshold is not None and agreement is not None and agreement >= threshold:
            if self.traffic().student_share < 1.0:
                self.shift(1.0, trigger="graduation")

    def warm_up(self, version: str) -> None:
        if self._warm_up is None:
            return
        try:
            self._warm_up(version)
        except Exception as exc:  # serving still switches; the first request loads it instead
            log.exception("warm_up(%s) failed", version)
            self.announcer.record(Event(
                type="activation_failed",
                message=f"⚠️ 어댑터 {version} 적용 알림 실패: {exc}",
                data={"version": version, "error": str(exc)[:2000]},
            ))

    def rollback(self, version: str | None = None) -> AdapterChange:
        """Point serving at ``version`` (``"vN"`` or ``"base"``; default: the previous one)."""
        version = RollbackRequest(version=version).version
        previous = self.active()
        try:
            target = self.registry.rollback(version)
        except InvalidAdapterError as exc:
            self.announcer.record(adapter_refused(version or "previous", str(exc)))
            raise NotFound(str(exc), {"version": version}) from exc
        self.announcer.record(adapter_rolled_back(previous, target))
        self.warm_up(target)  # usually still loaded: old versions stay in the replicas' cache
        return AdapterChange(active=target, previous=previous, student_share=self.traffic().student_share)

    def promote(self, version: str | None = None, student_share: float | None = None) -> AdapterChange:
        """Serve ``version`` (a rejected or archived one too): the gate is a default, not a
        veto. ``student_share``: the student's share of sessions where a teacher answers;
        neither given: all of them (the canary graduates by hand)."""
        request = PromoteRequest(version=version, student_share=student_share)
        previous = self.active()
        if request.version is None:
            share = 1.0 if request.student_share is None else request.student_share
            self.shift(share)
            return AdapterChange(active=previous, previous=previous, student_share=share)
        version = request.version
        try:
            if version != BASE:
                self.registry.path(version)  # exists and is valid, before anything loads it
            self.warm_up(version)
            self.registry.promote(version)
        except InvalidAdapterError as exc:
            self.announcer.record(adapter_refused(version, str(exc)))
            raise NotFound(str(exc), {"version": version}) from exc
        self.announcer.record(adapter_promoted(version, previous), trigger="manual")
        if request.student_share is not None:
            self.shift(request.student_share)
        return AdapterChange(active=version, previous=previous, student_share=self.traffic().student_share)
