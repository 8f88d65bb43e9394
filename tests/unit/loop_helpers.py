"""Shared by the learning-loop tests: Korean turns, a real blocking/failing trainer,
a loop factory on a temporary data dir, and a webhook receiver."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from echorag.config import Settings
from echorag.learning import LearningLoop, TrainingJob, TrainingOutcome, local_train_fn
from echorag.types import Turn
from tests.korean_qa import QA
from tests.webhook_receiver import Receiver

WAIT = 120  # seconds: generous upper bound for a run on the tiny model


def turn(i: int, label: str = "teacher") -> Turn:
    """A collected turn; by default answered by a teacher (the extractive answerer), so it
    is a label the student learns from."""
    q, a = QA[i % len(QA)]
    if i >= len(QA):  # identical turns would be dropped as duplicates
        q, a = f"{q} ({i})", f"{a} ({i})"
    backend = "extractive" if label == "teacher" else "tiny"
    return Turn(id=f"turn-{i}", session_id="s1", user_id="u1", user=q, assistant=a,
                adapter_version="base", model=backend, backend=backend, label=label)


class Trainer:
    """A real ``train_fn`` (LoRA on the tiny model) that can block until released and fail
    on purpose; it records every job it was given."""

    def __init__(self, base: Path, *, fail: int = 0, block: bool = False) -> None:
        self.inner = local_train_fn(base, batch_size=4, max_length=96, learning_rate=1e-3)
        self.fail = fail
        self.jobs: list[TrainingJob] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not block:
            self.release.set()

    def __call__(self, job: TrainingJob, on_progress) -> TrainingOutcome:
        self.jobs.append(job)
        self.started.set()
        assert self.release.wait(WAIT), "the test never released the run"
        if self.fail:
            self.fail -= 1
            raise RuntimeError("injected failure: CUDA out of memory")
        return self.inner(job, on_progress)


@pytest.fixture
def receiver():
    r = Receiver([])
    yield r
    r.close()


@pytest.fixture
def make(tmp_path):
    """``make(trainer, **settings)``: a LearningLoop on ``tmp_path/data``, closed afterwards.
    The gate judges on as little as one pool turn here (``gate_min_examples``: 1): these
    tests are about the loop's mechanics; the default's refusal has its own test."""
    loops: list[LearningLoop] = []

    def build(trainer, *, activated: list | None = None, loop_kwargs: dict | None = None, **settings):
        values = {"data_dir": tmp_path / "data", "finetune_batch_size": 3, "finetune_epochs": 2,
                  "finetune_gate_min_examples": 1} | settings
        loop = LearningLoop(
            Settings(**values), trainer,
            warm_up=None if activated is None else activated.append,
            **(loop_kwargs or {}),
        )
        loops.append(loop)
        return loop

    yield build
    for loop in loops:
        loop.close(timeout=WAIT)


def types(loop: LearningLoop) -> list[str]:
    """Event types, oldest first."""
    return [e.type for e in reversed(loop.events(limit=1000).events)]
