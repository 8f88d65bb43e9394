"""The learning loop end to end, without Ray: real LoRA runs on the tiny model
(``local_train_fn``: ``train_lora`` + ``evaluate_versions``), runs on threads that
``wait_idle`` joins, webhooks to a receiver on 127.0.0.1, restarts on the same data dir."""


from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from echorag.learning import BASE, Conflict, ConversationStore, NotFound, validate_adapter_dir
from echorag.types import Turn
from tests.korean_qa import QA
from tests.unit.loop_helpers import WAIT, Trainer, turn, types

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_batch_starts_a_run_and_the_gate_promotes_v1(make, tiny_model_path, tmp_path):
    activated: list[str] = []
    trainer = Trainer(tiny_model_path)
    loop = make(trainer, activated=activated)

    infos = [loop.record(turn(i)) for i in range(3)]
    assert [i.collected for i in infos] == [True, True, True]
    assert [i.total_collected for i in infos] == [1, 2, 3]
    assert [i.new_data_count for i in infos] == [1, 2, 3]
    assert [i.should_train for i in infos] == [False, False, True]
    assert infos[2].training_queued and infos[2].current_version == BASE
    assert loop.wait_idle(WAIT)

    assert loop.active_version() == "v1" and activated == ["v1"], loop.registry.info("v1").metrics["gate_reason"]
    (job,) = trainer.jobs
    assert (job.from_seq, job.to_seq, job.init_adapter, job.init_version) == (0, 3, None, BASE)
    assert (job.new_turns, len(job.holdout), len(job.train), job.replay_turns) == (3, 1, 2, 0)
    assert job.config.epochs == 2  # runtime settings reach the trainer
    info = loop.registry.info("v1")
    assert (info.status, info.parent, info.data_watermark, info.samples) == ("active", BASE, 3, 2)
    assert info.metrics["promoted"] is True
    assert info.metrics["candidate_loss"] <= info.metrics["active_loss"]
    assert info.timings["train_s"] > 0 and info.timings["run_s"] > 0
    validate_adapter_dir(loop.registry.path("v1"))

    assert types(loop) == ["training_started", "adapter_promoted", "training_succeeded"]
    progress = loop.training_progress()
    assert progress.status == "succeeded" and progress.version == "v1" and progress.run_id == 1
    assert progress.step == progress.total_steps == 2 and len(progress.losses) == 2
    assert progress.ended_at >= progress.started_at

    nxt = loop.record(turn(3))
    assert (nxt.new_data_count, nxt.should_train, nxt.training_queued, nxt.current_version) == (1, False, False, "v1")

    (run,) = loop.training_history().runs
    assert (run.outcome, run.version, run.from_seq, run.to_seq, run.attempt) == ("promoted", "v1", 0, 3, 1)
    models = loop.models()
    assert models.active == "v1"
    assert [(m.version, m.status, m.active) for m in models.versions] == [
        (BASE, "base", False), ("v1", "active", True)
    ]

    status = loop.status().model_dump()
    assert set(status) >= {"collector_stats", "training_status", "models_info", "events_summary",
                           "performance_metrics"}
    assert status["collector_stats"]["total_collected"] == 4
    assert status["collector_stats"]["trained_watermark"] == 3
    assert status["training_status"]["is_training"] is False
    assert status["models_info"]["current_version"] == "v1"
    assert status["events_summary"]["by_type"]["training_succeeded"] == 1
    perf = loop.performance()
    assert perf.collected_last_hour == 4 and perf.collection_rate_per_hour == pytest.approx(4 / 24)
    assert perf.success_rate == 1.0 and perf.average_training_time_s > 0 and perf.runs_promoted == 1

    exported = loop.export(inline=True)  # 4 collected, the run's evaluation-pool turn apart
    (pooled,) = loop.store.select("pool = 1")
    assert exported.count == 3 and exported.jsonl.count("\n") == 3
    questions = [json.loads(line)["messages"][0]["content"] for line in exported.jsonl.splitlines()]
    assert pooled.user not in questions and set(questions) <= {q for q, _ in QA}
    written = loop.export(tmp_path / "out" / "train.jsonl")
    assert written.count == 3 and Path(written.path).read_text(encoding="utf-8") == exported.jsonl
    page = loop.conversations(limit=2, offset=1)
    assert page.total == 4 and [t.id for t in page.conversations] == ["turn-2", "turn-1"]


def test_turns_that_arrive_during_a_run_make_exactly_one_follow_up(make, tiny_model_path):
    trainer = Trainer(tiny_model_path, block=True)
    loop = make(trainer)
    for i in range(3):
        loop.record(turn(i))
    assert trainer.started.wait(WAIT)

    during = [loop.record(turn(i)) for i in range(3, 8)]  # 5 turns, more than a batch
    assert all(i.collected and i.training_queued for i in during)
    assert loop.training_progress().status == "training"
    assert loop.training_progress().pending and loop.status().training_status.pending
    assert types(loop).count("training_queued") == 1

    trainer.release.set()
    assert loop.wait_idle(WAIT)
    first, second = trainer.jobs
    assert (first.from_seq, first.to_seq) == (0, 3)
    assert (second.from_seq, second.to_seq, second.new_turns) == (3, 8, 5)
    assert second.init_version == "v1" and second.init_adapter == loop.registry.path("v1")
    assert second.replay_turns == 1  # round(4 train turns * 0.25) earlier turns mixed in
    assert len(second.train) == 4 + 1  # 1 of the 5 new turns joined the pool
    assert len(second.holdout) == 2  # the pool grows: one turn of each batch
    runs = loop.training_history().runs
    assert [(r.from_seq, r.to_seq, r.status) for r in reversed(runs)] == [(0, 3, "succeeded"), (3, 8, "succeeded")]
    assert loop.registry.info("v2").parent == "v1"
    assert loop.policy.watermark == 8 and loop.policy.new_data == 0
    assert types(loop).count("training_started") == 2


def test_a_failing_run_is_retried_then_reported_and_its_data_stays_pending(make, tiny_model_path, receiver):
    trainer = Trainer(tiny_model_path, fail=10)
    loop = make(trainer, finetune_webhook_url=receiver.url, loop_kwargs={"webhook_flavor": "slack"})
    loop.update_settings({"max_attempts": 2, "retry_backoff_s": 0.05})
    for i in range(3):
        loop.record(turn(i))
    assert loop.wait_idle(WAIT)

    assert len(trainer.jobs) == 2  # the first try and one automatic retry
    assert [j.attempt for j in trainer.jobs] == [1, 2]
    runs = loop.training_history().runs
    assert [(r.status, r.attempt, r.from_seq, r.to_seq) for r in reversed(runs)] == [
        ("failed", 1, 0, 3), ("failed", 2, 0, 3)
    ]
    assert "injected failure" in runs[0].error
    failed = [e for e in loop.events(event_type="training_failed").events]
    assert [e.data["attempt"] for e in failed] == [2, 1]
    assert failed[1].data["retry_in"] == pytest.approx(0.05) and failed[0].data["retry_in"] is None
    # Slack shape: {"text"} only, one per failed attempt
    assert len(receiver.bodies) == 2 and all(set(b) == {"text"} for b in receiver.bodies)
    assert all("미세조정 실패" in b["text"] and "injected failure" in b["text"] for b in receiver.bodies)
    # the data stays pending, what serves is unchanged
    assert loop.active_version() == BASE and loop.registry.versions() == []
    assert loop.policy.watermark == 0 and loop.policy.new_data == 3
    status = loop.status().training_status
    assert status.stalled and status.consecutive_failures == 2 and status.status == "failed"
    assert loop.training_progress().status == "failed"
    assert loop.performance().success_rate == 0.0

    # once the cause is gone a manual run trains on exactly that pending data
    trainer.fail = 0
    started = loop.finetune()
    assert started.started and (started.from_seq, started.to_seq) == (0, 3)
    assert loop.wait_idle(WAIT)
    assert loop.active_version() == "v1" and loop.policy.watermark == 3
    assert len(receiver.bodies) == 3 and "미세조정 완료: v1" in receiver.bodies[-1]["text"]


def test_a_transient_failure_is_retried_automatically(make, tiny_model_path):
    trainer = Trainer(tiny_model_path, fail=1)
    loop = make(trainer)
    loop.update_settings({"retry_backoff_s": 0.01})
    for i in range(3):
        loop.record(turn(i))
    assert loop.wait_idle(WAIT)
    assert [r.outcome for r in reversed(loop.training_history().runs)] == ["failed", "promoted"]
    assert loop.active_version() == "v1" and loop.policy.failures == 0
    assert types(loop) == ["settings_updated", "training_started", "training_failed", "training_started",
                           "adapter_promoted", "training_succeeded"]


def test_the_gate_keeps_a_worse_version_marked_rejected(make, tiny_model_path):
    activated: list[str] = []
    loop = make(Trainer(tiny_model_path), activated=activated)
    for i in range(3):
        loop.record(turn(i))
    assert loop.wait_idle(WAIT) and loop.active_version() == "v1"

    loop.update_settings({"gate_tolerance": -0.9})  # demand a 90 % lower held-out loss
    for i in range(3, 6):
        loop.record(turn(i))
    assert loop.wait_idle(WAIT)

    assert loop.active_version() == "v1" and activated == ["v1"]
    info = loop.registry.info("v2")
    assert info.status == "rejected" and info.parent == "v1" and info.data_watermark == 6
    assert info.metrics["promoted"] is False and "exceeds the limit" in info.metrics["gate_reason"]
    assert info.metrics["candidate_loss"] is not None and info.metrics["active_loss"] is not None
    assert loop.policy.watermark == 6  # the data was trained on: not pending again
    progress = loop.training_progress()
    assert progress.status == "rejected" and progress.version == "v2"
    rejected = loop.events(event_type="training_rejected").events
    assert len(rejected) == 1 and rejected[0].data["version"] == "v2"
    assert [(m.version, m.status) for m in loop.models().versions] == [
        (BASE, "base"), ("v1", "active"), ("v2", "rejected")
    ]
    assert loop.training_history().runs[0].outcome == "rejected"
    assert loop.status().models_info.rejected == 1

    # a human may still promote it: the gate is a default, not a veto
    change = loop.promote("v2")
    assert (change.active, change.previous) == ("v2", "v1") and activated == ["v1", "v2"]
    assert loop.registry.info("v1").status == "archived"


def test_manual_runs_back_up_and_versions_roll_back_to_base_and_forward(make, tiny_model_path, tmp_path):
    activated: list[str] = []
    trainer = Trainer(tiny_model_path)
    loop = make(trainer, activated=activated, finetune_auto_trigger=False)
    for i in range(2):
        assert not loop.record(turn(i)).training_queued
    below = loop.finetune()
    assert not below.started and "force" in below.message
    assert loop.finetune(force=True).started
    assert loop.wait_idle(WAIT) and loop.active_version() == "v1"
    assert not list((tmp_path / "data" / "backups").glob("adapter-*"))  # base serving: nothing to back up

    for i in range(2, 6):
        loop.record(turn(i))
    assert loop.finetune(backup_existing=True).started
    assert loop.wait_idle(WAIT)
    (backup,) = (tmp_path / "data" / "backups").glob("adapter-v1-*")
    validate_adapter_dir(backup)
    assert "adapter_backed_up" in types(loop)
    assert trainer.jobs[1].init_version == "v1"
    top = loop.active_version()
    assert top in ("v1", "v2")

    change = loop.rollback("base")
    assert (change.active, change.previous) == (BASE, top)
    assert loop.active_version() == BASE and loop.record(turn(6)).current_version == BASE
    assert loop.rollback("v1").active == "v1" and loop.active_version() == "v1"
    assert loop.rollback().active == BASE  # default: the previously active version
    assert activated[-3:] == [BASE, "v1", BASE]
    rolled = loop.events(event_type="adapter_rolled_back").events
    assert [(e.data["from"], e.data["to"]) for e in reversed(rolled)] == [(top, BASE), (BASE, "v1"), ("v1", BASE)]

    with pytest.raises(NotFound):
        loop.rollback("v9")
    with pytest.raises(ValidationError):
        loop.rollback("../v1")
    assert loop.active_version() == BASE


def test_settings_are_validated_and_survive_a_restart(make, tiny_model_path, tmp_path):
    loop = make(Trainer(tiny_model_path))
    for bad in (
        {"batch_size": 0}, {"epochs": 101}, {"learning_rate": 0}, {"batch_sise": 5},
        {"auto_trigger": "maybe"}, {"holdout_fraction": 1}, {"gate_tolerance": -1}, {"max_attempts": 0},
    ):
        with pytest.raises(ValidationError):
            loop.update_settings(bad)
    assert loop.runtime.batch_size == 3 and loop.runtime.epochs == 2  # from Settings

    now = loop.update_settings({"finetune_batch_size": 7, "auto_trigger": False, "epochs": 3,
                                "collection_enabled": False, "learning_rate": 5e-4})
    assert (now.batch_size, now.auto_trigger, now.epochs, now.collection_enabled) == (7, False, 3, False)
    assert loop.policy.config.batch_size == 7 and not loop.policy.config.auto_trigger
    loop.close()

    again = make(Trainer(tiny_model_path))
    rt = again.runtime
    assert (rt.batch_size, rt.auto_trigger, rt.epochs, rt.collection_enabled, rt.learning_rate) == (
        7, False, 3, False, 5e-4
    )
    assert again.policy.config.batch_size == 7
    assert again.status().settings.batch_size == 7
    again.close()

    # a stored value that no longer validates falls back to the default, loudly
    with ConversationStore(tmp_path / "data" / "echorag.sqlite") as store:
        store.set_setting("finetune_batch_size", 0)
    assert make(Trainer(tiny_model_path)).runtime.batch_size == 3


def test_lowering_the_batch_size_starts_a_run(make, tiny_model_path):
    trainer = Trainer(tiny_model_path)
    loop = make(trainer, finetune_batch_size=10)
    for i in range(4):
        assert not loop.record(turn(i)).should_train
    loop.update_settings({"batch_size": 4})
    assert loop.wait_idle(WAIT)
    assert [(j.from_seq, j.to_seq) for j in trainer.jobs] == [(0, 4)]
    assert loop.training_progress().trigger == "settings"


def test_finetune_during_a_run_is_a_conflict_and_queues_one_follow_up(make, tiny_model_path):
    trainer = Trainer(tiny_model_path, block=True)
    loop = make(trainer, finetune_auto_trigger=False)
    assert loop.finetune(force=True).message == "no new data"
    for i in range(3):
        loop.record(turn(i))
    first = loop.finetune()
    assert first.started and first.run_id == 1
    assert trainer.started.wait(WAIT)

    for i in range(3, 5):  # fewer than a batch: only the 409 makes a follow-up
        loop.record(turn(i))
    assert not loop.policy.pending
    with pytest.raises(Conflict) as caught:
        loop.finetune(force=True)
    assert caught.value.status_code == 409 and caught.value.detail == {"run_id": 1, "pending": True}
    assert loop.policy.pending and loop.training_progress().pending
    assert "training_queued" in types(loop)

    trainer.release.set()
    assert loop.wait_idle(WAIT)
    assert [(j.from_seq, j.to_seq) for j in trainer.jobs] == [(0, 3), (3, 5)]
    assert loop.training_history().runs[0].metrics["run_id"] == 2
    assert loop.training_progress().trigger == "pending"


def test_collection_off_stores_nothing(make, tiny_model_path):
    loop = make(Trainer(tiny_model_path), finetune_batch_size=100)
    loop.update_settings({"collection_enabled": False})
    off = loop.record(turn(0))
    assert not off.collected and off.total_collected == 0 and loop.store.counts().total == 0
    loop.update_settings({"collection_enabled": True})
    on = loop.record(turn(0))
    assert on.collected and on.total_collected == 1 and on.new_data_count == 1
    assert not loop.record(Turn(id="x", session_id="s", user_id="u", user="", assistant="답", adapter_version="base",
                                model="tiny")).collected  # empty: filtered
    dup = turn(0)
    dup.id = "another-id"
    assert not loop.record(dup).collected  # same content: duplicate
    assert loop.record(turn(0)).collected  # the same turn id again: an idempotent retry
    assert loop.store.counts().total == 1


def test_a_run_interrupted_by_a_restart_is_failed_and_its_data_retrained(make, tiny_model_path, tmp_path):
    with ConversationStore(tmp_path / "data" / "echorag.sqlite") as store:
        for i in range(3):
            store.add_turn(turn(i))
        store.start_run(0, 3)  # the process dies during this run

    trainer = Trainer(tiny_model_path)
    loop = make(trainer, loop_kwargs={"resume": False})
    (run,) = loop.training_history().runs
    assert (run.status, run.outcome, run.from_seq, run.to_seq) == ("failed", "interrupted", 0, 3)
    assert types(loop) == ["training_interrupted"]
    assert loop.policy.watermark == 0 and loop.policy.new_data == 3
    assert loop.policy.failures == 1 and not loop.policy.is_running
    progress = loop.training_progress()
    assert progress.status == "failed" and progress.run_id == 1 and "interrupted" in progress.error
    assert loop.status().events_summary.last_error.startswith("⛔")
    assert trainer.jobs == []
    loop.close()

    # a restart that resumes: the interrupted attempt counts, the retry follows its backoff
    delays: list[float] = []

    def schedule(delay, fn):
        delays.append(delay)
        threading.Thread(target=fn, daemon=True).start()

    again = make(trainer, loop_kwargs={"schedule": schedule})
    assert again.wait_idle(WAIT)
    assert delays == [30.0]  # retry_backoff_s after one failure
    assert [(j.from_seq, j.to_seq, j.attempt) for j in trainer.jobs] == [(0, 3, 2)]
    assert again.active_version() == "v1" and again.policy.watermark == 3
    assert [r.outcome for r in reversed(again.training_history().runs)] == ["interrupted", "promoted"]


def test_a_run_of_only_disliked_turns_completes_without_training(make, tiny_model_path, tmp_path):
    trainer = Trainer(tiny_model_path)
    loop = make(trainer, finetune_auto_trigger=False)
    for i in range(3):
        loop.record(turn(i))
    assert loop.feedback("turn-0", -1).rating == -1
    assert loop.feedback("turn-1", "down").rating == -1
    assert loop.feedback("turn-2", "👎").rating == -1
    with pytest.raises(NotFound):
        loop.feedback("no-such-turn", 1)
    with pytest.raises(ValueError):
        loop.feedback("turn-0", 5)

    assert loop.finetune(force=True).started
    assert loop.wait_idle(WAIT)
    assert trainer.jobs == [] and loop.registry.versions() == []
    (run,) = loop.training_history().runs
    assert run.outcome == "empty" and loop.policy.watermark == 3
    assert "training_skipped" in types(loop) and loop.training_progress().status == "succeeded"
    assert loop.export(inline=True).count == 0

    # clearing (with a backup) leaves nothing pending
    loop.record(turn(3))
    cleared = loop.clear_conversations(backup=True)
    assert cleared.deleted == 4 and Path(cleared.backup_path).is_file()
    assert loop.policy.new_data == 0 and loop.store.counts().total == 0
    assert loop.record(turn(4)).new_data_count == 1
    assert loop.cleanup(keep_days=0).conversations == 1
    assert loop.store.counts().total == 0
