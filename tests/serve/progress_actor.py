"""A progress actor that keeps every step of a ``fit_lora`` run, for the Ray Train test
and the fine-tuning benchmark. In the service the collector actor takes these steps
instead (``step``: the protocol of ``deployments.training.fit_lora``)."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import ray

from echorag.learning.progress import StepInfo


@ray.remote(num_cpus=0)
class TrainingProgress:
    """Where training steps go while a run is going. Plain state, no resources (``num_cpus=0``)."""

    def __init__(self, max_steps: int = 100_000) -> None:
        self._runs: dict[str, dict[str, Any]] = {}
        self._steps: dict[str, deque[StepInfo]] = {}
        self._max_steps = max_steps
        self._latest: str | None = None

    def step(self, run_id: str, step: StepInfo) -> None:
        if run_id not in self._runs:  # the run's first report
            self._runs[run_id] = {"run_id": run_id, "started_at": time.time()}
            self._steps[run_id] = deque(maxlen=self._max_steps)
            self._latest = run_id
        self._steps[run_id].append(step)
        self._runs[run_id] |= step.to_dict() | {"updated_at": time.time()}

    def get(self, run_id: str | None = None) -> dict[str, Any] | None:
        """The latest state of ``run_id`` (default: the most recent run), or None."""
        run = self._runs.get(run_id or self._latest or "")
        return dict(run) if run else None

    def steps(self, run_id: str | None = None) -> list[StepInfo]:
        return list(self._steps.get(run_id or self._latest or "", ()))
