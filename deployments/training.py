"""The Ray layer of LoRA fine-tuning: the core loop (``echorag.mlops.training``) inside a
Ray Train ``TorchTrainer``.

- ``ray_train_fn`` is the collector's ``train_fn``: a ``run_training`` run, then the
  held-out losses of both versions in a Ray task with the workers' resources.
- ``run_training`` builds the trainer (CPU or GPU workers), blocks in ``fit()`` and
  returns the adapter directory of the run's final checkpoint. Call it off the event
  loop (a Ray task or a thread): a run takes minutes.
- ``train_loop_per_worker`` is what each worker runs: ``prepare_model`` puts the model
  on the worker's device (DDP with several workers), ``ray.train.report`` records every
  epoch (the last one with the adapter as a ``Checkpoint``, saved by rank 0 only), and
  every optimizer step goes to a progress actor (``start`` / ``update`` / ``finish``; in
  the service, the collector) and to Ray metrics, so the coordinator and the dashboard
  show step / total / loss / ETA while the run goes.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import ray
import ray.train
import torch
import ray.train.torch
from ray.actor import ActorHandle
from ray.train import Checkpoint, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from deployments import metrics
from echorag.config import Settings
from echorag.mlops.jobs import TrainFn, TrainingJob, TrainingOutcome
from echorag.mlops.registry import InvalidAdapterError, validate_adapter_dir
from echorag.mlops.train_config import TrainConfig
from echorag.mlops.training import (
    Chat,
    EpochInfo,
    StepInfo,
    TrainingError,
    heldout_losses,
    read_chats_jsonl,
    save_adapter,
    train_lora,
)

logger = logging.getLogger(__name__)

ADAPTER_DIR_NAME = "adapter"  # the final checkpoint's directory inside the run folder

# Ray Train's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by
# default); each epoch's report and the end of a run wait for the next poll, which cost a
# short run several seconds (bench/finetune.py). A poll is one cheap actor call. Read when
# fit() is called and passed on to the controller; an operator's own value wins.
TRAIN_ENV_DEFAULTS = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}


def background_runtime_env(use_gpu: bool) -> dict[str, str] | None:
    """For work on CPUs that serving also uses (training, the gate's evaluation): start
    the process at the lowest OS priority, so requests are scheduled first from its very
    first import on. Ray runs workers at niceness 15; this takes them to 19. Work on a
    GPU keeps Ray's default (None)."""
    return None if use_gpu else {"py_executable": f"nice -n 19 {sys.executable}"}


# --------------------------------------------------------------------------- progress


class _StepReporter:
    """Sends rank 0's steps to the progress actor (fire and forget, in order) and to Ray
    metrics. Other ranks take the same steps; one voice is enough."""

    def __init__(self, run_id: str, actor: ActorHandle | None, rank: int) -> None:
        self.run_id, self.actor, self.active = run_id, actor, rank == 0
        self._last_call: ray.ObjectRef | None = None

    def step(self, info: StepInfo) -> None:
        if not self.active:
            return
        metrics.record_training_step(self.run_id, info.step, info.total_steps, info.loss, info.progress)
        self._send(info.to_dict() | {"kind": "step"})

    def epoch(self, info: EpochInfo) -> None:
        if self.active:
            self._send(info.to_dict() | {"kind": "epoch"})
            self.flush()  # once an epoch: a slow actor never falls far behind

    def _send(self, info: dict[str, Any]) -> None:
        if self.actor is None:
            return
        try:
            self._last_call = self.actor.update.remote(info | {"run_id": self.run_id})
        except Exception as exc:  # best effort, as in flush()
            logger.warning("training progress not sent: %s", exc)

    def flush(self) -> None:
        """Wait for the last update: calls from one caller run in order, so all are in."""
        if self._last_call is not None:
            _quietly(lambda: ray.get(self._last_call))
            self._last_call = None


def _quietly(call: Callable[[], Any]) -> None:
    """Progress is best effort: a lost progress actor must not fail a training run."""
    try:
        call()
    except Exception as exc:  # RayActorError, a killed actor, ...
        logger.warning("training progress not recorded: %s", exc)


# --------------------------------------------------------------------------- the worker


def _examples(config: dict[str, Any]) -> list[Chat]:
    if config.get("examples_path"):
        return read_chats_jsonl(config["examples_path"])
    examples = config["examples"]
    return ray.get(examples) if isinstance(examples, ray.ObjectRef) else examples


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker. ``config``: ``base_path``, ``examples`` (chats, or an
    ObjectRef to them) or ``examples_path`` (JSONL of ``{"messages": ...}``),
    ``train_config`` (``TrainConfig.to_dict()``), ``init_adapter``, ``run_id`` and
    ``progress_actor`` (a ``TrainingProgress`` handle or None)."""
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    train_config = TrainConfig.from_dict(config["train_config"])
    run_id = config["run_id"]
    reporter = _StepReporter(run_id, config.get("progress_actor"), rank)
    last_epoch: list[EpochInfo] = []

    def on_epoch_end(info: EpochInfo) -> None:
        reporter.epoch(info)
        last_epoch[:] = [info]
        if info.epoch < info.epochs - 1:  # the last epoch reports below, with the adapter
            ray.train.report(info.to_dict() | {"run_id": run_id})

    init_adapter = config.get("init_adapter")
    result = train_lora(
        config["base_path"],
        _examples(config),
        train_config,
        init_adapter=Path(init_adapter) if init_adapter else None,
        on_step=reporter.step,
        model_wrapper=ray.train.torch.prepare_model,
        on_epoch_end=on_epoch_end,
        device=ray.train.torch.get_device(),
        rank=rank,
        world_size=world_size,
    )
    metrics = last_epoch[0].to_dict() | result.timings | {
        "run_id": run_id, "examples": result.examples, "final": True, "world_size": world_size,
        "torch_threads": torch.get_num_threads(), "niceness": os.nice(0),
    }
    # Every rank must call report the same number of times; only rank 0 holds a checkpoint.
    with tempfile.TemporaryDirectory(prefix="echorag-adapter-") as tmp:
        checkpoint = Checkpoint.from_directory(save_adapter(result.model, tmp)) if rank == 0 else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=ADAPTER_DIR_NAME)
    reporter.flush()


# --------------------------------------------------------------------------- the driver


def new_run_name() -> str:
    """Unique: Ray Train resumes a run whose name already exists in the storage path."""
    return f"echorag-lora-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def _local_or_id(path: str | Path) -> str:
    # Workers may start in another directory: absolute paths for local files, ids as they are.
    return str(Path(path).resolve()) if Path(path).exists() else str(path)


def run_training(
    base_path: str | Path,
    train_examples: list[Chat],
    config: TrainConfig,
    run_dir: Path,
    init_adapter: Path | None = None,
    use_gpu: bool = False,
    num_workers: int = 1,
    progress_actor: ActorHandle | str | None = None,
    run_name: str | None = None,
    gpus_per_worker: float = 1.0,
    cpus_per_worker: float = 1.0,
) -> Path:
    """Fine-tune a LoRA with a ``TorchTrainer`` and return the adapter directory of the
    final checkpoint (``run_dir/<run_name>/adapter``). Blocks until the run ends; raises
    ``TrainingError`` when it fails. ``gpus_per_worker`` < 1 shares a GPU with serving."""
    run_name = run_name or new_run_name()
    for name, value in TRAIN_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if isinstance(progress_actor, str):
        progress_actor = ray.get_actor(progress_actor)
    if progress_actor is not None:
        # Waited for: the workers' updates come from other callers, so no order is implied.
        info = {"examples": len(train_examples), "epochs": config.epochs}
        _quietly(lambda: ray.get(progress_actor.start.remote(run_name, info)))

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "base_path": _local_or_id(base_path),
            "examples": train_examples,
            "train_config": config.to_dict(),
            "init_adapter": _local_or_id(init_adapter) if init_adapter else None,
            "run_id": run_name,
            "progress_actor": progress_actor,
        },
        scaling_config=ScalingConfig(
            num_workers=num_workers,
            use_gpu=use_gpu,
            resources_per_worker=(
                {"CPU": cpus_per_worker, "GPU": gpus_per_worker} if use_gpu else {"CPU": cpus_per_worker}
            ),
        ),
        run_config=RunConfig(
            name=run_name, storage_path=str(Path(run_dir).resolve()),
            worker_runtime_env=background_runtime_env(use_gpu),
        ),
    )
    started = time.perf_counter()
    try:
        result = trainer.fit()
        if result.error:  # fit() raises in Ray 2.60; older Train versions returned the error
            raise result.error
        if result.checkpoint is None:
            raise TrainingError(f"training run {run_name} ended without an adapter checkpoint")
        adapter_dir = Path(result.checkpoint.path)
        validate_adapter_dir(adapter_dir)
    except Exception as exc:
        if progress_actor is not None:
            error = str(exc)[-2000:]
            _quietly(lambda: ray.get(progress_actor.finish.remote(run_name, "failed", error=error)))
        if isinstance(exc, TrainingError):
            raise
        if isinstance(exc, InvalidAdapterError):
            raise TrainingError(f"training run {run_name} saved an unusable adapter: {exc}") from exc
        raise TrainingError(f"training run {run_name} failed: {exc}") from exc
    if progress_actor is not None:
        done = {"adapter_dir": str(adapter_dir), "wall_s": time.perf_counter() - started,
                "metrics": dict(result.metrics or {})}
        _quietly(lambda: ray.get(progress_actor.finish.remote(run_name, "succeeded", **done)))
    logger.info("Training run %s finished in %.1f s: %s", run_name, time.perf_counter() - started, adapter_dir)
    return adapter_dir


# --------------------------------------------------------------------------- the collector's train_fn


class ProgressRouter(Protocol):
    """Where ``ray_train_fn`` sends a run's step reports: ``handle`` is the progress actor
    the workers report to, ``listen`` routes a run's reports to a callback (None: stop)."""

    handle: ActorHandle

    def listen(self, run_name: str, callback: Callable[[dict[str, Any]], None] | None) -> None: ...


def train_resources(settings: Settings) -> dict[str, float]:
    """GPUs for training only where serving does not hold them; CPU workers otherwise."""
    gpus = settings.finetune_worker_gpus
    if gpus < 0:
        free = ray.available_resources().get("GPU", 0.0)
        gpus = 1.0 if free >= 1.0 else 0.0
    return {"CPU": settings.finetune_worker_cpus, "GPU": gpus}


def ray_train_fn(settings: Settings, base_path: str, progress: ProgressRouter) -> TrainFn:
    """A ``LearningLoop`` train function that runs Ray Train and evaluates both versions."""
    evaluate = ray.remote(heldout_losses)

    def train(job: TrainingJob, on_progress: Callable[[dict[str, Any]], None]) -> TrainingOutcome:
        resources = train_resources(settings)
        progress.listen(job.name, on_progress)
        started = time.perf_counter()
        try:
            adapter = run_training(
                base_path, job.train, job.config, settings.data_dir / "training" / "ray",
                init_adapter=job.init_adapter, use_gpu=resources["GPU"] > 0,
                num_workers=settings.finetune_num_workers, progress_actor=progress.handle,
                run_name=job.name, gpus_per_worker=resources["GPU"] or 1.0,
                cpus_per_worker=resources["CPU"],
            )
        finally:
            progress.listen(job.name, None)
        shutil.copytree(adapter, job.output_dir)
        shutil.rmtree(adapter.parent, ignore_errors=True)  # the Train run's own copy and results
        train_s = time.perf_counter() - started
        losses: dict[str, float] = {}
        if job.holdout:
            versions = {"candidate": str(job.output_dir), "active": str(job.init_adapter) if job.init_adapter else None}
            task = evaluate.options(num_cpus=resources["CPU"], num_gpus=resources["GPU"],
                                    runtime_env=background_runtime_env(use_gpu=resources["GPU"] > 0))
            losses = ray.get(task.remote(base_path, versions, job.holdout, job.config, None))
        return TrainingOutcome(
            adapter_dir=job.output_dir,
            candidate_loss=losses.get("candidate"),
            active_loss=losses.get("active"),
            timings={"train_s": train_s, "eval_s": time.perf_counter() - started - train_s},
            metrics={"examples": len(job.train), "holdout": len(job.holdout)},
        )

    return train
