"""Carrying out the training policy's decisions (``echorag.learning.policy``): a run
starts on a worker, a failed one is retried with backoff, and its progress is kept.

One lock guards the policy and the progress; callers book a decision with the lock held
(``decide``) and carry out what it returns once they have released it (``act``), so no
lock is held while a model trains, an adapter is copied or a webhook is sent. What a run
does is the owner's ``run(ctx) -> RunResult`` (``LearningLoop``); here: what happens
around it, success or failure, and the next decision.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import echorag.learning.reports as reports
import echorag.learning.runs as runs
from echorag.learning.announce import Announcer
from echorag.learning.api import TrainingProgress
from echorag.learning.database import ConversationStore
from echorag.learning.events import training_failed, training_started
from echorag.learning.policy import Decision, MarkPending, PolicyConfig, RetryLater, StartRun, TrainingPolicy
from echorag.learning.progress import RunProgress, StepInfo, thin_curve
from echorag.learning.runs import RunContext, RunResult

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted: the process stopped during the run"
Action = Callable[[], None]


def _thread(fn: Action, name: str = "echorag-training") -> None:
    threading.Thread(target=fn, name=name, daemon=True).start()


def _timer(delay_s: float, fn: Action) -> threading.Timer:
    timer = threading.Timer(delay_s, fn)
    timer.daemon = True
    timer.start()
    return timer


class RunScheduler:
    def __init__(
        self,
        store: ConversationStore,
        announcer: Announcer,
        config: PolicyConfig,
        work_dir: Path,
        run: Callable[[RunContext], RunResult],
        on_promoted: Callable[[RunResult], None],
        submit: Callable[[Action], Any] | None = None,
        schedule: Callable[[float, Action], Any] | None = None,
    ) -> None:
        """``run(ctx)`` executes one run (raising on failure); ``on_promoted(result)`` after
        a promoted run is recorded; ``submit(fn)`` decides where a run executes (default: a
        daemon thread), ``schedule(delay_s, fn)`` when a retry starts (default: a timer)."""
        self.store, self._announcer, self.work_dir = store, announcer, work_dir
        self._run, self._on_promoted = run, on_promoted
        self._submit = submit or _thread
        self._schedule = schedule or _timer
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.closed = False
        self.current: RunContext | None = None
        self.retry_at: float | None = None
        self._timers: list[Any] = []
        for run_ in store.interrupt_running_runs(INTERRUPTED):
            announcer.record(runs.interrupted_event(run_))
        self.policy = TrainingPolicy(config, watermark=store.trained_watermark(), max_seq=store.max_seq())
        self.progress = RunProgress(reports.last_progress(store))

    def current_run_id(self) -> int | None:
        return self.current.run.id if self.current else None

    def resume(self, resume: bool) -> list[Action]:
        """After a restart (lock held): failed attempts on the pending slice (interrupted
        ones included) still count, so a run that kills the process cannot loop forever."""
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
            return self.decide(RetryLater(policy.config.backoff(failures), attempt=failures + 1), trigger="resume")
        return self.decide(policy.data_arrived(policy.max_seq), trigger="resume")

    # -- deciding (lock held) and acting (lock released) --------------------------------------

    def decide(self, decision: Decision, trigger: str = "auto", backup_existing: bool = False) -> list[Action]:
        """Book a decision (with the lock held); returns what to do once it is released."""
        if isinstance(decision, StartRun):
            run = self.store.start_run(decision.from_seq, decision.to_seq, attempts=decision.attempt)
            ctx = RunContext(run, decision.attempt, trigger, backup_existing)
            self.current, self.retry_at = ctx, None
            self.progress.start(
                run_id=run.id, attempt=decision.attempt, trigger=trigger, from_seq=run.from_seq,
                to_seq=run.to_seq, started_at=run.started_at, message="preparing data",
            )
            self._announcer.record(training_started(run.id, run.from_seq, run.to_seq, decision.attempt),
                                   trigger=trigger)
            return [lambda: self._launch(ctx)]
        if isinstance(decision, MarkPending):
            self._announcer.record(runs.queued_event(self.current_run_id(), trigger, decision.reason))
            return []
        if isinstance(decision, RetryLater):
            self.retry_at = time.time() + decision.delay
            return [lambda: self._schedule_retry(decision.delay)]
        return []

    @staticmethod
    def act(actions: list[Action]) -> None:
        for action in actions:
            action()

    def _launch(self, ctx: RunContext) -> None:
        if self.closed:  # a follow-up decided while closing: leave its data pending
            self._fail(ctx, RuntimeError("interrupted: the learning loop was closed"))
            return
        try:
            self._submit(lambda: self._execute(ctx))
        except Exception as exc:  # e.g. no thread could be started
            log.exception("could not start run %d", ctx.run.id)
            self._fail(ctx, exc)

    def _schedule_retry(self, delay: float) -> None:
        if self.closed:
            return
        handle = self._schedule(delay, self._retry_due)
        if hasattr(handle, "cancel"):
            with self.lock:
                self._timers = [t for t in self._timers if getattr(t, "is_alive", lambda: True)()] + [handle]

    def _retry_due(self) -> None:
        if self.closed:
            return
        with self.lock:
            actions = self.decide(self.policy.retry_due(), trigger="retry")
            if not actions:
                self.retry_at = None
            self.changed.notify_all()
        self.act(actions)

    # -- a run's end --------------------------------------------------------------------------

    def _execute(self, ctx: RunContext) -> None:
        try:
            result = self._run(ctx)
        except Exception as exc:
            log.exception("training run %d (attempt %d) failed", ctx.run.id, ctx.attempt)
            self._fail(ctx, exc)
            return
        self._succeed(ctx, result)

    def _succeed(self, ctx: RunContext, result: RunResult) -> None:
        run = ctx.run
        event = [self._announcer.record(e) for e in runs.success_events(run, result)][-1]
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
            self._on_promoted(result)
        with self.lock:
            self.progress.end(
                run.id, result.losses, version=result.version,
                status="succeeded" if result.promoted or result.version is None else "rejected",
                message=result.reason if result.version else event.message,
            )
            trigger = "pending" if self.policy.pending else "auto"
            actions = self.decide(self.policy.run_succeeded(), trigger=trigger)
            if self.current is ctx:
                self.current = None
            self.changed.notify_all()
        self.act(actions)

    def _fail(self, ctx: RunContext, exc: BaseException) -> None:
        run = ctx.run
        error = f"{type(exc).__name__}: {exc}"
        try:
            self.store.finish_run(run.id, "failed", error=error[-4000:])
        except Exception:
            log.exception("could not record run %d as failed", run.id)
        shutil.rmtree(self.work_dir / f"run-{run.id}", ignore_errors=True)
        with self.lock:
            decision = self.policy.run_failed(error)
            retry_in = decision.delay if isinstance(decision, RetryLater) else None
            event = self._announcer.record(
                training_failed(error, ctx.attempt, self.policy.config.max_attempts, retry_in),
                run_id=run.id, from_seq=run.from_seq, to_seq=run.to_seq,
            )
            self.progress.end(run.id, status="failed", error=error[-2000:], message=event.message)
            actions = self.decide(decision, trigger="retry")
            if self.current is ctx:
                self.current = None
            self._announcer.send(event)  # before waking wait_idle, which then waits for the delivery
            self.changed.notify_all()
        self.act(actions)

    # -- progress -----------------------------------------------------------------------------

    def set_progress(self, run_id: int, **values: Any) -> None:
        with self.lock:
            self.progress.update(run_id, **values)

    def on_step(self, run_id: int, step: StepInfo) -> None:
        with self.lock:
            self.progress.report_step(run_id, step)

    def training_progress(self) -> TrainingProgress:
        with self.lock:
            return self.progress.view(pending=self.policy.pending, retry_at=self.retry_at)

    # -- lifecycle ------------------------------------------------------------------------------

    def wait_idle(self, timeout: float | None = None, retries: bool = True) -> bool:
        """Block until no run is in progress (nor, with ``retries``, scheduled) and the
        webhooks sent so far are delivered or given up. False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.changed:
            idle = self.changed.wait_for(
                lambda: not self.policy.is_running and not (retries and self.policy.retry_scheduled),
                timeout,
            )
            threads = self._announcer.deliveries()
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return idle and not any(t.is_alive() for t in threads)

    def close(self, timeout: float) -> None:
        """Cancel scheduled retries and wait (up to ``timeout``) for a run in progress."""
        with self.lock:
            self.closed = True
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()
        if not self.wait_idle(timeout, retries=False):
            log.warning("closing the learning loop while a run is still in progress")
