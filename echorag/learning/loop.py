"""The learning loop's coordinator: collection → policy → training → gate → registry →
events and webhooks, in plain Python. The collector actor in ``deployments/`` is a
``LearningLoop``; tests drive it directly.

What runs a training job is injected: ``train_fn(job, on_progress) -> TrainingOutcome``
(``echorag.learning.jobs``) blocks for the whole run (the Ray layer runs a ``TorchTrainer``
in it; ``local_train_fn`` trains in-process), ``submit(fn)`` decides where the run
executes (default: a daemon thread) and ``schedule(delay_s, fn)`` when an automatic retry
starts (default: a ``threading.Timer``).

One lock guards the policy and the progress; no lock is held while a model trains,
an adapter is copied or a webhook is sent, so ``record`` stays fast during a run. This
class decides and owns that state; the steps of a run are in ``echorag.learning.runs``,
which turns train and judge in ``dataset``, admins' reads, corrections and exports in
``desk`` (a mixin), backups, cleanup and export in ``archive``, events and webhooks in
``announce``.

A failure leaves the watermark where it was (the data stays pending) and the policy
schedules a retry with backoff until ``max_attempts``. On restart, runs that were still
``running`` are marked failed (interrupted) and count as failed attempts.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Modules, not the package: ``echorag.learning`` imports this one.
import echorag.learning.archive as archive
import echorag.learning.reports as reports
import echorag.learning.runs as runs
import echorag.learning.selector_learning as selector_learning
from echorag.learning.announce import Announcer, Observer
from echorag.learning.api import (
    SETTING_KEYS,
    AdapterChange,
    ClearConversationsResponse,
    FeedbackResponse,
    FinetuneResponse,
    RestoreResponse,
    RuntimeSettings,
    SettingsUpdate,
    StatusResponse,
    TrainingProgress,
    rating_value,
)
from echorag.learning.database import ConversationStore
from echorag.learning.desk import DataDesk
from echorag.learning.events import (
    Event,
    selector_judged,
    selector_rolled_back,
    training_failed,
    training_started,
)
from echorag.learning.gate import EvaluationGate
from echorag.learning.jobs import (
    Conflict,
    MlopsError,
    NotFound,
    RunProgress,
    ServedScorer,
    TrainFn,
    thin_curve,
)
from echorag.learning.notify import Flavor
from echorag.learning.policy import (
    Decision,
    MarkPending,
    PolicyConfig,
    RetryLater,
    StartRun,
    TrainingPolicy,
)
from echorag.learning.registry import AdapterRegistry
from echorag.learning.runs import RunContext, RunResult
from echorag.learning.selector_registry import SelectorRegistry
from echorag.learning.train_config import TrainConfig
from echorag.learning.versions import VersionSwitch
from echorag.serving.routing import Traffic
from echorag.types import MlopsInfo

if TYPE_CHECKING:
    from echorag.config import Settings
    from echorag.types import Turn

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted: the process stopped during the run"


def _thread(fn: Callable[[], None], name: str = "echorag-training") -> None:
    threading.Thread(target=fn, name=name, daemon=True).start()


def _timer(delay_s: float, fn: Callable[[], None]) -> threading.Timer:
    timer = threading.Timer(delay_s, fn)
    timer.daemon = True
    timer.start()
    return timer


class LearningLoop(DataDesk):
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
        self.backups_dir = self.data_dir / "backups"
        self.work_dir = self.data_dir / "training"
        self.exports_dir = self.data_dir / "exports"
        self.store = ConversationStore(settings.sqlite_path)
        self.registry = AdapterRegistry(settings.adapters_root)
        self.selectors = SelectorRegistry(settings.adapters_root)
        self._train_fn = train_fn
        self._scorer = scorer
        self._submit = submit or _thread
        self._schedule = schedule or _timer
        self._announcer = Announcer(
            self.store, observer,
            webhook_url if webhook_url is not None else getattr(settings, "finetune_webhook_url", None),
            webhook_flavor, webhook_attempts, webhook_backoff_s,
        )
        self._versions = VersionSwitch(self.registry, self._announcer, warm_up,
                                       getattr(settings, "canary_fraction", 0.0))

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._closed = False
        self._current: RunContext | None = None
        self._retry_at: float | None = None
        self._timers: list[Any] = []

        self._runtime = RuntimeSettings.resolve(settings, self.store.runtime_settings())
        self.gate = self._gate(self._runtime)
        for run in self.store.interrupt_running_runs(INTERRUPTED):
            self._event(runs.interrupted_event(run))
        self.policy = TrainingPolicy(
            self._policy_config(), watermark=self.store.trained_watermark(), max_seq=self.store.max_seq()
        )
        self._run_progress = RunProgress(reports.last_progress(self.store))
        if self.work_dir.exists():  # leftovers of runs that died with the previous process
            shutil.rmtree(self.work_dir, ignore_errors=True)

        with self._lock:
            actions = self._restore_retries(resume)
        self._run_actions(actions)

    # -- setup helpers ----------------------------------------------------------------------

    @staticmethod
    def _gate(rt: RuntimeSettings) -> EvaluationGate:
        return EvaluationGate(rt.gate_tolerance, rt.gate_agreement_tolerance, rt.gate_min_examples)

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

    # -- small helpers ------------------------------------------------------------------------

    def _event(self, event: Event, **data: Any) -> Event:
        return self._announcer.record(event, **data)

    def _run_actions(self, actions: list[Callable[[], None]]) -> None:
        for action in actions:
            action()

    def _current_run_id(self) -> int | None:
        return self._current.run.id if self._current else None

    def active_version(self) -> str:
        """The version that serves (``"base"`` if the pointer is unreadable, logged)."""
        return self._versions.active()

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
            ctx = RunContext(run, decision.attempt, trigger, backup_existing)
            self._current, self._retry_at = ctx, None
            self._run_progress.start(
                run_id=run.id, attempt=decision.attempt, trigger=trigger, from_seq=run.from_seq,
                to_seq=run.to_seq, started_at=run.started_at, message="preparing data",
            )
            self._event(training_started(run.id, run.from_seq, run.to_seq, decision.attempt), trigger=trigger)
            return [lambda: self._launch(ctx)]
        if isinstance(decision, MarkPending):
            self._event(runs.queued_event(self._current_run_id(), trigger, decision.reason))
            return []
        if isinstance(decision, RetryLater):
            self._retry_at = time.time() + decision.delay
            return [lambda: self._schedule_retry(decision.delay)]
        return []

    def _launch(self, ctx: RunContext) -> None:
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

    def _execute(self, ctx: RunContext) -> None:
        try:
            if ctx.backup_existing and (path := self.registry.backup_active(self.backups_dir)) is not None:
                self._event(runs.backed_up_event(ctx.run, self.registry.active, path))
            with self._lock:
                config = TrainConfig.from_settings(self.settings, **self._runtime.train_config())
            job = runs.prepare_job(self.store, self.registry, ctx, config, self.active_version, self.work_dir)
            # The selector before the student: its new turns have joined the pool now, it
            # takes CPU seconds, and a failure of the student's training does not undo it.
            self._set_progress(ctx.run.id, message="fitting the answer selector")
            selector = self._learn_selector()
            if job is None:
                result = RunResult.empty()
            else:
                self._set_progress(ctx.run.id, message="training", samples=len(job.train))
                outcome = self._train_fn(job, lambda info: self._on_progress(ctx.run.id, info))
                self._set_progress(ctx.run.id, message="registering the adapter" if self._scorer is None else
                                   f"judging on {len(job.holdout)} evaluation-pool turns, as served")
                with self._lock:  # the gate in force now: settings may have changed during the run
                    gate = self.gate
                versions = self._versions
                result = runs.register_candidate(self.registry, job, outcome, gate, ctx.run.started_at,
                                                 versions.active, versions.warm_up, self._scorer)
            if selector is not None:
                result.metrics["selector"] = selector
        except Exception as exc:
            log.exception("training run %d (attempt %d) failed", ctx.run.id, ctx.attempt)
            self._fail(ctx, exc)
            return
        self._succeed(ctx, result)

    def _learn_selector(self) -> dict[str, Any] | None:
        """Fit, judge and register an answer selector version from every labelled turn
        (echorag.learning.selector_learning); its outcome, for the run's metrics (None: no
        label is new since the last version)."""
        with self._lock:
            min_examples = self._runtime.gate_min_examples
        parent = self.selectors.active()
        outcome = selector_learning.learn(selector_learning.labelled_turns(self.store), self.selectors, min_examples)
        if outcome is None:
            return None
        self._event(selector_judged(outcome.version, outcome.promoted, outcome.reason, parent,
                                    outcome.metrics["trained_on"]))
        return {"version": outcome.version, "promoted": outcome.promoted, "reason": outcome.reason, **outcome.metrics}

    def _succeed(self, ctx: RunContext, result: RunResult) -> None:
        run = ctx.run
        event = [self._event(e) for e in runs.success_events(run, result)][-1]
        if result.version is not None:
            self._announcer.send(event)
        metrics = result.metrics | {"losses": thin_curve(result.losses)}
        try:
            self.store.finish_run(run.id, "succeeded", version=result.version, metrics=metrics)
        except Exception as exc:  # the run trained, but the watermark could not move: a failure
            log.exception("could not record run %d as succeeded", run.id)
            self._fail(ctx, exc)
            return
        shutil.rmtree(self.work_dir / f"run-{run.id}", ignore_errors=True)
        if result.promoted:
            self._versions.graduate(result.metrics.get("candidate_agreement"),
                                    getattr(self.settings, "canary_graduate_at", None))
        with self._lock:
            self._run_progress.end(
                run.id, result.losses, version=result.version,
                status="succeeded" if result.promoted or result.version is None else "rejected",
                message=result.reason if result.version else event.message,
            )
            trigger = "pending" if self.policy.pending else "auto"
            actions = self._decide(self.policy.run_succeeded(), trigger=trigger)
            if self._current is ctx:
                self._current = None
            self._changed.notify_all()
        self._run_actions(actions)

    def _fail(self, ctx: RunContext, exc: BaseException) -> None:
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
                training_failed(error, ctx.attempt, self.policy.config.max_attempts, retry_in),
                run_id=run.id, from_seq=run.from_seq, to_seq=run.to_seq,
            )
            self._run_progress.end(run.id, status="failed", error=error[-2000:], message=event.message)
            actions = self._decide(decision, trigger="retry")
            if self._current is ctx:
                self._current = None
            self._announcer.send(event)  # before waking wait_idle, which then waits for the delivery
            self._changed.notify_all()
        self._run_actions(actions)

    # -- progress -----------------------------------------------------------------------------

    def _set_progress(self, run_id: int, **values: Any) -> None:
        with self._lock:
            self._run_progress.update(run_id, **values)

    def _on_progress(self, run_id: int, info: dict[str, Any]) -> None:
        with self._lock:
            self._run_progress.report_step(run_id, info)

    def training_progress(self) -> TrainingProgress:
        with self._lock:
            return self._run_progress.view(pending=self.policy.pending, retry_at=self._retry_at)

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
        self._announcer.observe(
            "turn_recorded", {"stored": result.stored, "reason": result.reason, "pii": list(result.pii)}
        )
        actions: list[Callable[[], None]] = []
        with self._lock:
            if result.stored and result.seq is not None:
                actions = self._decide(self.policy.data_arrived(result.seq), trigger="auto")
            info = self._info(result.stored)
        self._run_actions(actions)
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
            if self._closed:
                raise MlopsError("the learning loop is closed")
            decision = self.policy.manual_trigger(force)
            if isinstance(decision, MarkPending):
                self._decide(decision, trigger="manual")
                raise Conflict(
                    "a training run is in progress; one more run on the new data will follow it",
                    {"run_id": self._current_run_id(), "pending": True},
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
            self.gate = self._gate(merged)
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
        return self._versions.rollback(version)

    def rollback_selector(self, version: str | None = None) -> str:
        """Serve answer selector ``version`` (``"sN"`` or ``"base"``; default: the previous one)."""
        before = self.selectors.active()
        try:
            after = self.selectors.rollback(version)
        except KeyError as exc:
            raise NotFound(str(exc.args[0]), {"version": version}) from None
        self._event(selector_rolled_back(before, after))
        return after

    def promote_selector(self, version: str) -> str:
        """Serve answer selector ``version`` (one the gate held back too)."""
        try:
            return self.selectors.promote(version)
        except KeyError as exc:
            raise NotFound(str(exc.args[0]), {"version": version}) from None

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
                self._retry_at = None
            self._event(archive.cleared_event(deleted, path))
            self._changed.notify_all()
        return ClearConversationsResponse(deleted=deleted, backup_path=str(path) if path else None)

    def restore(self, backup: str) -> RestoreResponse:
        """Bring back the conversations of a backup (a name from ``backups()``); turns a
        run trained on stay trained, the others become pending (``archive.seqs_to_renumber``).
        Restoring twice adds nothing. Refused (409) while a run is in progress: that run
        may have loaded the deleted turns already, and must not be told about them twice."""
        path = archive.backup_path(self.backups_dir, backup)
        rows = archive.read_backup(path)
        with self._lock:
            if self._closed:
                raise MlopsError("the learning loop is closed")
            policy = self.policy
            if policy.is_running:
                raise Conflict(
                    "a training run is in progress; restore once it has finished",
                    {"run_id": self._current_run_id()},
                )
            # LIMIT -1: every run, to tell trained turns from untrained ones.
            restored = archive.restore_backup(self.store, path, rows, policy.watermark, self.store.runs(limit=-1))
            actions = self._decide(policy.data_arrived(self.store.max_seq()), trigger="restore")
            info = self._info(True)
            self._event(restored.event())
            self._changed.notify_all()
        self._run_actions(actions)
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
                self.policy, self._run_progress.state, self._current_run_id(), self._retry_at, runs[0] if runs else None
            )
            settings = self._runtime.model_copy()
        traffic = self.traffic()
        return reports.status(self.store, self.registry, collector, training, settings, traffic.version,
                              traffic.student_share)

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
            threads = self._announcer.deliveries()
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
