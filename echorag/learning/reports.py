"""Read-only views of the learning loop: events, stored conversations, training history,
model versions, performance and the status summary.

Plain functions of the store, the registry and a snapshot of the loop's state; they
take no lock. ``LearningLoop`` reads its policy and progress under its lock and passes
them in, and leaves the SQLite reads outside it.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from echorag.learning.api import (
    CONVERSATIONS_LIMIT_MAX,
    EVENTS_LIMIT_MAX,
    AnswererPerformance,
    CollectorStats,
    ConversationsResponse,
    EventsResponse,
    EventsSummary,
    ModelsInfo,
    ModelsResponse,
    ModelVersion,
    PerformanceMetrics,
    SelectorVersion,
    StatusResponse,
    TrainingHistory,
    TrainingProgress,
    TrainingRunInfo,
    TrainingStatus,
)
from echorag.learning.database import ConversationStore
from echorag.learning.policy import TrainingPolicy
from echorag.learning.progress import finite
from echorag.learning.records import Counts, Run
from echorag.learning.registry import BASE, AdapterInfo, AdapterRegistry
from echorag.learning.runtime_settings import RuntimeSettings
from echorag.learning.selector_registry import SelectorRegistry

ERROR_EVENTS = ("training_failed", "training_interrupted", "activation_failed")
HISTORY_LIMIT_MAX = 1000


def run_outcome(run: Run) -> str:
    """``running``, ``failed``, ``interrupted``, ``empty``, ``promoted`` or ``rejected``."""
    if run.status == "running":
        return "running"
    if run.status == "failed":
        return "interrupted" if (run.error or "").startswith("interrupted") else "failed"
    if run.metrics.get("empty"):
        return "empty"
    return "promoted" if run.metrics.get("promoted") else "rejected"


def run_info(run: Run) -> TrainingRunInfo:
    return TrainingRunInfo(
        run_id=run.id,
        status=run.status,
        outcome=run_outcome(run),
        version=run.version,
        from_seq=run.from_seq,
        to_seq=run.to_seq,
        attempt=run.attempts,
        started_at=run.started_at,
        ended_at=run.ended_at,
        duration_s=None if run.ended_at is None else run.ended_at - run.started_at,
        error=run.error,
        metrics=run.metrics,
    )


def last_progress(store: ConversationStore) -> dict[str, Any]:
    """The ``TrainingProgress`` of the newest stored run: what a restarted loop shows."""
    runs = store.runs(limit=1)
    if not runs:
        return TrainingProgress().model_dump()
    run = runs[0]
    outcome = run_outcome(run)
    status = {"promoted": "succeeded", "empty": "succeeded", "rejected": "rejected"}.get(outcome, "failed")
    return TrainingProgress(
        status=status, run_id=run.id, attempt=run.attempts, from_seq=run.from_seq, to_seq=run.to_seq,
        started_at=run.started_at, ended_at=run.ended_at, version=run.version, error=run.error,
        losses=[x for x in run.metrics.get("losses", []) if isinstance(x, (int, float))],
        loss=finite(run.metrics.get("train_loss")), message=f"last run: {outcome}",
    ).model_dump()


def events(store: ConversationStore, event_type: str | None = None, limit: int = 100) -> EventsResponse:
    """Newest first."""
    limit = max(1, min(int(limit), EVENTS_LIMIT_MAX))
    found = store.events(event_type or None, limit)
    return EventsResponse(events=found, count=len(found))


def conversations(store: ConversationStore, limit: int = 50, offset: int = 0) -> ConversationsResponse:
    """Newest first."""
    limit = max(1, min(int(limit), CONVERSATIONS_LIMIT_MAX))
    offset = max(0, int(offset))
    turns = store.recent_turns(limit + offset)[offset:]
    return ConversationsResponse(total=store.counts().total, limit=limit, offset=offset, conversations=turns)


def training_history(store: ConversationStore, limit: int = 50) -> TrainingHistory:
    """Every attempt of every run, newest first."""
    runs = [run_info(r) for r in store.runs(max(1, min(int(limit), HISTORY_LIMIT_MAX)))]
    return TrainingHistory(runs=runs, count=len(runs))


def models(registry: AdapterRegistry, active: str, selectors: SelectorRegistry) -> ModelsResponse:
    versions = [ModelVersion(version=BASE, status="base", active=active == BASE, parent=None)]
    for info in registry.history():
        versions.append(ModelVersion(**info.model_dump(), active=info.version == active))
    history = [SelectorVersion(**row) for row in selectors.history()]
    selector = next(row.version for row in history if row.active)
    return ModelsResponse(active=active, versions=versions, selector=selector, selectors=history)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))], 1)


def answerers(store: ConversationStore, history: list[AdapterInfo]) -> list[AnswererPerformance]:
    """Requests, 👍/👎, latency per answerer and version; agreement from its gate."""
    agreement = {info.version: info.metrics.get("candidate_agreement") for info in history}
    rows = []
    for row in store.answerer_counts():
        latencies = [float(x) for x in (row["latencies"] or "").split(",") if x]
        rated = row["liked"] + row["disliked"]
        rows.append(AnswererPerformance(
            backend=row["backend"] or "unknown", model=row["model"], version=row["version"],
            requests=row["requests"], liked=row["liked"], disliked=row["disliked"],
            like_rate=row["liked"] / rated if rated else None,
            latency_p50_ms=_percentile(latencies, 50), latency_p95_ms=_percentile(latencies, 95),
            agreement=agreement.get(row["version"]),
        ))
    return rows


def performance(store: ConversationStore, history: list[AdapterInfo], student_share: float = 0.0) -> PerformanceMetrics:
    """``history``: the registry's versions (``registry.history()``), for their gate agreement."""
    now = time.time()
    counts = store.counts()
    recent = [t.created_at for t in store.recent_turns(5000) if t.created_at >= now - 86400]
    last_24h = len(recent)
    dropped = sum(n for reason, n in counts.filtered.items() if reason != "pii_scrubbed")
    runs = [r for r in store.runs(limit=1000) if r.status != "running"]
    succeeded = [r for r in runs if r.status == "succeeded"]
    trained = [r for r in succeeded if not r.metrics.get("empty")]
    promoted = [r for r in trained if r.metrics.get("promoted")]
    durations = [r.ended_at - r.started_at for r in trained if r.ended_at is not None]
    return PerformanceMetrics(
        total_collected=counts.total,
        collected_last_hour=sum(1 for t in recent if t >= now - 3600),
        collected_last_24h=last_24h,
        collection_rate_per_hour=last_24h / 24,
        acceptance_rate=counts.max_seq / (counts.max_seq + dropped) if counts.max_seq + dropped else None,
        runs_total=len(runs),
        runs_succeeded=len(succeeded),
        runs_failed=len(runs) - len(succeeded),
        runs_promoted=len(promoted),
        runs_rejected=len(trained) - len(promoted),
        success_rate=len(succeeded) / len(runs) if runs else None,
        promotion_rate=len(promoted) / len(trained) if trained else None,
        average_training_time_s=sum(durations) / len(durations) if durations else None,
        last_training_at=max((r.ended_at or 0 for r in trained), default=None),
        student_share=student_share,
        answerers=answerers(store, history),
    )


def collector_stats(counts: Counts, policy: TrainingPolicy, collection_enabled: bool) -> CollectorStats:
    return CollectorStats(
        collection_enabled=collection_enabled,
        total_collected=counts.total, liked=counts.liked, disliked=counts.disliked,
        filtered=counts.filtered, max_seq=counts.max_seq,
        trained_watermark=policy.watermark, new_data_count=policy.new_data,
    )


def training_status(
    policy: TrainingPolicy,
    progress: dict[str, Any],
    current_run_id: int | None,
    retry_at: float | None,
    last_run: Run | None,
) -> TrainingStatus:
    """``current_run_id``: the run in progress (None: the last run's id is shown)."""
    return TrainingStatus(
        is_training=policy.is_running, status=progress["status"],
        run_id=current_run_id if current_run_id is not None else progress.get("run_id"),
        pending=policy.pending, retry_scheduled=policy.retry_scheduled, retry_at=retry_at,
        consecutive_failures=policy.failures, stalled=policy.stalled_at is not None,
        should_train=policy.should_train, new_data_count=policy.new_data,
        batch_size=policy.config.batch_size, auto_trigger=policy.config.auto_trigger,
        finetune_enabled=policy.config.enabled, last_run=run_info(last_run) if last_run else None,
    )


def status(
    store: ConversationStore,
    registry: AdapterRegistry,
    collector: CollectorStats,
    training: TrainingStatus,
    settings: RuntimeSettings,
    active_version: str,
    student_share: float = 0.0,
) -> StatusResponse:
    """``GET /mlops/status``: the loop's parts (``collector``, ``training``, ``settings``)
    with the models, the recent events and the performance read here."""
    history = registry.history()
    recent = store.events(limit=200)
    errors = [e for e in recent if e.type in ERROR_EVENTS]
    return StatusResponse(
        collector_stats=collector,
        training_status=training,
        models_info=ModelsInfo(
            current_version=active_version,
            total_versions=len(history),
            latest_version=history[-1].version if history else None,
            promoted=sum(1 for i in history if i.status in ("active", "archived")),
            rejected=sum(1 for i in history if i.status == "rejected"),
        ),
        events_summary=EventsSummary(
            recent=len(recent),
            by_type=dict(Counter(e.type for e in recent)),
            latest=recent[:5],
            last_error=errors[0].message if errors else None,
        ),
        performance_metrics=performance(store, history, student_share),
        settings=settings,
    )
