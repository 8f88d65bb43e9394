"""What a training run reports while it runs: one ``StepInfo`` per optimizer step, sent by
the trainer (in-process, or from a Ray Train worker to the collector actor), and the
``RunProgress`` the loop keeps of it for ``/mlops/training-progress``. Plain data: no torch.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from echorag.learning.api import TrainingProgress

MAX_LOSS_POINTS = 2000  # the loss curve kept for the UI (longer runs are thinned)


@dataclass(frozen=True)
class StepInfo:
    """Progress after one optimizer step (``step`` counts from 1 to ``total_steps``)."""

    step: int
    total_steps: int
    epoch: int  # from 0
    loss: float  # mean loss of this step's micro-batches
    elapsed_s: float
    eta_s: float
    learning_rate: float = 0.0

    @property
    def progress(self) -> float:
        return self.step / self.total_steps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"progress": self.progress}


def finite(value: Any) -> float | None:
    """``value`` as a float, or None when it is not a finite number (trainers report NaN)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def thin_curve(values: list[float], limit: int = MAX_LOSS_POINTS) -> list[float]:
    """At most about ``limit`` evenly spaced points of a loss curve."""
    if len(values) <= limit:
        return list(values)
    stride = math.ceil(len(values) / limit)
    return values[::stride]


class RunProgress:
    """The ``TrainingProgress`` of the run in progress, or of the last one, as a dict.
    Not thread-safe: its owner holds a lock around every call."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def start(self, **values: Any) -> None:
        self.state = TrainingProgress(status="training", **values).model_dump()

    def is_training(self, run_id: int) -> bool:
        return self.state.get("run_id") == run_id and self.state["status"] == "training"

    def update(self, run_id: int, **values: Any) -> None:
        """Change what the run shows while it trains (a late call changes nothing)."""
        if self.is_training(run_id):
            self.state.update(values)

    def report_step(self, run_id: int, step: StepInfo) -> None:
        """A trainer's step (a late report of a run that already ended changes nothing)."""
        if not self.is_training(run_id):
            return
        progress = self.state
        progress.update(step=step.step, total_steps=step.total_steps, epoch=step.epoch, progress=step.progress)
        for key in ("eta_s", "elapsed_s"):
            if (value := finite(getattr(step, key))) is not None:
                progress[key] = value
        if (loss := finite(step.loss)) is not None:  # trainers report NaN
            progress["loss"] = loss
            progress["losses"].append(loss)
            if len(progress["losses"]) > 2 * MAX_LOSS_POINTS:
                progress["losses"] = thin_curve(progress["losses"])

    def end(self, run_id: int, losses: list[float] | None = None, **values: Any) -> None:
        """The run ended (``status``, ``message``, ...); ``losses``: its whole loss curve,
        when the trainer returned one. An older run's end changes nothing."""
        if self.state.get("run_id") != run_id:
            return
        self.state.update(values, ended_at=time.time())
        if losses:
            self.state["losses"] = thin_curve(losses)

    def view(self, **extra: Any) -> TrainingProgress:
        return TrainingProgress(**(self.state | extra))
