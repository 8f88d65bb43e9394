"""Canary routing: which answerer a session gets, the share kept in the registry's
pointer, promotion by hand and graduation by the gate, and performance per answerer."""

from __future__ import annotations

import math

import pytest

from echorag.learning import BASE, AdapterRegistry
from echorag.serving.routing import Answerer, Router, Traffic, session_bucket
from echorag.types import Turn
from tests.unit.loop_helpers import WAIT, Trainer, turn, types
from tests.unit.test_mlops_registry import saved_adapter

TEACHER, STUDENT = Answerer("extractive", "extractive"), Answerer("tiny-ko", "tiny")


def test_a_share_of_sessions_goes_to_the_student_and_each_keeps_its_answerer():
    router = Router(TEACHER, STUDENT)
    sessions = [f"session-{i}" for i in range(2000)]
    routes = [router.route(s, Traffic("v2", 0.3)) for s in sessions]
    to_student = sum(r.student for r in routes)
    bound = 4 * math.sqrt(2000 * 0.3 * 0.7)  # four standard deviations of Binomial(2000, 0.3)
    assert abs(to_student - 600) < bound, to_student
    assert all(r.adapter == "v2" and r.answerer == STUDENT and r.label == "self" for r in routes if r.student)
    assert all(r.adapter == BASE and r.answerer == TEACHER and r.label == "teacher" for r in routes if not r.student)
    # Sticky: the same session, asked again (any replica computes the same), same answerer.
    assert [router.route(s, Traffic("v2", 0.3)).student for s in sessions] == [r.student for r in routes]
    # A larger share keeps the sessions the student already had (canary, then all).
    wider = [router.route(s, Traffic("v2", 0.6)).student for s in sessions]
    assert all(w for w, r in zip(wider, routes) if r.student) and sum(wider) > to_student
    assert 0.0 <= min(map(session_bucket, sessions)) and max(map(session_bucket, sessions)) < 1.0


def test_no_promoted_student_version_means_the_teacher_answers_everyone():
    router = Router(TEACHER, STUDENT)
    assert not any(router.route(f"s{i}", Traffic(BASE, 1.0)).student for i in range(200))
    assert not any(router.route(f"s{i}", Traffic("v1", 0.0)).student for i in range(200))


def test_pinned_versions_are_the_students_and_base_is_the_answerer_as_deployed():
    router = Router(TEACHER, STUDENT)
    assert router.route("s", Traffic("v2", 0.0), pinned="v1") == router.route("t", Traffic(BASE, 0.0), pinned="v1")
    pinned = router.route("s", Traffic("v2", 0.0), pinned="v1")
    assert pinned.student and pinned.adapter == "v1" and pinned.answerer == STUDENT
    assert not router.route("s", Traffic("v2", 1.0), pinned=BASE).student
    # Where the answerer is the student itself, its active version serves every session.
    alone = Router(STUDENT)
    assert {alone.route(f"s{i}", Traffic("v3", 0.0)).adapter for i in range(50)} == {"v3"}
    assert alone.route("s", Traffic("v3", 0.0), pinned=BASE).adapter == BASE


def test_the_share_lives_in_the_pointer_and_survives_promotions(tmp_path):
    registry = AdapterRegistry(tmp_path / "adapters")
    assert registry.traffic(0.1) == Traffic(BASE, 0.1)  # the setting until one is set
    registry.add(saved_adapter(tmp_path / "a"))
    registry.promote("v1")
    registry.set_student_share(0.5)
    registry.add(saved_adapter(tmp_path / "b"))
    registry.promote("v2")
    assert registry.traffic(0.1) == Traffic("v2", 0.5)
    registry.rollback()
    assert AdapterRegistry(tmp_path / "adapters").traffic(0.1) == Traffic("v1", 0.5)  # another replica reads it
    with pytest.raises(ValueError):
        registry.set_student_share(1.5)


def test_promote_moves_all_traffic_and_the_gate_graduates_a_student_that_agrees(make, tiny_model_path):
    loop = make(Trainer(tiny_model_path), canary_fraction=0.25, canary_graduate_at=0.0)
    assert loop.traffic() == Traffic(BASE, 0.25)
    for i in range(3):
        loop.record(turn(i))
    assert loop.wait_idle(WAIT)
    # The gate promoted v1 with an agreement >= 0.0: the student graduates to all traffic.
    assert loop.traffic() == Traffic("v1", 1.0), loop.registry.info("v1").metrics
    assert "traffic_shifted" in types(loop)
    change = loop.promote(student_share=0.2)
    assert (change.active, change.student_share) == ("v1", 0.2) and loop.traffic().student_share == 0.2
    change = loop.promote()
    assert change.student_share == 1.0 and loop.traffic() == Traffic("v1", 1.0)
    shifted = [e for e in loop.events(event_type="traffic_shifted").events]
    assert [e.data["trigger"] for e in reversed(shifted)] == ["graduation", "manual", "manual"]


def test_performance_is_reported_per_answerer_and_version(make, tiny_model_path):
    loop = make(Trainer(tiny_model_path), finetune_auto_trigger=False)
    served = {}
    for i, (backend, version, latency) in enumerate(
        [("extractive", BASE, 10.0), ("extractive", BASE, 30.0), ("tiny", "v1", 200.0)]
    ):
        answered = turn(i)
        served[f"p{i}"] = {**answered.__dict__, "id": f"p{i}", "backend": backend, "model": backend,
                           "adapter_version": version, "latency_ms": latency,
                           "label": "teacher" if backend == "extractive" else "self"}
        loop.record(Turn(**served[f"p{i}"]))
    # Served again word for word: dropped from training as a duplicate, still a request.
    loop.record(Turn(**{**served["p0"], "id": "p3", "latency_ms": 20.0}))
    loop.feedback("p0", 1)
    loop.feedback("p2", -1)
    rows = {(r.backend, r.version): r for r in loop.performance().answerers}
    teacher, student = rows[("extractive", BASE)], rows[("tiny", "v1")]
    assert (teacher.requests, teacher.liked, teacher.disliked, teacher.like_rate) == (3, 1, 0, 1.0)
    assert (teacher.latency_p50_ms, teacher.latency_p95_ms) == (20.0, 30.0)
    assert loop.store.counts().total == 3
    assert (student.requests, student.disliked, student.like_rate, student.latency_p50_ms) == (1, 1, 0.0, 200.0)
