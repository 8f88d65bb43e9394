"""A progress actor that keeps every report of a ``fit_lora`` run, for the Ray Train
test and the fine-tuning benchmark. In the service the collector actor takes these
reports instead (``update``: the protocol of ``deployments.training.fit_lora``)."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import ray


@ray.remote(num_cpus=0)
class TrainingProgress:
    """Where training steps go while a run is going. Plain state, no resources (``num_cpus=0``)."""

    def __init__(self, max_steps: int = 100_000) -> None:
        self._runs: dict[str, dict[str, Any]] = {}
        self._steps: dict[str, deque[dict[str, Any]]] = {}
        self._epochs: dict[str, list[dict[str, Any]]] = {}
        self._max_steps = max_steps
        self._latest: str | None = None

    def update(self, info: dict[str, Any]) -> None:
        """A step (``kind="step"``, the default) or an epoch summary (``kind="epoch"``)."""
        run_id = info["run_id"]
        if run_id not in self._runs:  # the run's first report
            self._runs[run_id] = {"run_id": run_id, "started_at": time.time()}
            self._steps[run_id] = deque(maxlen=self._max_steps)
            self._epochs[run_id] = []
            self._latest = run_id
        if info.get("kind", "step") == "epoch":
            self._epochs[run_id].append(info)
        else:
            self._steps[run_id].append(info)
            self._runs[run_id] |= {k: v for k, v in info.items() if k != "kind"} | {"updated_at": time.time()}

    def get(self, run_id: str | None = None) -> dict[str, Any] | None:
        """The latest state of ``run_id`` (default: the most recent run), or None."""
        run = self._runs.get(run_id or self._latest or "")
        return dict(run) if run else None

    def steps(self, run_id: str | None = None) -> list[dict[str, Any]]:
        return list(self._steps.get(run_id or self._latest or "", ()))

    def epochs(self, run_id: str | None = None) -> list[dict[str, Any]]:
        return list(self._epochs.get(run_id or self._latest or "", ()))
