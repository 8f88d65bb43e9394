"""The learning loop's coordinator: collection → policy → training → gate → registry →
events and webhooks, in plain Python. The collector actor in ``deployments/`` wraps one
``LearningLoop``; tests drive it directly.

What runs a training job is injected: ``train_fn(job, on_progress) -> TrainingOutcome``
blocks for the whole run (the Ray layer runs a ``TorchTrainer`` in it; ``local_train_fn``
trains in-process), ``submit(fn)`` decides where the run executes (default: a daemon
thread) and ``schedule(delay_s, fn)`` when an automatic retry starts (default: a
``threading.Timer``).

One lock guards the policy and the progress; no lock is held while a model trains,
an adapter is copied or a webhook is sent, so ``record`` stays fast during a run.

A run, step by step:

1. ``StartRun(from_seq, to_seq)`` from the policy → a ``runs`` row, ``training_started``.
2. Optional backup of the active adapter (``backups/``).
3. Data: trainable turns on ``(from_seq, to_seq]`` (👎 excluded), a deterministic held-out
   split of them, plus a replay sample of earlier accepted turns on the training side.
   No trainable turn: the run completes at once (``training_skipped``), no version.
4. ``train_fn`` writes an adapter, continuing from the active version, and measures the
   held-out loss of the candidate and of the active version.
5. The gate decides; the adapter becomes an immutable ``vN`` (parent, watermark, sample
   count, metrics, timings) and is promoted or kept as ``rejected``.
6. Events, a webhook (in the background), the run row, then the policy: the watermark
   moves, and a pending run starts on everything that accumulated meanwhile.

A failure leaves the watermark where it was (the data stays pending) and the policy
schedules a retry with backoff until ``max_attempts``. On restart, runs that were still
``running`` are marked failed (interrupted) and count as failed attempts.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from fnmatch import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from echorag.mlops import events as ev
from echorag.mlops.api import (
    CONVERSATIONS_LIMIT_MAX,
    EVENTS_LIMIT_MAX,
    AdapterChange,
    BackupInfo,
    BackupsResponse,
    ClearConversationsResponse,
    CleanupResponse,
    CollectorStats,
    ConversationsResponse,
    EventsResponse,
    EventsSummary,
    ExportResponse,
    FeedbackResponse,
    FinetuneResponse,
    ModelsInfo,
    ModelsResponse,
    ModelVersion,
    PerformanceMetrics,
    PromoteRequest,
    RestoreResponse,
    RollbackRequest,
    RuntimeSettings,
    SETTING_KEYS,
    SettingsUpdate,
    StatusResponse,
    TrainingHistory,
    TrainingProgress,
    TrainingRunInfo,
    TrainingStatus,
    rating_value,
)
from echorag.mlops.events import Event
from echorag.mlops.gate import EvaluationGate, GateDecision, split_holdout
from echorag.mlops.notify import Flavor, send_webhook
from echorag.mlops.policy import (
    Decision,
    MarkPending,
    PolicyConfig,
    RetryLater,
    StartRun,
    TrainingPolicy,
)
from echorag.mlops.registry import BASE, AdapterRegistry, InvalidAdapterError
from echorag.mlops.store import ConversationStore, Run
from echorag.schemas import MlopsInfo

if TYPE_CHECKING:
    from echorag.config import Settings
    from echorag.pipeline import Turn

log = logging.getLogger(__name__)

Chat = list[dict[str, str]]
INTERRUPTED = "interrupted: the process stopped during the run"
MAX_LOSS_POINTS = 2000  # the loss curve kept for the UI (longer runs are thinned)
BACKUP_GLOB = "conversations-*.sqlite"  # what ConversationStore.backup writes


# -- errors the HTTP layer maps to status codes -------------------------------------------


class MlopsError(Exception):
    status_code = 400

    def __init__(self, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail or {}


class Conflict(MlopsError):
    """A run is in progress (HTTP 409); a run has been marked pending to follow it."""

    status_code = 409


TrainingInProgress = Conflict


class NotFound(MlopsError, LookupError):
    """An unknown turn or adapter version (HTTP 404)."""

    status_code = 404


# -- the contract with whoever trains -------------------------------------------------------


@dataclass(frozen=True)
class TrainingJob:
    """Everything one attempt of a run needs; plain data (picklable, for a Ray task)."""

    run_id: int
    attempt: int
    from_seq: int
    to_seq: int
    train: list[Chat]  # new turns minus the held-out ones, plus the replay sample
    holdout: list[Chat]  # new turns only: what the gate judges on
    init_adapter: Path | None  # the active version's directory; None: a fresh LoRA on the base
    init_version: str  # "base" or "vN": the parent of the candidate
    output_dir: Path  # write the adapter here (peft save_pretrained) unless you return another dir
    config: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides: epochs, learning_rate, ...
    new_turns: int = 0
    replay_turns: int = 0

    @property
    def name(self) -> str:
        """A unique name for the run (Ray Train run names, progress actors)."""
        return f"echorag-run-{self.run_id}"


@dataclass
class TrainingOutcome:
    adapter_dir: Path
    candidate_loss: float | None  # held-out loss of the new adapter (None: not measured)
    active_loss: float | None  # held-out loss of ``job.init_adapter`` (or of the base model)
    timings: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)  # training loss per step


TrainFn = Callable[[TrainingJob, Callable[[dict[str, Any]], None]], TrainingOutcome]


def _thread(fn: Callable[[], None], name: str = "echorag-training") -> None:
    threading.Thread(target=fn, name=name, daemon=True).start()


def _timer(delay_s: float, fn: Callable[[], None]) -> threading.Timer:
    timer = threading.Timer(delay_s, fn)
    timer.daemon = True
    timer.start()
    return timer


def local_train_fn(base_path: str | Path, device: str | None = None, **overrides: Any) -> TrainFn:
    """A ``train_fn`` that trains in this process with ``echorag.mlops.training``
    (``train_lora`` + ``heldout_losses``). ``overrides`` are ``TrainConfig`` fields and win
    over the run's settings (e.g. ``max_length=128`` for a small machine)."""

    def train(job: TrainingJob, on_progress: Callable[[dict[str, Any]], None]) -> TrainingOutcome:
        from echorag.mlops.training import TrainConfig, heldout_losses, save_adapter, train_lora

        config = TrainConfig.from_dict(TrainConfig().to_dict() | job.config | overrides)
        result = train_lora(
            base_path, job.train, config, init_adapter=job.init_adapter,
            on_step=lambda step: on_progress(step.to_dict()), device=device,
        )
        save_adapter(result.model, job.output_dir)
        train_loss = result.losses[-1] if result.losses else None
        del result.model
        started = time.perf_counter()
        losses: dict[str, float] = {}
        if job.holdout:
            losses = heldout_losses(
                base_path, {"candidate": job.output_dir, "active": job.init_adapter}, job.holdout, config, device
            )
        return TrainingOutcome(
            adapter_dir=job.output_dir,
            candidate_loss=losses.get("candidate"),
            active_loss=losses.get("active"),
            timings=result.timings | {"eval_s": time.perf_counter() - started},
            metrics={"train_loss": train_loss, "steps": result.steps, "examples": result.examples},
            losses=result.losses,
        )

    return train


# -- internals --------------------------------------------------------------------------------


@dataclass
class _RunContext:
    run: Run
    attempt: int
    trigger: str
    backup_existing: bool


@dataclass
class _Result:
    """What a successful run produced (``version`` None: an empty run)."""

    version: str | None
    promoted: bool
    reason: str
    metrics: dict[str, Any]
    candidate_loss: float | None = None
    active_loss: float | None = None
    previous: str = BASE
    losses: list[float] = field(default_factory=list)


def _finite(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _thin(values: list[float], limit: int = MAX_LOSS_POINTS) -> list[float]:
    if len(values) <= limit:
        return list(values)
    stride = math.ceil(len(values) / limit)
    return values[::stride]


def _outcome(run: Run) -> str:
    if run.status == "running":
        return "running"
    if run.status == "failed":
        return "interrupted" if (run.error or "").startswith("interrupted") else "failed"
    if run.metrics.get("empty"):
        return "empty"
    return "promoted" if run.metrics.get("promoted") else "rejected"


def _read_backup(path: Path) -> list[tuple[int, str]]:
    """``(seq, id)`` of every turn in a conversation backup, read-only; ``MlopsError`` if
    the file is not one."""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return [(r[0], r[1]) for r in db.execute("SELECT seq, id FROM conversations ORDER BY seq")]
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise MlopsError(f"{path.name} is not a readable conversation backup: {exc}", {"backup": path.name}) from None


def _run_info(run: Run) -> TrainingRunInfo:
    return TrainingRunInfo(
        run_id=run.id,
        status=run.status,
        outcome=_outcome(run),
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


# -- the loop ---------------------------------------------------------------------------------


class LearningLoop:
    def __init__(
        self,
        settings: Settings,
        train_fn: TrainFn,
        *,
        submit: Callable[[Callable[[], None]], Any] | None = None,
        schedule: Callable[[float, Callable[[], None]], Any] | None = None,
        warm_up: Callable[[str], Any] | None = None,
        observer: Callable[[str, dict[str, Any]], Any] | None = None,
        webhook_url: str | None = None,
        webhook_flavor: Flavor | None = None,
        webhook_attempts: int = 4,
        webhook_backoff_s: float = 0.5,
        resume: bool = True,
    ) -> None:
        """Open (or create) the store and registry under ``settings.data_dir`` and rebuild
        the state from disk. ``webhook_url`` defaults to ``settings.finetune_webhook_url``;
        ``webhook_flavor`` forces the payload shape (default: from the URL's host).
        ``resume``: start a run at once when the data on disk already calls for one.
        ``warm_up(version)`` runs before a promotion moves the active pointer (and after a
        rollback), so the first requests for the new version do not pay its load.
        ``observer(kind, data)`` hears every stored event (``kind`` = its type, ``data``
        = its data) and every recorded turn (``"turn_recorded"``: ``stored``, ``reason``,
        ``pii``); the Ray layer turns them into metrics."""
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.backups_dir = self.data_dir / "backups"
        self.work_dir = self.data_dir / "training"
        self.exports_dir = self.data_dir / "exports"
        self.store = ConversationStore(settings.sqlite_path)
        self.registry = AdapterRegistry(settings.adapters_root)
        self._train_fn = train_fn
        self._submit = submit or _thread
        self._schedule = schedule or _timer
        self._warm_up_fn = warm_up  # loads a version on the serving side before it is switched to
        self._observer = observer
        self.webhook_url = webhook_url if webhook_url is not None else getattr(settings, "finetune_webhook_url", None)
        self.webhook_flavor = webhook_flavor
        self.webhook_attempts = webhook_attempts
        self.webhook_backoff_s = webhook_backoff_s

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._closed = False
        self._current: _RunContext | None = None
        self._retry_at: float | None = None
        self._timers: list[Any] = []
        self._notifications: list[threading.Thread] = []

        self._runtime = RuntimeSettings.resolve(settings, self.store.runtime_settings())
        self.gate = EvaluationGate(self._runtime.gate_tolerance)
        for run in self.store.interrupt_running_runs(INTERRUPTED):
            self._event(Event(
                type="training_interrupted",
                message=f"⛔ 미세조정 중단: 프로세스 재시작 (run {run.id}, seq {run.from_seq + 1}–{run.to_seq}, 데이터 유지)",
                data={"run_id": run.id, "from_seq": run.from_seq, "to_seq": run.to_seq},
            ))
        self.policy = TrainingPolicy(
            self._policy_config(), watermark=self.store.trained_watermark(), max_seq=self.store.max_seq()
        )
        self._progress = self._last_progress()
        if self.work_dir.exists():  # leftovers of runs that died with the previous process
            shutil.rmtree(self.work_dir, ignore_errors=True)

        with self._lock:
            actions = self._restore_retries(resume)
        self._run_actions(actions)

    # -- setup helpers ----------------------------------------------------------------------

    def _policy_config(self) -> PolicyConfig:
        rt = self._runtime
        return PolicyConfig(
            batch_size=rt.batch_size,
            auto_trigger=rt.auto_trigger,
            enabled=rt.finetune_enabled,
            max_attempts=rt.max_attempts,
            retry_backoff_s=rt.retry_backoff_s,
        )

    def _restore_retries(self, resume: bool) -> list[Callable[[], None]]:
        """Failed attempts on the pending slice (interrupted ones included) still count
        after a restart, so a run that kills the process cannot loop forever."""
        failures = 0
        for run in self.store.runs(limit=100):
            if run.status != "failed" or run.from_seq != self.policy.watermark:
                break
            failures += 1
        policy = self.policy
        policy.failures = failures
        if failures >= policy.config.max_attempts:
            policy.stalled_at = policy.max_seq
            return []
        if not resume:
            return []
        if failures and policy.new_data > 0 and policy.config.enabled:
            policy.retry_scheduled = True
            return self._decide(RetryLater(policy.config.backoff(failures), attempt=failures + 1), trigger="resume")
        return self._decide(policy.data_arrived(policy.max_seq), trigger="resume")

    def _last_progress(self) -> dict[str, Any]:
        runs = self.store.runs(limit=1)
        if not runs:
            return TrainingProgress().model_dump()
        run = runs[0]
        outcome = _outcome(run)
        status = {"promoted": "succeeded", "empty": "succeeded", "rejected": "rejected"}.get(outcome, "failed")
        return TrainingProgress(
            status=status, run_id=run.id, attempt=run.attempts, from_seq=run.from_seq, to_seq=run.to_seq,
            started_at=run.started_at, ended_at=run.ended_at, version=run.version, error=run.error,
            losses=[x for x in run.metrics.get("losses", []) if isinstance(x, (int, float))],
            loss=_finite(run.metrics.get("train_loss")), message=f"last run: {outcome}",
        ).model_dump()

    # -- small helpers ------------------------------------------------------------------------

    def _event(self, event: Event, **data: Any) -> Event:
        if data:
            event = event.model_copy(update={"data": event.data | data})
        self._observe(event.type, event.data)
        try:
            return self.store.add_event(event)
        except Exception:  # an event must never break the step it describes
            log.exception("could not store event %s", event.type)
            return event

    def _observe(self, kind: str, data: dict[str, Any]) -> None:
        if self._observer is None:
            return
        try:
            self._observer(kind, data)
        except Exception:  # observing (metrics) must never break the loop
            log.exception("observer failed on %s", kind)

    def _notify(self, event: Event) -> None:
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
            self._notifications = [t for t in self._notifications if t.is_alive()] + [thread]
        thread.start()

    def _warm_up(self, version: str) -> None:
        if self._warm_up_fn is None:
            return
        try:
            self._warm_up_fn(version)
        except Exception as exc:  # serving still switches; the first request loads it instead
            log.exception("warm_up(%s) failed", version)
            self._event(Event(
                type="activation_failed",
                message=f"⚠️ 어댑터 {version} 적용 알림 실패: {exc}",
                data={"version": version, "error": str(exc)[:2000]},
            ))

    def _run_actions(self, actions: list[Callable[[], None]]) -> None:
        for action in actions:
            action()

    def active_version(self) -> str:
        """The version that serves (``"base"`` if the pointer is unreadable, logged)."""
        try:
            return self.registry.active
        except InvalidAdapterError:
            log.exception("the active adapter pointer is unreadable; serving the base model")
            return BASE

    @property
    def runtime(self) -> RuntimeSettings:
        with self._lock:
            return self._runtime.model_copy()

    # -- carrying out the policy's decisions ------------------------------------------------

    def _decide(
        self, decision: Decision, trigger: str = "auto", backup_existing: bool = False
    ) -> list[Callable[[], None]]:
        """Book a decision (with the lock held); returns what to do once it is released."""
        if isinstance(decision, StartRun):
            run = self.store.start_run(decision.from_seq, decision.to_seq, attempts=decision.attempt)
            ctx = _RunContext(run, decision.attempt, trigger, backup_existing)
            self._current, self._retry_at = ctx, None
            self._progress = TrainingProgress(
                status="training", run_id=run.id, attempt=decision.attempt, trigger=trigger,
                from_seq=run.from_seq, to_seq=run.to_seq, started_at=run.started_at,
                message="preparing data",
            ).model_dump()
            self._event(ev.training_started(run.id, run.from_seq, run.to_seq, decision.attempt), trigger=trigger)
            return [lambda: self._launch(ctx)]
        if isinstance(decision, MarkPending):
            running = self._current.run.id if self._current else None
            self._event(Event(
                type="training_queued",
                message=f"⏳ 학습 대기열 등록: 진행 중인 학습(run {running}) 후 새 데이터로 한 번 더 학습",
                data={"run_id": running, "trigger": trigger, "reason": decision.reason},
            ))
            return []
        if isinstance(decision, RetryLater):
            self._retry_at = time.time() + decision.delay
            return [lambda: self._schedule_retry(decision.delay)]
        return []

    def _launch(self, ctx: _RunContext) -> None:
        if self._closed:  # a follow-up decided while closing: leave its data pending
            self._fail(ctx, RuntimeError("interrupted: the learning loop was closed"))
            return
        try:
            self._submit(lambda: self._execute(ctx))
        except Exception as exc:  # e.g. no thread could be started
            log.exception("could not start run %d", ctx.run.id)
            self._fail(ctx, exc)

    def _schedule_retry(self, delay: float) -> None:
        if self._closed:
            return
        handle = self._schedule(delay, self._retry_due)
        if hasattr(handle, "cancel"):
            with self._lock:
                self._timers = [t for t in self._timers if getattr(t, "is_alive", lambda: True)()] + [handle]

    def _retry_due(self) -> None:
        if self._closed:
            return
        with self._lock:
            actions = self._decide(self.policy.retry_due(), trigger="retry")
            if not actions:
                self._retry_at = None
            self._changed.notify_all()
        self._run_actions(actions)

    # -- a run --------------------------------------------------------------------------------

    def _execute(self, ctx: _RunContext) -> None:
        try:
            if ctx.backup_existing:
                self._backup(ctx)
            job = self._prepare(ctx)
            if job is None:
                result = _Result(None, False, "no trainable turns (all 👎 or deleted)", {"empty": True})
            else:
                self._set_progress(ctx.run.id, message="training", samples=len(job.train))
                outcome = self._train_fn(job, lambda info: self._on_progress(ctx.run.id, info))
                self._set_progress(ctx.run.id, message="registering the adapter")
                result = self._register(ctx, job, outcome)
        except Exception as exc:
            log.exception("training run %d (attempt %d) failed", ctx.run.id, ctx.attempt)
            self._fail(ctx, exc)
            return
        self._succeed(ctx, result)

    def _backup(self, ctx: _RunContext) -> None:
        path = self.registry.backup_active(self.backups_dir)
        if path is not None:
            self._event(Event(
                type="adapter_backed_up",
                message=f"💾 학습 전 활성 어댑터 백업: {path.name}",
                data={"run_id": ctx.run.id, "version": self.registry.active, "path": str(path)},
            ))

    def _prepare(self, ctx: _RunContext) -> TrainingJob | None:
        run = ctx.run
        with self._lock:
            rt = self._runtime.model_copy()
        new = self.store.trainable_turns(run.from_seq, run.to_seq)
        if not new:
            return None
        train, holdout = split_holdout(new, rt.holdout_fraction, seed=rt.seed)
        if not train:  # a single turn with a large holdout fraction: train on it, no gate
            train, holdout = new, []
        replay = self.store.replay_sample(run.from_seq, round(len(train) * rt.replay_fraction), seed=rt.seed)
        init_version = self.active_version()
        init_adapter = None if init_version == BASE else self.registry.path(init_version)
        out = self.work_dir / f"run-{run.id}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        return TrainingJob(
            run_id=run.id,
            attempt=ctx.attempt,
            from_seq=run.from_seq,
            to_seq=run.to_seq,
            train=[t.messages() for t in train + replay],
            holdout=[t.messages() for t in holdout],
            init_adapter=init_adapter,
            init_version=init_version,
            output_dir=out / "adapter",
            config=rt.train_config(),
            new_turns=len(new),
            replay_turns=len(replay),
        )

    def _judge(self, job: TrainingJob, outcome: TrainingOutcome) -> GateDecision:
        decision = self._gate_decision(job, outcome)
        now_active = self.active_version()
        if decision.promote and now_active != job.init_version:
            return GateDecision(
                False,
                f"the active version changed during the run ({job.init_version} → {now_active}); not promoted",
                decision.metrics,
            )
        return decision

    def _gate_decision(self, job: TrainingJob, outcome: TrainingOutcome) -> GateDecision:
        if outcome.candidate_loss is None:
            if job.config.get("holdout_fraction") == 0:
                return GateDecision(True, "gate disabled (holdout_fraction = 0)")
            return GateDecision(False, "no held-out turns to judge the candidate on; promote it by hand if wanted")
        candidate = _finite(outcome.candidate_loss)
        if candidate is None:
            return GateDecision(False, f"candidate loss is {outcome.candidate_loss}")
        with self._lock:
            gate = self.gate
        return gate.decide(candidate, _finite(outcome.active_loss))

    def _register(self, ctx: _RunContext, job: TrainingJob, outcome: TrainingOutcome) -> _Result:
        if outcome is None or outcome.adapter_dir is None:
            raise RuntimeError("train_fn returned no adapter")
        decision = self._judge(job, outcome)
        metrics = {
            "run_id": ctx.run.id,
            "attempt": ctx.attempt,
            "candidate_loss": _finite(outcome.candidate_loss),
            "active_loss": _finite(outcome.active_loss),
            "gate": {k: v for k, v in decision.metrics.items()},
            "gate_reason": decision.reason,
            "promoted": decision.promote,
            "new_turns": job.new_turns,
            "replay_turns": job.replay_turns,
            "train_examples": len(job.train),
            "holdout_examples": len(job.holdout),
            "config": job.config,
            **{k: v for k, v in outcome.metrics.items() if k not in ("losses",)},
        }
        timings = {k: float(v) for k, v in outcome.timings.items() if _finite(v) is not None}
        timings["run_s"] = time.time() - ctx.run.started_at
        info = self.registry.add(
            outcome.adapter_dir,
            parent=job.init_version,
            data_watermark=job.to_seq,
            samples=len(job.train),
            metrics=metrics,
            timings=timings,
        )
        version, previous, promoted, reason = info.version, self.active_version(), decision.promote, decision.reason
        if promoted:
            self._warm_up(version)
            try:
                self.registry.promote(version)
            except Exception as exc:
                log.exception("could not promote %s", version)
                promoted, reason = False, f"promotion failed: {exc}"
        if not promoted:
            self.registry.reject(version, {"promoted": False, "gate_reason": reason})
        return _Result(
            version, promoted, reason, metrics | {"promoted": promoted, "gate_reason": reason, "version": version},
            _finite(outcome.candidate_loss), _finite(outcome.active_loss), previous, list(outcome.losses),
        )

    def _succeed(self, ctx: _RunContext, result: _Result) -> None:
        run = ctx.run
        if result.version is None:
            event = self._event(Event(
                type="training_skipped",
                message=f"⏭️ 학습할 대화 없음: seq {run.from_seq + 1}–{run.to_seq} 처리 완료 (👎 또는 삭제됨)",
                data={"run_id": run.id, "from_seq": run.from_seq, "to_seq": run.to_seq},
            ))
        else:
            if result.promoted:
                self._event(ev.adapter_promoted(result.version, result.previous), run_id=run.id, trigger="gate")
                base_event = ev.training_succeeded(
                    result.version, result.active_loss, result.candidate_loss, run_id=run.id,
                    samples=result.metrics.get("train_examples"), promoted=True,
                )
            else:
                base_event = ev.training_rejected(
                    result.version, result.active_loss, result.candidate_loss, result.reason
                )
            event = self._event(base_event, run_id=run.id, from_seq=run.from_seq, to_seq=run.to_seq)
            self._notify(event)
        metrics = result.metrics | {"losses": _thin(result.losses)}
        try:
            self.store.finish_run(run.id, "succeeded", version=result.version, metrics=metrics)
        except Exception as exc:  # the run trained, but the watermark could not move: a failure
            log.exception("could not record run %d as succeeded", run.id)
            self._fail(ctx, exc)
            return
        shutil.rmtree(self.work_dir / f"run-{run.id}", ignore_errors=True)
        with self._lock:
            if self._progress.get("run_id") == run.id:
                self._progress.update(
                    status="succeeded" if result.promoted or result.version is None else "rejected",
                    ended_at=time.time(), version=result.version,
                    message=result.reason if result.version else event.message,
                    losses=_thin(result.losses) or self._progress["losses"],
                )
            trigger = "pending" if self.policy.pending else "auto"
            actions = self._decide(self.policy.run_succeeded(), trigger=trigger)
            if self._current is ctx:
                self._current = None
            self._changed.notify_all()
        self._run_actions(actions)

    def _fail(self, ctx: _RunContext, exc: BaseException) -> None:
        run = ctx.run
        error = f"{type(exc).__name__}: {exc}"
        try:
            self.store.finish_run(run.id, "failed", error=error[-4000:])
        except Exception:
            log.exception("could not record run %d as failed", run.id)
        shutil.rmtree(self.work_dir / f"run-{run.id}", ignore_errors=True)
        with self._lock:
            decision = self.policy.run_failed(error)
            retry_in = decision.delay if isinstance(decision, RetryLater) else None
            event = self._event(
                ev.training_failed(error, ctx.attempt, self.policy.config.max_attempts, retry_in),
                run_id=run.id, from_seq=run.from_seq, to_seq=run.to_seq,
            )
            if self._progress.get("run_id") == run.id:
                self._progress.update(
                    status="failed", ended_at=time.time(), error=error[-2000:], message=event.message
                )
            actions = self._decide(decision, trigger="retry")
            if self._current is ctx:
                self._current = None
            self._notify(event)  # before waking wait_idle, which then waits for the delivery
            self._changed.notify_all()
        self._run_actions(actions)

    # -- progress -----------------------------------------------------------------------------

    def _set_progress(self, run_id: int, **values: Any) -> None:
        with self._lock:
            if self._progress.get("run_id") == run_id and self._progress["status"] == "training":
                self._progress.update(values)

    def _on_progress(self, run_id: int, info: dict[str, Any]) -> None:
        """``train_fn`` reports a step: ``step``, ``total_steps``, ``loss``, ``eta_s``, ...
        (``StepInfo.to_dict()``); epoch summaries (``kind="epoch"``) are ignored."""
        if info.get("kind", "step") != "step":
            return
        with self._lock:
            progress = self._progress
            if progress.get("run_id") != run_id or progress["status"] != "training":
                return  # a late report of a run that already ended
            for key in ("step", "total_steps", "epoch"):
                if isinstance(info.get(key), int):
                    progress[key] = info[key]
            for key in ("loss", "eta_s", "elapsed_s", "progress"):
                if _finite(info.get(key)) is not None:
                    progress[key] = float(info[key])
            if _finite(info.get("loss")) is not None:
                progress["losses"].append(float(info["loss"]))
                if len(progress["losses"]) > 2 * MAX_LOSS_POINTS:
                    progress["losses"] = _thin(progress["losses"])
            if progress.get("progress") is None and progress.get("total_steps"):
                progress["progress"] = progress["step"] / progress["total_steps"]

    def training_progress(self) -> TrainingProgress:
        with self._lock:
            return TrainingProgress(
                **(self._progress | {"pending": self.policy.pending, "retry_at": self._retry_at})
            )

    # -- the chat path ------------------------------------------------------------------------

    def _info(self, collected: bool) -> MlopsInfo:
        policy = self.policy
        return MlopsInfo(
            collected=collected,
            total_collected=self.store.counts().total,
            new_data_count=policy.new_data,
            should_train=policy.should_train,
            training_queued=policy.is_running or policy.pending or policy.retry_scheduled,
            current_version=self.active_version(),
        )

    def record(self, turn: Turn) -> MlopsInfo:
        """Store a turn (screened and scrubbed) and let the policy react. ``collected`` is
        true only when the turn is on disk (collection on, not filtered, not a duplicate)."""
        with self._lock:
            enabled = self._runtime.collection_enabled and not self._closed
        if not enabled:
            with self._lock:
                return self._info(False)
        result = self.store.add_turn(turn)
        self._observe("turn_recorded", {"stored": result.stored, "reason": result.reason, "pii": list(result.pii)})
        actions: list[Callable[[], None]] = []
        with self._lock:
            if result.stored and result.seq is not None:
                actions = self._decide(self.policy.data_arrived(result.seq), trigger="auto")
            info = self._info(result.stored)
        self._run_actions(actions)
        return info

    def feedback(self, turn_id: str, rating: int | str) -> FeedbackResponse:
        """👍 (1, "up") / 👎 (-1, "down": the turn is left out of training) / 0 clears."""
        value = rating_value(rating)
        if not self.store.set_feedback(turn_id, value):
            raise NotFound(f"unknown turn {turn_id!r}", {"turn_id": turn_id})
        return FeedbackResponse(turn_id=turn_id, rating=value)

    # -- admin: training ------------------------------------------------------------------------

    def finetune(self, force: bool = False, backup_existing: bool = True) -> FinetuneResponse:
        """Start a run now. While one is in progress a follow-up run is marked pending and
        ``Conflict`` (409) is raised. Below the batch size nothing starts unless ``force``."""
        with self._lock:
            if self._closed:
                raise MlopsError("the learning loop is closed")
            decision = self.policy.manual_trigger(force)
            if isinstance(decision, MarkPending):
                self._decide(decision, trigger="manual")
                run_id = self._current.run.id if self._current else None
                raise Conflict(
                    "a training run is in progress; one more run on the new data will follow it",
                    {"run_id": run_id, "pending": True},
                )
            actions = self._decide(decision, trigger="manual", backup_existing=backup_existing)
            if isinstance(decision, StartRun):
                response = FinetuneResponse(
                    started=True, message="training started", run_id=self._current.run.id,
                    from_seq=decision.from_seq, to_seq=decision.to_seq, attempt=decision.attempt,
                )
            else:
                response = FinetuneResponse(started=False, message=getattr(decision, "reason", "") or "nothing to do")
        self._run_actions(actions)
        return response

    def update_settings(self, update: SettingsUpdate | dict[str, Any]) -> RuntimeSettings:
        """Validate (``pydantic.ValidationError`` → 422), persist, apply at once (a lower
        batch size may start a run). Returns the settings now in force."""
        if not isinstance(update, SettingsUpdate):
            update = SettingsUpdate.model_validate(update)
        changes = update.changes()
        with self._lock:
            merged = RuntimeSettings.model_validate(self._runtime.model_dump() | changes)
            if changes:
                self.store.set_settings(**{SETTING_KEYS[name]: value for name, value in changes.items()})
            self._runtime = merged
            self.gate = EvaluationGate(merged.gate_tolerance)
            actions: list[Callable[[], None]] = []
            if changes:
                self._event(Event(
                    type="settings_updated",
                    message="⚙️ 설정 변경: " + ", ".join(f"{k}={v}" for k, v in changes.items()),
                    data={"changes": changes},
                ))
                actions = self._decide(self.policy.settings_changed(self._policy_config()), trigger="settings")
            result = merged.model_copy()
        self._run_actions(actions)
        return result

    def rollback(self, version: str | None = None) -> AdapterChange:
        """Point serving at ``version`` (``"vN"`` or ``"base"``; default: the previous one)."""
        version = RollbackRequest(version=version).version
        previous = self.active_version()
        try:
            target = self.registry.rollback(version)
        except InvalidAdapterError as exc:
            self._event(ev.adapter_refused(version or "previous", str(exc)))
            raise NotFound(str(exc), {"version": version}) from exc
        self._event(ev.adapter_rolled_back(previous, target))
        self._warm_up(target)  # usually still loaded: old versions stay in the replicas' cache
        return AdapterChange(active=target, previous=previous)

    def promote(self, version: str) -> AdapterChange:
        """Serve ``version`` (a rejected or archived one too): the gate is a default, not a veto."""
        version = PromoteRequest(version=version).version
        previous = self.active_version()
        try:
            if version != BASE:
                self.registry.path(version)  # exists and is valid, before anything loads it
            self._warm_up(version)
            self.registry.promote(version)
        except InvalidAdapterError as exc:
            self._event(ev.adapter_refused(version, str(exc)))
            raise NotFound(str(exc), {"version": version}) from exc
        self._event(ev.adapter_promoted(version, previous), trigger="manual")
        return AdapterChange(active=version, previous=previous)

    # -- admin: data --------------------------------------------------------------------------

    def conversations(self, limit: int = 50, offset: int = 0) -> ConversationsResponse:
        """Newest first."""
        limit = max(1, min(int(limit), CONVERSATIONS_LIMIT_MAX))
        offset = max(0, int(offset))
        turns = self.store.recent_turns(limit + offset)[offset:]
        return ConversationsResponse(
            total=self.store.counts().total, limit=limit, offset=offset, conversations=turns
        )

    def clear_conversations(self, backup: bool = False) -> ClearConversationsResponse:
        """Delete every conversation (after a SQLite backup when ``backup``). Deleted data
        is no longer pending: when no run is in progress the watermark moves past it."""
        deleted, path = self.store.clear(backup=backup, backups_dir=self.backups_dir)
        with self._lock:
            policy = self.policy
            if not policy.is_running and policy.new_data > 0:
                run = self.store.start_run(policy.watermark, policy.max_seq)
                self.store.finish_run(run.id, "succeeded", metrics={"empty": True, "reason": "conversations cleared"})
                policy.run_started(run.from_seq, run.to_seq)
                policy.run_succeeded()
                self._retry_at = None
            self._event(Event(
                type="conversations_cleared",
                message=f"🗑️ 대화 {deleted}건 삭제" + (f" (백업: {path.name})" if path else ""),
                data={"deleted": deleted, "backup_path": str(path) if path else None},
            ))
            self._changed.notify_all()
        return ClearConversationsResponse(deleted=deleted, backup_path=str(path) if path else None)

    def backups(self) -> BackupsResponse:
        """The conversation backups in ``backups/`` (what ``clear_conversations(backup=True)``
        writes), newest first."""
        found = []
        for path in self.backups_dir.glob(BACKUP_GLOB):
            try:
                stat = path.stat()
                turns = len(_read_backup(path))
            except FileNotFoundError:  # deleted while listing
                continue
            except MlopsError:
                turns = None
            found.append(BackupInfo(name=path.name, size_bytes=stat.st_size, created_at=stat.st_mtime, turns=turns))
        found.sort(key=lambda b: (b.created_at, b.name), reverse=True)
        return BackupsResponse(directory=str(self.backups_dir), backups=found, count=len(found))

    def _backup_path(self, backup: str) -> Path:
        """A backup by name (or by its full path inside ``backups/``); anything else is refused."""
        directory = self.backups_dir.resolve()
        try:
            given = Path(backup)
            path = (given if given.is_absolute() else directory / given).resolve()  # follows "..", symlinks
        except (ValueError, OSError):  # e.g. a NUL byte
            path = directory
        if path.parent != directory or not fnmatch(path.name, BACKUP_GLOB):
            raise MlopsError(
                f"{backup!r} is not a conversation backup in the backups directory; GET /mlops/backups lists them",
                {"backup": backup},
            )
        if not path.is_file():
            raise NotFound(f"no backup named {path.name!r}; GET /mlops/backups lists them", {"backup": path.name})
        return path

    def restore(self, backup: str) -> RestoreResponse:
        """Bring back the conversations of a backup (a name from ``backups()``).

        The watermark stays a single number and never moves back, so each restored turn
        is placed by whether a run really trained on it:

        - trained (inside a succeeded run that trained): it keeps its seq, below the
          watermark, and is not trained again (it may still be replayed, as before);
        - never trained but below the watermark (``clear_conversations`` moved the
          watermark past the deleted data with an empty run): it gets a new seq after
          the newest turn, so it is pending again and the next run trains it once;
        - above the watermark: it keeps its seq and is still pending.

        Turns already present (same id or same content) are skipped, so restoring twice
        adds nothing. Refused (409) while a run is in progress: that run may have loaded
        the deleted turns already, and must not be told about them twice. Backups are
        meant for the data directory that wrote them (seqs are only meaningful there).
        """
        path = self._backup_path(backup)
        rows = _read_backup(path)
        with self._lock:
            if self._closed:
                raise MlopsError("the learning loop is closed")
            policy = self.policy
            if policy.is_running:
                raise Conflict(
                    "a training run is in progress; restore once it has finished",
                    {"run_id": self._current.run.id if self._current else None},
                )
            # LIMIT -1: every run. Empty runs (clear, all 👎) trained nothing.
            trained = [
                (r.from_seq, r.to_seq) for r in self.store.runs(limit=-1)
                if r.status == "succeeded" and not r.metrics.get("empty")
            ]
            renumber = [
                seq for seq, _ in rows
                if seq <= policy.watermark and not any(a < seq <= b for a, b in trained)
            ]
            ids = {turn_id for _, turn_id in rows}

            def pending_from_backup() -> int:
                return sum(1 for t in self.store.turns_after(policy.watermark) if t.id in ids)

            pending_before = pending_from_backup()
            try:
                added = self.store.restore(path, renumber=renumber)
            except (ValueError, sqlite3.Error) as exc:
                raise MlopsError(f"cannot restore {path.name}: {exc}", {"backup": path.name}) from None
            pending = pending_from_backup() - pending_before
            actions = self._decide(policy.data_arrived(self.store.max_seq()), trigger="restore")
            info = self._info(True)
            self._event(Event(
                type="conversations_restored",
                message=f"♻️ 대화 {added}건 복원: {path.name} (학습 대기 {pending}건, 이미 학습됨 {added - pending}건)",
                data={"backup": path.name, "restored": added, "skipped": len(rows) - added,
                      "pending": pending, "already_trained": added - pending},
            ))
            self._changed.notify_all()
        self._run_actions(actions)
        return RestoreResponse(
            backup=path.name, restored=added, skipped=len(rows) - added,
            already_trained=added - pending, pending=pending,
            total_collected=info.total_collected, new_data_count=info.new_data_count,
            training_queued=info.training_queued,
        )

    def cleanup(self, keep_days: float = 30.0) -> CleanupResponse:
        if keep_days < 0:
            raise ValueError("keep_days must be >= 0")
        removed = self.store.cleanup(keep_days)
        self._event(Event(
            type="cleanup",
            message=f"🧹 {keep_days:g}일 지난 데이터 정리: 대화 {removed['conversations']}건, 이벤트 {removed['events']}건",
            data={"keep_days": keep_days, **removed},
        ))
        return CleanupResponse(keep_days=keep_days, **removed)

    def export(self, path: str | Path | None = None, inline: bool = False) -> ExportResponse:
        """The training dataset (chat messages, 👎 excluded) as JSONL: written to ``path``
        (default ``exports/training-<time>.jsonl``), or returned when ``inline``."""
        if inline:
            turns = self.store.trainable_turns(0, self.store.max_seq())
            text = "".join(json.dumps({"messages": t.messages()}, ensure_ascii=False) + "\n" for t in turns)
            return ExportResponse(count=len(turns), jsonl=text)
        target = Path(path) if path else self.exports_dir / f"training-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        count = self.store.export_jsonl(target)
        self._event(Event(
            type="dataset_exported", message=f"📤 학습 데이터 {count}건 내보내기: {target.name}",
            data={"path": str(target), "count": count},
        ))
        return ExportResponse(count=count, path=str(target))

    # -- reading --------------------------------------------------------------------------------

    def events(self, event_type: str | None = None, limit: int = 100) -> EventsResponse:
        """Newest first."""
        limit = max(1, min(int(limit), EVENTS_LIMIT_MAX))
        found = self.store.events(event_type or None, limit)
        return EventsResponse(events=found, count=len(found))

    def training_history(self, limit: int = 50) -> TrainingHistory:
        """Every attempt of every run, newest first."""
        runs = [_run_info(r) for r in self.store.runs(max(1, min(int(limit), 1000)))]
        return TrainingHistory(runs=runs, count=len(runs))

    def models(self) -> ModelsResponse:
        active = self.active_version()
        versions = [ModelVersion(version=BASE, status="base", active=active == BASE, parent=None)]
        for info in self.registry.history():
            versions.append(ModelVersion(**info.model_dump(), active=info.version == active))
        return ModelsResponse(active=active, versions=versions)

    def performance(self) -> PerformanceMetrics:
        now = time.time()
        counts = self.store.counts()
        recent = [t.created_at for t in self.store.recent_turns(5000) if t.created_at >= now - 86400]
        last_24h = len(recent)
        dropped = sum(n for reason, n in counts.filtered.items() if reason != "pii_scrubbed")
        runs = [r for r in self.store.runs(limit=1000) if r.status != "running"]
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
        )

    def status(self) -> StatusResponse:
        """``GET /mlops/status``: ``collector_stats``, ``training_status``, ``models_info``,
        ``events_summary``, ``performance_metrics`` (and the settings in force)."""
        counts = self.store.counts()
        runs = self.store.runs(limit=1)
        history = self.registry.history()
        recent = self.store.events(limit=200)
        errors = [e for e in recent if e.type in ("training_failed", "training_interrupted", "activation_failed")]
        with self._lock:
            policy, progress = self.policy, self._progress
            collector = CollectorStats(
                collection_enabled=self._runtime.collection_enabled,
                total_collected=counts.total, liked=counts.liked, disliked=counts.disliked,
                filtered=counts.filtered, max_seq=counts.max_seq,
                trained_watermark=policy.watermark, new_data_count=policy.new_data,
            )
            training = TrainingStatus(
                is_training=policy.is_running, status=progress["status"],
                run_id=self._current.run.id if self._current else progress.get("run_id"),
                pending=policy.pending, retry_scheduled=policy.retry_scheduled, retry_at=self._retry_at,
                consecutive_failures=policy.failures, stalled=policy.stalled_at is not None,
                should_train=policy.should_train, new_data_count=policy.new_data,
                batch_size=policy.config.batch_size, auto_trigger=policy.config.auto_trigger,
                finetune_enabled=policy.config.enabled, last_run=_run_info(runs[0]) if runs else None,
            )
            settings = self._runtime.model_copy()
        return StatusResponse(
            collector_stats=collector,
            training_status=training,
            models_info=ModelsInfo(
                current_version=self.active_version(),
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
            performance_metrics=self.performance(),
            settings=settings,
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def wait_idle(self, timeout: float | None = None, retries: bool = True) -> bool:
        """Block until no run is in progress (nor, with ``retries``, scheduled) and the
        webhooks sent so far are delivered or given up. False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            idle = self._changed.wait_for(
                lambda: not self.policy.is_running and not (retries and self.policy.retry_scheduled),
                timeout,
            )
            threads = list(self._notifications)
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return idle and not any(t.is_alive() for t in threads)

    def close(self, timeout: float = 30.0) -> None:
        """Cancel scheduled retries, wait (up to ``timeout``) for a run in progress, close the store."""
        with self._lock:
            self._closed = True
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()
        if not self.wait_idle(timeout, retries=False):
            log.warning("closing the learning loop while a run is still in progress")
        self.store.close()

    def __enter__(self) -> LearningLoop:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
