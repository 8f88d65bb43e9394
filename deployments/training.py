"""The Ray layer of LoRA fine-tuning: the core loop (``echorag.learning.training``) inside a
Ray Train ``TorchTrainer``.

- ``ray_train_fn`` is the collector's ``train_fn``: a ``fit_lora`` run. The gate's
  held-out loss and answers come from the serving deployment afterwards
  (``deployments.mlops.ServedStudent``), not from a second model load here.
- ``fit_lora`` builds the trainer (CPU or GPU workers), blocks in ``fit()`` and returns
  the adapter directory of the run's final checkpoint, the checkpoint and the last
  metrics. Call it off the event loop (a Ray task or a thread): a run takes minutes.
- ``train_loop_per_worker`` is what each worker runs: ``prepare_model`` puts the model
  on the worker's device (DDP with several workers), ``ray.train.report`` records every
  epoch (the last one with the adapter as a ``Checkpoint``, saved by rank 0 only), and
  every optimizer step goes to a progress actor (its one method ``update``; in
  the service, the collector) and to Ray metrics, so the coordinator and the dashboard
  show step / total / loss / ETA while the run goes.

Any node may train. The run's storage (``Settings.train_storage_root``) is a path or URI
every node reaches, so a worker on another node writes the checkpoint where the driver
(the collector, on the head) reads it; the worker reports its node id. What a worker
reads is named portably, never as a path of the head's disk: the
active adapter as a registry version (``RegistryVersion``: downloaded from the adapter
URI on the node that needs it), the candidate as the run's ``Checkpoint``, the base
model by its spec when the head's path is not on that node.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import ray
import ray.train
import ray.train.torch
import torch
from ray.actor import ActorHandle
from ray.train import Checkpoint, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from deployments import metrics
from echorag.config import Settings
from echorag.learning.adapter_storage import InvalidAdapterError, validate_adapter_dir
from echorag.learning.jobs import TrainFn, TrainingJob, TrainingOutcome
from echorag.learning.progress import StepInfo
from echorag.learning.registry import AdapterRegistry
from echorag.learning.train_config import TrainConfig
from echorag.learning.training import EpochInfo, TrainingError, read_chats_jsonl, save_adapter, train_lora
from echorag.models.chat_tokens import Chat
from echorag.models.resolution import resolve_generator, student_spec

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
        if self.actor is None:
            return
        try:
            self._last_call = self.actor.step.remote(self.run_id, info)
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


# --------------------------------------------------------------------------- what a node reads


@dataclass(frozen=True)
class RegistryVersion:
    """A version of the adapter registry at ``root``, as the node that needs it reads it:
    from the adapter URI into that node's cache (or the local directory on one machine)."""

    root: str
    version: str


AdapterRef = RegistryVersion | Checkpoint | str | Path | None


def adapter_here(ref: AdapterRef, scratch: Path | None = None) -> Path | None:
    """The directory of ``ref`` on this node; a checkpoint this node cannot read in place
    is downloaded into ``scratch`` (default: a new temporary directory)."""
    if ref is None:
        return None
    if isinstance(ref, RegistryVersion):
        return AdapterRegistry(ref.root).path(ref.version)
    if isinstance(ref, Checkpoint):
        if ref.filesystem.type_name == "local" and Path(ref.path).is_dir():
            return Path(ref.path)
        scratch = scratch or Path(tempfile.mkdtemp(prefix="echorag-adapter-")) / ADAPTER_DIR_NAME
        return Path(ref.to_directory(str(scratch)))
    return Path(ref)


def base_here(base_path: str, spec: dict[str, str] | None) -> str:
    """The base model on this node: the driver's path where this node has it, else the
    model spec resolved here (e.g. the tiny model built in this node's models dir)."""
    if spec is None or not os.path.isabs(base_path) or Path(base_path).exists():
        return base_path
    return resolve_generator(spec["spec"], Path(spec["models_dir"])).path


def delete_run(storage: str | Path, run_name: str) -> None:
    """Remove a finished run's folder (checkpoints, results) from the run storage."""
    from pyarrow import fs

    try:
        filesystem, root = fs.FileSystem.from_uri(str(storage)) if "://" in str(storage) else (
            fs.LocalFileSystem(), str(Path(storage).resolve()))
        filesystem.delete_dir(f"{root.rstrip('/')}/{run_name}")
    except (OSError, FileNotFoundError) as exc:
        logger.warning("could not delete training run %s from %s: %s", run_name, storage, exc)


# --------------------------------------------------------------------------- the worker


def _examples(config: dict[str, Any]) -> list[Chat]:
    if config.get("examples_path"):
        return read_chats_jsonl(config["examples_path"])
    examples = config["examples"]
    return ray.get(examples) if isinstance(examples, ray.ObjectRef) else examples


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker. ``config``: ``base_path``, ``examples`` (chats, or an
    ObjectRef to them) or ``examples_path`` (JSONL of ``{"messages": ...}``),
    ``train_config`` (``TrainConfig.to_dict()``), ``init_adapter`` (a path or a
    ``RegistryVersion``), ``base_spec`` (see ``base_here``), ``run_id`` and
    ``progress_actor`` (a ``TrainingProgress`` handle or None). The last report carries
    the node id the worker ran on."""
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    train_config = TrainConfig.from_dict(config["train_config"])
    run_id = config["run_id"]
    reporter = _StepReporter(run_id, config.get("progress_actor"), rank)
    last_epoch: list[EpochInfo] = []

    def on_epoch_end(info: EpochInfo) -> None:
        if rank == 0:
            reporter.flush()  # once an epoch: a slow progress actor never falls far behind
        last_epoch[:] = [info]
        if info.epoch < info.epochs - 1:  # the last epoch reports below, with the adapter
            ray.train.report(info.to_dict() | {"run_id": run_id})

    scratch = tempfile.TemporaryDirectory(prefix="echorag-init-")
    result = train_lora(
        base_here(config["base_path"], config.get("base_spec")),
        _examples(config),
        train_config,
        init_adapter=adapter_here(config.get("init_adapter"), Path(scratch.name)),
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
        "node_id": ray.get_runtime_context().get_node_id(),
    }
    scratch.cleanup()
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


@dataclass
class FitResult:
    adapter_dir: Path  # the final adapter on this node's disk (downloaded when the storage is remote)
    checkpoint: Checkpoint  # the same adapter in the run storage, readable from any node
    metrics: dict[str, Any]  # rank 0's last report: losses, timings, node_id, ...


def fit_lora(
    base_path: str | Path,
    train_examples: list[Chat],
    config: TrainConfig,
    run_dir: str | Path,
    init_adapter: AdapterRef = None,
    use_gpu: bool = False,
    num_workers: int = 1,
    progress_actor: ActorHandle | str | None = None,
    run_name: str | None = None,
    gpus_per_worker: float = 1.0,
    cpus_per_worker: float = 1.0,
    resources_per_worker: dict[str, float] | None = None,
    base_spec: dict[str, str] | None = None,
) -> FitResult:
    """Fine-tune a LoRA with a ``TorchTrainer``; raises ``TrainingError`` when the run fails. ``run_dir``: a local path (one machine) or
    a path or URI every node reaches (``file:///shared/train``, ``s3://bucket/train``);
    ``init_adapter``: a local directory or, for workers on other nodes, a
    ``RegistryVersion``; ``resources_per_worker``: custom resources placing the workers
    (``{"echorag_train": 1}``); ``base_spec``: ``{"spec", "models_dir"}`` to resolve the
    base model on a node that lacks ``base_path``. ``gpus_per_worker`` < 1 shares a GPU
    with serving."""
    run_name = run_name or new_run_name()
    for name, value in TRAIN_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if isinstance(progress_actor, str):
        progress_actor = ray.get_actor(progress_actor)
    storage = str(run_dir) if "://" in str(run_dir) else str(Path(run_dir).resolve())
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if use_gpu else {}), **(resources_per_worker or {})}

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "base_path": _local_or_id(base_path),
            "base_spec": base_spec,
            "examples": train_examples,
            "train_config": config.to_dict(),
            "init_adapter": _local_or_id(init_adapter) if isinstance(init_adapter, (str, Path)) else init_adapter,
            "run_id": run_name,
            "progress_actor": progress_actor,
        },
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=run_name, storage_path=storage, worker_runtime_env=background_runtime_env(use_gpu),
        ),
    )
    started = time.perf_counter()
    try:
        result = trainer.fit()
        if result.error:  # fit() raises in Ray 2.60; older Train versions returned the error
            raise result.error
        if result.checkpoint is None:
            raise TrainingError(f"training run {run_name} ended without an adapter checkpoint")
        adapter_dir = adapter_here(result.checkpoint)
        validate_adapter_dir(adapter_dir)
    except Exception as exc:
        if isinstance(exc, TrainingError):
            raise
        if isinstance(exc, InvalidAdapterError):
            raise TrainingError(f"training run {run_name} saved an unusable adapter: {exc}") from exc
        raise TrainingError(f"training run {run_name} failed: {exc}") from exc
    metrics = dict(result.metrics or {})
    logger.info("Training run %s finished in %.1f s on node %s: %s", run_name, time.perf_counter() - started,
                metrics.get("node_id"), adapter_dir)
    return FitResult(adapter_dir, result.checkpoint, metrics)


# --------------------------------------------------------------------------- the collector's train_fn


class ProgressRouter(Protocol):
    """Where ``ray_train_fn`` sends a run's step reports: ``handle`` is the progress actor
    the workers report to, ``listen`` routes a run's reports to a callback (None: stop)."""

    handle: ActorHandle

    def listen(self, run_name: str, callback: Callable[[StepInfo], None] | None) -> None: ...


def train_resources(settings: Settings) -> dict[str, float]:
    """GPUs for training only where serving does not hold them; CPU workers otherwise;
    plus the custom resources that place the workers (``finetune_worker_resources``)."""
    gpus = settings.finetune_worker_gpus
    if gpus < 0:
        free = ray.available_resources().get("GPU", 0.0)
        gpus = 1.0 if free >= 1.0 else 0.0
    return {"CPU": settings.finetune_worker_cpus, "GPU": gpus, **settings.finetune_worker_resources}


def ray_train_fn(settings: Settings, base_path: str, progress: ProgressRouter) -> TrainFn:
    """A ``LearningLoop`` train function that runs Ray Train on whichever nodes offer the
    workers' resources. It returns the adapter; the serving deployment then measures both
    versions for the gate (``LearningLoop(scorer=...)``)."""
    storage = settings.train_storage_root
    base_spec = {"spec": student_spec(settings), "models_dir": str(settings.models_dir)}

    def train(job: TrainingJob, on_step: Callable[[StepInfo], None]) -> TrainingOutcome:
        resources = train_resources(settings)
        cpus, gpus = resources.pop("CPU"), resources.pop("GPU")
        # The active version as any node reads it: from the registry, not the head's cache.
        active = RegistryVersion(str(settings.adapters_root), job.init_version) if job.init_adapter else None
        progress.listen(job.name, on_step)
        started = time.perf_counter()
        try:
            fit = fit_lora(
                base_path, job.train, job.config, storage, init_adapter=active, use_gpu=gpus > 0,
                num_workers=settings.finetune_num_workers, progress_actor=progress.handle,
                run_name=job.name, gpus_per_worker=gpus or 1.0, cpus_per_worker=cpus,
                resources_per_worker=resources, base_spec=base_spec,
            )
        finally:
            progress.listen(job.name, None)
        try:
            shutil.copytree(fit.adapter_dir, job.output_dir)
            if fit.checkpoint.filesystem.type_name != "local":  # a download of a remote checkpoint
                shutil.rmtree(fit.adapter_dir.parent, ignore_errors=True)
        finally:
            delete_run(storage, job.name)  # the Train run's checkpoints and results
        return TrainingOutcome.scored(
            job.output_dir, {},
            timings={"train_s": time.perf_counter() - started},
            metrics={"examples": len(job.train), "holdout": len(job.holdout),
                     "train_node_id": fit.metrics.get("node_id"), "train_storage": str(storage)},
        )

    return train
