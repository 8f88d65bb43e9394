"""The evaluation gate: a new adapter serves only if it is not worse on held-out turns."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    metrics: dict[str, float | None] = field(default_factory=dict)


class EvaluationGate:
    def __init__(self, tolerance: float = 0.0) -> None:
        """``tolerance`` is relative: 0.02 accepts a candidate up to 2 % worse than the
        active version (noise on a small held-out set); a negative value demands a gain."""
        if tolerance <= -1:
            raise ValueError("tolerance must be greater than -1")
        self.tolerance = tolerance

    def decide(self, candidate_loss: float, active_loss: float | None) -> GateDecision:
        """``active_loss`` is the held-out loss of what serves now (``None``: nothing to beat)."""
        limit = None if active_loss is None else active_loss * (1 + self.tolerance)
        metrics = {
            "candidate_loss": candidate_loss,
            "active_loss": active_loss,
            "limit": limit,
            "tolerance": self.tolerance,
            "relative_change": (candidate_loss - active_loss) / active_loss if active_loss else None,
        }
        if not math.isfinite(candidate_loss):
            return GateDecision(False, f"candidate loss is {candidate_loss}", metrics)
        if active_loss is None or not math.isfinite(active_loss):
            return GateDecision(True, "no finite baseline loss to compare with", metrics)
        change = f"held-out loss {active_loss:.4f} → {candidate_loss:.4f}"
        if candidate_loss <= limit + 1e-12:  # the boundary itself is "not worse beyond tolerance"
            return GateDecision(True, f"{change} (limit {limit:.4f})", metrics)
        return GateDecision(False, f"{change} exceeds the limit {limit:.4f}", metrics)


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
