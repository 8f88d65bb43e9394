"""The learning loop's records for admins: stored turns and their corrections, the
training dataset's export, backups and retention, events, run history, versions and
performance. Reads and single writes that need none of the loop's policy state.

``Administration`` is a base of ``LearningLoop``, so each method is a typed remote call on
the collector actor; it uses only the loop's public face (its store, registries, runtime
settings and announcer), never its lock or state.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import echorag.learning.archive as archive
import echorag.learning.reports as reports
from echorag.learning.api import (
    BackupsResponse,
    CleanupResponse,
    ConversationsResponse,
    CorrectionRequest,
    EventsResponse,
    ExportResponse,
    ModelsResponse,
    PerformanceMetrics,
    TrainingHistory,
)
from echorag.learning.events import Event
from echorag.learning.jobs import NotFound
from echorag.learning.records import StoredTurn

if TYPE_CHECKING:
    from echorag.learning.announce import Announcer
    from echorag.learning.database import ConversationStore
    from echorag.learning.registry import AdapterRegistry
    from echorag.learning.runtime_settings import RuntimeSettings
    from echorag.learning.selector_registry import SelectorRegistry
    from echorag.serving.routing import Traffic


class Administration:
    store: ConversationStore
    registry: AdapterRegistry
    backups_dir: Path
    exports_dir: Path
    selectors: SelectorRegistry
    announcer: Announcer
    runtime: RuntimeSettings  # a copy of the settings in force (a property of the loop)

    def active_version(self) -> str: ...  # LearningLoop's

    def traffic(self) -> Traffic: ...  # LearningLoop's

    def conversations(self, limit: int = 50, offset: int = 0) -> ConversationsResponse:
        """Newest first."""
        return reports.conversations(self.store, limit, offset)

    def correct(self, turn_id: str, answer: str) -> StoredTurn:
        """An admin's corrected answer, stored beside the original: the turn trains on it
        (``correction_weight`` times) in the next run, and the pool judges by it."""
        request = CorrectionRequest(answer=answer)
        turn = self.store.correct(turn_id, request.answer)
        if turn is None:
            raise NotFound(f"unknown turn {turn_id!r}", {"turn_id": turn_id})
        self.announcer.record(Event(
            type="turn_corrected", message=f"✏️ 답변 수정: 대화 {turn.seq}번 ({len(turn.corrected or '')}자)",
            data={"turn_id": turn_id, "seq": turn.seq, "pool": turn.pool},
        ))
        return turn

    def backups(self) -> BackupsResponse:
        """The conversation backups in ``backups/`` (what ``clear_conversations(backup=True)``
        writes), newest first."""
        return archive.list_backups(self.backups_dir)

    def cleanup(self, keep_days: float = 30.0) -> CleanupResponse:
        response, event = archive.cleanup(self.store, keep_days)
        self.announcer.record(event)
        return response

    def export(self, path: str | Path | None = None, inline: bool = False) -> ExportResponse:
        """The training dataset (what ``train_on`` learns from, the evaluation pool apart)
        as JSONL: written to ``path`` (default ``exports/training-<time>.jsonl``), or
        returned when ``inline``."""
        train_on = self.runtime.train_on
        response, event = archive.export(self.store, self.exports_dir, path, inline, train_on)
        if event is not None:
            self.announcer.record(event)
        return response

    def events(self, event_type: str | None = None, limit: int = 100) -> EventsResponse:
        """Newest first."""
        return reports.events(self.store, event_type, limit)

    def training_history(self, limit: int = 50) -> TrainingHistory:
        """Every attempt of every run, newest first."""
        return reports.training_history(self.store, limit)

    def models(self) -> ModelsResponse:
        return reports.models(self.registry, self.active_version(), self.selectors)

    def performance(self) -> PerformanceMetrics:
        return reports.performance(self.store, self.registry.history(), self.traffic().student_share)
