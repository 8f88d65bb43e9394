"""What the loop learns from and when it trusts a candidate, on real LoRA runs of the
tiny student (``local_train_fn``): the default gate refuses to decide on a thin pool,
the student's own unrated answers do not train by default, a correction does."""

from __future__ import annotations

import pytest

from echorag.learning import BASE
from tests.unit.loop_helpers import WAIT, Trainer, turn, types

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_with_the_defaults_a_batch_of_three_does_not_flip_a_coin(make, tiny_model_path):
    trainer = Trainer(tiny_model_path)
    loop = make(trainer, finetune_gate_min_examples=20)  # the default
    for i in range(3):
        loop.record(turn(i))
    assert loop.wait_idle(WAIT)
    (job,) = trainer.jobs
    assert len(job.holdout) == 1 and len(job.train) == 2  # one turn joined the evaluation pool
    assert loop.active_version() == BASE  # trained, judged, not promoted
    info = loop.registry.info("v1")
    assert info.status == "rejected" and info.metrics["promoted"] is False
    assert "1 turns" in info.metrics["gate_reason"] and "gate_min_examples" in info.metrics["gate_reason"]
    assert info.metrics["candidate_agreement"] is not None and info.metrics["active_agreement"] is not None
    rejected = loop.events("training_rejected").events[0]
    assert "gate_min_examples" in rejected.message and rejected.data["pool"] == 1


def test_the_students_own_answers_train_only_once_rated(make, tiny_model_path):
    trainer = Trainer(tiny_model_path)
    loop = make(trainer, finetune_auto_trigger=False)  # train_on: teacher (the default)
    for i in range(3):
        loop.record(turn(i, label="self"))  # the tiny student answered these itself
    loop.finetune()
    assert loop.wait_idle(WAIT)
    assert trainer.jobs == [] and types(loop)[-1] == "training_skipped"  # nothing it did not know
    for i in range(3, 6):
        loop.record(turn(i, label="self"))
        loop.feedback(f"turn-{i}", "up")
    loop.finetune()
    assert loop.wait_idle(WAIT)
    (job,) = trainer.jobs
    assert job.new_turns == 3 and (job.from_seq, job.to_seq) == (3, 6)  # only the 👍 ones
    loop.update_settings({"train_on": "all"})  # opt in to the student's unrated answers
    assert loop.export(inline=True).count == 5  # 6 turns, 1 in the pool


def test_a_correction_trains_in_the_next_run_with_its_weight(make, tiny_model_path):
    trainer = Trainer(tiny_model_path)
    loop = make(trainer, finetune_correction_weight=3)
    for i in range(3):
        loop.record(turn(i))
    assert loop.wait_idle(WAIT)
    trained = {chat[0]["content"] for chat in trainer.jobs[0].train}
    turn_id = next(t.id for t in loop.store.turns_after(0) if t.user in trained)
    corrected = loop.correct(turn_id, "바로잡은 답: 한글은 세종대왕이 1443년에 만들었습니다.")
    assert corrected.corrected.startswith("바로잡은 답") and corrected.assistant != corrected.corrected
    assert loop.store.get_turn(turn_id).label_origin == "corrected"
    assert types(loop)[-1] == "turn_corrected"
    with pytest.raises(Exception, match="unknown turn"):
        loop.correct("no-such-turn", "답")
    for i in range(3, 6):
        loop.record(turn(i))
    assert loop.wait_idle(WAIT)
    second = trainer.jobs[1]
    answers = [chat[-1]["content"] for chat in second.train]
    assert answers.count(corrected.corrected) == 3 and second.corrected_turns == 1
