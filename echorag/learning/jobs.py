"""The contract between the learning loop and whoever trains, and the loop's errors.

- ``TrainingJob``: everything one attempt of a run needs, as plain data (a Ray task
  pickles it); ``config`` is the run's whole ``TrainConfig``, built once by the loop.
- ``TrainFn``: ``train_fn(job, on_step) -> TrainingOutcome`` blocks for the whole
  run; ``on_step`` takes each optimizer step (``echorag.learning.progress.StepInfo``).
- ``local_train_fn``: a ``TrainFn`` that trains in this process.
- ``MlopsError`` and its subclasses carry the HTTP status the API layer answers with.

Nothing here imports torch: ``echorag.learning.training`` is imported when a local run starts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from echorag.learning.progress import StepInfo
from echorag.learning.train_config import TrainConfig

Chat = list[dict[str, str]]


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
    holdout: list[Chat]  # the evaluation pool's newest turns: what the gate judges on (never trained)
    init_adapter: Path | None  # the active version's directory; None: a fresh LoRA on the base
    init_version: str  # "base" or "vN": the parent of the candidate
    output_dir: Path  # write the adapter here (peft save_pretrained) unless you return another dir
    config: TrainConfig = field(default_factory=TrainConfig)  # Settings + runtime settings
    new_turns: int = 0
    replay_turns: int = 0
    corrected_turns: int = 0

    @property
    def name(self) -> str:
        """A unique name for the run (Ray Train run names, progress actors)."""
        return f"echorag-run-{self.run_id}"


@dataclass
class TrainingOutcome:
    adapter_dir: Path
    candidate_loss: float | None  # pool loss of the new adapter (None: not measured)
    active_loss: float | None  # pool loss of ``job.init_adapter`` (or of the base model)
    candidate_agreement: float | None = None  # token F1 of its greedy answers with the pool's labels
    active_agreement: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)  # training loss per step

    @classmethod
    def scored(cls, adapter_dir: Path, scores: dict[str, Any], **fields: Any) -> TrainingOutcome:
        """From ``evaluation.evaluate_versions``' ``{"candidate": score, "active": score}``."""
        candidate, active = scores.get("candidate"), scores.get("active")
        return cls(
            adapter_dir=adapter_dir,
            candidate_loss=candidate.loss if candidate else None,
            active_loss=active.loss if active else None,
            candidate_agreement=candidate.agreement if candidate else None,
            active_agreement=active.agreement if active else None,
            **fields,
        )


TrainFn = Callable[[TrainingJob, Callable[[StepInfo], None]], TrainingOutcome]


class ServedScorer(Protocol):
    """How the gate reads a registered version ("base": no adapter) from the engine that
    serves it, with the version loaded by name."""

    def answers(self, version: str, prompts: list[Chat], max_new_tokens: int) -> list[str]:
        """Greedy answers (at most ``max_new_tokens``) to chats without their answer."""
        ...

    def loss(self, version: str, pool: list[Chat], max_length: int) -> float:
        """Mean loss per answer token on chats that end with their answer."""
        ...


def local_train_fn(base_path: str | Path, device: str | None = None, **overrides: Any) -> TrainFn:
    """A ``train_fn`` that trains in this process with ``echorag.learning.training``
    (``train_lora``) and scores both versions on the pool (``evaluation.evaluate_versions``).
    ``overrides`` are ``TrainConfig`` fields and win over the run's config (e.g.
    ``max_length=128`` for a small machine)."""

    def train(job: TrainingJob, on_step: Callable[[StepInfo], None]) -> TrainingOutcome:
        from echorag.learning.evaluation import evaluate_versions
        from echorag.learning.training import save_adapter, train_lora

        config = replace(job.config, **overrides)
        result = train_lora(
            base_path, job.train, config, init_adapter=job.init_adapter,
            on_step=on_step, device=device,
        )
        save_adapter(result.model, job.output_dir)
        train_loss = result.losses[-1] if result.losses else None
        del result.model
        started = time.perf_counter()
        scores = {}
        if job.holdout:
            scores = evaluate_versions(
                base_path, {"candidate": job.output_dir, "active": job.init_adapter}, job.holdout, config, device
            )
        return TrainingOutcome.scored(
            job.output_dir, scores,
            timings=result.timings | {"eval_s": time.perf_counter() - started},
            metrics={"train_loss": train_loss, "steps": result.steps, "examples": result.examples},
            losses=result.losses,
        )

    return train
