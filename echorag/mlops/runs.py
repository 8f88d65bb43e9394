"""One attempt of a training run, the steps that need no lock: the job's data, the
gate's verdict, the new version in the registry and the events that tell about it.
``LearningLoop`` books the policy's decisions around them.

A run, step by step:

1. ``StartRun(from_seq, to_seq)`` from the policy → a ``runs`` row, ``training_started``.
2. Optional backup of the active adapter (``backups/``).
3. Data: trainable turns on ``(from_seq, to_seq]`` (👎 excluded), a deterministic held-out
   split of them, plus a replay sample of earlier accepted turns on the training side.
   No trainable turn: the run completes at once (``training_skipped``), no version.
4. ``train_fn`` writes an adapter, continuing from the active version, and measures the
   held-out loss of the candidate and of the active version.
5. The gate decides; the adapter becomes an immutable ``vN`` (parent, watermark, sample
   count, metrics, timings) and is promoted or kept as ``rejected``.
6. Events, a webhook (in the background), the run row, then the policy: the watermark
   moves, and a pending run starts on everything that accumulated meanwhile.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echorag.mlops.events import Event, adapter_promoted, training_rejected, training_succeeded
from echorag.mlops.gate import EvaluationGate, GateDecision, split_holdout
from echorag.mlops.jobs import TrainingJob, TrainingOutcome, finite
from echorag.mlops.registry import BASE, AdapterRegistry
from echorag.mlops.store import ConversationStore, Run
from echorag.mlops.train_config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    run: Run
    attempt: int
    trigger: str
    backup_existing: bool


@dataclass
class RunResult:
    """What a successful run produced (``version`` None: an empty run)."""

    version: str | None
    promoted: bool
    reason: str
    metrics: dict[str, Any]
    candidate_loss: float | None = None
    active_loss: float | None = None
    previous: str = BASE
    losses: list[float] = field(default_factory=list)

    @classmethod
    def empty(cls) -> RunResult:
        return cls(None, False, "no trainable turns (all 👎 or deleted)", {"empty": True})


# -- the data -----------------------------------------------------------------------------------


def prepare_job(
    store: ConversationStore,
    registry: AdapterRegistry,
    ctx: RunContext,
    config: TrainConfig,
    active_version: Callable[[], str],
    work_dir: Path,
) -> TrainingJob | None:
    """The job for ``ctx``'s slice of turns (None: nothing trainable in it), continuing
    from the version ``active_version()`` serves, with a fresh output directory."""
    run = ctx.run
    new = store.trainable_turns(run.from_seq, run.to_seq)
    if not new:
        return None
    train, holdout = split_holdout(new, config.holdout_fraction, seed=config.seed)
    if not train:  # a single turn with a large holdout fraction: train on it, no gate
        train, holdout = new, []
    replay = store.replay_sample(run.from_seq, config.replay_size(len(train)), seed=config.seed)
    init_version = active_version()
    init_adapter = None if init_version == BASE else registry.path(init_version)
    out = work_dir / f"run-{run.id}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return TrainingJob(
        run_id=run.id,
        attempt=ctx.attempt,
        from_seq=run.from_seq,
        to_seq=run.to_seq,
        train=[t.messages() for t in train + replay],
        holdout=[t.messages() for t in holdout],
        init_adapter=init_adapter,
        init_version=init_version,
        output_dir=out / "adapter",
        config=config,
        new_turns=len(new),
        replay_turns=len(replay),
    )


# -- the verdict and the new version --------------------------------------------------------------


def judge(job: TrainingJob, outcome: TrainingOutcome, gate: EvaluationGate, now_active: str) -> GateDecision:
    """The gate's verdict on the candidate. A version activated by hand during the run
    is never replaced behind the operator's back."""
    decision = _gate_decision(job, outcome, gate)
    if decision.promote and now_active != job.init_version:
        return GateDecision(
            False,
            f"the active version changed during the run ({job.init_version} → {now_active}); not promoted",
            decision.metrics,
        )
    return decision


def _gate_decision(job: TrainingJob, outcome: TrainingOutcome, gate: EvaluationGate) -> GateDecision:
    if outcome.candidate_loss is None:
        if job.config.holdout_fraction == 0:
            return GateDecision(True, "gate disabled (holdout_fraction = 0)")
        return GateDecision(False, "no held-out turns to judge the candidate on; promote it by hand if wanted")
    candidate = finite(outcome.candidate_loss)
    if candidate is None:
        return GateDecision(False, f"candidate loss is {outcome.candidate_loss}")
    return gate.decide(candidate, finite(outcome.active_loss))


def outcome_metrics(job: TrainingJob, outcome: TrainingOutcome, decision: GateDecision) -> dict[str, Any]:
    """What the registry keeps about how a candidate was made and judged."""
    return {
        "run_id": job.run_id,
        "attempt": job.attempt,
        "candidate_loss": finite(outcome.candidate_loss),
        "active_loss": finite(outcome.active_loss),
        "gate": dict(decision.metrics),
        "gate_reason": decision.reason,
        "promoted": decision.promote,
        "new_turns": job.new_turns,
        "replay_turns": job.replay_turns,
        "train_examples": len(job.train),
        "holdout_examples": len(job.holdout),
        "config": job.config.to_dict(),
        **{k: v for k, v in outcome.metrics.items() if k != "losses"},
    }


def register_candidate(
    registry: AdapterRegistry,
    job: TrainingJob,
    outcome: TrainingOutcome | None,
    gate: EvaluationGate,
    started_at: float,
    active_version: Callable[[], str],
    warm_up: Callable[[str], None],
) -> RunResult:
    """Judge the candidate, add it as the next ``vN`` and promote it (after ``warm_up``)
    or keep it as rejected. A failed promotion leaves it rejected."""
    if outcome is None or outcome.adapter_dir is None:
        raise RuntimeError("train_fn returned no adapter")
    decision = judge(job, outcome, gate, active_version())
    metrics = outcome_metrics(job, outcome, decision)
    timings = {k: float(v) for k, v in outcome.timings.items() if finite(v) is not None}
    timings["run_s"] = time.time() - started_at
    info = registry.add(
        outcome.adapter_dir,
        parent=job.init_version,
        data_watermark=job.to_seq,
        samples=len(job.train),
        metrics=metrics,
        timings=timings,
    )
    version, previous, promoted, reason = info.version, active_version(), decision.promote, decision.reason
    if promoted:
        warm_up(version)
        try:
            registry.promote(version)
        except Exception as exc:
            log.exception("could not promote %s", version)
            promoted, reason = False, f"promotion failed: {exc}"
    if not promoted:
        registry.reject(version, {"promoted": False, "gate_reason": reason})
    return RunResult(
        version, promoted, reason, metrics | {"promoted": promoted, "gate_reason": reason, "version": version},
        finite(outcome.candidate_loss), finite(outcome.active_loss), previous, list(outcome.losses),
    )


# -- events -------------------------------------------------------------------------------------


def interrupted_event(run: Run) -> Event:
    return Event(
        type="training_interrupted",
        message=f"⛔ 미세조정 중단: 프로세스 재시작 (run {run.id}, seq {run.from_seq + 1}–{run.to_seq}, 데이터 유지)",
        data={"run_id": run.id, "from_seq": run.from_seq, "to_seq": run.to_seq},
    )


def queued_event(running_run_id: int | None, trigger: str, reason: str) -> Event:
    return Event(
        type="training_queued",
        message=f"⏳ 학습 대기열 등록: 진행 중인 학습(run {running_run_id}) 후 새 데이터로 한 번 더 학습",
        data={"run_id": running_run_id, "trigger": trigger, "reason": reason},
    )


def backed_up_event(run: Run, version: str, path: Path) -> Event:
    return Event(
        type="adapter_backed_up",
        message=f"💾 학습 전 활성 어댑터 백업: {path.name}",
        data={"run_id": run.id, "version": version, "path": str(path)},
    )


def success_events(run: Run, result: RunResult) -> list[Event]:
    """The events of a run that succeeded, in order; the last one tells how it ended
    (the webhook's, unless the run was empty)."""
    where = {"run_id": run.id, "from_seq": run.from_seq, "to_seq": run.to_seq}
    if result.version is None:
        return [Event(
            type="training_skipped",
            message=f"⏭️ 학습할 대화 없음: seq {run.from_seq + 1}–{run.to_seq} 처리 완료 (👎 또는 삭제됨)",
            data=where,
        )]
    if not result.promoted:
        ended = training_rejected(result.version, result.active_loss, result.candidate_loss, result.reason)
        return [_with(ended, where)]
    promoted = adapter_promoted(result.version, result.previous)
    ended = training_succeeded(
        result.version, result.active_loss, result.candidate_loss, run_id=run.id,
        samples=result.metrics.get("train_examples"), promoted=True,
    )
    return [_with(promoted, {"run_id": run.id, "trigger": "gate"}), _with(ended, where)]


def _with(event: Event, data: dict[str, Any]) -> Event:
    return event.model_copy(update={"data": event.data | data})
