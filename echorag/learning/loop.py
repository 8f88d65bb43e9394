"""The learning loop's coordinator: collection → policy → training → gate → registry →
events and webhooks, in plain Python. The collector actor in ``deployments/`` is a
``LearningLoop``; tests drive it directly.

What runs a training job is injected: ``train_fn(job, on_step) -> TrainingOutcome``
(``echorag.learning.jobs``) blocks for the whole run (the Ray layer runs a ``TorchTrainer``
in it; ``local_train_fn`` trains in-process), ``submit(fn)`` decides where the run
executes (default: a daemon thread) and ``schedule(delay_s, fn)`` when an automatic retry
starts (default: a ``threading.Timer``).

This class turns requests into the policy's events; ``scheduler`` carries out its
decisions (runs on a worker, retries, progress) under one lock, which also guards the
runtime settings; no lock is held while a model trains, so ``record`` stays fast during a
run. What one run does is ``_run`` here, its steps in ``echorag.learning.runs``; which turns
train and judge in ``dataset``; admins' reads, corrections and exports in
``administration`` (a base); backups, cleanup and export in ``archive``; events and
webhooks in ``announce``.

A failure leaves the watermark where it was (the data stays pending) and the policy
schedules a retry with backoff until ``max_attempts``. On restart, runs that were still
``running`` are marked failed (interrupted) and count as failed attempts.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Modules, not the package: ``echorag.learning`` imports this one.
import echorag.learning.archive as archive
import echorag.learning.reports as reports
import echorag.learning.runs as runs
import echorag.learning.selector_learning as selector_learning
from echorag.learning.administration import Administration
from echorag.learning.announce import Announcer, Observer
from echorag.learning.api import (
    AdapterChange,
    ClearConversationsResponse,
    FeedbackResponse,
    FinetuneResponse,
    RestoreResponse,
    StatusResponse,
    TrainingProgress,
    rating_value,
)
from echorag.learning.database import ConversationStore
from echorag.learning.events import Event
from echorag.learning.jobs import Conflict, MlopsError, NotFound, ServedScorer, TrainFn
from echorag.learning.notify import Flavor
from echorag.learning.policy import MarkPending, StartRun, TrainingPolicy
from echorag.learning.registry import AdapterRegistry
from echorag.learning.runs import RunContext, RunResult
from echorag.learning.runtime_settings import SETTING_KEYS, RuntimeSettings, SettingsUpdate
from echorag.learning.scheduler import RunScheduler
from echorag.learning.selector_registry import SelectorRegistry
from echorag.learning.train_config import TrainConfig
from echorag.learning.versions import VersionSwitch
from echorag.serving.routing import Traffic
from echorag.types import MlopsInfo

if TYPE_CHECKING:
    from echorag.config import Settings
    from echorag.types import Turn

log = logging.getLogger(__name__)


class LearningLoop(Administration):
    def __init__(
        self,
        settings: Settings,
        train_fn: TrainFn,
        *,
        submit: Callable[[Callable[[], None]], Any] | None = None,
        schedule: Callable[[float, Callable[[], None]], Any] | None = None,
        warm_up: Callable[[str], Any] | None = None,
        scorer: ServedScorer | None = None,
        observer: Observer | None = None,
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
        ``scorer``: the serving engine's loss and answers under a registered version,
        which the gate then judges on (None: the ``train_fn`` measures them).
        ``observer(kind, data)`` hears every stored event (``kind`` = its type, ``data``
        = its data) and every recorded turn (``"turn_recorded"``: ``stored``, ``reason``,
        ``pii``); the Ray layer turns them into metrics."""
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.backups_dir = settings.backups_dir
        self.work_dir = self.data_dir / "training"
        self.exports_dir = settings.exports_dir
        self.store = ConversationStore(settings.sqlite_path)
        self.registry = AdapterRegistry(settings.adapters_root)
        self.selectors = SelectorRegistry(settings.adapters_root)
        self._train_fn = train_fn
        self._scorer = scorer
        self.announcer = Announcer(
            self.store, observer,
            webhook_url if webhook_url is not None else getattr(settings, "finetune_webhook_url", None),
            webhook_flavor, webhook_attempts, webhook_backoff_s,
        )
        self._versions = VersionSwitch(self.registry, self.announcer, warm_up,
                                       getattr(settings, "canary_fraction", 0.0))

        self._runtime = RuntimeSettings.resolve(settings, self.store.runtime_settings())
        self.scheduler = RunScheduler(self.store, self.announcer, self._runtime.policy_config(), self.work_dir,
                                      self._run, self._promoted, submit, schedule)
        self._lock = self.scheduler.lock  # one lock: the policy, the progress and these settings
        if self.work_dir.exists():  # leftovers of runs that died with the previous process
            shutil.rmtree(self.work_dir, ignore_errors=True)

        with self._lock:
            actions = self.scheduler.resume(resume)
        self.scheduler.act(actions)

    # -- small helpers ------------------------------------------------------------------------

    def _event(self, event: Event, **data: Any) -> Event:
        return self.announcer.record(event, **data)

    @property
    def policy(self) -> TrainingPolicy:
        return self.scheduler.policy

    def active_version(self) -> str:
        """The version that serves (``"base"`` if the pointer is unreadable, logged)."""
        return self._versions.active()

    @property
    def runtime(self) -> RuntimeSettings:
        with self._lock:
            return self._runtime.model_copy()

    # -- a run --------------------------------------------------------------------------------

    def _run(self, ctx: RunContext) -> RunResult:
        """One run's work (raising on failure); the scheduler records how it ended."""
        if ctx.backup_existing and (path := self.registry.backup_active(self.backups_dir)) is not None:
            self._event(runs.backed_up_event(ctx.run, self.registry.active, path))
        runtime = self.runtime
        config = TrainConfig.from_settings(self.settings, **runtime.train_config())
        job = runs.prepare_job(self.store, self.registry, ctx, config, self.active_version, self.work_dir)
        # The selector before the student: its new turns have joined the pool now, it
        # takes CPU seconds, and a failure of the student's training does not undo it.
        scheduler = self.scheduler
        scheduler.set_progress(ctx.run.id, message="fitting the answer selector")
        selector = selector_learning.learn_in_run(self.store, self.selectors, runtime.gate_min_examples, self._event)
        if job is None:
            result = RunResult.empty()
        else:
            scheduler.set_progress(ctx.run.id, message="training", samples=len(job.train))
            outcome = self._train_fn(job, lambda info: scheduler.on_step(ctx.run.id, info))
            scheduler.set_progress(ctx.run.id, message="registering the adapter" if self._scorer is None else
                                   f"judging on {len(job.holdout)} evaluation-pool turns, as served")
            gate = self.runtime.gate()  # the gate in force now: settings may have changed during the run
            versions = self._versions
            result = runs.register_candidate(self.registry, job, outcome, gate, ctx.run.started_at,
                                             versions.active, versions.warm_up, self._scorer)
        if selector is not None:
            result.metrics["selector"] = selector
        return result

    def _promoted(self, result: RunResult) -> None:
        graduate_at = getattr(self.settings, "canary_graduate_at", None)
        self._versions.graduate(result.metrics.get("candidate_agreement"), graduate_at)

    def training_progress(self) -> TrainingProgress:
        return self.scheduler.training_progress()

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
            enabled = self._runtime.collection_enabled and not self.scheduler.closed
        if not enabled:
            with self._lock:
                return self._info(False)
        result = self.store.add_turn(turn)
        self.announcer.observe(
            "turn_recorded", {"stored": result.stored, "reason": result.reason, "pii": list(result.pii)}
        )
        actions: list[Callable[[], None]] = []
        with self._lock:
            if result.stored and result.seq is not None:
                actions = self.scheduler.decide(self.policy.data_arrived(result.seq), trigger="auto")
            info = self._info(result.stored)
        self.scheduler.act(actions)
        return info

    def feedback(self, turn_id: str, rating: int | str, owner: str | None = None) -> FeedbackResponse:
        """👍 (1, "up") / 👎 (-1, "down": the turn is left out of training) / 0 clears.
        With ``owner`` only that owner's turn (another's is as unknown as a missing one)."""
        value = rating_value(rating)
        if not self.store.set_feedback(turn_id, value, owner):
            raise NotFound(f"unknown turn {turn_id!r}", {"turn_id": turn_id})
        return FeedbackResponse(turn_id=turn_id, rating=value)

    # -- admin: training ------------------------------------------------------------------------

    def finetune(self, force: bool = False, backup_existing: bool = True) -> FinetuneResponse:
        """Start a run now. While one is in progress a follow-up run is marked pending and
        ``Conflict`` (409) is raised. Below the batch size nothing starts unless ``force``."""
        with self._lock:
            if self.scheduler.closed:
                raise MlopsError("the learning loop is closed")
            decision = self.policy.manual_trigger(force)
            if isinstance(decision, MarkPending):
                self.scheduler.decide(decision, trigger="manual")
                raise Conflict(
                    "a training run is in progress; one more run on the new data will follow it",
                    {"run_id": self.scheduler.current_run_id(), "pending": True},
                )
            actions = self.scheduler.decide(decision, trigger="manual", backup_existing=backup_existing)
            if isinstance(decision, StartRun):
                response = FinetuneResponse(
                    started=True, message="training started", run_id=self.scheduler.current.run.id,
                    from_seq=decision.from_seq, to_seq=decision.to_seq, attempt=decision.attempt,
                )
            else:
                response = FinetuneResponse(started=False, message=getattr(decision, "reason", "") or "nothing to do")
        self.scheduler.act(actions)
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
            actions: list[Callable[[], None]] = []
            if changes:
                self._event(Event(
                    type="settings_updated",
                    message="⚙️ 설정 변경: " + ", ".join(f"{k}={v}" for k, v in changes.items()),
                    data={"changes": changes},
                ))
                actions = self.scheduler.decide(self.policy.settings_changed(self._runtime.policy_config()), trigger="settings")
            result = merged.model_copy()
        self.scheduler.act(actions)
        return result

    def rollback(self, version: str | None = None) -> AdapterChange:
        """Point serving at ``version`` (``"vN"`` or ``"base"``; default: the previous one)."""
        return self._versions.rollback(version)

    def rollback_selector(self, version: str | None = None) -> str:
        """Serve answer selector ``version`` (``"sN"`` or ``"base"``; default: the previous one)."""
        return selector_learning.rollback(self.selectors, version, self._event)

    def promote_selector(self, version: str) -> str:
        """Serve answer selector ``version`` (one the gate held back too)."""
        return selector_learning.promote(self.selectors, version)

    def promote(self, version: str | None = None, student_share: float | None = None) -> AdapterChange:
        """Serve ``version`` (a rejected or archived one too): the gate is a default, not a
        veto; ``student_share``: the student's share of sessions (neither: all of them)."""
        return self._versions.promote(version, student_share)

    def traffic(self) -> Traffic:
        """Which version the student serves, to which share of sessions (echorag.serving.routing)."""
        return self._versions.traffic()

    def traffic_after(self, known: Traffic | None, timeout_s: float = 30.0) -> Traffic:
        """``traffic`` once it differs from ``known`` (``VersionSwitch.traffic_after``)."""
        return self._versions.traffic_after(known, timeout_s)

    # -- admin: data --------------------------------------------------------------------------

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
                self.scheduler.retry_at = None
            self._event(archive.cleared_event(deleted, path))
            self.scheduler.changed.notify_all()
        return ClearConversationsResponse(deleted=deleted, backup_path=str(path) if path else None)

    def restore(self, backup: str) -> RestoreResponse:
        """Bring back the conversations of a backup (a name from ``backups()``); turns a
        run trained on stay trained, the others become pending (``archive.seqs_to_renumber``).
        Restoring twice adds nothing. Refused (409) while a run is in progress: that run
        may have loaded the deleted turns already, and must not be told about them twice."""
        path = archive.backup_path(self.backups_dir, backup)
        rows = archive.read_backup(path)
        with self._lock:
            if self.scheduler.closed:
                raise MlopsError("the learning loop is closed")
            policy = self.policy
            if policy.is_running:
                raise Conflict(
                    "a training run is in progress; restore once it has finished",
                    {"run_id": self.scheduler.current_run_id()},
                )
            # LIMIT -1: every run, to tell trained turns from untrained ones.
            restored = archive.restore_backup(self.store, path, rows, policy.watermark, self.store.runs(limit=-1))
            actions = self.scheduler.decide(policy.data_arrived(self.store.max_seq()), trigger="restore")
            info = self._info(True)
            self._event(restored.event())
            self.scheduler.changed.notify_all()
        self.scheduler.act(actions)
        return restored.response(info)

    # -- reading --------------------------------------------------------------------------------

    def status(self) -> StatusResponse:
        """``GET /mlops/status``: ``collector_stats``, ``training_status``, ``models_info``,
        ``events_summary``, ``performance_metrics`` (and the settings in force)."""
        counts = self.store.counts()
        runs = self.store.runs(limit=1)
        with self._lock:  # the policy and the progress, as one consistent view
            collector = reports.collector_stats(counts, self.policy, self._runtime.collection_enabled)
            training = reports.training_status(
                self.policy, self.scheduler.progress.state, self.scheduler.current_run_id(), self.scheduler.retry_at, runs[0] if runs else None
            )
            settings = self._runtime.model_copy()
        traffic = self.traffic()
        return reports.status(self.store, self.registry, collector, training, settings, traffic.version,
                              traffic.student_share)

    # -- lifecycle ------------------------------------------------------------------------------

    def wait_idle(self, timeout: float | None = None, retries: bool = True) -> bool:
        """Block until no run is in progress (nor, with ``retries``, scheduled) and the
        webhooks sent so far are delivered or given up. False on timeout."""
        return self.scheduler.wait_idle(timeout, retries)

    def close(self, timeout: float = 30.0) -> None:
        """Cancel scheduled retries, wait (up to ``timeout``) for a run in progress, close the store."""
        self.scheduler.close(timeout)
        self.store.close()

    def __enter__(self) -> LearningLoop:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
