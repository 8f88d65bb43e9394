import math

import pytest

from echorag.learning import EvaluationGate, VersionScore, split_holdout


@pytest.mark.parametrize(
    ("tolerance", "candidate", "active", "promote"),
    [
        (0.0, 1.0, 1.0, True),  # equal is not worse
        (0.0, 0.9, 1.0, True),
        (0.0, 1.0001, 1.0, False),
        (0.05, 1.05, 1.0, True),  # exactly at the tolerance
        (0.05, 1.0501, 1.0, False),
        (-0.1, 0.95, 1.0, False),  # a negative tolerance demands a 10 % gain
        (-0.1, 0.9, 1.0, True),
        (0.0, math.nan, 1.0, False),
        (0.0, math.inf, 1.0, False),
        (0.0, 2.0, None, True),  # nothing to compare with: the first adapter
    ],
)
def test_gate_tolerance_boundaries(tolerance, candidate, active, promote):
    decision = EvaluationGate(tolerance).decide(VersionScore(candidate), VersionScore(active), pool=30)
    assert decision.promote is promote
    assert decision.metrics["candidate_loss"] is candidate and decision.reason


def test_gate_reports_the_relative_change():
    decision = EvaluationGate(0.02).decide(VersionScore(1.1), VersionScore(1.0), pool=30)
    assert not decision.promote and decision.metrics["relative_change"] == pytest.approx(0.1)


def test_gate_refuses_on_a_thin_pool_whatever_the_scores():
    gate = EvaluationGate(min_examples=20)
    better = VersionScore(loss=0.1, agreement=0.9)
    worse = VersionScore(loss=2.0, agreement=0.1)
    decision = gate.decide(better, worse, pool=19)
    assert not decision.promote and "19" in decision.reason and "gate_min_examples" in decision.reason
    assert gate.decide(better, worse, pool=20).promote


@pytest.mark.parametrize(
    ("candidate", "active", "promote", "why"),
    [
        (VersionScore(0.9, 0.50), VersionScore(1.0, 0.50), True, "loss limit"),
        (VersionScore(0.9, 0.485), VersionScore(1.0, 0.50), True, "loss limit"),  # within 0.02
        (VersionScore(0.9, 0.47), VersionScore(1.0, 0.50), False, "agreement is below"),  # lower loss, worse answers
        (VersionScore(1.1, 0.90), VersionScore(1.0, 0.50), False, "loss exceeds"),  # better answers, worse loss
        (VersionScore(0.9, None), VersionScore(1.0, 0.50), True, "loss limit"),  # agreement not measured
    ],
)
def test_gate_needs_both_the_loss_and_the_agreement(candidate, active, promote, why):
    decision = EvaluationGate(0.0, agreement_tolerance=0.02).decide(candidate, active, pool=25)
    assert decision.promote is promote and why in decision.reason
    assert decision.metrics["candidate"]["agreement"] == candidate.agreement and decision.metrics["pool"] == 25


def test_holdout_split_is_deterministic_and_order_independent():
    turns = [{"id": f"t{i}"} for i in range(100)]
    train, held = split_holdout(turns, 0.1, seed=3)
    assert len(held) == 10 and len(train) == 90 and not {t["id"] for t in train} & {t["id"] for t in held}
    assert split_holdout(turns, 0.1, seed=3) == (train, held)
    _, held_reversed = split_holdout(turns[::-1], 0.1, seed=3)
    assert {t["id"] for t in held_reversed} == {t["id"] for t in held}
    assert split_holdout(turns, 0.1, seed=4)[1] != held
    assert len(split_holdout(turns[:3], 0.1)[1]) == 1  # always something to evaluate on
    assert split_holdout(turns[:1], 0.1) == (turns[:1], [])
