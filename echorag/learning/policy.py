"""When to fine-tune: a pure state machine over the data watermark (no I/O, no clock).

Every stored turn has a ``seq``; everything with ``seq <= watermark`` has been trained
on and a run trains on ``(from_seq, to_seq]``. The collector feeds the policy events
(``data_arrived``, ``run_succeeded``, ...) and carries out the decision each returns.

Invariants: runs are contiguous slices starting at the watermark, the watermark moves
only when a run succeeds, and at most one run is in flight, so nothing is trained
twice and nothing is skipped. A returned ``StartRun`` already counts as started.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from echorag.config import default_of


@dataclass(frozen=True)
class PolicyConfig:
    """The loop builds it from the runtime settings (``RuntimeSettings.policy_config``)."""

    batch_size: int = default_of("finetune_batch_size")
    auto_trigger: bool = default_of("finetune_auto_trigger")
    enabled: bool = default_of("finetune_enabled")
    max_attempts: int = default_of("finetune_max_attempts")  # per slice of data, the first try included
    retry_backoff_s: float = default_of("finetune_retry_backoff_s")
    retry_backoff_factor: float = 2.0
    retry_backoff_max_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_attempts < 1:
            raise ValueError("batch_size and max_attempts must be at least 1")

    def backoff(self, failures: int) -> float:
        """Delay before the retry that follows the ``failures``-th consecutive failure."""
        delay = self.retry_backoff_s * self.retry_backoff_factor ** (failures - 1)
        return min(delay, self.retry_backoff_max_s)


# -- decisions --------------------------------------------------------------------------


@dataclass(frozen=True)
class StartRun:
    """Train on ``(from_seq, to_seq]``."""

    from_seq: int
    to_seq: int
    attempt: int = 1


@dataclass(frozen=True)
class MarkPending:
    """A run is in progress; one more run will follow it. (Manual trigger: answer 409.)"""

    reason: str = "a run is in progress"


@dataclass(frozen=True)
class RetryLater:
    """The run failed; call ``retry_due()`` after ``delay`` seconds."""

    delay: float
    attempt: int


@dataclass(frozen=True)
class Nothing:
    reason: str = ""


Decision = StartRun | MarkPending | RetryLater | Nothing


# -- the state machine ------------------------------------------------------------------


class TrainingPolicy:
    def __init__(self, config: PolicyConfig | None = None, watermark: int = 0, max_seq: int = 0) -> None:
        """Restore from disk with ``watermark=store.trained_watermark(), max_seq=store.max_seq()``."""
        self.config = config or PolicyConfig()
        self.watermark = watermark
        self.max_seq = max(max_seq, watermark)
        self.running: tuple[int, int] | None = None
        self.pending = False
        self.failures = 0  # consecutive failures of the current slice
        self.retry_scheduled = False
        self.stalled_at: int | None = None  # max_seq when automatic retries gave up

    # -- what the UI and MlopsInfo show ---------------------------------------------------

    @property
    def new_data(self) -> int:
        return max(0, self.max_seq - self.watermark)

    @property
    def should_train(self) -> bool:
        return self.config.enabled and self.new_data >= self.config.batch_size

    @property
    def is_running(self) -> bool:
        return self.running is not None

    def snapshot(self) -> dict[str, Any]:
        return {
            "watermark": self.watermark,
            "max_seq": self.max_seq,
            "new_data": self.new_data,
            "should_train": self.should_train,
            "running": list(self.running) if self.running else None,
            "pending": self.pending,
            "failures": self.failures,
            "retry_scheduled": self.retry_scheduled,
            "stalled": self.stalled_at is not None,
            "batch_size": self.config.batch_size,
            "auto_trigger": self.config.auto_trigger,
            "enabled": self.config.enabled,
        }

    # -- events ---------------------------------------------------------------------------

    def data_arrived(self, max_seq: int) -> Decision:
        self.max_seq = max(self.max_seq, max_seq)
        return self._auto()

    def settings_changed(self, config: PolicyConfig | None = None, **changes: Any) -> Decision:
        """New settings apply at once: lowering the batch size may start a run."""
        self.config = replace(config or self.config, **changes)
        return self._auto()

    def manual_trigger(self, force: bool = False) -> Decision:
        """``force`` trains on any new data, below the batch size too. While a run is in
        progress the answer is ``MarkPending`` (the caller replies 409): a run follows it."""
        if not self.config.enabled:
            return Nothing("fine-tuning is disabled")
        if self.running:
            self.pending = True
            return MarkPending()
        if self.new_data == 0:
            return Nothing("no new data")
        if not force and self.new_data < self.config.batch_size:
            return Nothing(f"{self.new_data}/{self.config.batch_size} new turns; use force to train anyway")
        self.failures, self.stalled_at = 0, None  # a human asked: start counting attempts afresh
        return self._start()

    def run_started(self, from_seq: int, to_seq: int) -> Decision:
        """Record a run this policy did not decide (e.g. found on restart). ``StartRun``
        decisions are already recorded, so confirming them is a no-op."""
        if self.running and self.running != (from_seq, to_seq):
            raise ValueError(f"run {self.running} is already in progress")
        if from_seq != self.watermark:
            raise ValueError(f"a run must start at the watermark {self.watermark}, not {from_seq}")
        self.running, self.pending, self.retry_scheduled = (from_seq, to_seq), False, False
        self.max_seq = max(self.max_seq, to_seq)
        return Nothing("run recorded")

    def run_succeeded(self) -> Decision:
        if not self.running:
            return Nothing("no run in progress")
        self.watermark = self.running[1]
        self.running, self.failures, self.stalled_at = None, 0, None
        if self.pending and self.config.enabled and self.new_data > 0:
            return self._start()  # one run on everything that accumulated
        self.pending = False
        return self._auto()

    def run_failed(self, error: str = "") -> Decision:
        """The slice stays pending (watermark unchanged) and is retried with backoff."""
        if not self.running:
            return Nothing("no run in progress")
        self.running = None
        self.failures += 1
        if self.failures < self.config.max_attempts:
            self.retry_scheduled = True
            return RetryLater(self.config.backoff(self.failures), attempt=self.failures + 1)
        self.pending, self.stalled_at = False, self.max_seq
        return Nothing(f"gave up after {self.failures} attempts; data stays pending")

    def retry_due(self) -> Decision:
        """The ``RetryLater`` delay has passed: retry on everything since the watermark."""
        if not self.retry_scheduled or self.running:
            return Nothing("no retry scheduled")
        self.retry_scheduled = False
        if not self.config.enabled or self.new_data == 0:
            return Nothing("nothing to retry")
        return self._start()

    # -- internals ------------------------------------------------------------------------

    def _auto(self) -> Decision:
        cfg = self.config
        if not cfg.enabled:
            return Nothing("fine-tuning is disabled")
        if self.running:
            arrived_since = self.max_seq - self.running[1]
            if not self.pending and cfg.auto_trigger and arrived_since >= cfg.batch_size:
                self.pending = True
                return MarkPending("a batch arrived during the run")
            return Nothing("a run is in progress")
        if self.retry_scheduled:
            return Nothing("a retry is scheduled")
        if not cfg.auto_trigger:
            return Nothing("auto trigger is off")
        if self.stalled_at is not None:
            if self.max_seq - self.stalled_at < cfg.batch_size:
                return Nothing("retries gave up; waiting for a new batch or a manual trigger")
            self.failures, self.stalled_at = 0, None  # a fresh batch earns fresh attempts
        if self.new_data < cfg.batch_size:
            return Nothing(f"{self.new_data}/{cfg.batch_size} new turns")
        return self._start()

    def _start(self) -> StartRun:
        self.running = (self.watermark, self.max_seq)
        self.pending = self.retry_scheduled = False
        return StartRun(self.watermark, self.max_seq, attempt=self.failures + 1)
