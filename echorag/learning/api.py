"""The learning loop's HTTP contract: request and response bodies of ``/mlops/*`` and
``/feedback``, as pydantic models (FastAPI publishes them in ``/openapi.json``).

Requests forbid unknown fields, so a typo (``{"batch_sise": 5}``) is a 422 rather
than a silent no-op. ``LearningLoop`` (``echorag.learning.loop``) returns the response
models; the Ray layer only maps its exceptions to status codes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from echorag.learning.events import Event
from echorag.learning.records import StoredTurn
from echorag.learning.runtime_settings import RuntimeSettings

VERSION_PATTERN = r"^(v[1-9]\d*|base)$"
EVENTS_LIMIT_MAX = 1000
CONVERSATIONS_LIMIT_MAX = 1000


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- requests ---------------------------------------------------------------------------


class FinetuneRequest(_Request):
    force: bool = Field(False, description="Train on any new data, below the batch size too.")
    backup_existing: bool = Field(True, description="Copy the active adapter to backups/ before the run.")


class RollbackRequest(_Request):
    version: str | None = Field(
        None, pattern=VERSION_PATTERN, description="'v3' or 'base'; default: the previously active version."
    )


class PromoteRequest(_Request):
    """``POST /mlops/promote``: serve ``version``; where a teacher answers, send
    ``student_share`` of the sessions to the student. Neither given: all traffic to the student."""

    version: str | None = Field(None, pattern=VERSION_PATTERN, description="'v3' or 'base'; default: the active one.")
    student_share: float | None = Field(
        None, ge=0, le=1, description="Share of sessions the student answers (echorag.serving.routing); 1: all of them."
    )


Rating = Literal[1, -1, 0, "up", "down", "none", "👍", "👎"]
_RATING_VALUES: dict[Any, int] = {1: 1, -1: -1, 0: 0, "up": 1, "down": -1, "none": 0, "👍": 1, "👎": -1}


def rating_value(rating: Rating | int | str) -> int:
    """👍 / "up" / 1 → 1, 👎 / "down" / -1 → -1, "none" / 0 → 0 (clears the feedback)."""
    if isinstance(rating, bool) or rating not in _RATING_VALUES:
        raise ValueError(f"rating must be one of {list(_RATING_VALUES)}, not {rating!r}")
    return _RATING_VALUES[rating]


class FeedbackRequest(_Request):
    turn_id: str = Field(..., min_length=1, max_length=128, description="The ``turn_id`` of a /chat response.")
    session_id: str | None = Field(
        None, min_length=1, max_length=128,
        description="The session the turn was answered in (needed in open mode; a user's own turns need no session).",
    )
    rating: Rating = Field(..., description="👍: 1 / 'up'; 👎: -1 / 'down' (excluded from training); 0 clears.")

    @property
    def value(self) -> int:
        return rating_value(self.rating)


class CleanupRequest(_Request):
    keep_days: float = Field(30.0, ge=0, le=36_500, description="Delete conversations and events older than this.")


class ExportRequest(_Request):
    inline: bool = Field(False, description="Return the JSONL in the response instead of writing a file.")


# -- responses --------------------------------------------------------------------------


class CorrectionRequest(_Request):
    """``PUT /mlops/conversations/{turn_id}``: the answer the turn should have had."""

    answer: str = Field(..., min_length=1, max_length=8000, description="The corrected answer; the original is kept.")

    @field_validator("answer")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the corrected answer is blank")
        return value


class FeedbackResponse(BaseModel):
    turn_id: str
    rating: int


class FinetuneResponse(BaseModel):
    started: bool
    message: str
    run_id: int | None = None
    from_seq: int | None = None
    to_seq: int | None = None
    attempt: int | None = None
    pending: bool = False


class AdapterChange(BaseModel):
    active: str
    previous: str
    student_share: float | None = Field(None, description="Share of sessions the student answers, where a teacher answers the rest.")


ProgressStatus = Literal["idle", "training", "succeeded", "failed", "rejected"]


class TrainingProgress(BaseModel):
    """``GET /mlops/training-progress``: the run in progress, or the last one."""

    status: ProgressStatus = "idle"
    run_id: int | None = None
    attempt: int | None = None
    trigger: str | None = Field(None, description="auto | manual | pending | retry | settings | resume | restore")
    from_seq: int | None = None
    to_seq: int | None = None
    samples: int | None = Field(None, description="Training examples (new + replay).")
    step: int = 0
    total_steps: int | None = None
    epoch: int | None = None
    loss: float | None = None
    progress: float | None = Field(None, description="0..1")
    eta_s: float | None = None
    elapsed_s: float | None = None
    losses: list[float] = Field(default_factory=list, description="Training loss per step (the curve).")
    started_at: float | None = None
    ended_at: float | None = None
    version: str | None = None
    error: str | None = None
    message: str = ""
    pending: bool = Field(False, description="One more run follows the current one.")
    retry_at: float | None = Field(None, description="When the next automatic retry starts.")


class TrainingRunInfo(BaseModel):
    """One row of ``GET /mlops/training-history`` (each attempt is a run)."""

    run_id: int
    status: Literal["running", "succeeded", "failed"]
    outcome: Literal["running", "promoted", "rejected", "empty", "failed", "interrupted"]
    version: str | None = None
    from_seq: int
    to_seq: int
    attempt: int
    started_at: float
    ended_at: float | None = None
    duration_s: float | None = None
    error: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)


class TrainingHistory(BaseModel):
    runs: list[TrainingRunInfo]
    count: int


class ModelVersion(BaseModel):
    version: str
    status: Literal["candidate", "active", "rejected", "archived", "base"]
    active: bool
    parent: str | None = None
    data_watermark: int = 0
    samples: int = 0
    metrics: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    created_at: float | None = None


class SelectorVersion(BaseModel):
    """An answer selector version (echorag.answering.selector): what it learnt from and how the gate judged it."""

    version: str
    status: Literal["candidate", "promoted", "rejected"]
    active: bool
    parent: str | None = None
    fitted_on: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    created_at: float | None = None


class ModelsResponse(BaseModel):
    """``GET /mlops/models``: ``base`` first, then every version oldest first; the same for
    the answer selector."""

    active: str
    versions: list[ModelVersion]
    selector: str = Field("base", description="The answer selector version that serves.")
    selectors: list[SelectorVersion] = Field(default_factory=list)


class SelectorRequest(_Request):
    version: str | None = Field(
        None, pattern=r"^(s[1-9]\d*|base)$",
        description="'s3' or 'base'; rollback's default: the selector that served before the active one.",
    )


class SelectorPromoteRequest(_Request):
    version: str = Field(..., pattern=r"^(s[1-9]\d*|base)$", description="'s3' or 'base'.")


class SelectorChange(BaseModel):
    selector: str = Field(..., description="The answer selector version that serves now.")


class AnswererPerformance(BaseModel):
    """How one answerer and version did with users (echorag.serving.routing)."""

    backend: str = Field(..., description="extractive, openai, tiny, kanana, ...")
    model: str
    version: str = Field(..., description="The adapter version it answered with ('base': none).")
    requests: int
    liked: int
    disliked: int
    like_rate: float | None = Field(None, description="👍 / (👍 + 👎); null before any rating.")
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    agreement: float | None = Field(
        None, description="The version's agreement (token F1) with the labels on the evaluation pool at its gate."
    )


class PerformanceMetrics(BaseModel):
    total_collected: int
    collected_last_hour: int
    collected_last_24h: int
    collection_rate_per_hour: float = Field(..., description="Turns stored per hour over the last 24 hours.")
    acceptance_rate: float | None = Field(None, description="Stored / (stored + dropped by the filters).")
    runs_total: int
    runs_succeeded: int
    runs_failed: int
    runs_promoted: int
    runs_rejected: int
    success_rate: float | None = Field(None, description="Succeeded / finished runs.")
    promotion_rate: float | None = Field(None, description="Promoted / runs that trained.")
    average_training_time_s: float | None = Field(None, description="Over runs that trained.")
    last_training_at: float | None = None
    student_share: float = Field(0.0, description="Share of sessions the student answers where a teacher answers the rest.")
    answerers: list[AnswererPerformance] = Field(
        default_factory=list, description="Per answerer and version, in order of first answer."
    )


class CollectorStats(BaseModel):
    collection_enabled: bool
    total_collected: int
    liked: int
    disliked: int
    filtered: dict[str, int]
    max_seq: int
    trained_watermark: int
    new_data_count: int


class TrainingStatus(BaseModel):
    is_training: bool
    status: ProgressStatus
    run_id: int | None = None
    pending: bool
    retry_scheduled: bool
    retry_at: float | None = None
    consecutive_failures: int
    stalled: bool = Field(..., description="Automatic retries gave up; a new batch or a manual run restarts.")
    should_train: bool
    new_data_count: int
    batch_size: int
    auto_trigger: bool
    finetune_enabled: bool
    last_run: TrainingRunInfo | None = None


class ModelsInfo(BaseModel):
    current_version: str
    total_versions: int
    latest_version: str | None = None
    promoted: int
    rejected: int


class EventsSummary(BaseModel):
    recent: int = Field(..., description="Events looked at (the latest ones).")
    by_type: dict[str, int]
    latest: list[Event]
    last_error: str | None = None


class StatusResponse(BaseModel):
    """``GET /mlops/status``: the original's five sections."""

    collector_stats: CollectorStats
    training_status: TrainingStatus
    models_info: ModelsInfo
    events_summary: EventsSummary
    performance_metrics: PerformanceMetrics
    settings: RuntimeSettings


class EventsResponse(BaseModel):
    events: list[Event]
    count: int


class ConversationsResponse(BaseModel):
    total: int
    limit: int
    offset: int
    conversations: list[StoredTurn]


class ClearConversationsResponse(BaseModel):
    deleted: int
    backup_path: str | None = None


class CleanupResponse(BaseModel):
    keep_days: float
    conversations: int
    events: int


class ExportResponse(BaseModel):
    count: int = Field(..., description="Training examples (chats) exported; 👎 turns are excluded.")
    path: str | None = None
    jsonl: str | None = None


# -- conversation backups ---------------------------------------------------------------


class RestoreRequest(_Request):
    backup: str = Field(
        ..., min_length=1, max_length=512,
        description="A backup name from ``GET /mlops/backups`` (or its full path inside the backups directory).",
    )


class BackupInfo(BaseModel):
    name: str
    size_bytes: int
    created_at: float = Field(..., description="When the backup file was written (Unix time).")
    turns: int | None = Field(None, description="Conversations in the backup (None: unreadable).")


class BackupsResponse(BaseModel):
    """``GET /mlops/backups``: conversation backups (``DELETE /mlops/conversations?backup=true``), newest first."""

    directory: str
    backups: list[BackupInfo]
    count: int


class RestoreResponse(BaseModel):
    backup: str
    restored: int = Field(..., description="Turns added back.")
    skipped: int = Field(..., description="Turns of the backup already present (same id or same content).")
    already_trained: int = Field(..., description="Restored turns a finished run trained on: they keep their seq "
                                                  "below the watermark and are not trained again.")
    pending: int = Field(..., description="Restored turns that were never trained: renumbered after the newest "
                                          "turn, so the next run trains them.")
    total_collected: int
    new_data_count: int
    training_queued: bool
