"""The learning loop on Ray: one named, detached actor owns the conversation store
and coordinates training runs (``echorag.learning.LearningLoop``).

- ``Collector`` is created by the ingress with ``get_if_exists``; it survives Serve
  redeploys, and Ray restarts it (state rebuilt from SQLite) and retries calls in
  flight, which ``record`` tolerates because storing a turn id twice is a no-op.
- A run is a Ray Train ``TorchTrainer`` job (``deployments/training.py``) started from a
  thread of this actor, never on an event loop; its workers and logs show in the Ray
  dashboard, and every step reaches this actor (``update``) for ``/mlops/training-progress``.
- Held-out losses for the gate are computed in a Ray task with the workers' resources;
  its answers come from the deployment that serves the student, with the candidate
  (registered first) loaded by its version.
- When a version becomes active, the generator is warmed with it before traffic arrives.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import ray

from deployments import metrics
from echorag.config import Settings
from echorag.learning.loop import LearningLoop
from echorag.learning.privacy import IdentityService
from echorag.learning.progress import StepInfo
from echorag.models.resolution import has_teacher, resolve_student
from echorag.types import ProcessInfo

logger = logging.getLogger(__name__)

NAMESPACE = "echorag"
COLLECTOR_NAME = "echorag-collector"


class _ProgressSink:
    """Routes the train workers' step reports (sent to this actor) to the running job."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self._listeners: dict[str, Callable[[StepInfo], None]] = {}
        self._lock = threading.Lock()

    def listen(self, run_id: str, callback: Callable[[StepInfo], None] | None) -> None:
        with self._lock:
            if callback is None:
                self._listeners.pop(run_id, None)
            else:
                self._listeners[run_id] = callback

    def deliver(self, run_id: str, step: StepInfo) -> None:
        with self._lock:
            callback = self._listeners.get(run_id)
        if callback is not None:
            callback(step)


# Learning-loop events that end a run, as the outcome tag of echorag_training_runs.
RUN_OUTCOMES = {
    "training_started": "started", "training_succeeded": "succeeded",
    "training_rejected": "rejected", "training_failed": "failed",
}


class ServedStudent:
    """The deployment that serves the student (``Generator``, or ``Student`` where a teacher
    answers), pinned to a version: the gate's loss and answers (``ServedScorer``) and the
    warm-up before a promotion are requests to it, so they show in the dashboard."""

    def __init__(self, app_name: str, deployment: str) -> None:
        self.app_name, self.deployment = app_name, deployment

    def _pinned(self, version: str):
        from ray import serve

        handle = serve.get_deployment_handle(self.deployment, app_name=self.app_name)
        return handle.options(multiplexed_model_id=version)

    def answers(self, version: str, prompts: list[list[dict]], max_new_tokens: int) -> list[str]:
        response = self._pinned(version).answer_pool.remote(prompts, max_new_tokens)
        return [row.text for row in response.result(timeout_s=1800)]

    def loss(self, version: str, pool: list[list[dict]], max_length: int) -> float:
        return self._pinned(version).pool_loss.remote(pool, max_length).result(timeout_s=1800)

    def warm_up(self, version: str) -> None:
        """Load the new adapter on a replica before requests ask for it."""
        try:
            self._pinned(version).warmup.remote().result(timeout_s=300)
        except Exception as exc:  # serving goes on; the first request loads it instead
            logger.warning("could not warm the %s deployment with %s: %s", self.deployment, version, exc)


def observe_loop(kind: str, data: dict[str, Any]) -> None:
    """The loop's observer: recorded turns and events become Ray metrics."""
    if kind == "turn_recorded":
        metrics.record_turn(data["stored"], data["reason"])
        if data["stored"] and data["pii"]:
            metrics.record_turn(False, "pii_scrubbed")  # stored, with PII removed
    elif kind in RUN_OUTCOMES:
        metrics.record_training_run(RUN_OUTCOMES[kind])
    elif kind == "adapter_promoted":
        metrics.set_active_version(data["version"])
    elif kind == "adapter_rolled_back":
        metrics.set_active_version(data["to"])


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=32)
class Collector(LearningLoop):
    """The learning loop as an actor: every public ``LearningLoop`` method is a typed
    remote method (``await collector.status.remote()`` returns a ``StatusResponse``)."""

    def __init__(self, settings: Settings, app_name: str = "echorag") -> None:
        from deployments.training import ray_train_fn  # torch and Ray Train: this actor only

        self.app_name = app_name
        self.started_at = time.time()
        base = resolve_student(settings)
        self._served = ServedStudent(app_name, "Student" if has_teacher(settings) else "Generator")
        self._progress_sink = _ProgressSink(ray.get_runtime_context().current_actor)
        metrics.set_enabled(settings.monitoring_export_metrics)
        super().__init__(
            settings,
            ray_train_fn(settings, base.path, self._progress_sink),
            warm_up=self._served.warm_up,
            scorer=self._served,
            observer=observe_loop,
            webhook_flavor=None if settings.finetune_webhook_format == "auto" else settings.finetune_webhook_format,
        )
        metrics.set_active_version(self.active_version())

    def info(self) -> ProcessInfo:
        """Which process holds the collector, and since when (changes when Ray restarts it)."""
        return ProcessInfo(pid=os.getpid(), started_at=self.started_at)

    def step(self, run_id: str, step: StepInfo) -> None:
        """A training worker's step (the progress protocol of ``deployments.training``)."""
        self._progress_sink.deliver(run_id, step)


def collector_name(app_name: str = "echorag") -> str:
    """One collector per application: two EchoRAG apps in a cluster keep their data apart."""
    return COLLECTOR_NAME if app_name == "echorag" else f"{COLLECTOR_NAME}-{app_name}"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=8)
class Identities(IdentityService):
    """Users, keys, sessions and erasure as an actor of their own: a key is checked, or a
    user erased, without waiting behind the learning loop. Beside the collector, on the
    node that holds their database."""


# On the head node, like Ray Train's state actor: the SQLite file stays where the cluster
# does, never on a GPU worker that the autoscaler may remove.
_ON_THE_HEAD = {"node:__internal_head__": 0.001}


def _detached_on_the_head(actor_class, name: str, *args):
    """The named actor (created on first use): it outlives Serve redeploys."""
    return actor_class.options(
        name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, resources=_ON_THE_HEAD,
    ).remote(*args)


def get_collector(settings: Settings, app_name: str = "echorag"):
    """The application's collector (created on first use)."""
    return _detached_on_the_head(Collector, collector_name(app_name), settings, app_name)


def identities_name(app_name: str = "echorag") -> str:
    return collector_name(app_name) + "-identities"


def get_identities(settings: Settings, app_name: str = "echorag"):
    """The application's identity service (created on first use)."""
    return _detached_on_the_head(Identities, identities_name(app_name), settings)


def stop_app_actors(app_name: str = "echorag") -> None:
    """Stop the application's detached actors (after ``serve.delete``): its data stays on disk."""
    for name in (collector_name(app_name), identities_name(app_name)):
        try:
            ray.kill(ray.get_actor(name, namespace=NAMESPACE))
        except ValueError:  # never started
            pass
