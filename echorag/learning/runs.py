"""One attempt of a training run, the steps that need no lock: the job's data, the
gate's verdict, the new version in the registry and the events that tell about it.
``LearningLoop`` books the policy's decisions around them.

A run, step by step:

1. ``StartRun(from_seq, to_seq)`` from the policy → a ``runs`` row, ``training_started``.
2. Optional backup of the active adapter (``backups/``).
3. Data (``echorag.learning.dataset``): the turns on ``(from_seq, to_seq]`` whose labels
   ``train_on`` learns from; a share of them joins the evaluation pool by hash, the rest
   train, with a replay sample of earlier non-pool turns. Nothing to train: the run
   completes at once (``training_skipped``), no version.
4. ``train_fn`` writes an adapter, continuing from the active version, and scores the
   candidate and the active version on the pool's newest turns (loss, agreement).
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import echorag.learning.dataset as dataset
from echorag.learning.database import ConversationStore
from echorag.learning.events import Event, adapter_promoted, training_rejected, training_succeeded
from echorag.learning.gate import EvaluationGate, GateDecision, VersionScore, agreement
from echorag.learning.jobs import ServedScorer, TrainingJob, TrainingOutcome
from echorag.learning.progress import finite
from echorag.learning.records import Run
from echorag.learning.registry import BASE, AdapterRegistry
from echorag.learning.train_config import TrainConfig

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
        return cls(None, False, "no turns to train on: 👎, deleted, held in the evaluation pool, or labels train_on does not learn from", {"empty": True})


# -- the data -----------------------------------------------------------------------------------


def prepare_job(
    store: ConversationStore,
    registry: AdapterRegistry,
    ctx: RunContext,
    config: TrainConfig,
    active_version: Callable[[], str],
    work_dir: Path,
) -> TrainingJob | None:
    """The job for ``ctx``'s slice of turns (None: nothing in it trains), continuing from
    the version ``active_version()`` serves, with a fresh output directory. Which turns
    train and which judge: ``echorag.learning.dataset``."""
    run = ctx.run
    data = dataset.run_data(store, run.from_seq, run.to_seq, config)
    if not data.train:
        return None
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
        train=data.train,
        holdout=data.pool,
        init_adapter=init_adapter,
        init_version=init_version,
        output_dir=out / "adapter",
        config=config,
        new_turns=data.new_turns,
        replay_turns=data.replay_turns,
        corrected_turns=data.corrected_turns,
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
    if job.config.holdout_fraction == 0:
        return GateDecision(True, "gate disabled (holdout_fraction = 0)")
    if outcome.candidate_loss is None:
        return GateDecision(False, "no evaluation-pool turns to judge the candidate on; promote it by hand if wanted",
                            {"pool": len(job.holdout)})
    candidate = VersionScore(finite(outcome.candidate_loss), finite(outcome.candidate_agreement))
    active = VersionScore(finite(outcome.active_loss), finite(outcome.active_agreement))
    return gate.decide(candidate, active, len(job.holdout))


def outcome_metrics(job: TrainingJob, outcome: TrainingOutcome, decision: GateDecision) -> dict[str, Any]:
    """What the registry keeps about how a candidate was made and judged."""
    return {
        "run_id": job.run_id,
        "attempt": job.attempt,
        "candidate_loss": finite(outcome.candidate_loss),
        "active_loss": finite(outcome.active_loss),
        "candidate_agreement": finite(outcome.candidate_agreement),
        "active_agreement": finite(outcome.active_agreement),
        "gate": dict(decision.metrics),
        "gate_reason": decision.reason,
        "promoted": decision.promote,
        "new_turns": job.new_turns,
        "replay_turns": job.replay_turns,
        "train_examples": len(job.train),
        "holdout_examples": len(job.holdout),  # the evaluation pool the gate judged on
        "corrected_turns": job.corrected_turns,
        "config": job.config.to_dict(),
        **{k: v for k, v in outcome.metrics.items() if k != "losses"},
    }


def score_served(outcome: TrainingOutcome, pool: list, scorer: ServedScorer, candidate: str, active: str,
                 config: TrainConfig) -> TrainingOutcome:
    """The outcome with both versions' held-out loss and agreement measured by the
    serving engine, each version loaded by name (``scorer``)."""
    prompts, labels = [chat[:-1] for chat in pool], [chat[-1]["content"] for chat in pool]

    def served(version: str) -> tuple[float, float]:
        loss = scorer.loss(version, pool, config.max_length)
        return loss, agreement(scorer.answers(version, prompts, config.eval_max_new_tokens), labels)

    (candidate_loss, candidate_agreement), (active_loss, active_agreement) = served(candidate), served(active)
    return replace(outcome, candidate_loss=candidate_loss, active_loss=active_loss,
                   candidate_agreement=candidate_agreement, active_agreement=active_agreement)


def register_candidate(
    registry: AdapterRegistry,
    job: TrainingJob,
    outcome: TrainingOutcome | None,
    gate: EvaluationGate,
    started_at: float,
    active_version: Callable[[], str],
    warm_up: Callable[[str], None],
    scorer: ServedScorer | None = None,
) -> RunResult:
    """Add the candidate as the next ``vN`` (status ``candidate``), judge it, and promote
    it (after ``warm_up``) or keep it as rejected. With ``scorer`` the loss and agreement
    the gate reads come from the serving engine with the candidate loaded by its version
    (registered first for that reason). A failed promotion leaves it rejected."""
    if outcome is None or outcome.adapter_dir is None:
        raise RuntimeError("train_fn returned no adapter")
    info = registry.add(
        outcome.adapter_dir,
        parent=job.init_version,
        data_watermark=job.to_seq,
        samples=len(job.train),
        metrics={"run_id": job.run_id, "attempt": job.attempt},
    )
    version = info.version
    timings = {k: float(v) for k, v in outcome.timings.items() if finite(v) is not None}
    if scorer is not None and job.holdout:
        evaluating = time.time()
        try:
            outcome = score_served(outcome, job.holdout, scorer, version, job.init_version, job.config)
        except Exception as exc:
            registry.reject(version, {"promoted": False, "gate_reason": f"could not be evaluated: {exc}"})
            raise
        timings["eval_s"] = time.time() - evaluating
    decision = judge(job, outcome, gate, active_version())
    metrics = outcome_metrics(job, outcome, decision)
    timings["run_s"] = time.time() - started_at
    registry.record(version, metrics, timings)
    previous, promoted, reason = active_version(), decision.promote, decision.reason
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
            message=f"⏭️ 학습할 대화 없음: seq {run.from_seq + 1}–{run.to_seq} 처리 완료 (👎, 삭제, 평가 풀, 또는 train_on이 배우지 않는 답)",
            data=where,
        )]
    m = result.metrics
    agreement, pool = (m.get("active_agreement"), m.get("candidate_agreement")), m.get("holdout_examples")
    if not result.promoted:
        ended = training_rejected(result.version, result.active_loss, result.candidate_loss, result.reason,
                                  agreement, pool)
        return [_with(ended, where)]
    promoted = adapter_promoted(result.version, result.previous)
    ended = training_succeeded(
        result.version, result.active_loss, result.candidate_loss, agreement, pool, run_id=run.id,
        samples=m.get("train_examples"), promoted=True,
    )
    return [_with(promoted, {"run_id": run.id, "trigger": "gate"}), _with(ended, where)]


def _with(event: Event, data: dict[str, Any]) -> Event:
    return event.model_copy(update={"data": event.data | data})
