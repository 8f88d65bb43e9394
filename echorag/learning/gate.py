"""The evaluation gate: a candidate serves only if, on the evaluation pool (turns that
never train, ``echorag.learning.dataset``), it is not worse than the active version by
either measure — the loss on the labels, and the agreement (Kiwi content-morpheme
token F1, as ``echorag eval-answers``) of its greedy answers with them — and the pool is
large enough for the comparison to mean something."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from echorag.evaluation.answer_metrics import token_f1

T = TypeVar("T")


def agreement(answers: Sequence[str], labels: Sequence[str]) -> float:
    """The gate's agreement: mean token F1 of each answer with its label."""
    return sum(token_f1(answer, label) for answer, label in zip(answers, labels)) / len(labels)


@dataclass(frozen=True)
class VersionScore:
    """One version on the pool: mean loss per label token, mean agreement F1 (0–1), and
    its greedy answers (pool order) where they were generated."""

    loss: float | None
    agreement: float | None = None
    answers: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


class EvaluationGate:
    def __init__(self, tolerance: float = 0.0, agreement_tolerance: float = 0.02, min_examples: int = 1) -> None:
        """``tolerance`` is relative on the loss: 0.02 accepts a candidate up to 2 % worse
        than the active version; a negative value demands a gain. ``agreement_tolerance``
        is absolute on the F1. Below ``min_examples`` pool turns nothing is promoted."""
        if tolerance <= -1:
            raise ValueError("tolerance must be greater than -1")
        if not 0 <= agreement_tolerance <= 1 or min_examples < 1:
            raise ValueError("agreement_tolerance must be in [0, 1] and min_examples >= 1")
        self.tolerance, self.agreement_tolerance, self.min_examples = tolerance, agreement_tolerance, min_examples

    def decide(self, candidate: VersionScore, active: VersionScore | None, pool: int) -> GateDecision:
        """``active``: the score of what serves now (None: nothing to beat); ``pool``: how
        many pool turns both were scored on."""
        active = active or VersionScore(None, None)
        loss_limit = active.loss * (1 + self.tolerance) if _finite(active.loss) else None
        agreement_floor = active.agreement - self.agreement_tolerance if _finite(active.agreement) else None
        metrics = {
            "pool": pool, "min_examples": self.min_examples,
            "candidate": {"loss": candidate.loss, "agreement": candidate.agreement},
            "active": {"loss": active.loss, "agreement": active.agreement},
            "candidate_loss": candidate.loss, "active_loss": active.loss, "limit": loss_limit,
            "tolerance": self.tolerance, "agreement_tolerance": self.agreement_tolerance,
            "relative_change": (candidate.loss - active.loss) / active.loss
            if _finite(candidate.loss) and _finite(active.loss) and active.loss else None,
        }
        if pool < self.min_examples:
            return GateDecision(False, f"the evaluation pool has {pool} turns; the gate needs at least "
                                       f"{self.min_examples} (gate_min_examples) to judge", metrics)
        if not _finite(candidate.loss):
            return GateDecision(False, f"candidate loss is {candidate.loss}", metrics)
        change = f"pool loss {active.loss:.4f} → {candidate.loss:.4f}" if _finite(active.loss) else \
            f"pool loss {candidate.loss:.4f}"
        if candidate.agreement is not None:
            before = f"{active.agreement:.3f} → " if _finite(active.agreement) else ""
            change += f", agreement {before}{candidate.agreement:.3f}"
        change += f" on {pool} turns"
        if loss_limit is not None and candidate.loss > loss_limit + 1e-12:  # the boundary is "not worse"
            return GateDecision(False, f"{change}: the loss exceeds the limit {loss_limit:.4f}", metrics)
        if agreement_floor is not None and candidate.agreement is not None and candidate.agreement < agreement_floor - 1e-12:
            return GateDecision(False, f"{change}: the agreement is below the floor {agreement_floor:.3f}", metrics)
        if loss_limit is None:
            return GateDecision(True, f"{change}; no finite baseline to compare with", metrics)
        return GateDecision(True, f"{change} (loss limit {loss_limit:.4f})", metrics)


def _key(turn: Any) -> str:
    return str(turn["id"] if isinstance(turn, dict) else turn.id)


def split_holdout(
    turns: Sequence[T], fraction: float, seed: int = 0, key: Callable[[T], str] = _key
) -> tuple[list[T], list[T]]:
    """Split into (train, holdout), deterministically: turns are ranked by a hash of
    their id, so the split does not depend on order. At least one turn is held out
    when ``fraction > 0`` and there are two or more turns. Order is preserved."""
    if not 0 <= fraction < 1:
        raise ValueError("fraction must be in [0, 1)")
    n_holdout = round(len(turns) * fraction)
    if fraction > 0 and len(turns) >= 2:
        n_holdout = max(1, n_holdout)
    ranked = sorted(range(len(turns)), key=lambda i: hashlib.sha256(f"{seed}:{key(turns[i])}".encode()).digest())
    held = set(ranked[:n_holdout])
    return (
        [t for i, t in enumerate(turns) if i not in held],
        [t for i, t in enumerate(turns) if i in held],
    )
